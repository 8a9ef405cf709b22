"""The sequencer: a sealed pool of submissions becomes entries, hashes and a checkpoint.

Owns :func:`sequence`, the one function that writes to the log, and :class:`Pool`, which
gathers validated submissions and seals them every ``pool_interval_s`` or when full. Imports
tlog and log_server.storage.

Crash ordering. :func:`sequence` does everything inside one :meth:`Storage.sequencing`
transaction: read the tree size, deduplicate, check each receipt's edge key against the
registry *as it stands inside the lock*, append the entries and their hashes, and store the
new signed checkpoint. Nothing is answered before that transaction commits, so

* a crash before the commit loses nothing that was acknowledged (nothing was), and the
  submitter retries;
* a crash after the commit but before the answer leaves the entries logged; the retry finds
  them by (edge, request_id) and gets ``duplicate`` with the original index and a proof.

Duplicates. A receipt is logged once per (edge, request_id). Every other entry is logged
once per signed message (what its signature covers): the transaction that appends it also
indexes the SHA-256 of that message (:meth:`Storage.append_signed`), and an exact re-post of
any logged entry — resent after a lost answer, or copied out of the log by anyone — is
answered ``duplicate`` with the original index before any registry rule is asked, whatever
the registries say now. It appends nothing and changes nothing. That an entry which is *not*
an exact re-post cannot change a state twice is the registries' rules (log_server.catalog).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from log_server.catalog import apply_catalog, catalog_problem
from log_server.storage import EdgeKeyRecord, EntryRecord, Storage, StoredCheckpoint
from tlog.checkpoint import Checkpoint, sign_checkpoint
from tlog.entry import EdgeKey, Entry, Receipt, decode_entry, encode_entry, signed_message
from tlog.errors import MalformedError
from tlog.hashing import leaf_hash
from tlog.merkle import append_hashes, root_hash, stored_hash_count
from tlog.note import SigningKey

__all__ = [
    "Conflict",
    "LogIdentity",
    "Logged",
    "Outcome",
    "OverloadedError",
    "Pool",
    "Rejected",
    "sequence",
]


@dataclass(frozen=True, slots=True)
class LogIdentity:
    """The log's origin and signing key. Checkpoints carry an Ed25519 signature and, from the
    same key, a timestamped cosignature/v1 line: the log's signed time, which note verifiers
    that do not know it ignore."""

    origin: str
    key: SigningKey


@dataclass(frozen=True, slots=True)
class Logged:
    """The entry (``data``, as logged) is at ``index``; ``duplicate`` if an earlier
    submission logged it."""

    index: int
    data: bytes
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Conflict:
    """The (edge, request_id) is logged at ``index`` with different content."""

    index: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """Refused inside the lock, e.g. its edge key was revoked meanwhile."""

    field: str
    reason: str


Outcome = Logged | Conflict | Rejected


class OverloadedError(Exception):
    """The pool holds as much pending work as it may: the caller should retry later."""


def _signed_part(data: bytes) -> dict[str, object]:
    entry = decode_entry(data)
    return dict(entry.signed_fields())


def _message_digest(entry: Entry) -> bytes:
    """The SHA-256 of what the entry's signature covers: the key of the log's duplicates."""
    return hashlib.sha256(signed_message(entry)).digest()


def _logged_digest(data: bytes) -> bytes | None:
    """That of a logged entry (None for receipts, and for entries no longer decoded)."""
    try:
        entry = decode_entry(data)
    except MalformedError:
        return None
    return None if isinstance(entry, Receipt) else _message_digest(entry)


def _key_valid(record: EdgeKeyRecord | None, served_at_ms: int) -> str | None:
    if record is None:
        return "edge key is not registered"
    if served_at_ms < record.valid_from_ms:
        return "edge key was not yet valid when the receipt was served"
    if record.valid_until_ms is not None and served_at_ms >= record.valid_until_ms:
        return "edge key was revoked or expired when the receipt was served"
    return None


def _record(index: int, data: bytes, entry: Entry, logged_at_ms: int) -> EntryRecord:
    if isinstance(entry, Receipt):
        return EntryRecord(
            index=index,
            data=data,
            leaf_hash=leaf_hash(data),
            kind=entry.kind,
            logged_at_ms=logged_at_ms,
            edge=entry.edge,
            request_id=entry.request_id,
            consumer_id=entry.consumer_id,
            job_id=entry.job_id,
            creator_id=entry.creator_id,
            content_id=entry.content_id,
        )
    edge = entry.edge if isinstance(entry, EdgeKey) else None
    return EntryRecord(index, data, leaf_hash(data), entry.kind, logged_at_ms, edge=edge)


def _edge_key_problem(storage: Storage, entry: EdgeKey) -> Rejected | None:
    """Why an edge-key statement cannot apply to the registry as it stands, if it cannot.

    A key is registered once; a rotation must retire a registered key of the same edge; a
    revocation only closes the window of a registered key, as registered.
    """
    current = storage.edge_key(entry.edge, f"{entry.verifier.key_id:08x}")
    if entry.action == "revoke":
        if current is None:
            return Rejected("edge_key.key", "revokes a key that is not registered")
        if current.valid_from_ms != entry.valid_from_ms:
            return Rejected("edge_key.valid_from_ms", "is not the registered key's")
        return None
    if current is not None:
        return Rejected("edge_key.key", "is already registered; rotate or revoke it")
    if entry.replaces is not None and storage.edge_key(entry.edge, entry.replaces) is None:
        return Rejected("edge_key.replaces", "names no registered key of this edge")
    return None


def _apply_edge_key(storage: Storage, entry: EdgeKey, index: int) -> None:
    key_id = f"{entry.verifier.key_id:08x}"
    until = entry.valid_until_ms
    if entry.action == "revoke":
        current = storage.edge_key(entry.edge, key_id)
        if current is not None and current.valid_until_ms is not None and until is not None:
            until = min(until, current.valid_until_ms)  # a revocation never reopens a window
    storage.put_edge_key(
        EdgeKeyRecord(entry.edge, key_id, entry.key, entry.valid_from_ms, until, index)
    )
    if entry.replaces is not None:
        old = storage.edge_key(entry.edge, entry.replaces)
        if old is not None and (
            old.valid_until_ms is None or old.valid_until_ms > entry.valid_from_ms
        ):
            storage.put_edge_key(
                replace(old, valid_until_ms=entry.valid_from_ms, entry_index=index)
            )


def _entry_reader(
    storage: Storage, size: int, records: list[EntryRecord]
) -> Callable[[int], bytes]:
    """Reads a logged entry's bytes, those of the batch being sequenced (``records``, not
    yet written, from index ``size`` on) included."""

    def entry_at(index: int) -> bytes:
        if index >= size:
            return records[index - size].data
        return storage.entries(index, index + 1)[0].data

    return entry_at


def _registry_problem(
    storage: Storage,
    entry: Entry,
    size: int,
    original: int | None,
    entry_at: Callable[[int], bytes],
) -> Logged | Rejected | None:
    """Why an entry that is not a receipt cannot be appended: it is logged already, at
    ``original`` (the index of its signed message, if any), or it cannot apply to the
    registries as they stand; None if it can. The catalog's rules: log_server.catalog."""
    if original is not None:
        return Logged(original, entry_at(original), duplicate=True)
    if isinstance(entry, EdgeKey):
        return _edge_key_problem(storage, entry)
    assert not isinstance(entry, Receipt)  # noqa: S101 -- receipts are judged in sequence()
    found = catalog_problem(storage, entry, size)
    return None if found is None else Rejected(found.field, found.reason)


