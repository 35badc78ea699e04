//! A flow's state machine as data, and drawings of it.
//!
//! `#[flow]` knows every state it generates and every path between them,
//! so it emits them as a constant: [`Flow::STATE_GRAPH`](crate::Flow::STATE_GRAPH).
//! A [`StateGraph`] lists the states (the variant names, their doc lines
//! and the locals each one stores) and the transitions between them (from
//! one suspension point to the next, with the branches, loop conditions
//! and match arms the path takes). A state waiting on a sub-flow holds the
//! child's own graph, drawn as a box nested in the parent's.
//!
//! The same graph is drawn three ways, each with an optional state to
//! highlight (a running flow's current state):
//!
//! * [`StateGraph::to_mermaid`]: Mermaid `stateDiagram-v2` text, which
//!   GitHub, GitLab and many documentation tools draw in place;
//! * [`StateGraph::to_dot`]: Graphviz DOT, for `dot -Tsvg` and every tool
//!   that reads it;
//! * [`StateGraph::to_svg`]: an SVG picture made in-process, with no
//!   external program and no JavaScript, for the node's web dashboard and
//!   the book.
//!
//! Why the SVG is laid out by the `layout-rs` crate: it is the Rust
//! implementation of Graphviz's layered ("dot") layout, with no
//! dependencies of its own, no C library and no process to start, and its
//! output is deterministic (the same graph gives the same bytes, which the
//! book's pictures are tested against). It lacks Graphviz's clusters, so
//! the SVG lists a sub-flow's states in a box nested inside the parent
//! state's box (one level: the DOT and Mermaid texts nest every level).
//!
//! ```
//! use flow_runtime::graph::{Field, Operation, OperationKind, State, StateGraph, StateKind, Transition};
//!
//! const fn state(name: &'static str, kind: StateKind) -> State {
//!     State { name, kind, doc: "", stored: &[], awaits: None, sub_flow: None }
//! }
//! const PING: StateGraph = StateGraph {
//!     flow: "demo::ping",
//!     title: "ping",
//!     fields: &[Field { name: "total", ty: "u64" }],
//!     states: &[
//!         state("Start", StateKind::Start),
//!         State {
//!             stored: &[0b1], // fields[0]
//!             awaits: Some(Operation { kind: OperationKind::Receive, code: "session.receive::<u32>()" }),
//!             ..state("AwaitEcho", StateKind::Suspended)
//!         },
//!         state("Done", StateKind::Done),
//!     ],
//!     transitions: &[
//!         Transition { from: "Start", to: "AwaitEcho", when: &["while i < rounds"] },
//!         Transition { from: "AwaitEcho", to: "AwaitEcho", when: &["while i < rounds"] },
//!         Transition { from: "AwaitEcho", to: "Done", when: &["end of while i < rounds"] },
//!     ],
//! };
//!
//! let mermaid = PING.to_mermaid(Some("AwaitEcho"));
//! assert!(mermaid.contains("Start --> AwaitEcho : while i #60; rounds<br>await session.receive#58;#58;#60;u32#62;()"));
//! assert!(mermaid.contains("class AwaitEcho current"));
//! assert!(PING.to_dot(None).starts_with("digraph \"ping\" {"));
//! assert!(PING.to_svg(Some("AwaitEcho")).contains("class=\"flow-state current\" data-state=\"AwaitEcho\""));
//! ```

mod dot;
mod mermaid;
mod svg;

use serde::Serialize;

/// The states of one flow and the transitions between them.
///
/// Every field is `'static` so that `#[flow]` can emit the whole graph as a
/// constant; build one by hand the same way. Serialized (the admin API's
/// JSON), each state lists its fields by name and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateGraph {
    /// The flow's `NAME`.
    pub flow: &'static str,
    /// The flow fn's own name (`ping`), for titles.
    pub title: &'static str,
    /// Every value any state stores (the arguments and the locals kept
    /// across suspension points), each once: states refer to them by
    /// index ([`State::stored`]), so the constant grows with the states
    /// plus the locals, not with their product.
    pub fields: &'static [Field],
    /// Every state: `Start`, one per suspension point, `Done`.
    pub states: &'static [State],
    /// Every way from one state to the next.
    pub transitions: &'static [Transition],
}

