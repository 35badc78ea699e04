//! Leases and fencing on a real PostgreSQL server (skipped, saying so,
//! where its binaries are missing).

use super::NodeStatus;
use super::control::Control;
use super::lease::{self, Lease, LeaseState};
use super::relay::{InboxLedger, Routes, take_inbox};
use crate::PublicKey;
use crate::store::{Fence, PostgresOptions, PostgresStore, Store, Table, WriteBatch};
use crate::testing::TestPostgres;
use crate::transport::Incoming;
use std::sync::Arc;
use std::time::Duration;

const TTL: Duration = Duration::from_secs(60);

fn server() -> Option<&'static TestPostgres> {
    let server = TestPostgres::shared();
    if server.is_none() {
        eprintln!("SKIPPED on PostgreSQL: no PostgreSQL binaries on this machine");
    }
    server
}

/// A control connection to `conn` set up for `partitions`, and the lease
/// `worker` claimed first on it (the first free partition).
fn claimed(conn: &str, partitions: u32, worker: &str) -> (Control, Lease) {
    let mut control = Control::connect(conn, partitions).unwrap();
    let lease = lease::claim(&mut control.client, worker, TTL)
        .unwrap()
        .expect("a fresh schema has a free partition");
    (control, lease)
}

fn fenced_store(control: &Control, lease: Lease) -> PostgresStore {
    PostgresStore::open_with(
        control.partition_config(lease.partition),
        PostgresOptions::default(),
        Some(Fence {
            control_schema: control.schema.clone(),
            partition: lease.partition as i32,
            token: lease.token,
            consumed: None,
        }),
    )
    .unwrap()
}

fn put(store: &PostgresStore, key: &[u8]) -> Result<(), crate::store::StoreError> {
    let mut b = WriteBatch::default();
    b.put(Table::META, key.to_vec(), b"v".to_vec());
    store.commit(b)
}

/// Makes partition `p`'s lease expire now, as if its holder had stalled
/// for longer than the lease.
fn expire(control: &mut Control, p: u32) {
    control
        .client
        .execute(
            "UPDATE flow_leases SET expires_at = now() - interval '1 second' WHERE partition = $1",
            &[&(p as i32)],
        )
        .unwrap();
}

#[test]
fn partitions_by_worker_counts_only_current_leases() {
    let lease = |partition, holder: Option<&str>, current| LeaseState {
        partition,
        holder: holder.map(str::to_owned),
        token: 1,
        current,
    };
    let status = NodeStatus {
        leases: vec![
            lease(0, Some("w1"), true),
            lease(1, Some("w2"), true),
            lease(2, Some("w1"), true),
            lease(3, Some("w2"), false),
            lease(4, None, true),
        ],
        ..NodeStatus::default()
    };
    let by_worker: Vec<(&str, usize)> = status.partitions_by_worker().into_iter().collect();
    assert_eq!(by_worker, vec![("w1", 2), ("w2", 1)]);
}

#[test]
fn each_partition_is_claimed_once_and_tokens_grow() {
    let Some(server) = server() else { return };
    let conn = server.fresh_schema();
    let mut a = Control::connect(&conn, 3).unwrap();
    let mut b = Control::connect(&conn, 3).unwrap();
    let a1 = lease::claim(&mut a.client, "a", TTL).unwrap().unwrap();
    let b1 = lease::claim(&mut b.client, "b", TTL).unwrap().unwrap();
    let a2 = lease::claim(&mut a.client, "a", TTL).unwrap().unwrap();
    assert_eq!(
        lease::claim(&mut b.client, "b", TTL).unwrap(),
        None,
        "all 3 are held"
    );
    let mut parts = vec![a1.partition, b1.partition, a2.partition];
    parts.sort();
    assert_eq!(parts, vec![0, 1, 2]);
    // An expired lease is claimed again with a higher token.
    expire(&mut a, b1.partition);
    assert_eq!(
        lease::renew(&mut b.client, &[b1], TTL).unwrap(),
        vec![],
        "expired: not renewable"
    );
    let taken = lease::claim(&mut a.client, "a", TTL).unwrap().unwrap();
    assert_eq!(taken.partition, b1.partition);
    assert!(taken.token > b1.token);
    // Released: claimable at once.
    lease::release(&mut a.client, a1).unwrap();
    let again = lease::claim(&mut b.client, "b", TTL).unwrap().unwrap();
    assert_eq!(again.partition, a1.partition);
    assert!(again.token > a1.token);
    // A different partition count is refused.
    let refused = Control::connect(&conn, 4).unwrap_err();
    assert!(
        refused.0.contains("set up with 3 partitions"),
        "{}",
        refused.0
    );
}

