//! [`Untrustworthy`]: what `receive` yields, so that a peer's data is checked
//! before it is used.

/// A value received from a counterparty. It may be malformed or malicious;
/// reach it through [`validate`](Untrustworthy::validate), which makes the
/// check visible at the place the value enters the flow.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a received value must be validated before use"]
pub struct Untrustworthy<T>(T);

impl<T> Untrustworthy<T> {
    /// Wraps a value that came from a peer. Used by the runtime.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Checks the value and returns what the check produced. Return
    /// `Err(FlowError::new(..))` to reject it: the flow then ends with that
    /// error and the counterparty is told.
    pub fn validate<R>(
        self,
        check: impl FnOnce(T) -> Result<R, crate::FlowError>,
    ) -> Result<R, crate::FlowError> {
        check(self.0)
    }
}
