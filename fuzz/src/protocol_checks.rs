//! The bodies of the protocol fuzz targets and the seeds of their corpora (STYLE.md C12):
//! every decoder of SPEC.md section 16 and every input of the two state machines.
//!
//! | target | drives | checks beyond "does not panic" |
//! |---|---|---|
//! | `frame_decode` | `protocol::check_frame` | the kind named is the frame's last top-level body field (prost's oneof rule), read by an independent protobuf reader; `hello`/`challenge` fixed lengths hold |
//! | `directory_parse` | `StaticDirectory::parse` | `to_text` parses back to the same directory; every entry resolves; line numbers of errors exist |
//! | `provider_input` | `Provider::handle_input`, `handle_timeout`, `poll_output` | see [`PRun`]: frames, routing, limits, store consistency |
//! | `client_input` | `Client::handle_input`, `handle_timeout`, `send`, `mark_read` | see [`CRun`]: frames, resends, acks, events, bounds |
//! | `provider_store_load` | `Provider::new` over arbitrary store rows, then a drive | corrupt rows are counted, never fatal; what loads is bounded by the rows; frames pass `check_frame` |
//!
//! This one file is compiled three ways, always by `#[path]`: into each protocol fuzz
//! target (`fuzz/fuzz_targets/<target>.rs`), into the seed generator
//! `fuzz/examples/gen_protocol_corpus.rs`, and into `tests/fuzz_corpus_protocol.rs`, which
//! replays `fuzz/corpus/<target>/*` under `cargo test`. It uses only the public `kogge`
//! API plus `bytes`, `ed25519-dalek`, `rand_chacha` and `rand_core`.
//!
//! The state-machine targets get past authentication the way a real peer does: the
//! harness holds the keys of the world (devices, remote providers), answers challenges
//! and signs `Auth` itself, and builds frames with its own small protobuf writer
//! ([`pb`]), so the fuzzer spends its time after the handshake. Inputs are programs:
//! a flags byte, then operations, each an opcode byte and its arguments; reading past the
//! end gives zeros, so every byte string is a valid program.
//!
//! Every check must return normally for any input; a panic (a failed `assert!` included)
//! is a finding. The worlds (keys, device lists, prekeys, envelopes, a provider store with
//! users, mailboxes and queues) are built once per process in a [`LazyLock`].
//! `KOGGE_FUZZ_TRACE=1` prints every input and output of the state machines.
//!
//! [`KNOWN_UNCHECKED_STORED_MAIL`] is the switch that once tolerated a finding (stored
//! mailbox items the wire format refuses); the loader is fixed and the switch is off.

// A failed check must panic: that is how libFuzzer and the test report a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::LazyLock;

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use kogge::UnixMillis;
use kogge::address::{Address, Domain};
use kogge::client::{Client, ClientConfig, ClientEvent, ClientInput, ClientOutput};
use kogge::crypto::{self, Label, Secret};
use kogge::envelope::UnverifiedEnvelope;
use kogge::envelope::{self, Content, MessageId, Outgoing, Receipt, ReceiptKind, Text};
use kogge::group::{
    GroupAction, GroupChange, GroupEnvelope, GroupId, GroupMember, GroupRole, GroupSender,
    GroupState, Sequencer,
};
use kogge::identity::{
    Device, DeviceKeyPair, DeviceList, IdentityKeyPair, ProviderKey, ProviderKeyPair,
};
use kogge::limits::{
    AUTH_NONCE_LEN, AUTH_TIMEOUT_MS, FORWARD_TIMEOUT_MS, MAX_ACK_SEQS, MAX_CLIENT_PENDING,
    MAX_DEDUP_ENTRIES, MAX_DELIVER_ITEMS, MAX_DOMAIN_LEN, MAX_FRAME_LEN, MAX_MAILBOX_DEPTH,
    MAX_PENDING_GROUP_ITEMS, MAX_PENDING_REMOTE_FETCHES, MAX_REMOTE_QUEUE_DEPTH, RELAY_EXPIRY_MS,
    RESEND_AFTER_MS, RETRY_MAX_MS, SUBMIT_EXPIRY_MS,
};
use kogge::protocol::{self, ConnectionId, ErrorCode};
use kogge::provider::{
    CommitBatch, Direction, PeerIdentity, Provider, ProviderConfig, ProviderEvent, ProviderInput,
    ProviderLimits, ProviderOutput,
};
use kogge::resolve::{ResolveError, Resolver, StaticDirectory};
use kogge::session::{Account, PrekeyBundle, PrekeyStore};
use kogge::store::{MemoryStore, Store, StoreError, StoreOp, Table};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The check of one target: returns normally for every input, or panics on a finding.
pub type Check = fn(&[u8]);

/// Every protocol target: its name (`fuzz/fuzz_targets/<name>.rs`, `fuzz/corpus/<name>/`)
/// and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame_decode", frame_decode),
    ("directory_parse", directory_parse),
    ("provider_input", provider_input),
    ("client_input", client_input),
    ("provider_store_load", provider_store_load),
];

/// The clock every run starts at.
pub const NOW: UnixMillis = UnixMillis(1_760_000_000_000);
const HOUR: u64 = 3600 * 1000;
const DAY: u64 = 24 * HOUR;
const YEAR: u64 = 365 * DAY;

/// Most operations one input runs (the rest is ignored).
const MAX_OPS: usize = 48;
/// Most outputs one drain may produce before the state machine counts as spinning.
const MAX_OUTPUTS: usize = 100_000;
/// Frames remembered per run for the "edit and resend" operations.
const MAX_REMEMBERED: usize = 48;

// ---------------------------------------------------------------------------------------
// Reading inputs.
// ---------------------------------------------------------------------------------------

/// Reads a fuzz input front to back. Past the end every byte reads as 0, so any input is
/// a complete program; [`Cursor::done`] ends the operation loop.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }

    /// `items[byte % len]`.
    fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[usize::from(self.u8()) % items.len()]
    }
}

/// Applies byte edits `[op, pos_hi, pos_lo, value]*`: `op % 4` is 0 xor `value` into the
/// byte at pos, 1 insert `value` at pos, 2 delete the byte at pos, 3 truncate at pos.
/// Positions are taken modulo `len + 1`.
fn apply_edits(base: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for e in edits.chunks_exact(4) {
        let pos = usize::from(u16::from_be_bytes([e[1], e[2]])) % (out.len() + 1);
        let value = e[3];
        match e[0] % 4 {
            0 => {
                if let Some(b) = out.get_mut(pos) {
                    *b ^= value;
                }
            }
            1 => out.insert(pos, value),
            2 => {
                if pos < out.len() {
                    out.remove(pos);
                }
            }
            _ => out.truncate(pos),
        }
    }
    out
}

/// `base` after `n % 5` edits read from the cursor.
fn edited(base: &[u8], cur: &mut Cursor<'_>) -> Bytes {
    let n = usize::from(cur.u8() % 5);
    let edits = cur.take(4 * n);
    Bytes::from(apply_edits(base, edits))
}

