//! Signed, sealed envelopes (SPEC.md section 6).
//!
//! Sealing ([`seal`]) encrypts [`Content`] to one recipient device and signs the result
//! with the sender device's key. Opening is a pipeline whose stages are types, so a
//! caller cannot skip one (STYLE.md C5):
//!
//! ```text
//! bytes ──UnverifiedEnvelope::decode──▶ UnverifiedEnvelope   size, version, structure, addresses
//!       ──.verify(sender certificate)─▶ VerifiedEnvelope     certificate match + validity, signature
//!       ──.decrypt(recipient device)──▶ Opened                recipient binding, X25519, AEAD, content
//!       ──ReplayWindow::accept────────▶ fresh                 age, clock skew, seen ids
//! ```
//!
//! [`open`] runs all four in that order; [`open_batch`] does the same for a backlog
//! with Ed25519 batch verification. Every stage takes `&self` or consumes a value the
//! caller can rebuild from the bytes, so a failure changes no state anywhere.

mod batch;
mod content;
mod plain;
mod replay;

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use ed25519_dalek::Signature;
use prost::Message;
use rand_core::CryptoRng;
use zeroize::Zeroize;

use crate::address::{Address, AddressError};
use crate::crypto::{self, Label, Secret};
use crate::identity::{Device, DeviceCertificate, DeviceId, IdentityKey};
use crate::limits::{
    AEAD_TAG_LEN, MAX_CIPHERTEXT_LEN, MAX_ENVELOPE_LEN, MAX_HEADER_LEN, PROTOCOL_VERSION,
};
use crate::time::UnixMillis;
use crate::wire;

pub use batch::{BATCH_VERIFY_CHUNK, open_batch, verify_batch};
pub use content::{Content, ContentError, Receipt, ReceiptKind, Text};
pub use replay::{ReplayPolicy, ReplayWindow};

/// A random 128-bit message id. It makes delivery idempotent and replays detectable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId([u8; 16]);

impl MessageId {
    /// A fresh id from the injected CSPRNG.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    /// From 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// From a slice of exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// How the ciphertext is sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PayloadKind {
    /// Ephemeral-static X25519 to the recipient device key (SPEC.md 6.5).
    OneShot,
    /// A Double Ratchet message of a session (SPEC.md 15).
    Session,
}

/// The session setup an initiator attaches to its messages until it gets a reply
/// (SPEC.md 15.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSetup {
    /// The initiator's ephemeral X25519 public key (the "base key").
    pub base_key: [u8; 32],
    /// Which signed prekey of the responder was used.
    pub signed_prekey_id: u32,
    /// Which one-time prekey was used, if any.
    pub one_time_prekey_id: Option<u32>,
    /// Which ML-KEM-768 prekey was used.
    pub kem_prekey_id: u32,
    /// The ML-KEM-768 ciphertext (1088 bytes).
    pub kem_ciphertext: Bytes,
}

/// The ratchet header of a session message (SPEC.md 15.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionHeader {
    /// The sender's current ratchet public key.
    pub ratchet_key: [u8; 32],
    /// Length of the sender's previous sending chain.
    pub previous_chain_length: u32,
    /// Number of this message in the current sending chain.
    pub message_number: u32,
    /// The sender's position in the conversation (1, 2, 3, ...).
    pub sequence: u64,
    /// Present until the initiator has received a reply.
    pub setup: Option<SessionSetup>,
}

/// ML-KEM-768 ciphertext length.
pub(crate) const KEM_CIPHERTEXT_LEN: usize = 1088;

impl SessionHeader {
    pub(crate) fn to_wire(&self) -> wire::SessionHeader {
        wire::SessionHeader {
            ratchet_key: Bytes::copy_from_slice(&self.ratchet_key),
            previous_chain_length: self.previous_chain_length,
            message_number: self.message_number,
            sequence: self.sequence,
            setup: self.setup.as_ref().map(|s| wire::SessionSetup {
                base_key: Bytes::copy_from_slice(&s.base_key),
                signed_prekey_id: s.signed_prekey_id,
                one_time_prekey_id: s.one_time_prekey_id.unwrap_or(0),
                kem_prekey_id: s.kem_prekey_id,
                kem_ciphertext: s.kem_ciphertext.clone(),
            }),
        }
    }

