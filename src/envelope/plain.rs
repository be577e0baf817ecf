//! A fast path for decoding `Envelope` and `EnvelopeHeader` (the hot path of every
//! provider and device: each relayed envelope is decoded at both providers and at the
//! recipient).
//!
//! prost decodes a header into a `wire::EnvelopeHeader` whose byte fields are `Bytes`
//! slices of the envelope: each is a reference-count increment and decrement, and with
//! the generic field dispatch that was about half of `UnverifiedEnvelope::decode` in a
//! profile of the relay bench (and prost's decoding of the outer `Envelope`, four
//! fields, was a third of what remained). These parsers read only the *plain* encoding:
//! every field at most once, in ascending field order, with its own wire type, strings
//! valid UTF-8, nothing unknown. They borrow the byte fields from the encoding. That is
//! the encoding prost and every reference encoder produce. Anything else (fields
//! repeated or out of order, unknown fields, truncation, bad UTF-8) makes it return
//! `None`, and the caller decodes with prost as before. So for every input the header,
//! or the error, is the one prost's decoding gives; property tests (prost's encodings,
//! damaged ones, random bytes) and the `envelope_decode` fuzz target (through
//! `header_decoders_agree`) compare the two.

use bytes::Bytes;

/// The fields of an encoded `EnvelopeHeader` (proto/kogge/v1/envelope.proto): the byte
/// fields borrowed from the encoding, the strings owned (an `Address` keeps them).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RawHeader<'a> {
    pub(super) version: u32,
    pub(super) sender: String,
    pub(super) sender_device: &'a [u8],
    pub(super) recipient: String,
    pub(super) recipient_device: &'a [u8],
    pub(super) message_id: &'a [u8],
    pub(super) timestamp_ms: u64,
    pub(super) content_type: i32,
    pub(super) payload_kind: i32,
    pub(super) ephemeral_key: &'a [u8],
    pub(super) session: &'a [u8],
}

const VARINT: u64 = 0;
const LEN: u64 = 2;

/// A varint of at most 10 bytes whose value fits in 64 bits; `None` otherwise.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        if i == 9 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The low 32 bits of a varint, as prost reads `uint32` and `int32` (enum) fields: a
/// negative `int32` is sign-extended to ten bytes on the wire.
fn low32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or_default()
}

/// A length-delimited field's contents.
fn len_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(buf)?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Some(field)
}

/// The next field's number and wire type; `None` unless its number is above `last`
/// (plain encodings have each field at most once, in ascending order), which it becomes.
fn next_key(buf: &mut &[u8], last: &mut u64) -> Option<(u64, u64)> {
    let key = varint(buf)?;
    let field = key >> 3;
    if field <= *last {
        return None;
    }
    *last = field;
    Some((field, key & 7))
}

/// The header's fields if `bytes` is a plain encoding (see the module documentation),
/// else `None`.
pub(super) fn parse(bytes: &[u8]) -> Option<RawHeader<'_>> {
    let mut h = RawHeader::default();
    let (mut buf, mut last) = (bytes, 0);
    while !buf.is_empty() {
        match next_key(&mut buf, &mut last)? {
            (1, VARINT) => h.version = low32(varint(&mut buf)?),
            (2, LEN) => h.sender = std::str::from_utf8(len_delimited(&mut buf)?).ok()?.into(),
            (3, LEN) => h.sender_device = len_delimited(&mut buf)?,
            (4, LEN) => {
                h.recipient = std::str::from_utf8(len_delimited(&mut buf)?).ok()?.into();
            }
            (5, LEN) => h.recipient_device = len_delimited(&mut buf)?,
            (6, LEN) => h.message_id = len_delimited(&mut buf)?,
            (7, VARINT) => h.timestamp_ms = varint(&mut buf)?,
            (8, VARINT) => h.content_type = low32(varint(&mut buf)?).cast_signed(),
            (9, VARINT) => h.payload_kind = low32(varint(&mut buf)?).cast_signed(),
            (10, LEN) => h.ephemeral_key = len_delimited(&mut buf)?,
            (11, LEN) => h.session = len_delimited(&mut buf)?,
            _ => return None,
        }
    }
    Some(h)
}

