//! The per-node flow registry: how a node that stores flows as bytes finds
//! the code to run them.
//!
//! Checkpoints hold a flow's `NAME`, `fingerprint()`, `VERSION` and its state
//! in MessagePack. The registry maps each `NAME` to the [`FlowType`]s
//! registered under it (small vtables built from the concrete `F: Flow`,
//! one per fingerprint, so old and new code of a flow run side by side),
//! each of which decodes the state, runs one step with [`run_step`] and
//! encodes the result. A checkpoint resumes only on the type whose
//! fingerprint wrote it ([`Registry::resuming`]). Responders are registered
//! by the *initiating* flow's type and the initiator versions they speak
//! (see [`Registry::register_responder_for_versions`]). Registrations are
//! code, not data: a restarted node is given the same registry again.

use crate::fast_hash::FastMap;
use crate::migration::{Migrated, Migration, OldVersion, migrate_chain};
use crate::{Event, Flow, FlowContext, FlowError, FlowSession, Step, StepEffects, run_step};
use std::ops::RangeInclusive;
use std::sync::Arc;

/// The outcome of one type-erased step.
#[derive(Debug)]
pub enum ErasedStep {
    /// The flow suspended; its new state.
    Suspended {
        /// The encoded state.
        state: Vec<u8>,
        /// The name of the state variant, for dumps.
        state_name: &'static str,
    },
    /// The flow finished; its encoded output or error.
    Done(Result<Vec<u8>, FlowError>),
}

/// A flow type, with the concrete type erased: what the node needs to run,
/// check and describe a stored flow.
pub trait FlowType: Send + Sync {
    /// `Flow::NAME`.
    fn name(&self) -> &'static str;
    /// `Flow::VERSION`.
    fn version(&self) -> u32;
    /// `Flow::fingerprint()`: the full fingerprint, stored with every
    /// checkpoint and checked before one is resumed.
    fn fingerprint(&self) -> u64;
    /// Decodes `state`, runs one step with `event`, encodes the outcome.
    /// `Err` if `state` does not decode (the checkpoint is then sent to the
    /// hospital, never run).
    fn step(
        &self,
        state: &[u8],
        ctx: &mut FlowContext,
        event: Event,
        effects: StepEffects,
    ) -> Result<(ErasedStep, StepEffects), String>;
    /// The variant name of an encoded state, if it decodes.
    fn state_name(&self, state: &[u8]) -> Option<&'static str>;
    /// `Flow::STATE_GRAPH`: the flow's states and transitions, to draw it.
    /// `None` for a type that does not know its graph.
    fn state_graph(&self) -> Option<&'static crate::graph::StateGraph> {
        None
    }
    /// An encoded state as JSON (its variant and stored fields by name),
    /// for operators; `Err` says why it cannot be shown.
    fn state_json(&self, _state: &[u8]) -> Result<serde_json::Value, String> {
        Err("this flow type cannot show its state".into())
    }
    /// An encoded output as JSON, for clients reading a result by name.
    fn output_json(&self, _output: &[u8]) -> Result<serde_json::Value, String> {
        Err("this flow type cannot show its output".into())
    }
}

/// The vtable of `F`, with its full fingerprint computed once, at
/// registration.
struct Typed<F> {
    fingerprint: u64,
    flow: std::marker::PhantomData<fn() -> F>,
}

impl<F: Flow> Typed<F> {
    fn new() -> Self {
        Typed {
            fingerprint: F::fingerprint(),
            flow: std::marker::PhantomData,
        }
    }
}

/// Encodes a flow's state into a buffer sized for the previous state (a
/// state usually keeps its size from step to step), so encoding does not
/// regrow the buffer several times.
fn encode_state<F: Flow>(
    flow: &F,
    previous_len: usize,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut out = Vec::with_capacity(previous_len + previous_len / 8 + 16);
    rmp_serde::encode::write(&mut out, flow)?;
    Ok(out)
}

