//! Keys and certificates (SPEC.md section 4).
//!
//! * A user has one Ed25519 **identity key** ([`IdentityKeyPair`]). It never signs
//!   messages; it authorises devices.
//! * Each device has an Ed25519 **signing key** (it signs envelopes) and an X25519
//!   **agreement key** (envelopes are sealed to it): a [`DeviceKeyPair`]. Its
//!   [`DeviceId`] is derived from the signing key.
//! * A [`DeviceCertificate`] binds the device keys to the full `user@provider`
//!   address and the identity key. The identity key signs it, and so does the device
//!   key itself (proof of possession), so no one can certify a device key they do not
//!   hold, nor claim someone else's device.
//! * A provider has an Ed25519 **provider key** ([`ProviderKeyPair`]) for
//!   provider-to-provider authentication.
//!
//! Secret halves are boxed, wiped on drop, redacted in `Debug`, and leave only through
//! explicit `secret_bytes` calls returning a [`Secret`].

mod device_list;
mod fingerprint;

use std::fmt;

use bytes::Bytes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use rand_core::CryptoRng;

use crate::address::{Address, AddressError};
use crate::crypto::{self, Label, Secret};
use crate::limits::{MAX_CERTIFICATE_LEN, PROTOCOL_VERSION};
use crate::time::UnixMillis;
use crate::wire;

pub use device_list::{DeviceEvent, DeviceList, DeviceListError, DeviceLists};
pub use fingerprint::{Fingerprint, FingerprintError, SafetyNumber, decode_scannable};

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

macro_rules! public_ed25519_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(VerifyingKey);

        impl $name {
            /// Parses a 32-byte public key, refusing invalid and weak (small-order) keys.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, crypto::CryptoError> {
                crypto::verifying_key(bytes).map(Self)
            }

            /// The 32-byte encoding.
            pub fn to_bytes(&self) -> [u8; 32] {
                self.0.to_bytes()
            }

            /// The key as an `ed25519-dalek` verifying key.
            pub fn as_verifying_key(&self) -> &VerifyingKey {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), hex(self.0.as_bytes()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex(self.0.as_bytes()))
            }
        }
    };
}

macro_rules! secret_ed25519_key {
    ($(#[$doc:meta])* $name:ident, $public:ident) => {
        $(#[$doc])*
        pub struct $name(Box<SigningKey>);

        impl $name {
            /// Generates a new key from the injected CSPRNG.
            pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
                Self(Box::new(SigningKey::generate(rng)))
            }

            /// Rebuilds the key from its 32-byte secret seed.
            pub fn from_secret_bytes(secret: &Secret<32>) -> Self {
                Self(Box::new(SigningKey::from_bytes(secret.expose())))
            }

            /// The 32-byte secret seed, for the application's encrypted storage.
            pub fn secret_bytes(&self) -> Secret<32> {
                Secret::new(self.0.to_bytes())
            }

            /// The public half.
            pub fn public(&self) -> $public {
                $public(self.0.verifying_key())
            }

            #[allow(dead_code)]
            pub(crate) fn signing_key(&self) -> &SigningKey {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("public", &self.public())
                    .finish_non_exhaustive()
            }
        }
    };
}

public_ed25519_key!(
    /// A user's public identity key (Ed25519).
    IdentityKey
);
secret_ed25519_key!(
    /// A user's identity key pair. It signs device certificates only.
    IdentityKeyPair,
    IdentityKey
);
public_ed25519_key!(
    /// A provider's public key (Ed25519), as published by the resolver.
    ProviderKey
);
secret_ed25519_key!(
    /// A provider's key pair, used to authenticate provider to provider.
    ProviderKeyPair,
    ProviderKey
);

impl IdentityKey {
    /// This identity's fingerprint when it is used with `address` (SPEC.md 5.1).
    pub fn fingerprint(&self, address: &Address) -> Fingerprint {
        Fingerprint::of(self, address)
    }
}

/// Identifies one device: the first 16 bytes of
/// `SHA-256(framed("kogge/v1/hash/device-id", device signing key))` (SPEC.md 4.2).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId([u8; 16]);

impl DeviceId {
    /// Derives the id of the device with this signing key.
    pub fn derive(device_signing_key: &VerifyingKey) -> Self {
        let digest = crypto::sha256(&crypto::framed(
            Label::DeviceId,
            &[device_signing_key.as_bytes()],
        ));
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }

    /// Parses 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", hex(&self.0))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// A device's secret keys: Ed25519 for signing, X25519 for agreement.
pub struct DeviceKeyPair {
    signing: Box<SigningKey>,
    agreement: Box<x25519_dalek::StaticSecret>,
}

impl DeviceKeyPair {
    /// Generates new device keys from the injected CSPRNG.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self {
            signing: Box::new(SigningKey::generate(rng)),
            agreement: Box::new(x25519_dalek::StaticSecret::random_from_rng(rng)),
        }
    }

    /// Rebuilds device keys from their secret bytes (signing seed, agreement scalar).
    pub fn from_secret_bytes(signing: &Secret<32>, agreement: &Secret<32>) -> Self {
        Self {
            signing: Box::new(SigningKey::from_bytes(signing.expose())),
            agreement: Box::new(x25519_dalek::StaticSecret::from(*agreement.expose())),
        }
    }

    /// The secret bytes (signing seed, agreement scalar) for encrypted storage.
    pub fn secret_bytes(&self) -> (Secret<32>, Secret<32>) {
        (
            Secret::new(self.signing.to_bytes()),
            Secret::new(self.agreement.to_bytes()),
        )
    }

    /// The device id.
    pub fn id(&self) -> DeviceId {
        DeviceId::derive(&self.signing.verifying_key())
    }

    /// The public signing key.
    pub fn signing_public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public agreement key.
    pub fn agreement_public(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(&*self.agreement)
    }

    pub(crate) fn signing(&self) -> &SigningKey {
        &self.signing
    }

    pub(crate) fn agreement(&self) -> &x25519_dalek::StaticSecret {
        &self.agreement
    }
}

