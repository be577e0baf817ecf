#![no_main]

// The checks are shared with tests/fuzz_corpus_session.rs (by path, like this).
#[allow(dead_code, unreachable_pub)]
#[path = "../src/session_checks.rs"]
mod session_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| session_checks::device_list_update(data));
