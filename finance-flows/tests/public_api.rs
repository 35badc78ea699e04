//! finance-flows is written the way a user of the crates writes an
//! application: it names only `flow_runtime`'s application API — the
//! crate root (flow types, `Party`, `FlowHandle`, ...), `prelude`,
//! `testing`, `runner`, `tcp`, `transport`, `graph` (a flow's state
//! graph and its drawings) and `scale_out` (a node's gateway, workers and
//! client over PostgreSQL) — never the engine's
//! internals (`engine`, `storage`, `__private`). This test reads every Rust
//! file of the crate and lists each path it names under `flow_runtime`.

use std::path::{Path, PathBuf};

/// Modules of `flow_runtime` an application may name.
const APPLICATION_MODULES: &[&str] = &[
    "prelude",
    "testing",
    "runner",
    "tcp",
    "transport",
    "graph",
    "scale_out",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The first segment of every path named after `flow_runtime::` in
/// `text`, with `use flow_runtime::{a::B, C}` groups split into `a`, `C`.
fn first_segments(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("flow_runtime") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "flow_runtime".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // part of another identifier
        }
        let Some(after) = rest.trim_start().strip_prefix("::") else {
            continue;
        };
        let after = after.trim_start();
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        found.push(segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                item.push(c);
            }
            if !item.trim().is_empty() {
                found.push(segment(&item));
            }
        } else {
            found.push(segment(after));
        }
    }
    found
}

fn segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn allowed(segment: &str) -> bool {
    let root_item = segment.starts_with(|c: char| c.is_ascii_uppercase())
        || segment == "flow"
        || segment == "self";
    root_item || APPLICATION_MODULES.contains(&segment)
}

#[test]
fn finance_flows_names_only_the_application_api_of_flow_runtime() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "examples"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "the crate's sources were not found");
    let this_file = Path::new(file!()).file_name();
    let mut internal = Vec::new();
    let mut named = 0;
    for file in &files {
        if file.file_name() == this_file {
            continue; // it names the internals to forbid them
        }
        let text = std::fs::read_to_string(file).expect("readable source");
        for s in first_segments(&text) {
            named += 1;
            if !allowed(&s) {
                internal.push(format!("{}: flow_runtime::{s}", file.display()));
            }
        }
    }
    assert!(named > 50, "too few paths found: the scan is broken");
    assert!(
        internal.is_empty(),
        "finance-flows names runtime internals:\n{}",
        internal.join("\n")
    );
}

#[test]
fn the_scan_sees_grouped_and_nested_paths() {
    let text = "use flow_runtime::{engine::NodeCore, Party};\n\
                use flow_runtime::storage::Table;\n\
                let x: ::flow_runtime::testing::NodeId;\n\
                my_flow_runtime::x; flow_runtime :: __private::y";
    assert_eq!(
        first_segments(text),
        vec!["engine", "Party", "storage", "testing", "__private"]
    );
    assert!(!allowed("engine") && !allowed("storage") && !allowed("__private"));
    assert!(allowed("Party") && allowed("testing") && allowed("flow"));
}
