use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::address::Address;
use crate::envelope::{Content, Text};
use crate::identity::{DeviceKeyPair, DeviceList, IdentityKeyPair};
use crate::limits::MAX_SKIP_PER_CHAIN;

const NOW: UnixMillis = UnixMillis(1_760_000_000_000);
const YEAR: u64 = 365 * 24 * 3600 * 1000;

pub(crate) struct User {
    pub(crate) identity: IdentityKeyPair,
    pub(crate) list: DeviceList,
    pub(crate) accounts: Vec<Account>,
}

pub(crate) fn user(rng: &mut ChaCha20Rng, addr: &str, devices: usize) -> User {
    let identity = IdentityKeyPair::generate(rng);
    let address = Address::parse(addr).unwrap();
    let devs: Vec<Device> = (0..devices)
        .map(|_| {
            Device::new(
                &identity,
                address.clone(),
                DeviceKeyPair::generate(rng),
                NOW.saturating_sub(YEAR),
                NOW.saturating_add(YEAR),
            )
            .unwrap()
        })
        .collect();
    let certs: Vec<_> = devs.iter().map(|d| d.certificate().clone()).collect();
    let list = DeviceList::sign(&identity, &address, 1, NOW, &certs).unwrap();
    let accounts = devs
        .into_iter()
        .map(|d| {
            let mut a = Account::new(d, list.clone(), NOW, rng).unwrap();
            a.replenish_prekeys(NOW, rng);
            a
        })
        .collect();
    User {
        identity,
        list,
        accounts,
    }
}

pub(crate) struct World {
    pub(crate) rng: ChaCha20Rng,
    pub(crate) alice: User,
    pub(crate) bob: User,
}

/// Alice (one device) and Bob (two devices) know each other's device lists.
pub(crate) fn world() -> World {
    let mut rng = ChaCha20Rng::from_seed([17; 32]);
    let mut alice = user(&mut rng, "alice@one.example", 1);
    let mut bob = user(&mut rng, "bob@two.example", 2);
    for a in &mut alice.accounts {
        a.update_device_list(bob.list.clone()).unwrap();
    }
    for b in &mut bob.accounts {
        b.update_device_list(alice.list.clone()).unwrap();
    }
    World { rng, alice, bob }
}

pub(crate) fn addr(u: &User) -> Address {
    u.list.address().clone()
}

fn text(s: &str) -> Content {
    Content::Text(Text::plain(s))
}

/// Gives `from` sessions with every device it must send to, using fresh bundles with a
/// one-time prekey each.
fn connect(w: &mut World, from_alice: bool, from_idx: usize) {
    connect_with(w, from_alice, from_idx, true);
}

/// [`connect`], choosing whether the bundles carry a one-time prekey.
pub(crate) fn connect_with(w: &mut World, from_alice: bool, from_idx: usize, one_time: bool) {
    let (from, to) = if from_alice {
        (&mut w.alice, &mut w.bob)
    } else {
        (&mut w.bob, &mut w.alice)
    };
    let to_addr = addr(to);
    let missing = from.accounts[from_idx].missing_sessions(&to_addr).unwrap();
    for (a, d) in missing {
        let owner = if a == to_addr {
            &to.accounts
        } else {
            &from.accounts
        };
        let acc = owner.iter().find(|x| x.device().id() == d).unwrap();
        let otk = one_time
            .then(|| {
                acc.prekeys()
                    .published()
                    .one_time_prekeys
                    .first()
                    .map(SignedPrekey::id)
            })
            .flatten();
        let bundle = acc.prekey_bundle(otk).unwrap();
        let bundle = PrekeyBundle::decode(bundle.encode()).unwrap();
        from.accounts[from_idx]
            .add_bundle(&bundle, NOW, &mut w.rng)
            .unwrap();
    }
}

fn envelope_for(sent: &Sent, device: DeviceId) -> Bytes {
    sent.envelopes
        .iter()
        .find(|e| e.device == device)
        .unwrap()
        .envelope
        .clone()
}

