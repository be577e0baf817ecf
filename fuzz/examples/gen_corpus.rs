//! Writes the seed corpus of every fuzz target to `fuzz/corpus/<target>/seed-NNN`
//! (or to the directory given as the first argument).
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --example gen_corpus [OUT_DIR]
//! ```
//!
//! Seeds are deterministic: the same world (keys from fixed ChaCha20 seeds, a fixed
//! clock) gives the same bytes. Existing `seed-*` files are replaced; files found by the
//! fuzzer (named by their SHA-1) are kept.

fn main() -> std::io::Result<()> {
    kogge_fuzz::write_corpus(kogge_fuzz::checks::TARGETS, &kogge_fuzz::checks::seeds())
}
