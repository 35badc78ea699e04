//! Scale-out throughput (a bench binary; run with
//! `cargo bench -p flow-runtime --bench scale_out`).
//!
//! The same workload in five set-ups, one after the other in one run:
//! Alice runs `FLOW_BENCH_FLOWS` (default 32) concurrent pings of
//! `FLOW_BENCH_ROUNDS` (default 100) rounds each to Bob, an ordinary node
//! on redb (the same in every set-up). Alice is
//!
//! 1. one node on redb,
//! 2. one node on PostgreSQL,
//! 3. a scale-out node (gateway + 1 worker, 8 partitions),
//! 4. the same with 2 workers,
//! 5. the same with 4 workers,
//!
//! every process a separate `flow-ping-node`, PostgreSQL a throwaway local
//! server with its durable defaults (fsync, `synchronous_commit = on`), as
//! redb commits durably. Each round is one step of Alice's flow (a
//! commit) and one of Bob's; the figure is Alice's rounds per second from
//! the first start to the last result as the starting process measures it
//! (process start-up excluded), and its ratio to set-up 1.
//! `FLOW_BENCH_SETUPS=redb,pg,w1,w2,w4` picks the set-ups.

#[cfg(unix)]
#[path = "../tests/tcp_common/node_process.rs"]
#[allow(dead_code)] // the bench uses part of it
mod node_process;

#[cfg(unix)]
mod bench {
    use super::node_process::NodeProcess;
    use flow_runtime::scale_out::Control;
    use flow_runtime::testing::{TestPostgres, write_local_network};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    const PARTITIONS: &str = "8";
    const LIMIT: Duration = Duration::from_secs(600);

    /// A node process, logging warnings only (the bench's figures are
    /// its stdout).
    fn node(config: &Path, extra: &[&str], log: &Path) -> NodeProcess {
        NodeProcess::start_logging(config, extra, log, "warn")
    }

    /// Alice's and Bob's configs in `dir`; Alice on `alice_store`.
    fn setup(dir: &Path, alice_store: &str) -> (PathBuf, PathBuf) {
        let sections = |name: &str| {
            if name == "Alice" {
                alice_store.to_owned()
            } else {
                String::new()
            }
        };
        let mut nodes = write_local_network(dir, &["Alice", "Bob"], sections).unwrap();
        let bob = nodes.pop().unwrap();
        let alice = nodes.pop().unwrap();
        (alice.config, bob.config)
    }

    fn postgres_store(server: &TestPostgres) -> (String, String) {
        let connection = server.fresh_schema();
        (
            format!("\n[store]\nkind = \"postgres\"\nconnection = \"{connection}\"\n"),
            connection,
        )
    }

    /// Runs one set-up; Alice's rounds per second.
    fn run(
        setup_name: &str,
        server: Option<&TestPostgres>,
        flows: u32,
        rounds: u32,
    ) -> Option<f64> {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let workers = match setup_name {
            "w1" => 1,
            "w2" => 2,
            "w4" => 4,
            _ => 0,
        };
        let (store, connection) = match setup_name {
            "redb" => (String::new(), String::new()),
            _ => postgres_store(server?),
        };
        let (alice, bob) = setup(d, &store);
        let _bob = node(&bob, &[], &d.join("Bob.log"));
        let ping = format!("Bob={flows}");
        let rounds_s = rounds.to_string();
        let began;
        let mut client;
        let mut keep = Vec::new();
        if workers == 0 {
            began = Instant::now();
            client = node(
                &alice,
                &["--ping", &ping, "--rounds", &rounds_s],
                &d.join("Alice.log"),
            );
        } else {
            let mut gateway = node(
                &alice,
                &["--gateway", "--partitions", PARTITIONS],
                &d.join("gateway.log"),
            );
            gateway.wait_for("GATEWAY", Instant::now() + LIMIT);
            keep.push(gateway);
            for w in 0..workers {
                let name = format!("w{w}");
                keep.push(node(
                    &alice,
                    &["--worker", &name, "--partitions", PARTITIONS],
                    &d.join(format!("{name}.log")),
                ));
            }
            // Wait for the fair share: every partition held, by every worker.
            let mut control = Control::connect(&connection, 8).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let status = control.status().unwrap();
                let holders = status.partitions_by_worker();
                if holders.values().sum::<usize>() == 8 && holders.len() == workers {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the workers did not share the partitions"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            began = Instant::now();
            client = node(
                &alice,
                &[
                    "--scale-out-ping",
                    &ping,
                    "--rounds",
                    &rounds_s,
                    "--partitions",
                    PARTITIONS,
                ],
                &d.join("client.log"),
            );
        }
        // The client's own figure: from before its first start to its last
        // result (process start-up excluded in every set-up).
        let done = client.wait_for("DONE", Instant::now() + LIMIT);
        let ms: f64 = done
            .strip_prefix("DONE ")
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| began.elapsed().as_secs_f64() * 1000.0);
        let secs = (ms / 1000.0).max(0.001);
        Some(f64::from(flows) * f64::from(rounds) / secs)
    }

    pub fn main() {
        let env = |name: &str, default: u32| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let flows = env("FLOW_BENCH_FLOWS", 32);
        let rounds = env("FLOW_BENCH_ROUNDS", 100);
        let setups =
            std::env::var("FLOW_BENCH_SETUPS").unwrap_or_else(|_| "redb,pg,w1,w2,w4".to_owned());
        let server = match TestPostgres::start(true) {
            Ok(server) => Some(server),
            Err(e) => {
                eprintln!("SKIPPED on PostgreSQL: {e}");
                None
            }
        };
        println!(
            "scale-out: {flows} pings x {rounds} rounds Alice -> Bob (Bob: one redb node); \
             {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!("{:<34} {:>12} {:>10}", "Alice", "rounds/s", "vs redb");
        let mut base = None;
        for setup_name in setups.split(',') {
            let label = match setup_name {
                "redb" => "one node, redb",
                "pg" => "one node, PostgreSQL",
                "w1" => "gateway + 1 worker, PostgreSQL",
                "w2" => "gateway + 2 workers, PostgreSQL",
                "w4" => "gateway + 4 workers, PostgreSQL",
                other => panic!("unknown set-up `{other}` (redb, pg, w1, w2, w4)"),
            };
            match run(setup_name, server.as_ref(), flows, rounds) {
                Some(rate) => {
                    let base = *base.get_or_insert(rate);
                    println!("{label:<34} {rate:>12.0} {:>9.2}x", rate / base);
                }
                None => println!("{label:<34} {:>12}", "skipped"),
            }
        }
    }
}

fn main() {
    #[cfg(unix)]
    bench::main();
}
