//! The dashboard's pages and their live fragments. Each page is a layout
//! around a `data-live` element; the element's content is the fragment the
//! matching `/ui/live/...` route answers, so a refresh redraws it with the
//! same code. Every value from the node's data goes through maud's escaping.

use super::super::ApiError;
use super::super::auth::Role;
use super::super::routes::{NodeStatus, Shared, no_such_flow, node_error, now, parse_run};
use super::check_csrf;
use super::session::{self, Session};
use crate::node::{CheckpointDump, NodeError};
use crate::transport::Transport;
use axum::Form;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// The most rows the flows page shows (the counts cover every flow).
const MAX_ROWS: usize = 500;
/// The most characters of a flow's stored fields shown.
const MAX_FIELDS_CHARS: usize = 64 * 1024;

/// An error answered as an HTML page.
pub(super) struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(&self.0)
    }
}

type PageResult = Result<Response, PageError>;

/// `e` as a small HTML page with its status.
pub(super) fn error_page(e: &ApiError) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Error " (e.status.as_u16()) }
                link rel="stylesheet" href="/ui/assets/dashboard.css";
            }
            body {
                main {
                    h1 { "Error " (e.status.as_u16()) }
                    p.error { (e.message) }
                    p { a href="/ui/" { "Back to the flows" } }
                }
            }
        }
    };
    (e.status, html_response(body)).into_response()
}

fn html_response(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// The navigation's entries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Flows,
    Hospital,
    Node,
}

/// A whole page: header with the node's name, navigation, the user and
/// their role, a logout button, then `content`.
fn layout(node: &str, session: &Session, current: Nav, title: &str, content: Markup) -> Markup {
    let link = |nav: Nav, href: &'static str, text: &'static str| {
        html! { a href=(href) aria-current=[(nav == current).then_some("page")] { (text) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (node) }
                link rel="stylesheet" href="/ui/assets/dashboard.css";
                script src="/ui/assets/dashboard.js" defer {}
            }
            body {
                header.top {
                    span.brand { "flow node " strong.node-name { (node) } }
                    nav {
                        (link(Nav::Flows, "/ui/", "Flows"))
                        (link(Nav::Hospital, "/ui/hospital", "Hospital"))
                        (link(Nav::Node, "/ui/node", "Node and peers"))
                    }
                    span.user {
                        (session.caller.name) " "
                        span.role { (session.caller.role.name()) }
                        form.inline method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (content) }
            }
        }
    }
}

// ---------------------------------------------------------------- login

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

fn login_markup(message: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in · flow node" }
                link rel="stylesheet" href="/ui/assets/dashboard.css";
            }
            body {
                main.login {
                    h1 { "Log in to the node's dashboard" }
                    @if let Some(m) = message { p.error { (m) } }
                    form method="post" action="/ui/login" {
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="off" required autofocus;
                        button type="submit" { "Log in" }
                    }
                    p.hint {
                        "The token "  code { "flowctl" } " uses: the node's token file ("
                        code { "<database>.admin-token" } ") or a user's token from "
                        code { "[[admin.users]]" } ". The browser keeps a session cookie, not the token."
                    }
                }
            }
        }
    }
}

pub(super) async fn login_page() -> Response {
    html_response(login_markup(None))
}

