"""The statement documents the log can serve: billing runs' output, found by digest.

A ``statement`` entry logs only a digest; the document it names (``meterlog-statement/v1``,
with its lines, totals and every line's leaf indices) is a file a billing run wrote. A log
started with ``--statements DIR`` serves the documents under DIR (each run's ``--out``
directory, or a parent of them), so the portal can show a creator the lines of a logged
statement and the receipts behind each line. Content-addressed: a file is served for a
digest only if its SHA-256 is that digest, checked each time it is read, so a file changed
or replaced on disk is never served under a digest it no longer has; readers check the
digest again anyway.

Owns finding, reading and parsing those files (parsed documents are kept for a few
statements, so paging through a line does not re-read it). Imports tlog and orjson; never
billing (the file names are billing's documented ``statement-*.json``, nothing more).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import orjson

from tlog.statement import FORMAT

__all__ = ["StatementDocuments"]

_PATTERN = "statement-*.json"
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class _Seen:
    """A file as last hashed: its digest, valid while its size and mtime are these."""

    size: int
    mtime_ns: int
    digest: str


def _digest_of(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


class StatementDocuments:
    """Statement documents under ``root``, by digest. Thread-safe; every method does IO, so
    call it from a worker thread.

    The directory is scanned when a digest is asked for that no known file has, at most
    every ``rescan_interval_s`` (a new run's files appear without a restart; a client asking
    for unknown digests cannot make the log hash the directory over and over). A scan hashes
    only the files that are new or changed since the last one.
    """

    def __init__(self, root: Path, rescan_interval_s: float = 1.0, parsed: int = 8) -> None:
        self.root = root
        self._rescan_interval_s = rescan_interval_s
        self._seen: dict[Path, _Seen] = {}
        self._paths: dict[str, Path] = {}
        self._scanned_at = float("-inf")
        self._parsed: OrderedDict[str, tuple[tuple[int, ...], ...]] = OrderedDict()
        self._parsed_max = parsed
        self._lock = threading.Lock()

    def _scan(self) -> None:
        seen: dict[Path, _Seen] = {}
        for path in sorted(self.root.rglob(_PATTERN)):
            try:
                stat = path.stat()
                known = self._seen.get(path)
                if known is not None and (known.size, known.mtime_ns) == (
                    stat.st_size,
                    stat.st_mtime_ns,
                ):
                    seen[path] = known
                else:
                    seen[path] = _Seen(stat.st_size, stat.st_mtime_ns, _digest_of(path))
            except OSError:
                continue  # removed or unreadable while we looked: not served
        self._seen = seen
        self._paths = {s.digest: p for p, s in seen.items()}
        self._scanned_at = time.monotonic()

    def _path(self, digest: str) -> Path | None:
        path = self._paths.get(digest)
        if path is None and time.monotonic() - self._scanned_at >= self._rescan_interval_s:
            self._scan()
            path = self._paths.get(digest)
        return path

    def read(self, digest: str) -> bytes | None:
        """The document whose SHA-256 is ``digest``, or None if there is none under root."""
        with self._lock:
            path = self._path(digest)
            if path is None:
                return None
            try:
                data = path.read_bytes()
            except OSError:
                data = b""
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                self._scanned_at = float("-inf")  # changed on disk: look again next time
                self._paths.pop(digest, None)
                return None
            return data

    def lines(self, digest: str) -> tuple[tuple[int, ...], ...] | None:
        """The leaf indices of each line of the document of ``digest``, line 1 first (None if
        there is no such document, or it is not a statement).

        Read with orjson and checked only as far as this needs (the format, lines numbered
        1..n, increasing integer indices): the bytes are the ones a logged, billing-signed
        entry names, and tlog.statement's full parse (every field and the money) takes
        30 times as long, 0.3 s for a statement of 170,000 receipts, on every page of a line.
        """
        with self._lock:
            cached = self._parsed.get(digest)
            if cached is not None:
                self._parsed.move_to_end(digest)
                return cached
        data = self.read(digest)
        if data is None:
            return None
        lines = _line_indices(data)
        if lines is None:
            return None
        with self._lock:
            self._parsed[digest] = lines
            while len(self._parsed) > self._parsed_max:
                self._parsed.popitem(last=False)
        return lines


def _line_indices(data: bytes) -> tuple[tuple[int, ...], ...] | None:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return None
    lines = document.get("lines")
    if not isinstance(lines, list):
        return None
    out = []
    for number, line in enumerate(lines, 1):
        if not isinstance(line, dict) or line.get("line") != number:
            return None
        indices = line.get("leaf_indices")
        if not isinstance(indices, list) or not all(type(i) is int and i >= 0 for i in indices):
            return None
        if any(b <= a for a, b in itertools.pairwise(indices)):
            return None
        out.append(tuple(indices))
    return tuple(out)
