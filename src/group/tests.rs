use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::identity::{DeviceKeyPair, IdentityKeyPair};

const T: UnixMillis = UnixMillis(1_800_000_000_000);
const YEAR: u64 = 365 * 24 * 3600 * 1000;

struct User {
    identity: IdentityKeyPair,
    device: Device,
}

impl User {
    fn new(rng: &mut ChaCha20Rng, address: &str) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let device = device_of(rng, &identity, address);
        Self { identity, device }
    }

    fn address(&self) -> &Address {
        self.device.address()
    }

    fn member(&self, role: GroupRole) -> GroupMember {
        GroupMember {
            address: self.address().clone(),
            identity: self.identity.public(),
            role,
        }
    }
}

fn device_of(rng: &mut ChaCha20Rng, identity: &IdentityKeyPair, address: &str) -> Device {
    Device::new(
        identity,
        Address::parse(address).unwrap(),
        DeviceKeyPair::generate(rng),
        UnixMillis(T.0 - YEAR),
        UnixMillis(T.0 + YEAR),
    )
    .unwrap()
}

struct World {
    rng: ChaCha20Rng,
    sequencer: ProviderKeyPair,
    alice: User,
    bob: User,
    carol: User,
    dave: User,
}

fn world() -> World {
    let mut rng = ChaCha20Rng::from_seed([6; 32]);
    let sequencer = ProviderKeyPair::generate(&mut rng);
    let alice = User::new(&mut rng, "alice@one.example");
    let bob = User::new(&mut rng, "bob@two.example");
    let carol = User::new(&mut rng, "carol@three.example");
    let dave = User::new(&mut rng, "dave@two.example");
    World {
        rng,
        sequencer,
        alice,
        bob,
        carol,
        dave,
    }
}

impl World {
    fn seq(&self) -> Sequencer {
        Sequencer {
            domain: Domain::parse("one.example").unwrap(),
            key: self.sequencer.public(),
        }
    }

    /// alice (admin) creates a group with bob (member) and carol (admin).
    fn group(&self) -> GroupState {
        let change = GroupState::create_change(
            &self.alice.device,
            [9; 16],
            "Suppliers".into(),
            self.seq(),
            vec![
                self.bob.member(GroupRole::Member),
                self.carol.member(GroupRole::Admin),
            ],
            T,
        )
        .unwrap();
        GroupState::create(&change.sequence(&self.sequencer)).unwrap()
    }

    /// The next change of `state` by `by`, committing to `state_hash`, made without the
    /// author-side checks of `GroupState::change` (as a modified client or a provider
    /// holding a device of its own would), and countersigned.
    fn forced(
        &self,
        state: &GroupState,
        by: &Device,
        state_hash: [u8; 32],
        action: &GroupAction,
    ) -> GroupChange {
        GroupChange::sign(
            by,
            state.id(),
            state.epoch() + 1,
            Some(*state.head()),
            T,
            state_hash,
            action,
        )
        .unwrap()
        .sequence(&self.sequencer)
    }

    fn ordered(&self, state: &GroupState, by: &Device, action: GroupAction) -> GroupChange {
        state
            .change(by, action, T)
            .unwrap()
            .sequence(&self.sequencer)
    }
}

fn addresses(state: &GroupState) -> Vec<String> {
    state.members().map(|m| m.address.to_string()).collect()
}

