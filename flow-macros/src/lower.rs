//! Lowering: the flow body becomes a control-flow graph of basic blocks.
//!
//! Only constructs that must be lowered (they contain an `.await`, or a
//! `break`/`continue` that leaves them) are taken apart; everything else
//! stays the user's code, verbatim, inside a block. A block ends at a jump
//! (`Goto`, `If`, `Match`), a suspension (`Suspend`: the `.await`) or the
//! flow's end (`Return`). At run time the blocks are the arms of a
//! trampoline `loop { match pc { .. } }`, so a loop that never suspends
//! runs without recursion, and the code is linear in the size of the body.
//!
//! Scopes: the lowering keeps the source's scope stack and resolves every
//! name to a [`Binding`]. A block never outlives the scope it starts in: a
//! scope that declared names ends its block, so the generated code can
//! restore the visible bindings with plain `let`s at the top of each block
//! and shadowing stays correct without renaming anything.
//!
//! Values an `.await` or a lowered `if`/`match`/`loop` produce in the middle
//! of an expression are *hoisted*: the construct runs first, its value goes
//! to a slot, and the expression continues with the slot's value in its
//! place. That is only equivalent if nothing evaluated before it in the same
//! expression has a side effect — checked by [`crate::analyse::is_pure`].

use crate::analyse;
use crate::cfg::{
    Binding, BindingId, Block, BlockId, Cfg, MatchArm, Origin, Piece, PieceKind, Site, Term,
};
use crate::errors::Errors;
use crate::ops;
use proc_macro2::Span;
use quote::{ToTokens, format_ident, quote};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Expr, Ident, Pat, Stmt, Type};

#[derive(Clone)]
enum Dest {
    Discard,
    Slot(Ident),
    Return,
}

struct LoopCtx {
    label: Option<String>,
    brk: BlockId,
    cont: Option<BlockId>,
    dest: Dest,
}

/// Lowers a flow body. `params` are declared first, visible in block 0.
pub fn lower(
    body: &syn::Block,
    params: &[crate::parse::Param],
    ctx: &Ident,
    errors: &mut Errors,
) -> Cfg {
    let mut l = Lowerer {
        cfg: Cfg {
            bindings: Vec::new(),
            blocks: Vec::new(),
            sites: Vec::new(),
            value_slots: 0,
            items: Vec::new(),
        },
        cur: 0,
        scopes: vec![Vec::new()],
        loops: Vec::new(),
        errors,
        ctx: ctx.clone(),
        next_order: 0,
        place: Vec::new(),
        awaits_at: std::collections::HashMap::new(),
    };
    for p in params {
        l.declare(Binding {
            name: p.name.clone(),
            mutable: p.mutable,
            ty: Some(p.ty.clone()),
            origin: Origin::Param,
        });
    }
    let entry = l.new_block();
    l.enter(entry);
    l.push_scope();
    l.lower_stmts(&body.stmts, Dest::Return, body.brace_token.span.close());
    l.pop_scope();
    l.cfg
}

struct Lowerer<'e> {
    cfg: Cfg,
    cur: BlockId,
    scopes: Vec<Vec<BindingId>>,
    loops: Vec<LoopCtx>,
    errors: &'e mut Errors,
    ctx: Ident,
    next_order: usize,
    /// Where the lowering is in the control structure, outermost first
    /// (see [`Site::place`]).
    place: Vec<String>,
    /// Sites created so far at each place, to number the `.await`s of one
    /// statement.
    awaits_at: std::collections::HashMap<String, usize>,
}

