//! `#[flow]`: turns a sequential `async fn` into a serializable enum state
//! machine (see `docs/macro.md`).

use proc_macro::TokenStream;

/// Marks an `async fn` as a flow. See the crate docs.
#[proc_macro_attribute]
pub fn flow(_attr: TokenStream, item: TokenStream) -> TokenStream {
    item
}
