//! Shared by `tests/fuzz_corpus*.rs`: replays checked-in fuzz corpora
//! (`fuzz/corpus/<target>/*`) through a table of check functions, without libFuzzer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

/// A fuzz target's check, as in `fuzz/src/*checks.rs`.
pub(crate) type Check = fn(&[u8]);

/// The files of one target's corpus, sorted by name.
pub(crate) fn corpus_files(target: &str) -> Vec<(String, Vec<u8>)> {
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

/// Runs `target`'s check on every input; reports every input that panics, by name.
pub(crate) fn run_all<'a>(
    targets: &[(&str, Check)],
    target: &str,
    inputs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> usize {
    let check = targets
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

/// Replays `target`'s whole corpus, which must not be empty.
pub(crate) fn replay(targets: &[(&str, Check)], target: &str) {
    let files = corpus_files(target);
    let count = run_all(
        targets,
        target,
        files.iter().map(|(n, d)| (n.as_str(), d.as_slice())),
    );
    assert!(count > 0, "fuzz/corpus/{target} is empty");
}

/// One test per target, and a test that every target of the table has one.
macro_rules! corpus_tests {
    ($targets:expr; $($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                corpus::replay($targets, stringify!($target));
            }
        )*

        #[test]
        fn every_target_has_a_test() {
            let tested = [$(stringify!($target)),*];
            for (target, _) in $targets {
                assert!(tested.contains(target), "no corpus test for {target}");
            }
        }
    };
}
