//! Code generation: the state enum (one variant per suspension point with
//! exactly the live bindings), its `Flow` impl, and the trampoline that runs
//! the lowered blocks.
//!
//! The trampoline lives in a plain fn `run` inside the generated module that
//! returns `Result<Exit, FlowError>`, so the user's `?` works unchanged.
//! Bindings move between blocks through `Option` slots whose types rustc
//! infers; only bindings stored in a variant need a type the macro can see.

use crate::cfg::{self, BindingId, BlockId, Cfg, Origin, PieceKind, Term};
use crate::errors::Errors;
use crate::graph;
use crate::liveness::{self, Liveness, Set};
use crate::lower;
use crate::ops::Op;
use crate::parse::{FlowArgs, FlowSig};
use crate::pretty::pretty_tokens;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use std::collections::{BTreeSet, HashMap};
use syn::visit_mut::VisitMut;
use syn::{Ident, Type};

/// A state variant.
struct Variant {
    name: Ident,
    doc: String,
    /// (field name, binding) in declaration order.
    fields: Vec<(Ident, BindingId)>,
    /// The child state type, for a sub-flow suspension.
    child: Option<Type>,
    /// The suspension point it belongs to (`None` for `Start`).
    site: Option<usize>,
}

/// Everything the generator needs besides the CFG.
pub struct Input<'a> {
    /// The user's fn (attributes, visibility, name).
    pub item: &'a syn::ItemFn,
    /// Its checked signature, paths shifted for use inside the module.
    pub sig: &'a FlowSig,
    /// `#[flow(..)]` arguments.
    pub args: &'a FlowArgs,
    /// Parameter types as written (for the constructor outside the module).
    pub outer_params: Vec<(Ident, Type)>,
}

