//! The admin API's routes: authentication middleware, then one handler per
//! operation. Each handler checks its caller's role and its input before it
//! touches the node, so a refused request changes nothing.

use super::auth::{Caller, Role, Users};
use super::dashboard::{self, Sessions};
use super::metrics::NodeMetrics;
use super::startable::Startable;
use super::streams;
use super::{AdminError, AdminServer, AdminSettings, ApiError, Json};
use crate::handle::RawResult;
use crate::node::{CheckpointDump, NodeError};
use crate::runner::Node;
use crate::transport::{Transport, TransportEvent};
use crate::{Party, PublicKey, RunId, Timestamp};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// The longest a result request waits (`wait_s`).
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The most flows one list answer holds.
const MAX_LIST: usize = 100_000;
/// The default list limit.
const DEFAULT_LIST: usize = 1000;
/// Longest accepted client id.
const MAX_CLIENT_ID: usize = 256;
/// Runs remembered by flow name (to show results typed): beyond this the
/// map is cleared, and older results are shown untyped.
const MAX_REMEMBERED_RUNS: usize = 100_000;

/// The state every handler shares (the API's and the dashboard's).
pub(super) struct Admin<T: Transport> {
    pub(super) node: Node<T>,
    pub(super) users: Users,
    startable: Startable,
    metrics: NodeMetrics,
    /// The peers the node knows (its network map), for the status.
    peers: Vec<Party>,
    /// Link state per peer, from the transport's events.
    links: Mutex<HashMap<PublicKey, bool>>,
    /// Largest request body accepted.
    max_body: usize,
    /// Flow names of runs seen (started here, or shown), so their results
    /// can be decoded as their own output type.
    run_names: Mutex<HashMap<RunId, String>>,
    /// The dashboard's logged-in browsers.
    pub(super) sessions: Sessions,
    /// Turns `true` when the server stops: open event streams end then, so
    /// that they do not hold up the node's shutdown.
    pub(super) stopped: watch::Receiver<bool>,
}

pub(super) type Shared<T> = Arc<Admin<T>>;

/// A running admin server, for [`Node`] to stop.
pub(crate) struct Running {
    pub(crate) server: AdminServer,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// Binds the admin API and serves it on the current runtime until `stop`.
pub(crate) async fn serve<T: Transport>(
    node: Node<T>,
    settings: AdminSettings,
    startable: Startable,
    metrics: NodeMetrics,
    peers: Vec<Party>,
    database: &FsPath,
) -> Result<Running, AdminError> {
    let users = Users::load(settings.token_file.as_deref(), &settings.users)?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|source| AdminError::Bind {
            address: settings.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AdminError::Bind {
        address: settings.listen.clone(),
        source,
    })?;
    let server = AdminServer { addr };
    let url_file = super::url_file(database);
    if let Err(e) = std::fs::write(&url_file, format!("{}\n", server.url())) {
        warn!(path = %url_file.display(), error = %e, "cannot write the admin URL file");
    }
    let (stop, stopped) = watch::channel(false);
    let admin = Arc::new(Admin {
        node,
        users,
        startable,
        metrics,
        peers,
        links: Mutex::default(),
        max_body: settings.max_body_bytes,
        run_names: Mutex::default(),
        sessions: Sessions::default(),
        stopped: stopped.clone(),
    });
    tokio::spawn(watch_links(admin.clone(), stopped.clone()));
    tokio::spawn(upkeep(admin.metrics.clone(), stopped.clone()));
    let app = router(admin, settings.max_body_bytes);
    let mut until = stopped;
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = until.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(error = %e, "the admin API stopped");
        }
    });
    info!(url = %server.url(), "admin API listening");
    Ok(Running { server, stop, task })
}

