//! A cheap hasher for the node's internal maps, whose keys are never chosen
//! to collide: run ids (random numbers this node picked, or a test's
//! counter), type ids, and registered flow names (a lookup with a peer's
//! string only probes a map the peer cannot add to).
//!
//! Why: these maps are touched several times per step, and the standard
//! library's DoS-resistant SipHash cost more than the lookups themselves.
//! The mixing is the multiply-rotate scheme of rustc's own `FxHasher`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// See the module docs.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        // The last word carries the tail's length, so "ab" and "ab\0"
        // differ.
        let rest = chunks.remainder();
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hash};

    fn hash(v: impl Hash) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(v)
    }

    #[test]
    fn nearby_keys_spread_and_strings_use_every_byte() {
        let hashes: HashSet<u64> = (0..10_000u64).map(hash).collect();
        assert_eq!(hashes.len(), 10_000);
        // Top bits differ too (hashbrown picks buckets and tags from them).
        let tops: HashSet<u64> = (0..1_000u64).map(|k| hash(k) >> 57).collect();
        assert!(tops.len() > 64, "{} distinct top bits", tops.len());
        assert_ne!(hash("flow::a_long_name_1"), hash("flow::a_long_name_2"));
        assert_ne!(hash("ab"), hash("ab\0"));
    }
}
