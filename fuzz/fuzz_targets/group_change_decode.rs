#![no_main]

// The checks are shared with tests/fuzz_corpus_group.rs (by path, like this).
#[allow(dead_code, unreachable_pub)]
#[path = "../src/group_checks.rs"]
mod group_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| group_checks::group_change_decode(data));
