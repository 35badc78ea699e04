//! [`PostgresStore`]: a [`Store`] in a PostgreSQL database, for a node whose
//! storage must live outside its machine (managed backups, replication,
//! point-in-time recovery) or, later, be shared by several worker processes.
//!
//! # Why the sync `postgres` crate, on a thread of its own
//!
//! [`Store`] is a blocking interface: the node core calls it in the middle
//! of a step, on whatever thread runs the node (a tokio worker inside
//! `block_in_place`, a current-thread runtime, a benchmark's plain thread,
//! a blocking thread of the operator scan). The `postgres` crate is the
//! community's blocking client, a thin layer over `tokio-postgres` (the
//! same protocol code, prepared statements, binary parameters); but it
//! drives its connection with a runtime of its own and so panics when
//! called on a thread that already runs a tokio runtime. The store
//! therefore owns ONE thread that holds the connection, and every call is
//! handed to it over a channel: the node may call from any thread, calls
//! are serialised exactly as on one connection, and the cost (a thread
//! hand-off, a few microseconds) is small against a round trip to the
//! server. `tokio-postgres` directly would need an async `Store` or the
//! same hand-off written by hand.
//!
//! # Layout (schema version [`SCHEMA_VERSION`])
//!
//! All of the node's keyed tables live in one SQL table,
//! `flow_kv(tbl text, key bytea, value bytea, PRIMARY KEY (tbl, key))`.
//! PostgreSQL orders `bytea` bytewise, shorter first on a common prefix:
//! the same order as redb's, so range reads are the same. A one-row table
//! `flow_store` records the layout's version and the token of the last
//! commit (see below). Both are created, in the first schema of the
//! connection's `search_path`, when a store is first opened; a database
//! laid out by another version is refused. The node's own storage-format
//! row lives in its `meta` table, as with redb.
//!
//! # Guarantees
//!
//! * **One node per schema.** Opening takes a session-level advisory lock
//!   named after the schema and holds it while connected; a second node
//!   (or a second process of the same node) pointed at the same schema is
//!   refused instead of interleaving its commits.
//! * **All-or-nothing commits, one round trip.** A [`WriteBatch`] is
//!   reduced to its net effect (the last op per key) and sent as ONE
//!   statement whose arrays carry every change, so it commits as one
//!   transaction, durable per the server's `synchronous_commit` (on by
//!   default: flushed to the WAL before the answer).
//! * **A commit's outcome is never guessed.** When the connection breaks
//!   while a commit is in flight, the store cannot tell from the error
//!   whether the server committed it. Each commit therefore also writes a
//!   fresh token into `flow_store`; the store reconnects and reads the
//!   token back: present means committed (the call succeeds), absent means
//!   not (the call fails, and the node treats the batch as not having
//!   happened). If the database cannot be reached again within
//!   [`PostgresOptions::reconnect_timeout`], the store refuses every later
//!   call: the node must be restarted, and then reads what was committed.
//! * **Reconnects.** Any call that finds the connection broken reconnects
//!   (retrying for up to `reconnect_timeout`); reads that fail because the
//!   connection broke are retried once on the new connection.
//!
//! The connection is unencrypted (`NoTls`): connect over a Unix socket or
//! the loopback interface, or through a TLS-terminating proxy.

use super::{Entries, Store, StoreError, Table, WriteBatch};
use postgres::{Client, Config, NoTls, Statement};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The version of the SQL layout this build creates and reads. Bump it with
/// any change to the SQL tables, and teach [`PostgresStore::open`] to
/// migrate or refuse older layouts.
pub const SCHEMA_VERSION: i32 = 1;

/// How a [`PostgresStore`] connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresOptions {
    /// How long a call waits for a broken connection to come back (retrying
    /// with backoff) before it fails; also how long a commit whose outcome
    /// is unknown keeps trying to learn it (default 30 s).
    pub reconnect_timeout: Duration,
    /// How long opening waits for another holder of the schema's lock to go
    /// away (default 5 s): a node restarted right after a crash may find
    /// its previous connection not yet closed by the server.
    pub lock_wait: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            reconnect_timeout: Duration::from_secs(30),
            lock_wait: Duration::from_secs(5),
        }
    }
}

