//! Transaction-dependency resolution, as plain data and functions: the
//! `resolve_transactions` flow drives a [`Resolution`] across its
//! suspensions (it is kept in the flow's checkpoint).
//!
//! Breadth-first: ask the peer for the transactions we lack, then for the
//! inputs of those we lack, and so on until every path reaches a
//! transaction we already hold or one without inputs (an issuance). Then
//! verify the downloaded transactions oldest first, each against what is
//! already verified, and record them. Nothing is recorded unless the whole
//! graph verifies, so a peer that sends one bad transaction gets none of its
//! chain accepted.

use crate::crypto::SecureHash;
use crate::ledger::{ContractState, InputResolver, SignedTransaction, StateRef, VerifyError};
use crate::ledger_db::{LedgerDb, LedgerDbError};
use crate::vault;
use flow_runtime::{Party, Payload};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The most transactions one resolution will download: a bound on what a
/// malicious peer can make us fetch and hold.
pub const MAX_TRANSACTIONS: usize = 5_000;

/// How many ids one request may carry, so one reply stays a few megabytes.
pub const MAX_BATCH: usize = 100;

/// Why a resolution failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The peer answered with other transactions than those asked for.
    #[error(
        "the peer answered a request for {asked} transactions with {got} that do not match: it is faulty or malicious"
    )]
    WrongAnswer {
        /// How many were asked for.
        asked: usize,
        /// How many came.
        got: usize,
    },
    /// The peer does not have a transaction we need.
    #[error(
        "the peer does not have transaction {0}, a dependency it must hold to have verified its own transaction"
    )]
    Missing(SecureHash),
    /// The dependency graph is larger than [`MAX_TRANSACTIONS`].
    #[error(
        "the dependency graph exceeds {MAX_TRANSACTIONS} transactions; refusing to download more"
    )]
    TooLarge,
    /// A dependency does not verify.
    #[error("dependency {tx} is invalid: {error}")]
    Invalid {
        /// The transaction.
        tx: SecureHash,
        /// Why.
        error: VerifyError,
    },
    /// The dependency graph has a cycle (impossible with honest hashes).
    #[error("the dependency graph has a cycle: the peer sent forged transactions")]
    Cycle,
    /// Storage failed.
    #[error(transparent)]
    LedgerDb(#[from] LedgerDbError),
}

/// A reply to a fetch request: the transactions asked for, in the order
/// asked, `None` for one the peer does not hold.
pub type FetchReply = Vec<Option<SignedTransaction>>;

/// A message from the resolving side to the side serving transactions.
///
/// The serving side cannot know whether the resolver still lacks anything,
/// so it serves until it is told the resolution is over. Saying so costs no
/// message of its own when the resolver has something to say next on the
/// session anyway: its next message travels inside the [`Done`]
/// (`Done(Some(next))`, e.g. a proposal or a signer's signatures), or, in
/// finality, the resolver's flow ending says it.
///
/// [`Done`]: FetchRequest::Done
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchRequest {
    /// Send these transactions.
    Transactions(Vec<SecureHash>),
    /// Resolution is over: stop serving. `Some`: the resolver's next
    /// message on the session (untrusted: the receiver decodes it as the
    /// type it expects and checks it like any received value).
    Done(Option<Payload>),
}

/// The state of one resolution: what is still to be fetched, and what has
/// been downloaded but not yet verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    queue: VecDeque<SecureHash>,
    downloaded: BTreeMap<SecureHash, SignedTransaction>,
    asked: Vec<SecureHash>,
}

impl Resolution {
    /// Starts resolving the transactions `ids` (and their dependencies).
    pub fn new(ids: impl IntoIterator<Item = SecureHash>) -> Self {
        let mut queue = VecDeque::new();
        for id in ids {
            if !queue.contains(&id) {
                queue.push_back(id);
            }
        }
        Self {
            queue,
            downloaded: BTreeMap::new(),
            asked: Vec::new(),
        }
    }

