//! Integration tests of sealing and opening envelopes, through the public API only.
//!
//! A deterministic world (fixed ChaCha20 seed): alice@one.example with two devices,
//! bob@two.example with two devices, and carol@one.example whom Bob does not know.
//! Envelopes that the public `seal` cannot produce (a broken header, a ciphertext that
//! does not decrypt, invalid content) are built here from the specification: the
//! protobuf schema is mirrored with `prost`, keys come from `crypto::x25519` and
//! `crypto::hkdf_sha256`, and the sender's signing seed (exported by
//! `DeviceKeyPair::secret_bytes`, as an application would store it) signs them.

// A test crate: its helpers (outside `#[test]` functions) panic on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;

use bytes::Bytes;
use ed25519_dalek::Signer;
use kogge::UnixMillis;
use kogge::address::Address;
use kogge::crypto::{self, Label, Secret};
use kogge::envelope::{
    self, CertificateDirectory, Content, ContentError, KnownDevices, MessageId, OpenError, Opened,
    Outgoing, Receipt, ReceiptKind, ReplayPolicy, ReplayWindow, Text, UnverifiedEnvelope,
};
use kogge::identity::{Device, DeviceCertificate, DeviceId, DeviceKeyPair, IdentityKeyPair};
use kogge::limits::{
    DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_MESSAGE_AGE_MS, MAX_CIPHERTEXT_LEN, MAX_ENVELOPE_LEN,
    MAX_HEADER_LEN,
};
use prost::Message;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
const DAY: u64 = 24 * 60 * 60 * 1000;
const MINUTE: u64 = 60 * 1000;

// ---------------------------------------------------------------------------------------
// The wire schema (proto/kogge/v1/envelope.proto), mirrored for building odd envelopes.

#[derive(Clone, PartialEq, prost::Message)]
struct WireEnvelope {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    header: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    ciphertext: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    signature: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireHeader {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(string, tag = "2")]
    sender: String,
    #[prost(bytes = "vec", tag = "3")]
    sender_device: Vec<u8>,
    #[prost(string, tag = "4")]
    recipient: String,
    #[prost(bytes = "vec", tag = "5")]
    recipient_device: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    message_id: Vec<u8>,
    #[prost(uint64, tag = "7")]
    timestamp_ms: u64,
    #[prost(int32, tag = "8")]
    content_type: i32,
    #[prost(int32, tag = "9")]
    payload_kind: i32,
    #[prost(bytes = "vec", tag = "10")]
    ephemeral_key: Vec<u8>,
}

/// An unknown varint field, number 99, value 1: tag `(99 << 3) | 0` = 792 = `98 06`.
const UNKNOWN_FIELD_99: [u8; 3] = [0x98, 0x06, 0x01];

fn parse(sealed: &[u8]) -> (WireEnvelope, WireHeader) {
    let env = WireEnvelope::decode(sealed).expect("outer envelope");
    let header = WireHeader::decode(env.header.as_slice()).expect("header");
    (env, header)
}

/// Signs `header ‖ sha256(ciphertext)` as SPEC.md 6.4 says, with the sender's seed.
fn sign(sender: &Device, header: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let (seed, _) = sender.keys().secret_bytes();
    let key = ed25519_dalek::SigningKey::from_bytes(seed.expose());
    let input = crypto::framed(
        Label::EnvelopeSignature,
        &[header, &crypto::sha256(ciphertext)],
    );
    key.sign(&input).to_bytes().to_vec()
}

fn encode(env: &WireEnvelope) -> Bytes {
    Bytes::from(env.encode_to_vec())
}

/// A validly signed envelope around arbitrary header bytes and ciphertext.
fn signed(sender: &Device, header: Vec<u8>, ciphertext: Vec<u8>) -> Bytes {
    let signature = sign(sender, &header, &ciphertext);
    encode(&WireEnvelope {
        version: 1,
        header,
        ciphertext,
        signature,
    })
}

/// Re-encodes the header of `sealed` after `edit`, keeps the ciphertext, and re-signs.
fn with_header(sealed: &[u8], sender: &Device, edit: impl FnOnce(&mut WireHeader)) -> Bytes {
    let (env, mut header) = parse(sealed);
    edit(&mut header);
    signed(sender, header.encode_to_vec(), env.ciphertext)
}

