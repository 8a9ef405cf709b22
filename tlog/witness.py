"""C2SP tlog-witness: the add-checkpoint request, the stale-size answer, cosignature lines.

Owns the bytes a log and a witness exchange (https://c2sp.org/tlog-witness): the
``add-checkpoint`` request body, the ``text/x.tlog.size`` body of a 409 answer, the
cosignature lines of a 200 answer, the merging of those lines into a served checkpoint, and
the path of the monitoring GET. Imports tlog.note, tlog.parsing, tlog.proofs and tlog.errors;
no HTTP (the log's client and the witness server are elsewhere).

A request body is::

    old <the size the caller believes the witness has cosigned, 0 if none>
    <base64 hash>             0 to 65 lines: PROOF(old, D[size]), RFC order
    <blank line>
    <the signed checkpoint, verbatim>

>>> body = format_add_checkpoint(AddCheckpoint(3, (bytes(32),), b"<signed checkpoint>"))
>>> print(body.decode())
old 3
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
<BLANKLINE>
<signed checkpoint>
>>> parse_size_body(format_size_body(42))
42
>>> origin_hash("example.com/behind-the-sofa")[:16]
'5fd2dc0beb4ce54d'
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256

from tlog.errors import MalformedError
from tlog.note import MAX_NOTE_SIZE, MAX_SIGNATURES
from tlog.parsing import (
    check_hashes,
    decode_b64,
    encode_b64,
    parse_decimal,
    parse_hash_lines,
    split_head,
)
from tlog.proofs import MAX_CONSISTENCY_PROOF_LENGTH

__all__ = [
    "CONTENT_TYPE_SIZE",
    "AddCheckpoint",
    "format_add_checkpoint",
    "format_size_body",
    "merge_signatures",
    "origin_hash",
    "parse_add_checkpoint",
    "parse_signature_lines",
    "parse_size_body",
    "signature_key",
]

CONTENT_TYPE_SIZE = "text/x.tlog.size"
"""The media type of a 409 answer's body: the witness's latest cosigned size."""

_EM_DASH = "\u2014 "
MAX_REQUEST_SIZE = MAX_NOTE_SIZE + 4096
"""A note of at most 1 MiB plus the old-size line and 65 proof lines."""


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    """An add-checkpoint request: ``checkpoint`` (a signed note, not yet trusted), the size
    ``old_size`` the caller believes the witness last cosigned, and PROOF(old, new)."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes

    def __post_init__(self) -> None:
        old = self.old_size
        if isinstance(old, bool) or not isinstance(old, int) or not 0 <= old < 1 << 63:
            raise MalformedError("old", f"{old!r} is not an integer in 0..2**63-1")
        check_hashes(self.proof, "proof", MAX_CONSISTENCY_PROOF_LENGTH)
        if not self.checkpoint:
            raise MalformedError("checkpoint", "missing")


def format_add_checkpoint(request: AddCheckpoint) -> bytes:
    lines = [f"old {request.old_size}", *(encode_b64(h) for h in request.proof)]
    return ("\n".join(lines) + "\n\n").encode() + request.checkpoint


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse a request body strictly: the ``old`` line, canonical base64 hashes of 32 bytes,
    the blank line, and a non-empty checkpoint. MalformedError names the part that is wrong."""
    if len(body) > MAX_REQUEST_SIZE:
        raise MalformedError("body", f"larger than {MAX_REQUEST_SIZE} bytes")
    lines, checkpoint = split_head(body, "body")
    if not lines[0].startswith("old "):
        raise MalformedError("old", "the first line is not 'old <size>'")
    old_size = parse_decimal(lines[0][len("old ") :], "old")
    proof = parse_hash_lines(lines[1:], "proof", MAX_CONSISTENCY_PROOF_LENGTH)
    return AddCheckpoint(old_size, proof, checkpoint)


def format_size_body(tree_size: int) -> bytes:
    """The body of a 409 answer (``text/x.tlog.size``): the size, in decimal, and a newline."""
    return f"{tree_size}\n".encode()


def parse_size_body(body: bytes) -> int:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedError("size", "not ASCII") from exc
    if not text.endswith("\n"):
        raise MalformedError("size", "does not end in a newline")
    return parse_decimal(text[:-1], "size")


def origin_hash(origin: str) -> str:
    """Lowercase hex SHA-256 of an origin: the path element of the monitoring GET
    (``<prefix>/<origin_hash>/checkpoint``)."""
    return sha256(origin.encode()).hexdigest()


def signature_key(line: str) -> tuple[str, int]:
    """The (key name, key ID) a signature line is by; MalformedError if it is no such line."""
    if not line.startswith(_EM_DASH) or line.endswith("\n"):
        raise MalformedError("signature", f"{line[:80]!r} is not '— <name> <base64>'")
    name, space, sig_b64 = line[len(_EM_DASH) :].partition(" ")
    if not space or not name or any(c.isspace() for c in name) or "+" in name:
        raise MalformedError("signature", f"{line[:80]!r} has no valid key name")
    raw = decode_b64(sig_b64, "signature")
    if len(raw) < 5:
        raise MalformedError("signature", "shorter than a key ID and a signature")
    (key_id,) = struct.unpack(">I", raw[:4])
    return name, key_id


def parse_signature_lines(body: bytes) -> tuple[str, ...]:
    """The signature lines of a witness's 200 answer (without their newlines), strictly:
    at least one, each ``— <name> <base64>`` and ending in a newline, nothing else."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError("cosignatures", "not UTF-8") from exc
    if not text.endswith("\n"):
        raise MalformedError("cosignatures", "do not end in a newline")
    lines = tuple(text[:-1].split("\n"))
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError("cosignatures", f"more than {MAX_SIGNATURES} lines")
    for line in lines:
        signature_key(line)
    return lines


def merge_signatures(signed_note: bytes, lines: Sequence[str]) -> bytes:
    """The note with ``lines`` added after its signatures, each replacing any earlier line by
    the same (name, key ID). Nothing is verified here: open the result with the keys."""
    text_end = signed_note.rfind(b"\n\n")
    if text_end < 0 or not signed_note.endswith(b"\n"):
        raise MalformedError("note", "not a signed note")
    head = signed_note[: text_end + 2]
    existing = signed_note[text_end + 2 : -1].decode("utf-8").split("\n")
    merged: dict[tuple[str, int], str] = {}
    for line in [*existing, *lines]:
        merged.pop(signature_key(line), None)
        merged[signature_key(line)] = line
    if len(merged) > MAX_SIGNATURES:
        raise MalformedError("note", f"more than {MAX_SIGNATURES} signatures")
    return head + "".join(line + "\n" for line in merged.values()).encode()
