//! Transactions: the unsigned [`WireTransaction`] (whose hash is its id),
//! the [`SignedTransaction`] that carries signatures over that id, and a
//! [`TransactionBuilder`] for assembling one.

use super::amount::Amount;
use super::states::{Cash, ContractState, StateAndRef, StateRef};
use super::verify::VerifyError;
use crate::crypto::{SecureHash, TxSignature};
use flow_runtime::{Party, PublicKey, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What a command asks the contracts to allow. Each has its own rules in
/// [`contracts`](super::contracts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandData {
    /// Create cash out of nothing: the issuer must sign.
    CashIssue,
    /// Move cash between owners: every input owner must sign, and cash is
    /// conserved per issuer and currency.
    CashMove,
    /// Create commercial paper: the issuer must sign.
    PaperIssue,
    /// Move paper to a new owner: the old owner must sign.
    PaperMove,
    /// Consume matured paper against payment of its face value to its owner.
    PaperRedeem,
}

/// A command and the keys that must sign the transaction for it. The
/// contracts check that the right keys are listed; signature verification
/// checks that every listed key did sign.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Command {
    /// What is being done.
    pub data: CommandData,
    /// Who must sign for it.
    pub signers: Vec<PublicKey>,
}

/// The time interval in which a transaction may be notarised; the notary
/// checks it against its own clock, so contracts can trust it (paper
/// redemption needs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimeWindow {
    /// Not before this time, if set.
    pub from: Option<Timestamp>,
    /// Not at or after this time, if set.
    pub until: Option<Timestamp>,
}

impl TimeWindow {
    /// True if `now` lies inside the window.
    pub fn contains(&self, now: Timestamp) -> bool {
        self.from.is_none_or(|from| now >= from) && self.until.is_none_or(|until| now < until)
    }
}

/// A transaction without its signatures.
///
/// Its id is SHA-256 over a domain tag followed by its **canonical bytes**:
/// the rmp-serde (MessagePack) encoding of this struct, fields in the order
/// declared below, structs as arrays (no field names), integers in their
/// shortest form, enums as `{variant: fields}`, sequences in the order given.
/// The struct holds no maps, so the encoding of a value is unique; a test
/// pins the id of a fixed transaction so any change to the encoding is
/// caught. Changing a field here changes every id: bump the domain tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WireTransaction {
    /// States consumed, by reference.
    pub inputs: Vec<StateRef>,
    /// States created; output `i` is referenced as `StateRef { id, i }`.
    pub outputs: Vec<ContractState>,
    /// What is done and who must sign.
    pub commands: Vec<Command>,
    /// The notary that guards these inputs and the outputs created.
    pub notary: Party,
    /// When the transaction may be notarised, if it matters.
    pub time_window: Option<TimeWindow>,
    /// Random bits so that two otherwise identical transactions (e.g. two
    /// equal issuances) get different ids.
    pub salt: u64,
}

/// Domain tag hashed before the canonical bytes, so a transaction id can
/// never collide with a hash of some other kind of data.
const TX_ID_DOMAIN: &[u8] = b"finance-flows/wire-transaction/v1\0";

impl WireTransaction {
    /// The canonical bytes (see the type's docs).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let started = std::time::Instant::now();
        // Serializing into a Vec cannot fail for this type: it contains only
        // structs, enums, sequences, integers, strings and byte arrays, all
        // of which rmp-serde encodes without error.
        let bytes = rmp_serde::to_vec(self).unwrap_or_else(|e| {
            unreachable!("a WireTransaction always encodes as MessagePack: {e}")
        });
        crate::ledger_db::codec_metrics::encoded(started);
        bytes
    }

    /// The transaction's id: SHA-256 of the domain tag and canonical bytes.
    pub fn id(&self) -> SecureHash {
        SecureHash::of(&[TX_ID_DOMAIN, &self.canonical_bytes()])
    }

    /// True if the notary must sign: the transaction consumes something (a
    /// double spend is possible) or claims a time window.
    pub fn needs_notary(&self) -> bool {
        !self.inputs.is_empty() || self.time_window.is_some()
    }

    /// Every key that must sign: each command's signers, plus the notary's
    /// key when [`needs_notary`](Self::needs_notary).
    pub fn required_signers(&self) -> BTreeSet<PublicKey> {
        let mut keys: BTreeSet<PublicKey> = self
            .commands
            .iter()
            .flat_map(|c| c.signers.iter().copied())
            .collect();
        if self.needs_notary() {
            keys.insert(*self.notary.key());
        }
        keys
    }

    /// Output `index` with its reference.
    pub fn out_ref(&self, index: usize) -> Option<StateAndRef> {
        let state = self.outputs.get(index)?.clone();
        Some(StateAndRef {
            state,
            state_ref: StateRef {
                tx_id: self.id(),
                index: u32::try_from(index).ok()?,
            },
        })
    }

    /// Every output with its reference, in order.
    pub fn out_refs(&self) -> Vec<StateAndRef> {
        let id = self.id();
        self.outputs
            .iter()
            .zip(0u32..)
            .map(|(state, index)| StateAndRef {
                state: state.clone(),
                state_ref: StateRef { tx_id: id, index },
            })
            .collect()
    }
}

