//! The body of the group message fuzz target (SPEC.md 19, 7.5; STYLE.md C12).
//!
//! Compiled two ways, always by `#[path]`: into `fuzz/fuzz_targets/group_message_open.rs`
//! and into `tests/fuzz_corpus_group_messages.rs`, which replays
//! `fuzz/corpus/group_message_open/*` under `cargo test` and writes its seeds. It uses only
//! the public `kogge` API plus `bytes`, `rand_chacha` and `rand_core`.
//!
//! The world: alice creates a group with bob and carol; alice's sender chain (from a seeded
//! generator) is held by bob at iteration 0. The first input byte picks the mode:
//!
//! * even: the rest is a group envelope that bob opens at epoch 0. If it opens, the same
//!   bytes are a duplicate afterwards; if it is refused, bob's receiver is unchanged and
//!   alice's honest first message still opens on it.
//! * odd: the rest is a sender key (`GroupSenderKey`); if it decodes, it encodes back to
//!   itself, and offering it to a fresh receiver as alice's never panics.
//!
//! Every check must return normally for any input; a panic is a finding.

// A failed check must panic: that is how libFuzzer and the test report a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::LazyLock;

use bytes::Bytes;
use kogge::UnixMillis;
use kogge::address::{Address, Domain};
use kogge::envelope::{Content, MessageId, Text};
use kogge::group::{
    GroupEnvelope, GroupMember, GroupMessageError, GroupReceiver, GroupRole, GroupSender,
    GroupState, SenderKey, Sequencer,
};
use kogge::identity::{Device, DeviceCertificate, DeviceKeyPair, IdentityKeyPair, ProviderKeyPair};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The check of one target.
pub type Check = fn(&[u8]);

/// The group message target.
pub const TARGETS: &[(&str, Check)] = &[("group_message_open", group_message_open)];

/// The world's clock.
pub const T0: UnixMillis = UnixMillis(1_750_000_000_000);
const YEAR: u64 = 365 * 24 * 3600 * 1000;

/// The world of the target.
pub struct World {
    /// alice, bob, carol, and erin (not a member).
    pub devices: Vec<Device>,
    /// The group at epoch 0.
    pub state: GroupState,
    /// bob's receiver, holding alice's chain at iteration 0.
    pub receiver: GroupReceiver,
    /// alice's chain at iteration 0.
    pub key: SenderKey,
    /// Messages alice sealed at iterations 0, 1, 2 and 5 (the first is "honest").
    pub sealed: Vec<Bytes>,
}

static WORLD: LazyLock<World> = LazyLock::new(build_world);

/// The world, built once per process.
pub fn world() -> &'static World {
    &WORLD
}

fn build_world() -> World {
    let mut rng = ChaCha20Rng::seed_from_u64(19);
    let devices: Vec<Device> = [
        "alice@one.example",
        "bob@two.example",
        "carol@three.example",
        "erin@four.example",
    ]
    .iter()
    .map(|a| {
        let identity = IdentityKeyPair::generate(&mut rng);
        Device::new(
            &identity,
            Address::parse(a).unwrap(),
            DeviceKeyPair::generate(&mut rng),
            UnixMillis(T0.0 - YEAR),
            UnixMillis(T0.0 + YEAR),
        )
        .unwrap()
    })
    .collect();
    let member = |d: &Device| GroupMember {
        address: d.address().clone(),
        identity: *d.certificate().identity_key(),
        role: GroupRole::Member,
    };
    let sequencer = ProviderKeyPair::generate(&mut rng);
    let create = GroupState::create_change(
        &devices[0],
        [5; 16],
        "fuzz".into(),
        Sequencer {
            domain: Domain::parse("one.example").unwrap(),
            key: sequencer.public(),
        },
        vec![member(&devices[1]), member(&devices[2])],
        T0,
    )
    .unwrap()
    .sequence(&sequencer);
    let state = GroupState::create(&create).unwrap();
    let mut sender = GroupSender::new(&state, &devices[0], 1, &mut rng).unwrap();
    let key = sender.sender_key().clone();
    let mut receiver = GroupReceiver::new(state.id());
    receiver
        .add_sender_key(&state, devices[0].certificate(), &key)
        .unwrap();
    let mut sealed = Vec::new();
    for i in 0..6u32 {
        let id = MessageId::random(&mut rng);
        let content = Content::Text(Text::plain(format!("message {i}")));
        let bytes = sender.seal(&devices[0], &state, &content, id, T0).unwrap();
        if matches!(i, 0 | 1 | 2 | 5) {
            sealed.push(bytes);
        }
    }
    World {
        devices,
        state,
        receiver,
        key,
        sealed,
    }
}

fn certificate<'a>(w: &'a World, env: &GroupEnvelope) -> Option<&'a DeviceCertificate> {
    w.devices
        .iter()
        .map(Device::certificate)
        .find(|c| c.address() == env.sender() && c.device_id() == env.sender_device())
}

/// The target's check.
pub fn group_message_open(data: &[u8]) {
    let w = world();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let mut r = w.receiver.clone();
        let env = match GroupEnvelope::decode(Bytes::copy_from_slice(rest)) {
            Ok(env) => env,
            Err(e) => {
                assert!(!e.code().is_empty());
                return;
            }
        };
        let Some(cert) = certificate(w, &env) else {
            return;
        };
        match r.open(&w.state, &env, cert) {
            Ok(opened) => {
                assert_eq!(opened.group, w.state.id());
                assert_eq!(&opened.sender, cert.address());
                assert_eq!(
                    r.open(&w.state, &env, cert),
                    Err(GroupMessageError::Duplicate)
                );
            }
            Err(e) => {
                assert!(!e.code().is_empty());
                assert_eq!(r.skipped_keys(), w.receiver.skipped_keys());
                let honest = GroupEnvelope::decode(w.sealed[0].clone()).unwrap();
                assert!(
                    r.open(&w.state, &honest, w.devices[0].certificate())
                        .is_ok(),
                    "a refused message ({}) changed the receiver",
                    e.code()
                );
            }
        }
    } else {
        match SenderKey::decode(rest) {
            Err(e) => assert!(!e.code().is_empty()),
            Ok(k) => {
                assert_eq!(SenderKey::decode(&k.encode()).unwrap(), k);
                let mut r = GroupReceiver::new(w.state.id());
                match r.add_sender_key(&w.state, w.devices[0].certificate(), &k) {
                    Ok(_) => {}
                    Err(e) => assert!(!e.code().is_empty()),
                }
            }
        }
    }
}

/// Seeds: the sealed messages (and each with one bit flipped in its signature), alice's
/// sender key, and a few short inputs.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let w = world();
    let mut out = Vec::new();
    for (i, m) in w.sealed.iter().enumerate() {
        let mut raw = vec![0];
        raw.extend_from_slice(m);
        out.push((format!("message-{i}"), raw.clone()));
        if let Some(last) = raw.last_mut() {
            *last ^= 1;
        }
        out.push((format!("message-{i}-bad-signature"), raw));
    }
    let mut key = vec![1];
    key.extend_from_slice(&w.key.encode());
    out.push(("sender-key".into(), key));
    out.push(("empty-envelope".into(), vec![0]));
    out.push(("empty-key".into(), vec![1]));
    out.into_iter()
        .enumerate()
        .map(|(i, (n, d))| (format!("seed-{i:03}-{n}"), d))
        .collect()
}