impl fmt::Debug for DeviceKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeyPair")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// Why a device certificate was refused. Each variant has a stable
/// [`code`](CertificateError::code) that SPEC.md and the test vectors use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The encoding is longer than [`MAX_CERTIFICATE_LEN`].
    #[error("certificate is {len} bytes, the maximum is {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a valid protobuf encoding of the schema.
    #[error("certificate is not valid protobuf")]
    Decode,
    /// A version this implementation does not know.
    #[error("unsupported certificate version {0}")]
    UnsupportedVersion(u32),
    /// A field has the wrong length or form.
    #[error("certificate field {0} is invalid")]
    InvalidField(&'static str),
    /// The address does not follow the grammar.
    #[error("certificate address is invalid: {0}")]
    InvalidAddress(AddressError),
    /// The device id is not the one derived from the device signing key.
    #[error("device id does not match the device signing key")]
    DeviceIdMismatch,
    /// `not_before` is after `not_after`.
    #[error("validity interval is empty")]
    InvalidValidity,
    /// The identity key's signature does not verify.
    #[error("identity signature does not verify")]
    BadIdentitySignature,
    /// The device key's proof-of-possession signature does not verify.
    #[error("device signature does not verify")]
    BadDeviceSignature,
}

impl CertificateError {
    /// The stable error code (SPEC.md section 10).
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Decode => "decode",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::InvalidField(_) => "invalid_field",
            Self::InvalidAddress(_) => "invalid_address",
            Self::DeviceIdMismatch => "device_id_mismatch",
            Self::InvalidValidity => "invalid_validity",
            Self::BadIdentitySignature => "bad_identity_signature",
            Self::BadDeviceSignature => "bad_device_signature",
        }
    }
}

/// A verified device certificate. The only ways to get one are [`issue`](Self::issue)
/// and [`decode`](Self::decode), and `decode` checks both signatures, so holding a
/// `DeviceCertificate` means its signatures were valid. Whether its identity key is the
/// one the user expects is the application's trust decision (fingerprints, SPEC.md 5).
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    encoded: Bytes,
    address: Address,
    identity_key: IdentityKey,
    device_id: DeviceId,
    signing_key: VerifyingKey,
    agreement_key: x25519_dalek::PublicKey,
    not_before: UnixMillis,
    not_after: UnixMillis,
}

