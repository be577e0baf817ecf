//! Store benchmarks: what one durable commit costs, and so what one durably stored
//! message costs with group commit.
//!
//! `cargo bench --features redb --bench store` (the bench needs the `redb` feature).
//! Every group runs once per engine: `redb_…` on `RedbStore`, `log_…` on `LogStore`.
//!
//! * `redb_commit/N`, `log_commit/N`: one `commit` of N mailbox puts (keys shaped like the
//!   provider's: address ‖ device ‖ sequence number, spread over 1000 mailboxes;
//!   300-byte values), N = 1, 64, 1024. Every commit is one write transaction and one
//!   `fsync` (redb), or one appended record and one `fdatasync` (log). Criterion's
//!   throughput line is messages per second.
//! * `redb_put_ack/N`, `log_put_ack/N`: N puts plus the N deletes of the previous batch's messages (a
//!   provider that stores and acknowledges at the same rate, so the live data stays
//!   small; the log is compacted as it goes, at its default thresholds).
//!
//! The database lives under `target/tmp` (the same file system as the build), not in
//! `/tmp`, which may be a RAM disk where `fsync` costs nothing.

// A benchmark whose fixture cannot be built must stop loudly; there is no caller to report to.
#![allow(clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kogge::store::{LogStore, RedbStore, Store, StoreOp, Table};

/// Bytes in one stored mailbox item.
const VALUE_LEN: usize = 300;
/// Mailboxes the messages are spread over.
const MAILBOXES: u64 = 1000;

fn key(seq: u64) -> Bytes {
    let user = seq % MAILBOXES;
    let mut k = format!("user{user}@one.example").into_bytes();
    k.push(0);
    k.extend_from_slice(&(user * 7 + 1).to_be_bytes()); // device id
    k.extend_from_slice(&seq.to_be_bytes());
    Bytes::from(k)
}

fn value(seq: u64) -> Bytes {
    // Not compressible, not all equal: a cheap xorshift stream seeded by the sequence.
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(VALUE_LEN);
    while v.len() < VALUE_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(VALUE_LEN);
    Bytes::from(v)
}

fn puts(first: u64, n: usize) -> Vec<StoreOp> {
    (first..first + n as u64)
        .map(|seq| StoreOp::Put {
            table: Table::Mailbox,
            key: key(seq),
            value: value(seq),
        })
        .collect()
}

/// A fresh store of `engine` (`redb` or `log`) in `dir`.
fn open(dir: &tempfile::TempDir, engine: &str, name: &str) -> Box<dyn Store> {
    let path = dir.path().join(format!("{name}.{engine}"));
    match engine {
        "redb" => Box::new(RedbStore::open(path).expect("open the bench database")),
        _ => Box::new(LogStore::open(path).expect("open the bench log")),
    }
}

fn commit(c: &mut Criterion) {
    for engine in ["redb", "log"] {
        commit_with(c, engine);
    }
}

fn commit_with(c: &mut Criterion, engine: &str) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let mut group = c.benchmark_group(format!("{engine}_commit"));
    for n in [1usize, 64, 1024] {
        let mut store = open(&dir, engine, &format!("commit-{n}"));
        let mut next = 0u64;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || {
                    let ops = puts(next, n);
                    next += n as u64;
                    ops
                },
                |ops| store.commit(black_box(&ops)).expect("commit"),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();

    let mut group = c.benchmark_group(format!("{engine}_put_ack"));
    for n in [1usize, 64, 1024] {
        let mut store = open(&dir, engine, &format!("put-ack-{n}"));
        let mut next = 0u64;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || {
                    let mut ops = puts(next, n);
                    let acked = next.saturating_sub(n as u64)..next;
                    ops.extend(acked.map(|seq| StoreOp::Delete {
                        table: Table::Mailbox,
                        key: key(seq),
                    }));
                    next += n as u64;
                    ops
                },
                |ops| store.commit(black_box(&ops)).expect("commit"),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
