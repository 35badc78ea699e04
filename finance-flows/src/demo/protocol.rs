//! The control protocol between the multi-process demo's orchestrator and
//! its node processes: one JSON object per line, commands on the node's
//! stdin, events on its stdout. Logs go to the node's stderr (a file), so
//! stdout carries nothing but these lines.
//!
//! Why pipes and JSON lines: the orchestrator starts every node, so it
//! already holds their stdin and stdout — no port to choose, no socket
//! to secure, and no stale listener left behind. A node whose stdin
//! closes (the orchestrator exited, even by SIGKILL) shuts down by itself,
//! so a node process can never outlive the demo. JSON keeps the lines
//! readable when debugging (`--dir` keeps the logs next to the databases).
//!
//! ```text
//! orchestrator ──stdin──▶ {"id":3,"command":{"IssuePapers":{...}}}
//!              ◀─stdout── {"Reply":{"id":3,"result":{"Ok":{"Papers":[...]}}}}
//!              ◀─stdout── {"Progress":{"trade":17,"step":"Signing"}}
//!              ◀─stdout── {"TradeDone":{"trade":17,"outcome":{"Ok":{...}}}}
//! ```
//!
//! Every line crossed a process boundary: [`decode_event`] and
//! [`decode_request`] return an error for anything that is not a
//! well-formed message, never panic.

use crate::flows::Notary;
use crate::flows::report::VaultReport;
use crate::ledger::{Amount, StateRef};
use flow_runtime::{Party, Timestamp};
use serde::{Deserialize, Serialize};

/// What a node's role is; decides which flows and responders it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum Role {
    /// Runs the notary service.
    Notary,
    /// Issues papers and starts the trades.
    Seller,
    /// Issues cash and answers trades.
    Buyer,
}

impl Role {
    /// Every role, in start order (the notary first: the others need its
    /// ledger identity).
    pub const ALL: [Role; 3] = [Role::Notary, Role::Seller, Role::Buyer];

    /// The node's name in the network map (and the stem of its files).
    pub fn name(self) -> &'static str {
        match self {
            Role::Notary => "Notary",
            Role::Seller => "Seller",
            Role::Buyer => "Buyer",
        }
    }

    /// Lower-case stem of the node's files (`seller.toml`, `seller.redb`, ...).
    pub fn file_stem(self) -> &'static str {
        match self {
            Role::Notary => "notary",
            Role::Seller => "seller",
            Role::Buyer => "buyer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One trade for the seller to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeOrder {
    /// The demo's number for the trade; also its client id (`trade-N`), so
    /// the same order sent twice starts one flow.
    pub trade: u32,
    /// The paper to sell.
    pub paper: StateRef,
}

/// A command for a node, answered by one [`Event::Reply`] with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The node's ledger identity (created on first use).
    LedgerIdentity,
    /// Issue `coins` cash states of `amount` each to this node.
    IssueCash {
        /// Value of each coin.
        amount: Amount,
        /// How many coins.
        coins: u32,
        /// The notary the cash names.
        notary: Notary,
    },
    /// Issue `count` commercial papers to this node.
    IssuePapers {
        /// How many (issued concurrently).
        count: u32,
        /// Face value of each.
        face_value: Amount,
        /// Maturity of each.
        maturity: Timestamp,
        /// The notary they name.
        notary: Notary,
    },
    /// Start a trade per order (the seller), replying once all are
    /// started; then [`Event::Progress`] and [`Event::TradeDone`] follow.
    Sell {
        /// The trades.
        orders: Vec<TradeOrder>,
        /// Who buys.
        buyer: Party,
        /// The price of each paper.
        price: Amount,
        /// The notary.
        notary: Notary,
    },
    /// Try to spend `coin` again (it was spent by a trade): the notary
    /// must refuse.
    DoubleSpend {
        /// A coin a settled trade consumed.
        coin: StateRef,
        /// The notary.
        notary: Notary,
    },
    /// Summarise the node's vault.
    Report,
    /// Stop the node cleanly and exit.
    Shutdown,
}

/// A command with its id, as sent on a node's stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the orchestrator; echoed in the reply.
    pub id: u64,
    /// What to do.
    pub command: Command,
}

/// A successful answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Command::LedgerIdentity`].
    Identity(Party),
    /// To [`Command::IssueCash`]: the coins issued.
    Cash(Vec<StateRef>),
    /// To [`Command::IssuePapers`]: the papers issued.
    Papers(Vec<StateRef>),
    /// To [`Command::Sell`]: every trade is started (committed).
    Started,
    /// To [`Command::DoubleSpend`]: the notary's refusal.
    Refused(String),
    /// To [`Command::Report`].
    Report(VaultReport),
    /// To [`Command::Shutdown`], sent just before the node stops.
    Stopping,
}

/// How a settled trade ended, as the seller saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// The cash the buyer paid with (inputs of the final transaction other
    /// than the paper), for the double-spend probe.
    pub coins: Vec<StateRef>,
}

/// A line a node writes on its stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The node is up: database open, listening, flows resumed.
    Ready {
        /// Its name in the network map.
        name: String,
        /// Where it listens.
        listen: String,
        /// Flows it resumed from its checkpoints.
        flows_in_flight: u64,
    },
    /// The answer to request `id`; an `Err` says why the command failed.
    Reply {
        /// The request's id.
        id: u64,
        /// The outcome.
        result: Result<Reply, String>,
    },
    /// A trade's seller flow moved to `step` (the innermost label of its
    /// ProgressTracker path).
    Progress {
        /// The trade's number.
        trade: u32,
        /// Its current step.
        step: String,
    },
    /// A trade's seller flow ended.
    TradeDone {
        /// The trade's number.
        trade: u32,
        /// Its outcome; `Err` holds the flow's error message.
        outcome: Result<Settled, String>,
    },
}

/// Encodes a message as one line (without the newline).
pub fn encode<T: Serialize>(message: &T) -> Result<String, String> {
    serde_json::to_string(message).map_err(|e| format!("cannot encode a control message: {e}"))
}

/// Decodes an event line from a node's stdout.
pub fn decode_event(line: &str) -> Result<Event, String> {
    serde_json::from_str(line).map_err(|e| format!("not a control event ({e}): {line:.200}"))
}

/// Decodes a request line from the orchestrator.
pub fn decode_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("not a control request ({e}): {line:.200}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecureHash;
    use crate::ledger::Currency;
    use flow_runtime::PublicKey;

    fn notary() -> Notary {
        Notary {
            party: Party::new("Notary", PublicKey([1; 32])),
            node: Party::new("Notary", PublicKey([2; 32])),
        }
    }

    #[test]
    fn messages_round_trip_as_single_lines() {
        let paper = StateRef {
            tx_id: SecureHash([7; 32]),
            index: 3,
        };
        let request = Request {
            id: 9,
            command: Command::Sell {
                orders: vec![TradeOrder { trade: 4, paper }],
                buyer: Party::new("Buyer", PublicKey([3; 32])),
                price: Amount::new(90_000, Currency::USD),
                notary: notary(),
            },
        };
        let line = encode(&request).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(decode_request(&line).unwrap(), request);

        let event = Event::TradeDone {
            trade: 4,
            outcome: Ok(Settled { coins: vec![paper] }),
        };
        let line = encode(&event).unwrap();
        assert_eq!(decode_event(&line).unwrap(), event);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for line in [
            "",
            "{",
            "null",
            "{\"Progress\":{\"trade\":-1}}",
            "\u{0}\u{1}",
        ] {
            assert!(decode_event(line).is_err(), "{line:?}");
            assert!(decode_request(line).is_err(), "{line:?}");
        }
    }
}
