//! Relay benchmarks: two providers federating over loopback QUIC, each with its own durable
//! store (every batch fsynced before anything it holds is acknowledged), 256-byte text
//! messages from devices at `one.example` to devices at `two.example`. The store is redb
//! (`RedbStore`) unless `KOGGE_RELAY_STORE=log` picks the append-only `LogStore`, so the
//! same bench compares the two; `KOGGE_RELAY_STORE=memory` (`MemoryStore`, nothing written
//! to disk) shows what the network path alone costs. The process uses the allocator of the
//! `kogge-provider` binary (mimalloc, `src/bin/kogge-provider/alloc.rs`), and
//! `KOGGE_RELAY_WORKERS=n` sets the worker threads of each runtime (default 2).
//!
//! `cargo bench --bench relay` (features `quic` and `redb`, both default) runs the criterion
//! group, then a report of its own (`-- summary-only`, a filter matching no group, runs only
//! the report; `KOGGE_BENCH_NO_SUMMARY=1` skips it; `KOGGE_RELAY_PARTS=saturation,paced`
//! picks parts of it, `KOGGE_RELAY_RUNS=n` sets the number of saturation runs and
//! `KOGGE_RELAY_TRACE=1` prints every 250 ms where the messages are):
//!
//! * **saturation**: 200,000 messages as fast as the providers take them: messages/s from
//!   the first submit to the last delivery acknowledged, the latency distribution under that
//!   load, and CPU seconds per message (the whole process, and split by thread: provider A,
//!   provider B, load generator); for each provider's store: commits, messages and store
//!   operations per commit, the committing thread's CPU per message, and the wall time per
//!   commit (which includes waiting for `fdatasync`); UDP datagrams the kernel dropped on
//!   full receive buffers; envelopes whose `Submit` was refused with a retryable error
//!   (A's queue towards B full) and sent again;
//! * **paced**: 100 messages/s for 30 s: latency from the sender's submit to the recipient
//!   device's receipt of the `Deliver`, p50 / p99 / max;
//! * **memory**: RSS per idle authenticated device connection (N devices connected to
//!   provider B, both ends of each connection live in this process), and RSS and store
//!   file bytes per message queued for offline devices;
//! * **fsync**: the latency of one 4 KiB write + `fdatasync` on the file system of the
//!   stores, which bounds the latency of anything durable.
//!
//! The criterion group `relay/saturation` sends 10,000 messages per iteration and reports
//! messages per second; each sample starts a fresh pair of providers and connects its
//! devices before the clock starts (the providers' dedup memory would recognise envelopes
//! sent before, so envelopes are never sent twice to one pair).
//!
//! # The path measured
//!
//! device → `Submit` → provider A stores durably, answers `Done` → `Relay` → provider B
//! stores durably in the mailbox, answers `RelayResult` → `Deliver` → device, which sends
//! `DeliverAck`. Each provider runs on its own tokio runtime (two worker threads, as a
//! provider process would on this machine); the load generator has a third. All three share
//! the machine's cores.
//!
//! # The load generator
//!
//! End-to-end encryption is the devices' job and is measured in `benches/session.rs`; here it
//! would only make the load generator the bottleneck. So every envelope is sealed before the
//! timed part, by real session accounts (steady-state Double Ratchet messages with a 256-byte
//! text, 549 bytes each), and devices are *raw*: they authenticate with the
//! real handshake (SPEC.md 16.3, signed with the device key) and then write `Submit` frames
//! (32 envelopes each, at most 64 requests in flight, as the reference client) and
//! `DeliverAck` frames themselves, with the protobuf types generated from `proto/`. The
//! `Client` state machine would seal every message as it sends (about 23 µs of Ed25519 and
//! ratchet work per message, PERF.md), which on two shared cores would cap the offered load
//! far below the providers' capacity. The recipient decodes each delivered envelope's header
//! (zero-copy) to find its message id; it does not open it.
//!
//! Providers keep their default limits (SPEC.md 16.10): the device request bucket (1000
//! requests, 500 per second, of up to 32 envelopes each) is why the load comes from 16
//! sender devices.

// Benchmarks measure wall-clock time: clippy.toml bans `Instant::now` for the sans-IO
// library, not for this harness.
#![allow(clippy::disallowed_methods)]
// A benchmark whose fixture cannot be built must stop loudly; there is no caller to report to.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use criterion::{Criterion, SamplingMode, Throughput};
use ed25519_dalek::Signer;
use kogge::UnixMillis;
use kogge::address::{Address, Domain};
use kogge::crypto::{Label, framed};
use kogge::envelope::{Content, Text, UnverifiedEnvelope};
use kogge::identity::{
    Device, DeviceKeyPair, DeviceList, IdentityKeyPair, ProviderKey, ProviderKeyPair,
};
use kogge::provider::{ProviderConfig, ProviderStats};
use kogge::resolve::{PeerInfo, ResolveError, Resolver, StaticDirectory};
use kogge::session::Account;
use kogge::store::{Contents, LogStore, MemoryStore, RedbStore, Store, StoreError, StoreOp};
use kogge::transport::quic::{self, ProviderServer, QuicConfig};
use prost::Message;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use tokio::runtime::Runtime;

/// The protobuf types of `proto/`, generated by the crate's build script.
#[allow(
    missing_docs,
    unreachable_pub,
    dead_code,
    clippy::all,
    clippy::pedantic
)]
mod wire {
    include!(concat!(env!("OUT_DIR"), "/kogge.v1.rs"));
}

/// The provider binary's allocator: the providers are measured as the binary runs them.
#[path = "../src/bin/kogge-provider/alloc.rs"]
mod alloc;

