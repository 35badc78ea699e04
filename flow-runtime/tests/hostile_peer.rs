//! What a hostile peer, or a hostile file, can do to a node: each test is
//! one attack, and shows the node refusing it with a clear error rather
//! than crashing, exhausting memory, or changing its data.

mod tcp_common;

use bytes::BytesMut;
use flow_runtime::engine::DEFERRAL_WARNING_EVERY;
use flow_runtime::engine::OsIds;
use flow_runtime::engine::Registry;
use flow_runtime::engine::{Body, WireMessage};
use flow_runtime::prelude::*;
use flow_runtime::runner::admin::NodeMetrics;
use flow_runtime::runner::{Node, NodeBuilder, RunnerError};
use flow_runtime::storage::{RedbOptions, RedbStore, Store, Table};
use flow_runtime::tcp::{SendError, TcpConfig, codec};
use flow_runtime::testing::MockNetwork;
use flow_runtime::testing::ping_pong::{ping, pong};
use flow_runtime::transport::Transport;
use flow_runtime::transport::incoming::FRAME_OVERHEAD;
use flow_runtime::transport::{IncomingLimits, MemoryNetwork, MemoryTransport};
use flow_runtime::{NodeConfig, NodeCore, Payload, ResponderFn, Timestamp};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tcp_common::{Logs, Net, recv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Decoder;

fn party(name: &str, byte: u8) -> Party {
    Party::new(name, PublicKey([byte; 32]))
}

async fn start_node(
    net: &MemoryNetwork,
    who: &Party,
    db: &Path,
) -> Result<Node<MemoryTransport>, RunnerError> {
    let (transport, incoming) = net.join(who);
    let mut b = NodeBuilder::with_transport(who.clone(), db, transport, incoming);
    b.flow::<ping::Flow>();
    b.responder::<ping::Flow>(pong);
    b.start().await
}

/// 64 bytes flipped at many places of a node's database file: opening the
/// node and reading every flow either works or fails with an error that
/// says the file is damaged and what to do; the node never panics (redb
/// itself panics on some damaged pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let alice = party("Alice", 1);
    let absent = party("Bob", 2);
    let good = dir.path().join("alice.redb");
    {
        let net = MemoryNetwork::new();
        let node = start_node(&net, &alice, &good).await.unwrap();
        // Pings to a peer that never answers: 300 suspended flows on disk.
        for _ in 0..300 {
            node.start_flow(ping(absent.clone(), 5)).await.unwrap();
        }
        node.shutdown().await.unwrap();
    }
    let bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    let mut offsets: Vec<usize> = (1..24).map(|page| page * 4096).collect();
    offsets.extend([n / 3, n / 2, 2 * n / 3]);
    offsets.retain(|&o| o < n);
    let mut refused = 0;
    for offset in offsets {
        let mut copy = bytes.clone();
        for b in &mut copy[offset..(offset + 64).min(n)] {
            *b ^= 0xA5;
        }
        let path = dir.path().join(format!("damaged-{offset}.redb"));
        std::fs::write(&path, &copy).unwrap();
        let net = MemoryNetwork::new();
        let outcome = match start_node(&net, &alice, &path).await {
            Err(e) => Err(e.to_string()),
            Ok(node) => {
                let read = node.dump_json().await.map_err(|e| e.to_string());
                let _ = node.shutdown().await;
                read.map(|_| ())
            }
        };
        if let Err(e) = outcome
            && e.contains("damaged")
        {
            assert!(e.contains("Restore it from a backup"), "{e}");
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "no damaged page was reached: the test proves nothing"
    );
}

/// A TCP connection to `to` from the loopback address `127.0.0.<host>`:
/// Linux routes all of 127/8 to loopback, so a test can play many remote
/// addresses.
async fn connect_from(host: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)),
            0,
        ))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the node closed `stream` within `wait` (reads end of file or
/// a reset); `false` if it is still open, waiting for the handshake.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, stream.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => panic!("the node sent bytes to a client that sent none"),
        Err(_) => false,
    }
}

