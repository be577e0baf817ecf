//! Group membership decided by members (SPEC.md 18).
//!
//! A group's state (its members with their pinned identity keys and roles, a title, and
//! the provider that orders its changes) moves from epoch to epoch by [`GroupChange`]s.
//! Each change is signed by a member's device, names the previous change by its hash, and
//! commits to the hash of the state it results in. Every member checks every change
//! against its own copy of the state ([`GroupState::apply`]): who may do what, what the
//! result must be. A provider holds no member's key, so it cannot add, remove or promote
//! anyone.
//!
//! Concurrent changes (two admins acting on the same epoch) are ordered by the group's
//! **sequencer**, the provider named in the state: it countersigns at most one change per
//! epoch, the first valid one whose parent is its head, and refuses the others, whose
//! authors make them again on the new head. Members accept only countersigned changes, so
//! every member applies the same changes in the same order and ends up with the same
//! state. The sequencer orders; it cannot forge, and a sequencer that countersigns two
//! changes for one epoch has signed its own proof of misbehaviour.
//!
//! Holding a [`GroupState`] therefore means: this is the state that the group's changes,
//! as countersigned by its sequencer, produce from the creating change (or from a
//! [snapshot](GroupState::from_snapshot) whose first change checked out).

mod message;
mod record;
#[cfg(test)]
mod tests;

pub use message::{
    GroupEnvelope, GroupMessageError, GroupOpened, GroupReceiver, GroupSender, SenderKey,
};
pub use record::GroupSync;
pub(crate) use record::{DeviceGroups, GroupRecord};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;
use prost::Message;

use crate::address::{Address, AddressError, Domain};
use crate::crypto::{self, Label};
use crate::identity::{
    CertificateError, Device, DeviceCertificate, IdentityKey, ProviderKey, ProviderKeyPair,
};
use crate::limits::{
    MAX_GROUP_CHANGE_LEN, MAX_GROUP_CHANGE_MEMBERS, MAX_GROUP_MEMBERS, MAX_GROUP_SNAPSHOT_LEN,
    MAX_GROUP_TITLE_LEN, PROTOCOL_VERSION,
};
use crate::time::UnixMillis;
use crate::wire;

/// Why a group change or snapshot was refused. Nothing changed. Each variant has a
/// stable [`code`](GroupError::code) (SPEC.md 10).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The encoding is longer than its limit.
    #[error("group change or snapshot is {len} bytes, the maximum is {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a valid protobuf encoding of the schema.
    #[error("group change or snapshot is not valid protobuf")]
    Decode,
    /// A version this implementation does not know.
    #[error("unsupported group version {0}")]
    UnsupportedVersion(u32),
    /// A field has the wrong length or form.
    #[error("group field {0} is invalid")]
    InvalidField(&'static str),
    /// An address does not follow the grammar.
    #[error("group address is invalid: {0}")]
    InvalidAddress(AddressError),
    /// The author's device certificate was refused.
    #[error("author device certificate is invalid: {0}")]
    InvalidCertificate(CertificateError),
    /// The author's device certificate was not valid when the change was issued.
    #[error("the author device certificate was not valid when the change was issued")]
    CertificateNotValid,
    /// The author's device certificate is for another address than the author.
    #[error("the author device belongs to another address")]
    AuthorMismatch,
    /// The author device's signature does not verify.
    #[error("group change signature does not verify")]
    BadSignature,
    /// The change carries no sequencer signature: it was not ordered yet.
    #[error("group change is not sequenced")]
    NotSequenced,
    /// The sequencer signature does not verify with the group's sequencer key.
    #[error("group change sequencer signature does not verify")]
    BadSequencerSignature,
    /// The change is for another group.
    #[error("group change is for another group")]
    WrongGroup,
    /// The group id is not the one its creating change derives.
    #[error("group id does not derive from the creating change")]
    BadGroupId,
    /// The change's epoch is not newer than the state's: an old or replayed change.
    #[error("group change for epoch {epoch} is stale (the group is at {current})")]
    Stale {
        /// The change's epoch.
        epoch: u64,
        /// The state's epoch.
        current: u64,
    },
    /// The change is for a later epoch than the next: changes in between are missing.
    #[error("group change for epoch {epoch} skips changes (the group is at {current})")]
    Gap {
        /// The change's epoch.
        epoch: u64,
        /// The state's epoch.
        current: u64,
    },
    /// The change builds on another state than this one: another change of its epoch
    /// came first (its author makes it again on the new state), or it builds on a change
    /// this member never applied.
    #[error("group change builds on another change than the group's last one")]
    Conflict,
    /// The sequencer countersigned two different changes for one epoch: proof that it
    /// misbehaves (members stop accepting its changes for the group and tell the user).
    #[error("the sequencer ordered two different changes for one epoch")]
    Equivocation,
    /// The author is not a member.
    #[error("{0} is not a member of the group")]
    NotMember(Address),
    /// The author's device is certified by another identity key than the one the group
    /// pinned for the author.
    #[error("the author device is certified by another identity key than the group holds")]
    IdentityMismatch,
    /// The action needs an admin and the author is not one.
    #[error("only admins may do this")]
    NotAdmin,
    /// An added member is a member already.
    #[error("{0} is a member already")]
    AlreadyMember(Address),
    /// A removed or re-roled member is not a member.
    #[error("{0} is not a member")]
    NoSuchMember(Address),
    /// A member is named twice in one change or snapshot.
    #[error("{0} is named twice")]
    DuplicateMember(Address),
    /// The group would have more than [`MAX_GROUP_MEMBERS`] members, or a change names
    /// more than [`MAX_GROUP_CHANGE_MEMBERS`].
    #[error("{count} members, the maximum is {max}")]
    TooManyMembers {
        /// How many.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// The change would leave members but no admin.
    #[error("the group would have no admin left")]
    NoAdminLeft,
    /// The change is malformed in a way listed in SPEC.md 18.4.
    #[error("invalid group change: {0}")]
    InvalidChange(&'static str),
    /// The state the change commits to is not the state it produces.
    #[error("group change commits to another state than it produces")]
    StateMismatch,
}

impl GroupError {
    /// The stable error code (SPEC.md 10).
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Decode => "decode",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::InvalidField(_) => "invalid_field",
            Self::InvalidAddress(_) => "invalid_address",
            Self::InvalidCertificate(_) => "invalid_certificate",
            Self::CertificateNotValid => "certificate_not_valid",
            Self::AuthorMismatch => "author_mismatch",
            Self::BadSignature => "bad_signature",
            Self::NotSequenced => "not_sequenced",
            Self::BadSequencerSignature => "bad_sequencer_signature",
            Self::WrongGroup => "wrong_group",
            Self::BadGroupId => "bad_group_id",
            Self::Stale { .. } => "group_stale",
            Self::Gap { .. } => "group_gap",
            Self::Conflict => "group_conflict",
            Self::Equivocation => "sequencer_equivocation",
            Self::NotMember(_) => "not_member",
            Self::IdentityMismatch => "identity_mismatch",
            Self::NotAdmin => "not_admin",
            Self::AlreadyMember(_) => "already_member",
            Self::NoSuchMember(_) => "no_such_member",
            Self::DuplicateMember(_) => "duplicate_member",
            Self::TooManyMembers { .. } => "too_many_members",
            Self::NoAdminLeft => "no_admin_left",
            Self::InvalidChange(_) => "invalid_change",
            Self::StateMismatch => "state_mismatch",
        }
    }
}

