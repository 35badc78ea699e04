//! The bodies of the fuzz targets in `flow-runtime/fuzz`, and the seed
//! inputs they start from.
//!
//! They live here, in the library, for two reasons: every `cargo test`
//! runs the same bodies over the same seeds (`tests/fuzz_corpus.rs`), so a
//! change that breaks a body's assumptions fails on stable CI and not only
//! in a nightly fuzzing session; and the bodies reach the node's own record
//! decoders without those becoming public API. The fuzz targets are one
//! line each: `fuzz_target!(|data: &[u8]| fuzz::node_frames(data))`.
//!
//! Every body panics (so the fuzzer reports a crash) only when the code
//! under test does something it must never do with hostile bytes: panic,
//! accept a forgery, or produce something it cannot read back. An error
//! returned for bad input is the expected outcome.
//!
//! Inputs are parsed as a sequence of length-prefixed records (see each
//! body), so the fuzzer's mutations of a seed keep most of its structure:
//! the bodies reach deep into the node instead of failing at the first
//! byte.

use crate::engine::{Body, NodeConfig, NodeCore, Registry, WireMessage};
use crate::node::records::{
    CheckpointRecord, CheckpointSummary, HospitalRecord, OutboxRecord, ResultRecord, SessionRecord,
    decode_count, decode_store_format, parse_run_key, parse_session_key, parse_timer_key,
    parse_timer_runs, parse_tombstone_expiry_key,
};
use crate::registry::NewFlow;
use crate::storage::{RedbOptions, RedbStore, SharedMemory, Store, Table, WriteBatch};
use crate::testing::ping_pong::{ping, pong};
use crate::{Flow, Party, Payload, PublicKey, SeededIds, Timestamp};
use std::sync::Arc;
use std::time::Duration;

/// The targets, by the name of their `fuzz/fuzz_targets/<name>.rs`.
#[cfg(feature = "tcp")]
pub const TARGETS: &[&str] = &[
    "wire_message",
    "node_frames",
    "stored_records",
    "tcp_records",
    "identity_proof",
];

/// The targets, by the name of their `fuzz/fuzz_targets/<name>.rs` (the
/// transport's need the `tcp` feature).
#[cfg(not(feature = "tcp"))]
pub const TARGETS: &[&str] = &["wire_message", "node_frames", "stored_records"];

/// Runs the body of `target` on `data`. Returns `false` for a target name
/// this build does not have.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "wire_message" => wire_message(data),
        "node_frames" => node_frames(data),
        "stored_records" => stored_records(data),
        #[cfg(feature = "tcp")]
        "tcp_records" => tcp_records(data),
        #[cfg(feature = "tcp")]
        "identity_proof" => identity_proof(data),
        _ => return false,
    }
    true
}

/// The seed inputs of `target`: valid encodings of what the target reads,
/// built the way the node builds them, so the fuzzer starts from
/// well-formed input. Deterministic.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "wire_message" => wire_seeds(),
        "node_frames" => node_frame_seeds(),
        "stored_records" => stored_record_seeds(),
        #[cfg(feature = "tcp")]
        // Records for the codec, and plaintexts of packed frames for the
        // frame parser (three frames, one of them empty).
        "tcp_records" => vec![
            vec![0, 0, 0, 4, 1, 2, 3, 4],
            vec![0, 0, 0x10, 0],
            vec![0, 0, 0, 3, 7, 8, 9, 0, 0, 0, 0, 0, 0, 0, 1, 5],
        ],
        #[cfg(feature = "tcp")]
        "identity_proof" => {
            let key = crate::tcp::SigningKey::from_bytes(&[5; 32]);
            vec![crate::tcp::records::IdentityProof::sign("Alice", &key, &[9; 32]).encode()]
        }
        _ => Vec::new(),
    }
}

// ------------------------------------------------------------- wire_message

/// A decrypted frame's bytes through the session-message decoder: nothing
/// panics; whatever decodes re-encodes and decodes to the same message.
pub fn wire_message(data: &[u8]) {
    if let Ok(message) = WireMessage::decode(data) {
        let bytes = message.encode().expect("a decoded message re-encodes");
        assert_eq!(
            WireMessage::decode(&bytes).ok(),
            Some(message),
            "a message did not survive encode and decode"
        );
    }
}

fn alice() -> Party {
    Party::new("Alice", PublicKey([1; 32]))
}

fn mallory() -> Party {
    Party::new("Mallory", PublicKey([9; 32]))
}

