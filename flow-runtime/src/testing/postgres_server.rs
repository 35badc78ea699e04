//! [`TestPostgres`]: a throwaway PostgreSQL server for tests and benchmarks,
//! started from the machine's PostgreSQL binaries in a temporary directory.
//!
//! Nothing has to be set up by hand: the server gets its own data
//! directory, a free loopback port and a trust-authenticated superuser
//! `flow`, and it is stopped (and its directory removed) when the value is
//! dropped or, for the process-wide [`TestPostgres::shared`] server, by a
//! watcher process once the test process has exited. Each test takes a
//! schema of its own ([`TestPostgres::fresh_schema`]), so the tests of one
//! binary share one server without seeing each other's data.
//!
//! The server refuses to run as root: under root, the harness runs it as
//! the system user `flow-postgres` (created with `useradd` if missing).
//! The binaries are looked for in `$FLOW_POSTGRES_BIN`, then in Debian's
//! `/usr/lib/postgresql/<version>/bin` (package `postgresql`); where there
//! are none, [`TestPostgres::shared`] answers `None` and prints why, so
//! tests can skip.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The system user the server runs as when the tests run as root.
const SERVER_USER: &str = "flow-postgres";

/// A running PostgreSQL server in a temporary directory.
#[derive(Debug)]
pub struct TestPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// `Some(user)`: commands that touch the data directory run as `user`.
    run_as: Option<String>,
    schemas: AtomicU64,
}

/// Why a server could not be started (binaries present, but something
/// failed: the message says what, with the server's log).
#[derive(Debug, thiserror::Error)]
#[error("cannot start a test PostgreSQL server: {0}")]
pub struct TestPostgresError(String);

fn fail(what: &str, e: impl std::fmt::Display) -> TestPostgresError {
    TestPostgresError(format!("{what}: {e}"))
}

