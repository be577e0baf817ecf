//! The QUIC transport (cargo feature `quic`): drives a [`Provider`](crate::provider::Provider)
//! or a [`Client`](crate::client::Client) over quinn and rustls (ring), on tokio.
//!
//! # Wire mapping (SPEC.md 16 over QUIC)
//!
//! * **QUIC version 1** (RFC 9000) with **TLS 1.3** only, ALPN [`ALPN`] (`kogge/1`). A peer
//!   that offers no common ALPN fails the handshake.
//! * **One bidirectional stream per connection**, opened by the connector (the device, or the
//!   provider that has something for another provider). The connector's first frame
//!   (`Hello`) opens it; the acceptor allows exactly one (no unidirectional streams, no
//!   datagrams, no 0-RTT). The connector allows the acceptor no streams at all.
//! * **Framing**: each frame (SPEC.md 16.2) travels as `u32 big-endian length ‖ Frame bytes`
//!   on that stream. A length above [`MAX_FRAME_LEN`](crate::limits::MAX_FRAME_LEN) closes
//!   the connection with [`CLOSE_FRAME_TOO_LARGE`] before anything is read or allocated for
//!   it; bytes that are not a valid `Frame` are refused by the state machine (`Goodbye{bad_frame}`,
//!   then [`CLOSE_NORMAL`]). A stream that ends (FIN or reset) ends the connection; a stream
//!   that ends inside a frame is [`CLOSE_STREAM_ERROR`].
//! * **Coalescing**: consecutive outgoing frames queued for one connection go out in one
//!   stream write of up to [`COALESCE_BYTES`] (quinn pays per write, not per byte; see
//!   PERF.md). Large frames are passed on without copying.
//! * **Channel binding** (SPEC.md 16.3): the TLS exporter (RFC 8446 7.5) with label
//!   [`BINDING_LABEL`] (`EXPORTER-kogge/1 binding`), an empty context and [`BINDING_LEN`]
//!   (32) bytes of output, given to the state machine as `binding` when the connection (and
//!   its stream) is open. Both handshake signatures cover it, so a handshake relayed into
//!   another QUIC connection fails.
//! * **Closing**: the side that closes flushes what it queued, finishes its stream, waits
//!   (at most [`FLUSH_TIMEOUT`]) for the peer to acknowledge it, then sends
//!   `CONNECTION_CLOSE` with one of the application codes `CLOSE_*` below.
//!
//! # Authentication at the TLS layer
//!
//! Kogge keys, not the web PKI, authenticate connections. Every provider presents a
//! self-signed X.509 certificate ([`provider_certificate`]) whose subject public key **is**
//! its Ed25519 provider key; names, dates, extensions and the certificate's own signature
//! are not looked at by anyone, only the key (as with RFC 7250 raw public keys).
//!
//! * A connector accepts the acceptor's certificate only if its SubjectPublicKeyInfo is
//!   exactly that of the **expected provider key**: the pinned key of a device's
//!   [`ClientConfig`](crate::client::ClientConfig), or for provider-to-provider the key the
//!   [`Resolver`](crate::resolve::Resolver) gives. The TLS 1.3 `CertificateVerify` must be an
//!   Ed25519 signature by that key. Any other key is refused during the handshake with a
//!   `warn` log line naming the expected and the presented key.
//! * A provider connecting to another presents its own certificate as a TLS client
//!   certificate. The acceptor takes any Ed25519 client certificate at the TLS layer (it
//!   cannot know yet who connects); once the protocol's `Auth` has bound the connection to a
//!   domain through the resolver, the adapter checks that the TLS client key is that
//!   domain's provider key, and closes the connection with [`CLOSE_KEY_MISMATCH`] if it is
//!   missing or different.
//! * Devices present no client certificate; they authenticate in the protocol
//!   (SPEC.md 16.3).
//!
//! The protocol-level handshake (SPEC.md 16.3) still runs on top, unchanged: TLS adds
//! confidentiality and refuses wrong keys before any frame is exchanged.
//!
//! # Limits
//!
//! [`QuicConfig`] holds the tunable ones; its `Default` uses the constants of this module:
//! [`MAX_CONNECTIONS`], [`MAX_CONNECTIONS_PER_HOST`], [`MAX_HANDSHAKES`],
//! [`RETRY_THRESHOLD`], [`MAX_INCOMING`],
//! [`IDLE_TIMEOUT`], [`KEEP_ALIVE_INTERVAL`], [`HANDSHAKE_TIMEOUT`], [`STREAM_OPEN_TIMEOUT`],
//! [`CONNECT_TIMEOUT`], [`MAX_SEND_QUEUE_BYTES`], [`FLUSH_TIMEOUT`],
//! [`SHUTDOWN_TIMEOUT`] and [`UDP_BUFFER_BYTES`] (see [`bind_udp`]).
//!
//! # Drivers
//!
//! * [`ProviderServer`]: one provider on one UDP socket: accepts devices and providers,
//!   dials providers, calls the provider's timers, shuts down gracefully.
//! * [`ClientDriver`]: one device's connection to its provider, reconnecting as the client
//!   asks; events come out of an mpsc channel, commands go in through the driver.
//!
//! Both run the state machine on one tokio task (a single-threaded event loop that owns it)
//! fed by an mpsc channel from per-connection reader tasks; a writer task per connection
//! owns the send half of the stream. They read the wall clock (the state machines take
//! `now` as [`UnixMillis`]) and nothing else from the environment.

