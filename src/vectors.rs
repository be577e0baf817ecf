//! Deterministic test vectors (SPEC.md section 12): generated here, checked in under
//! `tests/vectors/`, and checked two ways by `cargo test`:
//!
//! 1. the code regenerates every file byte for byte (so a change to the wire format or
//!    the cryptography shows up as a diff of the vectors), and
//! 2. every vector is replayed from the file alone: positive envelopes open to the
//!    stated content, negative ones fail with the stated error code.
//!
//! Regenerate after a deliberate change with
//! `KOGGE_WRITE_VECTORS=1 cargo test --lib vectors`, and update SPEC.md in the same commit.

use std::path::PathBuf;

use bytes::Bytes;
use prost::Message;
use serde_json::{Value, json};

use crate::address::Address;
use crate::crypto::{self, Label, Secret};
use crate::envelope::{
    self, Content, KnownDevices, MessageId, OpenError, Outgoing, Receipt, ReceiptKind,
    ReplayPolicy, ReplayWindow, Text, UnverifiedEnvelope,
};
use crate::identity::{
    CertificateError, Device, DeviceCertificate, DeviceKeyPair, DeviceList, IdentityKeyPair,
    SafetyNumber,
};
use crate::limits::{MAX_ENVELOPE_LEN, PROTOCOL_VERSION};
use crate::time::UnixMillis;
use crate::wire;

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// A deterministic 32-byte value: SHA-256 of a descriptive string.
fn seed(what: &str) -> [u8; 32] {
    crypto::sha256(format!("kogge test vector: {what}").as_bytes())
}

const NOT_BEFORE: UnixMillis = UnixMillis(1_700_000_000_000);
const NOT_AFTER: UnixMillis = UnixMillis(1_800_000_000_000);
const T0: UnixMillis = UnixMillis(1_750_000_000_000);

struct Party {
    name: &'static str,
    address: &'static str,
    identity_seed: [u8; 32],
    signing_seed: [u8; 32],
    agreement_secret: [u8; 32],
}

const PARTIES: &[(&str, &str, &str)] = &[
    ("alice", "alice@one.example", "alice"),
    ("bob", "bob@two.example", "bob"),
    // Bob's second device: same identity, other device keys.
    ("bob2", "bob@two.example", "bob"),
];

fn parties() -> Vec<Party> {
    PARTIES
        .iter()
        .map(|(name, address, identity)| Party {
            name,
            address,
            identity_seed: seed(&format!("{identity} identity")),
            signing_seed: seed(&format!("{name} device signing")),
            agreement_secret: seed(&format!("{name} device agreement")),
        })
        .collect()
}

fn device(p: &Party) -> Device {
    let identity = IdentityKeyPair::from_secret_bytes(&Secret::new(p.identity_seed));
    let keys = DeviceKeyPair::from_secret_bytes(
        &Secret::new(p.signing_seed),
        &Secret::new(p.agreement_secret),
    );
    Device::new(
        &identity,
        Address::parse(p.address).unwrap(),
        keys,
        NOT_BEFORE,
        NOT_AFTER,
    )
    .unwrap()
}

fn party_json(p: &Party, d: &Device) -> Value {
    let identity = IdentityKeyPair::from_secret_bytes(&Secret::new(p.identity_seed));
    let cert = d.certificate();
    let outer = wire::DeviceCertificate::decode(cert.encoded().clone()).unwrap();
    json!({
        "name": p.name,
        "address": p.address,
        "identity_seed": h(&p.identity_seed),
        "identity_public": h(&identity.public().to_bytes()),
        "device_signing_seed": h(&p.signing_seed),
        "device_signing_public": h(d.keys().signing_public().as_bytes()),
        "device_agreement_secret": h(&p.agreement_secret),
        "device_agreement_public": h(d.keys().agreement_public().as_bytes()),
        "device_id_input": h(&crypto::framed(Label::DeviceId, &[d.keys().signing_public().as_bytes()])),
        "device_id": h(d.id().as_bytes()),
        "certificate": {
            "not_before_ms": NOT_BEFORE.0,
            "not_after_ms": NOT_AFTER.0,
            "body": h(&outer.body),
            "identity_signature_input": h(&crypto::framed(Label::DeviceCertIdentitySignature, &[&outer.body])),
            "identity_signature": h(&outer.identity_signature),
            "device_signature_input": h(&crypto::framed(Label::DeviceCertDeviceSignature, &[&outer.body])),
            "device_signature": h(&outer.device_signature),
            "encoded": h(cert.encoded()),
        },
        "fingerprint": h(cert.identity_key().fingerprint(cert.address()).as_bytes()),
        "fingerprint_digits": cert.identity_key().fingerprint(cert.address()).digits(),
    })
}

fn content_json(c: &Content) -> Value {
    match c {
        Content::Text(t) => json!({"text": {
            "media_type": t.media_type,
            "body": t.body,
            "reply_to": t.reply_to.map(|id| h(id.as_bytes())),
        }}),
        Content::Receipt(r) => json!({"receipt": {
            "kind": match r.kind { ReceiptKind::Delivered => "delivered", ReceiptKind::Read => "read" },
            "message_ids": r.message_ids.iter().map(|id| h(id.as_bytes())).collect::<Vec<_>>(),
        }}),
        Content::Unknown => json!({"unknown": {}}),
    }
}

