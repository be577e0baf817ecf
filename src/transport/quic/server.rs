//! [`ProviderServer`]: a [`Provider`] on a QUIC endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use rand_core::CryptoRng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::io::{self, ConnIo, Host, HostCounts, HostSlot, IoEvent, Lanes, SendError, Slot};
use super::tls::{self, TlsIdentity};
use super::{
    CLOSE_KEY_MISMATCH, CLOSE_NORMAL, CLOSE_SEND_OVERFLOW, CLOSE_SHUTDOWN, CLOSE_STREAM_ERROR,
    EVENT_QUEUE, QuicConfig, QuicError, hex, now, sleep_until,
};
use crate::address::Domain;
use crate::identity::ProviderKey;
use crate::protocol::ConnectionId;
use crate::provider::{
    CommitBatch, Direction, PeerIdentity, Provider, ProviderConfig, ProviderEvent, ProviderInput,
    ProviderOutput, ProviderStats,
};
use crate::resolve::{PeerInfo, Resolver};
use crate::store::{SharedStore, Store, StoreError};
use crate::time::UnixMillis;

/// Events handled per drain at most: a burst of frames becomes one store commit.
const BATCH: usize = 256;

type Call<S, R> = Box<dyn FnOnce(&mut Provider<SharedStore<S>, R>) + Send>;

/// A batch for the store thread and where its answer goes.
type CommitJob = (CommitBatch, oneshot::Sender<Result<(), StoreError>>);

/// A connection accepted and its stream opened by the connector.
struct Accepted {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    binding: Bytes,
    tls_key: Option<[u8; 32]>,
    slot: Slot,
}

/// A connection dialled to another provider, its stream open.
struct Dialed {
    domain: Domain,
    key: ProviderKey,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    binding: Bytes,
}

enum Event<S: Store, R: CryptoRng> {
    Io(IoEvent),
    Inbound(Box<Accepted>),
    Outbound(Box<Dialed>),
    DialFailed { domain: Domain, why: String },
    Call(Call<S, R>),
    Shutdown,
}

impl<S: Store, R: CryptoRng> From<IoEvent> for Event<S, R> {
    fn from(e: IoEvent) -> Self {
        Event::Io(e)
    }
}

/// A provider serving over QUIC on one UDP socket. See the [module documentation](super).
///
/// It owns the [`Provider`] on one task (its event loop); per-connection tasks read and
/// write the streams, and a thread of its own runs the store's commits
/// ([`Provider::defer_commits`]): while one batch is made durable the event loop goes on
/// taking frames, which become the next batch. Frames from other providers'
/// connections have a queue of their own, served first but never alone: a relay's answer
/// frees the relay window and must not wait behind every device's requests. Dropping the server stops everything at
/// once (like a crash: what the store made durable is all that survives);
/// [`ProviderServer::shutdown`] stops it gracefully and gives the provider back.
pub struct ProviderServer<S: Store, R: CryptoRng> {
    local_addr: SocketAddr,
    domain: Domain,
    public_key: ProviderKey,
    events: mpsc::Sender<Event<S, R>>,
    endpoint: quinn::Endpoint,
    task: Option<JoinHandle<Provider<SharedStore<S>, R>>>,
    acceptor: JoinHandle<()>,
}

impl<S: Store, R: CryptoRng> std::fmt::Debug for ProviderServer<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderServer")
            .field("domain", &self.domain)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl<S, R> ProviderServer<S, R>
