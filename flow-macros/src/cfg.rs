//! The control-flow graph the passes share: `lower` builds it, `liveness`
//! reads it, `generate` turns it into code. Only data lives here, so every
//! pass depends on this module and none on a later pass.

use crate::ops::Op;
use proc_macro2::{Span, TokenStream};
use syn::{Expr, Ident, Pat, Type};

/// Index of a binding in [`Cfg::bindings`].
pub type BindingId = usize;

/// A local variable of the flow body (or a parameter, or a synthetic local
/// the lowering introduces, like a `for` loop's iterator).
#[derive(Clone)]
pub struct Binding {
    /// Its name as the user wrote it (with the user's span, so restoring it
    /// with `let name = ..` makes the user's later uses refer to it).
    pub name: Ident,
    /// Declared `mut`.
    pub mutable: bool,
    /// The type the macro can see, if any.
    pub ty: Option<Type>,
    /// Where it comes from, for error messages.
    pub origin: Origin,
}

/// How a binding was introduced; chooses the fix an error message suggests.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A fn parameter.
    Param,
    /// `let` with a plain name.
    Let,
    /// A name inside a pattern (`if let`, `match`, `while let`, `for`, a
    /// destructuring `let`).
    Pattern,
    /// The iterator of a lowered `for` loop.
    ForIter,
    /// `let` with a plain name bound to a closure, whose type cannot be
    /// written (or stored).
    Closure,
}

/// Index of a block in [`Cfg::blocks`].
pub type BlockId = usize;

/// One piece of straight-line code in a block.
pub struct Piece {
    /// The code.
    pub kind: PieceKind,
    /// Bindings it reads.
    pub uses: Vec<BindingId>,
    /// Bindings it certainly overwrites (a top-level `x = ..;`).
    pub kills: Vec<BindingId>,
    /// Every binding it names (read or written).
    pub mentions: Vec<BindingId>,
    /// Bindings it declares (a `let`).
    pub declares: Vec<BindingId>,
}

/// The kinds of [`Piece`].
pub enum PieceKind {
    /// A complete statement.
    Code(TokenStream),
    /// A `let`; kept apart because a `let` that shadows a binding still
    /// needed later first saves that binding (see `generate`).
    Let(Box<syn::Local>),
}

/// How a block ends.
pub enum Term {
    /// Continue with another block.
    Goto(BlockId),
    /// `if cond { then } else { otherwise }`; `binds` are the names an
    /// `if let` condition binds for the `then` block.
    If {
        /// The condition (may be `let PAT = EXPR`).
        cond: Expr,
        /// Bindings the condition introduces.
        binds: Vec<BindingId>,
        /// Block when true.
        then_: BlockId,
        /// Block when false.
        else_: BlockId,
    },
    /// `match scrut { arms }`.
    Match {
        /// The scrutinee.
        scrut: Expr,
        /// The arms, each jumping to its own block.
        arms: Vec<MatchArm>,
    },
    /// An `.await`: start the operation; suspend, or continue at `resume`
    /// at once if it is already complete.
    Suspend {
        /// Index into [`Cfg::sites`].
        site: usize,
        /// The operation expression (hoisted, await-free).
        op: Expr,
    },
    /// The flow ends with this `Result<T, FlowError>`.
    Return(Expr),
}

/// One arm of a [`Term::Match`].
pub struct MatchArm {
    /// The pattern.
    pub pat: Pat,
    /// Its guard (never lowered: guards cannot await).
    pub guard: Option<Expr>,
    /// Bindings the pattern introduces.
    pub binds: Vec<BindingId>,
    /// The arm's block.
    pub target: BlockId,
}

/// A basic block.
pub struct Block {
    /// Bindings visible by name where the block starts, in declaration
    /// order (shadowed ones left out).
    pub visible: Vec<BindingId>,
    /// Straight-line code.
    pub pieces: Vec<Piece>,
    /// How it ends; `None` only for a block that was never finished (it is
    /// then unreachable).
    pub term: Option<Term>,
    /// Bindings the terminator reads (condition, scrutinee, guards, the
    /// awaited operation).
    pub term_uses: Vec<BindingId>,
    /// Bindings the terminator names.
    pub term_mentions: Vec<BindingId>,
    /// Position in source order, so blocks are emitted in the order the
    /// code was written (helps both readers and type inference).
    pub order: usize,
    /// What a branch into this block means (`if ok`, `while i < n`,
    /// `match msg: Ping(x)`, `end of for x in items`), for the state
    /// graph's transitions; `None` for blocks that are no branch target.
    pub note: Option<String>,
}