#[test]
fn a_worker_whose_lease_expired_or_was_taken_over_cannot_commit() {
    let Some(server) = server() else { return };
    let conn = server.fresh_schema();
    let (mut control, first) = claimed(&conn, 1, "old");
    let old = fenced_store(&control, first);
    put(&old, b"while-held").unwrap();

    // Expired but not yet taken over: refused already.
    expire(&mut control, 0);
    let e = put(&old, b"after-expiry").unwrap_err();
    assert!(e.0.contains("no longer holds the lease"), "{}", e.0);

    // Taken over: the new holder commits, the old one still cannot.
    let second = lease::claim(&mut control.client, "new", TTL)
        .unwrap()
        .unwrap();
    assert!(second.token > first.token);
    let new = fenced_store(&control, second);
    put(&new, b"by-new").unwrap();
    let e = put(&old, b"by-old").unwrap_err();
    assert!(e.0.contains("no longer holds the lease"), "{}", e.0);

    // Nothing of the refused commits happened.
    for (key, present) in [
        (&b"while-held"[..], true),
        (b"after-expiry", false),
        (b"by-new", true),
        (b"by-old", false),
    ] {
        assert_eq!(
            new.get(&Table::META, key).unwrap().is_some(),
            present,
            "{key:?}"
        );
    }
    // Two fenced stores share a partition's schema (no advisory lock);
    // only the lease decides who commits.
    drop(old);
    let renewed = lease::renew(&mut control.client, &[second], TTL).unwrap();
    assert_eq!(renewed, vec![second]);
}

#[test]
fn fencing_covers_every_kind_of_write() {
    let Some(server) = server() else { return };
    let conn = server.fresh_schema();
    let (mut control, l) = claimed(&conn, 1, "w");
    let store = fenced_store(&control, l);
    put(&store, b"k").unwrap();
    expire(&mut control, 0);
    // A delete alone, and a range removal alone, are refused too.
    let mut b = WriteBatch::default();
    b.delete(Table::META, b"k".to_vec());
    assert!(store.commit(b).is_err());
    let mut b = WriteBatch::default();
    b.remove_range(Table::META, Vec::new(), vec![0xff]);
    assert!(store.commit(b).is_err());
    assert!(store.get(&Table::META, b"k").unwrap().is_some());
}

/// A partition's store fenced by `lease`, deleting the inbox rows `ledger`
/// reports consumed.
fn relay_store(control: &Control, lease: Lease, ledger: &Arc<InboxLedger>) -> PostgresStore {
    PostgresStore::open_with(
        control.partition_config(lease.partition),
        PostgresOptions::default(),
        Some(Fence {
            control_schema: control.schema.clone(),
            partition: lease.partition as i32,
            token: lease.token,
            consumed: Some(ledger.clone()),
        }),
    )
    .unwrap()
}

/// Queues `frames` for `partition` as the gateway does; their ids.
fn queue_frames(control: &mut Control, partition: i32, frames: &[&[u8]]) -> Vec<i64> {
    frames
        .iter()
        .map(|f| {
            control
                .client
                .query_one(
                    "INSERT INTO flow_inbox (partition, peer, frame) VALUES ($1, $2, $3) RETURNING id",
                    &[&partition, &&[7u8; 32][..], f],
                )
                .unwrap()
                .get(0)
        })
        .collect()
}