where
    S: Store + Send + 'static,
    R: CryptoRng + Send + 'static,
{
    /// Loads a provider from `store` and serves it on `listen` (port 0: any free port; see
    /// [`ProviderServer::local_addr`]). `resolver` answers the provider's `Resolve` and
    /// `Connect` outputs: it is asked on the event loop, so it must answer from memory
    /// (like [`StaticDirectory`](crate::resolve::StaticDirectory)). Must be called inside a
    /// tokio runtime.
    pub fn start<D>(
        config: ProviderConfig,
        store: S,
        rng: R,
        resolver: D,
        listen: SocketAddr,
        quic: QuicConfig,
    ) -> Result<Self, QuicError>
    where
        D: Resolver + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| QuicError::Config("not inside a tokio runtime".into()))?;
        let identity = Arc::new(tls::provider_certificate(&config.key, &config.domain)?);
        let server_config = tls::server_config(&identity, &quic)?;
        // Stateless-reset tokens keyed by the provider key (SPEC.md 17.3): after a crash
        // the restarted provider resets its peers' old connections.
        let reset_key = Arc::new(tls::StatelessResetKey::derive(&config.key)?);
        let cid_key = reset_key.cid_key();
        let mut endpoint_config = quinn::EndpointConfig::new(reset_key);
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let socket = super::bind_udp(listen, quic.udp_buffer_bytes)?;
        // For the log line only: a size that cannot be read is no reason not to serve.
        let (udp_recv, udp_send) = super::udp_buffer_sizes(&socket).unwrap_or_default();
        if udp_recv > 0 && udp_recv < quic.udp_buffer_bytes {
            tracing::warn!(
                asked = quic.udp_buffer_bytes,
                granted = udp_recv,
                "the UDP receive buffer is smaller than asked: bursts of datagrams may be \
                 dropped; raise net.core.rmem_max (Linux) to at least the size asked"
            );
        }
        let endpoint = {
            let _guard = runtime.enter();
            quinn::Endpoint::new(
                endpoint_config,
                Some(server_config),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?
        };
        let local_addr = endpoint.local_addr()?;
        let domain = config.domain.clone();
        let public_key = config.key.public();
        let store = SharedStore::new(store);
        let mut provider = Provider::new(config, store.clone(), rng, now())?;
        provider.defer_commits();
        let committer = Committer::start(&domain, store)?;
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (peer_tx, peer_rx) = mpsc::channel(EVENT_QUEUE);
        let connections = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let acceptor = runtime.spawn(accept_loop(
            endpoint.clone(),
            tx.clone(),
            quic.clone(),
            connections,
            handshakes,
            HostCounts::default(),
        ));
        let event_loop = EventLoop {
            provider,
            resolver,
            identity,
            endpoint: endpoint.clone(),
            quic,
            events: tx.clone(),
            peer_events: peer_tx,
            conns: HashMap::new(),
            dial_configs: HashMap::new(),
            next_id: 0,
            deadline: None,
            closing: Vec::new(),
            stopping: false,
            committer,
        };
        let task = runtime.spawn(event_loop.run(rx, peer_rx));
        tracing::info!(%domain, %local_addr, key = %public_key, udp_recv, udp_send, "provider listening");
        Ok(Self {
            local_addr,
            domain,
            public_key,
            events: tx,
            endpoint,
            task: Some(task),
            acceptor,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The domain served.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The provider key (the key of its TLS certificate).
    pub fn public_key(&self) -> ProviderKey {
        self.public_key
    }

    /// Runs `f` on the provider, on its event loop (then drains its outputs): to add a
    /// user, read its stats, and so on. The provider's store is shared with the thread
    /// that commits (`p.store().lock()` waits for a commit that is running).
    pub async fn with_provider<T, F>(&self, f: F) -> Result<T, QuicError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Provider<SharedStore<S>, R>) -> T + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let call: Call<S, R> = Box::new(move |p| {
            let _ = reply.send(f(p));
        });
        self.events
            .send(Event::Call(call))
            .await
            .map_err(|_| QuicError::Stopped)?;
        answer.await.map_err(|_| QuicError::Stopped)
    }

    /// The provider's counters.
    pub async fn stats(&self) -> Result<ProviderStats, QuicError> {
        self.with_provider(|p| p.stats()).await
    }

    /// Stops gracefully: refuses new connections, stops reading, lets every connection
    /// flush what was queued for it (within [`QuicConfig::shutdown_timeout`]), closes them
    /// with [`CLOSE_SHUTDOWN`](super::CLOSE_SHUTDOWN), and returns the provider (its store
    /// holds everything it acknowledged: the provider commits before it answers).
    pub async fn shutdown(mut self) -> Result<Provider<S, R>, QuicError> {
        let task = self.task.take().ok_or(QuicError::Stopped)?;
        let _ = self.events.send(Event::Shutdown).await;
        let provider = task.await.map_err(|_| QuicError::Stopped)?;
        self.acceptor.abort();
        // The store thread has stopped: the provider holds the last handle.
        provider
            .try_map_store(SharedStore::into_inner)
            .map_err(|_| QuicError::Stopped)
    }
}

