//! etcd's authentication and authorization against a 3-member group: the
//! user, role and permission flow with etcdctl 3.4, then the Rust etcd
//! client's view (a Txn with one forbidden key, a watch on a forbidden
//! range), the auth state across a restart of every member and a master
//! change, and client certificates naming the user.

mod common;

use std::time::Duration;

use common::{output_text, Cluster};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, Txn, TxnOp, WatchOptions};

/// bcrypt's cheapest cost, so the tests spend their time on behaviour.
const FAST_HASHES: [&str; 2] = ["--bcrypt-cost", "4"];

/// Runs etcdctl against member `index` and returns whether it succeeded and what it printed.
fn at(cluster: &Cluster, index: usize, args: &[&str]) -> (bool, String) {
    let endpoint = cluster.members[index].endpoint();
    let mut all = vec!["--endpoints", &endpoint, "--command-timeout", "10s"];
    all.extend_from_slice(args);
    let output = cluster.etcdctl(&all);
    (output.status.success(), output_text(&output))
}

fn ok(cluster: &Cluster, index: usize, args: &[&str]) -> String {
    let (success, text) = at(cluster, index, args);
    assert!(success, "etcdctl {args:?} failed: {text}");
    text
}

fn refused(cluster: &Cluster, index: usize, args: &[&str], reason: &str) {
    let (success, text) = at(cluster, index, args);
    assert!(!success, "etcdctl {args:?} should fail: {text}");
    assert!(text.contains(reason), "etcdctl {args:?}: want {reason:?}, got {text}");
}

/// root (root role), and alice whose role `app` may read and write under
/// `app/` and only read `shared`; then auth enabled. Each step at another member.
fn set_up_users(cluster: &Cluster) {
    let steps: [&[&str]; 8] = [
        &["user", "add", "root:rootpw"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "app"],
        &["role", "grant-permission", "app", "readwrite", "app/", "--prefix=true"],
        &["role", "grant-permission", "app", "read", "shared"],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "app"],
        &["put", "shared", "before"],
    ];
    for (step, args) in steps.iter().enumerate() {
        ok(cluster, step % 3, args);
    }
    let enabled = ok(cluster, 1, &["auth", "enable"]);
    assert!(enabled.contains("Authentication Enabled"), "{enabled}");
}

#[test]
fn etcdctl_users_roles_and_permissions() {
    let cluster = Cluster::start_with(3, "auth-etcdctl", &FAST_HASHES);
    set_up_users(&cluster);
    for index in 0..3 {
        refused(&cluster, index, &["get", "shared"], "user name is empty");
        refused(&cluster, index, &["put", "app/x", "1"], "user name is empty");
        let got = ok(&cluster, index, &["--user", "alice:alicepw", "get", "shared"]);
        assert!(got.contains("before"), "{got}");
        ok(
            &cluster,
            index,
            &["--user", "alice:alicepw", "put", "app/x", &index.to_string()],
        );
        refused(
            &cluster,
            index,
            &["--user", "alice:wrong", "put", "app/x", "1"],
            "authentication failed, invalid user ID or password",
        );
        refused(
            &cluster,
            index,
            &["--user", "nobody:pw", "get", "shared"],
            "authentication failed, invalid user ID or password",
        );
        refused(
            &cluster,
            index,
            &["--user", "alice:alicepw", "put", "elsewhere", "1"],
            "permission denied",
        );
        refused(
            &cluster,
            index,
            &["--user", "alice:alicepw", "put", "shared", "1"],
            "permission denied",
        );
        refused(
            &cluster,
            index,
            &["--user", "alice:alicepw", "get", "app/", "--prefix=false", "--from-key"],
            "permission denied",
        );
        refused(
            &cluster,
            index,
            &["--user", "alice:alicepw", "user", "list"],
            "permission denied",
        );
        refused(
            &cluster,
            index,
            &["--user", "alice:alicepw", "compaction", "1"],
            "permission denied",
        );
    }
    let got = ok(&cluster, 2, &["--user", "alice:alicepw", "get", "app/", "--prefix"]);
    assert!(got.contains("app/x\n2"), "{got}");
    let users = ok(&cluster, 0, &["--user", "root:rootpw", "user", "list"]);
    assert_eq!(users, "alice\nroot\n");
    let alice = ok(&cluster, 1, &["--user", "alice:alicepw", "user", "get", "alice"]);
    assert!(alice.contains("app"), "{alice}");
    let role = ok(&cluster, 2, &["--user", "root:rootpw", "role", "get", "app"]);
    assert!(role.contains("[app/, app0) (prefix app/)"), "{role}");
    refused(
        &cluster,
        0,
        &["--user", "root:rootpw", "user", "delete", "root"],
        "invalid auth management",
    );
    refused(
        &cluster,
        0,
        &["--user", "root:rootpw", "user", "add", "alice:again"],
        "user name already exists",
    );

    // A changed password takes effect at once; the old one no longer works.
    let passwd = common::etcdctl_with_input(
        &[
            "--endpoints",
            &cluster.members[1].endpoint(),
            "--user",
            "root:rootpw",
            "user",
            "passwd",
            "alice",
            "--interactive=false",
        ],
        Some(b"newpw\n"),
    );
    assert!(passwd.status.success(), "{}", output_text(&passwd));
    refused(
        &cluster,
        2,
        &["--user", "alice:alicepw", "get", "shared"],
        "authentication failed, invalid user ID or password",
    );
    ok(&cluster, 0, &["--user", "alice:newpw", "get", "shared"]);
    let disabled = ok(&cluster, 2, &["--user", "root:rootpw", "auth", "disable"]);
    assert!(disabled.contains("Authentication Disabled"), "{disabled}");
    ok(&cluster, 0, &["put", "elsewhere", "open"]);
    let got = ok(&cluster, 1, &["get", "app/x"]);
    assert!(got.contains("app/x"), "{got}");
}

