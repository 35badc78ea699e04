//! Key management: the node's signing keys, kept in the [`LedgerTable::Keys`]
//! table, and a fresh key for every trade so that ledger owners cannot be
//! linked to the node's identity or to each other.
//!
//! The secrets are stored as plain seeds in the node's database: this is a
//! demonstration ledger, and the database file is as sensitive as a key
//! store. A production node would keep them in an HSM behind this same API.

use crate::crypto::{KeyPair, TxSignature};
use crate::ledger_db::{LedgerDb, LedgerDbError, LedgerTable};
use flow_runtime::PublicKey;

/// Why a signature could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The node does not hold the secret of this key.
    #[error("this node does not hold the secret of {0:?}; it can only sign with its own keys")]
    NotOurKey(PublicKey),
    /// Storage failed.
    #[error(transparent)]
    LedgerDb(#[from] LedgerDbError),
}

/// Stores `pair` as one of the node's keys (e.g. its legal identity key
/// at first start). Idempotent.
pub fn import(store: &mut dyn LedgerDb, pair: &KeyPair) -> Result<(), LedgerDbError> {
    store.put(LedgerTable::Keys, &pair.public().0, &pair.seed())?;
    cache::insert(pair);
    Ok(())
}

/// Creates and stores a new key pair from the operating system's randomness,
/// returning its public key.
pub fn fresh_key(store: &mut dyn LedgerDb) -> Result<PublicKey, LedgerDbError> {
    let pair = KeyPair::generate();
    import(store, &pair)?;
    Ok(pair.public())
}

/// The key pair for `key`, if the node holds its secret.
///
/// The node's store is always read: it alone says whether the key is ours
/// (the cache below is process-wide, shared by every node in the process,
/// and a key created in a step that was rolled back is in the cache but not
/// in the store). What the cache saves is re-deriving the key pair from
/// the seed — a scalar multiplication, about one signature's cost — and it
/// is used only when its seed is byte-equal to the stored one.
pub fn key_pair(store: &dyn LedgerDb, key: &PublicKey) -> Result<Option<KeyPair>, LedgerDbError> {
    let Some(seed) = store.get(LedgerTable::Keys, &key.0)? else {
        return Ok(None);
    };
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| LedgerDbError::Corrupt {
            table: LedgerTable::Keys.name(),
            detail: format!("a key seed is {} bytes instead of 32", seed.len()),
        })?;
    if let Some(pair) = cache::get(key, &seed) {
        return Ok(Some(pair));
    }
    let pair = KeyPair::from_seed(seed);
    if pair.public() != *key {
        return Err(LedgerDbError::Corrupt {
            table: LedgerTable::Keys.name(),
            detail: format!("the seed stored for {key:?} belongs to another key"),
        });
    }
    cache::insert(&pair);
    Ok(Some(pair))
}

/// Expanded key pairs by public key, so that signing does not derive the
/// pair from its seed every time (a scalar multiplication, about one
/// signature's cost: ~5% of a trade's CPU). Keys never change once created, but the
/// cache is only ever a shortcut for a seed the caller has just read from
/// its node's store: [`get`] answers only if the cached pair's seed equals
/// that seed, so a pair cached for one node is never used by another that
/// merely names the same public key ([`KeyError::NotOurKey`] still comes
/// from the store).
///
/// Bounded: two [`Generations`](crate::cache::Generations) of at most
/// [`GENERATION`] pairs each (about 250 bytes a pair, so under 5 MB).
mod cache {
    use crate::cache::Generations;
    use crate::crypto::KeyPair;
    use flow_runtime::PublicKey;
    use std::sync::LazyLock;

    /// Pairs per generation.
    #[cfg(not(test))]
    pub(super) const GENERATION: usize = 8_192;
    /// Small in unit tests, so the bound is tested without deriving
    /// thousands of keys.
    #[cfg(test)]
    pub(super) const GENERATION: usize = 64;

    static CACHE: LazyLock<Generations<PublicKey, KeyPair>> =
        LazyLock::new(|| Generations::new(GENERATION));

