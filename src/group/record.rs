//! What a device keeps of its groups between runs (SPEC.md 20.5): each group's state,
//! its own sending chain, the key hand-outs made, the other members' chains, and sender
//! keys waiting for their group. Kept in the [`Account`](crate::session::Account), so the
//! account's encrypted state blob carries it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::{GroupId, GroupReceiver, GroupSender, GroupState, SenderKey};
use crate::address::Address;
use crate::identity::DeviceCertificate;
use crate::limits::MAX_PENDING_GROUP_ITEMS;
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
    /// Users handed the current chain's key.
    pub(crate) keyed: BTreeSet<Address>,
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
            keyed: BTreeSet::new(),
        }
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
                    keyed: addresses(&g.keyed),
                    chains,
                    skipped,
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
            let record = GroupRecord {
                receiver: GroupReceiver::from_state(id, &r.chains, &r.skipped)?,
                sender: sender.map(GroupSender::from_sender_key),
                chain_start: start.map(|k| (k, members)),
                keyed: parse_addresses(&r.keyed, "groups: keyed")?,
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
