//! Trades per second with the seller on one redb node, and on a scale-out
//! node (a gateway and 1 or 2 workers over PostgreSQL), side by side: one
//! command, one table.
//!
//! ```sh
//! cargo bench -p finance-flows --bench scale_out_trades
//! FLOW_BENCH_TRADES=800 FLOW_BENCH_SETUPS=redb,w1,w2,w4 cargo bench -p finance-flows --bench scale_out_trades
//! ```
//!
//! The workload is the same in every set-up: the seller sells
//! `FLOW_BENCH_TRADES` (default 400) commercial papers, all started at once
//! (one client request each), to the buyer, an ordinary node on redb that
//! pays with coins it issued, notarised by a notary node on redb. Buyer and
//! notary are the same in every set-up; only the seller changes:
//!
//! * `redb`: one node on redb; the sells are started in one commit
//!   (`Node::start_flows_with_client_ids`);
//! * `w1`, `w2`, `w4`: a scale-out node of 8 partitions, its gateway and
//!   that many workers; the sells are queued in one statement
//!   (`Control::request_starts`) and each worker starts a partition's
//!   queued requests in one commit.
//!
//! On the scale-out seller each trade's flows run in one partition, chosen
//! by the trade's key (`trade-<i>`): the paper is issued there first (its
//! own start request with the same key), so the partition's vault holds the
//! paper the sell offers. Each partition trusts the buyer's cash (one
//! `trust_issuers` per partition). See docs/scale-out.md §6.5.
//!
//! Every node runs in this one process, each on runtimes, threads and
//! connections of its own (the gateway and each worker as its own process
//! would); PostgreSQL is a throwaway local server with its durable defaults
//! (fsync, `synchronous_commit = on`), as redb commits durably. The figure
//! is completed sells per second from the first start request to the last
//! result, and its ratio to the redb seller.

#[cfg(unix)]
mod bench {
    use finance_flows::demo::api::{IssuePaperArgs, SellArgs};
    use finance_flows::flows::Notary;
    use finance_flows::flows::identity::{ledger_identity, trust_issuers};
    use finance_flows::flows::issue::{issue_cash, issue_paper};
    use finance_flows::flows::notarise::{self, notary_service};
    use finance_flows::flows::trade::{buy, sell};
    use finance_flows::ledger::{Amount, AssetKind, Currency, SignedTransaction, StateRef};
    use flow_runtime::runner::{Config, LoadedConfig, Node, NodeBuilder};
    use flow_runtime::scale_out::{Control, Gateway, StartRequest, Worker, WorkerSettings};
    use flow_runtime::tcp::TcpTransport;
    use flow_runtime::testing::{TestPostgres, write_local_network};
    use flow_runtime::{Flow, Party, Timestamp};
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    const PARTITIONS: u32 = 8;
    /// Every trade is in flight at once, each with a responder on the buyer
    /// (and one on the notary): the per-peer responder bound must admit
    /// them all, or the trades past it run in waves a redelivery interval
    /// apart and the bench measures those waits.
    const RESPONDERS: u32 = 100_000;
    const LIMIT: Duration = Duration::from_secs(600);

    fn price() -> Amount {
        Amount::new(90_000, Currency::USD)
    }