/// The directory of the PostgreSQL server binaries, if installed.
pub fn postgres_binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FLOW_POSTGRES_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl TestPostgres {
    /// The server every test of this process shares, started on first use;
    /// `None` (after printing why, once) when PostgreSQL is not installed.
    ///
    /// # Panics
    /// When the binaries are installed but the server cannot be started:
    /// that is a broken machine, not a reason to skip.
    pub fn shared() -> Option<&'static TestPostgres> {
        static SHARED: OnceLock<Option<TestPostgres>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                if postgres_binaries().is_none() {
                    eprintln!(
                        "SKIPPED on PostgreSQL: no PostgreSQL server binaries (install Debian's \
                         `postgresql` package, or set FLOW_POSTGRES_BIN); only the redb runs of \
                         these tests ran"
                    );
                    return None;
                }
                match TestPostgres::start(false) {
                    Ok(server) => {
                        server.stop_when_process_exits();
                        Some(server)
                    }
                    Err(e) => panic!("{e}"),
                }
            })
            .as_ref()
    }

    /// Starts a new server. `durable: false` turns fsync off (tests, which
    /// kill processes but never the machine); `true` keeps the server's
    /// crash-safe defaults (benchmarks comparing against a durable redb).
    pub fn start(durable: bool) -> Result<Self, TestPostgresError> {
        let bin = postgres_binaries().ok_or_else(|| {
            TestPostgresError("no PostgreSQL server binaries are installed".into())
        })?;
        let run_as = if running_as_root() {
            ensure_server_user()?;
            Some(SERVER_USER.to_owned())
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!(
            "flow-postgres-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir(&dir).map_err(|e| fail("cannot create its directory", e))?;
        let server = TestPostgres {
            bin,
            dir,
            port: free_port()?,
            run_as,
            schemas: AtomicU64::new(0),
        };
        if let Some(user) = &server.run_as {
            checked(
                Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(&server.dir),
                "chown the directory",
            )?;
        }
        checked(
            server
                .server_command("initdb")
                .arg("-D")
                .arg(server.data())
                .args(["-U", "flow", "-A", "trust", "-E", "UTF8", "--locale=C"])
                .arg("--no-sync"),
            "initdb",
        )?;
        let mut options = format!(
            "-p {} -h 127.0.0.1 -k {} -c max_connections=200",
            server.port,
            server.dir.display()
        );
        if !durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        server.pg_ctl(&["-o", &options, "start"])?;
        Ok(server)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for a new, empty schema of its own: a store
    /// opened on it sees nothing of any other test's.
    pub fn fresh_schema(&self) -> String {
        let n = self.schemas.fetch_add(1, Ordering::Relaxed);
        let schema = format!("s{n}");
        self.sql(&format!("CREATE SCHEMA {schema}"))
            .unwrap_or_else(|e| panic!("{e}"));
        self.connection_string(&schema)
    }

    /// The connection string for `schema` (which must exist). The schema's
    /// name is also the connection's `application_name`, so
    /// [`terminate_connections`](Self::terminate_connections) can find it.
    pub fn connection_string(&self, schema: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=flow dbname=postgres application_name={schema} \
             options='-c search_path={schema}'",
            self.port
        )
    }

    /// Runs `sql` as the superuser (through `psql`, so it works from any
    /// thread, async tests included); its output, rows unaligned.
    pub fn sql(&self, sql: &str) -> Result<String, TestPostgresError> {
        let out = checked(
            Command::new(self.bin.join("psql"))
                .args(["-h", "127.0.0.1", "-U", "flow", "-d", "postgres"])
                .args(["-p", &self.port.to_string()])
                .args(["-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-q", "-c", sql]),
            "psql",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Ends, on the server's side, every connection of the stores opened on
    /// `schema`: what a crashed or restarted server looks like to them.
    /// Returns how many were ended.
    pub fn terminate_connections(&self, schema: &str) -> Result<usize, TestPostgresError> {
        let ended = self.sql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = '{schema}'"
        ))?;
        ended
            .parse()
            .map_err(|e| fail("counting ended connections", e))
    }

    /// Stops the server (as after a crash: no checkpoint) and starts it
    /// again on the same port and data.
    pub fn restart(&self) -> Result<(), TestPostgresError> {
        self.pg_ctl(&["-m", "immediate", "restart"])
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), TestPostgresError> {
        checked(
            self.server_command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60"])
                .args(args),
            "pg_ctl",
        )
        .map(|_| ())
        .map_err(|e| {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            TestPostgresError(format!("{}; server log:\n{log}", e.0))
        })
    }

    /// A command for one of the server's binaries, run as the server's user.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// Starts a detached watcher that stops the server and removes its
    /// directory once this process has exited (a `static` is never
    /// dropped).
    fn stop_when_process_exits(&self) {
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {runas} {pg_ctl} -D {data} -m immediate stop; rm -rf {dir}",
            pid = std::process::id(),
            runas = self
                .run_as
                .as_ref()
                .map_or(String::new(), |u| format!("runuser -u {u} --")),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data().display(),
            dir = self.dir.display(),
        );
        let spawned = Command::new("setsid")
            .args(["sh", "-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("the test PostgreSQL server will outlive this process: {e}");
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command`, failing with its output unless it succeeds.
fn checked(command: &mut Command, what: &str) -> Result<Output, TestPostgresError> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(&format!("cannot run {what}"), e))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(TestPostgresError(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Creates the server's system user unless it exists (two test processes
/// may race here: the loser's `useradd` fails, and the user exists).
fn ensure_server_user() -> Result<(), TestPostgresError> {
    let exists = |_: ()| {
        Command::new("id")
            .arg(SERVER_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if exists(()) {
        return Ok(());
    }
    let added = checked(
        Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SERVER_USER,
        ]),
        "useradd",
    );
    match added {
        Ok(_) => Ok(()),
        Err(_) if exists(()) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> Result<u16, TestPostgresError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| fail("cannot find a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| fail("cannot find a free port", e))
}
