//! Running one flow step on a [`NodeCore`] and applying its effects to the
//! batch: the checks before a step (hospital, checkpoint, registered code of
//! the same shape), the step itself inside `catch_unwind`, then its sends,
//! new sessions, started flows and new checkpoint — or the end of the run
//! and the notice to its counterparties; and the hospital for what failed.

use super::batch::{Batch, Loaded};
use super::core::{NodeCore, encode, store_err};
use super::records::*;
use super::{NodeError, RunId};
use crate::context::SessionPeer;
use crate::protocol::{Body, WireMessage};
use crate::registry::{ErasedStep, FlowType, NewFlow};
use crate::store::Table;
use crate::{Event, FlowError, FlowErrorKind, PublicKey, SessionId, StepEffects, Wait};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// What a runnable flow is woken with, and what that consumes.
pub(super) struct Wake {
    event: Event,
    consumes: Option<(SessionKey, u64)>,
}

impl NodeCore {
    pub(super) fn create_run(
        &mut self,
        b: &mut Batch,
        run: u64,
        flow: NewFlow,
        sessions: Vec<SessionKey>,
        keep_result: bool,
        client_id: Option<String>,
    ) {
        let t = &flow.flow_type;
        b.put_checkpoint(
            run,
            Box::new(CheckpointRecord {
                flow: t.name().to_owned(),
                fingerprint: t.fingerprint(),
                version: t.version(),
                state_name: t.state_name(&flow.state).unwrap_or("?").to_owned(),
                state: flow.state,
                started: false,
                wait: None,
                waiting_since: self.now,
                progress: Vec::new(),
                sessions,
                keep_result,
                client_id,
                deadline: None,
            }),
        );
        self.wake(b, run);
    }

    pub(super) fn hospitalize(
        &mut self,
        b: &mut Batch,
        run: u64,
        error: String,
        transient: bool,
    ) -> Result<(), NodeError> {
        self.admit(b, run, error, transient, false)
    }

    /// Holds `run` because this node has no code for its checkpoint; it is
    /// freed when the node is next opened with that code (see
    /// `NodeCore::open`).
    pub(super) fn hold_for_code(
        &mut self,
        b: &mut Batch,
        run: u64,
        error: String,
    ) -> Result<(), NodeError> {
        self.admit(b, run, error, false, true)
    }

    fn admit(
        &mut self,
        b: &mut Batch,
        run: u64,
        error: String,
        transient: bool,
        awaits_code: bool,
    ) -> Result<(), NodeError> {
        let previous: Option<HospitalRecord> = b
            .get(&*self.store, &Table::HOSPITAL, &run_key(run))
            .map_err(store_err)?
            .and_then(|v| rmp_serde::from_slice(&v).ok());
        let attempts = previous.as_ref().map_or(0, |p| p.attempts) + 1;
        let retry_at = if transient && attempts <= self.config.max_transient_retries {
            let factor = 1u32 << (attempts - 1).min(16);
            Some(self.now.after(self.config.retry_backoff * factor))
        } else {
            None
        };
        match retry_at {
            Some(t) => {
                tracing::warn!(run = %RunId(run), attempt = attempts, "flow failed transiently, retrying from its last checkpoint at {}: {error}", t.0);
                b.add_timer(&*self.store, t, run).map_err(store_err)?;
            }
            None => {
                tracing::error!(run = %RunId(run), "flow kept in the hospital for an operator (retry or kill): {error}")
            }
        }
        let rec = HospitalRecord {
            error,
            attempts,
            retry_at,
            since: previous.map_or(self.now, |p| p.since),
            awaits_code,
        };
        b.put(Table::HOSPITAL, run_key(run), encode(&rec));
        b.set_runnable(run, false);
        Ok(())
    }

