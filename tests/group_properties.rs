//! Property tests of groups (SPEC.md 18, 19).
//!
//! * Concurrent changes converge: several admins propose changes on whatever state they
//!   hold, in random interleavings; the sequencer orders what applies to its head and
//!   refuses the rest (`group_conflict`, or a rule of §18.4); members receive the ordered
//!   changes with random loss, duplication and reordering, hold what arrives early, and
//!   end with exactly the sequencer's state. Every refusal is a typed error and leaves the
//!   state as it was.
//! * Group messages under a hostile network: every message a receiver gets opens exactly
//!   once with the right text, or is refused as a `duplicate` (a copy, or a position
//!   whose key was dropped to the skip bound); nothing else fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kogge::UnixMillis;
use kogge::address::{Address, Domain};
use kogge::envelope::{Content, MessageId, Text};
use kogge::group::{
    GroupAction, GroupChange, GroupEnvelope, GroupError, GroupMember, GroupMessageError,
    GroupReceiver, GroupRole, GroupSender, GroupState, Sequencer,
};
use kogge::identity::{Device, DeviceKeyPair, IdentityKeyPair, ProviderKeyPair};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

const T: UnixMillis = UnixMillis(1_800_000_000_000);
const YEAR: u64 = 365 * 24 * 3600 * 1000;

struct User {
    identity: IdentityKeyPair,
    device: Device,
}

fn users(rng: &mut ChaCha20Rng, n: usize) -> Vec<User> {
    (0..n)
        .map(|i| {
            let identity = IdentityKeyPair::generate(rng);
            let device = Device::new(
                &identity,
                Address::parse(&format!("u{i}@p{}.example", i % 3)).unwrap(),
                DeviceKeyPair::generate(rng),
                UnixMillis(T.0 - YEAR),
                UnixMillis(T.0 + YEAR),
            )
            .unwrap();
            User { identity, device }
        })
        .collect()
}

fn member(u: &User, role: GroupRole) -> GroupMember {
    GroupMember {
        address: u.device.address().clone(),
        identity: u.identity.public(),
        role,
    }
}

/// A random change by user `who` on `state` (it may be one the rules refuse).
fn propose(rng: &mut ChaCha20Rng, us: &[User], state: &GroupState, who: usize) -> GroupAction {
    let other = rng.next_u32() as usize % us.len();
    let addr = us[other].device.address().clone();
    match rng.next_u32() % 5 {
        0 => GroupAction::Add(vec![member(&us[other], GroupRole::Member)]),
        1 => GroupAction::Remove(vec![addr]),
        2 => GroupAction::SetRole {
            member: addr.clone(),
            role: if state.role(&addr) == Some(GroupRole::Admin) {
                GroupRole::Member
            } else {
                GroupRole::Admin
            },
        },
        3 => GroupAction::SetTitle(format!("title by {who}")),
        _ => GroupAction::Leave,
    }
}

fn converge(seed: u64, rounds: usize, loss: u32, dup: u32) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let us = users(&mut rng, 6);
    let key = ProviderKeyPair::generate(&mut rng);
    let seq = Sequencer {
        domain: Domain::parse("p0.example").unwrap(),
        key: key.public(),
    };
    let others: Vec<GroupMember> = us[1..]
        .iter()
        .enumerate()
        .map(|(i, u)| {
            member(
                u,
                if i < 2 {
                    GroupRole::Admin
                } else {
                    GroupRole::Member
                },
            )
        })
        .collect();
    let create = GroupState::create_change(&us[0].device, [7; 16], "g".into(), seq, others, T)
        .unwrap()
        .sequence(&key);
    let genesis = GroupState::create(&create).unwrap();

    // The sequencer's state and log; each member's state, inbox and held changes.
    let mut head = genesis.clone();
    let mut log: Vec<GroupChange> = Vec::new();
    let mut views: Vec<GroupState> = vec![genesis.clone(); us.len()];
    let mut inbox: Vec<Vec<GroupChange>> = vec![Vec::new(); us.len()];
    let mut held: Vec<BTreeMap<u64, GroupChange>> = vec![BTreeMap::new(); us.len()];

    for _ in 0..rounds {
        // Some users propose on the state they hold (possibly behind the sequencer).
        let mut proposals = Vec::new();
        for who in 0..us.len() {
            if rng.next_u32() % 3 == 0 {
                let action = propose(&mut rng, &us, &views[who], who);
                match views[who].change(&us[who].device, action, T) {
                    Ok(c) => proposals.push(c),
                    // The author's own client refuses what the rules refuse; nothing
                    // changed.
                    Err(e) => assert!(!e.code().is_empty()),
                }
            }
        }
        // They reach the sequencer in random order; it orders what applies to its head.
        while !proposals.is_empty() {
            let c = proposals.swap_remove(rng.next_u32() as usize % proposals.len());
            let before = head.clone();
            match head.order(&c, &key) {
                Ok(ordered) => {
                    head = head.apply(&ordered).unwrap();
                    for b in &mut inbox {
                        b.push(ordered.clone());
                    }
                    log.push(ordered);
                }
                Err(e) => {
                    assert_eq!(head, before);
                    assert!(
                        matches!(
                            e,
                            GroupError::Conflict
                                | GroupError::Stale { .. }
                                | GroupError::NotMember(_)
                                | GroupError::NotAdmin
                                | GroupError::NoSuchMember(_)
                                | GroupError::AlreadyMember(_)
                                | GroupError::InvalidChange(_)
                                | GroupError::NoAdminLeft
                                | GroupError::StateMismatch
                        ),
                        "unexpected refusal {e:?}"
                    );
                }
            }
        }
        // The network: each member's inbox is delivered with loss, duplication and
        // reordering; what is lost is fetched again from the sequencer's log later.
        for i in 0..us.len() {
            let mut batch = std::mem::take(&mut inbox[i]);
            let mut out = Vec::new();
            for c in batch.drain(..) {
                if rng.next_u32() % 100 < loss {
                    continue;
                }
                if rng.next_u32() % 100 < dup {
                    out.push(c.clone());
                }
                out.push(c);
            }
            for j in (1..out.len()).rev() {
                out.swap(j, rng.next_u32() as usize % (j + 1));
            }
            for c in out {
                deliver(&mut views[i], &mut held[i], c);
            }
        }
    }
    // Something happened: in 12 rounds of 6 users proposing, some changes were ordered.
    assert!(!log.is_empty(), "no change was ever ordered");
    // Afterwards every member fetches what it missed from the sequencer's log, and all
    // hold the sequencer's state.
    for i in 0..us.len() {
        for c in &log {
            deliver(&mut views[i], &mut held[i], c.clone());
        }
        assert_eq!(views[i], head, "member {i} diverged");
        assert!(held[i].is_empty());
    }
}