mod client;
mod io;
mod server;
mod tls;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use client::{ClientDriver, ClientDriverConfig, DriverEvent, PersistFn};
pub use server::ProviderServer;
pub use tls::{
    TlsIdentity, client_config_for_device, client_config_for_provider, ed25519_key_of_certificate,
    provider_certificate,
};

use crate::time::UnixMillis;

/// Binds a UDP socket for a QUIC endpoint on `addr` and asks the kernel for receive and
/// send buffers of `buffer_bytes` each ([`UDP_BUFFER_BYTES`] by default), so that bursts
/// are not dropped before the endpoint reads them. The kernel may grant less (Linux caps
/// the request at `net.core.rmem_max` and `wmem_max`); [`udp_buffer_sizes`] says what it
/// gave. Both drivers bind their sockets with it (the client through [`client_endpoint`]).
pub fn bind_udp(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // A refused size is no reason not to serve: the socket keeps the system's default,
    // and `udp_buffer_sizes` reports it.
    if let Err(e) = state.set_recv_buffer_size((&socket).into(), buffer_bytes) {
        tracing::warn!(error = %e, "could not set the UDP receive buffer size");
    }
    if let Err(e) = state.set_send_buffer_size((&socket).into(), buffer_bytes) {
        tracing::warn!(error = %e, "could not set the UDP send buffer size");
    }
    Ok(socket)
}

/// The receive and send buffer sizes the kernel gave `socket` for data, comparable with
/// what [`bind_udp`] asked for (Linux reports twice that, the rest being its bookkeeping;
/// this halves it there).
pub fn udp_buffer_sizes(socket: &std::net::UdpSocket) -> std::io::Result<(usize, usize)> {
    let state = quinn::udp::UdpSocketState::new(socket.into())?;
    let data = |reported: usize| {
        if cfg!(target_os = "linux") {
            reported / 2
        } else {
            reported
        }
    };
    Ok((
        data(state.recv_buffer_size(socket.into())?),
        data(state.send_buffer_size(socket.into())?),
    ))
}

/// A QUIC endpoint that only connects, on a socket bound to `bind` by [`bind_udp`] with
/// buffers of `buffer_bytes`. Must be called inside a tokio runtime.
pub fn client_endpoint(bind: SocketAddr, buffer_bytes: usize) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        bind_udp(bind, buffer_bytes)?,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

