//! Group message vectors (SPEC.md 7.5, 19): `group_messages.json`.
//!
//! Alice creates a group with Bob and Carol (sequencer one.example), then removes Carol
//! (epoch 1). Alice's sender chain (made at epoch 0, from a seed) seals four messages at
//! epoch 0, at iterations 0, 1, 2 and 5, with every intermediate value. Bob, holding the
//! chain at iteration 0, opens them in a given order (skipping, using skipped keys, and
//! refusing a duplicate). Then envelopes that must be refused, each opened by a fresh Bob
//! against the epoch-0 state or the epoch-1 state (after the removal), with its code.
//! Refused envelopes are signed by the device they name wherever their check comes after
//! the signature.

use bytes::Bytes;
use prost::Message;
use serde_json::{Value, json};

use super::{NOT_AFTER, NOT_BEFORE, T0, h, provider_seed, seed, unhex};
use crate::address::{Address, Domain};
use crate::crypto::{self, Label, Secret};
use crate::envelope::{Content, MessageId, Text};
use crate::group::{
    GroupAction, GroupChange, GroupEnvelope, GroupMember, GroupReceiver, GroupRole, GroupSender,
    GroupState, GroupSync, SenderKey, Sequencer,
};
use crate::identity::{Device, DeviceKeyPair, IdentityKeyPair, ProviderKeyPair};
use crate::limits::{MAX_ENVELOPE_LEN, MAX_GROUP_SKIP, PROTOCOL_VERSION};
use crate::session::kdf_ck;
use crate::wire;

/// name, address, identity seed, device seeds.
const USERS: &[(&str, &str, &str, &str)] = &[
    ("alice", "alice@one.example", "alice", "alice"),
    ("bob", "bob@two.example", "bob", "bob"),
    ("carol", "carol@three.example", "carol", "carol"),
    ("erin", "erin@four.example", "erin", "erin"),
    // A device certificate for Alice's address under another identity key.
    ("mallory", "alice@one.example", "mallory", "mallory"),
];

struct User {
    name: &'static str,
    identity: IdentityKeyPair,
    device: Device,
    seeds: [[u8; 32]; 3],
}

fn users() -> Vec<User> {
    USERS
        .iter()
        .map(|&(name, address, id, dev)| {
            let seeds = [
                seed(&format!("{id} identity")),
                seed(&format!("{dev} device signing")),
                seed(&format!("{dev} device agreement")),
            ];
            let identity = IdentityKeyPair::from_secret_bytes(&Secret::new(seeds[0]));
            let device = Device::new(
                &identity,
                Address::parse(address).unwrap(),
                DeviceKeyPair::from_secret_bytes(&Secret::new(seeds[1]), &Secret::new(seeds[2])),
                NOT_BEFORE,
                NOT_AFTER,
            )
            .unwrap();
            User {
                name,
                identity,
                device,
                seeds,
            }
        })
        .collect()
}

fn user<'a>(us: &'a [User], name: &str) -> &'a User {
    us.iter().find(|u| u.name == name).unwrap()
}

fn member(u: &User, role: GroupRole) -> GroupMember {
    GroupMember {
        address: u.device.address().clone(),
        identity: u.identity.public(),
        role,
    }
}