    /// The session header of `session` (the header's `session` field): a plain encoding
    /// without a setup is read directly, anything else by prost (see [`plain`]).
    fn decode(session: &[u8], bytes: impl FnOnce() -> Bytes) -> Result<Self, OpenError> {
        if let Some(r) = plain::parse_session(session) {
            return Self::checked(
                r.ratchet_key,
                r.previous_chain_length,
                r.message_number,
                r.sequence,
                None,
            );
        }
        let h =
            wire::SessionHeader::decode(bytes()).map_err(|_| OpenError::InvalidField("session"))?;
        Self::checked(
            &h.ratchet_key,
            h.previous_chain_length,
            h.message_number,
            h.sequence,
            h.setup,
        )
    }

    fn checked(
        ratchet_key: &[u8],
        previous_chain_length: u32,
        message_number: u32,
        sequence: u64,
        setup: Option<wire::SessionSetup>,
    ) -> Result<Self, OpenError> {
        use OpenError as E;
        let ratchet_key: [u8; 32] = ratchet_key
            .try_into()
            .map_err(|_| E::InvalidField("session.ratchet_key"))?;
        if sequence == 0 {
            return Err(E::InvalidField("session.sequence"));
        }
        let setup = match setup {
            None => None,
            Some(s) => {
                let base_key: [u8; 32] = s
                    .base_key
                    .as_ref()
                    .try_into()
                    .map_err(|_| E::InvalidField("session.setup.base_key"))?;
                if s.signed_prekey_id == 0 {
                    return Err(E::InvalidField("session.setup.signed_prekey_id"));
                }
                if s.kem_prekey_id == 0 {
                    return Err(E::InvalidField("session.setup.kem_prekey_id"));
                }
                if s.kem_ciphertext.len() != KEM_CIPHERTEXT_LEN {
                    return Err(E::InvalidField("session.setup.kem_ciphertext"));
                }
                Some(SessionSetup {
                    base_key,
                    signed_prekey_id: s.signed_prekey_id,
                    one_time_prekey_id: (s.one_time_prekey_id != 0).then_some(s.one_time_prekey_id),
                    kem_prekey_id: s.kem_prekey_id,
                    kem_ciphertext: s.kem_ciphertext,
                })
            }
        };
        Ok(Self {
            ratchet_key,
            previous_chain_length,
            message_number,
            sequence,
            setup,
        })
    }
}

/// The payload-specific part of the header.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadHeader {
    /// One-shot sealing: the sender's ephemeral X25519 public key.
    OneShot {
        /// The ephemeral public key.
        ephemeral_key: [u8; 32],
    },
    /// A session message: its ratchet header.
    Session(SessionHeader),
}

impl PayloadHeader {
    /// Which kind of payload this is.
    pub fn kind(&self) -> PayloadKind {
        match self {
            PayloadHeader::OneShot { .. } => PayloadKind::OneShot,
            PayloadHeader::Session(_) => PayloadKind::Session,
        }
    }
}

/// How the plaintext is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentType {
    /// An encoded `kogge.v1.Content`.
    Content,
}

/// The routing metadata of an envelope: authenticated, not encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvelopeHeader {
    /// Protocol version.
    pub version: u32,
    /// Who sent it.
    pub sender: Address,
    /// From which device.
    pub sender_device: DeviceId,
    /// To whom.
    pub recipient: Address,
    /// To which device.
    pub recipient_device: DeviceId,
    /// The message id.
    pub message_id: MessageId,
    /// The sender's clock when sealing.
    pub timestamp: UnixMillis,
    /// How the plaintext is encoded.
    pub content_type: ContentType,
    /// How the ciphertext is sealed, with its kind-specific header.
    pub payload: PayloadHeader,
}

impl EnvelopeHeader {
    fn to_wire(&self) -> wire::EnvelopeHeader {
        wire::EnvelopeHeader {
            version: self.version,
            sender: self.sender.as_str().to_owned(),
            sender_device: Bytes::copy_from_slice(self.sender_device.as_bytes()),
            recipient: self.recipient.as_str().to_owned(),
            recipient_device: Bytes::copy_from_slice(self.recipient_device.as_bytes()),
            message_id: Bytes::copy_from_slice(self.message_id.as_bytes()),
            timestamp_ms: self.timestamp.0,
            content_type: match self.content_type {
                ContentType::Content => wire::ContentType::Content as i32,
            },
            payload_kind: match self.payload.kind() {
                PayloadKind::OneShot => wire::PayloadKind::OneShot as i32,
                PayloadKind::Session => wire::PayloadKind::Session as i32,
            },
            ephemeral_key: match &self.payload {
                PayloadHeader::OneShot { ephemeral_key } => Bytes::copy_from_slice(ephemeral_key),
                PayloadHeader::Session(_) => Bytes::new(),
            },
            session: match &self.payload {
                PayloadHeader::OneShot { .. } => Bytes::new(),
                PayloadHeader::Session(h) => Bytes::from(h.to_wire().encode_to_vec()),
            },
        }
    }

