//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/*`) through the same
//! checks the cargo-fuzz targets run (STYLE.md C12), without libFuzzer: every input that
//! ever found a bug, and every seed, stays a regression test.
//!
//! The checks live in `fuzz/src/checks.rs`, shared with the fuzz targets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use kogge::envelope::OpenError;

fn corpus_files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Runs `check` on every input, and reports every input that panics, by name.
fn run_all<'a>(target: &str, inputs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> usize {
    let check = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check)
        .unwrap();
    let mut count = 0;
    let mut failures = Vec::new();
    for (name, data) in inputs {
        count += 1;
        if catch_unwind(AssertUnwindSafe(|| check(data))).is_err() {
            failures.push(name.to_owned());
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: these inputs fail their checks: {failures:?}"
    );
    count
}

fn replay(target: &str) {
    let files = corpus_files(target);
    let count = run_all(
        target,
        files.iter().map(|(n, d)| (n.as_str(), d.as_slice())),
    );
    assert!(count > 0, "fuzz/corpus/{target} is empty");
}

macro_rules! corpus_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target));
            }
        )*

        #[test]
        fn every_target_has_a_test() {
            let tested = [$(stringify!($target)),*];
            for (target, _) in checks::TARGETS {
                assert!(tested.contains(target), "no corpus test for {target}");
            }
        }
    };
}

corpus_tests!(
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