/// What makes a [`PostgresStore`] of a scale-out partition refuse commits
/// once its worker no longer holds the partition's lease (see
/// `crate::scale_out`): every commit checks, in the same statement and
/// so the same transaction, that the lease row of `partition` in the
/// control schema still carries `token` and has not expired, and is
/// refused (SQLSTATE `FL001`) otherwise. Such a store takes no advisory
/// lock on its schema: the lease is what makes its worker the only writer.
///
/// The same commit also deletes the relay's inbound rows (`flow_inbox` in
/// the control schema) the partition's node has consumed since the last
/// commit, as `consumed` reports them: a frame's row goes in the very
/// transaction that commits what handling it changed, so a worker killed
/// or fenced at any point leaves every frame either applied and gone, or
/// unapplied and still queued for the partition's next holder.
#[derive(Clone)]
pub(crate) struct Fence {
    /// The control schema (holds `flow_leases` and `flow_check_lease`).
    pub(crate) control_schema: String,
    /// The partition.
    pub(crate) partition: i32,
    /// The fencing token the lease was claimed with.
    pub(crate) token: i64,
    /// The inbox rows the partition's node has consumed, if it reads any.
    pub(crate) consumed: Option<Arc<dyn ConsumedFrames>>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("control_schema", &self.control_schema)
            .field("partition", &self.partition)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Which of the relay's inbound rows (`flow_inbox` ids) a partition's node
/// has consumed: the fenced store deletes them in its next commit (see
/// [`Fence`]). Implemented by the scale-out relay, which knows which rows
/// it handed to the node and how many of those the node has taken.
pub(crate) trait ConsumedFrames: Send + Sync {
    /// The ids consumed and not yet deleted by a commit (every one the node
    /// took before this call), oldest first.
    fn pending(&self) -> Vec<i64>;
    /// `ids` (a prefix of what [`pending`](Self::pending) returned) were
    /// deleted by a commit that succeeded.
    fn committed(&self, ids: &[i64]);
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A job for the connection thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A [`Store`] on a PostgreSQL schema. See the module docs for the layout
/// and what it guarantees.
pub struct PostgresStore {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("PostgreSQL: {context}: {e}"))
}

/// [`err`] for the client's errors, with the server's message.
fn pg_err(context: &str, e: &postgres::Error) -> StoreError {
    err(context, describe(e))
}

impl PostgresStore {
    /// Connects to the database `connection` names (a `postgresql://` URL
    /// or `key=value` pairs, as libpq takes them), takes the schema's lock,
    /// creates the tables if they are missing and checks their version.
    pub fn open(connection: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let config =
            Config::from_str(connection).map_err(|e| err("the connection string is invalid", e))?;
        Self::open_with(config, options, None)
    }

