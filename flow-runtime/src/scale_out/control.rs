//! The control schema of a scale-out node: the tables gateway and workers
//! share (the partition count, the leases, the workers' heartbeats, the
//! relay queues, start requests) and the schemas of the partitions, created
//! and checked by [`Control::connect`].

use crate::store::{StoreError, quote_ident};
use postgres::{Client, Config, NoTls};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The version of the control tables' layout; a control schema laid out by
/// another version is refused.
pub const CONTROL_LAYOUT: i32 = 1;

/// How long connecting keeps retrying an unreachable server.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("PostgreSQL (scale-out): {context}: {e}"))
}

/// [`err`] with the server's message for a client error.
pub(crate) fn pg_err(context: &str, e: &postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => err(context, format!("{} ({})", db.message(), db.code().code())),
        None => err(context, e),
    }
}

/// The tables, created if missing. Why each:
///
/// * `flow_scale_out`: the layout version and the partition count, fixed
///   when the node is first set up (a flow's partition follows from its
///   session ids, so the count cannot change under flows in flight);
/// * `flow_leases`: one row per partition; `token` grows at every claim
///   and is the fencing token commits are checked against;
/// * `flow_workers`: workers' heartbeats, so each claims a fair share;
/// * `flow_inbox`, `flow_emitted`: the relay between the gateway's peer
///   links and the workers. UNLOGGED (no WAL): a frame lost with them
///   (a server crash) is one the session protocol redelivers anyway.
///   `flow_inbox`'s ids come from a logged sequence of their own: a
///   worker reads each partition's rows after the last id it handed on,
///   and the sequence of a `bigserial` column of an unlogged table starts
///   again at 1 after a crash, so the rows queued after the restart
///   would sit below every worker's cursor and never be read;
/// * `flow_starts`: start requests waiting for their partition's worker.
const CREATE_SQL: &str = "
CREATE TABLE IF NOT EXISTS flow_scale_out (
    id integer PRIMARY KEY CHECK (id = 1),
    layout integer NOT NULL,
    partitions integer NOT NULL
);
CREATE TABLE IF NOT EXISTS flow_leases (
    partition integer PRIMARY KEY,
    holder text,
    token bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE TABLE IF NOT EXISTS flow_workers (
    name text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS flow_inbox_ids;
CREATE UNLOGGED TABLE IF NOT EXISTS flow_inbox (
    id bigint PRIMARY KEY DEFAULT nextval('flow_inbox_ids'),
    partition integer NOT NULL,
    peer bytea NOT NULL,
    frame bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS flow_inbox_by_partition ON flow_inbox (partition, id);
CREATE UNLOGGED TABLE IF NOT EXISTS flow_emitted (
    id bigserial PRIMARY KEY,
    peer bytea NOT NULL,
    frame bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS flow_starts (
    client_id text PRIMARY KEY,
    partition integer NOT NULL,
    flow text NOT NULL,
    args text NOT NULL
);";

/// The lease check every partition commit makes (see
/// `PostgresStore`'s fence): raises `FL001` unless the lease row still
/// carries the token and has not expired, and locks it until the commit
/// ends.
const CHECK_LEASE_SQL: &str = "
CREATE OR REPLACE FUNCTION {schema}.flow_check_lease(p integer, t bigint) RETURNS boolean
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM 1 FROM {schema}.flow_leases
        WHERE partition = p AND token = t AND expires_at > now() FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'this worker no longer holds the lease on partition % (token %): it expired or another worker took the partition over', p, t
            USING ERRCODE = 'FL001';
    END IF;
    RETURN true;
END
$fn$;";

/// A connection to a scale-out node's control schema.
pub struct Control {
    pub(crate) client: Client,
    /// The connection settings (partitions' connections derive from them).
    pub(crate) config: Config,
    /// The control schema's name.
    pub(crate) schema: String,
    /// The number of partitions.
    pub(crate) partitions: u32,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("schema", &self.schema)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Connects to the node's schema (the first of the connection's
    /// `search_path`), creating the control tables and `partitions`
    /// partition schemas (`<schema>_p0`...) the first time; later, the
    /// recorded count wins and a different `partitions` is refused.
    /// Retries an unreachable server for up to 30 s.
    pub fn connect(connection: &str, partitions: u32) -> Result<Self, StoreError> {
        let config =
            Config::from_str(connection).map_err(|e| err("the connection string is invalid", e))?;
        Self::connect_with(config, partitions)
    }

    pub(crate) fn connect_with(config: Config, partitions: u32) -> Result<Self, StoreError> {
        if partitions == 0 || partitions > 1024 {
            return Err(err("partitions", "must be 1 to 1024"));
        }
        let mut client = connect_patiently(&config)?;
        let schema: Option<String> = client
            .query_one("SELECT current_schema()", &[])
            .map_err(|e| pg_err("cannot read the current schema", &e))?
            .get(0);
        let schema = schema.ok_or_else(|| {
            err(
                "the connection's search_path names no existing schema",
                "create the node's schema first (CREATE SCHEMA ...)",
            )
        })?;
        let partitions = set_up(&mut client, &schema, partitions)?;
        Ok(Self {
            client,
            config,
            schema,
            partitions,
        })
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The control schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The partition that starts flows requested with `key` (see
    /// [`request_start_keyed`](Self::request_start_keyed)); the same on
    /// every build and platform.
    pub fn partition_of_key(&self, key: &str) -> u32 {
        start_partition(key, self.partitions)
    }

    /// The schema of partition `p`.
    pub(crate) fn partition_schema(&self, p: u32) -> String {
        partition_schema(&self.schema, p)
    }

    /// A new connection with the same settings (for a thread of its own).
    pub(crate) fn reconnect(&self) -> Result<Client, StoreError> {
        connect_patiently(&self.config)
    }

    /// The connection settings of partition `p`'s store: the node's, with
    /// the partition's schema first on the `search_path`.
    pub(crate) fn partition_config(&self, p: u32) -> Config {
        let mut config = self.config.clone();
        let options = config.get_options().unwrap_or("").to_owned();
        config.options(&format!(
            "{options} -c search_path={}",
            self.partition_schema(p)
        ));
        config
    }

    /// Queues a start request: the worker holding `client_id`'s partition
    /// starts flow `flow` (registered startable on the workers) with the
    /// JSON `args`, once (a request whose client id was seen before is
    /// ignored here, and the node ignores a client id it already started).
    pub fn request_start(
        &mut self,
        client_id: &str,
        flow: &str,
        args: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.request_start_keyed(client_id, client_id, flow, args)
    }

    /// [`request_start`](Self::request_start) in the partition of `key`
    /// instead of the client id's: flows started with the same key run in
    /// the same partition and so see the same services' tables (the
    /// partition's vault: a paper issued by one flow can be sold by the
    /// next). Give a client id always with the same key: the node
    /// recognises a client id it already started only in its partition.
    pub fn request_start_keyed(
        &mut self,
        key: &str,
        client_id: &str,
        flow: &str,
        args: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.request_starts(&[StartRequest {
            key: key.to_owned(),
            client_id: client_id.to_owned(),
            flow: flow.to_owned(),
            args: args.clone(),
        }])
    }

    /// Queues many start requests in one statement (each as
    /// [`request_start_keyed`](Self::request_start_keyed)).
    pub fn request_starts(&mut self, requests: &[StartRequest]) -> Result<(), StoreError> {
        let partitions: Vec<i32> = requests
            .iter()
            .map(|r| start_partition(&r.key, self.partitions) as i32)
            .collect();
        let ids: Vec<&str> = requests.iter().map(|r| r.client_id.as_str()).collect();
        let flows: Vec<&str> = requests.iter().map(|r| r.flow.as_str()).collect();
        let args: Vec<String> = requests.iter().map(|r| r.args.to_string()).collect();
        self.client
            .execute(
                "INSERT INTO flow_starts (client_id, partition, flow, args) \
                 SELECT * FROM unnest($1::text[], $2::integer[], $3::text[], $4::text[]) \
                 ON CONFLICT (client_id) DO NOTHING",
                &[&ids, &partitions, &flows, &args],
            )
            .map_err(|e| pg_err("cannot queue start requests", &e))?;
        Ok(())
    }
}

/// A flow a client asks a scale-out node to start (see
/// [`Control::request_starts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    /// Chooses the partition: requests with the same key start in the same
    /// partition (the client id itself, unless flows must meet).
    pub key: String,
    /// The client id the flow is started under, once.
    pub client_id: String,
    /// The `Flow::NAME` of a flow registered startable on the workers.
    pub flow: String,
    /// Its arguments.
    pub args: serde_json::Value,
}

/// Partition `p`'s schema name.
pub(crate) fn partition_schema(schema: &str, p: u32) -> String {
    format!("{schema}_p{p}")
}

/// The partition that starts the flow with `client_id` (FNV-1a: stable
/// across builds and platforms, unlike std's hasher).
pub(crate) fn start_partition(client_id: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions)) as u32
}

/// Connects, retrying for up to [`CONNECT_PATIENCE`].
pub(crate) fn connect_patiently(config: &Config) -> Result<Client, StoreError> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut pause = Duration::from_millis(20);
    loop {
        match config.connect(NoTls) {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() + pause >= deadline => {
                return Err(pg_err("cannot connect", &e));
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL unreachable; retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Creates what is missing (one setter at a time: concurrent `CREATE ...
/// IF NOT EXISTS` can collide) and returns the recorded partition count.
fn set_up(client: &mut Client, schema: &str, partitions: u32) -> Result<u32, StoreError> {
    let mut tx = client
        .transaction()
        .map_err(|e| pg_err("cannot begin the set-up", &e))?;
    // (`IF NOT EXISTS` notices on every start are noise.)
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .map_err(|e| pg_err("cannot begin the set-up", &e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('flow-runtime scale-out set-up ' || $1))",
        &[&schema],
    )
    .map_err(|e| pg_err("cannot take the set-up lock", &e))?;
    tx.batch_execute(CREATE_SQL)
        .map_err(|e| pg_err("cannot create the control tables", &e))?;
    tx.batch_execute(&CHECK_LEASE_SQL.replace("{schema}", &quote_ident(schema)))
        .map_err(|e| pg_err("cannot create the lease check", &e))?;
    let wanted = partitions as i32;
    tx.execute(
        "INSERT INTO flow_scale_out (id, layout, partitions) VALUES (1, $1, $2) \
         ON CONFLICT (id) DO NOTHING",
        &[&CONTROL_LAYOUT, &wanted],
    )
    .map_err(|e| pg_err("cannot record the partition count", &e))?;
    let row = tx
        .query_one(
            "SELECT layout, partitions FROM flow_scale_out WHERE id = 1",
            &[],
        )
        .map_err(|e| pg_err("cannot read the partition count", &e))?;
    let (layout, recorded): (i32, i32) = (row.get(0), row.get(1));
    if layout != CONTROL_LAYOUT {
        return Err(err(
            "the control tables",
            format!("laid out by version {layout}; this build uses {CONTROL_LAYOUT}"),
        ));
    }
    if recorded != wanted {
        return Err(err(
            "the partition count",
            format!(
                "the node was set up with {recorded} partitions, not {wanted}: a flow's partition \
                 follows from the count, so it cannot change while flows may be in flight"
            ),
        ));
    }
    for p in 0..partitions {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(&partition_schema(schema, p))
        ))
        .map_err(|e| pg_err("cannot create a partition's schema", &e))?;
    }
    tx.execute(
        "INSERT INTO flow_leases (partition) SELECT generate_series(0, $1 - 1) \
         ON CONFLICT (partition) DO NOTHING",
        &[&wanted],
    )
    .map_err(|e| pg_err("cannot create the leases", &e))?;
    tx.commit()
        .map_err(|e| pg_err("cannot commit the set-up", &e))?;
    Ok(partitions)
}