fn text_of(r: &Received) -> String {
    match &r.content {
        Content::Text(t) => t.body.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn first_messages_both_ways_with_multi_device_fan_out() {
    let mut w = world();
    connect(&mut w, true, 0);
    let bob_addr = addr(&w.bob);
    let sent = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("hi bob"), NOW, &mut w.rng)
        .unwrap();
    // Both of Bob's devices; Alice has no other device.
    assert_eq!(sent.envelopes.len(), 2);
    for b in 0..2 {
        let id = w.bob.accounts[b].device().id();
        let r = w.bob.accounts[b]
            .decrypt(envelope_for(&sent, id), NOW, &mut w.rng)
            .unwrap();
        assert_eq!(text_of(&r), "hi bob");
        assert_eq!(r.sequence, Some(1));
        assert!(
            r.events
                .iter()
                .any(|e| matches!(e, AccountEvent::SessionStarted { .. }))
        );
    }
    // Bob's phone replies: to Alice and to his own laptop (which needs a session).
    let alice_addr = addr(&w.alice);
    let err = w.bob.accounts[0]
        .encrypt(&alice_addr, &text("hi alice"), NOW, &mut w.rng)
        .unwrap_err();
    assert!(matches!(err, SessionError::NeedBundles(ref v) if v.len() == 1));
    connect(&mut w, false, 0);
    let reply = w.bob.accounts[0]
        .encrypt(&alice_addr, &text("hi alice"), NOW, &mut w.rng)
        .unwrap();
    assert_eq!(reply.envelopes.len(), 2);
    let a_id = w.alice.accounts[0].device().id();
    let r = w.alice.accounts[0]
        .decrypt(envelope_for(&reply, a_id), NOW, &mut w.rng)
        .unwrap();
    assert_eq!(text_of(&r), "hi alice");
    let laptop = w.bob.accounts[1].device().id();
    let r = w.bob.accounts[1]
        .decrypt(envelope_for(&reply, laptop), NOW, &mut w.rng)
        .unwrap();
    assert_eq!(r.sender_device, w.bob.accounts[0].device().id());
    // Alice's session no longer needs its setup: her next message carries none.
    let next = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("again"), NOW, &mut w.rng)
        .unwrap();
    let e =
        crate::envelope::UnverifiedEnvelope::decode(next.envelopes[0].envelope.clone()).unwrap();
    match &e.claimed_header().payload {
        crate::envelope::PayloadHeader::Session(h) => assert!(h.setup.is_none()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn setup_without_one_time_prekey_works_and_replay_is_refused() {
    let mut w = world();
    let bob_addr = addr(&w.bob);
    // Bundles without one-time prekeys.
    for b in 0..2 {
        let bundle = w.bob.accounts[b].prekey_bundle(None).unwrap();
        w.alice.accounts[0]
            .add_bundle(&bundle, NOW, &mut w.rng)
            .unwrap();
    }
    let sent = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("no otk"), NOW, &mut w.rng)
        .unwrap();
    let id = w.bob.accounts[0].device().id();
    let env = envelope_for(&sent, id);
    let before = w.bob.accounts[0].prekeys().one_time_count();
    assert_eq!(
        text_of(
            &w.bob.accounts[0]
                .decrypt(env.clone(), NOW, &mut w.rng)
                .unwrap()
        ),
        "no otk"
    );
    assert_eq!(w.bob.accounts[0].prekeys().one_time_count(), before);
    // The same envelope again: the replay window refuses it.
    assert_eq!(
        w.bob.accounts[0]
            .decrypt(env.clone(), NOW, &mut w.rng)
            .unwrap_err()
            .code(),
        "replay"
    );
    // Even with the replay window and the session gone (a restart that lost them), the
    // remembered base key refuses the replayed setup.
    let alice_addr = addr(&w.alice);
    let a_id = w.alice.accounts[0].device().id();
    w.bob.accounts[0].reset_sessions(&alice_addr, a_id);
    w.bob.accounts[0].replay = crate::envelope::ReplayWindow::default();
    assert_eq!(
        w.bob.accounts[0].decrypt(env, NOW, &mut w.rng).unwrap_err(),
        SessionError::ReplayedSetup
    );
}

#[test]
fn one_time_prekey_is_used_once() {
    let mut w = world();
    connect(&mut w, true, 0);
    let bob_addr = addr(&w.bob);
    let sent = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("otk"), NOW, &mut w.rng)
        .unwrap();
    let id = w.bob.accounts[0].device().id();
    let env = envelope_for(&sent, id);
    let before = w.bob.accounts[0].prekeys().one_time_count();
    w.bob.accounts[0]
        .decrypt(env.clone(), NOW, &mut w.rng)
        .unwrap();
    assert_eq!(w.bob.accounts[0].prekeys().one_time_count(), before - 1);
    let alice_addr = addr(&w.alice);
    let a_id = w.alice.accounts[0].device().id();
    w.bob.accounts[0].reset_sessions(&alice_addr, a_id);
    w.bob.accounts[0].replay = crate::envelope::ReplayWindow::default();
    assert!(matches!(
        w.bob.accounts[0].decrypt(env, NOW, &mut w.rng).unwrap_err(),
        SessionError::UnknownPrekey {
            kind: "one_time",
            ..
        }
    ));
}

/// Everything that defines a ratchet's state, for byte-identity checks.
fn fingerprint(r: &Ratchet) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(r.root.expose());
    v.extend_from_slice(r.dhs.expose());
    v.extend_from_slice(&r.dhs_pub);
    v.extend_from_slice(&r.dhr.unwrap_or_default());
    v.extend_from_slice(
        r.cks
            .as_ref()
            .map(|k| *k.expose())
            .unwrap_or_default()
            .as_slice(),
    );
    v.extend_from_slice(
        r.ckr
            .as_ref()
            .map(|k| *k.expose())
            .unwrap_or_default()
            .as_slice(),
    );
    v.extend_from_slice(&r.ns.to_be_bytes());
    v.extend_from_slice(&r.nr.to_be_bytes());
    v.extend_from_slice(&r.pn.to_be_bytes());
    for ((dh, n), k) in &r.skipped {
        v.extend_from_slice(dh);
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(k.mk.expose());
    }
    v
}

