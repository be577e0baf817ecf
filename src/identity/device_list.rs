//! Signed device lists and multi-device fan-out (SPEC.md 15.6).
//!
//! A user's identity key signs a versioned [`DeviceList`]: the certificates of every
//! device the user has. Senders encrypt to exactly the devices listed, and to their own
//! other devices; a device that is not on the signed list is never sent to, whoever
//! claims it. A provider can withhold a list or serve an old one, but it cannot add a
//! device to someone's account: it holds no identity key to sign with.
//!
//! [`DeviceLists`] tracks other users' current lists on the receiving side: the first
//! list seen for an address is trusted on first use, later lists must carry a higher
//! serial, and every change comes out as [`DeviceEvent`]s for the application. It is
//! also a [`CertificateDirectory`], so an envelope from a device that is not on its
//! sender's current list does not open (`unknown_sender`).

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use prost::Message;

use super::{CertificateError, DeviceCertificate, DeviceId, IdentityKey, IdentityKeyPair};
use crate::address::{Address, AddressError};
use crate::crypto::{self, Label};
use crate::envelope::CertificateDirectory;
use crate::limits::{MAX_DEVICE_LIST_LEN, MAX_DEVICES_PER_USER, PROTOCOL_VERSION};
use crate::time::UnixMillis;
use crate::wire;

/// Why a device list was refused. Each variant has a stable
/// [`code`](DeviceListError::code) that SPEC.md and the test vectors use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceListError {
    /// The encoding is longer than [`MAX_DEVICE_LIST_LEN`].
    #[error("device list is {len} bytes, the maximum is {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a valid protobuf encoding of the schema.
    #[error("device list is not valid protobuf")]
    Decode,
    /// A version this implementation does not know.
    #[error("unsupported device list version {0}")]
    UnsupportedVersion(u32),
    /// The address does not follow the grammar.
    #[error("device list address is invalid: {0}")]
    InvalidAddress(AddressError),
    /// A field has the wrong length or form.
    #[error("device list field {0} is invalid")]
    InvalidField(&'static str),
    /// More devices than [`MAX_DEVICES_PER_USER`].
    #[error("device list has {count} devices, the maximum is {max}")]
    TooManyDevices {
        /// How many were listed.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// No devices at all: a user always has at least one.
    #[error("device list is empty")]
    Empty,
    /// The identity key's signature does not verify over the body bytes.
    #[error("device list signature does not verify")]
    BadSignature,
    /// A listed device certificate was refused.
    #[error("listed certificate {index} is invalid: {error}")]
    InvalidCertificate {
        /// Its position in the list.
        index: usize,
        /// Why it was refused.
        #[source]
        error: CertificateError,
    },
    /// A listed certificate names another address or another identity key than the
    /// list itself: someone else's device.
    #[error("device {0} belongs to another address or identity")]
    ForeignDevice(DeviceId),
    /// The same device is listed twice.
    #[error("device {0} is listed twice")]
    DuplicateDevice(DeviceId),
    /// The serial is not newer than the list already held for this identity.
    #[error("device list serial {serial} is not newer than {current}")]
    Stale {
        /// The refused list's serial.
        serial: u64,
        /// The serial of the list already held.
        current: u64,
    },
    /// The list belongs to another user than the one it was fetched for.
    #[error("device list is for {found}, expected {expected}")]
    AddressMismatch {
        /// The address the caller asked for.
        expected: Address,
        /// The address the list names.
        found: Address,
    },
}

impl DeviceListError {
    /// The stable error code (SPEC.md section 10).
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Decode => "decode",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::InvalidAddress(_) => "invalid_address",
            Self::InvalidField(_) => "invalid_field",
            Self::TooManyDevices { .. } => "too_many_devices",
            Self::Empty => "empty",
            Self::BadSignature => "bad_signature",
            Self::InvalidCertificate { .. } => "invalid_certificate",
            Self::ForeignDevice(_) => "foreign_device",
            Self::DuplicateDevice(_) => "duplicate_device",
            Self::Stale { .. } => "stale",
            Self::AddressMismatch { .. } => "address_mismatch",
        }
    }
}