#[test]
fn members_change_the_group_and_everyone_checks() {
    let w = world();
    let g0 = w.group();
    assert_eq!(g0.epoch(), 0);
    assert_eq!(g0.title(), "Suppliers");
    assert_eq!(
        addresses(&g0),
        [
            "alice@one.example",
            "bob@two.example",
            "carol@three.example"
        ]
    );
    assert_eq!(g0.role(w.alice.address()), Some(GroupRole::Admin));
    assert_eq!(g0.role(w.bob.address()), Some(GroupRole::Member));

    let add = w.ordered(
        &g0,
        &w.carol.device,
        GroupAction::Add(vec![w.dave.member(GroupRole::Member)]),
    );
    let g1 = g0.apply(&add).unwrap();
    assert_eq!((g1.epoch(), g1.len()), (1, 4));
    assert_eq!(g1.head(), add.hash());
    assert_eq!(&g1.state_hash(), add.state_hash());

    let promote = w.ordered(
        &g1,
        &w.alice.device,
        GroupAction::SetRole {
            member: w.bob.address().clone(),
            role: GroupRole::Admin,
        },
    );
    let g2 = g1.apply(&promote).unwrap();
    let remove = w.ordered(
        &g2,
        &w.bob.device,
        GroupAction::Remove(vec![w.dave.address().clone()]),
    );
    let g3 = g2.apply(&remove).unwrap();
    let title = w.ordered(&g3, &w.bob.device, GroupAction::SetTitle("Crates".into()));
    let g4 = g3.apply(&title).unwrap();
    let leave = w.ordered(&g4, &w.carol.device, GroupAction::Leave);
    let g5 = g4.apply(&leave).unwrap();
    assert_eq!(g5.epoch(), 5);
    assert_eq!(g5.title(), "Crates");
    assert_eq!(addresses(&g5), ["alice@one.example", "bob@two.example"]);

    // Every change survives its own encoding: a member receiving the bytes gets the same.
    for c in [&add, &promote, &remove, &title, &leave] {
        let again = GroupChange::decode(c.encoded().clone()).unwrap();
        assert_eq!(&again, c);
    }
}

#[test]
fn only_admins_govern() {
    let w = world();
    let g = w.group();
    let bob = &w.bob.device;
    for action in [
        GroupAction::Add(vec![w.dave.member(GroupRole::Member)]),
        GroupAction::Remove(vec![w.carol.address().clone()]),
        GroupAction::SetRole {
            member: w.bob.address().clone(),
            role: GroupRole::Admin,
        },
        GroupAction::SetTitle("mine now".into()),
    ] {
        // The author's own client refuses to make it...
        assert_eq!(g.change(bob, action.clone(), T), Err(GroupError::NotAdmin));
        // ...and a change made anyway (by a modified client) is refused by everyone.
        let forced = w.forced(&g, bob, [0; 32], &action);
        assert_eq!(g.apply(&forced), Err(GroupError::NotAdmin));
    }
    // A member may leave.
    let leave = w.ordered(&g, bob, GroupAction::Leave);
    assert_eq!(g.apply(&leave).unwrap().role(w.bob.address()), None);
}

#[test]
fn a_provider_cannot_add_anyone() {
    let mut w = world();
    let g = w.group();
    // The sequencer (a provider) signs whatever it likes, but holds no member's key. With
    // a device of its own, under an identity of its own, it is not a member...
    let eve_identity = IdentityKeyPair::generate(&mut w.rng);
    let eve = device_of(&mut w.rng, &eve_identity, "eve@one.example");
    let eve_admin = GroupAction::Add(vec![GroupMember {
        address: eve.address().clone(),
        identity: eve_identity.public(),
        role: GroupRole::Admin,
    }]);
    let inject = w.forced(&g, &eve, [0; 32], &eve_admin);
    assert_eq!(
        g.apply(&inject),
        Err(GroupError::NotMember(eve.address().clone()))
    );
    // ...and a device certificate it makes for alice's address is under the wrong
    // identity key.
    let fake_alice = device_of(&mut w.rng, &eve_identity, "alice@one.example");
    let forged = w.forced(&g, &fake_alice, [0; 32], &eve_admin);
    assert_eq!(g.apply(&forged), Err(GroupError::IdentityMismatch));
}

#[test]
fn changes_need_the_sequencer_and_only_it() {
    let mut w = world();
    let g = w.group();
    let change = g
        .change(&w.alice.device, GroupAction::SetTitle("x".into()), T)
        .unwrap();
    assert_eq!(g.apply(&change), Err(GroupError::NotSequenced));
    let other = ProviderKeyPair::generate(&mut w.rng);
    assert_eq!(
        g.apply(&change.sequence(&other)),
        Err(GroupError::BadSequencerSignature)
    );
    assert!(g.apply(&change.sequence(&w.sequencer)).is_ok());
    // The creating change too.
    let create =
        GroupState::create_change(&w.alice.device, [1; 16], String::new(), w.seq(), vec![], T)
            .unwrap();
    assert_eq!(GroupState::create(&create), Err(GroupError::NotSequenced));
    assert_eq!(
        GroupState::create(&create.sequence(&other)),
        Err(GroupError::BadSequencerSignature)
    );
}