fn content_cases() -> Vec<(&'static str, Content)> {
    vec![
        (
            "text",
            Content::Text(Text::plain("Hello Bob, this is Alice.")),
        ),
        ("empty_text", Content::Text(Text::plain(""))),
        (
            "markdown_reply",
            Content::Text(Text {
                media_type: "text/markdown".into(),
                body: "**Order #4711** confirmed: 3 × crates, delivery Tuesday. Grüße!".into(),
                reply_to: Some(MessageId::from_bytes(
                    seed("reply target")[..16].try_into().unwrap(),
                )),
            }),
        ),
        (
            "read_receipt",
            Content::Receipt(Receipt {
                kind: ReceiptKind::Read,
                message_ids: vec![
                    MessageId::from_bytes(seed("receipt 1")[..16].try_into().unwrap()),
                    MessageId::from_bytes(seed("receipt 2")[..16].try_into().unwrap()),
                ],
            }),
        ),
    ]
}

fn seal_vector(
    alice: &Device,
    to: &Device,
    to_name: &str,
    name: &str,
    content: &Content,
    ts: UnixMillis,
) -> (Bytes, Value) {
    let message_id = MessageId::from_bytes(
        seed(&format!("{name} message id"))[..16]
            .try_into()
            .unwrap(),
    );
    let eph_secret = seed(&format!("{name} ephemeral"));
    let (bytes, t) = envelope::seal_with_ephemeral(
        alice,
        &Outgoing {
            recipient: to.certificate(),
            message_id,
            timestamp: ts,
            content,
        },
        x25519_dalek::StaticSecret::from(eph_secret),
    )
    .unwrap();
    let mut salt = t.ephemeral_public.to_vec();
    salt.extend_from_slice(to.keys().agreement_public().as_bytes());
    let v = json!({
        "name": name,
        "sender": "alice",
        "recipient": to_name,
        "message_id": h(message_id.as_bytes()),
        "timestamp_ms": ts.0,
        "content": content_json(content),
        "plaintext": h(&t.plaintext),
        "ephemeral_secret": h(&eph_secret),
        "ephemeral_public": h(&t.ephemeral_public),
        "shared_secret": h(t.shared_secret.expose()),
        "hkdf_salt": h(&salt),
        "hkdf_info": h(&crypto::framed(Label::OneShotSealKdf, &[])),
        "key": h(t.key.expose()),
        "nonce": h(&t.nonce),
        "header": h(&t.header),
        "aad": h(&t.aad),
        "ciphertext": h(&t.ciphertext),
        "ciphertext_sha256": h(&crypto::sha256(&t.ciphertext)),
        "signature_input": h(&t.signature_input),
        "signature": h(&t.signature),
        "envelope": h(&bytes),
    });
    (bytes, v)
}

fn edit_header(env: &Bytes, f: impl FnOnce(&mut wire::EnvelopeHeader)) -> Vec<u8> {
    let outer = wire::Envelope::decode(env.clone()).unwrap();
    let mut hd = wire::EnvelopeHeader::decode(outer.header).unwrap();
    f(&mut hd);
    hd.encode_to_vec()
}

fn ciphertext_of(env: &Bytes) -> Bytes {
    wire::Envelope::decode(env.clone()).unwrap().ciphertext
}

fn flip(env: &Bytes, at: usize) -> Bytes {
    let mut v = env.to_vec();
    v[at] ^= 0x01;
    Bytes::from(v)
}

/// An envelope whose ciphertext decrypts to bytes that are not valid content.
fn invalid_content_envelope(alice: &Device, bob: &Device, honest: &Bytes) -> Bytes {
    let header = wire::Envelope::decode(honest.clone()).unwrap().header;
    let eph = x25519_dalek::StaticSecret::from(seed("invalid content ephemeral"));
    let eph_pub = x25519_dalek::PublicKey::from(&eph).to_bytes();
    let header = {
        let mut hd = wire::EnvelopeHeader::decode(header).unwrap();
        hd.ephemeral_key = Bytes::copy_from_slice(&eph_pub);
        hd.message_id = Bytes::copy_from_slice(&seed("invalid content id")[..16]);
        hd.encode_to_vec()
    };
    let shared = crypto::x25519(&eph, &bob.keys().agreement_public()).unwrap();
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(&eph_pub);
    salt[32..].copy_from_slice(bob.keys().agreement_public().as_bytes());
    let mut okm = [0u8; 44];
    crypto::hkdf_sha256(&salt, shared.expose(), Label::OneShotSealKdf, &[], &mut okm).unwrap();
    let key = Secret::new(okm[..32].try_into().unwrap());
    let nonce: [u8; 12] = okm[32..].try_into().unwrap();
    let aad = crypto::framed(Label::EnvelopeAad, &[&header]);
    // 0xff is not a valid protobuf tag.
    let ct = crypto::aead_seal(&key, &nonce, &aad, &[0xff, 0xff]).unwrap();
    envelope::tests::resign(alice, &header, &ct)
}

