"""C2SP tlog-checkpoint: the signed tree head of a log, and its verification policy.

Owns the checkpoint body (origin, tree size, base64 root hash, optional extension lines) of
https://c2sp.org/tlog-checkpoint, parsed strictly, and :func:`open_checkpoint`, which accepts
a signed checkpoint only when a trusted log key signed it and, when asked, a quorum of
trusted witnesses cosigned it. Imports tlog.note, tlog.hashing and tlog.errors.

meterlog's own log never writes extension lines: C2SP does not recommend them, monitors
cannot audit them, and cosigners disagree on whether they are covered (tlog-spec-notes 5.1).
The parser keeps any it finds, so foreign checkpoints still verify and round-trip.

>>> root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
>>> cp = Checkpoint("example.com/behind-the-sofa", 20852163, decode_b64(root, "root"))
>>> print(format_checkpoint(cp), end="")
example.com/behind-the-sofa
20852163
CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=
>>> parse_checkpoint(format_checkpoint(cp)) == cp
True
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from tlog.errors import MalformedError, UnknownKeyError, VerificationError
from tlog.hashing import EMPTY_ROOT, HASH_SIZE
from tlog.note import ALG_COSIGNATURE_V1, ALG_ED25519, Note, Signer, Verifier, open_note, sign_note
from tlog.parsing import MAX_INT63, decode_b64, encode_b64, parse_decimal

__all__ = [
    "Checkpoint",
    "SignedCheckpoint",
    "format_checkpoint",
    "open_checkpoint",
    "parse_checkpoint",
    "sign_checkpoint",
    "signed_time_s",
]


def _has_control(line: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in line)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's commitment to its first ``tree_size`` entries: their ``root_hash``."""

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or _has_control(self.origin):
            raise MalformedError("checkpoint.origin", "empty, or holds a control character")
        size = self.tree_size
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_INT63:
            raise MalformedError(
                "checkpoint.tree_size", f"{size!r} is not an integer in 0..2**63-1"
            )
        if len(self.root_hash) != HASH_SIZE:
            raise MalformedError("checkpoint.root_hash", f"not {HASH_SIZE} bytes")
        if self.tree_size == 0 and self.root_hash != EMPTY_ROOT:
            raise MalformedError("checkpoint.root_hash", "a tree of size 0 has root SHA-256('')")
        for line in self.extensions:
            if not line or _has_control(line):
                raise MalformedError(
                    "checkpoint.extensions",
                    "an extension line is empty or holds a control character",
                )


def format_checkpoint(checkpoint: Checkpoint) -> str:
    """The checkpoint's note text: origin, decimal size, base64 root, each ending in \\n."""
    root = encode_b64(checkpoint.root_hash)
    lines = [checkpoint.origin, str(checkpoint.tree_size), root, *checkpoint.extensions]
    return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint's note text strictly (canonical size, 32-byte root, no empty lines)."""
    if not text.endswith("\n"):
        raise MalformedError("checkpoint", "does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedError("checkpoint", f"has {len(lines)} lines, needs at least 3")
    origin, size_text, root_text, *extensions = lines
    tree_size = parse_decimal(size_text, "checkpoint.tree_size")
    root_hash = decode_b64(root_text, "checkpoint.root_hash")
    return Checkpoint(origin, tree_size, root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[Signer]) -> bytes:
    """The signed checkpoint note."""
    return sign_note(format_checkpoint(checkpoint), signers)


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint that :func:`open_checkpoint` verified, with the note it came from."""

    checkpoint: Checkpoint
    note: Note
    signed_note: bytes
    witnesses: tuple[Verifier, ...]
    """The trusted witnesses whose cosignatures verified."""


def open_checkpoint(
    signed_note: bytes,
    log_keys: Sequence[Verifier],
    *,
    origin: str | None = None,
    witnesses: Sequence[Verifier] = (),
    quorum: int = 0,
) -> SignedCheckpoint:
    """Verify a signed checkpoint: a log key signed it, and ``quorum`` witnesses cosigned it.

    ``log_keys`` are the log's keys (any one must have signed; a signature by a known key
    that does not verify is an error). ``witnesses`` are trusted cosigner keys (type 0x04);
    at least ``quorum`` distinct ones must have cosigned. With ``origin``, the checkpoint's
    origin must equal it. Raises VerificationError or MalformedError.
    """
    if not log_keys:
        raise MalformedError("log_keys", "at least one log key is needed")
    if not 0 <= quorum <= len(set(witnesses)):
        raise MalformedError("quorum", f"{quorum} is outside 0..{len(witnesses)} witnesses")
    for witness in witnesses:
        if witness.alg != ALG_COSIGNATURE_V1:
            raise MalformedError("witnesses", f"{witness.name} is not a cosignature/v1 key")
    witnesses = tuple({(w.name, w.key_id): w for w in witnesses}.values())
    note = open_note(signed_note, [*log_keys, *witnesses])
    if not any(note.signed_by(key) for key in log_keys):
        raise UnknownKeyError("the checkpoint is not signed by any of the log's keys")
    checkpoint = parse_checkpoint(note.text)
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
    cosigned = tuple(w for w in witnesses if note.signed_by(w))
    if len(cosigned) < quorum:
        raise VerificationError(
            f"{len(cosigned)} of the {len(witnesses)} trusted witnesses cosigned; "
            f"the policy needs {quorum}"
        )
    return SignedCheckpoint(checkpoint, note, signed_note, cosigned)


def signed_time_s(signed_note: bytes, log_keys: Sequence[Verifier]) -> int:
    """The log's signed time of a checkpoint, Unix seconds: the timestamp of the
    cosignature/v1 line that a log key adds to its own checkpoint (same name and public key,
    type 0x04). meterlog's log signs one on every checkpoint; note verifiers that do not know
    it ignore it. Billing periods close at this time. Raises VerificationError (UnknownKeyError
    when no log key stamped the checkpoint) or MalformedError."""
    stampers = [
        Verifier(key.name, ALG_COSIGNATURE_V1, key.public_key)
        for key in log_keys
        if key.alg == ALG_ED25519
    ]
    if not stampers:
        raise MalformedError("log_keys", "no Ed25519 log key to find the signed time of")
    note = open_note(signed_note, stampers)
    times = [s.timestamp_s for s in note.signatures if s.timestamp_s is not None]
    return max(times)