#[test]
fn replayed_dropped_and_concurrent_changes_are_caught() {
    let w = world();
    let g0 = w.group();
    let c1 = w.ordered(&g0, &w.alice.device, GroupAction::SetTitle("one".into()));
    let g1 = g0.apply(&c1).unwrap();
    let c2 = w.ordered(&g1, &w.alice.device, GroupAction::SetTitle("two".into()));
    let g2 = g1.apply(&c2).unwrap();
    // A replayed old change.
    assert_eq!(
        g2.apply(&c1),
        Err(GroupError::Stale {
            epoch: 1,
            current: 2
        })
    );
    // A dropped change: the next one shows the gap.
    assert_eq!(
        g0.apply(&c2),
        Err(GroupError::Gap {
            epoch: 2,
            current: 0
        })
    );
    // Two admins change epoch 1 at once. The sequencer orders carol's first, so alice's
    // (built on epoch 0) conflicts; she makes it again on the new state.
    let carols = g0
        .change(
            &w.carol.device,
            GroupAction::Add(vec![w.dave.member(GroupRole::Member)]),
            T,
        )
        .unwrap();
    let alices = g0
        .change(
            &w.alice.device,
            GroupAction::Remove(vec![w.bob.address().clone()]),
            T,
        )
        .unwrap();
    let mut at_sequencer = g0.clone();
    let carols = at_sequencer.order(&carols, &w.sequencer).unwrap();
    at_sequencer = at_sequencer.apply(&carols).unwrap();
    assert_eq!(
        at_sequencer.order(&alices, &w.sequencer),
        Err(GroupError::Conflict)
    );
    let again = at_sequencer
        .change(
            &w.alice.device,
            GroupAction::Remove(vec![w.bob.address().clone()]),
            T,
        )
        .unwrap();
    let again = at_sequencer.order(&again, &w.sequencer).unwrap();
    // A sequencer that countersigns both changes of epoch 1 is caught by any member who
    // sees both: the two countersignatures are its proof of misbehaviour.
    let at_bob = g0.apply(&carols).unwrap();
    assert_eq!(
        at_bob.apply(&alices.sequence(&w.sequencer)),
        Err(GroupError::Equivocation)
    );
    // The same change twice is only stale.
    assert_eq!(
        at_bob.apply(&carols),
        Err(GroupError::Stale {
            epoch: 1,
            current: 1
        })
    );
    // Every member applies the same changes in the sequencer's order and ends up with
    // the same state.
    let mut states: Vec<GroupState> = (0..3).map(|_| g0.clone()).collect();
    for s in &mut states {
        *s = s.apply(&carols).unwrap().apply(&again).unwrap();
    }
    assert!(states.windows(2).all(|p| p[0] == p[1]));
    assert_eq!(
        addresses(&states[0]),
        [
            "alice@one.example",
            "carol@three.example",
            "dave@two.example"
        ]
    );
}

#[test]
fn tampering_is_refused() {
    let w = world();
    let g = w.group();
    let c = w.ordered(
        &g,
        &w.alice.device,
        GroupAction::Add(vec![w.dave.member(GroupRole::Member)]),
    );
    // Every single-bit flip of the encoding is refused (or decodes to the same change,
    // for bits that do not change the meaning: there are none in this encoding).
    let bytes = c.encoded().to_vec();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        let r = GroupChange::decode(Bytes::from(b)).and_then(|c| g.apply(&c));
        assert!(r.is_err(), "flipping byte {i} was accepted");
    }
    // A member that lies about the resulting state is caught.
    let lie = w.forced(
        &g,
        &w.alice.device,
        [7; 32],
        &GroupAction::SetTitle("t".into()),
    );
    assert_eq!(g.apply(&lie), Err(GroupError::StateMismatch));
    // A change for another group.
    let other = GroupState::create(
        &GroupState::create_change(&w.bob.device, [2; 16], String::new(), w.seq(), vec![], T)
            .unwrap()
            .sequence(&w.sequencer),
    )
    .unwrap();
    let elsewhere = w.ordered(&other, &w.bob.device, GroupAction::SetTitle("t".into()));
    assert_eq!(g.apply(&elsewhere), Err(GroupError::WrongGroup));
}