struct Negative {
    name: &'static str,
    description: &'static str,
    envelope: Bytes,
    opened_by: &'static str,
    sender_known: bool,
    now: UnixMillis,
    open_twice: bool,
    expected: &'static str,
}

fn negatives(alice: &Device, bob: &Device, honest: &Bytes) -> Vec<Negative> {
    let ct = ciphertext_of(honest);
    let resigned = |f: &dyn Fn(&mut wire::EnvelopeHeader)| {
        let hd = edit_header(honest, f);
        envelope::tests::resign(alice, &hd, &ct)
    };
    let n = honest.len();
    let outer_v2 = {
        let mut o = wire::Envelope::decode(honest.clone()).unwrap();
        o.version = 2;
        Bytes::from(o.encode_to_vec())
    };
    let non_canonical = {
        let hd = edit_header(honest, |hd| hd.sender = "Alice@one.example".into());
        let mut o = wire::Envelope::decode(honest.clone()).unwrap();
        o.header = Bytes::from(hd);
        Bytes::from(o.encode_to_vec())
    };
    let base = |name, description, envelope, expected| Negative {
        name,
        description,
        envelope,
        opened_by: "bob",
        sender_known: true,
        now: T0,
        open_twice: false,
        expected,
    };
    vec![
        base(
            "too_large",
            "one byte over MAX_ENVELOPE_LEN, all zeros: refused before parsing",
            Bytes::from(vec![0u8; MAX_ENVELOPE_LEN + 1]),
            "too_large",
        ),
        base(
            "truncated",
            "the honest envelope without its last 10 bytes",
            honest.slice(..n - 10),
            "decode",
        ),
        base(
            "empty",
            "zero bytes: a valid protobuf with version 0",
            Bytes::new(),
            "unsupported_version",
        ),
        base(
            "outer_version_2",
            "outer version field set to 2",
            outer_v2,
            "unsupported_version",
        ),
        base(
            "short_message_id",
            "header message_id of 15 bytes, re-signed",
            resigned(&|hd| hd.message_id = hd.message_id.slice(..15)),
            "invalid_field",
        ),
        base(
            "unknown_payload_kind",
            "payload_kind 7, re-signed",
            resigned(&|hd| hd.payload_kind = 7),
            "unsupported_payload_kind",
        ),
        base(
            "unknown_content_type",
            "content_type 0 (unspecified), re-signed",
            resigned(&|hd| hd.content_type = 0),
            "unsupported_content_type",
        ),
        base(
            "non_canonical_sender",
            "sender written with an upper-case letter (signature not redone: the address check comes first)",
            non_canonical,
            "invalid_address",
        ),
        base(
            "flipped_signature",
            "last byte of the signature flipped",
            flip(honest, n - 1),
            "bad_signature",
        ),
        base(
            "flipped_ciphertext",
            "a ciphertext byte flipped (the signature covers its hash)",
            flip(honest, n - 64 - 2 - 5),
            "bad_signature",
        ),
        base(
            "changed_timestamp",
            "timestamp changed without re-signing",
            {
                let hd = edit_header(honest, |hd| hd.timestamp_ms += 1);
                let mut o = wire::Envelope::decode(honest.clone()).unwrap();
                o.header = Bytes::from(hd);
                Bytes::from(o.encode_to_vec())
            },
            "bad_signature",
        ),
        Negative {
            sender_known: false,
            ..base(
                "unknown_sender",
                "the receiver does not know the sender's device",
                honest.clone(),
                "unknown_sender",
            )
        },
        Negative {
            opened_by: "bob2",
            ..base(
                "wrong_device",
                "sealed to bob's first device, opened by his second",
                honest.clone(),
                "wrong_recipient",
            )
        },
        base(
            "low_order_ephemeral",
            "ephemeral key of all zeros, re-signed",
            resigned(&|hd| hd.ephemeral_key = Bytes::from(vec![0u8; 32])),
            "non_contributory",
        ),
        base(
            "changed_message_id",
            "message id changed and re-signed by the sender: the AEAD binds the header",
            resigned(&|hd| hd.message_id = Bytes::from(vec![7u8; 16])),
            "decrypt_failed",
        ),
        base(
            "invalid_content",
            "validly sealed and signed, but the plaintext is not a Content encoding",
            invalid_content_envelope(alice, bob, honest),
            "invalid_content",
        ),
        Negative {
            now: UnixMillis(NOT_AFTER.0 + 1),
            ..base(
                "after_certificate",
                "timestamp one ms after the sender certificate expires, re-signed",
                resigned(&|hd| hd.timestamp_ms = NOT_AFTER.0 + 1),
                "sender_certificate_not_valid",
            )
        },
        Negative {
            now: T0.saturating_add(ReplayPolicy::default().max_age_ms + 1),
            ..base(
                "too_old",
                "opened one ms after the default maximum age",
                honest.clone(),
                "too_old",
            )
        },
        Negative {
            now: T0.saturating_sub(ReplayPolicy::default().max_skew_ms + 1),
            ..base(
                "from_future",
                "opened by a receiver whose clock is one ms beyond the allowed skew behind",
                honest.clone(),
                "from_future",
            )
        },
        Negative {
            open_twice: true,
            ..base(
                "replay",
                "the honest envelope opened a second time",
                honest.clone(),
                "replay",
            )
        },
    ]
}