def sequence(
    storage: Storage, log: LogIdentity, pending: Sequence[Entry], now_ms: int
) -> tuple[list[Outcome], StoredCheckpoint]:
    """Append ``pending`` (validated entries, without ``logged_at_ms``) and sign a checkpoint.

    Returns one outcome per pending entry, in order, and the checkpoint that covers them.
    With nothing pending it re-signs the current tree with a fresh timestamp.
    """
    outcomes: list[Outcome] = []
    with storage.sequencing():
        size = storage.tree_size()
        keys = [(e.edge, e.request_id) for e in pending if isinstance(e, Receipt)]
        logged = storage.receipts(keys) if keys else {}
        digests, signed = _signed_messages(storage, pending)
        new_signed: list[tuple[bytes, int]] = []
        registry: dict[tuple[str, str], EdgeKeyRecord | None] = {}
        records: list[EntryRecord] = []
        entry_at = _entry_reader(storage, size, records)
        for entry, digest in zip(pending, digests, strict=True):
            if isinstance(entry, Receipt):
                key = (entry.edge, entry.request_id)
                prior = logged.get(key)
                if prior is not None:
                    if _signed_part(prior.data) == entry.signed_fields():
                        outcomes.append(Logged(prior.index, prior.data, duplicate=True))
                    else:
                        outcomes.append(Conflict(prior.index))
                    continue
                key_ref = (entry.edge, entry.key_id)
                if key_ref not in registry:
                    registry[key_ref] = storage.edge_key(*key_ref)
                problem = _key_valid(registry[key_ref], entry.served_at_ms)
                if problem is not None:
                    outcomes.append(Rejected("receipt.key_id", problem))
                    continue
            elif (
                refused := _registry_problem(
                    storage, entry, size, signed.get(digest or b""), entry_at
                )
            ) is not None:
                outcomes.append(refused)
                continue
            data = encode_entry(entry, logged_at_ms=now_ms)
            record = _record(size + len(records), data, entry, now_ms)
            records.append(record)
            if isinstance(entry, Receipt):
                logged[(entry.edge, entry.request_id)] = record
            elif isinstance(entry, EdgeKey):
                # Receipts later in this batch are judged by the registry as this entry leaves it.
                _apply_edge_key(storage, entry, record.index)
                registry.clear()
            else:
                apply_catalog(storage, entry, record.index, now_ms)
            if digest is not None:
                signed[digest] = record.index  # a second copy in this batch is a duplicate
                new_signed.append((digest, record.index))
            outcomes.append(Logged(record.index, record.data))
        if records:
            hashes = append_hashes(size, [r.leaf_hash for r in records], storage)
            storage.append_hashes(stored_hash_count(size), hashes)
            storage.append_entries(records)
            storage.append_signed(new_signed)
        checkpoint = _sign(storage, log, size + len(records), now_ms)
    return outcomes, checkpoint


