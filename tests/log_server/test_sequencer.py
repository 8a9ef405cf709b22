"""Tests for log_server.sequencer, on SQLite and PostgreSQL, each test on a fresh database.

``sequence`` is driven step by step with a fixed clock: the empty tree's checkpoint,
consecutive indexes, checkpoints that open under the log key and carry its timestamped
cosignature, roots equal to an in-memory tree of the same entries, inclusion and consistency
proofs from storage that verify, and exactly ``stored_hash_count(size)`` stored hashes;
deduplication on (edge, request_id); the edge-key registry (unregistered, validity window,
revoke, rotate, statements earlier or later in the same batch) and the statements it refuses
(a second registration, a revocation or rotation of no registered key); re-signing with
nothing new.

Fault injection (a Storage subclass that records each write step and raises at one): a
failure at any step propagates and persists nothing, as a new Storage on the same database
sees; a crash after the commit persists everything, and resubmitting gets ``duplicate`` with
the original indexes. The :class:`Pool` is tested through its public calls: ``submit``
answers only after a seal, one seal answers many submitters with one checkpoint,
``max_pending`` and ``max_entries`` bound it, and a failing seal fails every waiter.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from hashlib import sha256
from typing import Any

import anyio
import peewee
import pytest

from log_server.sequencer import (
    Conflict,
    Logged,
    Outcome,
    OverloadedError,
    Pool,
    Rejected,
    sequence,
)
from log_server.storage import EdgeKeyRecord, EntryRecord, Storage, StoredCheckpoint
from tests.log_server.conftest import (
    EDGE_KEY,
    EDGE_KEY_2,
    LOG,
    LOG_KEY,
    NOW_MS,
    OPERATOR_KEY,
    ORIGIN,
    OTHER_EDGE_KEY,
    key_id,
    make_edge_key,
    make_receipt,
)
from tlog.checkpoint import Checkpoint, format_checkpoint, open_checkpoint
from tlog.entry import (
    Creator,
    Dispute,
    Entry,
    Manifest,
    Receipt,
    Revenue,
    Statement,
    decode_entry,
    sign_creator,
    sign_dispute,
    sign_manifest,
    sign_revenue,
    sign_statement,
)
from tlog.hashing import EMPTY_ROOT, leaf_hash
from tlog.merkle import MemoryHashStore, root_hash, stored_hash_count
from tlog.note import ALG_COSIGNATURE_V1, SigningKey, format_vkey, open_note
from tlog.proofs import consistency_proof, inclusion_proof, verify_consistency, verify_inclusion

SERVED_MS = NOW_MS - 60_000
"""When the receipts of these tests were served, unless a test says otherwise."""


# -- checking a log from outside ---------------------------------------------------------


def open_stored(checkpoint: StoredCheckpoint, now_ms: int | None = None) -> Checkpoint:
    """Open a stored checkpoint as a client would: the log's Ed25519 signature must verify,
    and the same key's cosignature/v1 must carry the sequencing time (whole seconds)."""
    opened = open_checkpoint(checkpoint.note, [LOG_KEY.verifier()], origin=ORIGIN).checkpoint
    assert (opened.tree_size, opened.root_hash) == (checkpoint.tree_size, checkpoint.root_hash)
    assert opened.extensions == ()
    cosigner = LOG_KEY.verifier(ALG_COSIGNATURE_V1)
    note = open_note(checkpoint.note, [cosigner])
    assert note.text == format_checkpoint(opened)
    cosignature = note.signed_by(cosigner)
    assert cosignature is not None
    assert cosignature.timestamp_s == checkpoint.signed_at_ms // 1000
    if now_ms is not None:
        assert checkpoint.signed_at_ms == now_ms
    return opened


def verify_log(storage: Storage) -> StoredCheckpoint:
    """Everything a monitor would check, from the stored bytes alone; the latest checkpoint."""
    latest = storage.latest_checkpoint()
    assert latest is not None
    open_stored(latest)
    size = latest.tree_size
    records = storage.entries(0, size + 100)
    assert [r.index for r in records] == list(range(size))
    memory = MemoryHashStore()
    memory.append([leaf_hash(r.data) for r in records])
    assert root_hash(size, memory) == latest.root_hash
    count = stored_hash_count(size)
    assert storage.read_hashes(range(count)) == memory.read_hashes(range(count))
    with pytest.raises(LookupError):
        storage.read_hashes([count])
    for r in records:
        assert r.leaf_hash == leaf_hash(r.data)
        entry = decode_entry(r.data)
        assert (r.kind, r.logged_at_ms, r.edge) == (entry.kind, entry.logged_at_ms, entry.edge)
        if isinstance(entry, Receipt):
            columns = (r.request_id, r.consumer_id, r.job_id, r.creator_id, r.content_id)
            assert columns == (
                entry.request_id,
                entry.consumer_id,
                entry.job_id,
                entry.creator_id,
                entry.content_id,
            )
    return latest


@dataclass(frozen=True)
class Snapshot:
    """The whole visible state of a log database."""

    checkpoints: list[tuple[int, StoredCheckpoint]]
    entries: list[EntryRecord]
    hashes: list[bytes]
    extra_hashes: list[int]
    edge_keys: list[EdgeKeyRecord]
    signed: list[tuple[bytes, int]]


def signed_rows(storage: Storage) -> list[tuple[bytes, int]]:
    """The signed-message index, every row of it."""
    rows = storage.db.execute_sql('SELECT "digest", "idx" FROM "signed_messages" ORDER BY "idx"')
    return [(bytes(digest), idx) for digest, idx in rows.fetchall()]


def snapshot(url: str) -> Snapshot:
    """Read the log through a new Storage on ``url``, as another process would."""
    storage = Storage.open(url)
    try:
        count = stored_hash_count(storage.tree_size())
        extra = []
        for index in range(count, count + 40):
            try:
                storage.read_hashes([index])
            except LookupError:
                continue
            extra.append(index)
        return Snapshot(
            storage.checkpoints(limit=10**6),
            storage.entries(0, 2**62),
            storage.read_hashes(range(count)),
            extra,
            storage.edge_keys(),
            signed_rows(storage),
        )
    finally:
        storage.close()


