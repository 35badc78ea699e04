//! Analysis of the user's code without changing it: which names an
//! expression reads (scope-aware, so a closure parameter or an inner `let`
//! that shadows a local is not mistaken for it), which bindings a pattern
//! introduces, the types the macro can see, and which expressions must be
//! lowered (they contain an `.await`, or a `break`/`continue` that leaves
//! them).
//!
//! Precision matters here: a read counted where there is none makes a
//! moved local look live, and the generated code would then save a moved
//! value. Macro invocations are opaque token streams, so for them every
//! identifier (and every `{name}` captured by a format string) counts as a
//! read — conservative, and documented in `docs/macro.md`.

use proc_macro2::{TokenStream, TokenTree};
use std::collections::HashSet;
use syn::visit::{self, Visit};
use syn::{Expr, Ident, Pat, Type};

/// A binding found in a pattern.
pub struct PatBinding {
    /// The bound name.
    pub name: Ident,
    /// `mut name`.
    pub mutable: bool,
    /// Its type, when the pattern carries one.
    pub ty: Option<Type>,
    /// Whether the name was the whole pattern (`let x`, `Some(x)` is not).
    pub whole: bool,
}

/// The bindings `pat` introduces, with types taken from `ty` where the
/// pattern's structure allows (`let (a, b): (u32, u64)`).
pub fn pattern_bindings(pat: &Pat, ty: Option<&Type>) -> Vec<PatBinding> {
    let mut out = Vec::new();
    collect_pat(pat, ty, true, &mut out);
    out
}

fn collect_pat(pat: &Pat, ty: Option<&Type>, whole: bool, out: &mut Vec<PatBinding>) {
    match pat {
        Pat::Ident(pi) => {
            // `None`, `Ordering::Less`-style unit variants and constants are
            // parsed as identifiers; by convention they are capitalised.
            let name = pi.ident.to_string();
            let looks_constant = pi.subpat.is_none()
                && pi.mutability.is_none()
                && pi.by_ref.is_none()
                && name.chars().next().is_some_and(|c| c.is_uppercase());
            if !looks_constant {
                out.push(PatBinding {
                    name: pi.ident.clone(),
                    mutable: pi.mutability.is_some(),
                    ty: if pi.by_ref.is_none() {
                        ty.cloned()
                    } else {
                        None
                    },
                    whole,
                });
            }
            if let Some((_, sub)) = &pi.subpat {
                collect_pat(sub, ty, false, out);
            }
        }
        Pat::Type(pt) => collect_pat(&pt.pat, Some(&pt.ty), whole, out),
        Pat::Paren(p) => collect_pat(&p.pat, ty, whole, out),
        Pat::Tuple(t) => {
            let elems: Option<Vec<&Type>> = match ty {
                Some(Type::Tuple(tt)) if tt.elems.len() == t.elems.len() => {
                    Some(tt.elems.iter().collect())
                }
                _ => None,
            };
            for (i, p) in t.elems.iter().enumerate() {
                collect_pat(p, elems.as_ref().map(|e| e[i]), false, out);
            }
        }
        Pat::TupleStruct(t) => {
            // `Some(x): Option<T>`, `Ok(x): Result<T, E>`, `Err(e): Result<T, E>`:
            // the payload's type is a generic argument of the written type.
            let payload = match (t.path.segments.last(), ty) {
                (Some(seg), Some(ty)) if t.elems.len() == 1 => {
                    let index = match seg.ident.to_string().as_str() {
                        "Some" => Some(("Option", 0)),
                        "Ok" => Some(("Result", 0)),
                        "Err" => Some(("Result", 1)),
                        _ => None,
                    };
                    index.and_then(|(outer, i)| generic_arg(ty, outer, i))
                }
                _ => None,
            };
            t.elems
                .iter()
                .for_each(|p| collect_pat(p, payload.as_ref(), false, out))
        }
        Pat::Struct(s) => s
            .fields
            .iter()
            .for_each(|f| collect_pat(&f.pat, None, false, out)),
        Pat::Slice(s) => s
            .elems
            .iter()
            .for_each(|p| collect_pat(p, None, false, out)),
        Pat::Reference(r) => collect_pat(&r.pat, None, false, out),
        Pat::Or(o) => {
            if let Some(first) = o.cases.first() {
                collect_pat(first, None, false, out);
            }
        }
        _ => {}
    }
}

