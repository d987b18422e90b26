//! Mutual TLS between members: a group whose members each present a
//! certificate naming them commits; a member with another CA's certificate,
//! with a certificate naming another member, or with a client certificate of
//! the cluster's CA, is kept out with a clear log line while the others go on
//! serving.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{etcdctl, output_text, Cluster};
use synod_server::tls::generate::{
    peer_cert_file, peer_key_file, write_with_peers, CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE,
};

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
    cluster.put_get((master + 1) % 3, "over-mtls");
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
    cluster.wait_for_log("invalid peer certificate");
    let master = cluster.wait_for_master(Duration::from_secs(20));
    assert!(master < 2, "the stranger cannot be master");
    cluster.put_get(master, "without-the-stranger");

    // The third member comes back with the first member's certificate: it
    // chains to the right CA but names another member.
    cluster.kill(2);
    let first = cluster.members[0].name.clone();
    launch(&mut cluster, 2, &peer_flags(&directory, &first, &directory));
    cluster.wait_for_log(&format!("certificate names Some(\"{first}\")"));
    let master = cluster.wait_for_master(Duration::from_secs(20));
    cluster.put_get(master, "without-the-impostor");

    // The third member comes back with the client certificate of the same CA:
    // it chains, but names a user, not a member.
    cluster.kill(2);
    let mut flags = peer_flags(&directory, &third, &directory);
    flags[1] = directory.join(CLIENT_CERT_FILE).display().to_string();
    flags[3] = directory.join(CLIENT_KEY_FILE).display().to_string();
    launch(&mut cluster, 2, &flags);
    cluster.wait_for_log("certificate names Some(\"root\")");
    let master = cluster.wait_for_master(Duration::from_secs(20));
    assert!(master < 2, "a client certificate cannot make a master");
    cluster.put_get(master, "without-the-client-certificate");
}

#[test]
fn a_plain_peer_port_says_so() {
    let cluster = Cluster::start(1, "peer-plain");
    cluster.wait_for_log("peers are not authenticated");
}

/// 200 idle connections to a member's peer port, none of which ever sends a
/// handshake: the group goes on committing, and a member restarted in the
/// middle of it gets its connections through and catches up.
#[test]
fn idle_strangers_on_the_peer_port_do_not_lock_members_out() {
    let mut cluster = Cluster::start(3, "peer-idle");
    let master = cluster.wait_for_master(Duration::from_secs(20));
    let peer_port = cluster.members[master].peer_port;
    // 200 connections that never send a byte, each reopened as soon as the
    // member closes it: the slots stay taken for as long as the test runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let strangers = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let open = || {
                let stream = std::net::TcpStream::connect(("127.0.0.1", peer_port)).ok()?;
                stream.set_nonblocking(true).ok()?;
                Some(stream)
            };
            let mut held: Vec<std::net::TcpStream> = (0..200).filter_map(|_| open()).collect();
            let mut reopened = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for stream in held.iter_mut() {
                    let mut byte = [0u8; 1];
                    let alive = matches!(stream.peek(&mut byte), Err(ref error) if error.kind() == std::io::ErrorKind::WouldBlock);
                    if !alive {
                        if let Some(fresh) = open() {
                            *stream = fresh;
                            reopened += 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (held.len(), reopened)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    cluster.put_get(master, "while-strangers-wait");
    let follower = (master + 1) % 3;
    cluster.kill(follower);
    cluster.put_get(master, "while-it-was-down");
    cluster.launch(follower);
    // The restarted member must reach the master's peer port through the
    // strangers to learn what it missed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let endpoint = cluster.members[follower].endpoint();
        let got = etcdctl(&[
            "--endpoints",
            &endpoint,
            "--command-timeout",
            "2s",
            "get",
            "while-it-was-down",
            "--print-value-only",
            "--consistency=s",
        ]);
        if String::from_utf8_lossy(&got.stdout) == "v\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member never caught up: {}",
            output_text(&got)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.wait_for_log("did not finish their handshake closed to make room");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (held, reopened) = strangers.join().expect("the strangers' thread");
    assert!(held >= 150, "only {held} connections held ({reopened} reopened)");
}