fn run_negative(
    envelope: Bytes,
    recipient: &Device,
    sender: Option<&DeviceCertificate>,
    now: UnixMillis,
    open_twice: bool,
) -> Result<(), OpenError> {
    let mut known = KnownDevices::new();
    if let Some(c) = sender {
        known.insert(c.clone());
    }
    let mut replay = ReplayWindow::default();
    if open_twice {
        envelope::open(envelope.clone(), recipient, &known, &mut replay, now)?;
    }
    let before = replay.len();
    let r = envelope::open(envelope, recipient, &known, &mut replay, now).map(|_| ());
    if r.is_err() {
        assert_eq!(
            replay.len(),
            before,
            "a failed open changed the replay window"
        );
    }
    r
}

fn certificate_negatives(
    alice_identity: &IdentityKeyPair,
    alice: &Device,
) -> Vec<(&'static str, &'static str, Bytes, &'static str)> {
    let cert = alice.certificate();
    let outer = wire::DeviceCertificate::decode(cert.encoded().clone()).unwrap();
    let body = wire::DeviceCertificateBody::decode(outer.body.clone()).unwrap();
    // Re-encode with a modified body, signed properly by both keys.
    let signed = |f: &dyn Fn(&mut wire::DeviceCertificateBody)| {
        let mut b = body.clone();
        f(&mut b);
        let bb = b.encode_to_vec();
        let isig = crypto::sign(
            &ed25519_dalek::SigningKey::from_bytes(alice_identity.secret_bytes().expose()),
            Label::DeviceCertIdentitySignature,
            &[&bb],
        );
        let dsig = crypto::sign(
            alice.keys().signing(),
            Label::DeviceCertDeviceSignature,
            &[&bb],
        );
        Bytes::from(
            wire::DeviceCertificate {
                body: Bytes::from(bb),
                identity_signature: Bytes::copy_from_slice(&isig.to_bytes()),
                device_signature: Bytes::copy_from_slice(&dsig.to_bytes()),
            }
            .encode_to_vec(),
        )
    };
    let with_outer = |f: &dyn Fn(&mut wire::DeviceCertificate)| {
        let mut o = outer.clone();
        f(&mut o);
        Bytes::from(o.encode_to_vec())
    };
    vec![
        (
            "truncated",
            "the certificate without its last byte",
            cert.encoded().slice(..cert.encoded().len() - 1),
            "decode",
        ),
        (
            "version_2",
            "body version 2, signed",
            signed(&|b| b.version = 2),
            "unsupported_version",
        ),
        (
            "non_canonical_address",
            "address with an upper-case letter, signed",
            signed(&|b| b.address = "Alice@one.example".into()),
            "invalid_address",
        ),
        (
            "device_id_mismatch",
            "device id of another key, signed",
            signed(&|b| b.device_id = Bytes::from(vec![0u8; 16])),
            "device_id_mismatch",
        ),
        (
            "empty_validity",
            "not_before after not_after, signed",
            signed(&|b| {
                b.not_before_ms = 2;
                b.not_after_ms = 1;
            }),
            "invalid_validity",
        ),
        (
            "flipped_identity_signature",
            "a bit of the identity signature flipped",
            with_outer(&|o| {
                let mut s = o.identity_signature.to_vec();
                s[5] ^= 1;
                o.identity_signature = Bytes::from(s);
            }),
            "bad_identity_signature",
        ),
        (
            "moved_address",
            "address changed without re-signing",
            with_outer(&|o| {
                let mut b = body.clone();
                b.address = "mallory@one.example".into();
                o.body = Bytes::from(b.encode_to_vec());
            }),
            "bad_identity_signature",
        ),
        (
            "device_signature_by_identity",
            "proof of possession signed by the identity key instead of the device key",
            with_outer(&|o| {
                let sig = crypto::sign(
                    &ed25519_dalek::SigningKey::from_bytes(alice_identity.secret_bytes().expose()),
                    Label::DeviceCertDeviceSignature,
                    &[&o.body],
                );
                o.device_signature = Bytes::copy_from_slice(&sig.to_bytes());
            }),
            "bad_device_signature",
        ),
    ]
}