/// One-shot sealing done from the specification (SPEC.md 6.5), independently of
/// `envelope::seal`: any plaintext, any header fields, extra bytes after the header.
fn seal_raw(
    sender: &Device,
    recipient: &DeviceCertificate,
    header: &WireHeader,
    header_suffix: &[u8],
    ephemeral: x25519_dalek::StaticSecret,
    plaintext: &[u8],
) -> Bytes {
    let ephemeral_public = x25519_dalek::PublicKey::from(&ephemeral).to_bytes();
    let shared = crypto::x25519(&ephemeral, recipient.agreement_key()).expect("contributory");
    let mut salt = ephemeral_public.to_vec();
    salt.extend_from_slice(recipient.agreement_key().as_bytes());
    let mut okm = [0u8; 44];
    crypto::hkdf_sha256(&salt, shared.expose(), Label::OneShotSealKdf, &[], &mut okm)
        .expect("hkdf");
    let key = Secret::new(okm[..32].try_into().expect("32"));
    let nonce: [u8; 12] = okm[32..].try_into().expect("12");
    let mut header = header.clone();
    header.ephemeral_key = ephemeral_public.to_vec();
    let mut header_bytes = header.encode_to_vec();
    header_bytes.extend_from_slice(header_suffix);
    let aad = crypto::framed(Label::EnvelopeAad, &[&header_bytes]);
    let ciphertext = crypto::aead_seal(&key, &nonce, &aad, plaintext).expect("seal");
    signed(sender, header_bytes, ciphertext)
}

fn header_for(
    sender: &Device,
    recipient: &DeviceCertificate,
    id: MessageId,
    ts: UnixMillis,
) -> WireHeader {
    WireHeader {
        version: 1,
        sender: sender.address().as_str().to_owned(),
        sender_device: sender.id().as_bytes().to_vec(),
        recipient: recipient.address().as_str().to_owned(),
        recipient_device: recipient.device_id().as_bytes().to_vec(),
        message_id: id.as_bytes().to_vec(),
        timestamp_ms: ts.0,
        content_type: 1,
        payload_kind: 1,
        ephemeral_key: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// The world.

struct World {
    rng: ChaCha20Rng,
    alice: Device,
    alice2: Device,
    /// An alice device whose certificate expired the day before `NOW`.
    alice_expired: Device,
    bob: Device,
    bob2: Device,
    carol: Device,
    /// Bob's directory: alice's three devices (not carol's).
    bob_knows: KnownDevices,
    /// Alice's directory: bob's two devices.
    alice_knows: KnownDevices,
}

fn device(
    rng: &mut ChaCha20Rng,
    identity: &IdentityKeyPair,
    address: &str,
    not_before: UnixMillis,
    not_after: UnixMillis,
) -> Device {
    Device::new(
        identity,
        Address::parse(address).expect("address"),
        DeviceKeyPair::generate(rng),
        not_before,
        not_after,
    )
    .expect("device")
}

impl World {
    fn new() -> Self {
        let mut rng = ChaCha20Rng::from_seed([0x4b; 32]);
        let from = NOW.saturating_sub(40 * DAY);
        let until = NOW.saturating_add(365 * DAY);
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let bob_id = IdentityKeyPair::generate(&mut rng);
        let carol_id = IdentityKeyPair::generate(&mut rng);
        let alice = device(&mut rng, &alice_id, "alice@one.example", from, until);
        let alice2 = device(&mut rng, &alice_id, "alice@one.example", from, until);
        let alice_expired = device(
            &mut rng,
            &alice_id,
            "alice@one.example",
            NOW.saturating_sub(10 * DAY),
            NOW.saturating_sub(DAY),
        );
        let bob = device(&mut rng, &bob_id, "bob@two.example", from, until);
        let bob2 = device(&mut rng, &bob_id, "bob@two.example", from, until);
        let carol = device(&mut rng, &carol_id, "carol@one.example", from, until);
        let mut bob_knows = KnownDevices::new();
        for d in [&alice, &alice2, &alice_expired] {
            bob_knows.insert(d.certificate().clone());
        }
        let mut alice_knows = KnownDevices::new();
        for d in [&bob, &bob2] {
            alice_knows.insert(d.certificate().clone());
        }
        Self {
            rng,
            alice,
            alice2,
            alice_expired,
            bob,
            bob2,
            carol,
            bob_knows,
            alice_knows,
        }
    }
}

fn seal_content(
    rng: &mut ChaCha20Rng,
    from: &Device,
    to: &Device,
    content: &Content,
    ts: UnixMillis,
) -> (Bytes, MessageId) {
    let id = MessageId::random(rng);
    let sealed = envelope::seal(
        from,
        &Outgoing {
            recipient: to.certificate(),
            message_id: id,
            timestamp: ts,
            content,
        },
        rng,
    )
    .expect("seal");
    (sealed, id)
}

/// An envelope from Alice's expired device dated after its certificate ended. `seal`
/// refuses to make one, so seal within the validity period and re-sign a later date.
fn expired_envelope(w: &mut World, text: &str) -> Bytes {
    let early = seal_text(
        &mut w.rng,
        &w.alice_expired,
        &w.bob,
        text,
        NOW.saturating_sub(2 * DAY),
    );
    with_header(&early, &w.alice_expired, |h| h.timestamp_ms = NOW.0)
}

fn seal_text(
    rng: &mut ChaCha20Rng,
    from: &Device,
    to: &Device,
    body: &str,
    ts: UnixMillis,
) -> Bytes {
    seal_content(rng, from, to, &Content::Text(Text::plain(body)), ts).0
}

/// A directory that answers every lookup with the same certificate.
struct Lying<'a>(&'a DeviceCertificate);

impl CertificateDirectory for Lying<'_> {
    fn device_certificate(&self, _: &Address, _: DeviceId) -> Option<&DeviceCertificate> {
        Some(self.0)
    }
}

