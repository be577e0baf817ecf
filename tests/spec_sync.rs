//! Keeps SPEC.md in step with the code: every limit constant, every label, every error
//! code and every section the code cites must appear in SPEC.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_limit_is_in_the_spec() {
    let spec = read("SPEC.md");
    let limits = read("src/limits.rs");
    let names: Vec<&str> = limits
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert!(names.len() >= 15, "found only {names:?}");
    let missing: Vec<_> = names.iter().filter(|n| !spec.contains(*n)).collect();
    assert!(missing.is_empty(), "SPEC.md does not mention {missing:?}");
    assert!(spec.contains("BATCH_VERIFY_CHUNK"));
}

#[test]
fn every_label_is_in_the_spec() {
    let spec = read("SPEC.md");
    for l in kogge::crypto::Label::ALL {
        let ascii = std::str::from_utf8(l.as_bytes()).unwrap();
        assert!(spec.contains(ascii), "SPEC.md does not list label {ascii}");
    }
}

#[test]
fn every_error_code_is_in_the_spec() {
    let spec = read("SPEC.md");
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut codes = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // The `code()` tables: lines like `Self::Decode => "decode",`.
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("Self::") && t.contains("=> \"") {
                codes.extend(t.split('"').nth(1).map(str::to_owned));
            }
        }
    }
    assert!(codes.len() >= 20, "found only {codes:?}");
    let missing: Vec<_> = codes
        .iter()
        .filter(|c| !spec.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "SPEC.md does not name error codes {missing:?}"
    );
}

#[test]
fn every_cited_section_exists() {
    let spec = read("SPEC.md");
    let headings: BTreeSet<String> = spec
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            l.trim_start_matches('#')
                .split_whitespace()
                .next()
                .map(|n| n.trim_end_matches('.').to_owned())
        })
        .collect();
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut missing = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("SPEC.md") {
            let rest = &text[i + "SPEC.md".len()..];
            let rest = rest
                .trim_start_matches([' ', '\u{a7}'])
                .trim_start_matches("section ");
            let num: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let num = num.trim_end_matches('.');
            if !num.is_empty() && !headings.contains(num) {
                missing.insert(format!(
                    "{}: {num}",
                    f.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "sections cited in src/ but missing from SPEC.md: {missing:?}"
    );
}
