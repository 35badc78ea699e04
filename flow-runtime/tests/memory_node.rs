//! Tokio nodes over the in-memory transport (`MemoryNetwork`): the real
//! node runner — driver, group commit, redb files, redelivery — without
//! sockets. Also `FlowHandle::result().await` on tokio nodes.

mod store_backends;
mod tcp_common;

use flow_runtime::NodeConfig;
use flow_runtime::engine::WireMessage;
use flow_runtime::prelude::*;
use flow_runtime::runner::{Node, NodeBuilder};
use flow_runtime::testing::ping_pong::{expected_total, ping, pong};
use flow_runtime::transport::{MemoryNetwork, MemoryTransport, SendError, Transport};
use std::path::Path;
use std::time::Duration;
use store_backends::NodeStores;
use tcp_common::Logs;
use tcp_common::mid_run::{ping_in_flight, ping_in_flight_by_client_id, reattached_ping_finishes};

fn party(name: &str, byte: u8) -> Party {
    Party::new(name, PublicKey([byte; 32]))
}

/// Starts (or restarts) `who` on `net`, on its store in `stores`.
async fn start(
    net: &MemoryNetwork,
    who: &Party,
    stores: &NodeStores,
    redelivery: Duration,
) -> Node<MemoryTransport> {
    let (transport, incoming) = net.join(who);
    let (db, store) = stores.for_node(who.name());
    let mut b = NodeBuilder::with_transport(who.clone(), db, transport, incoming);
    b.store(store);
    b.redelivery_interval(redelivery);
    b.flow::<ping::Flow>();
    b.responder::<ping::Flow>(pong);
    b.start().await.unwrap()
}

/// Alice and Bob as tokio nodes on one `MemoryNetwork`, each on its own
/// store in `stores`, redelivering every 200 ms:
/// `(net, alice_party, bob_party, alice, bob)`.
async fn two_nodes(
    stores: &NodeStores,
) -> (
    MemoryNetwork,
    Party,
    Party,
    Node<MemoryTransport>,
    Node<MemoryTransport>,
) {
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let alice = start(&net, &a, stores, Duration::from_millis(200)).await;
    let bob = start(&net, &b, stores, Duration::from_millis(200)).await;
    (net, a, b, alice, bob)
}

