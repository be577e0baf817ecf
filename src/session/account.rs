//! One device's end-to-end state: its prekeys, its sessions with every device of its
//! contacts and of its own user, and the signed device lists that say who those
//! devices are (SPEC.md 15.5–15.7).

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use rand_core::CryptoRng;

use super::{
    PrekeyBundle, PrekeyStore, RatchetHeader, Session, SessionError, initiate, message_keys,
    respond,
};
use crate::address::Address;
use crate::envelope::{
    self, CertificateDirectory, Content, MessageId, PayloadHeader, ReplayWindow, SessionHeader,
    UnverifiedEnvelope,
};
use crate::identity::{
    Device, DeviceCertificate, DeviceEvent, DeviceId, DeviceList, DeviceLists, IdentityKey,
};
use crate::limits::MAX_SESSIONS_PER_PEER_DEVICE;
use crate::time::UnixMillis;

/// One sealed envelope for one recipient device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingEnvelope {
    /// The recipient user.
    pub recipient: Address,
    /// The recipient device.
    pub device: DeviceId,
    /// The encoded envelope.
    pub envelope: Bytes,
}

/// A message sealed for every device that must receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The message id, shared by all copies.
    pub message_id: MessageId,
    /// One envelope per recipient device (the recipient's devices and the sender's other
    /// devices).
    pub envelopes: Vec<OutgoingEnvelope>,
    /// Listed devices not sent to because their certificates are not valid now.
    pub skipped: Vec<(Address, DeviceId)>,
}

/// Something the application should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
// Events are rare and short-lived; boxing the device event would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum AccountEvent {
    /// A device list change of a contact or of this user.
    Device(DeviceEvent),
    /// Fewer one-time prekeys remain than the low watermark: replenish and publish.
    PrekeysLow {
        /// How many remain.
        remaining: usize,
    },
    /// A new session was set up by a peer device.
    SessionStarted {
        /// The peer user.
        address: Address,
        /// The peer device.
        device: DeviceId,
    },
}

/// A received, authenticated, decrypted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The conversation this message belongs to: the sender, or, for a copy of a message
    /// this user sent from another of its devices, the user it was sent to.
    pub conversation: Address,
    /// The sender (authenticated by the sender device's signature and certificate).
    pub sender: Address,
    /// The sender device.
    pub sender_device: DeviceId,
    /// The identity key that certified the sender device.
    pub sender_identity: IdentityKey,
    /// The message id.
    pub message_id: MessageId,
    /// The sender's timestamp.
    pub timestamp: UnixMillis,
    /// The content.
    pub content: Content,
    /// The sender device's sequence number in this session (`None` for one-shot
    /// envelopes).
    pub sequence: Option<u64>,
    /// Sequence numbers this message revealed as missing (sent earlier, not received
    /// yet): the provider dropped, delayed or reordered them.
    pub missing: Vec<u64>,
    /// Other things that happened while receiving.
    pub events: Vec<AccountEvent>,
}

/// A summary of one session, for display and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The identity key that certified the peer device when the session was made.
    pub peer_identity: IdentityKey,
    /// When the session was made.
    pub created: UnixMillis,
    /// Messages sent on it (the last sequence number used).
    pub sent: u64,
    /// The highest sequence number received on it.
    pub highest_received: u64,
    /// Sequence numbers below that not received yet.
    pub missing: usize,
    /// Whether this side set it up and has not had a reply yet.
    pub awaiting_reply: bool,
}

/// One device's sessions and keys. See the module documentation.
pub struct Account {
    pub(crate) device: Device,
    pub(crate) prekeys: PrekeyStore,
    pub(crate) own_list: DeviceList,
    pub(crate) contacts: DeviceLists,
    /// Sessions per peer device, the one to send on first.
    pub(crate) sessions: BTreeMap<(Address, DeviceId), Vec<Session>>,
    pub(crate) replay: ReplayWindow,
    /// The groups this device holds (SPEC.md 20.5), kept here so the state blob carries
    /// them.
    pub(crate) groups: crate::group::DeviceGroups,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("device", &self.device)
            .field("sessions", &self.sessions.len())
            .field("contacts", &self.contacts.len())
            .finish_non_exhaustive()
    }
}

