//! Operator and client actions on a [`NodeCore`]: starting flows (one or
//! many per commit), reading and forgetting results, killing and retrying
//! flows, draining. Each is one group commit through the engine's batch.

use super::batch::Loaded;
use super::core::{NodeCore, store_err};
use super::records::*;
use super::{NodeError, Output, RunId};
use crate::registry::NewFlow;
use crate::store::Table;
use crate::{FlowError, FlowErrorKind, SessionId, Timestamp};
use std::collections::{HashMap, HashSet};

impl NodeCore {
    /// Creates a flow and commits it (its first step runs in the next
    /// operation). With a `client_id` already used, returns that run and
    /// starts nothing. The same as [`start_many`](Self::start_many) with one
    /// flow.
    pub fn start(
        &mut self,
        now: Timestamp,
        flow: NewFlow,
        client_id: Option<String>,
    ) -> Result<(RunId, Output), NodeError> {
        let (runs, out) = self.start_many(now, vec![(flow, client_id)])?;
        match runs.as_slice() {
            [run] => Ok((*run, out)),
            _ => Err(NodeError::Store(format!(
                "internal error: starting one flow gave {} runs (report this bug)",
                runs.len()
            ))),
        }
    }

    /// Creates all `flows` in ONE commit (their first steps run in the next
    /// operation) and returns their runs in the order given. Why: every
    /// commit costs the disk two fsyncs, so a client with many flows to
    /// start pays for one instead of one per flow. Per flow it means exactly
    /// [`start`](Self::start): a `client_id` already used — before, or
    /// earlier in this same call — gives that run and starts nothing; while
    /// draining each new flow is finished at once with a `Refused` error.
    /// On `Err` none of them was started (retrying with client ids is safe).
    pub fn start_many(
        &mut self,
        now: Timestamp,
        flows: Vec<(NewFlow, Option<String>)>,
    ) -> Result<(Vec<RunId>, Output), NodeError> {
        let mut runs = Vec::with_capacity(flows.len());
        let mut new_runs = Vec::with_capacity(flows.len());
        // Client ids given a run by this call (not yet in the store).
        let mut claimed: HashMap<String, u64> = HashMap::new();
        let mut taken: HashSet<u64> = HashSet::new();
        for (flow, client_id) in flows {
            if let Some(id) = &client_id {
                if let Some(&run) = claimed.get(id) {
                    runs.push(RunId(run));
                    continue;
                }
                if let Some(run) = self.run_for_client_id(id)? {
                    runs.push(run);
                    continue;
                }
            }
            self.registry.insert_type(flow.flow_type.clone());
            // Random ids: one already given out in this call is not in the
            // store yet, so check it here.
            let mut run = self.fresh_run_id()?;
            while !taken.insert(run) {
                run = self.fresh_run_id()?;
            }
            if let Some(id) = &client_id {
                claimed.insert(id.clone(), run);
            }
            runs.push(RunId(run));
            new_runs.push((run, flow, client_id));
        }
        if new_runs.is_empty() {
            return Ok((runs, Output::default()));
        }
        let draining = self.draining;
        let out = self.batch_inner(now, false, |core, b| {
            for (run, flow, client_id) in new_runs {
                if let Some(id) = &client_id {
                    b.put(Table::CLIENT_IDS, id.as_bytes().to_vec(), run_key(run));
                }
                if draining {
                    let err = FlowError::with_kind(
                        FlowErrorKind::Refused,
                        format!(
                            "cannot start `{}`: the node is draining (it takes no new flows until an operator stops draining)",
                            flow.flow_type.name()
                        ),
                    );
                    core.store_result(b, run, flow.flow_type.name(), client_id, Err(err));
                    continue;
                }
                core.create_run(b, run, flow, Vec::new(), true, client_id);
            }
            Ok(())
        })?;
        Ok((runs, out))
    }

    /// Records a flow that could not even be prepared (its start state does
    /// not serialize) as finished with `error`, so its handle reports it.
    pub fn record_failed_start(
        &mut self,
        now: Timestamp,
        flow: &str,
        error: FlowError,
    ) -> Result<(RunId, Output), NodeError> {
        let run = self.fresh_run_id()?;
        let out = self.batch(now, |core, b| {
            core.store_result(b, run, flow, None, Err(error));
            Ok(())
        })?;
        Ok((RunId(run), out))
    }

    /// Stops (or resumes) taking new flows and sessions. The setting is
    /// stored with the node, so a node restarted while draining is still
    /// draining. If the store cannot record it, the node switches anyway
    /// (for this process's life) and logs an error; use
    /// [`try_set_draining`](Self::try_set_draining) to see the failure.
    pub fn set_draining(&mut self, draining: bool) {
        if let Err(e) = self.try_set_draining(draining) {
            tracing::error!(
                draining,
                "draining switched in memory only, it will not survive a restart: {e}"
            );
            self.draining = draining;
        }
    }

