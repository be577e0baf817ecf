//! A deterministic network simulator: several [`Provider`]s and many [`Client`]s on a
//! simulated network with virtual time, driven by one seed (SPEC.md 16.13).
//!
//! The network loses, duplicates, delays (and so reorders) frames, cuts client
//! connections, partitions providers from each other, and crashes providers, which
//! restart from what their [`MemoryStore`] made durable and nothing else. Some providers
//! run with [deferred commits](Provider::defer_commits): the simulator makes their
//! batches durable after a simulated delay, sometimes fails them, and crashes providers
//! while a batch is under way (before or after it reached the store). A
//! malicious-provider mode ([`Attack`]) makes one provider tamper with what it sends
//! its users. After the faults stop, the network heals and the run continues until
//! everything is delivered (or a time bound passes); then the run ([`Sim::run`]) checks:
//!
//! 1. every message a sender's provider accepted reached every recipient device it was
//!    sealed for exactly once, or its sender was told it is undeliverable;
//! 2. no app ever saw a duplicate;
//! 3. every message sent ended as accepted or reported undeliverable (none vanished);
//! 4. no provider ever saw plaintext (not in any frame, not in any store);
//! 5. no provider exceeded its limits;
//! 6. no provider sent a device two different mailbox items under one `seq` (checked on
//!    every frame, across crashes and failed batches: SPEC.md 16.7, 16.12 rule 5).
//!
//! Everything is a function of [`SimConfig`] (including the seed), so a failing run
//! reproduces exactly: `cargo run --release --example sim -- --seed N`.
//!
//! The simulator is generic over the RNG so that it needs no dependency of its own;
//! tests and the examples use `rand_chacha::ChaCha20Rng`.

mod attack;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use bytes::Bytes;
use rand_core::{CryptoRng, SeedableRng};

pub use attack::Attack;

use crate::address::{Address, Domain};
use crate::client::{Client, ClientConfig, ClientEvent, ClientInput, ClientOutput};
use crate::envelope::{Content, MessageId, Text, UnverifiedEnvelope};
use crate::identity::{
    Device, DeviceId, DeviceKeyPair, DeviceList, IdentityKeyPair, ProviderKey, ProviderKeyPair,
};
use crate::protocol::{self, ConnectionId};
use crate::provider::{
    CommitBatch, Direction, Provider, ProviderConfig, ProviderInput, ProviderOutput,
};
use crate::session::Account;
use crate::store::{MemoryStore, SharedStore, Store, StoreError};
use crate::time::UnixMillis;
use crate::wire;

/// Marker every simulated message body starts with; no provider may ever see it.
pub const PLAINTEXT_CANARY: &[u8] = b"kogge-sim-plaintext:";

/// What to simulate. All probabilities are in parts per million.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// The seed; everything follows from it.
    pub seed: u64,
    /// Providers (`p0.example`, `p1.example`, …).
    pub providers: usize,
    /// Users per provider.
    pub users_per_provider: usize,
    /// Every `n`-th user has two devices (0: all have one).
    pub second_device_every: usize,
    /// Messages sent in total.
    pub messages: usize,
    /// Sends are spread over this much virtual time.
    pub send_window_ms: u64,
    /// Frame loss.
    pub loss_ppm: u32,
    /// Frame duplication.
    pub duplicate_ppm: u32,
    /// Frame delay bounds; random delays reorder frames.
    pub min_delay_ms: u64,
    /// See `min_delay_ms`.
    pub max_delay_ms: u64,
    /// Chance per frame that a client's connection is cut instead.
    pub client_cut_ppm: u32,
    /// Provider partitions started during the fault window.
    pub partitions: usize,
    /// Provider crashes (with restart) during the fault window.
    pub crashes: usize,
    /// One provider (index 1) misbehaves towards its users.
    pub attack: Option<Attack>,
    /// After the faults, how long the run may take to deliver everything.
    pub heal_limit_ms: u64,
    /// Group messages sent in total, in one group of every user that the first client
    /// creates (0: no group).
    pub group_messages: usize,
    /// Chance that a provider runs with [deferred commits](Provider::defer_commits)
    /// (drawn once per provider from a stream of its own, so 0 leaves the rest of a run
    /// as it was). Their batches become durable 1–20 ms after they are handed out.
    pub deferred_commits_ppm: u32,
    /// Chance, during the fault window, that a deferred batch fails (the store refuses
    /// it; the provider rolls back to what is durable).
    pub commit_failure_ppm: u32,
    /// Print every app event and provider event to stderr (for debugging a seed).
    pub trace: bool,
}

impl SimConfig {
    /// A small run with every kind of fault: what CI runs per seed.
    pub fn faulty(seed: u64) -> Self {
        Self {
            seed,
            providers: 3,
            users_per_provider: 2,
            second_device_every: 2,
            messages: 24,
            send_window_ms: 20_000,
            loss_ppm: 50_000,
            duplicate_ppm: 30_000,
            min_delay_ms: 1,
            max_delay_ms: 200,
            client_cut_ppm: 5_000,
            partitions: 2,
            crashes: 2,
            attack: None,
            heal_limit_ms: 6 * 3_600_000,
            group_messages: 8,
            // Odd seeds: most providers defer their commits (even seeds run as before).
            deferred_commits_ppm: if seed % 2 == 1 { 750_000 } else { 0 },
            commit_failure_ppm: 20_000,
            trace: false,
        }
    }

    /// A large clean-ish run for soaking.
    pub fn soak(seed: u64, messages: usize) -> Self {
        Self {
            seed,
            providers: 3,
            users_per_provider: 20,
            second_device_every: 4,
            messages,
            send_window_ms: (messages as u64).saturating_mul(5),
            loss_ppm: 10_000,
            duplicate_ppm: 10_000,
            min_delay_ms: 1,
            max_delay_ms: 50,
            client_cut_ppm: 200,
            partitions: 3,
            crashes: 3,
            attack: None,
            heal_limit_ms: 24 * 3_600_000,
            group_messages: messages / 10,
            deferred_commits_ppm: 0,
            commit_failure_ppm: 0,
            trace: false,
        }
    }
}

