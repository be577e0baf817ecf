//! What a data directory holds, sealed by the [`Vault`]:
//!
//! * `state`: this device's profile (address, provider), its account (device keys,
//!   prekeys, sessions, device lists: an [`Account::save`] blob under the vault's account
//!   key), the identity keys the user verified, and the inbox: messages, receipts and
//!   warnings received and not yet shown by `kogge listen`. Rewritten, atomically, after
//!   every step of the client and before anything of that step leaves (mailbox
//!   acknowledgements above all).
//! * `identity`: the identity key's seed, on the device that created the identity (it
//!   signs device lists; linked devices do not get it).
//! * `link`: a new device's keys between `kogge link request` and `kogge link finish`.
//!
//! The plaintexts are protobuf messages (prost), versioned by `format`.

use kogge::address::{Address, Domain};
use kogge::crypto::Secret;
use kogge::identity::{IdentityKey, IdentityKeyPair, ProviderKey};
use kogge::session::Account;
use prost::Message;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::vault::{Vault, VaultError};

/// The state file.
pub(crate) const STATE_FILE: &str = "state";
/// The identity key file.
pub(crate) const IDENTITY_FILE: &str = "identity";
/// The pending link file.
pub(crate) const LINK_FILE: &str = "link";
/// The layout of the plaintexts below.
const FORMAT: u32 = 1;
/// Inbox entries kept; beyond, the oldest are dropped (with a warning on stderr).
pub(crate) const MAX_INBOX: usize = 10_000;

/// The state file's plaintext.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
pub(crate) struct StateFile {
    /// [`FORMAT`].
    #[prost(uint32, tag = "1")]
    pub(crate) format: u32,
    /// This device's provider endpoint (`host:port`).
    #[prost(string, tag = "2")]
    pub(crate) endpoint: String,
    /// The provider's pinned key.
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) provider_key: Vec<u8>,
    /// The account blob (`Account::save`).
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) account: Vec<u8>,
    /// Verified contacts.
    #[prost(message, repeated, tag = "5")]
    pub(crate) verified: Vec<VerifiedContact>,
    /// Received and not yet shown.
    #[prost(message, repeated, tag = "6")]
    pub(crate) inbox: Vec<InboxItem>,
    /// The provider has accepted this device at least once.
    #[prost(bool, tag = "7")]
    pub(crate) registered: bool,
}

/// A contact whose safety number the user compared.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct VerifiedContact {
    /// The contact's address.
    #[prost(string, tag = "1")]
    pub(crate) address: String,
    /// The identity key verified.
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) identity_key: Vec<u8>,
}

/// What an inbox entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub(crate) enum ItemKind {
    /// Unknown (a later version's).
    Unspecified = 0,
    /// A text message.
    Message = 1,
    /// An end-to-end delivery receipt.
    Delivered = 2,
    /// An end-to-end read receipt.
    Read = 3,
    /// A message of ours will not reach a recipient.
    Undeliverable = 4,
    /// A contact's identity key changed.
    IdentityChanged = 5,
    /// An incoming envelope was refused.
    Rejected = 6,
    /// A group message.
    GroupMessage = 7,
    /// A group change applied.
    GroupChanged = 8,
    /// A group item was refused, or a change of ours was not ordered.
    GroupRefused = 9,
}

/// One thing received.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
pub(crate) struct InboxItem {
    /// What it is.
    #[prost(enumeration = "ItemKind", tag = "1")]
    pub(crate) kind: i32,
    /// The conversation (messages), or the user concerned.
    #[prost(string, tag = "2")]
    pub(crate) peer: String,
    /// The sender (messages), the receipt's author, or empty.
    #[prost(string, tag = "3")]
    pub(crate) sender: String,
    /// The device concerned, if any.
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) device: Vec<u8>,
    /// The message id, if any.
    #[prost(bytes = "vec", tag = "5")]
    pub(crate) message_id: Vec<u8>,
    /// The sender's timestamp (messages) or when it was received.
    #[prost(uint64, tag = "6")]
    pub(crate) time_ms: u64,
    /// The text, the media type's body, or the reason.
    #[prost(string, tag = "7")]
    pub(crate) text: String,
    /// Messages: "verified", "unverified" or "changed".
    #[prost(string, tag = "8")]
    pub(crate) identity: String,
    /// Messages: the sender's sequence numbers this one revealed as missing.
    #[prost(uint64, tag = "9")]
    pub(crate) missing: u64,
    /// Group items: the group id (16 bytes).
    #[prost(bytes = "vec", tag = "10")]
    pub(crate) group: Vec<u8>,
}

