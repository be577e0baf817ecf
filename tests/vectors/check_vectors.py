#!/usr/bin/env python3
"""Independent checker for the Kogge test vectors (SPEC.md section 12).

Written from SPEC.md alone: it recomputes every value in tests/vectors/*.json with
Python's `cryptography` package (X25519, HKDF, ChaCha20-Poly1305, Ed25519 signing), its
own Ed25519 point arithmetic (for the cofactored verification and the key checks of
SPEC.md 2.1), `kyber-py` (ML-KEM-768, FIPS 203) and a small hand-written protobuf codec;
runs the opening checks of SPEC.md 6.6 on the negative vectors, the address grammar of
SPEC.md 3 on the address vectors, the whole session layer of SPEC.md 15 (prekeys,
bundles, setup, Double Ratchet, receiving) on the session vectors, and SPEC.md 16 on the
protocol vectors (handshake transcripts and signatures, the frame codec and the structural
rules of 16.2). It never calls the Rust code.

    pip install cryptography "kyber-py==1.2.0"
    python3 tests/vectors/check_vectors.py

Prints `vectors: N passed, M failed` and exits non-zero if anything failed.
"""

import copy
import hashlib
import hmac
import json
import os
import re
import sys
import traceback

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

try:
    from kyber_py.ml_kem import ML_KEM_768
except ImportError:  # pragma: no cover - a setup problem, reported plainly
    sys.exit("check_vectors.py needs ML-KEM-768: pip install kyber-py")

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------------
# SPEC.md 9: limits
# ---------------------------------------------------------------------------------------
PROTOCOL_VERSION = 1
MAX_ENVELOPE_LEN = 100 * 1024
MAX_HEADER_LEN = 2048
MAX_PLAINTEXT_LEN = 96 * 1024
AEAD_TAG_LEN = 16
MAX_CIPHERTEXT_LEN = MAX_PLAINTEXT_LEN + AEAD_TAG_LEN
PADDING_BLOCK = 64
MAX_CERTIFICATE_LEN = 1024
MAX_MEDIA_TYPE_LEN = 127
MAX_RECEIPT_IDS = 1024
MAX_LOCAL_PART_LEN = 64
MAX_DOMAIN_LEN = 253
MAX_DOMAIN_LABEL_LEN = 63
MAX_ADDRESS_LEN = MAX_LOCAL_PART_LEN + 1 + MAX_DOMAIN_LEN
MAX_SCANNABLE_FINGERPRINT_LEN = 128
FINGERPRINT_ITERATIONS = 5200
DEFAULT_MAX_MESSAGE_AGE_MS = 35 * 24 * 60 * 60 * 1000
DEFAULT_MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
DEFAULT_REPLAY_CAPACITY = 10_000
BATCH_VERIFY_CHUNK = 64
# Sessions and device lists (SPEC.md 9, second table; SPEC.md 15)
MAX_DEVICES_PER_USER = 16
MAX_DEVICE_LIST_LEN = MAX_DEVICES_PER_USER * MAX_CERTIFICATE_LEN + 1024
MAX_PREKEY_BUNDLE_LEN = 4096
MAX_SIGNED_PREKEY_LEN = 1536
MAX_SKIP_PER_CHAIN = 1000
MAX_SKIPPED_KEYS = 2000
SKIPPED_KEY_MAX_AGE_MS = 30 * 24 * 60 * 60 * 1000
MAX_SESSIONS_PER_PEER_DEVICE = 4
MAX_ONE_TIME_PREKEYS = 200
ONE_TIME_PREKEY_LOW_WATERMARK = 20
MAX_BASE_KEYS_PER_SIGNED_PREKEY = 100_000
SIGNED_PREKEY_GRACE_MS = 30 * 24 * 60 * 60 * 1000
MAX_STATE_LEN = 64 * 1024 * 1024
KEM_PUBLIC_KEY_LEN = 1184
KEM_CIPHERTEXT_LEN = 1088
# The client-provider protocol (SPEC.md 9, third table; SPEC.md 16.2, 16.10)
MAX_FRAME_LEN = 4 * 1024 * 1024
MAX_SUBMIT_ENVELOPES = 2 * MAX_DEVICES_PER_USER
MAX_RELAY_ENVELOPES = 256
MAX_DELIVER_ITEMS = 64
MAX_ACK_SEQS = 1024
MAX_PUBLISH_ONE_TIME = MAX_ONE_TIME_PREKEYS
MAX_FETCH_DEVICES = MAX_DEVICES_PER_USER
AUTH_NONCE_LEN = 32
MAX_BINDING_LEN = 64
MAX_ERROR_MESSAGE_LEN = 256
MAX_ERROR_CODE_LEN = 32
# SPEC.md 18
MAX_GROUP_MEMBERS = 1000
MAX_GROUP_CHANGE_MEMBERS = 100
MAX_GROUP_CHANGE_LEN = 48 * 1024
MAX_GROUP_TITLE_LEN = 256
MAX_GROUP_SNAPSHOT_LEN = 384 * 1024
MAX_GROUP_SENDER_KEY_LEN = 512
MAX_GROUP_SKIP = 1000
MAX_GROUP_SKIPPED_KEYS = 5000
MAX_GROUP_CHAINS_PER_DEVICE = 4
# SPEC.md 20
MAX_GROUP_RECIPIENTS = MAX_GROUP_MEMBERS + MAX_GROUP_CHANGE_MEMBERS
MAX_SEQUENCER_GROUPS = 100_000
MAX_PENDING_GROUP_ITEMS = 1000
LIMIT_NAMES = ["PROTOCOL_VERSION", "MAX_ENVELOPE_LEN", "MAX_HEADER_LEN", "MAX_PLAINTEXT_LEN",
               "AEAD_TAG_LEN", "MAX_CIPHERTEXT_LEN", "PADDING_BLOCK", "MAX_CERTIFICATE_LEN",
               "MAX_MEDIA_TYPE_LEN", "MAX_RECEIPT_IDS", "MAX_LOCAL_PART_LEN", "MAX_DOMAIN_LEN",
               "MAX_DOMAIN_LABEL_LEN", "MAX_ADDRESS_LEN", "MAX_SCANNABLE_FINGERPRINT_LEN",
               "FINGERPRINT_ITERATIONS", "DEFAULT_MAX_MESSAGE_AGE_MS", "DEFAULT_MAX_CLOCK_SKEW_MS",
               "DEFAULT_REPLAY_CAPACITY", "BATCH_VERIFY_CHUNK", "MAX_DEVICES_PER_USER",
               "MAX_DEVICE_LIST_LEN", "MAX_PREKEY_BUNDLE_LEN", "MAX_SIGNED_PREKEY_LEN",
               "MAX_SKIP_PER_CHAIN", "MAX_SKIPPED_KEYS", "SKIPPED_KEY_MAX_AGE_MS",
               "MAX_SESSIONS_PER_PEER_DEVICE", "MAX_ONE_TIME_PREKEYS",
               "ONE_TIME_PREKEY_LOW_WATERMARK", "MAX_BASE_KEYS_PER_SIGNED_PREKEY",
               "SIGNED_PREKEY_GRACE_MS", "MAX_STATE_LEN", "KEM_PUBLIC_KEY_LEN",
               "KEM_CIPHERTEXT_LEN", "MAX_FRAME_LEN", "MAX_SUBMIT_ENVELOPES",
               "MAX_RELAY_ENVELOPES", "MAX_DELIVER_ITEMS", "MAX_ACK_SEQS", "MAX_PUBLISH_ONE_TIME",
               "MAX_FETCH_DEVICES", "AUTH_NONCE_LEN", "MAX_BINDING_LEN", "MAX_ERROR_MESSAGE_LEN",
               "MAX_ERROR_CODE_LEN", "MAX_GROUP_MEMBERS", "MAX_GROUP_CHANGE_MEMBERS",
               "MAX_GROUP_CHANGE_LEN", "MAX_GROUP_TITLE_LEN", "MAX_GROUP_SNAPSHOT_LEN",
               "MAX_GROUP_SENDER_KEY_LEN", "MAX_GROUP_SKIP", "MAX_GROUP_SKIPPED_KEYS",
               "MAX_GROUP_CHAINS_PER_DEVICE", "MAX_GROUP_RECIPIENTS", "MAX_SEQUENCER_GROUPS",
               "MAX_PENDING_GROUP_ITEMS"]

# SPEC.md 2.3: labels
LABELS = {
    "EnvelopeSignature": b"kogge/v1/sig/envelope",
    "EnvelopeAad": b"kogge/v1/aad/envelope",
    "OneShotSealKdf": b"kogge/v1/kdf/one-shot-seal",
    "DeviceCertIdentitySignature": b"kogge/v1/sig/device-cert/identity",
    "DeviceCertDeviceSignature": b"kogge/v1/sig/device-cert/device",
    "DeviceId": b"kogge/v1/hash/device-id",
    "Fingerprint": b"kogge/v1/hash/fingerprint",
    "DeviceList": b"kogge/v1/sig/device-list",
    "PrekeySignature": b"kogge/v1/sig/prekey",
    "SessionSetup": b"kogge/v1/kdf/session-setup",
    "RatchetRoot": b"kogge/v1/kdf/ratchet-root",
    "RatchetMessageKeys": b"kogge/v1/kdf/ratchet-message",
    "StateEncryption": b"kogge/v1/aad/state",
    "ChallengeSignature": b"kogge/v1/sig/challenge",
    "AuthSignature": b"kogge/v1/sig/auth",
    "GroupId": b"kogge/v1/hash/group-id",
    "GroupChangeSignature": b"kogge/v1/sig/group-change",
    "GroupChangeHash": b"kogge/v1/hash/group-change",
    "GroupSequence": b"kogge/v1/sig/group-sequence",
    "GroupState": b"kogge/v1/hash/group-state",
    "GroupMessageKeys": b"kogge/v1/kdf/group-message",
    "GroupEnvelopeSignature": b"kogge/v1/sig/group-envelope",
    "GroupEnvelopeAad": b"kogge/v1/aad/group-envelope",
}


def framed(label, *parts):
    """SPEC.md 2.2: u32be(len) || bytes, for the label and then each part."""
    out = bytearray()
    for x in (label,) + parts:
        out += len(x).to_bytes(4, "big") + x
    return bytes(out)


def sha256(b):
    return hashlib.sha256(b).digest()


# ---------------------------------------------------------------------------------------
# Minimal protobuf codec (SPEC.md 6.3 for the encoder; standard proto3 decoding rules)
# ---------------------------------------------------------------------------------------
class DecodeError(Exception):
    pass


def enc_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def enc_uint(field, v):
    """A varint field; omitted when zero (proto3 default)."""
    return b"" if v == 0 else enc_varint(field << 3 | 0) + enc_varint(v)


def enc_bytes(field, b):
    """A length-delimited field; omitted when empty (proto3 default)."""
    return b"" if len(b) == 0 else enc_varint(field << 3 | 2) + enc_varint(len(b)) + b


def enc_bytes_always(field, b):
    """A repeated bytes element or a set oneof member: present even when empty."""
    return enc_varint(field << 3 | 2) + enc_varint(len(b)) + b


def dec_varint(buf, i):
    v = 0
    for n in range(10):
        if i >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[i]
        i += 1
        if n == 9 and b > 1:
            raise DecodeError("varint overflows 64 bits")
        v |= (b & 0x7F) << (7 * n)
        if b < 0x80:
            return v, i
    raise DecodeError("varint longer than 10 bytes")


def skip_field(buf, i, wt, field, depth=0):
    if depth > 100:
        raise DecodeError("groups nested too deeply")
    if wt == 0:
        _, i = dec_varint(buf, i)
    elif wt == 1:
        i += 8
    elif wt == 5:
        i += 4
    elif wt == 2:
        n, i = dec_varint(buf, i)
        i += n
    elif wt == 3:  # a group: skip up to the matching end-group key
        while True:
            key, i = dec_varint(buf, i)
            if key > 0xFFFFFFFF:
                raise DecodeError("invalid key")
            f, w = key >> 3, key & 7
            if f == 0:
                raise DecodeError("field number 0")
            if w == 4:
                if f != field:
                    raise DecodeError("unexpected end group")
                break
            i = skip_field(buf, i, w, f, depth + 1)
    else:  # 4 (end group without start), 6, 7
        raise DecodeError("invalid wire type %d" % wt)
    if i > len(buf):
        raise DecodeError("truncated field")
    return i


# Schema: field number -> (name, kind[, extra[, type]]). Kinds: uint32, uint64, int32
# (enums), enum (extra = its name in ENUMS), bool, bytes, string, rbytes (repeated bytes),
# rstring (repeated string), ruint64 (repeated uint64, packed or not), message (a oneof member; extra = the oneof
# group; the member's type is the fourth element, or else its name capitalised), obytes (a
# bytes member of a oneof; extra = the group), submsg (an embedded message outside any
# oneof; extra = its type) and rmsg (a repeated message; extra = its type).
SCHEMAS = {
    "Envelope": {1: ("version", "uint32"), 2: ("header", "bytes"), 3: ("ciphertext", "bytes"),
                 4: ("signature", "bytes")},
    "EnvelopeHeader": {1: ("version", "uint32"), 2: ("sender", "string"),
                       3: ("sender_device", "bytes"), 4: ("recipient", "string"),
                       5: ("recipient_device", "bytes"), 6: ("message_id", "bytes"),
                       7: ("timestamp_ms", "uint64"), 8: ("content_type", "int32"),
                       9: ("payload_kind", "int32"), 10: ("ephemeral_key", "bytes"),
                       11: ("session", "bytes")},
    "DeviceCertificate": {1: ("body", "bytes"), 2: ("identity_signature", "bytes"),
                          3: ("device_signature", "bytes")},
    "DeviceCertificateBody": {1: ("version", "uint32"), 2: ("address", "string"),
                              3: ("identity_key", "bytes"), 4: ("device_id", "bytes"),
                              5: ("device_signing_key", "bytes"),
                              6: ("device_agreement_key", "bytes"),
                              7: ("not_before_ms", "uint64"), 8: ("not_after_ms", "uint64")},
    "ScannableFingerprint": {1: ("version", "uint32"), 2: ("own", "bytes"), 3: ("peer", "bytes")},
    "Content": {1: ("text", "message", "body"), 2: ("receipt", "message", "body"),
                3: ("group_sender_key", "message", "body", "GroupSenderKey"),
                4: ("group_sync", "message", "body", "GroupSync"),
                15: ("padding", "bytes")},
    "GroupSync": {1: ("snapshot", "bytes"), 2: ("rekey_epoch", "uint64")},
    "Text": {1: ("media_type", "string"), 2: ("body", "string"), 3: ("reply_to", "bytes")},
    "Receipt": {1: ("kind", "int32"), 2: ("message_ids", "rbytes")},
    # proto/kogge/v1/session.proto (SPEC.md 15)
    "SignedPrekey": {1: ("body", "bytes"), 2: ("signature", "bytes")},
    "PrekeyBody": {1: ("version", "uint32"), 2: ("device_id", "bytes"), 3: ("id", "uint32"),
                   4: ("kind", "int32"), 5: ("one_time", "bool"), 6: ("public_key", "bytes"),
                   7: ("created_ms", "uint64")},
    "PrekeyBundle": {1: ("device_certificate", "bytes"),
                     2: ("signed_prekey", "submsg", "SignedPrekey"),
                     3: ("kem_prekey", "submsg", "SignedPrekey"),
                     4: ("one_time_prekey", "submsg", "SignedPrekey")},
    "SessionSetup": {1: ("base_key", "bytes"), 2: ("signed_prekey_id", "uint32"),
                     3: ("one_time_prekey_id", "uint32"), 4: ("kem_prekey_id", "uint32"),
                     5: ("kem_ciphertext", "bytes")},
    "SessionHeader": {1: ("ratchet_key", "bytes"), 2: ("previous_chain_length", "uint32"),
                      3: ("message_number", "uint32"), 4: ("sequence", "uint64"),
                      5: ("setup", "submsg", "SessionSetup")},
    # DeviceList in proto/kogge/v1/identity.proto (SPEC.md 15.6)
    "DeviceList": {1: ("body", "bytes"), 2: ("signature", "bytes")},
    "DeviceListBody": {1: ("version", "uint32"), 2: ("address", "string"),
                       3: ("identity_key", "bytes"), 4: ("serial", "uint64"),
                       5: ("issued_ms", "uint64"), 6: ("devices", "rbytes")},
    # proto/kogge/v1/protocol.proto (SPEC.md 16)
    "Frame": {1: ("hello", "message", "body", "Hello"),
              2: ("challenge", "message", "body", "Challenge"),
              3: ("auth", "message", "body", "Auth"),
              4: ("welcome", "message", "body", "Welcome"),
              5: ("request", "message", "body", "Request"),
              6: ("response", "message", "body", "Response"),
              7: ("deliver", "message", "body", "Deliver"),
              8: ("deliver_ack", "message", "body", "DeliverAck"),
              9: ("goodbye", "message", "body", "Goodbye")},
    "Hello": {1: ("version", "uint32"), 2: ("nonce", "bytes"), 3: ("role", "enum", "Role"),
              4: ("acceptor", "string")},
    "Challenge": {1: ("nonce", "bytes"), 2: ("domain", "string"), 3: ("provider_key", "bytes"),
                  4: ("signature", "bytes")},
    "Auth": {1: ("device", "message", "who", "DeviceAuth"),
             2: ("provider", "message", "who", "ProviderAuth"), 3: ("signature", "bytes")},
    "DeviceAuth": {1: ("certificate", "bytes"), 2: ("device_list", "bytes")},
    "ProviderAuth": {1: ("domain", "string")},
    "Welcome": {1: ("time_ms", "uint64")},
    "Goodbye": {1: ("error", "submsg", "Error")},
    "Request": {1: ("id", "uint64"),
                2: ("publish_device_list", "message", "body", "PublishDeviceList"),
                3: ("publish_prekeys", "message", "body", "PublishPrekeys"),
                4: ("fetch_bundles", "message", "body", "FetchBundles"),
                5: ("submit", "message", "body", "Submit"),
                6: ("relay", "message", "body", "Relay"),
                7: ("fetch_device_list", "message", "body", "FetchDeviceList"),
                8: ("submit_group", "message", "body", "SubmitGroup"),
                9: ("order_group_change", "message", "body", "OrderGroupChange")},
    "Response": {1: ("id", "uint64"), 2: ("error", "message", "body", "Error"),
                 3: ("done", "message", "body", "Done"),
                 4: ("bundles", "message", "body", "Bundles"),
                 5: ("relay_result", "message", "body", "RelayResult"),
                 6: ("device_list", "message", "body", "DeviceListResponse"),
                 7: ("group_change", "message", "body", "GroupChangeOrdered")},
    "Error": {1: ("code", "string"), 2: ("message", "string"), 3: ("retryable", "bool"),
              4: ("retry_after_ms", "uint64")},
    "Done": {},
    "PublishDeviceList": {1: ("device_list", "bytes")},
    "PublishPrekeys": {1: ("signed_prekey", "bytes"), 2: ("kem_prekey", "bytes"),
                       3: ("one_time", "rbytes")},
    "FetchBundles": {1: ("address", "string"), 2: ("devices", "rbytes"),
                     3: ("requester", "string")},
    "FetchDeviceList": {1: ("address", "string"), 2: ("requester", "string")},
    "Bundles": {1: ("device_list", "bytes"), 2: ("bundles", "rbytes")},
    "DeviceListResponse": {1: ("device_list", "bytes")},
    "Submit": {1: ("envelopes", "rbytes")},
    "Relay": {1: ("envelopes", "rbytes"), 2: ("groups", "rmsg", "GroupRelay")},
    "RelayResult": {1: ("results", "rmsg", "Error")},
    "Deliver": {1: ("items", "rmsg", "MailboxItem")},
    "MailboxItem": {1: ("seq", "uint64"), 2: ("envelope", "obytes", "item"),
                    3: ("notice", "message", "item", "Notice"),
                    4: ("group", "message", "item", "GroupItem")},
    "Notice": {1: ("undeliverable", "message", "body", "Undeliverable"),
               2: ("prekeys_low", "message", "body", "PrekeysLow")},
    "Undeliverable": {1: ("message_id", "bytes"), 2: ("recipient", "string"),
                      3: ("device", "bytes"), 4: ("reason", "submsg", "Error")},
    "PrekeysLow": {1: ("remaining", "uint32")},
    "DeliverAck": {1: ("seqs", "ruint64")},
    # SPEC.md 20
    "SubmitGroup": {1: ("envelope", "bytes"), 2: ("recipients", "rstring")},
    "OrderGroupChange": {1: ("change", "bytes"), 2: ("sequencer", "string"),
                         3: ("requester", "string")},
    "GroupChangeOrdered": {1: ("change", "bytes")},
    "GroupRelay": {1: ("item", "submsg", "GroupItem"), 2: ("recipients", "rstring")},
    "GroupItem": {1: ("envelope", "obytes", "body"), 2: ("change", "obytes", "body"),
                  3: ("snapshot", "bytes")},
    # proto/kogge/v1/group.proto (SPEC.md 18)
    "GroupChange": {1: ("body", "bytes"), 2: ("signature", "bytes"),
                    3: ("sequencer_signature", "bytes")},
    "GroupChangeBody": {1: ("version", "uint32"), 2: ("group_id", "bytes"), 3: ("epoch", "uint64"),
                        4: ("parent", "bytes"), 5: ("author", "string"),
                        6: ("author_device", "bytes"), 7: ("issued_ms", "uint64"),
                        8: ("state_hash", "bytes"),
                        10: ("create", "message", "action", "GroupCreate"),
                        11: ("add", "message", "action", "GroupAdd"),
                        12: ("remove", "message", "action", "GroupRemove"),
                        13: ("leave", "message", "action", "GroupLeave"),
                        14: ("set_role", "message", "action", "GroupSetRole"),
                        15: ("set_title", "message", "action", "GroupSetTitle")},
    "GroupMember": {1: ("address", "string"), 2: ("identity_key", "bytes"), 3: ("role", "int32")},
    "GroupCreate": {1: ("nonce", "bytes"), 2: ("title", "string"), 3: ("sequencer", "string"),
                    4: ("sequencer_key", "bytes"), 5: ("members", "rmsg", "GroupMember")},
    "GroupAdd": {1: ("members", "rmsg", "GroupMember")},
    "GroupRemove": {1: ("members", "rstring")},
    "GroupLeave": {},
    "GroupSetRole": {1: ("member", "string"), 2: ("role", "int32")},
    "GroupSetTitle": {1: ("title", "string")},
    # SPEC.md 19
    "GroupSenderKey": {1: ("version", "uint32"), 2: ("group_id", "bytes"), 3: ("sender", "string"),
                       4: ("sender_device", "bytes"), 5: ("chain_id", "uint32"),
                       6: ("epoch", "uint64"), 7: ("iteration", "uint32"),
                       8: ("chain_key", "bytes")},
    "GroupEnvelope": {1: ("version", "uint32"), 2: ("header", "bytes"), 3: ("ciphertext", "bytes"),
                      4: ("signature", "bytes")},
    "GroupEnvelopeHeader": {1: ("version", "uint32"), 2: ("sender", "string"),
                            3: ("sender_device", "bytes"), 4: ("group_id", "bytes"),
                            5: ("epoch", "uint64"), 6: ("state_hash", "bytes"),
                            7: ("chain_id", "uint32"), 8: ("iteration", "uint32"),
                            9: ("message_id", "bytes"), 10: ("timestamp_ms", "uint64"),
                            11: ("content_type", "int32")},
    "GroupSnapshot": {1: ("version", "uint32"), 2: ("group_id", "bytes"), 3: ("epoch", "uint64"),
                      4: ("head", "bytes"), 5: ("title", "string"), 6: ("sequencer", "string"),
                      7: ("sequencer_key", "bytes"), 8: ("members", "rmsg", "GroupMember")},
}
ENUMS = {"Role": {0: "ROLE_UNSPECIFIED", 1: "ROLE_DEVICE", 2: "ROLE_PROVIDER"}}
DEFAULTS = {"uint32": 0, "uint64": 0, "int32": 0, "enum": 0, "bool": False, "bytes": b"",
            "string": "", "rbytes": None}


