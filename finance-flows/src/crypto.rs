//! Hashes, key pairs and signatures: the only place that touches the
//! cryptography crates (`sha2`, `ed25519-dalek`), so the ledger code speaks
//! in plain values ([`SecureHash`], [`PublicKey`], [`TxSignature`]).

use crate::cache::Generations;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use flow_runtime::PublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Process-wide counters of the cryptographic work done, for the
/// benchmark's split of CPU time per trade. Relaxed atomics: one
/// uncontended increment per operation, far below the ~13 µs an ed25519
/// signature costs.
pub mod metrics {
    use super::*;

    pub(super) static SIGNS: AtomicU64 = AtomicU64::new(0);
    pub(super) static SIGN_NANOS: AtomicU64 = AtomicU64::new(0);
    pub(super) static VERIFIES: AtomicU64 = AtomicU64::new(0);
    pub(super) static VERIFY_NANOS: AtomicU64 = AtomicU64::new(0);
    pub(super) static HASHES: AtomicU64 = AtomicU64::new(0);
    pub(super) static HASH_NANOS: AtomicU64 = AtomicU64::new(0);

    /// A snapshot of the counters.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct CryptoMetrics {
        /// Signatures made.
        pub signs: u64,
        /// Time spent making them.
        pub sign_nanos: u64,
        /// Signatures verified.
        pub verifies: u64,
        /// Time spent verifying.
        pub verify_nanos: u64,
        /// Hashes computed (transaction ids).
        pub hashes: u64,
        /// Time spent hashing.
        pub hash_nanos: u64,
    }

    impl CryptoMetrics {
        /// The work done between `earlier` and `self`.
        pub fn since(&self, earlier: &CryptoMetrics) -> CryptoMetrics {
            CryptoMetrics {
                signs: self.signs - earlier.signs,
                sign_nanos: self.sign_nanos - earlier.sign_nanos,
                verifies: self.verifies - earlier.verifies,
                verify_nanos: self.verify_nanos - earlier.verify_nanos,
                hashes: self.hashes - earlier.hashes,
                hash_nanos: self.hash_nanos - earlier.hash_nanos,
            }
        }
    }

    /// The counters now.
    pub fn snapshot() -> CryptoMetrics {
        CryptoMetrics {
            signs: SIGNS.load(Ordering::Relaxed),
            sign_nanos: SIGN_NANOS.load(Ordering::Relaxed),
            verifies: VERIFIES.load(Ordering::Relaxed),
            verify_nanos: VERIFY_NANOS.load(Ordering::Relaxed),
            hashes: HASHES.load(Ordering::Relaxed),
            hash_nanos: HASH_NANOS.load(Ordering::Relaxed),
        }
    }

    pub(super) fn record(count: &AtomicU64, nanos: &AtomicU64, started: Instant) {
        count.fetch_add(1, Ordering::Relaxed);
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        nanos.fetch_add(spent, Ordering::Relaxed);
    }
}

/// A SHA-256 digest. Transaction ids are `SecureHash`es of a transaction's
/// canonical bytes, so two nodes that hold the same transaction agree on its
/// id without trusting each other.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecureHash(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl SecureHash {
    /// SHA-256 over the concatenation of `parts`. Taking the parts separately
    /// lets callers prefix a domain tag without copying the payload.
    pub fn of(parts: &[&[u8]]) -> Self {
        let started = Instant::now();
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest);
        metrics::record(&metrics::HASHES, &metrics::HASH_NANOS, started);
        Self(out)
    }

    /// The full digest as 64 lowercase hex digits, for logs and file names.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for SecureHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecureHash({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for SecureHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Twelve hex digits identify a transaction in logs; the full id is
        // in `to_hex`.
        f.write_str(&self.to_hex()[..12])
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// An ed25519 key pair. The secret never leaves the node: it is kept by the
/// key manager and only used to sign transaction ids.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl KeyPair {
    /// The key pair whose secret key is `seed` (32 bytes). The same seed always
    /// gives the same key pair, which is what lets a key manager store only
    /// the seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// A new key pair from the operating system's randomness.
    pub fn generate() -> Self {
        Self::from_seed(rand::random())
    }

    /// The secret seed, for the key manager's storage only.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half, as the ledger names owners and signers.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message` (for the ledger: a transaction id).
    pub fn sign(&self, message: &[u8]) -> TxSignature {
        let started = Instant::now();
        let sig = TxSignature {
            by: self.public(),
            bytes: self.signing.sign(message).to_bytes(),
        };
        metrics::record(&metrics::SIGNS, &metrics::SIGN_NANOS, started);
        sig
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "KeyPair({:?})", self.public())
    }
}

/// An ed25519 signature together with the public key that made it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxSignature {
    /// The key that signed.
    pub by: PublicKey,
    /// The 64-byte ed25519 signature.
    #[serde(with = "serde_bytes")]
    pub bytes: [u8; 64],
}

impl TxSignature {
    /// True if this is a valid signature of `message` by `self.by`. Uses
    /// strict verification (rejects small-order keys and malleable
    /// signatures), since the signatures come from untrusted peers.
    ///
    /// One signature at a time on purpose: ed25519-dalek's `verify_batch`
    /// checks a random linear combination of the signatures' equations, which
    /// accepts a signature whose `R` is off by a small-order (torsion) point
    /// whenever the combination's coefficient cancels it — something strict
    /// verification refuses, and a signer can grind for, since the
    /// coefficients are derived from the signatures themselves. Ruling that out
    /// costs a scalar multiplication per signature, more than batching saves
    /// for the two or three signatures one step of a trade checks.
    pub fn is_valid_for(&self, message: &[u8]) -> bool {
        let started = Instant::now();
        let valid = verifying_key(&self.by).is_some_and(|key| {
            let signature = ed25519_dalek::Signature::from_bytes(&self.bytes);
            key.verify_strict(message, &signature).is_ok()
        });
        metrics::record(&metrics::VERIFIES, &metrics::VERIFY_NANOS, started);
        valid
    }
}

