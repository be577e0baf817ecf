//! Transport machine check: plain quinn 0.11 + rustls 0.23 (the `ring` provider, the
//! crate's own dependencies) over 127.0.0.1 with 256-byte messages, measured on this host and
//! set beside the transport table of PERF.md (`../shared/PERF.md`), which was measured with
//! the same libraries and message size on "this kind of machine".
//!
//! # Why
//!
//! The relay bench (`benches/relay.rs`) reports absolute messages/s, and the goal it is
//! judged by was set on "this kind of machine". The relay path's own work is QUIC and
//! AEAD (providers verify no Ed25519 signatures), so this bench measures that work with
//! the same libraries as PERF.md and no Kogge code, to see whether this host runs it
//! faster or slower than PERF.md's machine.
//!
//! The answer depends on the set-up more than on the host, which is itself a finding: with
//! each side on one single-threaded runtime (nothing ever wakes another thread) quinn runs
//! about 1.5× PERF.md's figures; with multi-threaded runtimes (`KOGGE_TRANSPORT_WORKERS`,
//! as the relay's providers run, two workers each) about 0.9–1.1×, and then the round
//! trips match PERF.md's (about 100 µs p50). README.md ("Relay benchmarks") gives the runs.
//!
//! # How to run
//!
//! `cargo bench --bench transport` (feature `quic`, on by default). It prints one markdown
//! table and takes about 5 seconds (3 runs). Arguments are accepted and ignored
//! (`-- summary-only` included); `KOGGE_TRANSPORT_RUNS=n` (default 3) repeats each mode n
//! times and reports the median and the range of the runs, because the machines are shared
//! and noisy. Without `--bench` (as `cargo test --benches` runs it) it does one short smoke
//! run of every mode. `KOGGE_TRANSPORT_WORKERS=n` (see below) picks multi-threaded runtimes.
//!
//! # The set-up
//!
//! A self-signed Ed25519 certificate made with rcgen (the key type of Kogge's provider
//! certificates); the client accepts exactly that certificate (DER equality) and verifies the
//! handshake signature with it. TLS 1.3 only, ALPN `bench`, no client certificate, no
//! session resumption and no 0-RTT. Quinn's default transport parameters and UDP socket
//! buffers, except that the server allows `MAX_UNI_STREAMS` concurrent uni streams.
//!
//! The server endpoint and the client endpoint each live on their own single-threaded tokio
//! runtime, driven by its own OS thread (`tp-server`, `tp-client`). Each endpoint's driver,
//! its connections' drivers and the bench's own tasks all run on that one thread, so the
//! thread's CPU time (`/proc/thread-self/schedstat`, user + system) is the CPU the side
//! spends. `KOGGE_TRANSPORT_WORKERS=n` gives each side a multi-threaded runtime with `n`
//! workers instead (named like the side's thread), and a side's CPU is then the sum over
//! its threads. Each mode but the last opens a fresh connection (its handshake is not timed),
//! then:
//!
//! 1. **one stream, one `write_all` per frame**: the client writes N 256-byte frames to one
//!    uni stream, one `write_all` each; the server reads (`read_chunk`) until it has N × 256
//!    bytes;
//! 2. **one stream, 16 frames per write**: the same, 4096 bytes per `write_all`;
//! 3. **one uni stream per message**: the client opens a uni stream per message, writes 256
//!    bytes and finishes it; quinn keeps at most `MAX_UNI_STREAMS` in flight (the server's
//!    stream limit); the server accepts each and reads it to its end;
//! 4. **datagrams**: `send_datagram_wait` of N 256-byte datagrams (waits while quinn's
//!    datagram send buffer is full rather than dropping queued ones); the server counts what
//!    arrives until `DATAGRAM_GRACE` passes without one after the client has sent the
//!    last; messages/s counts datagrams delivered, and the loss is reported;
//! 5. **round trip**: on one persistent bidirectional stream the client writes 256 bytes, the
//!    server echoes them, the client times each round trip (p50, p99);
//! 6. **new connection**: the client connects again and again (full handshake each time),
//!    timing `Endpoint::connect` until `Connecting` resolves, then closes the connection.
//!
//! Messages/s is N divided by the wall time from just before the client's first send to the
//! server's receipt of the last byte (datagrams: of the last datagram that arrived). CPU per
//! message is each side's thread CPU over its part of the mode divided by N (the receiver's
//! CPU for datagrams by the number delivered): the sender's from its first send until the
//! receiver reports it has everything, the receiver's from accepting the connection until it
//! has everything. For round trips and connections the CPU columns give the client's and
//! the server's CPU per round trip or per connection, untimed warm-up ones included
//! (PERF.md has no figure for those). Under the table: the UDP datagrams the kernel dropped
//! on full socket receive buffers during each mode (`/proc/net/snmp`, the whole machine's
//! count, so other processes' drops show too).
//!
//! Ratios: this host's messages/s over PERF.md's midpoint, and PERF.md's midpoint over this
//! host's times (CPU, latency), so a ratio above 1 always means this host is faster.