/// The identity file's plaintext.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
struct IdentityFile {
    #[prost(uint32, tag = "1")]
    format: u32,
    /// The Ed25519 seed.
    #[prost(bytes = "vec", tag = "2")]
    seed: Vec<u8>,
}

/// The link file's plaintext: a new device waiting for approval.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
pub(crate) struct LinkFile {
    #[prost(uint32, tag = "1")]
    pub(crate) format: u32,
    /// The address.
    #[prost(string, tag = "2")]
    pub(crate) address: String,
    /// The provider endpoint.
    #[prost(string, tag = "3")]
    pub(crate) endpoint: String,
    /// The provider key.
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) provider_key: Vec<u8>,
    /// The identity key the device asked to be certified by.
    #[prost(bytes = "vec", tag = "5")]
    pub(crate) identity_key: Vec<u8>,
    /// The device's Ed25519 signing seed.
    #[prost(bytes = "vec", tag = "6")]
    pub(crate) signing_seed: Vec<u8>,
    /// The device's X25519 agreement secret.
    #[prost(bytes = "vec", tag = "7")]
    pub(crate) agreement_secret: Vec<u8>,
    /// The encoded certificate request.
    #[prost(bytes = "vec", tag = "8")]
    pub(crate) request: Vec<u8>,
}

// The plaintexts hold secrets and message texts: their `Debug` says only what kind of
// thing they are and how big.

impl std::fmt::Debug for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFile")
            .field("format", &self.format)
            .field("account_len", &self.account.len())
            .field("inbox", &self.inbox.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for InboxItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxItem")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for IdentityFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityFile").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LinkFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkFile")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for IdentityFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.seed);
    }
}

impl Drop for LinkFile {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.signing_seed.zeroize();
        self.agreement_secret.zeroize();
    }
}

/// Everything in the state file except the account: this device's provider, the
/// verified contacts and the inbox.
pub(crate) struct Profile {
    /// The provider's domain (that of the address).
    pub(crate) provider: Domain,
    /// Where it listens.
    pub(crate) endpoint: String,
    /// Its pinned key.
    pub(crate) provider_key: ProviderKey,
    /// Verified identity keys by contact.
    pub(crate) verified: Vec<(Address, IdentityKey)>,
    /// Received, not yet shown.
    pub(crate) inbox: Vec<InboxItem>,
    /// Accepted by the provider at least once.
    pub(crate) registered: bool,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("provider", &self.provider)
            .field("endpoint", &self.endpoint)
            .field("inbox", &self.inbox.len())
            .finish_non_exhaustive()
    }
}

fn format_error(vault: &Vault, file: &str, why: impl Into<String>) -> VaultError {
    VaultError::Format {
        path: vault.dir().join(file),
        why: why.into(),
    }
}

/// Reads the state file; `None` if there is none (a device not set up yet).
pub(crate) fn load_state(vault: &Vault) -> Result<Option<(Account, Profile)>, VaultError> {
    let Some(plain) = vault.read(STATE_FILE)? else {
        return Ok(None);
    };
    let f = StateFile::decode(plain.as_slice())
        .map_err(|e| format_error(vault, STATE_FILE, e.to_string()))?;
    if f.format != FORMAT {
        return Err(format_error(
            vault,
            STATE_FILE,
            format!("format {} (this program reads {FORMAT})", f.format),
        ));
    }
    let account = Account::restore(&f.account, vault.account_key())
        .map_err(|e| format_error(vault, STATE_FILE, format!("account: {e}")))?;
    let provider_key = ProviderKey::from_bytes(&f.provider_key)
        .map_err(|_| format_error(vault, STATE_FILE, "provider key"))?;
    let provider = account.device().address().domain();
    let mut verified = Vec::new();
    for v in &f.verified {
        let a = Address::parse_canonical(&v.address)
            .map_err(|_| format_error(vault, STATE_FILE, "verified address"))?;
        let k = IdentityKey::from_bytes(&v.identity_key)
            .map_err(|_| format_error(vault, STATE_FILE, "verified key"))?;
        verified.push((a, k));
    }
    let profile = Profile {
        provider,
        endpoint: f.endpoint.clone(),
        provider_key,
        verified,
        inbox: f.inbox.clone(),
        registered: f.registered,
    };
    Ok(Some((account, profile)))
}