fn bob_session_state(w: &World, b: usize) -> Vec<Vec<u8>> {
    let key = (addr(&w.alice), w.alice.accounts[0].device().id());
    w.bob.accounts[b].sessions[&key]
        .iter()
        .map(|s| fingerprint(&s.ratchet))
        .collect()
}

#[test]
fn out_of_order_duplicates_and_failures_change_nothing() {
    let mut w = world();
    connect(&mut w, true, 0);
    let bob_addr = addr(&w.bob);
    let id = w.bob.accounts[0].device().id();
    let msgs: Vec<Bytes> = (0..6)
        .map(|i| {
            let s = w.alice.accounts[0]
                .encrypt(&bob_addr, &text(&format!("m{i}")), NOW, &mut w.rng)
                .unwrap();
            envelope_for(&s, id)
        })
        .collect();
    // m3 first: m0..m2 become skipped keys and their sequence numbers are reported missing.
    let r = w.bob.accounts[0]
        .decrypt(msgs[3].clone(), NOW, &mut w.rng)
        .unwrap();
    assert_eq!(text_of(&r), "m3");
    assert_eq!(r.missing, vec![1, 2, 3]);
    let state = bob_session_state(&w, 0);
    // A tampered copy of m1 (re-signing impossible for Bob's provider) fails; nothing moves.
    let mut bad = msgs[1].to_vec();
    let n = bad.len();
    bad[n - 70] ^= 1;
    assert!(
        w.bob.accounts[0]
            .decrypt(Bytes::from(bad), NOW, &mut w.rng)
            .is_err()
    );
    assert_eq!(bob_session_state(&w, 0), state);
    for i in [1, 0, 2, 5, 4] {
        let r = w.bob.accounts[0]
            .decrypt(msgs[i].clone(), NOW, &mut w.rng)
            .unwrap();
        assert_eq!(text_of(&r), format!("m{i}"));
    }
    // Every key is used: a duplicate fails and changes nothing.
    let state = bob_session_state(&w, 0);
    w.bob.accounts[0].replay = crate::envelope::ReplayWindow::default(); // get past the envelope layer
    assert_eq!(
        w.bob.accounts[0]
            .decrypt(msgs[2].clone(), NOW, &mut w.rng)
            .unwrap_err(),
        SessionError::Duplicate
    );
    assert_eq!(bob_session_state(&w, 0), state);
}