fn router<T: Transport>(admin: Shared<T>, max_body: usize) -> Router {
    let api = Router::new()
        .route("/health", get(health::<T>))
        .route("/metrics", get(metrics_text::<T>))
        .route("/api/v1/node", get(node_status::<T>))
        .route("/api/v1/node/drain", post(drain::<T>))
        .route("/api/v1/startable", get(startable::<T>))
        .route("/api/v1/flows", get(list::<T>).post(start::<T>))
        .route("/api/v1/flows/batch", post(start_batch::<T>))
        .route("/api/v1/flows/results", post(streams::results::<T>))
        .route("/api/v1/events", get(streams::events::<T>))
        .route("/api/v1/flows/{run}", get(show::<T>))
        .route("/api/v1/flows/{run}/result", get(result::<T>))
        .route("/api/v1/flows/{run}/progress", get(progress::<T>))
        .route("/api/v1/flows/{run}/kill", post(kill::<T>))
        .route("/api/v1/flows/{run}/retry", post(retry::<T>))
        .route("/api/v1/client-ids/{id}", get(by_client_id::<T>))
        .route("/api/v1/dump", get(dump::<T>))
        .route("/api/v1/flow-types", get(flow_types::<T>))
        .route("/api/v1/flow-types/{name}/graph", get(flow_graph::<T>))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(
            admin.clone(),
            authenticate::<T>,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(admin.clone());
    // The dashboard's routes authenticate with their own session cookie;
    // everything else falls through to the API (and its bearer tokens).
    dashboard::router(admin)
        .layer(DefaultBodyLimit::max(max_body))
        .merge(api)
}

/// Follows the transport's link events into the status and the metrics.
async fn watch_links<T: Transport>(admin: Shared<T>, mut stopped: watch::Receiver<bool>) {
    let mut events = admin.node.transport().link_events();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let (peer, up) = match event {
            Ok(TransportEvent::Connected { peer }) => (peer, true),
            Ok(TransportEvent::Disconnected { peer, .. }) => (peer, false),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        admin
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, up);
        admin
            .metrics
            .set_link(&admin.node.transport().peer_name(&peer), up);
    }
}

/// Keeps the histograms' memory bounded between scrapes.
async fn upkeep(metrics: NodeMetrics, mut stopped: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = every.tick() => metrics.upkeep(),
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

async fn authenticate<T: Transport>(
    State(admin): State<Shared<T>>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("<not text>"));
    // A body announced as too large is refused before a byte of it is read
    // (a body without a length is cut off at the limit as it is read).
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced
        && len > admin.max_body as u64
    {
        return ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the request body of {len} bytes is over the length limit of {} bytes",
                admin.max_body
            ),
        }
        .into_response();
    }
    match admin.users.authenticate(header) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            warn!(path = %request.uri().path(), error = %e.message, "admin API request refused");
            e.into_response()
        }
    }
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}; the API is under /api/v1/ (see docs/operations.md)",
        request.method(),
        request.uri().path()
    ))
}

pub(super) type ApiResult = Result<Response, ApiError>;

pub(super) fn node_error(e: NodeError) -> ApiError {
    match e {
        NodeError::UnknownRun(run) => ApiError::not_found(format!("no flow {run} on this node")),
        NodeError::NotInHospital(_) => ApiError::conflict(e.to_string()),
        NodeError::Start(_) => ApiError::conflict(e.to_string()),
        NodeError::Store(_) | NodeError::IncompatibleStore(_) => {
            ApiError::unavailable(e.to_string())
        }
    }
}

pub(super) fn parse_run(text: &str) -> Result<RunId, ApiError> {
    if text.is_empty() || text.len() > 16 {
        return Err(ApiError::bad_request(format!(
            "`{text:.40}` is not a run id (up to 16 hex digits)"
        )));
    }
    u64::from_str_radix(text, 16).map(RunId).map_err(|_| {
        ApiError::bad_request(format!("`{text}` is not a run id (up to 16 hex digits)"))
    })
}

