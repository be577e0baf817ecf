//! [`ClientDriver`]: a device's [`Client`] connected to its provider over QUIC.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use rand_core::CryptoRng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::io::{self, ConnIo, IoEvent};
use super::tls::Refusals;
use super::{CLOSE_NORMAL, EVENT_QUEUE, QuicConfig, QuicError, now, sleep_until, tls};
use crate::address::Address;
use crate::client::{Client, ClientError, ClientEvent, ClientInput, ClientOutput};
use crate::envelope::{Content, MessageId};
use crate::identity::ProviderKey;
use crate::session::Account;
use crate::time::UnixMillis;

/// Called after every drain of the client's outputs with the account and the events of
/// that drain, **before** the driver acts on any of those outputs: before it sends a
/// frame (a mailbox acknowledgement, a sealed envelope) or hands an event to the app. The
/// hook persists the account ([`Account::save`]) and whatever the app must keep from the
/// events (received messages, say), durably, so that nothing is acknowledged to the
/// provider that a crash could lose (SPEC.md 16.7, 16.12) and no ratchet step is used on
/// the wire before it is stored (SPEC.md 15.8).
///
/// An error stops the driver at once: the outputs of that drain are dropped (nothing of
/// them leaves), the app gets [`DriverEvent::PersistFailed`], and the connection closes.
/// The client's memory is then ahead of its stored state, so an app restarts from the
/// store rather than reusing the client [`ClientDriver::shutdown`] returns.
pub type PersistFn = Box<dyn FnMut(&Account, &[ClientEvent]) -> Result<(), String> + Send>;

/// How a [`ClientDriver`] reaches its provider.
pub struct ClientDriverConfig {
    /// Where the provider listens. Its TLS key must be the client's pinned provider key
    /// ([`ClientConfig::provider_key`](crate::client::ClientConfig::provider_key)).
    pub provider_addr: SocketAddr,
    /// Transport limits and timeouts.
    pub quic: QuicConfig,
    /// Persistence hook, if any.
    pub persist: Option<PersistFn>,
}

impl std::fmt::Debug for ClientDriverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDriverConfig")
            .field("provider_addr", &self.provider_addr)
            .field("quic", &self.quic)
            .field("persist", &self.persist.is_some())
            .finish()
    }
}

impl ClientDriverConfig {
    /// Default limits, no persistence hook.
    pub fn new(provider_addr: SocketAddr) -> Self {
        Self {
            provider_addr,
            quic: QuicConfig::default(),
            persist: None,
        }
    }
}

/// What the driver tells the app.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
// Client events are large, but they are handed over at once; boxing would only add an
// allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum DriverEvent {
    /// An event of the client state machine.
    Client(ClientEvent),
    /// A connection attempt failed before the protocol started (unreachable, refused,
    /// timed out). The client retries after its backoff.
    ConnectFailed {
        /// Why, for the user and the log.
        reason: String,
    },
    /// The server at the provider's address proved a key other than the pinned provider
    /// key, so TLS refused it and no frame was exchanged. The client retries after its
    /// backoff, but this does not go away by itself: the address or the pinned key is
    /// wrong, or someone is impersonating the provider.
    WrongProviderKey {
        /// The pinned key.
        expected: ProviderKey,
        /// What was presented instead (a key in hex, or what the certificate held).
        presented: String,
    },
    /// The persistence hook failed; the driver stopped without acting on the outputs
    /// it could not persist (see [`PersistFn`]).
    PersistFailed {
        /// The hook's error.
        reason: String,
    },
}

type Call<R> = Box<dyn FnOnce(&mut Client<R>, UnixMillis) + Send>;

enum Event<R: CryptoRng> {
    Io(IoEvent),
    Connected {
        attempt: u64,
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        binding: Bytes,
    },
    ConnectFailed {
        attempt: u64,
        why: String,
    },
    Call(Call<R>),
    Shutdown,
}

