//! Group vectors (SPEC.md 18): `groups.json`.
//!
//! The users, their devices and the sequencer's key come from seeds (SPEC.md 12); a chain
//! of six countersigned changes (create, add, set_role, remove, set_title, leave) with
//! every intermediate value and the state each one makes; a join from a snapshot; and
//! changes and snapshots that must be refused, each with the state it is applied to and
//! its code. Refused changes are signed by the author's device and countersigned by the
//! sequencer wherever the check they exercise comes after those signatures, so that each
//! breaks exactly the rule it names (unless its description says it breaks two, to pin
//! the order of the checks).

use bytes::Bytes;
use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::CompressedEdwardsY;
use prost::Message;
use serde_json::{Value, json};

use super::{
    NOT_AFTER, NOT_BEFORE, T0, bytes_of, h, hex_or_fill, named, provider_seed, seed, unhex,
};
use crate::address::{Address, Domain};
use crate::crypto::{self, Label, Secret};
use crate::group::{
    GroupAction, GroupChange, GroupId, GroupMember, GroupRole, GroupState, Sequencer,
};
use crate::identity::{Device, DeviceCertificate, DeviceKeyPair, IdentityKeyPair, ProviderKeyPair};
use crate::limits::{
    MAX_GROUP_CHANGE_LEN, MAX_GROUP_CHANGE_MEMBERS, MAX_GROUP_MEMBERS, MAX_GROUP_SNAPSHOT_LEN,
    MAX_GROUP_TITLE_LEN, PROTOCOL_VERSION,
};
use crate::time::UnixMillis;
use crate::wire;
use crate::wire::group_change_body::Action;

/// The users of the group vectors: name, address, what their identity seed and their
/// device seeds are made of (SPEC.md 12). `bob2` is Bob's second device; `bob_new` is Bob
/// after an identity reset (the keys of device_lists.json).
const USERS: &[(&str, &str, &str, &str)] = &[
    ("alice", "alice@one.example", "alice", "alice"),
    ("bob", "bob@two.example", "bob", "bob"),
    ("bob2", "bob@two.example", "bob", "bob2"),
    ("carol", "carol@three.example", "carol", "carol"),
    ("dave", "dave@two.example", "dave", "dave"),
    ("bob_new", "bob@two.example", "bob new", "bob new"),
];

/// A user who never is a member.
const ERIN: &str = "erin@four.example";

struct User {
    name: &'static str,
    identity_seed: [u8; 32],
    signing_seed: [u8; 32],
    agreement_secret: [u8; 32],
    identity: IdentityKeyPair,
    device: Device,
}

fn users() -> Vec<User> {
    USERS
        .iter()
        .map(|&(name, address, identity_what, device_what)| {
            let identity_seed = seed(&format!("{identity_what} identity"));
            let signing_seed = seed(&format!("{device_what} device signing"));
            let agreement_secret = seed(&format!("{device_what} device agreement"));
            let identity = IdentityKeyPair::from_secret_bytes(&Secret::new(identity_seed));
            let device = Device::new(
                &identity,
                Address::parse(address).unwrap(),
                DeviceKeyPair::from_secret_bytes(
                    &Secret::new(signing_seed),
                    &Secret::new(agreement_secret),
                ),
                NOT_BEFORE,
                NOT_AFTER,
            )
            .unwrap();
            User {
                name,
                identity_seed,
                signing_seed,
                agreement_secret,
                identity,
                device,
            }
        })
        .collect()
}

fn user<'a>(users: &'a [User], name: &str) -> &'a User {
    users.iter().find(|u| u.name == name).unwrap()
}

fn member(u: &User, role: GroupRole) -> GroupMember {
    GroupMember {
        address: u.device.address().clone(),
        identity: u.identity.public(),
        role,
    }
}

fn provider(domain: &str) -> ProviderKeyPair {
    ProviderKeyPair::from_secret_bytes(&Secret::new(provider_seed(domain)))
}

fn first16(what: &str) -> [u8; 16] {
    seed(what)[..16].try_into().unwrap()
}

fn role_name(r: GroupRole) -> &'static str {
    match r {
        GroupRole::Member => "member",
        GroupRole::Admin => "admin",
    }
}

fn role_of(name: &Value) -> GroupRole {
    match name.as_str().unwrap() {
        "member" => GroupRole::Member,
        "admin" => GroupRole::Admin,
        other => panic!("role {other}"),
    }
}

fn wire_member(address: &str, identity: &[u8], role: i32) -> wire::GroupMember {
    wire::GroupMember {
        address: address.to_owned(),
        identity_key: Bytes::copy_from_slice(identity),
        role,
    }
}

fn member_json(m: &GroupMember) -> Value {
    json!({"address": m.address.as_str(), "identity_key": h(&m.identity.to_bytes()), "role": role_name(m.role)})
}

fn action_json(a: &GroupAction) -> Value {
    match a {
        GroupAction::Create {
            nonce,
            title,
            sequencer,
            members,
        } => json!({"create": {
            "nonce": h(nonce), "title": title, "sequencer": sequencer.domain.as_str(),
            "sequencer_key": h(&sequencer.key.to_bytes()),
            "members": members.iter().map(member_json).collect::<Vec<_>>(),
        }}),
        GroupAction::Add(members) => {
            json!({"add": {"members": members.iter().map(member_json).collect::<Vec<_>>()}})
        }
        GroupAction::Remove(members) => {
            json!({"remove": {"members": members.iter().map(Address::as_str).collect::<Vec<_>>()}})
        }
        GroupAction::Leave => json!({"leave": {}}),
        GroupAction::SetRole { member, role } => {
            json!({"set_role": {"member": member.as_str(), "role": role_name(*role)}})
        }
        GroupAction::SetTitle(title) => json!({"set_title": {"title": title}}),
    }
}

/// `framed("kogge/v1/hash/group-state", ...)` of SPEC.md 18.5, from its parts, written
/// apart from `GroupState::state_hash` so that the two check each other.
fn state_hash_input(
    id: &[u8],
    epoch: u64,
    title: &str,
    sequencer: &str,
    sequencer_key: &[u8],
    members: &[(String, [u8; 32], u8)],
) -> Vec<u8> {
    let mut sorted = members.to_vec();
    sorted.sort();
    let epoch = epoch.to_be_bytes();
    let mut parts: Vec<&[u8]> = vec![
        id,
        &epoch,
        title.as_bytes(),
        sequencer.as_bytes(),
        sequencer_key,
    ];
    let roles: Vec<[u8; 1]> = sorted.iter().map(|m| [m.2]).collect();
    for (m, r) in sorted.iter().zip(&roles) {
        parts.push(m.0.as_bytes());
        parts.push(&m.1);
        parts.push(r);
    }
    crypto::framed(Label::GroupState, &parts)
}