// Benchmarks measure wall-clock time: clippy.toml bans `Instant::now` for the sans-IO
// library, not for this harness.
#![allow(clippy::disallowed_methods)]
// A benchmark whose fixture cannot be built must stop loudly; there is no caller to report to.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, VarInt};
use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// CPU time, dropped datagrams and load average, as `benches/relay.rs` reads them.
#[path = "shared/host.rs"]
mod host;
use host::{load_average, thread_cpu_ns, udp_drops};

// ---------------------------------------------------------------------------------------
// PERF.md's figures
// ---------------------------------------------------------------------------------------

/// A figure PERF.md gives as a range (low and high equal where it gives one value).
#[derive(Clone, Copy, Debug)]
struct Range {
    /// The low end.
    lo: f64,
    /// The high end.
    hi: f64,
}

impl Range {
    /// The range `lo`–`hi`.
    const fn new(lo: f64, hi: f64) -> Self {
        Range { lo, hi }
    }

    /// The midpoint the ratios are taken against.
    fn mid(self) -> f64 {
        (self.lo + self.hi) / 2.0
    }
}

/// A throughput row of PERF.md's transport table.
#[derive(Clone, Copy, Debug)]
struct PerfThroughput {
    /// Messages per second.
    per_second: Range,
    /// Sender CPU per message, µs.
    send_us: Range,
    /// Receiver CPU per message, µs.
    receive_us: Range,
}

// Copied from ../shared/PERF.md's transport table ("Transport (quinn 0.11 + rustls 0.23,
// 127.0.0.1, 256-byte messages)"); update them together with that file.

/// PERF.md: one stream, one `write_all` per frame.
const PERF_FRAMES: PerfThroughput = PerfThroughput {
    per_second: Range::new(0.45e6, 0.82e6),
    send_us: Range::new(1.2, 2.2),
    receive_us: Range::new(0.5, 0.8),
};
/// PERF.md: one stream, 16 frames per write.
const PERF_BATCHED: PerfThroughput = PerfThroughput {
    per_second: Range::new(2.2e6, 3.1e6),
    send_us: Range::new(0.3, 0.45),
    receive_us: Range::new(0.3, 0.4),
};
/// PERF.md: one uni stream per message.
const PERF_UNI: PerfThroughput = PerfThroughput {
    per_second: Range::new(0.70e6, 0.84e6),
    send_us: Range::new(0.8, 1.0),
    receive_us: Range::new(0.85, 1.07),
};
/// PERF.md: datagrams (some loss).
const PERF_DATAGRAMS: PerfThroughput = PerfThroughput {
    per_second: Range::new(2.1e6, 3.1e6),
    send_us: Range::new(0.3, 0.4),
    receive_us: Range::new(0.3, 0.5),
};
/// PERF.md: round trip on a persistent stream, p50, µs.
const PERF_ROUND_TRIP_P50_US: Range = Range::new(76.0, 110.0);
/// PERF.md: round trip on a persistent stream, p99, µs.
const PERF_ROUND_TRIP_P99_US: Range = Range::new(116.0, 200.0);
/// PERF.md: new connection with full handshake, p50, ms.
const PERF_HANDSHAKE_P50_MS: Range = Range::new(0.8, 0.8);
/// PERF.md: new connection with full handshake, p99, ms.
const PERF_HANDSHAKE_P99_MS: Range = Range::new(1.2, 1.3);

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

/// Bytes per message.
const MSG: usize = 256;
/// Frames per `write_all` in the batched mode.
const BATCH: usize = 16;
/// Concurrent uni streams the server allows the client (quinn's default is 100).
const MAX_UNI_STREAMS: u32 = 1000;
/// How long the datagram receiver waits for more after the sender has sent the last.
const DATAGRAM_GRACE: Duration = Duration::from_millis(100);
/// The server's name in the certificate and in `connect`.
const SERVER_NAME: &str = "localhost";
/// ALPN protocol of both ends.
const ALPN: &[u8] = b"bench";

/// How many messages each mode sends in one run.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// One stream, one `write_all` per frame.
    frames: usize,
    /// One stream, 16 frames per write (a multiple of [`BATCH`]).
    batched: usize,
    /// One uni stream per message.
    uni: usize,
    /// Datagrams.
    datagrams: usize,
    /// Round trips timed.
    round_trips: usize,
    /// Connections timed.
    handshakes: usize,
    /// Untimed round trips and connections before the timed ones.
    warm_up: usize,
}

