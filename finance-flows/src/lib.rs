//! The two-party trade of commercial paper for cash, written as flows.
//!
//! * [`crypto`]: SHA-256 ids, ed25519 key pairs and signatures.
//! * [`ledger`]: states, transactions, contracts and verification — pure
//!   data and functions.
//! * [`ledger_db`]: the ledger database the services write through (its
//!   tables of transactions, states, keys and notary commits).
//! * [`vault`], [`keys`], [`notarise`]: the node services, as pure logic over a
//!   [`ledger_db::LedgerDb`].
//! * [`notarise`], [`resolve`], [`trade`]: the rules a flow module of the
//!   same name under [`flows`] applies (the notary's checks, which
//!   dependencies a node serves, what a trade's parties accept).
//! * [`trust`]: which cash issuers the node accepts (by key, per node).
//!
//! Crates used beyond the workspace core: `ed25519-dalek` (signatures) and
//! `sha2` (ids), the RustCrypto/dalek crates the Rust community audits and
//! relies on. The multi-process demo sends signals to its node processes
//! through `rustix`, a safe wrapper over the system calls. The `trade-demo`
//! and `trade-bench` executables allocate through `mimalloc` (Microsoft's
//! allocator, the most used Rust binding of it), which cut their nodes' CPU
//! per trade by ~5% against glibc's malloc (docs/performance.md); the
//! library itself sets no allocator.

#![warn(missing_docs)]

mod cache;
pub mod crypto;
pub mod demo;
pub mod flows;
pub mod keys;
pub mod ledger;
pub mod ledger_db;
pub mod notarise;
pub mod resolve;
pub mod trade;
pub mod trust;
pub mod vault;
