//! What the node stores, record by record, and how keys are laid out.
//!
//! Records are MessagePack (rmp-serde); numeric keys are big-endian so that
//! byte order is numeric order (timers are scanned by due time).

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

/// A suspended (or not yet started) flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// `Flow::NAME`.
    pub flow: String,
    /// `Flow::FINGERPRINT` of the code that wrote the state.
    pub fingerprint: u64,
    /// `Flow::VERSION` of that code.
    pub version: u32,
    /// The state machine, MessagePack.
    #[serde(with = "serde_bytes")]
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
}

/// `meta` key: present while the node is draining.
pub const META_DRAINING: &[u8] = b"draining";
