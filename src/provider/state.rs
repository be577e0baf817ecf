//! The provider's durable state: users, devices, prekeys, mailboxes, outbound queues
//! and dedup entries, kept in memory and mirrored to the [`Store`] as [`StoreOp`]s.
//! Every mutation here pushes the ops that make it durable; [`Durable::load`] rebuilds
//! the same state from a store's contents.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::address::{Address, Domain};
use crate::envelope::{EnvelopeHeader, MessageId, UnverifiedEnvelope};
use crate::group::{GroupChange, GroupEnvelope, GroupId, GroupState};
use crate::identity::{DeviceCertificate, DeviceId, DeviceList};
use crate::limits::SEQ_EPOCH_SHIFT;
use crate::session::SignedPrekey;
use crate::store::{Contents, StoreOp, Table};
use crate::time::UnixMillis;
use crate::wire;

/// One item in a device's mailbox.
#[derive(Clone, Debug)]
pub(super) struct MailItem {
    pub(super) received: UnixMillis,
    pub(super) body: MailBody,
}

#[derive(Clone, Debug)]
pub(super) enum MailBody {
    Envelope(Bytes),
    // Boxed: a mailbox holds many items, and its B-tree moves them on every insert and
    // removal; envelopes (the common case) keep the item at 48 bytes instead of 160.
    Notice(Box<wire::Notice>),
    Group(Box<wire::GroupItem>),
}

impl MailItem {
    /// Whether the item may be delivered before the write that stored it is durable
    /// (SPEC.md 16.12 rule 5): envelopes and group envelopes, whose repeats a device
    /// recognises end to end. Notices and group changes wait: a device cannot tell a
    /// notice or a change the provider then lost from a new one.
    pub(super) fn may_leave_early(&self) -> bool {
        match &self.body {
            MailBody::Envelope(_) => true,
            MailBody::Group(g) => matches!(g.body, Some(wire::group_item::Body::Envelope(_))),
            MailBody::Notice(_) => false,
        }
    }

    pub(super) fn size(&self) -> usize {
        match &self.body {
            MailBody::Envelope(e) => e.len() + 16,
            MailBody::Notice(_) => 128,
            MailBody::Group(g) => group_item_len(g) + 16,
        }
    }

    /// The item as a `Deliver` frame carries it.
    pub(super) fn to_wire(&self) -> wire::mailbox_item::Item {
        match &self.body {
            MailBody::Envelope(e) => wire::mailbox_item::Item::Envelope(e.clone()),
            MailBody::Notice(n) => wire::mailbox_item::Item::Notice((**n).clone()),
            MailBody::Group(g) => wire::mailbox_item::Item::Group((**g).clone()),
        }
    }

    fn encode(&self) -> Bytes {
        let item = match &self.body {
            MailBody::Envelope(e) => wire::stored_mail_item::Item::Envelope(e.clone()),
            MailBody::Notice(n) => wire::stored_mail_item::Item::Notice((**n).clone()),
            MailBody::Group(g) => wire::stored_mail_item::Item::Group((**g).clone()),
        };
        Bytes::from(
            wire::StoredMailItem {
                received_ms: self.received.0,
                item: Some(item),
            }
            .encode_to_vec(),
        )
    }

    /// Decodes a stored item; `None` unless it could be delivered as it is (the same
    /// rules as a `Deliver` frame, SPEC.md 16.2), so a damaged or foreign store can never
    /// make the provider send what a device must refuse.
    fn decode(bytes: &Bytes) -> Option<Self> {
        let w = wire::StoredMailItem::decode(bytes.clone()).ok()?;
        let (body, item) = match w.item? {
            wire::stored_mail_item::Item::Envelope(e) => {
                UnverifiedEnvelope::decode(e.clone()).ok()?;
                (
                    MailBody::Envelope(e.clone()),
                    wire::mailbox_item::Item::Envelope(e),
                )
            }
            wire::stored_mail_item::Item::Notice(n) => (
                MailBody::Notice(Box::new(n.clone())),
                wire::mailbox_item::Item::Notice(n),
            ),
            wire::stored_mail_item::Item::Group(g) => {
                group_item_id(&g)?;
                (
                    MailBody::Group(Box::new(g.clone())),
                    wire::mailbox_item::Item::Group(g),
                )
            }
        };
        let frame = crate::protocol::encode(wire::frame::Body::Deliver(wire::Deliver {
            items: vec![wire::MailboxItem {
                seq: 1,
                item: Some(item),
            }],
        }));
        crate::protocol::check_frame(&frame).ok()?;
        Some(Self {
            received: UnixMillis(w.received_ms),
            body,
        })
    }
}

/// The bytes a group item holds.
pub(super) fn group_item_len(g: &wire::GroupItem) -> usize {
    let body = match &g.body {
        Some(wire::group_item::Body::Envelope(b) | wire::group_item::Body::Change(b)) => b.len(),
        None => 0,
    };
    body + g.snapshot.len()
}

