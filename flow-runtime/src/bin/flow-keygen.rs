//! `flow-keygen`: creates a node's identity key and prints its network-map
//! entry.
//!
//! ```text
//! flow-keygen alice.key --name Alice --address 10.0.0.5:7001
//! flow-keygen --show alice.key --name Alice --address 10.0.0.5:7001
//! ```

use clap::Parser;
use flow_runtime::runner::keys;
use flow_runtime::tcp::{NetworkMap, PeerEntry};
use std::path::PathBuf;
use std::process::ExitCode;

/// Create an ed25519 identity key for a flow node, or show the public key
/// of an existing one, and print the node's entry for the network map.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The key file: created with mode 0600 (never overwritten), or read
    /// with `--show`.
    file: PathBuf,
    /// Read the existing key file instead of creating one.
    #[arg(long)]
    show: bool,
    /// The node's legal name, for the printed network-map entry.
    #[arg(long, default_value = "CHANGE-ME")]
    name: String,
    /// The node's `host:port` as its peers reach it, for the printed entry.
    #[arg(long, default_value = "127.0.0.1:7001")]
    address: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let key = if args.show {
        keys::read_key_file(&args.file)
    } else {
        keys::generate_identity().and_then(|k| {
            keys::write_key_file(&args.file, &k)?;
            eprintln!("wrote a new identity key to {}", args.file.display());
            Ok(k)
        })
    };
    let key = match key {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let entry = PeerEntry {
        name: args.name,
        address: args.address,
        key: keys::public_key(&key),
    };
    match NetworkMap::new([entry]) {
        Ok(map) => {
            eprintln!("add this entry to the network map shared by every node:");
            print!("{}", map.to_toml_string());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
