//! The pre-deploy check on the trade demo's seller node, as an operator
//! runs it: `trade-demo node --config seller.toml --role seller
//! --check-upgrade`. The seller's database holds trades in flight written
//! by an earlier release of `sell` (the same NAME and VERSION, another
//! shape); the check finds the changed flow, names it with both
//! fingerprints, exits 1, and leaves the database as it was.

#![cfg(unix)]

use finance_flows::crypto::SecureHash;
use finance_flows::flows::Notary;
use finance_flows::flows::trade::sell;
use finance_flows::ledger::StateRef;
use flow_runtime::prelude::*;
use flow_runtime::runner::{Config, NodeBuilder, keys};
use flow_runtime::tcp::{NetworkMap, PeerEntry};
use std::path::Path;
use std::process::Command;

const DEMO: &str = env!("CARGO_BIN_EXE_trade-demo");

/// `sell` as an earlier release wrote it: the price was a number of cents
/// and the offer went out before the flow suspended on the buyer's
/// answer. Same NAME and VERSION as today's `sell`; another fingerprint.
mod earlier_release {
    use super::*;
    #[flow(name = "finance_flows::flows::trade::sell", version = 2)]
    pub async fn sell(
        ctx: &mut FlowContext,
        buyer: Party,
        asset: StateRef,
        price_cents: u64,
        notary: Notary,
    ) -> Result<u64, FlowError> {
        let session: FlowSession = ctx.initiate_flow(&buyer);
        session.send(&(asset, price_cents, notary))?;
        let paid: u64 = session.receive::<u64>().await?.validate(Ok)?;
        Ok(paid)
    }
}

/// The seller's config, key and a network map with the three demo nodes
/// in `dir`; the parties of the buyer and the notary.
fn seller_files(dir: &Path) -> (Party, Party) {
    let mut entries = Vec::new();
    for name in ["Notary", "Seller", "Buyer"] {
        let key = keys::generate_identity().unwrap();
        let stem = name.to_lowercase();
        keys::write_key_file(&dir.join(format!("{stem}.key")), &key).unwrap();
        entries.push(PeerEntry {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            key: keys::public_key(&key),
        });
    }
    let (notary, buyer) = (entries[0].party(), entries[2].party());
    let map = NetworkMap::new(entries).unwrap();
    std::fs::write(dir.join("network.toml"), map.to_toml_string()).unwrap();
    std::fs::write(
        dir.join("seller.toml"),
        "name = \"Seller\"\nidentity_key = \"seller.key\"\nlisten = \"127.0.0.1:0\"\n\
         database = \"seller.redb\"\nnetwork_map = \"network.toml\"\n",
    )
    .unwrap();
    (buyer, notary)
}

/// Runs the seller node of the earlier release (its only flow the earlier
/// `sell`) and starts `count` trades, which wait for a buyer that never
/// answers; stops the node with them in flight.
fn earlier_trades_in_flight(dir: &Path, count: usize, buyer: Party, notary: Notary) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let loaded = Config::read(&dir.join("seller.toml"))
            .and_then(Config::load)
            .unwrap();
        let mut builder = NodeBuilder::from_config(loaded);
        builder.flow::<earlier_release::sell::Flow>();
        let node = builder.start().await.unwrap();
        for i in 0..count {
            let asset = StateRef {
                tx_id: SecureHash([7; 32]),
                index: i as u32,
            };
            node.start_flow(earlier_release::sell(
                buyer.clone(),
                asset,
                80_000,
                notary.clone(),
            ))
            .await
            .unwrap();
        }
        assert_eq!(node.flows_in_flight().await.unwrap(), count as u64);
        node.shutdown().await.unwrap();
    });
}

#[test]
fn the_demo_seller_check_finds_the_changed_sell_flow() {
    let dir = tempfile::tempdir().unwrap();
    let (buyer, notary_party) = seller_files(dir.path());
    let notary = Notary {
        party: notary_party.clone(),
        node: notary_party,
    };
    let name = <sell::Flow as Flow>::NAME;
    assert_eq!(
        name,
        <earlier_release::sell::Flow as Flow>::NAME,
        "the earlier release's NAME is pinned to today's"
    );
    let today = <sell::Flow as Flow>::fingerprint();
    let earlier = <earlier_release::sell::Flow as Flow>::fingerprint();
    assert_ne!(today, earlier);

    earlier_trades_in_flight(dir.path(), 2, buyer, notary);
    let before = std::fs::read(dir.path().join("seller.redb")).unwrap();

    let out = Command::new(DEMO)
        .args(["node", "--role", "seller", "--check-upgrade", "--config"])
        .arg(dir.path().join("seller.toml"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{report}\n{stderr}");
    assert!(
        report.contains(&format!(
            "flow {name} version 2 fingerprint {earlier:016x}: resume 0, migrate 0, refused 2 (the checkpoint of `{name}` was written by version 2 (fingerprint {earlier:016x}) but this node runs version 2 (fingerprint {today:016x})"
        )),
        "{report}"
    );
    assert!(
        report.contains("total: resume 0, migrate 0, refused 2"),
        "{report}"
    );
    assert!(report.contains("NOT SAFE"), "{report}");
    assert_eq!(
        std::fs::read(dir.path().join("seller.redb")).unwrap(),
        before,
        "the check reads a copy; the database is untouched"
    );
}
