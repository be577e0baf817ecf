//! Group messages with sender keys (SPEC.md 19).
//!
//! Each member device sends in a group on a **sender chain** of its own: a symmetric
//! ratchet (the Double Ratchet's chain step, SPEC.md 15.4) whose every position gives one
//! message key. The device hands the chain's current position ([`SenderKey`]) to every
//! other member device over their end-to-end sessions; from then on a group message is
//! encrypted once and signed once (a [`GroupEnvelope`], signed by the sender device like
//! any envelope), however many members the group has, and every member device opens the
//! same bytes.
//!
//! Positions are one-way: whoever receives a chain at position `n` cannot compute the
//! keys of messages before `n`, so a member added later cannot read what came before.
//! When someone is removed or leaves, every remaining device makes a new chain and hands
//! it only to the remaining members, and receivers refuse messages of the new epoch sent
//! on a chain made before the removal, so a removed member cannot read what follows.
//!
//! Receiving never changes state until the AEAD has accepted the message.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use ed25519_dalek::Signature;
use prost::Message;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::{GroupId, GroupState};
use crate::address::{Address, AddressError};
use crate::crypto::{self, Label, Secret};
use crate::envelope::{Content, ContentError, MessageId};
use crate::identity::{Device, DeviceCertificate, DeviceId, IdentityKey};
use crate::limits::{
    AEAD_TAG_LEN, MAX_CIPHERTEXT_LEN, MAX_ENVELOPE_LEN, MAX_GROUP_CHAINS_PER_DEVICE,
    MAX_GROUP_SENDER_KEY_LEN, MAX_GROUP_SKIP, MAX_GROUP_SKIPPED_KEYS, MAX_HEADER_LEN,
    PROTOCOL_VERSION,
};
use crate::session::kdf_ck;
use crate::time::UnixMillis;
use crate::wire;

/// Why a group message, or a sender key, was refused or could not be made. Nothing
/// changed. Each variant has a stable [`code`](GroupMessageError::code) (SPEC.md 10).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupMessageError {
    /// The encoding, its header or its ciphertext is longer than its limit.
    #[error("{what} is {len} bytes, the maximum is {max}")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a valid protobuf encoding of the schema.
    #[error("not valid protobuf")]
    Decode,
    /// A version this implementation does not know.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u32),
    /// A field has the wrong length or form.
    #[error("field {0} is invalid")]
    InvalidField(&'static str),
    /// An address does not follow the grammar.
    #[error("address is invalid: {0}")]
    InvalidAddress(AddressError),
    /// `content_type` is not one this implementation knows.
    #[error("unsupported content type {0}")]
    UnsupportedContentType(i32),
    /// The certificate is another device's than the one claimed.
    #[error("the certificate is another device's")]
    SenderMismatch,
    /// The sender's certificate is not valid at the message's timestamp.
    #[error("the sender's certificate is not valid at the message's timestamp")]
    SenderCertificateNotValid,
    /// The signature does not verify.
    #[error("group message signature does not verify")]
    BadSignature,
    /// The message or sender key is for another group.
    #[error("for another group")]
    WrongGroup,
    /// The sender is at a later epoch than this device: changes are missing (hold the
    /// message, fetch them, then open it).
    #[error("the sender is at epoch {epoch}, this device at {current}")]
    Gap {
        /// The sender's epoch.
        epoch: u64,
        /// This device's epoch.
        current: u64,
    },
    /// The sender is at this device's epoch but holds another state.
    #[error("the sender holds another group state at this epoch")]
    StateMismatch,
    /// The sender is not a member of the group.
    #[error("{0} is not a member of the group")]
    NotMember(Address),
    /// The sender device is certified by another identity key than the group pinned.
    #[error("the sender device is certified by another identity key than the group holds")]
    IdentityMismatch,
    /// No sender key is held for the message's chain (it may still be on its way: hold
    /// the message).
    #[error("no sender key for this chain")]
    UnknownSenderKey,
    /// A message of an epoch after a removal, on a chain made before it (refused, so that
    /// a removed member cannot read it); or, sending, a chain that must be replaced first.
    #[error("the sender chain predates the last removal")]
    StaleSenderKey,
    /// The chain position was used already (a duplicate or a replay).
    #[error("this chain position was used already")]
    Duplicate,
    /// The message would skip more than [`MAX_GROUP_SKIP`] positions.
    #[error("the message skips more than {max} positions")]
    TooFarAhead {
        /// The maximum.
        max: u32,
    },
    /// The AEAD refused the message.
    #[error("decryption failed")]
    DecryptFailed,
    /// The plaintext is not valid content, or (sending) the content cannot be encoded.
    #[error("invalid content: {0}")]
    Content(ContentError),
    /// The sending chain has used every position; make a new one.
    #[error("the sending chain is exhausted")]
    ChainExhausted,
}

