//! Keeps SPEC.md in step with the code: every limit constant (with its value), every label,
//! every error code (with its retryability, for the protocol's codes) and every section the
//! code cites must appear in SPEC.md.

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

/// The text of the section that starts with the heading line beginning `heading` (say
/// `"## 9."` or `"### 16.8"`), up to the next heading of the same or a higher level.
fn section<'a>(spec: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = spec
        .find(&format!("\n{heading} "))
        .unwrap_or_else(|| panic!("SPEC.md has no heading {heading}"))
        + 1;
    let body = &spec[start..];
    let mut end = body.len();
    let mut offset = 0;
    for (i, line) in body.split_inclusive('\n').enumerate() {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if i > 0 && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            end = offset;
            break;
        }
        offset += line.len();
    }
    &body[..end]
}

/// The cells of the table rows in `text` whose first cell is exactly `` `key` ``.
fn rows<'a>(text: &'a str, key: &str) -> Vec<Vec<&'a str>> {
    let first = format!("`{key}`");
    text.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.split('|').skip(1).map(str::trim).collect::<Vec<_>>())
        .filter(|cells| cells.first() == Some(&first.as_str()))
        .collect()
}

/// Evaluates the right-hand side of a `pub const` in src/limits.rs: integer literals
/// (with `_` separators and type suffixes), constants defined earlier, `+ - * /` and
/// parentheses. Anything else fails the test, so that a value is never skipped silently.
fn eval(expr: &str, known: &[(String, u128, bool)]) -> u128 {
    fn tokens(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for c in expr.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                cur.push(c);
            } else {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                if !c.is_whitespace() {
                    out.push(c.to_string());
                }
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }
    struct P<'a> {
        t: Vec<String>,
        i: usize,
        known: &'a [(String, u128, bool)],
        expr: &'a str,
    }
    impl P<'_> {
        fn peek(&self) -> Option<&str> {
            self.t.get(self.i).map(String::as_str)
        }
        fn fail(&self) -> ! {
            panic!(
                "tests/spec_sync.rs cannot evaluate `{}`; extend eval()",
                self.expr
            )
        }
        fn sum(&mut self) -> u128 {
            let mut v = self.product();
            while let Some(op @ ("+" | "-")) = self.peek() {
                let op = op.to_owned();
                self.i += 1;
                let r = self.product();
                v = if op == "+" {
                    v.checked_add(r)
                } else {
                    v.checked_sub(r)
                }
                .unwrap_or_else(|| self.fail());
            }
            v
        }
        fn product(&mut self) -> u128 {
            let mut v = self.atom();
            while let Some(op @ ("*" | "/")) = self.peek() {
                let op = op.to_owned();
                self.i += 1;
                let r = self.atom();
                v = if op == "*" {
                    v.checked_mul(r)
                } else {
                    v.checked_div(r)
                }
                .unwrap_or_else(|| self.fail());
            }
            v
        }
        fn atom(&mut self) -> u128 {
            let Some(tok) = self.peek().map(str::to_owned) else {
                self.fail()
            };
            self.i += 1;
            if tok == "(" {
                let v = self.sum();
                if self.peek() != Some(")") {
                    self.fail();
                }
                self.i += 1;
                return v;
            }
            if tok.starts_with(|c: char| c.is_ascii_digit()) {
                let end = tok
                    .find(|c: char| !c.is_ascii_digit() && c != '_')
                    .unwrap_or(tok.len());
                let suffix = &tok[end..];
                let typed = ["", "u8", "u16", "u32", "u64", "u128", "usize"];
                if !typed.contains(&suffix) {
                    self.fail();
                }
                let digits: String = tok[..end].chars().filter(|c| *c != '_').collect();
                return digits.parse().unwrap_or_else(|_| self.fail());
            }
            match self.known.iter().find(|(n, _, _)| *n == tok) {
                Some((_, v, _)) => *v,
                None => self.fail(),
            }
        }
    }
    let mut p = P {
        t: tokens(expr),
        i: 0,
        known,
        expr,
    };
    let v = p.sum();
    if p.i != p.t.len() {
        p.fail();
    }
    v
}

