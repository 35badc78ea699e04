//! A bounded, process-wide map for values that are costly to derive and
//! never change once derived (expanded key pairs, decompressed public
//! keys): [`Generations`].
//!
//! Two generations of at most `capacity` entries each. When the current
//! generation is full the previous one is dropped and the current one
//! becomes the previous; a hit in the previous generation moves the entry
//! back to the current one, so entries in steady use (a notary's key, an
//! issuer's) stay cached while one-off ones (a trade's fresh keys) age
//! out. Cheaper than an LRU list (no per-hit bookkeeping beyond the hash
//! lookup) and bounded at `2 * capacity` entries.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Generations<K, V> {
    capacity: usize,
    maps: Mutex<Maps<K, V>>,
}

#[derive(Debug)]
struct Maps<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
}

impl<K: Eq + Hash + Clone, V: Clone> Generations<K, V> {
    /// An empty cache of at most `2 * capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            maps: Mutex::new(Maps {
                current: HashMap::new(),
                previous: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Maps<K, V>> {
        // A panic while holding the lock cannot leave a half-written entry
        // (HashMap inserts are whole), so a poisoned cache is still sound.
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached value of `key`, if there is one and `accept` takes it;
    /// a hit in the previous generation moves it back to the current one.
    pub(crate) fn get_if(&self, key: &K, accept: impl Fn(&V) -> bool) -> Option<V> {
        let mut maps = self.lock();
        if let Some(value) = maps.current.get(key) {
            return accept(value).then(|| value.clone());
        }
        if !accept(maps.previous.get(key)?) {
            return None;
        }
        let value = maps.previous.remove(key)?;
        Self::insert_into(&mut maps, self.capacity, key.clone(), value.clone());
        Some(value)
    }

    /// The cached value of `key`, if there is one.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.get_if(key, |_| true)
    }

    /// Caches `value` under `key`, replacing an earlier value.
    pub(crate) fn insert(&self, key: K, value: V) {
        Self::insert_into(&mut self.lock(), self.capacity, key, value);
    }

    fn insert_into(maps: &mut Maps<K, V>, capacity: usize, key: K, value: V) {
        if maps.current.len() >= capacity && !maps.current.contains_key(&key) {
            maps.previous = std::mem::take(&mut maps.current);
        }
        maps.current.insert(key, value);
    }

    /// Entries held, both generations.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let maps = self.lock();
        maps.current.len() + maps.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_two_generations() {
        let cache = Generations::new(4);
        for i in 0..100u32 {
            cache.insert(i, i * 2);
            assert!(cache.len() <= 8);
        }
        assert_eq!(cache.get(&99), Some(198));
        assert_eq!(cache.get(&0), None, "the oldest entries age out");
    }

    #[test]
    fn an_entry_in_use_survives_turnover() {
        let cache = Generations::new(4);
        cache.insert(1000u32, 1);
        for i in 0..100u32 {
            cache.insert(i, 0);
            assert_eq!(cache.get(&1000), Some(1), "after {i} other inserts");
        }
    }

    #[test]
    fn a_refused_entry_is_not_returned() {
        let cache = Generations::new(4);
        cache.insert(1u32, 7u32);
        assert_eq!(cache.get_if(&1, |v| *v == 8), None);
        assert_eq!(cache.get_if(&1, |v| *v == 7), Some(7));
        // In the previous generation too.
        for i in 10..14u32 {
            cache.insert(i, 0);
        }
        assert_eq!(cache.get_if(&1, |v| *v == 8), None);
        assert_eq!(cache.get_if(&1, |v| *v == 7), Some(7));
    }
}