/// Applies `c` to `view` if it is next, holds it if it is early, drops it if stale; then
/// applies held changes that became next.
fn deliver(view: &mut GroupState, held: &mut BTreeMap<u64, GroupChange>, c: GroupChange) {
    match view.apply(&c) {
        Ok(next) => *view = next,
        Err(GroupError::Gap { .. }) => {
            held.insert(c.epoch(), c);
        }
        Err(GroupError::Stale { .. }) => {}
        Err(e) => panic!("an ordered change was refused: {e:?}"),
    }
    while let Some(c) = held.remove(&(view.epoch() + 1)) {
        *view = view.apply(&c).unwrap();
    }
    held.retain(|e, _| *e > view.epoch());
}

fn messages(seed: u64, count: usize, loss: u32, dup: u32) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let us = users(&mut rng, 3);
    let key = ProviderKeyPair::generate(&mut rng);
    let seq = Sequencer {
        domain: Domain::parse("p0.example").unwrap(),
        key: key.public(),
    };
    let others = us[1..]
        .iter()
        .map(|u| member(u, GroupRole::Member))
        .collect();
    let create = GroupState::create_change(&us[0].device, [3; 16], "g".into(), seq, others, T)
        .unwrap()
        .sequence(&key);
    let state = GroupState::create(&create).unwrap();
    let mut sender = GroupSender::new(&state, &us[0].device, 1, &mut rng).unwrap();
    let mut receiver = GroupReceiver::new(state.id());
    receiver
        .add_sender_key(&state, us[0].device.certificate(), sender.sender_key())
        .unwrap();
    let mut wire: Vec<(String, Bytes)> = Vec::new();
    for n in 0..count {
        let text = format!("message {n}");
        let id = MessageId::random(&mut rng);
        let bytes = sender
            .seal(
                &us[0].device,
                &state,
                &Content::Text(Text::plain(text.clone())),
                id,
                T,
            )
            .unwrap();
        if rng.next_u32() % 100 >= loss {
            if rng.next_u32() % 100 < dup {
                wire.push((text.clone(), bytes.clone()));
            }
            wire.push((text, bytes));
        }
    }
    for j in (1..wire.len()).rev() {
        wire.swap(j, rng.next_u32() as usize % (j + 1));
    }
    let distinct: std::collections::HashSet<String> = wire.iter().map(|(t, _)| t.clone()).collect();
    let mut opened: HashMap<String, usize> = HashMap::new();
    for (text, bytes) in wire {
        let env = GroupEnvelope::decode(bytes).unwrap();
        match receiver.open(&state, &env, us[0].device.certificate()) {
            Ok(o) => {
                assert_eq!(o.content, Content::Text(Text::plain(text.clone())));
                *opened.entry(text).or_default() += 1;
            }
            Err(GroupMessageError::Duplicate) => {}
            Err(e) => panic!("unexpected refusal {e:?}"),
        }
    }
    assert!(opened.values().all(|n| *n == 1), "a message opened twice");
    assert_eq!(
        opened.len(),
        distinct.len(),
        "a message that arrived did not open"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn concurrent_changes_converge(seed in any::<u64>(), loss in 0u32..40, dup in 0u32..40) {
        converge(seed, 12, loss, dup);
    }

    #[test]
    fn group_messages_open_exactly_once(seed in any::<u64>(), loss in 0u32..50, dup in 0u32..50) {
        messages(seed, 120, loss, dup);
    }
}