/// A verified device list. The only ways to get one are [`sign`](Self::sign) and
/// [`decode`](Self::decode), and `decode` checks the identity signature and every listed
/// certificate, so holding a `DeviceList` means that the holder of
/// [`identity_key`](Self::identity_key) listed exactly these devices for
/// [`address`](Self::address). Whether that identity key is the one the user expects is
/// the application's trust decision (fingerprints, SPEC.md 5).
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceList {
    encoded: Bytes,
    address: Address,
    identity_key: IdentityKey,
    serial: u64,
    issued: UnixMillis,
    devices: Vec<DeviceCertificate>,
}

impl DeviceList {
    /// Signs a list of `devices` for `address` with `identity`. `serial` must be higher
    /// than the serial of every list this identity signed before, or receivers refuse
    /// the new list as stale. Every certificate must be for `address` and `identity`.
    pub fn sign(
        identity: &IdentityKeyPair,
        address: &Address,
        serial: u64,
        issued: UnixMillis,
        devices: &[DeviceCertificate],
    ) -> Result<Self, DeviceListError> {
        if devices.len() > MAX_DEVICES_PER_USER {
            return Err(DeviceListError::TooManyDevices {
                count: devices.len(),
                max: MAX_DEVICES_PER_USER,
            });
        }
        let body = wire::DeviceListBody {
            version: PROTOCOL_VERSION,
            address: address.as_str().to_owned(),
            identity_key: Bytes::copy_from_slice(identity.public().0.as_bytes()),
            serial,
            issued_ms: issued.0,
            devices: devices.iter().map(|d| d.encoded().clone()).collect(),
        }
        .encode_to_vec();
        let signature = crypto::sign(&identity.0, Label::DeviceList, &[&body]);
        let encoded = wire::DeviceList {
            body: Bytes::from(body),
            signature: Bytes::copy_from_slice(&signature.to_bytes()),
        }
        .encode_to_vec();
        // `decode` checks the size first, then everything else exactly as a receiver does.
        Self::decode(Bytes::from(encoded))
    }

    /// Decodes and verifies a device list: size, structure, version, address grammar,
    /// identity key, device count, the identity signature over the exact body bytes
    /// received, then every listed certificate (valid, same address, same identity key,
    /// no device twice).
    pub fn decode(encoded: Bytes) -> Result<Self, DeviceListError> {
        use DeviceListError as E;
        if encoded.len() > MAX_DEVICE_LIST_LEN {
            return Err(E::TooLarge {
                len: encoded.len(),
                max: MAX_DEVICE_LIST_LEN,
            });
        }
        let outer = wire::DeviceList::decode(encoded.clone()).map_err(|_| E::Decode)?;
        let body = wire::DeviceListBody::decode(outer.body.clone()).map_err(|_| E::Decode)?;
        if body.version != PROTOCOL_VERSION {
            return Err(E::UnsupportedVersion(body.version));
        }
        let address = Address::parse_canonical(&body.address).map_err(E::InvalidAddress)?;
        let identity_key = IdentityKey::from_bytes(&body.identity_key)
            .map_err(|_| E::InvalidField("identity_key"))?;
        if body.devices.len() > MAX_DEVICES_PER_USER {
            return Err(E::TooManyDevices {
                count: body.devices.len(),
                max: MAX_DEVICES_PER_USER,
            });
        }
        if body.devices.is_empty() {
            return Err(E::Empty);
        }
        let signature = crypto::signature(&outer.signature).map_err(|_| E::BadSignature)?;
        crypto::verify(
            &identity_key.0,
            Label::DeviceList,
            &[&outer.body],
            &signature,
        )
        .map_err(|_| E::BadSignature)?;
        let mut devices: Vec<DeviceCertificate> = Vec::with_capacity(body.devices.len());
        for (index, bytes) in body.devices.into_iter().enumerate() {
            let cert = DeviceCertificate::decode(bytes)
                .map_err(|error| E::InvalidCertificate { index, error })?;
            if cert.address() != &address || cert.identity_key() != &identity_key {
                return Err(E::ForeignDevice(cert.device_id()));
            }
            if devices.iter().any(|d| d.device_id() == cert.device_id()) {
                return Err(E::DuplicateDevice(cert.device_id()));
            }
            devices.push(cert);
        }
        Ok(Self {
            encoded,
            address,
            identity_key,
            serial: body.serial,
            issued: UnixMillis(body.issued_ms),
            devices,
        })
    }

