//! The client-provider and provider-provider protocol (SPEC.md section 16): frames,
//! connection authentication, error codes, and the retry and rate-limit arithmetic
//! that [`crate::client`] and [`crate::provider`] share.
//!
//! A transport delivers whole frames (one encoded `Frame` each, at most
//! [`MAX_FRAME_LEN`] bytes). Frames may be lost, duplicated or reordered: every request
//! carries an id and is retried unchanged until answered, and every step is
//! idempotent, so the protocol needs nothing from the transport but integrity.

mod rate;

use std::fmt;

use bytes::Bytes;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use prost::Message;

pub use rate::{Backoff, TokenBucket};

use crate::crypto::{self, Label};
use crate::limits::{
    AUTH_NONCE_LEN, MAX_ACK_SEQS, MAX_ADDRESS_LEN, MAX_BINDING_LEN, MAX_CERTIFICATE_LEN,
    MAX_DELIVER_ITEMS, MAX_DEVICE_LIST_LEN, MAX_DOMAIN_LEN, MAX_ENVELOPE_LEN, MAX_ERROR_CODE_LEN,
    MAX_ERROR_MESSAGE_LEN, MAX_FETCH_DEVICES, MAX_FRAME_LEN, MAX_GROUP_CHANGE_LEN,
    MAX_GROUP_RECIPIENTS, MAX_GROUP_SNAPSHOT_LEN, MAX_PREKEY_BUNDLE_LEN, MAX_PUBLISH_ONE_TIME,
    MAX_RELAY_ENVELOPES, MAX_SIGNED_PREKEY_LEN, MAX_SUBMIT_ENVELOPES,
};
use crate::wire;

/// Why a frame was refused before it reached a state machine. Every variant closes
/// the connection with `bad_frame` (SPEC.md 16.2).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Longer than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds {max}")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a protobuf `Frame`, or an empty one.
    #[error("frame does not decode")]
    Decode,
    /// A field breaks a rule of SPEC.md 16.2 (its name is given).
    #[error("invalid field `{0}`")]
    InvalidField(&'static str),
    /// A repeated field has more entries than its limit.
    #[error("field `{field}` has {count} entries, more than {max}")]
    TooMany {
        /// The field.
        field: &'static str,
        /// How many entries it had.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// The error codes of SPEC.md 16.8, carried in `Error.code` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame did not decode or broke a structural rule.
    BadFrame,
    /// The peer speaks a protocol version this side does not.
    UnsupportedVersion,
    /// A request arrived before authentication, or a frame out of place.
    Unexpected,
    /// The authentication signature or certificate was refused.
    AuthFailed,
    /// The connection reached a provider other than the one expected.
    WrongProvider,
    /// The address belongs to another provider, or the envelope's sender is not the
    /// authenticated peer.
    NotYours,
    /// No such user at this provider.
    UnknownUser,
    /// No such device of that user.
    UnknownDevice,
    /// New users may not register at this provider.
    RegistrationClosed,
    /// The device list or certificate is signed by another identity key than the
    /// user's registered one.
    IdentityMismatch,
    /// The device list's serial is not higher than the stored one.
    StaleDeviceList,
    /// A device list, certificate, prekey or envelope did not decode or verify.
    Invalid,
    /// More entries than a limit allows (the message names it).
    TooMany,
    /// Too many requests: retry after `retry_after_ms`.
    RateLimited,
    /// The recipient device's mailbox is full: retry later.
    MailboxFull,
    /// The queue towards the recipient's provider is full: retry later.
    QueueFull,
    /// The recipient's provider could not be reached in time.
    Unreachable,
    /// Retries ran out.
    Expired,
    /// The provider's storage failed; nothing was changed: retry.
    Unavailable,
    /// The sequencer does not order this group.
    UnknownGroup,
    /// The group change lost the race to another change of the same epoch: make it
    /// again on the new state (SPEC.md 18.3).
    GroupConflict,
    /// The group change does not apply to the group's state (the message gives the
    /// group error code of SPEC.md 18.4).
    GroupRefused,
}

impl ErrorCode {
    /// Every code, for SPEC.md's table and tests.
    pub const ALL: &'static [ErrorCode] = &[
        Self::BadFrame,
        Self::UnsupportedVersion,
        Self::Unexpected,
        Self::AuthFailed,
        Self::WrongProvider,
        Self::NotYours,
        Self::UnknownUser,
        Self::UnknownDevice,
        Self::RegistrationClosed,
        Self::IdentityMismatch,
        Self::StaleDeviceList,
        Self::Invalid,
        Self::TooMany,
        Self::RateLimited,
        Self::MailboxFull,
        Self::QueueFull,
        Self::Unreachable,
        Self::Expired,
        Self::Unavailable,
        Self::UnknownGroup,
        Self::GroupConflict,
        Self::GroupRefused,
    ];

    /// The code's string on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Unexpected => "unexpected",
            Self::AuthFailed => "auth_failed",
            Self::WrongProvider => "wrong_provider",
            Self::NotYours => "not_yours",
            Self::UnknownUser => "unknown_user",
            Self::UnknownDevice => "unknown_device",
            Self::RegistrationClosed => "registration_closed",
            Self::IdentityMismatch => "identity_mismatch",
            Self::StaleDeviceList => "stale_device_list",
            Self::Invalid => "invalid",
            Self::TooMany => "too_many",
            Self::RateLimited => "rate_limited",
            Self::MailboxFull => "mailbox_full",
            Self::QueueFull => "queue_full",
            Self::Unreachable => "unreachable",
            Self::Expired => "expired",
            Self::Unavailable => "unavailable",
            Self::UnknownGroup => "unknown_group",
            Self::GroupConflict => "group_conflict",
            Self::GroupRefused => "group_refused",
        }
    }

    /// Parses a wire code; unknown codes are `None`. Whether to retry is decided by the
    /// error's `retryable` flag, not by the code (SPEC.md 16.8).
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// Whether the same request may succeed later unchanged.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::MailboxFull
                | Self::QueueFull
                | Self::Unreachable
                | Self::Unavailable
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed protocol error as carried in `Error` (SPEC.md 16.8).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{raw_code}: {message}")]
pub struct ProtocolError {
    /// The code; `None` if the peer sent a code this implementation does not know.
    pub code: Option<ErrorCode>,
    /// The code string as received.
    pub raw_code: String,
    /// The peer's human-readable detail.
    pub message: String,
    /// Whether the request may be retried unchanged.
    pub retryable: bool,
    /// Wait at least this long before retrying.
    pub retry_after_ms: u64,
}

