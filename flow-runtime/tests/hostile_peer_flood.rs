//! A flood of unauthenticated connections against a running node process
//! (the `flow-ping-node` binary): 1,000 attacker connections at a time from
//! 200 loopback addresses, 700 of them announcing a 65,535-byte handshake
//! record and sending 65,000 bytes of it, 300 connecting and staying
//! silent, each reconnecting as soon as the node drops it. Meanwhile a
//! real peer (Alice, another process) runs pings to the flooded node (Bob)
//! and every one must finish with the exact sum, while Bob's resident
//! memory stays within [`RSS_GROWTH_BOUND`] of what it was before the
//! flood.
//!
//! Linux only (reads `/proc/<pid>/status`; binds 127.0.0.2-201, which
//! Linux routes to loopback). Takes a few seconds.

#![cfg(target_os = "linux")]

mod tcp_common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tcp_common::{NodeFiles, write_nodes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const NODE: &str = env!("CARGO_BIN_EXE_flow-ping-node");
const LIMIT: Duration = Duration::from_secs(90);
/// Attacker connections announcing a large handshake record.
const LOUD: usize = 700;
/// Attacker connections that connect and send nothing.
const SILENT: usize = 300;
/// Distinct attacker source addresses (127.0.0.2 onwards).
const ADDRESSES: usize = 200;
const FLOWS: u32 = 2;
const ROUNDS: u64 = 150;
/// How much Bob's resident memory may grow under the flood. Without the
/// handshake limits each loud connection costs ~88 KiB, 60 MiB for 700.
const RSS_GROWTH_BOUND: u64 = 24 * 1024 * 1024;

fn start(files: &NodeFiles, extra: &[&str]) -> Child {
    let stderr = std::fs::File::create(&files.log).unwrap();
    Command::new(NODE)
        .arg("--config")
        .arg(&files.config)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

/// One attacker connection, reopened whenever the node drops it, until
/// `stop`. Returns how many connections it opened.
async fn attacker(i: usize, loud: bool, to: SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let host = u8::try_from(2 + i % ADDRESSES).unwrap();
    let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 0);
    let mut opened = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(socket) = TcpSocket::new_v4() else {
            break;
        };
        if socket.bind(from).is_err() {
            break;
        }
        let Ok(mut stream) = socket.connect(to).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        opened += 1;
        if loud {
            let _ = stream.write_all(&65_535u32.to_be_bytes()).await;
            let _ = stream.write_all(&[0x5A; 65_000]).await;
        }
        // Hold the connection until the node closes it (or we stop).
        let mut byte = [0u8; 1];
        while !stop.load(Ordering::Relaxed) {
            let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte));
            if let Ok(Ok(0) | Err(_)) = read.await {
                break;
            }
        }
        // Do not spin: reconnect after a pause.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    opened
}

#[test]
fn a_flood_of_unauthenticated_connections_leaves_memory_bounded_and_real_peers_served() {
    let deadline = Instant::now() + LIMIT;
    let dir = tempfile::tempdir().unwrap();
    let files = write_nodes(dir.path(), &["Alice", "Bob"], "");
    let (alice_f, bob_f) = (&files[0], &files[1]);
    let mut bob = start(bob_f, &[]);
    let bob_addr = bob_f.address;
    // Bob is up once he accepts connections.
    while std::net::TcpStream::connect(bob_addr).is_err() {
        assert!(Instant::now() < deadline, "Bob never started listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss(bob.id());

    // The flood, on its own runtime.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut tasks = Vec::new();
                for i in 0..LOUD + SILENT {
                    tasks.push(tokio::spawn(attacker(i, i < LOUD, bob_addr, stop.clone())));
                }
                for t in tasks {
                    opened.fetch_add(t.await.unwrap_or(0), Ordering::Relaxed);
                }
            });
        })
    };
    // Let the flood reach full strength before the real peer starts.
    std::thread::sleep(Duration::from_secs(1));
    let mut rss_peak = rss(bob.id());

    let rounds = ROUNDS.to_string();
    let ping = format!("Bob={FLOWS}");
    let mut alice = start(alice_f, &["--ping", &ping, "--rounds", &rounds]);
    let stdout = alice.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let expected = ROUNDS * (ROUNDS - 1) / 2;
    let mut results = 0;
    let flood_started = Instant::now();
    loop {
        rss_peak = rss_peak.max(rss(bob.id()));
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok(line) if line.starts_with("RESULT ") => {
                assert!(line.ends_with(&format!(" {expected}")), "{line}");
                results += 1;
            }
            Ok(line) if line.starts_with("DONE") => break,
            Ok(line) => assert!(!line.starts_with("FAILED"), "{line}"),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!(
                "Alice stopped before DONE ({e}); her log:\n{}",
                std::fs::read_to_string(&alice_f.log).unwrap_or_default()
            ),
        }
        assert!(
            Instant::now() < deadline,
            "the pings did not finish under the flood; Alice's log:\n{}",
            std::fs::read_to_string(&alice_f.log).unwrap_or_default()
        );
    }
    let pinged_for = flood_started.elapsed();
    rss_peak = rss_peak.max(rss(bob.id()));
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    assert!(alice.wait().unwrap().success());
    bob.kill().unwrap();
    bob.wait().unwrap();

    let bob_log = std::fs::read_to_string(&bob_f.log).unwrap_or_default();
    let round_trips = u64::from(FLOWS) * ROUNDS;
    eprintln!(
        "flood: {} attacker connections opened; Bob's RSS {:.1} MiB before, {:.1} MiB peak during; \
         {round_trips} round trips in {results} pings completed in {pinged_for:?} under the flood",
        opened.load(Ordering::Relaxed),
        rss_before as f64 / 1048576.0,
        rss_peak as f64 / 1048576.0,
    );
    assert_eq!(results, FLOWS);
    assert!(
        rss_peak < rss_before + RSS_GROWTH_BOUND,
        "Bob's RSS grew from {rss_before} to {rss_peak} bytes under the flood"
    );
    assert!(
        bob_log.contains("refused inbound connections"),
        "the caps were never reached: the flood proves nothing"
    );
}
