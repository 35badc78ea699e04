//! Tools for testing flows without a real network.

mod flow_driver;
pub use flow_driver::{DriverError, FlowDriver, StepReport};

mod mock;
pub use mock::{Faults, Finished, LinkFaults, MockNetwork, NetworkStats, NodeId};

mod handwritten;
pub use handwritten::HandwrittenPing;

pub mod ping_pong;

pub mod cluster;
