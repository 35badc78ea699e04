//! The receive path of an established connection: records, then decryption. The body, and what it checks, is
//! `flow_runtime::testing::fuzz::tcp_records`.
#![no_main]

use flow_runtime::testing::fuzz;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz::tcp_records(data));