/// Names an expression or statement reads or assigns, with the scoping of
/// the code inside it taken into account.
#[derive(Default)]
pub struct Refs {
    /// Names read (a compound assignment `x += 1` reads too).
    pub uses: Vec<Ident>,
    /// Names only assigned (`x = ..`), which makes them neither read nor
    /// (for liveness) definitely written, since the assignment may be
    /// conditional.
    pub assigned: Vec<Ident>,
}

/// The free names of any syntax node.
pub fn refs_of<T: ?Sized>(node: &T, visit_fn: impl FnOnce(&mut RefWalker, &T)) -> Refs {
    let mut w = RefWalker {
        scopes: vec![HashSet::new()],
        refs: Refs::default(),
    };
    visit_fn(&mut w, node);
    w.refs
}

/// The free names of an expression.
pub fn expr_refs(e: &Expr) -> Refs {
    refs_of(e, |w, e| w.visit_expr(e))
}

/// The free names of a match guard, which sees its arm's pattern bindings.
pub fn guard_refs(pat: &Pat, guard: &Expr) -> Refs {
    let mut w = RefWalker {
        scopes: vec![HashSet::new()],
        refs: Refs::default(),
    };
    w.bind_pat(pat);
    w.visit_expr(guard);
    w.refs
}

/// The scope-aware walker behind [`refs_of`].
pub struct RefWalker {
    scopes: Vec<HashSet<String>>,
    refs: Refs,
}

impl RefWalker {
    fn bound(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.contains(name))
    }

    fn bind_pat(&mut self, pat: &Pat) {
        // Range patterns and constants inside patterns are reads.
        visit::visit_pat(self, pat);
        let names: Vec<String> = pattern_bindings(pat, None)
            .into_iter()
            .map(|b| b.name.to_string())
            .collect();
        if let Some(top) = self.scopes.last_mut() {
            top.extend(names);
        }
    }

    fn use_ident(&mut self, ident: &Ident) {
        if !self.bound(&ident.to_string()) {
            self.refs.uses.push(ident.clone());
        }
    }

    fn scan_tokens(&mut self, tokens: TokenStream) {
        let mut prev_dot = false;
        let mut iter = tokens.into_iter().peekable();
        while let Some(tt) = iter.next() {
            match &tt {
                TokenTree::Ident(id) => {
                    let next_is_bang_or_path = match iter.peek() {
                        Some(TokenTree::Punct(p)) => p.as_char() == '!' || p.as_char() == ':',
                        _ => false,
                    };
                    if !prev_dot && !next_is_bang_or_path {
                        self.use_ident(id);
                    }
                    prev_dot = false;
                }
                TokenTree::Punct(p) => prev_dot = p.as_char() == '.',
                TokenTree::Group(g) => {
                    self.scan_tokens(g.stream());
                    prev_dot = false;
                }
                TokenTree::Literal(lit) => {
                    for name in format_captures(&lit.to_string()) {
                        self.use_ident(&Ident::new(&name, lit.span()));
                    }
                    prev_dot = false;
                }
            }
        }
    }
}

