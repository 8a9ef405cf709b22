"""C2SP signed-note: Ed25519 note keys, signing, opening, and Ed25519 cosignature/v1.

Owns https://c2sp.org/signed-note v1.0.0 (key IDs, verifier and signer key strings, the note
layout, the verification rules) and the Ed25519 cosignature/v1 signature type (0x04) of
https://c2sp.org/tlog-cosignature. Imports pynacl, tlog.errors and the standard library.

A note is UTF-8 text ending in a newline, a blank line, and one or more signature lines
``— <key name> <base64(key ID || signature)>``. There is no way to read a note's text as
verified except :func:`open_note`, which returns a :class:`Note` only after at least one
signature by a known key verified, and raises if any known key's signature does not.

>>> key = SigningKey("PeterNeumann", bytes.fromhex(
...     "810a1402d5146c8d84f2443330f54080ebf98ee17d9c74f6252fc5d5c7283173"))
>>> format_vkey(key.verifier())
'PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW'
>>> msg = sign_note("hello\\n", [key.signer()])
>>> open_note(msg, [key.verifier()]).text
'hello\\n'
"""

from __future__ import annotations

import functools
import struct
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import sha256

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey as _NaclSigningKey
from nacl.signing import VerifyKey as _NaclVerifyKey

from tlog.errors import InvalidSignatureError, MalformedError, UnknownKeyError
from tlog.parsing import decode_b64, encode_b64

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "Note",
    "NoteSignature",
    "Signer",
    "SigningKey",
    "Verifier",
    "cosignature_message",
    "format_signature_line",
    "format_skey",
    "format_vkey",
    "key_id",
    "open_note",
    "parse_skey",
    "parse_vkey",
    "sign_note",
]

ALG_ED25519 = 0x01
"""Signature type of an Ed25519 note signature (C2SP signed-note)."""
ALG_COSIGNATURE_V1 = 0x04
"""Signature type of a timestamped Ed25519 cosignature/v1 (C2SP tlog-cosignature)."""

MAX_NOTE_SIZE = 1 << 20
"""Notes larger than 1 MiB are rejected before parsing."""
MAX_SIGNATURES = 100
"""As Go's note.Open: more signature lines than this is an error (C2SP asks for >= 16)."""

_EM_DASH = "\u2014 "
_SKEY_PREFIX = "PRIVATE+KEY+"
_MAX_TIMESTAMP = (1 << 63) - 1
_SIGNATURE_SIZE = 64
_KEY_SIZE = 32


def _check_name(name: str) -> None:
    if not name:
        raise MalformedError("key.name", "empty")
    if "+" in name:
        raise MalformedError("key.name", f"{name!r} contains '+'")
    if any(c.isspace() or unicodedata.category(c) in ("Cc", "Zs") for c in name):
        raise MalformedError("key.name", f"{name!r} contains whitespace or a control character")
    if len(name.encode()) > 255:
        raise MalformedError("key.name", "longer than 255 bytes")


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """SHA-256(name || 0x0A || alg || public key)[:4], as a uint32."""
    digest = sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def cosignature_message(text: str, timestamp_s: int) -> bytes:
    """What a cosignature/v1 signs: a header with the time, then the whole checkpoint text."""
    return f"cosignature/v1\ntime {timestamp_s}\n{text}".encode()


@dataclass(frozen=True, slots=True)
class Verifier:
    """A public note key: ``name``, signature type ``alg`` and the 32-byte Ed25519 key."""

    name: str
    alg: int
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise MalformedError("key.alg", f"unknown signature type 0x{self.alg:02x}")
        if len(self.public_key) != _KEY_SIZE:
            raise MalformedError("key.public_key", f"{len(self.public_key)} bytes, not 32")

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.alg, self.public_key)

    def verify(self, text: str, signature: bytes) -> None:
        """Check a signature (without its key ID) over a note's text; raises if it is bad."""
        message = text.encode()
        if self.alg == ALG_COSIGNATURE_V1:
            timestamp = _cosignature_timestamp(signature)
            if timestamp is None:
                raise InvalidSignatureError(self.name, self.key_id, "malformed cosignature")
            message = cosignature_message(text, timestamp)
            signature = signature[8:]
        self.verify_message(message, signature)

    def verify_message(self, message: bytes, signature: bytes) -> None:
        """Check a raw 64-byte Ed25519 signature over ``message`` (not a note); raises."""
        if len(signature) != _SIGNATURE_SIZE:
            raise InvalidSignatureError(self.name, self.key_id, "signature is not 64 bytes")
        try:
            _NaclVerifyKey(self.public_key).verify(message, signature)
        except (BadSignatureError, CryptoError) as exc:
            raise InvalidSignatureError(self.name, self.key_id) from exc


def _cosignature_timestamp(signature: bytes) -> int | None:
    """The time a cosignature/v1 claims (u64 seconds before the Ed25519 signature), if any."""
    if len(signature) != 8 + _SIGNATURE_SIZE:
        return None
    (timestamp,) = struct.unpack(">Q", signature[:8])
    return timestamp if timestamp <= _MAX_TIMESTAMP else None


