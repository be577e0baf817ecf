//! `kogge inspect`: an envelope's header as readable text, decoded without any key.
//!
//! Everything shown is what the envelope *claims*: the signature is not checked (that
//! needs the sender's device list) and the ciphertext is not opened (that needs the
//! recipient device's keys). Garbage is refused with the error code of SPEC.md 6.6
//! ([`OpenError`]).

use std::fmt::Write as _;

use bytes::Bytes;
use kogge::envelope::{OpenError, PayloadHeader, UnverifiedEnvelope};

use super::show;
use super::vault::{from_hex, to_hex};

/// Why the input is not an envelope.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InspectError {
    /// The text looked like hex but is not.
    #[error("the input is not valid hex")]
    Hex,
    /// The bytes are not an envelope (SPEC.md 6.6 code and detail).
    #[error("not a Kogge envelope ({code}): {source}")]
    Envelope {
        /// The error code.
        code: &'static str,
        /// The decoder's error.
        source: OpenError,
    },
}

/// Turns input bytes into envelope bytes: hex text (white space ignored) is decoded,
/// anything else is taken as binary.
pub(crate) fn input_bytes(raw: Vec<u8>) -> Result<Vec<u8>, InspectError> {
    let text_like = !raw.is_empty()
        && raw
            .iter()
            .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    if !text_like {
        return Ok(raw);
    }
    let compact: String = raw
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| char::from(*b))
        .collect();
    from_hex(&compact).ok_or(InspectError::Hex)
}

/// The readable description of an envelope.
pub(crate) fn describe(bytes: Vec<u8>) -> Result<String, InspectError> {
    let len = bytes.len();
    let env = UnverifiedEnvelope::decode(Bytes::from(bytes)).map_err(|source| {
        InspectError::Envelope {
            code: source.code(),
            source,
        }
    })?;
    let h = env.claimed_header();
    let mut s = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(s, "  {k:<20} {v}");
    };
    line("size", format!("{len} bytes"));
    line("version", h.version.to_string());
    line("sender", h.sender.to_string());
    line("sender device", h.sender_device.to_string());
    line("recipient", h.recipient.to_string());
    line("recipient device", h.recipient_device.to_string());
    line("message id", h.message_id.to_string());
    line(
        "timestamp",
        format!("{} ({} ms)", show::time(h.timestamp.0), h.timestamp.0),
    );
    line(
        "content type",
        format!("{:?}", h.content_type).to_lowercase(),
    );
    match &h.payload {
        PayloadHeader::OneShot { ephemeral_key } => {
            line("payload", "one-shot (sealed to the device key)".into());
            line("ephemeral key", to_hex(ephemeral_key).to_string());
        }
        PayloadHeader::Session(sh) => {
            line("payload", "session (Double Ratchet)".into());
            line("ratchet key", to_hex(&sh.ratchet_key).to_string());
            line("sequence", sh.sequence.to_string());
            line("message number", sh.message_number.to_string());
            line("previous chain", sh.previous_chain_length.to_string());
            match &sh.setup {
                None => line("session setup", "none (session established)".into()),
                Some(setup) => {
                    line(
                        "session setup",
                        "present (first messages of a session)".into(),
                    );
                    line("  base key", to_hex(&setup.base_key).to_string());
                    line("  signed prekey", setup.signed_prekey_id.to_string());
                    line(
                        "  one-time prekey",
                        setup
                            .one_time_prekey_id
                            .map_or_else(|| "none".into(), |i| i.to_string()),
                    );
                    line("  ML-KEM prekey", setup.kem_prekey_id.to_string());
                    line(
                        "  ML-KEM ciphertext",
                        format!("{} bytes", setup.kem_ciphertext.len()),
                    );
                }
            }
        }
        other => line("payload", format!("{other:?}")),
    }
    line("header", format!("{} bytes", env.header_bytes().len()));
    line(
        "ciphertext",
        format!("{} bytes (encrypted; not opened)", env.ciphertext().len()),
    );
    line(
        "signature",
        "present, 64 bytes Ed25519 (not verified: needs the sender's device list)".into(),
    );
    Ok(format!(
        "Kogge envelope (decoded without keys: every field is the sender's claim)\n{s}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_typed_error() {
        for input in [b"".to_vec(), b"hello world".to_vec(), vec![0xff; 40]] {
            let bytes = input_bytes(input).unwrap();
            assert!(matches!(
                describe(bytes),
                Err(InspectError::Envelope { .. })
            ));
        }
        assert!(matches!(
            input_bytes(b"abc".to_vec()),
            Err(InspectError::Hex)
        ));
    }
}