/// CPU time, dropped datagrams and load average, as `benches/transport.rs` reads them.
#[path = "shared/host.rs"]
mod host;
use host::{load_average, thread_cpu_ns, udp_drops};

type Rng20 = ChaCha20Rng;
type Server = ProviderServer<Timed, Rng20>;

const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
/// Bytes of text body per message.
const TEXT_LEN: usize = 256;
/// Sender devices (one per user at `one.example`), each paired with one recipient device
/// (one per user at `two.example`).
const PAIRS: usize = 16;
/// Messages in the saturation report.
const SATURATION_MESSAGES: usize = 200_000;
/// Messages per criterion iteration.
const CRITERION_BATCH: usize = 10_000;
/// Envelopes per `Submit` (`MAX_SUBMIT_ENVELOPES`).
const PER_SUBMIT: usize = kogge::limits::MAX_SUBMIT_ENVELOPES;
/// Requests a sender keeps in flight (`MAX_CLIENT_IN_FLIGHT`).
const WINDOW: usize = kogge::limits::MAX_CLIENT_IN_FLIGHT;
/// Paced rate and duration.
const PACED_RATE: u64 = 100;
const PACED_SECONDS: u64 = 30;
/// Idle devices for the memory figure.
const IDLE_DEVICES: usize = 1000;
/// Messages queued per offline device for the memory figure (below `MAX_MAILBOX_DEPTH`).
const QUEUED_PER_DEVICE: usize = 5_000;
/// Longest wait for any phase.
const WAIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Fixture: users, sessions and pre-sealed envelopes
// ---------------------------------------------------------------------------------------

/// One user with one device; `signing` is the device's Ed25519 seed, for the handshake.
struct User {
    address: Address,
    list: DeviceList,
    device: Device,
    signing: [u8; 32],
}

fn user(rng: &mut Rng20, address: Address, now: UnixMillis) -> (User, DeviceKeyPair) {
    let identity = IdentityKeyPair::generate(rng);
    let keys = DeviceKeyPair::generate(rng);
    let (signing, agreement) = keys.secret_bytes();
    let device = Device::new(
        &identity,
        address.clone(),
        keys,
        now.saturating_sub(YEAR_MS),
        now.saturating_add(YEAR_MS),
    )
    .expect("device");
    let list = DeviceList::sign(&identity, &address, 1, now, &[device.certificate().clone()])
        .expect("device list");
    let u = User {
        address,
        list,
        device,
        signing: *signing.expose(),
    };
    (u, DeviceKeyPair::from_secret_bytes(&signing, &agreement))
}

/// A sender, its recipient, and the sender's pre-sealed envelopes to the recipient.
struct Pair {
    sender: User,
    recipient: User,
    envelopes: Vec<Bytes>,
    /// Message id -> index in `envelopes`.
    index: HashMap<[u8; 16], u32>,
}

/// Two accounts with an established session (set up by the sender, answered by the
/// recipient), then `n` steady-state messages sealed from sender to recipient.
fn pair(seed: u64, n: usize, now: UnixMillis) -> Pair {
    let mut rng = Rng20::seed_from_u64(seed);
    let one = Domain::parse("one.example").expect("domain");
    let two = Domain::parse("two.example").expect("domain");
    let (sender, s_keys) = user(
        &mut rng,
        Address::new(&format!("s{seed}"), &one).unwrap(),
        now,
    );
    let (recipient, r_keys) = user(
        &mut rng,
        Address::new(&format!("r{seed}"), &two).unwrap(),
        now,
    );
    let device = |u: &User, keys: DeviceKeyPair| {
        Device::from_parts(keys, u.device.certificate().clone()).expect("same keys")
    };
    let mut a =
        Account::new(device(&sender, s_keys), sender.list.clone(), now, &mut rng).expect("account");
    let mut b = Account::new(
        device(&recipient, r_keys),
        recipient.list.clone(),
        now,
        &mut rng,
    )
    .expect("account");
    b.replenish_prekeys(now, &mut rng);
    a.update_device_list(recipient.list.clone()).expect("list");
    b.update_device_list(sender.list.clone()).expect("list");
    let one_time = b.prekeys().published().one_time_prekeys[0].id();
    let bundle = b.prekey_bundle(Some(one_time)).expect("bundle");
    a.add_bundle(&bundle, now, &mut rng).expect("add_bundle");
    let text = Content::Text(Text::plain(
        (0..TEXT_LEN)
            .map(|i| char::from(b' ' + (i % 94) as u8))
            .collect::<String>(),
    ));
    // One round trip, so that the sender no longer attaches the session setup.
    let first = only(
        a.encrypt(&recipient.address, &text, now, &mut rng)
            .expect("encrypt"),
    );
    b.decrypt(first, now, &mut rng).expect("decrypt");
    let reply = only(
        b.encrypt(&sender.address, &text, now, &mut rng)
            .expect("encrypt"),
    );
    a.decrypt(reply, now, &mut rng).expect("decrypt");
    let mut envelopes = Vec::with_capacity(n);
    let mut index = HashMap::with_capacity(n);
    for i in 0..n {
        let sent = a
            .encrypt(&recipient.address, &text, now, &mut rng)
            .expect("encrypt");
        index.insert(*sent.message_id.as_bytes(), i as u32);
        envelopes.push(only(sent));
    }
    Pair {
        sender,
        recipient,
        envelopes,
        index,
    }
}

fn only(sent: kogge::session::Sent) -> Bytes {
    assert_eq!(sent.envelopes.len(), 1, "one device per user");
    sent.envelopes.into_iter().next().expect("one").envelope
}