/// A group's id: 16 bytes derived from its creator and a random nonce (SPEC.md 18.2), so
/// that nobody else can create a group with the same id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId([u8; 16]);

impl GroupId {
    /// The id of the group `creator` (with identity key `identity`) creates with `nonce`:
    /// the first 16 bytes of `SHA-256(framed("kogge/v1/hash/group-id", creator,
    /// identity, nonce))`.
    pub fn derive(creator: &Address, identity: &IdentityKey, nonce: &[u8; 16]) -> Self {
        let digest = crypto::sha256(&crypto::framed(
            Label::GroupId,
            &[creator.as_str().as_bytes(), &identity.to_bytes(), nonce],
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

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({self})")
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What a member may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupRole {
    /// Send, and leave.
    Member,
    /// Also add and remove members, change roles and the title.
    Admin,
}

impl GroupRole {
    fn to_wire(self) -> i32 {
        match self {
            Self::Member => wire::GroupRole::Member as i32,
            Self::Admin => wire::GroupRole::Admin as i32,
        }
    }

    fn from_wire(v: i32) -> Result<Self, GroupError> {
        match wire::GroupRole::try_from(v) {
            Ok(wire::GroupRole::Member) => Ok(Self::Member),
            Ok(wire::GroupRole::Admin) => Ok(Self::Admin),
            _ => Err(GroupError::InvalidField("role")),
        }
    }

    /// The byte the state hash uses (the wire enum value).
    fn hash_byte(self) -> u8 {
        match self {
            Self::Member => 1,
            Self::Admin => 2,
        }
    }
}

/// A member: a user, the identity key the group pinned for it, and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// The user.
    pub address: Address,
    /// Only devices certified by this key act for the member.
    pub identity: IdentityKey,
    /// What the member may do.
    pub role: GroupRole,
}

impl GroupMember {
    fn to_wire(&self) -> wire::GroupMember {
        wire::GroupMember {
            address: self.address.as_str().to_owned(),
            identity_key: Bytes::copy_from_slice(&self.identity.to_bytes()),
            role: self.role.to_wire(),
        }
    }

    fn from_wire(m: &wire::GroupMember) -> Result<Self, GroupError> {
        Ok(Self {
            address: Address::parse_canonical(&m.address).map_err(GroupError::InvalidAddress)?,
            identity: IdentityKey::from_bytes(&m.identity_key)
                .map_err(|_| GroupError::InvalidField("identity_key"))?,
            role: GroupRole::from_wire(m.role)?,
        })
    }
}

/// The provider that orders a group's changes, with its provider key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequencer {
    /// Its domain.
    pub domain: Domain,
    /// Its provider key, which countersigns the group's changes.
    pub key: ProviderKey,
}

/// What a change does.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
// `Create` holds a verifying key; changes are rare, so boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum GroupAction {
    /// Creates the group (epoch 0 only).
    Create {
        /// 16 random bytes; the group id derives from them.
        nonce: [u8; 16],
        /// The title.
        title: String,
        /// Who orders the group's changes.
        sequencer: Sequencer,
        /// The initial members, the author first, as an admin.
        members: Vec<GroupMember>,
    },
    /// Adds members (admins only).
    Add(Vec<GroupMember>),
    /// Removes members other than the author (admins only).
    Remove(Vec<Address>),
    /// The author leaves.
    Leave,
    /// Changes a member's role (admins only).
    SetRole {
        /// The member.
        member: Address,
        /// The new role.
        role: GroupRole,
    },
    /// Changes the title (admins only).
    SetTitle(String),
}

impl GroupAction {
    fn to_wire(&self) -> wire::group_change_body::Action {
        use wire::group_change_body::Action as A;
        match self {
            Self::Create {
                nonce,
                title,
                sequencer,
                members,
            } => A::Create(wire::GroupCreate {
                nonce: Bytes::copy_from_slice(nonce),
                title: title.clone(),
                sequencer: sequencer.domain.as_str().to_owned(),
                sequencer_key: Bytes::copy_from_slice(&sequencer.key.to_bytes()),
                members: members.iter().map(GroupMember::to_wire).collect(),
            }),
            Self::Add(members) => A::Add(wire::GroupAdd {
                members: members.iter().map(GroupMember::to_wire).collect(),
            }),
            Self::Remove(members) => A::Remove(wire::GroupRemove {
                members: members.iter().map(|a| a.as_str().to_owned()).collect(),
            }),
            Self::Leave => A::Leave(wire::GroupLeave {}),
            Self::SetRole { member, role } => A::SetRole(wire::GroupSetRole {
                member: member.as_str().to_owned(),
                role: role.to_wire(),
            }),
            Self::SetTitle(title) => A::SetTitle(wire::GroupSetTitle {
                title: title.clone(),
            }),
        }
    }

