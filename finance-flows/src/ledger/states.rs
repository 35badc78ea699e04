//! What the ledger records: facts that someone owns something ("states"),
//! and the references that point at one output of one transaction.

use super::amount::Amount;
use crate::crypto::SecureHash;
use flow_runtime::{Party, PublicKey, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Cash: a claim of `amount` on `issuer`, owned by whoever holds the secret
/// of `owner`. Owners are bare keys, not parties, so a fresh key per trade
/// does not reveal who holds the cash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cash {
    /// How much, of which currency.
    pub amount: Amount,
    /// Who owes it (a bank). Cash of different issuers is not fungible.
    pub issuer: Party,
    /// The key that must sign to move it.
    pub owner: PublicKey,
}

/// Commercial paper: the issuer's promise to pay `face_value` to the owner
/// on or after `maturity`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommercialPaper {
    /// Who will pay.
    pub issuer: Party,
    /// What will be paid at maturity.
    pub face_value: Amount,
    /// When it can be redeemed (the notary's clock decides).
    pub maturity: Timestamp,
    /// The key that must sign to move or redeem it.
    pub owner: PublicKey,
}

/// The kinds of asset the ledger knows. A buyer names the kind it wants so a
/// seller cannot hand it something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AssetKind {
    /// [`Cash`].
    Cash,
    /// [`CommercialPaper`].
    CommercialPaper,
}

impl fmt::Display for AssetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AssetKind::Cash => "cash",
            AssetKind::CommercialPaper => "commercial paper",
        })
    }
}

/// Any state the ledger can hold. A closed enum rather than a trait object:
/// the canonical encoding and the contract dispatch stay explicit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ContractState {
    /// A cash state.
    Cash(Cash),
    /// A commercial paper state.
    CommercialPaper(CommercialPaper),
}

impl ContractState {
    /// The key that must sign to consume this state.
    pub fn owner(&self) -> &PublicKey {
        match self {
            ContractState::Cash(c) => &c.owner,
            ContractState::CommercialPaper(p) => &p.owner,
        }
    }

    /// The same state, owned by `owner` (what a move produces).
    pub fn with_owner(&self, owner: PublicKey) -> ContractState {
        match self {
            ContractState::Cash(c) => ContractState::Cash(Cash { owner, ..c.clone() }),
            ContractState::CommercialPaper(p) => {
                ContractState::CommercialPaper(CommercialPaper { owner, ..p.clone() })
            }
        }
    }

    /// Which kind of asset this is.
    pub fn kind(&self) -> AssetKind {
        match self {
            ContractState::Cash(_) => AssetKind::Cash,
            ContractState::CommercialPaper(_) => AssetKind::CommercialPaper,
        }
    }

    /// The cash inside, if this is cash.
    pub fn as_cash(&self) -> Option<&Cash> {
        match self {
            ContractState::Cash(c) => Some(c),
            ContractState::CommercialPaper(_) => None,
        }
    }

    /// The paper inside, if this is commercial paper.
    pub fn as_paper(&self) -> Option<&CommercialPaper> {
        match self {
            ContractState::CommercialPaper(p) => Some(p),
            ContractState::Cash(_) => None,
        }
    }
}

/// Points at output `index` of transaction `tx_id`. A state is consumed by
/// naming its `StateRef` as an input; the notary makes sure that happens at
/// most once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StateRef {
    /// The transaction that created the state.
    pub tx_id: SecureHash,
    /// Its position among that transaction's outputs.
    pub index: u32,
}

impl StateRef {
    /// A fixed-width key (32-byte id, then the index big-endian) so that
    /// storage orders refs by transaction, then index.
    pub fn to_key(&self) -> [u8; 36] {
        let mut key = [0u8; 36];
        key[..32].copy_from_slice(&self.tx_id.0);
        key[32..].copy_from_slice(&self.index.to_be_bytes());
        key
    }

    /// The inverse of [`to_key`](Self::to_key); `None` for a key of the wrong
    /// length (corrupt storage).
    pub fn from_key(key: &[u8]) -> Option<StateRef> {
        let id: [u8; 32] = key.get(..32)?.try_into().ok()?;
        let index: [u8; 4] = key.get(32..)?.try_into().ok()?;
        Some(StateRef {
            tx_id: SecureHash(id),
            index: u32::from_be_bytes(index),
        })
    }
}

impl fmt::Debug for StateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.tx_id, self.index)
    }
}

impl fmt::Display for StateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A state together with where it lives: what a vault hands out and what a
/// seller offers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateAndRef {
    /// The state.
    pub state: ContractState,
    /// Where it was created.
    pub state_ref: StateRef,
}