async fn within<T>(what: &str, secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_finish_and_handles_await_their_results() {
    for stores in NodeStores::each() {
        eprintln!("--- on {}", stores.name());
        flows_finish_and_handles_await_their_results_on(&stores).await;
    }
}

async fn flows_finish_and_handles_await_their_results_on(stores: &NodeStores) {
    let (_net, _, b, alice, bob) = two_nodes(stores).await;
    assert_eq!(alice.transport().endpoint(), "memory://Alice");
    let mut handles = Vec::new();
    for _ in 0..8 {
        handles.push(alice.start_flow(ping(b.clone(), 20)).await.unwrap());
    }
    for h in &handles {
        // The handle's own `result()`, and the node's, agree, as often as
        // asked.
        assert_eq!(within("ping", 30, h.result()).await, Ok(expected_total(20)));
        assert_eq!(h.result().await, Ok(expected_total(20)));
        assert_eq!(alice.result(h).await, Ok(expected_total(20)));
    }
    // A clone of the handle works too.
    assert_eq!(handles[0].clone().result().await, Ok(expected_total(20)));
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_restarted_from_its_database_mid_run_loses_nothing() {
    for stores in NodeStores::each() {
        eprintln!("--- on {}", stores.name());
        a_responder_restarted_from_its_database_mid_run_loses_nothing_on(&stores).await;
    }
}

async fn a_responder_restarted_from_its_database_mid_run_loses_nothing_on(stores: &NodeStores) {
    let (net, _, b, alice, bob) = two_nodes(stores).await;
    let (h, rounds, _) = ping_in_flight(&alice, &bob, &b, |rounds, _| {
        let flow = ping(b.clone(), rounds);
        let alice = &alice;
        async move { alice.start_flow(flow).await.unwrap() }
    })
    .await;
    bob.shutdown().await.unwrap();
    assert!(!net.is_online(b.key()));
    assert_eq!(
        alice.transport().try_send(b.key(), vec![0]),
        Err(SendError::Unreachable("Bob".into())),
        "a stopped node refuses frames; the outbox keeps them"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bob = start(&net, &b, stores, Duration::from_millis(200)).await;
    assert_eq!(
        within("ping", 60, h.result()).await,
        Ok(expected_total(rounds))
    );
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initiator_restarted_mid_run_reattaches_and_awaits_the_handle() {
    for stores in NodeStores::each() {
        eprintln!("--- on {}", stores.name());
        an_initiator_restarted_mid_run_reattaches_and_awaits_the_handle_on(&stores).await;
    }
}

async fn an_initiator_restarted_mid_run_reattaches_and_awaits_the_handle_on(stores: &NodeStores) {
    let (net, a, b, alice, bob) = two_nodes(stores).await;
    let (h, rounds, client_id) = ping_in_flight_by_client_id(&alice, &b).await;
    alice.shutdown().await.unwrap();
    // The old handle's node is gone: it says so instead of waiting.
    let err = within("stale handle", 5, h.result()).await.unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");

    let alice = start(&net, &a, stores, Duration::from_millis(200)).await;
    reattached_ping_finishes(&alice, &client_id, h.run_id(), rounds).await;
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

/// With a redelivery interval far beyond the test's timeout, only the
/// transport's `Connected` event can make Alice resend what Bob missed
/// while he was down: this checks that the driver listens to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_a_peer_is_down_are_redelivered_when_it_joins() {
    for stores in NodeStores::each() {
        eprintln!("--- on {}", stores.name());
        messages_sent_while_a_peer_is_down_are_redelivered_when_it_joins_on(&stores).await;
    }
}

async fn messages_sent_while_a_peer_is_down_are_redelivered_when_it_joins_on(stores: &NodeStores) {
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let bob = start(&net, &b, stores, Duration::from_secs(3600)).await;
    bob.shutdown().await.unwrap();
    let alice = start(&net, &a, stores, Duration::from_secs(3600)).await;
    let h = alice.start_flow(ping(b.clone(), 10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(alice.try_result(&h).await.unwrap(), None);
    let bob = start(&net, &b, stores, Duration::from_secs(3600)).await;
    assert_eq!(within("ping", 20, h.result()).await, Ok(expected_total(10)));
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_node_ends_a_waiting_handle_with_an_error() {
    for stores in NodeStores::each() {
        eprintln!("--- on {}", stores.name());
        a_dropped_node_ends_a_waiting_handle_with_an_error_on(&stores).await;
    }
}

async fn a_dropped_node_ends_a_waiting_handle_with_an_error_on(stores: &NodeStores) {
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let alice = start(&net, &a, stores, Duration::from_millis(200)).await;
    // Bob never joins: the flow waits forever.
    let h = alice.start_flow(ping(b.clone(), 1)).await.unwrap();
    let waiting = tokio::spawn({
        let h = h.clone();
        async move { h.result().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    alice.shutdown().await.unwrap();
    let err = within("waiting handle", 5, waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");
}

/// A hand-driven peer: joins the network as `who` and speaks the wire
/// protocol directly, to see exactly what a node sends.
struct RawPeer {
    transport: MemoryTransport,
    incoming: flow_runtime::transport::Incoming,
}

impl RawPeer {
    /// Acks for every distinct session message received so far.
    fn acks_for_received(&mut self) -> Vec<WireMessage> {
        let mut acks = Vec::new();
        while let Ok((_, frame)) = self.incoming.try_recv() {
            if let WireMessage::Session {
                session,
                from_initiator,
                seq,
                ..
            } = WireMessage::decode(&frame).unwrap()
            {
                let ack = WireMessage::Ack {
                    session,
                    from_initiator,
                    seq,
                    responder_version: None,
                };
                if !acks.contains(&ack) {
                    acks.push(ack);
                }
            }
        }
        acks
    }
}

/// Polls `alice`'s commit count until it exceeds `before` or `limit`
/// passes; returns how many commits were made by then.
async fn commits_within(alice: &Node<MemoryTransport>, before: u64, limit: Duration) -> u64 {
    let t = std::time::Instant::now();
    loop {
        let n = alice.commits().await.unwrap() - before;
        if n > 0 || t.elapsed() > limit {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The redelivery interval of the ack tests.
const TICK: Duration = Duration::from_secs(2);

/// What `NodeBuilder::defer_ack_commits` changes: acks arriving alone are
/// committed at once when off, at the next redelivery tick when on — and
/// either way, once committed, the acknowledged messages are not sent
/// again.
async fn ack_commits(defer: bool) {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let (a, b) = (party("Alice", 1), party("Bob", 2));
    let (transport, incoming) = net.join(&b);
    let mut bob = RawPeer {
        transport,
        incoming,
    };
    let (t, inc) = net.join(&a);
    let mut builder = NodeBuilder::with_transport(a.clone(), dir.path().join("a.redb"), t, inc);
    // Ticks at start, then every TICK.
    builder.redelivery_interval(TICK);
    builder.defer_ack_commits(defer);
    builder.flow::<ping::Flow>();
    let alice = builder.start().await.unwrap();
    let started = std::time::Instant::now();
    let _h = alice.start_flow(ping(b.clone(), 1)).await.unwrap();
    // The flow's first step sends the init and the first ping; acknowledge
    // them — acks only, nothing else.
    let mut acks = Vec::new();
    while acks.len() < 2 {
        assert!(started.elapsed() < Duration::from_millis(800), "too slow");
        for ack in bob.acks_for_received() {
            if !acks.contains(&ack) {
                acks.push(ack);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = alice.commits().await.unwrap();
    for ack in acks {
        bob.transport
            .try_send(a.key(), ack.encode().unwrap())
            .unwrap();
    }
    let to_tick = TICK.saturating_sub(started.elapsed());
    if defer {
        // Nothing until the tick (checked well before it, so a slow machine
        // cannot make the check late)...
        tokio::time::sleep(to_tick.saturating_sub(TICK / 2)).await;
        assert_eq!(alice.commits().await.unwrap() - before, 0);
        // ...then one commit for both acks.
        let n = commits_within(&alice, before, Duration::from_secs(10)).await;
        assert_eq!(n, 1);
    } else {
        // At once: one commit, or two if the driver woke between the acks.
        let n = commits_within(&alice, before, to_tick).await;
        assert!((1..=2).contains(&n), "{n} commits before the tick");
    }
    // Past the next tick: the acknowledged messages are not sent again.
    bob.acks_for_received();
    tokio::time::sleep(TICK + TICK / 4).await;
    assert_eq!(
        bob.acks_for_received(),
        Vec::new(),
        "an acknowledged message was sent again"
    );
    alice.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_alone_wait_for_the_next_commit_when_deferred() {
    ack_commits(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_alone_are_committed_at_once_when_not_deferred() {
    ack_commits(false).await;
}

/// `start_flows_with_client_ids`: one commit for the whole batch, handles
/// that work like single starts' (result, progress), and a repeated client
/// id — in the batch or from before — is the same flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_flows_start_in_one_commit_and_their_handles_await_results() {
    for stores in NodeStores::each() {
        eprintln!("--- on {}", stores.name());
        many_flows_start_in_one_commit_and_their_handles_await_results_on(&stores).await;
    }
}

async fn many_flows_start_in_one_commit_and_their_handles_await_results_on(stores: &NodeStores) {
    let (net, _, b, alice, bob) = two_nodes(stores).await;
    let earlier = alice
        .start_flow_with_client_id("t-0", ping(b.clone(), 5))
        .await
        .unwrap();
    // Bob is stopped, so Alice's flows cannot progress (and commit) while
    // the batch is counted.
    bob.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = alice.commits().await.unwrap();
    let batch: Vec<(String, ping::Flow)> = (0..10)
        .map(|i| (format!("t-{}", i % 8), ping(b.clone(), 5)))
        .collect();
    let handles = alice.start_flows_with_client_ids(batch).await.unwrap();
    let after = alice.commits().await.unwrap();
    assert!(
        after - before <= 2,
        "10 starts: one commit (plus at most the first steps' one), got {}",
        after - before
    );
    assert_eq!(handles.len(), 10);
    assert_eq!(
        handles[0].run_id(),
        earlier.run_id(),
        "t-0 was started before"
    );
    assert_eq!(handles[8].run_id(), handles[0].run_id(), "t-0 repeated");
    assert_eq!(handles[9].run_id(), handles[1].run_id(), "t-1 repeated");
    let distinct: std::collections::HashSet<_> = handles.iter().map(|h| h.run_id()).collect();
    assert_eq!(distinct.len(), 8);

    let bob = start(&net, &b, stores, Duration::from_millis(200)).await;
    for h in &handles {
        assert_eq!(within("ping", 30, h.result()).await, Ok(expected_total(5)));
        assert_eq!(alice.result(h).await, Ok(expected_total(5)));
    }
    let again = alice
        .reattach::<ping::Flow>("t-3")
        .await
        .unwrap()
        .expect("started by the batch");
    assert_eq!(again.run_id(), handles[3].run_id());
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

/// Alice on `dir`, checking for long waits every `check`, warning past
/// `limit`. Bob is never started: her pings wait forever.
async fn alice_alone(dir: &Path, check: Duration, limit: Duration) -> Node<MemoryTransport> {
    let a = party("Alice", 1);
    let (transport, incoming) = MemoryNetwork::new().join(&a);
    let mut b = NodeBuilder::with_transport(a, dir.join("Alice.redb"), transport, incoming);
    b.node_config(NodeConfig {
        long_wait_warning: limit,
        ..NodeConfig::default()
    });
    b.long_wait_check_interval(check);
    b.flow::<ping::Flow>();
    b.start().await.unwrap()
}

// Current-thread runtime: the driver runs on the test's thread, under the
// test's log subscriber; the check's blocking thread must log there too.
#[tokio::test(flavor = "current_thread")]
async fn the_node_logs_a_warning_for_a_flow_waiting_longer_than_the_limit() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let alice = alice_alone(
        dir.path(),
        Duration::from_millis(20),
        Duration::from_millis(100),
    )
    .await;
    let h = alice.start_flow(ping(party("Bob", 2), 1)).await.unwrap();
    let run = h.run_id().to_string();
    let warning = logs
        .wait_for_warning(&["flow has been waiting", &run])
        .await;
    assert!(warning.contains(<ping::Flow as Flow>::NAME), "{warning}");
    // Scans run every 20 ms: stopping must not leave one holding the
    // database, or reopening the file would fail.
    alice.shutdown().await.unwrap();
    let alice = alice_alone(dir.path(), Duration::ZERO, Duration::from_secs(3600)).await;
    assert_eq!(alice.flows_in_flight().await.unwrap(), 1);
    alice.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_with_the_check_off_logs_no_long_wait() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let alice = alice_alone(dir.path(), Duration::ZERO, Duration::ZERO).await;
    alice.start_flow(ping(party("Bob", 2), 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !logs.text().contains("flow has been waiting"),
        "{}",
        logs.text()
    );
    alice.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_dump_and_list_long_waits_of_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let alice = alice_alone(dir.path(), Duration::ZERO, Duration::from_secs(3600)).await;
    let h = alice.start_flow(ping(party("Bob", 2), 1)).await.unwrap();
    within("the first step", 20, async {
        while !alice
            .dump_json()
            .await
            .unwrap()
            .contains("a message on session")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // A wait is listed when it is LONGER than the limit, counted in whole
    // milliseconds: one that began in this millisecond is not (yet).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let dump: serde_json::Value = serde_json::from_str(&alice.dump_json().await.unwrap()).unwrap();
    let flows = dump.as_array().unwrap();
    assert_eq!(flows.len(), 1, "{dump}");
    assert_eq!(flows[0]["run_id"], h.run_id().to_string());
    assert_eq!(flows[0]["flow"], <ping::Flow as Flow>::NAME);
    assert_eq!(flows[0]["sessions"][0]["counterparty"], "Bob");
    assert_eq!(
        alice.long_waiting_flows(Duration::ZERO).await.unwrap(),
        vec![h.run_id()]
    );
    assert!(
        alice
            .long_waiting_flows(Duration::from_secs(3600))
            .await
            .unwrap()
            .is_empty()
    );
    alice.shutdown().await.unwrap();
    assert!(
        alice.dump_json().await.is_err(),
        "a stopped node has no dump"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_dump_puts_a_complete_dump_beside_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let alice = alice_alone(dir.path(), Duration::ZERO, Duration::from_secs(3600)).await;
    let h = alice.start_flow(ping(party("Bob", 2), 1)).await.unwrap();
    let path = alice.write_dump().await.unwrap();
    assert_eq!(path.parent(), Some(dir.path()));
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("Alice.redb.dump-") && name.ends_with(".json"),
        "{name}"
    );
    let dump: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dump[0]["run_id"], h.run_id().to_string(), "{dump}");
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.iter().any(|f| f.ends_with(".partial")), "{files:?}");
    alice.shutdown().await.unwrap();
}
