//! docs/getting-started.md shows this crate's files as they are: each code
//! block whose info string names a file (```` ```rust src/lib.rs ````) must
//! equal that file, so the page cannot drift from code that compiles and
//! passes its tests.

use std::path::Path;

/// `(file name, block text)` for each code block that names a file.
fn named_blocks(page: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in page.lines() {
        match &mut open {
            None => {
                if let Some(info) = line.strip_prefix("```rust ") {
                    open = Some((info.trim().to_owned(), String::new()));
                }
            }
            Some((name, text)) => {
                if line == "```" {
                    blocks.push((std::mem::take(name), std::mem::take(text)));
                    open = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "an unclosed code block in the page");
    blocks
}

#[test]
fn the_page_shows_the_files_as_they_are() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("../../docs/getting-started.md")).unwrap();
    let blocks = named_blocks(&page);
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["src/lib.rs", "tests/mock.rs", "src/main.rs"],
        "the page's named code blocks"
    );
    for (name, text) in &blocks {
        let file = std::fs::read_to_string(root.join(name)).unwrap();
        assert_eq!(
            text, &file,
            "docs/getting-started.md's {name} differs from the file"
        );
    }
}