/// One state of a flow: a variant of its state enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// The variant's name (`AwaitEcho`), as `Flow::state_name` gives it.
    pub name: &'static str,
    /// Which kind of state.
    pub kind: StateKind,
    /// The variant's doc line (for a suspension point: the awaited
    /// operation and where it is in the source).
    pub doc: &'static str,
    /// What the state stores (the arguments for `Start`, the locals live
    /// where a suspended state resumes), as a bit set over the graph's
    /// [`fields`](StateGraph::fields): bit `i % 64` of word `i / 64` is
    /// field `i`. [`StateGraph::fields_of`] lists them.
    pub stored: &'static [u64],
    /// What a suspended state waits for.
    pub awaits: Option<Operation>,
    /// The child flow's graph, for a state waiting on a sub-flow.
    pub sub_flow: Option<&'static StateGraph>,
}

/// The kinds of [`State`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// Built, not run yet: holds the flow's arguments.
    Start,
    /// Suspended at an `.await`.
    Suspended,
    /// Finished.
    Done,
}

/// A value a state stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Field {
    /// The local's (or argument's) name.
    pub name: &'static str,
    /// Its type, as written in the flow.
    pub ty: &'static str,
}

/// The operation a suspended state waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Operation {
    /// Which operation.
    pub kind: OperationKind,
    /// The awaited expression as written (`session.receive::<u32>()`).
    pub code: &'static str,
}

/// The suspending operations a flow may `.await`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// `session.receive::<T>()`.
    Receive,
    /// `session.send_and_receive::<T>(&v)`.
    SendAndReceive,
    /// `ctx.sleep(d)`.
    Sleep,
    /// `ctx.sub_flow(child)`.
    SubFlow,
}

/// One way from a state to the next: the code that runs when `from`
/// resumes (or, for `Start`, when the flow starts) reaches `to`'s
/// suspension point, or the flow's end, along this path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The state it leaves.
    pub from: &'static str,
    /// The state it enters (`Done` when the flow returns).
    pub to: &'static str,
    /// The branches the path takes, in order: `if ok`, `else of if ok`,
    /// `while i < rounds`, `end of while i < rounds`, `match msg: Ping(x)`,
    /// `for x in items`. Empty for straight-line code.
    pub when: &'static [&'static str],
}

impl StateGraph {
    /// The graph of a flow whose states are unknown (a hand-written
    /// [`Flow`](crate::Flow) impl): no states, no transitions.
    pub const fn opaque(flow: &'static str) -> Self {
        StateGraph {
            flow,
            title: flow,
            fields: &[],
            states: &[],
            transitions: &[],
        }
    }

    /// The state named `name`.
    pub fn state(&self, name: &str) -> Option<&'static State> {
        self.states.iter().find(|s| s.name == name)
    }

    /// The fields `state` stores, in the graph's order.
    pub fn fields_of(&self, state: &State) -> Vec<&'static Field> {
        self.fields
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                state
                    .stored
                    .get(i / 64)
                    .is_some_and(|word| word & (1 << (i % 64)) != 0)
            })
            .map(|(_, f)| f)
            .collect()
    }

    /// The lines drawn in a state's box under its name: its stored fields
    /// as `name: Type`.
    pub(crate) fn field_lines(&self, state: &State) -> Vec<String> {
        self.fields_of(state)
            .iter()
            .map(|f| format!("{}: {}", f.name, f.ty))
            .collect()
    }

    /// A transition's label for drawings: its conditions, then the
    /// operation the state it enters awaits.
    pub(crate) fn label(&self, t: &Transition) -> Vec<String> {
        let mut lines: Vec<String> = t.when.iter().map(|w| (*w).to_owned()).collect();
        if let Some(op) = self.state(t.to).and_then(|s| s.awaits) {
            lines.push(format!("await {}", op.code));
        }
        lines
    }
}

/// `text` with each character listed in `table` replaced by its
/// replacement (the drawing formats' escapes differ only in their tables).
pub(crate) fn escape_chars(text: &str, table: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match table.iter().find(|(from, _)| *from == c) {
            Some((_, to)) => out.push_str(to),
            None => out.push(c),
        }
    }
    out
}

/// The JSON shape of a graph: each state with its fields spelled out.
#[derive(Serialize)]
struct GraphView<'a> {
    flow: &'a str,
    title: &'a str,
    states: Vec<StateView<'a>>,
    transitions: &'a [Transition],
}

