//! The pipeline: parse -> lower -> analyse liveness -> generate. A plain fn
//! over `proc_macro2` so the expansion snapshot tests can call it.

use crate::errors::Errors;
use crate::{generate, lower, parse};
use proc_macro2::TokenStream;
use quote::quote;
use syn::visit::Visit;
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
    report_generated_names(&item, &mut errors);
    // The generated code lives in a module named after the fn, one level
    // below the user's code: `self::`/`super::` paths shift by one.
    let mut inner = item.clone();
    PathShifter.visit_item_fn_mut(&mut inner);
    let Some(sig) = parse::parse_sig(&inner, &mut errors) else {
        return with_stub(errors, &item, &inner, &outer_params);
    };
    let cfg = lower::lower(&inner.block, &sig.params, &sig.ctx, &mut errors);
    let input = generate::Input {
        item: &item,
        sig: &sig,
        args: &args,
        outer_params: outer_params.clone(),
    };
    let out = generate::generate(&input, &cfg, &mut errors);
    if errors.is_empty() {
        out
    } else {
        with_stub(errors, &item, &inner, &outer_params)
    }
}

/// The errors, and in place of the flow a stub with the same fn and
/// module (a state enum with no states), as serde and thiserror do: callers
/// of the flow then type-check, so the user sees the flow's own errors and
/// not a second one at every call.
fn with_stub(
    errors: Errors,
    item: &syn::ItemFn,
    inner: &syn::ItemFn,
    outer_params: &[(syn::Ident, syn::Type)],
) -> TokenStream {
    let mut out = errors.into_compile_errors();
    let name = &item.sig.ident;
    let vis = &item.vis;
    let attrs = item.attrs.iter().filter(|a| !a.path().is_ident("doc"));
    let types = outer_params.iter().map(|(_, t)| t);
    let output = match &inner.sig.output {
        syn::ReturnType::Type(_, ty) => parse::result_ok_type(ty),
        syn::ReturnType::Default => None,
    }
    .unwrap_or_else(|| syn::parse_quote!(()));
    out.extend(quote! {
        #(#attrs)*
        #[allow(unused_variables)]
        #vis fn #name(#(_: #types),*) -> #name::Flow {
            #name::Flow::Unavailable
        }

        #[allow(non_snake_case, unused_imports)]
        #vis mod #name {
            use super::*;

            #[derive(::flow_runtime::__private::serde::Serialize, ::flow_runtime::__private::serde::Deserialize)]
            #[serde(crate = "::flow_runtime::__private::serde")]
            /// Stands in for the state machine of a flow with errors.
            pub enum Flow {
                /// No state: the flow did not compile.
                Unavailable,
            }

            impl ::core::fmt::Debug for Flow {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.write_str("Unavailable")
                }
            }

            impl ::flow_runtime::Flow for Flow {
                type Output = #output;
                const NAME: &'static str = ::core::module_path!();
                const VERSION: u32 = 1;
                const FINGERPRINT: u64 = 0;
                fn resume(
                    &mut self,
                    _: &mut ::flow_runtime::FlowContext,
                    _: ::flow_runtime::Event,
                ) -> ::flow_runtime::Step<#output> {
                    ::core::unreachable!("`#[flow]` reported errors for this fn")
                }
                fn state_name(&self) -> &'static str {
                    "Unavailable"
                }
            }
        }
    });
    out
}

/// A single-segment path `Flow` or `FlowLocals` in the fn would name the
/// types `#[flow]` generates next to the body, not the user's: say so
/// instead of letting rustc report a cycle or a type mismatch.
fn report_generated_names(item: &syn::ItemFn, errors: &mut Errors) {
    struct Finder<'e>(&'e mut Errors);
    impl Finder<'_> {
        fn check(&mut self, path: &syn::Path) {
            let Some(first) = path.segments.first() else {
                return;
            };
            if path.leading_colon.is_none()
                && (first.ident == "Flow" || first.ident == "FlowLocals")
            {
                self.0.error_at(
                    &first.ident,
                    format!(
                        "`{0}` here would name the `{0}` that `#[flow]` generates for this fn, not yours: refer to your type by its path (e.g. `crate::module::{0}`) or rename it",
                        first.ident
                    ),
                );
            }
        }
    }
    impl<'a> Visit<'a> for Finder<'_> {
        fn visit_type_path(&mut self, t: &'a syn::TypePath) {
            if t.qself.is_none() {
                self.check(&t.path);
            }
            syn::visit::visit_type_path(self, t);
        }
        fn visit_expr_path(&mut self, e: &'a syn::ExprPath) {
            if e.qself.is_none() && e.path.segments.len() > 1 {
                self.check(&e.path);
            }
            syn::visit::visit_expr_path(self, e);
        }
        fn visit_expr_struct(&mut self, e: &'a syn::ExprStruct) {
            self.check(&e.path);
            syn::visit::visit_expr_struct(self, e);
        }
        fn visit_item(&mut self, _: &'a syn::Item) {}
    }
    let mut f = Finder(errors);
    for input in &item.sig.inputs {
        f.visit_fn_arg(input);
    }
    f.visit_return_type(&item.sig.output);
    f.visit_block(&item.block);
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

#[cfg(test)]
mod tests {
    use super::{PathShifter, expand};
    use syn::visit_mut::VisitMut;

    fn expand_source(source: &str) -> String {
        expand(
            proc_macro2::TokenStream::new(),
            source.parse().expect("source parses"),
        )
        .to_string()
    }

    #[test]
    fn paths_relative_to_the_fn_shift_one_module_down() {
        let mut e: syn::Expr = syn::parse_quote!((self::a::b(), super::c::D, self_x, crate::e::f));
        PathShifter.visit_expr_mut(&mut e);
        let text = crate::pretty::pretty_tokens(&quote::quote!(#e));
        assert_eq!(
            text,
            "(super::a::b(), super::super::c::D, self_x, crate::e::f)"
        );
    }

    #[test]
    fn a_flow_with_errors_leaves_a_stub_callers_can_use() {
        let out = expand_source(
            "pub async fn f(ctx: &mut FlowContext, n: u32) -> Result<u64, FlowError> {
                let r: &u32 = &n;
                ctx.sleep(d).await;
                Ok(u64::from(*r))
            }",
        );
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(out.contains("is a reference kept across the `.await`"));
        // The fn with the same parameters, and a module whose `Flow` has
        // the same output type.
        assert!(out.contains("pub fn f (_ : u32) -> f :: Flow"), "{out}");
        assert!(out.contains("Unavailable"));
        assert!(out.contains("type Output = u64"));
    }

    #[test]
    fn a_user_type_named_like_a_generated_one_is_reported() {
        let out = expand_source(
            "async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
                let a: Flow = s.receive::<Flow>().await?.validate(Ok)?;
                let b: crate::m::FlowLocals = FlowLocals::new();
                let c: my::Flow = my::Flow::default();
                Ok(a.n + b.n + c.n)
            }",
        );
        assert_eq!(out.matches("would name the `Flow`").count(), 2, "{out}");
        assert_eq!(
            out.matches("would name the `FlowLocals`").count(),
            1,
            "{out}"
        );
    }
}