fn assert_refused(result: Result<Opened, OpenError>, code: &str) -> OpenError {
    match result {
        Ok(opened) => panic!("expected {code}, opened {:?}", opened.content),
        Err(e) => {
            assert_eq!(e.code(), code, "{e:?}");
            e
        }
    }
}

// ---------------------------------------------------------------------------------------
// Round trips.

#[test]
fn text_round_trip() {
    let mut w = World::new();
    let content = Content::Text(Text {
        media_type: "text/markdown".into(),
        body: "hello *Bob* 👋".into(),
        reply_to: Some(MessageId::from_bytes([9; 16])),
    });
    let (sealed, id) = seal_content(&mut w.rng, &w.alice, &w.bob, &content, NOW);
    let mut replay = ReplayWindow::default();
    let opened = envelope::open(sealed, &w.bob, &w.bob_knows, &mut replay, NOW).expect("open");
    assert_eq!(opened.content, content);
    assert_eq!(opened.header.message_id, id);
    assert_eq!(opened.header.sender, *w.alice.address());
    assert_eq!(opened.header.sender_device, w.alice.id());
    assert_eq!(opened.header.recipient, *w.bob.address());
    assert_eq!(opened.header.recipient_device, w.bob.id());
    assert_eq!(opened.header.timestamp, NOW);
    assert_eq!(
        opened.sender_identity,
        *w.alice.certificate().identity_key()
    );
    assert_eq!(replay.len(), 1);
}

#[test]
fn receipts_round_trip() {
    let mut w = World::new();
    let (m1, id1) = seal_content(
        &mut w.rng,
        &w.alice,
        &w.bob,
        &Content::Text(Text::plain("one")),
        NOW,
    );
    let (m2, id2) = seal_content(
        &mut w.rng,
        &w.alice,
        &w.bob,
        &Content::Text(Text::plain("two")),
        NOW,
    );
    let mut bob_replay = ReplayWindow::default();
    for m in [m1, m2] {
        envelope::open(m, &w.bob, &w.bob_knows, &mut bob_replay, NOW).expect("open");
    }
    let mut alice_replay = ReplayWindow::default();
    for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
        let receipt = Content::Receipt(Receipt {
            kind,
            message_ids: vec![id1, id2],
        });
        let later = NOW.saturating_add(MINUTE);
        let (sealed, _) = seal_content(&mut w.rng, &w.bob, &w.alice, &receipt, later);
        let opened = envelope::open(sealed, &w.alice, &w.alice_knows, &mut alice_replay, later)
            .expect("open receipt");
        assert_eq!(opened.content, receipt);
        assert_eq!(opened.header.sender, *w.bob.address());
    }
}

/// `seal_raw` follows SPEC.md 6.5 independently; with the same ephemeral key it must
/// produce the very bytes `envelope::seal` produces.
#[test]
fn independent_sealer_matches_seal_byte_for_byte() {
    let mut w = World::new();
    let content = Content::Text(Text::plain("same bytes"));
    let id = MessageId::from_bytes([3; 16]);
    let mut rng_copy = w.rng.clone();
    let sealed = envelope::seal(
        &w.alice,
        &Outgoing {
            recipient: w.bob.certificate(),
            message_id: id,
            timestamp: NOW,
            content: &content,
        },
        &mut w.rng,
    )
    .expect("seal");
    let ephemeral = x25519_dalek::StaticSecret::random_from_rng(&mut rng_copy);
    let ours = seal_raw(
        &w.alice,
        w.bob.certificate(),
        &header_for(&w.alice, w.bob.certificate(), id, NOW),
        &[],
        ephemeral,
        &content.encode_padded().expect("encode"),
    );
    assert_eq!(ours, sealed);
    // And the mirrored schema re-encodes the header byte for byte.
    let (env, header) = parse(&sealed);
    assert_eq!(header.encode_to_vec(), env.header);
    assert_eq!(env.encode_to_vec(), sealed.to_vec());
}

// ---------------------------------------------------------------------------------------
// Every error, from the outside.

/// Opens as Bob with a fresh replay window and checks that a failure recorded nothing.
fn open_fresh(w: &World, bytes: Bytes, now: UnixMillis) -> Result<Opened, OpenError> {
    let mut replay = ReplayWindow::default();
    let result = envelope::open(bytes, &w.bob, &w.bob_knows, &mut replay, now);
    if result.is_err() {
        assert_eq!(replay.len(), 0);
        assert_eq!(replay.floor(w.alice.address()), UnixMillis(0));
    }
    result
}

