//! Key management: the node's signing keys, kept in the [`Table::Keys`]
//! table, and a fresh key for every trade so that ledger owners cannot be
//! linked to the node's identity or to each other.
//!
//! The secrets are stored as plain seeds in the node's database: this is a
//! demonstration ledger, and the database file is as sensitive as a key
//! store. A production node would keep them in an HSM behind this same API.

use crate::crypto::{KeyPair, TxSignature};
use crate::store::{Store, StoreError, Table};
use flow_runtime::PublicKey;

/// Why a signature could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The node does not hold the secret of this key.
    #[error("this node does not hold the secret of {0:?}; it can only sign with its own keys")]
    NotOurKey(PublicKey),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Stores `pair` as one of the node's keys (e.g. its legal identity key
/// at first start). Idempotent.
pub fn import(store: &mut dyn Store, pair: &KeyPair) -> Result<(), StoreError> {
    store.put(Table::Keys, &pair.public().0, &pair.seed())
}

/// Creates and stores a new key pair from the operating system's randomness,
/// returning its public key.
pub fn fresh_key(store: &mut dyn Store) -> Result<PublicKey, StoreError> {
    let pair = KeyPair::generate();
    import(store, &pair)?;
    Ok(pair.public())
}

/// The key pair for `key`, if the node holds its secret.
pub fn key_pair(store: &dyn Store, key: &PublicKey) -> Result<Option<KeyPair>, StoreError> {
    let Some(seed) = store.get(Table::Keys, &key.0)? else {
        return Ok(None);
    };
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Corrupt {
            table: Table::Keys.name(),
            detail: format!("a key seed is {} bytes instead of 32", seed.len()),
        })?;
    let pair = KeyPair::from_seed(seed);
    if pair.public() != *key {
        return Err(StoreError::Corrupt {
            table: Table::Keys.name(),
            detail: format!("the seed stored for {key:?} belongs to another key"),
        });
    }
    Ok(Some(pair))
}

/// True if the node holds the secret of `key`.
pub fn is_ours(store: &dyn Store, key: &PublicKey) -> Result<bool, StoreError> {
    Ok(store.get(Table::Keys, &key.0)?.is_some())
}

/// Signs `message` with `key`.
pub fn sign(store: &dyn Store, key: &PublicKey, message: &[u8]) -> Result<TxSignature, KeyError> {
    match key_pair(store, key)? {
        Some(pair) => Ok(pair.sign(message)),
        None => Err(KeyError::NotOurKey(*key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn fresh_keys_differ_and_sign() {
        let mut store = MemStore::new();
        let a = fresh_key(&mut store).unwrap();
        let b = fresh_key(&mut store).unwrap();
        assert_ne!(a, b);
        assert!(is_ours(&store, &a).unwrap());
        let sig = sign(&store, &a, b"msg").unwrap();
        assert!(sig.is_valid_for(b"msg"));
        let stranger = KeyPair::from_seed([9; 32]).public();
        assert_eq!(
            sign(&store, &stranger, b"msg"),
            Err(KeyError::NotOurKey(stranger))
        );
    }

    #[test]
    fn corrupt_seed_is_an_error() {
        let mut store = MemStore::new();
        let key = KeyPair::from_seed([3; 32]).public();
        store.put(Table::Keys, &key.0, &[1, 2, 3]).unwrap();
        assert!(matches!(
            key_pair(&store, &key),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
