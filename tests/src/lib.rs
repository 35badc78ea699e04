//! Shared helpers for the workspace-level tests in `tests/tests/`.
//!
//! The main one is the differential-testing kit (see `docs/testing.md`):
//! [`diff_flows!`] stamps each flow body twice — as a `#[flow]` state machine
//! and as a plain `async fn` over the look-alike types of [`plain`] — and
//! [`differential::check_flow`] runs both against proptest-generated
//! counterparty inputs and compares their [`trace::Trace`]s.

pub mod differential;
pub mod generated_support;
pub mod plain;
pub mod trace;

/// Stamps flow bodies twice: into `mod generated` as `#[flow]` fns and into
/// `mod plain` as plain `async` fns over [`plain::FlowContext`] /
/// [`plain::FlowSession`] (same method names, real futures).
///
/// Each body is written once, in the form
/// `fn name(ctx, arg: Type, ...) -> Output { body }`; both stamps return
/// `Result<Output, FlowError>`. Inside `generated`, `FlowContext` and
/// `FlowSession` are `flow_runtime`'s; inside `plain`, the twins'. Other names
/// come from the invoking module (`use super::*`), and flows of the same
/// invocation call each other as sub-flows by plain name.
#[macro_export]
macro_rules! diff_flows {
    ($(
        fn $name:ident($ctx:ident $(, $arg:ident : $ty:ty)* $(,)?) -> $out:ty { $($body:tt)* }
    )*) => {
        /// The bodies as `#[flow]` state machines.
        pub mod generated {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use ::flow_runtime::prelude::{
                flow, FlowContext, FlowError, FlowErrorKind, FlowSession, Party, Untrustworthy,
            };
            $(
                #[flow]
                pub async fn $name($ctx: &mut FlowContext $(, $arg: $ty)*) -> Result<$out, FlowError> {
                    $($body)*
                }
            )*
        }

        /// The same bodies as plain `async fn`s: the reference semantics.
        pub mod plain {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::plain::prelude::{
                FlowContext, FlowError, FlowErrorKind, FlowSession, Party, PlainFlow, Untrustworthy,
            };
            $(
                pub fn $name($($arg: $ty),*) -> PlainFlow<$out> {
                    async fn body($ctx: &mut FlowContext $(, $arg: $ty)*) -> Result<$out, FlowError> {
                        $($body)*
                    }
                    PlainFlow::new(stringify!($name), move |mut ctx: FlowContext| async move {
                        body(&mut ctx $(, $arg)*).await
                    })
                }
            )*
        }
    };
}
