//! Replays the checked-in corpus of the group message fuzz target
//! (`fuzz/corpus/group_message_open/*`) through the same check the cargo-fuzz target runs
//! (STYLE.md C12), without libFuzzer, and writes its seeds:
//!
//! ```text
//! KOGGE_WRITE_CORPUS=1 cargo test --test fuzz_corpus_group_messages
//! ```
//!
//! The check lives in `fuzz/src/group_message_checks.rs`, shared with the fuzz target.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/group_message_checks.rs"]
mod group_message_checks;

#[macro_use]
#[path = "common/corpus.rs"]
mod corpus;

use std::path::PathBuf;

corpus_tests!(
    group_message_checks::TARGETS;
    group_message_open,
);

/// The seeds pass the check (and, with `KOGGE_WRITE_CORPUS=1`, are written to
/// `fuzz/corpus/group_message_open/`, replacing the old `seed-*` files).
#[test]
fn seeds_pass() {
    let seeds = group_message_checks::seeds();
    if std::env::var_os("KOGGE_WRITE_CORPUS").is_some() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/group_message_open");
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
        for (name, data) in &seeds {
            std::fs::write(dir.join(name), data).unwrap();
        }
    }
    let count = corpus::run_all(
        group_message_checks::TARGETS,
        "group_message_open",
        seeds.iter().map(|(n, d)| (n.as_str(), d.as_slice())),
    );
    assert!(count > 0);
}

/// The world is as designed: the honest messages open in order on bob's receiver.
#[test]
fn the_world_opens_its_messages() {
    let w = group_message_checks::world();
    let mut r = w.receiver.clone();
    for m in &w.sealed {
        let env = kogge::group::GroupEnvelope::decode(m.clone()).unwrap();
        r.open(&w.state, &env, w.devices[0].certificate()).unwrap();
    }
}
