//! TLS on the client port: etcdctl and the Rust etcd client over https,
//! forwarding from followers to the master over TLS, client certificates
//! required with `--client-cert-auth`, and clear refusals otherwise.

mod common;

use common::{etcdctl, output_text, Cluster};
use synod_server::tls::generate::{CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE};

fn follower(cluster: &Cluster) -> usize {
    let master = cluster.wait_for_master(std::time::Duration::from_secs(20));
    (master + 1) % cluster.members.len()
}

#[test]
fn etcdctl_over_https_with_the_clusters_ca() {
    let cluster = Cluster::start_tls(3, "tls", false);
    let follower = follower(&cluster);
    // A put at a follower is forwarded to the master's client port, over TLS.
    let put = cluster.etcdctl(&["--endpoints", &cluster.client_url(follower), "put", "greeting", "hello"]);
    assert!(put.status.success(), "{}", output_text(&put));
    for index in 0..3 {
        let get = cluster.etcdctl(&["--endpoints", &cluster.client_url(index), "get", "greeting"]);
        assert_eq!(
            String::from_utf8_lossy(&get.stdout),
            "greeting\nhello\n",
            "{}",
            output_text(&get)
        );
    }

    // Without the CA, the member's certificate is not trusted.
    let untrusted = etcdctl(&[
        "--endpoints",
        &cluster.client_url(0),
        "--command-timeout",
        "2s",
        "get",
        "greeting",
    ]);
    assert!(!untrusted.status.success(), "{}", output_text(&untrusted));

    // A plain-text client is told what is wrong instead of left hanging.
    let plain = etcdctl(&["--endpoints", &cluster.members[0].endpoint(), "get", "greeting"]);
    assert!(!plain.status.success());
    assert!(
        output_text(&plain).contains("speaks TLS only"),
        "{}",
        output_text(&plain)
    );
    let (code, body) = common::http_get(cluster.members[0].client_port, "/health");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("speaks TLS only"), "{body}");
}

#[test]
fn client_cert_auth_requires_a_certificate_from_the_ca() {
    let cluster = Cluster::start_tls(3, "tls-cert-auth", true);
    let tls = cluster.tls.as_ref().expect("TLS cluster");
    let follower = follower(&cluster);
    let put = cluster.etcdctl(&["--endpoints", &cluster.client_url(follower), "put", "k", "v"]);
    assert!(put.status.success(), "{}", output_text(&put));
    let get = cluster.etcdctl(&["--endpoints", &cluster.client_url(follower), "get", "k"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout), "k\nv\n", "{}", output_text(&get));

    // Trusting the server is not enough: the client must present a certificate.
    let anonymous = etcdctl(&[
        "--endpoints",
        &cluster.client_url(0),
        "--cacert",
        &tls.file(CA_FILE),
        "--command-timeout",
        "2s",
        "get",
        "k",
    ]);
    assert!(!anonymous.status.success(), "{}", output_text(&anonymous));

    // A certificate from another CA is refused as well.
    let stranger = common::TempDir::new("tls-stranger");
    synod_server::tls::generate::write(&stranger.0, "root").expect("generate certificates");
    let foreign = etcdctl(&[
        "--endpoints",
        &cluster.client_url(0),
        "--cacert",
        &tls.file(CA_FILE),
        "--cert",
        &stranger.0.join(CLIENT_CERT_FILE).display().to_string(),
        "--key",
        &stranger.0.join(CLIENT_KEY_FILE).display().to_string(),
        "--command-timeout",
        "2s",
        "get",
        "k",
    ]);
    assert!(!foreign.status.success(), "{}", output_text(&foreign));
}

#[test]
fn the_rust_etcd_client_speaks_tls() {
    let cluster = Cluster::start_tls(3, "tls-rust", true);
    let tls = cluster.tls.as_ref().expect("TLS cluster");
    let read = |name: &str| std::fs::read(tls.directory.join(name)).expect("read certificate");
    let options = etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(CA_FILE)))
            .identity(etcd_client::Identity::from_pem(
                read(CLIENT_CERT_FILE),
                read(CLIENT_KEY_FILE),
            )),
    );
    let endpoints: Vec<String> = (0..3).map(|index| cluster.client_url(index)).collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect(&endpoints, Some(options))
            .await
            .expect("connect over TLS");
        client.put("rust", "tls", None).await.expect("put");
        let got = client.get("rust", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"tls");
    });
}

/// Runs `synod server` as a one-member group on an https client URL, with
/// `extra` flags, and returns its output (it is expected to refuse to start).
fn start_single(extra: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    let mut args = vec![
        "server",
        "--name",
        "a",
        "--listen-client",
        "https://127.0.0.1:1",
        "--listen-peer",
        "127.0.0.1:2",
        "--initial-cluster",
        "a=127.0.0.1:2",
    ];
    args.extend_from_slice(extra);
    common::synod(&args, Some(data_dir))
}

#[test]
fn bad_tls_flags_are_refused_at_start() {
    let directory = common::TempDir::new("tls-flags");
    let missing = start_single(&[], &directory.0.join("a"));
    assert!(!missing.status.success());
    assert!(
        output_text(&missing).contains("needs --cert-file"),
        "{}",
        output_text(&missing)
    );
    std::fs::write(directory.0.join("garbage.pem"), b"not a certificate").expect("write");
    let garbage = directory.0.join("garbage.pem").display().to_string();
    let bad = start_single(
        &["--cert-file", &garbage, "--key-file", &garbage],
        &directory.0.join("b"),
    );
    assert!(!bad.status.success());
    assert!(
        output_text(&bad).contains("holds no PEM certificate"),
        "{}",
        output_text(&bad)
    );
}

#[test]
fn sighup_reloads_the_client_certificates() {
    use synod_server::tls::generate::{SERVER_CERT_FILE, SERVER_KEY_FILE};
    let cluster = Cluster::start_tls(1, "tls-reload", false);
    let tls = cluster.tls.as_ref().expect("TLS cluster");
    let old_ca = cluster.root.0.join("old-ca.pem");
    std::fs::copy(tls.file(CA_FILE), &old_ca).expect("keep the old CA");
    let fresh = cluster.root.0.join("fresh");
    synod_server::tls::generate::write(&fresh, "root").expect("generate certificates");
    for name in [SERVER_CERT_FILE, SERVER_KEY_FILE, CA_FILE] {
        std::fs::copy(fresh.join(name), tls.directory.join(name)).expect("replace a file");
    }
    let url = cluster.client_url(0);
    let get = |ca: &str| {
        etcdctl(&[
            "--endpoints",
            &url,
            "--cacert",
            ca,
            "--command-timeout",
            "2s",
            "get",
            "k",
        ])
    };
    let new_ca = tls.file(CA_FILE);
    assert!(
        !get(&new_ca).status.success(),
        "the new files are not read before SIGHUP"
    );
    let hangup = |cluster: &Cluster| {
        let pid = cluster.members[0].child.as_ref().expect("running").id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
    };
    hangup(&cluster);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !get(&new_ca).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            cluster.members[0].log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !get(&old_ca.display().to_string()).status.success(),
        "the old CA no longer works"
    );

    // Files that do not load leave the settings in force.
    std::fs::write(tls.directory.join(SERVER_CERT_FILE), b"broken").expect("break a file");
    hangup(&cluster);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cluster.members[0].log_text().contains("not reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            cluster.members[0].log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let still = get(&new_ca);
    assert!(still.status.success(), "{}", output_text(&still));
}