def logged(outcomes: Sequence[Outcome]) -> list[Logged]:
    assert all(isinstance(o, Logged) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, Logged)]


def indexes(outcomes: Sequence[Outcome]) -> list[int]:
    return [o.index for o in logged(outcomes)]


def assert_rejected(outcome: Outcome, reason: str, field: str = "receipt.key_id") -> None:
    assert isinstance(outcome, Rejected), outcome
    assert outcome.field == field
    assert reason in outcome.reason


def register(storage: Storage, *entries: Entry) -> int:
    """Log edge-key statements (default: EDGE_KEY from 0 on); the tree size afterwards."""
    _, checkpoint = sequence(storage, LOG, list(entries) or [make_edge_key()], NOW_MS)
    return checkpoint.tree_size


# -- sequence -----------------------------------------------------------------------------


def test_first_sequence_signs_the_empty_tree(storage: Storage) -> None:
    outcomes, checkpoint = sequence(storage, LOG, [], NOW_MS)
    assert outcomes == []
    assert checkpoint.tree_size == 0
    assert checkpoint.root_hash == EMPTY_ROOT == sha256(b"").digest()
    assert open_stored(checkpoint, NOW_MS) == Checkpoint(ORIGIN, 0, EMPTY_ROOT)
    assert storage.latest_checkpoint() == checkpoint
    assert storage.checkpoint_at(0) == checkpoint
    assert storage.entries(0, 10) == []
    with pytest.raises(LookupError):
        storage.read_hashes([0])


def test_batches_get_consecutive_indexes_and_a_verifiable_log(storage: Storage) -> None:
    """Batches of many sizes, so that the tree takes many shapes; everything checked."""
    numbers = itertools.count()
    batches: list[list[Entry]] = [
        [],
        [make_edge_key(), *(make_receipt(next(numbers)) for _ in range(3))],
        [make_receipt(next(numbers))],
        [],
        [make_receipt(next(numbers), job_id=f"job-{i}") for i in range(7)],
        [make_edge_key(OTHER_EDGE_KEY), make_receipt(next(numbers), edge_key=OTHER_EDGE_KEY)],
        [make_receipt(next(numbers)) for _ in range(13)],
        [make_receipt(next(numbers), sample_rate=(1, 10))],
    ]
    memory = MemoryHashStore()
    checkpoints: list[StoredCheckpoint] = []
    for step, batch in enumerate(batches):
        now_ms = NOW_MS + 1_537 * step
        size = memory.tree_size
        outcomes, checkpoint = sequence(storage, LOG, batch, now_ms)

        assert indexes(outcomes) == list(range(size, size + len(batch)))
        assert not any(o.duplicate for o in logged(outcomes))
        for entry, outcome in zip(batch, logged(outcomes), strict=True):
            assert decode_entry(outcome.data) == replace(entry, logged_at_ms=now_ms)
        assert [r.data for r in storage.entries(size, size + len(batch))] == [
            o.data for o in logged(outcomes)
        ]

        memory.append([leaf_hash(o.data) for o in logged(outcomes)])
        assert checkpoint.tree_size == memory.tree_size
        assert checkpoint.root_hash == root_hash(memory.tree_size, memory)
        open_stored(checkpoint, now_ms)
        assert storage.latest_checkpoint() == checkpoint
        count = stored_hash_count(checkpoint.tree_size)
        assert storage.read_hashes(range(count)) == memory.read_hashes(range(count))
        with pytest.raises(LookupError):
            storage.read_hashes([count])
        checkpoints.append(checkpoint)

    assert [cp for _, cp in storage.checkpoints()] == checkpoints
    records = storage.entries(0, memory.tree_size)
    for checkpoint in checkpoints:
        for record in records[: checkpoint.tree_size]:
            proof = inclusion_proof(record.index, checkpoint.tree_size, storage)
            verify_inclusion(
                record.leaf_hash, record.index, checkpoint.tree_size, proof, checkpoint.root_hash
            )
    for old, new in itertools.product(checkpoints, repeat=2):
        if old.tree_size <= new.tree_size:
            proof = consistency_proof(old.tree_size, new.tree_size, storage)
            verify_consistency(old.tree_size, new.tree_size, proof, old.root_hash, new.root_hash)
    assert verify_log(storage) == checkpoints[-1]


def test_outcomes_follow_the_order_of_pending(storage: Storage) -> None:
    """A refused receipt takes no index; the others keep their order."""
    size = register(storage)
    batch = [
        make_receipt(1),
        make_receipt(2, edge_key=OTHER_EDGE_KEY),  # unregistered
        make_receipt(3),
        make_receipt(1),  # duplicate of the first
        make_receipt(4),
    ]
    outcomes, checkpoint = sequence(storage, LOG, batch, NOW_MS)
    first, refused, third, again, fourth = outcomes
    assert isinstance(first, Logged)
    assert_rejected(refused, "not registered")
    assert indexes([first, third, fourth]) == [size, size + 1, size + 2]
    assert again == Logged(first.index, first.data, duplicate=True)
    assert checkpoint.tree_size == size + 3
    verify_log(storage)


# -- deduplication ------------------------------------------------------------------------


def test_a_resubmitted_receipt_is_a_duplicate(storage: Storage) -> None:
    register(storage)
    first, _ = sequence(storage, LOG, [make_receipt(i) for i in range(3)], NOW_MS)
    before = storage.latest_checkpoint()
    assert before is not None
    later = NOW_MS + 5_000
    again, checkpoint = sequence(storage, LOG, [make_receipt(2), make_receipt(0)], later)
    # The original index and bytes (with the original logged_at_ms), nothing appended.
    assert again == [
        replace(logged(first)[2], duplicate=True),
        replace(logged(first)[0], duplicate=True),
    ]
    assert decode_entry(logged(again)[0].data).logged_at_ms == NOW_MS
    assert (checkpoint.tree_size, checkpoint.root_hash) == (before.tree_size, before.root_hash)
    assert len(storage.entries(0, 100)) == before.tree_size
    verify_log(storage)


