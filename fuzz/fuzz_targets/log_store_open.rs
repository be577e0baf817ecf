#![no_main]

// The check is shared with tests/fuzz_corpus_store.rs (by path, like this).
#[allow(dead_code, unreachable_pub)]
#[path = "../src/store_checks.rs"]
mod store_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| store_checks::log_store_open(data));
