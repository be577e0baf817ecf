//! Writes the seed corpus of the log store fuzz target (`log_store_open`) to
//! `fuzz/corpus/log_store_open/seed-NNN-<name>` (or to the directory given as the first
//! argument).
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --example gen_store_corpus [OUT_DIR]
//! ```
//!
//! Seeds are deterministic: log files written by `LogStore` from fixed commits, edits of
//! them, and version 1 files built by hand. Each one is opened first and must open, or be
//! refused, as it was made to. Existing `seed-*` files are replaced; files found by the
//! fuzzer (named by their SHA-1) are kept.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/store_checks.rs"]
mod store_checks;

fn main() -> std::io::Result<()> {
    kogge_fuzz::write_corpus(store_checks::TARGETS, &store_checks::seeds())
}