impl ProtocolError {
    /// An error with `code` and a detail message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        truncate_utf8(&mut message, MAX_ERROR_MESSAGE_LEN);
        Self {
            code: Some(code),
            raw_code: code.as_str().to_owned(),
            message,
            retryable: code.is_retryable(),
            retry_after_ms: 0,
        }
    }

    /// The same error with a retry hint.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = ms;
        self
    }

    pub(crate) fn to_wire(&self) -> wire::Error {
        wire::Error {
            code: self.raw_code.clone(),
            message: self.message.clone(),
            retryable: self.retryable,
            retry_after_ms: self.retry_after_ms,
        }
    }

    pub(crate) fn from_wire(e: &wire::Error) -> Self {
        Self {
            code: ErrorCode::parse(&e.code),
            raw_code: e.code.clone(),
            message: e.message.clone(),
            retryable: e.retryable,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Encodes a frame.
pub(crate) fn encode(body: wire::frame::Body) -> Bytes {
    Bytes::from(wire::Frame { body: Some(body) }.encode_to_vec())
}

/// Decodes a frame and checks the structural rules of SPEC.md 16.2 (sizes, counts,
/// fixed lengths). Checks nothing that needs keys or state.
pub(crate) fn decode(bytes: &[u8]) -> Result<wire::frame::Body, FrameError> {
    decode_from(bytes.len(), bytes)
}

/// [`decode`] whose byte fields (envelopes) are slices of `bytes` rather than copies. A
/// caller that keeps any of them keeps all of `bytes` alive, so it copies (or
/// re-points) what it stores for long.
pub(crate) fn decode_shared(bytes: Bytes) -> Result<wire::frame::Body, FrameError> {
    decode_from(bytes.len(), bytes)
}

fn decode_from(len: usize, buf: impl bytes::Buf) -> Result<wire::frame::Body, FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let frame = wire::Frame::decode(buf).map_err(|_| FrameError::Decode)?;
    let body = frame.body.ok_or(FrameError::Decode)?;
    check(&body)?;
    Ok(body)
}

/// Checks a frame's structure without acting on it: what a transport or fuzzer can
/// call to see whether bytes are a well-formed frame, and what kind.
pub fn check_frame(bytes: &[u8]) -> Result<&'static str, FrameError> {
    decode(bytes).map(|b| kind(&b))
}