fn members_of(state: &GroupState) -> Vec<(String, [u8; 32], u8)> {
    state
        .members()
        .map(|m| {
            let r = match m.role {
                GroupRole::Member => 1,
                GroupRole::Admin => 2,
            };
            (m.address.as_str().to_owned(), m.identity.to_bytes(), r)
        })
        .collect()
}

fn state_json(state: &GroupState) -> Value {
    let input = state_hash_input(
        state.id().as_bytes(),
        state.epoch(),
        state.title(),
        state.sequencer().domain.as_str(),
        &state.sequencer().key.to_bytes(),
        &members_of(state),
    );
    assert_eq!(crypto::sha256(&input), state.state_hash());
    json!({
        "group_id": h(state.id().as_bytes()),
        "epoch": state.epoch(),
        "head": h(state.head()),
        "title": state.title(),
        "sequencer": state.sequencer().domain.as_str(),
        "sequencer_key": h(&state.sequencer().key.to_bytes()),
        "members": state.members().map(|m| member_json(&m)).collect::<Vec<_>>(),
        "state_hash_input": h(&input),
        "state_hash": h(&state.state_hash()),
        "snapshot": h(&state.to_snapshot()),
    })
}

/// The outer message and body of an encoded change.
fn parts_of(change: &GroupChange) -> (wire::GroupChange, wire::GroupChangeBody) {
    let outer = wire::GroupChange::decode(change.encoded().clone()).unwrap();
    let body = wire::GroupChangeBody::decode(outer.body.clone()).unwrap();
    (outer, body)
}

/// The sequencer's countersignature of a body: over `group_id`, `u64be(epoch)` and the
/// change hash, whatever the body holds.
fn countersign(key: &ProviderKeyPair, body: &[u8]) -> Vec<u8> {
    let b = wire::GroupChangeBody::decode(body).unwrap();
    let hash = crypto::sha256(&crypto::framed(Label::GroupChangeHash, &[body]));
    crypto::sign(
        key.signing_key(),
        Label::GroupSequence,
        &[&b.group_id, &b.epoch.to_be_bytes(), &hash],
    )
    .to_bytes()
    .to_vec()
}

/// A change of `body` bytes, signed by `device` and countersigned by `sequencer` (if any).
fn assemble(device: &Device, body: &[u8], sequencer: Option<&ProviderKeyPair>) -> Vec<u8> {
    let signature = crypto::sign(
        device.keys().signing(),
        Label::GroupChangeSignature,
        &[body],
    );
    wire::GroupChange {
        body: Bytes::copy_from_slice(body),
        signature: Bytes::copy_from_slice(&signature.to_bytes()),
        sequencer_signature: sequencer
            .map_or_else(Bytes::new, |k| Bytes::from(countersign(k, body))),
    }
    .encode_to_vec()
}

/// `change`'s body edited by `f`, signed by `device`, countersigned by `sequencer`.
fn edited(
    change: &GroupChange,
    device: &Device,
    sequencer: Option<&ProviderKeyPair>,
    f: impl FnOnce(&mut wire::GroupChangeBody),
) -> Vec<u8> {
    let (_, mut body) = parts_of(change);
    f(&mut body);
    assemble(device, &body.encode_to_vec(), sequencer)
}

/// `change` with its outer message edited by `f` (the body and signatures as they are).
fn outer_edited(change: &GroupChange, f: impl FnOnce(&mut wire::GroupChange)) -> Vec<u8> {
    let (mut outer, _) = parts_of(change);
    f(&mut outer);
    outer.encode_to_vec()
}

/// A body from its fields, as the reference encodes it.
#[allow(clippy::too_many_arguments)]
fn body(
    group: &[u8],
    epoch: u64,
    parent: &[u8],
    author: &Device,
    issued: UnixMillis,
    state_hash: &[u8],
    action: Action,
) -> wire::GroupChangeBody {
    wire::GroupChangeBody {
        version: PROTOCOL_VERSION,
        group_id: Bytes::copy_from_slice(group),
        epoch,
        parent: Bytes::copy_from_slice(parent),
        author: author.address().as_str().to_owned(),
        author_device: author.certificate().encoded().clone(),
        issued_ms: issued.0,
        state_hash: Bytes::copy_from_slice(state_hash),
        action: Some(action),
    }
}

/// A public key with a small-order component: `key + T` for a point `T` of order 8. It
/// is on the curve, canonical and not of small order, but not torsion-free.
fn torsioned(key: &[u8; 32]) -> [u8; 32] {
    let p = CompressedEdwardsY(*key).decompress().unwrap();
    (p + EIGHT_TORSION[1]).compress().to_bytes()
}

fn change_json(
    name: &str,
    author: &str,
    device: &str,
    change: &GroupChange,
    after: &GroupState,
) -> Value {
    let (outer, body) = parts_of(change);
    let parts = [
        change.group().as_bytes().to_vec(),
        change.epoch().to_be_bytes().to_vec(),
        change.hash().to_vec(),
    ];
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    json!({
        "name": name,
        "author": author,
        "device": device,
        "epoch": change.epoch(),
        "parent": change.parent().map_or_else(String::new, |p| h(p)),
        "issued_ms": body.issued_ms,
        "action": action_json(change.action()),
        "state_hash": h(change.state_hash()),
        "body": h(&outer.body),
        "signature_input": h(&crypto::framed(Label::GroupChangeSignature, &[&outer.body])),
        "signature": h(&outer.signature),
        "change_hash_input": h(&crypto::framed(Label::GroupChangeHash, &[&outer.body])),
        "change_hash": h(change.hash()),
        "sequence_input": h(&crypto::framed(Label::GroupSequence, &refs)),
        "sequencer_signature": h(&outer.sequencer_signature),
        "encoded": h(change.encoded()),
        "state": state_json(after),
    })
}

fn snapshot_bytes(s: &wire::GroupSnapshot) -> Vec<u8> {
    s.encode_to_vec()
}

fn snapshot_of(state: &GroupState) -> wire::GroupSnapshot {
    wire::GroupSnapshot::decode(state.to_snapshot()).unwrap()
}

/// A refused change: its name, what it breaks, the state it is offered to (`null`: it
/// is a creating change and makes the state), its bytes and its code.
struct Refused {
    name: &'static str,
    description: &'static str,
    state: Value,
    change: Vec<u8>,
    expected: &'static str,
}

/// A snapshot a joiner refuses: name, description, snapshot, change (hex), joiner, code.
type RefusedSnapshot = (
    &'static str,
    &'static str,
    Vec<u8>,
    String,
    &'static str,
    &'static str,
);