def test_the_same_request_id_with_other_content_is_a_conflict(storage: Storage) -> None:
    register(storage)
    first, _ = sequence(storage, LOG, [make_receipt(7)], NOW_MS)
    size = storage.tree_size()
    changed = make_receipt(7, bytes_sent=1)
    outcomes, checkpoint = sequence(storage, LOG, [changed], NOW_MS + 1)
    assert outcomes == [Conflict(logged(first)[0].index)]
    assert checkpoint.tree_size == size
    # Re-served later is other content too: served_at_ms is signed.
    outcomes, _ = sequence(storage, LOG, [make_receipt(7, served_at_ms=SERVED_MS + 1)], NOW_MS)
    assert outcomes == [Conflict(logged(first)[0].index)]
    assert storage.tree_size() == size
    verify_log(storage)


def test_identical_receipts_in_one_batch(storage: Storage) -> None:
    size = register(storage)
    outcomes, checkpoint = sequence(
        storage, LOG, [make_receipt(1), make_receipt(2), make_receipt(1)], NOW_MS
    )
    first, second, again = logged(outcomes)
    assert (first.index, second.index) == (size, size + 1)
    assert again == Logged(first.index, first.data, duplicate=True)
    assert checkpoint.tree_size == size + 2
    verify_log(storage)


def test_conflicting_receipts_in_one_batch(storage: Storage) -> None:
    size = register(storage)
    outcomes, checkpoint = sequence(
        storage, LOG, [make_receipt(1), make_receipt(1, bytes_sent=5)], NOW_MS
    )
    assert outcomes[1] == Conflict(size)
    assert indexes(outcomes[:1]) == [size]
    assert checkpoint.tree_size == size + 1


def test_the_same_request_id_from_another_edge_is_another_receipt(storage: Storage) -> None:
    size = register(storage, make_edge_key(), make_edge_key(OTHER_EDGE_KEY))
    outcomes, _ = sequence(
        storage, LOG, [make_receipt(1), make_receipt(1, edge_key=OTHER_EDGE_KEY)], NOW_MS
    )
    assert indexes(outcomes) == [size, size + 1]
    verify_log(storage)


def test_a_duplicate_is_answered_after_its_key_was_revoked(storage: Storage) -> None:
    """It is in the log already: the retry after a lost answer still gets its proof."""
    register(storage)
    first, _ = sequence(storage, LOG, [make_receipt(1)], NOW_MS)
    register(storage, make_edge_key(action="revoke", valid_until_ms=SERVED_MS - 1))
    again, _ = sequence(storage, LOG, [make_receipt(1)], NOW_MS)
    assert again == [replace(logged(first)[0], duplicate=True)]


# -- the edge-key registry ----------------------------------------------------------------


def test_a_receipt_by_an_unregistered_key_is_rejected(storage: Storage) -> None:
    outcomes, checkpoint = sequence(storage, LOG, [make_receipt(1)], NOW_MS)
    assert_rejected(outcomes[0], "not registered")
    assert checkpoint.tree_size == 0
    # Another key of the same edge, registered, does not make this one valid.
    register(storage, make_edge_key(EDGE_KEY_2))
    outcomes, _ = sequence(
        storage, LOG, [make_receipt(1), make_receipt(2, edge_key=EDGE_KEY_2)], NOW_MS
    )
    assert_rejected(outcomes[0], "not registered")
    assert isinstance(outcomes[1], Logged)
    assert storage.receipts([("edge-1", "req-1")]) == {}


def test_a_receipt_served_outside_the_keys_window_is_rejected(storage: Storage) -> None:
    start, end = SERVED_MS - 1_000, SERVED_MS + 1_000
    register(storage, make_edge_key(valid_from_ms=start, valid_until_ms=end))
    batch = [
        make_receipt(1, served_at_ms=start - 1),
        make_receipt(2, served_at_ms=start),
        make_receipt(3, served_at_ms=end - 1),
        make_receipt(4, served_at_ms=end),
        make_receipt(5, served_at_ms=end + 10**6),
    ]
    outcomes, checkpoint = sequence(storage, LOG, batch, NOW_MS)
    assert_rejected(outcomes[0], "not yet valid")
    assert indexes(outcomes[1:3]) == [1, 2]
    assert_rejected(outcomes[3], "revoked or expired")
    assert_rejected(outcomes[4], "revoked or expired")
    assert checkpoint.tree_size == 3
    verify_log(storage)


def test_a_revocation_closes_the_window(storage: Storage) -> None:
    register(storage)
    revoked_at = SERVED_MS
    size = register(storage, make_edge_key(action="revoke", valid_until_ms=revoked_at))
    record = storage.edge_key("edge-1", key_id(EDGE_KEY))
    assert record is not None
    assert (record.valid_until_ms, record.entry_index) == (revoked_at, size - 1)
    outcomes, _ = sequence(
        storage,
        LOG,
        [make_receipt(1, served_at_ms=revoked_at - 1), make_receipt(2, served_at_ms=revoked_at)],
        NOW_MS,
    )
    assert indexes(outcomes[:1]) == [size]
    assert_rejected(outcomes[1], "revoked")
    verify_log(storage)


def test_a_rotation_closes_the_old_key_where_the_new_one_opens(storage: Storage) -> None:
    register(storage)
    switch = SERVED_MS
    size = register(
        storage, make_edge_key(EDGE_KEY_2, action="rotate", valid_from_ms=switch, replaces=EDGE_KEY)
    )
    old = storage.edge_key("edge-1", key_id(EDGE_KEY))
    new = storage.edge_key("edge-1", key_id(EDGE_KEY_2))
    assert old is not None
    assert new is not None
    assert (old.valid_from_ms, old.valid_until_ms, old.entry_index) == (0, switch, size - 1)
    assert (new.valid_from_ms, new.valid_until_ms, new.entry_index) == (switch, None, size - 1)
    batch = [
        make_receipt(1, served_at_ms=switch - 1),
        make_receipt(2, served_at_ms=switch),
        make_receipt(3, served_at_ms=switch - 1, edge_key=EDGE_KEY_2),
        make_receipt(4, served_at_ms=switch, edge_key=EDGE_KEY_2),
    ]
    outcomes, _ = sequence(storage, LOG, batch, NOW_MS)
    assert indexes([outcomes[0], outcomes[3]]) == [size, size + 1]
    assert_rejected(outcomes[1], "revoked or expired")
    assert_rejected(outcomes[2], "not yet valid")
    verify_log(storage)


