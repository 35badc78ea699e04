//! The two-party trade of commercial paper for cash, written as `#[flow]`s.
//!
//! The ledger model, contracts, vault, notary and trade flows arrive with
//! issue 5; this crate exists now so the workspace layout is the final one.
