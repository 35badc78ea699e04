//! The dashboard's browser sessions: a person logs in once with their admin
//! token, and the browser then holds a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie.
//!
//! Why a session and not the token in a cookie or in JavaScript: the token
//! never reaches the page's script (an injected script could not read it,
//! even if escaping failed somewhere), a logout ends the session on the
//! node, and a session expires on its own. `SameSite=Strict` keeps the
//! browser from sending the cookie with a request another site starts; every
//! state-changing form also carries the session's CSRF token, checked on
//! the node (see [`super::check_post`]).
//!
//! Sessions live in the node's memory only: a restart of the node logs every
//! browser out. Like tokens, session ids are kept by their SHA-256 digests.

use super::super::auth::{Caller, digest};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The cookie's name.
pub(super) const COOKIE: &str = "flow_dashboard";
/// How long a session lasts after its login.
pub(super) const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once; a new login beyond it ends the session
/// closest to expiring.
const MAX_SESSIONS: usize = 1024;

/// A logged-in browser.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Who logged in.
    pub(crate) caller: Caller,
    /// The token every form of this session carries (hex, 256 bits).
    pub(crate) csrf: String,
    expires: Instant,
}

/// The sessions of one node's dashboard, by digest of their ids.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Starts a session for `caller`; returns its id (for the cookie).
    pub(super) fn create(&self, caller: Caller) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let session = Session {
            caller,
            csrf: hex::encode(rand::random::<[u8; 32]>()),
            expires: Instant::now() + LIFETIME,
        };
        let mut map = self
            .by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(digest(&id), session);
        id
    }

    /// The live session with id `id`.
    pub(super) fn get(&self, id: &str) -> Option<Session> {
        let key = digest(id);
        let mut map = self
            .by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session with id `id`, if any.
    pub(super) fn end(&self, id: &str) {
        self.by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&digest(id));
    }
}

/// The session id in a request's `Cookie` headers, if any.
pub(super) fn session_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The `Set-Cookie` value that hands a browser the session `id`.
pub(super) fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that makes a browser forget its session.
pub(super) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether `presented` is the session's CSRF token; compared by digest, so
/// the time taken says nothing about how much of it matched.
pub(super) fn csrf_matches(session: &Session, presented: &str) -> bool {
    digest(presented) == digest(&session.csrf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::admin::{Role, Users};

    fn caller() -> Caller {
        let mut users = Users::default();
        users.add(
            "ann",
            Role::Read,
            Vec::new(),
            digest("ann-token-0123456789"),
        );
        users
            .authenticate(Some("Bearer ann-token-0123456789"))
            .unwrap()
    }

    #[test]
    fn a_session_is_found_by_its_id_until_it_ends() {
        let sessions = Sessions::default();
        let id = sessions.create(caller());
        let s = sessions.get(&id).unwrap();
        assert_eq!(s.caller.name, "ann");
        assert!(csrf_matches(&s, &s.csrf.clone()));
        assert!(!csrf_matches(&s, ""));
        assert!(sessions.get("not-a-session").is_none());
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn the_cookie_is_read_among_others_and_is_http_only_and_strict() {
        let mut headers = axum::http::HeaderMap::new();
        headers.append(
            axum::http::header::COOKIE,
            "a=1; flow_dashboard=abc; b=2".parse().unwrap(),
        );
        assert_eq!(session_id(&headers).as_deref(), Some("abc"));
        let cookie = set_cookie("abc");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(clear_cookie().contains("Max-Age=0"));
        assert_eq!(session_id(&axum::http::HeaderMap::new()), None);
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let first = sessions.create(caller());
        for _ in 0..MAX_SESSIONS {
            sessions.create(caller());
        }
        assert!(sessions.get(&first).is_none(), "the oldest session ended");
        assert_eq!(
            sessions
                .by_digest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            MAX_SESSIONS
        );
    }
}
