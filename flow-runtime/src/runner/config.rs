//! The node's TOML configuration file.
//!
//! ```toml
//! name = "Alice"                    # must match this node's entry in the network map
//! identity_key = "alice.key"        # written by `flow-keygen`
//! listen = "0.0.0.0:7001"           # where peers connect
//! database = "alice.redb"           # the node's checkpoints, outbox and results
//! network_map = "network.toml"      # every party: name, address, public_key
//!
//! [transport]                       # optional; defaults shown
//! max_frame_bytes = 16777216
//! peer_queue_frames = 16384
//! peer_queue_mb = 64                # bytes queued per peer not yet written to it
//! incoming_queue_mb = 64            # bytes received and not yet taken by the node
//! incoming_peer_mb = 16             # ... of which from any one peer
//! connect_timeout_ms = 5000
//! handshake_timeout_ms = 3000
//! max_handshakes = 128              # unauthenticated connections at once (strangers)
//! max_handshakes_per_address = 8    # ... and from one IP address
//! backoff_min_ms = 50
//! backoff_max_ms = 2000
//!
//! [node]                            # optional; defaults shown
//! redelivery_interval_ms = 1000     # re-send unacknowledged messages this often
//! checkpoint_cache_mb = 8           # decoded copies of recently committed checkpoints
//! long_wait_warning_s = 3600        # log a warning for a flow waiting longer than this
//! long_wait_check_interval_s = 300  # how often to look for such flows (0: never)
//! max_transient_retries = 3         # automatic retries of a transient failure, then the hospital
//! retry_backoff_ms = 1000           # first automatic retry's delay, doubled each time
//! receive_window = 64               # how far ahead of the flow a peer's message may be
//! max_buffered_kb_per_session = 4096 # unconsumed bytes a session may hold
//! max_responders_per_peer = 256     # responder flows one peer may have running at once
//! session_retention_hours = 336     # how long ended sessions are remembered (14 days)
//!
//! [admin]                           # optional; the admin/client API, see runner::admin
//! listen = "127.0.0.1:7101"         # default 127.0.0.1:0 (a free port, written to <database>.admin-url)
//! token_file = "alice.admin-token"  # default <database>.admin-token, created with mode 0600
//!
//! [store]                           # optional; defaults shown
//! kind = "redb"                     # or "postgres" (see below)
//! quick_repair = true               # redb: fast open after a crash, at a second fsync per commit
//! cache_mb = 32                     # redb: page cache
//! journal_mb = 4                    # redb: journal commits, apply them to the tables every 4 MiB (0: off)
//! ```
//!
//! With `kind = "postgres"` the node keeps its checkpoints in a PostgreSQL
//! schema instead (`docs/scale-out.md`), and `database` only names where
//! operator dumps are written (beside it):
//!
//! ```toml
//! [store]
//! kind = "postgres"
//! connection = "host=db.internal user=alice dbname=flows options='-c search_path=alice'"
//! ```
//!
//! Relative paths are relative to the directory holding the config file,
//! so a node's files can move together.

use super::keys::{self, KeyError};
use crate::tcp::{NetworkMap, NetworkMapError, SigningKey, TcpConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the node configuration {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("the node configuration {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the TOML parser said (line, column, unknown field...).
        message: String,
    },
    /// The identity key file.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The network map file.
    #[error(transparent)]
    NetworkMap(#[from] NetworkMapError),
    /// The key file does not hold the key the map lists for `name`.
    #[error(
        "the network map has no party `{name}` with this node's identity key {key} (the map lists: {listed}); fix `name`, `identity_key` or the map"
    )]
    IdentityMismatch {
        /// The configured name.
        name: String,
        /// Hex of the key in the key file.
        key: String,
        /// The map's names, for the message.
        listed: String,
    },
}

/// The file's content, paths already resolved against its directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The node's legal name.
    pub name: String,
    /// Path of the identity key file.
    pub identity_key: PathBuf,
    /// Listen address, `host:port`.
    pub listen: String,
    /// Path of the node's database.
    pub database: PathBuf,
    /// Path of the network map file.
    pub network_map: PathBuf,
    /// Transport tuning.
    #[serde(default)]
    pub transport: TransportSection,
    /// Node tuning.
    #[serde(default)]
    pub node: NodeSection,
    /// Database tuning.
    #[serde(default)]
    pub store: StoreSection,
    /// The admin/client API (see [`AdminSection`](super::admin::AdminSection)).
    #[serde(default)]
    pub admin: super::admin::AdminSection,
}

