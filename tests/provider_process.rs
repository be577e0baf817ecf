//! The real `kogge-provider` binary, as separate processes on loopback.
//!
//! * `kill -9` under load: two providers (each `init`ed into its own temporary folder),
//!   a sender on one.example sending [`N`] messages as fast as its client accepts them to
//!   a recipient on two.example whose device is offline. two.example is killed with
//!   SIGKILL (`Child::kill`) while the messages flow, then restarted from the same data
//!   folder. Every message must end `DeliveredToProvider` at the sender, and once the
//!   recipient device comes online every one must arrive exactly once.
//! * The interop echo bot answers, and keeps its identity and sessions across a restart.
//!
//! Every wait is bounded ([`WAIT`]) and fails with what it was waiting for; a failing
//! test prints the tail of every provider's log.
#![cfg(all(feature = "quic", feature = "redb", feature = "provider-bin"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The test measures and bounds its waits in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kogge::address::{Address, Domain};
use kogge::client::{Client, ClientConfig, ClientError, ClientEvent};
use kogge::envelope::{Content, MessageId, Text};
use kogge::identity::{Device, DeviceKeyPair, DeviceList, IdentityKeyPair, ProviderKey};
use kogge::protocol::Backoff;
use kogge::resolve::StaticDirectory;
use kogge::session::Account;
use kogge::store::{LogStore, RedbStore, Store, Table};
use kogge::transport::quic::{self, ClientDriver, ClientDriverConfig, DriverEvent};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::mpsc::Receiver;

const BIN: &str = env!("CARGO_BIN_EXE_kogge-provider");
/// Messages sent under load.
const N: usize = 300;
/// The bound on every wait.
const WAIT: Duration = Duration::from_secs(60);
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
const FAST: Backoff = Backoff {
    initial_ms: 50,
    max_ms: 400,
};

type Rng = ChaCha20Rng;

/// One provider: its folder (from `kogge-provider init`) and its running process.
struct Provider {
    name: &'static str,
    dir: PathBuf,
    addr: SocketAddr,
    domain: Domain,
    key: ProviderKey,
    line: String,
    child: Option<Child>,
    /// Log files, one per start.
    logs: Vec<PathBuf>,
}

