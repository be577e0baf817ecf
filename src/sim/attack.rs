//! The malicious-provider mode: one provider tampers with what it sends its users.
//! Every attack must be detected by the victims or be harmless (SPEC.md 16.13).

use std::collections::HashSet;

use bytes::Bytes;
use prost::Message;
use rand_core::{CryptoRng, SeedableRng};

use crate::address::{Address, Domain};
use crate::client::IncomingMessage;
use crate::envelope::{self, Content, MessageId, Outgoing, Text};
use crate::identity::{
    Device, DeviceCertificate, DeviceId, DeviceKeyPair, DeviceList, IdentityKeyPair,
};
use crate::protocol;
use crate::session::Account;
use crate::time::UnixMillis;
use crate::wire::{self, frame::Body};

/// What the malicious provider does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attack {
    /// Delivers envelopes its users already received again, under new sequence numbers.
    /// Harmless: devices drop replays end to end.
    Replay,
    /// Silently drops a third of the envelopes for its users (and never stops).
    /// Detected: recipients are told of sequence gaps, senders get no receipts.
    Drop,
    /// Delivers envelopes in reverse order. Harmless.
    Reorder,
    /// Injects envelopes claiming to come from other users: some sealed by a device it
    /// certified itself, some real ones with the sender rewritten. Detected: rejected.
    ForgeSender,
    /// Answers bundle fetches with bundles of a device it made up, keeping the real
    /// device list. Detected: the device is not on the user's signed list.
    SwapBundles,
    /// Answers fetches with a device list under an identity key it made up, and bundles
    /// to match. Detected: the app is told the identity changed (or, at first contact,
    /// the fingerprint does not verify).
    SwapIdentity,
    /// Adds a device of its own to device lists it hands out. Detected: the list's
    /// signature no longer verifies.
    AddDevice,
}

impl Attack {
    /// Every attack.
    pub const ALL: &'static [Attack] = &[
        Attack::Replay,
        Attack::Drop,
        Attack::Reorder,
        Attack::ForgeSender,
        Attack::SwapBundles,
        Attack::SwapIdentity,
        Attack::AddDevice,
    ];
}

const FORGED_TEXT: &str = "forged-by-provider";

/// The attacker's state.
pub(super) struct Attacker<R: CryptoRng> {
    pub(super) attack: Attack,
    identity: IdentityKeyPair,
    rng: R,
    domain: Domain,
    seen: Vec<Bytes>,
    held: std::collections::HashMap<Option<DeviceId>, Bytes>,
    next_seq: u64,
    frames: u64,
    /// Devices the attacker made up (to check nothing was ever sealed to them unnoticed).
    pub(super) fake_devices: HashSet<DeviceId>,
    /// How many tamperings it made.
    pub(super) acted: u64,
}