fn generate() -> Vec<(&'static str, Value)> {
    let ps = parties();
    let devices: Vec<Device> = ps.iter().map(device).collect();
    let (alice, bob) = (&devices[0], &devices[1]);
    let alice_identity = IdentityKeyPair::from_secret_bytes(&Secret::new(ps[0].identity_seed));

    let labels: Vec<Value> = Label::ALL
        .iter()
        .map(|l| json!({"name": format!("{l:?}"), "ascii": String::from_utf8_lossy(l.as_bytes()), "hex": h(l.as_bytes())}))
        .collect();

    let safety = SafetyNumber::new(
        alice.certificate().identity_key(),
        alice.address(),
        bob.certificate().identity_key(),
        bob.address(),
    );
    let safety_b = SafetyNumber::new(
        bob.certificate().identity_key(),
        bob.address(),
        alice.certificate().identity_key(),
        alice.address(),
    );
    let identity = json!({
        "description": "Keys, device certificates and fingerprints of three devices (SPEC.md 4, 5). Seeds are SHA-256 of 'kogge test vector: <what>'.",
        "labels": labels,
        "parties": ps.iter().zip(&devices).map(|(p, d)| party_json(p, d)).collect::<Vec<_>>(),
        "safety_number": {
            "local": "alice", "remote": "bob",
            "digits": safety.digits(),
            "grouped": safety.grouped(),
            "qr_payload_alice": h(&safety.qr_payload()),
            "qr_payload_bob": h(&safety_b.qr_payload()),
        },
        "certificate_negative": certificate_negatives(&alice_identity, alice).into_iter().map(|(name, d, b, e)| json!({
            "name": name, "description": d, "encoded": h(&b), "expected_error": e,
        })).collect::<Vec<_>>(),
    });

    let mut positives = Vec::new();
    let mut honest = None;
    for (name, content) in content_cases() {
        let (bytes, v) = seal_vector(alice, bob, "bob", name, &content, T0);
        if honest.is_none() {
            honest = Some(bytes);
        }
        positives.push(json!({"now_ms": T0.0, "vector": v}));
    }
    let honest = honest.unwrap();
    let negative: Vec<Value> = negatives(alice, bob, &honest)
        .into_iter()
        .map(|n| {
            let env = if n.envelope.len() > 4096 {
                json!({"fill": {"byte": "00", "len": n.envelope.len()}})
            } else {
                json!(h(&n.envelope))
            };
            json!({
                "name": n.name, "description": n.description, "envelope": env,
                "opened_by": n.opened_by, "sender_known": n.sender_known, "now_ms": n.now.0,
                "open_twice": n.open_twice, "expected_error": n.expected,
            })
        })
        .collect();
    let envelopes = json!({
        "description": "One-shot sealed envelopes from alice to bob with every intermediate value (SPEC.md 6), and negative cases with the error code SPEC.md 10 names. Parties are those of identity.json. Default replay policy: max age 35 days, max skew 5 minutes.",
        "positive": positives,
        "negative": negative,
    });

    let addresses = json!({
        "description": "Address parsing (SPEC.md 3). 'canonical' is the folded form; 'error' names the AddressError variant.",
        "valid": [
            {"input": "alice@one.example", "canonical": "alice@one.example"},
            {"input": "Alice.Smith@One.Example", "canonical": "alice.smith@one.example"},
            {"input": "a-b_c.d9@xn--bcher-kva.example", "canonical": "a-b_c.d9@xn--bcher-kva.example"},
            {"input": "0@localhost", "canonical": "0@localhost"},
        ],
        "invalid": address_invalid().into_iter().map(|(i, e)| json!({"input": i, "error": e})).collect::<Vec<_>>(),
    });

    vec![
        ("identity.json", identity),
        ("envelopes.json", envelopes),
        ("addresses.json", addresses),
        ("sessions.json", session_vectors()),
    ]
}

fn address_invalid() -> Vec<(String, &'static str)> {
    vec![
        (String::new(), "Empty"),
        ("alice".into(), "MissingAt"),
        ("@one.example".into(), "EmptyLocalPart"),
        ("alice@".into(), "EmptyDomain"),
        ("al ice@one.example".into(), "InvalidChar"),
        ("alicé@one.example".into(), "InvalidChar"),
        ("a@b@one.example".into(), "InvalidChar"),
        (".alice@one.example".into(), "MisplacedSeparator"),
        ("al..ice@one.example".into(), "MisplacedSeparator"),
        ("alice-@one.example".into(), "MisplacedSeparator"),
        ("alice@one..example".into(), "EmptyLabel"),
        ("alice@one.example.".into(), "EmptyLabel"),
        ("alice@-one.example".into(), "LabelHyphen"),
        ("alice@10.0.0.1".into(), "NumericTopLabel"),
        (format!("{}@one.example", "a".repeat(65)), "TooLong"),
        (format!("alice@{}.example", "b".repeat(64)), "TooLong"),
    ]
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn render(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

#[test]
fn vectors_are_reproduced_byte_for_byte() {
    let write = std::env::var_os("KOGGE_WRITE_VECTORS").is_some();
    for (file, value) in generate() {
        let path = dir().join(file);
        let text = render(&value);
        if write {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            on_disk == text,
            "{file} differs from what the code produces; if the change is deliberate, run KOGGE_WRITE_VECTORS=1 cargo test --lib vectors and update SPEC.md"
        );
    }
}

fn load(file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(file)).unwrap()).unwrap()
}

/// Rebuilds the devices from the seeds in identity.json alone.
fn devices_from_file(identity: &Value) -> Vec<(String, Device)> {
    identity["parties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let id = IdentityKeyPair::from_secret_bytes(&Secret::new(
                unhex(&p["identity_seed"]).try_into().unwrap(),
            ));
            assert_eq!(h(&id.public().to_bytes()), p["identity_public"]);
            let keys = DeviceKeyPair::from_secret_bytes(
                &Secret::new(unhex(&p["device_signing_seed"]).try_into().unwrap()),
                &Secret::new(unhex(&p["device_agreement_secret"]).try_into().unwrap()),
            );
            assert_eq!(h(keys.id().as_bytes()), p["device_id"]);
            let cert = DeviceCertificate::decode(Bytes::from(unhex(&p["certificate"]["encoded"])))
                .unwrap();
            assert_eq!(cert.identity_key(), &id.public());
            assert_eq!(
                h(cert.identity_key().fingerprint(cert.address()).as_bytes()),
                p["fingerprint"]
            );
            (
                p["name"].as_str().unwrap().to_owned(),
                Device::from_parts(keys, cert).unwrap(),
            )
        })
        .collect()
}

