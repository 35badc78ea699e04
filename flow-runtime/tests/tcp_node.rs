//! Nodes on tokio over real TCP, in one process: the contract's ping/pong
//! across two nodes, many flows at once, a peer restarting mid-run, a flow
//! result that survives the initiator's restart, and draining.

mod tcp_common;

use flow_runtime::runner::{Node, NodeBuilder, keys};
use flow_runtime::storage::RedbOptions;
use flow_runtime::tcp::{NetworkMap, PeerEntry, SigningKey, TcpConfig};
use flow_runtime::testing::ping_pong::{expected_total, ping, pong};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tcp_common::mid_run::{ping_in_flight, ping_in_flight_by_client_id, reattached_ping_finishes};

struct Party2 {
    key: SigningKey,
    listener: Option<std::net::TcpListener>,
    addr: String,
    db: PathBuf,
}

fn parties(dir: &Path, names: &[&str]) -> (Vec<Party2>, NetworkMap) {
    let mut out = Vec::new();
    let mut entries = Vec::new();
    for name in names {
        let key = keys::generate_identity().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        entries.push(PeerEntry {
            name: (*name).into(),
            address: addr.clone(),
            key: keys::public_key(&key),
        });
        out.push(Party2 {
            key,
            listener: Some(listener),
            addr,
            db: dir.join(format!("{name}.redb")),
        });
    }
    (out, NetworkMap::new(entries).unwrap())
}

fn fast_tcp() -> TcpConfig {
    TcpConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..TcpConfig::default()
    }
}

async fn start(p: &mut Party2, map: &NetworkMap) -> Node {
    start_with(p, map, |_| {}).await
}

async fn start_with(
    p: &mut Party2,
    map: &NetworkMap,
    extra: impl FnOnce(&mut NodeBuilder),
) -> Node {
    let key = SigningKey::from_bytes(&p.key.to_bytes());
    let mut b = NodeBuilder::new(key, &p.addr, &p.db, map.clone());
    if let Some(l) = p.listener.take() {
        b.listener(l);
    }
    b.tcp_config(fast_tcp());
    // One fsync per commit instead of two: these tests restart nodes only
    // cleanly, so fast crash recovery is not what they measure.
    b.store_options(RedbOptions {
        quick_repair: false,
        ..RedbOptions::default()
    });
    b.redelivery_interval(Duration::from_millis(200));
    b.flow::<ping::Flow>();
    b.responder::<ping::Flow>(pong);
    extra(&mut b);
    b.start().await.unwrap()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pings_between_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ps, map) = parties(dir.path(), &["Alice", "Bob"]);
    let alice = start(&mut ps[0], &map).await;
    let bob = start(&mut ps[1], &map).await;
    let bob_party = bob.party().clone();
    let mut handles = Vec::new();
    for _ in 0..8 {
        handles.push(alice.start_flow(ping(bob_party.clone(), 50)).await.unwrap());
    }
    for h in &handles {
        assert_eq!(within("ping", alice.result(h)).await, Ok(1225));
    }
    // Results stay readable.
    assert_eq!(alice.try_result(&handles[0]).await.unwrap(), Some(Ok(1225)));
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

/// The driver's other way to commit on a runtime with several workers:
/// handing the worker off (`block_in_place`) instead of blocking it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pings_with_the_worker_handed_off_during_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ps, map) = parties(dir.path(), &["Alice", "Bob"]);
    let hand_off = |b: &mut NodeBuilder| {
        b.hand_off_worker_during_commits(true);
    };
    let alice = start_with(&mut ps[0], &map, hand_off).await;
    let bob = start_with(&mut ps[1], &map, hand_off).await;
    let bob_party = bob.party().clone();
    let flows = (0..8)
        .map(|i| (format!("ping-{i}"), ping(bob_party.clone(), 50)))
        .collect();
    let handles = alice.start_flows_with_client_ids(flows).await.unwrap();
    for h in &handles {
        assert_eq!(within("ping", alice.result(h)).await, Ok(1225));
    }
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_restarting_mid_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ps, map) = parties(dir.path(), &["Alice", "Bob"]);
    let alice = start(&mut ps[0], &map).await;
    let bob = start(&mut ps[1], &map).await;
    let bob_party = bob.party().clone();
    // Let it run a little, then stop Bob and start him again from his
    // database on the same address.
    let (h, rounds, _) = ping_in_flight(&alice, &bob, &bob_party, |rounds, _| {
        let flow = ping(bob_party.clone(), rounds);
        let alice = &alice;
        async move { alice.start_flow(flow).await.unwrap() }
    })
    .await;
    bob.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bob = start(&mut ps[1], &map).await;
    let expected = expected_total(rounds);
    assert_eq!(within("ping", alice.result(&h)).await, Ok(expected));
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initiator_restarting_mid_run_finishes_its_flow() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ps, map) = parties(dir.path(), &["Alice", "Bob"]);
    let alice = start(&mut ps[0], &map).await;
    let bob = start(&mut ps[1], &map).await;
    let (h, rounds, client_id) = ping_in_flight_by_client_id(&alice, bob.party()).await;
    alice.shutdown().await.unwrap();
    let alice = start(&mut ps[0], &map).await;
    reattached_ping_finishes(&alice, &client_id, h.run_id(), rounds).await;
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_flows_and_reports_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ps, map) = parties(dir.path(), &["Alice", "Bob"]);
    let alice = start(&mut ps[0], &map).await;
    let bob = start(&mut ps[1], &map).await;
    let h = alice
        .start_flow(ping(bob.party().clone(), 20))
        .await
        .unwrap();
    within("drain", alice.drain()).await.unwrap();
    assert_eq!(alice.try_result(&h).await.unwrap(), Some(Ok(190)));
    let refused = alice
        .start_flow(ping(bob.party().clone(), 1))
        .await
        .unwrap();
    let err = within("refusal", alice.result(&refused)).await.unwrap_err();
    assert!(err.to_string().contains("draining"), "{err}");
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}