    /// [`decode`](Self::decode), then checks that the list is `expected`'s: use this for
    /// a list fetched for a particular user, so that a provider cannot answer with
    /// another user's list.
    pub fn decode_for(encoded: Bytes, expected: &Address) -> Result<Self, DeviceListError> {
        let list = Self::decode(encoded)?;
        if &list.address != expected {
            return Err(DeviceListError::AddressMismatch {
                expected: expected.clone(),
                found: list.address,
            });
        }
        Ok(list)
    }

    /// The encoded list, exactly as signed or received.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// The owner's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The owner's identity key, which signed the list and every listed certificate.
    pub fn identity_key(&self) -> &IdentityKey {
        &self.identity_key
    }

    /// The list's serial; a newer list has a higher one.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// When the owner signed the list (the owner's clock; informational).
    pub fn issued(&self) -> UnixMillis {
        self.issued
    }

    /// The listed devices' certificates, in list order (at least one).
    pub fn devices(&self) -> &[DeviceCertificate] {
        &self.devices
    }

    /// The listed device ids, in list order.
    pub fn device_ids(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.devices.iter().map(DeviceCertificate::device_id)
    }

    /// Whether `device` is listed.
    pub fn contains(&self, device: DeviceId) -> bool {
        self.get(device).is_some()
    }

    /// The certificate of `device`, if listed.
    pub fn get(&self, device: DeviceId) -> Option<&DeviceCertificate> {
        self.devices.iter().find(|d| d.device_id() == device)
    }
}

impl fmt::Debug for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            encoded: _,
            address,
            identity_key,
            serial,
            issued,
            devices,
        } = self;
        f.debug_struct("DeviceList")
            .field("address", address)
            .field("identity_key", identity_key)
            .field("serial", serial)
            .field("issued", issued)
            .field(
                "devices",
                &devices
                    .iter()
                    .map(DeviceCertificate::device_id)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A change to a contact's identity or devices, reported by [`DeviceLists::update`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceEvent {
    /// The first list for `address`: its identity key is now trusted on first use.
    /// Until the user compares fingerprints, this is only as trustworthy as the
    /// provider that served it.
    IdentityFirstSeen {
        /// The contact.
        address: Address,
        /// The identity key now held for the contact.
        identity: IdentityKey,
    },
    /// The contact's list is now signed by another identity key. Any verification of
    /// the contact (fingerprint comparison) applied to `old` and no longer holds: the
    /// application must reset it and should tell the user.
    IdentityChanged {
        /// The contact.
        address: Address,
        /// The identity key held until now.
        old: IdentityKey,
        /// The identity key held from now on.
        new: IdentityKey,
    },
    /// A device is now listed (and will be sent to).
    DeviceAdded {
        /// The contact.
        address: Address,
        /// The new device.
        device: DeviceId,
    },
    /// A device is no longer listed: it is not sent to, and envelopes from it no longer
    /// open.
    DeviceRemoved {
        /// The contact.
        address: Address,
        /// The removed device.
        device: DeviceId,
    },
}

/// The current device lists of other users, as this device knows them.
///
/// * The first list for an address is accepted: trust on first use
///   ([`DeviceEvent::IdentityFirstSeen`]).
/// * A list signed by the same identity key replaces the current one only if its serial
///   is higher; an older or replayed list is refused as `stale`.
/// * A list signed by another identity key replaces the current one whatever its
///   serial, because users may reset their identity key (a lost phone, a new install);
///   this is reported as [`DeviceEvent::IdentityChanged`] and the contact's verification
///   state must be reset. A provider that serves a list under a fresh identity key is
///   thus never silent: the application sees the change and can warn or block.
///
/// A refused list changes nothing. As a [`CertificateDirectory`] it finds exactly the
/// devices on each contact's current list.
#[derive(Clone, Debug, Default)]
pub struct DeviceLists {
    lists: HashMap<Address, DeviceList>,
}

