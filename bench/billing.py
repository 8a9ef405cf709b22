"""Benchmark: ``meterlog billing run`` over 10**6 committed receipts, read from a log on loopback.

A script, not a test: it prints figures and asserts none. Nothing in meterlog imports it.

1. The receipts. ``--entries`` receipts (default 1,000,000), signed by 4 edge keys (the same
   seeds as bench/ingest.py), for 100 creators' 1,000 pieces of content (10 each; their
   manifests state per-event, per-GiB, and for some cache-savings and revenue-share terms),
   fetched by 200 consumers in 50 training jobs, served at a steady rate over ``--days`` days
   (default 10) ending a day ago; every 50th is a second cache tier's receipt for the
   request before it. Signed once in a process pool and cached as JSON Lines in
   ``--cache-dir`` (``billing-receipts-*.jsonl``).
2. The log. The 4 edge keys, 100 creators and 1,000 manifests, then the receipts in batches
   of ``--batch`` (10,000), each batch sequenced with the real sequencer
   (``log_server.sequencer.sequence``) straight into SQLite at the log time of its last
   receipt plus a second: a log that grew over the days, as bench/verify.py builds its own
   (through HTTP it would take many minutes); then a real ``meterlog serve`` serves it on
   loopback. Not timed.
3. The floor, measured in this run: the same entries, ``--floor-entries`` of them read back
   from the log's database, decoded (``tlog.entry.decode_entry``, strict) and hashed
   (``tlog.hashing.leaf_hash``) in a bare loop; the fastest of ``--repeat`` runs, before the
   runs and after them, the faster kept. Scaled to the run's entries. This is the work
   billing from a log cannot skip: every entry's bytes authenticated and parsed.
4. The runs: ``meterlog billing run --no-append --no-cache`` as a child process (timed from
   start to exit; its CPU and peak RSS from ``wait4``, which count its entry reader, the
   child that fetches and authenticates), through the checkpoint at half the receipts and
   then through the latest (the whole log). Each fetches every entry bundle and the tiles
   that authenticate it over loopback, verifies the checkpoint's signature, and writes 100
   statements. The policy has a 1-day late limit, 1-hour windows and 10-minute
   request windows, so what a run holds in memory is about a day of dedup keys, whatever the
   range: the two runs' peak RSS says whether that holds.

``--json`` prints one JSON object per line on stdout, exactly ``{"metric", "value", "unit",
"floor", "ratio"}``; notes go to stderr. Run: ``.venv/bin/python bench/billing.py [--json]``
(``--keep DIR`` builds the log there once and reuses it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ingest import edge_key  # bench/ingest.py, beside this script
from report import Report  # bench/report.py, beside this script
from verify import LOG_KEY, OPERATOR_KEY, ORIGIN, BenchError, cpu_s, load, serve

from log_server.sequencer import LogIdentity, sequence
from log_server.storage import Storage
from tlog.entry import (
    Creator,
    EdgeKey,
    Manifest,
    Receipt,
    decode_entry,
    encode_entry,
    sign_creator,
    sign_edge_key,
    sign_manifest,
    sign_receipt,
)
from tlog.hashing import leaf_hash
from tlog.note import SigningKey, format_skey, format_vkey

EDGES = 4
CREATORS = 100
CONTENTS = 1000
DAY_MS = 86_400_000
CACHE_VERSION = "v1"
BILLING_KEY = SigningKey("bench.example/billing", b"\x44" * 32)
POLICY = """\
currency = "USD"
minor_exponent = 2
platform_fee = "0.20"

[reserve]
share = "0.10"
release_after_days = 30

[payout]
minimum_minor = 1000

[events]
training = "once_per_job"
inference = "every_request"
preview = "none"
window_s = 3600
request_window_s = 600
late_limit_days = 1

[cache_savings]
origin_cost_per_gb = "0.08"
edge_cost_per_gb = "0.02"
"""
"""billing.policy's example with 1-hour windows and a 1-day late limit. (Written out: this
script's own name, billing, hides the billing package from it.)"""
_SIGN_CHUNK = 5_000
_ANNOUNCED = re.compile(r"billing: USD run over \[(\d+), (\d+)\)")


