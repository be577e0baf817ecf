//! Groups at the provider (SPEC.md section 20): a device's group envelope fanned out
//! with one copy per recipient provider, the sequencer that orders group changes and
//! fans each ordered change out the same way, and the delivery of relayed group items
//! to local devices.
//!
//! Providers never hold group keys. The sequencer holds the group's membership (it
//! checks every change as members will, so it never countersigns a change members
//! refuse); other providers only route.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rand_core::CryptoRng;

use super::state::{MailBody, OutItem, change_id, hash_key};
use super::{DeviceKey, Provider, err, response};
use crate::address::{Address, Domain};
use crate::envelope::MessageId;
use crate::group::{GroupChange, GroupEnvelope, GroupError, GroupState};
use crate::identity::DeviceId;
use crate::limits::{
    DEDUP_RETENTION_MS, MAX_DEDUP_ENTRIES, MAX_GROUP_RECIPIENTS, MAX_SEQUENCER_GROUPS,
};
use crate::protocol::{ConnectionId, ErrorCode, ProtocolError};
use crate::store::Store;
use crate::time::UnixMillis;
use crate::wire;

/// One group item and the users to give it to.
struct Fan {
    item: wire::GroupItem,
    recipients: BTreeSet<Address>,
}

/// Who is told if a remote copy cannot be delivered.
struct Origin {
    sender: Address,
    device: DeviceId,
    id: MessageId,
    /// A device that gets no copy (the group envelope's own sender device).
    skip: Option<DeviceKey>,
}

/// Parses a recipient list: canonical addresses, each once.
fn recipients(list: &[String]) -> Result<BTreeSet<Address>, ProtocolError> {
    if list.len() > MAX_GROUP_RECIPIENTS {
        return Err(err(ErrorCode::TooMany, "recipients"));
    }
    let mut out = BTreeSet::new();
    for a in list {
        let a = Address::parse_canonical(a)
            .map_err(|e| err(ErrorCode::Invalid, format!("recipient: {e}")))?;
        if !out.insert(a) {
            return Err(err(ErrorCode::Invalid, "a recipient listed twice"));
        }
    }
    Ok(out)
}

/// The protocol error for a change the sequencer refuses.
fn refused(e: &GroupError) -> ProtocolError {
    match e {
        GroupError::Conflict => err(ErrorCode::GroupConflict, e.code()),
        _ => err(ErrorCode::GroupRefused, e.code()),
    }
}

fn ordered_response(id: u64, change: &GroupChange) -> Bytes {
    response(
        id,
        wire::response::Body::GroupChange(wire::GroupChangeOrdered {
            change: change.encoded().clone(),
        }),
    )
}

impl<S: Store, R: CryptoRng> Provider<S, R> {
    /// A device's group envelope: one copy per recipient provider, local copies to the
    /// recipients' devices (SPEC.md 20.2).
    pub(super) fn submit_group(
        &mut self,
        now: UnixMillis,
        key: &DeviceKey,
        g: wire::SubmitGroup,
    ) -> Result<(), ProtocolError> {
        let env = GroupEnvelope::decode(g.envelope.clone())
            .map_err(|e| err(ErrorCode::Invalid, format!("group envelope: {}", e.code())))?;
        if env.sender() != &key.0 || env.sender_device() != key.1 {
            return Err(err(
                ErrorCode::NotYours,
                "group envelope sender is not this device",
            ));
        }
        let to = recipients(&g.recipients)?;
        let dk = hash_key(&[
            b"group/submit",
            key.0.as_str().as_bytes(),
            key.1.as_bytes(),
            env.message_id().as_bytes(),
        ]);
        if self.durable.seen(&dk) {
            return Ok(());
        }
        let fan = Fan {
            item: wire::GroupItem {
                body: Some(wire::group_item::Body::Envelope(g.envelope)),
                snapshot: Bytes::new(),
            },
            recipients: to,
        };
        let origin = Origin {
            sender: key.0.clone(),
            device: key.1,
            id: env.message_id(),
            skip: Some(key.clone()),
        };
        self.fan_out(now, vec![fan], &origin)?;
        self.durable.remember(
            dk,
            now.saturating_add(DEDUP_RETENTION_MS),
            MAX_DEDUP_ENTRIES,
            &mut self.ops,
        );
        Ok(())
    }

