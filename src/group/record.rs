//! What a device keeps of its groups between runs (SPEC.md 20.5): each group's state,
//! its own sending chain, the key hand-outs made, the other members' chains, and sender
//! keys waiting for their group. Kept in the [`Account`](crate::session::Account), so the
//! account's encrypted state blob carries it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::{GroupError, GroupId, GroupReceiver, GroupSender, GroupState, SenderKey};
use crate::address::Address;
use crate::identity::{DeviceCertificate, DeviceId};
use crate::limits::{MAX_DEVICES_PER_USER, MAX_PENDING_GROUP_ITEMS};
use crate::wire;

/// One group at this device.
#[derive(Clone, Debug)]
pub(crate) struct GroupRecord {
    pub(crate) state: GroupState,
    /// This device's sending chain.
    pub(crate) sender: Option<GroupSender>,
    /// The chain's key at its first position and the members when it was made: they
    /// get the key from there (a key sent again must open every message sent on the
    /// chain before it); users added later get it from the current position.
    pub(crate) chain_start: Option<(SenderKey, BTreeSet<Address>)>,
    /// Users handed the current chain's key, with their devices listed then: a device
    /// listed later, or one the key could not reach, gets it with the next message.
    pub(crate) keyed: BTreeMap<Address, BTreeSet<DeviceId>>,
    /// Users not among `chain_start`'s members, with the position at which the current
    /// chain was first handed to them: a key sent to them again starts there (derived
    /// from the first position), so their devices reached only later can still open
    /// every message sent to them on the chain (SPEC.md 19.2).
    pub(crate) late: BTreeMap<Address, u32>,
    /// The other member devices' chains.
    pub(crate) receiver: GroupReceiver,
}

impl GroupRecord {
    pub(crate) fn new(state: GroupState) -> Self {
        Self {
            receiver: GroupReceiver::new(state.id()),
            state,
            sender: None,
            chain_start: None,
            keyed: BTreeMap::new(),
            late: BTreeMap::new(),
        }
    }
}

/// A group state that one device of a user hands to another device of the same user,
/// linked after the group was made (SPEC.md 7.6, 20.5). Trusted as the user's own word:
/// it is accepted only over the session with a device of the receiving device's own user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSync {
    state: GroupState,
}

impl GroupSync {
    /// The sync of `state` (with its last removal epoch).
    pub fn new(state: &GroupState) -> Self {
        Self {
            state: state.clone(),
        }
    }

    /// The state it carries.
    pub fn state(&self) -> &GroupState {
        &self.state
    }

    pub(crate) fn to_wire(&self) -> wire::GroupSync {
        wire::GroupSync {
            snapshot: self.state.to_snapshot(),
            rekey_epoch: self.state.rekey_epoch(),
        }
    }

    /// The checks of SPEC.md 7.6: the snapshot's (§18.6), and a last removal epoch at
    /// most its epoch.
    pub(crate) fn from_wire(w: &wire::GroupSync) -> Result<Self, GroupError> {
        let state = GroupState::from_snapshot(&w.snapshot)?;
        if w.rekey_epoch > state.epoch() {
            return Err(GroupError::InvalidField("rekey_epoch"));
        }
        Ok(Self {
            state: state.with_rekey_epoch(w.rekey_epoch),
        })
    }
}

/// Every group of this device, and the sender keys waiting for theirs.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeviceGroups {
    pub(crate) records: BTreeMap<GroupId, GroupRecord>,
    pub(crate) stash: VecDeque<(DeviceCertificate, SenderKey)>,
}

fn secret(bytes: &[u8]) -> Bytes {
    Bytes::from_owner(zeroize::Zeroizing::new(bytes.to_vec()))
}

fn addresses(set: &BTreeSet<Address>) -> Vec<String> {
    set.iter().map(|a| a.as_str().to_owned()).collect()
}

fn parse_addresses(list: &[String], what: &'static str) -> Result<BTreeSet<Address>, &'static str> {
    let mut out = BTreeSet::new();
    for a in list {
        if !out.insert(Address::parse_canonical(a).map_err(|_| what)?) {
            return Err(what);
        }
    }
    Ok(out)
}

fn parse_keyed(
    list: &[wire::GroupKeyedState],
) -> Result<BTreeMap<Address, BTreeSet<DeviceId>>, &'static str> {
    let mut out = BTreeMap::new();
    for k in list {
        let a = Address::parse_canonical(&k.address)
            .map_err(|_| "groups: keyed: an invalid address")?;
        let mut devices = BTreeSet::new();
        for d in &k.devices {
            let d = DeviceId::from_slice(d).ok_or("groups: keyed: a device id is not 16 bytes")?;
            if !devices.insert(d) {
                return Err("groups: keyed: a device listed twice");
            }
        }
        if devices.len() > MAX_DEVICES_PER_USER || out.insert(a, devices).is_some() {
            return Err("groups: keyed: an address listed twice, or too many devices");
        }
    }
    Ok(out)
}

