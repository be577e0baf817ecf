//! Shared code of the Kogge fuzz targets.
//!
//! Every target's body lives in [`checks`], a file that `tests/fuzz_corpus.rs` in the
//! main crate also includes (`#[path]`), so the checked-in corpus is replayed under
//! `cargo test` with exactly the invariants the fuzzer checks.

pub mod checks;

/// One seed as the generators hand it over: the target, the file name, the bytes.
pub type SeedFile = (&'static str, String, Vec<u8>);

/// A fuzz target's name and check, as the checks files list them.
pub type Target<'a> = (&'a str, fn(&[u8]));

/// What the seed generators (`examples/gen_*.rs`) share: writes `seeds` (target, file
/// name, bytes) to `<out>/<target>/<name>`, where `out` is the first argument or
/// `fuzz/corpus`. First it deletes the `seed-*` files of every target in `targets`,
/// keeping what the fuzzer found (files named by their SHA-1); each seed must pass its
/// own target's check, if `targets` has it. Prints what it wrote.
pub fn write_corpus(targets: &[Target<'_>], seeds: &[SeedFile]) -> std::io::Result<()> {
    use std::path::PathBuf;
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    for (target, _) in targets {
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
    let mut total = 0;
    for (target, name, bytes) in seeds {
        if let Some((_, check)) = targets.iter().find(|(t, _)| t == target) {
            check(bytes);
        }
        // A seed may be for a target of another generator: its folder may not exist yet.
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
