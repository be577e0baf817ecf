//! Replays the checked-in corpora of the group fuzz targets
//! (`fuzz/corpus/{group_change_decode,group_snapshot}/*`) through the same checks the
//! cargo-fuzz targets run (STYLE.md C12), without libFuzzer, and makes their seeds from
//! the test vectors (`tests/vectors/groups.json`):
//!
//! ```text
//! KOGGE_WRITE_CORPUS=1 cargo test --test fuzz_corpus_group
//! ```
//!
//! writes `fuzz/corpus/<target>/seed-NNN-<name>` (replacing the old `seed-*` files; the
//! fuzzer's finds, named by their SHA-1, stay). The checks live in
//! `fuzz/src/group_checks.rs`, shared with the fuzz targets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/group_checks.rs"]
mod group_checks;

#[macro_use]
#[path = "common/corpus.rs"]
mod corpus;

use std::path::PathBuf;

use serde_json::Value;

corpus_tests!(
    group_checks::TARGETS;
    group_change_decode,
    group_snapshot,
);

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// The device index of `name` in [`group_checks::USERS`].
fn device(name: &str) -> u8 {
    group_checks::USERS
        .iter()
        .position(|u| u.0 == name)
        .unwrap() as u8
}

/// The seeds made from groups.json: `(target, name, bytes)`.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/groups.json");
    let groups: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    let chain = groups["chain"].as_array().unwrap();
    let state_index = |name: &str| chain.iter().position(|c| c["name"] == name).unwrap() as u8 + 1;
    for (k, c) in chain.iter().enumerate() {
        let name = c["name"].as_str().unwrap();
        // Mode 0: the change as sent, on the state before it (0: created from nothing).
        let mut raw = vec![k as u8];
        raw.extend(unhex(&c["encoded"]));
        out.push(("group_change_decode", format!("chain-{name}"), raw));
        // Mode 1: its body, signed by its device and countersigned by the sequencer.
        let mut signed = vec![
            0x10 | k as u8,
            device(c["device"].as_str().unwrap()) | 1 << 3,
        ];
        signed.extend(unhex(&c["body"]));
        out.push(("group_change_decode", format!("chain-{name}-body"), signed));
        // Its snapshot, joined with "add" by dave.
        let mut snap = vec![0, device("dave")];
        snap.extend(unhex(&c["state"]["snapshot"]));
        out.push(("group_snapshot", format!("chain-{name}"), snap));
    }
    for v in groups["invalid_changes"].as_array().unwrap() {
        // Fills (too_large) are left out: long, and refused at once.
        let Value::String(_) = &v["change"] else {
            continue;
        };
        let on = match &v["state"] {
            Value::Null => 0,
            s if s.get("chain").is_some() => state_index(s["chain"].as_str().unwrap()),
            _ => 1,
        };
        let mut raw = vec![on];
        raw.extend(unhex(&v["change"]));
        out.push((
            "group_change_decode",
            format!("invalid-{}", v["name"].as_str().unwrap()),
            raw,
        ));
    }
    for v in groups["invalid_snapshots"].as_array().unwrap() {
        let Value::String(_) = &v["snapshot"] else {
            continue;
        };
        let mut snap = vec![0, device("dave")];
        snap.extend(unhex(&v["snapshot"]));
        out.push((
            "group_snapshot",
            format!("invalid-{}", v["name"].as_str().unwrap()),
            snap,
        ));
    }
    out.into_iter()
        .enumerate()
        .map(|(i, (t, n, d))| (t, format!("seed-{i:03}-{n}"), d))
        .collect()
}

/// The seeds pass their checks (and, with `KOGGE_WRITE_CORPUS=1`, are written to
/// `fuzz/corpus/`).
#[test]
fn seeds_from_vectors_pass() {
    let seeds = seeds();
    if std::env::var_os("KOGGE_WRITE_CORPUS").is_some() {
        for (target, _) in group_checks::TARGETS {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
                {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        for (target, name, data) in &seeds {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(target)
                .join(name);
            std::fs::write(path, data).unwrap();
        }
    }
    for (target, _) in group_checks::TARGETS {
        let count = corpus::run_all(
            group_checks::TARGETS,
            target,
            seeds
                .iter()
                .filter(|(t, _, _)| t == target)
                .map(|(_, n, d)| (n.as_str(), d.as_slice())),
        );
        assert!(count > 0, "no seeds for {target}");
    }
}

/// The fuzz world is the vectors' group: its chain is groups.json's, byte for byte, so
/// the seeds reach the checks they were written for.
#[test]
fn fuzz_world_is_the_vectors_group() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/groups.json");
    let groups: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let w = group_checks::world();
    let chain = groups["chain"].as_array().unwrap();
    assert_eq!(w.changes.len(), chain.len());
    for ((c, s), v) in w.changes.iter().zip(&w.states).zip(chain) {
        assert_eq!(hex::encode(c.encoded()), v["encoded"]);
        assert_eq!(hex::encode(s.to_snapshot()), v["state"]["snapshot"]);
    }
}
