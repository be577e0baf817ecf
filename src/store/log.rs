//! [`LogStore`]: a [`Store`] that appends each commit batch to one file, a log of
//! checksummed records, and rewrites the file as a snapshot of the live entries when
//! most of it is dead. Only the standard library, XXH3 for the record checks (SHA-256 in
//! files of format version 1, which it still reads); no cargo feature.
//!
//! The format, the crash guarantees and compaction are documented on the type.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{Contents, Store, StoreError, StoreOp, Table};
use crate::limits::{LOG_COMPACT_MIN_BYTES, LOG_COMPACT_RATIO, MAX_LOG_RECORD_LEN};

/// The first 8 bytes of every log file.
const MAGIC: [u8; 8] = *b"KOGGELOG";
/// Magic and version.
const HEADER_LEN: usize = 12;
/// `len`, `len_check` and `check` (format version 2).
const RECORD_HEADER_LEN: usize = 16;
/// `len` and `check` (format version 1).
const RECORD_HEADER_LEN_V1: usize = 12;

/// The record header's length in a file of format `version`.
const fn record_header_len(version: u32) -> usize {
    if version >= 2 {
        RECORD_HEADER_LEN
    } else {
        RECORD_HEADER_LEN_V1
    }
}
/// Op tag: put.
const PUT: u8 = 1;
/// Op tag: delete.
const DELETE: u8 = 2;
/// Payload bytes after which a snapshot starts a new record.
const SNAPSHOT_RECORD_LEN: usize = 1 << 20;

/// Entries by raw table number (unknown numbers included).
type Tables = BTreeMap<u8, BTreeMap<Bytes, Bytes>>;

/// Encoded length of a put op.
const fn put_len(key: usize, value: usize) -> u64 {
    (10 + key + value) as u64
}

/// Encoded length of a delete op.
const fn delete_len(key: usize) -> u64 {
    (6 + key) as u64
}

/// Why [`LogStore::open`] refused a file (also the reason a reload after a failed
/// commit fails, as a [`StoreError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogOpenError {
    /// A file operation failed.
    #[error("log store {}: cannot {step}: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// What the operating system reported.
        source: io::Error,
    },
    /// Another [`LogStore`] (in this process or another) has the file open.
    #[error("log store {} is in use: its lock file is held by another store", path.display())]
    Locked {
        /// The log file.
        path: PathBuf,
    },
    /// The file does not start with a log store header.
    #[error("{} is not a Kogge log store (no KOGGELOG header)", path.display())]
    NotAStore {
        /// The file.
        path: PathBuf,
    },
    /// The file is a log store of a format this build does not know.
    #[error(
        "log store {} has format version {found}; this build reads versions 1 to {supported}",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        found: u32,
        /// [`LogStore::FORMAT_VERSION`].
        supported: u32,
    },
    /// A record that is not the last one is damaged, or a record's ops do not decode.
    #[error("log store {}: damaged record at byte {offset}: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong with it.
        detail: &'static str,
    },
}

impl From<LogOpenError> for StoreError {
    fn from(e: LogOpenError) -> Self {
        StoreError(e.to_string())
    }
}

/// When [`LogStore`] compacts; [`Default`] is [`LOG_COMPACT_MIN_BYTES`] and
/// [`LOG_COMPACT_RATIO`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStoreOptions {
    /// The log is never compacted while it is shorter than this many bytes.
    pub compact_min_bytes: u64,
    /// The log is compacted once it is longer than this many snapshots of the live
    /// entries (and than `compact_min_bytes`). Values below 2 count as 2 (a snapshot
    /// is a little longer than the live entries, so 1 would compact after every commit).
    pub compact_ratio: u64,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        Self {
            compact_min_bytes: LOG_COMPACT_MIN_BYTES,
            compact_ratio: LOG_COMPACT_RATIO,
        }
    }
}

/// The live entries, and the size of a snapshot of them.
#[derive(Default)]
struct Mirror {
    tables: Tables,
    /// Sum of the encoded put ops of every entry.
    live: u64,
}

impl Mirror {
    fn put(&mut self, table: u8, key: Bytes, value: Bytes) {
        let key_len = key.len();
        let added = put_len(key_len, value.len());
        if let Some(old) = self.tables.entry(table).or_default().insert(key, value) {
            self.live -= put_len(key_len, old.len());
        }
        self.live += added;
    }

    fn delete(&mut self, table: u8, key: &[u8]) {
        if let Some(t) = self.tables.get_mut(&table)
            && let Some(v) = t.remove(key)
        {
            self.live -= put_len(key.len(), v.len());
        }
    }

    fn apply(&mut self, op: &StoreOp) {
        match op {
            StoreOp::Put { table, key, value } => {
                self.put(table.number(), key.clone(), value.clone());
            }
            StoreOp::Delete { table, key } => self.delete(table.number(), key),
        }
    }

    fn apply_owned(&mut self, op: StoreOp) {
        match op {
            StoreOp::Put { table, key, value } => self.put(table.number(), key, value),
            StoreOp::Delete { table, key } => self.delete(table.number(), &key),
        }
    }
}

/// One decoded op, borrowing from the file's bytes.
enum Op<'a> {
    Put(u8, &'a [u8], &'a [u8]),
    Delete(u8, &'a [u8]),
}

/// `n` as the u32 of a length field. Every caller has checked that `n` fits (a record
/// is at most [`MAX_LOG_RECORD_LEN`] bytes).
fn le32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}

/// The check of a record's length field (format version 2): the low 32 bits of XXH3-64
/// (seed 0) of `len`, little-endian. With it a damaged length is told from a torn tail.
fn len_check(len: [u8; 4]) -> [u8; 4] {
    le32_of(xxhash_rust::xxh3::xxh3_64(&len))
}

/// The low 32 bits of `x`, little-endian.
fn le32_of(x: u64) -> [u8; 4] {
    let b = x.to_le_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// The check value of a record in a file of format `version`: XXH3-64 (seed 0) of
/// `len ‖ payload`, little-endian, from version 2 on; the first 8 bytes of
/// SHA-256(`len ‖ payload`) in version 1.
fn checksum(version: u32, len: [u8; 4], payload: &[u8]) -> [u8; 8] {
    if version >= 2 {
        // The 4 length bytes and the payload, hashed as one input without copying the
        // payload: XXH3 of a concatenation needs the streaming state.
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&len);
        h.update(payload);
        return h.digest().to_le_bytes();
    }
    let digest = Sha256::new()
        .chain_update(len)
        .chain_update(payload)
        .finalize();
    let mut check = [0; 8];
    check.copy_from_slice(&digest[..8]);
    check
}

/// The file header of a file this build writes.
fn header() -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..].copy_from_slice(&LogStore::FORMAT_VERSION.to_le_bytes());
    h
}

