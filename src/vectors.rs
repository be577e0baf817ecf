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
    CertificateError, Device, DeviceCertificate, DeviceEvent, DeviceKeyPair, DeviceList,
    DeviceLists, IdentityKeyPair, SafetyNumber,
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

    let device_lists = device_list_vectors();
    let sessions = session_vectors();
    // Every new refusal is checked here from the JSON alone, exactly as the replay test
    // checks the files, so that a vector cannot be written with a wrong expectation.
    check_device_lists(&identity, &device_lists);
    check_session_negatives(&identity, &device_lists, &sessions);

    vec![
        ("identity.json", identity),
        ("envelopes.json", envelopes),
        ("addresses.json", addresses),
        ("sessions.json", sessions),
        ("device_lists.json", device_lists),
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

    // Device lists (positive, refused, tracker sequences) and the session refusals.
    let device_lists = load("device_lists.json");
    check_device_lists(&identity, &device_lists);
    check_session_negatives(&identity, &device_lists, &sessions);

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

/// One session case: its JSON and both accounts as they are after the three messages
/// (the negative vectors continue from there).
struct CaseRun {
    json: Value,
    alice: crate::session::Account,
    bob: crate::session::Account,
}

fn session_case(name: &str, with_opk: bool) -> CaseRun {
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
    CaseRun {
        json: json!({"name": name, "bob_prekeys": prekeys_json, "setup": setup, "messages": messages, "bob_saved_state": state}),
        alice,
        bob,
    }
}

fn session_vectors() -> Value {
    let mut with = session_case("with_one_time_prekey", true);
    let without = session_case("without_one_time_prekey", false);
    let negative = session_negatives(&mut with, &without);
    json!({
        "description": "Session setup (SPEC.md 15.3), the first three messages (alice->bob, bob->alice, alice->bob) with every intermediate value. Parties and devices are those of identity.json; device lists have serial 1. Per message: 'sender_ratchet_secret' is the sender's current ratchet key, 'root_key' and 'chain_key' its root and sending chain key before the message, 'receiver_new_ratchet_secret' the ratchet key the receiver makes on receipt (the sending half of its DH ratchet step). Timestamps are T0. 'bob_saved_state' is Bob's account saved after the three messages (SPEC.md 15.8), under 'key' with 'nonce'.",
        "cases": [with.json, without.json],
        "negative": negative,
    })
}

// ---------------------------------------------------------------------------------------
// Shared helpers of the device list and negative session vectors.
// ---------------------------------------------------------------------------------------

/// Hex, or `{"fill": {"byte", "len"}}` for a long run of one byte (as in envelopes.json).
fn hex_or_fill(b: &[u8]) -> Value {
    match b.first() {
        Some(first) if b.len() > 64 && b.iter().all(|x| x == first) => {
            json!({"fill": {"byte": h(&[*first]), "len": b.len()}})
        }
        _ => json!(h(b)),
    }
}

/// The bytes of a [`hex_or_fill`] value.
fn bytes_of(v: &Value) -> Bytes {
    match v {
        Value::String(_) => Bytes::from(unhex(v)),
        fill => Bytes::from(vec![
            u8::from_str_radix(
                fill["fill"]["byte"].as_str().unwrap(),
                16
            )
            .unwrap();
            fill["fill"]["len"].as_u64().unwrap() as usize
        ]),
    }
}

fn named<'a>(items: &'a Value, name: &str) -> &'a Value {
    items
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no entry named {name}"))
}

/// A party's device, rebuilt from its seeds and certificate in identity.json.
fn device_from_identity(identity: &Value, name: &str) -> Device {
    let p = named(&identity["parties"], name);
    let keys = DeviceKeyPair::from_secret_bytes(
        &Secret::new(unhex(&p["device_signing_seed"]).try_into().unwrap()),
        &Secret::new(unhex(&p["device_agreement_secret"]).try_into().unwrap()),
    );
    let cert = DeviceCertificate::decode(Bytes::from(unhex(&p["certificate"]["encoded"]))).unwrap();
    Device::from_parts(keys, cert).unwrap()
}

/// The text content of a session message, from its JSON.
fn content_from_json(v: &Value) -> Content {
    let t = &v["text"];
    assert!(t.is_object(), "the session messages are texts");
    Content::Text(Text {
        media_type: t["media_type"].as_str().unwrap().to_owned(),
        body: t["body"].as_str().unwrap().to_owned(),
        reply_to: t["reply_to"]
            .as_str()
            .map(|s| MessageId::from_bytes(hex::decode(s).unwrap().try_into().unwrap())),
    })
}

// ---------------------------------------------------------------------------------------
// Device list vectors (SPEC.md 15.6): signed lists, refused lists, tracker sequences.
// ---------------------------------------------------------------------------------------

/// Bob after an identity reset: a new identity key and a new device.
struct BobNew {
    identity_seed: [u8; 32],
    signing_seed: [u8; 32],
    agreement_secret: [u8; 32],
    identity: IdentityKeyPair,
    device: Device,
}

fn bob_new() -> BobNew {
    let identity_seed = seed("bob new identity");
    let signing_seed = seed("bob new device signing");
    let agreement_secret = seed("bob new device agreement");
    let identity = IdentityKeyPair::from_secret_bytes(&Secret::new(identity_seed));
    let device = Device::new(
        &identity,
        Address::parse("bob@two.example").unwrap(),
        DeviceKeyPair::from_secret_bytes(
            &Secret::new(signing_seed),
            &Secret::new(agreement_secret),
        ),
        NOT_BEFORE,
        NOT_AFTER,
    )
    .unwrap();
    BobNew {
        identity_seed,
        signing_seed,
        agreement_secret,
        identity,
        device,
    }
}