/// Many strangers open connections and never finish the handshake. Past
/// the per-address cap and the global cap, connections are closed at
/// once (nothing is read from them, no buffer is allocated), with a WARN
/// line naming the cap; a real peer still connects and delivers while the
/// strangers hold every slot.
#[tokio::test]
async fn unauthenticated_connections_are_capped_globally_and_per_address() {
    let (logs, _guard) = Logs::capture();
    let mut net = Net::new(2).await;
    let config = TcpConfig {
        max_handshakes: 4,
        max_handshakes_per_address: 2,
        // Long enough that no held slot expires during the test.
        handshake_timeout: Duration::from_secs(30),
        ..tcp_common::test_config()
    };
    let (_alice, mut alice_in) = net.start_with(0, config);
    let (bob, _bob_in) = net.start(1);
    let alice_addr = net.addrs[0];

    // One address: two handshakes held, the third refused at once.
    let mut held = vec![
        connect_from(2, alice_addr).await,
        connect_from(2, alice_addr).await,
    ];
    let mut third = connect_from(2, alice_addr).await;
    assert!(
        closed_within(&mut third, Duration::from_secs(5)).await,
        "a third handshake from one address was accepted"
    );
    let line = logs
        .wait_for_warning(&["refused inbound connections", "max_handshakes_per_address"])
        .await;
    assert!(line.contains("127.0.0.2"), "{line}");

    // Another address fills the global cap; a third stranger address is
    // refused although it has no handshake of its own in progress.
    held.push(connect_from(3, alice_addr).await);
    held.push(connect_from(3, alice_addr).await);
    let mut stranger = connect_from(4, alice_addr).await;
    assert!(
        closed_within(&mut stranger, Duration::from_secs(5)).await,
        "a handshake beyond the global cap was accepted"
    );
    // The held ones are still open (they have a slot until the deadline).
    for stream in &mut held {
        assert!(!closed_within(stream, Duration::from_millis(50)).await);
    }

    // Bob connects from 127.0.0.1, the host of the network map's parties:
    // the strangers' cap does not apply to him.
    bob.send(&net.key(0), b"still here".to_vec()).await.unwrap();
    assert_eq!(
        recv(&mut alice_in).await,
        (net.key(1), b"still here".to_vec())
    );
}

/// A stranger announces a 65,535-byte handshake record (the largest Noise
/// message) and sends most of it: the node closes the connection when it
/// reads the length, since no handshake message of this protocol is
/// longer than 2,048 bytes, instead of buffering 64 KiB per connection.
#[tokio::test]
async fn a_large_handshake_record_is_refused_before_it_is_buffered() {
    let (logs, _guard) = Logs::capture();
    let mut net = Net::new(1).await;
    let (_alice, _alice_in) = net.start_with(
        0,
        TcpConfig {
            handshake_timeout: Duration::from_secs(30),
            ..tcp_common::test_config()
        },
    );
    let mut stream = connect_from(5, net.addrs[0]).await;
    stream.write_all(&65_535u32.to_be_bytes()).await.unwrap();
    // The rest may fail to write once the node has hung up.
    let _ = stream.write_all(&[0u8; 4096]).await;
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)).await,
        "a 65,535-byte handshake record was accepted"
    );
    let line = logs
        .wait_for_warning(&["rejected inbound connection", "longer than 2048 bytes"])
        .await;
    assert!(line.contains("127.0.0.5"), "{line}");
}

/// An authenticated peer announces a 16 MiB frame and sends 10 bytes of
/// it: the record decoder keeps waiting for the rest without reserving
/// the announced size, so what a peer makes the node hold is what it
/// actually sent.
#[test]
fn an_announced_frame_is_not_reserved_before_its_bytes_arrive() {
    let mut decoder = codec(32 * 1024 * 1024);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&(16u32 * 1024 * 1024).to_be_bytes());
    buf.extend_from_slice(&[7u8; 10]);
    assert!(decoder.decode(&mut buf).unwrap().is_none());
    assert!(
        buf.capacity() < 64 * 1024,
        "the decoder reserved {} bytes for a frame of which 10 arrived",
        buf.capacity()
    );
    // The whole frame still decodes once it has arrived.
    buf.extend_from_slice(&vec![7u8; 16 * 1024 * 1024 - 10]);
    let frame = decoder.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.len(), 16 * 1024 * 1024);
}

// ------------------------------------------------------ versions and names

/// Asks the responder who it thinks it talks to; version 1 of the
/// protocol `hostile_peer::ask`.
///
/// The three versions repeat one body on purpose: each VERSION is its own
/// `#[flow]`, and the body cannot move into a shared helper (only flow
/// operations may be awaited) nor into a sub-flow (whose own NAME and
/// VERSION would then open the session, not these).
#[flow(name = "hostile_peer::ask")]
pub async fn ask(ctx: &mut FlowContext, peer: Party) -> Result<String, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let reply: String = session
        .send_and_receive::<String>(&1u32)
        .await?
        .validate(Ok)?;
    Ok(reply)
}

/// The same protocol at version 2.
#[flow(name = "hostile_peer::ask", version = 2)]
pub async fn ask_v2(ctx: &mut FlowContext, peer: Party) -> Result<String, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let reply: String = session
        .send_and_receive::<String>(&2u32)
        .await?
        .validate(Ok)?;
    Ok(reply)
}

/// The same protocol claiming version 999,999.
#[flow(name = "hostile_peer::ask", version = 999999)]
pub async fn ask_v999999(ctx: &mut FlowContext, peer: Party) -> Result<String, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let reply: String = session
        .send_and_receive::<String>(&3u32)
        .await?
        .validate(Ok)?;
    Ok(reply)
}

/// Answers with the counterparty's name and flow version, as the node
/// authenticated them.
#[flow]
pub async fn answer(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    let _n: u32 = session.receive::<u32>().await?.validate(Ok)?;
    let who = session.counterparty()?;
    let version = session.counterparty_version()?;
    session.send(&format!("{} v{}", who.name(), version.unwrap_or(0)))?;
    Ok(())
}