impl Sizes {
    /// The report's sizes: each run of each mode takes a few hundred milliseconds at
    /// PERF.md's rates.
    const FULL: Sizes = Sizes {
        frames: 300_000,
        batched: 1_600_000,
        uni: 200_000,
        datagrams: 1_000_000,
        round_trips: 5_000,
        handshakes: 300,
        warm_up: 50,
    };

    /// A smoke run (without `--bench`): every mode once, briefly.
    const SMOKE: Sizes = Sizes {
        frames: 2_000,
        batched: 16_000,
        uni: 2_000,
        datagrams: 2_000,
        round_trips: 100,
        handshakes: 10,
        warm_up: 2,
    };
}

// ---------------------------------------------------------------------------------------
// Modes and what they measure
// ---------------------------------------------------------------------------------------

/// What one run sends, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// One uni stream, one `write_all` per 256-byte frame.
    Frames,
    /// One uni stream, 16 frames per `write_all`.
    Batched,
    /// One uni stream per message.
    UniStreams,
    /// One datagram per message.
    Datagrams,
    /// 256 bytes each way on one persistent bidirectional stream.
    RoundTrip,
    /// A new connection with a full handshake.
    Handshake,
}

impl Mode {
    /// Every mode, in the order of PERF.md's table (and of each run).
    const ALL: [Mode; 6] = [
        Mode::Frames,
        Mode::Batched,
        Mode::UniStreams,
        Mode::Datagrams,
        Mode::RoundTrip,
        Mode::Handshake,
    ];

    /// The untimed warm-up and the timed count of messages (round trips, connections).
    fn counts(self, sizes: Sizes) -> (usize, usize) {
        match self {
            Mode::Frames => (0, sizes.frames),
            Mode::Batched => (0, sizes.batched),
            Mode::UniStreams => (0, sizes.uni),
            Mode::Datagrams => (0, sizes.datagrams),
            Mode::RoundTrip => (sizes.warm_up, sizes.round_trips),
            Mode::Handshake => (sizes.warm_up, sizes.handshakes),
        }
    }
}

/// What the receiving side (the server) reports when it has everything.
#[derive(Clone, Copy, Debug)]
struct Received {
    /// When the last byte (the last datagram) arrived.
    end: Instant,
    /// Messages that arrived (datagrams may be lost; every other mode gets them all).
    count: usize,
    /// The server thread's CPU time over its part of the mode, ns.
    cpu_ns: u64,
}

/// What one run of one mode measured.
#[derive(Debug)]
struct Sample {
    /// Just before the client's first send.
    start: Instant,
    /// The server's report.
    received: Received,
    /// The client thread's CPU time from `start` until the server's report arrived, ns.
    send_cpu_ns: u64,
    /// Round trips or connection set-ups timed by the client (warm-up excluded).
    latencies: Vec<Duration>,
}

/// The figures of one run of one mode.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    /// Messages delivered per second.
    per_second: f64,
    /// Client CPU per message (per round trip, per connection), µs.
    send_us: f64,
    /// Server CPU per message delivered (per round trip, per connection), µs.
    receive_us: f64,
    /// Fraction of the messages lost (datagrams only).
    loss: f64,
    /// Median latency, µs (round trips, connections).
    p50_us: f64,
    /// 99th-percentile latency, µs (round trips, connections).
    p99_us: f64,
    /// UDP datagrams the kernel dropped on full receive buffers during the run (whole
    /// machine).
    kernel_drops: u64,
}

impl Figures {
    /// The figures of `sample`, a run in which `sent` messages were sent (warm-up included).
    fn of(sample: &Sample, sent: usize, kernel_drops: u64) -> Figures {
        let received = sample.received;
        let wall = received.end.saturating_duration_since(sample.start);
        let mut latencies: Vec<f64> = sample
            .latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1e6)
            .collect();
        latencies.sort_by(f64::total_cmp);
        Figures {
            per_second: received.count as f64 / wall.as_secs_f64().max(1e-9),
            send_us: sample.send_cpu_ns as f64 / 1e3 / sent as f64,
            receive_us: received.cpu_ns as f64 / 1e3 / received.count.max(1) as f64,
            loss: 1.0 - received.count as f64 / sent as f64,
            p50_us: percentile(&latencies, 50),
            p99_us: percentile(&latencies, 99),
            kernel_drops,
        }
    }
}

