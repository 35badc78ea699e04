//! What the node stores, record by record, and how keys are laid out.
//!
//! Records are MessagePack (rmp-serde), except the checkpoint record, which
//! every step rewrites and so has its own compact binary layout
//! ([`CheckpointRecord::encode`]); numeric keys are big-endian so that byte
//! order is numeric order (timers are scanned by due time).

use crate::{FlowError, Party, Payload, PublicKey, SessionId, Timestamp, Wait};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which end of a session a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Side {
    /// The end that called `initiate_flow`.
    Initiator,
    /// The end started by the counterparty's `Init`.
    Responder,
}

impl Side {
    fn byte(self) -> u8 {
        match self {
            Side::Initiator => 0,
            Side::Responder => 1,
        }
    }
}

/// One end of a session on this node: the id plus which end. (A flow may open
/// a session to its own node, so both ends of one id can live here.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    /// The session id.
    pub id: SessionId,
    /// Our end.
    pub side: Side,
}

impl SessionKey {
    /// 9 bytes: id, side.
    pub fn bytes(&self) -> Vec<u8> {
        let mut k = self.id.0.to_be_bytes().to_vec();
        k.push(self.side.byte());
        k
    }
}

/// Outbox key: the sending end, then the sequence number.
pub fn outbox_key(session: SessionKey, seq: u64) -> Vec<u8> {
    let mut k = session.bytes();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Run-id key.
pub fn run_key(run: u64) -> Vec<u8> {
    run.to_be_bytes().to_vec()
}

/// Timer key: the due time. One row holds every run with a timer due at
/// that millisecond (flow sleeps and hospital retries alike), so the flows
/// of a group commit that sleep until the same moment cost one row, and
/// firing everything due is one range removal.
pub fn timer_key(at: Timestamp) -> Vec<u8> {
    at.0.to_be_bytes().to_vec()
}

/// The due time of a timer key.
pub fn parse_timer_key(k: &[u8]) -> Option<Timestamp> {
    Some(Timestamp(u64::from_be_bytes(k.get(..8)?.try_into().ok()?)))
}

/// A timer row's value: its run ids, 8 bytes each, ascending.
pub fn encode_timer_runs<'a>(runs: impl IntoIterator<Item = &'a u64>) -> Vec<u8> {
    runs.into_iter().flat_map(|r| r.to_be_bytes()).collect()
}

/// The run ids of a timer row. Bytes that are not a whole number of ids
/// (never written by this code) are reported and the whole ids kept.
pub fn parse_timer_runs(v: &[u8]) -> Vec<u64> {
    let chunks = v.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        tracing::error!(
            len = v.len(),
            "timer row is not a whole number of run ids; the trailing bytes are ignored"
        );
    }
    chunks
        .map(|c| {
            let mut id = [0u8; 8];
            id.copy_from_slice(c);
            u64::from_be_bytes(id)
        })
        .collect()
}

/// Parses an 8-byte run key.
pub fn parse_run_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(..8)?.try_into().ok()?))
}

/// A suspended (or not yet started) flow. Stored in its own binary layout
/// ([`CheckpointRecord::encode`]), not MessagePack.
#[derive(Debug, Clone)]
pub struct CheckpointRecord {
    /// `Flow::NAME`.
    pub flow: String,
    /// `Flow::fingerprint()` of the code that wrote the state.
    pub fingerprint: u64,
    /// `Flow::VERSION` of that code.
    pub version: u32,
    /// The state machine, MessagePack.
    pub state: Vec<u8>,
    /// The state's variant name when it was written (dumps read this without
    /// decoding the state).
    pub state_name: String,
    /// Whether the first step has run.
    pub started: bool,
    /// What the flow waits for.
    pub wait: Option<Wait>,
    /// When it started waiting.
    pub waiting_since: Timestamp,
    /// Progress path.
    pub progress: Vec<String>,
    /// The session ends this run owns.
    pub sessions: Vec<SessionKey>,
    /// Whether to keep the outcome for a client (top-level flows started
    /// through the API; responders' outcomes are not kept).
    pub keep_result: bool,
    /// The client-supplied id it was started with.
    pub client_id: Option<String>,
    /// When a receive still waiting fails (see
    /// `FlowContext::set_receive_deadline`); a timer is set for it.
    pub deadline: Option<Timestamp>,
}

/// The first byte of an encoded [`CheckpointRecord`]: the layout version, so
/// a later layout can still read (or at least recognise) older records.
const CHECKPOINT_FORMAT: u8 = 1;

