//! Ping round trips between two durable nodes over the TCP transport,
//! against a plain tokio TCP echo of the same message size.
//!
//! * `tcp_echo`: one connection, client and server tasks on one runtime,
//!   echoing a buffer the size of one encoded ping message (the baseline:
//!   what loopback TCP costs without encryption, framing or a node).
//! * `durable_nodes`: Alice and Bob, each on its own tokio runtime with its
//!   own redb file (durable commits, default options), run the contract's
//!   `ping` flow; one iteration is one round (send, the pong's echo back),
//!   including every commit on both sides.
//! * `durable_nodes, 16 concurrent flows`: the same with 16 pings running
//!   at once; one iteration is one round trip of any of them. Group commit
//!   lets many steps share one fsync, so this is the node's throughput.
//!
//! Prints `round trips/s` for both and their ratio after criterion's report.
//! Run: `cargo bench -p flow-runtime --bench tcp_ping`.

use criterion::{Criterion, criterion_group};
use flow_runtime::Payload;
use flow_runtime::prelude::*;
use flow_runtime::runner::{Node, NodeBuilder, keys};
use flow_runtime::tcp::{NetworkMap, PeerEntry};
use flow_runtime::wire::{Body, WireMessage};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[flow]
pub async fn ping(ctx: &mut FlowContext, peer: Party, rounds: u64) -> Result<u64, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let mut i: u64 = 0;
    while i < rounds {
        session.send(&i)?;
        let echo: u64 = session.receive::<u64>().await?.validate(Ok)?;
        if echo != i {
            return Err(FlowError::new("wrong echo"));
        }
        i += 1;
    }
    Ok(i)
}

#[flow]
pub async fn pong(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    loop {
        let n: u64 = session.receive::<u64>().await?.validate(Ok)?;
        session.send(&n)?;
    }
}

/// (total elapsed, total round trips) per benchmark, for the ratio line.
static TOTALS: Mutex<[(Duration, u64); 3]> = Mutex::new([(Duration::ZERO, 0); 3]);

/// Concurrent pings in the throughput variant.
const CONCURRENT: u64 = 16;

fn record(which: usize, elapsed: Duration, iters: u64) {
    let mut t = TOTALS.lock().unwrap();
    t[which].0 += elapsed;
    t[which].1 += iters;
}

/// The size of one ping message as the node puts it on the wire (before
/// encryption), so the echo baseline moves the same bytes.
fn ping_message_len() -> usize {
    WireMessage::Session {
        session: u64::MAX,
        from_initiator: true,
        seq: 500,
        body: Body::Data(Payload::encode(&500u64).unwrap()),
    }
    .encode()
    .unwrap()
    .len()
}

fn tcp_echo(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let len = ping_message_len();
    let (mut client, _server) = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = vec![0u8; len];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.set_nodelay(true).unwrap();
        (client, server)
    });
    c.bench_function(&format!("tcp_echo ({len} B)"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut buf = vec![7u8; len];
                let t = Instant::now();
                for _ in 0..iters {
                    client.write_all(&buf).await.unwrap();
                    client.read_exact(&mut buf).await.unwrap();
                }
                let elapsed = t.elapsed();
                record(0, elapsed, iters);
                elapsed
            })
        })
    });
}

struct TwoNodes {
    _dir: tempfile::TempDir,
    alice_rt: tokio::runtime::Runtime,
    alice: Node,
    bob_party: Party,
    _bob_rt: tokio::runtime::Runtime,
    _bob: Node,
}

fn two_nodes() -> TwoNodes {
    let dir = tempfile::tempdir().unwrap();
    let ka = keys::generate_identity().unwrap();
    let kb = keys::generate_identity().unwrap();
    let la = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let map = NetworkMap::new([
        PeerEntry {
            name: "Alice".into(),
            address: la.local_addr().unwrap().to_string(),
            key: keys::public_key(&ka),
        },
        PeerEntry {
            name: "Bob".into(),
            address: lb.local_addr().unwrap().to_string(),
            key: keys::public_key(&kb),
        },
    ])
    .unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let start = |rt: &tokio::runtime::Runtime, key, l, db, map: &NetworkMap| {
        let mut b = NodeBuilder::new(key, "", db, map.clone());
        b.listener(l);
        b.flow::<ping::Flow>();
        b.responder::<ping::Flow>(pong);
        rt.block_on(b.start()).unwrap()
    };
    let alice_rt = runtime();
    let bob_rt = runtime();
    let bob = start(&bob_rt, kb, lb, dir.path().join("bob.redb"), &map);
    let alice = start(&alice_rt, ka, la, dir.path().join("alice.redb"), &map);
    TwoNodes {
        bob_party: bob.party().clone(),
        _dir: dir,
        alice_rt,
        alice,
        _bob_rt: bob_rt,
        _bob: bob,
    }
}

fn durable_nodes(c: &mut Criterion) {
    let nodes = two_nodes();
    c.bench_function("durable_nodes ping round trip", |b| {
        b.iter_custom(|iters| {
            nodes.alice_rt.block_on(async {
                let t = Instant::now();
                let h = nodes
                    .alice
                    .start_flow(ping(nodes.bob_party.clone(), iters))
                    .await
                    .unwrap();
                assert_eq!(nodes.alice.result(&h).await, Ok(iters));
                let elapsed = t.elapsed();
                record(1, elapsed, iters);
                elapsed
            })
        })
    });
    c.bench_function("durable_nodes ping round trip, 16 concurrent flows", |b| {
        b.iter_custom(|iters| {
            nodes.alice_rt.block_on(async {
                let per_flow = iters.div_ceil(CONCURRENT);
                let t = Instant::now();
                let mut handles = Vec::new();
                for _ in 0..CONCURRENT {
                    let flow = ping(nodes.bob_party.clone(), per_flow);
                    handles.push(nodes.alice.start_flow(flow).await.unwrap());
                }
                for h in &handles {
                    assert_eq!(nodes.alice.result(h).await, Ok(per_flow));
                }
                let elapsed = t.elapsed();
                let done = per_flow * CONCURRENT;
                record(2, elapsed, done);
                // Scale to the iterations criterion asked for.
                elapsed.mul_f64(iters as f64 / done as f64)
            })
        })
    });
}

fn summary() {
    let t = TOTALS.lock().unwrap();
    let rate = |(d, n): (Duration, u64)| n as f64 / d.as_secs_f64().max(1e-9);
    let (echo, nodes, concurrent) = (rate(t[0]), rate(t[1]), rate(t[2]));
    println!(
        "round trips/s: tcp echo {echo:.0}; durable nodes, 1 flow {nodes:.0} (ratio {:.4}), \
         {CONCURRENT} concurrent flows {concurrent:.0} (ratio {:.4})",
        nodes / echo,
        concurrent / echo
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = tcp_echo, durable_nodes
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