/// A group item's id, if its body decodes as what it claims to be (a group envelope or a
/// countersigned group change; no keys or group state are checked): the envelope's
/// message id, or the first 16 bytes of the change's hash (what notices name it by).
pub(super) fn group_item_id(g: &wire::GroupItem) -> Option<MessageId> {
    match g.body.as_ref()? {
        wire::group_item::Body::Envelope(e) => {
            Some(GroupEnvelope::decode(e.clone()).ok()?.message_id())
        }
        wire::group_item::Body::Change(c) => {
            let change = GroupChange::decode(c.clone()).ok()?;
            change.is_sequenced().then(|| change_id(&change))?
        }
    }
}

/// The id notices give a group change: the first 16 bytes of its hash.
pub(super) fn change_id(change: &GroupChange) -> Option<MessageId> {
    MessageId::from_slice(&change.hash()[..16])
}

/// One envelope or group relay queued for a remote provider, with its routing header
/// parsed. For a group relay, `envelope` is empty, `recipient` is its first recipient and
/// `recipient_device` is all zeros; `sender` and `sender_device` are the device to tell
/// if it cannot be delivered (the group envelope's sender, or a change's author).
#[derive(Clone, Debug)]
pub(super) struct OutItem {
    pub(super) accepted: UnixMillis,
    pub(super) envelope: Bytes,
    pub(super) group: Option<wire::GroupRelay>,
    pub(super) sender: Address,
    pub(super) sender_device: DeviceId,
    pub(super) recipient: Address,
    pub(super) recipient_device: DeviceId,
    pub(super) message_id: MessageId,
}

impl OutItem {
    pub(super) fn new(envelope: Bytes, accepted: UnixMillis) -> Option<Self> {
        let env = UnverifiedEnvelope::decode(envelope.clone()).ok()?;
        Some(Self::with_header(
            envelope,
            env.into_claimed_header(),
            accepted,
        ))
    }

    /// A group relay, told to `sender`'s device if it cannot be delivered.
    pub(super) fn group(
        relay: wire::GroupRelay,
        sender: Address,
        sender_device: DeviceId,
        message_id: MessageId,
        accepted: UnixMillis,
    ) -> Option<Self> {
        let recipient = Address::parse_canonical(relay.recipients.first()?).ok()?;
        Some(Self {
            accepted,
            envelope: Bytes::new(),
            group: Some(relay),
            sender,
            sender_device,
            recipient,
            recipient_device: DeviceId::from_slice(&[0; 16])?,
            message_id,
        })
    }

    /// Bytes it takes in a `Relay` frame (about).
    pub(super) fn wire_len(&self) -> usize {
        match &self.group {
            None => self.envelope.len() + 8,
            Some(g) => {
                g.item.as_ref().map_or(0, group_item_len)
                    + g.recipients.iter().map(|r| r.len() + 4).sum::<usize>()
                    + 16
            }
        }
    }

    fn to_stored(&self) -> wire::StoredOutbound {
        wire::StoredOutbound {
            accepted_ms: self.accepted.0,
            envelope: self.envelope.clone(),
            group: self.group.clone(),
            group_sender: if self.group.is_some() {
                self.sender.as_str().to_owned()
            } else {
                String::new()
            },
            group_sender_device: if self.group.is_some() {
                Bytes::copy_from_slice(self.sender_device.as_bytes())
            } else {
                Bytes::new()
            },
        }
    }

    fn from_stored(w: wire::StoredOutbound) -> Option<Self> {
        let accepted = UnixMillis(w.accepted_ms);
        match w.group {
            None => Self::new(w.envelope, accepted),
            Some(g) => {
                let id = group_item_id(g.item.as_ref()?)?;
                let sender = Address::parse_canonical(&w.group_sender).ok()?;
                let device = DeviceId::from_slice(&w.group_sender_device)?;
                Self::group(g, sender, device, id, accepted)
            }
        }
    }

    /// An item for `envelope`, whose header the caller has already decoded as `h`.
    pub(super) fn with_header(envelope: Bytes, h: EnvelopeHeader, accepted: UnixMillis) -> Self {
        Self {
            accepted,
            group: None,
            sender: h.sender,
            sender_device: h.sender_device,
            recipient: h.recipient,
            recipient_device: h.recipient_device,
            message_id: h.message_id,
            envelope,
        }
    }
}

/// A device the provider serves.
#[derive(Debug)]
pub(super) struct DeviceState {
    pub(super) cert: DeviceCertificate,
    pub(super) signed: Option<SignedPrekey>,
    pub(super) kem: Option<SignedPrekey>,
    pub(super) one_time: BTreeMap<u32, SignedPrekey>,
    pub(super) mailbox: BTreeMap<u64, MailItem>,
    pub(super) next_seq: u64,
    /// Whether a `PrekeysLow` notice went out since the pool was last above the mark.
    pub(super) low_notified: bool,
    /// The highest one-time prekey id ever handed out: a re-published id at or below it
    /// may have been handed out already and is ignored (SPEC.md 16.4, 16.6).
    pub(super) one_time_floor: u32,
    /// Notices in the mailbox (they do not count towards `MAX_MAILBOX_DEPTH`).
    pub(super) notices: usize,
    /// Whether `next_seq` changed since it was last written.
    seq_dirty: bool,
}

