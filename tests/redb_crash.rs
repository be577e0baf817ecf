//! `RedbStore` and `LogStore` under `kill -9`: a child process commits batches in a loop, saying
//! `begin N` before each `commit` and `committed N` after it returned; the parent kills
//! it with SIGKILL (`Child::kill`) a little after a report, reopens the database and
//! checks that every batch reported committed is there in full, that the batch in
//! flight is there in full or not at all, and that nothing else is there. Several rounds
//! on the same file, each killing at a different point of a commit, so the store is also
//! reopened (and repaired, or its torn tail cut away) after each kill and written again.
//!
//! The child is this test binary itself, re-run with a filter that selects
//! [`crash_child`] and environment variables that tell it which store to open where.
#![cfg(feature = "redb")]
// A test's fixture failing must stop the test.
#![allow(clippy::expect_used, clippy::panic)]
// The parent waits in wall-clock time for the child to get going.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kogge::store::{Contents, LogStore, RedbStore, Store, StoreOp, Table};

/// Set in the child's environment: the database file to write.
const CHILD_ENV: &str = "KOGGE_REDB_CRASH_CHILD";
/// Set in the child's environment: `redb` or `log`.
const ENGINE_ENV: &str = "KOGGE_CRASH_ENGINE";
/// Printed by the child before each commit starts.
const BEGIN: &str = "begin ";
/// Printed by the child after each commit returned `Ok`.
const COMMITTED: &str = "committed ";
const VALUE_LEN: usize = 300;
/// Rounds of start, write, kill, check.
const ROUNDS: u64 = 8;

/// Mailbox items in batch `n`: 1 to 200, so batches span one page or many.
fn items(n: u64) -> u64 {
    1 + (n * 37) % 200
}

fn item_key(n: u64, i: u64) -> Bytes {
    Bytes::from([n.to_be_bytes(), i.to_be_bytes()].concat())
}

fn item_value(n: u64, i: u64) -> Bytes {
    let mut v = vec![0u8; VALUE_LEN];
    v[..8].copy_from_slice(&n.to_be_bytes());
    v[8..16].copy_from_slice(&i.to_be_bytes());
    Bytes::from(v)
}

/// Batch `n` after batch `n - 1`: its mailbox items, a record in Meta, and in Outbound
/// the previous batch's marker deleted and its own put, so that a batch is puts and
/// deletes in several tables.
fn batch(n: u64) -> Vec<StoreOp> {
    let mut ops: Vec<StoreOp> = (0..items(n))
        .map(|i| StoreOp::Put {
            table: Table::Mailbox,
            key: item_key(n, i),
            value: item_value(n, i),
        })
        .collect();
    ops.push(StoreOp::Put {
        table: Table::Meta,
        key: Bytes::copy_from_slice(&n.to_be_bytes()),
        value: Bytes::copy_from_slice(&items(n).to_be_bytes()),
    });
    if n > 0 {
        ops.push(StoreOp::Delete {
            table: Table::Outbound,
            key: Bytes::copy_from_slice(&(n - 1).to_be_bytes()),
        });
    }
    ops.push(StoreOp::Put {
        table: Table::Outbound,
        key: Bytes::copy_from_slice(&n.to_be_bytes()),
        value: Bytes::from_static(b"latest"),
    });
    ops
}

/// The batches `contents` holds, `0..=last`, after checking that each one is complete
/// and correct and that nothing else is there. `None` for an empty store.
fn check(contents: &Contents) -> Option<u64> {
    let outbound = &contents[&Table::Outbound];
    if outbound.is_empty() {
        assert!(contents.values().all(BTreeMap::is_empty), "stray records");
        return None;
    }
    assert_eq!(
        outbound.len(),
        1,
        "one latest marker, not {}",
        outbound.len()
    );
    let (marker, _) = outbound.iter().next().expect("one marker");
    let last = u64::from_be_bytes(marker[..].try_into().expect("8-byte marker"));
    let meta = &contents[&Table::Meta];
    let mailbox = &contents[&Table::Mailbox];
    assert_eq!(
        meta.len() as u64,
        last + 1,
        "a Meta record per batch 0..={last}"
    );
    let mut expected_items = 0;
    for n in 0..=last {
        let count = meta
            .get(&n.to_be_bytes()[..])
            .unwrap_or_else(|| panic!("batch {n} (before the latest, {last}) is missing"));
        assert_eq!(count[..], items(n).to_be_bytes());
        for i in 0..items(n) {
            let v = mailbox
                .get(&item_key(n, i))
                .unwrap_or_else(|| panic!("batch {n} is partial: item {i} missing"));
            assert_eq!(*v, item_value(n, i), "batch {n} item {i} corrupted");
        }
        expected_items += items(n);
    }
    assert_eq!(
        mailbox.len() as u64,
        expected_items,
        "items of a batch after {last} are present: a partial batch"
    );
    Some(last)
}