/// Certificates of this user's own devices and of every contact's listed devices.
struct Directory<'a> {
    own: &'a DeviceList,
    contacts: &'a DeviceLists,
}

impl CertificateDirectory for Directory<'_> {
    fn device_certificate(
        &self,
        address: &Address,
        device: DeviceId,
    ) -> Option<&DeviceCertificate> {
        if address == self.own.address() {
            self.own.get(device)
        } else {
            self.contacts.device_certificate(address, device)
        }
    }
}

impl Account {
    /// An account for `device`, whose user's signed device list `own_list` must list it.
    pub fn new<R: CryptoRng + ?Sized>(
        device: Device,
        own_list: DeviceList,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Self, SessionError> {
        if own_list.address() != device.address()
            || own_list.get(device.id()) != Some(device.certificate())
        {
            return Err(SessionError::NotOnDeviceList);
        }
        let prekeys = PrekeyStore::new(&device, now, rng);
        Ok(Self {
            device,
            prekeys,
            own_list,
            contacts: DeviceLists::new(),
            sessions: BTreeMap::new(),
            replay: ReplayWindow::default(),
            groups: crate::group::DeviceGroups::default(),
        })
    }

    #[cfg(test)]
    pub(crate) fn from_parts_for_vectors(
        device: Device,
        prekeys: PrekeyStore,
        own_list: DeviceList,
    ) -> Self {
        Self {
            device,
            prekeys,
            own_list,
            contacts: DeviceLists::new(),
            sessions: BTreeMap::new(),
            replay: ReplayWindow::default(),
            groups: crate::group::DeviceGroups::default(),
        }
    }

    /// This device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The groups this device holds (SPEC.md 20.5), their current states.
    pub fn groups(&self) -> impl Iterator<Item = &crate::group::GroupState> + '_ {
        self.groups.records.values().map(|r| &r.state)
    }

    /// This device's prekeys (to publish, replenish, rotate).
    pub fn prekeys(&self) -> &PrekeyStore {
        &self.prekeys
    }

    /// Tops up the one-time prekeys; returns the new ones to publish.
    pub fn replenish_prekeys<R: CryptoRng + ?Sized>(
        &mut self,
        now: UnixMillis,
        rng: &mut R,
    ) -> Vec<super::SignedPrekey> {
        self.prekeys.replenish(&self.device, now, rng)
    }

    /// Makes `count` new one-time prekeys even if the local pool is full, deleting the
    /// oldest beyond [`MAX_ONE_TIME_PREKEYS`](crate::limits::MAX_ONE_TIME_PREKEYS); returns
    /// the new ones to publish. See [`PrekeyStore::mint_one_time`].
    pub fn mint_one_time_prekeys<R: CryptoRng + ?Sized>(
        &mut self,
        count: usize,
        now: UnixMillis,
        rng: &mut R,
    ) -> Vec<super::SignedPrekey> {
        self.prekeys.mint_one_time(&self.device, count, now, rng)
    }

    /// Rotates the signed and ML-KEM prekeys and purges expired ones.
    pub fn rotate_prekeys<R: CryptoRng + ?Sized>(&mut self, now: UnixMillis, rng: &mut R) {
        self.prekeys.rotate(&self.device, now, rng);
        self.prekeys.purge(now);
    }

    /// A bundle of this device's prekeys with the given one-time prekey, as its provider
    /// would hand out.
    pub fn prekey_bundle(&self, one_time: Option<u32>) -> Result<PrekeyBundle, SessionError> {
        Ok(self.prekeys.bundle(&self.device, one_time)?)
    }

    /// This user's own signed device list.
    pub fn own_device_list(&self) -> &DeviceList {
        &self.own_list
    }

    /// The contacts' device lists.
    pub fn contacts(&self) -> &DeviceLists {
        &self.contacts
    }