    /// The header prost decoded as `h`.
    fn from_wire(h: wire::EnvelopeHeader) -> Result<Self, OpenError> {
        let wire::EnvelopeHeader {
            version,
            sender,
            sender_device,
            recipient,
            recipient_device,
            message_id,
            timestamp_ms,
            content_type,
            payload_kind,
            ephemeral_key,
            session,
        } = h;
        let raw = plain::RawHeader {
            version,
            sender,
            sender_device: &sender_device,
            recipient,
            recipient_device: &recipient_device,
            message_id: &message_id,
            timestamp_ms,
            content_type,
            payload_kind,
            ephemeral_key: &ephemeral_key,
            session: &session,
        };
        Self::checked(raw, || session.clone())
    }

    /// The header of a plain encoding `header` (see [`plain`]) whose fields are `h`.
    fn from_raw(h: plain::RawHeader<'_>, header: &Bytes) -> Result<Self, OpenError> {
        let session = h.session;
        Self::checked(h, || plain::within(header, session))
    }

    /// Checks the fields of a decoded header (`session_bytes`: the `session` field as
    /// `Bytes`, asked for only when prost has to decode it).
    fn checked(
        h: plain::RawHeader<'_>,
        session_bytes: impl FnOnce() -> Bytes,
    ) -> Result<Self, OpenError> {
        use OpenError as E;
        if h.version != PROTOCOL_VERSION {
            return Err(E::UnsupportedVersion(h.version));
        }
        let sender_device =
            DeviceId::from_slice(h.sender_device).ok_or(E::InvalidField("sender_device"))?;
        let recipient_device =
            DeviceId::from_slice(h.recipient_device).ok_or(E::InvalidField("recipient_device"))?;
        let message_id =
            MessageId::from_slice(h.message_id).ok_or(E::InvalidField("message_id"))?;
        let content_type = match wire::ContentType::try_from(h.content_type) {
            Ok(wire::ContentType::Content) => ContentType::Content,
            _ => return Err(E::UnsupportedContentType(h.content_type)),
        };
        let payload = match wire::PayloadKind::try_from(h.payload_kind) {
            Ok(wire::PayloadKind::OneShot) => {
                if !h.session.is_empty() {
                    return Err(E::InvalidField("session"));
                }
                let ephemeral_key: [u8; 32] = h
                    .ephemeral_key
                    .try_into()
                    .map_err(|_| E::InvalidField("ephemeral_key"))?;
                PayloadHeader::OneShot { ephemeral_key }
            }
            Ok(wire::PayloadKind::Session) => {
                if !h.ephemeral_key.is_empty() {
                    return Err(E::InvalidField("ephemeral_key"));
                }
                PayloadHeader::Session(SessionHeader::decode(h.session, session_bytes)?)
            }
            _ => return Err(E::UnsupportedPayloadKind(h.payload_kind)),
        };
        let sender =
            Address::parse_canonical_owned(h.sender).map_err(|error| E::InvalidAddress {
                field: "sender",
                error,
            })?;
        let recipient =
            Address::parse_canonical_owned(h.recipient).map_err(|error| E::InvalidAddress {
                field: "recipient",
                error,
            })?;
        Ok(Self {
            version: h.version,
            sender,
            sender_device,
            recipient,
            recipient_device,
            message_id,
            timestamp: UnixMillis(h.timestamp_ms),
            content_type,
            payload,
        })
    }
}

/// Whether the fast paths for plain encodings and prost give the same answer for
/// `header`, read as an encoded `EnvelopeHeader`, as a `SessionHeader` and as an
/// `Envelope` (and for the session field of the header). For the fuzz targets; not part
/// of the API.
#[doc(hidden)]
pub fn header_decoders_agree(header: &[u8]) -> bool {
    // The same bytes read as a session header and as an envelope: the fast paths and
    // prost agree.
    if !plain::session_agrees(header) || !plain::envelope_agrees(header) {
        return false;
    }
    let header = Bytes::copy_from_slice(header);
    let Some(raw) = plain::parse(&header) else {
        return true;
    };
    if !plain::session_agrees(raw.session) {
        return false;
    }
    let fast = EnvelopeHeader::from_raw(raw, &header);
    let slow = wire::EnvelopeHeader::decode(header.clone())
        .map_err(|_| OpenError::Decode)
        .and_then(EnvelopeHeader::from_wire);
    fast == slow
}