#[test]
fn every_open_error_is_reachable_from_outside() {
    let mut w = World::new();
    let good = seal_text(&mut w.rng, &w.alice, &w.bob, "hi", NOW);
    let (env, _) = parse(&good);
    let mut seen = BTreeSet::new();
    let mut check = |result: Result<Opened, OpenError>, code: &'static str| {
        assert_refused(result, code);
        seen.insert(code);
    };

    // too_large: the whole envelope, the header, the ciphertext.
    let huge = Bytes::from(vec![0u8; MAX_ENVELOPE_LEN + 1]);
    let e = envelope::open(
        huge,
        &w.bob,
        &w.bob_knows,
        &mut ReplayWindow::default(),
        NOW,
    );
    assert!(matches!(
        e,
        Err(OpenError::TooLarge {
            what: "envelope",
            ..
        })
    ));
    check(e, "too_large");
    let big_header = encode(&WireEnvelope {
        header: vec![0x08; MAX_HEADER_LEN + 1],
        ..env.clone()
    });
    let e = open_fresh(&w, big_header, NOW);
    assert!(matches!(e, Err(OpenError::TooLarge { what: "header", .. })));
    check(e, "too_large");
    let big_ct = signed(
        &w.alice,
        env.header.clone(),
        vec![0u8; MAX_CIPHERTEXT_LEN + 1],
    );
    assert!(big_ct.len() <= MAX_ENVELOPE_LEN);
    let e = open_fresh(&w, big_ct, NOW);
    assert!(matches!(
        e,
        Err(OpenError::TooLarge {
            what: "ciphertext",
            ..
        })
    ));
    check(e, "too_large");

    // decode: not protobuf at all, a truncated envelope, a header that is not protobuf.
    check(open_fresh(&w, Bytes::from_static(&[0xff]), NOW), "decode");
    check(open_fresh(&w, good.slice(..good.len() - 1), NOW), "decode");
    check(
        open_fresh(
            &w,
            signed(&w.alice, vec![0xff], env.ciphertext.clone()),
            NOW,
        ),
        "decode",
    );

    // unsupported_version: outer and header.
    let v2 = encode(&WireEnvelope {
        version: 2,
        ..env.clone()
    });
    let e = open_fresh(&w, v2, NOW);
    assert_eq!(e, Err(OpenError::UnsupportedVersion(2)));
    check(e, "unsupported_version");
    let e = open_fresh(&w, with_header(&good, &w.alice, |h| h.version = 2), NOW);
    assert_eq!(e, Err(OpenError::UnsupportedVersion(2)));
    check(e, "unsupported_version");

    // invalid_field: each fixed-length field of the envelope and header.
    let short_sig = encode(&WireEnvelope {
        signature: env.signature[..63].to_vec(),
        ..env.clone()
    });
    let e = open_fresh(&w, short_sig, NOW);
    assert_eq!(e, Err(OpenError::InvalidField("signature")));
    check(e, "invalid_field");
    let e = open_fresh(&w, signed(&w.alice, env.header.clone(), vec![0; 15]), NOW);
    assert_eq!(e, Err(OpenError::InvalidField("ciphertext")));
    check(e, "invalid_field");
    type Edit = fn(&mut WireHeader);
    let edits: [(&str, Edit); 4] = [
        ("sender_device", |h| h.sender_device.truncate(15)),
        ("recipient_device", |h| h.recipient_device.push(0)),
        ("message_id", |h| h.message_id.clear()),
        ("ephemeral_key", |h| h.ephemeral_key.truncate(31)),
    ];
    for (field, edit) in edits {
        let e = open_fresh(&w, with_header(&good, &w.alice, edit), NOW);
        assert_eq!(e, Err(OpenError::InvalidField(field)));
        check(e, "invalid_field");
    }

    // unsupported_payload_kind / unsupported_content_type: unspecified and future values.
    for kind in [0, 3] {
        let e = open_fresh(
            &w,
            with_header(&good, &w.alice, |h| h.payload_kind = kind),
            NOW,
        );
        assert_eq!(e, Err(OpenError::UnsupportedPayloadKind(kind)));
        check(e, "unsupported_payload_kind");
        let e = open_fresh(
            &w,
            with_header(&good, &w.alice, |h| h.content_type = kind),
            NOW,
        );
        assert_eq!(e, Err(OpenError::UnsupportedContentType(kind)));
        check(e, "unsupported_content_type");
    }

    // invalid_address: a non-canonical sender, a recipient without '@'.
    let e = open_fresh(
        &w,
        with_header(&good, &w.alice, |h| h.sender = "Alice@one.example".into()),
        NOW,
    );
    assert!(matches!(
        e,
        Err(OpenError::InvalidAddress {
            field: "sender",
            ..
        })
    ));
    check(e, "invalid_address");
    let e = open_fresh(
        &w,
        with_header(&good, &w.alice, |h| h.recipient = "bob".into()),
        NOW,
    );
    assert!(matches!(
        e,
        Err(OpenError::InvalidAddress {
            field: "recipient",
            ..
        })
    ));
    check(e, "invalid_address");

    // unknown_sender: carol is not in Bob's directory.
    let from_carol = seal_text(&mut w.rng, &w.carol, &w.bob, "hi", NOW);
    check(open_fresh(&w, from_carol, NOW), "unknown_sender");

    // sender_mismatch: a directory (or caller) that offers the wrong certificate, both
    // another user's and another device of the same user.
    for cert in [w.carol.certificate(), w.alice2.certificate()] {
        let mut replay = ReplayWindow::default();
        let e = envelope::open(good.clone(), &w.bob, &Lying(cert), &mut replay, NOW);
        assert_eq!(replay.len(), 0);
        check(e, "sender_mismatch");
        let e = UnverifiedEnvelope::decode(good.clone())
            .expect("decode")
            .verify(cert)
            .map(|_| unreachable!());
        check(e, "sender_mismatch");
    }

    // sender_certificate_not_valid: an envelope dated after the sender's certificate ended.
    let expired = expired_envelope(&mut w, "late");
    check(open_fresh(&w, expired, NOW), "sender_certificate_not_valid");

    // bad_signature: a flipped signature bit, a signature by another device, a changed
    // header or ciphertext under the original signature.
    let mut flipped = env.clone();
    flipped.signature[10] ^= 0x01;
    check(open_fresh(&w, encode(&flipped), NOW), "bad_signature");
    let by_alice2 = signed(&w.alice2, env.header.clone(), env.ciphertext.clone());
    check(open_fresh(&w, by_alice2, NOW), "bad_signature");
    let mut ct = env.clone();
    ct.ciphertext[0] ^= 0x80;
    check(open_fresh(&w, encode(&ct), NOW), "bad_signature");
    let mut later = env.clone();
    later.header = {
        let (_, mut h) = parse(&good);
        h.timestamp_ms += 1;
        h.encode_to_vec()
    };
    check(open_fresh(&w, encode(&later), NOW), "bad_signature");

    // wrong_recipient: another user, and another device of the same user.
    for other in [&w.carol, &w.bob2] {
        let mut replay = ReplayWindow::default();
        let e = envelope::open(good.clone(), other, &w.bob_knows, &mut replay, NOW);
        assert_eq!(replay.len(), 0);
        check(e, "wrong_recipient");
    }

    // non_contributory: a low-order ephemeral key, validly signed.
    let e = open_fresh(
        &w,
        with_header(&good, &w.alice, |h| h.ephemeral_key = vec![0; 32]),
        NOW,
    );
    check(e, "non_contributory");

    // decrypt_failed: the sender signed a ciphertext that does not decrypt (one bit
    // flipped, or a different header used as associated data).
    let mut bad_ct = env.ciphertext.clone();
    bad_ct[0] ^= 0x01;
    check(
        open_fresh(&w, signed(&w.alice, env.header.clone(), bad_ct), NOW),
        "decrypt_failed",
    );
    let e = open_fresh(
        &w,
        with_header(&good, &w.alice, |h| h.message_id = vec![7; 16]),
        NOW,
    );
    check(e, "decrypt_failed");

    // invalid_content: a correctly sealed plaintext that is not valid content.
    let id = MessageId::from_bytes([5; 16]);
    let header = header_for(&w.alice, w.bob.certificate(), id, NOW);
    let not_protobuf = seal_raw(
        &w.alice,
        w.bob.certificate(),
        &header,
        &[],
        x25519_dalek::StaticSecret::from([0x11; 32]),
        &[0xff, 0xff],
    );
    let e = open_fresh(&w, not_protobuf, NOW);
    assert_eq!(e, Err(OpenError::Content(ContentError::Decode)));
    check(e, "invalid_content");
    // Text with a control character in the media type (field 1 of Text in field 1).
    let bad_media = seal_raw(
        &w.alice,
        w.bob.certificate(),
        &header,
        &[],
        x25519_dalek::StaticSecret::from([0x12; 32]),
        &[0x0a, 0x03, 0x0a, 0x01, 0x0a],
    );
    let e = open_fresh(&w, bad_media, NOW);
    assert_eq!(
        e,
        Err(OpenError::Content(ContentError::InvalidField(
            "text.media_type"
        )))
    );
    check(e, "invalid_content");

    // too_old / from_future: the receiver's clock against the header timestamp.
    check(
        open_fresh(&w, good.clone(), NOW.saturating_add(36 * DAY)),
        "too_old",
    );
    let ahead = seal_text(
        &mut w.rng,
        &w.alice,
        &w.bob,
        "from the future",
        NOW.saturating_add(6 * MINUTE),
    );
    check(open_fresh(&w, ahead, NOW), "from_future");

    // replay: the same bytes twice, and the same id re-sealed (new ephemeral key).
    let mut replay = ReplayWindow::default();
    envelope::open(good.clone(), &w.bob, &w.bob_knows, &mut replay, NOW).expect("first");
    check(
        envelope::open(good.clone(), &w.bob, &w.bob_knows, &mut replay, NOW),
        "replay",
    );
    let (_, h) = parse(&good);
    let resealed = seal_raw(
        &w.alice,
        w.bob.certificate(),
        &h,
        &[],
        x25519_dalek::StaticSecret::from([0x13; 32]),
        &Content::Text(Text::plain("hi again"))
            .encode_padded()
            .expect("encode"),
    );
    assert_ne!(resealed, good);
    check(
        envelope::open(resealed, &w.bob, &w.bob_knows, &mut replay, NOW),
        "replay",
    );
    assert_eq!(replay.len(), 1);

    let all: BTreeSet<&str> = [
        "too_large",
        "decode",
        "unsupported_version",
        "invalid_field",
        "unsupported_payload_kind",
        "unsupported_content_type",
        "invalid_address",
        "unknown_sender",
        "sender_mismatch",
        "sender_certificate_not_valid",
        "bad_signature",
        "wrong_recipient",
        "non_contributory",
        "decrypt_failed",
        "invalid_content",
        "too_old",
        "from_future",
        "replay",
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, all);
}

