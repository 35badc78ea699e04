//! Graphviz DOT text of a [`StateGraph`].
//!
//! A sub-flow is a cluster (`subgraph cluster_..`, drawn by Graphviz as a
//! box) holding the child's states; transitions into the sub-flow state
//! enter the child's `Start`, transitions out of it leave the child's
//! `Done`, clipped at the box (`compound=true` with `lhead`/`ltail`).

use super::{State, StateGraph, StateKind, escape_chars};
use std::fmt::Write;

/// The fill of a highlighted state.
pub(crate) const HIGHLIGHT_FILL: &str = "#ffe08a";
/// The border of a highlighted state.
pub(crate) const HIGHLIGHT_LINE: &str = "#b7791f";

impl StateGraph {
    /// The graph as Graphviz DOT text (`dot -Tsvg` draws it): one box per
    /// state with its name and stored fields, one arrow per transition
    /// labelled with its conditions and the operation awaited next, a
    /// sub-flow as a cluster holding the child's states.
    ///
    /// `highlight` names a state to draw filled and with a thick border,
    /// e.g. a running flow's current state; an unknown name highlights
    /// nothing.
    pub fn to_dot(&self, highlight: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph {} {{", quote(self.title));
        out.push_str("    compound=true;\n    rankdir=TB;\n");
        out.push_str(
            "    node [shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\", fontname=\"Helvetica\", fontsize=11];\n",
        );
        out.push_str("    edge [fontname=\"Helvetica\", fontsize=9];\n");
        write_states(&mut out, self, "", 1, highlight);
        write_transitions(&mut out, self, "", 1);
        out.push_str("}\n");
        out
    }
}

/// The node id of `state` in a graph whose ids are prefixed with `prefix`.
fn node_id(prefix: &str, state: &str) -> String {
    format!("{prefix}{state}")
}

/// A non-empty sub-flow graph of `state`.
fn child(state: &State) -> Option<&'static StateGraph> {
    state.sub_flow.filter(|c| !c.states.is_empty())
}

fn write_states(
    out: &mut String,
    graph: &StateGraph,
    prefix: &str,
    depth: usize,
    highlight: Option<&str>,
) {
    let pad = "    ".repeat(depth);
    for state in graph.states {
        let id = node_id(prefix, state.name);
        let lit = highlight == Some(state.name);
        if let Some(sub) = child(state) {
            let _ = writeln!(out, "{pad}subgraph {} {{", quote(&format!("cluster_{id}")));
            let _ = writeln!(
                out,
                "{pad}    label={};",
                quote(&format!("{} (sub-flow {})", state.name, sub.title))
            );
            if lit {
                let _ = writeln!(
                    out,
                    "{pad}    style=\"rounded,filled\"; fillcolor=\"{HIGHLIGHT_FILL}\"; color=\"{HIGHLIGHT_LINE}\"; penwidth=3;"
                );
            } else {
                let _ = writeln!(out, "{pad}    style=\"rounded,dashed\";");
            }
            write_states(out, sub, &format!("{id}/"), depth + 1, None);
            write_transitions(out, sub, &format!("{id}/"), depth + 1);
            let _ = writeln!(out, "{pad}}}");
            continue;
        }
        // Left-justified lines (`\l`) under the centred name.
        let mut label = escape(state.name);
        let fields = graph.field_lines(state);
        if !fields.is_empty() {
            label.push_str("\\n");
            for f in &fields {
                label.push_str(&escape(f));
                label.push_str("\\l");
            }
        }
        let mut attrs = format!("label=\"{label}\"");
        match state.kind {
            StateKind::Start | StateKind::Done => attrs.push_str(", peripheries=2"),
            StateKind::Suspended => {}
        }
        if lit {
            let _ = write!(
                attrs,
                ", fillcolor=\"{HIGHLIGHT_FILL}\", color=\"{HIGHLIGHT_LINE}\", penwidth=3"
            );
        }
        let _ = writeln!(out, "{pad}{} [{attrs}];", quote(&id));
    }
}

fn write_transitions(out: &mut String, graph: &StateGraph, prefix: &str, depth: usize) {
    let pad = "    ".repeat(depth);
    for t in graph.transitions {
        let mut attrs = Vec::new();
        // Into and out of a sub-flow: through the child's Start and Done.
        let from = match graph.state(t.from).and_then(child) {
            Some(sub) => {
                attrs.push(format!(
                    "ltail={}",
                    quote(&format!("cluster_{prefix}{}", t.from))
                ));
                node_id(
                    &format!("{prefix}{}/", t.from),
                    end_state(sub, StateKind::Done),
                )
            }
            None => node_id(prefix, t.from),
        };
        let to = match graph.state(t.to).and_then(child) {
            Some(sub) => {
                attrs.push(format!(
                    "lhead={}",
                    quote(&format!("cluster_{prefix}{}", t.to))
                ));
                node_id(
                    &format!("{prefix}{}/", t.to),
                    end_state(sub, StateKind::Start),
                )
            }
            None => node_id(prefix, t.to),
        };
        let label = graph.label(t);
        if !label.is_empty() {
            let text: Vec<String> = label.iter().map(|l| escape(l)).collect();
            attrs.insert(0, format!("label=\"{}\"", text.join("\\n")));
        }
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" [{}]", attrs.join(", "))
        };
        let _ = writeln!(out, "{pad}{} -> {}{attrs};", quote(&from), quote(&to));
    }
}