#[test]
fn vectors_replay_from_the_files() {
    let identity = load("identity.json");
    let devices = devices_from_file(&identity);
    let get = |name: &str| &devices.iter().find(|(n, _)| n == name).unwrap().1;

    for neg in identity["certificate_negative"].as_array().unwrap() {
        let err: CertificateError =
            DeviceCertificate::decode(Bytes::from(unhex(&neg["encoded"]))).unwrap_err();
        assert_eq!(
            err.code(),
            neg["expected_error"],
            "certificate vector {}",
            neg["name"]
        );
    }
    let sn = &identity["safety_number"];
    let s = SafetyNumber::new(
        get("alice").certificate().identity_key(),
        get("alice").address(),
        get("bob").certificate().identity_key(),
        get("bob").address(),
    );
    assert_eq!(s.digits(), sn["digits"]);
    s.verify_scanned(&unhex(&sn["qr_payload_bob"])).unwrap();

    let envelopes = load("envelopes.json");
    for pos in envelopes["positive"].as_array().unwrap() {
        let v = &pos["vector"];
        let mut known = KnownDevices::new();
        known.insert(get(v["sender"].as_str().unwrap()).certificate().clone());
        let mut replay = ReplayWindow::default();
        let bytes = Bytes::from(unhex(&v["envelope"]));
        let opened = envelope::open(
            bytes.clone(),
            get(v["recipient"].as_str().unwrap()),
            &known,
            &mut replay,
            UnixMillis(pos["now_ms"].as_u64().unwrap()),
        )
        .unwrap_or_else(|e| panic!("positive vector {} did not open: {e}", v["name"]));
        assert_eq!(content_json(&opened.content), v["content"]);
        let u = UnverifiedEnvelope::decode(bytes).unwrap();
        assert_eq!(h(u.header_bytes()), v["header"]);
        assert_eq!(h(u.ciphertext()), v["ciphertext"]);
        assert_eq!(h(&u.signature().to_bytes()), v["signature"]);
        assert_eq!(u.claimed_header().version, PROTOCOL_VERSION);
    }
    let mut seen = std::collections::HashSet::new();
    for neg in envelopes["negative"].as_array().unwrap() {
        let bytes = match &neg["envelope"] {
            Value::String(_) => unhex(&neg["envelope"]),
            fill => vec![
                u8::from_str_radix(fill["fill"]["byte"].as_str().unwrap(), 16).unwrap();
                fill["fill"]["len"].as_u64().unwrap() as usize
            ],
        };
        let sender = neg["sender_known"]
            .as_bool()
            .unwrap()
            .then(|| get("alice").certificate());
        let err = run_negative(
            Bytes::from(bytes),
            get(neg["opened_by"].as_str().unwrap()),
            sender,
            UnixMillis(neg["now_ms"].as_u64().unwrap()),
            neg["open_twice"].as_bool().unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err.code(),
            neg["expected_error"],
            "negative vector {}",
            neg["name"]
        );
        seen.insert(err.code());
    }
    // Every code of OpenError is covered, except sender_mismatch: `open` looks the sender
    // certificate up by the claimed sender, so only the staged API can produce it.
    assert_eq!(seen.len(), 17, "codes covered: {seen:?}");

    // The saved-state fixtures restore, re-save to the same bytes, and still refuse the
    // last message as a replay.
    let sessions = load("sessions.json");
    for case in sessions["cases"].as_array().unwrap() {
        let st = &case["bob_saved_state"];
        let key = Secret::new(unhex(&st["key"]).try_into().unwrap());
        let blob = unhex(&st["blob"]);
        let mut bob = crate::session::Account::restore(&blob, &key).expect("fixture restores");
        let nonce = unhex(&st["nonce"]);
        assert_eq!(
            bob.save(&key, &mut Script([nonce].into())),
            blob,
            "state format drifted"
        );
        let last = case["messages"].as_array().unwrap().last().unwrap();
        let e = bob
            .decrypt(
                Bytes::from(unhex(&last["envelope"])),
                UnixMillis(last["timestamp_ms"].as_u64().unwrap()),
                &mut Script(Default::default()),
            )
            .unwrap_err();
        assert_eq!(e.code(), "replay");
    }

    let addresses = load("addresses.json");
    for v in addresses["valid"].as_array().unwrap() {
        assert_eq!(
            Address::parse(v["input"].as_str().unwrap())
                .unwrap()
                .as_str(),
            v["canonical"]
        );
    }
    for v in addresses["invalid"].as_array().unwrap() {
        let e = Address::parse(v["input"].as_str().unwrap()).unwrap_err();
        let name = format!("{e:?}");
        assert!(
            name.starts_with(v["error"].as_str().unwrap()),
            "{} gave {name}",
            v["input"]
        );
    }
}

