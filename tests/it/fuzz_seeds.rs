//! Replays the fuzz targets' committed inputs through the same entry points the fuzzers
//! call (`secretd::fuzzing`): the seeds in `fuzz/seeds/<target>/` and every crash a
//! fuzzer found, kept in `fuzz/regressions/<target>/` once fixed. A regression comes
//! back as a failing `cargo test`, without a nightly toolchain.

use std::path::Path;

use secretd::fuzzing;

/// Every file under `fuzz/{seeds,regressions}/<target>/`.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "no seeds for fuzz target {target}");
    for (name, bytes) in inputs {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&bytes)));
        assert!(outcome.is_ok(), "fuzz input {name} fails");
    }
}

#[test]
fn keycheck_inputs_replay() {
    replay("keycheck", fuzzing::canonicalize_key);
}

#[test]
fn token_inputs_replay() {
    replay("token", fuzzing::token);
}

#[test]
fn request_inputs_replay() {
    replay("requests", fuzzing::request);
}

#[test]
fn plan_batch_inputs_replay() {
    replay("plan_batch", fuzzing::plan_batch);
}
