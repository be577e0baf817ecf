//! What the client state machine tells its app, and why a command was refused.

use std::fmt;

use crate::address::Address;
use crate::envelope::{Content, ContentError, MessageId};
use crate::group::{GroupAction, GroupError, GroupId, GroupMessageError, GroupOpened};
use crate::identity::{DeviceId, IdentityKey};
use crate::protocol::ProtocolError;
use crate::session::SessionError;
use crate::time::UnixMillis;

/// How far the app may trust the identity key behind a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityState {
    /// The user compared fingerprints for this very key
    /// ([`Client::mark_verified`](super::Client::mark_verified)), or it is this user's own
    /// identity.
    Verified,
    /// The user never verified this contact: trusted on first use only.
    Unverified,
    /// The user verified another key for this contact; the contact's identity changed
    /// since. Warn before trusting it.
    Changed,
}

/// Why connection authentication failed (SPEC.md 16.3). The client closes the
/// connection and tries again after a backoff.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The acceptor named another provider domain than the configured one.
    WrongProvider {
        /// The domain it named.
        domain: String,
    },
    /// The acceptor's provider key is not the pinned one.
    WrongKey,
    /// The challenge signature does not verify.
    BadSignature,
    /// The transport's connection binding is longer than
    /// [`MAX_BINDING_LEN`](crate::limits::MAX_BINDING_LEN).
    BadBinding,
    /// The provider refused this device (`Goodbye`).
    Refused(ProtocolError),
    /// No `Welcome` within [`AUTH_TIMEOUT_MS`](crate::limits::AUTH_TIMEOUT_MS).
    Timeout,
}

/// A received, authenticated, decrypted message (not a receipt: those become
/// [`ClientEvent::DeliveredToDevice`] and [`ClientEvent::Read`]). Its `Debug` output
/// leaves the content out, so logging events does not log plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The conversation: the sender, or for a copy of a message this user sent from
    /// another device, the user it was sent to.
    pub conversation: Address,
    /// The sender, as authenticated by the sender device's signature (never the outer
    /// routing data).
    pub sender: Address,
    /// The sender device.
    pub sender_device: DeviceId,
    /// The identity key that certified the sender device.
    pub identity_key: IdentityKey,
    /// Whether the user verified that identity key.
    pub identity: IdentityState,
    /// The message id.
    pub message_id: MessageId,
    /// The sender's timestamp.
    pub timestamp: UnixMillis,
    /// The content ([`Content::Unknown`] for kinds this version does not know: ignore).
    pub content: Content,
    /// Sequence numbers of the sender device that this message revealed as missing
    /// (dropped, delayed or reordered on the way).
    pub missing: Vec<u64>,
}

impl fmt::Debug for IncomingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            conversation,
            sender,
            sender_device,
            identity_key,
            identity,
            message_id,
            timestamp,
            content,
            missing,
        } = self;
        let kind = match content {
            Content::Text(_) => "text",
            Content::Receipt(_) => "receipt",
            _ => "unknown",
        };
        f.debug_struct("IncomingMessage")
            .field("conversation", conversation)
            .field("sender", sender)
            .field("sender_device", sender_device)
            .field("identity_key", identity_key)
            .field("identity", identity)
            .field("message_id", message_id)
            .field("timestamp", timestamp)
            .field("content", &kind)
            .field("missing", &missing.len())
            .finish()
    }
}

