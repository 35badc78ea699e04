//! The contracts: the rules a transaction must satisfy, per kind of state.
//!
//! * **Cash.** Amounts are positive. Cash is grouped by (issuer, currency).
//!   A group with no inputs is an issuance and needs a `CashIssue` command
//!   signed by the issuer. A group with inputs must conserve value exactly
//!   (inputs sum = outputs sum) and needs a `CashMove` command signed by
//!   every input owner. There is no exit: cash is only ever moved.
//! * **Commercial paper.** Exactly one paper command when paper is present.
//!   `PaperIssue`: no paper inputs, positive face values, signed by each
//!   output's issuer; with a time window, maturity must lie after it.
//!   `PaperMove`: inputs and outputs pair up one to one with the same
//!   issuer, face value and maturity; signed by every input owner.
//!   `PaperRedeem`: no paper outputs; a notarised time window starting at or
//!   after each input's maturity; each input's owner receives cash of the
//!   paper's issuer and currency worth at least the face value; signed by
//!   every input owner.
//! * Generally: no duplicate inputs, no empty transaction, and no command
//!   that concerns no state of its kind.

use super::amount::Currency;
use super::states::{Cash, CommercialPaper};
use super::transaction::CommandData;
use super::verify::{LedgerTransaction, VerifyError};
use flow_runtime::{Party, PublicKey};
use std::collections::{BTreeMap, BTreeSet};

fn reject<T>(message: impl Into<String>) -> Result<T, VerifyError> {
    Err(VerifyError::Contract(message.into()))
}

/// Runs every contract over `tx`.
pub fn verify(tx: &LedgerTransaction) -> Result<(), VerifyError> {
    if tx.inputs.is_empty() && tx.outputs.is_empty() {
        return reject("a transaction must consume or create at least one state");
    }
    let mut seen = BTreeSet::new();
    for input in &tx.inputs {
        if !seen.insert(input.state_ref) {
            return reject(format!("input {} is consumed twice", input.state_ref));
        }
    }
    verify_cash(tx)?;
    verify_paper(tx)
}

/// The union of the signers of every command of kind `data`.
fn signers_of(tx: &LedgerTransaction, data: CommandData) -> Option<BTreeSet<PublicKey>> {
    let mut found = false;
    let mut keys = BTreeSet::new();
    for c in tx.commands.iter().filter(|c| c.data == data) {
        found = true;
        keys.extend(c.signers.iter().copied());
    }
    found.then_some(keys)
}

fn verify_cash(tx: &LedgerTransaction) -> Result<(), VerifyError> {
    let inputs: Vec<&Cash> = tx.inputs.iter().filter_map(|i| i.state.as_cash()).collect();
    let outputs: Vec<&Cash> = tx.outputs.iter().filter_map(|o| o.as_cash()).collect();
    let issue = signers_of(tx, CommandData::CashIssue);
    let moves = signers_of(tx, CommandData::CashMove);
    if inputs.is_empty() && outputs.is_empty() {
        if issue.is_some() || moves.is_some() {
            return reject("a cash command is present but the transaction holds no cash");
        }
        return Ok(());
    }
    #[derive(Default)]
    struct Group<'a> {
        inputs: u128,
        outputs: u128,
        has_inputs: bool,
        owners: Vec<&'a PublicKey>,
    }
    let mut groups: BTreeMap<(&Party, Currency), Group> = BTreeMap::new();
    for cash in &inputs {
        if cash.amount.quantity == 0 {
            return reject("a cash input has a zero amount");
        }
        let g = groups
            .entry((&cash.issuer, cash.amount.currency))
            .or_default();
        g.inputs += u128::from(cash.amount.quantity);
        g.has_inputs = true;
        g.owners.push(&cash.owner);
    }
    for cash in &outputs {
        if cash.amount.quantity == 0 {
            return reject("a cash output has a zero amount");
        }
        let g = groups
            .entry((&cash.issuer, cash.amount.currency))
            .or_default();
        g.outputs += u128::from(cash.amount.quantity);
    }
    for ((issuer, currency), g) in &groups {
        if g.has_inputs {
            if g.inputs != g.outputs {
                return reject(format!(
                    "cash of {currency} issued by {issuer} is not conserved: {} in, {} out (minor units)",
                    g.inputs, g.outputs
                ));
            }
            let Some(signers) = &moves else {
                return reject("cash is consumed without a CashMove command");
            };
            if let Some(owner) = g.owners.iter().find(|o| !signers.contains(o)) {
                return reject(format!(
                    "the CashMove command is not signed by the cash owner {owner:?}"
                ));
            }
        } else {
            let Some(signers) = &issue else {
                return reject(format!(
                    "{currency} cash of {issuer} appears without inputs and without a CashIssue command"
                ));
            };
            if !signers.contains(issuer.key()) {
                return reject(format!(
                    "{currency} cash of {issuer} is issued without the issuer's signature"
                ));
            }
        }
    }
    Ok(())
}

