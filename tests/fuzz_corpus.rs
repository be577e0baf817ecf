//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/*`) through the same
//! checks the cargo-fuzz targets run (STYLE.md C12), without libFuzzer: every input that
//! ever found a bug, and every seed, stays a regression test.
//!
//! The checks live in `fuzz/src/checks.rs`, shared with the fuzz targets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/checks.rs"]
mod checks;

#[macro_use]
#[path = "common/corpus.rs"]
mod corpus;

use kogge::envelope::OpenError;

fn run_all<'a>(target: &str, inputs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> usize {
    corpus::run_all(checks::TARGETS, target, inputs)
}

corpus_tests!(
    checks::TARGETS;
    address,
    envelope_decode,
    certificate_decode,
    content_decode,
    fingerprint_qr,
    open,
    open_batch,
    device_list_decode,
    prekey_decode,
);

/// The generated seeds (what `gen_corpus` writes) pass their checks too, so the
/// generator cannot drift from the checks.
#[test]
fn generated_seeds_pass() {
    let seeds = checks::seeds();
    for (target, _) in checks::TARGETS {
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

/// The honest envelopes of the fuzz world open (or fail) as designed, so the `open`
/// targets do reach every stage of opening.
#[test]
fn fuzz_world_is_as_designed() {
    let w = checks::world();
    let codes: Vec<&str> = w
        .honest
        .iter()
        .map(|h| h.expected.as_ref().map_or_else(OpenError::code, |_| "ok"))
        .collect();
    assert_eq!(
        codes,
        [
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "too_old",
            "from_future",
            "unknown_sender",
            "sender_certificate_not_valid",
            "wrong_recipient",
        ]
    );
    assert_eq!(w.replay.len(), 1);
    // Mode 3 without overrides re-encodes the header exactly as `seal` did, so that
    // header-field mutations start from an envelope that opens.
    for (i, h) in w.honest.iter().enumerate() {
        let (bytes, derived) = checks::materialize(3, &[i as u8]);
        assert!(derived);
        assert_eq!(bytes, h.bytes, "honest envelope {i}");
    }
}