impl DeviceLists {
    /// No lists.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers a verified list. Returns what changed, in this order: the identity event
    /// (if any), then removed devices in old-list order, then added devices in new-list
    /// order. A device whose certificate was replaced under the same id is not an event.
    /// On error nothing changes.
    pub fn update(&mut self, list: DeviceList) -> Result<Vec<DeviceEvent>, DeviceListError> {
        let address = list.address.clone();
        let mut events = Vec::new();
        match self.lists.get(&address) {
            None => {
                events.push(DeviceEvent::IdentityFirstSeen {
                    address: address.clone(),
                    identity: list.identity_key,
                });
                events.extend(list.device_ids().map(|device| DeviceEvent::DeviceAdded {
                    address: address.clone(),
                    device,
                }));
            }
            Some(current) => {
                if current.identity_key == list.identity_key {
                    if list.serial <= current.serial {
                        return Err(DeviceListError::Stale {
                            serial: list.serial,
                            current: current.serial,
                        });
                    }
                } else {
                    events.push(DeviceEvent::IdentityChanged {
                        address: address.clone(),
                        old: current.identity_key,
                        new: list.identity_key,
                    });
                }
                events.extend(
                    current
                        .device_ids()
                        .filter(|d| !list.contains(*d))
                        .map(|device| DeviceEvent::DeviceRemoved {
                            address: address.clone(),
                            device,
                        }),
                );
                events.extend(
                    list.device_ids()
                        .filter(|d| !current.contains(*d))
                        .map(|device| DeviceEvent::DeviceAdded {
                            address: address.clone(),
                            device,
                        }),
                );
            }
        }
        self.lists.insert(address, list);
        Ok(events)
    }

    /// The current list of `address`, if any.
    pub fn get(&self, address: &Address) -> Option<&DeviceList> {
        self.lists.get(address)
    }

    /// Forgets `address`; its next list is trusted on first use again.
    pub fn remove(&mut self, address: &Address) -> Option<DeviceList> {
        self.lists.remove(address)
    }

    /// Every current list, in no particular order (for the application's storage:
    /// persist [`DeviceList::encoded`], restore with [`DeviceList::decode`] and
    /// [`update`](Self::update)).
    pub fn iter(&self) -> impl Iterator<Item = &DeviceList> + '_ {
        self.lists.values()
    }

    /// How many users' lists are held.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// Whether no list is held.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// The devices one message to `to` is sealed to: every device on `to`'s current
    /// list, then every device on the sender's own list `own` except the sending device
    /// `own_device`, so the sender's other devices see the message too. Each device
    /// appears once; when `to` is the sender's own address, `own` is used (not a held
    /// list) and the result is all own devices except `own_device`.
    ///
    /// Returns `None` if no list is held for `to`: fetch and [`update`](Self::update) it
    /// first, rather than send to a subset. Sealing still checks each certificate's
    /// validity period.
    pub fn recipients_for<'a>(
        &'a self,
        own: &'a DeviceList,
        own_device: DeviceId,
        to: &Address,
    ) -> Option<Vec<&'a DeviceCertificate>> {
        let theirs: &[DeviceCertificate] = if to == own.address() {
            &[]
        } else {
            self.get(to)?.devices()
        };
        let mut out: Vec<&DeviceCertificate> = Vec::with_capacity(theirs.len() + own.devices.len());
        for cert in theirs.iter().chain(own.devices.iter()) {
            let is_sender = cert.address() == own.address() && cert.device_id() == own_device;
            let seen = out
                .iter()
                .any(|c| c.address() == cert.address() && c.device_id() == cert.device_id());
            if !is_sender && !seen {
                out.push(cert);
            }
        }
        Some(out)
    }
}

impl CertificateDirectory for DeviceLists {
    fn device_certificate(
        &self,
        address: &Address,
        device: DeviceId,
    ) -> Option<&DeviceCertificate> {
        self.lists.get(address)?.get(device)
    }
}

#[cfg(test)]
mod tests;
