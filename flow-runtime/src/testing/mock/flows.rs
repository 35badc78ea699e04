//! Starting flows on a [`MockNetwork`] and reading their outcomes: the
//! handles it gives out answer from what the network has seen, without
//! waiting (the network moves only when the test steps it).

use super::*;
use crate::handle::{RawResult, RawResultFuture, ResultSource};
use crate::node::RunId;
use crate::registry::NewFlow;
use crate::{Flow, FlowError, FlowHandle};
use std::sync::{Arc, Mutex, PoisonError};

/// The outcomes of flows finished on the network, shared with its handles
/// so that `FlowHandle::result().await` can answer without the network:
/// the network moves only when the test steps it, so a handle never waits,
/// it reports what is known now.
#[derive(Default)]
pub(super) struct MockResults {
    pub(super) finished: Mutex<HashMap<(usize, RunId), RawResult>>,
}

/// A handle's view of [`MockResults`] for the flows of one node.
struct MockResultSource {
    results: Arc<MockResults>,
    node: usize,
}

impl ResultSource for MockResultSource {
    fn wait(&self, run: RunId) -> RawResultFuture {
        let known = self
            .results
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(self.node, run))
            .cloned();
        Box::pin(std::future::ready(known.unwrap_or_else(|| {
            Err(FlowError::internal(
                "the flow has not finished yet, and a MockNetwork moves only when the test steps it: \
                 call `net.run_network()` (or `net.step()`) and read the outcome with `net.result(&handle)`",
            ))
        })))
    }
}

impl MockNetwork {
    /// Starts `flow` on `node`, committed before this returns (it runs on the
    /// next steps, and survives a restart in between).
    pub fn start_flow<F: Flow>(&mut self, node: NodeId, flow: F) -> FlowHandle<F> {
        self.start(node, flow, None)
    }

    /// Starts `flow` under a client-supplied id: if a flow was already
    /// started with `client_id` on `node`, returns a handle to it and starts
    /// nothing.
    pub fn start_flow_with_client_id<F: Flow>(
        &mut self,
        node: NodeId,
        client_id: &str,
        flow: F,
    ) -> FlowHandle<F> {
        self.start(node, flow, Some(client_id.to_owned()))
    }

    /// A handle to the flow started with `client_id` (running, or finished
    /// with its result kept), e.g. after a restart.
    pub fn reattach<F: Flow>(&mut self, node: NodeId, client_id: &str) -> Option<FlowHandle<F>> {
        let run = self
            .core(node)
            .run_for_client_id(client_id)
            .map_err(|e| tracing::error!("{e}"))
            .ok()??;
        Some(self.handle(node, run))
    }

    fn handle<F>(&mut self, node: NodeId, run: RunId) -> FlowHandle<F> {
        let progress = self.nodes[node.0].observers.entry(run).or_default().clone();
        FlowHandle::new(
            run,
            node.0,
            progress,
            Arc::new(MockResultSource {
                results: self.results.clone(),
                node: node.0,
            }),
        )
    }

    fn start<F: Flow>(
        &mut self,
        node: NodeId,
        flow: F,
        client_id: Option<String>,
    ) -> FlowHandle<F> {
        self.nodes[node.0].registry.register_flow::<F>();
        let now = self.clock;
        let new = NewFlow::new(&flow);
        let core = self.core(node);
        let before = core.commits();
        let started = match new {
            Ok(new) => core.start(now, new, client_id),
            Err(e) => core.record_failed_start(now, F::NAME, e),
        };
        let delta = core.commits() - before;
        self.commits += delta;
        match started {
            Ok((run, out)) => {
                let handle = self.handle(node, run);
                self.absorb(node.0, out);
                handle
            }
            Err(e) => {
                // Only a storage failure gets here; MockNetwork's storage is
                // memory, so this is a bug worth stopping the test for.
                panic!("MockNetwork could not start `{}`: {e}", F::NAME)
            }
        }
    }

    /// The outcome of the flow: `None` while it runs (or waits forever),
    /// then its result, as often as asked.
    pub fn result<F: Flow>(&self, handle: &FlowHandle<F>) -> Option<Result<F::Output, FlowError>> {
        let core = self.nodes[handle.node_index()].core.as_ref()?;
        match core.result(handle.run_id()) {
            Ok(None) => None,
            Ok(Some(Ok(bytes))) => Some(rmp_serde::from_slice(&bytes).map_err(|e| {
                FlowError::internal(format!(
                    "the result of `{}` does not decode as its output type: {e}",
                    F::NAME
                ))
            })),
            Ok(Some(Err(e))) => Some(Err(e)),
            Err(e) => Some(Err(FlowError::internal(e.to_string()))),
        }
    }

    /// Every flow that has finished on `node` so far (responders included),
    /// in order. Kept by the network, so it survives node restarts.
    pub fn finished(&self, node: NodeId) -> Vec<Finished> {
        self.finished
            .iter()
            .filter(|f| f.node == node)
            .cloned()
            .collect()
    }

    /// Forgets a finished flow's result. `true` if there was one.
    pub fn remove_result<F>(&mut self, handle: &FlowHandle<F>) -> bool {
        let now = self.clock;
        let node = NodeId(handle.node_index());
        self.results
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(node.0, handle.run_id()));
        self.core(node)
            .remove_result(now, handle.run_id())
            .unwrap_or(false)
    }
}
