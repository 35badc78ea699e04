//! `#[flow]`: turns a sequential `async fn` into a serializable enum state
//! machine. The full guide, with an expanded example, is `docs/macro.md`.
//!
//! The macro is a small compiler, in the style of `serde_derive`, in
//! private modules:
//!
//! * `parse` checks the signature and the `#[flow(..)]` arguments;
//! * `lower` turns the body into the control-flow graph of `cfg` (basic
//!   blocks split at each `.await`), with `analyse` for names, scopes,
//!   types and purity, and `ops` to recognise what is awaited;
//! * `liveness` finds the locals live at each suspension point;
//! * `generate` writes the state enum, the `Flow` impl and the trampoline;
//! * `graph` writes the flow's state graph (`Flow::STATE_GRAPH`): the
//!   states and the paths between suspension points, for drawings;
//! * `errors` collects spanned errors so every problem is reported in one
//!   compile, and nothing panics; `pretty` renders code for messages.
//!
//! Each pass depends only on `cfg` and on the passes before it.

#![warn(missing_docs)]

use proc_macro::TokenStream;

mod analyse;
mod cfg;
mod errors;
mod expand;
mod generate;
mod graph;
mod liveness;
mod lower;
mod ops;
mod parse;
mod pretty;

/// Marks an `async fn` as a flow: a durable, checkpointable state machine.
///
/// ```
/// use flow_runtime::prelude::*;
///
/// #[flow]
/// pub async fn ping(ctx: &mut FlowContext, peer: Party, rounds: u32) -> Result<u64, FlowError> {
///     let session = ctx.initiate_flow(&peer);
///     let mut total: u64 = 0;
///     let mut i: u32 = 0;
///     while i < rounds {
///         session.send(&i)?;
///         let echo: u32 = session.receive::<u32>().await?.validate(Ok)?;
///         total += u64::from(echo);
///         i += 1;
///     }
///     Ok(total)
/// }
/// # fn main() {
/// #     let peer = Party::new("Bob", PublicKey([2; 32]));
/// #     let start: ping::Flow = ping(peer, 10);
/// #     let _ = start;
/// # }
/// ```
///
/// generates `fn ping(peer, rounds) -> ping::Flow` (builds the start state)
/// and `mod ping` with `enum Flow { Start { .. }, AwaitEcho { session, total,
/// i, rounds }, Done }` implementing `flow_runtime::Flow`.
///
/// # Rules (each enforced with an error at the offending code)
///
/// * The fn is `async`, not generic, its first parameter is
///   `ctx: &mut FlowContext` (any name; never stored), its other parameters
///   are plain names of owned types, and it returns `Result<T, FlowError>`.
/// * Only flow operations may be `.await`ed: `session.receive::<T>()`,
///   `session.send_and_receive::<T>(&v)`, `ctx.sleep(d)`,
///   `ctx.sub_flow(child(..))`. A helper `async fn` must be a `#[flow]`
///   itself and run with `ctx.sub_flow(..)`.
/// * A local that is live across an `.await` is stored in the checkpoint,
///   so the macro must see its type: an annotation, a parameter, a
///   turbofish `receive::<T>()`, a struct literal, a suffixed literal,
///   `ctx.initiate_flow(..)`, or a copy of a typed local. Pattern bindings
///   live across an `.await` must be rebound with an annotated `let`.
/// * What is stored must be `Serialize + DeserializeOwned + Debug + Send`.
/// * No `.await` inside closures, `async` blocks, macro calls, match guards
///   or on the right of `&&`/`||`; anything evaluated before an `.await` in
///   the same expression must be free of side effects (bind it with `let`).
/// * `for` loops whose body awaits iterate over a local `Vec<T>` of visible
///   type or a range with a typed bound (the iterator is checkpointed).
///
/// # Arguments
///
/// * `#[flow(version = N)]`: the protocol version sent with session
///   initiations (default 1).
///
/// A suspension point's variant is named after the binding that receives
/// its value (`let echo = ..await` gives `AwaitEcho`), after the operation
/// otherwise (`Receive`, `SendAndReceive`, `Sleep`, `SubFlowChild`), or
/// by a label: `#[state(AwaitPayment)] let x = ...`.
#[proc_macro_attribute]
pub fn flow(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr.into(), item.into()).into()
}

#[cfg(test)]
mod snapshot_tests;
