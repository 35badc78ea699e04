//! The admin/client API: HTTP with JSON bodies, served by a node on its own
//! listen address (loopback by default), so that operators (`flowctl`,
//! `curl`, a dashboard) and client programs use a node without writing code
//! in it. Every route and its JSON is listed in `docs/operations.md` (API
//! reference).
//!
//! Why HTTP+JSON on axum: `curl` and any language's HTTP client work
//! with it, Prometheus scrapes `/metrics` from the same server, and axum
//! (on hyper, from the tokio project) runs on the node's own tokio runtime
//! as one more task, with no second runtime or thread pool. Its routing and
//! body-limit layers are the community's standard ones, so this module
//! holds only the routes' logic. Every API route is under `/api/v1/` and
//! answers JSON; the same server also serves the web dashboard under
//! `/ui/` (see `docs/operations.md`, "The web dashboard").
//!
//! Security: every API request is authenticated ([`auth`]; the dashboard
//! by a session made from the same tokens), bodies are capped
//! ([`AdminSection::max_body_bytes`]), every input is checked before
//! anything changes, and each operator action is logged with the user who
//! did it. The API speaks plain HTTP: keep it on loopback (the default) or
//! behind a TLS-terminating proxy; the token would otherwise cross the
//! network in clear.

pub mod auth;
pub mod cli;
pub mod client;
mod dashboard;
pub mod metrics;
mod routes;
pub mod startable;
mod streams;

pub use auth::{Caller, Role, UserSection, Users};
pub use metrics::NodeMetrics;
pub use startable::Startable;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `[admin]` in the node's TOML. Every field is optional:
///
/// ```toml
/// [admin]
/// listen = "127.0.0.1:7101"          # default 127.0.0.1:0 (a free port)
/// token_file = "alice.admin-token"   # default <database>.admin-token
/// max_body_bytes = 1048576           # default 1 MiB
///
/// [[admin.users]]                    # more users, besides the token file's `admin`
/// name = "ci"
/// role = "start"                     # read | start | operate
/// start = ["ping"]                   # flows the `start` role may start ("*": all)
/// token_sha256 = "9f86d0..."         # printf %s "$TOKEN" | sha256sum
/// ```
///
/// The URL the API listens on is written to `<database>.admin-url` at each
/// start (useful with port 0), and logged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `host:port` to listen on.
    pub listen: Option<String>,
    /// The token file (created with mode 0600 if missing).
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: Option<usize>,
    /// Configured users.
    #[serde(default)]
    pub users: Vec<UserSection>,
}

/// The default listen address: loopback, a free port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";
/// The default body limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// How a node serves its admin API: see
/// [`NodeBuilder::admin`](crate::runner::NodeBuilder::admin).
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// `host:port` to listen on.
    pub listen: String,
    /// The token file; `None`: only `users`.
    pub token_file: Option<PathBuf>,
    /// Configured users.
    pub users: Vec<UserSection>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl AdminSettings {
    /// The settings of `section` for a node whose database is `database`.
    pub fn from_section(section: &AdminSection, database: &Path) -> Self {
        Self {
            listen: section
                .listen
                .clone()
                .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            token_file: Some(
                section
                    .token_file
                    .clone()
                    .unwrap_or_else(|| auth::default_token_file(database)),
            ),
            users: section.users.clone(),
            max_body_bytes: section.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        }
    }
}

/// The file a node writes its admin URL to: `<database>.admin-url`.
pub fn url_file(database: &Path) -> PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push(".admin-url");
    database.with_file_name(name)
}

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Users or the token file.
    #[error(transparent)]
    Auth(#[from] auth::AuthSetupError),
    /// The listen address.
    #[error("cannot listen for the admin API on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running admin API.
#[derive(Debug, Clone, Copy)]
pub struct AdminServer {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl AdminServer {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An error answer: a status and a JSON body `{"error": "..."}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    /// 503: the node cannot do it now (stopped, storage failed).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub(crate) use routes::{Running, serve};

/// A JSON answer. Why not `axum::Json`: axum's `json` feature turns on
/// serde_json's `raw_value`, which changes the trait-impl lists in the
/// compile errors `#[flow]` users see; rendering a `serde_json::Value`
/// needs nothing of it.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render the answer as JSON: {e}"),
            )
                .into_response(),
        }
    }
}
