//! Prekeys (SPEC.md 15.2): what a device publishes so that others can start sessions
//! with it while it is offline, and the secrets it keeps to answer them.
//!
//! Every prekey is signed by the device signing key, which the identity key certified
//! (device certificate), so a provider can neither forge nor swap one. One-time prekeys
//! are deleted on first use; the signed X25519 prekey and the ML-KEM-768 last-resort
//! prekey are rotated, and remember which setup base keys they have seen so that a
//! replayed first message is refused.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use bytes::Bytes;
use prost::Message;
use rand_core::CryptoRng;

use crate::crypto::{self, Label, Secret};
use crate::identity::{CertificateError, Device, DeviceCertificate, DeviceId};
use crate::limits::{
    MAX_BASE_KEYS_PER_SIGNED_PREKEY, MAX_ONE_TIME_PREKEYS, MAX_PREKEY_BUNDLE_LEN,
    MAX_SIGNED_PREKEY_LEN, ONE_TIME_PREKEY_LOW_WATERMARK, PROTOCOL_VERSION, SIGNED_PREKEY_GRACE_MS,
};
use crate::time::UnixMillis;
use crate::wire;

/// The algorithm of a prekey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PrekeyKind {
    /// X25519 (32-byte public key).
    X25519,
    /// ML-KEM-768 (1184-byte encapsulation key).
    MlKem768,
}

/// Why a prekey or bundle was refused. Stable [`code`](Self::code)s, SPEC.md 10.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrekeyError {
    /// Longer than its limit.
    #[error("{what} is {len} bytes, the maximum is {max}")]
    TooLarge {
        /// "prekey" or "bundle".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a valid protobuf encoding.
    #[error("not valid protobuf")]
    Decode,
    /// Unknown version.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u32),
    /// The bundle's device certificate was refused.
    #[error("invalid device certificate: {0}")]
    InvalidCertificate(CertificateError),
    /// A field has the wrong form (length, id 0, key not valid).
    #[error("field {0} is invalid")]
    InvalidField(&'static str),
    /// A prekey of the wrong kind or role in a bundle slot.
    #[error("prekey {0} has the wrong kind or role")]
    WrongKind(&'static str),
    /// The prekey belongs to another device than the certificate.
    #[error("prekey belongs to another device")]
    WrongDevice,
    /// The signature does not verify under the device key.
    #[error("prekey signature does not verify")]
    BadSignature,
}

impl PrekeyError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Decode => "decode",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::InvalidCertificate(_) => "invalid_certificate",
            Self::InvalidField(_) => "invalid_field",
            Self::WrongKind(_) => "wrong_kind",
            Self::WrongDevice => "wrong_device",
            Self::BadSignature => "bad_prekey_signature",
        }
    }
}

/// A verified prekey: the signature by its device was checked against the device
/// certificate. The only constructors sign or verify.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedPrekey {
    encoded: Bytes,
    device_id: DeviceId,
    id: u32,
    kind: PrekeyKind,
    one_time: bool,
    public_key: Bytes,
    created: UnixMillis,
}

impl fmt::Debug for SignedPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPrekey")
            .field("device_id", &self.device_id)
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("one_time", &self.one_time)
            .finish_non_exhaustive()
    }
}

impl SignedPrekey {
    fn sign(
        device: &Device,
        id: u32,
        kind: PrekeyKind,
        one_time: bool,
        public_key: &[u8],
        created: UnixMillis,
    ) -> Self {
        let body = wire::PrekeyBody {
            version: PROTOCOL_VERSION,
            device_id: Bytes::copy_from_slice(device.id().as_bytes()),
            id,
            kind: match kind {
                PrekeyKind::X25519 => wire::PrekeyKind::X25519 as i32,
                PrekeyKind::MlKem768 => wire::PrekeyKind::MlKem768 as i32,
            },
            one_time,
            public_key: Bytes::copy_from_slice(public_key),
            created_ms: created.0,
        }
        .encode_to_vec();
        let signature = crypto::sign(device.keys().signing(), Label::PrekeySignature, &[&body]);
        let encoded = wire::SignedPrekey {
            body: Bytes::from(body),
            signature: Bytes::copy_from_slice(&signature.to_bytes()),
        }
        .encode_to_vec();
        Self {
            encoded: Bytes::from(encoded),
            device_id: device.id(),
            id,
            kind,
            one_time,
            public_key: Bytes::copy_from_slice(public_key),
            created,
        }
    }