    /// What `rec` is woken with now, if anything.
    pub(super) fn next_event(
        &self,
        b: &mut Batch,
        rec: &CheckpointRecord,
    ) -> Result<Option<Wake>, NodeError> {
        if !rec.started {
            return Ok(Some(Wake {
                event: Event::Start,
                consumes: None,
            }));
        }
        match &rec.wait {
            Some(Wait::Timer(t)) => Ok((*t <= self.now).then_some(Wake {
                event: Event::Timer,
                consumes: None,
            })),
            Some(Wait::Receive(sid)) => {
                let Some(key) = rec.sessions.iter().find(|k| k.id == *sid).copied() else {
                    return Ok(Some(Wake {
                        event: Event::SessionEnded {
                            session: *sid,
                            error: FlowError::internal(format!(
                                "the flow waits on session {sid}, which it does not own"
                            )),
                        },
                        consumes: None,
                    }));
                };
                let Some(s) = b.session_ref(&*self.store, key).map_err(store_err)? else {
                    return Ok(Some(Wake {
                        event: Event::SessionEnded {
                            session: *sid,
                            error: FlowError::counterparty_ended(),
                        },
                        consumes: None,
                    }));
                };
                if let Some(item) = s.inbox.get(&s.next_consume) {
                    let event = match item {
                        Inbound::Data(p) => Event::Message {
                            session: *sid,
                            payload: p.clone(),
                        },
                        Inbound::End(e) => Event::SessionEnded {
                            session: *sid,
                            error: e.clone().unwrap_or_else(FlowError::counterparty_ended),
                        },
                    };
                    return Ok(Some(Wake {
                        event,
                        consumes: Some((key, s.next_consume)),
                    }));
                }
                if let Some(error) = s.ended.clone() {
                    return Ok(Some(Wake {
                        event: Event::SessionEnded {
                            session: *sid,
                            error,
                        },
                        consumes: None,
                    }));
                }
                // Nothing came: past the run's deadline the receive fails.
                Ok(rec.deadline.filter(|d| *d <= self.now).map(|d| Wake {
                    event: Event::SessionEnded {
                        session: *sid,
                        error: FlowError::new(format!(
                            "no message arrived on session {sid} by the flow's deadline ({} ms): the counterparty went silent",
                            d.0
                        )),
                    },
                    consumes: None,
                }))
            }
            None => Ok(Some(Wake {
                // A suspended flow always registers a wait; a record without
                // one can only come from a foreign writer.
                event: Event::SessionEnded {
                    session: SessionId(0),
                    error: FlowError::internal("the checkpoint records no wait"),
                },
                consumes: None,
            })),
        }
    }

    /// Whether [`next_event`](Self::next_event) would wake `rec` now,
    /// without building the event (no copy of a buffered message): asked
    /// after every step.
    fn wakes_now(&self, b: &mut Batch, rec: &CheckpointRecord) -> Result<bool, NodeError> {
        if !rec.started {
            return Ok(true);
        }
        match &rec.wait {
            Some(Wait::Timer(t)) => Ok(*t <= self.now),
            Some(Wait::Receive(sid)) => {
                let Some(key) = rec.sessions.iter().find(|k| k.id == *sid).copied() else {
                    return Ok(true);
                };
                let Some(s) = b.session_ref(&*self.store, key).map_err(store_err)? else {
                    return Ok(true);
                };
                Ok(s.inbox.contains_key(&s.next_consume)
                    || s.ended.is_some()
                    || rec.deadline.is_some_and(|d| d <= self.now))
            }
            None => Ok(true),
        }
    }

    pub(super) fn try_run(&mut self, b: &mut Batch, run: u64) -> Result<(), NodeError> {
        let in_hospital = match b.hospital(&*self.store, run).map_err(store_err)? {
            None => false,
            Some(h) => {
                let due = rmp_serde::from_slice::<HospitalRecord>(&h)
                    .ok()
                    .and_then(|h| h.retry_at)
                    .is_some_and(|t| t <= self.now);
                if !due {
                    b.set_runnable(run, false);
                    return Ok(());
                }
                true
            }
        };
        let rec = match b.checkpoint(&*self.store, run).map_err(store_err)? {
            None => {
                b.set_runnable(run, false);
                return Ok(());
            }
            Some(Loaded::Corrupt(e)) => return self.hospitalize(b, run, e, false),
            Some(Loaded::Ok(rec)) => rec,
        };
        let Some(wake) = self.next_event(b, &rec)? else {
            b.set_runnable(run, false);
            return Ok(());
        };
        let (rec, flow_type) = match self.code_for(rec) {
            Ok(found) => found,
            Err(why) => return self.hold_for_code(b, run, why),
        };
        self.step(b, run, rec, flow_type, wake, in_hospital)
    }