def test_a_rotation_never_extends_an_earlier_end(storage: Storage) -> None:
    ended = SERVED_MS - 5_000
    register(storage, make_edge_key(valid_until_ms=ended))
    register(
        storage,
        make_edge_key(EDGE_KEY_2, action="rotate", valid_from_ms=SERVED_MS, replaces=EDGE_KEY),
    )
    old = storage.edge_key("edge-1", key_id(EDGE_KEY))
    assert old is not None
    assert old.valid_until_ms == ended
    outcomes, _ = sequence(storage, LOG, [make_receipt(1, served_at_ms=ended)], NOW_MS)
    assert_rejected(outcomes[0], "revoked or expired")


def test_a_registration_counts_only_for_later_receipts_of_its_batch(storage: Storage) -> None:
    batch: list[Entry] = [
        make_receipt(1),
        make_edge_key(),
        make_receipt(2),
        make_receipt(3, edge_key=OTHER_EDGE_KEY),
        make_edge_key(OTHER_EDGE_KEY),
    ]
    outcomes, checkpoint = sequence(storage, LOG, batch, NOW_MS)
    assert_rejected(outcomes[0], "not registered")
    assert indexes([outcomes[1], outcomes[2]]) == [0, 1]
    assert_rejected(outcomes[3], "not registered")
    assert indexes(outcomes[4:]) == [2]
    assert checkpoint.tree_size == 3
    # Registered now: the receipts refused above are accepted when resubmitted.
    outcomes, _ = sequence(storage, LOG, [batch[0], batch[3]], NOW_MS)
    assert indexes(outcomes) == [3, 4]
    verify_log(storage)


def test_a_revocation_counts_only_for_later_receipts_of_its_batch(storage: Storage) -> None:
    register(storage)
    batch: list[Entry] = [
        make_receipt(1),
        make_edge_key(action="revoke", valid_until_ms=SERVED_MS),
        make_receipt(2),
    ]
    outcomes, _ = sequence(storage, LOG, batch, NOW_MS)
    assert indexes(outcomes[:2]) == [1, 2]
    assert_rejected(outcomes[2], "revoked")


def test_a_key_is_registered_once(storage: Storage) -> None:
    size = register(storage)
    before = storage.edge_keys()
    outcomes, checkpoint = sequence(storage, LOG, [make_edge_key(valid_from_ms=5)], NOW_MS)
    assert_rejected(outcomes[0], "already registered", "edge_key.key")
    assert checkpoint.tree_size == size
    assert storage.edge_keys() == before
    # Also within one batch: the first statement is in force for the second (and the same
    # statement twice is one entry, logged once).
    batch = [make_edge_key(EDGE_KEY_2), make_edge_key(EDGE_KEY_2, valid_from_ms=5)]
    outcomes, _ = sequence(storage, LOG, [*batch, batch[0]], NOW_MS)
    assert indexes(outcomes[:1]) == [size]
    assert_rejected(outcomes[1], "already registered", "edge_key.key")
    assert outcomes[2] == replace(logged(outcomes[:1])[0], duplicate=True)
    verify_log(storage)


def test_a_revocation_needs_the_registered_key(storage: Storage) -> None:
    start = SERVED_MS - 10_000
    outcomes, _ = sequence(
        storage, LOG, [make_edge_key(action="revoke", valid_until_ms=SERVED_MS)], NOW_MS
    )
    assert_rejected(outcomes[0], "not registered", "edge_key.key")
    assert storage.edge_keys() == []
    size = register(storage, make_edge_key(valid_from_ms=start))
    outcomes, checkpoint = sequence(
        storage,
        LOG,
        [make_edge_key(action="revoke", valid_from_ms=start + 1, valid_until_ms=SERVED_MS)],
        NOW_MS,
    )
    assert_rejected(outcomes[0], "not the registered key's", "edge_key.valid_from_ms")
    assert checkpoint.tree_size == size
    record = storage.edge_key("edge-1", key_id(EDGE_KEY))
    assert record is not None
    assert (record.valid_from_ms, record.valid_until_ms) == (start, None)


def test_a_revocation_never_reopens_a_window(storage: Storage) -> None:
    end = SERVED_MS
    register(storage, make_edge_key(valid_until_ms=end))
    size = register(storage, make_edge_key(action="revoke", valid_until_ms=end + 10_000))
    record = storage.edge_key("edge-1", key_id(EDGE_KEY))
    assert record is not None
    assert (record.valid_until_ms, record.entry_index) == (end, size - 1)
    outcomes, _ = sequence(storage, LOG, [make_receipt(1, served_at_ms=end)], NOW_MS)
    assert_rejected(outcomes[0], "revoked or expired")
    # An earlier end does close it further.
    register(storage, make_edge_key(action="revoke", valid_until_ms=end - 10))
    outcomes, _ = sequence(storage, LOG, [make_receipt(2, served_at_ms=end - 10)], NOW_MS)
    assert_rejected(outcomes[0], "revoked or expired")


def test_a_rotation_must_replace_a_registered_key_of_the_edge(storage: Storage) -> None:
    register(storage, make_edge_key(OTHER_EDGE_KEY))
    size = storage.tree_size()
    rotation = make_edge_key(EDGE_KEY_2, action="rotate", valid_from_ms=5, replaces=EDGE_KEY)
    outcomes, _ = sequence(storage, LOG, [rotation], NOW_MS)
    assert_rejected(outcomes[0], "no registered key", "edge_key.replaces")
    # A key of another edge with that ID would not do either.
    sneaky = make_edge_key(EDGE_KEY_2, action="rotate", valid_from_ms=5, replaces=OTHER_EDGE_KEY)
    outcomes, checkpoint = sequence(storage, LOG, [sneaky], NOW_MS)
    assert_rejected(outcomes[0], "no registered key", "edge_key.replaces")
    assert checkpoint.tree_size == size
    assert storage.edge_key("edge-1", key_id(EDGE_KEY_2)) is None