    /// Queues one copy of each item per recipient provider and stores local copies.
    /// Checks every queue first: on error nothing changed. A local device whose mailbox
    /// is full misses the item (reported as an event, SPEC.md 20.2, 20.4).
    fn fan_out(
        &mut self,
        now: UnixMillis,
        fans: Vec<Fan>,
        origin: &Origin,
    ) -> Result<(), ProtocolError> {
        let remote: BTreeSet<Domain> = fans
            .iter()
            .flat_map(|f| f.recipients.iter().map(Address::domain))
            .filter(|d| *d != self.domain)
            .collect();
        for d in &remote {
            let depth = self.durable.outbound.get(d).map_or(0, BTreeMap::len);
            if depth + fans.len() > self.limits.max_remote_queue_depth {
                return Err(self.queue_full(d));
            }
        }
        for f in fans {
            let mut by_domain: BTreeMap<Domain, Vec<String>> = BTreeMap::new();
            for a in &f.recipients {
                if a.is_at(&self.domain) {
                    self.deliver_group_local(now, a, &f.item, origin.skip.as_ref());
                } else {
                    by_domain
                        .entry(a.domain())
                        .or_default()
                        .push(a.as_str().to_owned());
                }
            }
            for (domain, list) in by_domain {
                let relay = wire::GroupRelay {
                    item: Some(f.item.clone()),
                    recipients: list,
                };
                let Some(item) =
                    OutItem::group(relay, origin.sender.clone(), origin.device, origin.id, now)
                else {
                    continue;
                };
                self.queue_remote(&domain, Box::new(item));
            }
        }
        Ok(())
    }

    /// A copy of `item` for every listed device of the local user `to` but `skip`.
    fn deliver_group_local(
        &mut self,
        now: UnixMillis,
        to: &Address,
        item: &wire::GroupItem,
        skip: Option<&DeviceKey>,
    ) {
        let Some(user) = self.durable.users.get(to) else {
            return;
        };
        let devices: Vec<(DeviceId, usize, u64)> = user
            .devices
            .iter()
            .map(|(d, st)| (*d, st.depth(), st.seq_room()))
            .collect();
        for (dev, depth, room) in devices {
            let dkey = (to.clone(), dev);
            if skip == Some(&dkey) {
                continue;
            }
            if depth >= self.limits.max_mailbox_depth || room == 0 {
                self.event(super::ProviderEvent::GroupItemDropped {
                    recipient: to.clone(),
                    device: dev,
                });
                continue;
            }
            self.store_mail(&dkey, MailBody::Group(Box::new(item.clone())), now);
        }
    }

    /// A group relay from `peer` for local users (SPEC.md 20.4).
    pub(super) fn relay_group(
        &mut self,
        now: UnixMillis,
        peer: &Domain,
        g: wire::GroupRelay,
        expiry: UnixMillis,
    ) -> Result<(), ProtocolError> {
        use prost::Message;
        let Some(item) = g.item.as_ref() else {
            return Err(err(ErrorCode::Invalid, "group relay without an item"));
        };
        match item.body.as_ref() {
            Some(wire::group_item::Body::Envelope(e)) => {
                let env = GroupEnvelope::decode(e.clone()).map_err(|e| {
                    err(ErrorCode::Invalid, format!("group envelope: {}", e.code()))
                })?;
                // (A snapshot beside an envelope breaks a structural rule: refused with
                // the frame, SPEC.md 16.2.)
                if !env.sender().is_at(peer) {
                    return Err(err(
                        ErrorCode::NotYours,
                        "sender is not at the relaying provider",
                    ));
                }
            }
            Some(wire::group_item::Body::Change(c)) => {
                let change = GroupChange::decode(c.clone())
                    .map_err(|e| err(ErrorCode::Invalid, format!("group change: {}", e.code())))?;
                // Only a group's sequencer relays its changes: the countersignature must
                // be by the relaying provider's key.
                let key = self.keys.get(peer).copied();
                if !key.is_some_and(|k| change.is_sequenced_by(&k)) {
                    return Err(err(
                        ErrorCode::NotYours,
                        "change not countersigned by the relaying provider",
                    ));
                }
            }
            None => return Err(err(ErrorCode::Invalid, "group item without a body")),
        }
        let to = recipients(&g.recipients)?;
        if let Some(a) = to.iter().find(|a| !a.is_at(&self.domain)) {
            return Err(err(
                ErrorCode::NotYours,
                format!("recipient {a} is not at this provider"),
            ));
        }
        let dk = hash_key(&[b"group/relay", peer.as_str().as_bytes(), &g.encode_to_vec()]);
        if self.durable.seen(&dk) {
            return Ok(());
        }
        self.durable
            .remember(dk, expiry, MAX_DEDUP_ENTRIES, &mut self.ops);
        for a in &to {
            self.deliver_group_local(now, a, item, None);
        }
        Ok(())
    }

