//! Per-connection tasks: a reader that cuts the stream into frames and a writer that
//! coalesces queued frames into few stream writes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    BINDING_LABEL, BINDING_LEN, CLOSE_FRAME_TOO_LARGE, CLOSE_STREAM_ERROR, COALESCE_BYTES,
    COPY_MAX, FLUSH_TIMEOUT, LENGTH_PREFIX_LEN,
};
use crate::limits::MAX_FRAME_LEN;

/// Largest piece read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// What a reader task reports; `key` is the driver's handle for the connection.
#[derive(Debug)]
pub(crate) enum IoEvent {
    /// One whole frame (without its length prefix).
    Frame { key: u64, frame: Bytes },
    /// The stream or the connection ended; `why` is for the log.
    Closed { key: u64, why: String },
}

/// The connection's channel binding (see the module documentation of `quic`).
pub(crate) fn binding(connection: &quinn::Connection) -> Option<Bytes> {
    let mut out = [0u8; BINDING_LEN];
    connection
        .export_keying_material(&mut out, BINDING_LABEL, b"")
        .ok()?;
    Some(Bytes::copy_from_slice(&out))
}

/// Frees a slot of a counter (and of its host's count, if any) when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    counter: Arc<AtomicUsize>,
    host: Option<HostSlot>,
}

impl Slot {
    pub(crate) fn take(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self {
            counter: counter.clone(),
            host: None,
        }
    }

    /// This slot, also holding `host` until it is dropped.
    pub(crate) fn with_host(mut self, host: HostSlot) -> Self {
        self.host = Some(host);
        self
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which host a peer address belongs to, for the per-host connection limit: an IPv4
/// address, or the /64 prefix of an IPv6 address (one host usually holds a whole /64).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Host(u128);

impl Host {
    pub(crate) fn of(addr: IpAddr) -> Self {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match addr {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            // Tagged above the IPv4 range; the low 64 bits (interface id) dropped.
            IpAddr::V6(v6) => Self((u128::from(v6) >> 64) | (1 << 64)),
        }
    }
}

/// Connections per host, shared by the acceptor and the connections' slots.
pub(crate) type HostCounts = Arc<Mutex<HashMap<Host, usize>>>;

/// One connection of a host; frees it when dropped.
#[derive(Debug)]
pub(crate) struct HostSlot {
    counts: HostCounts,
    host: Host,
}

impl HostSlot {
    /// How many slots `host` holds.
    pub(crate) fn count(counts: &HostCounts, host: Host) -> usize {
        let map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&host).copied().unwrap_or(0)
    }

    /// Takes a slot of `host` unless it already holds `max`.
    pub(crate) fn take(counts: &HostCounts, host: Host, max: usize) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(host).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            host,
        })
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.host);
            }
        }
    }
}

enum WriterMsg {
    Frame(Bytes),
    Close { code: u32, reason: &'static [u8] },
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// More than the send-queue limit is waiting: the peer does not read.
    Overflow,
    /// The writer is gone (the connection closed).
    Closed,
    /// The frame is longer than `MAX_FRAME_LEN` (a bug of the sender).
    TooLarge,
}

/// Where a connection's reader hands its frames: the driver's queue, or, once the
/// connection is [prioritised](ConnIo::prioritise), its priority queue (if it has one).
#[derive(Debug)]
pub(crate) struct Lanes<E> {
    pub(crate) normal: mpsc::Sender<E>,
    pub(crate) priority: Option<mpsc::Sender<E>>,
}

/// The driver's handle on one connection's tasks.
#[derive(Debug)]
pub(crate) struct ConnIo {
    connection: quinn::Connection,
    prioritised: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<WriterMsg>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl std::fmt::Debug for WriterMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterMsg::Frame(b) => write!(f, "Frame({} bytes)", b.len()),
            WriterMsg::Close { code, .. } => write!(f, "Close({code})"),
        }
    }
}