    /// Equality of two secrets without an early exit on the first
    /// differing byte.
    fn same_secret(a: &[u8; 32], b: &[u8; 32]) -> bool {
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The cached pair of `key`, if there is one and its seed is `seed`.
    pub(super) fn get(key: &PublicKey, seed: &[u8; 32]) -> Option<KeyPair> {
        CACHE.get_if(key, |pair| same_secret(&pair.seed(), seed))
    }

    /// Caches `pair` (already derived: its public key matches its seed).
    pub(super) fn insert(pair: &KeyPair) {
        CACHE.insert(pair.public(), pair.clone());
    }

    /// Pairs held, both generations.
    #[cfg(test)]
    pub(super) fn len() -> usize {
        CACHE.len()
    }
}

/// True if the node holds the secret of `key`.
pub fn is_ours(store: &dyn LedgerDb, key: &PublicKey) -> Result<bool, LedgerDbError> {
    Ok(store.get(LedgerTable::Keys, &key.0)?.is_some())
}

/// Signs `message` with `key`.
pub fn sign(
    store: &dyn LedgerDb,
    key: &PublicKey,
    message: &[u8],
) -> Result<TxSignature, KeyError> {
    match key_pair(store, key)? {
        Some(pair) => Ok(pair.sign(message)),
        None => Err(KeyError::NotOurKey(*key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger_db::MemLedgerDb;

    #[test]
    fn fresh_keys_differ_and_sign() {
        let mut store = MemLedgerDb::new();
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
    fn a_key_cached_for_one_node_is_refused_to_another() {
        let mut ours = MemLedgerDb::new();
        let theirs = MemLedgerDb::new();
        let key = fresh_key(&mut ours).unwrap();
        // Signing once more makes sure the pair is cached (fresh_key caches
        // it too).
        sign(&ours, &key, b"warm").unwrap();
        assert_eq!(
            sign(&theirs, &key, b"msg"),
            Err(KeyError::NotOurKey(key)),
            "a pair cached for one node must not sign for a node that lacks its seed"
        );
    }

    #[test]
    fn a_key_whose_stored_step_was_rolled_back_is_not_ours() {
        // `fresh_key` caches the pair before the step commits; a node whose
        // step was discarded does not hold it, whatever the cache says.
        let committed = MemLedgerDb::new();
        let mut rolled_back = committed.clone();
        let key = fresh_key(&mut rolled_back).unwrap();
        assert_eq!(
            sign(&committed, &key, b"msg"),
            Err(KeyError::NotOurKey(key))
        );
    }

    #[test]
    fn a_cached_key_is_not_used_for_a_different_stored_seed() {
        let mut store = MemLedgerDb::new();
        let key = fresh_key(&mut store).unwrap();
        sign(&store, &key, b"warm").unwrap();
        // The stored seed changes under the cache (corruption): the cached
        // pair must not paper over it.
        store.put(LedgerTable::Keys, &key.0, &[7; 32]).unwrap();
        assert!(matches!(
            sign(&store, &key, b"msg"),
            Err(KeyError::LedgerDb(LedgerDbError::Corrupt { .. }))
        ));
    }

    #[test]
    fn cached_and_derived_pairs_sign_alike() {
        let mut store = MemLedgerDb::new();
        let pair = KeyPair::from_seed([42; 32]);
        import(&mut store, &pair).unwrap();
        // ed25519 signatures are deterministic: the cached pair must give
        // the very signature the freshly derived one does.
        let cached = sign(&store, &pair.public(), b"msg").unwrap();
        assert_eq!(cached, pair.sign(b"msg"));
        assert!(cached.is_valid_for(b"msg"));
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut store = MemLedgerDb::new();
        let first = fresh_key(&mut store).unwrap();
        for _ in 0..=2 * cache::GENERATION {
            fresh_key(&mut store).unwrap();
        }
        assert!(cache::len() <= 2 * cache::GENERATION);
        // An evicted key still signs: it is derived from the store again.
        assert!(sign(&store, &first, b"msg").unwrap().is_valid_for(b"msg"));
    }

    #[test]
    fn corrupt_seed_is_an_error() {
        let mut store = MemLedgerDb::new();
        let key = KeyPair::from_seed([3; 32]).public();
        store.put(LedgerTable::Keys, &key.0, &[1, 2, 3]).unwrap();
        assert!(matches!(
            key_pair(&store, &key),
            Err(LedgerDbError::Corrupt { .. })
        ));
    }
}