    /// Takes transactions the peer sent unasked, with an earlier message
    /// (e.g. the asset's transaction in a trade offer), so that they need
    /// no request of their own. Only those that are wanted are kept: one of
    /// the ids being resolved, not held and not downloaded yet (ids are
    /// recomputed from content, so a transaction cannot pose as another);
    /// the rest are ignored. Kept ones are verified by [`finish`] like any
    /// download, and their own dependencies are fetched as usual. Returns
    /// how many were kept.
    ///
    /// [`finish`]: Resolution::finish
    pub fn supply(
        &mut self,
        store: &dyn LedgerDb,
        supplied: Vec<SignedTransaction>,
    ) -> Result<usize, ResolveError> {
        let mut kept = 0;
        for stx in supplied {
            let id = stx.id();
            if !self.queue.contains(&id)
                || self.downloaded.contains_key(&id)
                || vault::has_transaction(store, &id)?
            {
                tracing::debug!(tx = %id, "ignoring a supplied transaction that is not needed");
                continue;
            }
            for input in &stx.tx.inputs {
                self.queue.push_back(input.tx_id);
            }
            self.downloaded.insert(id, stx);
            kept += 1;
            if self.downloaded.len() > MAX_TRANSACTIONS {
                return Err(ResolveError::TooLarge);
            }
        }
        Ok(kept)
    }

    /// The next batch of ids to ask the peer for, or an empty list when
    /// everything needed is downloaded (or was already held).
    pub fn next_request(&mut self, store: &dyn LedgerDb) -> Result<Vec<SecureHash>, ResolveError> {
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            if self.downloaded.contains_key(&id)
                || batch.contains(&id)
                || vault::has_transaction(store, &id)?
            {
                continue;
            }
            batch.push(id);
        }
        self.asked = batch.clone();
        Ok(batch)
    }

    /// Takes the peer's reply to the last request. Each transaction must be
    /// the one asked for at its position (ids are recomputed from content).
    pub fn accept(&mut self, reply: FetchReply) -> Result<(), ResolveError> {
        let asked = std::mem::take(&mut self.asked);
        if reply.len() != asked.len() {
            return Err(ResolveError::WrongAnswer {
                asked: asked.len(),
                got: reply.len(),
            });
        }
        for (id, stx) in asked.iter().zip(reply) {
            let stx = stx.ok_or(ResolveError::Missing(*id))?;
            if stx.id() != *id {
                return Err(ResolveError::WrongAnswer {
                    asked: asked.len(),
                    got: asked.len(),
                });
            }
            for input in &stx.tx.inputs {
                self.queue.push_back(input.tx_id);
            }
            self.downloaded.insert(*id, stx);
            if self.downloaded.len() > MAX_TRANSACTIONS {
                return Err(ResolveError::TooLarge);
            }
        }
        Ok(())
    }

    /// How many transactions have been downloaded.
    pub fn downloaded(&self) -> usize {
        self.downloaded.len()
    }

    /// Verifies every downloaded transaction, dependencies first, and
    /// records them all; returns how many were recorded. Records nothing if
    /// any fails.
    ///
    /// A downloaded transaction that the node has recorded meanwhile (another
    /// flow's resolution fetched it too: every trade in flight during a cold
    /// start asks for the buyer's cash issuance before the first answer is
    /// back) is neither verified nor recorded again: the node verified it
    /// when it recorded it, and keeps that copy. Only its id, which
    /// [`accept`](Resolution::accept) checked against the download's
    /// content, is relied on.
    pub fn finish(self, store: &mut dyn LedgerDb) -> Result<usize, ResolveError> {
        let mut order = topological_order(&self.downloaded)?;
        let mut fresh = Vec::with_capacity(order.len());
        for id in order.drain(..) {
            if !vault::has_transaction(store, &id)? {
                fresh.push(id);
            }
        }
        let order = fresh;
        let mut verified: BTreeMap<SecureHash, &SignedTransaction> = BTreeMap::new();
        for id in &order {
            let stx = &self.downloaded[id];
            let lookup = ResolveFrom {
                verified: &verified,
                vault: vault::resolver(store),
            };
            // Every id in `downloaded` was computed from its transaction
            // when it came (`supply`, `accept`).
            stx.verify_as(*id, &[], &[], lookup)
                .map_err(|error| ResolveError::Invalid { tx: *id, error })?;
            verified.insert(*id, stx);
        }
        for id in &order {
            vault::record_dependency_as(store, &self.downloaded[id], id)?;
        }
        Ok(order.len())
    }
}

/// Inputs resolved from the transactions verified so far in this
/// resolution, then from the vault.
struct ResolveFrom<'a> {
    verified: &'a BTreeMap<SecureHash, &'a SignedTransaction>,
    vault: vault::VaultResolver<'a>,
}

impl InputResolver for ResolveFrom<'_> {
    fn resolve_input(&mut self, input: &StateRef) -> Option<(ContractState, Party)> {
        match self.verified.get(&input.tx_id) {
            Some(stx) => {
                let state = stx.tx.outputs.get(input.index as usize)?.clone();
                Some((state, stx.tx.notary.clone()))
            }
            None => self.vault.resolve_input(input),
        }
    }
}