/// Builds `groups.json`.
pub(super) fn group_vectors() -> Value {
    let us = users();
    let [alice, bob, bob2, carol, dave, bob_new] = [
        user(&us, "alice"),
        user(&us, "bob"),
        user(&us, "bob2"),
        user(&us, "carol"),
        user(&us, "dave"),
        user(&us, "bob_new"),
    ];
    let seq_key = provider("one.example");
    let other_key = provider("two.example");
    let sequencer = Sequencer {
        domain: Domain::parse("one.example").unwrap(),
        key: seq_key.public(),
    };
    let erin = Address::parse(ERIN).unwrap();

    // The group id (SPEC.md 18.2).
    let nonce = first16("group nonce");
    let id = GroupId::derive(alice.device.address(), &alice.identity.public(), &nonce);
    let id_input = crypto::framed(
        Label::GroupId,
        &[
            alice.device.address().as_str().as_bytes(),
            &alice.identity.public().to_bytes(),
            &nonce,
        ],
    );
    assert_eq!(&crypto::sha256(&id_input)[..16], id.as_bytes());

    // The chain.
    let title = "Suppliers".to_owned();
    let c0 = GroupState::create_change(
        &alice.device,
        nonce,
        title.clone(),
        sequencer.clone(),
        vec![
            member(bob, GroupRole::Member),
            member(carol, GroupRole::Member),
        ],
        T0,
    )
    .unwrap()
    .sequence(&seq_key);
    let s0 = GroupState::create(&c0).unwrap();
    let step = |s: &GroupState, by: &User, a: GroupAction| -> (GroupChange, GroupState) {
        let c = s.change(&by.device, a, T0).unwrap();
        let c = s.order(&c, &seq_key).unwrap();
        let next = s.apply(&c).unwrap();
        (c, next)
    };
    let (c1, s1) = step(
        &s0,
        alice,
        GroupAction::Add(vec![member(dave, GroupRole::Member)]),
    );
    let (c2, s2) = step(
        &s1,
        alice,
        GroupAction::SetRole {
            member: bob.device.address().clone(),
            role: GroupRole::Admin,
        },
    );
    let (c3, s3) = step(
        &s2,
        bob2,
        GroupAction::Remove(vec![carol.device.address().clone()]),
    );
    let (c4, s4) = step(&s3, bob, GroupAction::SetTitle("Zulieferer für Ü".into()));
    let (c5, s5) = step(&s4, alice, GroupAction::Leave);
    let chain = [
        ("create", alice, &c0, &s0),
        ("add", alice, &c1, &s1),
        ("set_role", alice, &c2, &s2),
        ("remove", bob2, &c3, &s3),
        ("set_title", bob, &c4, &s4),
        ("leave", alice, &c5, &s5),
    ];
    let at = |name: &str| json!({"chain": name});

    // A group at its size limit, given as a snapshot: alice (admin) and 999 members.
    let full_nonce = first16("full group nonce");
    let full_id = GroupId::derive(
        alice.device.address(),
        &alice.identity.public(),
        &full_nonce,
    );
    let filler = |i: usize| format!("{i:04}@four.example");
    let carol_key = carol.identity.public().to_bytes();
    let mut full_members: Vec<wire::GroupMember> = (0..MAX_GROUP_MEMBERS - 1)
        .map(|i| wire_member(&filler(i), &carol_key, 1))
        .collect();
    full_members.push(wire_member(
        alice.device.address().as_str(),
        &alice.identity.public().to_bytes(),
        2,
    ));
    let full = wire::GroupSnapshot {
        version: PROTOCOL_VERSION,
        group_id: Bytes::copy_from_slice(full_id.as_bytes()),
        epoch: 7,
        head: Bytes::copy_from_slice(&seed("full group head")),
        title: "Full".into(),
        sequencer: "one.example".into(),
        sequencer_key: Bytes::copy_from_slice(&seq_key.public().to_bytes()),
        members: full_members,
    };
    let full_bytes = snapshot_bytes(&full);
    let full_state = GroupState::from_snapshot(&full_bytes).unwrap();
    assert_eq!(full_state.len(), MAX_GROUP_MEMBERS);

    let s1_hash = s1.state_hash();
    let alice_key = alice.identity.public().to_bytes();
    let sq = Some(&seq_key);
    let mut refused: Vec<Refused> = Vec::new();
    let mut r = |name, description, state: Value, change: Vec<u8>, expected| {
        refused.push(Refused {
            name,
            description,
            state,
            change,
            expected,
        });
    };

    // VAL-GROUP-01 to -12: the change alone. Edits of c2 (alice makes bob an admin, on
    // the state after "add"), re-signed and countersigned.
    r(
        "too_large",
        "one byte longer than MAX_GROUP_CHANGE_LEN (VAL-GROUP-01)",
        at("add"),
        vec![0; MAX_GROUP_CHANGE_LEN + 1],
        "too_large",
    );
    r(
        "outer_truncated",
        "GroupChange whose body field runs past the end (VAL-GROUP-02)",
        at("add"),
        vec![0x0a, 0x05, 0x01, 0x02],
        "decode",
    );
    r(
        "body_not_protobuf",
        "the body is the single byte ff, a truncated varint; signed by alice (VAL-GROUP-02)",
        at("add"),
        assemble(&alice.device, &[0xff], None),
        "decode",
    );
    let bad_utf8 = {
        let (_, mut b) = parts_of(&c2);
        b.author = "xlice@one.example".into();
        let mut bytes = b.encode_to_vec();
        let pos = bytes.windows(5).position(|w| w == b"xlice").unwrap();
        bytes[pos] = 0xff;
        assemble(&alice.device, &bytes, None)
    };
    r(
        "author_not_utf8",
        "the author string is not UTF-8 (VAL-GROUP-02)",
        at("add"),
        bad_utf8,
        "decode",
    );
    r(
        "version_2",
        "body version 2 (VAL-GROUP-03)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| b.version = 2),
        "unsupported_version",
    );
    r(
        "version_2_and_bad_signature",
        "version 2 and a signature by bob's device: the version is checked first (VAL-GROUP-03 before -12)",
        at("add"),
        edited(&c2, &bob.device, sq, |b| b.version = 2),
        "unsupported_version",
    );
    r(
        "group_id_15_bytes",
        "a 15-byte group id (VAL-GROUP-04)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| b.group_id.truncate(15)),
        "invalid_field",
    );
    r(
        "parent_31_bytes",
        "a 31-byte parent (VAL-GROUP-04)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| b.parent.truncate(31)),
        "invalid_field",
    );
    r(
        "parent_missing",
        "no parent at epoch 2 (VAL-GROUP-04)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| b.parent = Bytes::new()),
        "invalid_field",
    );
    r(
        "create_with_parent",
        "the creating change with a 32-byte parent (VAL-GROUP-04)",
        Value::Null,
        edited(&c0, &alice.device, sq, |b| {
            b.parent = Bytes::copy_from_slice(&[7; 32])
        }),
        "invalid_field",
    );
    r(
        "state_hash_31_bytes",
        "a 31-byte state hash (VAL-GROUP-04)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| b.state_hash.truncate(31)),
        "invalid_field",
    );
    r(
        "author_not_canonical",
        "author Alice@one.example (VAL-GROUP-05)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.author = "Alice@one.example".into()
        }),
        "invalid_address",
    );
    r(
        "no_action",
        "no action set (VAL-GROUP-06)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| b.action = None),
        "invalid_field",
    );
    let many: Vec<wire::GroupMember> = (0..=MAX_GROUP_CHANGE_MEMBERS)
        .map(|i| wire_member(&format!("{i:04}@five.example"), &carol_key, 1))
        .collect();
    r(
        "add_101",
        "an add naming MAX_GROUP_CHANGE_MEMBERS + 1 users (VAL-GROUP-06)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.action = Some(Action::Add(wire::GroupAdd { members: many }))
        }),
        "too_many_members",
    );
    r(
        "nonce_15_bytes",
        "a creating change with a 15-byte nonce (VAL-GROUP-06)",
        Value::Null,
        edited(&c0, &alice.device, sq, |b| {
            if let Some(Action::Create(c)) = &mut b.action {
                c.nonce.truncate(15)
            }
        }),
        "invalid_field",
    );
    r(
        "title_too_long",
        "a set_title of MAX_GROUP_TITLE_LEN + 1 bytes (VAL-GROUP-06)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.action = Some(Action::SetTitle(wire::GroupSetTitle {
                title: "ü".repeat(MAX_GROUP_TITLE_LEN / 2) + "x",
            }))
        }),
        "invalid_field",
    );
    r(
        "sequencer_key_small_order",
        "a creating change whose sequencer key is a point of order 8 (VAL-GROUP-06)",
        Value::Null,
        edited(&c0, &alice.device, None, |b| {
            if let Some(Action::Create(c)) = &mut b.action {
                c.sequencer_key = Bytes::copy_from_slice(&EIGHT_TORSION[1].compress().to_bytes())
            }
        }),
        "invalid_field",
    );
    r(
        "identity_key_torsion",
        "an added member whose identity key has a small-order component (VAL-GROUP-06)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.action = Some(Action::Add(wire::GroupAdd {
                members: vec![wire_member(ERIN, &torsioned(&carol_key), 1)],
            }))
        }),
        "invalid_field",
    );
    r(
        "role_0",
        "an added member with role 0 (VAL-GROUP-06)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.action = Some(Action::Add(wire::GroupAdd {
                members: vec![wire_member(ERIN, &carol_key, 0)],
            }))
        }),
        "invalid_field",
    );
    r(
        "role_3",
        "set_role to role 3 (VAL-GROUP-06)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.action = Some(Action::SetRole(wire::GroupSetRole {
                member: "bob@two.example".into(),
                role: 3,
            }))
        }),
        "invalid_field",
    );
    r(
        "member_address_invalid",
        "an added member erin@four..example (VAL-GROUP-06)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.action = Some(Action::Add(wire::GroupAdd {
                members: vec![wire_member("erin@four..example", &carol_key, 1)],
            }))
        }),
        "invalid_address",
    );
    r(
        "removed_address_invalid",
        "a remove naming 'carol', no domain (VAL-GROUP-06)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.action = Some(Action::Remove(wire::GroupRemove {
                members: vec!["carol".into()],
            }))
        }),
        "invalid_address",
    );
    r(
        "sequencer_not_canonical",
        "a creating change whose sequencer is One.example (VAL-GROUP-06)",
        Value::Null,
        edited(&c0, &alice.device, None, |b| {
            if let Some(Action::Create(c)) = &mut b.action {
                c.sequencer = "One.example".into()
            }
        }),
        "invalid_address",
    );
    r(
        "create_at_epoch_2",
        "a create action at epoch 2 (VAL-GROUP-07)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.action = parts_of(&c0).1.action
        }),
        "invalid_change",
    );
    r(
        "set_title_at_epoch_0",
        "a set_title at epoch 0, without parent (VAL-GROUP-07)",
        Value::Null,
        edited(&c0, &alice.device, sq, |b| {
            b.action = Some(Action::SetTitle(wire::GroupSetTitle { title: "x".into() }))
        }),
        "invalid_change",
    );
    r(
        "sequencer_signature_63_bytes",
        "a 63-byte sequencer signature (VAL-GROUP-08)",
        at("add"),
        outer_edited(&c2, |o| o.sequencer_signature.truncate(63)),
        "invalid_field",
    );
    let bad_cert = {
        let mut o =
            wire::DeviceCertificate::decode(alice.device.certificate().encoded().clone()).unwrap();
        let mut sig = o.identity_signature.to_vec();
        sig[0] ^= 1;
        o.identity_signature = Bytes::from(sig);
        Bytes::from(o.encode_to_vec())
    };
    r(
        "certificate_bad",
        "alice's certificate with its identity signature altered (VAL-GROUP-09)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| b.author_device = bad_cert),
        "invalid_certificate",
    );
    r(
        "author_mismatch",
        "author bob@two.example, certificate and signature alice's (VAL-GROUP-10)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.author = "bob@two.example".into()
        }),
        "author_mismatch",
    );
    r(
        "issued_after_certificate",
        "issued 1 ms after alice's certificate expires (VAL-GROUP-11)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| b.issued_ms = NOT_AFTER.0 + 1),
        "certificate_not_valid",
    );
    r(
        "issued_before_certificate",
        "issued 1 ms before alice's certificate is valid (VAL-GROUP-11)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| b.issued_ms = NOT_BEFORE.0 - 1),
        "certificate_not_valid",
    );
    r(
        "signature_altered",
        "the author signature with one bit flipped (VAL-GROUP-12)",
        at("add"),
        outer_edited(&c2, |o| {
            let mut s = o.signature.to_vec();
            s[5] ^= 0x10;
            o.signature = Bytes::from(s);
        }),
        "bad_signature",
    );
    r(
        "signature_63_bytes",
        "a 63-byte author signature (VAL-GROUP-12)",
        at("add"),
        outer_edited(&c2, |o| o.signature.truncate(63)),
        "bad_signature",
    );
    r(
        "signed_by_other_device",
        "alice's change signed by bob's device key (VAL-GROUP-12)",
        at("add"),
        edited(&c2, &bob.device, sq, |_| {}),
        "bad_signature",
    );

    // C1 to C5: creating changes.
    let other_nonce = first16("other group nonce");
    let other_id = GroupId::derive(
        alice.device.address(),
        &alice.identity.public(),
        &other_nonce,
    );
    let create_with = |f: &dyn Fn(&mut wire::GroupCreate)| {
        edited(&c0, &alice.device, sq, |b| {
            if let Some(Action::Create(c)) = &mut b.action {
                f(c);
            }
        })
    };
    r(
        "create_bad_group_id",
        "a creating change naming the id of another nonce (C1)",
        Value::Null,
        edited(&c0, &alice.device, sq, |b| {
            b.group_id = Bytes::copy_from_slice(other_id.as_bytes())
        }),
        "bad_group_id",
    );
    r(
        "create_by_bob_for_alices_id",
        "bob's device makes alice's creating change as bob@two.example: the id is bound to its creator (C1)",
        Value::Null,
        edited(&c0, &bob.device, sq, |b| {
            b.author = "bob@two.example".into();
            b.author_device = bob.device.certificate().encoded().clone();
        }),
        "bad_group_id",
    );
    r(
        "create_author_not_first",
        "the creator listed second (C2)",
        Value::Null,
        create_with(&|c| c.members.swap(0, 1)),
        "invalid_change",
    );
    r(
        "create_author_not_admin",
        "the creator listed first as a member (C2)",
        Value::Null,
        create_with(&|c| c.members[0].role = 1),
        "invalid_change",
    );
    r(
        "create_author_other_key",
        "the creator listed with carol's identity key (C2)",
        Value::Null,
        create_with(&|c| c.members[0].identity_key = Bytes::copy_from_slice(&carol_key)),
        "invalid_change",
    );
    r(
        "create_no_members",
        "a creating change with no member (C2)",
        Value::Null,
        create_with(&|c| c.members.clear()),
        "invalid_change",
    );
    r(
        "create_duplicate",
        "bob listed twice (C3)",
        Value::Null,
        create_with(&|c| {
            let b = c.members[1].clone();
            c.members.push(b);
        }),
        "duplicate_member",
    );
    r(
        "create_not_sequenced",
        "the creating change without countersignature (C4)",
        Value::Null,
        outer_edited(&c0, |o| o.sequencer_signature = Bytes::new()),
        "not_sequenced",
    );
    r(
        "create_countersigned_by_other",
        "countersigned by two.example's provider key (C4)",
        Value::Null,
        edited(&c0, &alice.device, Some(&other_key), |_| {}),
        "bad_sequencer_signature",
    );
    r(
        "create_state_mismatch",
        "a creating change committing to the state hash of another title (C5)",
        Value::Null,
        edited(&c0, &alice.device, sq, |b| {
            let input = state_hash_input(
                id.as_bytes(),
                0,
                "Suppliers!",
                "one.example",
                &seq_key.public().to_bytes(),
                &members_of(&s0),
            );
            b.state_hash = Bytes::copy_from_slice(&crypto::sha256(&input));
        }),
        "state_mismatch",
    );

    // A1 to A10: changes applied to a state.
    r(
        "not_sequenced",
        "\"set_role\" without countersignature, on the state after \"add\" (A6)",
        at("add"),
        outer_edited(&c2, |o| o.sequencer_signature = Bytes::new()),
        "not_sequenced",
    );
    r(
        "countersigned_by_other",
        "\"set_role\" countersigned by two.example's provider key (A6)",
        at("add"),
        edited(&c2, &alice.device, Some(&other_key), |_| {}),
        "bad_sequencer_signature",
    );
    r(
        "countersignature_altered",
        "\"set_role\" with one bit of its countersignature flipped (A6)",
        at("add"),
        outer_edited(&c2, |o| {
            let mut s = o.sequencer_signature.to_vec();
            s[40] ^= 1;
            o.sequencer_signature = Bytes::from(s);
        }),
        "bad_sequencer_signature",
    );
    r(
        "wrong_group",
        "\"set_role\" for the group of another nonce (A1)",
        at("add"),
        edited(&c2, &alice.device, sq, |b| {
            b.group_id = Bytes::copy_from_slice(other_id.as_bytes())
        }),
        "wrong_group",
    );
    r(
        "stale_replay_of_head",
        "\"add\" again, on the state it made (A3)",
        at("add"),
        c1.encoded().to_vec(),
        "group_stale",
    );
    r(
        "stale_older",
        "\"add\" on the state after \"set_role\" (A3)",
        at("set_role"),
        c1.encoded().to_vec(),
        "group_stale",
    );
    r(
        "gap",
        "\"remove\" (epoch 3) on the state after \"add\" (epoch 1) (A4)",
        at("add"),
        c3.encoded().to_vec(),
        "group_gap",
    );
    // A competing change for epoch 2: alice sets the title on the state after "add".
    let rival = s1
        .change(&alice.device, GroupAction::SetTitle("Rivals".into()), T0)
        .unwrap();
    let rival_seq = rival.sequence(&seq_key);
    r(
        "conflict_lost_race",
        "alice's set_title for epoch 2, not countersigned, on the state after \"set_role\" (epoch 2, another change) (A2)",
        at("set_role"),
        rival.encoded().to_vec(),
        "group_conflict",
    );
    r(
        "equivocation",
        "alice's set_title for epoch 2, countersigned by the sequencer, on the state after \"set_role\": two countersigned changes for one epoch (A2)",
        at("set_role"),
        rival_seq.encoded().to_vec(),
        "sequencer_equivocation",
    );
    let fork = s1.apply(&rival_seq).unwrap();
    let on_fork = fork
        .change(&alice.device, GroupAction::SetTitle("Fork".into()), T0)
        .unwrap()
        .sequence(&seq_key);
    r(
        "conflict_other_parent",
        "a countersigned change of epoch 3 whose parent is the rival epoch-2 change, on the state after \"set_role\" (A5)",
        at("set_role"),
        on_fork.encoded().to_vec(),
        "group_conflict",
    );
    let s3_hash = s3.state_hash();
    let leave_body = |by: &User, s: &GroupState, action: Action| {
        body(
            s.id().as_bytes(),
            s.epoch() + 1,
            s.head(),
            &by.device,
            T0,
            &s3_hash,
            action,
        )
        .encode_to_vec()
    };
    r(
        "not_member",
        "carol, removed by \"remove\", leaves on the state after it (A7)",
        at("remove"),
        assemble(
            &carol.device,
            &leave_body(carol, &s3, Action::Leave(wire::GroupLeave {})),
            sq,
        ),
        "not_member",
    );
    r(
        "identity_mismatch",
        "bob's device after an identity reset (bob_new) sets the title on the state after \"remove\" (A7)",
        at("remove"),
        assemble(
            &bob_new.device,
            &leave_body(
                bob_new,
                &s3,
                Action::SetTitle(wire::GroupSetTitle {
                    title: "Mine".into(),
                }),
            ),
            sq,
        ),
        "identity_mismatch",
    );
    r(
        "not_admin_set_title",
        "dave (a member) sets the title on the state after \"remove\" (A8)",
        at("remove"),
        assemble(
            &dave.device,
            &leave_body(
                dave,
                &s3,
                Action::SetTitle(wire::GroupSetTitle {
                    title: "Mine".into(),
                }),
            ),
            sq,
        ),
        "not_admin",
    );
    r(
        "not_admin_add",
        "dave (a member) adds erin on the state after \"remove\" (A8)",
        at("remove"),
        assemble(
            &dave.device,
            &leave_body(
                dave,
                &s3,
                Action::Add(wire::GroupAdd {
                    members: vec![wire_member(ERIN, &carol_key, 1)],
                }),
            ),
            sq,
        ),
        "not_admin",
    );
    r(
        "not_admin_remove",
        "dave (a member) removes alice on the state after \"remove\" (A8)",
        at("remove"),
        assemble(
            &dave.device,
            &leave_body(
                dave,
                &s3,
                Action::Remove(wire::GroupRemove {
                    members: vec!["alice@one.example".into()],
                }),
            ),
            sq,
        ),
        "not_admin",
    );
    r(
        "not_sequenced_and_not_member",
        "carol's leave without countersignature: the countersignature is checked first (A6 before A7)",
        at("remove"),
        assemble(
            &carol.device,
            &leave_body(carol, &s3, Action::Leave(wire::GroupLeave {})),
            None,
        ),
        "not_sequenced",
    );
    let on_s1 = |a: Action| {
        edited(&c2, &alice.device, sq, |b| {
            b.action = Some(a);
            b.state_hash = Bytes::copy_from_slice(&s1_hash);
        })
    };
    let add = |ms: Vec<wire::GroupMember>| Action::Add(wire::GroupAdd { members: ms });
    let remove = |ms: &[&str]| {
        Action::Remove(wire::GroupRemove {
            members: ms.iter().map(|s| (*s).to_owned()).collect(),
        })
    };
    let erin_w = || wire_member(ERIN, &carol_key, 1);
    let bob_w = || wire_member("bob@two.example", &bob.identity.public().to_bytes(), 1);
    r(
        "add_nobody",
        "an add naming no user (A8)",
        at("add"),
        on_s1(add(vec![])),
        "invalid_change",
    );
    r(
        "remove_nobody",
        "a remove naming no user (A8)",
        at("add"),
        on_s1(remove(&[])),
        "invalid_change",
    );
    r(
        "add_member_again",
        "alice adds bob, a member (A8)",
        at("add"),
        on_s1(add(vec![bob_w()])),
        "already_member",
    );
    r(
        "add_twice",
        "alice adds erin twice (A8)",
        at("add"),
        on_s1(add(vec![erin_w(), erin_w()])),
        "duplicate_member",
    );
    r(
        "add_member_before_twice",
        "alice adds bob, then erin twice: users are checked in list order (A8)",
        at("add"),
        on_s1(add(vec![bob_w(), erin_w(), erin_w()])),
        "already_member",
    );
    r(
        "add_twice_before_member",
        "alice adds erin twice, then bob: users are checked in list order (A8)",
        at("add"),
        on_s1(add(vec![erin_w(), erin_w(), bob_w()])),
        "duplicate_member",
    );
    r(
        "remove_self",
        "alice removes herself (A8)",
        at("add"),
        on_s1(remove(&["alice@one.example"])),
        "invalid_change",
    );
    r(
        "remove_twice",
        "alice removes carol twice (A8)",
        at("add"),
        on_s1(remove(&["carol@three.example", "carol@three.example"])),
        "duplicate_member",
    );
    r(
        "remove_non_member",
        "alice removes erin (A8)",
        at("add"),
        on_s1(remove(&[ERIN])),
        "no_such_member",
    );
    r(
        "remove_non_member_before_self",
        "alice removes erin, then herself: users are checked in list order (A8)",
        at("add"),
        on_s1(remove(&[ERIN, "alice@one.example"])),
        "no_such_member",
    );
    r(
        "set_role_non_member",
        "alice makes erin an admin (A8)",
        at("add"),
        on_s1(Action::SetRole(wire::GroupSetRole {
            member: ERIN.into(),
            role: 2,
        })),
        "no_such_member",
    );
    r(
        "set_role_same",
        "alice makes dave a member, which he is (A8)",
        at("add"),
        on_s1(Action::SetRole(wire::GroupSetRole {
            member: "dave@two.example".into(),
            role: 1,
        })),
        "invalid_change",
    );
    r(
        "state_mismatch",
        "alice's set_title committing to the hash of the state before it (A10)",
        at("add"),
        on_s1(Action::SetTitle(wire::GroupSetTitle {
            title: "New".into(),
        })),
        "state_mismatch",
    );
    let s5_hash = s5.state_hash();
    let on_s5 = |a: Action| {
        assemble(
            &bob.device,
            &body(
                s5.id().as_bytes(),
                6,
                s5.head(),
                &bob.device,
                T0,
                &s5_hash,
                a,
            )
            .encode_to_vec(),
            sq,
        )
    };
    r(
        "last_admin_leaves",
        "bob, the only admin, leaves while dave stays (A9)",
        at("leave"),
        on_s5(Action::Leave(wire::GroupLeave {})),
        "no_admin_left",
    );
    r(
        "last_admin_steps_down",
        "bob, the only admin, makes himself a member (A9)",
        at("leave"),
        on_s5(Action::SetRole(wire::GroupSetRole {
            member: "bob@two.example".into(),
            role: 1,
        })),
        "no_admin_left",
    );
    // The group at its limit: one more member is one too many.
    let mut one_more = members_of(&full_state);
    one_more.push((erin.as_str().to_owned(), carol_key, 1));
    let full_hash = crypto::sha256(&state_hash_input(
        full_id.as_bytes(),
        8,
        "Full",
        "one.example",
        &seq_key.public().to_bytes(),
        &one_more,
    ));
    let over = body(
        full_id.as_bytes(),
        8,
        full_state.head(),
        &alice.device,
        T0,
        &full_hash,
        add(vec![erin_w()]),
    )
    .encode_to_vec();
    r(
        "add_beyond_limit",
        "alice adds erin to the group of snapshot \"full\" (MAX_GROUP_MEMBERS members) (A8)",
        json!({"snapshot": "full"}),
        assemble(&alice.device, &over, sq),
        "too_many_members",
    );

    // Snapshots that a joiner refuses, each with the change that adds dave ("add") unless
    // stated otherwise.
    let s0w = snapshot_of(&s0);
    let snap = |f: &dyn Fn(&mut wire::GroupSnapshot)| {
        let mut s = s0w.clone();
        f(&mut s);
        snapshot_bytes(&s)
    };
    let c1_hex = h(c1.encoded());
    let mut bad_snapshots: Vec<RefusedSnapshot> = Vec::new();
    let mut bs = |name, description, bytes: Vec<u8>, expected| {
        bad_snapshots.push((
            name,
            description,
            bytes,
            c1_hex.clone(),
            "dave@two.example",
            expected,
        ));
    };
    bs(
        "too_large",
        "one byte longer than MAX_GROUP_SNAPSHOT_LEN",
        vec![0; MAX_GROUP_SNAPSHOT_LEN + 1],
        "too_large",
    );
    bs("not_protobuf", "the single byte ff", vec![0xff], "decode");
    bs(
        "version_2",
        "version 2",
        snap(&|s| s.version = 2),
        "unsupported_version",
    );
    bs(
        "group_id_15_bytes",
        "a 15-byte group id",
        snap(&|s| s.group_id.truncate(15)),
        "invalid_field",
    );
    bs(
        "head_31_bytes",
        "a 31-byte head",
        snap(&|s| s.head.truncate(31)),
        "invalid_field",
    );
    bs(
        "title_too_long",
        "a title of MAX_GROUP_TITLE_LEN + 1 bytes",
        snap(&|s| s.title = "t".repeat(MAX_GROUP_TITLE_LEN + 1)),
        "invalid_field",
    );
    bs(
        "sequencer_key_torsion",
        "a sequencer key with a small-order component",
        snap(&|s| {
            s.sequencer_key = Bytes::copy_from_slice(&torsioned(&seq_key.public().to_bytes()))
        }),
        "invalid_field",
    );
    bs(
        "identity_key_torsion",
        "bob's identity key with a small-order component",
        snap(&|s| {
            s.members[1].identity_key = Bytes::copy_from_slice(&torsioned(
                &s.members[1].identity_key[..].try_into().unwrap(),
            ))
        }),
        "invalid_field",
    );
    bs(
        "role_0",
        "bob with role 0",
        snap(&|s| s.members[1].role = 0),
        "invalid_field",
    );
    bs(
        "member_address_invalid",
        "bob as bob@two..example",
        snap(&|s| s.members[1].address = "bob@two..example".into()),
        "invalid_address",
    );
    bs(
        "sequencer_invalid",
        "sequencer one..example",
        snap(&|s| s.sequencer = "one..example".into()),
        "invalid_address",
    );
    bs(
        "unsorted",
        "bob and carol swapped: members not in address order",
        snap(&|s| s.members.swap(1, 2)),
        "invalid_field",
    );
    bs(
        "duplicate",
        "bob listed twice, one after the other",
        snap(&|s| {
            let b = s.members[1].clone();
            s.members.insert(1, b);
        }),
        "duplicate_member",
    );
    let mut over_full = full.clone();
    over_full.members.insert(
        MAX_GROUP_MEMBERS - 1,
        wire_member(&filler(MAX_GROUP_MEMBERS - 1), &carol_key, 1),
    );
    bs(
        "too_many",
        "snapshot \"full\" with one more member (0999@four.example): MAX_GROUP_MEMBERS + 1",
        snapshot_bytes(&over_full),
        "too_many_members",
    );
    bs(
        "no_admin",
        "alice listed as a member: no admin",
        snap(&|s| s.members[0].role = 1),
        "no_admin_left",
    );
    bs(
        "no_members",
        "no member at all",
        snap(&|s| s.members.clear()),
        "no_admin_left",
    );
    bs(
        "other_title",
        "the title Suppliers!: the change commits to another state",
        snap(&|s| s.title = "Suppliers!".into()),
        "state_mismatch",
    );
    bs(
        "member_missing",
        "carol left out: the change commits to another state",
        snap(&|s| {
            s.members.remove(2);
        }),
        "state_mismatch",
    );
    bs(
        "other_head",
        "another head: the change's parent is not it",
        snap(&|s| s.head = Bytes::copy_from_slice(&[1; 32])),
        "group_conflict",
    );
    bad_snapshots.push((
        "not_the_joiner",
        "the right snapshot and change, for erin, whom the change does not add",
        snapshot_bytes(&s0w),
        c1_hex.clone(),
        ERIN,
        "invalid_change",
    ));
    bad_snapshots.push((
        "not_an_add",
        "the snapshot after \"add\" with \"set_role\", for dave",
        s1.to_snapshot().to_vec(),
        h(c2.encoded()),
        "dave@two.example",
        "invalid_change",
    ));
    bad_snapshots.push((
        "not_sequenced",
        "the change without countersignature",
        snapshot_bytes(&s0w),
        h(&outer_edited(&c1, |o| o.sequencer_signature = Bytes::new())),
        "dave@two.example",
        "not_sequenced",
    ));

    let users_json: Vec<Value> = us
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "address": u.device.address().as_str(),
                "identity_seed": h(&u.identity_seed),
                "identity_public": h(&u.identity.public().to_bytes()),
                "device_signing_seed": h(&u.signing_seed),
                "device_signing_public": h(u.device.keys().signing_public().as_bytes()),
                "device_agreement_secret": h(&u.agreement_secret),
                "certificate": h(u.device.certificate().encoded()),
            })
        })
        .collect();
    json!({
        "description": "Group membership (SPEC.md 18): a group created by alice and changed five times, each change with its encoding, hashes, signatures and the state it makes; a join from a snapshot; changes and snapshots that must be refused, with the SPEC.md 10 code. Seeds as in SPEC.md 12; certificates valid from not_before_ms to not_after_ms of identity.json; changes issued at 1750000000000.",
        "users": users_json,
        "sequencer": {"domain": "one.example", "key_seed": h(&provider_seed("one.example")), "key": h(&seq_key.public().to_bytes())},
        "other_provider": {"domain": "two.example", "key_seed": h(&provider_seed("two.example")), "key": h(&other_key.public().to_bytes())},
        "group_id": {
            "creator": alice.device.address().as_str(),
            "identity_key": h(&alice_key),
            "nonce": h(&nonce),
            "input": h(&id_input),
            "group_id": h(id.as_bytes()),
        },
        "chain": chain.iter().map(|(name, by, c, s)| {
            let author = if by.name == "bob2" { "bob" } else { by.name };
            change_json(name, author, by.name, c, s)
        }).collect::<Vec<_>>(),
        "join": {
            "snapshot": h(&s0.to_snapshot()),
            "change": c1_hex,
            "joiner": "dave@two.example",
            "state": state_json(&s1),
        },
        "snapshots": [
            {"name": "full", "description": "alice (admin) and 999 members 0000@four.example to 0998@four.example, all with carol's identity key: MAX_GROUP_MEMBERS members", "encoded": h(&full_bytes)},
        ],
        "invalid_changes": refused.iter().map(|r| json!({
            "name": r.name, "description": r.description, "state": r.state,
            "change": hex_or_fill(&r.change), "expected_error": r.expected,
        })).collect::<Vec<_>>(),
        "invalid_snapshots": bad_snapshots.iter().map(|(name, description, bytes, change, joiner, expected)| json!({
            "name": name, "description": description, "snapshot": hex_or_fill(bytes),
            "change": change, "joiner": joiner, "expected_error": expected,
        })).collect::<Vec<_>>(),
    })
}