impl<F: Flow> FlowType for Typed<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }
    fn version(&self) -> u32 {
        F::VERSION
    }
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    fn step(
        &self,
        state: &[u8],
        ctx: &mut FlowContext,
        event: Event,
        effects: StepEffects,
    ) -> Result<(ErasedStep, StepEffects), String> {
        let mut flow: F = rmp_serde::from_slice(state)
            .map_err(|e| format!("the checkpoint of `{}` does not decode: {e}", F::NAME))?;
        let (step, effects) = run_step(&mut flow, ctx, event, effects);
        let erased = match step {
            Step::Suspended => match encode_state(&flow, state.len()) {
                Ok(state) => ErasedStep::Suspended {
                    state,
                    state_name: flow.state_name(),
                },
                Err(e) => ErasedStep::Done(Err(FlowError::internal(format!(
                    "cannot serialize the state of `{}` (variant {}): {e}",
                    F::NAME,
                    flow.state_name()
                )))),
            },
            Step::Done(Ok(output)) => ErasedStep::Done(rmp_serde::to_vec(&output).map_err(|e| {
                FlowError::internal(format!("cannot serialize the output of `{}`: {e}", F::NAME))
            })),
            Step::Done(Err(e)) => ErasedStep::Done(Err(e)),
        };
        Ok((erased, effects))
    }
    fn state_graph(&self) -> Option<&'static crate::graph::StateGraph> {
        Some(&F::STATE_GRAPH)
    }
    fn state_name(&self, state: &[u8]) -> Option<&'static str> {
        rmp_serde::from_slice::<F>(state)
            .ok()
            .map(|f| f.state_name())
    }
    fn state_json(&self, state: &[u8]) -> Result<serde_json::Value, String> {
        let flow: F = rmp_serde::from_slice(state)
            .map_err(|e| format!("the checkpoint of `{}` does not decode: {e}", F::NAME))?;
        serde_json::to_value(&flow).map_err(|e| format!("cannot show the state as JSON: {e}"))
    }
    fn output_json(&self, output: &[u8]) -> Result<serde_json::Value, String> {
        let output: F::Output = rmp_serde::from_slice(output)
            .map_err(|e| format!("the output of `{}` does not decode: {e}", F::NAME))?;
        serde_json::to_value(&output).map_err(|e| format!("cannot show the output as JSON: {e}"))
    }
}

/// The erased vtable of `F`.
pub(crate) fn typed_flow_type<F: Flow>() -> Arc<dyn FlowType> {
    Arc::new(Typed::<F>::new())
}

/// The encoded start state of a flow, with its type.
pub struct NewFlow {
    /// Its type.
    pub flow_type: Arc<dyn FlowType>,
    /// Its encoded start state.
    pub state: Vec<u8>,
}

impl std::fmt::Debug for NewFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewFlow")
            .field("flow", &self.flow_type.name())
            .field("state_bytes", &self.state.len())
            .finish()
    }
}

impl NewFlow {
    /// Encodes `flow` for starting.
    pub fn new<F: Flow>(flow: &F) -> Result<Self, FlowError> {
        let state = rmp_serde::to_vec(flow).map_err(|e| {
            FlowError::internal(format!("cannot serialize the flow `{}`: {e}", F::NAME))
        })?;
        Ok(Self {
            flow_type: Arc::new(Typed::<F>::new()),
            state,
        })
    }
}

/// A closure that builds a responder flow from the session it answers:
/// `|session| pong(session)`. Implemented for every such closure; it exists
/// so registration can be written `register_responder::<ping::Flow, _>(..)`
/// with the responder's type inferred.
pub trait ResponderFn: Fn(FlowSession) -> Self::Responder + Send + Sync + 'static {
    /// The responder flow the closure builds.
    type Responder: Flow;
}

impl<T, R> ResponderFn for T
where
    T: Fn(FlowSession) -> R + Send + Sync + 'static,
    R: Flow,
{
    type Responder = R;
}

type ResponderFactory = dyn Fn(FlowSession) -> Result<NewFlow, FlowError> + Send + Sync;

/// One responder registration: the initiator versions it speaks and how
/// to build it.
#[derive(Clone)]
struct ResponderEntry {
    versions: RangeInclusive<u32>,
    make: Arc<ResponderFactory>,
}

/// What [`Registry::responder`] found for an initiation.
pub enum ResponderLookup {
    /// The responder for that flow and version (or the error building it).
    Found(Result<NewFlow, FlowError>),
    /// No responder is registered for the initiating flow's `NAME`.
    UnknownFlow,
    /// Responders are registered for the flow, but none for its version:
    /// the versions they speak, in registration order.
    VersionNotSpoken(Vec<RangeInclusive<u32>>),
}

/// Writes a set of versions for a message: `version 3`, `versions 1 to 2`,
/// `versions 1, 3 to 4`.
pub fn describe_versions(versions: &[RangeInclusive<u32>]) -> String {
    let parts: Vec<String> = versions
        .iter()
        .map(|r| {
            if r.start() == r.end() {
                r.start().to_string()
            } else {
                format!("{} to {}", r.start(), r.end())
            }
        })
        .collect();
    let plural = versions.len() > 1 || versions.iter().any(|r| r.start() != r.end());
    format!(
        "{} {}",
        if plural { "versions" } else { "version" },
        parts.join(", ")
    )
}