impl Profile {
    /// Encodes the state file's plaintext.
    fn encode<R: CryptoRng>(
        &self,
        account: &Account,
        key: &Secret<32>,
        rng: &mut R,
    ) -> Zeroizing<Vec<u8>> {
        let f = StateFile {
            format: FORMAT,
            endpoint: self.endpoint.clone(),
            provider_key: self.provider_key.to_bytes().to_vec(),
            account: account.save(key, rng),
            verified: self
                .verified
                .iter()
                .map(|(a, k)| VerifiedContact {
                    address: a.as_str().to_owned(),
                    identity_key: k.to_bytes().to_vec(),
                })
                .collect(),
            inbox: self.inbox.clone(),
            registered: self.registered,
        };
        Zeroizing::new(f.encode_to_vec())
    }

    /// Writes the state file: this profile and `account`, atomically.
    pub(crate) fn save<R: CryptoRng>(
        &self,
        vault: &Vault,
        account: &Account,
        rng: &mut R,
    ) -> Result<(), VaultError> {
        let plain = self.encode(account, vault.account_key(), rng);
        vault.write(STATE_FILE, &plain, rng)
    }

    /// Adds received items, dropping the oldest beyond [`MAX_INBOX`].
    pub(crate) fn push_inbox(&mut self, items: impl IntoIterator<Item = InboxItem>) {
        self.inbox.extend(items);
        if self.inbox.len() > MAX_INBOX {
            let excess = self.inbox.len() - MAX_INBOX;
            eprintln!("kogge: warning: inbox full; dropping the {excess} oldest entries");
            self.inbox.drain(..excess);
        }
    }

    /// The identity key the user verified for `address`, if any.
    pub(crate) fn verified_key(&self, address: &Address) -> Option<&IdentityKey> {
        self.verified
            .iter()
            .find(|(a, _)| a == address)
            .map(|(_, k)| k)
    }

    /// Records a verification (replacing an earlier one for the address).
    pub(crate) fn set_verified(&mut self, address: &Address, key: IdentityKey) {
        self.verified.retain(|(a, _)| a != address);
        self.verified.push((address.clone(), key));
    }
}

/// Writes the identity key.
pub(crate) fn save_identity<R: CryptoRng>(
    vault: &Vault,
    identity: &IdentityKeyPair,
    rng: &mut R,
) -> Result<(), VaultError> {
    let seed = identity.secret_bytes();
    let mut f = IdentityFile {
        format: FORMAT,
        seed: seed.expose().to_vec(),
    };
    let plain = Zeroizing::new(f.encode_to_vec());
    zeroize::Zeroize::zeroize(&mut f.seed);
    vault.write(IDENTITY_FILE, &plain, rng)
}

/// Reads the identity key; `None` if this device does not hold it.
pub(crate) fn load_identity(vault: &Vault) -> Result<Option<IdentityKeyPair>, VaultError> {
    let Some(plain) = vault.read(IDENTITY_FILE)? else {
        return Ok(None);
    };
    let mut f = IdentityFile::decode(plain.as_slice())
        .map_err(|e| format_error(vault, IDENTITY_FILE, e.to_string()))?;
    let seed: Result<[u8; 32], _> = f.seed.as_slice().try_into();
    zeroize::Zeroize::zeroize(&mut f.seed);
    if f.format != FORMAT {
        return Err(format_error(vault, IDENTITY_FILE, "unknown format"));
    }
    let seed = Zeroizing::new(seed.map_err(|_| format_error(vault, IDENTITY_FILE, "seed"))?);
    Ok(Some(IdentityKeyPair::from_secret_bytes(&Secret::new(
        *seed,
    ))))
}

/// Writes a pending link.
pub(crate) fn save_link<R: CryptoRng>(
    vault: &Vault,
    link: &LinkFile,
    rng: &mut R,
) -> Result<(), VaultError> {
    let plain = Zeroizing::new(link.encode_to_vec());
    vault.write(LINK_FILE, &plain, rng)
}

/// Reads a pending link, if any.
pub(crate) fn load_link(vault: &Vault) -> Result<Option<LinkFile>, VaultError> {
    let Some(plain) = vault.read(LINK_FILE)? else {
        return Ok(None);
    };
    let f = LinkFile::decode(plain.as_slice())
        .map_err(|e| format_error(vault, LINK_FILE, e.to_string()))?;
    if f.format != FORMAT {
        return Err(format_error(vault, LINK_FILE, "unknown format"));
    }
    Ok(Some(f))
}