impl Provider {
    /// `kogge-provider init` into `root/name`.
    fn init(root: &Path, name: &'static str, port: u16, extra: &[&str]) -> Self {
        let dir = root.join(name);
        let domain = format!("{name}.example");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let out = Command::new(BIN)
            .args(["init", "--domain", &domain, "--listen", &addr.to_string()])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .output()
            .expect("run kogge-provider init");
        assert!(
            out.status.success(),
            "init {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let entry = StaticDirectory::parse(&line)
            .unwrap()
            .entries()
            .next()
            .cloned()
            .expect("init prints a directory line");
        assert_eq!(entry.endpoint, addr.to_string());
        let key_mode = mode(&dir.join("provider.key"));
        assert_eq!(key_mode & 0o077, 0, "provider key file mode {key_mode:o}");
        Self {
            name,
            dir,
            addr,
            domain: entry.domain,
            key: entry.key,
            line,
            child: None,
            logs: Vec::new(),
        }
    }

    /// Adds `other` to this provider's directory file.
    fn add_peer(&self, other: &Provider) {
        let path = self.dir.join("directory.txt");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(&other.line);
        text.push('\n');
        fs::write(path, text).unwrap();
    }

    /// Starts `kogge-provider run` and waits until it serves.
    async fn start(&mut self) {
        assert!(self.child.is_none());
        let log = self
            .dir
            .join(format!("{}-{}.log", self.name, self.logs.len()));
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("kogge-provider.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn kogge-provider run");
        self.child = Some(child);
        self.logs.push(log.clone());
        let started = Instant::now();
        loop {
            if fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("kogge-provider running")
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited at start: {status}", self.name);
            }
            assert!(started.elapsed() < WAIT, "{} did not start", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and reap.
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; the process must stop by itself, gracefully, with status 0.
    async fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < WAIT,
                "{} did not stop on SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{} exited with {status}", self.name);
        let log = fs::read_to_string(self.logs.last().unwrap()).unwrap();
        assert!(
            log.contains("provider stopped"),
            "no graceful stop in the log"
        );
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for log in &self.logs {
                let text = fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- {} (last 40 lines)", log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode()
}

#[cfg(not(unix))]
fn mode(_: &Path) -> u32 {
    0
}

/// Two free UDP ports on 127.0.0.1 (bound together so that they differ, then released).
fn free_ports() -> (u16, u16) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// A device of a new user `local@provider`, pinned to the provider's key.
fn user(rng: &mut Rng, local: &str, provider: &Provider) -> (Address, Client<Rng>) {
    let now = quic::now();
    let address = Address::new(local, &provider.domain).unwrap();
    let identity = IdentityKeyPair::generate(rng);
    let device = Device::new(
        &identity,
        address.clone(),
        DeviceKeyPair::generate(rng),
        now.saturating_sub(YEAR_MS),
        now.saturating_add(YEAR_MS),
    )
    .unwrap();
    let list =
        DeviceList::sign(&identity, &address, 1, now, &[device.certificate().clone()]).unwrap();
    let mut account = Account::new(device, list, now, rng).unwrap();
    account.replenish_prekeys(now, rng);
    let mut config = ClientConfig::new(provider.domain.clone(), provider.key);
    config.backoff = FAST;
    let mut seed = [0u8; 32];
    rand_core::Rng::fill_bytes(rng, &mut seed);
    (
        address,
        Client::new(account, config, Rng::from_seed(seed), now),
    )
}

fn drive(client: Client<Rng>, provider: &Provider) -> (ClientDriver<Rng>, Receiver<DriverEvent>) {
    ClientDriver::start(client, ClientDriverConfig::new(provider.addr)).unwrap()
}

/// Waits (at most [`WAIT`]) for an event that `pick` accepts, skipping others.
async fn wait_for<T>(
    rx: &mut Receiver<DriverEvent>,
    what: &str,
    mut pick: impl FnMut(&DriverEvent) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let e = rx.recv().await.expect("driver stopped");
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

async fn online(rx: &mut Receiver<DriverEvent>, who: &str) {
    wait_for(rx, &format!("{who} online"), |e| {
        matches!(e, DriverEvent::Client(ClientEvent::Online)).then_some(())
    })
    .await
}

fn text(body: &str) -> Content {
    Content::Text(Text::plain(body))
}

/// Sends `body` until the sender's provider stores it: the first message to a new
/// contact needs its prekeys, which its device publishes just after it comes online.
async fn send_stored(
    driver: &ClientDriver<Rng>,
    rx: &mut Receiver<DriverEvent>,
    to: &Address,
    body: &str,
) -> MessageId {
    let started = Instant::now();
    loop {
        let id = driver.send(to.clone(), text(body)).await.unwrap().unwrap();
        let stored = wait_for(rx, &format!("{body:?} stored or refused"), |e| match e {
            DriverEvent::Client(ClientEvent::DeliveredToProvider { message_id })
                if *message_id == id =>
            {
                Some(true)
            }
            DriverEvent::Client(ClientEvent::Undeliverable { message_id, .. })
                if *message_id == id =>
            {
                Some(false)
            }
            _ => None,
        })
        .await;
        if stored {
            return id;
        }
        assert!(started.elapsed() < WAIT, "{body:?} never accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a text message; returns (sender, body, reply_to, message id).
async fn next_text(
    rx: &mut Receiver<DriverEvent>,
    what: &str,
) -> (Address, String, Option<MessageId>, MessageId) {
    wait_for(rx, what, |e| match e {
        DriverEvent::Client(ClientEvent::Message(m)) => match &m.content {
            Content::Text(t) => Some((m.sender.clone(), t.body.clone(), t.reply_to, m.message_id)),
            _ => None,
        },
        _ => None,
    })
    .await
}

/// What the recipient's provider had made durable when it was killed: the number of
/// mailbox items in a copy of its store file, of whichever engine it uses (opening the copy
/// repairs the copy, not the file the provider restarts from).
fn mailbox_items_on_disk(provider: &Provider, scratch: &Path) -> usize {
    let data = provider.dir.join("data");
    let contents = if data.join("provider.klog").exists() {
        let copy = scratch.join("inspect.klog");
        fs::copy(data.join("provider.klog"), &copy).unwrap();
        LogStore::open(&copy).unwrap().load().unwrap()
    } else {
        let copy = scratch.join("inspect.redb");
        fs::copy(data.join("provider.redb"), &copy).unwrap();
        RedbStore::open(&copy).unwrap().load().unwrap()
    };
    contents.get(&Table::Mailbox).map_or(0, |t| t.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_and_duplicates_nothing() {
    let test_start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (p1, p2) = free_ports();
    let mut one = Provider::init(tmp.path(), "one", p1, &["--open-registration"]);
    let mut two = Provider::init(tmp.path(), "two", p2, &["--open-registration"]);
    one.add_peer(&two);
    two.add_peer(&one);
    one.start().await;
    two.start().await;

    let mut rng = Rng::from_seed([7; 32]);
    let (alice, a_client) = user(&mut rng, "alice", &one);
    let (bob, b_client) = user(&mut rng, "bob", &two);
    let (a, mut a_rx) = drive(a_client, &one);
    let (b, mut b_rx) = drive(b_client, &two);
    online(&mut a_rx, "alice").await;
    online(&mut b_rx, "bob").await;

    // A first message sets up the session; then bob's device goes offline.
    let first = send_stored(&a, &mut a_rx, &bob, "m0").await;
    let (from, body, _, id) = next_text(&mut b_rx, "m0 at bob").await;
    assert_eq!((from, body.as_str(), id), (alice.clone(), "m0", first));
    let bob_client = b.shutdown().await.unwrap();

    // Alice sends N messages as fast as her client takes them. When a third of them are
    // stored by one.example (and being relayed), two.example is killed with SIGKILL; it
    // is restarted from its folder while alice keeps sending.
    let bodies: Vec<String> = (1..=N).map(|i| format!("m{i}")).collect();
    let mut ids: Vec<MessageId> = Vec::new();
    let mut index: HashMap<MessageId, usize> = HashMap::new();
    let mut stored: HashSet<MessageId> = HashSet::new();
    let mut busy = 0usize;
    let mut restart_at: Option<Instant> = None;
    let mut restarted = None;
    let mut at_kill = None;
    let sending = Instant::now();
    while stored.len() < N {
        assert!(
            sending.elapsed() < WAIT,
            "only {} of {N} messages stored by one.example after {WAIT:?} ({} sent)",
            stored.len(),
            ids.len()
        );
        let wait = if ids.len() < N {
            match a.send(bob.clone(), text(&bodies[ids.len()])).await.unwrap() {
                Ok(id) => {
                    index.insert(id, ids.len());
                    ids.push(id);
                    Duration::ZERO
                }
                Err(ClientError::Busy { .. }) => {
                    busy += 1;
                    Duration::from_millis(10)
                }
                Err(e) => panic!("send refused: {e}"),
            }
        } else {
            Duration::from_millis(50)
        };
        if let Ok(Some(e)) = tokio::time::timeout(wait, a_rx.recv()).await {
            record(&e, &index, &mut stored);
        }
        while let Ok(e) = a_rx.try_recv() {
            record(&e, &index, &mut stored);
        }
        if at_kill.is_none() && stored.len() >= N / 3 {
            let (sent, acked, t) = (ids.len(), stored.len(), sending.elapsed());
            two.kill9();
            let on_disk = mailbox_items_on_disk(&two, tmp.path());
            at_kill = Some((sent, acked, on_disk, t));
            // two.example comes back a little later, from the same folder.
            restart_at = Some(Instant::now() + Duration::from_millis(300));
        }
        if restart_at.is_some_and(|t| Instant::now() >= t) {
            restart_at = None;
            two.start().await;
            restarted = Some(sending.elapsed());
        }
    }
    let all_stored = sending.elapsed();
    let (sent_at_kill, stored_at_kill, on_disk_at_kill, kill_time) =
        at_kill.expect("two.example was killed");
    assert!(
        stored_at_kill < N,
        "the kill came after one.example had stored everything"
    );
    if on_disk_at_kill == 0 {
        // Only on a very slow machine: then this run tested queueing across the restart,
        // not two.example's durable dedup state.
        eprintln!("note: nothing had reached two.example's disk when it was killed");
    }
    if let Some(at) = restart_at {
        tokio::time::sleep_until(at.into()).await;
        two.start().await;
        restarted = Some(sending.elapsed());
    }
    let restarted = restarted.unwrap();

    // Bob's device comes online: every message exactly once.
    let (b, mut b_rx) = drive(bob_client, &two);
    let mut seen: HashMap<MessageId, usize> = HashMap::new();
    while seen.len() < N {
        let what = format!("{N} messages at bob (got {})", seen.len());
        let (from, body, _, id) = next_text(&mut b_rx, &what).await;
        assert_eq!(from, alice);
        let i = *index
            .get(&id)
            .unwrap_or_else(|| panic!("unexpected message {body:?}"));
        assert_eq!(body, bodies[i]);
        *seen.entry(id).or_default() += 1;
        assert_eq!(seen[&id], 1, "{body:?} arrived twice");
    }
    let all_received = sending.elapsed();
    // Nothing arrives twice later either.
    let late = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match b_rx.recv().await {
                Some(DriverEvent::Client(ClientEvent::Message(m))) => return m.message_id,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(late.is_err(), "a message arrived twice: {late:?}");
    for id in &ids {
        assert!(stored.contains(id) && seen[id] == 1);
    }

    eprintln!(
        "kill -9 under load: {N} messages; at the kill (after {kill_time:?}) alice had sent \
         {sent_at_kill} and one.example had stored {stored_at_kill}, two.example's disk held \
         {on_disk_at_kill} mailbox items; two.example serving again after {restarted:?}; all \
         {N} stored by one.example after {all_stored:?} ({busy} busy retries); all {N} at bob, \
         each exactly once, after {all_received:?}; test took {:?}",
        test_start.elapsed()
    );

    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    one.terminate().await;
    two.terminate().await;
}

/// Counts `DeliveredToProvider` for the messages in `index`; fails on `Undeliverable`.
fn record(e: &DriverEvent, index: &HashMap<MessageId, usize>, stored: &mut HashSet<MessageId>) {
    match e {
        DriverEvent::Client(ClientEvent::DeliveredToProvider { message_id })
            if index.contains_key(message_id) =>
        {
            assert!(
                stored.insert(*message_id),
                "DeliveredToProvider twice for message {}",
                index[message_id] + 1
            );
        }
        DriverEvent::Client(ClientEvent::Undeliverable {
            message_id, reason, ..
        }) if index.contains_key(message_id) => {
            panic!("message {} undeliverable: {reason}", index[message_id] + 1)
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_bot_answers_and_keeps_its_identity_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, _) = free_ports();
    let mut one = Provider::init(tmp.path(), "one", port, &["--echo"]);
    one.start().await;
    let echo = Address::new("echo", &one.domain).unwrap();

    // Interop mode opens registration: alice registers by connecting.
    let mut rng = Rng::from_seed([8; 32]);
    let (alice, a_client) = user(&mut rng, "alice", &one);
    let (a, mut a_rx) = drive(a_client, &one);
    online(&mut a_rx, "alice").await;
    let id = send_stored(&a, &mut a_rx, &echo, "hello").await;
    let (from, body, reply_to, _) = next_text(&mut a_rx, "the echo").await;
    assert_eq!(
        (from, body.as_str(), reply_to),
        (echo.clone(), "echo: hello", Some(id))
    );

    // Its keys and state are the owner's alone.
    let state = one.dir.join("data").join("echo");
    for file in ["storage.key", "account.state"] {
        let m = mode(&state.join(file));
        assert_eq!(m & 0o077, 0, "{file} mode {m:o}");
    }

    // A graceful restart: the bot comes back as the same device, with its sessions.
    one.terminate().await;
    one.start().await;
    let id = send_stored(&a, &mut a_rx, &echo, "again").await;
    let answer = wait_for(&mut a_rx, "the second echo", |e| match e {
        DriverEvent::Client(ClientEvent::IdentityChanged { address, .. }) => {
            panic!("{address} changed its identity")
        }
        DriverEvent::Client(ClientEvent::Message(m)) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(answer.sender, echo);
    assert_eq!(
        answer.content,
        Content::Text(Text {
            media_type: String::new(),
            body: "echo: again".into(),
            reply_to: Some(id),
        })
    );
    assert_eq!(answer.conversation, echo);
    let _ = alice;
    a.shutdown().await.unwrap();
    one.terminate().await;
}