/// An initiation by a version the responder was not registered for is
/// refused before any responder runs, with an error the initiating flow
/// sees naming both versions; registered versions are answered, and the
/// responder reads the initiator's identity and version from its session.
#[test]
fn an_initiation_by_an_unregistered_version_is_refused_naming_both_versions() {
    let mut net = MockNetwork::new(14);
    // One initiating node per version: a node runs one version of a flow.
    let mallory = net.create_node("Mallory");
    let alice = net.create_node("Alice");
    let dave = net.create_node("Dave");
    let bob = net.create_node("Bob");
    let carol = net.create_node("Carol");
    // Bob speaks exactly version 1 (the default); Carol versions 1 to 2.
    net.register_responder::<ask::Flow, _>(bob, answer);
    net.register_responder_for_versions::<ask::Flow, _>(carol, 1..=2, answer);

    let attack = net.start_flow(mallory, ask_v999999(net.party(bob)));
    let v1 = net.start_flow(alice, ask(net.party(bob)));
    let v2_to_bob = net.start_flow(dave, ask_v2(net.party(bob)));
    let v2_to_carol = net.start_flow(dave, ask_v2(net.party(carol)));
    net.run_network();

    let error = net.result(&attack).unwrap().unwrap_err();
    assert_eq!(error.kind(), FlowErrorKind::Refused, "{error}");
    assert!(
        error.message().contains("version 999999") && error.message().contains("version 1"),
        "{error}"
    );
    let error = net.result(&v2_to_bob).unwrap().unwrap_err();
    assert!(
        error.message().contains("version 2") && error.message().contains("version 1"),
        "{error}"
    );
    assert_eq!(net.result(&v1), Some(Ok("Alice v1".to_owned())));
    assert_eq!(net.result(&v2_to_carol), Some(Ok("Dave v2".to_owned())));
    // No responder ran for the refused initiations: Bob finished one flow.
    assert_eq!(net.finished(bob).len(), 1);
}

/// A peer initiates a session with a frame whose initiator name says
/// "Notary" while its key is its own: the session is recorded, dumped and
/// shown to the responder under the name the network lists for the key
/// the transport authenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_written_in_a_frame_is_never_believed() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let alice = party("Alice", 1);
    let mallory = party("Mallory", 9);
    let _notary = net.join(&party("Notary", 7));
    let node = start_node(&net, &alice, &dir.path().join("alice.redb"))
        .await
        .unwrap();
    let (attacker, _incoming) = net.join(&mallory);
    let init = WireMessage::Session {
        session: 0x5eed,
        from_initiator: true,
        seq: 0,
        body: Body::Init {
            flow: <ping::Flow as Flow>::NAME.to_owned(),
            version: <ping::Flow as Flow>::VERSION,
            initiator: Party::new("Notary", *mallory.key()),
            created_at: Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64,
            ),
        },
    };
    attacker
        .try_send(alice.key(), init.encode().unwrap())
        .unwrap();
    // The responder (pong) starts and waits for its first number.
    let mut dump = String::new();
    for _ in 0..500 {
        dump = node.dump_json().await.unwrap();
        if dump.contains("5eed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(dump.contains("5eed"), "the session never started: {dump}");
    assert!(dump.contains("Mallory"), "{dump}");
    assert!(
        !dump.contains("Notary"),
        "the attacker's name was believed: {dump}"
    );
    node.shutdown().await.unwrap();
}

// ------------------------------------------------- what a peer makes us hold

/// Sends blobs; only its NAME matters here (the attacker plays it).
#[flow]
pub async fn blob_source(ctx: &mut FlowContext, peer: Party) -> Result<(), FlowError> {
    let session = ctx.initiate_flow(&peer);
    session.send(&vec![0u8; 4])?;
    Ok(())
}

/// Takes blobs forever, each filled with the low byte of its sequence
/// number: a blob out of order, missing or seen twice ends it with an
/// error.
#[flow]
pub async fn blob_sink(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    let mut expected: u8 = 1;
    loop {
        let blob: Vec<u8> = session.receive::<Vec<u8>>().await?.validate(Ok)?;
        if blob.first() != Some(&expected) {
            return Err(FlowError::new("a blob out of order"));
        }
        expected = expected.wrapping_add(1);
    }
}

const BLOB: usize = 256 * 1024;

/// Alice's node core on a fresh database in `dir`, answering `blob_source`
/// initiations with `responder`: the node the tests below attack, playing
/// Mallory. Its store comes too, for the tests that count what it holds.
fn attacked_core<H: ResponderFn>(
    dir: &Path,
    responder: H,
    config: NodeConfig,
) -> (NodeCore, Arc<dyn Store>) {
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.join("alice.redb"), RedbOptions::default()).unwrap());
    let mut registry = Registry::new();
    registry.register_responder::<blob_source::Flow, _>(responder);
    let core = NodeCore::open(
        party("Alice", 1),
        store.clone(),
        registry,
        Box::new(OsIds),
        Box::new(OsIds),
        config,
        Timestamp(0),
    )
    .unwrap();
    (core, store)
}

