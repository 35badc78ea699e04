//! The admin API's routes that follow flows as they move, instead of being
//! polled: Server-Sent Events streams (`GET /api/v1/events`, every flow of
//! the node; `GET /api/v1/flows/{run}/progress?follow=true`, one flow until
//! it ends) and the batch result wait (`POST /api/v1/flows/results`), which
//! lets one request collect the outcomes of many flows.
//!
//! Why Server-Sent Events: a plain HTTP response that stays open, one
//! `event:`/`data:` block per change, so `curl -N` shows it, any HTTP client
//! reads it line by line, and the same token and roles apply as for every
//! other route (a WebSocket would need an upgrade and a second protocol).
//! axum ships the encoder; the events come from the node's event loop,
//! which publishes each committed progress change and flow end to whoever
//! subscribes (nothing while nobody does).
//!
//! A stream never blocks the node: a subscriber that reads too slowly
//! misses events and is told so (`lagged`); the per-flow stream then
//! re-reads the flow, and a client of the node-wide stream re-reads what
//! it needs (list, results). Every stream ends when the node stops.

use super::ApiError;
use super::Json;
use super::routes::{ApiResult, Shared, body_json, node_error, parse_run, parse_wait};
use crate::RunId;
use crate::runner::event_loop::FlowEvent;
use crate::transport::Transport;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

/// A comment line this often keeps idle streams open through proxies and
/// lets a client tell a quiet node from a dead connection.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The most runs one batch result request names.
const MAX_RESULTS: usize = 100_000;

/// What a stream sends next: one SSE event, built from JSON.
fn sse(kind: &str, data: &Value) -> Event {
    Event::default().event(kind).data(data.to_string())
}

/// The next event of the node, or `None` once the server stops.
async fn next_event(
    events: &mut broadcast::Receiver<Arc<FlowEvent>>,
    stopped: &mut watch::Receiver<bool>,
) -> Option<Result<Arc<FlowEvent>, RecvError>> {
    if *stopped.borrow() {
        return None;
    }
    tokio::select! {
        event = events.recv() => Some(event),
        _ = stopped.wait_for(|s| *s) => None,
    }
}

/// `GET /api/v1/events`: every flow's committed progress changes and ends,
/// as they happen:
///
/// * `event: progress`, `data: {"run_id", "progress": [steps]}`;
/// * `event: finished`, `data: {"run_id", "flow", "outcome": "ok" | "error",
///   "error"}` (the output itself: the result route);
/// * `event: lagged`, `data: {"missed": N}`: this client read too slowly
///   and N events were dropped; re-read what it needs.
pub(super) async fn events<T: Transport>(State(admin): State<Shared<T>>) -> ApiResult {
    struct Stream {
        events: broadcast::Receiver<Arc<FlowEvent>>,
        stopped: watch::Receiver<bool>,
    }
    let stream = Stream {
        events: admin.node.flow_events(),
        stopped: admin.stopped.clone(),
    };
    let stream = futures_util::stream::unfold(stream, |mut s| async move {
        let event = match next_event(&mut s.events, &mut s.stopped).await? {
            Ok(event) => match &*event {
                FlowEvent::Progress { run, path } => sse(
                    "progress",
                    &json!({ "run_id": run.to_string(), "progress": path }),
                ),
                FlowEvent::Finished { run, flow, result } => sse(
                    "finished",
                    &match result {
                        Ok(_) => {
                            json!({ "run_id": run.to_string(), "flow": flow, "outcome": "ok" })
                        }
                        Err(e) => json!({
                            "run_id": run.to_string(), "flow": flow, "outcome": "error",
                            "error": e.to_string(),
                        }),
                    },
                ),
            },
            Err(RecvError::Lagged(missed)) => sse("lagged", &json!({ "missed": missed })),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), s))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// `GET /api/v1/flows/{run}/progress?follow=true`: the flow's progress now,
/// then each change, then its outcome (`event: finished`, the result
/// route's JSON), and the stream ends. A flow that has already finished
/// gives its outcome at once; an unknown run is a 404 before any stream.
pub(super) async fn follow<T: Transport>(admin: Shared<T>, run: RunId) -> ApiResult {
    // Subscribed before reading the flow, so no change falls in between
    // (one seen twice is sent once).
    let events = admin.node.flow_events();
    let mut first = VecDeque::new();
    let mut last = None;
    let mut done = false;
    match admin.show(run).await? {
        Some((dump, _)) => {
            first.push_back(progress_event(run, &dump.progress));
            last = Some(dump.progress);
        }
        None => match admin.outcome(run).await? {
            Some(outcome) => {
                first.push_back(sse("finished", &outcome));
                done = true;
            }
            None => return Err(ApiError::not_found(format!("no flow {run} on this node"))),
        },
    }
    struct Follow<T: Transport> {
        admin: Shared<T>,
        run: RunId,
        events: broadcast::Receiver<Arc<FlowEvent>>,
        stopped: watch::Receiver<bool>,
        queued: VecDeque<Event>,
        last: Option<Vec<String>>,
        done: bool,
    }
    let stopped = admin.stopped.clone();
    let state = Follow {
        admin,
        run,
        events,
        stopped,
        queued: first,
        last,
        done,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.queued.pop_front() {
                return Some((Ok::<_, Infallible>(event), s));
            }
            if s.done {
                return None;
            }
            match next_event(&mut s.events, &mut s.stopped).await? {
                Ok(event) => match &*event {
                    FlowEvent::Progress { run, path }
                        if *run == s.run && s.last.as_ref() != Some(path) =>
                    {
                        s.queued.push_back(progress_event(*run, path));
                        s.last = Some(path.clone());
                    }
                    FlowEvent::Finished { run, flow, result } if *run == s.run => {
                        s.admin.remember(*run, flow);
                        let outcome = s.admin.outcome_json(*run, result.clone()).await;
                        s.queued.push_back(sse("finished", &outcome));
                        s.done = true;
                    }
                    _ => {}
                },
                // Missed events: read the flow again.
                Err(RecvError::Lagged(_)) => s.reread().await,
                Err(RecvError::Closed) => return None,
            }
        }
    });

    impl<T: Transport> Follow<T> {
        async fn reread(&mut self) {
            match self.admin.show(self.run).await {
                Ok(Some((dump, _))) => {
                    if self.last.as_ref() != Some(&dump.progress) {
                        self.queued
                            .push_back(progress_event(self.run, &dump.progress));
                        self.last = Some(dump.progress);
                    }
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    self.queued
                        .push_back(sse("error", &json!({ "error": e.message })));
                    self.done = true;
                    return;
                }
            }
            let outcome = match self.admin.outcome(self.run).await {
                Ok(Some(outcome)) => sse("finished", &outcome),
                Ok(None) => sse(
                    "error",
                    &json!({ "error": format!("flow {} ended without a kept result", self.run) }),
                ),
                Err(e) => sse("error", &json!({ "error": e.message })),
            };
            self.queued.push_back(outcome);
            self.done = true;
        }
    }

    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