    /// Keys, the network map and each node's config file in `dir`; the
    /// seller's store is `seller_store` (empty: redb).
    fn network(dir: &Path, seller_store: &str) -> BTreeMap<&'static str, PathBuf> {
        const NAMES: [&str; 3] = ["Notary", "Buyer", "Seller"];
        let sections = |name: &str| {
            let store = if name == "Seller" { seller_store } else { "" };
            format!("[node]\nmax_responders_per_peer = {RESPONDERS}\n{store}")
        };
        let nodes = write_local_network(dir, &NAMES, sections).expect("the network's files");
        NAMES
            .into_iter()
            .zip(nodes)
            .map(|(name, node)| (name, node.config))
            .collect()
    }

    fn load(config: &Path) -> Result<LoadedConfig, String> {
        Config::read(config)
            .and_then(Config::load)
            .map_err(|e| e.to_string())
    }

    /// Starts `flow` on `node` and waits for its output.
    async fn run_flow<F: Flow>(node: &Node, flow: F) -> Result<F::Output, String> {
        let handle = node.start_flow(flow).await.map_err(|e| e.to_string())?;
        node.result(&handle).await.map_err(|e| e.to_string())
    }

    /// The seller's flows, on a single node or on each partition.
    fn seller_flows<T: flow_runtime::transport::Transport>(b: &mut NodeBuilder<T>) {
        b.startable(|a: SellArgs| Ok(sell(a.buyer, a.paper, a.price, a.notary)));
        b.startable(|a: IssuePaperArgs| Ok(issue_paper(a.face_value, a.maturity, a.notary)));
        b.startable(|issuers: Vec<Party>| Ok(trust_issuers(issuers)));
    }

    fn paper_args(notary: &Notary) -> IssuePaperArgs {
        IssuePaperArgs {
            face_value: Amount::whole(1_000, Currency::USD),
            maturity: Timestamp(u64::MAX / 2),
            notary: notary.clone(),
        }
    }

    /// The paper an issuance made (its output 0).
    fn paper_of(stx: &SignedTransaction) -> Result<StateRef, String> {
        stx.tx
            .out_refs()
            .first()
            .map(|s| s.state_ref)
            .ok_or_else(|| "an issuance without outputs".to_owned())
    }

    /// The buyer and the notary, the same in every set-up.
    struct Counterparties {
        notary_node: Node,
        buyer_node: Node,
        notary: Notary,
        /// The buyer's ledger identity: the issuer of the cash it pays with.
        bank: Party,
        buyer: Party,
    }

    async fn counterparties(
        configs: &BTreeMap<&str, PathBuf>,
        trades: u32,
    ) -> Result<Counterparties, String> {
        let mut b = NodeBuilder::from_config(load(&configs["Notary"])?);
        b.responder::<notarise::notarise::Flow>(notary_service);
        let notary_node = b.start().await.map_err(|e| e.to_string())?;
        let notary = Notary {
            party: run_flow(&notary_node, ledger_identity()).await?,
            node: notary_node.party().clone(),
        };
        let mut b = NodeBuilder::from_config(load(&configs["Buyer"])?);
        let n = notary.clone();
        b.responder::<sell::Flow>(move |s| buy(s, price(), AssetKind::CommercialPaper, n.clone()));
        let buyer_node = b.start().await.map_err(|e| e.to_string())?;
        let bank = run_flow(&buyer_node, ledger_identity()).await?;
        run_flow(&buyer_node, issue_cash(price(), trades, notary.clone())).await?;
        let buyer = buyer_node.party().clone();
        Ok(Counterparties {
            notary_node,
            buyer_node,
            notary,
            bank,
            buyer,
        })
    }

    /// The redb seller: papers issued, then every sell started in one
    /// commit; the seconds from that start to the last result.
    async fn redb_seller(
        config: &Path,
        c: &Counterparties,
        trades: u32,
    ) -> Result<Duration, String> {
        let mut b = NodeBuilder::from_config(load(config)?);
        seller_flows(&mut b);
        let seller = b.start().await.map_err(|e| e.to_string())?;
        run_flow(&seller, trust_issuers(vec![c.bank.clone()])).await?;
        let args = paper_args(&c.notary);
        let issues = seller
            .start_flows_with_client_ids(
                (0..trades)
                    .map(|i| {
                        let a = args.clone();
                        (
                            format!("issue-{i}"),
                            issue_paper(a.face_value, a.maturity, a.notary),
                        )
                    })
                    .collect(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut papers = Vec::new();
        for h in &issues {
            papers.push(paper_of(
                &seller.result(h).await.map_err(|e| e.to_string())?,
            )?);
        }
        let began = Instant::now();
        let sells = seller
            .start_flows_with_client_ids(
                papers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        (
                            format!("sell-{i}"),
                            sell(c.buyer.clone(), *p, price(), c.notary.clone()),
                        )
                    })
                    .collect(),
            )
            .await
            .map_err(|e| e.to_string())?;
        for h in &sells {
            seller.result(h).await.map_err(|e| e.to_string())?;
        }
        let elapsed = began.elapsed();
        seller.shutdown().await.map_err(|e| e.to_string())?;
        Ok(elapsed)
    }

    /// A running scale-out seller: its gateway and workers, each on
    /// threads (and a runtime) of its own.
    struct ScaleOut {
        stop: Arc<AtomicBool>,
        threads: Vec<JoinHandle<Result<(), String>>>,
    }

    impl ScaleOut {
        fn start(config: &Path, connection: &str, workers: usize) -> Result<Self, String> {
            let stop = Arc::new(AtomicBool::new(false));
            let mut threads = Vec::new();
            let loaded = load(config)?;
            let map = loaded.map.clone();
            let party = map.by_name("Seller").ok_or("no Seller in the map")?.party();
            let gateway = Gateway::connect(connection, PARTITIONS).map_err(|e| e.0)?;
            let (ready, started) = std::sync::mpsc::channel();
            let s = stop.clone();
            threads.push(std::thread::spawn(move || {
                let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
                let bound = runtime.block_on(TcpTransport::bind(
                    loaded.identity,
                    &loaded.config.listen,
                    loaded.map,
                    loaded.config.transport.tcp_config(),
                ));
                let (transport, incoming) = bound.map_err(|e| e.to_string())?;
                let _ = ready.send(());
                gateway
                    .run(runtime.handle(), transport, incoming, s)
                    .map_err(|e| e.0)
            }));
            started
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| "the gateway did not start")?;
            for w in 0..workers {
                let mut settings = WorkerSettings::new(&format!("w{w}"));
                settings.partitions = PARTITIONS;
                let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
                let worker = Worker::new(
                    connection,
                    party.clone(),
                    map.clone(),
                    settings,
                    Arc::new(seller_flows),
                    runtime.handle().clone(),
                )
                .map_err(|e| e.0)?;
                let s = stop.clone();
                threads.push(std::thread::spawn(move || {
                    let result = worker.run(&s).map_err(|e| e.0);
                    drop(runtime);
                    result
                }));
            }
            Ok(Self { stop, threads })
        }

        fn stop(self) -> Result<(), String> {
            self.stop.store(true, Ordering::Relaxed);
            for t in self.threads {
                t.join().map_err(|_| "a seller thread panicked")??;
            }
            Ok(())
        }
    }

    /// Waits until every partition is held, by `workers` workers.
    fn wait_for_share(control: &mut Control, workers: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = control.status().map_err(|e| e.0)?;
            let holders = status.partitions_by_worker();
            if holders.values().sum::<usize>() == PARTITIONS as usize && holders.len() == workers {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the workers did not share the partitions".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the partitions keep `count` results; their outputs by
    /// client id.
    fn wait_for_results(
        control: &mut Control,
        count: u64,
    ) -> Result<BTreeMap<String, Result<Vec<u8>, String>>, String> {
        let deadline = Instant::now() + LIMIT;
        while control.finished_count().map_err(|e| e.0)? < count {
            if Instant::now() > deadline {
                return Err(format!("fewer than {count} results within {LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = control.status().map_err(|e| e.0)?;
        Ok(status
            .finished
            .into_iter()
            .filter_map(|f| Some((f.client_id?, f.outcome.map_err(|e| e.to_string()))))
            .collect())
    }

    fn request(
        key: &str,
        client_id: String,
        flow: &str,
        args: impl serde::Serialize,
    ) -> StartRequest {
        StartRequest {
            key: key.to_owned(),
            client_id,
            flow: flow.to_owned(),
            args: serde_json::to_value(args).expect("arguments serialize"),
        }
    }

    /// The scale-out seller: each partition trusts the bank, each trade's
    /// paper is issued in the trade's partition, then every sell is queued
    /// in one statement; the seconds from that to the last result.
    fn scale_out_seller(
        connection: &str,
        c: &Counterparties,
        trades: u32,
        workers: usize,
    ) -> Result<Duration, String> {
        let mut control = Control::connect(connection, PARTITIONS).map_err(|e| e.0)?;
        wait_for_share(&mut control, workers)?;
        let mut setup = Vec::new();
        for p in 0..PARTITIONS {
            let key = (0..)
                .map(|j| format!("partition-{j}"))
                .find(|k| control.partition_of_key(k) == p)
                .expect("a key for every partition");
            setup.push(request(
                &key,
                format!("trust-{p}"),
                trust_issuers::Flow::NAME,
                vec![c.bank.clone()],
            ));
        }
        for i in 0..trades {
            setup.push(request(
                &format!("trade-{i}"),
                format!("issue-{i}"),
                issue_paper::Flow::NAME,
                paper_args(&c.notary),
            ));
        }
        control.request_starts(&setup).map_err(|e| e.0)?;
        let issued = wait_for_results(&mut control, u64::from(PARTITIONS + trades))?;
        let mut sells = Vec::new();
        for i in 0..trades {
            let bytes = issued
                .get(&format!("issue-{i}"))
                .ok_or("an issuance has no result")?
                .clone()?;
            let stx: SignedTransaction =
                rmp_serde::from_slice(&bytes).map_err(|e| e.to_string())?;
            let args = SellArgs {
                buyer: c.buyer.clone(),
                paper: paper_of(&stx)?,
                price: price(),
                notary: c.notary.clone(),
            };
            sells.push(request(
                &format!("trade-{i}"),
                format!("sell-{i}"),
                sell::Flow::NAME,
                args,
            ));
        }
        let began = Instant::now();
        control.request_starts(&sells).map_err(|e| e.0)?;
        let done = wait_for_results(&mut control, u64::from(PARTITIONS + 2 * trades))?;
        let elapsed = began.elapsed();
        for i in 0..trades {
            match done.get(&format!("sell-{i}")) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("sell-{i} failed: {e}")),
                None => return Err(format!("sell-{i} has no result")),
            }
        }
        Ok(elapsed)
    }

    /// Runs one set-up; completed trades per second.
    fn run(setup: &str, server: Option<&TestPostgres>, trades: u32) -> Result<Option<f64>, String> {
        let workers = match setup {
            "redb" => 0,
            "w1" => 1,
            "w2" => 2,
            "w4" => 4,
            other => return Err(format!("unknown set-up `{other}` (redb, w1, w2, w4)")),
        };
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let connection = match (workers, server) {
            (0, _) => String::new(),
            (_, None) => return Ok(None),
            (_, Some(server)) => server.fresh_schema(),
        };
        let store = if workers == 0 {
            String::new()
        } else {
            format!("\n[store]\nkind = \"postgres\"\nconnection = \"{connection}\"\n")
        };
        let configs = network(dir.path(), &store);
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let c = runtime.block_on(counterparties(&configs, trades))?;
        let elapsed = if workers == 0 {
            runtime.block_on(redb_seller(&configs["Seller"], &c, trades))?
        } else {
            let seller = ScaleOut::start(&configs["Seller"], &connection, workers)?;
            let elapsed = scale_out_seller(&connection, &c, trades, workers);
            seller.stop()?;
            elapsed?
        };
        runtime.block_on(async {
            let _ = c.buyer_node.shutdown().await;
            let _ = c.notary_node.shutdown().await;
        });
        Ok(Some(f64::from(trades) / elapsed.as_secs_f64().max(0.001)))
    }

    pub fn main() {
        let trades: u32 = std::env::var("FLOW_BENCH_TRADES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400);
        let setups = std::env::var("FLOW_BENCH_SETUPS").unwrap_or_else(|_| "redb,w1,w2".to_owned());
        let server = match TestPostgres::start(true) {
            Ok(server) => Some(server),
            Err(e) => {
                eprintln!("SKIPPED on PostgreSQL: {e}");
                None
            }
        };
        println!(
            "scale-out trades: {trades} trades, all started at once, seller -> buyer (buyer, notary: redb nodes); {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!("{:<38} {:>10} {:>10}", "seller", "trades/s", "vs redb");
        let mut base = None;
        for setup in setups.split(',') {
            let label = match setup {
                "redb" => "one node, redb".to_owned(),
                "w1" => "gateway + 1 worker, PostgreSQL".to_owned(),
                w => format!(
                    "gateway + {} workers, PostgreSQL",
                    w.trim_start_matches('w')
                ),
            };
            match run(setup, server.as_ref(), trades) {
                Ok(Some(rate)) => {
                    let base = *base.get_or_insert(rate);
                    println!("{label:<38} {rate:>10.0} {:>9.2}x", rate / base);
                }
                Ok(None) => println!("{label:<38} {:>10}", "skipped"),
                Err(e) => {
                    println!("{label:<38} {:>10}", "FAILED");
                    eprintln!("{setup}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

fn main() {
    #[cfg(unix)]
    bench::main();
}