impl<R: CryptoRng> From<IoEvent> for Event<R> {
    fn from(e: IoEvent) -> Self {
        Event::Io(e)
    }
}

/// Drives a [`Client`] over QUIC: connects to the provider whenever the client asks
/// (its `Connect` outputs carry the reconnection backoff), hands frames both ways,
/// reports [`DriverEvent`]s on a channel and takes commands ([`ClientDriver::send`]).
///
/// Dropping the driver stops it at once; [`ClientDriver::shutdown`] closes the connection
/// cleanly and gives the client back.
pub struct ClientDriver<R: CryptoRng> {
    events: mpsc::Sender<Event<R>>,
    endpoint: quinn::Endpoint,
    task: Option<JoinHandle<Client<R>>>,
}

impl<R: CryptoRng> std::fmt::Debug for ClientDriver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDriver").finish_non_exhaustive()
    }
}

impl<R> ClientDriver<R>
where
    R: CryptoRng + Send + 'static,
{
    /// Starts driving `client`; its events arrive on the returned receiver (read it: the
    /// driver waits when [`EVENT_QUEUE`](super::EVENT_QUEUE) events are unread). Must be
    /// called inside a tokio runtime.
    pub fn start(
        client: Client<R>,
        config: ClientDriverConfig,
    ) -> Result<(Self, mpsc::Receiver<DriverEvent>), QuicError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| QuicError::Config("not inside a tokio runtime".into()))?;
        let (tls, refusals) = tls::device_config(&client.config().provider_key, &config.quic)?;
        let bind: SocketAddr = if config.provider_addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = {
            let _guard = runtime.enter();
            super::client_endpoint(bind, config.quic.udp_buffer_bytes)?
        };
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (app_tx, app_rx) = mpsc::channel(EVENT_QUEUE);
        let driver = Driver {
            client,
            endpoint: endpoint.clone(),
            tls,
            refusals,
            addr: config.provider_addr,
            quic: config.quic,
            persist: config.persist,
            events: tx.clone(),
            app: app_tx,
            attempt: 0,
            connecting: None,
            active: None,
            deadline: None,
            closing: Vec::new(),
        };
        let task = runtime.spawn(driver.run(rx));
        Ok((
            Self {
                events: tx,
                endpoint,
                task: Some(task),
            },
            app_rx,
        ))
    }

    /// Runs `f` on the client, on the driver's task, then acts on its outputs.
    pub async fn with_client<T, F>(&self, f: F) -> Result<T, QuicError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Client<R>, UnixMillis) -> T + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let call: Call<R> = Box::new(move |c, now| {
            let _ = reply.send(f(c, now));
        });
        self.events
            .send(Event::Call(call))
            .await
            .map_err(|_| QuicError::Stopped)?;
        answer.await.map_err(|_| QuicError::Stopped)
    }

    /// Sends `content` to `to` ([`Client::send`]).
    pub async fn send(
        &self,
        to: Address,
        content: Content,
    ) -> Result<Result<MessageId, ClientError>, QuicError> {
        self.with_client(move |c, now| c.send(now, &to, content))
            .await
    }

    /// Sends a read receipt ([`Client::mark_read`]).
    pub async fn mark_read(
        &self,
        conversation: Address,
        ids: Vec<MessageId>,
    ) -> Result<Result<(), ClientError>, QuicError> {
        self.with_client(move |c, now| c.mark_read(now, &conversation, &ids))
            .await
    }

    /// Whether the client is authenticated to its provider right now.
    pub async fn is_online(&self) -> Result<bool, QuicError> {
        self.with_client(|c, _| c.is_online()).await
    }

    /// Closes the connection (flushing what was queued) and returns the client.
    pub async fn shutdown(mut self) -> Result<Client<R>, QuicError> {
        let task = self.task.take().ok_or(QuicError::Stopped)?;
        let _ = self.events.send(Event::Shutdown).await;
        task.await.map_err(|_| QuicError::Stopped)
    }
}

