//! Recognising the suspending operations. This is syntactic on purpose: the
//! macro must name the type stored in the checkpoint (a sub-flow's child
//! state) and must point a precise error at anything else that is awaited,
//! before the type checker runs.

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{Expr, Ident, Type};

/// A recognised `.await`ed operation.
#[derive(Clone)]
pub enum Op {
    /// `s.receive::<T>()` or `s.send_and_receive::<T>(&v)`; `ty` is `T` when
    /// written as a turbofish.
    Receive {
        /// The turbofish type.
        ty: Option<Type>,
        /// `send_and_receive` rather than `receive`.
        sends: bool,
    },
    /// `ctx.sleep(d)`.
    Sleep,
    /// `ctx.sub_flow(child)`; `child` is the child's state type, stored in
    /// the parent's variant.
    SubFlow {
        /// The child's state type (`path::child::Flow`).
        child: Type,
        /// The child's fn name in UpperCamelCase, for the variant name.
        name: String,
    },
}

impl Op {
    /// The default variant name for a suspension at this operation.
    pub fn default_state_name(&self) -> String {
        match self {
            Op::Receive { sends: false, .. } => "Receive".into(),
            Op::Receive { sends: true, .. } => "SendAndReceive".into(),
            Op::Sleep => "Sleep".into(),
            Op::SubFlow { name, .. } => format!("SubFlow{name}"),
        }
    }
}

const WHAT_CAN_BE_AWAITED: &str = "a flow can only `.await` `session.receive::<T>()`, `session.send_and_receive::<T>(&value)`, `ctx.sleep(duration)` or `ctx.sub_flow(child(..))`";

/// Classifies the operand of an `.await`. `local_type` gives the visible
/// type of a local passed to `ctx.sub_flow(local)`.
pub fn classify(
    operand: &Expr,
    ctx: &Ident,
    local_type: &dyn Fn(&Ident) -> Option<Type>,
) -> Result<Op, syn::Error> {
    match operand {
        Expr::MethodCall(m) => match m.method.to_string().as_str() {
            "receive" | "send_and_receive" => Ok(Op::Receive {
                ty: crate::analyse::turbofish_type(m),
                sends: m.method == "send_and_receive",
            }),
            "sleep" if is_ident(&m.receiver, ctx) => Ok(Op::Sleep),
            "sub_flow" if is_ident(&m.receiver, ctx) => {
                let Some(arg) = m.args.first().filter(|_| m.args.len() == 1) else {
                    return Err(syn::Error::new_spanned(
                        m,
                        "`ctx.sub_flow` takes one argument: the child flow, e.g. `ctx.sub_flow(child(a, b))`",
                    ));
                };
                if let Some(child) = crate::analyse::child_flow_path(arg) {
                    let name = child_fn_name(arg).unwrap_or_else(|| "Child".into());
                    return Ok(Op::SubFlow { child, name });
                }
                if let Expr::Path(p) = arg
                    && let Some(id) = p.path.get_ident()
                    && let Some(ty) = local_type(id)
                {
                    let name = upper_camel(&type_owner_name(&ty).unwrap_or_else(|| id.to_string()));
                    return Ok(Op::SubFlow { child: ty, name });
                }
                Err(syn::Error::new_spanned(
                    arg,
                    "the sub-flow's state type must be visible here, because the parent keeps the child's state in its checkpoint: pass the flow call directly (`ctx.sub_flow(path::child(args))`) or give the local a type (`let c: path::child::Flow = path::child(args);`)",
                ))
            }
            other => Err(not_an_operation(
                &format!("`.{other}(..)`"),
                m.method.span(),
                false,
            )),
        },
        Expr::Call(c) => {
            let name = match &*c.func {
                Expr::Path(p) => p.path.to_token_stream().to_string().replace(' ', ""),
                other => other.to_token_stream().to_string(),
            };
            let foreign = ["tokio", "async_std", "futures", "std", "core", "smol"]
                .iter()
                .any(|k| name.starts_with(&format!("{k}::")));
            Err(not_an_operation(
                &format!("`{name}(..)`"),
                c.func.span(),
                foreign,
            ))
        }
        Expr::Paren(p) => classify(&p.expr, ctx, local_type),
        Expr::Path(p) => Err(syn::Error::new_spanned(
            p,
            format!(
                "`{}` is not a flow operation: {WHAT_CAN_BE_AWAITED}; await the operation where it is created",
                p.to_token_stream()
            ),
        )),
        other => Err(syn::Error::new_spanned(
            other,
            format!("this is not a flow operation: {WHAT_CAN_BE_AWAITED}"),
        )),
    }
}

