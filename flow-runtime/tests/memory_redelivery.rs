//! Which unacknowledged messages a tokio node re-sends, and when: only
//! those unacknowledged for a whole redelivery interval at a tick (but
//! those at every tick until acknowledged), the whole outbox at start-up,
//! everything for a peer at once when its link comes back.
//!
//! Alice is a real node (driver, redb file) on a `MemoryNetwork`; Bob is a
//! hand-driven peer that counts what arrives and acknowledges only what the
//! test says. The tokio clock is paused, so the redelivery ticks fall at
//! exact instants and the tests neither sleep for real nor depend on the
//! machine's speed.

use flow_runtime::engine::WireMessage;
use flow_runtime::prelude::*;
use flow_runtime::runner::{Node, NodeBuilder};
use flow_runtime::storage::RedbOptions;
use flow_runtime::testing::ping_pong::{expected_total, ping, pong};
use flow_runtime::transport::{
    Incoming, MemoryNetwork, MemoryTransport, SendError, Transport, TransportEvent,
};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep, sleep_until};

/// Alice's redelivery interval.
const TICK: Duration = Duration::from_secs(1);

fn party(name: &str, byte: u8) -> Party {
    Party::new(name, PublicKey([byte; 32]))
}

/// Starts (or restarts) Alice on `dir/Alice.redb`, redelivering every
/// [`TICK`] (the first tick is at start).
async fn start_alice(net: &MemoryNetwork, alice: &Party, dir: &Path) -> Node<MemoryTransport> {
    let (transport, incoming) = net.join(alice);
    let db = dir.join("Alice.redb");
    let mut b = NodeBuilder::with_transport(alice.clone(), db, transport, incoming);
    b.store_options(RedbOptions {
        quick_repair: false,
        ..RedbOptions::default()
    });
    b.redelivery_interval(TICK);
    // On the paused clock the driver must not wait for the committer's
    // real thread (the clock would jump past ticks meanwhile).
    b.commit_inline_when_idle(true);
    b.flow::<ping::Flow>();
    b.start().await.unwrap()
}

/// A hand-driven Bob: counts how often each of Alice's messages arrived.
struct RawPeer {
    transport: MemoryTransport,
    incoming: Incoming,
    /// Sequence number (one session) -> times received.
    received: BTreeMap<u64, u32>,
    session: Option<u64>,
}

impl RawPeer {
    /// Joins `net` as `who` (again: a reconnect, with fresh counts).
    fn join(net: &MemoryNetwork, who: &Party) -> Self {
        let (transport, incoming) = net.join(who);
        RawPeer {
            transport,
            incoming,
            received: BTreeMap::new(),
            session: None,
        }
    }

    /// Times each message arrived so far, in sequence order.
    fn counts(&mut self) -> Vec<u32> {
        while let Ok((_, frame)) = self.incoming.try_recv() {
            match WireMessage::decode(&frame).unwrap() {
                WireMessage::Session { session, seq, .. } => {
                    assert_eq!(*self.session.get_or_insert(session), session);
                    *self.received.entry(seq).or_default() += 1;
                }
                other => panic!("Alice sent {other:?}"),
            }
        }
        self.received.values().copied().collect()
    }

    /// Waits (on the paused clock) until `n` distinct messages arrived.
    async fn wait_for(&mut self, n: usize) {
        let give_up = Instant::now() + TICK / 10;
        while self.counts().len() < n {
            assert!(Instant::now() < give_up, "Alice did not send {n} messages");
            sleep(Duration::from_millis(1)).await;
        }
    }

    /// Acknowledges Alice's message `seq`.
    fn ack(&self, alice: &Party, seq: u64) {
        let ack = WireMessage::Ack {
            session: self.session.unwrap(),
            from_initiator: true,
            seq,
            responder_version: None,
        };
        self.transport
            .try_send(alice.key(), ack.encode().unwrap())
            .unwrap();
    }
}