/// What a run did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Messages the apps sent.
    pub sent: usize,
    /// Messages their senders' providers accepted.
    pub accepted: usize,
    /// Messages reported undeliverable to their senders.
    pub undeliverable: usize,
    /// Message events seen by apps (one per recipient device and message).
    pub deliveries: usize,
    /// End-to-end delivery receipts that reached senders.
    pub receipts: usize,
    /// Group messages opened by apps (one per recipient device and message).
    pub group_deliveries: usize,
    /// Group items (messages and changes) relayed between providers, retries included:
    /// one per recipient provider and item on a clean network (SPEC.md 20.2).
    pub group_relays: u64,
    /// Frames sent on the network.
    pub frames: u64,
    /// Frames the network dropped.
    pub dropped: u64,
    /// Frames the network duplicated.
    pub duplicated: u64,
    /// Provider crashes.
    pub crashes: usize,
    /// Partitions.
    pub partitions: usize,
    /// Providers that ran with deferred commits.
    pub deferred_providers: usize,
    /// Deferred batches the simulated store refused.
    pub commit_failures: usize,
    /// Crashes while a deferred batch was under way.
    pub commit_crashes: usize,
    /// `Deliver` frames deferred-commit providers sent without waiting for a batch
    /// (SPEC.md 16.12 rule 5), over all their incarnations.
    pub early_deliveries: u64,
    /// Client connections cut.
    pub cuts: u64,
    /// Envelopes apps rejected (forged, tampered, replayed out of window …).
    pub rejected: usize,
    /// Identity changes reported to apps.
    pub identity_changes: usize,
    /// Sequence gaps reported to apps.
    pub missing_reported: usize,
    /// Envelopes devices sealed to a device the malicious provider made up.
    pub sealed_to_attacker: usize,
    /// Tamperings the malicious provider made.
    pub attacks: u64,
    /// Virtual time at the end.
    pub virtual_ms: u64,
    /// Mailbox items the providers still held at the end, with every device online: items
    /// their devices keep unacknowledged because they cannot process them yet: group
    /// envelopes whose sender chain never reached the device, say (it had no session when
    /// the chain was handed out, and its owner has not handed it again yet; SPEC.md 19.2,
    /// 20.7). Since owners hand missed chains again in rounds of their own, seeds 0..2000
    /// end with none.
    pub held_at_end: usize,
    /// Of those, group envelopes.
    pub held_group_envelopes_at_end: usize,
    /// Broken invariants (empty when the run passed).
    pub violations: Vec<String>,
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: sent {} accepted {} undeliverable {} deliveries {} (group {}, relayed {}) receipts {} | \
             frames {} dropped {} duplicated {} cuts {} crashes {} partitions {} | \
             rejected {} identity changes {} gaps {} attacks {} | {} virtual s",
            self.seed,
            self.sent,
            self.accepted,
            self.undeliverable,
            self.deliveries,
            self.group_deliveries,
            self.group_relays,
            self.receipts,
            self.frames,
            self.dropped,
            self.duplicated,
            self.cuts,
            self.crashes,
            self.partitions,
            self.rejected,
            self.identity_changes,
            self.missing_reported,
            self.attacks,
            self.virtual_ms / 1000,
        )?;
        if self.held_at_end > 0 {
            write!(
                f,
                " | held unacknowledged at the end: {} ({} group envelopes)",
                self.held_at_end, self.held_group_envelopes_at_end
            )?;
        }
        if self.deferred_providers > 0 {
            write!(
                f,
                " | deferred commits: {} providers, {} failed, {} crashes mid-commit, {} \
                 deliveries ahead of a batch",
                self.deferred_providers,
                self.commit_failures,
                self.commit_crashes,
                self.early_deliveries
            )?;
        }
        for v in &self.violations {
            write!(f, "\n  VIOLATION: {v}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Node {
    Provider(usize),
    Client(usize),
}

#[derive(Debug)]
struct Link {
    a: Node,
    b: Node,
    /// Frames on this link are delivered only while it is open.
    open: bool,
}

#[derive(Debug)]
enum Event {
    Frame {
        conn: u64,
        to: Node,
        bytes: Bytes,
    },
    Closed {
        conn: u64,
        to: Node,
    },
    Send {
        client: usize,
        to: Address,
        body: Vec<u8>,
    },
    /// The first client creates the group (once it knows every member's device list).
    CreateGroup,
    /// A group message (once the client holds the group).
    SendGroup {
        client: usize,
        body: Vec<u8>,
    },
    Crash(usize),
    Restart(usize),
    Partition {
        a: usize,
        b: usize,
    },
    Heal {
        a: usize,
        b: usize,
    },
    /// A deferred batch reaches the provider's store (or fails to).
    CommitApply {
        provider: usize,
        incarnation: u64,
        batch: CommitBatch,
    },
    /// The provider learns how its batch went.
    Committed {
        provider: usize,
        incarnation: u64,
        id: u64,
        result: Result<(), StoreError>,
    },
}

struct ProviderNode<R: CryptoRng> {
    domain: Domain,
    key_seed: crate::crypto::Secret<32>,
    public: ProviderKey,
    machine: Option<Provider<SharedStore<MemoryStore>, R>>,
    /// What is durable: the store the running machine shares, kept across crashes (a
    /// deferred batch reaches it through this handle, as a store thread's would).
    store: SharedStore<MemoryStore>,
    /// Connections by id (either direction).
    conns: BTreeSet<u64>,
    /// Runs with deferred commits.
    deferred: bool,
    /// Starts so far: a batch's events carry the incarnation that handed it out and are
    /// dropped once that one crashed.
    incarnation: u64,
    /// A crash that waits for the provider's next batch (to crash mid-commit).
    crash_at_commit: bool,
}

struct ClientNode<R: CryptoRng> {
    address: Address,
    provider: usize,
    machine: Client<R>,
    conn: Option<u64>,
}

/// What the checker tracks for each message.
#[derive(Debug, Default)]
struct MessageLog {
    sender: usize,
    /// Recipient devices the sealed copies were submitted for.
    expected: BTreeSet<(Address, DeviceId)>,
    accepted: bool,
    undeliverable: BTreeSet<Option<(Address, DeviceId)>>,
    /// Deliveries seen, per receiving client.
    delivered: BTreeMap<usize, usize>,
}

/// The simulator. See the module documentation.
pub struct Sim<R: CryptoRng + SeedableRng> {
    config: SimConfig,
    rng: R,
    now: UnixMillis,
    providers: Vec<ProviderNode<R>>,
    clients: Vec<ClientNode<R>>,
    links: HashMap<u64, Link>,
    next_conn: u64,
    events: BTreeMap<(UnixMillis, u64), Event>,
    next_event: u64,
    partitioned: HashSet<(usize, usize)>,
    faults_until: UnixMillis,
    messages: HashMap<MessageId, MessageLog>,
    by_client_send: HashMap<(usize, MessageId), ()>,
    /// What each client was sent under each mailbox `seq` (a hash of the item): a number
    /// given to two items is a violation (SPEC.md 16.7, 16.12 rule 5).
    seq_items: HashMap<(usize, u64), [u8; 32]>,
    report: SimReport,
    attacker: Option<attack::Attacker<R>>,
    rng_counter: u64,
    /// Commit delays, failures and mid-commit crashes: a stream of their own, so runs
    /// without deferred providers draw exactly as before.
    commit_rng: R,
    /// Clients whose app was told of tampering (rejections, identity changes, gaps).
    detected: HashSet<usize>,
    /// Nodes that got input since they were last drained.
    touched: BTreeSet<Node>,
    /// Each node's next timer, as its last drain reported.
    deadlines: BTreeMap<Node, UnixMillis>,
    /// Scheduled frames, sends and restarts (the run is not quiet while any is pending).
    busy_events: usize,
    /// Test hook: do not excuse the dropping provider (to see the checker catch it).
    #[cfg(test)]
    strict: bool,
}

impl<R: CryptoRng + SeedableRng> fmt::Debug for Sim<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("config", &self.config)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

const T0: UnixMillis = UnixMillis(1_800_000_000_000);
/// RNG streams of a seed beyond the counted ones of `child_rng`.
const DEFERRAL_STREAM: u64 = u64::MAX;
const COMMIT_STREAM: u64 = u64::MAX - 1;
const YEAR_MS: u64 = 365 * 24 * 3_600_000;

fn seed_bytes(seed: u64, stream: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&stream.to_le_bytes());
    s[16..].copy_from_slice(b"kogge-simulator!");
    s
}

