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

mod group_messages;
mod groups;

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
        Content::GroupSenderKey(k) => json!({"group_sender_key": {"encoded": h(&k.encode())}}),
        Content::GroupSync(g) => json!({"group_sync": {
            "group_id": h(g.state().id().as_bytes()),
            "epoch": g.state().epoch(),
            "rekey_epoch": g.state().rekey_epoch(),
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
    let groups = groups::group_vectors();
    groups::check_groups(&groups);
    let group_messages = group_messages::group_message_vectors();
    group_messages::check_group_messages(&group_messages);
    let protocol = protocol_vectors(
        &identity,
        &envelopes,
        &device_lists,
        &sessions,
        (&groups, &group_messages),
    );
    check_protocol(&identity, &device_lists, &protocol);

    vec![
        ("identity.json", identity),
        ("envelopes.json", envelopes),
        ("addresses.json", addresses),
        ("sessions.json", sessions),
        ("device_lists.json", device_lists),
        ("protocol.json", protocol),
        ("groups.json", groups),
        ("group_messages.json", group_messages),
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

    // The protocol (handshakes, example frames, refused frames), also through the
    // reference client and provider.
    check_protocol(&identity, &device_lists, &load("protocol.json"));

    // Groups: the chain, the join, refused changes and snapshots.
    groups::check_groups(&load("groups.json"));
    group_messages::check_group_messages(&load("group_messages.json"));

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

/// Runs of one byte longer than this are written as a `fill` inside a `concat` (see
/// [`compact_bytes`]).
const CONCAT_RUN: usize = 4096;

/// As [`hex_or_fill`], and for other bytes with a run of more than [`CONCAT_RUN`] equal
/// bytes `{"concat": [part, ...]}`: the parts in order, each hex or a `fill` (the negative
/// frames of protocol.json, whose oversized fields would otherwise take megabytes of hex).
fn compact_bytes(b: &[u8]) -> Value {
    if b.iter().all(|x| Some(x) == b.first()) {
        return hex_or_fill(b);
    }
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        let run = b[i..].iter().take_while(|x| **x == b[i]).count();
        if run > CONCAT_RUN {
            if start < i {
                parts.push(json!(h(&b[start..i])));
            }
            parts.push(hex_or_fill(&b[i..i + run]));
            start = i + run;
        }
        i += run;
    }
    if start == 0 {
        return json!(h(b));
    }
    if start < b.len() {
        parts.push(json!(h(&b[start..])));
    }
    json!({ "concat": parts })
}

/// The bytes of a [`hex_or_fill`] or [`compact_bytes`] value.
fn bytes_of(v: &Value) -> Bytes {
    match v {
        Value::String(_) => Bytes::from(unhex(v)),
        Value::Object(o) if o.contains_key("concat") => {
            let mut out = Vec::new();
            for part in o["concat"].as_array().unwrap() {
                out.extend_from_slice(&bytes_of(part));
            }
            Bytes::from(out)
        }
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

// ---------------------------------------------------------------------------------------
// Protocol vectors (SPEC.md 16): handshakes, example frames of every kind, refused frames.
// ---------------------------------------------------------------------------------------

/// A provider's key seed (SPEC.md 12): SHA-256 of "kogge test vector: <domain> provider key".
fn provider_seed(domain: &str) -> [u8; 32] {
    seed(&format!("{domain} provider key"))
}

fn provider_signing(domain: &str) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&provider_seed(domain))
}

/// A `uint64` in the decoded form: a decimal string (as in the proto3 JSON mapping), so
/// that values beyond 2^53 survive every JSON reader.
fn u64_json(v: u64) -> Value {
    json!(v.to_string())
}

fn error_json(e: &wire::Error) -> Value {
    json!({"code": e.code, "message": e.message, "retryable": e.retryable, "retry_after_ms": u64_json(e.retry_after_ms)})
}

fn hexes(v: &[Bytes]) -> Vec<String> {
    v.iter().map(|b| h(b)).collect()
}

/// A `GroupItem` in the decoded form of protocol.json (SPEC.md 20): `snapshot` always,
/// of the `body` oneof only the member that is set.
fn group_item_json(g: &wire::GroupItem) -> Value {
    let mut o = json!({ "snapshot": h(&g.snapshot) });
    match &g.body {
        Some(wire::group_item::Body::Envelope(e)) => o["envelope"] = json!(h(e)),
        Some(wire::group_item::Body::Change(c)) => o["change"] = json!(h(c)),
        None => {}
    }
    o
}

fn group_relay_json(g: &wire::GroupRelay) -> Value {
    json!({"item": g.item.as_ref().map(group_item_json), "recipients": g.recipients})
}

/// A frame in the decoded form of protocol.json: field names as in protocol.proto, bytes
/// as hex, `uint64` as decimal strings, enums by name; every field outside a `oneof` is
/// present (with its default when absent on the wire; an absent message is null); of a
/// `oneof`, only the member that is set.
fn frame_json(body: &wire::frame::Body) -> Value {
    use wire::frame::Body;
    match body {
        Body::Hello(m) => json!({"hello": {
            "version": m.version,
            "nonce": h(&m.nonce),
            "role": wire::Role::try_from(m.role).map_or_else(|_| json!(m.role), |r| json!(r.as_str_name())),
            "acceptor": m.acceptor,
        }}),
        Body::Challenge(m) => json!({"challenge": {
            "nonce": h(&m.nonce), "domain": m.domain,
            "provider_key": h(&m.provider_key), "signature": h(&m.signature),
        }}),
        Body::Auth(m) => {
            let mut a = json!({"signature": h(&m.signature)});
            match &m.who {
                Some(wire::auth::Who::Device(d)) => {
                    a["device"] =
                        json!({"certificate": h(&d.certificate), "device_list": h(&d.device_list)});
                }
                Some(wire::auth::Who::Provider(p)) => a["provider"] = json!({"domain": p.domain}),
                None => {}
            }
            json!({ "auth": a })
        }
        Body::Welcome(m) => json!({"welcome": {"time_ms": u64_json(m.time_ms)}}),
        Body::Goodbye(m) => json!({"goodbye": {"error": m.error.as_ref().map(error_json)}}),
        Body::Request(r) => {
            use wire::request::Body as B;
            let mut o = json!({ "id": u64_json(r.id) });
            let member = match &r.body {
                Some(B::PublishDeviceList(m)) => Some((
                    "publish_device_list",
                    json!({"device_list": h(&m.device_list)}),
                )),
                Some(B::PublishPrekeys(m)) => Some((
                    "publish_prekeys",
                    json!({"signed_prekey": h(&m.signed_prekey), "kem_prekey": h(&m.kem_prekey), "one_time": hexes(&m.one_time)}),
                )),
                Some(B::FetchBundles(m)) => Some((
                    "fetch_bundles",
                    json!({"address": m.address, "devices": hexes(&m.devices), "requester": m.requester}),
                )),
                Some(B::Submit(m)) => Some(("submit", json!({"envelopes": hexes(&m.envelopes)}))),
                Some(B::Relay(m)) => Some((
                    "relay",
                    json!({
                        "envelopes": hexes(&m.envelopes),
                        "groups": m.groups.iter().map(group_relay_json).collect::<Vec<_>>(),
                    }),
                )),
                Some(B::SubmitGroup(m)) => Some((
                    "submit_group",
                    json!({"envelope": h(&m.envelope), "recipients": m.recipients}),
                )),
                Some(B::OrderGroupChange(m)) => Some((
                    "order_group_change",
                    json!({"change": h(&m.change), "sequencer": m.sequencer, "requester": m.requester}),
                )),
                Some(B::FetchDeviceList(m)) => Some((
                    "fetch_device_list",
                    json!({"address": m.address, "requester": m.requester}),
                )),
                None => None,
            };
            if let Some((k, v)) = member {
                o[k] = v;
            }
            json!({ "request": o })
        }
        Body::Response(r) => {
            use wire::response::Body as B;
            let mut o = json!({ "id": u64_json(r.id) });
            let member = match &r.body {
                Some(B::Error(e)) => Some(("error", error_json(e))),
                Some(B::Done(_)) => Some(("done", json!({}))),
                Some(B::Bundles(m)) => Some((
                    "bundles",
                    json!({"device_list": h(&m.device_list), "bundles": hexes(&m.bundles)}),
                )),
                Some(B::RelayResult(m)) => Some((
                    "relay_result",
                    json!({"results": m.results.iter().map(error_json).collect::<Vec<_>>()}),
                )),
                Some(B::DeviceList(m)) => {
                    Some(("device_list", json!({"device_list": h(&m.device_list)})))
                }
                Some(B::GroupChange(m)) => Some(("group_change", json!({"change": h(&m.change)}))),
                None => None,
            };
            if let Some((k, v)) = member {
                o[k] = v;
            }
            json!({ "response": o })
        }
        Body::Deliver(d) => {
            let items: Vec<Value> = d
                .items
                .iter()
                .map(|i| {
                    let mut o = json!({ "seq": u64_json(i.seq) });
                    match &i.item {
                        Some(wire::mailbox_item::Item::Envelope(e)) => o["envelope"] = json!(h(e)),
                        Some(wire::mailbox_item::Item::Group(g)) => o["group"] = group_item_json(g),
                        Some(wire::mailbox_item::Item::Notice(n)) => {
                            o["notice"] = match &n.body {
                                Some(wire::notice::Body::Undeliverable(u)) => json!({"undeliverable": {
                                    "message_id": h(&u.message_id), "recipient": u.recipient,
                                    "device": h(&u.device), "reason": u.reason.as_ref().map(error_json),
                                }}),
                                Some(wire::notice::Body::PrekeysLow(p)) => {
                                    json!({"prekeys_low": {"remaining": p.remaining}})
                                }
                                None => json!({}),
                            }
                        }
                        None => {}
                    }
                    o
                })
                .collect();
            json!({"deliver": {"items": items}})
        }
        Body::DeliverAck(a) => {
            json!({"deliver_ack": {"seqs": a.seqs.iter().map(|s| u64_json(*s)).collect::<Vec<_>>()}})
        }
    }
}

fn frame_vector(body: &wire::frame::Body) -> Value {
    let encoded = crate::protocol::encode(body.clone());
    json!({"encoded": h(&encoded), "decoded": frame_json(body)})
}

/// Who connects in a handshake vector.
enum Connector<'a> {
    /// A device: its party name in identity.json, its device signing key, the certificate
    /// and the (possibly empty) device list it presents.
    Device {
        party: &'static str,
        signing: &'a ed25519_dalek::SigningKey,
        certificate: &'a Bytes,
        device_list: &'a Bytes,
        device_list_name: Option<&'static str>,
    },
    /// A provider, by domain.
    Provider { domain: &'static str },
}

fn handshake_vector(
    name: &str,
    description: &str,
    acceptor: &str,
    binding: &[u8],
    who: &Connector<'_>,
) -> Value {
    use ed25519_dalek::Signer;
    use wire::frame::Body;
    let hello_nonce = seed(&format!("{name} hello nonce"));
    let challenge_nonce = seed(&format!("{name} challenge nonce"));
    let acceptor_key = provider_signing(acceptor);
    let (role, identity, signer, auth_who) = match who {
        Connector::Device {
            signing,
            certificate,
            device_list,
            ..
        } => (
            wire::Role::Device,
            certificate.to_vec(),
            (*signing).clone(),
            wire::auth::Who::Device(wire::DeviceAuth {
                certificate: (*certificate).clone(),
                device_list: (*device_list).clone(),
            }),
        ),
        Connector::Provider { domain } => (
            wire::Role::Provider,
            domain.as_bytes().to_vec(),
            provider_signing(domain),
            wire::auth::Who::Provider(wire::ProviderAuth {
                domain: (*domain).to_owned(),
            }),
        ),
    };
    let d = acceptor.as_bytes();
    let challenge_input = crypto::framed(
        Label::ChallengeSignature,
        &[&hello_nonce, &challenge_nonce, d, binding],
    );
    let challenge_signature = crate::protocol::sign_challenge(
        &acceptor_key,
        &hello_nonce,
        &challenge_nonce,
        acceptor,
        binding,
    )
    .to_bytes();
    assert_eq!(
        challenge_signature,
        acceptor_key.sign(&challenge_input).to_bytes()
    );
    let auth_input = crypto::framed(
        Label::AuthSignature,
        &[&challenge_nonce, &hello_nonce, d, binding, &identity],
    );
    let auth_signature = crate::protocol::sign_auth(
        &signer,
        &challenge_nonce,
        &hello_nonce,
        acceptor,
        binding,
        &identity,
    )
    .to_bytes();
    assert_eq!(auth_signature, signer.sign(&auth_input).to_bytes());
    let hello = Body::Hello(wire::Hello {
        version: PROTOCOL_VERSION,
        nonce: Bytes::copy_from_slice(&hello_nonce),
        role: role as i32,
        acceptor: acceptor.to_owned(),
    });
    let challenge = Body::Challenge(wire::Challenge {
        nonce: Bytes::copy_from_slice(&challenge_nonce),
        domain: acceptor.to_owned(),
        provider_key: Bytes::copy_from_slice(acceptor_key.verifying_key().as_bytes()),
        signature: Bytes::copy_from_slice(&challenge_signature),
    });
    let auth = Body::Auth(wire::Auth {
        who: Some(auth_who),
        signature: Bytes::copy_from_slice(&auth_signature),
    });
    let welcome = Body::Welcome(wire::Welcome { time_ms: T0.0 });
    let mut v = json!({
        "name": name,
        "description": description,
        "role": role.as_str_name(),
        "acceptor": acceptor,
        "acceptor_key_seed": h(&provider_seed(acceptor)),
        "acceptor_key": h(acceptor_key.verifying_key().as_bytes()),
        "binding": h(binding),
        "hello_nonce": h(&hello_nonce),
        "challenge_nonce": h(&challenge_nonce),
        "challenge_input": h(&challenge_input),
        "challenge_signature": h(&challenge_signature),
        "auth_identity": h(&identity),
        "auth_input": h(&auth_input),
        "auth_signature": h(&auth_signature),
        "welcome_time_ms": T0.0,
        "frames": {
            "hello": frame_vector(&hello),
            "challenge": frame_vector(&challenge),
            "auth": frame_vector(&auth),
            "welcome": frame_vector(&welcome),
        },
    });
    match who {
        Connector::Device {
            party,
            certificate,
            device_list,
            device_list_name,
            ..
        } => {
            v["device"] = json!(party);
            v["certificate"] = json!(h(certificate));
            v["device_list"] = json!(h(device_list));
            v["device_list_name"] = json!(device_list_name);
        }
        Connector::Provider { domain } => {
            v["connector_domain"] = json!(domain);
            v["connector_key_seed"] = json!(h(&provider_seed(domain)));
            v["connector_key"] = json!(h(provider_signing(domain).verifying_key().as_bytes()));
        }
    }
    v
}

/// Structural rules of SPEC.md 16.2 by their name there (`Message.field`), with the name
/// the reference reports in [`crate::protocol::FrameError`].
const FRAME_FIELDS: &[(&str, &str)] = &[
    ("Hello.nonce", "hello.nonce"),
    ("Hello.acceptor", "hello.acceptor"),
    ("Challenge.nonce", "challenge.nonce"),
    ("Challenge.domain", "challenge.domain"),
    ("Challenge.provider_key", "challenge.provider_key"),
    ("Challenge.signature", "challenge.signature"),
    ("Auth.signature", "auth.signature"),
    ("Auth.who", "auth.who"),
    ("DeviceAuth.certificate", "auth.certificate"),
    ("DeviceAuth.device_list", "auth.device_list"),
    ("ProviderAuth.domain", "auth.domain"),
    ("Error.code", "error.code"),
    ("Error.message", "error.message"),
    ("Request.body", "request.body"),
    ("Response.body", "response.body"),
    ("PublishDeviceList.device_list", "device_list"),
    ("PublishPrekeys.signed_prekey", "signed_prekey"),
    ("PublishPrekeys.kem_prekey", "kem_prekey"),
    ("PublishPrekeys.one_time", "one_time"),
    ("FetchBundles.address", "fetch.address"),
    ("FetchBundles.requester", "fetch.requester"),
    ("FetchBundles.devices", "fetch.devices"),
    ("FetchDeviceList.address", "fetch.address"),
    ("FetchDeviceList.requester", "fetch.requester"),
    ("Submit.envelopes", "submit.envelopes"),
    ("Relay.envelopes", "relay.envelopes"),
    ("GroupRelay.item", "relay.groups.item"),
    ("GroupRelay.recipients", "relay.groups.recipients"),
    ("SubmitGroup.envelope", "submit_group.envelope"),
    ("SubmitGroup.recipients", "submit_group.recipients"),
    ("OrderGroupChange.change", "order_group_change.change"),
    ("OrderGroupChange.sequencer", "order_group_change.sequencer"),
    ("OrderGroupChange.requester", "order_group_change.requester"),
    ("GroupChangeOrdered.change", "group_change.change"),
    ("GroupItem.body", "group_item.body"),
    ("GroupItem.envelope", "group_item.envelope"),
    ("GroupItem.snapshot", "group_item.snapshot"),
    ("GroupItem.change", "group_item.change"),
    ("Bundles.device_list", "bundles.device_list"),
    ("Bundles.bundles", "bundles.bundles"),
    ("DeviceListResponse.device_list", "device_list"),
    ("RelayResult.results", "relay_result.results"),
    ("Deliver.items", "deliver.items"),
    ("MailboxItem.item", "deliver.item"),
    ("MailboxItem.envelope", "deliver.envelope"),
    ("Undeliverable.message_id", "undeliverable.message_id"),
    ("Undeliverable.device", "undeliverable.device"),
    ("Undeliverable.recipient", "undeliverable.recipient"),
    ("DeliverAck.seqs", "deliver_ack.seqs"),
];

/// Checks that the reference refuses `bytes` as a negative protocol vector says.
fn assert_refused(name: &str, bytes: &[u8], expected: &str, field: Option<&str>) {
    use crate::protocol::FrameError;
    let e = crate::protocol::check_frame(bytes)
        .map(|_| ())
        .expect_err(name);
    let (got, reference) = match &e {
        FrameError::TooLarge { .. } => ("too_large", None),
        FrameError::Decode => ("decode", None),
        FrameError::InvalidField(f) => ("invalid_field", Some(*f)),
        FrameError::TooMany { field, .. } => ("too_many", Some(*field)),
    };
    assert_eq!(got, expected, "frame vector {name}: {e}");
    match (field, reference) {
        (None, None) => {}
        (Some(f), Some(r)) => assert!(same_rule(f, r), "frame vector {name}: {f} is not {r}"),
        _ => panic!("frame vector {name}: field {field:?}, the reference names {reference:?}"),
    }
}

/// Whether `field` (a SPEC.md name) is the rule the reference reported as `reference`.
fn same_rule(field: &str, reference: &str) -> bool {
    FRAME_FIELDS.contains(&(field, reference))
}

/// A length-delimited protobuf field, for frames the reference encoder would not write.
fn ld_field(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn protocol_vectors(
    identity: &Value,
    envelopes: &Value,
    device_lists: &Value,
    sessions: &Value,
    (groups, group_messages): (&Value, &Value),
) -> Value {
    use wire::frame::Body;
    use wire::{request, response};
    let list = |name: &str| bytes_of(&named(&device_lists["positive"], name)["encoded"]);
    let (alice_list, bob_list) = (list("alice"), list("bob"));
    let alice = named(&identity["parties"], "alice");
    let bob = named(&identity["parties"], "bob");
    let alice_cert = bytes_of(&alice["certificate"]["encoded"]);
    let alice_signing = ed25519_dalek::SigningKey::from_bytes(
        &unhex(&alice["device_signing_seed"]).try_into().unwrap(),
    );
    let bob_device = bytes_of(&bob["device_id"]);
    let envelope = |name: &str| {
        envelopes["positive"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["vector"])
            .find(|v| v["name"] == name)
            .unwrap()
    };
    let (text, receipt) = (envelope("text"), envelope("read_receipt"));
    let envs = vec![bytes_of(&text["envelope"]), bytes_of(&receipt["envelope"])];
    let case = named(&sessions["cases"], "with_one_time_prekey");
    let pk = &case["bob_prekeys"];
    let bob_to_alice = &case["messages"][1];
    assert_eq!(bob_to_alice["from"], "bob");
    // Group traffic (SPEC.md 20): alice's first group message of group_messages.json, and
    // the changes of groups.json's chain, countersigned as the members get them and without
    // the countersignature as their authors hand them to be ordered.
    let group_envelope = bytes_of(&group_messages["messages"][0]["envelope"]);
    let change = |name: &str| bytes_of(&named(&groups["chain"], name)["encoded"]);
    let unsequenced = |name: &str| {
        let mut c = wire::GroupChange::decode(change(name)).unwrap();
        assert!(!c.sequencer_signature.is_empty());
        c.sequencer_signature = Bytes::new();
        Bytes::from(c.encode_to_vec())
    };
    let add = change("add");
    let join_snapshot = bytes_of(&groups["join"]["snapshot"]);
    assert_eq!(bytes_of(&groups["join"]["change"]), add);
    let group_item = |body: wire::group_item::Body, snapshot: &Bytes| wire::GroupItem {
        body: Some(body),
        snapshot: snapshot.clone(),
    };
    let envelope_item = group_item(
        wire::group_item::Body::Envelope(group_envelope.clone()),
        &Bytes::new(),
    );
    let change_item = group_item(wire::group_item::Body::Change(add.clone()), &Bytes::new());
    let join_item = group_item(wire::group_item::Body::Change(add.clone()), &join_snapshot);

    // (1), (2): handshakes.
    let handshakes = vec![
        handshake_vector(
            "device_register",
            "alice's device connects to one.example with a 32-byte channel binding and presents its user's device list (positive 'alice' of device_lists.json): the provider registers alice@one.example (VAL-PROTO-013) and welcomes the device",
            "one.example",
            &seed("device_register channel binding"),
            &Connector::Device {
                party: "alice",
                signing: &alice_signing,
                certificate: &alice_cert,
                device_list: &alice_list,
                device_list_name: Some("alice"),
            },
        ),
        handshake_vector(
            "device_reconnect",
            "alice's device connects again, over a transport without channel binding (empty binding) and without a device list: the provider, which stores alice's list since 'device_register', welcomes it (VAL-PROTO-016, -017)",
            "one.example",
            &[],
            &Connector::Device {
                party: "alice",
                signing: &alice_signing,
                certificate: &alice_cert,
                device_list: &Bytes::new(),
                device_list_name: None,
            },
        ),
        handshake_vector(
            "provider_connect",
            "one.example connects to two.example (to relay alice's envelopes to bob) with a 32-byte channel binding; two.example's resolver gives one.example's provider key (VAL-PROTO-018 to -021)",
            "two.example",
            &seed("provider_connect channel binding"),
            &Connector::Provider {
                domain: "one.example",
            },
        ),
    ];

    // (3): example frames of every request, response and delivery kind.
    let req = |id: u64, b: request::Body| Body::Request(wire::Request { id, body: Some(b) });
    let resp = |id: u64, b: response::Body| Body::Response(wire::Response { id, body: Some(b) });
    let rate_limited = wire::Error {
        code: "rate_limited".into(),
        message: "fetch bucket empty".into(),
        retryable: true,
        retry_after_ms: 600,
    };
    let frames: Vec<(&str, &str, &str, Body)> = vec![
        (
            "publish_device_list",
            "alice's device",
            "PublishDeviceList of alice's list (positive 'alice' of device_lists.json), request id 1",
            req(
                1,
                request::Body::PublishDeviceList(wire::PublishDeviceList {
                    device_list: alice_list.clone(),
                }),
            ),
        ),
        (
            "publish_prekeys",
            "bob's device",
            "PublishPrekeys of bob's prekeys of session case with_one_time_prekey: signed prekey (id 1), ML-KEM-768 prekey (id 2), one one-time prekey (id 3); request id 2",
            req(
                2,
                request::Body::PublishPrekeys(wire::PublishPrekeys {
                    signed_prekey: bytes_of(&pk["signed_prekey"]["encoded"]),
                    kem_prekey: bytes_of(&pk["kem_prekey"]["encoded"]),
                    one_time: vec![bytes_of(&pk["one_time_prekey"]["encoded"])],
                }),
            ),
        ),
        (
            "fetch_bundles",
            "alice's device",
            "FetchBundles for bob@two.example, bob's device only, requester empty (a device); request id 3",
            req(
                3,
                request::Body::FetchBundles(wire::FetchBundles {
                    address: "bob@two.example".into(),
                    devices: vec![bob_device.clone()],
                    requester: String::new(),
                }),
            ),
        ),
        (
            "fetch_bundles_forwarded",
            "one.example",
            "the same fetch forwarded by one.example to two.example on alice's behalf: every listed device (devices empty), requester alice@one.example; request id 9",
            req(
                9,
                request::Body::FetchBundles(wire::FetchBundles {
                    address: "bob@two.example".into(),
                    devices: Vec::new(),
                    requester: "alice@one.example".into(),
                }),
            ),
        ),
        (
            "fetch_device_list",
            "alice's device",
            "FetchDeviceList for bob@two.example, requester empty; request id 4",
            req(
                4,
                request::Body::FetchDeviceList(wire::FetchDeviceList {
                    address: "bob@two.example".into(),
                    requester: String::new(),
                }),
            ),
        ),
        (
            "submit",
            "alice's device",
            "Submit of the envelopes 'text' and 'read_receipt' of envelopes.json (alice to bob); request id 5",
            req(
                5,
                request::Body::Submit(wire::Submit {
                    envelopes: envs.clone(),
                }),
            ),
        ),
        (
            "relay",
            "one.example",
            "Relay of the same two envelopes from one.example to two.example; request id 2^64 - 1 (ids may take any value: a 10-byte varint)",
            req(
                u64::MAX,
                request::Body::Relay(wire::Relay {
                    envelopes: envs.clone(),
                    groups: Vec::new(),
                }),
            ),
        ),
        (
            "response_error",
            "one.example",
            "Response to request 3: Error rate_limited, retryable, retry after 600 ms",
            resp(3, response::Body::Error(rate_limited)),
        ),
        (
            "response_error_message_at_limit",
            "one.example",
            "Response to request 3: Error with a message of 'ü' 128 times: 128 characters, 256 bytes of UTF-8 (MAX_ERROR_MESSAGE_LEN, lengths are counted in bytes): valid",
            resp(
                3,
                response::Body::Error(wire::Error {
                    code: "invalid".into(),
                    message: "ü".repeat(128),
                    retryable: false,
                    retry_after_ms: 0,
                }),
            ),
        ),
        (
            "response_done",
            "one.example",
            "Response to request 5 (the submit): Done, an empty message, still written (a set oneof member)",
            resp(5, response::Body::Done(wire::Done {})),
        ),
        (
            "response_bundles",
            "one.example",
            "Response to request 3: Bundles with bob's list (positive 'bob' of device_lists.json) and the bundle of session case with_one_time_prekey",
            resp(
                3,
                response::Body::Bundles(wire::Bundles {
                    device_list: bob_list.clone(),
                    bundles: vec![bytes_of(&case["setup"]["bundle"])],
                }),
            ),
        ),
        (
            "response_relay_result",
            "two.example",
            "Response to the relay (id 2^64 - 1): RelayResult, the first envelope stored (an Error with every field empty, written as an empty message), the second refused with unknown_device",
            resp(
                u64::MAX,
                response::Body::RelayResult(wire::RelayResult {
                    results: vec![
                        wire::Error::default(),
                        wire::Error {
                            code: "unknown_device".into(),
                            message: "envelope 1: device not on bob@two.example's list".into(),
                            retryable: false,
                            retry_after_ms: 0,
                        },
                    ],
                }),
            ),
        ),
        (
            "response_device_list",
            "one.example",
            "Response to request 4: DeviceListResponse with bob's list",
            resp(
                4,
                response::Body::DeviceList(wire::DeviceListResponse {
                    device_list: bob_list.clone(),
                }),
            ),
        ),
        (
            "deliver",
            "one.example",
            "Deliver to alice's device: seq 1, bob's reply (message 2 of session case with_one_time_prekey); seq 2, Undeliverable for the 'read_receipt' envelope to bob's device, reason expired; seq 3, PrekeysLow with 19 remaining",
            Body::Deliver(wire::Deliver {
                items: vec![
                    wire::MailboxItem {
                        seq: 1,
                        item: Some(wire::mailbox_item::Item::Envelope(bytes_of(
                            &bob_to_alice["envelope"],
                        ))),
                    },
                    wire::MailboxItem {
                        seq: 2,
                        item: Some(wire::mailbox_item::Item::Notice(wire::Notice {
                            body: Some(wire::notice::Body::Undeliverable(wire::Undeliverable {
                                message_id: bytes_of(&receipt["message_id"]),
                                recipient: "bob@two.example".into(),
                                device: bob_device.clone(),
                                reason: Some(wire::Error {
                                    code: "expired".into(),
                                    message: "two.example unreachable for 3 days".into(),
                                    retryable: false,
                                    retry_after_ms: 0,
                                }),
                            })),
                        })),
                    },
                    wire::MailboxItem {
                        seq: 3,
                        item: Some(wire::mailbox_item::Item::Notice(wire::Notice {
                            body: Some(wire::notice::Body::PrekeysLow(wire::PrekeysLow {
                                remaining: 19,
                            })),
                        })),
                    },
                ],
            }),
        ),
        (
            "deliver_future_notice",
            "one.example",
            "Deliver to alice's device: seq 4, a Notice whose body is not set (a notice kind of a later version): structurally valid, acknowledged and otherwise ignored",
            Body::Deliver(wire::Deliver {
                items: vec![wire::MailboxItem {
                    seq: 4,
                    item: Some(wire::mailbox_item::Item::Notice(wire::Notice {
                        body: None,
                    })),
                }],
            }),
        ),
        (
            "deliver_ack",
            "alice's device",
            "DeliverAck of seqs 1, 2, 3 (the reference encoder packs a repeated uint64, as proto3 does by default)",
            Body::DeliverAck(wire::DeliverAck {
                seqs: vec![1, 2, 3],
            }),
        ),
        (
            "goodbye",
            "one.example",
            "Goodbye with error unknown_device (the device was removed from its user's list)",
            Body::Goodbye(wire::Goodbye {
                error: Some(wire::Error {
                    code: "unknown_device".into(),
                    message: "not on alice@one.example's device list".into(),
                    retryable: false,
                    retry_after_ms: 0,
                }),
            }),
        ),
        (
            "goodbye_without_error",
            "alice's device",
            "Goodbye without an error: an empty message",
            Body::Goodbye(wire::Goodbye { error: None }),
        ),
        (
            "submit_group",
            "alice's device",
            "SubmitGroup (SPEC.md 20.2) of alice's group message at iteration 0 (messages[0] of group_messages.json) to the group's members, alice's own address included (her other devices get it); request id 10",
            req(
                10,
                request::Body::SubmitGroup(wire::SubmitGroup {
                    envelope: group_envelope.clone(),
                    recipients: vec![
                        "alice@one.example".into(),
                        "bob@two.example".into(),
                        "carol@three.example".into(),
                    ],
                }),
            ),
        ),
        (
            "order_group_change",
            "alice's device",
            "OrderGroupChange (SPEC.md 20.3): the change 'add' of groups.json (alice adds dave) without its sequencer signature, to the sequencer one.example, alice's own provider; requester empty (a device); request id 11",
            req(
                11,
                request::Body::OrderGroupChange(wire::OrderGroupChange {
                    change: unsequenced("add"),
                    sequencer: "one.example".into(),
                    requester: String::new(),
                }),
            ),
        ),
        (
            "order_group_change_forwarded",
            "two.example",
            "the change 'remove' of groups.json (bob, from his device bob2, removes carol) without its sequencer signature, forwarded by bob's provider two.example to the sequencer one.example, requester bob@two.example; request id 12",
            req(
                12,
                request::Body::OrderGroupChange(wire::OrderGroupChange {
                    change: unsequenced("remove"),
                    sequencer: "one.example".into(),
                    requester: "bob@two.example".into(),
                }),
            ),
        ),
        (
            "response_group_change",
            "one.example",
            "Response to request 11: GroupChangeOrdered with the change 'add', countersigned by one.example (as in groups.json)",
            resp(
                11,
                response::Body::GroupChange(wire::GroupChangeOrdered {
                    change: add.clone(),
                }),
            ),
        ),
        (
            "relay_groups",
            "one.example",
            "Relay (SPEC.md 20.4) from one.example to two.example of group relays only: alice's group message for bob@two.example; the countersigned change 'add' for bob@two.example, a member before it; the same change with the snapshot of the state it applies to (join.snapshot of groups.json) for dave@two.example, whom it adds; request id 13",
            req(
                13,
                request::Body::Relay(wire::Relay {
                    envelopes: Vec::new(),
                    groups: vec![
                        wire::GroupRelay {
                            item: Some(envelope_item.clone()),
                            recipients: vec!["bob@two.example".into()],
                        },
                        wire::GroupRelay {
                            item: Some(change_item.clone()),
                            recipients: vec!["bob@two.example".into()],
                        },
                        wire::GroupRelay {
                            item: Some(join_item.clone()),
                            recipients: vec!["dave@two.example".into()],
                        },
                    ],
                }),
            ),
        ),
        (
            "response_relay_result_groups",
            "two.example",
            "Response to request 13: RelayResult, one entry per group relay in order, all stored",
            resp(
                13,
                response::Body::RelayResult(wire::RelayResult {
                    results: vec![wire::Error::default(); 3],
                }),
            ),
        ),
        (
            "deliver_group",
            "two.example",
            "Deliver to bob's device: seq 7, alice's group message; seq 8, the countersigned change 'add' (no snapshot: bob is a member already)",
            Body::Deliver(wire::Deliver {
                items: vec![
                    wire::MailboxItem {
                        seq: 7,
                        item: Some(wire::mailbox_item::Item::Group(envelope_item.clone())),
                    },
                    wire::MailboxItem {
                        seq: 8,
                        item: Some(wire::mailbox_item::Item::Group(change_item.clone())),
                    },
                ],
            }),
        ),
        (
            "deliver_group_join",
            "two.example",
            "Deliver to dave's device: seq 1, the countersigned change 'add' that adds dave, with the snapshot of the state it applies to (join of groups.json): dave's device joins (SPEC.md 18.6, 20.5)",
            Body::Deliver(wire::Deliver {
                items: vec![wire::MailboxItem {
                    seq: 1,
                    item: Some(wire::mailbox_item::Item::Group(join_item.clone())),
                }],
            }),
        ),
    ];
    let mut frames: Vec<Value> = frames
        .into_iter()
        .map(|(name, sender, description, body)| {
            let mut v = frame_vector(&body);
            v["name"] = json!(name);
            v["sender"] = json!(sender);
            v["description"] = json!(description);
            v["reference_encoding"] = json!(true);
            v
        })
        .collect();
    // A valid encoding other than the reference one: the same acknowledgement with its
    // seqs unpacked (one key per value), which every decoder must accept too.
    let unpacked: Vec<u8> = {
        let mut inner = Vec::new();
        for s in [1u64, 2, 3] {
            prost::encoding::encode_key(1, prost::encoding::WireType::Varint, &mut inner);
            prost::encoding::encode_varint(s, &mut inner);
        }
        ld_field(8, &inner)
    };
    frames.push(json!({
        "name": "deliver_ack_unpacked",
        "sender": "alice's device",
        "description": "the DeliverAck of seqs 1, 2, 3 with its repeated uint64 unpacked: not the reference encoding, but a decoder must read both forms",
        "encoded": h(&unpacked),
        "decoded": frame_json(&Body::DeliverAck(wire::DeliverAck { seqs: vec![1, 2, 3] })),
        "reference_encoding": false,
    }));

    // (4): frames that break a rule of SPEC.md 16.2.
    let enc = |b: Body| crate::protocol::encode(b).to_vec();
    let hello = |nonce: Vec<u8>, acceptor: String| {
        Body::Hello(wire::Hello {
            version: PROTOCOL_VERSION,
            nonce: Bytes::from(nonce),
            role: wire::Role::Device as i32,
            acceptor,
        })
    };
    let good_hello = enc(hello(vec![7; 32], "one.example".into()));
    let challenge = |key: usize, sig: usize| {
        Body::Challenge(wire::Challenge {
            nonce: Bytes::from(vec![7; 32]),
            domain: "one.example".into(),
            provider_key: Bytes::from(vec![1; key]),
            signature: Bytes::from(vec![2; sig]),
        })
    };
    let err = |code: &str, message: String| wire::Error {
        code: code.into(),
        message,
        retryable: false,
        retry_after_ms: 0,
    };
    let undeliverable = |id: usize, device: usize, reason: Option<wire::Error>| {
        Body::Deliver(wire::Deliver {
            items: vec![wire::MailboxItem {
                seq: 2,
                item: Some(wire::mailbox_item::Item::Notice(wire::Notice {
                    body: Some(wire::notice::Body::Undeliverable(wire::Undeliverable {
                        message_id: Bytes::from(vec![3; id]),
                        recipient: "bob@two.example".into(),
                        device: Bytes::from(vec![4; device]),
                        reason,
                    })),
                })),
            }],
        })
    };
    let few = |n: usize| vec![Bytes::from_static(&[0]); n];
    let submit_group = |envelope: Bytes, recipients: Vec<String>| {
        req(
            10,
            request::Body::SubmitGroup(wire::SubmitGroup {
                envelope,
                recipients,
            }),
        )
    };
    let many_recipients: Vec<String> = (1..=crate::limits::MAX_GROUP_RECIPIENTS + 1)
        .map(|i| format!("u{i}@two.example"))
        .collect();
    let order = |change: Bytes, sequencer: String, requester: String| {
        req(
            11,
            request::Body::OrderGroupChange(wire::OrderGroupChange {
                change,
                sequencer,
                requester,
            }),
        )
    };
    let relay = |envelopes: Vec<Bytes>, groups: Vec<wire::GroupRelay>| {
        req(13, request::Body::Relay(wire::Relay { envelopes, groups }))
    };
    let one_relay = wire::GroupRelay {
        item: Some(wire::GroupItem {
            body: Some(wire::group_item::Body::Envelope(Bytes::from_static(&[0]))),
            snapshot: Bytes::new(),
        }),
        recipients: vec!["bob@two.example".into()],
    };
    let deliver_group = |g: wire::GroupItem| {
        Body::Deliver(wire::Deliver {
            items: vec![wire::MailboxItem {
                seq: 9,
                item: Some(wire::mailbox_item::Item::Group(g)),
            }],
        })
    };
    let long_message = "ü".repeat(128) + "x";
    let invalid_utf8 = {
        let mut hello = wire::Hello {
            version: PROTOCOL_VERSION,
            nonce: Bytes::from(vec![7; 32]),
            role: wire::Role::Device as i32,
            acceptor: String::new(),
        }
        .encode_to_vec();
        hello.extend_from_slice(&[0x22, 0x01, 0xff]);
        ld_field(1, &hello)
    };
    // name, description, the frame, expected_error, field
    type Refused<'a> = (&'a str, &'a str, Vec<u8>, &'a str, Option<&'a str>);
    let negative: Vec<Refused<'_>> = vec![
        (
            "too_large",
            "MAX_FRAME_LEN + 1 zero bytes: refused before decoding",
            vec![0; crate::limits::MAX_FRAME_LEN + 1],
            "too_large",
            None,
        ),
        (
            "empty",
            "zero bytes: a Frame with no body set",
            Vec::new(),
            "decode",
            None,
        ),
        (
            "unknown_frame_kind",
            "only field 10 (an empty message): a frame kind of a later version, no body set",
            vec![0x52, 0x00],
            "decode",
            None,
        ),
        (
            "truncated",
            "a valid Hello frame without its last byte",
            good_hello[..good_hello.len() - 1].to_vec(),
            "decode",
            None,
        ),
        (
            "hello_wrong_wire_type",
            "field 1 (hello) as a varint: a known field with the wrong wire type",
            vec![0x08, 0x01],
            "decode",
            None,
        ),
        (
            "hello_acceptor_invalid_utf8",
            "a Hello whose acceptor is the byte ff: not UTF-8",
            invalid_utf8,
            "decode",
            None,
        ),
        (
            "hello_nonce_31",
            "a Hello with a 31-byte nonce",
            enc(hello(vec![7; 31], "one.example".into())),
            "invalid_field",
            Some("Hello.nonce"),
        ),
        (
            "hello_nonce_33",
            "a Hello with a 33-byte nonce",
            enc(hello(vec![7; 33], "one.example".into())),
            "invalid_field",
            Some("Hello.nonce"),
        ),
        (
            "hello_acceptor_254",
            "a Hello whose acceptor is 254 bytes (MAX_DOMAIN_LEN + 1)",
            enc(hello(vec![7; 32], "a".repeat(254))),
            "invalid_field",
            Some("Hello.acceptor"),
        ),
        (
            "challenge_provider_key_31",
            "a Challenge with a 31-byte provider key",
            enc(challenge(31, 64)),
            "invalid_field",
            Some("Challenge.provider_key"),
        ),
        (
            "challenge_signature_63",
            "a Challenge with a 63-byte signature",
            enc(challenge(32, 63)),
            "invalid_field",
            Some("Challenge.signature"),
        ),
        (
            "auth_without_who",
            "an Auth with a signature and neither device nor provider",
            enc(Body::Auth(wire::Auth {
                who: None,
                signature: Bytes::from(vec![2; 64]),
            })),
            "invalid_field",
            Some("Auth.who"),
        ),
        (
            "auth_certificate_1025",
            "an Auth whose certificate is 1025 bytes (MAX_CERTIFICATE_LEN + 1)",
            enc(Body::Auth(wire::Auth {
                who: Some(wire::auth::Who::Device(wire::DeviceAuth {
                    certificate: Bytes::from(vec![5; 1025]),
                    device_list: Bytes::new(),
                })),
                signature: Bytes::from(vec![2; 64]),
            })),
            "invalid_field",
            Some("DeviceAuth.certificate"),
        ),
        (
            "auth_provider_domain_254",
            "an Auth whose ProviderAuth.domain is 254 bytes",
            enc(Body::Auth(wire::Auth {
                who: Some(wire::auth::Who::Provider(wire::ProviderAuth {
                    domain: "a".repeat(254),
                })),
                signature: Bytes::from(vec![2; 64]),
            })),
            "invalid_field",
            Some("ProviderAuth.domain"),
        ),
        (
            "goodbye_error_code_33",
            "a Goodbye whose error code is 33 bytes (MAX_ERROR_CODE_LEN + 1)",
            enc(Body::Goodbye(wire::Goodbye {
                error: Some(err(&"e".repeat(33), String::new())),
            })),
            "invalid_field",
            Some("Error.code"),
        ),
        (
            "error_message_257",
            "a Response Error whose message is 'ü' 128 times and 'x': 129 characters, 257 bytes (MAX_ERROR_MESSAGE_LEN + 1)",
            enc(resp(
                3,
                response::Body::Error(err("invalid", long_message.clone())),
            )),
            "invalid_field",
            Some("Error.message"),
        ),
        (
            "request_without_body",
            "a Request with an id and no body",
            enc(Body::Request(wire::Request { id: 1, body: None })),
            "invalid_field",
            Some("Request.body"),
        ),
        (
            "response_without_body",
            "a Response with an id and no body",
            enc(Body::Response(wire::Response { id: 1, body: None })),
            "invalid_field",
            Some("Response.body"),
        ),
        (
            "publish_prekeys_201_one_time",
            "a PublishPrekeys with 201 one-time prekeys (MAX_PUBLISH_ONE_TIME + 1), each one byte",
            enc(req(
                2,
                request::Body::PublishPrekeys(wire::PublishPrekeys {
                    signed_prekey: Bytes::from_static(&[0]),
                    kem_prekey: Bytes::from_static(&[0]),
                    one_time: few(201),
                }),
            )),
            "too_many",
            Some("PublishPrekeys.one_time"),
        ),
        (
            "fetch_bundles_device_15",
            "a FetchBundles with a 15-byte device id",
            enc(req(
                3,
                request::Body::FetchBundles(wire::FetchBundles {
                    address: "bob@two.example".into(),
                    devices: vec![Bytes::from(vec![4; 15])],
                    requester: String::new(),
                }),
            )),
            "invalid_field",
            Some("FetchBundles.devices"),
        ),
        (
            "fetch_bundles_17_devices",
            "a FetchBundles with 17 device ids (MAX_FETCH_DEVICES + 1)",
            enc(req(
                3,
                request::Body::FetchBundles(wire::FetchBundles {
                    address: "bob@two.example".into(),
                    devices: vec![Bytes::from(vec![4; 16]); 17],
                    requester: String::new(),
                }),
            )),
            "too_many",
            Some("FetchBundles.devices"),
        ),
        (
            "submit_empty",
            "a Submit without envelopes",
            enc(req(
                5,
                request::Body::Submit(wire::Submit {
                    envelopes: Vec::new(),
                }),
            )),
            "invalid_field",
            Some("Submit.envelopes"),
        ),
        (
            "submit_33_envelopes",
            "a Submit of 33 one-byte envelopes (MAX_SUBMIT_ENVELOPES + 1)",
            enc(req(
                5,
                request::Body::Submit(wire::Submit { envelopes: few(33) }),
            )),
            "too_many",
            Some("Submit.envelopes"),
        ),
        (
            "relay_empty",
            "a Relay with neither envelopes nor group relays",
            enc(req(
                6,
                request::Body::Relay(wire::Relay {
                    envelopes: Vec::new(),
                    groups: Vec::new(),
                }),
            )),
            "invalid_field",
            Some("Relay.envelopes"),
        ),
        (
            "bundles_17",
            "a Bundles response with 17 one-byte bundles (MAX_DEVICES_PER_USER + 1)",
            enc(resp(
                3,
                response::Body::Bundles(wire::Bundles {
                    device_list: Bytes::from_static(&[0]),
                    bundles: few(17),
                }),
            )),
            "too_many",
            Some("Bundles.bundles"),
        ),
        (
            "relay_result_error_code_33",
            "a RelayResult whose second entry has a 33-byte code",
            enc(resp(
                6,
                response::Body::RelayResult(wire::RelayResult {
                    results: vec![wire::Error::default(), err(&"e".repeat(33), String::new())],
                }),
            )),
            "invalid_field",
            Some("Error.code"),
        ),
        (
            "deliver_item_without_item",
            "a Deliver whose item has a seq and neither envelope nor notice",
            enc(Body::Deliver(wire::Deliver {
                items: vec![wire::MailboxItem { seq: 1, item: None }],
            })),
            "invalid_field",
            Some("MailboxItem.item"),
        ),
        (
            "deliver_65_items",
            "a Deliver of 65 one-byte envelopes (MAX_DELIVER_ITEMS + 1)",
            enc(Body::Deliver(wire::Deliver {
                items: (1..=65)
                    .map(|seq| wire::MailboxItem {
                        seq,
                        item: Some(wire::mailbox_item::Item::Envelope(Bytes::from_static(&[0]))),
                    })
                    .collect(),
            })),
            "too_many",
            Some("Deliver.items"),
        ),
        (
            "undeliverable_message_id_15",
            "an Undeliverable notice with a 15-byte message id",
            enc(undeliverable(15, 16, None)),
            "invalid_field",
            Some("Undeliverable.message_id"),
        ),
        (
            "undeliverable_device_17",
            "an Undeliverable notice with a 17-byte device id",
            enc(undeliverable(16, 17, None)),
            "invalid_field",
            Some("Undeliverable.device"),
        ),
        (
            "undeliverable_reason_message_257",
            "an Undeliverable notice whose reason has a 257-byte message",
            enc(undeliverable(16, 16, Some(err("expired", long_message)))),
            "invalid_field",
            Some("Error.message"),
        ),
        (
            "deliver_ack_1025_seqs",
            "a DeliverAck of 1025 seqs (MAX_ACK_SEQS + 1)",
            enc(Body::DeliverAck(wire::DeliverAck {
                seqs: (1..=1025).collect(),
            })),
            "too_many",
            Some("DeliverAck.seqs"),
        ),
        (
            "submit_group_empty_envelope",
            "a SubmitGroup with an empty envelope and one recipient",
            enc(submit_group(Bytes::new(), vec!["bob@two.example".into()])),
            "invalid_field",
            Some("SubmitGroup.envelope"),
        ),
        (
            "submit_group_envelope_102401",
            "a SubmitGroup whose envelope is 102401 bytes (MAX_ENVELOPE_LEN + 1)",
            enc(submit_group(
                Bytes::from(vec![9; crate::limits::MAX_ENVELOPE_LEN + 1]),
                vec!["bob@two.example".into()],
            )),
            "invalid_field",
            Some("SubmitGroup.envelope"),
        ),
        (
            "submit_group_no_recipients",
            "a SubmitGroup of a one-byte envelope without recipients",
            enc(submit_group(Bytes::from_static(&[0]), Vec::new())),
            "invalid_field",
            Some("SubmitGroup.recipients"),
        ),
        (
            "submit_group_1101_recipients",
            "a SubmitGroup of a one-byte envelope to 1101 recipients (MAX_GROUP_RECIPIENTS + 1): u1@two.example to u1101@two.example",
            enc(submit_group(Bytes::from_static(&[0]), many_recipients)),
            "too_many",
            Some("SubmitGroup.recipients"),
        ),
        (
            "submit_group_recipient_319",
            "a SubmitGroup whose recipient is 319 bytes (MAX_ADDRESS_LEN + 1)",
            enc(submit_group(
                Bytes::from_static(&[0]),
                vec![format!("{}@{}", "a".repeat(65), "b".repeat(253))],
            )),
            "invalid_field",
            Some("SubmitGroup.recipients"),
        ),
        (
            "order_group_change_49153",
            "an OrderGroupChange whose change is 49153 bytes (MAX_GROUP_CHANGE_LEN + 1)",
            enc(order(
                Bytes::from(vec![9; crate::limits::MAX_GROUP_CHANGE_LEN + 1]),
                "one.example".into(),
                String::new(),
            )),
            "invalid_field",
            Some("OrderGroupChange.change"),
        ),
        (
            "order_group_change_sequencer_254",
            "an OrderGroupChange whose sequencer is 254 bytes (MAX_DOMAIN_LEN + 1)",
            enc(order(
                Bytes::from_static(&[0]),
                "a".repeat(254),
                String::new(),
            )),
            "invalid_field",
            Some("OrderGroupChange.sequencer"),
        ),
        (
            "order_group_change_requester_319",
            "an OrderGroupChange whose requester is 319 bytes (MAX_ADDRESS_LEN + 1)",
            enc(order(
                Bytes::from_static(&[0]),
                "one.example".into(),
                format!("{}@{}", "a".repeat(65), "b".repeat(253)),
            )),
            "invalid_field",
            Some("OrderGroupChange.requester"),
        ),
        (
            "group_change_ordered_49153",
            "a GroupChangeOrdered response whose change is 49153 bytes",
            enc(resp(
                11,
                response::Body::GroupChange(wire::GroupChangeOrdered {
                    change: Bytes::from(vec![9; crate::limits::MAX_GROUP_CHANGE_LEN + 1]),
                }),
            )),
            "invalid_field",
            Some("GroupChangeOrdered.change"),
        ),
        (
            "relay_257_with_groups",
            "a Relay of 200 one-byte envelopes and 57 group relays (each a one-byte group envelope for bob@two.example): 257 entries together (MAX_RELAY_ENVELOPES + 1)",
            enc(relay(few(200), vec![one_relay.clone(); 57])),
            "too_many",
            Some("Relay.envelopes"),
        ),
        (
            "relay_group_without_item",
            "a Relay whose group relay has recipients and no item",
            enc(relay(
                Vec::new(),
                vec![wire::GroupRelay {
                    item: None,
                    recipients: vec!["bob@two.example".into()],
                }],
            )),
            "invalid_field",
            Some("GroupRelay.item"),
        ),
        (
            "relay_group_item_without_body",
            "a Relay whose group relay's item has neither envelope nor change",
            enc(relay(
                Vec::new(),
                vec![wire::GroupRelay {
                    item: Some(wire::GroupItem {
                        body: None,
                        snapshot: Bytes::new(),
                    }),
                    recipients: vec!["bob@two.example".into()],
                }],
            )),
            "invalid_field",
            Some("GroupItem.body"),
        ),
        (
            "relay_group_envelope_with_snapshot",
            "a Relay whose group relay's item is a one-byte group envelope with a one-byte snapshot (a snapshot comes only with a change)",
            enc(relay(
                Vec::new(),
                vec![wire::GroupRelay {
                    item: Some(wire::GroupItem {
                        body: Some(wire::group_item::Body::Envelope(Bytes::from_static(&[0]))),
                        snapshot: Bytes::from_static(&[0]),
                    }),
                    recipients: vec!["bob@two.example".into()],
                }],
            )),
            "invalid_field",
            Some("GroupItem.snapshot"),
        ),
        (
            "relay_group_no_recipients",
            "a Relay whose group relay has an item (a one-byte group envelope) and no recipients",
            enc(relay(
                Vec::new(),
                vec![wire::GroupRelay {
                    item: one_relay.item.clone(),
                    recipients: Vec::new(),
                }],
            )),
            "invalid_field",
            Some("GroupRelay.recipients"),
        ),
        (
            "deliver_group_without_body",
            "a Deliver whose item is a group item with neither envelope nor change",
            enc(deliver_group(wire::GroupItem {
                body: None,
                snapshot: Bytes::new(),
            })),
            "invalid_field",
            Some("GroupItem.body"),
        ),
        (
            "deliver_group_envelope_102401",
            "a Deliver whose group item is a group envelope of 102401 bytes (MAX_ENVELOPE_LEN + 1)",
            enc(deliver_group(wire::GroupItem {
                body: Some(wire::group_item::Body::Envelope(Bytes::from(vec![
                    9;
                    crate::limits::MAX_ENVELOPE_LEN
                        + 1
                ]))),
                snapshot: Bytes::new(),
            })),
            "invalid_field",
            Some("GroupItem.envelope"),
        ),
        (
            "deliver_group_change_49153",
            "a Deliver whose group item is a change of 49153 bytes (MAX_GROUP_CHANGE_LEN + 1)",
            enc(deliver_group(wire::GroupItem {
                body: Some(wire::group_item::Body::Change(Bytes::from(vec![
                    9;
                    crate::limits::MAX_GROUP_CHANGE_LEN
                        + 1
                ]))),
                snapshot: Bytes::new(),
            })),
            "invalid_field",
            Some("GroupItem.change"),
        ),
        (
            "deliver_group_snapshot_393217",
            "a Deliver whose group item is a one-byte change with a snapshot of 393217 bytes (MAX_GROUP_SNAPSHOT_LEN + 1)",
            enc(deliver_group(wire::GroupItem {
                body: Some(wire::group_item::Body::Change(Bytes::from_static(&[0]))),
                snapshot: Bytes::from(vec![9; crate::limits::MAX_GROUP_SNAPSHOT_LEN + 1]),
            })),
            "invalid_field",
            Some("GroupItem.snapshot"),
        ),
    ];
    let negative: Vec<Value> = negative
        .into_iter()
        .map(|(name, description, bytes, expected, field)| {
            assert_refused(name, &bytes, expected, field);
            json!({"name": name, "description": description, "encoded": compact_bytes(&bytes), "expected_error": expected, "field": field})
        })
        .collect();

    json!({
        "description": "The client-provider and provider-provider protocol (SPEC.md 16). Parties are those of identity.json; provider keys are Ed25519 keys from 'acceptor_key_seed' and 'connector_key_seed' (SHA-256 of 'kogge test vector: <domain> provider key'). 'handshakes' are whole connection authentications (SPEC.md 16.3) with the framed transcripts (SPEC.md 2.2), their signatures and the four frames; the acceptor's clock is 'welcome_time_ms'. 'frames' are example frames of every kind with their decoded form; 'negative' frames break one structural rule of SPEC.md 16.2 each ('encoded' is hex, a fill, or a concat of such parts): 'expected_error' is too_large (longer than MAX_FRAME_LEN, checked before decoding), decode (does not decode as Frame, or no body set), invalid_field (a length rule, an empty Submit, Relay, SubmitGroup envelope or recipient list, a group relay without item, a snapshot with a group envelope, or a required oneof not set) or too_many (more entries than allowed), and 'field' the rule broken, as Message.field of the SPEC.md 16.2 table. Decoded form: field names as in protocol.proto; bytes as hex; uint64 as decimal strings; enums by name; every field outside a oneof present (with its default if absent on the wire; an absent message is null); of a oneof, only the member set.",
        "handshakes": handshakes,
        "frames": frames,
        "negative": negative,
    })
}

/// Decodes a frame vector (`encoded`, `decoded`, and for example frames
/// `reference_encoding`): it passes the structural rules, reads as `decoded`, and the
/// reference encoder writes it back byte for byte (or, for a valid encoding other than the
/// reference one, writes something else that reads the same).
fn check_frame_vector(name: &str, v: &Value) -> wire::frame::Body {
    let bytes = bytes_of(&v["encoded"]);
    let body = crate::protocol::decode(&bytes)
        .unwrap_or_else(|e| panic!("frame vector {name} refused: {e}"));
    assert_eq!(frame_json(&body), v["decoded"], "frame vector {name}");
    let again = crate::protocol::encode(body.clone());
    if v["reference_encoding"] == false {
        assert_ne!(again, bytes, "frame vector {name}");
        assert_eq!(
            frame_json(&crate::protocol::decode(&again).unwrap()),
            v["decoded"]
        );
    } else {
        assert_eq!(
            again, bytes,
            "frame vector {name}: not the reference encoding"
        );
    }
    body
}

type VectorProvider =
    crate::provider::Provider<crate::store::MemoryStore, rand_chacha::ChaCha20Rng>;

/// The reference provider of `domain`, with the key of the vectors and open registration.
fn vector_provider(domain: &str, key_seed: &Value) -> VectorProvider {
    use rand_core::SeedableRng;
    let mut config = crate::provider::ProviderConfig::new(
        crate::address::Domain::parse(domain).unwrap(),
        crate::identity::ProviderKeyPair::from_secret_bytes(&Secret::new(
            unhex(key_seed).try_into().unwrap(),
        )),
    );
    config.open_registration = true;
    crate::provider::Provider::new(
        config,
        crate::store::MemoryStore::new(),
        rand_chacha::ChaCha20Rng::from_seed([0x11; 32]),
        T0,
    )
    .unwrap()
}

/// Feeds `input` to `p` and returns the frames it sends on `conn`; its resolver knows
/// exactly the keys in `keys`.
fn provider_step(
    p: &mut VectorProvider,
    input: crate::provider::ProviderInput,
    conn: crate::protocol::ConnectionId,
    keys: &[(String, crate::identity::ProviderKey)],
) -> Vec<wire::frame::Body> {
    use crate::provider::{ProviderInput, ProviderOutput};
    let mut inputs = vec![input];
    let mut frames = Vec::new();
    while let Some(input) = inputs.pop() {
        p.handle_input(T0, input);
        loop {
            match p.poll_output(T0) {
                ProviderOutput::Timeout(_) => break,
                ProviderOutput::Transmit { conn: c, bytes } if c == conn => {
                    frames.push(crate::protocol::decode(&bytes).unwrap());
                }
                ProviderOutput::Resolve { domain } => {
                    let key = keys
                        .iter()
                        .find(|(d, _)| d == domain.as_str())
                        .map(|(_, k)| *k);
                    inputs.push(ProviderInput::Resolved { domain, key });
                }
                _ => {}
            }
        }
    }
    frames
}

/// What a handshake vector's transcripts say, rebuilt from its fields.
struct HandshakeParts {
    acceptor: String,
    binding: Vec<u8>,
    identity: Vec<u8>,
    acceptor_key: ed25519_dalek::SigningKey,
    connector_key: ed25519_dalek::SigningKey,
}

impl HandshakeParts {
    fn challenge_signature(&self, hello_nonce: &[u8], nonce: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer;
        let input = crypto::framed(
            Label::ChallengeSignature,
            &[hello_nonce, nonce, self.acceptor.as_bytes(), &self.binding],
        );
        self.acceptor_key.sign(&input).to_bytes().to_vec()
    }

    fn auth_signature(&self, hello_nonce: &[u8], nonce: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer;
        let input = crypto::framed(
            Label::AuthSignature,
            &[
                nonce,
                hello_nonce,
                self.acceptor.as_bytes(),
                &self.binding,
                &self.identity,
            ],
        );
        self.connector_key.sign(&input).to_bytes().to_vec()
    }
}

/// Checks protocol.json from the JSON alone (with identity.json and device_lists.json),
/// then runs its handshakes through the reference state machines on both sides.
fn check_protocol(identity: &Value, device_lists: &Value, protocol: &Value) {
    use crate::protocol::ConnectionId;
    use crate::provider::{Direction, ProviderInput};
    use wire::frame::Body;
    let signing = |seed_hex: &Value| {
        ed25519_dalek::SigningKey::from_bytes(&unhex(seed_hex).try_into().unwrap())
    };
    let provider_key = |hex: &Value| crate::identity::ProviderKey::from_bytes(&unhex(hex)).unwrap();
    let mut acceptors: std::collections::BTreeMap<String, VectorProvider> = Default::default();
    for (i, v) in protocol["handshakes"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let name = v["name"].as_str().unwrap();
        let acceptor = v["acceptor"].as_str().unwrap().to_owned();
        assert_eq!(h(&provider_seed(&acceptor)), v["acceptor_key_seed"]);
        let acceptor_key = signing(&v["acceptor_key_seed"]);
        assert_eq!(
            h(acceptor_key.verifying_key().as_bytes()),
            v["acceptor_key"]
        );
        let hello_nonce = unhex(&v["hello_nonce"]);
        let nonce = unhex(&v["challenge_nonce"]);
        assert_eq!(hello_nonce, seed(&format!("{name} hello nonce")));
        assert_eq!(nonce, seed(&format!("{name} challenge nonce")));
        let binding = unhex(&v["binding"]);
        let frames = &v["frames"];
        let Body::Hello(hello) = check_frame_vector(name, &frames["hello"]) else {
            panic!("{name}: hello")
        };
        let Body::Challenge(challenge) = check_frame_vector(name, &frames["challenge"]) else {
            panic!("{name}: challenge")
        };
        let Body::Auth(auth) = check_frame_vector(name, &frames["auth"]) else {
            panic!("{name}: auth")
        };
        let Body::Welcome(welcome) = check_frame_vector(name, &frames["welcome"]) else {
            panic!("{name}: welcome")
        };
        assert_eq!(hello.version, PROTOCOL_VERSION);
        assert_eq!(hello.nonce, hello_nonce);
        assert_eq!(hello.acceptor, acceptor);
        assert_eq!(
            wire::Role::try_from(hello.role).unwrap().as_str_name(),
            v["role"]
        );
        assert_eq!(challenge.nonce, nonce);
        assert_eq!(challenge.domain, acceptor);
        assert_eq!(h(&challenge.provider_key), v["acceptor_key"]);
        assert_eq!(welcome.time_ms, v["welcome_time_ms"].as_u64().unwrap());
        // The transcripts, from the fields (SPEC.md 16.3).
        let (identity_bytes, connector_key) = match auth.who.as_ref().unwrap() {
            wire::auth::Who::Device(d) => {
                assert_eq!(v["role"], "ROLE_DEVICE");
                let party = named(&identity["parties"], v["device"].as_str().unwrap());
                assert_eq!(h(&d.certificate), party["certificate"]["encoded"]);
                assert_eq!(h(&d.certificate), v["certificate"]);
                assert_eq!(h(&d.device_list), v["device_list"]);
                match v["device_list_name"].as_str() {
                    Some(l) => assert_eq!(
                        h(&d.device_list),
                        named(&device_lists["positive"], l)["encoded"]
                    ),
                    None => assert!(d.device_list.is_empty()),
                }
                let cert = DeviceCertificate::decode(d.certificate.clone()).unwrap();
                assert!(cert.is_valid_at(UnixMillis(welcome.time_ms)));
                let key = signing(&party["device_signing_seed"]);
                assert_eq!(&key.verifying_key(), cert.signing_key());
                (d.certificate.to_vec(), key)
            }
            wire::auth::Who::Provider(p) => {
                assert_eq!(v["role"], "ROLE_PROVIDER");
                assert_eq!(p.domain, v["connector_domain"]);
                assert_eq!(h(&provider_seed(&p.domain)), v["connector_key_seed"]);
                let key = signing(&v["connector_key_seed"]);
                assert_eq!(h(key.verifying_key().as_bytes()), v["connector_key"]);
                (p.domain.as_bytes().to_vec(), key)
            }
        };
        assert_eq!(h(&identity_bytes), v["auth_identity"]);
        let challenge_input = crypto::framed(
            Label::ChallengeSignature,
            &[&hello_nonce, &nonce, acceptor.as_bytes(), &binding],
        );
        assert_eq!(h(&challenge_input), v["challenge_input"]);
        let auth_input = crypto::framed(
            Label::AuthSignature,
            &[
                &nonce,
                &hello_nonce,
                acceptor.as_bytes(),
                &binding,
                &identity_bytes,
            ],
        );
        assert_eq!(h(&auth_input), v["auth_input"]);
        assert_eq!(h(&challenge.signature), v["challenge_signature"]);
        assert_eq!(h(&auth.signature), v["auth_signature"]);
        let acceptor_public = provider_key(&v["acceptor_key"]);
        assert!(crate::protocol::verify_challenge(
            acceptor_public.as_verifying_key(),
            &hello_nonce,
            &nonce,
            &acceptor,
            &binding,
            &challenge.signature
        ));
        assert!(crate::protocol::verify_auth(
            &connector_key.verifying_key(),
            &nonce,
            &hello_nonce,
            &acceptor,
            &binding,
            &identity_bytes,
            &auth.signature
        ));
        let parts = HandshakeParts {
            acceptor: acceptor.clone(),
            binding: binding.clone(),
            identity: identity_bytes,
            acceptor_key,
            connector_key,
        };
        assert_eq!(
            parts.challenge_signature(&hello_nonce, &nonce),
            challenge.signature
        );
        assert_eq!(parts.auth_signature(&hello_nonce, &nonce), auth.signature);

        // The reference acceptor, fed the vector's Hello and an Auth made the vector's way
        // for the challenge nonce it chose, answers with the vector's Welcome. The device
        // handshakes run in order on one provider: the first registers alice.
        let keys: Vec<(String, crate::identity::ProviderKey)> = v["connector_domain"]
            .as_str()
            .map(|d| (d.to_owned(), provider_key(&v["connector_key"])))
            .into_iter()
            .collect();
        let p = acceptors
            .entry(acceptor.clone())
            .or_insert_with(|| vector_provider(&acceptor, &v["acceptor_key_seed"]));
        let conn = ConnectionId(i as u64);
        let connected = ProviderInput::Connected {
            conn,
            direction: Direction::Inbound,
            binding: Bytes::from(binding.clone()),
        };
        assert!(provider_step(p, connected, conn, &keys).is_empty());
        let received = |f: &Value| ProviderInput::Received {
            conn,
            bytes: bytes_of(&f["encoded"]),
        };
        let out = provider_step(p, received(&frames["hello"]), conn, &keys);
        let [Body::Challenge(ch)] = out.as_slice() else {
            panic!("{name}: the acceptor answered {out:?}")
        };
        assert_eq!(
            (ch.domain.as_str(), &ch.provider_key),
            (acceptor.as_str(), &challenge.provider_key)
        );
        assert_eq!(
            parts.challenge_signature(&hello_nonce, &ch.nonce),
            ch.signature
        );
        let mut auth_here = auth.clone();
        auth_here.signature = Bytes::from(parts.auth_signature(&hello_nonce, &ch.nonce));
        let auth_here = ProviderInput::Received {
            conn,
            bytes: crate::protocol::encode(Body::Auth(auth_here)),
        };
        let out = provider_step(p, auth_here, conn, &keys);
        assert!(
            out.first()
                .is_some_and(|b| frame_json(b) == frames["welcome"]["decoded"]),
            "{name}: the acceptor answered {out:?}"
        );

        // The reference connector, given the vector's binding and a Challenge made the
        // vector's way for the hello nonce it chose, answers with an Auth made the same way.
        let challenge_for = |hello_nonce: &[u8]| {
            let mut c = challenge.clone();
            c.signature = Bytes::from(parts.challenge_signature(hello_nonce, &nonce));
            crate::protocol::encode(Body::Challenge(c))
        };
        let (hello_here, auth_here) = match auth.who.as_ref().unwrap() {
            wire::auth::Who::Device(_) => {
                use crate::client::{Client, ClientConfig, ClientInput, ClientOutput};
                use rand_core::SeedableRng;
                let device = device_from_identity(identity, v["device"].as_str().unwrap());
                let own_list = DeviceList::decode(bytes_of(
                    &named(&device_lists["positive"], "alice")["encoded"],
                ))
                .unwrap();
                let mut rng = rand_chacha::ChaCha20Rng::from_seed([0x22; 32]);
                let prekeys = crate::session::PrekeyStore::new(&device, NOT_BEFORE, &mut rng);
                let account = crate::session::Account::from_parts_for_vectors(
                    device,
                    prekeys,
                    own_list.clone(),
                );
                let config = ClientConfig::new(
                    crate::address::Domain::parse(&acceptor).unwrap(),
                    acceptor_public,
                );
                let mut client = Client::new(account, config, rng, T0);
                let step = |client: &mut Client<rand_chacha::ChaCha20Rng>,
                            input: Option<ClientInput>| {
                    if let Some(i) = input {
                        client.handle_input(T0, i);
                    }
                    let mut sent = Vec::new();
                    loop {
                        match client.poll_output(T0) {
                            ClientOutput::Timeout(_) => return sent,
                            ClientOutput::Transmit(b) => {
                                sent.push(crate::protocol::decode(&b).unwrap())
                            }
                            _ => {}
                        }
                    }
                };
                assert!(step(&mut client, None).is_empty());
                let out = step(
                    &mut client,
                    Some(ClientInput::Connected {
                        binding: Bytes::from(binding.clone()),
                    }),
                );
                let [Body::Hello(hello_here)] = out.as_slice() else {
                    panic!("{name}: the client sent {out:?}")
                };
                let out = step(
                    &mut client,
                    Some(ClientInput::Received(challenge_for(&hello_here.nonce))),
                );
                let [Body::Auth(auth_here)] = out.as_slice() else {
                    panic!("{name}: the client sent {out:?}")
                };
                let Some(wire::auth::Who::Device(d)) = &auth_here.who else {
                    panic!("{name}: the client sent {auth_here:?}")
                };
                assert_eq!(h(&d.device_list), h(own_list.encoded()));
                step(
                    &mut client,
                    Some(ClientInput::Received(bytes_of(
                        &frames["welcome"]["encoded"],
                    ))),
                );
                assert!(
                    client.is_online(),
                    "{name}: the client did not take the Welcome"
                );
                (hello_here.clone(), auth_here.clone())
            }
            wire::auth::Who::Provider(pa) => {
                let mut p = vector_provider(&pa.domain, &v["connector_key_seed"]);
                let conn = ConnectionId(1000 + i as u64);
                let connected = ProviderInput::Connected {
                    conn,
                    direction: Direction::Outbound {
                        domain: crate::address::Domain::parse(&acceptor).unwrap(),
                        key: acceptor_public,
                    },
                    binding: Bytes::from(binding.clone()),
                };
                let out = provider_step(&mut p, connected, conn, &[]);
                let [Body::Hello(hello_here)] = out.as_slice() else {
                    panic!("{name}: the connecting provider sent {out:?}")
                };
                let challenge = ProviderInput::Received {
                    conn,
                    bytes: challenge_for(&hello_here.nonce),
                };
                let out = provider_step(&mut p, challenge, conn, &[]);
                let [Body::Auth(auth_here)] = out.as_slice() else {
                    panic!("{name}: the connecting provider sent {out:?}")
                };
                assert_eq!(auth_here.who, auth.who);
                (hello_here.clone(), auth_here.clone())
            }
        };
        assert_eq!(
            (
                hello_here.version,
                hello_here.role,
                hello_here.acceptor.as_str(),
                hello_here.nonce.len()
            ),
            (
                hello.version,
                hello.role,
                acceptor.as_str(),
                crate::limits::AUTH_NONCE_LEN
            )
        );
        assert_eq!(
            parts.auth_signature(&hello_here.nonce, &nonce),
            auth_here.signature,
            "{name}: the connector's Auth"
        );
    }
    for f in protocol["frames"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        check_frame_vector(name, f);
    }
    for n in protocol["negative"].as_array().unwrap() {
        assert_refused(
            n["name"].as_str().unwrap(),
            &bytes_of(&n["encoded"]),
            n["expected_error"].as_str().unwrap(),
            n["field"].as_str(),
        );
    }
}