impl DeviceCertificate {
    /// Issues a certificate for `device` at `address`, signed by `identity` and by the
    /// device itself, valid from `not_before` to `not_after` inclusive.
    pub fn issue(
        identity: &IdentityKeyPair,
        device: &DeviceKeyPair,
        address: &Address,
        not_before: UnixMillis,
        not_after: UnixMillis,
    ) -> Result<Self, CertificateError> {
        if not_before > not_after {
            return Err(CertificateError::InvalidValidity);
        }
        let body = wire::DeviceCertificateBody {
            version: PROTOCOL_VERSION,
            address: address.as_str().to_owned(),
            identity_key: Bytes::copy_from_slice(identity.public().0.as_bytes()),
            device_id: Bytes::copy_from_slice(device.id().as_bytes()),
            device_signing_key: Bytes::copy_from_slice(device.signing_public().as_bytes()),
            device_agreement_key: Bytes::copy_from_slice(device.agreement_public().as_bytes()),
            not_before_ms: not_before.0,
            not_after_ms: not_after.0,
        }
        .encode_to_vec();
        let identity_signature =
            crypto::sign(&identity.0, Label::DeviceCertIdentitySignature, &[&body]);
        let device_signature =
            crypto::sign(device.signing(), Label::DeviceCertDeviceSignature, &[&body]);
        let encoded = wire::DeviceCertificate {
            body: Bytes::from(body),
            identity_signature: Bytes::copy_from_slice(&identity_signature.to_bytes()),
            device_signature: Bytes::copy_from_slice(&device_signature.to_bytes()),
        }
        .encode_to_vec();
        if encoded.len() > MAX_CERTIFICATE_LEN {
            return Err(CertificateError::TooLarge {
                len: encoded.len(),
                max: MAX_CERTIFICATE_LEN,
            });
        }
        Self::decode(Bytes::from(encoded))
    }

    /// Decodes and verifies a certificate: size, structure, version, address grammar,
    /// device-id derivation, validity interval, then both signatures over the exact body
    /// bytes received.
    pub fn decode(encoded: Bytes) -> Result<Self, CertificateError> {
        use CertificateError as E;
        let p = parse_certificate(encoded.clone())?;
        let identity_signature =
            crypto::signature(&p.identity_signature).map_err(|_| E::BadIdentitySignature)?;
        let device_signature =
            crypto::signature(&p.device_signature).map_err(|_| E::BadDeviceSignature)?;
        crypto::verify(
            &p.identity_key.0,
            Label::DeviceCertIdentitySignature,
            &[&p.body],
            &identity_signature,
        )
        .map_err(|_| E::BadIdentitySignature)?;
        crypto::verify(
            &p.signing_key,
            Label::DeviceCertDeviceSignature,
            &[&p.body],
            &device_signature,
        )
        .map_err(|_| E::BadDeviceSignature)?;
        Ok(Self {
            encoded,
            address: p.address,
            identity_key: p.identity_key,
            device_id: p.device_id,
            signing_key: p.signing_key,
            agreement_key: p.agreement_key,
            not_before: p.not_before,
            not_after: p.not_after,
        })
    }

    /// The encoded certificate, exactly as issued or received.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// The owner's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The owner's identity key.
    pub fn identity_key(&self) -> &IdentityKey {
        &self.identity_key
    }

    /// The device id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The device's signing key.
    pub fn signing_key(&self) -> &VerifyingKey {
        &self.signing_key
    }

    /// The device's agreement key.
    pub fn agreement_key(&self) -> &x25519_dalek::PublicKey {
        &self.agreement_key
    }

    /// Start of validity, inclusive.
    pub fn not_before(&self) -> UnixMillis {
        self.not_before
    }

    /// End of validity, inclusive.
    pub fn not_after(&self) -> UnixMillis {
        self.not_after
    }

    /// Whether `t` lies within the validity interval.
    pub fn is_valid_at(&self, t: UnixMillis) -> bool {
        self.not_before <= t && t <= self.not_after
    }
}

/// A device's half of its certificate, for linking a new device: the certificate body
/// (address, identity key, device keys, validity) signed by the new device alone. The
/// holder of the identity key checks it and completes it with
/// [`approve`](Self::approve); the result is byte for byte what
/// [`DeviceCertificate::issue`] would have made. So the device's secret keys never leave
/// the new device, and the identity key never leaves the device that holds it.
///
/// Its encoding ([`encoded`](Self::encoded)) is a `DeviceCertificate` message whose
/// `identity_signature` is empty (SPEC.md 4.3). It is not a protocol message: it travels
/// between the user's own devices however they like (copied, scanned), and providers never
/// see one.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    encoded: Bytes,
    body: Bytes,
    device_signature: Bytes,
    address: Address,
    identity_key: IdentityKey,
    device_id: DeviceId,
    not_before: UnixMillis,
    not_after: UnixMillis,
}

