//! The state graph: `Flow::STATE_GRAPH`, the flow's states and the
//! transitions between them as a constant `flow_runtime::graph::StateGraph`,
//! from which the runtime draws the flow (Mermaid, DOT, SVG).
//!
//! A transition is a path through the lowered blocks from where one state
//! resumes (or from the entry, for `Start`) to the next suspension point
//! (or to a `return`, for `Done`), without passing another suspension. Its
//! label lists the branches the path takes, in order: the notes `lower`
//! put on the blocks an `if`, `while`, `for`, `match` or `let ... else`
//! branches to. Paths that differ only in blocks with no note are one
//! transition. A `return` inside code kept verbatim (an `if` with no
//! `.await` in it) is a transition to `Done` labelled `return`; an error
//! returned by `?` is not drawn.

use crate::cfg::{BindingId, BlockId, Cfg, PieceKind, Term};
use crate::liveness::{Liveness, successors};
use crate::ops::Op;
use crate::pretty::pretty_tokens;
use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use std::collections::{BTreeSet, HashMap};
use syn::{Ident, Type};

/// Paths followed from one state before the search gives up refining
/// labels (many `if`s in a row without a suspension between them would
/// otherwise give exponentially many paths); the targets are still all
/// found, reached with the label `…`.
const PATH_BUDGET: usize = 4096;

/// A state, as the generator knows it.
pub struct GraphState<'a> {
    /// The variant's name.
    pub name: &'a Ident,
    /// Its doc line.
    pub doc: &'a str,
    /// Stored fields: the binding, its field name and its type.
    pub fields: Vec<(BindingId, String, Type)>,
    /// Its suspension point (`None` for `Start`).
    pub site: Option<usize>,
    /// The child flow's state type, for a sub-flow.
    pub child: Option<&'a Type>,
}

/// One transition: from a state to a state (`Done` included), with the
/// branch notes of its path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Transition {
    /// The state it leaves.
    pub from: String,
    /// The state it enters.
    pub to: String,
    /// The branches taken, in order.
    pub when: Vec<String>,
}

/// Where a path from a block leads next.
enum Target {
    Site(usize),
    Done,
}

/// The transitions from every state. `state_of_site` names the state of
/// each reachable suspension point.
pub fn transitions(
    cfg: &Cfg,
    live: &Liveness,
    state_of_site: &HashMap<usize, String>,
) -> Vec<Transition> {
    let mut starts: Vec<(String, BlockId)> = vec![("Start".into(), 0)];
    for (i, site) in cfg.sites.iter().enumerate() {
        if let Some(name) = state_of_site.get(&i) {
            starts.push((name.clone(), site.resume));
        }
    }
    let mut out = Vec::new();
    for (from, block) in starts {
        if !live.reachable[block] {
            continue;
        }
        let mut found: Vec<(Target, Vec<String>)> = Vec::new();
        let mut budget = PATH_BUDGET;
        let complete = walk(
            cfg,
            block,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut found,
            &mut budget,
        );
        if !complete {
            // Too many paths: every target, without their conditions.
            found.clear();
            for target in targets(cfg, block) {
                found.push((target, vec!["…".into()]));
            }
        }
        let mut seen = BTreeSet::new();
        for (target, when) in found {
            let to = match target {
                Target::Done => "Done".to_string(),
                Target::Site(i) => match state_of_site.get(&i) {
                    Some(name) => name.clone(),
                    None => continue,
                },
            };
            let t = Transition {
                from: from.clone(),
                to,
                when,
            };
            if seen.insert(t.clone()) {
                out.push(t);
            }
        }
    }
    out
}