impl DeviceState {
    fn new(cert: DeviceCertificate) -> Self {
        Self {
            cert,
            signed: None,
            kem: None,
            one_time: BTreeMap::new(),
            mailbox: BTreeMap::new(),
            next_seq: 1,
            low_notified: false,
            one_time_floor: 0,
            notices: 0,
            seq_dirty: false,
        }
    }

    /// Envelopes in the mailbox (what `MAX_MAILBOX_DEPTH` bounds).
    pub(super) fn depth(&self) -> usize {
        self.mailbox.len().saturating_sub(self.notices)
    }

    /// How many more items the mailbox can number: `seq` stops below `u64::MAX`, and a
    /// number is never given twice, so a mailbox whose numbering has reached the end
    /// takes nothing more (SPEC.md 16.7). Only a damaged store, or some 16.7 million
    /// restarts with pipelined commits, gets there.
    pub(super) fn seq_room(&self) -> u64 {
        u64::MAX - self.next_seq
    }
}

/// A user the provider serves.
#[derive(Debug)]
pub(super) struct User {
    pub(super) list: DeviceList,
    pub(super) devices: HashMap<DeviceId, DeviceState>,
}

/// A group this provider orders (it is the group's sequencer, SPEC.md 20.3).
#[derive(Debug)]
pub(super) struct SeqGroup {
    pub(super) state: GroupState,
    /// The countersigned change that made `state` (answered again to a retry).
    pub(super) last: GroupChange,
}

/// Everything the provider must not lose.
#[derive(Debug, Default)]
pub(super) struct Durable {
    pub(super) users: HashMap<Address, User>,
    /// Boxed items: the queues' B-trees move their values on every insert and removal,
    /// and an `OutItem` is 232 bytes.
    pub(super) outbound: BTreeMap<Domain, BTreeMap<u64, Box<OutItem>>>,
    pub(super) next_out_seq: u64,
    /// Whether `next_out_seq` changed since it was last written (see [`Durable::store_seqs`]).
    out_seq_dirty: bool,
    /// Devices whose `next_seq` changed since it was last written.
    seq_dirty: Vec<(Address, DeviceId)>,
    pub(super) dedup: HashMap<[u8; 16], UnixMillis>,
    pub(super) dedup_by_expiry: BTreeSet<(UnixMillis, [u8; 16])>,
    /// The groups this provider is the sequencer of.
    pub(super) groups: HashMap<GroupId, SeqGroup>,
    /// Dedup entries loaded in the first record layout (key = the dedup key alone),
    /// deleted under that key when forgotten. See [`key_dedup`].
    legacy_dedup: HashSet<[u8; 16]>,
    /// Records in the store that did not decode (reported, then ignored).
    pub(super) corrupt: usize,
    /// The stored mailbox sequence epoch (SPEC.md 16.12 rule 5): raised, and made durable,
    /// before a provider delivers items whose writes are not yet durable.
    seq_epoch: u64,
    /// No mailbox hands out a `seq` below this: the loaded epoch `<< SEQ_EPOCH_SHIFT`,
    /// above every number a run that wrote an earlier epoch can have shown a device.
    seq_floor: u64,
}

/// `prefix ‖ u16 len ‖ address ‖ device`, with room for `extra` more bytes: keys are
/// built in one allocation of their exact length (a `Bytes` made from a full buffer
/// needs no second allocation).
fn key_device(prefix: &[u8], address: &Address, device: DeviceId, extra: usize) -> BytesMut {
    let a = address.as_str().as_bytes();
    let mut k = BytesMut::with_capacity(prefix.len() + 2 + a.len() + 16 + extra);
    k.put_slice(prefix);
    // Addresses are at most 318 bytes: a u16 length prefix keeps keys prefix-free.
    k.put_u16(u16::try_from(a.len()).unwrap_or(u16::MAX));
    k.put_slice(a);
    k.put_slice(device.as_bytes());
    k
}

pub(super) fn key_prekeys(address: &Address, device: DeviceId) -> Bytes {
    key_device(b"", address, device, 0).freeze()
}

pub(super) fn key_one_time(address: &Address, device: DeviceId, id: u32) -> Bytes {
    let mut k = key_device(b"", address, device, 4);
    k.put_u32(id);
    k.freeze()
}

pub(super) fn key_mail(address: &Address, device: DeviceId, seq: u64) -> Bytes {
    let mut k = key_device(b"", address, device, 8);
    k.put_u64(seq);
    k.freeze()
}

fn key_floor(address: &Address, device: DeviceId) -> Bytes {
    key_device(b"otk/", address, device, 0).freeze()
}

pub(super) fn key_seq(address: &Address, device: DeviceId) -> Bytes {
    key_device(b"seq/", address, device, 0).freeze()
}

fn key_out(domain: &Domain, seq: u64) -> Bytes {
    let d = domain.as_str().as_bytes();
    let mut k = BytesMut::with_capacity(2 + d.len() + 8);
    k.put_u16(u16::try_from(d.len()).unwrap_or(u16::MAX));
    k.put_slice(d);
    k.put_u64(seq);
    k.freeze()
}