impl ConnIo {
    /// Starts the reader and writer of a connection whose stream is open. Frames and the
    /// end of the connection are reported on `lanes` under `key`; `slot` is held until
    /// the reader ends.
    pub(crate) fn spawn<E>(
        key: u64,
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        lanes: Lanes<E>,
        max_queued: usize,
        slot: Option<Slot>,
    ) -> Self
    where
        E: From<IoEvent> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let prioritised = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_frames(
            key,
            connection.clone(),
            recv,
            lanes,
            prioritised.clone(),
            slot,
        ));
        let writer = tokio::spawn(write_frames(connection.clone(), send, rx, queued.clone()));
        Self {
            connection,
            prioritised,
            tx,
            queued,
            max_queued,
            reader,
            writer,
        }
    }

    /// Queues one frame.
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), SendError> {
        if frame.len() > MAX_FRAME_LEN {
            return Err(SendError::TooLarge);
        }
        let cost = frame.len() + LENGTH_PREFIX_LEN;
        let before = self.queued.fetch_add(cost, Ordering::AcqRel);
        if before.saturating_add(cost) > self.max_queued {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            return Err(SendError::Overflow);
        }
        self.tx.send(WriterMsg::Frame(frame)).map_err(|_| {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            SendError::Closed
        })
    }

    /// Closes after what is queued has been written (and acknowledged, within
    /// `FLUSH_TIMEOUT`). Returns the writer task, which ends when the connection is closed.
    pub(crate) fn close(self, code: u32, reason: &'static [u8]) -> JoinHandle<()> {
        if self.tx.send(WriterMsg::Close { code, reason }).is_err() {
            close(&self.connection, code, reason);
        }
        self.writer
    }

    /// Closes at once, dropping whatever is queued.
    pub(crate) fn abort(self, code: u32, reason: &'static [u8]) {
        close(&self.connection, code, reason);
        self.reader.abort();
        self.writer.abort();
    }

    /// From now on the reader hands frames to the priority queue (a connection with
    /// another provider, whose answers free the relay window: they must not wait behind
    /// every device's requests).
    pub(crate) fn prioritise(&self) {
        self.prioritised.store(true, Ordering::Release);
    }

    /// The peer's address, for logs.
    pub(crate) fn remote(&self) -> std::net::SocketAddr {
        self.connection.remote_address()
    }
}

fn close(connection: &quinn::Connection, code: u32, reason: &[u8]) {
    connection.close(quinn::VarInt::from_u32(code), reason);
}

/// Cuts the stream into frames; closes the connection on an oversized length prefix.
async fn read_frames<E: From<IoEvent>>(
    key: u64,
    connection: quinn::Connection,
    mut recv: quinn::RecvStream,
    lanes: Lanes<E>,
    prioritised: Arc<AtomicBool>,
    slot: Option<Slot>,
) {
    let lane = || match &lanes.priority {
        Some(p) if prioritised.load(Ordering::Acquire) => p,
        _ => &lanes.normal,
    };
    let mut buf = BytesMut::new();
    let why = 'read: loop {
        // Hand over every whole frame in the buffer.
        while let Some(prefix) = buf.get(..LENGTH_PREFIX_LEN) {
            let mut len_bytes = [0u8; LENGTH_PREFIX_LEN];
            len_bytes.copy_from_slice(prefix);
            let len = u32::from_be_bytes(len_bytes) as usize;
            if len > MAX_FRAME_LEN {
                close(&connection, CLOSE_FRAME_TOO_LARGE, b"frame too large");
                break 'read format!("length prefix {len} exceeds {MAX_FRAME_LEN}");
            }
            let needed = LENGTH_PREFIX_LEN + len;
            if buf.len() < needed {
                // Grow as data arrives, never by what the peer merely announced.
                buf.reserve((needed - buf.len()).min(READ_CHUNK));
                break;
            }
            // Each frame is copied into a buffer of its own. A slice of `buf` would share
            // one reference count with every other frame read into the same allocation and
            // with `buf` itself: the event loop (another thread) clones and drops a slice
            // per envelope, and that count's cache line then bounced between the cores
            // (9 % of a provider's CPU under load, more than the copy costs). Owning its
            // allocation, `buf` is also reused in place instead of reallocated.
            let frame = Bytes::copy_from_slice(&buf[LENGTH_PREFIX_LEN..needed]);
            buf.advance(needed);
            if lane()
                .send(IoEvent::Frame { key, frame }.into())
                .await
                .is_err()
            {
                return;
            }
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => buf.put_slice(&chunk.bytes),
            Ok(None) if buf.is_empty() => break "stream finished".to_owned(),
            Ok(None) => {
                close(
                    &connection,
                    CLOSE_STREAM_ERROR,
                    b"stream ended inside a frame",
                );
                break "stream ended inside a frame".to_owned();
            }
            Err(quinn::ReadError::Reset(code)) => {
                close(&connection, CLOSE_STREAM_ERROR, b"stream reset");
                break format!("stream reset ({code})");
            }
            Err(e) => break e.to_string(),
        }
    };
    drop(slot);
    let _ = lane().send(IoEvent::Closed { key, why }.into()).await;
}