    fn from_wire(action: wire::group_change_body::Action) -> Result<Self, GroupError> {
        use wire::group_change_body::Action as A;
        let members = |list: &[wire::GroupMember]| -> Result<Vec<GroupMember>, GroupError> {
            check_count(list.len())?;
            list.iter().map(GroupMember::from_wire).collect()
        };
        Ok(match action {
            A::Create(c) => Self::Create {
                nonce: c
                    .nonce
                    .as_ref()
                    .try_into()
                    .map_err(|_| GroupError::InvalidField("nonce"))?,
                title: checked_title(c.title)?,
                sequencer: Sequencer {
                    domain: Domain::parse_canonical(&c.sequencer)
                        .map_err(GroupError::InvalidAddress)?,
                    key: ProviderKey::from_bytes(&c.sequencer_key)
                        .map_err(|_| GroupError::InvalidField("sequencer_key"))?,
                },
                members: members(&c.members)?,
            },
            A::Add(a) => Self::Add(members(&a.members)?),
            A::Remove(r) => {
                check_count(r.members.len())?;
                Self::Remove(
                    r.members
                        .iter()
                        .map(|a| Address::parse_canonical(a).map_err(GroupError::InvalidAddress))
                        .collect::<Result<_, _>>()?,
                )
            }
            A::Leave(_) => Self::Leave,
            A::SetRole(s) => Self::SetRole {
                member: Address::parse_canonical(&s.member).map_err(GroupError::InvalidAddress)?,
                role: GroupRole::from_wire(s.role)?,
            },
            A::SetTitle(t) => Self::SetTitle(checked_title(t.title)?),
        })
    }
}

fn check_count(count: usize) -> Result<(), GroupError> {
    if count > MAX_GROUP_CHANGE_MEMBERS {
        return Err(GroupError::TooManyMembers {
            count,
            max: MAX_GROUP_CHANGE_MEMBERS,
        });
    }
    Ok(())
}

fn checked_title(title: String) -> Result<String, GroupError> {
    if title.len() > MAX_GROUP_TITLE_LEN {
        return Err(GroupError::InvalidField("title"));
    }
    Ok(title)
}

/// A signed group change, decoded and checked on its own (size, structure, author
/// certificate, author signature). Whether it applies is [`GroupState::apply`]'s
/// question.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupChange {
    encoded: Bytes,
    body: Bytes,
    signature: Bytes,
    hash: [u8; 32],
    group: GroupId,
    epoch: u64,
    parent: Option<[u8; 32]>,
    author: Address,
    author_device: DeviceCertificate,
    issued: UnixMillis,
    state_hash: [u8; 32],
    action: GroupAction,
    sequencer_signature: Option<[u8; 64]>,
}

