//! The two-party trade's rules, as plain functions over the ledger and a
//! [`LedgerDb`]: what the buyer checks in an offer, how it builds its
//! proposal, and what the seller checks before signing. The flows in
//! [`crate::flows::trade`] call these between their suspension points.

use crate::keys;
use crate::ledger::{
    Amount, AssetKind, CommandData, SignedTransaction, StateAndRef, TransactionBuilder, VerifyError,
};
use crate::ledger_db::{LedgerDb, LedgerDbError, LedgerTable, decode, encode};
use crate::trust;
use crate::vault::{self, LockId, VaultError};
use flow_runtime::{Party, PublicKey};
use serde::{Deserialize, Serialize};

/// The seller's first message: what is for sale, at what price, the key
/// the payment must go to (fresh for the trade), and the asset's
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeOffer {
    /// The asset offered, and where it lives on the ledger.
    pub asset: StateAndRef,
    /// The price asked.
    pub price: Amount,
    /// Who the cash must be paid to.
    pub pay_to: PublicKey,
    /// The transaction that created the asset, which the buyer must verify
    /// anyway: sent with the offer, it saves the buyer a fetch round trip
    /// (two messages, each a frame, a checkpoint and an ack). Untrusted
    /// like any download: the buyer keeps it only if its id is the
    /// asset's and verifies it before recording; older history it still
    /// fetches. Empty if the seller does not send it (the buyer then
    /// fetches it).
    pub history: Vec<SignedTransaction>,
}

impl TradeOffer {
    /// The offer without its [`history`](TradeOffer::history): what a flow
    /// keeps once the history is sent or handed to the resolution, so that
    /// its checkpoints do not carry the transaction bytes.
    pub fn without_history(self) -> TradeOffer {
        TradeOffer {
            history: Vec::new(),
            ..self
        }
    }
}

/// Why a trade was refused. Its message is what the counterparty receives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TradeError {
    /// The asking price is above what the buyer accepts.
    #[error("the price {asked} is above the acceptable {acceptable}")]
    PriceTooHigh {
        /// What the seller asks.
        asked: Amount,
        /// What the buyer accepts.
        acceptable: Amount,
    },
    /// The asset is not of the kind the buyer wants.
    #[error("the asset offered is {offered} but the buyer wants {wanted}")]
    WrongAsset {
        /// What was offered.
        offered: AssetKind,
        /// What was wanted.
        wanted: AssetKind,
    },
    /// The offered state does not match the ledger.
    #[error("the offered state {0} does not match the transaction that created it")]
    OfferMismatch(String),
    /// The proposal does not spend the offered asset exactly once.
    #[error("the proposed transaction does not consume the offered asset exactly once")]
    AssetNotSpent,
    /// The proposal pays the wrong amount.
    #[error("the proposed transaction pays {paid} to the seller instead of exactly {price}")]
    WrongPayment {
        /// What it pays.
        paid: Amount,
        /// The agreed price.
        price: Amount,
    },
    /// The proposal would also spend other states of the seller.
    #[error(
        "the proposed transaction also consumes {0}, which belongs to the seller and is not for sale"
    )]
    SpendsSellerState(String),
    /// The proposal names another notary.
    #[error("the proposed transaction names notary {named}, but the trade uses {expected}")]
    WrongNotary {
        /// What it names.
        named: String,
        /// The agreed notary.
        expected: String,
    },
    /// The proposal asks more of the seller's keys than the deal: an extra
    /// command or output involving them.
    #[error("the proposed transaction asks for more than the deal: {0}")]
    Unexpected(String),
    /// The proposal pays in cash of an issuer the seller does not trust.
    #[error(
        "the proposed transaction pays in cash issued by {issuer} ({key:?}), an issuer this node does not trust"
    )]
    UntrustedIssuer {
        /// The issuer's name (a label).
        issuer: String,
        /// The issuer's key (its identity).
        key: PublicKey,
    },
    /// The transaction is invalid.
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    /// The vault refused (e.g. insufficient funds).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Signing failed.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// Storage failed.
    #[error(transparent)]
    LedgerDb(#[from] LedgerDbError),
}

