//! The ledger model: what is owned ([`states`]), how ownership changes
//! ([`transaction`]), and the rules every change must obey ([`contracts`],
//! checked by [`verify`]).
//!
//! Everything here is pure data and pure functions: no storage, no network.
//! The services and flows build on it.

pub mod amount;
pub mod contracts;
pub mod states;
pub mod transaction;
pub mod verify;

pub use amount::{Amount, Currency};
pub use states::{AssetKind, Cash, CommercialPaper, ContractState, StateAndRef, StateRef};
pub use transaction::{
    Command, CommandData, SignedTransaction, TimeWindow, TransactionBuilder, WireTransaction,
};
pub use verify::{InputResolver, LedgerTransaction, VerifyError};