# -- re-signing ---------------------------------------------------------------------------


def test_an_empty_batch_re_signs_the_same_tree(storage: Storage) -> None:
    register(storage)
    _, before = sequence(storage, LOG, [make_receipt(i) for i in range(5)], NOW_MS)
    rows = len(storage.checkpoints())
    later = NOW_MS + 61_001
    outcomes, after = sequence(storage, LOG, [], later)
    assert outcomes == []
    assert (after.tree_size, after.root_hash) == (before.tree_size, before.root_hash)
    assert after.signed_at_ms == later
    assert after.note != before.note
    open_stored(after, later)
    assert len(storage.checkpoints()) == rows + 1
    assert storage.latest_checkpoint() == after
    assert storage.checkpoint_at(after.tree_size) == after
    verify_log(storage)


# -- signed entries that are not receipts: logged once, whatever the registries say now ----

CREATOR = SigningKey("acct:alice", bytes(range(160, 192)))
BILLING = SigningKey("billing.example", bytes(range(192, 224)))


def log_one(storage: Storage, entry: Entry, now_ms: int = NOW_MS) -> int:
    """Log ``entry`` alone, in its own seal (as an HTTP request would); its index."""
    (outcome,), _ = sequence(storage, LOG, [entry], now_ms)
    assert isinstance(outcome, Logged) and not outcome.duplicate, outcome
    return outcome.index


def creator(currency: str, follows: int | None = None) -> Creator:
    entry = Creator(CREATOR.name, format_vkey(CREATOR.verifier()), currency, follows=follows)
    return sign_creator(entry, OPERATOR_KEY)


def dispute(action: str, follows: int | None, by: str = "creator") -> Dispute:
    entry = Dispute(
        action, CREATOR.name, "sha256:" + "d1" * 32, 1, f"{action} by {by}", by, follows
    )
    return sign_dispute(entry, CREATOR if by == "creator" else OPERATOR_KEY)


def catalog_history(storage: Storage) -> list[tuple[Entry, int]]:
    """Every signed kind but receipts, each logged in its own seal, with its index: an edge
    key; a creator, registered then moved to EUR (following its registration); a manifest
    and its withdrawal; a statement; a dispute of its line 1 opened, withdrawn, opened again
    (following the withdrawal) and resolved by the operator; a revenue declaration."""
    history: list[tuple[Entry, int]] = []

    def add(entry: Entry) -> int:
        history.append((entry, log_one(storage, entry)))
        return history[-1][1]

    add(make_edge_key())
    registered = add(creator("USD"))
    add(creator("EUR", follows=registered))
    publish = Manifest(
        "publish", CREATOR.name, "sha256:" + "c1" * 32, 1, "sha256:" + "a1" * 32,
        ("training",), (("training", "0.05"),), "https://l.example/1",
    )  # fmt: skip
    add(sign_manifest(publish, CREATOR))
    withdraw = replace(publish, action="withdraw", scopes=(), terms=(), license=None)
    add(sign_manifest(withdraw, CREATOR))
    statement = Statement(
        "sha256:" + "d1" * 32, CREATOR.name, "EUR", 0, storage.tree_size(), NOW_MS, 2,
        100, 0, 10, NOW_MS,
    )  # fmt: skip
    add(sign_statement(statement, BILLING))
    opened = add(dispute("open", None))
    withdrawn = add(dispute("close", opened))
    reopened = add(dispute("open", withdrawn))
    add(dispute("close", reopened, by="operator"))
    add(sign_revenue(Revenue("acme", "EUR", 5, 0, 1000, "inv-1"), OPERATOR_KEY))
    return history


def test_an_exact_repost_of_any_signed_entry_is_a_duplicate(
    storage: Storage, storage_url: str
) -> None:
    """Each kind posted again as it was logged, in one batch and long after: each is
    ``duplicate`` with its index, even the open superseded twice since; nothing changes."""
    history = catalog_history(storage)
    before = snapshot(storage_url)
    registries = (storage.billing.creators(), storage.billing.disputes(), storage.edge_keys())
    reposts = [entry for entry, _ in history]
    outcomes, checkpoint = sequence(storage, LOG, [*reposts, *reposts], NOW_MS + 10_000)
    expected = [Logged(i, before.entries[i].data, duplicate=True) for _, i in history]
    assert outcomes == expected + expected
    assert checkpoint.tree_size == before.checkpoints[-1][1].tree_size
    after = snapshot(storage_url)
    assert (after.entries, after.signed) == (before.entries, before.signed)
    assert (storage.billing.creators(), storage.billing.disputes(), storage.edge_keys()) == (
        registries
    )
    assert all(d.closed_index is not None for d in storage.billing.disputes())


def test_an_entry_twice_in_one_batch_is_logged_once(storage: Storage) -> None:
    register(storage)
    entry = creator("USD")
    outcomes, checkpoint = sequence(storage, LOG, [entry, entry], NOW_MS)
    first = logged(outcomes[:1])[0]
    assert outcomes[1] == replace(first, duplicate=True)
    assert checkpoint.tree_size == first.index + 1


def test_a_registration_follows_the_one_in_force(storage: Storage) -> None:
    """USD, EUR, USD again: each change follows the registration it replaces, so the third
    is not the first re-posted; a registration that follows another is refused."""
    register(storage)
    first = log_one(storage, creator("USD"))
    second = log_one(storage, creator("EUR", follows=first))
    size = storage.tree_size()
    for stale in (creator("GBP"), creator("GBP", follows=first), creator("GBP", follows=99)):
        (outcome,), _ = sequence(storage, LOG, [stale], NOW_MS)
        assert_rejected(outcome, f"at index {second}", "creator.follows")
    assert storage.tree_size() == size
    third = log_one(storage, creator("USD", follows=second))
    record = storage.billing.creator(CREATOR.name)
    assert record is not None and (record.currency, record.entry_index) == ("USD", third)