impl CertificateRequest {
    /// Makes the request of `device` to be certified for `address` under `identity_key`,
    /// valid from `not_before` to `not_after` inclusive.
    pub fn new(
        identity_key: &IdentityKey,
        device: &DeviceKeyPair,
        address: &Address,
        not_before: UnixMillis,
        not_after: UnixMillis,
    ) -> Result<Self, CertificateError> {
        if not_before > not_after {
            return Err(CertificateError::InvalidValidity);
        }
        let body = wire::DeviceCertificateBody {
            version: PROTOCOL_VERSION,
            address: address.as_str().to_owned(),
            identity_key: Bytes::copy_from_slice(identity_key.0.as_bytes()),
            device_id: Bytes::copy_from_slice(device.id().as_bytes()),
            device_signing_key: Bytes::copy_from_slice(device.signing_public().as_bytes()),
            device_agreement_key: Bytes::copy_from_slice(device.agreement_public().as_bytes()),
            not_before_ms: not_before.0,
            not_after_ms: not_after.0,
        }
        .encode_to_vec();
        let device_signature =
            crypto::sign(device.signing(), Label::DeviceCertDeviceSignature, &[&body]);
        let encoded = wire::DeviceCertificate {
            body: Bytes::from(body),
            identity_signature: Bytes::new(),
            device_signature: Bytes::copy_from_slice(&device_signature.to_bytes()),
        }
        .encode_to_vec();
        Self::decode(Bytes::from(encoded))
    }

    /// Decodes a request and checks it as a certificate is checked (SPEC.md 4.3), except
    /// that the identity signature must be absent: size, structure, version, address,
    /// keys, device-id derivation, validity interval, and the device's signature.
    pub fn decode(encoded: Bytes) -> Result<Self, CertificateError> {
        use CertificateError as E;
        let parsed = parse_certificate(encoded.clone())?;
        if !parsed.identity_signature.is_empty() {
            return Err(E::InvalidField("identity_signature"));
        }
        let device_signature =
            crypto::signature(&parsed.device_signature).map_err(|_| E::BadDeviceSignature)?;
        crypto::verify(
            &parsed.signing_key,
            Label::DeviceCertDeviceSignature,
            &[&parsed.body],
            &device_signature,
        )
        .map_err(|_| E::BadDeviceSignature)?;
        Ok(Self {
            encoded,
            body: parsed.body,
            device_signature: parsed.device_signature,
            address: parsed.address,
            identity_key: parsed.identity_key,
            device_id: parsed.device_id,
            not_before: parsed.not_before,
            not_after: parsed.not_after,
        })
    }

    /// Completes the certificate with `identity`'s signature. Fails with
    /// `InvalidField("identity_key")` if the request names another identity key.
    pub fn approve(
        &self,
        identity: &IdentityKeyPair,
    ) -> Result<DeviceCertificate, CertificateError> {
        if identity.public() != self.identity_key {
            return Err(CertificateError::InvalidField("identity_key"));
        }
        let identity_signature = crypto::sign(
            &identity.0,
            Label::DeviceCertIdentitySignature,
            &[&self.body],
        );
        let encoded = wire::DeviceCertificate {
            body: self.body.clone(),
            identity_signature: Bytes::copy_from_slice(&identity_signature.to_bytes()),
            device_signature: self.device_signature.clone(),
        }
        .encode_to_vec();
        DeviceCertificate::decode(Bytes::from(encoded))
    }

    /// The encoded request.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// The address the device asks to be certified for.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The identity key it asks to be certified by.
    pub fn identity_key(&self) -> &IdentityKey {
        &self.identity_key
    }

    /// The new device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// Start of validity, inclusive.
    pub fn not_before(&self) -> UnixMillis {
        self.not_before
    }

    /// End of validity, inclusive.
    pub fn not_after(&self) -> UnixMillis {
        self.not_after
    }
}

impl fmt::Debug for CertificateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRequest")
            .field("address", &self.address)
            .field("device_id", &self.device_id)
            .field("identity_key", &self.identity_key)
            .finish_non_exhaustive()
    }
}