impl GroupChange {
    /// Decodes a change and checks everything that needs no group state: size,
    /// structure, version, field forms, the author's certificate (valid when the change
    /// was issued, for the author's address) and the author device's signature over the
    /// exact body bytes received.
    pub fn decode(encoded: Bytes) -> Result<Self, GroupError> {
        use GroupError as E;
        if encoded.len() > MAX_GROUP_CHANGE_LEN {
            return Err(E::TooLarge {
                len: encoded.len(),
                max: MAX_GROUP_CHANGE_LEN,
            });
        }
        let outer = wire::GroupChange::decode(encoded.clone()).map_err(|_| E::Decode)?;
        let body = wire::GroupChangeBody::decode(outer.body.clone()).map_err(|_| E::Decode)?;
        if body.version != PROTOCOL_VERSION {
            return Err(E::UnsupportedVersion(body.version));
        }
        let group = GroupId::from_slice(&body.group_id).ok_or(E::InvalidField("group_id"))?;
        let parent = match (body.epoch, body.parent.len()) {
            (0, 0) => None,
            (0, _) => return Err(E::InvalidField("parent")),
            (_, 32) => {
                let mut p = [0u8; 32];
                p.copy_from_slice(&body.parent);
                Some(p)
            }
            _ => return Err(E::InvalidField("parent")),
        };
        let state_hash: [u8; 32] = body
            .state_hash
            .as_ref()
            .try_into()
            .map_err(|_| E::InvalidField("state_hash"))?;
        let author = Address::parse_canonical(&body.author).map_err(E::InvalidAddress)?;
        let action = GroupAction::from_wire(body.action.ok_or(E::InvalidField("action"))?)?;
        if matches!(action, GroupAction::Create { .. }) != (body.epoch == 0) {
            return Err(E::InvalidChange(
                "create is the change of epoch 0, and only it",
            ));
        }
        let sequencer_signature = match outer.sequencer_signature.len() {
            0 => None,
            64 => {
                let mut s = [0u8; 64];
                s.copy_from_slice(&outer.sequencer_signature);
                Some(s)
            }
            _ => return Err(E::InvalidField("sequencer_signature")),
        };
        let author_device =
            DeviceCertificate::decode(body.author_device).map_err(E::InvalidCertificate)?;
        if author_device.address() != &author {
            return Err(E::AuthorMismatch);
        }
        let issued = UnixMillis(body.issued_ms);
        if !author_device.is_valid_at(issued) {
            return Err(E::CertificateNotValid);
        }
        let signature = crypto::signature(&outer.signature).map_err(|_| E::BadSignature)?;
        crypto::verify(
            author_device.signing_key(),
            Label::GroupChangeSignature,
            &[&outer.body],
            &signature,
        )
        .map_err(|_| E::BadSignature)?;
        let hash = crypto::sha256(&crypto::framed(Label::GroupChangeHash, &[&outer.body]));
        Ok(Self {
            encoded,
            body: outer.body,
            signature: outer.signature,
            hash,
            group,
            epoch: body.epoch,
            parent,
            author,
            author_device,
            issued,
            state_hash,
            action,
            sequencer_signature,
        })
    }

    /// Signs a change with `device` (the author's) and decodes it back, unsequenced.
    fn sign(
        device: &Device,
        group: GroupId,
        epoch: u64,
        parent: Option<[u8; 32]>,
        issued: UnixMillis,
        state_hash: [u8; 32],
        action: &GroupAction,
    ) -> Result<Self, GroupError> {
        let body = wire::GroupChangeBody {
            version: PROTOCOL_VERSION,
            group_id: Bytes::copy_from_slice(group.as_bytes()),
            epoch,
            parent: parent.map_or_else(Bytes::new, |p| Bytes::copy_from_slice(&p)),
            author: device.address().as_str().to_owned(),
            author_device: device.certificate().encoded().clone(),
            issued_ms: issued.0,
            state_hash: Bytes::copy_from_slice(&state_hash),
            action: Some(action.to_wire()),
        }
        .encode_to_vec();
        let signature = crypto::sign(
            device.keys().signing(),
            Label::GroupChangeSignature,
            &[&body],
        );
        let encoded = wire::GroupChange {
            body: Bytes::from(body),
            signature: Bytes::copy_from_slice(&signature.to_bytes()),
            sequencer_signature: Bytes::new(),
        }
        .encode_to_vec();
        Self::decode(Bytes::from(encoded))
    }

    /// The bytes the sequencer signs: `framed("kogge/v1/sig/group-sequence", group_id,
    /// u64be(epoch), change_hash)`.
    fn sequence_parts(&self) -> [Vec<u8>; 3] {
        [
            self.group.as_bytes().to_vec(),
            self.epoch.to_be_bytes().to_vec(),
            self.hash.to_vec(),
        ]
    }