/// How long a result request may wait (`wait_s`, in seconds, capped at
/// [`MAX_WAIT`]; none: not at all), for every route that waits for results.
pub(super) fn parse_wait(wait_s: Option<f64>) -> Result<Duration, ApiError> {
    match wait_s {
        None => Ok(Duration::ZERO),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s).min(MAX_WAIT)),
        Some(_) => Err(ApiError::bad_request(
            "wait_s must be a number of seconds >= 0",
        )),
    }
}

/// The answer for a run the node has neither a checkpoint nor a kept
/// result of, the same from the API and the dashboard.
pub(super) fn no_such_flow(run: RunId) -> ApiError {
    ApiError::not_found(format!(
        "no flow {run} on this node (never started, or finished without a kept result)"
    ))
}

pub(super) fn body_json<B: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<B, ApiError> {
    let body = body.map_err(|r| ApiError {
        status: r.status(),
        message: format!("cannot read the request body: {}", r.body_text()),
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not the expected JSON: {e}"))
    })
}

pub(super) fn query<Q>(q: Result<Query<Q>, QueryRejection>) -> Result<Q, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|r| ApiError::bad_request(format!("bad query parameters: {}", r.body_text())))
}

pub(super) fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

impl<T: Transport> Admin<T> {
    pub(super) fn remember(&self, run: RunId, flow: &str) {
        let mut names = self
            .run_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if names.len() >= MAX_REMEMBERED_RUNS {
            names.clear();
        }
        names.insert(run, flow.to_owned());
    }

    fn remembered(&self, run: RunId) -> Option<String> {
        self.run_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&run)
            .cloned()
    }

    /// The flow's checkpoint as shown, and its fields.
    pub(super) async fn show(
        &self,
        run: RunId,
    ) -> Result<Option<(CheckpointDump, Value)>, ApiError> {
        let shown = self
            .node
            .operator_scan(move |view, now| view.show(now, run))
            .await
            .map_err(node_error)?;
        Ok(shown.map(|(dump, fields)| {
            if !dump.flow.starts_with('<') {
                self.remember(run, &dump.flow);
            }
            let fields = fields.unwrap_or_else(|why| json!({ "unavailable": why }));
            (dump, fields)
        }))
    }

    /// The kept outcome of `run`, if it finished.
    pub(super) async fn outcome(&self, run: RunId) -> Result<Option<Value>, ApiError> {
        let result = self
            .node
            .call(move |core, _| (core.result(run), None))
            .await
            .map_err(node_error)?
            .map_err(node_error)?;
        match result {
            None => Ok(None),
            Some(r) => Ok(Some(self.outcome_json(run, r).await)),
        }
    }

    pub(super) async fn outcome_json(
        &self,
        run: RunId,
        result: Result<Vec<u8>, crate::FlowError>,
    ) -> Value {
        self.outcomes_json(vec![(run, result)])
            .await
            .pop()
            .unwrap_or(Value::Null)
    }

    /// Finished runs' outcomes as the API shows them, in the order given.
    /// Outputs are decoded as their flows' own types (one read of the
    /// registry on a blocking thread for all of them) where the flow of the
    /// run is known.
    pub(super) async fn outcomes_json(&self, outcomes: Vec<(RunId, RawResult)>) -> Vec<Value> {
        let named: Vec<(RunId, Option<String>, RawResult)> = outcomes
            .into_iter()
            .map(|(run, result)| (run, self.remembered(run), result))
            .collect();
        let wanted: Vec<(usize, String, Vec<u8>)> = named
            .iter()
            .enumerate()
            .filter_map(|(i, (_, flow, result))| {
                Some((i, flow.clone()?, result.as_ref().ok()?.clone()))
            })
            .collect();
        let mut typed: HashMap<usize, Value> = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.node
                .operator_scan(move |view, _| {
                    Ok(wanted
                        .into_iter()
                        .filter_map(|(i, name, bytes)| {
                            Some((i, view.output_json(&name, &bytes)?.ok()?))
                        })
                        .collect())
                })
                .await
                .unwrap_or_default()
        };
        named
            .into_iter()
            .enumerate()
            .map(|(i, (run, flow, result))| render_outcome(run, flow, result, typed.remove(&i)))
            .collect()
    }
}

