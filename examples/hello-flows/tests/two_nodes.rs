//! The page's last section as a test: two `hello-node` processes over TCP,
//! with keys, a network map and configs written the way the page says.

#![cfg(unix)]

use flow_runtime::runner::keys;
use flow_runtime::tcp::{NetworkMap, PeerEntry};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_hello-node");

/// Kills the node if the test fails before stopping it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn write_node(dir: &Path, name: &str, port: u16) -> PeerEntry {
    let stem = name.to_lowercase();
    let key = keys::generate_identity().unwrap();
    keys::write_key_file(&dir.join(format!("{stem}.key")), &key).unwrap();
    let config = format!(
        "name = \"{name}\"\nidentity_key = \"{stem}.key\"\nlisten = \"127.0.0.1:{port}\"\n\
         database = \"{stem}.redb\"\nnetwork_map = \"network.toml\"\n"
    );
    std::fs::write(dir.join(format!("{stem}.toml")), config).unwrap();
    PeerEntry {
        name: name.into(),
        address: format!("127.0.0.1:{port}"),
        key: keys::public_key(&key),
    }
}

#[test]
fn alice_pings_bob_across_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let alice = write_node(dir.path(), "Alice", free_port());
    let bob = write_node(dir.path(), "Bob", free_port());
    let map = NetworkMap::new([alice, bob]).unwrap();
    std::fs::write(dir.path().join("network.toml"), map.to_toml_string()).unwrap();

    let _bob = Running(
        Command::new(NODE)
            .arg(dir.path().join("bob.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut alice = Running(
        Command::new(NODE)
            .arg(dir.path().join("alice.toml"))
            .arg("Bob")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while alice.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "Alice did not finish in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let Running(child) = &mut alice;
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "ping to Bob: 45", "{stderr}");

    // The pre-deploy check on Alice's stopped node: nothing in flight, so
    // nothing refused.
    let check = Command::new(NODE)
        .arg(dir.path().join("alice.toml"))
        .arg("--check-upgrade")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{report}");
    assert_eq!(
        report.trim(),
        "total: resume 0, migrate 0, refused 0",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