#[test]
fn the_group_always_keeps_an_admin() {
    let w = world();
    let g = w.group();
    let demote_carol = w.ordered(
        &g,
        &w.alice.device,
        GroupAction::SetRole {
            member: w.carol.address().clone(),
            role: GroupRole::Member,
        },
    );
    let g = g.apply(&demote_carol).unwrap();
    // alice is now the only admin.
    assert_eq!(
        g.change(&w.alice.device, GroupAction::Leave, T),
        Err(GroupError::NoAdminLeft)
    );
    assert_eq!(
        g.change(
            &w.alice.device,
            GroupAction::SetRole {
                member: w.alice.address().clone(),
                role: GroupRole::Member
            },
            T
        ),
        Err(GroupError::NoAdminLeft)
    );
    assert_eq!(
        g.change(
            &w.alice.device,
            GroupAction::Remove(vec![w.alice.address().clone()]),
            T
        ),
        Err(GroupError::InvalidChange(
            "an author leaves, it does not remove itself"
        ))
    );
    for (action, err) in [
        (
            GroupAction::Add(vec![w.bob.member(GroupRole::Member)]),
            GroupError::AlreadyMember(w.bob.address().clone()),
        ),
        (
            GroupAction::Remove(vec![w.dave.address().clone()]),
            GroupError::NoSuchMember(w.dave.address().clone()),
        ),
        (
            GroupAction::Add(vec![
                w.dave.member(GroupRole::Member),
                w.dave.member(GroupRole::Admin),
            ]),
            GroupError::DuplicateMember(w.dave.address().clone()),
        ),
        (
            GroupAction::Add(vec![]),
            GroupError::InvalidChange("add names no member"),
        ),
    ] {
        assert_eq!(g.change(&w.alice.device, action, T), Err(err));
    }
}

#[test]
fn groups_grow_to_their_limit_and_no_further() {
    let mut w = world();
    let mut g = w.group();
    let mut n = g.len();
    let mut next = 0usize;
    while n < MAX_GROUP_MEMBERS {
        let batch: Vec<GroupMember> = (0..MAX_GROUP_CHANGE_MEMBERS.min(MAX_GROUP_MEMBERS - n))
            .map(|_| {
                next += 1;
                GroupMember {
                    address: Address::parse(&format!("m{next}@four.example")).unwrap(),
                    identity: IdentityKeyPair::generate(&mut w.rng).public(),
                    role: GroupRole::Member,
                }
            })
            .collect();
        n += batch.len();
        let c = w.ordered(&g, &w.alice.device, GroupAction::Add(batch));
        assert!(c.encoded().len() <= MAX_GROUP_CHANGE_LEN);
        g = g.apply(&c).unwrap();
    }
    assert_eq!(g.len(), MAX_GROUP_MEMBERS);
    assert_eq!(
        g.change(
            &w.alice.device,
            GroupAction::Add(vec![w.dave.member(GroupRole::Member)]),
            T
        ),
        Err(GroupError::TooManyMembers {
            count: MAX_GROUP_MEMBERS + 1,
            max: MAX_GROUP_MEMBERS
        })
    );
    let snapshot = g.to_snapshot();
    assert!(snapshot.len() <= MAX_GROUP_SNAPSHOT_LEN);
    assert_eq!(GroupState::from_snapshot(&snapshot).unwrap(), g);
}