/// `[transport]`: see [`TcpConfig`] for what each knob does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSection {
    /// [`TcpConfig::max_frame_len`].
    pub max_frame_bytes: Option<usize>,
    /// [`TcpConfig::peer_queue_len`].
    pub peer_queue_frames: Option<usize>,
    /// [`TcpConfig::peer_queue_bytes`], in MiB (default 64).
    pub peer_queue_mb: Option<usize>,
    /// [`TcpConfig::incoming_queue_bytes`], in MiB (default 64).
    pub incoming_queue_mb: Option<usize>,
    /// [`TcpConfig::incoming_peer_bytes`], in MiB (default 16).
    pub incoming_peer_mb: Option<usize>,
    /// [`TcpConfig::connect_timeout`], in milliseconds.
    pub connect_timeout_ms: Option<u64>,
    /// [`TcpConfig::handshake_timeout`], in milliseconds.
    pub handshake_timeout_ms: Option<u64>,
    /// [`TcpConfig::max_handshakes`].
    pub max_handshakes: Option<usize>,
    /// [`TcpConfig::max_handshakes_per_address`].
    pub max_handshakes_per_address: Option<usize>,
    /// [`TcpConfig::backoff_min`], in milliseconds.
    pub backoff_min_ms: Option<u64>,
    /// [`TcpConfig::backoff_max`], in milliseconds.
    pub backoff_max_ms: Option<u64>,
}

/// `[node]`: the node driver's knobs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// How often unacknowledged messages are sent again (default 1,000 ms):
    /// at each tick, those unacknowledged for at least this long. They are
    /// also sent again at start-up and whenever a connection to their peer
    /// is (re-)established.
    pub redelivery_interval_ms: Option<u64>,
    /// Memory for decoded copies of recently committed checkpoints, in MiB
    /// (default 8; 0 turns the cache off): see
    /// [`NodeConfig::checkpoint_cache_bytes`](crate::NodeConfig).
    pub checkpoint_cache_mb: Option<usize>,
    /// A flow waiting longer than this many seconds (default 3600) is
    /// logged with a warning at the next long-wait check: see
    /// [`NodeConfig::long_wait_warning`](crate::NodeConfig).
    pub long_wait_warning_s: Option<u64>,
    /// Seconds between long-wait checks (default 300; 0 turns them off):
    /// see [`NodeBuilder::long_wait_check_interval`].
    ///
    /// [`NodeBuilder::long_wait_check_interval`]: crate::runner::NodeBuilder::long_wait_check_interval
    pub long_wait_check_interval_s: Option<u64>,
    /// How many times a step failing with a transient error is retried
    /// before the flow waits in the hospital for an operator (default 3):
    /// see [`NodeConfig::max_transient_retries`](crate::NodeConfig).
    pub max_transient_retries: Option<u32>,
    /// The first automatic retry's delay in milliseconds, doubled at each
    /// further one (default 1,000).
    pub retry_backoff_ms: Option<u64>,
    /// [`NodeConfig::receive_window`](crate::NodeConfig), in sequence
    /// numbers (default 64).
    pub receive_window: Option<u64>,
    /// [`NodeConfig::max_buffered_bytes_per_session`](crate::NodeConfig),
    /// in KiB (default 4096).
    pub max_buffered_kb_per_session: Option<usize>,
    /// [`NodeConfig::max_responders_per_peer`](crate::NodeConfig)
    /// (default 256).
    pub max_responders_per_peer: Option<u32>,
    /// [`NodeConfig::session_retention`](crate::NodeConfig) in hours
    /// (default 336, 14 days).
    pub session_retention_hours: Option<u64>,
}

