//! [`Party`]: a node's identity on the network.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An ed25519 public key, 32 bytes. Serialized as a byte string (34 bytes in
/// MessagePack) rather than an array of integers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// A node on the network: a legal name plus the identity key that
/// authenticates it. An ordinary serde value: flows may send it and keep it
/// in their state.
///
/// **Identity is the key.** Two parties are equal (and hash and order
/// alike) exactly when their keys are; the name is a label for people and
/// logs. Anyone can call themselves "Bank", only the bank holds its key: a
/// comparison by name would let a peer pass for another by choosing a name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Party {
    name: String,
    key: PublicKey,
}

impl Party {
    /// A party with the given name and identity key.
    pub fn new(name: impl Into<String>, key: PublicKey) -> Self {
        Self {
            name: name.into(),
            key,
        }
    }

    /// The party's legal name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The party's identity key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }
}

impl PartialEq for Party {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Party {}

impl std::hash::Hash for Party {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl PartialOrd for Party {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Party {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parties_are_the_same_exactly_when_their_keys_are() {
        let bank = Party::new("Bank", PublicKey([1; 32]));
        let impostor = Party::new("Bank", PublicKey([2; 32]));
        let renamed = Party::new("Bank of Somewhere", PublicKey([1; 32]));
        assert_ne!(bank, impostor, "a name does not make an identity");
        assert_eq!(bank, renamed, "the name is only a label");
        assert_eq!(bank.cmp(&renamed), std::cmp::Ordering::Equal);
        let set: std::collections::HashSet<Party> = [bank, impostor, renamed].into();
        assert_eq!(set.len(), 2);
    }
}
