//! Liveness of bindings over the block graph, as rustc's coroutine transform
//! computes it: a binding is live at a point if some path from there reads
//! it before overwriting it. Only bindings live where a flow resumes are
//! stored in that state's variant; that is what keeps checkpoints small.

use crate::analyse::BindingId;
use crate::lower::{BlockId, Cfg, Term};
use std::collections::BTreeSet;

/// A set of bindings, ordered by declaration (binding ids are allocated in
/// source order), so generated fields come out in a stable order.
pub type Set = BTreeSet<BindingId>;

/// Liveness results.
pub struct Liveness {
    /// Bindings live where each block starts.
    pub live_in: Vec<Set>,
    /// Blocks reachable from the entry (others are never emitted).
    pub reachable: Vec<bool>,
}

/// The successors of a block, each with the bindings the jump itself
/// introduces (pattern bindings of an `if let` or a match arm).
pub fn successors<'a>(cfg: &'a Cfg, term: &'a Term) -> Vec<(BlockId, &'a [BindingId])> {
    match term {
        Term::Goto(t) => vec![(*t, &[][..])],
        Term::If {
            binds,
            then_,
            else_,
            ..
        } => vec![(*then_, &binds[..]), (*else_, &[][..])],
        Term::Match { arms, .. } => arms.iter().map(|a| (a.target, &a.binds[..])).collect(),
        Term::Suspend { site, .. } => vec![(cfg.sites[*site].resume, &[][..])],
        Term::Return(_) => Vec::new(),
    }
}

/// Bindings live just before the terminator of `b`.
pub fn live_before_term(cfg: &Cfg, live_in: &[Set], b: BlockId) -> Set {
    let block = &cfg.blocks[b];
    let mut live = Set::new();
    if let Some(term) = &block.term {
        for (t, binds) in successors(cfg, term) {
            live.extend(live_in[t].iter().filter(|x| !binds.contains(x)));
        }
    }
    live.extend(block.term_uses.iter().copied());
    live
}

/// Bindings live after each piece of `b` (index i: after piece i).
pub fn live_after_pieces(cfg: &Cfg, live_in: &[Set], b: BlockId) -> Vec<Set> {
    let block = &cfg.blocks[b];
    let mut live = live_before_term(cfg, live_in, b);
    let mut out = vec![Set::new(); block.pieces.len()];
    for (i, p) in block.pieces.iter().enumerate().rev() {
        out[i] = live.clone();
        for k in p.kills.iter().chain(&p.declares) {
            live.remove(k);
        }
        live.extend(p.uses.iter().copied());
    }
    out
}

/// Computes liveness to a fixed point.
pub fn compute(cfg: &Cfg) -> Liveness {
    let n = cfg.blocks.len();
    let mut reachable = vec![false; n];
    let mut stack = vec![0];
    while let Some(b) = stack.pop() {
        if b >= n || reachable[b] {
            continue;
        }
        reachable[b] = true;
        if let Some(term) = &cfg.blocks[b].term {
            stack.extend(successors(cfg, term).into_iter().map(|(t, _)| t));
        }
    }
    let mut live_in = vec![Set::new(); n];
    loop {
        let mut changed = false;
        for b in (0..n).rev().filter(|b| reachable[*b]) {
            let mut live = live_before_term(cfg, &live_in, b);
            for p in cfg.blocks[b].pieces.iter().rev() {
                for k in p.kills.iter().chain(&p.declares) {
                    live.remove(k);
                }
                live.extend(p.uses.iter().copied());
            }
            if live != live_in[b] {
                live_in[b] = live;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    Liveness { live_in, reachable }
}
