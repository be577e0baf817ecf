//! What the ciphertext carries (SPEC.md section 7): text messages and receipts, padded.

use bytes::Bytes;
use prost::Message;

use super::MessageId;
use crate::address::Address;
use crate::group::{GroupSync, SenderKey};
use crate::limits::{MAX_MEDIA_TYPE_LEN, MAX_PLAINTEXT_LEN, MAX_RECEIPT_IDS, PADDING_BLOCK};
use crate::wire;

/// The decrypted content of an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Content {
    /// A text message.
    Text(Text),
    /// A delivery or read receipt. Receipts are end-to-end authenticated like any other
    /// content, so no provider can forge "read".
    Receipt(Receipt),
    /// A member device's group sender chain, handed to another member device over their
    /// end-to-end session (SPEC.md 7.5, 19.2). Secret: its `Debug` shows no key.
    GroupSenderKey(Box<SenderKey>),
    /// A group state handed by one device of a user to another device of the same user
    /// (one linked after the group was made), over their session (SPEC.md 7.6, 20.5).
    GroupSync(Box<GroupSync>),
    /// A kind of content this version does not know (sent by a newer implementation).
    /// Applications should ignore it, not treat it as an error.
    Unknown,
}

/// A text message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    /// Media type of `body`, such as `text/plain` or `text/markdown`. Printable ASCII,
    /// at most [`MAX_MEDIA_TYPE_LEN`] bytes; empty means `text/plain`.
    pub media_type: String,
    /// The text.
    pub body: String,
    /// The message this one replies to.
    pub reply_to: Option<MessageId>,
}

impl Text {
    /// A plain-text message.
    pub fn plain(body: impl Into<String>) -> Self {
        Self {
            media_type: String::new(),
            body: body.into(),
            reply_to: None,
        }
    }
}

/// What a receipt says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// The messages reached the recipient device.
    Delivered,
    /// The recipient read the messages.
    Read,
}

/// A receipt for earlier messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// What happened to the messages.
    pub kind: ReceiptKind,
    /// The messages, at most [`MAX_RECEIPT_IDS`].
    pub message_ids: Vec<MessageId>,
}

/// Why content could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// The encoded, padded content would exceed [`MAX_PLAINTEXT_LEN`].
    #[error("content is {len} bytes, the maximum is {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a valid protobuf encoding of the schema (including invalid UTF-8 text).
    #[error("content is not valid protobuf")]
    Decode,
    /// A field breaks a rule of SPEC.md section 7.
    #[error("content field {0} is invalid")]
    InvalidField(&'static str),
}

