//! The body of every fuzz target, and the seeds of its corpus (STYLE.md C12).
//!
//! This one file is compiled twice: as `kogge_fuzz::checks` for the cargo-fuzz targets
//! in `fuzz/fuzz_targets/`, and by `#[path]` into `tests/fuzz_corpus.rs`, which replays
//! `fuzz/corpus/<target>/*` under `cargo test`. It uses only the public `kogge` API
//! plus `bytes`, `rand_chacha` and `rand_core`, which both crates have.
//!
//! Every check must return normally for any input; a panic (a failed `assert!`
//! included) is a finding. Expensive set-up (keys, certificates, sealed envelopes,
//! fingerprints) is built once per process in a [`LazyLock`].

// A failed check must panic: that is how libFuzzer and the test report a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::LazyLock;

use bytes::Bytes;
use kogge::UnixMillis;
use kogge::address::{Address, AddressError, Domain};
use kogge::envelope::{
    self, Content, ContentError, KnownDevices, MessageId, OpenError, Opened, Outgoing, Receipt,
    ReceiptKind, ReplayWindow, SealError, Text, UnverifiedEnvelope,
};
use kogge::identity::{
    Device, DeviceCertificate, DeviceEvent, DeviceId, DeviceKeyPair, DeviceList, DeviceListError,
    DeviceLists, Fingerprint, IdentityKey, IdentityKeyPair, SafetyNumber, decode_scannable,
};
use kogge::limits::{
    AEAD_TAG_LEN, MAX_ADDRESS_LEN, MAX_CIPHERTEXT_LEN, MAX_DEVICES_PER_USER, MAX_DOMAIN_LEN,
    MAX_ENVELOPE_LEN, MAX_HEADER_LEN, MAX_LOCAL_PART_LEN, MAX_PLAINTEXT_LEN, MAX_RECEIPT_IDS,
    PADDING_BLOCK, PROTOCOL_VERSION,
};
use kogge::session::{PrekeyBundle, PrekeyKind, PrekeyStore, SignedPrekey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The check of one target: returns normally for every input, or panics on a finding.
pub type Check = fn(&[u8]);

/// Every target: its name (the `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`)
/// and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("address", address),
    ("envelope_decode", envelope_decode),
    ("certificate_decode", certificate_decode),
    ("content_decode", content_decode),
    ("fingerprint_qr", fingerprint_qr),
    ("open", open),
    ("open_batch", open_batch),
    ("device_list_decode", device_list_decode),
    ("prekey_decode", prekey_decode),
];

/// The receiver's clock in every `open` and `open_batch` run.
pub const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
const SECOND: u64 = 1000;
const DAY: u64 = 24 * 3600 * SECOND;
const YEAR: u64 = 365 * DAY;

/// Most byte edits applied to one envelope in the structured modes.
const MAX_EDITS: usize = 32;
/// Most envelopes in one `open_batch` input.
const MAX_BATCH_INPUTS: usize = 8;

// ---------------------------------------------------------------------------------------
// The fixed world: devices, a certificate directory, a replay window, honest envelopes.
// ---------------------------------------------------------------------------------------

/// One honestly sealed envelope, and what opening it on a fresh replay window gives.
pub struct Honest {
    /// The encoded envelope.
    pub bytes: Bytes,
    /// Its decoding (signed parts and signature).
    pub env: UnverifiedEnvelope,
    /// `open(bytes, bob, known, ReplayWindow::default(), NOW)`.
    pub expected: Result<Opened, OpenError>,
}

/// Everything the `open` targets need, built once.
pub struct World {
    /// Alice's identity key.
    pub alice_identity: IdentityKeyPair,
    /// Bob's identity key.
    pub bob_identity: IdentityKeyPair,
    /// The sender, in `known`.
    pub alice: Device,
    /// The recipient: every envelope is opened as this device.
    pub bob: Device,
    /// Alice's second device; `known` holds a certificate for it that expired before [`NOW`].
    pub alice_old: Device,
    /// Bob's second device (in `known`).
    pub bob_phone: Device,
    /// An unknown sender (not in `known`).
    pub carol: Device,
    /// Bob's certificate directory.
    pub known: KnownDevices,
    /// Bob's replay window, in which `honest[0]` has already been accepted.
    pub replay: ReplayWindow,
    /// The honestly sealed envelopes (to Bob unless noted in [`honest_specs`]).
    pub honest: Vec<Honest>,
}

fn seeded(n: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([n; 32])
}

/// A person: an identity key and a first device, both from `ChaCha20Rng::from_seed([n; 32])`.
fn person(
    n: u8,
    address: &str,
    not_before: UnixMillis,
    not_after: UnixMillis,
) -> (IdentityKeyPair, Device) {
    let mut rng = seeded(n);
    let identity = IdentityKeyPair::generate(&mut rng);
    let keys = DeviceKeyPair::generate(&mut rng);
    let address = Address::parse(address).expect("fixed address parses");
    let device =
        Device::new(&identity, address, keys, not_before, not_after).expect("certificate issues");
    (identity, device)
}

/// Another device of the same person, with keys from `ChaCha20Rng::from_seed([n; 32])`.
fn second_device(
    n: u8,
    identity: &IdentityKeyPair,
    of: &Device,
    not_before: UnixMillis,
    not_after: UnixMillis,
) -> Device {
    let keys = DeviceKeyPair::generate(&mut seeded(n));
    Device::new(identity, of.address().clone(), keys, not_before, not_after)
        .expect("certificate issues")
}

fn id(n: u8) -> MessageId {
    MessageId::from_bytes([n; 16])
}

/// Who seals an honest envelope.
#[derive(Clone, Copy)]
enum Who {
    Alice,
    AliceOld,
    Carol,
}

