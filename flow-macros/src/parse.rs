//! Parsing: the `#[flow(..)]` arguments and the fn signature, checked
//! against the rules a flow's signature must follow (`docs/macro.md`, section 3).
//!
//! The body is not looked at here; [`crate::lower`] does that.

use crate::errors::Errors;
use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Token, Type};

/// The arguments of `#[flow(..)]`.
pub struct FlowArgs {
    /// `version = N`: sent with session initiations so a responder can
    /// refuse a protocol it does not speak. Default 1.
    pub version: u32,
    /// `name = "..."`: pins `Flow::NAME` (default: module path and fn
    /// name), so that moving or renaming the fn keeps its checkpoints and
    /// session initiations, and two builds of one flow can share a name.
    pub name: Option<syn::LitStr>,
}

/// The arguments `#[flow(..)]` takes, for error messages.
const ARGS_HELP: &str = "the arguments are `version = N` and `name = \"..\"`, e.g. `#[flow(version = 2, name = \"trade.buyer\")]`";

/// Parses `#[flow]` / `#[flow(version = N, name = "..")]`.
pub fn parse_args(attr: TokenStream, errors: &mut Errors) -> FlowArgs {
    let mut args = FlowArgs {
        version: 1,
        name: None,
    };
    if attr.is_empty() {
        return args;
    }
    let metas = match Punctuated::<syn::Meta, Token![,]>::parse_terminated.parse2(attr.clone()) {
        Ok(metas) => metas,
        Err(e) => {
            errors.error(
                e.span(),
                format!("cannot parse the `#[flow(..)]` arguments ({e}): {ARGS_HELP}"),
            );
            return args;
        }
    };
    let mut seen_version = false;
    for meta in metas {
        match &meta {
            syn::Meta::NameValue(nv) if nv.path.is_ident("version") => {
                if seen_version {
                    errors.error_at(&meta, "`version` is given twice: keep one");
                }
                seen_version = true;
                match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Int(n),
                        ..
                    }) => match n.base10_parse::<u32>() {
                        Ok(v) if v >= 1 => args.version = v,
                        _ => errors.error_at(
                            n,
                            "the flow version must be an integer from 1 to 4294967295, e.g. `version = 2`",
                        ),
                    },
                    other => errors.error_at(
                        other,
                        "the flow version must be an integer literal, e.g. `#[flow(version = 2)]`",
                    ),
                }
            }
            syn::Meta::NameValue(nv) if nv.path.is_ident("name") => {
                if args.name.is_some() {
                    errors.error_at(&meta, "`name` is given twice: keep one");
                }
                match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) if !s.value().trim().is_empty() => args.name = Some(s.clone()),
                    other => errors.error_at(
                        other,
                        "the flow name must be a non-empty string literal, e.g. `#[flow(name = \"trade.buyer\")]`",
                    ),
                }
            }
            _ => errors.error_at(&meta, format!("unknown `#[flow]` argument: {ARGS_HELP}")),
        }
    }
    args
}

/// One parameter of the flow after `ctx`: it becomes a field of the
/// `Start` state.
pub struct Param {
    /// The parameter's name.
    pub name: Ident,
    /// `mut name: T`.
    pub mutable: bool,
    /// Its declared type.
    pub ty: Type,
}

/// The checked signature of a flow fn.
pub struct FlowSig {
    /// The name the user gave the `&mut FlowContext` parameter.
    pub ctx: Ident,
    /// The other parameters, in order.
    pub params: Vec<Param>,
    /// `T` of `Result<T, FlowError>`.
    pub output: Type,
}