/// A `DeviceListBody` in the reference encoding, dated like every list of the vectors.
fn list_body(
    identity: &IdentityKeyPair,
    address: &str,
    serial: u64,
    devices: &[&DeviceCertificate],
) -> wire::DeviceListBody {
    wire::DeviceListBody {
        version: PROTOCOL_VERSION,
        address: address.to_owned(),
        identity_key: Bytes::copy_from_slice(&identity.public().to_bytes()),
        serial,
        issued_ms: NOT_BEFORE.0,
        devices: devices.iter().map(|c| c.encoded().clone()).collect(),
    }
}

/// A list with `body`, signed by `signer` over the exact body bytes, without any check
/// (for lists that must be refused).
fn sign_list(signer: &IdentityKeyPair, body: &wire::DeviceListBody) -> Bytes {
    let body = body.encode_to_vec();
    let key = ed25519_dalek::SigningKey::from_bytes(signer.secret_bytes().expose());
    let sig = crypto::sign(&key, Label::DeviceList, &[&body]);
    Bytes::from(
        wire::DeviceList {
            body: Bytes::from(body),
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        }
        .encode_to_vec(),
    )
}

fn event_json(e: &DeviceEvent) -> Value {
    match e {
        DeviceEvent::IdentityFirstSeen { address, identity } => json!({
            "event": "identity_first_seen", "address": address.as_str(),
            "identity_key": h(&identity.to_bytes()),
        }),
        DeviceEvent::IdentityChanged { address, old, new } => json!({
            "event": "identity_changed", "address": address.as_str(),
            "old_identity_key": h(&old.to_bytes()), "new_identity_key": h(&new.to_bytes()),
        }),
        DeviceEvent::DeviceAdded { address, device } => json!({
            "event": "device_added", "address": address.as_str(), "device_id": h(device.as_bytes()),
        }),
        DeviceEvent::DeviceRemoved { address, device } => json!({
            "event": "device_removed", "address": address.as_str(), "device_id": h(device.as_bytes()),
        }),
    }
}

