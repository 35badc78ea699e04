//! Who may call the admin API and what they may do: bearer tokens, users,
//! roles.
//!
//! Every request carries `Authorization: Bearer <token>`; there is no
//! anonymous access, not even on loopback (any local process could
//! otherwise kill flows). Tokens are compared by their SHA-256 digests:
//! the configuration stores digests only (a leaked config file gives no
//! token), and comparing digests leaks nothing useful through timing.
//!
//! Two sources of users:
//! * the token file (default `<database>.admin-token`): created on first
//!   start with a random 256-bit token, mode 0600, for the user `admin`
//!   with the `operate` role. Whoever can read the file operates the node,
//!   exactly like whoever can read its identity key;
//! * `[[admin.users]]` in the node's TOML: a name, a role and the token's
//!   `token_sha256`.

use super::ApiError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What a user may do. Each role includes the ones before it, except that
/// `start` is limited to its allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// List and show flows, read results and progress, node status,
    /// metrics, health, dump.
    Read,
    /// `read`, and start the flows of the user's allow list.
    Start,
    /// `read`, start any startable flow, kill, retry, drain on/off.
    Operate,
}

impl Role {
    /// The role's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Start => "start",
            Role::Operate => "operate",
        }
    }
}

/// `[[admin.users]]`: one configured user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    /// Shown in the log next to each action the user takes.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// Hex SHA-256 of the user's token (`printf %s "$TOKEN" | sha256sum`).
    pub token_sha256: String,
    /// For the `start` role: the flows (by registered name) the user may
    /// start; `"*"` allows every startable flow.
    #[serde(default)]
    pub start: Vec<String>,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user's name.
    pub name: String,
    /// The user's role.
    pub role: Role,
    start: Vec<String>,
}

impl Caller {
    /// `Ok` if the caller's role is at least `role`; else a 403 that says
    /// what was needed.
    pub fn require(&self, role: Role, action: &str) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "user `{}` has the `{}` role; {action} needs the `{}` role",
                self.name,
                self.role.name(),
                role.name()
            )))
        }
    }

    /// Whether the caller may start the flow registered as `flow`.
    pub fn may_start(&self, flow: &str) -> bool {
        match self.role {
            Role::Operate => true,
            Role::Start => self.start.iter().any(|f| f == "*" || f == flow),
            Role::Read => false,
        }
    }
}

/// The users a node knows, by token digest.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: Vec<([u8; 32], Caller)>,
}

/// Why the users could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The token file could not be created or read.
    #[error("admin token file {path}: {message}")]
    TokenFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A configured user is malformed.
    #[error("[[admin.users]] `{name}`: {message}")]
    User {
        /// The user.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// SHA-256 of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Users {
    /// Users from the token file at `token_file` (created if missing) and
    /// the configured `users`.
    pub fn load(token_file: Option<&Path>, users: &[UserSection]) -> Result<Self, AuthSetupError> {
        let mut out = Users::default();
        if let Some(path) = token_file {
            let token = read_or_create_token(path)?;
            out.add("admin", Role::Operate, Vec::new(), digest(&token));
        }
        for u in users {
            let bad = |message: String| AuthSetupError::User {
                name: u.name.clone(),
                message,
            };
            let bytes = hex::decode(u.token_sha256.trim())
                .map_err(|e| bad(format!("token_sha256 is not hex: {e}")))?;
            let hash: [u8; 32] = bytes
                .try_into()
                .map_err(|b: Vec<u8>| bad(format!("token_sha256 has {} bytes, not 32", b.len())))?;
            if u.role != Role::Start && !u.start.is_empty() {
                return Err(bad(
                    "`start` (the allow list) is only for the `start` role".into()
                ));
            }
            out.add(&u.name, u.role, u.start.clone(), hash);
        }
        Ok(out)
    }

    /// Adds a user (for embedding programs and tests).
    pub fn add(&mut self, name: &str, role: Role, start: Vec<String>, token_sha256: [u8; 32]) {
        self.users.push((
            token_sha256,
            Caller {
                name: name.to_owned(),
                role,
                start,
            },
        ));
    }

    /// The caller presenting `authorization` (the header's value), or a
    /// 401 saying what is missing.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::unauthorized(
                "missing `Authorization: Bearer <token>` header; the admin token is in the node's token file",
            ));
        };
        let Some(token) = value.strip_prefix("Bearer ") else {
            return Err(ApiError::unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ));
        };
        let presented = digest(token.trim());
        self.users
            .iter()
            .find(|(hash, _)| *hash == presented)
            .map(|(_, caller)| caller.clone())
            .ok_or_else(|| ApiError::unauthorized("unknown token"))
    }
}

