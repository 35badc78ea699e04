//! [`FlowHandle`]: what starting a flow gives back.

use crate::node::RunId;
use crate::progress::ProgressStream;
use crate::{Flow, FlowError};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

/// A finished flow's outcome with its output still in MessagePack.
pub(crate) type RawResult = Result<Vec<u8>, FlowError>;

/// The future a [`ResultSource`] returns.
pub(crate) type RawResultFuture = Pin<Box<dyn Future<Output = RawResult> + Send + 'static>>;

/// Where a handle gets its flow's result from: the node or network that
/// started it. A trait object so that `FlowHandle` stays one type for the
/// tokio node and for `MockNetwork`, and so that this module needs no async
/// runtime.
pub(crate) trait ResultSource: Send + Sync {
    /// Completes with the outcome of `run` once it has one (or with an
    /// error saying why it never will through this handle).
    fn wait(&self, run: RunId) -> RawResultFuture;
}

/// A started flow: its run id, its progress, and its result, typed by the
/// flow `F`.
///
/// Cheap to clone; holding it keeps nothing alive on the node (a handle
/// whose node has shut down reports that instead of waiting). The result is
/// kept by the node until removed, so a handle can be re-created after a
/// restart (`Node::reattach`, `MockNetwork::reattach`).
pub struct FlowHandle<F> {
    run_id: RunId,
    node: usize,
    progress: ProgressStream,
    source: Arc<dyn ResultSource>,
    _flow: PhantomData<fn() -> F>,
}

impl<F> std::fmt::Debug for FlowHandle<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowHandle")
            .field("run_id", &self.run_id)
            .field("node", &self.node)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

impl<F> Clone for FlowHandle<F> {
    fn clone(&self) -> Self {
        Self {
            run_id: self.run_id,
            node: self.node,
            progress: self.progress.clone(),
            source: self.source.clone(),
            _flow: PhantomData,
        }
    }
}

impl<F> FlowHandle<F> {
    /// A handle to `run` on node `node` of its network, reading its result
    /// from `source`.
    pub(crate) fn new(
        run_id: RunId,
        node: usize,
        progress: ProgressStream,
        source: Arc<dyn ResultSource>,
    ) -> Self {
        Self {
            run_id,
            node,
            progress,
            source,
            _flow: PhantomData,
        }
    }

    /// The flow's run id on its node.
    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// Index of the node that runs it (within its network).
    pub(crate) fn node_index(&self) -> usize {
        self.node
    }

    /// The flow's progress: every change of its progress path, ending with
    /// `[ProgressTracker::DONE]`.
    pub fn progress(&self) -> ProgressStream {
        self.progress.clone()
    }
}

impl<F: Flow> FlowHandle<F> {
    /// The flow's outcome.
    ///
    /// * From a tokio [`Node`](crate::runner::Node) (started or re-attached
    ///   there): waits until the flow has finished — across restarts of its
    ///   counterparties — then returns its result; any number of times,
    ///   until the result is removed. If the node shuts down first, returns
    ///   an `Internal` error saying so (start the node again and
    ///   re-attach).
    /// * From a [`MockNetwork`](crate::testing::MockNetwork): the network
    ///   only moves when the test steps it, so waiting here could never
    ///   end. Returns at once: the result if the flow has already finished,
    ///   otherwise an `Internal` error telling you to run the network
    ///   (`net.run_network()`) and read `net.result(&handle)`.
    pub async fn result(&self) -> Result<F::Output, FlowError> {
        let bytes = self.source.wait(self.run_id).await?;
        decode_output::<F>(&bytes)
    }
}

/// Decodes a flow's output from the MessagePack the node stored.
pub(crate) fn decode_output<F: Flow>(bytes: &[u8]) -> Result<F::Output, FlowError> {
    rmp_serde::from_slice(bytes).map_err(|e| {
        FlowError::internal(format!(
            "the result of `{}` does not decode as its output type: {e}",
            F::NAME
        ))
    })
}
