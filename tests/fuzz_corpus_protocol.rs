//! Replays the checked-in corpora of the protocol fuzz targets
//! (`fuzz/corpus/{frame_decode,directory_parse,provider_input,client_input,
//! provider_store_load}/*`) through the same checks the cargo-fuzz targets run
//! (STYLE.md C12), without libFuzzer.
//!
//! The checks live in `fuzz/src/protocol_checks.rs`, shared with the fuzz targets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/protocol_checks.rs"]
mod protocol_checks;

#[macro_use]
#[path = "common/corpus.rs"]
mod corpus;

fn run_all<'a>(target: &str, inputs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> usize {
    corpus::run_all(protocol_checks::TARGETS, target, inputs)
}

corpus_tests!(
    protocol_checks::TARGETS;
    frame_decode,
    directory_parse,
    provider_input,
    client_input,
    provider_store_load,
);

/// The generated seeds (what `gen_protocol_corpus` writes) pass their checks too, so
/// the generator cannot drift from the checks.
#[test]
fn generated_seeds_pass() {
    let seeds = protocol_checks::seeds();
    for (target, _) in protocol_checks::TARGETS {
        let count = run_all(
            target,
            seeds
                .iter()
                .filter(|(t, _, _)| t == target)
                .map(|(_, n, d)| (n.as_str(), d.as_slice())),
        );
        assert!(count > 0, "no seeds for {target}");
    }
}