def test_a_database_written_before_the_index_gets_it_when_it_next_sequences(
    storage_url: str,
) -> None:
    """A database whose signed-message table is missing (as every one written before it
    was): opened again, the table is made, and the first seal fills it from the registries,
    so a re-post is still a duplicate. A registration that was replaced is not in any
    registry: posted again, its binding refuses it."""
    storage = Storage.open(storage_url)
    try:
        history = catalog_history(storage)
        rows = signed_rows(storage)
        storage.db.execute_sql('DROP TABLE "signed_messages"')
    finally:
        storage.close()
    reopened = Storage.open(storage_url)
    try:
        assert signed_rows(reopened) == []
        size = reopened.tree_size()
        outcomes, checkpoint = sequence(reopened, LOG, [e for e, _ in history], NOW_MS + 1)
        replaced = 1  # the creator's first registration
        for position, ((_, index), outcome) in enumerate(zip(history, outcomes, strict=True)):
            if position == replaced:
                assert_rejected(outcome, f"at index {history[2][1]}", "creator.follows")
            else:
                assert isinstance(outcome, Logged) and (outcome.index, outcome.duplicate) == (
                    index, True,
                )  # fmt: skip
        assert checkpoint.tree_size == size
        assert signed_rows(reopened) == [r for r in rows if r[1] != history[replaced][1]]
    finally:
        reopened.close()


# -- fault injection ----------------------------------------------------------------------


class InjectedError(Exception):
    """Raised by FaultyStorage where a test asked for it."""


WRITE_STEPS = (
    "append_hashes", "append_entries", "append_signed", "put_edge_key", "append_checkpoint",
)  # fmt: skip


class FaultyStorage(Storage):
    """A Storage that records every write step and fails where asked.

    ``fail_at = (step, n)`` raises InjectedError at the n-th call of ``step`` (1-based),
    before the write or, with ``fail_after_write``, right after it (still inside the
    transaction). ``crash_after_commit`` raises once ``sequencing()`` has committed: the
    work is durable but the caller never hears so.
    """

    fail_at: tuple[str, int] | None = None
    fail_after_write: bool = False
    crash_after_commit: bool = False

    def __init__(self, db: peewee.Database) -> None:
        super().__init__(db)
        self.calls: list[str] = []

    def inject(self, step: str, n: int = 1, *, after_write: bool = False) -> None:
        """Fail at the n-th call of ``step`` from now on (the calls recorded so far are
        forgotten)."""
        self.calls.clear()
        self.fail_at, self.fail_after_write = (step, n), after_write

    def _failing(self, step: str) -> bool:
        self.calls.append(step)
        return self.fail_at == (step, self.calls.count(step))

    def _step(self, step: str, write: Callable[[], None]) -> None:
        failing = self._failing(step)
        if failing and not self.fail_after_write:
            raise InjectedError(f"before {step}")
        write()
        if failing:
            raise InjectedError(f"after {step}")

    def append_hashes(self, start: int, hashes: Sequence[bytes]) -> None:
        self._step("append_hashes", lambda: Storage.append_hashes(self, start, hashes))

    def append_entries(self, records: Sequence[EntryRecord]) -> None:
        self._step("append_entries", lambda: Storage.append_entries(self, records))

    def append_signed(self, rows: Sequence[tuple[bytes, int]]) -> None:
        self._step("append_signed", lambda: Storage.append_signed(self, rows))

    def put_edge_key(self, record: EdgeKeyRecord) -> None:
        self._step("put_edge_key", lambda: Storage.put_edge_key(self, record))

    def append_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        self._step("append_checkpoint", lambda: Storage.append_checkpoint(self, checkpoint))

    @contextmanager
    def sequencing(self) -> Iterator[None]:
        with super().sequencing():
            yield
        if self.crash_after_commit:
            raise InjectedError("after commit")


@pytest.fixture
def faulty(storage_url: str) -> Iterator[FaultyStorage]:
    opened = FaultyStorage.open(storage_url)
    assert isinstance(opened, FaultyStorage)
    try:
        yield opened
    finally:
        opened.close()


def existing_log(storage: Storage) -> None:
    """A log with some history: two edge keys, receipts, several checkpoints."""
    sequence(storage, LOG, [], NOW_MS - 3)
    sequence(storage, LOG, [make_edge_key(), *(make_receipt(i) for i in range(4))], NOW_MS - 2)
    sequence(storage, LOG, [make_edge_key(OTHER_EDGE_KEY), make_receipt(4)], NOW_MS - 1)


def failing_batch() -> list[Entry]:
    """Touches every write step, put_edge_key twice (a rotation writes both keys)."""
    return [
        make_receipt(10),
        make_edge_key(EDGE_KEY_2, action="rotate", valid_from_ms=SERVED_MS, replaces=EDGE_KEY),
        make_receipt(11, edge_key=EDGE_KEY_2),
        make_receipt(12, served_at_ms=SERVED_MS - 1),
        make_receipt(2),  # a duplicate
        make_receipt(13, edge_key=OTHER_EDGE_KEY),
    ]


FAULTS = [(step, 1) for step in WRITE_STEPS] + [("put_edge_key", 2)]


@pytest.mark.parametrize("after_write", [False, True], ids=["before-write", "after-write"])
@pytest.mark.parametrize("fault", FAULTS, ids=[f"{step}-{n}" for step, n in FAULTS])
def test_a_failed_step_persists_nothing(
    faulty: FaultyStorage, storage_url: str, fault: tuple[str, int], after_write: bool
) -> None:
    existing_log(faulty)
    before = snapshot(storage_url)
    faulty.inject(*fault, after_write=after_write)

    with pytest.raises(InjectedError):
        sequence(faulty, LOG, failing_batch(), NOW_MS)
    step, n = fault
    assert faulty.calls.count(step) == n  # the fault was reached, and nothing ran after it
    assert faulty.calls[-1] == step
    assert snapshot(storage_url) == before

    # The same Storage works afterwards, and the retry logs the batch as if nothing happened.
    faulty.fail_at = None
    outcomes, checkpoint = sequence(faulty, LOG, failing_batch(), NOW_MS)
    size = before.checkpoints[-1][1].tree_size
    (original,) = [r for r in before.entries if r.request_id == "req-2"]
    assert indexes(outcomes) == [size, size + 1, size + 2, size + 3, original.index, size + 4]
    assert outcomes[4] == Logged(original.index, original.data, duplicate=True)
    assert checkpoint.tree_size == size + 5
    reopened = Storage.open(storage_url)
    try:
        assert verify_log(reopened) == checkpoint
    finally:
        reopened.close()


