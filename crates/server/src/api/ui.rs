//! `/ui`: a live status page of the whole group, served by every member on
//! its client port, and `/ui/member.json`, the facts of one member it is
//! drawn from.
//!
//! An operator opens `/ui` on any member and sees every member at a glance:
//! role and health, ballot round and lease holder, chosen and applied
//! instances and the lag behind the highest, WAL fsync latency and group
//! commit batch sizes, write rates and errors, master changes, alarms, and
//! whether the state hashes agree. etcd offers no such page.
//!
//! The page is one HTML file with its CSS and JavaScript inline, compiled
//! into the binary (no build step, nothing fetched from elsewhere). The
//! member serving it knows only its own facts, so the page itself polls each
//! member's `member.json` at the client URL that member announced (learned
//! from the member that served it), about once a second: a member that does
//! not answer is shown down, which no member could tell about itself. That
//! is why `member.json` answers any origin (`Access-Control-Allow-Origin:
//! *`): a page served by one member reads the others. It holds nothing a
//! client could not read from `/metrics` and etcd's `Status` and `AlarmList`
//! calls on the same unauthenticated port.
//!
//! Rates and recent quantiles are differences of successive samples, which
//! the page computes: a member keeps no history for it.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{json, Value};
use synod_kv::AlarmType;

use super::Api;
use crate::metrics::HistogramReading;
use crate::node::Shared;

/// The page: HTML with inline CSS and JavaScript.
const PAGE: &str = include_str!("ui.html");

/// Most alarms listed in one `member.json`; `alarms_total` counts them all.
/// Alarms are raised through the log and a client may raise them for any
/// member ID, so their number is not bounded by the group's size.
pub const ALARMS_LISTED_MAX: usize = 64;

/// What the page may do, for a browser that enforces it: run its own inline
/// script and style, and fetch from the members (any http or https origin,
/// since their client URLs are only known at run time); nothing else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self' http: https:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The routes of the status page: `GET /ui` and `GET /ui/member.json`.
pub fn router(api: Api) -> axum::Router {
    axum::Router::new()
        .route("/ui", get(page))
        .route("/ui/member.json", get(member_json).with_state(api))
}

/// `GET /ui`: the page. Revalidated on every load, so a restarted member's
/// new build is what a reload shows.
async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
}

/// `GET /ui/member.json`: [`member_facts`], readable from any origin and
/// never cached (the page polls it).
async fn member_json(State(api): State<Api>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        member_facts(api.shared()).to_string(),
    )
}

/// This member's own facts as the page reads them: who it is and its view of
/// the group (every member's ID, name and client URL, the master), its
/// progress (round, chosen and applied instances), its state hash with the
/// instance it is at, the raised alarms, and the counters and histograms
/// the page turns into rates and quantiles. IDs are hex, as etcdctl prints
/// them; the hash is 16 hex digits, as `/consistency` prints it.
pub fn member_facts(shared: &Shared) -> Value {
    let id = |member: u64| format!("{member:x}");
    // The status's applied instance moves only under the store's lock, so
    // read under it the hash and the instance belong together: members'
    // hashes are comparable only at one instance.
    let (state_hash, state_hash_instance, alarms_total, alarms) = {
        let store = shared.store();
        let instance = shared.current_status().applied_instance;
        let alarms = store.alarms(AlarmType::None).alarms;
        let listed: Vec<Value> = alarms
            .iter()
            .take(ALARMS_LISTED_MAX)
            .map(|raised| json!({ "member": id(raised.member_id), "alarm": alarm_name(raised.alarm) }))
            .collect();
        (store.state_hash(), instance, alarms.len(), listed)
    };
    let status = shared.current_status();
    let members: Vec<Value> = shared
        .identity
        .members
        .iter()
        .map(|member| {
            json!({
                "id": id(member.id),
                "name": member.name,
                "client_url": shared.client_url_of(member.id),
            })
        })
        .collect();
    let metrics = &shared.metrics;
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    let wal = metrics.wal.get().map(|counters| {
        let stats = counters.snapshot();
        json!({ "batches": stats.batches, "records": stats.records, "syncs": stats.syncs })
    });
    json!({
        "clock_ms": clock_ms(),
        "member": {
            "id": id(shared.identity.member_id),
            "name": shared.identity.name,
            "client_url": shared.client_url,
        },
        "cluster_id": id(shared.identity.cluster_id),
        "version": env!("CARGO_PKG_VERSION"),
        "members": members,
        "role": if status.is_master { "master" } else { "follower" },
        "master": status.master.map(id),
        "round": status.round,
        "chosen_instance": status.chosen_through,
        "applied_instance": status.applied_instance,
        "state_hash": format!("{state_hash:016x}"),
        "state_hash_instance": state_hash_instance,
        "alarms": alarms,
        "alarms_total": alarms_total,
        "corrupt": shared.corrupt.load(std::sync::atomic::Ordering::Relaxed),
        "metrics": {
            "master_changes": load(&metrics.master_changes),
            "proposals": {
                "committed": load(&metrics.proposals_committed),
                "rejected": load(&metrics.proposals_rejected),
                "unknown": load(&metrics.proposals_unknown),
                "timed_out": load(&metrics.proposals_timed_out),
                "forwarded": load(&metrics.proposals_forwarded),
            },
            "fsync_seconds": histogram(metrics.fsync_latency.read()),
            "commit_seconds": histogram(metrics.commit_latency.read()),
            "batch_values": histogram(metrics.batch_values.read()),
            "wal": wal,
        },
    })
}