/// Public keys in the form verification uses, by their 32 bytes.
///
/// Turning a key's bytes into a curve point (decompression: a square root in
/// the field, about a tenth of a verification) is a pure function of the
/// bytes, and a trade verifies the same few keys over and over (the notary's,
/// the buyer's cash key, the seller's identity), so each process does it once
/// per key. Bounded like the key pairs' cache (two generations of
/// [`VERIFYING_KEYS_PER_GENERATION`], ~200 bytes an entry); bytes that are not
/// a point are not cached (they fail every time, as before).
static VERIFYING_KEYS: LazyLock<Generations<PublicKey, VerifyingKey>> =
    LazyLock::new(|| Generations::new(VERIFYING_KEYS_PER_GENERATION));

/// See [`VERIFYING_KEYS`].
const VERIFYING_KEYS_PER_GENERATION: usize = 4_096;

/// The verifying key of `key`, from [`VERIFYING_KEYS`] or decompressed (and
/// cached); `None` if the bytes are not a curve point.
fn verifying_key(key: &PublicKey) -> Option<VerifyingKey> {
    if let Some(cached) = VERIFYING_KEYS.get(key) {
        return Some(cached);
    }
    let decompressed = VerifyingKey::from_bytes(&key.0).ok()?;
    VERIFYING_KEYS.insert(*key, decompressed);
    Some(decompressed)
}

impl fmt::Debug for TxSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxSignature(by {:?})", self.by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::traits::Identity;

    #[test]
    fn signature_verifies_only_for_its_message_and_key() {
        let a = KeyPair::from_seed([1; 32]);
        let b = KeyPair::from_seed([2; 32]);
        let sig = a.sign(b"hello");
        assert!(sig.is_valid_for(b"hello"));
        assert!(!sig.is_valid_for(b"hellp"));
        let forged = TxSignature {
            by: b.public(),
            bytes: sig.bytes,
        };
        assert!(!forged.is_valid_for(b"hello"));
    }

    /// A signature by `pair` over `message` whose `R` is moved by the
    /// small-order point `torsion`: valid up to torsion, so cofactored or
    /// batch verification may take it, strict verification must not.
    fn malleated(pair: &KeyPair, message: &[u8], torsion: EdwardsPoint) -> TxSignature {
        let mut sig = pair.sign(message);
        let r = CompressedEdwardsY::from_slice(&sig.bytes[..32])
            .unwrap()
            .decompress()
            .unwrap();
        sig.bytes[..32].copy_from_slice((r + torsion).compress().as_bytes());
        sig
    }

    #[test]
    fn a_signature_malleated_by_a_torsion_point_is_refused() {
        let pair = KeyPair::from_seed([5; 32]);
        assert!(pair.sign(b"pay 10").is_valid_for(b"pay 10"));
        // Every non-zero point of the eight-torsion subgroup, of order 2, 4
        // and 8: each time twice, the second from the key cache.
        for torsion in &EIGHT_TORSION[1..] {
            let sig = malleated(&pair, b"pay 10", *torsion);
            assert!(!sig.is_valid_for(b"pay 10"));
            assert!(!sig.is_valid_for(b"pay 10"));
            // ed25519-dalek's own strict check agrees (a batch or
            // cofactored check would not see the torsion point).
            let key = VerifyingKey::from_bytes(&pair.public().0).unwrap();
            let signature = ed25519_dalek::Signature::from_bytes(&sig.bytes);
            assert!(key.verify_strict(b"pay 10", &signature).is_err());
        }
    }

    #[test]
    fn a_small_order_key_is_refused() {
        // The identity as public key, with R = identity and s = 0: the
        // verification equation holds for every message, so only the
        // strict check of the key's order refuses it.
        let identity = EdwardsPoint::identity().compress().to_bytes();
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&identity);
        let weak = TxSignature {
            by: PublicKey(identity),
            bytes,
        };
        assert!(!weak.is_valid_for(b"anything"));
        assert!(
            !weak.is_valid_for(b"anything"),
            "also once its key is cached"
        );
        // A key of order 8 likewise.
        let eight = TxSignature {
            by: PublicKey(EIGHT_TORSION[1].compress().to_bytes()),
            bytes,
        };
        assert!(!eight.is_valid_for(b"anything"));
    }

    #[test]
    fn bytes_that_are_no_point_are_refused_every_time() {
        // y = 2 is not the y-coordinate of a point of the curve.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(VerifyingKey::from_bytes(&not_a_point).is_err());
        let sig = TxSignature {
            by: PublicKey(not_a_point),
            bytes: [0; 64],
        };
        assert!(!sig.is_valid_for(b"m"));
        assert!(!sig.is_valid_for(b"m"));
        assert!(verifying_key(&PublicKey(not_a_point)).is_none());
    }

    #[test]
    fn a_cached_key_verifies_as_a_decompressed_one() {
        let pair = KeyPair::from_seed([6; 32]);
        let sig = pair.sign(b"m");
        for _ in 0..3 {
            assert!(sig.is_valid_for(b"m"));
            assert!(!sig.is_valid_for(b"n"));
        }
        assert_eq!(
            verifying_key(&pair.public()),
            VerifyingKey::from_bytes(&pair.public().0).ok()
        );
    }

    #[test]
    fn hash_is_sha256() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            SecureHash::of(&[b"a", b"bc"]).to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
