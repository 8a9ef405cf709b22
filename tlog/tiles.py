"""C2SP tlog-tiles: tile paths, which tiles a tree has, hashes from tiles, entry bundles.

Owns the tile coordinates and byte layouts of https://c2sp.org/tlog-tiles (height 8, so a full
tile holds 256 hashes, 8192 bytes), the authenticated reading of hashes out of tiles fetched
from an untrusted server (as Go's ``tlog.TileHashReader`` does), and the entry-bundle framing.
Imports tlog.hashing, tlog.merkle and tlog.errors; fetching tiles is the caller's, reached
through :class:`TileReader`.

>>> Tile(0, 1234067).path()
'tile/0/x001/x234/067'
>>> parse_tile_path("tile/entries/x001/000.p/17")
Tile(level=-1, n=1000, width=17)
>>> [t.path() for t in tiles_for_size(256)]
['tile/0/000', 'tile/1/000.p/1']
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tlog.errors import MalformedError, ProofError
from tlog.hashing import EMPTY_ROOT, HASH_SIZE, node_hash
from tlog.merkle import (
    check_tree_size,
    range_hash,
    range_indexes,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
)
from tlog.parsing import parse_decimal

__all__ = [
    "ENTRIES",
    "MAX_ENTRY_SIZE",
    "MAX_LEVEL",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "Tile",
    "TileHashReader",
    "TileReader",
    "decode_entry_bundle",
    "encode_entry_bundle",
    "hash_from_tile",
    "new_tiles",
    "parse_tile_path",
    "tile_for_index",
    "tile_hash_indexes",
    "tiles_for_size",
]

TILE_HEIGHT = 8
"""C2SP fixes the tile height at 8 levels of the tree."""
TILE_WIDTH = 1 << TILE_HEIGHT
"""A full tile holds 256 hashes (or 256 entries, for an entry bundle)."""
ENTRIES = -1
"""The ``level`` of an entry bundle (``tile/entries/...``), as Go uses -1 for data tiles."""
MAX_LEVEL = 63
MAX_ENTRY_SIZE = 0xFFFF
"""Entries in a bundle are framed by a big-endian uint16 length, so no entry is larger."""

_N_GROUP = re.compile(r"[0-9]{3}")


@dataclass(frozen=True, slots=True)
class Tile:
    """Tile ``n`` at tile ``level`` (``ENTRIES`` for an entry bundle), ``width`` hashes wide.

    A level-L tile holds the hashes at tree level 8L: for i < width, the root of the
    complete subtree of 256**L leaves starting at leaf (256n + i) * 256**L.
    """

    level: int
    n: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if not ENTRIES <= self.level <= MAX_LEVEL:
            raise MalformedError("tile.level", f"{self.level} is outside 0..{MAX_LEVEL}")
        if not 0 <= self.n < 1 << 64:
            raise MalformedError("tile.n", f"{self.n} is outside uint64")
        if not 1 <= self.width <= TILE_WIDTH:
            raise MalformedError("tile.width", f"{self.width} is outside 1..{TILE_WIDTH}")

    @property
    def is_partial(self) -> bool:
        return self.width < TILE_WIDTH

    def path(self) -> str:
        """The tile's C2SP path, e.g. ``tile/1/x001/000.p/17`` or ``tile/entries/042``."""
        level = "entries" if self.level == ENTRIES else str(self.level)
        partial = f".p/{self.width}" if self.is_partial else ""
        return f"tile/{level}/{_format_n(self.n)}{partial}"


def _format_n(n: int) -> str:
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


