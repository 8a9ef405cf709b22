"""A naive, recursive RFC 6962 Merkle tree kept in the tests as the oracle for tlog.

Written from the text of RFC 6962 section 2.1 (MTH, PATH, PROOF via SUBPROOF) and, for the
published rolling vectors, the subtree generalisation of draft-ietf-plants-merkle-tree-certs.
It deliberately shares nothing with tlog: hashing is done here with hashlib, trees are plain
lists of entries, and every function recurses exactly as the RFC's definitions do, slicing
D[0:k] and D[k:n]. The only concession to speed is that MTH is memoised by value (a pure
function of the entries, so the memo cannot change a result); tests use it for small trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from hashlib import sha256

__all__ = [
    "bit_ceil",
    "consistency_shape",
    "is_valid_subtree",
    "leaf_hash",
    "mth",
    "node_hash",
    "path",
    "path_shape",
    "proof",
    "split_point",
    "subproof",
    "subtree_inclusion_path",
    "subtree_proof",
]

LEFT = "L"
"""In a shape: the proof hash is the left child, the running hash the right one."""
RIGHT = "R"
"""In a shape: the proof hash is the right child, the running hash the left one."""


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    return sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    return sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """k, the largest power of two smaller than n (n > 1), found by doubling from 1."""
    if n < 2:
        raise ValueError(f"no split point for n = {n}")
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(entries: Sequence[bytes]) -> bytes:
    """MTH(D[n]): the Merkle Tree Hash of a list of entries (RFC 6962 2.1)."""
    return _mth(tuple(entries))


@lru_cache(maxsize=1 << 16)
def _mth(entries: tuple[bytes, ...]) -> bytes:
    n = len(entries)
    if n == 0:
        return sha256(b"").digest()
    if n == 1:
        return leaf_hash(entries[0])
    k = split_point(n)
    return node_hash(_mth(entries[:k]), _mth(entries[k:]))


def path(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the audit path of leaf m, leaf sibling first (RFC 6962 2.1.1)."""
    n = len(entries)
    if not 0 <= m < n:
        raise ValueError(f"PATH needs 0 <= m < n, got m = {m}, n = {n}")
    if n == 1:
        return []
    k = split_point(n)
    if m < k:
        return [*path(m, entries[:k]), mth(entries[k:])]
    return [*path(m - k, entries[k:]), mth(entries[:k])]


def subproof(m: int, entries: Sequence[bytes], *, b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 6962 2.1.2; b says the verifier knows MTH(D[0:m])."""
    n = len(entries)
    if m == n:
        return [] if b else [mth(entries)]
    k = split_point(n)
    if m <= k:
        return [*subproof(m, entries[:k], b=b), mth(entries[k:])]
    return [*subproof(m - k, entries[k:], b=False), mth(entries[:k])]


def proof(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true): the consistency proof (RFC 6962 2.1.2).

    Defined by the RFC for 0 < m < n; m == n gives the empty proof, as SUBPROOF does.
    """
    n = len(entries)
    if not 0 < m <= n:
        raise ValueError(f"PROOF needs 0 < m <= n, got m = {m}, n = {n}")
    return subproof(m, entries, b=True)


def path_shape(m: int, n: int) -> tuple[str, ...]:
    """Where each hash of PATH(m, D[n]) goes when the path is folded: LEFT or RIGHT.

    Follows the PATH recursion on sizes alone, so it works for any n (2**64 - 1 included).
    Two (index, size) pairs with equal shapes fold one path into the same root.
    """
    if not 0 <= m < n:
        raise ValueError(f"PATH needs 0 <= m < n, got m = {m}, n = {n}")
    if n == 1:
        return ()
    k = split_point(n)
    if m < k:
        return (*path_shape(m, k), RIGHT)
    return (*path_shape(m - k, n - k), LEFT)


def consistency_shape(m: int, n: int) -> tuple[str, ...]:
    """How a verifier folds PROOF(m, D[n]) (0 < m < n), one letter per proof hash.

    Follows the SUBPROOF recursion on sizes. The first letter says where the fold starts: "K"
    when the old root is implied (b true, m a complete subtree), "S" when the proof starts
    with a hash of its own. Each later hash is "O" (a left sibling, folded into both the old
    and the new root) or "N" (a right sibling, folded into the new root only). Two size pairs
    with equal shapes turn one proof and one pair of roots into the same computation.
    """
    if not 0 < m < n:
        raise ValueError(f"PROOF shapes need 0 < m < n, got m = {m}, n = {n}")

    def sub(m: int, n: int, *, b: bool) -> tuple[str, ...]:
        if m == n:
            return ("K",) if b else ("S",)
        k = split_point(n)
        if m <= k:
            return (*sub(m, k, b=b), "N")
        return (*sub(m - k, n - k, b=False), "O")

    return sub(m, n, b=True)


def bit_ceil(n: int) -> int:
    """The smallest power of two >= n (1 for n = 0)."""
    p = 1
    while p < n:
        p *= 2
    return p


def is_valid_subtree(start: int, end: int) -> bool:
    """The MTC draft's valid subtrees [start, end): start is a multiple of bit_ceil(end-start).

    [0, end) and [k, k) are always valid.
    """
    return 0 <= start <= end and start % bit_ceil(end - start) == 0


def subtree_inclusion_path(
    index: int, start: int, end: int, entries: Sequence[bytes]
) -> list[bytes]:
    """The MTC draft's subtree inclusion proof: PATH(index - start, D[start:end])."""
    return path(index - start, entries[start:end])


def subtree_proof(start: int, end: int, entries: Sequence[bytes]) -> list[bytes]:
    """The MTC draft's subtree consistency proof of [start, end) in D[n], n = len(entries).

    SUBPROOF generalised from prefixes to valid subtrees: descend towards [start, end); once
    the range is the whole of the current subtree, emit nothing if the verifier knows its hash
    (b) or the hash itself otherwise. Empty subtrees [k, k) have the empty proof. Rows with
    start == 0 are exactly PROOF(end, D[n]).
    """
    if not is_valid_subtree(start, end) or end > len(entries):
        raise ValueError(f"[{start}, {end}) is not a valid subtree of D[{len(entries)}]")
    if start == end:
        return []

    def sub(start: int, end: int, d: Sequence[bytes], *, b: bool) -> list[bytes]:
        n = len(d)
        if start == 0 and end == n:
            return [] if b else [mth(d)]
        k = split_point(n)
        if end <= k:
            return [*sub(start, end, d[:k], b=b), mth(d[k:])]
        if start >= k:
            return [*sub(start - k, end - k, d[k:], b=b), mth(d[:k])]
        # [start, end) straddles k: a valid subtree can only do so from the left edge.
        if start != 0:
            raise AssertionError(f"[{start}, {end}) straddles {k} in D[{n}]")
        return [*sub(0, end - k, d[k:], b=False), mth(d[:k])]

    return sub(start, end, entries, b=True)
