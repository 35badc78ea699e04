//! Expansion snapshots: the pretty-printed expansion of a few flows,
//! compared with the committed files in `flow-macros/snapshots/`. They show
//! a reviewer exactly what users get from `cargo expand`.
//!
//! After an intended change to the generated code, regenerate with
//! `UPDATE_SNAPSHOTS=1 cargo test -p flow-macros` and review the diff.

use crate::expand::expand;
use proc_macro2::TokenStream;
use std::path::PathBuf;

fn check(name: &str, source: &str) {
    let item: TokenStream = source.parse().expect("snapshot source parses");
    let (attr, item) = split_attr(item);
    let out = expand(attr, item);
    let file: syn::File = match syn::parse2(out.clone()) {
        Ok(f) => f,
        Err(e) => panic!("expansion of {name} is not valid Rust ({e}):\n{out}"),
    };
    let pretty = format!(
        "// Expansion of `#[flow]` for:\n{}\n// ----- generated -----\n{}",
        source
            .trim()
            .lines()
            .map(|l| format!("// {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        prettyplease::unparse(&file)
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("snapshots")
        .join(format!("{name}.rs.snap"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &pretty).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == pretty,
        "expansion of `{name}` differs from {}; if the change is intended, run `UPDATE_SNAPSHOTS=1 cargo test -p flow-macros` and review the diff.\n\nnew expansion:\n{pretty}",
        path.display()
    );
}

/// `#[flow(args)] async fn ..` → (args, fn without the attribute).
fn split_attr(ts: TokenStream) -> (TokenStream, TokenStream) {
    let mut item: syn::ItemFn = syn::parse2(ts).expect("snapshot source is a fn");
    let pos = item
        .attrs
        .iter()
        .position(|a| a.path().is_ident("flow"))
        .expect("snapshot source has #[flow]");
    let attr = item.attrs.remove(pos);
    let args = match attr.meta {
        syn::Meta::List(l) => l.tokens,
        _ => TokenStream::new(),
    };
    (args, quote::quote!(#item))
}

#[test]
fn straight_line_ping() {
    check(
        "ping",
        r#"
#[flow]
pub async fn ping(ctx: &mut FlowContext, peer: Party, rounds: u32) -> Result<u64, FlowError> {
    let session = ctx.initiate_flow(&peer);
    let mut total: u64 = 0;
    let mut i: u32 = 0;
    while i < rounds {
        session.send(&i)?;
        let echo: u32 = session.receive::<u32>().await?.validate(Ok)?;
        total += u64::from(echo);
        i += 1;
    }
    Ok(total)
}
"#,
    );
}
