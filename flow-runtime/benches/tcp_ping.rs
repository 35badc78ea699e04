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
//! Each node variant runs twice in the same process: with the driver's
//! default of deferring ack-only commits, and with it turned off
//! (`NodeBuilder::defer_ack_commits(false)`), so the saving is measured
//! side by side on the same machine state.
//!
//! Prints `round trips/s`, the ratio to the echo, and the group commits per
//! round trip on each node after criterion's report.
//! Run: `cargo bench -p flow-runtime --bench tcp_ping`.

use criterion::{Criterion, criterion_group};
use flow_runtime::Payload;
use flow_runtime::engine::{Body, WireMessage};
use flow_runtime::prelude::*;
use flow_runtime::runner::{Node, NodeBuilder, keys};
use flow_runtime::tcp::{NetworkMap, PeerEntry};
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

/// Per benchmark, for the summary: total elapsed, total round trips, and
/// the commits Alice and Bob made meanwhile.
#[derive(Clone, Copy)]
struct Total {
    elapsed: Duration,
    round_trips: u64,
    commits: (u64, u64),
}

const ZERO: Total = Total {
    elapsed: Duration::ZERO,
    round_trips: 0,
    commits: (0, 0),
};

/// Index 0: the echo; then per variant (ack commits deferred, not
/// deferred): one flow, 16 flows.
static TOTALS: Mutex<[Total; 5]> = Mutex::new([ZERO; 5]);

/// Concurrent pings in the throughput variant.
const CONCURRENT: u64 = 16;

/// Fewest rounds each concurrent ping runs per sample.
const MIN_ROUNDS_PER_FLOW: u64 = 50;

fn record(which: usize, elapsed: Duration, iters: u64, commits: (u64, u64)) {
    let mut t = TOTALS.lock().unwrap();
    t[which].elapsed += elapsed;
    t[which].round_trips += iters;
    t[which].commits.0 += commits.0;
    t[which].commits.1 += commits.1;
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
                record(0, elapsed, iters, (0, 0));
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
    bob: Node,
}

impl TwoNodes {
    async fn commits(&self) -> (u64, u64) {
        (
            self.alice.commits().await.unwrap(),
            self.bob.commits().await.unwrap(),
        )
    }
}

fn two_nodes(defer_acks: bool) -> TwoNodes {
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
        b.defer_ack_commits(defer_acks);
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
        bob,
    }
}

fn label(defer: bool) -> &'static str {
    if defer {
        "acks deferred"
    } else {
        "every batch committed"
    }
}

fn durable_nodes(c: &mut Criterion) {
    // Both variants side by side, each workload run on one right after the
    // other, so a change in machine load hits both alike.
    let pairs = [(0, true, two_nodes(true)), (1, false, two_nodes(false))];
    for (variant, defer, nodes) in &pairs {
        let (variant, label) = (*variant, label(*defer));
        c.bench_function(&format!("durable_nodes ping round trip ({label})"), |b| {
            b.iter_custom(|iters| {
                nodes.alice_rt.block_on(async {
                    let before = nodes.commits().await;
                    let t = Instant::now();
                    let h = nodes
                        .alice
                        .start_flow(ping(nodes.bob_party.clone(), iters))
                        .await
                        .unwrap();
                    assert_eq!(h.result().await, Ok(iters));
                    let elapsed = t.elapsed();
                    let after = nodes.commits().await;
                    record(
                        1 + 2 * variant,
                        elapsed,
                        iters,
                        (after.0 - before.0, after.1 - before.1),
                    );
                    elapsed
                })
            })
        });
    }
    for (variant, defer, nodes) in &pairs {
        let (variant, label) = (*variant, label(*defer));
        c.bench_function(
            &format!("durable_nodes ping round trip, {CONCURRENT} concurrent flows ({label})"),
            |b| {
                b.iter_custom(|iters| {
                    nodes.alice_rt.block_on(async {
                        // At least 50 rounds per flow: criterion asks for a
                        // few hundred iterations per sample here, and 16
                        // flows of a few rounds would measure starting and
                        // ending flows rather than round trips.
                        let per_flow = iters.div_ceil(CONCURRENT).max(MIN_ROUNDS_PER_FLOW);
                        let before = nodes.commits().await;
                        let t = Instant::now();
                        let mut handles = Vec::new();
                        for _ in 0..CONCURRENT {
                            let flow = ping(nodes.bob_party.clone(), per_flow);
                            handles.push(nodes.alice.start_flow(flow).await.unwrap());
                        }
                        for h in &handles {
                            assert_eq!(h.result().await, Ok(per_flow));
                        }
                        let elapsed = t.elapsed();
                        let after = nodes.commits().await;
                        let done = per_flow * CONCURRENT;
                        record(
                            2 + 2 * variant,
                            elapsed,
                            done,
                            (after.0 - before.0, after.1 - before.1),
                        );
                        // Scale to the iterations criterion asked for.
                        elapsed.mul_f64(iters as f64 / done as f64)
                    })
                })
            },
        );
    }
}

fn summary() {
    let t = TOTALS.lock().unwrap();
    let rate = |x: &Total| x.round_trips as f64 / x.elapsed.as_secs_f64().max(1e-9);
    let per_rt = |commits: u64, x: &Total| commits as f64 / x.round_trips.max(1) as f64;
    let echo = rate(&t[0]);
    println!("round trips/s: tcp echo {echo:.0}");
    let names = [
        "1 flow, acks deferred",
        &format!("{CONCURRENT} flows, acks deferred"),
        "1 flow, every batch committed",
        &format!("{CONCURRENT} flows, every batch committed"),
    ];
    for (i, name) in names.iter().enumerate() {
        let x = &t[i + 1];
        println!(
            "durable nodes, {name}: {:.0} round trips/s (ratio to echo {:.4}); \
             commits per round trip: Alice {:.2}, Bob {:.2}",
            rate(x),
            rate(x) / echo,
            per_rt(x.commits.0, x),
            per_rt(x.commits.1, x),
        );
    }
    println!(
        "deferring ack commits: {:.2}x (1 flow), {:.2}x ({CONCURRENT} flows)",
        rate(&t[1]) / rate(&t[3]).max(1e-9),
        rate(&t[2]) / rate(&t[4]).max(1e-9),
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
