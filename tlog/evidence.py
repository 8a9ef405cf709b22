"""Fork evidence: a log's two commitments to one tree size with different roots, in one file.

Owns :func:`verify_checkpoints_consistent` (the check a monitor or witness runs between the
checkpoint it trusts and a new one, raising :class:`~tlog.errors.InconsistentLogError` only
when the proof shows a fork), the evidence file every detector writes — the monitor, ``verify
consistency``/``inclusion``, the witness, the edge submitter, ``verify anchor`` — with its
strict parser, and :func:`verify_fork_evidence`, which anyone can run offline with the log's
key. Imports tlog.checkpoint, tlog.proofs, tlog.parsing, tlog.note, tlog.hashing and
tlog.errors; nothing of web3 or of the anchor package (an anchor here is plain values).

What makes a fork conclusive. A failing consistency proof proves nothing to a third party:
anybody can send garbage. A fork is proven when the log committed to two roots for one tree
size. Each commitment is a checkpoint signed by the log's key, or an anchor: an ``Anchored``
event its anchoring address sent (docs/formats.md). The *older* one is the smaller tree
``(m, r)``; the *newer* ``(n, R)``, ``m <= n``. The file holds ``prefix``, the root that the
newer tree has at size ``m``, and the consistency proof from ``(m, prefix)`` to ``(n, R)``;
the evidence is conclusive when that proof verifies (RFC 9162 2.1.4.2; so ``prefix`` really is
the newer tree's first ``m`` entries) and ``prefix != r``. That one rule covers every case:

* equal sizes: ``prefix`` is ``R`` and the proof is empty — two roots for one size;
* ``m == 0``: ``prefix`` is SHA-256("") and the proof is empty;
* ``m`` not a power of two: ``prefix`` is also computed by the proof itself;
* ``m`` a power of two: the RFC proof leaves the old root out, so ``prefix`` (the hash of a
  complete subtree of the newer tree) is what the proof starts from;
* ``m > n`` cannot be written: the smaller tree is always the older one, whichever was seen
  first. A log that went back to a smaller tree (a rollback) is not shown to have forked
  until it grows a different history.

The file is::

    meterlog-fork-evidence/v2
    prefix <base64 root>        the newer tree's root at the older tree's size
    <base64 hash>               0 to 65 lines: PROOF(older size, newer tree)
    <blank line>
    old <checkpoint|anchor> <byte length>
    <the older commitment>
    new <checkpoint|anchor> <byte length>
    <the newer commitment>

A checkpoint is the signed note, verbatim (it holds a blank line of its own, hence the
lengths). An anchor is nine ``name value`` lines, in this order: ``chain_id``, ``contract``,
``block_number``, ``block_hash``, ``tx_hash``, ``log_index``, ``sender`` (chain values in
lowercase 0x-hex), ``tree_size``, ``root_hash`` (base64). At least one side is a checkpoint,
and the anchor is of that checkpoint's origin. That the anchor is on chain, and sent by the
log's anchoring address, is not checked here (no chain is reached from tlog): ``meterlog
verify evidence --rpc`` does it.

Files of ``meterlog-fork-evidence/v1`` (the same without the ``prefix`` line and the kind of
each side; both sides checkpoints) still parse; they are conclusive when the proof alone shows
the newer tree's root at the older size (:func:`tlog.proofs.consistency_old_root`).

>>> anchor = Anchor(1, "0x" + "aa" * 20, 7, bytes(32), bytes(32), 0, "0x" + "bb" * 20, 0,
...                 bytes(32))
>>> print(format_fork_evidence(ForkEvidence(anchor, b"A\\n", (), bytes(32))).decode(), end="")
meterlog-fork-evidence/v2
prefix AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
<BLANKLINE>
old anchor 360
chain_id 1
contract 0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
block_number 7
block_hash 0x0000000000000000000000000000000000000000000000000000000000000000
tx_hash 0x0000000000000000000000000000000000000000000000000000000000000000
log_index 0
sender 0xbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
tree_size 0
root_hash AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
new checkpoint 2
A
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tlog.checkpoint import SignedCheckpoint, open_checkpoint
from tlog.errors import InconsistentLogError, MalformedError, ProofError, VerificationError
from tlog.hashing import HASH_SIZE
from tlog.note import MAX_NOTE_SIZE, Verifier
from tlog.parsing import (
    MAX_INT63,
    check_hashes,
    decode_b64,
    encode_b64,
    parse_decimal,
    parse_hash_lines,
    split_head,
)
from tlog.proofs import MAX_CONSISTENCY_PROOF_LENGTH, consistency_old_root, verify_consistency

__all__ = [
    "HEADER",
    "HEADER_V1",
    "Anchor",
    "Fork",
    "ForkEvidence",
    "format_fork_evidence",
    "parse_fork_evidence",
    "verify_checkpoints_consistent",
    "verify_fork_evidence",
]

HEADER = "meterlog-fork-evidence/v2"
HEADER_V1 = "meterlog-fork-evidence/v1"
_CHECKPOINT = "checkpoint"
_ANCHOR = "anchor"
_ANCHOR_FIELDS = (
    "chain_id",
    "contract",
    "block_number",
    "block_hash",
    "tx_hash",
    "log_index",
    "sender",
    "tree_size",
    "root_hash",
)


def _check_address(value: str, field: str) -> None:
    if not (
        isinstance(value, str)
        and len(value) == 42
        and value.startswith("0x")
        and all(c in "0123456789abcdef" for c in value[2:])
    ):
        raise MalformedError(field, f"{value!r} is not 0x and 40 lowercase hex digits")


def _check_int(value: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT63:
        raise MalformedError(field, f"{value!r} is not an integer in 0..2**63-1")


def _check_hash(value: bytes, field: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise MalformedError(field, f"not {HASH_SIZE} bytes")


@dataclass(frozen=True, slots=True)
class Anchor:
    """An anchor as fork evidence states it: the (tree size, root hash) its ``Anchored`` event
    commits to, the address that sent it, and where the event is on chain. Its event's bytes
    are the ABI encoding of (SHA-256 of the origin, ``sender``, ``tree_size``, ``root_hash``)
    (docs/formats.md, ``anchor.record``)."""

    chain_id: int
    contract: str
    """The anchor contract's address, lowercase 0x-hex."""
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int
    """The event's index among the logs of its block."""
    sender: str
    """The caller of ``anchor`` (the event's ``sender`` topic), lowercase 0x-hex."""
    tree_size: int
    root_hash: bytes

    def __post_init__(self) -> None:
        for name in ("chain_id", "block_number", "log_index", "tree_size"):
            _check_int(getattr(self, name), f"anchor.{name}")
        for name in ("contract", "sender"):
            _check_address(getattr(self, name), f"anchor.{name}")
        for name in ("block_hash", "tx_hash", "root_hash"):
            _check_hash(getattr(self, name), f"anchor.{name}")


