//! The body of the log store fuzz target, and the seeds of its corpus (SPEC.md 16.12,
//! "Log store format"; STYLE.md C12).
//!
//! | target | drives | checks beyond "does not panic" |
//! |---|---|---|
//! | `log_store_open` | `LogStore::open` on the input as a log file, then `load`, a reopen, a commit, a reopen | see [`log_store_open`]: the header decides between refusal and success; a refused file is left as it was; opening is idempotent; a commit appends one record and reads back |
//!
//! This one file is compiled three ways, always by `#[path]`: into the fuzz target
//! (`fuzz/fuzz_targets/log_store_open.rs`), into the seed generator
//! `fuzz/examples/gen_store_corpus.rs`, and into `tests/fuzz_corpus_store.rs`, which
//! replays `fuzz/corpus/log_store_open/*` under `cargo test`. It uses only the public
//! `kogge` API plus `bytes`.
//!
//! Every input is a whole file, so the corpus holds real log files. The fuzzer cannot
//! forge a record's check (XXH3-64 in version 2, a SHA-256 prefix in version 1), so it
//! reaches the op decoder only with records it copies whole from the seeds (a check
//! covers its record's length and payload, not its position); it works on the header,
//! the record framing and the torn-tail rule. The seeds hold sound records of both
//! versions, records whose ops do not decode (version 1, built here: the library writes
//! only version 2), and every refusal a file's bytes can cause: `NotAStore`,
//! `UnknownFormat`, and `Corrupt` of each kind but an over-long record (which needs a
//! file above 256 MiB).
//!
//! Every check must return normally for any input; a panic (a failed `assert!`
//! included) is a finding. Each run works in a fresh folder under
//! [`std::env::temp_dir`] (`TMPDIR=/dev/shm` makes runs faster: opening and
//! committing flush the file).

// A failed check must panic: that is how libFuzzer and the test report a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use kogge::store::{Contents, LogOpenError, LogStore, MemoryStore, Store, StoreOp, Table};

/// The check of one target: returns normally for every input, or panics on a finding.
pub type Check = fn(&[u8]);

/// The store target: its name (`fuzz/fuzz_targets/<name>.rs`, `fuzz/corpus/<name>/`)
/// and its check.
pub const TARGETS: &[(&str, Check)] = &[("log_store_open", log_store_open)];

/// Longer inputs are ignored: the fuzzer learns nothing from huge files.
pub const MAX_INPUT_LEN: usize = 1 << 20;

/// The format as SPEC.md 16.12 documents it (the library keeps these private).
const MAGIC: &[u8; 8] = b"KOGGELOG";
/// Magic and version.
const HEADER_LEN: usize = 12;
/// `len`, `len_check` and `check` (format version 2).
const RECORD_HEADER_LEN: usize = 16;
/// `len` and `check` (format version 1).
const RECORD_HEADER_LEN_V1: usize = 12;
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// The put every check commits once the file has opened.
const PROBE_KEY: &[u8] = b"fuzz probe";
const PROBE_VALUE: &[u8] = b"committed by the check";

// ---------------------------------------------------------------------------------------
// The check.
// ---------------------------------------------------------------------------------------