/// The fields of a plain-encoded `Envelope` (proto/kogge/v1/envelope.proto), borrowed
/// from the encoding.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RawEnvelope<'a> {
    pub(super) version: u32,
    pub(super) header: &'a [u8],
    pub(super) ciphertext: &'a [u8],
    pub(super) signature: &'a [u8],
}

/// The envelope's fields if `bytes` is a plain encoding, else `None`.
pub(super) fn parse_envelope(bytes: &[u8]) -> Option<RawEnvelope<'_>> {
    let mut e = RawEnvelope::default();
    let (mut buf, mut last) = (bytes, 0);
    while !buf.is_empty() {
        match next_key(&mut buf, &mut last)? {
            (1, VARINT) => e.version = low32(varint(&mut buf)?),
            (2, LEN) => e.header = len_delimited(&mut buf)?,
            (3, LEN) => e.ciphertext = len_delimited(&mut buf)?,
            (4, LEN) => e.signature = len_delimited(&mut buf)?,
            _ => return None,
        }
    }
    Some(e)
}

/// Whether [`parse_envelope`] reads from `bytes` what prost reads (when it reads
/// anything).
pub(super) fn envelope_agrees(bytes: &[u8]) -> bool {
    use prost::Message;
    let Some(r) = parse_envelope(bytes) else {
        return true;
    };
    crate::wire::Envelope::decode(bytes).is_ok_and(|w| {
        (
            w.version,
            &w.header[..],
            &w.ciphertext[..],
            &w.signature[..],
        ) == (r.version, r.header, r.ciphertext, r.signature)
    })
}

/// The fields of a plain-encoded `SessionHeader` (proto/kogge/v1/session.proto) without
/// a `setup`: the steady state of a session. A header with a setup is left to prost.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RawSession<'a> {
    pub(super) ratchet_key: &'a [u8],
    pub(super) previous_chain_length: u32,
    pub(super) message_number: u32,
    pub(super) sequence: u64,
}

/// The session header's fields if `bytes` is a plain encoding without a `setup`, else
/// `None`.
pub(super) fn parse_session(bytes: &[u8]) -> Option<RawSession<'_>> {
    let mut h = RawSession::default();
    let (mut buf, mut last) = (bytes, 0);
    while !buf.is_empty() {
        match next_key(&mut buf, &mut last)? {
            (1, LEN) => h.ratchet_key = len_delimited(&mut buf)?,
            (2, VARINT) => h.previous_chain_length = low32(varint(&mut buf)?),
            (3, VARINT) => h.message_number = low32(varint(&mut buf)?),
            (4, VARINT) => h.sequence = varint(&mut buf)?,
            _ => return None,
        }
    }
    Some(h)
}

/// Whether [`parse_session`] reads from `bytes` what prost reads (when it reads
/// anything): the same fields, and no setup.
pub(super) fn session_agrees(bytes: &[u8]) -> bool {
    use prost::Message;
    let Some(r) = parse_session(bytes) else {
        return true;
    };
    crate::wire::SessionHeader::decode(bytes).is_ok_and(|w| {
        w.setup.is_none()
            && (
                &w.ratchet_key[..],
                w.previous_chain_length,
                w.message_number,
                w.sequence,
            ) == (
                r.ratchet_key,
                r.previous_chain_length,
                r.message_number,
                r.sequence,
            )
    })
}