/// The `late` positions: canonical addresses in order, none among the chain's first
/// members, each between the chain's first and current positions; none without a chain.
fn parse_late(
    list: &[wire::GroupLateKeyedState],
    chain: Option<(&SenderKey, &SenderKey)>,
    start_members: &BTreeSet<Address>,
) -> Result<BTreeMap<Address, u32>, &'static str> {
    let mut out = BTreeMap::new();
    for l in list {
        let a =
            Address::parse_canonical(&l.address).map_err(|_| "groups: late: an invalid address")?;
        let Some((start, sender)) = chain else {
            return Err("groups: late: positions without a sending chain");
        };
        if !(start.iteration()..=sender.iteration()).contains(&l.iteration)
            || start_members.contains(&a)
        {
            return Err("groups: late: a position outside the chain, or a first member");
        }
        if out.last_key_value().is_some_and(|(last, _)| last >= &a) {
            return Err("groups: late: addresses out of order or listed twice");
        }
        out.insert(a, l.iteration);
    }
    Ok(out)
}

impl DeviceGroups {
    /// The persisted form.
    pub(crate) fn to_state(
        &self,
    ) -> (
        Vec<wire::GroupRecordState>,
        Vec<wire::StashedSenderKeyState>,
    ) {
        let records = self
            .records
            .values()
            .map(|g| {
                let (chains, skipped) = g.receiver.to_state();
                wire::GroupRecordState {
                    snapshot: g.state.to_snapshot(),
                    rekey_epoch: g.state.rekey_epoch(),
                    sender_key: g
                        .sender
                        .as_ref()
                        .map_or_else(Bytes::new, |s| secret(&s.sender_key().encode())),
                    chain_start_key: g
                        .chain_start
                        .as_ref()
                        .map_or_else(Bytes::new, |(k, _)| secret(&k.encode())),
                    chain_start_members: g
                        .chain_start
                        .as_ref()
                        .map_or_else(Vec::new, |(_, m)| addresses(m)),
                    keyed: g
                        .keyed
                        .iter()
                        .map(|(a, ds)| wire::GroupKeyedState {
                            address: a.as_str().to_owned(),
                            devices: ds
                                .iter()
                                .map(|d| Bytes::copy_from_slice(d.as_bytes()))
                                .collect(),
                        })
                        .collect(),
                    chains,
                    skipped,
                    late: g
                        .late
                        .iter()
                        .map(|(a, i)| wire::GroupLateKeyedState {
                            address: a.as_str().to_owned(),
                            iteration: *i,
                        })
                        .collect(),
                }
            })
            .collect();
        let stash = self
            .stash
            .iter()
            .map(|(cert, key)| wire::StashedSenderKeyState {
                certificate: cert.encoded().clone(),
                sender_key: secret(&key.encode()),
            })
            .collect();
        (records, stash)
    }