/// A fresh folder under the system's temporary folder, removed on drop (after a failed
/// check too, when the panic unwinds, as in the replay test).
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty folder, unique within this process (and, by the process id, among
    /// processes running at once).
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kogge-fuzz-log-{}-{n}", std::process::id()));
        // A leftover of an earlier process that had the same id.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// The log file's path in the folder.
    pub fn log(&self) -> PathBuf {
        self.0.join("store.log")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The version in `data`'s header, if it starts with a whole header with the magic.
fn header_version(data: &[u8]) -> Option<u32> {
    let (magic, rest) = data.split_first_chunk::<8>()?;
    let version = rest.first_chunk::<4>()?;
    (magic == MAGIC).then(|| u32::from_le_bytes(*version))
}

fn readable(version: u32) -> bool {
    (LogStore::OLDEST_FORMAT_VERSION..=LogStore::FORMAT_VERSION).contains(&version)
}

/// `log_store_open`: `data` as the whole log file, opened with [`LogStore::open`].
///
/// * Opening never panics, and whether it succeeds is the header's to say: an empty
///   file is a new store; a file without a whole `KOGGELOG` header is `NotAStore`; a
///   version other than 1 or 2 is `UnknownFormat` with that version. Otherwise the
///   records decide: `Corrupt` points at a record whose header lies wholly before the
///   end of the file (an incomplete one is always a torn tail), or the file opens.
/// * A refused file is left byte for byte as it was, and refused again the same way.
/// * A file that opens: `load` succeeds and lists every table; the file is then
///   `log_len` bytes, in format version 2; a version 2 file is only cut (to a prefix of
///   the input: a torn tail cut away), a version 1 file is rewritten (one compaction),
///   an empty one holds just the header. Opening it again
///   gives the same contents and changes no byte. A commit of one put to
///   [`Table::Meta`] appends exactly one record, and a reopen loads the contents
///   before it plus that put.
///
/// Inputs longer than [`MAX_INPUT_LEN`] are ignored.
pub fn log_store_open(data: &[u8]) {
    if data.len() > MAX_INPUT_LEN {
        return;
    }
    let dir = TempDir::new();
    let path = dir.log();
    fs::write(&path, data).unwrap();
    let version = header_version(data);
    let mut store = match LogStore::open(&path) {
        Ok(store) => store,
        Err(e) => {
            check_refusal(data, version, &e);
            assert_eq!(fs::read(&path).unwrap(), data, "a refused file is changed");
            let again = LogStore::open(&path).expect_err("a refused file opens the second time");
            assert_eq!(again.to_string(), e.to_string(), "refused differently");
            return;
        }
    };
    assert!(
        data.is_empty() || version.is_some_and(readable),
        "opened without a readable header (version {version:?})"
    );
    let contents = store.load().expect("load after open");
    assert_eq!(contents.len(), Table::ALL.len(), "every table is listed");
    let opened = fs::read(&path).unwrap();
    assert_eq!(store.log_len(), opened.len() as u64);
    assert_eq!(header_version(&opened), Some(LogStore::FORMAT_VERSION));
    match version {
        // Far below the compaction threshold: only a torn tail may go.
        Some(LogStore::FORMAT_VERSION) => {
            assert!(data.starts_with(&opened), "more than a torn tail changed");
            assert_eq!(store.compactions(), 0);
        }
        Some(_) => assert_eq!(store.compactions(), 1, "version 1 not rewritten at open"),
        None => assert_eq!(opened, header(LogStore::FORMAT_VERSION), "a new store"),
    }
    drop(store);

    // Idempotent: the file as the first open left it opens as it is, to the same.
    let mut store = LogStore::open(&path).expect("a file that opened opens again");
    assert_eq!(
        store.load().unwrap(),
        contents,
        "a second open reads otherwise"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        opened,
        "a second open changes the file"
    );
    assert_eq!(store.compactions(), 0);

    // A commit appends one record (its header and a put op: kind, table, two lengths,
    // key, value) and reads back.
    let probe = StoreOp::Put {
        table: Table::Meta,
        key: Bytes::from_static(PROBE_KEY),
        value: Bytes::from_static(PROBE_VALUE),
    };
    store.commit(&[probe]).expect("commit");
    drop(store);
    let appended = fs::read(&path).unwrap();
    assert!(
        appended.starts_with(&opened),
        "a commit changed earlier bytes"
    );
    assert_eq!(
        appended.len() - opened.len(),
        RECORD_HEADER_LEN + 2 + 4 + PROBE_KEY.len() + 4 + PROBE_VALUE.len()
    );
    let mut want = contents;
    want.entry(Table::Meta).or_default().insert(
        Bytes::from_static(PROBE_KEY),
        Bytes::from_static(PROBE_VALUE),
    );
    let mut store = LogStore::open(&path).expect("reopen after a commit");
    assert_eq!(store.load().unwrap(), want, "the commit did not read back");
}

/// A refusal agrees with what the header says (see [`log_store_open`]).
fn check_refusal(data: &[u8], version: Option<u32>, e: &LogOpenError) {
    match e {
        LogOpenError::NotAStore { .. } => {
            assert!(!data.is_empty() && version.is_none(), "{e}");
        }
        LogOpenError::UnknownFormat {
            found, supported, ..
        } => {
            assert_eq!(version, Some(*found), "{e}");
            assert!(!readable(*found), "{e}");
            assert_eq!(*supported, LogStore::FORMAT_VERSION);
        }
        LogOpenError::Corrupt { offset, .. } => {
            assert!(version.is_some_and(readable), "{e}");
            let offset = usize::try_from(*offset).unwrap();
            assert!(offset >= HEADER_LEN, "{e}");
            // A record needs its whole header to be damage rather than a torn tail: in
            // version 1 a payload too (an empty one at the end is torn), in version 2 a
            // length that fails its check is damage even with nothing after it.
            let whole = if version == Some(1) {
                RECORD_HEADER_LEN_V1 + 1
            } else {
                RECORD_HEADER_LEN
            };
            assert!(
                offset + whole <= data.len(),
                "{e}: an incomplete record is a torn tail"
            );
        }
        // `Io`, `Locked`: not for a file in a fresh folder of its own.
        _ => panic!("unexpected error: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Seeds.
// ---------------------------------------------------------------------------------------

/// One seed: the target, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// What opening a file gives: its contents without empty tables, or the error.
pub fn open_file(data: &[u8]) -> Result<Contents, String> {
    let dir = TempDir::new();
    fs::write(dir.log(), data).unwrap();
    let mut store = LogStore::open(dir.log()).map_err(|e| describe(&e))?;
    Ok(non_empty(store.load().unwrap()))
}

/// An error as the seeds' expectations name it.
fn describe(e: &LogOpenError) -> String {
    match e {
        LogOpenError::NotAStore { .. } => "not a store".into(),
        LogOpenError::UnknownFormat { found, .. } => format!("unknown format {found}"),
        LogOpenError::Corrupt { offset, detail, .. } => format!("corrupt at {offset}: {detail}"),
        _ => e.to_string(),
    }
}

fn non_empty(contents: Contents) -> Contents {
    contents
        .into_iter()
        .filter(|(_, t)| !t.is_empty())
        .collect()
}

fn put(table: Table, key: &[u8], value: &[u8]) -> StoreOp {
    StoreOp::Put {
        table,
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
    }
}

fn delete(table: Table, key: &[u8]) -> StoreOp {
    StoreOp::Delete {
        table,
        key: Bytes::copy_from_slice(key),
    }
}

/// The commits of the seed store: several tables, replaced and deleted entries, an
/// empty key and value, a delete of a missing key, a delete and a put of one key in one
/// batch.
fn batches() -> Vec<Vec<StoreOp>> {
    vec![
        vec![
            put(Table::Users, b"alice@one.example", b"list 1"),
            put(Table::Mailbox, b"bob\x00\x01", b"m1"),
            put(Table::Mailbox, b"bob\x00\x02", b"m2"),
            put(Table::Meta, b"", b""),
            delete(Table::Dedup, b"never stored"),
        ],
        vec![
            put(Table::Users, b"alice@one.example", b"list 2"),
            delete(Table::Mailbox, b"bob\x00\x01"),
            put(Table::Outbound, b"two.example\x00\x01", &[7; 200]),
            delete(Table::Dedup, b"d"),
            put(Table::Dedup, b"d", b"kept"),
        ],
        vec![
            put(Table::Meta, b"seq", b"2"),
            put(Table::Groups, b"group", b"state"),
            put(Table::OneTime, b"k", b"v"),
            delete(Table::OneTime, b"k"),
            put(Table::Prekeys, b"p", b"new"),
        ],
    ]
}

/// The contents after each prefix of `batches` (from none to all), as a memory store
/// holds them.
fn states(batches: &[Vec<StoreOp>]) -> Vec<Contents> {
    let mut memory = MemoryStore::new();
    let mut out = vec![Contents::new()];
    for b in batches {
        memory.commit(b).unwrap();
        out.push(non_empty(memory.load().unwrap()));
    }
    out
}

/// A log file written by [`LogStore`] itself: `batches` committed one by one; the
/// file's bytes, and where each record starts.
fn written_store(batches: &[Vec<StoreOp>]) -> (Vec<u8>, Vec<usize>) {
    let dir = TempDir::new();
    let mut store = LogStore::open(dir.log()).unwrap();
    let mut starts = Vec::new();
    for b in batches {
        starts.push(usize::try_from(store.log_len()).unwrap());
        store.commit(b).unwrap();
    }
    drop(store);
    (fs::read(dir.log()).unwrap(), starts)
}

/// What [`LogStore`] makes of `data` when it opens it (a version 1 file: a version 2
/// snapshot of it).
fn as_opened(data: &[u8]) -> Vec<u8> {
    let dir = TempDir::new();
    fs::write(dir.log(), data).unwrap();
    drop(LogStore::open(dir.log()).unwrap());
    fs::read(dir.log()).unwrap()
}

/// The header of format `version`.
fn header(version: u32) -> Vec<u8> {
    [&MAGIC[..], &version.to_le_bytes()].concat()
}

/// Appends a put op with a raw table number.
fn put_op(out: &mut Vec<u8>, table: u8, key: &[u8], value: &[u8]) {
    out.extend_from_slice(&[PUT, table]);
    for field in [key, value] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap().to_le_bytes());
        out.extend_from_slice(field);
    }
}

/// The payload of a record holding `ops`.
fn payload(ops: &[StoreOp]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            StoreOp::Put { table, key, value } => put_op(&mut out, table.number(), key, value),
            StoreOp::Delete { table, key } => {
                out.extend_from_slice(&[DELETE, table.number()]);
                out.extend_from_slice(&u32::try_from(key.len()).unwrap().to_le_bytes());
                out.extend_from_slice(key);
            }
        }
    }
    out
}

/// A version 1 record: `len ‖ first 8 bytes of SHA-256(len ‖ payload) ‖ payload`.
fn v1_record(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_le_bytes();
    let check = kogge::crypto::sha256(&[&len[..], payload].concat());
    [&len[..], &check[..8], payload].concat()
}

/// A version 1 file of these record payloads.
fn v1_file(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = header(1);
    for p in payloads {
        out.extend_from_slice(&v1_record(p));
    }
    out
}

/// The seed corpus of `log_store_open` (what `gen_store_corpus` writes). Panics unless
/// every seed opens, or is refused, as its comment says.
pub fn seeds() -> Vec<Seed> {
    let batches = batches();
    let states = states(&batches);
    let all = states[batches.len()].clone();
    let (store, starts) = written_store(&batches);
    let last = starts[starts.len() - 1];
    let payloads: Vec<Vec<u8>> = batches.iter().map(|b| payload(b)).collect();
    let v1 = v1_file(&payloads);
    let opens = |c: &Contents| Ok(c.clone());
    let corrupt = |offset: usize, detail: &str| Err(format!("corrupt at {offset}: {detail}"));

    let mut out: Vec<Seed> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>, expect: Result<Contents, String>| {
        assert_eq!(open_file(&bytes), expect, "seed {name}");
        let n = out.len();
        out.push(("log_store_open", format!("seed-{n:03}-{name}"), bytes));
    };

    // A new store (created in place of an empty file), and one with no records.
    add("empty", Vec::new(), opens(&states[0]));
    add("header-only", header(2), opens(&states[0]));
    // A store LogStore wrote: three commits, three records.
    add("store", store.clone(), opens(&all));
    // Torn last records: cut inside its payload, inside its header; zero bytes after
    // the last record (a file system that grew the file but had not written it).
    add(
        "torn-payload",
        store[..store.len() - 3].to_vec(),
        opens(&states[2]),
    );
    add(
        "torn-record-header",
        store[..last + 5].to_vec(),
        opens(&states[2]),
    );
    add(
        "trailing-zeros",
        [&store[..], &[0; 512]].concat(),
        opens(&all),
    );
    // Damage that is not a torn tail: a flipped payload byte in the first record; a
    // flipped bit in its length, which would make it run past the end of the file like a
    // torn tail but for the length's own check.
    let mut flipped = store.clone();
    flipped[HEADER_LEN + RECORD_HEADER_LEN + 2] ^= 0x20;
    add(
        "check-fails-mid-file",
        flipped,
        corrupt(HEADER_LEN, "checksum mismatch"),
    );
    let mut long = store.clone();
    long[HEADER_LEN + 3] ^= 0x80;
    add(
        "length-fails-its-check-mid-file",
        long,
        corrupt(HEADER_LEN, "record length fails its check"),
    );
    // Headers: a version this build does not know, one cut short, a foreign file.
    add(
        "unknown-version-3",
        [&header(3)[..], &store[HEADER_LEN..]].concat(),
        Err("unknown format 3".into()),
    );
    add(
        "short-header",
        header(2)[..HEADER_LEN - 1].to_vec(),
        Err("not a store".into()),
    );
    add(
        "foreign",
        b"KOGGELOX\x02\x00\x00\x00".to_vec(),
        Err("not a store".into()),
    );
    // Version 1 (SHA-256 checks): the same commits, read and rewritten as version 2;
    // with a torn last record; its checks read as version 2 do not hold.
    add("v1", v1.clone(), opens(&all));
    add("v1-torn", v1[..v1.len() - 1].to_vec(), opens(&states[2]));
    add(
        "v1-relabelled-as-v2",
        [&header(2)[..], &v1[HEADER_LEN..]].concat(),
        corrupt(HEADER_LEN, "record length fails its check"),
    );
    // An empty record before sound ones (version 1: no length check; its check is not
    // even read).
    add(
        "v1-empty-record-mid-file",
        [
            &v1[..HEADER_LEN],
            &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
            &v1[HEADER_LEN..],
        ]
        .concat(),
        corrupt(HEADER_LEN, "empty record"),
    );
    // Records whose checks hold but whose ops do not decode (only version 1 records can
    // be made here): an unknown op kind, a key longer than the payload, a stray byte.
    let second = HEADER_LEN + RECORD_HEADER_LEN_V1 + payloads[0].len();
    let bad_ops: [(&str, Vec<u8>, &str); 3] = [
        (
            "v1-unknown-op-kind",
            vec![9, 7, 0, 0, 0, 0],
            "unknown op kind",
        ),
        (
            "v1-key-past-payload",
            vec![PUT, 7, 100, 0, 0, 0, b'k'],
            "truncated op",
        ),
        (
            "v1-stray-byte",
            [&payloads[1][..], &[DELETE]].concat(),
            "truncated op",
        ),
    ];
    for (name, bad, detail) in bad_ops {
        let file = v1_file(&[payloads[0].clone(), bad, payloads[2].clone()]);
        add(name, file, corrupt(second, detail));
    }
    // A table this build does not know (a newer build's), kept but not loaded: as a
    // version 1 file, and as the version 2 snapshot LogStore rewrites it to.
    let mut unknown = Vec::new();
    put_op(&mut unknown, 200, b"future key", b"future value");
    put_op(&mut unknown, Table::Meta.number(), b"known", b"yes");
    let unknown = v1_file(&[payloads[0].clone(), unknown]);
    let mut with_known = states[1].clone();
    with_known
        .entry(Table::Meta)
        .or_default()
        .insert(Bytes::from_static(b"known"), Bytes::from_static(b"yes"));
    add("v1-unknown-table", unknown.clone(), opens(&with_known));
    add(
        "unknown-table-snapshot",
        as_opened(&unknown),
        opens(&with_known),
    );
    out
}
