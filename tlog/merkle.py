"""Append-only hash storage for an RFC 6962 tree, in stored-hash-index order.

Owns the layout of the hash store (Go sumdb's "stored hash index", Crosby & Wallach 3.3):
every complete subtree's hash is stored once, in the order it becomes computable while
appending, and nothing is ever rewritten. Appending leaf ``n`` writes its leaf hash and then
one hash per trailing 1-bit of ``n``: ``1 + trailing_zeros(n + 1)`` hashes, fewer than two per
leaf on average. Imports only tlog.hashing and tlog.errors; storage itself is the caller's,
reached through one batched call, :meth:`HashReader.read_hashes`.

Any range ``[lo, hi)`` that proofs need is a run of complete subtrees (largest first), so its
hash is a fold of a few stored hashes: :func:`range_indexes` says which, :func:`range_hash`
folds them. The root of any size is the range ``[0, size)``.

>>> from tlog.hashing import leaf_hash, node_hash
>>> store = MemoryHashStore()
>>> for entry in (b"a", b"b", b"c"):
...     store.append([leaf_hash(entry)])
>>> store.hash_count, stored_hash_count(3)
(4, 4)
>>> root_hash(3, store) == node_hash(node_hash(leaf_hash(b"a"), leaf_hash(b"b")), leaf_hash(b"c"))
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from tlog.errors import MalformedError
from tlog.hashing import EMPTY_ROOT, HASH_SIZE, node_hash

__all__ = [
    "MAX_TREE_SIZE",
    "HashReader",
    "MemoryHashStore",
    "append_hashes",
    "check_tree_size",
    "range_hash",
    "range_indexes",
    "root_hash",
    "root_hash_from",
    "root_indexes",
    "split_stored_hash_index",
    "stored_hash_count",
    "stored_hash_index",
]

MAX_TREE_SIZE = (1 << 63) - 1
"""Sizes and indexes are uint64 in the RFC; stored hash indexes must also fit an int64
(SQLite and PostgreSQL integers), which bounds the tree at 2**63 - 1 leaves."""


class HashReader(Protocol):
    """Storage as the core sees it: exactly ``len(indexes)`` hashes, in the order asked.

    Implementations must return the hashes that were appended at those stored hash indexes,
    or raise; they must never return fewer, more, or placeholder hashes.
    """

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]: ...


def check_tree_size(tree_size: int, field: str = "tree_size") -> None:
    """Raise MalformedError unless ``0 <= tree_size <= MAX_TREE_SIZE``."""
    if isinstance(tree_size, bool) or not isinstance(tree_size, int):
        raise MalformedError(field, "not an integer")
    if not 0 <= tree_size <= MAX_TREE_SIZE:
        raise MalformedError(field, f"{tree_size} is outside 0..2**63-1")


def stored_hash_index(level: int, n: int) -> int:
    """The position in the store of the hash of node ``n`` at ``level`` (level 0 = leaves).

    >>> [stored_hash_index(0, n) for n in range(6)]
    [0, 1, 3, 4, 7, 8]
    >>> [stored_hash_index(1, n) for n in range(4)]
    [2, 5, 9, 12]
    """
    # The node's hash is stored right after that of the last leaf beneath it, once the
    # `level` subtree roots completed by that leaf have been written. Before leaf m come
    # m leaf hashes and the m // 2 + m // 4 + ... interior ones, 2m - popcount(m) in all.
    last_leaf = ((n + 1) << level) - 1
    return 2 * last_leaf - last_leaf.bit_count() + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """The inverse of :func:`stored_hash_index`: ``(level, n)`` of the hash at ``index``.

    >>> split_stored_hash_index(13)
    (2, 1)
    """
    if index < 0:
        raise MalformedError("index", "negative stored hash index")
    # stored_hash_index(0, n) < 2n, so the leaf whose append wrote this hash is at least
    # index // 2; step forward over the hashes each later leaf writes until we pass index.
    n = index // 2
    start = stored_hash_index(0, n)
    while (next_start := start + 1 + _trailing_ones(n)) <= index:
        n += 1
        start = next_start
    # Leaf n wrote its own hash at `start`, then its completed subtrees at start + level.
    level = index - start
    return level, n >> level


def stored_hash_count(tree_size: int) -> int:
    """How many hashes the store holds once ``tree_size`` leaves are appended.

    >>> [stored_hash_count(n) for n in range(9)]
    [0, 1, 3, 4, 7, 8, 10, 11, 15]
    """
    if tree_size == 0:
        return 0
    # Everything of leaf n-1 is stored: its leaf hash and the subtrees it completed.
    last = tree_size - 1
    return stored_hash_index(0, last) + 1 + _trailing_ones(last)


def _trailing_ones(n: int) -> int:
    return ((n ^ (n + 1)).bit_length()) - 1


def _subtrees(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Split ``[lo, hi)`` into complete subtrees, largest first, as ``(level, n)``.

    Only the ranges that RFC 6962 proofs and roots use are valid: ``lo`` aligned to the
    largest power of two that fits ``hi - lo``.
    """
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        size = 1 << level
        if lo & (size - 1):
            raise MalformedError("range", f"[{lo}, {hi}) is not a run of complete subtrees")
        yield level, lo >> level
        lo += size