#[test]
fn gap_beyond_the_bound_is_refused_without_damage() {
    let mut w = world();
    connect(&mut w, true, 0);
    let bob_addr = addr(&w.bob);
    let id = w.bob.accounts[0].device().id();
    let first = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("first"), NOW, &mut w.rng)
        .unwrap();
    w.bob.accounts[0]
        .decrypt(envelope_for(&first, id), NOW, &mut w.rng)
        .unwrap();
    let mut last = None;
    for i in 0..=(MAX_SKIP_PER_CHAIN + 1) {
        let s = w.alice.accounts[0]
            .encrypt(&bob_addr, &text(&format!("{i}")), NOW, &mut w.rng)
            .unwrap();
        if i == 3 {
            last = Some(envelope_for(&s, id));
        }
        if i == MAX_SKIP_PER_CHAIN + 1 {
            let state = bob_session_state(&w, 0);
            let e = w.bob.accounts[0]
                .decrypt(envelope_for(&s, id), NOW, &mut w.rng)
                .unwrap_err();
            assert!(matches!(e, SessionError::TooFarAhead { .. }), "{e:?}");
            assert_eq!(bob_session_state(&w, 0), state);
        }
    }
    // The session still works for messages within the bound.
    assert_eq!(
        text_of(
            &w.bob.accounts[0]
                .decrypt(last.unwrap(), NOW, &mut w.rng)
                .unwrap()
        ),
        "3"
    );
}

/// A copy of an account's full state, as an attacker who stole the device would have.
fn steal(a: &Account) -> Account {
    let (s, g) = a.device.keys().secret_bytes();
    let device = Device::from_parts(
        DeviceKeyPair::from_secret_bytes(&s, &g),
        a.device.certificate().clone(),
    )
    .unwrap();
    Account {
        device,
        prekeys: a.prekeys.clone(),
        own_list: a.own_list.clone(),
        contacts: a.contacts.clone(),
        sessions: a.sessions.clone(),
        replay: a.replay.clone(),
        groups: a.groups.clone(),
    }
}

#[test]
fn forward_secrecy_stolen_state_cannot_read_earlier_messages() {
    let mut w = world();
    connect(&mut w, true, 0);
    let bob_addr = addr(&w.bob);
    let id = w.bob.accounts[0].device().id();
    let sent = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("secret 1"), NOW, &mut w.rng)
        .unwrap();
    let recorded = envelope_for(&sent, id);
    w.bob.accounts[0]
        .decrypt(recorded.clone(), NOW, &mut w.rng)
        .unwrap();
    // The attacker records the envelope, then steals Bob's device (all its state).
    let mut thief = steal(&w.bob.accounts[0]);
    thief.replay = crate::envelope::ReplayWindow::default();
    let e = thief.decrypt(recorded, NOW, &mut w.rng).unwrap_err();
    assert_eq!(
        e,
        SessionError::Duplicate,
        "the message key was deleted after use"
    );
}

#[test]
fn post_compromise_security_heals_after_one_round_trip() {
    let mut w = world();
    connect(&mut w, true, 0);
    connect(&mut w, false, 0);
    let (alice_addr, bob_addr) = (addr(&w.alice), addr(&w.bob));
    let (a_id, b_id) = (
        w.alice.accounts[0].device().id(),
        w.bob.accounts[0].device().id(),
    );
    let send_ab = |w: &mut World, t: &str| {
        let s = w.alice.accounts[0]
            .encrypt(&bob_addr, &text(t), NOW, &mut w.rng)
            .unwrap();
        envelope_for(&s, b_id)
    };
    let e = send_ab(&mut w, "before");
    w.bob.accounts[0].decrypt(e, NOW, &mut w.rng).unwrap();
    // The attacker steals Bob's phone state now.
    let mut thief = steal(&w.bob.accounts[0]);
    // Still compromised: Alice's next message in the same chain is readable by the thief.
    let e = send_ab(&mut w, "compromised");
    assert_eq!(
        text_of(&thief.decrypt(e.clone(), NOW, &mut w.rng).unwrap()),
        "compromised"
    );
    w.bob.accounts[0].decrypt(e, NOW, &mut w.rng).unwrap();
    // Bob answers with a ratchet key he made before the theft, so Alice's next message
    // is still readable by the thief (who follows along passively).
    let s = w.bob.accounts[0]
        .encrypt(&alice_addr, &text("reply"), NOW, &mut w.rng)
        .unwrap();
    w.alice.accounts[0]
        .decrypt(envelope_for(&s, a_id), NOW, &mut w.rng)
        .unwrap();
    let e = send_ab(&mut w, "still exposed");
    assert_eq!(
        text_of(&thief.decrypt(e.clone(), NOW, &mut w.rng).unwrap()),
        "still exposed"
    );
    // Receiving it, Bob makes a fresh ratchet key the thief does not have. One round
    // trip with it (Bob -> Alice, Alice -> Bob) heals the session.
    w.bob.accounts[0].decrypt(e, NOW, &mut w.rng).unwrap();
    let s = w.bob.accounts[0]
        .encrypt(&alice_addr, &text("fresh key"), NOW, &mut w.rng)
        .unwrap();
    w.alice.accounts[0]
        .decrypt(envelope_for(&s, a_id), NOW, &mut w.rng)
        .unwrap();
    let e = send_ab(&mut w, "healed");
    assert_eq!(
        text_of(
            &w.bob.accounts[0]
                .decrypt(e.clone(), NOW, &mut w.rng)
                .unwrap()
        ),
        "healed"
    );
    // The thief's copy cannot follow the new DH ratchet step.
    let err = thief.decrypt(e, NOW, &mut w.rng).unwrap_err();
    assert_eq!(err, SessionError::DecryptFailed);
}