/// The frame kind's name, for logs.
pub(crate) fn kind(body: &wire::frame::Body) -> &'static str {
    use wire::frame::Body;
    match body {
        Body::Hello(_) => "hello",
        Body::Challenge(_) => "challenge",
        Body::Auth(_) => "auth",
        Body::Welcome(_) => "welcome",
        Body::Request(_) => "request",
        Body::Response(_) => "response",
        Body::Deliver(_) => "deliver",
        Body::DeliverAck(_) => "deliver_ack",
        Body::Goodbye(_) => "goodbye",
    }
}

fn max_len(field: &'static str, value: &[u8], max: usize) -> Result<(), FrameError> {
    if value.len() > max {
        Err(FrameError::InvalidField(field))
    } else {
        Ok(())
    }
}

fn exact_len(field: &'static str, value: &[u8], len: usize) -> Result<(), FrameError> {
    if value.len() == len {
        Ok(())
    } else {
        Err(FrameError::InvalidField(field))
    }
}

fn max_count(field: &'static str, count: usize, max: usize) -> Result<(), FrameError> {
    if count > max {
        Err(FrameError::TooMany { field, count, max })
    } else {
        Ok(())
    }
}

fn check_error(e: &wire::Error) -> Result<(), FrameError> {
    max_len("error.code", e.code.as_bytes(), MAX_ERROR_CODE_LEN)?;
    max_len("error.message", e.message.as_bytes(), MAX_ERROR_MESSAGE_LEN)
}

fn check(body: &wire::frame::Body) -> Result<(), FrameError> {
    use wire::frame::Body;
    match body {
        Body::Hello(h) => {
            exact_len("hello.nonce", &h.nonce, AUTH_NONCE_LEN)?;
            max_len("hello.acceptor", h.acceptor.as_bytes(), MAX_DOMAIN_LEN)
        }
        Body::Challenge(c) => {
            exact_len("challenge.nonce", &c.nonce, AUTH_NONCE_LEN)?;
            max_len("challenge.domain", c.domain.as_bytes(), MAX_DOMAIN_LEN)?;
            exact_len("challenge.provider_key", &c.provider_key, 32)?;
            exact_len("challenge.signature", &c.signature, 64)
        }
        Body::Auth(a) => {
            exact_len("auth.signature", &a.signature, 64)?;
            match &a.who {
                Some(wire::auth::Who::Device(d)) => {
                    max_len("auth.certificate", &d.certificate, MAX_CERTIFICATE_LEN)?;
                    max_len("auth.device_list", &d.device_list, MAX_DEVICE_LIST_LEN)
                }
                Some(wire::auth::Who::Provider(p)) => {
                    max_len("auth.domain", p.domain.as_bytes(), MAX_DOMAIN_LEN)
                }
                None => Err(FrameError::InvalidField("auth.who")),
            }
        }
        Body::Welcome(_) => Ok(()),
        Body::Goodbye(g) => g.error.as_ref().map_or(Ok(()), check_error),
        Body::Request(r) => check_request(r),
        Body::Response(r) => check_response(r),
        Body::Deliver(d) => {
            max_count("deliver.items", d.items.len(), MAX_DELIVER_ITEMS)?;
            for item in &d.items {
                match &item.item {
                    Some(wire::mailbox_item::Item::Envelope(e)) => {
                        max_len("deliver.envelope", e, MAX_ENVELOPE_LEN)?
                    }
                    Some(wire::mailbox_item::Item::Group(g)) => check_group_item(g)?,
                    Some(wire::mailbox_item::Item::Notice(n)) => {
                        if let Some(wire::notice::Body::Undeliverable(u)) = &n.body {
                            exact_len("undeliverable.message_id", &u.message_id, 16)?;
                            exact_len("undeliverable.device", &u.device, 16)?;
                            max_len(
                                "undeliverable.recipient",
                                u.recipient.as_bytes(),
                                MAX_ADDRESS_LEN,
                            )?;
                            if let Some(e) = &u.reason {
                                check_error(e)?;
                            }
                        }
                    }
                    None => return Err(FrameError::InvalidField("deliver.item")),
                }
            }
            Ok(())
        }
        Body::DeliverAck(a) => max_count("deliver_ack.seqs", a.seqs.len(), MAX_ACK_SEQS),
    }
}

