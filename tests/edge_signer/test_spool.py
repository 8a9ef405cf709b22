"""The spool on a real SQLite file: durability settings, idempotent appends, the capacity
bound, states and counters, reopening, and the group-committing writer."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edge_signer.signer import Delivery, EdgeSigner, SignedReceipt
from edge_signer.spool import (
    DB_NAME,
    Answer,
    Spool,
    SpoolError,
    SpoolFullError,
    SpoolWriter,
)
from tests.edge_signer.conftest import EDGE_KEY, NOW_MS
from tlog.errors import MalformedError

SIGNER = EdgeSigner(EDGE_KEY)


def signed(i: int, *, bytes_sent: int = 1000) -> SignedReceipt:
    delivery = Delivery(
        request_id=f"req-{i}",
        consumer_id="acme-ai",
        token_id="tok-1",
        scope="training",
        content_id=f"sha256:{i:064x}",
        creator_id="acct:alice",
        manifest="sha256:" + "ab" * 32,
        bytes_sent=bytes_sent,
        cache="miss",
    )
    return SIGNER.sign(delivery, served_at_ms=NOW_MS)


def test_the_file_is_durable_wal(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:
        spool.append([signed(0)], NOW_MS)
    conn = sqlite3.connect(tmp_path / "spool" / DB_NAME)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    with Spool(tmp_path / "spool") as spool:
        # synchronous is per connection: FULL (2) on every one the spool opens
        assert spool._conn.execute("PRAGMA synchronous").fetchone() == (2,)
    assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700


def test_appends_are_idempotent_by_edge_and_request_id(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        assert spool.append([signed(0), signed(1)], NOW_MS) == [True, True]
        # The same id again, even with other content, changes nothing: logged once.
        assert spool.append([signed(1, bytes_sent=5), signed(2)], NOW_MS + 1) == [False, True]
        rows = spool.receipts()
        assert [r.request_id for r in rows] == ["req-0", "req-1", "req-2"]
        assert rows[1].entry == signed(1).entry
        status = spool.status()
        assert (status.spooled, status.pending, status.submitted) == (3, 3, 0)
        assert status.oldest_pending_spooled_at_ms == NOW_MS


def test_capacity_bounds_pending_and_a_refused_append_stores_nothing(tmp_path: Path) -> None:
    with Spool(tmp_path, capacity=3) as spool:
        spool.append([signed(0), signed(1)], NOW_MS)
        with pytest.raises(SpoolFullError):
            spool.append([signed(2), signed(3)], NOW_MS)
        assert [r.request_id for r in spool.receipts()] == ["req-0", "req-1"]
        assert spool.append([signed(2)], NOW_MS) == [True]
        assert spool.append([signed(2)], NOW_MS) == [False]  # a duplicate still fits
        with pytest.raises(SpoolFullError):
            spool.append([signed(4)], NOW_MS)
        # Verified receipts no longer count against the capacity.
        (first, *_) = spool.pending(10)
        spool.mark_answered([Answer(first.seq, "verified", 0, b"bundle")], NOW_MS)
        assert spool.append([signed(4)], NOW_MS) == [True]


def test_states_and_counters_follow_the_answers(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([signed(i) for i in range(5)], NOW_MS)
        batch = spool.pending(3)
        assert [p.request_id for p in batch] == ["req-0", "req-1", "req-2"]
        spool.mark_sent([p.seq for p in batch])
        spool.mark_sent([batch[0].seq])
        assert [p.attempts for p in spool.pending(3)] == [2, 1, 1]
        spool.mark_answered(
            [
                Answer(batch[0].seq, "verified", 7, b"b0"),
                Answer(batch[1].seq, "rejected", error="receipt.key_id: no edge key"),
                Answer(batch[2].seq, "conflict", 3, error="already logged"),
            ],
            NOW_MS + 10,
        )
        status = spool.status()
        assert (status.spooled, status.submitted, status.pending) == (5, 3, 2)
        assert (status.verified, status.rejected, status.conflict) == (1, 1, 1)
        assert status.oldest_pending_age_ms(NOW_MS + 100) == 100
        row = spool.receipt(EDGE_KEY.name, "req-0")
        assert row is not None and (row.state, row.log_index, row.bundle) == ("verified", 7, b"b0")
        # A second answer for a row answered before does not overwrite the first.
        spool.mark_answered([Answer(batch[0].seq, "rejected", error="late")], NOW_MS + 20)
        assert spool.receipt(EDGE_KEY.name, "req-0").state == "verified"  # type: ignore[union-attr]
        assert spool.requeue("rejected") == 1
        assert spool.status().pending == 3
        assert spool.receipt(EDGE_KEY.name, "req-1").error is None  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="requeued"):
            spool.requeue("verified")


def test_pending_batches_respect_bytes(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([signed(i) for i in range(10)], NOW_MS)
        size = len(signed(0).entry) + 1
        assert len(spool.pending(10, max_bytes=3 * size)) == 3
        assert len(spool.pending(10, max_bytes=1)) == 1  # never an empty batch


def test_prune_drops_old_verified_rows_only(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([signed(i) for i in range(3)], NOW_MS)
        rows = spool.pending(3)
        spool.mark_answered([Answer(rows[0].seq, "verified", 0, b"b")], NOW_MS)
        spool.mark_answered([Answer(rows[1].seq, "rejected", error="x")], NOW_MS)
        assert spool.prune(NOW_MS + 1) == 1
        status = spool.status()
        assert (status.spooled, status.verified, status.pruned, status.pending) == (3, 0, 1, 1)
        assert [r.request_id for r in spool.receipts()] == ["req-1", "req-2"]


def test_everything_survives_reopening(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([signed(0), signed(1)], NOW_MS)
        spool.set_meta("checkpoint", b"note")
    with Spool(tmp_path) as spool:
        assert [r.entry for r in spool.receipts()] == [signed(0).entry, signed(1).entry]
        assert spool.get_meta("checkpoint") == b"note"
        assert spool.get_meta("other") is None
        assert spool.status().spooled == 2


def test_an_unusable_directory_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SpoolError):
        Spool(tmp_path / "file")
    with pytest.raises(ValueError, match="capacity"):
        Spool(tmp_path / "ok", capacity=0)


# -- the writer --------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_concurrent_appends_are_committed_in_groups(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, clock_ms=lambda: NOW_MS)
    writer.start()
    try:
        results = await asyncio.gather(*(writer.append(signed(i)) for i in range(200)))
        assert results == [True] * 200
        assert writer.groups < 200
        assert await writer.append(signed(5)) is False
    finally:
        writer.close()
    with Spool(tmp_path) as spool:
        assert spool.status().pending == 200


@pytest.mark.anyio
async def test_reservations_count_against_the_capacity(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, capacity=2, clock_ms=lambda: NOW_MS)
    writer.start()
    try:
        first = writer.reserve()
        second = writer.reserve()
        with pytest.raises(SpoolFullError):
            writer.reserve()
        second.release()
        second.release()  # idempotent
        third = writer.reserve()
        assert await writer.append(signed(0), first) is True
        assert writer.pending_estimate == 1
        with pytest.raises(SpoolFullError):
            writer.reserve()  # one pending, one reserved
        third.release()
        assert await writer.append(signed(1), writer.reserve()) is True
        with pytest.raises(SpoolFullError):
            await writer.append(signed(2))  # the spool itself refuses past its capacity
    finally:
        writer.close()


@pytest.mark.anyio
async def test_a_failed_commit_holds_reservations_off_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    writer = SpoolWriter(tmp_path, failure_hold_s=1.0, monotonic=lambda: clock[0])
    writer.start()
    try:
        real_append = Spool.append

        def failing(self: Spool, receipts: object, now_ms: int) -> list[bool]:
            raise SpoolError("injected: disk I/O error")

        monkeypatch.setattr(Spool, "append", failing)
        with pytest.raises(SpoolError, match="injected"):
            await writer.append(signed(0))
        with pytest.raises(SpoolError, match="failed moments ago"):
            writer.reserve()
        clock[0] += 1.5
        monkeypatch.setattr(Spool, "append", real_append)
        assert await writer.append(signed(0), writer.reserve()) is True
        writer.reserve().release()
    finally:
        writer.close()


def test_a_writer_that_cannot_open_its_spool_says_so(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError):
        SpoolWriter(tmp_path / "file").start()


@pytest.mark.anyio
async def test_receipts_can_be_signed_in_the_writer_thread(tmp_path: Path) -> None:
    import threading  # noqa: PLC0415

    signed_in: list[str] = []

    def sign(i: int) -> SignedReceipt:
        signed_in.append(threading.current_thread().name)
        return signed(i)

    def broken() -> SignedReceipt:
        raise MalformedError("receipt.request_id", "injected")

    writer = SpoolWriter(tmp_path, clock_ms=lambda: NOW_MS)
    writer.start()
    try:
        results = await asyncio.gather(
            writer.append(lambda: sign(0)),
            writer.append(broken),
            writer.append(lambda: sign(1)),
            return_exceptions=True,
        )
    finally:
        writer.close()
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], MalformedError)
    assert signed_in == ["spool-writer", "spool-writer"]
    with Spool(tmp_path) as spool:
        assert [r.request_id for r in spool.receipts()] == ["req-0", "req-1"]