    /// [`open`](Self::open) with a parsed configuration, and optionally a
    /// [`Fence`] instead of the schema's advisory lock.
    pub(crate) fn open_with(
        config: Config,
        options: PostgresOptions,
        fence: Option<Fence>,
    ) -> Result<Self, StoreError> {
        let mut conn = Connection {
            config,
            options,
            fence,
            live: None,
            refused: None,
            nonce: rand::random(),
            commits: 0,
        };
        // The first connection is made on the connection thread too: the
        // client cannot run on a thread that runs a tokio runtime, and
        // `open` may be called on one.
        let (opened, outcome) = mpsc::sync_channel(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("postgres-store".into())
            .spawn(move || {
                let connected = conn.connect_once(options.lock_wait);
                let ok = connected.is_ok();
                let _ = opened.send(connected);
                if ok {
                    while let Ok(job) = queue.recv() {
                        job(&mut conn);
                    }
                    conn.close();
                }
            })
            .map_err(|e| err("cannot start the connection thread", e))?;
        let connected = outcome
            .recv()
            .map_err(|_| StoreError("PostgreSQL: the connection thread has stopped".into()))
            .and_then(|r| r);
        if let Err(e) = connected {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `job` on the connection thread and waits for its answer.
    fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| StoreError("PostgreSQL: the store is closed".into()))?;
        jobs.send(Box::new(move |conn: &mut Connection| {
            let _ = reply.send(job(conn));
        }))
        .map_err(|_| StoreError("PostgreSQL: the connection thread has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| StoreError("PostgreSQL: the connection thread has stopped".into()))?
    }
}

impl Drop for PostgresStore {
    /// Closes the connection (releasing the schema's lock) before returning,
    /// so the same node can open the schema again right away.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Store for PostgresStore {
    fn get(&self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let (table, key) = (table.name().to_owned(), key.to_vec());
        self.call(move |conn| {
            conn.read("reading", |client, s| {
                let row = client.query_opt(&s.get, &[&table, &key])?;
                Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
            })
        })
    }

    fn range(
        &self,
        table: &Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let (table, from, to) = (
            table.name().to_owned(),
            from.to_vec(),
            to.map(<[u8]>::to_vec),
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |conn| {
            conn.read("reading a range", |client, s| {
                let rows = match &to {
                    Some(to) => client.query(&s.range_to, &[&table, &from, to, &limit])?,
                    None => client.query(&s.range_open, &[&table, &from, &limit])?,
                };
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                    .collect())
            })
        })
    }

    fn len(&self, table: &Table) -> Result<u64, StoreError> {
        let table = table.name().to_owned();
        self.call(move |conn| {
            conn.read("counting", |client, s| {
                let n: i64 = client.query_one(&s.len, &[&table])?.get(0);
                Ok(u64::try_from(n).unwrap_or(0))
            })
        })
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.call(move |conn| conn.commit(batch))
    }
}

/// The statements every call uses, prepared once per connection.
struct Statements {
    get: Statement,
    range_to: Statement,
    range_open: Statement,
    len: Statement,
    write: Statement,
    last_commit: Statement,
}

/// One batch's net changes as the arrays the write statement takes.
#[derive(Default)]
struct Arrays<'a> {
    range_tables: Vec<&'a str>,
    range_from: Vec<&'a [u8]>,
    range_to: Vec<&'a [u8]>,
    put_tables: Vec<&'a str>,
    put_keys: Vec<&'a [u8]>,
    put_values: Vec<&'a [u8]>,
    delete_tables: Vec<&'a str>,
    delete_keys: Vec<&'a [u8]>,
}

/// Removes the ranges (except keys the batch itself writes: a put inside a
/// removed range stays, and no row is changed twice by one statement),
/// deletes and upserts the batch's keys, and records the commit's token,
/// all in one statement and so one transaction.
const WRITE_SQL: &str = "
WITH removed AS (
    DELETE FROM flow_kv k
    USING unnest($1::text[], $2::bytea[], $3::bytea[]) AS r(tbl, lo, hi)
    WHERE k.tbl = r.tbl AND k.key >= r.lo AND k.key < r.hi
      AND NOT EXISTS (SELECT 1 FROM unnest($4::text[], $5::bytea[]) AS p(tbl, key)
                      WHERE p.tbl = k.tbl AND p.key = k.key)
      AND NOT EXISTS (SELECT 1 FROM unnest($7::text[], $8::bytea[]) AS d(tbl, key)
                      WHERE d.tbl = k.tbl AND d.key = k.key)
), deleted AS (
    DELETE FROM flow_kv k
    USING unnest($7::text[], $8::bytea[]) AS d(tbl, key)
    WHERE k.tbl = d.tbl AND k.key = d.key
), marked AS (
    UPDATE flow_store SET last_commit = $9 WHERE id = 1
)
INSERT INTO flow_kv (tbl, key, value)
SELECT * FROM unnest($4::text[], $5::bytea[], $6::bytea[])
ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value";

/// [`WRITE_SQL`], with the lease check of `fence` (parameters `$10`, the
/// partition, and `$11`, the token) on the one row every commit updates:
/// the check runs exactly once per commit, and when it raises, the whole
/// statement (every change of the batch) is rolled back. The check locks
/// the lease row until the commit ends, so a worker taking the partition
/// over waits for a commit in flight instead of racing it. The same
/// statement deletes the partition's consumed inbox rows (`$12`, their
/// ids; see [`Fence`]).
fn write_sql(fence: Option<&Fence>) -> String {
    match fence {
        None => WRITE_SQL.to_owned(),
        Some(f) => {
            let control = quote_ident(&f.control_schema);
            WRITE_SQL.replace(
                "UPDATE flow_store SET last_commit = $9 WHERE id = 1\n)",
                &format!(
                    "UPDATE flow_store SET last_commit = $9 \
                     WHERE id = 1 AND {control}.flow_check_lease($10::integer, $11::bigint)\n\
                     ), consumed AS (\n    \
                     DELETE FROM {control}.flow_inbox \
                     WHERE partition = $10::integer AND id = ANY($12::bigint[])\n)"
                ),
            )
        }
    }
}

const CREATE_SQL: &str = "
CREATE TABLE IF NOT EXISTS flow_store (
    id integer PRIMARY KEY CHECK (id = 1),
    schema_version integer NOT NULL,
    last_commit bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS flow_kv (
    tbl text NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tbl, key)
);";

/// The live connection and its prepared statements.
struct Live {
    client: Client,
    statements: Statements,
}

/// The connection thread's state.
struct Connection {
    config: Config,
    options: PostgresOptions,
    /// Commits are checked against this lease (and no advisory lock is
    /// taken), if set.
    fence: Option<Fence>,
    live: Option<Live>,
    /// Set when a commit's outcome could not be learned: every later call
    /// is refused with this text.
    refused: Option<String>,
    /// This store's random prefix of commit tokens.
    nonce: u64,
    /// Commits so far (the token's suffix).
    commits: u64,
}

/// Whether `e` means the connection broke (so the server may or may not
/// have done what was asked), rather than the server refusing the request:
/// no answer at all, or the server ending the session (SQLSTATE class 57,
/// e.g. an administrator's `pg_terminate_backend` or a shutdown, and class
/// 08, connection exceptions).
fn connection_lost(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("57") || code.starts_with("08")
        }
    }
}