impl<R: CryptoRng> Drop for ClientDriver<R> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            self.endpoint
                .close(quinn::VarInt::from_u32(CLOSE_NORMAL), b"client stopped");
        }
    }
}

async fn dial(
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: String,
) -> Result<
    (
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
        Bytes,
    ),
    String,
> {
    let connection = endpoint
        .connect_with(config, addr, &server_name)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let binding = io::binding(&connection).ok_or("no channel binding")?;
    Ok((connection, send, recv, binding))
}

struct Driver<R: CryptoRng> {
    client: Client<R>,
    endpoint: quinn::Endpoint,
    tls: quinn::ClientConfig,
    refusals: Arc<Refusals>,
    addr: SocketAddr,
    quic: QuicConfig,
    persist: Option<PersistFn>,
    events: mpsc::Sender<Event<R>>,
    app: mpsc::Sender<DriverEvent>,
    /// Connection attempts so far; the current one's number keys its events.
    attempt: u64,
    /// The attempt in progress, if any.
    connecting: Option<u64>,
    /// The open connection and its attempt number.
    active: Option<(u64, ConnIo)>,
    deadline: Option<UnixMillis>,
    closing: Vec<JoinHandle<()>>,
}

impl<R> Driver<R>
where
    R: CryptoRng + Send + 'static,
{
    async fn run(mut self, mut rx: mpsc::Receiver<Event<R>>) -> Client<R> {
        if self.drain().await {
            loop {
                tokio::select! {
                    event = rx.recv() => {
                        let Some(event) = event else { break };
                        let stop = self.handle(event).await;
                        if !self.drain().await || stop {
                            break;
                        }
                    }
                    () = sleep_until(self.deadline) => {
                        self.client.handle_timeout(now());
                        if !self.drain().await {
                            break;
                        }
                    }
                }
            }
        }
        self.shut_down().await;
        self.client
    }

    async fn handle(&mut self, event: Event<R>) -> bool {
        let now = now();
        match event {
            Event::Io(IoEvent::Frame { key, frame }) => {
                if self.active.as_ref().is_some_and(|(a, _)| *a == key) {
                    self.client.handle_input(now, ClientInput::Received(frame));
                }
            }
            Event::Io(IoEvent::Closed { key, why }) => {
                if self.active.as_ref().is_some_and(|(a, _)| *a == key) {
                    tracing::debug!(provider = %self.addr, %why, "connection closed");
                    self.active = None;
                    self.client.handle_input(now, ClientInput::Disconnected);
                }
            }
            Event::Connected {
                attempt,
                connection,
                send,
                recv,
                binding,
            } => {
                if self.connecting == Some(attempt) {
                    self.connecting = None;
                    let io = ConnIo::spawn(
                        attempt,
                        connection,
                        send,
                        recv,
                        io::Lanes {
                            normal: self.events.clone(),
                            priority: None,
                        },
                        self.quic.max_send_queue_bytes,
                        None,
                    );
                    self.active = Some((attempt, io));
                    self.client
                        .handle_input(now, ClientInput::Connected { binding });
                } else {
                    connection.close(quinn::VarInt::from_u32(CLOSE_NORMAL), b"superseded");
                }
            }
            Event::ConnectFailed { attempt, why } => {
                if self.connecting == Some(attempt) {
                    self.connecting = None;
                    tracing::info!(provider = %self.addr, %why, "could not connect to the provider");
                    let event = match self.refusals.take() {
                        Some(presented) => DriverEvent::WrongProviderKey {
                            expected: self.client.config().provider_key,
                            presented,
                        },
                        None => DriverEvent::ConnectFailed { reason: why },
                    };
                    let _ = self.app.send(event).await;
                    self.client.handle_input(now, ClientInput::Disconnected);
                }
            }
            Event::Call(f) => f(&mut self.client, now),
            Event::Shutdown => return true,
        }
        false
    }

    fn close_active(&mut self) {
        self.connecting = None;
        if let Some((_, io)) = self.active.take() {
            self.closing.push(io.close(CLOSE_NORMAL, b"closed"));
        }
    }

    fn connect(&mut self) {
        self.close_active();
        self.attempt += 1;
        let attempt = self.attempt;
        let _ = self.refusals.take();
        self.connecting = Some(attempt);
        let endpoint = self.endpoint.clone();
        let config = self.tls.clone();
        let addr = self.addr;
        let name = self.client.config().provider.as_str().to_owned();
        let events = self.events.clone();
        let timeout = self.quic.connect_timeout;
        tokio::spawn(async move {
            let event =
                match tokio::time::timeout(timeout, dial(endpoint, config, addr, name)).await {
                    Ok(Ok((connection, send, recv, binding))) => Event::Connected {
                        attempt,
                        connection,
                        send,
                        recv,
                        binding,
                    },
                    Ok(Err(why)) => Event::ConnectFailed { attempt, why },
                    Err(_) => Event::ConnectFailed {
                        attempt,
                        why: "timed out".into(),
                    },
                };
            let _ = events.send(event).await;
        });
    }

    /// Drains the client's outputs, persists, then acts on them (SPEC.md 16.7: state
    /// durable before anything is acknowledged). Returns `false` if persisting failed:
    /// the driver must stop.
    async fn drain(&mut self) -> bool {
        loop {
            let mut outputs = Vec::new();
            loop {
                match self.client.poll_output(now()) {
                    ClientOutput::Timeout(t) => {
                        self.deadline = t;
                        break;
                    }
                    o => outputs.push(o),
                }
            }
            if let Some(persist) = &mut self.persist {
                let events: Vec<ClientEvent> = outputs
                    .iter()
                    .filter_map(|o| match o {
                        ClientOutput::Event(e) => Some(e.clone()),
                        _ => None,
                    })
                    .collect();
                if let Err(reason) = persist(self.client.account(), &events) {
                    tracing::error!(%reason, "cannot persist the client's state; stopping");
                    let _ = self.app.send(DriverEvent::PersistFailed { reason }).await;
                    return false;
                }
            }
            // A failed write feeds the client an input, whose outputs take another round.
            let mut again = false;
            for output in outputs {
                match output {
                    ClientOutput::Connect => self.connect(),
                    ClientOutput::Transmit(frame) => {
                        let failed = match &self.active {
                            Some((_, io)) => io.send(frame).is_err(),
                            None => false,
                        };
                        if failed && let Some((_, io)) = self.active.take() {
                            tracing::warn!(provider = %self.addr, "connection not writable; dropping it");
                            io.abort(CLOSE_NORMAL, b"send failed");
                            self.client.handle_input(now(), ClientInput::Disconnected);
                            again = true;
                        }
                    }
                    ClientOutput::Close => self.close_active(),
                    ClientOutput::Event(e) => {
                        let _ = self.app.send(DriverEvent::Client(e)).await;
                    }
                    ClientOutput::Timeout(_) => {}
                }
            }
            self.closing.retain(|w| !w.is_finished());
            if !again {
                return true;
            }
        }
    }

    async fn shut_down(&mut self) {
        let connected = self.active.is_some() || self.connecting.is_some();
        self.close_active();
        if connected {
            // The client learns that its connection is gone, so that a later driver
            // given this client reconnects.
            self.client.handle_input(now(), ClientInput::Disconnected);
        }
        let writers = std::mem::take(&mut self.closing);
        let flush = async {
            for w in writers {
                let _ = w.await;
            }
        };
        let _ = tokio::time::timeout(self.quic.shutdown_timeout, flush).await;
        self.endpoint
            .close(quinn::VarInt::from_u32(CLOSE_NORMAL), b"client stopped");
        let _ = tokio::time::timeout(self.quic.shutdown_timeout, self.endpoint.wait_idle()).await;
    }
}