/// Starts a record of format `version` in `buf`; returns where it starts (for
/// [`finish_record`]).
fn begin_record(buf: &mut Vec<u8>, version: u32) -> usize {
    let start = buf.len();
    buf.resize(start + record_header_len(version), 0);
    start
}

/// Fills in the header (of format `version`) of the record started at `start`.
fn finish_record(buf: &mut [u8], start: usize, version: u32) {
    let (head, payload) = buf[start..].split_at_mut(record_header_len(version));
    let len = le32(payload.len());
    head[..4].copy_from_slice(&len);
    let check = checksum(version, len, payload);
    if version >= 2 {
        head[4..8].copy_from_slice(&len_check(len));
        head[8..].copy_from_slice(&check);
    } else {
        head[4..].copy_from_slice(&check);
    }
}

fn push_put(buf: &mut Vec<u8>, table: u8, key: &[u8], value: &[u8]) {
    buf.extend_from_slice(&[PUT, table]);
    buf.extend_from_slice(&le32(key.len()));
    buf.extend_from_slice(key);
    buf.extend_from_slice(&le32(value.len()));
    buf.extend_from_slice(value);
}

fn push_delete(buf: &mut Vec<u8>, table: u8, key: &[u8]) {
    buf.extend_from_slice(&[DELETE, table]);
    buf.extend_from_slice(&le32(key.len()));
    buf.extend_from_slice(key);
}

/// Appends `ops` to `buf` as one record of format `version`; `Err` with the payload
/// length if that is longer than [`MAX_LOG_RECORD_LEN`] (and then `buf` is unchanged).
fn encode_batch(buf: &mut Vec<u8>, ops: &[StoreOp], version: u32) -> Result<(), u64> {
    let payload: u64 = ops
        .iter()
        .map(|op| match op {
            StoreOp::Put { key, value, .. } => put_len(key.len(), value.len()),
            StoreOp::Delete { key, .. } => delete_len(key.len()),
        })
        .sum();
    if payload > MAX_LOG_RECORD_LEN as u64 {
        return Err(payload);
    }
    let need = record_header_len(version) + payload as usize;
    if buf.is_empty() && buf.capacity() < need {
        // A fresh allocation rather than a reallocation, which would copy the old
        // (already written) contents for nothing.
        *buf = Vec::with_capacity(need);
    } else {
        buf.reserve(need);
    }
    let start = begin_record(buf, version);
    for op in ops {
        match op {
            StoreOp::Put { table, key, value } => push_put(buf, table.number(), key, value),
            StoreOp::Delete { table, key } => push_delete(buf, table.number(), key),
        }
    }
    finish_record(buf, start, version);
    Ok(())
}

/// A record that is not sound.
struct Bad {
    /// Whether the record, as far as it can be read, ends at the end of the file.
    reaches_end: bool,
    detail: &'static str,
}

/// The payload of the record (of format `version`) at the start of `rest` and the
/// record's length.
fn record(rest: &[u8], version: u32) -> Result<(&[u8], usize), Bad> {
    let header_len = record_header_len(version);
    let Some((head, body)) = rest.split_at_checked(header_len) else {
        return Err(Bad {
            reaches_end: true,
            detail: "incomplete record header",
        });
    };
    let mut len_bytes = [0; 4];
    len_bytes.copy_from_slice(&head[..4]);
    if version >= 2 && head[4..8] != len_check(len_bytes) {
        // A damaged length says nothing about where the record ends: not a torn tail
        // (unless only zero bytes follow, which `replay` checks).
        return Err(Bad {
            reaches_end: false,
            detail: "record length fails its check",
        });
    }
    let len = u32::from_le_bytes(len_bytes) as usize;
    let Some(payload) = body.get(..len) else {
        return Err(Bad {
            reaches_end: true,
            detail: "record runs past the end of the file",
        });
    };
    let bad = |detail| Bad {
        reaches_end: len == body.len(),
        detail,
    };
    if len == 0 {
        return Err(bad("empty record"));
    }
    if len > MAX_LOG_RECORD_LEN {
        return Err(bad("record longer than MAX_LOG_RECORD_LEN"));
    }
    if checksum(version, len_bytes, payload) != head[header_len - 8..] {
        return Err(bad("checksum mismatch"));
    }
    Ok((payload, header_len + len))
}

/// A length-prefixed field at the start of `p`, and what follows it.
fn field(p: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let (len, rest) = p.split_first_chunk::<4>().ok_or("truncated op")?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return Err("truncated op");
    }
    Ok(rest.split_at(len))
}

/// The ops of a record's payload, into `out`.
fn decode<'a>(mut p: &'a [u8], out: &mut Vec<Op<'a>>) -> Result<(), &'static str> {
    out.clear();
    while let [kind, table, rest @ ..] = p {
        let (key, rest) = field(rest)?;
        match *kind {
            PUT => {
                let (value, rest) = field(rest)?;
                out.push(Op::Put(*table, key, value));
                p = rest;
            }
            DELETE => {
                out.push(Op::Delete(*table, key));
                p = rest;
            }
            _ => return Err("unknown op kind"),
        }
    }
    if p.is_empty() {
        Ok(())
    } else {
        Err("truncated op")
    }
}

/// Replays the records of `data` (a whole file, header included) into `mirror`.
/// Returns where the sound records end (the file's length unless there is a torn
/// tail), or where the damaged record starts and what is wrong with it.
fn replay(data: &[u8], version: u32, mirror: &mut Mirror) -> Result<usize, (usize, &'static str)> {
    let mut pos = HEADER_LEN;
    let mut ops = Vec::new();
    while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
        match record(rest, version) {
            Ok((payload, len)) => {
                decode(payload, &mut ops).map_err(|detail| (pos, detail))?;
                for op in ops.drain(..) {
                    match op {
                        Op::Put(table, key, value) => mirror.put(
                            table,
                            Bytes::copy_from_slice(key),
                            Bytes::copy_from_slice(value),
                        ),
                        Op::Delete(table, key) => mirror.delete(table, key),
                    }
                }
                pos += len;
            }
            // A commit cut short by a crash: cut away.
            Err(bad) if bad.reaches_end || rest.iter().all(|b| *b == 0) => return Ok(pos),
            Err(bad) => return Err((pos, bad.detail)),
        }
    }
    Ok(pos)
}

/// `file` with `suffix` appended to its name.
fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Flushes the folder holding `file` (its entries: a renamed file).
#[cfg(unix)]
fn sync_dir(file: &Path) -> io::Result<()> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Folders cannot be flushed this way here; a rename is as durable as the platform makes
/// it.
#[cfg(not(unix))]
fn sync_dir(_file: &Path) -> io::Result<()> {
    Ok(())
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Maps an I/O error on the log at `path` to a [`LogOpenError`].
fn io_error<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(io::Error) -> LogOpenError + 'a {
    move |source| LogOpenError::Io {
        path: path.to_path_buf(),
        step,
        source,
    }
}