impl<S: Store, R: CryptoRng> Drop for ProviderServer<S, R> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            self.endpoint
                .close(quinn::VarInt::from_u32(CLOSE_SHUTDOWN), b"provider stopped");
        }
        self.acceptor.abort();
    }
}

/// Takes connection attempts off the endpoint, refusing or retrying them when the
/// provider is at its limits.
async fn accept_loop<S, R>(
    endpoint: quinn::Endpoint,
    events: mpsc::Sender<Event<S, R>>,
    quic: QuicConfig,
    connections: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    hosts: HostCounts,
) where
    S: Store + Send + 'static,
    R: CryptoRng + Send + 'static,
{
    while let Some(incoming) = endpoint.accept().await {
        let open = connections.load(Ordering::Acquire);
        let pending = handshakes.load(Ordering::Acquire);
        if open >= quic.max_connections || pending >= quic.max_handshakes {
            tracing::debug!(
                peer = %incoming.remote_address(), open, pending,
                "refusing a connection: at the limit"
            );
            incoming.refuse();
            continue;
        }
        if pending >= quic.retry_threshold && !incoming.remote_address_validated() {
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        // A host that already holds RETRY_THRESHOLD connections must prove its address
        // first: otherwise anyone could spoof a victim's address and use up its slots.
        let peer = incoming.remote_address();
        let host = Host::of(peer.ip());
        if !incoming.remote_address_validated()
            && HostSlot::count(&hosts, host) >= quic.retry_threshold
        {
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        let Some(host) = HostSlot::take(&hosts, host, quic.max_connections_per_host) else {
            tracing::debug!(%peer, "refusing a connection: too many from this host");
            incoming.refuse();
            continue;
        };
        let slot = Slot::take(&connections).with_host(host);
        let handshake = Slot::take(&handshakes);
        tokio::spawn(accept_one(
            incoming,
            events.clone(),
            slot,
            handshake,
            quic.clone(),
        ));
    }
}

/// One inbound connection: the handshake, then the connector's stream.
async fn accept_one<S, R>(
    incoming: quinn::Incoming,
    events: mpsc::Sender<Event<S, R>>,
    slot: Slot,
    handshake: Slot,
    quic: QuicConfig,
) where
    S: Store + Send + 'static,
    R: CryptoRng + Send + 'static,
{
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection attempt failed");
            return;
        }
    };
    let connection = match tokio::time::timeout(quic.handshake_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    drop(handshake);
    let (send, recv) =
        match tokio::time::timeout(quic.stream_open_timeout, connection.accept_bi()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection closed before its stream opened");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no stream opened in time");
                connection.close(
                    quinn::VarInt::from_u32(CLOSE_STREAM_ERROR),
                    b"no stream opened",
                );
                return;
            }
        };
    let Some(binding) = io::binding(&connection) else {
        connection.close(quinn::VarInt::from_u32(CLOSE_STREAM_ERROR), b"no binding");
        return;
    };
    let tls_key = tls::peer_key(&connection);
    let accepted = Accepted {
        connection,
        send,
        recv,
        binding,
        tls_key,
        slot,
    };
    let _ = events.send(Event::Inbound(Box::new(accepted))).await;
}

/// Looks `endpoint` (`host:port`) up, preferring the local socket's address family.
async fn lookup(endpoint: &str, ipv4: bool) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() == ipv4)
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{endpoint}: no address"))
}

/// Opens a connection to another provider and its stream.
async fn dial(
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    info: &PeerInfo,
) -> Result<Dialed, String> {
    let ipv4 = endpoint.local_addr().map_or(true, |a| a.is_ipv4());
    let addr = lookup(&info.endpoint, ipv4).await?;
    let connection = endpoint
        .connect_with(config, addr, info.domain.as_str())
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let binding = io::binding(&connection).ok_or("no channel binding")?;
    Ok(Dialed {
        domain: info.domain.clone(),
        key: info.key,
        connection,
        send,
        recv,
        binding,
    })
}

struct Entry {
    io: ConnIo,
    /// For inbound connections: the Ed25519 key of the TLS client certificate.
    tls_key: Option<[u8; 32]>,
    inbound: bool,
}

