"""Tests for log_server.storage, on SQLite and PostgreSQL, each test on a fresh database.

Covers the HashReader contract of ``read_hashes`` (exactly the hashes asked, in order, with
duplicates, across query chunks; LookupError for a missing one), entry ranges, the receipt
lookup by (edge, request_id) and its uniqueness, the finders with ``after``/``limit``
paging, the edge-key upsert, checkpoint history, that two Storage objects on two databases
in one process never mix, that a failure inside ``sequencing()`` leaves nothing behind, and
that ``sequencing()`` excludes a second writer on the same database.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from hashlib import sha256

import peewee
import pytest

from log_server.storage import (
    PARTITION_BITS,
    EdgeKeyRecord,
    EntryRecord,
    Storage,
    StoredCheckpoint,
)
from tlog.errors import MalformedError


class BoomError(Exception):
    """Raised inside a transaction by the tests."""


def h(i: int) -> bytes:
    """A distinct 32-byte hash per integer."""
    return sha256(b"hash %d" % i).digest()


def record(index: int, **columns: str | None) -> EntryRecord:
    """A stored entry with made-up bytes; ``columns`` set edge, request_id, consumer_id..."""
    data = b'{"entry":%d}' % index
    return EntryRecord(
        index=index,
        data=data,
        leaf_hash=sha256(b"\x00" + data).digest(),
        kind="receipt" if columns.get("request_id") else "edge_key",
        logged_at_ms=1_000 + index,
        **columns,
    )


def checkpoint(tree_size: int, signed_at_ms: int) -> StoredCheckpoint:
    return StoredCheckpoint(tree_size, h(tree_size), b"note %d" % signed_at_ms, signed_at_ms)


def edge_key(key_id: str, entry_index: int, valid_until_ms: int | None = None) -> EdgeKeyRecord:
    return EdgeKeyRecord("edge-1", key_id, f"edge-1+{key_id}+AAAA", 10, valid_until_ms, entry_index)


def write(
    storage: Storage,
    *,
    hashes: Sequence[bytes] = (),
    entries: Sequence[EntryRecord] = (),
    start: int = 0,
) -> None:
    with storage.sequencing():
        if hashes:
            storage.append_hashes(start, hashes)
        if entries:
            storage.append_entries(entries)


# -- hashes -------------------------------------------------------------------------------


def test_read_hashes_returns_exactly_the_hashes_asked_in_order(storage: Storage) -> None:
    write(storage, hashes=[h(i) for i in range(10)])
    assert storage.read_hashes([]) == []
    assert storage.read_hashes([0]) == [h(0)]
    assert storage.read_hashes([7, 2, 9, 2, 0, 7, 7]) == [h(i) for i in (7, 2, 9, 2, 0, 7, 7)]
    assert storage.read_hashes(range(10)) == [h(i) for i in range(10)]


def test_read_hashes_across_query_chunks(storage: Storage) -> None:
    """More indexes than one IN (...) query takes (500), unsorted and repeated."""
    write(storage, hashes=[h(i) for i in range(1200)])
    indexes = [*range(1199, -1, -1), *range(0, 1200, 7), 600, 600]
    assert storage.read_hashes(indexes) == [h(i) for i in indexes]


def test_read_hashes_raises_for_a_missing_hash(storage: Storage) -> None:
    write(storage, hashes=[h(i) for i in range(4)])
    with pytest.raises(LookupError, match=r"\[4\]"):
        storage.read_hashes([0, 4, 1])
    with pytest.raises(LookupError):
        storage.read_hashes([-1])
    with pytest.raises(LookupError):
        storage.read_hashes([*range(4), 1000])


def test_append_hashes_at_an_offset(storage: Storage) -> None:
    write(storage, hashes=[h(0), h(1)])
    write(storage, hashes=[h(2), h(3), h(4)], start=2)
    assert storage.read_hashes([4, 3, 2, 1, 0]) == [h(4), h(3), h(2), h(1), h(0)]


def test_a_stored_hash_is_never_overwritten(storage: Storage) -> None:
    write(storage, hashes=[h(0), h(1)])
    with pytest.raises(peewee.IntegrityError):
        write(storage, hashes=[h(99)], start=1)
    assert storage.read_hashes([0, 1]) == [h(0), h(1)]


# -- entries ------------------------------------------------------------------------------


def test_entries_range(storage: Storage) -> None:
    records = [record(i) for i in range(10)]
    write(storage, entries=records)
    assert storage.entries(0, 10) == records
    assert storage.entries(2, 5) == records[2:5]
    assert storage.entries(8, 100) == records[8:]
    assert storage.entries(5, 5) == []
    assert storage.entries(10, 20) == []


def test_entries_round_trip_every_column(storage: Storage) -> None:
    full = EntryRecord(
        index=0,
        data=bytes(range(256)),  # any bytes, not only UTF-8
        leaf_hash=h(0),
        kind="receipt",
        logged_at_ms=2**53 - 1,
        edge="edge-1",
        request_id="r",
        consumer_id="c",
        job_id="j",
        creator_id="cr",
        content_id="sha256:" + "00" * 32,
    )
    write(storage, entries=[full, record(1)])
    assert storage.entries(0, 2) == [full, record(1)]
    assert isinstance(storage.entries(0, 1)[0].data, bytes)
    assert storage.index_of_leaf(h(0)) == 0
    assert storage.index_of_leaf(record(1).leaf_hash) == 1
    assert storage.index_of_leaf(h(1)) is None


def test_receipts_match_both_edge_and_request_id(storage: Storage) -> None:
    write(
        storage,
        entries=[
            record(0, edge="edge-a", request_id="r1"),
            record(1, edge="edge-b", request_id="r2"),
            record(2, edge="edge-a", request_id="r2"),
            record(3),  # an edge_key entry: no request_id
        ],
    )
    assert storage.receipts([]) == {}
    found = storage.receipts(
        [("edge-a", "r1"), ("edge-b", "r1"), ("edge-a", "r3"), ("edge-c", "r2")]
    )
    assert found == {("edge-a", "r1"): record(0, edge="edge-a", request_id="r1")}
    found = storage.receipts([("edge-b", "r2"), ("edge-a", "r2"), ("edge-b", "r2")])
    assert {key: r.index for key, r in found.items()} == {("edge-b", "r2"): 1, ("edge-a", "r2"): 2}


def test_receipts_across_query_chunks(storage: Storage) -> None:
    write(storage, entries=[record(i, edge="e", request_id=f"r{i}") for i in range(1100)])
    keys = [("e", f"r{i}") for i in range(0, 1200, 3)]
    found = storage.receipts(keys)
    assert sorted(r.index for r in found.values()) == list(range(0, 1100, 3))
    assert all(found[("e", f"r{i}")].index == i for i in range(0, 1100, 3))


def test_one_receipt_per_edge_and_request_id(storage: Storage) -> None:
    write(storage, entries=[record(0, edge="e", request_id="r"), record(1), record(2)])
    with pytest.raises(peewee.IntegrityError):
        write(storage, entries=[record(3, edge="e", request_id="r")])
    # Same request_id from another edge, and more entries without one, are fine.
    write(storage, entries=[record(3, edge="f", request_id="r"), record(4)])
    assert [r.index for r in storage.entries(0, 10)] == [0, 1, 2, 3, 4]


def test_an_entry_index_is_never_reused(storage: Storage) -> None:
    write(storage, entries=[record(0)])
    with pytest.raises(peewee.IntegrityError):
        write(storage, entries=[record(1), record(0)])
    assert storage.entries(0, 10) == [record(0)]


@pytest.mark.parametrize("column", ["consumer_id", "job_id", "creator_id", "content_id"])
def test_find_entries_pages_by_column(storage: Storage, column: str) -> None:
    others = {"consumer_id", "job_id", "creator_id", "content_id"} - {column}
    records = [
        record(
            i,
            edge="e",
            request_id=f"r{i}",
            **{column: "wanted" if i % 3 == 0 else "other"},
            # The same value in every other column must not match.
            **dict.fromkeys(others, "wanted"),
        )
        for i in range(20)
    ]
    write(storage, entries=records)
    wanted = [r.index for r in records if getattr(r, column) == "wanted"]
    assert wanted == [0, 3, 6, 9, 12, 15, 18]

    def page(after: int, limit: int) -> list[int]:
        return [r.index for r in storage.find_entries(column, "wanted", after, limit)]

    assert page(-1, 100) == wanted
    assert [r.index for r in storage.find_entries(column, "wanted")] == wanted
    assert page(-1, 3) == [0, 3, 6]
    assert page(6, 3) == [9, 12, 15]
    assert page(15, 3) == [18]
    assert page(18, 3) == []
    assert page(4, 1) == [6]  # `after` need not be a match
    assert page(-1, 0) == []
    assert storage.find_entries(column, "nobody") == []
    assert storage.find_entries(column, "wanted", -1, 1) == [records[0]]


def test_lookups_cross_partitions(storage: Storage) -> None:
    # Entries in partitions 0, 1, 2 and 4 (none in 3), both sides of each boundary.
    size = 1 << PARTITION_BITS
    indexes = [5, size - 1, size, 2 * size + 7, 4 * size - 1 + size // 2, 4 * size + 3]
    records = [
        record(i, edge="e", request_id=f"r{i}", consumer_id="c" if n % 2 else "d")
        for n, i in enumerate(indexes)
    ]
    # The same leaf hash at two indexes in different partitions: the lower one is found.
    twin = dataclasses.replace(record(4 * size + 9), leaf_hash=records[2].leaf_hash)
    write(storage, entries=[*records, twin])
    for r in records:
        assert storage.index_of_leaf(r.leaf_hash) == r.index
    assert storage.index_of_leaf(h(999)) is None
    wanted = [r.index for r in records if r.consumer_id == "c"]
    assert [r.index for r in storage.find_entries("consumer_id", "c")] == wanted
    pages, after = [], -1
    while batch := storage.find_entries("consumer_id", "c", after, 2):
        pages.append([r.index for r in batch])
        after = batch[-1].index
    assert pages == [wanted[:2], wanted[2:]]
    assert storage.find_entries("consumer_id", "c", indexes[-1], 5) == []
    assert storage.find_entries("consumer_id", "c", 10 * size, 5) == []


def test_find_entries_refuses_other_columns(storage: Storage) -> None:
    with pytest.raises(KeyError):
        storage.find_entries("edge", "e")


# -- edge keys ----------------------------------------------------------------------------


def test_edge_key_upsert(storage: Storage) -> None:
    assert storage.edge_key("edge-1", "00000001") is None
    assert storage.edge_keys() == []
    with storage.sequencing():
        storage.put_edge_key(edge_key("00000001", 0))
        storage.put_edge_key(edge_key("00000002", 1))
    assert storage.edge_key("edge-1", "00000001") == edge_key("00000001", 0)
    # The latest statement about a key replaces the window, and nothing else's.
    revoked = EdgeKeyRecord("edge-1", "00000001", "edge-1+00000001+BBBB", 20, 30, 5)
    with storage.sequencing():
        storage.put_edge_key(revoked)
    assert storage.edge_key("edge-1", "00000001") == revoked
    assert storage.edge_key("edge-1", "00000002") == edge_key("00000002", 1)
    assert storage.edge_keys() == [edge_key("00000002", 1), revoked]  # by entry_index
    # The key is (edge, key_id): the same ID for another edge is another key.
    other = EdgeKeyRecord("edge-2", "00000001", "edge-2+00000001+CCCC", 0, None, 6)
    with storage.sequencing():
        storage.put_edge_key(other)
    assert storage.edge_key("edge-2", "00000001") == other
    assert storage.edge_key("edge-1", "00000001") == revoked
    assert len(storage.edge_keys()) == 3
    assert storage.edge_key("edge-3", "00000001") is None


# -- checkpoints --------------------------------------------------------------------------


def test_checkpoints_history(storage: Storage) -> None:
    assert storage.latest_checkpoint() is None
    assert storage.tree_size() == 0
    assert storage.checkpoints() == []
    assert storage.checkpoint_at(0) is None
    history = [checkpoint(0, 1), checkpoint(3, 2), checkpoint(3, 3), checkpoint(7, 4)]
    for cp in history:
        with storage.sequencing():
            storage.append_checkpoint(cp)
    assert storage.latest_checkpoint() == history[-1]
    assert storage.tree_size() == 7
    rows = storage.checkpoints()
    assert [cp for _, cp in rows] == history
    ids = [row_id for row_id, _ in rows]
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    assert storage.checkpoints(after_id=ids[1]) == rows[2:]
    assert storage.checkpoints(after_id=ids[0], limit=2) == rows[1:3]
    assert storage.checkpoints(after_id=ids[-1]) == []
    assert storage.checkpoints(limit=0) == []
    assert storage.checkpoint_at(0) == history[0]
    assert storage.checkpoint_at(3) == history[2]  # the latest of that size
    assert storage.checkpoint_at(7) == history[3]
    assert storage.checkpoint_at(5) is None
    assert isinstance(storage.latest_checkpoint().note, bytes)  # type: ignore[union-attr]


def test_tree_size_is_the_latest_checkpoints_not_the_largest(storage: Storage) -> None:
    """The sequencer never signs a smaller size, but storage must not guess: latest wins."""
    with storage.sequencing():
        storage.append_checkpoint(checkpoint(5, 1))
        storage.append_checkpoint(checkpoint(2, 2))
    assert storage.tree_size() == 2


# -- isolation and transactions -----------------------------------------------------------


def test_two_storages_on_two_databases_do_not_mix(
    storage: Storage, new_storage_url: Callable[[], str]
) -> None:
    other = Storage.open(new_storage_url())
    try:
        with storage.sequencing():
            storage.append_hashes(0, [h(1), h(2)])
            storage.append_entries([record(0, edge="e", request_id="a")])
            storage.put_edge_key(edge_key("0000000a", 0))
            # Writing the other database in the middle of this transaction goes there.
            with other.sequencing():
                other.append_hashes(0, [h(9)])
                other.append_entries([record(0, edge="e", request_id="b"), record(1)])
                other.append_checkpoint(checkpoint(2, 9))
            storage.append_checkpoint(checkpoint(1, 1))
        assert storage.read_hashes([0, 1]) == [h(1), h(2)]
        assert other.read_hashes([0]) == [h(9)]
        with pytest.raises(LookupError):
            other.read_hashes([1])
        assert storage.entries(0, 10) == [record(0, edge="e", request_id="a")]
        assert other.entries(0, 10) == [record(0, edge="e", request_id="b"), record(1)]
        assert storage.receipts([("e", "b")]) == {}
        assert other.receipts([("e", "a")]) == {}
        assert storage.edge_keys() == [edge_key("0000000a", 0)]
        assert other.edge_keys() == []
        assert storage.latest_checkpoint() == checkpoint(1, 1)
        assert other.latest_checkpoint() == checkpoint(2, 9)
        assert (storage.tree_size(), other.tree_size()) == (1, 2)
    finally:
        other.close()


def test_a_failure_inside_sequencing_leaves_nothing(storage: Storage, storage_url: str) -> None:
    with storage.sequencing():
        storage.append_hashes(0, [h(0)])
        storage.append_entries([record(0)])
        storage.append_checkpoint(checkpoint(1, 1))
    with pytest.raises(BoomError), storage.sequencing():
        storage.append_hashes(1, [h(1), h(2)])
        storage.append_entries([record(1, edge="e", request_id="r")])
        storage.put_edge_key(edge_key("00000001", 1))
        storage.append_checkpoint(checkpoint(2, 2))
        # Inside the transaction its own writes are visible...
        assert storage.tree_size() == 2
        raise BoomError
    # ...and after the rollback to nobody: not this Storage, not a new one.
    reopened = Storage.open(storage_url)
    try:
        for s in (storage, reopened):
            assert s.read_hashes([0]) == [h(0)]
            with pytest.raises(LookupError):
                s.read_hashes([1])
            assert s.entries(0, 10) == [record(0)]
            assert s.receipts([("e", "r")]) == {}
            assert s.edge_keys() == []
            assert s.latest_checkpoint() == checkpoint(1, 1)
            assert [cp for _, cp in s.checkpoints()] == [checkpoint(1, 1)]
    finally:
        reopened.close()
    # The Storage is still usable after the rollback.
    write(storage, hashes=[h(1)], start=1)
    assert storage.read_hashes([1]) == [h(1)]


def test_sequencing_commits_for_other_connections(storage: Storage, storage_url: str) -> None:
    reader = Storage.open(storage_url)
    try:
        assert reader.tree_size() == 0
        with storage.sequencing():
            storage.append_checkpoint(checkpoint(0, 1))
        assert reader.latest_checkpoint() == checkpoint(0, 1)
    finally:
        reader.close()


def test_sequencing_excludes_a_second_writer(storage: Storage, storage_url: str) -> None:
    """Two Storages on one database (as two processes would be): one sequencer at a time."""
    second = Storage.open(storage_url)
    entered = threading.Event()
    finished = threading.Event()
    errors: list[BaseException] = []

    def other_writer() -> None:
        try:
            with second.sequencing():
                entered.set()
                second.append_checkpoint(checkpoint(0, 2))
            finished.set()
        except BaseException as exc:  # noqa: BLE001 -- reported by the test thread
            errors.append(exc)
        finally:
            second.close()

    thread = threading.Thread(target=other_writer)
    try:
        with storage.sequencing():
            storage.append_checkpoint(checkpoint(0, 1))
            thread.start()
            # The other writer must still be waiting for the lock a while later.
            assert not entered.wait(timeout=0.3)
        assert finished.wait(timeout=15), errors
    finally:
        thread.join(timeout=15)
    assert errors == []
    assert [cp.signed_at_ms for _, cp in storage.checkpoints()] == [1, 2]


def test_open_refuses_other_urls() -> None:
    with pytest.raises(MalformedError):
        Storage.open("mysql://localhost/log")