// ---------------------------------------------------------------------------------------
// Session vectors (SPEC.md 15): setup and the first messages in both directions.
// ---------------------------------------------------------------------------------------

/// An RNG that hands out listed values, in order, so that every random choice of a
/// session is a named input of the vector.
struct Script(std::collections::VecDeque<Vec<u8>>);

impl rand_core::TryRng for Script {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        unreachable!("the session code only fills byte buffers")
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        unreachable!("the session code only fills byte buffers")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        let next = self.0.pop_front().expect("script exhausted");
        assert_eq!(next.len(), dst.len(), "script entry of the wrong length");
        dst.copy_from_slice(&next);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for Script {}

fn prekey_store(device: &Device, with_opk: bool) -> (crate::session::PrekeyStore, Value) {
    use crate::session::prekeys::{KemSecret, OneTimeSecret, SignedSecret};
    let spk_secret = seed("bob signed prekey");
    let kem_seed: [u8; 64] = [seed("bob kem prekey d"), seed("bob kem prekey z")]
        .concat()
        .try_into()
        .unwrap();
    let opk_secret = seed("bob one-time prekey");
    // Sign through the store's own code path, with a script that yields these secrets.
    let mut script = Script([spk_secret.to_vec(), kem_seed.to_vec()].into());
    let mut store = crate::session::PrekeyStore::new(device, NOT_BEFORE, &mut script);
    if with_opk {
        let x = x25519_dalek::StaticSecret::from(opk_secret);
        let public = x25519_dalek::PublicKey::from(&x);
        let id = 3;
        let signed = crate::session::prekeys::SignedPrekey::sign_for_vectors(
            device,
            id,
            public.as_bytes(),
            NOT_BEFORE,
        );
        store.one_time.insert(
            id,
            OneTimeSecret {
                secret: Secret::new(opk_secret),
                public: signed,
            },
        );
        store.next_id = 4;
    }
    let SignedSecret { public: spk, .. } = &store.signed[&1];
    let KemSecret { public: kem, .. } = &store.kem[&2];
    let json = json!({
        "signed_prekey": {"id": 1, "secret": h(&spk_secret), "public": h(spk.public_key()), "encoded": h(spk.encoded())},
        "kem_prekey": {"id": 2, "seed": h(&kem_seed), "public": h(kem.public_key()), "encoded": h(kem.encoded())},
        "one_time_prekey": if with_opk {
            let o = &store.one_time[&3].public;
            json!({"id": 3, "secret": h(&opk_secret), "public": h(o.public_key()), "encoded": h(o.encoded())})
        } else { Value::Null },
        "created_ms": NOT_BEFORE.0,
    });
    (store, json)
}

fn session_case(name: &str, with_opk: bool) -> Value {
    use crate::session::{Account, prekeys::PrekeyBundle};
    let ps = parties();
    let alice_dev = device(&ps[0]);
    let bob_dev = device(&ps[1]);
    let a_id = IdentityKeyPair::from_secret_bytes(&Secret::new(ps[0].identity_seed));
    let b_id = IdentityKeyPair::from_secret_bytes(&Secret::new(ps[1].identity_seed));
    let a_list = DeviceList::sign(
        &a_id,
        alice_dev.address(),
        1,
        NOT_BEFORE,
        &[alice_dev.certificate().clone()],
    )
    .unwrap();
    let b_list = DeviceList::sign(
        &b_id,
        bob_dev.address(),
        1,
        NOT_BEFORE,
        &[bob_dev.certificate().clone()],
    )
    .unwrap();
    let (bob_prekeys, prekeys_json) = prekey_store(&bob_dev, with_opk);
    let bundle = bob_prekeys.bundle(&bob_dev, with_opk.then_some(3)).unwrap();
    let alice_prekeys = {
        let mut s = Script(
            [
                seed("alice signed prekey").to_vec(),
                [seed("alice kem d"), seed("alice kem z")].concat(),
            ]
            .into(),
        );
        crate::session::PrekeyStore::new(&alice_dev, NOT_BEFORE, &mut s)
    };
    let mut alice = Account::from_parts_for_vectors(alice_dev, alice_prekeys, a_list.clone());
    let mut bob = Account::from_parts_for_vectors(bob_dev, bob_prekeys, b_list.clone());
    alice.update_device_list(b_list.clone()).unwrap();
    bob.update_device_list(a_list.clone()).unwrap();

    let tag = |what: &str| seed(&format!("{name} {what}"));
    let base_secret = tag("alice base key");
    let kem_m = tag("alice kem randomness");
    let alice_r0 = tag("alice ratchet key 0");
    // Setup, via the internal entry point that returns every intermediate value.
    let (session, trace) = crate::session::initiate_with(
        &alice.device,
        &PrekeyBundle::decode(bundle.encode()).unwrap(),
        NOT_BEFORE,
        x25519_dalek::StaticSecret::from(base_secret),
        &Secret::new(kem_m),
        &mut Script([alice_r0.to_vec()].into()),
    )
    .unwrap();
    let setup = json!({
        "bundle": h(&bundle.encode()),
        "base_secret": h(&base_secret),
        "base_public": h(x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(base_secret)).as_bytes()),
        "kem_randomness": h(&kem_m),
        "dh": trace.dh.iter().map(|d| h(d.expose())).collect::<Vec<_>>(),
        "kem_shared_secret": h(trace.kem_shared.expose()),
        "kem_ciphertext": h(&trace.kem_ciphertext),
        "root_key": h(trace.root.expose()),
        "initiator_ratchet_secret": h(&alice_r0),
    });
    let key = (bob.device.address().clone(), bob.device.id());
    alice.sessions.entry(key).or_default().insert(0, session);