/// A finished run's outcome as the API shows it; `typed` is its output
/// decoded as its flow's own type, if that was possible.
fn render_outcome(
    run: RunId,
    flow: Option<String>,
    result: Result<Vec<u8>, crate::FlowError>,
    typed: Option<Value>,
) -> Value {
    match result {
        Err(e) => json!({
            "run_id": run.to_string(), "finished": true, "outcome": "error",
            "flow": flow, "error": e.to_string(),
        }),
        Ok(bytes) => {
            // Untyped: MessagePack read as self-describing data (structs
            // show as arrays of their fields).
            let output = typed
                .or_else(|| rmp_serde::from_slice::<Value>(&bytes).ok())
                .unwrap_or_else(|| json!({ "msgpack_hex": hex::encode(&bytes) }));
            json!({
                "run_id": run.to_string(), "finished": true, "outcome": "ok",
                "flow": flow, "output": output,
            })
        }
    }
}

fn dump_json(dump: &CheckpointDump, now: Timestamp) -> Value {
    json!({
        "run_id": dump.run_id,
        "flow": dump.flow,
        "state": dump.state,
        "waiting_on": dump.waiting_on,
        "waiting_since_ms": now.0.saturating_sub(dump.waiting_for_ms),
        "waiting_for_ms": dump.waiting_for_ms,
        "progress": dump.progress,
        "sessions": dump.sessions,
        "hospital": dump.hospital.as_ref().map(|h| json!({
            "error": h.error, "attempts": h.attempts, "retry_at_ms": h.retry_at.map(|t| t.0),
        })),
    })
}

async fn health<T: Transport>(State(admin): State<Shared<T>>) -> ApiResult {
    match admin
        .node
        .call(|core, _| (core.flows_in_flight(), None))
        .await
    {
        Ok(Ok(_)) => {
            Ok(Json(json!({ "status": "ok", "node": admin.node.party().name() })).into_response())
        }
        Ok(Err(e)) | Err(e) => Err(ApiError::unavailable(format!(
            "the node is not healthy: {e}"
        ))),
    }
}

async fn metrics_text<T: Transport>(State(admin): State<Shared<T>>) -> ApiResult {
    let (in_flight, hospital, outbox, draining) = admin
        .node
        .call(|core, _| {
            let r = (|| {
                Ok::<_, NodeError>((
                    core.flows_in_flight()?,
                    core.hospital()?.len(),
                    core.outbox_len()?,
                    core.is_draining(),
                ))
            })();
            (r, None)
        })
        .await
        .map_err(node_error)?
        .map_err(node_error)?;
    admin
        .metrics
        .set_node_gauges(in_flight, hospital, outbox, draining);
    if admin.metrics.flows_by_state_due() {
        let counts = admin
            .node
            .operator_scan(|view, now| {
                let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
                for d in view.dump(now)? {
                    *counts.entry((d.flow, d.state)).or_default() += 1;
                }
                Ok(counts)
            })
            .await
            .map_err(node_error)?;
        admin.metrics.set_flows_by_state(counts);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        admin.metrics.render(),
    )
        .into_response())
}

/// The node's status, as `GET /api/v1/node` answers it and the dashboard
/// shows it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct NodeStatus {
    pub(super) name: String,
    pub(super) key: String,
    pub(super) endpoint: String,
    pub(super) draining: bool,
    pub(super) flows_in_flight: u64,
    pub(super) hospital: usize,
    pub(super) outbox: u64,
    /// Durable write transactions since the node started.
    pub(super) commits: u64,
    /// Batches committed since the node started (with the commit
    /// pipeline, several may share one transaction).
    pub(super) batches: u64,
    pub(super) peers: Vec<PeerStatus>,
    pub(super) startable: Vec<String>,
}