/// The token in `path`, or a new random one written there with mode 0600
/// (never overwriting a file that appears meanwhile).
fn read_or_create_token(path: &Path) -> Result<String, AuthSetupError> {
    let err = |message: String| AuthSetupError::TokenFile {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_owned();
            if token.len() < 16 {
                return Err(err(
                    "holds no token (fewer than 16 characters); delete it to have a new one made"
                        .into(),
                ));
            }
            #[cfg(unix)]
            if let Ok(meta) = std::fs::metadata(path) {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "the admin token file is readable by other users; restrict it with `chmod 600`");
                }
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = hex::encode(rand::random::<[u8; 32]>());
            write_new_private_file(path, &format!("{token}\n")).map_err(|e| err(e.to_string()))?;
            tracing::info!(path = %path.display(), "created the admin token file (role operate)");
            Ok(token)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes a new file readable by its owner only; fails if it exists.
pub(crate) fn write_new_private_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The default token file of a node whose database is `database`:
/// `<database>.admin-token`.
pub fn default_token_file(database: &Path) -> PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push(".admin-token");
    database.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.admin-token");
        let users = Users::load(Some(&path), &[]).unwrap();
        let token = std::fs::read_to_string(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let caller = users
            .authenticate(Some(&format!("Bearer {}", token.trim())))
            .unwrap();
        assert_eq!(
            (caller.name.as_str(), caller.role),
            ("admin", Role::Operate)
        );
        // A second start reads the same token.
        let again = Users::load(Some(&path), &[]).unwrap();
        assert!(
            again
                .authenticate(Some(&format!("Bearer {}", token.trim())))
                .is_ok()
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
    }

    #[test]
    fn roles_and_allow_lists() {
        let users = Users::load(
            None,
            &[
                UserSection {
                    name: "ci".into(),
                    role: Role::Start,
                    token_sha256: hex::encode(digest("ci-token-0123456789")),
                    start: vec!["ping".into()],
                },
                UserSection {
                    name: "viewer".into(),
                    role: Role::Read,
                    token_sha256: hex::encode(digest("viewer-token-0123456789")),
                    start: vec![],
                },
            ],
        )
        .unwrap();
        assert!(users.authenticate(None).is_err());
        assert!(users.authenticate(Some("Basic abc")).is_err());
        assert!(users.authenticate(Some("Bearer nope")).is_err());
        let ci = users
            .authenticate(Some("Bearer ci-token-0123456789"))
            .unwrap();
        assert!(ci.may_start("ping") && !ci.may_start("pong"));
        assert!(ci.require(Role::Read, "x").is_ok());
        assert!(ci.require(Role::Operate, "kill").is_err());
        let viewer = users
            .authenticate(Some("Bearer viewer-token-0123456789"))
            .unwrap();
        assert!(!viewer.may_start("ping"));
        assert!(viewer.require(Role::Start, "start").is_err());
        let bad = UserSection {
            name: "x".into(),
            role: Role::Read,
            token_sha256: "zz".into(),
            start: vec![],
        };
        assert!(Users::load(None, &[bad]).is_err());
    }
}
