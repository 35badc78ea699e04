//! Tools for testing flows without a real network.

mod driver;
pub use driver::{DriverError, FlowDriver, StepReport};