fn carol() -> Party {
    Party::new("Carol", PublicKey([3; 32]))
}

/// The fuzzed node's clock at the start of a run.
const T0: u64 = 1_700_000_000_000;

fn session_frame(session: u64, from_initiator: bool, seq: u64, body: Body) -> Vec<u8> {
    WireMessage::Session {
        session,
        from_initiator,
        seq,
        body,
    }
    .encode()
    .expect("encodes")
}

fn ping_init(session: u64, who: &Party, created_at: Option<u64>) -> Vec<u8> {
    session_frame(
        session,
        true,
        0,
        Body::Init {
            flow: <ping::Flow as Flow>::NAME.to_owned(),
            version: <ping::Flow as Flow>::VERSION,
            initiator: who.clone(),
            created_at,
        },
    )
}

fn number(n: u32) -> Body {
    Body::Data(Payload::encode(&n).expect("encodes"))
}

fn wire_seeds() -> Vec<Vec<u8>> {
    vec![
        ping_init(7, &mallory(), Some(T0)),
        session_frame(7, true, 1, number(0)),
        session_frame(7, false, 3, Body::End(None)),
        session_frame(
            7,
            false,
            0,
            Body::End(Some(crate::FlowError::new("no such flow"))),
        ),
        WireMessage::Ack {
            session: 7,
            from_initiator: true,
            seq: 0,
            responder_version: Some(2),
        }
        .encode()
        .expect("encodes"),
    ]
}

// -------------------------------------------------------------- node_frames

/// A node whose store is in memory, answering `ping` with `pong`, with a
/// short session retention so a fuzz run also reaches tombstone expiry.
fn fuzzed_node(store: Arc<dyn Store>) -> Result<NodeCore, crate::NodeError> {
    let mut registry = Registry::new();
    registry.register_flow::<ping::Flow>();
    registry.register_responder::<ping::Flow, _>(pong);
    NodeCore::open(
        alice(),
        store,
        registry,
        Box::new(SeededIds::new(1)),
        Box::new(SeededIds::new(2)),
        NodeConfig {
            session_retention: Duration::from_secs(60),
            max_responders_per_peer: 8,
            receive_window: 8,
            max_buffered_bytes_per_session: 4096,
            ..NodeConfig::default()
        },
        Timestamp(T0),
    )
}

fn memory_store() -> Arc<dyn Store> {
    Arc::new(
        RedbStore::open_in_memory(&SharedMemory::new(), RedbOptions::default())
            .expect("an in-memory store opens"),
    )
}

/// Splits `data` into records `[tag u8][len u16 big-endian][len bytes]`; a
/// short tail is one last record.
fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let [tag, a, b, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
        out.push((*tag, &rest[..len]));
        data = &rest[len..];
    }
    out
}