    /// This change countersigned by the sequencer `key`: what a sequencer hands out once
    /// it has ordered the change (SPEC.md 18.3). A sequencer countersigns at most one
    /// change per group and epoch.
    pub fn sequence(&self, key: &ProviderKeyPair) -> Self {
        let parts = self.sequence_parts();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let signature = crypto::sign(key.signing_key(), Label::GroupSequence, &refs);
        let encoded = wire::GroupChange {
            body: self.body.clone(),
            signature: self.signature.clone(),
            sequencer_signature: Bytes::copy_from_slice(&signature.to_bytes()),
        }
        .encode_to_vec();
        Self {
            encoded: Bytes::from(encoded),
            sequencer_signature: Some(signature.to_bytes()),
            ..self.clone()
        }
    }

    /// Checks the sequencer's countersignature with `key`.
    fn check_sequenced(&self, key: &ProviderKey) -> Result<(), GroupError> {
        let raw = self.sequencer_signature.ok_or(GroupError::NotSequenced)?;
        let signature = crypto::signature(&raw).map_err(|_| GroupError::BadSequencerSignature)?;
        let parts = self.sequence_parts();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        crypto::verify(
            key.as_verifying_key(),
            Label::GroupSequence,
            &refs,
            &signature,
        )
        .map_err(|_| GroupError::BadSequencerSignature)
    }

    /// Whether the change carries a valid countersignature by the sequencer `key` (what
    /// a provider checks before delivering a change a peer relays, SPEC.md 20.4).
    pub fn is_sequenced_by(&self, key: &ProviderKey) -> bool {
        self.check_sequenced(key).is_ok()
    }

    /// The encoded change, exactly as made or received.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// The change's hash: `SHA-256(framed("kogge/v1/hash/group-change", body))`. The
    /// next change names it as its parent.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The epoch this change makes.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The previous change's hash (none for the creating change).
    pub fn parent(&self) -> Option<&[u8; 32]> {
        self.parent.as_ref()
    }

    /// The author.
    pub fn author(&self) -> &Address {
        &self.author
    }

    /// The certificate of the author's device that signed the change.
    pub fn author_device(&self) -> &DeviceCertificate {
        &self.author_device
    }

    /// When the author made the change (the author's clock).
    pub fn issued(&self) -> UnixMillis {
        self.issued
    }

    /// The hash of the state the change commits to.
    pub fn state_hash(&self) -> &[u8; 32] {
        &self.state_hash
    }

    /// What the change does.
    pub fn action(&self) -> &GroupAction {
        &self.action
    }

    /// Whether it carries a sequencer signature (not checked here).
    pub fn is_sequenced(&self) -> bool {
        self.sequencer_signature.is_some()
    }
}

impl fmt::Debug for GroupChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupChange")
            .field("group", &self.group)
            .field("epoch", &self.epoch)
            .field("author", &self.author)
            .field("action", &self.action)
            .field("sequenced", &self.is_sequenced())
            .finish_non_exhaustive()
    }
}

/// A group's state at one epoch. See the module documentation.
///
/// Two states are equal when they are the same group state (id, epoch, head, title,
/// sequencer, members); the local last removal epoch ([`rekey_epoch`](Self::rekey_epoch))
/// is not compared, so a state restored from a snapshot equals the state it was taken of.
#[derive(Clone)]
pub struct GroupState {
    id: GroupId,
    epoch: u64,
    head: [u8; 32],
    title: String,
    sequencer: Sequencer,
    members: BTreeMap<Address, (IdentityKey, GroupRole)>,
    /// The epoch of the last change that removed someone (remove or leave) that this
    /// member applied; 0 if none, or if the state came from a snapshot. Not part of the
    /// state hash: it decides which sender chains are stale (SPEC.md 19.4).
    rekey_epoch: u64,
    /// [`state_hash`](Self::state_hash), computed once per state.
    hash: [u8; 32],
}

impl PartialEq for GroupState {
    fn eq(&self, other: &Self) -> bool {
        let Self {
            id,
            epoch,
            head,
            title,
            sequencer,
            members,
            rekey_epoch: _,
            hash,
        } = self;
        *id == other.id
            && *epoch == other.epoch
            && *head == other.head
            && *title == other.title
            && *sequencer == other.sequencer
            && *members == other.members
            && *hash == other.hash
    }
}

impl Eq for GroupState {}

impl GroupState {
    /// Makes the change that creates a group: `device`'s user becomes its first admin,
    /// with `others` as further members. The change still needs the sequencer's
    /// countersignature ([`GroupChange::sequence`]) before anyone accepts it.
    pub fn create_change(
        device: &Device,
        nonce: [u8; 16],
        title: String,
        sequencer: Sequencer,
        others: Vec<GroupMember>,
        issued: UnixMillis,
    ) -> Result<GroupChange, GroupError> {
        let author = device.address().clone();
        let identity = *device.certificate().identity_key();
        let mut members = vec![GroupMember {
            address: author.clone(),
            identity,
            role: GroupRole::Admin,
        }];
        members.extend(others);
        let action = GroupAction::Create {
            nonce,
            title,
            sequencer,
            members,
        };
        let id = GroupId::derive(&author, &identity, &nonce);
        let state = Self::genesis(id, &author, &identity, &action)?;
        GroupChange::sign(device, id, 0, None, issued, state.state_hash(), &action)
    }

