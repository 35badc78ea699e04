//! What a hostile peer, or a hostile file, can do to a node: each test is
//! one attack, and shows the node refusing it with a clear error rather
//! than crashing, exhausting memory, or changing its data.

use flow_runtime::prelude::*;
use flow_runtime::runner::{Node, NodeBuilder, RunnerError};
use flow_runtime::testing::ping_pong::{ping, pong};
use flow_runtime::transport::{MemoryNetwork, MemoryTransport};
use std::path::Path;

fn party(name: &str, byte: u8) -> Party {
    Party::new(name, PublicKey([byte; 32]))
}

async fn start_node(
    net: &MemoryNetwork,
    who: &Party,
    db: &Path,
) -> Result<Node<MemoryTransport>, RunnerError> {
    let (transport, incoming) = net.join(who);
    let mut b = NodeBuilder::with_transport(who.clone(), db, transport, incoming);
    b.flow::<ping::Flow>();
    b.responder::<ping::Flow>(pong);
    b.start().await
}

/// 64 bytes flipped at many places of a node's database file: opening the
/// node and reading every flow either works or fails with an error that
/// says the file is damaged and what to do; the node never panics (redb
/// itself panics on some damaged pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let alice = party("Alice", 1);
    let absent = party("Bob", 2);
    let good = dir.path().join("alice.redb");
    {
        let net = MemoryNetwork::new();
        let node = start_node(&net, &alice, &good).await.unwrap();
        // Pings to a peer that never answers: 300 suspended flows on disk.
        for _ in 0..300 {
            node.start_flow(ping(absent.clone(), 5)).await.unwrap();
        }
        node.shutdown().await.unwrap();
    }
    let bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    let mut offsets: Vec<usize> = (1..24).map(|page| page * 4096).collect();
    offsets.extend([n / 3, n / 2, 2 * n / 3]);
    offsets.retain(|&o| o < n);
    let mut refused = 0;
    for offset in offsets {
        let mut copy = bytes.clone();
        for b in &mut copy[offset..(offset + 64).min(n)] {
            *b ^= 0xA5;
        }
        let path = dir.path().join(format!("damaged-{offset}.redb"));
        std::fs::write(&path, &copy).unwrap();
        let net = MemoryNetwork::new();
        let outcome = match start_node(&net, &alice, &path).await {
            Err(e) => Err(e.to_string()),
            Ok(node) => {
                let read = node.dump_json().await.map_err(|e| e.to_string());
                let _ = node.shutdown().await;
                read.map(|_| ())
            }
        };
        if let Err(e) = outcome
            && e.contains("damaged")
        {
            assert!(e.contains("Restore it from a backup"), "{e}");
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "no damaged page was reached: the test proves nothing"
    );
}