    /// Rebuilds the groups of the device `me` from the persisted form; the error names
    /// the defect.
    pub(crate) fn from_state(
        records: &[wire::GroupRecordState],
        stash: &[wire::StashedSenderKeyState],
        me: &DeviceCertificate,
    ) -> Result<Self, &'static str> {
        let mut out = Self::default();
        for r in records {
            let state = GroupState::from_snapshot(&r.snapshot)
                .map_err(|_| "groups: a snapshot does not decode")?;
            if r.rekey_epoch > state.epoch() {
                return Err("groups: rekey_epoch after the state's epoch");
            }
            let state = state.with_rekey_epoch(r.rekey_epoch);
            let id = state.id();
            let own_key =
                |bytes: &Bytes, what: &'static str| -> Result<Option<SenderKey>, &'static str> {
                    if bytes.is_empty() {
                        return Ok(None);
                    }
                    let k = SenderKey::decode(bytes).map_err(|_| what)?;
                    if k.group() != id
                        || k.sender() != me.address()
                        || k.sender_device() != me.device_id()
                    {
                        return Err(what);
                    }
                    Ok(Some(k))
                };
            let sender = own_key(
                &r.sender_key,
                "groups: sender_key is not this device's chain in the group",
            )?;
            let start = own_key(
                &r.chain_start_key,
                "groups: chain_start_key is not this device's chain in the group",
            )?;
            if sender.is_some() != start.is_some()
                || sender.as_ref().zip(start.as_ref()).is_some_and(|(s, f)| {
                    s.chain_id() != f.chain_id() || s.iteration() < f.iteration()
                })
            {
                return Err("groups: sender_key and chain_start_key are not one chain");
            }
            let members = parse_addresses(&r.chain_start_members, "groups: chain_start_members")?;
            let late = parse_late(&r.late, start.as_ref().zip(sender.as_ref()), &members)?;
            let record = GroupRecord {
                receiver: GroupReceiver::from_state(id, &r.chains, &r.skipped)?,
                sender: sender.map(GroupSender::from_sender_key),
                chain_start: start.map(|k| (k, members)),
                keyed: parse_keyed(&r.keyed)?,
                late,
                state,
            };
            if out.records.insert(id, record).is_some() {
                return Err("groups: a group listed twice");
            }
        }
        if stash.len() > MAX_PENDING_GROUP_ITEMS {
            return Err("stashed_sender_keys: more than MAX_PENDING_GROUP_ITEMS");
        }
        for s in stash {
            let cert = DeviceCertificate::decode(Bytes::copy_from_slice(&s.certificate))
                .map_err(|_| "stashed_sender_keys: a certificate does not verify")?;
            let key = SenderKey::decode(&s.sender_key)
                .map_err(|_| "stashed_sender_keys: a sender key does not decode")?;
            if key.sender() != cert.address() || key.sender_device() != cert.device_id() {
                return Err("stashed_sender_keys: a key of another device than its certificate");
            }
            out.stash.push_back((cert, key));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::crypto::Secret;
    use crate::envelope::{Content, MessageId, Text};
    use crate::group::{
        GroupAction, GroupEnvelope, GroupMember, GroupMessageError, GroupRole, Sequencer,
    };
    use crate::identity::ProviderKeyPair;
    use crate::session::Account;
    use crate::session::tests::user;
    use crate::time::UnixMillis;

    const NOW: UnixMillis = UnixMillis(1_760_000_000_000);

    fn text(s: &str) -> Content {
        Content::Text(Text::plain(s))
    }

    fn reload(a: &Account, rng: &mut ChaCha20Rng) -> Account {
        let key = Secret::new([7; 32]);
        Account::restore(&a.save(&key, rng), &key).unwrap()
    }

    /// A stored `late` list is refused unless every position lies on the chain between
    /// its first and current positions, for a user not among the first members, each
    /// user once and in order, and only with a chain.
    #[test]
    fn late_positions_are_checked_on_restore() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let alice = user(&mut rng, "alice@one.example", 1).accounts.remove(0);
        let seq = ProviderKeyPair::generate(&mut rng);
        let create = GroupState::create_change(
            alice.device(),
            [2; 16],
            "g".into(),
            Sequencer {
                domain: crate::address::Domain::parse("one.example").unwrap(),
                key: seq.public(),
            },
            Vec::new(),
            NOW,
        )
        .unwrap();
        let state = GroupState::create(&create.sequence(&seq)).unwrap();
        let mut sender = GroupSender::new(&state, alice.device(), 1, &mut rng).unwrap();
        let start = sender.sender_key().clone();
        for i in 0..3 {
            let id = MessageId::from_bytes([i; 16]);
            sender
                .seal(alice.device(), &state, &text("m"), id, NOW)
                .unwrap();
        }
        let now = sender.sender_key().clone();
        let first: BTreeSet<Address> = state.members().map(|m| m.address).collect();
        let entry = |a: &str, iteration| wire::GroupLateKeyedState {
            address: a.to_owned(),
            iteration,
        };
        let chain = Some((&start, &now));
        let ok = [entry("bob@two.example", 3), entry("carol@two.example", 0)];
        assert_eq!(parse_late(&ok, chain, &first).unwrap().len(), 2);
        for bad in [
            vec![entry("bob@two.example", 4)],
            vec![entry("alice@one.example", 1)],
            vec![entry("carol@two.example", 1), entry("bob@two.example", 1)],
            vec![entry("bob@two.example", 1), entry("bob@two.example", 2)],
            vec![entry("Bob@two.example", 1)],
        ] {
            assert!(parse_late(&bad, chain, &first).is_err(), "{bad:?}");
        }
        assert!(parse_late(&ok[..1], None, &first).is_err());
        assert!(parse_late(&[], None, &first).unwrap().is_empty());
        // The sender's chain at a later position is the first position derived forward.
        assert_eq!(start.at_iteration(3).unwrap(), now);
        assert!(now.at_iteration(2).is_none());
    }