// ---------------------------------------------------------------------------------------
// Failures change nothing.

#[test]
fn failed_open_leaves_the_replay_window_unchanged() {
    let mut w = World::new();
    let mut replay = ReplayWindow::default();
    let earlier = seal_text(&mut w.rng, &w.alice, &w.bob, "earlier", NOW);
    envelope::open(earlier, &w.bob, &w.bob_knows, &mut replay, NOW).expect("open");
    assert_eq!(replay.len(), 1);

    let msg = seal_text(&mut w.rng, &w.alice, &w.bob, "later", NOW);
    // Delivered to the wrong devices first.
    for other in [&w.bob2, &w.carol] {
        let e = envelope::open(msg.clone(), other, &w.bob_knows, &mut replay, NOW);
        assert_refused(e, "wrong_recipient");
        assert_eq!(replay.len(), 1);
    }
    // Before Bob knows the sender device, then after.
    let mut directory = KnownDevices::new();
    let e = envelope::open(msg.clone(), &w.bob, &directory, &mut replay, NOW);
    assert_refused(e, "unknown_sender");
    assert_eq!(replay.len(), 1);
    // Opened with a clock too far ahead or behind.
    let e = envelope::open(
        msg.clone(),
        &w.bob,
        &w.bob_knows,
        &mut replay,
        NOW.saturating_add(36 * DAY),
    );
    assert_refused(e, "too_old");
    let e = envelope::open(
        msg.clone(),
        &w.bob,
        &w.bob_knows,
        &mut replay,
        NOW.saturating_sub(6 * MINUTE),
    );
    assert_refused(e, "from_future");
    assert_eq!(replay.len(), 1);
    assert_eq!(replay.floor(w.alice.address()), UnixMillis(0));

    directory.insert(w.alice.certificate().clone());
    let opened = envelope::open(msg.clone(), &w.bob, &directory, &mut replay, NOW).expect("open");
    assert_eq!(opened.content, Content::Text(Text::plain("later")));
    assert_eq!(replay.len(), 2);
    // The replay refusal itself changes nothing either.
    assert_refused(
        envelope::open(msg, &w.bob, &directory, &mut replay, NOW),
        "replay",
    );
    assert_eq!(replay.len(), 2);
}