def test_a_failed_re_signing_persists_nothing(faulty: FaultyStorage, storage_url: str) -> None:
    existing_log(faulty)
    before = snapshot(storage_url)
    faulty.inject("append_checkpoint", after_write=True)
    with pytest.raises(InjectedError):
        sequence(faulty, LOG, [], NOW_MS)
    assert faulty.calls == ["append_checkpoint"]
    assert snapshot(storage_url) == before


def test_a_crash_after_the_commit_keeps_everything(faulty: FaultyStorage, storage_url: str) -> None:
    """Failed but persisted: the answer is lost, the entries are not; the retry finds them."""
    existing_log(faulty)
    before = snapshot(storage_url)
    size = before.checkpoints[-1][1].tree_size
    batch = [make_receipt(i) for i in range(20, 26)]
    faulty.crash_after_commit = True
    with pytest.raises(InjectedError, match="after commit"):
        sequence(faulty, LOG, batch, NOW_MS)

    after = snapshot(storage_url)
    assert after.entries[:size] == before.entries
    assert [r.request_id for r in after.entries[size:]] == [r.request_id for r in batch]
    assert after.checkpoints[: len(before.checkpoints)] == before.checkpoints
    assert len(after.checkpoints) == len(before.checkpoints) + 1

    # The submitter retries (against a new process), and hears "duplicate" for each.
    reopened = Storage.open(storage_url)
    try:
        outcomes, checkpoint = sequence(reopened, LOG, batch, NOW_MS + 1_000)
        assert all(o.duplicate for o in logged(outcomes))
        assert indexes(outcomes) == list(range(size, size + len(batch)))
        assert [o.data for o in logged(outcomes)] == [r.data for r in after.entries[size:]]
        assert checkpoint.tree_size == size + len(batch)
        assert verify_log(reopened) == checkpoint
        for o in logged(outcomes):
            proof = inclusion_proof(o.index, checkpoint.tree_size, reopened)
            verify_inclusion(
                leaf_hash(o.data), o.index, checkpoint.tree_size, proof, checkpoint.root_hash
            )
    finally:
        reopened.close()


# -- the pool -----------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the event loop run until ``condition`` holds; fail if it never does."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail(f"timed out waiting until {what}")


def clock() -> Callable[[], int]:
    """A fixed clock that ticks one second per reading, so each seal is distinguishable."""
    ticks = itertools.count()
    return lambda: NOW_MS + 1_000 * next(ticks)


@pytest.mark.anyio
async def test_submit_answers_only_after_the_seal(storage: Storage) -> None:
    size = register(storage)
    pool = Pool(storage, LOG, clock())
    task = asyncio.ensure_future(pool.submit([make_receipt(1), make_receipt(2)]))
    await until(lambda: pool.pending == 2, "the receipts are pooled")
    for _ in range(100):
        await asyncio.sleep(0)
    assert not task.done()
    assert storage.tree_size() == size
    checkpoint = await pool.seal()
    assert checkpoint is not None
    assert checkpoint.tree_size == size + 2
    with anyio.fail_after(10):
        outcomes, answered = await task
    assert answered == checkpoint
    assert indexes(outcomes) == [size, size + 1]
    assert pool.pending == 0
    assert await pool.seal() is None  # nothing waiting: no new checkpoint
    assert storage.latest_checkpoint() == checkpoint
    verify_log(storage)


@pytest.mark.anyio
async def test_one_seal_answers_every_submitter_with_one_checkpoint(storage: Storage) -> None:
    size = register(storage)
    rows = len(storage.checkpoints())
    pool = Pool(storage, LOG, clock())
    submissions: list[list[Entry]] = [
        [make_receipt(1), make_receipt(2)],
        [make_receipt(3)],
        [make_receipt(4)] * 2,
    ]
    tasks = [asyncio.ensure_future(pool.submit(entries)) for entries in submissions]
    await until(lambda: pool.pending == 5, "every submission is pooled")
    checkpoint = await pool.seal()
    with anyio.fail_after(10):
        answers = await asyncio.gather(*tasks)
    assert [cp for _, cp in answers] == [checkpoint] * 3
    assert [indexes(outcomes) for outcomes, _ in answers] == [
        [size, size + 1],
        [size + 2],
        [size + 3, size + 3],
    ]
    assert [o.duplicate for o in logged(answers[2][0])] == [False, True]
    assert len(storage.checkpoints()) == rows + 1
    assert verify_log(storage) == checkpoint


@pytest.mark.anyio
async def test_too_much_pending_work_is_refused(storage: Storage) -> None:
    register(storage)
    pool = Pool(storage, LOG, clock(), max_entries=100, max_pending=3)
    # Bounded: a submission that were let in would wait for a seal that never comes.
    with anyio.fail_after(5), pytest.raises(OverloadedError):
        await pool.submit([make_receipt(i) for i in range(4)])
    assert pool.pending == 0
    first = asyncio.ensure_future(pool.submit([make_receipt(1), make_receipt(2)]))
    await until(lambda: pool.pending == 2, "the first submission is pooled")
    with anyio.fail_after(5), pytest.raises(OverloadedError):
        await pool.submit([make_receipt(3), make_receipt(4)])
    assert pool.pending == 2
    last = asyncio.ensure_future(pool.submit([make_receipt(3)]))  # exactly max_pending
    await until(lambda: pool.pending == 3, "the last submission is pooled")
    checkpoint = await pool.seal()
    with anyio.fail_after(10):
        answers = await asyncio.gather(first, last)
    assert [indexes(outcomes) for outcomes, _ in answers] == [[1, 2], [3]]
    assert all(cp == checkpoint for _, cp in answers)
    # Room again after the seal.
    again = asyncio.ensure_future(pool.submit([make_receipt(i) for i in range(10, 13)]))
    await until(lambda: pool.pending == 3, "the pool accepts work again")
    await pool.seal()
    with anyio.fail_after(10):
        outcomes, _ = await again
    assert indexes(outcomes) == [4, 5, 6]