    /// A group of Alice and Bob whose state, chains, hand-outs and skipped keys survive a
    /// save and restore on both sides: the restored sender goes on where it was, the
    /// restored receiver opens what follows and what it skipped, and nothing it opened
    /// opens again.
    #[test]
    fn groups_survive_save_and_restore() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let mut alice = user(&mut rng, "alice@one.example", 1).accounts.remove(0);
        let bob_user = user(&mut rng, "bob@two.example", 1);
        let mut bob = bob_user.accounts.into_iter().next().unwrap();
        let seq = ProviderKeyPair::generate(&mut rng);
        let create = GroupState::create_change(
            alice.device(),
            [1; 16],
            "shop".into(),
            Sequencer {
                domain: crate::address::Domain::parse("one.example").unwrap(),
                key: seq.public(),
            },
            vec![GroupMember {
                address: bob_user.list.address().clone(),
                identity: *bob_user.list.identity_key(),
                role: GroupRole::Member,
            }],
            NOW,
        )
        .unwrap();
        let state = GroupState::create(&create.sequence(&seq)).unwrap();
        // A removal-free title change, so that the state is past epoch 0.
        let change = state
            .change(alice.device(), GroupAction::SetTitle("shop 2".into()), NOW)
            .unwrap();
        let state = state.apply(&change.sequence(&seq)).unwrap();
        let mut sender = GroupSender::new(&state, alice.device(), 1, &mut rng).unwrap();
        let start = sender.sender_key().clone();
        let mut sealed = Vec::new();
        for i in 0..4 {
            let id = MessageId::from_bytes([i; 16]);
            sealed.push(
                GroupEnvelope::decode(
                    sender
                        .seal(alice.device(), &state, &text(&format!("m{i}")), id, NOW)
                        .unwrap(),
                )
                .unwrap(),
            );
        }
        let mut record = GroupRecord::new(state.clone());
        record.sender = Some(sender);
        record.chain_start = Some((start.clone(), state.members().map(|m| m.address).collect()));
        record.keyed.insert(
            bob_user.list.address().clone(),
            bob.own_device_list().device_ids().collect(),
        );
        let carol = Address::parse("carol@three.example").unwrap();
        record.late.insert(carol.clone(), 2);
        alice.groups.records.insert(state.id(), record);
        // Bob opens m3 (skipping m0..m2), then m1.
        let mut theirs = GroupRecord::new(state.clone());
        let cert = alice.device().certificate().clone();
        assert!(
            theirs
                .receiver
                .add_sender_key(&state, &cert, &start)
                .unwrap()
        );
        theirs.receiver.open(&state, &sealed[3], &cert).unwrap();
        theirs.receiver.open(&state, &sealed[1], &cert).unwrap();
        bob.groups.records.insert(state.id(), theirs);
        bob.groups.stash.push_back((cert.clone(), start.clone()));

        let mut alice = reload(&alice, &mut rng);
        let mut bob = reload(&bob, &mut rng);
        let mut a = alice.groups.records.remove(&state.id()).unwrap();
        assert_eq!(a.state, state);
        assert_eq!(a.state.head(), state.head());
        assert_eq!(a.chain_start.as_ref().unwrap().0, start);
        assert_eq!(a.keyed.len(), 1);
        assert_eq!(a.late, BTreeMap::from([(carol, 2)]));
        let next = a
            .sender
            .as_mut()
            .unwrap()
            .seal(
                alice.device(),
                &state,
                &text("m4"),
                MessageId::from_bytes([4; 16]),
                NOW,
            )
            .unwrap();
        let next = GroupEnvelope::decode(next).unwrap();
        assert_eq!(
            next.chain(),
            (1, 4),
            "the restored chain goes on at its position"
        );
        let b = bob.groups.records.get_mut(&state.id()).unwrap();
        assert_eq!(b.state, state);
        assert_eq!(bob.groups.stash.len(), 1);
        let b = bob.groups.records.get_mut(&state.id()).unwrap();
        assert_eq!(b.receiver.skipped_keys(), 2, "m0 and m2 were skipped");
        assert_eq!(
            b.receiver.open(&state, &sealed[1], &cert).unwrap_err(),
            GroupMessageError::Duplicate
        );
        assert_eq!(
            b.receiver.open(&state, &sealed[3], &cert).unwrap_err(),
            GroupMessageError::Duplicate
        );
        b.receiver.open(&state, &sealed[0], &cert).unwrap();
        b.receiver.open(&state, &sealed[2], &cert).unwrap();
        b.receiver.open(&state, &next, &cert).unwrap();
    }

    #[test]
    fn damaged_group_records_are_refused() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let alice = user(&mut rng, "alice@one.example", 1).accounts.remove(0);
        let me = alice.device().certificate();
        let bad = |r: wire::GroupRecordState| DeviceGroups::from_state(&[r], &[], me).unwrap_err();
        assert_eq!(
            bad(wire::GroupRecordState::default()),
            "groups: a snapshot does not decode"
        );
    }
}