@functools.lru_cache(maxsize=64)
def _nacl_key(seed: bytes) -> _NaclSigningKey:
    """The expanded Ed25519 key of a seed. Expanding costs about as much as signing, and a
    signer (an edge, the log) signs with the same few keys all the time, so keep a few."""
    return _NaclSigningKey(seed)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private note key: ``name`` and the 32-byte Ed25519 seed. Keep it secret.

    The same seed gives one key ID as a note signer (type 0x01) and another as a cosigner
    (type 0x04); the two sign different messages, so one key may serve both roles.
    """

    name: str
    seed: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.seed) != _KEY_SIZE:
            raise MalformedError("key.seed", f"{len(self.seed)} bytes, not 32")

    def __repr__(self) -> str:
        return f"SigningKey(name={self.name!r}, seed=<secret>)"

    @property
    def public_key(self) -> bytes:
        return bytes(_nacl_key(self.seed).verify_key)

    def verifier(self, alg: int = ALG_ED25519) -> Verifier:
        return Verifier(self.name, alg, self.public_key)

    def signer(self) -> Signer:
        """A signer of Ed25519 note signatures (type 0x01)."""
        return Signer(self, ALG_ED25519)

    def cosigner(self, timestamp_s: int) -> Signer:
        """A signer of cosignature/v1 signatures (type 0x04) stamped ``timestamp_s``."""
        return Signer(self, ALG_COSIGNATURE_V1, timestamp_s)

    def sign(self, message: bytes) -> bytes:
        """A raw Ed25519 signature over ``message`` (64 bytes)."""
        return _nacl_key(self.seed).sign(message).signature


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs note text as ``key`` with signature type ``alg`` (time is a parameter)."""

    key: SigningKey
    alg: int
    timestamp_s: int | None = None

    def __post_init__(self) -> None:
        if self.alg == ALG_ED25519:
            if self.timestamp_s is not None:
                raise MalformedError("timestamp_s", "Ed25519 note signatures carry no time")
        elif self.alg == ALG_COSIGNATURE_V1:
            if self.timestamp_s is None or not 0 <= self.timestamp_s <= _MAX_TIMESTAMP:
                raise MalformedError("timestamp_s", "a cosignature needs a time in 0..2**63-1")
        else:
            raise MalformedError("alg", f"cannot sign with type 0x{self.alg:02x}")

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def key_id(self) -> int:
        return key_id(self.key.name, self.alg, self.key.public_key)

    def sign(self, text: str) -> bytes:
        """The signature bytes (without key ID) over a note's text."""
        if self.timestamp_s is None:
            return self.key.sign(text.encode())
        message = cosignature_message(text, self.timestamp_s)
        return struct.pack(">Q", self.timestamp_s) + self.key.sign(message)


# ---------------------------------------------------------------------------------------------
# Key strings.


def format_vkey(verifier: Verifier) -> str:
    """``<name>+<8 hex key ID>+<base64(type || public key)>``."""
    key = encode_b64(bytes([verifier.alg]) + verifier.public_key)
    return f"{verifier.name}+{verifier.key_id:08x}+{key}"


def parse_vkey(vkey: str) -> Verifier:
    """Parse a verifier key string, recomputing its key ID (a mismatch is rejected)."""
    name, sep1, rest = vkey.partition("+")
    hex_id, sep2, key_b64 = rest.partition("+")
    if not (sep1 and sep2):
        raise MalformedError("vkey", "not <name>+<hex id>+<base64 key>")
    if len(hex_id) != 8 or hex_id != hex_id.lower() or not _is_hex(hex_id):
        raise MalformedError("vkey.key_id", f"{hex_id!r} is not 8 lowercase hex digits")
    raw = decode_b64(key_b64, "vkey.key")
    if len(raw) < 1:
        raise MalformedError("vkey.key", "empty")
    verifier = Verifier(name, raw[0], raw[1:])
    if verifier.key_id != int(hex_id, 16):
        raise MalformedError(
            "vkey.key_id", f"{hex_id} does not match the key ({verifier.key_id:08x})"
        )
    return verifier


def format_skey(key: SigningKey) -> str:
    """``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`` (Go's signer key format)."""
    key_hash = key.verifier().key_id
    return f"{_SKEY_PREFIX}{key.name}+{key_hash:08x}+{encode_b64(bytes([ALG_ED25519]) + key.seed)}"