/// Why an envelope could not be sealed. These are caller-side conditions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The content could not be encoded (too large or invalid).
    #[error("content: {0}")]
    Content(#[from] ContentError),
    /// The recipient's certificate is not valid at the message timestamp.
    #[error("recipient certificate is not valid at {0}")]
    RecipientCertificateNotValid(UnixMillis),
    /// The sender's own certificate is not valid at the message timestamp: every
    /// recipient would refuse the envelope.
    #[error("sender certificate is not valid at {0}")]
    SenderCertificateNotValid(UnixMillis),
    /// The recipient's agreement key is low-order: key agreement would be predictable.
    #[error("recipient agreement key is non-contributory")]
    NonContributory,
    /// The sealed envelope would exceed a wire limit (cannot happen for content within
    /// [`MAX_PLAINTEXT_LEN`](crate::limits::MAX_PLAINTEXT_LEN); reported rather than sent).
    #[error("envelope would be {len} bytes, the maximum is {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

/// Why an envelope was refused. Each variant has a stable [`code`](OpenError::code)
/// that SPEC.md section 10 and the negative test vectors name. All are caused by the
/// peer (or the network); none can be caused by a bug of the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The envelope or one of its parts is longer than its limit.
    #[error("{what} is {len} bytes, the maximum is {max}")]
    TooLarge {
        /// "envelope", "header" or "ciphertext".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a valid protobuf encoding of the schema.
    #[error("envelope is not valid protobuf")]
    Decode,
    /// A protocol version this implementation does not know.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    /// A field has the wrong length or form.
    #[error("field {0} is invalid")]
    InvalidField(&'static str),
    /// A payload kind this implementation does not know.
    #[error("unsupported payload kind {0}")]
    UnsupportedPayloadKind(i32),
    /// A content type this implementation does not know.
    #[error("unsupported content type {0}")]
    UnsupportedContentType(i32),
    /// An address in the header does not follow the grammar (or is not canonical).
    #[error("{field} address is invalid: {error}")]
    InvalidAddress {
        /// "sender" or "recipient".
        field: &'static str,
        /// What is wrong with it.
        error: AddressError,
    },
    /// No certificate is known for the claimed sender device.
    #[error("unknown sender device")]
    UnknownSender,
    /// The certificate offered is for another address or device than the header claims.
    #[error("certificate does not belong to the claimed sender device")]
    SenderMismatch,
    /// The sender's certificate is not valid at the envelope's timestamp.
    #[error("sender certificate is not valid at the envelope timestamp")]
    SenderCertificateNotValid,
    /// The signature does not verify under the sender device key.
    #[error("signature does not verify")]
    BadSignature,
    /// The envelope is addressed to another user or device.
    #[error("envelope is addressed to another recipient")]
    WrongRecipient,
    /// The ephemeral key is low-order: key agreement would be predictable.
    #[error("non-contributory key agreement")]
    NonContributory,
    /// Decryption failed (the signature was valid, so the sender sealed it wrongly).
    #[error("decryption failed")]
    DecryptFailed,
    /// The plaintext is not valid content.
    #[error("content is invalid: {0}")]
    Content(ContentError),
    /// Older than the replay window accepts.
    #[error("envelope is too old")]
    TooOld,
    /// Dated too far in the future.
    #[error("envelope is dated in the future")]
    FromFuture,
    /// Already accepted once.
    #[error("envelope was already accepted (replay)")]
    Replay,
    /// A session payload: only a session (`session::Account`) can decrypt it.
    #[error("session payload: decrypt it with its session")]
    NeedsSession,
}

impl OpenError {
    /// The stable error code (SPEC.md section 10).
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Decode => "decode",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::InvalidField(_) => "invalid_field",
            Self::UnsupportedPayloadKind(_) => "unsupported_payload_kind",
            Self::UnsupportedContentType(_) => "unsupported_content_type",
            Self::InvalidAddress { .. } => "invalid_address",
            Self::UnknownSender => "unknown_sender",
            Self::SenderMismatch => "sender_mismatch",
            Self::SenderCertificateNotValid => "sender_certificate_not_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongRecipient => "wrong_recipient",
            Self::NonContributory => "non_contributory",
            Self::DecryptFailed => "decrypt_failed",
            Self::Content(_) => "invalid_content",
            Self::TooOld => "too_old",
            Self::FromFuture => "from_future",
            Self::Replay => "replay",
            Self::NeedsSession => "needs_session",
        }
    }
}