fn check_request(r: &wire::Request) -> Result<(), FrameError> {
    use wire::request::Body;
    match &r.body {
        None => Err(FrameError::InvalidField("request.body")),
        Some(Body::PublishDeviceList(p)) => {
            max_len("device_list", &p.device_list, MAX_DEVICE_LIST_LEN)
        }
        Some(Body::PublishPrekeys(p)) => {
            max_len("signed_prekey", &p.signed_prekey, MAX_SIGNED_PREKEY_LEN)?;
            max_len("kem_prekey", &p.kem_prekey, MAX_SIGNED_PREKEY_LEN)?;
            max_count("one_time", p.one_time.len(), MAX_PUBLISH_ONE_TIME)?;
            p.one_time
                .iter()
                .try_for_each(|k| max_len("one_time", k, MAX_SIGNED_PREKEY_LEN))
        }
        Some(Body::FetchBundles(f)) => {
            max_len("fetch.address", f.address.as_bytes(), MAX_ADDRESS_LEN)?;
            max_len("fetch.requester", f.requester.as_bytes(), MAX_ADDRESS_LEN)?;
            max_count("fetch.devices", f.devices.len(), MAX_FETCH_DEVICES)?;
            f.devices
                .iter()
                .try_for_each(|d| exact_len("fetch.devices", d, 16))
        }
        Some(Body::FetchDeviceList(f)) => {
            max_len("fetch.address", f.address.as_bytes(), MAX_ADDRESS_LEN)?;
            max_len("fetch.requester", f.requester.as_bytes(), MAX_ADDRESS_LEN)
        }
        Some(Body::Submit(s)) => {
            max_count("submit.envelopes", s.envelopes.len(), MAX_SUBMIT_ENVELOPES)?;
            if s.envelopes.is_empty() {
                return Err(FrameError::InvalidField("submit.envelopes"));
            }
            s.envelopes
                .iter()
                .try_for_each(|e| max_len("submit.envelopes", e, MAX_ENVELOPE_LEN))
        }
        Some(Body::Relay(s)) => {
            let count = s.envelopes.len() + s.groups.len();
            max_count("relay.envelopes", count, MAX_RELAY_ENVELOPES)?;
            if count == 0 {
                return Err(FrameError::InvalidField("relay.envelopes"));
            }
            s.envelopes
                .iter()
                .try_for_each(|e| max_len("relay.envelopes", e, MAX_ENVELOPE_LEN))?;
            for g in &s.groups {
                check_group_item(
                    g.item
                        .as_ref()
                        .ok_or(FrameError::InvalidField("relay.groups.item"))?,
                )?;
                check_recipients("relay.groups.recipients", &g.recipients)?;
            }
            Ok(())
        }
        Some(Body::SubmitGroup(g)) => {
            max_len("submit_group.envelope", &g.envelope, MAX_ENVELOPE_LEN)?;
            if g.envelope.is_empty() {
                return Err(FrameError::InvalidField("submit_group.envelope"));
            }
            check_recipients("submit_group.recipients", &g.recipients)
        }
        Some(Body::OrderGroupChange(o)) => {
            max_len("order_group_change.change", &o.change, MAX_GROUP_CHANGE_LEN)?;
            max_len(
                "order_group_change.sequencer",
                o.sequencer.as_bytes(),
                MAX_DOMAIN_LEN,
            )?;
            max_len(
                "order_group_change.requester",
                o.requester.as_bytes(),
                MAX_ADDRESS_LEN,
            )
        }
    }
}

/// A group item: exactly one body of its size limit; a snapshot only with a change.
fn check_group_item(g: &wire::GroupItem) -> Result<(), FrameError> {
    use wire::group_item::Body;
    match &g.body {
        Some(Body::Envelope(e)) => {
            max_len("group_item.envelope", e, MAX_ENVELOPE_LEN)?;
            if !g.snapshot.is_empty() {
                return Err(FrameError::InvalidField("group_item.snapshot"));
            }
            Ok(())
        }
        Some(Body::Change(c)) => {
            max_len("group_item.change", c, MAX_GROUP_CHANGE_LEN)?;
            max_len("group_item.snapshot", &g.snapshot, MAX_GROUP_SNAPSHOT_LEN)
        }
        None => Err(FrameError::InvalidField("group_item.body")),
    }
}

/// A recipient list: 1 to [`MAX_GROUP_RECIPIENTS`] addresses of bounded length.
fn check_recipients(field: &'static str, list: &[String]) -> Result<(), FrameError> {
    max_count(field, list.len(), MAX_GROUP_RECIPIENTS)?;
    if list.is_empty() {
        return Err(FrameError::InvalidField(field));
    }
    list.iter()
        .try_for_each(|a| max_len(field, a.as_bytes(), MAX_ADDRESS_LEN))
}

