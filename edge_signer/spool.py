"""The spool: every signed receipt on local disk before its delivery completes.

Owns the edge's durable queue of receipts and what became of each. It is one SQLite file
(the standard library's sqlite3) in WAL mode with ``synchronous=FULL``: a receipt whose
append returned is in the WAL and fsynced, so it survives SIGKILL and power loss. Imports
edge_signer.signer and tlog; must not import verifier, log_server, anchor, billing, cli or
peewee.

Each receipt is one row, keyed by (edge, request_id), holding its entry bytes exactly as
signed, so a resubmission after a crash sends the same bytes and the log answers
``duplicate`` with the original index: nothing is logged twice. Appending a receipt whose
(edge, request_id) is already spooled changes nothing (the same file spooled twice by
``meterlog edge submit`` is logged once). A row's ``state`` moves from ``pending`` to one
of ``verified`` (the log answered ``logged`` or ``duplicate``, and its proof bundle
verified and is stored with it), ``rejected`` or ``conflict`` (the log refused it; the
reason is stored). Nothing is deleted except by :meth:`Spool.prune`, and only verified
rows.

The spool is bounded: at most ``capacity`` pending receipts; an append beyond that raises
:class:`SpoolFullError` and stores nothing. Counters (by state, and how many were ever
submitted) are kept by triggers in the same transactions as the rows, so they are exact.

:class:`SpoolWriter` is the asynchronous front for the middleware: appends from concurrent
requests are committed together, one transaction (one fsync) per group, by a writer thread.

Crash ordering: a row is committed before the response that it meters completes (the
middleware awaits :meth:`SpoolWriter.append`); the submitter marks a row verified only after
the log answered and the bundle verified, in one transaction. A crash between the two leaves
the row pending, and it is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge_signer.signer import SignedReceipt
from tlog.errors import MalformedError

__all__ = [
    "STATES",
    "PendingReceipt",
    "Reservation",
    "Spool",
    "SpoolError",
    "SpoolFullError",
    "SpoolStatus",
    "SpoolWriter",
    "SpooledReceipt",
]

_R = TypeVar("_R")
_INSERT = (
    "INSERT INTO receipts (edge, request_id, entry, spooled_at_ms) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (edge, request_id) DO NOTHING"
)

STATES = ("pending", "verified", "rejected", "conflict")
DEFAULT_CAPACITY = 1_000_000
DB_NAME = "spool.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    edge TEXT NOT NULL,
    request_id TEXT NOT NULL,
    entry BLOB NOT NULL,
    spooled_at_ms INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'verified', 'rejected', 'conflict')),
    attempts INTEGER NOT NULL DEFAULT 0,
    log_index INTEGER,
    bundle BLOB,
    answered_at_ms INTEGER,
    error TEXT,
    UNIQUE (edge, request_id)
);
CREATE INDEX IF NOT EXISTS receipts_pending ON receipts (seq) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES
    ('spooled', 0), ('submitted', 0), ('pending', 0), ('verified', 0), ('rejected', 0),
    ('conflict', 0), ('pruned', 0);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS receipts_spooled AFTER INSERT ON receipts BEGIN
    UPDATE counters SET value = value + 1 WHERE name IN ('spooled', NEW.state);
END;
CREATE TRIGGER IF NOT EXISTS receipts_state AFTER UPDATE OF state ON receipts
WHEN OLD.state <> NEW.state BEGIN
    UPDATE counters SET value = value - 1 WHERE name = OLD.state;
    UPDATE counters SET value = value + 1 WHERE name = NEW.state;
END;
CREATE TRIGGER IF NOT EXISTS receipts_submitted AFTER UPDATE OF attempts ON receipts
WHEN OLD.attempts = 0 AND NEW.attempts > 0 BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'submitted';
END;
CREATE TRIGGER IF NOT EXISTS receipts_pruned AFTER DELETE ON receipts BEGIN
    UPDATE counters SET value = value - 1 WHERE name = OLD.state;
    UPDATE counters SET value = value + 1 WHERE name = 'pruned';
END;
"""


class SpoolError(Exception):
    """The spool could not do what was asked (the disk, the database); nothing was changed."""


class SpoolFullError(SpoolError):
    """The spool holds ``capacity`` pending receipts already; the append stored nothing."""


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """The spool's counters. ``spooled`` counts every receipt ever appended (pruned ones
    too); ``submitted`` those sent to the log at least once; the rest count rows by state."""

    spooled: int
    submitted: int
    pending: int
    verified: int
    rejected: int
    conflict: int
    pruned: int
    capacity: int
    oldest_pending_spooled_at_ms: int | None

    def oldest_pending_age_ms(self, now_ms: int) -> int | None:
        if self.oldest_pending_spooled_at_ms is None:
            return None
        return max(0, now_ms - self.oldest_pending_spooled_at_ms)

    def to_json(self, now_ms: int) -> dict[str, int | None]:
        return {
            "spooled": self.spooled,
            "submitted": self.submitted,
            "pending": self.pending,
            "verified": self.verified,
            "rejected": self.rejected,
            "conflict": self.conflict,
            "pruned": self.pruned,
            "capacity": self.capacity,
            "oldest_pending_age_ms": self.oldest_pending_age_ms(now_ms),
        }