impl<R: CryptoRng + SeedableRng<Seed = [u8; 32]>> Attacker<R> {
    pub(super) fn new(attack: Attack, rng: &mut R, domain: &Domain) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut own = R::from_seed(seed);
        Self {
            attack,
            identity: IdentityKeyPair::generate(&mut own),
            rng: own,
            domain: domain.clone(),
            seen: Vec::new(),
            held: std::collections::HashMap::new(),
            next_seq: 1 << 62,
            frames: 0,
            fake_devices: HashSet::new(),
            acted: 0,
        }
    }

    /// Whether an app-visible message is one the attacker made.
    pub(super) fn is_forged(&self, m: &IncomingMessage) -> bool {
        matches!(&m.content, Content::Text(t) if t.body == FORGED_TEXT)
            || self.fake_devices.contains(&m.sender_device)
    }

    /// A device under the attacker's identity claiming to belong to `address`.
    fn fake_device(&mut self, address: &Address, now: UnixMillis) -> Option<Device> {
        let d = Device::new(
            &self.identity,
            address.clone(),
            DeviceKeyPair::generate(&mut self.rng),
            now.saturating_sub(3_600_000),
            now.saturating_add(365 * 24 * 3_600_000),
        )
        .ok()?;
        self.fake_devices.insert(d.id());
        Some(d)
    }

    /// A made-up device list and bundles for `address`.
    fn fake_account(&mut self, address: &Address, now: UnixMillis) -> Option<(Bytes, Bytes)> {
        let d = self.fake_device(address, now)?;
        let list = DeviceList::sign(
            &self.identity,
            address,
            1 << 40,
            now,
            &[d.certificate().clone()],
        )
        .ok()?;
        let mut account = Account::new(d, list.clone(), now, &mut self.rng).ok()?;
        account.replenish_prekeys(now, &mut self.rng);
        let bundle = account.prekey_bundle(None).ok()?.encode();
        Some((list.encoded().clone(), bundle))
    }

    /// `recipient` is the certificate of the device the frame goes to (if a device).
    pub(super) fn tamper(
        &mut self,
        bytes: Bytes,
        now: UnixMillis,
        recipient: Option<&DeviceCertificate>,
    ) -> Vec<Bytes> {
        let Ok(body) = protocol::decode(&bytes) else {
            return vec![bytes];
        };
        self.frames += 1;
        let changed = match (self.attack, body) {
            (Attack::Replay, Body::Deliver(mut d)) => {
                for item in &d.items {
                    if let Some(wire::mailbox_item::Item::Envelope(e)) = &item.item
                        && self.seen.len() < 64
                    {
                        self.seen.push(e.clone());
                    }
                }
                if self.frames.is_multiple_of(2) {
                    for e in self.seen.iter().take(3) {
                        if d.items.len() >= crate::limits::MAX_DELIVER_ITEMS {
                            break;
                        }
                        self.next_seq += 1;
                        d.items.push(wire::MailboxItem {
                            seq: self.next_seq,
                            item: Some(wire::mailbox_item::Item::Envelope(e.clone())),
                        });
                        self.acted += 1;
                    }
                }
                Some(Body::Deliver(d))
            }
            (Attack::Drop, Body::Deliver(mut d)) => {
                let before = d.items.len();
                d.items.retain(|i| match &i.item {
                    Some(wire::mailbox_item::Item::Envelope(e)) => {
                        !crate::crypto::sha256(e)[0].is_multiple_of(3)
                    }
                    _ => true,
                });
                self.acted += (before - d.items.len()) as u64;
                Some(Body::Deliver(d))
            }
            (Attack::Reorder, Body::Deliver(mut d)) => {
                // Reverse within the frame, and hold each frame back until the next
                // one for the same device has gone out.
                d.items.reverse();
                let this = protocol::encode(Body::Deliver(d));
                let key = recipient.map(|c| c.device_id());
                return match self.held.remove(&key) {
                    Some(prev) => {
                        self.acted += 1;
                        vec![this, prev]
                    }
                    None => {
                        self.held.insert(key, this);
                        vec![]
                    }
                };
            }
            (Attack::ForgeSender, Body::Deliver(mut d)) => {
                let mut extra = Vec::new();
                for item in &d.items {
                    let Some(wire::mailbox_item::Item::Envelope(e)) = &item.item else {
                        continue;
                    };
                    // A real envelope with its sender rewritten.
                    if let Some(forged) = rewrite_sender(e) {
                        extra.push(forged);
                    }
                    // A new envelope from a device the provider certified itself,
                    // claiming to be the real sender.
                    if let (Some(cert), Ok(env)) =
                        (recipient, envelope::UnverifiedEnvelope::decode(e.clone()))
                    {
                        let sender = env.claimed_header().sender.clone();
                        if let Some(dev) = self.fake_device(&sender, now) {
                            let content = Content::Text(Text::plain(FORGED_TEXT));
                            let msg = Outgoing {
                                recipient: cert,
                                message_id: MessageId::random(&mut self.rng),
                                timestamp: now,
                                content: &content,
                            };
                            if let Ok(b) = envelope::seal(&dev, &msg, &mut self.rng) {
                                extra.push(b);
                            }
                        }
                    }
                }
                for e in extra.into_iter().take(crate::limits::MAX_DELIVER_ITEMS) {
                    if d.items.len() >= crate::limits::MAX_DELIVER_ITEMS {
                        break;
                    }
                    self.next_seq += 1;
                    self.acted += 1;
                    d.items.push(wire::MailboxItem {
                        seq: self.next_seq,
                        item: Some(wire::mailbox_item::Item::Envelope(e)),
                    });
                }
                Some(Body::Deliver(d))
            }
            (Attack::SwapBundles | Attack::SwapIdentity, Body::Response(mut r)) => {
                match &mut r.body {
                    Some(wire::response::Body::Bundles(b)) => {
                        let address = list_address(&b.device_list);
                        if let Some(address) = address
                            && let Some((list, bundle)) = self.fake_account(&address, now)
                        {
                            if self.attack == Attack::SwapIdentity {
                                b.device_list = list;
                            }
                            b.bundles = vec![bundle];
                            self.acted += 1;
                        }
                    }
                    Some(wire::response::Body::DeviceList(l))
                        if self.attack == Attack::SwapIdentity =>
                    {
                        if let Some(address) = list_address(&l.device_list)
                            && let Some((list, _)) = self.fake_account(&address, now)
                        {
                            l.device_list = list;
                            self.acted += 1;
                        }
                    }
                    _ => {}
                }
                Some(Body::Response(r))
            }
            (Attack::AddDevice, Body::Response(mut r)) => {
                let list = match &mut r.body {
                    Some(wire::response::Body::Bundles(b)) => Some(&mut b.device_list),
                    Some(wire::response::Body::DeviceList(l)) => Some(&mut l.device_list),
                    _ => None,
                };
                if let Some(list) = list
                    && let Some(address) = list_address(list)
                    && let Some(dev) = self.fake_device(&address, now)
                    && let Some(tampered) = add_device(list, dev.certificate().encoded())
                {
                    *list = tampered;
                    self.acted += 1;
                }
                Some(Body::Response(r))
            }
            _ => None,
        };
        match changed {
            Some(body) => vec![protocol::encode(body)],
            None => vec![bytes],
        }
    }
}

impl<R: CryptoRng> Attacker<R> {
    /// The malicious provider's domain.
    pub(super) fn domain(&self) -> &Domain {
        &self.domain
    }
}

fn list_address(list: &Bytes) -> Option<Address> {
    let outer = wire::DeviceList::decode(list.clone()).ok()?;
    let body = wire::DeviceListBody::decode(outer.body).ok()?;
    Address::parse_canonical(&body.address).ok()
}

/// The same list with one more certificate, the identity key's signature kept.
fn add_device(list: &Bytes, cert: &Bytes) -> Option<Bytes> {
    let mut outer = wire::DeviceList::decode(list.clone()).ok()?;
    let mut body = wire::DeviceListBody::decode(outer.body.clone()).ok()?;
    body.devices.push(cert.clone());
    outer.body = Bytes::from(body.encode_to_vec());
    Some(Bytes::from(outer.encode_to_vec()))
}

/// A real envelope whose header claims another sender; the signature stays.
fn rewrite_sender(envelope: &Bytes) -> Option<Bytes> {
    let mut outer = wire::Envelope::decode(envelope.clone()).ok()?;
    let mut header = wire::EnvelopeHeader::decode(outer.header.clone()).ok()?;
    let at = header.sender.find('@')?;
    header.sender = format!("forged{}", &header.sender[at..]);
    outer.header = Bytes::from(header.encode_to_vec());
    Some(Bytes::from(outer.encode_to_vec()))
}
