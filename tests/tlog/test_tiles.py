"""Tests of tlog.tiles: C2SP tile paths, which tiles a tree has, hashes from tiles, the
authenticated TileHashReader (with a recording, fault-injecting tile server) and entry bundles.

The published vectors are ``tile_paths`` and ``tile_contents_leaf_tree_1000``; everything else
is checked against naive references that live here, or against a MemoryHashStore.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlog.errors import MalformedError, ProofError
from tlog.hashing import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash
from tlog.merkle import MemoryHashStore, root_hash, stored_hash_count
from tlog.proofs import (
    consistency_proof,
    consistency_proof_indexes,
    inclusion_proof,
    inclusion_proof_indexes,
    verify_consistency,
    verify_inclusion,
)
from tlog.tiles import (
    ENTRIES,
    MAX_LEVEL,
    TILE_WIDTH,
    Tile,
    TileHashReader,
    decode_entry_bundle,
    encode_entry_bundle,
    hash_from_tile,
    new_tiles,
    parse_tile_path,
    tile_for_index,
    tile_hash_indexes,
    tiles_for_size,
)

BIG_TREE = 70_000
"""The C2SP example size: three tile levels, full and partial tiles at each of the lower two."""


def leaf_data(i: int) -> bytes:
    """The vectors' leaf rule: record i has data b'leaf %d' % i."""
    return b"leaf %d" % i


def build_store(size: int, data: Callable[[int], bytes] = leaf_data) -> MemoryHashStore:
    store = MemoryHashStore()
    store.append([leaf_hash(data(i)) for i in range(size)])
    return store


@pytest.fixture(scope="module")
def store_1000() -> MemoryHashStore:
    return build_store(1000)


@pytest.fixture(scope="module")
def big_store() -> MemoryHashStore:
    return build_store(BIG_TREE)


