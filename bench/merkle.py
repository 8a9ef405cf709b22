"""Benchmark: appending leaves to tlog's Merkle tree, against a floor and against merkletools.

A script, not a test: it prints figures and asserts none. It imports tlog.hashing and
tlog.merkle, and merkletools only if that is installed (``make bench`` installs
merkletools==1.0.3 with --no-deps; docs/design/dependencies.md says why it is no more than a
baseline). Nothing in meterlog imports this file.

All timings use the same entries: ``--leaves`` deterministic 100-byte entries, generated before
any timing starts.

- ours: the entries appended in batches of ``--batch`` to a MemoryHashStore. A batch is
  ``leaf_hash`` of each entry, ``store.append`` of the batch, then ``root_hash`` of the new
  tree size. Each batch is timed on its own.
- floor: a bare loop over the same entries doing two SHA-256 calls per leaf, on inputs of the
  same shapes as ours: ``sha256(0x00 || entry).digest()`` then ``sha256(0x01 || h || h)
  .digest()`` (64 bytes after the prefix). Appending adds on average one interior node per
  leaf, so this is the hashing no implementation can skip; the rest of our time is Python.
- flatness: the median batch time over the first 10 batches, over the 10 batches around each
  power of ten in between (10**4 and 10**5 with the defaults) and over the last 10. A batch
  costs O(batch + log tree_size), so last/first should stay near 1.
- merkletools, sampled: at tree sizes 10**3, 10**4, ... up to ``--leaves`` (each rounded up to
  a whole number of batches), the batch that ends at that size, done the only way merkletools
  can: ``add_leaf(batch, do_hash=True)`` then ``make_tree()``, which rebuilds the whole tree.
  The leaves before that batch are added untimed. Rebuilding at every one of the batch points
  would be O(n**2), hence the sampling. A size is skipped (with those above it) when the one
  below suggests more than about 30 s.

Noise: the floor and our append run ``--repeat`` times, alternately. The floor time is the
fastest floor run, our time the fastest complete run; the flatness windows and the merkletools
comparison use, for each batch, its fastest time over the runs. merkletools is timed
``--repeat`` times per size and its fastest time kept. On a shared 2-core machine single runs
show slow spells of a few hundred milliseconds; the fastest of several runs filters them out.

Figures, with ``--json`` one JSON object per line on stdout, each exactly
``{"metric", "value", "unit", "floor", "ratio"}`` (floor and ratio null where they do not
apply); notes then go to stderr. Without ``--json`` readable lines go to stdout.

- ``append_leaves_per_s``: ``value`` our leaves/s, ``floor`` the floor's leaves/s, ``ratio``
  our time / floor time (= floor leaves/s / our leaves/s; 1.0 would be bare hashing; the
  target is <= 3).
- ``batch_time_s_<window>`` (first, at_10000, at_100000, last): the window's median batch
  time in seconds, ``ratio`` = it / the first window's.
- ``batch_time_flatness``: ``value`` = last window's median / first window's.
- ``merkletools_batch_time_s_at_<size>``: merkletools' time for the batch ending at that size.
- ``merkletools_speedup_at_<size>``: ``value`` = that time / our median batch time in the
  window around the same size (higher: tlog faster).

Run: ``.venv/bin/python bench/merkle.py [--leaves N] [--batch B] [--repeat R] [--json]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from hashlib import sha256
from typing import Any

from report import Report  # bench/report.py, beside this script

from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash

ENTRY_SIZE = 100
WINDOW = 10
MERKLETOOLS_BUDGET_S = 30.0
MERKLETOOLS_INSTALL = (
    "make bench  (or: .venv/bin/python -m pip install --no-deps merkletools==1.0.3)"
)


def make_entries(count: int) -> list[bytes]:
    """``count`` distinct, deterministic, 100-byte ASCII entries (canonical JSON objects)."""
    entries = []
    for i in range(count):
        head = b'{"index":%d,"kind":"bench","pad":"' % i
        entries.append(head.ljust(ENTRY_SIZE - 2, b"x") + b'"}')
    return entries


def time_floor(entries: Sequence[bytes]) -> float:
    """Seconds for two bare SHA-256 calls per entry: the least hashing one leaf can cost."""
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
    """merkletools.MerkleTools, or None if merkletools is not installed.

    merkletools warns on import that pysha3 is missing (with --no-deps it always is); its
    SHA-256 comes from hashlib and does not need pysha3, so the warning is silenced here.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import merkletools  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        return None
    tree_class: type[Any] = merkletools.MerkleTools
    return tree_class


def time_merkletools_batch(
    tree_class: type[Any], entries: Sequence[bytes], size: int, batch: int
) -> float:
    """Seconds for merkletools to take the batch that brings its tree to ``size`` leaves.

    The ``size - batch`` leaves before it are added untimed; the timed part is what merkletools
    does on every change: add the new leaves, then rebuild the whole tree.
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


def report_append(out: Report, ours_s: float, floor_s: float, leaves: int, batch: int) -> None:
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
    out: Report, entries: Sequence[bytes], times: Sequence[float], batch: int, repeat: int
) -> None:
    tree_class = load_merkletools()
    if tree_class is None:
        out.note(f"merkletools: not installed, skipped. To include it: {MERKLETOOLS_INSTALL}")
        return
    out.note(
        "merkletools: sampled at a few tree sizes only (rebuilding at all the batch points would "
        "be O(n^2)); one batch = add_leaf(batch, do_hash=True) + make_tree(), the leaves before "
        f"it added untimed; best of {repeat}, against our median batch time around the "
        "same size"
    )
    # Powers of ten, each rounded up to the end of a batch.
    sizes = sorted({-(-p // batch) * batch for p in powers_of_ten(batch, len(entries))})
    previous: tuple[int, float] | None = None
    for size in (s for s in sizes if s <= len(entries)):
        if previous is not None:
            estimate_s = previous[1] * size / previous[0]
            if estimate_s > MERKLETOOLS_BUDGET_S:
                out.note(
                    f"merkletools at {size:,} and above: skipped, one batch would take about "
                    f"{estimate_s:.0f} s (> {MERKLETOOLS_BUDGET_S:.0f} s)"
                )
                break
        theirs_s = min(
            time_merkletools_batch(tree_class, entries, size, batch) for _ in range(repeat)
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time tlog Merkle appends against a bare-hashing floor and merkletools."
    )
    parser.add_argument("--leaves", type=int, default=1_000_000, help="leaves to append")
    parser.add_argument("--batch", type=int, default=1_000, help="leaves per batch")
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs of each measurement; the fastest is kept"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per metric")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.leaves < args.batch or args.leaves % args.batch:
        parser.error("--leaves must be a positive multiple of --batch")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Report(args.json)
    leaves: int = args.leaves
    batch: int = args.batch
    repeat: int = args.repeat

    out.note(
        f"entries: {leaves:,} x {ENTRY_SIZE} bytes, generated before timing; floor and tlog "
        f"runs alternate, best of {repeat} kept"
    )
    entries = make_entries(leaves)
    floor_runs: list[float] = []
    tlog_runs: list[list[float]] = []
    for _ in range(repeat):
        floor_runs.append(time_floor(entries))
        tlog_runs.append(time_tlog(entries, batch))
    best_batches = [min(run) for run in zip(*tlog_runs, strict=True)]

    report_append(out, min(sum(run) for run in tlog_runs), min(floor_runs), leaves, batch)
    report_flatness(out, best_batches, batch)
    report_merkletools(out, entries, best_batches, batch, repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
