//! Compile-fail tests of every rule `#[flow]` enforces: each case in
//! `tests/ui/*.rs` must fail to compile with the reviewed message in its
//! `.stderr` file. After an intended change of a message, regenerate with
//! `TRYBUILD=overwrite cargo test -p flow-tests --test ui` and review the
//! diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
