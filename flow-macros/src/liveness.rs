//! Liveness of bindings over the block graph, as rustc's coroutine transform
//! computes it: a binding is live at a point if some path from there reads
//! it before overwriting it. Only bindings live where a flow resumes are
//! stored in that state's variant; that is what keeps checkpoints small.

use crate::cfg::{BindingId, BlockId, Cfg, Term};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::testing::{lower_source, names};

    /// The bindings live where each suspension point resumes, by name.
    fn live_at_sites(source: &str) -> Vec<Vec<String>> {
        let cfg = lower_source(source);
        let live = compute(&cfg);
        cfg.sites
            .iter()
            .map(|s| names(&cfg, live.live_in[s.resume].iter().copied()))
            .collect()
    }

    #[test]
    fn a_local_read_after_the_await_is_live_and_a_dead_one_is_not() {
        let live = live_at_sites(
            "async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u64, FlowError> {
                let kept: u64 = 1;
                let dropped: u64 = 2;
                s.send(&dropped)?;
                let x: u64 = s.receive::<u64>().await?.validate(Ok)?;
                Ok(x + kept)
            }",
        );
        assert_eq!(live, [vec!["kept".to_string()]]);
    }

    #[test]
    fn nothing_after_a_return_is_live_in_the_branch_that_returns() {
        let live = live_at_sites(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, c: bool) -> Result<usize, FlowError> {
                let big: Vec<u64> = vec![1, 2, 3];
                if c {
                    let y: usize = s.receive::<usize>().await?.validate(Ok)?;
                    return Ok(y);
                }
                Ok(big.len())
            }",
        );
        assert_eq!(live, [Vec::<String>::new()]);
    }

    #[test]
    fn a_let_else_whose_else_waits_keeps_nothing_the_else_skips() {
        let live = live_at_sites(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, o: Option<u32>) -> Result<u32, FlowError> {
                let Some(x): Option<u32> = o else {
                    let z: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    return Ok(z);
                };
                let w: u32 = s.receive::<u32>().await?.validate(Ok)?;
                Ok(x + w)
            }",
        );
        assert_eq!(live, [vec![], vec!["x".to_string()]]);
    }

    #[test]
    fn a_diverging_macro_has_no_successor() {
        let live = live_at_sites(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, c: bool) -> Result<u64, FlowError> {
                let big: Vec<u64> = vec![1];
                if c {
                    s.receive::<u64>().await?.validate(Ok)?;
                    panic!(\"stop\");
                }
                Ok(big[0])
            }",
        );
        assert_eq!(live, [Vec::<String>::new()]);
    }

    #[test]
    fn a_local_overwritten_after_the_await_is_not_live() {
        let live = live_at_sites(
            "async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u64, FlowError> {
                let mut st: Vec<u64> = vec![1];
                let x: u64 = s.receive::<u64>().await?.validate(Ok)?;
                st = Vec::new();
                Ok(x + st.len() as u64)
            }",
        );
        assert_eq!(live, [Vec::<String>::new()]);
    }

    #[test]
    fn a_loop_keeps_its_accumulator_live_around_the_back_edge() {
        let live = live_at_sites(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, n: u32) -> Result<u64, FlowError> {
                let mut total: u64 = 0;
                let mut i: u32 = 0;
                while i < n {
                    total += s.receive::<u64>().await?.validate(Ok)?;
                    i += 1;
                }
                Ok(total)
            }",
        );
        assert_eq!(live, [vec!["s", "n", "total", "i"]]);
    }
}