fn device_list_vectors() -> Value {
    let ps = parties();
    let devices: Vec<Device> = ps.iter().map(device).collect();
    let ids: Vec<IdentityKeyPair> = ps
        .iter()
        .map(|p| IdentityKeyPair::from_secret_bytes(&Secret::new(p.identity_seed)))
        .collect();
    let new = bob_new();
    let cert = |name: &str| -> &DeviceCertificate {
        match name {
            "alice" => devices[0].certificate(),
            "bob" => devices[1].certificate(),
            "bob2" => devices[2].certificate(),
            "bob_new" => new.device.certificate(),
            _ => unreachable!("{name}"),
        }
    };
    let identity = |name: &str| -> &IdentityKeyPair {
        match name {
            "alice" => &ids[0],
            "bob" => &ids[1],
            "bob_new" => &new.identity,
            _ => unreachable!("{name}"),
        }
    };
    let address = |who: &str| {
        if who == "alice" {
            "alice@one.example"
        } else {
            "bob@two.example"
        }
    };

    // name, signer, serial, devices
    let specs: [(&str, &str, u64, &[&str]); 5] = [
        ("alice", "alice", 1, &["alice"]),
        ("bob", "bob", 1, &["bob"]),
        ("bob_two_devices", "bob", 2, &["bob", "bob2"]),
        ("bob_second_device_only", "bob", 3, &["bob2"]),
        ("bob_new_identity", "bob_new", 1, &["bob_new"]),
    ];
    let mut positive = Vec::new();
    let mut lists = std::collections::BTreeMap::new();
    for (name, who, serial, names) in specs {
        let certs: Vec<DeviceCertificate> = names.iter().map(|d| cert(d).clone()).collect();
        let list = DeviceList::sign(
            identity(who),
            &Address::parse(address(who)).unwrap(),
            serial,
            NOT_BEFORE,
            &certs,
        )
        .unwrap();
        let outer = wire::DeviceList::decode(list.encoded().clone()).unwrap();
        positive.push(json!({
            "name": name,
            "identity": who,
            "address": address(who),
            "identity_public": h(&identity(who).public().to_bytes()),
            "serial": serial,
            "issued_ms": NOT_BEFORE.0,
            "devices": names,
            "body": h(&outer.body),
            "signature_input": h(&crypto::framed(Label::DeviceList, &[&outer.body])),
            "signature": h(&outer.signature),
            "encoded": h(list.encoded()),
        }));
        lists.insert(name, list);
    }

    let bob_id = identity("bob");
    let bob_body = |names: &[&str]| {
        let certs: Vec<&DeviceCertificate> = names.iter().map(|d| cert(d)).collect();
        list_body(bob_id, "bob@two.example", 1, &certs)
    };
    let signed = |f: &dyn Fn(&mut wire::DeviceListBody)| {
        let mut b = bob_body(&["bob"]);
        f(&mut b);
        sign_list(bob_id, &b)
    };
    let bob_enc = lists["bob"].encoded().clone();
    let tampered = {
        let mut o = wire::DeviceList::decode(bob_enc.clone()).unwrap();
        let mut b = wire::DeviceListBody::decode(o.body.clone()).unwrap();
        b.serial = 2;
        o.body = Bytes::from(b.encode_to_vec());
        Bytes::from(o.encode_to_vec())
    };
    let bob2_truncated = cert("bob2")
        .encoded()
        .slice(..cert("bob2").encoded().len() - 1);
    let encs = |names: &[&str]| -> Vec<Bytes> {
        names.iter().map(|d| cert(d).encoded().clone()).collect()
    };
    let negative: Vec<(&str, &str, Bytes, Option<&str>, &str)> = vec![
        (
            "too_large",
            "one byte over MAX_DEVICE_LIST_LEN, all zeros: refused before parsing",
            Bytes::from(vec![0u8; crate::limits::MAX_DEVICE_LIST_LEN + 1]),
            None,
            "too_large",
        ),
        (
            "truncated",
            "bob's list without its last byte",
            bob_enc.slice(..bob_enc.len() - 1),
            None,
            "decode",
        ),
        (
            "version_2",
            "bob's body with version 2, signed by bob's identity",
            signed(&|b| b.version = 2),
            None,
            "unsupported_version",
        ),
        (
            "non_canonical_address",
            "bob's body with the address 'Bob@two.example', signed",
            signed(&|b| b.address = "Bob@two.example".into()),
            None,
            "invalid_address",
        ),
        (
            "small_order_identity_key",
            "bob's body with an identity key of 32 zero bytes (a point of order 4), signed by bob's identity",
            signed(&|b| b.identity_key = Bytes::from(vec![0u8; 32])),
            None,
            "invalid_field",
        ),
        (
            "too_many_devices",
            "bob's certificate 17 times (MAX_DEVICES_PER_USER + 1), signed: the count is checked before the signature and before duplicates",
            signed(&|b| b.devices = encs(&["bob"; crate::limits::MAX_DEVICES_PER_USER + 1])),
            None,
            "too_many_devices",
        ),
        (
            "empty",
            "bob's body without any device, signed",
            signed(&|b| b.devices.clear()),
            None,
            "empty",
        ),
        (
            "tampered_body",
            "bob's list with serial 2 in place of 1 in its body, not re-signed",
            tampered,
            None,
            "bad_signature",
        ),
        (
            "signed_by_another_identity",
            "bob's body (naming bob's identity key) signed by alice's identity key",
            sign_list(identity("alice"), &bob_body(&["bob"])),
            None,
            "bad_signature",
        ),
        (
            "invalid_certificate",
            "bob's certificate, then bob2's without its last byte, signed",
            signed(&|b| b.devices = vec![cert("bob").encoded().clone(), bob2_truncated.clone()]),
            None,
            "invalid_certificate",
        ),
        (
            "foreign_identity",
            "bob's certificate, then a valid certificate for bob@two.example under another identity key (bob_new), signed by bob's identity",
            signed(&|b| b.devices = encs(&["bob", "bob_new"])),
            None,
            "foreign_device",
        ),
        (
            "foreign_address",
            "bob's certificate, then alice's, signed by bob's identity",
            signed(&|b| b.devices = encs(&["bob", "alice"])),
            None,
            "foreign_device",
        ),
        (
            "duplicate_device",
            "bob's certificate twice, signed",
            signed(&|b| b.devices = encs(&["bob", "bob"])),
            None,
            "duplicate_device",
        ),
        (
            "address_mismatch",
            "bob's valid list (positive 'bob'), fetched for alice@one.example",
            bob_enc.clone(),
            Some("alice@one.example"),
            "address_mismatch",
        ),
    ];

    // Tracker sequences: each starts from a tracker that holds no list.
    let sequences: [(&str, &str, &[&str]); 2] = [
        (
            "stale",
            "A tracker holding bob's list with serial 2 refuses serial 1, and serial 2 again (stale: same identity key, serial not higher), changing nothing; then accepts serial 3.",
            &[
                "bob_two_devices",
                "bob",
                "bob_two_devices",
                "bob_second_device_only",
            ],
        ),
        (
            "identity_change",
            "A list for bob@two.example under another identity key is accepted whatever its serial and reported; so is a list under the old key afterwards (the tracker holds one list per address, not a history of keys).",
            &["bob", "bob_two_devices", "bob_new_identity", "bob"],
        ),
    ];
    let tracker: Vec<Value> = sequences
        .iter()
        .map(|(name, description, steps)| {
            let mut t = DeviceLists::new();
            let steps: Vec<Value> = steps
                .iter()
                .map(|l| match t.update(lists[l].clone()) {
                    Ok(events) => json!({
                        "list": l, "expected_error": null,
                        "events": events.iter().map(event_json).collect::<Vec<_>>(),
                    }),
                    Err(e) => json!({"list": l, "expected_error": e.code(), "events": []}),
                })
                .collect();
            json!({"name": name, "description": description, "steps": steps})
        })
        .collect();

    json!({
        "description": "Signed device lists (SPEC.md 15.6). Parties are those of identity.json, plus 'new_identity': bob@two.example after an identity reset (new identity key, new device 'bob_new'). Every list is dated 1700000000000. 'positive' lists verify; 'alice' and 'bob' are the lists the session vectors use. 'negative' lists are refused with 'expected_error' (decoded for 'fetched_for' if not null, SPEC.md VAL-LIST-12). 'tracker' sequences feed positive lists, by name, to a fresh tracker of contacts' lists; each step gives the events of an accepted list, in order, or the error of a refused one.",
        "new_identity": {
            "name": "bob_new",
            "address": "bob@two.example",
            "identity_seed": h(&new.identity_seed),
            "identity_public": h(&new.identity.public().to_bytes()),
            "device_signing_seed": h(&new.signing_seed),
            "device_agreement_secret": h(&new.agreement_secret),
            "device_id": h(new.device.id().as_bytes()),
            "certificate": h(new.device.certificate().encoded()),
        },
        "positive": positive,
        "negative": negative.into_iter().map(|(name, description, b, fetched_for, e)| json!({
            "name": name, "description": description, "encoded": hex_or_fill(&b),
            "fetched_for": fetched_for, "expected_error": e,
        })).collect::<Vec<_>>(),
        "tracker": tracker,
    })
}