#[test]
fn a_new_member_joins_from_a_snapshot_it_can_check() {
    let w = world();
    let g0 = w.group();
    let add = w.ordered(
        &g0,
        &w.carol.device,
        GroupAction::Add(vec![w.dave.member(GroupRole::Member)]),
    );
    let at_members = g0.apply(&add).unwrap();
    let joined = GroupState::join(&g0.to_snapshot(), &add, w.dave.address()).unwrap();
    assert_eq!(joined, at_members);

    // A snapshot with a member the group does not have (a lying sender, or a provider
    // that swapped it) does not match what the countersigned change commits to.
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let eve = User::new(&mut rng, "eve@one.example");
    let mut wire = wire::GroupSnapshot::decode(g0.to_snapshot()).unwrap();
    wire.members.push(eve.member(GroupRole::Admin).to_wire());
    let lie = wire.encode_to_vec();
    assert_eq!(
        GroupState::join(&lie, &add, w.dave.address()),
        Err(GroupError::StateMismatch)
    );
    // An add that names someone else is no invitation for an existing member either.
    assert_eq!(
        GroupState::join(&g0.to_snapshot(), &add, w.alice.address()),
        Err(GroupError::InvalidChange(
            "the change does not add the joiner"
        ))
    );
    // A change that does not add the joiner is no invitation.
    let other = w.ordered(&g0, &w.alice.device, GroupAction::SetTitle("t".into()));
    assert_eq!(
        GroupState::join(&g0.to_snapshot(), &other, w.dave.address()),
        Err(GroupError::InvalidChange(
            "the change does not add the joiner"
        ))
    );
    // Snapshots out of order, or naming a member twice, are refused.
    let mut twice = wire::GroupSnapshot::decode(g0.to_snapshot()).unwrap();
    let first = twice.members[0].clone();
    twice.members.insert(0, first);
    assert!(matches!(
        GroupState::from_snapshot(&twice.encode_to_vec()),
        Err(GroupError::DuplicateMember(_))
    ));
    let mut reversed = wire::GroupSnapshot::decode(g0.to_snapshot()).unwrap();
    reversed.members.reverse();
    assert_eq!(
        GroupState::from_snapshot(&reversed.encode_to_vec()),
        Err(GroupError::InvalidField("members (not in address order)"))
    );
}

#[test]
fn expired_devices_cannot_change_the_group() {
    let w = world();
    let g = w.group();
    let late = UnixMillis(T.0 + 2 * YEAR);
    let c = g.change(&w.alice.device, GroupAction::SetTitle("late".into()), late);
    assert_eq!(c, Err(GroupError::CertificateNotValid));
}

#[test]
fn oversized_and_garbage_changes_are_refused() {
    assert_eq!(
        GroupChange::decode(Bytes::from(vec![0u8; MAX_GROUP_CHANGE_LEN + 1])),
        Err(GroupError::TooLarge {
            len: MAX_GROUP_CHANGE_LEN + 1,
            max: MAX_GROUP_CHANGE_LEN
        })
    );
    assert_eq!(
        GroupChange::decode(Bytes::from_static(b"\xff\xff\xff")),
        Err(GroupError::Decode)
    );
    assert_eq!(
        GroupState::from_snapshot(&vec![0u8; MAX_GROUP_SNAPSHOT_LEN + 1]),
        Err(GroupError::TooLarge {
            len: MAX_GROUP_SNAPSHOT_LEN + 1,
            max: MAX_GROUP_SNAPSHOT_LEN
        })
    );
}

#[test]
fn the_longest_addresses_fit_the_size_limits() {
    let mut w = world();
    let g = w.group();
    let domain = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    let longest = |i: usize| {
        let local = format!("{i:0>64}");
        Address::parse(&format!("{local}@{domain}")).unwrap()
    };
    assert_eq!(longest(0).as_str().len(), crate::limits::MAX_ADDRESS_LEN);
    let identity = IdentityKeyPair::generate(&mut w.rng).public();
    let batch: Vec<GroupMember> = (0..MAX_GROUP_CHANGE_MEMBERS)
        .map(|i| GroupMember {
            address: longest(i),
            identity,
            role: GroupRole::Admin,
        })
        .collect();
    let c = g
        .change(&w.alice.device, GroupAction::Add(batch), T)
        .unwrap();
    assert!(c.sequence(&w.sequencer).encoded().len() <= MAX_GROUP_CHANGE_LEN);

    let mut full = g.clone();
    full.members = (0..MAX_GROUP_MEMBERS)
        .map(|i| (longest(i), (identity, GroupRole::Admin)))
        .collect();
    full.title = "t".repeat(MAX_GROUP_TITLE_LEN);
    full = full.hashed();
    let snapshot = full.to_snapshot();
    assert!(
        snapshot.len() <= MAX_GROUP_SNAPSHOT_LEN,
        "{}",
        snapshot.len()
    );
    assert_eq!(GroupState::from_snapshot(&snapshot).unwrap(), full);
}