    /// Accepts a device list, of a contact or of this user, and reports what changed.
    /// Sessions with devices no longer listed are deleted: they are never sent to again.
    pub fn update_device_list(
        &mut self,
        list: DeviceList,
    ) -> Result<Vec<AccountEvent>, SessionError> {
        let events = if list.address() == self.own_list.address() {
            self.update_own_list(list)?
        } else {
            self.contacts.update(list)?
        };
        self.drop_unlisted_sessions();
        Ok(events.into_iter().map(AccountEvent::Device).collect())
    }

    fn update_own_list(&mut self, list: DeviceList) -> Result<Vec<DeviceEvent>, SessionError> {
        use crate::identity::DeviceListError;
        if list.identity_key() != self.own_list.identity_key()
            || list.serial() <= self.own_list.serial()
        {
            return Err(SessionError::DeviceList(DeviceListError::Stale {
                serial: list.serial(),
                current: self.own_list.serial(),
            }));
        }
        if list.get(self.device.id()) != Some(self.device.certificate()) {
            return Err(SessionError::NotOnDeviceList);
        }
        let address = list.address().clone();
        let mut events: Vec<DeviceEvent> = list
            .device_ids()
            .filter(|d| !self.own_list.contains(*d))
            .map(|device| DeviceEvent::DeviceAdded {
                address: address.clone(),
                device,
            })
            .collect();
        events.extend(
            self.own_list
                .device_ids()
                .filter(|d| !list.contains(*d))
                .map(|device| DeviceEvent::DeviceRemoved {
                    address: address.clone(),
                    device,
                }),
        );
        self.own_list = list;
        Ok(events)
    }