def _signed_messages(
    storage: Storage, pending: Sequence[Entry]
) -> tuple[list[bytes | None], dict[bytes, int]]:
    """The SHA-256 of each pending entry's signed message (None for receipts), and the
    indexes of those the log holds already."""
    digests = [None if isinstance(e, Receipt) else _message_digest(e) for e in pending]
    wanted = [d for d in digests if d is not None]
    if not wanted:
        return digests, {}
    storage.index_signed_messages(_logged_digest)
    return digests, storage.signed_indexes(wanted)


def _sign(storage: Storage, log: LogIdentity, size: int, now_ms: int) -> StoredCheckpoint:
    """Sign the tree of ``size`` entries at ``now_ms`` and store the checkpoint."""
    root = root_hash(size, storage)
    note = sign_checkpoint(
        Checkpoint(log.origin, size, root), [log.key.signer(), log.key.cosigner(now_ms // 1000)]
    )
    checkpoint = StoredCheckpoint(size, root, note, now_ms)
    storage.append_checkpoint(checkpoint)
    return checkpoint


@dataclass
class _Waiting:
    entries: list[Entry]
    future: asyncio.Future[tuple[list[Outcome], StoredCheckpoint]]


@dataclass
class Pool:
    """Validated submissions waiting for the next seal.

    :meth:`submit` returns only after the seal that logged its entries has committed.
    :meth:`seal` is called every ``pool_interval_s`` by the scheduler, and at once when the
    pool holds ``max_entries``. More than ``max_pending`` entries waiting raises OverloadedError.

    :func:`sequence` runs on the pool's own thread, one seal at a time. It is the one step
    every receipt waits for in turn, so it must not queue behind request work in a shared
    thread pool; :meth:`close` stops the thread.
    """

    storage: Storage
    log: LogIdentity
    clock_ms: Callable[[], int]
    max_entries: int = 4096
    max_pending: int = 65536
    on_sealed: Callable[[float, StoredCheckpoint], None] | None = None
    """Called after each seal with its duration in seconds and the new checkpoint."""
    _waiting: list[_Waiting] = field(default_factory=list)
    _count: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _seals: set[asyncio.Task[StoredCheckpoint | None]] = field(default_factory=set)
    _thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="meterlog-sequencer")
    )

    @property
    def pending(self) -> int:
        return self._count

    async def submit(self, entries: list[Entry]) -> tuple[list[Outcome], StoredCheckpoint]:
        if self._count + len(entries) > self.max_pending:
            raise OverloadedError(f"{self._count} entries are already waiting to be logged")
        future: asyncio.Future[tuple[list[Outcome], StoredCheckpoint]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.append(_Waiting(entries, future))
        self._count += len(entries)
        if self._count >= self.max_entries:
            task = asyncio.ensure_future(self.seal())
            self._seals.add(task)
            task.add_done_callback(self._seal_done)
        return await future

    def _seal_done(self, task: asyncio.Task[StoredCheckpoint | None]) -> None:
        self._seals.discard(task)
        if not task.cancelled():
            task.exception()  # its waiters got the error; not "exception never retrieved" too

    async def resign(self) -> StoredCheckpoint | None:
        """Sign the current tree again with a fresh time, unless a seal will sign anyway."""
        async with self._lock:
            if self._waiting:
                return None
            _, checkpoint = await self._sequence([])
            return checkpoint

    async def _sequence(self, pending: list[Entry]) -> tuple[list[Outcome], StoredCheckpoint]:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, sequence, self.storage, self.log, pending, self.clock_ms()
        )

    def close(self) -> None:
        """Stop the sequencer thread (after any seal in flight); call when nothing seals."""
        self._thread.shutdown(wait=True)

    async def seal(self) -> StoredCheckpoint | None:
        """Log everything waiting, in one transaction; answer each waiter after the commit."""
        async with self._lock:
            if not self._waiting:
                return None
            batch, self._waiting, self._count = self._waiting, [], 0
            pending = [e for w in batch for e in w.entries]
            started = time.perf_counter()
            try:
                outcomes, checkpoint = await self._sequence(pending)
            except BaseException as exc:
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(exc)
                raise
            seconds = time.perf_counter() - started
            at = 0
            for waiting in batch:
                n = len(waiting.entries)
                if not waiting.future.done():
                    waiting.future.set_result((outcomes[at : at + n], checkpoint))
                at += n
            # Only after every waiter has its answer: a failing callback must not strand them.
            if self.on_sealed is not None:
                self.on_sealed(seconds, checkpoint)
            return checkpoint
