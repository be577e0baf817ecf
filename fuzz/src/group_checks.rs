//! The bodies of the group fuzz targets (SPEC.md 18; STYLE.md C12).
//!
//! This one file is compiled two ways, always by `#[path]`: into each group fuzz target
//! (`fuzz/fuzz_targets/{group_change_decode,group_snapshot}.rs`) and into
//! `tests/fuzz_corpus_group.rs`, which replays `fuzz/corpus/<target>/*` under `cargo test`
//! and writes the seed files from `tests/vectors/groups.json`. It uses only the public
//! `kogge` API plus `bytes` and `ed25519-dalek`.
//!
//! The world is the group of the test vectors (`tests/vectors/groups.json`): the same
//! seeds, the same nonce and clock, so its changes are byte for byte the vectors' chain
//! and every vector reaches the checks it was written for. Built once per process.
//!
//! Every check must return normally for any input; a panic (a failed `assert!`
//! included) is a finding.

// A failed check must panic: that is how libFuzzer and the test report a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::LazyLock;

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use kogge::UnixMillis;
use kogge::address::{Address, Domain};
use kogge::crypto::{self, Label, Secret};
use kogge::group::{
    GroupAction, GroupChange, GroupError, GroupId, GroupMember, GroupRole, GroupState, Sequencer,
};
use kogge::identity::{Device, DeviceKeyPair, IdentityKeyPair, ProviderKeyPair};
use kogge::limits::{MAX_GROUP_MEMBERS, MAX_GROUP_SNAPSHOT_LEN};

/// The check of one target: returns normally for every input, or panics on a finding.
pub type Check = fn(&[u8]);

/// Every group target: its name (`fuzz/fuzz_targets/<name>.rs`, `fuzz/corpus/<name>/`)
/// and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("group_change_decode", group_change_decode),
    ("group_snapshot", group_snapshot),
];

/// When the world's changes are issued (as in the vectors).
pub const T0: UnixMillis = UnixMillis(1_750_000_000_000);
const NOT_BEFORE: UnixMillis = UnixMillis(1_700_000_000_000);
const NOT_AFTER: UnixMillis = UnixMillis(1_800_000_000_000);

/// The devices of the world, in the order the selector bytes name them: name, address,
/// identity seed word, device seed word (SPEC.md 12).
pub const USERS: &[(&str, &str, &str, &str)] = &[
    ("alice", "alice@one.example", "alice", "alice"),
    ("bob", "bob@two.example", "bob", "bob"),
    ("bob2", "bob@two.example", "bob", "bob2"),
    ("carol", "carol@three.example", "carol", "carol"),
    ("dave", "dave@two.example", "dave", "dave"),
    ("bob_new", "bob@two.example", "bob new", "bob new"),
];

fn seed(what: &str) -> [u8; 32] {
    crypto::sha256(format!("kogge test vector: {what}").as_bytes())
}

/// One device of the world, with its signing key for signing arbitrary bodies.
pub struct WorldDevice {
    /// The device.
    pub device: Device,
    /// The identity key pair of its user.
    pub identity: IdentityKeyPair,
    /// Its signing key (the same key as the device's).
    pub signing: SigningKey,
}

/// The vectors' group: states after each change of the chain and the changes.
pub struct World {
    /// alice, bob, bob2, carol, dave, bob_new.
    pub devices: Vec<WorldDevice>,
    /// The group's sequencer (one.example).
    pub sequencer: ProviderKeyPair,
    /// Another provider's key (two.example).
    pub other: ProviderKeyPair,
    /// The chain: create, add, set_role, remove, set_title, leave (countersigned).
    pub changes: Vec<GroupChange>,
    /// The state after each change of `changes`.
    pub states: Vec<GroupState>,
}

static WORLD: LazyLock<World> = LazyLock::new(build_world);

/// The world, built once.
pub fn world() -> &'static World {
    &WORLD
}

