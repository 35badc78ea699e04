//! Runs `#[flow]` state machines: the flow-facing API (sessions, context,
//! errors), the durable node, and the test network.
//!
//! A flow is written as one `async fn` marked [`flow`]; the macro turns it
//! into an enum implementing [`Flow`]. Flow code reaches the node only
//! through [`FlowContext`] and [`FlowSession`]:
//!
//! ```
//! use flow_runtime::prelude::*;
//! use flow_runtime::testing::MockNetwork;
//!
//! #[flow]
//! pub async fn ping(ctx: &mut FlowContext, peer: Party) -> Result<u32, FlowError> {
//!     let session = ctx.initiate_flow(&peer);
//!     let n: u32 = session.send_and_receive::<u32>(&1u32).await?.validate(Ok)?;
//!     Ok(n)
//! }
//!
//! #[flow]
//! pub async fn double(ctx: &mut FlowContext, session: FlowSession) -> Result<(), FlowError> {
//!     let n: u32 = session.receive::<u32>().await?.validate(Ok)?;
//!     session.send(&(2 * n))?;
//!     Ok(())
//! }
//!
//! fn main() {
//!     let mut net = MockNetwork::new(7);
//!     let alice = net.create_node("Alice");
//!     let bob = net.create_node("Bob");
//!     net.register_responder::<ping::Flow, _>(bob, |session| double(session));
//!     let handle = net.start_flow(alice, ping(net.party(bob)));
//!     net.run_network();
//!     assert_eq!(net.result(&handle), Some(Ok(2)));
//! }
//! ```

#![warn(missing_docs)]

// `#[flow]` names this crate `::flow_runtime`; this lets the runtime's own
// `testing::ping_pong` flows use the macro too.
extern crate self as flow_runtime;

mod context;
mod error;
mod fast_hash;
pub mod fingerprint;
mod flow;
pub mod graph;
mod handle;
mod migration;
mod node;
mod party;
mod progress;
mod protocol;
mod registry;
mod services;
mod session;
mod step_writes;
mod store;
mod untrustworthy;

#[cfg(feature = "tcp")]
pub mod runner;
#[cfg(all(feature = "tcp", feature = "postgres"))]
pub mod scale_out;
#[cfg(feature = "tcp")]
pub mod tcp;
pub mod testing;
#[cfg(feature = "tcp")]
pub mod transport;

#[doc(hidden)]
pub mod __private;

pub use context::{
    FlowContext, Frame, IdSource, OpenedSession, SeededIds, SessionPeer, Sleep, StepEffects,
    SubFlow, Timestamp, Wait, run_step,
};
pub use error::{FlowError, FlowErrorKind};
pub use flow::{Event, Flow, Step};
pub use flow_macros::flow;
pub use handle::FlowHandle;
pub use node::{NodeConfig, NodeCore, NodeError, RunId};
pub use party::{Party, PublicKey};
pub use progress::{ProgressStream, ProgressTracker};
pub use registry::ResponderFn;
pub use services::Services;
pub use session::{FlowSession, OutgoingMessage, Payload, Receive, SessionId};
pub use step_writes::StepWrites;
pub use untrustworthy::Untrustworthy;

/// The node's engine, for writing a driver of one's own (a worker process,
/// another event loop, an operator tool): the synchronous step engine
/// ([`NodeCore`]), the delivery protocol every driver runs
/// ([`Delivery`](engine::Delivery)),
/// the wire format, the flow registry and the operator's views.
///
/// Applications do not need it: they run nodes with
/// [`runner::Node`] and test flows with [`testing::MockNetwork`], which
/// drive the
/// engine for them.
pub mod engine {
    pub use crate::node::delivery::{Delivery, DeliveryStats, Receipt, Sent, Transmit};
    pub use crate::node::{
        CheckpointDump, CheckpointSummary, CoreMetrics, DEFERRAL_WARNING_EVERY, HospitalEntry,
        NodeConfig, NodeCore, NodeError, OperatorView, OsIds, Output, PeerNames, RunId,
        STORE_FORMAT, SessionDump, StateFields, TransactionMetrics, UnackedFrame, UpgradeGroup,
        UpgradeReport, check_upgrade,
    };
    pub use crate::protocol::{Body, OLDEST_WIRE_VERSION_READ, WIRE_VERSION, WireMessage};
    pub use crate::registry::{
        ErasedStep, FlowType, NewFlow, Registry, ResponderFn, ResponderLookup, describe_versions,
    };
}

/// The checkpoint store: the [`Store`](storage::Store) trait a node
/// commits through (one atomic write batch per group commit, plus
/// lookups), its redb implementation ([`RedbStore`](storage::RedbStore),
/// on a file or in memory), its PostgreSQL implementation (`PostgresStore`,
/// feature `postgres`) and a timing wrapper for measurements.
///
/// Applications choose only the store and its options (through the node's
/// builder or config file: `docs/scale-out.md`); another backend
/// implements `Store`.
pub mod storage {
    pub use crate::store::{
        Entries, RangeRemoval, RedbOptions, RedbStore, SharedMemory, StorageCounters, StorageStats,
        Store, StoreError, Table, TimedStore, WriteBatch, WriteOp,
    };
    #[cfg(feature = "postgres")]
    pub use crate::store::{PostgresOptions, PostgresStore, SCHEMA_VERSION};
}

/// Everything a flow author needs: `use flow_runtime::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Flow, FlowContext, FlowError, FlowErrorKind, FlowSession, Party, PublicKey, Untrustworthy,
        flow,
    };
}
