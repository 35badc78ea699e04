//! Operator views: the checkpoint dump (JSON), the hospital list, and the
//! long-wait warning, all read through an [`OperatorView`].
//!
//! Why a view of its own: these tools read the whole checkpoint table. On a
//! node with a million suspended flows that takes seconds, and the tokio
//! node must not stop committing steps meanwhile. The view holds only the
//! store handle and the registry, so it runs on another thread while the
//! node goes on.

use super::core::store_err;
use super::records::*;
use super::{NodeCore, NodeError, RunId};
use crate::registry::Registry;
use crate::store::{Store, Table};
use crate::{Timestamp, Wait};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One suspended flow as an operator sees it. Serializes to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointDump {
    /// The run id (hex).
    pub run_id: String,
    /// `Flow::NAME`, or why the checkpoint cannot be read.
    pub flow: String,
    /// The state variant it is suspended in.
    pub state: String,
    /// What it waits on, in words.
    pub waiting_on: String,
    /// For how long, in milliseconds.
    pub waiting_for_ms: u64,
    /// Its sessions.
    pub sessions: Vec<SessionDump>,
    /// Its progress path (outermost step first).
    pub progress: Vec<String>,
    /// `None` if healthy; otherwise the hospital's record.
    pub hospital: Option<HospitalEntry>,
}

/// One session of a dumped flow.
#[derive(Debug, Clone, Serialize)]
pub struct SessionDump {
    /// Session id (hex).
    pub id: String,
    /// Whether this flow initiated it.
    pub initiator: bool,
    /// The counterparty's name.
    pub counterparty: String,
    /// The flow that opened it.
    pub initiating_flow: String,
    /// Next sequence numbers.
    pub next_send: u64,
    /// Next message the flow will consume.
    pub next_receive: u64,
    /// Received, not yet consumed.
    pub buffered: usize,
    /// Whether the counterparty has ended.
    pub counterparty_ended: bool,
}

/// A flow's stored state as JSON (its variant and fields by name), or why
/// it cannot be shown.
pub type StateFields = Result<serde_json::Value, String>;

/// A flow kept by the hospital.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HospitalEntry {
    /// The run.
    pub run_id: RunId,
    /// Why.
    pub error: String,
    /// Failed attempts.
    pub attempts: u32,
    /// When the node retries on its own; `None`: waits for an operator's
    /// `retry` or `kill`.
    pub retry_at: Option<Timestamp>,
}

/// A read-only view of a node's database for operator tools: the dump, the
/// hospital list and the long-wait check. Made by
/// [`NodeCore::operator_view`]; cheap to make (two handles) and `Send`, so
/// it can run on another thread while the node keeps committing.
///
/// Each read sees everything committed before it. A whole dump or scan is
/// not one snapshot: a flow that steps while it runs shows the state it had
/// when the scan reached it.
#[derive(Clone)]
pub struct OperatorView {
    store: Arc<dyn Store>,
    registry: Registry,
    /// Set by the node when it stops: a scan still running ends at its next
    /// chunk, so it does not keep the database open after the node.
    stop: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for OperatorView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorView").finish_non_exhaustive()
    }
}

impl NodeCore {
    /// A view of this node's database for operator tools, to run apart from
    /// the node (see [`OperatorView`]).
    pub fn operator_view(&self) -> OperatorView {
        let store = self.operator_store.as_ref().unwrap_or(&self.store).clone();
        OperatorView::new(store, self.registry.clone())
    }

    /// [`OperatorView::dump`] of this node.
    pub fn dump(&self, now: Timestamp) -> Result<Vec<CheckpointDump>, NodeError> {
        self.operator_view().dump(now)
    }

    /// [`OperatorView::dump_json`] of this node.
    pub fn dump_json(&self, now: Timestamp) -> Result<String, NodeError> {
        self.operator_view().dump_json(now)
    }

    /// [`OperatorView::hospital`] of this node.
    pub fn hospital(&self) -> Result<Vec<HospitalEntry>, NodeError> {
        self.operator_view().hospital()
    }

    /// [`OperatorView::warn_long_waits`] of this node.
    pub fn warn_long_waits(
        &self,
        now: Timestamp,
        limit: Duration,
    ) -> Result<Vec<RunId>, NodeError> {
        self.operator_view().warn_long_waits(now, limit)
    }
}

impl OperatorView {
    pub(super) fn new(store: Arc<dyn Store>, registry: Registry) -> Self {
        Self {
            store,
            registry,
            stop: None,
        }
    }

