//! docs/macro.md shows the state graphs of `ping` and of the seller's
//! `sell` (and its `sell_steps`) as `#[flow]` emits them: each picture under `docs/graphs/` must
//! equal what [`StateGraph::to_svg`] draws now, and each Mermaid block the
//! page marks with `<!-- graph: NAME -->` what `to_mermaid` writes, so the
//! book cannot drift from the code.
//!
//! After an intended change, regenerate both with
//! `UPDATE_DOCS=1 cargo test -p finance-flows --test docs_graphs` and
//! review the diff.

use finance_flows::flows::trade::{sell, sell_steps};
use flow_runtime::Flow;
use flow_runtime::graph::StateGraph;
use flow_runtime::testing::ping_pong::ping;
use std::path::{Path, PathBuf};

/// The graphs the page shows, by the name it marks them with, and
/// whether it shows their Mermaid text too (`sell`'s holds `sell_steps`).
const GRAPHS: [(&str, &StateGraph, bool); 3] = [
    ("ping", &ping::Flow::STATE_GRAPH, true),
    ("sell", &sell::Flow::STATE_GRAPH, true),
    ("sell_steps", &sell_steps::Flow::STATE_GRAPH, false),
];

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// Replaces (or, with `update` false, returns) the Mermaid block after
/// the marker `<!-- graph: name -->` in `page`.
fn mermaid_block(page: &mut String, name: &str, update: Option<&str>) -> String {
    let marker = format!("<!-- graph: {name} -->\n```mermaid\n");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/macro.md has no `<!-- graph: {name} -->` Mermaid block"))
        + marker.len();
    let len = page[start..]
        .find("```\n")
        .unwrap_or_else(|| panic!("the Mermaid block of {name} is not closed"));
    let old = page[start..start + len].to_owned();
    if let Some(new) = update {
        page.replace_range(start..start + len, new);
    }
    old
}

#[test]
fn the_macro_page_shows_the_graphs_the_code_draws() {
    let update = std::env::var_os("UPDATE_DOCS").is_some();
    let page_path = docs().join("macro.md");
    let mut page = std::fs::read_to_string(&page_path).unwrap();
    let mut stale = Vec::new();
    for (name, graph, shows_mermaid) in GRAPHS {
        let svg_path = docs().join("graphs").join(format!("{name}.svg"));
        let svg = graph.to_svg(None);
        let mermaid = graph.to_mermaid(None);
        if update {
            std::fs::create_dir_all(svg_path.parent().unwrap()).unwrap();
            std::fs::write(&svg_path, &svg).unwrap();
            if shows_mermaid {
                mermaid_block(&mut page, name, Some(&mermaid));
            }
            continue;
        }
        if std::fs::read_to_string(&svg_path).ok().as_deref() != Some(svg.as_str()) {
            stale.push(format!("docs/graphs/{name}.svg"));
        }
        if shows_mermaid && mermaid_block(&mut page, name, None) != mermaid {
            stale.push(format!("the Mermaid block of {name} in docs/macro.md"));
        }
    }
    if update {
        std::fs::write(&page_path, page).unwrap();
    }
    assert!(
        stale.is_empty(),
        "{} differ from what the code draws now; if the change is intended, run `UPDATE_DOCS=1 cargo test -p finance-flows --test docs_graphs` and review the diff",
        stale.join(", ")
    );
}

#[test]
fn the_seller_nests_its_sub_flows() {
    let graph = &sell::Flow::STATE_GRAPH;
    let steps = graph
        .states
        .iter()
        .find_map(|s| s.sub_flow)
        .expect("sell runs sell_steps as a sub-flow");
    assert_eq!(steps.title, "sell_steps");
    let nested: Vec<&str> = steps
        .states
        .iter()
        .filter_map(|s| s.sub_flow.map(|c| c.title))
        .collect();
    assert_eq!(nested, ["receive_to_sign", "receive_finality"]);
}