@pytest.mark.anyio
async def test_a_full_pool_seals_itself(storage: Storage) -> None:
    size = register(storage)
    pool = Pool(storage, LOG, clock(), max_entries=3)
    first = asyncio.ensure_future(pool.submit([make_receipt(1), make_receipt(2)]))
    await until(lambda: pool.pending == 2, "the first submission is pooled")
    for _ in range(100):
        await asyncio.sleep(0)
    assert not first.done()
    second = asyncio.ensure_future(pool.submit([make_receipt(3)]))
    # Nobody calls seal(): the third entry fills the pool.
    with anyio.fail_after(10):
        answers = await asyncio.gather(first, second)
    assert [indexes(outcomes) for outcomes, _ in answers] == [[size, size + 1], [size + 2]]
    assert answers[0][1] == answers[1][1] == storage.latest_checkpoint()
    assert answers[0][1].tree_size == size + 3
    assert pool.pending == 0
    verify_log(storage)


@pytest.mark.anyio
async def test_a_failed_seal_fails_every_waiter(faulty: FaultyStorage, storage_url: str) -> None:
    register(faulty)
    before = snapshot(storage_url)
    faulty.inject("append_entries")
    pool = Pool(faulty, LOG, clock())
    tasks = [
        asyncio.ensure_future(pool.submit([make_receipt(1)])),
        asyncio.ensure_future(pool.submit([make_receipt(2), make_receipt(3)])),
    ]
    await until(lambda: pool.pending == 3, "both submissions are pooled")
    with pytest.raises(InjectedError):
        await pool.seal()
    with anyio.fail_after(10):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, InjectedError) for r in results), results
    assert pool.pending == 0
    assert snapshot(storage_url) == before
    # The pool carries on: the next seal logs what is submitted next.
    faulty.fail_at = None
    task = asyncio.ensure_future(pool.submit([make_receipt(1)]))
    await until(lambda: pool.pending == 1, "the retry is pooled")
    await pool.seal()
    with anyio.fail_after(10):
        outcomes, _ = await task
    assert indexes(outcomes) == [1]


@pytest.mark.anyio
async def test_a_failed_self_seal_fails_every_waiter_and_is_not_left_unretrieved(
    faulty: FaultyStorage,
) -> None:
    """The seal a full pool starts by itself has no caller: its waiters get the error, and
    asyncio must not also report it as 'Task exception was never retrieved'."""
    register(faulty)
    faulty.inject("append_hashes")
    tasks_before = asyncio.all_tasks()
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        pool = Pool(faulty, LOG, clock(), max_entries=2)
        first = asyncio.ensure_future(pool.submit([make_receipt(1)]))
        await until(lambda: pool.pending == 1, "the first submission is pooled")
        second = asyncio.ensure_future(pool.submit([make_receipt(2)]))
        with anyio.fail_after(10):
            results = await asyncio.gather(first, second, return_exceptions=True)
        assert all(isinstance(r, InjectedError) for r in results), results
        await until(lambda: asyncio.all_tasks() <= tasks_before, "the seal task is finished")
        del first, second, results
        for _ in range(100):  # let the done callbacks run and drop the task
            await asyncio.sleep(0)
        gc.collect()
        assert reported == []
    finally:
        loop.set_exception_handler(previous)


@pytest.mark.anyio
async def test_on_sealed_hears_each_seal(storage: Storage) -> None:
    size = register(storage)
    heard: list[tuple[float, StoredCheckpoint]] = []
    pool = Pool(storage, LOG, clock(), on_sealed=lambda s, cp: heard.append((s, cp)))
    task = asyncio.ensure_future(pool.submit([make_receipt(1)]))
    await until(lambda: pool.pending == 1, "the receipt is pooled")
    checkpoint = await pool.seal()
    assert [cp for _, cp in heard] == [checkpoint]
    assert heard[0][0] >= 0
    assert await pool.seal() is None
    assert len(heard) == 1
    assert indexes((await task)[0]) == [size]


@pytest.mark.anyio
async def test_a_failing_on_sealed_callback_strands_no_waiter(storage: Storage) -> None:
    """The entries are committed: their submitters must get the answer whatever the metrics
    callback does."""
    size = register(storage)

    def broken(seconds: float, checkpoint: StoredCheckpoint) -> None:
        raise InjectedError("metrics are down")

    pool = Pool(storage, LOG, clock(), on_sealed=broken)
    task = asyncio.ensure_future(pool.submit([make_receipt(1), make_receipt(2)]))
    await until(lambda: pool.pending == 2, "the receipts are pooled")
    with pytest.raises(InjectedError):
        await pool.seal()
    await until(task.done, "the submitter is answered")
    outcomes, checkpoint = await task
    assert indexes(outcomes) == [size, size + 1]
    assert checkpoint == storage.latest_checkpoint()


@pytest.mark.anyio
async def test_resign_signs_the_same_tree_again_unless_a_seal_is_due(storage: Storage) -> None:
    register(storage)
    _, before = sequence(storage, LOG, [make_receipt(1)], NOW_MS)
    rows = len(storage.checkpoints())
    pool = Pool(storage, LOG, clock())
    checkpoint = await pool.resign()
    assert checkpoint is not None
    assert (checkpoint.tree_size, checkpoint.root_hash) == (before.tree_size, before.root_hash)
    assert checkpoint.signed_at_ms == NOW_MS
    assert storage.latest_checkpoint() == checkpoint
    assert len(storage.checkpoints()) == rows + 1
    open_stored(checkpoint)
    # With work waiting, the next seal will sign a new tree: no re-signing now.
    task = asyncio.ensure_future(pool.submit([make_receipt(2)]))
    await until(lambda: pool.pending == 1, "the receipt is pooled")
    assert await pool.resign() is None
    assert len(storage.checkpoints()) == rows + 1
    sealed = await pool.seal()
    assert sealed is not None
    assert sealed.tree_size == before.tree_size + 1
    assert sealed.signed_at_ms == NOW_MS + 1_000
    with anyio.fail_after(10):
        await task
    verify_log(storage)