/// `[store]`: which database keeps the node's checkpoints, and how.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Which store (default redb, the embedded file `database` names).
    pub kind: Option<StoreKind>,
    /// redb: record redb's allocator state with every commit (default
    /// `true`): opening after a crash then takes milliseconds instead of a
    /// repair that grows with the file, at the cost of a second fsync per
    /// commit.
    pub quick_repair: Option<bool>,
    /// redb: the page cache in MiB (default 32).
    pub cache_mb: Option<usize>,
    /// redb: journal each commit as one record and apply the records to
    /// the tables every this many MiB (default 4; 0 turns the journal
    /// off). See [`RedbOptions::journal_bytes`](crate::store::RedbOptions::journal_bytes).
    pub journal_mb: Option<usize>,
    /// PostgreSQL: the connection string (a `postgresql://` URL or libpq's
    /// `key=value` pairs); the tables go into the first schema of its
    /// `search_path`.
    pub connection: Option<String>,
}

/// `[store] kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded redb file (the default).
    #[default]
    Redb,
    /// A PostgreSQL schema (needs the `postgres` feature, on by default).
    Postgres,
}

/// The store a node opens at start, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The redb file at the node's `database` path.
    Redb(crate::store::RedbOptions),
    /// A PostgreSQL schema.
    Postgres {
        /// The connection string.
        connection: String,
    },
}

impl StoreSection {
    /// The store options: defaults overridden by what is set. Commits are
    /// always durable (fsync): a node that loses commits on a crash would
    /// break exactly-once processing.
    pub fn redb_options(&self) -> crate::store::RedbOptions {
        let mut o = crate::store::RedbOptions::default();
        if let Some(q) = self.quick_repair {
            o.quick_repair = q;
        }
        if let Some(mb) = self.cache_mb {
            o.cache_bytes = mb.saturating_mul(1024 * 1024);
        }
        if let Some(mb) = self.journal_mb {
            o.journal_bytes = mb.saturating_mul(1024 * 1024);
        }
        o
    }

    /// The store this section selects; an error names a setting that does
    /// not belong to the chosen kind, or one that is missing.
    pub fn choice(&self) -> Result<StoreChoice, String> {
        match self.kind.unwrap_or_default() {
            StoreKind::Redb => match self.connection {
                Some(_) => Err("`connection` is a setting of kind = \"postgres\"; \
                     the store is redb (set kind = \"postgres\" to use PostgreSQL)"
                    .into()),
                None => Ok(StoreChoice::Redb(self.redb_options())),
            },
            StoreKind::Postgres => {
                if self.quick_repair.is_some()
                    || self.cache_mb.is_some()
                    || self.journal_mb.is_some()
                {
                    return Err(
                        "`quick_repair`, `cache_mb` and `journal_mb` are redb settings; \
                         remove them with kind = \"postgres\""
                            .into(),
                    );
                }
                match &self.connection {
                    Some(c) if !c.trim().is_empty() => Ok(StoreChoice::Postgres {
                        connection: c.clone(),
                    }),
                    _ => Err("kind = \"postgres\" needs `connection`, the database's \
                         connection string"
                        .into()),
                }
            }
        }
    }
}

impl TransportSection {
    /// The transport configuration: defaults overridden by what is set.
    pub fn tcp_config(&self) -> TcpConfig {
        let mut c = TcpConfig::default();
        let ms = Duration::from_millis;
        if let Some(v) = self.max_frame_bytes {
            c.max_frame_len = v;
        }
        if let Some(v) = self.peer_queue_frames {
            c.peer_queue_len = v;
        }
        if let Some(v) = self.peer_queue_mb {
            c.peer_queue_bytes = v.saturating_mul(1024 * 1024);
        }
        if let Some(v) = self.incoming_queue_mb {
            c.incoming_queue_bytes = v.saturating_mul(1024 * 1024);
        }
        if let Some(v) = self.incoming_peer_mb {
            c.incoming_peer_bytes = v.saturating_mul(1024 * 1024);
        }
        if let Some(v) = self.connect_timeout_ms {
            c.connect_timeout = ms(v);
        }
        if let Some(v) = self.handshake_timeout_ms {
            c.handshake_timeout = ms(v);
        }
        if let Some(v) = self.max_handshakes {
            c.max_handshakes = v;
        }
        if let Some(v) = self.max_handshakes_per_address {
            c.max_handshakes_per_address = v;
        }
        if let Some(v) = self.backoff_min_ms {
            c.backoff_min = ms(v);
        }
        if let Some(v) = self.backoff_max_ms {
            c.backoff_max = ms(v);
        }
        c
    }
}