/// The ALPN protocol identifier of this mapping.
pub const ALPN: &[u8] = b"kogge/1";

/// The TLS exporter label of the channel binding.
pub const BINDING_LABEL: &[u8] = b"EXPORTER-kogge/1 binding";

/// Bytes of channel binding exported per connection.
pub const BINDING_LEN: usize = 32;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Connections a provider holds at once (handshaking and established, inbound only);
/// further attempts are refused (QUIC `CONNECTION_REFUSED`).
pub const MAX_CONNECTIONS: usize = 4096;

/// Inbound handshakes in progress at once; further attempts are refused.
pub const MAX_HANDSHAKES: usize = 256;

/// Connections a provider holds at once from one host (an IPv4 address, or an IPv6 /64
/// prefix), handshaking and established; further attempts from it are refused. High
/// enough for a household or office behind one NAT address, low enough that one host
/// cannot take a large share of [`MAX_CONNECTIONS`].
pub const MAX_CONNECTIONS_PER_HOST: usize = 256;

/// With this many inbound handshakes in progress, or this many connections held by the
/// attempt's host, a new attempt from an address that has not been validated gets a QUIC
/// Retry (stateless address validation) instead of a handshake: a spoofed flood then
/// costs the provider one packet per attempt, and cannot use up a real host's
/// [`MAX_CONNECTIONS_PER_HOST`].
pub const RETRY_THRESHOLD: usize = 32;

/// Connection attempts quinn buffers before the provider has looked at them.
pub const MAX_INCOMING: usize = 1024;

/// A connection with no packet in either direction for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The connector sends a QUIC PING after this much silence, keeping NAT bindings and
/// the idle timer alive. The acceptor sends none.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// The TLS handshake of an inbound connection must complete within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After the handshake, the connector must open its stream (send its first frame) within
/// this time ([`AUTH_TIMEOUT_MS`](crate::limits::AUTH_TIMEOUT_MS)).
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// An outgoing connection (address lookup, handshake, stream) must be open within this
/// time, or the attempt counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes queued for one connection and not yet written to its stream. A peer that reads
/// slower than this fills is closed with [`CLOSE_SEND_OVERFLOW`].
pub const MAX_SEND_QUEUE_BYTES: usize = 4 * crate::limits::MAX_FRAME_LEN;

/// At most this many bytes of queued frames are gathered into one stream write.
pub const COALESCE_BYTES: usize = 256 * 1024;

/// Frames up to this size are copied into the coalescing buffer; larger ones are
/// written as their own chunk, without copying.
pub const COPY_MAX: usize = 16 * 1024;

/// How long a closing side waits for the peer to acknowledge what it sent.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a graceful shutdown waits for connections to flush and close.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes asked for each endpoint's UDP socket receive and send buffers. A burst of
/// datagrams that overflows the receive buffer is dropped by the kernel, and QUIC then
/// stalls in loss recovery: on this machine's default (`net.core.rmem_default`, 208 KiB)
/// 6–8 % of the datagrams between two saturated providers were dropped. The kernel caps
/// the request at `net.core.rmem_max` / `wmem_max` (Linux); the provider logs what it got.
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Events (frames, connection changes, commands) a driver's event loop buffers; readers
/// wait (and QUIC flow control holds the peer back) when it is full.
pub const EVENT_QUEUE: usize = 1024;

/// Application close code: closed by the state machine (after `Goodbye`, a refused
/// frame, a superseded connection) or by the device.
pub const CLOSE_NORMAL: u32 = 0;
/// Application close code: a length prefix above `MAX_FRAME_LEN`.
pub const CLOSE_FRAME_TOO_LARGE: u32 = 1;
/// Application close code: the stream rules were broken (no stream in time, a stream
/// that ended inside a frame or was reset).
pub const CLOSE_STREAM_ERROR: u32 = 2;
/// Application close code: the provider is shutting down; reconnect later.
pub const CLOSE_SHUTDOWN: u32 = 3;
/// Application close code: the peer did not read what was sent to it
/// ([`MAX_SEND_QUEUE_BYTES`]).
pub const CLOSE_SEND_OVERFLOW: u32 = 4;
/// Application close code: a provider authenticated in the protocol as a domain whose
/// provider key is not the key of its TLS client certificate (or it presented none).
pub const CLOSE_KEY_MISMATCH: u32 = 5;

