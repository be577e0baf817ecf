//! [`RedbStore`]: a [`Store`] on [redb](https://docs.rs/redb), an embedded, pure-Rust,
//! copy-on-write B-tree database in one file (cargo feature `redb`). Its layout,
//! durability and failure semantics are documented on the type.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ::redb::{
    Builder, Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    TableError,
};
use bytes::Bytes;

use super::{Contents, Store, StoreError, StoreOp, Table};

/// The table holding the format version. No [`Table::name`] may ever equal it.
const FORMAT_TABLE: TableDefinition<'static, &str, u64> = TableDefinition::new("kogge_format");
/// The key of the format version in [`FORMAT_TABLE`].
const FORMAT_KEY: &str = "version";

/// The redb table for `table`.
const fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A [`Table`] open in a write transaction.
type BytesTable<'tx> = ::redb::Table<'tx, &'static [u8], &'static [u8]>;

/// How to (re)open the database file: a path, or a test backend.
type Opener = Box<dyn Fn() -> Result<Database, DatabaseError> + Send + Sync>;

/// Why [`RedbStore::open`] refused a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedbOpenError {
    /// redb could not open or create the file, or read or write its format record.
    #[error("cannot open redb store {}: {detail}", path.display())]
    Database {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        detail: String,
    },
    /// The file is a Kogge store of a format this build does not know.
    #[error(
        "redb store {} has format version {found}; this build reads only version {supported}",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The version recorded in the file.
        found: u64,
        /// [`RedbStore::FORMAT_VERSION`].
        supported: u64,
    },
    /// The file is a redb database with tables but without a Kogge format record.
    #[error("{} is a redb database but not a Kogge store (it has tables and no format record)", path.display())]
    NotAStore {
        /// The file.
        path: PathBuf,
    },
}

impl From<RedbOpenError> for StoreError {
    fn from(e: RedbOpenError) -> Self {
        StoreError(e.to_string())
    }
}

/// A durable [`Store`] in one [redb](https://docs.rs/redb) database file: what survives
/// a crash is every committed batch, in full, and nothing of a batch in part.
///
/// # Layout
///
/// One redb table per [`Table`], named by [`Table::name`], with `&[u8]` keys and
/// values exactly as the provider hands them over, and one more table,
/// `kogge_format`, whose key `version` records [`RedbStore::FORMAT_VERSION`]. A file
/// with another version (or a redb file that is not a Kogge store) is refused with a
/// [`RedbOpenError`] rather than misread.
///
/// # Durability
///
/// [`Store::commit`] applies its whole batch in **one** redb write transaction with
/// [`Durability::Immediate`] and returns only after redb has `fsync`ed the file. So:
///
/// * **Process crash (`kill -9`, panic, OOM kill).** Every batch whose `commit`
///   returned `Ok` is there after a restart, all of it. A batch that was in flight when
///   the process died is there entirely or not at all, never in part; one that had not
///   started is not there. redb writes every commit to the inactive one of two
///   checksummed commit slots and only then switches to it, so the file always holds
///   the last complete commit. `tests/redb_crash.rs` kills a writer process with
///   SIGKILL in the middle of its commits and checks exactly this.
/// * **Power loss or kernel crash.** The same, to the extent that the disk honours
///   `fsync`: a commit that returned `Ok` was flushed; one in flight is recognised by
///   its checksum as torn and the previous commit is used.
/// * **Reopening after a crash** makes redb repair the file: it walks the whole
///   database to rebuild its allocator state, in time proportional to the database's
///   size. Nothing committed is lost by the repair.
///
/// Group commit is what makes this affordable: the provider turns everything that
/// happened since its last `poll_output` into one batch, so one `fsync` covers many
/// messages (see `benches/store.rs` for the cost per batch size).
///
/// # Failures
///
/// Every redb error becomes a [`StoreError`] naming the file and the step that failed,
/// and `commit` returns `Err`:
///
/// * an error while the batch is applied, or a failed write while it is committed: the
///   transaction is aborted and **nothing** was applied (redb writes the record that
///   makes a commit current last);
/// * a failed final flush (`fsync`): redb can no longer tell whether the batch became
///   durable, so the file holds it **entirely or not at all**, never in part.
///
/// Either way the store then closes the database and reopens it (which repairs it) on
/// the next call, and [`Store::load`] reports what the file really holds. That is what
/// the provider does after a failed commit: it drops the outputs that depended on the
/// batch, so nothing is acknowledged that was not stored, and reloads.
pub struct RedbStore {
    path: PathBuf,
    opener: Opener,
    /// `None` after a failed commit: reopened (and so repaired) on next use.
    db: Option<Database>,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("open", &self.db.is_some())
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// The on-disk format this build reads and writes: the table layout above, with
    /// keys and values as the provider encodes them (SPEC.md 16.12).
    pub const FORMAT_VERSION: u64 = 1;