    /// A device asks for a change to be ordered: here if this provider is the group's
    /// sequencer, else forwarded to it (SPEC.md 20.3).
    pub(super) fn order_change(
        &mut self,
        now: UnixMillis,
        conn: ConnectionId,
        id: u64,
        key: &DeviceKey,
        mut o: wire::OrderGroupChange,
    ) -> Result<Option<Bytes>, ProtocolError> {
        let change = GroupChange::decode(o.change.clone())
            .map_err(|e| err(ErrorCode::Invalid, format!("group change: {}", e.code())))?;
        if change.author() != &key.0 || change.author_device().device_id() != key.1 {
            return Err(err(
                ErrorCode::NotYours,
                "the change's author is not this device",
            ));
        }
        let sequencer = Domain::parse_canonical(&o.sequencer)
            .map_err(|e| err(ErrorCode::Invalid, format!("sequencer: {e}")))?;
        if sequencer == self.domain {
            return self.sequence(now, id, change).map(Some);
        }
        o.requester = key.0.as_str().to_owned();
        self.forward(
            now,
            conn,
            id,
            sequencer,
            wire::request::Body::OrderGroupChange(o),
        )
    }

    /// A peer provider forwards a member's change to this provider, the sequencer.
    pub(super) fn peer_order_change(
        &mut self,
        now: UnixMillis,
        id: u64,
        peer: &Domain,
        o: wire::OrderGroupChange,
    ) -> Result<Bytes, ProtocolError> {
        let requester = Address::parse_canonical(&o.requester)
            .map_err(|_| err(ErrorCode::Invalid, "requester"))?;
        if !requester.is_at(peer) {
            return Err(err(
                ErrorCode::NotYours,
                "requester is not at the relaying provider",
            ));
        }
        if o.sequencer != self.domain.as_str() {
            return Err(err(ErrorCode::NotYours, "not the sequencer named"));
        }
        let change = GroupChange::decode(o.change)
            .map_err(|e| err(ErrorCode::Invalid, format!("group change: {}", e.code())))?;
        if change.author() != &requester {
            return Err(err(
                ErrorCode::NotYours,
                "the change's author is not the requester",
            ));
        }
        self.sequence(now, id, change)
    }

    /// The sequencer's step (SPEC.md 18.3, 20.3): checks `change` against the group's
    /// state exactly as members will, countersigns it, stores the new state and fans the
    /// change out to the members before and after it (a user it adds also gets the
    /// snapshot it applies to). A retry of the change that made the current state gets
    /// the same answer again.
    fn sequence(
        &mut self,
        now: UnixMillis,
        id: u64,
        change: GroupChange,
    ) -> Result<Bytes, ProtocolError> {
        let gid = change.group();
        let (before, next, ordered) = match self.durable.groups.get(&gid) {
            Some(g) if g.state.head() == change.hash() => {
                return Ok(ordered_response(id, &g.last));
            }
            Some(g) => {
                let ordered = g.state.order(&change, &self.key).map_err(|e| refused(&e))?;
                let next = g.state.apply(&ordered).map_err(|e| refused(&e))?;
                (Some(g.state.clone()), next, ordered)
            }
            None if change.epoch() == 0 => {
                if self.durable.groups.len() >= MAX_SEQUENCER_GROUPS {
                    return Err(err(ErrorCode::TooMany, "groups at this sequencer"));
                }
                let ordered = change.sequence(&self.key);
                let state = GroupState::create(&ordered).map_err(|e| refused(&e))?;
                if state.sequencer().domain != self.domain {
                    return Err(err(
                        ErrorCode::NotYours,
                        "the group names another sequencer",
                    ));
                }
                (None, state, ordered)
            }
            None => return Err(err(ErrorCode::UnknownGroup, gid.to_string())),
        };
        let old: BTreeSet<Address> = before
            .as_ref()
            .map(|b| b.members().map(|m| m.address).collect())
            .unwrap_or_default();
        let new: BTreeSet<Address> = next.members().map(|m| m.address).collect();
        let item = |snapshot: Bytes| wire::GroupItem {
            body: Some(wire::group_item::Body::Change(ordered.encoded().clone())),
            snapshot,
        };
        let mut fans = Vec::new();
        match &before {
            // A creating change: every member builds the state from it alone.
            None => fans.push(Fan {
                item: item(Bytes::new()),
                recipients: new,
            }),
            Some(b) => {
                // The members before the change (those it removes learn of it too) get the
                // change; those it adds get it with the state it applies to.
                let joiners: BTreeSet<Address> = new.difference(&old).cloned().collect();
                fans.push(Fan {
                    item: item(Bytes::new()),
                    recipients: old,
                });
                if !joiners.is_empty() {
                    fans.push(Fan {
                        item: item(b.to_snapshot()),
                        recipients: joiners,
                    });
                }
            }
        }
        let origin = Origin {
            sender: change.author().clone(),
            device: change.author_device().device_id(),
            id: change_id(&change).unwrap_or(MessageId::from_bytes([0; 16])),
            skip: None,
        };
        self.fan_out(now, fans, &origin)?;
        self.durable.put_group(next, ordered.clone(), &mut self.ops);
        self.event(super::ProviderEvent::GroupChangeOrdered {
            group: gid,
            epoch: ordered.epoch(),
        });
        Ok(ordered_response(id, &ordered))
    }
}
