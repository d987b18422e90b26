//! A fault-injecting proxy in front of every member's peer port.
//!
//! Each member listens for peers on a port nobody else is told about; the
//! `--initial-cluster` every member is given names the proxy's port instead.
//! Since a member uses the connection it dials only to send (`synod-server`'s
//! `peer` module), a connection through member `to`'s proxy carries the
//! messages of one sender to `to`; the proxy learns which sender from the
//! connection's first frame, the handshake, and then forwards frame by frame
//! under the current [`LinkRules`] for that directed link.
//!
//! What a link can be made to do, all without breaking TCP's promise of
//! in-order delivery on one connection (a dropped frame in the middle of a
//! live connection is something no real network does to TCP, and would test
//! the proxy rather than the member):
//!
//! - **held**: frames stop moving, as over a partition TCP keeps
//!   retransmitting into. When the hold is lifted the connection either
//!   delivers what it held, late (messages from before a master change
//!   arriving after it), or is reset, as a long partition ends;
//! - **delayed**: every frame waits a fixed time before it is forwarded;
//! - **flaky**: every frame may reset the connection, losing it and whatever
//!   was in flight; the member redials.
//!
//! The handshake reply (the only thing a receiver sends back) always flows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use synod_server::frame::{FrameCodec, FrameKind, Handshake};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

/// Largest frame the proxy forwards, in bytes: the members' own default.
const FRAME_BYTES_MAX: u32 = synod_server::frame::FRAME_BYTES_MAX_DEFAULT;
/// How long the proxy waits for a dialer's handshake before closing.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What happens to frames on one directed link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkRule {
    /// Frames stop moving until the hold is lifted.
    pub held: bool,
    /// When the hold is lifted, reset the connection rather than deliver.
    pub reset_on_release: bool,
    /// Added to every frame's trip, in milliseconds.
    pub delay_ms: u64,
    /// Chance, in parts per million, that a frame resets its connection.
    pub reset_per_million: u32,
}

/// The rules of every directed link `(from, to)` by member index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkRules {
    links: HashMap<(usize, usize), LinkRule>,
}

impl LinkRules {
    /// The rule for frames from `from` to `to` (default: none).
    pub fn get(&self, from: usize, to: usize) -> LinkRule {
        self.links.get(&(from, to)).copied().unwrap_or_default()
    }

    /// Sets the rule of one directed link.
    pub fn set(&mut self, from: usize, to: usize, rule: LinkRule) {
        if rule == LinkRule::default() {
            self.links.remove(&(from, to));
        } else {
            self.links.insert((from, to), rule);
        }
    }

    /// Whether every link is clean.
    pub fn is_clean(&self) -> bool {
        self.links.is_empty()
    }
}

/// Shared control of every proxy: the harness writes rules, the
/// connections read them.
#[derive(Clone, Debug)]
pub struct Network {
    rules: Arc<watch::Sender<LinkRules>>,
    /// Connections forwarded and reset, for the report.
    counters: Arc<Mutex<NetworkCounters>>,
}