/// The name of `graph`'s first state of `kind` (its `Start` or `Done`).
fn end_state(graph: &StateGraph, kind: StateKind) -> &'static str {
    graph
        .states
        .iter()
        .find(|s| s.kind == kind)
        .or_else(|| graph.states.first())
        .map_or("", |s| s.name)
}

/// A DOT quoted string.
fn quote(text: &str) -> String {
    format!("\"{}\"", escape(text))
}

/// Escapes text inside a DOT quoted string.
fn escape(text: &str) -> String {
    escape_chars(
        text,
        &[('"', "\\\""), ('\\', "\\\\"), ('\n', " "), ('\r', " ")],
    )
}

#[cfg(test)]
mod tests {
    use crate::graph::fixtures::{PARENT, assert_has_lines};

    #[test]
    fn states_transitions_and_the_sub_flow_cluster() {
        let text = PARENT.to_dot(None);
        assert!(text.starts_with("digraph \"buy\" {\n"), "{text}");
        assert!(text.ends_with("}\n"), "{text}");
        assert_has_lines(
            &text,
            &[
                "    \"Start\" [label=\"Start\\npeer: Party\\llimit: Option<u64>\\l\", peripheries=2];",
                "    \"AwaitOffer\" [label=\"AwaitOffer\\nsession: FlowSession\\l\"];",
                "    \"AwaitOffer\" -> \"AwaitOffer\" [label=\"if offer > \\\"limit\\\"\\nawait session.receive::<u64>()\"];",
                "    subgraph \"cluster_SubFlowResolve\" {",
                "        label=\"SubFlowResolve (sub-flow resolve)\";",
                "        \"SubFlowResolve/AwaitTxs\" [label=\"AwaitTxs\"];",
                "        \"SubFlowResolve/Start\" -> \"SubFlowResolve/AwaitTxs\" [label=\"await session.receive::<Vec<Tx>>()\"];",
                "    \"AwaitOffer\" -> \"SubFlowResolve/Start\" [label=\"else of if offer > \\\"limit\\\"\\nawait ctx.sub_flow(resolve(session))\", lhead=\"cluster_SubFlowResolve\"];",
                "    \"SubFlowResolve/Done\" -> \"Done\" [ltail=\"cluster_SubFlowResolve\"];",
            ],
        );
        assert!(!text.contains("penwidth=3"), "nothing highlighted:\n{text}");
    }

    #[test]
    fn the_highlighted_state_is_filled() {
        let text = PARENT.to_dot(Some("AwaitOffer"));
        let lit: Vec<&str> = text.lines().filter(|l| l.contains("penwidth=3")).collect();
        assert_eq!(lit.len(), 1, "{text}");
        assert!(lit[0].starts_with("    \"AwaitOffer\" ["), "{text}");
        let cluster = PARENT.to_dot(Some("SubFlowResolve"));
        assert!(
            cluster.contains("fillcolor=\"#ffe08a\"; color=\"#b7791f\"; penwidth=3;"),
            "{cluster}"
        );
    }
}