/// `part` as a slice of `value` if `value` ends with it (an envelope is the last field
/// of its stored record), else `part` itself. Queues and mailboxes keep their envelopes
/// this way: one copy in memory, shared with the store's, and never a slice of the
/// frame the envelope arrived in (which a single long-queued envelope would keep
/// alive whole).
fn within(value: &Bytes, part: Bytes) -> Bytes {
    match value.len().checked_sub(part.len()) {
        Some(start) if !part.is_empty() && value.ends_with(&part) => value.slice(start..),
        _ => part,
    }
}

/// The store key of a dedup entry: `expiry (u64, big-endian) ‖ dedup key`, with an empty
/// value. Ordered by expiry, so new entries go to the end of the table and expired ones
/// leave from its start: a commit touches a few B-tree pages at the edges, where keys
/// ordered by the (uniformly random) dedup key alone would touch a page per entry.
/// Records of the first layout (`dedup key -> expiry`) are still read.
fn key_dedup(expiry: UnixMillis, key: &[u8; 16]) -> Bytes {
    let mut k = BytesMut::with_capacity(8 + 16);
    k.put_u64(expiry.0);
    k.put_slice(key);
    k.freeze()
}

const KEY_OUT_SEQ: &[u8] = b"out_seq";
const KEY_SEQ_EPOCH: &[u8] = b"seq_epoch";

/// Splits `u16 len ‖ text ‖ rest`.
fn split_text(key: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = key.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let text = std::str::from_utf8(rest.get(..len)?).ok()?;
    Some((text, rest.get(len..)?))
}

fn split_device(key: &[u8]) -> Option<(Address, DeviceId, &[u8])> {
    let (addr, rest) = split_text(key)?;
    let address = Address::parse_canonical(addr).ok()?;
    let device = DeviceId::from_slice(rest.get(..16)?)?;
    Some((address, device, rest.get(16..)?))
}

/// The lowest mailbox `seq` under `epoch` (SPEC.md 16.12 rule 5).
fn epoch_floor(epoch: u64) -> u64 {
    epoch
        .checked_shl(SEQ_EPOCH_SHIFT)
        .filter(|f| f >> SEQ_EPOCH_SHIFT == epoch)
        .unwrap_or(u64::MAX)
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The dedup key of one envelope copy: who sent which message to which device.
pub(super) fn dedup_key(
    sender: &Address,
    sender_device: DeviceId,
    message_id: MessageId,
    recipient: &Address,
    recipient_device: DeviceId,
) -> [u8; 16] {
    hash_key(&[
        sender.as_str().as_bytes(),
        sender_device.as_bytes(),
        message_id.as_bytes(),
        recipient.as_str().as_bytes(),
        recipient_device.as_bytes(),
    ])
}

/// A 16-byte dedup key: the first half of SHA-256 over the length-prefixed parts. Keys of
/// group items start with a tag that holds no `@`, so they never equal an envelope's.
pub(super) fn hash_key(parts: &[&[u8]]) -> [u8; 16] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for p in parts {
        hasher.update(u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
        hasher.update(p);
    }
    let h = hasher.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&h[..16]);
    out
}