impl CheckpointRecord {
    /// Encodes the record in its fixed binary layout (written on every step,
    /// so it is hand-rolled: a generic encoder costs more than the rest of
    /// the step's bookkeeping together). Layout, numbers big-endian:
    /// `format u8 | fingerprint u64 | version u32 | waiting_since u64 |
    /// flags u8 (1 started, 2 keep_result, 4 client_id present, 8 deadline
    /// present) |
    /// wait tag u8 (0 none, 1 receive, 2 timer) + u64 | flow str |
    /// state_name str | state bytes | progress: u32 count + str each |
    /// sessions: u32 count + (id u64, side u8) each | client_id str (if
    /// flagged) | deadline u64 (if flagged)`, where `str`/`bytes` are a u32
    /// length and the bytes. (The deadline came later: records without it
    /// read as before.)
    pub fn encode(&self) -> Vec<u8> {
        // The fixed fields and length prefixes take 51 bytes.
        let mut out = Vec::with_capacity(
            64 + self.flow.len()
                + self.state_name.len()
                + self.state.len()
                + self.progress.iter().map(|p| p.len() + 4).sum::<usize>()
                + self.sessions.len() * 9
                + self.client_id.as_ref().map_or(0, |c| c.len() + 4),
        );
        out.push(CHECKPOINT_FORMAT);
        out.extend_from_slice(&self.fingerprint.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.waiting_since.0.to_be_bytes());
        let flags = u8::from(self.started)
            | (u8::from(self.keep_result) << 1)
            | (u8::from(self.client_id.is_some()) << 2)
            | (u8::from(self.deadline.is_some()) << 3);
        out.push(flags);
        let (tag, value) = match &self.wait {
            None => (0u8, 0u64),
            Some(Wait::Receive(s)) => (1, s.0),
            Some(Wait::Timer(t)) => (2, t.0),
        };
        out.push(tag);
        out.extend_from_slice(&value.to_be_bytes());
        put_bytes(&mut out, self.flow.as_bytes());
        put_bytes(&mut out, self.state_name.as_bytes());
        put_bytes(&mut out, &self.state);
        put_len(&mut out, self.progress.len());
        for p in &self.progress {
            put_bytes(&mut out, p.as_bytes());
        }
        put_len(&mut out, self.sessions.len());
        for k in &self.sessions {
            out.extend_from_slice(&k.id.0.to_be_bytes());
            out.push(k.side.byte());
        }
        if let Some(c) = &self.client_id {
            put_bytes(&mut out, c.as_bytes());
        }
        if let Some(d) = self.deadline {
            out.extend_from_slice(&d.0.to_be_bytes());
        }
        out
    }

    /// Decodes [`encode`](Self::encode)'s layout. Bytes from disk are not
    /// trusted: any inconsistency is an error naming what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader(bytes);
        let format = r.u8("format")?;
        if format != CHECKPOINT_FORMAT {
            return Err(format!(
                "checkpoint layout {format} is not one this node reads (it reads {CHECKPOINT_FORMAT})"
            ));
        }
        let fingerprint = r.u64("fingerprint")?;
        let version = r.u32("version")?;
        let waiting_since = Timestamp(r.u64("waiting_since")?);
        let flags = r.u8("flags")?;
        let wait = match (r.u8("wait")?, r.u64("wait")?) {
            (0, _) => None,
            (1, s) => Some(Wait::Receive(SessionId(s))),
            (2, t) => Some(Wait::Timer(Timestamp(t))),
            (tag, _) => return Err(format!("unknown wait kind {tag}")),
        };
        let flow = r.string("flow name")?;
        let state_name = r.string("state name")?;
        let state = r.bytes("state")?.to_vec();
        let n = r.len("progress")?;
        let mut progress = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            progress.push(r.string("progress step")?);
        }
        let n = r.len("sessions")?;
        let mut sessions = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let id = SessionId(r.u64("session id")?);
            let side = match r.u8("session side")? {
                0 => Side::Initiator,
                1 => Side::Responder,
                s => return Err(format!("unknown session side {s}")),
            };
            sessions.push(SessionKey { id, side });
        }
        let client_id = if flags & 4 != 0 {
            Some(r.string("client id")?)
        } else {
            None
        };
        let deadline = if flags & 8 != 0 {
            Some(Timestamp(r.u64("deadline")?))
        } else {
            None
        };
        if !r.0.is_empty() {
            return Err(format!("{} unexpected bytes after the record", r.0.len()));
        }
        Ok(Self {
            flow,
            fingerprint,
            version,
            state,
            state_name,
            started: flags & 1 != 0,
            wait,
            waiting_since,
            progress,
            sessions,
            keep_result: flags & 2 != 0,
            client_id,
            deadline,
        })
    }
}