/// `part` as a slice of `whole` when it lies inside it (as the fields [`parse`] borrows
/// from `whole` do: no copy), else as a copy.
pub(super) fn within(whole: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    match start.checked_add(part.len()) {
        _ if part.is_empty() => Bytes::new(),
        Some(end) if end <= whole.len() => whole.slice(start..end),
        _ => Bytes::copy_from_slice(part),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::envelope::EnvelopeHeader;
    use crate::wire;

    fn fields(w: &wire::EnvelopeHeader) -> RawHeader<'_> {
        RawHeader {
            version: w.version,
            sender: w.sender.clone(),
            sender_device: &w.sender_device,
            recipient: w.recipient.clone(),
            recipient_device: &w.recipient_device,
            message_id: &w.message_id,
            timestamp_ms: w.timestamp_ms,
            content_type: w.content_type,
            payload_kind: w.payload_kind,
            ephemeral_key: &w.ephemeral_key,
            session: &w.session,
        }
    }

    /// An encoded session header: any field values, with or without a setup.
    fn session() -> impl Strategy<Value = Vec<u8>> {
        let key = || {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 32),
                proptest::collection::vec(any::<u8>(), 0..40),
            ]
        };
        let setup = (
            key(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(|(b, s, o, k, c)| wire::SessionSetup {
                base_key: b.into(),
                signed_prekey_id: s,
                one_time_prekey_id: o,
                kem_prekey_id: k,
                kem_ciphertext: c.into(),
            });
        (
            key(),
            any::<u32>(),
            any::<u32>(),
            prop_oneof![Just(1u64), any::<u64>()],
            proptest::option::weighted(0.2, setup),
        )
            .prop_map(|(r, p, m, q, setup)| {
                wire::SessionHeader {
                    ratchet_key: r.into(),
                    previous_chain_length: p,
                    message_number: m,
                    sequence: q,
                    setup,
                }
                .encode_to_vec()
            })
    }

    fn header() -> impl Strategy<Value = wire::EnvelopeHeader> {
        let bytes = || {
            prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 16),
                proptest::collection::vec(any::<u8>(), 32),
                proptest::collection::vec(any::<u8>(), 0..80),
            ]
        };
        let text = || {
            prop_oneof![
                Just(String::new()),
                "[a-z]{1,8}@[a-z]{1,8}\\.example",
                "[a-zA-Z@.]{0,12}",
                "\\PC{0,12}",
            ]
        };
        (
            (
                prop_oneof![Just(1u32), any::<u32>()],
                text(),
                bytes(),
                text(),
                bytes(),
                bytes(),
            ),
            (
                any::<u64>(),
                prop_oneof![Just(1i32), any::<i32>()],
                prop_oneof![Just(1i32), Just(2i32), any::<i32>()],
                bytes(),
                prop_oneof![bytes(), session(), session()],
            ),
        )
            .prop_map(|((v, s, sd, r, rd, id), (t, ct, pk, ek, se))| {
                wire::EnvelopeHeader {
                    version: v,
                    sender: s,
                    sender_device: sd.into(),
                    recipient: r,
                    recipient_device: rd.into(),
                    message_id: id.into(),
                    timestamp_ms: t,
                    content_type: ct,
                    payload_kind: pk,
                    ephemeral_key: ek.into(),
                    session: se.into(),
                }
            })
    }

    /// The decoder's answer for `bytes` with and without the fast path.
    fn both(bytes: &[u8]) -> (Result<EnvelopeHeader, crate::envelope::OpenError>, bool) {
        let b = Bytes::copy_from_slice(bytes);
        let slow = wire::EnvelopeHeader::decode(b.clone())
            .map_err(|_| crate::envelope::OpenError::Decode)
            .and_then(EnvelopeHeader::from_wire);
        let fast = parse(&b).map(|raw| EnvelopeHeader::from_raw(raw, &b));
        let took_fast = fast.is_some();
        let answer = fast.unwrap_or_else(|| slow.clone());
        assert_eq!(answer, slow, "fast path and prost disagree on {bytes:02x?}");
        (slow, took_fast)
    }

    proptest! {
        /// prost's encoding of any header is plain: the fast path reads exactly the fields
        /// prost reads, and the decoder's answer (header or error) is prost's.
        #[test]
        fn prost_encodings_take_the_fast_path(w in header()) {
            let bytes = w.encode_to_vec();
            let raw = parse(&bytes);
            prop_assert_eq!(raw.as_ref(), Some(&fields(&w)));
            let (_, fast) = both(&bytes);
            prop_assert!(fast);
        }

        /// Damaged, reordered, repeated or foreign encodings give prost's answer: either
        /// the fast path reads what prost reads, or it steps aside.
        #[test]
        fn any_bytes_give_prosts_answer(
            w in header(),
            cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            tail in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            let mut bytes = w.encode_to_vec();
            for (at, byte) in cuts {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
            }
            bytes.extend_from_slice(&tail);
            let _ = both(&bytes);
            // The same fields twice: prost keeps the last; the fast path steps aside.
            let mut twice = w.encode_to_vec();
            twice.extend_from_slice(&w.encode_to_vec());
            prop_assert!(parse(&twice).is_none() || w.encode_to_vec().is_empty());
            let _ = both(&twice);
        }

        /// The session fast path reads what prost reads, from prost's encodings (all of
        /// them without a setup) and from damaged ones.
        #[test]
        fn session_fast_path_reads_what_prost_reads(
            enc in session(),
            cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        ) {
            let has_setup = wire::SessionHeader::decode(&enc[..]).unwrap().setup.is_some();
            prop_assert_eq!(parse_session(&enc).is_some(), !has_setup);
            prop_assert!(session_agrees(&enc));
            let mut damaged = enc;
            for (at, byte) in cuts {
                if !damaged.is_empty() {
                    let i = at.index(damaged.len());
                    damaged[i] = byte;
                }
            }
            prop_assert!(session_agrees(&damaged));
        }

        #[test]
        fn random_bytes_give_prosts_answer(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = both(&bytes);
            prop_assert!(session_agrees(&bytes));
            prop_assert!(envelope_agrees(&bytes));
        }

        /// prost's encoding of any envelope takes the envelope fast path, which reads the
        /// fields prost reads; damaged, repeated and extended encodings either read the
        /// same or step aside, and a whole envelope decodes the same either way.
        #[test]
        fn envelope_fast_path_reads_what_prost_reads(
            w in envelope(),
            cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let enc = w.encode_to_vec();
            let raw = parse_envelope(&enc);
            prop_assert_eq!(
                raw,
                Some(RawEnvelope {
                    version: w.version,
                    header: &w.header,
                    ciphertext: &w.ciphertext,
                    signature: &w.signature,
                })
            );
            let mut twice = enc.clone();
            twice.extend_from_slice(&enc);
            prop_assert!(parse_envelope(&twice).is_none() || enc.is_empty());
            prop_assert!(envelope_agrees(&twice));
            let mut damaged = enc;
            for (at, byte) in cuts {
                if !damaged.is_empty() {
                    let i = at.index(damaged.len());
                    damaged[i] = byte;
                }
            }
            damaged.extend_from_slice(&tail);
            prop_assert!(envelope_agrees(&damaged));
        }
    }

    /// An encoded envelope: any version, a header (usually a real one) and byte fields of
    /// any length, the valid ones included.
    fn envelope() -> impl Strategy<Value = wire::Envelope> {
        let bytes = |n: usize| {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), n),
                proptest::collection::vec(any::<u8>(), 0..80),
            ]
        };
        (
            prop_oneof![Just(1u32), any::<u32>()],
            prop_oneof![header().prop_map(|h| h.encode_to_vec()), bytes(0)],
            bytes(300),
            bytes(64),
        )
            .prop_map(|(version, h, c, sig)| wire::Envelope {
                version,
                header: h.into(),
                ciphertext: c.into(),
                signature: sig.into(),
            })
    }

    /// Out-of-order and unknown fields in an envelope are left to prost, and
    /// `UnverifiedEnvelope::decode` gives the same answer for them as for the plain
    /// encoding.
    #[test]
    fn unusual_envelopes_step_aside_and_decode_the_same() {
        let header = wire::EnvelopeHeader {
            version: 1,
            sender: "a@one.example".into(),
            sender_device: vec![1; 16].into(),
            recipient: "b@two.example".into(),
            recipient_device: vec![2; 16].into(),
            message_id: vec![3; 16].into(),
            timestamp_ms: 5,
            content_type: 1,
            payload_kind: 1,
            ephemeral_key: vec![4; 32].into(),
            session: Bytes::new(),
        };
        let w = wire::Envelope {
            version: 1,
            header: header.encode_to_vec().into(),
            ciphertext: vec![5; 40].into(),
            signature: vec![6; 64].into(),
        };
        let plain = w.encode_to_vec();
        assert!(parse_envelope(&plain).is_some());
        let expected = crate::envelope::UnverifiedEnvelope::decode(plain.clone().into()).unwrap();
        // The signature (4) first, then the rest; and the plain encoding with an unknown
        // field (9) after it.
        let sig_len = 2 + 64;
        let mut reordered = plain[plain.len() - sig_len..].to_vec();
        reordered.extend_from_slice(&plain[..plain.len() - sig_len]);
        let mut unknown = plain.clone();
        unknown.extend_from_slice(&[9 << 3, 7]);
        for odd in [reordered, unknown] {
            assert!(parse_envelope(&odd).is_none());
            assert!(envelope_agrees(&odd));
            let got = crate::envelope::UnverifiedEnvelope::decode(odd.into()).unwrap();
            assert_eq!(got.claimed_header(), expected.claimed_header());
            assert_eq!(got.header_bytes(), expected.header_bytes());
            assert_eq!(got.ciphertext(), expected.ciphertext());
        }
    }

    /// prost's encoding of a session header without a setup takes the fast path; one with
    /// a setup, or out of order, is left to prost.
    #[test]
    fn session_headers_take_the_fast_path_without_a_setup() {
        let mut s = wire::SessionHeader {
            ratchet_key: vec![7; 32].into(),
            previous_chain_length: 3,
            message_number: 9,
            sequence: 12,
            setup: None,
        };
        let encoded = s.encode_to_vec();
        let raw = parse_session(&encoded).unwrap();
        assert_eq!(
            (
                raw.ratchet_key,
                raw.previous_chain_length,
                raw.message_number,
                raw.sequence
            ),
            (&[7u8; 32][..], 3, 9, 12)
        );
        s.setup = Some(wire::SessionSetup::default());
        assert!(parse_session(&s.encode_to_vec()).is_none());
        assert!(parse_session(&[4 << 3, 1, 1 << 3 | 2, 0]).is_none());
    }

    /// Hand-made encodings the fast path must leave to prost.
    #[test]
    fn unusual_encodings_step_aside() {
        let w = wire::EnvelopeHeader {
            version: 1,
            sender: "a@one.example".into(),
            timestamp_ms: 5,
            ..Default::default()
        };
        let plain = w.encode_to_vec();
        assert!(parse(&plain).is_some());
        // Fields out of order: timestamp (7) before version (1).
        let mut reordered = vec![7 << 3, 5];
        reordered.extend_from_slice(&[1 << 3, 1]);
        assert!(parse(&reordered).is_none());
        // An unknown field (12, varint).
        let mut unknown = plain.clone();
        unknown.extend_from_slice(&[12 << 3, 1]);
        assert!(parse(&unknown).is_none());
        // A known field with the wrong wire type (version as LEN).
        assert!(parse(&[(1 << 3) | 2, 0]).is_none());
        // A uint32 beyond 32 bits: prost keeps the low 32 bits, and so does the fast path.
        let mut wide = vec![1 << 3];
        wide.extend_from_slice(&[0x81, 0x80, 0x80, 0x80, 0x10]);
        assert_eq!(parse(&wide).map(|h| h.version), Some(1));
        // A ten-byte varint holds u64::MAX at most: one more bit overflows. Then a length
        // past the end, and invalid UTF-8.
        let timestamp = |tenth: u8| {
            let mut v = vec![7 << 3];
            v.extend_from_slice(&[0xff; 9]);
            v.push(tenth);
            v
        };
        assert_eq!(
            parse(&timestamp(0x01)).map(|h| h.timestamp_ms),
            Some(u64::MAX)
        );
        assert!(parse(&timestamp(0x02)).is_none());
        assert!(parse(&[(2 << 3) | 2, 5, b'a']).is_none());
        assert!(parse(&[(2 << 3) | 2, 1, 0xff]).is_none());
        for bytes in [reordered, unknown] {
            assert!(!both(&bytes).1);
        }
        assert!(both(&wide).1);
    }
}