// ---------------------------------------------------------------------------------------
// Group messages (SPEC.md 19).

use crate::envelope::{Content, MessageId, Text};
use crate::limits::MAX_GROUP_SKIP;

fn text(s: &str) -> Content {
    Content::Text(Text::plain(s))
}

fn body(opened: &GroupOpened) -> String {
    match &opened.content {
        Content::Text(t) => t.body.clone(),
        other => panic!("not text: {other:?}"),
    }
}

/// alice, bob and carol in a group; each holds a receiver with alice's chain.
struct Chat {
    w: World,
    state: GroupState,
    alice: GroupSender,
    at_bob: GroupReceiver,
    at_carol: GroupReceiver,
}

fn chat() -> Chat {
    let mut w = world();
    let state = w.group();
    let alice = GroupSender::new(&state, &w.alice.device, 1, &mut w.rng).unwrap();
    let mut at_bob = GroupReceiver::new(state.id());
    let mut at_carol = GroupReceiver::new(state.id());
    // The sender key travels over the end-to-end sessions, as bytes.
    let bytes = alice.sender_key().encode();
    let key = SenderKey::decode(&bytes).unwrap();
    let from = w.alice.device.certificate();
    assert!(at_bob.add_sender_key(&state, from, &key).unwrap());
    assert!(at_carol.add_sender_key(&state, from, &key).unwrap());
    Chat {
        w,
        state,
        alice,
        at_bob,
        at_carol,
    }
}

impl Chat {
    fn send(&mut self, s: &str) -> Bytes {
        let id = MessageId::random(&mut self.w.rng);
        self.alice
            .seal(&self.w.alice.device, &self.state, &text(s), id, T)
            .unwrap()
    }
}

fn open(
    r: &mut GroupReceiver,
    state: &GroupState,
    bytes: &Bytes,
    from: &Device,
) -> Result<GroupOpened, GroupMessageError> {
    r.open(
        state,
        &GroupEnvelope::decode(bytes.clone())?,
        from.certificate(),
    )
}

#[test]
fn one_group_message_is_opened_by_every_member() {
    let mut c = chat();
    let bytes = c.send("trucks leave at six");
    let at_bob = open(&mut c.at_bob, &c.state, &bytes, &c.w.alice.device).unwrap();
    let at_carol = open(&mut c.at_carol, &c.state, &bytes, &c.w.alice.device).unwrap();
    assert_eq!(at_bob, at_carol);
    assert_eq!(body(&at_bob), "trucks leave at six");
    assert_eq!(&at_bob.sender, c.w.alice.address());
    assert_eq!(at_bob.sender_identity, c.w.alice.identity.public());
    // A second delivery of the same bytes is a duplicate, and changes nothing.
    assert_eq!(
        open(&mut c.at_bob, &c.state, &bytes, &c.w.alice.device),
        Err(GroupMessageError::Duplicate)
    );
    // The key is not in the Debug output.
    let shown = format!("{:?}", c.alice.sender_key());
    let key_hex: String = c
        .alice
        .sender_key()
        .chain_key
        .expose()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!shown.contains(&key_hex) && !shown.contains("chain_key"));
}

#[test]
fn out_of_order_messages_open_once_each_within_the_bounds() {
    let mut c = chat();
    let msgs: Vec<Bytes> = (0..6).map(|i| c.send(&format!("m{i}"))).collect();
    for i in [3, 1, 0, 5, 2, 4] {
        let o = open(&mut c.at_bob, &c.state, &msgs[i], &c.w.alice.device).unwrap();
        assert_eq!(body(&o), format!("m{i}"));
    }
    assert_eq!(c.at_bob.skipped_keys(), 0);
    for m in &msgs {
        assert_eq!(
            open(&mut c.at_bob, &c.state, m, &c.w.alice.device),
            Err(GroupMessageError::Duplicate)
        );
    }
    // A message beyond the skip bound is refused, and the chain is where it was.
    for _ in 0..MAX_GROUP_SKIP + 1 {
        c.send("lost");
    }
    let far = c.send("too far");
    assert_eq!(
        open(&mut c.at_carol, &c.state, &far, &c.w.alice.device).map(|_| ()),
        Err(GroupMessageError::TooFarAhead {
            max: MAX_GROUP_SKIP
        })
    );
    assert_eq!(c.at_carol.skipped_keys(), 0);
    assert_eq!(
        body(&open(&mut c.at_carol, &c.state, &msgs[0], &c.w.alice.device).unwrap()),
        "m0"
    );
}

