//! The files a node process (the `flow-ping-node` binary) is started from:
//! a key per node, one network map, and a config per node, for the tests
//! that run nodes as separate processes.

use flow_runtime::runner::keys;
use flow_runtime::tcp::{NetworkMap, PeerEntry};
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
    let mut entries = Vec::new();
    let mut files = Vec::new();
    for name in names {
        let key = keys::generate_identity().unwrap();
        keys::write_key_file(&dir.join(format!("{name}.key")), &key).unwrap();
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        entries.push(PeerEntry {
            name: (*name).into(),
            address: address.to_string(),
            key: keys::public_key(&key),
        });
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\nidentity_key = \"{name}.key\"\nlisten = \"{address}\"\n\
                 database = \"{name}.redb\"\nnetwork_map = \"network.toml\"\n\n\
                 [transport]\nbackoff_min_ms = 20\nbackoff_max_ms = 250\n\n\
                 [node]\nredelivery_interval_ms = 300\n{extra_config}"
            ),
        )
        .unwrap();
        files.push(NodeFiles {
            config,
            log: dir.join(format!("{name}.log")),
            address,
        });
    }
    let map = NetworkMap::new(entries).unwrap();
    std::fs::write(dir.join("network.toml"), map.to_toml_string()).unwrap();
    files
}