fn valid_media_type(s: &str) -> bool {
    s.len() <= MAX_MEDIA_TYPE_LEN && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl Content {
    fn to_wire(&self) -> Result<wire::Content, ContentError> {
        let body = match self {
            Content::Text(t) => {
                if !valid_media_type(&t.media_type) {
                    return Err(ContentError::InvalidField("text.media_type"));
                }
                Some(wire::content::Body::Text(wire::Text {
                    media_type: t.media_type.clone(),
                    body: t.body.clone(),
                    reply_to: t
                        .reply_to
                        .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                        .unwrap_or_default(),
                }))
            }
            Content::Receipt(r) => {
                if r.message_ids.is_empty() || r.message_ids.len() > MAX_RECEIPT_IDS {
                    return Err(ContentError::InvalidField("receipt.message_ids"));
                }
                let kind = match r.kind {
                    ReceiptKind::Delivered => wire::ReceiptKind::Delivered,
                    ReceiptKind::Read => wire::ReceiptKind::Read,
                };
                Some(wire::content::Body::Receipt(wire::Receipt {
                    kind: kind as i32,
                    message_ids: r
                        .message_ids
                        .iter()
                        .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                        .collect(),
                }))
            }
            Content::GroupSenderKey(k) => Some(wire::content::Body::GroupSenderKey(k.to_wire())),
            Content::GroupSync(g) => Some(wire::content::Body::GroupSync(g.to_wire())),
            Content::Unknown => return Err(ContentError::InvalidField("body")),
        };
        Ok(wire::Content {
            body,
            sent_to: String::new(),
            padding: Bytes::new(),
        })
    }

    /// Encodes the content and pads it to a multiple of [`PADDING_BLOCK`] bytes
    /// (SPEC.md 7.3): the padding field (number 15) holds `k` zero bytes, where `k >= 1`
    /// is the smallest value that makes the total length a multiple of the block. (`k`
    /// is at least 1 because protobuf omits an empty field.)
    pub fn encode_padded(&self) -> Result<Vec<u8>, ContentError> {
        self.encode_padded_sent_to(None)
    }

    /// [`encode_padded`](Self::encode_padded) with the `sent_to` field set, for the copies
    /// a sender sends to its own other devices.
    pub(crate) fn encode_padded_sent_to(
        &self,
        sent_to: Option<&Address>,
    ) -> Result<Vec<u8>, ContentError> {
        let mut msg = self.to_wire()?;
        msg.sent_to = sent_to.map(|a| a.as_str().to_owned()).unwrap_or_default();
        let unpadded = msg.encoded_len();
        // The padding field costs 2 bytes (tag 0x7a, one-byte length) plus k zeros, with
        // 1 <= k <= PADDING_BLOCK <= 127, so its length prefix is always one byte.
        let total = (unpadded + 3).div_ceil(PADDING_BLOCK) * PADDING_BLOCK;
        if total > MAX_PLAINTEXT_LEN {
            return Err(ContentError::TooLarge {
                len: total,
                max: MAX_PLAINTEXT_LEN,
            });
        }
        msg.padding = Bytes::from(vec![0u8; total - unpadded - 2]);
        let out = msg.encode_to_vec();
        debug_assert_eq!(out.len(), total);
        Ok(out)
    }

    /// Decodes a plaintext, checking the rules of SPEC.md section 7.
    pub fn decode(plaintext: &[u8]) -> Result<Self, ContentError> {
        Self::decode_with_sent_to(plaintext).map(|(c, _)| c)
    }

    /// Decodes a plaintext and its `sent_to` field (SPEC.md 15.7), if present.
    pub(crate) fn decode_with_sent_to(
        plaintext: &[u8],
    ) -> Result<(Self, Option<Address>), ContentError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(ContentError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let msg = wire::Content::decode(plaintext).map_err(|_| ContentError::Decode)?;
        let sent_to = if msg.sent_to.is_empty() {
            None
        } else {
            Some(
                Address::parse_canonical(&msg.sent_to)
                    .map_err(|_| ContentError::InvalidField("sent_to"))?,
            )
        };
        Self::from_wire_body(msg.body).map(|c| (c, sent_to))
    }

    fn from_wire_body(body: Option<wire::content::Body>) -> Result<Self, ContentError> {
        match body {
            None => Ok(Content::Unknown),
            Some(wire::content::Body::Text(t)) => {
                if !valid_media_type(&t.media_type) {
                    return Err(ContentError::InvalidField("text.media_type"));
                }
                let reply_to = if t.reply_to.is_empty() {
                    None
                } else {
                    Some(
                        MessageId::from_slice(&t.reply_to)
                            .ok_or(ContentError::InvalidField("text.reply_to"))?,
                    )
                };
                Ok(Content::Text(Text {
                    media_type: t.media_type,
                    body: t.body,
                    reply_to,
                }))
            }
            Some(wire::content::Body::Receipt(r)) => {
                let kind = match wire::ReceiptKind::try_from(r.kind) {
                    Ok(wire::ReceiptKind::Delivered) => ReceiptKind::Delivered,
                    Ok(wire::ReceiptKind::Read) => ReceiptKind::Read,
                    Ok(wire::ReceiptKind::Unspecified) => {
                        return Err(ContentError::InvalidField("receipt.kind"));
                    }
                    // A receipt kind from a newer version: ignorable, like an unknown body.
                    Err(_) => return Ok(Content::Unknown),
                };
                if r.message_ids.is_empty() || r.message_ids.len() > MAX_RECEIPT_IDS {
                    return Err(ContentError::InvalidField("receipt.message_ids"));
                }
                let message_ids = r
                    .message_ids
                    .iter()
                    .map(|b| MessageId::from_slice(b))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(ContentError::InvalidField("receipt.message_ids"))?;
                Ok(Content::Receipt(Receipt { kind, message_ids }))
            }
            Some(wire::content::Body::GroupSenderKey(k)) => SenderKey::from_wire(k)
                .map(|k| Content::GroupSenderKey(Box::new(k)))
                .map_err(|_| ContentError::InvalidField("group_sender_key")),
            Some(wire::content::Body::GroupSync(g)) => GroupSync::from_wire(&g)
                .map(|g| Content::GroupSync(Box::new(g)))
                .map_err(|_| ContentError::InvalidField("group_sync")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rounds_to_the_block() {
        for len in 0..300 {
            let c = Content::Text(Text::plain("x".repeat(len)));
            let enc = c.encode_padded().unwrap();
            assert_eq!(enc.len() % PADDING_BLOCK, 0, "len {len}");
            assert!(enc.len() >= len + 3);
            assert_eq!(Content::decode(&enc).unwrap(), c);
        }
    }

    #[test]
    fn largest_content_fits_and_one_more_does_not() {
        // Find the largest body that still fits, by construction of the padding rule.
        let big = Content::Text(Text::plain("y".repeat(MAX_PLAINTEXT_LEN)));
        assert!(matches!(
            big.encode_padded(),
            Err(ContentError::TooLarge { .. })
        ));
        let ok = Content::Text(Text::plain("y".repeat(MAX_PLAINTEXT_LEN - 16)));
        assert_eq!(ok.encode_padded().unwrap().len(), MAX_PLAINTEXT_LEN);
    }

    #[test]
    fn receipts_round_trip_and_are_checked() {
        let ids = vec![
            MessageId::from_bytes([1; 16]),
            MessageId::from_bytes([2; 16]),
        ];
        let c = Content::Receipt(Receipt {
            kind: ReceiptKind::Read,
            message_ids: ids,
        });
        assert_eq!(Content::decode(&c.encode_padded().unwrap()).unwrap(), c);
        let empty = Content::Receipt(Receipt {
            kind: ReceiptKind::Delivered,
            message_ids: vec![],
        });
        assert_eq!(
            empty.encode_padded(),
            Err(ContentError::InvalidField("receipt.message_ids"))
        );
        // A receipt id of the wrong length.
        let bad = wire::Content {
            body: Some(wire::content::Body::Receipt(wire::Receipt {
                kind: 1,
                message_ids: vec![Bytes::from_static(&[1; 15])],
            })),
            sent_to: String::new(),
            padding: Bytes::new(),
        }
        .encode_to_vec();
        assert_eq!(
            Content::decode(&bad),
            Err(ContentError::InvalidField("receipt.message_ids"))
        );
        // A future receipt kind is ignorable.
        let future = wire::Content {
            body: Some(wire::content::Body::Receipt(wire::Receipt {
                kind: 9,
                message_ids: vec![Bytes::from_static(&[1; 16])],
            })),
            sent_to: String::new(),
            padding: Bytes::new(),
        }
        .encode_to_vec();
        assert_eq!(Content::decode(&future), Ok(Content::Unknown));
    }

    #[test]
    fn unknown_body_is_unknown_not_an_error() {
        // Field 5 (a future body kind), length-delimited, 2 bytes.
        let future = [0x2a, 0x02, 0x08, 0x01];
        assert_eq!(Content::decode(&future), Ok(Content::Unknown));
        assert_eq!(Content::decode(&[]), Ok(Content::Unknown));
    }

    #[test]
    fn bad_text_is_refused() {
        let bad_media = Content::Text(Text {
            media_type: "text/plain\n".into(),
            body: "hi".into(),
            reply_to: None,
        });
        assert_eq!(
            bad_media.encode_padded(),
            Err(ContentError::InvalidField("text.media_type"))
        );
        // Invalid UTF-8 in the body (field 2 of Text inside field 1 of Content).
        let invalid_utf8 = [0x0a, 0x04, 0x12, 0x02, 0xff, 0xfe];
        assert_eq!(Content::decode(&invalid_utf8), Err(ContentError::Decode));
        let truncated = [0x0a, 0x09, 0x12];
        assert_eq!(Content::decode(&truncated), Err(ContentError::Decode));
    }

    proptest::proptest! {
        #[test]
        fn text_round_trips(
            body in "\\PC{0,200}",
            media in "[ -~]{0,40}",
            reply in proptest::option::of(proptest::array::uniform16(0u8..)),
        ) {
            let c = Content::Text(Text { media_type: media, body, reply_to: reply.map(MessageId::from_bytes) });
            let enc = c.encode_padded().unwrap();
            proptest::prop_assert_eq!(enc.len() % PADDING_BLOCK, 0);
            proptest::prop_assert_eq!(Content::decode(&enc).unwrap(), c);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Content::decode(&data);
        }
    }
}