impl NodeSection {
    /// The redelivery interval.
    pub fn redelivery_interval(&self) -> Duration {
        Duration::from_millis(self.redelivery_interval_ms.unwrap_or(1000))
    }

    /// The interval between long-wait checks.
    pub fn long_wait_check_interval(&self) -> Duration {
        Duration::from_secs(self.long_wait_check_interval_s.unwrap_or(300))
    }

    /// The node's step-engine settings: the defaults, with what this
    /// section sets.
    pub fn node_config(&self) -> crate::NodeConfig {
        let mut config = crate::NodeConfig::default();
        if let Some(mb) = self.checkpoint_cache_mb {
            config.checkpoint_cache_bytes = mb.saturating_mul(1024 * 1024);
        }
        if let Some(secs) = self.long_wait_warning_s {
            config.long_wait_warning = Duration::from_secs(secs);
        }
        if let Some(n) = self.max_transient_retries {
            config.max_transient_retries = n;
        }
        if let Some(ms) = self.retry_backoff_ms {
            config.retry_backoff = Duration::from_millis(ms);
        }
        if let Some(window) = self.receive_window {
            config.receive_window = window.max(1);
        }
        if let Some(kb) = self.max_buffered_kb_per_session {
            config.max_buffered_bytes_per_session = kb.saturating_mul(1024);
        }
        if let Some(n) = self.max_responders_per_peer {
            config.max_responders_per_peer = n.max(1);
        }
        if let Some(hours) = self.session_retention_hours {
            config.session_retention = Duration::from_secs(hours.max(1).saturating_mul(3600));
        }
        config
    }
}

/// A configuration with its key and network map loaded and checked.
pub struct LoadedConfig {
    /// The file's settings.
    pub config: Config,
    /// The node's identity key.
    pub identity: SigningKey,
    /// The network map.
    pub map: NetworkMap,
}

