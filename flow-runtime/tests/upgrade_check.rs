//! The pre-deploy check as users run it: `flow-ping-node --config X
//! --check-upgrade` against a database with flows in flight. Pings written
//! by the code the binary has resume; flows of the same NAME written by
//! other code (another fingerprint) would be refused, and the check says so
//! and exits non-zero. The database itself is left as it was.

#![cfg(unix)]

use flow_runtime::engine::{NewFlow, NodeConfig, NodeCore, OsIds, Registry};
use flow_runtime::prelude::*;
use flow_runtime::runner::keys;
use flow_runtime::storage::{RedbOptions, RedbStore, Store};
use flow_runtime::tcp::{NetworkMap, PeerEntry};
use flow_runtime::testing::ping_pong::ping;
use flow_runtime::{RunId, Timestamp};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const NODE: &str = env!("CARGO_BIN_EXE_flow-ping-node");

/// A `ping` as another build wrote it: the same NAME, but it sends and
/// awaits `u64`s, so its fingerprint differs from the binary's `ping`.
mod other_build {
    use super::*;
    #[flow(name = "flow_runtime::testing::ping_pong::ping")]
    pub async fn ping(ctx: &mut FlowContext, peer: Party, rounds: u64) -> Result<u64, FlowError> {
        let session = ctx.initiate_flow(&peer);
        session.send(&rounds)?;
        let echo: u64 = session.receive::<u64>().await?.validate(Ok)?;
        Ok(echo)
    }
}

/// Alice's config, key and network map in `dir` (Bob is in the map but
/// never runs: her flows stay in flight).
fn config(dir: &Path) -> (PathBuf, Party) {
    let mut entries = Vec::new();
    let mut bob = None;
    for name in ["Alice", "Bob"] {
        let key = keys::generate_identity().unwrap();
        keys::write_key_file(&dir.join(format!("{name}.key")), &key).unwrap();
        let entry = PeerEntry {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            key: keys::public_key(&key),
        };
        if name == "Bob" {
            bob = Some(entry.party());
        }
        entries.push(entry);
    }
    let map = NetworkMap::new(entries).unwrap();
    std::fs::write(dir.join("network.toml"), map.to_toml_string()).unwrap();
    let config = dir.join("Alice.toml");
    std::fs::write(
        &config,
        "name = \"Alice\"\nidentity_key = \"Alice.key\"\nlisten = \"127.0.0.1:0\"\n\
         database = \"Alice.redb\"\nnetwork_map = \"network.toml\"\n",
    )
    .unwrap();
    (config, bob.unwrap())
}

/// Writes `flows` into Alice's database as a node of that build would:
/// committed, waiting for their first step.
fn flows_in_flight(dir: &Path, flows: Vec<NewFlow>) {
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.join("Alice.redb"), RedbOptions::default()).unwrap());
    let me = Party::new("Alice", flow_runtime::PublicKey([1; 32]));
    let mut core = NodeCore::open(
        me,
        store,
        Registry::new(),
        Box::new(OsIds),
        Box::new(OsIds),
        NodeConfig::default(),
        Timestamp(1),
    )
    .unwrap();
    for flow in flows {
        let (_run, _out): (RunId, _) = core.start(Timestamp(1), flow, None).unwrap();
    }
}

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(NODE)
        .arg("--config")
        .arg(config)
        .arg("--check-upgrade")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.is_empty(), "no report; stderr:\n{stderr}");
    (out.status.success(), stdout)
}

#[test]
fn the_check_counts_what_resumes_and_fails_on_what_would_be_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, bob) = config(dir.path());
    let ours = <ping::Flow as Flow>::fingerprint();
    let theirs = <other_build::ping::Flow as Flow>::fingerprint();
    assert_ne!(ours, theirs);

    // Only pings this build has: safe.
    let mut flows: Vec<NewFlow> = (0..3)
        .map(|_| NewFlow::new(&ping(bob.clone(), 10)).unwrap())
        .collect();
    flows_in_flight(dir.path(), std::mem::take(&mut flows));
    let (ok, report) = check(&config);
    let name = <ping::Flow as Flow>::NAME;
    assert!(ok, "{report}");
    assert!(
        report.contains(&format!(
            "flow {name} version 1 fingerprint {ours:016x}: resume 3, migrate 0, refused 0"
        )),
        "{report}"
    );

    // Two written by another build: refused, and the check fails.
    flows_in_flight(
        dir.path(),
        (0..2)
            .map(|_| NewFlow::new(&other_build::ping(bob.clone(), 10)).unwrap())
            .collect(),
    );
    let before = std::fs::read(dir.path().join("Alice.redb")).unwrap();
    let (ok, report) = check(&config);
    eprintln!("{report}");
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!(
            "flow {name} version 1 fingerprint {theirs:016x}: resume 0, migrate 0, refused 2 ("
        )),
        "{report}"
    );
    assert!(
        report.contains("total: resume 3, migrate 0, refused 2"),
        "{report}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("Alice.redb")).unwrap(),
        before,
        "the check reads a copy; the database is untouched"
    );
}
