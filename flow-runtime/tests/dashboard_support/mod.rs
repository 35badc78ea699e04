//! A node for the dashboard's tests: Alice, on real TCP with her admin API
//! (and so the dashboard) on loopback, whose network map also names Bob,
//! who never runs, so pings to him stay in flight at a known state. Her
//! flows: `ping`, `flaky` (fails into the hospital until a test lets its
//! label succeed) and `sleeper` (sleeps an hour holding a note, which tests
//! fill with hostile text).

#![allow(dead_code)]

pub mod cdp;

use flow_runtime::NodeConfig;
use flow_runtime::prelude::*;
use flow_runtime::runner::admin::auth::digest;
use flow_runtime::runner::admin::{AdminSettings, Role, UserSection};
use flow_runtime::runner::{Node, NodeBuilder, keys};
use flow_runtime::storage::RedbOptions;
use flow_runtime::tcp::{NetworkMap, PeerEntry, SigningKey, TcpConfig};
use flow_runtime::testing::ping_pong::{ping, pong};
use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The labels `flaky` may succeed for.
static MAY_SUCCEED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Lets `flaky(label)` succeed from its next try on.
pub fn let_succeed(label: &str) {
    MAY_SUCCEED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert(label.to_owned());
}

/// Fails transiently (so, with no automatic retries, lands in the
/// hospital) until [`let_succeed`] is called with its label; the error
/// text carries the label.
#[flow]
pub async fn flaky(_ctx: &mut FlowContext, label: String) -> Result<String, FlowError> {
    let allowed = MAY_SUCCEED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .is_some_and(|s| s.contains(&label));
    if allowed {
        Ok(format!("{label} done"))
    } else {
        Err(FlowError::transient(format!("{label}: not yet")))
    }
}

/// Sleeps an hour holding `note` in its stored state.
#[flow]
pub async fn sleeper(ctx: &mut FlowContext, note: String) -> Result<String, FlowError> {
    ctx.sleep(Duration::from_secs(3600)).await;
    Ok(note)
}

/// The read-only user's token.
pub const READ_TOKEN: &str = "viewer-token-0123456789abcdef";

/// A running Alice.
pub struct Dashboard {
    pub dir: tempfile::TempDir,
    pub node: Node,
    /// Bob, as the map names him (he never runs).
    pub bob: Party,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The `operate` token (the token file's `admin`).
    pub admin_token: String,
}

/// Starts Alice (on the current tokio runtime).
pub async fn start() -> Dashboard {
    let dir = tempfile::tempdir().unwrap();
    let alice_key = keys::generate_identity().unwrap();
    let bob_key = keys::generate_identity().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let alice_addr = listener.local_addr().unwrap().to_string();
    // A port nobody listens on: Bob is down for the whole test.
    let bob_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let map = NetworkMap::new(vec![
        PeerEntry {
            name: "Alice".into(),
            address: alice_addr.clone(),
            key: keys::public_key(&alice_key),
        },
        PeerEntry {
            name: "Bob".into(),
            address: bob_addr,
            key: keys::public_key(&bob_key),
        },
    ])
    .unwrap();
    let bob = map.by_name("Bob").unwrap().party();
    let db = dir.path().join("Alice.redb");
    let mut b = NodeBuilder::new(
        SigningKey::from_bytes(&alice_key.to_bytes()),
        &alice_addr,
        &db,
        map,
    );
    b.listener(listener);
    b.tcp_config(TcpConfig {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..TcpConfig::default()
    });
    b.store_options(RedbOptions {
        quick_repair: false,
        ..RedbOptions::default()
    });
    b.node_config(NodeConfig {
        max_transient_retries: 0,
        ..NodeConfig::default()
    });
    b.flow::<ping::Flow>();
    b.responder::<ping::Flow>(pong);
    b.flow::<flaky::Flow>();
    b.flow::<sleeper::Flow>();
    let mut settings = AdminSettings::from_section(&Default::default(), &db);
    settings.users = vec![UserSection {
        name: "viewer".into(),
        role: Role::Read,
        token_sha256: digest(READ_TOKEN)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        start: Vec::new(),
    }];
    b.admin(settings);
    let node = b.start().await.unwrap();
    let url = node.admin_server().unwrap().url();
    let admin_token = std::fs::read_to_string(dir.path().join("Alice.redb.admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    Dashboard {
        dir,
        node,
        bob,
        url,
        admin_token,
    }
}