impl std::fmt::Debug for LoadedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedConfig")
            .field("config", &self.config)
            .field("identity", &keys::public_key(&self.identity))
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Parses TOML; relative paths are resolved against `base_dir`.
    pub fn from_toml_str(
        text: &str,
        base_dir: &Path,
        shown_path: &str,
    ) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown_path.to_owned(),
            message: e.to_string(),
        })?;
        config.store.choice().map_err(|why| ConfigError::Parse {
            path: shown_path.to_owned(),
            message: format!("[store]: {why}"),
        })?;
        for p in [
            &mut config.identity_key,
            &mut config.database,
            &mut config.network_map,
        ] {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        }
        if let Some(p) = &mut config.admin.token_file
            && p.is_relative()
        {
            *p = base_dir.join(&*p);
        }
        Ok(config)
    }

    /// Reads the file at `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_str(&text, base, &shown)
    }

    /// Loads the identity key and network map, and checks that the map
    /// lists this node under its name with its key.
    pub fn load(self) -> Result<LoadedConfig, ConfigError> {
        let identity = keys::read_key_file(&self.identity_key)?;
        let map = NetworkMap::load(&self.network_map)?;
        let key = keys::public_key(&identity);
        match map.by_name(&self.name) {
            Some(entry) if entry.key == key => {}
            _ => {
                return Err(ConfigError::IdentityMismatch {
                    name: self.name.clone(),
                    key: hex::encode(key.0),
                    listed: map
                        .entries()
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(LoadedConfig {
            config: self,
            identity,
            map,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::PeerEntry;

    fn write_network(dir: &Path, name: &str) -> SigningKey {
        let key = keys::generate_identity().unwrap();
        keys::write_key_file(&dir.join("node.key"), &key).unwrap();
        let other = keys::generate_identity().unwrap();
        let map = NetworkMap::new([
            PeerEntry {
                name: name.into(),
                address: "127.0.0.1:7001".into(),
                key: keys::public_key(&key),
            },
            PeerEntry {
                name: "Other".into(),
                address: "127.0.0.1:7002".into(),
                key: keys::public_key(&other),
            },
        ])
        .unwrap();
        std::fs::write(dir.join("network.toml"), map.to_toml_string()).unwrap();
        key
    }

    const CONFIG: &str = r#"
name = "Alice"
identity_key = "node.key"
listen = "127.0.0.1:7001"
database = "alice.redb"
network_map = "network.toml"

[transport]
max_frame_bytes = 1000
backoff_max_ms = 300
incoming_queue_mb = 8
incoming_peer_mb = 2

[node]
redelivery_interval_ms = 250
checkpoint_cache_mb = 2
long_wait_warning_s = 60
long_wait_check_interval_s = 0

[store]
quick_repair = false
"#;

    #[test]
    fn loads_relative_paths_and_checks_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let key = write_network(dir.path(), "Alice");
        std::fs::write(dir.path().join("node.toml"), CONFIG).unwrap();
        let config = Config::read(&dir.path().join("node.toml")).unwrap();
        assert_eq!(config.database, dir.path().join("alice.redb"));
        assert_eq!(config.transport.tcp_config().max_frame_len, 1000);
        let incoming = config.transport.tcp_config().incoming_limits();
        assert_eq!(incoming.bytes, 8 * 1024 * 1024);
        assert_eq!(incoming.peer_bytes, 2 * 1024 * 1024);
        assert_eq!(
            config.transport.tcp_config().backoff_max,
            Duration::from_millis(300)
        );
        assert_eq!(
            config.node.redelivery_interval(),
            Duration::from_millis(250)
        );
        assert_eq!(config.node.node_config().checkpoint_cache_bytes, 2 << 20);
        assert_eq!(
            config.node.node_config().long_wait_warning,
            Duration::from_secs(60)
        );
        assert_eq!(config.node.long_wait_check_interval(), Duration::ZERO);
        let loaded = config.load().unwrap();
        assert_eq!(loaded.identity.to_bytes(), key.to_bytes());
        assert_eq!(loaded.map.entries().len(), 2);
    }

    #[test]
    fn a_name_that_does_not_match_the_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_network(dir.path(), "Bob");
        std::fs::write(dir.path().join("node.toml"), CONFIG).unwrap();
        let err = Config::read(&dir.path().join("node.toml"))
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no party `Alice`"), "{err}");
        assert!(err.contains("Bob, Other"), "{err}");
    }

    #[test]
    fn unknown_settings_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{CONFIG}\nlisten_port = 3\n");
        let err = Config::from_toml_str(&text, dir.path(), "node.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_port"), "{err}");
    }

    /// `CONFIG` with its `[store]` section replaced by `store`.
    fn with_store(store: &str) -> String {
        let base = CONFIG.split("[store]").next().unwrap_or_default();
        format!("{base}[store]\n{store}\n")
    }

    #[test]
    fn the_store_is_redb_unless_postgres_is_chosen_with_a_connection() {
        let dir = tempfile::tempdir().unwrap();
        let parse =
            |store: &str| Config::from_toml_str(&with_store(store), dir.path(), "node.toml");
        let redb = parse("quick_repair = false\njournal_mb = 16")
            .unwrap()
            .store
            .choice()
            .unwrap();
        assert!(
            matches!(redb, StoreChoice::Redb(o) if !o.quick_repair && o.journal_bytes == 16 << 20)
        );
        let plain = parse("").unwrap().store.choice().unwrap();
        assert_eq!(
            plain,
            StoreChoice::Redb(crate::store::RedbOptions::default())
        );
        let pg = parse("kind = \"postgres\"\nconnection = \"host=db user=alice\"")
            .unwrap()
            .store
            .choice()
            .unwrap();
        assert_eq!(
            pg,
            StoreChoice::Postgres {
                connection: "host=db user=alice".into()
            }
        );
        for (store, says) in [
            ("kind = \"postgres\"", "needs `connection`"),
            (
                "kind = \"postgres\"\nconnection = \" \"",
                "needs `connection`",
            ),
            (
                "kind = \"postgres\"\nconnection = \"host=db\"\ncache_mb = 3",
                "redb settings",
            ),
            (
                "kind = \"postgres\"\nconnection = \"host=db\"\njournal_mb = 0",
                "redb settings",
            ),
            ("connection = \"host=db\"", "setting of kind = \"postgres\""),
            ("kind = \"sqlite\"", "unknown variant `sqlite`"),
            (
                "kind = \"postgres\"\nconnection = \"x\"\nurl = \"y\"",
                "unknown field `url`",
            ),
        ] {
            let err = parse(store).unwrap_err().to_string();
            assert!(err.contains(says), "{store}: {err}");
        }
    }
}