/// Where the receiver looks up sender device certificates.
pub trait CertificateDirectory {
    /// The verified certificate of `device` of `address`, if known.
    fn device_certificate(&self, address: &Address, device: DeviceId)
    -> Option<&DeviceCertificate>;
}

/// A simple in-memory [`CertificateDirectory`].
#[derive(Clone, Debug, Default)]
pub struct KnownDevices {
    certs: HashMap<(Address, DeviceId), DeviceCertificate>,
}

impl KnownDevices {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a certificate.
    pub fn insert(&mut self, cert: DeviceCertificate) {
        self.certs
            .insert((cert.address().clone(), cert.device_id()), cert);
    }

    /// Removes a device.
    pub fn remove(&mut self, address: &Address, device: DeviceId) -> Option<DeviceCertificate> {
        self.certs.remove(&(address.clone(), device))
    }
}

impl CertificateDirectory for KnownDevices {
    fn device_certificate(
        &self,
        address: &Address,
        device: DeviceId,
    ) -> Option<&DeviceCertificate> {
        self.certs.get(&(address.clone(), device))
    }
}

/// What to seal.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// The recipient device's certificate.
    pub recipient: &'a DeviceCertificate,
    /// The message id (normally [`MessageId::random`]).
    pub message_id: MessageId,
    /// The sender's wall-clock time.
    pub timestamp: UnixMillis,
    /// What to send.
    pub content: &'a Content,
}

/// Every intermediate value of one seal, for test vectors.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct SealTrace {
    pub(crate) plaintext: Vec<u8>,
    pub(crate) ephemeral_public: [u8; 32],
    pub(crate) shared_secret: Secret<32>,
    pub(crate) key: Secret<32>,
    pub(crate) nonce: [u8; 12],
    pub(crate) header: Vec<u8>,
    pub(crate) aad: Vec<u8>,
    pub(crate) ciphertext: Vec<u8>,
    pub(crate) signature_input: Vec<u8>,
    pub(crate) signature: [u8; 64],
}

/// Derives the one-shot AEAD key and nonce (SPEC.md 6.5):
/// `HKDF-SHA256(salt = ephemeral_pub ‖ recipient_agreement_pub, ikm = X25519 result,
/// info = framed("kogge/v1/kdf/one-shot-seal"))`, 44 bytes: key ‖ nonce.
fn one_shot_keys(
    shared: &Secret<32>,
    ephemeral_public: &[u8; 32],
    recipient_public: &[u8; 32],
) -> Result<(Secret<32>, [u8; 12]), crypto::CryptoError> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral_public);
    salt[32..].copy_from_slice(recipient_public);
    let mut okm = Secret::<44>::zeroed();
    crypto::hkdf_sha256(
        &salt,
        shared.expose(),
        Label::OneShotSealKdf,
        &[],
        okm.expose_mut(),
    )?;
    let mut key = Secret::<32>::zeroed();
    key.expose_mut().copy_from_slice(&okm.expose()[..32]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&okm.expose()[32..]);
    Ok((key, nonce))
}

fn signature_input(header: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    crypto::framed(
        Label::EnvelopeSignature,
        &[header, &crypto::sha256(ciphertext)],
    )
}

fn aad(header: &[u8]) -> Vec<u8> {
    crypto::framed(Label::EnvelopeAad, &[header])
}

/// Seals `msg` from `sender` to one recipient device: encrypts the padded content with a
/// fresh ephemeral X25519 key and signs the envelope with the sender device key.
/// Returns the encoded envelope.
pub fn seal<R: CryptoRng + ?Sized>(
    sender: &Device,
    msg: &Outgoing<'_>,
    rng: &mut R,
) -> Result<Bytes, SealError> {
    let ephemeral = x25519_dalek::StaticSecret::random_from_rng(rng);
    seal_with_ephemeral(sender, msg, ephemeral).map(|(bytes, _)| bytes)
}