fn progress_event(run: RunId, path: &[String]) -> Event {
    sse(
        "progress",
        &json!({ "run_id": run.to_string(), "progress": path }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultsRequest {
    run_ids: Vec<String>,
    wait_s: Option<f64>,
    output: Option<bool>,
}

/// `POST /api/v1/flows/results`: the outcomes of many runs in one request.
/// Body `{"run_ids": [...], "wait_s": N}`; waits up to `wait_s` seconds
/// (default 0) for every listed run to finish, and answers
/// `{"results": [outcome as the result route gives it], "pending": [run
/// ids not finished, or unknown to this node]}`, results in the order
/// asked; with `"output": false` each result leaves its output out (a
/// client that only counts outcomes). A client collecting many flows asks
/// again with what is pending.
pub(super) async fn results<T: Transport>(
    State(admin): State<Shared<T>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let ResultsRequest {
        run_ids,
        wait_s,
        output,
    } = body_json(body)?;
    if run_ids.len() > MAX_RESULTS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_RESULTS} run ids per request"
        )));
    }
    let wait = parse_wait(wait_s)?;
    let mut order = Vec::with_capacity(run_ids.len());
    let mut seen = HashSet::with_capacity(run_ids.len());
    for id in &run_ids {
        let run = parse_run(id)?;
        if seen.insert(run) {
            order.push(run);
        }
    }
    // Subscribed before the first read, so a run finishing in between is
    // seen by one or the other.
    let mut events = admin.node.flow_events();
    let mut stopped = admin.stopped.clone();
    let mut finished = read_results(&admin, &order).await?;
    let mut pending: HashSet<RunId> = order
        .iter()
        .filter(|r| !finished.contains_key(r))
        .copied()
        .collect();
    if !pending.is_empty() && !wait.is_zero() {
        let deadline = tokio::time::Instant::now() + wait;
        while !pending.is_empty() {
            let next = tokio::time::timeout_at(deadline, next_event(&mut events, &mut stopped));
            match next.await {
                Err(_) | Ok(None) | Ok(Some(Err(RecvError::Closed))) => break,
                Ok(Some(Ok(event))) => {
                    if let FlowEvent::Finished { run, flow, result } = &*event
                        && pending.remove(run)
                    {
                        admin.remember(*run, flow);
                        finished.insert(*run, result.clone());
                    }
                }
                Ok(Some(Err(RecvError::Lagged(_)))) => {
                    let still: Vec<RunId> = pending.iter().copied().collect();
                    for (run, result) in read_results(&admin, &still).await? {
                        pending.remove(&run);
                        finished.insert(run, result);
                    }
                }
            }
        }
    }
    let mut outcomes = Vec::with_capacity(finished.len());
    let mut still = Vec::new();
    for run in order {
        match finished.remove(&run) {
            Some(result) => outcomes.push((run, result)),
            None => still.push(run.to_string()),
        }
    }
    let results = if output.unwrap_or(true) {
        admin.outcomes_json(outcomes).await
    } else {
        outcomes
            .into_iter()
            .map(|(run, result)| match result {
                Ok(_) => json!({ "run_id": run.to_string(), "finished": true, "outcome": "ok" }),
                Err(e) => json!({
                    "run_id": run.to_string(), "finished": true, "outcome": "error",
                    "error": e.to_string(),
                }),
            })
            .collect()
    };
    Ok(Json(json!({ "results": results, "pending": still })).into_response())
}

/// The kept results of those of `runs` that have finished, in one job of
/// the node's event loop.
async fn read_results<T: Transport>(
    admin: &Shared<T>,
    runs: &[RunId],
) -> Result<HashMap<RunId, crate::handle::RawResult>, ApiError> {
    let runs = runs.to_vec();
    admin
        .node
        .call(move |core, _| {
            let mut found = HashMap::new();
            for run in runs {
                match core.result(run) {
                    Ok(Some(result)) => {
                        found.insert(run, result);
                    }
                    Ok(None) => {}
                    Err(e) => return (Err(e), None),
                }
            }
            (Ok(found), None)
        })
        .await
        .map_err(node_error)?
        .map_err(node_error)
}