def member_type(spec):
    """The message type of a oneof member."""
    return spec[3] if len(spec) > 3 else spec[0].capitalize()


def decode(name, buf):
    """Decodes `buf` as message `name`. Unknown fields are skipped; a known field with the
    wrong wire type, a truncated field or invalid UTF-8 is a DecodeError. Scalars: the last
    occurrence wins. Message fields: occurrences merge (their bytes are concatenated);
    a oneof keeps the last member seen. Returns a dict; message fields hold their decoded
    dict or are absent, and `_oneof_<group>` names the set oneof member."""
    schema = SCHEMAS[name]
    out = {}
    for f, spec in schema.items():
        if spec[1] in ("rbytes", "rstring", "ruint64", "rmsg"):
            out[spec[0]] = []
        elif spec[1] not in ("message", "submsg", "obytes"):
            out[spec[0]] = DEFAULTS[spec[1]]
    i = 0
    buf = bytes(buf)
    while i < len(buf):
        key, i = dec_varint(buf, i)
        if key > 0xFFFFFFFF:
            raise DecodeError("invalid key")
        field, wt = key >> 3, key & 7
        if field == 0:
            raise DecodeError("field number 0")
        if field not in schema:
            i = skip_field(buf, i, wt, field)
            continue
        fname, kind = schema[field][0], schema[field][1]
        if kind == "ruint64" and wt == 0:  # one unpacked element
            v, i = dec_varint(buf, i)
            out[fname].append(v)
            continue
        if kind in ("uint32", "uint64", "int32", "enum", "bool"):
            if wt != 0:
                raise DecodeError("wrong wire type for %s" % fname)
            v, i = dec_varint(buf, i)
            if kind == "uint32":
                v &= 0xFFFFFFFF
            elif kind in ("int32", "enum"):
                v &= 0xFFFFFFFF
                v = v - (1 << 32) if v >= 1 << 31 else v
            elif kind == "bool":
                v = v != 0
            out[fname] = v
            continue
        if wt != 2:
            raise DecodeError("wrong wire type for %s" % fname)
        n, i = dec_varint(buf, i)
        if i + n > len(buf):
            raise DecodeError("truncated length-delimited field %s" % fname)
        val = buf[i:i + n]
        i += n
        if kind == "bytes":
            out[fname] = val
        elif kind == "rbytes":
            out[fname].append(val)
        elif kind in ("string", "rstring"):
            try:
                text = val.decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError("invalid UTF-8 in %s" % fname)
            if kind == "string":
                out[fname] = text
            else:
                out[fname].append(text)
        elif kind == "ruint64":  # packed elements
            j = 0
            while j < len(val):
                v, j = dec_varint(val, j)
                out[fname].append(v)
        elif kind == "rmsg":
            out[fname].append(val)  # each occurrence is one element
        elif kind == "submsg":
            out[fname] = out.get(fname, b"") + val  # occurrences merge
        elif kind in ("message", "obytes"):
            group = schema[field][2]
            if out.get("_oneof_" + group) == fname:
                # same member again: a message merges, bytes are replaced
                out[fname] = out[fname] + val if kind == "message" else val
            else:
                for other in schema.values():
                    if other[1] in ("message", "obytes") and other[2] == group:
                        out.pop(other[0], None)
                out[fname] = val
                out["_oneof_" + group] = fname
    # Decode nested messages (after merging) so that their errors surface too.
    for f, spec in schema.items():
        if spec[1] == "message" and spec[0] in out:
            out[spec[0]] = decode(member_type(spec), out[spec[0]])
        elif spec[1] == "submsg" and spec[0] in out:
            out[spec[0]] = decode(spec[2], out[spec[0]])
        elif spec[1] == "rmsg":
            out[spec[0]] = [decode(spec[2], v) for v in out[spec[0]]]
    return out


def to_json(name, d):
    """A decoded message in the decoded form of protocol.json: bytes as hex, uint64 as
    decimal strings, enums by name, every field outside a oneof present (an absent
    message as None), of a oneof only the member set."""
    out = {}
    for f, spec in sorted(SCHEMAS[name].items()):
        fname, kind = spec[0], spec[1]
        if kind in ("uint32", "int32", "bool", "string"):
            out[fname] = d[fname]
        elif kind == "uint64":
            out[fname] = str(d[fname])
        elif kind == "enum":
            out[fname] = ENUMS[spec[2]].get(d[fname], d[fname])
        elif kind == "bytes":
            out[fname] = d[fname].hex()
        elif kind == "rbytes":
            out[fname] = [v.hex() for v in d[fname]]
        elif kind == "rstring":
            out[fname] = list(d[fname])
        elif kind == "ruint64":
            out[fname] = [str(v) for v in d[fname]]
        elif kind == "rmsg":
            out[fname] = [to_json(spec[2], v) for v in d[fname]]
        elif kind == "submsg":
            out[fname] = to_json(spec[2], d[fname]) if fname in d else None
        elif kind == "message" and fname in d:
            out[fname] = to_json(member_type(spec), d[fname])
        elif kind == "obytes" and fname in d:
            out[fname] = d[fname].hex()
    return out


def encode_json(name, j):
    """The reference encoding (SPEC.md 6.3) of a message given in the decoded form of
    protocol.json; a repeated uint64 is packed (the proto3 default)."""
    out = bytearray()
    keys = set(j)
    for f, spec in sorted(SCHEMAS[name].items()):
        fname, kind = spec[0], spec[1]
        if kind in ("message", "obytes") and fname not in j:
            continue
        keys.remove(fname)
        v = j[fname]
        if kind in ("uint32", "uint64"):
            out += enc_uint(f, int(v))
        elif kind == "bool":
            out += enc_uint(f, 1 if v else 0)
        elif kind == "enum":
            out += enc_uint(f, v if isinstance(v, int) else
                            {n: k for k, n in ENUMS[spec[2]].items()}[v])
        elif kind == "bytes":
            out += enc_bytes(f, unhex(v))
        elif kind == "string":
            out += enc_bytes(f, v.encode("utf-8"))
        elif kind == "rbytes":
            out += b"".join(enc_bytes_always(f, unhex(x)) for x in v)
        elif kind == "rstring":
            out += b"".join(enc_bytes_always(f, x.encode("utf-8")) for x in v)
        elif kind == "ruint64":
            out += enc_bytes(f, b"".join(enc_varint(int(x)) for x in v))
        elif kind == "rmsg":
            out += b"".join(enc_bytes_always(f, encode_json(spec[2], x)) for x in v)
        elif kind == "submsg":
            out += b"" if v is None else enc_bytes_always(f, encode_json(spec[2], v))
        elif kind == "message":
            out += enc_bytes_always(f, encode_json(member_type(spec), v))
        elif kind == "obytes":
            out += enc_bytes_always(f, unhex(v))
        else:
            raise AssertionError("kind %s" % kind)
    if keys:
        raise AssertionError("%s has no fields %s" % (name, sorted(keys)))
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Ed25519 (SPEC.md 2.1): point arithmetic in pure Python, the key checks and the
# cofactored verification equation. (`cryptography` is used for signing only: its
# verification is cofactorless, which SPEC.md 2.1 does not allow.)
# ---------------------------------------------------------------------------------------
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

# The y-coordinates (bit 255 cleared) of the eight points of small order (SPEC.md 2.1).
SMALL_ORDER_YS = {
    int.from_bytes(bytes.fromhex(h), "little") for h in [
        "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
        "0100000000000000000000000000000000000000000000000000000000000000",  # identity
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    ]
}

# Points in extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z
# (RFC 8032 5.1.4).
IDENTITY = (0, 1, 1, 0)


def pt_add(p1, p2):
    """RFC 8032 5.1.4 addition (complete: also doubles and adds the neutral element)."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * 2 * D * t2 % P
    d = z1 * 2 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def pt_neg(p1):
    x, y, z, t = p1
    return ((-x) % P, y, z, (-t) % P)


def pt_mul(s, p1):
    """[s]p1 for s >= 0, double and add."""
    q = IDENTITY
    while s > 0:
        if s & 1:
            q = pt_add(q, p1)
        p1 = pt_add(p1, p1)
        s >>= 1
    return q


def pt_is_identity(p1):
    x, y, z, _ = p1
    return x % P == 0 and (y - z) % P == 0


def pt_encode(p1):
    x, y, z, _ = p1
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def pt_decode(b):
    """RFC 8032 5.1.3 decoding, with all its failure cases: y >= p, not on the curve,
    x = 0 with the sign bit set. Returns an extended point or None."""
    if len(b) != 32:
        return None
    n = int.from_bytes(b, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P == 0:
        pass
    elif (v * x * x + u) % P == 0:
        x = x * SQRT_M1 % P
    else:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


BASE = pt_decode(bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666"))


def is_small_order(pt):
    return pt_is_identity(pt_mul(8, pt))


def self_test_small_order_table():
    for y in SMALL_ORDER_YS:
        for sign in (0, 1):
            pt = pt_decode((y | sign << 255).to_bytes(32, "little"))
            if pt is not None:
                assert is_small_order(pt), "table entry is not small order"
    # ... and no other decodable y of small order exists: the 8-torsion has exactly 8
    # points, and the table accounts for all of them (1 + 1 + 2 + 4).
    count = sum(1 for y in SMALL_ORDER_YS for s in (0, 1)
                if pt_decode((y | s << 255).to_bytes(32, "little")) is not None)
    assert count == 8, count
    # The arithmetic agrees with RFC 8032 key generation (as done by `cryptography`).
    seed = bytes(range(32))
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    assert pt_encode(pt_mul(a, BASE)) == ed25519_public(seed)
    assert pt_is_identity(pt_mul(L, BASE)) and not pt_is_identity(BASE)


def acceptable_point(b):
    """SPEC.md 2.1: a canonical encoding of a curve point that is not of small order
    (the rule for R). Returns the point or None."""
    pt = pt_decode(b)
    if pt is None or int.from_bytes(b, "little") & ((1 << 255) - 1) in SMALL_ORDER_YS:
        return None
    assert not is_small_order(pt)  # the table and the arithmetic agree
    return pt


_KEY_CACHE = {}


def public_key_point(b):
    """SPEC.md 2.1 check 3, the rule for public keys: 32 bytes, canonical, on the curve,
    not of small order and torsion-free ([L]A is the neutral element). Returns the point
    or None."""
    b = bytes(b)
    if b not in _KEY_CACHE:
        pt = acceptable_point(b) if len(b) == 32 else None
        if pt is not None and not pt_is_identity(pt_mul(L, pt)):
            pt = None
        _KEY_CACHE[b] = pt
    return _KEY_CACHE[b]


def valid_public_key(b):
    return public_key_point(b) is not None


def strict_verify(public, message, sig):
    """SPEC.md 2.1 Ed25519 verification: strict encodings and the cofactored equation
    [8]([S]B - R - [k]A) = 0. True or False."""
    if len(sig) != 64:
        return False
    a = public_key_point(public)
    if a is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L:  # S must be canonical
        return False
    r = acceptable_point(sig[:32])  # R canonical and not of small order
    if r is None:
        return False
    k = int.from_bytes(hashlib.sha512(sig[:32] + bytes(public) + message).digest(), "little") % L
    residual = pt_add(pt_add(pt_mul(s, BASE), pt_neg(r)), pt_neg(pt_mul(k, a)))
    return pt_is_identity(pt_mul(8, residual))


def cofactorless_verify(public, message, sig):
    """RFC 8032's other equation, [S]B = R + [k]A with R compared as bytes (OpenSSL's):
    only used to show where it differs from SPEC.md 2.1."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, message)
        return True
    except InvalidSignature:
        return False


def ed25519_public(seed):
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def ed25519_sign(seed, message):
    return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def x25519_public(secret):
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def x25519(secret, public):
    """SPEC.md 2.1: X25519 with the all-zero check. None for a non-contributory result."""
    try:
        out = X25519PrivateKey.from_private_bytes(secret).exchange(
            X25519PublicKey.from_public_bytes(public))
    except ValueError:  # OpenSSL refuses an all-zero result itself
        return None
    return None if out == bytes(32) else out