impl Durable {
    /// Rebuilds the state from a store's contents. Records that do not decode are
    /// counted in `corrupt` and skipped.
    pub(super) fn load(contents: &Contents) -> Self {
        let mut d = Durable {
            next_out_seq: 1,
            ..Durable::default()
        };
        let empty = BTreeMap::new();
        let table = |t: Table| contents.get(&t).unwrap_or(&empty);
        for (k, v) in table(Table::Users) {
            let list = std::str::from_utf8(k)
                .ok()
                .and_then(|a| Address::parse_canonical(a).ok())
                .and_then(|a| DeviceList::decode_for(v.clone(), &a).ok());
            let Some(list) = list else {
                d.corrupt += 1;
                continue;
            };
            let devices = list
                .devices()
                .iter()
                .map(|c| (c.device_id(), DeviceState::new(c.clone())))
                .collect();
            d.users
                .insert(list.address().clone(), User { list, devices });
        }
        for (k, v) in table(Table::Prekeys) {
            let ok = split_device(k).and_then(|(a, dev, _)| {
                let st = d.device_mut(&a, dev)?;
                let w = wire::StoredPrekeys::decode(v.clone()).ok()?;
                st.signed = Some(SignedPrekey::decode(w.signed_prekey, &st.cert).ok()?);
                st.kem = Some(SignedPrekey::decode(w.kem_prekey, &st.cert).ok()?);
                Some(())
            });
            d.corrupt += usize::from(ok.is_none());
        }
        for (k, v) in table(Table::OneTime) {
            let ok = split_device(k).and_then(|(a, dev, rest)| {
                let id = u32::from_be_bytes(rest.try_into().ok()?);
                let st = d.device_mut(&a, dev)?;
                let p = SignedPrekey::decode(v.clone(), &st.cert).ok()?;
                (p.id() == id).then(|| st.one_time.insert(id, p))
            });
            d.corrupt += usize::from(ok.is_none());
        }
        for (k, v) in table(Table::Mailbox) {
            let ok = split_device(k).and_then(|(a, dev, rest)| {
                let seq = be_u64(rest)?;
                let item = MailItem::decode(v)?;
                let st = d.device_mut(&a, dev)?;
                if matches!(item.body, MailBody::Notice(_)) {
                    st.notices += 1;
                }
                st.mailbox.insert(seq, item);
                st.next_seq = st.next_seq.max(seq.saturating_add(1));
                Some(())
            });
            d.corrupt += usize::from(ok.is_none());
        }
        for (k, v) in table(Table::Outbound) {
            let ok = split_text(k).and_then(|(domain, rest)| {
                let domain = Domain::parse_canonical(domain).ok()?;
                let seq = be_u64(rest)?;
                let w = wire::StoredOutbound::decode(v.clone()).ok()?;
                let item = OutItem::from_stored(w)?;
                d.outbound
                    .entry(domain)
                    .or_default()
                    .insert(seq, Box::new(item));
                d.next_out_seq = d.next_out_seq.max(seq.saturating_add(1));
                Some(())
            });
            d.corrupt += usize::from(ok.is_none());
        }
        for (k, v) in table(Table::Dedup) {
            let entry = match k.len() {
                24 => be_u64(&k[..8]).zip(<[u8; 16]>::try_from(&k[8..]).ok()),
                16 => {
                    let legacy = <[u8; 16]>::try_from(k.as_ref()).ok().zip(be_u64(v));
                    legacy.map(|(key, exp)| {
                        d.legacy_dedup.insert(key);
                        (exp, key)
                    })
                }
                _ => None,
            };
            let ok = entry.map(|(exp, key)| {
                d.dedup.insert(key, UnixMillis(exp));
                d.dedup_by_expiry.insert((UnixMillis(exp), key));
            });
            d.corrupt += usize::from(ok.is_none());
        }
        for (k, v) in table(Table::Groups) {
            let ok = (|| {
                let id = GroupId::from_slice(k)?;
                let w = wire::StoredGroup::decode(v.clone()).ok()?;
                let state = GroupState::from_snapshot(&w.snapshot).ok()?;
                let last = GroupChange::decode(w.last_change).ok()?;
                let fits = state.id() == id
                    && last.hash() == state.head()
                    && last.is_sequenced()
                    && last.epoch() == state.epoch();
                fits.then(|| d.groups.insert(id, SeqGroup { state, last }))
            })();
            d.corrupt += usize::from(ok.is_none());
        }
        for (k, v) in table(Table::Meta) {
            if k.as_ref() == KEY_OUT_SEQ {
                if let Some(n) = be_u64(v) {
                    d.next_out_seq = d.next_out_seq.max(n);
                }
            } else if k.as_ref() == KEY_SEQ_EPOCH {
                match be_u64(v) {
                    Some(n) => d.seq_epoch = d.seq_epoch.max(n),
                    None => d.corrupt += 1,
                }
            } else if let Some(rest) = k.strip_prefix(b"otk/") {
                let ok = split_device(rest)
                    .zip(v.as_ref().try_into().ok().map(u32::from_be_bytes))
                    .map(|((a, dev, _), n)| {
                        if let Some(st) = d.device_mut(&a, dev) {
                            st.one_time_floor = st.one_time_floor.max(n);
                        }
                    });
                d.corrupt += usize::from(ok.is_none());
            } else if let Some(rest) = k.strip_prefix(b"seq/") {
                let ok = split_device(rest).zip(be_u64(v)).map(|((a, dev, _), n)| {
                    if let Some(st) = d.device_mut(&a, dev) {
                        st.next_seq = st.next_seq.max(n);
                    }
                });
                d.corrupt += usize::from(ok.is_none());
            } else {
                d.corrupt += 1;
            }
        }
        d.seq_floor = epoch_floor(d.seq_epoch);
        let floor = d.seq_floor;
        for st in d.users.values_mut().flat_map(|u| u.devices.values_mut()) {
            st.next_seq = st.next_seq.max(floor);
        }
        d
    }

    /// Starts the next mailbox sequence epoch: the write it pushes must be durable before
    /// any item whose own write is not is delivered (SPEC.md 16.12 rule 5). The floor does
    /// not move now: every number below it is already above those of earlier epochs, and
    /// the numbers handed out from here on stay below the floor a later load computes
    /// from the new epoch.
    pub(super) fn begin_seq_epoch(&mut self, ops: &mut Vec<StoreOp>) {
        self.seq_epoch = self.seq_epoch.saturating_add(1);
        ops.push(StoreOp::Put {
            table: Table::Meta,
            key: Bytes::from_static(KEY_SEQ_EPOCH),
            value: Bytes::copy_from_slice(&self.seq_epoch.to_be_bytes()),
        });
    }

    pub(super) fn device(&self, address: &Address, device: DeviceId) -> Option<&DeviceState> {
        self.users.get(address)?.devices.get(&device)
    }

    pub(super) fn device_mut(
        &mut self,
        address: &Address,
        device: DeviceId,
    ) -> Option<&mut DeviceState> {
        self.users.get_mut(address)?.devices.get_mut(&device)
    }

