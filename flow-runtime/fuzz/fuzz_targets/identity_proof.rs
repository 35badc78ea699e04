//! The handshake payload decoder and verifier. The body, and what it checks, is
//! `flow_runtime::testing::fuzz::identity_proof`.
#![no_main]

use flow_runtime::testing::fuzz;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz::identity_proof(data));
