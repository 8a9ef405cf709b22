"""The tile client: a log read over HTTP, every byte authenticated before it is used.

Owns fetching a log's checkpoint, tiles and entry bundles (httpx, sync), the on-disk cache of
immutable tiles, the tlog-tiles partial-tile fallback, and :class:`VerifiedTree`, which reads
hashes and entries of a tree whose checkpoint the caller verified and computes inclusion and
consistency proofs locally. Nothing here trusts a proof the server computed: hashes come out
of tiles authenticated against the checkpoint's root (``tlog.tiles.TileHashReader``), and
entries out of bundles whose leaf hashes fold to authenticated subtree hashes. Imports tlog
and httpx (and verifier.workers, for the entry reader) only.

Failures are of two kinds, kept apart because the exit codes differ: the log cannot be
reached, or answers 5xx (:class:`LogUnavailableError`, exit 3); the log answers, but with
bytes that do not match what its checkpoint commits to, or does not serve a tile the
checkpoint needs (a :class:`~tlog.errors.VerificationError`, exit 1).

Cache. Full tiles and full entry bundles never change, so once authenticated they are
written under ``cache_dir`` at their tile path and never fetched again; partial ones are
kept in memory for the life of the client only. A tile fetched but not yet authenticated is
held aside, and cached only when the read that needed it has verified
(:meth:`VerifiedTree.hashes`).

Partial-tile fallback (tlog-tiles): a log may delete a partial tile once the full tile
exists. When a partial tile (or bundle) is not found, the client fetches the full one and
uses its first W hashes (or entries); a cached full tile serves any partial of it.

Entry reader. ``VerifiedTree.entries(start, end, in_child=True)`` yields exactly what
``entries(start, end)`` does, but fetches and authenticates in a child process (``spawn``:
callers have threads), so that the caller's process spends its CPU on what it does with
the entries (a billing pass) and not on HTTP, splitting bundles and hashing. The child
builds its own :class:`LogClient` from this one's settings (URL, cache directory, timeout,
fetch threads, ``cache_entries``) and its own :class:`VerifiedTree` from the verified
checkpoint (the signature is not checked again: every entry is authenticated against the
checkpoint's root hash, as here). It sends the entries in order, in messages of a few
thousand, through a pipe: the child works at most a message or two ahead, so memory stays
bounded whatever the range. An error in the child is raised in the caller with its type
and message (its traceback as the cause) after the entries before it; a child that dies
without one raises :class:`EntryReaderError`. The child exits when the caller is killed
(``verifier.workers.exit_with_parent``), and is stopped and reaped when the caller stops
iterating (the generator closed or collected). A client with a custom ``transport`` (a test's
``MockTransport``) cannot be rebuilt in another process: its entries are read in this
process, as without ``in_child``. The entries fetched by the child are added to
:attr:`LogClient.fetched` at the end of the range. As for any ``spawn`` child, the caller's
main module must import without side effects (``if __name__ == "__main__":``): the child
imports it, and one that starts a read on import makes the reader exit with code 1.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import traceback
from collections import OrderedDict
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType

import httpx

from tlog.checkpoint import SignedCheckpoint
from tlog.errors import MalformedError, ProofError, VerificationError
from tlog.evidence import verify_checkpoints_consistent
from tlog.hashing import HASH_SIZE, leaf_hash
from tlog.merkle import (
    MemoryHashStore,
    range_hash,
    range_indexes,
    root_hash,
    root_hash_from,
    root_indexes,
)
from tlog.proofs import (
    consistency_proof_from,
    consistency_proof_indexes,
    inclusion_proof_from,
    inclusion_proof_indexes,
)
from tlog.tiles import (
    ENTRIES,
    TILE_WIDTH,
    Tile,
    TileHashReader,
    decode_entry_bundle,
)
from verifier.workers import exit_with_parent

__all__ = [
    "EntryReaderError",
    "LogClient",
    "LogUnavailableError",
    "MissingTileError",
    "VerifiedTree",
]

USER_AGENT = "meterlog-verifier"
_MEMORY_TILES = 2048
READER_NAME = "meterlog-entry-reader"
"""The entry reader's process name (``multiprocessing``'s, not the OS's)."""
_ENTRIES_PER_MESSAGE = 4096
_STOP_S = 10.0


class LogUnavailableError(Exception):
    """The log did not answer, or answered 5xx: try again later (exit code 3)."""


class MissingTileError(VerificationError):
    """The log does not serve a tile or bundle that its checkpoint commits to."""


class EntryReaderError(Exception):
    """The entry reader (the child process of ``entries(..., in_child=True)``) failed
    otherwise than with an error it could pass on: it died, or its error does not pickle."""