def _format_anchor(anchor: Anchor) -> bytes:
    values = {
        "block_hash": "0x" + anchor.block_hash.hex(),
        "tx_hash": "0x" + anchor.tx_hash.hex(),
        "root_hash": encode_b64(anchor.root_hash),
    }
    lines = [f"{n} {values.get(n, getattr(anchor, n))}\n" for n in _ANCHOR_FIELDS]
    return "".join(lines).encode("ascii")


def _parse_chain_hash(text: str, field: str) -> bytes:
    if len(text) != 2 + 2 * HASH_SIZE or not text.startswith("0x"):
        raise MalformedError(field, f"{text[:80]!r} is not 0x and 64 lowercase hex digits")
    if not all(c in "0123456789abcdef" for c in text[2:]):
        raise MalformedError(field, f"{text[:80]!r} is not 0x and 64 lowercase hex digits")
    return bytes.fromhex(text[2:])


def _parse_anchor(data: bytes) -> Anchor:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedError("anchor", "not ASCII") from exc
    if not text.endswith("\n"):
        raise MalformedError("anchor", "does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) != len(_ANCHOR_FIELDS):
        raise MalformedError("anchor", f"{len(lines)} lines, not {len(_ANCHOR_FIELDS)}")
    values: dict[str, str] = {}
    for name, line in zip(_ANCHOR_FIELDS, lines, strict=True):
        label, space, value = line.partition(" ")
        if label != name or not space:
            raise MalformedError(f"anchor.{name}", f"expected '{name} <value>', got {line[:40]!r}")
        values[name] = value
    return Anchor(
        chain_id=parse_decimal(values["chain_id"], "anchor.chain_id"),
        contract=values["contract"],
        block_number=parse_decimal(values["block_number"], "anchor.block_number"),
        block_hash=_parse_chain_hash(values["block_hash"], "anchor.block_hash"),
        tx_hash=_parse_chain_hash(values["tx_hash"], "anchor.tx_hash"),
        log_index=parse_decimal(values["log_index"], "anchor.log_index"),
        sender=values["sender"],
        tree_size=parse_decimal(values["tree_size"], "anchor.tree_size"),
        root_hash=decode_b64(values["root_hash"], "anchor.root_hash"),
    )


Commitment = bytes | Anchor
"""One side of fork evidence: a signed checkpoint note (verbatim), or an anchor."""


@dataclass(frozen=True, slots=True)
class ForkEvidence:
    """The log's two commitments, the newer tree's root at the older size, and the proof.

    ``old`` and ``new`` are each a signed checkpoint note or an :class:`Anchor` (not both
    anchors); ``old`` is the smaller tree. ``prefix`` is None only in a v1 file.
    """

    old: Commitment
    new: Commitment
    proof: tuple[bytes, ...]
    prefix: bytes | None = None

    def __post_init__(self) -> None:
        for name, side in (("old", self.old), ("new", self.new)):
            if isinstance(side, bytes):
                if not side or len(side) > MAX_NOTE_SIZE:
                    raise MalformedError(name, f"empty or over {MAX_NOTE_SIZE} bytes")
            elif not isinstance(side, Anchor):
                raise MalformedError(name, "neither a signed checkpoint nor an anchor")
        if isinstance(self.old, Anchor) and isinstance(self.new, Anchor):
            raise MalformedError("evidence", "two anchors: one side must be a checkpoint")
        check_hashes(self.proof, "proof", MAX_CONSISTENCY_PROOF_LENGTH)
        if self.prefix is not None:
            _check_hash(self.prefix, "prefix")

    @classmethod
    def from_error(cls, error: InconsistentLogError) -> ForkEvidence:
        return cls(error.old_checkpoint, error.new_checkpoint, error.proof, error.prefix)


def _side(side: Commitment) -> tuple[str, bytes]:
    if isinstance(side, Anchor):
        return _ANCHOR, _format_anchor(side)
    return _CHECKPOINT, side


def format_fork_evidence(evidence: ForkEvidence) -> bytes:
    """The v2 file; MalformedError for evidence without ``prefix`` (from a v1 file)."""
    if evidence.prefix is None:
        raise MalformedError("prefix", "missing: a v1 file cannot be written as v2")
    head = [HEADER, "prefix " + encode_b64(evidence.prefix)]
    head += [encode_b64(h) for h in evidence.proof]
    parts = [("\n".join(head) + "\n\n").encode()]
    for label, side in (("old", evidence.old), ("new", evidence.new)):
        kind, body = _side(side)
        parts += [f"{label} {kind} {len(body)}\n".encode(), body]
    return b"".join(parts)


def _framed(data: bytes, at: int, label: str, kinds: Sequence[str]) -> tuple[str, bytes, int]:
    """The kind and the bytes of the part labelled ``label`` at ``at``, and where it ends."""
    end = data.find(b"\n", at)
    if end < 0:
        raise MalformedError(label, "missing")
    line = data[at:end].decode("ascii", errors="replace")
    words = line.split(" ")
    if len(kinds) == 1:
        words.insert(1, kinds[0])  # v1: "old <length>", always a checkpoint
    if len(words) != 3 or words[0] != label or words[1] not in kinds:
        want = f"{label} <{'|'.join(kinds)}> <length>" if len(kinds) > 1 else f"{label} <length>"
        raise MalformedError(label, f"expected '{want}', got {line[:40]!r}")
    length = parse_decimal(words[2], label, MAX_NOTE_SIZE)
    start = end + 1
    if start + length > len(data):
        raise MalformedError(label, "truncated")
    return words[1], data[start : start + length], start + length


def parse_fork_evidence(data: bytes) -> ForkEvidence:
    """Parse an evidence file (v2, or v1) strictly: header, ``prefix`` (v2), proof lines, a
    blank line, both framed sides, and nothing after them."""
    lines, rest = split_head(data, "evidence")
    kinds: tuple[str, ...]
    if lines[0] == HEADER:
        if len(lines) < 2 or not lines[1].startswith("prefix "):
            raise MalformedError("prefix", "the line after the header is not 'prefix <root>'")
        prefix: bytes | None = decode_b64(lines[1].removeprefix("prefix "), "prefix")
        hash_lines, kinds = lines[2:], (_CHECKPOINT, _ANCHOR)
    elif lines[0] == HEADER_V1:
        prefix, hash_lines, kinds = None, lines[1:], (_CHECKPOINT,)
    else:
        raise MalformedError("evidence.header", f"first line is not {HEADER} (or {HEADER_V1})")
    proof = parse_hash_lines(hash_lines, "proof", MAX_CONSISTENCY_PROOF_LENGTH)
    sides: list[Commitment] = []
    at = len(data) - len(rest)
    for label in ("old", "new"):
        kind, body, at = _framed(data, at, label, kinds)
        sides.append(_parse_anchor(body) if kind == _ANCHOR else body)
    if at != len(data):
        raise MalformedError("evidence", "trailing data after the new side")
    return ForkEvidence(sides[0], sides[1], proof, prefix)


def verify_checkpoints_consistent(
    old: SignedCheckpoint,
    new: SignedCheckpoint,
    proof: Sequence[bytes],
    *,
    prefix: bytes | None = None,
) -> None:
    """Check that ``old`` is a prefix of ``new`` by ``proof`` (empty for equal sizes).

    Raises InconsistentLogError (both notes, the proof, and the root ``new``'s tree has at
    ``old``'s size) only when that is a fork (see the module docstring). ``prefix`` is that
    root when the caller read it from hashes it authenticated against ``new`` (a
    ``TileHashReader``); without it, it is what the proof shows, and a proof from a power of
    two shows none. Raises ProofError when the proof (with ``prefix``) does not lead to
    ``new``'s root: a bad proof shows nothing, whoever sent it. MalformedError when the two
    are not checkpoints of one origin or ``old`` is the larger tree.
    """
    a, b = old.checkpoint, new.checkpoint
    if a.origin != b.origin:
        raise MalformedError("origin", f"{a.origin!r} and {b.origin!r} are different logs")
    if a.tree_size > b.tree_size:
        raise MalformedError("old", f"size {a.tree_size} is larger than {b.tree_size}")
    if prefix is None:
        try:
            verify_consistency(a.tree_size, b.tree_size, proof, a.root_hash, b.root_hash)
        except ProofError as failed:
            try:
                prefix = consistency_old_root(a.tree_size, b.tree_size, proof, b.root_hash)
            except ProofError:
                raise failed from None
        else:
            return
    else:
        verify_consistency(a.tree_size, b.tree_size, proof, prefix, b.root_hash)
    if prefix == a.root_hash:
        return
    raise InconsistentLogError(
        f"two roots for tree size {a.tree_size}: {encode_b64(a.root_hash)} in the checkpoint "
        f"of that size, {encode_b64(prefix)} in the tree of size {b.tree_size}",
        old_checkpoint=old.signed_note,
        new_checkpoint=new.signed_note,
        proof=tuple(proof),
        prefix=prefix,
    )


@dataclass(frozen=True, slots=True)
class Fork:
    """What conclusive fork evidence shows: at ``tree_size``, the log of ``origin`` committed
    to ``root_hash`` (``old``) and to ``other_root`` (the first ``tree_size`` entries of
    ``new``, a tree of ``new_size``)."""

    origin: str
    tree_size: int
    root_hash: bytes
    other_root: bytes
    new_size: int
    old: SignedCheckpoint | Anchor
    new: SignedCheckpoint | Anchor

    @property
    def anchors(self) -> list[Anchor]:
        """The anchors among the two sides: what only a chain can confirm."""
        return [side for side in (self.old, self.new) if isinstance(side, Anchor)]


def _tree(side: SignedCheckpoint | Anchor) -> tuple[int, bytes]:
    if isinstance(side, Anchor):
        return side.tree_size, side.root_hash
    return side.checkpoint.tree_size, side.checkpoint.root_hash


def verify_fork_evidence(evidence: ForkEvidence, log_keys: Sequence[Verifier]) -> Fork:
    """Check that ``evidence`` is conclusive (the module docstring's rule): every checkpoint in
    it is signed by one of ``log_keys``, both are of one origin, the older is the smaller
    tree, and the proof shows another root for the older size in the newer tree. Returns
    what it shows; raises VerificationError (MalformedError for a misordered file) if it
    does not show a fork. An anchor in it is taken as stated: that it is on chain and the
    log's is for the caller to check (``Fork.anchors``)."""
    opened: list[SignedCheckpoint | Anchor] = []
    for side in (evidence.old, evidence.new):
        opened.append(side if isinstance(side, Anchor) else open_checkpoint(side, log_keys))
    old, new = opened
    origins = {s.checkpoint.origin for s in opened if isinstance(s, SignedCheckpoint)}
    if len(origins) != 1:
        raise VerificationError(f"not one log: checkpoints of {sorted(origins)}")
    (origin,) = origins
    (m, root), (n, new_root) = _tree(old), _tree(new)
    if m > n:
        raise MalformedError("old", f"size {m} is larger than the new side's {n}")
    try:
        if evidence.prefix is None:
            prefix = consistency_old_root(m, n, evidence.proof, new_root)
        else:
            prefix = evidence.prefix
            verify_consistency(m, n, evidence.proof, prefix, new_root)
    except ProofError as exc:
        raise VerificationError(
            f"not evidence of a fork: the proof does not show the root of the tree of size {n} "
            f"at size {m}: {exc}"
        ) from exc
    if prefix == root:
        raise VerificationError(
            f"not a fork: the tree of size {n} has the same root at size {m} (consistent)"
        )
    return Fork(origin, m, root, prefix, n, old, new)