impl GroupMessageError {
    /// The stable error code (SPEC.md 10).
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Decode => "decode",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::InvalidField(_) => "invalid_field",
            Self::InvalidAddress(_) => "invalid_address",
            Self::UnsupportedContentType(_) => "unsupported_content_type",
            Self::SenderMismatch => "sender_mismatch",
            Self::SenderCertificateNotValid => "sender_certificate_not_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongGroup => "wrong_group",
            Self::Gap { .. } => "group_gap",
            Self::StateMismatch => "state_mismatch",
            Self::NotMember(_) => "not_member",
            Self::IdentityMismatch => "identity_mismatch",
            Self::UnknownSenderKey => "unknown_sender_key",
            Self::StaleSenderKey => "stale_sender_key",
            Self::Duplicate => "duplicate",
            Self::TooFarAhead { .. } => "too_far_ahead",
            Self::DecryptFailed => "decrypt_failed",
            Self::Content(_) => "invalid_content",
            Self::ChainExhausted => "chain_exhausted",
        }
    }
}

/// One position of a member device's sender chain: what its owner hands to the other
/// member devices (SPEC.md 19.2). Secret; its `Debug` shows no key.
#[derive(Clone, PartialEq, Eq)]
pub struct SenderKey {
    group: GroupId,
    sender: Address,
    sender_device: DeviceId,
    chain_id: u32,
    pub(super) epoch: u64,
    iteration: u32,
    pub(super) chain_key: Secret<32>,
}

impl SenderKey {
    /// The encoding (`GroupSenderKey`), for the end-to-end session to carry. Wiped when
    /// dropped.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.to_wire().encode_to_vec())
    }

    pub(crate) fn to_wire(&self) -> wire::GroupSenderKey {
        wire::GroupSenderKey {
            version: PROTOCOL_VERSION,
            group_id: Bytes::copy_from_slice(self.group.as_bytes()),
            sender: self.sender.as_str().to_owned(),
            sender_device: Bytes::copy_from_slice(self.sender_device.as_bytes()),
            chain_id: self.chain_id,
            epoch: self.epoch,
            iteration: self.iteration,
            chain_key: Bytes::copy_from_slice(self.chain_key.expose()),
        }
    }

    /// Decodes a sender key: size, structure, version, field forms.
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupMessageError> {
        use GroupMessageError as E;
        if bytes.len() > MAX_GROUP_SENDER_KEY_LEN {
            return Err(E::TooLarge {
                what: "sender key",
                len: bytes.len(),
                max: MAX_GROUP_SENDER_KEY_LEN,
            });
        }
        Self::from_wire(wire::GroupSenderKey::decode(bytes).map_err(|_| E::Decode)?)
    }

    /// The checks of [`decode`](Self::decode) after the size and the protobuf decoding.
    pub(crate) fn from_wire(m: wire::GroupSenderKey) -> Result<Self, GroupMessageError> {
        use GroupMessageError as E;
        if m.version != PROTOCOL_VERSION {
            return Err(E::UnsupportedVersion(m.version));
        }
        let key: [u8; 32] = m
            .chain_key
            .as_ref()
            .try_into()
            .map_err(|_| E::InvalidField("chain_key"))?;
        Ok(Self {
            group: GroupId::from_slice(&m.group_id).ok_or(E::InvalidField("group_id"))?,
            sender: Address::parse_canonical(&m.sender).map_err(E::InvalidAddress)?,
            sender_device: DeviceId::from_slice(&m.sender_device)
                .ok_or(E::InvalidField("sender_device"))?,
            chain_id: m.chain_id,
            epoch: m.epoch,
            iteration: m.iteration,
            chain_key: Secret::new(key),
        })
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The chain's owner.
    pub fn sender(&self) -> &Address {
        &self.sender
    }

    /// The owner's device.
    pub fn sender_device(&self) -> DeviceId {
        self.sender_device
    }

    /// The chain's number among its owner's chains in the group.
    pub fn chain_id(&self) -> u32 {
        self.chain_id
    }

    /// The group epoch at which the chain was made.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The position: the next message on the chain has this iteration.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// The same chain at the later position `iteration`, derived forward one step at a
    /// time (SPEC.md 19.1); `None` if `iteration` is before this position, which the
    /// chain cannot give (positions are one-way).
    pub(crate) fn at_iteration(&self, iteration: u32) -> Option<SenderKey> {
        if iteration < self.iteration {
            return None;
        }
        let mut ck = self.chain_key.clone();
        for _ in self.iteration..iteration {
            ck = kdf_ck(&ck).0;
        }
        Some(SenderKey {
            iteration,
            chain_key: ck,
            ..self.clone()
        })
    }
}