/// One peer of the network map and its link.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PeerStatus {
    pub(super) name: String,
    pub(super) key: String,
    /// `up`, `down` or `not connected yet`.
    pub(super) link: &'static str,
}

impl<T: Transport> Admin<T> {
    /// The node's counts, its peers and their links.
    pub(super) async fn status(&self) -> Result<NodeStatus, ApiError> {
        let node = self.node.clone();
        let (flows_in_flight, hospital, outbox, draining, (commits, batches)) = self
            .node
            .call(move |core, _| {
                let r = (|| {
                    Ok::<_, NodeError>((
                        core.flows_in_flight()?,
                        core.hospital()?.len(),
                        core.outbox_len()?,
                        core.is_draining(),
                        // On the driver, with nothing queued: the two agree.
                        (node.transactions_for(core.commits()), core.commits()),
                    ))
                })();
                (r, None)
            })
            .await
            .map_err(node_error)?
            .map_err(node_error)?;
        let links = self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let peers = self
            .peers
            .iter()
            .map(|p| PeerStatus {
                name: p.name().to_owned(),
                key: hex::encode(p.key().0),
                link: link_word(links.get(p.key()).copied()),
            })
            .collect();
        let party = self.node.party();
        Ok(NodeStatus {
            name: party.name().to_owned(),
            key: hex::encode(party.key().0),
            endpoint: self.node.transport().endpoint(),
            draining,
            flows_in_flight,
            hospital,
            outbox,
            commits,
            batches,
            peers,
            startable: self.startable.names().map(str::to_owned).collect(),
        })
    }

    /// The link to the peer called `name`: `up`, `down`, `not connected
    /// yet`, or `None` if no peer of the map has that name.
    pub(super) fn link_of(&self, name: &str) -> Option<&'static str> {
        let peer = self.peers.iter().find(|p| p.name() == name)?;
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        Some(link_word(links.get(peer.key()).copied()))
    }
}

fn link_word(up: Option<bool>) -> &'static str {
    match up {
        Some(true) => "up",
        Some(false) => "down",
        None => "not connected yet",
    }
}

async fn node_status<T: Transport>(State(admin): State<Shared<T>>) -> ApiResult {
    Ok(Json(admin.status().await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    draining: bool,
}

async fn drain<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require(Role::Operate, "drain on/off")?;
    let DrainRequest { draining } = body_json(body)?;
    admin
        .node
        .set_draining(draining)
        .await
        .map_err(node_error)?;
    info!(user = %caller.name, draining, "operator action: drain {}", if draining { "on" } else { "off" });
    Ok(Json(json!({ "draining": draining })).into_response())
}

async fn startable<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    let names: Vec<&str> = admin
        .startable
        .names()
        .filter(|n| caller.may_start(n))
        .collect();
    Ok(Json(json!({ "startable": names })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    flow: String,
    #[serde(default)]
    args: Value,
    client_id: Option<String>,
}

/// Checks one start request (caller's allow list, client id, startable
/// name, arguments) and builds its flow; nothing is written.
fn prepare<T: Transport>(
    admin: &Admin<T>,
    caller: &Caller,
    request: StartRequest,
) -> Result<(crate::registry::NewFlow, Option<String>, String), ApiError> {
    let StartRequest {
        flow,
        args,
        client_id,
    } = request;
    if let Some(id) = &client_id
        && (id.is_empty() || id.len() > MAX_CLIENT_ID)
    {
        return Err(ApiError::bad_request(format!(
            "client_id must be 1 to {MAX_CLIENT_ID} bytes"
        )));
    }
    if !caller.may_start(&flow) {
        return Err(ApiError::forbidden(format!(
            "user `{}` may not start `{flow:.200}`",
            caller.name
        )));
    }
    match admin.startable.build(&flow, args) {
        None => Err(ApiError::not_found(format!(
            "no flow `{flow:.200}` is startable on this node (startable: {})",
            admin.startable.names().collect::<Vec<_>>().join(", ")
        ))),
        Some(Err(why)) => Err(ApiError::bad_request(why)),
        Some(Ok(new)) => Ok((new, client_id, flow)),
    }
}

fn draining_conflict() -> ApiError {
    ApiError::conflict(
        "the node is draining: it takes no new flows until an operator stops draining",
    )
}

async fn start<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require(Role::Start, "starting a flow")?;
    let (new, client_id, flow) = prepare(&admin, &caller, body_json(body)?)?;
    let id = client_id.clone();
    // Checked in the same driver job as the start: a draining node refuses
    // the request and records nothing (no failed run is left behind).
    let run = admin
        .node
        .call(move |core, now| {
            if core.is_draining() {
                return (Err(None), None);
            }
            match core.start(now, new, id) {
                Ok((run, out)) => (Ok(run), Some(out)),
                Err(e) => (Err(Some(e)), None),
            }
        })
        .await
        .map_err(node_error)?
        .map_err(|e| e.map_or_else(draining_conflict, node_error))?;
    admin.remember(run, &flow);
    info!(user = %caller.name, %flow, %run, client_id = client_id.as_deref().unwrap_or(""), "client action: start");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "run_id": run.to_string(), "flow": flow, "client_id": client_id })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchStartRequest {
    flows: Vec<StartRequest>,
}