    /// The state a creating change makes, checked (and countersigned by the sequencer it
    /// names).
    pub fn create(change: &GroupChange) -> Result<Self, GroupError> {
        let identity = change.author_device.identity_key();
        let mut state = Self::genesis(change.group, &change.author, identity, &change.action)?;
        change.check_sequenced(&state.sequencer.key)?;
        if state.state_hash() != change.state_hash {
            return Err(GroupError::StateMismatch);
        }
        state.head = change.hash;
        Ok(state)
    }

    fn genesis(
        id: GroupId,
        author: &Address,
        identity: &IdentityKey,
        action: &GroupAction,
    ) -> Result<Self, GroupError> {
        let GroupAction::Create {
            nonce,
            title,
            sequencer,
            members,
        } = action
        else {
            return Err(GroupError::InvalidChange(
                "the first change must create the group",
            ));
        };
        if GroupId::derive(author, identity, nonce) != id {
            return Err(GroupError::BadGroupId);
        }
        check_count(members.len())?;
        let first = members.first();
        if first.map(|m| (&m.address, &m.identity, m.role))
            != Some((author, identity, GroupRole::Admin))
        {
            return Err(GroupError::InvalidChange(
                "the creator must be the first member, an admin, with its own identity key",
            ));
        }
        let mut map = BTreeMap::new();
        for m in members {
            if map
                .insert(m.address.clone(), (m.identity, m.role))
                .is_some()
            {
                return Err(GroupError::DuplicateMember(m.address.clone()));
            }
        }
        Ok(Self {
            id,
            epoch: 0,
            head: [0; 32],
            title: checked_title(title.clone())?,
            sequencer: sequencer.clone(),
            members: map,
            rekey_epoch: 0,
            hash: [0; 32],
        }
        .hashed())
    }

    /// Makes a change of this state by `device`'s user, checked exactly as members will
    /// check it. It still needs the sequencer's countersignature.
    pub fn change(
        &self,
        device: &Device,
        action: GroupAction,
        issued: UnixMillis,
    ) -> Result<GroupChange, GroupError> {
        let identity = device.certificate().identity_key();
        let next = self.transition(device.address(), identity, &action)?;
        GroupChange::sign(
            device,
            self.id,
            self.epoch.saturating_add(1),
            Some(self.head),
            issued,
            next.state_hash(),
            &action,
        )
    }

    /// The state after `change`, which must be the next change of this group: same
    /// group, next epoch, parent = this state's head, countersigned by the group's
    /// sequencer, made by a member allowed to make it with a device certified by the
    /// identity key the group holds for it, valid, and committing to the state it
    /// produces. On any error this state is unchanged (it is never modified: the new
    /// state is returned).
    pub fn apply(&self, change: &GroupChange) -> Result<Self, GroupError> {
        self.next(change, true)
    }

    /// The sequencer's side (SPEC.md 18.3): if `change` is the next change of this state
    /// (everything [`apply`](Self::apply) checks but the countersignature), the change
    /// countersigned with `key`, which must be the group's sequencer key. A change that
    /// lost the race to another change of the same epoch is refused with
    /// [`GroupError::Conflict`]: its author makes it again on the new state.
    pub fn order(
        &self,
        change: &GroupChange,
        key: &ProviderKeyPair,
    ) -> Result<GroupChange, GroupError> {
        if key.public() != self.sequencer.key {
            return Err(GroupError::BadSequencerSignature);
        }
        self.next(change, false)?;
        Ok(change.sequence(key))
    }

    fn next(&self, change: &GroupChange, sequenced: bool) -> Result<Self, GroupError> {
        use GroupError as E;
        if change.group != self.id {
            return Err(E::WrongGroup);
        }
        if change.epoch == self.epoch && change.hash != self.head {
            // Another change for the epoch this state is at. Countersigned, it is the
            // sequencer's proof of ordering two changes for one epoch; otherwise it lost
            // the race.
            let proven = change.check_sequenced(&self.sequencer.key).is_ok();
            return Err(if proven { E::Equivocation } else { E::Conflict });
        }
        if change.epoch <= self.epoch {
            return Err(E::Stale {
                epoch: change.epoch,
                current: self.epoch,
            });
        }
        // Here change.epoch > self.epoch, so self.epoch + 1 cannot overflow.
        if change.epoch != self.epoch + 1 {
            return Err(E::Gap {
                epoch: change.epoch,
                current: self.epoch,
            });
        }
        if change.parent != Some(self.head) {
            return Err(E::Conflict);
        }
        if sequenced {
            change.check_sequenced(&self.sequencer.key)?;
        }
        let mut next = self.transition(
            &change.author,
            change.author_device.identity_key(),
            &change.action,
        )?;
        if next.state_hash() != change.state_hash {
            return Err(E::StateMismatch);
        }
        next.epoch = change.epoch;
        next.head = change.hash;
        if matches!(change.action, GroupAction::Remove(_) | GroupAction::Leave) {
            next.rekey_epoch = change.epoch;
        }
        Ok(next)
    }