impl fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKey")
            .field("group", &self.group)
            .field("sender", &self.sender)
            .field("sender_device", &self.sender_device)
            .field("chain_id", &self.chain_id)
            .field("epoch", &self.epoch)
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

/// The AEAD key and nonce of one group message: HKDF-SHA256(salt = message id, ikm =
/// message key, info = framed("kogge/v1/kdf/group-message")) → key ‖ nonce.
fn message_keys(mk: &Secret<32>, message_id: &MessageId) -> (Secret<32>, [u8; 12]) {
    let mut okm = Secret::<44>::zeroed();
    // 44 bytes is far below HKDF-SHA256's limit; the call cannot fail.
    let _ = crypto::hkdf_sha256(
        message_id.as_bytes(),
        mk.expose(),
        Label::GroupMessageKeys,
        &[],
        okm.expose_mut(),
    );
    let mut key = Secret::<32>::zeroed();
    key.expose_mut().copy_from_slice(&okm.expose()[..32]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&okm.expose()[32..]);
    (key, nonce)
}

fn signature_input(header: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    crypto::framed(
        Label::GroupEnvelopeSignature,
        &[header, &crypto::sha256(ciphertext)],
    )
}

fn aad(header: &[u8]) -> Vec<u8> {
    crypto::framed(Label::GroupEnvelopeAad, &[header])
}

/// This device's sending chain in one group.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupSender {
    pub(super) key: SenderKey,
}

impl fmt::Debug for GroupSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupSender")
            .field("key", &self.key)
            .finish()
    }
}

impl GroupSender {
    /// A new chain for `device` in the group of `state`, numbered `chain_id` (higher than
    /// the device's previous chains in the group), starting from a random key.
    pub fn new<R: CryptoRng + ?Sized>(
        state: &GroupState,
        device: &Device,
        chain_id: u32,
        rng: &mut R,
    ) -> Result<Self, GroupMessageError> {
        check_member(state, device.certificate())?;
        let mut ck = Secret::<32>::zeroed();
        rand_core::Rng::fill_bytes(rng, ck.expose_mut());
        Ok(Self {
            key: SenderKey {
                group: state.id(),
                sender: device.address().clone(),
                sender_device: device.id(),
                chain_id,
                epoch: state.epoch(),
                iteration: 0,
                chain_key: ck,
            },
        })
    }

    /// Rebuilds a sender from its stored position (see [`sender_key`](Self::sender_key)).
    pub fn from_sender_key(key: SenderKey) -> Self {
        Self { key }
    }

    /// The chain's current position: hand it to a member device (over the end-to-end
    /// session) so that it can read what this device sends from now on; store it to
    /// persist the sender.
    pub fn sender_key(&self) -> &SenderKey {
        &self.key
    }

    /// Whether the chain must be replaced before sending at `state`'s epoch: it was made
    /// before the group's last removal (SPEC.md 19.4).
    pub fn needs_new_chain(&self, state: &GroupState) -> bool {
        self.key.epoch < state.rekey_epoch()
    }