class LogClient:
    """Fetches one log's checkpoint, tiles and bundles; caches authenticated full tiles.

    ``url`` is the log's base URL (the tile paths are below it). ``cache_dir`` holds the
    cache of one log: use a directory per origin. The client is a
    :class:`~tlog.tiles.TileReader`, so ``TileHashReader`` can read through it.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_dir: Path | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        fetch_threads: int = 4,
        cache_entries: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.cache_dir = cache_dir
        self.cache_entries = cache_entries
        """Whether full entry bundles are cached on disk too (a monitor reading each once
        does not need them; a buyer re-checking receipts does)."""
        self._settings = (
            _Settings(self.url, cache_dir, timeout_s, fetch_threads, cache_entries)
            if transport is None
            else None  # a transport object cannot be rebuilt in another process
        )
        self._http = httpx.Client(
            timeout=timeout_s,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
            limits=httpx.Limits(max_keepalive_connections=fetch_threads + 1),
        )
        self._pool = ThreadPoolExecutor(fetch_threads, thread_name_prefix="meterlog-fetch")
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="meterlog-prefetch")
        self._memory: OrderedDict[Tile, bytes] = OrderedDict()
        self._pending: dict[Tile, bytes] = {}
        self.fetched = 0
        """Tiles and bundles fetched over HTTP (not from a cache), for reports and tests."""

    def close(self) -> None:
        self._ahead.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self._http.close()

    def __enter__(self) -> LogClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- HTTP ---------------------------------------------------------------------------------

    def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        """GET ``path`` below the log's URL; the response if the log answered below 500."""
        url = f"{self.url}/{path.lstrip('/')}"
        try:
            response = self._http.get(url, params=params)
        except httpx.TransportError as exc:
            raise LogUnavailableError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise LogUnavailableError(f"{url}: HTTP {response.status_code}")
        return response

    def get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, object]:
        """A JSON object from the log's convenience API (untrusted: check what it says)."""
        response = self.get(path, params)
        if response.status_code != 200:
            raise VerificationError(f"{path}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            value = response.json()
        except ValueError as exc:
            raise VerificationError(f"{path}: the answer is not JSON") from exc
        if not isinstance(value, dict):
            raise VerificationError(f"{path}: the answer is not a JSON object")
        return value

    def fetch_checkpoint(self) -> bytes:
        """The log's latest signed checkpoint (not yet verified)."""
        response = self.get("checkpoint")
        if response.status_code != 200:
            raise VerificationError(f"GET /checkpoint: HTTP {response.status_code}")
        return response.content

    def fetch_checkpoint_at(self, tree_size: int) -> bytes:
        """A signed checkpoint of exactly ``tree_size`` from the log's history (not verified)."""
        response = self.get(f"v1/checkpoints/{tree_size}")
        if response.status_code == 404:
            raise VerificationError(f"the log has no checkpoint of size {tree_size}")
        if response.status_code != 200:
            raise VerificationError(f"checkpoint of size {tree_size}: HTTP {response.status_code}")
        return response.content

    # -- tiles ----------------------------------------------------------------------------------

    def _cache_path(self, tile: Tile) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / tile.path()

    def _cached(self, tile: Tile) -> bytes | None:
        """The full tile from memory or disk, if there."""
        data = self._memory.get(tile)
        if data is not None:
            self._memory.move_to_end(tile)
            return data
        path = self._cache_path(tile)
        if path is not None and path.is_file():
            data = path.read_bytes()
            self._remember(tile, data)
            return data
        return None

    def _remember(self, tile: Tile, data: bytes) -> None:
        if tile.level == ENTRIES:
            return  # bundles are large and read once: disk only
        self._memory[tile] = data
        self._memory.move_to_end(tile)
        while len(self._memory) > _MEMORY_TILES:
            self._memory.popitem(last=False)

    def _fetch(self, tile: Tile) -> bytes | None:
        response = self.get(tile.path())
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise VerificationError(f"{tile.path()}: HTTP {response.status_code}")
        self.fetched += 1
        return response.content

    def _read(self, tile: Tile) -> bytes:
        """One tile's bytes (a hash tile, or an entry bundle's raw bytes), unauthenticated."""
        full = Tile(tile.level, tile.n)
        if (data := self._pending.get(full)) is None:
            data = self._cached(full)
        if data is not None:
            return data if not tile.is_partial else _prefix(tile, data)
        if tile.is_partial and (data := self._memory.get(tile)) is not None:
            return data  # this process authenticated it before
        data = self._fetch(tile)
        if data is None and tile.is_partial:
            # tlog-tiles: the partial tile may be gone once the full one exists. Only its
            # prefix gets authenticated, so the full tile is not cached.
            data = self._fetch(full)
            if data is not None:
                return _prefix(tile, data)
        if data is None:
            raise MissingTileError(f"the log does not serve {tile.path()}")
        if tile.level != ENTRIES:
            self._pending[tile] = data  # cached once the read that needs it verifies
        return data

    def read_tiles(self, tiles: Sequence[Tile]) -> list[bytes]:
        """``TileReader``: the tiles' bytes, fetched in parallel, not yet authenticated."""
        if len(tiles) == 1:
            return [self._read(tiles[0])]
        return list(self._pool.map(self._read, tiles))

    def prefetch(self, tiles: Sequence[Tile]) -> Future[list[bytes]]:
        """:meth:`read_tiles` in the background; the future's result is its answer."""
        return self._ahead.submit(self.read_tiles, tiles)

    def commit(self) -> None:
        """The tiles read since the last commit are authenticated: keep them in memory, and
        the full ones on disk too. (A partial tile of a given width is as fixed as a full one
        in a log that does not fork; it is kept for this process only, and re-authenticated
        at each use like every tile, so a fork is still seen.)"""
        for tile, data in self._pending.items():
            self._remember(tile, data)
            path = self._cache_path(tile)
            if path is not None and not tile.is_partial and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
                partial.write_bytes(data)
                partial.replace(path)
        self._pending.clear()

    def keep(self, tile: Tile, data: bytes) -> None:
        """A full entry bundle that was checked against the tree: cache it."""
        if not tile.is_partial and self.cache_entries and self.cache_dir is not None:
            self._pending[tile] = data
            self.commit()

    def discard(self) -> None:
        """The tiles read since the last commit did not authenticate: forget them."""
        self._pending.clear()


def _prefix(tile: Tile, data: bytes) -> bytes:
    """The first ``tile.width`` hashes (or entries) of the full tile's ``data``."""
    if tile.level != ENTRIES:
        return data[: tile.width * HASH_SIZE]
    at = 0
    for _ in range(tile.width):
        if at + 2 > len(data):
            return data  # too short: the bundle check will say so
        at += 2 + int.from_bytes(data[at : at + 2], "big")
    return data[:at]


class VerifiedTree:
    """Hashes, proofs and entries of the tree of a verified checkpoint, read from tiles.

    Every hash is authenticated against ``signed``'s root before it is returned; every entry
    is hashed and checked against authenticated hashes. Raises VerificationError (a
    ProofError when the log's bytes do not match the checkpoint) or LogUnavailableError.
    """

    def __init__(self, client: LogClient, signed: SignedCheckpoint) -> None:
        self.client = client
        self.signed = signed
        self.tree_size = signed.checkpoint.tree_size
        self._reader = TileHashReader(self.tree_size, signed.checkpoint.root_hash, client)

    def hashes(self, indexes: Sequence[int]) -> list[bytes]:
        """The stored hashes at ``indexes`` (``tlog.merkle.HashReader``), authenticated."""
        if not indexes:
            return []
        try:
            hashes = self._reader.read_hashes(indexes)
        except (VerificationError, MalformedError):
            self.client.discard()
            raise
        self.client.commit()
        return hashes

    read_hashes = hashes

    def inclusion_proof(self, index: int) -> list[bytes]:
        """PATH(index, D[tree_size]), computed here from authenticated tiles."""
        indexes = inclusion_proof_indexes(index, self.tree_size)
        return inclusion_proof_from(index, self.tree_size, self.hashes(indexes))

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """PROOF(old_size, D[tree_size]), computed here from authenticated tiles."""
        indexes = consistency_proof_indexes(old_size, self.tree_size)
        return consistency_proof_from(old_size, self.tree_size, self.hashes(indexes))

    def prefix_proof(self, size: int) -> tuple[list[bytes], bytes]:
        """The consistency proof from ``size`` to this tree, and this tree's own root at
        ``size`` (which a proof from a power of two leaves out), computed here from tiles
        authenticated in one read: what fork evidence needs (``tlog.evidence``)."""
        if not 0 <= size <= self.tree_size:
            raise MalformedError("old_size", f"{size} is not in 0..{self.tree_size}")
        wanted = consistency_proof_indexes(size, self.tree_size)
        at_size = root_indexes(size) if 0 < size < self.tree_size else []
        hashes = self.hashes(wanted + at_size)
        proof = consistency_proof_from(size, self.tree_size, hashes[: len(wanted)])
        if size == self.tree_size:
            return proof, self.signed.checkpoint.root_hash
        return proof, root_hash_from(size, hashes[len(wanted) :])

    def verify_extends(self, old: SignedCheckpoint) -> None:
        """Check that ``old`` is a prefix of this tree, by :meth:`prefix_proof`. Raises
        InconsistentLogError, which is fork evidence, when this tree has another root at
        ``old``'s size; MalformedError when ``old`` is the larger tree or of another
        origin."""
        size = old.checkpoint.tree_size
        if size > self.tree_size:
            raise MalformedError("old", f"size {size} is larger than {self.tree_size}")
        proof, prefix = self.prefix_proof(size)
        verify_checkpoints_consistent(old, self.signed, proof, prefix=prefix)

    def entries(
        self, start: int, end: int, batch: int = 64, *, in_child: bool = False
    ) -> Generator[tuple[int, bytes], None, None]:
        """``(index, entry)`` for every index in ``[start, end)``, each entry authenticated.

        Bundles are fetched ``batch`` at a time, in parallel; each bundle's entries are
        hashed and folded, and the fold must equal the subtree hash of the bundle's range
        read from authenticated tiles (one hash for a full bundle). A bundle that does not
        match raises ProofError naming it.

        With ``in_child``, all of that happens in a child process, the entry reader (see the
        module docstring), if the client can be rebuilt there; the entries and errors are
        the same. Close the iterator (or let it go) to stop the reader early.
        """
        if not 0 <= start <= end <= self.tree_size:
            raise MalformedError("range", f"[{start}, {end}) is not in a tree of {self.tree_size}")
        settings = self.client._settings
        if start == end:
            return  # (not even the bundle holding ``start``)
        if in_child and settings is not None:
            yield from _entries_in_child(self, settings, start, end, batch)
        else:
            yield from self._entries(start, end, batch)

    def _entries(self, start: int, end: int, batch: int) -> Iterator[tuple[int, bytes]]:
        first, last = start // TILE_WIDTH, (end + TILE_WIDTH - 1) // TILE_WIDTH
        groups = [
            [self._bundle_tile(n) for n in range(group, min(group + batch, last))]
            for group in range(first, last, batch)
        ]
        # The next group's bundles are fetched while this one is checked.
        ahead = self.client.prefetch(groups[0]) if groups else None
        for number, bundles in enumerate(groups):
            assert ahead is not None  # noqa: S101 -- set for every group
            raws = ahead.result()
            if number + 1 < len(groups):
                ahead = self.client.prefetch(groups[number + 1])
            ranges = [(b.n * TILE_WIDTH, b.n * TILE_WIDTH + b.width) for b in bundles]
            wanted = [range_indexes(lo, hi) for lo, hi in ranges]
            flat = self.hashes([i for indexes in wanted for i in indexes])
            at = 0
            for bundle, raw, indexes in zip(bundles, raws, wanted, strict=True):
                expected = range_hash(flat[at : at + len(indexes)])
                at += len(indexes)
                entries = _check_bundle(bundle, raw, expected)
                self.client.keep(bundle, raw)
                base = bundle.n * TILE_WIDTH
                for offset, entry in enumerate(entries):
                    if start <= base + offset < end:
                        yield base + offset, entry

    def entry(self, index: int) -> bytes:
        """The entry at ``index``, authenticated."""
        for _, data in self.entries(index, index + 1, batch=1):
            return data
        raise MalformedError("index", f"{index} is not in the tree")  # pragma: no cover

    def _bundle_tile(self, n: int) -> Tile:
        width = min(TILE_WIDTH, self.tree_size - n * TILE_WIDTH)
        return Tile(ENTRIES, n, width)


def _check_bundle(bundle: Tile, raw: bytes, expected: bytes) -> list[bytes]:
    try:
        entries = decode_entry_bundle(raw, bundle.width)
    except MalformedError as exc:
        raise ProofError(f"{bundle.path()} is malformed: {exc}") from exc
    store = MemoryHashStore()
    store.append([leaf_hash(e) for e in entries])
    calculated = root_hash(len(entries), store)
    if calculated != expected:
        raise ProofError(
            f"{bundle.path()} does not match the tree", expected=expected, calculated=calculated
        )
    return entries


# -- the entry reader ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Settings:
    """What a :class:`LogClient` in another process needs to fetch as this one does."""

    url: str
    cache_dir: Path | None
    timeout_s: float
    fetch_threads: int
    cache_entries: bool

    def client(self) -> LogClient:
        return LogClient(
            self.url, cache_dir=self.cache_dir, timeout_s=self.timeout_s,
            fetch_threads=self.fetch_threads, cache_entries=self.cache_entries,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _ReadJob:
    """An entry reader's range: ``[start, end)`` of ``signed``'s tree, fetched as
    ``settings`` say, ``batch`` bundles at a time, sent ``per_message`` entries at a time."""

    settings: _Settings
    signed: SignedCheckpoint
    start: int
    end: int
    batch: int
    per_message: int


class _ChildTracebackError(Exception):
    """The traceback of an error raised in the entry reader, as the cause of its copy here."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def _entries_in_child(
    tree: VerifiedTree, settings: _Settings, start: int, end: int, batch: int
) -> Generator[tuple[int, bytes], None, None]:
    """``tree.entries(start, end)``, read by an entry reader (see the module docstring)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    job = _ReadJob(settings, tree.signed, start, end, batch, _ENTRIES_PER_MESSAGE)
    reader = context.Process(
        target=_read_for_parent,
        args=(job, sender, os.getpid()),
        name=READER_NAME,
        daemon=True,  # stopped by multiprocessing's exit handler if this process exits
    )
    finished = False
    try:
        reader.start()
        sender.close()  # the child's copy is the only one left: EOF here when it exits
        index = start
        while True:
            try:
                kind, *body = receiver.recv()
            except (EOFError, OSError):  # it exited, maybe in the middle of a message
                reader.join(_STOP_S)
                raise EntryReaderError(
                    f"the entry reader (pid {reader.pid}) exited with code {reader.exitcode} "
                    f"at index {index} of [{start}, {end})"
                ) from None
            if kind == "entries":
                (entries,) = body
                yield from zip(range(index, index + len(entries)), entries, strict=True)
                index += len(entries)
            elif kind == "end":
                (fetched,) = body
                if index != end:  # pragma: no cover -- the child sends every entry or an error
                    raise EntryReaderError(f"the entry reader stopped at {index}, not {end}")
                tree.client.fetched += fetched
                finished = True
                return
            elif kind == "error":
                error, text = body
                raise error from _ChildTracebackError(text)
            else:
                description, text = body
                raise EntryReaderError(
                    f"the entry reader failed with {description}"
                ) from _ChildTracebackError(text)
    finally:
        sender.close()
        receiver.close()
        _stop(reader, finished)


def _stop(reader: BaseProcess, finished: bool) -> None:
    """Reap the entry reader: let it exit if it sent its last message, else end it now."""
    if reader.pid is None:
        return  # never started
    if finished:
        reader.join(_STOP_S)
    if reader.exitcode is None:
        reader.terminate()
        reader.join(_STOP_S)
    if reader.exitcode is None:  # pragma: no cover -- SIGTERM is not handled in the child
        reader.kill()
        reader.join()
    reader.close()


class _ParentGoneError(Exception):
    """The entry reader's pipe is closed at the other end: nobody reads what it sends."""


def _send(sender: Connection, message: tuple[object, ...]) -> None:
    try:
        sender.send(message)
    except OSError as exc:  # BrokenPipeError, ConnectionResetError
        raise _ParentGoneError from exc


def _read_for_parent(job: _ReadJob, sender: Connection, parent: int) -> None:
    """The entry reader's work, in the child: every entry of the job's range, authenticated,
    sent in messages of ``per_message`` entries, then ``end`` or the first error."""
    exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the parent's to handle: it stops us
    entries: list[bytes] = []
    with sender:
        client = None
        try:
            client = job.settings.client()
            tree = VerifiedTree(client, job.signed)
            for _, entry in tree.entries(job.start, job.end, job.batch):
                entries.append(entry)
                if len(entries) == job.per_message:
                    _send(sender, ("entries", entries))
                    entries = []
            if entries:
                _send(sender, ("entries", entries))
            _send(sender, ("end", client.fetched))
        except _ParentGoneError:
            pass
        except BaseException as error:  # noqa: BLE001 -- every error is the parent's to raise
            _pass_on(sender, entries, error)
        finally:
            if client is not None:
                client.close()


def _pass_on(sender: Connection, entries: list[bytes], error: BaseException) -> None:
    """Send the entries read before ``error``, then ``error`` itself if it survives pickling
    (the tlog errors do), else its description."""
    text = "".join(traceback.format_exception(error))
    try:
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 -- our own bytes
        message: tuple[object, ...] = (
            ("error", error, text)
            if type(copy) is type(error) and str(copy) == str(error)
            else ("failed", repr(error), text)
        )
    except Exception:  # noqa: BLE001 -- whatever the reason, it does not cross
        message = ("failed", repr(error), text)
    try:
        if entries:
            _send(sender, ("entries", entries))
        _send(sender, message)
    except _ParentGoneError:
        pass