    #[cfg(test)]
    pub(crate) fn sign_for_vectors(
        device: &Device,
        id: u32,
        public_key: &[u8],
        created: UnixMillis,
    ) -> Self {
        Self::sign(device, id, PrekeyKind::X25519, true, public_key, created)
    }

    /// Decodes a prekey and verifies it against the device certificate of its owner.
    pub fn decode(encoded: Bytes, owner: &DeviceCertificate) -> Result<Self, PrekeyError> {
        use PrekeyError as E;
        if encoded.len() > MAX_SIGNED_PREKEY_LEN {
            return Err(E::TooLarge {
                what: "prekey",
                len: encoded.len(),
                max: MAX_SIGNED_PREKEY_LEN,
            });
        }
        let outer = wire::SignedPrekey::decode(encoded.clone()).map_err(|_| E::Decode)?;
        let body = wire::PrekeyBody::decode(outer.body.clone()).map_err(|_| E::Decode)?;
        if body.version != PROTOCOL_VERSION {
            return Err(E::UnsupportedVersion(body.version));
        }
        let device_id =
            DeviceId::from_slice(&body.device_id).ok_or(E::InvalidField("device_id"))?;
        if body.id == 0 {
            return Err(E::InvalidField("id"));
        }
        let kind = match wire::PrekeyKind::try_from(body.kind) {
            Ok(wire::PrekeyKind::X25519) => PrekeyKind::X25519,
            Ok(wire::PrekeyKind::MlKem768) => PrekeyKind::MlKem768,
            _ => return Err(E::InvalidField("kind")),
        };
        match kind {
            PrekeyKind::X25519 if body.public_key.len() != 32 => {
                return Err(E::InvalidField("public_key"));
            }
            PrekeyKind::MlKem768 => {
                crypto::kem_check_public_key(&body.public_key)
                    .map_err(|_| E::InvalidField("public_key"))?;
            }
            _ => {}
        }
        if device_id != owner.device_id() {
            return Err(E::WrongDevice);
        }
        let signature = crypto::signature(&outer.signature).map_err(|_| E::BadSignature)?;
        crypto::verify(
            owner.signing_key(),
            Label::PrekeySignature,
            &[&outer.body],
            &signature,
        )
        .map_err(|_| E::BadSignature)?;
        Ok(Self {
            encoded,
            device_id,
            id: body.id,
            kind,
            one_time: body.one_time,
            public_key: body.public_key,
            created: UnixMillis(body.created_ms),
        })
    }

    /// The encoding, exactly as signed or received.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }
    /// The owning device.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }
    /// The prekey id (never 0).
    pub fn id(&self) -> u32 {
        self.id
    }
    /// The algorithm.
    pub fn kind(&self) -> PrekeyKind {
        self.kind
    }
    /// Whether it is a one-time prekey.
    pub fn is_one_time(&self) -> bool {
        self.one_time
    }
    /// The public key bytes.
    pub fn public_key(&self) -> &Bytes {
        &self.public_key
    }
    /// When it was made.
    pub fn created(&self) -> UnixMillis {
        self.created
    }

    pub(crate) fn x25519(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        if let Ok(b) = <[u8; 32]>::try_from(self.public_key.as_ref()) {
            k = b;
        }
        k
    }
}

/// Everything an initiator needs to start a session with one device (SPEC.md 15.2):
/// the device certificate, its signed X25519 prekey, its ML-KEM-768 prekey and, while
/// the pool lasts, one one-time prekey. All verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrekeyBundle {
    certificate: DeviceCertificate,
    signed_prekey: SignedPrekey,
    kem_prekey: SignedPrekey,
    one_time_prekey: Option<SignedPrekey>,
}

impl PrekeyBundle {
    /// Assembles a bundle from verified parts, checking kinds and roles.
    pub fn new(
        certificate: DeviceCertificate,
        signed_prekey: SignedPrekey,
        kem_prekey: SignedPrekey,
        one_time_prekey: Option<SignedPrekey>,
    ) -> Result<Self, PrekeyError> {
        let dev = certificate.device_id();
        let all = [
            Some(&signed_prekey),
            Some(&kem_prekey),
            one_time_prekey.as_ref(),
        ];
        if all.iter().flatten().any(|p| p.device_id != dev) {
            return Err(PrekeyError::WrongDevice);
        }
        if signed_prekey.kind != PrekeyKind::X25519 || signed_prekey.one_time {
            return Err(PrekeyError::WrongKind("signed_prekey"));
        }
        if kem_prekey.kind != PrekeyKind::MlKem768 || kem_prekey.one_time {
            return Err(PrekeyError::WrongKind("kem_prekey"));
        }
        if let Some(o) = &one_time_prekey
            && (o.kind != PrekeyKind::X25519 || !o.one_time)
        {
            return Err(PrekeyError::WrongKind("one_time_prekey"));
        }
        Ok(Self {
            certificate,
            signed_prekey,
            kem_prekey,
            one_time_prekey,
        })
    }