fn build_world() -> World {
    let devices: Vec<WorldDevice> = USERS
        .iter()
        .map(|&(_, address, identity_what, device_what)| {
            let identity = IdentityKeyPair::from_secret_bytes(&Secret::new(seed(&format!(
                "{identity_what} identity"
            ))));
            let signing_seed = seed(&format!("{device_what} device signing"));
            let device = Device::new(
                &identity,
                Address::parse(address).unwrap(),
                DeviceKeyPair::from_secret_bytes(
                    &Secret::new(signing_seed),
                    &Secret::new(seed(&format!("{device_what} device agreement"))),
                ),
                NOT_BEFORE,
                NOT_AFTER,
            )
            .unwrap();
            WorldDevice {
                device,
                identity,
                signing: SigningKey::from_bytes(&signing_seed),
            }
        })
        .collect();
    let provider = |d: &str| {
        ProviderKeyPair::from_secret_bytes(&Secret::new(seed(&format!("{d} provider key"))))
    };
    let sequencer = provider("one.example");
    let other = provider("two.example");
    let member = |i: usize, role| GroupMember {
        address: devices[i].device.address().clone(),
        identity: devices[i].identity.public(),
        role,
    };
    let nonce: [u8; 16] = seed("group nonce")[..16].try_into().unwrap();
    let create = GroupState::create_change(
        &devices[0].device,
        nonce,
        "Suppliers".into(),
        Sequencer {
            domain: Domain::parse("one.example").unwrap(),
            key: sequencer.public(),
        },
        vec![member(1, GroupRole::Member), member(3, GroupRole::Member)],
        T0,
    )
    .unwrap()
    .sequence(&sequencer);
    let mut changes = vec![create.clone()];
    let mut states = vec![GroupState::create(&create).unwrap()];
    let steps = [
        (0, GroupAction::Add(vec![member(4, GroupRole::Member)])),
        (
            0,
            GroupAction::SetRole {
                member: devices[1].device.address().clone(),
                role: GroupRole::Admin,
            },
        ),
        (
            2,
            GroupAction::Remove(vec![devices[3].device.address().clone()]),
        ),
        (1, GroupAction::SetTitle("Zulieferer für Ü".into())),
        (0, GroupAction::Leave),
    ];
    for (by, action) in steps {
        let s = states.last().unwrap();
        let c = s.change(&devices[by].device, action, T0).unwrap();
        let c = s.order(&c, &sequencer).unwrap();
        states.push(s.apply(&c).unwrap());
        changes.push(c);
    }
    World {
        devices,
        sequencer,
        other,
        changes,
        states,
    }
}

/// A `GroupChange` from its three fields, in the reference encoding.
pub fn encode_change(body: &[u8], signature: &[u8], sequencer_signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (field, value) in [(1u8, body), (2, signature), (3, sequencer_signature)] {
        if value.is_empty() {
            continue;
        }
        out.push(field << 3 | 2);
        let mut n = value.len();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(value);
    }
    out
}

/// The change an input makes. `data[0]` is the mode: high nibble 0, the rest is a
/// change as received; high nibble 1, `data[1]` selects a device (low 3 bits, modulo 6)
/// and a countersigner (bits 3-4: none, the sequencer, another provider, the sequencer),
/// and the rest is a body that device signs (and the countersigner countersigns, if it
/// decodes), so that the fuzzer gets past the signatures.
fn change_of(data: &[u8]) -> Option<Bytes> {
    let (&mode, rest) = data.split_first()?;
    match mode >> 4 {
        0 => Some(Bytes::copy_from_slice(rest)),
        1 => {
            let (&sel, body) = rest.split_first()?;
            let w = world();
            let dev = &w.devices[usize::from(sel & 7) % w.devices.len()];
            let sig = dev
                .signing
                .sign(&crypto::framed(Label::GroupChangeSignature, &[body]));
            let unsequenced = Bytes::from(encode_change(body, &sig.to_bytes(), &[]));
            let key = match (sel >> 3) & 3 {
                0 => return Some(unsequenced),
                2 => &w.other,
                _ => &w.sequencer,
            };
            match GroupChange::decode(unsequenced.clone()) {
                Ok(c) => Some(c.sequence(key).encoded().clone()),
                Err(_) => Some(unsequenced),
            }
        }
        _ => None,
    }
}

fn error_is_sane(e: &GroupError) {
    assert!(!e.code().is_empty() && !e.to_string().is_empty());
}

/// Checks that hold for every state a check accepted.
fn state_is_sane(s: &GroupState) {
    assert!(s.len() <= MAX_GROUP_MEMBERS);
    assert!(s.is_empty() || s.members().any(|m| m.role == GroupRole::Admin));
    let members: Vec<GroupMember> = s.members().collect();
    assert!(members.windows(2).all(|w| w[0].address < w[1].address));
    for m in &members {
        assert_eq!(s.role(&m.address), Some(m.role));
        assert_eq!(s.identity(&m.address), Some(&m.identity));
    }
    let snapshot = s.to_snapshot();
    assert!(snapshot.len() <= MAX_GROUP_SNAPSHOT_LEN);
    if !s.is_empty() {
        assert_eq!(GroupState::from_snapshot(&snapshot).as_ref(), Ok(s));
    }
    assert!(!format!("{s:?}").is_empty());
}