/// Flow types and responders known to one node.
#[derive(Clone, Default)]
pub struct Registry {
    /// Per `NAME`, every version registered (one per full fingerprint),
    /// the newest registration last.
    flows: FastMap<&'static str, Vec<Arc<dyn FlowType>>>,
    /// Per initiating `NAME`, newest registration last.
    responders: FastMap<&'static str, Vec<ResponderEntry>>,
    /// State migrations, newest registration last.
    migrations: Vec<Migration>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `F` runnable from checkpoints. Types of the same `NAME` with
    /// other fingerprints stay registered beside it (old and new code side
    /// by side): each checkpoint resumes on the type whose fingerprint
    /// wrote it.
    pub fn register_flow<F: Flow>(&mut self) {
        self.insert_type(Arc::new(Typed::<F>::new()));
    }

    /// Forgets the code of `F` (the type with its fingerprint; other
    /// versions of its `NAME` stay): what a build without it would know.
    pub fn unregister_flow<F: Flow>(&mut self) {
        let fingerprint = F::fingerprint();
        if let Some(versions) = self.flows.get_mut(F::NAME) {
            versions.retain(|t| t.fingerprint() != fingerprint);
            if versions.is_empty() {
                self.flows.remove(F::NAME);
            }
        }
    }

    /// Registers a state migration: checkpoints written by the code of
    /// `Old` (its `NAME`, `VERSION` and full fingerprint) are decoded as
    /// `Old`, handed to `migrate`, and continue on `New` with the state it
    /// returns; `Err(reason)` refuses the state, which then stays held in
    /// the hospital with the reason. `New` is registered too. `Old` need
    /// not be registered: keep its code (a module with the flow as it was
    /// deployed) only for its type. A migration takes precedence over old
    /// code registered beside it: every checkpoint of `Old` moves to `New`
    /// when it is next loaded.
    ///
    /// The migration runs when the node loads such a checkpoint to run
    /// it (a flow held at start-up for code the node did not have is
    /// loaded at once); the new state is committed with that step. See
    /// the chapter "Upgrading flows" of the book for an example.
    pub fn register_migration<Old: Flow, New: Flow>(
        &mut self,
        migrate: impl Fn(Old) -> Result<New, String> + Send + Sync + 'static,
    ) {
        let from = OldVersion {
            name: Old::NAME.to_owned(),
            version: Old::VERSION,
            fingerprint: Old::fingerprint(),
        };
        self.insert_migration(Migration::new::<Old, New, _>(from, migrate));
    }

    /// [`register_migration`](Self::register_migration) for checkpoints
    /// whose code this build no longer has: they are identified by the
    /// `name`, `version` and `fingerprint` they were written with (the
    /// hospital's reason and the pre-deploy check print them), and decoded
    /// as `S`, any serde type that reads that state (for a flow, its state
    /// enum as the old `#[flow]` generated it).
    pub fn register_migration_from_fingerprint<S, New>(
        &mut self,
        name: &str,
        version: u32,
        fingerprint: u64,
        migrate: impl Fn(S) -> Result<New, String> + Send + Sync + 'static,
    ) where
        S: serde::de::DeserializeOwned + 'static,
        New: Flow,
    {
        let from = OldVersion {
            name: name.to_owned(),
            version,
            fingerprint,
        };
        self.insert_migration(Migration::new::<S, New, _>(from, migrate));
    }

    fn insert_migration(&mut self, migration: Migration) {
        self.insert_type(migration.to.clone());
        self.migrations.retain(|m| m.from != migration.from);
        self.migrations.push(migration);
    }

    /// Whether a migration reads checkpoints of `name` written with
    /// `version` and `fingerprint`.
    pub fn migrates(&self, name: &str, version: u32, fingerprint: u64) -> bool {
        self.migrations.iter().any(|m| {
            m.from.name == name && m.from.version == version && m.from.fingerprint == fingerprint
        })
    }

    /// Moves a checkpoint's `state`, written by `name` at `version` with
    /// `fingerprint`, to the code it is migrated to (through every
    /// migration registered on the way): `None` if no migration reads it,
    /// `Some(Err(reason))` if one refused it.
    pub(crate) fn migrate(
        &self,
        name: &str,
        version: u32,
        fingerprint: u64,
        state: &[u8],
    ) -> Option<Result<Migrated, String>> {
        let from = OldVersion {
            name: name.to_owned(),
            version,
            fingerprint,
        };
        migrate_chain(&self.migrations, &from, state, |v| {
            self.resuming(&v.name, v.fingerprint, v.version).is_some()
        })
    }