def creator_key(c: int) -> SigningKey:
    return SigningKey(f"creator-{c}", hashlib.sha256(b"meterlog bench creator %d" % c).digest())


def content_id(k: int) -> str:
    return "sha256:" + hashlib.sha256(b"bench content %d" % k).hexdigest()


def manifest_digest(k: int) -> str:
    return "sha256:" + hashlib.sha256(b"bench manifest %d" % k).hexdigest()


def catalog() -> list[Creator | EdgeKey | Manifest]:
    """The edge keys, creators and manifests, signed."""
    entries: list[Creator | EdgeKey | Manifest] = []
    for e in range(EDGES):
        key = edge_key(e)
        entries.append(sign_edge_key(EdgeKey("register", key.name, format_vkey(key.verifier()), 0),
                                     OPERATOR_KEY))  # fmt: skip
    for c in range(CREATORS):
        key = creator_key(c)
        entries.append(sign_creator(Creator(key.name, format_vkey(key.verifier()), "USD"),
                                    OPERATOR_KEY))  # fmt: skip
    for k in range(CONTENTS):
        terms = {"training": "0.05", "inference": "0.001", "per_gib": "0.02"}
        if k % 3 == 0:
            terms["savings_share"] = "0.15"
        if k % 5 == 0:
            terms["revenue_share"] = "0.30"
        creator = creator_key(k % CREATORS)
        manifest = Manifest(
            action="publish", creator_id=creator.name, content_id=content_id(k), version=1,
            manifest=manifest_digest(k), scopes=("inference", "preview", "training"),
            terms=tuple(sorted(terms.items())), license="https://market.example/licenses/1",
        )  # fmt: skip
        entries.append(sign_manifest(manifest, creator))
    return entries


def make_receipt(i: int, start_ms: int, step_ms: int) -> bytes:
    """Receipt ``i``; every 50th repeats the request before it from the next cache tier."""
    request = i - 1 if i % 50 == 49 else i
    k = (request * 7919) % CONTENTS
    edge = edge_key((i + (1 if request != i else 0)) % EDGES)
    receipt = Receipt(
        request_id=f"bill-{request}", edge=edge.name, consumer_id=f"consumer-{request % 200}",
        token_id=f"token-{request % 200}", scope=("training", "inference", "preview")[request % 3],
        content_id=content_id(k), creator_id=creator_key(k % CREATORS).name,
        manifest=manifest_digest(k), bytes_sent=1_000 + (request * 7919) % 10_000_000,
        cache="hit" if request % 4 else "miss", served_at_ms=start_ms + i * step_ms,
        job_id=f"job-{(request // 1000) % 50}",
        sample_rate=(1, 10) if request % 97 == 0 else (1, 1),
    )  # fmt: skip
    return encode_entry(sign_receipt(receipt, edge))


def _sign_range(lo: int, hi: int, start_ms: int, step_ms: int) -> bytes:
    return b"".join(make_receipt(i, start_ms, step_ms) + b"\n" for i in range(lo, hi))


def receipts_file(cache_dir: Path, count: int, days: int) -> tuple[Path, int, int]:
    """(the signed receipts' file, the first served_at_ms, the step): cached per day."""
    end_ms = time.time_ns() // 1_000_000 // DAY_MS * DAY_MS - DAY_MS
    start_ms = end_ms - days * DAY_MS
    step_ms = days * DAY_MS // count
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"billing-receipts-{CACHE_VERSION}-t{start_ms}-d{days}-n{count}.jsonl"
    for old in cache_dir.glob("billing-receipts-*.jsonl"):
        if old != path:
            old.unlink(missing_ok=True)  # another day's receipts: their served times are stale
    if path.exists():
        return path, start_ms, step_ms
    partial = path.with_suffix(".partial")
    starts = range(0, count, _SIGN_CHUNK)
    with partial.open("wb") as out, ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        ends = [min(lo + _SIGN_CHUNK, count) for lo in starts]
        for chunk in pool.map(_sign_range, starts, ends, [start_ms] * len(starts),
                              [step_ms] * len(starts)):  # fmt: skip
            out.write(chunk)
    partial.rename(path)
    return path, start_ms, step_ms