/// Tunable transport limits; [`Default`] gives the constants of this module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicConfig {
    /// [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// [`MAX_CONNECTIONS_PER_HOST`].
    pub max_connections_per_host: usize,
    /// [`MAX_HANDSHAKES`].
    pub max_handshakes: usize,
    /// [`RETRY_THRESHOLD`].
    pub retry_threshold: usize,
    /// [`MAX_INCOMING`].
    pub max_incoming: usize,
    /// [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// [`KEEP_ALIVE_INTERVAL`] (connector side).
    pub keep_alive_interval: Duration,
    /// [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// [`STREAM_OPEN_TIMEOUT`].
    pub stream_open_timeout: Duration,
    /// [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// [`MAX_SEND_QUEUE_BYTES`].
    pub max_send_queue_bytes: usize,
    /// [`SHUTDOWN_TIMEOUT`].
    pub shutdown_timeout: Duration,
    /// [`UDP_BUFFER_BYTES`].
    pub udp_buffer_bytes: usize,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_connections_per_host: MAX_CONNECTIONS_PER_HOST,
            max_handshakes: MAX_HANDSHAKES,
            retry_threshold: RETRY_THRESHOLD,
            max_incoming: MAX_INCOMING,
            idle_timeout: IDLE_TIMEOUT,
            keep_alive_interval: KEEP_ALIVE_INTERVAL,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            stream_open_timeout: STREAM_OPEN_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            max_send_queue_bytes: MAX_SEND_QUEUE_BYTES,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
            udp_buffer_bytes: UDP_BUFFER_BYTES,
        }
    }
}

/// Why a driver could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// A socket could not be bound or read.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS configuration was refused.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The provider certificate could not be made.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A configuration value is out of range.
    #[error("configuration: {0}")]
    Config(String),
    /// The provider's store could not be loaded.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The driver's task is gone (it panicked or was dropped).
    #[error("the driver has stopped")]
    Stopped,
}

/// The wall clock as the state machines take it (milliseconds since the Unix epoch). The
/// core never reads a clock (STYLE.md C2); this adapter is where its `now` comes from, and
/// apps can use it for [`Client::new`](crate::client::Client::new) and the like.
#[allow(clippy::disallowed_methods)]
pub fn now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    UnixMillis(ms)
}

/// Longest single sleep towards a deadline; the loop wakes up and recomputes after it
/// (a wall-clock jump is then corrected within this time).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The tokio instant at which the wall clock reaches `deadline` (as of now).
#[allow(clippy::disallowed_methods)]
pub(crate) fn instant_at(deadline: UnixMillis) -> tokio::time::Instant {
    let wait = Duration::from_millis(deadline.0.saturating_sub(now().0)).min(MAX_SLEEP);
    tokio::time::Instant::now() + wait
}

/// Waits until `deadline`, forever if there is none.
pub(crate) async fn sleep_until(deadline: Option<UnixMillis>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(instant_at(d)).await,
        None => std::future::pending().await,
    }
}

/// Lower-case hex, for logs.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // 48 KiB is below every `rmem_max` / `wmem_max` a Linux system starts with, so
    // nothing caps it, and no system's default, so the sizes show the request took effect.
    #[cfg(target_os = "linux")]
    #[test]
    fn bind_udp_asks_for_the_buffer_sizes() {
        let socket = bind_udp("127.0.0.1:0".parse().unwrap(), 48 * 1024).unwrap();
        assert_eq!(udp_buffer_sizes(&socket).unwrap(), (48 * 1024, 48 * 1024));
    }
}