/// Every `pub const` of src/limits.rs: name, value, and whether it belongs to the
/// protocol block (after the comment that introduces the provider-provider protocol).
fn limits() -> Vec<(String, u128, bool)> {
    let text = read("src/limits.rs");
    let mut out: Vec<(String, u128, bool)> = Vec::new();
    let mut protocol = false;
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("//") && !t.starts_with("///") && t.contains("provider-provider protocol")
        {
            protocol = true;
        }
        if pending.is_empty() && !t.starts_with("pub const ") {
            continue;
        }
        pending.push(' ');
        pending.push_str(t);
        if !t.ends_with(';') {
            continue;
        }
        let decl = std::mem::take(&mut pending);
        let decl = decl
            .trim()
            .trim_start_matches("pub const ")
            .trim_end_matches(';');
        let (name, rest) = decl.split_once(':').unwrap();
        let (_, expr) = rest.split_once('=').unwrap();
        let value = eval(expr, &out);
        out.push((name.trim().to_owned(), value, protocol));
    }
    assert!(
        out.iter().any(|(_, _, p)| *p),
        "no protocol block found in src/limits.rs"
    );
    out
}

#[test]
fn every_limit_value_is_the_spec_value() {
    let spec = read("SPEC.md");
    let mut wrong = Vec::new();
    for (name, value, _) in limits() {
        let found = rows(&spec, &name);
        if found.is_empty() {
            wrong.push(format!("{name}: no table row"));
        }
        for cells in found {
            let cell = cells.get(1).copied().unwrap_or("");
            let digits: String = cell.chars().take_while(char::is_ascii_digit).collect();
            if digits != value.to_string() {
                wrong.push(format!("{name}: SPEC.md says `{cell}`, the code {value}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "SPEC.md limit tables disagree: {wrong:#?}"
    );
}

#[test]
fn every_protocol_limit_is_in_sections_9_and_16_10() {
    let spec = read("SPEC.md");
    let s9 = section(&spec, "## 9.");
    let s16 = section(&spec, "### 16.10");
    let missing: Vec<_> = limits()
        .into_iter()
        .filter(|(_, _, protocol)| *protocol)
        .filter(|(name, _, _)| rows(s9, name).is_empty() || rows(s16, name).is_empty())
        .map(|(name, _, _)| name)
        .collect();
    assert!(
        missing.is_empty(),
        "protocol limits missing from the tables of SPEC.md 9 or 16.10: {missing:?}"
    );
}

#[test]
fn every_protocol_error_code_is_in_16_8_with_its_retryability() {
    let spec = read("SPEC.md");
    let table = section(&spec, "### 16.8");
    let mut wrong = Vec::new();
    for code in kogge::protocol::ErrorCode::ALL {
        let found = rows(table, code.as_str());
        let want = if code.is_retryable() { "yes" } else { "no" };
        match found.as_slice() {
            [cells] if cells.get(1) == Some(&want) => {}
            [cells] => wrong.push(format!(
                "{code}: retryable is `{}` in SPEC.md, `{want}` in the code",
                cells.get(1).unwrap_or(&"")
            )),
            _ => wrong.push(format!("{code}: {} rows in SPEC.md 16.8", found.len())),
        }
    }
    // And no row for a code the code does not have.
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let code = line.split('`').nth(1).unwrap_or("");
        if kogge::protocol::ErrorCode::parse(code).is_none() {
            wrong.push(format!("{code}: in SPEC.md 16.8 but not in ErrorCode::ALL"));
        }
    }
    assert!(wrong.is_empty(), "SPEC.md 16.8 disagrees: {wrong:#?}");
    // Section 10 lists them too.
    let s10 = section(&spec, "## 10.");
    let missing: Vec<_> = kogge::protocol::ErrorCode::ALL
        .iter()
        .filter(|c| !s10.contains(&format!("`{}`", c.as_str())))
        .collect();
    assert!(missing.is_empty(), "SPEC.md 10 does not name {missing:?}");
}