/// How long a trade waits for its counterparty before giving up, unless
/// the node's operator set another bound ([`set_trade_timeout`]).
pub const DEFAULT_TRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// The [`LedgerTable::Config`] key of the node's trade timeout (milliseconds).
const TRADE_TIMEOUT_KEY: &[u8] = b"trade-timeout-ms";

/// The bound on how long this node's trades wait for the counterparty
/// while they negotiate (see [`crate::flows::trade`]).
pub fn trade_timeout(store: &dyn LedgerDb) -> Result<std::time::Duration, LedgerDbError> {
    Ok(match store.get(LedgerTable::Config, TRADE_TIMEOUT_KEY)? {
        Some(bytes) => std::time::Duration::from_millis(decode(LedgerTable::Config, &bytes)?),
        None => DEFAULT_TRADE_TIMEOUT,
    })
}

/// Sets this node's trade timeout (kept in its database).
pub fn set_trade_timeout(
    store: &mut dyn LedgerDb,
    timeout: std::time::Duration,
) -> Result<(), LedgerDbError> {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    store.put(LedgerTable::Config, TRADE_TIMEOUT_KEY, &encode(&ms)?)
}

/// The buyer's first check, before downloading anything: price and kind.
pub fn check_offer(
    offer: &TradeOffer,
    acceptable: Amount,
    wanted: AssetKind,
) -> Result<(), TradeError> {
    if offer.price.currency != acceptable.currency || offer.price.quantity > acceptable.quantity {
        return Err(TradeError::PriceTooHigh {
            asked: offer.price,
            acceptable,
        });
    }
    let offered = offer.asset.state.kind();
    if offered != wanted {
        return Err(TradeError::WrongAsset { offered, wanted });
    }
    Ok(())
}

/// After resolving the asset's transaction: the offered state must be the
/// output it claims to be.
pub fn check_offered_state(store: &dyn LedgerDb, offer: &TradeOffer) -> Result<(), TradeError> {
    let r = offer.asset.state_ref;
    let stx = vault::transaction(store, &r.tx_id)?
        .ok_or_else(|| TradeError::OfferMismatch(format!("{r} (its transaction is unknown)")))?;
    match stx.tx.outputs.get(r.index as usize) {
        Some(state) if *state == offer.asset.state => Ok(()),
        _ => Err(TradeError::OfferMismatch(r.to_string())),
    }
}

/// The buyer's proposal: pays `offer.price` from its vault (soft-locked
/// under `lock`), takes the asset to a fresh key, and signs for its cash.
/// The seller's and the notary's signatures are still missing.
pub fn build_proposal(
    store: &mut dyn LedgerDb,
    offer: &TradeOffer,
    notary: &Party,
    lock: LockId,
) -> Result<SignedTransaction, TradeError> {
    let coins = vault::select_coins(store, offer.price, lock)?;
    let new_owner = keys::fresh_key(store)?;
    // A change key only if there is change: a fresh key costs a scalar
    // multiplication (about a signature's CPU) and a write. Coins that add
    // up to the price exactly leave no change output, so `change` is then
    // never used.
    let paid_in = coins
        .iter()
        .filter_map(|c| c.state.as_cash())
        .fold(0u64, |sum, c| sum.saturating_add(c.amount.quantity));
    let change = if paid_in > offer.price.quantity {
        keys::fresh_key(store)?
    } else {
        new_owner
    };
    let mut builder = TransactionBuilder::new(notary.clone());
    let cash_signers = builder.add_cash_payment(&coins, offer.price, offer.pay_to, change)?;
    builder.add_input(offer.asset.clone());
    builder.add_output(offer.asset.state.with_owner(new_owner));
    let command = match offer.asset.state.kind() {
        AssetKind::CommercialPaper => CommandData::PaperMove,
        AssetKind::Cash => CommandData::CashMove,
    };
    builder.add_command(command, vec![*offer.asset.state.owner()]);
    let tx = builder.to_wire();
    let id = tx.id();
    let mut stx = SignedTransaction::new(tx);
    for key in cash_signers {
        stx.add_signature(keys::sign(store, &key, &id.0)?);
    }
    Ok(stx)
}