#[test]
fn restored_old_copy_never_reuses_a_message_key() {
    let mut w = world();
    connect(&mut w, true, 0);
    let bob_addr = addr(&w.bob);
    let id = w.bob.accounts[0].device().id();
    let old_copy = steal(&w.alice.accounts[0]);
    let a = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("original"), NOW, &mut w.rng)
        .unwrap();
    // The app restores the old copy and sends a different message from the same position.
    let mut restored = old_copy;
    let b = restored
        .encrypt(&bob_addr, &text("after restore"), NOW, &mut w.rng)
        .unwrap();
    let (ea, eb) = (envelope_for(&a, id), envelope_for(&b, id));
    let ua = crate::envelope::UnverifiedEnvelope::decode(ea.clone()).unwrap();
    let ub = crate::envelope::UnverifiedEnvelope::decode(eb.clone()).unwrap();
    // Same chain position...
    let pos = |u: &crate::envelope::UnverifiedEnvelope| match &u.claimed_header().payload {
        crate::envelope::PayloadHeader::Session(h) => (h.ratchet_key, h.message_number),
        other => panic!("{other:?}"),
    };
    assert_eq!(pos(&ua), pos(&ub));
    // ...but different message ids, hence different AEAD keys and nonces: the two
    // ciphertexts are not a keystream reuse. XOR of the two ciphertexts differs from
    // the XOR of the two (padded) plaintexts.
    assert_ne!(
        ua.claimed_header().message_id,
        ub.claimed_header().message_id
    );
    let pa = text("original").encode_padded().unwrap();
    let pb = text("after restore").encode_padded().unwrap();
    let xor_ct: Vec<u8> = ua
        .ciphertext()
        .iter()
        .zip(ub.ciphertext().iter())
        .map(|(x, y)| x ^ y)
        .collect();
    let xor_pt: Vec<u8> = pa.iter().zip(pb.iter()).map(|(x, y)| x ^ y).collect();
    assert_ne!(xor_ct[..xor_pt.len()], xor_pt[..]);
    // Bob reads the original; the restored sender's message is visible as a duplicate
    // position, not silently accepted.
    w.bob.accounts[0].decrypt(ea, NOW, &mut w.rng).unwrap();
    assert_eq!(
        w.bob.accounts[0].decrypt(eb, NOW, &mut w.rng).unwrap_err(),
        SessionError::Duplicate
    );
}