/// A durable [`Store`] in one append-only file: what survives a crash is every committed
/// batch, in full, and nothing of a batch in part.
///
/// # Why a log
///
/// The provider keeps all its state in memory and reads its store only at start
/// (SPEC.md 16.12), so the store needs no index on disk: a commit only has to reach the
/// disk whole, and a restart only has to rebuild the tables. A B-tree store rewrites
/// pages per key; this store writes each batch once, as one record, with one `write`
/// and one `fdatasync`.
///
/// # File format (version 2)
///
/// All integers are little-endian. The file is a header and then records:
///
/// ```text
/// header    = "KOGGELOG" (8 bytes) ‖ version: u32 (= 2)
/// record    = len: u32 ‖ len_check: 4 bytes ‖ check: 8 bytes ‖ payload (len bytes)
/// len_check = the low 32 bits of XXH3-64 (seed 0) of len, as a u32
/// check     = XXH3-64 (seed 0) of (len ‖ payload), as a u64
/// payload  = op ‖ op ‖ …              (at least one op)
/// op       = 0x01 ‖ table: u8 ‖ key_len: u32 ‖ key ‖ value_len: u32 ‖ value   (put)
///          | 0x02 ‖ table: u8 ‖ key_len: u32 ‖ key                            (delete)
/// ```
///
/// Version 1 records have no `len_check`, and their check is the first 8 bytes of
/// SHA-256(len ‖ payload). A torn-write check needs no cryptographic hash (SHA-256 cost a
/// fifth of the committing thread's CPU under load); and without a check of its own, a
/// damaged length field in the middle of a version 1 log makes its record look longer
/// than the file, like a torn tail, so opening cuts away every later record. A version 1
/// file is read, and rewritten as version 2 (a compaction) when it is opened; should that
/// fail, commits append version 1 records to it until a compaction succeeds.
///
/// `table` is [`Table::number`]. Replaying the records in order, and the ops of each
/// record in order, gives the store's contents. A record is at most
/// [`MAX_LOG_RECORD_LEN`] bytes of payload; a batch that would need a longer record is
/// refused by [`Store::commit`] (a provider batch is a few MiB at most).
///
/// A record's checksum covers its length and its payload, and `len_check` its length
/// alone. A record that is incomplete (its header, or a payload whose length passes its
/// check) or fails its checksum is a **torn tail** if it reaches the end of the file (or
/// everything from it to the end of the file is zero bytes): the last commit was cut
/// short by a crash, and the record is cut away when the store is opened. Any other
/// damaged record, a length that fails its check, or a record whose checksum holds but
/// whose ops do not decode, is corruption and opening fails with
/// [`LogOpenError::Corrupt`], never a panic, and changes nothing.
///
/// Table numbers this build does not know (written by a newer version that added a
/// table) are kept, in memory and in snapshots, but not returned by
/// [`Store::load`]: a downgrade does not destroy them.
///
/// # Atomicity and durability
///
/// [`Store::commit`] encodes the whole batch into one buffer, appends it with one
/// `write_all` and calls `fdatasync` (`File::sync_data`) before it returns `Ok`. A crash
/// at any point leaves either the whole record or a torn tail, which the next open cuts
/// away, so a batch is there entirely or not at all. If the write or the flush fails,
/// the store cuts the file back to its length before the batch (so that no later
/// record follows a half-written or possibly lost one) and re-reads the file on next
/// use; [`Store::load`] then says what the file holds, as the trait asks.
///
/// # Compaction
///
/// Puts that were replaced and entries that were deleted stay in the log until it is
/// compacted. After a commit, if the log is longer than both
/// [`LOG_COMPACT_MIN_BYTES`] and [`LOG_COMPACT_RATIO`] times the size of a snapshot of
/// the live entries, the store writes that snapshot (the same format: a header and
/// records of puts) to `<file>.compact`, flushes it, renames it over the log and
/// flushes the folder. A crash before the rename leaves the old log (the open removes
/// the leftover `.compact` file); after it, the snapshot, which holds the same
/// entries. Until the folder flush has succeeded, the next commit first retries it and
/// fails, writing nothing, if it fails again. A snapshot that cannot be written does
/// not fail the commit that triggered it (that commit is durable already): the store
/// tries again once the log has grown by another [`LOG_COMPACT_MIN_BYTES`].
/// [`LogStore::compact`] compacts on demand and reports errors.
///
/// Compaction needs the live entries, so the store keeps a **mirror** of its contents
/// in memory. It shares the key and value buffers ([`Bytes`]) handed to `commit` (and
/// keeps those handed to [`Store::commit_owned`], which the drivers use), but
/// the provider encodes most values for the store alone, so the mirror costs about the
/// stored bytes again plus the map nodes (README.md, "Relay benchmarks": 2.3–4.4 KB of
/// RSS per queued message against 1.1–3.4 KB with redb, noisy). Compacting only at open
/// would avoid the mirror, but a provider
/// that relays steadily writes and deletes every envelope (about a kilobyte each), so
/// its log would grow by gigabytes a day between restarts. The mirror also makes
/// [`Store::load`] a copy of maps instead of a read of the file. Compaction runs inside
/// the commit that triggers it; since it waits until the log is twice the live size,
/// its cost per byte committed is bounded, but that one commit is slower.
///
/// # Exclusive use
///
/// The store holds an exclusive lock (`flock` on Unix, via `File::try_lock`) on
/// `<file>.lock` while it is open, so a second store on the same file, in this or
/// another process, is refused with [`LogOpenError::Locked`]. The lock file is left
/// in place when the store closes; only its lock matters.
pub struct LogStore {
    path: PathBuf,
    options: LogStoreOptions,
    /// The lock file, locked for as long as the store lives.
    _lock: File,
    /// The log, open for appending; `None` after a failed commit, re-read on next use.
    file: Option<File>,
    mirror: Mirror,
    /// Length of the log file: where the next record goes.
    log_len: u64,
    /// A compaction renamed its snapshot over the log but could not flush the folder.
    dir_sync_pending: bool,
    /// No automatic compaction before the log is this long (after one failed).
    compact_not_before: u64,
    compactions: u64,
    /// The encoding buffer, kept between commits.
    buf: Vec<u8>,
    /// The format version of the file: new records are written in it (a file of an
    /// older version is rewritten in the current one by its next compaction).
    version: u32,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.path)
            .field("open", &self.file.is_some())
            .field("log_len", &self.log_len)
            .field("live_len", &self.live_len())
            .field("compactions", &self.compactions)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// The file format this build writes ("File format" above); it also reads, and
    /// appends to, files of the older version 1, until it compacts them.
    pub const FORMAT_VERSION: u32 = 2;

    /// The oldest format version this build reads.
    pub const OLDEST_FORMAT_VERSION: u32 = 1;

    /// Opens the log at `path`, creating it if it does not exist (or is empty), with
    /// the default compaction thresholds. A torn final record is cut away.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogOpenError> {
        Self::open_with(path, LogStoreOptions::default())
    }

    /// [`open`](Self::open) with other compaction thresholds.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: LogStoreOptions,
    ) -> Result<Self, LogOpenError> {
        let path = path.as_ref().to_path_buf();
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(sibling(&path, ".lock"))
            .map_err(io_error(&path, "open the lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(LogOpenError::Locked { path }),
            Err(TryLockError::Error(e)) => return Err(io_error(&path, "lock the lock file")(e)),
        }
        remove_if_exists(&sibling(&path, ".compact"))
            .map_err(io_error(&path, "remove a leftover snapshot"))?;
        let mut store = Self {
            path,
            options,
            _lock: lock,
            file: None,
            mirror: Mirror::default(),
            log_len: 0,
            dir_sync_pending: false,
            compact_not_before: 0,
            compactions: 0,
            buf: Vec::new(),
            version: Self::FORMAT_VERSION,
        };
        store.reload()?;
        if store.version == Self::FORMAT_VERSION {
            store.maybe_compact();
        } else {
            // A file of an older format becomes one of the current format at once (if
            // that fails, it stays as it is, and commits append in its own format).
            let _ = store.compact();
        }
        Ok(store)
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the log file.
    pub fn log_len(&self) -> u64 {
        self.log_len
    }

    /// Bytes a snapshot of the live entries takes (what compaction would shrink the log
    /// to, give or take record headers).
    pub fn live_len(&self) -> u64 {
        HEADER_LEN as u64 + self.mirror.live
    }

    /// Compactions since the store was opened.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// Reads the file again into the mirror; creates it if missing or empty.
    fn reload(&mut self) -> Result<(), LogOpenError> {
        self.file = None;
        let path = self.path.as_path();
        let mut data = match fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error(path, "read")(e)),
        };
        if data.is_empty() {
            // A new store: the header, in place atomically.
            let tmp = sibling(path, ".compact");
            let write = || -> io::Result<()> {
                remove_if_exists(&tmp)?;
                let mut f = OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .open(&tmp)?;
                f.write_all(&header())?;
                f.sync_all()?;
                fs::rename(&tmp, path)?;
                sync_dir(path)
            };
            write().map_err(io_error(path, "create"))?;
            data = header().to_vec();
        }
        if data.len() < HEADER_LEN || data[..8] != MAGIC {
            return Err(LogOpenError::NotAStore {
                path: path.to_path_buf(),
            });
        }
        let mut version = [0; 4];
        version.copy_from_slice(&data[8..HEADER_LEN]);
        let found = u32::from_le_bytes(version);
        if !(Self::OLDEST_FORMAT_VERSION..=Self::FORMAT_VERSION).contains(&found) {
            return Err(LogOpenError::UnknownFormat {
                path: path.to_path_buf(),
                found,
                supported: Self::FORMAT_VERSION,
            });
        }
        let mut mirror = Mirror::default();
        let end = replay(&data, found, &mut mirror).map_err(|(offset, detail)| {
            LogOpenError::Corrupt {
                path: path.to_path_buf(),
                offset: offset as u64,
                detail,
            }
        })?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_error(path, "open"))?;
        if end < data.len() {
            // Cut the torn tail away (durably), so that new records follow sound ones.
            file.set_len(end as u64)
                .and_then(|()| file.sync_all())
                .map_err(io_error(path, "cut away a torn final record"))?;
        }
        self.mirror = mirror;
        self.log_len = end as u64;
        self.file = Some(file);
        self.version = found;
        Ok(())
    }

    /// A `StoreError` naming the file and the step that failed.
    fn error(&self, step: &str, e: impl fmt::Display) -> StoreError {
        StoreError(format!("log store {}: {step}: {e}", self.path.display()))
    }

    /// Whether the log is long enough, and dead enough, to compact.
    fn compaction_due(&self) -> bool {
        let threshold = self.options.compact_min_bytes.max(
            self.live_len()
                .saturating_mul(self.options.compact_ratio.max(2)),
        );
        self.log_len > threshold && self.log_len >= self.compact_not_before
    }

    /// Compacts if due; a failure only postpones the next attempt.
    fn maybe_compact(&mut self) {
        if self.compaction_due() && self.compact().is_err() {
            self.compact_not_before = self.log_len.saturating_add(self.options.compact_min_bytes);
        }
    }

    /// Rewrites the log as a snapshot of the live entries, now: written to
    /// `<file>.compact`, flushed, renamed over the log, folder flushed. On `Err` before
    /// the rename the log is untouched; if only the folder flush failed, the snapshot is
    /// the log and the next commit retries the flush first.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        if self.file.is_none() {
            self.reload()?;
        }
        let tmp = sibling(&self.path, ".compact");
        let (file, len) = match self.write_snapshot(&tmp) {
            Ok(written) => written,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(self.error("write a snapshot", e));
            }
        };
        if let Err(e) = fs::rename(&tmp, &self.path) {
            let _ = fs::remove_file(&tmp);
            return Err(self.error("rename the snapshot over the log", e));
        }
        // From here on the snapshot is the log.
        self.file = Some(file);
        self.log_len = len;
        self.version = Self::FORMAT_VERSION;
        self.compactions += 1;
        self.compact_not_before = 0;
        if let Err(e) = sync_dir(&self.path) {
            self.dir_sync_pending = true;
            return Err(self.error("flush the folder after compaction", e));
        }
        self.dir_sync_pending = false;
        Ok(())
    }

    /// Writes and flushes a snapshot of the mirror to `tmp`; the file (open for
    /// appending) and its length.
    fn write_snapshot(&self, tmp: &Path) -> io::Result<(File, u64)> {
        remove_if_exists(tmp)?;
        let mut f = OpenOptions::new().append(true).create_new(true).open(tmp)?;
        let mut buf = Vec::with_capacity(2 * SNAPSHOT_RECORD_LEN);
        buf.extend_from_slice(&header());
        let mut written = 0u64;
        let mut start = begin_record(&mut buf, Self::FORMAT_VERSION);
        for (&table, entries) in &self.mirror.tables {
            for (key, value) in entries {
                let payload = buf.len() - start - RECORD_HEADER_LEN;
                let next = put_len(key.len(), value.len()) as usize;
                if payload > 0 && payload + next > SNAPSHOT_RECORD_LEN {
                    finish_record(&mut buf, start, Self::FORMAT_VERSION);
                    f.write_all(&buf)?;
                    written += buf.len() as u64;
                    buf.clear();
                    start = begin_record(&mut buf, Self::FORMAT_VERSION);
                }
                push_put(&mut buf, table, key, value);
            }
        }
        if buf.len() - start > RECORD_HEADER_LEN {
            finish_record(&mut buf, start, Self::FORMAT_VERSION);
        } else {
            buf.truncate(start);
        }
        f.write_all(&buf)?;
        written += buf.len() as u64;
        f.sync_all()?;
        Ok((f, written))
    }
}