/// Checks device_lists.json from the JSON alone (and identity.json's certificates).
fn check_device_lists(identity: &Value, lists: &Value) {
    let new = &lists["new_identity"];
    let new_cert = DeviceCertificate::decode(Bytes::from(unhex(&new["certificate"]))).unwrap();
    let new_id = IdentityKeyPair::from_secret_bytes(&Secret::new(
        unhex(&new["identity_seed"]).try_into().unwrap(),
    ));
    assert_eq!(new_cert.identity_key(), &new_id.public());
    assert_eq!(h(new_cert.device_id().as_bytes()), new["device_id"]);
    let cert_hex = |name: &str| -> Value {
        if name == new["name"] {
            new["certificate"].clone()
        } else {
            named(&identity["parties"], name)["certificate"]["encoded"].clone()
        }
    };
    for p in lists["positive"].as_array().unwrap() {
        let l = DeviceList::decode(bytes_of(&p["encoded"]))
            .unwrap_or_else(|e| panic!("device list {} refused: {e}", p["name"]));
        let outer = wire::DeviceList::decode(l.encoded().clone()).unwrap();
        assert_eq!(h(&outer.body), p["body"]);
        assert_eq!(h(&outer.signature), p["signature"]);
        assert_eq!(
            h(&crypto::framed(Label::DeviceList, &[&outer.body])),
            p["signature_input"]
        );
        assert_eq!(l.address().as_str(), p["address"]);
        assert_eq!(h(&l.identity_key().to_bytes()), p["identity_public"]);
        assert_eq!(l.serial(), p["serial"].as_u64().unwrap());
        assert_eq!(l.issued().0, p["issued_ms"].as_u64().unwrap());
        let want: Vec<Value> = p["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| cert_hex(d.as_str().unwrap()))
            .collect();
        let got: Vec<Value> = l.devices().iter().map(|c| json!(h(c.encoded()))).collect();
        assert_eq!(got, want, "devices of list {}", p["name"]);
    }
    for n in lists["negative"].as_array().unwrap() {
        let bytes = bytes_of(&n["encoded"]);
        let err = match n["fetched_for"].as_str() {
            None => DeviceList::decode(bytes).unwrap_err(),
            Some(a) => DeviceList::decode_for(bytes, &Address::parse(a).unwrap()).unwrap_err(),
        };
        assert_eq!(err.code(), n["expected_error"], "device list {}", n["name"]);
    }
    for seq in lists["tracker"].as_array().unwrap() {
        let mut t = DeviceLists::new();
        for step in seq["steps"].as_array().unwrap() {
            let list = named(&lists["positive"], step["list"].as_str().unwrap());
            let list = DeviceList::decode(bytes_of(&list["encoded"])).unwrap();
            match t.update(list) {
                Ok(events) => {
                    assert!(step["expected_error"].is_null(), "{} accepted", seq["name"]);
                    let got: Vec<Value> = events.iter().map(event_json).collect();
                    assert_eq!(json!(got), step["events"], "tracker {}", seq["name"]);
                }
                Err(e) => {
                    assert_eq!(e.code(), step["expected_error"], "tracker {}", seq["name"]);
                    assert_eq!(step["events"], json!([]));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Negative session vectors (SPEC.md 15.2-15.5): refused prekeys, bundles and messages.
// ---------------------------------------------------------------------------------------

/// A prekey with `body`, signed by `dev`'s device key, without any check.
fn sign_prekey_body(dev: &Device, body: &wire::PrekeyBody) -> Bytes {
    let body = body.encode_to_vec();
    let sig = crypto::sign(dev.keys().signing(), Label::PrekeySignature, &[&body]);
    Bytes::from(
        wire::SignedPrekey {
            body: Bytes::from(body),
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        }
        .encode_to_vec(),
    )
}

/// A bundle of these parts, without any check.
fn bundle_of(cert: &Bytes, spk: Option<&Bytes>, kem: Option<&Bytes>, opk: Option<&Bytes>) -> Bytes {
    let p = |b: Option<&Bytes>| b.map(|b| wire::SignedPrekey::decode(b.clone()).unwrap());
    Bytes::from(
        wire::PrekeyBundle {
            device_certificate: cert.clone(),
            signed_prekey: p(spk),
            kem_prekey: p(kem),
            one_time_prekey: p(opk),
        }
        .encode_to_vec(),
    )
}

/// A message that Bob's account must refuse, and the state he is in when he gets it.
struct ReceiveNegative {
    name: &'static str,
    description: &'static str,
    case: &'static str,
    after_messages: usize,
    forget_sessions: bool,
    forget_replay_window: bool,
    envelope: Bytes,
    expected: &'static str,
}

fn session_negatives(with: &mut CaseRun, without: &CaseRun) -> Value {
    let ps = parties();
    let (alice_dev, bob_dev, bob2_dev) = (device(&ps[0]), device(&ps[1]), device(&ps[2]));

    // Prekeys, each checked against bob's certificate (VAL-PREKEY).
    let pk = &with.json["bob_prekeys"];
    let enc = |k: &str| Bytes::from(unhex(&pk[k]["encoded"]));
    let (spk, kem, opk) = (
        enc("signed_prekey"),
        enc("kem_prekey"),
        enc("one_time_prekey"),
    );
    let resigned = |prekey: &Bytes, f: &dyn Fn(&mut wire::PrekeyBody)| {
        let outer = wire::SignedPrekey::decode(prekey.clone()).unwrap();
        let mut body = wire::PrekeyBody::decode(outer.body).unwrap();
        f(&mut body);
        sign_prekey_body(&bob_dev, &body)
    };
    let flipped_signature = |prekey: &Bytes| {
        let mut o = wire::SignedPrekey::decode(prekey.clone()).unwrap();
        let mut s = o.signature.to_vec();
        s[0] ^= 1;
        o.signature = Bytes::from(s);
        Bytes::from(o.encode_to_vec())
    };
    let changed_id = {
        let mut o = wire::SignedPrekey::decode(opk.clone()).unwrap();
        let mut body = wire::PrekeyBody::decode(o.body.clone()).unwrap();
        body.id = 4;
        o.body = Bytes::from(body.encode_to_vec());
        Bytes::from(o.encode_to_vec())
    };
    let bob2_spk = sign_prekey_body(
        &bob2_dev,
        &wire::PrekeyBody {
            version: PROTOCOL_VERSION,
            device_id: Bytes::copy_from_slice(bob2_dev.id().as_bytes()),
            id: 1,
            kind: wire::PrekeyKind::X25519 as i32,
            one_time: false,
            public_key: Bytes::copy_from_slice(
                x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(seed(
                    "bob2 signed prekey",
                )))
                .as_bytes(),
            ),
            created_ms: NOT_BEFORE.0,
        },
    );
    // The last 12-bit coefficient of the polynomial part (bytes 1149..1152 hold two).
    let over_modulus = resigned(&kem, &|b| {
        let mut k = b.public_key.to_vec();
        k[1150] |= 0xf0;
        k[1151] = 0xff;
        b.public_key = Bytes::from(k);
    });
    let prekeys: Vec<(&str, &str, Bytes, &str)> = vec![
        (
            "too_large",
            "1537 zero bytes (MAX_SIGNED_PREKEY_LEN + 1): refused before parsing",
            Bytes::from(vec![0u8; crate::limits::MAX_SIGNED_PREKEY_LEN + 1]),
            "too_large",
        ),
        (
            "truncated",
            "bob's signed prekey without its last byte",
            spk.slice(..spk.len() - 1),
            "decode",
        ),
        (
            "version_2",
            "bob's signed prekey with body version 2, re-signed by bob's device",
            resigned(&spk, &|b| b.version = 2),
            "unsupported_version",
        ),
        (
            "id_0",
            "bob's one-time prekey with id 0, re-signed",
            resigned(&opk, &|b| b.id = 0),
            "invalid_field",
        ),
        (
            "unknown_kind",
            "bob's signed prekey with kind 3, re-signed",
            resigned(&spk, &|b| b.kind = 3),
            "invalid_field",
        ),
        (
            "short_x25519_key",
            "bob's signed prekey with a 31-byte public key, re-signed",
            resigned(&spk, &|b| b.public_key = b.public_key.slice(..31)),
            "invalid_field",
        ),
        (
            "kem_key_over_modulus",
            "bob's ML-KEM prekey with the last 12-bit coefficient of its polynomial part (high nibble of byte 1150 and byte 1151) set to 4095 >= q, re-signed",
            over_modulus.clone(),
            "invalid_field",
        ),
        (
            "another_device",
            "bob2's signed prekey (bob2's device id, signed by bob2's device key; secret SHA-256 of 'bob2 signed prekey'), checked against bob's certificate",
            bob2_spk.clone(),
            "wrong_device",
        ),
        (
            "flipped_signature",
            "bob's signed prekey with the lowest bit of its first signature byte flipped",
            flipped_signature(&spk),
            "bad_prekey_signature",
        ),
        (
            "changed_id",
            "bob's one-time prekey with id 4 in place of 3, not re-signed",
            changed_id,
            "bad_prekey_signature",
        ),
    ];

    // Bundles (VAL-BUNDLE), from the parts of case with_one_time_prekey.
    let cert = bob_dev.certificate().encoded().clone();
    let bundle = Bytes::from(unhex(&with.json["setup"]["bundle"]));
    let bad_cert = {
        let mut c = cert.to_vec();
        let last = c.len() - 1;
        c[last] ^= 1;
        Bytes::from(c)
    };
    let bundles: Vec<(&str, &str, Bytes, &str)> = vec![
        (
            "too_large",
            "4097 zero bytes (MAX_PREKEY_BUNDLE_LEN + 1): refused before parsing",
            Bytes::from(vec![0u8; crate::limits::MAX_PREKEY_BUNDLE_LEN + 1]),
            "too_large",
        ),
        (
            "truncated",
            "the bundle of case with_one_time_prekey without its last byte",
            bundle.slice(..bundle.len() - 1),
            "decode",
        ),
        (
            "invalid_certificate",
            "bob's certificate with a bit of its device signature flipped (last byte)",
            bundle_of(&bad_cert, Some(&spk), Some(&kem), Some(&opk)),
            "invalid_certificate",
        ),
        (
            "missing_signed_prekey",
            "no signed prekey",
            bundle_of(&cert, None, Some(&kem), Some(&opk)),
            "invalid_field",
        ),
        (
            "missing_kem_prekey",
            "no ML-KEM prekey",
            bundle_of(&cert, Some(&spk), None, Some(&opk)),
            "invalid_field",
        ),
        (
            "flipped_one_time_signature",
            "the one-time prekey's signature with a bit flipped (prekey vector flipped_signature's edit)",
            bundle_of(
                &cert,
                Some(&spk),
                Some(&kem),
                Some(&flipped_signature(&opk)),
            ),
            "bad_prekey_signature",
        ),
        (
            "another_devices_prekey",
            "bob2's signed prekey (prekey vector another_device) in bob's bundle",
            bundle_of(&cert, Some(&bob2_spk), Some(&kem), Some(&opk)),
            "wrong_device",
        ),
        (
            "kem_key_over_modulus",
            "the ML-KEM slot holds prekey vector kem_key_over_modulus",
            bundle_of(&cert, Some(&spk), Some(&over_modulus), Some(&opk)),
            "invalid_field",
        ),
        (
            "kem_in_signed_slot",
            "the signed and the ML-KEM prekey swapped (both valid, wrong kinds)",
            bundle_of(&cert, Some(&kem), Some(&spk), Some(&opk)),
            "wrong_kind",
        ),
        (
            "one_time_in_signed_slot",
            "the one-time prekey in the signed prekey slot (right kind, wrong role), no one-time prekey",
            bundle_of(&cert, Some(&opk), Some(&kem), None),
            "wrong_kind",
        ),
        (
            "one_time_in_kem_slot",
            "the one-time prekey in the ML-KEM slot, no one-time prekey",
            bundle_of(&cert, Some(&spk), Some(&opk), None),
            "wrong_kind",
        ),
        (
            "signed_in_one_time_slot",
            "the signed prekey in the one-time slot too (right kind, wrong role)",
            bundle_of(&cert, Some(&spk), Some(&kem), Some(&spk)),
            "wrong_kind",
        ),
    ];

    // Messages to bob. Edited envelopes are re-signed by alice's device key, so that they
    // pass VAL-ENV-15 and reach the session layer.
    let message =
        |run: &CaseRun, i: usize| Bytes::from(unhex(&run.json["messages"][i]["envelope"]));
    let m1 = message(with, 0);
    let m3 = message(with, 2);
    let m1_without = message(without, 0);
    let edit_session = |env: &Bytes, f: &dyn Fn(&mut wire::SessionHeader)| {
        let outer = wire::Envelope::decode(env.clone()).unwrap();
        let mut hd = wire::EnvelopeHeader::decode(outer.header).unwrap();
        let mut sh = wire::SessionHeader::decode(hd.session.clone()).unwrap();
        f(&mut sh);
        hd.session = Bytes::from(sh.encode_to_vec());
        envelope::tests::resign(&alice_dev, &hd.encode_to_vec(), &outer.ciphertext)
    };
    let setup_edit = |f: &dyn Fn(&mut wire::SessionSetup)| {
        edit_session(&m1, &|sh| f(sh.setup.as_mut().unwrap()))
    };
    // Alice's next messages, sealed by her account after the three messages.
    let tag = |what: &str| seed(&format!("with_one_time_prekey {what}"));
    let bob_address = with.bob.device.address().clone();
    let send = |alice: &mut crate::session::Account, body: &str, id: [u8; 32]| {
        alice
            .encrypt(
                &bob_address,
                &Content::Text(Text::plain(body)),
                T0,
                &mut Script([id[..16].to_vec()].into()),
            )
            .unwrap()
            .envelopes[0]
            .envelope
            .clone()
    };
    let m4 = send(&mut with.alice, "Invoice follows.", tag("m4 id"));
    let flipped_m4 = {
        let outer = wire::Envelope::decode(m4.clone()).unwrap();
        let mut ct = outer.ciphertext.to_vec();
        ct[0] ^= 1;
        envelope::tests::resign(&alice_dev, &outer.header, &ct)
    };
    let low_order_m4 = edit_session(&m4, &|sh| sh.ratchet_key = Bytes::from(vec![0u8; 32]));
    let alice_key = (with.alice.device.address().clone(), with.alice.device.id());
    let bob_key = (bob_address.clone(), with.bob.device.id());
    let bob_nr = with.bob.sessions[&alice_key][0].ratchet.nr;
    {
        let r = &mut with.alice.sessions.get_mut(&bob_key).unwrap()[0].ratchet;
        while r.ns < bob_nr + crate::limits::MAX_SKIP_PER_CHAIN + 1 {
            r.next_send().unwrap();
        }
    }
    let far = send(&mut with.alice, "Far ahead.", tag("far id"));
    let far_n = {
        let outer = wire::Envelope::decode(far.clone()).unwrap();
        let hd = wire::EnvelopeHeader::decode(outer.header).unwrap();
        wire::SessionHeader::decode(hd.session)
            .unwrap()
            .message_number
    };
    assert_eq!(
        (bob_nr, far_n),
        (1, 1 + crate::limits::MAX_SKIP_PER_CHAIN + 1)
    );

    const WITH: &str = "with_one_time_prekey";
    const WITHOUT: &str = "without_one_time_prekey";
    let neg =
        |name, description, case, after_messages, forget: (bool, bool), envelope, expected| {
            ReceiveNegative {
                name,
                description,
                case,
                after_messages,
                forget_sessions: forget.0,
                forget_replay_window: forget.1,
                envelope,
                expected,
            }
        };
    let keep = (false, false);
    let receive = vec![
        neg(
            "unknown_signed_prekey",
            "m1 with signed_prekey_id 9 (never issued), re-signed",
            WITH,
            0,
            keep,
            setup_edit(&|s| s.signed_prekey_id = 9),
            "unknown_prekey",
        ),
        neg(
            "unknown_kem_prekey",
            "m1 with kem_prekey_id 1 (bob's signed X25519 prekey, not an ML-KEM prekey), re-signed",
            WITH,
            0,
            keep,
            setup_edit(&|s| s.kem_prekey_id = 1),
            "unknown_prekey",
        ),
        neg(
            "unknown_one_time_prekey",
            "m1 with one_time_prekey_id 9 (never issued), re-signed",
            WITH,
            0,
            keep,
            setup_edit(&|s| s.one_time_prekey_id = 9),
            "unknown_prekey",
        ),
        neg(
            "low_order_base_key",
            "m1 with a base key of 32 zero bytes, re-signed: DH2 is all zeros (VAL-SETUP-06)",
            WITH,
            0,
            keep,
            setup_edit(&|s| s.base_key = Bytes::from(vec![0u8; 32])),
            "non_contributory",
        ),
        neg(
            "flipped_kem_ciphertext",
            "m1 with the lowest bit of the first ML-KEM ciphertext byte flipped, re-signed: decapsulation gives an unrelated secret (implicit rejection), the AEAD refuses, the one-time prekey stays",
            WITH,
            0,
            keep,
            setup_edit(&|s| {
                let mut c = s.kem_ciphertext.to_vec();
                c[0] ^= 1;
                s.kem_ciphertext = Bytes::from(c);
            }),
            "decrypt_failed",
        ),
        neg(
            "low_order_ratchet_key_in_setup",
            "m1 with a ratchet key of 32 zero bytes, re-signed: the setup succeeds, the responder's first DH ratchet step gives all zeros (VAL-SETUP-07)",
            WITH,
            0,
            keep,
            edit_session(&m1, &|sh| sh.ratchet_key = Bytes::from(vec![0u8; 32])),
            "non_contributory",
        ),
        neg(
            "replayed_setup_one_time_prekey",
            "m1 again, after bob received it and then lost the session and his replay window: the one-time prekey it names was deleted (VAL-SETUP-03, before -04)",
            WITH,
            1,
            (true, true),
            m1.clone(),
            "unknown_prekey",
        ),
        neg(
            "replayed_setup",
            "m1 of case without_one_time_prekey again, after bob received it and then lost the session and his replay window: its base key is remembered with signed prekey 1 (VAL-SETUP-04)",
            WITHOUT,
            1,
            (true, true),
            m1_without,
            "replayed_setup",
        ),
        neg(
            "replay",
            "m1 again after bob received it: the replay window, checked before the session layer",
            WITH,
            1,
            keep,
            m1.clone(),
            "replay",
        ),
        neg(
            "duplicate_m1",
            "m1 again after bob received it and lost his replay window: the session, found by its base key, has used that chain position",
            WITH,
            1,
            (false, true),
            m1.clone(),
            "duplicate",
        ),
        neg(
            "duplicate_m3",
            "m3 again after the three messages, replay window lost",
            WITH,
            3,
            (false, true),
            m3.clone(),
            "duplicate",
        ),
        neg(
            "old_chain_m1",
            "m1 again after the three messages, replay window lost: the session is found by its base key, but m1's ratchet key is no longer the receiving one and its previous_chain_length 0 is below Nr = 1 (SPEC.md 15.4, receive step 3.1)",
            WITH,
            3,
            (false, true),
            m1.clone(),
            "decrypt_failed",
        ),
        neg(
            "no_session",
            "m3 again after the three messages, sessions and replay window lost: m3 carries no setup",
            WITH,
            3,
            (true, true),
            m3,
            "no_session",
        ),
        neg(
            "too_far_ahead",
            "alice's next message sealed after her sending chain skipped ahead: message_number 1002 while bob expects 1 on that chain (MAX_SKIP_PER_CHAIN + 1 ahead); message id from 'with_one_time_prekey far id'",
            WITH,
            3,
            keep,
            far,
            "too_far_ahead",
        ),
        neg(
            "flipped_ciphertext",
            "alice's next message (message id from 'with_one_time_prekey m4 id', message_number 1) with the lowest bit of its first ciphertext byte flipped, re-signed",
            WITH,
            3,
            keep,
            flipped_m4,
            "decrypt_failed",
        ),
        neg(
            "low_order_ratchet_key",
            "the same message with a ratchet key of 32 zero bytes, re-signed: it carries no setup, so sessions are tried and a failed trial reports decrypt_failed (SPEC.md 15.5, rule 3.3)",
            WITH,
            3,
            keep,
            low_order_m4,
            "decrypt_failed",
        ),
    ];

    let simple = |v: Vec<(&str, &str, Bytes, &str)>, owner: bool| -> Vec<Value> {
        v.into_iter()
            .map(|(name, description, b, e)| {
                let mut j = json!({"name": name, "description": description, "encoded": hex_or_fill(&b), "expected_error": e});
                if owner {
                    j["owner"] = json!("bob");
                }
                j
            })
            .collect()
    };
    json!({
        "description": "Session refusals, each with the SPEC.md 10 code. 'prekeys' are verified against the certificate of 'owner' (SPEC.md 15.2 VAL-PREKEY); 'bundles' are verified alone (VAL-BUNDLE). 'receive' envelopes are opened by bob's account (SPEC.md 15.3-15.5) in this state: his device, the prekeys of 'case' ('bob_prekeys'), alice's and bob's lists of device_lists.json; the first 'after_messages' messages of 'case' exchanged as the case says (bob receiving alice's with their 'receiver_new_ratchet_secret', sealing his own); then, if 'forget_sessions', every session with alice's device deleted, and if 'forget_replay_window', his replay window emptied. The receive must fail with 'expected_error' and change nothing.",
        "prekeys": simple(prekeys, true),
        "bundles": simple(bundles, false),
        "receive": receive.into_iter().map(|r| json!({
            "name": r.name, "description": r.description, "case": r.case, "receiver": "bob",
            "after_messages": r.after_messages, "forget_sessions": r.forget_sessions,
            "forget_replay_window": r.forget_replay_window, "now_ms": T0.0,
            "envelope": h(&r.envelope), "expected_error": r.expected,
        })).collect::<Vec<_>>(),
    })
}

/// Bob's account in the state a negative receive vector names, rebuilt from the files
/// alone: his device (identity.json), his prekeys (the case's secrets and seed, through
/// the prekey store's own code), the two lists of device_lists.json, then the first
/// `after` messages of the case.
fn bob_from_files(
    identity: &Value,
    lists: &Value,
    case: &Value,
    after: usize,
) -> crate::session::Account {
    use crate::session::prekeys::{OneTimeSecret, SignedPrekey};
    let bob = device_from_identity(identity, "bob");
    let pk = &case["bob_prekeys"];
    let mut script = Script(
        [
            unhex(&pk["signed_prekey"]["secret"]),
            unhex(&pk["kem_prekey"]["seed"]),
        ]
        .into(),
    );
    let mut store = crate::session::PrekeyStore::new(
        &bob,
        UnixMillis(pk["created_ms"].as_u64().unwrap()),
        &mut script,
    );
    assert_eq!(
        h(store.current_signed.encoded()),
        pk["signed_prekey"]["encoded"]
    );
    assert_eq!(h(store.current_kem.encoded()), pk["kem_prekey"]["encoded"]);
    let o = &pk["one_time_prekey"];
    if !o.is_null() {
        let public =
            SignedPrekey::decode(Bytes::from(unhex(&o["encoded"])), bob.certificate()).unwrap();
        let secret: [u8; 32] = unhex(&o["secret"]).try_into().unwrap();
        let derived = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret));
        assert_eq!(public.public_key().as_ref(), derived.as_bytes());
        let id = public.id();
        store.one_time.insert(
            id,
            OneTimeSecret {
                secret: Secret::new(secret),
                public,
            },
        );
        store.next_id = id + 1;
    }
    let list = |name: &str| {
        DeviceList::decode(bytes_of(&named(&lists["positive"], name)["encoded"])).unwrap()
    };
    let mut account = crate::session::Account::from_parts_for_vectors(bob, store, list("bob"));
    account.update_device_list(list("alice")).unwrap();
    let alice = Address::parse(
        named(&identity["parties"], "alice")["address"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    for m in &case["messages"].as_array().unwrap()[..after] {
        let ts = UnixMillis(m["timestamp_ms"].as_u64().unwrap());
        if m["from"] == "bob" {
            let sent = account
                .encrypt(
                    &alice,
                    &content_from_json(&m["content"]),
                    ts,
                    &mut Script([unhex(&m["message_id"])].into()),
                )
                .unwrap();
            assert_eq!(h(&sent.envelopes[0].envelope), m["envelope"]);
        } else {
            let got = account
                .decrypt(
                    Bytes::from(unhex(&m["envelope"])),
                    ts,
                    &mut Script([unhex(&m["receiver_new_ratchet_secret"])].into()),
                )
                .unwrap();
            assert_eq!(content_json(&got.content), m["content"]);
        }
    }
    account
}

/// Checks sessions.json's `negative` from the JSON alone (with identity.json and
/// device_lists.json).
fn check_session_negatives(identity: &Value, lists: &Value, sessions: &Value) {
    use crate::session::{PrekeyBundle, SignedPrekey};
    let neg = &sessions["negative"];
    for p in neg["prekeys"].as_array().unwrap() {
        let owner = device_from_identity(identity, p["owner"].as_str().unwrap());
        let e = SignedPrekey::decode(bytes_of(&p["encoded"]), owner.certificate()).unwrap_err();
        assert_eq!(e.code(), p["expected_error"], "prekey vector {}", p["name"]);
    }
    for b in neg["bundles"].as_array().unwrap() {
        let e = PrekeyBundle::decode(bytes_of(&b["encoded"])).unwrap_err();
        assert_eq!(e.code(), b["expected_error"], "bundle vector {}", b["name"]);
    }
    let alice = device_from_identity(identity, "alice");
    let key = Secret::new([0x4b; 32]);
    let state = |a: &crate::session::Account| a.save(&key, &mut Script([vec![0u8; 12]].into()));
    for r in neg["receive"].as_array().unwrap() {
        assert_eq!(r["receiver"], "bob");
        let case = named(&sessions["cases"], r["case"].as_str().unwrap());
        let after = r["after_messages"].as_u64().unwrap() as usize;
        let mut bob = bob_from_files(identity, lists, case, after);
        if r["forget_sessions"].as_bool().unwrap() {
            bob.reset_sessions(alice.address(), alice.id());
        }
        if r["forget_replay_window"].as_bool().unwrap() {
            bob.replay = ReplayWindow::default();
        }
        let before = state(&bob);
        let e = bob
            .decrypt(
                bytes_of(&r["envelope"]),
                UnixMillis(r["now_ms"].as_u64().unwrap()),
                &mut Script([vec![7u8; 32]].into()),
            )
            .unwrap_err();
        assert_eq!(
            e.code(),
            r["expected_error"],
            "receive vector {}",
            r["name"]
        );
        assert!(
            state(&bob) == before,
            "receive vector {}: a failed receive changed bob's state",
            r["name"]
        );
    }
}
