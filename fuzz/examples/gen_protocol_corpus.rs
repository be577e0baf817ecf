//! Writes the seed corpus of every protocol fuzz target (`frame_decode`, `directory_parse`,
//! `provider_input`, `client_input`, `provider_store_load`) to
//! `fuzz/corpus/<target>/seed-NNN-<name>` (or to the directory given as the first
//! argument), and three `state_restore` inputs holding an account with a group record
//! (`fuzz/corpus/state_restore/group-account-{blob,plaintext,late-plaintext}`, the last
//! with a position kept for a user added after the chain was made).
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --example gen_protocol_corpus [OUT_DIR]
//! ```
//!
//! Seeds are deterministic (keys from fixed ChaCha20 seeds, a fixed clock). Existing
//! `seed-*` files of these targets are replaced; files found by the fuzzer (named by
//! their SHA-1) are kept.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/protocol_checks.rs"]
mod protocol_checks;

fn main() -> std::io::Result<()> {
    kogge_fuzz::write_corpus(protocol_checks::TARGETS, &protocol_checks::seeds())
}
