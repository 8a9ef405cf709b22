"""verifier.client: the tile client against a static log served by an httpx MockTransport.

The log is C2SP tiles and entry bundles of an in-memory tree; the transport can drop the
partial tiles (as a log may once the full tile exists), corrupt a tile, or fail. Proofs the
client computes must equal tlog's from the tree itself.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tlog.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from tlog.errors import ProofError, VerificationError
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import SigningKey
from tlog.proofs import consistency_proof, inclusion_proof
from tlog.tiles import (
    ENTRIES,
    TILE_WIDTH,
    Tile,
    encode_entry_bundle,
    parse_tile_path,
    tile_hash_indexes,
)
from verifier.client import (
    READER_NAME,
    LogClient,
    LogUnavailableError,
    MissingTileError,
    VerifiedTree,
)

KEY = SigningKey("log.example/c", b"\x41" * 32)
SIZE = 70_000 // 100  # 700 entries: two full tiles, a partial one, and a level-1 partial
ENTRIES_DATA = [b"entry %d" % i for i in range(SIZE)]
STORE = MemoryHashStore()
STORE.append([leaf_hash(e) for e in ENTRIES_DATA])


def _serve(tile: Tile) -> bytes | None:
    level = 0 if tile.level == ENTRIES else tile.level
    if (SIZE >> (8 * level)) - tile.n * TILE_WIDTH < tile.width:
        return None
    if tile.level == ENTRIES:
        start = tile.n * TILE_WIDTH
        return encode_entry_bundle(ENTRIES_DATA[start : start + tile.width])
    return b"".join(STORE.read_hashes(tile_hash_indexes(tile)))


Rewrite = Callable[[Tile, bytes | None], bytes | None]


def _transport(requests: list[str], rewrite: Rewrite | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path.lstrip("/")
        requests.append(path)
        if path == "checkpoint":
            return httpx.Response(200, content=_signed(SIZE))
        tile = parse_tile_path(path)
        data = _serve(tile)
        if rewrite is not None:
            data = rewrite(tile, data)
        return httpx.Response(404) if data is None else httpx.Response(200, content=data)

    return httpx.MockTransport(handle)


def _signed(size: int) -> bytes:
    return sign_checkpoint(
        Checkpoint("log.example/c", size, root_hash(size, STORE)), [KEY.signer()]
    )


def _tree(client: LogClient, size: int = SIZE) -> VerifiedTree:
    return VerifiedTree(client, open_checkpoint(_signed(size), [KEY.verifier()]))


def test_proofs_from_tiles_are_tlog_proofs(tmp_path: Path) -> None:
    requests: list[str] = []
    with LogClient("http://log", cache_dir=tmp_path, transport=_transport(requests)) as client:
        for size in (1, 255, 256, 257, 600, SIZE):
            tree = _tree(client, size)
            for index in {0, size // 2, size - 1}:
                assert tree.inclusion_proof(index) == inclusion_proof(index, size, STORE)
            for old in {1, size // 3, size - 1} - {0}:
                assert tree.consistency_proof(old) == consistency_proof(old, size, STORE)
        entries = list(_tree(client).entries(250, 520))
    assert entries == [(i, ENTRIES_DATA[i]) for i in range(250, 520)]


def test_full_tiles_are_cached_on_disk_and_partial_ones_refetched(tmp_path: Path) -> None:
    requests: list[str] = []
    with LogClient("http://log", cache_dir=tmp_path, transport=_transport(requests)) as client:
        _tree(client).inclusion_proof(10)
        list(_tree(client).entries(0, SIZE))
    assert (tmp_path / "tile/0/000").read_bytes() == _serve(Tile(0, 0))
    assert (tmp_path / "tile/entries/001").read_bytes() == _serve(Tile(ENTRIES, 1))
    requests.clear()
    with LogClient("http://log", cache_dir=tmp_path, transport=_transport(requests)) as client:
        _tree(client).inclusion_proof(10)
        assert list(_tree(client).entries(0, SIZE))[-1] == (SIZE - 1, ENTRIES_DATA[-1])
    assert all(".p/" in path for path in requests), requests


def test_a_missing_partial_tile_falls_back_to_the_full_tile() -> None:
    """A log that grew to 768 entries may have deleted tile/0/002.p/188: a client that
    trusts the checkpoint of 700 reads the first 188 hashes of the full tile instead."""
    global SIZE  # noqa: PLW0603 -- the log grows for this test only
    grown = [b"entry %d" % i for i in range(SIZE, 768)]
    STORE.append([leaf_hash(e) for e in grown])
    ENTRIES_DATA.extend(grown)
    old_size, SIZE = SIZE, 768
    try:

        def no_partials(tile: Tile, data: bytes | None) -> bytes | None:
            return None if tile.is_partial and tile.level in (0, ENTRIES) else data

        requests: list[str] = []
        with LogClient("http://log", transport=_transport(requests, no_partials)) as client:
            tree = _tree(client, old_size)
            assert tree.inclusion_proof(650) == inclusion_proof(650, old_size, STORE)
            assert list(tree.entries(690, old_size)) == [
                (i, ENTRIES_DATA[i]) for i in range(690, old_size)
            ]
        assert "tile/0/002.p/188" in requests and "tile/0/002" in requests
        assert "tile/entries/002.p/188" in requests and "tile/entries/002" in requests
    finally:
        SIZE = old_size
        del ENTRIES_DATA[old_size:]
        STORE.__init__()  # type: ignore[misc]
        STORE.append([leaf_hash(e) for e in ENTRIES_DATA])


def test_a_corrupt_tile_is_refused_and_never_cached(tmp_path: Path) -> None:
    def corrupt(tile: Tile, data: bytes | None) -> bytes | None:
        if data is not None and tile in (Tile(0, 0), Tile(ENTRIES, 0)):
            return data[:-1] + bytes([data[-1] ^ 1])
        return data

    requests: list[str] = []
    with LogClient(
        "http://log", cache_dir=tmp_path, transport=_transport(requests, corrupt)
    ) as client:
        with pytest.raises(ProofError):
            _tree(client).inclusion_proof(3)
        with pytest.raises(ProofError, match="entries/000"):
            list(_tree(client).entries(0, 10))
    assert not (tmp_path / "tile/0/000").exists()
    assert not (tmp_path / "tile/entries/000").exists()


def test_missing_tiles_and_outages_are_told_apart() -> None:
    with LogClient("http://log", transport=_transport([], lambda t, d: None)) as client:
        with pytest.raises(MissingTileError):
            _tree(client).inclusion_proof(3)
        assert isinstance(MissingTileError("x"), VerificationError)

    def fail(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    with (
        LogClient("http://log", transport=httpx.MockTransport(fail)) as client,
        pytest.raises(LogUnavailableError),
    ):
        client.fetch_checkpoint()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with (
        LogClient("http://log", transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(LogUnavailableError),
    ):
        _tree(client).inclusion_proof(3)


def test_a_client_with_a_transport_reads_in_this_process_even_in_child() -> None:
    """A transport object cannot be rebuilt in a child process: ``in_child`` falls back."""
    requests: list[str] = []
    with LogClient("http://log", transport=_transport(requests)) as client:
        tree = _tree(client)
        got = []
        for item in tree.entries(100, SIZE, in_child=True):
            assert not [p for p in multiprocessing.active_children() if p.name == READER_NAME]
            got.append(item)
        assert got == [(i, ENTRIES_DATA[i]) for i in range(100, SIZE)]
        assert any(r.startswith("tile/entries/") for r in requests)  # fetched here