/// The honest envelopes: (sender, to Bob's phone instead of Bob, message id, timestamp,
/// content). Index 0 is pre-accepted in [`World::replay`].
fn honest_specs() -> Vec<(Who, bool, MessageId, UnixMillis, Content)> {
    let text = |media: &str, body: String, reply_to: Option<MessageId>| {
        Content::Text(Text {
            media_type: media.to_owned(),
            body,
            reply_to,
        })
    };
    let receipt = |kind, n: usize| {
        Content::Receipt(Receipt {
            kind,
            message_ids: (0..n)
                .map(|i| MessageId::from_bytes([(i % 251) as u8; 16]))
                .collect(),
        })
    };
    let at = |ms: i64| UnixMillis(NOW.0.saturating_add_signed(ms));
    let day = DAY as i64;
    vec![
        (
            Who::Alice,
            false,
            id(0x10),
            at(-60_000),
            Content::Text(Text::plain("hello Bob")),
        ),
        (
            Who::Alice,
            false,
            id(0x11),
            at(-1000),
            Content::Text(Text::plain("")),
        ),
        (
            Who::Alice,
            false,
            id(0x12),
            NOW,
            text(
                "text/markdown",
                "**hi** ünïcødé 🦀\n".to_owned(),
                Some(id(0x10)),
            ),
        ),
        (
            Who::Alice,
            false,
            id(0x13),
            at(-day),
            receipt(ReceiptKind::Delivered, 1),
        ),
        (
            Who::Alice,
            false,
            id(0x14),
            NOW,
            receipt(ReceiptKind::Read, 3),
        ),
        (
            Who::Alice,
            false,
            id(0x15),
            at(60_000),
            text("", "x".repeat(1000), None),
        ),
        (
            Who::Alice,
            false,
            id(0x16),
            at(-10 * day),
            text("text/plain", "ab ".repeat(1365), None),
        ),
        (
            Who::Alice,
            false,
            id(0x17),
            at(-2 * day),
            text("", "é".repeat(8 * 1024), None),
        ),
        (
            Who::Alice,
            false,
            id(0x18),
            at(-3 * day),
            receipt(ReceiptKind::Read, MAX_RECEIPT_IDS),
        ),
        // Refused by the replay window: too old, from the future.
        (
            Who::Alice,
            false,
            id(0x19),
            at(-40 * day),
            Content::Text(Text::plain("old")),
        ),
        (
            Who::Alice,
            false,
            id(0x1a),
            at(3600 * 1000),
            Content::Text(Text::plain("future")),
        ),
        // Unknown sender; sender certificate expired; for another device of Bob.
        (
            Who::Carol,
            false,
            id(0x1b),
            NOW,
            Content::Text(Text::plain("from carol")),
        ),
        (
            Who::AliceOld,
            false,
            id(0x1c),
            NOW,
            Content::Text(Text::plain("from an old device")),
        ),
        (
            Who::Alice,
            true,
            id(0x1d),
            NOW,
            Content::Text(Text::plain("for the phone")),
        ),
    ]
}

fn build_world() -> World {
    let from = UnixMillis(NOW.0 - YEAR);
    let to = UnixMillis(NOW.0 + YEAR);
    let (alice_identity, alice) = person(1, "alice@one.example", from, to);
    let (bob_identity, bob) = person(2, "bob@two.example", from, to);
    let (_, carol) = person(3, "carol@three.example", from, to);
    let alice_old = second_device(4, &alice_identity, &alice, from, to);
    let bob_phone = second_device(5, &bob_identity, &bob, from, to);
    let mut known = KnownDevices::new();
    for d in [&alice, &bob, &bob_phone] {
        known.insert(d.certificate().clone());
    }
    // Bob holds an earlier certificate of Alice's second device, expired before NOW.
    let expired = DeviceCertificate::issue(
        &alice_identity,
        alice_old.keys(),
        alice_old.address(),
        UnixMillis(NOW.0 - 2 * YEAR),
        from,
    )
    .expect("certificate issues");
    known.insert(expired);
    let mut rng = seeded(9);
    let honest: Vec<Honest> = honest_specs()
        .into_iter()
        .map(|(who, to_phone, message_id, timestamp, content)| {
            let sender = match who {
                Who::Alice => &alice,
                Who::AliceOld => &alice_old,
                Who::Carol => &carol,
            };
            let recipient = if to_phone { &bob_phone } else { &bob };
            let msg = Outgoing {
                recipient: recipient.certificate(),
                message_id,
                timestamp,
                content: &content,
            };
            let bytes = envelope::seal(sender, &msg, &mut rng).expect("honest envelope seals");
            let env = UnverifiedEnvelope::decode(bytes.clone()).expect("honest envelope decodes");
            let expected = envelope::open(
                bytes.clone(),
                &bob,
                &known,
                &mut ReplayWindow::default(),
                NOW,
            );
            Honest {
                bytes,
                env,
                expected,
            }
        })
        .collect();
    let mut replay = ReplayWindow::default();
    if let Some(first) = honest.first() {
        envelope::open(first.bytes.clone(), &bob, &known, &mut replay, NOW)
            .expect("honest envelope 0 opens");
    }
    World {
        alice_identity,
        bob_identity,
        alice,
        bob,
        alice_old,
        bob_phone,
        carol,
        known,
        replay,
        honest,
    }
}

/// The world, built on first use.
pub fn world() -> &'static World {
    static WORLD: LazyLock<World> = LazyLock::new(build_world);
    &WORLD
}

// ---------------------------------------------------------------------------------------
// A minimal protobuf encoder, to rebuild envelopes from (edited) parts.
// ---------------------------------------------------------------------------------------