/// The most flows one batch start takes.
const MAX_BATCH: usize = 10_000;

/// Starts many flows in ONE commit (a start on its own costs a commit, two
/// fsyncs): all are checked first, and if any is refused none starts.
async fn start_batch<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require(Role::Start, "starting flows")?;
    let BatchStartRequest { flows } = body_json(body)?;
    if flows.is_empty() || flows.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH} flows"
        )));
    }
    let mut prepared = Vec::with_capacity(flows.len());
    let mut names = Vec::with_capacity(flows.len());
    for (i, request) in flows.into_iter().enumerate() {
        let (new, client_id, flow) = prepare(&admin, &caller, request).map_err(|e| ApiError {
            message: format!("flows[{i}]: {}", e.message),
            ..e
        })?;
        names.push((flow, client_id.clone()));
        prepared.push((new, client_id));
    }
    let runs = admin
        .node
        .call(move |core, now| {
            if core.is_draining() {
                return (Err(None), None);
            }
            match core.start_many(now, prepared) {
                Ok((runs, out)) => (Ok(runs), Some(out)),
                Err(e) => (Err(Some(e)), None),
            }
        })
        .await
        .map_err(node_error)?
        .map_err(|e| e.map_or_else(draining_conflict, node_error))?;
    let mut answer = Vec::with_capacity(runs.len());
    for (run, (flow, client_id)) in runs.into_iter().zip(names) {
        admin.remember(run, &flow);
        answer.push(json!({ "run_id": run.to_string(), "flow": flow, "client_id": client_id }));
    }
    info!(user = %caller.name, flows = answer.len(), "client action: start a batch");
    Ok((StatusCode::CREATED, Json(json!({ "runs": answer }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    flow: Option<String>,
    state: Option<String>,
    hospital: Option<bool>,
    waiting_longer_than_s: Option<u64>,
    limit: Option<usize>,
}

async fn list<T: Transport>(
    State(admin): State<Shared<T>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIST);
    if limit == 0 || limit > MAX_LIST {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_LIST}"
        )));
    }
    let (dumps, now) = admin
        .node
        .operator_scan(|view, now| Ok((view.dump(now)?, now)))
        .await
        .map_err(node_error)?;
    let longer = q.waiting_longer_than_s.map(|s| s.saturating_mul(1000));
    let matching: Vec<&CheckpointDump> = dumps
        .iter()
        .filter(|d| q.flow.as_ref().is_none_or(|f| *f == d.flow))
        .filter(|d| q.state.as_ref().is_none_or(|s| *s == d.state))
        .filter(|d| q.hospital.is_none_or(|h| h == d.hospital.is_some()))
        .filter(|d| longer.is_none_or(|ms| d.waiting_for_ms > ms))
        .collect();
    let total = matching.len();
    let flows: Vec<Value> = matching
        .into_iter()
        .take(limit)
        .map(|d| dump_json(d, now))
        .collect();
    Ok(Json(json!({ "flows": flows, "total": total, "truncated": total > limit })).into_response())
}

