//! Provider storage behind one small trait (SPEC.md 16.12).
//!
//! A [`Store`] is a set of ordered key-value tables with two operations: load
//! everything (at start) and commit a batch of writes atomically and durably. The
//! provider keeps its working state in memory, turns every change into
//! [`StoreOp`]s, commits each batch before any output that depends on it leaves the
//! state machine, and batches many inputs into one commit (group commit). The store
//! never interprets keys or values.
//!
//! [`MemoryStore`] is the in-memory implementation used by tests and the simulator: its
//! "durable" contents are exactly what commits have made durable, so dropping a
//! provider and rebuilding it from its store is a faithful crash-restart.
//!
//! `RedbStore` (cargo feature `redb`) keeps the tables in one redb database file and
//! makes every commit durable with an `fsync` before it returns.
//!
//! [`LogStore`] (no feature needed) appends every commit to one file as a checksummed
//! record, makes it durable with one `fdatasync`, and rewrites the file as a snapshot
//! of the live entries when most of it is dead (SPEC.md 16.12, "Log store format").

mod log;
#[cfg(feature = "redb")]
mod redb;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

pub use self::log::{LogOpenError, LogStore, LogStoreOptions};
#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub use self::redb::{RedbOpenError, RedbStore};

/// The tables a provider uses. The numbering is part of on-disk formats; never reuse
/// a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Table {
    /// User address -> the user's signed device list.
    Users = 1,
    /// User address ‖ device id -> the device's current signed and ML-KEM prekeys.
    Prekeys = 2,
    /// User address ‖ device id ‖ prekey id -> one unused one-time prekey.
    OneTime = 3,
    /// User address ‖ device id ‖ sequence number -> one mailbox item.
    Mailbox = 4,
    /// Remote domain ‖ sequence number -> one envelope queued for that provider.
    Outbound = 5,
    /// Expiry time ‖ envelope dedup key -> nothing (ordered by expiry; the first layout,
    /// dedup key -> expiry time, is still read).
    Dedup = 6,
    /// Counters (next sequence numbers).
    Meta = 7,
    /// Group id -> the state of a group this provider orders, and its last change.
    Groups = 8,
}

impl Table {
    /// Every table.
    pub const ALL: &'static [Table] = &[
        Table::Users,
        Table::Prekeys,
        Table::OneTime,
        Table::Mailbox,
        Table::Outbound,
        Table::Dedup,
        Table::Meta,
        Table::Groups,
    ];

    /// The table's name (for on-disk stores).
    pub const fn name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::Prekeys => "prekeys",
            Table::OneTime => "one_time",
            Table::Mailbox => "mailbox",
            Table::Outbound => "outbound",
            Table::Dedup => "dedup",
            Table::Meta => "meta",
            Table::Groups => "groups",
        }
    }
}

/// One write.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace.
    Put {
        /// The table.
        table: Table,
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Delete (deleting a missing key is not an error).
    Delete {
        /// The table.
        table: Table,
        /// The key.
        key: Bytes,
    },
}

impl Table {
    /// The table's number (its discriminant), as on-disk formats record it.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The table numbered `n`, if this build knows it (a file written by a newer
    /// version may name tables this one does not have).
    pub fn from_number(n: u8) -> Option<Table> {
        Table::ALL.iter().copied().find(|t| t.number() == n)
    }
}

impl fmt::Debug for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreOp::Put { table, key, value } => write!(
                f,
                "Put({}, {} key bytes, {} value bytes)",
                table.name(),
                key.len(),
                value.len()
            ),
            StoreOp::Delete { table, key } => {
                write!(f, "Delete({}, {} key bytes)", table.name(), key.len())
            }
        }
    }
}

/// A storage failure: the batch was applied entirely or not at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("storage failed: {0}")]
pub struct StoreError(pub String);

/// Everything a store holds, table by table, keys in order.
pub type Contents = BTreeMap<Table, BTreeMap<Bytes, Bytes>>;

/// Durable storage for a provider. See the module documentation.
pub trait Store {
    /// Everything stored, for the provider to rebuild its state at start.
    fn load(&mut self) -> Result<Contents, StoreError>;

    /// Applies `ops` in order, atomically (all or none) and durably: once this returns
    /// `Ok`, the writes survive a crash of the process. On `Err` the batch was applied
    /// entirely or not at all (a disk whose final flush fails cannot say which): the
    /// caller must [`load`](Self::load) again to know, and must not acknowledge anything
    /// that depended on the batch.
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;

    /// [`commit`](Self::commit), taking the batch by value: a store that keeps keys and
    /// values in memory (such as [`LogStore`]'s mirror) keeps these buffers instead of
    /// sharing them, which would cost an allocation for each buffer made from a `Vec`
    /// (`Bytes` shares such a buffer by moving it behind a reference count on its first
    /// clone). Drivers call this one; the default calls `commit`.
    fn commit_owned(&mut self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        self.commit(&ops)
    }
}