/// The child: reopens the store, then commits batch after batch and reports each.
/// Runs only when the parent started it (otherwise it is an empty test that passes).
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let engine = std::env::var(ENGINE_ENV).expect("engine");
    let mut store = open(&engine, Path::new(&path));
    let contents = store.load().expect("child loads the store");
    let mut next = check(&contents).map_or(0, |last| last + 1);
    let mut out = std::io::stdout().lock();
    loop {
        let ops = batch(next);
        writeln!(out, "{BEGIN}{next}").expect("report");
        out.flush().expect("flush report");
        store.commit(&ops).expect("commit");
        // Written straight to the pipe (libtest does not capture `io::stdout()`).
        writeln!(out, "{COMMITTED}{next}").expect("report");
        out.flush().expect("flush report");
        next += 1;
    }
}

/// What the child said in one line of its output. The first line follows libtest's
/// `test crash_child ... ` on the same line.
enum Report {
    Begin(u64),
    Committed(u64),
}

fn report(line: &str) -> Option<Report> {
    let number = |n: &str| n.trim().parse().expect("batch number");
    if let Some((_, n)) = line.split_once(COMMITTED) {
        Some(Report::Committed(number(n)))
    } else {
        line.split_once(BEGIN)
            .map(|(_, n)| Report::Begin(number(n)))
    }
}

/// What the child reported before it was killed.
struct Reported {
    /// Batches whose `commit` returned `Ok`, in order.
    committed: Vec<u64>,
    /// The last batch whose `commit` had started.
    begun: Option<u64>,
}

/// Starts the child on `path`, lets it commit until it has reported `kill_after`
/// batches, waits `jitter` more, kills it with SIGKILL, and returns what it reported.
fn run_child_and_kill(engine: &str, path: &Path, kill_after: usize, jitter: Duration) -> Reported {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .env(ENGINE_ENV, engine)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut reported = Reported {
        committed: Vec::new(),
        begun: None,
    };
    let mut note = |line: std::io::Result<String>| match report(&line.expect("child output")) {
        Some(Report::Committed(n)) => reported.committed.push(n),
        Some(Report::Begin(n)) => reported.begun = Some(n),
        None => {}
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while seen < kill_after {
        assert!(Instant::now() < deadline, "child too slow");
        let Some(line) = lines.next() else {
            panic!("child exited early: {:?}", child.wait());
        };
        seen += usize::from(line.as_ref().is_ok_and(|l| l.contains(COMMITTED)));
        note(line);
    }
    // Somewhere in the next commit, or between two.
    std::thread::sleep(jitter);
    // SIGKILL, in the middle of whatever commit the child is in.
    child.kill().expect("kill child");
    let status = child.wait().expect("reap child");
    assert!(!status.success(), "the child was killed, not finished");
    // What it reported before it died (still in the pipe) counts too.
    for line in lines {
        note(line);
    }
    reported
}

/// The store `engine` names, on `path`.
fn open(engine: &str, path: &Path) -> Box<dyn Store> {
    match engine {
        "redb" => Box::new(RedbStore::open(path).expect("open the redb store")),
        "log" => Box::new(LogStore::open(path).expect("open the log store")),
        _ => panic!("unknown engine {engine}"),
    }
}

#[test]
fn kill_9_loses_no_committed_batch_and_leaves_no_partial_one() {
    kill_9("redb");
}

#[test]
fn kill_9_loses_no_committed_log_batch_and_leaves_no_partial_one() {
    kill_9("log");
}

fn kill_9(engine: &str) {
    // On the build's file system (a real disk), not a /tmp that may be a RAM disk.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let path = dir.path().join(format!("crash.{engine}"));
    let mut total = 0;
    let mut mid_commit = 0;
    for round in 0..ROUNDS {
        let jitter = Duration::from_micros(90 * round);
        let reported = run_child_and_kill(engine, &path, 30 + 10 * round as usize, jitter);
        let committed = &reported.committed;
        let first = *committed.first().expect("the child committed something");
        assert_eq!(
            first, total,
            "the child resumed after the last batch stored"
        );
        assert!(
            committed.windows(2).all(|w| w[1] == w[0] + 1),
            "reports in order"
        );
        let last_reported = *committed.last().expect("reports");
        let mut store = open(engine, &path);
        let last = check(&store.load().expect("load after kill -9")).expect("batches stored");
        // check() verified that 0..=last are there in full and nothing else is: every
        // reported batch is there, and at most the one that was in flight besides.
        let in_flight = reported.begun.filter(|b| *b > last_reported);
        assert!(
            last == last_reported || Some(last) == in_flight,
            "round {round}: reported up to {last_reported}, in flight {in_flight:?}, stored up to {last}"
        );
        let fate = match in_flight {
            Some(b) if b == last => format!("killed inside commit {b}, which is there in full"),
            Some(b) => format!("killed inside commit {b}, which is not there at all"),
            None => "killed between commits".to_owned(),
        };
        mid_commit += usize::from(in_flight.is_some());
        eprintln!(
            "{engine} round {round}: child reported {first}..={last_reported}; store holds 0..={last}; {fate}"
        );
        total = last + 1;
    }
    // The child spends nearly all its time inside `commit` (the fsync): kills land there.
    assert!(mid_commit > 0, "no kill landed inside a commit");
}