    /// What `author` (acting with a device certified by `identity`) doing `action` makes
    /// of this state, at the next epoch (head not yet set).
    fn transition(
        &self,
        author: &Address,
        identity: &IdentityKey,
        action: &GroupAction,
    ) -> Result<Self, GroupError> {
        use GroupError as E;
        let &(pinned, role) = self
            .members
            .get(author)
            .ok_or_else(|| E::NotMember(author.clone()))?;
        if &pinned != identity {
            return Err(E::IdentityMismatch);
        }
        let admin = role == GroupRole::Admin;
        let mut next = self.clone();
        next.epoch = self.epoch.saturating_add(1);
        match action {
            GroupAction::Create { .. } => {
                return Err(E::InvalidChange(
                    "create is the change of epoch 0, and only it",
                ));
            }
            GroupAction::Add(members) => {
                if !admin {
                    return Err(E::NotAdmin);
                }
                if members.is_empty() {
                    return Err(E::InvalidChange("add names no member"));
                }
                check_count(members.len())?;
                for m in members {
                    if self.members.contains_key(&m.address) {
                        return Err(E::AlreadyMember(m.address.clone()));
                    }
                    if next
                        .members
                        .insert(m.address.clone(), (m.identity, m.role))
                        .is_some()
                    {
                        return Err(E::DuplicateMember(m.address.clone()));
                    }
                }
                if next.members.len() > MAX_GROUP_MEMBERS {
                    return Err(E::TooManyMembers {
                        count: next.members.len(),
                        max: MAX_GROUP_MEMBERS,
                    });
                }
            }
            GroupAction::Remove(addresses) => {
                if !admin {
                    return Err(E::NotAdmin);
                }
                if addresses.is_empty() {
                    return Err(E::InvalidChange("remove names no member"));
                }
                check_count(addresses.len())?;
                let mut seen = BTreeSet::new();
                for a in addresses {
                    if a == author {
                        return Err(E::InvalidChange(
                            "an author leaves, it does not remove itself",
                        ));
                    }
                    if !seen.insert(a) {
                        return Err(E::DuplicateMember(a.clone()));
                    }
                    if next.members.remove(a).is_none() {
                        return Err(E::NoSuchMember(a.clone()));
                    }
                }
            }
            GroupAction::Leave => {
                next.members.remove(author);
            }
            GroupAction::SetRole { member, role } => {
                if !admin {
                    return Err(E::NotAdmin);
                }
                let entry = next
                    .members
                    .get_mut(member)
                    .ok_or_else(|| E::NoSuchMember(member.clone()))?;
                if entry.1 == *role {
                    return Err(E::InvalidChange("the member has that role already"));
                }
                entry.1 = *role;
            }
            GroupAction::SetTitle(title) => {
                if !admin {
                    return Err(E::NotAdmin);
                }
                next.title = checked_title(title.clone())?;
            }
        }
        if !next.members.is_empty() && !next.members.values().any(|m| m.1 == GroupRole::Admin) {
            return Err(E::NoAdminLeft);
        }
        Ok(next.hashed())
    }

    /// The state hash (SPEC.md 18.5): `SHA-256(framed("kogge/v1/hash/group-state",
    /// group_id, u64be(epoch), title, sequencer, sequencer_key, then for every member in
    /// address order: address, identity_key, role byte))`.
    pub fn state_hash(&self) -> [u8; 32] {
        self.hash
    }

    /// This state with its hash computed.
    fn hashed(mut self) -> Self {
        self.hash = self.compute_hash();
        self
    }

    fn compute_hash(&self) -> [u8; 32] {
        let epoch = self.epoch.to_be_bytes();
        let key = self.sequencer.key.to_bytes();
        let members: Vec<(&Address, [u8; 32], [u8; 1])> = self
            .members
            .iter()
            .map(|(a, (identity, role))| (a, identity.to_bytes(), [role.hash_byte()]))
            .collect();
        let mut parts: Vec<&[u8]> = vec![
            self.id.as_bytes(),
            &epoch,
            self.title.as_bytes(),
            self.sequencer.domain.as_str().as_bytes(),
            &key,
        ];
        for (a, identity, role) in &members {
            parts.push(a.as_str().as_bytes());
            parts.push(identity);
            parts.push(role);
        }
        crypto::sha256(&crypto::framed(Label::GroupState, &parts))
    }

    /// The group.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The epoch: 0 after creation, one more with every change.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The hash of the change that made this epoch.
    pub fn head(&self) -> &[u8; 32] {
        &self.head
    }

    /// The title.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// The epoch of the last removal this member applied (see [`GroupSender::needs_new_chain`]).
    pub fn rekey_epoch(&self) -> u64 {
        self.rekey_epoch
    }

    /// The same state with a restored last removal epoch (persisted state only).
    pub(crate) fn with_rekey_epoch(mut self, epoch: u64) -> Self {
        self.rekey_epoch = epoch.min(self.epoch);
        self
    }

    /// The provider that orders the group's changes.
    pub fn sequencer(&self) -> &Sequencer {
        &self.sequencer
    }