/// The `p`th percentile (nearest rank) of sorted `values`; 0 for none.
fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------
// TLS and QUIC configuration
// ---------------------------------------------------------------------------------------

/// Accepts exactly one server certificate (by its DER) and checks the handshake signature
/// under its key.
#[derive(Debug)]
struct PinnedCertificate {
    /// The certificate the server presents.
    der: CertificateDer<'static>,
    /// The crypto provider's signature verification algorithms.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's and the client's quinn configurations around one fresh self-signed
/// Ed25519 certificate.
fn configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .expect("certificate parameters")
        .self_signed(&key)
        .expect("self-signed certificate");
    let der = cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], private)
        .expect("server certificate");
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    // Every connection is a full handshake: no tickets to resume with.
    server_tls.send_tls13_tickets = 0;
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server_tls).expect("QUIC server TLS"),
    ));
    server.transport_config(Arc::new(transport));

    let verifier = Arc::new(PinnedCertificate {
        der,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    client_tls.resumption = rustls::client::Resumption::disabled();
    let client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client_tls).expect("QUIC client TLS"),
    ));
    (server, client)
}

// ---------------------------------------------------------------------------------------
// The two sides
// ---------------------------------------------------------------------------------------

/// One run of one mode, as the server sees it.
struct ServerJob {
    /// The mode.
    mode: Mode,
    /// Messages (round trips, connections) to expect, warm-up included.
    n: usize,
    /// Told when the server has its connection (its CPU count has started).
    ready: oneshot::Sender<()>,
    /// Given the server's report when it has everything.
    done: oneshot::Sender<Received>,
    /// Datagrams: told when the client has sent the last.
    sent: oneshot::Receiver<()>,
}

/// One run of one mode, as the client sees it.
struct ClientJob {
    /// The mode.
    mode: Mode,
    /// Messages (round trips, connections) to send, warm-up included.
    n: usize,
    /// Round trips or connections at the start not timed.
    warm_up: usize,
    /// Tells the client the server is ready.
    ready: oneshot::Receiver<()>,
    /// The server's report.
    done: oneshot::Receiver<Received>,
    /// Datagrams: tells the server the last has been sent.
    sent: oneshot::Sender<()>,
    /// Where the run's sample goes.
    result: oneshot::Sender<Sample>,
}

/// The server side's thread name (and its workers', with `KOGGE_TRANSPORT_WORKERS`).
const SERVER: &str = "tp-server";
/// The client side's thread name.
const CLIENT: &str = "tp-client";

/// An OS thread running a single-threaded tokio runtime with one endpoint on it.
struct Side<J> {
    /// Jobs for the side's loop.
    jobs: mpsc::UnboundedSender<J>,
    /// The thread.
    thread: std::thread::JoinHandle<()>,
}

/// The runtime of the side whose threads are named `name`: single-threaded (timers and
/// I/O, driven by the side's own thread) unless `KOGGE_TRANSPORT_WORKERS=n` asks for a
/// multi-threaded one with `n` workers, named the same.
fn runtime(name: &str) -> tokio::runtime::Runtime {
    match workers() {
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .thread_name(name)
            .enable_all()
            .build(),
    }
    .expect("tokio runtime")
}

