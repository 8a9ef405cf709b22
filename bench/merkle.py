"""Benchmark: appending leaves to tlog's Merkle tree, against a floor and against merkletools.

Owns nothing the log uses; it is a script, not a test, and asserts no timing. It imports
tlog.hashing and tlog.merkle, and merkletools only if it is installed (``make bench`` installs
merkletools==1.0.3 with --no-deps; see docs/design/dependencies.md for why never more).

What one run measures, all on the same pre-generated entries (deterministic, 100 bytes each,
built before any timing starts):

- ours: ``--leaves`` leaves appended in batches of ``--batch`` to a MemoryHashStore. Each batch
  is ``leaf_hash`` of every entry, ``store.append`` of the batch, then ``root_hash`` of the new
  tree size. Every batch is timed on its own; the total is their sum.
- floor: a bare loop over the same entries doing the two SHA-256 calls that each leaf costs at
  the very least, on inputs of the same shapes: ``sha256(0x00 || entry).digest()`` then
  ``sha256(0x01 || h || h).digest()`` (64 bytes after the prefix). A leaf adds on average one
  interior node, so this is the hashing that cannot be avoided; the rest of our time is
  Python bookkeeping.
- flatness: the median batch time over the first 10 batches, over the 10 batches around each
  power of ten in between, and over the last 10. A batch costs O(batch + log tree_size), so
  last/first should stay near 1.
- merkletools, sampled: at tree sizes 10**3, 10**4, ... up to ``--leaves``, one batch the way
  merkletools has to do it: ``add_leaf(batch, do_hash=True)`` then ``make_tree()``, which
  rebuilds the whole tree. The leaves before that batch are added untimed. Doing this at every
  batch point would be O(n**2), hence sampled. A point is skipped when the previous one
  suggests it would take more than about 30 s.

Ratios, as printed and in ``--json``:

- ``append_leaves_per_s``: ``ratio`` = our time / floor time (equivalently floor leaves/s /
  our leaves/s). 1.0 would be pure hashing; the target is <= 3.
- ``batch_time_flatness``: ``value`` = median batch time of the last 10 batches / that of the
  first 10. ``batch_time_s_*`` lines carry each window's median, ``ratio`` = it / first.
- ``merkletools_speedup_at_<size>``: ``value`` = merkletools' time for one batch at that size /
  our median batch time around that size (higher means tlog is faster).

``--json`` prints one JSON object per line on stdout, each with exactly the keys metric, value,
unit, floor, ratio (floor and ratio are null where they do not apply); notes go to stderr.
Without ``--json`` it prints readable lines on stdout.

Run: ``.venv/bin/python bench/merkle.py [--leaves N] [--batch B] [--json]``
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from hashlib import sha256
from typing import Any

from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash

ENTRY_SIZE = 100
WINDOW = 10
MERKLETOOLS_BUDGET_S = 30.0
MERKLETOOLS_REPEATS = 5
MERKLETOOLS_REPEAT_LIMIT = 100_000
MERKLETOOLS_INSTALL = (
    "make bench  (or: .venv/bin/python -m pip install --no-deps merkletools==1.0.3)"
)


def make_entries(count: int) -> list[bytes]:
    """``count`` distinct, deterministic, 100-byte ASCII entries (JSON-shaped)."""
    entries = []
    for i in range(count):
        head = b'{"kind":"bench","index":%d,"pad":"' % i
        entries.append(head.ljust(ENTRY_SIZE - 2, b"x") + b'"}')
    return entries


def time_floor(entries: Sequence[bytes]) -> float:
    """Seconds for two bare SHA-256 calls per entry: the least work one leaf can cost."""
    start = time.perf_counter()
    for entry in entries:
        h = sha256(b"\x00" + entry).digest()
        sha256(b"\x01" + h + h).digest()
    return time.perf_counter() - start


def time_tlog(entries: Sequence[bytes], batch: int) -> list[float]:
    """Append every entry, ``batch`` at a time, with a root after each; seconds per batch."""
    store = MemoryHashStore()
    times = []
    for lo in range(0, len(entries), batch):
        chunk = entries[lo : lo + batch]
        start = time.perf_counter()
        store.append([leaf_hash(entry) for entry in chunk])
        root_hash(store.tree_size, store)
        times.append(time.perf_counter() - start)
    return times


def load_merkletools() -> type[Any] | None:
    """merkletools.MerkleTools, or None if it is not installed.

    merkletools warns on import when pysha3 is missing (it always is: --no-deps); SHA-256
    comes from hashlib and does not need it, so the warning is silenced here.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import merkletools  # noqa: PLC0415
    except ImportError:
        return None
    tree_class: type[Any] = merkletools.MerkleTools
    return tree_class


