//! Malformed flags and damaged data directories: a clear error and a failing
//! exit status, never a panic.

mod common;

use std::process::Output;

use common::{free_ports, synod, TempDir};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_refused(output: &Output, expected: &str) {
    let text = stderr(output);
    assert!(!output.status.success(), "accepted; stderr: {text}");
    assert!(!text.contains("panicked"), "panicked: {text}");
    assert!(text.contains(expected), "stderr lacks {expected:?}: {text}");
}

fn server_args(name: &str, cluster: &str, ports: &[u16]) -> Vec<String> {
    vec![
        "server".into(),
        "--name".into(),
        name.into(),
        "--listen-client".into(),
        format!("127.0.0.1:{}", ports[0]),
        "--listen-peer".into(),
        format!("127.0.0.1:{}", ports[1]),
        "--initial-cluster".into(),
        cluster.into(),
    ]
}

fn run(args: &[String], directory: &TempDir) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    synod(&args, Some(&directory.0))
}

#[test]
fn malformed_flags_are_refused_clearly() {
    let directory = TempDir::new("flags");
    let ports = free_ports(2);
    let cluster = format!("a=127.0.0.1:{}", ports[1]);

    assert_refused(&synod(&["server"], None), "required");
    assert_refused(&synod(&["bogus"], None), "unrecognized subcommand");
    let mut args = server_args("a", &cluster, &ports);
    args[4] = "not-an-address".into();
    assert_refused(&run(&args, &directory), "invalid value");
    assert_refused(
        &run(&server_args("b", &cluster, &ports), &directory),
        "not listed in --initial-cluster",
    );
    assert_refused(
        &run(&server_args("a", "a=nowhere", &ports), &directory),
        "is not NAME=HOST:PORT",
    );
    assert_refused(
        &run(&server_args("a", "a=h:1,a=h:2", &ports), &directory),
        "lists the name \"a\" twice",
    );
    let mut args = server_args("a", &cluster, &ports);
    args.extend(["--heartbeat-interval-ms".into(), "5000".into()]);
    assert_refused(&run(&args, &directory), "heartbeat_interval");
    let mut args = server_args("a", &cluster, &ports);
    args.extend(["--initial-cluster-state".into(), "sideways".into()]);
    assert_refused(&run(&args, &directory), "invalid value");
    assert_refused(&synod(&["dev", "--nodes", "0"], None), "invalid value");
}

#[test]
fn damaged_data_directories_are_refused_clearly() {
    let ports = free_ports(2);
    let cluster = format!("a=127.0.0.1:{}", ports[1]);

    let damaged = TempDir::new("damaged-member");
    std::fs::write(damaged.0.join("member"), b"\x00\x01garbage").expect("write");
    assert_refused(
        &run(&server_args("a", &cluster, &ports), &damaged),
        "damaged member file",
    );

    let other = TempDir::new("other-member");
    std::fs::write(
        other.0.join("member"),
        format!(
            "synod-member-v1\nname=zed\nmember_id={:x}\ncluster_id={:x}\ninitial_cluster=zed=127.0.0.1:1\n",
            synod_server::config::member_id("zed"),
            synod_server::config::cluster_id(&synod_server::config::parse_initial_cluster("zed=127.0.0.1:1").unwrap()),
        ),
    )
    .expect("write");
    assert_refused(
        &run(&server_args("a", &cluster, &ports), &other),
        "belongs to member \"zed\"",
    );

    let not_a_directory = TempDir::new("file");
    let file = not_a_directory.0.join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let args: Vec<String> = server_args("a", &cluster, &ports);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let path = file.to_string_lossy().into_owned();
    args.extend(["--data-dir", &path]);
    assert_refused(&synod(&args, None), "cannot use data directory");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = busy.local_addr().expect("address").port();
    let fresh = TempDir::new("busy");
    assert_refused(
        &run(&server_args("a", &cluster, &[busy_port, ports[1]]), &fresh),
        "cannot listen on",
    );
}