#[test]
fn bad_group_messages_are_refused_and_change_nothing() {
    let mut c = chat();
    let bytes = c.send("hello");
    // Every single-bit flip is refused.
    let raw = bytes.to_vec();
    for i in 0..raw.len() {
        let mut b = raw.clone();
        b[i] ^= 0x01;
        let r = open(&mut c.at_bob, &c.state, &Bytes::from(b), &c.w.alice.device);
        assert!(r.is_err(), "flipping byte {i} was accepted");
    }
    // Another device's certificate.
    assert_eq!(
        open(&mut c.at_bob, &c.state, &bytes, &c.w.bob.device),
        Err(GroupMessageError::SenderMismatch)
    );
    // A receiver without alice's chain.
    let mut fresh = GroupReceiver::new(c.state.id());
    assert_eq!(
        open(&mut fresh, &c.state, &bytes, &c.w.alice.device),
        Err(GroupMessageError::UnknownSenderKey)
    );
    // None of that moved the chain: the message still opens.
    assert_eq!(
        body(&open(&mut c.at_bob, &c.state, &bytes, &c.w.alice.device).unwrap()),
        "hello"
    );
    // A sender at a later epoch than the receiver: the receiver misses changes.
    let g1 = c
        .state
        .apply(&c.w.ordered(
            &c.state,
            &c.w.alice.device,
            GroupAction::SetTitle("t".into()),
        ))
        .unwrap();
    let id = MessageId::random(&mut c.w.rng);
    let ahead = c
        .alice
        .seal(&c.w.alice.device, &g1, &text("ahead"), id, T)
        .unwrap();
    assert_eq!(
        open(&mut c.at_carol, &c.state, &ahead, &c.w.alice.device),
        Err(GroupMessageError::Gap {
            epoch: 1,
            current: 0
        })
    );
    assert_eq!(
        body(&open(&mut c.at_carol, &g1, &ahead, &c.w.alice.device).unwrap()),
        "ahead"
    );
    // Sender keys must come from their own device, for a member.
    let key = c.alice.sender_key().clone();
    assert_eq!(
        c.at_carol
            .add_sender_key(&c.state, c.w.bob.device.certificate(), &key),
        Err(GroupMessageError::SenderMismatch)
    );
}