def build(data_dir: Path, path: Path, batch: int, start_ms: int, out: Report) -> int:
    """The log: catalog, then receipts batch by batch at their log time; its catalog size."""
    data_dir.mkdir(parents=True)
    for name, key in (("log.key", LOG_KEY), ("operator.key", OPERATOR_KEY)):
        (data_dir / name).write_text(format_skey(key) + "\n")
        (data_dir / name).chmod(0o600)
    storage = Storage.open(f"sqlite:///{data_dir / 'log.db'}")
    log = LogIdentity(ORIGIN, LOG_KEY)
    entries = catalog()
    sequence(storage, log, entries, start_ms - 1000)
    started = time.perf_counter()
    done = 0
    with path.open("rb") as lines:
        pending: list[Receipt] = []
        for line in lines:
            receipt = decode_entry(line.rstrip(b"\n"))
            assert isinstance(receipt, Receipt)
            pending.append(receipt)
            if len(pending) == batch:
                sequence(storage, log, pending, pending[-1].served_at_ms + 1000)
                done += len(pending)
                pending = []
                if done % 100_000 == 0:
                    out.note(f"  built {done:,} ({time.perf_counter() - started:.0f} s)")
        if pending:
            sequence(storage, log, pending, pending[-1].served_at_ms + 1000)
    storage.close()
    return len(entries)


def floor_items(data_dir: Path, start: int, count: int) -> list[bytes]:
    """``count`` logged entries from ``start``, read back from the log's database."""
    storage = Storage.open(f"sqlite:///{data_dir / 'log.db'}")
    try:
        found: list[bytes] = []
        while len(found) < count:
            records = storage.entries(start + len(found), start + min(count, len(found) + 10_000))
            if not records:
                break
            found += [r.data for r in records]
        return found
    finally:
        storage.close()