/// Sequence numbers `Ack`ed in a delivery's output.
fn acked(frames: &[(PublicKey, Vec<u8>)]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|(_, f)| match WireMessage::decode(f) {
            Ok(WireMessage::Ack { seq, .. }) => Some(seq),
            _ => None,
        })
        .collect()
}

fn blob_frame(session: u64, seq: u64) -> Vec<u8> {
    WireMessage::Session {
        session,
        from_initiator: true,
        seq,
        body: Body::Data(Payload::encode(&vec![seq as u8; BLOB]).unwrap()),
    }
    .encode()
    .unwrap()
}

/// An authenticated peer withholds sequence number 1 and sends 64
/// messages of 256 KiB after it. Messages beyond the receive window, or
/// beyond the session's byte bound, are refused (not buffered, not
/// acknowledged), so what waits for the session stays bounded and each
/// delivery stays cheap; once the peer sends number 1, its redeliveries
/// fill the gap and every message is processed exactly once, in order.
#[test]
fn a_peer_holding_back_one_sequence_number_cannot_make_a_session_hold_much() {
    let dir = tempfile::tempdir().unwrap();
    let mallory = party("Mallory", 9);
    let (mut core, _) = attacked_core(dir.path(), blob_sink, NodeConfig::default());
    let session = 0xb10b;
    let init = WireMessage::Session {
        session,
        from_initiator: true,
        seq: 0,
        body: Body::Init {
            flow: <blob_source::Flow as Flow>::NAME.to_owned(),
            version: <blob_source::Flow as Flow>::VERSION,
            initiator: mallory.clone(),
            created_at: Some(1),
        },
    };
    let out = core
        .deliver(Timestamp(1), vec![(*mallory.key(), init.encode().unwrap())])
        .unwrap();
    assert_eq!(acked(&out.frames), vec![0]);

    // Numbers 2 to 65, one delivery (one commit) each; 1 is held back.
    let mut buffered = Vec::new();
    let mut times = Vec::new();
    for seq in 2..=65u64 {
        let began = Instant::now();
        let out = core
            .deliver(
                Timestamp(2),
                vec![(*mallory.key(), blob_frame(session, seq))],
            )
            .unwrap();
        times.push(began.elapsed());
        buffered.extend(acked(&out.frames));
    }
    let mean = times.iter().sum::<Duration>() / 64;
    eprintln!(
        "64 deliveries of 256 KiB past a withheld sequence number: mean {mean:?}, last {:?}, {} buffered",
        times[63],
        buffered.len()
    );
    let held = buffered.len() * BLOB;
    assert!(
        held <= NodeConfig::default().max_buffered_bytes_per_session + BLOB,
        "the session holds {held} bytes of messages it cannot consume"
    );

    // Number 1 arrives; the peer redelivers everything unacknowledged
    // until all is acknowledged (as its outbox would).
    let mut unacked: Vec<u64> = (1..=65).filter(|s| !buffered.contains(s)).collect();
    let mut rounds = 0;
    while !unacked.is_empty() {
        rounds += 1;
        assert!(rounds <= 70, "redelivery never filled the gap: {unacked:?}");
        let frames = unacked
            .iter()
            .map(|&s| {
                let frame = if s == 1 {
                    WireMessage::Session {
                        session,
                        from_initiator: true,
                        seq: 1,
                        body: Body::Data(Payload::encode(&vec![1u8; 4]).unwrap()),
                    }
                    .encode()
                    .unwrap()
                } else {
                    blob_frame(session, s)
                };
                (*mallory.key(), frame)
            })
            .collect();
        let out = core.deliver(Timestamp(3), frames).unwrap();
        let now_acked = acked(&out.frames);
        unacked.retain(|s| !now_acked.contains(s));
    }
    // Every message was consumed, in order, once: the sink still runs
    // (a gap or a duplicate would have ended it with an error).
    let dump = core.dump_json(Timestamp(4)).unwrap();
    assert!(dump.contains("blob_sink"), "{dump}");
}

// ------------------------------------------------- responders per peer

fn blob_init(session: u64, initiator: &Party) -> Vec<u8> {
    init_frame(session, initiator, Some(1))
}

/// `(session, seq)` of the acks among a delivery's frames.
fn acked_sessions(frames: &[(PublicKey, Vec<u8>)]) -> Vec<(u64, u64)> {
    frames
        .iter()
        .filter_map(|(_, f)| match WireMessage::decode(f) {
            Ok(WireMessage::Ack { session, seq, .. }) => Some((session, seq)),
            _ => None,
        })
        .collect()
}