@dataclass(frozen=True, slots=True)
class PendingReceipt:
    """A receipt waiting for the log: its row number and its entry bytes, as signed."""

    seq: int
    edge: str
    request_id: str
    entry: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class SpooledReceipt:
    """One row of the spool, whatever its state."""

    seq: int
    edge: str
    request_id: str
    entry: bytes
    spooled_at_ms: int
    state: str
    attempts: int
    log_index: int | None
    bundle: bytes | None
    error: str | None


def _connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    return conn


class Spool:
    """One connection to the spool in ``directory`` (created if missing, mode 0700).

    Use one :class:`Spool` per thread; several processes may open the same directory
    (SQLite serialises the writers). Every method raises :class:`SpoolError` when SQLite or
    the disk fails, after rolling back.
    """

    def __init__(
        self,
        directory: Path,
        *,
        capacity: int = DEFAULT_CAPACITY,
        busy_timeout_s: float = 30.0,
    ) -> None:
        if capacity < 1:
            raise ValueError("the spool's capacity must be at least 1")
        self.directory = directory
        self.capacity = capacity
        self.pending_count = 0
        """Pending receipts as of this connection's last append (exact at that commit)."""
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._conn = _connect(directory / DB_NAME, busy_timeout_s)
            self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open the spool in {directory}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self, work: Callable[[sqlite3.Connection], _R]) -> _R:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise SpoolError(f"spool {self.directory}: {exc}") from exc
        return result

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.directory}: {exc}") from exc

    # -- appending ----------------------------------------------------------------------------

    def append(self, receipts: Sequence[SignedReceipt], now_ms: int) -> list[bool]:
        """Store the receipts in one durable transaction; for each, True if it was stored,
        False if its (edge, request_id) was already spooled (then nothing changes for it).

        SpoolFullError (and nothing stored) if the pending receipts would exceed capacity.
        """

        rows = [(r.edge, r.request_id, r.entry, now_ms) for r in receipts]

        def work(conn: sqlite3.Connection) -> list[bool]:
            # One statement for the whole group; only when some receipt was spooled before
            # (rare) is it undone and redone row by row, to say which.
            conn.execute("SAVEPOINT rows")
            if conn.executemany(_INSERT, rows).rowcount == len(rows):
                stored = [True] * len(rows)
            else:
                conn.execute("ROLLBACK TO rows")
                stored = [conn.execute(_INSERT, row).rowcount == 1 for row in rows]
            conn.execute("RELEASE rows")
            pending = _counter(conn, "pending")
            if pending > self.capacity:
                raise SpoolFullError(
                    f"the spool holds {pending - sum(stored)} pending receipts; "
                    f"its capacity is {self.capacity}"
                )
            self.pending_count = pending
            return stored

        return self._transaction(work)

    # -- draining -----------------------------------------------------------------------------

    def pending(self, limit: int, max_bytes: int | None = None) -> list[PendingReceipt]:
        """The oldest pending receipts: at most ``limit``, and at most ``max_bytes`` of
        entries (but always at least one, if any is pending)."""
        rows = self._read(
            "SELECT seq, edge, request_id, entry, attempts FROM receipts "
            "WHERE state = 'pending' ORDER BY seq LIMIT ?",
            (limit,),
        )
        batch: list[PendingReceipt] = []
        size = 0
        for seq, edge, request_id, entry, attempts in rows:
            size += len(entry) + 1
            if batch and max_bytes is not None and size > max_bytes:
                break
            batch.append(PendingReceipt(seq, edge, request_id, entry, attempts))
        return batch

    def mark_sent(self, seqs: Sequence[int]) -> None:
        """Count one more attempt for each row (before the batch goes on the wire)."""
        self._transaction(
            lambda conn: conn.executemany(
                "UPDATE receipts SET attempts = attempts + 1 WHERE seq = ?",
                [(seq,) for seq in seqs],
            )
        )

    def mark_answered(self, answers: Sequence[Answer], now_ms: int) -> None:
        """Record the log's verified answers in one transaction. Only pending rows change: a
        row answered before (by another submitter) keeps its first answer."""
        self._transaction(
            lambda conn: conn.executemany(
                "UPDATE receipts SET state = ?, log_index = ?, bundle = ?, error = ?, "
                "answered_at_ms = ? WHERE seq = ? AND state = 'pending'",
                [(a.state, a.index, a.bundle, a.error, now_ms, a.seq) for a in answers],
            )
        )

    def requeue(self, state: str) -> int:
        """Put every row in ``state`` (``rejected`` or ``conflict``) back to pending, e.g.
        once the edge key is registered; how many. The pending capacity is not checked."""
        if state not in ("rejected", "conflict"):
            raise ValueError(f"only rejected or conflict receipts can be requeued, not {state}")

        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE receipts SET state = 'pending', error = NULL, log_index = NULL "
                "WHERE state = ?",
                (state,),
            )
            return cursor.rowcount

        return self._transaction(work)

    def prune(self, answered_before_ms: int) -> int:
        """Delete verified rows answered before ``answered_before_ms`` (their bundles are in
        the log, and fetchable from it any time); how many."""

        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM receipts WHERE state = 'verified' AND answered_at_ms < ?",
                (answered_before_ms,),
            )
            return cursor.rowcount

        return self._transaction(work)

    # -- reading ------------------------------------------------------------------------------

    def status(self) -> SpoolStatus:
        counters = dict(self._read("SELECT name, value FROM counters"))
        oldest = self._read(
            "SELECT spooled_at_ms FROM receipts WHERE state = 'pending' ORDER BY seq LIMIT 1"
        )
        return SpoolStatus(
            spooled=counters["spooled"],
            submitted=counters["submitted"],
            pending=counters["pending"],
            verified=counters["verified"],
            rejected=counters["rejected"],
            conflict=counters["conflict"],
            pruned=counters["pruned"],
            capacity=self.capacity,
            oldest_pending_spooled_at_ms=oldest[0][0] if oldest else None,
        )

    def receipts(
        self, state: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[SpooledReceipt]:
        """Rows in spool order after ``after_seq`` (optionally only those in ``state``)."""
        sql = (
            "SELECT seq, edge, request_id, entry, spooled_at_ms, state, attempts, log_index, "
            "bundle, error FROM receipts WHERE seq > ?"
        )
        params: list[object] = [after_seq]
        if state is not None:
            sql += " AND state = ?"
            params.append(state)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [SpooledReceipt(*row) for row in self._read(sql, params)]

    def receipt(self, edge: str, request_id: str) -> SpooledReceipt | None:
        """The row of one receipt, if it is spooled."""
        rows = self._read(
            "SELECT seq, edge, request_id, entry, spooled_at_ms, state, attempts, log_index, "
            "bundle, error FROM receipts WHERE edge = ? AND request_id = ?",
            (edge, request_id),
        )
        return SpooledReceipt(*rows[0]) if rows else None

    def get_meta(self, name: str) -> bytes | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return bytes(rows[0][0]) if rows else None

    def set_meta(self, name: str, value: bytes) -> None:
        self._transaction(
            lambda conn: conn.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        )


def _counter(conn: sqlite3.Connection, name: str) -> int:
    (value,) = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return int(value)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the log answered for one spooled row, after the submitter checked it."""

    seq: int
    state: str
    index: int | None = None
    bundle: bytes | None = None
    error: str | None = None


# -- the writer: group commit for the middleware ------------------------------------------------


def now_ms() -> int:
    """The wall clock in Unix milliseconds (the default clock of the writer and submitter)."""
    return time.time_ns() // 1_000_000


class Reservation:
    """Room in the spool for one receipt, held from the start of a response until its
    receipt is spooled (or the response turns out to need none)."""

    __slots__ = ("_writer",)

    def __init__(self, writer: SpoolWriter) -> None:
        self._writer: SpoolWriter | None = writer

    def release(self) -> None:
        """Give the room back; idempotent."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer._release()


@dataclass
class _Item:
    receipt: SignedReceipt | Callable[[], SignedReceipt]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[bool]


_STOP = object()


_Settled = tuple[asyncio.Future[bool], bool | BaseException]


def _settle(settled: list[_Settled]) -> None:
    for future, result in settled:
        if future.done():  # the request was cancelled meanwhile; the receipt is spooled anyway
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class SpoolWriter:
    """Appends receipts from many concurrent requests to the spool in ``directory``.

    A writer thread takes every append waiting (up to ``max_group``) and commits them in
    one transaction: one fsync for the group, not one per request. :meth:`append` returns
    once its receipt's transaction committed. :meth:`reserve` admits a response that must
    not be served unmetered: it fails (SpoolFullError, SpoolError) when the pending
    receipts and the reservations already fill the capacity, or for ``failure_hold_s``
    after a commit failed.
    """

    def __init__(
        self,
        directory: Path,
        *,
        capacity: int = DEFAULT_CAPACITY,
        max_group: int = 1024,
        failure_hold_s: float = 1.0,
        refresh_s: float = 0.25,
        clock_ms: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.capacity = capacity
        self.max_group = max_group
        self.failure_hold_s = failure_hold_s
        self.refresh_s = refresh_s
        self.clock_ms = clock_ms
        self.monotonic = monotonic
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._reserved = 0
        self._failure: tuple[float, SpoolError] | None = None
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._open_error: SpoolError | None = None
        self.groups = 0
        """Transactions committed (for tests and metrics)."""

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool in the writer thread; SpoolError if it cannot be opened."""
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error

    def close(self) -> None:
        """Commit what is queued, then stop the writer thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    # -- admission ----------------------------------------------------------------------------

    def reserve(self) -> Reservation:
        """Room for one receipt; SpoolFullError or SpoolError when there is none now."""
        with self._lock:
            if self._failure is not None:
                failed_at, error = self._failure
                if self.monotonic() - failed_at < self.failure_hold_s:
                    raise SpoolError(f"the spool failed moments ago: {error}")
            if self._pending + self._reserved >= self.capacity:
                raise SpoolFullError(
                    f"the spool is full: {self._pending} pending and {self._reserved} "
                    f"reserved of {self.capacity}"
                )
            self._reserved += 1
        return Reservation(self)

    def _release(self) -> None:
        with self._lock:
            self._reserved -= 1

    @property
    def pending_estimate(self) -> int:
        """Pending receipts as of the last commit or refresh (at most ``refresh_s`` old)."""
        return self._pending

    # -- appending ----------------------------------------------------------------------------

    async def append(
        self,
        receipt: SignedReceipt | Callable[[], SignedReceipt],
        reservation: Reservation | None = None,
    ) -> bool:
        """Spool one receipt durably: True once it is committed, False if its (edge,
        request_id) was spooled before. SpoolError (SpoolFullError) if it could not be.

        ``receipt`` may be a function that signs it: the writer thread calls it, so the
        Ed25519 signature (which releases the GIL) is made off the event loop. What it
        raises (MalformedError) is raised here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        try:
            self._queue.put(_Item(receipt, loop, future))
            return await future
        finally:
            if reservation is not None:
                reservation.release()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            spool = Spool(self.directory, capacity=self.capacity)
        except SpoolError as exc:
            self._open_error = exc
            self._opened.set()
            return
        try:
            self._refresh(spool)
            self._opened.set()
            stopping = False
            while not stopping:
                try:
                    first = self._queue.get(timeout=self.refresh_s)
                except queue.Empty:
                    self._refresh(spool)
                    continue
                if not isinstance(first, _Item):
                    break  # _STOP
                group = [first]
                while len(group) < self.max_group:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(item, _Item):  # _STOP: commit this group, then stop
                        stopping = True
                        break
                    group.append(item)
                self._commit(spool, group)
        finally:
            spool.close()

    def _refresh(self, spool: Spool) -> None:
        try:
            pending = spool.status().pending
        except SpoolError:
            return
        with self._lock:
            self._pending = pending

    def _commit(self, spool: Spool, group: list[_Item]) -> None:
        settled: list[tuple[_Item, bool | BaseException]] = []
        ready: list[tuple[_Item, SignedReceipt]] = []
        for item in group:
            try:
                receipt = (
                    item.receipt if isinstance(item.receipt, SignedReceipt) else item.receipt()
                )
            except MalformedError as exc:
                settled.append((item, exc))
            else:
                ready.append((item, receipt))
        results: Sequence[bool | BaseException] = []
        committed = False
        if ready:
            receipts = [receipt for _, receipt in ready]
            try:
                results = spool.append(receipts, self.clock_ms())
            except SpoolFullError:
                # The group does not fit as a whole: as many of its receipts as fit, one by one.
                results = [self._commit_one(spool, receipt) for receipt in receipts]
            except SpoolError as exc:
                with self._lock:
                    self._failure = (self.monotonic(), exc)
                results = [exc] * len(ready)
            else:
                committed = True
                self.groups += 1
                with self._lock:
                    self._failure = None
                    self._pending = spool.pending_count  # read inside the commit
        settled.extend((item, result) for (item, _), result in zip(ready, results, strict=True))
        if not committed:
            self._refresh(spool)
        # One wake-up per event loop for the whole group, not one per request.
        by_loop: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}
        for item, result in settled:
            by_loop.setdefault(item.loop, []).append((item.future, result))
        for loop, results_of_loop in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, results_of_loop)

    def _commit_one(self, spool: Spool, receipt: SignedReceipt) -> bool | BaseException:
        try:
            (stored,) = spool.append([receipt], self.clock_ms())
        except SpoolError as exc:
            return exc
        return stored
