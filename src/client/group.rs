//! Groups at the device (SPEC.md section 20): the group states this device holds, its
//! sender chain per group and the other member devices' chains, the changes it asks
//! the sequencer to order, and the group items that wait for what they need.
//!
//! A group message is sent once: its sender key goes to every member over the pairwise
//! sessions first (as ordinary one-to-one messages), and the group envelope is handed
//! to the provider only once the provider has stored those, so a member's device
//! mostly gets the key before the message. A key that misses a member device (no
//! session could reach it) goes again with the next message, and in rounds of its own
//! with doubling waits until every listed member device has it. A group item that
//! arrives before what it needs (the change that made its epoch, the sender's key, the
//! group itself) waits, unacknowledged, and is tried again whenever a change applies or
//! a key arrives.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand_core::CryptoRng;

use super::{Client, ClientError, ClientEvent, RequestKind};
use crate::address::Address;
use crate::envelope::{Content, MessageId};
use crate::group::{
    GroupAction, GroupChange, GroupEnvelope, GroupError, GroupId, GroupMember, GroupMessageError,
    GroupRecord, GroupRole, GroupSender, GroupState, GroupSync, SenderKey, Sequencer,
};
use crate::identity::{DeviceCertificate, DeviceId};
use crate::limits::{
    GROUP_KEY_RETRY_MAX_MS, GROUP_KEY_RETRY_MIN_MS, MAX_CLIENT_PENDING, MAX_PENDING_GROUP_ITEMS,
};
use crate::protocol::ProtocolError;
use crate::time::UnixMillis;
use crate::wire;

/// What a group's sending waits on at this device (not persisted: like unsubmitted
/// one-to-one messages, SPEC.md 16.12).
#[derive(Default)]
pub(super) struct Outbox {
    /// The sender-key messages the provider has not stored yet (by local key), each
    /// with the group messages sealed on its chain while it was outstanding: a device it
    /// cannot reach cannot read them.
    key_msgs: BTreeMap<u64, Vec<MessageId>>,
    /// Sealed group envelopes waiting for `key_msgs` to be stored.
    queued: VecDeque<(MessageId, Bytes, Vec<String>)>,
}

/// What became of a one-to-one message (perhaps a sender key) of this client.
pub(super) enum Settled {
    /// Stored by the provider (local key).
    Stored(u64),
    /// Given up on (local key, recipient).
    Failed(u64, Address),
    /// Sealed without a copy for this device (no session possible).
    Skipped(u64, Address, DeviceId),
}

/// A group mailbox item that waits (unacknowledged).
pub(super) struct Pending {
    pub(super) seq: u64,
    item: wire::GroupItem,
}

/// The client's group part that is not persisted (the groups themselves are in the
/// account: [`crate::group::DeviceGroups`]).
#[derive(Default)]
pub(super) struct Groups {
    pub(super) outboxes: BTreeMap<GroupId, Outbox>,
    /// Mailbox items waiting (unacknowledged: the provider keeps them).
    pub(super) pending: VecDeque<Pending>,
    /// Something happened that a waiting item may have waited for (a change applied, a
    /// group or a sender key or a device list arrived): the waiting items are tried again.
    pub(super) unblocked: bool,
    /// When the next round of sender keys for devices that were not reached is due.
    pub(super) key_retry_at: Option<UnixMillis>,
    /// Rounds in a row that handed keys (the backoff's exponent).
    pub(super) key_retry_rounds: u32,
}

/// What became of a group item.
enum Outcome {
    /// Processed (or refused): acknowledge it.
    Done,
    /// It needs something that has not arrived: keep it.
    Wait,
}

/// The key to hand member `a` of the group `g`: the chain's first position if `a` was a
/// member when the chain was made (a key sent again must open every message sent on it),
/// else the position at which the chain was first handed to `a`, which is `current` the
/// first time (it is recorded in `late`).
fn key_for(g: &mut GroupRecord, a: &Address, current: &SenderKey) -> SenderKey {
    match &g.chain_start {
        Some((first, members)) if members.contains(a) => first.clone(),
        Some((first, _)) => match g.late.get(a) {
            Some(&i) => first.at_iteration(i).unwrap_or_else(|| current.clone()),
            None => {
                g.late.insert(a.clone(), current.iteration());
                current.clone()
            }
        },
        None => current.clone(),
    }
}