impl Store for LogStore {
    /// Every table, each with its entries in key order (a table never written is
    /// present and empty). After a failed commit, the file is read again first.
    fn load(&mut self) -> Result<Contents, StoreError> {
        if self.file.is_none() {
            self.reload()?;
        }
        Ok(Table::ALL
            .iter()
            .map(|&t| {
                let entries = self.mirror.tables.get(&t.number()).cloned();
                (t, entries.unwrap_or_default())
            })
            .collect())
    }

    /// All of `ops` as one record, one `write_all`, one `fdatasync`; then compaction if
    /// due (see [`LogStore`]).
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if self.append(ops)? {
            for op in ops {
                self.mirror.apply(op);
            }
            self.maybe_compact();
        }
        Ok(())
    }

    /// As `commit`; the mirror keeps the batch's keys and values.
    fn commit_owned(&mut self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        if self.append(&ops)? {
            for op in ops {
                self.mirror.apply_owned(op);
            }
            self.maybe_compact();
        }
        Ok(())
    }
}

impl LogStore {
    /// Appends `ops` as one record and flushes it; `Ok(false)` for an empty batch (nothing
    /// written), `Ok(true)` once the record is durable, when the caller applies `ops` to
    /// the mirror.
    fn append(&mut self, ops: &[StoreOp]) -> Result<bool, StoreError> {
        if ops.is_empty() {
            return Ok(false);
        }
        if self.file.is_none() {
            self.reload()?;
        }
        if self.dir_sync_pending {
            sync_dir(&self.path).map_err(|e| self.error("flush the folder after compaction", e))?;
            self.dir_sync_pending = false;
        }
        // The buffer is kept while batches fill it (under load, allocating megabytes
        // afresh for every commit had the kernel zeroing new pages); once a batch uses
        // under a quarter of a buffer above 4 MiB, it goes back to the allocator.
        if self.buf.capacity() > 4 * SNAPSHOT_RECORD_LEN && self.buf.len() < self.buf.capacity() / 4
        {
            self.buf = Vec::new();
        }
        self.buf.clear();
        if let Err(len) = encode_batch(&mut self.buf, ops, self.version) {
            return Err(self.error(
                "commit",
                format_args!("a batch of {len} bytes is longer than MAX_LOG_RECORD_LEN"),
            ));
        }
        let Some(file) = self.file.as_mut() else {
            return Err(self.error("commit", "not open"));
        };
        if let Err(e) = file.write_all(&self.buf).and_then(|()| file.sync_data()) {
            // Whatever reached the file of this record is cut away, so that no later
            // record follows a torn or possibly lost one; the file is read again on
            // next use.
            let _ = file.set_len(self.log_len);
            self.file = None;
            return Err(self.error(&format!("commit of {} ops", ops.len()), e));
        }
        self.log_len += self.buf.len() as u64;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::MemoryStore;

    use crate::store::testing::{delete, non_empty, put};

    fn batches() -> Vec<Vec<StoreOp>> {
        vec![
            vec![
                put(Table::Users, b"alice@one.example", b"list 1"),
                put(Table::Mailbox, b"bob\x00\x01", b"m1"),
                put(Table::Mailbox, b"bob\x00\x02", b"m2"),
                put(Table::Meta, b"", b""), // empty key and value
                delete(Table::Dedup, b"never stored"),
            ],
            vec![
                put(Table::Users, b"alice@one.example", b"list 2"), // replace
                delete(Table::Mailbox, b"bob\x00\x01"),
                put(Table::Outbound, b"two.example\x00\x01", &[7; 3000]),
                put(Table::OneTime, b"k", b"v"),
                delete(Table::OneTime, b"k"), // in order, within one batch
                delete(Table::Dedup, b"d"),
                put(Table::Dedup, b"d", b"kept"), // delete, then put: kept
            ],
            vec![
                put(Table::Meta, b"seq", b"1"),
                put(Table::Meta, b"seq", b"2"),
                put(Table::Mailbox, b"bob\x00\x04", b"m4"),
                delete(Table::Mailbox, b"bob\x00\x04"),
                put(Table::Prekeys, b"p", b"new"),
            ],
        ]
    }

    /// What a fresh scan of the file at `path` holds, by raw table number.
    fn raw_tables(path: &Path) -> Tables {
        let data = fs::read(path).unwrap();
        let mut mirror = Mirror::default();
        assert_eq!(data[8..HEADER_LEN], LogStore::FORMAT_VERSION.to_le_bytes());
        let end = replay(&data, LogStore::FORMAT_VERSION, &mut mirror).unwrap();
        assert_eq!(end, data.len(), "no torn tail");
        mirror.tables
    }

    #[test]
    fn record_checks_match_xxh3_and_sha256() {
        // Known answers from an independent implementation (Python's `xxhash` 3.x:
        // `xxh3_64(b"\x03\0\0\0abc").digest()[::-1]`, and `hashlib.sha256`).
        let len = le32(3);
        assert_eq!(
            checksum(2, len, b"abc"),
            [0x4c, 0xbe, 0x6e, 0x8c, 0x68, 0xf3, 0x5c, 0x56]
        );
        let mut long = Vec::new();
        long.extend((0..10_000u32).map(|i| (i % 251) as u8));
        assert_eq!(
            checksum(2, le32(long.len()), &long),
            [0xb1, 0x6e, 0x39, 0x77, 0x3a, 0x46, 0xdb, 0xef]
        );
        let sha = crate::crypto::sha256(b"\x03\0\0\0abc");
        assert_eq!(checksum(1, len, b"abc"), sha[..8]);
        // The length's check: the low 32 bits of `xxh3_64(b"\x03\0\0\0")`.
        assert_eq!(len_check(len), [0x9d, 0xe9, 0x09, 0x66]);
        // A whole version 2 record, as SPEC.md 16.12 shows it.
        let mut buf = Vec::new();
        let start = begin_record(&mut buf, 2);
        buf.extend_from_slice(b"abc");
        finish_record(&mut buf, start, 2);
        assert_eq!(
            buf,
            [
                0x03, 0x00, 0x00, 0x00, 0x9d, 0xe9, 0x09, 0x66, 0x4c, 0xbe, 0x6e, 0x8c, 0x68, 0xf3,
                0x5c, 0x56, b'a', b'b', b'c'
            ]
        );
    }

    #[test]
    fn a_version_1_file_is_read_and_rewritten_in_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        // A file as version 1 wrote it: SHA-256 checks, and a torn last record.
        let mut old = MAGIC.to_vec();
        old.extend_from_slice(&1u32.to_le_bytes());
        let mut memory = MemoryStore::new();
        for b in &batches() {
            encode_batch(&mut old, b, 1).unwrap();
            memory.commit(b).unwrap();
        }
        let whole = old.len();
        encode_batch(&mut old, &[put(Table::Meta, b"torn", b"lost")], 1).unwrap();
        old.truncate(old.len() - 2);
        fs::write(&path, &old).unwrap();
        // The same bytes with current checks do not open: the version picks the check.
        let mut relabelled = old[..whole].to_vec();
        relabelled[8..HEADER_LEN].copy_from_slice(&LogStore::FORMAT_VERSION.to_le_bytes());
        let other = dir.path().join("relabelled.log");
        fs::write(&other, &relabelled).unwrap();
        assert!(matches!(
            LogStore::open(&other).unwrap_err(),
            LogOpenError::Corrupt {
                detail: "record length fails its check",
                ..
            }
        ));

        let mut store = LogStore::open(&path).unwrap();
        let want = non_empty(memory.load().unwrap());
        assert_eq!(non_empty(store.load().unwrap()), want);
        assert_eq!(store.compactions(), 1, "rewritten at open");
        // Now a current-format file, holding the same, to which commits append.
        assert_eq!(raw_tables(&path).len(), want.len());
        let extra = [put(Table::Meta, b"after", b"upgrade")];
        store.commit(&extra).unwrap();
        memory.commit(&extra).unwrap();
        drop(store);
        raw_tables(&path);
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(
            non_empty(store.load().unwrap()),
            non_empty(memory.load().unwrap())
        );
        // A version this build does not know is refused.
        let mut future = fs::read(&path).unwrap();
        future[8..HEADER_LEN].copy_from_slice(&3u32.to_le_bytes());
        fs::write(&other, &future).unwrap();
        assert!(matches!(
            LogStore::open(&other).unwrap_err(),
            LogOpenError::UnknownFormat {
                found: 3,
                supported: 2,
                ..
            }
        ));
    }