    /// This view, made to stop reading early once `stop` is set: a scan
    /// then returns what it read so far.
    pub(crate) fn stopping_on(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// Every flow with a checkpoint, for operators. Reads the whole
    /// checkpoint table: an operator tool, not for hot paths.
    pub fn dump(&self, now: Timestamp) -> Result<Vec<CheckpointDump>, NodeError> {
        let mut out = Vec::new();
        let mut error = None;
        self.for_each_checkpoint(|run, rec| {
            if error.is_none()
                && let Err(e) = self.dump_one(now, run, rec, &mut out)
            {
                error = Some(e);
            }
        })?;
        match error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    fn dump_one(
        &self,
        now: Timestamp,
        run: u64,
        rec: Result<CheckpointRecord, String>,
        out: &mut Vec<CheckpointDump>,
    ) -> Result<(), NodeError> {
        let hospital = self.hospital_record(run)?.map(|h| HospitalEntry {
            run_id: RunId(run),
            error: h.error,
            attempts: h.attempts,
            retry_at: h.retry_at,
        });
        let rec = match rec {
            Ok(rec) => rec,
            Err(e) => {
                out.push(CheckpointDump {
                    run_id: RunId(run).to_string(),
                    flow: format!("<checkpoint {e}>"),
                    state: String::new(),
                    waiting_on: String::new(),
                    waiting_for_ms: 0,
                    sessions: Vec::new(),
                    progress: Vec::new(),
                    hospital,
                });
                return Ok(());
            }
        };
        let state = self
            .registry
            .resuming(&rec.flow, rec.fingerprint, rec.version)
            .and_then(|t| t.state_name(&rec.state))
            .map(str::to_owned)
            .unwrap_or_else(|| rec.state_name.clone());
        let waiting_on = match (&rec.wait, rec.started) {
            (_, false) => "its first step".to_owned(),
            (Some(Wait::Receive(s)), _) => format!("a message on session {s}"),
            (Some(Wait::Timer(t)), _) => format!("a timer at {} ms", t.0),
            (None, _) => "nothing".to_owned(),
        };
        let sessions = rec
            .sessions
            .iter()
            .map(|k: &SessionKey| {
                let s = self.session_record(*k);
                SessionDump {
                    id: k.id.to_string(),
                    initiator: k.side == Side::Initiator,
                    counterparty: s
                        .as_ref()
                        .map_or_else(|| "<ended>".into(), |s| s.counterparty.to_string()),
                    initiating_flow: s
                        .as_ref()
                        .map_or_else(String::new, |s| s.initiating_flow.clone()),
                    next_send: s.as_ref().map_or(0, |s| s.next_send),
                    next_receive: s.as_ref().map_or(0, |s| s.next_consume),
                    buffered: s.as_ref().map_or(0, |s| s.inbox.len()),
                    counterparty_ended: s.as_ref().is_none_or(|s| s.peer_ended()),
                }
            })
            .collect();
        out.push(CheckpointDump {
            run_id: RunId(run).to_string(),
            flow: rec.flow,
            state,
            waiting_on,
            waiting_for_ms: now.0.saturating_sub(rec.waiting_since.0),
            sessions,
            progress: rec.progress,
            hospital,
        });
        Ok(())
    }

    /// One flow as [`dump`](Self::dump) shows it, and its stored state as
    /// JSON (variant and fields by name; `Err` says why it cannot be
    /// shown, e.g. its type is not registered). `None` if the run has no
    /// checkpoint (finished, killed, or never started). Reads two or three
    /// rows: cheap, unlike a dump.
    pub fn show(
        &self,
        now: Timestamp,
        run: RunId,
    ) -> Result<Option<(CheckpointDump, StateFields)>, NodeError> {
        let Some(bytes) = self
            .store
            .get(&Table::CHECKPOINTS, &run_key(run.0))
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        let rec = CheckpointRecord::decode(&bytes).map_err(|e| format!("does not decode: {e}"));
        let fields = match &rec {
            Ok(rec) => match self.registry.flow(&rec.flow) {
                Some(t) => t.state_json(&rec.state),
                None => Err(format!(
                    "the flow `{}` is not registered on this node",
                    rec.flow
                )),
            },
            Err(e) => Err(format!("the checkpoint {e}")),
        };
        let mut out = Vec::with_capacity(1);
        self.dump_one(now, run.0, rec, &mut out)?;
        Ok(out.pop().map(|dump| (dump, fields)))
    }

    /// The output of a finished run of the flow type `flow` as JSON, if
    /// that type is registered here.
    pub fn output_json(
        &self,
        flow: &str,
        output: &[u8],
    ) -> Option<Result<serde_json::Value, String>> {
        self.registry.flow(flow).map(|t| t.output_json(output))
    }

    /// The state graph of the flow type registered last under `flow`, if
    /// that name is registered here (see [`crate::graph`]).
    pub fn state_graph(&self, flow: &str) -> Option<&'static crate::graph::StateGraph> {
        self.registry.flow(flow).and_then(|t| t.state_graph())
    }

    /// Every flow type registered here: name, version and full
    /// fingerprint, sorted by name then registration.
    pub fn flow_types(&self) -> Vec<(&'static str, u32, u64)> {
        self.registry
            .names()
            .flat_map(|name| self.registry.versions(name))
            .map(|t| (t.name(), t.version(), t.fingerprint()))
            .collect()
    }

    /// The dump as pretty JSON.
    pub fn dump_json(&self, now: Timestamp) -> Result<String, NodeError> {
        serde_json::to_string_pretty(&self.dump(now)?)
            .map_err(|e| NodeError::Store(format!("cannot render the dump: {e}")))
    }

    /// Every flow in the hospital.
    pub fn hospital(&self) -> Result<Vec<HospitalEntry>, NodeError> {
        Ok(self
            .hospital_records()?
            .into_iter()
            .map(|(run, h)| HospitalEntry {
                run_id: RunId(run),
                error: h.error,
                attempts: h.attempts,
                retry_at: h.retry_at,
            })
            .collect())
    }

    /// Logs a warning for every flow waiting longer than `limit`; returns
    /// their run ids. Scans all checkpoints: call it every few minutes (the
    /// tokio node does, off its driver), not per step.
    pub fn warn_long_waits(
        &self,
        now: Timestamp,
        limit: Duration,
    ) -> Result<Vec<RunId>, NodeError> {
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let mut slow = Vec::new();
        self.for_each_checkpoint(|run, rec| {
            let Ok(rec) = rec else { return };
            let waited = now.0.saturating_sub(rec.waiting_since.0);
            if waited > limit {
                tracing::warn!(
                    run = %RunId(run),
                    flow = %rec.flow,
                    state = %rec.state_name,
                    wait = ?rec.wait,
                    "flow has been waiting for {waited} ms"
                );
                slow.push(RunId(run));
            }
        })?;
        Ok(slow)
    }

    /// Calls `f` for every checkpoint, in run-id order, with the record or
    /// why it does not decode. Reads the table in chunks, so memory stays
    /// small however many flows are suspended.
    fn for_each_checkpoint(
        &self,
        mut f: impl FnMut(u64, Result<CheckpointRecord, String>),
    ) -> Result<(), NodeError> {
        const CHUNK: usize = 1024;
        let mut from: Vec<u8> = Vec::new();
        loop {
            let chunk = self
                .store
                .range(&Table::CHECKPOINTS, &from, None, CHUNK)
                .map_err(store_err)?;
            let done = chunk.len() < CHUNK;
            if let Some((last, _)) = chunk.last() {
                // The smallest key after `last`.
                from = last.clone();
                from.push(0);
            }
            for (k, v) in chunk {
                if let Some(run) = parse_run_key(&k) {
                    f(
                        run,
                        CheckpointRecord::decode(&v).map_err(|e| format!("does not decode: {e}")),
                    );
                }
            }
            if done || self.stopped() {
                return Ok(());
            }
        }
    }

    /// The hospital's record of `run`, if it is there.
    fn hospital_record(&self, run: u64) -> Result<Option<HospitalRecord>, NodeError> {
        Ok(self
            .store
            .get(&Table::HOSPITAL, &run_key(run))
            .map_err(store_err)?
            .and_then(|v| rmp_serde::from_slice(&v).ok()))
    }

    /// Every hospitalised run.
    fn hospital_records(&self) -> Result<Vec<(u64, HospitalRecord)>, NodeError> {
        Ok(self
            .store
            .range(&Table::HOSPITAL, &[], None, usize::MAX)
            .map_err(store_err)?
            .into_iter()
            .filter_map(|(k, v)| Some((parse_run_key(&k)?, rmp_serde::from_slice(&v).ok()?)))
            .collect())
    }

    /// A session record, for dumps.
    fn session_record(&self, key: SessionKey) -> Option<SessionRecord> {
        self.store
            .get(&Table::SESSIONS, &key.bytes())
            .ok()
            .flatten()
            .and_then(|v| rmp_serde::from_slice(&v).ok())
    }
}