/// Alice with a flow whose first two messages (`Init`, ping 0) reached
/// Bob once, sent 100 ms after Alice's start-up tick at `t0`.
async fn setup() -> (
    tempfile::TempDir,
    MemoryNetwork,
    Party,
    Party,
    Node<MemoryTransport>,
    RawPeer,
    Instant,
) {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let mut bob = RawPeer::join(&net, &b);
    let alice = start_alice(&net, &a, dir.path()).await;
    let t0 = Instant::now();
    sleep_until(t0 + TICK / 10).await;
    alice.start_flow(ping(b.clone(), 1)).await.unwrap();
    bob.wait_for(2).await;
    assert_eq!(bob.counts(), vec![1, 1]);
    (dir, net, a, b, alice, bob, t0)
}

/// Sent 100 ms before a tick, a message is not sent again at that tick (its
/// ack might be on its way) but at the next one, and at every tick after
/// for as long as it is unacknowledged.
#[tokio::test(start_paused = true)]
async fn a_message_is_resent_only_once_unacknowledged_for_a_whole_interval() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let mut bob = RawPeer::join(&net, &b);
    let alice = start_alice(&net, &a, dir.path()).await;
    let t0 = Instant::now();
    sleep_until(t0 + TICK * 9 / 10).await;
    alice.start_flow(ping(b.clone(), 1)).await.unwrap();
    bob.wait_for(2).await;
    assert!(Instant::now() < t0 + TICK);

    sleep_until(t0 + TICK * 3 / 2).await;
    assert_eq!(
        bob.counts(),
        vec![1, 1],
        "re-sent at the tick 100 ms after they were sent"
    );
    sleep_until(t0 + TICK * 5 / 2).await;
    assert_eq!(
        bob.counts(),
        vec![2, 2],
        "not re-sent a whole interval later"
    );
    sleep_until(t0 + TICK * 7 / 2).await;
    assert_eq!(bob.counts(), vec![3, 3], "not re-sent at every tick");

    // Acknowledge the `Init`: only the ping goes on being re-sent.
    bob.ack(&a, 0);
    sleep_until(t0 + TICK * 9 / 2).await;
    assert_eq!(bob.counts(), vec![3, 4]);
    sleep_until(t0 + TICK * 11 / 2).await;
    assert_eq!(bob.counts(), vec![3, 5]);
    alice.shutdown().await.unwrap();
}

/// A restarted node re-sends its whole outbox at start-up, without waiting
/// for the messages to be overdue (the connections that carried them are
/// gone), then every interval.
#[tokio::test(start_paused = true)]
async fn a_restarted_node_resends_its_whole_outbox_at_once() {
    let (dir, net, a, _b, alice, mut bob, _t0) = setup().await;
    alice.shutdown().await.unwrap();
    let alice = start_alice(&net, &a, dir.path()).await;
    let t1 = Instant::now();
    while bob.counts() != vec![2, 2] {
        assert!(Instant::now() < t1 + TICK / 10, "not re-sent at start-up");
        sleep(Duration::from_millis(1)).await;
    }
    sleep_until(t1 + TICK / 2).await;
    assert_eq!(bob.counts(), vec![2, 2]);
    sleep_until(t1 + TICK * 3 / 2).await;
    assert_eq!(bob.counts(), vec![3, 3]);
    alice.shutdown().await.unwrap();
}

/// When Bob's link comes back, Alice sends him everything unacknowledged at
/// once; the next tick, less than an interval later, leaves those alone.
#[tokio::test(start_paused = true)]
async fn a_reconnected_peer_gets_everything_at_once_then_every_interval() {
    let (_dir, net, _a, b, alice, bob, t0) = setup().await;
    sleep_until(t0 + TICK / 2).await;
    drop(bob);
    let mut bob = RawPeer::join(&net, &b);
    bob.wait_for(2).await;
    assert_eq!(bob.counts(), vec![1, 1]);
    sleep_until(t0 + TICK * 3 / 2).await;
    assert_eq!(
        bob.counts(),
        vec![1, 1],
        "re-sent at the tick 500 ms after the reconnect"
    );
    sleep_until(t0 + TICK * 5 / 2).await;
    assert_eq!(bob.counts(), vec![2, 2]);
    alice.shutdown().await.unwrap();
}

/// A [`MemoryTransport`] that counts, for
/// [`resends_with_many_flows_in_flight`], the session messages sent more
/// than once (re-sends), those of them the peer's queue took (duplicates
/// the peer then has to drop, unless the first send was lost), and the
/// first sends the peer's full queue refused (lost, so they must be
/// re-sent). With `scripted_links`, its link events are the ones the test
/// sends there instead of the network's.
struct Counting {
    inner: MemoryTransport,
    seen: Mutex<HashSet<(u64, bool, u64)>>,
    resent: AtomicU64,
    resent_queued: AtomicU64,
    first_refused: AtomicU64,
    scripted_links: Option<broadcast::Sender<TransportEvent>>,
}

