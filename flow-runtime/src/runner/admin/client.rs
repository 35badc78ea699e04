//! A small blocking client of the admin API, used by `flowctl`, by the
//! multi-process demo's orchestrator and by tests.
//!
//! Why blocking, on `ureq`: a command-line tool makes one request at a time
//! and needs no async runtime; ureq is the community's small, well-kept
//! blocking HTTP client (no TLS compiled in here: the API is plain HTTP on
//! loopback or behind a proxy). Async callers run it on a blocking thread.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::Duration;

/// Why a request did not get a successful answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error status; `message` is its `error`.
    #[error("{status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The node's explanation.
        message: String,
    },
    /// No answer: the node is not reachable, or the connection failed.
    #[error("cannot reach the node at {url}: {message}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The answer is not what the API sends.
    #[error("unexpected answer from {url}: {message}")]
    BadAnswer {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {message}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// Largest answer read (a dump of many flows is large).
const MAX_ANSWER: u64 = 1 << 30;

/// A client of one node's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// Reads a token file: its first line, trimmed.
pub fn read_token_file(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClientError::TokenFile {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(ClientError::TokenFile {
            path: path.display().to_string(),
            message: "it is empty".into(),
        });
    }
    Ok(token)
}

impl AdminClient {
    /// A client of the node at `base_url` (`http://127.0.0.1:7101`)
    /// presenting `token`. `timeout` bounds each request (a result wait
    /// adds its own wait on top).
    pub fn new(base_url: &str, token: &str, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .build()
            .into();
        Self {
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            agent,
        }
    }

    /// The node's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET path`, its JSON answer.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let answer = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call();
        Self::json(&url, answer)
    }

    /// `GET path`, its text answer (`/metrics`).
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let answer = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call();
        let (status, text) = Self::read(&url, answer)?;
        if status >= 400 {
            return Err(Self::status_error(status, &text));
        }
        Ok(text)
    }

    /// `POST path` with a JSON body, its JSON answer.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let answer = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .content_type("application/json")
            .send(body.to_string().as_bytes());
        Self::json(&url, answer)
    }

    /// `GET path` as a stream of Server-Sent Events (`/api/v1/events`,
    /// `/api/v1/flows/{run}/progress?follow=true`): an error status is
    /// returned at once; then each event is read as it arrives, blocking,
    /// with no time limit (the node sends a keep-alive comment every 15 s).
    pub fn events(&self, path: &str) -> Result<EventStream, ClientError> {
        let url = format!("{}{path}", self.base);
        let answer = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Accept", "text/event-stream")
            .config()
            .timeout_global(None)
            .build()
            .call();
        let response = answer.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let status = response.status().as_u16();
        if status >= 400 {
            let (_, text) = Self::read(&url, Ok(response))?;
            return Err(Self::status_error(status, &text));
        }
        Ok(EventStream {
            url,
            lines: BufReader::new(response.into_body().into_reader()),
        })
    }

    fn read(
        url: &str,
        answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String), ClientError> {
        let mut response = answer.map_err(|e| ClientError::Unreachable {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| ClientError::BadAnswer {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        Ok((status, text))
    }

    fn status_error(status: u16, text: &str) -> ClientError {
        let message = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(500).collect());
        ClientError::Status { status, message }
    }

    fn json(
        url: &str,
        answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, ClientError> {
        let (status, text) = Self::read(url, answer)?;
        if status >= 400 {
            return Err(Self::status_error(status, &text));
        }
        serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer {
            url: url.to_owned(),
            message: format!("not JSON: {e}"),
        })
    }
}

/// One Server-Sent Event of the API: its `event:` name and its `data:` as
/// JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEvent {
    /// `progress`, `finished`, `lagged`, `error`.
    pub event: String,
    /// The event's JSON.
    pub data: Value,
}

/// The longest line of an event stream read (a progress path or an error
/// message is far shorter; a longer line means a broken or hostile server).
const MAX_EVENT_LINE: u64 = 1 << 20;

/// The events of a stream opened by [`AdminClient::events`], read as they
/// arrive. Ends (`None`) when the node closes the stream.
pub struct EventStream {
    url: String,
    lines: BufReader<ureq::BodyReader<'static>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    fn bad(&self, message: impl Into<String>) -> ClientError {
        ClientError::BadAnswer {
            url: self.url.clone(),
            message: message.into(),
        }
    }

    /// The next line without its end, `None` at the end of the stream.
    fn line(&mut self) -> Result<Option<String>, ClientError> {
        let mut buf = Vec::new();
        let read = (&mut self.lines)
            .take(MAX_EVENT_LINE + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| ClientError::Unreachable {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        if read == 0 {
            return Ok(None);
        }
        if buf.last() != Some(&b'\n') && buf.len() as u64 > MAX_EVENT_LINE {
            return Err(self.bad("an event line is longer than 1 MiB"));
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| self.bad("an event line is not UTF-8"))
    }
}

impl Iterator for EventStream {
    type Item = Result<ServerEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut event = String::new();
        let mut data = String::new();
        loop {
            let line = match self.line() {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            if line.is_empty() {
                if data.is_empty() {
                    continue; // after a comment, or a stray blank line
                }
                let parsed = serde_json::from_str(&data)
                    .map_err(|e| self.bad(format!("an event's data is not JSON: {e}")));
                return Some(parsed.map(|data| ServerEvent {
                    event: if event.is_empty() {
                        "message".to_owned()
                    } else {
                        std::mem::take(&mut event)
                    },
                    data,
                }));
            }
            if line.starts_with(':') {
                continue; // a keep-alive comment
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value.to_owned(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {} // id, retry: not used by this API
            }
        }
    }
}
