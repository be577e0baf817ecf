//! Shared code of the Kogge fuzz targets.
//!
//! Every target's body lives in [`checks`], a file that `tests/fuzz_corpus.rs` in the
//! main crate also includes (`#[path]`), so the checked-in corpus is replayed under
//! `cargo test` with exactly the invariants the fuzzer checks.

pub mod checks;