#[test]
fn a_message_for_the_second_device_opens_only_there() {
    let mut w = World::new();
    let msg = seal_text(&mut w.rng, &w.alice2, &w.bob2, "to bob2", NOW);
    let mut replay = ReplayWindow::default();
    assert_refused(
        envelope::open(msg.clone(), &w.bob, &w.bob_knows, &mut replay, NOW),
        "wrong_recipient",
    );
    let opened = envelope::open(msg, &w.bob2, &w.bob_knows, &mut replay, NOW).expect("open");
    assert_eq!(opened.header.sender_device, w.alice2.id());
    assert_eq!(opened.header.recipient_device, w.bob2.id());
}

// ---------------------------------------------------------------------------------------
// Tampering.

/// Flipping any single bit anywhere in a sealed envelope makes it fail to open: every
/// byte is part of the outer framing (whose changes are refused by decoding or alter
/// a signed part) or of the signed header, ciphertext or signature.
#[test]
fn every_single_bit_flip_is_refused() {
    let mut w = World::new();
    let sealed = seal_text(&mut w.rng, &w.alice, &w.bob, "tamper with me", NOW);
    let mut replay = ReplayWindow::default();
    let mut codes = BTreeSet::new();
    for i in 0..sealed.len() {
        for bit in [i % 8, (i + 3) % 8] {
            let mut bytes = sealed.to_vec();
            bytes[i] ^= 1 << bit;
            match envelope::open(Bytes::from(bytes), &w.bob, &w.bob_knows, &mut replay, NOW) {
                Ok(opened) => panic!(
                    "flipping bit {bit} of byte {i} still opens: {:?}",
                    opened.content
                ),
                Err(e) => {
                    codes.insert(e.code());
                }
            }
        }
    }
    assert_eq!(replay.len(), 0);
    assert!(codes.contains("bad_signature"), "{codes:?}");
    assert!(codes.contains("decode"), "{codes:?}");
    envelope::open(sealed, &w.bob, &w.bob_knows, &mut replay, NOW).expect("original opens");
}

