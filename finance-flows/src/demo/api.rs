//! What the multi-process demo's nodes offer through their admin API: the
//! role of each node, the flows each makes startable by name, and the JSON
//! arguments of each. The node processes ([`node_process`](super::node_process))
//! register them; the orchestrator ([`multi_process`](super::multi_process))
//! starts them like any client would (`POST /api/v1/flows`, or `flowctl
//! flows start NAME --args JSON`), so the argument types are shared here
//! and serde checks every request against them.

use crate::flows::Notary;
use crate::flows::identity::ledger_identity;
use crate::flows::issue::{issue_cash, issue_paper};
use crate::flows::report::vault_report;
use crate::flows::trade::sell;
use crate::ledger::{Amount, StateRef};
use flow_runtime::{Flow, Party, Timestamp};
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
    /// Every role, in the order the demo stops them.
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

    /// The flows this role's node makes startable through its admin API.
    pub fn startable(self) -> &'static [&'static str] {
        match self {
            Role::Notary => &[LEDGER_IDENTITY, VAULT_REPORT],
            Role::Seller => &[LEDGER_IDENTITY, VAULT_REPORT, ISSUE_PAPER, SELL],
            Role::Buyer => &[LEDGER_IDENTITY, VAULT_REPORT, ISSUE_CASH, DOUBLE_SPEND],
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `ledger_identity` (every node, no arguments): the node's ledger
/// identity, a [`Party`].
pub const LEDGER_IDENTITY: &str = ledger_identity::Flow::NAME;
/// `vault_report` (every node, no arguments): a
/// [`VaultReport`](crate::flows::report::VaultReport).
pub const VAULT_REPORT: &str = vault_report::Flow::NAME;
/// `issue_cash` (the buyer, the demo's bank): [`IssueCashArgs`].
pub const ISSUE_CASH: &str = issue_cash::Flow::NAME;
/// `issue_paper` (the seller): [`IssuePaperArgs`].
pub const ISSUE_PAPER: &str = issue_paper::Flow::NAME;
/// `sell` (the seller): one trade, [`SellArgs`].
pub const SELL: &str = sell::Flow::NAME;
/// The double-spend probe (the buyer): [`DoubleSpendArgs`].
pub const DOUBLE_SPEND: &str = super::double_spend_probe::Flow::NAME;

/// The client id under which a seller started with `--trust` runs
/// `trust_issuers` at start-up: a client waits for that run's result
/// (`GET /api/v1/client-ids/trust-issuers`) before starting trades.
pub const TRUST_CLIENT_ID: &str = "trust-issuers";

/// Arguments of [`ISSUE_CASH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueCashArgs {
    /// Value of each coin.
    pub amount: Amount,
    /// How many coins.
    pub coins: u32,
    /// The notary the cash names.
    pub notary: Notary,
}

/// Arguments of [`ISSUE_PAPER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuePaperArgs {
    /// Face value.
    pub face_value: Amount,
    /// Maturity.
    pub maturity: Timestamp,
    /// The notary the paper names.
    pub notary: Notary,
}

/// Arguments of [`SELL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SellArgs {
    /// Who buys.
    pub buyer: Party,
    /// The paper to sell.
    pub paper: StateRef,
    /// Its price.
    pub price: Amount,
    /// The notary.
    pub notary: Notary,
}

/// Arguments of [`DOUBLE_SPEND`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoubleSpendArgs {
    /// A coin a settled trade consumed.
    pub coin: StateRef,
    /// The notary.
    pub notary: Notary,
}

/// The largest number of coins one `issue_cash` may make: a request is
/// checked before anything is written.
pub const MAX_COINS: u32 = 1_000_000;

impl IssueCashArgs {
    /// The flow, if the arguments make sense.
    pub fn flow(self) -> Result<issue_cash::Flow, String> {
        if self.coins == 0 || self.coins > MAX_COINS {
            return Err(format!("coins must be 1 to {MAX_COINS}"));
        }
        if self.amount.quantity == 0 {
            return Err("amount must be more than zero".into());
        }
        Ok(issue_cash(self.amount, self.coins, self.notary))
    }
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
    fn arguments_round_trip_through_json() {
        let args = SellArgs {
            buyer: Party::new("Buyer", PublicKey([3; 32])),
            paper: StateRef {
                tx_id: SecureHash([7; 32]),
                index: 3,
            },
            price: Amount::new(90_000, Currency::USD),
            notary: notary(),
        };
        let json = serde_json::to_value(&args).unwrap();
        assert_eq!(serde_json::from_value::<SellArgs>(json).unwrap(), args);
    }

    #[test]
    fn wrong_or_unknown_fields_are_refused() {
        let mut json = serde_json::to_value(DoubleSpendArgs {
            coin: StateRef {
                tx_id: SecureHash([7; 32]),
                index: 0,
            },
            notary: notary(),
        })
        .unwrap();
        json["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<DoubleSpendArgs>(json.clone()).is_err());
        json.as_object_mut().unwrap().remove("extra");
        json["coin"] = serde_json::json!("not a state ref");
        assert!(serde_json::from_value::<DoubleSpendArgs>(json).is_err());
    }

    #[test]
    fn issuing_no_cash_is_refused_before_it_starts() {
        let args = IssueCashArgs {
            amount: Amount::new(1, Currency::USD),
            coins: 0,
            notary: notary(),
        };
        assert!(args.flow().is_err());
    }
}