/// A protobuf field value.
#[derive(Clone, Debug)]
enum Field {
    Varint(u64),
    Bytes(Vec<u8>),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_field(out: &mut Vec<u8>, number: u32, value: &Field) {
    let number = u64::from(number);
    match value {
        Field::Varint(v) => {
            put_varint(out, number << 3);
            put_varint(out, *v);
        }
        Field::Bytes(b) => {
            put_varint(out, (number << 3) | 2);
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    }
}

/// Encodes the fields in the given order, skipping proto3 defaults (as prost does).
fn encode_fields(fields: &[(u32, Field)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, value) in fields {
        match value {
            Field::Varint(0) => {}
            Field::Bytes(b) if b.is_empty() => {}
            _ => put_field(&mut out, *number, value),
        }
    }
    out
}

/// Encodes the fields in the given order, all of them.
fn encode_all_fields(fields: &[(u32, Field)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, value) in fields {
        put_field(&mut out, *number, value);
    }
    out
}

fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The top-level fields of a protobuf message (varint and length-delimited only),
/// without knowing its schema. `None` if it is not such a message.
fn parse_fields(mut input: &[u8]) -> Option<Vec<(u32, Field)>> {
    let mut fields = Vec::new();
    while !input.is_empty() {
        let key = get_varint(&mut input)?;
        let number = u32::try_from(key >> 3).ok()?;
        let value = match key & 7 {
            0 => Field::Varint(get_varint(&mut input)?),
            2 => {
                let len = usize::try_from(get_varint(&mut input)?).ok()?;
                if len > input.len() {
                    return None;
                }
                let (value, rest) = input.split_at(len);
                input = rest;
                Field::Bytes(value.to_vec())
            }
            _ => return None,
        };
        fields.push((number, value));
    }
    Some(fields)
}

/// `kogge.v1.Envelope`.
fn encode_envelope(version: u64, header: &[u8], ciphertext: &[u8], signature: &[u8]) -> Vec<u8> {
    encode_fields(&[
        (1, Field::Varint(version)),
        (2, Field::Bytes(header.to_vec())),
        (3, Field::Bytes(ciphertext.to_vec())),
        (4, Field::Bytes(signature.to_vec())),
    ])
}

/// The top-level fields of an honest envelope's header (`kogge.v1.EnvelopeHeader`),
/// read without its schema so that the fuzz targets need not follow every change to it.
fn honest_header_fields(h: &Honest) -> Vec<(u32, Field)> {
    parse_fields(h.env.header_bytes()).unwrap_or_default()
}

/// Overrides header fields: `edits = (field, len, value[len])*`. Field `f % 16` (0 means
/// 15) gets `value`, read as a little-endian number for a varint field; a field the
/// header does not have is appended as a length-delimited (unknown) field.
fn override_fields(fields: &mut Vec<(u32, Field)>, mut edits: &[u8]) {
    while let [number, len, tail @ ..] = edits {
        let len = usize::from(*len).min(tail.len());
        let (value, tail) = tail.split_at(len);
        edits = tail;
        let number = match u32::from(*number % 16) {
            0 => 15,
            n => n,
        };
        match fields.iter_mut().find(|(n, _)| *n == number) {
            Some((_, slot @ Field::Varint(_))) => *slot = Field::Varint(u64_le(value)),
            Some((_, slot)) => *slot = Field::Bytes(value.to_vec()),
            None => fields.push((number, Field::Bytes(value.to_vec()))),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Structured inputs: envelopes derived from honest ones.
// ---------------------------------------------------------------------------------------

/// Applies byte edits `[op, pos_hi, pos_lo, value]*` (at most [`MAX_EDITS`]): op % 4 is
/// 0 xor `value` into the byte at pos, 1 insert `value` at pos, 2 delete the byte at
/// pos, 3 truncate at pos. Positions are taken modulo `len + 1`.
fn apply_edits(base: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for e in edits.chunks_exact(4).take(MAX_EDITS) {
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

fn u64_le(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    for (d, s) in buf.iter_mut().zip(bytes) {
        *d = *s;
    }
    u64::from_le_bytes(buf)
}

/// Builds the envelope bytes of one input. `mode`:
///
/// * 0: `rest` is the envelope.
/// * 1: `rest = [i, edits..]`: honest envelope `i` with [`apply_edits`] on all its bytes.
/// * 2: `rest = [i, part, edits..]`: honest envelope `i` re-encoded from its parts after
///   editing one part: 0 header, 1 ciphertext, 2 signature; 3 sets the outer version
///   to the little-endian number in `edits`.
/// * 3: `rest = [i, (field, len, value[len])..]`: honest envelope `i` with its header
///   re-encoded from its fields after [`override_fields`].
///
/// Returns the bytes and whether they were derived from a current honest envelope.
pub fn materialize(mode: u8, rest: &[u8]) -> (Bytes, bool) {
    let w = world();
    if mode == 0 || w.honest.is_empty() {
        return (Bytes::copy_from_slice(rest), false);
    }
    let (&index, rest) = rest.split_first().unwrap_or((&0, &[]));
    let h = &w.honest[usize::from(index) % w.honest.len()];
    let signature = h.env.signature().to_bytes();
    let bytes = match mode {
        1 => apply_edits(&h.bytes, rest),
        2 => {
            let (&part, edits) = rest.split_first().unwrap_or((&0, &[]));
            let (mut header, mut ct, mut sig) = (
                h.env.header_bytes().to_vec(),
                h.env.ciphertext().to_vec(),
                signature.to_vec(),
            );
            let mut version = u64::from(PROTOCOL_VERSION);
            match part % 4 {
                0 => header = apply_edits(&header, edits),
                1 => ct = apply_edits(&ct, edits),
                2 => sig = apply_edits(&sig, edits),
                _ => version = u64_le(edits),
            }
            encode_envelope(version, &header, &ct, &sig)
        }
        _ => {
            let mut fields = honest_header_fields(h);
            override_fields(&mut fields, rest);
            let header = encode_all_fields(&fields);
            encode_envelope(
                u64::from(PROTOCOL_VERSION),
                &header,
                h.env.ciphertext(),
                &signature,
            )
        }
    };
    (Bytes::from(bytes), true)
}

/// Whether two opened envelopes carry the same message (everything except the
/// ephemeral key, which depends on how `seal` draws randomness).
fn same_message(a: &Opened, b: &Opened) -> bool {
    a.header.sender == b.header.sender
        && a.header.sender_device == b.header.sender_device
        && a.header.recipient == b.header.recipient
        && a.header.recipient_device == b.header.recipient_device
        && a.header.message_id == b.header.message_id
        && a.header.timestamp == b.header.timestamp
        && a.sender_identity == b.sender_identity
        && a.content == b.content
}

/// The forgery check. `bytes` opened as `opened`: its signed parts (header bytes and
/// ciphertext) and signature must be exactly those of an honest envelope, and the
/// result exactly what that envelope opens to. Inputs not derived from the current
/// world (raw corpus files, possibly sealed by an older `seal`) must at least carry
/// the same message as an honest envelope.
fn check_opened_is_honest(bytes: &Bytes, opened: &Opened, derived: bool) {
    let w = world();
    let env = UnverifiedEnvelope::decode(bytes.clone()).expect("an envelope that opened decodes");
    let exact = w.honest.iter().find(|h| {
        h.env.header_bytes() == env.header_bytes() && h.env.ciphertext() == env.ciphertext()
    });
    match exact {
        Some(h) => {
            assert_eq!(
                env.signature(),
                h.env.signature(),
                "a second valid signature"
            );
            assert_eq!(
                h.expected.as_ref(),
                Ok(opened),
                "opened differently from the honest envelope"
            );
        }
        None => {
            assert!(
                !derived,
                "an edited envelope opened with new signed parts: {opened:?}"
            );
            assert!(
                w.honest
                    .iter()
                    .any(|h| h.expected.as_ref().is_ok_and(|e| same_message(e, opened))),
                "an envelope opened that no honest party sealed: {opened:?}"
            );
        }
    }
}

/// What can be observed of a replay window: its size and the floor of every sender.
fn window_state(replay: &ReplayWindow) -> (usize, Vec<UnixMillis>) {
    let w = world();
    let floors = [&w.alice, &w.bob, &w.carol]
        .iter()
        .map(|d| replay.floor(d.address()))
        .collect();
    (replay.len(), floors)
}

/// Opens `bytes` as Bob with a copy of the world's replay window, and checks the result.
fn open_and_check(bytes: Bytes, derived: bool) {
    let w = world();
    let mut replay = w.replay.clone();
    let before = window_state(&replay);
    let decoded = UnverifiedEnvelope::decode(bytes.clone());
    let result = envelope::open(bytes.clone(), &w.bob, &w.known, &mut replay, NOW);
    if let Err(e) = &decoded {
        assert_eq!(result.as_ref().err(), Some(e), "open and decode disagree");
    }
    match result {
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            assert_eq!(
                window_state(&replay),
                before,
                "a failed open changed the replay window"
            );
        }
        Ok(opened) => {
            check_opened_is_honest(&bytes, &opened, derived);
            assert_eq!(
                replay.len(),
                before.0 + 1,
                "an opened envelope was not recorded"
            );
            let again = envelope::open(bytes, &w.bob, &w.known, &mut replay, NOW);
            assert_eq!(
                again,
                Err(OpenError::Replay),
                "the same envelope opened twice"
            );
        }
    }
}

/// Mode 4 of `open`: seals decodable content from Alice to Bob and opens it again.
fn seal_open_round_trip(plaintext: &[u8]) {
    let Ok(content) = Content::decode(plaintext) else {
        return;
    };
    if content == Content::Unknown {
        return;
    }
    let w = world();
    let msg = Outgoing {
        recipient: w.bob.certificate(),
        message_id: id(0x77),
        timestamp: NOW,
        content: &content,
    };
    match envelope::seal(&w.alice, &msg, &mut seeded(0x42)) {
        Ok(sealed) => {
            let opened =
                envelope::open(sealed, &w.bob, &w.known, &mut ReplayWindow::default(), NOW)
                    .expect("an honestly sealed envelope opens");
            assert_eq!(opened.content, content);
            assert_eq!(opened.header.sender, *w.alice.address());
            assert_eq!(opened.header.message_id, id(0x77));
        }
        Err(SealError::Content(ContentError::TooLarge { .. })) => {
            assert!(
                plaintext.len() + PADDING_BLOCK > MAX_PLAINTEXT_LEN,
                "small content too large to seal"
            );
        }
        Err(e) => panic!("decoded content does not seal: {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The targets.
// ---------------------------------------------------------------------------------------

/// `address`: `Address::parse`, `parse_canonical` and `Domain::parse` on the input as
/// (lossy) UTF-8; parsing is idempotent and agrees with the canonical parser.
pub fn address(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let s: &str = &s;
    let has_upper = s.bytes().any(|b| b.is_ascii_uppercase());

    let parsed = Address::parse(s);
    let canonical = Address::parse_canonical(s);
    assert_eq!(s.parse::<Address>(), parsed);
    match &parsed {
        Ok(a) => {
            assert_eq!(a.as_str(), s.to_ascii_lowercase());
            assert!(a.as_str().len() <= MAX_ADDRESS_LEN);
            assert!(a.local_part().len() <= MAX_LOCAL_PART_LEN);
            assert!(a.domain_str().len() <= MAX_DOMAIN_LEN);
            assert_eq!(Address::parse_canonical(a.as_str()).as_ref(), Ok(a));
            assert_eq!(Address::parse(a.as_str()).as_ref(), Ok(a));
            if has_upper {
                assert_eq!(canonical, Err(AddressError::NotCanonical));
            } else {
                assert_eq!(canonical.as_ref(), Ok(a));
            }
            assert_eq!(format!("{}@{}", a.local_part(), a.domain_str()), a.as_str());
            assert_eq!(a.to_string(), a.as_str());
            let d = a.domain();
            assert_eq!(d.as_str(), a.domain_str());
            assert_eq!(Domain::parse_canonical(a.domain_str()).as_ref(), Ok(&d));
            assert!(a.is_at(&d));
            assert_eq!(Address::new(a.local_part(), &d).as_ref(), Ok(a));
        }
        Err(e) => {
            assert!(
                canonical.is_err(),
                "canonical parser accepts what the folding one refuses"
            );
            assert!(!e.to_string().is_empty());
        }
    }

    let domain = Domain::parse(s);
    let domain_canonical = Domain::parse_canonical(s);
    assert_eq!(s.parse::<Domain>(), domain);
    match &domain {
        Ok(d) => {
            assert_eq!(d.as_str(), s.to_ascii_lowercase());
            assert!(d.as_str().len() <= MAX_DOMAIN_LEN);
            assert_eq!(Domain::parse_canonical(d.as_str()).as_ref(), Ok(d));
            if has_upper {
                assert_eq!(domain_canonical, Err(AddressError::NotCanonical));
            } else {
                assert_eq!(domain_canonical.as_ref(), Ok(d));
            }
            assert_eq!(d.to_string(), d.as_str());
            let a = Address::new("x", d).expect("x@<valid domain> is an address");
            assert!(a.is_at(d));
            assert_eq!(a.domain_str(), d.as_str());
        }
        Err(_) => assert!(
            domain_canonical.is_err(),
            "canonical domain parser accepts a refused domain"
        ),
    }
}

/// `envelope_decode`: `UnverifiedEnvelope::decode`; a decoded envelope respects the
/// limits, borrows from the input, and its header re-encodes to the same header.
pub fn envelope_decode(data: &[u8]) {
    // The input read as a header, and below the envelope's own header: the plain-encoding
    // fast path and prost agree.
    assert!(kogge::envelope::header_decoders_agree(data));
    let input = Bytes::copy_from_slice(data);
    let env = match UnverifiedEnvelope::decode(input.clone()) {
        Ok(env) => env,
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            return;
        }
    };
    assert!(data.len() <= MAX_ENVELOPE_LEN);
    let (header, ct) = (env.header_bytes(), env.ciphertext());
    assert!(header.len() <= MAX_HEADER_LEN);
    assert!((AEAD_TAG_LEN..=MAX_CIPHERTEXT_LEN).contains(&ct.len()));
    // Zero-copy: the parts are slices of the input.
    let range = input.as_ptr() as usize..=input.as_ptr() as usize + input.len();
    for part in [header, ct] {
        if !part.is_empty() {
            let start = part.as_ptr() as usize;
            assert!(
                range.contains(&start) && range.contains(&(start + part.len())),
                "a part was copied"
            );
        }
    }
    assert!(kogge::envelope::header_decoders_agree(header));
    let h = env.claimed_header();
    assert_eq!(h.version, PROTOCOL_VERSION);
    assert_eq!(
        Address::parse_canonical(h.sender.as_str()).as_ref(),
        Ok(&h.sender)
    );
    assert_eq!(
        Address::parse_canonical(h.recipient.as_str()).as_ref(),
        Ok(&h.recipient)
    );
    // The canonical re-encoding of the outer envelope decodes to the same envelope.
    let signature = env.signature().to_bytes();
    let again = encode_envelope(u64::from(PROTOCOL_VERSION), header, ct, &signature);
    let env2 =
        UnverifiedEnvelope::decode(Bytes::from(again)).expect("canonical re-encoding decodes");
    assert_eq!(env2.header_bytes(), header);
    assert_eq!(env2.claimed_header(), h);
    assert_eq!(env2.ciphertext(), ct);
    assert_eq!(env2.signature(), env.signature());
    assert!(!format!("{env:?}").is_empty());
}

/// `certificate_decode`: `DeviceCertificate::decode`; a decoded certificate decodes
/// again from its `encoded()` to an equal certificate, and its fields are consistent. The
/// same bytes as a `CertificateRequest` (the device's half, for linking): never both a
/// certificate and a request, and a request decodes again to an equal one.
pub fn certificate_decode(data: &[u8]) {
    let input = Bytes::copy_from_slice(data);
    match kogge::identity::CertificateRequest::decode(input.clone()) {
        Ok(request) => {
            assert_eq!(request.encoded(), &input);
            assert_eq!(
                kogge::identity::CertificateRequest::decode(input.clone()).as_ref(),
                Ok(&request)
            );
            assert!(DeviceCertificate::decode(input.clone()).is_err());
            assert!(request.not_before() <= request.not_after());
        }
        Err(e) => assert!(!e.code().is_empty() && !e.to_string().is_empty()),
    }
    let cert = match DeviceCertificate::decode(input.clone()) {
        Ok(cert) => cert,
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            return;
        }
    };
    assert_eq!(cert.encoded(), &input);
    assert_eq!(
        DeviceCertificate::decode(cert.encoded().clone()).as_ref(),
        Ok(&cert)
    );
    assert_eq!(DeviceId::derive(cert.signing_key()), cert.device_id());
    assert!(cert.not_before() <= cert.not_after());
    assert!(cert.is_valid_at(cert.not_before()) && cert.is_valid_at(cert.not_after()));
    assert_eq!(
        Address::parse_canonical(cert.address().as_str()).as_ref(),
        Ok(cert.address())
    );
    assert_eq!(
        IdentityKey::from_bytes(&cert.identity_key().to_bytes()).ok(),
        Some(*cert.identity_key())
    );
    assert!(!format!("{cert:?}").is_empty());
}

/// `content_decode`: `Content::decode`; known content re-encodes (padded) and decodes
/// to an equal value.
pub fn content_decode(data: &[u8]) {
    let content = match Content::decode(data) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    if content == Content::Unknown {
        return;
    }
    match content.encode_padded() {
        Ok(enc) => {
            assert_eq!(enc.len() % PADDING_BLOCK, 0, "padding is not a whole block");
            assert!(enc.len() <= MAX_PLAINTEXT_LEN);
            assert_eq!(
                Content::decode(&enc).as_ref(),
                Ok(&content),
                "content does not round-trip"
            );
            assert_eq!(
                content.encode_padded().as_ref(),
                Ok(&enc),
                "encoding is not deterministic"
            );
        }
        // Decoded content without padding may be too large once padded.
        Err(ContentError::TooLarge { .. }) => {
            assert!(
                data.len() + PADDING_BLOCK > MAX_PLAINTEXT_LEN,
                "small content too large to encode"
            );
        }
        Err(e) => panic!("decoded content does not encode: {e:?} for {content:?}"),
    }
}

/// Alice's and Bob's fingerprints (each at their own address).
struct Fingerprints {
    alice: Fingerprint,
    bob: Fingerprint,
}

fn fingerprints() -> &'static Fingerprints {
    static FPS: LazyLock<Fingerprints> = LazyLock::new(|| {
        let w = world();
        let of = |d: &Device| d.certificate().identity_key().fingerprint(d.address());
        Fingerprints {
            alice: of(&w.alice),
            bob: of(&w.bob),
        }
    });
    &FPS
}

/// `fingerprint_qr`: `decode_scannable` and `SafetyNumber::verify_scanned`, which must
/// accept exactly the payloads that decode to the expected pair.
pub fn fingerprint_qr(data: &[u8]) {
    let fps = fingerprints();
    let decoded = decode_scannable(data);
    // Alice's view (local Alice, remote Bob) and Bob's.
    for (local, remote) in [(fps.alice, fps.bob), (fps.bob, fps.alice)] {
        let sn = SafetyNumber::from_fingerprints(local, remote);
        let verdict = sn.verify_scanned(data);
        match decoded {
            Err(e) => assert_eq!(verdict, Err(e)),
            Ok(pair) if pair == (remote, local) => assert_eq!(verdict, Ok(())),
            Ok(_) => assert!(verdict.is_err(), "a mismatching QR payload verified"),
        }
    }
    if let Ok((own, peer)) = decoded {
        // The shower shows (own, peer); the scanner holds (local = peer, remote = own).
        let shower = SafetyNumber::from_fingerprints(own, peer);
        let scanner = SafetyNumber::from_fingerprints(peer, own);
        assert_eq!(scanner.verify_scanned(data), Ok(()));
        assert_eq!(decode_scannable(&shower.qr_payload()), Ok((own, peer)));
        assert_eq!(scanner.verify_scanned(&shower.qr_payload()), Ok(()));
        assert_eq!(
            shower.digits(),
            scanner.digits(),
            "the two sides see different numbers"
        );
        let digits = shower.digits();
        assert_eq!(digits.len(), 60);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(shower.grouped().replace(' ', ""), digits);
        assert_eq!(own.digits().len(), 30);
    }
}

/// `open`: `envelope::open` as Bob in the fixed world. The first byte selects the mode
/// (`% 5`): 0–3 as in [`materialize`], 4 seals the rest (if it is valid content) from
/// Alice and opens it. An envelope opens only if it is honest, and a failed open leaves
/// the replay window unchanged.
pub fn open(data: &[u8]) {
    let (&selector, rest) = data.split_first().unwrap_or((&0, &[]));
    match selector % 5 {
        4 => seal_open_round_trip(rest),
        mode => {
            let (bytes, derived) = materialize(mode, rest);
            open_and_check(bytes, derived);
        }
    }
}

/// Splits an `open_batch` input into up to [`MAX_BATCH_INPUTS`] envelopes: each is
/// `[len_lo, len_hi, selector, rest[len - 1]]`, built by [`materialize`] with mode
/// `selector % 4`.
fn batch_inputs(data: &[u8]) -> Vec<(Bytes, bool)> {
    let mut inputs = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && inputs.len() < MAX_BATCH_INPUTS {
        let chunk = match rest {
            [lo, hi, tail @ ..] => {
                let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
                let (chunk, tail) = tail.split_at(len);
                rest = tail;
                chunk
            }
            _ => std::mem::take(&mut rest),
        };
        let (&selector, chunk) = chunk.split_first().unwrap_or((&0, &[]));
        inputs.push(materialize(selector % 4, chunk));
    }
    inputs
}

/// `open_batch`: batch verification gives, for every envelope, exactly what single
/// `open` gives when the envelopes are opened one after another on a replay window
/// that starts as the batch's did (so for non-duplicates: what a fresh window gives).
pub fn open_batch(data: &[u8]) {
    let w = world();
    let (inputs, derived): (Vec<Bytes>, Vec<bool>) = batch_inputs(data).into_iter().unzip();
    let mut batch_window = w.replay.clone();
    let results = envelope::open_batch(&inputs, &w.bob, &w.known, &mut batch_window, NOW);
    assert_eq!(results.len(), inputs.len());
    let mut single_window = w.replay.clone();
    for (i, (bytes, batch)) in inputs.iter().zip(&results).enumerate() {
        let single = envelope::open(bytes.clone(), &w.bob, &w.known, &mut single_window, NOW);
        assert_eq!(
            &single, batch,
            "envelope {i}: batch and single verification disagree"
        );
        if let Ok(opened) = batch {
            check_opened_is_honest(bytes, opened, derived[i]);
        }
    }
    assert_eq!(batch_window.len(), single_window.len());
    assert_eq!(window_state(&batch_window), window_state(&single_window));
}

/// `device_list_decode`: `DeviceList::decode` and `decode_for`; a decoded list decodes
/// again from its `encoded()`, lists only its owner's devices, each once, and a fresh
/// `DeviceLists` tracker takes it once (then refuses it as stale, unchanged).
pub fn device_list_decode(data: &[u8]) {
    let w = world();
    let input = Bytes::copy_from_slice(data);
    let list = match DeviceList::decode(input.clone()) {
        Ok(list) => list,
        Err(e) => {
            assert!(!e.code().is_empty() && !e.to_string().is_empty());
            assert_eq!(
                DeviceList::decode_for(input, w.alice.address()).err(),
                Some(e)
            );
            return;
        }
    };
    assert_eq!(list.encoded(), &input);
    assert_eq!(DeviceList::decode(input.clone()).as_ref(), Ok(&list));
    let devices = list.devices();
    assert!(!devices.is_empty() && devices.len() <= MAX_DEVICES_PER_USER);
    for (i, cert) in devices.iter().enumerate() {
        assert_eq!(cert.address(), list.address());
        assert_eq!(cert.identity_key(), list.identity_key());
        assert!(
            devices[..i]
                .iter()
                .all(|c| c.device_id() != cert.device_id())
        );
        assert!(list.contains(cert.device_id()));
        assert_eq!(list.get(cert.device_id()), Some(cert));
    }
    assert_eq!(list.device_ids().count(), devices.len());
    assert_eq!(
        DeviceList::decode_for(input.clone(), list.address()).as_ref(),
        Ok(&list)
    );
    let other = if list.address() == w.carol.address() {
        w.bob.address()
    } else {
        w.carol.address()
    };
    assert!(matches!(
        DeviceList::decode_for(input, other),
        Err(DeviceListError::AddressMismatch { .. })
    ));
    let mut tracker = DeviceLists::new();
    let events = tracker
        .update(list.clone())
        .expect("a fresh tracker takes any list");
    assert_eq!(events.len(), 1 + devices.len());
    assert!(matches!(
        events.first(),
        Some(DeviceEvent::IdentityFirstSeen { .. })
    ));
    assert!(matches!(
        tracker.update(list.clone()),
        Err(DeviceListError::Stale { .. })
    ));
    assert_eq!(tracker.get(list.address()), Some(&list));
    assert_eq!(tracker.len(), 1);
}

/// Bob's prekeys: a store and the one-time prekeys it published.
struct Prekeys {
    store: PrekeyStore,
    one_time: Vec<SignedPrekey>,
}

fn prekeys() -> &'static Prekeys {
    static PREKEYS: LazyLock<Prekeys> = LazyLock::new(|| {
        let w = world();
        let mut rng = seeded(11);
        let mut store = PrekeyStore::new(&w.bob, NOW, &mut rng);
        let one_time = store.replenish(&w.bob, NOW, &mut rng);
        Prekeys { store, one_time }
    });
    &PREKEYS
}

/// `prekey_decode`: `PrekeyBundle::decode`, and `SignedPrekey::decode` against Bob's
/// certificate, on the same input. Whatever decodes re-encodes to an equal value, with
/// the kinds and roles a bundle requires, all from the certified device.
pub fn prekey_decode(data: &[u8]) {
    let w = world();
    let input = Bytes::copy_from_slice(data);
    match PrekeyBundle::decode(input.clone()) {
        Ok(bundle) => {
            assert_eq!(PrekeyBundle::decode(bundle.encode()).as_ref(), Ok(&bundle));
            let device = bundle.certificate().device_id();
            let (spk, kpk) = (bundle.signed_prekey(), bundle.kem_prekey());
            assert_eq!(spk.kind(), PrekeyKind::X25519);
            assert!(!spk.is_one_time());
            assert_eq!(kpk.kind(), PrekeyKind::MlKem768);
            assert!(!kpk.is_one_time());
            if let Some(otk) = bundle.one_time_prekey() {
                assert_eq!(otk.kind(), PrekeyKind::X25519);
                assert!(otk.is_one_time());
            }
            for p in [Some(spk), Some(kpk), bundle.one_time_prekey()]
                .into_iter()
                .flatten()
            {
                assert_eq!(p.device_id(), device);
                let again = SignedPrekey::decode(p.encoded().clone(), bundle.certificate());
                assert_eq!(again.as_ref(), Ok(p));
            }
        }
        Err(e) => assert!(!e.code().is_empty() && !e.to_string().is_empty()),
    }
    match SignedPrekey::decode(input.clone(), w.bob.certificate()) {
        Ok(p) => {
            assert_eq!(p.encoded(), &input);
            assert_eq!(p.device_id(), w.bob.id());
            let again = SignedPrekey::decode(input.clone(), w.bob.certificate());
            assert_eq!(again.as_ref(), Ok(&p));
            // Bob's prekey is not his phone's.
            assert!(SignedPrekey::decode(input, w.bob_phone.certificate()).is_err());
        }
        Err(e) => assert!(!e.code().is_empty() && !e.to_string().is_empty()),
    }
}

// ---------------------------------------------------------------------------------------
// Seeds (regenerate with `cargo run --release --manifest-path fuzz/Cargo.toml --example gen_corpus`).
// ---------------------------------------------------------------------------------------

/// One seed: the target, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

fn address_seeds() -> Vec<Vec<u8>> {
    let max = format!(
        "{}@{}.{}.{}.{}",
        "a".repeat(MAX_LOCAL_PART_LEN),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(63),
        "e".repeat(61)
    );
    let texts: Vec<String> = [
        "alice@one.example",
        "Alice.Smith@One.Example",
        "a@localhost",
        "a-b_c.d9@xn--bcher-kva.example",
        "0@a1.b-c.d",
        "one.example",
        "ONE.EXAMPLE",
        "xn--bcher-kva.example",
        "",
        "alice",
        "@one.example",
        "alice@",
        ".alice@x.y",
        "alice.@x.y",
        "al..ice@x.y",
        "al-_ice@x.y",
        "alice@x..y",
        "alice@x.y.",
        "alice@-x.y",
        "alice@x-.y",
        "alice@1.2.3.4",
        "a@b@c.d",
        "al ice@x.y",
        "alicé@x.y",
        "alice@bücher.example",
        "alice@x_y.z",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([
        max.clone(),
        max.to_ascii_uppercase(),
        format!("{max}x"),
        format!("{}@x.y", "a".repeat(MAX_LOCAL_PART_LEN + 1)),
        format!("a@{}.y", "b".repeat(64)),
    ])
    .collect();
    let mut seeds: Vec<Vec<u8>> = texts.into_iter().map(String::into_bytes).collect();
    seeds.push(b"a\xff@x.y".to_vec());
    seeds.push(vec![0xc3, 0x28, b'@', b'x']);
    seeds
}

fn envelope_seeds() -> Vec<Vec<u8>> {
    let w = world();
    let mut seeds: Vec<Vec<u8>> = w.honest.iter().map(|h| h.bytes.to_vec()).collect();
    let h = &w.honest[2];
    let (header, ct, sig) = (
        h.env.header_bytes(),
        h.env.ciphertext(),
        h.env.signature().to_bytes(),
    );
    seeds.push(Vec::new());
    seeds.push(h.bytes[..h.bytes.len() / 2].to_vec());
    seeds.push(encode_envelope(2, header, ct, &sig));
    seeds.push(encode_envelope(1, header, &ct[..AEAD_TAG_LEN - 1], &sig));
    seeds.push(encode_envelope(1, header, ct, &sig[..63]));
    seeds.push(encode_envelope(1, &header[..header.len() - 3], ct, &sig));
    let mut fields = honest_header_fields(h);
    override_fields(&mut fields, &[&[2, 17][..], b"Alice@one.example"].concat());
    seeds.push(encode_envelope(1, &encode_all_fields(&fields), ct, &sig));
    seeds
}

fn certificate_seeds() -> Vec<Vec<u8>> {
    let w = world();
    let mut seeds: Vec<Vec<u8>> = [&w.alice, &w.bob, &w.carol, &w.alice_old, &w.bob_phone]
        .iter()
        .map(|d| d.certificate().encoded().to_vec())
        .collect();
    let good = w.alice.certificate().encoded().to_vec();
    seeds.push(good[..good.len() - 1].to_vec());
    let mut flipped = good.clone();
    if let Some(b) = flipped.last_mut() {
        *b ^= 1;
    }
    seeds.push(flipped);
    seeds.push(Vec::new());
    seeds
}

fn content_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = honest_specs()
        .iter()
        .filter_map(|(_, _, _, _, c)| c.encode_padded().ok())
        .collect();
    seeds.push(Vec::new());
    // A future body kind; a future receipt kind; invalid UTF-8; truncated; bad reply_to.
    seeds.push(vec![0x2a, 0x02, 0x08, 0x01]);
    seeds.push(vec![
        0x12, 0x14, 0x08, 0x09, 0x12, 0x10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    ]);
    seeds.push(vec![0x0a, 0x04, 0x12, 0x02, 0xff, 0xfe]);
    seeds.push(vec![0x0a, 0x09, 0x12]);
    seeds.push(vec![0x0a, 0x05, 0x1a, 0x03, 1, 2, 3]);
    seeds
}

fn fingerprint_seeds() -> Vec<Vec<u8>> {
    let fps = fingerprints();
    let alice_view = SafetyNumber::from_fingerprints(fps.alice, fps.bob);
    let bob_view = SafetyNumber::from_fingerprints(fps.bob, fps.alice);
    let qr = |version: u64, own: &[u8], peer: &[u8]| {
        encode_fields(&[
            (1, Field::Varint(version)),
            (2, Field::Bytes(own.to_vec())),
            (3, Field::Bytes(peer.to_vec())),
        ])
    };
    let (a, b) = (fps.alice.as_bytes(), fps.bob.as_bytes());
    vec![
        alice_view.qr_payload(),
        bob_view.qr_payload(),
        qr(1, a, a),
        qr(2, b, a),
        qr(1, &b[..31], a),
        qr(1, b, &[]),
        Vec::new(),
        vec![0; 129],
    ]
}

fn edit(op: u8, pos: u16, value: u8) -> [u8; 4] {
    let [hi, lo] = pos.to_be_bytes();
    [op, hi, lo, value]
}

fn open_seeds() -> Vec<Vec<u8>> {
    let w = world();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for h in &w.honest {
        let mut s = vec![0];
        s.extend_from_slice(&h.bytes);
        seeds.push(s);
    }
    let n = w.honest.len() as u8;
    for i in 0..n {
        // Mode 3 without overrides: the same header re-encoded (opens like the original).
        seeds.push(vec![3, i]);
    }
    // Mode 1: a flipped signature bit, an inserted byte, a deleted byte, truncation.
    let mut s = vec![1, 2];
    s.extend_from_slice(&edit(0, 0xffff, 0x01));
    seeds.push(s);
    let mut s = vec![1, 4];
    s.extend_from_slice(&edit(1, 40, 0x00));
    s.extend_from_slice(&edit(2, 100, 0x00));
    seeds.push(s);
    let mut s = vec![1, 5];
    s.extend_from_slice(&edit(3, 200, 0x00));
    seeds.push(s);
    // Mode 2: edit the header, the ciphertext, the signature; another outer version.
    let mut s = vec![2, 1, 0];
    s.extend_from_slice(&edit(0, 30, 0x20));
    seeds.push(s);
    let mut s = vec![2, 1, 1];
    s.extend_from_slice(&edit(0, 5, 0x80));
    seeds.push(s);
    let mut s = vec![2, 2, 2];
    s.extend_from_slice(&edit(0, 0, 0x01));
    seeds.push(s);
    seeds.push(vec![2, 3, 3, 2]);
    // Mode 3: another timestamp, sender, recipient device, ephemeral key; unknown field.
    let mut s = vec![3, 1, 7, 8];
    s.extend_from_slice(&(NOW.0 - 5).to_le_bytes());
    seeds.push(s);
    let mut s = vec![3, 1, 2, 17];
    s.extend_from_slice(b"carol@one.example");
    seeds.push(s);
    seeds.push(vec![
        3, 2, 5, 16, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
    ]);
    seeds.push(vec![
        3, 2, 10, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0,
    ]);
    seeds.push(vec![3, 4, 11, 3, 1, 2, 3]);
    // Mode 4: seal and open content.
    for c in content_seeds() {
        let mut s = vec![4];
        s.extend_from_slice(&c);
        seeds.push(s);
    }
    seeds
}

fn open_batch_seeds() -> Vec<Vec<u8>> {
    let w = world();
    let entry = |input: &[u8]| {
        let len = u16::try_from(input.len()).expect("batch seed entry fits u16");
        let mut out = len.to_le_bytes().to_vec();
        out.extend_from_slice(input);
        out
    };
    let honest = |i: u8| entry(&[3, i]);
    let raw = |i: usize| {
        let mut s = vec![0];
        s.extend_from_slice(&w.honest[i].bytes);
        entry(&s)
    };
    let flipped = |i: u8| {
        let mut s = vec![1, i];
        s.extend_from_slice(&edit(0, 0xffff, 0x01));
        entry(&s)
    };
    let n = w.honest.len() as u8;
    vec![
        [honest(1), honest(2), honest(3)].concat(),
        [honest(1), honest(1)].concat(),
        [raw(1), raw(4), raw(5)].concat(),
        [honest(1), flipped(2), honest(4), flipped(5)].concat(),
        (0..n.min(8)).map(honest).collect::<Vec<_>>().concat(),
        (6..n).map(honest).collect::<Vec<_>>().concat(),
        [
            honest(0),
            entry(&[0, 1, 2, 3]),
            entry(&[2, 1, 0, 0, 0, 30, 0x20]),
        ]
        .concat(),
        Vec::new(),
    ]
}

fn device_list_seeds() -> Vec<Vec<u8>> {
    let w = world();
    let sign = |identity, of: &Device, serial, devices: &[&Device]| {
        let certs: Vec<DeviceCertificate> =
            devices.iter().map(|d| d.certificate().clone()).collect();
        DeviceList::sign(identity, of.address(), serial, NOW, &certs)
            .map(|l| l.encoded().to_vec())
            .expect("device list signs")
    };
    let alice = sign(&w.alice_identity, &w.alice, 1, &[&w.alice, &w.alice_old]);
    let bob = sign(&w.bob_identity, &w.bob, 7, &[&w.bob_phone, &w.bob]);
    let mut flipped = alice.clone();
    if let Some(b) = flipped.last_mut() {
        *b ^= 1;
    }
    vec![
        alice.clone(),
        bob,
        sign(&w.alice_identity, &w.alice, u64::MAX, &[&w.alice]),
        alice[..alice.len() / 2].to_vec(),
        flipped,
        Vec::new(),
    ]
}

fn prekey_seeds() -> Vec<Vec<u8>> {
    let w = world();
    let p = prekeys();
    let mut seeds = Vec::new();
    for one_time in [None, p.one_time.first().map(|k| k.id())] {
        if let Ok(bundle) = p.store.bundle(&w.bob, one_time) {
            seeds.push(bundle.encode().to_vec());
        }
    }
    let published = p.store.published();
    seeds.push(published.signed_prekey.encoded().to_vec());
    seeds.push(published.kem_prekey.encoded().to_vec());
    seeds.extend(p.one_time.iter().take(2).map(|k| k.encoded().to_vec()));
    if let Some(bundle) = seeds.first().cloned() {
        seeds.push(bundle[..bundle.len() - 1].to_vec());
    }
    seeds.push(Vec::new());
    seeds
}

/// All seeds of all targets.
pub fn seeds() -> Vec<Seed> {
    let groups: [(&'static str, Vec<Vec<u8>>); 9] = [
        ("address", address_seeds()),
        ("envelope_decode", envelope_seeds()),
        ("certificate_decode", certificate_seeds()),
        ("content_decode", content_seeds()),
        ("fingerprint_qr", fingerprint_seeds()),
        ("open", open_seeds()),
        ("open_batch", open_batch_seeds()),
        ("device_list_decode", device_list_seeds()),
        ("prekey_decode", prekey_seeds()),
    ];
    let mut out = Vec::new();
    for (target, group) in groups {
        for (i, bytes) in group.into_iter().enumerate() {
            out.push((target, format!("seed-{i:03}"), bytes));
        }
    }
    out
}
