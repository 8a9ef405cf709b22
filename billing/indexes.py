"""Leaf-index lists kept on disk: each statement line's counted indices, in bounded memory.

Owns :class:`LeafIndexLists`, which collects the leaf indices of many lists (one per line,
one per listed exclusion) as a run finds them, in any order, and gives each list back sorted.
Memory holds at most ``budget`` indices (8 bytes each) however long the range: a list's
indices are buffered, sorted and written to a temporary file as a segment when the buffer
fills (or when all buffers together reach the budget). Reading a list of at most ``whole``
indices reads its segments at once and sorts them (a run's lines are mostly short); a longer
list's sorted segments are merged lazily (``heapq.merge``), a block at a time. The temporary
file is deleted on :meth:`close`. Imports the standard library only.

>>> with LeafIndexLists(budget=4, segment=2, whole=2) as lists:
...     for index in (9, 3, 7, 1, 8):
...         lists.add(0, index)
...     list(lists.read(0)), lists.count(0)
([1, 3, 7, 8, 9], 5)
"""

from __future__ import annotations

import heapq
import os
import tempfile
from array import array
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

__all__ = ["LeafIndexLists"]

_ITEM = 8  # bytes per index ("q": signed 64-bit)
_READ_BLOCK = 1024


class LeafIndexLists:
    """Lists of leaf indices by integer key; see the module docstring."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        budget: int = 1 << 18,
        segment: int = 4096,
        whole: int = 1 << 16,
    ) -> None:
        fd, name = tempfile.mkstemp(prefix="meterlog-indices-", dir=directory)
        self._file = os.fdopen(fd, "w+b")
        os.unlink(name)  # gone from the directory now; the space is freed at close
        self._budget = budget
        self._whole = whole
        self._segment = segment
        self._buffers: dict[int, array[int]] = {}
        self._segments: dict[int, list[tuple[int, int]]] = {}
        self._written: dict[int, int] = {}
        """Indices of each list written to the file (the rest are in its buffer)."""
        self._buffered = 0
        self._end = 0

    def __enter__(self) -> LeafIndexLists:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def add(self, key: int, index: int) -> None:
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = array("q")
        buffer.append(index)
        self._buffered += 1
        if len(buffer) >= self._segment:
            self._flush(key)
        elif self._buffered >= self._budget:
            for other in list(self._buffers):
                self._flush(other)

    def _flush(self, key: int) -> None:
        buffer = self._buffers[key]
        if not buffer:
            return
        ordered = array("q", sorted(buffer))
        self._file.seek(self._end)
        self._file.write(ordered.tobytes())
        self._segments.setdefault(key, []).append((self._end, len(ordered)))
        self._end += len(ordered) * _ITEM
        self._written[key] = self._written.get(key, 0) + len(ordered)
        self._buffered -= len(buffer)
        self._buffers[key] = array("q")

    def count(self, key: int) -> int:
        """How many indices the list ``key`` holds."""
        return self._written.get(key, 0) + len(self._buffers.get(key, ()))

    def read(self, key: int) -> Iterator[int]:
        """The list's indices in increasing order (a list holds each index once)."""
        self._file.flush()
        segments = self._segments.get(key, [])
        if self.count(key) <= self._whole:
            found = array("q")
            for offset, n in segments:
                found.frombytes(os.pread(self._file.fileno(), n * _ITEM, offset))
            found.extend(self._buffers.get(key, ()))
            return iter(sorted(found))
        sources = [self._segment_items(offset, n) for offset, n in segments]
        sources.append(iter(sorted(self._buffers.get(key, ()))))
        return heapq.merge(*sources)

    def _segment_items(self, offset: int, count: int) -> Iterator[int]:
        fd = self._file.fileno()
        done = 0
        while done < count:
            n = min(_READ_BLOCK, count - done)
            block = array("q")
            block.frombytes(os.pread(fd, n * _ITEM, offset + done * _ITEM))
            yield from block
            done += n
