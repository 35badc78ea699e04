//! A decrypted frame's bytes through the session-message decoder. The body, and what it checks, is
//! `flow_runtime::testing::fuzz::wire_message`.
#![no_main]

use flow_runtime::testing::fuzz;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz::wire_message(data));