    let mut messages = Vec::new();
    // Each message: who sends it, its text, its message id, and the ratchet key its
    // receiver makes when the message brings a new ratchet key (the sending half of the
    // receiver's DH ratchet step).
    let script = [
        (
            "alice",
            "Hello Bob! Quote for 40 crates attached.",
            tag("m1 id"),
            tag("bob ratchet key 1"),
        ),
        (
            "bob",
            "Thanks Alice, confirmed.",
            tag("m2 id"),
            tag("alice ratchet key 1"),
        ),
        (
            "alice",
            "Great, shipping Friday.",
            tag("m3 id"),
            tag("bob ratchet key 2"),
        ),
    ];
    for (from, body, id, receiver_ratchet) in script {
        let (sender, receiver) = if from == "alice" {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let peer = (receiver.device.address().clone(), receiver.device.id());
        let s = &sender.sessions[&peer][0];
        let (ratchet_secret, root, cks, n) = (
            h(s.ratchet.dhs.expose()),
            h(s.ratchet.root.expose()),
            s.ratchet.cks.clone().unwrap(),
            s.ratchet.ns,
        );
        let mk = crate::session::kdf_ck_for_vectors(&cks).1;
        let message_id: [u8; 16] = id[..16].try_into().unwrap();
        let (aead_key, nonce) = crate::session::message_keys(&mk, &message_id);
        let content = Content::Text(Text::plain(body));
        let to = receiver.device.address().clone();
        let sent = sender
            .encrypt(&to, &content, T0, &mut Script([message_id.to_vec()].into()))
            .unwrap();
        let env = sent.envelopes[0].envelope.clone();
        let u = UnverifiedEnvelope::decode(env.clone()).unwrap();
        let outer = wire::Envelope::decode(env.clone()).unwrap();
        let hd = wire::EnvelopeHeader::decode(outer.header.clone()).unwrap();
        let got = receiver
            .decrypt(
                env.clone(),
                T0,
                &mut Script([receiver_ratchet.to_vec()].into()),
            )
            .unwrap();
        assert_eq!(got.content, content);
        messages.push(json!({
            "from": from,
            "message_id": h(&message_id),
            "timestamp_ms": T0.0,
            "content": content_json(&content),
            "sender_ratchet_secret": ratchet_secret,
            "root_key": root,
            "chain_key": h(cks.expose()),
            "message_number": n,
            "message_key": h(mk.expose()),
            "aead_key": h(aead_key.expose()),
            "nonce": h(&nonce),
            "session_header": h(&hd.session),
            "header": h(&outer.header),
            "ciphertext": h(&outer.ciphertext),
            "signature": h(&outer.signature),
            "envelope": h(&env),
            "sequence": match &u.claimed_header().payload { crate::envelope::PayloadHeader::Session(s) => s.sequence, _ => 0 },
            "receiver_new_ratchet_secret": h(&receiver_ratchet),
        }));
    }
    // A saved-state fixture (SPEC.md 15.8): Bob's account after the three messages,
    // sealed under a fixed key and nonce. Its bytes pin the storage format; the
    // replay test restores it and checks the session still works.
    let state_key = Secret::new(tag("state key"));
    let state_nonce = tag("state nonce")[..12].to_vec();
    let blob = bob.save(&state_key, &mut Script([state_nonce.clone()].into()));
    let restored = Account::restore(&blob, &state_key).unwrap();
    assert_eq!(
        restored.save(&state_key, &mut Script([state_nonce.clone()].into())),
        blob
    );
    let state = json!({"key": h(state_key.expose()), "nonce": h(&state_nonce), "blob": h(&blob)});
    json!({"name": name, "bob_prekeys": prekeys_json, "setup": setup, "messages": messages, "bob_saved_state": state})
}

fn session_vectors() -> Value {
    json!({
        "description": "Session setup (SPEC.md 15.3), the first three messages (alice->bob, bob->alice, alice->bob) with every intermediate value. Parties and devices are those of identity.json; device lists have serial 1. Per message: 'sender_ratchet_secret' is the sender's current ratchet key, 'root_key' and 'chain_key' its root and sending chain key before the message, 'receiver_new_ratchet_secret' the ratchet key the receiver makes on receipt (the sending half of its DH ratchet step). Timestamps are T0. 'bob_saved_state' is Bob's account saved after the three messages (SPEC.md 15.8), under 'key' with 'nonce'.",
        "cases": [session_case("with_one_time_prekey", true), session_case("without_one_time_prekey", false)],
    })
}