def hkdf_sha256(salt, ikm, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


# ---------------------------------------------------------------------------------------
# SPEC.md 3: addresses
# ---------------------------------------------------------------------------------------
class AddressError(Exception):
    def __init__(self, name):
        super().__init__(name)
        self.name = name


def _alnum(b):
    return 0x61 <= b <= 0x7A or 0x30 <= b <= 0x39


def _validate_local(local):
    if not local:
        raise AddressError("EmptyLocalPart")
    if len(local) > MAX_LOCAL_PART_LEN:
        raise AddressError("TooLong")
    prev_sep = True
    for b in local:
        if _alnum(b):
            prev_sep = False
        elif b in b"._-":
            if prev_sep:
                raise AddressError("MisplacedSeparator")
            prev_sep = True
        else:
            raise AddressError("InvalidChar")
    if prev_sep:
        raise AddressError("MisplacedSeparator")


def _validate_domain(domain):
    if not domain:
        raise AddressError("EmptyDomain")
    if len(domain) > MAX_DOMAIN_LEN:
        raise AddressError("TooLong")
    last_numeric = False
    for label in domain.split(b"."):
        if not label:
            raise AddressError("EmptyLabel")
        if len(label) > MAX_DOMAIN_LABEL_LEN:
            raise AddressError("TooLong")
        for b in label:
            if not (_alnum(b) or b == 0x2D):
                raise AddressError("InvalidChar")
        if label[0] == 0x2D or label[-1] == 0x2D:
            raise AddressError("LabelHyphen")
        last_numeric = all(0x30 <= b <= 0x39 for b in label)
    if last_numeric:
        raise AddressError("NumericTopLabel")


def parse_address(text, canonical_only):
    """SPEC.md 3.3: returns the canonical address string or raises AddressError."""
    raw = text.encode("utf-8")
    if not raw:
        raise AddressError("Empty")
    if len(raw) > MAX_ADDRESS_LEN:
        raise AddressError("TooLong")
    at = raw.find(b"@")
    if at < 0:
        raise AddressError("MissingAt")
    if canonical_only and any(0x41 <= b <= 0x5A for b in raw):
        raise AddressError("NotCanonical")
    folded = bytes(b + 0x20 if 0x41 <= b <= 0x5A else b for b in raw)
    _validate_local(folded[:at])
    _validate_domain(folded[at + 1:])
    return folded.decode("ascii")


# ---------------------------------------------------------------------------------------
# SPEC.md 4: device ids and certificates
# ---------------------------------------------------------------------------------------
def device_id(signing_public):
    return sha256(framed(LABELS["DeviceId"], signing_public))[:16]


def encode_certificate_body(b):
    return (enc_uint(1, b["version"]) + enc_bytes(2, b["address"].encode())
            + enc_bytes(3, b["identity_key"]) + enc_bytes(4, b["device_id"])
            + enc_bytes(5, b["device_signing_key"]) + enc_bytes(6, b["device_agreement_key"])
            + enc_uint(7, b["not_before_ms"]) + enc_uint(8, b["not_after_ms"]))


def encode_certificate(body, isig, dsig):
    return enc_bytes(1, body) + enc_bytes(2, isig) + enc_bytes(3, dsig)


class CertificateError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def decode_certificate(encoded):
    """SPEC.md 4.3 verification, in order. Returns the decoded body or raises."""
    E = CertificateError
    if len(encoded) > MAX_CERTIFICATE_LEN:
        raise E("too_large")
    try:
        outer = decode("DeviceCertificate", encoded)
        body = decode("DeviceCertificateBody", outer["body"])
    except DecodeError:
        raise E("decode")
    if body["version"] != PROTOCOL_VERSION:
        raise E("unsupported_version")
    try:
        parse_address(body["address"], canonical_only=True)
    except AddressError:
        raise E("invalid_address")
    if not valid_public_key(body["identity_key"]):
        raise E("invalid_field")
    if len(body["device_id"]) != 16:
        raise E("invalid_field")
    if not valid_public_key(body["device_signing_key"]):
        raise E("invalid_field")
    if len(body["device_agreement_key"]) != 32:
        raise E("invalid_field")
    if device_id(body["device_signing_key"]) != body["device_id"]:
        raise E("device_id_mismatch")
    if body["not_before_ms"] > body["not_after_ms"]:
        raise E("invalid_validity")
    if len(outer["identity_signature"]) != 64:
        raise E("bad_identity_signature")
    if len(outer["device_signature"]) != 64:
        raise E("bad_device_signature")
    if not strict_verify(body["identity_key"],
                         framed(LABELS["DeviceCertIdentitySignature"], outer["body"]),
                         outer["identity_signature"]):
        raise E("bad_identity_signature")
    if not strict_verify(body["device_signing_key"],
                         framed(LABELS["DeviceCertDeviceSignature"], outer["body"]),
                         outer["device_signature"]):
        raise E("bad_device_signature")
    return body


# ---------------------------------------------------------------------------------------
# SPEC.md 5: fingerprints
# ---------------------------------------------------------------------------------------
def fingerprint(identity_key, address):
    h = framed(LABELS["Fingerprint"], identity_key, address.encode())
    for _ in range(FINGERPRINT_ITERATIONS):
        h = hashlib.sha512(h + identity_key).digest()
    return h[:32]


def fingerprint_digits(fp):
    return "".join("%05d" % (int.from_bytes(fp[i * 5:i * 5 + 5], "big") % 100000)
                   for i in range(6))


def safety_digits(local_fp, remote_fp):
    a, b = fingerprint_digits(local_fp), fingerprint_digits(remote_fp)
    return a + b if a <= b else b + a


def qr_payload(own_fp, peer_fp):
    return enc_uint(1, PROTOCOL_VERSION) + enc_bytes(2, own_fp) + enc_bytes(3, peer_fp)


def verify_scanned(local_fp, remote_fp, payload):
    """SPEC.md 5.3: returns None on success or an error name."""
    if len(payload) > MAX_SCANNABLE_FINGERPRINT_LEN:
        return "too_large"
    try:
        m = decode("ScannableFingerprint", payload)
    except DecodeError:
        return "decode"
    if m["version"] != PROTOCOL_VERSION:
        return "unsupported_version"
    if len(m["own"]) != 32 or len(m["peer"]) != 32:
        return "decode"
    if m["own"] == remote_fp and m["peer"] == local_fp:
        return None
    return "mismatch"


# ---------------------------------------------------------------------------------------
# SPEC.md 7: content
# ---------------------------------------------------------------------------------------
RECEIPT_KINDS = {"delivered": 1, "read": 2}


def encode_content_unpadded(c):
    if "text" in c:
        t = c["text"]
        mt = t["media_type"]
        assert len(mt) <= MAX_MEDIA_TYPE_LEN and all(0x20 <= ord(ch) < 0x7F for ch in mt)
        reply = bytes.fromhex(t["reply_to"]) if t["reply_to"] else b""
        inner = enc_bytes(1, mt.encode()) + enc_bytes(2, t["body"].encode()) + enc_bytes(3, reply)
        return enc_bytes_always(1, inner)
    if "receipt" in c:
        r = c["receipt"]
        assert 1 <= len(r["message_ids"]) <= MAX_RECEIPT_IDS
        inner = enc_uint(1, RECEIPT_KINDS[r["kind"]]) + b"".join(
            enc_bytes_always(2, bytes.fromhex(i)) for i in r["message_ids"])
        return enc_bytes_always(2, inner)
    raise ValueError("cannot encode unknown content")


def encode_padded(c):
    """SPEC.md 7.3: k >= 1 zero bytes in field 15, total a multiple of PADDING_BLOCK."""
    unpadded = encode_content_unpadded(c)
    total = -(-(len(unpadded) + 3) // PADDING_BLOCK) * PADDING_BLOCK
    assert total <= MAX_PLAINTEXT_LEN
    k = total - len(unpadded) - 2
    out = unpadded + bytes([15 << 3 | 2, k]) + bytes(k)
    assert len(out) == total and len(out) % PADDING_BLOCK == 0 and 1 <= k <= PADDING_BLOCK
    return out


class ContentError(Exception):
    pass


def decode_content(plaintext):
    """SPEC.md 7: returns the JSON form used by the vectors, or raises ContentError."""
    if len(plaintext) > MAX_PLAINTEXT_LEN:
        raise ContentError("too_large")
    try:
        m = decode("Content", plaintext)
    except DecodeError:
        raise ContentError("decode")
    member = m.get("_oneof_body")
    if member is None:
        return {"unknown": {}}
    if member == "group_sender_key":
        try:
            k = check_sender_key(m["group_sender_key"])
        except GroupMessageError:
            raise ContentError("group_sender_key")
        return {"group_sender_key": {"group_id": k["group_id"].hex(), "sender": k["sender"],
                                     "chain_id": k["chain_id"], "iteration": k["iteration"]}}
    if member == "group_sync":
        # SPEC.md 7.6: the snapshot passes 18.6's decoding; rekey_epoch at most its epoch.
        g = m["group_sync"]
        try:
            st = decode_group_snapshot(g["snapshot"])
        except GroupError:
            raise ContentError("group_sync")
        if g["rekey_epoch"] > st["epoch"]:
            raise ContentError("group_sync")
        gid = st["group_id"]
        return {"group_sync": {"group_id": gid.hex() if isinstance(gid, (bytes, bytearray)) else gid,
                               "epoch": st["epoch"], "rekey_epoch": g["rekey_epoch"],
                               "snapshot": bytes(g["snapshot"]).hex()}}
    if member == "text":
        t = m["text"]
        mt = t["media_type"]
        if len(mt.encode()) > MAX_MEDIA_TYPE_LEN or not all(0x20 <= ord(ch) < 0x7F for ch in mt):
            raise ContentError("text.media_type")
        if len(t["reply_to"]) not in (0, 16):
            raise ContentError("text.reply_to")
        return {"text": {"media_type": mt, "body": t["body"],
                         "reply_to": t["reply_to"].hex() if t["reply_to"] else None}}
    r = m["receipt"]
    if r["kind"] == 0:
        raise ContentError("receipt.kind")
    if r["kind"] not in (1, 2):
        return {"unknown": {}}  # a receipt kind from a newer version
    ids = r["message_ids"]
    if not 1 <= len(ids) <= MAX_RECEIPT_IDS or any(len(i) != 16 for i in ids):
        raise ContentError("receipt.message_ids")
    return {"receipt": {"kind": {1: "delivered", 2: "read"}[r["kind"]],
                        "message_ids": [i.hex() for i in ids]}}


# ---------------------------------------------------------------------------------------
# SPEC.md 6: envelopes
# ---------------------------------------------------------------------------------------
def encode_header(h):
    return (enc_uint(1, h["version"]) + enc_bytes(2, h["sender"].encode())
            + enc_bytes(3, h["sender_device"]) + enc_bytes(4, h["recipient"].encode())
            + enc_bytes(5, h["recipient_device"]) + enc_bytes(6, h["message_id"])
            + enc_uint(7, h["timestamp_ms"]) + enc_uint(8, h["content_type"])
            + enc_uint(9, h["payload_kind"]) + enc_bytes(10, h.get("ephemeral_key", b""))
            + enc_bytes(11, h.get("session", b"")))


def encode_envelope(header, ciphertext, signature):
    return (enc_uint(1, PROTOCOL_VERSION) + enc_bytes(2, header) + enc_bytes(3, ciphertext)
            + enc_bytes(4, signature))


def signature_input(header_bytes, ciphertext):
    return framed(LABELS["EnvelopeSignature"], header_bytes, sha256(ciphertext))


def aad(header_bytes):
    return framed(LABELS["EnvelopeAad"], header_bytes)


def one_shot_keys(shared, ephemeral_public, recipient_public):
    okm = hkdf_sha256(ephemeral_public + recipient_public, shared,
                      framed(LABELS["OneShotSealKdf"]), 44)
    return okm[:32], okm[32:]


class OpenError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


class ReplayWindow:
    """SPEC.md 8: one window per receiving device, with a floor and a capacity per sender."""

    def __init__(self, max_age_ms=DEFAULT_MAX_MESSAGE_AGE_MS,
                 max_skew_ms=DEFAULT_MAX_CLOCK_SKEW_MS, capacity=DEFAULT_REPLAY_CAPACITY):
        self.max_age_ms, self.max_skew_ms, self.capacity = max_age_ms, max_skew_ms, capacity
        self.senders = {}  # sender address -> {"floor": ts, "ids": {message_id: ts}}

    def floor(self, sender):
        return self.senders.get(sender, {"floor": 0})["floor"]

    def size(self):
        return sum(len(w["ids"]) for w in self.senders.values())

    def state(self):
        return copy.deepcopy(self.senders)

    def check(self, sender, message_id, ts, now):
        w = self.senders.get(sender)
        if ts < max(0, now - self.max_age_ms) or (w is not None and ts < w["floor"]):
            raise OpenError("too_old")
        if ts > now + self.max_skew_ms:
            raise OpenError("from_future")
        if w is not None and message_id in w["ids"]:
            raise OpenError("replay")

    def record(self, sender, message_id, ts, now):
        w = self.senders.setdefault(sender, {"floor": 0, "ids": {}})
        w["ids"][message_id] = ts
        horizon = max(0, now - self.max_age_ms)
        while w["ids"]:
            mid = min(w["ids"], key=lambda k: (w["ids"][k], k))
            t = w["ids"][mid]
            if t < horizon or len(w["ids"]) > self.capacity:
                del w["ids"][mid]
                w["floor"] = max(w["floor"], t + 1)
            else:
                break

    def accept(self, sender, message_id, ts, now):
        self.check(sender, message_id, ts, now)
        self.record(sender, message_id, ts, now)


def parse_session_header(b):
    """SPEC.md 6.6 VAL-ENV-11 for PAYLOAD_KIND_SESSION (SPEC.md 15.4): every failure is
    `invalid_field`, including a `session` field that does not decode."""
    E = OpenError
    try:
        sh = decode("SessionHeader", b)
    except DecodeError:
        raise E("invalid_field")
    if len(sh["ratchet_key"]) != 32:
        raise E("invalid_field")
    if sh["sequence"] == 0:
        raise E("invalid_field")
    st = sh.get("setup")
    if st is not None:
        if len(st["base_key"]) != 32:
            raise E("invalid_field")
        if st["signed_prekey_id"] == 0:
            raise E("invalid_field")
        if st["kem_prekey_id"] == 0:
            raise E("invalid_field")
        if len(st["kem_ciphertext"]) != KEM_CIPHERTEXT_LEN:
            raise E("invalid_field")
    return sh


def verify_envelope(data, me, directory):
    """SPEC.md 6.6 VAL-ENV-01 to VAL-ENV-16, in order, for both payload kinds. `me` is the
    recipient party (address, device id); `directory` maps (address, device id) to a
    verified certificate body. Returns (outer, header bytes, header, sender certificate);
    the header's `session_header` is the decoded SessionHeader or None."""
    E = OpenError
    # 1. size, before any parsing
    if len(data) > MAX_ENVELOPE_LEN:
        raise E("too_large")
    # 2. outer structure
    try:
        outer = decode("Envelope", data)
    except DecodeError:
        raise E("decode")
    # 3. version
    if outer["version"] != PROTOCOL_VERSION:
        raise E("unsupported_version")
    # 4. part sizes
    if len(outer["header"]) > MAX_HEADER_LEN or len(outer["ciphertext"]) > MAX_CIPHERTEXT_LEN:
        raise E("too_large")
    if len(outer["ciphertext"]) < AEAD_TAG_LEN or len(outer["signature"]) != 64:
        raise E("invalid_field")
    # 5. header structure
    header_bytes = outer["header"]
    try:
        h = decode("EnvelopeHeader", header_bytes)
    except DecodeError:
        raise E("decode")
    if h["version"] != PROTOCOL_VERSION:
        raise E("unsupported_version")
    for f in ("sender_device", "recipient_device", "message_id"):
        if len(h[f]) != 16:
            raise E("invalid_field")
    if h["content_type"] != 1:
        raise E("unsupported_content_type")
    if h["payload_kind"] == 1:
        if len(h["session"]) != 0 or len(h["ephemeral_key"]) != 32:
            raise E("invalid_field")
        h["session_header"] = None
    elif h["payload_kind"] == 2:
        if len(h["ephemeral_key"]) != 0:
            raise E("invalid_field")
        h["session_header"] = parse_session_header(h["session"])
    else:
        raise E("unsupported_payload_kind")
    # 6. addresses, canonical only
    for f in ("sender", "recipient"):
        try:
            parse_address(h[f], canonical_only=True)
        except AddressError:
            raise E("invalid_address")
    # 7. sender certificate: lookup, match, validity at the envelope timestamp
    cert = directory.get((h["sender"], h["sender_device"]))
    if cert is None:
        raise E("unknown_sender")
    if cert["address"] != h["sender"] or cert["device_id"] != h["sender_device"]:
        raise E("sender_mismatch")
    if not cert["not_before_ms"] <= h["timestamp_ms"] <= cert["not_after_ms"]:
        raise E("sender_certificate_not_valid")
    # 8. signature over the exact bytes received
    if not strict_verify(cert["device_signing_key"],
                         signature_input(header_bytes, outer["ciphertext"]),
                         outer["signature"]):
        raise E("bad_signature")
    # 9. recipient binding
    if h["recipient"] != me["address"] or h["recipient_device"] != me["device_id"]:
        raise E("wrong_recipient")
    return outer, header_bytes, h, cert


def open_envelope(data, me, directory, window, now):
    """SPEC.md 6.6, every check in order, for one-shot envelopes (a session envelope
    stops after VAL-ENV-16 with `needs_session`: SPEC.md 15.4 opens it). `me` also holds
    the agreement secret. Returns (header, content json)."""
    E = OpenError
    outer, header_bytes, h, _ = verify_envelope(data, me, directory)
    if h["payload_kind"] != 1:
        raise E("needs_session")
    # 10. key agreement
    shared = x25519(me["agreement_secret"], h["ephemeral_key"])
    if shared is None:
        raise E("non_contributory")
    # 11. AEAD
    key, nonce = one_shot_keys(shared, h["ephemeral_key"], x25519_public(me["agreement_secret"]))
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(nonce, outer["ciphertext"], aad(header_bytes))
    except InvalidTag:
        raise E("decrypt_failed")
    # 12. content
    try:
        content = decode_content(plaintext)
    except ContentError:
        raise E("invalid_content")
    # 13. freshness, then record
    window.accept(h["sender"], h["message_id"], h["timestamp_ms"], now)
    return h, content


# ---------------------------------------------------------------------------------------
# SPEC.md 15: prekeys, bundles, setup, the Double Ratchet, sessions and device lists
# ---------------------------------------------------------------------------------------
PREKEY_KIND_X25519, PREKEY_KIND_ML_KEM_768 = 1, 2
KEM_Q = 3329


class PrekeyError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


class SessionError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


class DeviceListError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def kem_keygen(seed):
    """SPEC.md 15.1: ML-KEM-768 KeyGen_internal(d, z) from the 64-byte seed d || z.
    Returns (encapsulation key, decapsulation key)."""
    assert len(seed) == 64
    ek, dk = ML_KEM_768._keygen_internal(seed[:32], seed[32:])
    assert (ek, dk) == ML_KEM_768.key_derive(seed)
    return ek, dk


def kem_encapsulate(ek, m):
    """FIPS 203 Encaps_internal(ek, m): (ciphertext, shared secret)."""
    shared, ct = ML_KEM_768._encaps_internal(ek, m)
    return ct, shared


def kem_decapsulate(dk, ct):
    return ML_KEM_768.decaps(dk, ct)


def kem_check_public_key(ek):
    """SPEC.md 15.1: 1184 bytes, and FIPS 203's modulus check: every 12-bit coefficient
    of the first 1152 bytes is < q = 3329."""
    if len(ek) != KEM_PUBLIC_KEY_LEN:
        return False
    for i in range(0, 1152, 3):
        b0, b1, b2 = ek[i], ek[i + 1], ek[i + 2]
        if (b0 | (b1 & 0x0F) << 8) >= KEM_Q or (b1 >> 4 | b2 << 4) >= KEM_Q:
            return False
    return True


def encode_prekey_body(device, pid, kind, one_time, public_key, created_ms):
    return (enc_uint(1, PROTOCOL_VERSION) + enc_bytes(2, device) + enc_uint(3, pid)
            + enc_uint(4, kind) + enc_uint(5, 1 if one_time else 0) + enc_bytes(6, public_key)
            + enc_uint(7, created_ms))


def encode_signed_prekey(body, signature):
    return enc_bytes(1, body) + enc_bytes(2, signature)


def sign_prekey(signing_seed, body):
    return encode_signed_prekey(body, ed25519_sign(signing_seed, framed(LABELS["PrekeySignature"], body)))


def decode_signed_prekey(encoded, owner):
    """SPEC.md 15.2 VAL-PREKEY-01..10 against the owner's verified certificate body."""
    E = PrekeyError
    if len(encoded) > MAX_SIGNED_PREKEY_LEN:
        raise E("too_large")
    try:
        outer = decode("SignedPrekey", encoded)
        body = decode("PrekeyBody", outer["body"])
    except DecodeError:
        raise E("decode")
    if body["version"] != PROTOCOL_VERSION:
        raise E("unsupported_version")
    if len(body["device_id"]) != 16:
        raise E("invalid_field")
    if body["id"] == 0:
        raise E("invalid_field")
    if body["kind"] not in (PREKEY_KIND_X25519, PREKEY_KIND_ML_KEM_768):
        raise E("invalid_field")
    if body["kind"] == PREKEY_KIND_X25519 and len(body["public_key"]) != 32:
        raise E("invalid_field")
    if body["kind"] == PREKEY_KIND_ML_KEM_768 and not kem_check_public_key(body["public_key"]):
        raise E("invalid_field")
    if body["device_id"] != owner["device_id"]:
        raise E("wrong_device")
    if len(outer["signature"]) != 64:
        raise E("bad_prekey_signature")
    if not strict_verify(owner["device_signing_key"], framed(LABELS["PrekeySignature"], outer["body"]),
                         outer["signature"]):
        raise E("bad_prekey_signature")
    return body


def encode_bundle(certificate, signed_prekey, kem_prekey, one_time_prekey):
    return (enc_bytes(1, certificate) + enc_bytes_always(2, signed_prekey)
            + enc_bytes_always(3, kem_prekey)
            + (enc_bytes_always(4, one_time_prekey) if one_time_prekey is not None else b""))


def decode_bundle(encoded):
    """SPEC.md 15.2 VAL-BUNDLE-01..08. Returns the verified parts."""
    E = PrekeyError
    if len(encoded) > MAX_PREKEY_BUNDLE_LEN:
        raise E("too_large")
    try:
        b = decode("PrekeyBundle", encoded)
    except DecodeError:
        raise E("decode")
    try:
        cert = decode_certificate(b["device_certificate"])
    except CertificateError:
        raise E("invalid_certificate")

    def prekey(field):
        if field not in b:
            raise E("invalid_field")
        p = b[field]  # checked as if received alone, in its reference encoding
        return decode_signed_prekey(encode_signed_prekey(p["body"], p["signature"]), cert)
    spk = prekey("signed_prekey")
    kem = prekey("kem_prekey")
    opk = prekey("one_time_prekey") if "one_time_prekey" in b else None
    if spk["kind"] != PREKEY_KIND_X25519 or spk["one_time"]:
        raise E("wrong_kind")
    if kem["kind"] != PREKEY_KIND_ML_KEM_768 or kem["one_time"]:
        raise E("wrong_kind")
    if opk is not None and (opk["kind"] != PREKEY_KIND_X25519 or not opk["one_time"]):
        raise E("wrong_kind")
    return {"certificate": cert, "certificate_encoded": b["device_certificate"],
            "signed_prekey": spk, "kem_prekey": kem, "one_time_prekey": opk}


def setup_root(dhs, kem_shared, initiator_cert, responder_cert, base_key, signed_prekey,
               one_time_prekey, kem_public, kem_ciphertext):
    """SPEC.md 15.3: the session's first root key."""
    ikm = b"\xff" * 32 + b"".join(dhs) + kem_shared
    info = framed(LABELS["SessionSetup"], sha256(initiator_cert), sha256(responder_cert),
                  base_key, signed_prekey, one_time_prekey or b"", sha256(kem_public),
                  sha256(kem_ciphertext))
    return hkdf_sha256(bytes(32), ikm, info, 32)


def dh_or_fail(secret, public):
    out = x25519(secret, public)
    if out is None:
        raise SessionError("non_contributory")
    return out


def kdf_rk(root, dh_out):
    """SPEC.md 15.4 KDF_RK: (new root key, chain key)."""
    okm = hkdf_sha256(root, dh_out, framed(LABELS["RatchetRoot"]), 64)
    return okm[:32], okm[32:]


def kdf_ck(ck):
    """SPEC.md 15.4 KDF_CK: (message key, next chain key)."""
    return (hmac.new(ck, b"\x01", hashlib.sha256).digest(),
            hmac.new(ck, b"\x02", hashlib.sha256).digest())


def message_keys(mk, message_id):
    """SPEC.md 15.4: a message's AEAD key and nonce, salted with its message id."""
    okm = hkdf_sha256(message_id, mk, framed(LABELS["RatchetMessageKeys"]), 44)
    return okm[:32], okm[32:]


class Ratchet:
    """SPEC.md 15.4. Fresh ratchet secrets are passed in (they are vector inputs)."""

    def __init__(self, root, dhs, dhr, cks):
        self.root, self.dhs, self.dhs_pub, self.dhr, self.cks = root, dhs, x25519_public(dhs), dhr, cks
        self.ns = self.pn = self.nr = 0
        self.ckr = None
        self.skipped = {}  # (ratchet key, n) -> [message key, stored at, insertion order]
        self.next_order = 0

    @classmethod
    def initiator(cls, root, responder_ratchet_key, own_secret):
        root, cks = kdf_rk(root, dh_or_fail(own_secret, responder_ratchet_key))
        return cls(root, own_secret, responder_ratchet_key, cks)

    @classmethod
    def responder(cls, root, signed_prekey_secret):
        return cls(root, signed_prekey_secret, None, None)

    def next_send(self):
        if self.cks is None:
            raise SessionError("cannot_send_yet")
        if self.ns == 0xFFFFFFFF:
            raise SessionError("chain_exhausted")
        mk, self.cks = kdf_ck(self.cks)
        header = (self.dhs_pub, self.pn, self.ns)
        self.ns += 1
        return header, mk

    @staticmethod
    def derive(ck, count):
        keys = []
        for _ in range(count):
            mk, ck = kdf_ck(ck)
            keys.append(mk)
        return keys, ck

    def receive(self, dh, pn, n, now, new_secret, open_fn):
        """Returns open_fn(message key); changes nothing unless open_fn succeeds."""
        E = SessionError
        if (dh, n) in self.skipped:
            if self.skipped[(dh, n)][1] < max(0, now - SKIPPED_KEY_MAX_AGE_MS):
                raise E("key_expired")
            msg = open_fn(self.skipped[(dh, n)][0])
            del self.skipped[(dh, n)]
            self.expire(now)
            return msg
        step = None
        if self.dhr == dh:
            if self.ckr is None:
                raise E("decrypt_failed")
            if n < self.nr:
                raise E("duplicate")
            if n - self.nr > MAX_SKIP_PER_CHAIN:
                raise E("too_far_ahead")
            keys, ck_after = self.derive(self.ckr, n - self.nr + 1)
            skipped = [(dh, self.nr + i, k) for i, k in enumerate(keys[:-1])]
        else:
            skipped = []
            if self.ckr is not None and self.dhr is not None:
                if pn < self.nr:
                    raise E("decrypt_failed")
                if pn - self.nr > MAX_SKIP_PER_CHAIN:
                    raise E("too_far_ahead")
                keys, _ = self.derive(self.ckr, pn - self.nr)
                skipped += [(self.dhr, self.nr + i, k) for i, k in enumerate(keys)]
            if n > MAX_SKIP_PER_CHAIN:
                raise E("too_far_ahead")
            root, ckr = kdf_rk(self.root, dh_or_fail(self.dhs, dh))
            keys, ck_after = self.derive(ckr, n + 1)
            skipped += [(dh, i, k) for i, k in enumerate(keys[:-1])]
            root, cks = kdf_rk(root, dh_or_fail(new_secret, dh))
            step = (root, new_secret, dh, cks)
        msg = open_fn(keys[-1])
        # Commit.
        if step is not None:
            self.root, self.dhs, self.dhr, self.cks = step
            self.dhs_pub = x25519_public(self.dhs)
            self.pn, self.ns = self.ns, 0
        for d, i, k in skipped:
            self.skipped[(d, i)] = [k, now, self.next_order]
            self.next_order += 1
        self.ckr, self.nr = ck_after, n + 1
        self.expire(now)
        return msg

    def expire(self, now):
        horizon = max(0, now - SKIPPED_KEY_MAX_AGE_MS)
        self.skipped = {k: v for k, v in self.skipped.items() if v[1] >= horizon}
        if len(self.skipped) > MAX_SKIPPED_KEYS:
            keep = sorted(self.skipped.items(), key=lambda kv: kv[1][2])[-MAX_SKIPPED_KEYS:]
            self.skipped = dict(keep)


class SequenceTracker:
    """SPEC.md 15.4: which of the peer's sequence numbers arrived."""

    def __init__(self):
        self.highest, self.missing = 0, set()

    def record(self, seq):
        if seq > self.highest:
            new = list(range(self.highest + 1, min(seq, self.highest + 1 + MAX_SKIPPED_KEYS)))
            self.missing |= set(new)
            self.highest = seq
            while len(self.missing) > MAX_SKIPPED_KEYS:
                self.missing.remove(min(self.missing))
            return new
        self.missing.discard(seq)
        return []


def encode_session_setup(st):
    return (enc_bytes(1, st["base_key"]) + enc_uint(2, st["signed_prekey_id"])
            + enc_uint(3, st["one_time_prekey_id"]) + enc_uint(4, st["kem_prekey_id"])
            + enc_bytes(5, st["kem_ciphertext"]))


def encode_session_header(ratchet_key, pn, n, sequence, setup):
    return (enc_bytes(1, ratchet_key) + enc_uint(2, pn) + enc_uint(3, n) + enc_uint(4, sequence)
            + (enc_bytes_always(5, encode_session_setup(setup)) if setup is not None else b""))


class SessionDevice:
    """One device's session layer (SPEC.md 15.2-15.7), enough to receive as the
    reference does. `directory` maps (address, device id) to (certificate body, encoded
    certificate) of the devices on the signed lists this device holds."""

    def __init__(self, party, directory):
        self.me = party
        self.directory = directory
        self.signed, self.kem, self.one_time = {}, {}, {}
        self.sessions = {}  # (address, device id) -> [session], the one to send on first
        self.window = ReplayWindow()

    def state(self):
        return copy.deepcopy((self.signed, self.kem, self.one_time,
                              {k: [(vars(s["ratchet"]), s["base_key"], s["setup"], s["send_seq"],
                                    vars(s["received"])) for s in v]
                               for k, v in self.sessions.items()},
                              self.window.senders))

    def initiate(self, bundle, base_secret, kem_randomness, ratchet_secret):
        """SPEC.md 15.3, the initiator's side. Returns (session, trace)."""
        own_cert = self.directory[(self.me["address"], self.me["device_id"])][1]
        spk = bundle["signed_prekey"]["public_key"]
        opk = bundle["one_time_prekey"]["public_key"] if bundle["one_time_prekey"] else None
        base = x25519_public(base_secret)
        dhs = [dh_or_fail(self.me["agreement_secret"], spk),
               dh_or_fail(base_secret, bundle["certificate"]["device_agreement_key"]),
               dh_or_fail(base_secret, spk)]
        if opk is not None:
            dhs.append(dh_or_fail(base_secret, opk))
        kem_public = bundle["kem_prekey"]["public_key"]
        ct, kem_shared = kem_encapsulate(kem_public, kem_randomness)
        root = setup_root(dhs, kem_shared, own_cert, bundle["certificate_encoded"], base, spk, opk,
                          kem_public, ct)
        setup = {"base_key": base, "signed_prekey_id": bundle["signed_prekey"]["id"],
                 "one_time_prekey_id": bundle["one_time_prekey"]["id"] if opk else 0,
                 "kem_prekey_id": bundle["kem_prekey"]["id"], "kem_ciphertext": ct}
        session = {"ratchet": Ratchet.initiator(root, spk, ratchet_secret), "base_key": base,
                   "setup": setup, "send_seq": 0, "received": SequenceTracker()}
        peer = (bundle["certificate"]["address"], bundle["certificate"]["device_id"])
        self.sessions.setdefault(peer, []).insert(0, session)
        del self.sessions[peer][MAX_SESSIONS_PER_PEER_DEVICE:]
        return session, {"dh": dhs, "kem_ciphertext": ct, "kem_shared_secret": kem_shared,
                         "root_key": root}

    def seal(self, peer, message_id, timestamp, content, plaintext=None):
        """SPEC.md 15.4 sending on the first session that can send, and 6.4 signing.
        Returns every intermediate value."""
        session = next(s for s in self.sessions[peer] if s["ratchet"].cks is not None)
        r = session["ratchet"]
        trace = {"sender_ratchet_secret": r.dhs, "root_key": r.root, "chain_key": r.cks,
                 "message_number": r.ns}
        (dh, pn, n), mk = r.next_send()
        session["send_seq"] += 1
        key, nonce = message_keys(mk, message_id)
        sh = encode_session_header(dh, pn, n, session["send_seq"], session["setup"])
        header = encode_header({
            "version": PROTOCOL_VERSION, "sender": self.me["address"],
            "sender_device": self.me["device_id"], "recipient": peer[0], "recipient_device": peer[1],
            "message_id": message_id, "timestamp_ms": timestamp, "content_type": 1,
            "payload_kind": 2, "session": sh})
        if plaintext is None:
            plaintext = encode_padded(content)
        ct = ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad(header))
        si = signature_input(header, ct)
        sig = ed25519_sign(self.me["signing_seed"], si)
        trace.update({"message_key": mk, "aead_key": key, "nonce": nonce, "session_header": sh,
                      "header": header, "ciphertext": ct, "signature_input": si, "signature": sig,
                      "envelope": encode_envelope(header, ct, sig), "sequence": session["send_seq"]})
        return trace

    def respond(self, cert, cert_encoded, st):
        """SPEC.md 15.3, the responder's checks in order; reads the prekeys, changes nothing."""
        E = SessionError
        spk = self.signed.get(st["signed_prekey_id"])
        if spk is None:
            raise E("unknown_prekey")
        kem = self.kem.get(st["kem_prekey_id"])
        if kem is None:
            raise E("unknown_prekey")
        opk = None
        if st["one_time_prekey_id"] != 0:
            opk = self.one_time.get(st["one_time_prekey_id"])
            if opk is None:
                raise E("unknown_prekey")
        if st["base_key"] in spk["base_keys"]:
            raise E("replayed_setup")
        if len(spk["base_keys"]) >= MAX_BASE_KEYS_PER_SIGNED_PREKEY:
            raise E("prekey_exhausted")
        base = st["base_key"]
        dhs = [dh_or_fail(spk["secret"], cert["device_agreement_key"]),
               dh_or_fail(self.me["agreement_secret"], base),
               dh_or_fail(spk["secret"], base)]
        if opk is not None:
            dhs.append(dh_or_fail(opk["secret"], base))
        kem_shared = kem_decapsulate(kem["dk"], st["kem_ciphertext"])
        own_cert = self.directory[(self.me["address"], self.me["device_id"])][1]
        root = setup_root(dhs, kem_shared, cert_encoded, own_cert, base, spk["public"],
                          opk["public"] if opk else None, kem["public"], st["kem_ciphertext"])
        return {"ratchet": Ratchet.responder(root, spk["secret"]), "base_key": base, "setup": None,
                "send_seq": 0, "received": SequenceTracker()}

    def receive(self, data, now, new_ratchet_secret):
        """SPEC.md 15.4 and 15.5: VAL-ENV-01..16, freshness check, session selection,
        ratchet, then record. Returns (header, content, missing, new session?)."""
        directory = {k: v[0] for k, v in self.directory.items()}
        outer, header_bytes, h, cert = verify_envelope(data, self.me, directory)
        if h["payload_kind"] == 1:
            h2, content = open_envelope(data, self.me, directory, self.window, now)
            return h2, content, [], False
        sh = h["session_header"]
        self.window.check(h["sender"], h["message_id"], h["timestamp_ms"], now)
        peer = (h["sender"], h["sender_device"])

        def open_fn(mk):
            key, nonce = message_keys(mk, h["message_id"])
            try:
                plaintext = ChaCha20Poly1305(key).decrypt(nonce, outer["ciphertext"], aad(header_bytes))
            except InvalidTag:
                raise SessionError("decrypt_failed")
            try:
                return decode_content(plaintext)
            except ContentError:
                raise SessionError("invalid_content")
        rh = (sh["ratchet_key"], sh["previous_chain_length"], sh["message_number"])
        sessions = self.sessions.get(peer, [])
        st = sh.get("setup")
        by_base = None
        if st is not None:
            by_base = next((i for i, s in enumerate(sessions) if s["base_key"] == st["base_key"]), None)
        new_session = False
        if st is not None and by_base is None:
            session = self.respond(cert, self.directory[peer][1], st)
            content = session["ratchet"].receive(*rh, now, new_ratchet_secret, open_fn)
            self.signed[st["signed_prekey_id"]]["base_keys"].add(st["base_key"])
            self.one_time.pop(st["one_time_prekey_id"], None)
            sessions = [session] + sessions
            del sessions[MAX_SESSIONS_PER_PEER_DEVICE:]
            index, new_session = 0, True
        elif by_base is not None:
            content = sessions[by_base]["ratchet"].receive(*rh, now, new_ratchet_secret, open_fn)
            index = by_base
        else:
            if not sessions:
                raise SessionError("no_session")
            error, index = SessionError("decrypt_failed"), None
            for i, s in enumerate(sessions):
                try:
                    content = s["ratchet"].receive(*rh, now, new_ratchet_secret, open_fn)
                    index = i
                    break
                except SessionError as e:
                    if e.code == "invalid_content":
                        raise  # the AEAD accepted it: this is the session, and it is refused
                    if (e.code in ("duplicate", "too_far_ahead", "key_expired")
                            and error.code == "decrypt_failed"):
                        error = e
            if index is None:
                raise error
        session = sessions.pop(index)
        session["setup"] = None
        missing = session["received"].record(sh["sequence"])
        sessions.insert(0, session)
        self.sessions[peer] = sessions
        self.window.record(h["sender"], h["message_id"], h["timestamp_ms"], now)
        return h, content, missing, new_session


def encode_device_list_body(address, identity_key, serial, issued_ms, devices):
    return (enc_uint(1, PROTOCOL_VERSION) + enc_bytes(2, address.encode())
            + enc_bytes(3, identity_key) + enc_uint(4, serial) + enc_uint(5, issued_ms)
            + b"".join(enc_bytes_always(6, d) for d in devices))


def sign_device_list(identity_seed, body):
    sig = ed25519_sign(identity_seed, framed(LABELS["DeviceList"], body))
    return enc_bytes(1, body) + enc_bytes(2, sig)


def decode_device_list(encoded, fetched_for=None):
    """SPEC.md 15.6 VAL-LIST-01..12 (-12 only for a list fetched for an address).
    Returns (body, [(certificate body, encoded)])."""
    E = DeviceListError
    if len(encoded) > MAX_DEVICE_LIST_LEN:
        raise E("too_large")
    try:
        outer = decode("DeviceList", encoded)
        body = decode("DeviceListBody", outer["body"])
    except DecodeError:
        raise E("decode")
    if body["version"] != PROTOCOL_VERSION:
        raise E("unsupported_version")
    try:
        parse_address(body["address"], canonical_only=True)
    except AddressError:
        raise E("invalid_address")
    if not valid_public_key(body["identity_key"]):
        raise E("invalid_field")
    if len(body["devices"]) > MAX_DEVICES_PER_USER:
        raise E("too_many_devices")
    if not body["devices"]:
        raise E("empty")
    if len(outer["signature"]) != 64 or not strict_verify(
            body["identity_key"], framed(LABELS["DeviceList"], outer["body"]), outer["signature"]):
        raise E("bad_signature")
    devices = []
    for enc in body["devices"]:
        try:
            cert = decode_certificate(enc)
        except CertificateError:
            raise E("invalid_certificate")
        if cert["address"] != body["address"] or cert["identity_key"] != body["identity_key"]:
            raise E("foreign_device")
        if any(d["device_id"] == cert["device_id"] for d, _ in devices):
            raise E("duplicate_device")
        devices.append((cert, enc))
    if fetched_for is not None and body["address"] != fetched_for:
        raise E("address_mismatch")
    return body, devices


def device_event(event, address, **keys):
    """A tracker event as device_lists.json writes it (keys and ids in hex)."""
    return dict(event=event, address=address, **{k: v.hex() for k, v in keys.items()})


class DeviceLists:
    """SPEC.md 15.6: the contacts' current lists; trust on first use, serials increase."""

    def __init__(self):
        self.lists = {}

    def update(self, encoded):
        body, devices = decode_device_list(encoded)
        addr, ids = body["address"], [c["device_id"] for c, _ in devices]
        cur = self.lists.get(addr)
        if cur is None:
            events = [device_event("identity_first_seen", addr, identity_key=body["identity_key"])]
            events += [device_event("device_added", addr, device_id=d) for d in ids]
        else:
            events = []
            if cur[0]["identity_key"] == body["identity_key"]:
                if body["serial"] <= cur[0]["serial"]:
                    raise DeviceListError("stale")
            else:
                events.append(device_event("identity_changed", addr,
                                           old_identity_key=cur[0]["identity_key"],
                                           new_identity_key=body["identity_key"]))
            old = [c["device_id"] for c, _ in cur[1]]
            events += [device_event("device_removed", addr, device_id=d) for d in old if d not in ids]
            events += [device_event("device_added", addr, device_id=d) for d in ids if d not in old]
        self.lists[addr] = (body, devices)
        return events


# ---------------------------------------------------------------------------------------
# SPEC.md 16.2: frames and their structural rules
# ---------------------------------------------------------------------------------------
# The table of SPEC.md 16.2, per message, in order: (field, rule, bound). Rules: exact and
# max (a length in bytes; strings in UTF-8), count (entries of a repeated field), each_max
# and each_exact (every entry's length), nonempty (at least one entry), set (a oneof; the
# field is the oneof's name). A violated count is `too_many`; any other `invalid_field`.
FRAME_RULES = {
    "Hello": [("nonce", "exact", AUTH_NONCE_LEN), ("acceptor", "max", MAX_DOMAIN_LEN)],
    "Challenge": [("nonce", "exact", AUTH_NONCE_LEN), ("domain", "max", MAX_DOMAIN_LEN),
                  ("provider_key", "exact", 32), ("signature", "exact", 64)],
    "Auth": [("signature", "exact", 64), ("who", "set", None)],
    "DeviceAuth": [("certificate", "max", MAX_CERTIFICATE_LEN),
                   ("device_list", "max", MAX_DEVICE_LIST_LEN)],
    "ProviderAuth": [("domain", "max", MAX_DOMAIN_LEN)],
    "Error": [("code", "max", MAX_ERROR_CODE_LEN), ("message", "max", MAX_ERROR_MESSAGE_LEN)],
    "Request": [("body", "set", None)],
    "PublishDeviceList": [("device_list", "max", MAX_DEVICE_LIST_LEN)],
    "PublishPrekeys": [("signed_prekey", "max", MAX_SIGNED_PREKEY_LEN),
                       ("kem_prekey", "max", MAX_SIGNED_PREKEY_LEN),
                       ("one_time", "count", MAX_PUBLISH_ONE_TIME),
                       ("one_time", "each_max", MAX_SIGNED_PREKEY_LEN)],
    "FetchBundles": [("address", "max", MAX_ADDRESS_LEN), ("requester", "max", MAX_ADDRESS_LEN),
                     ("devices", "count", MAX_FETCH_DEVICES), ("devices", "each_exact", 16)],
    "FetchDeviceList": [("address", "max", MAX_ADDRESS_LEN),
                        ("requester", "max", MAX_ADDRESS_LEN)],
    "Submit": [("envelopes", "count", MAX_SUBMIT_ENVELOPES), ("envelopes", "nonempty", None),
               ("envelopes", "each_max", MAX_ENVELOPE_LEN)],
    # SPEC.md 16.2, 20.4: envelopes and group relays count together.
    "Relay": [("envelopes+groups", "count", MAX_RELAY_ENVELOPES),
              ("envelopes+groups", "nonempty", None),
              ("envelopes", "each_max", MAX_ENVELOPE_LEN)],
    "GroupRelay": [("item", "present", None),
                   ("recipients", "count", MAX_GROUP_RECIPIENTS),
                   ("recipients", "nonempty", None),
                   ("recipients", "each_max", MAX_ADDRESS_LEN)],
    "SubmitGroup": [("envelope", "max", MAX_ENVELOPE_LEN), ("envelope", "nonempty", None),
                    ("recipients", "count", MAX_GROUP_RECIPIENTS),
                    ("recipients", "nonempty", None),
                    ("recipients", "each_max", MAX_ADDRESS_LEN)],
    "OrderGroupChange": [("change", "max", MAX_GROUP_CHANGE_LEN),
                         ("sequencer", "max", MAX_DOMAIN_LEN),
                         ("requester", "max", MAX_ADDRESS_LEN)],
    "GroupChangeOrdered": [("change", "max", MAX_GROUP_CHANGE_LEN)],
    # A snapshot only with a change (SPEC.md 20.3).
    "GroupItem": [("body", "set", None), ("envelope", "max", MAX_ENVELOPE_LEN),
                  ("snapshot", "empty_with", "envelope"),
                  ("change", "max", MAX_GROUP_CHANGE_LEN),
                  ("snapshot", "max", MAX_GROUP_SNAPSHOT_LEN)],
    "Response": [("body", "set", None)],
    "Bundles": [("device_list", "max", MAX_DEVICE_LIST_LEN),
                ("bundles", "count", MAX_DEVICES_PER_USER),
                ("bundles", "each_max", MAX_PREKEY_BUNDLE_LEN)],
    "DeviceListResponse": [("device_list", "max", MAX_DEVICE_LIST_LEN)],
    "RelayResult": [("results", "count", MAX_RELAY_ENVELOPES)],
    "Deliver": [("items", "count", MAX_DELIVER_ITEMS)],
    "MailboxItem": [("item", "set", None), ("envelope", "max", MAX_ENVELOPE_LEN)],
    "Undeliverable": [("message_id", "exact", 16), ("device", "exact", 16),
                      ("recipient", "max", MAX_ADDRESS_LEN)],
    "DeliverAck": [("seqs", "count", MAX_ACK_SEQS)],
}


class FrameError(Exception):
    def __init__(self, kind, field=None):
        super().__init__("%s %s" % (kind, field or ""))
        self.kind, self.field = kind, field


def _check_message(name, d):
    """Applies FRAME_RULES to a decoded message, then to the messages it holds, in field
    order (an Error anywhere, the notice in a mailbox item, ...)."""
    for field, rule, bound in FRAME_RULES.get(name, []):
        # "a+b": the entries of the repeated fields a and b together, named as a.
        where = "%s.%s" % (name, field.split("+")[0])
        if "+" in field:
            v = [x for f in field.split("+") for x in d[f]]
        else:
            v = d.get(field)
        if isinstance(v, str):
            v = v.encode("utf-8")
        if rule == "set":
            if ("_oneof_" + field) not in d:
                raise FrameError("invalid_field", where)
        elif rule == "present":  # a message field outside a oneof
            if field not in d:
                raise FrameError("invalid_field", where)
        elif rule == "empty_with":  # empty if the oneof member `bound` is set
            if bound in d and v:
                raise FrameError("invalid_field", where)
        elif v is None:  # a oneof member that is not set
            continue
        elif rule == "exact" and len(v) != bound or rule == "max" and len(v) > bound:
            raise FrameError("invalid_field", where)
        elif rule == "count" and len(v) > bound:
            raise FrameError("too_many", where)
        elif rule == "nonempty" and not v:
            raise FrameError("invalid_field", where)
        elif rule == "each_max" and any(len(x.encode("utf-8") if isinstance(x, str) else x) > bound
                                        for x in v) or \
                rule == "each_exact" and any(len(x) != bound for x in v):
            raise FrameError("invalid_field", where)
    for f, spec in sorted(SCHEMAS[name].items()):
        fname, kind = spec[0], spec[1]
        if kind == "message" and fname in d:
            _check_message(member_type(spec), d[fname])
        elif kind == "submsg" and fname in d:
            _check_message(spec[2], d[fname])
        elif kind == "rmsg":
            for x in d[fname]:
                _check_message(spec[2], x)


def check_frame(data):
    """SPEC.md 16.2: a received unit is refused if it is longer than MAX_FRAME_LEN (before
    decoding), does not decode as a Frame or sets no body, or breaks a structural rule.
    Returns the decoded frame; raises FrameError(kind, "Message.field")."""
    if len(data) > MAX_FRAME_LEN:
        raise FrameError("too_large")
    try:
        frame = decode("Frame", data)
    except DecodeError:
        raise FrameError("decode")
    if "_oneof_body" not in frame:
        raise FrameError("decode")
    _check_message("Frame", frame)
    return frame


def frame_kind(frame):
    return frame["_oneof_body"]


# ---------------------------------------------------------------------------------------
# SPEC.md 18: groups
# ---------------------------------------------------------------------------------------
class GroupError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


GROUP_ACTIONS = ["create", "add", "remove", "leave", "set_role", "set_title"]  # fields 10..15
GROUP_ROLES = {1: "member", 2: "admin"}


def parse_domain_canonical(text):
    """SPEC.md 3 for a domain alone (the sequencer): canonical and valid."""
    raw = text.encode("utf-8")
    if not raw:
        raise AddressError("EmptyDomain")
    if len(raw) > MAX_DOMAIN_LEN:
        raise AddressError("TooLong")
    if any(0x41 <= b <= 0x5A for b in raw):
        raise AddressError("NotCanonical")
    _validate_domain(raw)
    return text


def group_id(creator, identity_key, nonce):
    """SPEC.md 18.2."""
    return sha256(framed(LABELS["GroupId"], creator.encode(), identity_key, nonce))[:16]


def group_state_hash_input(st):
    """SPEC.md 18.5: members in ascending bytewise order of their address."""
    parts = [st["group_id"], st["epoch"].to_bytes(8, "big"), st["title"].encode(),
             st["sequencer"].encode(), st["sequencer_key"]]
    for a in sorted(st["members"], key=lambda a: a.encode()):
        key, role = st["members"][a]
        parts += [a.encode(), key, bytes([role])]
    return framed(LABELS["GroupState"], *parts)


def group_state_hash(st):
    return sha256(group_state_hash_input(st))


def group_sequence_input(gid, epoch, change_hash):
    return framed(LABELS["GroupSequence"], gid, epoch.to_bytes(8, "big"), change_hash)


def encode_group_member(m):
    return (enc_bytes(1, m["address"].encode()) + enc_bytes(2, m["identity_key"])
            + enc_uint(3, m["role"]))


def encode_group_action(kind, a):
    """The reference encoding (SPEC.md 6.3) of one action of GroupChangeBody."""
    members = lambda f, ms: b"".join(enc_bytes_always(f, encode_group_member(m)) for m in ms)  # noqa: E731
    if kind == "create":
        inner = (enc_bytes(1, a["nonce"]) + enc_bytes(2, a["title"].encode())
                 + enc_bytes(3, a["sequencer"].encode()) + enc_bytes(4, a["sequencer_key"])
                 + members(5, a["members"]))
    elif kind == "add":
        inner = members(1, a["members"])
    elif kind == "remove":
        inner = b"".join(enc_bytes_always(1, x.encode()) for x in a["members"])
    elif kind == "leave":
        inner = b""
    elif kind == "set_role":
        inner = enc_bytes(1, a["member"].encode()) + enc_uint(2, a["role"])
    else:
        inner = enc_bytes(1, a["title"].encode())
    return enc_bytes_always(10 + GROUP_ACTIONS.index(kind), inner)


def encode_group_change_body(b):
    return (enc_uint(1, b["version"]) + enc_bytes(2, b["group_id"]) + enc_uint(3, b["epoch"])
            + enc_bytes(4, b["parent"]) + enc_bytes(5, b["author"].encode())
            + enc_bytes(6, b["author_device"]) + enc_uint(7, b["issued_ms"])
            + enc_bytes(8, b["state_hash"]) + encode_group_action(b["kind"], b["action"]))


def encode_group_change(body, signature, sequencer_signature):
    return enc_bytes(1, body) + enc_bytes(2, signature) + enc_bytes(3, sequencer_signature)


def encode_group_snapshot(st):
    ms = sorted(st["members"], key=lambda a: a.encode())
    return (enc_uint(1, PROTOCOL_VERSION) + enc_bytes(2, st["group_id"]) + enc_uint(3, st["epoch"])
            + enc_bytes(4, st["head"]) + enc_bytes(5, st["title"].encode())
            + enc_bytes(6, st["sequencer"].encode()) + enc_bytes(7, st["sequencer_key"])
            + b"".join(enc_bytes_always(8, encode_group_member(
                {"address": a, "identity_key": st["members"][a][0], "role": st["members"][a][1]}))
                for a in ms))


def _canonical_address(text):
    try:
        return parse_address(text, canonical_only=True)
    except AddressError:
        raise GroupError("invalid_address")


def _group_title(title):
    if len(title.encode()) > MAX_GROUP_TITLE_LEN:
        raise GroupError("invalid_field")
    return title


def _group_member(m):
    """VAL-GROUP-06 for one member: address, identity key, role (field order)."""
    address = _canonical_address(m["address"])
    if not valid_public_key(m["identity_key"]):
        raise GroupError("invalid_field")
    if m["role"] not in GROUP_ROLES:
        raise GroupError("invalid_field")
    return {"address": address, "identity_key": bytes(m["identity_key"]), "role": m["role"]}


def _group_members(lst):
    if len(lst) > MAX_GROUP_CHANGE_MEMBERS:
        raise GroupError("too_many_members")
    return [_group_member(m) for m in lst]


def _group_action(kind, a):
    """VAL-GROUP-06: the action's fields in field-number order, a list's length before
    its elements (SPEC.md 18.4)."""
    if kind == "create":
        if len(a["nonce"]) != 16:
            raise GroupError("invalid_field")
        title = _group_title(a["title"])
        try:
            sequencer = parse_domain_canonical(a["sequencer"])
        except AddressError:
            raise GroupError("invalid_address")
        if not valid_public_key(a["sequencer_key"]):
            raise GroupError("invalid_field")
        return {"nonce": bytes(a["nonce"]), "title": title, "sequencer": sequencer,
                "sequencer_key": bytes(a["sequencer_key"]), "members": _group_members(a["members"])}
    if kind == "add":
        return {"members": _group_members(a["members"])}
    if kind == "remove":
        if len(a["members"]) > MAX_GROUP_CHANGE_MEMBERS:
            raise GroupError("too_many_members")
        return {"members": [_canonical_address(x) for x in a["members"]]}
    if kind == "leave":
        return {}
    if kind == "set_role":
        member = _canonical_address(a["member"])
        if a["role"] not in GROUP_ROLES:
            raise GroupError("invalid_field")
        return {"member": member, "role": a["role"]}
    return {"title": _group_title(a["title"])}


def decode_group_change(encoded):
    """SPEC.md 18.4, VAL-GROUP-01 to -12, in order. Returns the decoded change."""
    E = GroupError
    encoded = bytes(encoded)
    if len(encoded) > MAX_GROUP_CHANGE_LEN:
        raise E("too_large")
    try:
        outer = decode("GroupChange", encoded)
        body = decode("GroupChangeBody", outer["body"])
    except DecodeError:
        raise E("decode")
    if body["version"] != PROTOCOL_VERSION:
        raise E("unsupported_version")
    if len(body["group_id"]) != 16:
        raise E("invalid_field")
    if len(body["parent"]) != (0 if body["epoch"] == 0 else 32):
        raise E("invalid_field")
    if len(body["state_hash"]) != 32:
        raise E("invalid_field")
    author = _canonical_address(body["author"])
    kind = body.get("_oneof_action")
    if kind is None:
        raise E("invalid_field")
    action = _group_action(kind, body[kind])
    if (kind == "create") != (body["epoch"] == 0):
        raise E("invalid_change")
    seq_sig = outer["sequencer_signature"]
    if len(seq_sig) not in (0, 64):
        raise E("invalid_field")
    try:
        cert = decode_certificate(body["author_device"])
    except CertificateError:
        raise E("invalid_certificate")
    if cert["address"] != author:
        raise E("author_mismatch")
    if not cert["not_before_ms"] <= body["issued_ms"] <= cert["not_after_ms"]:
        raise E("certificate_not_valid")
    if not strict_verify(cert["device_signing_key"],
                         framed(LABELS["GroupChangeSignature"], outer["body"]), outer["signature"]):
        raise E("bad_signature")
    return {"group_id": body["group_id"], "epoch": body["epoch"], "parent": body["parent"],
            "author": author, "identity_key": cert["identity_key"], "issued_ms": body["issued_ms"],
            "state_hash": body["state_hash"], "kind": kind, "action": action,
            "sequencer_signature": seq_sig,
            "hash": sha256(framed(LABELS["GroupChangeHash"], outer["body"]))}


def _sequenced(ch, key):
    """C4 / A6: present (not_sequenced) and verifying with `key` (bad_sequencer_signature)."""
    if not ch["sequencer_signature"]:
        raise GroupError("not_sequenced")
    if not strict_verify(key, group_sequence_input(ch["group_id"], ch["epoch"], ch["hash"]),
                         ch["sequencer_signature"]):
        raise GroupError("bad_sequencer_signature")


def create_group(ch):
    """SPEC.md 18.4 C1 to C5: the state a creating change makes."""
    E = GroupError
    a = ch["action"]
    if group_id(ch["author"], ch["identity_key"], a["nonce"]) != ch["group_id"]:
        raise E("bad_group_id")
    ms = a["members"]
    if not ms or (ms[0]["address"], ms[0]["identity_key"], ms[0]["role"]) != (
            ch["author"], ch["identity_key"], 2):
        raise E("invalid_change")
    members = {}
    for m in ms:
        if m["address"] in members:
            raise E("duplicate_member")
        members[m["address"]] = (m["identity_key"], m["role"])
    _sequenced(ch, a["sequencer_key"])
    st = {"group_id": ch["group_id"], "epoch": 0, "head": ch["hash"], "title": a["title"],
          "sequencer": a["sequencer"], "sequencer_key": a["sequencer_key"], "members": members}
    if group_state_hash(st) != ch["state_hash"]:
        raise E("state_mismatch")
    return st


def apply_group_change(st, ch):
    """SPEC.md 18.4 A1 to A10: the state after `ch`; `st` is never modified."""
    E = GroupError
    if ch["group_id"] != st["group_id"]:
        raise E("wrong_group")
    e = st["epoch"]
    if ch["epoch"] == e and ch["hash"] != st["head"]:
        try:
            _sequenced(ch, st["sequencer_key"])
        except GroupError:
            raise E("group_conflict")
        raise E("sequencer_equivocation")
    if ch["epoch"] <= e:
        raise E("group_stale")
    if ch["epoch"] != e + 1:
        raise E("group_gap")
    if ch["parent"] != st["head"]:
        raise E("group_conflict")
    _sequenced(ch, st["sequencer_key"])
    author = ch["author"]
    if author not in st["members"]:
        raise E("not_member")
    pinned, role = st["members"][author]
    if pinned != ch["identity_key"]:
        raise E("identity_mismatch")
    members = dict(st["members"])
    title = st["title"]
    kind, a = ch["kind"], ch["action"]
    if kind in ("add", "remove", "set_role", "set_title") and role != 2:
        raise E("not_admin")
    if kind in ("add", "remove") and not a["members"]:
        raise E("invalid_change")
    if kind == "add":
        for m in a["members"]:
            if m["address"] in st["members"]:
                raise E("already_member")
            if m["address"] in members:
                raise E("duplicate_member")
            members[m["address"]] = (m["identity_key"], m["role"])
        if len(members) > MAX_GROUP_MEMBERS:
            raise E("too_many_members")
    elif kind == "remove":
        seen = set()
        for x in a["members"]:
            if x == author:
                raise E("invalid_change")
            if x in seen:
                raise E("duplicate_member")
            seen.add(x)
            if x not in members:
                raise E("no_such_member")
            del members[x]
    elif kind == "leave":
        del members[author]
    elif kind == "set_role":
        if a["member"] not in members:
            raise E("no_such_member")
        if members[a["member"]][1] == a["role"]:
            raise E("invalid_change")
        members[a["member"]] = (members[a["member"]][0], a["role"])
    elif kind == "set_title":
        title = a["title"]
    else:  # a create at epoch > 0 is refused by VAL-GROUP-07 already
        raise E("invalid_change")
    if members and not any(r == 2 for _, r in members.values()):
        raise E("no_admin_left")
    new = dict(st, epoch=e + 1, title=title, members=members)
    if group_state_hash(new) != ch["state_hash"]:
        raise E("state_mismatch")
    new["head"] = ch["hash"]
    return new


def decode_group_snapshot(encoded):
    """SPEC.md 18.6, in the order listed there: length, decoding, version, field forms,
    member count, member order, an admin."""
    E = GroupError
    encoded = bytes(encoded)
    if len(encoded) > MAX_GROUP_SNAPSHOT_LEN:
        raise E("too_large")
    try:
        s = decode("GroupSnapshot", encoded)
    except DecodeError:
        raise E("decode")
    if s["version"] != PROTOCOL_VERSION:
        raise E("unsupported_version")
    if len(s["group_id"]) != 16 or len(s["head"]) != 32:
        raise E("invalid_field")
    title = _group_title(s["title"])
    try:
        sequencer = parse_domain_canonical(s["sequencer"])
    except AddressError:
        raise E("invalid_address")
    if not valid_public_key(s["sequencer_key"]):
        raise E("invalid_field")
    if len(s["members"]) > MAX_GROUP_MEMBERS:
        raise E("too_many_members")
    members = {}
    prev = None
    for raw in s["members"]:
        # Each member's form, then its place: compared with the one before it, equal is a
        # repeated address, smaller is out of order.
        m = _group_member(raw)
        if prev is not None and m["address"].encode() <= prev.encode():
            raise E("duplicate_member" if m["address"] == prev else "invalid_field")
        prev = m["address"]
        members[m["address"]] = (m["identity_key"], m["role"])
    if not any(r == 2 for _, r in members.values()):
        raise E("no_admin_left")
    return {"group_id": s["group_id"], "epoch": s["epoch"], "head": s["head"], "title": title,
            "sequencer": sequencer, "sequencer_key": s["sequencer_key"], "members": members}


# ---------------------------------------------------------------------------------------
# SPEC.md 19: group messages
# ---------------------------------------------------------------------------------------
class GroupMessageError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def check_sender_key(k):
    """SPEC.md 19.2: the field forms of a decoded GroupSenderKey."""
    E = GroupMessageError
    if k["version"] != PROTOCOL_VERSION:
        raise E("unsupported_version")
    if len(k["group_id"]) != 16 or len(k["sender_device"]) != 16 or len(k["chain_key"]) != 32:
        raise E("invalid_field")
    try:
        parse_address(k["sender"], canonical_only=True)
    except AddressError:
        raise E("invalid_address")
    return k


def decode_sender_key(encoded):
    if len(encoded) > MAX_GROUP_SENDER_KEY_LEN:
        raise GroupMessageError("too_large")
    try:
        k = decode("GroupSenderKey", encoded)
    except DecodeError:
        raise GroupMessageError("decode")
    return check_sender_key(k)


def group_message_keys(mk, message_id):
    """SPEC.md 19.1: HKDF-SHA256(salt = message id, ikm = MK, info) -> key, nonce."""
    okm = hkdf_sha256(message_id, mk, framed(LABELS["GroupMessageKeys"]), 44)
    return okm[:32], okm[32:]


class GroupReceiverState:
    """A device's chains in one group (SPEC.md 19.2, 19.3): (sender, device, chain id) ->
    [chain epoch, next iteration, chain key], and skipped positions' message keys."""

    def __init__(self, group_id):
        self.group_id = group_id
        self.chains = {}
        self.skipped = {}

    def add(self, k):
        self.chains.setdefault((k["sender"], k["sender_device"], k["chain_id"]),
                               [k["epoch"], k["iteration"], k["chain_key"]])

    def open(self, state, data, directory):
        """SPEC.md 19.3, VAL-GENV-01 to -17 in order; `state` has the group fields of
        decode_group_snapshot plus `rekey_epoch`. Returns the content json."""
        E = GroupMessageError
        data = bytes(data)
        if len(data) > MAX_ENVELOPE_LEN:
            raise E("too_large")
        try:
            outer = decode("GroupEnvelope", data)
        except DecodeError:
            raise E("decode")
        if outer["version"] != PROTOCOL_VERSION:
            raise E("unsupported_version")
        if len(outer["header"]) > MAX_HEADER_LEN or len(outer["ciphertext"]) > MAX_CIPHERTEXT_LEN:
            raise E("too_large")
        if len(outer["ciphertext"]) < AEAD_TAG_LEN or len(outer["signature"]) != 64:
            raise E("invalid_field")
        try:
            h = decode("GroupEnvelopeHeader", outer["header"])
        except DecodeError:
            raise E("decode")
        if h["version"] != PROTOCOL_VERSION:
            raise E("unsupported_version")
        if (len(h["state_hash"]) != 32 or len(h["sender_device"]) != 16
                or len(h["group_id"]) != 16 or len(h["message_id"]) != 16):
            raise E("invalid_field")
        if h["content_type"] != 1:
            raise E("unsupported_content_type")
        try:
            parse_address(h["sender"], canonical_only=True)
        except AddressError:
            raise E("invalid_address")
        cert = directory.get((h["sender"], h["sender_device"]))  # VAL-GENV-07
        if cert is None:
            raise E("unknown_sender")
        if not cert["not_before_ms"] <= h["timestamp_ms"] <= cert["not_after_ms"]:
            raise E("sender_certificate_not_valid")
        sig_input = framed(LABELS["GroupEnvelopeSignature"], outer["header"],
                           sha256(outer["ciphertext"]))
        if not strict_verify(cert["device_signing_key"], sig_input, outer["signature"]):
            raise E("bad_signature")
        if h["group_id"] != self.group_id or state["group_id"] != self.group_id:
            raise E("wrong_group")
        if h["epoch"] > state["epoch"]:
            raise E("group_gap")
        if h["epoch"] == state["epoch"] and h["state_hash"] != group_state_hash(state):
            raise E("state_mismatch")
        if h["sender"] not in state["members"]:
            raise E("not_member")
        if state["members"][h["sender"]][0] != cert["identity_key"]:
            raise E("identity_mismatch")
        who = (h["sender"], h["sender_device"], h["chain_id"])
        chain = self.chains.get(who)
        if chain is None:
            raise E("unknown_sender_key")
        chain_epoch, nxt, ck = chain
        if h["epoch"] >= state["rekey_epoch"] and chain_epoch < state["rekey_epoch"]:
            raise E("stale_sender_key")
        i = h["iteration"]
        passed = []
        if i < nxt:
            mk = self.skipped.get(who + (i,))
            if mk is None:
                raise E("duplicate")
            advance = None
        else:
            if i - nxt > MAX_GROUP_SKIP:
                raise E("too_far_ahead")
            for j in range(nxt, i):
                mk_j, ck = kdf_ck(ck)
                passed.append((j, mk_j))
            mk, ck = kdf_ck(ck)
            advance = ck
        key, nonce = group_message_keys(mk, h["message_id"])
        try:
            plaintext = ChaCha20Poly1305(key).decrypt(
                nonce, outer["ciphertext"], framed(LABELS["GroupEnvelopeAad"], outer["header"]))
        except InvalidTag:
            raise E("decrypt_failed")
        try:
            content = decode_content(plaintext)
        except ContentError:
            raise E("invalid_content")
        if advance is None:
            del self.skipped[who + (i,)]
        else:
            self.chains[who] = [chain_epoch, i + 1, advance]
            for j, mk_j in passed:
                self.skipped[who + (j,)] = mk_j
        return content


def join_group(snapshot, change, joiner):
    """SPEC.md 18.6: the snapshot, the change applied to it, and the change is an add that
    names the joiner."""
    after = apply_group_change(decode_group_snapshot(snapshot), change)
    if change["kind"] != "add" or joiner not in [m["address"] for m in change["action"]["members"]]:
        raise GroupError("invalid_change")
    return after


# ---------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------
class Checker:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, fn):
        try:
            fn()
            self.passed += 1
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            self.failed += 1
            print("FAIL %s: %s" % (name, e))
            if os.environ.get("VERBOSE"):
                traceback.print_exc()


