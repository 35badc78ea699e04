//! Full verification of a transaction: resolve its inputs, check the
//! signatures, run the contracts.

use super::contracts;
use super::states::{ContractState, StateAndRef, StateRef};
use super::transaction::{Command, SignedTransaction, TimeWindow, WireTransaction};
use crate::crypto::SecureHash;
use flow_runtime::{Party, PublicKey};

/// Why a transaction is not valid. Each message says what is wrong with
/// which transaction or state, so an operator can tell a malicious peer from
/// a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A signature does not verify: the transaction or the signature was
    /// tampered with.
    #[error(
        "the signature by {key:?} on transaction {tx} is invalid (tampered transaction or signature)"
    )]
    InvalidSignature {
        /// Who claims to have signed.
        key: PublicKey,
        /// The transaction.
        tx: SecureHash,
    },
    /// Required signers have not signed.
    #[error("transaction {tx} lacks the signatures of {keys:?}")]
    MissingSignatures {
        /// The keys that did not sign.
        keys: Vec<PublicKey>,
        /// The transaction.
        tx: SecureHash,
    },
    /// A key signed twice.
    #[error("{key:?} signed the transaction twice")]
    DuplicateSignature {
        /// The key.
        key: PublicKey,
    },
    /// A key that no command requires signed.
    #[error("{key:?} signed but no command requires its signature")]
    UnexpectedSignature {
        /// The key.
        key: PublicKey,
    },
    /// An input points at a transaction we do not have (resolve its
    /// dependencies first) or at an output that does not exist.
    #[error("input {0} cannot be resolved: its transaction is unknown or has no such output")]
    UnresolvedInput(StateRef),
    /// An input's state was created under another notary.
    #[error(
        "input {input} is guarded by notary {input_notary}, not by this transaction's notary {notary}"
    )]
    WrongNotary {
        /// The input.
        input: StateRef,
        /// Its notary.
        input_notary: String,
        /// The transaction's notary.
        notary: String,
    },
    /// The transaction breaks a contract rule.
    #[error("contract rejected the transaction: {0}")]
    Contract(String),
}

/// A transaction with its inputs resolved to the states they point at: what
/// contracts look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerTransaction {
    /// The transaction's id.
    pub id: SecureHash,
    /// The consumed states.
    pub inputs: Vec<StateAndRef>,
    /// The created states.
    pub outputs: Vec<ContractState>,
    /// The commands.
    pub commands: Vec<Command>,
    /// The notary.
    pub notary: Party,
    /// The time window, attested by the notary.
    pub time_window: Option<TimeWindow>,
}

/// Where verification finds the states a transaction spends.
///
/// Any `FnMut(&SecureHash) -> Option<WireTransaction>` (a lookup of whole
/// producing transactions, handy in tests) is one; the vault's
/// [`resolver`](crate::vault::resolver) reads just the spent outputs, so
/// spending one coin of a thousand-coin issuance does not decode the
/// other 999.
pub trait InputResolver {
    /// The state created at `input` and the notary of the transaction that
    /// created it; `None` if the transaction is unknown or has no such
    /// output.
    fn resolve_input(&mut self, input: &StateRef) -> Option<(ContractState, Party)>;
}

impl<F: FnMut(&SecureHash) -> Option<WireTransaction>> InputResolver for F {
    fn resolve_input(&mut self, input: &StateRef) -> Option<(ContractState, Party)> {
        let producer = self(&input.tx_id)?;
        let state = producer.outputs.into_iter().nth(input.index as usize)?;
        Some((state, producer.notary))
    }
}

impl WireTransaction {
    /// Resolves the inputs through `lookup`. Every input's transaction must
    /// have the same notary as this one (a notary can only prevent double
    /// spends of states it guards).
    pub fn to_ledger(&self, lookup: impl InputResolver) -> Result<LedgerTransaction, VerifyError> {
        self.to_ledger_as(self.id(), lookup)
    }