impl<R: CryptoRng> Client<R> {
    /// The groups this device holds (including those this user left or was removed
    /// from: their last state).
    pub fn groups(&self) -> impl Iterator<Item = &GroupState> + '_ {
        self.account.groups.records.values().map(|g| &g.state)
    }

    /// One group's state.
    pub fn group(&self, group: GroupId) -> Option<&GroupState> {
        self.account.groups.records.get(&group).map(|g| &g.state)
    }

    /// Creates a group with this user as its first admin and `members` (whose device
    /// lists this device knows), ordered by this device's own provider. The group
    /// appears with [`ClientEvent::GroupChanged`] once the provider has ordered the
    /// creating change; [`ClientEvent::GroupChangeFailed`] otherwise.
    pub fn create_group(
        &mut self,
        now: UnixMillis,
        title: &str,
        members: &[Address],
    ) -> Result<GroupId, ClientError> {
        self.check_capacity(1)?;
        let others = members
            .iter()
            .filter(|a| *a != self.account.device().address())
            .map(|a| self.group_member(a, GroupRole::Member))
            .collect::<Result<Vec<_>, _>>()?;
        let mut nonce = [0u8; 16];
        rand_core::Rng::fill_bytes(&mut self.rng, &mut nonce);
        let sequencer = Sequencer {
            domain: self.config.provider.clone(),
            key: self.config.provider_key,
        };
        let change = GroupState::create_change(
            self.account.device(),
            nonce,
            title.to_owned(),
            sequencer,
            others,
            now,
        )?;
        let group = change.group();
        let sequencer = self.config.provider.as_str().to_owned();
        self.order(now, &change, &sequencer);
        Ok(group)
    }

    /// Asks the group's sequencer to order a change made by this device: adding members
    /// (`GroupAction::Add`, with [`Client::group_member`] entries), removing, leaving,
    /// roles, title. Checked here as every member will check it. The result comes as
    /// [`ClientEvent::GroupChanged`] or [`ClientEvent::GroupChangeFailed`] (a
    /// `group_conflict` means another change came first: make it again).
    pub fn change_group(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        action: GroupAction,
    ) -> Result<(), ClientError> {
        self.check_capacity(1)?;
        let g = self
            .account
            .groups
            .records
            .get(&group)
            .ok_or(ClientError::UnknownGroup(group))?;
        let change = g.state.change(self.account.device(), action, now)?;
        let sequencer = g.state.sequencer().domain.as_str().to_owned();
        self.order(now, &change, &sequencer);
        Ok(())
    }

    /// A member entry for adding `address` to a group with `role`: its pinned identity
    /// key (its device list must be known: after a message exchange or
    /// [`Client::fetch_device_list`]).
    pub fn group_member(
        &self,
        address: &Address,
        role: GroupRole,
    ) -> Result<GroupMember, ClientError> {
        let identity = if address == self.account.device().address() {
            *self.account.own_device_list().identity_key()
        } else {
            *self
                .account
                .contacts()
                .get(address)
                .ok_or_else(|| ClientError::UnknownContact(address.clone()))?
                .identity_key()
        };
        Ok(GroupMember {
            address: address.clone(),
            identity,
            role,
        })
    }

    fn order(&mut self, now: UnixMillis, change: &GroupChange, sequencer: &str) {
        let body = wire::request::Body::OrderGroupChange(wire::OrderGroupChange {
            change: change.encoded().clone(),
            sequencer: sequencer.to_owned(),
            requester: String::new(),
        });
        let expires = now.saturating_add(self.config.submit_expiry_ms);
        let kind = RequestKind::OrderGroupChange {
            group: change.group(),
        };
        self.new_request(now, kind, body, expires);
        self.flush(now);
    }

    /// Sends `content` to the group: encrypted and signed once, handed to the provider
    /// once with the member list. A new sender chain is made first when none exists or
    /// a removal requires one, and the chain's key goes to every member who lacks it.
    /// [`ClientEvent::DeliveredToProvider`] follows once the provider stored it.
    pub fn send_group(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        content: Content,
    ) -> Result<MessageId, ClientError> {
        content.encode_padded()?;
        let me = self.account.device().address().clone();
        let g = self
            .account
            .groups
            .records
            .get(&group)
            .ok_or(ClientError::UnknownGroup(group))?;
        if g.state.role(&me).is_none() {
            return Err(GroupMessageError::NotMember(me).into());
        }
        let rekey = g
            .sender
            .as_ref()
            .is_none_or(|s| s.needs_new_chain(&g.state));
        let to_key = self.keys_due(group, rekey);
        if self.requests.len() + self.outgoing.len() + to_key.len() + 1 > MAX_CLIENT_PENDING {
            return Err(ClientError::Busy {
                max: MAX_CLIENT_PENDING,
            });
        }
        let account = &mut self.account;
        let g = account
            .groups
            .records
            .get_mut(&group)
            .ok_or(ClientError::UnknownGroup(group))?;
        if rekey {
            let chain_id = g
                .sender
                .as_ref()
                .map_or(1, |s| s.sender_key().chain_id().wrapping_add(1));
            let sender = GroupSender::new(&g.state, &account.device, chain_id, &mut self.rng)?;
            g.chain_start = Some((
                sender.sender_key().clone(),
                g.state.members().map(|m| m.address).collect(),
            ));
            g.sender = Some(sender);
            g.keyed.clear();
            g.late.clear();
        }
        let Some(sender) = g.sender.as_mut() else {
            return Err(ClientError::UnknownGroup(group));
        };
        // The key at this message's position (taken before sealing moves it on), for
        // users added since the chain was made; the others get it from its start.
        let current = sender.sender_key().clone();
        let message_id = MessageId::random(&mut self.rng);
        let envelope = sender.seal(&account.device, &g.state, &content, message_id, now)?;
        let recipients: Vec<String> = g
            .state
            .members()
            .map(|m| m.address.as_str().to_owned())
            .collect();
        self.groups
            .outboxes
            .entry(group)
            .or_default()
            .queued
            .push_back((message_id, envelope, recipients));
        self.hand_keys(now, group, to_key, &current)?;
        if let Some(o) = self.groups.outboxes.get_mut(&group) {
            for ids in o.key_msgs.values_mut() {
                ids.push(message_id);
            }
        }
        self.release_group(now, group);
        self.flush(now);
        Ok(message_id)
    }

    /// The members due this device's chain in `group` (with the devices listed for each
    /// now): all of them on a new chain (`rekey`), else those with a device listed that
    /// was not handed the key: one listed since, or one the key could not reach.
    fn keys_due(&self, group: GroupId, rekey: bool) -> Vec<(Address, BTreeSet<DeviceId>)> {
        let account = &self.account;
        let Some(g) = account.groups.records.get(&group) else {
            return Vec::new();
        };
        let me = account.device().address();
        // This user's other devices get the key too (a message to one's own address
        // reaches them).
        let own_others = account.own_device_list().devices().len() > 1;
        let listed = |a: &Address| -> Option<BTreeSet<DeviceId>> {
            let list = if a == me {
                Some(&account.own_list)
            } else {
                account.contacts.get(a)
            };
            list.map(|l| {
                l.device_ids()
                    .filter(|d| *d != account.device.id())
                    .collect()
            })
        };
        g.state
            .members()
            .map(|m| m.address)
            .filter(|a| a != me || own_others)
            .filter_map(|a| {
                let devices = listed(&a);
                let handed = g.keyed.get(&a);
                let due = rekey
                    || match (&devices, handed) {
                        (_, None) => true,
                        (Some(d), Some(h)) => !d.is_subset(h),
                        (None, Some(_)) => false,
                    };
                due.then(|| (a, devices.unwrap_or_default()))
            })
            .collect()
    }

    /// Sends each member in `due` its key (a one-to-one message), at the position
    /// [`key_for`] gives with the chain at `current`, and records it as handed; the
    /// group's messages sealed from now on wait until the provider has stored these.
    fn hand_keys(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        due: Vec<(Address, BTreeSet<DeviceId>)>,
        current: &SenderKey,
    ) -> Result<(), ClientError> {
        for (a, devices) in due {
            let Some(g) = self.account.groups.records.get_mut(&group) else {
                break;
            };
            let key = key_for(g, &a, current);
            g.keyed.insert(a.clone(), devices);
            let local = self.next_local;
            self.queue_message(now, &a, Content::GroupSenderKey(Box::new(key)), false)?;
            // A message already stored (or failed) by now needs no waiting.
            if self.outgoing.contains_key(&local) {
                self.groups
                    .outboxes
                    .entry(group)
                    .or_default()
                    .key_msgs
                    .insert(local, Vec::new());
            }
        }
        Ok(())
    }

    /// A sender key could not reach a member device: the next round of
    /// [`retry_group_keys`](Self::retry_group_keys) is scheduled, unless one is already,
    /// `GROUP_KEY_RETRY_MIN_MS` after the last, doubling with each round that hands keys
    /// to at most `GROUP_KEY_RETRY_MAX_MS` (SPEC.md 19.2).
    fn schedule_key_retry(&mut self, now: UnixMillis) {
        if self.groups.key_retry_at.is_none() {
            // 30 s << 7 is past the hour already: the shift stays far from overflowing.
            let wait = (GROUP_KEY_RETRY_MIN_MS << self.groups.key_retry_rounds.min(16))
                .min(GROUP_KEY_RETRY_MAX_MS);
            self.groups.key_retry_at = Some(now.saturating_add(wait));
        }
    }

    /// Hands this device's chain, without a message, to the member devices that are due
    /// it (see [`keys_due`](Self::keys_due)), at the position each one's first message
    /// on the chain has: so a device no session could reach when the key was handed out
    /// (one that had not yet published prekeys, say) can open the messages waiting for it
    /// without the owner sending again (SPEC.md 19.2). Runs when scheduled and online.
    pub(super) fn retry_group_keys(&mut self, now: UnixMillis) {
        if !self.is_online() || self.groups.key_retry_at.is_none_or(|t| now < t) {
            return;
        }
        self.groups.key_retry_at = None;
        // Only groups this user is still in: a device that left, or was removed, hands
        // nothing more.
        let me = self.account.device().address();
        let groups: Vec<GroupId> = self
            .account
            .groups
            .records
            .iter()
            .filter(|(_, g)| g.sender.is_some() && g.state.role(me).is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut handed = false;
        for group in groups {
            let due = self.keys_due(group, false);
            if due.is_empty() {
                continue;
            }
            if self.requests.len() + self.outgoing.len() + due.len() > MAX_CLIENT_PENDING {
                // Busy: the next round tries again.
                self.schedule_key_retry(now);
                break;
            }
            let Some(current) = self
                .account
                .groups
                .records
                .get(&group)
                .and_then(|g| g.sender.as_ref())
                .map(|s| s.sender_key().clone())
            else {
                continue;
            };
            // Only content that cannot be encoded fails here, and a sender key can.
            if self.hand_keys(now, group, due, &current).is_err() {
                continue;
            }
            handed = true;
        }
        self.groups.key_retry_rounds = if handed {
            self.groups.key_retry_rounds.saturating_add(1)
        } else {
            0
        };
    }

    /// Submits the group's queued envelopes once its sender keys are stored.
    fn release_group(&mut self, now: UnixMillis, group: GroupId) {
        let Some(o) = self.groups.outboxes.get_mut(&group) else {
            return;
        };
        if !o.key_msgs.is_empty() {
            return;
        }
        let queued: Vec<_> = o.queued.drain(..).collect();
        for (message_id, envelope, recipients) in queued {
            let body = wire::request::Body::SubmitGroup(wire::SubmitGroup {
                envelope,
                recipients,
            });
            let expires = now.saturating_add(self.config.submit_expiry_ms);
            self.new_request(
                now,
                RequestKind::SubmitGroup { group, message_id },
                body,
                expires,
            );
        }
    }

    /// A one-to-one message of this client's was stored, given up on, or sealed
    /// without a copy for a device: if it carried a sender key, the group's messages
    /// may go, and those a device or user cannot read now are reported undeliverable
    /// there (the key goes again with the next group message or the next round of
    /// [`retry_group_keys`](Self::retry_group_keys), and may still reach it).
    pub(super) fn key_message_settled(&mut self, now: UnixMillis, settled: Settled) {
        let local = match &settled {
            Settled::Stored(k) | Settled::Failed(k, _) | Settled::Skipped(k, _, _) => *k,
        };
        let groups: Vec<GroupId> = self
            .groups
            .outboxes
            .iter()
            .filter(|(_, o)| o.key_msgs.contains_key(&local))
            .map(|(id, _)| *id)
            .collect();
        for id in groups {
            let Some(o) = self.groups.outboxes.get_mut(&id) else {
                continue;
            };
            let (recipient, device) = match &settled {
                Settled::Stored(_) => {
                    o.key_msgs.remove(&local);
                    self.release_group(now, id);
                    continue;
                }
                Settled::Failed(_, to) => (to.clone(), None),
                Settled::Skipped(_, to, d) => (to.clone(), Some(*d)),
            };
            // A skipped device leaves the message outstanding for the others.
            let lost = match device {
                Some(_) => o.key_msgs.get(&local).cloned(),
                None => o.key_msgs.remove(&local),
            }
            .unwrap_or_default();
            if let Some(r) = self.account.groups.records.get_mut(&id) {
                match (device, r.keyed.get_mut(&recipient)) {
                    (Some(d), Some(devices)) => {
                        devices.remove(&d);
                    }
                    _ => {
                        r.keyed.remove(&recipient);
                    }
                }
            }
            self.schedule_key_retry(now);
            for message_id in lost {
                self.event(ClientEvent::Undeliverable {
                    message_id,
                    recipient: recipient.clone(),
                    device,
                    reason: super::local_error(
                        crate::protocol::ErrorCode::UnknownDevice,
                        "the group's sender key could not be handed to it",
                    ),
                });
            }
            self.release_group(now, id);
        }
    }

    /// The sequencer's answer to an order request.
    pub(super) fn on_ordered(&mut self, change: Bytes) {
        // Ordered: it applies now, or (if this device misses an earlier change) once the
        // mailbox copies arrive.
        let _ = self.on_change(change, &Bytes::new());
        self.retry_pending();
    }

    pub(super) fn order_failed(&mut self, group: GroupId, error: ProtocolError) {
        self.event(ClientEvent::GroupChangeFailed { group, error });
    }

    pub(super) fn group_submit_done(&mut self, message_id: MessageId) {
        self.event(ClientEvent::DeliveredToProvider { message_id });
    }

    pub(super) fn group_submit_failed(
        &mut self,
        group: GroupId,
        message_id: MessageId,
        reason: ProtocolError,
    ) {
        self.event(ClientEvent::GroupMessageFailed {
            group,
            message_id,
            reason,
        });
    }

    /// A group item from the mailbox. Returns whether to acknowledge it now.
    pub(super) fn on_group_item(&mut self, seq: u64, item: wire::GroupItem) -> bool {
        if self.groups.pending.iter().any(|p| p.seq == seq) {
            return false; // already waiting here
        }
        match self.try_item(&item) {
            Outcome::Done => {
                // Only if it changed something a waiting item may need (SPEC.md 20.5).
                self.retry_pending();
                true
            }
            Outcome::Wait => {
                if self.groups.pending.len() >= MAX_PENDING_GROUP_ITEMS
                    && let Some(old) = self.groups.pending.pop_front()
                {
                    self.event(ClientEvent::Rejected {
                        seq: old.seq,
                        code: "group_item_expired",
                        claimed_sender: None,
                    });
                    self.ack(vec![old.seq]);
                }
                self.groups.pending.push_back(Pending { seq, item });
                false
            }
        }
    }

    /// Tries the waiting items again, oldest first, as long as the last round (or what
    /// came before it) unblocked something.
    pub(super) fn retry_pending(&mut self) {
        while std::mem::take(&mut self.groups.unblocked) {
            let mut done = Vec::new();
            let pending: Vec<Pending> = self.groups.pending.drain(..).collect();
            for p in pending {
                match self.try_item(&p.item) {
                    Outcome::Done => done.push(p.seq),
                    Outcome::Wait => self.groups.pending.push_back(p),
                }
            }
            if !done.is_empty() {
                self.ack(done);
            }
        }
    }

    fn try_item(&mut self, item: &wire::GroupItem) -> Outcome {
        match &item.body {
            Some(wire::group_item::Body::Change(c)) => self.on_change(c.clone(), &item.snapshot),
            Some(wire::group_item::Body::Envelope(e)) => self.on_group_envelope(e.clone()),
            None => Outcome::Done,
        }
    }

    /// A countersigned change (from the mailbox or the sequencer's answer).
    fn on_change(&mut self, bytes: Bytes, snapshot: &Bytes) -> Outcome {
        let me = self.account.device().address().clone();
        let Some(change) = self.decoded(GroupChange::decode(bytes).map_err(|e| e.code())) else {
            return Outcome::Done;
        };
        let gid = change.group();
        let Some(g) = self.account.groups.records.get_mut(&gid) else {
            let made = if change.epoch() == 0 {
                GroupState::create(&change)
            } else if !snapshot.is_empty() {
                GroupState::join(snapshot, &change, &me)
            } else {
                // The change that let this device in has not arrived yet.
                return Outcome::Wait;
            };
            return match made {
                Ok(state) if state.role(&me).is_some() => {
                    let epoch = state.epoch();
                    self.account
                        .groups
                        .records
                        .insert(gid, GroupRecord::new(state));
                    self.groups.unblocked = true;
                    self.take_stashed_keys(gid);
                    self.event(ClientEvent::GroupChanged {
                        group: gid,
                        epoch,
                        author: change.author().clone(),
                        action: change.action().clone(),
                    });
                    Outcome::Done
                }
                Ok(_) => Outcome::Done, // not for this user
                Err(e) => {
                    self.group_refused(Some(gid), e.code());
                    Outcome::Done
                }
            };
        };
        match g.state.apply(&change) {
            Ok(next) => {
                let old: BTreeSet<Address> = g.state.members().map(|m| m.address).collect();
                let new: BTreeSet<Address> = next.members().map(|m| m.address).collect();
                for gone in old.difference(&new) {
                    g.receiver.forget(gone);
                    g.keyed.remove(gone);
                    g.late.remove(gone);
                }
                g.state = next;
                let epoch = g.state.epoch();
                self.groups.unblocked = true;
                self.take_stashed_keys(gid);
                self.event(ClientEvent::GroupChanged {
                    group: gid,
                    epoch,
                    author: change.author().clone(),
                    action: change.action().clone(),
                });
                Outcome::Done
            }
            // Applied before (the sequencer's answer and the mailbox copy both come).
            Err(GroupError::Stale { .. }) => Outcome::Done,
            Err(GroupError::Gap { .. }) => Outcome::Wait,
            Err(e) => {
                self.group_refused(Some(gid), e.code());
                Outcome::Done
            }
        }
    }

    /// A decoded group item, or `None` after reporting why it does not decode.
    fn decoded<T>(&mut self, result: Result<T, &'static str>) -> Option<T> {
        result.map_err(|code| self.group_refused(None, code)).ok()
    }

    fn group_refused(&mut self, group: Option<GroupId>, code: &'static str) {
        self.event(ClientEvent::GroupItemRejected { group, code });
    }

    /// A group envelope from the mailbox.
    fn on_group_envelope(&mut self, bytes: Bytes) -> Outcome {
        let Some(env) = self.decoded(GroupEnvelope::decode(bytes).map_err(|e| e.code())) else {
            return Outcome::Done;
        };
        let gid = env.group();
        let Some(cert) = self.certificate(env.sender(), env.sender_device()) else {
            // The sender's device list comes with its sender key (a session message).
            return Outcome::Wait;
        };
        let Some(g) = self.account.groups.records.get_mut(&gid) else {
            return Outcome::Wait;
        };
        match g.receiver.open(&g.state, &env, &cert) {
            Ok(opened) => {
                self.event(ClientEvent::GroupMessage(Box::new(opened)));
                Outcome::Done
            }
            Err(GroupMessageError::Duplicate) => Outcome::Done,
            Err(GroupMessageError::Gap { .. } | GroupMessageError::UnknownSenderKey) => {
                Outcome::Wait
            }
            Err(e) => {
                self.group_refused(Some(gid), e.code());
                Outcome::Done
            }
        }
    }

    /// A device's certificate from its user's device list, as this device holds it.
    fn certificate(&self, address: &Address, device: DeviceId) -> Option<DeviceCertificate> {
        let list = if address == self.account.device().address() {
            self.account.own_device_list()
        } else {
            self.account.contacts().get(address)?
        };
        list.get(device).cloned()
    }

    /// Hands every group this user is a member of to its other devices (one was just
    /// linked), as `group_sync` content to this user's own address (SPEC.md 20.5). A
    /// state too large for one message is not handed over (SPEC.md 20.7).
    pub(super) fn sync_groups_to_own_devices(&mut self, now: UnixMillis) {
        let me = self.account.device().address().clone();
        let syncs: Vec<GroupSync> = self
            .account
            .groups
            .records
            .values()
            .filter(|g| g.state.role(&me).is_some())
            .map(|g| GroupSync::new(&g.state))
            .collect();
        for sync in syncs {
            if self.check_capacity(1).is_err() {
                return;
            }
            let _ = self.queue_message(now, &me, Content::GroupSync(Box::new(sync)), false);
        }
    }

    /// A group state from another device of this user (SPEC.md 20.5): taken if this
    /// device holds no state of the group; from anyone else, ignored.
    pub(super) fn on_group_sync(&mut self, from: &Address, sync: GroupSync) {
        let me = self.account.device().address().clone();
        let state = sync.state();
        if from != &me || state.role(&me).is_none() {
            self.group_refused(Some(state.id()), "group_sync_refused");
            return;
        }
        let id = state.id();
        if self.account.groups.records.contains_key(&id) {
            return;
        }
        let epoch = state.epoch();
        self.account
            .groups
            .records
            .insert(id, GroupRecord::new(state.clone()));
        self.groups.unblocked = true;
        self.take_stashed_keys(id);
        self.event(ClientEvent::GroupSynced { group: id, epoch });
        self.retry_pending();
    }

    /// A sender key that arrived over an end-to-end session from `from`'s device.
    pub(super) fn on_sender_key(&mut self, from: &Address, device: DeviceId, key: SenderKey) {
        let Some(cert) = self.certificate(from, device) else {
            return;
        };
        let gid = key.group();
        match self.account.groups.records.get_mut(&gid) {
            Some(g) => match g.receiver.add_sender_key(&g.state, &cert, &key) {
                Ok(added) => self.groups.unblocked |= added,
                // Perhaps a member this device does not know of yet: keep it.
                Err(GroupMessageError::NotMember(_)) => self.stash_key(cert, key),
                Err(e) => self.group_refused(Some(gid), e.code()),
            },
            None => self.stash_key(cert, key),
        }
        self.retry_pending();
    }

    fn stash_key(&mut self, cert: DeviceCertificate, key: SenderKey) {
        let stash = &mut self.account.groups.stash;
        if stash.len() >= MAX_PENDING_GROUP_ITEMS {
            stash.pop_front();
        }
        stash.push_back((cert, key));
    }

    /// Stashed keys for `group` that its current state accepts.
    fn take_stashed_keys(&mut self, group: GroupId) {
        let groups = &mut self.account.groups;
        let Some(g) = groups.records.get_mut(&group) else {
            return;
        };
        let keys: Vec<_> = groups.stash.drain(..).collect();
        for (cert, key) in keys {
            if key.group() == group && g.receiver.add_sender_key(&g.state, &cert, &key).is_ok() {
                self.groups.unblocked = true;
                continue;
            }
            groups.stash.push_back((cert, key));
        }
    }
}
