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

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    for (target, _) in session_checks::TARGETS {
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
    let seeds = session_checks::seeds();
    let mut total = 0;
    for (target, name, bytes) in &seeds {
        // Every seed must pass its own target's checks.
        if let Some((_, check)) = session_checks::TARGETS.iter().find(|(t, _)| t == target) {
            check(bytes);
        }
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