def eq(what, got, want):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def vector_seed(what):
    """SPEC.md 12: every secret and random value of the vectors."""
    return sha256(b"kogge test vector: " + what.encode())


def unhex(s):
    return bytes.fromhex(s)


def main():
    load = lambda f: json.load(open(os.path.join(HERE, f), encoding="utf-8"))  # noqa: E731
    identity, envelopes, addresses = load("identity.json"), load("envelopes.json"), load("addresses.json")
    sessions = load("sessions.json")
    c = Checker()
    c.check("small-order table", self_test_small_order_table)

    # Labels (SPEC.md 2.3). SPEC.md also reserves labels for a later version: the JSON may
    # list those (the code may already define them) but no label SPEC.md does not name.
    spec = open(os.path.join(HERE, "..", "..", "SPEC.md"), encoding="utf-8").read()
    spec_labels = set(re.findall(r"^\| `(kogge/v1/[^`]+)` \|", spec, re.M))

    def labels():
        in_json = {lab["ascii"] for lab in identity["labels"]}
        for want in LABELS.values():
            assert want.decode() in in_json, "label %s missing from identity.json" % want
        for lab in identity["labels"]:
            assert lab["ascii"] in spec_labels, "label %s is not in SPEC.md 2.3" % lab["ascii"]
            eq(lab["name"] + " hex", lab["ascii"].encode("ascii").hex(), lab["hex"])
            if lab["name"] in LABELS:
                eq(lab["name"], lab["ascii"].encode("ascii"), LABELS[lab["name"]])
        for a in spec_labels:
            assert a.startswith("kogge/v1/")
            for b in spec_labels:
                assert a == b or not b.startswith(a), "label %s is a prefix of %s" % (a, b)
    c.check("labels", labels)

    # SPEC.md's tables say what this checker uses (labels 2.3, small-order points 2.1, limits 9).
    def spec_tables():
        for v in LABELS.values():
            assert v.decode() in spec_labels, "SPEC.md 2.3 lacks %s" % v
        ys = {int.from_bytes(bytes.fromhex(h), "little")
              for h in re.findall(r"^\| [^|]+ \| `([0-9a-f]{64})` \|$", spec, re.M)}
        eq("SPEC.md 2.1 small-order table", ys, SMALL_ORDER_YS)
        limits = {n: int(v) for n, v in re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| (\d+)", spec, re.M)}
        for n in LIMIT_NAMES:
            eq("SPEC.md 9 " + n, limits.get(n), globals()[n])
    c.check("SPEC.md tables", spec_tables)

    # Parties: keys, device ids, certificates, fingerprints (SPEC.md 4, 5)
    parties = {}
    for p in identity["parties"]:
        # What the receiver knows, rebuilt from the seeds alone (checked just below).
        ident = ed25519_public(unhex(p["identity_seed"]))
        parties[p["name"]] = {
            "address": p["address"], "device_id": device_id(ed25519_public(unhex(p["device_signing_seed"]))),
            "agreement_secret": unhex(p["device_agreement_secret"]),
            "signing_seed": unhex(p["device_signing_seed"]),
            "identity": ident, "fingerprint": fingerprint(ident, p["address"]),
            "identity_seed": unhex(p["identity_seed"]),
            "certificate_encoded": unhex(p["certificate"]["encoded"]),
            "certificate": decode("DeviceCertificateBody", unhex(p["certificate"]["body"])),
        }

        def party(p=p):
            user = p["address"].split("@")[0]
            eq("identity_seed", p["identity_seed"], vector_seed(user + " identity").hex())
            eq("device_signing_seed", p["device_signing_seed"],
               vector_seed(p["name"] + " device signing").hex())
            eq("device_agreement_secret", p["device_agreement_secret"],
               vector_seed(p["name"] + " device agreement").hex())
            ident = ed25519_public(unhex(p["identity_seed"]))
            eq("identity_public", ident.hex(), p["identity_public"])
            spk = ed25519_public(unhex(p["device_signing_seed"]))
            eq("device_signing_public", spk.hex(), p["device_signing_public"])
            apk = x25519_public(unhex(p["device_agreement_secret"]))
            eq("device_agreement_public", apk.hex(), p["device_agreement_public"])
            eq("device_id_input", framed(LABELS["DeviceId"], spk).hex(), p["device_id_input"])
            did = device_id(spk)
            eq("device_id", did.hex(), p["device_id"])
            cj = p["certificate"]
            body = encode_certificate_body({
                "version": PROTOCOL_VERSION, "address": p["address"], "identity_key": ident,
                "device_id": did, "device_signing_key": spk, "device_agreement_key": apk,
                "not_before_ms": cj["not_before_ms"], "not_after_ms": cj["not_after_ms"]})
            eq("certificate body", body.hex(), cj["body"])
            isi = framed(LABELS["DeviceCertIdentitySignature"], body)
            dsi = framed(LABELS["DeviceCertDeviceSignature"], body)
            eq("identity_signature_input", isi.hex(), cj["identity_signature_input"])
            eq("device_signature_input", dsi.hex(), cj["device_signature_input"])
            isig = ed25519_sign(unhex(p["identity_seed"]), isi)
            dsig = ed25519_sign(unhex(p["device_signing_seed"]), dsi)
            eq("identity_signature", isig.hex(), cj["identity_signature"])
            eq("device_signature", dsig.hex(), cj["device_signature"])
            enc = encode_certificate(body, isig, dsig)
            eq("certificate encoding", enc.hex(), cj["encoded"])
            cert = decode_certificate(enc)
            eq("certificate address", cert["address"], p["address"])
            fp = fingerprint(ident, p["address"])
            eq("fingerprint", fp.hex(), p["fingerprint"])
            eq("fingerprint_digits", fingerprint_digits(fp), p["fingerprint_digits"])
            eq("certificate as decoded", cert, parties[p["name"]]["certificate"])
        c.check("party " + p["name"], party)

    def safety():
        sn = identity["safety_number"]
        a, b = parties[sn["local"]], parties[sn["remote"]]
        digits = safety_digits(a["fingerprint"], b["fingerprint"])
        eq("safety digits", digits, sn["digits"])
        eq("safety digits symmetric", safety_digits(b["fingerprint"], a["fingerprint"]), digits)
        eq("grouped", " ".join(digits[i:i + 5] for i in range(0, 60, 5)), sn["grouped"])
        pa = qr_payload(a["fingerprint"], b["fingerprint"])
        pb = qr_payload(b["fingerprint"], a["fingerprint"])
        eq("qr_payload_alice", pa.hex(), sn["qr_payload_alice"])
        eq("qr_payload_bob", pb.hex(), sn["qr_payload_bob"])
        eq("alice scans bob", verify_scanned(a["fingerprint"], b["fingerprint"], pb), None)
        eq("bob scans alice", verify_scanned(b["fingerprint"], a["fingerprint"], pa), None)
        eq("alice scans her own", verify_scanned(a["fingerprint"], b["fingerprint"], pa), "mismatch")
    c.check("safety number", safety)

    for neg in identity["certificate_negative"]:
        def cert_negative(neg=neg):
            try:
                decode_certificate(unhex(neg["encoded"]))
            except CertificateError as e:
                eq("error", e.code, neg["expected_error"])
                return
            raise AssertionError("certificate was accepted")
        c.check("certificate negative " + neg["name"], cert_negative)

    directory_all = {(p["address"], p["device_id"]): p["certificate"] for p in parties.values()}

    # Positive envelopes: every intermediate value (SPEC.md 6.3-6.5, 7)
    for pos in envelopes["positive"]:
        v = pos["vector"]

        def positive(v=v, now=pos["now_ms"]):
            snd, rcp = parties[v["sender"]], parties[v["recipient"]]
            eq("message_id", v["message_id"], vector_seed(v["name"] + " message id")[:16].hex())
            eq("ephemeral_secret", v["ephemeral_secret"], vector_seed(v["name"] + " ephemeral").hex())
            plaintext = encode_padded(v["content"])
            eq("plaintext", plaintext.hex(), v["plaintext"])
            eph_secret = unhex(v["ephemeral_secret"])
            eph_public = x25519_public(eph_secret)
            eq("ephemeral_public", eph_public.hex(), v["ephemeral_public"])
            rcp_public = rcp["certificate"]["device_agreement_key"]
            shared = x25519(eph_secret, rcp_public)
            assert shared is not None
            eq("shared_secret", shared.hex(), v["shared_secret"])
            eq("hkdf_salt", (eph_public + rcp_public).hex(), v["hkdf_salt"])
            eq("hkdf_info", framed(LABELS["OneShotSealKdf"]).hex(), v["hkdf_info"])
            key, nonce = one_shot_keys(shared, eph_public, rcp_public)
            eq("key", key.hex(), v["key"])
            eq("nonce", nonce.hex(), v["nonce"])
            header = encode_header({
                "version": PROTOCOL_VERSION, "sender": snd["address"],
                "sender_device": snd["device_id"], "recipient": rcp["address"],
                "recipient_device": rcp["device_id"], "message_id": unhex(v["message_id"]),
                "timestamp_ms": v["timestamp_ms"], "content_type": 1, "payload_kind": 1,
                "ephemeral_key": eph_public})
            eq("header", header.hex(), v["header"])
            eq("aad", aad(header).hex(), v["aad"])
            ct = ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad(header))
            eq("ciphertext", ct.hex(), v["ciphertext"])
            eq("ciphertext_sha256", sha256(ct).hex(), v["ciphertext_sha256"])
            si = signature_input(header, ct)
            eq("signature_input", si.hex(), v["signature_input"])
            sig = ed25519_sign(snd["signing_seed"], si)
            eq("signature", sig.hex(), v["signature"])
            assert strict_verify(snd["certificate"]["device_signing_key"], si, sig)
            env = encode_envelope(header, ct, sig)
            eq("envelope", env.hex(), v["envelope"])
            # ... and open it as a receiver would, from the bytes alone.
            window = ReplayWindow()
            h, content = open_envelope(env, rcp, directory_all, window, now)
            eq("content", content, v["content"])
            eq("header timestamp", h["timestamp_ms"], v["timestamp_ms"])
            eq("replay window size", window.size(), 1)
        c.check("positive envelope " + v["name"], positive)

    # Negative envelopes (SPEC.md 6.6, 8, 10)
    alice_cert = parties["alice"]["certificate"]
    for neg in envelopes["negative"]:
        def negative(neg=neg):
            env = neg["envelope"]
            if isinstance(env, dict):
                data = bytes([int(env["fill"]["byte"], 16)]) * env["fill"]["len"]
            else:
                data = unhex(env)
            directory = {}
            if neg["sender_known"]:
                directory[(alice_cert["address"], alice_cert["device_id"])] = alice_cert
            me = parties[neg["opened_by"]]
            window = ReplayWindow()
            if neg["open_twice"]:
                open_envelope(data, me, directory, window, neg["now_ms"])
            before = window.state()
            try:
                open_envelope(data, me, directory, window, neg["now_ms"])
            except OpenError as e:
                eq("error", e.code, neg["expected_error"])
                eq("window unchanged by a failed open", window.state(), before)
                return
            raise AssertionError("envelope was accepted")
        c.check("negative envelope " + neg["name"], negative)

    # Replay window floor (SPEC.md 8): not in the JSON, checked against the rules directly.
    def floor_rule():
        w = ReplayWindow(capacity=2)
        now = 1_750_000_000_000
        for i in range(3):
            w.accept("a@x.y", bytes([i]) * 16, now + i, now)
        eq("remembered", w.size(), 2)
        eq("floor", w.floor("a@x.y"), now + 1)
        try:
            w.accept("a@x.y", bytes([0]) * 16, now, now)
            raise AssertionError("evicted id accepted")
        except OpenError as e:
            eq("evicted id", e.code, "too_old")
        # Per sender: another sender's floor and capacity are its own, so a's flood did
        # not make the window forget (or refuse) anything of b's.
        eq("b's floor", w.floor("b@x.y"), 0)
        w.accept("b@x.y", bytes([0]) * 16, now, now)
        w.accept("b@x.y", bytes([1]) * 16, now + 1, now)
        eq("remembered", w.size(), 4)
        try:
            w.accept("b@x.y", bytes([0]) * 16, now, now)
            raise AssertionError("replay accepted")
        except OpenError as e:
            eq("replay of b", e.code, "replay")
        # Entries older than the maximum age are forgotten too, raising the floor.
        later = now + DEFAULT_MAX_MESSAGE_AGE_MS + 10
        w.accept("b@x.y", bytes([2]) * 16, later, later)
        eq("b after expiry", sorted(w.senders["b@x.y"]["ids"]), [bytes([2]) * 16])
        eq("b's floor after expiry", w.floor("b@x.y"), now + 2)
    c.check("replay floor", floor_rule)

    # Rules of SPEC.md 2.1 and 7.4 that the JSON does not exercise, on synthetic input.
    def strict_rules():
        v = envelopes["positive"][0]["vector"]
        seed = parties[v["sender"]]["signing_seed"]
        pub = parties[v["sender"]]["certificate"]["device_signing_key"]
        msg, sig = unhex(v["signature_input"]), unhex(v["signature"])
        assert strict_verify(pub, msg, sig) and cofactorless_verify(pub, msg, sig)
        s_plus_l = (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
        assert not strict_verify(pub, msg, sig[:32] + s_plus_l), "S >= L accepted"
        for y in SMALL_ORDER_YS:
            enc = y.to_bytes(32, "little")
            assert not strict_verify(pub, msg, enc + sig[32:]), "small-order R accepted"
            assert not valid_public_key(enc), "small-order A accepted"
        non_canonical = (P + 3).to_bytes(32, "little")  # decodes mod p to a valid point
        assert pt_decode(non_canonical) is None and not valid_public_key(non_canonical)
        assert not strict_verify(pub, msg + b"x", sig)
        # Keys must be torsion-free: the honest key plus a point of order 8 is a canonical
        # encoding of a point that is not of small order, and is still refused.
        a_pt = public_key_point(pub)
        torsion = [pt for y in SMALL_ORDER_YS for sg in (0, 1)
                   for pt in [pt_decode((y | sg << 255).to_bytes(32, "little"))]
                   if pt is not None and not pt_is_identity(pt)]
        eq("small-order points other than the neutral element", len(torsion), 7)
        for t in torsion:
            mixed = pt_encode(pt_add(a_pt, t))
            assert acceptable_point(mixed) is not None and not valid_public_key(mixed), \
                "key with a small-order component accepted"
        # A signer who adds a small-order component to its own R: the residual is that
        # component, which the cofactored equation accepts and the cofactorless one
        # refuses. A residual with a prime-order part (R + B) is refused by both.
        h = hashlib.sha512(seed).digest()
        a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
        r = int.from_bytes(hashlib.sha512(h[32:] + msg).digest(), "little") % L
        assert pt_encode(pt_mul(r, BASE)) == sig[:32]  # RFC 8032 signing, reproduced

        def sign_with_r(r_pt):
            rb = pt_encode(r_pt)
            k = int.from_bytes(hashlib.sha512(rb + pub + msg).digest(), "little") % L
            return rb + ((r + k * a) % L).to_bytes(32, "little")
        for t in torsion:
            sig2 = sign_with_r(pt_add(pt_mul(r, BASE), t))
            assert strict_verify(pub, msg, sig2), "torsion in R refused by the cofactored check"
            assert not cofactorless_verify(pub, msg, sig2)
        bad = sign_with_r(pt_add(pt_mul(r, BASE), BASE))
        assert not strict_verify(pub, msg, bad) and not cofactorless_verify(pub, msg, bad)
    c.check("strict Ed25519 rules", strict_rules)

    def content_rules():
        eq("empty plaintext", decode_content(b""), {"unknown": {}})
        eq("unknown body field 5", decode_content(bytes.fromhex("2a020801")), {"unknown": {}})
        future_kind = enc_bytes_always(2, enc_uint(1, 9) + enc_bytes_always(2, bytes(16)))
        eq("unknown receipt kind", decode_content(future_kind), {"unknown": {}})
        for bad in [enc_bytes_always(2, enc_bytes_always(2, bytes(16))),  # kind 0
                    enc_bytes_always(2, enc_uint(1, 1)),  # no ids
                    enc_bytes_always(2, enc_uint(1, 1) + enc_bytes_always(2, bytes(15))),
                    enc_bytes_always(1, enc_bytes(3, bytes(15))),  # reply_to of 15 bytes
                    enc_bytes_always(1, enc_bytes(1, b"text/plain\n")),  # media type
                    bytes.fromhex("0a04120 2fffe".replace(" ", "")),  # invalid UTF-8
                    bytes.fromhex("0a0912"), bytes([0xFF, 0xFF])]:  # truncated, bad tag
            try:
                decode_content(bad)
                raise AssertionError("content %s accepted" % bad.hex())
            except ContentError:
                pass
        for n in range(0, 300):
            p = encode_padded({"text": {"media_type": "", "body": "x" * n, "reply_to": None}})
            assert len(p) % PADDING_BLOCK == 0 and len(p) >= n + 3
    c.check("content rules", content_rules)

    # Sessions (SPEC.md 15, vectors of SPEC.md 12): prekeys, bundle, setup, messages.
    not_before, t0 = 1_700_000_000_000, 1_750_000_000_000

    def session_directory():
        """Both users' signed device lists (serial 1, SPEC.md 12), checked as SPEC.md 15.6
        says; the directory holds exactly the devices listed."""
        lists = DeviceLists()
        for n in ("alice", "bob"):
            p = parties[n]
            body = encode_device_list_body(p["address"], p["identity"], 1, not_before,
                                           [p["certificate_encoded"]])
            events = lists.update(sign_device_list(p["identity_seed"], body))
            eq("events", events, [device_event("identity_first_seen", p["address"], identity_key=p["identity"]),
                                  device_event("device_added", p["address"], device_id=p["device_id"])])
        return {(c["address"], c["device_id"]): (c, enc)
                for _, devices in lists.lists.values() for c, enc in devices}

    def run_session_case(case, upto=None):
        """Replays a case: both devices, the setup, then its messages (the first `upto`
        only, if given). Returns (alice, bob, envelopes, directory)."""
        name, alice, bob = case["name"], parties["alice"], parties["bob"]
        pk = case["bob_prekeys"]
        eq("created_ms", pk["created_ms"], not_before)
        # SPEC.md 15.2: prekeys from their secrets, signed by Bob's device key.
        spk_secret = unhex(pk["signed_prekey"]["secret"])
        eq("signed prekey secret", spk_secret, vector_seed("bob signed prekey"))
        kem_seed = unhex(pk["kem_prekey"]["seed"])
        eq("kem seed", kem_seed, vector_seed("bob kem prekey d") + vector_seed("bob kem prekey z"))
        spk_pub = x25519_public(spk_secret)
        eq("signed prekey public", spk_pub.hex(), pk["signed_prekey"]["public"])
        ek, dk = kem_keygen(kem_seed)
        eq("kem public", ek.hex(), pk["kem_prekey"]["public"])
        eq("prekey ids", (pk["signed_prekey"]["id"], pk["kem_prekey"]["id"]), (1, 2))
        spk_enc = sign_prekey(bob["signing_seed"], encode_prekey_body(
            bob["device_id"], 1, PREKEY_KIND_X25519, False, spk_pub, not_before))
        eq("signed prekey encoded", spk_enc.hex(), pk["signed_prekey"]["encoded"])
        kem_enc = sign_prekey(bob["signing_seed"], encode_prekey_body(
            bob["device_id"], 2, PREKEY_KIND_ML_KEM_768, False, ek, not_before))
        eq("kem prekey encoded", kem_enc.hex(), pk["kem_prekey"]["encoded"])
        opk_enc = opk_secret = None
        if pk["one_time_prekey"] is not None:
            opk_secret = unhex(pk["one_time_prekey"]["secret"])
            eq("one-time prekey secret", opk_secret, vector_seed("bob one-time prekey"))
            opk_pub = x25519_public(opk_secret)
            eq("one-time prekey public", opk_pub.hex(), pk["one_time_prekey"]["public"])
            eq("one-time prekey id", pk["one_time_prekey"]["id"], 3)
            opk_enc = sign_prekey(bob["signing_seed"], encode_prekey_body(
                bob["device_id"], 3, PREKEY_KIND_X25519, True, opk_pub, not_before))
            eq("one-time prekey encoded", opk_enc.hex(), pk["one_time_prekey"]["encoded"])
        for enc in (spk_enc, kem_enc, opk_enc):
            if enc is not None:
                decode_signed_prekey(enc, bob["certificate"])
        st = case["setup"]
        bundle_enc = encode_bundle(bob["certificate_encoded"], spk_enc, kem_enc, opk_enc)
        eq("bundle", bundle_enc.hex(), st["bundle"])
        bundle = decode_bundle(bundle_enc)
        # The devices, Bob holding his prekey secrets.
        directory = session_directory()
        A, B = SessionDevice(alice, directory), SessionDevice(bob, directory)
        B.signed[1] = {"secret": spk_secret, "public": spk_pub, "base_keys": set()}
        B.kem[2] = {"dk": dk, "public": ek}
        if opk_secret is not None:
            B.one_time[3] = {"secret": opk_secret, "public": x25519_public(opk_secret)}
        # SPEC.md 15.3: setup.
        base_secret = vector_seed(name + " alice base key")
        eq("base_secret", st["base_secret"], base_secret.hex())
        eq("base_public", st["base_public"], x25519_public(base_secret).hex())
        kem_m = vector_seed(name + " alice kem randomness")
        eq("kem_randomness", st["kem_randomness"], kem_m.hex())
        r0 = vector_seed(name + " alice ratchet key 0")
        eq("initiator_ratchet_secret", st["initiator_ratchet_secret"], r0.hex())
        _, tr = A.initiate(bundle, base_secret, kem_m, r0)
        eq("dh", [d.hex() for d in tr["dh"]], st["dh"])
        eq("dh count", len(tr["dh"]), 4 if opk_secret else 3)
        eq("kem_ciphertext", tr["kem_ciphertext"].hex(), st["kem_ciphertext"])
        eq("kem_shared_secret", tr["kem_shared_secret"].hex(), st["kem_shared_secret"])
        eq("decapsulated", kem_decapsulate(dk, tr["kem_ciphertext"]), tr["kem_shared_secret"])
        eq("root_key", tr["root_key"].hex(), st["root_key"])
        # SPEC.md 15.4: the messages, each sealed by one side and received by the other.
        devices = {"alice": A, "bob": B}
        steps = {"alice": 0, "bob": 0}
        envs = []
        for i, m in enumerate(case["messages"][:upto], 1):
            frm = m["from"]
            to = "bob" if frm == "alice" else "alice"
            peer = (parties[to]["address"], parties[to]["device_id"])
            mid = vector_seed("%s m%d id" % (name, i))[:16]
            eq("message_id", m["message_id"], mid.hex())
            eq("timestamp_ms", m["timestamp_ms"], t0)
            t = devices[frm].seal(peer, mid, t0, m["content"])
            for f in ("sender_ratchet_secret", "root_key", "chain_key", "message_key", "aead_key",
                      "nonce", "session_header", "header", "ciphertext", "signature", "envelope"):
                eq("m%d %s" % (i, f), t[f].hex(), m[f])
            eq("m%d message_number" % i, t["message_number"], m["message_number"])
            eq("m%d sequence" % i, t["sequence"], m["sequence"])
            assert strict_verify(parties[frm]["certificate"]["device_signing_key"],
                                 t["signature_input"], t["signature"])
            sh = decode("SessionHeader", t["session_header"])
            eq("m%d carries the setup" % i, "setup" in sh, i == 1)
            steps[to] += 1
            new_secret = vector_seed("%s %s ratchet key %d" % (name, to, steps[to]))
            eq("m%d receiver_new_ratchet_secret" % i, m["receiver_new_ratchet_secret"], new_secret.hex())
            h, content, missing, new = devices[to].receive(t["envelope"], t0, new_secret)
            eq("m%d content" % i, content, m["content"])
            eq("m%d missing" % i, missing, [])
            eq("m%d starts a session" % i, new, i == 1)
            eq("m%d receiver's ratchet secret" % i, devices[to].sessions[
                (parties[frm]["address"], parties[frm]["device_id"])][0]["ratchet"].dhs, new_secret)
            envs.append(t["envelope"])
        if envs and opk_secret is not None:
            eq("one-time prekey deleted on use", B.one_time, {})
        eq("base key remembered", B.signed[1]["base_keys"], {x25519_public(base_secret)} if envs else set())
        return A, B, envs, directory

    for case in sessions["cases"]:
        c.check("session " + case["name"], lambda case=case: run_session_case(case))

    def refused(dev, data, now, code, secret=b"\x07" * 32):
        before = dev.state()
        try:
            dev.receive(data, now, secret)
        except (OpenError, SessionError) as e:
            eq("error", e.code, code)
            eq("state unchanged by a failed receive", dev.state(), before)
            return
        raise AssertionError("accepted; wanted %s" % code)

    # Rules of SPEC.md 15 that the JSON does not exercise, on the vector sessions.
    def session_rules():
        for case in sessions["cases"]:
            A, B, envs, directory = run_session_case(case)
            a_peer = (parties["bob"]["address"], parties["bob"]["device_id"])
            b_peer = (parties["alice"]["address"], parties["alice"]["device_id"])
            refused(B, envs[0], t0, "replay")  # the replay window, checked before the ratchet
            saved = B.window
            B.window = ReplayWindow()  # a window that forgot: the ratchet refuses it too
            refused(B, envs[2], t0, "duplicate")
            sessions_saved = B.sessions
            B.sessions = {}  # ... and with the session gone, the setup is not accepted again
            refused(B, envs[0], t0, "unknown_prekey" if B.signed[1]["base_keys"] and
                    case["bob_prekeys"]["one_time_prekey"] else "replayed_setup")
            refused(B, envs[2], t0, "no_session")
            B.window, B.sessions = saved, sessions_saved
            # Out of order within a chain: m6 first (m4, m5 reported missing), then m4, m5.
            out = [A.seal(a_peer, bytes([0x40 + i]) * 16, t0, {"text": {
                "media_type": "", "body": "m%d" % i, "reply_to": None}}) for i in (4, 5, 6)]
            _, content, missing, _ = B.receive(out[2]["envelope"], t0, None)
            eq("m6", content["text"]["body"], "m6")
            eq("missing", missing, [out[0]["sequence"], out[1]["sequence"]])
            eq("skipped keys", len(B.sessions[b_peer][0]["ratchet"].skipped), 2)
            for t in out[:2]:
                _, _, missing, _ = B.receive(t["envelope"], t0, None)
                eq("missing", missing, [])
            eq("skipped keys used up", B.sessions[b_peer][0]["ratchet"].skipped, {})
            # A validly signed message that the AEAD refuses, and one whose content is not
            # a Content: refused, nothing changes.
            bad = A.seal(a_peer, b"\x50" * 16, t0, None, plaintext=b"\xff\xff")
            refused(B, bad["envelope"], t0, "invalid_content")
            sealed = A.seal(a_peer, b"\x51" * 16, t0, {"unknown": {}}, plaintext=b"")
            forged = bytearray(sealed["ciphertext"])
            forged[0] ^= 1
            hdr = sealed["header"]
            sig = ed25519_sign(parties["alice"]["signing_seed"], signature_input(hdr, bytes(forged)))
            refused(B, encode_envelope(hdr, bytes(forged), sig), t0, "decrypt_failed")
            # Gaps: MAX_SKIP_PER_CHAIN + 1 ahead is refused, MAX_SKIP_PER_CHAIN is fine.
            r, nr = A.sessions[a_peer][0]["ratchet"], B.sessions[b_peer][0]["ratchet"].nr
            saved = copy.deepcopy(r)
            for gap, mid in ((MAX_SKIP_PER_CHAIN + 1, b"\x52"), (MAX_SKIP_PER_CHAIN, b"\x53")):
                A.sessions[a_peer][0]["ratchet"] = r = copy.deepcopy(saved)
                while r.ns < nr + gap:
                    r.next_send()
                t = A.seal(a_peer, mid * 16, t0, {"text": {"media_type": "", "body": "far",
                                                            "reply_to": None}})
                if gap > MAX_SKIP_PER_CHAIN:
                    refused(B, t["envelope"], t0, "too_far_ahead")
                else:
                    _, content, _, _ = B.receive(t["envelope"], t0, None)
                    eq("1000 ahead", content["text"]["body"], "far")
            eq("skipped keys kept", len(B.sessions[b_peer][0]["ratchet"].skipped), MAX_SKIP_PER_CHAIN)
            # Bob answers; the reply carries no setup, and Alice's later messages neither.
            rep = B.seal(b_peer, b"\x54" * 16, t0, {"text": {"media_type": "", "body": "re",
                                                              "reply_to": None}})
            assert "setup" not in decode("SessionHeader", rep["session_header"])
            A.receive(rep["envelope"], t0, b"\x09" * 32)
            # Skipped keys expire after SKIPPED_KEY_MAX_AGE_MS (at the next receive).
            later = t0 + SKIPPED_KEY_MAX_AGE_MS + 1
            late = A.seal(a_peer, b"\x55" * 16, later, {"text": {"media_type": "", "body": "late",
                                                                  "reply_to": None}})
            B.receive(late["envelope"], later, b"\x0a" * 32)
            eq("skipped keys expired", B.sessions[b_peer][0]["ratchet"].skipped, {})
    c.check("session rules", session_rules)

    # Bundles and prekeys (SPEC.md 15.2) that must be refused, with their codes.
    def prekey_rules():
        case = sessions["cases"][0]
        bob, bob2 = parties["bob"], parties["bob2"]
        pk = case["bob_prekeys"]
        spk, kem, opk = (unhex(pk[k]["encoded"]) for k in ("signed_prekey", "kem_prekey",
                                                           "one_time_prekey"))
        cert = bob["certificate_encoded"]
        decode_bundle(encode_bundle(cert, spk, kem, opk))

        def bundle_error(enc, code):
            try:
                decode_bundle(enc)
            except PrekeyError as e:
                eq("error", e.code, code)
                return
            raise AssertionError("bundle accepted; wanted %s" % code)
        bundle_error(encode_bundle(cert, spk, kem, opk) + bytes(MAX_PREKEY_BUNDLE_LEN), "too_large")
        bundle_error(b"\x0a\x05", "decode")
        bundle_error(encode_bundle(cert[:-1], spk, kem, opk), "invalid_certificate")
        bundle_error(enc_bytes(1, cert) + enc_bytes_always(3, kem), "invalid_field")
        bundle_error(encode_bundle(cert, kem, spk, opk), "wrong_kind")
        bundle_error(encode_bundle(cert, opk, kem, None), "wrong_kind")
        bundle_error(encode_bundle(cert, spk, kem, spk), "wrong_kind")
        bundle_error(encode_bundle(bob2["certificate_encoded"], spk, kem, opk), "wrong_device")
        tampered = decode("SignedPrekey", opk)
        bad_sig = encode_signed_prekey(tampered["body"], bytes([tampered["signature"][0] ^ 1])
                                       + tampered["signature"][1:])
        bundle_error(encode_bundle(cert, spk, kem, bad_sig), "bad_prekey_signature")

        def body_error(body, code):
            try:
                decode_signed_prekey(sign_prekey(bob["signing_seed"], body), bob["certificate"])
            except PrekeyError as e:
                eq("error", e.code, code)
                return
            raise AssertionError("prekey accepted; wanted %s" % code)
        key = bytes(32)
        body_error(enc_uint(1, 2), "unsupported_version")
        body_error(encode_prekey_body(bob["device_id"][:15], 5, 1, True, key, 0), "invalid_field")
        body_error(encode_prekey_body(bob["device_id"], 0, 1, True, key, 0), "invalid_field")
        body_error(encode_prekey_body(bob["device_id"], 5, 3, True, key, 0), "invalid_field")
        body_error(encode_prekey_body(bob["device_id"], 5, 1, True, key[:31], 0), "invalid_field")
        body_error(encode_prekey_body(bob["device_id"], 5, 2, False, b"\xff" * KEM_PUBLIC_KEY_LEN, 0),
                   "invalid_field")
        body_error(encode_prekey_body(bob2["device_id"], 5, 1, True, key, 0), "wrong_device")
    c.check("prekey rules", prekey_rules)

    # Device lists (SPEC.md 15.6) that must be refused, and the tracker's rules.
    def device_list_rules():
        bob, bob2, alice = parties["bob"], parties["bob2"], parties["alice"]

        def signed(serial, devices, seed=bob["identity_seed"], ident=bob["identity"],
                   address=bob["address"]):
            return sign_device_list(seed, encode_device_list_body(address, ident, serial,
                                                                  not_before, devices))

        def list_error(enc, code):
            try:
                decode_device_list(enc)
            except DeviceListError as e:
                eq("error", e.code, code)
                return
            raise AssertionError("list accepted; wanted %s" % code)
        c1, c2 = bob["certificate_encoded"], bob2["certificate_encoded"]
        list_error(bytes(MAX_DEVICE_LIST_LEN + 1), "too_large")
        list_error(b"\x0a\x05", "decode")
        list_error(signed(1, []), "empty")
        list_error(signed(1, [c1] * (MAX_DEVICES_PER_USER + 1)), "too_many_devices")
        list_error(signed(1, [c1, c1]), "duplicate_device")
        list_error(signed(1, [c1, alice["certificate_encoded"]]), "foreign_device")
        list_error(signed(1, [c1, c2[:-1]]), "invalid_certificate")
        list_error(signed(1, [c1], seed=alice["identity_seed"]), "bad_signature")
        list_error(signed(1, [c1], address="Bob@two.example"), "invalid_address")
        list_error(signed(1, [c1], ident=bytes(32)), "invalid_field")
        lists = DeviceLists()
        lists.update(signed(2, [c1]))
        for serial in (1, 2):
            try:
                lists.update(signed(serial, [c1, c2]))
                raise AssertionError("stale list accepted")
            except DeviceListError as e:
                eq("error", e.code, "stale")
        eq("added", lists.update(signed(3, [c2, c1])),
           [device_event("device_added", bob["address"], device_id=bob2["device_id"])])
        eq("removed", lists.update(signed(4, [c2])),
           [device_event("device_removed", bob["address"], device_id=bob["device_id"])])
        # Lists are tracked per address: another user's list is trusted on first use. (A
        # change of identity key for one address is in device_lists.json's tracker vectors.)
        eq("another address", lists.update(signed(1, [alice["certificate_encoded"]],
                                                  seed=alice["identity_seed"], ident=alice["identity"],
                                                  address=alice["address"])),
           [device_event("identity_first_seen", alice["address"], identity_key=alice["identity"]),
            device_event("device_added", alice["address"], device_id=alice["device_id"])])
    c.check("device list rules", device_list_rules)

    def hex_or_fill(v):
        """A byte string of the vectors: hex, {"fill": {"byte", "len"}}, or
        {"concat": [part, ...]} of those."""
        if isinstance(v, dict) and "concat" in v:
            return b"".join(hex_or_fill(x) for x in v["concat"])
        if isinstance(v, dict):
            return bytes([int(v["fill"]["byte"], 16)]) * v["fill"]["len"]
        return unhex(v)

    # device_lists.json (SPEC.md 15.6): lists rebuilt from the seeds, refused lists, and
    # tracker sequences.
    device_lists = load("device_lists.json")
    new_id = device_lists["new_identity"]

    def new_identity():
        """Bob after an identity reset: keys from their seeds (SPEC.md 12), certificate (4.3)."""
        for field, what in (("identity_seed", "bob new identity"),
                            ("device_signing_seed", "bob new device signing"),
                            ("device_agreement_secret", "bob new device agreement")):
            eq(field, new_id[field], vector_seed(what).hex())
        ident = ed25519_public(unhex(new_id["identity_seed"]))
        eq("identity_public", ident.hex(), new_id["identity_public"])
        spk = ed25519_public(unhex(new_id["device_signing_seed"]))
        eq("device_id", device_id(spk).hex(), new_id["device_id"])
        validity = parties["bob"]["certificate"]
        body = encode_certificate_body({
            "version": PROTOCOL_VERSION, "address": new_id["address"], "identity_key": ident,
            "device_id": device_id(spk), "device_signing_key": spk,
            "device_agreement_key": x25519_public(unhex(new_id["device_agreement_secret"])),
            "not_before_ms": validity["not_before_ms"], "not_after_ms": validity["not_after_ms"]})
        isig = ed25519_sign(unhex(new_id["identity_seed"]),
                            framed(LABELS["DeviceCertIdentitySignature"], body))
        dsig = ed25519_sign(unhex(new_id["device_signing_seed"]),
                            framed(LABELS["DeviceCertDeviceSignature"], body))
        enc = encode_certificate(body, isig, dsig)
        eq("certificate", enc.hex(), new_id["certificate"])
        eq("address", decode_certificate(enc)["address"], new_id["address"])
    c.check("device list new identity", new_identity)

    list_certs = {n: p["certificate_encoded"] for n, p in parties.items()}
    list_certs[new_id["name"]] = unhex(new_id["certificate"])
    list_seeds = {n: p["identity_seed"] for n, p in parties.items()}
    list_seeds[new_id["name"]] = unhex(new_id["identity_seed"])
    for pos in device_lists["positive"]:
        def list_positive(pos=pos):
            seed = list_seeds[pos["identity"]]
            ident = ed25519_public(seed)
            eq("identity_public", ident.hex(), pos["identity_public"])
            eq("issued_ms", pos["issued_ms"], not_before)
            certs = [list_certs[d] for d in pos["devices"]]
            body = encode_device_list_body(pos["address"], ident, pos["serial"], pos["issued_ms"], certs)
            eq("body", body.hex(), pos["body"])
            si = framed(LABELS["DeviceList"], body)
            eq("signature_input", si.hex(), pos["signature_input"])
            eq("signature", ed25519_sign(seed, si).hex(), pos["signature"])
            enc = sign_device_list(seed, body)
            eq("encoded", enc.hex(), pos["encoded"])
            b, devices = decode_device_list(enc, fetched_for=pos["address"])
            eq("serial", b["serial"], pos["serial"])
            eq("devices", [e for _, e in devices], certs)
            if pos["name"] in ("alice", "bob"):
                # The lists the session vectors use (serial 1, the party's one device).
                p = parties[pos["name"]]
                eq("session list", sign_device_list(p["identity_seed"], encode_device_list_body(
                    p["address"], p["identity"], 1, not_before, [p["certificate_encoded"]])), enc)
        c.check("device list " + pos["name"], list_positive)

    for neg in device_lists["negative"]:
        def list_negative(neg=neg):
            try:
                decode_device_list(hex_or_fill(neg["encoded"]), fetched_for=neg["fetched_for"])
            except DeviceListError as e:
                eq("error", e.code, neg["expected_error"])
                return
            raise AssertionError("device list was accepted")
        c.check("device list negative " + neg["name"], list_negative)

    list_bytes = {p["name"]: unhex(p["encoded"]) for p in device_lists["positive"]}
    for seq in device_lists["tracker"]:
        def tracker(seq=seq):
            lists = DeviceLists()
            for i, step in enumerate(seq["steps"], 1):
                before = copy.deepcopy(lists.lists)
                try:
                    events = lists.update(list_bytes[step["list"]])
                except DeviceListError as e:
                    eq("step %d error" % i, e.code, step["expected_error"])
                    eq("step %d events" % i, step["events"], [])
                    eq("step %d: a refused list changes nothing" % i, lists.lists, before)
                    continue
                eq("step %d error" % i, None, step["expected_error"])
                eq("step %d events" % i, events, step["events"])
        c.check("device list tracker " + seq["name"], tracker)

    # sessions.json "negative": refused prekeys (SPEC.md 15.2 VAL-PREKEY), bundles
    # (VAL-BUNDLE) and messages, each received by Bob in the state the vector names
    # (SPEC.md 15.3-15.5); a refused message must change nothing.
    session_negative = sessions["negative"]
    for neg in session_negative["prekeys"]:
        def prekey_negative(neg=neg):
            try:
                decode_signed_prekey(hex_or_fill(neg["encoded"]), parties[neg["owner"]]["certificate"])
            except PrekeyError as e:
                eq("error", e.code, neg["expected_error"])
                return
            raise AssertionError("prekey was accepted")
        c.check("prekey negative " + neg["name"], prekey_negative)
    for neg in session_negative["bundles"]:
        def bundle_negative(neg=neg):
            try:
                decode_bundle(hex_or_fill(neg["encoded"]))
            except PrekeyError as e:
                eq("error", e.code, neg["expected_error"])
                return
            raise AssertionError("bundle was accepted")
        c.check("bundle negative " + neg["name"], bundle_negative)
    for neg in session_negative["receive"]:
        def receive_negative(neg=neg):
            eq("receiver", neg["receiver"], "bob")
            case = next(cs for cs in sessions["cases"] if cs["name"] == neg["case"])
            _, B, _, _ = run_session_case(case, upto=neg["after_messages"])
            if neg["forget_sessions"]:
                del B.sessions[(parties["alice"]["address"], parties["alice"]["device_id"])]
            if neg["forget_replay_window"]:
                B.window = ReplayWindow()
            refused(B, hex_or_fill(neg["envelope"]), neg["now_ms"], neg["expected_error"])
        c.check("session negative " + neg["name"], receive_negative)

    # protocol.json (SPEC.md 16): connection authentication, example frames, refused frames.
    protocol = load("protocol.json")
    list_by_name = {p["name"]: unhex(p["encoded"]) for p in device_lists["positive"]}

    def spec_frame_table():
        """SPEC.md 16.2's table names every rule this checker applies, with its bound."""
        sec = spec[spec.index("### 16.2 Frames"):spec.index("### 16.3 ")]
        sec = sec[sec.index("**Structural rules.**"):sec.index("**Frame sizes.**")]
        rows, message = {}, None
        for line in sec.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 3 or not line.startswith("| ") or cells[0] == "Message":
                continue
            if cells[0]:
                message = re.findall(r"`([A-Za-z]+)`", cells[0])[0]
            for field in re.findall(r"`([a-z_]+)`", cells[1]):
                rows["%s.%s" % (message, field)] = cells[2]
        for name, rules in FRAME_RULES.items():
            for field, rule, bound in rules:
                field = field.split("+")[0]
                text = rows.get("%s.%s" % (name, field))
                assert text is not None, "SPEC.md 16.2 has no rule for %s.%s" % (name, field)
                if rule == "present":
                    assert text.startswith("present"), "SPEC.md 16.2 %s.%s: %r" % (name, field, text)
                elif rule == "empty_with":
                    assert "empty if `body` is `%s`" % bound in text, \
                        "SPEC.md 16.2 %s.%s: %r" % (name, field, text)
                elif bound is not None:
                    assert re.search(r"\b%d\b" % bound, text), \
                        "SPEC.md 16.2 %s.%s: %r lacks %d" % (name, field, text, bound)
                elif rule == "set":
                    assert text.startswith("set"), "SPEC.md 16.2 %s.%s: %r" % (name, field, text)
                else:
                    assert "at least 1" in text, "SPEC.md 16.2 %s.%s: %r" % (name, field, text)
        # The two rows left are "an Error as above", which _check_message applies to every
        # Error it meets.
        eq("SPEC.md 16.2 rules without a check", sorted(set(rows) - {
            "%s.%s" % (n, f) for n, rules in FRAME_RULES.items() for f, _, _ in rules}),
           ["Goodbye.error", "Undeliverable.reason"])
    c.check("SPEC.md 16.2 table", spec_frame_table)

    def check_frame_vector(fv, reference=True):
        """A frame of the vectors: it passes SPEC.md 16.2, reads as its decoded form, and
        the reference encoder writes the decoded form back to the same bytes (or, for a
        valid encoding other than the reference one, to other bytes that read the same)."""
        data = unhex(fv["encoded"])
        frame = check_frame(data)
        eq("decoded", to_json("Frame", frame), fv["decoded"])
        eq("kind", [frame_kind(frame)], list(fv["decoded"]))
        again = encode_json("Frame", fv["decoded"])
        if reference:
            eq("reference encoding", again.hex(), fv["encoded"])
        else:
            assert again != data, "the encoding is the reference one"
            eq("re-encoded", to_json("Frame", decode("Frame", again)), fv["decoded"])
        return frame

    for hs in protocol["handshakes"]:
        def handshake(hs=hs):
            """SPEC.md 16.3: keys from their seeds, both transcripts from the fields, the
            signatures (deterministic, and verified as SPEC.md 2.1 says), the four frames,
            and the checks each side makes on what it receives."""
            name, d = hs["name"], hs["acceptor"]
            eq("acceptor_key_seed", hs["acceptor_key_seed"], vector_seed(d + " provider key").hex())
            acc_seed = unhex(hs["acceptor_key_seed"])
            acc_pub = ed25519_public(acc_seed)
            eq("acceptor_key", acc_pub.hex(), hs["acceptor_key"])
            assert valid_public_key(acc_pub)
            hello_nonce = vector_seed(name + " hello nonce")
            nonce = vector_seed(name + " challenge nonce")
            eq("hello_nonce", hs["hello_nonce"], hello_nonce.hex())
            eq("challenge_nonce", hs["challenge_nonce"], nonce.hex())
            binding = unhex(hs["binding"])
            if binding:
                eq("binding", binding, vector_seed(name + " channel binding"))
            assert len(binding) <= MAX_BINDING_LEN
            ci = framed(LABELS["ChallengeSignature"], hello_nonce, nonce, d.encode("ascii"), binding)
            eq("challenge_input", ci.hex(), hs["challenge_input"])
            csig = ed25519_sign(acc_seed, ci)
            eq("challenge_signature", csig.hex(), hs["challenge_signature"])
            if hs["role"] == "ROLE_DEVICE":
                p = parties[hs["device"]]
                cert_enc = p["certificate_encoded"]
                eq("certificate", hs["certificate"], cert_enc.hex())
                listed = unhex(hs["device_list"])
                if hs["device_list_name"] is None:
                    eq("device_list", listed, b"")
                else:
                    eq("device_list", listed, list_by_name[hs["device_list_name"]])
                    # VAL-PROTO-012: it verifies, for the certificate's address, and lists
                    # the certificate byte for byte.
                    _, devices = decode_device_list(listed, fetched_for=p["address"])
                    assert cert_enc in [e for _, e in devices]
                # VAL-PROTO-008 to -010
                cert = decode_certificate(cert_enc)
                eq("certificate domain", cert["address"].split("@")[1], d)
                assert cert["not_before_ms"] <= hs["welcome_time_ms"] <= cert["not_after_ms"]
                identity_bytes, signer, verifier = cert_enc, p["signing_seed"], cert["device_signing_key"]
                who = {"device": {"certificate": cert_enc.hex(), "device_list": listed.hex()}}
            else:
                eq("role", hs["role"], "ROLE_PROVIDER")
                connector = hs["connector_domain"]
                eq("connector_key_seed", hs["connector_key_seed"],
                   vector_seed(connector + " provider key").hex())
                signer = unhex(hs["connector_key_seed"])
                verifier = ed25519_public(signer)
                eq("connector_key", verifier.hex(), hs["connector_key"])
                # VAL-PROTO-018, -019
                _validate_domain(connector.encode("ascii"))
                assert connector != d
                identity_bytes = connector.encode("ascii")
                who = {"provider": {"domain": connector}}
            eq("auth_identity", hs["auth_identity"], identity_bytes.hex())
            ai = framed(LABELS["AuthSignature"], nonce, hello_nonce, d.encode("ascii"), binding,
                        identity_bytes)
            eq("auth_input", ai.hex(), hs["auth_input"])
            asig = ed25519_sign(signer, ai)
            eq("auth_signature", asig.hex(), hs["auth_signature"])
            # VAL-PROTO-006, -011 / -021
            assert strict_verify(acc_pub, ci, csig) and strict_verify(verifier, ai, asig)
            want = {
                "hello": {"hello": {"version": PROTOCOL_VERSION, "nonce": hello_nonce.hex(),
                                    "role": hs["role"], "acceptor": d}},
                "challenge": {"challenge": {"nonce": nonce.hex(), "domain": d,
                                            "provider_key": acc_pub.hex(), "signature": csig.hex()}},
                "auth": {"auth": dict(who, signature=asig.hex())},
                "welcome": {"welcome": {"time_ms": str(hs["welcome_time_ms"])}},
            }
            eq("frames", sorted(hs["frames"]), sorted(want))
            got = {}
            for k, w in want.items():
                eq(k + " decoded", hs["frames"][k]["decoded"], w)
                got[k] = check_frame_vector(hs["frames"][k])[k]
            # The acceptor's checks of the Hello (VAL-PROTO-001 to -003) and of the Auth
            # (VAL-PROTO-007), the connector's of the Challenge (VAL-PROTO-004, -005).
            h, ch, au = got["hello"], got["challenge"], got["auth"]
            eq("version", h["version"], PROTOCOL_VERSION)
            eq("acceptor", h["acceptor"], d)
            eq("who", au["_oneof_who"], {1: "device", 2: "provider"}[h["role"]])
            eq("challenge domain", ch["domain"], h["acceptor"])
            eq("pinned key", ch["provider_key"], acc_pub)
        c.check("handshake " + hs["name"], handshake)

    def handshake_rules():
        """SPEC.md 16.3 on synthetic input: each signature binds every part, in its place,
        and under its own label."""
        hs = next(h for h in protocol["handshakes"] if h["binding"] and h["role"] == "ROLE_DEVICE")
        acc = ed25519_public(unhex(hs["acceptor_key_seed"]))
        dev = parties[hs["device"]]["certificate"]["device_signing_key"]
        hn, n, d = unhex(hs["hello_nonce"]), unhex(hs["challenge_nonce"]), hs["acceptor"].encode()
        b, ident = unhex(hs["binding"]), unhex(hs["auth_identity"])
        csig, asig = unhex(hs["challenge_signature"]), unhex(hs["auth_signature"])
        ch, au = LABELS["ChallengeSignature"], LABELS["AuthSignature"]
        assert strict_verify(acc, framed(ch, hn, n, d, b), csig)
        assert strict_verify(dev, framed(au, n, hn, d, b, ident), asig)
        for parts in [(n, hn, d, b), (hn, n, d, b""), (hn, n, b"two.example", b)]:
            assert not strict_verify(acc, framed(ch, *parts), csig), "challenge for %r" % (parts,)
        for parts in [(hn, n, d, b, ident), (n, hn, d, b"", ident), (n, hn, b"two.example", b, ident),
                      (n, hn, d, b, ident[:-1])]:
            assert not strict_verify(dev, framed(au, *parts), asig)
        # A relayed handshake: the same signatures over another connection's binding.
        assert not strict_verify(acc, framed(ch, hn, n, d, bytes(32)), csig)
        # Labels keep the two apart.
        assert not strict_verify(acc, framed(au, hn, n, d, b), csig)
    c.check("handshake rules", handshake_rules)

    bob_cert = parties["bob"]["certificate"]
    envelope_bytes = {p["vector"]["name"]: unhex(p["vector"]["envelope"]) for p in envelopes["positive"]}
    # The group frames (SPEC.md 20) carry group_messages.json's envelopes and groups.json's
    # changes (countersigned, or without the countersignature when handed to be ordered)
    # and its join snapshot.
    gm_file, groups_file = load("group_messages.json"), load("groups.json")
    group_envelopes = {unhex(m["envelope"]) for m in gm_file["messages"]}
    chain_changes = {unhex(ch["encoded"]) for ch in groups_file["chain"]}
    unsequenced_changes = {unhex(ch["body"]) + b"/" + unhex(ch["signature"])
                           for ch in groups_file["chain"]}

    def group_item(it):
        if "envelope" in it:
            assert it["envelope"] in group_envelopes, "an unknown group envelope"
            eq("snapshot with an envelope", it["snapshot"], b"")
        else:
            assert it["change"] in chain_changes, "an unknown change"
            if it["snapshot"]:
                eq("snapshot", it["snapshot"].hex(), groups_file["join"]["snapshot"])
                eq("joining change", it["change"].hex(), groups_file["join"]["change"])

    def canonical(addresses):
        for a in addresses:
            eq("canonical address", parse_address(a, True), a)
    for fv in protocol["frames"]:
        def frame(fv=fv):
            f = check_frame_vector(fv, fv["reference_encoding"])
            kind = frame_kind(f)
            body = f[kind]
            # What the example frames carry is what the other files hold, and verifies.
            if kind == "request":
                req = body[body["_oneof_body"]]
                if "device_list" in req:
                    decode_device_list(req["device_list"])
                for k in ("signed_prekey", "kem_prekey"):
                    if k in req:
                        decode_signed_prekey(req[k], bob_cert)
                for x in req.get("one_time", []):
                    decode_signed_prekey(x, bob_cert)
                if req.get("envelopes"):
                    eq("envelopes", req["envelopes"],
                       [envelope_bytes["text"], envelope_bytes["read_receipt"]])
                for g in req.get("groups", []):
                    group_item(g["item"])
                    canonical(g["recipients"])
                if body["_oneof_body"] == "submit_group":
                    assert req["envelope"] in group_envelopes, "an unknown group envelope"
                    canonical(req["recipients"])
                if body["_oneof_body"] == "order_group_change":
                    ch = decode("GroupChange", req["change"])
                    eq("sequencer_signature", ch["sequencer_signature"], b"")
                    assert ch["body"] + b"/" + ch["signature"] in unsequenced_changes
                    eq("sequencer", parse_domain_canonical(req["sequencer"]), req["sequencer"])
                    canonical([req["requester"]] if req["requester"] else [])
                if "address" in req:
                    eq("canonical address", parse_address(req["address"], True), req["address"])
            elif kind == "response" and body["_oneof_body"] in ("bundles", "device_list"):
                r = body[body["_oneof_body"]]
                lb, _ = decode_device_list(r["device_list"], fetched_for=bob_cert["address"])
                for x in r.get("bundles", []):
                    decode_bundle(x)
            elif kind == "response" and body["_oneof_body"] == "group_change":
                assert body["group_change"]["change"] in chain_changes, "an unknown change"
            elif kind == "deliver":
                for it in body["items"]:
                    if "group" in it:
                        group_item(it["group"])
                    if "envelope" in it:
                        hd = decode("EnvelopeHeader", decode("Envelope", it["envelope"])["header"])
                        eq("recipient", hd["recipient"], parties["alice"]["address"])
                    u = it.get("notice", {}).get("undeliverable")
                    if u is not None:
                        eq("message_id", u["message_id"].hex(),
                           next(p["vector"]["message_id"] for p in envelopes["positive"]
                                if p["vector"]["name"] == "read_receipt"))
                        eq("device", u["device"], bob_cert["device_id"])
        c.check("frame " + fv["name"], frame)

    for neg in protocol["negative"]:
        def frame_negative(neg=neg):
            try:
                check_frame(hex_or_fill(neg["encoded"]))
            except FrameError as e:
                eq("refusal", (e.kind, e.field), (neg["expected_error"], neg["field"]))
                return
            raise AssertionError("frame was accepted")
        c.check("frame negative " + neg["name"], frame_negative)

    # groups.json (SPEC.md 18): users and sequencer from their seeds, the group id, the
    # chain rebuilt byte for byte and applied, the join, refused changes and snapshots.
    groups = load("groups.json")
    cert_validity = identity["parties"][0]["certificate"]
    gusers = {}
    for u in groups["users"]:
        def group_user(u=u):
            # SPEC.md 12: "<user> identity", "<device> device signing"/"agreement";
            # bob_new is Bob after an identity reset ("bob new ...").
            what = "bob new" if u["name"] == "bob_new" else u["name"]
            user = "bob new" if u["name"] == "bob_new" else u["address"].split("@")[0]
            eq("identity_seed", u["identity_seed"], vector_seed(user + " identity").hex())
            eq("device_signing_seed", u["device_signing_seed"],
               vector_seed(what + " device signing").hex())
            eq("device_agreement_secret", u["device_agreement_secret"],
               vector_seed(what + " device agreement").hex())
            ident = ed25519_public(unhex(u["identity_seed"]))
            eq("identity_public", ident.hex(), u["identity_public"])
            spk = ed25519_public(unhex(u["device_signing_seed"]))
            eq("device_signing_public", spk.hex(), u["device_signing_public"])
            body = encode_certificate_body({
                "version": PROTOCOL_VERSION, "address": u["address"], "identity_key": ident,
                "device_id": device_id(spk), "device_signing_key": spk,
                "device_agreement_key": x25519_public(unhex(u["device_agreement_secret"])),
                "not_before_ms": cert_validity["not_before_ms"],
                "not_after_ms": cert_validity["not_after_ms"]})
            cert = encode_certificate(
                body, ed25519_sign(unhex(u["identity_seed"]),
                                   framed(LABELS["DeviceCertIdentitySignature"], body)),
                ed25519_sign(unhex(u["device_signing_seed"]),
                             framed(LABELS["DeviceCertDeviceSignature"], body)))
            eq("certificate", cert.hex(), u["certificate"])
            decode_certificate(cert)
            gusers[u["name"]] = {"address": u["address"], "identity": ident, "certificate": cert,
                                 "signing_seed": unhex(u["device_signing_seed"])}
        c.check("group user " + u["name"], group_user)

    def providers():
        for p in (groups["sequencer"], groups["other_provider"]):
            eq("key_seed", p["key_seed"], vector_seed(p["domain"] + " provider key").hex())
            eq("key", ed25519_public(unhex(p["key_seed"])).hex(), p["key"])
    c.check("group sequencer key", providers)
    seq_seed = unhex(groups["sequencer"]["key_seed"])

    def group_id_example():
        g = groups["group_id"]
        eq("nonce", g["nonce"], vector_seed("group nonce")[:16].hex())
        eq("identity_key", g["identity_key"], gusers["alice"]["identity"].hex())
        inp = framed(LABELS["GroupId"], g["creator"].encode(), unhex(g["identity_key"]),
                     unhex(g["nonce"]))
        eq("input", inp.hex(), g["input"])
        eq("group_id", group_id(g["creator"], unhex(g["identity_key"]), unhex(g["nonce"])).hex(),
           g["group_id"])
    c.check("group id", group_id_example)

    def state_from_json(j):
        return {"group_id": unhex(j["group_id"]), "epoch": j["epoch"], "head": unhex(j["head"]),
                "title": j["title"], "sequencer": j["sequencer"],
                "sequencer_key": unhex(j["sequencer_key"]),
                "members": {m["address"]: (unhex(m["identity_key"]),
                                           {"member": 1, "admin": 2}[m["role"]])
                            for m in j["members"]}}

    def check_state(st, j):
        """`st` is the state `j` describes, with its hash and snapshot."""
        want = state_from_json(j)
        eq("state", st, want)
        eq("member order", [m["address"] for m in j["members"]],
           sorted(st["members"], key=lambda a: a.encode()))
        eq("state_hash_input", group_state_hash_input(st).hex(), j["state_hash_input"])
        eq("state_hash", group_state_hash(st).hex(), j["state_hash"])
        eq("snapshot", encode_group_snapshot(st).hex(), j["snapshot"])
        eq("snapshot decoded", decode_group_snapshot(unhex(j["snapshot"])), st)

    def action_from_json(kind, a):
        role = {"member": 1, "admin": 2}
        member = lambda m: {"address": m["address"], "identity_key": unhex(m["identity_key"]),  # noqa: E731
                            "role": role[m["role"]]}
        if kind == "create":
            return {"nonce": unhex(a["nonce"]), "title": a["title"], "sequencer": a["sequencer"],
                    "sequencer_key": unhex(a["sequencer_key"]),
                    "members": [member(m) for m in a["members"]]}
        if kind == "add":
            return {"members": [member(m) for m in a["members"]]}
        if kind == "set_role":
            return {"member": a["member"], "role": role[a["role"]]}
        return dict(a)

    gstates = {}
    prev = None
    for cj in groups["chain"]:
        def chain_change(cj=cj, prev=prev):
            dev = gusers[cj["device"]]
            eq("author", dev["address"], gusers[cj["author"]]["address"])
            (kind, aj), = cj["action"].items()
            action = action_from_json(kind, aj)
            body = encode_group_change_body({
                "version": PROTOCOL_VERSION, "group_id": unhex(groups["group_id"]["group_id"]),
                "epoch": cj["epoch"], "parent": unhex(cj["parent"]), "author": dev["address"],
                "author_device": dev["certificate"], "issued_ms": cj["issued_ms"],
                "state_hash": unhex(cj["state_hash"]), "kind": kind, "action": action})
            eq("body", body.hex(), cj["body"])
            sig_input = framed(LABELS["GroupChangeSignature"], body)
            eq("signature_input", sig_input.hex(), cj["signature_input"])
            sig = ed25519_sign(dev["signing_seed"], sig_input)
            eq("signature", sig.hex(), cj["signature"])
            hash_input = framed(LABELS["GroupChangeHash"], body)
            eq("change_hash_input", hash_input.hex(), cj["change_hash_input"])
            eq("change_hash", sha256(hash_input).hex(), cj["change_hash"])
            seq_input = group_sequence_input(unhex(groups["group_id"]["group_id"]), cj["epoch"],
                                             sha256(hash_input))
            eq("sequence_input", seq_input.hex(), cj["sequence_input"])
            seq_sig = ed25519_sign(seq_seed, seq_input)
            eq("sequencer_signature", seq_sig.hex(), cj["sequencer_signature"])
            eq("encoded", encode_group_change(body, sig, seq_sig).hex(), cj["encoded"])
            # The state hash the change commits to is that of the state described.
            eq("state_hash", group_state_hash(state_from_json(cj["state"])).hex(), cj["state_hash"])
            ch = decode_group_change(unhex(cj["encoded"]))
            st = create_group(ch) if prev is None else apply_group_change(gstates[prev], ch)
            check_state(st, cj["state"])
            gstates[cj["name"]] = st
        c.check("group chain " + cj["name"], chain_change)
        prev = cj["name"]

    def group_join():
        j = groups["join"]
        st = join_group(unhex(j["snapshot"]), decode_group_change(unhex(j["change"])), j["joiner"])
        check_state(st, j["state"])
    c.check("group join", group_join)

    gsnapshots = {}
    for sj in groups["snapshots"]:
        def group_snapshot(sj=sj):
            st = decode_group_snapshot(unhex(sj["encoded"]))
            eq("re-encoded", encode_group_snapshot(st).hex(), sj["encoded"])
            gsnapshots[sj["name"]] = st
        c.check("group snapshot " + sj["name"], group_snapshot)

    group_codes = set()
    for v in groups["invalid_changes"]:
        def group_invalid_change(v=v):
            ref = v["state"]
            st = None if ref is None else (gstates[ref["chain"]] if "chain" in ref
                                           else gsnapshots[ref["snapshot"]])
            before = copy.deepcopy(st)
            try:
                ch = decode_group_change(hex_or_fill(v["change"]))
                create_group(ch) if st is None else apply_group_change(st, ch)
            except GroupError as e:
                eq("code", e.code, v["expected_error"])
                eq("state unchanged", st, before)
                group_codes.add(e.code)
                return
            raise AssertionError("change was accepted")
        c.check("group invalid change " + v["name"], group_invalid_change)
    for v in groups["invalid_snapshots"]:
        def group_invalid_snapshot(v=v):
            try:
                join_group(hex_or_fill(v["snapshot"]), decode_group_change(unhex(v["change"])),
                           v["joiner"])
            except GroupError as e:
                eq("code", e.code, v["expected_error"])
                group_codes.add(e.code)
                return
            raise AssertionError("snapshot was accepted")
        c.check("group invalid snapshot " + v["name"], group_invalid_snapshot)

    def group_codes_covered():
        spec_codes = re.search(r"^\*\*Groups\*\* \(§18\.4, §18\.6\): (.*?), at the steps", spec,
                               re.M | re.S).group(1)
        want = set(re.findall(r"`([a-z_]+)`", spec_codes))
        eq("codes of SPEC.md 10 (Groups) exercised", group_codes, want)
    c.check("group codes covered", group_codes_covered)

    # group_messages.json (SPEC.md 19, 7.5): the users' certificates from their seeds, the
    # two states, the sender key and its content, every message rebuilt from the chain and
    # opened in the given order, and the refused envelopes.
    gm = load("group_messages.json")
    gm_dir = {}
    for u in gm["users"]:
        def gm_user(u=u):
            body = decode_certificate(unhex(u["certificate"]))
            eq("signing key", body["device_signing_key"],
               ed25519_public(unhex(u["device_signing_seed"])))
            eq("identity key", body["identity_key"], ed25519_public(unhex(u["identity_seed"])))
            gm_dir[(body["address"], body["device_id"])] = body
        c.check("group messages user " + u["name"], gm_user)
    gm_states = {}

    def gm_states_check():
        s0 = create_group(decode_group_change(unhex(gm["create"])))
        removal = decode_group_change(unhex(gm["removal"]))
        s1 = apply_group_change(s0, removal)
        # SPEC.md 19.4: a remove (or leave) sets the last removal epoch.
        s0["rekey_epoch"] = 0
        s1["rekey_epoch"] = s1["epoch"] if removal["kind"] in ("remove", "leave") else 0
        for st, j in zip((s0, s1), gm["states"]):
            eq("epoch", st["epoch"], j["epoch"])
            eq("state hash", group_state_hash(st).hex(), j["state_hash"])
            eq("rekey epoch", st["rekey_epoch"], j["rekey_epoch"])
            snap = decode_group_snapshot(unhex(j["snapshot"]))
            eq("snapshot members", snap["members"], st["members"])
            gm_states[st["epoch"]] = st
    c.check("group messages states", gm_states_check)

    sk = gm["sender_key"]

    def gm_sender_key():
        k = decode_sender_key(unhex(sk["encoded"]))
        eq("chain key", k["chain_key"].hex(), sk["chain_key"])
        eq("group id", k["group_id"].hex(), sk["group_id"])
        content = decode_content(unhex(sk["content"]))
        eq("content", content["group_sender_key"]["chain_id"], sk["chain_id"])
        eq("padding", len(unhex(sk["content"])) % PADDING_BLOCK, 0)
    c.check("group sender key", gm_sender_key)

    def gm_group_sync():
        gs = gm["group_sync"]
        content = decode_content(unhex(gs["content"]))["group_sync"]
        want = next(j for j in gm["states"] if j["epoch"] == gs["state_epoch"])
        eq("group sync snapshot", content["snapshot"], want["snapshot"])
        eq("group sync epoch", content["epoch"], want["epoch"])
        eq("group sync rekey epoch", content["rekey_epoch"], want["rekey_epoch"])
        eq("padding", len(unhex(gs["content"])) % PADDING_BLOCK, 0)
        # A last removal epoch after the state's epoch is invalid content.
        snap = unhex(want["snapshot"])
        bad = enc_bytes(1, snap) + enc_uint(2, want["epoch"] + 1)
        bad_content = enc_bytes(4, bad)
        try:
            decode_content(bad_content)
        except ContentError:
            pass
        else:
            raise AssertionError("a group_sync with rekey_epoch after its epoch was accepted")
    c.check("group sync", gm_group_sync)

    def gm_messages():
        ck = unhex(sk["chain_key"])
        i = 0
        for m in gm["messages"]:
            while i < m["iteration"]:
                _, ck = kdf_ck(ck)
                i += 1
            eq(m["name"] + " chain key", ck.hex(), m["chain_key"])
            mk, _ = kdf_ck(ck)
            eq(m["name"] + " message key", mk.hex(), m["message_key"])
            key, nonce = group_message_keys(mk, unhex(m["message_id"]))
            eq(m["name"] + " aead key", key.hex(), m["aead_key"])
            eq(m["name"] + " aead nonce", nonce.hex(), m["aead_nonce"])
            outer = decode("GroupEnvelope", unhex(m["envelope"]))
            eq(m["name"] + " header", outer["header"].hex(), m["header"])
            ct = ChaCha20Poly1305(key).encrypt(
                nonce, unhex(m["plaintext"]), framed(LABELS["GroupEnvelopeAad"], outer["header"]))
            eq(m["name"] + " ciphertext", ct, outer["ciphertext"])
            eq(m["name"] + " signature input", framed(LABELS["GroupEnvelopeSignature"],
                                                      outer["header"], sha256(ct)).hex(),
               m["signature_input"])
        bob = GroupReceiverState(unhex(sk["group_id"]))
        bob.add(decode_sender_key(unhex(sk["encoded"])))
        by_name = {m["name"]: m for m in gm["messages"]}
        for d in gm["deliveries"]:
            m = by_name[d["message"]]
            try:
                got = bob.open(gm_states[0], unhex(m["envelope"]), gm_dir)
                eq(d["message"], "ok", d["expected"])
                eq(d["message"] + " body", got["text"]["body"], m["body"])
            except GroupMessageError as e:
                eq(d["message"], e.code, d["expected"])
    c.check("group messages in order", gm_messages)

    for r in gm["refused"]:
        def gm_refused(r=r):
            bob = GroupReceiverState(unhex(sk["group_id"]))
            bob.add(decode_sender_key(unhex(sk["encoded"])))
            try:
                bob.open(gm_states[r["state_epoch"]], unhex(r["envelope"]), gm_dir)
            except GroupMessageError as e:
                eq("refusal", e.code, r["expected_error"])
                return
            raise AssertionError("group envelope was accepted")
        c.check("group message refused " + r["name"], gm_refused)

    # Addresses (SPEC.md 3)
    for v in addresses["valid"]:
        def valid(v=v):
            canon = parse_address(v["input"], canonical_only=False)
            eq("canonical", canon, v["canonical"])
            eq("canonical re-parse", parse_address(canon, canonical_only=True), canon)
        c.check("address valid %r" % v["input"], valid)
    for v in addresses["invalid"]:
        def invalid(v=v):
            try:
                parse_address(v["input"], canonical_only=False)
            except AddressError as e:
                eq("error", e.name, v["error"])
                return
            raise AssertionError("address was accepted")
        c.check("address invalid %r" % v["input"][:40], invalid)

    print("vectors: %d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