/// A transaction plus signatures over its id. Travels between nodes and is
/// what vaults store; it becomes final once it carries every required
/// signature including the notary's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTransaction {
    /// The transaction.
    pub tx: WireTransaction,
    /// Signatures over `tx.id()`, at most one per key.
    pub sigs: Vec<TxSignature>,
}

impl SignedTransaction {
    /// A transaction with no signatures yet.
    pub fn new(tx: WireTransaction) -> Self {
        Self {
            tx,
            sigs: Vec::new(),
        }
    }

    /// The transaction's id (recomputed from its content every time, so a
    /// peer cannot pair a transaction with a false id).
    pub fn id(&self) -> SecureHash {
        self.tx.id()
    }

    /// Adds `sig`, replacing an earlier signature by the same key.
    pub fn with_signature(mut self, sig: TxSignature) -> Self {
        self.add_signature(sig);
        self
    }

    /// Adds `sig` in place, replacing an earlier signature by the same key.
    pub fn add_signature(&mut self, sig: TxSignature) {
        self.sigs.retain(|s| s.by != sig.by);
        self.sigs.push(sig);
    }

    /// Checks that every signature present is valid, and that every
    /// required signer has signed except the keys in `allowed_missing` (a
    /// partly signed transaction is checked this way before adding one's
    /// own signature). Signatures by keys that are not required are
    /// rejected too: they would be dead weight a peer could stuff in.
    pub fn verify_signatures_except(
        &self,
        allowed_missing: &[PublicKey],
    ) -> Result<(), VerifyError> {
        self.verify_signatures_knowing(allowed_missing, &[])
    }

    /// As [`verify_signatures_except`](Self::verify_signatures_except), but
    /// a signature equal (key and bytes) to one in `known` is not checked
    /// cryptographically again. `known` must hold only signatures over this
    /// transaction's id that the caller has verified or made itself — e.g.
    /// the proposal's signatures, once the final transaction's id has been
    /// checked to be the proposal's.
    pub fn verify_signatures_knowing(
        &self,
        allowed_missing: &[PublicKey],
        known: &[TxSignature],
    ) -> Result<(), VerifyError> {
        self.verify_signatures_of(&self.id(), allowed_missing, known)
    }

    /// [`verify_signatures_knowing`](Self::verify_signatures_knowing) for a
    /// caller that has just computed `id`, this transaction's
    /// [`id`](Self::id), from this very value: a transaction id costs an
    /// encoding and a SHA-256 pass, and a trade's steps need the same id
    /// several times. Crate-internal, so that no caller can pass an id it
    /// was merely told.
    pub(crate) fn verify_signatures_of(
        &self,
        id: &SecureHash,
        allowed_missing: &[PublicKey],
        known: &[TxSignature],
    ) -> Result<(), VerifyError> {
        debug_assert_eq!(*id, self.id(), "the id passed is not the transaction's");
        self.check_signers_except(id, allowed_missing)?;
        for sig in &self.sigs {
            if !known.contains(sig) && !sig.is_valid_for(&id.0) {
                return Err(VerifyError::InvalidSignature {
                    key: sig.by,
                    tx: *id,
                });
            }
        }
        Ok(())
    }

    /// The signer-set half of
    /// [`verify_signatures_except`](Self::verify_signatures_except), without
    /// the cryptography: at most one signature per key, only required keys,
    /// and every required key present except `allowed_missing`. For a
    /// transaction whose signatures this node made or has verified itself,
    /// where checking them again would cost ~27 µs each for nothing.
    pub fn check_signers_except(
        &self,
        id: &SecureHash,
        allowed_missing: &[PublicKey],
    ) -> Result<(), VerifyError> {
        let required = self.tx.required_signers();
        let mut seen = BTreeSet::new();
        for sig in &self.sigs {
            if !seen.insert(sig.by) {
                return Err(VerifyError::DuplicateSignature { key: sig.by });
            }
            if !required.contains(&sig.by) {
                return Err(VerifyError::UnexpectedSignature { key: sig.by });
            }
        }
        let missing: Vec<PublicKey> = required
            .iter()
            .filter(|k| !seen.contains(k) && !allowed_missing.contains(k))
            .copied()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(VerifyError::MissingSignatures {
                keys: missing,
                tx: *id,
            })
        }
    }

    /// [`verify_signatures_except`](Self::verify_signatures_except) with
    /// nothing allowed to be missing.
    pub fn verify_signatures(&self) -> Result<(), VerifyError> {
        self.verify_signatures_except(&[])
    }

    /// The required signers that have not signed yet.
    pub fn missing_signers(&self) -> BTreeSet<PublicKey> {
        let mut keys = self.tx.required_signers();
        for sig in &self.sigs {
            keys.remove(&sig.by);
        }
        keys
    }
}