/// `e` with the server's message (the crate's own text for a server error
/// is just "db error").
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}: {})", db.message(), db.severity(), db.code().code()),
        None => e.to_string(),
    }
}

impl Connection {
    /// Connects, takes the schema's lock (waiting up to `lock_wait` for a
    /// previous holder) and prepares the statements.
    fn connect_once(&mut self, lock_wait: Duration) -> Result<(), StoreError> {
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| pg_err("cannot connect", &e))?;
        let schema: Option<String> = client
            .query_one("SELECT current_schema()", &[])
            .map_err(|e| pg_err("cannot read the current schema", &e))?
            .get(0);
        let schema = schema.ok_or_else(|| {
            StoreError(
                "PostgreSQL: the connection's search_path names no existing schema; \
                 create the schema first (CREATE SCHEMA ...)"
                    .into(),
            )
        })?;
        let deadline = Instant::now() + lock_wait;
        while self.fence.is_none() {
            let locked: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext('flow-runtime store ' || $1))",
                    &[&schema],
                )
                .map_err(|e| pg_err("cannot take the schema's lock", &e))?
                .get(0);
            if locked {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StoreError(format!(
                    "PostgreSQL: another node is using schema `{schema}` of this database \
                     (it holds the schema's lock); each node needs a schema of its own"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        check_layout(&mut client)?;
        let statements = prepare(&mut client, self.fence.as_ref())?;
        self.live = Some(Live { client, statements });
        Ok(())
    }

    /// A live connection: the current one, or a new one, retrying for up to
    /// `reconnect_timeout`.
    fn ensure_live(&mut self) -> Result<&mut Live, StoreError> {
        if let Some(why) = &self.refused {
            return Err(StoreError(why.clone()));
        }
        if self.live.as_ref().is_some_and(|l| l.client.is_closed()) {
            self.live = None;
        }
        if self.live.is_none() {
            let deadline = Instant::now() + self.options.reconnect_timeout;
            let mut pause = Duration::from_millis(20);
            loop {
                match self.connect_once(self.options.lock_wait.min(self.options.reconnect_timeout))
                {
                    Ok(()) => {
                        tracing::info!("reconnected to PostgreSQL");
                        break;
                    }
                    Err(e) if Instant::now() + pause >= deadline => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e.0, "PostgreSQL unreachable; retrying");
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
            }
        }
        self.live
            .as_mut()
            .ok_or_else(|| err("reconnect", "no connection"))
    }

    /// Runs a read; if the connection broke under it, once more on a new
    /// connection (reads change nothing, so repeating one is safe).
    fn read<R>(
        &mut self,
        what: &str,
        query: impl Fn(&mut Client, &Statements) -> Result<R, postgres::Error>,
    ) -> Result<R, StoreError> {
        for attempt in 0..2 {
            let live = self.ensure_live()?;
            match query(&mut live.client, &live.statements) {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 && connection_lost(&e) => {
                    tracing::warn!(error = %describe(&e), "PostgreSQL connection lost while {what}; retrying");
                    self.live = None;
                }
                Err(e) => return Err(pg_err(what, &e)),
            }
        }
        Err(err(what, "the connection broke twice"))
    }

    /// Commits `batch` (with the consumed inbox rows, if fenced): nothing
    /// to do for an empty batch with no consumed rows.
    fn commit(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        let consumed = self.fence.as_ref().and_then(|f| f.consumed.clone());
        let consumed_ids = consumed.as_ref().map(|c| c.pending()).unwrap_or_default();
        if batch.is_empty() && consumed_ids.is_empty() {
            return Ok(());
        }
        self.commit_with(&batch, &consumed_ids)?;
        if let Some(c) = consumed {
            c.committed(&consumed_ids);
        }
        Ok(())
    }

    fn commit_with(&mut self, batch: &WriteBatch, consumed: &Vec<i64>) -> Result<(), StoreError> {
        let token = self.next_token();
        let arrays = net_changes(batch);
        let fence = self
            .fence
            .as_ref()
            .map(|f| (f.partition, f.token, consumed));
        let live = self.ensure_live()?;
        let outcome = write(live, &arrays, &token, fence);
        match outcome {
            Ok(_) => Ok(()),
            Err(e) if !connection_lost(&e) => Err(pg_err("the commit was refused", &e)),
            Err(e) => {
                tracing::warn!(error = %describe(&e), "PostgreSQL connection lost during a commit; learning its outcome");
                self.live = None;
                if self.learn_outcome(&token, &e)? {
                    return Ok(());
                }
                // It provably did not commit: once more, on the new
                // connection (a token of its own, in case this breaks too).
                let retry_token = self.next_token();
                let live = self.ensure_live()?;
                let outcome = write(live, &arrays, &retry_token, fence);
                match outcome {
                    Ok(_) => Ok(()),
                    Err(e) if !connection_lost(&e) => Err(pg_err("the commit was refused", &e)),
                    Err(e) => {
                        self.live = None;
                        if self.learn_outcome(&retry_token, &e)? {
                            Ok(())
                        } else {
                            Err(pg_err("the connection broke twice during a commit", &e))
                        }
                    }
                }
            }
        }
    }

    /// A token no other commit of any store carries: this store's random
    /// nonce and its commit count.
    fn next_token(&mut self) -> Vec<u8> {
        self.commits += 1;
        let mut token = self.nonce.to_be_bytes().to_vec();
        token.extend_from_slice(&self.commits.to_be_bytes());
        token
    }

    /// After the connection broke during the commit of `token`: reconnects
    /// and reads whether it committed (`Ok(true)`) or not (`Ok(false)`).
    /// If that cannot be learned, refuses every later call (see the module
    /// docs).
    fn learn_outcome(&mut self, token: &[u8], cause: &postgres::Error) -> Result<bool, StoreError> {
        let recorded = self.ensure_live().and_then(|live| {
            live.client
                .query_one(&live.statements.last_commit, &[])
                .map(|row| row.get::<_, Vec<u8>>(0))
                .map_err(|e| pg_err("reading the last commit", &e))
        });
        match recorded {
            Ok(last) if last == token => {
                tracing::info!("the interrupted commit had committed");
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) => {
                let why = format!(
                    "PostgreSQL: the outcome of a commit is unknown (the connection broke during \
                     it: {}; and then: {}). The store accepts nothing more; restart the node, \
                     which then continues from what the database holds",
                    describe(cause),
                    e.0
                );
                tracing::error!("{why}");
                self.refused = Some(why.clone());
                Err(StoreError(why))
            }
        }
    }

    /// Releases the schema's lock and closes the connection.
    fn close(&mut self) {
        if let Some(mut live) = self.live.take() {
            let _ = live.client.batch_execute("SELECT pg_advisory_unlock_all()");
            let _ = live.client.close();
        }
    }
}

/// Runs the write statement: the batch's `arrays`, the commit's `token`,
/// and, if fenced, the lease `(partition, token)` and the consumed inbox
/// rows' ids.
fn write(
    live: &mut Live,
    arrays: &Arrays<'_>,
    token: &Vec<u8>,
    fence: Option<(i32, i64, &Vec<i64>)>,
) -> Result<u64, postgres::Error> {
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![
        &arrays.range_tables,
        &arrays.range_from,
        &arrays.range_to,
        &arrays.put_tables,
        &arrays.put_keys,
        &arrays.put_values,
        &arrays.delete_tables,
        &arrays.delete_keys,
        token,
    ];
    if let Some((p, t, consumed)) = &fence {
        params.push(p);
        params.push(t);
        params.push(*consumed);
    }
    live.client.execute(&live.statements.write, &params)
}

/// Records this build's layout version in a new schema, or checks the
/// one recorded.
fn check_layout(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute(CREATE_SQL)
        .map_err(|e| pg_err("cannot create the tables", &e))?;
    client
        .execute(
            "INSERT INTO flow_store (id, schema_version, last_commit) VALUES (1, $1, '') \
             ON CONFLICT (id) DO NOTHING",
            &[&SCHEMA_VERSION],
        )
        .map_err(|e| pg_err("cannot record the layout version", &e))?;
    let found: i32 = client
        .query_one("SELECT schema_version FROM flow_store WHERE id = 1", &[])
        .map_err(|e| pg_err("cannot read the layout version", &e))?
        .get(0);
    if found != SCHEMA_VERSION {
        return Err(StoreError(format!(
            "PostgreSQL: the tables were laid out by store schema version {found}; this build \
             uses version {SCHEMA_VERSION}{}. Nothing was changed; open it with the version of \
             the node that wrote it",
            if found > SCHEMA_VERSION {
                " (a newer node wrote them)"
            } else {
                " (an older node wrote them, and this build has no migration from it)"
            }
        )));
    }
    Ok(())
}

/// Prepares the statements every call uses.
fn prepare(client: &mut Client, fence: Option<&Fence>) -> Result<Statements, StoreError> {
    let p = |client: &mut Client, sql: &str| {
        client
            .prepare(sql)
            .map_err(|e| pg_err("cannot prepare a statement", &e))
    };
    Ok(Statements {
        get: p(
            client,
            "SELECT value FROM flow_kv WHERE tbl = $1 AND key = $2",
        )?,
        range_to: p(
            client,
            "SELECT key, value FROM flow_kv WHERE tbl = $1 AND key >= $2 AND key < $3 \
             ORDER BY key LIMIT $4",
        )?,
        range_open: p(
            client,
            "SELECT key, value FROM flow_kv WHERE tbl = $1 AND key >= $2 \
             ORDER BY key LIMIT $3",
        )?,
        len: p(client, "SELECT count(*) FROM flow_kv WHERE tbl = $1")?,
        write: p(client, &write_sql(fence))?,
        last_commit: p(client, "SELECT last_commit FROM flow_store WHERE id = 1")?,
    })
}

/// The batch's net effect: its removed ranges, and the last op on each key
/// (puts and deletes, each key once).
fn net_changes(batch: &WriteBatch) -> Arrays<'_> {
    let mut a = Arrays::default();
    for r in &batch.removed_ranges {
        a.range_tables.push(r.table.name());
        a.range_from.push(&r.from);
        a.range_to.push(&r.to);
    }
    let mut last: HashMap<(&str, &[u8]), Option<&[u8]>> = HashMap::with_capacity(batch.ops.len());
    for op in &batch.ops {
        last.insert((op.table.name(), &op.key), op.value.as_deref());
    }
    for ((table, key), value) in last {
        match value {
            Some(v) => {
                a.put_tables.push(table);
                a.put_keys.push(key);
                a.put_values.push(v);
            }
            None => {
                a.delete_tables.push(table);
                a.delete_keys.push(key);
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_changes_keep_the_last_op_on_each_key() {
        let mut b = WriteBatch::default();
        b.put(Table::META, b"a".to_vec(), b"1".to_vec());
        b.delete(Table::META, b"a".to_vec());
        b.delete(Table::META, b"b".to_vec());
        b.put(Table::META, b"b".to_vec(), b"2".to_vec());
        b.put(Table::OUTBOX, b"a".to_vec(), b"3".to_vec());
        b.remove_range(Table::TIMERS, b"x".to_vec(), b"y".to_vec());
        let a = net_changes(&b);
        let mut puts: Vec<_> = a
            .put_tables
            .iter()
            .zip(&a.put_keys)
            .zip(&a.put_values)
            .map(|((t, k), v)| (*t, *k, *v))
            .collect();
        puts.sort();
        assert_eq!(
            puts,
            vec![
                ("meta", &b"b"[..], &b"2"[..]),
                ("outbox", &b"a"[..], &b"3"[..])
            ]
        );
        assert_eq!(
            (a.delete_tables, a.delete_keys),
            (vec!["meta"], vec![&b"a"[..]])
        );
        assert_eq!(a.range_tables, vec!["timers"]);
    }
}
