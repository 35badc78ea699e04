//! [`NetworkMap`]: who is on the network, where to reach them, and which
//! ed25519 key proves who they are.
//!
//! The map is the transport's only source of trust: a connection is
//! accepted only from a key listed here, and a peer that claims a name must
//! present exactly the key listed for that name. It is loaded from a TOML
//! file that every node of a network shares:
//!
//! ```toml
//! [[party]]
//! name = "Alice"
//! address = "127.0.0.1:7001"
//! public_key = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
//! ```

use super::records::MAX_NAME_LEN;
use crate::{Party, PublicKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// One party in the network map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// The party's legal name, as flows see it in [`Party::name`].
    pub name: String,
    /// Where its node listens: `host:port` (a DNS name is resolved at every
    /// connection attempt, so a moved node only needs its DNS updated).
    pub address: String,
    /// Its ed25519 identity key.
    pub key: PublicKey,
}

impl PeerEntry {
    /// The entry as a [`Party`] value for flows.
    pub fn party(&self) -> Party {
        Party::new(self.name.clone(), self.key)
    }
}

/// Why a network map was refused.
#[derive(Debug, thiserror::Error)]
pub enum NetworkMapError {
    /// The file could not be read.
    #[error("cannot read the network map {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error(
        "the network map is not valid TOML (expected [[party]] tables with name, address and public_key): {0}"
    )]
    Parse(String),
    /// A `public_key` is not 64 hex digits.
    #[error(
        "party `{name}` has an invalid public_key: {reason} (expected 64 hex digits, as printed by `flow-keygen`)"
    )]
    BadKey {
        /// The party.
        name: String,
        /// What was wrong.
        reason: String,
    },
    /// A name too long to fit in the handshake's identity proof.
    #[error(
        "a name in the network map is {0} bytes long; names may have at most {MAX_NAME_LEN} bytes"
    )]
    NameTooLong(usize),
    /// Two entries share a name.
    #[error("the name `{0}` appears twice in the network map: names must be unique")]
    DuplicateName(String),
    /// Two entries share a key.
    #[error(
        "parties `{0}` and `{1}` have the same public_key: each node needs its own identity key"
    )]
    DuplicateKey(String, String),
    /// An entry has an empty name or address.
    #[error("a party in the network map has an empty {0}")]
    Empty(&'static str),
}

/// The parties of a network, indexed by key and by name.
#[derive(Debug, Clone, Default)]
pub struct NetworkMap {
    entries: Vec<PeerEntry>,
    by_key: HashMap<PublicKey, usize>,
    by_name: HashMap<String, usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    #[serde(default)]
    party: Vec<EntryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    name: String,
    address: String,
    public_key: String,
}

impl NetworkMap {
    /// Builds a map, refusing duplicate names or keys and empty fields.
    pub fn new(entries: impl IntoIterator<Item = PeerEntry>) -> Result<Self, NetworkMapError> {
        let mut map = NetworkMap::default();
        for entry in entries {
            if entry.name.trim().is_empty() {
                return Err(NetworkMapError::Empty("name"));
            }
            if entry.address.trim().is_empty() {
                return Err(NetworkMapError::Empty("address"));
            }
            if entry.name.len() > MAX_NAME_LEN {
                return Err(NetworkMapError::NameTooLong(entry.name.len()));
            }
            if map.by_name.contains_key(&entry.name) {
                return Err(NetworkMapError::DuplicateName(entry.name));
            }
            if let Some(&other) = map.by_key.get(&entry.key) {
                return Err(NetworkMapError::DuplicateKey(
                    map.entries[other].name.clone(),
                    entry.name,
                ));
            }
            let index = map.entries.len();
            map.by_key.insert(entry.key, index);
            map.by_name.insert(entry.name.clone(), index);
            map.entries.push(entry);
        }
        Ok(map)
    }

    /// Parses the TOML form (see the module docs).
    pub fn from_toml_str(text: &str) -> Result<Self, NetworkMapError> {
        let file: MapFile =
            toml::from_str(text).map_err(|e| NetworkMapError::Parse(e.to_string()))?;
        let mut entries = Vec::with_capacity(file.party.len());
        for e in file.party {
            let key =
                parse_public_key(&e.public_key).map_err(|reason| NetworkMapError::BadKey {
                    name: e.name.clone(),
                    reason,
                })?;
            entries.push(PeerEntry {
                name: e.name,
                address: e.address,
                key,
            });
        }
        Self::new(entries)
    }

    /// Reads and parses a TOML network map file.
    pub fn load(path: &Path) -> Result<Self, NetworkMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| NetworkMapError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The TOML form, loadable with [`NetworkMap::from_toml_str`].
    pub fn to_toml_string(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            out.push_str("[[party]]\n");
            out.push_str(&format!("name = {}\n", toml_string(&e.name)));
            out.push_str(&format!("address = {}\n", toml_string(&e.address)));
            out.push_str(&format!("public_key = \"{}\"\n\n", hex::encode(e.key.0)));
        }
        out
    }

    /// The entry for an identity key, if the key is on the network.
    pub fn by_key(&self, key: &PublicKey) -> Option<&PeerEntry> {
        self.by_key.get(key).map(|&i| &self.entries[i])
    }

    /// The entry for a legal name.
    pub fn by_name(&self, name: &str) -> Option<&PeerEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[PeerEntry] {
        &self.entries
    }
}

/// Parses 64 hex digits into a [`PublicKey`]; the error says what was wrong.
pub fn parse_public_key(text: &str) -> Result<PublicKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|e| e.to_string())?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes instead of 32", b.len()))?;
    Ok(PublicKey(key))
}

/// A TOML basic string literal for `s`.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, k: u8) -> PeerEntry {
        PeerEntry {
            name: name.into(),
            address: format!("127.0.0.1:{}", 7000 + u16::from(k)),
            key: PublicKey([k; 32]),
        }
    }

    #[test]
    fn toml_round_trip() {
        let map = NetworkMap::new([entry("Alice", 1), entry("Bob \"B\"", 2)]).unwrap();
        let again = NetworkMap::from_toml_str(&map.to_toml_string()).unwrap();
        assert_eq!(again.entries(), map.entries());
        assert_eq!(again.by_name("Bob \"B\"").unwrap().key, PublicKey([2; 32]));
        assert_eq!(again.by_key(&PublicKey([1; 32])).unwrap().name, "Alice");
    }

    #[test]
    fn refuses_duplicates_and_bad_keys() {
        assert!(matches!(
            NetworkMap::new([entry("A", 1), entry("A", 2)]),
            Err(NetworkMapError::DuplicateName(_))
        ));
        assert!(matches!(
            NetworkMap::new([entry("A", 1), entry("B", 1)]),
            Err(NetworkMapError::DuplicateKey(..))
        ));
        let bad = "[[party]]\nname = \"A\"\naddress = \"x:1\"\npublic_key = \"abcd\"\n";
        let err = NetworkMap::from_toml_str(bad).unwrap_err();
        assert!(err.to_string().contains("2 bytes instead of 32"), "{err}");
        let unknown = "[[party]]\nname = \"A\"\naddress = \"x:1\"\npublic_key = \"00\"\nport = 3\n";
        assert!(matches!(
            NetworkMap::from_toml_str(unknown),
            Err(NetworkMapError::Parse(_))
        ));
    }
}
