//! Identity keys: generating them and keeping them in files.
//!
//! A key file holds the 32-byte ed25519 secret seed as 64 hex digits and a
//! newline. It is created with permissions 0600 (owner read/write only) and
//! never overwritten: losing a node's identity key means the node can no
//! longer prove who it is to its peers.

use crate::PublicKey;
use ed25519_dalek::SigningKey;
use std::io::Write;
use std::path::Path;

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(getrandom::Error),
    /// The key file could not be read.
    #[error("cannot read the identity key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file could not be written.
    #[error("cannot write the identity key file {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists already.
    #[error(
        "{0} already exists: refusing to overwrite an identity key (delete it first if you really mean to replace this node's identity)"
    )]
    Exists(String),
    /// The file's content is not a key.
    #[error(
        "{path} is not an identity key file ({reason}); expected 64 hex digits as written by `flow-keygen`"
    )]
    Malformed {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// A new identity key from the operating system's randomness.
pub fn generate_identity() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(KeyError::Random)?;
    let key = SigningKey::from_bytes(&seed);
    seed.iter_mut().for_each(|b| *b = 0);
    Ok(key)
}

/// The public half of an identity key, as the network map lists it.
pub fn public_key(key: &SigningKey) -> PublicKey {
    PublicKey(key.verifying_key().to_bytes())
}

/// Writes `key` to a new file at `path`, readable only by its owner.
/// Refuses to replace an existing file.
pub fn write_key_file(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let shown = path.display().to_string();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(shown.clone())
        } else {
            KeyError::Write {
                path: shown.clone(),
                source,
            }
        }
    })?;
    let text = format!("{}\n", hex::encode(key.to_bytes()));
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyError::Write {
            path: shown,
            source,
        })
}

/// Reads an identity key file. Warns (without failing) if the file is
/// readable by other users.
pub fn read_key_file(path: &Path) -> Result<SigningKey, KeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %shown, "the identity key file is readable by other users; restrict it with `chmod 600`");
        }
    }
    let malformed = |reason: String| KeyError::Malformed {
        path: shown.clone(),
        reason,
    };
    let bytes = hex::decode(text.trim()).map_err(|e| malformed(e.to_string()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| malformed(format!("{} bytes instead of 32", b.len())))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_files_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = generate_identity().unwrap();
        write_key_file(&path, &key).unwrap();
        assert_eq!(read_key_file(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(matches!(
            write_key_file(&path, &generate_identity().unwrap()),
            Err(KeyError::Exists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_ne!(
            generate_identity().unwrap().to_bytes(),
            key.to_bytes(),
            "two generated keys must differ"
        );
    }

    #[test]
    fn malformed_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "not hex at all").unwrap();
        let err = read_key_file(&path).unwrap_err().to_string();
        assert!(err.contains("not an identity key file"), "{err}");
        std::fs::write(&path, "abcd\n").unwrap();
        let err = read_key_file(&path).unwrap_err().to_string();
        assert!(err.contains("2 bytes instead of 32"), "{err}");
        let err = read_key_file(&dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