/// A certificate's fields once everything but the signatures is checked.
struct ParsedCertificate {
    body: Bytes,
    identity_signature: Bytes,
    device_signature: Bytes,
    address: Address,
    identity_key: IdentityKey,
    device_id: DeviceId,
    signing_key: VerifyingKey,
    agreement_key: x25519_dalek::PublicKey,
    not_before: UnixMillis,
    not_after: UnixMillis,
}

/// Checks a certificate's size, structure, version, address, keys, device-id derivation
/// and validity interval (VAL-CERT order); the signatures are left to the caller.
fn parse_certificate(encoded: Bytes) -> Result<ParsedCertificate, CertificateError> {
    use CertificateError as E;
    if encoded.len() > MAX_CERTIFICATE_LEN {
        return Err(E::TooLarge {
            len: encoded.len(),
            max: MAX_CERTIFICATE_LEN,
        });
    }
    let outer = wire::DeviceCertificate::decode(encoded).map_err(|_| E::Decode)?;
    let body = wire::DeviceCertificateBody::decode(outer.body.clone()).map_err(|_| E::Decode)?;
    if body.version != PROTOCOL_VERSION {
        return Err(E::UnsupportedVersion(body.version));
    }
    let address = Address::parse_canonical(&body.address).map_err(E::InvalidAddress)?;
    let identity_key =
        IdentityKey::from_bytes(&body.identity_key).map_err(|_| E::InvalidField("identity_key"))?;
    let device_id = DeviceId::from_slice(&body.device_id).ok_or(E::InvalidField("device_id"))?;
    let signing_key = crypto::verifying_key(&body.device_signing_key)
        .map_err(|_| E::InvalidField("device_signing_key"))?;
    let agreement: [u8; 32] = body
        .device_agreement_key
        .as_ref()
        .try_into()
        .map_err(|_| E::InvalidField("device_agreement_key"))?;
    if DeviceId::derive(&signing_key) != device_id {
        return Err(E::DeviceIdMismatch);
    }
    if body.not_before_ms > body.not_after_ms {
        return Err(E::InvalidValidity);
    }
    Ok(ParsedCertificate {
        body: outer.body,
        identity_signature: outer.identity_signature,
        device_signature: outer.device_signature,
        address,
        identity_key,
        device_id,
        signing_key,
        agreement_key: x25519_dalek::PublicKey::from(agreement),
        not_before: UnixMillis(body.not_before_ms),
        not_after: UnixMillis(body.not_after_ms),
    })
}

impl fmt::Debug for DeviceCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCertificate")
            .field("address", &self.address)
            .field("device_id", &self.device_id)
            .field("identity_key", &self.identity_key)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A device of this user: its address, its secret keys and its certificate. This is
/// what seals (signs) and opens (decrypts) envelopes.
pub struct Device {
    keys: DeviceKeyPair,
    certificate: DeviceCertificate,
}

/// The device keys do not match the certificate offered with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("device keys do not match the certificate")]
pub struct KeyMismatch;

impl Device {
    /// Creates a device: issues its certificate under `identity` for `address`.
    pub fn new(
        identity: &IdentityKeyPair,
        address: Address,
        keys: DeviceKeyPair,
        not_before: UnixMillis,
        not_after: UnixMillis,
    ) -> Result<Self, CertificateError> {
        let certificate =
            DeviceCertificate::issue(identity, &keys, &address, not_before, not_after)?;
        Ok(Self { keys, certificate })
    }

    /// Rebuilds a device from stored keys and its certificate, checking that they match.
    pub fn from_parts(
        keys: DeviceKeyPair,
        certificate: DeviceCertificate,
    ) -> Result<Self, KeyMismatch> {
        if keys.signing_public() != certificate.signing_key
            || keys.agreement_public() != certificate.agreement_key
        {
            return Err(KeyMismatch);
        }
        Ok(Self { keys, certificate })
    }

    /// This device's address.
    pub fn address(&self) -> &Address {
        &self.certificate.address
    }

    /// This device's id.
    pub fn id(&self) -> DeviceId {
        self.certificate.device_id
    }

    /// This device's certificate.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.certificate
    }

    /// This device's secret keys.
    pub fn keys(&self) -> &DeviceKeyPair {
        &self.keys
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("address", self.address())
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