/// What the proxies did.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct NetworkCounters {
    /// Connections accepted from members.
    pub connections: u64,
    /// Frames forwarded.
    pub frames: u64,
    /// Connections the proxy reset (flaky links, ended holds).
    pub resets: u64,
    /// Frames delivered after being held.
    pub frames_held: u64,
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Network {
    /// A network with every link clean.
    pub fn new() -> Network {
        Network {
            rules: Arc::new(watch::Sender::new(LinkRules::default())),
            counters: Arc::default(),
        }
    }

    /// Replaces every rule at once.
    pub fn set_rules(&self, rules: LinkRules) {
        self.rules.send_replace(rules);
    }

    /// The rules in force.
    pub fn rules(&self) -> LinkRules {
        self.rules.borrow().clone()
    }

    /// Makes every link clean again.
    pub fn heal(&self) {
        self.set_rules(LinkRules::default());
    }

    /// What the proxies did so far.
    pub fn counters(&self) -> NetworkCounters {
        *self.counters.lock().expect("counters lock")
    }

    fn count(&self, update: impl FnOnce(&mut NetworkCounters)) {
        update(&mut self.counters.lock().expect("counters lock"));
    }

    /// Serves member `to`'s proxy on `listener`, forwarding to `member`,
    /// until `stop` is cancelled. `member_ids[i]` is member `i`'s ID, by
    /// which a handshake names its sender.
    pub async fn serve(
        self,
        listener: TcpListener,
        to: usize,
        member: SocketAddr,
        member_ids: Arc<Vec<u64>>,
        seed: u64,
        stop: CancellationToken,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((dialer, _)) = accepted else { continue };
            let _ = dialer.set_nodelay(true);
            self.count(|counters| counters.connections += 1);
            let network = self.clone();
            let ids = member_ids.clone();
            let connection_seed = rng.random();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = network.forward(dialer, to, member, &ids, connection_seed) => {}
                }
            });
        }
    }

    /// One connection from a dialer to member `to`; returns when either side
    /// closes or the proxy resets it.
    async fn forward(&self, dialer: TcpStream, to: usize, member: SocketAddr, member_ids: &[u64], seed: u64) {
        let Ok(upstream) = TcpStream::connect(member).await else {
            return;
        };
        let _ = upstream.set_nodelay(true);
        let (dialer_read, mut dialer_write) = dialer.into_split();
        let (mut upstream_read, upstream_write) = upstream.into_split();
        let mut frames_in = FramedRead::new(dialer_read, FrameCodec::new(FRAME_BYTES_MAX));
        let mut frames_out = FramedWrite::new(upstream_write, FrameCodec::new(FRAME_BYTES_MAX));

        let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, frames_in.next()).await {
            Ok(Some(Ok(frame))) => frame,
            _ => return,
        };
        let from = (first.kind == FrameKind::Handshake)
            .then(|| Handshake::from_frame(&first).ok())
            .flatten()
            .and_then(|handshake| member_ids.iter().position(|id| *id == handshake.sender_member_id));
        if frames_out.send(first).await.is_err() {
            return;
        }
        // The receiver's answers go back untouched.
        let back = async move {
            let _ = tokio::io::copy(&mut upstream_read, &mut dialer_write).await;
            let _ = dialer_write.shutdown().await;
        };
        let Some(from) = from else {
            // Not a member's handshake: the member refuses it; pass it through.
            let onward = async {
                while let Some(Ok(frame)) = frames_in.next().await {
                    if frames_out.send(frame).await.is_err() {
                        return;
                    }
                }
            };
            tokio::join!(back, onward);
            return;
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut rules = self.rules.subscribe();
        let onward = async {
            while let Some(Ok(frame)) = frames_in.next().await {
                let mut rule = rules.borrow_and_update().get(from, to);
                let mut was_held = false;
                while rule.held {
                    was_held = true;
                    let reset_on_release = rule.reset_on_release;
                    if rules.changed().await.is_err() {
                        return;
                    }
                    rule = rules.borrow_and_update().get(from, to);
                    if !rule.held && reset_on_release {
                        self.count(|counters| counters.resets += 1);
                        return;
                    }
                }
                if rule.reset_per_million > 0 && rng.random_range(0..1_000_000) < rule.reset_per_million {
                    self.count(|counters| counters.resets += 1);
                    return;
                }
                if rule.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(rule.delay_ms)).await;
                }
                if frames_out.send(frame).await.is_err() {
                    return;
                }
                self.count(|counters| {
                    counters.frames += 1;
                    counters.frames_held += u64::from(was_held);
                });
            }
        };
        // A reset ends both directions at once.
        tokio::select! {
            _ = back => {}
            _ = onward => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use synod_server::frame::{Frame, HANDSHAKE_PROTOCOL_VERSION};
    use tokio_util::codec::Framed;

    /// A proxy for member 1 in front of a listener standing in for it, and
    /// a connection through it from member 0 that has sent its handshake.
    struct Rig {
        network: Network,
        dialer: Framed<TcpStream, FrameCodec>,
        member: Framed<TcpStream, FrameCodec>,
        listener: TcpListener,
        proxy: SocketAddr,
        stop: CancellationToken,
    }

    fn handshake(sender: u64) -> Frame {
        Handshake {
            protocol_version: HANDSHAKE_PROTOCOL_VERSION,
            cluster_id: 7,
            sender_member_id: sender,
            receiver_member_id: 11,
            sender_name: "m".to_string(),
        }
        .to_frame()
        .expect("a short name")
    }

    async fn rig() -> Rig {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind member");
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = proxy_listener.local_addr().expect("proxy address");
        let network = Network::new();
        let stop = CancellationToken::new();
        tokio::spawn(network.clone().serve(
            proxy_listener,
            1,
            listener.local_addr().expect("member address"),
            Arc::new(vec![10, 11]),
            1,
            stop.clone(),
        ));
        let (dialer, member) = connect(proxy, &listener, 10).await;
        Rig {
            network,
            dialer,
            member,
            listener,
            proxy,
            stop,
        }
    }

    async fn connect(
        proxy: SocketAddr,
        listener: &TcpListener,
        sender: u64,
    ) -> (Framed<TcpStream, FrameCodec>, Framed<TcpStream, FrameCodec>) {
        let mut dialer = Framed::new(
            TcpStream::connect(proxy).await.expect("dial proxy"),
            FrameCodec::new(FRAME_BYTES_MAX),
        );
        dialer.send(handshake(sender)).await.expect("send handshake");
        let (accepted, _) = listener.accept().await.expect("proxy dials the member");
        let mut member = Framed::new(accepted, FrameCodec::new(FRAME_BYTES_MAX));
        let first = member.next().await.expect("a frame").expect("a good frame");
        assert_eq!(first, handshake(sender));
        (dialer, member)
    }

    /// Rules with only the link from member `from` to member 1 set.
    fn to_member_1(from: usize, rule: LinkRule) -> LinkRules {
        let mut rules = LinkRules::default();
        rules.set(from, 1, rule);
        rules
    }

    const HELD: LinkRule = LinkRule {
        held: true,
        reset_on_release: false,
        delay_ms: 0,
        reset_per_million: 0,
    };

    fn message(text: &'static str) -> Frame {
        Frame::message(Bytes::from_static(text.as_bytes()))
    }

    async fn next_within(member: &mut Framed<TcpStream, FrameCodec>, wait: Duration) -> Option<Option<Frame>> {
        tokio::time::timeout(wait, member.next())
            .await
            .ok()
            .map(|frame| frame.and_then(Result::ok))
    }

    #[tokio::test]
    async fn frames_flow_on_a_clean_link_and_the_reply_comes_back() {
        let mut rig = rig().await;
        rig.dialer.send(message("one")).await.expect("send");
        assert_eq!(
            next_within(&mut rig.member, Duration::from_secs(5)).await,
            Some(Some(message("one")))
        );
        rig.member.send(handshake(11)).await.expect("reply");
        let reply = tokio::time::timeout(Duration::from_secs(5), rig.dialer.next()).await;
        assert_eq!(reply.ok().flatten().and_then(Result::ok), Some(handshake(11)));
        rig.stop.cancel();
    }

    #[tokio::test]
    async fn a_held_link_delivers_late_in_order_when_released() {
        let mut rig = rig().await;
        rig.network.set_rules(to_member_1(0, HELD));
        rig.dialer.send(message("one")).await.expect("send");
        rig.dialer.send(message("two")).await.expect("send");
        assert_eq!(
            next_within(&mut rig.member, Duration::from_millis(300)).await,
            None,
            "held"
        );
        rig.network.heal();
        assert_eq!(
            next_within(&mut rig.member, Duration::from_secs(5)).await,
            Some(Some(message("one")))
        );
        assert_eq!(
            next_within(&mut rig.member, Duration::from_secs(5)).await,
            Some(Some(message("two")))
        );
        assert_eq!(rig.network.counters().frames_held, 1);
        rig.stop.cancel();
    }

    #[tokio::test]
    async fn a_hold_released_by_reset_closes_the_connection_and_delivers_nothing() {
        let mut rig = rig().await;
        rig.network.set_rules(to_member_1(
            0,
            LinkRule {
                reset_on_release: true,
                ..HELD
            },
        ));
        rig.dialer.send(message("lost")).await.expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
        rig.network.heal();
        assert_eq!(
            next_within(&mut rig.member, Duration::from_secs(5)).await,
            Some(None),
            "closed"
        );
        assert_eq!(rig.network.counters().resets, 1);
        rig.stop.cancel();
    }

    #[tokio::test]
    async fn rules_apply_to_the_sender_named_in_the_handshake_only() {
        let mut rig = rig().await;
        // Hold a link that is not this connection's (from member 1, which
        // never dials itself); this one, from member 0, must flow.
        rig.network.set_rules(to_member_1(1, HELD));
        rig.dialer.send(message("flows")).await.expect("send");
        assert_eq!(
            next_within(&mut rig.member, Duration::from_secs(5)).await,
            Some(Some(message("flows")))
        );
        // A connection whose handshake names member 1 is held.
        let (mut dialer, mut member) = connect(rig.proxy, &rig.listener, 11).await;
        dialer.send(message("held")).await.expect("send");
        assert_eq!(next_within(&mut member, Duration::from_millis(300)).await, None);
        rig.stop.cancel();
    }

    #[tokio::test]
    async fn a_flaky_link_resets_connections() {
        let mut rig = rig().await;
        rig.network.set_rules(to_member_1(
            0,
            LinkRule {
                reset_per_million: 1_000_000,
                ..LinkRule::default()
            },
        ));
        rig.dialer.send(message("lost")).await.expect("send");
        assert_eq!(next_within(&mut rig.member, Duration::from_secs(5)).await, Some(None));
        rig.stop.cancel();
    }
}