    /// Encrypts `content` once and signs it once, for every member device. The chain
    /// advances only if sealing succeeds.
    pub fn seal(
        &mut self,
        device: &Device,
        state: &GroupState,
        content: &Content,
        message_id: MessageId,
        timestamp: UnixMillis,
    ) -> Result<Bytes, GroupMessageError> {
        use GroupMessageError as E;
        if device.address() != &self.key.sender || device.id() != self.key.sender_device {
            return Err(E::SenderMismatch);
        }
        if state.id() != self.key.group {
            return Err(E::WrongGroup);
        }
        check_member(state, device.certificate())?;
        if self.needs_new_chain(state) {
            return Err(E::StaleSenderKey);
        }
        if self.key.iteration == u32::MAX {
            return Err(E::ChainExhausted);
        }
        if !device.certificate().is_valid_at(timestamp) {
            return Err(E::SenderCertificateNotValid);
        }
        let plaintext = Zeroizing::new(content.encode_padded().map_err(E::Content)?);
        let header = wire::GroupEnvelopeHeader {
            version: PROTOCOL_VERSION,
            sender: self.key.sender.as_str().to_owned(),
            sender_device: Bytes::copy_from_slice(self.key.sender_device.as_bytes()),
            group_id: Bytes::copy_from_slice(self.key.group.as_bytes()),
            epoch: state.epoch(),
            state_hash: Bytes::copy_from_slice(&state.state_hash()),
            chain_id: self.key.chain_id,
            iteration: self.key.iteration,
            message_id: Bytes::copy_from_slice(message_id.as_bytes()),
            timestamp_ms: timestamp.0,
            content_type: wire::ContentType::Content as i32,
        }
        .encode_to_vec();
        if header.len() > MAX_HEADER_LEN {
            return Err(E::TooLarge {
                what: "header",
                len: header.len(),
                max: MAX_HEADER_LEN,
            });
        }
        let (next, mk) = kdf_ck(&self.key.chain_key);
        let (key, nonce) = message_keys(&mk, &message_id);
        let ciphertext =
            crypto::aead_seal(&key, &nonce, &aad(&header), &plaintext).map_err(|_| {
                E::TooLarge {
                    what: "plaintext",
                    len: plaintext.len(),
                    max: MAX_CIPHERTEXT_LEN - AEAD_TAG_LEN,
                }
            })?;
        let signature = {
            use ed25519_dalek::Signer;
            device
                .keys()
                .signing()
                .sign(&signature_input(&header, &ciphertext))
        };
        let encoded = wire::GroupEnvelope {
            version: PROTOCOL_VERSION,
            header: Bytes::from(header),
            ciphertext: Bytes::from(ciphertext),
            signature: Bytes::copy_from_slice(&signature.to_bytes()),
        }
        .encode_to_vec();
        if encoded.len() > MAX_ENVELOPE_LEN {
            return Err(E::TooLarge {
                what: "group envelope",
                len: encoded.len(),
                max: MAX_ENVELOPE_LEN,
            });
        }
        self.key.chain_key = next;
        self.key.iteration += 1;
        Ok(Bytes::from(encoded))
    }
}

/// The sender must be a member, acting with a device certified by its pinned identity.
fn check_member(state: &GroupState, cert: &DeviceCertificate) -> Result<(), GroupMessageError> {
    match state.identity(cert.address()) {
        None => Err(GroupMessageError::NotMember(cert.address().clone())),
        Some(pinned) if pinned != cert.identity_key() => Err(GroupMessageError::IdentityMismatch),
        Some(_) => Ok(()),
    }
}

/// A group message parsed but not verified: its header is a claim (SPEC.md 19.3).
#[derive(Clone)]
pub struct GroupEnvelope {
    header_bytes: Bytes,
    ciphertext: Bytes,
    signature: Signature,
    sender: Address,
    sender_device: DeviceId,
    group: GroupId,
    epoch: u64,
    state_hash: [u8; 32],
    chain_id: u32,
    iteration: u32,
    message_id: MessageId,
    timestamp: UnixMillis,
}

