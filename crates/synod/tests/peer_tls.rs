//! Mutual TLS between members: a group whose members each present a
//! certificate naming them commits; a member with another CA's certificate,
//! or with a certificate naming another member, is kept out with a clear log
//! line while the others go on serving.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{etcdctl, Cluster};
use synod_server::tls::generate::{peer_cert_file, peer_key_file, write_with_peers, CA_FILE};

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The peer TLS flags of a member that presents `certificate_name`'s
/// certificate from `directory` and trusts the CA in `ca_directory`.
fn peer_flags(directory: &Path, certificate_name: &str, ca_directory: &Path) -> Vec<String> {
    vec![
        "--peer-cert-file".into(),
        directory.join(peer_cert_file(certificate_name)).display().to_string(),
        "--peer-key-file".into(),
        directory.join(peer_key_file(certificate_name)).display().to_string(),
        "--peer-trusted-ca-file".into(),
        ca_directory.join(CA_FILE).display().to_string(),
        "--peer-client-cert-auth".into(),
    ]
}

fn launch(cluster: &mut Cluster, index: usize, flags: &[String]) {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    cluster.launch_with(index, &flags);
}

fn names(cluster: &Cluster) -> Vec<String> {
    cluster.members.iter().map(|member| member.name.clone()).collect()
}

fn wait_for_log(cluster: &Cluster, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.members.iter().any(|member| member.log_text().contains(what)) {
        assert!(
            Instant::now() < deadline,
            "no log line with {what:?}: {}",
            cluster
                .members
                .iter()
                .map(|member| member.log_text())
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn put_get(cluster: &Cluster, index: usize, key: &str) {
    let endpoint = cluster.members[index].endpoint();
    let put = etcdctl(&["--endpoints", &endpoint, "--command-timeout", "10s", "put", key, "v"]);
    assert!(put.status.success(), "{}", output_text(&put));
    let got = etcdctl(&["--endpoints", &endpoint, "get", key, "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "v\n", "{}", output_text(&got));
}

#[test]
fn members_with_certificates_naming_them_form_a_group() {
    let mut cluster = Cluster::unstarted(3, "peer-tls", &[]);
    let directory = cluster.root.0.join("peer-tls");
    write_with_peers(&directory, "root", &names(&cluster)).expect("certificates");
    for index in 0..3 {
        let name = cluster.members[index].name.clone();
        launch(&mut cluster, index, &peer_flags(&directory, &name, &directory));
    }
    let master = cluster.wait_for_master(Duration::from_secs(20));
    put_get(&cluster, (master + 1) % 3, "over-mtls");
    let log = cluster.members[0].log_text();
    assert!(!log.contains("peers are not authenticated"), "{log}");
}

#[test]
fn a_stranger_or_an_impostor_is_kept_out() {
    let mut cluster = Cluster::unstarted(3, "peer-tls-out", &[]);
    let directory = cluster.root.0.join("peer-tls");
    write_with_peers(&directory, "root", &names(&cluster)).expect("certificates");
    // Another CA, with certificates for the same names.
    let stranger = cluster.root.0.join("stranger");
    write_with_peers(&stranger, "root", &names(&cluster)).expect("certificates");
    // The group forms with every member's own certificate (a new group
    // needs every member to answer its first probe).
    for index in 0..3 {
        let name = cluster.members[index].name.clone();
        launch(&mut cluster, index, &peer_flags(&directory, &name, &directory));
    }
    cluster.wait_for_master(Duration::from_secs(20));
    // The third member comes back with another CA's certificate.
    cluster.kill(2);
    let third = cluster.members[2].name.clone();
    launch(&mut cluster, 2, &peer_flags(&stranger, &third, &stranger));
    wait_for_log(&cluster, "invalid peer certificate");
    let master = cluster.wait_for_master(Duration::from_secs(20));
    assert!(master < 2, "the stranger cannot be master");
    put_get(&cluster, master, "without-the-stranger");

    // The third member comes back with the first member's certificate: it
    // chains to the right CA but names another member.
    cluster.kill(2);
    let first = cluster.members[0].name.clone();
    launch(&mut cluster, 2, &peer_flags(&directory, &first, &directory));
    wait_for_log(&cluster, &format!("certificate names Some(\"{first}\")"));
    let master = cluster.wait_for_master(Duration::from_secs(20));
    put_get(&cluster, master, "without-the-impostor");
}

#[test]
fn a_plain_peer_port_says_so() {
    let cluster = Cluster::start(1, "peer-plain");
    wait_for_log(&cluster, "peers are not authenticated");
}