def time_merkletools_batch(
    tree_class: type[Any], entries: Sequence[bytes], size: int, batch: int
) -> float:
    """Seconds for merkletools to take the batch that brings its tree to ``size``.

    The ``size - batch`` leaves before it are added untimed; the timed part is what
    merkletools does on every change: add the leaves, then rebuild the whole tree.
    """
    tree = tree_class(hash_type="sha256")
    tree.add_leaf([entry.decode("ascii") for entry in entries[: size - batch]], do_hash=True)
    chunk = [entry.decode("ascii") for entry in entries[size - batch : size]]
    start = time.perf_counter()
    tree.add_leaf(chunk, do_hash=True)
    tree.make_tree()
    elapsed = time.perf_counter() - start
    if tree.get_merkle_root() is None:
        raise RuntimeError("merkletools built no root")
    return elapsed


def powers_of_ten(lo: int, hi: int) -> list[int]:
    """The powers of ten ``p`` with ``lo <= p <= hi``."""
    found = []
    p = 1
    while p <= hi:
        if p >= lo:
            found.append(p)
        p *= 10
    return found


def window(times: Sequence[float], batch: int, size: int) -> tuple[int, int]:
    """The ``WINDOW`` batches centred on the one that ends at tree size ``size``, as [lo, hi)."""
    at = -(-size // batch) - 1
    lo = max(0, min(at - WINDOW // 2, len(times) - WINDOW))
    return lo, min(len(times), lo + WINDOW)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time tlog Merkle appends against a bare-hashing floor and merkletools."
    )
    parser.add_argument("--leaves", type=int, default=1_000_000, help="leaves to append")
    parser.add_argument("--batch", type=int, default=1_000, help="leaves per batch")
    parser.add_argument("--json", action="store_true", help="one JSON object per metric on stdout")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.leaves < args.batch or args.leaves % args.batch:
        parser.error("--leaves must be a positive multiple of --batch")
    return args


class Report:
    """Readable lines on stdout; with --json, JSON lines on stdout and notes on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def note(self, line: str) -> None:
        print(line, file=sys.stderr if self.as_json else sys.stdout, flush=True)

    def metric(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        floor: float | None = None,
        ratio: float | None = None,
        line: str,
    ) -> None:
        if self.as_json:
            record = {"metric": name, "value": value, "unit": unit, "floor": floor, "ratio": ratio}
            print(json.dumps(record), flush=True)
        else:
            print(line, flush=True)


def report_append(out: Report, times: Sequence[float], floor_s: float, batch: int) -> None:
    leaves = len(times) * batch
    ours_s = sum(times)
    ours_rate = leaves / ours_s
    floor_rate = leaves / floor_s
    ratio = ours_s / floor_s
    out.metric(
        "append_leaves_per_s",
        round(ours_rate),
        "leaves/s",
        floor=round(floor_rate),
        ratio=round(ratio, 2),
        line=f"tlog append: {ours_rate:,.0f} leaves/s ({leaves:,} leaves in {ours_s:.2f} s: "
        f"leaf_hash, append and root_hash per batch of {batch:,})\n"
        f"floor:       {floor_rate:,.0f} leaves/s ({floor_s:.2f} s: 2 x sha256 per leaf, "
        f"0x00||entry then 0x01||64 bytes)\n"
        f"ratio:       {ratio:.2f} (our time / floor time; target <= 3)",
    )


def report_flatness(out: Report, times: Sequence[float], batch: int) -> None:
    leaves = len(times) * batch
    points = [("first", batch)]
    points += [(f"at_{p}", p) for p in powers_of_ten(batch + 1, leaves - 1)]
    points += [("last", leaves)]
    first = statistics.median(times[:WINDOW])
    for label, size in points:
        lo, hi = window(times, batch, size)
        median = statistics.median(times[lo:hi])
        out.metric(
            f"batch_time_s_{label}",
            round(median, 6),
            "s",
            ratio=round(median / first, 2),
            line=f"batch time:  {median * 1e3:6.3f} ms median of the batches ending at tree sizes "
            f"{(lo + 1) * batch:,}..{hi * batch:,} ({median / first:.2f} x first)",
        )
    last = statistics.median(times[-WINDOW:])
    out.metric(
        "batch_time_flatness",
        round(last / first, 2),
        "last/first",
        line=f"flatness:    {last / first:.2f} (median batch time, last {WINDOW} / first {WINDOW})",
    )


def report_merkletools(
    out: Report, entries: Sequence[bytes], times: Sequence[float], batch: int
) -> None:
    tree_class = load_merkletools()
    if tree_class is None:
        out.note(f"merkletools: not installed, skipped. To include it: {MERKLETOOLS_INSTALL}")
        return
    out.note(
        "merkletools: sampled at a few tree sizes only (a rebuild at each of the batch points "
        "would be O(n^2)); one batch = add_leaf(batch, do_hash=True) + make_tree(), the "
        f"leaves before it added untimed; median of {MERKLETOOLS_REPEATS} runs up to "
        f"{MERKLETOOLS_REPEAT_LIMIT:,} leaves, 1 run above; against our median batch time "
        "around the same size"
    )
    previous: tuple[int, float] | None = None
    for size in powers_of_ten(batch, len(entries)):
        if size % batch:
            continue
        if previous is not None:
            estimate_s = previous[1] * size / previous[0]
            if estimate_s > MERKLETOOLS_BUDGET_S:
                out.note(
                    f"merkletools at {size:,}: skipped, one batch would take about "
                    f"{estimate_s:.0f} s (> {MERKLETOOLS_BUDGET_S:.0f} s)"
                )
                break
        repeats = MERKLETOOLS_REPEATS if size <= MERKLETOOLS_REPEAT_LIMIT else 1
        theirs_s = statistics.median(
            time_merkletools_batch(tree_class, entries, size, batch) for _ in range(repeats)
        )
        lo, hi = window(times, batch, size)
        ours_s = statistics.median(times[lo:hi])
        out.metric(
            f"merkletools_batch_time_s_at_{size}",
            round(theirs_s, 6),
            "s",
            line=f"merkletools: {theirs_s * 1e3:9.3f} ms for the batch ending at tree size "
            f"{size:,} (ours: {ours_s * 1e3:.3f} ms)",
        )
        out.metric(
            f"merkletools_speedup_at_{size}",
            round(theirs_s / ours_s, 1),
            "x",
            line=f"speed-up:    {theirs_s / ours_s:,.1f} x at tree size {size:,} "
            "(merkletools batch time / ours)",
        )
        previous = (size, theirs_s)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Report(args.json)
    leaves: int = args.leaves
    batch: int = args.batch

    out.note(f"entries: {leaves:,} x {ENTRY_SIZE} bytes, generated before timing")
    entries = make_entries(leaves)
    gc.collect()
    floor_s = time_floor(entries)
    times = time_tlog(entries, batch)
    report_append(out, times, floor_s, batch)
    report_flatness(out, times, batch)
    report_merkletools(out, entries, times, batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