def parse_tile_path(path: str) -> Tile:
    """Parse a C2SP tile path strictly: no leading zeros, 3-digit groups, x-prefixes, W 1..255."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise MalformedError("path", f"{path!r} is not tile/<L>/<N>")
    level_text = parts[1]
    if level_text == "entries":
        level = ENTRIES
    else:
        level = parse_decimal(level_text, "tile.level", MAX_LEVEL)
    elements = parts[2:]
    width = TILE_WIDTH
    if len(elements) >= 2 and elements[-2].endswith(".p"):
        width = parse_decimal(elements[-1], "tile.width", TILE_WIDTH - 1)
        if width == 0:
            raise MalformedError("tile.width", "a partial tile is at least 1 wide")
        elements = [*elements[:-2], elements[-2][: -len(".p")]]
    *groups, last = elements
    n = 0
    for group in groups:
        if not (group.startswith("x") and _N_GROUP.fullmatch(group[1:])):
            raise MalformedError("tile.n", f"{group!r} is not an x-prefixed 3-digit group")
        n = n * 1000 + int(group[1:])
    if not _N_GROUP.fullmatch(last):
        raise MalformedError("tile.n", f"{last!r} is not a 3-digit group")
    n = n * 1000 + int(last)
    if groups and groups[0] == "x000":
        raise MalformedError("tile.n", "leading zero group")
    tile = Tile(level, n, width)
    if tile.path() != path:
        raise MalformedError("path", f"{path!r} is not canonical")
    return tile


# ---------------------------------------------------------------------------------------------
# Which tiles exist, and where a stored hash lives.


def new_tiles(old_size: int, new_size: int) -> list[Tile]:
    """The hash tiles that differ between trees of ``old_size`` and ``new_size`` leaves.

    Those are the tiles a log publishes when it grows from old to new size: new full tiles
    and the new partial tile of each level. Entry bundles follow the level-0 tiles.
    """
    check_tree_size(old_size, "old_size")
    check_tree_size(new_size, "new_size")
    if old_size > new_size:
        raise MalformedError("old_size", f"{old_size} is larger than new_size {new_size}")
    tiles: list[Tile] = []
    level = 0
    while new_size >> (TILE_HEIGHT * level):
        old_n = old_size >> (TILE_HEIGHT * level)
        new_n = new_size >> (TILE_HEIGHT * level)
        if old_n != new_n:
            for n in range(old_n >> TILE_HEIGHT, new_n >> TILE_HEIGHT):
                tiles.append(Tile(level, n))
            n = new_n >> TILE_HEIGHT
            if width := new_n - (n << TILE_HEIGHT):
                tiles.append(Tile(level, n, width))
        level += 1
    return tiles


def tiles_for_size(tree_size: int) -> list[Tile]:
    """Every hash tile of a tree: its full tiles and the partial tile of each level."""
    return new_tiles(0, tree_size)


def tile_for_index(stored_index: int) -> tuple[Tile, int, int]:
    """The narrowest tile holding the hash at ``stored_index``, and where it is in the tile.

    Returns ``(tile, start, end)``: the hash is the perfect-tree fold of the hashes in
    ``data[start:end]`` (byte offsets) of that tile. Hashes at tree levels that are not a
    multiple of 8 are not stored in any tile; they are folds of 2, 4, ... 128 tile hashes.
    """
    level, n = split_stored_hash_index(stored_index)
    tile_level = level // TILE_HEIGHT
    level -= tile_level * TILE_HEIGHT  # level within the tile
    tile_n = (n << level) >> TILE_HEIGHT
    n -= (tile_n << TILE_HEIGHT) >> level  # n within the tile, at `level`
    width = (n + 1) << level
    return Tile(tile_level, tile_n, width), (n << level) * HASH_SIZE, width * HASH_SIZE


def _fold_perfect(data: bytes) -> bytes:
    """The root of a perfect subtree from its 2**k bottom hashes, concatenated."""
    hashes = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
    while len(hashes) > 1:
        hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def hash_from_tile(tile: Tile, data: bytes, stored_index: int) -> bytes:
    """The hash at ``stored_index`` from ``tile``'s data (the tile or any wider one of it)."""
    if tile.level == ENTRIES:
        raise MalformedError("tile", "an entry bundle holds no hashes")
    if len(data) < tile.width * HASH_SIZE:
        raise MalformedError("data", f"{len(data)} bytes is too short for {tile.path()}")
    want, start, end = tile_for_index(stored_index)
    if (want.level, want.n) != (tile.level, tile.n) or tile.width < want.width:
        raise MalformedError("tile", f"stored hash {stored_index} is in {want.path()}")
    return _fold_perfect(data[start:end])


def tile_hash_indexes(tile: Tile) -> list[int]:
    """The stored hash indexes whose hashes, concatenated, are the tile's data."""
    if tile.level == ENTRIES:
        raise MalformedError("tile", "an entry bundle holds entries, not hashes")
    start = tile.n << TILE_HEIGHT
    level = tile.level * TILE_HEIGHT
    return [stored_hash_index(level, start + i) for i in range(tile.width)]


# ---------------------------------------------------------------------------------------------
# Authenticated hashes from untrusted tiles.


class TileReader(Protocol):
    """Fetches tile data, e.g. over HTTP; returns exactly one bytes object per tile asked."""

    def read_tiles(self, tiles: Sequence[Tile]) -> list[bytes]: ...


def _parent(tile: Tile, k: int, tree_size: int) -> Tile | None:
    """``tile``'s k-th ancestor among the tiles of a tree, clipped to the tree's width."""
    level = tile.level + k
    n = tile.n >> (k * TILE_HEIGHT)
    width = TILE_WIDTH
    limit = tree_size >> (level * TILE_HEIGHT)  # complete nodes at that tile level
    if (n << TILE_HEIGHT) + width >= limit:
        if n << TILE_HEIGHT >= limit:
            return None
        width = limit - (n << TILE_HEIGHT)
    return Tile(level, n, width)