/// A peer starts more responder flows than the node lets one peer run at
/// once. Past the bound an initiation is neither started nor acknowledged
/// (the peer's outbox keeps it); another peer is not affected; once one of
/// the peer's responders ends, the redelivered initiation starts: an
/// honest peer over the bound is delayed, not failed.
#[test]
fn a_peer_cannot_start_more_responder_flows_than_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mallory = party("Mallory", 9);
    let carol = party("Carol", 3);
    let config = NodeConfig {
        max_responders_per_peer: 3,
        ..NodeConfig::default()
    };
    let (mut core, _) = attacked_core(dir.path(), blob_sink, config.clone());

    let frames = (1..=5u64)
        .map(|s| (*mallory.key(), blob_init(s, &mallory)))
        .collect();
    let out = core.deliver(Timestamp(1), frames).unwrap();
    assert_eq!(
        acked_sessions(&out.frames),
        vec![(1, 0), (2, 0), (3, 0)],
        "initiations past the bound were accepted"
    );
    let dump = core.dump_json(Timestamp(1)).unwrap();
    assert_eq!(dump.matches("blob_sink").count(), 3, "{dump}");

    // Redelivered, the deferred initiations are still deferred...
    let out = core
        .deliver(Timestamp(2), vec![(*mallory.key(), blob_init(4, &mallory))])
        .unwrap();
    assert!(acked_sessions(&out.frames).is_empty());
    // ...while another peer is served.
    let out = core
        .deliver(Timestamp(2), vec![(*carol.key(), blob_init(9, &carol))])
        .unwrap();
    assert_eq!(acked_sessions(&out.frames), vec![(9, 0)]);

    // One of Mallory's responders ends (its session ends): a slot frees,
    // and the next redelivery of a deferred initiation starts it.
    let end = WireMessage::Session {
        session: 2,
        from_initiator: true,
        seq: 1,
        body: Body::End(None),
    }
    .encode()
    .unwrap();
    core.deliver(Timestamp(3), vec![(*mallory.key(), end)])
        .unwrap();
    let out = core
        .deliver(
            Timestamp(4),
            vec![
                (*mallory.key(), blob_init(4, &mallory)),
                (*mallory.key(), blob_init(5, &mallory)),
            ],
        )
        .unwrap();
    assert_eq!(acked_sessions(&out.frames), vec![(4, 0)]);

    // The count survives a restart: still at the bound.
    drop(core);
    let (mut core, _) = attacked_core(dir.path(), blob_sink, config);
    let out = core
        .deliver(Timestamp(5), vec![(*mallory.key(), blob_init(5, &mallory))])
        .unwrap();
    assert!(acked_sessions(&out.frames).is_empty());
}

/// The WARN lines about deferred initiations in `logs`, one per entry.
fn deferral_warnings(logs: &Logs) -> Vec<String> {
    logs.text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("initiations deferred"))
        .map(str::to_owned)
        .collect()
}

/// Deferrals by the responder bound are visible: every one is counted in
/// `flow_deferred_initiations_total`, and each peer past its bound gets
/// one WARN per interval (not one per initiation), naming the peer, the
/// bound and the setting to raise, with how many deferrals it stands for.
#[test]
fn deferred_initiations_are_counted_and_warned_once_per_peer_per_interval() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let mallory = party("Mallory", 9);
    let carol = party("Carol", 3);
    let config = NodeConfig {
        max_responders_per_peer: 3,
        ..NodeConfig::default()
    };
    let (mut core, _) = attacked_core(dir.path(), blob_sink, config);
    let metrics = NodeMetrics::new();
    core.set_metrics(metrics.core());
    let counted = || {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("flow_deferred_initiations_total "))
            .map(str::to_owned)
    };
    let every = u64::try_from(DEFERRAL_WARNING_EVERY.as_millis()).unwrap();
    let inits = |peer: &Party, sessions: std::ops::RangeInclusive<u64>| {
        sessions
            .map(|s| (*peer.key(), blob_init(s, peer)))
            .collect::<Vec<_>>()
    };

    // Five initiations against a bound of three: two deferred, one WARN.
    let t0 = 1_000;
    core.deliver(Timestamp(t0), inits(&mallory, 1..=5)).unwrap();
    assert_eq!(counted().as_deref(), Some("2"));
    let warned = deferral_warnings(&logs);
    assert_eq!(warned.len(), 1, "{warned:#?}");
    for needle in [
        "peer=Mallory",
        "bound=3",
        "deferred=1",
        "[node] max_responders_per_peer",
    ] {
        assert!(
            warned[0].contains(needle),
            "{needle} missing: {}",
            warned[0]
        );
    }

    // Redeliveries within the interval: counted, not warned again.
    core.deliver(Timestamp(t0 + 1), inits(&mallory, 4..=5))
        .unwrap();
    core.deliver(Timestamp(t0 + every - 1), inits(&mallory, 4..=5))
        .unwrap();
    assert_eq!(counted().as_deref(), Some("6"));
    assert_eq!(deferral_warnings(&logs).len(), 1);

    // Another peer past its bound has its own interval.
    core.deliver(Timestamp(t0 + 2), inits(&carol, 11..=14))
        .unwrap();
    assert_eq!(counted().as_deref(), Some("7"));
    let warned = deferral_warnings(&logs);
    assert_eq!(warned.len(), 2, "{warned:#?}");
    assert!(warned[1].contains("peer=Carol"), "{}", warned[1]);

    // Once the interval has passed, the next deferral warns again and
    // reports the ones it stood in for.
    core.deliver(Timestamp(t0 + every), inits(&mallory, 4..=4))
        .unwrap();
    assert_eq!(counted().as_deref(), Some("8"));
    let warned = deferral_warnings(&logs);
    assert_eq!(warned.len(), 3, "{warned:#?}");
    assert!(
        warned[2].contains("peer=Mallory") && warned[2].contains("deferred=6"),
        "{}",
        warned[2]
    );
}

