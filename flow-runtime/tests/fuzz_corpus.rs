//! The fuzz targets' bodies (`flow_runtime::testing::fuzz`, run by
//! `flow-runtime/fuzz` under libFuzzer on a nightly toolchain) over a fixed
//! corpus on every `cargo test`: each target's seeds, cuts and bit flips of
//! them (deterministic), and every input a fuzzing run once found a bug
//! with (`flow-runtime/fuzz/regressions/<target>/`, kept after the fix).
//!
//! `cargo test -p flow-runtime --test fuzz_corpus -- --ignored` writes the
//! seeds to `flow-runtime/fuzz/corpus/<target>/` to start a fuzzing run
//! from (see the contributors' section of `docs/operations.md`).

use flow_runtime::testing::fuzz;
use std::path::PathBuf;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Cuts and flips of `seed`: every `step`-th prefix, and the seed with
/// one byte inverted at every `step`-th offset.
fn variants(seed: &[u8], step: usize) -> Vec<Vec<u8>> {
    let mut out = vec![seed.to_vec()];
    for at in (0..seed.len()).step_by(step) {
        out.push(seed[..at].to_vec());
        let mut flipped = seed.to_vec();
        flipped[at] ^= 0xff;
        out.push(flipped);
    }
    out
}

#[test]
fn every_target_runs_its_seeds_and_their_variants() {
    for target in fuzz::TARGETS {
        let seeds = fuzz::seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        let mut inputs = 0;
        for seed in &seeds {
            // About 40 variants per seed: enough to walk every decoder's
            // error paths, few enough for a debug build.
            for input in variants(seed, (seed.len() / 20).max(1)) {
                assert!(fuzz::run(target, &input), "no target {target}");
                inputs += 1;
            }
        }
        eprintln!("{target}: {inputs} inputs");
    }
}

#[test]
fn every_input_a_fuzzer_found_stays_fixed() {
    for target in fuzz::TARGETS {
        let dir = fuzz_dir().join("regressions").join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            eprintln!("{target}: {}", path.display());
            assert!(fuzz::run(target, &input));
        }
    }
}

/// Writes the seeds where `cargo fuzz run <target>` starts from.
#[test]
#[ignore = "writes files: run by hand before a fuzzing session"]
fn write_seed_corpus() {
    for target in fuzz::TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in fuzz::seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}