class TileHashReader:
    """A :class:`~tlog.merkle.HashReader` that reads hashes from tiles of a trusted tree.

    Every ``read_hashes`` call fetches, in one ``read_tiles`` call, the tiles that hold the
    hashes asked for plus those needed to authenticate them: the tiles whose hashes fold to
    the trusted root, and the chain of full parent tiles above each other tile. It checks the
    root, then every full tile against the hash its parent tile stores for it, and only then
    returns hashes. A server that serves one wrong byte gets a ProofError, never a hash.
    ``tree_size`` and ``root_hash`` must come from a verified checkpoint.
    """

    def __init__(self, tree_size: int, root_hash: bytes, reader: TileReader) -> None:
        check_tree_size(tree_size)
        if len(root_hash) != HASH_SIZE:
            raise MalformedError("root_hash", f"not a {HASH_SIZE}-byte hash")
        self.tree_size = tree_size
        self.root_hash = root_hash
        self._reader = reader

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        size = self.tree_size
        order: dict[Tile, int] = {}
        tiles: list[Tile] = []

        def plan(tile: Tile) -> int:
            if tile not in order:
                order[tile] = len(tiles)
                tiles.append(tile)
            return order[tile]

        # The tiles holding the hashes that fold to the root authenticate each other at once.
        root_stored = range_indexes(0, size)
        root_tiles = [plan(self._clipped(i)) for i in root_stored]
        authenticated_by_root = len(tiles)

        # Every other tile hangs from a chain of full parents up to a tile already planned;
        # parents are planned before their children so they are checked first.
        limit = stored_hash_count(size)
        index_tiles: list[int] = []
        for i in indexes:
            if not 0 <= i < limit:
                raise MalformedError("indexes", f"stored hash {i} is not in a tree of {size}")
            tile, _, _ = tile_for_index(i)
            k = 0
            while (p := _parent(tile, k, size)) is not None and p not in order:
                k += 1
            for j in range(k - 1, -1, -1):
                ancestor = _parent(tile, j, size)
                if ancestor is None or ancestor.is_partial:
                    raise MalformedError("indexes", f"no full tile chain for stored hash {i}")
                plan(ancestor)
            index_tiles.append(order[self._clipped(i)])

        data = self._reader.read_tiles(tiles)
        if len(data) != len(tiles):
            raise ProofError(f"tile reader returned {len(data)} tiles for {len(tiles)}")
        for tile, blob in zip(tiles, data, strict=True):
            if len(blob) != tile.width * HASH_SIZE:
                raise ProofError(f"{tile.path()} is {len(blob)} bytes, not {tile.width * 32}")

        folded = [
            hash_from_tile(tiles[t], data[t], i)
            for t, i in zip(root_tiles, root_stored, strict=True)
        ]
        calculated = range_hash(folded) if folded else EMPTY_ROOT
        if calculated != self.root_hash:
            raise ProofError(
                "tiles do not hash to the trusted root",
                expected=self.root_hash,
                calculated=calculated,
            )
        for t in range(authenticated_by_root, len(tiles)):
            tile = tiles[t]
            parent = _parent(tile, 1, size)
            if parent is None or parent not in order:
                raise MalformedError("tiles", f"{tile.path()} has no planned parent")
            want = hash_from_tile(
                parent,
                data[order[parent]],
                stored_hash_index(parent.level * TILE_HEIGHT, tile.n),
            )
            got = _fold_perfect(data[t])
            if got != want:
                raise ProofError(
                    f"{tile.path()} does not match its parent {parent.path()}",
                    expected=want,
                    calculated=got,
                )
        return [
            hash_from_tile(tiles[t], data[t], i) for t, i in zip(index_tiles, indexes, strict=True)
        ]

    def _clipped(self, stored_index: int) -> Tile:
        tile, _, _ = tile_for_index(stored_index)
        clipped = _parent(tile, 0, self.tree_size)
        if clipped is None:
            raise MalformedError("indexes", f"stored hash {stored_index} is past the tree")
        return clipped


# ---------------------------------------------------------------------------------------------
# Entry bundles: tile/entries/<N>, each entry as a big-endian uint16 length and its bytes.


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """Frame up to 256 entries of at most 65,535 bytes each."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise MalformedError("entries", f"a bundle holds 1..{TILE_WIDTH} entries")
    parts = []
    for i, entry in enumerate(entries):
        if len(entry) > MAX_ENTRY_SIZE:
            raise MalformedError(f"entries[{i}]", f"{len(entry)} bytes is over {MAX_ENTRY_SIZE}")
        parts.append(struct.pack(">H", len(entry)))
        parts.append(entry)
    return b"".join(parts)


def decode_entry_bundle(data: bytes, width: int | None = None) -> list[bytes]:
    """Split a bundle into its entries; with ``width``, exactly that many, and no trailing data."""
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if len(entries) == TILE_WIDTH:
            raise MalformedError("bundle", f"more than {TILE_WIDTH} entries")
        if at + 2 > len(data):
            raise MalformedError("bundle", "truncated length prefix")
        (length,) = struct.unpack_from(">H", data, at)
        at += 2
        if at + length > len(data):
            raise MalformedError("bundle", f"entry {len(entries)} is truncated")
        entries.append(data[at : at + length])
        at += length
    if width is not None and len(entries) != width:
        raise MalformedError("bundle", f"holds {len(entries)} entries, want {width}")
    if not entries:
        raise MalformedError("bundle", "empty")
    return entries