#[test]
fn devices_not_on_the_signed_list_are_never_used() {
    let mut w = world();
    // A provider serves a bundle for a device it made up under Bob's address.
    let mut rng = ChaCha20Rng::from_seed([99; 32]);
    let mallory_id = IdentityKeyPair::generate(&mut rng);
    let fake = Device::new(
        &mallory_id,
        addr(&w.bob),
        DeviceKeyPair::generate(&mut rng),
        NOW.saturating_sub(YEAR),
        NOW.saturating_add(YEAR),
    )
    .unwrap();
    let fake_list = DeviceList::sign(
        &mallory_id,
        &addr(&w.bob),
        1,
        NOW,
        &[fake.certificate().clone()],
    )
    .unwrap();
    let mut fake_account = Account::new(fake, fake_list, NOW, &mut rng).unwrap();
    fake_account.replenish_prekeys(NOW, &mut rng);
    let bundle = fake_account.prekey_bundle(None).unwrap();
    assert_eq!(
        w.alice.accounts[0]
            .add_bundle(&bundle, NOW, &mut w.rng)
            .unwrap_err(),
        SessionError::NotOnDeviceList
    );
    // Bob removes his laptop: Alice stops sending to it, and its envelopes stop opening.
    connect(&mut w, true, 0);
    let laptop = w.bob.accounts[1].device().id();
    let phone_cert = w.bob.accounts[0].device().certificate().clone();
    let new_list = DeviceList::sign(&w.bob.identity, &addr(&w.bob), 2, NOW, &[phone_cert]).unwrap();
    let events = w.alice.accounts[0]
        .update_device_list(new_list.clone())
        .unwrap();
    assert!(events.iter().any(|e| matches!(e, AccountEvent::Device(crate::identity::DeviceEvent::DeviceRemoved { device, .. }) if *device == laptop)));
    let bob_addr = addr(&w.bob);
    let sent = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("phone only"), NOW, &mut w.rng)
        .unwrap();
    assert_eq!(sent.envelopes.len(), 1);
    assert!(sent.envelopes.iter().all(|e| e.device != laptop));
    // The laptop (still holding its keys) writes to Alice: refused, it is not listed.
    connect(&mut w, false, 1);
    let alice_addr = addr(&w.alice);
    let s = w.bob.accounts[1]
        .encrypt(&alice_addr, &text("from removed laptop"), NOW, &mut w.rng)
        .unwrap();
    let a_id = w.alice.accounts[0].device().id();
    let e = w.alice.accounts[0]
        .decrypt(envelope_for(&s, a_id), NOW, &mut w.rng)
        .unwrap_err();
    assert_eq!(e.code(), "unknown_sender");
}

#[test]
fn ratchet_message_keys_are_salted_by_message_id() {
    let mk = Secret::new([5u8; 32]);
    let (k1, n1) = message_keys(&mk, &[1; 16]);
    let (k2, n2) = message_keys(&mk, &[2; 16]);
    assert_ne!(k1, k2);
    assert_ne!(n1, n2);
}

#[test]
fn batch_decrypt_equals_one_by_one() {
    // Two identical worlds: one device opens a backlog in a batch, its twin one by one.
    let mut w1 = world();
    let mut w2 = world();
    for w in [&mut w1, &mut w2] {
        connect(w, true, 0);
    }
    let bob_addr = addr(&w1.bob);
    let id = w1.bob.accounts[0].device().id();
    let mut backlog: Vec<Bytes> = (0..150)
        .map(|i| {
            let s = w1.alice.accounts[0]
                .encrypt(&bob_addr, &text(&format!("b{i}")), NOW, &mut w1.rng)
                .unwrap();
            envelope_for(&s, id)
        })
        .collect();
    // A tampered one, a duplicate, garbage, and the reordering of two.
    let mut bad = backlog[40].to_vec();
    let n = bad.len();
    bad[n - 5] ^= 1;
    backlog[40] = Bytes::from(bad);
    backlog[90] = backlog[20].clone();
    backlog[91] = Bytes::from_static(b"\x08\x01");
    backlog.swap(100, 120);
    let batch = w1.bob.accounts[0].decrypt_batch(&backlog, NOW, &mut w1.rng);
    // The twin gets byte-identical envelopes (same seeds, same operations).
    let single: Vec<_> = backlog
        .iter()
        .map(|e| w2.bob.accounts[0].decrypt(e.clone(), NOW, &mut w2.rng))
        .collect();
    assert_eq!(batch.len(), single.len());
    for (i, (b, s)) in batch.iter().zip(&single).enumerate() {
        match (b, s) {
            (Ok(b), Ok(s)) => assert_eq!(
                (b.message_id, &b.content),
                (s.message_id, &s.content),
                "at {i}"
            ),
            (Err(b), Err(s)) => assert_eq!(b.code(), s.code(), "at {i}"),
            _ => panic!("batch and single differ at {i}: {b:?} vs {s:?}"),
        }
    }
    assert_eq!(batch[40].as_ref().unwrap_err().code(), "bad_signature");
    assert_eq!(batch[90].as_ref().unwrap_err().code(), "replay");
    assert_eq!(batch.iter().filter(|r| r.is_ok()).count(), 147);
}