/// A suspension point: one `.await`.
pub struct Site {
    /// Source file of the `.await`, when the compiler tells.
    pub file: Option<String>,
    /// What is awaited.
    pub op: Op,
    /// Where it sits in the control structure, as text: the path from the
    /// body through each enclosing branch, arm and loop (with its condition,
    /// pattern or label) to the statement, ranked among the statements of
    /// its block that await, and the `.await`'s rank in its statement, e.g.
    /// `stmt 1 / if ok then / stmt 0 / await 0`. Part of the fingerprint;
    /// independent of source lines and of code that does not suspend.
    pub place: String,
    /// The block that continues after it.
    pub resume: BlockId,
    /// The variant name requested: a `#[state(..)]` label (`true`) or one
    /// derived from the binding that receives the value (`false`).
    pub name_hint: Option<(String, bool)>,
    /// The awaited expression as text, for the variant's doc comment.
    pub text: String,
    /// Source line of the `.await`.
    pub line: usize,
    /// Span of the `.await`, for errors.
    pub span: Span,
}

/// The lowered flow body.
pub struct Cfg {
    /// Every binding (parameters first).
    pub bindings: Vec<Binding>,
    /// Every block; block 0 is the entry.
    pub blocks: Vec<Block>,
    /// Every suspension point.
    pub sites: Vec<Site>,
    /// Number of value slots (hoisted results of lowered expressions).
    pub value_slots: usize,
    /// Items declared in the body, hoisted so every block can see them.
    pub items: Vec<syn::Item>,
}

#[cfg(test)]
mod tests {
    use super::{Origin, Term};
    use crate::lower::testing::lower_source;

    /// What `liveness` and `generate` take for granted about every graph
    /// `lower` builds: parameters first, every suspension point ended by
    /// exactly one block, every jump and binding index in range.
    #[test]
    fn a_lowered_graph_holds_what_the_later_passes_rely_on() {
        let cfg = lower_source(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, n: u32) -> Result<u32, FlowError> {
                let mut t: u32 = n;
                for i in 0..n {
                    let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    t += x + i;
                }
                if t > 3 {
                    ctx.sleep(d).await;
                }
                Ok(t)
            }",
        );
        let params: Vec<String> = cfg.bindings[..2]
            .iter()
            .map(|b| b.name.to_string())
            .collect();
        assert_eq!(params, ["s", "n"]);
        assert!(cfg.bindings[..2].iter().all(|b| b.origin == Origin::Param));
        assert!(cfg.bindings[2..].iter().all(|b| b.origin != Origin::Param));
        assert!(cfg.bindings.iter().any(|b| b.origin == Origin::ForIter));

        assert_eq!(cfg.sites.len(), 2);
        for (i, site) in cfg.sites.iter().enumerate() {
            let ending = cfg
                .blocks
                .iter()
                .filter(|b| matches!(b.term, Some(Term::Suspend { site, .. }) if site == i))
                .count();
            assert_eq!(ending, 1, "site {i} is ended by {ending} blocks");
            assert!(site.resume < cfg.blocks.len());
        }
        let places: std::collections::BTreeSet<&str> =
            cfg.sites.iter().map(|s| s.place.as_str()).collect();
        assert_eq!(places.len(), cfg.sites.len(), "two sites share a place");

        let n = cfg.bindings.len();
        for block in &cfg.blocks {
            assert!(block.visible.iter().all(|b| *b < n));
            for piece in &block.pieces {
                let ids = piece.uses.iter().chain(&piece.kills).chain(&piece.declares);
                assert!(ids.chain(&piece.mentions).all(|b| *b < n));
            }
            if let Some(term) = &block.term {
                for (target, binds) in crate::liveness::successors(&cfg, term) {
                    assert!(target < cfg.blocks.len());
                    assert!(binds.iter().all(|b| *b < n));
                }
            }
        }
    }
}