/// Checks the signature; `None` if it is unusable (errors recorded).
pub fn parse_sig(item: &ItemFn, errors: &mut Errors) -> Option<FlowSig> {
    let sig = &item.sig;
    let before = errors.len();
    if sig.asyncness.is_none() {
        errors.error(
            sig.fn_token.span,
            "a `#[flow]` must be an `async fn`: write `pub async fn name(ctx: &mut FlowContext, ..) -> Result<T, FlowError>`",
        );
    }
    if let Some(c) = &sig.constness {
        errors.error(c.span, "a `#[flow]` cannot be `const`: remove `const`");
    }
    if let Some(u) = &sig.unsafety {
        errors.error(u.span, "a `#[flow]` cannot be `unsafe`: remove `unsafe` and use an `unsafe` block inside if needed");
    }
    if let Some(abi) = &sig.abi {
        errors.error_at(abi, "a `#[flow]` cannot have an ABI: remove it");
    }
    if let Some(v) = &sig.variadic {
        errors.error_at(v, "a `#[flow]` cannot be variadic");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.error_at(
            &sig.generics,
            "a `#[flow]` cannot be generic: its state is stored by name and shape, so every type must be concrete; write one flow per concrete type (a generic helper fn called from each is fine)",
        );
    }

    let output = match &sig.output {
        ReturnType::Type(_, ty) => result_ok_type(ty),
        ReturnType::Default => None,
    };
    if output.is_none() {
        let span = match &sig.output {
            ReturnType::Type(_, ty) => ty.span(),
            ReturnType::Default => sig.paren_token.span.close(),
        };
        errors.error(
            span,
            "a `#[flow]` must return `Result<T, FlowError>`: the error is what its counterparties are told when it fails",
        );
    }

    let mut inputs = sig.inputs.iter();
    let ctx = match inputs.next() {
        Some(FnArg::Typed(pt)) if is_flow_context_ref(&pt.ty) => match &*pt.pat {
            Pat::Ident(pi) if pi.subpat.is_none() && pi.by_ref.is_none() => Some(pi.ident.clone()),
            other => {
                errors.error_at(
                    other,
                    "name the context parameter with a plain name, e.g. `ctx: &mut FlowContext`",
                );
                None
            }
        },
        Some(FnArg::Typed(pt)) if mentions_flow_context(&pt.ty) => {
            errors.error_at(
                &pt.ty,
                "the context parameter must be `&mut FlowContext` (a flow never owns or shares the context: it is lent for one step)",
            );
            None
        }
        Some(FnArg::Receiver(r)) => {
            errors.error_at(r, "a `#[flow]` cannot take `self`: make it a free fn whose first parameter is `ctx: &mut FlowContext`");
            None
        }
        _ => {
            let later = sig.inputs.iter().skip(1).find_map(|a| match a {
                FnArg::Typed(pt) if mentions_flow_context(&pt.ty) => Some(pt),
                _ => None,
            });
            match later {
                Some(pt) => errors.error_at(
                    pt,
                    "the context parameter must come first: move `ctx: &mut FlowContext` to the front of the parameter list",
                ),
                None => errors.error(
                    sig.paren_token.span.join(),
                    "a `#[flow]` needs the node context: add `ctx: &mut FlowContext` as the first parameter",
                ),
            }
            None
        }
    };

    let mut params = Vec::new();
    for arg in inputs {
        let FnArg::Typed(pt) = arg else { continue };
        if mentions_flow_context(&pt.ty) {
            // Without a context first, "move it to the front" was said.
            if ctx.is_some() {
                errors.error_at(
                    pt,
                    "only the first parameter may be the `FlowContext`: a flow has one context",
                );
            }
            continue;
        }
        match &*pt.pat {
            Pat::Ident(pi) if pi.subpat.is_none() && pi.by_ref.is_none() => params.push(Param {
                name: pi.ident.clone(),
                mutable: pi.mutability.is_some(),
                ty: (*pt.ty).clone(),
            }),
            other => errors.error_at(
                other,
                "flow parameters must be plain names (they become fields of the `Start` state): bind the whole value and destructure it with `let` in the body",
            ),
        }
        if contains_reference(&pt.ty) {
            errors.error_at(
                &pt.ty,
                "a flow parameter cannot be a reference: it is stored in the flow's checkpoint; take it by value",
            );
        }
        if contains_impl_trait(&pt.ty) {
            errors.error_at(
                &pt.ty,
                "a flow parameter cannot be `impl Trait`: it is stored in the flow's checkpoint, whose every type must be named; take a concrete type",
            );
        }
    }
    if errors.len() != before {
        return None;
    }
    Some(FlowSig {
        ctx: ctx?,
        params,
        output: output?,
    })
}

/// `T` if `ty` is `Result<T, FlowError>` (any path to either).
pub fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(tp) = ty else { return None };
    let last = tp.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    let ok = types.next()?.clone();
    let err = types.next()?;
    match err {
        Type::Path(ep) if ep.path.segments.last()?.ident == "FlowError" => Some(ok),
        _ => None,
    }
}

fn is_flow_context_ref(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => r.mutability.is_some() && is_path_named(&r.elem, "FlowContext"),
        _ => false,
    }
}

fn mentions_flow_context(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => mentions_flow_context(&r.elem),
        Type::Paren(p) => mentions_flow_context(&p.elem),
        other => is_path_named(other, "FlowContext"),
    }
}

fn is_path_named(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(tp) if tp.path.segments.last().is_some_and(|s| s.ident == name))
}