/// Something the app should know about. Every event is reported once.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Authenticated to the provider: requests and deliveries flow.
    Online,
    /// The connection is gone; the client reconnects after a backoff.
    Offline,
    /// The provider could not be authenticated or refused this device.
    AuthFailed(AuthFailure),
    /// A message arrived.
    Message(Box<IncomingMessage>),
    /// The provider stored every envelope of a message durably: from now on it reaches
    /// every recipient device (or a [`ClientEvent::Undeliverable`] follows).
    DeliveredToProvider {
        /// The message.
        message_id: MessageId,
    },
    /// An end-to-end delivery receipt: the message reached this device of `by`.
    DeliveredToDevice {
        /// The message.
        message_id: MessageId,
        /// Who received it (authenticated).
        by: Address,
        /// On which device.
        device: DeviceId,
    },
    /// An end-to-end read receipt.
    Read {
        /// The message.
        message_id: MessageId,
        /// Who read it (authenticated).
        by: Address,
        /// On which device.
        device: DeviceId,
    },
    /// A message will not reach `recipient` (all its devices if `device` is `None`).
    /// Reported by this client (expiry, refused submit, no session possible) or by the
    /// provider in a notice (which is not end-to-end authenticated).
    Undeliverable {
        /// The message.
        message_id: MessageId,
        /// The recipient user.
        recipient: Address,
        /// The recipient device, if only one.
        device: Option<DeviceId>,
        /// Why.
        reason: ProtocolError,
    },
    /// The first device list seen for a contact: its identity key is trusted on first
    /// use.
    IdentityFirstSeen {
        /// The contact.
        address: Address,
        /// Its identity key.
        identity: IdentityKey,
    },
    /// A contact's device list is now signed by another identity key: any verification
    /// no longer holds (messages report [`IdentityState::Changed`]).
    IdentityChanged {
        /// The contact.
        address: Address,
        /// The key held until now.
        old: IdentityKey,
        /// The key held from now on.
        new: IdentityKey,
    },
    /// A device was added to a user's list (a contact's or this user's own).
    DeviceAdded {
        /// The user.
        address: Address,
        /// The device.
        device: DeviceId,
    },
    /// A device was removed from a user's list.
    DeviceRemoved {
        /// The user.
        address: Address,
        /// The device.
        device: DeviceId,
    },
    /// The provider reported that this device's one-time prekeys run low; the client
    /// made and published more.
    PrekeysLow {
        /// How many the provider still had.
        remaining: u32,
    },
    /// A mailbox item was refused (and acknowledged, so it is gone).
    Rejected {
        /// Its mailbox sequence number.
        seq: u64,
        /// The error code (SPEC.md 10).
        code: &'static str,
        /// The sender the envelope claimed, if it decoded (not authenticated).
        claimed_sender: Option<Address>,
    },
    /// A group change applied: from the group's sequencer, made by `author` (this
    /// user's own changes too). A creating change, or one that added this user, makes
    /// the group appear ([`Client::group`](super::Client::group)).
    GroupChanged {
        /// The group.
        group: GroupId,
        /// Its epoch now.
        epoch: u64,
        /// Who made the change (authenticated by its signature).
        author: Address,
        /// What it did.
        action: GroupAction,
    },
    /// Another device of this user handed this device a group it did not hold (this
    /// device was linked after the group was made, SPEC.md 20.5); it is a member now.
    GroupSynced {
        /// The group.
        group: GroupId,
        /// Its epoch.
        epoch: u64,
    },
    /// A group message arrived (its `Debug` output leaves the content out).
    GroupMessage(Box<GroupOpened>),
    /// A group change this device asked for was not ordered (`group_conflict`: another
    /// change came first; make it again on the new state).
    GroupChangeFailed {
        /// The group.
        group: GroupId,
        /// Why.
        error: ProtocolError,
    },
    /// A group message was not stored by the provider.
    GroupMessageFailed {
        /// The group.
        group: GroupId,
        /// The message.
        message_id: MessageId,
        /// Why.
        reason: ProtocolError,
    },
    /// A group item (change or envelope) was refused and acknowledged: `code` is its
    /// group error code (SPEC.md 18.4, 19.3).
    GroupItemRejected {
        /// The group, if the item named one that decoded.
        group: Option<GroupId>,
        /// The error code.
        code: &'static str,
    },
    /// A request other than a submit failed for good (publishing prekeys).
    RequestFailed {
        /// Which request ("publish_prekeys").
        request: &'static str,
        /// The provider's error.
        error: ProtocolError,
    },
}

/// Why a command was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Too many messages or requests outstanding
    /// ([`MAX_CLIENT_PENDING`](crate::limits::MAX_CLIENT_PENDING)): try again later.
    #[error("too many operations outstanding (at most {max})")]
    Busy {
        /// The limit.
        max: usize,
    },
    /// The content cannot be encoded (too large or invalid).
    #[error("content: {0}")]
    Content(#[from] ContentError),
    /// The session layer refused the command.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// This device holds no device list of the user (fetch it first).
    #[error("no device list known for {0}")]
    UnknownContact(Address),
    /// This device holds no such group.
    #[error("no group {0}")]
    UnknownGroup(GroupId),
    /// The group change cannot be made.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The group message cannot be made.
    #[error(transparent)]
    GroupMessage(#[from] GroupMessageError),
}

impl ClientError {
    /// The stable error code (SPEC.md 10).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Busy { .. } => "busy",
            Self::Content(_) => "invalid_content",
            Self::Session(e) => e.code(),
            Self::UnknownContact(_) => "unknown_contact",
            Self::UnknownGroup(_) => "unknown_group",
            Self::Group(e) => e.code(),
            Self::GroupMessage(e) => e.code(),
        }
    }
}