/// Replays `groups.json` through the public API: every user rebuilt from its seeds, the
/// chain applied change by change to the stated states, the join, and every refused
/// change and snapshot refused with its code.
pub(super) fn check_groups(groups: &Value) {
    for u in groups["users"].as_array().unwrap() {
        let identity = IdentityKeyPair::from_secret_bytes(&Secret::new(
            unhex(&u["identity_seed"]).try_into().unwrap(),
        ));
        assert_eq!(h(&identity.public().to_bytes()), u["identity_public"]);
        let keys = DeviceKeyPair::from_secret_bytes(
            &Secret::new(unhex(&u["device_signing_seed"]).try_into().unwrap()),
            &Secret::new(unhex(&u["device_agreement_secret"]).try_into().unwrap()),
        );
        let cert = DeviceCertificate::decode(Bytes::from(unhex(&u["certificate"]))).unwrap();
        assert_eq!(cert.identity_key(), &identity.public());
        assert_eq!(cert.address().as_str(), u["address"]);
        Device::from_parts(keys, cert).unwrap();
    }
    let g = &groups["group_id"];
    let id = GroupId::derive(
        &Address::parse(g["creator"].as_str().unwrap()).unwrap(),
        &crate::identity::IdentityKey::from_bytes(&unhex(&g["identity_key"])).unwrap(),
        &unhex(&g["nonce"]).try_into().unwrap(),
    );
    assert_eq!(h(id.as_bytes()), g["group_id"]);

    let decode = |v: &Value| GroupChange::decode(bytes_of(v));
    let mut states: Vec<(String, GroupState)> = Vec::new();
    for c in groups["chain"].as_array().unwrap() {
        let change = decode(&c["encoded"]).unwrap();
        assert_eq!(h(change.hash()), c["change_hash"]);
        assert_eq!(h(change.state_hash()), c["state_hash"]);
        assert_eq!(change.epoch(), c["epoch"].as_u64().unwrap());
        assert_eq!(action_json(change.action()), c["action"]);
        let next = match states.last() {
            None => GroupState::create(&change),
            Some((_, s)) => s.apply(&change),
        }
        .unwrap_or_else(|e| panic!("chain change {} refused: {e}", c["name"]));
        assert_expected_state(&next, &c["state"]);
        states.push((c["name"].as_str().unwrap().to_owned(), next));
    }

    let j = &groups["join"];
    let joined = GroupState::join(
        &unhex(&j["snapshot"]),
        &decode(&j["change"]).unwrap(),
        &Address::parse(j["joiner"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_expected_state(&joined, &j["state"]);

    let snapshot = |name: &str| {
        GroupState::from_snapshot(&unhex(&named(&groups["snapshots"], name)["encoded"])).unwrap()
    };
    let mut codes = std::collections::BTreeSet::new();
    for v in groups["invalid_changes"].as_array().unwrap() {
        let result = decode(&v["change"]).and_then(|change| match &v["state"] {
            Value::Null => GroupState::create(&change),
            s if s.get("chain").is_some() => {
                let name = s["chain"].as_str().unwrap();
                states
                    .iter()
                    .find(|(n, _)| n == name)
                    .unwrap()
                    .1
                    .apply(&change)
            }
            s => snapshot(s["snapshot"].as_str().unwrap()).apply(&change),
        });
        let err = result.map(|_| ()).expect_err(v["name"].as_str().unwrap());
        assert_eq!(
            err.code(),
            v["expected_error"],
            "invalid change {}: {err}",
            v["name"]
        );
        codes.insert(err.code());
    }
    for v in groups["invalid_snapshots"].as_array().unwrap() {
        let err = decode(&v["change"])
            .and_then(|change| {
                GroupState::join(
                    &bytes_of(&v["snapshot"]),
                    &change,
                    &Address::parse(v["joiner"].as_str().unwrap()).unwrap(),
                )
            })
            .map(|_| ())
            .expect_err(v["name"].as_str().unwrap());
        assert_eq!(
            err.code(),
            v["expected_error"],
            "invalid snapshot {}: {err}",
            v["name"]
        );
        codes.insert(err.code());
    }
    // Every code of SPEC.md 18.4 and 18.6.
    assert_eq!(codes.len(), 27, "codes covered: {codes:?}");
}

fn assert_expected_state(state: &GroupState, want: &Value) {
    assert_eq!(h(state.id().as_bytes()), want["group_id"]);
    assert_eq!(state.epoch(), want["epoch"].as_u64().unwrap());
    assert_eq!(h(state.head()), want["head"]);
    assert_eq!(state.title(), want["title"]);
    assert_eq!(state.sequencer().domain.as_str(), want["sequencer"]);
    assert_eq!(h(&state.sequencer().key.to_bytes()), want["sequencer_key"]);
    let members: Vec<Value> = state.members().map(|m| member_json(&m)).collect();
    assert_eq!(&Value::from(members), &want["members"]);
    for m in want["members"].as_array().unwrap() {
        let a = Address::parse(m["address"].as_str().unwrap()).unwrap();
        assert_eq!(state.role(&a), Some(role_of(&m["role"])));
    }
    assert_eq!(h(&state.state_hash()), want["state_hash"]);
    assert_eq!(h(&state.to_snapshot()), want["snapshot"]);
    let restored = GroupState::from_snapshot(&unhex(&want["snapshot"])).unwrap();
    assert!(restored == *state, "the snapshot restores another state");
}