#[test]
fn own_device_copies_name_the_conversation() {
    let mut w = world();
    connect(&mut w, false, 0); // Bob's phone: sessions with Alice and with Bob's laptop
    let alice_addr = addr(&w.alice);
    let sent = w.bob.accounts[0]
        .encrypt(&alice_addr, &text("to alice"), NOW, &mut w.rng)
        .unwrap();
    let laptop = w.bob.accounts[1].device().id();
    let copy = w.bob.accounts[1]
        .decrypt(envelope_for(&sent, laptop), NOW, &mut w.rng)
        .unwrap();
    assert_eq!(copy.sender, addr(&w.bob));
    assert_eq!(
        copy.conversation, alice_addr,
        "the laptop files it under the chat with Alice"
    );
    let a = w.alice.accounts[0].device().id();
    let got = w.alice.accounts[0]
        .decrypt(envelope_for(&sent, a), NOW, &mut w.rng)
        .unwrap();
    assert_eq!(
        got.conversation,
        addr(&w.bob),
        "Alice's copy does not carry sent_to"
    );
}

#[test]
fn expired_devices_are_skipped_not_fatal() {
    let mut w = world();
    // Bob's laptop certificate expires before the phone's: re-list Bob with a short-lived laptop.
    let bob_addr = addr(&w.bob);
    let short = Device::new(
        &w.bob.identity,
        bob_addr.clone(),
        DeviceKeyPair::generate(&mut w.rng),
        NOW.saturating_sub(YEAR),
        NOW.saturating_sub(1),
    )
    .unwrap();
    let phone = w.bob.accounts[0].device().certificate().clone();
    let list = DeviceList::sign(
        &w.bob.identity,
        &bob_addr,
        2,
        NOW,
        &[phone, short.certificate().clone()],
    )
    .unwrap();
    w.alice.accounts[0].update_device_list(list).unwrap();
    let b = w.bob.accounts[0].prekey_bundle(None).unwrap();
    w.alice.accounts[0].add_bundle(&b, NOW, &mut w.rng).unwrap();
    let sent = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("hi"), NOW, &mut w.rng)
        .unwrap();
    assert_eq!(sent.envelopes.len(), 1);
    assert_eq!(sent.skipped, vec![(bob_addr.clone(), short.id())]);
}

#[test]
fn retired_prekeys_stop_after_the_grace_period() {
    // Alice fetched Bob's bundles, then Bob rotated; Alice's first message arrives `at`.
    let first_message_after_rotation = |at: UnixMillis| {
        let mut w = world();
        let bundle = w.bob.accounts[0].prekey_bundle(None).unwrap();
        w.bob.accounts[0].rotate_prekeys(NOW, &mut w.rng);
        let b2 = w.bob.accounts[1].prekey_bundle(None).unwrap();
        for b in [&bundle, &b2] {
            w.alice.accounts[0].add_bundle(b, NOW, &mut w.rng).unwrap();
        }
        let bob_addr = addr(&w.bob);
        // Certificates are valid for a year, the grace period is 30 days.
        let sent = w.alice.accounts[0]
            .encrypt(&bob_addr, &text("setup"), at, &mut w.rng)
            .unwrap();
        let id = w.bob.accounts[0].device().id();
        w.bob.accounts[0].decrypt(envelope_for(&sent, id), at, &mut w.rng)
    };
    let late = NOW.saturating_add(crate::limits::SIGNED_PREKEY_GRACE_MS + 1);
    let e = first_message_after_rotation(late).unwrap_err();
    assert!(
        matches!(e, SessionError::UnknownPrekey { kind: "signed", .. }),
        "{e:?}"
    );
    let in_grace = NOW.saturating_add(crate::limits::SIGNED_PREKEY_GRACE_MS);
    assert!(first_message_after_rotation(in_grace).is_ok());
}

#[test]
fn skipped_keys_expire() {
    let mut w = world();
    connect(&mut w, true, 0);
    let bob_addr = addr(&w.bob);
    let id = w.bob.accounts[0].device().id();
    let m0 = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("m0"), NOW, &mut w.rng)
        .unwrap();
    let m1 = w.alice.accounts[0]
        .encrypt(&bob_addr, &text("m1"), NOW, &mut w.rng)
        .unwrap();
    w.bob.accounts[0]
        .decrypt(envelope_for(&m1, id), NOW, &mut w.rng)
        .unwrap();
    // m0's key was skipped at NOW; m0 arrives 30 days and a bit later (still fresh by
    // the replay window's 35-day rule).
    let later = NOW.saturating_add(crate::limits::SKIPPED_KEY_MAX_AGE_MS + 1);
    let e = w.bob.accounts[0]
        .decrypt(envelope_for(&m0, id), later, &mut w.rng)
        .unwrap_err();
    assert_eq!(e, SessionError::KeyExpired);
}
