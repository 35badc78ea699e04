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

#[test]
fn loops_and_match() {
    check(
        "loops_and_match",
        r#"
#[flow(version = 2)]
pub async fn tally(ctx: &mut FlowContext, s: FlowSession, items: Vec<u32>) -> Result<u32, FlowError> {
    let mut total: u32 = 0;
    for item in items {
        let reply: Reply = s.send_and_receive::<Reply>(&item).await?.validate(Ok)?;
        match reply {
            Reply::Skip => continue,
            Reply::Stop => break,
            Reply::Add(n) => total += n,
        }
    }
    loop {
        #[state(AwaitMore)]
        let more: bool = s.receive::<bool>().await?.validate(Ok)?;
        if !more {
            break;
        }
        total += 1;
    }
    Ok(total)
}
"#,
    );
}

#[test]
fn sub_flow() {
    check(
        "sub_flow",
        r#"
#[flow]
pub async fn buyer(ctx: &mut FlowContext, seller: Party, price: u64) -> Result<u64, FlowError> {
    let session = ctx.initiate_flow(&seller);
    let signed: u64 = ctx.sub_flow(signatures::collect(session.clone(), price)).await?;
    ctx.sleep(std::time::Duration::from_secs(60)).await;
    session.send(&signed)?;
    Ok(signed)
}
"#,
    );
}

/// Points that would share a name are named after the branch or arm they
/// sit in (`AwaitReplyThen`/`AwaitReplyElse`, `AwaitAckPing`/`AwaitAckPong`).
#[test]
fn names_by_place() {
    check(
        "names_by_place",
        r#"
#[flow]
pub async fn route(ctx: &mut FlowContext, s: FlowSession, urgent: bool, m: Msg) -> Result<u32, FlowError> {
    let total: u32 = if urgent {
        let reply: u32 = s.send_and_receive::<u32>(&1u8).await?.validate(Ok)?;
        reply
    } else {
        let reply: u32 = s.receive::<u32>().await?.validate(Ok)?;
        reply + 1
    };
    match m {
        Msg::Ping => {
            let ack: u32 = s.receive::<u32>().await?.validate(Ok)?;
            Ok(total + ack)
        }
        Msg::Pong => {
            let ack: u32 = s.receive::<u32>().await?.validate(Ok)?;
            Ok(total * ack)
        }
    }
}
"#,
    );
}

/// The macro must never panic: every malformed input becomes a
/// `compile_error!`.
#[test]
fn malformed_inputs_give_errors_not_panics() {
    let cases = [
        "fn not_async() {}",
        "struct NotAFn;",
        "async fn f() {}",
        "async fn f(ctx: &mut FlowContext, (a, b): (u32, u32)) -> Result<(), FlowError> { Ok(()) }",
        "async fn f(ctx: &mut FlowContext, r#type: u32) -> Result<u32, FlowError> { let r#fn: u32 = r#type; let x: u32 = ctx.sub_flow(c::d()).await?; Ok(r#fn + x) }",
        "async fn f(ctx: &mut FlowContext) -> Result<(), FlowError> { x.await; (1, y.await); Ok(()) }",
        "async fn f(ctx: &mut FlowContext) -> Result<(), FlowError> { break; continue 'a; Ok(()) }",
        "async fn f(ctx: &mut FlowContext) -> Result<(), FlowError> { 'a: { continue 'a; } Ok(()) }",
        "async fn f(ctx: &mut FlowContext) -> Result<(), FlowError> { let [a, b @ ..] = s.receive::<[u8; 2]>().await?; unsafe { s.receive().await }; Ok(()) }",
        "async fn f(ctx: &mut FlowContext) -> Result<(), FlowError> { if let Some(x) = a && s.receive::<u8>().await? == 1 {} Ok(()) }",
        "async fn f(ctx: &mut FlowContext, s: FlowSession) -> Result<(), FlowError> { let Some(x) = s.receive::<Option<u8>>().await? else { s.receive::<u8>().await; return Ok(()) }; Ok(()) }",
    ];
    for case in cases {
        let item: TokenStream = case.parse().expect("case parses as tokens");
        let out = expand(TokenStream::new(), item);
        assert!(!out.is_empty(), "no output for {case}");
    }
    let bad_args: TokenStream = "version = 1, version = 2, other".parse().unwrap();
    let out = expand(
        bad_args,
        "async fn f(ctx: &mut FlowContext) -> Result<(), FlowError> { Ok(()) }"
            .parse()
            .unwrap(),
    );
    assert!(out.to_string().contains("compile_error"));
}

/// `docs/macro.md` shows `ping`'s fingerprint text and value: both must be
/// what the committed expansion holds.
#[test]
fn the_book_shows_the_generated_fingerprint() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let snap = std::fs::read_to_string(root.join("snapshots/ping.rs.snap")).expect("snapshot");
    let book = std::fs::read_to_string(root.join("../docs/macro.md")).expect("docs/macro.md");
    let value = snap
        .lines()
        .find_map(|l| l.trim().strip_prefix("const FINGERPRINT: u64 = "))
        .and_then(|v| v.strip_suffix("u64;"))
        .expect("the snapshot has a FINGERPRINT");
    assert!(
        book.contains(&format!("const FINGERPRINT: u64 = {value};")),
        "docs/macro.md must show FINGERPRINT = {value}"
    );
    assert!(
        book.contains(&format!("its hash is `{value}`")),
        "docs/macro.md must say its hash is {value}"
    );
    let start = snap.find("flow-fingerprint").expect("fingerprint text");
    let text: Vec<&str> = snap[start..]
        .lines()
        .take_while(|l| !l.contains("```"))
        .map(str::trim)
        .collect();
    assert!(
        book.contains(&text.join("\n")),
        "docs/macro.md must show the fingerprint text:\n{}",
        text.join("\n")
    );
}