// ---------------------------------------- versions seen by the initiator

/// Asks, then reports the VERSION of the responder that answered.
#[flow(name = "hostile_peer::ask_version")]
pub async fn ask_version(ctx: &mut FlowContext, peer: Party) -> Result<Option<u32>, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let _reply: String = session
        .send_and_receive::<String>(&1u32)
        .await?
        .validate(Ok)?;
    session.counterparty_version()
}

/// A responder at version 3.
#[flow(version = 3)]
pub async fn answer_v3(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
    let _n: u32 = session.receive::<u32>().await?.validate(Ok)?;
    session.send(&"v3".to_owned())?;
    Ok(())
}

/// The initiator learns its responder's VERSION from the responder's
/// acknowledgement of the initiation.
#[test]
fn the_initiator_reads_its_responders_version() {
    let mut net = MockNetwork::new(4);
    let alice = net.create_node("Alice");
    let bob = net.create_node("Bob");
    net.register_responder::<ask_version::Flow, _>(bob, answer_v3);
    let asked = net.start_flow(alice, ask_version(net.party(bob)));
    net.run_network();
    assert_eq!(net.result(&asked), Some(Ok(Some(3))));
}

// ------------------------------------------ ended sessions are forgotten

/// A responder that ends at once.
#[flow]
pub async fn hang_up(_ctx: &mut FlowContext, _session: FlowSession) -> Result<(), FlowError> {
    Ok(())
}

fn init_frame(session: u64, initiator: &Party, created_at: Option<u64>) -> Vec<u8> {
    WireMessage::Session {
        session,
        from_initiator: true,
        seq: 0,
        body: Body::Init {
            flow: <blob_source::Flow as Flow>::NAME.to_owned(),
            version: <blob_source::Flow as Flow>::VERSION,
            initiator: initiator.clone(),
            created_at,
        },
    }
    .encode()
    .unwrap()
}

/// The error of a refusal (an `End` at the responder's sequence number 0)
/// among a delivery's frames.
fn refusal(frames: &[(PublicKey, Vec<u8>)]) -> Option<FlowError> {
    frames
        .iter()
        .find_map(|(_, f)| match WireMessage::decode(f) {
            Ok(WireMessage::Session {
                from_initiator: false,
                seq: 0,
                body: Body::End(e),
                ..
            }) => e,
            _ => None,
        })
}

const RETENTION_MS: u64 = 10_000;

/// A peer starts and finishes session after session. Each leaves a
/// tombstone (so a late duplicate of its messages cannot start it again),
/// but only for the session retention: after it the tombstones, and the
/// database rows they took, are gone. A redelivery of one of those
/// initiations after that is refused (it is older than half the
/// retention), never served a second time.
#[test]
fn a_peer_cannot_grow_the_database_by_starting_and_ending_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let mallory = party("Mallory", 9);
    let config = NodeConfig {
        session_retention: Duration::from_millis(RETENTION_MS),
        max_responders_per_peer: 1000,
        ..NodeConfig::default()
    };
    let (mut core, store) = attacked_core(dir.path(), hang_up, config);
    let tombstones = || store.len(&Table::TOMBSTONES).unwrap();

    let started = 1_000u64;
    let frames = (1..=300u64)
        .map(|s| (*mallory.key(), init_frame(s, &mallory, Some(started))))
        .collect();
    let out = core.deliver(Timestamp(started), frames).unwrap();
    assert_eq!(acked_sessions(&out.frames).len(), 300);
    let mut served = out.finished.len();
    assert_eq!(served, 300);
    assert_eq!(tombstones(), 300);

    // Within the retention a redelivered initiation is a duplicate:
    // acknowledged, not served again.
    let late = started + RETENTION_MS / 2;
    let out = core
        .deliver(
            Timestamp(late),
            vec![(*mallory.key(), init_frame(7, &mallory, Some(started)))],
        )
        .unwrap();
    assert_eq!(acked_sessions(&out.frames), vec![(7, 0)]);
    served += out.finished.len();
    assert_eq!(served, 300);

    // After the retention the tombstones are gone...
    core.tick(Timestamp(started + RETENTION_MS + 1)).unwrap();
    assert_eq!(tombstones(), 0, "tombstones outlived the retention");
    assert_eq!(store.len(&Table::TOMBSTONE_EXPIRY).unwrap(), 0);
    // ...and a redelivery of one of those initiations is refused, not
    // served: exactly once still holds.
    let out = core
        .deliver(
            Timestamp(started + RETENTION_MS + 2),
            vec![(*mallory.key(), init_frame(7, &mallory, Some(started)))],
        )
        .unwrap();
    assert!(acked_sessions(&out.frames).is_empty());
    let error = refusal(&out.frames).expect("the stale initiation is refused");
    assert_eq!(error.kind(), FlowErrorKind::Refused);
    assert!(
        error.message().contains("half the session retention"),
        "{error}"
    );
    served += out.finished.len();
    assert_eq!(served, 300, "a session was served twice");
}

