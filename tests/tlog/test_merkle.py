"""Tests for tlog.merkle: the stored-hash-index layout, appending, roots, and the hash store.

Covers Go sumdb's published StoredHashIndex table and StoredHashCount list, the round trip
through split_stored_hash_index at every level, the roots of the "leaf %d" tree, how many
hashes appending writes and how many reads it and root_hash make (through a HashReader fake
that records every call), that any batch splitting builds the same store, and the input
checks of MemoryHashStore and check_tree_size. Roots and stored subtree hashes are compared
with the naive reference in tests/reference.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import reference
from tlog.errors import MalformedError
from tlog.hashing import EMPTY_ROOT, leaf_hash
from tlog.merkle import (
    MAX_TREE_SIZE,
    MemoryHashStore,
    append_hashes,
    check_tree_size,
    range_hash,
    range_indexes,
    root_hash,
    root_hash_from,
    root_indexes,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
)


def entries_of(count: int) -> list[bytes]:
    """The Go tlog test tree: record i is b"leaf %d" % i."""
    return [b"leaf %d" % i for i in range(count)]


def trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


class RecordingReader:
    """A HashReader fake over a plain list that records every read_hashes call."""

    def __init__(self, hashes: Sequence[bytes] = ()) -> None:
        self.hashes = list(hashes)
        self.calls: list[list[int]] = []

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        self.calls.append(list(indexes))
        return [self.hashes[i] for i in indexes]


class ShortReader:
    """A broken HashReader that returns one hash fewer than asked."""

    def __init__(self, store: MemoryHashStore) -> None:
        self.store = store

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        return self.store.read_hashes(indexes)[:-1]


def build_store(entries: Sequence[bytes]) -> MemoryHashStore:
    store = MemoryHashStore()
    store.append([leaf_hash(e) for e in entries])
    return store


# ---------------------------------------------------------------------------------------------
# The stored-hash-index layout.


def test_stored_hash_index_table(vectors: dict[str, Any]) -> None:
    table = vectors["go_tlog_storage"]["stored_hash_index"]
    cells = {k: v for k, v in table.items() if not k.startswith("_")}
    assert len(cells) == 32
    for key, index in cells.items():
        level, n = (int(x) for x in key.split(","))
        assert stored_hash_index(level, n) == index, key
        assert split_stored_hash_index(index) == (level, n), key


def test_stored_hash_count_list(vectors: dict[str, Any]) -> None:
    want = vectors["go_tlog_storage"]["stored_hash_count_for_n_0_to_20"]
    assert len(want) == 21
    assert [stored_hash_count(n) for n in range(21)] == want


def test_split_stored_hash_index_inverts_every_small_index() -> None:
    for index in range(20_000):
        level, n = split_stored_hash_index(index)
        assert level >= 0
        assert n >= 0
        assert stored_hash_index(level, n) == index


@pytest.mark.parametrize("level", range(63))
def test_split_stored_hash_index_round_trip_at_every_level(level: int) -> None:
    # Every node whose leaves all have indexes below 2**63 (the largest tree tlog allows).
    last_n = ((MAX_TREE_SIZE + 1) >> level) - 1
    ns = {*range(40), *(last_n - i for i in range(40)), last_n // 3, last_n // 2 + 1}
    for n in sorted(x for x in ns if 0 <= x <= last_n):
        index = stored_hash_index(level, n)
        assert split_stored_hash_index(index) == (level, n), (level, n)


@given(
    st.integers(0, 62).flatmap(
        lambda lv: st.tuples(st.just(lv), st.integers(0, ((1 << 63) >> lv) - 1))
    )
)
def test_split_stored_hash_index_round_trip_random(node: tuple[int, int]) -> None:
    level, n = node
    assert split_stored_hash_index(stored_hash_index(level, n)) == (level, n)


def test_split_stored_hash_index_rejects_negative() -> None:
    with pytest.raises(MalformedError):
        split_stored_hash_index(-1)


@pytest.mark.parametrize("tree_size", [*range(70), 255, 256, 257, 1000, 1023, 1024])
def test_stored_indexes_of_complete_subtrees_are_exactly_0_to_count(tree_size: int) -> None:
    # Every complete subtree of a tree of this size is stored once, and nothing else is.
    indexes = [
        stored_hash_index(level, n)
        for level in range(tree_size.bit_length())
        for n in range(tree_size >> level)
    ]
    assert sorted(indexes) == list(range(stored_hash_count(tree_size)))


def test_stored_hash_count_matches_the_store() -> None:
    store = MemoryHashStore()
    for n, entry in enumerate(entries_of(300)):
        assert store.hash_count == stored_hash_count(n)
        store.append([leaf_hash(entry)])
    assert store.hash_count == stored_hash_count(300)


# ---------------------------------------------------------------------------------------------
# Appending.


def test_append_writes_one_plus_trailing_zeros_per_leaf_and_reads_once() -> None:
    entries = entries_of(520)
    reader = RecordingReader()
    for n, entry in enumerate(entries):
        calls_before = len(reader.calls)
        out = append_hashes(n, [leaf_hash(entry)], reader)
        assert len(out) == 1 + trailing_zeros(n + 1), n
        assert out[0] == leaf_hash(entry)
        new_calls = reader.calls[calls_before:]
        if n == 0:
            assert new_calls == []  # the empty tree has no frontier to read
        else:
            # One batched read of the frontier: one hash per 1-bit of n, all already stored.
            assert len(new_calls) == 1, n
            assert len(new_calls[0]) == n.bit_count()
            assert all(0 <= i < len(reader.hashes) for i in new_calls[0])
        reader.hashes.extend(out)
        assert len(reader.hashes) == stored_hash_count(n + 1)

    # Every stored hash is the MTH of the complete subtree its index names.
    for index, h in enumerate(reader.hashes):
        level, n = split_stored_hash_index(index)
        assert h == reference.mth(entries[n << level : (n + 1) << level]), index


@pytest.mark.parametrize("tree_size", [0, 1, 2, 3, 7, 8, 100, 255, 256, 511])
def test_append_hashes_of_a_batch_reads_once(tree_size: int) -> None:
    entries = entries_of(tree_size + 300)
    base = build_store(entries[:tree_size])
    reader = RecordingReader(base.read_hashes(range(base.hash_count)))
    batch = [leaf_hash(e) for e in entries[tree_size:]]
    out = append_hashes(tree_size, batch, reader)
    assert len(reader.calls) == (1 if tree_size else 0)
    if tree_size:
        assert reader.calls[0] == root_indexes(tree_size)
    assert len(out) == stored_hash_count(tree_size + len(batch)) - stored_hash_count(tree_size)
    whole = build_store(entries)
    assert reader.hashes + out == whole.read_hashes(range(whole.hash_count))


def test_append_nothing_writes_nothing() -> None:
    store = build_store(entries_of(5))
    assert append_hashes(5, [], store) == []


def test_append_hashes_rejects_bad_input() -> None:
    store = build_store(entries_of(5))
    with pytest.raises(MalformedError):
        append_hashes(5, [b"\x00" * 31], store)
    with pytest.raises(MalformedError):
        append_hashes(-1, [leaf_hash(b"x")], store)
    with pytest.raises(MalformedError):
        append_hashes(MAX_TREE_SIZE, [leaf_hash(b"x")], store)
    # A reader that breaks the HashReader contract is caught, not folded.
    with pytest.raises(MalformedError):
        append_hashes(5, [leaf_hash(b"x")], ShortReader(store))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=25))
def test_any_batch_splitting_builds_the_same_store(batches: list[int]) -> None:
    entries = entries_of(sum(batches))
    one_by_one = build_store([])
    for e in entries:
        one_by_one.append([leaf_hash(e)])
    batched = MemoryHashStore()
    at = 0
    for size in batches:
        batched.append([leaf_hash(e) for e in entries[at : at + size]])
        at += size
    assert batched.tree_size == one_by_one.tree_size == len(entries)
    assert batched.hash_count == one_by_one.hash_count
    every = range(one_by_one.hash_count)
    assert batched.read_hashes(every) == one_by_one.read_hashes(every)


# ---------------------------------------------------------------------------------------------
# Roots.


def test_roots_of_the_go_leaf_tree(vectors: dict[str, Any]) -> None:
    want = vectors["go_tlog_storage"]["root_by_size_hex"]
    store = build_store(entries_of(1000))
    assert len(want) == 26
    for size, root in want.items():
        assert root_hash(int(size), store).hex() == root, size


def test_root_of_every_size_in_one_read_equals_the_reference() -> None:
    entries = entries_of(300)
    store = build_store(entries)
    reader = RecordingReader(store.read_hashes(range(store.hash_count)))
    for size in range(len(entries) + 1):
        calls_before = len(reader.calls)
        got = root_hash(size, reader)
        new_calls = reader.calls[calls_before:]
        if size == 0:
            assert new_calls == []  # SHA-256("") needs no stored hash
            assert got == EMPTY_ROOT
        else:
            assert len(new_calls) == 1, size
            # One hash per complete subtree of [0, size), all written by then.
            assert len(new_calls[0]) == size.bit_count()
            assert max(new_calls[0]) < stored_hash_count(size)
        assert got == reference.mth(entries[:size]), size


def test_root_of_an_older_size_from_a_grown_store() -> None:
    entries = entries_of(64)
    store = build_store(entries[:10])
    before = root_hash(10, store)
    store.append([leaf_hash(e) for e in entries[10:]])
    assert root_hash(10, store) == before == reference.mth(entries[:10])


def test_root_hash_from_checks_its_hashes() -> None:
    store = build_store(entries_of(7))
    hashes = store.read_hashes(root_indexes(7))
    assert root_hash_from(7, hashes) == root_hash(7, store)
    with pytest.raises(MalformedError):
        root_hash_from(7, hashes[:-1])
    with pytest.raises(MalformedError):
        root_hash_from(7, [*hashes, hashes[0]])
    with pytest.raises(MalformedError):
        root_hash_from(7, [hashes[0][:31], *hashes[1:]])
    assert root_hash_from(0, []) == EMPTY_ROOT


def test_root_hash_rejects_a_short_reader() -> None:
    store = build_store(entries_of(7))
    with pytest.raises(MalformedError):
        root_hash(7, ShortReader(store))


def test_range_hash_of_a_run_of_subtrees() -> None:
    entries = entries_of(64)
    store = build_store(entries)
    for lo, hi in [(0, 1), (0, 13), (8, 13), (16, 20), (32, 64), (48, 63), (12, 13)]:
        got = range_hash(store.read_hashes(range_indexes(lo, hi)))
        assert got == reference.mth(entries[lo:hi]), (lo, hi)


def test_range_indexes_rejects_unaligned_ranges() -> None:
    for lo, hi in [(1, 3), (2, 6), (3, 7), (4, 12)]:
        with pytest.raises(MalformedError):
            range_indexes(lo, hi)
    with pytest.raises(MalformedError):
        range_hash([])


# ---------------------------------------------------------------------------------------------
# The store and the size checks.


def test_memory_hash_store_returns_what_was_asked() -> None:
    entries = entries_of(5)
    store = build_store(entries)
    assert store.tree_size == 5
    assert store.read_hashes([]) == []
    # Stored hash index 3 is leaf 2 (index 2 is the node over leaves 0 and 1); repeats allowed.
    leaf0, leaf2 = leaf_hash(entries[0]), leaf_hash(entries[2])
    assert store.read_hashes([3, 0, 3]) == [leaf2, leaf0, leaf2]


def test_memory_hash_store_rejects_indexes_not_stored() -> None:
    empty = MemoryHashStore()
    with pytest.raises(MalformedError):
        empty.read_hashes([0])
    store = build_store(entries_of(5))
    assert store.hash_count == 8
    for bad in ([8], [-1], [0, 8], [1000]):
        with pytest.raises(MalformedError):
            store.read_hashes(bad)


@pytest.mark.parametrize("bad", [2**63, 2**64, -1, True, False, 1.0, "1", None])
def test_check_tree_size_rejects(bad: Any) -> None:
    with pytest.raises(MalformedError):
        check_tree_size(bad)


@pytest.mark.parametrize("good", [0, 1, 2**62, MAX_TREE_SIZE])
def test_check_tree_size_accepts(good: int) -> None:
    check_tree_size(good)
    assert MAX_TREE_SIZE == 2**63 - 1


def test_root_indexes_rejects_sizes_out_of_range() -> None:
    for bad in (-1, 2**63, True):
        with pytest.raises(MalformedError):
            root_indexes(bad)
