//! Providers' fan-out of group messages (SPEC.md 20.2, 20.4), at 2, 10, 100 and 1,000
//! members spread over three providers.
//!
//! `cargo bench --bench group_fanout` builds three provider state machines in memory
//! (MemoryStore: the CPU of the fan-out, no disk), lets each hold a third of the
//! members (one device each), connects the sender's device and the providers to each
//! other through the real handshakes, and then hands the sender's provider `ITERATIONS`
//! group envelopes, each as one `SubmitGroup` naming every member. It times
//!
//! * the **sender's provider**: one `SubmitGroup` in, committed, the local copies stored
//!   and one `Relay` per other provider out;
//! * a **recipient provider**: one relayed group item in, committed, a copy in each of its
//!   members' device mailboxes;
//!
//! and counts the frames and bytes between providers per message: one relay per recipient
//! provider, whatever the member count. Figures are medians over the iterations, printed
//! as a table; `KOGGE_FANOUT_ITERATIONS` changes the count.
//!
//! The frames this bench hands the provider are encoded with its own protobuf structs
//! (the crate keeps its generated wire types private), from `proto/kogge/v1/protocol.proto`.

// Benchmarks measure wall-clock time and stop loudly when a fixture cannot be built.
#![allow(clippy::disallowed_methods, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use kogge::UnixMillis;
use kogge::address::{Address, Domain};
use kogge::client::{Client, ClientConfig, ClientInput, ClientOutput};
use kogge::envelope::{Content, MessageId, Text};
use kogge::group::{GroupAction, GroupMember, GroupRole, GroupSender, GroupState, Sequencer};
use kogge::identity::{Device, DeviceKeyPair, DeviceList, IdentityKeyPair, ProviderKeyPair};
use kogge::limits::MAX_GROUP_CHANGE_MEMBERS;
use kogge::protocol::ConnectionId;
use kogge::provider::{
    Direction, Provider, ProviderConfig, ProviderInput, ProviderLimits, ProviderOutput,
};
use kogge::session::Account;
use kogge::store::MemoryStore;
use prost::Message as _;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T0: UnixMillis = UnixMillis(1_800_000_000_000);
const YEAR_MS: u64 = 365 * 24 * 3_600_000;
const PROVIDERS: usize = 3;
const SIZES: [usize; 4] = [2, 10, 100, 1000];

// The few frames this bench sends, from protocol.proto.
#[derive(Clone, PartialEq, prost::Message)]
struct Frame {
    #[prost(oneof = "FrameBody", tags = "5")]
    body: Option<FrameBody>,
}
#[derive(Clone, PartialEq, prost::Oneof)]
enum FrameBody {
    #[prost(message, tag = "5")]
    Request(Request),
}
#[derive(Clone, PartialEq, prost::Message)]
struct Request {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(oneof = "RequestBody", tags = "8")]
    body: Option<RequestBody>,
}
#[derive(Clone, PartialEq, prost::Oneof)]
enum RequestBody {
    #[prost(message, tag = "8")]
    SubmitGroup(SubmitGroup),
}
#[derive(Clone, PartialEq, prost::Message)]
struct SubmitGroup {
    #[prost(bytes = "vec", tag = "1")]
    envelope: Vec<u8>,
    #[prost(string, repeated, tag = "2")]
    recipients: Vec<String>,
}

type P = Provider<MemoryStore, ChaCha20Rng>;

/// A frame in flight: to provider `to` (or to the client if `None`) on `conn`.
struct Wire {
    to: Option<usize>,
    conn: u64,
    bytes: Bytes,
}

struct Mesh {
    providers: Vec<P>,
    keys: Vec<ProviderKeyPair>,
    domains: Vec<Domain>,
    client: Client<ChaCha20Rng>,
    /// Connection id -> its two ends (provider index or `None` for the client).
    links: Vec<(u64, Option<usize>, Option<usize>)>,
    next_conn: u64,
    now: UnixMillis,
    queue: VecDeque<Wire>,
    /// Relay frames seen between providers since the last reset: (to, bytes).
    relays: Vec<(usize, usize)>,
}