/// What an operator report needs from a stored checkpoint, read without
/// decoding the rest (see [`CheckpointSummary::decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// `Flow::NAME` of the top-level flow.
    pub flow: String,
    /// The state variant it was suspended in.
    pub state_name: String,
    /// Bytes of the encoded state machine (the rest of the record is the
    /// node's bookkeeping).
    pub state_bytes: usize,
}

impl CheckpointSummary {
    /// Reads the summary of a value of the `checkpoints` table. The layout
    /// is the runtime's own and may change between versions: read stored
    /// checkpoints through this, never by mirroring it.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader(bytes);
        let format = r.u8("format")?;
        if format != CHECKPOINT_FORMAT {
            return Err(format!(
                "checkpoint layout {format} is not one this node reads"
            ));
        }
        // fingerprint, version, waiting_since, flags, wait tag + value.
        r.take(8 + 4 + 8 + 1 + 1 + 8, "header")?;
        let flow = r.string("flow name")?;
        let state_name = r.string("state name")?;
        let state_bytes = r.bytes("state")?.len();
        Ok(Self {
            flow,
            state_name,
            state_bytes,
        })
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Records are far below 4 GiB (a step's checkpoint is one redb value).
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// A cursor over untrusted record bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "record ends inside its {what} (needs {n} bytes, {} left)",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    fn len(&mut self, what: &str) -> Result<usize, String> {
        usize::try_from(self.u32(what)?).map_err(|_| format!("{what} length too large"))
    }
    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.len(what)?;
        self.take(n, what)
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

/// A message received on a session and not yet consumed by the flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Inbound {
    /// A value.
    Data(Payload),
    /// The counterparty ended (with its error, if any).
    End(Option<FlowError>),
}

/// One end of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The run that owns it.
    pub run: u64,
    /// Who is at the other end.
    pub counterparty: Party,
    /// The initiating flow (for dumps and diagnostics).
    pub initiating_flow: String,
    /// The sequence number of our next outgoing message.
    pub next_send: u64,
    /// The next incoming sequence number the flow will consume: everything
    /// below it has been processed (the dedup high-water mark).
    pub next_consume: u64,
    /// Received, not yet consumed, possibly out of order.
    pub inbox: BTreeMap<u64, Inbound>,
    /// Set once the flow has consumed the counterparty's `End`.
    pub ended: Option<FlowError>,
    /// The `VERSION` of the counterparty's flow, when known: for a
    /// responder's session, the initiator's (from the initiation); `None`
    /// on the initiator's side. Absent in records written before it
    /// existed, which decode with `None`.
    #[serde(default)]
    pub counterparty_version: Option<u32>,
    /// On a responder's session: the `VERSION` of the responder flow, sent
    /// with the ack of the `Init` (again if the `Init` is redelivered).
    /// `None` on the initiator's side, and in older records.
    #[serde(default)]
    pub own_version: Option<u32>,
}

impl Inbound {
    /// Roughly the bytes this message takes in the session record: what a
    /// session's byte bound counts.
    pub fn size(&self) -> usize {
        match self {
            Inbound::Data(p) => p.bytes.len() + p.type_name.len(),
            Inbound::End(e) => e.as_ref().map_or(0, |e| e.message().len()) + 16,
        }
    }
}

impl SessionRecord {
    /// Whether the counterparty has ended (its `End` arrived, consumed or not).
    pub fn peer_ended(&self) -> bool {
        self.ended.is_some() || self.inbox.values().any(|m| matches!(m, Inbound::End(_)))
    }
}

/// A sent message, kept until the receiver acknowledges it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The receiver.
    pub to: PublicKey,
    /// The encoded frame.
    #[serde(with = "serde_bytes")]
    pub frame: Vec<u8>,
}

impl OutboxRecord {
    /// The record of `frame` sent to `to`, encoded: exactly the MessagePack
    /// `rmp_serde` writes for an `OutboxRecord` (an array of the key's and
    /// the frame's byte strings), written from borrowed bytes. Why: every
    /// message sent is recorded so, and building the record would copy the
    /// frame once more and run the generic encoder.
    pub fn encode_borrowed(to: &PublicKey, frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 34 + 5 + frame.len());
        out.push(0x92); // array of 2
        put_msgpack_bin(&mut out, &to.0);
        put_msgpack_bin(&mut out, frame);
        out
    }
}

