//! Domain-separation labels: one per purpose, never reused (SPEC.md section 2.3).

/// Every label Kogge feeds into a signature, a KDF, a hash or associated data.
///
/// Each purpose has its own label, so that no signature or key made for one purpose
/// can be replayed into another. `Label::ALL` lists them; a test checks that no label
/// repeats and none is a prefix of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Label {
    /// Envelope signature by the sender device (SPEC.md 6.4).
    EnvelopeSignature,
    /// Envelope associated data for the AEAD (SPEC.md 6.5).
    EnvelopeAad,
    /// HKDF info for the one-shot seal key and nonce (SPEC.md 6.5).
    OneShotSealKdf,
    /// Device certificate signature by the identity key (SPEC.md 4.3).
    DeviceCertIdentitySignature,
    /// Device certificate signature by the device key, proof of possession (SPEC.md 4.3).
    DeviceCertDeviceSignature,
    /// Derivation of a device id from a device signing key (SPEC.md 4.2).
    DeviceId,
    /// Identity fingerprint (SPEC.md 5.1).
    Fingerprint,
    /// Signed device list, signature by the identity key (SPEC.md 15.6).
    DeviceList,
    /// Prekey signature by the device key (SPEC.md 15.2).
    PrekeySignature,
    /// HKDF info of the session setup secret (SPEC.md 15.3).
    SessionSetup,
    /// HKDF info of the ratchet's root KDF (SPEC.md 15.4).
    RatchetRoot,
    /// HKDF info of a message's AEAD key and nonce (SPEC.md 15.4).
    RatchetMessageKeys,
    /// Encryption of persisted state (SPEC.md 15.8).
    StateEncryption,
    /// A provider's answer to a connection's `Hello`, by its provider key (SPEC.md 16.3).
    ChallengeSignature,
    /// A connector's proof of its device or provider key (SPEC.md 16.3).
    AuthSignature,
    /// HKDF info of a provider's QUIC stateless-reset key (SPEC.md 17.3).
    QuicStatelessReset,
    /// A group id, from its creator and nonce (SPEC.md 18.2).
    GroupId,
    /// A group change's signature by its author's device key (SPEC.md 18.3).
    GroupChangeSignature,
    /// A group change's hash, which the next change names as its parent (SPEC.md 18.3).
    GroupChangeHash,
    /// A sequencer's countersignature of a group change (SPEC.md 18.3).
    GroupSequence,
    /// A group state's hash, which every change commits to (SPEC.md 18.5).
    GroupState,
    /// HKDF info of a group message's AEAD key and nonce (SPEC.md 19.1).
    GroupMessageKeys,
    /// A group message's signature by its sender device key (SPEC.md 19.3).
    GroupEnvelopeSignature,
    /// A group message's AEAD associated data (SPEC.md 19.3).
    GroupEnvelopeAad,
}

impl Label {
    /// All labels, for tests and for SPEC.md's table.
    pub const ALL: &'static [Label] = &[
        Label::EnvelopeSignature,
        Label::EnvelopeAad,
        Label::OneShotSealKdf,
        Label::DeviceCertIdentitySignature,
        Label::DeviceCertDeviceSignature,
        Label::DeviceId,
        Label::Fingerprint,
        Label::DeviceList,
        Label::PrekeySignature,
        Label::SessionSetup,
        Label::RatchetRoot,
        Label::RatchetMessageKeys,
        Label::StateEncryption,
        Label::ChallengeSignature,
        Label::AuthSignature,
        Label::QuicStatelessReset,
        Label::GroupId,
        Label::GroupChangeSignature,
        Label::GroupChangeHash,
        Label::GroupSequence,
        Label::GroupState,
        Label::GroupMessageKeys,
        Label::GroupEnvelopeSignature,
        Label::GroupEnvelopeAad,
    ];

    /// The label's bytes (ASCII).
    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            Label::EnvelopeSignature => b"kogge/v1/sig/envelope",
            Label::EnvelopeAad => b"kogge/v1/aad/envelope",
            Label::OneShotSealKdf => b"kogge/v1/kdf/one-shot-seal",
            Label::DeviceCertIdentitySignature => b"kogge/v1/sig/device-cert/identity",
            Label::DeviceCertDeviceSignature => b"kogge/v1/sig/device-cert/device",
            Label::DeviceId => b"kogge/v1/hash/device-id",
            Label::Fingerprint => b"kogge/v1/hash/fingerprint",
            Label::DeviceList => b"kogge/v1/sig/device-list",
            Label::PrekeySignature => b"kogge/v1/sig/prekey",
            Label::SessionSetup => b"kogge/v1/kdf/session-setup",
            Label::RatchetRoot => b"kogge/v1/kdf/ratchet-root",
            Label::RatchetMessageKeys => b"kogge/v1/kdf/ratchet-message",
            Label::StateEncryption => b"kogge/v1/aad/state",
            Label::ChallengeSignature => b"kogge/v1/sig/challenge",
            Label::AuthSignature => b"kogge/v1/sig/auth",
            Label::QuicStatelessReset => b"kogge/v1/kdf/quic-stateless-reset",
            Label::GroupId => b"kogge/v1/hash/group-id",
            Label::GroupChangeSignature => b"kogge/v1/sig/group-change",
            Label::GroupChangeHash => b"kogge/v1/hash/group-change",
            Label::GroupSequence => b"kogge/v1/sig/group-sequence",
            Label::GroupState => b"kogge/v1/hash/group-state",
            Label::GroupMessageKeys => b"kogge/v1/kdf/group-message",
            Label::GroupEnvelopeSignature => b"kogge/v1/sig/group-envelope",
            Label::GroupEnvelopeAad => b"kogge/v1/aad/group-envelope",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_prefix_free() {
        for (i, a) in Label::ALL.iter().enumerate() {
            assert!(a.as_bytes().starts_with(b"kogge/v1/"));
            for (j, b) in Label::ALL.iter().enumerate() {
                if i != j {
                    assert_ne!(a, b, "label listed twice");
                    assert!(
                        !b.as_bytes().starts_with(a.as_bytes()),
                        "{a:?} is a prefix of {b:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn all_lists_every_variant() {
        // A new variant must be added to ALL: this match stops compiling otherwise,
        // and the count below catches a variant left out of ALL.
        fn index(l: Label) -> usize {
            match l {
                Label::EnvelopeSignature => 0,
                Label::EnvelopeAad => 1,
                Label::OneShotSealKdf => 2,
                Label::DeviceCertIdentitySignature => 3,
                Label::DeviceCertDeviceSignature => 4,
                Label::DeviceId => 5,
                Label::Fingerprint => 6,
                Label::DeviceList => 7,
                Label::PrekeySignature => 8,
                Label::SessionSetup => 9,
                Label::RatchetRoot => 10,
                Label::RatchetMessageKeys => 11,
                Label::StateEncryption => 12,
                Label::ChallengeSignature => 13,
                Label::AuthSignature => 14,
                Label::QuicStatelessReset => 15,
                Label::GroupId => 16,
                Label::GroupChangeSignature => 17,
                Label::GroupChangeHash => 18,
                Label::GroupSequence => 19,
                Label::GroupState => 20,
                Label::GroupMessageKeys => 21,
                Label::GroupEnvelopeSignature => 22,
                Label::GroupEnvelopeAad => 23,
            }
        }
        let mut seen = [false; 24];
        for l in Label::ALL {
            seen[index(*l)] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
