#![no_main]

// The checks are shared with tests/fuzz_corpus_group_messages.rs (by path, like this).
#[allow(dead_code, unreachable_pub)]
#[path = "../src/group_message_checks.rs"]
mod group_message_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| group_message_checks::group_message_open(data));
