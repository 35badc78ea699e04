//! Differential tests of randomly generated flow bodies, part 1 of 2.
//!
//! `tests/build.rs` draws `FLOW_GEN_COUNT` (default 200) bodies from a seeded
//! grammar (`FLOW_GEN_SEED`, default 0x5EED) mixing every control-flow form
//! with awaits at random depths, and stamps each twice with
//! [`flow_tests::diff_flows!`]. Each `body_gNNN` test checks, for
//! proptest-drawn counterparty inputs, that the `#[flow]` state machine (with
//! and without a checkpoint round trip at every suspension) makes the same
//! sends, waits and result as the plain `async fn`. See `docs/testing.md`.
//!
//! Cases per body: `PROPTEST_CASES` if set, else 24. The bodies are split
//! over two test binaries so that they compile in parallel.
#![allow(
    unused_parens,
    unused_comparisons,
    unused_variables,
    unused_mut,
    unused_assignments,
    unused_labels,
    unreachable_code,
    clippy::all
)]

use flow_tests::generated_support::*;

include!(concat!(env!("OUT_DIR"), "/generated_flows_1.rs"));