impl<R: CryptoRng + SeedableRng<Seed = [u8; 32]>> Sim<R> {
    /// Builds the providers, users and devices and schedules sends and faults.
    pub fn new(config: SimConfig) -> Self {
        let mut rng = R::from_seed(seed_bytes(config.seed, 0));
        let mut sim = Self {
            rng: R::from_seed(seed_bytes(config.seed, 1)),
            config: config.clone(),
            now: T0,
            providers: Vec::new(),
            clients: Vec::new(),
            links: HashMap::new(),
            next_conn: 1,
            events: BTreeMap::new(),
            next_event: 0,
            partitioned: HashSet::new(),
            faults_until: T0.saturating_add(config.send_window_ms),
            messages: HashMap::new(),
            by_client_send: HashMap::new(),
            seq_items: HashMap::new(),
            report: SimReport {
                seed: config.seed,
                ..SimReport::default()
            },
            attacker: None,
            rng_counter: 2,
            commit_rng: R::from_seed(seed_bytes(config.seed, COMMIT_STREAM)),
            detected: HashSet::new(),
            touched: BTreeSet::new(),
            deadlines: BTreeMap::new(),
            busy_events: 0,
            #[cfg(test)]
            strict: false,
        };
        let mut deferral = R::from_seed(seed_bytes(config.seed, DEFERRAL_STREAM));
        for i in 0..config.providers {
            let key = ProviderKeyPair::generate(&mut rng);
            let Ok(domain) = Domain::parse(&format!("p{i}.example")) else {
                continue;
            };
            let deferred = config.deferred_commits_ppm > 0
                && deferral.next_u32() % 1_000_000 < config.deferred_commits_ppm;
            if deferred {
                sim.report.deferred_providers += 1;
            }
            sim.providers.push(ProviderNode {
                domain,
                public: key.public(),
                key_seed: key.secret_bytes(),
                machine: None,
                store: SharedStore::new(MemoryStore::new()),
                conns: BTreeSet::new(),
                deferred,
                incarnation: 0,
                crash_at_commit: false,
            });
            sim.start_provider(i);
        }
        let mut users = 0usize;
        for p in 0..config.providers {
            for u in 0..config.users_per_provider {
                users += 1;
                let devices = if config.second_device_every > 0
                    && users.is_multiple_of(config.second_device_every)
                {
                    2
                } else {
                    1
                };
                sim.add_user(&mut rng, p, &format!("u{u}"), devices);
            }
        }
        if config.attack == Some(Attack::SwapIdentity) {
            // The users compared safety numbers beforehand (SPEC.md 5): a swapped
            // identity must then be caught, not trusted on first use.
            let ids: Vec<(Address, crate::identity::IdentityKey)> = sim
                .clients
                .iter()
                .map(|c| {
                    let list = c.machine.account().own_device_list();
                    (list.address().clone(), *list.identity_key())
                })
                .collect();
            for c in &mut sim.clients {
                for (a, k) in &ids {
                    c.machine.mark_verified(a, *k);
                }
            }
        }
        if let Some(a) = config.attack {
            sim.attacker = Some(attack::Attacker::new(a, &mut rng, &sim.providers[1].domain));
        }
        // Sends.
        let user_addrs: Vec<Address> = {
            let mut v: Vec<Address> = sim.clients.iter().map(|c| c.address.clone()).collect();
            v.dedup();
            v
        };
        for n in 0..config.messages {
            let client = (rng.next_u64() % sim.clients.len() as u64) as usize;
            let to = user_addrs[(rng.next_u64() % user_addrs.len() as u64) as usize].clone();
            let at = T0.saturating_add(rng.next_u64() % config.send_window_ms.max(1));
            let mut body = PLAINTEXT_CANARY.to_vec();
            body.extend_from_slice(format!("{n}").as_bytes());
            sim.schedule(at, Event::Send { client, to, body });
        }
        if config.group_messages > 0 && !sim.clients.is_empty() {
            sim.schedule(T0.saturating_add(1_000), Event::CreateGroup);
            for n in 0..config.group_messages {
                let client = (rng.next_u64() % sim.clients.len() as u64) as usize;
                let at = T0.saturating_add(rng.next_u64() % config.send_window_ms.max(1));
                let mut body = PLAINTEXT_CANARY.to_vec();
                body.extend_from_slice(format!("group {n}").as_bytes());
                sim.schedule(at, Event::SendGroup { client, body });
            }
        }
        // Faults.
        for _ in 0..config.crashes {
            if config.providers == 0 {
                break;
            }
            let p = (rng.next_u64() % config.providers as u64) as usize;
            let at = T0.saturating_add(rng.next_u64() % config.send_window_ms.max(1));
            let down = 1_000 + rng.next_u64() % 60_000;
            sim.schedule(at, Event::Crash(p));
            sim.schedule(at.saturating_add(down), Event::Restart(p));
        }
        for _ in 0..config.partitions {
            if config.providers < 2 {
                break;
            }
            let a = (rng.next_u64() % config.providers as u64) as usize;
            let b = (a + 1 + (rng.next_u64() % (config.providers as u64 - 1)) as usize)
                % config.providers;
            let at = T0.saturating_add(rng.next_u64() % config.send_window_ms.max(1));
            let len = 1_000 + rng.next_u64() % 120_000;
            sim.schedule(at, Event::Partition { a, b });
            sim.schedule(at.saturating_add(len), Event::Heal { a, b });
        }
        sim
    }

