"""Durable storage of the log: entries, tree hashes, checkpoints and the edge-key registry.

Owns the database schema and every query; the only module that imports peewee. SQLite (WAL,
``synchronous=FULL``) is the embedded default; PostgreSQL is the same code with a
``postgresql://`` URL. Imports tlog for types and the storage layout only.

Durability contract (what the sequencer relies on):

* Everything one sequencing step writes — entries, hashes, the edge-key registry rows, the
  signed-message index and the new checkpoint — is written inside
  :meth:`Storage.sequencing`, one transaction. Either
  all of it is durable when the ``with`` block exits normally, or none of it is visible.
* :meth:`Storage.sequencing` holds the sequencer lock for the whole transaction (SQLite:
  ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock), so two processes
  sharing one database never sequence at once: no gap, no duplicate index, no second root
  for a size.
* Hashes are only ever appended at ``stored_hash_count(tree_size)`` onwards; nothing is
  rewritten. The tree size is the size of the latest stored checkpoint, which is written in
  the same transaction as the entries it covers.

Appending stays as cheap at 10**6 entries as at 10**4. The read API finds entries by leaf
hash, consumer, job, creator and content; an index on such a column takes each new entry at a
place set by its value, so a seal of thousands of entries dirties thousands of index pages
all over an index that grows with the log, and the seal's commit writes them all. So these
indexes lead with the entry's *partition* (``part``: its index // 16,384): every new entry
goes to the newest partition's corner of each index, a few hundred pages that stay cached,
whatever the size of the log. A lookup asks each partition in turn (about 60 at 10**6
entries; each an index seek). The unique (request_id, edge) index that deduplicates
receipts must span the whole log, so it stays global.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import peewee
from playhouse.db_url import connect

from tlog.errors import MalformedError

__all__ = [
    "BillingTables",
    "CosignatureRecord",
    "CreatorRecord",
    "DisputeRecord",
    "EdgeKeyRecord",
    "EntryRecord",
    "ManifestRecord",
    "RevenueRecord",
    "StatementRecord",
    "Storage",
    "StoredAnchor",
    "StoredCheckpoint",
]

_SEQUENCER_LOCK_ID = 0x6D657465726C6F67  # "meterlog"
_CHUNK = 500
_GROWTH_CHUNK = 200
"""Seeks per statement: SQLite allows 500 terms in a compound SELECT."""
PARTITION_BITS = 14
"""An entry's partition is its index >> PARTITION_BITS: runs of 16,384 entries."""
_FINDABLE = ("consumer_id", "job_id", "creator_id", "content_id")
_ENTRY_COLUMNS = (
    "idx",
    "part",
    "data",
    "leaf_hash",
    "kind",
    "logged_at_ms",
    "edge",
    "request_id",
    "consumer_id",
    "job_id",
    "creator_id",
    "content_id",
)
"""The entries table's columns, in the order :meth:`Storage.append_entries` writes them."""


@dataclass(frozen=True, slots=True)
class _Schema:
    """The tables, as peewee models bound to one database (so two Storages never mix)."""

    hashes: type[peewee.Model]
    entries: type[peewee.Model]
    checkpoints: type[peewee.Model]
    edge_keys: type[peewee.Model]
    cosignatures: type[peewee.Model]
    signed: type[peewee.Model]

    @property
    def all(self) -> list[type[peewee.Model]]:
        return [
            self.hashes, self.entries, self.checkpoints, self.edge_keys, self.cosignatures,
            self.signed,
        ]  # fmt: skip


def _schema(db: peewee.Database) -> _Schema:
    class Base(peewee.Model):
        class Meta:
            database = db

    class Hash(Base):
        idx = peewee.BigIntegerField(primary_key=True)
        value = peewee.BlobField()

        class Meta:
            table_name = "hashes"

    class Entry(Base):
        idx = peewee.BigIntegerField(primary_key=True)
        part = peewee.BigIntegerField()
        data = peewee.BlobField()
        leaf_hash = peewee.BlobField()
        kind = peewee.TextField()
        logged_at_ms = peewee.BigIntegerField()
        edge = peewee.TextField(null=True)
        request_id = peewee.TextField(null=True)
        consumer_id = peewee.TextField(null=True)
        job_id = peewee.TextField(null=True)
        creator_id = peewee.TextField(null=True)
        content_id = peewee.TextField(null=True)

        class Meta:
            table_name = "entries"
            indexes = (
                # A receipt's idempotency key; NULLs (entries that are not receipts) never
                # collide.
                (("request_id", "edge"), True),
                # Partitioned (see the module docstring), in index order within each value.
                (("part", "leaf_hash"), False),
                *((("part", column, "idx"), False) for column in _FINDABLE),
            )

    class Checkpoint(Base):
        id = peewee.AutoField()
        tree_size = peewee.BigIntegerField(index=True)
        root_hash = peewee.BlobField()
        note = peewee.BlobField()
        signed_at_ms = peewee.BigIntegerField()

        class Meta:
            table_name = "checkpoints"

    class EdgeKey(Base):
        edge = peewee.TextField()
        key_id = peewee.TextField()
        vkey = peewee.TextField()
        valid_from_ms = peewee.BigIntegerField()
        valid_until_ms = peewee.BigIntegerField(null=True)
        entry_index = peewee.BigIntegerField()

        class Meta:
            table_name = "edge_keys"
            primary_key = peewee.CompositeKey("edge", "key_id")

    class Cosignature(Base):
        """A witness's cosignature line on the checkpoint text of (tree_size, root_hash)."""

        tree_size = peewee.BigIntegerField()
        witness = peewee.TextField()  # "<name>+<8 hex key ID>"
        root_hash = peewee.BlobField()
        line = peewee.TextField()
        timestamp_s = peewee.BigIntegerField()

        class Meta:
            table_name = "cosignatures"
            primary_key = peewee.CompositeKey("tree_size", "witness")

    class SignedMessage(Base):
        """Every logged entry but receipts, by the SHA-256 of its signed message (what its
        signature covers): how the sequencer finds an exact re-post of it, whatever the
        registries say now. Receipts are found by (request_id, edge) instead."""

        digest = peewee.BlobField(primary_key=True)
        idx = peewee.BigIntegerField()

        class Meta:
            table_name = "signed_messages"

    return _Schema(Hash, Entry, Checkpoint, EdgeKey, Cosignature, SignedMessage)


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """One entry as stored, with the columns the read API queries by."""

    index: int
    data: bytes
    leaf_hash: bytes
    kind: str
    logged_at_ms: int
    edge: str | None = None
    request_id: str | None = None
    consumer_id: str | None = None
    job_id: str | None = None
    creator_id: str | None = None
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    tree_size: int
    root_hash: bytes
    note: bytes
    signed_at_ms: int