def parse_skey(skey: str) -> SigningKey:
    """Parse a signer key string; its key ID must be that of the derived public key."""
    if not skey.startswith(_SKEY_PREFIX):
        raise MalformedError("skey", "does not start with PRIVATE+KEY+")
    parts = skey.split("+", 4)
    if len(parts) != 5:
        raise MalformedError("skey", "not PRIVATE+KEY+<name>+<hex id>+<base64 key>")
    _, _, name, hex_id, key_b64 = parts
    if len(hex_id) != 8 or hex_id != hex_id.lower() or not _is_hex(hex_id):
        raise MalformedError("skey.key_id", f"{hex_id!r} is not 8 lowercase hex digits")
    raw = decode_b64(key_b64, "skey.key")
    if len(raw) != 1 + _KEY_SIZE or raw[0] != ALG_ED25519:
        raise MalformedError("skey.key", "not an Ed25519 seed (type 0x01, 32 bytes)")
    key = SigningKey(name, raw[1:])
    if key.verifier().key_id != int(hex_id, 16):
        raise MalformedError("skey.key_id", f"{hex_id} does not match the key")
    return key


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# ---------------------------------------------------------------------------------------------
# Notes.


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """A verified signature on a note: who signed, and when for a cosignature."""

    name: str
    key_id: int
    alg: int
    timestamp_s: int | None


@dataclass(frozen=True, slots=True)
class Note:
    """A note whose signatures were checked by :func:`open_note`.

    ``signatures`` are the verified ones, in note order; ``unverified`` are the signature
    lines by keys the caller did not know (kept verbatim, so the note can be passed on).
    """

    text: str
    signatures: tuple[NoteSignature, ...]
    unverified: tuple[str, ...]

    def signed_by(self, verifier: Verifier) -> NoteSignature | None:
        for sig in self.signatures:
            if (sig.name, sig.key_id) == (verifier.name, verifier.key_id):
                return sig
        return None


def _check_text(text: str, field: str) -> None:
    if not text.endswith("\n"):
        raise MalformedError(field, "does not end in a newline")
    for c in text:
        if c != "\n" and unicodedata.category(c) == "Cc":
            raise MalformedError(field, f"contains control character U+{ord(c):04X}")


def sign_note(text: str, signers: Sequence[Signer]) -> bytes:
    """The signed note: ``text`` (ending in a newline), a blank line, one line per signer."""
    _check_text(text, "text")
    if not signers:
        raise MalformedError("signers", "a note needs at least one signature")
    lines = [format_signature_line(text, signer) for signer in signers]
    return (text + "\n" + "".join(lines)).encode()


def format_signature_line(text: str, signer: Signer) -> str:
    """One signature line, ``— <name> <base64(key ID || signature)>\\n``, over ``text``.

    What a witness answers to add-checkpoint: its cosignature lines alone, to be appended to
    the checkpoint's own signatures (:func:`sign_note` writes the same lines).
    """
    _check_text(text, "text")
    payload = struct.pack(">I", signer.key_id) + signer.sign(text)
    return f"{_EM_DASH}{signer.name} {encode_b64(payload)}\n"


def open_note(msg: bytes, verifiers: Iterable[Verifier]) -> Note:
    """Parse a signed note and verify it against the known keys.

    Signatures by unknown (name, key ID) pairs are kept but not trusted. A known key's bad
    signature raises InvalidSignatureError; no verified signature at all raises
    UnknownKeyError; a malformed note raises MalformedError.
    """
    if len(msg) > MAX_NOTE_SIZE:
        raise MalformedError("note", f"larger than {MAX_NOTE_SIZE} bytes")
    try:
        decoded = msg.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError("note", "not valid UTF-8") from exc
    split = decoded.rfind("\n\n")
    if split < 0:
        raise MalformedError("note", "no blank line before the signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    _check_text(text, "note.text")
    if not block.endswith("\n"):
        raise MalformedError("note.signatures", "do not end in a newline")
    _check_text(block, "note.signatures")

    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[NoteSignature] = []
    seen_keys: set[tuple[str, int]] = set()
    unverified: list[str] = []
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError("note.signatures", f"more than {MAX_SIGNATURES}")
    for line in lines:
        if not line.startswith(_EM_DASH):
            raise MalformedError("note.signatures", f"line {line!r} does not start with '— '")
        name, space, sig_b64 = line[len(_EM_DASH) :].partition(" ")
        if not space:
            raise MalformedError("note.signatures", f"line {line!r} has no signature")
        _check_name(name)
        raw = decode_b64(sig_b64, "note.signatures")
        if len(raw) < 5:
            raise MalformedError("note.signatures", "signature shorter than a key ID")
        (sig_key_id,) = struct.unpack(">I", raw[:4])
        verifier = known.get((name, sig_key_id))
        if verifier is None:
            if line not in unverified:
                unverified.append(line)
            continue
        if (name, sig_key_id) in seen_keys:
            continue
        seen_keys.add((name, sig_key_id))
        verifier.verify(text, raw[4:])
        timestamp = _cosignature_timestamp(raw[4:]) if verifier.alg == ALG_COSIGNATURE_V1 else None
        verified.append(NoteSignature(name, sig_key_id, verifier.alg, timestamp))
    if not verified:
        raise UnknownKeyError("the note carries no signature by a known key")
    return Note(text, tuple(verified), tuple(unverified))