    fn directory(&self) -> Directory<'_> {
        Directory {
            own: &self.own_list,
            contacts: &self.contacts,
        }
    }

    fn drop_unlisted_sessions(&mut self) {
        let own = &self.own_list;
        let contacts = &self.contacts;
        let dir = Directory { own, contacts };
        self.sessions
            .retain(|(addr, dev), _| dir.device_certificate(addr, *dev).is_some());
    }

    /// The devices that a message to `to` must reach: every device on `to`'s signed list
    /// and this user's other devices.
    pub fn recipients(&self, to: &Address) -> Result<Vec<DeviceCertificate>, SessionError> {
        let certs = self
            .contacts
            .recipients_for(&self.own_list, self.device.id(), to)
            .ok_or_else(|| SessionError::UnknownRecipient(to.clone()))?;
        Ok(certs.into_iter().cloned().collect())
    }

    /// Whether a session with this peer device can send.
    fn can_send_to(&self, peer: &(Address, DeviceId)) -> bool {
        self.sessions
            .get(peer)
            .is_some_and(|v| v.iter().any(|s| s.ratchet.can_send()))
    }

    /// Devices among the recipients of `to` with which no session can send yet: fetch
    /// their prekey bundles and pass them to [`add_bundle`](Self::add_bundle).
    pub fn missing_sessions(&self, to: &Address) -> Result<Vec<(Address, DeviceId)>, SessionError> {
        Ok(self
            .recipients(to)?
            .iter()
            .map(|c| (c.address().clone(), c.device_id()))
            .filter(|k| !self.can_send_to(k))
            .collect())
    }

    /// Starts a session from a prekey bundle. The bundle's device must be on its user's
    /// current signed device list with the same certificate: a provider cannot slip in a
    /// device of its own.
    pub fn add_bundle<R: CryptoRng + ?Sized>(
        &mut self,
        bundle: &PrekeyBundle,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<(), SessionError> {
        let cert = bundle.certificate();
        let listed = self
            .directory()
            .device_certificate(cert.address(), cert.device_id())
            == Some(cert);
        if !listed
            || (cert.address() == self.device.address() && cert.device_id() == self.device.id())
        {
            return Err(SessionError::NotOnDeviceList);
        }
        let session = initiate(&self.device, bundle, now, rng)?;
        self.insert_session((cert.address().clone(), cert.device_id()), session);
        Ok(())
    }

    fn insert_session(&mut self, key: (Address, DeviceId), session: Session) {
        let list = self.sessions.entry(key).or_default();
        list.insert(0, session);
        list.truncate(MAX_SESSIONS_PER_PEER_DEVICE);
    }

    /// Encrypts `content` for every device of `to` and this user's other devices. Fails
    /// with [`SessionError::NeedBundles`] (changing nothing) if any of them has no
    /// session yet.
    pub fn encrypt<R: CryptoRng + ?Sized>(
        &mut self,
        to: &Address,
        content: &Content,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Sent, SessionError> {
        self.encrypt_inner(to, content, None, &[], now, rng)
    }

    /// Like [`encrypt`](Self::encrypt), but with a message id the caller chose (a client
    /// hands it to its app before the message can be sealed), and leaving out the
    /// devices in `skip` (those it could not get a prekey bundle for): they are reported
    /// in [`Sent::skipped`] with the devices whose certificates are not valid now. If
    /// every device of `to` is left out, nothing is sent
    /// ([`SealError::RecipientCertificateNotValid`](envelope::SealError::RecipientCertificateNotValid)).
    pub fn encrypt_with_id<R: CryptoRng + ?Sized>(
        &mut self,
        to: &Address,
        content: &Content,
        message_id: MessageId,
        skip: &[(Address, DeviceId)],
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Sent, SessionError> {
        self.encrypt_inner(to, content, Some(message_id), skip, now, rng)
    }

    fn encrypt_inner<R: CryptoRng + ?Sized>(
        &mut self,
        to: &Address,
        content: &Content,
        message_id: Option<MessageId>,
        skip: &[(Address, DeviceId)],
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Sent, SessionError> {
        if !self.device.certificate().is_valid_at(now) {
            return Err(envelope::SealError::SenderCertificateNotValid(now).into());
        }
        // Devices whose certificates are not valid now are skipped (and reported), not
        // sent to; if none of the recipient's devices is valid, nothing is sent.
        let (recipients, skipped): (Vec<_>, Vec<_>) =
            self.recipients(to)?.into_iter().partition(|c| {
                c.is_valid_at(now)
                    && !skip
                        .iter()
                        .any(|(a, d)| a == c.address() && *d == c.device_id())
            });
        if to != self.device.address() && !recipients.iter().any(|c| c.address() == to) {
            return Err(envelope::SealError::RecipientCertificateNotValid(now).into());
        }
        let missing: Vec<_> = recipients
            .iter()
            .map(|c| (c.address().clone(), c.device_id()))
            .filter(|k| !self.can_send_to(k))
            .collect();
        if !missing.is_empty() {
            return Err(SessionError::NeedBundles(missing));
        }
        // The recipient's devices get the content as is; this user's other devices also
        // learn whom it was for (SPEC.md 15.7).
        let plaintext =
            zeroize::Zeroizing::new(content.encode_padded().map_err(envelope::SealError::from)?);
        let own_copy = if to == self.device.address()
            || !recipients
                .iter()
                .any(|c| c.address() == self.device.address())
        {
            None
        } else {
            Some(zeroize::Zeroizing::new(
                content
                    .encode_padded_sent_to(Some(to))
                    .map_err(envelope::SealError::from)?,
            ))
        };
        let message_id = message_id.unwrap_or_else(|| MessageId::random(rng));
        let mut envelopes = Vec::with_capacity(recipients.len());
        for cert in &recipients {
            let key = (cert.address().clone(), cert.device_id());
            let session = self
                .sessions
                .get_mut(&key)
                .and_then(|v| v.iter_mut().find(|s| s.ratchet.can_send()))
                .ok_or_else(|| SessionError::NeedBundles(vec![key.clone()]))?;
            let Some(seq) = session.send_seq.checked_add(1) else {
                return Err(SessionError::ChainExhausted);
            };
            let (rh, mk) = session.ratchet.next_send()?;
            session.send_seq = seq;
            let header = SessionHeader {
                ratchet_key: rh.dh,
                previous_chain_length: rh.pn,
                message_number: rh.n,
                sequence: session.send_seq,
                setup: session.setup.clone(),
            };
            let body = match &own_copy {
                Some(own) if cert.address() == self.device.address() => own,
                _ => &plaintext,
            };
            let bytes = envelope::seal_session(
                &self.device,
                cert.address(),
                cert.device_id(),
                message_id,
                now,
                header,
                body,
                |id| message_keys(&mk, id.as_bytes()),
            )?;
            envelopes.push(OutgoingEnvelope {
                recipient: key.0,
                device: key.1,
                envelope: bytes,
            });
        }
        Ok(Sent {
            message_id,
            envelopes,
            skipped: skipped
                .into_iter()
                .map(|c| (c.address().clone(), c.device_id()))
                .collect(),
        })
    }

    /// Opens an envelope addressed to this device: one-shot or session. Checks, in order,
    /// everything [`envelope::open`] checks, then (for session payloads) the session
    /// setup and the ratchet. On any error nothing changes.
    pub fn decrypt<R: CryptoRng + ?Sized>(
        &mut self,
        bytes: Bytes,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Received, SessionError> {
        let env = UnverifiedEnvelope::decode(bytes)?;
        let h = env.claimed_header();
        let directory = self.directory();
        let cert = directory
            .device_certificate(&h.sender, h.sender_device)
            .ok_or(envelope::OpenError::UnknownSender)?;
        let verified = env.verify(cert)?;
        self.receive_verified(verified, now, rng)
    }

    /// Opens a backlog of envelopes: like [`decrypt`](Self::decrypt) for each, in input
    /// order, but with the envelope signatures checked by batch verification
    /// ([`envelope::verify_batch`]), which roughly halves their cost. A device coming
    /// online to hundreds of queued messages should use this.
    pub fn decrypt_batch<R: CryptoRng + ?Sized>(
        &mut self,
        envelopes: &[Bytes],
        now: UnixMillis,
        rng: &mut R,
    ) -> Vec<Result<Received, SessionError>> {
        let verified = envelope::verify_batch(envelopes, &self.directory());
        verified
            .into_iter()
            .map(|v| self.receive_verified(v?, now, rng))
            .collect()
    }

    /// Everything after the signature check: recipient, freshness, session or one-shot
    /// decryption. Changes nothing on error.
    fn receive_verified<R: CryptoRng + ?Sized>(
        &mut self,
        verified: envelope::VerifiedEnvelope,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Received, SessionError> {
        let h = verified.header();
        let cert = self
            .directory()
            .device_certificate(&h.sender, h.sender_device)
            .ok_or(envelope::OpenError::UnknownSender)?
            .clone();
        verified.check_recipient(&self.device)?;
        let header = verified.header().clone();
        let session_header = match &header.payload {
            PayloadHeader::OneShot { .. } => {
                let opened = verified.decrypt(&self.device)?;
                self.replay.accept(&opened.header, now)?;
                return Ok(Received {
                    conversation: header.sender.clone(),
                    sender: header.sender,
                    sender_device: header.sender_device,
                    sender_identity: opened.sender_identity,
                    message_id: header.message_id,
                    timestamp: header.timestamp,
                    content: opened.content,
                    sequence: None,
                    missing: Vec::new(),
                    events: Vec::new(),
                });
            }
            PayloadHeader::Session(sh) => sh.clone(),
        };
        self.replay.check(&header, now)?;
        let rh = RatchetHeader {
            dh: session_header.ratchet_key,
            pn: session_header.previous_chain_length,
            n: session_header.message_number,
        };
        let message_id = header.message_id;
        let open =
            |mk: &crate::crypto::Secret<32>| -> Result<(Content, Option<Address>), SessionError> {
                let (key, nonce) = message_keys(mk, message_id.as_bytes());
                let plaintext = verified
                    .decrypt_session(&key, &nonce)
                    .ok_or(SessionError::DecryptFailed)?;
                Content::decode_with_sent_to(&plaintext).map_err(SessionError::Content)
            };
        let peer = (header.sender.clone(), header.sender_device);
        let mut events = Vec::new();

        let existing = self.sessions.get(&peer).map(Vec::len).unwrap_or(0);
        let by_base = session_header.setup.as_ref().and_then(|s| {
            self.sessions
                .get(&peer)?
                .iter()
                .position(|x| x.base_key == s.base_key)
        });
        let (index, content) = match (&session_header.setup, by_base) {
            (Some(setup), None) => {
                // A new session set up by the peer.
                let mut session = respond(&self.device, &self.prekeys, &cert, setup, now)?;
                let content = session.ratchet.receive(&rh, now, rng, open)?;
                self.prekeys.record_setup(
                    setup.signed_prekey_id,
                    setup.base_key,
                    setup.one_time_prekey_id,
                );
                self.insert_session(peer.clone(), session);
                events.push(AccountEvent::SessionStarted {
                    address: peer.0.clone(),
                    device: peer.1,
                });
                if self.prekeys.needs_replenish() {
                    events.push(AccountEvent::PrekeysLow {
                        remaining: self.prekeys.one_time_count(),
                    });
                }
                (0, content)
            }
            (_, Some(i)) => {
                let session = self
                    .sessions
                    .get_mut(&peer)
                    .and_then(|v| v.get_mut(i))
                    .ok_or(SessionError::NoSession)?;
                (i, session.ratchet.receive(&rh, now, rng, open)?)
            }
            (None, None) => {
                if existing == 0 {
                    return Err(SessionError::NoSession);
                }
                let sessions = self
                    .sessions
                    .get_mut(&peer)
                    .ok_or(SessionError::NoSession)?;
                let mut result = Err(SessionError::DecryptFailed);
                for (i, s) in sessions.iter_mut().enumerate() {
                    match s.ratchet.receive(&rh, now, rng, open) {
                        Ok(c) => {
                            result = Ok((i, c));
                            break;
                        }
                        // The AEAD accepted the message under this session but its
                        // content is invalid: that is the answer, whatever other
                        // sessions say.
                        Err(e @ SessionError::Content(_)) => {
                            result = Err(e);
                            break;
                        }
                        Err(
                            e @ (SessionError::Duplicate
                            | SessionError::TooFarAhead { .. }
                            | SessionError::KeyExpired),
                        ) => {
                            if matches!(result, Err(SessionError::DecryptFailed)) {
                                result = Err(e);
                            }
                        }
                        Err(_) => {}
                    }
                }
                result?
            }
        };
        // The message is in. Record what it tells us; nothing below can fail.
        let sessions = self.sessions.entry(peer).or_default();
        let mut session = sessions.remove(index.min(sessions.len().saturating_sub(1)));
        // The peer answered on this session, so it has it: stop attaching the setup.
        session.setup = None;
        let missing = session.received.record(session_header.sequence);
        // The session that last received is the one to send on (both sides converge on
        // it after simultaneous setups).
        sessions.insert(0, session);
        self.replay.record(&header, now);
        let (content, sent_to) = content;
        // Only this user's own devices may say which conversation a message belongs to.
        let conversation = if &header.sender == self.device.address() {
            sent_to.unwrap_or_else(|| header.sender.clone())
        } else {
            header.sender.clone()
        };
        Ok(Received {
            conversation,
            sender: header.sender,
            sender_device: header.sender_device,
            sender_identity: *cert.identity_key(),
            message_id,
            timestamp: header.timestamp,
            content,
            sequence: Some(session_header.sequence),
            missing,
            events,
        })
    }

    /// Deletes every session with a peer device; the next message to it starts a new
    /// session (after [`add_bundle`](Self::add_bundle)).
    pub fn reset_sessions(&mut self, address: &Address, device: DeviceId) {
        self.sessions.remove(&(address.clone(), device));
    }

    /// How many sessions are held with a peer device.
    pub fn session_count(&self, address: &Address, device: DeviceId) -> usize {
        self.sessions
            .get(&(address.clone(), device))
            .map_or(0, Vec::len)
    }

    /// What is known about the sessions with a peer device, the one sent on first.
    pub fn sessions_with(&self, address: &Address, device: DeviceId) -> Vec<SessionInfo> {
        self.sessions
            .get(&(address.clone(), device))
            .map(|v| {
                v.iter()
                    .map(|s| SessionInfo {
                        peer_identity: s.peer_identity,
                        created: s.created,
                        sent: s.send_seq,
                        highest_received: s.received.highest,
                        missing: s.received.missing.len(),
                        awaiting_reply: s.setup.is_some(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