/// Milliseconds on this process's monotonic clock since its first reading,
/// read with the counters: the page divides counter differences by
/// differences of this, not of its own clock, so a slow answer, or a browser
/// whose clock runs on virtual time (headless Chromium's), does not skew a
/// rate. It starts again from zero when the member restarts, as the counters
/// do.
fn clock_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// etcd's name of an alarm, as etcdctl prints it.
fn alarm_name(alarm: AlarmType) -> &'static str {
    match alarm {
        AlarmType::None => "NONE",
        AlarmType::Nospace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
    }
}

/// A histogram as the page reads it: the quantiles since start, and the
/// counts it subtracts to get recent ones.
fn histogram(reading: HistogramReading) -> Value {
    json!({
        "p50": reading.quantile(0.5),
        "p99": reading.quantile(0.99),
        "count": reading.count,
        "sum": reading.sum,
        "bounds": reading.bounds,
        "buckets": reading.buckets,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use synod_kv::{AlarmAction, AlarmRequest, Request, Store};

    use super::*;
    use crate::config::{MemberSpec, Tunables};
    use crate::identity::Identity;
    use crate::metrics::Metrics;
    use crate::peer::PeerEvents;

    #[test]
    fn member_facts_name_every_member_the_hash_at_its_instance_and_the_alarms() {
        let mut store = Store::new(crate::node::kv_config());
        for member_id in 0..(ALARMS_LISTED_MAX as u64 + 3) {
            let alarm = Request::Alarm(AlarmRequest {
                action: AlarmAction::Activate,
                member_id,
                alarm: AlarmType::Nospace,
            });
            assert!(store.apply(&alarm).result.is_ok());
        }
        let hash = store.state_hash();
        let spec = |name: &str, id: u64| MemberSpec {
            name: name.to_string(),
            id,
            peer_address: String::new(),
        };
        let identity = Identity {
            name: "a".to_string(),
            member_id: 0xa1,
            cluster_id: 0xc1,
            initial_cluster: String::new(),
            token: String::new(),
            members: vec![spec("a", 0xa1), spec("b", 0xb2), spec("c", 0xc3)],
        };
        let (shared, _, status) = crate::node::shared(
            identity,
            "http://127.0.0.1:1".to_string(),
            Tunables::default(),
            Arc::new(Metrics::default()),
            store,
        );
        shared.client_url(synod_paxos::NodeId(0xb2), "http://127.0.0.1:2".to_string());
        status.send_modify(|status| {
            status.applied_instance = 7;
            status.chosen_through = 9;
            status.round = 3;
            status.master = Some(0xb2);
        });
        shared.metrics.fsync_latency.observe(0.003);
        let facts = member_facts(&shared);
        assert!(facts["clock_ms"].is_u64());
        assert_eq!(facts["member"]["id"], "a1");
        assert_eq!(facts["member"]["name"], "a");
        assert_eq!(facts["cluster_id"], "c1");
        assert_eq!(facts["role"], "follower");
        assert_eq!(facts["master"], "b2");
        assert_eq!(facts["round"], 3);
        assert_eq!(facts["chosen_instance"], 9);
        assert_eq!(facts["applied_instance"], 7);
        assert_eq!(facts["state_hash"], format!("{hash:016x}"));
        assert_eq!(facts["state_hash_instance"], 7);
        let members = facts["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[0]["client_url"], "http://127.0.0.1:1");
        assert_eq!(members[1]["client_url"], "http://127.0.0.1:2");
        assert_eq!(members[2]["client_url"], Value::Null);
        assert_eq!(facts["alarms"].as_array().unwrap().len(), ALARMS_LISTED_MAX);
        assert_eq!(facts["alarms"][1], json!({ "member": "1", "alarm": "NOSPACE" }));
        assert_eq!(facts["alarms_total"], ALARMS_LISTED_MAX + 3);
        assert_eq!(facts["metrics"]["fsync_seconds"]["p99"], 0.004);
        assert_eq!(facts["metrics"]["fsync_seconds"]["count"], 1);
        assert_eq!(facts["metrics"]["wal"], Value::Null);
    }

    #[test]
    fn the_page_is_self_contained_and_readable_on_a_phone() {
        assert!(PAGE.contains(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#));
        // Nothing fetched from anywhere but the members: no absolute URL at all.
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(
            !PAGE.contains("innerHTML"),
            "members' values are drawn as text, never as HTML"
        );
        assert!(PAGE.contains("/ui/member.json"));
    }
}