/// `group_change_decode`: `GroupChange::decode` of the change an input makes (see
/// [`change_of`]), then, by `data[0] & 15` modulo 7: 0, `GroupState::create`; `k` = 1 to
/// 6, `apply` to the world's state after its `k`-th change (and `order` by the
/// sequencer, which must agree with `apply` on everything but the countersignature).
pub fn group_change_decode(data: &[u8]) {
    let Some(input) = change_of(data) else {
        return;
    };
    let change = match GroupChange::decode(input.clone()) {
        Ok(c) => c,
        Err(e) => return error_is_sane(&e),
    };
    // Decoding: exact bytes, idempotent, the structure SPEC.md 18.4 promises.
    assert_eq!(change.encoded(), &input);
    assert_eq!(GroupChange::decode(input.clone()).as_ref(), Ok(&change));
    assert_eq!(change.epoch() == 0, change.parent().is_none());
    assert_eq!(
        change.epoch() == 0,
        matches!(change.action(), GroupAction::Create { .. })
    );
    assert_eq!(change.author_device().address(), change.author());
    assert!(change.author_device().is_valid_at(change.issued()));
    assert!(!format!("{change:?}").is_empty());

    let w = world();
    let which = usize::from(data[0] & 15) % (w.states.len() + 1);
    if which == 0 {
        match GroupState::create(&change) {
            Ok(s) => {
                assert!(change.is_sequenced());
                assert_eq!((s.epoch(), s.head()), (0, change.hash()));
                assert_eq!(&s.state_hash(), change.state_hash());
                let GroupAction::Create { nonce, .. } = change.action() else {
                    panic!("a state created by another action");
                };
                let id = GroupId::derive(
                    change.author(),
                    change.author_device().identity_key(),
                    nonce,
                );
                assert_eq!(s.id(), id);
                assert_eq!(s.role(change.author()), Some(GroupRole::Admin));
                state_is_sane(&s);
            }
            Err(e) => error_is_sane(&e),
        }
        return;
    }
    let state = &w.states[which - 1];
    let applied = state.apply(&change);
    let ordered = state.order(&change, &w.sequencer);
    match &applied {
        Ok(next) => {
            assert!(change.is_sequenced());
            assert_eq!(next.id(), state.id());
            assert_eq!(next.epoch(), state.epoch() + 1);
            assert_eq!(next.head(), change.hash());
            assert_eq!(&next.state_hash(), change.state_hash());
            assert_eq!(next.sequencer(), state.sequencer());
            assert_eq!(
                state.identity(change.author()),
                Some(change.author_device().identity_key())
            );
            state_is_sane(next);
            // Once applied, the change is stale.
            assert_eq!(
                next.apply(&change).map(|_| ()).map_err(|e| e.code()),
                Err("group_stale")
            );
            // The sequencer orders exactly what members accept.
            let o = ordered.as_ref().expect("apply accepts what order refuses");
            assert_eq!(state.apply(o).as_ref(), Ok(next));
        }
        Err(e) => {
            error_is_sane(e);
            match (e.code(), &ordered) {
                // Only the countersignature is for `order` to add.
                ("not_sequenced" | "bad_sequencer_signature", Ok(o)) => {
                    state_is_sane(&state.apply(o).expect("an ordered change is refused"));
                }
                ("not_sequenced" | "bad_sequencer_signature", Err(oe)) => error_is_sane(oe),
                (code, _) => assert_eq!(
                    ordered.as_ref().map(|_| ()).map_err(|e| e.code()),
                    Err(code),
                    "order and apply disagree"
                ),
            }
        }
    }
}

/// `group_snapshot`: `GroupState::from_snapshot` of the input after two selector bytes,
/// then `GroupState::join` with the world's change number `data[0] % 5 + 1` (only the
/// first, "add", adds anyone: dave) for the user of device `data[1] % 6`. A join can
/// only give the world's own state: the change commits to the state it makes.
pub fn group_snapshot(data: &[u8]) {
    let [a, b, snapshot @ ..] = data else {
        return;
    };
    match GroupState::from_snapshot(snapshot) {
        Ok(s) => {
            state_is_sane(&s);
            assert!(!s.is_empty());
            // The reference encoding of what was decoded decodes to the same state.
            assert_eq!(GroupState::from_snapshot(&s.to_snapshot()).as_ref(), Ok(&s));
        }
        Err(e) => error_is_sane(&e),
    }
    let w = world();
    let k = usize::from(*a) % (w.changes.len() - 1) + 1;
    let joiner = w.devices[usize::from(*b) % w.devices.len()]
        .device
        .address();
    match GroupState::join(snapshot, &w.changes[k], joiner) {
        Ok(joined) => {
            assert_eq!(k, 1, "a join by a change that adds nobody");
            // `join` checks that the change is an add that names the joiner (SPEC.md 18.6).
            assert!(joined.role(joiner).is_some());
            assert_eq!(joiner.as_str(), "dave@two.example");
            assert!(
                joined == w.states[1],
                "a join gave another state than the group's"
            );
        }
        Err(e) => error_is_sane(&e),
    }
}
