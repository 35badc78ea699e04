//! The files of a small network of node processes on one machine: an
//! identity key per node, one network map, and a config file per node, as
//! `flow-ping-node` (or any program reading [`Config`](crate::runner::Config))
//! starts from. Tests and benchmarks that run nodes as separate processes
//! write their networks with it, so what a node's files hold is said once.

use crate::runner::keys;
use crate::tcp::{NetworkMap, PeerEntry};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One node's files, as [`write_local_network`] wrote them.
#[derive(Debug, Clone)]
pub struct LocalNode {
    /// Its legal name (also the stem of its files).
    pub name: String,
    /// Its config file (`<name>.toml`).
    pub config: PathBuf,
    /// The address it listens on (on 127.0.0.1).
    pub address: SocketAddr,
}

/// Writes, in `dir`, for each of `names`: an identity key (`<name>.key`) and
/// a config file (`<name>.toml`) naming the node, its key, its address,
/// its database (`<name>.redb`) and the network map (`network.toml`, also
/// written, listing every node). Each config's top-level keys are followed
/// by `sections(name)`: the node's TOML sections (`[node]`, `[store]`,
/// ...), empty for the defaults.
///
/// Ports are picked by binding port 0 on 127.0.0.1 and releasing it, so
/// another program could take one before the node starts: for tests and
/// benchmarks, not for deployments.
pub fn write_local_network(
    dir: &Path,
    names: &[&str],
    sections: impl Fn(&str) -> String,
) -> Result<Vec<LocalNode>, String> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        format!("cannot write {what} {}: {e}", path.display())
    };
    let mut entries = Vec::new();
    let mut nodes = Vec::new();
    for name in names {
        let key = keys::generate_identity().map_err(|e| e.to_string())?;
        let key_file = dir.join(format!("{name}.key"));
        keys::write_key_file(&key_file, &key).map_err(|e| e.to_string())?;
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
        entries.push(PeerEntry {
            name: (*name).to_owned(),
            address: address.to_string(),
            key: keys::public_key(&key),
        });
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\nidentity_key = \"{name}.key\"\nlisten = \"{address}\"\n\
                 database = \"{name}.redb\"\nnetwork_map = \"network.toml\"\n\n{}",
                sections(name)
            ),
        )
        .map_err(|e| io("the config", &config, e))?;
        nodes.push(LocalNode {
            name: (*name).to_owned(),
            config,
            address,
        });
    }
    let map = NetworkMap::new(entries).map_err(|e| e.to_string())?;
    let map_file = dir.join("network.toml");
    std::fs::write(&map_file, map.to_toml_string())
        .map_err(|e| io("the network map", &map_file, e))?;
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Config;

    #[test]
    fn every_node_reads_its_config_with_its_sections_and_the_shared_map() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = write_local_network(dir.path(), &["Alice", "Bob"], |name| {
            if name == "Bob" {
                "[node]\nmax_responders_per_peer = 7\n".to_owned()
            } else {
                String::new()
            }
        })
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_ne!(nodes[0].address, nodes[1].address);
        for node in &nodes {
            let loaded = Config::read(&node.config).and_then(Config::load).unwrap();
            assert_eq!(loaded.config.name, node.name);
            assert_eq!(loaded.config.listen, node.address.to_string());
            assert_eq!(loaded.map.entries().len(), 2);
        }
        let alice = Config::read(&nodes[0].config).unwrap();
        assert_eq!(alice.node.max_responders_per_peer, None);
        let bob = Config::read(&nodes[1].config).unwrap();
        assert_eq!(bob.node.max_responders_per_peer, Some(7));
    }
}