    /// [`to_ledger`](Self::to_ledger) for a caller that has just computed
    /// `id`, this transaction's id, from this very value (see
    /// [`SignedTransaction::verify_signatures_of`]).
    pub(crate) fn to_ledger_as(
        &self,
        id: SecureHash,
        mut lookup: impl InputResolver,
    ) -> Result<LedgerTransaction, VerifyError> {
        debug_assert_eq!(id, self.id(), "the id passed is not the transaction's");
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            let (state, producer_notary) = lookup
                .resolve_input(input)
                .ok_or(VerifyError::UnresolvedInput(*input))?;
            if producer_notary != self.notary {
                return Err(VerifyError::WrongNotary {
                    input: *input,
                    input_notary: producer_notary.name().to_owned(),
                    notary: self.notary.name().to_owned(),
                });
            }
            inputs.push(StateAndRef {
                state,
                state_ref: *input,
            });
        }
        Ok(LedgerTransaction {
            id,
            inputs,
            outputs: self.outputs.clone(),
            commands: self.commands.clone(),
            notary: self.notary.clone(),
            time_window: self.time_window,
        })
    }
}

impl SignedTransaction {
    /// Full verification: every required signature present and valid, the
    /// inputs resolvable through `lookup`, and the contracts satisfied.
    pub fn verify(&self, lookup: impl InputResolver) -> Result<LedgerTransaction, VerifyError> {
        self.verify_except(&[], lookup)
    }

    /// As [`verify`](Self::verify), but tolerating the absence of the
    /// signatures of `allowed_missing` (a party checking a proposal before it
    /// signs, or before the notary has).
    pub fn verify_except(
        &self,
        allowed_missing: &[PublicKey],
        lookup: impl InputResolver,
    ) -> Result<LedgerTransaction, VerifyError> {
        self.verify_as(self.id(), allowed_missing, &[], lookup)
    }

    /// Full verification of this transaction, whose id the caller has just
    /// computed from this very value (see
    /// [`verify_signatures_of`](Self::verify_signatures_of)): the
    /// signatures but those of `allowed_missing` present and valid (those
    /// in `known` not checked again, see
    /// [`verify_signatures_knowing`](Self::verify_signatures_knowing)), the
    /// inputs resolved through `lookup`, the contracts satisfied. What every
    /// `verify*` method but
    /// [`verify_trusting_signatures`](Self::verify_trusting_signatures)
    /// does.
    pub(crate) fn verify_as(
        &self,
        id: SecureHash,
        allowed_missing: &[PublicKey],
        known: &[crate::crypto::TxSignature],
        lookup: impl InputResolver,
    ) -> Result<LedgerTransaction, VerifyError> {
        self.verify_signatures_of(&id, allowed_missing, known)?;
        let ltx = self.tx.to_ledger_as(id, lookup)?;
        contracts::verify(&ltx)?;
        Ok(ltx)
    }

    /// Full verification, like [`verify`](Self::verify), except that the
    /// signatures in `known` are not checked cryptographically again (see
    /// [`verify_signatures_knowing`](Self::verify_signatures_knowing) for
    /// what `known` may hold).
    pub fn verify_knowing(
        &self,
        known: &[crate::crypto::TxSignature],
        lookup: impl InputResolver,
    ) -> Result<LedgerTransaction, VerifyError> {
        self.verify_as(self.id(), &[], known, lookup)
    }

    /// As [`verify_except`](Self::verify_except) but without checking the
    /// signatures cryptographically: the signer set must be right (see
    /// [`check_signers_except`](Self::check_signers_except)), the inputs
    /// resolvable and the contracts satisfied. Only for a transaction whose
    /// signatures are known good — e.g. finality before notarisation: the
    /// node built the transaction, checked each counterparty signature as
    /// it arrived, and the notary verifies every signature again before it
    /// signs.
    pub fn verify_trusting_signatures(
        &self,
        allowed_missing: &[PublicKey],
        lookup: impl InputResolver,
    ) -> Result<LedgerTransaction, VerifyError> {
        let ltx = self.tx.to_ledger(lookup)?;
        self.check_signers_except(&ltx.id, allowed_missing)?;
        contracts::verify(&ltx)?;
        Ok(ltx)
    }
}