fn alice_options() -> ConnectOptions {
    ConnectOptions::new().with_user("alice", "alicepw")
}

async fn connect(cluster: &Cluster, options: Option<ConnectOptions>) -> Client {
    let endpoints: Vec<String> = cluster.members.iter().map(|member| member.endpoint()).collect();
    Client::connect(&endpoints, options).await.expect("connect")
}

/// The Rust client as alice: a Txn with one forbidden key changes nothing,
/// a watch on a range she may not read is refused and one she may is served.
async fn alice_is_held_to_her_permissions(cluster: &Cluster) {
    let mut alice = connect(cluster, Some(alice_options())).await;
    alice.put("app/a", "1", None).await.expect("put in app/");
    let forbidden = Txn::new().and_then(vec![TxnOp::put("app/b", "2", None), TxnOp::put("elsewhere", "2", None)]);
    let error = alice.txn(forbidden).await.expect_err("txn with a forbidden put");
    assert!(error.to_string().contains("permission denied"), "{error}");
    let compares_forbidden = Txn::new()
        .when(vec![Compare::version("secret", CompareOp::Equal, 0)])
        .and_then(vec![TxnOp::put("app/b", "2", None)]);
    let error = alice
        .txn(compares_forbidden)
        .await
        .expect_err("txn comparing a forbidden key");
    assert!(error.to_string().contains("permission denied"), "{error}");
    let got = alice.get("app/b", None).await.expect("get app/b");
    assert!(got.kvs().is_empty(), "nothing of the refused txns ran");

    let mut refused = alice
        .watch("secret", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch stream");
    let answer = tokio::time::timeout(Duration::from_secs(10), refused.message())
        .await
        .expect("an answer")
        .expect("a message")
        .expect("a response");
    assert!(answer.canceled(), "{answer:?}");
    assert!(answer.cancel_reason().contains("permission denied"), "{answer:?}");

    let mut allowed = alice
        .watch("app/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch stream");
    let created = allowed.message().await.expect("message").expect("created");
    assert!(created.created() && !created.canceled(), "{created:?}");
    alice.put("app/c", "3", None).await.expect("put");
    let events = tokio::time::timeout(Duration::from_secs(10), allowed.message())
        .await
        .expect("an event in time")
        .expect("message")
        .expect("events");
    assert_eq!(events.events()[0].event_type(), EventType::Put);
    assert_eq!(events.events()[0].kv().unwrap().key(), b"app/c");
}

#[test]
fn permissions_hold_for_the_rust_client_and_survive_restarts_and_master_changes() {
    let mut cluster = Cluster::start_with(3, "auth-rust", &FAST_HASHES);
    set_up_users(&cluster);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(alice_is_held_to_her_permissions(&cluster));

    // Every member restarts: the auth state comes back from the log and snapshots.
    for index in 0..3 {
        cluster.kill(index);
    }
    for index in 0..3 {
        cluster.launch(index);
    }
    let master = cluster.wait_for_master(Duration::from_secs(30));
    runtime.block_on(alice_is_held_to_her_permissions(&cluster));

    // A new master knows the tokens the old one issued: a client that
    // authenticated before the change goes on without authenticating again.
    runtime.block_on(async {
        let follower = (master + 1) % 3;
        let endpoint = cluster.members[follower].endpoint();
        let mut alice = Client::connect([endpoint], Some(alice_options()))
            .await
            .expect("connect");
        alice.put("app/before", "1", None).await.expect("put before the change");
        cluster.kill(master);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match alice.put("app/after", "1", None).await {
                Ok(_) => break,
                Err(error) => {
                    assert!(
                        !error.to_string().contains("invalid auth token"),
                        "the token was lost with the master: {error}"
                    );
                    assert!(std::time::Instant::now() < deadline, "no new master: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let error = alice.put("elsewhere", "1", None).await.expect_err("still refused");
        assert!(error.to_string().contains("permission denied"), "{error}");
    });
}

#[test]
fn a_client_certificate_names_its_user() {
    let cluster = Cluster::start_tls(3, "auth-cert", true);
    // The harness's client certificate has the common name `root`.
    let steps: [&[&str]; 3] = [
        &["user", "add", "root", "--no-password"],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ];
    for args in steps {
        let output = cluster.etcdctl(&[&["--endpoints", &cluster.client_url(0)], args].concat());
        assert!(output.status.success(), "{args:?}: {}", output_text(&output));
    }
    let master = cluster.wait_for_master(Duration::from_secs(20));
    let put = cluster.etcdctl(&["--endpoints", &cluster.client_url(master), "put", "k", "v"]);
    assert!(put.status.success(), "{}", output_text(&put));
    let users = cluster.etcdctl(&["--endpoints", &cluster.client_url(master), "user", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&users.stdout),
        "root\n",
        "{}",
        output_text(&users)
    );
    // A user without a password cannot authenticate with one.
    let password = cluster.etcdctl(&[
        "--endpoints",
        &cluster.client_url(master),
        "--user",
        "root:x",
        "get",
        "k",
    ]);
    assert!(!password.status.success(), "{}", output_text(&password));
}

/// An ES256 key pair for `--auth-token jwt,...`, and that flag's value.
fn jwt_flag(directory: &std::path::Path) -> String {
    let pair = rcgen::KeyPair::generate().expect("key pair");
    let private = directory.join("jwt.key");
    let public = directory.join("jwt.pub");
    std::fs::write(&private, pair.serialize_pem()).expect("write key");
    std::fs::write(&public, pair.public_key_pem()).expect("write key");
    format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=10m",
        public.display(),
        private.display()
    )
}

#[test]
fn jwt_tokens_work_on_every_member_and_through_a_restart_of_all() {
    let keys = common::TempDir::new("auth-jwt-keys");
    let flag = jwt_flag(&keys.0);
    let mut cluster = Cluster::start_with(3, "auth-jwt", &["--bcrypt-cost", "4", "--auth-token", &flag]);
    set_up_users(&cluster);
    for index in 0..3 {
        ok(&cluster, index, &["--user", "alice:alicepw", "put", "app/x", "1"]);
        refused(
            &cluster,
            index,
            &["--user", "alice:alicepw", "put", "elsewhere", "1"],
            "permission denied",
        );
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut alice = connect(&cluster, Some(alice_options())).await;
        alice.put("app/jwt", "1", None).await.expect("put with a JWT");
        // Every member restarts; the token the client holds is still good:
        // it is checked with the group's key, not remembered.
        for index in 0..3 {
            cluster.kill(index);
        }
        for index in 0..3 {
            cluster.launch(index);
        }
        cluster.wait_for_master(Duration::from_secs(30));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match alice.put("app/jwt", "2", None).await {
                Ok(_) => break,
                Err(error) => {
                    let text = error.to_string();
                    assert!(!text.contains("auth"), "the token did not survive: {text}");
                    assert!(std::time::Instant::now() < deadline, "no group: {text}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        // Any change to the auth state voids the tokens issued before it.
        let root = ConnectOptions::new().with_user("root", "rootpw");
        let mut root = connect(&cluster, Some(root)).await;
        root.role_add("another").await.expect("role add");
        let error = alice.put("app/jwt", "3", None).await.expect_err("an old token");
        assert!(error.to_string().contains("revision of auth store is old"), "{error}");
    });
}

#[test]
fn bad_auth_token_flags_are_refused_at_start() {
    let directory = common::TempDir::new("auth-flags");
    for (flag, reason) in [
        ("paseto", "expected simple or jwt"),
        (
            "jwt,pub-key=/nonexistent.pub,priv-key=/nonexistent.key,sign-method=ES256",
            "/nonexistent.key",
        ),
        ("jwt,pub-key=a,priv-key=b", "sign-method"),
    ] {
        let output = common::synod(
            &[
                "server",
                "--name",
                "a",
                "--listen-client",
                "127.0.0.1:1",
                "--listen-peer",
                "127.0.0.1:2",
                "--initial-cluster",
                "a=127.0.0.1:2",
                "--auth-token",
                flag,
            ],
            Some(&directory.0.join("a")),
        );
        assert!(!output.status.success(), "{flag}");
        assert!(
            output_text(&output).contains(reason),
            "{flag}: {}",
            output_text(&output)
        );
    }
}

/// `message` with `value` in the metadata under `key`.
fn with<T>(key: &'static str, value: String, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(key, value.parse().expect("metadata"));
    request
}

/// The project's own generated client, token in hand: the token in either
/// metadata key etcd accepts, a made-up token refused as unauthenticated, and
/// a Lock or a lease read outside the user's permissions refused.
#[test]
fn tokens_are_checked_by_the_projects_own_client() {
    use synod_proto::etcdserverpb::auth_client::AuthClient;
    use synod_proto::etcdserverpb::kv_client::KvClient;
    use synod_proto::etcdserverpb::{AuthenticateRequest, PutRequest, RangeRequest};
    use synod_proto::v3lockpb::lock_client::LockClient;
    use synod_proto::v3lockpb::LockRequest;

    let cluster = Cluster::start_with(3, "auth-own", &FAST_HASHES);
    set_up_users(&cluster);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        for member in &cluster.members {
            let channel = tonic::transport::Endpoint::from_shared(member.url())
                .expect("url")
                .connect()
                .await
                .expect("connect");
            let token = AuthClient::new(channel.clone())
                .authenticate(AuthenticateRequest {
                    name: "alice".into(),
                    password: "alicepw".into(),
                })
                .await
                .expect("authenticate")
                .into_inner()
                .token;
            let put = |key: &str| PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: b"v".to_vec().into(),
                ..PutRequest::default()
            };
            let mut kv = KvClient::new(channel.clone());
            kv.put(with("token", token.clone(), put("app/own")))
                .await
                .expect("token");
            kv.put(with("authorization", format!("Bearer {token}"), put("app/own")))
                .await
                .expect("bearer token");
            let denied = kv
                .put(with("token", token.clone(), put("elsewhere")))
                .await
                .expect_err("outside the permission");
            assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
            assert_eq!(denied.message(), "etcdserver: permission denied");
            let made_up = kv
                .range(with(
                    "token",
                    "0123456789abcdef0123456789abcdef".into(),
                    RangeRequest {
                        key: b"shared".to_vec().into(),
                        ..RangeRequest::default()
                    },
                ))
                .await
                .expect_err("a made-up token");
            assert_eq!(made_up.code(), tonic::Code::Unauthenticated, "{made_up:?}");
            assert_eq!(made_up.message(), "etcdserver: invalid auth token");
            let lock = LockClient::new(channel.clone())
                .lock(with(
                    "token",
                    token.clone(),
                    LockRequest {
                        name: b"locks/outside".to_vec().into(),
                        lease: 0,
                    },
                ))
                .await
                .expect_err("a lock outside the permission");
            assert_eq!(lock.code(), tonic::Code::PermissionDenied, "{lock:?}");

            // A keep-alive stream with a Bearer token, forwarded by a
            // follower with the caller's credentials.
            use synod_proto::etcdserverpb::lease_client::LeaseClient;
            use synod_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest};
            let mut leases = LeaseClient::new(channel.clone());
            let granted = leases
                .lease_grant(with("token", token.clone(), LeaseGrantRequest { ttl: 60, id: 0 }))
                .await
                .expect("grant")
                .into_inner();
            let keep_alives = tonic::codegen::tokio_stream::iter([LeaseKeepAliveRequest { id: granted.id }]);
            let mut answers = leases
                .lease_keep_alive(with("authorization", format!("Bearer {token}"), keep_alives))
                .await
                .expect("keep-alive stream")
                .into_inner();
            let answer = answers.message().await.expect("keep-alive answer").expect("an answer");
            assert_eq!(answer.ttl, 60, "{answer:?}");
        }
    });
}

/// With members authenticating each other, a follower forwards a call with
/// the user of the client certificate it verified, and the master believes
/// that only from a member: a client that claims to forward is not believed.
#[test]
fn a_certificate_user_reaches_the_master_through_a_follower_only_from_a_member() {
    use synod_server::tls::generate::*;
    let mut cluster = Cluster::unstarted(3, "auth-cert-forward", &[]);
    let directory = cluster.root.0.join("tls");
    write_with_peers(
        &directory,
        "root",
        &cluster
            .members
            .iter()
            .map(|member| member.name.clone())
            .collect::<Vec<_>>(),
    )
    .expect("certificates");
    let file = |name: &str| directory.join(name).display().to_string();
    cluster.extra_args = vec![
        "--cert-file".into(),
        file(SERVER_CERT_FILE),
        "--key-file".into(),
        file(SERVER_KEY_FILE),
        "--trusted-ca-file".into(),
        file(CA_FILE),
        "--client-cert-auth".into(),
        "--peer-trusted-ca-file".into(),
        file(CA_FILE),
        "--peer-client-cert-auth".into(),
    ];
    cluster.tls = Some(common::ClusterTls {
        directory: directory.clone(),
        client_cert_auth: true,
    });
    for index in 0..3 {
        let name = cluster.members[index].name.clone();
        let (cert, key) = (file(&peer_cert_file(&name)), file(&peer_key_file(&name)));
        cluster.launch_with(index, &["--peer-cert-file", &cert, "--peer-key-file", &key]);
    }
    let master = cluster.wait_for_master(Duration::from_secs(20));
    for args in [
        &["user", "add", "root", "--no-password"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        let output = cluster.etcdctl(&[&["--endpoints", &cluster.client_url(master)], args].concat());
        assert!(output.status.success(), "{args:?}: {}", output_text(&output));
    }
    for index in 0..3 {
        let put = cluster.etcdctl(&[
            "--endpoints",
            &cluster.client_url(index),
            "put",
            "k",
            &index.to_string(),
        ]);
        assert!(put.status.success(), "put at member {index}: {}", output_text(&put));
    }

    // The client's own certificate (common name root, not a member's) on a
    // call that claims to be forwarded for another user.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let read = |name: &str| std::fs::read(directory.join(name)).expect("read");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(CA_FILE)))
            .identity(tonic::transport::Identity::from_pem(
                read(CLIENT_CERT_FILE),
                read(CLIENT_KEY_FILE),
            ));
        let channel = tonic::transport::Endpoint::from_shared(cluster.client_url(master))
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        let mut kv = synod_proto::etcdserverpb::kv_client::KvClient::new(channel);
        let put = synod_proto::etcdserverpb::PutRequest {
            key: b"k".to_vec().into(),
            value: b"claimed".to_vec().into(),
            ..Default::default()
        };
        let mut request = with("synod-forwarded-user", "someone".into(), put);
        request
            .metadata_mut()
            .insert("synod-forwarded", "1".parse().expect("metadata"));
        let refused = kv.put(request).await.expect_err("a claim from a client");
        assert_eq!(refused.message(), "etcdserver: user name is empty", "{refused:?}");
    });
}