    /// The members, in address order.
    pub fn members(&self) -> impl Iterator<Item = GroupMember> + '_ {
        self.members
            .iter()
            .map(|(address, &(identity, role))| GroupMember {
                address: address.clone(),
                identity,
                role,
            })
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether everyone left.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `address`'s role, if a member.
    pub fn role(&self, address: &Address) -> Option<GroupRole> {
        self.members.get(address).map(|m| m.1)
    }

    /// The identity key the group pinned for `address`, if a member.
    pub fn identity(&self, address: &Address) -> Option<&IdentityKey> {
        self.members.get(address).map(|m| &m.0)
    }

    /// The state as a snapshot (SPEC.md 18.6), for a member who joins.
    pub fn to_snapshot(&self) -> Bytes {
        Bytes::from(
            wire::GroupSnapshot {
                version: PROTOCOL_VERSION,
                group_id: Bytes::copy_from_slice(self.id.as_bytes()),
                epoch: self.epoch,
                head: Bytes::copy_from_slice(&self.head),
                title: self.title.clone(),
                sequencer: self.sequencer.domain.as_str().to_owned(),
                sequencer_key: Bytes::copy_from_slice(&self.sequencer.key.to_bytes()),
                members: self.members().map(|m| m.to_wire()).collect(),
            }
            .encode_to_vec(),
        )
    }

    /// Decodes a snapshot: size, structure, version, field forms, members sorted by
    /// address and each once, at most [`MAX_GROUP_MEMBERS`], an admin among them. A
    /// snapshot is only as trustworthy as whoever sent it; [`join`](Self::join) checks it
    /// against a countersigned change.
    pub fn from_snapshot(encoded: &[u8]) -> Result<Self, GroupError> {
        use GroupError as E;
        if encoded.len() > MAX_GROUP_SNAPSHOT_LEN {
            return Err(E::TooLarge {
                len: encoded.len(),
                max: MAX_GROUP_SNAPSHOT_LEN,
            });
        }
        let s = wire::GroupSnapshot::decode(encoded).map_err(|_| E::Decode)?;
        if s.version != PROTOCOL_VERSION {
            return Err(E::UnsupportedVersion(s.version));
        }
        // The order of SPEC.md 18.6: field forms, member count, members (each one's form,
        // then its place in the order), an admin.
        let id = GroupId::from_slice(&s.group_id).ok_or(E::InvalidField("group_id"))?;
        let head: [u8; 32] = s
            .head
            .as_ref()
            .try_into()
            .map_err(|_| E::InvalidField("head"))?;
        let title = checked_title(s.title)?;
        let sequencer = Sequencer {
            domain: Domain::parse_canonical(&s.sequencer).map_err(E::InvalidAddress)?,
            key: ProviderKey::from_bytes(&s.sequencer_key)
                .map_err(|_| E::InvalidField("sequencer_key"))?,
        };
        if s.members.len() > MAX_GROUP_MEMBERS {
            return Err(E::TooManyMembers {
                count: s.members.len(),
                max: MAX_GROUP_MEMBERS,
            });
        }
        let mut members = BTreeMap::new();
        let mut last: Option<Address> = None;
        for m in &s.members {
            let m = GroupMember::from_wire(m)?;
            if last.as_ref().is_some_and(|l| l >= &m.address) {
                return Err(if last.as_ref() == Some(&m.address) {
                    E::DuplicateMember(m.address)
                } else {
                    E::InvalidField("members (not in address order)")
                });
            }
            last = Some(m.address.clone());
            members.insert(m.address, (m.identity, m.role));
        }
        if members.is_empty() || !members.values().any(|m| m.1 == GroupRole::Admin) {
            return Err(E::NoAdminLeft);
        }
        Ok(Self {
            id,
            epoch: s.epoch,
            head,
            title,
            sequencer,
            members,
            rekey_epoch: 0,
            hash: [0; 32],
        }
        .hashed())
    }

    /// Joins a group: the state that `change` (the countersigned change that added
    /// `joiner`) makes from `snapshot` (the state before it). The change must apply to the
    /// snapshot and add `joiner`; since the change commits to the state it produces and
    /// the sequencer countersigned it, a snapshot that does not match what the group's
    /// members hold is refused (`state_mismatch`).
    pub fn join(
        snapshot: &[u8],
        change: &GroupChange,
        joiner: &Address,
    ) -> Result<Self, GroupError> {
        let before = Self::from_snapshot(snapshot)?;
        let after = before.apply(change)?;
        let names_joiner = match &change.action {
            GroupAction::Add(members) => members.iter().any(|m| &m.address == joiner),
            _ => false,
        };
        if !names_joiner {
            return Err(GroupError::InvalidChange(
                "the change does not add the joiner",
            ));
        }
        Ok(after)
    }
}

impl fmt::Debug for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupState")
            .field("id", &self.id)
            .field("epoch", &self.epoch)
            .field("members", &self.members.len())
            .field("sequencer", &self.sequencer.domain)
            .finish_non_exhaustive()
    }
}