    /// Encodes the bundle.
    pub fn encode(&self) -> Bytes {
        Bytes::from(
            wire::PrekeyBundle {
                device_certificate: self.certificate.encoded().clone(),
                signed_prekey: Some(wire_prekey(&self.signed_prekey)),
                kem_prekey: Some(wire_prekey(&self.kem_prekey)),
                one_time_prekey: self.one_time_prekey.as_ref().map(wire_prekey),
            }
            .encode_to_vec(),
        )
    }

    /// Decodes and verifies a bundle: size, structure, the certificate, every prekey's
    /// signature by the certified device key, kinds and roles.
    pub fn decode(encoded: Bytes) -> Result<Self, PrekeyError> {
        use PrekeyError as E;
        if encoded.len() > MAX_PREKEY_BUNDLE_LEN {
            return Err(E::TooLarge {
                what: "bundle",
                len: encoded.len(),
                max: MAX_PREKEY_BUNDLE_LEN,
            });
        }
        let b = wire::PrekeyBundle::decode(encoded).map_err(|_| E::Decode)?;
        let certificate =
            DeviceCertificate::decode(b.device_certificate).map_err(E::InvalidCertificate)?;
        let prekey = |p: Option<wire::SignedPrekey>, field| -> Result<SignedPrekey, PrekeyError> {
            let p = p.ok_or(E::InvalidField(field))?;
            SignedPrekey::decode(Bytes::from(p.encode_to_vec()), &certificate)
        };
        let signed_prekey = prekey(b.signed_prekey, "signed_prekey")?;
        let kem_prekey = prekey(b.kem_prekey, "kem_prekey")?;
        let one_time_prekey = match b.one_time_prekey {
            None => None,
            Some(p) => Some(prekey(Some(p), "one_time_prekey")?),
        };
        Self::new(certificate, signed_prekey, kem_prekey, one_time_prekey)
    }

    /// The device certificate.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.certificate
    }
    /// The signed X25519 prekey.
    pub fn signed_prekey(&self) -> &SignedPrekey {
        &self.signed_prekey
    }
    /// The ML-KEM-768 prekey.
    pub fn kem_prekey(&self) -> &SignedPrekey {
        &self.kem_prekey
    }
    /// The one-time prekey, if any.
    pub fn one_time_prekey(&self) -> Option<&SignedPrekey> {
        self.one_time_prekey.as_ref()
    }
}

fn wire_prekey(p: &SignedPrekey) -> wire::SignedPrekey {
    // The stored encoding is a valid SignedPrekey; re-decoding it cannot fail, and if it
    // somehow did, an empty message would be refused by the receiver.
    wire::SignedPrekey::decode(p.encoded.clone()).unwrap_or_default()
}

/// A signed X25519 prekey's secret and the base keys it has accepted.
#[derive(Clone)]
pub(crate) struct SignedSecret {
    pub(crate) secret: Secret<32>,
    pub(crate) public: SignedPrekey,
    pub(crate) retired_at: Option<UnixMillis>,
    pub(crate) base_keys: HashSet<[u8; 32]>,
}

/// An ML-KEM-768 prekey's seed (what is persisted) and its expanded key.
#[derive(Clone)]
pub(crate) struct KemSecret {
    pub(crate) seed: Secret<64>,
    pub(crate) expanded: crypto::KemDecapsulationKey,
    pub(crate) public: SignedPrekey,
    pub(crate) retired_at: Option<UnixMillis>,
}

/// A one-time X25519 prekey's secret.
#[derive(Clone)]
pub(crate) struct OneTimeSecret {
    pub(crate) secret: Secret<32>,
    pub(crate) public: SignedPrekey,
}

/// What a device publishes to its provider.
#[derive(Clone, Debug)]
pub struct PublishedPrekeys {
    /// The current signed X25519 prekey.
    pub signed_prekey: SignedPrekey,
    /// The current ML-KEM-768 prekey.
    pub kem_prekey: SignedPrekey,
    /// The unused one-time prekeys.
    pub one_time_prekeys: Vec<SignedPrekey>,
}