    /// Stores a (new or replacing) device list, adding and removing devices to match.
    /// Returns the devices removed.
    pub(super) fn put_list(&mut self, list: DeviceList, ops: &mut Vec<StoreOp>) -> Vec<DeviceId> {
        let address = list.address().clone();
        ops.push(StoreOp::Put {
            table: Table::Users,
            key: Bytes::copy_from_slice(address.as_str().as_bytes()),
            value: list.encoded().clone(),
        });
        let user = self.users.entry(address.clone()).or_insert_with(|| User {
            list: list.clone(),
            devices: HashMap::new(),
        });
        let removed: Vec<DeviceId> = user
            .devices
            .keys()
            .filter(|d| list.get(**d).is_none())
            .copied()
            .collect();
        for dev in &removed {
            if let Some(st) = user.devices.remove(dev) {
                ops.push(StoreOp::Delete {
                    table: Table::Prekeys,
                    key: key_prekeys(&address, *dev),
                });
                for id in st.one_time.keys() {
                    ops.push(StoreOp::Delete {
                        table: Table::OneTime,
                        key: key_one_time(&address, *dev, *id),
                    });
                }
                for seq in st.mailbox.keys() {
                    ops.push(StoreOp::Delete {
                        table: Table::Mailbox,
                        key: key_mail(&address, *dev, *seq),
                    });
                }
            }
        }
        for cert in list.devices() {
            match user.devices.get_mut(&cert.device_id()) {
                Some(st) => st.cert = cert.clone(),
                None => {
                    let mut st = DeviceState::new(cert.clone());
                    st.next_seq = st.next_seq.max(self.seq_floor);
                    user.devices.insert(cert.device_id(), st);
                }
            }
        }
        user.list = list;
        removed
    }

    pub(super) fn put_prekeys(
        &mut self,
        address: &Address,
        device: DeviceId,
        signed: SignedPrekey,
        kem: SignedPrekey,
        ops: &mut Vec<StoreOp>,
    ) {
        if let Some(st) = self.device_mut(address, device) {
            ops.push(StoreOp::Put {
                table: Table::Prekeys,
                key: key_prekeys(address, device),
                value: Bytes::from(
                    wire::StoredPrekeys {
                        signed_prekey: signed.encoded().clone(),
                        kem_prekey: kem.encoded().clone(),
                    }
                    .encode_to_vec(),
                ),
            });
            st.signed = Some(signed);
            st.kem = Some(kem);
        }
    }

    pub(super) fn add_one_time(
        &mut self,
        address: &Address,
        device: DeviceId,
        prekey: SignedPrekey,
        ops: &mut Vec<StoreOp>,
    ) {
        if let Some(st) = self.device_mut(address, device)
            && prekey.id() > st.one_time_floor
            && !st.one_time.contains_key(&prekey.id())
        {
            ops.push(StoreOp::Put {
                table: Table::OneTime,
                key: key_one_time(address, device, prekey.id()),
                value: prekey.encoded().clone(),
            });
            st.one_time.insert(prekey.id(), prekey);
        }
    }

    /// Takes the oldest one-time prekey of a device (durably deleted in the same batch).
    pub(super) fn take_one_time(
        &mut self,
        address: &Address,
        device: DeviceId,
        ops: &mut Vec<StoreOp>,
    ) -> Option<SignedPrekey> {
        let st = self.device_mut(address, device)?;
        let (id, p) = st.one_time.pop_first()?;
        st.one_time_floor = st.one_time_floor.max(id);
        ops.push(StoreOp::Delete {
            table: Table::OneTime,
            key: key_one_time(address, device, id),
        });
        ops.push(StoreOp::Put {
            table: Table::Meta,
            key: key_floor(address, device),
            value: Bytes::copy_from_slice(&st.one_time_floor.to_be_bytes()),
        });
        Some(p)
    }

    /// Appends an item to a device's mailbox; returns its sequence number.
    pub(super) fn enqueue_mail(
        &mut self,
        address: &Address,
        device: DeviceId,
        mut item: MailItem,
        ops: &mut Vec<StoreOp>,
    ) -> Option<u64> {
        let st = self.device_mut(address, device)?;
        if st.seq_room() == 0 {
            return None;
        }
        let seq = st.next_seq;
        st.next_seq = seq + 1;
        if matches!(item.body, MailBody::Notice(_)) {
            st.notices += 1;
        }
        let value = item.encode();
        if let MailBody::Envelope(e) = &mut item.body {
            *e = within(&value, std::mem::take(e));
        }
        ops.push(StoreOp::Put {
            table: Table::Mailbox,
            key: key_mail(address, device, seq),
            value,
        });
        st.mailbox.insert(seq, item);
        if !std::mem::replace(&mut st.seq_dirty, true) {
            self.seq_dirty.push((address.clone(), device));
        }
        Some(seq)
    }

    /// Deletes mailbox items of one device (acknowledged by it); `removed` is called with
    /// each `seq` that existed. The device is looked up once for all of them.
    pub(super) fn remove_mail(
        &mut self,
        address: &Address,
        device: DeviceId,
        seqs: &[u64],
        ops: &mut Vec<StoreOp>,
        mut removed: impl FnMut(u64),
    ) {
        let Some(st) = self.device_mut(address, device) else {
            return;
        };
        for &seq in seqs {
            match st.mailbox.remove(&seq) {
                None => continue,
                Some(MailItem {
                    body: MailBody::Notice(_),
                    ..
                }) => st.notices = st.notices.saturating_sub(1),
                Some(_) => {}
            }
            ops.push(StoreOp::Delete {
                table: Table::Mailbox,
                key: key_mail(address, device, seq),
            });
            removed(seq);
        }
    }

