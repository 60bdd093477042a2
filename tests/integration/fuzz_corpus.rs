//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same target bodies cargo-fuzz runs (`src/fuzzing.rs`), so every seed and
//! every case a fuzzer once found stays a regression test.

use std::{fs, panic, path::PathBuf};

use rendezvous::fuzzing::TARGETS;

fn replay(name: &str) {
    let (_, target) = TARGETS.iter().find(|(n, _)| *n == name).unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 5,
        "the {name} corpus has only {} cases",
        cases.len()
    );
    let failed: Vec<String> = cases
        .iter()
        .filter(|path| {
            let data = fs::read(path).unwrap();
            panic::catch_unwind(|| target(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{name}: these cases fail: {failed:#?}");
}

#[test]
fn id_corpus() {
    replay("id");
}

#[test]
fn grpc_timeout_corpus() {
    replay("grpc_timeout");
}

#[test]
fn http_target_corpus() {
    replay("http_target");
}

#[test]
fn gateway_corpus() {
    replay("gateway");
}

#[test]
fn auth_corpus() {
    replay("auth");
}
