//! Frames from two authenticated peers delivered to a node (NodeCore). The body, and what it checks, is
//! `flow_runtime::testing::fuzz::node_frames`.
#![no_main]

use flow_runtime::testing::fuzz;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz::node_frames(data));