pub(crate) fn seal_with_ephemeral(
    sender: &Device,
    msg: &Outgoing<'_>,
    ephemeral: x25519_dalek::StaticSecret,
) -> Result<(Bytes, SealTrace), SealError> {
    if !sender.certificate().is_valid_at(msg.timestamp) {
        return Err(SealError::SenderCertificateNotValid(msg.timestamp));
    }
    if !msg.recipient.is_valid_at(msg.timestamp) {
        return Err(SealError::RecipientCertificateNotValid(msg.timestamp));
    }
    let plaintext = msg.content.encode_padded()?;
    let ephemeral_public = x25519_dalek::PublicKey::from(&ephemeral).to_bytes();
    let recipient_public = msg.recipient.agreement_key();
    let shared =
        crypto::x25519(&ephemeral, recipient_public).map_err(|_| SealError::NonContributory)?;
    drop(ephemeral);
    let (key, nonce) = one_shot_keys(&shared, &ephemeral_public, recipient_public.as_bytes())
        .map_err(|_| SealError::NonContributory)?;
    let header = EnvelopeHeader {
        version: PROTOCOL_VERSION,
        sender: sender.address().clone(),
        sender_device: sender.id(),
        recipient: msg.recipient.address().clone(),
        recipient_device: msg.recipient.device_id(),
        message_id: msg.message_id,
        timestamp: msg.timestamp,
        content_type: ContentType::Content,
        payload: PayloadHeader::OneShot {
            ephemeral_key: ephemeral_public,
        },
    }
    .to_wire()
    .encode_to_vec();
    let aad = aad(&header);
    let ciphertext =
        crypto::aead_seal(&key, &nonce, &aad, &plaintext).map_err(|_| SealError::TooLarge {
            len: plaintext.len(),
            max: crate::limits::MAX_PLAINTEXT_LEN,
        })?;
    let (encoded, signature_input, signature) = sign_and_encode(sender, &header, &ciphertext)?;
    let trace = SealTrace {
        plaintext,
        ephemeral_public,
        shared_secret: shared,
        key,
        nonce,
        header,
        aad,
        ciphertext,
        signature_input,
        signature,
    };
    Ok((encoded, trace))
}

/// Signs `header ‖ SHA-256(ciphertext)` with the sender device key and encodes the
/// envelope. Returns (envelope, signature input, signature).
fn sign_and_encode(
    sender: &Device,
    header: &[u8],
    ciphertext: &[u8],
) -> Result<(Bytes, Vec<u8>, [u8; 64]), SealError> {
    let signature_input = signature_input(header, ciphertext);
    let signature = {
        use ed25519_dalek::Signer;
        sender.keys().signing().sign(&signature_input).to_bytes()
    };
    let encoded = wire::Envelope {
        version: PROTOCOL_VERSION,
        header: Bytes::copy_from_slice(header),
        ciphertext: Bytes::copy_from_slice(ciphertext),
        signature: Bytes::copy_from_slice(&signature),
    }
    .encode_to_vec();
    if encoded.len() > MAX_ENVELOPE_LEN {
        return Err(SealError::TooLarge {
            len: encoded.len(),
            max: MAX_ENVELOPE_LEN,
        });
    }
    Ok((Bytes::from(encoded), signature_input, signature))
}

/// Seals a session message: the caller (the session layer) supplies the ratchet header,
/// the padded encoded content and the message's AEAD key and nonce; this builds the
/// signed header, encrypts with AAD = framed("kogge/v1/aad/envelope", header) and signs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn seal_session(
    sender: &Device,
    recipient: &Address,
    recipient_device: DeviceId,
    message_id: MessageId,
    timestamp: UnixMillis,
    session: SessionHeader,
    plaintext: &[u8],
    keys: impl FnOnce(&MessageId) -> (Secret<32>, [u8; 12]),
) -> Result<Bytes, SealError> {
    if !sender.certificate().is_valid_at(timestamp) {
        return Err(SealError::SenderCertificateNotValid(timestamp));
    }
    let header = EnvelopeHeader {
        version: PROTOCOL_VERSION,
        sender: sender.address().clone(),
        sender_device: sender.id(),
        recipient: recipient.clone(),
        recipient_device,
        message_id,
        timestamp,
        content_type: ContentType::Content,
        payload: PayloadHeader::Session(session),
    }
    .to_wire()
    .encode_to_vec();
    if header.len() > MAX_HEADER_LEN {
        return Err(SealError::TooLarge {
            len: header.len(),
            max: MAX_HEADER_LEN,
        });
    }
    let (key, nonce) = keys(&message_id);
    let ciphertext = crypto::aead_seal(&key, &nonce, &aad(&header), plaintext).map_err(|_| {
        SealError::TooLarge {
            len: plaintext.len(),
            max: crate::limits::MAX_PLAINTEXT_LEN,
        }
    })?;
    sign_and_encode(sender, &header, &ciphertext).map(|(bytes, _, _)| bytes)
}