/// The seller's check of the buyer's proposal, before signing. Returns the
/// keys to sign with: exactly the asset owner's, the only key the deal
/// names.
///
/// The proposal must spend the offered asset exactly once and no other
/// state of ours; pay exactly the price to our `pay_to` key, in cash of
/// an issuer this node trusts (see [`crate::trust`]); name the agreed
/// notary; and be valid apart from our signature and the notary's (its
/// dependencies must have been resolved first, so the payment's chain has
/// been verified back to its issuer's signed issuance). Our signature
/// authorises every command that lists our key, so nothing may involve
/// our keys beyond the deal: the only command naming one of our keys is
/// the asset's move, naming only the asset's owner; the only outputs to
/// our keys are the payment.
pub fn check_proposal(
    store: &dyn LedgerDb,
    stx: &SignedTransaction,
    offer: &TradeOffer,
    notary: &Party,
) -> Result<Vec<PublicKey>, TradeError> {
    if stx.tx.notary != *notary {
        return Err(TradeError::WrongNotary {
            named: stx.tx.notary.name().to_owned(),
            expected: notary.name().to_owned(),
        });
    }
    let asset = offer.asset.state_ref;
    if stx.tx.inputs.iter().filter(|i| **i == asset).count() != 1 {
        return Err(TradeError::AssetNotSpent);
    }
    for input in stx.tx.inputs.iter().filter(|i| **i != asset) {
        if vault::state(store, input)?.is_some() {
            return Err(TradeError::SpendsSellerState(input.to_string()));
        }
    }
    let owner = *offer.asset.state.owner();
    check_commands(store, stx, offer, &owner)?;
    let mut paid: u64 = 0;
    for output in &stx.tx.outputs {
        if !keys::is_ours(store, output.owner())? {
            continue;
        }
        let cash = match output.as_cash() {
            Some(c) if c.owner == offer.pay_to && c.amount.currency == offer.price.currency => c,
            _ => {
                return Err(TradeError::Unexpected(format!(
                    "an output gives the seller's key {:?} something other than the payment: {output:?}",
                    output.owner()
                )));
            }
        };
        if !trust::is_trusted(store, cash.issuer.key())? {
            return Err(TradeError::UntrustedIssuer {
                issuer: cash.issuer.name().to_owned(),
                key: *cash.issuer.key(),
            });
        }
        paid = paid.saturating_add(cash.amount.quantity);
    }
    let paid = Amount::new(paid, offer.price.currency);
    if paid != offer.price {
        return Err(TradeError::WrongPayment {
            paid,
            price: offer.price,
        });
    }
    stx.verify_except(&[owner, *notary.key()], vault::resolver(store))?;
    Ok(vec![owner])
}

/// Every command that names one of our keys must be the asset's move,
/// naming the asset's owner and no other key of ours: anything else would
/// have our signature authorise what we never agreed to (an issuance in
/// our name, a move of something else).
fn check_commands(
    store: &dyn LedgerDb,
    stx: &SignedTransaction,
    offer: &TradeOffer,
    owner: &PublicKey,
) -> Result<(), TradeError> {
    let expected = match offer.asset.state.kind() {
        AssetKind::CommercialPaper => CommandData::PaperMove,
        AssetKind::Cash => CommandData::CashMove,
    };
    let mut asset_moved = false;
    for command in &stx.tx.commands {
        for key in &command.signers {
            if !keys::is_ours(store, key)? {
                continue;
            }
            if command.data != expected || key != owner {
                return Err(TradeError::Unexpected(format!(
                    "a {:?} command needs the signature of the seller's key {key:?}; the seller agreed only to a {expected:?} of the offered asset by {owner:?}",
                    command.data
                )));
            }
            asset_moved = true;
        }
    }
    if !asset_moved {
        return Err(TradeError::Unexpected(format!(
            "no {expected:?} command is signed by the asset's owner {owner:?}"
        )));
    }
    Ok(())
}
