//! The status page (`/ui`) in a real browser. Headless Chromium loads it from
//! a follower of a 3-member group and dumps the DOM its script rendered: three
//! member cards, all up, one of them master (the member etcdctl calls the
//! leader). Then the master is killed, and a fresh load must show another
//! member as master and the killed one down.
//!
//! A negative control runs first: the page as served, before its script runs,
//! holds no member card, so the checks read what the page's script drew from
//! the members' `member.json`, not markup that would pass whatever the members
//! say.
//!
//! Needs Debian's `chromium` (scripts/test.sh installs it); without it the
//! test is skipped, unless `CI=true`, where that is a failure.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The browser, as Debian names its command.
const CHROMIUM: &str = "chromium";
/// Longest one browser run may take in wall-clock time before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// One member card as the page rendered it (its data attributes).
#[derive(Debug)]
struct Card {
    name: String,
    role: String,
    health: String,
}

/// Whether Chromium is here; `false` means skip (never under `CI=true`).
fn chromium_installed() -> bool {
    let installed = Command::new(CHROMIUM)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is missing and CI=true (Debian package chromium; scripts/test.sh installs it)"
        );
        eprintln!("skipped: chromium is not installed (Debian package chromium)");
    }
    installed
}

/// Loads `url` in headless Chromium with a fresh profile, lets its scripts run
/// for 5 s of the browser's virtual time, and returns the DOM as rendered.
/// The background-networking flags keep Chromium from dialing out (this
/// machine's network refuses it); the page fetches only from the members.
fn render(url: &str) -> String {
    let profile = TempDir::new("ui-chromium");
    let mut command = Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()));
    let mut child = command
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium took over {BROWSER_TIMEOUT:?} on {url}: {}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = out.join().unwrap_or_default();
    let errors = err.join().unwrap_or_default();
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium on {url} exited with {status}; stdout {dom:?}; stderr {errors}"
    );
    dom
}

/// The value of attribute `name` in the opening tag `tag`.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let length = tag[start..].find('"')?;
    Some(tag[start..start + length].to_string())
}

/// Every member card in a rendered DOM: `<article class="member" ...>`.
fn cards(dom: &str) -> Vec<Card> {
    dom.match_indices("<article")
        .filter_map(|(start, _)| {
            let tag = &dom[start..start + dom[start..].find('>')?];
            if attribute(tag, "class")?.split(' ').all(|class| class != "member") {
                return None;
            }
            Some(Card {
                name: attribute(tag, "data-name")?,
                role: attribute(tag, "data-role")?,
                health: attribute(tag, "data-health")?,
            })
        })
        .collect()
}

/// The names of the cards with role `master`.
fn masters(cards: &[Card]) -> Vec<&str> {
    cards
        .iter()
        .filter(|card| card.role == "master")
        .map(|card| card.name.as_str())
        .collect()
}

/// Three members, all up, exactly one master: `master`.
fn shows_healthy_group(cards: &[Card], master: &str) -> Result<(), String> {
    if cards.len() != 3 {
        return Err(format!("{} member cards, not 3: {cards:?}", cards.len()));
    }
    if cards.iter().any(|card| card.health != "up") {
        return Err(format!("a member not up: {cards:?}"));
    }
    if masters(cards) != [master] {
        return Err(format!("masters {:?}, not just {master}: {cards:?}", masters(cards)));
    }
    Ok(())
}

/// Three members, `killed` down and no longer master, exactly one master,
/// which is another member; returns its name.
fn shows_new_master(cards: &[Card], killed: &str) -> Result<String, String> {
    if cards.len() != 3 {
        return Err(format!("{} member cards, not 3: {cards:?}", cards.len()));
    }
    for card in cards {
        let expected = if card.name == killed { "down" } else { "up" };
        if card.health != expected {
            return Err(format!("{} is {}, not {expected}: {cards:?}", card.name, card.health));
        }
    }
    match masters(cards)[..] {
        [master] if master != killed => Ok(master.to_string()),
        _ => Err(format!("masters {:?}: {cards:?}", masters(cards))),
    }
}

#[test]
fn the_status_page_shows_every_member_and_follows_a_master_change() {
    if !chromium_installed() {
        return;
    }
    let started = Instant::now();
    let mut cluster = Cluster::start(3, "ui");
    let master = cluster.wait_for_master(Duration::from_secs(20));
    let master_name = cluster.members[master].name.clone();
    // Served by a follower, which outlives the master's kill.
    let server = (master + 1) % 3;
    let url = format!("{}/ui", cluster.members[server].url());

    // What the page reads, straight from the member: readable from any origin.
    let (head, body) = http_get_with_head(cluster.members[server].client_port, "/ui/member.json");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("access-control-allow-origin: *"),
        "{head}"
    );
    let facts: serde_json::Value = serde_json::from_str(&body).expect("member.json is JSON");
    assert_eq!(
        facts["member"]["name"],
        cluster.members[server].name.as_str(),
        "{facts}"
    );
    assert_eq!(facts["role"], "follower", "{facts}");
    assert_eq!(facts["members"].as_array().map(Vec::len), Some(3), "{facts}");
    let (head, page) = http_get_with_head(cluster.members[server].client_port, "/ui");
    assert!(head.to_ascii_lowercase().contains("content-type: text/html"), "{head}");
    assert!(page.contains("name=\"viewport\""), "{page}");

    // The negative control: the page as served, before its script runs,
    // holds no member card, so the checks below fail unless the script drew
    // them. (Chromium's --dump-dom prints nothing with scripts off, so this
    // reads the served HTML instead.)
    let static_cards = cards(&page);
    assert!(
        static_cards.is_empty() && shows_healthy_group(&static_cards, &master_name).is_err(),
        "the page before its script runs already shows members: {static_cards:?}"
    );

    let loaded = Instant::now();
    retry(
        Duration::from_secs(30),
        "page showing three members up and one master",
        || shows_healthy_group(&cards(&render(&url)), &master_name),
    );
    eprintln!(
        "the page showed 3 members up, {master_name} master, {:?} after the first load began",
        loaded.elapsed()
    );

    cluster.kill(master);
    let killed = Instant::now();
    let new_master = retry(
        Duration::from_secs(10),
        "page showing a new master and the killed one down",
        || shows_new_master(&cards(&render(&url)), &master_name),
    );
    assert_ne!(new_master, master_name);
    eprintln!(
        "the page showed {new_master} master and {master_name} down {:?} after the kill; the test took {:?}",
        killed.elapsed(),
        started.elapsed()
    );
}
