#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kogge_fuzz::checks::prekey_decode(data));
