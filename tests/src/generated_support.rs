//! What the generated differential bodies (`tests/build.rs`) and their
//! tests (`tests/tests/differential_generated_*.rs`) refer to by plain name.

pub use crate::differential::{Twins, check_flow_with};
pub use flow_runtime::prelude::{FlowError, Party, PublicKey};
pub use std::time::Duration;

use proptest::test_runner::Config;

/// Counterparty answers drawn per case: enough for most bodies to finish,
/// few enough that some stop waiting half-way.
pub const MAX_INPUTS: usize = 40;

/// Proptest cases per generated body when `PROPTEST_CASES` is not set: the
/// bodies are many, so each gets fewer cases than a hand-written one.
pub const DEFAULT_CASES: u32 = 24;

/// The `?` target of generated bodies: fails on one value in fifty.
pub fn check(v: u64) -> Result<u64, FlowError> {
    if v % 50 == 49 {
        Err(FlowError::new(format!("check failed on {v}")))
    } else {
        Ok(v % 1_000_003)
    }
}

/// The counterparty of every generated body.
pub fn peer() -> Party {
    Party::new("Bob", PublicKey([2; 32]))
}

/// The differential property test of generated body `name`; panics with
/// the shrunk inputs and both traces if the twins disagree.
pub fn run(name: &str, twins: Twins<'_, u64>) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if let Err(e) = check_flow_with(config, name, MAX_INPUTS, &twins) {
        panic!(
            "{e}\n(the body of `{name}` is in target/debug/build/flow-tests-*/out/generated_flows_*.rs)"
        );
    }
}