#[derive(Serialize)]
struct StateView<'a> {
    name: &'a str,
    kind: StateKind,
    doc: &'a str,
    fields: Vec<&'a Field>,
    awaits: Option<Operation>,
    sub_flow: Option<GraphView<'a>>,
}

impl StateGraph {
    fn view(&self) -> GraphView<'static> {
        GraphView {
            flow: self.flow,
            title: self.title,
            states: self
                .states
                .iter()
                .map(|s| StateView {
                    name: s.name,
                    kind: s.kind,
                    doc: s.doc,
                    fields: self.fields_of(s),
                    awaits: s.awaits,
                    sub_flow: s.sub_flow.map(StateGraph::view),
                })
                .collect(),
            transitions: self.transitions,
        }
    }
}

impl Serialize for StateGraph {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.view().serialize(serializer)
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Hand-built graphs for the drawing tests (the macro's own output is
    //! tested in the workspace's `tests` crate).
    use super::*;

    /// Fails unless each of `lines` is a whole line of `text`.
    pub(crate) fn assert_has_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(
                text.lines().any(|l| l == *line),
                "no line {line:?} in\n{text}"
            );
        }
    }

    const CHILD: StateGraph = StateGraph {
        flow: "demo::resolve",
        title: "resolve",
        fields: &[Field {
            name: "session",
            ty: "FlowSession",
        }],
        states: &[
            State {
                name: "Start",
                kind: StateKind::Start,
                doc: "Not started yet.",
                stored: &[0b1],
                awaits: None,
                sub_flow: None,
            },
            State {
                name: "AwaitTxs",
                kind: StateKind::Suspended,
                doc: "`session.receive::<Vec<Tx>>().await` at line 4.",
                stored: &[],
                awaits: Some(Operation {
                    kind: OperationKind::Receive,
                    code: "session.receive::<Vec<Tx>>()",
                }),
                sub_flow: None,
            },
            State {
                name: "Done",
                kind: StateKind::Done,
                doc: "Finished.",
                stored: &[],
                awaits: None,
                sub_flow: None,
            },
        ],
        transitions: &[
            Transition {
                from: "Start",
                to: "AwaitTxs",
                when: &[],
            },
            Transition {
                from: "AwaitTxs",
                to: "Done",
                when: &[],
            },
        ],
    };

    /// A parent with a branch, a loop and a sub-flow.
    pub const PARENT: StateGraph = StateGraph {
        flow: "demo::buy",
        title: "buy",
        fields: &[
            Field {
                name: "peer",
                ty: "Party",
            },
            Field {
                name: "limit",
                ty: "Option<u64>",
            },
            Field {
                name: "session",
                ty: "FlowSession",
            },
        ],
        states: &[
            State {
                name: "Start",
                kind: StateKind::Start,
                doc: "Not started yet.",
                stored: &[0b011],
                awaits: None,
                sub_flow: None,
            },
            State {
                name: "AwaitOffer",
                kind: StateKind::Suspended,
                doc: "`session.receive::<u64>().await` at line 9.",
                stored: &[0b100],
                awaits: Some(Operation {
                    kind: OperationKind::Receive,
                    code: "session.receive::<u64>()",
                }),
                sub_flow: None,
            },
            State {
                name: "SubFlowResolve",
                kind: StateKind::Suspended,
                doc: "`ctx.sub_flow(resolve(session)).await` at line 12.",
                stored: &[],
                awaits: Some(Operation {
                    kind: OperationKind::SubFlow,
                    code: "ctx.sub_flow(resolve(session))",
                }),
                sub_flow: Some(&CHILD),
            },
            State {
                name: "Done",
                kind: StateKind::Done,
                doc: "Finished.",
                stored: &[],
                awaits: None,
                sub_flow: None,
            },
        ],
        transitions: &[
            Transition {
                from: "Start",
                to: "AwaitOffer",
                when: &[],
            },
            Transition {
                from: "AwaitOffer",
                to: "AwaitOffer",
                when: &["if offer > \"limit\""],
            },
            Transition {
                from: "AwaitOffer",
                to: "SubFlowResolve",
                when: &["else of if offer > \"limit\""],
            },
            Transition {
                from: "SubFlowResolve",
                to: "Done",
                when: &[],
            },
        ],
    };
}