impl fmt::Debug for GroupEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupEnvelope")
            .field("sender", &self.sender)
            .field("sender_device", &self.sender_device)
            .field("group", &self.group)
            .field("epoch", &self.epoch)
            .field("chain_id", &self.chain_id)
            .field("iteration", &self.iteration)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl GroupEnvelope {
    /// Parses a group message (VAL-GENV-01 to -07): size, structure, versions, part
    /// sizes, field forms, sender address. No cryptography.
    pub fn decode(bytes: Bytes) -> Result<Self, GroupMessageError> {
        use GroupMessageError as E;
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(E::TooLarge {
                what: "group envelope",
                len: bytes.len(),
                max: MAX_ENVELOPE_LEN,
            });
        }
        let outer = wire::GroupEnvelope::decode(bytes).map_err(|_| E::Decode)?;
        if outer.version != PROTOCOL_VERSION {
            return Err(E::UnsupportedVersion(outer.version));
        }
        if outer.header.len() > MAX_HEADER_LEN {
            return Err(E::TooLarge {
                what: "header",
                len: outer.header.len(),
                max: MAX_HEADER_LEN,
            });
        }
        if outer.ciphertext.len() > MAX_CIPHERTEXT_LEN {
            return Err(E::TooLarge {
                what: "ciphertext",
                len: outer.ciphertext.len(),
                max: MAX_CIPHERTEXT_LEN,
            });
        }
        if outer.ciphertext.len() < AEAD_TAG_LEN {
            return Err(E::InvalidField("ciphertext"));
        }
        let signature =
            crypto::signature(&outer.signature).map_err(|_| E::InvalidField("signature"))?;
        let h = wire::GroupEnvelopeHeader::decode(outer.header.clone()).map_err(|_| E::Decode)?;
        if h.version != PROTOCOL_VERSION {
            return Err(E::UnsupportedVersion(h.version));
        }
        let state_hash: [u8; 32] = h
            .state_hash
            .as_ref()
            .try_into()
            .map_err(|_| E::InvalidField("state_hash"))?;
        let sender_device =
            DeviceId::from_slice(&h.sender_device).ok_or(E::InvalidField("sender_device"))?;
        let group = GroupId::from_slice(&h.group_id).ok_or(E::InvalidField("group_id"))?;
        let message_id =
            MessageId::from_slice(&h.message_id).ok_or(E::InvalidField("message_id"))?;
        if wire::ContentType::try_from(h.content_type) != Ok(wire::ContentType::Content) {
            return Err(E::UnsupportedContentType(h.content_type));
        }
        let sender = Address::parse_canonical(&h.sender).map_err(E::InvalidAddress)?;
        Ok(Self {
            header_bytes: outer.header,
            ciphertext: outer.ciphertext,
            signature,
            sender,
            sender_device,
            group,
            epoch: h.epoch,
            state_hash,
            chain_id: h.chain_id,
            iteration: h.iteration,
            message_id,
            timestamp: UnixMillis(h.timestamp_ms),
        })
    }

    /// The claimed sender (route on it if you must; trust it after opening).
    pub fn sender(&self) -> &Address {
        &self.sender
    }

    /// The claimed sender device.
    pub fn sender_device(&self) -> DeviceId {
        self.sender_device
    }

    /// The claimed group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The claimed sender's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The claimed message id.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// The claimed chain and position.
    pub fn chain(&self) -> (u32, u32) {
        (self.chain_id, self.iteration)
    }

    /// The claimed timestamp.
    pub fn timestamp(&self) -> UnixMillis {
        self.timestamp
    }
}

/// An opened group message. Its `Debug` output leaves the content out, so logging it
/// does not log plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupOpened {
    /// The group.
    pub group: GroupId,
    /// The sender, authenticated by its device's signature.
    pub sender: Address,
    /// The sender device.
    pub sender_device: DeviceId,
    /// The identity key that certified the sender device (the one the group pins).
    pub sender_identity: IdentityKey,
    /// The epoch the sender was at.
    pub epoch: u64,
    /// The message id.
    pub message_id: MessageId,
    /// The sender's timestamp.
    pub timestamp: UnixMillis,
    /// The content.
    pub content: Content,
}

impl fmt::Debug for GroupOpened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupOpened")
            .field("group", &self.group)
            .field("sender", &self.sender)
            .field("sender_device", &self.sender_device)
            .field("epoch", &self.epoch)
            .field("message_id", &self.message_id)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Chain {
    chain_id: u32,
    epoch: u64,
    /// The earliest position this device ever held a key for.
    start: u32,
    next: u32,
    key: Secret<32>,
}