def mth(hashes: Sequence[bytes]) -> bytes:
    """Naive RFC 6962 MTH over leaf hashes (the reference that lives in the tests)."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


def naive_tiles(tree_size: int) -> list[Tile]:
    """Every hash tile of a tree, straight from the C2SP definition, level by level."""
    tiles: list[Tile] = []
    level = 0
    while tree_size >= TILE_WIDTH**level:
        count = tree_size // TILE_WIDTH**level  # hashes at tree level 8 * level
        tiles.extend(Tile(level, n) for n in range(count // TILE_WIDTH))
        if count % TILE_WIDTH:
            tiles.append(Tile(level, count // TILE_WIDTH, count % TILE_WIDTH))
        level += 1
    return tiles


def tile_data(store: MemoryHashStore, tile: Tile) -> bytes:
    return b"".join(store.read_hashes(tile_hash_indexes(tile)))


# ---------------------------------------------------------------------------------------------
# Paths: published cases, the x-prefixed groups, strict negatives, and a round trip.


def test_c2sp_path_cases_format_and_parse(vectors: dict[str, Any]) -> None:
    cases = vectors["tile_paths"]["c2sp_cases"]
    assert len(cases) == 6
    for path, want in cases.items():
        tile = parse_tile_path(path)
        assert tile.path() == want
        assert Tile(tile.level, tile.n, tile.width).path() == want
        assert parse_tile_path(want) == tile


def test_c2sp_path_cases_have_the_published_coordinates() -> None:
    # The worked example of C2SP tlog-tiles: N = 1234067 is written x001/x234/067.
    assert parse_tile_path("tile/0/x001/x234/067") == Tile(0, 1_234_067)
    assert parse_tile_path("tile/0/x001/x234/067.p/3") == Tile(0, 1_234_067, 3)
    assert parse_tile_path("tile/entries/x123/x456/789.p/17") == Tile(ENTRIES, 123_456_789, 17)
    assert parse_tile_path("tile/entries/999") == Tile(ENTRIES, 999)
    assert parse_tile_path("tile/2/000.p/1") == Tile(2, 0, 1)


@pytest.mark.parametrize(
    ("n", "groups"),
    [(1_234_067, "x001/x234/067"), (999, "999"), (1000, "x001/000"), (0, "000")],
)
def test_n_is_written_in_x_prefixed_groups(n: int, groups: str) -> None:
    for level, name in ((0, "0"), (5, "5"), (ENTRIES, "entries")):
        path = f"tile/{name}/{groups}"
        assert Tile(level, n).path() == path
        assert parse_tile_path(path) == Tile(level, n)
        assert Tile(level, n, 7).path() == f"{path}.p/7"
        assert parse_tile_path(f"{path}.p/7") == Tile(level, n, 7)


def test_c2sp_tree_70000(vectors: dict[str, Any]) -> None:
    want = vectors["tile_paths"]["c2sp_tree_70000"]
    tiles = tiles_for_size(70_000)
    for level, full_key in ((0, "level0_full"), (1, "level1_full"), (2, "level2_full")):
        full = [t for t in tiles if t.level == level and not t.is_partial]
        assert len(full) == want.get(full_key, 0)
        assert [t.n for t in full] == list(range(len(full)))
        partial = [t for t in tiles if t.level == level and t.is_partial]
        assert [t.width for t in partial] == want[f"level{level}_partial_width"]
        assert [t.n for t in partial] == [len(full)]
    assert {t.level for t in tiles} == {0, 1, 2}
    # The paths C2SP lists for the example.
    paths = {t.path() for t in tiles}
    assert {"tile/0/273.p/112", "tile/1/000", "tile/1/001.p/17", "tile/2/000.p/1"} <= paths
    assert new_tiles(0, 70_000) == tiles


def test_c2sp_tree_256(vectors: dict[str, Any]) -> None:
    want = [tuple(t) for t in vectors["tile_paths"]["c2sp_tree_256"]]
    assert [(t.level, t.n, t.width) for t in tiles_for_size(256)] == want
    assert [(t.level, t.n, t.width) for t in new_tiles(0, 256)] == want


def test_go_sumdb_paths_are_not_c2sp_paths(vectors: dict[str, Any]) -> None:
    group = vectors["tile_paths"]
    go_paths = [*group["go_sumdb_format_cases_(H,L,N,W)"], *group["go_sumdb_invalid"]]
    assert len(go_paths) == 8
    for path in go_paths:
        with pytest.raises(MalformedError):
            parse_tile_path(path)


@pytest.mark.parametrize(
    "path",
    [
        # leading zeros anywhere
        "tile/01/000",
        "tile/00/000",
        "tile/0/1",
        "tile/0/01",
        "tile/0/0001",
        "tile/0/x000/001",
        "tile/0/x000/x001/000",
        "tile/0/x01/000",
        "tile/0/x0001/000",
        # partial widths
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/007",
        "tile/0/000.p/+7",
        "tile/0/000.p/-7",
        "tile/0/000.p/ 7",
        "tile/0/000.p",
        "tile/0/000.p/",
        "tile/0/000.P/7",
        "tile/0/000.p/7/",
        "tile/0/000.p/7.p/3",
        "tile/0/x001.p/3/000",
        # groups without (or with a wrong) x prefix
        "tile/0/001/000",
        "tile/0/X001/000",
        "tile/0/y001/000",
        "tile/0/x001/x000",
        "tile/0/x001x000",
        # levels
        "tile/64/000",
        "tile/100/000",
        "tile/-1/000",
        "tile/+1/000",
        "tile//000",
        "tile/entry/000",
        "tile/data/000",
        "tile/Entries/000",
        # shape
        "tile/0/000/",
        "tile/0/",
        "tile/0",
        "tile",
        "",
        "/tile/0/000",
        "tiles/0/000",
        "tile/0//000",
        "tile/0/000 ",
        # go sumdb paths carry the height
        "tile/8/0/000",
        "tile/8/1/x001/000.p/3",
        "tile/8/data/000",
        # non-ASCII digits
        "tile/0/\u0660\u0660\u0661",
        "tile/\u0660/000",
        "tile/0/x\uff10\uff10\uff11/000",
        "tile/0/000.p/\u0667",
        "tile/0/00\u00b2",
        # N must fit uint64 (2**64 here)
        "tile/0/x018/x446/x744/x073/x709/x551/616",
    ],
)
def test_parse_tile_path_rejects(path: str) -> None:
    with pytest.raises(MalformedError):
        parse_tile_path(path)


def test_parse_tile_path_accepts_the_extremes() -> None:
    assert parse_tile_path(f"tile/{MAX_LEVEL}/000") == Tile(MAX_LEVEL, 0)
    top = "tile/0/x018/x446/x744/x073/x709/x551/615"
    assert parse_tile_path(top) == Tile(0, (1 << 64) - 1)
    assert parse_tile_path("tile/0/000.p/255") == Tile(0, 0, 255)
    assert parse_tile_path("tile/0/000.p/1") == Tile(0, 0, 1)


@pytest.mark.parametrize(
    ("level", "n", "width"),
    [(-2, 0, 1), (MAX_LEVEL + 1, 0, 1), (0, -1, 1), (0, 1 << 64, 1), (0, 0, 0), (0, 0, 257)],
)
def test_tile_rejects_coordinates_out_of_range(level: int, n: int, width: int) -> None:
    with pytest.raises(MalformedError):
        Tile(level, n, width)


tiles_strategy = st.builds(
    Tile,
    st.integers(min_value=ENTRIES, max_value=MAX_LEVEL),
    st.one_of(
        st.integers(min_value=0, max_value=10**7),
        st.integers(min_value=0, max_value=(1 << 64) - 1),
    ),
    st.integers(min_value=1, max_value=TILE_WIDTH),
)


@settings(max_examples=300)
@given(tiles_strategy)
def test_tile_path_round_trip(tile: Tile) -> None:
    path = tile.path()
    assert parse_tile_path(path) == tile
    assert path.endswith(f".p/{tile.width}") == tile.is_partial


# ---------------------------------------------------------------------------------------------
# Which tiles a tree has.


SIZES = [
    0,
    1,
    2,
    255,
    256,
    257,
    511,
    512,
    1000,
    65535,
    65536,
    65537,
    70_000,
]


@pytest.mark.parametrize("size", [*SIZES, TILE_WIDTH**3 - 1, TILE_WIDTH**3, TILE_WIDTH**3 + 1])
def test_tiles_for_size_matches_the_definition(size: int) -> None:
    assert tiles_for_size(size) == naive_tiles(size)


def test_new_tiles_of_a_huge_tree_has_one_partial_tile_per_level() -> None:
    size = (1 << 62) + (1 << 40) + 12345
    old = size - 1
    tiles = new_tiles(old, size)
    # Growing by one leaf changes exactly the partial tile of each level the leaf reaches.
    assert tiles == [t for t in naive_tiles_near(size) if t not in set(naive_tiles_near(old))]


def naive_tiles_near(tree_size: int) -> list[Tile]:
    """The last (partial or full) tiles of each level of a huge tree, from the definition."""
    tiles: list[Tile] = []
    level = 0
    while tree_size >= TILE_WIDTH**level:
        count = tree_size // TILE_WIDTH**level
        if count % TILE_WIDTH:
            tiles.append(Tile(level, count // TILE_WIDTH, count % TILE_WIDTH))
        if count >= TILE_WIDTH:
            tiles.append(Tile(level, count // TILE_WIDTH - 1))
        level += 1
    return tiles


def brute_new_tiles(old_size: int, new_size: int) -> list[Tile]:
    old = set(naive_tiles(old_size))
    return [t for t in naive_tiles(new_size) if t not in old]


def test_new_tiles_matches_brute_force_on_edge_sizes() -> None:
    for new in SIZES:
        for old in SIZES:
            if old <= new:
                assert new_tiles(old, new) == brute_new_tiles(old, new), (old, new)


@settings(max_examples=100)
@given(st.integers(min_value=0, max_value=1 << 18), st.integers(min_value=0, max_value=1 << 18))
def test_new_tiles_matches_brute_force(a: int, b: int) -> None:
    old, new = min(a, b), max(a, b)
    assert new_tiles(old, new) == brute_new_tiles(old, new)


def test_new_tiles_of_every_small_pair() -> None:
    for new in range(0, 600, 7):
        for old in range(0, new + 1, 5):
            assert new_tiles(old, new) == brute_new_tiles(old, new), (old, new)


@pytest.mark.parametrize(("old", "new"), [(2, 1), (-1, 5), (0, -1), (0, 1 << 63)])
def test_new_tiles_rejects_bad_sizes(old: int, new: int) -> None:
    with pytest.raises(MalformedError):
        new_tiles(old, new)


# ---------------------------------------------------------------------------------------------
# Tile contents and hashes from tiles.


def test_tile_contents_leaf_tree_1000(vectors: dict[str, Any], store_1000: MemoryHashStore) -> None:
    vec = vectors["tile_contents_leaf_tree_1000"]
    assert vec["leaf_data_rule"] == "record i has data b'leaf %d' % i"
    tiles = tiles_for_size(1000)
    assert [t.path() for t in tiles] == vec["tiles"]
    data = {t.path(): tile_data(store_1000, t) for t in tiles}
    for t in tiles:
        assert len(data[t.path()]) == t.width * HASH_SIZE

    top = data["tile/1/000.p/3"]
    hashes = [top[i : i + HASH_SIZE].hex() for i in range(0, len(top), HASH_SIZE)]
    assert hashes == vec["tile/1/000.p/3_hashes_hex"]
    last = data["tile/0/003.p/232"]
    assert len(last) == vec["tile/0/003.p/232_length_bytes"]
    assert last[-HASH_SIZE:].hex() == vec["tile/0/003.p/232_last_hash_hex"]

    # Independently of the store: level 0 is the leaf hashes, level 1 the MTH of each full
    # level-0 tile.
    leaves = [leaf_hash(leaf_data(i)) for i in range(1000)]
    for t in tiles:
        if t.level == 0:
            assert data[t.path()] == b"".join(leaves[t.n * 256 : t.n * 256 + t.width])
    assert top == b"".join(mth(leaves[256 * i : 256 * (i + 1)]) for i in range(3))


def test_hash_from_tile_for_every_stored_hash(store_1000: MemoryHashStore) -> None:
    size = 1000
    full_tiles = {(t.level, t.n) for t in tiles_for_size(size) if not t.is_partial}
    for index in range(stored_hash_count(size)):
        want = store_1000.read_hashes([index])[0]
        tile, start, end = tile_for_index(index)
        assert 0 <= start < end <= tile.width * HASH_SIZE
        assert end == tile.width * HASH_SIZE  # the narrowest tile ends with the hash's span
        data = tile_data(store_1000, tile)
        assert hash_from_tile(tile, data, index) == want
        # Any wider tile of the same coordinates serves the hash too.
        if (tile.level, tile.n) in full_tiles:
            full = Tile(tile.level, tile.n)
            assert hash_from_tile(full, tile_data(store_1000, full), index) == want


def test_hash_from_tile_rejects_the_wrong_tile(store_1000: MemoryHashStore) -> None:
    index = inclusion_proof_indexes(777, 1000)[0]
    tile, _, _ = tile_for_index(index)
    data = tile_data(store_1000, tile)
    with pytest.raises(MalformedError):
        hash_from_tile(tile, data[:-1], index)
    with pytest.raises(MalformedError):
        hash_from_tile(Tile(tile.level, tile.n + 1, tile.width), data, index)
    with pytest.raises(MalformedError):
        hash_from_tile(Tile(tile.level + 1, tile.n, tile.width), data, index)
    if tile.width > 1:
        with pytest.raises(MalformedError):
            hash_from_tile(Tile(tile.level, tile.n, tile.width - 1), data, index)
    with pytest.raises(MalformedError):
        hash_from_tile(Tile(ENTRIES, tile.n, tile.width), data, index)
    with pytest.raises(MalformedError):
        tile_hash_indexes(Tile(ENTRIES, 0))


# ---------------------------------------------------------------------------------------------
# TileHashReader against a fake tile server.


class StoreTileReader:
    """Serves tiles out of a hash store and records every call; ``mangle`` injects faults."""

    def __init__(
        self,
        store: MemoryHashStore,
        mangle: Callable[[Sequence[Tile], list[bytes]], list[bytes]] | None = None,
    ) -> None:
        self.store = store
        self.mangle = mangle
        self.calls: list[list[Tile]] = []

    def read_tiles(self, tiles: Sequence[Tile]) -> list[bytes]:
        self.calls.append(list(tiles))
        data = [tile_data(self.store, t) for t in tiles]
        return self.mangle(tiles, data) if self.mangle else data


def proof_index_sets(size: int) -> list[list[int]]:
    """Stored hash indexes that proofs in a tree of ``size`` read: a spread of leaves/sizes."""
    leaves = sorted({0, 1, size // 3, size // 2, size - 2, size - 1} & set(range(size)))
    olds = sorted({1, 2, 255, 256, 257, size // 2, size - 1, size} & set(range(1, size + 1)))
    sets = [inclusion_proof_indexes(i, size) for i in leaves]
    sets += [consistency_proof_indexes(m, size) for m in olds]
    sets.append([0, stored_hash_count(size) - 1])
    return [s for s in sets if s]


READER_SIZES = [1, 2, 3, 7, 8, 255, 256, 257, 511, 512, 513, 1000, 65535, 65536, 65537, 70_000]


@pytest.mark.parametrize("size", READER_SIZES)
def test_tile_hash_reader_returns_the_stored_hashes(big_store: MemoryHashStore, size: int) -> None:
    server = StoreTileReader(big_store)
    reader = TileHashReader(size, root_hash(size, big_store), server)
    for indexes in proof_index_sets(size):
        calls = len(server.calls)
        assert reader.read_hashes(indexes) == big_store.read_hashes(indexes)
        assert len(server.calls) == calls + 1
        # Every tile asked for is one of the tree's, clipped to the tree (never past it).
        assert set(server.calls[-1]) <= set(tiles_for_size(size))


def test_tile_hash_reader_reads_every_hash_of_a_1000_leaf_tree(
    big_store: MemoryHashStore,
) -> None:
    size = 1000
    server = StoreTileReader(big_store)
    reader = TileHashReader(size, root_hash(size, big_store), server)
    everything = list(range(stored_hash_count(size)))
    assert reader.read_hashes(everything) == big_store.read_hashes(everything)
    assert len(server.calls) == 1
    assert reader.read_hashes(everything[::-1]) == big_store.read_hashes(everything[::-1])
    assert reader.read_hashes([5, 5, 5]) == big_store.read_hashes([5, 5, 5])
    assert len(server.calls) == 3


def test_tile_hash_reader_serves_verifiable_proofs(big_store: MemoryHashStore) -> None:
    size = BIG_TREE
    root = root_hash(size, big_store)
    reader = TileHashReader(size, root, StoreTileReader(big_store))
    for index in (0, 1000, 65535, 65536, size - 1):
        proof = inclusion_proof(index, size, reader)
        assert proof == inclusion_proof(index, size, big_store)
        verify_inclusion(leaf_hash(leaf_data(index)), index, size, proof, root)
    for old in (1, 256, 65536, 69_999):
        proof = consistency_proof(old, size, reader)
        verify_consistency(old, size, proof, root_hash(old, big_store), root)


def test_tile_hash_reader_of_the_empty_tree() -> None:
    server = StoreTileReader(MemoryHashStore())
    reader = TileHashReader(0, EMPTY_ROOT, server)
    assert reader.read_hashes([]) == []
    with pytest.raises(MalformedError):
        reader.read_hashes([0])


@pytest.mark.parametrize("size", [1, 256, 1000, 70_000])
def test_tile_hash_reader_rejects_indexes_outside_the_tree(
    big_store: MemoryHashStore, size: int
) -> None:
    server = StoreTileReader(big_store)
    reader = TileHashReader(size, root_hash(size, big_store), server)
    for bad in (-1, stored_hash_count(size), stored_hash_count(size) + 1, 1 << 62):
        with pytest.raises(MalformedError):
            reader.read_hashes([0, bad])
    assert server.calls == []


@pytest.mark.parametrize(("size", "root"), [(-1, EMPTY_ROOT), (5, b"\x00" * 31), (5, b"")])
def test_tile_hash_reader_rejects_a_bad_tree(size: int, root: bytes) -> None:
    with pytest.raises(MalformedError):
        TileHashReader(size, root, StoreTileReader(MemoryHashStore()))


def flip(data: list[bytes], tile_at: int, byte_at: int, bit: int = 0) -> list[bytes]:
    out = list(data)
    blob = bytearray(out[tile_at])
    blob[byte_at] ^= 1 << bit
    out[tile_at] = bytes(blob)
    return out


def served_tiles(store: MemoryHashStore, size: int, indexes: list[int]) -> list[Tile]:
    server = StoreTileReader(store)
    TileHashReader(size, root_hash(size, store), server).read_hashes(indexes)
    return server.calls[0]


def fault_cases(size: int) -> list[int]:
    middle = size // 2
    return sorted(set(inclusion_proof_indexes(middle, size)) | {0})


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 1000, 65536, 65537, 70_000])
def test_one_wrong_byte_in_any_tile_is_caught(big_store: MemoryHashStore, size: int) -> None:
    indexes = fault_cases(size)
    tiles = served_tiles(big_store, size, indexes)
    root = root_hash(size, big_store)
    for t, tile in enumerate(tiles):
        length = tile.width * HASH_SIZE
        for byte_at in sorted({0, 1, 31, 32, length // 2, length - 33, length - 1}):
            if not 0 <= byte_at < length:
                continue
            for bit in (0, 7):
                server = StoreTileReader(
                    big_store, lambda _t, d, t=t, b=byte_at, k=bit: flip(d, t, b, k)
                )
                with pytest.raises(ProofError):
                    TileHashReader(size, root, server).read_hashes(indexes)


@pytest.mark.parametrize("size", [257, 1000])
def test_one_wrong_byte_in_every_hash_of_every_tile_is_caught(
    big_store: MemoryHashStore, size: int
) -> None:
    indexes = fault_cases(size)
    tiles = served_tiles(big_store, size, indexes)
    root = root_hash(size, big_store)
    for t, tile in enumerate(tiles):
        for h in range(tile.width):
            byte_at = h * HASH_SIZE + h % HASH_SIZE
            server = StoreTileReader(big_store, lambda _t, d, t=t, b=byte_at: flip(d, t, b))
            with pytest.raises(ProofError):
                TileHashReader(size, root, server).read_hashes(indexes)


def test_swapped_or_foreign_tiles_are_caught(big_store: MemoryHashStore) -> None:
    size = BIG_TREE
    root = root_hash(size, big_store)
    # Hashes in two different full level-0 tiles.
    indexes = [*inclusion_proof_indexes(1000, size), *inclusion_proof_indexes(2000, size)]
    tiles = served_tiles(big_store, size, indexes)
    full = [i for i, t in enumerate(tiles) if t.level == 0 and not t.is_partial]
    assert len(full) == 2

    def swap(_tiles: Sequence[Tile], data: list[bytes]) -> list[bytes]:
        out = list(data)
        out[full[0]], out[full[1]] = data[full[1]], data[full[0]]
        return out

    with pytest.raises(ProofError):
        TileHashReader(size, root, StoreTileReader(big_store, swap)).read_hashes(indexes)

    other = build_store(size, lambda i: b"other %d" % i)
    with pytest.raises(ProofError):
        TileHashReader(size, root, StoreTileReader(other)).read_hashes(indexes)


@pytest.mark.parametrize("size", [1, 257, 1000, 70_000])
def test_wrong_tile_lengths_and_counts_are_caught(big_store: MemoryHashStore, size: int) -> None:
    root = root_hash(size, big_store)
    indexes = fault_cases(size)
    count = len(served_tiles(big_store, size, indexes))
    mangles: list[Callable[[Sequence[Tile], list[bytes]], list[bytes]]] = [
        lambda _t, d: d[:-1],
        lambda _t, d: [*d, d[0]],
        lambda _t, d: [],
    ]
    for t in range(count):
        mangles += [
            lambda _t, d, t=t: [*d[:t], d[t] + b"\x00", *d[t + 1 :]],
            lambda _t, d, t=t: [*d[:t], d[t][:-1], *d[t + 1 :]],
            lambda _t, d, t=t: [*d[:t], d[t] + d[t][:HASH_SIZE], *d[t + 1 :]],
            lambda _t, d, t=t: [*d[:t], d[t][:-HASH_SIZE], *d[t + 1 :]],
        ]
    for mangle in mangles:
        with pytest.raises(ProofError):
            TileHashReader(size, root, StoreTileReader(big_store, mangle)).read_hashes(indexes)


@pytest.mark.parametrize("size", [1, 256, 1000, 70_000])
def test_a_wrong_trusted_root_is_caught(big_store: MemoryHashStore, size: int) -> None:
    good = root_hash(size, big_store)
    indexes = fault_cases(size)
    wrong_roots = [
        bytes([good[0] ^ 1]) + good[1:],
        good[:-1] + bytes([good[-1] ^ 0x80]),
        root_hash(size - 1, big_store),
        sha256(b"not a root").digest(),
    ]
    if size < big_store.tree_size:
        wrong_roots.append(root_hash(size + 1, big_store))
    for wrong in wrong_roots:
        with pytest.raises(ProofError) as exc:
            TileHashReader(size, wrong, StoreTileReader(big_store)).read_hashes(indexes)
        assert exc.value.expected == wrong
        assert exc.value.calculated == good


def test_a_wrong_tree_size_is_caught(big_store: MemoryHashStore) -> None:
    # The root of one size, claimed for a neighbouring size: the tiles cannot match it.
    for size in (2, 256, 257, 1000, 65536):
        root = root_hash(size, big_store)
        for claimed in (size - 1, size + 1):
            with pytest.raises(ProofError):
                TileHashReader(claimed, root, StoreTileReader(big_store)).read_hashes([0])


# ---------------------------------------------------------------------------------------------
# Entry bundles.


def reference_bundle(entries: Sequence[bytes]) -> bytes:
    """tile/entries framing, straight from the spec: uint16 big-endian length || entry."""
    return b"".join(struct.pack(">H", len(e)) + e for e in entries)


entries_strategy = st.lists(st.binary(max_size=300), min_size=1, max_size=TILE_WIDTH)


@settings(max_examples=100)
@given(entries_strategy)
def test_entry_bundle_round_trip(entries: list[bytes]) -> None:
    data = encode_entry_bundle(entries)
    assert data == reference_bundle(entries)
    assert decode_entry_bundle(data) == entries
    assert decode_entry_bundle(data, width=len(entries)) == entries


def test_entry_bundle_size_limits() -> None:
    biggest = b"\xab" * 0xFFFF
    data = encode_entry_bundle([b"", biggest, b"x"])
    assert decode_entry_bundle(data, width=3) == [b"", biggest, b"x"]
    with pytest.raises(MalformedError) as exc:
        encode_entry_bundle([b"x", biggest + b"\xab"])
    assert exc.value.field == "entries[1]"


def test_entry_bundle_entry_counts() -> None:
    full = [b"%d" % i for i in range(TILE_WIDTH)]
    assert decode_entry_bundle(encode_entry_bundle(full), width=TILE_WIDTH) == full
    too_many = [*full, b"one more"]
    with pytest.raises(MalformedError):
        encode_entry_bundle(too_many)
    with pytest.raises(MalformedError):
        decode_entry_bundle(reference_bundle(too_many))
    with pytest.raises(MalformedError):
        encode_entry_bundle([])
    with pytest.raises(MalformedError):
        decode_entry_bundle(b"")
    with pytest.raises(MalformedError):
        decode_entry_bundle(b"", width=0)


def test_entry_bundle_truncated_or_trailing_data() -> None:
    entries = [b"alpha", b"", b"gamma gamma", b"\x00\x01"]
    data = encode_entry_bundle(entries)
    for cut in range(len(data)):
        with pytest.raises(MalformedError):
            decode_entry_bundle(data[:cut], width=len(entries))
    with pytest.raises(MalformedError, match="truncated length"):
        decode_entry_bundle(data + b"\x00")
    with pytest.raises(MalformedError, match="truncated"):
        decode_entry_bundle(data + b"\x00\x05abc")
    with pytest.raises(MalformedError):
        decode_entry_bundle(data + b"\x00\x00", width=len(entries))
    with pytest.raises(MalformedError):
        decode_entry_bundle(data[:-2], width=len(entries))


@pytest.mark.parametrize("width", [1, 3, 5, 256])
def test_entry_bundle_width_mismatch(width: int) -> None:
    entries = [b"a", b"b", b"c", b"d"]
    with pytest.raises(MalformedError):
        decode_entry_bundle(encode_entry_bundle(entries), width=width)