@dataclass(frozen=True, slots=True)
class EdgeKeyRecord:
    """An edge key's current validity window, as the latest edge_key entry states it."""

    edge: str
    key_id: str
    vkey: str
    valid_from_ms: int
    valid_until_ms: int | None
    entry_index: int


@dataclass(frozen=True, slots=True)
class CosignatureRecord:
    """A witness's cosignature (its note line) on the checkpoint of (tree_size, root_hash)."""

    tree_size: int
    witness: str
    root_hash: bytes
    line: str
    timestamp_s: int


def _entry(row: Any) -> EntryRecord:
    return EntryRecord(
        index=row.idx,
        data=bytes(row.data),
        leaf_hash=bytes(row.leaf_hash),
        kind=row.kind,
        logged_at_ms=row.logged_at_ms,
        edge=row.edge,
        request_id=row.request_id,
        consumer_id=row.consumer_id,
        job_id=row.job_id,
        creator_id=row.creator_id,
        content_id=row.content_id,
    )


def _checkpoint(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(row.tree_size, bytes(row.root_hash), bytes(row.note), row.signed_at_ms)


class Storage:
    """The log's database. Every method is synchronous; call it from a worker thread."""

    def __init__(self, db: peewee.Database) -> None:
        # peewee connects lazily, one connection per thread, and keeps it open.
        self.db = db
        self._t = _schema(db)
        db.create_tables(self._t.all, safe=True)
        self.anchors = AnchorTables(db)
        """The anchoring job's records (see :class:`AnchorTables`)."""
        self.billing = BillingTables(db)
        """The catalog and billing registries (see :class:`BillingTables`)."""
        self._signed_indexed = False
        """Whether the signed-message index is known to be filled (see
        :meth:`index_signed_messages`)."""

    @classmethod
    def open(cls, url: str) -> Storage:
        """Open (and create) the database at ``url``: ``sqlite:///path`` or ``postgresql://...``."""
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            db: peewee.Database = peewee.SqliteDatabase(
                str(path),
                pragmas={
                    "journal_mode": "wal",
                    "synchronous": "full",  # a commit is on disk before anyone hears "logged"
                    "busy_timeout": 10_000,
                    "foreign_keys": 1,
                },
                check_same_thread=False,
            )
        elif url.startswith(("postgresql://", "postgres://")):
            db = connect(url)
        else:
            raise MalformedError("db", f"{url!r} is neither sqlite:///PATH nor postgresql://...")
        return cls(db)

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def sequencing(self) -> Iterator[None]:
        """One transaction holding the sequencer lock; commits on normal exit, else rolls back."""
        if isinstance(self.db, peewee.SqliteDatabase):
            with self.db.atomic("IMMEDIATE"):
                yield
        else:
            with self.db.atomic():
                self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_SEQUENCER_LOCK_ID,))
                yield

    def append_hashes(self, start: int, hashes: Sequence[bytes]) -> None:
        rows = [(start + i, h) for i, h in enumerate(hashes)]
        self._insert(self._t.hashes, ("idx", "value"), rows)

    def append_entries(self, records: Sequence[EntryRecord]) -> None:
        rows = [
            (
                r.index,
                r.index >> PARTITION_BITS,
                r.data,
                r.leaf_hash,
                r.kind,
                r.logged_at_ms,
                r.edge,
                r.request_id,
                r.consumer_id,
                r.job_id,
                r.creator_id,
                r.content_id,
            )
            for r in records
        ]
        self._insert(self._t.entries, _ENTRY_COLUMNS, rows)

    def _insert(self, model: type[peewee.Model], names: Sequence[str], rows: Sequence[Any]) -> None:
        """INSERT ``rows`` (values of the fields ``names``), ``_CHUNK`` rows per statement.

        What ``insert_many`` does, with the SQL written here: for thousands of rows peewee's
        query builder costs more than the database. The values are ints, str, bytes and None,
        which both drivers take as they are (peewee's ``db_value`` would only wrap bytes);
        errors are peewee's, through ``execute_sql``.
        """
        fields = [model._meta.fields[name] for name in names]
        # Names from the schema above, never from input; every value is a parameter.
        head = 'INSERT INTO "{}" ({}) VALUES '.format(  # noqa: S608
            model._meta.table_name, ", ".join(f'"{f.column_name}"' for f in fields)
        )
        row = "(" + ", ".join([self.db.param] * len(fields)) + ")"
        for chunk in _chunks(rows):
            params = [value for r in chunk for value in r]
            self.db.execute_sql(head + ", ".join([row] * len(chunk)), params)

    def put_edge_key(self, record: EdgeKeyRecord) -> None:
        self._t.edge_keys.insert(
            edge=record.edge,
            key_id=record.key_id,
            vkey=record.vkey,
            valid_from_ms=record.valid_from_ms,
            valid_until_ms=record.valid_until_ms,
            entry_index=record.entry_index,
        ).on_conflict(
            conflict_target=[self._t.edge_keys.edge, self._t.edge_keys.key_id],
            update={
                self._t.edge_keys.vkey: record.vkey,
                self._t.edge_keys.valid_from_ms: record.valid_from_ms,
                self._t.edge_keys.valid_until_ms: record.valid_until_ms,
                self._t.edge_keys.entry_index: record.entry_index,
            },
        ).execute()

    def append_signed(self, rows: Sequence[tuple[bytes, int]]) -> None:
        """Index logged entries by the SHA-256 of their signed message: (digest, index)."""
        self._insert(self._t.signed, ("digest", "idx"), rows)

    def index_signed_messages(self, digest_of: Callable[[bytes], bytes | None]) -> None:
        """Fill the signed-message index of a database written before it existed; call it
        inside :meth:`sequencing`, before :meth:`signed_indexes`.

        Such a database has entries and registries but an empty index. Every entry a
        registry row points at (``entry_index``, ``withdrawn_index``, ``opened_index``, ...)
        is indexed by ``digest_of(its bytes)`` (None: leave it out), the lowest index first
        for a digest logged twice. That is every manifest, statement, dispute and revenue
        entry, and the registration in force of each creator and edge key (those it
        replaced were operator-signed, through admin routes only). Once the index holds a
        row it is never empty again, so the check costs one query per Storage.
        """
        if self._signed_indexed:
            return
        if self._t.signed.select().limit(1).exists():
            self._signed_indexed = True
            return
        keys = self._t.edge_keys
        indexes = {row.entry_index for row in keys.select(keys.entry_index)}
        indexes.update(self.billing.entry_indexes())
        found: dict[bytes, int] = {}
        for record in self.entries_at(sorted(indexes)):
            digest = digest_of(record.data)
            if digest is not None:
                found.setdefault(digest, record.index)
        self.append_signed(list(found.items()))

    def append_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        self._t.checkpoints.insert(
            tree_size=checkpoint.tree_size,
            root_hash=checkpoint.root_hash,
            note=checkpoint.note,
            signed_at_ms=checkpoint.signed_at_ms,
        ).execute()

    # -- reading -------------------------------------------------------------------------

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        """Exactly the hashes at ``indexes``, in order (tlog's HashReader); raises if missing."""
        found: dict[int, bytes] = {}
        # SQL written here, not by peewee: building an IN list of hundreds of values (a batch
        # of proofs) costs peewee more than the query. Parameters only; names are the schema's.
        table = self._t.hashes._meta.table_name
        for chunk in _chunks(sorted(set(indexes))):
            marks = ", ".join([self.db.param] * len(chunk))
            sql = f'SELECT "idx", "value" FROM "{table}" WHERE "idx" IN ({marks})'  # noqa: S608
            for idx, value in self.db.execute_sql(sql, list(chunk)).fetchall():
                found[idx] = bytes(value)
        missing = [i for i in indexes if i not in found]
        if missing:
            raise LookupError(f"stored hashes {missing[:5]} are not in the database")
        return [found[i] for i in indexes]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = self._t.checkpoints.select().order_by(self._t.checkpoints.id.desc()).first()
        return None if row is None else _checkpoint(row)

    def tree_size(self) -> int:
        latest = self.latest_checkpoint()
        return 0 if latest is None else latest.tree_size

    def checkpoints(
        self, after_id: int = 0, limit: int = 100
    ) -> list[tuple[int, StoredCheckpoint]]:
        rows = (
            self._t.checkpoints.select()
            .where(self._t.checkpoints.id > after_id)
            .order_by(self._t.checkpoints.id)
            .limit(limit)
        )
        return [(row.id, _checkpoint(row)) for row in rows]

    def checkpoints_newest_first(
        self, before_id: int | None = None, limit: int = 100
    ) -> list[tuple[int, StoredCheckpoint]]:
        """The latest checkpoints first (ids below ``before_id``, when given): a page of
        recent history without reading the older rows, on the primary key's index."""
        table = self._t.checkpoints
        query = table.select()
        if before_id is not None:
            query = query.where(table.id < before_id)
        rows = query.order_by(table.id.desc()).limit(limit)
        return [(row.id, _checkpoint(row)) for row in rows]

    def checkpoint_growth(self, points: int) -> list[tuple[int, int, int]]:
        """About ``points`` (id, tree_size, signed_at_ms) samples spread evenly over the whole
        checkpoint history, oldest first, the first and the latest included.

        One indexed seek per sample (the first id at or above each step), never a scan, and
        no note read: the log's growth at a glance costs the same on a year of history. The
        seeks go in one statement (a UNION ALL of them, in chunks): one query per sample
        through peewee cost the portal's Log page tens of milliseconds.
        """
        table = self._t.checkpoints
        low, high = table.select(peewee.fn.MIN(table.id), peewee.fn.MAX(table.id)).scalar(
            as_tuple=True
        )
        if low is None:
            return []
        steps = max(1, points - 1)
        targets = sorted({low + (high - low) * i // steps for i in range(steps + 1)})
        name = table._meta.table_name
        seek = (
            f'SELECT * FROM (SELECT "id", "tree_size", "signed_at_ms" FROM "{name}" '  # noqa: S608
            f'WHERE "id" >= {self.db.param} ORDER BY "id" LIMIT 1) AS s'
        )
        samples: dict[int, tuple[int, int, int]] = {}
        for chunk in _chunks(targets, _GROWTH_CHUNK):
            sql = " UNION ALL ".join([seek] * len(chunk))
            for row_id, size, signed_at_ms in self.db.execute_sql(sql, list(chunk)).fetchall():
                samples[row_id] = (row_id, size, signed_at_ms)
        return [samples[i] for i in sorted(samples)]

    def checkpoint_at(self, tree_size: int) -> StoredCheckpoint | None:
        """The latest checkpoint signed at exactly ``tree_size``."""
        row = (
            self._t.checkpoints.select()
            .where(self._t.checkpoints.tree_size == tree_size)
            .order_by(self._t.checkpoints.id.desc())
            .first()
        )
        return None if row is None else _checkpoint(row)

    def entries(self, start: int, end: int) -> list[EntryRecord]:
        rows = (
            self._t.entries.select()
            .where((self._t.entries.idx >= start) & (self._t.entries.idx < end))
            .order_by(self._t.entries.idx)
        )
        return [_entry(row) for row in rows]

    def entry_data(self, start: int, end: int) -> list[bytes]:
        """The bytes of the entries ``[start, end)``, in order: what an entry bundle holds.

        SQL written here, as in read_hashes: a reader of the whole log (a monitor, a billing
        run) asks this for every bundle, and building peewee models of every column costs the
        server several times the query."""
        table = self._t.entries._meta.table_name
        param = self.db.param
        sql = (
            f'SELECT "data" FROM "{table}" WHERE "idx" >= {param} AND "idx" < {param} '  # noqa: S608
            'ORDER BY "idx"'
        )
        return [bytes(row[0]) for row in self.db.execute_sql(sql, (start, end)).fetchall()]

    def signed_indexes(self, digests: Sequence[bytes]) -> dict[bytes, int]:
        """The indexes of the logged entries whose signed messages have these SHA-256s."""
        found: dict[bytes, int] = {}
        table = self._t.signed._meta.table_name
        for chunk in _chunks(sorted(set(digests))):
            marks = ", ".join([self.db.param] * len(chunk))
            sql = f'SELECT "digest", "idx" FROM "{table}" WHERE "digest" IN ({marks})'  # noqa: S608
            for digest, idx in self.db.execute_sql(sql, list(chunk)).fetchall():
                found[bytes(digest)] = idx
        return found

    def receipts(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], EntryRecord]:
        """The logged receipts with these (edge, request_id) keys."""
        wanted = set(keys)
        found: dict[tuple[str, str], EntryRecord] = {}
        # SQL written here, as in read_hashes: the sequencer asks this for every receipt.
        table = self._t.entries._meta.table_name
        columns = ", ".join(f'"{c}"' for c in _ENTRY_COLUMNS)
        for chunk in _chunks(sorted({request_id for _, request_id in wanted})):
            marks = ", ".join([self.db.param] * len(chunk))
            sql = f'SELECT {columns} FROM "{table}" WHERE "request_id" IN ({marks})'  # noqa: S608
            for row in self.db.execute_sql(sql, list(chunk)).fetchall():
                record = EntryRecord(row[0], bytes(row[2]), bytes(row[3]), *row[4:])
                if (record.edge, record.request_id) in wanted:
                    found[(record.edge, record.request_id)] = record
        return found

    def _partitions(self, first_index: int) -> range:
        """The partitions holding entries from ``first_index`` on, oldest first."""
        last = self._t.entries.select(peewee.fn.MAX(self._t.entries.idx)).scalar()
        if last is None or first_index > last:
            return range(0)
        return range(max(first_index, 0) >> PARTITION_BITS, (last >> PARTITION_BITS) + 1)

    def index_of_leaf(self, leaf_hash: bytes) -> int | None:
        """The lowest index whose entry has this leaf hash, if any."""
        entries = self._t.entries
        for chunk in _chunks(self._partitions(0)):
            row = (
                entries.select(entries.idx)
                .where(entries.part.in_(list(chunk)) & (entries.leaf_hash == leaf_hash))
                .order_by(entries.idx)
                .first()
            )
            if row is not None:
                return int(row.idx)
        return None

    def find_entries(
        self, column: str, value: str, after: int = -1, limit: int = 100
    ) -> list[EntryRecord]:
        """Entries whose ``column`` (consumer_id, job_id, creator_id, content_id) equals
        ``value``, in index order after ``after``: partition by partition, oldest first,
        until ``limit`` are found."""
        if column not in _FINDABLE:
            raise KeyError(column)
        entries = self._t.entries
        field = getattr(entries, column)
        found: list[EntryRecord] = []
        for part in self._partitions(after + 1):
            if len(found) >= limit:
                break
            rows = (
                entries.select()
                .where((entries.part == part) & (field == value) & (entries.idx > after))
                .order_by(entries.idx)
                .limit(limit - len(found))
            )
            found.extend(_entry(row) for row in rows)
        return found

    def count_entries(self, column: str, value: str, since: int = 0) -> int:
        """How many entries from index ``since`` on have ``column`` (as in :meth:`find_entries`)
        equal to ``value``: the partitions from ``since``'s on, a few hundred per query, each
        counted from its corner of the partitioned index alone (it holds ``column`` and
        ``idx``), so the count never reads an entry."""
        if column not in _FINDABLE:
            raise KeyError(column)
        table, mark = self._t.entries._meta.table_name, self.db.param
        total = 0
        for chunk in _chunks(self._partitions(since)):
            marks = ", ".join([mark] * len(chunk))
            sql = (
                f'SELECT COUNT(*) FROM "{table}" WHERE "part" IN ({marks}) '  # noqa: S608
                f'AND "{column}" = {mark} AND "idx" >= {mark}'
            )
            row = self.db.execute_sql(sql, [*chunk, value, since]).fetchone()
            total += int(row[0])
        return total

    def entries_at(self, indexes: Sequence[int]) -> list[EntryRecord]:
        """The entries at ``indexes`` that exist, in index order (primary-key lookups)."""
        table = self._t.entries._meta.table_name
        columns = ", ".join(f'"{c}"' for c in _ENTRY_COLUMNS)
        found: list[EntryRecord] = []
        for chunk in _chunks(sorted(set(indexes))):
            marks = ", ".join([self.db.param] * len(chunk))
            sql = f'SELECT {columns} FROM "{table}" WHERE "idx" IN ({marks}) ORDER BY "idx"'  # noqa: S608
            for row in self.db.execute_sql(sql, list(chunk)).fetchall():
                found.append(EntryRecord(row[0], bytes(row[2]), bytes(row[3]), *row[4:]))
        return found

    def find_by_request_id(
        self, request_id: str, after: int = -1, limit: int = 100
    ) -> list[EntryRecord]:
        """Receipts with this request id from any edge, in index order after ``after``: one
        seek on the global unique (request_id, edge) index (request ids are unique per edge,
        so there are as many rows as edges that used the id, at most)."""
        entries = self._t.entries
        rows = (
            entries.select()
            .where((entries.request_id == request_id) & (entries.idx > after))
            .order_by(entries.idx)
            .limit(limit)
        )
        return [_entry(row) for row in rows]

    def edge_keys(self) -> list[EdgeKeyRecord]:
        return [
            _edge_key(row)
            for row in self._t.edge_keys.select().order_by(self._t.edge_keys.entry_index)
        ]

    def edge_key(self, edge: str, key_id: str) -> EdgeKeyRecord | None:
        # SQL written here, as in read_hashes: every submitted batch asks for its keys.
        table, mark = self._t.edge_keys._meta.table_name, self.db.param
        columns = '"edge", "key_id", "vkey", "valid_from_ms", "valid_until_ms", "entry_index"'
        sql = f'SELECT {columns} FROM "{table}" WHERE "edge" = {mark} AND "key_id" = {mark}'  # noqa: S608
        row = self.db.execute_sql(sql, (edge, key_id)).fetchone()
        return None if row is None else EdgeKeyRecord(*row)

    # -- witness cosignatures (log_server.witnesses) ------------------------------------------

    def put_cosignature(self, record: CosignatureRecord) -> None:
        """Keep a witness's cosignature; a newer one for the same size replaces it."""
        t = self._t.cosignatures
        t.insert(
            tree_size=record.tree_size,
            witness=record.witness,
            root_hash=record.root_hash,
            line=record.line,
            timestamp_s=record.timestamp_s,
        ).on_conflict(
            conflict_target=[t.tree_size, t.witness],
            update={t.root_hash: record.root_hash, t.line: record.line,
                    t.timestamp_s: record.timestamp_s},
        ).execute()  # fmt: skip

    def cosignatures(self, tree_size: int) -> list[CosignatureRecord]:
        t = self._t.cosignatures
        rows = t.select().where(t.tree_size == tree_size).order_by(t.witness)
        return [_cosignature(row) for row in rows]

    def recent_cosignatures(self, limit: int = 1000) -> list[CosignatureRecord]:
        """The latest ``limit`` cosignatures, largest tree size first."""
        t = self._t.cosignatures
        rows = t.select().order_by(t.tree_size.desc(), t.witness).limit(limit)
        return [_cosignature(row) for row in rows]

    def cosigned_size(self, witness: str) -> int | None:
        """The largest tree size ``witness`` has cosigned for this log, if any."""
        t = self._t.cosignatures
        row = t.select(peewee.fn.MAX(t.tree_size).alias("size")).where(t.witness == witness)
        size = row.scalar()
        return None if size is None else int(size)


def _cosignature(row: Any) -> CosignatureRecord:
    return CosignatureRecord(
        row.tree_size, row.witness, bytes(row.root_hash), row.line, row.timestamp_s
    )


def _edge_key(row: Any) -> EdgeKeyRecord:
    return EdgeKeyRecord(
        row.edge, row.key_id, row.vkey, row.valid_from_ms, row.valid_until_ms, row.entry_index
    )


_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- anchors ------------------------------------------------------------------------------

ANCHOR_OPEN = ("pending", "mined")
"""Anchor statuses the anchoring job still follows; the others are ``final``, ``dropped``
(its nonce went to another transaction) and ``failed`` (the node refused it, or it was mined
but the call reverted)."""


@dataclass(frozen=True, slots=True)
class StoredAnchor:
    """One anchor the log sent: a checkpoint's (tree_size, root_hash) in a transaction on
    ``chain_id`` to ``contract`` from ``sender``, and how far it got.

    ``tx_hash``/``raw_tx``/``fees_json`` are the current attempt; ``tx_hashes`` every attempt
    (fee replacements share the nonce, and any one of them may be the one mined).
    """

    tree_size: int
    root_hash: bytes
    status: str
    chain_id: int
    contract: str
    sender: str
    nonce: int
    tx_hash: bytes
    tx_hashes: tuple[bytes, ...]
    raw_tx: bytes
    fees_json: str
    gas_limit: int
    sent_at_ms: int
    attempt_at_ms: int
    block_number: int | None = None
    block_hash: bytes | None = None
    log_index: int | None = None
    gas_used: int | None = None
    final_at_ms: int | None = None
    reorgs: int = 0
    """How many times the block that held it left the canonical chain."""
    problem: str | None = None
    """The last thing that went wrong with it (a replacement, a reorg, a drop), if any."""
    id: int = 0
    """Set by :meth:`AnchorTables.add`."""


_ANCHOR_FIELDS = tuple(f for f in StoredAnchor.__dataclass_fields__ if f != "id")


class AnchorTables:
    """The anchors table, and the lease that lets one server process at a time anchor.

    Writes are single statements or short transactions of their own, never inside the
    sequencer's: anchoring never holds up sequencing.
    """

    def __init__(self, db: peewee.Database) -> None:
        class Anchor(peewee.Model):
            id = peewee.AutoField()
            tree_size = peewee.BigIntegerField()
            root_hash = peewee.BlobField()
            status = peewee.TextField(index=True)
            chain_id = peewee.BigIntegerField()
            contract = peewee.TextField()
            sender = peewee.TextField()
            nonce = peewee.BigIntegerField()
            tx_hash = peewee.BlobField()
            tx_hashes = peewee.BlobField()
            raw_tx = peewee.BlobField()
            fees_json = peewee.TextField()
            gas_limit = peewee.BigIntegerField()
            sent_at_ms = peewee.BigIntegerField()
            attempt_at_ms = peewee.BigIntegerField()
            block_number = peewee.BigIntegerField(null=True)
            block_hash = peewee.BlobField(null=True)
            log_index = peewee.BigIntegerField(null=True)
            gas_used = peewee.BigIntegerField(null=True)
            final_at_ms = peewee.BigIntegerField(null=True)
            reorgs = peewee.IntegerField(default=0)
            problem = peewee.TextField(null=True)

            class Meta:
                database = db
                table_name = "anchors"

        class Lease(peewee.Model):
            name = peewee.TextField(primary_key=True)
            holder = peewee.TextField()
            expires_at_ms = peewee.BigIntegerField()

            class Meta:
                database = db
                table_name = "leases"

        self._db = db
        self._anchor = Anchor
        self._lease = Lease
        db.create_tables([Anchor, Lease], safe=True)

    def _row(self, anchor: StoredAnchor) -> dict[str, Any]:
        row = {name: getattr(anchor, name) for name in _ANCHOR_FIELDS}
        row["tx_hashes"] = b"".join(anchor.tx_hashes)
        return row

    def _anchor_of(self, row: Any) -> StoredAnchor:
        values = {name: getattr(row, name) for name in _ANCHOR_FIELDS}
        for name in ("root_hash", "tx_hash", "raw_tx", "block_hash"):
            if values[name] is not None:
                values[name] = bytes(values[name])
        hashes = bytes(row.tx_hashes)
        values["tx_hashes"] = tuple(hashes[i : i + 32] for i in range(0, len(hashes), 32))
        return StoredAnchor(id=row.id, **values)

    def add(self, anchor: StoredAnchor) -> StoredAnchor:
        """Store a new anchor; it, with its id."""
        row_id = self._anchor.insert(**self._row(anchor)).execute()
        return replace(anchor, id=int(row_id))

    def update(self, anchor: StoredAnchor) -> None:
        """Store ``anchor``'s new state (found by its id)."""
        model = self._anchor
        model.update(**self._row(anchor)).where(model.id == anchor.id).execute()

    def list(
        self, after_id: int = 0, limit: int = 100, statuses: Sequence[str] = ()
    ) -> list[StoredAnchor]:
        """Anchors oldest first, after ``after_id``, optionally only of ``statuses``."""
        model = self._anchor
        query = model.select().where(model.id > after_id)
        if statuses:
            query = query.where(model.status.in_(list(statuses)))
        return [self._anchor_of(row) for row in query.order_by(model.id).limit(limit)]

    def list_newest_first(
        self, before_id: int | None = None, limit: int = 100, statuses: Sequence[str] = ()
    ) -> list[StoredAnchor]:
        """Anchors newest first, below ``before_id`` when given, optionally only of
        ``statuses``: the latest page without reading the history."""
        model = self._anchor
        query = model.select()
        if before_id is not None:
            query = query.where(model.id < before_id)
        if statuses:
            query = query.where(model.status.in_(list(statuses)))
        return [self._anchor_of(row) for row in query.order_by(model.id.desc()).limit(limit)]

    def latest(self, statuses: Sequence[str] = ()) -> StoredAnchor | None:
        """The newest anchor (of ``statuses``, if given)."""
        model = self._anchor
        query = model.select()
        if statuses:
            query = query.where(model.status.in_(list(statuses)))
        row = query.order_by(model.id.desc()).first()
        return None if row is None else self._anchor_of(row)

    def claim(self, name: str, holder: str, now_ms: int, lease_ms: int) -> bool:
        """Take or renew the lease ``name`` for ``holder`` until ``now_ms + lease_ms``; False
        while another holder's lease runs. One short transaction."""
        lease = self._lease
        sqlite = isinstance(self._db, peewee.SqliteDatabase)
        try:
            # SQLite: IMMEDIATE takes the write lock now; PostgreSQL: FOR UPDATE locks the row.
            with self._db.atomic("IMMEDIATE") if sqlite else self._db.atomic():
                query = lease.select().where(lease.name == name)
                row = (query if sqlite else query.for_update()).first()
                if row is None:
                    lease.insert(
                        name=name, holder=holder, expires_at_ms=now_ms + lease_ms
                    ).execute()
                    return True
                if row.holder != holder and row.expires_at_ms > now_ms:
                    return False
                lease.update(holder=holder, expires_at_ms=now_ms + lease_ms).where(
                    lease.name == name
                ).execute()
                return True
        except peewee.IntegrityError:
            return False  # another process inserted the lease first

    def release(self, name: str, holder: str) -> None:
        """Give the lease up now (on shutdown), if ``holder`` has it."""
        lease = self._lease
        lease.delete().where((lease.name == name) & (lease.holder == holder)).execute()


# -- the catalog and billing registries ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreatorRecord:
    """A creator as the latest ``creator`` entry about it registers it."""

    creator_id: str
    vkey: str
    currency: str
    entry_index: int


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """One published manifest version, and its withdrawal if any."""

    digest: str
    creator_id: str
    content_id: str
    version: int
    entry_index: int
    withdrawn_index: int | None = None
    withdrawn_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class StatementRecord:
    """A logged statement: what the next run and the read API need without decoding it."""

    digest: str
    entry_index: int
    creator_id: str
    currency: str
    range_start: int
    range_end: int
    period_end_ms: int
    lines: int
    released_by: str | None = None
    """The digest of the later statement that released this one's reserve, if any."""


@dataclass(frozen=True, slots=True)
class DisputeRecord:
    """A dispute of one statement line: opened at ``opened_index``, closed or not."""

    statement: str
    line: int
    creator_id: str
    reason: str
    opened_index: int
    closed_index: int | None = None


@dataclass(frozen=True, slots=True)
class RevenueRecord:
    consumer_id: str
    reference: str
    currency: str
    amount_minor: int
    entry_index: int


class BillingTables:
    """The registries that ``creator``, ``manifest``, ``statement``, ``dispute`` and
    ``revenue`` entries build, as the sequencer keeps them: written only inside
    :meth:`Storage.sequencing`, beside the entries that set them, so a registry row is
    durable exactly when its entry is. Each table holds one row per creator, manifest
    version, statement, dispute or declaration: they grow with the catalog and the billing
    runs, not with the receipts, so their indexes need no partitions."""

    def __init__(self, db: peewee.Database) -> None:
        class Base(peewee.Model):
            class Meta:
                database = db

        class Creator(Base):
            creator_id = peewee.TextField(primary_key=True)
            vkey = peewee.TextField()
            currency = peewee.TextField()
            entry_index = peewee.BigIntegerField()

            class Meta:
                table_name = "creators"

        class Manifest(Base):
            digest = peewee.TextField(primary_key=True)
            creator_id = peewee.TextField(index=True)
            content_id = peewee.TextField(index=True)
            version = peewee.BigIntegerField()
            entry_index = peewee.BigIntegerField(index=True)
            withdrawn_index = peewee.BigIntegerField(null=True)
            withdrawn_at_ms = peewee.BigIntegerField(null=True)

            class Meta:
                table_name = "manifests"

        class Statement(Base):
            digest = peewee.TextField(primary_key=True)
            entry_index = peewee.BigIntegerField()
            creator_id = peewee.TextField()
            currency = peewee.TextField()
            range_start = peewee.BigIntegerField()
            range_end = peewee.BigIntegerField()
            period_end_ms = peewee.BigIntegerField()
            lines = peewee.BigIntegerField()
            released_by = peewee.TextField(null=True)

            class Meta:
                table_name = "statements"
                indexes = (
                    (("currency", "entry_index"), False),
                    (("creator_id", "currency", "entry_index"), False),
                )

        class Dispute(Base):
            statement = peewee.TextField()
            line = peewee.BigIntegerField()
            creator_id = peewee.TextField(index=True)
            reason = peewee.TextField()
            opened_index = peewee.BigIntegerField()
            closed_index = peewee.BigIntegerField(null=True)

            class Meta:
                table_name = "disputes"
                primary_key = peewee.CompositeKey("statement", "line", "opened_index")

        class Revenue(Base):
            consumer_id = peewee.TextField()
            reference = peewee.TextField()
            currency = peewee.TextField()
            amount_minor = peewee.BigIntegerField()
            entry_index = peewee.BigIntegerField()

            class Meta:
                table_name = "revenue"
                primary_key = peewee.CompositeKey("consumer_id", "reference")

        self._creator = Creator
        self._manifest = Manifest
        self._statement = Statement
        self._dispute = Dispute
        self._revenue = Revenue
        db.create_tables([Creator, Manifest, Statement, Dispute, Revenue], safe=True)

    # -- creators --------------------------------------------------------------------------

    def put_creator(self, record: CreatorRecord) -> None:
        t = self._creator
        t.insert(
            creator_id=record.creator_id, vkey=record.vkey, currency=record.currency,
            entry_index=record.entry_index,
        ).on_conflict(
            conflict_target=[t.creator_id],
            update={t.vkey: record.vkey, t.currency: record.currency,
                    t.entry_index: record.entry_index},
        ).execute()  # fmt: skip

    def creator(self, creator_id: str) -> CreatorRecord | None:
        row = self._creator.get_or_none(self._creator.creator_id == creator_id)
        return None if row is None else CreatorRecord(**_columns(row, CreatorRecord))

    def creators(self) -> list[CreatorRecord]:
        rows = self._creator.select().order_by(self._creator.entry_index)
        return [CreatorRecord(**_columns(row, CreatorRecord)) for row in rows]

    # -- manifests -------------------------------------------------------------------------

    def add_manifest(self, record: ManifestRecord) -> None:
        self._manifest.insert(**_values(record)).execute()

    def withdraw_manifest(self, digest: str, index: int, at_ms: int) -> None:
        t = self._manifest
        t.update(withdrawn_index=index, withdrawn_at_ms=at_ms).where(t.digest == digest).execute()

    def manifest(self, digest: str) -> ManifestRecord | None:
        row = self._manifest.get_or_none(self._manifest.digest == digest)
        return None if row is None else ManifestRecord(**_columns(row, ManifestRecord))

    def manifests(
        self,
        *,
        creator_id: str | None = None,
        content_id: str | None = None,
        after: int = -1,
        limit: int = 100,
    ) -> list[ManifestRecord]:
        """Published versions in log order after entry index ``after``, optionally of one
        creator or one piece of content."""
        t = self._manifest
        query = t.select().where(t.entry_index > after)
        if creator_id is not None:
            query = query.where(t.creator_id == creator_id)
        if content_id is not None:
            query = query.where(t.content_id == content_id)
        rows = query.order_by(t.entry_index).limit(limit)
        return [ManifestRecord(**_columns(row, ManifestRecord)) for row in rows]

    def latest_version(self, content_id: str) -> ManifestRecord | None:
        """The highest published version of ``content_id``."""
        t = self._manifest
        row = t.select().where(t.content_id == content_id).order_by(t.version.desc()).first()
        return None if row is None else ManifestRecord(**_columns(row, ManifestRecord))

    # -- statements ------------------------------------------------------------------------

    def add_statement(self, record: StatementRecord) -> None:
        self._statement.insert(**_values(record)).execute()

    def release(self, digests: Sequence[str], by: str) -> None:
        t = self._statement
        if digests:
            t.update(released_by=by).where(t.digest.in_(list(digests))).execute()

    def statement(self, digest: str) -> StatementRecord | None:
        row = self._statement.get_or_none(self._statement.digest == digest)
        return None if row is None else StatementRecord(**_columns(row, StatementRecord))

    def statements(
        self,
        currency: str | None = None,
        creator_id: str | None = None,
        *,
        after: int = -1,
        limit: int = 100,
        latest: bool = False,
    ) -> list[StatementRecord]:
        """Statements in log order after entry index ``after`` (or, with ``latest``, the
        newest first), optionally of one currency's series and one creator."""
        t = self._statement
        query = t.select().where(t.entry_index > after)
        if currency is not None:
            query = query.where(t.currency == currency)
        if creator_id is not None:
            query = query.where(t.creator_id == creator_id)
        order = t.entry_index.desc() if latest else t.entry_index
        rows = query.order_by(order).limit(limit)
        return [StatementRecord(**_columns(row, StatementRecord)) for row in rows]

    # -- disputes --------------------------------------------------------------------------

    def open_dispute(self, record: DisputeRecord) -> None:
        self._dispute.insert(**_values(record)).execute()

    def close_dispute(self, statement: str, line: int, index: int) -> None:
        t = self._dispute
        t.update(closed_index=index).where(
            (t.statement == statement) & (t.line == line) & t.closed_index.is_null()
        ).execute()

    def disputes(
        self,
        creator_id: str | None = None,
        *,
        open_only: bool = False,
        statement: str | None = None,
        line: int | None = None,
    ) -> list[DisputeRecord]:
        """Disputes in the order they were opened (of one creator, one statement, one line
        of it, the open ones only)."""
        t = self._dispute
        query = t.select()
        if creator_id is not None:
            query = query.where(t.creator_id == creator_id)
        if statement is not None:
            query = query.where(t.statement == statement)
        if line is not None:
            query = query.where(t.line == line)
        if open_only:
            query = query.where(t.closed_index.is_null())
        rows = query.order_by(t.opened_index)
        return [DisputeRecord(**_columns(row, DisputeRecord)) for row in rows]

    # -- revenue ---------------------------------------------------------------------------

    def add_revenue(self, record: RevenueRecord) -> None:
        self._revenue.insert(**_values(record)).execute()

    def revenue(self, consumer_id: str, reference: str | None = None) -> list[RevenueRecord]:
        t = self._revenue
        query = t.select().where(t.consumer_id == consumer_id)
        if reference is not None:
            query = query.where(t.reference == reference)
        return [
            RevenueRecord(**_columns(row, RevenueRecord)) for row in query.order_by(t.entry_index)
        ]

    # -- all of them -----------------------------------------------------------------------

    def entry_indexes(self) -> set[int]:
        """The index of every entry a row of these registries names."""
        columns = (
            self._creator.entry_index, self._manifest.entry_index,
            self._manifest.withdrawn_index, self._statement.entry_index,
            self._dispute.opened_index, self._dispute.closed_index, self._revenue.entry_index,
        )  # fmt: skip
        found: set[int] = set()
        for column in columns:
            query = column.model.select(column).where(column.is_null(is_null=False))
            found.update(index for (index,) in query.tuples())
        return found


_R = TypeVar("_R")


def _columns(row: Any, record: type[_R]) -> dict[str, Any]:
    """The values of ``row`` for the fields of the record dataclass ``record``."""
    return {name: getattr(row, name) for name in record.__dataclass_fields__}  # type: ignore[attr-defined]


def _values(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}
