//! Progress reporting: a flow's position as a path of step labels, one per
//! nesting level (the top-level flow's step, then its sub-flow's step...).
//!
//! Flows set their step with `ctx.set_progress("Collecting signatures")`;
//! the position is saved in the checkpoint with every step and streamed to
//! [`FlowHandle::progress`](crate::FlowHandle::progress) observers. A
//! [`ProgressTracker`] declares the steps a flow goes through (with child
//! trackers for sub-flows) so that a UI can show where in the whole plan a
//! flow is.

use std::sync::{Arc, Mutex};

/// The declared steps of a flow, with child trackers for steps that run a
/// sub-flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgressTracker {
    steps: Vec<(String, Option<ProgressTracker>)>,
}

impl ProgressTracker {
    /// The position of a flow that has not run yet (empty path).
    pub const UNSTARTED: &'static str = "Unstarted";
    /// The last position every observed flow reaches.
    pub const DONE: &'static str = "Done";

    /// A tracker with these steps, in order.
    pub fn new<S: Into<String>>(steps: impl IntoIterator<Item = S>) -> Self {
        Self {
            steps: steps.into_iter().map(|s| (s.into(), None)).collect(),
        }
    }

    /// Adds `child` as the tracker of the sub-flow run in step `label`
    /// (appending the step if it is not declared).
    pub fn with_child(mut self, label: &str, child: ProgressTracker) -> Self {
        match self.steps.iter_mut().find(|(l, _)| l == label) {
            Some(step) => step.1 = Some(child),
            None => self.steps.push((label.to_owned(), Some(child))),
        }
        self
    }

    /// The step indexes of `path` (one per level), or `None` if a label is
    /// not declared at its level.
    pub fn position(&self, path: &[String]) -> Option<Vec<usize>> {
        let mut tracker = self;
        let mut out = Vec::new();
        for (depth, label) in path.iter().enumerate() {
            let i = tracker.steps.iter().position(|(l, _)| l == label)?;
            out.push(i);
            if depth + 1 < path.len() {
                tracker = tracker.steps[i].1.as_ref()?;
            }
        }
        Some(out)
    }

    /// The whole plan as indented lines, `▶` marking the current path.
    pub fn render(&self, path: &[String]) -> String {
        let mut out = String::new();
        self.render_into(path, 0, &mut out);
        out
    }

    fn render_into(&self, path: &[String], depth: usize, out: &mut String) {
        for (label, child) in &self.steps {
            let current = path.first() == Some(label);
            out.push_str(&"  ".repeat(depth));
            out.push_str(if current { "▶ " } else { "  " });
            out.push_str(label);
            out.push('\n');
            if let Some(child) = child {
                let sub: &[String] = if current { &path[1..] } else { &[] };
                child.render_into(sub, depth + 1, out);
            }
        }
    }
}

/// A stream of a flow's progress paths. Iterating yields every change not
/// yet seen (without blocking: `None` means "nothing new yet");
/// [`current`](ProgressStream::current) is the latest position. The last
/// update of a finished flow is `[ProgressTracker::DONE]`.
#[derive(Debug, Clone, Default)]
pub struct ProgressStream {
    log: Arc<Mutex<Vec<Vec<String>>>>,
    seen: usize,
}

impl ProgressStream {
    /// Appends an update (the node does this after each commit).
    pub(crate) fn push(&self, path: Vec<String>) {
        if let Ok(mut log) = self.log.lock()
            && log.last() != Some(&path)
        {
            log.push(path);
        }
    }

    /// The latest position (empty before the first update).
    pub fn current(&self) -> Vec<String> {
        self.log
            .lock()
            .ok()
            .and_then(|l| l.last().cloned())
            .unwrap_or_default()
    }

    /// Every update so far, oldest first.
    pub fn history(&self) -> Vec<Vec<String>> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Iterator for ProgressStream {
    type Item = Vec<String>;
    fn next(&mut self) -> Option<Vec<String>> {
        let log = self.log.lock().ok()?;
        let item = log.get(self.seen).cloned()?;
        self.seen += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_renders_nested_steps() {
        let t = ProgressTracker::new(["Start", "Sign", "Finalise"])
            .with_child("Sign", ProgressTracker::new(["Collect", "Verify"]));
        let path = vec!["Sign".to_owned(), "Verify".to_owned()];
        assert_eq!(t.position(&path), Some(vec![1, 1]));
        assert_eq!(t.position(&["Nope".to_owned()]), None);
        let r = t.render(&path);
        assert!(
            r.contains("▶ Sign") && r.contains("▶ Verify") && r.contains("  Start"),
            "{r}"
        );
    }

    #[test]
    fn stream_yields_each_change_once() {
        let s = ProgressStream::default();
        let mut reader = s.clone();
        s.push(vec!["a".into()]);
        s.push(vec!["a".into()]);
        s.push(vec!["b".into()]);
        assert_eq!(reader.next(), Some(vec!["a".to_owned()]));
        assert_eq!(reader.next(), Some(vec!["b".to_owned()]));
        assert_eq!(reader.next(), None);
        assert_eq!(s.current(), vec!["b".to_owned()]);
    }
}