#[test]
fn unknown_outer_fields_are_ignored_but_not_inside_the_signed_header() {
    let mut w = World::new();
    let sealed = seal_text(&mut w.rng, &w.alice, &w.bob, "extensible", NOW);

    // Appended to the outer envelope: a varint field 99, and a length-delimited field
    // 100 (tag (100 << 3) | 2 = 802 = a2 06). Readers ignore both.
    let mut outer = sealed.to_vec();
    outer.extend_from_slice(&UNKNOWN_FIELD_99);
    outer.extend_from_slice(&[0xa2, 0x06, 0x03, b'x', b'y', b'z']);
    let mut replay = ReplayWindow::default();
    let opened = envelope::open(Bytes::from(outer), &w.bob, &w.bob_knows, &mut replay, NOW)
        .expect("unknown outer fields are ignored");
    assert_eq!(opened.content, Content::Text(Text::plain("extensible")));
    // It is the same message: the original is now a replay.
    assert_refused(
        envelope::open(sealed.clone(), &w.bob, &w.bob_knows, &mut replay, NOW),
        "replay",
    );

    // Inside the header: the signature covers the exact header bytes.
    let (mut env, _) = parse(&sealed);
    env.header.extend_from_slice(&UNKNOWN_FIELD_99);
    let e = open_fresh(&w, encode(&env), NOW);
    assert_refused(e, "bad_signature");
    // Re-signed by the sender, the header is still the associated data of the AEAD.
    let resigned = signed(&w.alice, env.header.clone(), env.ciphertext.clone());
    assert_refused(open_fresh(&w, resigned, NOW), "decrypt_failed");
    // A sender that puts an unknown field into the header from the start (a newer
    // version) is understood: the header parses, signature and AEAD cover its bytes.
    let id = MessageId::from_bytes([0x99; 16]);
    let newer = seal_raw(
        &w.alice,
        w.bob.certificate(),
        &header_for(&w.alice, w.bob.certificate(), id, NOW),
        &UNKNOWN_FIELD_99,
        x25519_dalek::StaticSecret::from([0x21; 32]),
        &Content::Text(Text::plain("from v1.1"))
            .encode_padded()
            .expect("encode"),
    );
    let opened = open_fresh(&w, newer, NOW).expect("unknown header field from the sender");
    assert_eq!(opened.header.message_id, id);
}

// ---------------------------------------------------------------------------------------
// Batches.

#[test]
fn batch_open_equals_single_opens() {
    let mut w = World::new();
    let mut batch = Vec::new();
    // Enough good envelopes for more than one verification chunk, from two devices.
    for i in 0..(envelope::BATCH_VERIFY_CHUNK + 10) {
        let from = if i % 3 == 0 { &w.alice2 } else { &w.alice };
        let ts = NOW.saturating_sub(i as u64 * MINUTE);
        batch.push(seal_text(&mut w.rng, from, &w.bob, &format!("m{i}"), ts));
    }
    // batch[1] is from alice (batch[0] is from alice2).
    let good = batch[1].clone();
    let (env, _) = parse(&good);
    let mut bad_sig = env.clone();
    bad_sig.signature[40] ^= 0x04;
    let mut bad_ct = env.ciphertext.clone();
    bad_ct[3] ^= 0x10;
    let bad = [
        encode(&bad_sig),
        signed(&w.alice, env.header.clone(), bad_ct),
        seal_text(&mut w.rng, &w.carol, &w.bob, "unknown", NOW),
        seal_text(&mut w.rng, &w.alice, &w.bob2, "wrong device", NOW),
        expired_envelope(&mut w, "expired"),
        seal_text(
            &mut w.rng,
            &w.alice,
            &w.bob,
            "future",
            NOW.saturating_add(6 * MINUTE),
        ),
        Bytes::from_static(b"\xff\xff"),
        with_header(&good, &w.alice, |h| h.ephemeral_key = vec![0; 32]),
    ];
    // Interleave: bad ones in both chunks, duplicates of earlier and later envelopes.
    let mut mixed = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        mixed.push(m.clone());
        if i % 9 == 4 {
            mixed.push(bad[(i / 9) % bad.len()].clone());
        }
        if i % 11 == 7 {
            mixed.push(batch[i / 2].clone());
        }
    }
    mixed.extend(bad.iter().cloned());
    mixed.push(good.clone());
    mixed.push(batch[batch.len() - 1].clone());

    let mut batch_replay = ReplayWindow::default();
    let batched = envelope::open_batch(&mixed, &w.bob, &w.bob_knows, &mut batch_replay, NOW);
    let mut single_replay = ReplayWindow::default();
    let singles: Vec<_> = mixed
        .iter()
        .map(|m| envelope::open(m.clone(), &w.bob, &w.bob_knows, &mut single_replay, NOW))
        .collect();
    assert_eq!(batched.len(), mixed.len());
    for (i, (b, s)) in batched.iter().zip(&singles).enumerate() {
        assert_eq!(b, s, "envelope {i}");
    }
    assert_eq!(batch_replay.len(), single_replay.len());
    assert_eq!(batch_replay.len(), batch.len());
    let codes: BTreeSet<&str> = batched
        .iter()
        .filter_map(|r| r.as_ref().err().map(OpenError::code))
        .collect();
    let want: BTreeSet<&str> = [
        "bad_signature",
        "decrypt_failed",
        "unknown_sender",
        "wrong_recipient",
        "sender_certificate_not_valid",
        "from_future",
        "decode",
        "non_contributory",
        "replay",
    ]
    .into_iter()
    .collect();
    assert_eq!(codes, want);
}