    /// Opens the store in the file at `path`, creating the file (and the store in it)
    /// if it does not exist. The file is locked against other processes while the
    /// store is open. After a crash, opening repairs the file (see "Durability"
    /// above).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RedbOpenError> {
        let path = path.as_ref().to_path_buf();
        let file = path.clone();
        Self::with_opener(path, Box::new(move || Builder::new().create(&file)))
    }

    fn with_opener(path: PathBuf, opener: Opener) -> Result<Self, RedbOpenError> {
        let db = connect(&path, &opener)?;
        Ok(Self {
            path,
            opener,
            db: Some(db),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database, reopening it if a failed commit closed it.
    fn db(&mut self) -> Result<&Database, StoreError> {
        if self.db.is_none() {
            self.db = Some(connect(&self.path, &self.opener)?);
        }
        self.db
            .as_ref()
            .ok_or_else(|| error(&self.path, "open", "database not open"))
    }

    /// One write transaction for all of `ops`; aborted (by drop) on any error before
    /// the commit.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| step("begin write", e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| step("set durability", e))?;
        {
            // In key order, table by table: each B-tree page is visited once in turn
            // (about a fifth less CPU than arrival order for a batch of 1024 stores and
            // acks). The sort is stable, so the writes to one key keep their order, and
            // only the last of them is applied: it alone decides the outcome, which is
            // that of `ops` in order. (A provider rewrites its sequence counters with
            // every item it stores, so this saves about a quarter of the B-tree writes
            // under load.)
            let mut order: Vec<&StoreOp> = ops.iter().collect();
            order.sort_by(|a, b| target(a).cmp(&target(b)));
            let mut open: Option<(Table, BytesTable<'_>)> = None;
            let mut order = order.into_iter().peekable();
            while let Some(op) = order.next() {
                if order.peek().is_some_and(|next| target(next) == target(op)) {
                    continue; // overwritten later in this batch
                }
                let (table, _) = target(op);
                if open.as_ref().is_none_or(|(t, _)| *t != table) {
                    let t = tx
                        .open_table(definition(table))
                        .map_err(|e| step(table.name(), e))?;
                    open = Some((table, t)); // closes the previous table
                }
                let Some((_, t)) = open.as_mut() else {
                    return Err(step(table.name(), "table not open"));
                };
                match op {
                    StoreOp::Put { key, value, .. } => {
                        t.insert(key.as_ref(), value.as_ref())
                            .map_err(|e| step("insert", e))?;
                    }
                    StoreOp::Delete { key, .. } => {
                        t.remove(key.as_ref()).map_err(|e| step("remove", e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| step("commit", e))
    }
}

/// The table and key an op writes.
fn target(op: &StoreOp) -> (Table, &[u8]) {
    match op {
        StoreOp::Put { table, key, .. } | StoreOp::Delete { table, key } => (*table, key),
    }
}

/// A `StoreError` without the path (added by the caller).
fn step(step: &str, e: impl fmt::Display) -> StoreError {
    StoreError(format!("{step}: {e}"))
}

/// A `StoreError` naming the file and the step that failed.
fn error(path: &Path, step: &str, e: impl fmt::Display) -> StoreError {
    StoreError(format!("redb store {}: {step}: {e}", path.display()))
}

/// Opens the database and checks (or, for a new file, writes) the format record.
fn connect(path: &Path, opener: &Opener) -> Result<Database, RedbOpenError> {
    let fail = |e: &dyn fmt::Display| RedbOpenError::Database {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let db = opener().map_err(|e| fail(&e))?;
    let tx = db.begin_read().map_err(|e| fail(&e))?;
    let found = match tx.open_table(FORMAT_TABLE) {
        Ok(t) => t.get(FORMAT_KEY).map_err(|e| fail(&e))?.map(|v| v.value()),
        Err(TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(fail(&e)),
    };
    let has_tables = tx.list_tables().map_err(|e| fail(&e))?.next().is_some();
    drop(tx);
    match found {
        Some(v) if v == RedbStore::FORMAT_VERSION => Ok(db),
        Some(found) => Err(RedbOpenError::UnknownFormat {
            path: path.to_path_buf(),
            found,
            supported: RedbStore::FORMAT_VERSION,
        }),
        None if has_tables => Err(RedbOpenError::NotAStore {
            path: path.to_path_buf(),
        }),
        None => {
            // A new store: the format record and every table, durably.
            let mut tx = db.begin_write().map_err(|e| fail(&e))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| fail(&e))?;
            {
                let mut f = tx.open_table(FORMAT_TABLE).map_err(|e| fail(&e))?;
                f.insert(FORMAT_KEY, RedbStore::FORMAT_VERSION)
                    .map_err(|e| fail(&e))?;
                for &t in Table::ALL {
                    tx.open_table(definition(t)).map_err(|e| fail(&e))?;
                }
            }
            tx.commit().map_err(|e| fail(&e))?;
            Ok(db)
        }
    }
}

impl Store for RedbStore {
    /// Every table, each with its entries in key order (a table that was never written
    /// is present and empty).
    fn load(&mut self) -> Result<Contents, StoreError> {
        self.db()?;
        let path = self.path.as_path();
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| error(path, "load", "not open"))?;
        let tx = db.begin_read().map_err(|e| error(path, "begin read", e))?;
        let mut contents = Contents::new();
        for &table in Table::ALL {
            let mut entries = BTreeMap::new();
            match tx.open_table(definition(table)) {
                Ok(t) => {
                    let iter = t.iter().map_err(|e| error(path, table.name(), e))?;
                    for entry in iter {
                        let (k, v) = entry.map_err(|e| error(path, table.name(), e))?;
                        entries.insert(
                            Bytes::copy_from_slice(k.value()),
                            Bytes::copy_from_slice(v.value()),
                        );
                    }
                }
                // A table added after the file was created: empty until the first
                // commit to it creates it.
                Err(TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(error(path, table.name(), e)),
            }
            contents.insert(table, entries);
        }
        Ok(contents)
    }

    /// All of `ops` in one write transaction, flushed to disk before this returns.
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.apply(ops).map_err(|e| {
            // Whatever failed, start afresh: after a failed commit redb refuses new
            // writes until the file is reopened (and repaired).
            self.db = None;
            error(&self.path, &format!("commit of {} ops", ops.len()), e.0)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use ::redb::StorageBackend;

    use super::*;
    use crate::store::MemoryStore;

    use crate::store::testing::{delete, non_empty, put};

    #[test]
    fn puts_and_deletes_survive_reopen_and_match_the_memory_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let batches = vec![
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
                put(Table::Prekeys, b"p", b"old"),
                put(Table::Users, b"zed@one.example", b"z"),
                put(Table::Prekeys, b"p", b"new"),
                delete(Table::Dedup, b"d"),
                put(Table::Dedup, b"d", b"kept"), // delete, then put: kept
                put(Table::Dedup, b"a", b"first key"),
            ],
            vec![
                // Runs of writes to one key: only the last counts.
                put(Table::Meta, b"seq", b"1"),
                put(Table::Mailbox, b"bob\x00\x03", b"m3"),
                put(Table::Meta, b"seq", b"2"),
                put(Table::Meta, b"seq", b"3"),
                put(Table::Mailbox, b"bob\x00\x04", b"m4"),
                delete(Table::Mailbox, b"bob\x00\x04"), // stored and acknowledged at once
                put(Table::Mailbox, b"bob\x00\x05", b"m5"),
                delete(Table::Mailbox, b"bob\x00\x05"),
                put(Table::Mailbox, b"bob\x00\x05", b"m5 again"),
                delete(Table::Dedup, b"a"),
                put(Table::Dedup, b"a", b"again"),
                delete(Table::Dedup, b"a"),
            ],
        ];
        let mut memory = MemoryStore::new();
        {
            let mut store = RedbStore::open(&path).unwrap();
            assert!(store.load().unwrap().values().all(BTreeMap::is_empty));
            for b in &batches {
                store.commit(b).unwrap();
                memory.commit(b).unwrap();
            }
            store.commit(&[]).unwrap();
            assert_eq!(
                non_empty(store.load().unwrap()),
                non_empty(memory.load().unwrap())
            );
        }
        let mut store = RedbStore::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), Table::ALL.len(), "every table is listed");
        assert_eq!(non_empty(loaded.clone()), non_empty(memory.load().unwrap()));
        assert_eq!(
            loaded[&Table::Users][&b"alice@one.example"[..]],
            Bytes::from_static(b"list 2")
        );
        assert_eq!(loaded[&Table::Mailbox].len(), 3);
        assert_eq!(loaded[&Table::Meta][&b"seq"[..]], Bytes::from_static(b"3"));
        assert!(loaded[&Table::OneTime].is_empty());
        assert_eq!(loaded[&Table::Meta][&b""[..]], Bytes::new());
        assert_eq!(store.path(), path);
    }

    #[test]
    fn unknown_formats_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();

        let path = dir.path().join("future.redb");
        drop(RedbStore::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(FORMAT_TABLE)
                .unwrap()
                .insert(FORMAT_KEY, 99)
                .unwrap();
            tx.commit().unwrap();
        }
        let e = RedbStore::open(&path).unwrap_err();
        assert!(
            matches!(
                e,
                RedbOpenError::UnknownFormat {
                    found: 99,
                    supported: RedbStore::FORMAT_VERSION,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("format version 99"), "{e}");

        let path = dir.path().join("foreign.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(TableDefinition::<u64, u64>::new("theirs"))
                .unwrap()
                .insert(1, 2)
                .unwrap();
            tx.commit().unwrap();
        }
        let e = RedbStore::open(&path).unwrap_err();
        assert!(matches!(e, RedbOpenError::NotAStore { .. }), "{e}");

        let path = dir.path().join("garbage.redb");
        std::fs::write(&path, [0xa5; 8192]).unwrap();
        let e = RedbStore::open(&path).unwrap_err();
        assert!(matches!(e, RedbOpenError::Database { .. }), "{e}");
        assert!(StoreError::from(e).0.contains("garbage.redb"));
    }

    #[test]
    fn the_format_table_name_is_no_table_name() {
        use ::redb::TableHandle as _;
        for t in Table::ALL {
            assert_ne!(t.name(), FORMAT_TABLE.name());
        }
    }

    #[test]
    fn a_locked_file_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let _held = RedbStore::open(&path).unwrap();
        let e = RedbStore::open(&path).unwrap_err();
        assert!(e.to_string().contains("store.redb"), "{e}");
    }

    /// A storage backend over shared memory (so a "reopened" database sees what the
    /// "crashed" one wrote) that fails on demand, the way a full or failing disk does.
    #[derive(Debug, Default)]
    struct Disk {
        bytes: Mutex<Vec<u8>>,
        /// Writes left before every further write fails.
        writes_left: AtomicU64,
        fail_sync: AtomicBool,
    }

    impl Disk {
        fn new() -> Arc<Self> {
            let d = Arc::new(Disk::default());
            d.heal();
            d
        }

        fn heal(&self) {
            self.writes_left.store(u64::MAX, Ordering::SeqCst);
            self.fail_sync.store(false, Ordering::SeqCst);
        }
    }

    #[derive(Debug)]
    struct FlakyBackend(Arc<Disk>);

    fn broken() -> io::Error {
        io::Error::other("injected I/O failure")
    }

    impl StorageBackend for FlakyBackend {
        fn len(&self) -> Result<u64, io::Error> {
            Ok(self.0.bytes.lock().unwrap().len() as u64)
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            let b = self.0.bytes.lock().unwrap();
            let start = usize::try_from(offset).unwrap();
            let src = b
                .get(start..start + out.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "out of range"))?;
            out.copy_from_slice(src);
            Ok(())
        }

        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            let mut b = self.0.bytes.lock().unwrap();
            b.resize(usize::try_from(len).unwrap(), 0);
            Ok(())
        }

        fn sync_data(&self) -> Result<(), io::Error> {
            if self.0.fail_sync.load(Ordering::SeqCst) {
                return Err(broken());
            }
            Ok(())
        }

        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            let left = self.0.writes_left.load(Ordering::SeqCst);
            if left == 0 {
                return Err(broken());
            }
            self.0.writes_left.store(left - 1, Ordering::SeqCst);
            let mut b = self.0.bytes.lock().unwrap();
            let start = usize::try_from(offset).unwrap();
            if b.len() < start + data.len() {
                b.resize(start + data.len(), 0);
            }
            b[start..start + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn flaky_store(disk: &Arc<Disk>) -> RedbStore {
        let d = disk.clone();
        RedbStore::with_opener(
            PathBuf::from("flaky-disk"),
            Box::new(move || Builder::new().create_with_backend(FlakyBackend(d.clone()))),
        )
        .unwrap()
    }

    /// Batch `n`: `items` mailbox puts, one marker in Meta, and in Outbound the delete
    /// of the marker of `prev` (the last batch stored) and a marker for `n` (so deletes
    /// are part of the batch).
    fn batch(n: u64, prev: Option<u64>, items: u64) -> Vec<StoreOp> {
        let mut ops: Vec<StoreOp> = (0..items)
            .map(|i| {
                let key = [n.to_be_bytes(), i.to_be_bytes()].concat();
                put(Table::Mailbox, &key, &[n as u8; 300])
            })
            .collect();
        ops.push(put(Table::Meta, &n.to_be_bytes(), b"done"));
        if let Some(p) = prev {
            ops.push(delete(Table::Outbound, &p.to_be_bytes()));
        }
        ops.push(put(Table::Outbound, &n.to_be_bytes(), b"latest"));
        ops
    }

    /// Which batches `contents` holds; fails unless each is there entirely or not at all.
    fn batches_present(contents: &Contents, items: u64, upto: u64) -> Vec<u64> {
        let mut present = Vec::new();
        for n in 0..=upto {
            let mail = contents[&Table::Mailbox]
                .keys()
                .filter(|k| k.starts_with(&n.to_be_bytes()))
                .count() as u64;
            let meta = contents[&Table::Meta].contains_key(&n.to_be_bytes()[..]);
            let whole = mail == items && meta;
            assert!(whole || (mail == 0 && !meta), "batch {n} is partial");
            if whole {
                present.push(n);
            }
        }
        let latest: Vec<&Bytes> = contents[&Table::Outbound].keys().collect();
        assert_eq!(latest.len(), 1, "exactly one latest marker");
        assert_eq!(
            latest[0][..],
            present.last().unwrap().to_be_bytes(),
            "the marker names the last batch present"
        );
        present
    }

    /// Failures injected at every write of a commit: `commit` says `Err`, the store
    /// reopens and holds every earlier batch and nothing of the failed one. A failed
    /// flush (after the last write) leaves the batch entirely or not at all.
    #[test]
    fn a_failed_commit_applies_nothing_or_everything_never_part() {
        // 2000 items (600 KB) span many pages, so a commit makes many writes.
        for items in [3u64, 2000] {
            let disk = Disk::new();
            let mut store = flaky_store(&disk);
            store.commit(&batch(0, None, items)).unwrap();
            let mut committed = vec![0];
            let mut next = 1;
            let mut failed = 0;
            for writes_ok in (0..64).chain([100, 1000]) {
                disk.writes_left.store(writes_ok, Ordering::SeqCst);
                let result = store.commit(&batch(next, committed.last().copied(), items));
                disk.heal();
                let present = batches_present(&store.load().unwrap(), items, next);
                let earlier: Vec<u64> = present.iter().copied().filter(|n| *n != next).collect();
                assert_eq!(earlier, committed, "committed batches survive");
                match result {
                    Ok(()) => committed.push(next),
                    Err(e) => {
                        // The commit record is the last write: a failed write means
                        // the batch was not applied.
                        assert!(e.0.contains("flaky-disk"), "{e}");
                        assert!(!present.contains(&next), "failed batch {next} applied");
                        failed += 1;
                    }
                }
                next += 1;
            }
            assert!(failed >= 7, "{failed} commits failed");
            // A failed flush: reported, and the batch is whole or absent.
            disk.fail_sync.store(true, Ordering::SeqCst);
            assert!(
                store
                    .commit(&batch(next, committed.last().copied(), items))
                    .is_err()
            );
            disk.heal();
            let present = batches_present(&store.load().unwrap(), items, next);
            assert!(present.starts_with(&committed));
            // And the store carries on.
            store
                .commit(&batch(next + 1, present.last().copied(), items))
                .unwrap();
            let present = batches_present(&store.load().unwrap(), items, next + 1);
            assert_eq!(present.last(), Some(&(next + 1)));
            // The very first write failing means nothing was written at all.
            disk.writes_left.store(0, Ordering::SeqCst);
            assert!(
                store
                    .commit(&batch(next + 2, Some(next + 1), items))
                    .is_err()
            );
            disk.heal();
            let present = batches_present(&store.load().unwrap(), items, next + 2);
            assert!(!present.contains(&(next + 2)));
        }
    }

    mod provider_restart {
        //! A provider restarted from a reopened `RedbStore` keeps its users and mailbox,
        //! like `provider::tests::restart_keeps_everything_acknowledged` does with a
        //! `MemoryStore`, here across a real close and reopen of the file.

        use rand_chacha::ChaCha20Rng;
        use rand_core::SeedableRng;

        use super::*;
        use crate::address::Domain;
        use crate::envelope::{Content, Text};
        use crate::identity::ProviderKeyPair;
        use crate::protocol::{self, ConnectionId};
        use crate::provider::{Direction, Provider, ProviderConfig, ProviderInput, ProviderOutput};
        use crate::session::Account;
        use crate::session::tests::user;
        use crate::time::UnixMillis;
        use crate::wire::{self, frame::Body};

        const NOW: UnixMillis = UnixMillis(1_760_000_000_000);

        type P = Provider<RedbStore, ChaCha20Rng>;

        fn provider(store: RedbStore, key: &ProviderKeyPair, seed: u8) -> P {
            let key = ProviderKeyPair::from_secret_bytes(&key.secret_bytes());
            let config = ProviderConfig::new(Domain::parse("one.example").unwrap(), key);
            Provider::new(config, store, ChaCha20Rng::from_seed([seed; 32]), NOW).unwrap()
        }

        /// Frames sent on `conn` by everything `p` does until it is idle.
        fn drain(p: &mut P, conn: ConnectionId) -> Vec<Body> {
            let mut frames = Vec::new();
            loop {
                match p.poll_output(NOW) {
                    ProviderOutput::Timeout(_) => return frames,
                    ProviderOutput::Transmit { conn: c, bytes } if c == conn => {
                        frames.push(protocol::decode(&bytes).unwrap());
                    }
                    _ => {}
                }
            }
        }

        fn send(p: &mut P, conn: ConnectionId, body: Body) -> Vec<Body> {
            let bytes = protocol::encode(body);
            p.handle_input(NOW, ProviderInput::Received { conn, bytes });
            drain(p, conn)
        }

        /// The device handshake on `conn`; the frames after `Auth`.
        fn login(p: &mut P, conn: ConnectionId, account: &Account) -> Vec<Body> {
            let binding = Bytes::from_static(b"binding");
            p.handle_input(
                NOW,
                ProviderInput::Connected {
                    conn,
                    direction: Direction::Inbound,
                    binding: binding.clone(),
                },
            );
            let hello_nonce = [7u8; 32];
            let hello = Body::Hello(wire::Hello {
                version: 1,
                nonce: Bytes::copy_from_slice(&hello_nonce),
                role: wire::Role::Device as i32,
                acceptor: p.domain().as_str().to_owned(),
            });
            let Some(Body::Challenge(ch)) = send(p, conn, hello).into_iter().next() else {
                panic!("no challenge");
            };
            let cert = account.device().certificate().encoded().clone();
            let sig = protocol::sign_auth(
                account.device().keys().signing(),
                &ch.nonce,
                &hello_nonce,
                p.domain().as_str(),
                &binding,
                &cert,
            );
            let auth = Body::Auth(wire::Auth {
                who: Some(wire::auth::Who::Device(wire::DeviceAuth {
                    certificate: cert,
                    device_list: Bytes::new(),
                })),
                signature: Bytes::copy_from_slice(&sig.to_bytes()),
            });
            let frames = send(p, conn, auth);
            assert!(
                frames.iter().any(|b| matches!(b, Body::Welcome(_))),
                "{frames:?}"
            );
            frames
        }

        #[test]
        fn a_provider_restarted_from_the_reopened_file_keeps_users_and_mailbox() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("provider.redb");
            let mut rng = ChaCha20Rng::from_seed([5; 32]);
            let key = ProviderKeyPair::generate(&mut rng);
            let mut alice = user(&mut rng, "alice@one.example", 1);
            let mut bob = user(&mut rng, "bob@one.example", 1);
            alice.accounts[0]
                .update_device_list(bob.list.clone())
                .unwrap();
            bob.accounts[0]
                .update_device_list(alice.list.clone())
                .unwrap();
            let text = Content::Text(Text::plain("survive kill -9"));

            let mut p = provider(RedbStore::open(&path).unwrap(), &key, 9);
            p.add_user(alice.list.clone()).unwrap();
            p.add_user(bob.list.clone()).unwrap();
            assert!(drain(&mut p, ConnectionId(0)).is_empty());
            // Alice seals to Bob's device (his bundle handed over directly) and submits
            // while Bob is offline: the acknowledgement means "stored durably".
            let bundle = bob.accounts[0].prekey_bundle(None).unwrap();
            alice.accounts[0]
                .add_bundle(&bundle, NOW, &mut rng)
                .unwrap();
            let sent = alice.accounts[0]
                .encrypt(bob.list.address(), &text, NOW, &mut rng)
                .unwrap();
            login(&mut p, ConnectionId(1), &alice.accounts[0]);
            let submit = Body::Request(wire::Request {
                id: 1,
                body: Some(wire::request::Body::Submit(wire::Submit {
                    envelopes: sent.envelopes.iter().map(|e| e.envelope.clone()).collect(),
                })),
            });
            let frames = send(&mut p, ConnectionId(1), submit);
            assert!(frames.iter().any(|b| matches!(
                b,
                Body::Response(wire::Response {
                    id: 1,
                    body: Some(wire::response::Body::Done(_)),
                })
            )));
            assert_eq!(p.stats().mailbox_items, 1);

            // Stop: the provider and its database are gone; only the file is left.
            let store = p.into_store();
            assert_eq!(store.path(), path);
            drop(store);

            let mut p = provider(RedbStore::open(&path).unwrap(), &key, 10);
            let stats = p.stats();
            assert_eq!((stats.users, stats.mailbox_items), (2, 1));
            // A user that exists is refused again, so the user list really came back.
            assert!(p.add_user(alice.list.clone()).is_err());
            let frames = login(&mut p, ConnectionId(1), &bob.accounts[0]);
            let items: Vec<wire::MailboxItem> = frames
                .into_iter()
                .flat_map(|b| match b {
                    Body::Deliver(d) => d.items,
                    _ => vec![],
                })
                .collect();
            assert_eq!(items.len(), 1);
            let Some(wire::mailbox_item::Item::Envelope(env)) = items[0].item.clone() else {
                panic!("not an envelope: {items:?}");
            };
            let got = bob.accounts[0].decrypt(env, NOW, &mut rng).unwrap();
            assert_eq!(got.content, text);
        }
    }
}
