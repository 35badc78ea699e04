//! State migrations: typed functions, written by the user, that turn the
//! state of a flow as an old build checkpointed it into the state of the
//! new code, so flows in flight move to the new code instead of waiting
//! for the old one.
//!
//! A migration is registered on the node's registry (see
//! [`Registry::register_migration`](crate::engine::Registry::register_migration))
//! from one old version, identified by the `NAME`, `VERSION` and full
//! fingerprint its checkpoints carry, to one new flow type. When the node
//! loads a checkpoint of that version it decodes the old state, calls the
//! function and, if the function accepts the state, runs the step on the
//! new code; the new state, with the new fingerprint, is committed with
//! that step, in one transaction. A function that refuses a state (or
//! panics, or meets a checkpoint that does not decode) changes nothing: the
//! flow is held in the hospital with the reason, and is tried again at the
//! next start-up or by an operator's retry.
//!
//! The erased form here is what the registry keeps: the old version's
//! identity, the new type, and a function from old state bytes to new state
//! bytes.

use crate::Flow;
use crate::registry::{FlowType, typed_flow_type};
use serde::de::DeserializeOwned;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// Migrations applied one after another before giving up: bounds a chain
/// (v1 to v2 to v3) and stops a cycle of migrations registered by mistake.
const MAX_CHAIN: usize = 16;

/// Which checkpoints a migration reads: those written by the code with
/// this `NAME`, `VERSION` and full fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OldVersion {
    pub name: String,
    pub version: u32,
    pub fingerprint: u64,
}

type MigrateFn = dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync;

/// One registered migration, with the concrete types erased.
#[derive(Clone)]
pub(crate) struct Migration {
    pub from: OldVersion,
    pub to: Arc<dyn FlowType>,
    migrate: Arc<MigrateFn>,
}

/// A checkpoint state moved to new code by [`migrate_chain`].
pub(crate) struct Migrated {
    /// The code that runs the new state.
    pub flow_type: Arc<dyn FlowType>,
    /// The new state, encoded.
    pub state: Vec<u8>,
}

impl Migration {
    /// A migration that reads the old state as `S` (the old flow type, or
    /// any serde type that reads its checkpoints) and builds `New`'s state
    /// with `f`.
    pub fn new<S, New, M>(from: OldVersion, f: M) -> Self
    where
        S: DeserializeOwned + 'static,
        New: Flow,
        M: Fn(S) -> Result<New, String> + Send + Sync + 'static,
    {
        let name = from.name.clone();
        let migrate = move |bytes: &[u8]| -> Result<Vec<u8>, String> {
            let old: S = rmp_serde::from_slice(bytes)
                .map_err(|e| format!("the old checkpoint of `{name}` does not decode: {e}"))?;
            let new = f(old)?;
            rmp_serde::to_vec(&new).map_err(|e| {
                format!(
                    "cannot serialize the migrated state of `{}` (variant {}): {e}",
                    New::NAME,
                    new.state_name()
                )
            })
        };
        Migration {
            from,
            to: typed_flow_type::<New>(),
            migrate: Arc::new(migrate),
        }
    }

    /// Runs the function on `state`; a panic in it is a refusal.
    fn apply(&self, state: &[u8]) -> Result<Vec<u8>, String> {
        match catch_unwind(AssertUnwindSafe(|| (self.migrate)(state))) {
            Ok(result) => result,
            Err(panic) => Err(format!(
                "the migration panicked: {}",
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into())
            )),
        }
    }
}

/// Applies the migrations registered from `from`, one after another, until
/// the state belongs to code that `resumes` (a type registered to resume
/// it): `None` if no migration reads `from`; `Some(Err(reason))` if one
/// refused the state or the chain ends on code that cannot run it.
pub(crate) fn migrate_chain(
    migrations: &[Migration],
    from: &OldVersion,
    state: &[u8],
    resumes: impl Fn(&OldVersion) -> bool,
) -> Option<Result<Migrated, String>> {
    let mut current = migrations.iter().rev().find(|m| m.from == *from)?;
    let mut state = state.to_vec();
    for _ in 0..MAX_CHAIN {
        let to = &current.to;
        state = match current.apply(&state) {
            Ok(state) => state,
            Err(why) => {
                return Some(Err(format!(
                    "the migration of `{}` from version {} (fingerprint {:016x}) to version {} (fingerprint {:016x}) refused the checkpoint: {why}",
                    current.from.name,
                    current.from.version,
                    current.from.fingerprint,
                    to.version(),
                    to.fingerprint()
                )));
            }
        };
        let reached = OldVersion {
            name: to.name().to_owned(),
            version: to.version(),
            fingerprint: to.fingerprint(),
        };
        match migrations.iter().rev().find(|m| m.from == reached) {
            Some(next) => current = next,
            None if resumes(&reached) => {
                return Some(Ok(Migrated {
                    flow_type: to.clone(),
                    state,
                }));
            }
            None => {
                return Some(Err(format!(
                    "the migration of `{}` ends on version {} (fingerprint {:016x}), which this node does not run",
                    from.name,
                    to.version(),
                    to.fingerprint()
                )));
            }
        }
    }
    Some(Err(format!(
        "the migrations of `{}` from fingerprint {:016x} do not reach code this node runs in {MAX_CHAIN} steps (a cycle?)",
        from.name, from.fingerprint
    )))
}