/// Every pair, sealed on two threads.
fn fixture(per_pair: usize) -> Vec<Arc<Pair>> {
    let now = quic::now();
    let t = Instant::now();
    let pairs: Vec<Arc<Pair>> = std::thread::scope(|s| {
        let halves: Vec<_> = (0..2)
            .map(|h| {
                s.spawn(move || {
                    (0..PAIRS)
                        .filter(|i| i % 2 == h)
                        .map(|i| (i, Arc::new(pair(i as u64, per_pair, now))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, Arc<Pair>)> = halves
            .into_iter()
            .flat_map(|h| h.join().expect("sealing thread"))
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, p)| p).collect()
    });
    let len = pairs[0].envelopes.first().map_or(0, Bytes::len);
    eprintln!(
        "relay: sealed {} envelopes of {len} bytes in {:.1} s",
        PAIRS * per_pair,
        t.elapsed().as_secs_f64()
    );
    pairs
}

// ---------------------------------------------------------------------------------------
// The test bed: two providers on their own runtimes, a load-generator runtime
// ---------------------------------------------------------------------------------------

/// What a provider's store commits cost: count, ops, CPU time of the committing thread
/// and wall time (which includes waiting for `fdatasync`).
#[derive(Default)]
struct StoreTimes {
    commits: AtomicU64,
    ops: AtomicU64,
    cpu_ns: AtomicU64,
    wall_ns: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default)]
struct StoreTotals {
    commits: u64,
    ops: u64,
    cpu_ns: u64,
    wall_ns: u64,
}

impl StoreTimes {
    fn totals(&self) -> StoreTotals {
        StoreTotals {
            commits: self.commits.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            cpu_ns: self.cpu_ns.load(Ordering::Relaxed),
            wall_ns: self.wall_ns.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Sub for StoreTotals {
    type Output = StoreTotals;
    fn sub(self, o: StoreTotals) -> StoreTotals {
        StoreTotals {
            commits: self.commits - o.commits,
            ops: self.ops - o.ops,
            cpu_ns: self.cpu_ns - o.cpu_ns,
            wall_ns: self.wall_ns - o.wall_ns,
        }
    }
}

/// The store engine the providers use: `KOGGE_RELAY_STORE`, `redb` (default) or `log`.
fn engine() -> &'static str {
    match std::env::var("KOGGE_RELAY_STORE").as_deref() {
        Ok("log") => "log",
        Ok("memory") => "memory",
        Ok("redb") | Err(_) => "redb",
        Ok(other) => panic!("KOGGE_RELAY_STORE={other}: expected redb, log or memory"),
    }
}

/// A store of the [`engine`] in the file `path`.
fn open_store(path: &Path) -> Box<dyn Store + Send> {
    match engine() {
        "log" => Box::new(LogStore::open(path).expect("log store")),
        "memory" => Box::new(MemoryStore::default()),
        _ => Box::new(RedbStore::open(path).expect("redb")),
    }
}

/// A store that records what its commits cost.
struct Timed {
    inner: Box<dyn Store + Send>,
    times: Arc<StoreTimes>,
}

impl Store for Timed {
    fn load(&mut self) -> Result<Contents, StoreError> {
        self.inner.load()
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.commit_owned(ops.to_vec())
    }

    fn commit_owned(&mut self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        let (cpu, wall, n) = (thread_cpu_ns(), Instant::now(), ops.len());
        let r = self.inner.commit_owned(ops);
        let t = &self.times;
        t.wall_ns
            .fetch_add(wall.elapsed().as_nanos() as u64, Ordering::Relaxed);
        t.cpu_ns
            .fetch_add(thread_cpu_ns().saturating_sub(cpu), Ordering::Relaxed);
        t.commits.fetch_add(1, Ordering::Relaxed);
        t.ops.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

/// A directory filled in as the servers start.
#[derive(Clone, Default)]
struct Directory(Arc<RwLock<StaticDirectory>>);

impl Resolver for Directory {
    fn resolve(&self, domain: &Domain) -> Result<PeerInfo, ResolveError> {
        self.0.read().expect("lock").resolve(domain)
    }
}

fn runtime(name: &str) -> Runtime {
    let workers = std::env::var("KOGGE_RELAY_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

struct Bed {
    // Field order is drop order: servers before their runtimes.
    a: Option<Server>,
    b: Option<Server>,
    store_a: Arc<StoreTimes>,
    store_b: Arc<StoreTimes>,
    rt_a: Runtime,
    rt_b: Runtime,
    load: Runtime,
    dir: tempfile::TempDir,
    endpoint: quinn::Endpoint,
}

fn tmp_root() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("relay-bench");
    std::fs::create_dir_all(&p).expect("tmp dir");
    p
}

impl Bed {
    fn new(pairs: &[Arc<Pair>]) -> Self {
        let dir = tempfile::tempdir_in(tmp_root()).expect("tempdir");
        let directory = Directory::default();
        let rt_a = runtime("prov-a");
        let rt_b = runtime("prov-b");
        let load = runtime("load");
        let mut rng = Rng20::seed_from_u64(7);
        let start = |rt: &Runtime, domain: &str, file: &str, rng: &mut Rng20| {
            let domain = Domain::parse(domain).expect("domain");
            let key = ProviderKeyPair::generate(rng);
            let config = ProviderConfig::new(domain.clone(), key);
            let times = Arc::new(StoreTimes::default());
            let store = Timed {
                inner: open_store(&dir.path().join(format!("{file}.{}", engine()))),
                times: times.clone(),
            };
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let _guard = rt.enter();
            let server = ProviderServer::start(
                config,
                store,
                Rng20::from_seed(seed),
                directory.clone(),
                "127.0.0.1:0".parse().expect("addr"),
                // Every device of the bench connects from 127.0.0.1, one host: lift the
                // per-host limit (SPEC.md 17.4) to the connection limit.
                QuicConfig {
                    max_connections_per_host: quic::MAX_CONNECTIONS,
                    ..QuicConfig::default()
                },
            )
            .expect("provider");
            directory.0.write().expect("lock").insert(PeerInfo {
                domain,
                endpoint: server.local_addr().to_string(),
                key: server.public_key(),
            });
            (server, times)
        };
        let (a, store_a) = start(&rt_a, "one.example", "a", &mut rng);
        let (b, store_b) = start(&rt_b, "two.example", "b", &mut rng);
        let senders: Vec<DeviceList> = pairs.iter().map(|p| p.sender.list.clone()).collect();
        let recipients: Vec<DeviceList> = pairs.iter().map(|p| p.recipient.list.clone()).collect();
        add_users(&rt_a, &a, senders);
        add_users(&rt_b, &b, recipients);
        let endpoint = {
            let _guard = load.enter();
            // Sized like the providers' sockets: the load generator stands for many
            // devices, and a burst dropped here would stall the recipients' connections.
            quic::client_endpoint("127.0.0.1:0".parse().expect("addr"), quic::UDP_BUFFER_BYTES)
                .expect("endpoint")
        };
        Self {
            a: Some(a),
            b: Some(b),
            store_a,
            store_b,
            rt_a,
            rt_b,
            load,
            dir,
            endpoint,
        }
    }

    fn a(&self) -> &Server {
        self.a.as_ref().expect("server a")
    }

    fn b(&self) -> &Server {
        self.b.as_ref().expect("server b")
    }

    fn stats(&self) -> (ProviderStats, ProviderStats) {
        let a = self.rt_a.block_on(self.a().stats()).expect("stats");
        let b = self.rt_b.block_on(self.b().stats()).expect("stats");
        (a, b)
    }

    /// Connects and authenticates a raw device of `u` to `server`.
    fn connect(&self, server: &Server, u: &User) -> RawDevice {
        let target = Target::of(server);
        self.load
            .block_on(RawDevice::connect(self.endpoint.clone(), target, u))
    }

    /// Bytes in the store files of providers A and B.
    fn store_bytes(&self) -> (u64, u64) {
        let size = |f: &str| {
            let path = self.dir.path().join(format!("{f}.{}", engine()));
            std::fs::metadata(path).map_or(0, |m| m.len())
        };
        (size("a"), size("b"))
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Graceful, so that the next bed's ports and files are free.
        if let Some(a) = self.a.take() {
            let _ = self.rt_a.block_on(a.shutdown());
        }
        if let Some(b) = self.b.take() {
            let _ = self.rt_b.block_on(b.shutdown());
        }
        self.endpoint.close(0u32.into(), b"done");
    }
}

fn add_users(rt: &Runtime, server: &Server, lists: Vec<DeviceList>) {
    rt.block_on(server.with_provider(move |p| {
        for l in lists {
            p.add_user(l).expect("add user");
        }
    }))
    .expect("provider");
}

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    domain: Domain,
    key: ProviderKey,
}

impl Target {
    fn of(s: &Server) -> Self {
        Self {
            addr: s.local_addr(),
            domain: s.domain().clone(),
            key: s.public_key(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw devices
// ---------------------------------------------------------------------------------------

/// One authenticated device connection driven by hand.
struct RawDevice {
    _connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

fn encode(body: wire::frame::Body, out: &mut BytesMut) {
    let frame = wire::Frame { body: Some(body) };
    let len = frame.encoded_len();
    out.reserve(4 + len);
    out.put_u32(len as u32);
    frame.encode(out).expect("encode");
}

impl RawDevice {
    async fn connect(endpoint: quinn::Endpoint, t: Target, u: &User) -> Self {
        let config =
            quic::client_config_for_device(&t.key, &QuicConfig::default()).expect("client config");
        let connection = endpoint
            .connect_with(config, t.addr, t.domain.as_str())
            .expect("connect")
            .await
            .expect("handshake");
        let (send, recv) = connection.open_bi().await.expect("stream");
        let mut binding = [0u8; quic::BINDING_LEN];
        connection
            .export_keying_material(&mut binding, quic::BINDING_LABEL, b"")
            .expect("binding");
        let mut d = Self {
            _connection: connection,
            send,
            recv,
            buf: BytesMut::new(),
        };
        // Fresh per connection (the nonce need not be secret here, only new).
        static NONCES: AtomicU64 = AtomicU64::new(1);
        let mut nonce = [0u8; 32];
        Rng20::seed_from_u64(NONCES.fetch_add(1, Ordering::Relaxed)).fill_bytes(&mut nonce);
        let mut out = BytesMut::new();
        encode(
            wire::frame::Body::Hello(wire::Hello {
                version: kogge::limits::PROTOCOL_VERSION,
                nonce: Bytes::copy_from_slice(&nonce),
                role: wire::Role::Device as i32,
                acceptor: t.domain.as_str().to_owned(),
            }),
            &mut out,
        );
        d.write(&mut out).await;
        let Some(wire::frame::Body::Challenge(ch)) = d.next().await else {
            panic!("no challenge");
        };
        let cert = u.device.certificate().encoded().clone();
        let input = framed(
            Label::AuthSignature,
            &[
                &ch.nonce,
                &nonce,
                t.domain.as_str().as_bytes(),
                &binding,
                &cert,
            ],
        );
        let signature = ed25519_dalek::SigningKey::from_bytes(&u.signing).sign(&input);
        encode(
            wire::frame::Body::Auth(wire::Auth {
                who: Some(wire::auth::Who::Device(wire::DeviceAuth {
                    certificate: cert,
                    device_list: Bytes::new(),
                })),
                signature: Bytes::copy_from_slice(&signature.to_bytes()),
            }),
            &mut out,
        );
        d.write(&mut out).await;
        match d.next().await {
            Some(wire::frame::Body::Welcome(_)) => d,
            other => panic!("not welcomed: {other:?}"),
        }
    }

    async fn write(&mut self, out: &mut BytesMut) {
        self.send.write_all(out).await.expect("write");
        out.clear();
    }

    /// The next whole frame already buffered, if any.
    fn buffered(&mut self) -> Option<wire::frame::Body> {
        let len = u32::from_be_bytes(self.buf.get(..4)?.try_into().ok()?) as usize;
        if self.buf.len() < 4 + len {
            return None;
        }
        self.buf.advance(4);
        let frame = self.buf.split_to(len).freeze();
        wire::Frame::decode(frame).expect("frame").body
    }

    /// Reads more of the stream; `false` at its end.
    async fn fill(&mut self) -> bool {
        match self.recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => {
                self.buf.put_slice(&c.bytes);
                true
            }
            _ => false,
        }
    }

    async fn next(&mut self) -> Option<wire::frame::Body> {
        loop {
            if let Some(b) = self.buffered() {
                return Some(b);
            }
            if !self.fill().await {
                return None;
            }
        }
    }
}

/// Shared progress of one run.
struct Progress {
    base: Instant,
    /// Per pair: nanoseconds since `base` at which each message was submitted (0: not yet).
    submitted: Vec<Vec<AtomicU64>>,
    /// Per pair: whether each message has been delivered.
    delivered: Vec<Mutex<Vec<bool>>>,
    delivered_count: AtomicUsize,
    /// Envelopes in `Submit`s refused with a retryable error (and sent again later).
    refused: AtomicUsize,
    /// Latencies in nanoseconds, submit to delivery.
    latencies: Mutex<Vec<u64>>,
    /// Latencies in nanoseconds, submit to the sender's provider's `Done` (stored durably).
    acks: Mutex<Vec<u64>>,
    expected: usize,
    done: tokio::sync::Notify,
}

impl Progress {
    /// `counts`: messages per pair (indices that may be sent); `expected`: deliveries
    /// that end the run.
    fn new(counts: &[usize], expected: usize) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            submitted: counts
                .iter()
                .map(|&n| (0..n).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            delivered: counts.iter().map(|&n| Mutex::new(vec![false; n])).collect(),
            delivered_count: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            latencies: Mutex::new(Vec::new()),
            acks: Mutex::new(Vec::new()),
            expected,
            done: tokio::sync::Notify::new(),
        })
    }

    fn nanos(&self) -> u64 {
        (self.base.elapsed().as_nanos() as u64).max(1)
    }
}

/// A sender: submits `pair.envelopes[range]` in `Submit`s of `per_submit` envelopes, at
/// most `WINDOW` requests in flight; `pace` spaces requests (paced runs). Retries what a
/// provider refuses with a retryable error.
async fn run_sender(
    mut d: RawDevice,
    pair: Arc<Pair>,
    who: usize,
    range: std::ops::Range<usize>,
    per_submit: usize,
    pace: Option<(Instant, Duration, usize)>,
    progress: Arc<Progress>,
) -> RawDevice {
    let chunks: Vec<std::ops::Range<usize>> = range
        .clone()
        .step_by(per_submit)
        .map(|s| s..(s + per_submit).min(range.end))
        .collect();
    let mut next_chunk = 0;
    let mut in_flight: HashMap<u64, usize> = HashMap::new();
    let mut acks = Vec::new();
    let mut retry: Vec<(Instant, usize)> = Vec::new();
    let mut next_id = 1u64;
    let mut out = BytesMut::new();
    loop {
        let now = Instant::now();
        // Fill the window: retries first, then new chunks (on schedule if paced).
        while in_flight.len() < WINDOW {
            let chunk = if let Some(pos) = retry.iter().position(|(at, _)| *at <= now) {
                retry.swap_remove(pos).1
            } else if next_chunk < chunks.len() {
                if let Some((start, every, stride)) = pace {
                    let at = start + every * u32::try_from(next_chunk * stride + who).unwrap();
                    if at > now {
                        break;
                    }
                }
                next_chunk += 1;
                next_chunk - 1
            } else {
                break;
            };
            let r = chunks[chunk].clone();
            let t = progress.nanos();
            for i in r.clone() {
                // First submission only: a retry does not restart the clock.
                let _ = progress.submitted[who][i].compare_exchange(
                    0,
                    t,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            let id = next_id;
            next_id += 1;
            in_flight.insert(id, chunk);
            encode(
                wire::frame::Body::Request(wire::Request {
                    id,
                    body: Some(wire::request::Body::Submit(wire::Submit {
                        envelopes: pair.envelopes[r].to_vec(),
                    })),
                }),
                &mut out,
            );
        }
        if !out.is_empty() {
            d.write(&mut out).await;
        }
        if next_chunk == chunks.len() && in_flight.is_empty() && retry.is_empty() {
            break;
        }
        // Wait for answers, or for the next scheduled send.
        let wake = pace
            .filter(|_| next_chunk < chunks.len())
            .map(|(start, every, stride)| {
                start + every * u32::try_from(next_chunk * stride + who).unwrap()
            })
            .into_iter()
            .chain(retry.iter().map(|(at, _)| *at))
            .min();
        let more = match wake {
            Some(at) if in_flight.len() < WINDOW || in_flight.is_empty() => {
                tokio::time::timeout_at(at.into(), d.fill())
                    .await
                    .unwrap_or(true)
            }
            _ => d.fill().await,
        };
        assert!(more, "provider closed the sender's stream");
        while let Some(body) = d.buffered() {
            let wire::frame::Body::Response(r) = body else {
                continue;
            };
            let Some(chunk) = in_flight.remove(&r.id) else {
                continue;
            };
            match r.body {
                Some(wire::response::Body::Done(_)) => {
                    let first = chunks[chunk].start;
                    let sent = progress.submitted[who][first].load(Ordering::Relaxed);
                    acks.push(progress.nanos().saturating_sub(sent));
                }
                Some(wire::response::Body::Error(e)) if e.retryable => {
                    progress
                        .refused
                        .fetch_add(chunks[chunk].len(), Ordering::Relaxed);
                    let wait = Duration::from_millis(e.retry_after_ms.max(50));
                    retry.push((Instant::now() + wait, chunk));
                }
                other => panic!("submit refused: {other:?}"),
            }
        }
    }
    progress.acks.lock().expect("lock").extend(acks);
    d
}

/// A recipient: acknowledges every delivered item, records each message's latency once.
async fn run_recipient(mut d: RawDevice, pair: Arc<Pair>, who: usize, progress: Arc<Progress>) {
    let mut out = BytesMut::new();
    loop {
        if !d.fill().await {
            return;
        }
        let mut seqs = Vec::new();
        let now = progress.nanos();
        let mut lat = Vec::new();
        while let Some(body) = d.buffered() {
            let wire::frame::Body::Deliver(del) = body else {
                continue;
            };
            let mut delivered = progress.delivered[who].lock().expect("lock");
            for item in del.items {
                seqs.push(item.seq);
                let Some(wire::mailbox_item::Item::Envelope(env)) = item.item else {
                    continue;
                };
                let env = UnverifiedEnvelope::decode(env).expect("envelope");
                let id = env.claimed_header().message_id;
                let Some(&i) = pair.index.get(id.as_bytes()) else {
                    continue;
                };
                let i = i as usize;
                if !std::mem::replace(&mut delivered[i], true) {
                    let sent = progress.submitted[who][i].load(Ordering::Relaxed);
                    lat.push(now.saturating_sub(sent));
                }
            }
        }
        if !lat.is_empty() {
            let n = lat.len();
            progress.latencies.lock().expect("lock").extend(lat);
            let total = progress.delivered_count.fetch_add(n, Ordering::AcqRel) + n;
            if total >= progress.expected {
                progress.done.notify_one();
            }
        }
        for chunk in seqs.chunks(kogge::limits::MAX_ACK_SEQS) {
            encode(
                wire::frame::Body::DeliverAck(wire::DeliverAck {
                    seqs: chunk.to_vec(),
                }),
                &mut out,
            );
        }
        if !out.is_empty() {
            d.write(&mut out).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------

/// CPU time (user + system) of this process's threads, by thread-name prefix.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    total: f64,
    prov_a: f64,
    prov_b: f64,
    load: f64,
}

fn ticks_per_second() -> f64 {
    // The kernel's USER_HZ; 100 on every Linux this runs on.
    100.0
}

fn cpu() -> Cpu {
    let stat_secs = |path: &Path| -> Option<f64> {
        let s = std::fs::read_to_string(path).ok()?;
        // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ut: f64 = f.get(11)?.parse().ok()?;
        let st: f64 = f.get(12)?.parse().ok()?;
        Some((ut + st) / ticks_per_second())
    };
    let mut c = Cpu {
        total: stat_secs(Path::new("/proc/self/stat")).unwrap_or(0.0),
        ..Cpu::default()
    };
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let secs = stat_secs(&t.path().join("stat")).unwrap_or(0.0);
            if comm.starts_with("prov-a") {
                c.prov_a += secs;
            } else if comm.starts_with("prov-b") {
                c.prov_b += secs;
            } else if comm.starts_with("load") {
                c.load += secs;
            }
        }
    }
    c
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            total: self.total - o.total,
            prov_a: self.prov_a - o.prov_a,
            prov_b: self.prov_b - o.prov_b,
            load: self.load - o.load,
        }
    }
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// What one run measured.
struct Run {
    messages: usize,
    elapsed: Duration,
    cpu: Cpu,
    latencies: Vec<u64>,
    acks: Vec<u64>,
    store: (StoreTotals, StoreTotals),
    /// UDP datagrams dropped on full receive buffers meanwhile (see [`udp_drops`]).
    udp_drops: u64,
    /// Envelopes whose `Submit` was refused with a retryable error (sent again later).
    refused: usize,
}

/// Sends `per_pair` messages from every pair (starting at `offset` in each pair's
/// envelopes) through `bed`, as fast as possible or paced; returns when every message has
/// been delivered and acknowledged.
fn run(
    bed: &Bed,
    pairs: &[Arc<Pair>],
    offset: usize,
    per_pair: usize,
    per_submit: usize,
    pace: Option<Duration>,
) -> Run {
    let senders: Vec<RawDevice> = pairs
        .iter()
        .map(|p| bed.connect(bed.a(), &p.sender))
        .collect();
    let recipients: Vec<RawDevice> = pairs
        .iter()
        .map(|p| bed.connect(bed.b(), &p.recipient))
        .collect();
    let (a0, b0) = (bed.store_a.totals(), bed.store_b.totals());
    // Only `per_pair` of each pair's messages are sent.
    let expected = per_pair * pairs.len();
    let progress = Progress::new(&vec![offset + per_pair; pairs.len()], expected);
    let cpu0 = cpu();
    let drops0 = udp_drops();
    let start = Instant::now();
    let elapsed = bed.load.block_on(async {
        let mut tasks = Vec::new();
        for (who, d) in recipients.into_iter().enumerate() {
            tasks.push(tokio::spawn(run_recipient(
                d,
                pairs[who].clone(),
                who,
                progress.clone(),
            )));
        }
        let begin = Instant::now() + Duration::from_millis(20);
        let mut senders_done = Vec::new();
        for (who, d) in senders.into_iter().enumerate() {
            let pace = pace.map(|every| (begin, every, pairs.len()));
            senders_done.push(tokio::spawn(run_sender(
                d,
                pairs[who].clone(),
                who,
                offset..offset + per_pair,
                per_submit,
                pace,
                progress.clone(),
            )));
        }
        let wait = async {
            while progress.delivered_count.load(Ordering::Acquire) < expected {
                progress.done.notified().await;
            }
        };
        // `KOGGE_RELAY_TRACE=1`: where the messages are, every 250 ms (to find the stage
        // that bounds a run).
        let trace = async {
            if std::env::var_os("KOGGE_RELAY_TRACE").is_none() {
                return std::future::pending::<()>().await;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let (Ok(a), Ok(b)) = (bed.a().stats().await, bed.b().stats().await) else {
                    continue;
                };
                eprintln!(
                    "  t {:6.2} s: delivered {:6}, A queued for B {:6}, B in mailboxes {:6}, \
                     B dedup {:6}, connections A {} B {}",
                    start.elapsed().as_secs_f64(),
                    progress.delivered_count.load(Ordering::Acquire),
                    a.outbound_items,
                    b.mailbox_items,
                    b.dedup_entries,
                    a.connections,
                    b.connections,
                );
            }
        };
        tokio::select! {
            r = tokio::time::timeout(WAIT, wait) => r.unwrap_or_else(|_| {
                panic!(
                    "only {} of {expected} messages delivered",
                    progress.delivered_count.load(Ordering::Acquire)
                )
            }),
            () = trace => {}
        }
        let elapsed = start.elapsed();
        for s in senders_done {
            drop(s.await.expect("sender"));
        }
        for t in tasks {
            t.abort();
        }
        elapsed
    });
    let cpu1 = cpu();
    let drops = udp_drops().saturating_sub(drops0);
    let (a1, b1) = (bed.store_a.totals(), bed.store_b.totals());
    let latencies = std::mem::take(&mut *progress.latencies.lock().expect("lock"));
    let acks = std::mem::take(&mut *progress.acks.lock().expect("lock"));
    Run {
        messages: expected,
        elapsed,
        cpu: cpu1 - cpu0,
        latencies,
        acks,
        store: (a1 - a0, b1 - b0),
        udp_drops: drops,
        refused: progress.refused.load(Ordering::Relaxed),
    }
}

fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64 / 1e6
}

fn describe(r: &mut Run) -> String {
    r.latencies.sort_unstable();
    r.acks.sort_unstable();
    let rate = r.messages as f64 / r.elapsed.as_secs_f64();
    let per = |s: f64| s * 1e6 / r.messages as f64;
    let store = |t: &StoreTotals| {
        format!(
            "{} commits, {:.0} msgs and {:.1} ops/msg each, CPU {:.1} µs/msg, wall {:.2} ms/commit",
            t.commits,
            r.messages as f64 / t.commits.max(1) as f64,
            t.ops as f64 / r.messages as f64,
            t.cpu_ns as f64 / 1e3 / r.messages as f64,
            t.wall_ns as f64 / 1e6 / t.commits.max(1) as f64
        )
    };
    format!(
        "{} msgs in {:.2} s = {:.0} msg/s; latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms \
         (submit to Done: p50 {:.2} ms p99 {:.2} ms); CPU/msg {:.1} µs (A {:.1}, B {:.1}, load {:.1}); store A: {}; store B: {}; \
         UDP datagrams dropped on full buffers: {}; envelopes refused (queue full) and resent: {}",
        r.messages,
        r.elapsed.as_secs_f64(),
        rate,
        pct(&r.latencies, 0.5),
        pct(&r.latencies, 0.99),
        pct(&r.latencies, 1.0),
        pct(&r.acks, 0.5),
        pct(&r.acks, 0.99),
        per(r.cpu.total),
        per(r.cpu.prov_a),
        per(r.cpu.prov_b),
        per(r.cpu.load),
        store(&r.store.0),
        store(&r.store.1),
        r.udp_drops,
        r.refused,
    )
}

/// One 4 KiB write + `fdatasync`, `n` times, in `dir`: milliseconds, sorted.
fn fsync_latency(dir: &Path, n: usize) -> Vec<f64> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let block = [0x5au8; 4096];
    let mut out: Vec<f64> = (0..n)
        .map(|i| {
            f.seek(SeekFrom::Start((i % 64) as u64 * 4096))
                .expect("seek");
            f.write_all(&block).expect("write");
            let t = Instant::now();
            f.sync_data().expect("fdatasync");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    out.sort_by(f64::total_cmp);
    out
}

/// Whether the report part `name` should run: all of them unless `KOGGE_RELAY_PARTS`
/// (a comma-separated list of `fsync`, `saturation`, `paced`, `memory`) says otherwise;
/// `KOGGE_RELAY_RUNS` sets the number of saturation runs (default 3).
fn part(name: &str) -> bool {
    std::env::var("KOGGE_RELAY_PARTS").map_or(true, |v| v.split(',').any(|p| p.trim() == name))
}

fn report(pairs: &[Arc<Pair>]) {
    let per_pair = SATURATION_MESSAGES / PAIRS;
    println!(
        "\n== relay report, {} stores, mimalloc (load average at start: {}) ==",
        engine(),
        load_average()
    );
    if part("fsync") {
        fsync_report();
    }
    if part("saturation") {
        let runs = std::env::var("KOGGE_RELAY_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        for i in 0..runs {
            let bed = Bed::new(pairs);
            let mut r = run(&bed, pairs, 0, per_pair, PER_SUBMIT, None);
            println!(
                "saturation #{}: {}  [load {}]",
                i + 1,
                describe(&mut r),
                load_average()
            );
        }
    }
    if part("paced") {
        let bed = Bed::new(pairs);
        let every = Duration::from_nanos(1_000_000_000 / PACED_RATE);
        let n = (PACED_RATE * PACED_SECONDS) as usize / PAIRS;
        let mut r = run(&bed, pairs, 0, n, 1, Some(every));
        println!(
            "paced {PACED_RATE} msg/s, {PACED_SECONDS} s, one envelope per Submit: {}  [load {}]",
            describe(&mut r),
            load_average()
        );
    }
    if part("memory") {
        memory(pairs);
    }
}

fn fsync_report() {
    let f = fsync_latency(&tmp_root(), 500);
    let q = |x: f64| f[((f.len() - 1) as f64 * x) as usize];
    println!(
        "fsync (4 KiB write + fdatasync, 500×): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

fn memory(pairs: &[Arc<Pair>]) {
    let bed = Bed::new(pairs);
    // Idle devices: users at two.example, each connected once, authenticated, then left.
    let now = quic::now();
    let mut rng = Rng20::seed_from_u64(99);
    let two = Domain::parse("two.example").expect("domain");
    let idle: Vec<User> = (0..IDLE_DEVICES)
        .map(|i| {
            user(
                &mut rng,
                Address::new(&format!("idle{i}"), &two).unwrap(),
                now,
            )
            .0
        })
        .collect();
    add_users(
        &bed.rt_b,
        bed.b(),
        idle.iter().map(|u| u.list.clone()).collect(),
    );
    // One device first, so that one-time costs (first connection, buffers) are not counted.
    let warm = bed.connect(bed.b(), &idle[0]);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss();
    let mut conns = vec![warm];
    for u in &idle[1..] {
        conns.push(bed.connect(bed.b(), u));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss();
    let n = (IDLE_DEVICES - 1) as f64;
    println!(
        "memory per idle connected device: {:.1} KiB RSS ({} devices; both ends of each \
         connection are in this process)",
        (after.saturating_sub(before)) as f64 / n / 1024.0,
        IDLE_DEVICES - 1
    );
    drop(conns);
    // Queued messages: every recipient offline; wait until B's mailboxes hold them all.
    let senders: Vec<RawDevice> = pairs
        .iter()
        .map(|p| bed.connect(bed.a(), &p.sender))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = rss();
    let (fa0, fb0) = bed.store_bytes();
    let progress = Progress::new(&vec![QUEUED_PER_DEVICE; pairs.len()], usize::MAX);
    bed.load.block_on(async {
        let mut tasks = Vec::new();
        for (who, d) in senders.into_iter().enumerate() {
            tasks.push(tokio::spawn(run_sender(
                d,
                pairs[who].clone(),
                who,
                0..QUEUED_PER_DEVICE,
                PER_SUBMIT,
                None,
                progress.clone(),
            )));
        }
        for t in tasks {
            drop(t.await.expect("sender"));
        }
    });
    let m = QUEUED_PER_DEVICE * pairs.len();
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, b) = bed.stats();
        if b.mailbox_items >= m && a.outbound_items == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages not queued at B in time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss1 = rss();
    let (fa1, fb1) = bed.store_bytes();
    println!(
        "memory per queued message ({m} messages for {} offline devices): {:.0} B RSS \
         (both providers: B's mailbox and dedup entry, A's dedup entry); {} file {:.0} B at B, \
         {:.0} B at A",
        pairs.len(),
        rss1.saturating_sub(rss0) as f64 / m as f64,
        engine(),
        fb1.saturating_sub(fb0) as f64 / m as f64,
        fa1.saturating_sub(fa0) as f64 / m as f64,
    );
}

// ---------------------------------------------------------------------------------------
// Criterion, then the report
// ---------------------------------------------------------------------------------------

fn bench_relay(c: &mut Criterion, pairs: &[Arc<Pair>]) {
    let per_pair = CRITERION_BATCH / PAIRS;
    let batches_per_bed = pairs[0].envelopes.len() / per_pair;
    let mut g = c.benchmark_group("relay");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(CRITERION_BATCH as u64));
    g.bench_function("saturation", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                // A fresh pair of providers per pool of envelopes: the dedup memory would
                // otherwise recognise them.
                let bed = Bed::new(pairs);
                let n = left.min(batches_per_bed);
                for k in 0..n {
                    total += run(&bed, pairs, k * per_pair, per_pair, PER_SUBMIT, None).elapsed;
                }
                left -= n;
            }
            total
        });
    });
    g.finish();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let test_mode = args.iter().any(|a| a == "--test" || a == "--list");
    let benchmarking = args.iter().any(|a| a == "--bench") && !test_mode;
    let per_pair = if benchmarking {
        SATURATION_MESSAGES / PAIRS
    } else {
        CRITERION_BATCH / PAIRS
    };
    let mut c = Criterion::default().configure_from_args();
    let pairs = if args.iter().any(|a| a == "--list") {
        Vec::new()
    } else {
        fixture(per_pair)
    };
    if !pairs.is_empty() {
        bench_relay(&mut c, &pairs);
    }
    c.final_summary();
    if benchmarking && std::env::var_os("KOGGE_BENCH_NO_SUMMARY").is_none() {
        report(&pairs);
    }
}
