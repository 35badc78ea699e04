//! Mermaid `stateDiagram-v2` text of a [`StateGraph`].
//!
//! Mermaid state ids are global to a diagram, so a sub-flow's states get
//! ids prefixed with the parent state's (`SubFlowResolve__Start`) and show
//! their own name as a label. Text is escaped with Mermaid's entity codes
//! (`#58;` for `:`, `#60;` for `<`): a description ends at `:` or `;`, and
//! types such as `Vec<u8>` would otherwise be read as HTML. The lines of a
//! transition's label are joined with `<br>`.

use super::{StateGraph, StateKind, escape_chars};
use std::fmt::Write;

impl StateGraph {
    /// The graph as Mermaid `stateDiagram-v2` text: one state per variant
    /// (its stored fields as description lines), one arrow per transition
    /// (labelled with its conditions and the operation awaited next), a
    /// sub-flow as a composite state holding the child's states.
    ///
    /// `highlight` names a state to draw highlighted (class `current`),
    /// e.g. a running flow's current state; an unknown name highlights
    /// nothing.
    pub fn to_mermaid(&self, highlight: Option<&str>) -> String {
        let mut out = String::from("stateDiagram-v2\n");
        write_body(&mut out, self, "", 1);
        out.push_str("    classDef current fill:#ffe08a,stroke:#b7791f,stroke-width:3px\n");
        if let Some(name) = highlight.filter(|h| self.state(h).is_some()) {
            let _ = writeln!(out, "    class {name} current");
        }
        out
    }
}

/// Writes the states and transitions of `graph`, ids prefixed with
/// `prefix`, indented `depth` levels.
fn write_body(out: &mut String, graph: &StateGraph, prefix: &str, depth: usize) {
    let pad = "    ".repeat(depth);
    for state in graph.states {
        let id = format!("{prefix}{}", state.name);
        let fields = graph.field_lines(state);
        match state.sub_flow.filter(|c| !c.states.is_empty()) {
            Some(child) => {
                // A composite state takes no description lines: its fields
                // go in its title.
                let mut title = vec![escape(state.name)];
                title.extend(fields.iter().map(|f| escape(f)));
                let _ = writeln!(out, "{pad}state \"{}\" as {id} {{", title.join("<br>"));
                write_body(out, child, &format!("{id}__"), depth + 1);
                let _ = writeln!(out, "{pad}}}");
                continue;
            }
            None if !prefix.is_empty() => {
                let _ = writeln!(out, "{pad}state \"{}\" as {id}", escape(state.name));
            }
            None => {}
        }
        for line in fields {
            let _ = writeln!(out, "{pad}{id} : {}", escape(&line));
        }
    }
    for state in graph.states {
        let id = format!("{prefix}{}", state.name);
        match state.kind {
            StateKind::Start => {
                let _ = writeln!(out, "{pad}[*] --> {id}");
            }
            StateKind::Done => {
                let _ = writeln!(out, "{pad}{id} --> [*]");
            }
            StateKind::Suspended => {}
        }
    }
    for t in graph.transitions {
        let label: Vec<String> = graph.label(t).iter().map(|l| escape(l)).collect();
        let label = label.join("<br>");
        let (from, to) = (format!("{prefix}{}", t.from), format!("{prefix}{}", t.to));
        if label.is_empty() {
            let _ = writeln!(out, "{pad}{from} --> {to}");
        } else {
            let _ = writeln!(out, "{pad}{from} --> {to} : {label}");
        }
    }
}

/// Escapes text for a Mermaid label: entity codes for the characters
/// Mermaid's grammar or its HTML labels would read (a description ends at
/// `:` or `;`), and no line breaks.
fn escape(text: &str) -> String {
    escape_chars(
        text,
        &[
            ('<', "#60;"),
            ('>', "#62;"),
            ('#', "#35;"),
            ('&', "#38;"),
            ('"', "#34;"),
            (';', "#59;"),
            (':', "#58;"),
            ('{', "#123;"),
            ('}', "#125;"),
            ('\n', " "),
            ('\r', " "),
        ],
    )
}

#[cfg(test)]
mod tests {
    use crate::graph::fixtures::{PARENT, assert_has_lines};

    #[test]
    fn states_transitions_and_the_sub_flow_box() {
        let text = PARENT.to_mermaid(None);
        assert!(text.starts_with("stateDiagram-v2\n"), "{text}");
        assert_has_lines(
            &text,
            &[
                "    Start : peer#58; Party",
                "    Start : limit#58; Option#60;u64#62;",
                "    [*] --> Start",
                "    Done --> [*]",
                "    Start --> AwaitOffer : await session.receive#58;#58;#60;u64#62;()",
                "    AwaitOffer --> AwaitOffer : if offer #62; #34;limit#34;<br>await session.receive#58;#58;#60;u64#62;()",
                "    state \"SubFlowResolve\" as SubFlowResolve {",
                "        state \"AwaitTxs\" as SubFlowResolve__AwaitTxs",
                "        [*] --> SubFlowResolve__Start",
                "        SubFlowResolve__AwaitTxs --> SubFlowResolve__Done",
                "    SubFlowResolve --> Done",
            ],
        );
        assert!(!text.contains("class "), "nothing highlighted:\n{text}");
    }

    #[test]
    fn the_highlighted_state_gets_the_current_class() {
        let text = PARENT.to_mermaid(Some("AwaitOffer"));
        assert!(text.ends_with("    class AwaitOffer current\n"), "{text}");
        let unknown = PARENT.to_mermaid(Some("Nowhere"));
        assert!(!unknown.contains("class "), "{unknown}");
    }
}