    /// [`set_draining`](Self::set_draining), committed to the store before
    /// it takes effect: on `Err` nothing changed.
    pub fn try_set_draining(&mut self, draining: bool) -> Result<(), NodeError> {
        if self.draining == draining {
            return Ok(());
        }
        let mut w = crate::store::WriteBatch::default();
        if draining {
            w.put(Table::META, META_DRAINING.to_vec(), vec![1]);
        } else {
            w.delete(Table::META, META_DRAINING.to_vec());
        }
        self.commit_writes(w)?;
        self.draining = draining;
        Ok(())
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Ends a flow by operator decision: its counterparties are told (kind
    /// `Killed`), its checkpoint removed, its result set to a `Killed` error.
    pub fn kill(&mut self, now: Timestamp, run: RunId) -> Result<Output, NodeError> {
        self.batch(now, |core, b| {
            let error = FlowError::with_kind(
                FlowErrorKind::Killed,
                format!("flow {run} was killed by an operator"),
            );
            match b.checkpoint(&*core.store, run.0).map_err(store_err)? {
                Some(Loaded::Ok(rec)) => {
                    core.end_run(b, run.0, &rec, Err(error.clone()), Some(error));
                }
                Some(Loaded::Corrupt(_)) => {
                    // The record does not say which sessions it owns: find
                    // them by scanning the session table (operator action,
                    // rare).
                    let sessions = core.sessions_of(run.0)?;
                    let rec = CheckpointRecord {
                        flow: "<undecodable checkpoint>".into(),
                        fingerprint: 0,
                        version: 0,
                        state: Vec::new(),
                        state_name: String::new(),
                        started: true,
                        wait: None,
                        waiting_since: now,
                        progress: Vec::new(),
                        sessions,
                        keep_result: true,
                        client_id: None,
                        deadline: None,
                    };
                    core.end_run(b, run.0, &rec, Err(error.clone()), Some(error));
                }
                None => return Err(NodeError::UnknownRun(run)),
            }
            Ok(())
        })
    }

    /// Lets a hospitalised flow run again now (after the operator fixed the
    /// cause: deployed the right code, restored a service...).
    pub fn retry(&mut self, now: Timestamp, run: RunId) -> Result<Output, NodeError> {
        self.batch(now, |core, b| {
            if b.get(&*core.store, &Table::HOSPITAL, &run_key(run.0))
                .map_err(store_err)?
                .is_none()
            {
                return Err(NodeError::NotInHospital(run));
            }
            b.delete(Table::HOSPITAL, run_key(run.0));
            core.wake(b, run.0);
            Ok(())
        })
    }

    /// The outcome of a finished flow started with a kept result.
    pub fn result(&self, run: RunId) -> Result<Option<Result<Vec<u8>, FlowError>>, NodeError> {
        let Some(bytes) = self
            .store
            .get(&Table::RESULTS, &run_key(run.0))
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        match rmp_serde::from_slice::<ResultRecord>(&bytes) {
            Ok(r) => Ok(Some(r.outcome.map(|b| b.into_vec()))),
            Err(e) => Ok(Some(Err(FlowError::internal(format!(
                "the stored result of run {run} does not decode: {e}"
            ))))),
        }
    }

    /// Forgets a finished flow's result (and its client id). `true` if there
    /// was one.
    pub fn remove_result(&mut self, now: Timestamp, run: RunId) -> Result<bool, NodeError> {
        let Some(bytes) = self
            .store
            .get(&Table::RESULTS, &run_key(run.0))
            .map_err(store_err)?
        else {
            return Ok(false);
        };
        let client_id = rmp_serde::from_slice::<ResultRecord>(&bytes)
            .ok()
            .and_then(|r| r.client_id);
        self.batch(now, |_, b| {
            b.delete(Table::RESULTS, run_key(run.0));
            if let Some(id) = client_id {
                b.delete(Table::CLIENT_IDS, id.into_bytes());
            }
            Ok(())
        })?;
        Ok(true)
    }

    /// The run started with `client_id`, if any (running or finished with its
    /// result kept).
    pub fn run_for_client_id(&self, client_id: &str) -> Result<Option<RunId>, NodeError> {
        Ok(self
            .store
            .get(&Table::CLIENT_IDS, client_id.as_bytes())
            .map_err(store_err)?
            .and_then(|v| parse_run_key(&v))
            .map(RunId))
    }

    /// Overwrites the encoded state of a checkpoint: an operator's repair tool
    /// (and how tests simulate disk corruption). The flow is tried again.
    pub fn replace_checkpoint_state(
        &mut self,
        now: Timestamp,
        run: RunId,
        state: Vec<u8>,
    ) -> Result<Output, NodeError> {
        self.batch(now, |core, b| {
            match b.checkpoint(&*core.store, run.0).map_err(store_err)? {
                Some(Loaded::Ok(mut rec)) => {
                    rec.state = state;
                    b.put_checkpoint(run.0, rec);
                }
                _ => return Err(NodeError::UnknownRun(run)),
            }
            Ok(())
        })
    }

    pub(super) fn sessions_of(&self, run: u64) -> Result<Vec<SessionKey>, NodeError> {
        Ok(self
            .store
            .range(&Table::SESSIONS, &[], None, usize::MAX)
            .map_err(store_err)?
            .into_iter()
            .filter_map(|(k, v)| {
                let rec: SessionRecord = rmp_serde::from_slice(&v).ok()?;
                if rec.run != run || k.len() != 9 {
                    return None;
                }
                Some(SessionKey {
                    id: SessionId(u64::from_be_bytes(k[..8].try_into().ok()?)),
                    side: if k[8] == 0 {
                        Side::Initiator
                    } else {
                        Side::Responder
                    },
                })
            })
            .collect())
    }
}
