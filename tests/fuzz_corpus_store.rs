//! Replays the checked-in corpus of the log store fuzz target
//! (`fuzz/corpus/log_store_open/*`) through the same check the cargo-fuzz target runs
//! (STYLE.md C12), without libFuzzer.
//!
//! The check lives in `fuzz/src/store_checks.rs`, shared with the fuzz target.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/store_checks.rs"]
mod store_checks;

#[macro_use]
#[path = "common/corpus.rs"]
mod corpus;

corpus_tests!(
    store_checks::TARGETS;
    log_store_open,
);

/// The generated seeds (what `gen_store_corpus` writes) pass the check too, so the
/// generator cannot drift from it; `seeds()` itself asserts that each one opens, or is
/// refused, as it was made to.
#[test]
fn generated_seeds_pass() {
    let seeds = store_checks::seeds();
    let count = corpus::run_all(
        store_checks::TARGETS,
        "log_store_open",
        seeds.iter().map(|(_, n, d)| (n.as_str(), d.as_slice())),
    );
    assert!(count > 0, "no seeds for log_store_open");
}
