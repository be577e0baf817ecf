//! Writes the seed corpus of every session fuzz target (`prekey_bundle_decode`,
//! `device_list_update`, `session_receive`, `state_restore`) to
//! `fuzz/corpus/<target>/seed-NNN-<name>` (or to the directory given as the first
//! argument).
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --example gen_session_corpus [OUT_DIR]
//! ```
//!
//! Seeds are deterministic (keys from fixed ChaCha20 seeds, a fixed clock). Existing
//! `seed-*` files of these targets are replaced; files found by the fuzzer (named by
//! their SHA-1) are kept.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/session_checks.rs"]
mod session_checks;

fn main() -> std::io::Result<()> {
    kogge_fuzz::write_corpus(session_checks::TARGETS, &session_checks::seeds())
}