/// Initiations the node cannot date safely are refused with an error that
/// says why: one older than half the retention, one dated too far ahead of
/// the node's clock, and one of wire version 1 (no creation time).
#[test]
fn initiations_too_old_too_new_or_undated_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mallory = party("Mallory", 9);
    let config = NodeConfig {
        session_retention: Duration::from_millis(RETENTION_MS),
        ..NodeConfig::default()
    };
    let (mut core, _) = attacked_core(dir.path(), hang_up, config);
    let now = 100_000u64;
    for (session, created_at, says) in [
        (
            1,
            Some(now - RETENTION_MS / 2 - 1),
            "half the session retention",
        ),
        (
            2,
            Some(now + RETENTION_MS / 4 + 1),
            "ahead of this node's clock",
        ),
        (3, None, "wire version 1"),
    ] {
        let out = core
            .deliver(
                Timestamp(now),
                vec![(*mallory.key(), init_frame(session, &mallory, created_at))],
            )
            .unwrap();
        let error = refusal(&out.frames).expect("refused");
        assert!(error.message().contains(says), "{error}");
        assert!(acked_sessions(&out.frames).is_empty());
        assert!(out.finished.is_empty());
    }
    // Within both bounds, served.
    let out = core
        .deliver(
            Timestamp(now),
            vec![(
                *mallory.key(),
                init_frame(4, &mallory, Some(now - RETENTION_MS / 2)),
            )],
        )
        .unwrap();
    assert_eq!(acked_sessions(&out.frames), vec![(4, 0)]);
    assert_eq!(out.finished.len(), 1);
}

// ------------------------------------------------- what we queue for a peer