/// The `{name}` / `{name:?}` captures of a string literal's source text.
fn format_captures(lit: &str) -> Vec<String> {
    if !lit.starts_with('"') && !lit.starts_with('r') {
        return Vec::new();
    }
    let mut out = Vec::new();
    let chars: Vec<char> = lit.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '{' {
            if chars.get(i + 1) == Some(&'{') {
                i += 2;
                continue;
            }
            let start = i + 1;
            let mut j = start;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            if j > start
                && matches!(chars.get(j), Some('}') | Some(':'))
                && !chars[start].is_ascii_digit()
            {
                out.push(chars[start..j].iter().collect());
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

impl<'a> Visit<'a> for RefWalker {
    fn visit_expr_path(&mut self, p: &'a syn::ExprPath) {
        if p.qself.is_none()
            && let Some(id) = p.path.get_ident()
        {
            self.use_ident(id);
        }
        visit::visit_expr_path(self, p);
    }

    fn visit_expr_assign(&mut self, a: &'a syn::ExprAssign) {
        if let Expr::Path(p) = &*a.left
            && let Some(id) = p.path.get_ident()
        {
            if !self.bound(&id.to_string()) {
                self.refs.assigned.push(id.clone());
            }
            self.visit_expr(&a.right);
            return;
        }
        visit::visit_expr_assign(self, a);
    }

    fn visit_block(&mut self, b: &'a syn::Block) {
        self.scopes.push(HashSet::new());
        visit::visit_block(self, b);
        self.scopes.pop();
    }

    fn visit_local(&mut self, l: &'a syn::Local) {
        if let Some(init) = &l.init {
            self.visit_expr(&init.expr);
            if let Some((_, diverge)) = &init.diverge {
                self.visit_expr(diverge);
            }
        }
        self.bind_pat(&l.pat);
    }

    fn visit_expr_closure(&mut self, c: &'a syn::ExprClosure) {
        self.scopes.push(HashSet::new());
        for p in &c.inputs {
            self.bind_pat(p);
        }
        self.visit_expr(&c.body);
        self.scopes.pop();
    }

    fn visit_arm(&mut self, arm: &'a syn::Arm) {
        self.scopes.push(HashSet::new());
        self.bind_pat(&arm.pat);
        if let Some((_, g)) = &arm.guard {
            self.visit_expr(g);
        }
        self.visit_expr(&arm.body);
        self.scopes.pop();
    }

    fn visit_expr_for_loop(&mut self, f: &'a syn::ExprForLoop) {
        self.visit_expr(&f.expr);
        self.scopes.push(HashSet::new());
        self.bind_pat(&f.pat);
        self.visit_block(&f.body);
        self.scopes.pop();
    }

    fn visit_expr_if(&mut self, i: &'a syn::ExprIf) {
        self.scopes.push(HashSet::new());
        self.visit_expr(&i.cond);
        self.visit_block(&i.then_branch);
        self.scopes.pop();
        if let Some((_, e)) = &i.else_branch {
            self.visit_expr(e);
        }
    }

    fn visit_expr_while(&mut self, w: &'a syn::ExprWhile) {
        self.scopes.push(HashSet::new());
        self.visit_expr(&w.cond);
        self.visit_block(&w.body);
        self.scopes.pop();
    }

    fn visit_expr_let(&mut self, l: &'a syn::ExprLet) {
        self.visit_expr(&l.expr);
        self.bind_pat(&l.pat);
    }

    fn visit_item(&mut self, _: &'a syn::Item) {
        // Nested items cannot capture locals.
    }

    fn visit_macro(&mut self, m: &'a syn::Macro) {
        self.scan_tokens(m.tokens.clone());
    }
}

/// Whether `tokens` (a macro's input) contain `.await`.
pub fn tokens_contain_await(tokens: &TokenStream) -> bool {
    let mut prev_dot = false;
    for tt in tokens.clone() {
        match tt {
            TokenTree::Ident(id) if prev_dot && id == "await" => return true,
            TokenTree::Punct(p) => {
                prev_dot = p.as_char() == '.';
                continue;
            }
            TokenTree::Group(g) if tokens_contain_await(&g.stream()) => return true,
            _ => {}
        }
        prev_dot = false;
    }
    false
}

/// Whether an expression must be lowered rather than emitted verbatim: it
/// contains an `.await` (anywhere, even in a closure — the lowering then
/// reports it), or a `break`/`continue` that leaves it (its target is a
/// lowered loop, which only the lowering can jump to).
pub fn needs_lowering(e: &Expr) -> bool {
    let mut f = LoweringFinder {
        found: false,
        loop_depth: 0,
        labels: Vec::new(),
    };
    f.visit_expr(e);
    f.found
}

/// Whether a statement contains `.await` anywhere (a `let`'s initialiser
/// or `else` included).
pub fn stmt_contains_await(s: &syn::Stmt) -> bool {
    match s {
        syn::Stmt::Local(l) => l.init.as_ref().is_some_and(|i| {
            contains_await(&i.expr) || i.diverge.as_ref().is_some_and(|(_, d)| contains_await(d))
        }),
        syn::Stmt::Expr(e, _) => contains_await(e),
        syn::Stmt::Macro(m) => tokens_contain_await(&m.mac.tokens),
        syn::Stmt::Item(_) => false,
    }
}

/// Whether an expression contains `.await` anywhere (closures included).
pub fn contains_await(e: &Expr) -> bool {
    struct F(bool);
    impl<'a> Visit<'a> for F {
        fn visit_expr_await(&mut self, _: &'a syn::ExprAwait) {
            self.0 = true;
        }
        fn visit_macro(&mut self, m: &'a syn::Macro) {
            if tokens_contain_await(&m.tokens) {
                self.0 = true;
            }
        }
        fn visit_item(&mut self, _: &'a syn::Item) {}
    }
    let mut f = F(false);
    f.visit_expr(e);
    f.0
}

struct LoweringFinder {
    found: bool,
    loop_depth: usize,
    labels: Vec<String>,
}

impl LoweringFinder {
    fn escapes(&self, label: &Option<syn::Lifetime>) -> bool {
        match label {
            None => self.loop_depth == 0,
            Some(l) => !self.labels.contains(&l.ident.to_string()),
        }
    }
    fn in_loop(&mut self, label: &Option<syn::Label>, f: impl FnOnce(&mut Self)) {
        self.loop_depth += 1;
        if let Some(l) = label {
            self.labels.push(l.name.ident.to_string());
        }
        f(self);
        if label.is_some() {
            self.labels.pop();
        }
        self.loop_depth -= 1;
    }
}

impl<'a> Visit<'a> for LoweringFinder {
    fn visit_expr_await(&mut self, _: &'a syn::ExprAwait) {
        self.found = true;
    }
    fn visit_expr_break(&mut self, b: &'a syn::ExprBreak) {
        if self.escapes(&b.label) {
            self.found = true;
        }
        visit::visit_expr_break(self, b);
    }
    fn visit_expr_continue(&mut self, c: &'a syn::ExprContinue) {
        if self.escapes(&c.label) {
            self.found = true;
        }
    }
    fn visit_expr_loop(&mut self, l: &'a syn::ExprLoop) {
        self.in_loop(&l.label, |s| visit::visit_expr_loop(s, l));
    }
    fn visit_expr_while(&mut self, w: &'a syn::ExprWhile) {
        self.in_loop(&w.label, |s| visit::visit_expr_while(s, w));
    }
    fn visit_expr_for_loop(&mut self, f: &'a syn::ExprForLoop) {
        self.in_loop(&f.label, |s| visit::visit_expr_for_loop(s, f));
    }
    fn visit_expr_block(&mut self, b: &'a syn::ExprBlock) {
        if let Some(l) = &b.label {
            self.labels.push(l.name.ident.to_string());
            visit::visit_expr_block(self, b);
            self.labels.pop();
        } else {
            visit::visit_expr_block(self, b);
        }
    }
    fn visit_expr_closure(&mut self, c: &'a syn::ExprClosure) {
        // A `break` inside a closure cannot leave it; an `.await` is reported.
        if contains_await(&c.body) {
            self.found = true;
        }
    }
    fn visit_expr_async(&mut self, a: &'a syn::ExprAsync) {
        let _ = a;
        self.found = true;
    }
    fn visit_macro(&mut self, m: &'a syn::Macro) {
        if tokens_contain_await(&m.tokens) {
            self.found = true;
        }
    }
    fn visit_item(&mut self, _: &'a syn::Item) {}
}

/// Whether evaluating `e` later than written cannot change what the flow
/// does: literals, paths, field accesses and references of those. Code
/// evaluated *before* an `.await` in the same expression runs only after the
/// flow resumes in the generated machine, so it must be of this kind.
pub fn is_pure(e: &Expr) -> bool {
    match e {
        Expr::Lit(_) | Expr::Path(_) => true,
        Expr::Field(f) => is_pure(&f.base),
        Expr::Reference(r) => is_pure(&r.expr),
        Expr::Paren(p) => is_pure(&p.expr),
        Expr::Group(g) => is_pure(&g.expr),
        Expr::Tuple(t) => t.elems.iter().all(is_pure),
        Expr::Cast(c) => is_pure(&c.expr),
        Expr::Unary(u) => is_pure(&u.expr),
        _ => false,
    }
}

/// The type of `init`, when the macro can see it syntactically. `env` gives
/// the visible type of a local by name.
pub fn infer_type(init: &Expr, env: &dyn Fn(&Ident) -> Option<Type>) -> Option<Type> {
    match init {
        Expr::Lit(l) => match &l.lit {
            syn::Lit::Int(i) if !i.suffix().is_empty() => ident_type(i.suffix()),
            syn::Lit::Float(f) if !f.suffix().is_empty() => ident_type(f.suffix()),
            syn::Lit::Bool(_) => ident_type("bool"),
            syn::Lit::Char(_) => ident_type("char"),
            _ => None,
        },
        Expr::Struct(s) if s.qself.is_none() && !s.path.is_ident("Self") => {
            Some(Type::Path(syn::TypePath {
                qself: None,
                path: s.path.clone(),
            }))
        }
        Expr::Cast(c) => Some((*c.ty).clone()),
        Expr::Paren(p) => infer_type(&p.expr, env),
        Expr::Group(g) => infer_type(&g.expr, env),
        Expr::Path(p) => p.path.get_ident().and_then(env),
        Expr::MethodCall(m) => {
            let method = m.method.to_string();
            match method.as_str() {
                "initiate_flow" => Some(syn::parse_quote!(::flow_runtime::FlowSession)),
                "clone" if m.args.is_empty() => infer_type(&m.receiver, env),
                "to_string" | "to_owned" if matches!(&*m.receiver, Expr::Lit(l) if matches!(l.lit, syn::Lit::Str(_))) => {
                    ident_type("String")
                }
                "len" if m.args.is_empty() => ident_type("usize"),
                "validate" if m.args.len() == 1 && is_ok_path(&m.args[0]) => {
                    untrustworthy_inner(&m.receiver)
                }
                _ => None,
            }
        }
        Expr::Try(t) => match &*t.expr {
            Expr::Await(a) => awaited_ok_type(&a.base),
            Expr::MethodCall(m)
                if m.method == "validate" && m.args.len() == 1 && is_ok_path(&m.args[0]) =>
            {
                untrustworthy_inner(&m.receiver)
            }
            _ => None,
        },
        Expr::Call(c) => {
            let Expr::Path(p) = &*c.func else { return None };
            let segs: Vec<String> = p
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect();
            match segs
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["String", "new" | "from"] => ident_type("String"),
                _ => None,
            }
        }
        _ => None,
    }
}

fn is_ok_path(e: &Expr) -> bool {
    matches!(e, Expr::Path(p) if p.path.is_ident("Ok"))
}

/// `T` for `X.receive::<T>().await?` (the `Untrustworthy<T>`'s payload).
fn untrustworthy_inner(e: &Expr) -> Option<Type> {
    let Expr::Try(t) = e else { return None };
    let Expr::Await(a) = &*t.expr else {
        return None;
    };
    let Expr::MethodCall(m) = &*a.base else {
        return None;
    };
    if m.method != "receive" && m.method != "send_and_receive" {
        return None;
    }
    turbofish_type(m)
}

/// The success type of an awaited operation, when visible.
fn awaited_ok_type(op: &Expr) -> Option<Type> {
    let Expr::MethodCall(m) = op else { return None };
    match m.method.to_string().as_str() {
        "receive" | "send_and_receive" => {
            let t = turbofish_type(m)?;
            Some(syn::parse_quote!(::flow_runtime::Untrustworthy<#t>))
        }
        "sub_flow" => {
            let child = child_flow_path(m.args.first()?)?;
            Some(syn::parse_quote!(<#child as ::flow_runtime::Flow>::Output))
        }
        _ => None,
    }
}

/// The `T` of `.method::<T>(..)`.
pub fn turbofish_type(m: &syn::ExprMethodCall) -> Option<Type> {
    let tf = m.turbofish.as_ref()?;
    if tf.args.len() != 1 {
        return None;
    }
    match tf.args.first()? {
        syn::GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}

/// `path::child::Flow` for a call `path::child(..)`: a flow fn and its
/// module share a name, so the call path names the child's state type.
pub fn child_flow_path(arg: &Expr) -> Option<Type> {
    let Expr::Call(c) = arg else { return None };
    let Expr::Path(p) = &*c.func else { return None };
    if p.qself.is_some() || p.path.segments.iter().any(|s| !s.arguments.is_empty()) {
        return None;
    }
    let mut path = p.path.clone();
    path.segments.push(syn::parse_quote!(Flow));
    Some(Type::Path(syn::TypePath { qself: None, path }))
}

/// The `index`th type argument of `ty` when `ty` is written `outer<..>`
/// (`Option<u64>`, `std::option::Option<u64>`).
fn generic_arg(ty: &Type, outer: &str, index: usize) -> Option<Type> {
    let Type::Path(tp) = ty else { return None };
    let last = tp.path.segments.last()?;
    if last.ident != outer {
        return None;
    }
    let syn::PathArguments::AngleBracketed(a) = &last.arguments else {
        return None;
    };
    match a.args.iter().nth(index)? {
        syn::GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}

fn ident_type(name: &str) -> Option<Type> {
    syn::parse_str(name).ok()
}

/// The element type of iterating over a value of type `ty`, when it is a
/// `Vec<T>` (or a `Range<T>`-like written type).
pub fn vec_element_type(ty: &Type) -> Option<Type> {
    let Type::Path(tp) = ty else { return None };
    let last = tp.path.segments.last()?;
    if last.ident != "Vec" && last.ident != "VecDeque" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(a) = &last.arguments else {
        return None;
    };
    match a.args.first()? {
        syn::GenericArgument::Type(t) if a.args.len() == 1 => Some(t.clone()),
        _ => None,
    }
}
