#![no_main]

// The checks are shared with tests/fuzz_corpus_protocol.rs (by path, like this).
#[allow(dead_code, unreachable_pub)]
#[path = "../src/protocol_checks.rs"]
mod protocol_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| protocol_checks::directory_parse(data));