/// A MessagePack byte string (`bin 8/16/32`) of `bytes`.
fn put_msgpack_bin(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len();
    if let Ok(n) = u8::try_from(len) {
        out.push(0xc4);
        out.push(n);
    } else if let Ok(n) = u16::try_from(len) {
        out.push(0xc5);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        // A frame is far below 4 GiB (the transport bounds it).
        out.push(0xc6);
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    }
    out.extend_from_slice(bytes);
}

/// A finished flow's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultRecord {
    /// `Flow::NAME`.
    pub flow: String,
    /// Client-supplied id, if any.
    pub client_id: Option<String>,
    /// The output (MessagePack) or the error.
    pub outcome: Result<serde_bytes::ByteBuf, FlowError>,
}

/// A flow the hospital keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HospitalRecord {
    /// Why it is here.
    pub error: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the node retries it on its own; `None`: waits for an operator.
    pub retry_at: Option<Timestamp>,
    /// When it was admitted.
    pub since: Timestamp,
    /// Held because this node had no code for the checkpoint (no flow of
    /// its `NAME`, or none with its fingerprint): a node opened later with
    /// that code frees it on its own. (Absent in older records: `false`.)
    #[serde(default)]
    pub awaits_code: bool,
}

/// `meta` key: present while the node is draining.
pub const META_DRAINING: &[u8] = b"draining";

/// A tombstone's value: when its session ended (milliseconds, the node's
/// clock), 8 bytes big-endian. Tombstones written before tombstones expired
/// are empty; the node dates them once (see `retention.rs`).
pub fn tombstone_value(ended_at: Timestamp) -> Vec<u8> {
    ended_at.0.to_be_bytes().to_vec()
}

/// Key of a tombstone in the expiry index: when its session ended, then
/// the session key (17 bytes), so the index is scanned oldest first.
pub fn tombstone_expiry_key(ended_at: Timestamp, session: SessionKey) -> Vec<u8> {
    let mut k = ended_at.0.to_be_bytes().to_vec();
    k.extend_from_slice(&session.bytes());
    k
}

/// Parses a session key's 9 bytes (`SessionKey::bytes`).
pub fn parse_session_key(k: &[u8]) -> Option<SessionKey> {
    let id = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let side = match k.get(8)? {
        0 => Side::Initiator,
        1 => Side::Responder,
        _ => return None,
    };
    (k.len() == 9).then_some(SessionKey {
        id: SessionId(id),
        side,
    })
}

/// Parses a [`tombstone_expiry_key`]: `None` for bytes this code never
/// writes.
pub fn parse_tombstone_expiry_key(k: &[u8]) -> Option<(Timestamp, SessionKey)> {
    let at = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    Some((Timestamp(at), parse_session_key(k.get(8..)?)?))
}

/// `meta` key: present once every tombstone has a date and an expiry
/// index row (databases written before tombstones expired have undated
/// ones, dated with the first commit after the upgrade).
pub const META_TOMBSTONES_DATED: &[u8] = b"tombstones-dated";

/// `meta` key prefix of a peer's count of live responder flows (followed
/// by the peer's 32-byte key; the value is the count, 4 bytes big-endian).
/// Kept as a counter row, changed in the same commit that starts or ends a
/// responder, so checking a peer's bound costs one read, not a scan.
pub const META_PEER_RESPONDERS: &[u8] = b"peer-responders/";

/// The `meta` key of `peer`'s live-responder count.
pub fn peer_responders_key(peer: &PublicKey) -> Vec<u8> {
    let mut k = META_PEER_RESPONDERS.to_vec();
    k.extend_from_slice(&peer.0);
    k
}

/// Reads a live-responder count row. A row that is not 4 bytes (never
/// written by this code) reads as 0 and is reported: the count is a bound,
/// and a damaged one must not stop the node.
pub fn decode_count(bytes: Option<&[u8]>) -> u32 {
    match bytes {
        None => 0,
        Some(b) => <[u8; 4]>::try_from(b)
            .map(u32::from_be_bytes)
            .unwrap_or_else(|_| {
                tracing::error!(
                    len = b.len(),
                    "a peer's responder count row is not 4 bytes; read as 0"
                );
                0
            }),
    }
}

/// `meta` key: the [`STORE_FORMAT`] that wrote the database, as 4 bytes,
/// big-endian. Written with the node's first commit (opening a database
/// commits nothing), so a database without it holds no node commit yet, or
/// predates the marker; both are read as the current format.
pub const META_FORMAT: &[u8] = b"format";

