//! Error collection, in the style of `serde_derive`: every check pushes a
//! spanned [`syn::Error`] and goes on, so that one compile shows the user
//! every problem of a flow at once instead of one per edit-compile cycle.

use proc_macro2::{Span, TokenStream};
use std::fmt::Display;

/// The errors found so far while expanding one `#[flow]`.
#[derive(Default)]
pub struct Errors {
    errors: Vec<syn::Error>,
}

impl Errors {
    /// Records an error at `span`.
    pub fn error(&mut self, span: Span, message: impl Display) {
        self.errors.push(syn::Error::new(span, message));
    }

    /// Records an error covering the tokens of `node` (its first to last
    /// token, so the caret underlines the whole expression).
    pub fn error_at(&mut self, node: &impl quote::ToTokens, message: impl Display) {
        self.errors.push(syn::Error::new_spanned(node, message));
    }

    /// Records an already built error.
    pub fn push(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    /// How many errors were recorded.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Whether anything was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The messages, for tests.
    #[cfg(test)]
    pub fn messages(&self) -> Vec<String> {
        self.errors.iter().map(|e| e.to_string()).collect()
    }

    /// All errors as `compile_error!` invocations.
    pub fn into_compile_errors(self) -> TokenStream {
        self.errors
            .into_iter()
            .map(|e| e.to_compile_error())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Errors;
    use proc_macro2::Span;

    #[test]
    fn every_error_is_kept_and_becomes_one_compile_error() {
        let mut errors = Errors::default();
        assert!(errors.is_empty());
        errors.error(Span::call_site(), "first");
        let ty: syn::Type = syn::parse_quote!(Vec<u8>);
        errors.error_at(&ty, "second");
        errors.push(syn::Error::new(Span::call_site(), "third"));
        assert_eq!(errors.len(), 3);
        assert_eq!(errors.messages(), ["first", "second", "third"]);
        let out = errors.into_compile_errors().to_string();
        assert_eq!(out.matches("compile_error").count(), 3, "{out}");
        assert!(out.contains("\"second\""));
    }
}