    /// Registers `responder` to answer sessions opened by the flow `I` at
    /// exactly its current `VERSION` (an initiation by any other version of
    /// `I` is refused); the responder flow's own type is registered too.
    pub fn register_responder<I: Flow, H: ResponderFn>(&mut self, responder: H) {
        self.register_responder_for_versions::<I, H>(I::VERSION..=I::VERSION, responder);
    }

    /// Registers `responder` to answer sessions opened by any version in
    /// `versions` of the flow named `I::NAME`: a responder that still
    /// speaks older initiators (reading
    /// [`FlowSession::counterparty_version`] to choose), or one of several
    /// responders each answering its own range, so that several versions
    /// of one flow can be deployed side by side.
    ///
    /// A later registration takes precedence over earlier ones for the
    /// versions they share; an earlier one whose versions it covers
    /// entirely is dropped. An initiation for a version no registration
    /// speaks is refused, with an error naming both versions, before any
    /// responder runs.
    pub fn register_responder_for_versions<I: Flow, H: ResponderFn>(
        &mut self,
        versions: RangeInclusive<u32>,
        responder: H,
    ) {
        self.register_flow::<H::Responder>();
        let entries = self.responders.entry(I::NAME).or_default();
        entries.retain(|e| {
            !(versions.contains(e.versions.start()) && versions.contains(e.versions.end()))
        });
        entries.push(ResponderEntry {
            versions,
            make: Arc::new(move |session| NewFlow::new(&responder(session))),
        });
    }

    /// The type registered last under `name` (of every version
    /// registered, see [`versions`](Self::versions)).
    pub fn flow(&self, name: &str) -> Option<Arc<dyn FlowType>> {
        self.flows.get(name).and_then(|v| v.last()).cloned()
    }

    /// The names of every flow registered, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> {
        let mut names: Vec<&'static str> = self.flows.keys().copied().collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// Every version registered under `name`, the newest registration last.
    pub fn versions(&self, name: &str) -> &[Arc<dyn FlowType>] {
        self.flows.get(name).map_or(&[], Vec::as_slice)
    }

    /// The code that resumes a checkpoint of `name` written with
    /// `fingerprint` and `version`, if this registry has it.
    pub fn resuming(
        &self,
        name: &str,
        fingerprint: u64,
        version: u32,
    ) -> Option<Arc<dyn FlowType>> {
        self.versions(name)
            .iter()
            .find(|t| t.fingerprint() == fingerprint && t.version() == version)
            .cloned()
    }

    /// Why [`resuming`](Self::resuming) found no code: the message an
    /// operator reads in the hospital.
    pub fn why_not_resumable(&self, name: &str, fingerprint: u64, version: u32) -> String {
        let known = self.versions(name);
        if known.is_empty() {
            return format!(
                "no flow named `{name}` is registered on this node: deploy the code that has it (the node frees the flow when it starts with that code), or kill the flow"
            );
        }
        let runs: Vec<String> = known
            .iter()
            .map(|t| {
                format!(
                    "version {} (fingerprint {:016x})",
                    t.version(),
                    t.fingerprint()
                )
            })
            .collect();
        format!(
            "the checkpoint of `{name}` was written by version {version} (fingerprint {fingerprint:016x}) but this node runs {}: the flow's state shape changed; register the code it was written with beside the new one (the node frees the flow when it starts with that code), or kill it",
            runs.join(", ")
        )
    }

    /// Builds the responder for a session opened by version `version` of
    /// the flow `initiating`.
    pub fn responder(
        &self,
        initiating: &str,
        version: u32,
        session: FlowSession,
    ) -> ResponderLookup {
        let Some(entries) = self.responders.get(initiating) else {
            return ResponderLookup::UnknownFlow;
        };
        match entries.iter().rev().find(|e| e.versions.contains(&version)) {
            Some(entry) => ResponderLookup::Found((entry.make)(session)),
            None => ResponderLookup::VersionNotSpoken(
                entries.iter().map(|e| e.versions.clone()).collect(),
            ),
        }
    }

    /// Registers an already-erased type (used when starting a flow), beside
    /// the other versions of its `NAME`; it replaces only a registration
    /// with its own fingerprint, and becomes the newest.
    pub(crate) fn insert_type(&mut self, flow_type: Arc<dyn FlowType>) {
        let versions = self.flows.entry(flow_type.name()).or_default();
        versions.retain(|t| t.fingerprint() != flow_type.fingerprint());
        versions.push(flow_type);
    }
}