/// The thread that runs the provider's commits, one batch at a time, in order.
struct Committer {
    jobs: Option<std::sync::mpsc::Sender<CommitJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The batch running and where its answer arrives.
    running: Option<(u64, oneshot::Receiver<Result<(), StoreError>>)>,
}

impl Committer {
    fn start<S: Store + Send + 'static>(
        domain: &Domain,
        store: SharedStore<S>,
    ) -> Result<Self, QuicError> {
        let (jobs, queue) = std::sync::mpsc::channel::<CommitJob>();
        let thread = std::thread::Builder::new()
            .name(format!("store {domain}"))
            .spawn(move || {
                for (batch, answer) in queue {
                    let _ = answer.send(store.lock().commit_owned(batch.ops));
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            running: None,
        })
    }

    /// Hands `batch` to the thread. If the thread is gone the batch fails, like a
    /// commit that failed.
    fn submit(&mut self, batch: CommitBatch) {
        let (answer, receive) = oneshot::channel();
        let id = batch.id;
        if let Some(jobs) = &self.jobs
            && let Err(std::sync::mpsc::SendError((_, answer))) = jobs.send((batch, answer))
        {
            let _ = answer.send(Err(StoreError("the store thread stopped".into())));
        }
        self.running = Some((id, receive));
    }

    /// The running batch's answer (never resolves while none runs).
    async fn done(
        running: &mut Option<(u64, oneshot::Receiver<Result<(), StoreError>>)>,
    ) -> (u64, Result<(), StoreError>) {
        match running {
            Some((id, answer)) => {
                let result = answer
                    .await
                    .unwrap_or_else(|_| Err(StoreError("the store thread stopped".into())));
                (*id, result)
            }
            None => std::future::pending().await,
        }
    }

    /// Stops the thread once it has run what it was given.
    async fn stop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The event loop: owns the provider and every connection's handle.
struct EventLoop<S: Store, R: CryptoRng, D> {
    provider: Provider<SharedStore<S>, R>,
    resolver: D,
    identity: Arc<TlsIdentity>,
    endpoint: quinn::Endpoint,
    quic: QuicConfig,
    events: mpsc::Sender<Event<S, R>>,
    /// The queue of frames from other providers' connections, served first (but never
    /// to the exclusion of `events`): their answers free the relay window.
    peer_events: mpsc::Sender<Event<S, R>>,
    conns: HashMap<ConnectionId, Entry>,
    /// Dial configurations by expected provider key.
    dial_configs: HashMap<[u8; 32], quinn::ClientConfig>,
    next_id: u64,
    deadline: Option<UnixMillis>,
    /// Writers flushing before their connection closes.
    closing: Vec<JoinHandle<()>>,
    stopping: bool,
    committer: Committer,
}

impl<S, R, D> EventLoop<S, R, D>
where
    S: Store + Send + 'static,
    R: CryptoRng + Send + 'static,
    D: Resolver + Send + 'static,
{
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Event<S, R>>,
        mut peers: mpsc::Receiver<Event<S, R>>,
    ) -> Provider<SharedStore<S>, R> {
        self.drain();
        loop {
            let deadline = self.deadline;
            tokio::select! {
                biased;
                (id, result) = Committer::done(&mut self.committer.running) => {
                    self.committed(id, result);
                }
                Some(event) = peers.recv() => {
                    if self.handle_batch(event, &mut peers, &mut rx) {
                        break;
                    }
                }
                event = rx.recv() => {
                    let Some(event) = event else { break };
                    if self.handle_batch(event, &mut peers, &mut rx) {
                        break;
                    }
                }
                () = sleep_until(deadline) => {
                    self.provider.handle_timeout(now());
                    self.drain();
                }
            }
        }
        self.shut_down().await;
        self.committer.stop().await;
        self.provider
    }

    /// Handles `first` and what else is queued, up to [`BATCH`] events (the first half
    /// preferably from other providers, the rest preferably from devices, so neither
    /// queue starves), then drains once: a burst of frames becomes one batch of writes.
    /// `true` means shut down.
    fn handle_batch(
        &mut self,
        first: Event<S, R>,
        peers: &mut mpsc::Receiver<Event<S, R>>,
        rx: &mut mpsc::Receiver<Event<S, R>>,
    ) -> bool {
        let mut stop = self.handle(first);
        let mut handled = 1;
        while !stop && handled < BATCH {
            let next = if handled < BATCH / 2 {
                peers.try_recv().or_else(|_| rx.try_recv())
            } else {
                rx.try_recv().or_else(|_| peers.try_recv())
            };
            let Ok(event) = next else { break };
            stop = self.handle(event);
            handled += 1;
        }
        self.drain();
        stop
    }

    fn next_conn(&mut self) -> ConnectionId {
        self.next_id += 1;
        ConnectionId(self.next_id)
    }

    /// Handles one event; `true` means shut down.
    fn handle(&mut self, event: Event<S, R>) -> bool {
        let now = now();
        match event {
            Event::Io(IoEvent::Frame { key, frame }) => {
                let conn = ConnectionId(key);
                if self.conns.contains_key(&conn) {
                    self.provider
                        .handle_input(now, ProviderInput::Received { conn, bytes: frame });
                }
            }
            Event::Io(IoEvent::Closed { key, why }) => {
                let conn = ConnectionId(key);
                if self.conns.remove(&conn).is_some() {
                    tracing::debug!(%conn, %why, "connection closed");
                    self.provider
                        .handle_input(now, ProviderInput::Closed { conn });
                }
            }
            Event::Inbound(a) => {
                let Accepted {
                    connection,
                    send,
                    recv,
                    binding,
                    tls_key,
                    slot,
                } = *a;
                if self.stopping {
                    connection.close(
                        quinn::VarInt::from_u32(CLOSE_SHUTDOWN),
                        b"provider shutting down",
                    );
                    return false;
                }
                let conn = self.next_conn();
                tracing::debug!(%conn, peer = %connection.remote_address(), "connection accepted");
                let io = self.spawn_io(conn, connection, send, recv, Some(slot));
                self.conns.insert(
                    conn,
                    Entry {
                        io,
                        tls_key,
                        inbound: true,
                    },
                );
                self.provider.handle_input(
                    now,
                    ProviderInput::Connected {
                        conn,
                        direction: Direction::Inbound,
                        binding,
                    },
                );
            }
            Event::Outbound(d) => {
                let Dialed {
                    domain,
                    key,
                    connection,
                    send,
                    recv,
                    binding,
                } = *d;
                let conn = self.next_conn();
                tracing::debug!(%conn, %domain, peer = %connection.remote_address(), "connected to provider");
                let io = self.spawn_io(conn, connection, send, recv, None);
                io.prioritise();
                self.conns.insert(
                    conn,
                    Entry {
                        io,
                        tls_key: None,
                        inbound: false,
                    },
                );
                self.provider.handle_input(
                    now,
                    ProviderInput::Connected {
                        conn,
                        direction: Direction::Outbound { domain, key },
                        binding,
                    },
                );
            }
            Event::DialFailed { domain, why } => {
                tracing::info!(%domain, %why, "could not connect to provider");
                self.provider
                    .handle_input(now, ProviderInput::ConnectFailed { domain });
            }
            Event::Call(f) => f(&mut self.provider),
            Event::Shutdown => return true,
        }
        false
    }

    fn spawn_io(
        &self,
        conn: ConnectionId,
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        slot: Option<Slot>,
    ) -> ConnIo {
        ConnIo::spawn(
            conn.0,
            connection,
            send,
            recv,
            Lanes {
                normal: self.events.clone(),
                priority: Some(self.peer_events.clone()),
            },
            self.quic.max_send_queue_bytes,
            slot,
        )
    }

    /// Acts on every output until the provider has nothing more to do.
    ///
    /// Frames and closes are collected first and handed to the connections once the
    /// provider has nothing more to say: a connection dropped on the way (a provider whose
    /// TLS key is not its provider key, seen in the `Authenticated` event that follows its
    /// `Welcome`) never gets the frames queued for it.
    fn drain(&mut self) {
        let mut wire = Vec::new();
        loop {
            self.poll_all(&mut wire);
            if wire.is_empty() || !self.flush_wire(&mut wire) {
                break;
            }
        }
        self.closing.retain(|w| !w.is_finished());
    }

    /// Hands the collected frames to their connections and closes what is to be closed;
    /// `true` if a connection turned out to be gone (the provider has new outputs).
    fn flush_wire(&mut self, wire: &mut Vec<(ConnectionId, Option<Bytes>)>) -> bool {
        let mut fed = false;
        for (conn, frame) in wire.drain(..) {
            match frame {
                Some(bytes) => fed |= self.transmit(now(), conn, bytes),
                None => {
                    if let Some(e) = self.conns.remove(&conn) {
                        self.closing.push(e.io.close(CLOSE_NORMAL, b"closed"));
                    }
                }
            }
        }
        fed
    }

    /// Polls every output; frames (`Some`) and closes (`None`) go to `wire` in order.
    fn poll_all(&mut self, wire: &mut Vec<(ConnectionId, Option<Bytes>)>) {
        loop {
            let now = now();
            match self.provider.poll_output(now) {
                ProviderOutput::Transmit { conn, bytes } => wire.push((conn, Some(bytes))),
                ProviderOutput::Close { conn } => wire.push((conn, None)),
                ProviderOutput::Connect { domain } => self.connect(now, domain),
                ProviderOutput::Resolve { domain } => {
                    let key = match self.resolver.resolve(&domain) {
                        Ok(info) => Some(info.key),
                        Err(e) => {
                            tracing::info!(%domain, error = %e, "cannot resolve provider");
                            None
                        }
                    };
                    self.provider
                        .handle_input(now, ProviderInput::Resolved { domain, key });
                }
                ProviderOutput::Event(e) => self.on_event(now, e),
                ProviderOutput::Commit(batch) => self.committer.submit(batch),
                ProviderOutput::Timeout(t) => {
                    self.deadline = t;
                    break;
                }
            }
        }
    }

    fn drop_conn(&mut self, now: UnixMillis, conn: ConnectionId, code: u32, reason: &'static [u8]) {
        if let Some(e) = self.conns.remove(&conn) {
            e.io.abort(code, reason);
            self.provider
                .handle_input(now, ProviderInput::Closed { conn });
        }
    }

    /// Queues a frame; `true` if that failed and the provider was told the connection is
    /// gone (so it has new outputs).
    fn transmit(&mut self, now: UnixMillis, conn: ConnectionId, bytes: Bytes) -> bool {
        let Some(entry) = self.conns.get(&conn) else {
            return false;
        };
        match entry.io.send(bytes) {
            Ok(()) => return false,
            Err(SendError::Overflow) => {
                tracing::warn!(%conn, peer = %entry.io.remote(), "closing a connection that does not read");
                self.drop_conn(now, conn, CLOSE_SEND_OVERFLOW, b"send queue overflow");
            }
            Err(SendError::TooLarge) => {
                tracing::error!(%conn, "the provider emitted a frame above MAX_FRAME_LEN");
                self.drop_conn(now, conn, CLOSE_NORMAL, b"internal error");
            }
            Err(SendError::Closed) => self.drop_conn(now, conn, CLOSE_NORMAL, b"closed"),
        }
        true
    }

    fn connect(&mut self, now: UnixMillis, domain: Domain) {
        if self.stopping {
            return;
        }
        let info = match self.resolver.resolve(&domain) {
            Ok(info) => info,
            Err(e) => {
                tracing::info!(%domain, error = %e, "cannot resolve provider");
                self.provider
                    .handle_input(now, ProviderInput::ConnectFailed { domain });
                return;
            }
        };
        let key = info.key.to_bytes();
        let config = match self.dial_configs.get(&key) {
            Some(c) => c.clone(),
            None => match tls::client_config_for_provider(&info.key, &self.identity, &self.quic) {
                Ok(c) => {
                    self.dial_configs.insert(key, c.clone());
                    c
                }
                Err(e) => {
                    tracing::error!(%domain, error = %e, "cannot build a TLS configuration");
                    self.provider
                        .handle_input(now, ProviderInput::ConnectFailed { domain });
                    return;
                }
            },
        };
        let endpoint = self.endpoint.clone();
        let events = self.events.clone();
        let timeout = self.quic.connect_timeout;
        tokio::spawn(async move {
            let event = match tokio::time::timeout(timeout, dial(endpoint, config, &info)).await {
                Ok(Ok(d)) => Event::Outbound(Box::new(d)),
                Ok(Err(why)) => Event::DialFailed { domain, why },
                Err(_) => Event::DialFailed {
                    domain,
                    why: "timed out".into(),
                },
            };
            let _ = events.send(event).await;
        });
    }

    fn on_event(&mut self, now: UnixMillis, e: ProviderEvent) {
        match e {
            ProviderEvent::Authenticated { conn, peer } => {
                tracing::debug!(%conn, ?peer, "authenticated");
                if let PeerIdentity::Provider(domain) = peer {
                    self.check_tls_key(now, conn, &domain);
                }
            }
            ProviderEvent::Refused { conn, error } => {
                tracing::info!(%conn, %error, "connection refused");
            }
            ProviderEvent::Registered { address } => {
                tracing::info!(%address, "user registered");
            }
            ProviderEvent::Undeliverable {
                message_id,
                recipient,
                error,
                ..
            } => {
                tracing::info!(?message_id, %recipient, %error, "envelope undeliverable");
            }
            ProviderEvent::StorageFailed(error) => {
                tracing::error!(%error, "storage failed; state reloaded");
            }
            ProviderEvent::CorruptRecords(n) => {
                tracing::warn!(records = n, "store records that do not decode were skipped");
            }
            ProviderEvent::GroupChangeOrdered { group, epoch } => {
                tracing::info!(%group, epoch, "group change ordered");
            }
            ProviderEvent::GroupItemDropped { recipient, device } => {
                tracing::warn!(%recipient, %device, "group item dropped: mailbox full");
            }
        }
    }

    /// An inbound connection authenticated as provider `domain`: its TLS client
    /// certificate must carry that domain's provider key.
    fn check_tls_key(&mut self, now: UnixMillis, conn: ConnectionId, domain: &Domain) {
        let Some(entry) = self.conns.get(&conn) else {
            return;
        };
        if !entry.inbound {
            return;
        }
        let expected = self.resolver.resolve(domain).ok().map(|i| i.key);
        if expected.is_some_and(|k| entry.tls_key == Some(k.to_bytes())) {
            entry.io.prioritise();
            return;
        }
        tracing::warn!(
            %conn,
            %domain,
            expected = %expected.map_or_else(|| "none".to_owned(), |k| k.to_string()),
            presented = %entry.tls_key.map_or_else(|| "no certificate".to_owned(), |k| hex(&k)),
            "closing a provider connection: its TLS client key is not the domain's provider key"
        );
        self.drop_conn(now, conn, CLOSE_KEY_MISMATCH, b"tls key mismatch");
    }

    /// Waits for the running commit and any the provider hands over after it.
    async fn run_out_commits(&mut self) {
        while self.committer.running.is_some() {
            let (id, result) = Committer::done(&mut self.committer.running).await;
            self.committed(id, result);
        }
    }

    /// The store thread answered batch `id`: tell the provider, act on what it releases.
    fn committed(&mut self, id: u64, result: Result<(), StoreError>) {
        self.committer.running = None;
        self.provider
            .handle_input(now(), ProviderInput::Committed { id, result });
        self.drain();
    }

    /// Graceful stop: see [`ProviderServer::shutdown`].
    async fn shut_down(&mut self) {
        self.stopping = true;
        self.endpoint.set_server_config(None);
        // The batch running holds answers to what was accepted: they go out before the
        // connections close.
        self.run_out_commits().await;
        let now = now();
        let conns: Vec<ConnectionId> = self.conns.keys().copied().collect();
        let mut writers = std::mem::take(&mut self.closing);
        for conn in conns {
            if let Some(e) = self.conns.remove(&conn) {
                writers.push(e.io.close(CLOSE_SHUTDOWN, b"provider shutting down"));
            }
            self.provider
                .handle_input(now, ProviderInput::Closed { conn });
        }
        self.provider.flush();
        self.drain();
        self.run_out_commits().await;
        let flush = async {
            for w in writers {
                let _ = w.await;
            }
        };
        let _ = tokio::time::timeout(self.quic.shutdown_timeout, flush).await;
        self.endpoint.close(
            quinn::VarInt::from_u32(CLOSE_SHUTDOWN),
            b"provider shutting down",
        );
        let _ = tokio::time::timeout(self.quic.shutdown_timeout, self.endpoint.wait_idle()).await;
        tracing::info!(domain = %self.provider.domain(), "provider stopped");
    }
}