impl Mesh {
    fn other_end(&self, conn: u64, from: Option<usize>) -> Option<Option<usize>> {
        self.links
            .iter()
            .find(|(c, _, _)| *c == conn)
            .map(|(_, a, b)| if *a == from { *b } else { *a })
    }

    /// Drains provider `p`'s outputs onto the queue; returns the frames it sent.
    fn drain_provider(&mut self, p: usize) -> usize {
        let mut sent = 0;
        loop {
            match self.providers[p].poll_output(self.now) {
                ProviderOutput::Timeout(_) => return sent,
                // These providers commit inline (no `defer_commits`).
                ProviderOutput::Commit(_) => {}
                ProviderOutput::Transmit { conn, bytes } => {
                    sent += 1;
                    if let Some(to) = self.other_end(conn.0, Some(p)) {
                        self.queue.push_back(Wire {
                            to,
                            conn: conn.0,
                            bytes,
                        });
                    }
                }
                ProviderOutput::Connect { domain } => {
                    let t = self
                        .domains
                        .iter()
                        .position(|d| *d == domain)
                        .expect("a known provider");
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    self.links.push((conn, Some(p), Some(t)));
                    let key = self.keys[t].public();
                    self.providers[p].handle_input(
                        self.now,
                        ProviderInput::Connected {
                            conn: ConnectionId(conn),
                            direction: Direction::Outbound { domain, key },
                            binding: Bytes::new(),
                        },
                    );
                    self.providers[t].handle_input(
                        self.now,
                        ProviderInput::Connected {
                            conn: ConnectionId(conn),
                            direction: Direction::Inbound,
                            binding: Bytes::new(),
                        },
                    );
                }
                ProviderOutput::Resolve { domain } => {
                    let key = self
                        .domains
                        .iter()
                        .position(|d| *d == domain)
                        .map(|i| self.keys[i].public());
                    self.providers[p]
                        .handle_input(self.now, ProviderInput::Resolved { domain, key });
                }
                ProviderOutput::Close { .. } | ProviderOutput::Event(_) => {}
            }
        }
    }

    fn drain_client(&mut self) {
        loop {
            match self.client.poll_output(self.now) {
                ClientOutput::Timeout(_) => return,
                ClientOutput::Transmit(bytes) => self.queue.push_back(Wire {
                    to: Some(0),
                    conn: 1,
                    bytes,
                }),
                ClientOutput::Connect => {
                    self.links.push((1, None, Some(0)));
                    self.providers[0].handle_input(
                        self.now,
                        ProviderInput::Connected {
                            conn: ConnectionId(1),
                            direction: Direction::Inbound,
                            binding: Bytes::new(),
                        },
                    );
                    self.client.handle_input(
                        self.now,
                        ClientInput::Connected {
                            binding: Bytes::new(),
                        },
                    );
                }
                ClientOutput::Close | ClientOutput::Event(_) => {}
            }
        }
    }

    /// Delivers everything queued until the network is quiet.
    fn settle(&mut self) {
        loop {
            self.drain_client();
            for p in 0..self.providers.len() {
                self.drain_provider(p);
            }
            let Some(w) = self.queue.pop_front() else {
                return;
            };
            self.deliver(w);
        }
    }

    fn deliver(&mut self, w: Wire) {
        match w.to {
            Some(p) => {
                if is_relay(&w.bytes) {
                    self.relays.push((p, w.bytes.len()));
                }
                self.providers[p].handle_input(
                    self.now,
                    ProviderInput::Received {
                        conn: ConnectionId(w.conn),
                        bytes: w.bytes,
                    },
                );
            }
            None => self
                .client
                .handle_input(self.now, ClientInput::Received(w.bytes)),
        }
    }
}

/// Whether a frame is a `Relay` request (Frame.request = 5, Request.relay = 6): checked on
/// the bytes, as the bench has no decoder of its own for relays.
fn is_relay(bytes: &[u8]) -> bool {
    // 0x2a = field 5, length-delimited; then a varint length; then the Request, whose
    // relay body is field 6, length-delimited (0x32), after the id (field 1, 0x08).
    if bytes.first() != Some(&0x2a) {
        return false;
    }
    let mut i = 1;
    while bytes.get(i).is_some_and(|b| b & 0x80 != 0) {
        i += 1;
    }
    i += 1;
    if bytes.get(i) == Some(&0x08) {
        i += 1;
        while bytes.get(i).is_some_and(|b| b & 0x80 != 0) {
            i += 1;
        }
        i += 1;
    }
    bytes.get(i) == Some(&0x32)
}