/// The frames of `partition`'s rows still in the inbox, oldest first.
fn queued(control: &mut Control, partition: i32) -> Vec<Vec<u8>> {
    control
        .client
        .query(
            "SELECT frame FROM flow_inbox WHERE partition = $1 ORDER BY id",
            &[&partition],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The node's side: takes up to `n` frames from its queue.
fn take(incoming: &mut Incoming, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map_while(|_| incoming.try_recv().ok())
        .map(|(peer, frame)| {
            assert_eq!(peer, PublicKey([7; 32]));
            frame
        })
        .collect()
}

fn route_to(partition: u32, ledger: &Arc<InboxLedger>) -> Routes {
    let routes: Routes = Arc::default();
    routes.lock().unwrap().insert(partition, ledger.clone());
    routes
}

fn bytes(frames: &[&[u8]]) -> Vec<Vec<u8>> {
    frames.iter().map(|f| f.to_vec()).collect()
}

#[test]
fn an_inbox_row_is_deleted_by_the_commit_after_its_frame_was_taken_and_by_no_other() {
    let Some(server) = server() else { return };
    let conn = server.fresh_schema();
    let (mut control, first) = claimed(&conn, 2, "w1");
    assert_eq!(first.partition, 0);
    queue_frames(&mut control, 0, &[b"f1", b"f2", b"f3", b"f4", b"f5"]);
    queue_frames(&mut control, 1, &[b"other"]);

    let (ledger, mut incoming) = InboxLedger::new();
    let routes = route_to(0, &ledger);
    let store = relay_store(&control, first, &ledger);
    take_inbox(&mut control.client, &routes).unwrap();
    // Read again: nothing is handed twice.
    take_inbox(&mut control.client, &routes).unwrap();

    // Handed but not taken by the node: a commit deletes none of them.
    put(&store, b"k0").unwrap();
    assert_eq!(queued(&mut control, 0).len(), 5);

    // The node takes two frames and commits: exactly those two rows go, in
    // the same transaction as the batch.
    assert_eq!(take(&mut incoming, 2), bytes(&[b"f1", b"f2"]));
    put(&store, b"k1").unwrap();
    assert_eq!(queued(&mut control, 0), bytes(&[b"f3", b"f4", b"f5"]));
    assert!(store.get(&Table::META, b"k1").unwrap().is_some());

    // Two more taken, then the commit fails (the lease expired, as for a
    // stalled worker): neither the batch nor the rows' deletion happens.
    assert_eq!(take(&mut incoming, 2), bytes(&[b"f3", b"f4"]));
    expire(&mut control, 0);
    assert!(put(&store, b"k2").is_err());
    assert_eq!(queued(&mut control, 0), bytes(&[b"f3", b"f4", b"f5"]));
    assert!(store.get(&Table::META, b"k2").unwrap().is_none());

    // The worker dies there. The next holder reads every row left, from
    // the oldest: the frames taken but not committed are handled again.
    drop((store, routes, ledger, incoming));
    let second = lease::claim(&mut control.client, "w2", TTL)
        .unwrap()
        .unwrap();
    assert_eq!(second.partition, 0);
    let (ledger, mut incoming) = InboxLedger::new();
    let routes = route_to(0, &ledger);
    let store = relay_store(&control, second, &ledger);
    take_inbox(&mut control.client, &routes).unwrap();
    assert_eq!(take(&mut incoming, 10), bytes(&[b"f3", b"f4", b"f5"]));
    // A commit with nothing to write (the frames were duplicates) still
    // deletes the rows consumed.
    store.commit(WriteBatch::default()).unwrap();
    assert!(queued(&mut control, 0).is_empty());
    // Another partition's rows are not this store's.
    assert_eq!(queued(&mut control, 1), bytes(&[b"other"]));
    assert!(store.get(&Table::META, b"k1").unwrap().is_some());
}

#[test]
fn a_full_partition_queue_keeps_its_rows_for_the_next_read_in_order() {
    let Some(server) = server() else { return };
    let conn = server.fresh_schema();
    let (mut control, l) = claimed(&conn, 1, "w");
    queue_frames(&mut control, 0, &[b"a", b"b", b"c", b"d", b"e"]);
    let (ledger, mut incoming) = InboxLedger::with_capacity(2);
    let routes = route_to(0, &ledger);
    let store = relay_store(&control, l, &ledger);
    let mut seen = Vec::new();
    for _ in 0..5 {
        take_inbox(&mut control.client, &routes).unwrap();
        seen.extend(take(&mut incoming, 1));
        put(&store, b"k").unwrap();
        assert_eq!(queued(&mut control, 0).len(), 5 - seen.len());
    }
    assert_eq!(seen, bytes(&[b"a", b"b", b"c", b"d", b"e"]));
    assert!(queued(&mut control, 0).is_empty());
}

#[test]
fn a_peers_responders_on_two_workers_stay_within_the_node_wide_bound() {
    use super::routing::partition_of;
    use super::{Worker, WorkerSettings};
    use crate::protocol::{Body, WireMessage};
    use crate::runner::keys;
    use crate::tcp::{NetworkMap, PeerEntry};
    use crate::testing::ping_pong::{ping, pong};
    use crate::{Flow, NodeConfig};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    const PARTITIONS: u32 = 4;
    const BOUND: u32 = 6;
    const PER_PARTITION: usize = 4;
    let Some(server) = server() else { return };
    let conn = server.fresh_schema();
    let mut control = Control::connect(&conn, PARTITIONS).unwrap();
    let entry = |name: &str| PeerEntry {
        name: name.into(),
        address: "127.0.0.1:9".into(),
        key: keys::public_key(&keys::generate_identity().unwrap()),
    };
    let (node, peer) = (entry("Node"), entry("Peer"));
    let map = NetworkMap::new(vec![node.clone(), peer.clone()]).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = ["w1", "w2"]
        .into_iter()
        .map(|name| {
            let mut settings = WorkerSettings::new(name);
            settings.partitions = PARTITIONS;
            settings.lease = Duration::from_secs(1);
            let configure: super::Configure = Arc::new(|builder| {
                builder.flow::<ping::Flow>();
                builder.responder::<ping::Flow>(pong);
                builder.node_config(NodeConfig {
                    max_responders_per_peer: BOUND,
                    ..NodeConfig::default()
                });
            });
            let worker = Worker::new(
                &conn,
                node.party(),
                map.clone(),
                settings,
                configure,
                runtime.handle().clone(),
            )
            .unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || worker.run(&stop).unwrap())
        })
        .collect();
    // Both workers hold two partitions each.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = control.status().unwrap();
        let held = status.partitions_by_worker();
        if held.values().sum::<usize>() == 4 && held.get("w1") == Some(&2) {
            break;
        }
        assert!(Instant::now() < deadline, "no fair share: {held:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The peer initiates PER_PARTITION sessions in each partition, each
    // starting a responder that stays (pong waits for a number).
    let created_at = Some(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    let mut per_partition = [0usize; PARTITIONS as usize];
    let mut frames: Vec<(i32, Vec<u8>)> = Vec::new();
    for session in 1u64.. {
        let init = WireMessage::Session {
            session,
            from_initiator: true,
            seq: 0,
            body: Body::Init {
                flow: ping::Flow::NAME.to_owned(),
                version: ping::Flow::VERSION,
                initiator: peer.party(),
                created_at,
            },
        };
        let p = partition_of(&peer.key, &init, PARTITIONS) as usize;
        if per_partition[p] < PER_PARTITION {
            per_partition[p] += 1;
            frames.push((p as i32, init.encode().unwrap()));
        }
        if per_partition.iter().all(|n| *n == PER_PARTITION) {
            break;
        }
    }
    for (p, frame) in &frames {
        control
            .client
            .execute(
                "INSERT INTO flow_inbox (partition, peer, frame) VALUES ($1, $2, $3)",
                &[p, &&peer.key.0[..], frame],
            )
            .unwrap();
    }
    // Every row consumed means every initiation handled and committed.
    let status = loop {
        let status = control.status().unwrap();
        if status.inbox == 0 {
            break status;
        }
        assert!(Instant::now() < deadline, "{} rows left", status.inbox);
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let mut running = Vec::new();
    for p in 0..PARTITIONS {
        let n: i64 = control
            .client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.flow_kv WHERE tbl = 'checkpoints'",
                    crate::store::quote_ident(&control.partition_schema(p))
                ),
                &[],
            )
            .unwrap()
            .get(0);
        running.push(n as u32);
    }
    // Shares of 6 over 4 partitions: 2, 2, 1, 1 (partitions 0 and 1 get
    // the remainder); without the split each would run all 4 of its own.
    assert_eq!(running, vec![2, 2, 1, 1]);
    assert_eq!(status.in_flight, u64::from(BOUND));
}

/// Doubles `n`: a flow that finishes in its first step.
#[crate::prelude::flow]
async fn double(_ctx: &mut crate::prelude::FlowContext, n: u32) -> Result<u32, crate::FlowError> {
    Ok(n * 2)
}

#[test]
fn keyed_start_requests_start_once_each_in_their_keys_partition() {
    use super::{StartRequest, Worker, WorkerSettings};
    use crate::Flow;
    use crate::runner::keys;
    use crate::tcp::{NetworkMap, PeerEntry};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    let Some(server) = server() else { return };
    let conn = server.fresh_schema();
    let mut control = Control::connect(&conn, 4).unwrap();
    let node = PeerEntry {
        name: "Node".into(),
        address: "127.0.0.1:9".into(),
        key: keys::public_key(&keys::generate_identity().unwrap()),
    };
    let map = NetworkMap::new(vec![node.clone()]).unwrap();
    // Ten requests under two keys, one of them twice: nine flows.
    let request = |key: &str, i: u32| StartRequest {
        key: key.to_owned(),
        client_id: format!("double-{i}"),
        flow: double::Flow::NAME.to_owned(),
        args: serde_json::json!(i),
    };
    let mut requests: Vec<StartRequest> = (0..9)
        .map(|i| request(if i % 2 == 0 { "even" } else { "odd" }, i))
        .collect();
    requests.push(request("even", 4));
    control.request_starts(&requests).unwrap();
    control
        .request_start_keyed(
            "even",
            "double-0",
            double::Flow::NAME,
            &serde_json::json!(0),
        )
        .unwrap();
    let waiting = control.status().unwrap().waiting_starts;
    assert_eq!(waiting, 9, "a client id is queued once");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut settings = WorkerSettings::new("w");
    settings.partitions = 4;
    settings.lease = Duration::from_secs(1);
    let configure: super::Configure = Arc::new(|builder| {
        builder.startable(|n: u32| Ok(double(n)));
    });
    let worker = Worker::new(
        &conn,
        node.party(),
        map,
        settings,
        configure,
        runtime.handle().clone(),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let running = {
        let stop = stop.clone();
        std::thread::spawn(move || worker.run(&stop).unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while control.finished_count().unwrap() < 9 {
        assert!(Instant::now() < deadline, "the flows did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    running.join().unwrap();
    let status = control.status().unwrap();
    assert_eq!(status.waiting_starts, 0);
    let mut finished: Vec<(String, u32, u32)> = status
        .finished
        .iter()
        .map(|f| {
            let out: u32 = rmp_serde::from_slice(f.outcome.as_ref().unwrap()).unwrap();
            (f.client_id.clone().unwrap(), f.partition, out)
        })
        .collect();
    finished.sort();
    let expected: Vec<(String, u32, u32)> = {
        let mut e: Vec<_> = (0..9)
            .map(|i| {
                let key = if i % 2 == 0 { "even" } else { "odd" };
                (format!("double-{i}"), control.partition_of_key(key), i * 2)
            })
            .collect();
        e.sort();
        e
    };
    assert_eq!(finished, expected);
}