    #[test]
    fn puts_and_deletes_survive_reopen_and_match_the_memory_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let mut memory = MemoryStore::new();
        {
            let mut store = LogStore::open(&path).unwrap();
            assert!(store.load().unwrap().values().all(BTreeMap::is_empty));
            assert_eq!(store.log_len(), HEADER_LEN as u64);
            // Borrowed and owned batches alternately: the mirror ends the same.
            for (i, b) in batches().into_iter().enumerate() {
                memory.commit(&b).unwrap();
                if i % 2 == 0 {
                    store.commit(&b).unwrap();
                } else {
                    store.commit_owned(b).unwrap();
                }
            }
            let len = store.log_len();
            store.commit(&[]).unwrap();
            store.commit_owned(Vec::new()).unwrap();
            assert_eq!(store.log_len(), len, "an empty batch writes nothing");
            assert_eq!(fs::metadata(&path).unwrap().len(), len);
            assert_eq!(
                non_empty(store.load().unwrap()),
                non_empty(memory.load().unwrap())
            );
        }
        let mut store = LogStore::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), Table::ALL.len(), "every table is listed");
        assert_eq!(non_empty(loaded.clone()), non_empty(memory.load().unwrap()));
        assert_eq!(
            loaded[&Table::Users][&b"alice@one.example"[..]],
            Bytes::from_static(b"list 2")
        );
        assert_eq!(loaded[&Table::Meta][&b"seq"[..]], Bytes::from_static(b"2"));
        assert_eq!(store.path(), path);
        // The live size is what a snapshot holds.
        let live = store.live_len();
        store.compact().unwrap();
        assert_eq!(store.log_len(), live + RECORD_HEADER_LEN as u64);
        assert_eq!(
            non_empty(store.load().unwrap()),
            non_empty(memory.load().unwrap())
        );
    }

    #[test]
    fn table_numbers_round_trip() {
        for &t in Table::ALL {
            assert_eq!(Table::from_number(t.number()), Some(t));
        }
        assert_eq!(Table::from_number(0), None);
        assert_eq!(Table::from_number(255), None);
    }

    /// The file as it was after each commit: lengths, and the contents then.
    fn history(path: &Path, batches: &[Vec<StoreOp>]) -> Vec<(u64, Contents)> {
        let mut store = LogStore::open(path).unwrap();
        let mut out = vec![(store.log_len(), store.load().unwrap())];
        for b in batches {
            store.commit(b).unwrap();
            out.push((store.log_len(), store.load().unwrap()));
        }
        out
    }

    /// Cuts the file at every byte of the last record: the store opens with the state
    /// before that commit, or (uncut) after it, and nothing else; the torn bytes are
    /// cut away and the store carries on.
    #[test]
    fn a_torn_last_record_at_any_byte_gives_the_state_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let h = history(&path, &batches());
        let full = fs::read(&path).unwrap();
        let (before_len, before) = h[h.len() - 2].clone();
        let (after_len, after) = h[h.len() - 1].clone();
        assert_eq!(after_len, full.len() as u64);
        let cut_path = dir.path().join("cut.log");
        for cut in before_len..=after_len {
            fs::write(&cut_path, &full[..cut as usize]).unwrap();
            let mut store = LogStore::open(&cut_path).unwrap();
            let got = store.load().unwrap();
            if cut == after_len {
                assert_eq!(got, after);
            } else {
                assert_eq!(got, before, "cut at {cut}");
                assert_eq!(store.log_len(), before_len, "torn bytes cut away");
                assert_eq!(fs::metadata(&cut_path).unwrap().len(), before_len);
            }
            // The store carries on, and what it writes next is read back.
            store.commit(&[put(Table::Meta, b"next", b"1")]).unwrap();
            drop(store);
            let mut store = LogStore::open(&cut_path).unwrap();
            assert_eq!(store.load().unwrap()[&Table::Meta][&b"next"[..]], &b"1"[..]);
        }
    }

    /// A damaged length field of a record in the middle of the log would make the
    /// record look longer than the file, like a torn tail; cutting it away would erase
    /// every commit after it. The length's own check (format version 2) makes it damage
    /// instead: opening fails, and the file is left as it was.
    #[test]
    fn a_damaged_length_in_the_middle_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        drop(history(&path, &batches()));
        let full = fs::read(&path).unwrap();
        for flip in [0x80u8, 0x01] {
            let mut bad = full.clone();
            bad[HEADER_LEN + 3] ^= flip; // the high byte of the first record's length
            fs::write(&path, &bad).unwrap();
            let e = LogStore::open(&path).unwrap_err();
            assert!(
                matches!(
                    e,
                    LogOpenError::Corrupt {
                        offset: 12,
                        detail: "record length fails its check",
                        ..
                    }
                ),
                "{e}"
            );
            assert_eq!(fs::read(&path).unwrap(), bad, "nothing cut");
        }
    }

    /// Any byte of the last record damaged: the record is dropped (the state before
    /// it), or, if the damage hit its length field or the length's check, opening fails;
    /// never a panic, never anything else.
    #[test]
    fn a_damaged_last_record_is_dropped_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let h = history(&path, &batches());
        let full = fs::read(&path).unwrap();
        let (before_len, before) = h[h.len() - 2].clone();
        let bad_path = dir.path().join("bad.log");
        let mut refused = 0;
        for at in before_len as usize..full.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = full.clone();
                bad[at] ^= flip;
                fs::write(&bad_path, &bad).unwrap();
                match LogStore::open(&bad_path) {
                    Ok(mut store) => assert_eq!(store.load().unwrap(), before, "byte {at}"),
                    Err(LogOpenError::Corrupt { offset, .. }) => {
                        assert!(
                            at < before_len as usize + 8,
                            "byte {at}: only the length and its check"
                        );
                        assert_eq!(offset, before_len);
                        refused += 1;
                    }
                    Err(e) => panic!("byte {at}: {e}"),
                }
            }
        }
        // A length field one short: damage, caught by the length's own check.
        let mut bad = full.clone();
        let at = before_len as usize;
        let mut len = [0; 4];
        len.copy_from_slice(&bad[at..at + 4]);
        bad[at..at + 4].copy_from_slice(&(u32::from_le_bytes(len) - 1).to_le_bytes());
        fs::write(&bad_path, &bad).unwrap();
        assert!(matches!(
            LogStore::open(&bad_path).unwrap_err(),
            LogOpenError::Corrupt {
                detail: "record length fails its check",
                ..
            }
        ));
        assert_eq!(
            refused,
            8 * 3,
            "every damage to the length or its check is refused"
        );
        eprintln!("{refused} single-byte damages refused");
    }

    #[test]
    fn damage_before_the_last_record_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let h = history(&path, &batches());
        let full = fs::read(&path).unwrap();
        let (first_end, _) = h[1];
        let bad_path = dir.path().join("bad.log");
        for at in [HEADER_LEN + RECORD_HEADER_LEN + 3, first_end as usize - 1] {
            let mut bad = full.clone();
            bad[at] ^= 0x40;
            fs::write(&bad_path, &bad).unwrap();
            let e = LogStore::open(&bad_path).unwrap_err();
            assert!(
                matches!(e, LogOpenError::Corrupt { offset, detail: "checksum mismatch", .. }
                    if offset == HEADER_LEN as u64),
                "{e}"
            );
            assert!(StoreError::from(e).0.contains("bad.log"));
        }
        // A record whose checksum holds but whose ops do not decode.
        let mut buf = full[..first_end as usize].to_vec();
        let start = begin_record(&mut buf, LogStore::FORMAT_VERSION);
        buf.extend_from_slice(&[9, 1, 0, 0, 0, 0]); // op kind 9
        finish_record(&mut buf, start, LogStore::FORMAT_VERSION);
        fs::write(&bad_path, &buf).unwrap();
        let e = LogStore::open(&bad_path).unwrap_err();
        assert!(
            matches!(
                e,
                LogOpenError::Corrupt {
                    detail: "unknown op kind",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn zeroed_blocks_after_the_last_record_are_cut_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let h = history(&path, &batches());
        let mut data = fs::read(&path).unwrap();
        data.extend_from_slice(&[0; 4096]);
        fs::write(&path, &data).unwrap();
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(store.load().unwrap(), h[h.len() - 1].1);
        assert_eq!(store.log_len(), h[h.len() - 1].0);
    }

    #[test]
    fn foreign_files_and_other_versions_are_refused_and_empty_files_are_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("foreign.log");
        fs::write(&path, b"hello, world; not a log").unwrap();
        assert!(matches!(
            LogStore::open(&path).unwrap_err(),
            LogOpenError::NotAStore { .. }
        ));
        fs::write(&path, b"KOGG").unwrap();
        assert!(matches!(
            LogStore::open(&path).unwrap_err(),
            LogOpenError::NotAStore { .. }
        ));
        let mut future = header();
        future[8] = 3;
        fs::write(&path, future).unwrap();
        let e = LogStore::open(&path).unwrap_err();
        assert!(
            matches!(
                e,
                LogOpenError::UnknownFormat {
                    found: 3,
                    supported: 2,
                    ..
                }
            ),
            "{e}"
        );
        let mut ancient = header();
        ancient[8] = 0;
        fs::write(&path, ancient).unwrap();
        assert!(matches!(
            LogStore::open(&path).unwrap_err(),
            LogOpenError::UnknownFormat { found: 0, .. }
        ));
        fs::write(&path, b"").unwrap();
        let mut store = LogStore::open(&path).unwrap();
        assert!(store.load().unwrap().values().all(BTreeMap::is_empty));
        assert_eq!(fs::read(&path).unwrap(), header());
    }

    #[test]
    fn a_second_store_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let held = LogStore::open(&path).unwrap();
        let e = LogStore::open(&path).unwrap_err();
        assert!(matches!(e, LogOpenError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("store.log"), "{e}");
        drop(held);
        LogStore::open(&path).unwrap();
    }

    #[test]
    fn tables_this_build_does_not_know_are_kept_but_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        drop(history(&path, &batches()[..1]));
        // A record from a newer build: a put to table 200 and one to a known table.
        let mut buf = fs::read(&path).unwrap();
        let start = begin_record(&mut buf, LogStore::FORMAT_VERSION);
        push_put(&mut buf, 200, b"future key", b"future value");
        push_put(&mut buf, Table::Meta.number(), b"known", b"yes");
        finish_record(&mut buf, start, LogStore::FORMAT_VERSION);
        fs::write(&path, &buf).unwrap();
        let mut store = LogStore::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), Table::ALL.len());
        assert_eq!(loaded[&Table::Meta][&b"known"[..]], &b"yes"[..]);
        // Compaction keeps it.
        store.compact().unwrap();
        drop(store);
        assert_eq!(
            raw_tables(&path)[&200][&b"future key"[..]],
            &b"future value"[..]
        );
    }

    /// Puts and deletes of 64 keys, 300 bytes each; the log grows, the live set not.
    fn churn(store: &mut LogStore, memory: &mut MemoryStore, rounds: u64) {
        for n in 0..rounds {
            let mut ops = vec![put(Table::Mailbox, &n.to_be_bytes(), &[n as u8; 300])];
            if n >= 64 {
                ops.push(delete(Table::Mailbox, &(n - 64).to_be_bytes()));
            }
            ops.push(put(Table::Meta, b"seq", &n.to_be_bytes()));
            store.commit(&ops).unwrap();
            memory.commit(&ops).unwrap();
        }
    }

    fn small() -> LogStoreOptions {
        LogStoreOptions {
            compact_min_bytes: 64 * 1024,
            compact_ratio: 2,
        }
    }

    #[test]
    fn compaction_keeps_the_contents_and_bounds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let mut memory = MemoryStore::new();
        let mut store = LogStore::open_with(&path, small()).unwrap();
        churn(&mut store, &mut memory, 2000);
        assert!(store.compactions() >= 5, "{store:?}");
        assert!(store.log_len() <= 64 * 1024 + 400, "{store:?}");
        assert_eq!(fs::metadata(&path).unwrap().len(), store.log_len());
        assert_eq!(
            non_empty(store.load().unwrap()),
            non_empty(memory.load().unwrap())
        );
        assert!(!sibling(&path, ".compact").exists());
        drop(store);
        let mut store = LogStore::open_with(&path, small()).unwrap();
        assert_eq!(
            non_empty(store.load().unwrap()),
            non_empty(memory.load().unwrap())
        );
        churn(&mut store, &mut memory, 10);
        drop(store);
        // Reopened with the default thresholds: no compaction, same contents.
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(store.compactions(), 0);
        assert_eq!(
            non_empty(store.load().unwrap()),
            non_empty(memory.load().unwrap())
        );
    }

    /// A crash at each step of a compaction: while the snapshot is written, after it
    /// is flushed, after the rename. Each leaves a file that opens with the same
    /// contents, and no leftover snapshot.
    #[test]
    fn a_crash_between_the_steps_of_a_compaction_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let tmp = sibling(&path, ".compact");
        let mut memory = MemoryStore::new();
        let mut store = LogStore::open(&path).unwrap();
        churn(&mut store, &mut memory, 300);
        let expected = non_empty(memory.load().unwrap());
        let log_len = store.log_len();

        // 1. Snapshot partly written: cut at several points.
        store.write_snapshot(&tmp).unwrap();
        let snapshot = fs::read(&tmp).unwrap();
        drop(store);
        for cut in [0, 5, HEADER_LEN, snapshot.len() / 2, snapshot.len() - 1] {
            fs::write(&tmp, &snapshot[..cut]).unwrap();
            let mut store = LogStore::open(&path).unwrap();
            assert_eq!(non_empty(store.load().unwrap()), expected);
            assert_eq!(store.log_len(), log_len, "the old log is in use");
            assert!(!tmp.exists(), "the leftover snapshot is removed");
        }

        // 2. Snapshot written and flushed, not renamed.
        fs::write(&tmp, &snapshot).unwrap();
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(non_empty(store.load().unwrap()), expected);
        assert!(!tmp.exists());

        // 3. Renamed, then the crash (before the folder flush, or right after).
        store.write_snapshot(&tmp).unwrap();
        fs::rename(&tmp, &path).unwrap();
        drop(store);
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(non_empty(store.load().unwrap()), expected);
        assert_eq!(store.log_len(), snapshot.len() as u64);
        assert!(store.log_len() < log_len / 4);

        // And the compacted log takes new commits, which survive a reopen.
        churn(&mut store, &mut memory, 5);
        drop(store);
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(
            non_empty(store.load().unwrap()),
            non_empty(memory.load().unwrap())
        );
    }

    /// A failed write or flush: `Err`, nothing of the batch is in the file, the store
    /// reads the file again and carries on.
    #[test]
    fn a_failed_commit_applies_nothing_and_the_store_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let h = history(&path, &batches());
        let mut store = LogStore::open(&path).unwrap();
        // The handle, swapped for a read-only one, refuses the write.
        store.file = Some(File::open(&path).unwrap());
        let e = store
            .commit(&[put(Table::Meta, b"lost", b"x")])
            .unwrap_err();
        assert!(e.0.contains("store.log"), "{e}");
        assert_eq!(store.load().unwrap(), h[h.len() - 1].1);
        store.commit(&[put(Table::Meta, b"kept", b"y")]).unwrap();
        drop(store);
        let loaded = LogStore::open(&path).unwrap().load().unwrap();
        assert!(loaded[&Table::Meta].contains_key(&b"kept"[..]));
        assert!(!loaded[&Table::Meta].contains_key(&b"lost"[..]));
    }

    #[test]
    fn a_batch_longer_than_a_record_may_be_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.log");
        let mut store = LogStore::open(&path).unwrap();
        // Zeroed memory from the allocator: never touched, since the size is checked
        // before anything is copied.
        let huge = Bytes::from(vec![0u8; MAX_LOG_RECORD_LEN]);
        let e = store
            .commit(&[StoreOp::Put {
                table: Table::Mailbox,
                key: Bytes::from_static(b"k"),
                value: huge,
            }])
            .unwrap_err();
        assert!(e.0.contains("MAX_LOG_RECORD_LEN"), "{e}");
        assert_eq!(store.log_len(), HEADER_LEN as u64);
        store.commit(&[put(Table::Meta, b"k", b"v")]).unwrap();
    }

    /// One step of a random run: a batch, or a reopen.
    #[derive(Clone, Debug)]
    enum Step {
        Batch(Vec<(usize, u8, Option<Vec<u8>>)>),
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        let op = (
            0..Table::ALL.len(),
            0u8..8,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        );
        prop_oneof![
            8 => proptest::collection::vec(op, 0..6).prop_map(Step::Batch),
            1 => Just(Step::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The log store holds what the memory store holds, after every commit and
        /// every reopen, with compaction every few kilobytes.
        #[test]
        fn behaves_like_the_memory_store(steps in proptest::collection::vec(step(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.log");
            let options = LogStoreOptions { compact_min_bytes: 2048, compact_ratio: 2 };
            let mut store = LogStore::open_with(&path, options).unwrap();
            let mut memory = MemoryStore::new();
            for s in steps {
                match s {
                    Step::Batch(ops) => {
                        let ops: Vec<StoreOp> = ops
                            .into_iter()
                            .map(|(t, k, v)| match v {
                                Some(v) => put(Table::ALL[t], &[k], &v),
                                None => delete(Table::ALL[t], &[k]),
                            })
                            .collect();
                        store.commit(&ops).unwrap();
                        memory.commit(&ops).unwrap();
                    }
                    Step::Reopen => {
                        drop(store);
                        store = LogStore::open_with(&path, options).unwrap();
                    }
                }
                prop_assert_eq!(
                    non_empty(store.load().unwrap()),
                    non_empty(memory.load().unwrap())
                );
                // Never longer than the compaction threshold.
                prop_assert!(store.log_len() <= 2048u64.max(2 * store.live_len()));
            }
        }
    }
}