/// The version of the node's on-disk layout: its table names, key layouts
/// and the checkpoint record's encoding. Bump it with any change a node of
/// the previous version could misread, and teach `NodeCore::open` to migrate
/// or refuse older ones: a node refuses a database written by any other
/// format rather than misreading it.
pub const STORE_FORMAT: u32 = 1;

/// Reads the `meta` format row: `Ok(None)` when absent, `Err` with a
/// description when it is not 4 bytes.
pub fn decode_store_format(bytes: Option<&[u8]>) -> Result<Option<u32>, String> {
    match bytes {
        None => Ok(None),
        Some(b) => <[u8; 4]>::try_from(b).map(|b| Some(u32::from_be_bytes(b))).map_err(|_| {
            format!(
                "its `meta` table's format row is {} bytes, not 4 (the database is damaged or was written by something else)",
                b.len()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_record_encoded_from_borrowed_bytes_is_what_rmp_serde_writes() {
        let to = PublicKey([0xab; 32]);
        // Each length class of a byte string: bin 8, 16 and 32.
        for len in [0, 1, 200, 255, 256, 65_535, 65_536, 70_000] {
            let frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let ours = OutboxRecord::encode_borrowed(&to, &frame);
            let theirs = rmp_serde::to_vec(&OutboxRecord {
                to,
                frame: frame.clone(),
            })
            .expect("encodes");
            assert_eq!(ours, theirs, "frame of {len} bytes");
            let back: OutboxRecord = rmp_serde::from_slice(&ours).expect("decodes");
            assert_eq!((back.to, back.frame), (to, frame));
        }
    }

    fn full() -> CheckpointRecord {
        CheckpointRecord {
            flow: "finance::trade".into(),
            fingerprint: 0x0123_4567_89ab_cdef,
            version: 7,
            state: vec![1, 2, 3, 255],
            state_name: "AwaitSignature".into(),
            started: true,
            wait: Some(Wait::Receive(SessionId(42))),
            waiting_since: Timestamp(1_000),
            progress: vec!["Signing".into(), "Collecting".into()],
            sessions: vec![
                SessionKey {
                    id: SessionId(42),
                    side: Side::Initiator,
                },
                SessionKey {
                    id: SessionId(u64::MAX),
                    side: Side::Responder,
                },
            ],
            keep_result: true,
            client_id: Some("trade-1".into()),
            deadline: Some(Timestamp(301_000)),
        }
    }

    fn same(a: &CheckpointRecord, b: &CheckpointRecord) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn checkpoint_records_round_trip() {
        let rec = full();
        assert!(same(
            &CheckpointRecord::decode(&rec.encode()).unwrap(),
            &rec
        ));
        let bare = CheckpointRecord {
            wait: Some(Wait::Timer(Timestamp(9))),
            started: false,
            keep_result: false,
            client_id: None,
            deadline: None,
            progress: Vec::new(),
            sessions: Vec::new(),
            state: Vec::new(),
            ..full()
        };
        assert!(same(
            &CheckpointRecord::decode(&bare.encode()).unwrap(),
            &bare
        ));
        let none = CheckpointRecord {
            wait: None,
            ..full()
        };
        assert!(same(
            &CheckpointRecord::decode(&none.encode()).unwrap(),
            &none
        ));
        let summary = CheckpointSummary::decode(&rec.encode()).unwrap();
        assert_eq!(
            summary,
            CheckpointSummary {
                flow: "finance::trade".into(),
                state_name: "AwaitSignature".into(),
                state_bytes: 4,
            }
        );
    }

    #[test]
    fn damaged_checkpoint_bytes_are_errors_not_panics() {
        let bytes = full().encode();
        for cut in 0..bytes.len() {
            let err = CheckpointRecord::decode(&bytes[..cut]).unwrap_err();
            assert!(
                err.contains("ends inside") || err.contains("layout"),
                "{err}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            CheckpointRecord::decode(&longer)
                .unwrap_err()
                .contains("unexpected bytes")
        );
        let mut other_format = bytes.clone();
        other_format[0] = 99;
        assert!(
            CheckpointRecord::decode(&other_format)
                .unwrap_err()
                .contains("layout 99")
        );
        let mut huge_len = bytes;
        // The flow name's length (after the 31-byte header) claims 4 GiB.
        huge_len[31..35].copy_from_slice(&[0xff; 4]);
        assert!(CheckpointRecord::decode(&huge_len).is_err());
        // MessagePack (a layout this build does not read) is refused with a clear error.
        assert!(
            CheckpointRecord::decode(&[0x9c, 0xa3])
                .unwrap_err()
                .contains("layout")
        );
    }
}