    /// Queues an envelope for a remote provider; returns its sequence number.
    pub(super) fn enqueue_out(
        &mut self,
        domain: &Domain,
        mut item: Box<OutItem>,
        ops: &mut Vec<StoreOp>,
    ) -> u64 {
        let seq = self.next_out_seq;
        self.next_out_seq = seq.saturating_add(1);
        let value = Bytes::from(item.to_stored().encode_to_vec());
        item.envelope = within(&value, item.envelope);
        ops.push(StoreOp::Put {
            table: Table::Outbound,
            key: key_out(domain, seq),
            value,
        });
        self.out_seq_dirty = true;
        // Looked up by text first: the queue almost always exists, and a `Domain` key
        // costs an allocation.
        match self.outbound.get_mut(domain.as_str()) {
            Some(q) => {
                q.insert(seq, item);
            }
            None => {
                self.outbound
                    .entry(domain.clone())
                    .or_default()
                    .insert(seq, item);
            }
        }
        seq
    }

    /// The writes of the sequence numbers advanced since the last call: one per device
    /// and one for the queues, however many items a batch added. The caller puts them in
    /// the batch that holds those items (they are what keeps a restart from reusing a
    /// `seq` whose items were all deleted, SPEC.md 16.12 rule 4).
    pub(super) fn store_seqs(&mut self, ops: &mut Vec<StoreOp>) {
        for (address, device) in std::mem::take(&mut self.seq_dirty) {
            if let Some(st) = self.device_mut(&address, device) {
                st.seq_dirty = false;
                let next = st.next_seq;
                ops.push(StoreOp::Put {
                    table: Table::Meta,
                    key: key_seq(&address, device),
                    value: Bytes::copy_from_slice(&next.to_be_bytes()),
                });
            }
        }
        if std::mem::take(&mut self.out_seq_dirty) {
            ops.push(StoreOp::Put {
                table: Table::Meta,
                key: Bytes::from_static(KEY_OUT_SEQ),
                value: Bytes::copy_from_slice(&self.next_out_seq.to_be_bytes()),
            });
        }
    }

    pub(super) fn remove_out(
        &mut self,
        domain: &Domain,
        seq: u64,
        ops: &mut Vec<StoreOp>,
    ) -> Option<Box<OutItem>> {
        let q = self.outbound.get_mut(domain)?;
        let item = q.remove(&seq)?;
        if q.is_empty() {
            self.outbound.remove(domain);
        }
        ops.push(StoreOp::Delete {
            table: Table::Outbound,
            key: key_out(domain, seq),
        });
        Some(item)
    }

    /// Stores the state of a group this provider orders, with the change that made it.
    pub(super) fn put_group(
        &mut self,
        state: GroupState,
        last: GroupChange,
        ops: &mut Vec<StoreOp>,
    ) {
        ops.push(StoreOp::Put {
            table: Table::Groups,
            key: Bytes::copy_from_slice(state.id().as_bytes()),
            value: Bytes::from(
                wire::StoredGroup {
                    snapshot: state.to_snapshot(),
                    last_change: last.encoded().clone(),
                }
                .encode_to_vec(),
            ),
        });
        self.groups.insert(state.id(), SeqGroup { state, last });
    }

    pub(super) fn seen(&self, key: &[u8; 16]) -> bool {
        self.dedup.contains_key(key)
    }

    /// Remembers a stored envelope copy; forgets the oldest beyond `max`.
    pub(super) fn remember(
        &mut self,
        key: [u8; 16],
        expiry: UnixMillis,
        max: usize,
        ops: &mut Vec<StoreOp>,
    ) {
        if self.dedup.insert(key, expiry).is_some() {
            return;
        }
        self.dedup_by_expiry.insert((expiry, key));
        ops.push(StoreOp::Put {
            table: Table::Dedup,
            key: key_dedup(expiry, &key),
            value: Bytes::new(),
        });
        while self.dedup.len() > max {
            let Some((exp, old)) = self.dedup_by_expiry.pop_first() else {
                break;
            };
            self.forget(exp, old, ops);
        }
    }

    fn forget(&mut self, expiry: UnixMillis, key: [u8; 16], ops: &mut Vec<StoreOp>) {
        self.dedup.remove(&key);
        // (Checked for emptiness first: the set is empty unless the store predates the
        // current layout, and hashing into an empty set still costs a hash.)
        let key = if !self.legacy_dedup.is_empty() && self.legacy_dedup.remove(&key) {
            Bytes::copy_from_slice(&key)
        } else {
            key_dedup(expiry, &key)
        };
        ops.push(StoreOp::Delete {
            table: Table::Dedup,
            key,
        });
    }