/// Follows every path from `b` (with `path` the blocks on the way and
/// `notes` the branch notes so far) to the next suspension or return.
/// `false` when the budget ran out.
fn walk(
    cfg: &Cfg,
    b: BlockId,
    path: &mut Vec<BlockId>,
    notes: &mut Vec<String>,
    found: &mut Vec<(Target, Vec<String>)>,
    budget: &mut usize,
) -> bool {
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    if path.contains(&b) {
        // A loop that does not suspend: its paths are those already taken.
        return true;
    }
    let Some(term) = &cfg.blocks[b].term else {
        return true;
    };
    if returns_early(cfg, b) {
        let mut when = notes.clone();
        when.push("return".into());
        found.push((Target::Done, when));
    }
    match term {
        Term::Suspend { site, .. } => {
            found.push((Target::Site(*site), notes.clone()));
            true
        }
        Term::Return(_) => {
            found.push((Target::Done, notes.clone()));
            true
        }
        _ => {
            let branches = matches!(term, Term::If { .. } | Term::Match { .. });
            path.push(b);
            let mut complete = true;
            for (next, _) in successors(cfg, term) {
                let note = cfg.blocks[next].note.clone().filter(|_| branches);
                let noted = note.is_some();
                notes.extend(note);
                complete &= walk(cfg, next, path, notes, found, budget);
                if noted {
                    notes.pop();
                }
                if !complete {
                    break;
                }
            }
            path.pop();
            complete
        }
    }
}

/// Whether the code of block `b` (kept verbatim) holds a `return` of the
/// flow, which `lower` rewrote to `return ::flow_runtime::__private::done(..)`
/// (a `return` in a closure is left alone, and is not the flow's).
fn returns_early(cfg: &Cfg, b: BlockId) -> bool {
    cfg.blocks[b].pieces.iter().any(|p| {
        let tokens = match &p.kind {
            PieceKind::Code(ts) => ts.clone(),
            PieceKind::Let(local) => local.to_token_stream(),
        };
        calls_done(tokens)
    })
}

/// Whether `tokens` contain the path `__private::done`.
fn calls_done(tokens: TokenStream) -> bool {
    let mut last: Vec<String> = Vec::new();
    for tt in tokens {
        match tt {
            proc_macro2::TokenTree::Group(g) => {
                if calls_done(g.stream()) {
                    return true;
                }
                last.clear();
            }
            proc_macro2::TokenTree::Ident(i) => {
                let word = i.to_string();
                if word == "done" && last.ends_with(&["__private".into(), ":".into(), ":".into()]) {
                    return true;
                }
                last.push(word);
            }
            proc_macro2::TokenTree::Punct(p) => last.push(p.as_char().to_string()),
            proc_macro2::TokenTree::Literal(_) => last.clear(),
        }
    }
    false
}

/// Every suspension or return reachable from `b` without passing a
/// suspension, in the order first found.
fn targets(cfg: &Cfg, b: BlockId) -> Vec<Target> {
    let mut seen = vec![false; cfg.blocks.len()];
    let mut stack = vec![b];
    let mut out = Vec::new();
    let mut done = false;
    while let Some(b) = stack.pop() {
        if std::mem::replace(&mut seen[b], true) {
            continue;
        }
        let ends = returns_early(cfg, b) || matches!(cfg.blocks[b].term, Some(Term::Return(_)));
        if ends && !done {
            done = true;
            out.push(Target::Done);
        }
        match &cfg.blocks[b].term {
            Some(Term::Suspend { site, .. }) => out.push(Target::Site(*site)),
            Some(term) => stack.extend(successors(cfg, term).into_iter().rev().map(|(t, _)| t)),
            None => {}
        }
    }
    out
}

