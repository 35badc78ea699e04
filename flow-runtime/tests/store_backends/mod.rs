//! The stores a store- or node-level suite runs on: every test that takes
//! its store from here runs once on redb and, where PostgreSQL is
//! installed, once more on PostgreSQL (one server per test binary, a fresh
//! schema per test). Without PostgreSQL the PostgreSQL runs are skipped
//! with a printed message.

#![allow(dead_code)] // each test binary uses its own part of this

use flow_runtime::runner::StoreChoice;
use flow_runtime::storage::Store;
use flow_runtime::storage::{PostgresOptions, PostgresStore, RedbOptions, RedbStore, SharedMemory};
use flow_runtime::testing::TestPostgres;
use std::sync::Arc;

/// Where one test's store lives; [`Backend::open`] on the same value after
/// dropping every store opened before is a restart of the process.
pub enum Backend {
    /// redb in memory that outlives its stores.
    Redb(SharedMemory),
    /// A schema of its own on the test binary's PostgreSQL server.
    Postgres {
        /// The schema's connection string.
        connection: String,
        /// The server.
        server: &'static TestPostgres,
    },
}

impl Backend {
    /// A fresh, empty redb store location.
    pub fn redb() -> Self {
        Backend::Redb(SharedMemory::new())
    }

    /// A fresh, empty PostgreSQL schema; `None` where PostgreSQL is absent.
    pub fn postgres() -> Option<Self> {
        let server = TestPostgres::shared()?;
        Some(Backend::Postgres {
            connection: server.fresh_schema(),
            server,
        })
    }

    /// Another fresh, empty store location of the same kind.
    pub fn fresh(&self) -> Self {
        match self {
            Backend::Redb(_) => Backend::redb(),
            Backend::Postgres { server, .. } => Backend::Postgres {
                connection: server.fresh_schema(),
                server,
            },
        }
    }

    /// What the failure messages call it.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Redb(_) => "redb",
            Backend::Postgres { .. } => "PostgreSQL",
        }
    }

    /// Opens the store (again).
    pub fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Redb(memory) => Arc::new(
                RedbStore::open_in_memory(memory, RedbOptions::default())
                    .expect("open the redb store"),
            ),
            Backend::Postgres { connection, .. } => Arc::new(
                PostgresStore::open(connection, PostgresOptions::default())
                    .expect("open the PostgreSQL store"),
            ),
        }
    }
}

/// Runs `test` on a fresh store of every backend, saying which one runs
/// (so a failure's captured output names it).
pub fn on_each_backend(test: impl Fn(&Backend)) {
    let mut backends = vec![Backend::redb()];
    backends.extend(Backend::postgres());
    for backend in &backends {
        eprintln!("--- on {}", backend.name());
        test(backend);
    }
}

/// Where the nodes of one runner-level test keep their stores: redb files
/// in a temporary directory, or a PostgreSQL schema per node name (the
/// same one again when the node restarts). The directory also holds what
/// a node writes beside its database (dumps).
pub struct NodeStores {
    dir: tempfile::TempDir,
    server: Option<&'static TestPostgres>,
    schemas: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl NodeStores {
    /// redb, and PostgreSQL where installed.
    pub fn each() -> Vec<NodeStores> {
        let new = |server| NodeStores {
            dir: tempfile::tempdir().expect("a temporary directory"),
            server,
            schemas: Default::default(),
        };
        let mut all = vec![new(None)];
        all.extend(TestPostgres::shared().map(|s| new(Some(s))));
        all
    }

    /// What the failure messages call it.
    pub fn name(&self) -> &'static str {
        if self.server.is_some() {
            "PostgreSQL"
        } else {
            "redb"
        }
    }

    /// Node `name`'s database path and store. redb files are opened
    /// without quick repair (test nodes open fast either way).
    pub fn for_node(&self, name: &str) -> (std::path::PathBuf, StoreChoice) {
        let path = self.dir.path().join(format!("{name}.redb"));
        let choice = match self.server {
            None => StoreChoice::Redb(RedbOptions {
                quick_repair: false,
                ..RedbOptions::default()
            }),
            Some(server) => {
                let mut schemas = self.schemas.lock().expect("schemas");
                let connection = schemas
                    .entry(name.to_owned())
                    .or_insert_with(|| server.fresh_schema())
                    .clone();
                StoreChoice::Postgres { connection }
            }
        };
        (path, choice)
    }
}