/// Whether `needle` occurs in `haystack` (an empty needle does).
/// Whether a `MailboxItem` (its fields) may be delivered ahead of the write that stores
/// it (SPEC.md 16.12 rule 5): an envelope, or a group item that holds a group envelope.
fn may_go_ahead(item: &[(u32, pb::Val<'_>)]) -> bool {
    match item
        .iter()
        .rev()
        .find(|(n, v)| (2..=4).contains(n) && matches!(v, pb::Val::Bytes(_)))
    {
        Some((2, _)) => true,
        Some((n, pb::Val::Bytes(g))) if *n == MI_GROUP => body_fields(g)
            .iter()
            .rev()
            .find(|(n, _)| (1..=2).contains(n))
            .is_some_and(|(n, _)| *n == 1),
        _ => false,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether to print what the state machines do (`KOGGE_FUZZ_TRACE=1`, for writing seeds
/// and reading findings).
fn tracing() -> bool {
    static ON: LazyLock<bool> = LazyLock::new(|| std::env::var_os("KOGGE_FUZZ_TRACE").is_some());
    *ON
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

fn seeded(n: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([n; 32])
}

// ---------------------------------------------------------------------------------------
// A small protobuf writer and reader, independent of kogge's prost types (which are
// crate-private): the harness builds frames field by field and reads what the state
// machines send.
// ---------------------------------------------------------------------------------------

/// Protobuf encoding by hand (SPEC.md 16.2 and `proto/kogge/v1/protocol.proto`).
pub mod pb {
    /// A message being written: fields in the order given, defaults written explicitly.
    #[derive(Clone, Debug, Default)]
    pub struct Msg(pub Vec<u8>);

    /// Appends a base-128 varint.
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    impl Msg {
        /// An empty message.
        pub fn new() -> Self {
            Self::default()
        }

        /// A varint field.
        pub fn uint(mut self, field: u32, v: u64) -> Self {
            varint(&mut self.0, u64::from(field) << 3);
            varint(&mut self.0, v);
            self
        }

        /// A length-delimited field.
        pub fn bytes(mut self, field: u32, b: &[u8]) -> Self {
            varint(&mut self.0, (u64::from(field) << 3) | 2);
            varint(&mut self.0, b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }

        /// A string field.
        pub fn str(self, field: u32, s: &str) -> Self {
            self.bytes(field, s.as_bytes())
        }

        /// An embedded message field.
        pub fn msg(self, field: u32, m: Msg) -> Self {
            self.bytes(field, &m.0)
        }
    }

    /// A field value as read.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Val<'a> {
        /// Wire type 0.
        Varint(u64),
        /// Wire type 1 or 5.
        Fixed(u64),
        /// Wire type 2.
        Bytes(&'a [u8]),
    }

    fn read_varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            if i == 9 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// The top-level fields of a message in order, or `None` if it is not well formed
    /// (or uses groups, which this reader does not follow).
    pub fn fields(mut buf: &[u8]) -> Option<Vec<(u32, Val<'_>)>> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let tag = read_varint(&mut buf)?;
            let field = u32::try_from(tag >> 3).ok()?;
            if field == 0 || tag > u64::from(u32::MAX) {
                return None;
            }
            let val = match tag & 7 {
                0 => Val::Varint(read_varint(&mut buf)?),
                1 => {
                    let (b, rest) = buf.split_first_chunk::<8>()?;
                    buf = rest;
                    Val::Fixed(u64::from_le_bytes(*b))
                }
                2 => {
                    let len = usize::try_from(read_varint(&mut buf)?).ok()?;
                    if len > buf.len() {
                        return None;
                    }
                    let (b, rest) = buf.split_at(len);
                    buf = rest;
                    Val::Bytes(b)
                }
                5 => {
                    let (b, rest) = buf.split_first_chunk::<4>()?;
                    buf = rest;
                    Val::Fixed(u64::from(u32::from_le_bytes(*b)))
                }
                _ => return None,
            };
            out.push((field, val));
        }
        Some(out)
    }

    /// The last length-delimited value of `field`.
    pub fn last_bytes<'a>(fields: &[(u32, Val<'a>)], field: u32) -> Option<&'a [u8]> {
        fields.iter().rev().find_map(|(f, v)| match v {
            Val::Bytes(b) if *f == field => Some(*b),
            _ => None,
        })
    }

    /// The last varint value of `field` (0 if absent, as proto3 reads it).
    pub fn last_varint(fields: &[(u32, Val<'_>)], field: u32) -> u64 {
        fields
            .iter()
            .rev()
            .find_map(|(f, v)| match v {
                Val::Varint(x) if *f == field => Some(*x),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// Every length-delimited value of `field`, in order.
    pub fn all_bytes<'a>(fields: &[(u32, Val<'a>)], field: u32) -> Vec<&'a [u8]> {
        fields
            .iter()
            .filter_map(|(f, v)| match v {
                Val::Bytes(b) if *f == field => Some(*b),
                _ => None,
            })
            .collect()
    }

    /// Every value of a repeated varint `field`, packed or not.
    pub fn all_varints(fields: &[(u32, Val<'_>)], field: u32) -> Option<Vec<u64>> {
        let mut out = Vec::new();
        for (f, v) in fields {
            if *f != field {
                continue;
            }
            match *v {
                Val::Varint(x) => out.push(x),
                Val::Bytes(mut b) => {
                    while !b.is_empty() {
                        out.push(read_varint(&mut b)?);
                    }
                }
                Val::Fixed(_) => return None,
            }
        }
        Some(out)
    }

    /// A frame's body as prost decodes it: the field number of the last top-level field
    /// numbered 1 to 9, and the concatenation of the trailing run of that field's values
    /// (prost merges repeated occurrences of the same oneof variant and replaces the
    /// value when another variant comes in between). `None` if there is no such field
    /// or the frame is not well formed for this reader.
    pub fn frame_body(frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        let fields = fields(frame)?;
        let mut kind = None;
        let mut body = Vec::new();
        for (f, v) in &fields {
            if !(1..=9).contains(f) {
                continue;
            }
            let Val::Bytes(b) = v else {
                return None;
            };
            if kind != Some(*f) {
                kind = Some(*f);
                body.clear();
            }
            body.extend_from_slice(b);
        }
        kind.map(|k| (k, body))
    }
}

use pb::Msg;

/// Top-level `Frame` field numbers (`protocol.proto`).
const F_HELLO: u32 = 1;
const F_CHALLENGE: u32 = 2;
const F_AUTH: u32 = 3;
const F_WELCOME: u32 = 4;
const F_REQUEST: u32 = 5;
const F_RESPONSE: u32 = 6;
const F_DELIVER: u32 = 7;
const F_DELIVER_ACK: u32 = 8;
const F_GOODBYE: u32 = 9;

/// `Request.body` field numbers.
const RQ_PUBLISH_LIST: u32 = 2;
const RQ_PUBLISH_PREKEYS: u32 = 3;
const RQ_FETCH_BUNDLES: u32 = 4;
const RQ_SUBMIT: u32 = 5;
const RQ_RELAY: u32 = 6;
const RQ_FETCH_LIST: u32 = 7;
const RQ_SUBMIT_GROUP: u32 = 8;
const RQ_ORDER_GROUP: u32 = 9;

/// `Response.body` field numbers.
const RS_ERROR: u32 = 2;
const RS_DONE: u32 = 3;
const RS_BUNDLES: u32 = 4;
const RS_RELAY_RESULT: u32 = 5;
const RS_DEVICE_LIST: u32 = 6;
const RS_GROUP_CHANGE: u32 = 7;

/// `MailboxItem.group` (SPEC.md 20.5).
const MI_GROUP: u32 = 4;

/// The frame kinds, by field number, as `check_frame` names them.
const KINDS: [&str; 10] = [
    "",
    "hello",
    "challenge",
    "auth",
    "welcome",
    "request",
    "response",
    "deliver",
    "deliver_ack",
    "goodbye",
];

fn frame(kind: u32, body: Msg) -> Bytes {
    Bytes::from(Msg::new().msg(kind, body).0)
}

fn error_msg(code: &str, message: &str, retryable: bool, retry_after_ms: u64) -> Msg {
    Msg::new()
        .str(1, code)
        .str(2, message)
        .uint(3, u64::from(retryable))
        .uint(4, retry_after_ms)
}

fn hello_frame(version: u64, nonce: &[u8], role: u64, acceptor: &str) -> Bytes {
    frame(
        F_HELLO,
        Msg::new()
            .uint(1, version)
            .bytes(2, nonce)
            .uint(3, role)
            .str(4, acceptor),
    )
}

fn challenge_frame(nonce: &[u8], domain: &str, key: &[u8], signature: &[u8]) -> Bytes {
    frame(
        F_CHALLENGE,
        Msg::new()
            .bytes(1, nonce)
            .str(2, domain)
            .bytes(3, key)
            .bytes(4, signature),
    )
}

fn auth_device_frame(cert: &[u8], list: &[u8], signature: &[u8]) -> Bytes {
    frame(
        F_AUTH,
        Msg::new()
            .msg(1, Msg::new().bytes(1, cert).bytes(2, list))
            .bytes(3, signature),
    )
}

fn auth_provider_frame(domain: &str, signature: &[u8]) -> Bytes {
    frame(
        F_AUTH,
        Msg::new()
            .msg(2, Msg::new().str(1, domain))
            .bytes(3, signature),
    )
}

fn welcome_frame(time: u64) -> Bytes {
    frame(F_WELCOME, Msg::new().uint(1, time))
}

fn goodbye_frame(error: Option<Msg>) -> Bytes {
    frame(
        F_GOODBYE,
        error.map_or_else(Msg::new, |e| Msg::new().msg(1, e)),
    )
}

fn request_frame(id: u64, body: Option<(u32, Msg)>) -> Bytes {
    let m = Msg::new().uint(1, id);
    frame(
        F_REQUEST,
        match body {
            Some((f, b)) => m.msg(f, b),
            None => m,
        },
    )
}

fn response_frame(id: u64, body: Option<(u32, Msg)>) -> Bytes {
    let m = Msg::new().uint(1, id);
    frame(
        F_RESPONSE,
        match body {
            Some((f, b)) => m.msg(f, b),
            None => m,
        },
    )
}

fn envelopes_msg(envelopes: &[Bytes]) -> Msg {
    envelopes.iter().fold(Msg::new(), |m, e| m.bytes(1, e))
}

fn deliver_ack_frame(seqs: &[u64]) -> Bytes {
    let mut packed = Vec::new();
    for s in seqs {
        pb::varint(&mut packed, *s);
    }
    frame(F_DELIVER_ACK, Msg::new().bytes(1, &packed))
}

/// A mailbox item of a `Deliver`.
enum Item {
    Envelope(Bytes),
    Undeliverable {
        message_id: Vec<u8>,
        recipient: String,
        device: Vec<u8>,
        reason: Option<Msg>,
    },
    PrekeysLow(u32),
    /// A `GroupItem`: body field (1 envelope, 2 change), body, snapshot.
    Group(u32, Bytes, Bytes),
    Empty,
}

/// A group item as the harness builds it: `GroupItem` body field (1 envelope, 2 change),
/// the body, the snapshot (empty: not written).
type GItem = (u32, Bytes, Bytes);

fn group_item_msg(field: u32, body: &[u8], snapshot: &[u8]) -> Msg {
    let m = Msg::new().bytes(field, body);
    if snapshot.is_empty() {
        m
    } else {
        m.bytes(3, snapshot)
    }
}

/// A `GroupItem` as prost reads it: the last body field (1 or 2) with its value, and the
/// snapshot (empty if absent). `None` if it does not parse or has no body.
fn group_item_key(item: &[u8]) -> Option<(u32, Vec<u8>, Vec<u8>)> {
    let f = pb::fields(item)?;
    let (field, body) = f.iter().rev().find_map(|(n, v)| match v {
        pb::Val::Bytes(b) if *n == 1 || *n == 2 => Some((*n, *b)),
        _ => None,
    })?;
    let snapshot = pb::last_bytes(&f, 3).unwrap_or_default();
    Some((field, body.to_vec(), snapshot.to_vec()))
}

fn deliver_frame(items: &[(u64, Item)]) -> Bytes {
    let mut m = Msg::new();
    for (seq, item) in items {
        let mut i = Msg::new().uint(1, *seq);
        i = match item {
            Item::Envelope(e) => i.bytes(2, e),
            Item::Undeliverable {
                message_id,
                recipient,
                device,
                reason,
            } => {
                let mut u = Msg::new()
                    .bytes(1, message_id)
                    .str(2, recipient)
                    .bytes(3, device);
                if let Some(r) = reason {
                    u = u.msg(4, r.clone());
                }
                i.msg(3, Msg::new().msg(1, u))
            }
            Item::PrekeysLow(n) => i.msg(3, Msg::new().msg(2, Msg::new().uint(1, u64::from(*n)))),
            Item::Group(field, body, snapshot) => {
                i.msg(MI_GROUP, group_item_msg(*field, body, snapshot))
            }
            Item::Empty => i,
        };
        m = m.msg(1, i);
    }
    frame(F_DELIVER, m)
}

/// The body of an own frame (one the harness or a state machine encoded), parsed.
fn body_fields(body: &[u8]) -> Vec<(u32, pb::Val<'_>)> {
    pb::fields(body).expect("a frame that check_frame accepts parses")
}

/// A frame's kind and, for requests and responses, the body (and an error's code), for
/// traces.
fn describe(bytes: &[u8]) -> String {
    let kind = match protocol::check_frame(bytes) {
        Ok(k) => k.to_owned(),
        Err(e) => return format!("refused frame ({e})"),
    };
    let Some((field, body)) = pb::frame_body(bytes) else {
        return kind;
    };
    let Some(f) = pb::fields(&body) else {
        return kind;
    };
    let inner = f.iter().rev().find_map(|(n, v)| match v {
        pb::Val::Bytes(b) if *n != 1 => Some((*n, *b)),
        _ => None,
    });
    match (field, inner) {
        (F_REQUEST, Some((n, _))) => {
            let names = [
                "",
                "",
                "publish_device_list",
                "publish_prekeys",
                "fetch_bundles",
                "submit",
                "relay",
                "fetch_device_list",
                "submit_group",
                "order_group_change",
            ];
            format!(
                "request {} #{}",
                names.get(n as usize).unwrap_or(&"?"),
                pb::last_varint(&f, 1)
            )
        }
        (F_RESPONSE, Some((RS_ERROR, e))) => {
            let code = pb::fields(e).and_then(|e| {
                pb::last_bytes(&e, 1).map(|c| String::from_utf8_lossy(c).into_owned())
            });
            format!(
                "response #{} error {}",
                pb::last_varint(&f, 1),
                code.unwrap_or_default()
            )
        }
        (F_RESPONSE, Some((n, _))) => {
            let names = [
                "",
                "",
                "error",
                "done",
                "bundles",
                "relay_result",
                "device_list",
                "group_change_ordered",
            ];
            format!(
                "response #{} {}",
                pb::last_varint(&f, 1),
                names.get(n as usize).unwrap_or(&"?")
            )
        }
        _ => kind,
    }
}

/// `Label`-framed Ed25519 signature, as `kogge::crypto` makes them (SPEC.md 2.2).
fn sign(key: &SigningKey, label: Label, parts: &[&[u8]]) -> [u8; 64] {
    key.sign(&crypto::framed(label, parts)).to_bytes()
}

fn verifies(key: &ed25519_dalek::VerifyingKey, label: Label, parts: &[&[u8]], sig: &[u8]) -> bool {
    crypto::signature(sig)
        .ok()
        .is_some_and(|s| crypto::verify_message(key, &crypto::framed(label, parts), &s).is_ok())
}

fn provider_signing(key: &ProviderKeyPair) -> SigningKey {
    SigningKey::from_bytes(key.secret_bytes().expose())
}

fn device_signing(device: &Device) -> SigningKey {
    SigningKey::from_bytes(device.keys().secret_bytes().0.expose())
}

/// The error codes a harness answers with: every code of SPEC.md 16.8 and one unknown.
fn error_codes() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    v.push("no_such_code");
    v.push("");
    v
}

/// Retry hints the harnesses answer with.
const RETRY_AFTER: [u64; 6] = [0, 1, RESEND_AFTER_MS, RETRY_MAX_MS, DAY, u64::MAX];

/// A time step: `NOW`-relative jumps that reach every timer of both state machines.
fn time_step(b: u8) -> u64 {
    match b % 14 {
        0 => 0,
        1 => 1,
        2 => 100,
        3 => RESEND_AFTER_MS,
        4 => AUTH_TIMEOUT_MS,
        5 => FORWARD_TIMEOUT_MS,
        6 => 60_000,
        7 => RETRY_MAX_MS,
        8 => HOUR,
        9 => DAY,
        10 => RELAY_EXPIRY_MS + 1,
        11 => SUBMIT_EXPIRY_MS + 1,
        12 => 400 * DAY,
        _ => 250,
    }
}

// ---------------------------------------------------------------------------------------
// frame_decode
// ---------------------------------------------------------------------------------------

/// `frame_decode`: [`protocol::check_frame`] on the raw input.
///
/// Invariants: it never panics; an error has a message; a frame longer than
/// `MAX_FRAME_LEN` is `TooLarge` and nothing else is; an accepted frame's kind is the
/// field number of its last top-level body field (the oneof rule), as read by [`pb`]; an
/// accepted `hello` or `challenge` has 32-byte nonces (and a 32-byte key and 64-byte
/// signature) in the fields prost would keep.
pub fn frame_decode(data: &[u8]) {
    let result = protocol::check_frame(data);
    let too_large = matches!(result, Err(protocol::FrameError::TooLarge { .. }));
    assert_eq!(too_large, data.len() > MAX_FRAME_LEN, "{result:?}");
    let kind = match result {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
        Ok(kind) => kind,
    };
    assert!(KINDS[1..].contains(&kind), "unknown kind {kind}");
    // A well-formed frame for our reader must name the same body.
    let Some((field, body)) = pb::frame_body(data) else {
        // Our reader does not follow groups; prost skips them in unknown fields.
        return;
    };
    assert_eq!(
        KINDS[field as usize], kind,
        "check_frame names another body than the last body field"
    );
    let Some(fields) = pb::fields(&body) else {
        return;
    };
    match kind {
        "hello" => {
            let nonce = pb::last_bytes(&fields, 2).unwrap_or_default();
            assert_eq!(nonce.len(), AUTH_NONCE_LEN, "hello nonce");
            let acceptor = pb::last_bytes(&fields, 4).unwrap_or_default();
            assert!(acceptor.len() <= MAX_DOMAIN_LEN, "hello acceptor");
        }
        "challenge" => {
            let len = |f| pb::last_bytes(&fields, f).unwrap_or_default().len();
            assert_eq!(len(1), AUTH_NONCE_LEN, "challenge nonce");
            assert_eq!(len(3), 32, "challenge key");
            assert_eq!(len(4), 64, "challenge signature");
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// directory_parse
// ---------------------------------------------------------------------------------------

/// Domains, endpoints and separators the structured mode of `directory_parse` draws from.
const DIR_DOMAINS: &[&str] = &[
    "one.example",
    "two.example",
    "three.example",
    "One.Example",
    "xn--bcher-kva.example",
    "a",
    "-bad-.example",
    "one.example.",
    "bücher.example",
    "",
];
const DIR_ENDPOINTS: &[&str] = &[
    "127.0.0.1:4433",
    "[::1]:4433",
    "one.example:443",
    "#",
    "a\u{a0}b",
    "x\u{b}y",
    "\u{3000}",
    "",
];
const DIR_SEPARATORS: &[&str] = &[" ", "\t", "  ", " \t ", "\u{a0}", "\u{3000}", "\r", ""];
const DIR_LINE_ENDS: &[&str] = &["\n", "\r\n", "\r", "\n\n", "\u{2028}", "\u{85}"];

/// Provider keys (hex) for directory lines: valid keys, an invalid one (a point that
/// does not decompress), upper case, too short.
fn dir_keys() -> &'static [String] {
    static KEYS: LazyLock<Vec<String>> = LazyLock::new(|| {
        let k = |n| {
            ProviderKeyPair::generate(&mut seeded(n))
                .public()
                .to_string()
        };
        let valid = k(0x71);
        vec![
            valid.clone(),
            k(0x72),
            valid.to_uppercase(),
            valid[..62].to_owned(),
            "00".repeat(32),
            "ff".repeat(32),
            format!("{valid}0"),
        ]
    });
    &KEYS
}

/// `directory_parse`: [`StaticDirectory::parse`]. The first byte selects the mode
/// (`% 2`): 0 the rest is the file's text (lossy UTF-8); 1 the rest is lines
/// `[flags, domain, endpoint, key, separator, line end]*` drawn from fixed tables (valid
/// keys, case and trailing-dot variants, Unicode white space), so the fuzzer reaches
/// duplicate domains and the round trip with many entries.
///
/// Invariants: never panics; `Ok` directories print with `to_text` and parse back to
/// the same directory; every entry resolves to itself; entries are no more than the
/// lines; a `BadLine` error names a line that exists (0 only for an oversized file).
pub fn directory_parse(data: &[u8]) {
    let (&mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let text = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let mut cur = Cursor::new(rest);
        let mut text = String::new();
        let keys = dir_keys();
        while !cur.done() {
            let flags = cur.u8();
            let domain = *cur.pick(DIR_DOMAINS);
            let endpoint = *cur.pick(DIR_ENDPOINTS);
            let key = cur.pick(keys).clone();
            let sep = *cur.pick(DIR_SEPARATORS);
            let end = *cur.pick(DIR_LINE_ENDS);
            if flags & 1 != 0 {
                text.push('#');
            }
            if flags & 2 != 0 {
                text.push_str(sep);
            }
            text.push_str(domain);
            text.push_str(sep);
            text.push_str(endpoint);
            text.push(' ');
            text.push_str(&key);
            if flags & 4 != 0 {
                text.push_str(" extra");
            }
            if flags & 8 != 0 {
                text.push_str(sep);
            }
            text.push_str(end);
        }
        text
    };
    let lines = text.lines().count();
    match StaticDirectory::parse(&text) {
        Err(ResolveError::BadLine { line, reason }) => {
            assert!(!reason.is_empty());
            assert!(
                line <= lines && (line >= 1 || text.len() > kogge::limits::MAX_DIRECTORY_LEN),
                "error names line {line} of {lines}"
            );
        }
        Err(e) => panic!("parse gave {e:?}"),
        Ok(dir) => {
            let entries: Vec<_> = dir.entries().cloned().collect();
            assert!(entries.len() <= lines, "more entries than lines");
            for e in &entries {
                assert_eq!(dir.resolve(&e.domain).as_ref(), Ok(e));
                assert_eq!(
                    Domain::parse_canonical(e.domain.as_str()).as_ref(),
                    Ok(&e.domain),
                    "a non-canonical domain was accepted"
                );
                assert!(!e.endpoint.is_empty(), "an empty endpoint");
            }
            let printed = dir.to_text();
            let again = StaticDirectory::parse(&printed)
                .unwrap_or_else(|e| panic!("to_text does not parse back: {e}\n{printed:?}"));
            assert_eq!(again, dir, "to_text does not round-trip:\n{printed:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The provider world.
// ---------------------------------------------------------------------------------------

/// The domain of the provider under test.
pub const HOME: &str = "one.example";

/// Sequencer domains group requests name.
const SEQUENCERS: [&str; 7] = [
    HOME,
    "two.example",
    "three.example",
    "four.example",
    "five.example",
    "ONE.example",
    "",
];

/// A device the harness can act as.
pub struct Dev {
    /// Its keys and certificate.
    pub device: Device,
    /// Its signing key (for `Auth`).
    pub signing: SigningKey,
    /// The device list it attaches by default (its user's current list).
    pub list: Bytes,
    /// Prekey generations: (signed, ML-KEM, one-time prekeys), each newer than the last.
    pub prekeys: Vec<(Bytes, Bytes, Vec<Bytes>)>,
}

/// A provider the harness can act as (or that no one can).
pub struct Remote {
    /// Its domain.
    pub domain: Domain,
    /// Its key pair.
    pub key: ProviderKeyPair,
    /// The same key for signing (the harness signs challenges and `Auth` with it).
    pub signing: SigningKey,
}

/// Everything `provider_input` and `provider_store_load` need, built once.
pub struct ProviderWorld {
    /// The provider under test.
    pub domain: Domain,
    /// Its key (kept as a secret to make a fresh key pair per run).
    pub key_secret: [u8; 32],
    /// Its public key.
    pub public: ProviderKey,
    /// Remote providers: two.example, three.example, four.example (no one resolves the
    /// last; the harness still holds a key for it).
    pub remotes: Vec<Remote>,
    /// Devices: alice1, alice2, bob1, dave1 (unregistered), alice3 (under another
    /// identity key), rita1 (at two.example), tom1 (at three.example).
    pub devs: Vec<Dev>,
    /// Signed device lists (local and remote, current and stale).
    pub lists: Vec<Bytes>,
    /// One-shot envelopes between the devices (local, outgoing, incoming, misrouted).
    pub envelopes: Vec<Bytes>,
    /// Encoded prekey bundles of remote devices (for answers to forwarded fetches).
    pub bundles: Vec<Bytes>,
    /// Addresses for fetches (valid, foreign, unknown, non-canonical, garbage).
    pub addresses: Vec<String>,
    /// Requesters for fetches.
    pub requesters: Vec<String>,
    /// Group changes as devices send them (without a countersignature), see
    /// [`ProviderGroups`].
    pub group_changes: Vec<Bytes>,
    /// Group envelopes sealed by the world's devices.
    pub group_envelopes: Vec<Bytes>,
    /// Group items for peers to relay.
    pub group_items: Vec<GItem>,
    /// What the base store's sequencer has ordered: (group, epoch, change hash).
    pub base_ordered: Vec<([u8; 16], u64, [u8; 32])>,
}

/// The world's groups (built by [`provider_groups`]):
///
/// * G1, ordered by this provider: alice (admin), bob, rita, tom. The base store holds its
///   creating change (`changes[0]`) as ordered. Changes: 1 alice adds dave (epoch 1), 2 bob
///   leaves (epoch 1, conflicts with 1), 3 rita leaves (epoch 1; comes forwarded from
///   two.example), 4 alice removes tom (epoch 2), 5 alice2 sets the title (epoch 2,
///   conflicts with 4), 9 the creating change countersigned by three.example (ignored
///   and replaced).
/// * G3: alice's creating change naming two.example as sequencer (6): forwarded.
/// * G2, ordered by two.example: rita (admin), alice, bob. 7 alice leaves (forwarded to
///   two.example), 8 rita's creating change.
///
/// Envelopes: alice1 (0, 1), bob1 (2, 3), alice2 (4, 5), rita1 (6, 7), tom1 (8, 9) in G1;
/// rita1 in G2 (10, 11). Relay items: 0 G2 created, 1 dave added to G2 with the snapshot,
/// 2 G2 created but countersigned by three.example, 3 G2's creating change without a
/// countersignature, 4-5 rita's G2 envelopes, 6 rita's G1 envelope, 7 tom's G1 envelope,
/// 8 an envelope with a snapshot, 9 alice's G1 envelope, 10 dave added without snapshot.
pub struct ProviderGroups {
    changes: Vec<Bytes>,
    envelopes: Vec<Bytes>,
    items: Vec<GItem>,
    ordered: Vec<([u8; 16], u64, [u8; 32])>,
}

fn group_member(d: &Device, role: GroupRole) -> GroupMember {
    GroupMember {
        address: d.address().clone(),
        identity: *d.certificate().identity_key(),
        role,
    }
}

/// Two messages sealed by `dev` in `state` on a chain from seed `n`.
fn seal_two(dev: &Device, state: &GroupState, n: u8) -> Vec<Bytes> {
    let mut s = GroupSender::new(state, dev, 1, &mut seeded(n)).expect("a member's sender");
    (0..2u8)
        .map(|i| {
            s.seal(
                dev,
                state,
                &Content::Text(Text::plain("group hello")),
                MessageId::from_bytes([n.wrapping_add(i); 16]),
                NOW,
            )
            .expect("seals")
        })
        .collect()
}

fn provider_groups(devs: &[Dev], home: &ProviderKeyPair, remotes: &[Remote]) -> ProviderGroups {
    let d = |i: usize| &devs[i].device;
    let (alice1, alice2, bob1, dave1, rita1, tom1) = (d(0), d(1), d(2), d(3), d(5), d(6));
    let m = |dev: &Device| group_member(dev, GroupRole::Member);
    let (two, three) = (&remotes[0], &remotes[1]);
    let home_seq = Sequencer {
        domain: Domain::parse(HOME).expect("fixed domain"),
        key: home.public(),
    };
    let two_seq = Sequencer {
        domain: two.domain.clone(),
        key: two.key.public(),
    };
    let c0 = GroupState::create_change(
        alice1,
        [1; 16],
        "g1".into(),
        home_seq,
        vec![m(bob1), m(rita1), m(tom1)],
        NOW,
    )
    .expect("g1");
    let s0 = GroupState::create(&c0.sequence(home)).expect("g1 state");
    let c1 = s0
        .change(alice1, GroupAction::Add(vec![m(dave1)]), NOW)
        .expect("add dave");
    let c1b = s0
        .change(bob1, GroupAction::Leave, NOW)
        .expect("bob leaves");
    let c1c = s0
        .change(rita1, GroupAction::Leave, NOW)
        .expect("rita leaves");
    let s1 = s0.apply(&c1.sequence(home)).expect("g1 epoch 1");
    let c2 = s1
        .change(
            alice1,
            GroupAction::Remove(vec![tom1.address().clone()]),
            NOW,
        )
        .expect("remove tom");
    let c2b = s1
        .change(alice2, GroupAction::SetTitle("g1 again".into()), NOW)
        .expect("title");
    let g3 = GroupState::create_change(
        alice1,
        [3; 16],
        "g3".into(),
        two_seq.clone(),
        vec![m(bob1)],
        NOW,
    )
    .expect("g3");
    let g2c0 = GroupState::create_change(
        rita1,
        [2; 16],
        "g2".into(),
        two_seq,
        vec![m(alice1), m(bob1)],
        NOW,
    )
    .expect("g2");
    let g2c0s = g2c0.sequence(&two.key);
    let g2s0 = GroupState::create(&g2c0s).expect("g2 state");
    let g2c1s = g2s0
        .change(rita1, GroupAction::Add(vec![m(dave1)]), NOW)
        .expect("g2 adds dave")
        .sequence(&two.key);
    let g2_leave = g2s0
        .change(alice1, GroupAction::Leave, NOW)
        .expect("alice leaves g2");
    let mut envelopes = Vec::new();
    for (dev, state, n) in [
        (alice1, &s0, 0x70),
        (bob1, &s0, 0x72),
        (alice2, &s0, 0x74),
        (rita1, &s0, 0x76),
        (tom1, &s0, 0x78),
        (rita1, &g2s0, 0x7a),
    ] {
        envelopes.extend(seal_two(dev, state, n));
    }
    let empty = Bytes::new;
    let items = vec![
        (2, g2c0s.encoded().clone(), empty()),
        (2, g2c1s.encoded().clone(), g2s0.to_snapshot()),
        (2, g2c0.sequence(&three.key).encoded().clone(), empty()),
        (2, g2c0.encoded().clone(), empty()),
        (1, envelopes[10].clone(), empty()),
        (1, envelopes[11].clone(), empty()),
        (1, envelopes[6].clone(), empty()),
        (1, envelopes[8].clone(), empty()),
        (1, envelopes[10].clone(), Bytes::from_static(b"\x0a\x01x")),
        (1, envelopes[0].clone(), empty()),
        (2, g2c1s.encoded().clone(), empty()),
    ];
    let changes = [
        &c0,
        &c1,
        &c1b,
        &c1c,
        &c2,
        &c2b,
        &g3,
        &g2_leave,
        &g2c0,
        &c0.sequence(&three.key),
    ]
    .iter()
    .map(|c| c.encoded().clone())
    .collect();
    ProviderGroups {
        changes,
        envelopes,
        items,
        ordered: vec![(*c0.group().as_bytes(), 0, *c0.hash())],
    }
}

/// Indexes into [`ProviderWorld::devs`].
const ALICE1: usize = 0;
const ALICE2: usize = 1;
const BOB1: usize = 2;

fn provider_world() -> &'static ProviderWorld {
    static WORLD: LazyLock<ProviderWorld> = LazyLock::new(build_provider_world);
    &WORLD
}

fn new_device(identity: &IdentityKeyPair, address: &Address, n: u8) -> Device {
    Device::new(
        identity,
        address.clone(),
        DeviceKeyPair::generate(&mut seeded(n)),
        UnixMillis(NOW.0 - YEAR),
        UnixMillis(NOW.0 + YEAR),
    )
    .expect("certificate issues")
}

fn list_of(identity: &IdentityKeyPair, address: &Address, serial: u64, devs: &[&Device]) -> Bytes {
    let certs: Vec<_> = devs.iter().map(|d| d.certificate().clone()).collect();
    DeviceList::sign(identity, address, serial, NOW, &certs)
        .expect("list signs")
        .encoded()
        .clone()
}

/// Two prekey generations of `device`, with `n` one-time prekeys each.
fn prekey_generations(device: &Device, n: usize, seed: u8) -> Vec<(Bytes, Bytes, Vec<Bytes>)> {
    let mut rng = seeded(seed);
    let mut store = PrekeyStore::new(device, NOW, &mut rng);
    let mut gens = Vec::new();
    for _ in 0..2 {
        let otk: Vec<Bytes> = store
            .mint_one_time(device, n, NOW, &mut rng)
            .iter()
            .map(|k| k.encoded().clone())
            .collect();
        let p = store.published();
        gens.push((
            p.signed_prekey.encoded().clone(),
            p.kem_prekey.encoded().clone(),
            otk,
        ));
        store.rotate(device, NOW, &mut rng);
    }
    gens
}

fn one_shot(from: &Device, to: &Device, body: &str, n: u8) -> Bytes {
    let content = Content::Text(Text::plain(body));
    envelope::seal(
        from,
        &Outgoing {
            recipient: to.certificate(),
            message_id: MessageId::from_bytes([n; 16]),
            timestamp: NOW,
            content: &content,
        },
        &mut seeded(n),
    )
    .expect("one-shot seals")
}

fn build_provider_world() -> ProviderWorld {
    let addr = |s: &str| Address::parse(s).expect("fixed address");
    let (alice, bob, dave) = (
        addr("alice@one.example"),
        addr("bob@one.example"),
        addr("dave@one.example"),
    );
    let (rita, tom) = (addr("rita@two.example"), addr("tom@three.example"));
    let ida = IdentityKeyPair::generate(&mut seeded(1));
    let ida2 = IdentityKeyPair::generate(&mut seeded(2));
    let idb = IdentityKeyPair::generate(&mut seeded(3));
    let idd = IdentityKeyPair::generate(&mut seeded(4));
    let idr = IdentityKeyPair::generate(&mut seeded(5));
    let idt = IdentityKeyPair::generate(&mut seeded(6));
    let alice1 = new_device(&ida, &alice, 11);
    let alice2 = new_device(&ida, &alice, 12);
    let bob1 = new_device(&idb, &bob, 13);
    let dave1 = new_device(&idd, &dave, 14);
    let alice3 = new_device(&ida2, &alice, 15);
    let rita1 = new_device(&idr, &rita, 16);
    let tom1 = new_device(&idt, &tom, 17);

    let alice_v1 = list_of(&ida, &alice, 1, &[&alice1]);
    let alice_v2 = list_of(&ida, &alice, 2, &[&alice1, &alice2]);
    let alice_v3 = list_of(&ida, &alice, 3, &[&alice2]);
    let alice_other = list_of(&ida2, &alice, 5, &[&alice3]);
    let bob_v1 = list_of(&idb, &bob, 1, &[&bob1]);
    let dave_v1 = list_of(&idd, &dave, 1, &[&dave1]);
    let rita_v1 = list_of(&idr, &rita, 1, &[&rita1]);
    let tom_v1 = list_of(&idt, &tom, 1, &[&tom1]);

    let envelopes = vec![
        one_shot(&alice1, &bob1, "alice to bob", 0x20),
        one_shot(&bob1, &alice1, "bob to alice", 0x21),
        one_shot(&alice1, &alice2, "alice to her other device", 0x22),
        one_shot(&alice1, &rita1, "alice to rita", 0x23),
        one_shot(&alice1, &tom1, "alice to tom", 0x24),
        one_shot(&rita1, &alice1, "rita to alice", 0x25),
        one_shot(&rita1, &bob1, "rita to bob", 0x26),
        one_shot(&tom1, &alice1, "tom to alice", 0x27),
        one_shot(&alice1, &dave1, "alice to dave", 0x28),
        one_shot(&bob1, &alice1, &"long ".repeat(400), 0x29),
        one_shot(&alice2, &bob1, "alice2 to bob", 0x2a),
        one_shot(&dave1, &alice1, "dave to alice", 0x2b),
        one_shot(&alice3, &bob1, "alice3 to bob", 0x2c),
        // More copies to the same devices, to fill mailboxes and queues.
        one_shot(&alice1, &bob1, "alice to bob again", 0x2d),
        one_shot(&alice1, &bob1, "alice to bob a third time", 0x2e),
        one_shot(&alice1, &rita1, "alice to rita again", 0x2f),
        one_shot(&alice1, &rita1, "alice to rita a third time", 0x30),
        one_shot(&alice1, &tom1, "alice to tom again", 0x31),
    ];

    let remote_bundle = |d: &Device, seed: u8| {
        let mut rng = seeded(seed);
        let store = PrekeyStore::new(d, NOW, &mut rng);
        let p = store.published();
        PrekeyBundle::new(d.certificate().clone(), p.signed_prekey, p.kem_prekey, None)
            .expect("bundle")
            .encode()
    };
    let bundles = vec![remote_bundle(&rita1, 0x30), remote_bundle(&tom1, 0x31)];

    let devs: Vec<Dev> = vec![
        (alice1, alice_v2.clone(), 0x40),
        (alice2, alice_v2.clone(), 0x41),
        (bob1, bob_v1.clone(), 0x42),
        (dave1, dave_v1.clone(), 0x43),
        (alice3, alice_other.clone(), 0x44),
        (rita1, rita_v1.clone(), 0x45),
        (tom1, tom_v1.clone(), 0x46),
    ]
    .into_iter()
    .map(|(device, list, seed)| Dev {
        signing: device_signing(&device),
        prekeys: prekey_generations(&device, 3, seed),
        device,
        list,
    })
    .collect();

    let remotes: Vec<Remote> = [
        ("two.example", 0x51),
        ("three.example", 0x52),
        ("four.example", 0x53),
    ]
    .into_iter()
    .map(|(d, seed)| {
        let key = ProviderKeyPair::generate(&mut seeded(seed));
        Remote {
            domain: Domain::parse(d).expect("fixed domain"),
            signing: provider_signing(&key),
            key,
        }
    })
    .collect();

    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let key = ProviderKeyPair::generate(&mut seeded(0x50));
    let groups = provider_groups(&devs, &key, &remotes);
    ProviderWorld {
        domain: Domain::parse(HOME).expect("fixed domain"),
        key_secret: *key.secret_bytes().expose(),
        public: key.public(),
        remotes,
        devs,
        lists: vec![
            alice_v1,
            alice_v2,
            alice_v3,
            alice_other,
            bob_v1,
            dave_v1,
            rita_v1,
            tom_v1,
        ],
        envelopes,
        bundles,
        addresses: strings(&[
            "alice@one.example",
            "bob@one.example",
            "dave@one.example",
            "nobody@one.example",
            "rita@two.example",
            "tom@three.example",
            "x@four.example",
            "Alice@one.example",
            "",
            "not an address",
        ]),
        requesters: strings(&[
            "",
            "rita@two.example",
            "tom@three.example",
            "alice@one.example",
            "bad",
        ]),
        group_changes: groups.changes,
        group_envelopes: groups.envelopes,
        group_items: groups.items,
        base_ordered: groups.ordered,
    }
}

impl ProviderWorld {
    fn key(&self) -> ProviderKeyPair {
        ProviderKeyPair::from_secret_bytes(&Secret::new(self.key_secret))
    }

    /// The remote the harness plays for `domain` (four.example's key for any other).
    fn remote(&self, domain: &Domain) -> &Remote {
        self.remotes
            .iter()
            .find(|r| &r.domain == domain)
            .unwrap_or(&self.remotes[2])
    }

    /// Remote domains the harness names: the remotes and one no one knows (for answers
    /// the provider did not ask for). Never this provider's own domain: a driver that
    /// connects a provider to itself is broken, not a peer.
    fn domains(&self) -> Vec<Domain> {
        let mut v: Vec<Domain> = self.remotes.iter().map(|r| r.domain.clone()).collect();
        v.push(Domain::parse("five.example").expect("fixed domain"));
        v
    }
}

// ---------------------------------------------------------------------------------------
// Driving a provider.
// ---------------------------------------------------------------------------------------

/// A [`MemoryStore`] shared with the harness, which makes commits fail and restarts
/// providers from what is durable.
struct SharedStore(Rc<RefCell<MemoryStore>>);

impl Store for SharedStore {
    fn load(&mut self) -> Result<kogge::store::Contents, StoreError> {
        self.0.borrow_mut().load()
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.0.borrow_mut().commit(ops)
    }
}

/// One connection, as the harness sees it.
#[derive(Default)]
struct PConn {
    /// `Some(domain)`: the provider opened it (after `Connect`) to `domain`.
    outbound: Option<Domain>,
    /// Open: connected, and closed by neither side yet.
    open: bool,
    binding: Bytes,
    // What the harness sent (inbound).
    hello_nonce: Vec<u8>,
    /// Devices the harness sent a correctly signed `Auth` for.
    auth_devices: Vec<usize>,
    /// Request ids the harness may have sent (`None`: a frame it could not read).
    requests: Option<HashSet<u64>>,
    // What the provider sent (or said).
    challenge: Option<Bytes>,
    welcomed: bool,
    /// The device the provider authenticated (its event).
    device: Option<usize>,
    peer: Option<Domain>,
    /// Outbound: the nonce of the provider's `Hello`; whether it sent `Auth`.
    hello: Option<Bytes>,
    authed: bool,
    /// Mailbox sequence numbers delivered on it.
    delivered: Vec<u64>,
    /// Outbound: requests the provider sent (id, body field).
    peer_requests: Vec<(u64, u32, usize)>,
}

/// Found by `provider_store_load` and fixed: the store loader (`MailItem::decode` in
/// `src/provider/state.rs`) accepted mailbox items the wire format refuses (an envelope
/// longer than `MAX_ENVELOPE_LEN`, a malformed notice), so the provider sent its device
/// a `Deliver` the device must refuse, again on every connection. Such records now
/// count as corrupt. The reproducer (the 5 bytes `01 89 06 26 87`) is in the corpus as
/// `regression-oversize-stored-envelope`; `true` would tolerate the finding again.
const KNOWN_UNCHECKED_STORED_MAIL: bool = false;

/// Flags of a provider run (the first input byte).
const P_OPEN_REGISTRATION: u8 = 1;
const P_TINY_LIMITS: u8 = 2;
const P_EMPTY_STORE: u8 = 4;
const P_DEFERRED: u8 = 8;

/// One provider under test and everything the harness knows about it.
///
/// Invariants checked after every output:
/// * every `Transmit` passes `check_frame`, goes to a connection that is open, and is a
///   frame its side may send: on connections opened to it `challenge` (once), `welcome`
///   (once, after the challenge), `response`s (after the welcome, answering ids the peer
///   sent on that connection), `deliver`s (only to an authenticated device, every
///   envelope addressed to that very device), `goodbye`; on connections it opened
///   `hello` (once), `auth` (once, after a challenge, signed correctly by its provider
///   key), `request`s (after its auth; relays only of its users' envelopes to users of
///   that provider, fetches only for that provider's users on behalf of its own), and
///   `goodbye`;
/// * `Close` only of an open connection; `Authenticated` only for a device whose correct
///   `Auth` the harness sent on that connection; `Registered` only with open
///   registration; never `CorruptRecords` for records it wrote itself; `StorageFailed`
///   no more often than failures were injected;
/// * `stats()` within `limits.rs` and the configured limits, and no more connections than
///   are open;
/// * after `handle_timeout(now)`, the next deadline is later than `now`;
/// * a `deliver` carries only mailbox items the store made durable (SPEC.md 16.12 rule
///   5): each is in the store's mailbox table, or was when it was delivered before; with
///   deferred commits, envelopes and group envelopes may also come ahead of their write
///   once a batch holding a new sequence epoch (`seq_epoch`) was applied, and no failed
///   batch came since;
/// * no `seq` is given to two different items of one device (SPEC.md 16.7);
/// * with deferred commits ([`P_DEFERRED`]): at most one `Commit` outstanding, each batch
///   with a new id; while one is outstanding no response, `welcome` or event leaves, nor
///   a delivery other than one that may go ahead as above (each may acknowledge a write
///   of the batch; what needs no write may leave: relays, forwarded requests, connects
///   and the handshakes of connections to other providers); after a failed batch nothing more is sent on a connection opened
///   before it (what it held is dropped, the connections are closed); an answer for a
///   batch that is not outstanding changes nothing;
/// * at the end, a provider restarted from the store reports no corrupt record and the
///   same users, mailboxes, queues and dedup entries (nothing in memory that is not
///   durable, nothing durable that is not in memory).
struct PRun<'w> {
    w: &'w ProviderWorld,
    p: Provider<SharedStore, ChaCha20Rng>,
    store: Rc<RefCell<MemoryStore>>,
    limits: ProviderLimits,
    open_registration: bool,
    now: UnixMillis,
    conns: Vec<PConn>,
    connects: Vec<Domain>,
    resolves: Vec<Domain>,
    /// Frames sent either way, for edits.
    frames: Vec<Bytes>,
    /// Commit failures injected, and storage failures reported.
    injected: u32,
    storage_failures: u32,
    /// Whether the store may hold records this provider did not write.
    foreign_store: bool,
    corrupt_reported: Option<usize>,
    /// The changes this provider countersigned as a sequencer: (group, epoch) -> hash.
    ordered: HashMap<([u8; 16], u64), [u8; 32]>,
    /// Group items peers relayed to it, and every user a relay of each named.
    relayed: HashMap<(u32, Vec<u8>, Vec<u8>), HashSet<String>>,
    /// Responses it sent on connections opened to it: (conn, id, body field).
    responses: Vec<(u64, u64, u32)>,
    /// Group items devices submitted (a relayed item may be submitted too: not checked).
    submitted: HashSet<(u32, Vec<u8>, Vec<u8>)>,
    /// Mailbox items (the bytes of the `MailboxItem` oneof) delivered while durable.
    durable_delivered: HashSet<Vec<u8>>,
    /// Deferred: a batch with a new sequence epoch was applied and answered `Ok`, and no
    /// batch failed since: envelopes may be delivered ahead of their writes.
    epoch_durable: bool,
    /// What each device (by index into the world's devices) was sent under each `seq`.
    seq_items: HashMap<(usize, u64), Vec<u8>>,
    /// The provider defers its commits to the harness.
    deferred: bool,
    /// Deferred: the batch handed out and not yet answered, and every id handed out.
    batch: Option<CommitBatch>,
    batch_ids: HashSet<u64>,
    /// While draining after a failed batch: the connections opened before it.
    failed_before: Option<u64>,
}

fn tiny_limits() -> ProviderLimits {
    ProviderLimits {
        max_mailbox_depth: 2,
        max_remote_queue_depth: 2,
        client_burst: 6,
        client_rate: 1,
        provider_burst: 4,
        provider_rate: 1,
        fetch_burst: 3,
        fetches_per_minute: 1,
        one_time_burst: 1,
        one_time_per_hour: 1,
        relay_expiry_ms: HOUR,
    }
}

impl<'w> PRun<'w> {
    fn new(w: &'w ProviderWorld, store: MemoryStore, flags: u8, foreign_store: bool) -> Self {
        let limits = if flags & P_TINY_LIMITS != 0 {
            tiny_limits()
        } else {
            ProviderLimits::default()
        };
        let open_registration = flags & P_OPEN_REGISTRATION != 0;
        let mut config = ProviderConfig::new(w.domain.clone(), w.key());
        config.open_registration = open_registration;
        config.limits = limits;
        let store = Rc::new(RefCell::new(store));
        let mut p = Provider::new(config, SharedStore(store.clone()), seeded(0x60), NOW)
            .expect("a MemoryStore loads");
        let deferred = flags & P_DEFERRED != 0;
        if deferred {
            p.defer_commits();
        }
        let mut run = Self {
            w,
            p,
            store,
            limits,
            open_registration,
            now: NOW,
            conns: Vec::new(),
            connects: Vec::new(),
            resolves: Vec::new(),
            frames: Vec::new(),
            injected: 0,
            storage_failures: 0,
            foreign_store,
            corrupt_reported: None,
            ordered: HashMap::new(),
            relayed: HashMap::new(),
            responses: Vec::new(),
            submitted: HashSet::new(),
            durable_delivered: HashSet::new(),
            epoch_durable: false,
            seq_items: HashMap::new(),
            deferred,
            batch: None,
            batch_ids: HashSet::new(),
            failed_before: None,
        };
        run.drain();
        run
    }

    fn remember(&mut self, bytes: &Bytes) {
        if self.frames.len() >= MAX_REMEMBERED {
            self.frames.remove(0);
        }
        self.frames.push(bytes.clone());
    }

    /// Polls until `Timeout`, checking every output; returns the deadline.
    fn drain(&mut self) -> Option<UnixMillis> {
        for _ in 0..MAX_OUTPUTS {
            let o = self.p.poll_output(self.now);
            match &o {
                ProviderOutput::Transmit { conn, bytes } => {
                    trace!("  provider -> {conn}: {}", describe(bytes))
                }
                ProviderOutput::Timeout(_) => {}
                other => trace!("  provider: {other:?}"),
            }
            if let (Some(b), ProviderOutput::Event(e)) = (&self.batch, &o) {
                panic!("event {e:?} while batch {} is outstanding", b.id);
            }
            match o {
                ProviderOutput::Timeout(t) => {
                    self.check_stats();
                    return t;
                }
                ProviderOutput::Transmit { conn, bytes } => self.on_transmit(conn, bytes),
                ProviderOutput::Close { conn } => {
                    let c = self
                        .conns
                        .get_mut(conn.0 as usize)
                        .unwrap_or_else(|| panic!("Close of {conn}, never opened"));
                    assert!(c.open, "Close of {conn}, closed already");
                    c.open = false;
                }
                ProviderOutput::Connect { domain } => {
                    assert_ne!(domain, self.w.domain, "the provider connects to itself");
                    self.connects.push(domain);
                }
                ProviderOutput::Resolve { domain } => self.resolves.push(domain),
                ProviderOutput::Event(e) => self.on_event(e),
                ProviderOutput::Commit(b) => {
                    assert!(
                        self.deferred,
                        "Commit of batch {} without defer_commits",
                        b.id
                    );
                    if let Some(old) = &self.batch {
                        panic!("batch {} handed out while {} is outstanding", b.id, old.id);
                    }
                    assert!(self.p.commit_outstanding());
                    assert!(self.batch_ids.insert(b.id), "batch id {} reused", b.id);
                    self.batch = Some(b);
                }
            }
        }
        panic!("poll_output did not return Timeout after {MAX_OUTPUTS} outputs");
    }

    fn on_event(&mut self, e: ProviderEvent) {
        match e {
            ProviderEvent::CorruptRecords(n) => {
                assert!(
                    self.foreign_store,
                    "the provider found {n} of its own records corrupt"
                );
                assert!(
                    self.corrupt_reported.is_none(),
                    "corrupt records reported twice"
                );
                self.corrupt_reported = Some(n);
            }
            ProviderEvent::StorageFailed(_) => {
                self.storage_failures += 1;
                assert!(
                    self.storage_failures <= self.injected,
                    "a storage failure that was not injected"
                );
            }
            ProviderEvent::Authenticated { conn, peer } => {
                let c = self
                    .conns
                    .get_mut(conn.0 as usize)
                    .unwrap_or_else(|| panic!("{conn} authenticated, never opened"));
                match peer {
                    PeerIdentity::Device { address, device } => {
                        let k = c
                            .auth_devices
                            .iter()
                            .copied()
                            .find(|k| {
                                let d = &self.w.devs[*k].device;
                                d.address() == &address && d.id() == device
                            })
                            .unwrap_or_else(|| {
                                panic!("{conn} authenticated as {address}, which never signed in")
                            });
                        assert!(
                            c.device.is_none() && c.peer.is_none(),
                            "{conn} authenticated twice"
                        );
                        c.device = Some(k);
                    }
                    PeerIdentity::Provider(domain) => {
                        assert_ne!(domain, self.w.domain);
                        assert!(
                            c.device.is_none() && c.peer.is_none(),
                            "{conn} authenticated twice"
                        );
                        if let Some(d) = &c.outbound {
                            assert_eq!(d, &domain, "{conn} authenticated as another provider");
                        }
                        c.peer = Some(domain);
                    }
                }
            }
            ProviderEvent::Registered { address } => {
                assert!(
                    self.open_registration,
                    "{address} registered without open registration"
                );
                assert!(address.is_at(&self.w.domain));
            }
            _ => {}
        }
    }

    fn on_transmit(&mut self, conn: ConnectionId, bytes: Bytes) {
        let kind = match protocol::check_frame(&bytes) {
            Ok(kind) => kind,
            Err(protocol::FrameError::InvalidField(field))
                if KNOWN_UNCHECKED_STORED_MAIL
                    && self.foreign_store
                    && (field.starts_with("deliver.") || field.starts_with("undeliverable.")) =>
            {
                // See KNOWN_UNCHECKED_STORED_MAIL.
                self.remember(&bytes);
                return;
            }
            Err(e) => panic!("the provider sent a frame check_frame refuses on {conn}: {e}"),
        };
        let home = self.w.domain.clone();
        let public = self.w.public;
        let foreign = self.foreign_store;
        let c = self
            .conns
            .get_mut(conn.0 as usize)
            .unwrap_or_else(|| panic!("{kind} on {conn}, never opened"));
        assert!(c.open, "{kind} on {conn} after it was closed");
        if let Some(n) = self.failed_before {
            assert!(
                conn.0 >= n,
                "{kind} on {conn} after a failed batch (the connection is older)"
            );
        }
        let (field, body) = pb::frame_body(&bytes).expect("own frames parse");
        if let Some(b) = &self.batch {
            let ahead = field == F_DELIVER
                && self.epoch_durable
                && pb::all_bytes(&body_fields(&body), 1)
                    .into_iter()
                    .all(|i| may_go_ahead(&body_fields(i)));
            assert!(
                !matches!(field, F_RESPONSE | F_DELIVER | F_WELCOME) || ahead,
                "{kind} on {conn} while batch {} is outstanding",
                b.id
            );
        }
        let f = body_fields(&body);
        match (&c.outbound, field) {
            (None, F_CHALLENGE) => {
                assert!(c.challenge.is_none(), "a second challenge on {conn}");
                c.challenge = Some(Bytes::copy_from_slice(
                    pb::last_bytes(&f, 1).unwrap_or_default(),
                ));
            }
            (None, F_WELCOME) => {
                assert!(
                    c.challenge.is_some() && !c.welcomed,
                    "welcome out of place on {conn}"
                );
                c.welcomed = true;
            }
            (None, F_RESPONSE) => {
                assert!(c.welcomed, "a response before the welcome on {conn}");
                let id = pb::last_varint(&f, 1);
                if let Some(ids) = &c.requests {
                    assert!(
                        ids.contains(&id),
                        "a response to request {id}, never made on {conn}"
                    );
                }
                let answer = f.iter().rev().find_map(|(n, v)| match v {
                    pb::Val::Bytes(b) if *n != 1 => Some((*n, *b)),
                    _ => None,
                });
                if let Some((n, b)) = answer {
                    self.responses.push((conn.0, id, n));
                    // The sequencer countersigns at most one change per group and epoch.
                    if n == RS_GROUP_CHANGE && !foreign {
                        let g = body_fields(b);
                        let change = GroupChange::decode(Bytes::copy_from_slice(
                            pb::last_bytes(&g, 1).unwrap_or_default(),
                        ))
                        .expect("an ordered change decodes");
                        if change.is_sequenced_by(&public) {
                            let k = (*change.group().as_bytes(), change.epoch());
                            let prev = *self.ordered.entry(k).or_insert(*change.hash());
                            assert_eq!(
                                &prev,
                                change.hash(),
                                "two changes countersigned for group {} epoch {}",
                                change.group(),
                                change.epoch()
                            );
                        }
                    }
                }
            }
            (None, F_DELIVER) => {
                assert!(c.welcomed, "a delivery before the welcome on {conn}");
                let k = c
                    .device
                    .unwrap_or_else(|| panic!("a delivery on {conn}, where no device signed in"));
                let dev = &self.w.devs[k].device;
                let mut mailbox: Option<Vec<Bytes>> = None;
                for item in pb::all_bytes(&f, 1) {
                    let i = body_fields(item);
                    let seq = pb::last_varint(&i, 1);
                    c.delivered.push(seq);
                    // Durable: in the store's mailbox table, or delivered while it was;
                    // or an envelope sent ahead of its write once that is allowed.
                    let payload = i
                        .iter()
                        .rev()
                        .find_map(|(n, v)| match v {
                            pb::Val::Bytes(b) if (2..=4).contains(n) => Some(b.to_vec()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    if !self.durable_delivered.contains(&payload) {
                        let rows = mailbox.get_or_insert_with(|| {
                            let contents = self.store.borrow_mut().load().expect("loads");
                            contents
                                .get(&Table::Mailbox)
                                .map(|t| t.values().cloned().collect())
                                .unwrap_or_default()
                        });
                        if rows.iter().any(|r| contains(r, &payload)) {
                            self.durable_delivered.insert(payload.clone());
                        } else {
                            assert!(
                                self.epoch_durable && may_go_ahead(&i),
                                "a mailbox item delivered on {conn} that the store does not \
                                 hold"
                            );
                        }
                    }
                    let was = self
                        .seq_items
                        .entry((k, seq))
                        .or_insert_with(|| payload.clone());
                    assert!(
                        *was == payload,
                        "seq {seq} given to two different items of device {k}"
                    );
                    // What a foreign store holds is delivered as it is (recipients
                    // verify end to end); what this provider accepted must be routed.
                    // A relayed group item goes only to users a relay of it named.
                    if let Some(g) = pb::last_bytes(&i, MI_GROUP)
                        && !foreign
                        && let Some(key) = group_item_key(g)
                        && !self.submitted.contains(&key)
                        && let Some(named) = self.relayed.get(&key)
                    {
                        assert!(
                            named.contains(dev.address().as_str()),
                            "a relayed group item delivered to {}, which no relay of it named",
                            dev.address()
                        );
                    }
                    if let Some(e) = pb::last_bytes(&i, 2)
                        && !foreign
                    {
                        let env = UnverifiedEnvelope::decode(Bytes::copy_from_slice(e))
                            .expect("a delivered envelope decodes");
                        let h = env.claimed_header();
                        assert!(
                            &h.recipient == dev.address() && h.recipient_device == dev.id(),
                            "an envelope for {} delivered to {}",
                            h.recipient,
                            dev.address()
                        );
                    }
                }
            }
            (Some(domain), F_HELLO) => {
                assert!(c.hello.is_none(), "a second hello on {conn}");
                assert_eq!(pb::last_varint(&f, 3), 2, "hello role");
                assert_eq!(pb::last_bytes(&f, 4), Some(domain.as_str().as_bytes()));
                c.hello = Some(Bytes::copy_from_slice(
                    pb::last_bytes(&f, 2).unwrap_or_default(),
                ));
            }
            (Some(domain), F_AUTH) => {
                assert!(!c.authed, "a second auth on {conn}");
                let hello = c.hello.clone().expect("auth before hello");
                let who = pb::last_bytes(&f, 2).expect("provider auth");
                let who = body_fields(who);
                assert_eq!(pb::last_bytes(&who, 1), Some(home.as_str().as_bytes()));
                let sig = pb::last_bytes(&f, 3).unwrap_or_default();
                let challenge = c.challenge.clone().expect("auth before a challenge");
                assert!(
                    verifies(
                        public.as_verifying_key(),
                        Label::AuthSignature,
                        &[
                            &challenge,
                            &hello,
                            domain.as_str().as_bytes(),
                            &c.binding,
                            home.as_str().as_bytes()
                        ],
                        sig
                    ),
                    "the provider's auth signature does not verify"
                );
                c.authed = true;
            }
            (Some(domain), F_REQUEST) => {
                assert!(c.authed, "a request before the auth on {conn}");
                let id = pb::last_varint(&f, 1);
                let (rq, payload) = f
                    .iter()
                    .rev()
                    .find_map(|(n, v)| match v {
                        pb::Val::Bytes(b) if *n != 1 => Some((*n, *b)),
                        _ => None,
                    })
                    .expect("a request with a body");
                let p = body_fields(payload);
                let mut count = 1;
                match rq {
                    RQ_RELAY => {
                        let envs = pb::all_bytes(&p, 1);
                        let groups = pb::all_bytes(&p, 2);
                        count = envs.len() + groups.len();
                        for g in groups {
                            let g = body_fields(g);
                            for r in pb::all_bytes(&g, 2) {
                                let r = String::from_utf8_lossy(r);
                                assert!(
                                    foreign
                                        || Address::parse_canonical(&r)
                                            .is_ok_and(|a| a.is_at(domain)),
                                    "a group relay to {domain} for {r}"
                                );
                            }
                            let item = pb::last_bytes(&g, 1).unwrap_or_default();
                            let (field, body, snapshot) =
                                group_item_key(item).expect("a relayed group item has a body");
                            if foreign {
                                continue;
                            }
                            if field == 1 {
                                let env = GroupEnvelope::decode(Bytes::from(body))
                                    .expect("a relayed group envelope decodes");
                                assert!(env.sender().is_at(&home) && snapshot.is_empty());
                            } else {
                                let change = GroupChange::decode(Bytes::from(body))
                                    .expect("a relayed change decodes");
                                assert!(
                                    change.is_sequenced_by(&public),
                                    "relayed a change this provider did not countersign"
                                );
                            }
                        }
                        for e in envs {
                            let env = UnverifiedEnvelope::decode(Bytes::copy_from_slice(e))
                                .expect("a relayed envelope decodes");
                            let h = env.claimed_header();
                            assert!(
                                foreign || (h.recipient.is_at(domain) && h.sender.is_at(&home)),
                                "relayed to {domain}: {} -> {}",
                                h.sender,
                                h.recipient
                            );
                        }
                    }
                    RQ_FETCH_BUNDLES | RQ_FETCH_LIST => {
                        let addr = |n| {
                            String::from_utf8_lossy(pb::last_bytes(&p, n).unwrap_or_default())
                                .into_owned()
                        };
                        let (address, requester) = if rq == RQ_FETCH_BUNDLES {
                            (addr(1), addr(3))
                        } else {
                            (addr(1), addr(2))
                        };
                        let ok = |s: &str, d: &Domain| {
                            Address::parse_canonical(s).is_ok_and(|a| a.is_at(d))
                        };
                        assert!(
                            ok(&address, domain),
                            "fetch of {address} forwarded to {domain}"
                        );
                        assert!(ok(&requester, &home), "fetch forwarded for {requester}");
                    }
                    RQ_ORDER_GROUP => {
                        let text = |n| {
                            String::from_utf8_lossy(pb::last_bytes(&p, n).unwrap_or_default())
                                .into_owned()
                        };
                        assert_eq!(
                            text(2),
                            domain.as_str(),
                            "a change forwarded to another provider than its sequencer"
                        );
                        let requester = text(3);
                        assert!(
                            Address::parse_canonical(&requester).is_ok_and(|a| a.is_at(&home)),
                            "a change forwarded for {requester}"
                        );
                        let change = GroupChange::decode(Bytes::copy_from_slice(
                            pb::last_bytes(&p, 1).unwrap_or_default(),
                        ))
                        .expect("a forwarded change decodes");
                        assert_eq!(change.author().as_str(), requester);
                    }
                    other => panic!("the provider sent request body {other} to {domain}"),
                }
                c.peer_requests.push((id, rq, count));
            }
            (_, F_GOODBYE) => {}
            (out, k) => panic!(
                "the provider sent {} on an {} connection",
                KINDS[k as usize],
                if out.is_some() { "outbound" } else { "inbound" }
            ),
        }
        self.remember(&bytes);
    }

    fn check_stats(&self) {
        let s = self.p.stats();
        let open = self.conns.iter().filter(|c| c.open).count();
        assert!(
            s.connections <= open,
            "{} connections, {open} open",
            s.connections
        );
        assert!(
            s.max_mailbox_depth <= self.limits.max_mailbox_depth.min(MAX_MAILBOX_DEPTH)
                || self.foreign_store,
            "mailbox depth {} over the limit",
            s.max_mailbox_depth
        );
        assert!(
            s.max_remote_queue_depth
                <= self
                    .limits
                    .max_remote_queue_depth
                    .min(MAX_REMOTE_QUEUE_DEPTH)
                || self.foreign_store,
            "remote queue depth {} over the limit",
            s.max_remote_queue_depth
        );
        assert!(s.dedup_entries <= MAX_DEDUP_ENTRIES);
        assert!(s.pending_fetches <= MAX_PENDING_REMOTE_FETCHES);
        assert!(s.max_mailbox_depth <= s.mailbox_items);
        assert!(s.max_remote_queue_depth <= s.outbound_items);
    }

    fn input(&mut self, input: ProviderInput) {
        match &input {
            ProviderInput::Received { conn, bytes } => trace!(
                "{conn} -> provider: {} ({} bytes)",
                describe(bytes),
                bytes.len()
            ),
            other => trace!("input: {other:?}"),
        }
        self.p.handle_input(self.now, input);
        self.drain();
    }

    fn advance(&mut self, ms: u64) {
        self.now = UnixMillis(self.now.0.saturating_add(ms));
        trace!("time +{ms} ms");
        self.p.handle_timeout(self.now);
        if let Some(t) = self.drain() {
            assert!(
                t > self.now,
                "after handle_timeout({:?}) the deadline is {t:?}",
                self.now
            );
        }
    }

    /// A connection id: recent ones for small bytes, `0xff` one never opened.
    fn pick_conn(&self, b: u8) -> u64 {
        let n = self.conns.len();
        if b == 0xff || n == 0 {
            return n as u64;
        }
        (n - 1 - usize::from(b) % n) as u64
    }

    fn pick_outbound(&self, b: u8) -> Option<u64> {
        let out: Vec<u64> = (0..self.conns.len() as u64)
            .filter(|i| self.conns[*i as usize].outbound.is_some())
            .collect();
        if out.is_empty() {
            return None;
        }
        Some(out[out.len() - 1 - usize::from(b) % out.len()])
    }

    fn send(&mut self, conn: u64, bytes: Bytes) {
        if let Some(c) = self.conns.get_mut(conn as usize) {
            // Every request id this frame may carry (prost keeps the last of a run).
            let ids = pb::fields(&bytes).map(|fields| {
                fields
                    .iter()
                    .filter_map(|(n, v)| match v {
                        pb::Val::Bytes(b) if *n == F_REQUEST => pb::fields(b),
                        _ => None,
                    })
                    .flat_map(|r| {
                        r.iter()
                            .filter_map(|(n, v)| match v {
                                pb::Val::Varint(x) if *n == 1 => Some(*x),
                                _ => None,
                            })
                            .chain([0])
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            });
            let unreadable = pb::fields(&bytes).is_some_and(|fields| {
                fields.iter().any(|(n, v)| matches!(v, pb::Val::Bytes(b) if *n == F_REQUEST && pb::fields(b).is_none()))
            });
            match (ids, unreadable) {
                (Some(ids), false) => {
                    if let Some(known) = &mut c.requests {
                        known.extend(ids);
                    }
                }
                _ => c.requests = None,
            }
        }
        self.remember(&bytes);
        self.input(ProviderInput::Received {
            conn: ConnectionId(conn),
            bytes,
        });
    }

    fn connect_inbound(&mut self, binding: Bytes) -> u64 {
        let id = self.conns.len() as u64;
        self.conns.push(PConn {
            open: true,
            binding: binding.clone(),
            requests: Some(HashSet::new()),
            ..PConn::default()
        });
        self.input(ProviderInput::Connected {
            conn: ConnectionId(id),
            direction: Direction::Inbound,
            binding,
        });
        id
    }

    fn connect_outbound(&mut self, domain: Domain, key: ProviderKey, binding: Bytes) -> u64 {
        let id = self.conns.len() as u64;
        self.conns.push(PConn {
            outbound: Some(domain.clone()),
            open: true,
            binding: binding.clone(),
            requests: Some(HashSet::new()),
            ..PConn::default()
        });
        self.input(ProviderInput::Connected {
            conn: ConnectionId(id),
            direction: Direction::Outbound { domain, key },
            binding,
        });
        id
    }

    fn hello(&mut self, conn: u64, role: u64, variant: u8) {
        let nonce = vec![0x40 ^ (conn as u8); AUTH_NONCE_LEN];
        let home = self.w.domain.as_str().to_owned();
        let f = match variant % 8 {
            0 | 1 => hello_frame(1, &nonce, role, &home),
            2 => hello_frame(2, &nonce, role, &home),
            3 => hello_frame(1, &nonce, role, "two.example"),
            4 => hello_frame(1, &nonce, 0, &home),
            5 => hello_frame(1, &nonce, 7, &home),
            6 => hello_frame(1, &nonce[1..], role, &home),
            _ => hello_frame(1, &nonce, role, "ONE.example"),
        };
        if let Some(c) = self.conns.get_mut(conn as usize) {
            c.hello_nonce = nonce;
        }
        self.send(conn, f);
    }

    /// The parts the connector signs in `Auth` on `conn` (SPEC.md 16.3).
    fn auth_parts(&self, conn: u64) -> (Bytes, Vec<u8>, Bytes) {
        self.conns.get(conn as usize).map_or_else(
            || (Bytes::new(), vec![0; AUTH_NONCE_LEN], Bytes::new()),
            |c| {
                (
                    c.challenge.clone().unwrap_or_default(),
                    c.hello_nonce.clone(),
                    c.binding.clone(),
                )
            },
        )
    }

    fn auth_device(&mut self, conn: u64, dev: usize, variant: u8) {
        let w = self.w;
        let d = &w.devs[dev % w.devs.len()];
        let cert = d.device.certificate().encoded().clone();
        let list: Bytes = match variant % 4 {
            0 => Bytes::new(),
            1 => d.list.clone(),
            2 => w.lists[usize::from(variant / 4) % w.lists.len()].clone(),
            _ => Bytes::from_static(b"\x0a\x03not a list"),
        };
        let (challenge, hello, binding) = self.auth_parts(conn);
        let home = w.domain.as_str().as_bytes();
        let good = variant & 0x80 == 0;
        let sig = if good {
            sign(
                &d.signing,
                Label::AuthSignature,
                &[&challenge, &hello, home, &binding, &cert],
            )
        } else {
            sign(
                &d.signing,
                Label::AuthSignature,
                &[&hello, &challenge, home, &binding, &cert],
            )
        };
        if good && let Some(c) = self.conns.get_mut(conn as usize) {
            c.auth_devices.push(dev % w.devs.len());
        }
        self.send(conn, auth_device_frame(&cert, &list, &sig));
    }

    /// Hello and Auth as `dev`, attaching its list if `with_list`.
    fn login(&mut self, conn: u64, dev: usize, with_list: bool) {
        self.hello(conn, 1, 0);
        self.auth_device(conn, dev, u8::from(with_list));
    }

    fn peer_login(&mut self, conn: u64, domain: &str, variant: u8) {
        self.hello(conn, 2, 0);
        let w = self.w;
        let (challenge, hello, binding) = self.auth_parts(conn);
        let d = Domain::parse(domain).unwrap_or_else(|_| w.domain.clone());
        let key = &w.remote(&d).signing;
        let parts: [&[u8]; 5] = [
            &challenge,
            &hello,
            w.domain.as_str().as_bytes(),
            &binding,
            domain.as_bytes(),
        ];
        let sig = if variant & 1 == 0 {
            sign(key, Label::AuthSignature, &parts)
        } else {
            sign(key, Label::ChallengeSignature, &parts)
        };
        self.send(conn, auth_provider_frame(domain, &sig));
        if variant & 2 != 0 {
            // Answer the resolve at once, with the right key.
            if let Some(i) = self.resolves.iter().position(|r| r == &d) {
                self.resolves.remove(i);
                let key = w.remote(&d).key.public();
                self.input(ProviderInput::Resolved {
                    domain: d,
                    key: Some(key),
                });
            }
        }
    }

    /// A request a device or a peer provider might send, drawn from the world.
    fn request(&self, cur: &mut Cursor<'_>) -> Bytes {
        let w = self.w;
        let id = match cur.u8() {
            0xff => u64::MAX,
            b => u64::from(b % 16),
        };
        let body = match cur.u8() % 9 {
            0 => Some((
                RQ_PUBLISH_LIST,
                Msg::new().bytes(1, cur.pick::<Bytes>(&w.lists)),
            )),
            1 => {
                let d = cur.pick(&w.devs);
                let flags = cur.u8();
                let other = cur.pick(&w.devs);
                let (signed, kem, otk) = &d.prekeys[usize::from(flags & 1)];
                let (signed, kem) = match (flags >> 1) % 4 {
                    0 => (signed.clone(), kem.clone()),
                    1 => (kem.clone(), signed.clone()),
                    2 => (other.prekeys[0].0.clone(), other.prekeys[0].1.clone()),
                    _ => (signed.clone(), otk.first().cloned().unwrap_or_default()),
                };
                let mask = cur.u8();
                let mut m = Msg::new().bytes(1, &signed).bytes(2, &kem);
                for (i, k) in d.prekeys.iter().flat_map(|g| &g.2).enumerate() {
                    if mask & (1 << i) != 0 {
                        m = m.bytes(3, k);
                    }
                }
                Some((RQ_PUBLISH_PREKEYS, m))
            }
            2 => {
                let address = cur.pick(&w.addresses).clone();
                let mask = cur.u8();
                let mut m = Msg::new().str(1, &address);
                for (i, d) in w.devs.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        m = m.bytes(2, d.device.id().as_bytes());
                    }
                }
                if mask & 0x80 != 0 {
                    m = m.bytes(2, &[7; 16]);
                }
                Some((
                    RQ_FETCH_BUNDLES,
                    m.str(3, cur.pick::<String>(&w.requesters)),
                ))
            }
            3 => {
                let address = cur.pick(&w.addresses).clone();
                Some((
                    RQ_FETCH_LIST,
                    Msg::new()
                        .str(1, &address)
                        .str(2, cur.pick::<String>(&w.requesters)),
                ))
            }
            4 | 5 => {
                let n = 1 + usize::from(cur.u8() % 3);
                let mut envs = Vec::new();
                for _ in 0..n {
                    let e = cur.pick(&w.envelopes).clone();
                    envs.push(if cur.u8() & 1 == 0 {
                        e
                    } else {
                        edited(&e, cur)
                    });
                }
                let field = if cur.u8() & 1 == 0 {
                    RQ_SUBMIT
                } else {
                    RQ_RELAY
                };
                Some((field, envelopes_msg(&envs)))
            }
            6 => None,
            7 => {
                // The same envelope many times (deduplicated within one submit).
                let e = cur.pick(&w.envelopes).clone();
                let n = 1 + usize::from(cur.u8() % 32);
                Some((RQ_SUBMIT, envelopes_msg(&vec![e; n])))
            }
            _ => Some((RQ_SUBMIT, Msg::new())),
        };
        request_frame(id, body)
    }

    /// A step on a connection the provider opened: the remote's side of the handshake
    /// and answers to the provider's requests. `[step, ..]`, `step % 9`: 0-2 a challenge
    /// `[variant]` (0 valid, 1 another domain, 2 a bad signature); 3 welcome; 4 a relay
    /// result for the last relay, one byte per envelope or group relay (bit 0 an error,
    /// bits 1-6 its code, bit 7 retryable; `step` bit 7 adds one result too many); 5 an
    /// error answer to the last request `[code, retry after]`; 6-7 an answer to the last
    /// forwarded fetch or change `[list, kind, bundles | change]` (kind `% 4`: device
    /// list, done, bundles, `GroupChangeOrdered`); 8 a response without a body `[id]`.
    fn outbound_step(&mut self, conn: u64, cur: &mut Cursor<'_>) {
        let w = self.w;
        let Some(c) = self.conns.get(conn as usize) else {
            return;
        };
        let Some(domain) = c.outbound.clone() else {
            return;
        };
        let remote = w.remote(&domain);
        let key = &remote.signing;
        let hello = c.hello.clone().unwrap_or_default();
        let binding = c.binding.clone();
        let last = |kind: u32| c.peer_requests.iter().rev().find(|r| r.1 == kind).copied();
        let (last_relay, last_fetch) = (
            last(RQ_RELAY),
            last(RQ_FETCH_BUNDLES)
                .or(last(RQ_FETCH_LIST))
                .or(last(RQ_ORDER_GROUP)),
        );
        let nonce = [0x33u8; AUTH_NONCE_LEN];
        let step = cur.u8();
        let f = match step % 9 {
            0..=2 => {
                let variant = cur.u8() % 3;
                let shown = match variant {
                    1 => "six.example",
                    _ => domain.as_str(),
                };
                let sig = sign(
                    key,
                    Label::ChallengeSignature,
                    &[&hello, &nonce, shown.as_bytes(), &binding],
                );
                let sig = if variant == 2 {
                    sign(key, Label::AuthSignature, &[&hello])
                } else {
                    sig
                };
                if let Some(c) = self.conns.get_mut(conn as usize) {
                    c.challenge = Some(Bytes::copy_from_slice(&nonce));
                }
                challenge_frame(&nonce, shown, &remote.key.public().to_bytes(), &sig)
            }
            3 => welcome_frame(NOW.0),
            4 => {
                let (id, n) = last_relay.map_or_else(|| (u64::from(cur.u8()), 1), |r| (r.0, r.2));
                let codes = error_codes();
                let mut m = Msg::new();
                for _ in 0..n {
                    let b = cur.u8();
                    m = m.msg(
                        1,
                        if b & 1 == 0 {
                            Msg::new()
                        } else {
                            error_msg(
                                codes[usize::from(b >> 1) % codes.len()],
                                "",
                                b & 0x80 != 0,
                                RETRY_AFTER[usize::from(b) % RETRY_AFTER.len()],
                            )
                        },
                    );
                }
                if step & 0x80 != 0 {
                    // One result too many.
                    m = m.msg(1, Msg::new());
                }
                response_frame(id, Some((RS_RELAY_RESULT, m)))
            }
            5 => {
                let id = last_relay
                    .or(last_fetch)
                    .map_or_else(|| u64::from(cur.u8()), |r| r.0);
                let codes = error_codes();
                let b = cur.u8();
                response_frame(
                    id,
                    Some((
                        RS_ERROR,
                        error_msg(
                            codes[usize::from(b) % codes.len()],
                            "x",
                            b & 0x80 != 0,
                            RETRY_AFTER[usize::from(cur.u8()) % RETRY_AFTER.len()],
                        ),
                    )),
                )
            }
            6 | 7 => {
                let id = last_fetch.map_or_else(|| u64::from(cur.u8()), |r| r.0);
                let list = cur.pick::<Bytes>(&w.lists).clone();
                let body = match cur.u8() % 4 {
                    0 => (RS_DEVICE_LIST, Msg::new().bytes(1, &list)),
                    1 => (RS_DONE, Msg::new()),
                    3 => {
                        // A sequencer's answer: one of the changes peers relay.
                        let (_, change, _) = cur.pick(&w.group_items);
                        (RS_GROUP_CHANGE, Msg::new().bytes(1, change))
                    }
                    _ => {
                        let mask = cur.u8();
                        let mut m = Msg::new().bytes(1, &list);
                        for (i, b) in w.bundles.iter().enumerate() {
                            if mask & (1 << i) != 0 {
                                m = m.bytes(2, b);
                            }
                        }
                        (RS_BUNDLES, m)
                    }
                };
                response_frame(id, Some(body))
            }
            _ => response_frame(u64::from(cur.u8()), None),
        };
        self.send(conn, f);
    }

    /// Answers every relay the provider sent on `conn` with "stored" for each envelope.
    fn ack_relays(&mut self, conn: u64) {
        let relays: Vec<(u64, u32, usize)> = self.conns[conn as usize]
            .peer_requests
            .iter()
            .filter(|r| r.1 == RQ_RELAY)
            .copied()
            .collect();
        for (id, _, n) in relays {
            let m = (0..n).fold(Msg::new(), |m, _| m.msg(1, Msg::new()));
            self.send(conn, response_frame(id, Some((RS_RELAY_RESULT, m))));
        }
    }

    /// A recipient list `[mask, flags]`: the world's addresses 0-7 whose bit is set in
    /// `mask`; flags bit 0 repeats the first, 1 adds a garbage entry, 2 reverses the list, 3
    /// names `MAX_GROUP_RECIPIENTS + 1` users.
    fn recipients(&self, cur: &mut Cursor<'_>) -> Vec<String> {
        let w = self.w;
        let (mask, flags) = (cur.u8(), cur.u8());
        let mut list: Vec<String> = (0..8)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| w.addresses[i].clone())
            .collect();
        if flags & 1 != 0
            && let Some(first) = list.first().cloned()
        {
            list.push(first);
        }
        if flags & 2 != 0 {
            list.push(w.addresses[9].clone());
        }
        if flags & 4 != 0 {
            list.reverse();
        }
        if flags & 8 != 0 {
            list.extend(
                (0..=kogge::limits::MAX_GROUP_RECIPIENTS).map(|i| format!("u{i}@one.example")),
            );
        }
        list
    }

    /// A group request a device sends `[id, kind, which, edit, ..]`: kind `% 2` 0
    /// `SubmitGroup` (an envelope of the world, perhaps edited, and [`Self::recipients`]),
    /// 1 `OrderGroupChange` `[.., sequencer, requester]` (a change of the world, perhaps
    /// edited; sequencer from a list of domains; `edit` bit 6 adds a requester).
    fn group_request(&mut self, cur: &mut Cursor<'_>) -> Bytes {
        let w = self.w;
        let id = match cur.u8() {
            0xff => u64::MAX,
            b => u64::from(b % 16),
        };
        let kind = cur.u8();
        let edit = cur.u8();
        if kind & 1 == 0 {
            let e = cur.pick(&w.group_envelopes).clone();
            let e = if edit & 1 != 0 { edited(&e, cur) } else { e };
            self.submitted.insert((1, e.to_vec(), Vec::new()));
            let m = self
                .recipients(cur)
                .iter()
                .fold(Msg::new().bytes(1, &e), |m, r| m.str(2, r));
            request_frame(id, Some((RQ_SUBMIT_GROUP, m)))
        } else {
            let c = cur.pick(&w.group_changes).clone();
            let c = if edit & 1 != 0 { edited(&c, cur) } else { c };
            let sequencer = *cur.pick(&SEQUENCERS);
            let mut m = Msg::new().bytes(1, &c).str(2, sequencer);
            if edit & 0x40 != 0 {
                m = m.str(3, cur.pick::<String>(&w.requesters));
            }
            request_frame(id, Some((RQ_ORDER_GROUP, m)))
        }
    }

    /// What a peer provider sends about groups `[kind, ..]`, `kind % 3`: 0 a `Relay` of
    /// 1-3 group relays `[n, (item, edit, [edits], recipients)*]`; 1 the same after an
    /// envelope of the world; 2 a forwarded `OrderGroupChange` `[change, edit, [edits],
    /// sequencer, requester]`. Relayed items are remembered with the users named.
    fn peer_group_request(&mut self, cur: &mut Cursor<'_>) -> Bytes {
        let w = self.w;
        let id = u64::from(cur.u8() % 16);
        let kind = cur.u8() % 3;
        if kind == 2 {
            let c = cur.pick(&w.group_changes).clone();
            let c = if cur.u8() & 1 != 0 {
                edited(&c, cur)
            } else {
                c
            };
            let sequencer = *cur.pick(&SEQUENCERS);
            let requester = *cur.pick(&[
                "rita@two.example",
                "tom@three.example",
                "alice@one.example",
                "",
                "Rita@two.example",
            ]);
            let m = Msg::new().bytes(1, &c).str(2, sequencer).str(3, requester);
            return request_frame(id, Some((RQ_ORDER_GROUP, m)));
        }
        let mut m = Msg::new();
        if kind == 1 {
            m = m.bytes(1, cur.pick::<Bytes>(&w.envelopes));
        }
        for _ in 0..1 + cur.u8() % 3 {
            let (field, body, snapshot) = cur.pick(&w.group_items).clone();
            let body = if cur.u8() & 1 != 0 {
                edited(&body, cur)
            } else {
                body
            };
            let to = self.recipients(cur);
            self.relayed
                .entry((field, body.to_vec(), snapshot.to_vec()))
                .or_default()
                .extend(to.iter().cloned());
            let relay = to.iter().fold(
                Msg::new().msg(1, group_item_msg(field, &body, &snapshot)),
                |m, r| m.str(2, r),
            );
            m = m.msg(2, relay);
        }
        request_frame(id, Some((RQ_RELAY, m)))
    }

    /// Sends a request on `conn`; if it is answered with an error there and then, no
    /// durable state changed (SPEC.md 20.2, 20.3: the first failure changes nothing).
    fn send_checked(&mut self, conn: u64, f: Bytes) {
        let before = self
            .store
            .borrow()
            .clone()
            .load()
            .expect("a MemoryStore loads");
        let stats = self.p.stats();
        let injected = self.injected;
        self.responses.clear();
        self.send(conn, f);
        let refused = self
            .responses
            .iter()
            .any(|(c, _, n)| *c == conn && *n == RS_ERROR);
        if refused && injected == self.injected {
            let after = self
                .store
                .borrow()
                .clone()
                .load()
                .expect("a MemoryStore loads");
            assert!(before == after, "a refused group request changed the store");
            let s = self.p.stats();
            assert_eq!(
                (
                    stats.users,
                    stats.mailbox_items,
                    stats.outbound_items,
                    stats.dedup_entries
                ),
                (s.users, s.mailbox_items, s.outbound_items, s.dedup_entries),
                "a refused group request changed the provider's state"
            );
        }
    }

    /// Runs one operation; see [`provider_input`].
    fn op(&mut self, cur: &mut Cursor<'_>) {
        let w = self.w;
        match cur.u8() % 19 {
            0 => {
                let binding = match cur.u8() % 4 {
                    0 => Bytes::new(),
                    1 => Bytes::from_static(b"binding"),
                    2 => Bytes::from(vec![0xb1; 64]),
                    _ => Bytes::from(vec![0xb2; 65]),
                };
                self.connect_inbound(binding);
            }
            1 => {
                let conn = self.pick_conn(cur.u8());
                if let Some(c) = self.conns.get_mut(conn as usize) {
                    c.open = false;
                }
                self.input(ProviderInput::Closed {
                    conn: ConnectionId(conn),
                });
            }
            2 => {
                let conn = self.pick_conn(cur.u8());
                let len = usize::from(cur.u16() % 2048);
                let bytes = Bytes::copy_from_slice(cur.take(len));
                self.send(conn, bytes);
            }
            3 => {
                let conn = self.pick_conn(cur.u8());
                let role = u64::from(cur.u8() % 3);
                let variant = cur.u8();
                self.hello(conn, role, variant);
            }
            4 => {
                let conn = self.pick_conn(cur.u8());
                let dev = usize::from(cur.u8());
                let variant = cur.u8();
                self.auth_device(conn, dev, variant);
            }
            5 => {
                // A new connection, signed in as a device, in one step.
                let dev = usize::from(cur.u8()) % w.devs.len();
                let flags = cur.u8();
                let conn = self.connect_inbound(Bytes::from_static(b"binding"));
                self.login(conn, dev, flags & 1 != 0);
            }
            6 => {
                let conn = self.pick_conn(cur.u8());
                let f = self.request(cur);
                self.send(conn, f);
            }
            7 if self.deferred => {
                let how = cur.u8();
                self.complete(how);
            }
            7 => {
                let n = u32::from(cur.u8() % 3) + 1;
                self.injected += n;
                self.store.borrow_mut().fail_next_commits(n);
            }
            8 => {
                let ms = time_step(cur.u8());
                self.advance(ms);
            }
            9 => {
                let conn = self.pick_conn(cur.u8());
                let mode = cur.u8();
                let delivered = self
                    .conns
                    .get(conn as usize)
                    .map(|c| c.delivered.clone())
                    .unwrap_or_default();
                let seqs: Vec<u64> = match mode % 4 {
                    0 => delivered,
                    1 => delivered.into_iter().take(1).collect(),
                    2 => vec![u64::from(cur.u8()), u64::MAX],
                    _ => (0..u64::from(cur.u8())).collect(),
                };
                self.send(conn, deliver_ack_frame(&seqs));
            }
            10 => {
                let variant = cur.u8();
                let domain = if self.connects.is_empty() {
                    cur.pick(&w.domains()).clone()
                } else {
                    let i = usize::from(cur.u8()) % self.connects.len();
                    self.connects.remove(i)
                };
                let key = w.remote(&domain).key.public();
                match variant % 4 {
                    0 => {
                        self.connect_outbound(domain, key, Bytes::from_static(b"out"));
                    }
                    1 => {
                        let wrong = w.remotes[(variant as usize / 4) % 3].key.public();
                        self.connect_outbound(domain, wrong, Bytes::new());
                    }
                    2 => self.input(ProviderInput::ConnectFailed { domain }),
                    _ => {
                        self.connect_outbound(domain, key, Bytes::from(vec![0; 65]));
                    }
                }
            }
            11 => {
                let variant = cur.u8();
                let domain = if self.resolves.is_empty() {
                    cur.pick(&w.domains()).clone()
                } else {
                    let i = usize::from(cur.u8()) % self.resolves.len();
                    self.resolves.remove(i)
                };
                let key = match variant % 3 {
                    0 => Some(w.remote(&domain).key.public()),
                    1 => Some(w.public),
                    _ => None,
                };
                self.input(ProviderInput::Resolved { domain, key });
            }
            12 => {
                let conn = self.pick_conn(cur.u8());
                let domain = *cur.pick(&[
                    "two.example",
                    "three.example",
                    "four.example",
                    HOME,
                    "Two.example",
                ]);
                let variant = cur.u8();
                self.peer_login(conn, domain, variant);
            }
            13 => {
                if let Some(conn) = self.pick_outbound(cur.u8()) {
                    self.outbound_step(conn, cur);
                }
            }
            14 => {
                let conn = self.pick_conn(cur.u8());
                if !self.frames.is_empty() {
                    let base = self.frames[usize::from(cur.u8()) % self.frames.len()].clone();
                    let f = edited(&base, cur);
                    self.send(conn, f);
                }
            }
            15 => {
                // A connection signed in as a device sends one request at once.
                let dev = usize::from(cur.u8()) % w.devs.len();
                let conn = self.connect_inbound(Bytes::new());
                self.login(conn, dev, false);
                let f = self.request(cur);
                self.send(conn, f);
            }
            16 => {
                let conn = self.pick_conn(cur.u8());
                let f = self.group_request(cur);
                self.send_checked(conn, f);
            }
            17 => {
                // A peer's group input, on a new connection signed in as two.example or
                // three.example (`how` bit 0) or an existing one.
                let how = cur.u8();
                let conn = if how & 1 != 0 {
                    let conn = self.connect_inbound(Bytes::new());
                    let domain = if how & 2 == 0 {
                        "two.example"
                    } else {
                        "three.example"
                    };
                    self.peer_login(conn, domain, 2);
                    conn
                } else {
                    self.pick_conn(cur.u8())
                };
                let f = self.peer_group_request(cur);
                self.send_checked(conn, f);
            }
            _ => {
                // A connection signed in as a device makes one group request at once.
                let dev = usize::from(cur.u8()) % w.devs.len();
                let conn = self.connect_inbound(Bytes::new());
                self.login(conn, dev, false);
                let f = self.group_request(cur);
                self.send_checked(conn, f);
            }
        }
    }

    /// Deferred commits: answers the outstanding batch as `how % 4` says: 0 applied to
    /// the store, `Ok`; 1 not applied, `Err`; 2 applied, `Err` (a disk whose final flush
    /// failed cannot say whether the batch landed: the provider must reload); 3 an answer
    /// for another id (the next, the previous, `u64::MAX`: `how / 4 % 3`), `Err` if
    /// `how & 0x40`, which changes nothing. Without an outstanding batch every `how` is
    /// such a stale answer.
    fn complete(&mut self, how: u8) {
        let Some(batch) = self.batch.take() else {
            let last = self.batch_ids.iter().copied().max().unwrap_or(0);
            self.stale_answer(last.wrapping_add(u64::from(how / 4 % 3)), how);
            return;
        };
        if how % 4 == 3 {
            let id = match how / 4 % 3 {
                0 => batch.id.wrapping_add(1),
                1 => batch.id.wrapping_sub(1),
                _ => u64::MAX,
            };
            let id = if id == batch.id {
                id.wrapping_add(1)
            } else {
                id
            };
            self.batch = Some(batch);
            self.stale_answer(id, how);
            return;
        }
        if how % 4 != 1 {
            self.store
                .borrow_mut()
                .commit(&batch.ops)
                .expect("the harness's MemoryStore commits");
        }
        if how.is_multiple_of(4) {
            self.epoch_durable |= batch.ops.iter().any(|o| {
                matches!(o, StoreOp::Put { table: Table::Meta, key, .. }
                    if key.as_ref() == b"seq_epoch")
            });
            self.input(ProviderInput::Committed {
                id: batch.id,
                result: Ok(()),
            });
            return;
        }
        self.epoch_durable = false;
        self.injected += 1;
        let n = self.conns.len() as u64;
        self.failed_before = Some(n);
        let failures = self.storage_failures;
        self.input(ProviderInput::Committed {
            id: batch.id,
            result: Err(StoreError("failed by the harness".into())),
        });
        self.failed_before = None;
        assert_eq!(
            self.storage_failures,
            failures + 1,
            "a failed batch was not reported"
        );
        // The provider starts afresh: every connection it had is closed, those it had
        // let go already (their `Close` waiting with the batch) included.
        if let Some(i) = self.conns.iter().position(|c| c.open) {
            assert!(
                i as u64 >= n,
                "conn#{i} still open after a failed batch closed all connections"
            );
        }
    }

    /// An answer for batch `id`, which is not outstanding: nothing may change.
    fn stale_answer(&mut self, id: u64, how: u8) {
        let (stats, outstanding) = (self.p.stats(), self.p.commit_outstanding());
        let result = if how & 0x40 != 0 {
            Err(StoreError("stale".into()))
        } else {
            Ok(())
        };
        trace!("input: Committed {{ id: {id}, result: {result:?} }} (not outstanding)");
        self.p
            .handle_input(self.now, ProviderInput::Committed { id, result });
        match self.p.poll_output(self.now) {
            ProviderOutput::Timeout(_) => {}
            other => panic!("an answer for batch {id}, not outstanding, made {other:?}"),
        }
        assert_eq!(
            (self.p.stats(), self.p.commit_outstanding()),
            (stats, outstanding),
            "an answer for batch {id}, not outstanding, changed the provider"
        );
    }

    /// Deferred commits: applies and answers batches until none is outstanding.
    fn settle(&mut self) {
        for _ in 0..MAX_OUTPUTS {
            if self.batch.is_none() {
                return;
            }
            self.complete(0);
        }
        panic!("batches kept coming");
    }

    /// A provider restarted from what is durable agrees with this one. Deletions that may
    /// wait (acknowledged mailbox items, queue entries the next hop acknowledged; SPEC.md
    /// 16.12 rule 4) are not durable until the next commit, so a provider restarted before
    /// it holds those items again (it sends them again and receivers deduplicate), never
    /// fewer; once they are committed it agrees exactly.
    fn check_restart(&mut self) {
        let durable = |s: kogge::provider::ProviderStats| {
            (
                s.users,
                s.mailbox_items,
                s.max_mailbox_depth,
                s.outbound_items,
                s.max_remote_queue_depth,
                s.dedup_entries,
            )
        };
        let (a, b) = (self.p.stats(), self.restarted().stats());
        assert_eq!(
            (a.users, a.dedup_entries),
            (b.users, b.dedup_entries),
            "the restarted provider's users or dedup memory differ from the running one's"
        );
        assert!(
            b.mailbox_items >= a.mailbox_items
                && b.outbound_items >= a.outbound_items
                && b.max_mailbox_depth >= a.max_mailbox_depth
                && b.max_remote_queue_depth >= a.max_remote_queue_depth,
            "the restarted provider holds less than the running one: {a:?} / {b:?}"
        );
        self.p.flush();
        for _ in 0..MAX_OUTPUTS {
            match self.p.poll_output(self.now) {
                ProviderOutput::Timeout(_) => break,
                ProviderOutput::Commit(b) => {
                    self.store
                        .borrow_mut()
                        .commit(&b.ops)
                        .expect("the harness's MemoryStore commits");
                    let done = ProviderInput::Committed {
                        id: b.id,
                        result: Ok(()),
                    };
                    self.p.handle_input(self.now, done);
                }
                _ => {}
            }
        }
        assert_eq!(
            durable(self.p.stats()),
            durable(self.restarted().stats()),
            "after a flush, the restarted provider's state differs from the running one's"
        );
    }

    /// A provider started from this one's store, its load checked.
    fn restarted(&self) -> Provider<MemoryStore, ChaCha20Rng> {
        let store = self.store.borrow().clone();
        let mut config = ProviderConfig::new(self.w.domain.clone(), self.w.key());
        config.limits = self.limits;
        let mut p =
            Provider::new(config, store, seeded(0x61), self.now).expect("a MemoryStore loads");
        let mut corrupt = None;
        for _ in 0..MAX_OUTPUTS {
            match p.poll_output(self.now) {
                ProviderOutput::Timeout(_) => break,
                ProviderOutput::Event(ProviderEvent::CorruptRecords(n)) => corrupt = Some(n),
                _ => {}
            }
        }
        assert!(
            corrupt <= self.corrupt_reported,
            "after a restart {corrupt:?} corrupt records, {:?} at the start",
            self.corrupt_reported
        );
        p
    }
}

/// The provider's store at the start of every `provider_input` run and the base of
/// `provider_store_load`: alice (two devices) and bob registered with prekeys published,
/// a one-time prekey handed out, bob's mailbox holding an envelope, alice1's holding an
/// `Undeliverable` notice (a relay to two.example refused for good), an envelope queued
/// for three.example, dedup entries and counters; the group G1 (see [`ProviderGroups`])
/// ordered at epoch 0, its creating change in the mailboxes of alice1, alice2 and bob1
/// and queued as group relays for two.example and three.example.
fn base_store() -> &'static MemoryStore {
    static BASE: LazyLock<MemoryStore> = LazyLock::new(|| {
        let w = provider_world();
        let mut run = PRun::new(w, MemoryStore::new(), P_OPEN_REGISTRATION, false);
        // One one-time prekey each: every stored prekey costs a signature check per load.
        let publish = |run: &mut PRun<'_>, conn: u64, dev: usize, id: u64| {
            let (signed, kem, otk) = &w.devs[dev].prekeys[0];
            let m = otk[..1]
                .iter()
                .fold(Msg::new().bytes(1, signed).bytes(2, kem), |m, k| {
                    m.bytes(3, k)
                });
            run.send(conn, request_frame(id, Some((RQ_PUBLISH_PREKEYS, m))));
        };
        let a2 = run.connect_inbound(Bytes::new());
        run.login(a2, ALICE2, true);
        publish(&mut run, a2, ALICE2, 1);
        let a1 = run.connect_inbound(Bytes::new());
        run.login(a1, ALICE1, false);
        publish(&mut run, a1, ALICE1, 1);
        let b1 = run.connect_inbound(Bytes::new());
        run.login(b1, BOB1, true);
        publish(&mut run, b1, BOB1, 1);
        // alice1 -> bob1 (local) and -> rita (two.example).
        let envs = envelopes_msg(&[w.envelopes[0].clone(), w.envelopes[3].clone()]);
        run.send(a1, request_frame(2, Some((RQ_SUBMIT, envs))));
        // bob fetches alice's bundles: one one-time prekey is handed out.
        run.send(
            b1,
            request_frame(
                2,
                Some((RQ_FETCH_BUNDLES, Msg::new().str(1, "alice@one.example"))),
            ),
        );
        // two.example refuses the relay for good: a notice for alice1.
        let two = w.remotes[0].domain.clone();
        let out = run.connect_outbound(two.clone(), w.remotes[0].key.public(), Bytes::new());
        // Challenge, welcome, and the relay refused with `not_yours` (not retryable).
        let not_yours = error_codes()
            .iter()
            .position(|c| *c == "not_yours")
            .unwrap_or(0) as u8;
        let steps = [0, 0, 3, 4, (not_yours << 1) | 1, 1];
        let mut steps = Cursor::new(&steps);
        run.outbound_step(out, &mut steps);
        run.outbound_step(out, &mut steps);
        run.outbound_step(out, &mut steps);
        // alice1 -> tom (three.example): stays queued.
        run.send(
            a1,
            request_frame(
                3,
                Some((RQ_SUBMIT, envelopes_msg(&[w.envelopes[4].clone()]))),
            ),
        );
        // alice1 creates G1 (this provider its sequencer): a stored group, its creating
        // change in the mailboxes of alice's and bob's devices and queued for two.example
        // (rita) and three.example (tom).
        run.send(
            a1,
            request_frame(
                4,
                Some((
                    RQ_ORDER_GROUP,
                    Msg::new().bytes(1, &w.group_changes[0]).str(2, HOME),
                )),
            ),
        );
        for conn in [a2, a1, b1, out] {
            run.conns[conn as usize].open = false;
            run.input(ProviderInput::Closed {
                conn: ConnectionId(conn),
            });
        }
        let store = run.store.borrow().clone();
        for t in [
            Table::Users,
            Table::Prekeys,
            Table::OneTime,
            Table::Mailbox,
            Table::Outbound,
            Table::Dedup,
            Table::Meta,
            Table::Groups,
        ] {
            assert!(store.len(t) > 0, "the base store has no {} rows", t.name());
        }
        store
    });
    &BASE
}

/// `provider_input`: a provider (`one.example`) driven by a program. The first byte is
/// flags: 1 open registration, 2 tiny limits (mailbox and queue depth 2, small rate
/// buckets), 4 start from an empty store instead of [`base_store`], 8 deferred commits
/// (`Provider::defer_commits`: the harness holds the batch until an operation 7 answers
/// it, and answers what is left at the end). Then up to
/// [`MAX_OPS`] operations, opcode `% 19`:
///
/// 0 connect inbound `[binding]`; 1 close `[conn]`; 2 raw frame `[conn, len u16, bytes]`;
/// 3 hello `[conn, role, variant]`; 4 auth as a device `[conn, device, variant]`; 5 new
/// connection signed in as a device `[device, flags]`; 6 request `[conn, id, kind, ..]`;
/// 7 fail the next commits `[n]` (deferred: answer the batch `[how]`, see
/// [`PRun::complete`]); 8 advance time and run timers `[step]`; 9 deliver ack
/// `[conn, mode, ..]`; 10 answer a `Connect` `[variant, which]`; 11 answer a `Resolve`
/// `[variant, which]`; 12 sign in as a provider `[conn, domain, variant]`; 13 the remote
/// side of an outbound connection `[conn, step, ..]`; 14 resend an earlier frame with
/// edits `[conn, which, n, edits]`; 15 a new device connection making one request; 16
/// a group request `[conn, ..]` (`SubmitGroup` or `OrderGroupChange`, see
/// [`PRun::group_request`]); 17 a peer's group input `[how, (conn), ..]` (a `Relay` with
/// `groups` or a forwarded `OrderGroupChange`, see [`PRun::peer_group_request`]); 18 a new
/// device connection making one group request `[device, ..]`.
///
/// Beyond [`PRun`]'s invariants, for groups: a group request answered with an error at
/// once changed neither the store nor the stats; this provider never countersigns two
/// different changes of one group and epoch (its `GroupChangeOrdered` answers, and the
/// base store's G1 creation); a relayed group item is delivered only to users some relay
/// of it named; relays and forwarded changes leave only for the right provider.
///
/// A connection byte picks recent connections first; `0xff` picks one never opened. See
/// [`PRun`] for the invariants.
pub fn provider_input(data: &[u8]) {
    let w = provider_world();
    let mut cur = Cursor::new(data);
    let flags = cur.u8();
    let store = if flags & P_EMPTY_STORE != 0 {
        MemoryStore::new()
    } else {
        base_store().clone()
    };
    let mut run = PRun::new(w, store, flags, false);
    if flags & P_EMPTY_STORE == 0 {
        for (g, e, h) in &w.base_ordered {
            run.ordered.insert((*g, *e), *h);
        }
    }
    let mut ops = 0;
    while !cur.done() && ops < MAX_OPS {
        run.op(&mut cur);
        ops += 1;
    }
    run.settle();
    run.check_restart();
}

// ---------------------------------------------------------------------------------------
// provider_store_load
// ---------------------------------------------------------------------------------------

const TABLES: [Table; 8] = [
    Table::Users,
    Table::Prekeys,
    Table::OneTime,
    Table::Mailbox,
    Table::Outbound,
    Table::Dedup,
    Table::Meta,
    Table::Groups,
];

type Row = (Table, Bytes, Bytes);

fn base_rows() -> &'static [Row] {
    static ROWS: LazyLock<Vec<Row>> = LazyLock::new(|| {
        let mut s = base_store().clone();
        let contents = s.load().expect("a MemoryStore loads");
        contents
            .into_iter()
            .flat_map(|(t, rows)| rows.into_iter().map(move |(k, v)| (t, k, v)))
            .collect()
    });
    &ROWS
}

/// `provider_store_load`: [`Provider::new`] over a store with arbitrary rows, then a
/// drive. The first byte selects the mode (`% 2`):
///
/// * 0: rows `[table, key_len, key, value_len u16, value]*` (table `% 8`, in the order of
///   `Table`: users, prekeys, one-time, mailbox, outbound, dedup, meta, groups).
/// * 1: the rows of [`base_store`] after edits `[op, ..]*`, op `% 6`: 0 delete a row
///   `[row]`; 1 edit a value `[row, n, edits]`; 2 edit a key `[row, n, edits]`; 3 move a
///   row to another table `[row, table]`; 4 add a raw row as in mode 0; 5 append to a
///   value a bytes field (number `field % 4`) of `len * 1024 + 1` bytes `[row, field,
///   len]`, which replaces an envelope (oversized records).
///
/// Invariants: `Provider::new` neither panics nor fails on a store that loads; corrupt
/// records are reported once, as a count no larger than the rows; users, mailbox items,
/// queued envelopes and dedup entries are no more than their rows (and with the
/// corrupt count, no more than all rows); the unedited base store has no corrupt record.
/// Then the provider is driven: it connects to the domains it has queues for (the
/// harness completes the handshake and acknowledges the relays), alice's and bob's
/// devices sign in and acknowledge what is delivered, and time runs past every expiry.
/// Every frame must pass `check_frame` (see [`PRun`]; routing checks are off, since the
/// rows may lie about their keys), and a restart from the store agrees with the
/// running provider.
pub fn provider_store_load(data: &[u8]) {
    let w = provider_world();
    let (&mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let mut cur = Cursor::new(rest);
    let mut rows: Vec<Row> = Vec::new();
    let raw_row = |cur: &mut Cursor<'_>| {
        let table = *cur.pick(&TABLES);
        let klen = usize::from(cur.u8());
        let key = Bytes::copy_from_slice(cur.take(klen));
        let vlen = usize::from(cur.u16() % 4096);
        let value = Bytes::copy_from_slice(cur.take(vlen));
        (table, key, value)
    };
    let edited_base = mode % 2 == 1;
    let mut edits = 0;
    if edited_base {
        rows = base_rows().to_vec();
        while !cur.done() && edits < MAX_OPS {
            edits += 1;
            let op = cur.u8() % 6;
            if op == 4 || rows.is_empty() {
                rows.push(raw_row(&mut cur));
                continue;
            }
            let i = usize::from(cur.u8()) % rows.len();
            match op {
                0 => {
                    rows.remove(i);
                }
                1 => rows[i].2 = edited(&rows[i].2.clone(), &mut cur),
                2 => rows[i].1 = edited(&rows[i].1.clone(), &mut cur),
                3 => rows[i].0 = *cur.pick(&TABLES),
                _ => {
                    let field = u32::from(cur.u8() % 4);
                    let len = usize::from(cur.u8()) * 1024 + 1;
                    let tail = Msg::new().bytes(field.max(1), &vec![0x61; len]);
                    rows[i].2 = Bytes::from([&rows[i].2[..], &tail.0[..]].concat());
                }
            }
        }
    } else {
        while !cur.done() {
            rows.push(raw_row(&mut cur));
        }
    }
    let mut store = MemoryStore::new();
    let ops: Vec<StoreOp> = rows
        .iter()
        .map(|(table, key, value)| StoreOp::Put {
            table: *table,
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    store.commit(&ops).expect("a MemoryStore commits");
    let count = |t: Table| store.len(t);
    let (users, mailbox, outbound, dedup) = (
        count(Table::Users),
        count(Table::Mailbox),
        count(Table::Outbound),
        count(Table::Dedup),
    );
    let total: usize = TABLES.iter().map(|t| count(*t)).sum();

    let mut run = PRun::new(w, store, 0, true);
    let corrupt = run.corrupt_reported.unwrap_or(0);
    assert!(corrupt <= total, "{corrupt} corrupt records of {total}");
    if edited_base && edits == 0 {
        assert_eq!(corrupt, 0, "the base store has corrupt records");
    }
    let s = run.p.stats();
    assert!(s.users <= users && s.mailbox_items <= mailbox);
    assert!(s.outbound_items <= outbound && s.dedup_entries <= dedup);
    assert!(
        s.users + s.mailbox_items + s.outbound_items + s.dedup_entries + corrupt <= total,
        "more loaded and corrupt than rows: {s:?}, {corrupt} corrupt, {total} rows"
    );

    // Federation: complete every connection the provider asks for, acknowledge relays.
    for _ in 0..4 {
        let connects = std::mem::take(&mut run.connects);
        for domain in connects {
            let key = w.remote(&domain).key.public();
            let conn = run.connect_outbound(domain, key, Bytes::new());
            let mut steps = Cursor::new(&[0, 0, 3]);
            run.outbound_step(conn, &mut steps);
            run.outbound_step(conn, &mut steps);
            run.ack_relays(conn);
        }
    }
    // Devices sign in and acknowledge what they get.
    for dev in [ALICE1, ALICE2, BOB1] {
        let conn = run.connect_inbound(Bytes::new());
        run.login(conn, dev, false);
        let seqs = run.conns[conn as usize].delivered.clone();
        if !seqs.is_empty() {
            let chunk: Vec<u64> = seqs.into_iter().take(MAX_ACK_SEQS).collect();
            run.send(conn, deliver_ack_frame(&chunk));
        }
    }
    for step in [60_000, RELAY_EXPIRY_MS + 1, 400 * DAY] {
        run.advance(step);
    }
    run.check_restart();
}

// ---------------------------------------------------------------------------------------
// The client world.
// ---------------------------------------------------------------------------------------

/// Everything `client_input` needs, built once.
pub struct ClientWorld {
    /// Bob's provider (the client's).
    pub provider: Domain,
    /// Its key pair (the harness answers challenges with it) and another one.
    pub provider_key: ProviderKeyPair,
    /// A key that is not the provider's.
    pub wrong_key: ProviderKeyPair,
    /// Both as signing keys.
    pub provider_signing: SigningKey,
    /// See `provider_signing`.
    pub wrong_signing: SigningKey,
    /// Bob's saved account: device bob1, his list (one device), alice's list as a
    /// contact, 22 one-time prekeys.
    pub bob_blob: Vec<u8>,
    /// Bob's device certificate, as his `Auth` must carry it.
    pub bob_cert: Bytes,
    /// Bob's device signing key (public), to check his `Auth`.
    pub bob_verifying: ed25519_dalek::VerifyingKey,
    /// Bob's address.
    pub bob: Address,
    /// Signed device lists: alice v1, alice v2, alice under a new identity, bob v1,
    /// bob v2 (with bob2), carol, and garbage.
    pub lists: Vec<Bytes>,
    /// Encoded prekey bundles: alice1 with and without a one-time prekey, alice2,
    /// bob2, carol1.
    pub bundles: Vec<Bytes>,
    /// Envelopes to bob1: alice's session messages a1 (setup) to a3 and a receipt,
    /// one-shot ones from alice, carol (unknown to Bob), bob2 (his own new device), and
    /// one for bob2.
    pub envelopes: Vec<Bytes>,
    /// What each decryptable envelope carries: message id -> (sender, content).
    pub honest: HashMap<MessageId, (Address, Content)>,
    /// Addresses Bob sends to.
    pub addresses: Vec<Address>,
    /// The device list and bundles the "right answer" gives per address.
    pub directory: HashMap<Address, (Bytes, Vec<Bytes>)>,
    /// Another identity key for alice (to mark as verified: a mismatch).
    pub alice_other_identity: kogge::identity::IdentityKey,
    /// Group items for Bob's mailbox (ordered by his provider, two.example): 0 alice
    /// creates CG1 with bob; 1 alice adds carol to CG1 (epoch 1); 2 carol creates CG2
    /// with alice (not bob); 3 carol adds bob to CG2, with the snapshot (a join); 4 the
    /// same without it (waits); 5 CG1's creation countersigned by another key; 6 CG1's
    /// epoch 1 without a countersignature; 7-9 alice's CG1 messages at positions 0-2; 10
    /// carol's CG2 message; 11 alice's CG1 message with a snapshot.
    pub group_items: Vec<GItem>,
    /// alice's session message to Bob carrying her CG1 sender key (position 0).
    pub key_envelopes: Vec<Bytes>,
    /// What each honest group message carries: message id -> (sender, content).
    pub group_honest: HashMap<MessageId, (Address, Content)>,
}

/// The application key Bob's state is saved under.
fn client_storage_key() -> Secret<32> {
    Secret::new([0x5b; 32])
}

fn client_world() -> &'static ClientWorld {
    static WORLD: LazyLock<ClientWorld> = LazyLock::new(build_client_world);
    &WORLD
}

fn build_client_world() -> ClientWorld {
    let addr = |s: &str| Address::parse(s).expect("fixed address");
    let (alice, bob, carol) = (
        addr("alice@one.example"),
        addr("bob@two.example"),
        addr("carol@three.example"),
    );
    let ida = IdentityKeyPair::generate(&mut seeded(0x81));
    let ida2 = IdentityKeyPair::generate(&mut seeded(0x82));
    let idb = IdentityKeyPair::generate(&mut seeded(0x83));
    let idc = IdentityKeyPair::generate(&mut seeded(0x84));
    let alice1 = new_device(&ida, &alice, 0x91);
    let alice2 = new_device(&ida, &alice, 0x92);
    let alice3 = new_device(&ida2, &alice, 0x93);
    let bob1 = new_device(&idb, &bob, 0x94);
    let bob2 = new_device(&idb, &bob, 0x95);
    let carol1 = new_device(&idc, &carol, 0x96);
    let dl = |id: &IdentityKeyPair, a: &Address, serial, devs: &[&Device]| {
        let certs: Vec<_> = devs.iter().map(|d| d.certificate().clone()).collect();
        DeviceList::sign(id, a, serial, NOW, &certs).expect("list signs")
    };
    let alice_v1 = dl(&ida, &alice, 1, &[&alice1]);
    let alice_v2 = dl(&ida, &alice, 2, &[&alice1, &alice2]);
    let alice_new = dl(&ida2, &alice, 1, &[&alice3]);
    let bob_v1 = dl(&idb, &bob, 1, &[&bob1]);
    let bob_v2 = dl(&idb, &bob, 2, &[&bob1, &bob2]);
    let carol_v1 = dl(&idc, &carol, 1, &[&carol1]);
    let bob_cert = bob1.certificate().encoded().clone();
    let bob_verifying = device_signing(&bob1).verifying_key();

    let mut rng = seeded(0xa0);
    let mut bob_acc = Account::new(bob1, bob_v1.clone(), NOW, &mut rng).expect("account");
    bob_acc.mint_one_time_prekeys(22, NOW, &mut rng);
    bob_acc
        .update_device_list(alice_v1.clone())
        .expect("contact");
    let bob_blob = bob_acc.save(&client_storage_key(), &mut seeded(0xa1));
    let bob_otk = bob_acc.prekeys().published().one_time_prekeys[0].id();
    let bob_bundle_otk = bob_acc.prekey_bundle(Some(bob_otk)).expect("own bundle");
    let bob_bundle = bob_acc.prekey_bundle(None).expect("own bundle");

    let account = |d: Device, l: &DeviceList, seed: u8| {
        let mut rng = seeded(seed);
        let mut a = Account::new(d, l.clone(), NOW, &mut rng).expect("account");
        a.mint_one_time_prekeys(2, NOW, &mut rng);
        a
    };
    let mut alice_acc = account(alice1, &alice_v1, 0xa2);
    let alice2_acc = account(alice2, &alice_v2, 0xa3);
    let bob2_acc = account(bob2, &bob_v2, 0xa4);
    let mut carol_acc = account(carol1, &carol_v1, 0xa5);
    let bundle = |a: &Account, otk: bool| {
        let id = otk.then(|| a.prekeys().published().one_time_prekeys[0].id());
        a.prekey_bundle(id).expect("own bundle").encode()
    };
    let bundles = vec![
        bundle(&alice_acc, true),
        bundle(&alice_acc, false),
        bundle(&alice2_acc, true),
        bundle(&bob2_acc, true),
        bundle(&carol_acc, false),
    ];

    let mut honest = HashMap::new();
    let text = |s: &str| Content::Text(Text::plain(s));
    let mut envelopes = Vec::new();
    // alice's session: a1 (setup with a one-time prekey), a2, a3, a receipt.
    alice_acc
        .update_device_list(bob_v1.clone())
        .expect("bob's list");
    alice_acc
        .add_bundle(&bob_bundle_otk, NOW, &mut seeded(0xb0))
        .expect("alice starts a session");
    for (i, content) in [
        text("a1"),
        text("a2"),
        text("a3 with ünïcødé"),
        Content::Receipt(Receipt {
            kind: ReceiptKind::Read,
            message_ids: vec![MessageId::from_bytes([9; 16])],
        }),
    ]
    .into_iter()
    .enumerate()
    {
        let sent = alice_acc
            .encrypt(&bob, &content, NOW, &mut seeded(0xb1 + i as u8))
            .expect("alice encrypts");
        let e = sent.envelopes[0].envelope.clone();
        if matches!(content, Content::Text(_)) {
            honest.insert(sent.message_id, (alice.clone(), content));
        }
        envelopes.push(e);
    }
    // carol, unknown to Bob: a session message (setup without a one-time prekey).
    carol_acc
        .update_device_list(bob_v1.clone())
        .expect("bob's list");
    carol_acc
        .add_bundle(&bob_bundle, NOW, &mut seeded(0xb8))
        .expect("carol starts a session");
    let sent = carol_acc
        .encrypt(&bob, &text("c1"), NOW, &mut seeded(0xb9))
        .expect("carol encrypts");
    honest.insert(sent.message_id, (carol.clone(), text("c1")));
    envelopes.push(sent.envelopes[0].envelope.clone());
    // One-shot: alice1, bob2 (Bob's new device), and one for bob2.
    let bob1_cert = kogge::identity::DeviceCertificate::decode(bob_cert.clone()).expect("cert");
    for (from, body, n) in [
        (alice_acc.device(), "one-shot from alice", 0xc0u8),
        (bob2_acc.device(), "from bob's other device", 0xc1),
    ] {
        let content = text(body);
        let e = envelope::seal(
            from,
            &Outgoing {
                recipient: &bob1_cert,
                message_id: MessageId::from_bytes([n; 16]),
                timestamp: NOW,
                content: &content,
            },
            &mut seeded(n),
        )
        .expect("seals");
        honest.insert(
            MessageId::from_bytes([n; 16]),
            (from.address().clone(), content),
        );
        envelopes.push(e);
    }
    envelopes.push(
        envelope::seal(
            alice_acc.device(),
            &Outgoing {
                recipient: bob2_acc.device().certificate(),
                message_id: MessageId::from_bytes([0xc2; 16]),
                timestamp: NOW,
                content: &text("for bob2"),
            },
            &mut seeded(0xc2),
        )
        .expect("seals"),
    );

    // Groups, ordered by Bob's provider.
    let provider_key = ProviderKeyPair::generate(&mut seeded(0xd0));
    let wrong_key = ProviderKeyPair::generate(&mut seeded(0xd1));
    let seq = Sequencer {
        domain: Domain::parse("two.example").expect("fixed domain"),
        key: provider_key.public(),
    };
    let gm = |d: &Device| group_member(d, GroupRole::Member);
    let cg1c0 = GroupState::create_change(
        alice_acc.device(),
        [4; 16],
        "cg1".into(),
        seq.clone(),
        vec![gm(bob_acc.device())],
        NOW,
    )
    .expect("cg1");
    let cg1c0s = cg1c0.sequence(&provider_key);
    let cg1s0 = GroupState::create(&cg1c0s).expect("cg1 state");
    let cg1c1 = cg1s0
        .change(
            alice_acc.device(),
            GroupAction::Add(vec![gm(carol_acc.device())]),
            NOW,
        )
        .expect("cg1 adds carol");
    let cg2c0s = GroupState::create_change(
        carol_acc.device(),
        [5; 16],
        "cg2".into(),
        seq,
        vec![gm(alice_acc.device())],
        NOW,
    )
    .expect("cg2")
    .sequence(&provider_key);
    let cg2s0 = GroupState::create(&cg2c0s).expect("cg2 state");
    let cg2c1s = cg2s0
        .change(
            carol_acc.device(),
            GroupAction::Add(vec![gm(bob_acc.device())]),
            NOW,
        )
        .expect("cg2 adds bob")
        .sequence(&provider_key);
    let mut sender =
        GroupSender::new(&cg1s0, alice_acc.device(), 1, &mut seeded(0xd2)).expect("alice sends");
    let alice_key = sender.sender_key().clone();
    let mut group_honest = HashMap::new();
    let mut alice_msgs = Vec::new();
    for i in 0..3u8 {
        let id = MessageId::from_bytes([0xe0 + i; 16]);
        let content = text(&format!("group message {i}"));
        alice_msgs.push(
            sender
                .seal(alice_acc.device(), &cg1s0, &content, id, NOW)
                .expect("seals"),
        );
        group_honest.insert(id, (alice.clone(), content));
    }
    let carol_msg = seal_two(carol_acc.device(), &cg2s0, 0xd3).remove(0);
    let empty = Bytes::new;
    let group_items: Vec<GItem> = vec![
        (2, cg1c0s.encoded().clone(), empty()),
        (2, cg1c1.sequence(&provider_key).encoded().clone(), empty()),
        (2, cg2c0s.encoded().clone(), empty()),
        (2, cg2c1s.encoded().clone(), cg2s0.to_snapshot()),
        (2, cg2c1s.encoded().clone(), empty()),
        (2, cg1c0.sequence(&wrong_key).encoded().clone(), empty()),
        (2, cg1c1.encoded().clone(), empty()),
        (1, alice_msgs[0].clone(), empty()),
        (1, alice_msgs[1].clone(), empty()),
        (1, alice_msgs[2].clone(), empty()),
        (1, carol_msg, empty()),
        (1, alice_msgs[0].clone(), cg1s0.to_snapshot()),
    ];
    let key_envelopes = vec![
        alice_acc
            .encrypt(
                &bob,
                &Content::GroupSenderKey(Box::new(alice_key)),
                NOW,
                &mut seeded(0xd4),
            )
            .expect("alice sends her sender key")
            .envelopes[0]
            .envelope
            .clone(),
    ];

    let enc = |l: &DeviceList| l.encoded().clone();
    let mut directory = HashMap::new();
    directory.insert(alice.clone(), (enc(&alice_v1), vec![bundles[0].clone()]));
    directory.insert(carol.clone(), (enc(&carol_v1), vec![bundles[4].clone()]));
    directory.insert(bob.clone(), (enc(&bob_v2), vec![bundles[3].clone()]));
    ClientWorld {
        provider: Domain::parse("two.example").expect("fixed domain"),
        provider_signing: provider_signing(&provider_key),
        wrong_signing: provider_signing(&wrong_key),
        provider_key,
        wrong_key,
        bob_blob,
        bob_cert,
        bob_verifying,
        bob: bob.clone(),
        lists: vec![
            enc(&alice_v1),
            enc(&alice_v2),
            enc(&alice_new),
            enc(&bob_v1),
            enc(&bob_v2),
            enc(&carol_v1),
            Bytes::from_static(b"\x0a\x02no"),
        ],
        bundles,
        envelopes,
        honest,
        addresses: vec![
            alice,
            carol,
            bob,
            addr("dave@one.example"),
            addr("x@four.example"),
        ],
        directory,
        alice_other_identity: *alice_new.identity_key(),
        group_items,
        key_envelopes,
        group_honest,
    }
}

// ---------------------------------------------------------------------------------------
// Driving a client.
// ---------------------------------------------------------------------------------------

/// Flags of a client run (the first input byte).
const C_NO_HANDSHAKE: u8 = 1;
const C_NO_RECEIPTS: u8 = 2;
const C_VERIFIED_OTHER: u8 = 4;

/// One client (Bob's device bob1 at two.example) and what the harness knows of it.
///
/// Invariants checked after every output:
/// * every `Transmit` passes `check_frame`, is sent while a connection is open, and is a
///   frame a device may send: one `hello` per connection (role device, acceptor its
///   provider); one `auth` per connection, only after a valid challenge for that hello,
///   carrying its certificate and list and a signature that verifies over this
///   connection's transcript; `request`s only while online, each id always with the same
///   bytes (resends are unchanged), submits carrying only its own envelopes; acks only
///   while online, strictly increasing, of sequence numbers that were delivered;
/// * `Connect` only while no connection is open; `Online` only after its `auth` on this
///   connection;
/// * `Message` only for an honest envelope, with its sender and content, and each once;
///   `DeliveredToProvider` / `Undeliverable` (for the whole message) at most once per
///   message sent, and only for messages sent;
/// * `pending_messages()` at most `MAX_CLIENT_PENDING`; after `handle_timeout(now)` the
///   next deadline is later than `now`.
struct CRun<'w> {
    w: &'w ClientWorld,
    c: Client<ChaCha20Rng>,
    now: UnixMillis,
    open: bool,
    binding: Bytes,
    hello: Option<Vec<u8>>,
    /// Challenge nonces the harness sent, validly signed for the current hello.
    challenges: Vec<Vec<u8>>,
    authed: bool,
    online: bool,
    /// Every request frame seen, by id.
    requests: BTreeMap<u64, Bytes>,
    /// Requests the harness has not answered: (id, body field, address).
    open_requests: Vec<(u64, u32, String)>,
    delivered: HashSet<u64>,
    messages: HashSet<(Address, MessageId)>,
    /// Messages the app sent, and whether their end was reported.
    sent: HashMap<MessageId, bool>,
    /// Frames the harness delivered, for replays.
    frames: Vec<Bytes>,
    /// The next sequence number of a group item (never used before in the run).
    next_group_seq: u64,
    /// Group items delivered while online and not acknowledged (waiting, or given up on
    /// while offline).
    waiting: HashSet<u64>,
    /// Acknowledgements sent since the harness last cleared this, by sequence number.
    acks: HashMap<u64, u32>,
    /// `GroupItemRejected` events so far.
    group_rejected: usize,
    /// Group messages the app sent, and whether the provider stored them.
    group_sent: HashMap<MessageId, bool>,
    /// Set by the long backlog: the run ends.
    stop: bool,
}

impl<'w> CRun<'w> {
    fn new(w: &'w ClientWorld, flags: u8) -> Self {
        let account =
            Account::restore(&w.bob_blob, &client_storage_key()).expect("bob's state restores");
        let mut config = ClientConfig::new(w.provider.clone(), w.provider_key.public());
        config.prekey_refill = 2;
        config.send_delivery_receipts = flags & C_NO_RECEIPTS == 0;
        let mut c = Client::new(account, config, seeded(0xe0), NOW);
        if flags & C_VERIFIED_OTHER != 0 {
            c.mark_verified(&w.addresses[0], w.alice_other_identity);
        }
        let mut run = Self {
            w,
            c,
            now: NOW,
            open: false,
            binding: Bytes::new(),
            hello: None,
            challenges: Vec::new(),
            authed: false,
            online: false,
            requests: BTreeMap::new(),
            open_requests: Vec::new(),
            delivered: HashSet::new(),
            messages: HashSet::new(),
            sent: HashMap::new(),
            frames: Vec::new(),
            next_group_seq: 1 << 20,
            waiting: HashSet::new(),
            acks: HashMap::new(),
            group_rejected: 0,
            group_sent: HashMap::new(),
            stop: false,
        };
        run.drain();
        run
    }

    fn connection_gone(&mut self) {
        self.open = false;
        self.hello = None;
        self.challenges.clear();
        self.authed = false;
        self.online = false;
    }

    fn drain(&mut self) -> Option<UnixMillis> {
        for _ in 0..MAX_OUTPUTS {
            let o = self.c.poll_output(self.now);
            match &o {
                ClientOutput::Transmit(b) => {
                    trace!("  client -> {}", describe(b));
                }
                ClientOutput::Timeout(_) => {}
                other => trace!("  client: {other:?}"),
            }
            match o {
                ClientOutput::Timeout(t) => {
                    assert!(self.c.pending_messages() <= MAX_CLIENT_PENDING);
                    assert!(
                        self.waiting.len() <= MAX_PENDING_GROUP_ITEMS,
                        "{} group items wait unacknowledged",
                        self.waiting.len()
                    );
                    return t;
                }
                ClientOutput::Connect => {
                    assert!(!self.open, "Connect while a connection is open");
                }
                ClientOutput::Close => self.connection_gone(),
                ClientOutput::Transmit(bytes) => self.on_transmit(bytes),
                ClientOutput::Event(e) => self.on_event(e),
            }
        }
        panic!("poll_output did not return Timeout after {MAX_OUTPUTS} outputs");
    }

    fn on_event(&mut self, e: ClientEvent) {
        match e {
            ClientEvent::Online => {
                assert!(
                    self.authed,
                    "online without having sent auth on this connection"
                );
                self.online = true;
            }
            ClientEvent::Offline => self.online = false,
            ClientEvent::Message(m) => {
                let (sender, content) = self
                    .w
                    .honest
                    .get(&m.message_id)
                    .unwrap_or_else(|| panic!("a message no one sent: {m:?}"));
                assert_eq!(&m.sender, sender);
                assert_eq!(&m.content, content, "{m:?}");
                assert!(
                    self.messages.insert((m.sender.clone(), m.message_id)),
                    "a message reported twice: {m:?}"
                );
            }
            ClientEvent::GroupMessage(m) => {
                let (sender, content) = self
                    .w
                    .group_honest
                    .get(&m.message_id)
                    .unwrap_or_else(|| panic!("a group message no one sent: {m:?}"));
                assert_eq!(&m.sender, sender);
                assert_eq!(&m.content, content, "{m:?}");
                assert!(
                    self.messages.insert((m.sender.clone(), m.message_id)),
                    "a group message reported twice: {m:?}"
                );
            }
            ClientEvent::GroupItemRejected { code, .. } => {
                assert!(!code.is_empty());
                self.group_rejected += 1;
            }
            ClientEvent::DeliveredToProvider { message_id }
                if self.group_sent.contains_key(&message_id) =>
            {
                let done = self.group_sent.get_mut(&message_id).expect("checked");
                assert!(!*done, "group message {message_id:?} stored twice");
                *done = true;
            }
            ClientEvent::Undeliverable { message_id, .. }
                if self.group_sent.contains_key(&message_id) =>
            {
                // Per member or device whose sender key could not be handed over.
            }
            ClientEvent::DeliveredToProvider { message_id } => {
                let done = self
                    .sent
                    .get_mut(&message_id)
                    .unwrap_or_else(|| panic!("delivered: {message_id:?}, never sent"));
                assert!(!*done, "the end of {message_id:?} reported twice");
                *done = true;
            }
            ClientEvent::Undeliverable {
                message_id,
                device: None,
                ..
            } => {
                let done = self
                    .sent
                    .get_mut(&message_id)
                    .unwrap_or_else(|| panic!("undeliverable: {message_id:?}, never sent"));
                assert!(!*done, "the end of {message_id:?} reported twice");
                *done = true;
            }
            _ => {}
        }
    }

    fn on_transmit(&mut self, bytes: Bytes) {
        let kind = protocol::check_frame(&bytes)
            .unwrap_or_else(|e| panic!("the client sent a frame check_frame refuses: {e}"));
        assert!(self.open, "the client sent {kind} with no connection open");
        let (field, body) = pb::frame_body(&bytes).expect("own frames parse");
        let f = body_fields(&body);
        let w = self.w;
        match field {
            F_HELLO => {
                assert!(self.hello.is_none(), "two hellos on one connection");
                assert_eq!(pb::last_varint(&f, 3), 1, "hello role");
                assert_eq!(pb::last_bytes(&f, 4), Some(w.provider.as_str().as_bytes()));
                self.hello = Some(pb::last_bytes(&f, 2).unwrap_or_default().to_vec());
            }
            F_AUTH => {
                assert!(!self.authed, "two auths on one connection");
                let hello = self.hello.clone().expect("auth before hello");
                let d = pb::last_bytes(&f, 1).expect("device auth");
                let d = body_fields(d);
                let cert = pb::last_bytes(&d, 1).unwrap_or_default();
                assert_eq!(cert, w.bob_cert.as_ref(), "auth with another certificate");
                // Its own current list (it learns newer ones by fetching), listing it.
                let list = pb::last_bytes(&d, 2).unwrap_or_default();
                let list = DeviceList::decode_for(Bytes::copy_from_slice(list), &w.bob)
                    .expect("auth carries bob's own signed list");
                assert!(
                    list.devices().iter().any(|c| c.encoded() == &w.bob_cert),
                    "auth carries a list without this device"
                );
                let sig = pb::last_bytes(&f, 3).unwrap_or_default();
                let provider = w.provider.as_str().as_bytes();
                assert!(
                    self.challenges.iter().any(|ch| verifies(
                        &w.bob_verifying,
                        Label::AuthSignature,
                        &[ch, &hello, provider, &self.binding, cert],
                        sig
                    )),
                    "auth without a valid challenge, or signed wrong"
                );
                self.authed = true;
            }
            F_REQUEST => {
                assert!(self.online, "a request while not online");
                let id = pb::last_varint(&f, 1);
                if let Some(prev) = self.requests.get(&id) {
                    assert_eq!(prev, &bytes, "request {id} resent with other bytes");
                } else {
                    self.requests.insert(id, bytes.clone());
                }
                let (rq, payload) = f
                    .iter()
                    .rev()
                    .find_map(|(n, v)| match v {
                        pb::Val::Bytes(b) if *n != 1 => Some((*n, *b)),
                        _ => None,
                    })
                    .expect("a request with a body");
                let p = body_fields(payload);
                let address =
                    String::from_utf8_lossy(pb::last_bytes(&p, 1).unwrap_or_default()).into_owned();
                match rq {
                    RQ_SUBMIT => {
                        for e in pb::all_bytes(&p, 1) {
                            let env = UnverifiedEnvelope::decode(Bytes::copy_from_slice(e))
                                .expect("a submitted envelope decodes");
                            let h = env.claimed_header();
                            assert_eq!(&h.sender, &w.bob, "submitted someone else's envelope");
                        }
                    }
                    RQ_FETCH_BUNDLES | RQ_FETCH_LIST => {
                        Address::parse_canonical(&address).expect("fetch of a canonical address");
                    }
                    RQ_PUBLISH_PREKEYS => {}
                    RQ_SUBMIT_GROUP => {
                        let e = pb::last_bytes(&p, 1).unwrap_or_default();
                        let env = GroupEnvelope::decode(Bytes::copy_from_slice(e))
                            .expect("a submitted group envelope decodes");
                        assert_eq!(
                            env.sender(),
                            &w.bob,
                            "submitted someone else's group envelope"
                        );
                        let to: Vec<&[u8]> = pb::all_bytes(&p, 2);
                        assert!(
                            to.contains(&w.bob.as_str().as_bytes()),
                            "a group message not to its own user"
                        );
                        for (i, r) in to.iter().enumerate() {
                            Address::parse_canonical(&String::from_utf8_lossy(r))
                                .expect("a canonical recipient");
                            assert!(!to[..i].contains(r), "a recipient listed twice");
                        }
                    }
                    RQ_ORDER_GROUP => {
                        let c = pb::last_bytes(&p, 1).unwrap_or_default();
                        let change = GroupChange::decode(Bytes::copy_from_slice(c))
                            .expect("a change to order decodes");
                        assert_eq!(change.author(), &w.bob, "ordering someone else's change");
                        assert!(
                            pb::last_bytes(&p, 3).unwrap_or_default().is_empty(),
                            "a device named a requester"
                        );
                        Domain::parse_canonical(&String::from_utf8_lossy(
                            pb::last_bytes(&p, 2).unwrap_or_default(),
                        ))
                        .expect("a canonical sequencer");
                    }
                    other => panic!("the client sent request body {other}"),
                }
                if !self.open_requests.iter().any(|r| r.0 == id) {
                    self.open_requests.push((id, rq, address));
                }
            }
            F_DELIVER_ACK => {
                assert!(self.online, "an ack while not online");
                let seqs = pb::all_varints(&f, 1).expect("acks parse");
                assert!(!seqs.is_empty() && seqs.len() <= MAX_ACK_SEQS);
                assert!(
                    seqs.windows(2).all(|p| p[0] < p[1]),
                    "acks not sorted: {seqs:?}"
                );
                for s in seqs {
                    assert!(self.delivered.contains(&s), "ack of {s}, never delivered");
                    self.waiting.remove(&s);
                    *self.acks.entry(s).or_default() += 1;
                }
            }
            F_GOODBYE => {}
            k => panic!("the client sent {}", KINDS[k as usize]),
        }
    }

    fn input(&mut self, input: ClientInput) {
        match &input {
            ClientInput::Received(b) => {
                trace!("-> client: {} ({} bytes)", describe(b), b.len());
            }
            other => trace!("input: {other:?}"),
        }
        self.c.handle_input(self.now, input);
        self.drain();
    }

    fn receive(&mut self, bytes: Bytes) {
        if self.frames.len() >= MAX_REMEMBERED {
            self.frames.remove(0);
        }
        self.frames.push(bytes.clone());
        self.input(ClientInput::Received(bytes));
    }

    fn connected(&mut self, binding: Bytes) {
        self.connection_gone();
        self.open = true;
        self.binding = binding.clone();
        self.input(ClientInput::Connected { binding });
    }

    fn challenge(&mut self, variant: u8) {
        let w = self.w;
        let hello = self.hello.clone().unwrap_or_default();
        let nonce = vec![0x5c ^ variant; AUTH_NONCE_LEN];
        let domain = w.provider.as_str();
        let (key, wrong) = (&w.provider_signing, &w.wrong_signing);
        let parts = |d: &str| -> Vec<u8> {
            crypto::framed(
                Label::ChallengeSignature,
                &[&hello, &nonce, d.as_bytes(), &self.binding],
            )
        };
        let good = key.sign(&parts(domain)).to_bytes();
        let f = match variant % 6 {
            0 | 1 => {
                self.challenges.push(nonce.clone());
                challenge_frame(&nonce, domain, &w.provider_key.public().to_bytes(), &good)
            }
            2 => challenge_frame(
                &nonce,
                "one.example",
                &w.provider_key.public().to_bytes(),
                &key.sign(&parts("one.example")).to_bytes(),
            ),
            3 => challenge_frame(
                &nonce,
                domain,
                &w.wrong_key.public().to_bytes(),
                &wrong.sign(&parts(domain)).to_bytes(),
            ),
            4 => challenge_frame(
                &nonce,
                domain,
                &w.provider_key.public().to_bytes(),
                &wrong.sign(&parts(domain)).to_bytes(),
            ),
            _ => challenge_frame(
                &nonce[1..],
                domain,
                &w.provider_key.public().to_bytes(),
                &good,
            ),
        };
        self.receive(f);
    }

    fn handshake(&mut self) {
        self.connected(Bytes::from_static(b"tls-exporter"));
        self.challenge(0);
        self.receive(welcome_frame(NOW.0));
    }

    /// A response to an open request (or to any id).
    fn respond(&mut self, cur: &mut Cursor<'_>) {
        let w = self.w;
        let which = cur.u8();
        let (id, rq, address) = if self.open_requests.is_empty() || which == 0xff {
            (u64::from(cur.u8()), 0, String::new())
        } else {
            self.open_requests
                .remove(usize::from(which) % self.open_requests.len())
        };
        let codes = error_codes();
        let body = match cur.u8() % 8 {
            0 => Some((RS_DONE, Msg::new())),
            1 => {
                let b = cur.u8();
                Some((
                    RS_ERROR,
                    error_msg(
                        codes[usize::from(b) % codes.len()],
                        "scripted",
                        b & 0x80 != 0,
                        RETRY_AFTER[usize::from(cur.u8()) % RETRY_AFTER.len()],
                    ),
                ))
            }
            2 => {
                let list = cur.pick::<Bytes>(&w.lists).clone();
                let mask = cur.u8();
                let m =
                    w.bundles
                        .iter()
                        .enumerate()
                        .fold(Msg::new().bytes(1, &list), |m, (i, b)| {
                            if mask & (1 << i) != 0 {
                                m.bytes(2, b)
                            } else {
                                m
                            }
                        });
                Some((RS_BUNDLES, m))
            }
            3 => Some((
                RS_DEVICE_LIST,
                Msg::new().bytes(1, cur.pick::<Bytes>(&w.lists)),
            )),
            4 => Some((RS_RELAY_RESULT, Msg::new())),
            5 => None,
            6 => Some((
                RS_ERROR,
                error_msg(
                    "rate_limited",
                    "",
                    true,
                    RETRY_AFTER[usize::from(cur.u8()) % 4],
                ),
            )),
            _ => {
                // The right answer.
                let entry = Address::parse_canonical(&address)
                    .ok()
                    .and_then(|a| w.directory.get(&a));
                match (rq, entry) {
                    (RQ_FETCH_BUNDLES, Some((list, bundles))) => Some((
                        RS_BUNDLES,
                        bundles
                            .iter()
                            .fold(Msg::new().bytes(1, list), |m, b| m.bytes(2, b)),
                    )),
                    (RQ_FETCH_LIST, Some((list, _))) => {
                        Some((RS_DEVICE_LIST, Msg::new().bytes(1, list)))
                    }
                    (RQ_FETCH_BUNDLES | RQ_FETCH_LIST, None) => {
                        Some((RS_ERROR, error_msg("unknown_user", "", false, 0)))
                    }
                    (RQ_ORDER_GROUP, _) => {
                        // The sequencer orders it: the change countersigned.
                        let change = self
                            .requests
                            .get(&id)
                            .and_then(|f| pb::frame_body(f))
                            .and_then(|(_, body)| {
                                let f = pb::fields(&body)?;
                                let o = pb::fields(pb::last_bytes(&f, RQ_ORDER_GROUP)?)?;
                                GroupChange::decode(Bytes::copy_from_slice(pb::last_bytes(&o, 1)?))
                                    .ok()
                            });
                        change.map(|c| {
                            (
                                RS_GROUP_CHANGE,
                                Msg::new().bytes(1, c.sequence(&w.provider_key).encoded()),
                            )
                        })
                    }
                    _ => Some((RS_DONE, Msg::new())),
                }
            }
        };
        self.receive(response_frame(id, body));
    }

    fn deliver(&mut self, cur: &mut Cursor<'_>) {
        let w = self.w;
        let n = 1 + usize::from(cur.u8() % 4);
        let mut items = Vec::new();
        for _ in 0..n {
            let seq = u64::from(cur.u8());
            let kind = cur.u8();
            let item = match kind % 5 {
                0 | 1 => Item::Envelope(cur.pick(&w.envelopes).clone()),
                2 => {
                    let e = cur.pick(&w.envelopes).clone();
                    Item::Envelope(edited(&e, cur))
                }
                3 => {
                    let sent: Vec<MessageId> = self.sent.keys().copied().collect();
                    let b = cur.u8();
                    let message_id = if sent.is_empty() || b & 1 != 0 {
                        vec![b; 16]
                    } else {
                        sent[usize::from(b) % sent.len()].as_bytes().to_vec()
                    };
                    let recipient = cur.pick(&w.addresses).as_str().to_owned();
                    let codes = error_codes();
                    Item::Undeliverable {
                        message_id,
                        recipient,
                        device: vec![kind; 16],
                        reason: (kind & 0x80 == 0).then(|| {
                            error_msg(codes[usize::from(kind) % codes.len()], "", false, 0)
                        }),
                    }
                }
                _ if kind & 0x80 != 0 => Item::Empty,
                _ => Item::PrekeysLow(u32::from(cur.u8())),
            };
            items.push((seq, item));
        }
        for (seq, _) in &items {
            self.delivered.insert(*seq);
        }
        self.receive(deliver_frame(&items));
    }

    /// Group items with sequence numbers never used before `[n, (kind, ..)*]`, `kind %
    /// 5`: 0-1 an item of the world; 2 one with its body edited `[which, n, edits]`; 3 a
    /// raw body `[field, len, bytes]`; 4 alice's sender key in a session message. An
    /// item whose body the harness cannot decode must be refused: acknowledged exactly
    /// once while the delivery is handled, and reported.
    fn deliver_group(&mut self, cur: &mut Cursor<'_>) {
        let w = self.w;
        let n = 1 + usize::from(cur.u8() % 4);
        let mut items = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..n {
            let seq = self.next_group_seq;
            self.next_group_seq += 1;
            let kind = cur.u8();
            let item = match kind % 5 {
                0 | 1 => {
                    let (f, b, s) = cur.pick(&w.group_items).clone();
                    Item::Group(f, b, s)
                }
                2 => {
                    let (f, b, s) = cur.pick(&w.group_items).clone();
                    Item::Group(f, edited(&b, cur), s)
                }
                3 => {
                    let field = 1 + u32::from(cur.u8() & 1);
                    let len = usize::from(cur.u8());
                    Item::Group(field, Bytes::copy_from_slice(cur.take(len)), Bytes::new())
                }
                _ => Item::Envelope(cur.pick(&w.key_envelopes).clone()),
            };
            if let Item::Group(f, b, _) = &item {
                let undecodable = if *f == 1 {
                    GroupEnvelope::decode(b.clone()).is_err()
                } else {
                    GroupChange::decode(b.clone()).is_err()
                };
                if undecodable {
                    refused.push(seq);
                }
                if self.online {
                    self.waiting.insert(seq);
                }
            }
            items.push((seq, item));
        }
        for (seq, _) in &items {
            self.delivered.insert(*seq);
        }
        let online = self.online;
        let rejected = self.group_rejected;
        self.acks.clear();
        self.receive(deliver_frame(&items));
        if online && self.online {
            for seq in &refused {
                assert_eq!(
                    self.acks.get(seq).copied().unwrap_or(0),
                    1,
                    "refused group item {seq} not acknowledged exactly once"
                );
            }
            assert!(
                self.group_rejected >= rejected + refused.len(),
                "refused group items not reported"
            );
        }
    }

    /// `frames * MAX_DELIVER_ITEMS` copies (new sequence numbers) of a change that waits
    /// (CG2's epoch 1 without the snapshot): the oldest must be dropped past
    /// `MAX_PENDING_GROUP_ITEMS`.
    fn group_backlog(&mut self, frames: usize) {
        let (f, b, s) = self.w.group_items[4].clone();
        for _ in 0..frames {
            let mut items = Vec::new();
            for _ in 0..MAX_DELIVER_ITEMS {
                let seq = self.next_group_seq;
                self.next_group_seq += 1;
                self.delivered.insert(seq);
                if self.online {
                    self.waiting.insert(seq);
                }
                items.push((seq, Item::Group(f, b.clone(), s.clone())));
            }
            self.receive(deliver_frame(&items));
        }
    }

    /// The app's group calls `[what, ..]`, `what % 3`: 0 `create_group` `[mask]` with the
    /// world's addresses in `mask`; 1 `send_group` `[group, len]`; 2 `change_group`
    /// `[group, action, who]` (add, remove, leave, title, role).
    fn app_group(&mut self, cur: &mut Cursor<'_>) {
        let w = self.w;
        let what = cur.u8() % 3;
        let groups: Vec<GroupId> = self.c.groups().map(GroupState::id).collect();
        let pick_group = |cur: &mut Cursor<'_>| {
            let b = cur.u8();
            (!groups.is_empty()).then(|| groups[usize::from(b) % groups.len()])
        };
        match what {
            0 => {
                let mask = cur.u8();
                let members: Vec<Address> = w
                    .addresses
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, a)| a.clone())
                    .collect();
                let _ = self.c.create_group(self.now, "a group", &members);
            }
            1 => {
                let Some(g) = pick_group(cur) else { return };
                let len = usize::from(cur.u8());
                if let Ok(id) =
                    self.c
                        .send_group(self.now, g, Content::Text(Text::plain("g".repeat(len))))
                {
                    assert!(
                        self.group_sent.insert(id, false).is_none() && !self.sent.contains_key(&id),
                        "a message id used twice"
                    );
                }
            }
            _ => {
                let Some(g) = pick_group(cur) else { return };
                let (action, who) = (cur.u8() % 5, cur.pick(&w.addresses).clone());
                let action = match action {
                    0 => match self.c.group_member(&who, GroupRole::Member) {
                        Ok(m) => GroupAction::Add(vec![m]),
                        Err(_) => return,
                    },
                    1 => GroupAction::Remove(vec![who]),
                    2 => GroupAction::Leave,
                    3 => GroupAction::SetTitle("renamed".into()),
                    _ => GroupAction::SetRole {
                        member: who,
                        role: GroupRole::Admin,
                    },
                };
                let _ = self.c.change_group(self.now, g, action);
            }
        }
        self.drain();
    }

    fn advance(&mut self, ms: u64) {
        self.now = UnixMillis(self.now.0.saturating_add(ms));
        trace!("time +{ms} ms");
        self.c.handle_timeout(self.now);
        if let Some(t) = self.drain() {
            assert!(
                t > self.now,
                "after handle_timeout({:?}) the deadline is {t:?}",
                self.now
            );
        }
    }

    fn op(&mut self, cur: &mut Cursor<'_>) {
        let w = self.w;
        match cur.u8() % 16 {
            0 => {
                let len = usize::from(cur.u16() % 2048);
                let bytes = Bytes::copy_from_slice(cur.take(len));
                self.receive(bytes);
            }
            1 => self.handshake(),
            2 => {
                let binding = match cur.u8() % 3 {
                    0 => Bytes::new(),
                    1 => Bytes::from_static(b"tls-exporter"),
                    _ => Bytes::from(vec![1; 65]),
                };
                self.connected(binding);
            }
            3 => {
                let v = cur.u8();
                self.challenge(v);
            }
            4 => {
                let b = cur.u8();
                let codes = error_codes();
                let f = match b % 3 {
                    0 => welcome_frame(u64::from(b)),
                    1 => goodbye_frame(None),
                    _ => goodbye_frame(Some(error_msg(
                        codes[usize::from(b) % codes.len()],
                        "bye",
                        b & 0x80 != 0,
                        0,
                    ))),
                };
                self.receive(f);
            }
            5 => {
                self.connection_gone();
                self.input(ClientInput::Disconnected);
            }
            6 => {
                let ms = time_step(cur.u8());
                self.advance(ms);
            }
            7 => self.respond(cur),
            8 => self.deliver(cur),
            9 => {
                let to = cur.pick(&w.addresses).clone();
                let len = usize::from(cur.u8());
                let body = if len == 0xff {
                    "x".repeat(100_000)
                } else {
                    "m".repeat(len)
                };
                if let Ok(id) = self.c.send(self.now, &to, Content::Text(Text::plain(body))) {
                    assert!(
                        self.sent.insert(id, false).is_none(),
                        "a message id used twice"
                    );
                }
                self.drain();
            }
            10 => {
                let to = cur.pick(&w.addresses).clone();
                let ids: Vec<MessageId> = w
                    .honest
                    .keys()
                    .copied()
                    .take(usize::from(cur.u8() % 4))
                    .collect();
                let _ = self.c.mark_read(self.now, &to, &ids);
                self.drain();
            }
            11 => {
                if !self.frames.is_empty() {
                    let base = self.frames[usize::from(cur.u8()) % self.frames.len()].clone();
                    let f = edited(&base, cur);
                    self.receive(f);
                }
            }
            12 => {
                // Several deliveries in a row: a backlog.
                for _ in 0..3 {
                    self.deliver(cur);
                }
            }
            13 => self.deliver_group(cur),
            14 => self.app_group(cur),
            _ => {
                // Past `MAX_PENDING_GROUP_ITEMS` only with `0xff`, which ends the run:
                // every item processed later tries the 1000 waiting ones again.
                let n = cur.u8();
                if n == 0xff {
                    self.group_backlog(MAX_PENDING_GROUP_ITEMS / MAX_DELIVER_ITEMS + 2);
                    self.stop = true;
                } else {
                    self.group_backlog(1 + usize::from(n % 2));
                }
            }
        }
    }
}

/// `client_input`: Bob's client (bob1 at two.example) driven by a program. The first
/// byte is flags: 1 no automatic handshake (otherwise the harness connects, answers the
/// challenge and welcomes before the first operation), 2 no delivery receipts, 4 alice
/// marked verified under another identity key. Then up to [`MAX_OPS`] operations, opcode
/// `% 13`:
///
/// 0 raw frame `[len u16, bytes]`; 1 connect and complete the handshake; 2 `Connected`
/// `[binding]`; 3 a challenge `[variant]` (valid, wrong domain, wrong key, bad signature,
/// short nonce); 4 welcome or goodbye `[variant]`; 5 `Disconnected`; 6 advance time and
/// run timers `[step]`; 7 answer a request `[which, kind, ..]` (done, error, bundles,
/// device list, wrong kind, empty, rate limited, the right answer); 8 deliver `[n,
/// (seq, kind, ..)*]` (honest or edited envelopes, notices); 9 the app sends `[to, len]`;
/// 10 the app marks messages read `[to, n]`; 11 replay an earlier frame with edits; 12
/// three deliveries; 13 group items ([`CRun::deliver_group`]: the world's changes (a
/// creation with Bob, a join with a snapshot, ...), alice's group messages, edited and raw
/// ones, alice's sender key over her session); 14 the app's group calls
/// ([`CRun::app_group`]: create, send, change); 15 a backlog of frames of waiting group
/// items `[n]`: `1 + n % 2` frames, or with `n = 0xff` enough to pass
/// `MAX_PENDING_GROUP_ITEMS` (the last operation of the run).
///
/// See [`CRun`] for the invariants; for groups also: group messages only honest ones,
/// each once; a group item the harness cannot decode is acknowledged exactly once and
/// reported; group items delivered and not acknowledged never exceed
/// `MAX_PENDING_GROUP_ITEMS`; group submits carry Bob's own envelopes to recipients
/// each named once, Bob among them; changes to order are Bob's, without a requester.
pub fn client_input(data: &[u8]) {
    let w = client_world();
    let mut cur = Cursor::new(data);
    let flags = cur.u8();
    let mut run = CRun::new(w, flags);
    if flags & C_NO_HANDSHAKE == 0 {
        run.handshake();
    }
    let mut ops = 0;
    while !cur.done() && ops < MAX_OPS && !run.stop {
        run.op(&mut cur);
        ops += 1;
    }
}

// ---------------------------------------------------------------------------------------
// Seeds.
// ---------------------------------------------------------------------------------------

/// Bob's saved account holding a group with every part of a group record
/// (`state.proto` `GroupRecordState`), for the `state_restore` seeds: CG1 created by
/// alice, her sender key over her session, her messages 0 and 2 opened (a receiver chain
/// with the skipped key of 1), then Bob sends to the group (his sender chain, a key
/// hand-out to alice). Saved under `key`.
pub fn group_account(key: &Secret<32>) -> Vec<u8> {
    let mut run = CRun::new(client_world(), 0);
    run.handshake();
    let prog = [13, 3, 0, 0, 4, 0, 0, 7, 0, 9, 14, 1, 0, 5];
    let mut cur = Cursor::new(&prog);
    while !cur.done() {
        run.op(&mut cur);
    }
    assert_eq!(run.c.groups().count(), 1, "bob holds CG1");
    assert_eq!(run.messages.len(), 2, "bob opened alice's two messages");
    assert_eq!(run.group_sent.len(), 1, "bob sent to CG1");
    run.c.account().save(key, &mut seeded(0xa7))
}

/// The plaintext of a saved account (`Account::save`'s layout: magic, nonce, sealed).
fn open_state(blob: &[u8], key: &Secret<32>) -> Option<Vec<u8>> {
    let rest = blob.strip_prefix(&kogge::session::STATE_MAGIC[..])?;
    let (nonce, sealed) = rest.split_first_chunk::<12>()?;
    let aad = crypto::framed(Label::StateEncryption, &[&kogge::session::STATE_MAGIC]);
    crypto::aead_open(key, nonce, &aad, sealed)
        .ok()
        .map(|p| p.to_vec())
}

/// A saved account's plaintext with one more field in each group record (`state.proto`
/// `AccountState.groups` = 8): `late` (9), a user added after the record's chain was
/// made, first handed the chain at `iteration`. Walks the top level of the protobuf only.
fn with_late_entry(plaintext: &[u8], address: &str, iteration: u8) -> Vec<u8> {
    fn varint(cur: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = cur.split_first().expect("varint");
            *cur = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }
    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    assert!(address.len() < 0x80 && iteration < 0x80);
    let mut late = vec![0x0a, address.len() as u8];
    late.extend_from_slice(address.as_bytes());
    late.extend_from_slice(&[0x10, iteration]);
    let mut out = Vec::new();
    let mut cur = plaintext;
    while !cur.is_empty() {
        let tag = varint(&mut cur);
        put_varint(&mut out, tag);
        match tag & 7 {
            0 => put_varint(&mut out, varint(&mut cur)),
            2 => {
                let len = varint(&mut cur) as usize;
                let (body, rest) = cur.split_at(len);
                cur = rest;
                let mut body = body.to_vec();
                if tag >> 3 == 8 {
                    body.extend_from_slice(&[(9 << 3) | 2, late.len() as u8]);
                    body.extend_from_slice(&late);
                }
                put_varint(&mut out, body.len() as u64);
                out.extend_from_slice(&body);
            }
            other => panic!("wire type {other} in an account state"),
        }
    }
    out
}

/// A saved account's layout around `plaintext` (the inverse of [`open_state`]).
fn seal_state(plaintext: &[u8], key: &Secret<32>) -> Vec<u8> {
    let nonce = [0x33; 12];
    let aad = crypto::framed(Label::StateEncryption, &[&kogge::session::STATE_MAGIC]);
    let sealed = crypto::aead_seal(key, &nonce, &aad, plaintext).expect("seal");
    [&kogge::session::STATE_MAGIC[..], &nonce, &sealed].concat()
}

/// One seed: target, file name, bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// The seed corpus of every protocol target (what `gen_protocol_corpus` writes).
pub fn seeds() -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        let n = out.iter().filter(|(t, _, _)| *t == target).count();
        out.push((target, format!("seed-{n:03}-{name}"), bytes));
    };

    // frame_decode: one frame of every kind, and the frames of a real provider run.
    let w = provider_world();
    let d = &w.devs[ALICE1];
    let frames: Vec<(&str, Bytes)> = vec![
        ("hello", hello_frame(1, &[1; 32], 1, HOME)),
        (
            "challenge",
            challenge_frame(&[2; 32], HOME, &[3; 32], &[4; 64]),
        ),
        (
            "auth-device",
            auth_device_frame(d.device.certificate().encoded(), &d.list, &[5; 64]),
        ),
        (
            "auth-provider",
            auth_provider_frame("two.example", &[6; 64]),
        ),
        ("welcome", welcome_frame(NOW.0)),
        (
            "goodbye",
            goodbye_frame(Some(error_msg("bad_frame", "why", false, 0))),
        ),
        (
            "request-submit",
            request_frame(7, Some((RQ_SUBMIT, envelopes_msg(&w.envelopes[..2])))),
        ),
        (
            "request-fetch",
            request_frame(
                8,
                Some((
                    RQ_FETCH_BUNDLES,
                    Msg::new().str(1, "bob@one.example").bytes(2, &[1; 16]),
                )),
            ),
        ),
        (
            "response-error",
            response_frame(
                9,
                Some((RS_ERROR, error_msg("rate_limited", "", true, 250))),
            ),
        ),
        (
            "response-relay-result",
            response_frame(9, Some((RS_RELAY_RESULT, Msg::new().msg(1, Msg::new())))),
        ),
        (
            "deliver",
            deliver_frame(&[
                (1, Item::Envelope(w.envelopes[0].clone())),
                (2, Item::PrekeysLow(3)),
                (
                    3,
                    Item::Undeliverable {
                        message_id: vec![1; 16],
                        recipient: "rita@two.example".into(),
                        device: vec![2; 16],
                        reason: None,
                    },
                ),
            ]),
        ),
        ("deliver-ack", deliver_ack_frame(&[1, 2, 300])),
    ];
    for (name, f) in frames {
        add("frame_decode", name, f.to_vec());
    }

    // directory_parse.
    let keys = dir_keys();
    let dir = format!(
        "# kogge provider directory\n\none.example 127.0.0.1:4433 {}\ntwo.example\t[::1]:4433\t{}\r\n  # indented comment\n",
        keys[0], keys[1]
    );
    add(
        "directory_parse",
        "valid",
        [&[0u8][..], dir.as_bytes()].concat(),
    );
    add(
        "directory_parse",
        "duplicate",
        [
            &[0u8][..],
            format!("a.example x {}\na.example y {}\n", keys[0], keys[1]).as_bytes(),
        ]
        .concat(),
    );
    add(
        "directory_parse",
        "bad-key",
        [&[0u8][..], format!("a.example x {}\n", keys[2]).as_bytes()].concat(),
    );
    add(
        "directory_parse",
        "structured",
        vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 0, 0, 1, 1, 2],
    );

    // provider_input: programs (see the opcodes on `provider_input`).
    let prog = |flags: u8, ops: &[&[u8]]| -> Vec<u8> { [&[flags][..], &ops.concat()].concat() };
    add("provider_input", "base-only", vec![0]);
    // bob signs in, gets his mailbox, acknowledges it.
    add(
        "provider_input",
        "bob-login-ack",
        prog(0, &[&[5, BOB1 as u8, 0], &[9, 0, 0]]),
    );
    // alice1 submits to bob (local) and to rita (remote); time passes.
    add(
        "provider_input",
        "alice-submit",
        prog(0, &[&[5, 0, 0], &[6, 0, 1, 4, 1, 0, 0, 3, 0, 0], &[8, 3]]),
    );
    // the queue for three.example: connect, handshake, the relay acknowledged.
    add(
        "provider_input",
        "federation-out",
        prog(
            0,
            &[
                &[10, 0, 0],
                &[13, 0, 0, 0],
                &[13, 0, 3],
                &[13, 0, 4, 0],
                &[8, 6],
            ],
        ),
    );
    // the same, refused with a retryable error (mailbox_full), retried after the backoff.
    add(
        "provider_input",
        "federation-retry",
        prog(
            0,
            &[
                &[10, 0, 0],
                &[13, 0, 0, 0],
                &[13, 0, 3],
                &[13, 0, 4, 0x9d],
                &[8, 3],
                &[8, 7],
                &[13, 0, 4, 0],
            ],
        ),
    );
    // two.example signs in (its key resolved at once) and relays rita -> alice.
    add(
        "provider_input",
        "federation-in",
        prog(0, &[&[0, 0], &[12, 0, 0, 2], &[6, 0, 1, 5, 0, 5, 0, 1]]),
    );
    // three.example signs in; the resolver gives a wrong key.
    add(
        "provider_input",
        "federation-in-wrong-key",
        prog(0, &[&[0, 0], &[12, 0, 1, 0], &[11, 1, 0]]),
    );
    // alice fetches rita's bundles: forwarded to two.example, answered, passed back.
    add(
        "provider_input",
        "forwarded-fetch",
        prog(
            0,
            &[
                &[5, 0, 0],
                &[6, 0, 1, 2, 4, 0, 0],
                &[10, 0, 1],
                &[13, 0, 0, 0],
                &[13, 0, 3],
                &[13, 0, 6, 6, 2, 1],
                &[8, 5],
            ],
        ),
    );
    // open registration: dave registers and publishes prekeys.
    add(
        "provider_input",
        "register",
        prog(
            P_OPEN_REGISTRATION,
            &[&[5, 3, 1], &[6, 0, 1, 1, 3, 0, 0, 0xff]],
        ),
    );
    // alice publishes a list without alice1: alice1's connection is closed after `Done`.
    add(
        "provider_input",
        "device-removed",
        prog(0, &[&[5, 0, 0], &[6, 0, 1, 0, 2]]),
    );
    // a commit fails in the middle of a submit; bob signs in afterwards.
    add(
        "provider_input",
        "commit-failure",
        prog(
            0,
            &[&[5, 0, 0], &[7, 0], &[6, 0, 2, 4, 0, 0, 0, 0], &[5, 2, 0]],
        ),
    );
    // tiny limits: a full mailbox, fetch and one-time prekey rate limits.
    add(
        "provider_input",
        "tiny-limits",
        prog(
            P_TINY_LIMITS,
            &[
                &[5, 0, 0],
                &[6, 0, 1, 4, 0, 2, 0, 0],
                &[6, 0, 2, 2, 1, 0, 0],
                &[6, 0, 3, 2, 1, 0, 0],
                &[6, 0, 4, 2, 1, 0, 0],
                &[6, 0, 5, 2, 1, 0, 0],
            ],
        ),
    );
    // a connection that never authenticates times out.
    add(
        "provider_input",
        "auth-timeout",
        prog(0, &[&[0, 1], &[3, 0, 1, 0], &[8, 4]]),
    );
    add(
        "provider_input",
        "empty-store",
        prog(
            P_EMPTY_STORE | P_OPEN_REGISTRATION,
            &[&[5, 1, 1], &[15, 2, 0, 3, 0, 0]],
        ),
    );
    // Groups (see `ProviderGroups`): alice1 orders G1's epoch 1 (adds dave).
    let order_c1: &[u8] = &[18, ALICE1 as u8, 1, 1, 0, 1, 0];
    add("provider_input", "group-order", prog(0, &[order_c1]));
    // ... and bob1's leaving, made on epoch 0 too, loses: group_conflict.
    add(
        "provider_input",
        "group-order-conflict",
        prog(0, &[order_c1, &[18, BOB1 as u8, 1, 1, 0, 2, 0]]),
    );
    // epoch 1 ordered, then the fan-out relayed to two.example and acknowledged.
    add(
        "provider_input",
        "group-fanout-federation",
        prog(
            0,
            &[
                order_c1,
                &[10, 0, 1],
                &[13, 0, 0, 0],
                &[13, 0, 3],
                &[13, 0, 4, 0, 0, 0],
            ],
        ),
    );
    // alice1's change of G3 (sequencer two.example): forwarded, answered, passed back.
    add(
        "provider_input",
        "group-order-forwarded",
        prog(
            0,
            &[
                &[18, ALICE1 as u8, 1, 1, 0, 6, 1],
                &[10, 0, 1],
                &[13, 0, 0, 0],
                &[13, 0, 3],
                &[13, 0, 6, 0, 3, 0],
            ],
        ),
    );
    // alice1 submits a G1 message for alice, bob, rita and tom; bob1 signs in.
    add(
        "provider_input",
        "group-submit",
        prog(
            0,
            &[
                &[18, ALICE1 as u8, 2, 0, 0, 0, 0x33, 0],
                &[5, BOB1 as u8, 0],
            ],
        ),
    );
    // bob1 submits alice's envelope (not_yours); a recipient listed twice (invalid).
    add(
        "provider_input",
        "group-submit-refused",
        prog(
            0,
            &[
                &[18, BOB1 as u8, 2, 0, 0, 0, 0x03, 0],
                &[18, ALICE1 as u8, 2, 0, 0, 0, 0x03, 1],
            ],
        ),
    );
    // two.example relays G2's creation to alice and bob; alice1 signs in and gets it.
    add(
        "provider_input",
        "group-relay-in",
        prog(
            0,
            &[&[17, 1, 1, 0, 0, 0, 0, 0x03, 0], &[5, ALICE1 as u8, 0]],
        ),
    );
    // two.example relays G2's creation countersigned by three.example: not_yours.
    add(
        "provider_input",
        "group-relay-wrong-key",
        prog(0, &[&[17, 1, 1, 0, 0, 2, 0, 0x03, 0]]),
    );
    // two.example relays dave's addition to G2 with the snapshot, for bob.
    add(
        "provider_input",
        "group-relay-join",
        prog(0, &[&[17, 1, 1, 0, 0, 1, 0, 0x02, 0], &[5, BOB1 as u8, 0]]),
    );
    // two.example forwards rita's leaving of G1: ordered here.
    add(
        "provider_input",
        "group-forwarded-order-in",
        prog(0, &[&[17, 1, 1, 2, 3, 0, 0, 0]]),
    );
    // Deferred commits (op 7 answers the batch): alice1's submit is held until its batch
    // is durable; bob1 signs in and gets the envelope. (A handshake waits for an
    // outstanding batch too: the seeds sign in while none is.)
    // (envelopes 13 and 15: alice to bob and to rita, not in the base store)
    let submit: &[u8] = &[6, 0, 1, 4, 1, 13, 0, 15, 0, 0];
    add(
        "provider_input",
        "deferred-submit",
        prog(
            P_DEFERRED,
            &[&[5, 0, 0], submit, &[7, 0], &[5, BOB1 as u8, 0]],
        ),
    );
    // Pipelined: alice1 submits again (to bob) while the first batch is out; a stale
    // answer, then both batches answered, each releasing its answer and delivery.
    add(
        "provider_input",
        "deferred-pipelined",
        prog(
            P_DEFERRED,
            &[
                &[5, BOB1 as u8, 0],
                &[5, 0, 0],
                submit,
                &[6, 0, 2, 4, 0, 14, 0, 0],
                &[7, 3],
                &[7, 0],
                &[7, 0],
            ],
        ),
    );
    // Ahead of the write (SPEC.md 16.12 rule 5): once the first batch, which carries the
    // new sequence epoch, is durable, alice1's next envelope reaches bob1 while its batch
    // is still out; then a batch fails, and after it a new epoch must be durable again
    // before anything goes ahead, under numbers above those bob1 saw.
    let again: &[u8] = &[6, 0, 2, 4, 0, 14, 0, 0];
    let ahead: &[&[u8]] = &[&[5, BOB1 as u8, 0], &[5, 0, 0], submit, &[7, 0], again];
    add(
        "provider_input",
        "deferred-ahead",
        prog(P_DEFERRED, &[ahead, &[&[7, 0]]].concat()),
    );
    add(
        "provider_input",
        "deferred-ahead-failure",
        prog(
            P_DEFERRED,
            &[
                ahead,
                &[
                    &[7, 1],
                    &[5, BOB1 as u8, 0],
                    &[5, 0, 0],
                    again,
                    &[7, 0],
                    submit,
                    &[7, 0],
                ],
            ]
            .concat(),
        ),
    );
    // A batch fails (nothing sent that depended on it), then one that landed but was
    // answered with an error (the provider reloads it; bob1 gets the envelope).
    add(
        "provider_input",
        "deferred-failure",
        prog(
            P_DEFERRED,
            &[
                &[5, 0, 0],
                submit,
                &[7, 1],
                &[5, 0, 0],
                submit,
                &[7, 2],
                &[5, BOB1 as u8, 0],
            ],
        ),
    );
    // A connection refused (a frame that does not decode) while a batch is out: when
    // the batch fails, it is closed with all the others (its `Close` was once dropped).
    add(
        "provider_input",
        "deferred-failure-refused",
        prog(
            P_DEFERRED,
            &[
                &[5, 0, 0],
                submit,
                &[0, 0],
                &[2, 0, 0, 2, 0xff, 0xff],
                &[7, 1],
            ],
        ),
    );
    // Signed in at two.example (G1's queued creation relayed and acknowledged), alice1's
    // envelope to rita is relayed before the batch queuing it is durable and
    // acknowledged before the batch is answered.
    add(
        "provider_input",
        "deferred-federation",
        prog(
            P_DEFERRED,
            &[
                &[10, 0, 1],
                &[13, 0, 0, 0],
                &[13, 0, 3],
                &[13, 0, 4, 0],
                &[5, 0, 0],
                submit,
                &[13, 0, 4, 0],
                &[7, 0],
            ],
        ),
    );

    // client_input: programs (see the opcodes on `client_input`).
    add("client_input", "handshake-only", vec![0]);
    add(
        "client_input",
        "manual-handshake",
        vec![C_NO_HANDSHAKE, 2, 1, 3, 0, 4, 0],
    );
    add(
        "client_input",
        "wrong-provider-key",
        vec![C_NO_HANDSHAKE, 2, 1, 3, 3, 6, 3],
    );
    // alice's session: a1 (setup), a2, a3 delivered and acknowledged; the receipts and
    // the prekey publication answered.
    add(
        "client_input",
        "deliver-session",
        vec![
            0, 8, 2, 1, 0, 0, 2, 0, 1, 3, 0, 2, 7, 0, 7, 7, 0, 7, 7, 0, 7,
        ],
    );
    // carol is unknown: her envelope is held, her list fetched, the envelope released.
    add(
        "client_input",
        "hold-unknown-sender",
        vec![0, 8, 0, 5, 0, 4, 7, 1, 7, 7, 0, 7],
    );
    // bob's own new device: his list is fetched.
    add(
        "client_input",
        "own-new-device",
        vec![0, 8, 0, 7, 0, 6, 7, 1, 7],
    );
    // bob sends to alice: bundles fetched, the message sealed, submitted, stored.
    add(
        "client_input",
        "send-to-alice",
        vec![0, 9, 0, 5, 7, 1, 7, 7, 0, 7, 7, 0, 7],
    );
    add(
        "client_input",
        "send-offline-expiry",
        vec![C_NO_HANDSHAKE, 9, 0, 5, 6, 11, 6, 11],
    );
    add(
        "client_input",
        "send-verified-mismatch",
        vec![C_VERIFIED_OTHER, 9, 0, 5, 7, 1, 7],
    );
    add(
        "client_input",
        "notices",
        vec![0, 8, 1, 1, 3, 0, 0, 2, 4, 5],
    );
    add(
        "client_input",
        "retryable-error",
        vec![0, 9, 1, 5, 7, 1, 6, 2, 6, 3, 7, 0, 7],
    );
    add(
        "client_input",
        "reconnect",
        vec![0, 5, 6, 3, 1, 8, 0, 9, 0, 0],
    );
    add("client_input", "goodbye", vec![0, 4, 2, 6, 3]);
    // Groups (see `ClientWorld::group_items`): alice creates CG1 with Bob, adds carol.
    add("client_input", "group-create", vec![0, 13, 1, 0, 0, 0, 1]);
    // carol adds Bob to CG2: he joins from the snapshot.
    add("client_input", "group-join", vec![0, 13, 0, 0, 3]);
    // CG1, alice's sender key over her session, her messages 0 and 2.
    add(
        "client_input",
        "group-messages",
        vec![0, 13, 3, 0, 0, 4, 0, 0, 7, 0, 9],
    );
    // Raw group bodies: refused, each acknowledged once.
    add(
        "client_input",
        "group-garbage",
        vec![0, 13, 1, 3, 0, 3, 1, 2, 3, 3, 1, 0],
    );
    // The prekeys published; the app creates a group with alice (ordered), sends to it
    // (alice's bundles fetched, her key sent, the group message submitted), renames it.
    add(
        "client_input",
        "group-app",
        vec![
            0, 7, 0, 0, 14, 0, 1, 7, 0, 7, 14, 1, 0, 5, 7, 0, 7, 7, 0, 7, 7, 0, 7, 14, 2, 0, 3, 0,
            7, 0, 7,
        ],
    );
    // 17 frames of waiting group items: the oldest are dropped past the bound.
    add("client_input", "group-backlog", vec![0, 15, 0xff]);

    // provider_store_load.
    add("provider_store_load", "base", vec![1]);
    let row = |t: Table| base_rows().iter().position(|r| r.0 == t).unwrap_or(0) as u8;
    add(
        "provider_store_load",
        "delete-user",
        vec![1, 0, row(Table::Users)],
    );
    add(
        "provider_store_load",
        "edit-mailbox",
        vec![1, 1, row(Table::Mailbox), 1, 0, 0, 3, 0x10],
    );
    add(
        "provider_store_load",
        "move-prekeys",
        vec![1, 3, row(Table::Prekeys), 2],
    );
    add(
        "provider_store_load",
        "grow-outbound",
        vec![1, 5, row(Table::Outbound), 2, 2],
    );
    add(
        "provider_store_load",
        "delete-group",
        vec![1, 0, row(Table::Groups)],
    );
    add(
        "provider_store_load",
        "edit-group",
        vec![1, 1, row(Table::Groups), 1, 0, 0, 0x10, 1],
    );
    add(
        "provider_store_load",
        "mailbox-row-as-group",
        vec![1, 3, row(Table::Mailbox), 7],
    );
    add(
        "provider_store_load",
        "grow-group",
        vec![1, 5, row(Table::Groups), 1, 1],
    );
    add(
        "provider_store_load",
        "meta-garbage",
        vec![1, 4, 6, 3, b'x', b'y', b'z', 0, 1, 7],
    );
    let mut raw = vec![0u8];
    for (t, k, v) in base_rows() {
        raw.push(TABLES.iter().position(|x| x == t).unwrap_or(0) as u8);
        raw.push(k.len().min(255) as u8);
        raw.extend_from_slice(&k[..k.len().min(255)]);
        raw.extend_from_slice(&(v.len().min(4095) as u16).to_be_bytes());
        raw.extend_from_slice(&v[..v.len().min(4095)]);
    }
    add("provider_store_load", "base-as-raw-rows", raw);

    // state_restore (its checks are in `session_checks.rs`, under the key `[0x5a; 32]`):
    // an account with a group record, as a blob (mode 0) and as the plaintext (mode 1,
    // used afterwards). Not named `seed-*`, so that `gen_session_corpus` keeps them;
    // `tests/fuzz_corpus_session.rs` replays them.
    let key = Secret::new([0x5a; 32]);
    let blob = group_account(&key);
    let plaintext = open_state(&blob, &key).expect("own blob opens");
    out.push((
        "state_restore",
        "group-account-blob".into(),
        [&[0u8][..], &blob].concat(),
    ));
    // The same account with a position kept for a user added after Bob's chain was made
    // (`GroupRecordState.late`, SPEC.md 19.2): it must restore.
    let late = with_late_entry(&plaintext, "dave@four.example", 1);
    assert_ne!(late, plaintext);
    Account::restore(&seal_state(&late, &key), &key).expect("the late seed restores");
    // The field is read: a position past the chain's current one is refused.
    let past = with_late_entry(&plaintext, "dave@four.example", 100);
    assert!(Account::restore(&seal_state(&past, &key), &key).is_err());
    out.push((
        "state_restore",
        "group-account-plaintext".into(),
        [&[1u8, 0x17][..], &plaintext].concat(),
    ));
    out.push((
        "state_restore",
        "group-account-late-plaintext".into(),
        [&[1u8, 0x17][..], &late].concat(),
    ));
    out
}