/// An envelope that has been parsed but whose signature has not been checked. Its header
/// is a *claim*: route on it if you must, trust nothing in it.
#[derive(Clone)]
pub struct UnverifiedEnvelope {
    header: EnvelopeHeader,
    header_bytes: Bytes,
    ciphertext: Bytes,
    signature: Signature,
}

impl fmt::Debug for UnverifiedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnverifiedEnvelope")
            .field("claimed_header", &self.header)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl UnverifiedEnvelope {
    /// Parses an envelope. Checks, in order: total size, outer structure, version, part
    /// sizes, header structure, addresses. No cryptography is done. The returned value
    /// borrows (zero-copy) from `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Self, OpenError> {
        use OpenError as E;
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(E::TooLarge {
                what: "envelope",
                len: bytes.len(),
                max: MAX_ENVELOPE_LEN,
            });
        }
        // The plain encoding (what every encoder writes) is read directly; anything else
        // is left to prost, with the same result (see `plain`).
        let prost_signature;
        let (version, header_bytes, ciphertext, signature) = match plain::parse_envelope(&bytes) {
            Some(raw) => (
                raw.version,
                plain::within(&bytes, raw.header),
                plain::within(&bytes, raw.ciphertext),
                raw.signature,
            ),
            None => {
                let w = wire::Envelope::decode(bytes.clone()).map_err(|_| E::Decode)?;
                prost_signature = w.signature;
                (w.version, w.header, w.ciphertext, &prost_signature[..])
            }
        };
        if version != PROTOCOL_VERSION {
            return Err(E::UnsupportedVersion(version));
        }
        if header_bytes.len() > MAX_HEADER_LEN {
            return Err(E::TooLarge {
                what: "header",
                len: header_bytes.len(),
                max: MAX_HEADER_LEN,
            });
        }
        if ciphertext.len() > MAX_CIPHERTEXT_LEN {
            return Err(E::TooLarge {
                what: "ciphertext",
                len: ciphertext.len(),
                max: MAX_CIPHERTEXT_LEN,
            });
        }
        if ciphertext.len() < AEAD_TAG_LEN {
            return Err(E::InvalidField("ciphertext"));
        }
        let signature = crypto::signature(signature).map_err(|_| E::InvalidField("signature"))?;
        let header = match plain::parse(&header_bytes) {
            Some(raw) => EnvelopeHeader::from_raw(raw, &header_bytes)?,
            None => {
                let w =
                    wire::EnvelopeHeader::decode(header_bytes.clone()).map_err(|_| E::Decode)?;
                EnvelopeHeader::from_wire(w)?
            }
        };
        Ok(Self {
            header,
            header_bytes,
            ciphertext,
            signature,
        })
    }

    /// The header as claimed by whoever sent the bytes. Not authenticated.
    pub fn claimed_header(&self) -> &EnvelopeHeader {
        &self.header
    }

    /// The header as claimed, keeping its fields instead of copying them (for a caller
    /// that has no further use for the envelope). Not authenticated.
    pub(crate) fn into_claimed_header(self) -> EnvelopeHeader {
        self.header
    }

    /// The exact header bytes as received.
    pub fn header_bytes(&self) -> &Bytes {
        &self.header_bytes
    }

    /// The ciphertext as received.
    pub fn ciphertext(&self) -> &Bytes {
        &self.ciphertext
    }

    /// The signature as received.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    pub(crate) fn signature_input(&self) -> Vec<u8> {
        signature_input(&self.header_bytes, &self.ciphertext)
    }

    /// Checks that `sender` is the certificate of the claimed sender device and valid at
    /// the envelope's timestamp (not `now`: a message queued while its sender's
    /// certificate was valid stays readable), then verifies the signature (strict
    /// Ed25519) over the exact bytes received.
    pub fn verify(self, sender: &DeviceCertificate) -> Result<VerifiedEnvelope, OpenError> {
        self.check_sender(sender)?;
        crypto::verify_message(
            sender.signing_key(),
            &self.signature_input(),
            &self.signature,
        )
        .map_err(|_| OpenError::BadSignature)?;
        Ok(self.into_verified(sender))
    }

    fn check_sender(&self, sender: &DeviceCertificate) -> Result<(), OpenError> {
        if sender.address() != &self.header.sender
            || sender.device_id() != self.header.sender_device
        {
            return Err(OpenError::SenderMismatch);
        }
        if !sender.is_valid_at(self.header.timestamp) {
            return Err(OpenError::SenderCertificateNotValid);
        }
        Ok(())
    }

    /// Only called once the signature has been checked (singly or in a batch).
    fn into_verified(self, sender: &DeviceCertificate) -> VerifiedEnvelope {
        VerifiedEnvelope {
            inner: self,
            sender_identity: *sender.identity_key(),
            _proof: SignatureChecked(()),
        }
    }
}