/// A device's prekey secrets.
#[derive(Clone)]
pub struct PrekeyStore {
    pub(crate) signed: BTreeMap<u32, SignedSecret>,
    pub(crate) kem: BTreeMap<u32, KemSecret>,
    pub(crate) one_time: BTreeMap<u32, OneTimeSecret>,
    /// The current signed prekey (its secret is in `signed`).
    pub(crate) current_signed: SignedPrekey,
    /// The current ML-KEM prekey (its seed is in `kem`).
    pub(crate) current_kem: SignedPrekey,
    pub(crate) next_id: u32,
}

impl fmt::Debug for PrekeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrekeyStore")
            .field("current_signed", &self.current_signed.id)
            .field("current_kem", &self.current_kem.id)
            .field("one_time", &self.one_time.len())
            .finish_non_exhaustive()
    }
}

impl PrekeyStore {
    /// A store with a fresh signed prekey and ML-KEM prekey, and no one-time prekeys.
    pub fn new<R: CryptoRng + ?Sized>(device: &Device, now: UnixMillis, rng: &mut R) -> Self {
        let mut signed = BTreeMap::new();
        let mut kem = BTreeMap::new();
        let mut next_id = 1;
        let (current_signed, current_kem) =
            Self::make_pair(device, now, rng, &mut next_id, &mut signed, &mut kem);
        Self {
            signed,
            kem,
            one_time: BTreeMap::new(),
            current_signed,
            current_kem,
            next_id,
        }
    }

    fn make_pair<R: CryptoRng + ?Sized>(
        device: &Device,
        now: UnixMillis,
        rng: &mut R,
        next_id: &mut u32,
        signed: &mut BTreeMap<u32, SignedSecret>,
        kem: &mut BTreeMap<u32, KemSecret>,
    ) -> (SignedPrekey, SignedPrekey) {
        let secret = x25519_dalek::StaticSecret::random_from_rng(rng);
        let public = x25519_dalek::PublicKey::from(&secret);
        let id = *next_id;
        let spk = SignedPrekey::sign(
            device,
            id,
            PrekeyKind::X25519,
            false,
            public.as_bytes(),
            now,
        );
        signed.insert(
            id,
            SignedSecret {
                secret: Secret::new(secret.to_bytes()),
                public: spk.clone(),
                retired_at: None,
                base_keys: HashSet::new(),
            },
        );
        let mut seed = Secret::<64>::zeroed();
        rng.fill_bytes(seed.expose_mut());
        let expanded = crypto::KemDecapsulationKey::from_seed(&seed);
        let kem_public = expanded.public_key();
        let id = id.saturating_add(1);
        let kpk = SignedPrekey::sign(device, id, PrekeyKind::MlKem768, false, &kem_public, now);
        kem.insert(
            id,
            KemSecret {
                public: kpk.clone(),
                seed,
                expanded,
                retired_at: None,
            },
        );
        *next_id = id.saturating_add(1);
        (spk, kpk)
    }