/// Writes queued frames, as many per stream write as are waiting (up to
/// `COALESCE_BYTES`); on `Close`, finishes the stream, waits for the peer's
/// acknowledgement (at most `FLUSH_TIMEOUT`) and closes the connection.
async fn write_frames(
    connection: quinn::Connection,
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    queued: Arc<AtomicUsize>,
) {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut small = BytesMut::new();
    loop {
        let Some(first) = rx.recv().await else {
            // The driver let go of the connection without closing it: close quietly.
            let _ = send.finish();
            return;
        };
        let mut next = Some(first);
        let mut batch = 0usize;
        let mut close_with = None;
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Frame(frame) => {
                    batch += frame.len() + LENGTH_PREFIX_LEN;
                    small.put_u32(u32::try_from(frame.len()).unwrap_or(u32::MAX));
                    if frame.len() <= COPY_MAX {
                        small.put_slice(&frame);
                    } else {
                        chunks.push(small.split().freeze());
                        chunks.push(frame);
                    }
                }
                WriterMsg::Close { code, reason } => {
                    close_with = Some((code, reason));
                    break;
                }
            }
            if batch >= COALESCE_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !small.is_empty() {
            chunks.push(small.split().freeze());
        }
        chunks.retain(|c| !c.is_empty());
        let written = if chunks.is_empty() {
            Ok(())
        } else {
            send.write_all_chunks(&mut chunks).await
        };
        chunks.clear();
        queued.fetch_sub(batch, Ordering::AcqRel);
        if let Err(e) = written {
            tracing::debug!(peer = %connection.remote_address(), error = %e, "stream write failed");
            return;
        }
        if let Some((code, reason)) = close_with {
            if send.finish().is_ok() {
                let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
            }
            close(&connection, code, reason);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_and_free() {
        let counter = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&counter);
        let b = Slot::take(&counter);
        assert_eq!(counter.load(Ordering::Acquire), 2);
        drop(a);
        drop(b);
        assert_eq!(counter.load(Ordering::Acquire), 0);
    }

    #[test]
    fn hosts_are_addresses_or_ipv6_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(Host::of(ip("192.0.2.1")), Host::of(ip("::ffff:192.0.2.1")));
        assert_ne!(Host::of(ip("192.0.2.1")), Host::of(ip("192.0.2.2")));
        assert_eq!(
            Host::of(ip("2001:db8:1:2::1")),
            Host::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Host::of(ip("2001:db8:1:2::1")),
            Host::of(ip("2001:db8:1:3::1"))
        );
        // An IPv6 prefix never collides with an IPv4 address.
        assert_ne!(Host::of(ip("::c000:201")), Host::of(ip("192.0.2.1")));
    }

    #[test]
    fn host_slots_stop_at_the_limit_and_free() {
        let counts = HostCounts::default();
        let host = Host::of("192.0.2.1".parse().unwrap());
        let other = Host::of("192.0.2.2".parse().unwrap());
        let a = HostSlot::take(&counts, host, 2).unwrap();
        let b = HostSlot::take(&counts, host, 2).unwrap();
        assert!(HostSlot::take(&counts, host, 2).is_none());
        let c = HostSlot::take(&counts, other, 2).unwrap();
        drop(a);
        let d = HostSlot::take(&counts, host, 2).unwrap();
        drop((b, c, d));
        assert!(counts.lock().unwrap().is_empty());
    }
}