def time_floor(items: Sequence[bytes]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of decoding and hashing ``items`` in a bare loop."""
    start, cpu = time.perf_counter(), time.process_time()
    for data in items:
        decode_entry(data)
        leaf_hash(data)
    return time.perf_counter() - start, time.process_time() - cpu


def measure_floor(
    items: Sequence[bytes], repeat: int, when: str, out: Report
) -> tuple[float, float]:
    wall, cpu = min(time_floor(items) for _ in range(repeat))
    out.note(
        f"floor {when}: {len(items):,} entries decoded and hashed in {wall:.2f} s ({cpu:.2f} s "
        f"of CPU; fastest of {repeat}), {load()}"
    )
    return wall, cpu


def run_billing(url: str, workdir: Path, through: str, name: str) -> tuple[float, float, int, str]:
    """One ``meterlog billing run`` child: (wall s, CPU s, peak RSS KiB, stderr)."""
    meterlog = Path(sys.executable).with_name("meterlog")
    argv = [str(meterlog), "billing", "run", "--log", url, "--key", str(workdir / "log.vkey"),
            "--policy", str(workdir / "policy.toml"), "--billing-key-file",
            str(workdir / "billing.key"), "--out", str(workdir / name), "--through", through,
            "--no-append", "--no-cache"]  # fmt: skip
    errors = workdir / f"{name}.stderr"
    started = time.perf_counter()
    with errors.open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    text = errors.read_text()
    if process.returncode != 0:
        raise BenchError(f"billing run exited {process.returncode}:\n{text[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="receipts in the log")
    parser.add_argument("--days", type=int, default=10, help="days the receipts span")
    parser.add_argument("--batch", type=int, default=10_000, help="receipts per sequencing")
    parser.add_argument("--floor-entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="floor runs; the fastest is kept")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "meterlog-bench"
    )
    parser.add_argument("--keep", type=Path, help="build the log here and keep it (reused)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.entries % (2 * args.batch):
        parser.error("--entries must be a multiple of twice --batch (a checkpoint at half)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Report(args.json)
    started = time.perf_counter()
    path, start_ms, _ = receipts_file(args.cache_dir, args.entries, args.days)
    out.note(
        f"receipts: {args.entries:,} signed, from {path} ({time.perf_counter() - started:.0f} s)"
    )
    workdir = Path(tempfile.mkdtemp(prefix="meterlog-billing-"))
    data_dir = (args.keep or workdir) / "data"
    try:
        catalog_size = len(catalog())
        if not (data_dir / "log.db").exists():
            started = time.perf_counter()
            build(data_dir, path, args.batch, start_ms, out)
            out.note(f"log built in {time.perf_counter() - started:.0f} s: {data_dir}")
        items = floor_items(data_dir, catalog_size, args.floor_entries)
        floors = [measure_floor(items, args.repeat, "before the runs", out)]
        (workdir / "log.vkey").write_text(format_vkey(LOG_KEY.verifier()) + "\n")
        (workdir / "billing.key").write_text(format_skey(BILLING_KEY) + "\n")
        (workdir / "policy.toml").write_text(POLICY)
        process, url = serve(data_dir, workdir / "server.log")
        try:
            half = catalog_size + args.entries // 2
            results = {}
            for name, through in (("half", str(half)), ("full", "latest")):
                server_cpu = cpu_s(process.pid)
                wall, cpu, rss_kib, stderr = run_billing(url, workdir, through, name)
                found = _ANNOUNCED.search(stderr)
                if found is None:
                    raise BenchError(f"the run said nothing of its range:\n{stderr[-2000:]}")
                size = int(found[2])
                results[name] = (size, wall, cpu, rss_kib)
                statements = len(
                    json.loads((workdir / name / "run.json").read_text())["statements"]
                )
                out.note(
                    f"run through {through}: {size:,} entries in {wall:.1f} s ({cpu:.1f} s of "
                    f"CPU; the server {cpu_s(process.pid) - server_cpu:.1f} s), peak RSS "
                    f"{rss_kib / 1024:.0f} MiB, {statements} statements; {load()}"
                )
        finally:
            process.terminate()
            process.wait(timeout=60)
        floors.append(measure_floor(items, args.repeat, "after the runs", out))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    floor_s, floor_cpu_s = min(floors)
    per_entry, per_entry_cpu = floor_s / len(items), floor_cpu_s / len(items)
    size, wall, cpu, rss = results["full"]
    out.metric(
        "billing_run_s", round(wall, 2), "s", floor=round(per_entry * size, 2),
        ratio=round(wall / (per_entry * size), 2),
        line=f"billing run over {size:,} entries: {wall:.1f} s (floor {per_entry * size:.1f} s "
        f"to decode and hash them; ratio {wall / (per_entry * size):.2f}; target under 20 s)",
    )  # fmt: skip
    out.metric(
        "billing_run_cpu_s", round(cpu, 2), "s", floor=round(per_entry_cpu * size, 2),
        ratio=round(cpu / (per_entry_cpu * size), 2),
        line=f"billing run CPU: {cpu:.1f} s (floor {per_entry_cpu * size:.1f} s of CPU; ratio "
        f"{cpu / (per_entry_cpu * size):.2f}: the work, whatever the load)",
    )  # fmt: skip
    half_size, _, _, half_rss = results["half"]
    out.metric(
        "billing_peak_rss_mib_full", round(rss / 1024, 1), "MiB", floor=round(half_rss / 1024, 1),
        ratio=round(rss / half_rss, 2),
        line=f"peak RSS: {half_rss / 1024:.0f} MiB billing {half_size:,} entries, {rss / 1024:.0f} "
        f"MiB billing {size:,} (ratio {rss / half_rss:.2f}: bounded by the window's keys, not "
        "the range)",
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/billing.py: {exc}", file=sys.stderr)
        sys.exit(1)