#[test]
fn a_removed_member_cannot_read_what_follows() {
    let mut c = chat();
    let before = c.send("before");
    assert_eq!(
        body(&open(&mut c.at_bob, &c.state, &before, &c.w.alice.device).unwrap()),
        "before"
    );
    // carol removes bob. Everyone applies the change; bob's own state says he is out.
    let removal = c.w.ordered(
        &c.state,
        &c.w.carol.device,
        GroupAction::Remove(vec![c.w.bob.address().clone()]),
    );
    let g1 = c.state.apply(&removal).unwrap();
    assert_eq!(g1.rekey_epoch(), 1);
    // alice's chain predates the removal: her client makes a new one before sending...
    assert!(c.alice.needs_new_chain(&g1));
    let id = MessageId::random(&mut c.w.rng);
    assert_eq!(
        c.alice.seal(&c.w.alice.device, &g1, &text("x"), id, T),
        Err(GroupMessageError::StaleSenderKey)
    );
    let mut alice2 = GroupSender::new(&g1, &c.w.alice.device, 2, &mut c.w.rng).unwrap();
    // ...and hands it to the remaining members only.
    assert!(
        c.at_carol
            .add_sender_key(&g1, c.w.alice.device.certificate(), alice2.sender_key())
            .unwrap()
    );
    let id = MessageId::random(&mut c.w.rng);
    let after = alice2
        .seal(&c.w.alice.device, &g1, &text("after"), id, T)
        .unwrap();
    assert_eq!(
        body(&open(&mut c.at_carol, &g1, &after, &c.w.alice.device).unwrap()),
        "after"
    );
    // bob, with everything he really holds (alice's old chain, the old state or the new
    // one), cannot open it.
    assert_eq!(
        open(&mut c.at_bob, &c.state, &after, &c.w.alice.device),
        Err(GroupMessageError::Gap {
            epoch: 1,
            current: 0
        })
    );
    assert_eq!(
        open(&mut c.at_bob, &g1, &after, &c.w.alice.device),
        Err(GroupMessageError::UnknownSenderKey)
    );
    // A sender that keeps its old chain after the removal (a modified client) is
    // refused by the remaining members, so its mistake cannot go unnoticed.
    let mut lazy = GroupSender::from_sender_key(c.alice.sender_key().clone());
    lazy.key.epoch = 1; // pretend, to get past the sender-side check
    let id = MessageId::random(&mut c.w.rng);
    let leaked = lazy
        .seal(&c.w.alice.device, &g1, &text("leak"), id, T)
        .unwrap();
    assert_eq!(
        open(&mut c.at_carol, &g1, &leaked, &c.w.alice.device),
        Err(GroupMessageError::StaleSenderKey)
    );
    // A removed member's own messages have no key at the others once forgotten, and are
    // refused anyway: it is not a member.
    let mut bobs = GroupSender::new(&c.state, &c.w.bob.device, 1, &mut c.w.rng).unwrap();
    c.at_carol
        .add_sender_key(&c.state, c.w.bob.device.certificate(), bobs.sender_key())
        .unwrap();
    let id = MessageId::random(&mut c.w.rng);
    let from_bob = bobs
        .seal(&c.w.bob.device, &c.state, &text("still here?"), id, T)
        .unwrap();
    assert_eq!(
        open(&mut c.at_carol, &g1, &from_bob, &c.w.bob.device),
        Err(GroupMessageError::NotMember(c.w.bob.address().clone()))
    );
}

#[test]
fn a_new_member_cannot_read_what_came_before() {
    let mut c = chat();
    let old = c.send("before dave");
    // carol adds dave; alice hands dave her chain at its current position.
    let add = c.w.ordered(
        &c.state,
        &c.w.carol.device,
        GroupAction::Add(vec![c.w.dave.member(GroupRole::Member)]),
    );
    let at_dave_state = GroupState::join(&c.state.to_snapshot(), &add, c.w.dave.address()).unwrap();
    let g1 = c.state.apply(&add).unwrap();
    let mut at_dave = GroupReceiver::new(g1.id());
    at_dave
        .add_sender_key(
            &at_dave_state,
            c.w.alice.device.certificate(),
            c.alice.sender_key(),
        )
        .unwrap();
    let id = MessageId::random(&mut c.w.rng);
    let new = c
        .alice
        .seal(&c.w.alice.device, &g1, &text("welcome dave"), id, T)
        .unwrap();
    assert_eq!(
        body(&open(&mut at_dave, &at_dave_state, &new, &c.w.alice.device).unwrap()),
        "welcome dave"
    );
    // The earlier message's position is behind the chain he was given: no key for it.
    assert_eq!(
        open(&mut at_dave, &at_dave_state, &old, &c.w.alice.device),
        Err(GroupMessageError::Duplicate)
    );
}

#[test]
fn sender_keys_travel_as_content() {
    let c = chat();
    let content = Content::GroupSenderKey(Box::new(c.alice.sender_key().clone()));
    let padded = content.encode_padded().unwrap();
    assert_eq!(padded.len() % crate::limits::PADDING_BLOCK, 0);
    assert_eq!(Content::decode(&padded).unwrap(), content);
    // A sender key that breaks the rules of SPEC.md 19.2 makes the content invalid.
    let mut bad = c.alice.sender_key().to_wire();
    bad.chain_key = Bytes::from_static(&[1; 31]);
    let wire = wire::Content {
        body: Some(wire::content::Body::GroupSenderKey(bad)),
        sent_to: String::new(),
        padding: Bytes::new(),
    };
    assert_eq!(
        Content::decode(&wire.encode_to_vec()),
        Err(crate::envelope::ContentError::InvalidField(
            "group_sender_key"
        ))
    );
    // The key is not in the content's Debug output either.
    assert!(!format!("{content:?}").contains("chain_key"));
}