impl Transport for Counting {
    fn try_send(&self, to: &PublicKey, frame: Vec<u8>) -> Result<(), SendError> {
        if let Ok(WireMessage::Session {
            session,
            from_initiator,
            seq,
            ..
        }) = WireMessage::decode(&frame)
        {
            let fresh = self
                .seen
                .lock()
                .unwrap()
                .insert((session, from_initiator, seq));
            let sent = self.inner.try_send(to, frame);
            let counter = match (fresh, sent.is_ok()) {
                (true, true) => None,
                (true, false) => Some(&self.first_refused),
                (false, queued) => {
                    self.resent.fetch_add(1, Ordering::Relaxed);
                    queued.then_some(&self.resent_queued)
                }
            };
            if let Some(c) = counter {
                c.fetch_add(1, Ordering::Relaxed);
            }
            return sent;
        }
        self.inner.try_send(to, frame)
    }

    fn disconnect(&self, peer: &PublicKey, reason: &str) {
        self.inner.disconnect(peer, reason);
    }

    fn peer_name(&self, peer: &PublicKey) -> String {
        self.inner.peer_name(peer)
    }

    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }

    fn link_events(&self) -> broadcast::Receiver<TransportEvent> {
        match &self.scripted_links {
            Some(events) => events.subscribe(),
            None => self.inner.link_events(),
        }
    }

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        self.inner.shutdown()
    }
}

async fn counting_node(
    net: &MemoryNetwork,
    who: &Party,
    dir: &Path,
    every: Duration,
) -> Node<Counting> {
    counting_node_with_links(net, who, dir, every, None).await
}

async fn counting_node_with_links(
    net: &MemoryNetwork,
    who: &Party,
    dir: &Path,
    every: Duration,
    scripted_links: Option<broadcast::Sender<TransportEvent>>,
) -> Node<Counting> {
    let (inner, incoming) = net.join(who);
    let transport = Counting {
        inner,
        seen: Mutex::default(),
        resent: AtomicU64::new(0),
        resent_queued: AtomicU64::new(0),
        first_refused: AtomicU64::new(0),
        scripted_links,
    };
    let db = dir.join(format!("{}.redb", who.name()));
    let mut b = NodeBuilder::with_transport(who.clone(), db, transport, incoming);
    b.redelivery_interval(every);
    // On the paused clock: see `start_alice`.
    b.commit_inline_when_idle(true);
    b.flow::<ping::Flow>();
    b.responder::<ping::Flow>(pong);
    b.start().await.unwrap()
}

/// A peer whose queue is full is tried once per tick, not once per
/// overdue message: after the first refusal the rest wait for the next
/// tick (they would only be refused too).
#[tokio::test(start_paused = true)]
async fn a_peer_with_a_full_queue_is_tried_once_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::with_queue_len(1);
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let (_bob_transport, mut bob) = net.join(&b);
    let alice = counting_node(&net, &a, dir.path(), TICK).await;
    let t0 = Instant::now();
    sleep_until(t0 + TICK / 10).await;
    for _ in 0..5 {
        alice.start_flow(ping(b.clone(), 1)).await.unwrap();
    }
    let count = |c: fn(&Counting) -> &AtomicU64| c(alice.transport()).load(Ordering::Relaxed);
    // Ten messages (an `Init` and a ping per flow); Bob's queue took one.
    sleep_until(t0 + TICK / 2).await;
    assert_eq!(count(|t| &t.first_refused), 9);
    // Tick 2: all were sent less than an interval ago.
    sleep_until(t0 + TICK * 3 / 2).await;
    assert_eq!(count(|t| &t.resent), 0);
    // Tick 3: all ten are overdue; the first is refused, the rest wait.
    sleep_until(t0 + TICK * 5 / 2).await;
    assert_eq!(count(|t| &t.resent), 1);
    // Bob takes his one frame: at tick 4 one more fits, the next is refused.
    assert!(bob.try_recv().is_ok());
    assert!(bob.try_recv().is_err());
    sleep_until(t0 + TICK * 7 / 2).await;
    assert_eq!(count(|t| &t.resent), 3);
    assert_eq!(count(|t| &t.resent_queued), 1);
    alice.shutdown().await.unwrap();
}