    /// The next prekey id, or `None` once all ids (1 to 2^32 - 2) are used: ids are never
    /// reused, so such a device must re-register with new device keys.
    fn take_id(&mut self) -> Option<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1)?;
        Some(id)
    }

    /// Makes a new signed prekey and ML-KEM prekey current; the previous ones keep
    /// accepting first messages for [`SIGNED_PREKEY_GRACE_MS`].
    /// After 2^32 - 2 prekey ids the current prekeys stay in place (ids are never reused).
    pub fn rotate<R: CryptoRng + ?Sized>(&mut self, device: &Device, now: UnixMillis, rng: &mut R) {
        if self.next_id > u32::MAX - 2 {
            return;
        }
        if let Some(old) = self.signed.get_mut(&self.current_signed.id) {
            old.retired_at = Some(now);
        }
        if let Some(old) = self.kem.get_mut(&self.current_kem.id) {
            old.retired_at = Some(now);
        }
        let (spk, kpk) = Self::make_pair(
            device,
            now,
            rng,
            &mut self.next_id,
            &mut self.signed,
            &mut self.kem,
        );
        self.current_signed = spk;
        self.current_kem = kpk;
    }

    /// Tops the one-time pool up to [`MAX_ONE_TIME_PREKEYS`]; returns the new prekeys,
    /// to be published.
    pub fn replenish<R: CryptoRng + ?Sized>(
        &mut self,
        device: &Device,
        now: UnixMillis,
        rng: &mut R,
    ) -> Vec<SignedPrekey> {
        let mut new = Vec::new();
        while self.one_time.len() < MAX_ONE_TIME_PREKEYS {
            let secret = x25519_dalek::StaticSecret::random_from_rng(rng);
            let public = x25519_dalek::PublicKey::from(&secret);
            let Some(id) = self.take_id() else { break };
            let signed =
                SignedPrekey::sign(device, id, PrekeyKind::X25519, true, public.as_bytes(), now);
            new.push(signed.clone());
            self.one_time.insert(
                id,
                OneTimeSecret {
                    secret: Secret::new(secret.to_bytes()),
                    public: signed,
                },
            );
        }
        new
    }

    /// Makes `count` new one-time prekeys (at most [`MAX_ONE_TIME_PREKEYS`]) even if the
    /// pool is full, then deletes the oldest ones (lowest ids) until the pool holds at
    /// most [`MAX_ONE_TIME_PREKEYS`]; returns the new prekeys, to be published.
    ///
    /// This is what a device does when its provider reports that its pool there runs
    /// low: the local pool may still look full, because prekeys the provider handed out
    /// stay here until an initiator uses them. The provider hands out the oldest first,
    /// so the ones deleted here are the ones most likely handed out and abandoned; a
    /// first message that names a deleted one is refused (`unknown_prekey`).
    pub fn mint_one_time<R: CryptoRng + ?Sized>(
        &mut self,
        device: &Device,
        count: usize,
        now: UnixMillis,
        rng: &mut R,
    ) -> Vec<SignedPrekey> {
        let mut new = Vec::new();
        for _ in 0..count.min(MAX_ONE_TIME_PREKEYS) {
            let secret = x25519_dalek::StaticSecret::random_from_rng(rng);
            let public = x25519_dalek::PublicKey::from(&secret);
            let Some(id) = self.take_id() else { break };
            let signed =
                SignedPrekey::sign(device, id, PrekeyKind::X25519, true, public.as_bytes(), now);
            new.push(signed.clone());
            self.one_time.insert(
                id,
                OneTimeSecret {
                    secret: Secret::new(secret.to_bytes()),
                    public: signed,
                },
            );
        }
        while self.one_time.len() > MAX_ONE_TIME_PREKEYS {
            self.one_time.pop_first();
        }
        new
    }

    /// Deletes rotated-out prekeys whose grace period is over.
    pub fn purge(&mut self, now: UnixMillis) {
        let expired = |r: Option<UnixMillis>| {
            r.is_some_and(|t| t.saturating_add(SIGNED_PREKEY_GRACE_MS) < now)
        };
        self.signed.retain(|_, s| !expired(s.retired_at));
        self.kem.retain(|_, s| !expired(s.retired_at));
    }

    /// Unused one-time prekeys.
    pub fn one_time_count(&self) -> usize {
        self.one_time.len()
    }

    /// Whether the one-time pool is below [`ONE_TIME_PREKEY_LOW_WATERMARK`].
    pub fn needs_replenish(&self) -> bool {
        self.one_time.len() < ONE_TIME_PREKEY_LOW_WATERMARK
    }

    /// What to publish: the current prekeys and the unused one-time prekeys.
    pub fn published(&self) -> PublishedPrekeys {
        PublishedPrekeys {
            signed_prekey: self.current_signed.clone(),
            kem_prekey: self.current_kem.clone(),
            one_time_prekeys: self.one_time.values().map(|o| o.public.clone()).collect(),
        }
    }

    /// A bundle of this device's own prekeys (as a provider would hand out), using the
    /// one-time prekey `one_time` if given and still unused.
    pub fn bundle(
        &self,
        device: &Device,
        one_time: Option<u32>,
    ) -> Result<PrekeyBundle, PrekeyError> {
        let p = self.published();
        let otk = one_time
            .and_then(|id| self.one_time.get(&id))
            .map(|o| o.public.clone());
        PrekeyBundle::new(
            device.certificate().clone(),
            p.signed_prekey,
            p.kem_prekey,
            otk,
        )
    }

    pub(crate) fn base_key_seen(&self, spk: u32, base_key: &[u8; 32]) -> bool {
        self.signed
            .get(&spk)
            .is_some_and(|s| s.base_keys.contains(base_key))
    }

    pub(crate) fn base_keys_full(&self, spk: u32) -> bool {
        self.signed
            .get(&spk)
            .is_some_and(|s| s.base_keys.len() >= MAX_BASE_KEYS_PER_SIGNED_PREKEY)
    }

    /// Records a completed setup: remembers the base key, deletes the one-time prekey.
    pub(crate) fn record_setup(&mut self, spk: u32, base_key: [u8; 32], one_time: Option<u32>) {
        if let Some(s) = self.signed.get_mut(&spk) {
            s.base_keys.insert(base_key);
        }
        if let Some(id) = one_time {
            self.one_time.remove(&id);
        }
    }
}