    fn child_rng(&mut self) -> R {
        self.rng_counter += 1;
        R::from_seed(seed_bytes(self.config.seed, self.rng_counter))
    }

    fn start_provider(&mut self, i: usize) {
        self.touched.insert(Node::Provider(i));
        let rng = self.child_rng();
        let node = &mut self.providers[i];
        let mut config = ProviderConfig::new(
            node.domain.clone(),
            ProviderKeyPair::from_secret_bytes(&node.key_seed),
        );
        config.open_registration = true;
        node.incarnation += 1;
        node.crash_at_commit = false;
        match Provider::new(config, node.store.clone(), rng, self.now) {
            Ok(mut p) => {
                if node.deferred {
                    p.defer_commits();
                }
                node.machine = Some(p);
            }
            Err(e) => self
                .report
                .violations
                .push(format!("provider {i} failed to load its store: {e}")),
        }
    }

    fn add_user(&mut self, rng: &mut R, provider: usize, local: &str, devices: usize) {
        let domain = self.providers[provider].domain.clone();
        let Ok(address) = Address::new(local, &domain) else {
            return;
        };
        let identity = IdentityKeyPair::generate(rng);
        let devs: Vec<Device> = (0..devices)
            .filter_map(|_| {
                Device::new(
                    &identity,
                    address.clone(),
                    DeviceKeyPair::generate(rng),
                    T0.saturating_sub(YEAR_MS),
                    T0.saturating_add(YEAR_MS),
                )
                .ok()
            })
            .collect();
        let certs: Vec<_> = devs.iter().map(|d| d.certificate().clone()).collect();
        let Ok(list) = DeviceList::sign(&identity, &address, 1, T0, &certs) else {
            return;
        };
        for d in devs {
            let Ok(mut account) = Account::new(d, list.clone(), T0, rng) else {
                continue;
            };
            account.replenish_prekeys(T0, rng);
            let config = ClientConfig::new(domain.clone(), self.providers[provider].public);
            let crng = self.child_rng();
            let machine = Client::new(account, config, crng, T0);
            self.clients.push(ClientNode {
                address: address.clone(),
                provider,
                machine,
                conn: None,
            });
        }
    }

    fn schedule(&mut self, at: UnixMillis, e: Event) {
        self.next_event += 1;
        if Self::is_busy(&e) {
            self.busy_events += 1;
        }
        self.events.insert((at, self.next_event), e);
    }

