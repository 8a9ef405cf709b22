"""RFC 6962 inclusion and consistency proofs: which hashes, compute, and RFC 9162 verification.

Owns PATH (inclusion) and PROOF (consistency) generation and their checkers. Imports only
tlog.hashing, tlog.merkle and tlog.errors.

A proof is a list of subtree ranges (:func:`inclusion_ranges`, :func:`consistency_ranges`);
each range's hash is a fold of stored hashes. So generating a proof is three steps: a pure
"which stored hashes" function (``*_indexes``), one ``read_hashes`` call, and a pure
"compute from these hashes" function (``*_from``). :func:`inclusion_proof` and
:func:`consistency_proof` do the three in one call.

Verification follows RFC 9162 2.1.3.2 and 2.1.4.2 step by step, including the final
``sn == 0`` checks and the keep-halving loop, rejects any index or size outside uint64 and any
proof longer than :data:`MAX_PROOF_LENGTH` (inclusion) or :data:`MAX_CONSISTENCY_PROOF_LENGTH`
(consistency) before hashing anything, and raises :class:`~tlog.errors.ProofError` (never
returns False).

Policy outside the RFC's ``0 < old_size < new_size`` (the C2SP tlog-witness rules):

* ``old_size == new_size``: consistent iff the proof is empty and the two roots are equal.
* ``old_size == 0``: consistent iff the proof is empty and the old root is SHA-256("") —
  the empty tree is a prefix of every tree. (transparency-dev/merkle rejects size 0
  outright; the tests record where the two policies differ.)
* ``old_size > new_size``: an error.

:func:`consistency_old_root` runs the same steps from the new tree's side alone: the root
that a proof leading to ``new_root`` shows for ``old_size``, whatever root was claimed for
it — what fork evidence rests on (:mod:`tlog.evidence`).

Neither kind of proof binds the tree size by itself: the size-3 path of leaf 0 also verifies
as size 4 against the same root, and PROOF(1, D[3]) also verifies as 1 -> 4 against the same
two roots. So callers must take each size and root together from a verified checkpoint.
(``old_size`` is bound: the RFC's "proof too long" and ``sn == 0`` checks see to that.)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from tlog.errors import MalformedError, ProofError
from tlog.hashing import EMPTY_ROOT, HASH_SIZE, node_hash
from tlog.merkle import HashReader, check_tree_size, range_hash, range_indexes

__all__ = [
    "MAX_CONSISTENCY_PROOF_LENGTH",
    "MAX_PROOF_LENGTH",
    "consistency_old_root",
    "consistency_proof",
    "consistency_proof_from",
    "consistency_proof_indexes",
    "consistency_ranges",
    "inclusion_proof",
    "inclusion_proof_from",
    "inclusion_proof_indexes",
    "inclusion_proofs",
    "inclusion_ranges",
    "verify_consistency",
    "verify_inclusion",
]

MAX_PROOF_LENGTH = 64
"""No inclusion proof in a tree of fewer than 2**64 leaves has more hashes than this (a leaf is
at most 64 levels deep); longer inclusion proofs are rejected before any work."""

MAX_CONSISTENCY_PROOF_LENGTH = MAX_PROOF_LENGTH + 1
"""A consistency proof can hold one hash more than an inclusion proof: the siblings on the way
up (at most 64) plus the hash of the old tree's last subtree when the old size is not a power
of two, e.g. 65 hashes for PROOF(3, D[2**64 - 1]). Longer ones are rejected before any work."""

_UINT64_LIMIT = 1 << 64

Range = tuple[int, int]


# ---------------------------------------------------------------------------------------------
# Which subtrees: RFC 6962 PATH and PROOF as ranges [lo, hi), bottom-up.


def _split(lo: int, hi: int) -> int:
    """lo + k, with k the largest power of two strictly less than hi - lo."""
    return lo + (1 << ((hi - lo - 1).bit_length() - 1))


def inclusion_ranges(index: int, tree_size: int) -> list[Range]:
    """The ranges whose hashes are RFC 6962 PATH(index, D[tree_size]), leaf sibling first."""
    check_tree_size(tree_size)
    if not 0 <= index < tree_size:
        raise MalformedError("index", f"{index} is not below tree_size {tree_size}")
    ranges: list[Range] = []
    lo, hi = 0, tree_size
    while hi - lo > 1:
        mid = _split(lo, hi)
        if index < mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo = mid
    ranges.reverse()
    return ranges


def _inclusion_paths(indexes: Sequence[int], tree_size: int) -> list[list[Range]]:
    """:func:`inclusion_ranges` of each of ``indexes``, from one walk down the tree: a
    subtree the paths of several leaves share is split once, not once per leaf."""
    check_tree_size(tree_size)
    for index in indexes:
        if not 0 <= index < tree_size:
            raise MalformedError("index", f"{index} is not below tree_size {tree_size}")
    paths: list[list[Range]] = [[] for _ in indexes]  # top-down until the end
    at = indexes.__getitem__
    stack = [(0, tree_size, sorted(range(len(indexes)), key=at))]
    while stack:
        lo, hi, group = stack.pop()  # group: positions in indexes, in the order of their index
        if hi - lo == 1:
            continue
        mid = _split(lo, hi)
        cut = bisect_left(group, mid, key=at)
        for sibling, half, lo_half, hi_half in (
            ((mid, hi), group[:cut], lo, mid),
            ((lo, mid), group[cut:], mid, hi),
        ):
            if half:
                for position in half:
                    paths[position].append(sibling)
                stack.append((lo_half, hi_half, half))
    for path in paths:
        path.reverse()
    return paths


def consistency_ranges(old_size: int, new_size: int) -> list[Range]:
    """The ranges whose hashes are RFC 6962 PROOF(old_size, D[new_size]), bottom-up.

    Empty when ``old_size`` is 0 or equals ``new_size`` (see the module's size policy).
    """
    check_tree_size(old_size, "old_size")
    check_tree_size(new_size, "new_size")
    if old_size > new_size:
        raise MalformedError("old_size", f"{old_size} is larger than new_size {new_size}")
    if old_size in (0, new_size):
        return []
    # SUBPROOF(m, D[lo:hi], b): b ("the verifier knows this subtree's root") holds while lo == 0.
    ranges: list[Range] = []
    lo, hi = 0, new_size
    while old_size != hi:
        mid = _split(lo, hi)
        if old_size <= mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo = mid
    if lo != 0:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


# ---------------------------------------------------------------------------------------------
# Which stored hashes, and the proof computed from them.


def _indexes(ranges: Sequence[Range]) -> list[int]:
    return [i for lo, hi in ranges for i in range_indexes(lo, hi)]


def _fold(ranges: Sequence[Range], hashes: Sequence[bytes]) -> list[bytes]:
    want = sum(len(range_indexes(lo, hi)) for lo, hi in ranges)
    if len(hashes) != want:
        raise MalformedError("hashes", f"got {len(hashes)} hashes, want {want}")
    proof: list[bytes] = []
    at = 0
    for lo, hi in ranges:
        count = len(range_indexes(lo, hi))
        proof.append(range_hash(hashes[at : at + count]))
        at += count
    return proof


def inclusion_proof_indexes(index: int, tree_size: int) -> list[int]:
    """The stored hash indexes to read for the inclusion proof of ``index``."""
    return _indexes(inclusion_ranges(index, tree_size))


def inclusion_proof_from(index: int, tree_size: int, hashes: Sequence[bytes]) -> list[bytes]:
    """The inclusion proof, from the hashes read at :func:`inclusion_proof_indexes`."""
    return _fold(inclusion_ranges(index, tree_size), hashes)


def inclusion_proof(index: int, tree_size: int, reader: HashReader) -> list[bytes]:
    """RFC 6962 PATH(index, D[tree_size]), in one ``read_hashes`` call."""
    indexes = inclusion_proof_indexes(index, tree_size)
    return inclusion_proof_from(index, tree_size, reader.read_hashes(indexes))


def inclusion_proofs(
    indexes: Sequence[int], tree_size: int, reader: HashReader
) -> list[list[bytes]]:
    """The inclusion proof of each of ``indexes`` (what :func:`inclusion_proof` returns for
    each), in one ``read_hashes`` call for all of them, each shared subtree folded once.

    For answering a whole batch of new leaves at once: their paths share most of their
    subtrees, so this reads and hashes far less than one :func:`inclusion_proof` per leaf.
    """
    paths = _inclusion_paths(indexes, tree_size)
    stored = {r: range_indexes(*r) for r in {r for path in paths for r in path}}
    needed = sorted({i for found in stored.values() for i in found})
    hashes = reader.read_hashes(needed)
    if len(hashes) != len(needed):
        raise MalformedError("hashes", f"got {len(hashes)} hashes, want {len(needed)}")
    by_index = dict(zip(needed, hashes, strict=True))
    folded = {r: range_hash([by_index[i] for i in found]) for r, found in stored.items()}
    return [[folded[r] for r in path] for path in paths]


def consistency_proof_indexes(old_size: int, new_size: int) -> list[int]:
    """The stored hash indexes to read for the consistency proof from old to new size."""
    return _indexes(consistency_ranges(old_size, new_size))


def consistency_proof_from(old_size: int, new_size: int, hashes: Sequence[bytes]) -> list[bytes]:
    """The consistency proof, from the hashes read at :func:`consistency_proof_indexes`."""
    return _fold(consistency_ranges(old_size, new_size), hashes)


def consistency_proof(old_size: int, new_size: int, reader: HashReader) -> list[bytes]:
    """RFC 6962 PROOF(old_size, D[new_size]), in one ``read_hashes`` call."""
    indexes = consistency_proof_indexes(old_size, new_size)
    return consistency_proof_from(old_size, new_size, reader.read_hashes(indexes))


# ---------------------------------------------------------------------------------------------
# Verification: RFC 9162 2.1.3.2 and 2.1.4.2.


def _check_uint64(value: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProofError(f"{field} is not an integer")
    if not 0 <= value < _UINT64_LIMIT:
        raise ProofError(f"{field} {value} is outside uint64")


def _check_hash(value: bytes, field: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{field} is not a {HASH_SIZE}-byte hash")


def _check_proof(proof: Sequence[bytes], max_length: int) -> None:
    if len(proof) > max_length:
        raise ProofError(f"proof has {len(proof)} hashes, more than {max_length}")
    for i, h in enumerate(proof):
        _check_hash(h, f"proof[{i}]")


def verify_inclusion(
    leaf_hash: bytes,
    index: int,
    tree_size: int,
    proof: Sequence[bytes],
    root_hash: bytes,
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree (``tree_size``, ``root_hash``).

    ``leaf_hash`` is SHA-256(0x00 || entry), not the entry. Raises ProofError.
    """
    _check_uint64(index, "index")
    _check_uint64(tree_size, "tree_size")
    _check_hash(leaf_hash, "leaf_hash")
    _check_hash(root_hash, "root_hash")
    _check_proof(proof, MAX_PROOF_LENGTH)
    if index >= tree_size:
        raise ProofError(f"index {index} is not below tree_size {tree_size}")

    fn, sn, r = index, tree_size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                # fn is the last node of its level and has no right sibling: climb past every
                # level where that stays true.
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than the path to the root")
    if r != root_hash:
        raise ProofError(
            "inclusion proof does not lead to the root", expected=root_hash, calculated=r
        )


def verify_consistency(
    old_size: int,
    new_size: int,
    proof: Sequence[bytes],
    old_root: bytes,
    new_root: bytes,
) -> None:
    """Check that the tree (old_size, old_root) is a prefix of (new_size, new_root).

    Raises ProofError; the size policy outside ``0 < old_size < new_size`` is in the module
    docstring.
    """
    _check_uint64(old_size, "old_size")
    _check_uint64(new_size, "new_size")
    _check_hash(old_root, "old_root")
    _check_hash(new_root, "new_root")
    _check_proof(proof, MAX_CONSISTENCY_PROOF_LENGTH)
    if old_size > new_size:
        raise ProofError(f"old_size {old_size} is larger than new_size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("two roots for one tree size", expected=old_root, calculated=new_root)
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError(
                "the root of the empty tree must be SHA-256('')",
                expected=EMPTY_ROOT,
                calculated=old_root,
            )
        return
    if old_size == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ProofError(
                "the root of the empty tree must be SHA-256('')",
                expected=EMPTY_ROOT,
                calculated=old_root,
            )
        return
    if not proof:
        raise ProofError("empty consistency proof between different sizes")

    path = list(proof)
    # A power-of-two old tree is itself a complete subtree, left out of the proof.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fr, sr = _consistency_roots(old_size, new_size, path)
    if fr != old_root:
        raise ProofError("proof does not lead to the old root", expected=old_root, calculated=fr)
    if sr != new_root:
        raise ProofError("proof does not lead to the new root", expected=new_root, calculated=sr)


def consistency_old_root(
    old_size: int, new_size: int, proof: Sequence[bytes], new_root: bytes
) -> bytes:
    """The root of the first ``old_size`` entries of the tree (``new_size``, ``new_root``),
    as ``proof`` shows it: RFC 9162 2.1.4.2 run from the new tree's side alone.

    A consistency proof is made of the new tree's own subtree hashes. If they lead to
    ``new_root``, they are those hashes (SHA-256 is collision resistant, and the 0x00/0x01
    prefixes keep leaves and nodes apart), so the old root they lead to is that tree's
    prefix, whatever root anybody claimed for ``old_size``. A proof from a tree that does
    not extend a checkpoint thus shows that checkpoint's size with another root: fork
    evidence (:mod:`tlog.evidence`).

    Raises ProofError when the proof does not lead to ``new_root`` (it shows nothing then),
    or when ``old_size`` is a power of two below ``new_size``: that proof leaves the old
    tree's root out (its verifier knows it), so it cannot show it. For ``old_size ==
    new_size`` the proof must be empty and the answer is ``new_root``; for ``old_size == 0``
    it must be empty and the answer is SHA-256("").
    """
    _check_uint64(old_size, "old_size")
    _check_uint64(new_size, "new_size")
    _check_hash(new_root, "new_root")
    _check_proof(proof, MAX_CONSISTENCY_PROOF_LENGTH)
    if old_size > new_size:
        raise ProofError(f"old_size {old_size} is larger than new_size {new_size}")
    if old_size in (0, new_size):
        if proof:
            raise ProofError(
                "a proof from the empty tree must be empty"
                if old_size == 0
                else "a proof between equal sizes must be empty"
            )
        return EMPTY_ROOT if old_size == 0 else new_root
    if old_size & (old_size - 1) == 0:
        raise ProofError(
            f"a proof from size {old_size} (a power of two) leaves the old root out: "
            "it cannot show it"
        )
    if not proof:
        raise ProofError("empty consistency proof between different sizes")
    fr, sr = _consistency_roots(old_size, new_size, proof)
    if sr != new_root:
        raise ProofError("proof does not lead to the new root", expected=new_root, calculated=sr)
    return fr


def _consistency_roots(old_size: int, new_size: int, path: Sequence[bytes]) -> tuple[bytes, bytes]:
    """The (old, new) roots RFC 9162 2.1.4.2 computes from ``path``: the proof with the old
    tree's last complete subtree first (the old root itself when old_size is a power of
    two). ``0 < old_size < new_size`` and ``path`` is not empty; raises ProofError when it
    has the wrong length."""
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than needed")
    return fr, sr
