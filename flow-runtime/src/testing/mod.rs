//! Tools for testing flows without a real network.

mod flow_driver;
pub use flow_driver::{DriverError, FlowDriver, StepReport};

mod mock;
pub use mock::{Faults, Finished, LinkFaults, MockNetwork, NetworkStats, NodeId};

mod handwritten;
pub use handwritten::HandwrittenPing;

mod hooked_store;
pub use hooked_store::{CommitHook, HookedStore};

pub mod ping_pong;

pub mod cluster;

#[cfg(feature = "postgres")]
mod postgres_server;
#[cfg(feature = "postgres")]
pub use postgres_server::{TestPostgres, TestPostgresError, postgres_binaries};

pub mod fuzz;

#[cfg(feature = "tcp")]
mod local_network;
#[cfg(feature = "tcp")]
pub use local_network::{LocalNode, write_local_network};