/// A peer that does not read (here: its node never answers the handshake,
/// so nothing queued for it is written) cannot make the node buffer
/// without bound: frames queued for it stop at the byte bound, `try_send`
/// refuses the next one (the node's durable outbox keeps that message and
/// re-sends it later), and once the peer reads again the queue drains and
/// takes frames again.
#[tokio::test]
async fn a_peer_that_does_not_read_holds_at_most_the_queue_byte_bound() {
    let mut net = Net::new(2).await;
    let config = TcpConfig {
        max_frame_len: 512 * 1024,
        peer_queue_bytes: 1024 * 1024,
        ..tcp_common::test_config()
    };
    let (alice, _alice_incoming) = net.start_with(0, config);
    let bob = net.key(1);
    let frame = vec![7u8; 100 * 1024];
    let mut queued = 0;
    loop {
        match alice.try_send(&bob, frame.clone()) {
            Ok(()) => queued += 1,
            Err(SendError::QueueFull(_)) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(
            queued <= 10,
            "more than 1 MiB queued for a peer that reads nothing"
        );
    }
    assert_eq!(queued, 10, "the queue refused before its byte bound");

    // Bob's node starts: everything queued arrives, and the queue's bytes
    // are free again.
    let (_bob, mut bob_incoming) = net.start(1);
    for _ in 0..queued {
        let (_, received) = recv(&mut bob_incoming).await;
        assert_eq!(received.len(), frame.len());
    }
    let mut accepted = false;
    for _ in 0..500 {
        if alice.try_send(&bob, frame.clone()).is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(accepted, "the queue did not take frames again once drained");
}

// --------------------------------------------- what we receive from a peer

/// Waits (up to 20 s: a loaded machine is slow, never wrong) until `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An authenticated peer that floods large frames while the node's driver
/// reads nothing: the frames the node holds for it stop at its share of the
/// incoming queue (counted in bytes, as the queue charges them), its
/// connection waits (its TCP window fills, the rest stays on its side), and
/// a second peer's frames still get into the queue meanwhile. Once the node
/// reads, every frame arrives, in order, and the budget is free again.
#[tokio::test]
async fn a_peer_flooding_large_frames_holds_at_most_its_share_of_the_incoming_queue() {
    const FRAME: usize = 100 * 1024;
    const FLOOD: usize = 40; // 4 MiB: 8 shares, 4 whole queues
    let mut net = Net::new(3).await;
    let config = TcpConfig {
        max_frame_len: 128 * 1024,
        incoming_queue_bytes: 1024 * 1024,
        incoming_peer_bytes: 512 * 1024,
        ..tcp_common::test_config()
    };
    let (_node, mut incoming) = net.start_with(0, config);
    let limits = incoming.limits();
    assert_eq!((limits.bytes, limits.peer_bytes), (1024 * 1024, 512 * 1024));
    let (flooder, _flooder_incoming) = net.start(1);
    let (honest, _honest_incoming) = net.start(2);
    let (node, mallory, bob) = (net.key(0), net.key(1), net.key(2));

    let flood = tokio::spawn(async move {
        for i in 0..FLOOD {
            flooder.send(&node, vec![i as u8; FRAME]).await.unwrap();
        }
        flooder
    });
    let charge = FRAME + FRAME_OVERHEAD;
    let full_share = limits.peer_bytes / charge * charge;
    // The share's budget is counted as held as soon as it is assigned,
    // including what a sender waiting for the rest has been given.
    eventually("the flooder's share is full", || {
        assert!(incoming.peer_bytes_held(&mallory) <= limits.peer_bytes);
        assert!(incoming.bytes_held() <= limits.bytes);
        incoming.len() == full_share / charge
    })
    .await;
    assert_eq!(incoming.bytes_held(), full_share);

    honest.send(&node, vec![0xB0; 1000]).await.unwrap();
    eventually("the honest peer's frame is queued", || {
        incoming.len() == full_share / charge + 1
    })
    .await;
    assert_eq!(incoming.peer_bytes_held(&bob), 1000 + FRAME_OVERHEAD);
    assert!(incoming.peer_bytes_held(&mallory) <= limits.peer_bytes);
    assert_eq!(incoming.bytes_held(), full_share + 1000 + FRAME_OVERHEAD);
    // What the queue holds, counted from the frames themselves.
    let mut held = Vec::new();
    while let Ok(frame) = incoming.try_recv() {
        held.push(frame);
    }
    let bytes: usize = held.iter().map(|(_, f)| f.len() + FRAME_OVERHEAD).sum();
    assert!(bytes <= limits.bytes, "{bytes} bytes queued");
    assert_eq!(held.iter().filter(|(from, _)| *from == mallory).count(), 5);

    // The node reads on: the flood arrives whole and in order, beside Bob's.
    let mut next = 0;
    let mut from_bob = 0;
    let mut held = held.into_iter();
    while next < FLOOD || from_bob == 0 {
        let (from, frame) = match held.next() {
            Some(frame) => frame,
            None => recv(&mut incoming).await,
        };
        assert!(incoming.bytes_held() <= limits.bytes);
        if from == bob {
            from_bob += 1;
            assert_eq!(frame, vec![0xB0; 1000]);
        } else {
            assert_eq!(from, mallory);
            assert_eq!(frame, vec![next as u8; FRAME], "frame {next}");
            next += 1;
        }
    }
    let _flooder = flood.await.unwrap();
    assert_eq!(incoming.bytes_held(), 0);
    assert!(incoming.is_empty());
}

/// The same bound in memory: a member that floods a node that does not
/// read is refused at its share (its outbox keeps the message), and the
/// others still get in.
#[tokio::test]
async fn a_member_flooding_a_memory_node_is_refused_at_its_share() {
    let net = MemoryNetwork::with_limits(IncomingLimits {
        frames: 1024,
        bytes: 1024 * 1024,
        peer_bytes: 512 * 1024,
    });
    let (alice, bob, mallory) = (party("Alice", 1), party("Bob", 2), party("Mallory", 9));
    let (_alice_transport, mut alice_incoming) = net.join(&alice);
    let (bob_transport, _bob_incoming) = net.join(&bob);
    let (mallory_transport, _mallory_incoming) = net.join(&mallory);
    let frame = vec![7u8; 100 * 1024];
    let mut queued = 0;
    loop {
        match mallory_transport.try_send(alice.key(), frame.clone()) {
            Ok(()) => queued += 1,
            Err(SendError::QueueFull(_)) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(queued <= 5, "more than the share queued");
    }
    assert_eq!(queued, 5);
    assert_eq!(
        alice_incoming.peer_bytes_held(mallory.key()),
        5 * (frame.len() + FRAME_OVERHEAD)
    );
    bob_transport.try_send(alice.key(), frame.clone()).unwrap();
    assert_eq!(
        bob_transport.try_send(alice.key(), vec![0; 600 * 1024]),
        Err(SendError::TooLarge {
            len: 600 * 1024,
            max: 512 * 1024 - FRAME_OVERHEAD
        })
    );
    assert!(alice_incoming.bytes_held() <= 1024 * 1024);
    let (from, _) = alice_incoming.try_recv().unwrap();
    assert_eq!(from, *mallory.key());
    mallory_transport
        .try_send(alice.key(), frame.clone())
        .unwrap();
}