/// Whether `ty` contains `impl Trait`.
fn contains_impl_trait(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'a> syn::visit::Visit<'a> for Finder {
        fn visit_type_impl_trait(&mut self, _: &'a syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut f = Finder(false);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

/// Whether `ty` contains a reference.
pub fn contains_reference(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'a> syn::visit::Visit<'a> for Finder {
        fn visit_type_reference(&mut self, _: &'a syn::TypeReference) {
            self.0 = true;
        }
    }
    let mut f = Finder(false);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

#[cfg(test)]
mod tests {
    use super::{contains_impl_trait, contains_reference, parse_args, parse_sig, result_ok_type};
    use crate::errors::Errors;
    use quote::ToTokens;

    fn args(text: &str) -> (super::FlowArgs, Vec<String>) {
        let mut errors = Errors::default();
        let args = parse_args(text.parse().expect("tokens"), &mut errors);
        (args, errors.messages())
    }

    fn sig(source: &str) -> (Option<super::FlowSig>, Vec<String>) {
        let item: syn::ItemFn = syn::parse_str(source).expect("test fn parses");
        let mut errors = Errors::default();
        let sig = parse_sig(&item, &mut errors);
        (sig, errors.messages())
    }

    fn text(t: &impl ToTokens) -> String {
        crate::pretty::pretty_tokens(&t.to_token_stream())
    }

    #[test]
    fn arguments_default_to_version_one_and_the_module_path() {
        let (a, errors) = args("");
        assert!(errors.is_empty());
        assert_eq!(a.version, 1);
        assert!(a.name.is_none());
        let (a, errors) = args(r#"version = 3, name = "trade.buyer""#);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(a.version, 3);
        assert_eq!(a.name.map(|n| n.value()).as_deref(), Some("trade.buyer"));
    }

    #[test]
    fn every_bad_argument_is_reported_in_one_pass() {
        let (_, errors) = args(r#"version = 0, version = 2, name = "", colour = 1"#);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].contains("from 1 to"));
        assert!(errors[1].contains("`version` is given twice"));
        assert!(errors[2].contains("non-empty string"));
        assert!(errors[3].contains("unknown `#[flow]` argument"));
    }

    #[test]
    fn a_valid_signature_gives_ctx_params_and_output() {
        let (s, errors) = sig(
            "async fn f(cx: &mut FlowContext, peer: Party, mut n: u32) -> Result<Vec<u8>, FlowError> { todo() }",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let s = s.expect("usable signature");
        assert_eq!(s.ctx, "cx");
        let params: Vec<(String, bool, String)> = s
            .params
            .iter()
            .map(|p| (p.name.to_string(), p.mutable, text(&p.ty)))
            .collect();
        assert_eq!(
            params,
            [
                ("peer".to_string(), false, "Party".to_string()),
                ("n".to_string(), true, "u32".to_string())
            ]
        );
        assert_eq!(text(&s.output), "Vec<u8>");
    }

    #[test]
    fn a_signature_breaking_the_rules_is_refused_with_each_reason() {
        let (s, errors) = sig("fn f(peer: Party) -> u32 { 1 }");
        assert!(s.is_none());
        assert!(errors.iter().any(|e| e.contains("must be an `async fn`")));
        assert!(errors.len() >= 2, "{errors:?}");
        let (s, errors) =
            sig("async fn f<T>(ctx: &mut FlowContext, v: T) -> Result<T, FlowError> { Ok(v) }");
        assert!(s.is_none() && !errors.is_empty());
    }

    #[test]
    fn the_result_type_must_be_a_result_with_flow_error() {
        let ok = |t: &str| result_ok_type(&syn::parse_str(t).unwrap()).map(|t| text(&t));
        assert_eq!(ok("Result<u64, FlowError>").as_deref(), Some("u64"));
        assert_eq!(
            ok("std::result::Result<(), flow_runtime::FlowError>").as_deref(),
            Some("()")
        );
        assert_eq!(ok("Result<u64, String>"), None);
        assert_eq!(ok("Option<u64>"), None);
        assert_eq!(ok("Result<u64>"), None);
    }

    #[test]
    fn references_and_impl_trait_are_found_anywhere_in_a_type() {
        let ty = |t: &str| syn::parse_str::<syn::Type>(t).unwrap();
        assert!(contains_reference(&ty("Vec<&'static str>")));
        assert!(contains_reference(&ty("(u32, &mut [u8])")));
        assert!(!contains_reference(&ty("Vec<Box<str>>")));
        assert!(contains_impl_trait(&ty("Vec<impl Fn()>")));
        assert!(!contains_impl_trait(&ty("Box<dyn Fn()>")));
    }
}
