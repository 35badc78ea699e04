//! The pipeline: parse -> lower -> analyse liveness -> generate. A plain fn
//! over `proc_macro2` so the expansion snapshot tests can call it.

use crate::errors::Errors;
use crate::{generate, lower, parse};
use proc_macro2::TokenStream;
use syn::visit_mut::VisitMut;

/// Expands `#[flow(attr)] item`. Never panics: problems become
/// `compile_error!`s at the offending spans.
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::parse_args(attr, &mut errors);
    let item: syn::ItemFn = match syn::parse2(item) {
        Ok(item) => item,
        Err(e) => {
            errors.error(
                e.span(),
                "`#[flow]` goes on an `async fn`: `#[flow] pub async fn name(ctx: &mut FlowContext, ..) -> Result<T, FlowError> { .. }`",
            );
            return errors.into_compile_errors();
        }
    };
    let outer_params = outer_params(&item);
    // The generated code lives in a module named after the fn, one level
    // below the user's code: `self::`/`super::` paths shift by one.
    let mut inner = item.clone();
    PathShifter.visit_item_fn_mut(&mut inner);
    let Some(sig) = parse::parse_sig(&inner, &mut errors) else {
        return errors.into_compile_errors();
    };
    let cfg = lower::lower(&inner.block, &sig.params, &sig.ctx, &mut errors);
    let input = generate::Input {
        item: &item,
        sig: &sig,
        args: &args,
        outer_params,
    };
    let out = generate::generate(&input, &cfg, &mut errors);
    if errors.is_empty() {
        out
    } else {
        errors.into_compile_errors()
    }
}

fn outer_params(item: &syn::ItemFn) -> Vec<(syn::Ident, syn::Type)> {
    item.sig
        .inputs
        .iter()
        .skip(1)
        .filter_map(|a| match a {
            syn::FnArg::Typed(pt) => match &*pt.pat {
                syn::Pat::Ident(pi) => Some((pi.ident.clone(), (*pt.ty).clone())),
                _ => None,
            },
            syn::FnArg::Receiver(_) => None,
        })
        .collect()
}

/// Rewrites `self::x` to `super::x` and `super::x` to `super::super::x`.
struct PathShifter;

impl VisitMut for PathShifter {
    fn visit_path_mut(&mut self, path: &mut syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            let first = path.segments[0].ident.to_string();
            if first == "self" {
                path.segments[0].ident = syn::Ident::new("super", path.segments[0].ident.span());
            } else if first == "super" {
                let span = path.segments[0].ident.span();
                path.segments
                    .insert(0, syn::PathSegment::from(syn::Ident::new("super", span)));
            }
        }
        syn::visit_mut::visit_path_mut(self, path);
    }
}