    /// The code that runs `rec`: a registered migration first (the record
    /// then carries the migrated state and the new code's identity, and
    /// the step that follows commits both), else the code whose
    /// fingerprint wrote it. `Err` says why neither is possible: a
    /// migration refused the state, or the node has no such code.
    fn code_for(
        &self,
        mut rec: Box<CheckpointRecord>,
    ) -> Result<(Box<CheckpointRecord>, Arc<dyn FlowType>), String> {
        match self
            .registry
            .migrate(&rec.flow, rec.version, rec.fingerprint, &rec.state)
        {
            Some(Ok(migrated)) => {
                let t = &migrated.flow_type;
                tracing::info!(
                    flow = %rec.flow,
                    "checkpoint migrated from version {} (fingerprint {:016x}) to version {} (fingerprint {:016x})",
                    rec.version, rec.fingerprint, t.version(), t.fingerprint()
                );
                rec.flow = t.name().to_owned();
                rec.version = t.version();
                rec.fingerprint = t.fingerprint();
                rec.state_name = t.state_name(&migrated.state).unwrap_or("?").to_owned();
                rec.state = migrated.state;
                Ok((rec, migrated.flow_type))
            }
            Some(Err(why)) => Err(why),
            None => match self
                .registry
                .resuming(&rec.flow, rec.fingerprint, rec.version)
            {
                Some(t) => Ok((rec, t)),
                None => {
                    Err(self
                        .registry
                        .why_not_resumable(&rec.flow, rec.fingerprint, rec.version))
                }
            },
        }
    }

