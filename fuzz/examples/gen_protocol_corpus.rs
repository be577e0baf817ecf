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

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    for (target, _) in protocol_checks::TARGETS {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                std::fs::remove_file(path)?;
            }
        }
    }
    let seeds = protocol_checks::seeds();
    let mut total = 0;
    for (target, name, bytes) in &seeds {
        // Every seed must pass its own target's checks.
        if let Some((_, check)) = protocol_checks::TARGETS.iter().find(|(t, _)| t == target) {
            check(bytes);
        }
        // Seeds for targets of the other generator (state_restore) need their folder too.
        std::fs::create_dir_all(out.join(target))?;
        std::fs::write(out.join(target).join(name), bytes)?;
        total += bytes.len();
    }
    println!(
        "wrote {} seeds ({total} bytes) to {}",
        seeds.len(),
        out.display()
    );
    Ok(())
}
