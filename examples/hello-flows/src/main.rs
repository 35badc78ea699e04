//! `hello-node CONFIG` runs a node that answers pings until Ctrl-C;
//! `hello-node CONFIG PEER` also pings the party named PEER, prints the
//! result and stops; `hello-node CONFIG --check-upgrade` runs nothing: it
//! says whether this build resumes every flow in the node's database.

use flow_runtime::runner::{self, Config, NodeBuilder};
use hello_flows::{ping, pong};
use std::path::Path;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    runner::init_logging()?;
    let mut args = std::env::args().skip(1);
    let config = args
        .next()
        .ok_or("usage: hello-node CONFIG [PEER | --check-upgrade]")?;
    let peer = args.next();

    let loaded = Config::read(Path::new(&config))?.load()?;
    let map = loaded.map.clone();
    let mut builder = NodeBuilder::from_config(loaded);
    builder.flow::<ping::Flow>();
    builder.responder::<ping::Flow>(pong);
    if peer.as_deref() == Some("--check-upgrade") {
        return Ok(builder.run_upgrade_check());
    }
    let node = builder.start().await?;

    let Some(name) = peer else {
        node.run_until_signal().await?;
        return Ok(ExitCode::SUCCESS);
    };
    let entry = map
        .by_name(&name)
        .ok_or("no such party in the network map")?;
    let handle = node.start_flow(ping(entry.party(), 10)).await?;
    let total = node.result(&handle).await?;
    println!("ping to {name}: {total}");
    node.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