/// A figure, not a check (real time, so it depends on the machine): how
/// many messages two nodes re-send per redelivery tick while many flows
/// are in flight. `REDELIVERY_FLOWS` (default 2,000) pings of 5 rounds,
/// redelivery every `REDELIVERY_MS` (default 100) ms, receivers queueing
/// at most `REDELIVERY_QUEUE` (default 1,024, `MemoryNetwork`'s default)
/// frames. Run:
/// `cargo test --release -p flow-runtime --test memory_redelivery -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints re-sends per tick"]
async fn resends_with_many_flows_in_flight() {
    let flows: u32 = std::env::var("REDELIVERY_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let every = Duration::from_millis(
        std::env::var("REDELIVERY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
    );
    let dir = tempfile::tempdir().unwrap();
    let queue: usize = std::env::var("REDELIVERY_QUEUE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let net = MemoryNetwork::with_queue_len(queue);
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let alice = counting_node(&net, &a, dir.path(), every).await;
    let bob = counting_node(&net, &b, dir.path(), every).await;
    let started = std::time::Instant::now();
    let batch = (0..flows)
        .map(|i| (format!("f-{i}"), ping(b.clone(), 5)))
        .collect();
    let handles = alice.start_flows_with_client_ids(batch).await.unwrap();
    for h in &handles {
        assert_eq!(h.result().await, Ok(expected_total(5)));
    }
    let elapsed = started.elapsed();
    let count = |c: fn(&Counting) -> &AtomicU64| {
        c(alice.transport()).load(Ordering::Relaxed) + c(bob.transport()).load(Ordering::Relaxed)
    };
    let resent = count(|t| &t.resent);
    let queued = count(|t| &t.resent_queued);
    let lost = count(|t| &t.first_refused);
    let ticks = (elapsed.as_secs_f64() / every.as_secs_f64()).max(1.0);
    println!(
        "{flows} flows x 5 rounds, queue {queue}, tick {} ms: {:.2} s (~{ticks:.0} ticks); \
         both nodes re-sent {resent} messages ({:.0} per tick per node), {queued} of them \
         reached the peer's queue; {lost} first sends were refused by a full queue",
        every.as_millis(),
        elapsed.as_secs_f64(),
        resent as f64 / ticks / 2.0
    );
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

/// A `Connected` re-sends only what a link that went down may have carried:
/// nothing after a first connection (the frames waited in the transport's
/// queue for it), the messages unacknowledged at the `Disconnected` after a
/// broken one.
#[tokio::test(start_paused = true)]
async fn a_connected_peer_gets_only_what_a_broken_link_may_have_lost() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let mut bob = RawPeer::join(&net, &b);
    let events = broadcast::channel(16).0;
    let alice = counting_node_with_links(&net, &a, dir.path(), TICK, Some(events.clone())).await;
    let t0 = Instant::now();
    sleep_until(t0 + TICK / 10).await;
    alice.start_flow(ping(b.clone(), 1)).await.unwrap();
    bob.wait_for(2).await;

    events
        .send(TransportEvent::Connected { peer: *b.key() })
        .unwrap();
    sleep_until(t0 + TICK / 5).await;
    assert_eq!(
        bob.counts(),
        vec![1, 1],
        "no link was lost: nothing re-sent"
    );

    events
        .send(TransportEvent::Disconnected {
            peer: *b.key(),
            error: Some("broken".into()),
        })
        .unwrap();
    // Acknowledged while the link is down: not re-sent on reconnect.
    sleep_until(t0 + TICK * 3 / 10).await;
    bob.ack(&a, 0);
    sleep_until(t0 + TICK * 4 / 10).await;
    events
        .send(TransportEvent::Connected { peer: *b.key() })
        .unwrap();
    sleep_until(t0 + TICK / 2).await;
    assert_eq!(
        bob.counts(),
        vec![1, 2],
        "the ping, unacknowledged when the link broke, is re-sent at once"
    );
    alice.shutdown().await.unwrap();
}
