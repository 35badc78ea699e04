//! [`FlowHandle`]: what starting a flow gives back.

use crate::node::RunId;
use crate::progress::ProgressStream;
use std::marker::PhantomData;

/// A started flow: its run id, its progress, and (through the node or
/// network that started it) its result, typed by the flow `F`.
///
/// Cheap to clone; holding it keeps nothing alive on the node. The result is
/// kept by the node until removed, so a handle can be re-created after a
/// restart (`MockNetwork::reattach`).
#[derive(Debug)]
pub struct FlowHandle<F> {
    run_id: RunId,
    node: usize,
    progress: ProgressStream,
    _flow: PhantomData<fn() -> F>,
}

impl<F> Clone for FlowHandle<F> {
    fn clone(&self) -> Self {
        Self {
            run_id: self.run_id,
            node: self.node,
            progress: self.progress.clone(),
            _flow: PhantomData,
        }
    }
}

impl<F> FlowHandle<F> {
    pub(crate) fn new(run_id: RunId, node: usize, progress: ProgressStream) -> Self {
        Self {
            run_id,
            node,
            progress,
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