// ---------------------------------------------------------------------------------------
// The replay window's floor.

/// The age and skew limits are inclusive: exactly at the limit opens, one
/// millisecond beyond is refused.
#[test]
fn freshness_limits_are_inclusive() {
    let mut w = World::new();
    let oldest = NOW.saturating_sub(DEFAULT_MAX_MESSAGE_AGE_MS);
    let newest = NOW.saturating_add(DEFAULT_MAX_CLOCK_SKEW_MS);
    let cases = [
        (oldest, None),
        (oldest.saturating_sub(1), Some("too_old")),
        (newest, None),
        (newest.saturating_add(1), Some("from_future")),
    ];
    for (ts, want) in cases {
        let msg = seal_text(&mut w.rng, &w.alice, &w.bob, "edge", ts);
        let result = open_fresh(&w, msg, NOW);
        match want {
            None => assert!(result.is_ok(), "{ts}: {result:?}"),
            Some(code) => {
                assert_refused(result, code);
            }
        }
    }
}

#[test]
fn tiny_replay_window_refuses_evicted_ids_as_too_old() {
    let mut w = World::new();
    let policy = ReplayPolicy {
        capacity: 2,
        ..ReplayPolicy::default()
    };
    let mut replay = ReplayWindow::new(policy);
    let now = NOW.saturating_add(MINUTE);
    let msgs: Vec<Bytes> = (0..4u64)
        .map(|i| {
            seal_text(
                &mut w.rng,
                &w.alice,
                &w.bob,
                &format!("m{i}"),
                UnixMillis(NOW.0 + i),
            )
        })
        .collect();
    let open = |m: &Bytes, replay: &mut ReplayWindow| {
        envelope::open(m.clone(), &w.bob, &w.bob_knows, replay, now)
    };

    open(&msgs[0], &mut replay).expect("m0");
    open(&msgs[1], &mut replay).expect("m1");
    assert_eq!(replay.len(), 2);
    assert_eq!(replay.floor(w.alice.address()), UnixMillis(0));
    // A third id evicts the oldest (m0) and raises the floor past it.
    open(&msgs[2], &mut replay).expect("m2");
    assert_eq!(replay.len(), 2);
    assert_eq!(replay.floor(w.alice.address()), UnixMillis(NOW.0 + 1));
    // m0 is forgotten but not accepted again: it is below the floor.
    assert_refused(open(&msgs[0], &mut replay), "too_old");
    // m1 and m2 are still remembered.
    assert_refused(open(&msgs[1], &mut replay), "replay");
    assert_refused(open(&msgs[2], &mut replay), "replay");
    assert_eq!(replay.len(), 2);
    // A new message above the floor is accepted and evicts m1.
    open(&msgs[3], &mut replay).expect("m3");
    assert_eq!(replay.floor(w.alice.address()), UnixMillis(NOW.0 + 2));
    assert_refused(open(&msgs[1], &mut replay), "too_old");
    assert_refused(open(&msgs[0], &mut replay), "too_old");
    // A never-seen straggler below the floor is refused too: the price of bounded memory.
    let straggler = seal_text(&mut w.rng, &w.alice2, &w.bob, "late", NOW);
    assert_refused(open(&straggler, &mut replay), "too_old");
    assert_eq!(replay.len(), 2);
}

#[test]
fn tiny_replay_window_with_equal_timestamps_never_reaccepts() {
    let mut w = World::new();
    let mut replay = ReplayWindow::new(ReplayPolicy {
        capacity: 2,
        ..ReplayPolicy::default()
    });
    let msgs: Vec<Bytes> = (0..5)
        .map(|i| seal_text(&mut w.rng, &w.alice, &w.bob, &format!("same {i}"), NOW))
        .collect();
    let mut accepted = 0;
    for m in &msgs {
        if envelope::open(m.clone(), &w.bob, &w.bob_knows, &mut replay, NOW).is_ok() {
            accepted += 1;
        }
    }
    assert!(accepted >= 1);
    // Whatever was accepted or evicted, nothing opens a second time.
    for m in &msgs {
        let e = envelope::open(m.clone(), &w.bob, &w.bob_knows, &mut replay, NOW);
        let code = e.as_ref().err().map(OpenError::code);
        assert!(matches!(code, Some("too_old" | "replay")), "{code:?}");
    }
    assert!(replay.len() <= 2);
}