struct User {
    identity: IdentityKeyPair,
    list: DeviceList,
    device: Device,
}

fn user(rng: &mut ChaCha20Rng, address: &Address) -> User {
    let identity = IdentityKeyPair::generate(rng);
    let device = Device::new(
        &identity,
        address.clone(),
        DeviceKeyPair::generate(rng),
        T0.saturating_sub(YEAR_MS),
        T0.saturating_add(YEAR_MS),
    )
    .expect("device");
    let list =
        DeviceList::sign(&identity, address, 1, T0, &[device.certificate().clone()]).expect("list");
    User {
        identity,
        list,
        device,
    }
}

struct Row {
    members: usize,
    sender_us: f64,
    recipient_us: f64,
    relays_per_message: f64,
    relay_bytes_per_message: f64,
    copies: usize,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn run(members: usize, iterations: usize) -> Row {
    let mut rng = ChaCha20Rng::from_seed([members as u8; 32]);
    let limits = ProviderLimits {
        client_burst: u32::MAX,
        client_rate: u32::MAX,
        provider_burst: u32::MAX,
        provider_rate: u32::MAX,
        ..ProviderLimits::default()
    };
    let mut providers = Vec::new();
    let mut keys = Vec::new();
    let mut domains = Vec::new();
    for i in 0..PROVIDERS {
        let key = ProviderKeyPair::generate(&mut rng);
        let domain = Domain::parse(&format!("p{i}.example")).expect("domain");
        let mut config = ProviderConfig::new(
            domain.clone(),
            ProviderKeyPair::from_secret_bytes(&key.secret_bytes()),
        );
        config.open_registration = true;
        config.limits = limits;
        let p = Provider::new(
            config,
            MemoryStore::new(),
            ChaCha20Rng::from_seed([i as u8 + 100; 32]),
            T0,
        )
        .expect("provider");
        providers.push(p);
        keys.push(key);
        domains.push(domain);
    }
    // Members: the sender at p0, the others round-robin over the providers.
    let sender_addr = Address::new("sender", &domains[0]).expect("address");
    let sender = user(&mut rng, &sender_addr);
    let mut others = Vec::new();
    for i in 1..members {
        let a = Address::new(&format!("m{i}"), &domains[i % PROVIDERS]).expect("address");
        let u = user(&mut rng, &a);
        providers[i % PROVIDERS]
            .add_user(u.list.clone())
            .expect("add user");
        others.push(u);
    }
    // The sender's group state, ordered by p0.
    let seq = Sequencer {
        domain: domains[0].clone(),
        key: keys[0].public(),
    };
    let member_entries: Vec<GroupMember> = others
        .iter()
        .map(|u| GroupMember {
            address: u.list.address().clone(),
            identity: u.identity.public(),
            role: GroupRole::Member,
        })
        .collect();
    // At most MAX_GROUP_CHANGE_MEMBERS per change: created with the first ones, the
    // others added in further changes.
    let mut chunks = member_entries.chunks(MAX_GROUP_CHANGE_MEMBERS - 1);
    let create = GroupState::create_change(
        &sender.device,
        [7; 16],
        "bench".into(),
        seq,
        chunks
            .next()
            .map(<[GroupMember]>::to_vec)
            .unwrap_or_default(),
        T0,
    )
    .expect("create");
    let mut state = GroupState::create(&create.sequence(&keys[0])).expect("state");
    for chunk in chunks {
        let add = state
            .change(&sender.device, GroupAction::Add(chunk.to_vec()), T0)
            .expect("add");
        state = state.apply(&add.sequence(&keys[0])).expect("apply");
    }
    let mut chain = GroupSender::new(&state, &sender.device, 1, &mut rng).expect("chain");
    // The sender's device connects through the real handshake (registering itself).
    let (s, g) = sender.device.keys().secret_bytes();
    let device_copy = Device::from_parts(
        DeviceKeyPair::from_secret_bytes(&s, &g),
        sender.device.certificate().clone(),
    )
    .expect("device");
    let account = Account::new(device_copy, sender.list.clone(), T0, &mut rng).expect("account");
    let client = Client::new(
        account,
        ClientConfig::new(domains[0].clone(), keys[0].public()),
        ChaCha20Rng::from_seed([9; 32]),
        T0,
    );
    let mut mesh = Mesh {
        providers,
        keys,
        domains,
        client,
        links: Vec::new(),
        next_conn: 2,
        now: T0,
        queue: VecDeque::new(),
        relays: Vec::new(),
    };
    mesh.client.handle_timeout(T0);
    mesh.settle();
    assert!(mesh.client.is_online(), "the sender's device is not online");
    let recipients: Vec<String> = state
        .members()
        .map(|m| m.address.as_str().to_owned())
        .collect();
    let mut sender_us = Vec::new();
    let mut recipient_us = Vec::new();
    let mut relay_frames = 0usize;
    let mut relay_bytes = 0usize;
    let text = Content::Text(Text::plain("x".repeat(256)));
    for i in 0..iterations {
        mesh.now = mesh.now.saturating_add(10);
        let envelope = chain
            .seal(
                &sender.device,
                &state,
                &text,
                MessageId::random(&mut rng),
                mesh.now,
            )
            .expect("seal");
        let frame = Frame {
            body: Some(FrameBody::Request(Request {
                id: 1_000_000 + i as u64,
                body: Some(RequestBody::SubmitGroup(SubmitGroup {
                    envelope: envelope.to_vec(),
                    recipients: recipients.clone(),
                })),
            })),
        }
        .encode_to_vec();
        mesh.relays.clear();
        // The sender's provider: the submit in, its outputs out.
        let t = Instant::now();
        mesh.providers[0].handle_input(
            mesh.now,
            ProviderInput::Received {
                conn: ConnectionId(1),
                bytes: Bytes::from(frame),
            },
        );
        mesh.drain_provider(0);
        sender_us.push(t.elapsed().as_secs_f64() * 1e6);
        // Deliver: relays are timed at their recipient provider.
        while let Some(w) = mesh.queue.pop_front() {
            match w.to {
                Some(p) if p != 0 && is_relay(&w.bytes) => {
                    relay_frames += 1;
                    relay_bytes += w.bytes.len();
                    let t = Instant::now();
                    mesh.deliver(w);
                    mesh.drain_provider(p);
                    recipient_us.push(t.elapsed().as_secs_f64() * 1e6);
                }
                _ => mesh.deliver(w),
            }
            mesh.drain_client();
            for p in 0..PROVIDERS {
                mesh.drain_provider(p);
            }
        }
        if i == 0 && members > 1 {
            // The first message also opened the provider connections (handshakes); count
            // from the second on.
            sender_us.clear();
            recipient_us.clear();
            relay_frames = 0;
            relay_bytes = 0;
        }
    }
    let counted = iterations.saturating_sub(1).max(1) as f64;
    let copies: usize = mesh.providers.iter().map(|p| p.stats().mailbox_items).sum();
    Row {
        members,
        sender_us: median(&mut sender_us),
        recipient_us: median(&mut recipient_us),
        relays_per_message: relay_frames as f64 / counted,
        relay_bytes_per_message: relay_bytes as f64 / counted,
        copies: copies / iterations.max(1),
    }
}

fn main() {
    // `cargo bench` passes `--bench` (and filters); this bench has no filters.
    let iterations: usize = std::env::var("KOGGE_FANOUT_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
        .max(2);
    println!(
        "group fan-out over {PROVIDERS} providers (in memory, {iterations} messages per size; medians)"
    );
    println!(
        "{:>8} | {:>22} | {:>25} | {:>18} | {:>20} | {:>17}",
        "members",
        "sender's provider (µs)",
        "recipient provider (µs)",
        "relays per message",
        "relay bytes/message",
        "copies stored/msg"
    );
    for n in SIZES {
        let r = run(n, iterations);
        println!(
            "{:>8} | {:>22.1} | {:>25.1} | {:>18.2} | {:>20.0} | {:>17}",
            r.members,
            r.sender_us,
            r.recipient_us,
            r.relays_per_message,
            r.relay_bytes_per_message,
            r.copies
        );
    }
}