/// Proof that a signature was checked; only this module can make one.
#[derive(Clone, Debug)]
struct SignatureChecked(());

/// An envelope whose signature verified under its sender device's certified key.
#[derive(Clone, Debug)]
pub struct VerifiedEnvelope {
    inner: UnverifiedEnvelope,
    sender_identity: IdentityKey,
    _proof: SignatureChecked,
}

/// A successfully opened envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The authenticated header.
    pub header: EnvelopeHeader,
    /// The identity key that certified the sender device.
    pub sender_identity: IdentityKey,
    /// The decrypted content.
    pub content: Content,
}

impl VerifiedEnvelope {
    /// Checks that the envelope is addressed to `recipient` (address and device).
    pub fn check_recipient(&self, recipient: &Device) -> Result<(), OpenError> {
        let h = &self.inner.header;
        if &h.recipient != recipient.address() || h.recipient_device != recipient.id() {
            return Err(OpenError::WrongRecipient);
        }
        Ok(())
    }

    /// Decrypts a session payload with the AEAD key and nonce the session layer derived
    /// for this message, and decodes the content. Changes nothing.
    pub(crate) fn decrypt_session(
        &self,
        key: &Secret<32>,
        nonce: &[u8; 12],
    ) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        crypto::aead_open(
            key,
            nonce,
            &aad(&self.inner.header_bytes),
            &self.inner.ciphertext,
        )
        .ok()
    }

    /// The authenticated header.
    pub fn header(&self) -> &EnvelopeHeader {
        &self.inner.header
    }

    /// The identity key that certified the sender device.
    pub fn sender_identity(&self) -> &IdentityKey {
        &self.sender_identity
    }

    /// Checks that the envelope is for `recipient` (address and device), then decrypts
    /// and decodes the content. Does not consume `self`: a failure loses nothing.
    pub fn decrypt(&self, recipient: &Device) -> Result<Opened, OpenError> {
        let h = &self.inner.header;
        self.check_recipient(recipient)?;
        let ephemeral_key = match &h.payload {
            PayloadHeader::OneShot { ephemeral_key } => *ephemeral_key,
            PayloadHeader::Session(_) => return Err(OpenError::NeedsSession),
        };
        let ephemeral = x25519_dalek::PublicKey::from(ephemeral_key);
        let shared = crypto::x25519(recipient.keys().agreement(), &ephemeral)
            .map_err(|_| OpenError::NonContributory)?;
        // The certificate carries the public key (Device guarantees it matches the secret):
        // recomputing it would cost a scalar multiplication per envelope.
        let recipient_public = *recipient.certificate().agreement_key();
        let (key, mut nonce) = one_shot_keys(&shared, &ephemeral_key, recipient_public.as_bytes())
            .map_err(|_| OpenError::DecryptFailed)?;
        let plaintext = crypto::aead_open(
            &key,
            &nonce,
            &aad(&self.inner.header_bytes),
            &self.inner.ciphertext,
        )
        .map_err(|_| OpenError::DecryptFailed);
        nonce.zeroize();
        let content = Content::decode(&plaintext?).map_err(OpenError::Content)?;
        Ok(Opened {
            header: h.clone(),
            sender_identity: self.sender_identity,
            content,
        })
    }
}

/// Opens one envelope: decode, look up the sender device, verify, decrypt, then check
/// freshness and record the id in `replay`. On any error nothing is recorded.
pub fn open(
    bytes: Bytes,
    recipient: &Device,
    directory: &impl CertificateDirectory,
    replay: &mut ReplayWindow,
    now: UnixMillis,
) -> Result<Opened, OpenError> {
    let env = UnverifiedEnvelope::decode(bytes)?;
    let h = env.claimed_header();
    let cert = directory
        .device_certificate(&h.sender, h.sender_device)
        .ok_or(OpenError::UnknownSender)?;
    let opened = env.verify(cert)?.decrypt(recipient)?;
    replay.accept(&opened.header, now)?;
    Ok(opened)
}

#[cfg(test)]
pub(crate) mod tests;