pub(super) async fn login<T: Transport>(
    State(admin): State<Shared<T>>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let token = match form {
        Ok(Form(f)) => f.token,
        Err(r) => {
            return (
                StatusCode::BAD_REQUEST,
                html_response(login_markup(Some(&r.body_text()))),
            )
                .into_response();
        }
    };
    match admin
        .users
        .authenticate(Some(&format!("Bearer {}", token.trim())))
    {
        Ok(caller) => {
            info!(user = %caller.name, role = caller.role.name(), "dashboard login");
            let id = admin.sessions.create(caller);
            (
                [(header::SET_COOKIE, session::set_cookie(&id))],
                Redirect::to("/ui/"),
            )
                .into_response()
        }
        Err(e) => {
            warn!(error = %e.message, "dashboard login refused");
            (
                StatusCode::UNAUTHORIZED,
                html_response(login_markup(Some("That token is not known to this node."))),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: String,
}

pub(super) async fn logout<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
    headers: axum::http::HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> PageResult {
    let Form(form) = form.map_err(form_error)?;
    check_csrf(&session, &form.csrf)?;
    if let Some(id) = session::session_id(&headers) {
        admin.sessions.end(&id);
    }
    Ok((
        [(header::SET_COOKIE, session::clear_cookie())],
        Redirect::to("/ui/login"),
    )
        .into_response())
}

fn form_error(r: FormRejection) -> PageError {
    PageError(ApiError::bad_request(format!(
        "the form is not what was expected: {}",
        r.body_text()
    )))
}

// ---------------------------------------------------------------- flows

/// The flows page's filters, as its form sends them (empty means any).
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Filters {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    flow: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    state: String,
    /// `yes`, `no` or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    hospital: String,
    /// Whole seconds, or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    waiting_longer_than_s: String,
}

impl Filters {
    fn query_string(&self) -> String {
        serde_urlencoded::to_string(self).unwrap_or_default()
    }

    /// Whether `d` passes every filter; an error for a malformed one.
    fn matcher(&self) -> Result<impl Fn(&CheckpointDump) -> bool + '_, ApiError> {
        let hospital = match self.hospital.as_str() {
            "" => None,
            "yes" => Some(true),
            "no" => Some(false),
            _ => {
                return Err(ApiError::bad_request(
                    "hospital must be `yes`, `no` or empty",
                ));
            }
        };
        let longer = match self.waiting_longer_than_s.trim() {
            "" => None,
            s => Some(s.parse::<u64>().map_err(|_| {
                ApiError::bad_request("“waiting longer than” must be a whole number of seconds")
            })?),
        }
        .map(|s| s.saturating_mul(1000));
        Ok(move |d: &CheckpointDump| {
            (self.flow.is_empty() || self.flow == d.flow)
                && (self.state.is_empty() || self.state == d.state)
                && hospital.is_none_or(|h| h == d.hospital.is_some())
                && longer.is_none_or(|ms| d.waiting_for_ms > ms)
        })
    }
}

fn filters(q: Result<Query<Filters>, QueryRejection>) -> Result<Filters, ApiError> {
    q.map(|Query(f)| f)
        .map_err(|r| ApiError::bad_request(format!("bad filters: {}", r.body_text())))
}

async fn all_flows<T: Transport>(admin: &Shared<T>) -> Result<Vec<CheckpointDump>, ApiError> {
    admin
        .node
        .operator_scan(|view, now| view.dump(now))
        .await
        .map_err(node_error)
}

pub(super) async fn flows<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
    q: Result<Query<Filters>, QueryRejection>,
) -> PageResult {
    let f = filters(q)?;
    let dumps = all_flows(&admin).await?;
    let names: std::collections::BTreeSet<&str> = dumps.iter().map(|d| d.flow.as_str()).collect();
    let live = format!("/ui/live/flows?{}", f.query_string());
    let content = html! {
        form.filters method="get" action="/ui/" {
            label { "Flow "
                select name="flow" {
                    option value="" { "any" }
                    @for n in &names {
                        option value=(n) selected[*n == f.flow] { (n) }
                    }
                    @if !f.flow.is_empty() && !names.contains(f.flow.as_str()) {
                        option value=(f.flow) selected { (f.flow) }
                    }
                }
            }
            label { "State " input type="text" name="state" value=(f.state) placeholder="any"; }
            label { "Hospital "
                select name="hospital" {
                    option value="" selected[f.hospital.is_empty()] { "any" }
                    option value="yes" selected[f.hospital == "yes"] { "in the hospital" }
                    option value="no" selected[f.hospital == "no"] { "healthy" }
                }
            }
            label { "Waiting longer than "
                input type="number" min="0" name="waiting_longer_than_s" value=(f.waiting_longer_than_s) placeholder="0";
                " s"
            }
            button type="submit" { "Filter" }
            " " a href="/ui/" { "clear" }
        }
        div #flows-live data-live=(live) { (flows_fragment(&dumps, &f)?) }
    };
    Ok(html_response(layout(
        admin.node.party().name(),
        &session,
        Nav::Flows,
        "Flows in flight",
        content,
    )))
}

pub(super) async fn flows_live<T: Transport>(
    State(admin): State<Shared<T>>,
    q: Result<Query<Filters>, QueryRejection>,
) -> PageResult {
    let f = filters(q)?;
    let dumps = all_flows(&admin).await?;
    Ok(html_response(flows_fragment(&dumps, &f)?))
}

fn flows_fragment(dumps: &[CheckpointDump], f: &Filters) -> Result<Markup, ApiError> {
    let matches = f.matcher()?;
    let matching: Vec<&CheckpointDump> = dumps.iter().filter(|d| matches(d)).collect();
    let in_hospital = dumps.iter().filter(|d| d.hospital.is_some()).count();
    let mut by_state: BTreeMap<(&str, &str), (usize, usize)> = BTreeMap::new();
    for d in dumps {
        let e = by_state.entry((&d.flow, &d.state)).or_default();
        e.0 += 1;
        if d.hospital.is_some() {
            e.1 += 1;
        }
    }
    Ok(html! {
        div.counts {
            div.count { span.n #count-in-flight { (dumps.len()) } " in flight" }
            div.count.warn[in_hospital > 0] {
                a href="/ui/hospital" { span.n #count-hospital { (in_hospital) } " in the hospital" }
            }
            div.count { span.n #count-matching { (matching.len()) } " shown by the filters" }
        }
        @if !by_state.is_empty() {
            details.by-state open {
                summary { "By flow and state" }
                table {
                    thead { tr { th { "Flow" } th { "State" } th.num { "Flows" } th.num { "In the hospital" } } }
                    tbody {
                        @for ((flow, state), (n, sick)) in &by_state {
                            tr {
                                td { a href=(format!("/ui/?{}", Filters { flow: (*flow).to_owned(), ..Filters::default() }.query_string())) { (flow) } }
                                td { a href=(format!("/ui/?{}", Filters { flow: (*flow).to_owned(), state: (*state).to_owned(), ..Filters::default() }.query_string())) { code { (state) } } }
                                td.num { (n) }
                                td.num { (sick) }
                            }
                        }
                    }
                }
            }
        }
        @if matching.is_empty() {
            p.empty { "No flow in flight matches." }
        } @else {
            table.flows {
                thead { tr {
                    th { "Run" } th { "Flow" } th { "State" } th { "Waiting on" }
                    th.num { "For" } th { "Progress" } th { "Health" }
                } }
                tbody {
                    @for d in matching.iter().take(MAX_ROWS) {
                        tr data-run=(d.run_id) .sick[d.hospital.is_some()] {
                            td { a.run href=(format!("/ui/flows/{}", d.run_id)) { code { (d.run_id) } } }
                            td { (d.flow) }
                            td { code.state { (d.state) } }
                            td { (d.waiting_on) }
                            td.num { (duration(d.waiting_for_ms)) }
                            td { (d.progress.last().map_or("", String::as_str)) }
                            td {
                                @match &d.hospital {
                                    Some(h) => span.badge.bad title=(h.error) { "hospital" },
                                    None => span.badge.ok { "running" },
                                }
                            }
                        }
                    }
                }
            }
            @if matching.len() > MAX_ROWS {
                p.hint { "Showing the first " (MAX_ROWS) " of " (matching.len()) "; narrow the filters to see the others." }
            }
        }
    })
}

/// A duration in milliseconds, the way a person reads it.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

// ---------------------------------------------------------------- one flow

pub(super) async fn flow<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
    Path(run): Path<String>,
) -> PageResult {
    let run_id = parse_run(&run)?;
    let fragment = flow_fragment(&admin, &session, run_id).await?;
    let content = html! {
        div #flow-live data-live=(format!("/ui/live/flows/{run_id}")) { (fragment) }
    };
    Ok(html_response(layout(
        admin.node.party().name(),
        &session,
        Nav::Flows,
        &format!("Flow {run_id}"),
        content,
    )))
}

pub(super) async fn flow_live<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
    Path(run): Path<String>,
) -> PageResult {
    let run_id = parse_run(&run)?;
    Ok(html_response(
        flow_fragment(&admin, &session, run_id).await?,
    ))
}

async fn flow_fragment<T: Transport>(
    admin: &Shared<T>,
    session: &Session,
    run: crate::RunId,
) -> Result<Markup, ApiError> {
    if let Some((d, fields)) = admin.show(run).await? {
        let mut counterparties: Vec<&str> =
            d.sessions.iter().map(|s| s.counterparty.as_str()).collect();
        counterparties.sort_unstable();
        counterparties.dedup();
        let fields = pretty(&fields);
        let graph = graph_section(admin, &d.flow, &d.state).await?;
        return Ok(html! {
            section.summary {
                dl {
                    dt { "Flow" } dd.flow-name { (d.flow) }
                    dt { "State" } dd { code.state.current #current-state { (d.state) } }
                    dt { "Waiting on" } dd { (d.waiting_on) }
                    dt { "Waiting for" } dd { (duration(d.waiting_for_ms)) }
                    dt { "Status" } dd #flow-status {
                        @if d.hospital.is_some() { span.badge.bad { "in the hospital" } }
                        @else { span.badge.ok { "running" } }
                    }
                }
            }
            @if let Some(h) = &d.hospital {
                section.hospital-record {
                    h2 { "In the hospital" }
                    p.error { (h.error) }
                    p { "Failed attempts: " (h.attempts) ". "
                        @match h.retry_at {
                            Some(t) => { "The node retries on its own in " (duration(t.0.saturating_sub(now().0))) "." },
                            None => { "It waits for an operator to retry or kill it." },
                        }
                    }
                    (actions(session, &d.run_id, "flow"))
                }
            }
            (graph)
            section.progress {
                h2 { "Progress" }
                @if d.progress.is_empty() { p.empty { "This flow reports no progress steps." } }
                @else {
                    ol.steps {
                        @for (i, step) in d.progress.iter().enumerate() {
                            li.current[i + 1 == d.progress.len()] { (step) }
                        }
                    }
                }
            }
            section.fields {
                h2 { "Stored fields" }
                pre #stored-fields { (fields) }
            }
            section.sessions {
                h2 { "Sessions" }
                @if d.sessions.is_empty() { p.empty { "No sessions." } }
                @else {
                    table {
                        thead { tr {
                            th { "Session" } th { "Counterparty" } th { "Opened by" } th { "Initiating flow" }
                            th.num { "Next send" } th.num { "Next receive" } th.num { "Buffered" } th { "Counterparty ended" }
                        } }
                        tbody {
                            @for s in &d.sessions {
                                tr {
                                    td { code { (s.id) } }
                                    td { (s.counterparty) }
                                    td { @if s.initiator { "this flow" } @else { "the counterparty" } }
                                    td { (s.initiating_flow) }
                                    td.num { (s.next_send) }
                                    td.num { (s.next_receive) }
                                    td.num { (s.buffered) }
                                    td { @if s.counterparty_ended { "yes" } @else { "no" } }
                                }
                            }
                        }
                    }
                }
            }
            section.counterparties {
                h2 { "Counterparties" }
                @if counterparties.is_empty() { p.empty { "None." } }
                @else {
                    ul {
                        @for c in &counterparties {
                            li { (c) " — link " (link_badge(admin.link_of(c).unwrap_or("not in the network map"))) }
                        }
                    }
                }
            }
        });
    }
    match admin.outcome(run).await? {
        Some(outcome) => {
            let ok = outcome.get("outcome").and_then(Value::as_str) == Some("ok");
            let shown = if ok {
                pretty(outcome.get("output").unwrap_or(&Value::Null))
            } else {
                outcome
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            let flow = outcome
                .get("flow")
                .and_then(Value::as_str)
                .unwrap_or("(not known here)");
            let graph = graph_section(admin, flow, "Done").await?;
            Ok(html! {
                section.summary {
                    dl {
                        dt { "Flow" } dd.flow-name { (flow) }
                        dt { "Status" } dd #flow-status {
                            @if ok { span.badge.ok { "finished" } } @else { span.badge.bad { "failed" } }
                        }
                    }
                }
                section {
                    h2 { @if ok { "Result" } @else { "Error" } }
                    pre #flow-result { (shown) }
                }
                (graph)
            })
        }
        None => Err(no_such_flow(run)),
    }
}

/// The flow's state graph drawn by the node (`StateGraph::to_svg`), with
/// `state` highlighted. The SVG is the node's own output: state names and
/// labels come from the flow's code (the macro), and the drawing escapes
/// them as XML text, so it is embedded as it is.
async fn graph_section<T: Transport>(
    admin: &Shared<T>,
    flow: &str,
    state: &str,
) -> Result<Markup, ApiError> {
    let (wanted, state) = (flow.to_owned(), state.to_owned());
    let svg = admin
        .node
        .operator_scan(move |view, _| {
            Ok(view
                .state_graph(&wanted)
                .map(|g| (!g.states.is_empty()).then(|| g.to_svg(Some(&state)))))
        })
        .await
        .map_err(node_error)?;
    Ok(html! {
        section.graph {
            h2 { "State machine" }
            @match svg {
                Some(Some(svg)) => { div #state-graph { (PreEscaped(svg)) } },
                Some(None) => { p.empty { "A hand-written flow: the node has no state graph for it." } },
                None => { p.empty { "This flow's type is not registered on this node." } },
            }
        }
    })
}

/// JSON for people, cut at [`MAX_FIELDS_CHARS`].
fn pretty(v: &Value) -> String {
    let mut text =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("(cannot show: {e})"));
    if text.len() > MAX_FIELDS_CHARS {
        let mut cut = MAX_FIELDS_CHARS;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n… (cut; `flowctl flows show` prints it all)");
    }
    text
}

fn link_badge(link: &str) -> Markup {
    html! {
        @match link {
            "up" => span.badge.ok { (link) },
            "down" => span.badge.bad { (link) },
            _ => span.badge { (link) },
        }
    }
}

/// Retry and kill buttons for an `operate` user; nothing for the others.
fn actions(session: &Session, run: &str, back: &str) -> Markup {
    html! {
        @if session.caller.role >= Role::Operate {
            span.actions {
                form.inline method="post" action=(format!("/ui/flows/{run}/retry")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="back" value=(back);
                    button.retry type="submit" data-run=(run) { "Retry" }
                }
                form.inline method="post" action=(format!("/ui/flows/{run}/kill"))
                    data-confirm=(format!("Kill flow {run}? Its counterparties are told, and it cannot be undone.")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="back" value=(back);
                    button.kill type="submit" data-run=(run) { "Kill" }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- operate

#[derive(Deserialize)]
pub(super) struct ActionForm {
    csrf: String,
    /// Where to go afterwards: `hospital`, or the flow's page.
    #[serde(default)]
    back: String,
}

/// Checks the form, the caller's role and the run id of an operator action.
fn operate_check(
    session: &Session,
    form: Result<Form<ActionForm>, FormRejection>,
    run: &str,
    action: &str,
) -> Result<(crate::RunId, ActionForm), PageError> {
    let Form(form) = form.map_err(form_error)?;
    check_csrf(session, &form.csrf)?;
    session.caller.require(Role::Operate, action)?;
    Ok((parse_run(run)?, form))
}

fn back_to(form: &ActionForm, run: crate::RunId) -> Redirect {
    if form.back == "hospital" {
        Redirect::to("/ui/hospital")
    } else {
        Redirect::to(&format!("/ui/flows/{run}"))
    }
}

pub(super) async fn retry<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
    Path(run): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    let (run, form) = operate_check(&session, form, &run, "retrying a flow")?;
    match admin.node.retry_flow(run).await {
        Ok(()) => {}
        Err(NodeError::NotInHospital(_)) if admin.show(run).await?.is_none() => {
            return Err(node_error(NodeError::UnknownRun(run)).into());
        }
        Err(e) => return Err(node_error(e).into()),
    }
    info!(user = %session.caller.name, %run, via = "dashboard", "operator action: retry");
    Ok(back_to(&form, run).into_response())
}

pub(super) async fn kill<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
    Path(run): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    let (run, form) = operate_check(&session, form, &run, "killing a flow")?;
    admin.node.kill_flow(run).await.map_err(node_error)?;
    warn!(user = %session.caller.name, %run, via = "dashboard", "operator action: kill");
    Ok(back_to(&form, run).into_response())
}

// ---------------------------------------------------------------- hospital

pub(super) async fn hospital<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let fragment = hospital_fragment(&admin, &session).await?;
    let content = html! {
        p.hint {
            "Flows that failed and wait here, each at its last checkpoint. "
            @if session.caller.role >= Role::Operate {
                "Retry runs one again from that checkpoint (fix the cause first); kill ends it and tells its counterparties."
            } @else {
                "Your role (" (session.caller.role.name()) ") may look; retry and kill need the operate role."
            }
        }
        div #hospital-live data-live="/ui/live/hospital" { (fragment) }
    };
    Ok(html_response(layout(
        admin.node.party().name(),
        &session,
        Nav::Hospital,
        "Hospital",
        content,
    )))
}

pub(super) async fn hospital_live<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
) -> PageResult {
    Ok(html_response(hospital_fragment(&admin, &session).await?))
}

async fn hospital_fragment<T: Transport>(
    admin: &Shared<T>,
    session: &Session,
) -> Result<Markup, ApiError> {
    let dumps = all_flows(admin).await?;
    let sick: Vec<&CheckpointDump> = dumps.iter().filter(|d| d.hospital.is_some()).collect();
    let now = now().0;
    Ok(html! {
        div.counts { div.count.warn[!sick.is_empty()] { span.n #count-hospital { (sick.len()) } " in the hospital" } }
        @if sick.is_empty() {
            p.empty { "The hospital is empty." }
        } @else {
            table.flows.hospital {
                thead { tr {
                    th { "Run" } th { "Flow" } th { "State" } th { "Error" } th.num { "Attempts" }
                    th { "Next automatic retry" }
                    @if session.caller.role >= Role::Operate { th { "Actions" } }
                } }
                tbody {
                    @for d in &sick {
                        @if let Some(h) = &d.hospital {
                            tr data-run=(d.run_id) {
                                td { a.run href=(format!("/ui/flows/{}", d.run_id)) { code { (d.run_id) } } }
                                td { (d.flow) }
                                td { code.state { (d.state) } }
                                td.error { (h.error) }
                                td.num { (h.attempts) }
                                td { @match h.retry_at {
                                    Some(t) => { "in " (duration(t.0.saturating_sub(now))) },
                                    None => { "none: waits for an operator" },
                                } }
                                @if session.caller.role >= Role::Operate {
                                    td { (actions(session, &d.run_id, "hospital")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

// ---------------------------------------------------------------- node

pub(super) async fn node<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let status = admin.status().await?;
    let content = html! {
        div #node-live data-live="/ui/live/node" { (node_fragment(&status, &session)) }
    };
    Ok(html_response(layout(
        admin.node.party().name(),
        &session,
        Nav::Node,
        "Node and peers",
        content,
    )))
}

pub(super) async fn node_live<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let status = admin.status().await?;
    Ok(html_response(node_fragment(&status, &session)))
}

fn node_fragment(s: &NodeStatus, session: &Session) -> Markup {
    html! {
        div.counts {
            div.count { a href="/ui/" { span.n #count-in-flight { (s.flows_in_flight) } " in flight" } }
            div.count.warn[s.hospital > 0] { a href="/ui/hospital" { span.n #count-hospital { (s.hospital) } " in the hospital" } }
            div.count { span.n { (s.outbox) } " messages to send" }
            div.count { span.n { (s.commits) } " commits since start" }
            div.count { span.n { (s.batches) } " batches committed" }
        }
        section {
            h2 { "This node" }
            dl {
                dt { "Name" } dd { (s.name) }
                dt { "Public key" } dd { code.key { (s.key) } }
                dt { "Listens on" } dd { code { (s.endpoint) } }
                dt { "New flows" } dd #draining {
                    @if s.draining { span.badge.bad { "draining: refused" } } @else { span.badge.ok { "accepted" } }
                }
            }
            @if session.caller.role >= Role::Operate {
                form.inline method="post" action="/ui/node/drain" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    @if s.draining {
                        input type="hidden" name="draining" value="off";
                        button type="submit" { "Stop draining" }
                    } @else {
                        input type="hidden" name="draining" value="on";
                        button type="submit" { "Drain (refuse new flows)" }
                    }
                }
            }
        }
        section {
            h2 { "Peers" }
            @if s.peers.is_empty() { p.empty { "The network map lists no other party." } }
            @else {
                table.peers {
                    thead { tr { th { "Name" } th { "Link" } th { "Public key" } } }
                    tbody {
                        @for p in &s.peers {
                            tr { td { (p.name) } td { (link_badge(p.link)) } td { code.key { (p.key) } } }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Startable flows" }
            @if s.startable.is_empty() { p.empty { "None: this node starts flows from its own code only." } }
            @else { ul { @for n in &s.startable { li { code { (n) } } } } }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct DrainForm {
    csrf: String,
    /// `on` or `off`.
    draining: String,
}

pub(super) async fn drain<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(session): Extension<Session>,
    form: Result<Form<DrainForm>, FormRejection>,
) -> PageResult {
    let Form(form) = form.map_err(form_error)?;
    check_csrf(&session, &form.csrf)?;
    session.caller.require(Role::Operate, "drain on/off")?;
    let draining = match form.draining.as_str() {
        "on" => true,
        "off" => false,
        _ => return Err(ApiError::bad_request("draining must be `on` or `off`").into()),
    };
    admin
        .node
        .set_draining(draining)
        .await
        .map_err(node_error)?;
    info!(user = %session.caller.name, draining, via = "dashboard", "operator action: drain {}", if draining { "on" } else { "off" });
    Ok(Redirect::to("/ui/node").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(duration(250), "250 ms");
        assert_eq!(duration(5_000), "5 s");
        assert_eq!(duration(125_000), "2 min 5 s");
        assert_eq!(duration(3_660_000), "1 h 1 min");
        assert_eq!(duration(90_000_000), "1 d 1 h");
    }

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        let v = Value::String("é".repeat(MAX_FIELDS_CHARS));
        let shown = pretty(&v);
        assert!(shown.len() < MAX_FIELDS_CHARS + 100);
        assert!(shown.ends_with("prints it all)"));
    }

    #[test]
    fn filters_round_trip_through_the_query_string() {
        let f = Filters {
            flow: "a::b".into(),
            state: "S&x=1".into(),
            ..Filters::default()
        };
        let q = f.query_string();
        assert_eq!(q, "flow=a%3A%3Ab&state=S%26x%3D1");
        let back: Filters = serde_urlencoded::from_str(&q).unwrap();
        assert_eq!((back.flow, back.state), (f.flow, f.state));
        let bad = Filters {
            hospital: "maybe".into(),
            ..Filters::default()
        };
        assert!(bad.matcher().is_err());
    }
}