/// The `StateGraph` constant's expression. `states` are `Start` and the
/// suspended states in order (`Done` is added here).
pub fn state_graph(
    fn_name: &Ident,
    flow_name: &TokenStream,
    cfg: &Cfg,
    states: &[GraphState],
    transitions: &[Transition],
) -> TokenStream {
    let g = quote!(::flow_runtime::graph);
    // Every stored binding once, in declaration order; states name theirs
    // by a bit set over this list, so the constant stays linear in the body.
    let mut fields: Vec<(BindingId, &str, &Type)> = Vec::new();
    for s in states {
        for (b, name, ty) in &s.fields {
            if !fields.iter().any(|(seen, _, _)| seen == b) {
                fields.push((*b, name, ty));
            }
        }
    }
    fields.sort_by_key(|(b, _, _)| *b);
    let field_tokens = fields.iter().map(|(_, name, ty)| {
        // Types the macro itself names are shown as a user writes them.
        let ty = pretty_tokens(&ty.to_token_stream())
            .replace("::flow_runtime::__private::", "")
            .replace("::flow_runtime::", "");
        quote!(#g::Field { name: #name, ty: #ty })
    });
    let state_tokens = states.iter().map(|s| {
        let name = s.name.to_string();
        let doc = s.doc.trim();
        let mut words = vec![0u64; fields.len().div_ceil(64)];
        for (b, _, _) in &s.fields {
            if let Some(i) = fields.iter().position(|(seen, _, _)| seen == b) {
                words[i / 64] |= 1 << (i % 64);
            }
        }
        // In binary, so a reader sees which fields are set.
        let bits = words
            .iter()
            .map(|w| syn::LitInt::new(&format!("{w:#b}"), proc_macro2::Span::call_site()));
        let (kind, awaits) = match s.site.map(|i| &cfg.sites[i]) {
            None => (
                quote!(#g::StateKind::Start),
                quote!(::core::option::Option::None),
            ),
            Some(site) => {
                let op = match &site.op {
                    Op::Receive { sends: false, .. } => quote!(Receive),
                    Op::Receive { sends: true, .. } => quote!(SendAndReceive),
                    Op::Sleep => quote!(Sleep),
                    Op::SubFlow { .. } => quote!(SubFlow),
                };
                let code = &site.text;
                (
                    quote!(#g::StateKind::Suspended),
                    quote!(::core::option::Option::Some(#g::Operation {
                        kind: #g::OperationKind::#op,
                        code: #code,
                    })),
                )
            }
        };
        let sub_flow = match s.child {
            Some(child) => quote!(::core::option::Option::Some(
                &<#child as ::flow_runtime::Flow>::STATE_GRAPH
            )),
            None => quote!(::core::option::Option::None),
        };
        quote!(#g::State {
            name: #name,
            kind: #kind,
            doc: #doc,
            stored: &[#(#bits),*],
            awaits: #awaits,
            sub_flow: #sub_flow,
        })
    });
    let transition_tokens = transitions.iter().map(|t| {
        let (from, to, when) = (&t.from, &t.to, &t.when);
        quote!(#g::Transition { from: #from, to: #to, when: &[#(#when),*] })
    });
    let title = fn_name.to_string();
    quote!(#g::StateGraph {
        flow: #flow_name,
        title: #title,
        fields: &[#(#field_tokens),*],
        states: &[
            #(#state_tokens,)*
            #g::State {
                name: "Done",
                kind: #g::StateKind::Done,
                doc: "Finished: the result has been handed out.",
                stored: &[],
                awaits: ::core::option::Option::None,
                sub_flow: ::core::option::Option::None,
            },
        ],
        transitions: &[#(#transition_tokens),*],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::testing::lower_source;

    /// The transitions of a flow as `from -> to [when; ..]` lines, states
    /// of suspension points named `S0`, `S1`, .. in source order.
    fn graph(source: &str) -> Vec<String> {
        let cfg = lower_source(source);
        let live = crate::liveness::compute(&cfg);
        let names: HashMap<usize, String> = (0..cfg.sites.len())
            .filter(|i| live.reachable[cfg.sites[*i].resume])
            .map(|i| (i, format!("S{i}")))
            .collect();
        transitions(&cfg, &live, &names)
            .into_iter()
            .map(|t| format!("{} -> {} [{}]", t.from, t.to, t.when.join("; ")))
            .collect()
    }

    #[test]
    fn a_while_loop_enters_repeats_and_leaves() {
        let g = graph(
            "async fn ping(ctx: &mut FlowContext, peer: Party, rounds: u32) -> Result<u64, FlowError> {
                let session = ctx.initiate_flow(&peer);
                let mut total: u64 = 0;
                let mut i: u32 = 0;
                while i < rounds {
                    session.send(&i)?;
                    let echo: u32 = session.receive::<u32>().await?.validate(Ok)?;
                    total += u64::from(echo);
                    i += 1;
                }
                Ok(total)
            }",
        );
        assert_eq!(
            g,
            [
                "Start -> S0 [while i < rounds]",
                "Start -> Done [end of while i < rounds]",
                "S0 -> S0 [while i < rounds]",
                "S0 -> Done [end of while i < rounds]",
            ]
        );
    }

    #[test]
    fn if_branches_match_arms_and_early_returns() {
        let g = graph(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, ok: bool) -> Result<u32, FlowError> {
                let a: u32 = if ok {
                    s.receive::<u32>().await?.validate(Ok)?
                } else {
                    return Ok(0);
                };
                match a {
                    0 => { ctx.sleep(d).await; }
                    n if n > 10 => return Ok(n),
                    _ => {}
                }
                Ok(a)
            }",
        );
        assert_eq!(
            g,
            [
                "Start -> S0 [if ok]",
                "Start -> Done [else of if ok]",
                "S0 -> S1 [match a: 0]",
                "S0 -> Done [match a: n if n > 10]",
                "S0 -> Done [match a: _]",
                "S1 -> Done []",
            ]
        );
    }

    #[test]
    fn a_loop_with_break_and_a_for_loop() {
        let g = graph(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, items: Vec<u32>) -> Result<(), FlowError> {
                loop {
                    let m: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    if m == 0 { break; }
                }
                for x in items {
                    let _r: u32 = s.send_and_receive::<u32>(&x).await?.validate(Ok)?;
                }
                Ok(())
            }",
        );
        assert_eq!(
            g,
            [
                "Start -> S0 []",
                "S0 -> S1 [if m == 0; for x in items]",
                "S0 -> Done [if m == 0; end of for x in items]",
                "S0 -> S0 [else of if m == 0]",
                "S1 -> S1 [for x in items]",
                "S1 -> Done [end of for x in items]",
            ]
        );
    }

    #[test]
    fn a_sub_flow_is_a_suspension_like_any_other() {
        let g = graph(
            "async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
                let Some(n): Option<u32> = ctx.sub_flow(child::ask(s)).await? else {
                    return Ok(0);
                };
                Ok(n)
            }",
        );
        assert_eq!(
            g,
            // A `let ... else` whose `else` neither awaits nor leaves a
            // loop stays the user's code: its `return`, then the rest.
            ["Start -> S0 []", "S0 -> Done [return]", "S0 -> Done []"]
        );
    }

    #[test]
    fn a_return_in_code_kept_verbatim_ends_the_flow() {
        let g = graph(
            "async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
                let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
                if x == 0 {
                    return Ok(0);
                }
                let check = |v: u32| -> Result<u32, FlowError> { return Ok(v); };
                let y: u32 = s.receive::<u32>().await?.validate(check)?;
                Ok(x + y)
            }",
        );
        // The closure's `return` is not the flow's.
        assert_eq!(
            g,
            [
                "Start -> S0 []",
                "S0 -> Done [return]",
                "S0 -> S1 []",
                "S1 -> Done []"
            ]
        );
    }

    #[test]
    fn many_branches_in_a_row_keep_every_target() {
        let mut body = String::new();
        for i in 0..16 {
            body.push_str(&format!("if c{i} {{ if d{i} {{ continue; }} }}\n"));
        }
        let g = graph(&format!(
            "async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<(), FlowError> {{
                loop {{
                    {body}
                    let m: u32 = s.receive::<u32>().await?.validate(Ok)?;
                }}
            }}"
        ));
        assert_eq!(g, ["Start -> S0 [\u{2026}]", "S0 -> S0 [\u{2026}]"]);
    }
}
