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

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    for (target, _) in kogge_fuzz::checks::TARGETS {
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
    let seeds = kogge_fuzz::checks::seeds();
    for (target, name, bytes) in &seeds {
        // Every seed must pass its own target's checks.
        let check = kogge_fuzz::checks::TARGETS
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, check)| *check);
        if let Some(check) = check {
            check(bytes);
        }
        std::fs::write(out.join(target).join(name), bytes)?;
    }
    println!("wrote {} seeds to {}", seeds.len(), out.display());
    Ok(())
}