/// The sender chains this device holds for one group's other member devices, with the
/// keys of positions skipped by messages that arrived out of order (bounded, SPEC.md
/// 19.5).
#[derive(Clone)]
pub struct GroupReceiver {
    group: GroupId,
    chains: BTreeMap<(Address, DeviceId), Vec<Chain>>,
    /// Skipped positions' message keys, with their insertion number...
    skipped: BTreeMap<SkippedPosition, (Secret<32>, u64)>,
    /// ...and the positions by insertion number, to drop the oldest first.
    by_order: BTreeMap<u64, SkippedPosition>,
    next_order: u64,
}

/// Sender, sender device, chain id, iteration.
type SkippedPosition = (Address, DeviceId, u32, u32);

impl fmt::Debug for GroupReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupReceiver")
            .field("group", &self.group)
            .field("senders", &self.chains.len())
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl GroupReceiver {
    /// No chains yet.
    pub fn new(group: GroupId) -> Self {
        Self {
            group,
            chains: BTreeMap::new(),
            skipped: BTreeMap::new(),
            by_order: BTreeMap::new(),
            next_order: 0,
        }
    }

    /// Accepts `key`, received over the end-to-end session with the device of `from`
    /// (SPEC.md 19.2): it must be that device's chain in this group, whose user is a
    /// member with that identity key. A chain already held is kept as it is (it derives
    /// every later position itself); a device keeps at most
    /// [`MAX_GROUP_CHAINS_PER_DEVICE`] chains, dropping the lowest-numbered. Returns
    /// whether the chain was new.
    pub fn add_sender_key(
        &mut self,
        state: &GroupState,
        from: &DeviceCertificate,
        key: &SenderKey,
    ) -> Result<bool, GroupMessageError> {
        use GroupMessageError as E;
        if key.group != self.group || state.id() != self.group {
            return Err(E::WrongGroup);
        }
        if &key.sender != from.address() || key.sender_device != from.device_id() {
            return Err(E::SenderMismatch);
        }
        check_member(state, from)?;
        let chains = self
            .chains
            .entry((key.sender.clone(), key.sender_device))
            .or_default();
        if let Some(c) = chains.iter_mut().find(|c| c.chain_id == key.chain_id) {
            // The same chain from an earlier position (sent again, and overtaken by a
            // later copy): the keys of the positions before the held start, which this
            // device could never open, become skipped keys. Nothing it opened before
            // becomes openable again.
            if key.iteration >= c.start || c.start - key.iteration > MAX_GROUP_SKIP {
                return Ok(false);
            }
            let (from, to) = (key.iteration, c.start);
            c.start = from;
            let mut ck = key.chain_key.clone();
            let mut passed = Vec::with_capacity((to - from) as usize);
            for i in from..to {
                let (next, mk) = kdf_ck(&ck);
                ck = next;
                passed.push((i, mk));
            }
            let who = (key.sender.clone(), key.sender_device);
            self.keep_skipped(&who, key.chain_id, passed);
            return Ok(true);
        }
        chains.push(Chain {
            chain_id: key.chain_id,
            epoch: key.epoch,
            start: key.iteration,
            next: key.iteration,
            key: key.chain_key.clone(),
        });
        chains.sort_by_key(|c| c.chain_id);
        if chains.len() > MAX_GROUP_CHAINS_PER_DEVICE {
            let dropped = chains.remove(0).chain_id;
            let who = (key.sender.clone(), key.sender_device);
            self.forget_skipped(|(a, d, c, _)| a == &who.0 && *d == who.1 && *c == dropped);
        }
        Ok(true)
    }

    /// The chains and skipped keys, for the persisted state (SPEC.md 15.8).
    pub(crate) fn to_state(&self) -> (Vec<wire::GroupChainState>, Vec<wire::GroupSkippedKeyState>) {
        let chains = self
            .chains
            .iter()
            .flat_map(|((a, d), cs)| {
                cs.iter().map(move |c| wire::GroupChainState {
                    sender: a.as_str().to_owned(),
                    sender_device: Bytes::copy_from_slice(d.as_bytes()),
                    chain_id: c.chain_id,
                    epoch: c.epoch,
                    start: c.start,
                    next: c.next,
                    chain_key: Bytes::from_owner(zeroize::Zeroizing::new(c.key.expose().to_vec())),
                })
            })
            .collect();
        let skipped = self
            .by_order
            .values()
            .filter_map(|pos| {
                let (mk, _) = self.skipped.get(pos)?;
                Some(wire::GroupSkippedKeyState {
                    sender: pos.0.as_str().to_owned(),
                    sender_device: Bytes::copy_from_slice(pos.1.as_bytes()),
                    chain_id: pos.2,
                    iteration: pos.3,
                    message_key: Bytes::from_owner(zeroize::Zeroizing::new(mk.expose().to_vec())),
                })
            })
            .collect();
        (chains, skipped)
    }

    /// Rebuilds a receiver from the persisted state; the error names the defect.
    pub(crate) fn from_state(
        group: GroupId,
        chains: &[wire::GroupChainState],
        skipped: &[wire::GroupSkippedKeyState],
    ) -> Result<Self, &'static str> {
        let mut r = Self::new(group);
        let who = |sender: &str, device: &[u8]| -> Result<(Address, DeviceId), &'static str> {
            Ok((
                Address::parse_canonical(sender).map_err(|_| "groups.chains: an invalid sender")?,
                DeviceId::from_slice(device).ok_or("groups.chains: a device id is not 16 bytes")?,
            ))
        };
        for c in chains {
            let key: [u8; 32] = c
                .chain_key
                .as_ref()
                .try_into()
                .map_err(|_| "groups.chains: a chain key is not 32 bytes")?;
            if c.start > c.next {
                return Err("groups.chains: start after next");
            }
            let list = r
                .chains
                .entry(who(&c.sender, &c.sender_device)?)
                .or_default();
            if list.iter().any(|x| x.chain_id == c.chain_id) {
                return Err("groups.chains: a chain listed twice");
            }
            list.push(Chain {
                chain_id: c.chain_id,
                epoch: c.epoch,
                start: c.start,
                next: c.next,
                key: Secret::new(key),
            });
            list.sort_by_key(|x| x.chain_id);
            if list.len() > MAX_GROUP_CHAINS_PER_DEVICE {
                return Err("groups.chains: more than MAX_GROUP_CHAINS_PER_DEVICE for a device");
            }
        }
        if skipped.len() > MAX_GROUP_SKIPPED_KEYS {
            return Err("groups.skipped: more than MAX_GROUP_SKIPPED_KEYS");
        }
        for k in skipped {
            let mk: [u8; 32] = k
                .message_key
                .as_ref()
                .try_into()
                .map_err(|_| "groups.skipped: a message key is not 32 bytes")?;
            let (a, d) = who(&k.sender, &k.sender_device)?;
            let position = (a, d, k.chain_id, k.iteration);
            let order = r.next_order;
            r.next_order += 1;
            if r.skipped
                .insert(position.clone(), (Secret::new(mk), order))
                .is_some()
            {
                return Err("groups.skipped: a position listed twice");
            }
            r.by_order.insert(order, position);
        }
        Ok(r)
    }

    /// Forgets every chain of `address`'s devices (for a member that was removed or
    /// left: its later messages have no key here).
    pub fn forget(&mut self, address: &Address) {
        self.chains.retain(|(a, _), _| a != address);
        self.forget_skipped(|(a, _, _, _)| a == address);
    }

    /// Keeps the message keys of skipped positions of one chain, dropping the oldest
    /// beyond [`MAX_GROUP_SKIPPED_KEYS`].
    fn keep_skipped(
        &mut self,
        who: &(Address, DeviceId),
        chain_id: u32,
        passed: Vec<(u32, Secret<32>)>,
    ) {
        for (i, mk) in passed {
            let order = self.next_order;
            self.next_order += 1;
            let position = (who.0.clone(), who.1, chain_id, i);
            self.by_order.insert(order, position.clone());
            self.skipped.insert(position, (mk, order));
        }
        while self.skipped.len() > MAX_GROUP_SKIPPED_KEYS {
            match self.by_order.pop_first() {
                Some((_, oldest)) => {
                    self.skipped.remove(&oldest);
                }
                None => break,
            }
        }
    }

    fn forget_skipped(&mut self, mut drop: impl FnMut(&SkippedPosition) -> bool) {
        self.skipped.retain(|k, _| !drop(k));
        let skipped = &self.skipped;
        self.by_order.retain(|_, k| skipped.contains_key(k));
    }

    /// Opens a group message for this device (SPEC.md 19.3, steps VAL-GENV-08 to -18):
    /// the sender's certificate (from its device list) and the signature, then the group,
    /// epoch and membership against `state`, the chain and position, the AEAD, the
    /// content. Only a message that opens changes the receiver (its chain advances).
    pub fn open(
        &mut self,
        state: &GroupState,
        envelope: &GroupEnvelope,
        sender: &DeviceCertificate,
    ) -> Result<GroupOpened, GroupMessageError> {
        use GroupMessageError as E;
        let env = envelope;
        if sender.address() != &env.sender || sender.device_id() != env.sender_device {
            return Err(E::SenderMismatch);
        }
        if !sender.is_valid_at(env.timestamp) {
            return Err(E::SenderCertificateNotValid);
        }
        crypto::verify_message(
            sender.signing_key(),
            &signature_input(&env.header_bytes, &env.ciphertext),
            &env.signature,
        )
        .map_err(|_| E::BadSignature)?;
        if env.group != self.group || state.id() != self.group {
            return Err(E::WrongGroup);
        }
        if env.epoch > state.epoch() {
            return Err(E::Gap {
                epoch: env.epoch,
                current: state.epoch(),
            });
        }
        if env.epoch == state.epoch() && env.state_hash != state.state_hash() {
            return Err(E::StateMismatch);
        }
        check_member(state, sender)?;
        let who = (env.sender.clone(), env.sender_device);
        let chain = self
            .chains
            .get(&who)
            .and_then(|cs| cs.iter().find(|c| c.chain_id == env.chain_id))
            .ok_or(E::UnknownSenderKey)?;
        if env.epoch >= state.rekey_epoch() && chain.epoch < state.rekey_epoch() {
            return Err(E::StaleSenderKey);
        }
        // Derive into temporaries; commit only after the AEAD accepted the message.
        let skipped_key = (who.0.clone(), who.1, env.chain_id, env.iteration);
        let (mk, advance) = if env.iteration < chain.next {
            let (mk, _) = self.skipped.get(&skipped_key).ok_or(E::Duplicate)?;
            (mk.clone(), None)
        } else {
            let skip = env.iteration - chain.next;
            if skip > MAX_GROUP_SKIP {
                return Err(E::TooFarAhead {
                    max: MAX_GROUP_SKIP,
                });
            }
            let mut ck = chain.key.clone();
            let mut passed = Vec::with_capacity(skip as usize);
            for i in chain.next..env.iteration {
                let (next, mk) = kdf_ck(&ck);
                passed.push((i, mk));
                ck = next;
            }
            let (next, mk) = kdf_ck(&ck);
            (mk, Some((next, passed)))
        };
        let (key, nonce) = message_keys(&mk, &env.message_id);
        let plaintext = crypto::aead_open(&key, &nonce, &aad(&env.header_bytes), &env.ciphertext)
            .map_err(|_| E::DecryptFailed)?;
        let content = Content::decode(&plaintext).map_err(E::Content)?;
        // Accepted: commit.
        match advance {
            None => {
                if let Some((_, order)) = self.skipped.remove(&skipped_key) {
                    self.by_order.remove(&order);
                }
            }
            Some((next, passed)) => {
                if let Some(c) = self
                    .chains
                    .get_mut(&who)
                    .and_then(|cs| cs.iter_mut().find(|c| c.chain_id == env.chain_id))
                {
                    c.key = next;
                    c.next = env.iteration.saturating_add(1);
                }
                self.keep_skipped(&who, env.chain_id, passed);
            }
        }
        Ok(GroupOpened {
            group: self.group,
            sender: env.sender.clone(),
            sender_device: env.sender_device,
            sender_identity: *sender.identity_key(),
            epoch: env.epoch,
            message_id: env.message_id,
            timestamp: env.timestamp,
            content,
        })
    }

    /// How many skipped positions' keys are held.
    pub fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }
}
