//! The README's main job: three independent providers federating over QUIC on loopback.
//!
//! Each provider (`one.example`, `two.example`, `three.example`) is its own operating
//! system process (this program started again as `federation provider …`), with its own
//! provider key, its own redb database in its own data directory and its own UDP port. They
//! share nothing but a directory file listing each other's endpoint and key. The users'
//! devices (alice@one, bob@two with a phone and a laptop, carol@three) run in this process,
//! each a `Client` state machine on its own QUIC connection to its provider.
//!
//! The demo shows, step by step: users registering; alice writing to bob and carol and their
//! answers, with end-to-end delivery receipts; a user with two devices (both receive, and
//! each sees what the other sent); safety numbers compared and verified; provider two
//! killed with SIGKILL while messages for it are on the way, then restarted from its disk
//! and every message arriving; the envelopes waiting for bob's laptop altered on provider
//! two's disk while it was down, and each refused by the laptop; a burst of messages; and a
//! summary with counts and latencies.
//!
//! Exits 0 only if every message reached every device it was meant for exactly once, and
//! the altered envelopes were refused.
//!
//! Run: `cargo run --release --example federation` (`KOGGE_SEED=n` varies the keys).
//! The same with the provider and client programs as separate processes:
//! `scripts/federation-processes.sh`.

// An example program, not the core: it reads the clock, starts processes and stops at the
// first broken expectation.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use kogge::address::{Address, Domain};
use kogge::client::{Client, ClientConfig, ClientEvent};
use kogge::crypto::Secret;
use kogge::envelope::{Content, MessageId, Text};
use kogge::group::{GroupAction, GroupId};
use kogge::identity::{
    Device, DeviceKeyPair, DeviceList, IdentityKey, IdentityKeyPair, ProviderKey, ProviderKeyPair,
    SafetyNumber,
};
use kogge::provider::ProviderConfig;
use kogge::resolve::{PeerInfo, StaticDirectory};
use kogge::session::Account;
use kogge::store::{RedbStore, Store, StoreOp, Table};
use kogge::transport::quic::{
    self, ClientDriver, ClientDriverConfig, DriverEvent, ProviderServer, QuicConfig,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng as _, SeedableRng};
use tokio::sync::mpsc;

type Rng = ChaCha20Rng;