    fn is_busy(e: &Event) -> bool {
        matches!(
            e,
            Event::Frame { .. }
                | Event::Send { .. }
                | Event::Restart(_)
                | Event::CreateGroup
                | Event::SendGroup { .. }
                | Event::CommitApply { .. }
                | Event::Committed { .. }
        )
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.rng.next_u32() % 1_000_000) < ppm
    }

    fn delay(&mut self) -> u64 {
        let (lo, hi) = (
            self.config.min_delay_ms,
            self.config.max_delay_ms.max(self.config.min_delay_ms),
        );
        lo + self.rng.next_u64() % (hi - lo + 1)
    }

    fn faulty(&self) -> bool {
        self.now < self.faults_until
    }

    fn blocked(&self, a: Node, b: Node) -> bool {
        match (a, b) {
            (Node::Provider(x), Node::Provider(y)) => {
                self.partitioned.contains(&(x.min(y), x.max(y)))
            }
            _ => false,
        }
    }

    /// Runs to the end; returns the report (with any violations).
    pub fn run(mut self) -> SimReport {
        let deadline = self.faults_until.saturating_add(self.config.heal_limit_ms);
        for p in 0..self.providers.len() {
            self.touched.insert(Node::Provider(p));
        }
        for c in 0..self.clients.len() {
            self.touched.insert(Node::Client(c));
        }
        self.drain_all();
        loop {
            let next_timer = self.next_timer();
            let next_event = self.events.keys().next().map(|(t, _)| *t);
            let next = match (next_timer, next_event) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > deadline {
                break;
            }
            if next >= self.faults_until && self.quiescent() {
                break;
            }
            self.now = self.now.max(next);
            while let Some(entry) = self.events.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let e = entry.remove();
                if Self::is_busy(&e) {
                    self.busy_events -= 1;
                }
                self.on_event(e);
            }
            self.fire_timers();
            self.drain_all();
        }
        self.report.virtual_ms = self.now.0.saturating_sub(T0.0);
        for m in self.providers.iter().filter_map(|p| p.machine.as_ref()) {
            self.report.early_deliveries += m.stats().early_deliveries;
        }
        for m in self.providers.iter().filter_map(|p| p.machine.as_ref()) {
            let held = m.stats().mailbox_items;
            if held == 0 {
                continue;
            }
            self.report.held_at_end += held;
            // What kind: the provider's store (in memory here) holds the items. A run that
            // ends with items held ends at the heal limit, hours after the last
            // acknowledgement, so no deletion is still waiting to be committed and the
            // store holds exactly the provider's mailboxes.
            let Ok(contents) = m.store().lock().load() else {
                continue;
            };
            let mailbox = contents.get(&crate::store::Table::Mailbox);
            for value in mailbox.into_iter().flat_map(|t| t.values()) {
                let item = <crate::wire::StoredMailItem as prost::Message>::decode(value.clone())
                    .ok()
                    .and_then(|w| w.item);
                if let Some(crate::wire::stored_mail_item::Item::Group(g)) = item
                    && matches!(g.body, Some(crate::wire::group_item::Body::Envelope(_)))
                {
                    self.report.held_group_envelopes_at_end += 1;
                }
            }
        }
        self.report.attacks = self.attacker.as_ref().map_or(0, |a| a.acted);
        self.check();
        self.report
    }

    fn next_timer(&mut self) -> Option<UnixMillis> {
        let now = self.now;
        self.deadlines.values().min().map(|t| (*t).max(now))
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        let due: Vec<Node> = self
            .deadlines
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in due {
            self.deadlines.remove(&n);
            match n {
                Node::Provider(p) => {
                    if let Some(m) = &mut self.providers[p].machine {
                        m.handle_timeout(now);
                    }
                }
                Node::Client(c) => self.clients[c].machine.handle_timeout(now),
            }
            self.touched.insert(n);
        }
    }

    /// Everything delivered, acknowledged and quiet.
    fn quiescent(&self) -> bool {
        if self.events.values().any(Self::is_busy) {
            return false;
        }
        let providers_idle = self.providers.iter().all(|p| {
            p.machine.as_ref().is_some_and(|m| {
                let s = m.stats();
                s.outbound_items == 0 && s.mailbox_items == 0 && s.pending_fetches == 0
            })
        });
        providers_idle
            && self
                .clients
                .iter()
                .all(|c| c.machine.pending_messages() == 0 && c.machine.is_online())
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Frame { conn, to, bytes } => {
                if self.links.get(&conn).is_some_and(|l| l.open) {
                    self.deliver(conn, to, bytes);
                }
            }
            Event::Closed { conn, to } => self.notify_closed(conn, to),
            Event::Send { client, to, body } => {
                let text = String::from_utf8_lossy(&body).into_owned();
                let now = self.now;
                self.report.sent += 1;
                self.touched.insert(Node::Client(client));
                match self.clients[client]
                    .machine
                    .send(now, &to, Content::Text(Text::plain(&text)))
                {
                    Ok(id) => {
                        self.by_client_send.insert((client, id), ());
                        let log = self.messages.entry(id).or_default();
                        log.sender = client;
                    }
                    Err(e) => self
                        .report
                        .violations
                        .push(format!("send refused by client {client}: {e}")),
                }
            }
            Event::CreateGroup => self.create_group(),
            Event::SendGroup { client, body } => self.send_group(client, body),
            Event::Crash(p) => {
                let node = &self.providers[p];
                let idle = node
                    .machine
                    .as_ref()
                    .is_some_and(|m| !m.commit_outstanding());
                if node.deferred && idle && self.commit_rng.next_u32().is_multiple_of(2) {
                    // Crash at the provider's next batch instead (or at the restart).
                    if self.config.trace {
                        eprintln!(
                            "{:>8} CRASH provider {p} at its next batch",
                            self.now.0 - T0.0
                        );
                    }
                    self.providers[p].crash_at_commit = true;
                } else {
                    if self.config.trace {
                        eprintln!("{:>8} CRASH provider {p}", self.now.0 - T0.0);
                    }
                    self.crash(p);
                }
            }
            Event::Restart(p) => {
                if self.providers[p].crash_at_commit {
                    // No batch came while it was to crash: it crashes now and restarts.
                    if self.config.trace {
                        eprintln!("{:>8} CRASH provider {p}", self.now.0 - T0.0);
                    }
                    self.crash(p);
                }
                if self.providers[p].machine.is_none() {
                    self.start_provider(p);
                }
            }
            Event::CommitApply {
                provider,
                incarnation,
                batch,
            } => self.apply_batch(provider, incarnation, batch),
            Event::Committed {
                provider,
                incarnation,
                id,
                result,
            } => {
                let node = &mut self.providers[provider];
                if node.incarnation == incarnation
                    && let Some(m) = &mut node.machine
                {
                    m.handle_input(self.now, ProviderInput::Committed { id, result });
                    self.touched.insert(Node::Provider(provider));
                }
            }
            Event::Partition { a, b } => {
                self.report.partitions += 1;
                self.partitioned.insert((a.min(b), a.max(b)));
                // Connections between them time out.
                let mut cut: Vec<u64> = self
                    .links
                    .iter()
                    .filter(|(_, l)| {
                        l.open
                            && matches!(
                                (l.a, l.b),
                                (Node::Provider(x), Node::Provider(y))
                                    if (x.min(y), x.max(y)) == (a.min(b), a.max(b))
                            )
                    })
                    .map(|(c, _)| *c)
                    .collect();
                // In connection order: `links` is a HashMap, and the order of the cuts
                // decides the order in which the providers draw their backoff jitter.
                cut.sort_unstable();
                for c in cut {
                    self.cut(c);
                }
            }
            Event::Heal { a, b } => {
                self.partitioned.remove(&(a.min(b), a.max(b)));
            }
        }
    }

    /// The first client creates a group of every simulated user, fetching the device
    /// lists it lacks first; tried again every 2 s until the group is asked for.
    fn create_group(&mut self) {
        let now = self.now;
        self.touched.insert(Node::Client(0));
        let mut members: Vec<Address> = self.clients.iter().map(|c| c.address.clone()).collect();
        members.sort();
        members.dedup();
        let me = self.clients[0].address.clone();
        let machine = &mut self.clients[0].machine;
        let unknown: Vec<Address> = members
            .iter()
            .filter(|a| **a != me && machine.account().contacts().get(a).is_none())
            .cloned()
            .collect();
        if unknown.is_empty() {
            match machine.create_group(now, "everyone", &members) {
                Ok(_) => return,
                Err(e) => {
                    self.report
                        .violations
                        .push(format!("create_group refused: {e}"));
                    return;
                }
            }
        }
        for a in &unknown {
            let _ = machine.fetch_device_list(now, a);
        }
        self.schedule(now.saturating_add(2_000), Event::CreateGroup);
    }

    /// A group message from `client`, once it holds the group (tried again every 2 s).
    fn send_group(&mut self, client: usize, body: Vec<u8>) {
        let now = self.now;
        self.touched.insert(Node::Client(client));
        let machine = &mut self.clients[client].machine;
        let Some(state) = machine.groups().next().cloned() else {
            self.schedule(now.saturating_add(2_000), Event::SendGroup { client, body });
            return;
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        self.report.sent += 1;
        match machine.send_group(now, state.id(), Content::Text(Text::plain(&text))) {
            Ok(id) => {
                self.by_client_send.insert((client, id), ());
                let sender_device = self.clients[client].machine.account().device().id();
                let expected: BTreeSet<(Address, DeviceId)> = self
                    .clients
                    .iter()
                    .filter(|c| state.role(&c.address).is_some())
                    .map(|c| (c.address.clone(), c.machine.account().device().id()))
                    .filter(|(_, d)| *d != sender_device)
                    .collect();
                let log = self.messages.entry(id).or_default();
                log.sender = client;
                log.expected = expected;
            }
            Err(e) => self
                .report
                .violations
                .push(format!("group send refused by client {client}: {e}")),
        }
    }

    fn crash(&mut self, p: usize) {
        self.providers[p].crash_at_commit = false;
        let Some(machine) = self.providers[p].machine.take() else {
            return;
        };
        self.report.crashes += 1;
        self.report.early_deliveries += machine.stats().early_deliveries;
        if machine.commit_outstanding() {
            self.report.commit_crashes += 1;
        }
        self.deadlines.remove(&Node::Provider(p));
        // Only what the store made durable survives (the node keeps its handle); the
        // events of a batch this incarnation handed out are dropped when they come.
        let conns: Vec<u64> = self.providers[p].conns.iter().copied().collect();
        for c in conns {
            self.cut(c);
        }
        self.providers[p].conns.clear();
    }

    /// Closes a link from the network's side: both ends learn after a delay.
    fn cut(&mut self, conn: u64) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if !link.open {
            return;
        }
        link.open = false;
        let (a, b) = (link.a, link.b);
        let d1 = self.delay();
        let d2 = self.delay();
        self.schedule(self.now.saturating_add(d1), Event::Closed { conn, to: a });
        self.schedule(self.now.saturating_add(d2), Event::Closed { conn, to: b });
    }

    fn notify_closed(&mut self, conn: u64, to: Node) {
        let now = self.now;
        self.touched.insert(to);
        match to {
            Node::Provider(p) => {
                if self.providers[p].conns.remove(&conn)
                    && let Some(m) = &mut self.providers[p].machine
                {
                    m.handle_input(
                        now,
                        ProviderInput::Closed {
                            conn: ConnectionId(conn),
                        },
                    );
                }
            }
            Node::Client(c) => {
                if self.clients[c].conn == Some(conn) {
                    self.clients[c].conn = None;
                    self.clients[c]
                        .machine
                        .handle_input(now, ClientInput::Disconnected);
                }
            }
        }
    }

    fn connected(&mut self, node: Node, conn: u64, direction: Direction) {
        let now = self.now;
        self.touched.insert(node);
        match node {
            Node::Provider(p) => {
                let node = &mut self.providers[p];
                if let Some(m) = &mut node.machine {
                    node.conns.insert(conn);
                    m.handle_input(
                        now,
                        ProviderInput::Connected {
                            conn: ConnectionId(conn),
                            direction,
                            binding: Bytes::new(),
                        },
                    );
                } else {
                    self.cut(conn);
                }
            }
            Node::Client(c) => {
                self.clients[c].conn = Some(conn);
                self.clients[c].machine.handle_input(
                    now,
                    ClientInput::Connected {
                        binding: Bytes::new(),
                    },
                );
            }
        }
    }

    fn deliver(&mut self, conn: u64, to: Node, bytes: Bytes) {
        let now = self.now;
        self.touched.insert(to);
        match to {
            Node::Provider(p) => {
                if let Some(m) = &mut self.providers[p].machine {
                    m.handle_input(
                        now,
                        ProviderInput::Received {
                            conn: ConnectionId(conn),
                            bytes,
                        },
                    );
                }
            }
            Node::Client(c) => {
                if self.clients[c].conn == Some(conn) {
                    self.clients[c]
                        .machine
                        .handle_input(now, ClientInput::Received(bytes));
                }
            }
        }
    }

    /// Records the items of a `Deliver` frame a provider sends to client `c` by `seq`, and
    /// reports a number that went out with another item before.
    fn check_seqs(&mut self, c: usize, bytes: &[u8]) {
        let Ok(crate::wire::frame::Body::Deliver(d)) = crate::protocol::decode(bytes) else {
            return;
        };
        for item in d.items {
            let body = crate::wire::MailboxItem {
                seq: 0,
                item: item.item,
            };
            let hash = crate::crypto::sha256(&prost::Message::encode_to_vec(&body));
            let was = *self.seq_items.entry((c, item.seq)).or_insert(hash);
            if was != hash {
                self.report.violations.push(format!(
                    "client {c} was sent two different items under seq {}",
                    item.seq
                ));
            }
        }
    }

    /// Puts a frame on the network, with loss, duplication and delay.
    fn transmit(&mut self, conn: u64, from: Node, bytes: Bytes) {
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        if !link.open {
            return;
        }
        let to = if link.a == from { link.b } else { link.a };
        self.report.frames += 1;
        self.observe(from, to, &bytes);
        let faulty = self.faulty();
        if faulty && self.blocked(from, to) {
            self.report.dropped += 1;
            return;
        }
        let is_client = matches!(from, Node::Client(_)) || matches!(to, Node::Client(_));
        if faulty && is_client && self.chance(self.config.client_cut_ppm) {
            self.report.cuts += 1;
            self.cut(conn);
            return;
        }
        if faulty && self.chance(self.config.loss_ppm) {
            self.report.dropped += 1;
            return;
        }
        let copies = if faulty && self.chance(self.config.duplicate_ppm) {
            self.report.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = if faulty {
                self.delay()
            } else {
                self.config.min_delay_ms
            };
            self.schedule(
                self.now.saturating_add(d),
                Event::Frame {
                    conn,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// Watches frames: what clients submit (the expected recipients), and that no
    /// provider ever handles plaintext.
    fn observe(&mut self, from: Node, to: Node, bytes: &Bytes) {
        if contains(bytes, PLAINTEXT_CANARY) {
            self.report
                .violations
                .push(format!("plaintext on the wire from {from:?} to {to:?}"));
        }
        if let (Node::Provider(_), Node::Provider(_)) = (from, to)
            && let Ok(wire::frame::Body::Request(r)) = protocol::decode(bytes)
            && let Some(wire::request::Body::Relay(relay)) = r.body
        {
            self.report.group_relays += relay.groups.len() as u64;
        }
        if let (Node::Client(_), Node::Provider(_)) = (from, to)
            && let Ok(wire::frame::Body::Request(r)) = protocol::decode(bytes)
            && let Some(wire::request::Body::Submit(s)) = r.body
        {
            for e in s.envelopes {
                if let Ok(env) = UnverifiedEnvelope::decode(e) {
                    let h = env.claimed_header();
                    if let Some(log) = self.messages.get_mut(&h.message_id) {
                        log.expected
                            .insert((h.recipient.clone(), h.recipient_device));
                    }
                    if self
                        .attacker
                        .as_ref()
                        .is_some_and(|a| a.fake_devices.contains(&h.recipient_device))
                    {
                        self.report.sealed_to_attacker += 1;
                    }
                }
            }
        }
    }

    fn open_link(&mut self, a: Node, b: Node) -> u64 {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.links.insert(conn, Link { a, b, open: true });
        conn
    }

    fn drain_all(&mut self) {
        // Draining one node feeds others only through scheduled events or a connection
        // being opened (which touches the other side); drain until nothing is touched.
        while let Some(n) = self.touched.pop_first() {
            match n {
                Node::Provider(p) => self.drain_provider(p),
                Node::Client(c) => self.drain_client(c),
            }
        }
    }

    fn drain_provider(&mut self, p: usize) {
        let now = self.now;
        loop {
            let Some(m) = &mut self.providers[p].machine else {
                return;
            };
            let out = m.poll_output(now);
            match out {
                ProviderOutput::Commit(batch) => self.on_commit(p, batch),
                ProviderOutput::Timeout(t) => {
                    match t {
                        Some(t) => self.deadlines.insert(Node::Provider(p), t),
                        None => self.deadlines.remove(&Node::Provider(p)),
                    };
                    return;
                }
                ProviderOutput::Transmit { conn, bytes } => {
                    let to_client = self.links.get(&conn.0).and_then(|l| match (l.a, l.b) {
                        (Node::Client(c), _) | (_, Node::Client(c)) => Some(c),
                        _ => None,
                    });
                    // What the provider itself sends (before any attack tampers with it).
                    if let Some(c) = to_client {
                        self.check_seqs(c, &bytes);
                    }
                    let bytes = match (&mut self.attacker, to_client) {
                        (Some(a), Some(c)) if p == 1 => {
                            let cert = self.clients[c].machine.account().device().certificate();
                            a.tamper(bytes, now, Some(cert))
                        }
                        _ => vec![bytes],
                    };
                    for b in bytes {
                        self.transmit(conn.0, Node::Provider(p), b);
                    }
                }
                ProviderOutput::Close { conn } => {
                    self.providers[p].conns.remove(&conn.0);
                    if let Some(link) = self.links.get_mut(&conn.0)
                        && link.open
                    {
                        link.open = false;
                        let other = if link.a == Node::Provider(p) {
                            link.b
                        } else {
                            link.a
                        };
                        let d = self.delay();
                        self.schedule(
                            now.saturating_add(d),
                            Event::Closed {
                                conn: conn.0,
                                to: other,
                            },
                        );
                    }
                }
                ProviderOutput::Connect { domain } => {
                    let target = self.providers.iter().position(|n| n.domain == domain);
                    let reachable = target.is_some_and(|t| {
                        self.providers[t].machine.is_some()
                            && !(self.faulty()
                                && self.blocked(Node::Provider(p), Node::Provider(t)))
                    });
                    match target {
                        Some(t) if reachable => {
                            let conn = self.open_link(Node::Provider(p), Node::Provider(t));
                            let key = self.providers[t].public;
                            self.providers[p].conns.insert(conn);
                            // The connector's side is connected at once; the acceptor's
                            // with the first frame's arrival at the latest.
                            self.connected(
                                Node::Provider(p),
                                conn,
                                Direction::Outbound { domain, key },
                            );
                            self.connected(Node::Provider(t), conn, Direction::Inbound);
                        }
                        _ => {
                            if let Some(m) = &mut self.providers[p].machine {
                                m.handle_input(now, ProviderInput::ConnectFailed { domain });
                            }
                        }
                    }
                }
                ProviderOutput::Resolve { domain } => {
                    let key = self
                        .providers
                        .iter()
                        .find(|n| n.domain == domain)
                        .map(|n| n.public);
                    if let Some(m) = &mut self.providers[p].machine {
                        m.handle_input(now, ProviderInput::Resolved { domain, key });
                    }
                }
                ProviderOutput::Event(e) => {
                    if self.config.trace {
                        eprintln!("{:>8} provider {p}: {e:?}", now.0 - T0.0);
                    }
                }
            }
        }
    }

    /// A deferred provider handed out a batch: it reaches the store after a simulated
    /// delay, or, if the provider is to crash mid-commit, the provider crashes now with
    /// the batch either durable or lost.
    fn on_commit(&mut self, p: usize, batch: CommitBatch) {
        let node = &self.providers[p];
        if node.crash_at_commit {
            let durable = self.commit_rng.next_u32().is_multiple_of(2);
            if self.config.trace {
                eprintln!(
                    "{:>8} CRASH provider {p} during batch {} ({})",
                    self.now.0 - T0.0,
                    batch.id,
                    if durable { "durable" } else { "lost" }
                );
            }
            if durable {
                let _ = node.store.lock().commit(&batch.ops);
            }
            self.crash(p);
            return;
        }
        let delay = 1 + self.commit_rng.next_u64() % 20;
        let incarnation = node.incarnation;
        self.schedule(
            self.now.saturating_add(delay),
            Event::CommitApply {
                provider: p,
                incarnation,
                batch,
            },
        );
    }

    /// A batch reaches the store (unless the provider that handed it out crashed), and
    /// its answer goes back to the provider a moment later (a crash in between loses
    /// the answer, not the batch).
    fn apply_batch(&mut self, p: usize, incarnation: u64, batch: CommitBatch) {
        let node = &self.providers[p];
        if node.incarnation != incarnation || node.machine.is_none() {
            return;
        }
        let fail = self.faulty() && {
            let ppm = self.config.commit_failure_ppm;
            ppm > 0 && self.commit_rng.next_u32() % 1_000_000 < ppm
        };
        let result = {
            let mut store = self.providers[p].store.lock();
            if fail {
                store.fail_next_commits(1);
            }
            store.commit(&batch.ops)
        };
        if result.is_err() {
            self.report.commit_failures += 1;
        }
        let delay = 1 + self.commit_rng.next_u64() % 3;
        self.schedule(
            self.now.saturating_add(delay),
            Event::Committed {
                provider: p,
                incarnation,
                id: batch.id,
                result,
            },
        );
    }

    fn drain_client(&mut self, c: usize) {
        let now = self.now;
        loop {
            let out = self.clients[c].machine.poll_output(now);
            match out {
                ClientOutput::Timeout(t) => {
                    match t {
                        Some(t) => self.deadlines.insert(Node::Client(c), t),
                        None => self.deadlines.remove(&Node::Client(c)),
                    };
                    return;
                }
                ClientOutput::Transmit(bytes) => {
                    if let Some(conn) = self.clients[c].conn {
                        self.transmit(conn, Node::Client(c), bytes);
                    }
                }
                ClientOutput::Close => {
                    if let Some(conn) = self.clients[c].conn.take() {
                        if let Some(link) = self.links.get_mut(&conn) {
                            link.open = false;
                        }
                        let p = self.clients[c].provider;
                        let d = self.delay();
                        self.schedule(
                            now.saturating_add(d),
                            Event::Closed {
                                conn,
                                to: Node::Provider(p),
                            },
                        );
                    }
                }
                ClientOutput::Connect => {
                    let p = self.clients[c].provider;
                    if self.providers[p].machine.is_some() {
                        let conn = self.open_link(Node::Client(c), Node::Provider(p));
                        self.clients[c].conn = Some(conn);
                        self.connected(Node::Provider(p), conn, Direction::Inbound);
                        self.clients[c].machine.handle_input(
                            now,
                            ClientInput::Connected {
                                binding: Bytes::new(),
                            },
                        );
                    } else {
                        self.clients[c]
                            .machine
                            .handle_input(now, ClientInput::Disconnected);
                    }
                }
                ClientOutput::Event(e) => self.on_client_event(c, e),
            }
        }
    }

    fn on_client_event(&mut self, c: usize, e: ClientEvent) {
        if self.config.trace {
            eprintln!(
                "{:>8} client {c} ({}): {e:?}",
                self.now.0 - T0.0,
                self.clients[c].address
            );
        }
        match e {
            ClientEvent::Message(m) => {
                if !m.missing.is_empty() {
                    self.detected.insert(c);
                }
                if let Content::Text(_) = m.content {
                    self.report.deliveries += 1;
                    self.report.missing_reported += m.missing.len();
                    let log = self.messages.entry(m.message_id).or_default();
                    *log.delivered.entry(c).or_default() += 1;
                    if log.delivered[&c] > 1 {
                        let v = format!(
                            "message {:?} surfaced twice on client {c} ({})",
                            m.message_id, self.clients[c].address
                        );
                        self.report.violations.push(v);
                    }
                    if let Some(a) = &self.attacker
                        && a.is_forged(&m)
                    {
                        let v = format!("a forged message reached the app of client {c}");
                        self.report.violations.push(v);
                    }
                } else {
                    self.report.missing_reported += m.missing.len();
                }
            }
            ClientEvent::DeliveredToProvider { message_id } => {
                if let Some(log) = self.messages.get_mut(&message_id)
                    && log.sender == c
                {
                    log.accepted = true;
                    self.report.accepted += 1;
                }
            }
            ClientEvent::Undeliverable {
                message_id,
                recipient,
                device,
                ..
            } => {
                if let Some(log) = self.messages.get_mut(&message_id)
                    && log.sender == c
                {
                    log.undeliverable.insert(device.map(|d| (recipient, d)));
                }
            }
            ClientEvent::GroupMessage(m) => {
                if let Content::Text(_) = m.content {
                    self.report.deliveries += 1;
                    self.report.group_deliveries += 1;
                    let log = self.messages.entry(m.message_id).or_default();
                    *log.delivered.entry(c).or_default() += 1;
                    if log.delivered[&c] > 1 {
                        let v = format!(
                            "group message {:?} surfaced twice on client {c} ({})",
                            m.message_id, self.clients[c].address
                        );
                        self.report.violations.push(v);
                    }
                }
            }
            ClientEvent::GroupMessageFailed { message_id, .. } => {
                if let Some(log) = self.messages.get_mut(&message_id)
                    && log.sender == c
                {
                    log.undeliverable.insert(None);
                }
            }
            ClientEvent::GroupItemRejected { .. } | ClientEvent::GroupChangeFailed { .. } => {
                self.report.rejected += 1;
                self.detected.insert(c);
            }
            ClientEvent::DeliveredToDevice { .. } => self.report.receipts += 1,
            ClientEvent::Rejected { .. } => {
                self.report.rejected += 1;
                self.detected.insert(c);
            }
            ClientEvent::IdentityChanged { .. } => {
                self.report.identity_changes += 1;
                self.detected.insert(c);
            }
            _ => {}
        }
    }

    /// Checks the invariants of the module documentation.
    fn check(&mut self) {
        let mut v = Vec::new();
        let client_of: HashMap<(Address, DeviceId), usize> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.address.clone(), c.machine.account().device().id()), i))
            .collect();
        // Only the dropping provider may keep messages from its users (that is its
        // attack; the victims' gap reports detect it).
        #[cfg(test)]
        let strict = self.strict;
        #[cfg(not(test))]
        let strict = false;
        // A malicious provider can always deny service to its own users; that is
        // excused where the victim's app was told something is wrong (or, for the
        // dropping provider, always: its victims see gaps only if later messages come).
        let detected = &self.detected;
        let attacked = |a: &Address, client: usize| {
            !strict
                && self.attacker.as_ref().is_some_and(|x| {
                    a.is_at(x.domain()) && (x.attack == Attack::Drop || detected.contains(&client))
                })
        };
        let mut undeliverable = 0;
        for (id, log) in &self.messages {
            if !self.by_client_send.contains_key(&(log.sender, *id)) {
                continue;
            }
            let whole_undeliverable = log.undeliverable.contains(&None);
            if !log.accepted && log.undeliverable.is_empty() {
                v.push(format!(
                    "message {id:?} from client {} neither accepted nor reported undeliverable",
                    log.sender
                ));
                continue;
            }
            if !log.undeliverable.is_empty() {
                undeliverable += 1;
            }
            if !log.accepted {
                continue;
            }
            for (addr, dev) in &log.expected {
                let Some(&rc) = client_of.get(&(addr.clone(), *dev)) else {
                    continue;
                };
                let n = log.delivered.get(&rc).copied().unwrap_or(0);
                let reported =
                    whole_undeliverable || log.undeliverable.contains(&Some((addr.clone(), *dev)));
                if n == 0 && !reported && !attacked(addr, rc) {
                    v.push(format!(
                        "message {id:?} accepted but never reached {addr} device {dev:?} \
                         and was not reported undeliverable"
                    ));
                }
            }
        }
        self.report.undeliverable = undeliverable;
        for (i, p) in self.providers.iter().enumerate() {
            let Some(m) = &p.machine else {
                v.push(format!("provider {i} down at the end"));
                continue;
            };
            if m.store()
                .lock()
                .values()
                .any(|value| contains(value, PLAINTEXT_CANARY))
            {
                v.push(format!("plaintext in provider {i}'s store"));
            }
            let s = m.stats();
            if s.max_mailbox_depth > crate::limits::MAX_MAILBOX_DEPTH
                || s.max_remote_queue_depth > crate::limits::MAX_REMOTE_QUEUE_DEPTH
                || s.pending_fetches > crate::limits::MAX_PENDING_REMOTE_FETCHES
                || s.dedup_entries > crate::limits::MAX_DEDUP_ENTRIES
            {
                v.push(format!("provider {i} exceeded a limit: {s:?}"));
            }
        }
        for c in &self.clients {
            if c.machine.pending_messages() > crate::limits::MAX_CLIENT_PENDING {
                v.push(format!("client {} exceeded its pending limit", c.address));
            }
        }
        self.report.violations.extend(v);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs `seeds` with [`SimConfig::faulty`], returning the failing reports.
pub fn run_seeds<R: CryptoRng + SeedableRng<Seed = [u8; 32]>>(
    seeds: std::ops::Range<u64>,
    tweak: impl Fn(&mut SimConfig),
) -> Vec<SimReport> {
    seeds
        .filter_map(|seed| {
            let mut config = SimConfig::faulty(seed);
            tweak(&mut config);
            let report = Sim::<R>::new(config).run();
            (!report.violations.is_empty()).then_some(report)
        })
        .collect()
}