fn check_response(r: &wire::Response) -> Result<(), FrameError> {
    use wire::response::Body;
    match &r.body {
        None => Err(FrameError::InvalidField("response.body")),
        Some(Body::Error(e)) => check_error(e),
        Some(Body::Done(_)) => Ok(()),
        Some(Body::Bundles(b)) => {
            max_len("bundles.device_list", &b.device_list, MAX_DEVICE_LIST_LEN)?;
            max_count(
                "bundles.bundles",
                b.bundles.len(),
                crate::limits::MAX_DEVICES_PER_USER,
            )?;
            b.bundles
                .iter()
                .try_for_each(|x| max_len("bundles.bundles", x, MAX_PREKEY_BUNDLE_LEN))
        }
        Some(Body::DeviceList(d)) => max_len("device_list", &d.device_list, MAX_DEVICE_LIST_LEN),
        Some(Body::GroupChange(g)) => {
            max_len("group_change.change", &g.change, MAX_GROUP_CHANGE_LEN)
        }
        Some(Body::RelayResult(rr)) => {
            max_count(
                "relay_result.results",
                rr.results.len(),
                MAX_RELAY_ENVELOPES,
            )?;
            rr.results.iter().try_for_each(check_error)
        }
    }
}

/// What the acceptor signs in `Challenge` (SPEC.md 16.3).
fn challenge_parts<'a>(
    hello_nonce: &'a [u8],
    nonce: &'a [u8],
    domain: &'a str,
    binding: &'a [u8],
) -> [&'a [u8]; 4] {
    [hello_nonce, nonce, domain.as_bytes(), binding]
}

/// What the connector signs in `Auth` (SPEC.md 16.3).
fn auth_parts<'a>(
    challenge_nonce: &'a [u8],
    hello_nonce: &'a [u8],
    acceptor: &'a str,
    binding: &'a [u8],
    identity: &'a [u8],
) -> [&'a [u8]; 5] {
    [
        challenge_nonce,
        hello_nonce,
        acceptor.as_bytes(),
        binding,
        identity,
    ]
}

/// Signs a `Challenge` with the acceptor's provider key.
pub(crate) fn sign_challenge(
    key: &SigningKey,
    hello_nonce: &[u8],
    nonce: &[u8],
    domain: &str,
    binding: &[u8],
) -> Signature {
    crypto::sign(
        key,
        Label::ChallengeSignature,
        &challenge_parts(hello_nonce, nonce, domain, binding),
    )
}

/// Verifies a `Challenge` signature.
pub(crate) fn verify_challenge(
    key: &VerifyingKey,
    hello_nonce: &[u8],
    nonce: &[u8],
    domain: &str,
    binding: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(sig) = crypto::signature(signature) else {
        return false;
    };
    crypto::verify(
        key,
        Label::ChallengeSignature,
        &challenge_parts(hello_nonce, nonce, domain, binding),
        &sig,
    )
    .is_ok()
}

/// The connector's `Auth` signature (SPEC.md 16.3): `identity` is the device
/// certificate's exact bytes or the connector's provider domain.
pub(crate) fn sign_auth(
    key: &SigningKey,
    challenge_nonce: &[u8],
    hello_nonce: &[u8],
    acceptor: &str,
    binding: &[u8],
    identity: &[u8],
) -> Signature {
    crypto::sign(
        key,
        Label::AuthSignature,
        &auth_parts(challenge_nonce, hello_nonce, acceptor, binding, identity),
    )
}

/// Verifies an `Auth` signature.
pub(crate) fn verify_auth(
    key: &VerifyingKey,
    challenge_nonce: &[u8],
    hello_nonce: &[u8],
    acceptor: &str,
    binding: &[u8],
    identity: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(sig) = crypto::signature(signature) else {
        return false;
    };
    crypto::verify(
        key,
        Label::AuthSignature,
        &auth_parts(challenge_nonce, hello_nonce, acceptor, binding, identity),
        &sig,
    )
    .is_ok()
}

/// Checks a transport's connection binding length.
pub(crate) fn binding_ok(binding: &[u8]) -> bool {
    binding.len() <= MAX_BINDING_LEN
}

/// A connection handle chosen by the driver (the transport adapter or simulator);
/// the state machines only compare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

#[cfg(test)]
mod tests;