/// The terms that must survive a move: everything but the owner.
fn terms(p: &CommercialPaper) -> (&Party, super::amount::Amount, flow_runtime::Timestamp) {
    (&p.issuer, p.face_value, p.maturity)
}

fn verify_paper(tx: &LedgerTransaction) -> Result<(), VerifyError> {
    let inputs: Vec<&CommercialPaper> = tx
        .inputs
        .iter()
        .filter_map(|i| i.state.as_paper())
        .collect();
    let outputs: Vec<&CommercialPaper> = tx.outputs.iter().filter_map(|o| o.as_paper()).collect();
    #[derive(Clone, Copy)]
    enum PaperOp {
        Issue,
        Move,
        Redeem,
    }
    let commands: Vec<(PaperOp, &Vec<PublicKey>)> = tx
        .commands
        .iter()
        .filter_map(|c| {
            let op = match c.data {
                CommandData::PaperIssue => PaperOp::Issue,
                CommandData::PaperMove => PaperOp::Move,
                CommandData::PaperRedeem => PaperOp::Redeem,
                CommandData::CashIssue | CommandData::CashMove => return None,
            };
            Some((op, &c.signers))
        })
        .collect();
    if inputs.is_empty() && outputs.is_empty() {
        if commands.is_empty() {
            return Ok(());
        }
        return reject("a paper command is present but the transaction holds no paper");
    }
    let [(op, command_signers)] = commands.as_slice() else {
        return reject(format!(
            "a transaction with commercial paper needs exactly one paper command, found {}",
            commands.len()
        ));
    };
    let signers: BTreeSet<&PublicKey> = command_signers.iter().collect();
    let owners_signed = || inputs.iter().all(|p| signers.contains(&p.owner));
    match op {
        PaperOp::Issue => {
            if !inputs.is_empty() {
                return reject("paper issuance must not consume paper");
            }
            for p in &outputs {
                if p.face_value.quantity == 0 {
                    return reject("issued paper has a zero face value");
                }
                if !signers.contains(p.issuer.key()) {
                    return reject(format!(
                        "paper is issued without the signature of its issuer {}",
                        p.issuer
                    ));
                }
                if let Some(until) = tx.time_window.and_then(|w| w.until)
                    && p.maturity <= until
                {
                    return reject("issued paper must mature after the transaction's time window");
                }
            }
        }
        PaperOp::Move => {
            if inputs.len() != outputs.len() {
                return reject(format!(
                    "a paper move must turn each input into one output: {} in, {} out",
                    inputs.len(),
                    outputs.len()
                ));
            }
            let mut unmatched: Vec<_> = outputs.iter().map(|p| terms(p)).collect();
            for p in &inputs {
                let t = terms(p);
                let Some(pos) = unmatched.iter().position(|u| *u == t) else {
                    return reject("a paper move changed the issuer, face value or maturity");
                };
                unmatched.swap_remove(pos);
            }
            if !owners_signed() {
                return reject("a paper move is not signed by the paper's owner");
            }
        }
        PaperOp::Redeem => {
            if !outputs.is_empty() {
                return reject("paper redemption must not create paper");
            }
            let Some(from) = tx.time_window.and_then(|w| w.from) else {
                return reject(
                    "paper redemption needs a time window with a start, to prove maturity",
                );
            };
            // (owner, issuer, currency) -> face value due / cash received
            let mut due: BTreeMap<(&PublicKey, &Party, Currency), u128> = BTreeMap::new();
            for p in &inputs {
                if from < p.maturity {
                    return reject("paper is redeemed before its maturity");
                }
                *due.entry((&p.owner, &p.issuer, p.face_value.currency))
                    .or_default() += u128::from(p.face_value.quantity);
            }
            for ((owner, issuer, currency), need) in due {
                let received: u128 = tx
                    .outputs
                    .iter()
                    .filter_map(|o| o.as_cash())
                    .filter(|c| {
                        c.owner == *owner && c.issuer == *issuer && c.amount.currency == currency
                    })
                    .map(|c| u128::from(c.amount.quantity))
                    .sum();
                if received < need {
                    return reject(format!(
                        "redeemed paper pays its owner {received} but the face value is {need} (minor units of {currency})"
                    ));
                }
            }
            if !owners_signed() {
                return reject("a paper redemption is not signed by the paper's owner");
            }
        }
    }
    Ok(())
}