/// Assembles a [`WireTransaction`] step by step. Keeps the input states it
/// was given so that a caller can check what it spends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionBuilder {
    notary: Party,
    inputs: Vec<StateAndRef>,
    outputs: Vec<ContractState>,
    commands: Vec<Command>,
    time_window: Option<TimeWindow>,
    salt: u64,
}

impl TransactionBuilder {
    /// An empty transaction for `notary`, with a random salt.
    pub fn new(notary: Party) -> Self {
        Self::with_salt(notary, rand::random())
    }

    /// An empty transaction for `notary` with the given salt (tests use this
    /// to get reproducible ids).
    pub fn with_salt(notary: Party, salt: u64) -> Self {
        Self {
            notary,
            inputs: Vec::new(),
            outputs: Vec::new(),
            commands: Vec::new(),
            time_window: None,
            salt,
        }
    }

    /// Consumes `input`.
    pub fn add_input(&mut self, input: StateAndRef) -> &mut Self {
        self.inputs.push(input);
        self
    }

    /// Creates `output`.
    pub fn add_output(&mut self, output: ContractState) -> &mut Self {
        self.outputs.push(output);
        self
    }

    /// Adds a command signed by `signers` (duplicates removed, order kept).
    pub fn add_command(&mut self, data: CommandData, signers: Vec<PublicKey>) -> &mut Self {
        let mut unique = Vec::with_capacity(signers.len());
        for k in signers {
            if !unique.contains(&k) {
                unique.push(k);
            }
        }
        self.commands.push(Command {
            data,
            signers: unique,
        });
        self
    }

    /// Sets the time window.
    pub fn set_time_window(&mut self, window: TimeWindow) -> &mut Self {
        self.time_window = Some(window);
        self
    }

    /// The inputs added so far.
    pub fn inputs(&self) -> &[StateAndRef] {
        &self.inputs
    }

    /// Adds a cash payment of `amount` to `pay_to`, spending `coins` (cash the
    /// caller owns, e.g. from coin selection) and returning change to
    /// `change_to`. Outputs are grouped per issuer, since cash of different
    /// issuers does not mix. Returns the keys that must sign (the owners of
    /// the coins spent).
    ///
    /// Fails if a coin is not cash of `amount`'s currency or the coins do not
    /// add up to `amount`.
    pub fn add_cash_payment(
        &mut self,
        coins: &[StateAndRef],
        amount: Amount,
        pay_to: PublicKey,
        change_to: PublicKey,
    ) -> Result<Vec<PublicKey>, VerifyError> {
        let mut remaining = amount.quantity;
        // issuer -> (paid to payee, change)
        let mut per_issuer: BTreeMap<Party, (u64, u64)> = BTreeMap::new();
        let mut signers = Vec::new();
        for coin in coins {
            let cash = coin.state.as_cash().ok_or_else(|| {
                VerifyError::Contract(format!("coin {} is not cash", coin.state_ref))
            })?;
            if cash.amount.currency != amount.currency {
                return Err(VerifyError::Contract(format!(
                    "coin {} is {} but the payment is in {}",
                    coin.state_ref, cash.amount.currency, amount.currency
                )));
            }
            let pay = cash.amount.quantity.min(remaining);
            remaining -= pay;
            let entry = per_issuer.entry(cash.issuer.clone()).or_default();
            entry.0 += pay;
            entry.1 += cash.amount.quantity - pay;
            if !signers.contains(&cash.owner) {
                signers.push(cash.owner);
            }
            self.inputs.push(coin.clone());
        }
        if remaining > 0 {
            return Err(VerifyError::Contract(format!(
                "the coins given fall short of {amount} by {}",
                Amount::new(remaining, amount.currency)
            )));
        }
        for (issuer, (paid, change)) in per_issuer {
            for (quantity, owner) in [(paid, pay_to), (change, change_to)] {
                if quantity > 0 {
                    self.outputs.push(ContractState::Cash(Cash {
                        amount: Amount::new(quantity, amount.currency),
                        issuer: issuer.clone(),
                        owner,
                    }));
                }
            }
        }
        self.add_command(CommandData::CashMove, signers.clone());
        Ok(signers)
    }

    /// The finished transaction.
    pub fn to_wire(&self) -> WireTransaction {
        WireTransaction {
            inputs: self.inputs.iter().map(|i| i.state_ref).collect(),
            outputs: self.outputs.clone(),
            commands: self.commands.clone(),
            notary: self.notary.clone(),
            time_window: self.time_window,
            salt: self.salt,
        }
    }
}