/// The AEAD key and nonce of SPEC.md 19.1, computed here apart from the group module.
fn message_keys(mk: &Secret<32>, message_id: &[u8; 16]) -> ([u8; 32], [u8; 12]) {
    let mut okm = [0u8; 44];
    crypto::hkdf_sha256(
        message_id,
        mk.expose(),
        Label::GroupMessageKeys,
        &[],
        &mut okm,
    )
    .unwrap();
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

/// The chain key and message key at `iteration`, from the chain key at 0.
fn chain_at(ck0: &Secret<32>, iteration: u32) -> (Secret<32>, Secret<32>) {
    let mut ck = ck0.clone();
    for _ in 0..iteration {
        ck = kdf_ck(&ck).0;
    }
    let (_, mk) = kdf_ck(&ck);
    (ck, mk)
}

/// Encrypts `plaintext` under `mk` with the header's AAD and signs with `signer`: an
/// envelope built by hand, so that a refused one can break exactly one rule.
fn build(
    header: &wire::GroupEnvelopeHeader,
    mk: &Secret<32>,
    plaintext: &[u8],
    signer: &Device,
) -> Bytes {
    let header = header.encode_to_vec();
    let id: [u8; 16] = wire::GroupEnvelopeHeader::decode(header.as_slice())
        .unwrap()
        .message_id
        .as_ref()
        .try_into()
        .unwrap_or([0; 16]);
    let (key, nonce) = message_keys(mk, &id);
    let aad = crypto::framed(Label::GroupEnvelopeAad, &[&header]);
    let ciphertext = crypto::aead_seal(&Secret::new(key), &nonce, &aad, plaintext).unwrap();
    sign(header, ciphertext, signer)
}

fn sign(header: Vec<u8>, ciphertext: Vec<u8>, signer: &Device) -> Bytes {
    let input = crypto::framed(
        Label::GroupEnvelopeSignature,
        &[&header, &crypto::sha256(&ciphertext)],
    );
    let signature = {
        use ed25519_dalek::Signer;
        signer.keys().signing().sign(&input).to_bytes()
    };
    Bytes::from(
        wire::GroupEnvelope {
            version: PROTOCOL_VERSION,
            header: Bytes::from(header),
            ciphertext: Bytes::from(ciphertext),
            signature: Bytes::copy_from_slice(&signature),
        }
        .encode_to_vec(),
    )
}

fn text(s: &str) -> Content {
    Content::Text(Text::plain(s))
}

pub(super) fn group_message_vectors() -> Value {
    let us = users();
    let [alice, bob, carol, erin, mallory] = [
        user(&us, "alice"),
        user(&us, "bob"),
        user(&us, "carol"),
        user(&us, "erin"),
        user(&us, "mallory"),
    ];
    let seq_key = ProviderKeyPair::from_secret_bytes(&Secret::new(provider_seed("one.example")));
    let sequencer = Sequencer {
        domain: Domain::parse("one.example").unwrap(),
        key: seq_key.public(),
    };
    let nonce: [u8; 16] = seed("group messages nonce")[..16].try_into().unwrap();
    let create = GroupState::create_change(
        &alice.device,
        nonce,
        "Crates".into(),
        sequencer,
        vec![
            member(bob, GroupRole::Member),
            member(carol, GroupRole::Member),
        ],
        T0,
    )
    .unwrap()
    .sequence(&seq_key);
    let s0 = GroupState::create(&create).unwrap();
    let removal = s0
        .change(
            &alice.device,
            GroupAction::Remove(vec![carol.device.address().clone()]),
            T0,
        )
        .unwrap()
        .sequence(&seq_key);
    let s1 = s0.apply(&removal).unwrap();
    assert_eq!(s1.rekey_epoch(), 1);

    // Alice's chain, made at epoch 0 from a seed.
    let ck0 = Secret::new(seed("alice group chain"));
    let chain_id = 1u32;
    let key0 = SenderKey::decode(
        &wire::GroupSenderKey {
            version: PROTOCOL_VERSION,
            group_id: Bytes::copy_from_slice(s0.id().as_bytes()),
            sender: alice.device.address().as_str().to_owned(),
            sender_device: Bytes::copy_from_slice(alice.device.id().as_bytes()),
            chain_id,
            epoch: 0,
            iteration: 0,
            chain_key: Bytes::copy_from_slice(ck0.expose()),
        }
        .encode_to_vec(),
    )
    .unwrap();
    let mut sender = GroupSender::from_sender_key(key0.clone());
    let key_content = Content::GroupSenderKey(Box::new(key0.clone()));

    let header = |iteration: u32, id: &[u8; 16], t: u64| wire::GroupEnvelopeHeader {
        version: PROTOCOL_VERSION,
        sender: alice.device.address().as_str().to_owned(),
        sender_device: Bytes::copy_from_slice(alice.device.id().as_bytes()),
        group_id: Bytes::copy_from_slice(s0.id().as_bytes()),
        epoch: 0,
        state_hash: Bytes::copy_from_slice(&s0.state_hash()),
        chain_id,
        iteration,
        message_id: Bytes::copy_from_slice(id),
        timestamp_ms: t,
        content_type: wire::ContentType::Content as i32,
    };

    // The messages, sealed by the group module, each checked against a hand-built one.
    let mut messages = Vec::new();
    let mut sealed = Vec::new();
    for (n, iteration) in [0u32, 1, 2, 5].into_iter().enumerate() {
        while sender.sender_key().iteration() < iteration {
            let id = MessageId::from_bytes(seed(&format!("skipped {n}"))[..16].try_into().unwrap());
            sender
                .seal(&alice.device, &s0, &text("never sent"), id, T0)
                .unwrap();
        }
        let body = format!("group message {n}: 40 crates on Friday");
        let id_bytes: [u8; 16] = seed(&format!("group message {n} id"))[..16]
            .try_into()
            .unwrap();
        let t = T0.0 + n as u64;
        let env = sender
            .seal(
                &alice.device,
                &s0,
                &text(&body),
                MessageId::from_bytes(id_bytes),
                crate::time::UnixMillis(t),
            )
            .unwrap();
        let (ck, mk) = chain_at(&ck0, iteration);
        let plaintext = text(&body).encode_padded().unwrap();
        let (key, nonce) = message_keys(&mk, &id_bytes);
        assert_eq!(
            env,
            build(
                &header(iteration, &id_bytes, t),
                &mk,
                &plaintext,
                &alice.device
            )
        );
        let parsed = wire::GroupEnvelope::decode(env.clone()).unwrap();
        messages.push(json!({
            "name": format!("m{n}"),
            "iteration": iteration,
            "chain_key": h(ck.expose()),
            "message_key": h(mk.expose()),
            "message_id": h(&id_bytes),
            "timestamp_ms": t,
            "aead_key": h(&key),
            "aead_nonce": h(&nonce),
            "body": body,
            "plaintext": h(&plaintext),
            "header": h(&parsed.header),
            "signature_input": h(&crypto::framed(
                Label::GroupEnvelopeSignature,
                &[&parsed.header, &crypto::sha256(&parsed.ciphertext)],
            )),
            "envelope": h(&env),
        }));
        sealed.push(env);
    }

    // Bob opens them in this order.
    let order: [(usize, &str); 6] = [
        (2, "ok"),
        (0, "ok"),
        (3, "ok"),
        (1, "ok"),
        (0, "duplicate"),
        (3, "duplicate"),
    ];
    let deliveries: Vec<Value> = order
        .iter()
        .map(|(i, want)| json!({"message": format!("m{i}"), "expected": want}))
        .collect();

    // Refused envelopes: (name, description, state epoch, envelope).
    let ok_id: [u8; 16] = seed("refused id")[..16].try_into().unwrap();
    let pt = text("refused").encode_padded().unwrap();
    let (_, mk0) = chain_at(&ck0, 0);
    let hdr = |f: &dyn Fn(&mut wire::GroupEnvelopeHeader)| {
        let mut w = header(0, &ok_id, T0.0);
        f(&mut w);
        w
    };
    let honest = build(&hdr(&|_| {}), &mk0, &pt, &alice.device);
    let outer = |f: &dyn Fn(&mut wire::GroupEnvelope)| {
        let mut w = wire::GroupEnvelope::decode(honest.clone()).unwrap();
        f(&mut w);
        Bytes::from(w.encode_to_vec())
    };
    let refused: Vec<(&str, &str, u64, Bytes, &str)> = vec![
        (
            "too_large",
            "longer than MAX_ENVELOPE_LEN",
            0,
            Bytes::from(vec![0u8; MAX_ENVELOPE_LEN + 1]),
            "too_large",
        ),
        (
            "garbage",
            "not protobuf",
            0,
            Bytes::from_static(&[0xff, 0xff, 0xff]),
            "decode",
        ),
        (
            "outer_version",
            "GroupEnvelope.version 2",
            0,
            outer(&|w| w.version = 2),
            "unsupported_version",
        ),
        (
            "short_ciphertext",
            "a ciphertext shorter than the tag",
            0,
            outer(&|w| w.ciphertext = Bytes::from_static(&[0; 15])),
            "invalid_field",
        ),
        (
            "short_signature",
            "a 63-byte signature",
            0,
            outer(&|w| w.signature = w.signature.slice(..63)),
            "invalid_field",
        ),
        (
            "header_version",
            "GroupEnvelopeHeader.version 2",
            0,
            build(&hdr(&|w| w.version = 2), &mk0, &pt, &alice.device),
            "unsupported_version",
        ),
        (
            "short_state_hash",
            "a 31-byte state hash",
            0,
            build(
                &hdr(&|w| w.state_hash.truncate(31)),
                &mk0,
                &pt,
                &alice.device,
            ),
            "invalid_field",
        ),
        (
            "short_group_id",
            "a 15-byte group id",
            0,
            build(&hdr(&|w| w.group_id.truncate(15)), &mk0, &pt, &alice.device),
            "invalid_field",
        ),
        (
            "content_type",
            "content_type 2",
            0,
            build(&hdr(&|w| w.content_type = 2), &mk0, &pt, &alice.device),
            "unsupported_content_type",
        ),
        (
            "not_canonical",
            "the sender address in capitals",
            0,
            build(
                &hdr(&|w| w.sender = "Alice@one.example".into()),
                &mk0,
                &pt,
                &alice.device,
            ),
            "invalid_address",
        ),
        (
            "unknown_device",
            "a sender device Bob holds no certificate for",
            0,
            build(
                &hdr(&|w| w.sender_device = Bytes::from_static(&[9; 16])),
                &mk0,
                &pt,
                &alice.device,
            ),
            "unknown_sender",
        ),
        (
            "expired",
            "dated after the sender certificate's not_after",
            0,
            build(
                &hdr(&|w| w.timestamp_ms = NOT_AFTER.0 + 1),
                &mk0,
                &pt,
                &alice.device,
            ),
            "sender_certificate_not_valid",
        ),
        (
            "flipped",
            "one bit of the ciphertext flipped after signing",
            0,
            outer(&|w| {
                let mut c = w.ciphertext.to_vec();
                c[0] ^= 1;
                w.ciphertext = Bytes::from(c);
            }),
            "bad_signature",
        ),
        (
            "signed_by_bob",
            "Alice's header, signed by Bob's device",
            0,
            build(&hdr(&|_| {}), &mk0, &pt, &bob.device),
            "bad_signature",
        ),
        (
            "other_group",
            "another group id",
            0,
            build(
                &hdr(&|w| w.group_id = Bytes::from_static(&[7; 16])),
                &mk0,
                &pt,
                &alice.device,
            ),
            "wrong_group",
        ),
        (
            "ahead",
            "the sender at epoch 1, Bob at 0",
            0,
            build(&hdr(&|w| w.epoch = 1), &mk0, &pt, &alice.device),
            "group_gap",
        ),
        (
            "other_state",
            "epoch 0 with another state hash",
            0,
            build(
                &hdr(&|w| w.state_hash = Bytes::from_static(&[3; 32])),
                &mk0,
                &pt,
                &alice.device,
            ),
            "state_mismatch",
        ),
        (
            "from_erin",
            "Erin, not a member, with her own device",
            0,
            build(
                &hdr(&|w| {
                    w.sender = erin.device.address().as_str().into();
                    w.sender_device = Bytes::copy_from_slice(erin.device.id().as_bytes());
                }),
                &mk0,
                &pt,
                &erin.device,
            ),
            "not_member",
        ),
        (
            "mallory_as_alice",
            "Alice's address, a device certified by another identity key",
            0,
            build(
                &hdr(&|w| w.sender_device = Bytes::copy_from_slice(mallory.device.id().as_bytes())),
                &mk0,
                &pt,
                &mallory.device,
            ),
            "identity_mismatch",
        ),
        (
            "unknown_chain",
            "chain 2, which Bob does not hold",
            0,
            build(&hdr(&|w| w.chain_id = 2), &mk0, &pt, &alice.device),
            "unknown_sender_key",
        ),
        (
            "stale_chain",
            "epoch 1 (after Carol's removal) on the chain made at epoch 0",
            1,
            build(
                &hdr(&|w| {
                    w.epoch = 1;
                    w.state_hash = Bytes::copy_from_slice(&s1.state_hash());
                }),
                &mk0,
                &pt,
                &alice.device,
            ),
            "stale_sender_key",
        ),
        (
            "too_far",
            "iteration MAX_GROUP_SKIP + 1",
            0,
            build(
                &hdr(&|w| w.iteration = MAX_GROUP_SKIP + 1),
                &chain_at(&ck0, MAX_GROUP_SKIP + 1).1,
                &pt,
                &alice.device,
            ),
            "too_far_ahead",
        ),
        (
            "wrong_key",
            "sealed under the key of iteration 1 but labelled 0",
            0,
            build(&hdr(&|_| {}), &chain_at(&ck0, 1).1, &pt, &alice.device),
            "decrypt_failed",
        ),
        (
            "bad_content",
            "a plaintext that is not Content",
            0,
            build(&hdr(&|_| {}), &mk0, &[0xff; 64], &alice.device),
            "invalid_content",
        ),
    ];
    // Every refusal is what the group module says.
    for (name, _, epoch, env, want) in &refused {
        let state = if *epoch == 0 { &s0 } else { &s1 };
        assert_eq!(
            open_fresh(state, &us, &key0, env),
            Err((*want).to_owned()),
            "{name}"
        );
    }

    json!({
        "description": "Group messages (SPEC.md 19) and the sender key content (SPEC.md 7.5). Users: identity seed = SHA-256(\"kogge test vector: <identity> identity\"), device seeds \"<device> device signing\" / \"<device> device agreement\" (SPEC.md 12); sequencer key seed \"kogge test vector: provider one.example\". Alice creates the group with Bob and Carol, then removes Carol (epoch 1). Alice's chain: chain key at iteration 0 = SHA-256(\"kogge test vector: alice group chain\"). Bob holds it at iteration 0 and opens the deliveries in order; each refused envelope is opened by a fresh Bob at the given epoch.",
        "users": us.iter().map(|u| json!({
            "name": u.name,
            "address": u.device.address().as_str(),
            "identity_seed": h(&u.seeds[0]),
            "device_signing_seed": h(&u.seeds[1]),
            "device_agreement_secret": h(&u.seeds[2]),
            "certificate": h(u.device.certificate().encoded()),
        })).collect::<Vec<_>>(),
        "sender": "alice",
        "receiver": "bob",
        "create": h(create.encoded()),
        "removal": h(removal.encoded()),
        "states": [
            {"epoch": 0, "snapshot": h(&s0.to_snapshot()), "state_hash": h(&s0.state_hash()), "rekey_epoch": 0},
            {"epoch": 1, "snapshot": h(&s1.to_snapshot()), "state_hash": h(&s1.state_hash()), "rekey_epoch": 1},
        ],
        "sender_key": {
            "encoded": h(&key0.encode()),
            "group_id": h(s0.id().as_bytes()),
            "chain_id": chain_id,
            "epoch": 0,
            "iteration": 0,
            "chain_key": h(ck0.expose()),
            "content": h(&key_content.encode_padded().unwrap()),
        },
        "group_sync": {
            "description": "the state after the removal (epoch 1, last removal epoch 1) as alice's device hands it to another device of hers (SPEC.md 7.6): a padded Content",
            "state_epoch": 1,
            "content": h(&Content::GroupSync(Box::new(GroupSync::new(&s1))).encode_padded().unwrap()),
        },
        "messages": messages,
        "deliveries": deliveries,
        "refused": refused.iter().map(|(name, description, epoch, env, want)| json!({
            "name": name, "description": description, "state_epoch": epoch,
            "envelope": h(env), "expected_error": want,
        })).collect::<Vec<_>>(),
    })
}

/// Opens `env` as a fresh Bob holding `key` at `state`: the certificate comes from the
/// users by the claimed sender device (`unknown_sender` if none).
fn open_fresh(
    state: &GroupState,
    us: &[User],
    key: &SenderKey,
    env: &[u8],
) -> Result<String, String> {
    let alice = user(us, "alice");
    let mut r = GroupReceiver::new(state.id());
    r.add_sender_key(state, alice.device.certificate(), key)
        .map_err(|e| e.code().to_owned())?;
    let e = GroupEnvelope::decode(Bytes::copy_from_slice(env)).map_err(|e| e.code().to_owned())?;
    let cert = us
        .iter()
        .map(|u| u.device.certificate())
        .find(|c| c.address() == e.sender() && c.device_id() == e.sender_device())
        .ok_or_else(|| "unknown_sender".to_owned())?;
    r.open(state, &e, cert)
        .map(|o| match o.content {
            Content::Text(t) => t.body,
            other => format!("{other:?}"),
        })
        .map_err(|e| e.code().to_owned())
}

/// Replays `group_messages.json` from the file alone through the public API.
pub(super) fn check_group_messages(v: &Value) {
    let us = users();
    for (u, j) in us.iter().zip(v["users"].as_array().unwrap()) {
        assert_eq!(h(u.device.certificate().encoded()), j["certificate"]);
    }
    let create = GroupChange::decode(Bytes::from(unhex(&v["create"]))).unwrap();
    let s0 = GroupState::create(&create).unwrap();
    let s1 = s0
        .apply(&GroupChange::decode(Bytes::from(unhex(&v["removal"]))).unwrap())
        .unwrap();
    for (s, j) in [&s0, &s1].into_iter().zip(v["states"].as_array().unwrap()) {
        assert_eq!(h(&s.to_snapshot()), j["snapshot"]);
        assert_eq!(h(&s.state_hash()), j["state_hash"]);
        assert_eq!(s.rekey_epoch(), j["rekey_epoch"].as_u64().unwrap());
    }
    let Content::GroupSync(sync) = Content::decode(&unhex(&v["group_sync"]["content"])).unwrap()
    else {
        panic!("group_sync content expected");
    };
    assert_eq!(sync.state(), &s1);
    assert_eq!(sync.state().rekey_epoch(), s1.rekey_epoch());
    let sk = &v["sender_key"];
    let key = SenderKey::decode(&unhex(&sk["encoded"])).unwrap();
    assert_eq!(
        Content::decode(&unhex(&sk["content"])).unwrap(),
        Content::GroupSenderKey(Box::new(key.clone()))
    );
    let alice = user(&us, "alice");
    let mut bob = GroupReceiver::new(s0.id());
    assert!(
        bob.add_sender_key(&s0, alice.device.certificate(), &key)
            .unwrap()
    );
    let messages = v["messages"].as_array().unwrap();
    for d in v["deliveries"].as_array().unwrap() {
        let m = messages.iter().find(|m| m["name"] == d["message"]).unwrap();
        let env = GroupEnvelope::decode(Bytes::from(unhex(&m["envelope"]))).unwrap();
        match (
            bob.open(&s0, &env, alice.device.certificate()),
            d["expected"].as_str().unwrap(),
        ) {
            (Ok(o), "ok") => assert_eq!(o.content, text(m["body"].as_str().unwrap())),
            (Err(e), want) => assert_eq!(e.code(), want, "{}", m["name"]),
            (Ok(_), want) => panic!("{} opened, expected {want}", m["name"]),
        }
    }
    for r in v["refused"].as_array().unwrap() {
        let state = if r["state_epoch"] == 0 { &s0 } else { &s1 };
        assert_eq!(
            open_fresh(state, &us, &key, &unhex(&r["envelope"])),
            Err(r["expected_error"].as_str().unwrap().to_owned()),
            "{}",
            r["name"]
        );
    }
}
