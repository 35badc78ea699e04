//! The files a node process (the `flow-ping-node` binary) is started from:
//! a key per node, one network map, and a config per node, for the tests
//! that run nodes as separate processes, with the settings that keep
//! them quick (see `flow_runtime::testing::write_local_network`).

use flow_runtime::testing::write_local_network;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One node's files in the test directory.
pub struct NodeFiles {
    /// Its config file (`<name>.toml`).
    pub config: PathBuf,
    /// Where its stderr (the log) goes (`<name>.log`).
    pub log: PathBuf,
    /// The address it listens on.
    pub address: SocketAddr,
}

/// Keys, network map and one config per node of `names` in `dir`; ports
/// picked by binding port 0 and releasing it just before the nodes start.
/// Each config ends in its `[node]` section: `extra_config` is appended
/// after it, so it may add `[node]` keys first and then further sections.
/// Fast reconnects and redelivery, so the tests run quickly.
pub fn write_nodes(dir: &Path, names: &[&str], extra_config: &str) -> Vec<NodeFiles> {
    let sections = |_: &str| {
        format!(
            "[transport]\nbackoff_min_ms = 20\nbackoff_max_ms = 250\n\n\
             [node]\nredelivery_interval_ms = 300\n{extra_config}"
        )
    };
    write_local_network(dir, names, sections)
        .unwrap()
        .into_iter()
        .map(|node| NodeFiles {
            log: dir.join(format!("{}.log", node.name)),
            config: node.config,
            address: node.address,
        })
        .collect()
}