/// Generates the expansion. Errors (untyped live bindings) are recorded.
pub fn generate(input: &Input, cfg: &Cfg, errors: &mut Errors) -> TokenStream {
    let live = liveness::compute(cfg);
    let variants = variants(input, cfg, &live, errors);
    let frame = frame_fields(cfg, &variants);
    let mut g = Gen {
        cfg,
        live: &live,
        ctx: &input.sig.ctx,
        variants: &variants,
        frame: frame.iter().map(|(f, b)| (*b, f.clone())).collect(),
        stale: Vec::new(),
        used_slots: BTreeSet::new(),
        slot_types: HashMap::new(),
        pcs: HashMap::new(),
    };
    // Blocks that only jump on (an `if` without `else`, a `continue`) are
    // threaded: jumps to them go straight to where they lead. Such a block
    // names no binding, so it holds nothing to save, and its live-in set is
    // its target's.
    let mut order: Vec<BlockId> = (0..cfg.blocks.len())
        .filter(|b| live.reachable[*b] && thread(cfg, *b) == *b)
        .collect();
    order.sort_by_key(|b| cfg.blocks[*b].order);
    for (pc, b) in order.iter().enumerate() {
        g.pcs.insert(*b, pc as u32);
    }
    g.stale = stale_at_sites(cfg, &live, &g.frame);
    let arms: Vec<TokenStream> = order
        .iter()
        .map(|b| {
            let pc = g.pcs[b];
            let body = g.block(*b);
            quote!(#pc => { #body })
        })
        .collect();
    let dispatch = g.dispatch(input);
    // Value slots of hoisted expressions: declared only if some emitted
    // block uses them (an unused `None` would have no inferable type).
    for arm in &arms {
        collect_value_slots(arm.clone(), &mut g.used_slots);
    }

    let fn_name = &input.item.sig.ident;
    let vis = &input.item.vis;
    let output = &input.sig.output;
    let ctx = &input.sig.ctx;
    let version = input.args.version;
    let name = match &input.args.name {
        Some(n) => quote!(#n),
        // Inside `mod #fn_name`: the module path ends with the fn's name.
        None => quote!(::core::module_path!()),
    };

    // The state enum.
    let mut enum_variants = Vec::new();
    let mut debug_arms = Vec::new();
    let mut name_arms = Vec::new();
    let mut checks = Vec::new();
    let mut checked = BTreeSet::new();
    let mut shape = Shape::new(output);
    // The locals stored at any suspension point: one field each in the
    // `FlowLocals` every suspended variant holds. A variant stores exactly the
    // locals live where it resumes (the others are `None`), and the code
    // stays linear in the body: no variant lists its fields.
    let mut frame_defs = Vec::new();
    let mut frame_serde = Vec::new();
    let mut frame_debug = Vec::new();
    shape.frame_start();
    for (k, (f, b)) in frame.iter().enumerate() {
        let ty = binding_type(cfg, *b);
        shape.field(f, &ty);
        let field_doc = format!("The local `{}`.", cfg.bindings[*b].name);
        let ser = format_ident!("__flow_serialize_{k}");
        let de = format_ident!("__flow_deserialize_{k}");
        let (ser_path, de_path) = (ser.to_string(), de.to_string());
        frame_defs.push(quote! {
            #[doc = #field_doc]
            #[serde(serialize_with = #ser_path, deserialize_with = #de_path)]
            pub #f: ::flow_runtime::__private::slot::Slot<#ty>
        });
        // serde through the slot's dispatch (see `Gen::save`): a type that
        // cannot be stored compiles here and is reported by its check.
        frame_serde.push(quote! {
            fn #ser<S: ::flow_runtime::__private::serde::Serializer>(
                slot: &::flow_runtime::__private::slot::Slot<#ty>,
                serializer: S,
            ) -> ::core::result::Result<S::Ok, S::Error> {
                slot.__flow_serialize(serializer)
            }
            fn #de<'de, D: ::flow_runtime::__private::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::core::result::Result<::flow_runtime::__private::slot::Slot<#ty>, D::Error> {
                let mut slot: ::flow_runtime::__private::slot::Slot<#ty> = ::core::default::Default::default();
                (&mut slot).__flow_deserialize(deserializer)?;
                ::core::result::Result::Ok(slot)
            }
        });
        let f_str = f.to_string();
        frame_debug.push(quote! {
            if let ::core::option::Option::Some(v) = (&self.#f).__flow_debug() {
                d.field(#f_str, v);
            }
        });
        checks.push(keep_check(
            &cfg.bindings[*b],
            &ty,
            first_line(cfg, &variants, *b),
        ));
    }
    for v in &variants {
        let name = &v.name;
        let doc = &v.doc;
        let name_str = name.to_string();
        shape.variant(cfg, v);
        if v.site.is_none() {
            // `Start`: the arguments, by name.
            let mut fields = Vec::new();
            let mut names = Vec::new();
            for (f, b) in &v.fields {
                let ty = binding_type(cfg, *b);
                shape.field(f, &ty);
                let span = ty_span(&ty);
                let field_doc = format!("The argument `{f}`.");
                fields.push(quote_spanned! {span=>
                    #[doc = #field_doc]
                    #[serde(with = "::flow_runtime::__private::checkpoint")]
                    #f: #ty
                });
                names.push(f.clone());
                let key = pretty_tokens(&ty.to_token_stream());
                if checked.insert(key) {
                    checks.push(quote_spanned! {span=>
                        const _: () = ::flow_runtime::__private::assert_checkpointable::<#ty>();
                    });
                }
            }
            if fields.is_empty() {
                enum_variants.push(quote!(#[doc = #doc] #name));
                debug_arms.push(quote!(Flow::#name => f.write_str(#name_str)));
                name_arms.push(quote!(Flow::#name => #name_str));
            } else {
                let name_strs = names.iter().map(|n| n.to_string());
                enum_variants.push(quote!(#[doc = #doc] #name { #(#fields),* }));
                debug_arms.push(quote! {
                    Flow::#name { #(#names),* } => f.debug_struct(#name_str)
                        #(.field(#name_strs, ::flow_runtime::__private::checkpoint::debug(#names)))*
                        .finish()
                });
                name_arms.push(quote!(Flow::#name { .. } => #name_str));
            }
            continue;
        }
        for (_, b) in &v.fields {
            if let Some(f) = g.frame.get(b) {
                shape.live(f);
            }
        }
        let child = v.child.as_ref().map(|c| {
            quote!(
                #[doc = "The running sub-flow's own state, nested in this one's checkpoint."]
                #[serde(with = "::flow_runtime::__private::checkpoint")]
                child: #c,
            )
        });
        let child_debug = v.child.as_ref().map(
            |_| quote!(d.field("child", ::flow_runtime::__private::checkpoint::debug(child));),
        );
        let child_pat = v.child.as_ref().map(|_| quote!(child,));
        enum_variants.push(quote! {
            #[doc = #doc]
            #name {
                #child
                /// The locals live where this state resumes (the others are `None`).
                locals: FlowLocals,
            }
        });
        debug_arms.push(quote! {
            Flow::#name { #child_pat locals } => {
                let mut d = f.debug_struct(#name_str);
                #child_debug
                locals.debug_fields(&mut d);
                d.finish()
            }
        });
        name_arms.push(quote!(Flow::#name { .. } => #name_str));
    }
    let (fingerprint, fingerprint_doc, stored_shapes) = shape.finish();
    let state_graph = state_graph(input, &name, cfg, &live, &variants);

    let slot_decls = g.used_slots.iter().map(|s| match g.slot_types.get(s) {
        Some(t) => quote!(let mut #s: ::core::option::Option<#t> = ::core::option::Option::None;),
        None => quote!(let mut #s = ::core::option::Option::None;),
    });
    let items = &cfg.items;

    // The constructor, outside the module, with the user's attributes.
    let attrs = &input.item.attrs;
    let ctor_params = input.outer_params.iter().map(|(n, t)| quote!(#n: #t));
    let ctor_names = input.outer_params.iter().map(|(n, _)| n);
    let ctor_doc = format!(
        "Builds the `{fn_name}` flow at its start state; run it with `node.start_flow(..)` or `ctx.sub_flow(..).await`. The state machine is [`{fn_name}::Flow`]."
    );
    let mod_doc =
        format!("The state machine generated by `#[flow]` for [`{fn_name}`](fn@{fn_name}).");
    let where_doc = format!(
        "`{fn_name}`'s states: `Start`, one variant per `.await` holding the locals live there, `Done`."
    );

    quote! {
        #(#attrs)*
        #[doc = ""]
        #[doc = #ctor_doc]
        #vis fn #fn_name(#(#ctor_params),*) -> #fn_name::Flow {
            #fn_name::Flow::Start { #(#ctor_names),* }
        }

        #[doc = #mod_doc]
        #[allow(non_snake_case)]
        #vis mod #fn_name {
            #[allow(unused_imports)]
            use super::*;

            #[doc = #where_doc]
            #[derive(::flow_runtime::__private::serde::Serialize, ::flow_runtime::__private::serde::Deserialize)]
            #[serde(crate = "::flow_runtime::__private::serde")]
            pub enum Flow {
                #(#enum_variants,)*
                /// Finished: the result has been handed out.
                Done,
            }

            #[allow(unused_imports)]
            use ::flow_runtime::__private::slot::{Stored as _, UnstorableMut as _, UnstorableRef as _};

            /// The locals kept across suspension points, one field each; a
            /// suspended state holds exactly those live where it resumes.
            #[derive(::core::default::Default, ::flow_runtime::__private::serde::Serialize, ::flow_runtime::__private::serde::Deserialize)]
            #[serde(crate = "::flow_runtime::__private::serde")]
            pub struct FlowLocals {
                #(#frame_defs,)*
            }

            #(#frame_serde)*

            impl FlowLocals {
                /// Adds the locals present to a state's `Debug` output.
                fn debug_fields(&self, d: &mut ::core::fmt::DebugStruct<'_, '_>) {
                    let _ = &d;
                    #(#frame_debug)*
                }
            }

            #(#checks)*

            impl ::core::fmt::Debug for Flow {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    match self {
                        #(#debug_arms,)*
                        Flow::Done => f.write_str("Done"),
                    }
                }
            }

            impl ::flow_runtime::Flow for Flow {
                type Output = #output;
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                #[doc = #fingerprint_doc]
                const FINGERPRINT: u64 = #fingerprint;
                const STATE_GRAPH: ::flow_runtime::graph::StateGraph = #state_graph;

                fn stored_shapes(shapes: &mut ::flow_runtime::fingerprint::Shapes) {
                    #stored_shapes
                }

                fn resume(
                    &mut self,
                    ctx: &mut ::flow_runtime::FlowContext,
                    event: ::flow_runtime::Event,
                ) -> ::flow_runtime::Step<#output> {
                    let state = ::core::mem::replace(self, Flow::Done);
                    ::flow_runtime::__private::finish(self, run(state, ctx, event))
                }

                fn state_name(&self) -> &'static str {
                    match self {
                        #(#name_arms,)*
                        Flow::Done => "Done",
                    }
                }
            }

            /// The flow body, lowered to blocks run by a trampoline: `pc` is
            /// the block to run next; bindings cross blocks in `Option` slots.
            #[allow(
                unused_mut,
                unreachable_code,
                clippy::never_loop,
                clippy::let_unit_value,
                clippy::unit_arg,
                clippy::match_single_binding,
                clippy::diverging_sub_expression,
                clippy::needless_late_init,
                clippy::redundant_locals,
                clippy::unused_unit
            )]
            fn run(
                __flow_state: Flow,
                #ctx: &mut ::flow_runtime::FlowContext,
                __flow_event: ::flow_runtime::Event,
            ) -> ::core::result::Result<
                ::flow_runtime::__private::Exit<Flow, #output>,
                ::flow_runtime::FlowError,
            > {
                #(#items)*
                let mut __flow_frame = FlowLocals::default();
                #(#slot_decls)*
                let mut __flow_pc: u32;
                #dispatch
                loop {
                    match __flow_pc {
                        #(#arms)*
                        _ => return ::flow_runtime::__private::bad_pc(__flow_pc),
                    }
                }
            }
        }
    }
}

/// What a checkpoint means, as the macro sees it, in canonical text; its
/// hash is the constant `FINGERPRINT`. For `Start` and then every
/// suspension point in order: the variant's name, its place in the control
/// structure, the operation and the awaited type as written, and the stored
/// fields with their types as written. Never a line number, a comment or
/// code that does not suspend. Alongside, the calls that hand each distinct
/// stored or awaited type, and each sub-flow, to the run-time half
/// (`Flow::stored_shapes`), which adds their serde shapes.
struct Shape {
    text: String,
    /// Child flows, whose constants are mixed in (in order).
    children: Vec<Type>,
    /// Distinct types by their text, for `stored_shapes`.
    types: BTreeSet<String>,
    calls: Vec<TokenStream>,
}

impl Shape {
    /// The version of the text's layout: a new layout changes every
    /// fingerprint on purpose.
    const LAYOUT: &'static str = "flow-fingerprint 2";
    /// Longest text shown in the constant's doc comment.
    const DOC_LIMIT: usize = 4096;

    fn new(output: &Type) -> Self {
        let mut s = Shape {
            text: format!(
                "{};output {};",
                Self::LAYOUT,
                pretty_tokens(&output.to_token_stream())
            ),
            children: Vec::new(),
            types: BTreeSet::new(),
            // The state enum itself: its serde shape holds every stored
            // field's (a sub-flow's state included). Tracing it as a whole
            // asks nothing of the stored types that the enum's own
            // `Deserialize` does not already ask, so a stored type that is
            // not checkpointable draws no second error from here.
            calls: vec![quote!(shapes.stored::<Flow>("state");)],
        };
        s.add_type(output);
        s
    }

    fn add_type(&mut self, ty: &Type) {
        let text = pretty_tokens(&ty.to_token_stream());
        if self.types.insert(text.clone()) {
            self.calls.push(quote!(shapes.stored::<#ty>(#text);));
        }
    }

    fn variant(&mut self, cfg: &Cfg, v: &Variant) {
        self.text.push_str(&format!("\n{}", v.name));
        let Some(site) = v.site.map(|i| &cfg.sites[i]) else {
            self.text.push_str(" start;");
            return;
        };
        self.text.push_str(&format!(" at {};", site.place));
        let (kind, ty) = match &site.op {
            Op::Receive { ty, sends: false } => ("receive", ty.clone()),
            Op::Receive { ty, sends: true } => ("send_and_receive", ty.clone()),
            Op::Sleep => ("sleep", None),
            Op::SubFlow { child, .. } => ("sub_flow", Some(child.clone())),
        };
        let ty_text = ty
            .as_ref()
            .map_or_else(|| "_".to_string(), |t| pretty_tokens(&t.to_token_stream()));
        self.text.push_str(&format!(" {kind} {ty_text};"));
        match (&site.op, ty) {
            (Op::SubFlow { child, .. }, _) => {
                self.children.push(child.clone());
                self.calls.push(quote!(shapes.child::<#child>();));
            }
            (_, Some(t)) => self.add_type(&t),
            _ => {}
        }
    }

    fn frame_start(&mut self) {
        self.text.push_str("\nFlowLocals;");
    }

    /// A frame field the current variant holds.
    fn live(&mut self, name: &Ident) {
        self.text.push_str(&format!(" live {name};"));
    }

    fn field(&mut self, name: &Ident, ty: &Type) {
        self.text.push_str(&format!(
            " {name}: {};",
            pretty_tokens(&ty.to_token_stream())
        ));
    }

    /// The `FINGERPRINT` expression, its doc (the hashed text) and the body
    /// of `stored_shapes`.
    fn finish(self) -> (TokenStream, String, TokenStream) {
        let base = fnv1a(0xcbf2_9ce4_8422_2325, self.text.as_bytes());
        let constant = self.children.iter().fold(quote!(#base), |acc, child| {
            quote!(::flow_runtime::__private::combine(#acc, <#child as ::flow_runtime::Flow>::FINGERPRINT))
        });
        let calls = self.calls;
        // The text grows with (suspension points x live locals); past a
        // few KB it is left out of the expansion, which stays linear.
        let doc = if self.text.len() <= Self::DOC_LIMIT {
            format!(
                " FNV-1a of this text (then combined with each sub-flow's constant):\n\n ```text\n{}\n ```",
                self.text
                    .lines()
                    .map(|l| format!(" {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        } else {
            format!(
                " FNV-1a of a text of {} bytes describing every state (left out here: too long to show).",
                self.text.len()
            )
        };
        (constant, doc, quote!(#(#calls)*))
    }
}

/// The `STATE_GRAPH` constant's expression (see [`crate::graph`]).
/// `flow_name` is the `NAME` expression (naming `<Self as Flow>::NAME`
/// instead would repeat every `Flow` bound error of a flow that stores an
/// unfit type).
fn state_graph(
    input: &Input,
    flow_name: &TokenStream,
    cfg: &Cfg,
    live: &Liveness,
    variants: &[Variant],
) -> TokenStream {
    let states: Vec<graph::GraphState> = variants
        .iter()
        .map(|v| graph::GraphState {
            name: &v.name,
            doc: &v.doc,
            fields: v
                .fields
                .iter()
                .map(|(f, b)| (*b, f.to_string(), binding_type(cfg, *b)))
                .collect(),
            site: v.site,
            child: v.child.as_ref(),
        })
        .collect();
    let state_of_site: HashMap<usize, String> = variants
        .iter()
        .filter_map(|v| Some((v.site?, v.name.to_string())))
        .collect();
    let transitions = graph::transitions(cfg, live, &state_of_site);
    graph::state_graph(&input.item.sig.ident, flow_name, cfg, &states, &transitions)
}

/// FNV-1a, the same function as `flow_runtime::__private::fnv1a`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

fn binding_type(cfg: &Cfg, b: BindingId) -> Type {
    cfg.bindings[b]
        .ty
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(()))
}

/// Builds the variants: `Start` (the parameters), then one per suspension
/// point, named readably and stably.
fn variants(input: &Input, cfg: &Cfg, live: &Liveness, errors: &mut Errors) -> Vec<Variant> {
    let mut out = vec![Variant {
        name: format_ident!("Start"),
        doc: format!(
            " Not started yet: the arguments of `{}(..)`.",
            input.item.sig.ident
        ),
        fields: (0..input.sig.params.len())
            .map(|b| (cfg.bindings[b].name.clone(), b))
            .collect(),
        child: None,
        site: None,
    }];
    let by_place = names_by_place(cfg, live);
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut taken: BTreeSet<String> = ["Start".to_string(), "Done".to_string()].into();
    let mut labels_seen: HashMap<String, Span> = HashMap::new();
    // An untyped binding live at several suspensions is reported once.
    let mut reported = BTreeSet::new();
    for (i, site) in cfg.sites.iter().enumerate() {
        // A suspension that cannot be reached has no state.
        if !live.reachable[site.resume] {
            continue;
        }
        let base = match &site.name_hint {
            Some((label, true)) => {
                if let Some(prev) = labels_seen.insert(label.clone(), site.span) {
                    let _ = prev;
                    errors.error(
                        site.span,
                        format!(
                            "the state label `{label}` is used twice: state labels must be unique"
                        ),
                    );
                }
                label.clone()
            }
            Some((name, false)) => name.clone(),
            None => site.op.default_state_name(),
        };
        // The k-th site of a name gets the suffix k (counted among sites of
        // that name only, so edits elsewhere do not rename it), skipping
        // suffixes that would collide with another name (`AwaitV1` twice
        // next to `AwaitV12`).
        let n = counts.entry(base.clone()).or_insert(0);
        *n += 1;
        let mut name = match by_place.get(&i) {
            Some(placed) if !taken.contains(placed) => placed.clone(),
            _ if *n == 1 => base.clone(),
            _ => format!("{base}{n}"),
        };
        while taken.contains(&name) {
            *n += 1;
            name = format!("{base}{n}");
        }
        taken.insert(name.clone());
        let mut fields = Vec::new();
        let live_here: Vec<BindingId> = live.live_in[site.resume].iter().copied().collect();
        let mut names: Vec<String> = live_here
            .iter()
            .map(|b| cfg.bindings[*b].name.to_string())
            .collect();
        if matches!(site.op, Op::SubFlow { .. }) {
            // The child's state is the field `child`; a local of that name
            // gets a suffix like any other duplicate.
            names.push("child".into());
        }
        if let Op::SubFlow { child, .. } = &site.op
            && is_own_state(child, &input.item.sig.ident)
        {
            errors.error(
                site.span,
                "a flow cannot run itself as a sub-flow: its checkpoint would contain itself, without end; repeat the work with a loop in the body",
            );
        }
        for (k, b) in live_here.iter().enumerate() {
            let binding = &cfg.bindings[*b];
            if binding.ty.is_none() && reported.insert(*b) {
                errors.error(binding.name.span(), untyped_message(binding, site.line));
            }
            if let Some(ty) = &binding.ty
                && crate::parse::contains_reference(ty)
                && reported.insert(*b)
            {
                errors.error(
                    binding.name.span(),
                    format!(
                        "`{}` is a reference kept across the `.await` on line {}: a reference cannot be checkpointed (what it points to is not in the checkpoint); keep an owned value instead (e.g. `.clone()` or `.to_owned()` it)",
                        binding.name, site.line
                    ),
                );
            }
            // Two live bindings of one name (one shadows the other): the
            // outer ones get a suffix.
            let plain = &names[k];
            let later_same = names[k + 1..].iter().filter(|n| *n == plain).count();
            let field = if later_same == 0 {
                binding.name.clone()
            } else {
                format_ident!("{}__{}", plain.trim_start_matches("r#"), later_same)
            };
            fields.push((field, *b));
        }
        let child = match &site.op {
            Op::SubFlow { child, .. } => Some(child.clone()),
            _ => None,
        };
        out.push(Variant {
            name: Ident::new(&name, Span::call_site()),
            doc: match &site.file {
                Some(file) => format!(" `{}.await` at {file}:{}.", site.text, site.line),
                None => format!(" `{}.await` at line {}.", site.text, site.line),
            },
            fields,
            child,
            site: Some(i),
        });
    }
    out
}

/// The base name of a site's variant: its label, the binding it fills, or
/// its operation.
fn base_name(site: &cfg::Site) -> String {
    match &site.name_hint {
        Some((name, _)) => name.clone(),
        None => site.op.default_state_name(),
    }
}

/// Names that say where a suspension point sits, for points that would
/// otherwise share a name: `AwaitXThen` and `AwaitXElse` for a receive into
/// `x` in each branch of an `if`, `AwaitXSome`/`AwaitXNone` in the arms of a
/// `match`. Only when every point of the name gets a different word (points
/// in one block keep the numbered names `Receive`, `Receive2`).
fn names_by_place(cfg: &Cfg, live: &Liveness) -> HashMap<usize, String> {
    let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, site) in cfg.sites.iter().enumerate() {
        if live.reachable[site.resume] && !matches!(site.name_hint, Some((_, true))) {
            groups.entry(base_name(site)).or_default().push(i);
        }
    }
    let mut out = HashMap::new();
    for (base, sites) in groups {
        if sites.len() < 2 {
            continue;
        }
        let words: Vec<String> = sites
            .iter()
            .map(|&i| place_word(&cfg.sites[i].place))
            .collect();
        let distinct: BTreeSet<&String> = words.iter().collect();
        if words.iter().all(|w| !w.is_empty()) && distinct.len() == words.len() {
            for (i, w) in sites.into_iter().zip(words) {
                out.insert(i, format!("{base}{w}"));
            }
        }
    }
    out
}

/// The word for the innermost branch around a place: `Then`/`Else` for an
/// `if`, the arm's variant for a `match`, `Else` for a `let ... else`,
/// `InLoop` for a loop body; empty at the top of the body.
fn place_word(place: &str) -> String {
    for part in place.rsplit(" / ") {
        if part.starts_with("if ") {
            if part.ends_with(" then") {
                return "Then".into();
            }
            return "Else".into();
        }
        if part.starts_with("let ") && part.ends_with(" else") {
            return "Else".into();
        }
        if let Some(arm) = part
            .split(" arm ")
            .nth(1)
            .filter(|_| part.starts_with("match "))
        {
            let word = arm_word(arm);
            return if word.is_empty() { "Arm".into() } else { word };
        }
        if part.ends_with("loop") || part.contains("while ") || part.contains("for ") {
            return "InLoop".into();
        }
    }
    String::new()
}

/// The last segment of an arm pattern's leading path (`Msg::Ping(x)`
/// gives `Ping`, `Some(x)` gives `Some`, `_` or a literal nothing).
fn arm_word(arm: &str) -> String {
    arm.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .take_while(|w| w.starts_with(|c: char| c.is_uppercase()))
        .last()
        .unwrap_or_default()
        .to_string()
}

/// Whether `child` names this flow's own state type (`f::Flow`, or
/// `super::f::Flow` once `self::` paths are shifted into the module).
fn is_own_state(child: &Type, fn_name: &Ident) -> bool {
    let Type::Path(tp) = child else { return false };
    let segs: Vec<String> = tp
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let own = [fn_name.to_string(), "Flow".to_string()];
    segs.ends_with(&own) && segs[..segs.len() - 2].iter().all(|s| s == "super") && segs.len() <= 3
}

fn untyped_message(b: &cfg::Binding, line: usize) -> String {
    let name = &b.name;
    match b.origin {
        Origin::ForIter => format!(
            "this `for` loop's iterator is kept in the checkpoint at the `.await` on line {line}, so its type must be visible: iterate over a local `Vec<T>` whose type is written (e.g. `let items: Vec<u32> = ..;`) or a range with a typed bound (e.g. `0..n` with `n: u32`, or `0u32..10`)"
        ),
        Origin::Pattern => format!(
            "`{name}` is bound by a pattern and kept in the checkpoint at the `.await` on line {line}: rebind it with an annotated `let` before the `.await` (e.g. `let {name}: T = {name};`)"
        ),
        Origin::Closure => format!(
            "`{name}` is a closure kept across the `.await` on line {line}: a closure cannot be checkpointed; create it after the `.await`, or make it a fn"
        ),
        Origin::Let | Origin::Param => format!(
            "add a type annotation to `{name}`: it is kept in the checkpoint at the `.await` on line {line}"
        ),
    }
}

struct Gen<'a> {
    cfg: &'a Cfg,
    live: &'a Liveness,
    ctx: &'a Ident,
    variants: &'a [Variant],
    /// The `FlowLocals` field of each binding stored at some suspension point.
    frame: HashMap<BindingId, Ident>,
    /// Per site: frame fields that may still hold a value there although
    /// their local is dead; cleared before the state is stored.
    stale: Vec<Vec<BindingId>>,
    used_slots: BTreeSet<Ident>,
    /// The declared type of each binding's slot, where the macro sees it.
    slot_types: HashMap<Ident, Type>,
    pcs: HashMap<BlockId, u32>,
}

impl Gen<'_> {
    /// Where binding `b` waits while no Rust local holds it: its `FlowLocals`
    /// field if it is ever stored, a local `Option` otherwise.
    fn slot(&mut self, b: BindingId) -> TokenStream {
        if let Some(f) = self.frame.get(&b) {
            return quote!(__flow_frame.#f);
        }
        let id = format_ident!(
            "__flow_{}_{}",
            self.cfg.bindings[b]
                .name
                .to_string()
                .trim_start_matches("r#"),
            b
        );
        self.used_slots.insert(id.clone());
        if let Some(t) = &self.cfg.bindings[b].ty {
            self.slot_types.insert(id.clone(), t.clone());
        }
        quote!(#id)
    }

    /// Puts the value of `value` in binding `b`'s slot. A `FlowLocals`
    /// field is filled through `Stored`, found by autoref dispatch (see
    /// `flow_runtime::__private::slot`), so a local that cannot be stored
    /// draws only its own check's error.
    fn save(&mut self, b: BindingId, value: &Ident) -> TokenStream {
        if let Some(f) = self.frame.get(&b) {
            return quote!((&mut __flow_frame.#f).__flow_put(#value););
        }
        let slot = self.slot(b);
        quote!(#slot = ::core::option::Option::Some(#value);)
    }

    /// Takes binding `b` back from its slot (`?` on a bug: an empty slot).
    fn restore(&mut self, b: BindingId) -> TokenStream {
        if let Some(f) = self.frame.get(&b) {
            return quote!(::flow_runtime::__private::slot::take(&mut __flow_frame.#f)?);
        }
        let slot = self.slot(b);
        quote!(::flow_runtime::__private::take(&mut #slot)?)
    }

    /// Empties binding `b`'s slot.
    fn clear(&mut self, b: BindingId) -> TokenStream {
        if let Some(f) = self.frame.get(&b) {
            return quote!(__flow_frame.#f.clear(););
        }
        let slot = self.slot(b);
        quote!(#slot = ::core::option::Option::None;)
    }

    fn name(&self, b: BindingId) -> &Ident {
        &self.cfg.bindings[b].name
    }

    fn pc(&self, b: BlockId) -> u32 {
        self.pcs
            .get(&thread(self.cfg, b))
            .copied()
            .unwrap_or(u32::MAX)
    }

    fn variant_for_site(&self, site: usize) -> Option<&Variant> {
        self.variants.iter().find(|v| v.site == Some(site))
    }

    /// The `match` on the stored state that starts every `resume`: moves
    /// the variant's fields into their slots and completes the operation
    /// the flow waited for.
    fn dispatch(&mut self, input: &Input) -> TokenStream {
        let ctx = self.ctx.clone();
        let mut arms = Vec::new();
        // Start.
        let entry_live = self.live.live_in[0].clone();
        let mut pats = Vec::new();
        let mut stores = Vec::new();
        for (b, p) in input.sig.params.iter().enumerate() {
            let n = &p.name;
            if entry_live.contains(&b) {
                pats.push(quote!(#n));
                stores.push(self.save(b, n));
            } else {
                pats.push(quote!(#n: _));
            }
        }
        let pc0 = self.pc(0);
        arms.push(quote! {
            Flow::Start { #(#pats),* } => {
                #(#stores)*
                __flow_pc = #pc0;
            }
        });
        for site in 0..self.cfg.sites.len() {
            let Some(v) = self.variant_for_site(site) else {
                continue;
            };
            let vname = v.name.clone();
            let has_child = v.child.is_some();
            let resume = self.cfg.sites[site].resume;
            let pc = self.pc(resume);
            let awaited = lower::await_slot(site);
            self.used_slots.insert(awaited.clone());
            let arm = match &self.cfg.sites[site].op {
                Op::Receive { ty, .. } => {
                    let t = ty
                        .clone()
                        .map_or_else(|| quote!(_), |t| t.to_token_stream());
                    quote! {
                        Flow::#vname { locals } => {
                            __flow_frame = locals;
                            #awaited = ::core::option::Option::Some(
                                ::flow_runtime::__private::complete_receive::<#t>(#ctx, __flow_event),
                            );
                            __flow_pc = #pc;
                        }
                    }
                }
                Op::Sleep => quote! {
                    Flow::#vname { locals } => {
                        __flow_frame = locals;
                        #awaited = ::core::option::Option::Some(
                            ::flow_runtime::__private::complete_sleep(#ctx, __flow_event),
                        );
                        __flow_pc = #pc;
                    }
                },
                Op::SubFlow { .. } if has_child => quote! {
                    Flow::#vname { mut child, locals } => {
                        __flow_frame = locals;
                        match ::flow_runtime::__private::resume_sub_flow(&mut child, #ctx, __flow_event) {
                            ::core::option::Option::Some(result) => {
                                #awaited = ::core::option::Option::Some(result);
                                __flow_pc = #pc;
                            }
                            ::core::option::Option::None => {
                                return ::flow_runtime::__private::suspend(Flow::#vname {
                                    child,
                                    locals: ::core::mem::take(&mut __flow_frame),
                                });
                            }
                        }
                    }
                },
                Op::SubFlow { .. } => quote!(),
            };
            arms.push(arm);
        }
        quote! {
            match __flow_state {
                #(#arms)*
                Flow::Done => return ::flow_runtime::__private::resumed_after_done(),
            }
        }
    }

    /// One block: restore the visible bindings it names, its code, its
    /// terminator (which saves what the next block needs).
    fn block(&mut self, b: BlockId) -> TokenStream {
        let cfg = self.cfg;
        let block = &cfg.blocks[b];
        let mut mentioned: Set = block.term_mentions.iter().copied().collect();
        for p in &block.pieces {
            mentioned.extend(p.mentions.iter().copied());
            mentioned.extend(p.uses.iter().copied());
        }
        let live_in = &self.live.live_in[b];
        let mut out = TokenStream::new();
        // name -> binding currently held in a Rust local of that name.
        let mut held: HashMap<String, BindingId> = HashMap::new();
        for &v in &block.visible {
            if !mentioned.contains(&v) {
                continue;
            }
            let name = self.name(v).clone();
            let m = self.cfg.bindings[v].mutable.then(|| quote!(mut));
            if live_in.contains(&v) {
                let value = self.restore(v);
                out.extend(quote!(let #m #name = #value;));
            } else {
                // Dead here, assigned again before its next use: declared
                // with the type its own declaration gives, so that the
                // assignment infers exactly as it does in the user's code.
                let ty = self.cfg.bindings[v].ty.as_ref().map(|t| quote!(: #t));
                out.extend(quote!(let #m #name #ty;));
            }
            held.insert(name.to_string(), v);
        }
        let live_after = liveness::live_after_pieces(cfg, &self.live.live_in, b);
        for (i, piece) in block.pieces.iter().enumerate() {
            // A `let` that shadows a binding still needed later first puts
            // that binding back in its slot.
            let mut saves = TokenStream::new();
            for d in &piece.declares {
                let name = self.name(*d).to_string();
                if let Some(&old) = held.get(&name)
                    && old != *d
                    && live_after[i].contains(&old)
                {
                    let n = self.name(old).clone();
                    saves.extend(self.save(old, &n));
                    held.remove(&name);
                }
            }
            match &piece.kind {
                PieceKind::Code(ts) => {
                    out.extend(saves);
                    out.extend(ts.clone());
                }
                PieceKind::Let(local)
                    if local.init.is_none()
                        && !piece.declares.iter().any(|d| {
                            block.pieces[i + 1..].iter().any(|p| p.mentions.contains(d))
                                || block.term_mentions.contains(d)
                        }) =>
                {
                    // `let x;` whose first assignment is in a later block:
                    // that block declares it (an unused declaration here
                    // would only draw an "unused variable" warning).
                    out.extend(saves);
                    continue;
                }
                PieceKind::Let(local) => {
                    let mut local = (**local).clone();
                    if !saves.is_empty() {
                        if let Some(init) = &mut local.init {
                            let e = &init.expr;
                            let ty = match &local.pat {
                                syn::Pat::Type(pt) => {
                                    let t = &pt.ty;
                                    quote!(: #t)
                                }
                                _ => quote!(),
                            };
                            *init.expr = syn::parse_quote!({
                                let __flow_init #ty = #e;
                                #saves
                                __flow_init
                            });
                        } else {
                            out.extend(saves);
                        }
                    }
                    out.extend(local.into_token_stream());
                }
            }
            for d in &piece.declares {
                held.insert(self.name(*d).to_string(), *d);
            }
        }
        let term = match &block.term {
            Some(t) => self.term(b, t, &mut held),
            None => quote!(return ::flow_runtime::__private::bad_pc(u32::MAX);),
        };
        out.extend(term);
        out
    }

    /// Saves for a jump to `target`: every binding live there that this
    /// block holds (or the jump binds) goes to its slot.
    fn edge(
        &mut self,
        target: BlockId,
        binds: &[BindingId],
        held: &HashMap<String, BindingId>,
    ) -> TokenStream {
        let mut out = self.edge_saves(target, binds, held);
        let pc = self.pc(target);
        out.extend(quote!(__flow_pc = #pc;));
        out
    }

    /// The saves of [`Gen::edge`] without the jump.
    fn edge_saves(
        &mut self,
        target: BlockId,
        binds: &[BindingId],
        held: &HashMap<String, BindingId>,
    ) -> TokenStream {
        let mut out = TokenStream::new();
        let live: Vec<BindingId> = self.live.live_in[target].iter().copied().collect();
        for b in live {
            let name = self.name(b).clone();
            let is_held = held.get(&name.to_string()) == Some(&b);
            if binds.contains(&b) || is_held {
                out.extend(self.save(b, &name));
            }
        }
        out
    }

    /// Bindings held by name that `binds` shadow while they are live at
    /// `target`: they must go to their slots before the pattern binds.
    fn shadow_saves(
        &mut self,
        targets: &[(BlockId, &[BindingId])],
        held: &mut HashMap<String, BindingId>,
    ) -> TokenStream {
        let mut out = TokenStream::new();
        for (t, binds) in targets {
            for nb in binds.iter() {
                let name = self.name(*nb).to_string();
                if let Some(&old) = held.get(&name)
                    && old != *nb
                    && self.live.live_in[*t].contains(&old)
                {
                    let n = self.name(old).clone();
                    out.extend(self.save(old, &n));
                    held.remove(&name);
                }
            }
        }
        out
    }

    fn term(
        &mut self,
        _b: BlockId,
        term: &Term,
        held: &mut HashMap<String, BindingId>,
    ) -> TokenStream {
        let ctx = self.ctx.clone();
        match term {
            Term::Goto(t) => self.edge(*t, &[], held),
            Term::Return(v) => {
                let v = rewrite_returns(v);
                quote!(return ::flow_runtime::__private::done(#v);)
            }
            Term::If {
                cond,
                binds,
                then_,
                else_,
            } => {
                let pre = self.shadow_saves(&[(*then_, binds)], held);
                let mut cond = rewrite_returns(cond);
                if !pre.is_empty()
                    && let syn::Expr::Let(l) = &mut cond
                {
                    let e = &l.expr;
                    *l.expr =
                        syn::parse_quote!({ let __flow_scrutinee = #e; #pre __flow_scrutinee });
                }
                let t = self.edge(*then_, binds, held);
                let f = self.edge(*else_, &[], held);
                let pre_out = if matches!(cond, syn::Expr::Let(_)) {
                    quote!()
                } else {
                    pre
                };
                quote!(#pre_out if #cond { #t } else { #f })
            }
            Term::Match { scrut, arms } => {
                let targets: Vec<(BlockId, &[BindingId])> =
                    arms.iter().map(|a| (a.target, &a.binds[..])).collect();
                let pre = self.shadow_saves(&targets, held);
                let scrut = rewrite_returns(scrut);
                let scrut = if pre.is_empty() {
                    quote!(#scrut)
                } else {
                    quote!({ let __flow_scrutinee = #scrut; #pre __flow_scrutinee })
                };
                let arms: Vec<TokenStream> = arms
                    .iter()
                    .map(|a| {
                        let pat = &a.pat;
                        let guard = a.guard.as_ref().map(|g| {
                            let g = rewrite_returns(g);
                            quote!(if #g)
                        });
                        let e = self.edge(a.target, &a.binds, held);
                        quote!(#pat #guard => { #e })
                    })
                    .collect();
                quote!(match #scrut { #(#arms)* })
            }
            Term::Suspend { site, op } => {
                let site = *site;
                let op = rewrite_returns(op);
                let resume = self.cfg.sites[site].resume;
                let awaited = lower::await_slot(site);
                self.used_slots.insert(awaited.clone());
                // Locals held by name go to their frame fields first (both
                // paths need them there), and fields whose local is dead
                // here are emptied: the state stores exactly what is live.
                let saves = self.edge_saves(resume, &[], held);
                let pc = self.pc(resume);
                // Built outside `quote_spanned!`: the user's spans may carry
                // another hygiene context (a `macro_rules!` around the flow).
                let jump = quote!(__flow_pc = #pc;);
                let clears: Vec<TokenStream> = self.stale[site]
                    .clone()
                    .into_iter()
                    .map(|b| self.clear(b))
                    .collect();
                let Some(v) = self.variant_for_site(site) else {
                    return quote!(return ::flow_runtime::__private::bad_pc(u32::MAX););
                };
                let vname = v.name.clone();
                let span = self.cfg.sites[site].span;
                let store = quote!(locals: ::core::mem::take(&mut __flow_frame));
                match &self.cfg.sites[site].op {
                    Op::Receive { .. } => quote_spanned! {span=>
                        let __flow_op = #op;
                        #saves
                        #(#clears)*
                        match ::flow_runtime::__private::start_receive(__flow_op, #ctx) {
                            ::core::option::Option::Some(result) => {
                                #awaited = ::core::option::Option::Some(result);
                                #jump
                            }
                            ::core::option::Option::None => {
                                return ::flow_runtime::__private::suspend(Flow::#vname { #store });
                            }
                        }
                    },
                    Op::Sleep => quote_spanned! {span=>
                        let __flow_op = #op;
                        #saves
                        #(#clears)*
                        ::flow_runtime::__private::start_sleep(__flow_op, #ctx);
                        return ::flow_runtime::__private::suspend(Flow::#vname { #store });
                    },
                    Op::SubFlow { .. } => quote_spanned! {span=>
                        let __flow_op = #op;
                        #saves
                        #(#clears)*
                        match ::flow_runtime::__private::start_sub_flow(__flow_op, #ctx) {
                            ::core::result::Result::Ok(result) => {
                                #awaited = ::core::option::Option::Some(result);
                                #jump
                            }
                            ::core::result::Result::Err(child) => {
                                return ::flow_runtime::__private::suspend(Flow::#vname { child, #store });
                            }
                        }
                    },
                }
            }
        }
    }
}

/// The source line of the first suspension point where `b` is stored.
fn first_line(cfg: &Cfg, variants: &[Variant], b: BindingId) -> usize {
    variants
        .iter()
        .filter(|v| v.fields.iter().any(|(_, x)| *x == b))
        .find_map(|v| v.site)
        .map_or(0, |site| cfg.sites[site].line)
}

/// The check that a stored local can be kept in a checkpoint: one error at
/// the local's name, naming it, the `.await` it is kept across and the one
/// trait its type lacks (see `flow_runtime::__private::verdict`), and no
/// error at all for a type that has them all.
fn keep_check(binding: &cfg::Binding, ty: &Type, line: usize) -> TokenStream {
    let name = &binding.name;
    let span = name.span();
    // The type, at the local's name: where the error points.
    let ty = respan(ty.to_token_stream(), span);
    let kept =
        format!("`{name}` is kept across the `.await` on line {line}, but its type `{{Self}}`");
    let label =
        format!("`{name}` is stored in the flow's checkpoint at the `.await` on line {line}");
    let store_instead = format!(
        "drop `{name}` before the `.await` (or keep a value that can be stored in its place); a type of your own can derive `Serialize` and `Deserialize`"
    );
    let traits = [
        (
            "CheckpointSerialize",
            "HasSerialize",
            format!(
                "{kept} is not `Serialize`: every local kept across an `.await` is stored in the checkpoint"
            ),
            store_instead.clone(),
        ),
        (
            "CheckpointDeserialize",
            "HasDeserialize",
            format!(
                "{kept} is not `Deserialize`: every local kept across an `.await` is read back from the checkpoint"
            ),
            store_instead,
        ),
        (
            "CheckpointDebug",
            "HasDebug",
            format!(
                "{kept} is not `Debug`: a checkpoint's locals are shown in the state's `Debug` output"
            ),
            format!("derive or implement `Debug` for it, or drop `{name}` before the `.await`"),
        ),
        (
            "CheckpointSend",
            "HasSend",
            format!("{kept} is not `Send`: a flow may resume on another thread"),
            format!(
                "drop `{name}` before the `.await`, or keep a `Send` value (e.g. an `Arc` rather than an `Rc`)"
            ),
        ),
    ];
    let mut decls = TokenStream::new();
    let mut bounds = Vec::new();
    for (tr, has, message, note) in traits {
        let tr = Ident::new(tr, span);
        let has = Ident::new(has, span);
        decls.extend(quote_spanned! {span=>
            #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
            trait #tr<V> {}
            #[diagnostic::do_not_recommend]
            impl<T, V: ::flow_runtime::__private::verdict::#has> #tr<V> for T {}
        });
        bounds.push(quote_spanned!(span=> #tr<V>));
    }
    quote_spanned! {span=>
        const _: fn() = || {
            #[allow(unused_imports)]
            use ::flow_runtime::__private::verdict::{Level0 as _, Level1 as _, Level2 as _, Level3 as _, Level4 as _};
            #decls
            fn check<T: #(#bounds)+*, V>(_: V) {}
            check::<#ty, _>((&&&&&::flow_runtime::__private::verdict::Probe::<#ty>::new()).verdict());
        };
    }
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Group(g) => {
                let mut out = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                out.set_span(span);
                TokenTree::Group(out)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// The fields of `FlowLocals`: every binding live at some suspension point,
/// in declaration order, named after it (a shadowed one gets `__2`, `__3`..
/// in order of declaration).
fn frame_fields(cfg: &Cfg, variants: &[Variant]) -> Vec<(Ident, BindingId)> {
    let stored: BTreeSet<BindingId> = variants
        .iter()
        .filter(|v| v.site.is_some())
        .flat_map(|v| v.fields.iter().map(|(_, b)| *b))
        .collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    stored
        .into_iter()
        .map(|b| {
            let name = cfg.bindings[b].name.to_string();
            let n = seen.entry(name.clone()).or_insert(0);
            *n += 1;
            let field = if *n == 1 {
                cfg.bindings[b].name.clone()
            } else {
                format_ident!("{}__{}", name.trim_start_matches("r#"), *n)
            };
            (field, b)
        })
        .collect()
}

/// For each suspension point, the `FlowLocals` fields that may hold a value
/// there although their local is dead: a forward pass over the blocks of
/// which fields may be filled (a field is filled when its local is saved
/// for a block where it is live, and emptied when a block takes the local
/// back). Emptying them before the state is stored keeps each checkpoint
/// to exactly the live locals, with code proportional to the body.
fn stale_at_sites(
    cfg: &Cfg,
    live: &Liveness,
    frame: &HashMap<BindingId, Ident>,
) -> Vec<Vec<BindingId>> {
    let n = cfg.blocks.len();
    let in_frame = |set: &Set| -> Set {
        set.iter()
            .copied()
            .filter(|b| frame.contains_key(b))
            .collect()
    };
    let mut filled_in: Vec<Set> = vec![Set::new(); n];
    filled_in[0] = in_frame(&live.live_in[0]);
    for site in &cfg.sites {
        filled_in[site.resume] = in_frame(&live.live_in[site.resume]);
    }
    let mut at_term: Vec<Set> = vec![Set::new(); n];
    loop {
        let mut changed = false;
        for b in (0..n).filter(|b| live.reachable[*b]) {
            let block = &cfg.blocks[b];
            let mut filled = filled_in[b].clone();
            let mut mentioned: Set = block.term_mentions.iter().copied().collect();
            for p in &block.pieces {
                mentioned.extend(p.mentions.iter().copied());
                mentioned.extend(p.uses.iter().copied());
            }
            for v in &block.visible {
                if mentioned.contains(v) && live.live_in[b].contains(v) {
                    filled.remove(v);
                }
            }
            at_term[b] = filled.clone();
            let Some(term) = &block.term else { continue };
            for (t, _) in liveness::successors(cfg, term) {
                let mut out = in_frame(&live.live_in[t]);
                if !matches!(term, Term::Suspend { .. }) {
                    out.extend(filled.iter().copied());
                }
                let before = filled_in[t].len();
                filled_in[t].extend(out);
                changed |= filled_in[t].len() != before;
            }
        }
        if !changed {
            break;
        }
    }
    cfg.sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            let b = cfg
                .blocks
                .iter()
                .position(|blk| matches!(blk.term, Some(Term::Suspend { site, .. }) if site == i));
            b.map(|b| {
                at_term[b]
                    .iter()
                    .copied()
                    .filter(|x| !live.live_in[site.resume].contains(x))
                    .collect()
            })
            .unwrap_or_default()
        })
        .collect()
}

fn rewrite_returns(e: &syn::Expr) -> syn::Expr {
    let mut e = e.clone();
    lower::ReturnRewriter.visit_expr_mut(&mut e);
    e
}

fn collect_value_slots(ts: TokenStream, out: &mut BTreeSet<Ident>) {
    for tt in ts {
        match tt {
            TokenTree::Ident(i) if i.to_string().starts_with("__flow_value_") => {
                out.insert(i);
            }
            TokenTree::Group(g) => collect_value_slots(g.stream(), out),
            _ => {}
        }
    }
}

/// The span errors about a stored type point at: the type as written.
fn ty_span(ty: &Type) -> Span {
    ty.to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}

/// Where a jump to `b` really leads: past blocks with no code that only
/// `Goto` another block.
fn thread(cfg: &Cfg, mut b: BlockId) -> BlockId {
    for _ in 0..cfg.blocks.len() {
        match &cfg.blocks[b] {
            cfg::Block {
                pieces,
                term: Some(Term::Goto(next)),
                ..
            } if pieces.is_empty() && *next != b => b = *next,
            _ => break,
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use crate::expand::expand;

    /// A flow with `awaits` receives and `locals` accumulators, all live
    /// from their declaration to the end.
    pub fn wide_flow(awaits: usize, locals: usize) -> String {
        let mut body = String::new();
        for k in 0..locals {
            body.push_str(&format!("let mut v{k}: u64 = {k};\n"));
        }
        for j in 0..awaits {
            body.push_str(&format!(
                "let a{j}: u64 = s.receive::<u64>().await?.validate(Ok)?;\nv{} += a{j};\n",
                j % locals
            ));
        }
        let sum: Vec<String> = (0..locals).map(|k| format!("v{k}")).collect();
        format!(
            "async fn wide(ctx: &mut FlowContext, s: FlowSession) -> Result<u64, FlowError> {{\n{body}Ok({})\n}}",
            sum.join(" + ")
        )
    }

    fn expansion_len(source: &str) -> usize {
        let item: proc_macro2::TokenStream = source.parse().expect("source parses");
        let out = expand(proc_macro2::TokenStream::new(), item);
        assert!(
            !out.to_string().contains("compile_error"),
            "the flow has errors"
        );
        out.to_string().len()
    }

    /// The variant names of the state enum `#[flow]` generates for `source`.
    fn state_names(source: &str) -> Vec<String> {
        let item: proc_macro2::TokenStream = source.parse().expect("source parses");
        let out = expand(proc_macro2::TokenStream::new(), item);
        assert!(
            !out.to_string().contains("compile_error"),
            "the flow has errors: {out}"
        );
        let file: syn::File = syn::parse2(out).expect("the expansion parses");
        let module = file
            .items
            .iter()
            .find_map(|i| match i {
                syn::Item::Mod(m) => m.content.as_ref(),
                _ => None,
            })
            .expect("a generated module");
        module
            .1
            .iter()
            .find_map(|i| match i {
                syn::Item::Enum(e) if e.ident == "Flow" => {
                    Some(e.variants.iter().map(|v| v.ident.to_string()).collect())
                }
                _ => None,
            })
            .expect("the state enum")
    }

    #[test]
    fn points_that_share_a_name_are_named_after_their_branch() {
        let names = state_names(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, flag: bool) -> Result<u32, FlowError> {
                if flag {
                    let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    Ok(x)
                } else {
                    let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    Ok(x + 1)
                }
            }",
        );
        assert_eq!(names, ["Start", "AwaitXThen", "AwaitXElse", "Done"]);
    }

    #[test]
    fn points_in_match_arms_are_named_after_the_arm() {
        let names = state_names(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, m: Msg) -> Result<u32, FlowError> {
                match m {
                    Msg::Ping(n) => {
                        let y: u32 = s.send_and_receive::<u32>(&n).await?.validate(Ok)?;
                        Ok(y)
                    }
                    Msg::Pong => {
                        let y: u32 = s.receive::<u32>().await?.validate(Ok)?;
                        Ok(y)
                    }
                    _ => {
                        let y: u32 = s.receive::<u32>().await?.validate(Ok)?;
                        Ok(y)
                    }
                }
            }",
        );
        assert_eq!(
            names,
            ["Start", "AwaitYPing", "AwaitYPong", "AwaitYArm", "Done"]
        );
    }

    #[test]
    fn points_no_branch_tells_apart_keep_numbered_names() {
        // One block: no place word at all.
        let names = state_names(
            "async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
                s.receive::<u32>().await?;
                s.receive::<u32>().await?;
                Ok(1)
            }",
        );
        assert_eq!(names, ["Start", "Receive", "Receive2", "Done"]);
        // One point at the top, one in a branch: not every point has a word.
        let names = state_names(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, c: bool) -> Result<u32, FlowError> {
                let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
                if c {
                    let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    return Ok(x);
                }
                Ok(x)
            }",
        );
        assert_eq!(names, ["Start", "AwaitX", "AwaitX2", "Done"]);
        // Two `then` branches: the same word twice.
        let names = state_names(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, a: bool, b: bool) -> Result<u32, FlowError> {
                let mut t: u32 = 0;
                if a {
                    let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    t += x;
                }
                if b {
                    let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    t += x;
                }
                Ok(t)
            }",
        );
        assert_eq!(names, ["Start", "AwaitX", "AwaitX2", "Done"]);
    }

    /// A `let` whose value is an `if` (or whose `else` waits) does not
    /// lend its name to a point inside: each point is named by its own
    /// statement, and by its branch.
    #[test]
    fn a_let_names_only_the_await_it_binds() {
        let names = state_names(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, c: bool, o: Option<u32>) -> Result<u32, FlowError> {
                let total: u32 = if c {
                    let r: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    r
                } else {
                    let r: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    r + 1
                };
                let Some(x): Option<u32> = o else {
                    s.receive::<u32>().await?;
                    return Ok(total);
                };
                Ok(total + x)
            }",
        );
        assert_eq!(
            names,
            ["Start", "AwaitRThen", "AwaitRElse", "Receive", "Done"]
        );
    }

    #[test]
    fn a_state_label_is_kept_as_written() {
        let names = state_names(
            "async fn f(ctx: &mut FlowContext, s: FlowSession, c: bool) -> Result<u32, FlowError> {
                if c {
                    #[state(AwaitPayment)]
                    let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
                    return Ok(x);
                }
                let x: u32 = s.receive::<u32>().await?.validate(Ok)?;
                Ok(x)
            }",
        );
        assert_eq!(names, ["Start", "AwaitPayment", "AwaitX", "Done"]);
    }

    #[test]
    fn place_words_name_the_innermost_branch() {
        use super::place_word;
        assert_eq!(place_word("stmt 1 / if ok then / stmt 0 / await 0"), "Then");
        assert_eq!(place_word("stmt 1 / if ok else / stmt 0 / await 0"), "Else");
        assert_eq!(
            place_word("stmt 0 / match m arm Msg::Ping(x) / stmt 0 / await 0"),
            "Ping"
        );
        assert_eq!(place_word("stmt 0 / match n arm 0 / await 0"), "Arm");
        assert_eq!(place_word("stmt 0 / let Some(x) else / await 0"), "Else");
        assert_eq!(
            place_word("stmt 0 / 'outer: loop / stmt 0 / await 0"),
            "InLoop"
        );
        assert_eq!(
            place_word("stmt 0 / while i < n / stmt 0 / await 0"),
            "InLoop"
        );
        assert_eq!(place_word("stmt 2 / await 0"), "");
        assert_eq!(
            place_word("stmt 0 / if a then / stmt 0 / match m arm Some(v) / stmt 0 / await 0"),
            "Some"
        );
    }

    #[test]
    fn the_own_state_type_is_recognised_through_shifted_paths() {
        use super::is_own_state;
        let name = syn::Ident::new("buyer", proc_macro2::Span::call_site());
        let own = |t: &str| is_own_state(&syn::parse_str(t).unwrap(), &name);
        assert!(own("buyer::Flow"));
        assert!(own("super::buyer::Flow"));
        assert!(!own("seller::Flow"));
        assert!(!own("other::buyer::Flow"));
    }

    /// The expansion of a 300-await flow with 50 live locals stays under a
    /// stated bound, and grows linearly: three times the awaits make at
    /// most a little over three times the code (a per-variant field list
    /// made it 5.9 MB and quadratic).
    #[test]
    fn expansion_is_linear_in_the_body() {
        const BOUND: usize = 1_000_000;
        let big = expansion_len(&wide_flow(300, 50));
        let third = expansion_len(&wide_flow(100, 50));
        let one_live = expansion_len(&wide_flow(300, 1));
        assert!(
            big <= BOUND,
            "300 awaits x 50 live locals expand to {big} bytes (bound {BOUND})"
        );
        assert!(
            big * 10 <= third * 33,
            "300 awaits: {big} bytes, 100 awaits: {third} bytes: not linear"
        );
        assert!(
            big * 10 <= one_live * 15,
            "50 live locals: {big} bytes, 1 live local: {one_live} bytes: the locals are repeated per state"
        );
    }
}