    pub(super) fn step(
        &mut self,
        b: &mut Batch,
        run: u64,
        mut rec: Box<CheckpointRecord>,
        flow_type: Arc<dyn FlowType>,
        wake: Wake,
        in_hospital: bool,
    ) -> Result<(), NodeError> {
        b.steps += 1;
        self.ctx.set_now(self.now);
        self.ctx.set_draining(self.draining);
        // Who is at the other end of each of the flow's sessions, for
        // `session.counterparty()` and `counterparty_version()`.
        let mut peers = Vec::with_capacity(rec.sessions.len());
        for key in &rec.sessions {
            if let Some(s) = b.session_ref(&*self.store, *key).map_err(store_err)? {
                peers.push(SessionPeer {
                    session: key.id,
                    party: s.counterparty.clone(),
                    version: s.counterparty_version,
                });
            }
        }
        let effects = StepEffects {
            progress: rec.progress.clone(),
            deadline: rec.deadline,
            peers,
            ..StepEffects::default()
        };
        let ctx = &mut self.ctx;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            flow_type.step(&rec.state, ctx, wake.event, effects)
        }));
        let (erased, effects) = match outcome {
            Err(panic) => {
                self.discard_step_writes();
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                tracing::error!(run = %RunId(run), flow = %rec.flow, "flow panicked: {msg}");
                let error = FlowError::internal(format!("flow `{}` panicked: {msg}", rec.flow));
                self.end_run(b, run, &rec, Err(error), None);
                return Ok(());
            }
            Ok(Err(decode)) => {
                self.discard_step_writes();
                return self.hospitalize(b, run, decode, false);
            }
            Ok(Ok(r)) => r,
        };
        if let ErasedStep::Done(Err(e)) = &erased
            && e.kind() == FlowErrorKind::Transient
        {
            self.discard_step_writes();
            return self.hospitalize(b, run, e.message().to_owned(), true);
        }
        // Every send must be on a session this run owns or just opened.
        let opened: Vec<SessionKey> = effects
            .opened
            .iter()
            .map(|o| SessionKey {
                id: o.id,
                side: Side::Initiator,
            })
            .collect();
        let owns = |id: SessionId| {
            rec.sessions
                .iter()
                .chain(&opened)
                .find(|k| k.id == id)
                .copied()
        };
        if let Some(bad) = effects.sends.iter().find(|m| owns(m.session).is_none()) {
            self.discard_step_writes();
            let e = FlowError::internal(format!(
                "flow `{}` sent on session {}, which it does not own",
                rec.flow, bad.session
            ));
            tracing::error!(run = %RunId(run), "{}", e.message());
            self.end_run(b, run, &rec, Err(e), None);
            return Ok(());
        }
        if let Some(w) = self.ctx.node_writes() {
            w.keep_step();
        }
        if in_hospital {
            b.delete(Table::HOSPITAL, run_key(run));
        }
        // The consumed message.
        if let Some((key, seq)) = wake.consumes
            && let Some(s) = b.session_mut(&*self.store, key).map_err(store_err)?
        {
            if let Some(Inbound::End(e)) = s.inbox.remove(&seq) {
                s.ended = Some(e.unwrap_or_else(FlowError::counterparty_ended));
            }
            s.next_consume = seq + 1;
        }
        // New sessions: their Init goes first.
        for o in &effects.opened {
            let key = SessionKey {
                id: o.id,
                side: Side::Initiator,
            };
            b.put_session(
                key,
                SessionRecord {
                    run,
                    counterparty: o.counterparty.clone(),
                    initiating_flow: o.initiating_flow.to_owned(),
                    next_send: 1,
                    next_consume: 0,
                    inbox: Default::default(),
                    ended: None,
                    counterparty_version: None,
                    own_version: None,
                },
            );
            rec.sessions.push(key);
            let init = WireMessage::Session {
                session: o.id.0,
                from_initiator: true,
                seq: 0,
                body: Body::Init {
                    flow: o.initiating_flow.to_owned(),
                    version: o.initiating_version,
                    initiator: self.identity.clone(),
                    created_at: Some(self.now.0),
                },
            };
            self.send_sequenced(b, key, 0, o.counterparty.key(), &init);
        }
        for m in effects.sends {
            let Some(key) = rec.sessions.iter().find(|k| k.id == m.session).copied() else {
                continue; // checked above
            };
            match b.session_ref(&*self.store, key).map_err(store_err)? {
                None => continue,
                Some(s) if s.peer_ended() => {
                    tracing::debug!(session = %key.id, "message to a counterparty that has ended dropped");
                    continue;
                }
                Some(_) => {}
            }
            let Some(s) = b.session_mut(&*self.store, key).map_err(store_err)? else {
                continue;
            };
            let seq = s.next_send;
            s.next_send += 1;
            let to = *s.counterparty.key();
            let msg = WireMessage::Session {
                session: key.id.0,
                from_initiator: key.side == Side::Initiator,
                seq,
                body: Body::Data(m.payload),
            };
            self.send_sequenced(b, key, seq, &to, &msg);
        }
        for f in effects.started {
            let new_run = self.fresh_run_id()?;
            self.registry.insert_type(f.flow_type.clone());
            self.create_run(b, new_run, f, Vec::new(), false, None);
        }
        match erased {
            ErasedStep::Suspended { state, state_name } => {
                let Some(wait) = effects.wait else {
                    let e = FlowError::internal(format!(
                        "flow `{}` suspended in state {state_name} without waiting on anything",
                        rec.flow
                    ));
                    self.end_run(b, run, &rec, Err(e), None);
                    return Ok(());
                };
                if rec.progress != effects.progress {
                    b.progress.push((run, effects.progress.clone()));
                }
                if let Wait::Timer(t) = wait {
                    b.add_timer(&*self.store, t, run).map_err(store_err)?;
                }
                if rec.deadline != effects.deadline {
                    if let Some(old) = rec.deadline {
                        b.remove_timer(&*self.store, old, run).map_err(store_err)?;
                    }
                    if let Some(new) = effects.deadline {
                        b.add_timer(&*self.store, new, run).map_err(store_err)?;
                    }
                    rec.deadline = effects.deadline;
                }
                rec.state = state;
                if rec.state_name != state_name {
                    rec.state_name = state_name.to_owned();
                }
                rec.started = true;
                rec.wait = Some(wait);
                rec.waiting_since = self.now;
                rec.progress = effects.progress;
                // It may be runnable at once (a message already buffered, a
                // zero sleep): then it runs again in this batch.
                let wakes = self.wakes_now(b, &rec)?;
                debug_assert_eq!(
                    wakes,
                    self.next_event(b, &rec)?.is_some(),
                    "wakes_now disagrees with next_event"
                );
                if wakes {
                    self.wake(b, run);
                } else {
                    b.set_runnable(run, false);
                }
                b.put_checkpoint(run, rec);
            }
            ErasedStep::Done(result) => {
                let to_peers = match &result {
                    Err(e) if e.kind() != FlowErrorKind::Internal => Some(e.clone()),
                    _ => None,
                };
                self.end_run(b, run, &rec, result, to_peers);
            }
        }
        Ok(())
    }

    pub(super) fn discard_step_writes(&mut self) {
        if let Some(w) = self.ctx.node_writes() {
            w.discard_step();
        }
    }

    pub(super) fn send_sequenced(
        &self,
        b: &mut Batch,
        key: SessionKey,
        seq: u64,
        to: &PublicKey,
        msg: &WireMessage,
    ) {
        match msg.encode() {
            Ok(frame) => {
                b.put(
                    Table::OUTBOX,
                    outbox_key(key, seq),
                    OutboxRecord::encode_borrowed(to, &frame),
                );
                b.emit.push((*to, frame));
            }
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// Ends `run`: tells every counterparty still there (`to_peers`, or the
    /// generic "counterparty ended"), removes its checkpoint, sessions and
    /// timers, and keeps its outcome if a client wants it.
    pub(super) fn end_run(
        &mut self,
        b: &mut Batch,
        run: u64,
        rec: &CheckpointRecord,
        outcome: Result<Vec<u8>, FlowError>,
        to_peers: Option<FlowError>,
    ) {
        for key in &rec.sessions {
            let s = match b.session(&*self.store, *key) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{e}");
                    None
                }
            };
            if let Some(s) = &s
                && !s.peer_ended()
            {
                let msg = WireMessage::Session {
                    session: key.id.0,
                    from_initiator: key.side == Side::Initiator,
                    seq: s.next_send,
                    body: Body::End(to_peers.clone()),
                };
                self.send_sequenced(b, *key, s.next_send, s.counterparty.key(), &msg);
            }
            if let Some(s) = &s
                && key.side == Side::Responder
            {
                self.count_responder_ended(b, s.counterparty.key());
            }
            b.delete_session(*key);
            b.put(Table::TOMBSTONES, key.bytes(), tombstone_value(self.now));
            b.put(
                Table::TOMBSTONE_EXPIRY,
                tombstone_expiry_key(self.now, *key),
                Vec::new(),
            );
        }
        // (A timer left behind would only wake a run that is gone, which
        // does nothing: a failed read here is logged, not fatal.)
        if let Some(Wait::Timer(t)) = rec.wait
            && let Err(e) = b.remove_timer(&*self.store, t, run)
        {
            tracing::error!("{e}");
        }
        if let Some(t) = rec.deadline
            && let Err(e) = b.remove_timer(&*self.store, t, run)
        {
            tracing::error!("{e}");
        }
        if let Ok(Some(h)) = b.get(&*self.store, &Table::HOSPITAL, &run_key(run)) {
            if let Some(t) = rmp_serde::from_slice::<HospitalRecord>(&h)
                .ok()
                .and_then(|h| h.retry_at)
                && let Err(e) = b.remove_timer(&*self.store, t, run)
            {
                tracing::error!("{e}");
            }
            b.delete(Table::HOSPITAL, run_key(run));
        }
        b.set_runnable(run, false);
        b.delete_checkpoint(run);
        match &outcome {
            Ok(_) => tracing::debug!(run = %RunId(run), flow = %rec.flow, "flow finished"),
            Err(e) => {
                tracing::info!(run = %RunId(run), flow = %rec.flow, "flow ended with an error: {e}")
            }
        }
        if rec.keep_result {
            self.store_result(b, run, &rec.flow, rec.client_id.clone(), outcome);
        } else {
            b.finished.push((run, rec.flow.clone(), outcome));
        }
    }

    /// Takes one from `peer`'s count of live responders (see
    /// [`NodeConfig::max_responders_per_peer`](super::NodeConfig)).
    fn count_responder_ended(&self, b: &mut Batch, peer: &PublicKey) {
        let key = peer_responders_key(peer);
        match b.get(&*self.store, &Table::META, &key) {
            Ok(row) => {
                // Responders started before the count existed were never
                // counted: the count never goes below zero.
                let left = decode_count(row.as_deref()).saturating_sub(1);
                if left == 0 {
                    b.delete(Table::META, key);
                } else {
                    b.put(Table::META, key, left.to_be_bytes().to_vec());
                }
            }
            Err(e) => tracing::error!("{e}"),
        }
    }

    pub(super) fn store_result(
        &self,
        b: &mut Batch,
        run: u64,
        flow: &str,
        client_id: Option<String>,
        outcome: Result<Vec<u8>, FlowError>,
    ) {
        let rec = ResultRecord {
            flow: flow.to_owned(),
            client_id,
            outcome: outcome.clone().map(serde_bytes::ByteBuf::from),
        };
        b.put(Table::RESULTS, run_key(run), encode(&rec));
        b.progress
            .push((run, vec![crate::progress::ProgressTracker::DONE.to_owned()]));
        b.finished.push((run, flow.to_owned(), outcome));
    }
}