/// A `::flow_runtime::__private::take(&mut slot)?` expression: the value a
/// hoisted construct left in `slot`.
fn take_expr(slot: &Ident) -> Expr {
    syn::parse_quote!(::flow_runtime::__private::take(&mut #slot)?)
}

/// Await slot of site `i`.
pub fn await_slot(i: usize) -> Ident {
    format_ident!("__flow_awaited_{}", i)
}

impl Lowerer<'_> {
    // ----- blocks and scopes -------------------------------------------

    fn new_block(&mut self) -> BlockId {
        self.cfg.blocks.push(Block {
            visible: Vec::new(),
            pieces: Vec::new(),
            term: None,
            term_uses: Vec::new(),
            term_mentions: Vec::new(),
            order: usize::MAX,
            note: None,
        });
        self.cfg.blocks.len() - 1
    }

    /// Makes `b` the current block; it starts here in the source.
    fn enter(&mut self, b: BlockId) {
        self.cur = b;
        let visible = self.visible();
        let block = &mut self.cfg.blocks[b];
        block.visible = visible;
        block.order = self.next_order;
        self.next_order += 1;
    }

    /// Records what a branch into `b` means, for the state graph.
    fn note(&mut self, b: BlockId, note: String) {
        self.cfg.blocks[b].note = Some(note);
    }

    fn terminated(&self) -> bool {
        self.cfg.blocks[self.cur].term.is_some()
    }

    /// Ends the current block with `term`; `refs` are what it reads.
    fn terminate(&mut self, term: Term, refs: analyse::Refs) {
        if self.terminated() {
            return;
        }
        let (uses, mentions) = self.resolve_refs(&refs);
        let b = &mut self.cfg.blocks[self.cur];
        b.term = Some(term);
        b.term_uses = uses;
        b.term_mentions = mentions;
    }

    fn goto(&mut self, target: BlockId) {
        self.terminate(Term::Goto(target), analyse::Refs::default());
    }

    /// After a jump: the code that follows in the source is unreachable,
    /// lowered into a fresh block that is never emitted.
    fn after_jump(&mut self) {
        let b = self.new_block();
        self.enter(b);
    }

    fn push_scope(&mut self) {
        self.scopes.push(Vec::new());
    }

    /// Pops a scope. If it declared names, the current block ends here (a
    /// block never outlives a scope that declared names; see module docs).
    fn pop_scope(&mut self) {
        let declared = self.scopes.pop().is_some_and(|s| !s.is_empty());
        if declared && !self.terminated() {
            let next = self.new_block();
            self.goto(next);
            self.enter(next);
        }
    }

    fn declare(&mut self, b: Binding) -> BindingId {
        self.cfg.bindings.push(b);
        let id = self.cfg.bindings.len() - 1;
        if let Some(top) = self.scopes.last_mut() {
            top.push(id);
        }
        id
    }

    fn resolve(&self, name: &Ident) -> Option<BindingId> {
        let name = name.to_string();
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .copied()
            .find(|&b| self.cfg.bindings[b].name == name)
    }

    fn visible(&self) -> Vec<BindingId> {
        let all: Vec<BindingId> = self.scopes.iter().flatten().copied().collect();
        all.iter()
            .enumerate()
            .filter(|(i, b)| {
                let name = &self.cfg.bindings[**b].name;
                !all[i + 1..]
                    .iter()
                    .any(|later| &self.cfg.bindings[*later].name == name)
            })
            .map(|(_, b)| *b)
            .collect()
    }

    fn local_type(&self, id: &Ident) -> Option<Type> {
        self.resolve(id)
            .and_then(|b| self.cfg.bindings[b].ty.clone())
    }

    fn resolve_refs(&self, refs: &analyse::Refs) -> (Vec<BindingId>, Vec<BindingId>) {
        let uses: Vec<BindingId> = refs.uses.iter().filter_map(|n| self.resolve(n)).collect();
        let mut mentions = uses.clone();
        mentions.extend(refs.assigned.iter().filter_map(|n| self.resolve(n)));
        (dedup(uses), dedup(mentions))
    }

    fn push_piece(&mut self, kind: PieceKind, refs: analyse::Refs, kills: Vec<BindingId>) {
        let (uses, mentions) = self.resolve_refs(&refs);
        self.cfg.blocks[self.cur].pieces.push(Piece {
            kind,
            uses,
            kills,
            mentions,
            declares: Vec::new(),
        });
    }

    /// Pushes a statement of user code (its `return`s rewritten).
    fn push_stmt(&mut self, mut stmt: Stmt) {
        report_labels(&stmt, self.errors);
        ReturnRewriter.visit_stmt_mut(&mut stmt);
        let refs = analyse::refs_of(&stmt, |w, s| syn::visit::Visit::visit_stmt(w, s));
        let kills = match &stmt {
            Stmt::Expr(Expr::Assign(a), _) => match &*a.left {
                Expr::Path(p) => p
                    .path
                    .get_ident()
                    .and_then(|i| self.resolve(i))
                    .into_iter()
                    .collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        self.push_piece(PieceKind::Code(stmt.into_token_stream()), refs, kills);
    }

    fn push_expr_stmt(&mut self, e: Expr) {
        self.push_stmt(Stmt::Expr(e, Some(Default::default())));
    }

    // ----- statements --------------------------------------------------

    fn lower_stmts(&mut self, stmts: &[Stmt], dest: Dest, end: Span) {
        let mut awaiting = 0;
        for (i, stmt) in stmts.iter().enumerate() {
            let last = i + 1 == stmts.len();
            // A statement's place is its rank among the statements of its
            // block that await: adding code that does not suspend keeps
            // every suspension point where it was.
            let awaits = analyse::stmt_contains_await(stmt);
            if awaits {
                self.place.push(format!("stmt {awaiting}"));
                awaiting += 1;
            }
            self.lower_stmt(stmt, last, &dest);
            if awaits {
                self.place.pop();
            }
            if last && matches!(stmt, Stmt::Expr(_, None)) {
                return;
            }
        }
        // No tail expression: the block's value is `()`, unless it diverges.
        let diverges = stmts.last().is_some_and(stmt_diverges);
        if !matches!(dest, Dest::Discard) && !diverges {
            self.emit_dest(syn::parse_quote_spanned!(end=> ()), &dest);
        }
    }

    fn lower_stmt(&mut self, stmt: &Stmt, last: bool, dest: &Dest) {
        {
            match stmt {
                Stmt::Item(item) => self.cfg.items.push(item.clone()),
                Stmt::Local(local) => self.lower_local(local),
                Stmt::Macro(m) => {
                    if analyse::tokens_contain_await(&m.mac.tokens) {
                        self.errors.error_at(&m.mac, await_in_macro_message(&m.mac));
                    }
                    self.push_stmt(stmt.clone());
                    if stmt_diverges(stmt) {
                        // `panic!()` and friends: nothing after them runs,
                        // so the block has no successor.
                        self.after_jump();
                    }
                }
                Stmt::Expr(e, None) if last => {
                    let (e, label) = self.strip_label(e);
                    let before = self.cfg.sites.len();
                    self.lower_tail(&e, dest.clone());
                    self.name_sites(before, self.cfg.sites.len(), label, None);
                }
                Stmt::Expr(e, _) => {
                    let (e, label) = self.strip_label(e);
                    let before = self.cfg.sites.len();
                    self.lower_expr_stmt(&e);
                    self.name_sites(before, self.cfg.sites.len(), label, None);
                }
            }
        }
    }

    /// Runs `f` one level deeper in the control structure, at `place`.
    fn at<R>(&mut self, place: String, f: impl FnOnce(&mut Self) -> R) -> R {
        self.place.push(place);
        let r = f(self);
        self.place.pop();
        r
    }

    /// Removes a `#[state(Name)]` label from an expression statement (not
    /// from `if`/`match`/loops: a label names one suspension point, and
    /// those contain their own statements to label).
    fn strip_label(&mut self, e: &Expr) -> (Expr, Option<Ident>) {
        let mut e = e.clone();
        if is_control_structure(&e) {
            return (e, None);
        }
        let label = expr_attrs_mut(&mut e).and_then(|attrs| take_state_attr(attrs, self.errors));
        (e, label)
    }

    /// Names the sites created from `before` to `end`: the last one (the
    /// outermost `.await` of the statement) after the label or the bound
    /// name.
    fn name_sites(
        &mut self,
        before: usize,
        end: usize,
        label: Option<Ident>,
        bound: Option<&Ident>,
    ) {
        if end == before {
            if let Some(label) = label {
                self.errors.error(
                    label.span(),
                    "`#[state(..)]` names the suspension point of a statement, but this statement has no `.await`: remove the label",
                );
            }
            return;
        }
        let last = end - 1;
        match (label, bound) {
            (Some(l), _) => self.cfg.sites[last].name_hint = Some((l.to_string(), true)),
            (None, Some(b)) => {
                self.cfg.sites[last].name_hint =
                    Some((format!("Await{}", ops::upper_camel(&b.to_string())), false))
            }
            (None, None) => {}
        }
    }

    fn lower_local(&mut self, local: &syn::Local) {
        let mut local = local.clone();
        let label = take_state_attr(&mut local.attrs, self.errors);
        let pat_bindings = analyse::pattern_bindings(&local.pat, None);
        let whole_name = pat_bindings
            .iter()
            .find(|b| b.whole)
            .map(|b| b.name.clone());
        let before = self.cfg.sites.len();
        let original_init = local.init.as_ref().map(|i| (*i.expr).clone());
        let binding_types = |this: &Self| -> Vec<Binding> {
            pat_bindings
                .iter()
                .map(|b| Binding {
                    name: b.name.clone(),
                    mutable: b.mutable,
                    ty: b.ty.clone().or_else(|| {
                        if b.whole {
                            original_init
                                .as_ref()
                                .and_then(|i| analyse::infer_type(i, &|id| this.local_type(id)))
                        } else {
                            None
                        }
                    }),
                    origin: match &original_init {
                        _ if !b.whole => Origin::Pattern,
                        Some(Expr::Closure(_)) => Origin::Closure,
                        _ => Origin::Let,
                    },
                })
                .collect()
        };
        let bindings = binding_types(self);

        let init_end;
        let lowered_else = local
            .init
            .as_ref()
            .and_then(|i| i.diverge.as_ref())
            .is_some_and(|(_, d)| analyse::needs_lowering(d));
        if lowered_else {
            // `let PAT = v else { .. }` whose `else` jumps to a lowered loop
            // (or awaits): a `match` with a fall-back arm.
            let init = local.init.take().map(|i| (i.expr, i.diverge));
            let Some((expr, Some((_, diverge)))) = init else {
                return;
            };
            let scrut = self.lower_value(&expr);
            init_end = self.cfg.sites.len();
            let cont = self.new_block();
            let otherwise = self.new_block();
            let ids: Vec<BindingId> = bindings
                .into_iter()
                .map(|b| {
                    self.cfg.bindings.push(b);
                    self.cfg.bindings.len() - 1
                })
                .collect();
            let pat = strip_pat_type(&local.pat);
            let refs = analyse::expr_refs(&scrut);
            self.terminate(
                Term::Match {
                    scrut,
                    arms: vec![
                        MatchArm {
                            pat,
                            guard: None,
                            binds: ids.clone(),
                            target: cont,
                        },
                        MatchArm {
                            pat: syn::parse_quote!(_),
                            guard: None,
                            binds: Vec::new(),
                            target: otherwise,
                        },
                    ],
                },
                refs,
            );
            let pat_text = readable(&local.pat);
            self.note(cont, format!("let {pat_text}"));
            self.note(otherwise, format!("else of let {pat_text}"));
            self.enter(otherwise);
            let place = format!("let {} else", code(&local.pat));
            self.at(place, |l| l.lower_tail(&diverge, Dest::Discard));
            if !self.terminated() {
                // The `else` diverged inside code kept verbatim (rustc
                // checks that it does): the block has no successor, so
                // nothing the `else` skips is live in it.
                self.push_expr_stmt(syn::parse_quote_spanned!(diverge.span()=>
                    ::core::unreachable!("the `else` of a `let ... else` must diverge")
                ));
                self.after_jump();
            }
            if let Some(top) = self.scopes.last_mut() {
                top.extend(ids);
            }
            self.enter(cont);
        } else {
            if let Some(init) = &mut local.init
                && analyse::needs_lowering(&init.expr)
            {
                *init.expr = self.lower_value(&init.expr);
            }
            report_labels(&Stmt::Local(local.clone()), self.errors);
            ReturnRewriter.visit_local_mut(&mut local);
            let refs = analyse::refs_of(&local, |w, l| syn::visit::Visit::visit_local(w, l));
            self.push_piece(PieceKind::Let(Box::new(local)), refs, Vec::new());
            let ids: Vec<BindingId> = bindings.into_iter().map(|b| self.declare(b)).collect();
            if let Some(p) = self.cfg.blocks[self.cur].pieces.last_mut() {
                p.declares = ids;
            }
            init_end = self.cfg.sites.len();
        }
        // `let x = if .. { .. } else { .. };` names no point after `x`: the
        // points inside are named by their own statements (and by where
        // they sit), and an `else` that waits is not the value of `x`.
        let bound = whole_name
            .as_ref()
            .filter(|_| !original_init.as_ref().is_some_and(is_control_structure));
        self.name_sites(before, init_end, label, bound);
    }

    fn lower_expr_stmt(&mut self, e: &Expr) {
        if let Expr::Return(_) = e {
            // Always a jump, even without an `.await`: the code after it is
            // dead, and treating it as a fall-through would make whatever it
            // reads look live at the suspension points before.
            self.lower_jump(e);
            return;
        }
        if stmt_diverges(&Stmt::Expr(e.clone(), None)) && !analyse::needs_lowering(e) {
            self.push_expr_stmt(e.clone());
            self.after_jump();
            return;
        }
        if !analyse::needs_lowering(e) {
            self.push_expr_stmt(e.clone());
            return;
        }
        match e {
            Expr::If(_)
            | Expr::Match(_)
            | Expr::Loop(_)
            | Expr::While(_)
            | Expr::ForLoop(_)
            | Expr::Block(_) => self.lower_control(e, Dest::Discard),
            Expr::Break(_) | Expr::Continue(_) | Expr::Return(_) => self.lower_jump(e),
            Expr::Assign(a) if is_ident_path(&a.left) => {
                let right = self.lower_value(&a.right);
                let mut a = a.clone();
                *a.right = right;
                self.push_expr_stmt(Expr::Assign(a));
            }
            _ => {
                let v = self.lower_value(e);
                self.push_expr_stmt(v);
            }
        }
    }

    /// Lowers `e`, whose value goes to `dest`.
    fn lower_tail(&mut self, e: &Expr, dest: Dest) {
        if let Expr::Return(_) = e {
            self.lower_jump(e);
            return;
        }
        if !analyse::needs_lowering(e) {
            if matches!(dest, Dest::Discard) {
                self.push_expr_stmt(e.clone());
            } else {
                self.emit_dest(e.clone(), &dest);
            }
            return;
        }
        match e {
            Expr::If(_)
            | Expr::Match(_)
            | Expr::Loop(_)
            | Expr::While(_)
            | Expr::ForLoop(_)
            | Expr::Block(_) => self.lower_control(e, dest),
            Expr::Break(_) | Expr::Continue(_) | Expr::Return(_) => self.lower_jump(e),
            _ => {
                let v = self.lower_value(e);
                if matches!(dest, Dest::Discard) {
                    self.push_expr_stmt(v);
                } else {
                    self.emit_dest(v, &dest);
                }
            }
        }
    }

    fn emit_dest(&mut self, v: Expr, dest: &Dest) {
        match dest {
            Dest::Discard => self.push_expr_stmt(v),
            Dest::Slot(slot) => {
                self.push_expr_stmt(syn::parse_quote!(#slot = ::core::option::Option::Some(#v)))
            }
            Dest::Return => {
                let refs = analyse::expr_refs(&v);
                self.terminate(Term::Return(v), refs);
                self.after_jump();
            }
        }
    }

    // ----- control flow ------------------------------------------------

    fn lower_control(&mut self, e: &Expr, dest: Dest) {
        match e {
            Expr::If(i) => self.lower_if(i, dest),
            Expr::Match(m) => self.lower_match(m, dest),
            Expr::Loop(l) => {
                let body = self.new_block();
                let exit = self.new_block();
                self.goto(body);
                self.loops.push(LoopCtx {
                    label: l.label.as_ref().map(|l| l.name.ident.to_string()),
                    brk: exit,
                    cont: Some(body),
                    dest: dest.clone(),
                });
                self.push_scope();
                self.enter(body);
                let place = format!("{}loop", label_text(l.label.as_ref()));
                self.at(place, |this| {
                    this.lower_stmts(
                        &l.body.stmts,
                        Dest::Discard,
                        l.body.brace_token.span.close(),
                    )
                });
                self.goto(body);
                self.scopes.pop();
                self.loops.pop();
                self.enter(exit);
            }
            Expr::While(w) => {
                let head = self.new_block();
                let body = self.new_block();
                let exit = self.new_block();
                self.goto(head);
                self.enter(head);
                self.push_scope();
                let cond = readable(&w.cond);
                self.note(body, format!("while {cond}"));
                self.note(exit, format!("end of while {cond}"));
                self.branch(&w.cond, body, exit);
                self.loops.push(LoopCtx {
                    label: w.label.as_ref().map(|l| l.name.ident.to_string()),
                    brk: exit,
                    cont: Some(head),
                    dest: Dest::Discard,
                });
                self.enter(body);
                self.push_scope();
                let place = format!("{}while {}", label_text(w.label.as_ref()), code(&w.cond));
                self.at(place, |this| {
                    this.lower_stmts(
                        &w.body.stmts,
                        Dest::Discard,
                        w.body.brace_token.span.close(),
                    )
                });
                self.scopes.pop();
                self.goto(head);
                self.scopes.pop();
                self.loops.pop();
                self.enter(exit);
                if !matches!(dest, Dest::Discard) {
                    self.emit_dest(syn::parse_quote!(()), &dest);
                }
            }
            Expr::ForLoop(f) => self.lower_for(f, dest),
            Expr::Block(b) => {
                if let Some(label) = &b.label {
                    let exit = self.new_block();
                    self.loops.push(LoopCtx {
                        label: Some(label.name.ident.to_string()),
                        brk: exit,
                        cont: None,
                        dest: dest.clone(),
                    });
                    self.push_scope();
                    let place = format!("{}block", label_text(Some(label)));
                    self.at(place, |this| {
                        this.lower_stmts(&b.block.stmts, dest, b.block.brace_token.span.close())
                    });
                    self.scopes.pop();
                    self.loops.pop();
                    self.goto(exit);
                    self.enter(exit);
                } else {
                    self.push_scope();
                    self.at("block".into(), |this| {
                        this.lower_stmts(&b.block.stmts, dest, b.block.brace_token.span.close())
                    });
                    self.pop_scope();
                }
            }
            other => {
                let v = self.lower_value(other);
                self.emit_dest(v, &dest);
            }
        }
    }

    /// Ends the current block with a two-way branch on `cond` (which may be
    /// `let PAT = EXPR`). Pattern bindings are declared in the current
    /// (caller-pushed) scope.
    fn branch(&mut self, cond: &Expr, then_: BlockId, else_: BlockId) {
        let cond = match cond {
            Expr::Let(l) => {
                let mut l = l.clone();
                *l.expr = self.lower_value(&l.expr);
                Expr::Let(l)
            }
            c => {
                if analyse::needs_lowering(c) && has_let(c) {
                    self.errors.error_at(
                        c,
                        "an `.await` inside a `let` chain is not supported: bind the awaited value with `let` before the `if`/`while`",
                    );
                }
                self.lower_value(c)
            }
        };
        let refs = analyse::expr_refs(&cond);
        let mut binds = Vec::new();
        for pat in let_patterns(&cond) {
            for b in analyse::pattern_bindings(&pat, None) {
                binds.push(self.declare(Binding {
                    name: b.name,
                    mutable: b.mutable,
                    ty: b.ty,
                    origin: Origin::Pattern,
                }));
            }
        }
        self.terminate(
            Term::If {
                cond,
                binds,
                then_,
                else_,
            },
            refs,
        );
    }

    fn lower_if(&mut self, i: &syn::ExprIf, dest: Dest) {
        // The condition is part of the place: `if c {A} else {B}` and
        // `if !c {B} else {A}` put A's suspension points in different
        // branches of different conditions.
        let cond = code(&i.cond);
        let then_ = self.new_block();
        let else_ = self.new_block();
        let join = self.new_block();
        let shown = readable(&i.cond);
        self.note(then_, format!("if {shown}"));
        self.note(else_, format!("else of if {shown}"));
        self.push_scope();
        self.branch(&i.cond, then_, else_);
        self.enter(then_);
        self.push_scope();
        let close = i.then_branch.brace_token.span.close();
        self.at(format!("if {cond} then"), |this| {
            this.lower_stmts(&i.then_branch.stmts, dest.clone(), close)
        });
        self.scopes.pop();
        self.goto(join);
        self.scopes.pop();
        self.enter(else_);
        self.place.push(format!("if {cond} else"));
        match i.else_branch.as_ref().map(|(_, e)| &**e) {
            None => {
                if !matches!(dest, Dest::Discard) {
                    self.emit_dest(syn::parse_quote_spanned!(close=> ()), &dest);
                }
            }
            Some(Expr::If(nested)) => self.lower_if(nested, dest),
            Some(Expr::Block(b)) if b.label.is_none() => {
                self.push_scope();
                self.lower_stmts(&b.block.stmts, dest, b.block.brace_token.span.close());
                self.scopes.pop();
            }
            Some(other) => self.lower_tail(other, dest),
        }
        self.place.pop();
        self.goto(join);
        self.enter(join);
    }

    fn lower_match(&mut self, m: &syn::ExprMatch, dest: Dest) {
        let scrut = self.lower_value(&m.expr);
        let refs_scrut = analyse::expr_refs(&scrut);
        let join = self.new_block();
        let mut arms = Vec::new();
        let mut bodies = Vec::new();
        let mut refs = refs_scrut;
        for arm in &m.arms {
            if let Some((_, g)) = &arm.guard {
                if analyse::needs_lowering(g) {
                    self.errors.error_at(
                        g,
                        "an `.await` (or a `break`/`continue` out of the `match`) in a match guard is not supported: bind the awaited value with `let` before the `match`",
                    );
                }
                // The guard sees the arm's pattern bindings, not outer names.
                let gr = analyse::guard_refs(&arm.pat, g);
                refs.uses.extend(gr.uses);
            }
            let target = self.new_block();
            self.push_scope();
            let binds: Vec<BindingId> = analyse::pattern_bindings(&arm.pat, None)
                .into_iter()
                .map(|b| {
                    self.declare(Binding {
                        name: b.name,
                        mutable: b.mutable,
                        ty: b.ty,
                        origin: Origin::Pattern,
                    })
                })
                .collect();
            let scope = self.scopes.pop().unwrap_or_default();
            arms.push(MatchArm {
                pat: arm.pat.clone(),
                guard: arm.guard.as_ref().map(|(_, g)| (**g).clone()),
                binds,
                target,
            });
            let place = match &arm.guard {
                Some((_, g)) => format!("arm {} if {}", code(&arm.pat), code(g)),
                None => format!("arm {}", code(&arm.pat)),
            };
            let arm_text = match &arm.guard {
                Some((_, g)) => format!("{} if {}", readable(&arm.pat), readable(g)),
                None => readable(&arm.pat),
            };
            self.note(target, format!("match {}: {arm_text}", readable(&m.expr)));
            bodies.push((target, scope, (*arm.body).clone(), place));
        }
        self.terminate(Term::Match { scrut, arms }, refs);
        let scrut_text = code(&m.expr);
        for (target, scope, body, place) in bodies {
            self.scopes.push(scope);
            self.enter(target);
            let place = format!("match {scrut_text} {place}");
            self.at(place, |this| this.lower_tail(&body, dest.clone()));
            self.scopes.pop();
            self.goto(join);
        }
        self.enter(join);
    }

    fn lower_for(&mut self, f: &syn::ExprForLoop, dest: Dest) {
        let iterable = self.lower_value(&f.expr);
        let awaits = analyse::contains_await(&Expr::Block(syn::ExprBlock {
            attrs: Vec::new(),
            label: None,
            block: f.body.clone(),
        }));
        let iterable_ty = if awaits {
            self.iterable_type(&f.expr)
        } else {
            None
        };
        let elem_ty = iterable_ty.as_ref().and_then(|(_, e)| e.clone());
        let pat_name = match &*f.pat {
            Pat::Ident(pi) => pi.ident.to_string(),
            _ => "for".into(),
        };
        let iter_name = Ident::new(&format!("__iter_{pat_name}"), f.expr.span());
        self.push_scope();
        let refs = analyse::expr_refs(&iterable);
        let (init, next): (Expr, Expr) = if awaits {
            (
                syn::parse_quote!(::flow_runtime::__private::for_iter(#iterable)),
                syn::parse_quote!(::flow_runtime::__private::for_next(&mut #iter_name)),
            )
        } else {
            (
                syn::parse_quote!(::core::iter::IntoIterator::into_iter(#iterable)),
                syn::parse_quote!(::core::iter::Iterator::next(&mut #iter_name)),
            )
        };
        self.push_piece(
            PieceKind::Code(quote!(let mut #iter_name = #init;)),
            refs,
            Vec::new(),
        );
        let iter_id = self.declare(Binding {
            name: iter_name.clone(),
            mutable: true,
            ty: iterable_ty.map(|(t, _)| syn::parse_quote!(::flow_runtime::__private::ForIter<#t>)),
            origin: Origin::ForIter,
        });
        if let Some(p) = self.cfg.blocks[self.cur].pieces.last_mut() {
            p.declares = vec![iter_id];
        }
        let head = self.new_block();
        let body = self.new_block();
        let exit = self.new_block();
        let loop_text = format!("for {} in {}", readable(&f.pat), readable(&f.expr));
        self.note(body, loop_text.clone());
        self.note(exit, format!("end of {loop_text}"));
        self.goto(head);
        self.enter(head);
        self.push_scope();
        let binds: Vec<BindingId> = analyse::pattern_bindings(&f.pat, elem_ty.as_ref())
            .into_iter()
            .map(|b| {
                self.declare(Binding {
                    name: b.name,
                    mutable: b.mutable,
                    ty: if b.whole { b.ty } else { None },
                    origin: if b.whole {
                        Origin::Let
                    } else {
                        Origin::Pattern
                    },
                })
            })
            .collect();
        let scope = self.scopes.pop().unwrap_or_default();
        let pat = &f.pat;
        let refs = analyse::expr_refs(&next);
        self.terminate(
            Term::Match {
                scrut: next,
                arms: vec![
                    MatchArm {
                        pat: syn::parse_quote!(::core::option::Option::Some(#pat)),
                        guard: None,
                        binds,
                        target: body,
                    },
                    MatchArm {
                        pat: syn::parse_quote!(::core::option::Option::None),
                        guard: None,
                        binds: Vec::new(),
                        target: exit,
                    },
                ],
            },
            refs,
        );
        self.loops.push(LoopCtx {
            label: f.label.as_ref().map(|l| l.name.ident.to_string()),
            brk: exit,
            cont: Some(head),
            dest: Dest::Discard,
        });
        self.scopes.push(scope);
        self.enter(body);
        self.push_scope();
        let place = format!(
            "{}for {} in {}",
            label_text(f.label.as_ref()),
            code(&f.pat),
            code(&f.expr)
        );
        self.at(place, |this| {
            this.lower_stmts(
                &f.body.stmts,
                Dest::Discard,
                f.body.brace_token.span.close(),
            )
        });
        self.scopes.pop();
        self.goto(head);
        self.scopes.pop();
        self.loops.pop();
        self.scopes.pop();
        self.enter(exit);
        if !matches!(dest, Dest::Discard) {
            self.emit_dest(syn::parse_quote!(()), &dest);
        }
    }

    /// The type of a `for` loop's iterable and of its elements, when
    /// visible: a local `Vec<T>`, or a range with a typed bound.
    fn iterable_type(&self, e: &Expr) -> Option<(Type, Option<Type>)> {
        match e {
            Expr::Paren(p) => self.iterable_type(&p.expr),
            Expr::Path(p) => {
                let ty = self.local_type(p.path.get_ident()?)?;
                let elem = analyse::vec_element_type(&ty)?;
                Some((ty, Some(elem)))
            }
            Expr::MethodCall(m) if m.method == "into_iter" && m.args.is_empty() => {
                self.iterable_type(&m.receiver)
            }
            Expr::Range(r) => {
                let env = |id: &Ident| self.local_type(id);
                let t = r
                    .start
                    .as_deref()
                    .and_then(|s| analyse::infer_type(s, &env))
                    .or_else(|| r.end.as_deref().and_then(|s| analyse::infer_type(s, &env)))?;
                let range: Type = match r.limits {
                    syn::RangeLimits::HalfOpen(_) => syn::parse_quote!(::core::ops::Range<#t>),
                    syn::RangeLimits::Closed(_) => {
                        syn::parse_quote!(::core::ops::RangeInclusive<#t>)
                    }
                };
                Some((range, Some(t)))
            }
            _ => None,
        }
    }

    fn lower_jump(&mut self, e: &Expr) {
        match e {
            Expr::Return(r) => {
                let v = match &r.expr {
                    Some(v) => self.lower_value(v),
                    None => syn::parse_quote_spanned!(r.return_token.span=> ()),
                };
                let refs = analyse::expr_refs(&v);
                self.terminate(Term::Return(v), refs);
            }
            Expr::Break(b) => {
                let Some(i) = self.find_loop(&b.label, e) else {
                    return;
                };
                let (brk, dest) = (self.loops[i].brk, self.loops[i].dest.clone());
                match &b.expr {
                    Some(v) => {
                        let v = self.lower_value(v);
                        self.emit_dest(v, &dest);
                    }
                    None if !matches!(dest, Dest::Discard) => {
                        self.emit_dest(syn::parse_quote!(()), &dest)
                    }
                    None => {}
                }
                self.goto(brk);
            }
            Expr::Continue(c) => {
                let Some(i) = self.find_loop(&c.label, e) else {
                    return;
                };
                match self.loops[i].cont {
                    Some(cont) => self.goto(cont),
                    None => self
                        .errors
                        .error_at(c, "`continue` cannot target a labelled block"),
                }
            }
            _ => {}
        }
        self.after_jump();
    }

    fn find_loop(&mut self, label: &Option<syn::Lifetime>, e: &Expr) -> Option<usize> {
        let found = match label {
            None => self.loops.iter().rposition(|l| l.cont.is_some()),
            Some(l) => {
                let name = l.ident.to_string();
                self.loops
                    .iter()
                    .rposition(|c| c.label.as_deref() == Some(name.as_str()))
            }
        };
        if found.is_none() {
            self.errors.error_at(
                e,
                "this `break`/`continue` has no enclosing loop (or label) to jump to",
            );
        }
        found
    }

    // ----- expressions -------------------------------------------------

    /// Lowers `e` so that it can be evaluated in one block: suspensions
    /// and lowered control flow inside it are hoisted into blocks before
    /// it, and the returned expression reads their values from slots.
    fn lower_value(&mut self, e: &Expr) -> Expr {
        if !analyse::needs_lowering(e) {
            return e.clone();
        }
        match e {
            Expr::Await(a) => self.lower_await(a),
            Expr::If(_)
            | Expr::Match(_)
            | Expr::Loop(_)
            | Expr::While(_)
            | Expr::ForLoop(_)
            | Expr::Block(_) => {
                let slot = format_ident!("__flow_value_{}", self.cfg.value_slots);
                self.cfg.value_slots += 1;
                self.lower_control(e, Dest::Slot(slot.clone()));
                take_expr(&slot)
            }
            Expr::Break(_) | Expr::Continue(_) | Expr::Return(_) => {
                self.lower_jump(e);
                syn::parse_quote!(::core::unreachable!())
            }
            Expr::Closure(c) => {
                self.errors.error_at(
                    c,
                    "`.await` inside a closure cannot suspend the flow: await the operation in the flow body and bind its result with `let` first, then use it in the closure",
                );
                e.clone()
            }
            Expr::Async(a) => {
                self.errors.error_at(
                    a,
                    "an `async` block inside a flow cannot be suspended and checkpointed: write its code in the flow body, binding each awaited value with `let` first",
                );
                e.clone()
            }
            Expr::Macro(m) => {
                self.errors.error_at(&m.mac, await_in_macro_message(&m.mac));
                e.clone()
            }
            Expr::Binary(b)
                if matches!(b.op, syn::BinOp::And(_) | syn::BinOp::Or(_))
                    && analyse::needs_lowering(&b.right) =>
            {
                self.errors.error_at(
                    &b.right,
                    "an `.await` on the right of `&&`/`||` runs only sometimes, which a checkpointed flow cannot express: bind the awaited value with `let` first, or write an `if`",
                );
                e.clone()
            }
            _ => self.lower_children(e),
        }
    }

    fn lower_children(&mut self, e: &Expr) -> Expr {
        let mut out = e.clone();
        let Some(children) = children_in_order(&mut out) else {
            self.errors.error_at(
                e,
                format!(
                    "an `.await` in this position ({}) is not supported: bind the awaited value with `let` first, then use the binding here",
                    expr_kind(e)
                ),
            );
            return e.clone();
        };
        let first = children.iter().position(|c| analyse::needs_lowering(c));
        let Some(first) = first else { return out };
        let mut children = children;
        // A closure, `async` block or macro holding an `.await` is an error
        // of its own; the order rule would only add noise.
        let hoistable = !matches!(
            children[first],
            Expr::Closure(_) | Expr::Async(_) | Expr::Macro(_)
        );
        for c in children[..first].iter().filter(|_| hoistable) {
            if !analyse::is_pure(c) {
                self.errors.error_at(
                    &**c,
                    format!(
                        "`{}` is evaluated before the `.await` that follows it in the same expression, and a flow runs it only after resuming: bind it with `let` first",
                        crate::pretty::pretty_tokens(&c.to_token_stream())
                    ),
                );
            }
        }
        for c in &children[first + 1..] {
            if analyse::needs_lowering(c) {
                self.errors.error_at(
                    &**c,
                    "only one `.await` (or lowered `if`/`match`/`loop`) per expression is supported: bind the first with `let`",
                );
            }
        }
        let lowered = self.lower_value(children[first]);
        *children[first] = lowered;
        out
    }

    fn lower_await(&mut self, a: &syn::ExprAwait) -> Expr {
        let op = match ops::classify(&a.base, &self.ctx, &|id| self.local_type(id)) {
            Ok(op) => op,
            Err(e) => {
                self.errors.push(e);
                return Expr::Await(a.clone());
            }
        };
        let op_expr = self.lower_value(&a.base);
        let resume = self.new_block();
        let site = self.cfg.sites.len();
        let span = a.await_token.span;
        let at = self.place.join(" / ");
        let n = self.awaits_at.entry(at.clone()).or_insert(0);
        let place = format!("{at} / await {n}");
        *n += 1;
        self.cfg.sites.push(Site {
            place,
            op,
            resume,
            name_hint: None,
            text: crate::pretty::pretty_tokens(&a.base.to_token_stream()),
            line: span.start().line,
            file: Some(span.file()).filter(|f| !f.starts_with('<')),
            span,
        });
        let refs = analyse::expr_refs(&op_expr);
        self.terminate(Term::Suspend { site, op: op_expr }, refs);
        self.enter(resume);
        take_expr(&await_slot(site))
    }
}

/// Code as compact text, for places: tokens only, so comments, whitespace
/// and line numbers never show.
fn code(node: &impl ToTokens) -> String {
    crate::pretty::pretty_tokens(&node.to_token_stream())
}

/// Code as text for a person: the state graph's branch labels.
fn readable(node: &impl ToTokens) -> String {
    crate::pretty::readable_tokens(&node.to_token_stream())
}

fn label_text(label: Option<&syn::Label>) -> String {
    label.map_or_else(String::new, |l| format!("'{}: ", l.name.ident))
}

fn dedup(mut v: Vec<BindingId>) -> Vec<BindingId> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|b| seen.insert(*b));
    v
}

fn is_ident_path(e: &Expr) -> bool {
    matches!(e, Expr::Path(p) if p.path.get_ident().is_some())
}

fn has_let(e: &Expr) -> bool {
    match e {
        Expr::Let(_) => true,
        Expr::Binary(b) => has_let(&b.left) || has_let(&b.right),
        Expr::Paren(p) => has_let(&p.expr),
        _ => false,
    }
}

/// The patterns of `let` conditions in `cond` (an `if let` or a chain).
fn let_patterns(cond: &Expr) -> Vec<Pat> {
    match cond {
        Expr::Let(l) => vec![(*l.pat).clone()],
        Expr::Binary(b) if matches!(b.op, syn::BinOp::And(_)) => {
            let mut v = let_patterns(&b.left);
            v.extend(let_patterns(&b.right));
            v
        }
        _ => Vec::new(),
    }
}

fn strip_pat_type(p: &Pat) -> Pat {
    match p {
        Pat::Type(pt) => (*pt.pat).clone(),
        other => other.clone(),
    }
}

fn stmt_diverges(s: &Stmt) -> bool {
    let e = match s {
        Stmt::Expr(e, _) => e,
        Stmt::Macro(m) => {
            return ["panic", "unreachable", "todo", "unimplemented"]
                .iter()
                .any(|n| m.mac.path.is_ident(n));
        }
        _ => return false,
    };
    match e {
        Expr::Return(_) | Expr::Break(_) | Expr::Continue(_) => true,
        Expr::Macro(m) => ["panic", "unreachable", "todo", "unimplemented"]
            .iter()
            .any(|n| m.mac.path.is_ident(n)),
        _ => false,
    }
}

fn await_in_macro_message(m: &syn::Macro) -> String {
    format!(
        "`.await` inside the macro call `{}!` cannot be checkpointed: bind the awaited value with `let` first and pass the binding to the macro",
        m.path.to_token_stream().to_string().replace(' ', "")
    )
}

fn expr_kind(e: &Expr) -> &'static str {
    match e {
        Expr::Unsafe(_) => "an `unsafe` block",
        Expr::Let(_) => "a `let` condition",
        Expr::Repeat(_) => "an array repeat expression",
        Expr::TryBlock(_) => "a `try` block",
        _ => "this expression",
    }
}

/// Mutable references to the sub-expressions of `e` in evaluation order;
/// `None` for expressions whose sub-expressions cannot be hoisted.
fn children_in_order(e: &mut Expr) -> Option<Vec<&mut Expr>> {
    Some(match e {
        Expr::Array(a) => a.elems.iter_mut().collect(),
        Expr::Tuple(t) => t.elems.iter_mut().collect(),
        Expr::Binary(b) => vec![&mut *b.left, &mut *b.right],
        Expr::Call(c) => std::iter::once(&mut *c.func)
            .chain(c.args.iter_mut())
            .collect(),
        Expr::MethodCall(m) => std::iter::once(&mut *m.receiver)
            .chain(m.args.iter_mut())
            .collect(),
        Expr::Cast(c) => vec![&mut *c.expr],
        Expr::Field(f) => vec![&mut *f.base],
        Expr::Index(i) => vec![&mut *i.expr, &mut *i.index],
        Expr::Paren(p) => vec![&mut *p.expr],
        Expr::Group(g) => vec![&mut *g.expr],
        Expr::Reference(r) => vec![&mut *r.expr],
        Expr::Unary(u) => vec![&mut *u.expr],
        Expr::Try(t) => vec![&mut *t.expr],
        Expr::Range(r) => r
            .start
            .iter_mut()
            .map(|b| &mut **b)
            .chain(r.end.iter_mut().map(|b| &mut **b))
            .collect(),
        Expr::Struct(s) => s
            .fields
            .iter_mut()
            .map(|f| &mut f.expr)
            .chain(s.rest.iter_mut().map(|b| &mut **b))
            .collect(),
        Expr::Assign(a) => vec![&mut *a.left, &mut *a.right],
        _ => return None,
    })
}

/// The attribute list of an expression statement's expression.
fn expr_attrs_mut(e: &mut Expr) -> Option<&mut Vec<syn::Attribute>> {
    Some(match e {
        Expr::Await(x) => &mut x.attrs,
        Expr::Try(x) => &mut x.attrs,
        Expr::MethodCall(x) => &mut x.attrs,
        Expr::Call(x) => &mut x.attrs,
        Expr::Assign(x) => &mut x.attrs,
        Expr::If(x) => &mut x.attrs,
        Expr::Match(x) => &mut x.attrs,
        Expr::Paren(x) => &mut x.attrs,
        Expr::Field(x) => &mut x.attrs,
        Expr::Binary(x) => &mut x.attrs,
        _ => return None,
    })
}

/// Removes `#[state(Name)]` from `attrs` and returns the name.
fn take_state_attr(attrs: &mut Vec<syn::Attribute>, errors: &mut Errors) -> Option<Ident> {
    let pos = attrs.iter().position(|a| a.path().is_ident("state"))?;
    let attr = attrs.remove(pos);
    match attr.parse_args::<Ident>() {
        Ok(id) if id == "Start" || id == "Done" => {
            errors.error_at(
                &id,
                format!("`{id}` is the name of a built-in state: choose another label"),
            );
            None
        }
        Ok(id) if id.to_string().starts_with(|c: char| c.is_uppercase()) => Some(id),
        _ => {
            errors.error_at(
                &attr,
                "a state label is one UpperCamelCase name, e.g. `#[state(AwaitPayment)]`",
            );
            None
        }
    }
}

/// Rewrites the user's `return e` (outside closures, async blocks and nested
/// items) into `return done(e)`: the generated fn returns the machine's exit,
/// not the flow's result.
pub struct ReturnRewriter;

impl VisitMut for ReturnRewriter {
    fn visit_expr_mut(&mut self, e: &mut Expr) {
        match e {
            Expr::Return(r) => {
                if let Some(v) = &mut r.expr {
                    self.visit_expr_mut(v);
                }
                let span = r.return_token.span;
                let value = r
                    .expr
                    .take()
                    .map(|v| *v)
                    .unwrap_or_else(|| syn::parse_quote_spanned!(span=> ()));
                *e = syn::parse_quote_spanned!(span=> return ::flow_runtime::__private::done(#value));
            }
            Expr::Closure(_) | Expr::Async(_) => {}
            _ => syn::visit_mut::visit_expr_mut(self, e),
        }
    }
    fn visit_item_mut(&mut self, _: &mut syn::Item) {}
}

/// A `#[state(..)]` left in verbatim code labels a statement without an
/// `.await` at a lowered level; say so instead of letting rustc report an
/// unknown attribute.
fn report_labels(stmt: &Stmt, errors: &mut Errors) {
    struct Finder<'e>(&'e mut Errors);
    impl<'a> syn::visit::Visit<'a> for Finder<'_> {
        fn visit_attribute(&mut self, a: &'a syn::Attribute) {
            if a.path().is_ident("state") {
                self.0.error_at(
                    a,
                    "`#[state(..)]` labels the suspension point of a `let` or expression statement that `.await`s a flow operation; put it on such a statement",
                );
            }
        }
    }
    syn::visit::Visit::visit_stmt(&mut Finder(errors), stmt);
}

/// An expression whose `.await`s sit in statements of its own.
fn is_control_structure(e: &Expr) -> bool {
    matches!(
        e,
        Expr::If(_)
            | Expr::Match(_)
            | Expr::Loop(_)
            | Expr::While(_)
            | Expr::ForLoop(_)
            | Expr::Block(_)
            | Expr::Unsafe(_)
    )
}

/// Lowering a whole `#[flow]` fn from source text, for the unit tests of
/// this pass and of the passes after it.
#[cfg(test)]
pub mod testing {
    use crate::cfg::{BindingId, Cfg};
    use crate::errors::Errors;

    /// Lowers `source` (an `async fn` with a `ctx: &mut FlowContext`
    /// first parameter); panics on a macro error, with the messages.
    pub fn lower_source(source: &str) -> Cfg {
        let (cfg, errors) = lower_with_errors(source);
        assert!(
            errors.is_empty(),
            "unexpected errors: {:?}",
            errors.messages()
        );
        cfg
    }

    /// Lowers `source` and returns the errors recorded.
    pub fn lower_with_errors(source: &str) -> (Cfg, Errors) {
        let item: syn::ItemFn = syn::parse_str(source).expect("test source parses");
        let mut errors = Errors::default();
        let sig = crate::parse::parse_sig(&item, &mut errors).expect("test signature is valid");
        let cfg = super::lower(&item.block, &sig.params, &sig.ctx, &mut errors);
        (cfg, errors)
    }

    /// The names of `ids`, in order.
    pub fn names(cfg: &Cfg, ids: impl IntoIterator<Item = BindingId>) -> Vec<String> {
        ids.into_iter()
            .map(|b| cfg.bindings[b].name.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{lower_source, lower_with_errors, names};
    use crate::cfg::Term;

    fn suspends(cfg: &crate::cfg::Cfg) -> usize {
        cfg.blocks
            .iter()
            .filter(|b| matches!(b.term, Some(Term::Suspend { .. })))
            .count()
    }

    #[test]
    fn every_await_is_a_site_with_its_own_suspending_block() {
        let cfg = lower_source(
            "async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
                let a: u32 = s.receive::<u32>().await?.validate(Ok)?;
                if a > 1 { ctx.sleep(d).await; }
                Ok(a)
            }",
        );
        assert_eq!(cfg.sites.len(), 2);
        assert_eq!(suspends(&cfg), 2);
        assert_eq!(names(&cfg, 0..cfg.bindings.len()), ["s", "a"]);
    }

    #[test]
    fn a_return_without_await_ends_its_block() {
        let cfg = lower_source(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, c: bool) -> Result<u32, FlowError> {
                if c {
                    let y: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    return Ok(y);
                }
                Ok(1)
            }",
        );
        // The block after the receive returns: it has no successor.
        let resume = cfg.sites[0].resume;
        assert!(matches!(cfg.blocks[resume].term, Some(Term::Return(_))));
    }

    #[test]
    fn a_typed_let_else_pattern_gives_its_binding_a_type() {
        let cfg = lower_source(
            "async fn f(ctx: &mut FlowContext, o: Option<u64>) -> Result<u64, FlowError> {
                let Some(limit): Option<u64> = o else { return Ok(0) };
                Ok(limit)
            }",
        );
        let limit = cfg.bindings.iter().find(|b| b.name == "limit").unwrap();
        let ty = limit.ty.as_ref().map(|t| quote::quote!(#t).to_string());
        assert_eq!(ty.as_deref(), Some("u64"));
    }

    /// A point's place names each enclosing branch with its condition or
    /// pattern, and its rank among the awaiting statements of its block,
    /// never a line number.
    #[test]
    fn a_site_place_is_its_path_through_the_control_structure() {
        let cfg = lower_source(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, m: Msg) -> Result<u32, FlowError> {
                let n: u32 = 1;
                if n > 0 {
                    ctx.sleep(d).await;
                } else {
                    ctx.sleep(d).await;
                }
                match m {
                    Msg::Ping(x) => { s.receive::<u32>().await?; }
                    _ => {}
                }
                'outer: loop {
                    s.receive::<u32>().await?;
                    s.receive::<u32>().await?;
                    break 'outer;
                }
                Ok(n)
            }",
        );
        let places: Vec<&str> = cfg.sites.iter().map(|s| s.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "stmt 0 / if n>0 then / stmt 0 / await 0",
                "stmt 0 / if n>0 else / stmt 0 / await 0",
                "stmt 1 / match m arm Msg::Ping(x) / block / stmt 0 / await 0",
                "stmt 2 / 'outer: loop / stmt 0 / await 0",
                "stmt 2 / 'outer: loop / stmt 1 / await 0",
            ]
        );
    }

    #[test]
    fn a_binding_records_where_it_comes_from() {
        use crate::cfg::Origin;
        let cfg = lower_source(
            "async fn f(ctx: &mut FlowContext, o: Option<u32>) -> Result<u32, FlowError> {
                let add = |a: u32| a + 1;
                let items: Vec<u32> = vec![1];
                for i in items { ctx.sleep(d).await; let _ = add(i); }
                if let Some(v) = o { ctx.sleep(d).await; return Ok(v) }
                Ok(0)
            }",
        );
        let origin = |name: &str| {
            cfg.bindings
                .iter()
                .find(|b| b.name == name)
                .map(|b| b.origin)
                .unwrap_or_else(|| panic!("no binding {name}"))
        };
        assert!(origin("o") == Origin::Param);
        assert!(origin("add") == Origin::Closure);
        assert!(origin("items") == Origin::Let);
        assert!(origin("v") == Origin::Pattern);
        assert!(cfg.bindings.iter().any(|b| b.origin == Origin::ForIter));
    }

    #[test]
    fn an_unsupported_await_is_an_error_not_a_panic() {
        let (_, errors) = lower_with_errors(
            "async fn f(ctx: &mut FlowContext) -> Result<u32, FlowError> {
                let v = (|| tokio::time::sleep(d).await)();
                Ok(1)
            }",
        );
        assert_eq!(errors.len(), 1);
    }
}
