//! The web dashboard, served by the admin API's own server under `/ui/`:
//! the flows in flight (filters, live counts), one flow (its state graph
//! with the current state drawn out, progress, stored fields, sessions and
//! counterparties), the hospital (retry and kill for the `operate` role)
//! and the node's status and peers.
//!
//! How it is built, and why:
//! * **Server-rendered HTML** with [maud](https://maud.lambda.xyz/): its
//!   templates are Rust checked at compile time, and every value they insert
//!   is HTML-escaped unless marked otherwise. Flow names, stored fields,
//!   error texts and peer names all come from flows and peers, which are
//!   hostile input; escaping by default means a forgotten call cannot open
//!   a hole. Only the state graph's SVG is inserted as it is, and it
//!   escapes its own text.
//! * **A little JavaScript** (`assets/dashboard.js`, no framework): every
//!   element with a `data-live` attribute is refetched every two seconds
//!   from a `/ui/live/...` URL that answers the same server-rendered HTML
//!   fragment, so the page has one renderer and the script never builds
//!   HTML from data.
//! * **Everything is in the binary** (`include_str!`); nothing is fetched
//!   from another site, and the Content-Security-Policy forbids it:
//!   scripts, styles and forms are the node's own only, no inline script.
//! * **Login by token, then a session cookie** ([`session`]): a person
//!   pastes the same token `flowctl` uses; the browser then holds an
//!   `HttpOnly`, `SameSite=Strict` session cookie, never the token. Each
//!   form that changes something carries the session's CSRF token, and a
//!   POST whose `Origin` (or `Sec-Fetch-Site`) says another site sent it
//!   is refused. Roles are the API's: a `read` user sees no retry or kill
//!   buttons, and the node refuses those actions from them anyway.

mod pages;
mod session;

pub(crate) use session::Sessions;

use super::ApiError;
use super::routes::Shared;
use crate::transport::Transport;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
pub(crate) use session::Session;

/// The dashboard's style sheet.
const CSS: &str = include_str!("assets/dashboard.css");
/// The dashboard's script: live refresh and the kill confirmation.
const JS: &str = include_str!("assets/dashboard.js");

/// What every dashboard answer may load and do: only the node's own
/// scripts, styles and forms; nothing framed, nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The dashboard's routes. Those behind the session layer need a logged-in
/// browser; the login page, the assets and `/` do not.
pub(super) fn router<T: Transport>(admin: Shared<T>) -> Router {
    let behind_login = Router::new()
        .route("/ui/", get(pages::flows::<T>))
        .route("/ui/live/flows", get(pages::flows_live::<T>))
        .route("/ui/flows/{run}", get(pages::flow::<T>))
        .route("/ui/live/flows/{run}", get(pages::flow_live::<T>))
        .route("/ui/flows/{run}/retry", post(pages::retry::<T>))
        .route("/ui/flows/{run}/kill", post(pages::kill::<T>))
        .route("/ui/hospital", get(pages::hospital::<T>))
        .route("/ui/live/hospital", get(pages::hospital_live::<T>))
        .route("/ui/node", get(pages::node::<T>))
        .route("/ui/live/node", get(pages::node_live::<T>))
        .route("/ui/node/drain", post(pages::drain::<T>))
        .route("/ui/logout", post(pages::logout::<T>))
        .layer(middleware::from_fn_with_state(
            admin.clone(),
            require_session::<T>,
        ));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(pages::login_page).post(pages::login::<T>))
        .route("/ui/assets/dashboard.css", get(css))
        .route("/ui/assets/dashboard.js", get(js))
        .merge(behind_login)
        .layer(middleware::from_fn(refuse_cross_site))
        .layer(middleware::map_response(security_headers))
        .with_state(admin)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidated each time: a new build of the node serves its own.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Adds the headers every dashboard answer carries.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it, browsers send `Origin: null` with the
    // forms, and the origin check could not tell the node's own forms.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Refuses a POST that the browser says another site sent: its `Origin`
/// is not this server's, or `Sec-Fetch-Site` says `cross-site`/`same-site`.
/// A second wall behind the `SameSite=Strict` cookie and the CSRF token,
/// and the only one for the login form (which has no session yet).
async fn refuse_cross_site(request: Request, next: Next) -> Response {
    if request.method() != Method::GET
        && request.method() != Method::HEAD
        && let Err(e) = same_origin(request.headers())
    {
        return unread_body_refused(pages::error_page(&e));
    }
    next.run(request).await
}

/// A refusal sent before the request's body was read: the connection is
/// closed after it (what is left of the body would otherwise be read as
/// the next request), and says so, so that no client sends another
/// request on it.
fn unread_body_refused(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
        && site != "none"
    {
        return Err(ApiError::forbidden(format!(
            "refused: the browser says another site ({site}) sent this form"
        )));
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or_default();
        let ours = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o == host);
        if !ours {
            return Err(ApiError::forbidden(
                "refused: this form was sent from another origin than the dashboard's",
            ));
        }
    }
    Ok(())
}

/// Lets a request through only with a live session (put in its
/// extensions); otherwise a page goes to the login, and a live fragment or
/// an action gets 401 (the script then goes to the login).
async fn require_session<T: Transport>(
    State(admin): State<Shared<T>>,
    mut request: Request,
    next: Next,
) -> Response {
    let session = session::session_id(request.headers()).and_then(|id| admin.sessions.get(&id));
    match session {
        Some(s) => {
            request.extensions_mut().insert(s);
            next.run(request).await
        }
        None if request.method() == Method::GET
            && !request.uri().path().starts_with("/ui/live/") =>
        {
            Redirect::to("/ui/login").into_response()
        }
        None => unread_body_refused(
            (
                StatusCode::UNAUTHORIZED,
                "not logged in to the dashboard (or the session ended): log in at /ui/login",
            )
                .into_response(),
        ),
    }
}

/// Checks the CSRF token a form carried against its session.
fn check_csrf(session: &Session, presented: &str) -> Result<(), ApiError> {
    if session::csrf_matches(session, presented) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "refused: the form's CSRF token is not this session's (reload the page and try again)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_site_posts_are_refused() {
        let mut h = HeaderMap::new();
        assert!(
            same_origin(&h).is_ok(),
            "a client that sends neither header"
        );
        h.insert(header::HOST, "127.0.0.1:7101".parse().unwrap());
        h.insert(header::ORIGIN, "http://127.0.0.1:7101".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&h).is_ok());
    }
}