    /// Forgets dedup entries past their expiry.
    pub(super) fn expire_dedup(&mut self, now: UnixMillis, ops: &mut Vec<StoreOp>) {
        while let Some(&(exp, key)) = self.dedup_by_expiry.first() {
            if exp > now {
                break;
            }
            self.dedup_by_expiry.pop_first();
            self.forget(exp, key, ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dedup_ops(ops: &[StoreOp]) -> Vec<(bool, Bytes)> {
        ops.iter()
            .map(|op| match op {
                StoreOp::Put { table, key, .. } => {
                    assert_eq!(*table, Table::Dedup);
                    (true, key.clone())
                }
                StoreOp::Delete { table, key } => {
                    assert_eq!(*table, Table::Dedup);
                    (false, key.clone())
                }
            })
            .collect()
    }

    /// A queued item keeps its envelope inside the stored value, not in the frame the
    /// envelope was decoded from (see `Durable::enqueue_out`).
    #[test]
    fn queued_envelopes_share_their_stored_value() {
        let frame = Bytes::from(vec![0x5a; 4096]);
        let envelope = frame.slice(1000..1549);
        let inside = |part: &Bytes, whole: &Bytes| {
            let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
            p >= w && p + part.len() <= w + whole.len()
        };
        let item = OutItem {
            accepted: UnixMillis(5),
            envelope: envelope.clone(),
            group: None,
            sender: Address::parse("a@one.example").unwrap(),
            sender_device: DeviceId::from_slice(&[1; 16]).unwrap(),
            recipient: Address::parse("b@two.example").unwrap(),
            recipient_device: DeviceId::from_slice(&[2; 16]).unwrap(),
            message_id: MessageId::from_slice(&[3; 16]).unwrap(),
        };
        let domain = Domain::parse("two.example").unwrap();
        let mut d = Durable::default();
        let mut ops = Vec::new();
        let seq = d.enqueue_out(&domain, Box::new(item), &mut ops);
        let Some(StoreOp::Put { value, .. }) = ops.first() else {
            panic!("no put: {ops:?}");
        };
        let kept = &d.outbound[&domain][&seq].envelope;
        assert_eq!(*kept, envelope);
        assert!(!inside(kept, &frame));
        assert!(inside(kept, value));
        // Anything that is not the value's tail is kept as it is.
        assert_eq!(within(value, Bytes::from_static(b"other")), &b"other"[..]);
        assert!(within(value, Bytes::new()).is_empty());
    }

    /// Dedup keys are stored, so their function never changes: the first half of SHA-256
    /// over the parts, each after its length as a big-endian u32.
    #[test]
    fn hash_key_is_sha256_of_length_prefixed_parts() {
        let parts: [&[u8]; 3] = [b"alice@one.example", b"", &[7u8; 16]];
        let mut framed = Vec::new();
        for p in parts {
            framed.extend_from_slice(&u32::try_from(p.len()).unwrap().to_be_bytes());
            framed.extend_from_slice(p);
        }
        let want = crate::crypto::sha256(&framed);
        assert_eq!(hash_key(&parts), want[..16]);
        // Moving bytes between parts changes the key.
        let moved: [&[u8]; 3] = [b"alice@one.exampl", b"e", &[7u8; 16]];
        assert_ne!(hash_key(&moved), hash_key(&parts));
        assert_eq!(
            hex::encode(hash_key(&[b"a", b"bc"])),
            hex::encode(&crate::crypto::sha256(b"\0\0\0\x01a\0\0\0\x02bc")[..16])
        );
    }

    /// Dedup records are keyed by expiry first; records of the first layout still load
    /// and are deleted under their own key.
    #[test]
    fn dedup_records_both_layouts() {
        let legacy = [1u8; 16];
        let current = [2u8; 16];
        let mut contents = Contents::new();
        let t = contents.entry(Table::Dedup).or_default();
        t.insert(
            Bytes::copy_from_slice(&legacy),
            Bytes::copy_from_slice(&10u64.to_be_bytes()),
        );
        t.insert(key_dedup(UnixMillis(20), &current), Bytes::new());
        t.insert(Bytes::from_static(b"garbage"), Bytes::new());
        let mut d = Durable::load(&contents);
        assert_eq!(d.corrupt, 1);
        assert!(d.seen(&legacy) && d.seen(&current));

        let mut ops = Vec::new();
        d.remember([3u8; 16], UnixMillis(30), MAX, &mut ops);
        assert_eq!(
            dedup_ops(&ops),
            vec![(true, key_dedup(UnixMillis(30), &[3u8; 16]))]
        );
        // Keys sort by expiry, whatever the dedup key.
        assert!(key_dedup(UnixMillis(20), &[0xff; 16]) < key_dedup(UnixMillis(30), &[0; 16]));

        let mut ops = Vec::new();
        d.expire_dedup(UnixMillis(25), &mut ops);
        assert_eq!(
            dedup_ops(&ops),
            vec![
                (false, Bytes::copy_from_slice(&legacy)),
                (false, key_dedup(UnixMillis(20), &current)),
            ]
        );
        assert!(!d.seen(&legacy) && !d.seen(&current) && d.seen(&[3u8; 16]));
    }

    const MAX: usize = 10;
}