/// The downloaded ids ordered so that each comes after the downloaded
/// transactions it spends from (Kahn's algorithm).
fn topological_order(
    txs: &BTreeMap<SecureHash, SignedTransaction>,
) -> Result<Vec<SecureHash>, ResolveError> {
    let mut pending: BTreeMap<SecureHash, BTreeSet<SecureHash>> = txs
        .iter()
        .map(|(id, stx)| {
            let deps = stx
                .tx
                .inputs
                .iter()
                .map(|i| i.tx_id)
                .filter(|d| txs.contains_key(d))
                .collect();
            (*id, deps)
        })
        .collect();
    let mut order = Vec::with_capacity(txs.len());
    while !pending.is_empty() {
        let ready: Vec<SecureHash> = pending
            .iter()
            .filter(|(_, d)| d.is_empty())
            .map(|(id, _)| *id)
            .collect();
        if ready.is_empty() {
            return Err(ResolveError::Cycle);
        }
        for id in &ready {
            pending.remove(id);
        }
        for deps in pending.values_mut() {
            for id in &ready {
                deps.remove(id);
            }
        }
        order.extend(ready);
    }
    Ok(order)
}

/// Why a serving side refused a fetch request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The peer asked for a transaction outside the dependency chain of
    /// what this node sent it: a resolution never needs it, so the peer is
    /// probing the vault.
    #[error(
        "the peer asked for transaction {0}, which is not in the dependency chain of the transaction this node sent it: refusing to serve it"
    )]
    OutsideChain(SecureHash),
    /// Storage failed.
    #[error(transparent)]
    LedgerDb(#[from] LedgerDbError),
}

/// What the serving side of one resolution may send: the dependency chain
/// of the transaction it sent on that session, and nothing else from its
/// vault (a peer that knows an id must not be able to read any
/// transaction).
///
/// The chain is not computed up front (it may be long): it grows as it is
/// served. It starts with the transactions the peer may ask for first (the
/// ones the sent transaction spends from); serving one allows the ones
/// *it* spends from. A resolver walks exactly that way, breadth first
/// from the sent transaction's inputs, so an honest peer is never refused.
/// Kept in the serving flow's checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vending {
    allowed: BTreeSet<SecureHash>,
}

impl Vending {
    /// Serving the history of transactions with ids `roots` and their
    /// dependencies (e.g. an offered asset's transaction, which the peer
    /// may not have been sent).
    pub fn of(roots: impl IntoIterator<Item = SecureHash>) -> Self {
        Self {
            allowed: roots.into_iter().collect(),
        }
    }

    /// Serving the dependencies of `sent`, the transaction this node sent
    /// the peer: what `sent` spends from, and what those spend from.
    pub fn of_dependencies(sent: &SignedTransaction) -> Self {
        Self::of(sent.tx.inputs.iter().map(|i| i.tx_id))
    }

    /// Allows the dependencies of `sent` too (a transaction sent with an
    /// earlier message, e.g. an offered asset's).
    pub fn allow_dependencies_of(&mut self, sent: &SignedTransaction) {
        self.allowed.insert(sent.id());
        self.allowed.extend(sent.tx.inputs.iter().map(|i| i.tx_id));
    }

    /// Answers a fetch request from the vault, if every id is in the
    /// chain; `None` for one this node does not hold.
    pub fn serve(
        &mut self,
        store: &dyn LedgerDb,
        ids: &[SecureHash],
    ) -> Result<FetchReply, ServeError> {
        if ids.len() > MAX_BATCH {
            tracing::warn!(
                asked = ids.len(),
                "a peer asked for more transactions than one batch; serving the first {MAX_BATCH}"
            );
        }
        let ids = &ids[..ids.len().min(MAX_BATCH)];
        if let Some(outside) = ids.iter().find(|id| !self.allowed.contains(id)) {
            tracing::warn!(tx = %outside, "a peer asked for a transaction outside the chain it is resolving");
            return Err(ServeError::OutsideChain(*outside));
        }
        let mut reply = Vec::with_capacity(ids.len());
        for id in ids {
            let stx = vault::transaction(store, id)?;
            if let Some(stx) = &stx {
                self.allowed.extend(stx.tx.inputs.iter().map(|i| i.tx_id));
            }
            reply.push(stx);
        }
        Ok(reply)
    }
}
