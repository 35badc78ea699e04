//! A database a hostile file could hold: every row decoder, then a node on it. The body, and what it checks, is
//! `flow_runtime::testing::fuzz::stored_records`.
#![no_main]

use flow_runtime::testing::fuzz;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz::stored_records(data));