/// How long any one step may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages in the burst step.
const BURST: usize = 200;
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
const DOMAINS: [&str; 3] = ["one.example", "two.example", "three.example"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("provider") {
        return provider_process(&args[2..]);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(demo()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("\nFAILED: see the summary above");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("\nFAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// The provider process.

/// `federation provider <domain> <listen> <data-dir> <directory-file>`: serves one provider
/// until its standard input closes (the demo ended) or it is killed.
fn provider_process(args: &[String]) -> ExitCode {
    let [domain, listen, dir, directory] = args else {
        eprintln!("usage: federation provider <domain> <listen> <data-dir> <directory-file>");
        return ExitCode::FAILURE;
    };
    match serve_provider(domain, listen, Path::new(dir), Path::new(directory)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("provider {domain}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_provider(domain: &str, listen: &str, dir: &Path, directory: &Path) -> Result<(), String> {
    let domain = Domain::parse(domain).map_err(|e| e.to_string())?;
    let listen: SocketAddr = listen.parse().map_err(|e| format!("{listen}: {e}"))?;
    let seed: [u8; 32] = fs::read(dir.join("provider.key"))
        .map_err(|e| format!("key file: {e}"))?
        .try_into()
        .map_err(|_| "key file: not 32 bytes".to_string())?;
    let key = ProviderKeyPair::from_secret_bytes(&Secret::new(seed));
    let text = fs::read_to_string(directory).map_err(|e| format!("directory: {e}"))?;
    let directory = StaticDirectory::parse(&text).map_err(|e| format!("directory: {e}"))?;
    let store = RedbStore::open(dir.join("provider.redb")).map_err(|e| e.to_string())?;
    let mut config = ProviderConfig::new(domain, key);
    config.open_registration = true;
    // The provider's randomness (nonces, jitter) need not be reproducible: seed it from
    // the clock and the process id.
    let mut rng_seed = [0u8; 32];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    rng_seed[..16].copy_from_slice(&nanos.to_le_bytes());
    rng_seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let server = ProviderServer::start(
            config,
            store,
            Rng::from_seed(rng_seed),
            directory,
            listen,
            QuicConfig::default(),
        )
        .map_err(|e| e.to_string())?;
        println!("listening {}", server.local_addr());
        // Serve until the demo closes our standard input.
        let _ = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await;
        server.shutdown().await.map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// One provider process, as the demo sees it.
struct ProviderProcess {
    domain: Domain,
    key: ProviderKey,
    listen: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl ProviderProcess {
    /// Starts (or restarts) the process and waits until it listens.
    fn start(&mut self, directory: &Path) -> Result<u32, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("provider")
            .arg(self.domain.as_str())
            .arg(self.listen.to_string())
            .arg(&self.dir)
            .arg(directory)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.domain))?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if !line.starts_with("listening") {
            let _ = child.kill();
            return Err(format!("{} did not start", self.domain));
        }
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    /// Kills the process with SIGKILL: no shutdown, no flush, like a power cut.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A UDP port free right now on 127.0.0.1 (each provider keeps its port across restarts).
fn free_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

// ---------------------------------------------------------------------------------------
// The users' devices and what they saw.

struct Dev {
    /// "alice", "bob's phone", ...
    name: &'static str,
    address: Address,
    provider: usize,
    identity: IdentityKey,
    driver: Option<ClientDriver<Rng>>,
    /// The client while the device is offline.
    parked: Option<Client<Rng>>,
}

struct Sent {
    from: usize,
    to: Address,
    text: String,
    at: Instant,
    /// The devices it must reach: the recipient's, and the sender's other devices.
    expect: Vec<usize>,
    accepted: Option<Instant>,
}

#[derive(Default)]
struct Ledger {
    sent: BTreeMap<MessageId, Sent>,
    /// Arrival times per (message, device).
    got: HashMap<(MessageId, usize), Vec<Instant>>,
    /// Messages shown as they arrive (off during the burst).
    verbose: bool,
    online: Vec<bool>,
    receipts: usize,
    rejected: Vec<(usize, &'static str, Option<Address>)>,
    problems: Vec<String>,
    /// The group epoch each device holds (after `GroupChanged`).
    group_epoch: HashMap<usize, u64>,
}

struct World {
    devs: Vec<Dev>,
    providers: Vec<ProviderProcess>,
    directory: PathBuf,
    events: mpsc::Receiver<(usize, DriverEvent, Instant)>,
    events_tx: mpsc::Sender<(usize, DriverEvent, Instant)>,
    ledger: Ledger,
    rng: Rng,
}

impl World {
    fn dev(&self, name: &str) -> usize {
        self.devs
            .iter()
            .position(|d| d.name == name)
            .expect("device")
    }

    /// Connects device `i` (again) to its provider.
    fn go_online(&mut self, i: usize) {
        let dev = &mut self.devs[i];
        let client = dev.parked.take().expect("offline");
        let addr = self.providers[dev.provider].listen;
        let (driver, mut rx) =
            ClientDriver::start(client, ClientDriverConfig::new(addr)).expect("driver");
        dev.driver = Some(driver);
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if tx.send((i, e, Instant::now())).await.is_err() {
                    break;
                }
            }
        });
    }

    /// Disconnects device `i` cleanly; its client is kept for later.
    async fn go_offline(&mut self, i: usize) {
        let driver = self.devs[i].driver.take().expect("online");
        self.devs[i].parked = Some(driver.shutdown().await.expect("client back"));
        self.ledger.online[i] = false;
    }

    fn apply(&mut self, i: usize, event: DriverEvent, at: Instant) {
        let l = &mut self.ledger;
        let name = self.devs[i].name;
        match event {
            DriverEvent::Client(ClientEvent::Online) => l.online[i] = true,
            DriverEvent::Client(ClientEvent::Offline) => l.online[i] = false,
            DriverEvent::Client(ClientEvent::Message(m)) => {
                let Content::Text(t) = &m.content else { return };
                let Some(sent) = l.sent.get(&m.message_id) else {
                    l.problems
                        .push(format!("{name} got a message nobody sent: {:?}", t.body));
                    return;
                };
                let times = l.got.entry((m.message_id, i)).or_default();
                times.push(at);
                if l.verbose {
                    let from = &self.devs[sent.from];
                    let ms = at.duration_since(sent.at).as_secs_f64() * 1e3;
                    let copy = if m.sender == self.devs[i].address {
                        format!(" (copy of what {} sent to {})", from.name, m.conversation)
                    } else {
                        String::new()
                    };
                    println!(
                        "    {name:<12} ← {:<20} {:?}  after {ms:.1} ms{copy}",
                        m.sender.as_str(),
                        t.body
                    );
                }
            }
            DriverEvent::Client(ClientEvent::GroupChanged {
                epoch,
                author,
                action,
                ..
            }) => {
                l.group_epoch.insert(i, epoch);
                if l.verbose {
                    let what = match action {
                        GroupAction::Create { title, members, .. } => {
                            format!("created {title:?} with {} members", members.len())
                        }
                        GroupAction::Remove(who) => format!(
                            "removed {}",
                            who.iter()
                                .map(Address::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        other => format!("{other:?}"),
                    };
                    println!(
                        "    {name:<12} group epoch {epoch}: {} {what}",
                        author.as_str()
                    );
                }
            }
            DriverEvent::Client(ClientEvent::GroupMessage(m)) => {
                let Content::Text(t) = &m.content else { return };
                let Some(sent) = l.sent.get(&m.message_id) else {
                    l.problems.push(format!(
                        "{name} got a group message nobody sent: {:?}",
                        t.body
                    ));
                    return;
                };
                l.got.entry((m.message_id, i)).or_default().push(at);
                if l.verbose {
                    let ms = at.duration_since(sent.at).as_secs_f64() * 1e3;
                    println!(
                        "    {name:<12} ← {:<20} {:?}  in the group, after {ms:.1} ms",
                        m.sender.as_str(),
                        t.body
                    );
                }
            }
            DriverEvent::Client(
                ClientEvent::GroupChangeFailed { error, .. }
                | ClientEvent::GroupMessageFailed { reason: error, .. },
            ) => l.problems.push(format!("{name}: group: {error}")),
            DriverEvent::Client(ClientEvent::GroupItemRejected { code, .. }) => {
                l.problems
                    .push(format!("{name}: refused a group item: {code}"));
            }
            DriverEvent::Client(ClientEvent::DeliveredToProvider { message_id }) => {
                if let Some(s) = l.sent.get_mut(&message_id) {
                    s.accepted = Some(at);
                }
            }
            DriverEvent::Client(ClientEvent::DeliveredToDevice { .. }) => l.receipts += 1,
            DriverEvent::Client(ClientEvent::Rejected {
                code,
                claimed_sender,
                ..
            }) => {
                println!(
                    "    {name:<12} refused an envelope claiming to be from {}: {code}",
                    claimed_sender
                        .as_ref()
                        .map_or("(unreadable)", Address::as_str)
                );
                l.rejected.push((i, code, claimed_sender));
            }
            DriverEvent::Client(ClientEvent::Undeliverable {
                recipient, reason, ..
            }) => l.problems.push(format!(
                "{name}: a message to {recipient} is undeliverable: {reason}"
            )),
            DriverEvent::Client(ClientEvent::AuthFailed(why)) => l
                .problems
                .push(format!("{name}: authentication failed: {why:?}")),
            DriverEvent::WrongProviderKey { presented, .. } => l.problems.push(format!(
                "{name}: its provider presented another key: {presented}"
            )),
            _ => {}
        }
    }

    /// Handles events until `done` holds; fails after [`STEP_TIMEOUT`].
    async fn until(&mut self, what: &str, done: impl Fn(&Ledger) -> bool) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while !done(&self.ledger) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((i, e, at))) => self.apply(i, e, at),
                Ok(None) => return Err("event channel closed".into()),
                Err(_) => return Err(format!("timed out waiting for {what}")),
            }
        }
        Ok(())
    }

    /// Sends `text` from device `from` to `to` and records what must arrive where.
    async fn send(&mut self, from: usize, to: &Address, text: &str) -> Result<MessageId, String> {
        let expect: Vec<usize> = (0..self.devs.len())
            .filter(|&j| {
                &self.devs[j].address == to
                    || (j != from && self.devs[j].address == self.devs[from].address)
            })
            .collect();
        let at = Instant::now();
        let driver = self.devs[from].driver.as_ref().expect("sender online");
        let id = driver
            .send(to.clone(), Content::Text(Text::plain(text)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("send refused: {e}"))?;
        self.ledger.sent.insert(
            id,
            Sent {
                from,
                to: to.clone(),
                text: text.to_owned(),
                at,
                expect,
                accepted: None,
            },
        );
        Ok(id)
    }

    /// Waits until every expected copy of `ids` arrived at the devices that are online.
    async fn delivered(&mut self, ids: &[MessageId], what: &str) -> Result<(), String> {
        let ids = ids.to_vec();
        let online: Vec<bool> = self.devs.iter().map(|d| d.driver.is_some()).collect();
        self.until(what, move |l| {
            ids.iter().all(|id| {
                l.sent[id]
                    .expect
                    .iter()
                    .filter(|&&j| online[j])
                    .all(|&j| l.got.contains_key(&(*id, j)))
            })
        })
        .await
    }

    /// Waits until the sender's provider stored every one of `ids`.
    async fn accepted(&mut self, ids: &[MessageId], what: &str) -> Result<(), String> {
        let ids = ids.to_vec();
        self.until(what, move |l| {
            ids.iter().all(|id| l.sent[id].accepted.is_some())
        })
        .await
    }

    /// Sends `text` to the group from device `from`; every other device of every member
    /// must get it once.
    async fn send_group(
        &mut self,
        from: usize,
        group: GroupId,
        text: &str,
    ) -> Result<MessageId, String> {
        let members: Vec<Address> = self.devs[from]
            .driver
            .as_ref()
            .expect("sender online")
            .with_client(move |c, _| {
                c.group(group)
                    .map(|g| g.members().map(|m| m.address).collect())
                    .unwrap_or_default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let expect: Vec<usize> = (0..self.devs.len())
            .filter(|&j| j != from && members.contains(&self.devs[j].address))
            .collect();
        let at = Instant::now();
        let content = Content::Text(Text::plain(text));
        let id = self.devs[from]
            .driver
            .as_ref()
            .expect("sender online")
            .with_client(move |c, now| c.send_group(now, group, content))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("group send refused: {e}"))?;
        let to = self.devs[from].address.clone();
        self.ledger.sent.insert(
            id,
            Sent {
                from,
                to,
                text: text.to_owned(),
                at,
                expect,
                accepted: None,
            },
        );
        Ok(id)
    }

    /// Waits until every device in `devs` holds the group at `epoch` or later.
    async fn group_at(&mut self, devs: &[usize], epoch: u64, what: &str) -> Result<(), String> {
        let devs = devs.to_vec();
        self.until(what, move |l| {
            devs.iter()
                .all(|j| l.group_epoch.get(j).is_some_and(|e| *e >= epoch))
        })
        .await
    }

    fn address(&self, name: &str) -> Address {
        self.devs[self.dev(name)].address.clone()
    }
}

/// A new user's devices: one identity key, one signed device list naming them all.
fn new_user(
    rng: &mut Rng,
    local: &str,
    domain: &Domain,
    provider: &ProviderProcess,
    devices: usize,
) -> Vec<(Client<Rng>, IdentityKey)> {
    let now = quic::now();
    let address = Address::new(local, domain).expect("address");
    let identity = IdentityKeyPair::generate(rng);
    let devs: Vec<Device> = (0..devices)
        .map(|_| {
            Device::new(
                &identity,
                address.clone(),
                DeviceKeyPair::generate(rng),
                now.saturating_sub(YEAR_MS),
                now.saturating_add(YEAR_MS),
            )
            .expect("device certificate")
        })
        .collect();
    let certs: Vec<_> = devs.iter().map(|d| d.certificate().clone()).collect();
    let list = DeviceList::sign(&identity, &address, 1, now, &certs).expect("device list");
    devs.into_iter()
        .map(|device| {
            let mut account = Account::new(device, list.clone(), now, rng).expect("account");
            account.replenish_prekeys(now, rng);
            let config = ClientConfig::new(domain.clone(), provider.key);
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            (
                Client::new(account, config, Rng::from_seed(seed), now),
                identity.public(),
            )
        })
        .collect()
}

fn step(n: usize, title: &str) {
    println!("\n── {n}. {title}");
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Flips the last bit of every mailbox item stored for `device` in the database at
/// `path`: the last byte of a stored item is the last byte of its envelope's signature
/// (`StoredMailItem` in proto/kogge/v1/provider_store.proto). Returns how many.
fn alter_stored_envelopes(path: &Path, device: &[u8; 16]) -> Result<usize, String> {
    let mut store = RedbStore::open(path).map_err(|e| e.to_string())?;
    let contents = store.load().map_err(|e| e.to_string())?;
    let mut ops = Vec::new();
    for (key, value) in contents.get(&Table::Mailbox).into_iter().flatten() {
        if key.windows(16).any(|w| w == device) {
            let mut altered = value.to_vec();
            if let Some(last) = altered.last_mut() {
                *last ^= 1;
            }
            ops.push(StoreOp::Put {
                table: Table::Mailbox,
                key: key.clone(),
                value: altered.into(),
            });
        }
    }
    store.commit(&ops).map_err(|e| e.to_string())?;
    Ok(ops.len())
}

async fn demo() -> Result<bool, String> {
    let seed = std::env::var("KOGGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026u64);
    let mut rng = Rng::seed_from_u64(seed);
    let base = tempfile::Builder::new()
        .prefix("kogge-federation-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();

    println!("Kogge federation demo: three providers, each its own process, over QUIC on loopback");
    println!("(data under {}, seed {seed})", base.path().display());

    // -----------------------------------------------------------------------------------
    step(1, "three independent providers start");
    let mut directory = StaticDirectory::new();
    let mut providers = Vec::new();
    for domain in DOMAINS {
        let domain = Domain::parse(domain).map_err(|e| e.to_string())?;
        let dir = base.path().join(domain.as_str());
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let key = ProviderKeyPair::generate(&mut rng);
        fs::write(dir.join("provider.key"), key.secret_bytes().expose())
            .map_err(|e| e.to_string())?;
        let listen = free_port();
        directory.insert(PeerInfo {
            domain: domain.clone(),
            endpoint: listen.to_string(),
            key: key.public(),
        });
        providers.push(ProviderProcess {
            domain,
            key: key.public(),
            listen,
            dir,
            child: None,
        });
    }
    let directory_file = base.path().join("directory.txt");
    fs::write(&directory_file, directory.to_text()).map_err(|e| e.to_string())?;
    println!("    the directory file, all they share:");
    for line in directory.to_text().lines().skip(1) {
        println!("      {line}");
    }
    for p in &mut providers {
        let pid = p.start(&directory_file)?;
        println!(
            "    {:<14} process {pid:<7} UDP {}  database {}",
            p.domain.as_str(),
            p.listen,
            p.dir.join("provider.redb").display()
        );
    }

    // -----------------------------------------------------------------------------------
    step(2, "users register their devices");
    let (events_tx, events) = mpsc::channel(4096);
    let mut world = World {
        devs: Vec::new(),
        providers,
        directory: directory_file,
        events,
        events_tx,
        ledger: Ledger {
            verbose: true,
            ..Ledger::default()
        },
        rng,
    };
    let users: [(&str, usize, &[&'static str]); 3] = [
        ("alice", 0, &["alice"]),
        ("bob", 1, &["bob's phone", "bob's laptop"]),
        ("carol", 2, &["carol"]),
    ];
    for (local, p, names) in users {
        let domain = world.providers[p].domain.clone();
        let clients = new_user(
            &mut world.rng,
            local,
            &domain,
            &world.providers[p],
            names.len(),
        );
        for ((client, identity), name) in clients.into_iter().zip(names.iter()) {
            world.devs.push(Dev {
                name,
                address: client.account().device().address().clone(),
                provider: p,
                identity,
                driver: None,
                parked: Some(client),
            });
            world.ledger.online.push(false);
        }
    }
    for i in 0..world.devs.len() {
        world.go_online(i);
    }
    world
        .until("every device online", |l| l.online.iter().all(|&o| o))
        .await?;
    // Wait until each device's prekeys are published, so others can start sessions.
    for i in 0..world.devs.len() {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let driver = world.devs[i].driver.as_ref().expect("online");
        while !driver
            .with_client(|c, _| c.prekeys_published())
            .await
            .map_err(|e| e.to_string())?
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} never published its prekeys",
                    world.devs[i].name
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for d in &world.devs {
        println!(
            "    {:<12} {:<20} device {}  online, prekeys published",
            d.name,
            d.address.as_str(),
            d.driver
                .as_ref()
                .expect("online")
                .with_client(|c, _| c.account().device().id().to_string())
                .await
                .map_err(|e| e.to_string())?
        );
    }

    let (alice, phone, laptop, carol) = (
        world.dev("alice"),
        world.dev("bob's phone"),
        world.dev("bob's laptop"),
        world.dev("carol"),
    );
    let (a_addr, b_addr, c_addr) = (
        world.address("alice"),
        world.address("bob's phone"),
        world.address("carol"),
    );

    // -----------------------------------------------------------------------------------
    step(
        3,
        "alice@one.example writes to bob@two.example and carol@three.example",
    );
    println!("    (the first message to a contact fetches its device list and prekey bundles");
    println!("     through the contact's provider, then sets up an end-to-end session)");
    let m1 = world
        .send(alice, &b_addr, "Hi Bob, can you ship 40 crates on Friday?")
        .await?;
    let m2 = world
        .send(alice, &c_addr, "Hi Carol, the invoice is on its way.")
        .await?;
    world.delivered(&[m1, m2], "alice's first messages").await?;

    step(
        4,
        "and back: bob and carol answer alice; carol writes to bob",
    );
    let m3 = world
        .send(phone, &a_addr, "Friday works. 40 crates, as usual.")
        .await?;
    let m4 = world.send(carol, &a_addr, "Thanks, received.").await?;
    let m4b = world
        .send(carol, &b_addr, "Bob, alice says you ship on Friday?")
        .await?;
    world.delivered(&[m3, m4, m4b], "the answers").await?;
    world
        .until("delivery receipts for alice's messages", |l| {
            l.receipts >= 3
        })
        .await?;
    println!(
        "    alice's devices got {} end-to-end delivery receipts so far (one per receiving device)",
        world.ledger.receipts
    );

    step(5, "a user with two devices: bob answers from his laptop");
    let m5 = world
        .send(laptop, &a_addr, "(from my laptop) Invoice attached.")
        .await?;
    world.delivered(&[m5], "the laptop's message").await?;
    println!("    bob's phone shows the laptop's message too: both devices hold the conversation");

    // -----------------------------------------------------------------------------------
    step(
        6,
        "alice and bob compare safety numbers and mark each other verified",
    );
    let (ai, bi) = (world.devs[alice].identity, world.devs[phone].identity);
    let from_alice = SafetyNumber::new(&ai, &a_addr, &bi, &b_addr);
    let from_bob = SafetyNumber::new(&bi, &b_addr, &ai, &a_addr);
    println!("    alice sees {}", from_alice.grouped());
    println!("    bob sees   {}", from_bob.grouped());
    if from_alice.digits() != from_bob.digits() {
        return Err("the two sides computed different safety numbers".into());
    }
    for (i, who, key) in [
        (alice, &b_addr, bi),
        (phone, &a_addr, ai),
        (laptop, &a_addr, ai),
    ] {
        let who = who.clone();
        world.devs[i]
            .driver
            .as_ref()
            .expect("online")
            .with_client(move |c, _| c.mark_verified(&who, key))
            .await
            .map_err(|e| e.to_string())?;
    }
    println!("    equal: verified. From now on a changed identity key stops sending at once.");

    // -----------------------------------------------------------------------------------
    step(
        7,
        "bob's laptop goes offline; alice sends a price; two.example keeps the laptop's copy",
    );
    world.go_offline(laptop).await;
    let laptop_id = *world.devs[laptop]
        .parked
        .as_ref()
        .expect("offline")
        .account()
        .device()
        .id()
        .as_bytes();
    let price = world
        .send(alice, &b_addr, "Price for the 40 crates: 1,250.00 EUR")
        .await?;
    world
        .delivered(&[price], "the price at bob's phone")
        .await?;
    // The phone may be handed the price before the batch holding it is durable (SPEC.md
    // 16.12 rule 5). Its answer is stored (`DeliveredToProvider`) only once every batch
    // before it is durable, the laptop's copy of the price included.
    let answer = world
        .send(phone, &a_addr, "Got it, checking with the warehouse.")
        .await?;
    world
        .accepted(&[answer], "two.example to store bob's answer")
        .await?;
    world.delivered(&[answer], "bob's answer at alice").await?;
    println!("    bob's phone answers; two.example stored the answer, and before it the price");
    println!("    the laptop's copies of both wait in its mailbox on two.example's disk");

    step(
        8,
        "two.example is killed (SIGKILL) while messages for bob are on the way",
    );
    world.providers[1].kill();
    println!("    two.example is down");
    let t_down = Instant::now();
    let mut queued = Vec::new();
    for (from, text) in [
        (alice, "Can you confirm the delivery address?"),
        (carol, "Bob, are you still coming on Monday?"),
        (alice, "Also: 10 more crates next week."),
    ] {
        queued.push(world.send(from, &b_addr, text).await?);
    }
    world
        .accepted(&queued, "the senders' providers to store the messages")
        .await?;
    for id in &queued {
        let s = &world.ledger.sent[id];
        let domain = world.devs[s.from].address.domain_str().to_owned();
        println!(
            "    {:<6} → {}: stored by {domain} in {:.1} ms, queued for two.example",
            world.devs[s.from].name,
            s.to.as_str(),
            s.accepted
                .expect("accepted")
                .duration_since(s.at)
                .as_secs_f64()
                * 1e3
        );
    }

    step(
        9,
        "while two.example is down, someone with access to its disk alters the laptop's copies",
    );
    let db = world.providers[1].dir.join("provider.redb");
    let altered = alter_stored_envelopes(&db, &laptop_id)?;
    println!(
        "    flipped one bit in the signature of each of the {altered} envelopes waiting for bob's laptop"
    );
    println!(
        "    (the price, bob's answer, and whatever else arrived for the laptop while it was away)"
    );
    if altered < 2 {
        return Err(format!(
            "{altered} envelopes were waiting for bob's laptop, not the price and the answer"
        ));
    }

    step(
        10,
        "two.example restarts from its disk; the queued messages arrive",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let directory = world.directory.clone();
    let pid = world.providers[1].start(&directory)?;
    let t_up = Instant::now();
    println!(
        "    two.example is back (process {pid}) after {:.1} s down",
        t_up.duration_since(t_down).as_secs_f64()
    );
    world
        .delivered(&queued, "the queued messages at bob's phone")
        .await?;
    let last = queued
        .iter()
        .filter_map(|id| world.ledger.got.get(&(*id, phone)))
        .flatten()
        .max()
        .copied()
        .unwrap_or(t_up);
    println!(
        "    all {} queued messages reached bob's phone {:.0} ms after the restart",
        queued.len(),
        last.saturating_duration_since(t_up).as_secs_f64() * 1e3
    );

    step(
        11,
        "bob's laptop comes back: it refuses the altered envelopes",
    );
    world.go_online(laptop);
    let rejected_before = world.ledger.rejected.len();
    world
        .until("the laptop to refuse the altered envelopes", move |l| {
            l.rejected.len() >= rejected_before + altered
        })
        .await?;
    world
        .delivered(&queued, "the queued messages at the laptop")
        .await?;
    println!("    the genuine price reached bob's phone; no altered text was shown anywhere");

    // -----------------------------------------------------------------------------------
    step(
        12,
        "a group across all three providers: alice, bob (two devices) and carol",
    );
    let (b_addr2, c_addr2) = (world.address("bob's phone"), world.address("carol"));
    let group = world.devs[alice]
        .driver
        .as_ref()
        .expect("alice online")
        .with_client(move |c, now| c.create_group(now, "order desk", &[b_addr2, c_addr2]))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("create_group: {e}"))?;
    let everyone = [alice, phone, laptop, carol];
    world
        .group_at(&everyone, 0, "the group at every member device")
        .await?;
    println!(
        "    one.example orders the group's changes (its sequencer); no provider holds a group key"
    );
    let mut group_ids = Vec::new();
    group_ids.push(
        world
            .send_group(alice, group, "team: the new price list is out")
            .await?,
    );
    group_ids.push(
        world
            .send_group(laptop, group, "thanks, reading it now")
            .await?,
    );
    group_ids.push(
        world
            .send_group(carol, group, "I can ship 40 crates")
            .await?,
    );
    world
        .delivered(&group_ids, "the group messages at every member device")
        .await?;
    println!(
        "    each message was encrypted and signed once, and handed over once per recipient provider"
    );
    let c_addr3 = world.address("carol");
    world.devs[alice]
        .driver
        .as_ref()
        .expect("alice online")
        .with_client(move |c, now| c.change_group(now, group, GroupAction::Remove(vec![c_addr3])))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("change_group: {e}"))?;
    world
        .group_at(
            &everyone,
            1,
            "the removal at every device, carol's included",
        )
        .await?;
    let after = world
        .send_group(phone, group, "between us: carol's offer is too high")
        .await?;
    group_ids.push(after);
    world
        .delivered(&[after], "the message after the removal")
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok((i, e, at)) = world.events.try_recv() {
        world.apply(i, e, at);
    }
    if world.ledger.got.contains_key(&(after, carol)) {
        return Err("carol read a group message sent after her removal".into());
    }
    println!("    bob's phone made a new sender chain; carol, removed, got nothing she could read");

    step(
        13,
        &format!("a burst: carol sends {BURST} messages to alice"),
    );
    world.ledger.verbose = false;
    let burst_start = Instant::now();
    let mut burst = Vec::new();
    for n in 0..BURST {
        burst.push(
            world
                .send(carol, &a_addr, &format!("order line {n}: 1 crate"))
                .await?,
        );
    }
    world.delivered(&burst, "the burst").await?;
    let burst_s = burst_start.elapsed().as_secs_f64();
    let mut burst_ms: Vec<f64> = burst
        .iter()
        .filter_map(|id| {
            let s = &world.ledger.sent[id];
            world
                .ledger
                .got
                .get(&(*id, alice))
                .and_then(|t| t.first())
                .map(|t| t.duration_since(s.at).as_secs_f64() * 1e3)
        })
        .collect();
    println!(
        "    {BURST} messages in {:.2} s ({:.0} messages/s end to end, sealing and opening included);",
        burst_s,
        BURST as f64 / burst_s
    );
    println!(
        "    latency p50 {:.1} ms, p99 {:.1} ms",
        percentile(&mut burst_ms, 0.5),
        percentile(&mut burst_ms, 0.99)
    );

    // Let late duplicates (if any) show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok((i, e, at)) = world.events.try_recv() {
        world.apply(i, e, at);
    }

    // -----------------------------------------------------------------------------------
    step(14, "summary");
    let l = &world.ledger;
    let mut expected = 0usize;
    let mut exactly_once = 0usize;
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    let mut latencies = Vec::new();
    for (id, s) in &l.sent {
        for &j in &s.expect {
            // The altered copies cannot arrive: they must have been refused instead.
            if (*id == price || *id == answer) && j == laptop {
                continue;
            }
            expected += 1;
            match l.got.get(&(*id, j)).map(Vec::len) {
                Some(1) => {
                    exactly_once += 1;
                    let t = l.got[&(*id, j)][0];
                    if !burst.contains(id) && !queued.contains(id) {
                        latencies.push(t.duration_since(s.at).as_secs_f64() * 1e3);
                    }
                }
                Some(n) => duplicated.push(format!("{:?} ×{n} at {}", s.text, world.devs[j].name)),
                None => missing.push(format!("{:?} at {}", s.text, world.devs[j].name)),
            }
        }
    }
    let unexpected: Vec<String> = l
        .got
        .keys()
        .filter(|(id, j)| !l.sent.get(id).is_some_and(|s| s.expect.contains(j)))
        .map(|(_, j)| world.devs[*j].name.to_string())
        .collect();
    let altered_seen = [price, answer]
        .iter()
        .any(|id| l.got.contains_key(&(*id, laptop)));
    let refused = l
        .rejected
        .iter()
        .filter(|(j, code, _)| *j == laptop && *code == "bad_signature")
        .count();
    let refused_ok = refused == altered && l.rejected.len() == altered;
    let mut accept_ms: Vec<f64> = l
        .sent
        .values()
        .filter_map(|s| {
            s.accepted
                .map(|a| a.duration_since(s.at).as_secs_f64() * 1e3)
        })
        .collect();
    let users_sent = l.sent.len();
    println!("    messages sent                      {users_sent}");
    println!("    deliveries expected (per device)   {expected}");
    println!("    delivered exactly once             {exactly_once}");
    println!("    missing                            {}", missing.len());
    println!(
        "    duplicated                         {}",
        duplicated.len()
    );
    println!(
        "    delivered where not expected       {}",
        unexpected.len()
    );
    println!("    end-to-end delivery receipts       {}", l.receipts);
    println!(
        "    altered envelopes refused          {refused} of {altered} (bad_signature){}",
        if refused_ok && !altered_seen {
            ""
        } else {
            "  NOT OK"
        }
    );
    println!(
        "    latency, send → stored by sender's provider: p50 {:.1} ms, p99 {:.1} ms ({} messages)",
        percentile(&mut accept_ms, 0.5),
        percentile(&mut accept_ms, 0.99),
        accept_ms.len()
    );
    println!(
        "    latency, send → shown on the device (steps 3–7): p50 {:.1} ms, max {:.1} ms ({} deliveries)",
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 1.0),
        latencies.len()
    );
    for p in &l.problems {
        println!("    problem: {p}");
    }
    for m in missing.iter().chain(&duplicated) {
        println!("    wrong: {m}");
    }
    println!("    total time {:.1} s", started.elapsed().as_secs_f64());
    let ok = missing.is_empty()
        && duplicated.is_empty()
        && unexpected.is_empty()
        && refused_ok
        && !altered_seen
        && l.problems.is_empty();

    // Stop everything: devices first, then the providers (closing their standard input
    // lets them shut down gracefully).
    for d in &mut world.devs {
        if let Some(driver) = d.driver.take() {
            let _ = driver.shutdown().await;
        }
    }
    for p in &mut world.providers {
        if let Some(mut child) = p.child.take() {
            drop(child.stdin.take());
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
    println!(
        "\n{}",
        if ok {
            "OK: every message reached every device it was meant for exactly once; the altered envelopes were refused."
        } else {
            "NOT OK"
        }
    );
    Ok(ok)
}
