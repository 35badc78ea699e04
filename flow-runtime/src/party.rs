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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}