/// An in-memory [`Store`]; see the module documentation. Commits can be made to fail
/// on purpose to test that nothing is acknowledged that was not stored.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    tables: Contents,
    fail_next: u32,
    commits: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `n` commits fail (and change nothing).
    pub fn fail_next_commits(&mut self, n: u32) {
        self.fail_next = n;
    }

    /// How many commits succeeded.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Entries in `table`.
    pub fn len(&self, table: Table) -> usize {
        self.tables.get(&table).map_or(0, BTreeMap::len)
    }

    /// Whether every table is empty.
    pub fn is_empty(&self) -> bool {
        self.tables.values().all(BTreeMap::is_empty)
    }

    /// Every stored value, for checks such as "no plaintext at rest".
    pub fn values(&self) -> impl Iterator<Item = &Bytes> + '_ {
        self.tables.values().flat_map(BTreeMap::values)
    }
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Contents, StoreError> {
        Ok(self.tables.clone())
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(StoreError("injected failure".into()));
        }
        for op in ops {
            match op {
                StoreOp::Put { table, key, value } => {
                    self.tables
                        .entry(*table)
                        .or_default()
                        .insert(key.clone(), value.clone());
                }
                StoreOp::Delete { table, key } => {
                    if let Some(t) = self.tables.get_mut(table) {
                        t.remove(key);
                    }
                }
            }
        }
        self.commits += 1;
        Ok(())
    }
}

impl<S: Store + ?Sized> Store for &mut S {
    fn load(&mut self) -> Result<Contents, StoreError> {
        (**self).load()
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        (**self).commit(ops)
    }

    fn commit_owned(&mut self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        (**self).commit_owned(ops)
    }
}

/// A store shared by a provider and the thread that runs its commits (a driver using
/// [`Provider::defer_commits`](crate::provider::Provider::defer_commits)): a handle on one
/// store behind a mutex; clones are handles on the same store.
#[derive(Debug, Default)]
pub struct SharedStore<S>(Arc<Mutex<S>>);

impl<S> Clone for SharedStore<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<S> SharedStore<S> {
    /// Shares `store`.
    pub fn new(store: S) -> Self {
        Self(Arc::new(Mutex::new(store)))
    }

    /// The store, locked (waits while a commit runs). A thread that panicked while
    /// holding it left the store as its own error handling did: the lock is taken anyway.
    pub fn lock(&self) -> MutexGuard<'_, S> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store, if this is the last handle on it; otherwise the handle back.
    pub fn into_inner(self) -> Result<S, Self> {
        match Arc::try_unwrap(self.0) {
            Ok(m) => Ok(m
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)),
            Err(arc) => Err(Self(arc)),
        }
    }
}

impl<S: Store> Store for SharedStore<S> {
    fn load(&mut self) -> Result<Contents, StoreError> {
        self.lock().load()
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.lock().commit(ops)
    }

    fn commit_owned(&mut self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        self.lock().commit_owned(ops)
    }
}

/// Helpers the stores' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A put of byte-slice key and value.
    pub(crate) fn put(table: Table, key: &[u8], value: &[u8]) -> StoreOp {
        StoreOp::Put {
            table,
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        }
    }

    /// A delete of a byte-slice key.
    pub(crate) fn delete(table: Table, key: &[u8]) -> StoreOp {
        StoreOp::Delete {
            table,
            key: Bytes::copy_from_slice(key),
        }
    }

    /// `contents` without its empty tables (a `MemoryStore` lists only tables it wrote).
    pub(crate) fn non_empty(contents: Contents) -> Contents {
        contents
            .into_iter()
            .filter(|(_, t)| !t.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_apply_in_order_and_failures_change_nothing() {
        let mut s = MemoryStore::new();
        let k = Bytes::from_static(b"k");
        let put = |v: &'static [u8]| StoreOp::Put {
            table: Table::Meta,
            key: k.clone(),
            value: Bytes::from_static(v),
        };
        s.commit(&[put(b"1"), put(b"2")]).unwrap();
        assert_eq!(
            s.load().unwrap()[&Table::Meta][&k],
            Bytes::from_static(b"2")
        );
        s.fail_next_commits(1);
        assert!(
            s.commit(&[StoreOp::Delete {
                table: Table::Meta,
                key: k.clone()
            }])
            .is_err()
        );
        assert_eq!(s.len(Table::Meta), 1);
        s.commit(&[StoreOp::Delete {
            table: Table::Meta,
            key: k.clone(),
        }])
        .unwrap();
        assert!(s.is_empty());
        assert_eq!(s.commits(), 2);
    }
}