fn not_an_operation(what: &str, span: Span, foreign: bool) -> syn::Error {
    let message = if foreign {
        format!(
            "{what} is not a flow operation: {WHAT_CAN_BE_AWAITED}. A flow's state is checkpointed at every `.await`, so it cannot wait on an arbitrary future; to wait for time use `ctx.sleep(d)`"
        )
    } else {
        format!(
            "{what} is not a flow operation: mark the helper `#[flow]` and call it with `ctx.sub_flow(..)` ({WHAT_CAN_BE_AWAITED})"
        )
    };
    syn::Error::new(span, message)
}

fn is_ident(e: &Expr, id: &Ident) -> bool {
    matches!(e, Expr::Path(p) if p.path.is_ident(id))
}

fn child_fn_name(arg: &Expr) -> Option<String> {
    let Expr::Call(c) = arg else { return None };
    let Expr::Path(p) = &*c.func else { return None };
    Some(upper_camel(&p.path.segments.last()?.ident.to_string()))
}

/// For a written type `a::child::Flow`, the `child` part.
fn type_owner_name(ty: &Type) -> Option<String> {
    let Type::Path(tp) = ty else { return None };
    let n = tp.path.segments.len();
    if n >= 2 {
        Some(tp.path.segments[n - 2].ident.to_string())
    } else {
        Some(tp.path.segments.last()?.ident.to_string())
    }
}

/// `snake_case` to `UpperCamelCase`, for variant names.
pub fn upper_camel(s: &str) -> String {
    let mut out = String::new();
    let mut upper = true;
    for c in s.trim_start_matches("r#").chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Op, classify, upper_camel};
    use crate::pretty::pretty_tokens;
    use quote::ToTokens;
    use syn::{Ident, Type};

    /// Classifies the operand of `source.await`, with `c` as the context
    /// and `child: a::b::Flow` as the only typed local.
    fn op(source: &str) -> Result<Op, String> {
        let e: syn::Expr = syn::parse_str(source).expect("operand parses");
        let ctx = Ident::new("c", proc_macro2::Span::call_site());
        let local =
            |id: &Ident| -> Option<Type> { (id == "child").then(|| syn::parse_quote!(a::b::Flow)) };
        classify(&e, &ctx, &local).map_err(|e| e.to_string())
    }

    fn describe(op: &Op) -> String {
        match op {
            Op::Receive { ty, sends } => format!(
                "receive sends={sends} ty={}",
                ty.as_ref()
                    .map_or("?".into(), |t| pretty_tokens(&t.to_token_stream()))
            ),
            Op::Sleep => "sleep".into(),
            Op::SubFlow { child, name } => {
                format!(
                    "sub_flow {} {name}",
                    pretty_tokens(&child.to_token_stream())
                )
            }
        }
    }

    #[test]
    fn the_four_operations_are_recognised_with_what_is_stored() {
        let ok = |s: &str| describe(&op(s).expect("an operation"));
        assert_eq!(ok("s.receive::<u32>()"), "receive sends=false ty=u32");
        assert_eq!(ok("s.receive()"), "receive sends=false ty=?");
        assert_eq!(
            ok("s.send_and_receive::<Vec<u8>>(&x)"),
            "receive sends=true ty=Vec<u8>"
        );
        assert_eq!(ok("c.sleep(d)"), "sleep");
        assert_eq!(ok("(c.sleep(d))"), "sleep");
        assert_eq!(
            ok("c.sub_flow(signatures::collect_all(s, 1))"),
            "sub_flow signatures::collect_all::Flow CollectAll"
        );
        assert_eq!(ok("c.sub_flow(child)"), "sub_flow a::b::Flow B");
    }

    #[test]
    fn anything_else_awaited_is_refused_with_the_reason() {
        let err = |s: &str| op(s).err().expect("refused");
        assert!(err("tokio::time::sleep(d)").contains("to wait for time use `ctx.sleep(d)`"));
        assert!(err("helper(x)").contains("mark the helper `#[flow]`"));
        assert!(err("s.recv()").contains("`.recv(..)` is not a flow operation"));
        assert!(err("fut").contains("await the operation where it is created"));
        // `sleep` on something that is not the context is not the timer.
        assert!(err("other.sleep(d)").contains("is not a flow operation"));
        assert!(err("c.sub_flow(a, b)").contains("takes one argument"));
        assert!(err("c.sub_flow(untyped)").contains("sub-flow's state type must be visible"));
    }

    #[test]
    fn state_names_come_from_the_operation() {
        assert_eq!(
            Op::Receive {
                ty: None,
                sends: true
            }
            .default_state_name(),
            "SendAndReceive"
        );
        assert_eq!(Op::Sleep.default_state_name(), "Sleep");
        assert_eq!(upper_camel("collect_all_sigs"), "CollectAllSigs");
        assert_eq!(upper_camel("r#type"), "Type");
    }
}