fn record(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Frames from two authenticated peers, delivered to a node (with a flow
/// of its own pinging one of them): each record is one frame, from Mallory
/// (tag bit 0 clear) or Carol (set); tag bit 1 starts a new delivery (one
/// group commit), and the clock moves on by `tag >> 2` seconds first.
/// Nothing may panic, every delivery must commit (bad frames are refused,
/// not errors), and every frame the node sends must decode.
pub fn node_frames(data: &[u8]) {
    let Ok(mut core) = fuzzed_node(memory_store()) else {
        panic!("a fresh in-memory node does not open");
    };
    let started = NewFlow::new(&ping(mallory(), 2)).expect("encodes");
    core.start(Timestamp(T0), started, None)
        .expect("a flow starts");
    let mut now = T0;
    let mut batch: Vec<(PublicKey, Vec<u8>)> = Vec::new();
    let check = |out: crate::engine::Output| {
        for (_, frame) in out.frames {
            if let Err(e) = WireMessage::decode(&frame) {
                panic!("the node sent a frame it cannot read: {e}");
            }
        }
    };
    for (tag, frame) in records(data) {
        if tag & 2 != 0 && !batch.is_empty() {
            let frames = std::mem::take(&mut batch);
            check(
                core.deliver(Timestamp(now), frames)
                    .expect("a delivery commits"),
            );
        }
        now += u64::from(tag >> 2) * 1000;
        let from = if tag & 1 == 0 { mallory() } else { carol() };
        batch.push((*from.key(), frame.to_vec()));
    }
    check(
        core.deliver(Timestamp(now), batch)
            .expect("a delivery commits"),
    );
    // Later: timers, redelivery bookkeeping and the tombstone sweep.
    check(core.tick(Timestamp(now + 120_000)).expect("a tick commits"));
    core.dump_json(Timestamp(now + 120_000))
        .expect("the node dumps what it holds");
    core.unacked_frames().expect("the outbox reads");
}

fn node_frame_seeds() -> Vec<Vec<u8>> {
    let m = mallory();
    let c = carol();
    let mut exchange = Vec::new();
    exchange.extend(record(0, &ping_init(11, &m, Some(T0))));
    exchange.extend(record(0, &session_frame(11, true, 1, number(0))));
    exchange.extend(record(2, &session_frame(11, true, 2, number(1))));
    exchange.extend(record(2, &session_frame(11, true, 3, Body::End(None))));
    // Carol plays Mallory's session; Mallory repeats herself.
    exchange.extend(record(1, &session_frame(11, true, 2, number(5))));
    exchange.extend(record(2, &ping_init(11, &m, Some(T0))));
    let mut stale = Vec::new();
    stale.extend(record(0, &ping_init(12, &m, Some(T0 - 3_600_000))));
    stale.extend(record(1, &ping_init(13, &c, None)));
    stale.extend(record(
        0,
        &WireMessage::Ack {
            session: 1,
            from_initiator: true,
            seq: 0,
            responder_version: Some(1),
        }
        .encode()
        .expect("encodes"),
    ));
    // Ahead of the window, then the gap filled, then the session expires.
    let mut window = Vec::new();
    window.extend(record(0, &ping_init(14, &m, Some(T0))));
    for seq in (2..12).rev() {
        window.extend(record(0, &session_frame(14, true, seq, number(seq as u32))));
    }
    window.extend(record(2, &session_frame(14, true, 1, number(1))));
    window.extend(record(0xfe, &session_frame(14, true, 12, Body::End(None))));
    window.extend(record(0xfe, &ping_init(14, &m, Some(T0))));
    vec![exchange, stale, window]
}

// ------------------------------------------------------------ stored_records

/// The node's tables a `stored_records` record writes to, by tag.
const TABLES: [Table; 11] = Table::BUILT_IN;

/// A database a hostile file could hold: each record is one row
/// `[table index u8][len u16][key len u8][key][value]` (the table index is
/// taken modulo the number of tables). The row decoders get every value
/// directly, then a node opens on the whole store and works: opening may
/// refuse the store with an error, but nothing may panic, and a checkpoint
/// that decodes must re-encode to the same record.
pub fn stored_records(data: &[u8]) {
    let mut batch = WriteBatch::default();
    for (tag, row) in records(data) {
        let table = TABLES[usize::from(tag) % TABLES.len()].clone();
        let (key, value) = match row {
            [n, rest @ ..] => rest.split_at(usize::from(*n).min(rest.len())),
            [] => (&[][..], &[][..]),
        };
        decode_row(&table, key, value);
        batch.put(table, key.to_vec(), value.to_vec());
    }
    let store = memory_store();
    if store.commit(batch).is_err() {
        return;
    }
    let Ok(mut core) = fuzzed_node(store) else {
        return;
    };
    let now = Timestamp(T0 + 1000);
    let _ = core.tick(now);
    let _ = core.dump_json(now);
    let _ = core.hospital();
    let _ = core.unacked_frames();
    let _ = core.deliver(
        Timestamp(T0 + 2000),
        vec![(*mallory().key(), ping_init(11, &mallory(), Some(T0)))],
    );
    let _ = core.tick(Timestamp(T0 + 600_000));
}

/// Every decoder of a row of `table`, on `key` and `value`.
fn decode_row(table: &Table, key: &[u8], value: &[u8]) {
    if *table == Table::CHECKPOINTS {
        let _ = parse_run_key(key);
        let _ = CheckpointSummary::decode(value);
        if let Ok(rec) = CheckpointRecord::decode(value) {
            let again = CheckpointRecord::decode(&rec.encode()).expect("a checkpoint re-decodes");
            assert_eq!(
                format!("{again:?}"),
                format!("{rec:?}"),
                "a checkpoint did not survive encode and decode"
            );
        }
    } else if *table == Table::SESSIONS || *table == Table::TOMBSTONES {
        let _ = parse_session_key(key);
        let _ = rmp_serde::from_slice::<SessionRecord>(value);
    } else if *table == Table::TOMBSTONE_EXPIRY {
        let _ = parse_tombstone_expiry_key(key);
    } else if *table == Table::OUTBOX {
        if let Ok(rec) = rmp_serde::from_slice::<OutboxRecord>(value) {
            wire_message(&rec.frame);
        }
    } else if *table == Table::TIMERS {
        let _ = parse_timer_key(key);
        let _ = parse_timer_runs(value);
    } else if *table == Table::RESULTS {
        let _ = rmp_serde::from_slice::<ResultRecord>(value);
    } else if *table == Table::HOSPITAL {
        let _ = rmp_serde::from_slice::<HospitalRecord>(value);
    } else if *table == Table::META {
        let _ = decode_store_format(Some(value));
        let _ = decode_count(Some(value));
    }
}

/// Rows a node really writes: a node runs a flow and answers a session,
/// and every row of its store becomes one record.
fn stored_record_seeds() -> Vec<Vec<u8>> {
    let store = memory_store();
    let Ok(mut core) = fuzzed_node(store.clone()) else {
        return Vec::new();
    };
    let flow = NewFlow::new(&ping(mallory(), 2)).expect("encodes");
    let _ = core.start(Timestamp(T0), flow, Some("client-1".into()));
    let m = mallory();
    let _ = core.deliver(
        Timestamp(T0 + 1),
        vec![
            (*m.key(), ping_init(11, &m, Some(T0))),
            (*m.key(), session_frame(11, true, 1, number(0))),
            (*m.key(), ping_init(12, &m, Some(T0))),
            (*m.key(), session_frame(12, true, 1, Body::End(None))),
        ],
    );
    let _ = core.tick(Timestamp(T0 + 2));
    let mut all = Vec::new();
    for (index, table) in TABLES.iter().enumerate() {
        let Ok(rows) = store.range(table, &[], None, usize::MAX) else {
            continue;
        };
        for (key, value) in rows {
            let mut row = vec![u8::try_from(key.len()).unwrap_or(u8::MAX)];
            row.extend_from_slice(&key);
            row.extend_from_slice(&value);
            all.extend(record(u8::try_from(index).unwrap_or(0), &row));
        }
    }
    vec![all]
}

// ------------------------------------------------------- the TCP transport

/// The receive path of an established connection: the length-delimited
/// record decoder, record decryption, and the parser of the frames packed
/// in a decrypted record. Nothing may panic, allocate beyond the limits,
/// or decrypt (the fuzzer cannot forge a Poly1305 tag: a decrypted record
/// would be a forgery); since it cannot reach the frame parser through
/// decryption, the input is also parsed as a record's plaintext, and every
/// frame found must lie within it and within the maximum.
#[cfg(feature = "tcp")]
pub fn tcp_records(data: &[u8]) {
    use crate::tcp::codec;
    use crate::tcp::records::{
        NOISE_MAX_MESSAGE, frames, in_memory_transport_pair, max_record_plain, open_record,
        sealed_len,
    };
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    const MAX_FRAME: usize = 1 << 20;
    let Ok((_, mut receiver)) = in_memory_transport_pair() else {
        return;
    };
    // The handshake-phase codec, then the established-phase one.
    let mut handshake_codec = codec(NOISE_MAX_MESSAGE);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_record)) = handshake_codec.decode(&mut buf) {}

    let max_plain = max_record_plain(MAX_FRAME);
    let mut frame_codec = codec(sealed_len(max_plain));
    let mut buf = BytesMut::from(data);
    let mut plain = Vec::new();
    while let Ok(Some(record)) = frame_codec.decode(&mut buf) {
        assert!(
            open_record(&mut receiver, &record, max_plain, &mut plain).is_err(),
            "forged record decrypted"
        );
    }

    let mut inside = 0;
    for frame in frames(data, MAX_FRAME) {
        match frame {
            Ok(frame) => {
                assert!(frame.len() <= MAX_FRAME);
                inside += 4 + frame.len();
                assert!(inside <= data.len(), "a frame reaches past the record");
            }
            Err(_) => break,
        }
    }
}

/// The handshake payload decoder and verifier: a proof the fuzzer wrote
/// never verifies (it cannot forge an ed25519 signature), and whatever
/// decodes re-encodes to something that decodes the same.
#[cfg(feature = "tcp")]
pub fn identity_proof(data: &[u8]) {
    use crate::tcp::records::IdentityProof;
    if let Ok(proof) = IdentityProof::decode(data) {
        assert!(proof.verify(&[7u8; 32]).is_err(), "forged proof verified");
        let again = IdentityProof::decode(&proof.encode());
        assert_eq!(
            again.ok(),
            Some(proof),
            "a proof did not survive encode and decode"
        );
    }
}