async fn show<T: Transport>(State(admin): State<Shared<T>>, Path(run): Path<String>) -> ApiResult {
    let run = parse_run(&run)?;
    if let Some((dump, fields)) = admin.show(run).await? {
        let mut shown = dump_json(&dump, now());
        shown["finished"] = json!(false);
        shown["fields"] = fields;
        return Ok(Json(shown).into_response());
    }
    match admin.outcome(run).await? {
        Some(outcome) => Ok(Json(outcome).into_response()),
        None => Err(no_such_flow(run)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultQuery {
    wait_s: Option<f64>,
}

async fn result<T: Transport>(
    State(admin): State<Shared<T>>,
    Path(run): Path<String>,
    q: Result<Query<ResultQuery>, QueryRejection>,
) -> ApiResult {
    let run = parse_run(&run)?;
    let q = query(q)?;
    let wait = parse_wait(q.wait_s)?;
    // The checkpoint first, then the result: a flow finishing in between
    // is found by the second read.
    let running = admin.show(run).await?.is_some();
    if let Some(outcome) = admin.outcome(run).await? {
        return Ok(Json(outcome).into_response());
    }
    if !running {
        return Err(no_such_flow(run));
    }
    if !wait.is_zero()
        && let Ok(r) = tokio::time::timeout(wait, admin.node.wait_raw(run)).await
    {
        return Ok(Json(admin.outcome_json(run, r).await).into_response());
    }
    Ok(Json(json!({ "run_id": run.to_string(), "finished": false })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressQuery {
    follow: Option<bool>,
}

async fn progress<T: Transport>(
    State(admin): State<Shared<T>>,
    Path(run): Path<String>,
    q: Result<Query<ProgressQuery>, QueryRejection>,
) -> ApiResult {
    let run = parse_run(&run)?;
    if query(q)?.follow == Some(true) {
        return streams::follow(admin, run).await;
    }
    if let Some((dump, _)) = admin.show(run).await? {
        return Ok(Json(json!({
            "run_id": run.to_string(), "finished": false, "progress": dump.progress,
        }))
        .into_response());
    }
    match admin.outcome(run).await? {
        Some(_) => Ok(Json(json!({
            "run_id": run.to_string(), "finished": true,
            "progress": [crate::ProgressTracker::DONE],
        }))
        .into_response()),
        None => Err(ApiError::not_found(format!("no flow {run} on this node"))),
    }
}

async fn kill<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(caller): Extension<Caller>,
    Path(run): Path<String>,
) -> ApiResult {
    caller.require(Role::Operate, "killing a flow")?;
    let run = parse_run(&run)?;
    admin.node.kill_flow(run).await.map_err(node_error)?;
    warn!(user = %caller.name, %run, "operator action: kill");
    Ok(Json(json!({ "run_id": run.to_string(), "killed": true })).into_response())
}

async fn retry<T: Transport>(
    State(admin): State<Shared<T>>,
    Extension(caller): Extension<Caller>,
    Path(run): Path<String>,
) -> ApiResult {
    caller.require(Role::Operate, "retrying a flow")?;
    let run = parse_run(&run)?;
    match admin.node.retry_flow(run).await {
        Ok(()) => {}
        // Not in the hospital because there is no such flow at all.
        Err(NodeError::NotInHospital(_)) if admin.show(run).await?.is_none() => {
            return Err(node_error(NodeError::UnknownRun(run)));
        }
        Err(e) => return Err(node_error(e)),
    }
    info!(user = %caller.name, %run, "operator action: retry");
    Ok(Json(json!({ "run_id": run.to_string(), "retried": true })).into_response())
}

async fn by_client_id<T: Transport>(
    State(admin): State<Shared<T>>,
    Path(id): Path<String>,
) -> ApiResult {
    let key = id.clone();
    let run = admin
        .node
        .call(move |core, _| (core.run_for_client_id(&key), None))
        .await
        .map_err(node_error)?
        .map_err(node_error)?;
    match run {
        Some(run) => {
            Ok(Json(json!({ "client_id": id, "run_id": run.to_string() })).into_response())
        }
        None => Err(ApiError::not_found(format!(
            "no flow was started with client id `{id:.200}`"
        ))),
    }
}

async fn dump<T: Transport>(State(admin): State<Shared<T>>) -> ApiResult {
    let dumps = admin
        .node
        .operator_scan(|view, now| view.dump(now))
        .await
        .map_err(node_error)?;
    Ok(Json(dumps).into_response())
}

async fn flow_types<T: Transport>(State(admin): State<Shared<T>>) -> ApiResult {
    let types = admin
        .node
        .operator_scan(|view, _| {
            Ok(view
                .flow_types()
                .into_iter()
                .map(|(name, version, fingerprint)| {
                    let states = view.state_graph(name).map_or(0, |g| g.states.len());
                    json!({
                        "name": name,
                        "version": version,
                        "fingerprint": format!("{fingerprint:016x}"),
                        "states": states,
                    })
                })
                .collect::<Vec<Value>>())
        })
        .await
        .map_err(node_error)?;
    Ok(Json(json!({ "flow_types": types })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphQuery {
    format: Option<String>,
    highlight: Option<String>,
}

/// Longest state name accepted to highlight.
const MAX_STATE_NAME: usize = 256;

/// A flow type's state graph, drawn (see [`crate::graph`]).
async fn flow_graph<T: Transport>(
    State(admin): State<Shared<T>>,
    Path(name): Path<String>,
    q: Result<Query<GraphQuery>, QueryRejection>,
) -> ApiResult {
    let GraphQuery { format, highlight } = query(q)?;
    let format = format.unwrap_or_else(|| "mermaid".to_owned());
    let content_type = match format.as_str() {
        "mermaid" => "text/plain; charset=utf-8",
        "dot" => "text/vnd.graphviz; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown graph format `{other:.40}`: use mermaid, dot, svg or json"
            )));
        }
    };
    if highlight.as_ref().is_some_and(|h| h.len() > MAX_STATE_NAME) {
        return Err(ApiError::bad_request(format!(
            "a state name is at most {MAX_STATE_NAME} bytes"
        )));
    }
    let wanted = name.clone();
    let drawn = admin
        .node
        .operator_scan(move |view, _| {
            let Some(graph) = view.state_graph(&wanted) else {
                return Ok(None);
            };
            let highlight = highlight.as_deref();
            Ok(Some(match format.as_str() {
                "dot" => graph.to_dot(highlight),
                "svg" => graph.to_svg(highlight),
                "json" => serde_json::to_string(graph).map_err(|e| {
                    NodeError::Store(format!("cannot render the graph as JSON: {e}"))
                })?,
                _ => graph.to_mermaid(highlight),
            }))
        })
        .await
        .map_err(node_error)?;
    match drawn {
        Some(body) => Ok(([(header::CONTENT_TYPE, content_type)], body).into_response()),
        None => Err(ApiError::not_found(format!(
            "no flow type `{name:.200}` is registered on this node (see GET /api/v1/flow-types)"
        ))),
    }
}