def range_indexes(lo: int, hi: int) -> list[int]:
    """The stored hash indexes whose fold is MTH(D[lo:hi]), largest subtree first."""
    size = hi - lo
    if size > 0 and not size & (size - 1) and not lo & (size - 1):  # one complete subtree,
        level = size.bit_length() - 1  # as most ranges of a proof are
        return [stored_hash_index(level, lo >> level)]
    return [stored_hash_index(level, n) for level, n in _subtrees(lo, hi)]


def range_hash(hashes: Sequence[bytes]) -> bytes:
    """Fold the hashes named by :func:`range_indexes` into the range's MTH (from the right)."""
    if not hashes:
        raise MalformedError("hashes", "an empty range has no subtree hash")
    folded = hashes[-1]
    for left in reversed(hashes[:-1]):
        folded = node_hash(left, folded)
    return folded


def root_indexes(tree_size: int) -> list[int]:
    """The stored hash indexes that :func:`root_hash_from` folds into the root of a size."""
    check_tree_size(tree_size)
    return range_indexes(0, tree_size)


def root_hash_from(tree_size: int, hashes: Sequence[bytes]) -> bytes:
    """MTH(D[0:tree_size]) from the hashes at :func:`root_indexes` (tree_size 0: SHA-256(""))."""
    if tree_size == 0:
        return EMPTY_ROOT
    _check_hashes(hashes, len(root_indexes(tree_size)))
    return range_hash(hashes)


def root_hash(tree_size: int, reader: HashReader) -> bytes:
    """The root hash of the first ``tree_size`` leaves, in one ``read_hashes`` call."""
    indexes = root_indexes(tree_size)
    return root_hash_from(tree_size, reader.read_hashes(indexes) if indexes else [])


def append_hashes(tree_size: int, leaf_hashes: Sequence[bytes], reader: HashReader) -> list[bytes]:
    """The hashes to store, in order, when ``leaf_hashes`` are appended to a tree of a size.

    The result goes at stored hash indexes ``stored_hash_count(tree_size)`` onwards, and
    covers exactly the new leaves: ``stored_hash_count(tree_size + len(leaf_hashes))`` in all.
    It reads the tree's frontier (one hash per complete subtree on the right edge, at most 63)
    in one call and folds the batch in memory, so a batch of b leaves costs one read and about
    2b hashes written.
    """
    check_tree_size(tree_size)
    check_tree_size(tree_size + len(leaf_hashes), "tree_size after append")
    _check_hashes(leaf_hashes, len(leaf_hashes))
    frontier_indexes = range_indexes(0, tree_size)
    frontier = reader.read_hashes(frontier_indexes) if frontier_indexes else []
    _check_hashes(frontier, len(frontier_indexes))

    # `frontier` holds the roots of the complete subtrees of [0, n), largest (leftmost) first:
    # exactly the left siblings that leaf n and its successors will merge with.
    stack = list(frontier)
    out: list[bytes] = []
    n = tree_size
    for leaf in leaf_hashes:
        out.append(leaf)
        h, m = leaf, n
        while m & 1:
            h = node_hash(stack.pop(), h)
            out.append(h)
            m >>= 1
        stack.append(h)
        n += 1
    return out


def _check_hashes(hashes: Sequence[bytes], count: int) -> None:
    if len(hashes) != count:
        raise MalformedError("hashes", f"got {len(hashes)} hashes, want {count}")
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise MalformedError("hashes", f"a hash is {len(h)} bytes, not {HASH_SIZE}")


class MemoryHashStore:
    """A hash store in a Python list: for tests, benchmarks and demos, not durable.

    It is the reference for what durable stores must do: ``append`` writes exactly the hashes
    of :func:`append_hashes` at the end, and ``read_hashes`` returns exactly what was asked.
    """

    def __init__(self) -> None:
        self._hashes: list[bytes] = []
        self.tree_size = 0

    @property
    def hash_count(self) -> int:
        return len(self._hashes)

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        hashes = self._hashes
        count = len(hashes)
        for i in indexes:
            if not 0 <= i < count:
                raise MalformedError("indexes", f"stored hash index {i} is not stored")
        return [hashes[i] for i in indexes]

    def append(self, leaf_hashes: Sequence[bytes]) -> None:
        """Append leaves; afterwards the store holds ``stored_hash_count(tree_size)`` hashes."""
        self._hashes.extend(append_hashes(self.tree_size, leaf_hashes, self))
        self.tree_size += len(leaf_hashes)