/// `KOGGE_TRANSPORT_WORKERS`: worker threads of each side's runtime, if multi-threaded.
fn workers() -> Option<usize> {
    std::env::var("KOGGE_TRANSPORT_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
}

/// CPU time in nanoseconds of the side whose threads are named `name`: the calling
/// thread's with a single-threaded runtime, else the sum over the process's threads of
/// that name (`/proc/self/task/*/schedstat`; a thread that exits takes its time with it,
/// and tokio's workers live as long as the runtime).
fn side_cpu_ns(name: &str) -> u64 {
    if workers().is_none() {
        return thread_cpu_ns();
    }
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Starts the server thread; returns it and the address the endpoint listens on.
fn start_server(config: quinn::ServerConfig) -> (Side<ServerJob>, SocketAddr) {
    let (jobs, mut rx) = mpsc::unbounded_channel::<ServerJob>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(SERVER.into())
        .spawn(move || {
            runtime(SERVER).block_on(async move {
                let endpoint = Endpoint::server(config, (Ipv4Addr::LOCALHOST, 0).into())
                    .expect("server endpoint");
                addr_tx
                    .send(endpoint.local_addr().expect("server address"))
                    .expect("main thread gone");
                while let Some(job) = rx.recv().await {
                    serve(&endpoint, job).await;
                }
                endpoint.close(VarInt::from_u32(0), b"bye");
            });
        })
        .expect("server thread");
    let addr = addr_rx.recv().expect("server endpoint failed");
    (Side { jobs, thread }, addr)
}

/// Starts the client thread, whose endpoint connects to `server`.
fn start_client(config: quinn::ClientConfig, server: SocketAddr) -> Side<ClientJob> {
    let (jobs, mut rx) = mpsc::unbounded_channel::<ClientJob>();
    let thread = std::thread::Builder::new()
        .name(CLIENT.into())
        .spawn(move || {
            runtime(CLIENT).block_on(async move {
                let mut endpoint =
                    Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).expect("client endpoint");
                endpoint.set_default_client_config(config);
                while let Some(job) = rx.recv().await {
                    drive(&endpoint, server, job).await;
                }
                endpoint.wait_idle().await;
            });
        })
        .expect("client thread");
    Side { jobs, thread }
}

/// The server's part of one run.
async fn serve(endpoint: &Endpoint, job: ServerJob) {
    let ServerJob {
        mode,
        n,
        ready,
        done,
        mut sent,
    } = job;
    if mode == Mode::Handshake {
        let cpu = side_cpu_ns(SERVER);
        ready.send(()).expect("client gone");
        let mut connections = JoinSet::new();
        for _ in 0..n {
            let incoming = endpoint.accept().await.expect("endpoint closed");
            connections.spawn(async move {
                // The client closes each connection as soon as it is established.
                if let Ok(connection) = incoming.await {
                    connection.closed().await;
                }
            });
        }
        while connections.join_next().await.is_some() {}
        let report = Received {
            end: Instant::now(),
            count: n,
            cpu_ns: side_cpu_ns(SERVER).saturating_sub(cpu),
        };
        done.send(report).expect("client gone");
        return;
    }

    let connection = endpoint
        .accept()
        .await
        .expect("endpoint closed")
        .await
        .expect("server handshake");
    let cpu = side_cpu_ns(SERVER);
    ready.send(()).expect("client gone");
    let (count, end) = match mode {
        Mode::Frames | Mode::Batched => {
            let mut stream = connection.accept_uni().await.expect("accept stream");
            let (want, mut got) = (n * MSG, 0);
            while got < want {
                let chunk = stream.read_chunk(usize::MAX, true).await.expect("read");
                got += chunk.expect("the stream ended early").bytes.len();
            }
            (n, Instant::now())
        }
        Mode::UniStreams => {
            for _ in 0..n {
                let mut stream = connection.accept_uni().await.expect("accept stream");
                let message = stream.read_to_end(MSG).await.expect("read stream");
                assert_eq!(message.len(), MSG);
            }
            (n, Instant::now())
        }
        Mode::Datagrams => receive_datagrams(&connection, n, &mut sent).await,
        Mode::RoundTrip => {
            let (mut send, mut recv) = connection.accept_bi().await.expect("accept stream");
            let mut message = [0u8; MSG];
            for _ in 0..n {
                recv.read_exact(&mut message).await.expect("read");
                send.write_all(&message).await.expect("write");
            }
            (n, Instant::now())
        }
        Mode::Handshake => unreachable!("handled above"),
    };
    let report = Received {
        end,
        count,
        cpu_ns: side_cpu_ns(SERVER).saturating_sub(cpu),
    };
    done.send(report).expect("client gone");
    // The client closes the connection once it has the report.
    connection.closed().await;
}

/// Counts datagrams until all `n` have arrived or, once `sent` says the client has sent
/// the last, until [`DATAGRAM_GRACE`] passes without one; returns the count and when the
/// last arrived.
async fn receive_datagrams(
    connection: &Connection,
    n: usize,
    sent: &mut oneshot::Receiver<()>,
) -> (usize, Instant) {
    let (mut count, mut last) = (0, Instant::now());
    let mut sender_done = false;
    while count < n {
        if sender_done {
            match tokio::time::timeout(DATAGRAM_GRACE, connection.read_datagram()).await {
                Ok(datagram) => {
                    datagram.expect("read datagram");
                    count += 1;
                    last = Instant::now();
                }
                Err(_) => break,
            }
        } else {
            tokio::select! {
                datagram = connection.read_datagram() => {
                    datagram.expect("read datagram");
                    count += 1;
                    last = Instant::now();
                }
                signal = &mut *sent => {
                    signal.expect("client gone");
                    sender_done = true;
                }
            }
        }
    }
    (count, last)
}

/// The client's part of one run.
async fn drive(endpoint: &Endpoint, server: SocketAddr, job: ClientJob) {
    let ClientJob {
        mode,
        n,
        warm_up,
        ready,
        done,
        sent,
        result,
    } = job;
    let mut latencies = Vec::with_capacity(n);
    let connection = if mode == Mode::Handshake {
        None
    } else {
        let connecting = endpoint.connect(server, SERVER_NAME).expect("connect");
        Some(connecting.await.expect("client handshake"))
    };
    ready.await.expect("server gone");
    let cpu = side_cpu_ns(CLIENT);
    let start = Instant::now();
    match (mode, &connection) {
        (Mode::Handshake, _) => {
            for _ in 0..n {
                let t = Instant::now();
                let connecting = endpoint.connect(server, SERVER_NAME).expect("connect");
                let connection = connecting.await.expect("client handshake");
                latencies.push(t.elapsed());
                connection.close(VarInt::from_u32(0), b"done");
            }
        }
        (Mode::Frames, Some(connection)) => {
            let mut stream = connection.open_uni().await.expect("open stream");
            let frame = [0x5a_u8; MSG];
            for _ in 0..n {
                stream.write_all(&frame).await.expect("write");
            }
            stream.finish().expect("finish");
        }
        (Mode::Batched, Some(connection)) => {
            let mut stream = connection.open_uni().await.expect("open stream");
            let frames = [0x5a_u8; MSG * BATCH];
            for _ in 0..n / BATCH {
                stream.write_all(&frames).await.expect("write");
            }
            stream.finish().expect("finish");
        }
        (Mode::UniStreams, Some(connection)) => {
            let message = [0x5a_u8; MSG];
            for _ in 0..n {
                let mut stream = connection.open_uni().await.expect("open stream");
                stream.write_all(&message).await.expect("write");
                stream.finish().expect("finish");
            }
        }
        (Mode::Datagrams, Some(connection)) => {
            let message = Bytes::from_static(&[0x5a_u8; MSG]);
            for _ in 0..n {
                connection
                    .send_datagram_wait(message.clone())
                    .await
                    .expect("send datagram");
            }
            sent.send(()).expect("server gone");
        }
        (Mode::RoundTrip, Some(connection)) => {
            let (mut send, mut recv) = connection.open_bi().await.expect("open stream");
            let mut message = [0x5a_u8; MSG];
            for _ in 0..n {
                let t = Instant::now();
                send.write_all(&message).await.expect("write");
                recv.read_exact(&mut message).await.expect("read");
                latencies.push(t.elapsed());
            }
        }
        (_, None) => unreachable!("every mode but Handshake has a connection"),
    }
    let received = done.await.expect("server gone");
    let send_cpu_ns = side_cpu_ns(CLIENT).saturating_sub(cpu);
    if let Some(connection) = connection {
        connection.close(VarInt::from_u32(0), b"done");
    }
    latencies.drain(..warm_up.min(latencies.len()));
    let sample = Sample {
        start,
        received,
        send_cpu_ns,
        latencies,
    };
    result.send(sample).expect("main thread gone");
}

/// Runs one mode once on both sides; returns its sample.
fn run(
    server: &Side<ServerJob>,
    client: &Side<ClientJob>,
    mode: Mode,
    n: usize,
    warm_up: usize,
) -> Sample {
    let (ready_tx, ready) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let (sent_tx, sent) = oneshot::channel();
    let (result_tx, result) = oneshot::channel();
    let server_job = ServerJob {
        mode,
        n,
        ready: ready_tx,
        done: done_tx,
        sent,
    };
    let client_job = ClientJob {
        mode,
        n,
        warm_up,
        ready,
        done,
        sent: sent_tx,
        result: result_tx,
    };
    server.jobs.send(server_job).expect("server thread gone");
    client.jobs.send(client_job).expect("client thread gone");
    result
        .blocking_recv()
        .expect("the run failed (see the panic above)")
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

/// The median and the range of one figure over the runs.
#[derive(Clone, Copy, Debug)]
struct Spread {
    /// The median (the mean of the middle two for an even count).
    median: f64,
    /// The lowest run.
    min: f64,
    /// The highest run.
    max: f64,
}

impl Spread {
    /// The spread of `values` (at least one).
    fn of(values: impl Iterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.collect();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// The median, with the range in parentheses if the runs differ, `scale`d and with
    /// `decimals`.
    fn show(self, scale: f64, decimals: usize, unit: &str) -> String {
        let (m, lo, hi) = (self.median * scale, self.min * scale, self.max * scale);
        if format!("{lo:.decimals$}") == format!("{hi:.decimals$}") {
            format!("{m:.decimals$}{unit}")
        } else {
            format!("{m:.decimals$}{unit} ({lo:.decimals$}–{hi:.decimals$})")
        }
    }
}

/// PERF.md's range, `scale`d and with `decimals`.
fn show_range(r: Range, scale: f64, decimals: usize, unit: &str) -> String {
    let (lo, hi) = (r.lo * scale, r.hi * scale);
    if format!("{lo:.decimals$}") == format!("{hi:.decimals$}") {
        format!("{lo:.decimals$}{unit}")
    } else {
        format!("{lo:.decimals$}–{hi:.decimals$}{unit}")
    }
}

/// One row of the report's table, and the ratios that go into the summary.
struct Row {
    /// The mode's name as in PERF.md.
    name: String,
    /// Its cells after the name.
    cells: [String; 9],
}

/// The ratios collected for the summary line: throughput, CPU, latency.
#[derive(Default)]
struct Ratios {
    /// here / PERF.md midpoint of messages/s.
    throughput: Vec<f64>,
    /// PERF.md midpoint / here of CPU per message.
    cpu: Vec<f64>,
    /// PERF.md midpoint / here of latencies.
    latency: Vec<f64>,
}

/// Geometric mean of `v` (NaN if empty).
fn geomean(v: &[f64]) -> f64 {
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// A ratio cell.
fn ratio(x: f64) -> String {
    format!("{x:.2}")
}

/// The throughput row of `mode` from its runs' figures.
fn throughput_row(name: &str, perf: PerfThroughput, runs: &[Figures], r: &mut Ratios) -> Row {
    let rate = Spread::of(runs.iter().map(|f| f.per_second));
    let send = Spread::of(runs.iter().map(|f| f.send_us));
    let receive = Spread::of(runs.iter().map(|f| f.receive_us));
    let (rate_ratio, send_ratio, receive_ratio) = (
        rate.median / perf.per_second.mid(),
        perf.send_us.mid() / send.median,
        perf.receive_us.mid() / receive.median,
    );
    r.throughput.push(rate_ratio);
    r.cpu.extend([send_ratio, receive_ratio]);
    Row {
        name: name.to_owned(),
        cells: [
            rate.show(1e-6, 2, " M"),
            show_range(perf.per_second, 1e-6, 2, " M"),
            ratio(rate_ratio),
            send.show(1.0, 2, " µs"),
            show_range(perf.send_us, 1.0, 2, " µs"),
            ratio(send_ratio),
            receive.show(1.0, 2, " µs"),
            show_range(perf.receive_us, 1.0, 2, " µs"),
            ratio(receive_ratio),
        ],
    }
}

/// How a latency is shown: the factor from µs, the decimals and the unit.
type Unit = (f64, usize, &'static str);
/// Latencies in microseconds.
const MICROS: Unit = (1.0, 0, " µs");
/// Latencies in milliseconds.
const MILLIS: Unit = (1e-3, 2, " ms");

/// A latency row: `pick` chooses p50 or p99 (µs), shown in `unit`; the CPU cells give the
/// client's and the server's CPU per round trip or connection.
fn latency_row(
    name: &str,
    perf: Range,
    runs: &[Figures],
    pick: fn(&Figures) -> f64,
    (scale, decimals, unit): Unit,
    r: &mut Ratios,
) -> Row {
    let here = Spread::of(runs.iter().map(pick));
    let here_ratio = perf.mid() / (here.median * scale);
    r.latency.push(here_ratio);
    let send = Spread::of(runs.iter().map(|f| f.send_us));
    let receive = Spread::of(runs.iter().map(|f| f.receive_us));
    let none = || "—".to_owned();
    Row {
        name: name.to_owned(),
        cells: [
            here.show(scale, decimals, unit),
            show_range(perf, 1.0, decimals, unit),
            ratio(here_ratio),
            send.show(1.0, 1, " µs"),
            none(),
            none(),
            receive.show(1.0, 1, " µs"),
            none(),
            none(),
        ],
    }
}

/// Prints the table and the notes under it.
fn report(figures: &[(Mode, Vec<Figures>)], runs: usize, sizes: Sizes, elapsed: Duration) {
    let of = |mode: Mode| -> &[Figures] {
        figures
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, f)| f.as_slice())
            .expect("every mode ran")
    };
    let mut ratios = Ratios::default();
    let datagrams = of(Mode::Datagrams);
    let loss = Spread::of(datagrams.iter().map(|f| f.loss));
    let rows = [
        throughput_row(
            "one stream, one `write_all` per frame",
            PERF_FRAMES,
            of(Mode::Frames),
            &mut ratios,
        ),
        throughput_row(
            "one stream, 16 frames per write",
            PERF_BATCHED,
            of(Mode::Batched),
            &mut ratios,
        ),
        throughput_row(
            "one uni stream per message",
            PERF_UNI,
            of(Mode::UniStreams),
            &mut ratios,
        ),
        throughput_row(
            &format!("datagrams, loss {}", loss.show(100.0, 1, " %")),
            PERF_DATAGRAMS,
            datagrams,
            &mut ratios,
        ),
        latency_row(
            "round trip, persistent stream: p50",
            PERF_ROUND_TRIP_P50_US,
            of(Mode::RoundTrip),
            |f| f.p50_us,
            MICROS,
            &mut ratios,
        ),
        latency_row(
            "round trip, persistent stream: p99",
            PERF_ROUND_TRIP_P99_US,
            of(Mode::RoundTrip),
            |f| f.p99_us,
            MICROS,
            &mut ratios,
        ),
        latency_row(
            "new connection with full handshake: p50",
            PERF_HANDSHAKE_P50_MS,
            of(Mode::Handshake),
            |f| f.p50_us,
            MILLIS,
            &mut ratios,
        ),
        latency_row(
            "new connection with full handshake: p99",
            PERF_HANDSHAKE_P99_MS,
            of(Mode::Handshake),
            |f| f.p99_us,
            MILLIS,
            &mut ratios,
        ),
    ];

    println!();
    println!(
        "## Transport machine check: quinn 0.11 + rustls 0.23 (ring), 127.0.0.1, \
         {MSG}-byte messages"
    );
    println!();
    if sizes.frames < Sizes::FULL.frames {
        println!(
            "Smoke run (without `--bench`): a few messages per mode, the figures mean nothing."
        );
        println!();
    }
    println!(
        "Here: median of {runs} run(s) (range in parentheses). PERF.md: its transport table. \
         Ratio: here / PERF.md midpoint for messages/s, PERF.md midpoint / here for times; \
         above 1 means this host is faster. CPU per message (round trip, connection) of the \
         client (send) and server (receive) threads."
    );
    println!();
    println!(
        "| mode | here | PERF.md | ratio | send CPU here | PERF.md | ratio \
         | receive CPU here | PERF.md | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("| {} | {} |", row.name, row.cells.join(" | "));
    }
    println!();
    println!(
        "Geometric mean of the ratios: messages/s {:.2}, CPU per message {:.2}, latency {:.2}.",
        geomean(&ratios.throughput),
        geomean(&ratios.cpu),
        geomean(&ratios.latency),
    );
    let drops: Vec<String> = figures
        .iter()
        .map(|(m, f)| format!("{m:?} {}", f.iter().map(|x| x.kernel_drops).sum::<u64>()))
        .collect();
    println!(
        "UDP datagrams dropped by the kernel on full receive buffers (whole machine, all \
         runs): {}.",
        drops.join(", ")
    );
    println!(
        "Messages per run: {} frames, {} batched, {} uni streams, {} datagrams, {} round trips, \
         {} connections (plus {} untimed of each of the last two). Load average {}. {:.1} s.",
        sizes.frames,
        sizes.batched,
        sizes.uni,
        sizes.datagrams,
        sizes.round_trips,
        sizes.handshakes,
        sizes.warm_up,
        load_average(),
        elapsed.as_secs_f64(),
    );
    match workers() {
        None => println!("Runtimes: one single-threaded runtime per side."),
        Some(n) => println!("Runtimes: one multi-threaded runtime per side, {n} workers each."),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let benchmarking = args.iter().any(|a| a == "--bench");
    let (sizes, runs) = if benchmarking {
        let runs = match std::env::var("KOGGE_TRANSPORT_RUNS") {
            Ok(v) => v
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("KOGGE_TRANSPORT_RUNS={v}: expected a positive number")),
            Err(_) => 3,
        };
        (Sizes::FULL, runs)
    } else {
        (Sizes::SMOKE, 1)
    };

    let began = Instant::now();
    let (server_config, client_config) = configs();
    let (server, addr) = start_server(server_config);
    let client = start_client(client_config, addr);
    let mut figures: Vec<(Mode, Vec<Figures>)> =
        Mode::ALL.iter().map(|&m| (m, Vec::new())).collect();
    // Runs go round the modes, so that a noisy spell of the machine spreads over all of them.
    for _ in 0..runs {
        for (mode, runs_of_mode) in &mut figures {
            let (warm_up, timed) = mode.counts(sizes);
            let drops = udp_drops();
            let sample = run(&server, &client, *mode, warm_up + timed, warm_up);
            let drops = udp_drops().saturating_sub(drops);
            runs_of_mode.push(Figures::of(&sample, warm_up + timed, drops));
        }
    }
    drop(server.jobs);
    drop(client.jobs);
    server.thread.join().expect("server thread panicked");
    client.thread.join().expect("client thread panicked");
    report(&figures, runs, sizes, began.elapsed());
}
