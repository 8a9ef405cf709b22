"""Benchmark: ``meterlog verify monitor --full`` over a large log, and offline bundle checks.

A script, not a test: it prints figures and asserts none. Nothing in meterlog imports it.

1. The log. ``--entries`` receipts (default 1,000,000), signed once and cached by
   bench/ingest.py's ``receipts_file`` (the same files, in ``--cache-dir``), are sequenced
   with the real sequencer (``log_server.sequencer.sequence``, batches of ``--batch``) straight
   into a SQLite database in a temporary data dir, after the registration of their 4 edge
   keys: building a log of 10**6 entries through HTTP would take many minutes, and the
   monitor reads it the same way either way. Then a real ``meterlog serve`` serves it on
   loopback (the build is not timed).
2. The floor, measured in this run before the server starts: the same entries' leaf hashes
   (SHA-256(0x00 || entry)) plus the same receipts' Ed25519 signatures verified
   (``nacl.signing.VerifyKey.verify``), in a bare loop over ``--floor-entries`` of them, with
   keys made and signed messages encoded untimed; the fastest of ``--repeat`` runs, measured
   once before the build and once after the monitor, the faster kept. This is the work a
   full audit cannot skip.
3. The monitor: ``meterlog verify monitor --full --once`` in a fresh state directory, as a
   child process, timed from start to exit; its progress lines go to stderr with --json.
   entries/s = entries / wall time, ratio = our time / floor time (target <= 2); and the
   same per CPU second of the monitor process (all threads) against the floor's CPU time,
   which says how much work it does whatever else runs on the machine.
4. Offline bundles: ``--bundles`` receipts' proof bundles are fetched (GET /v1/receipts),
   then verified in full (checkpoint signature, inclusion, entry, receipt signature by its
   edge key: ``verifier.offline.check_bundle``) in a loop in this process; floor: the same
   two signature verifications per bundle (checkpoint and receipt) in a bare loop.

``--json`` prints one JSON object per line on stdout, exactly
``{"metric", "value", "unit", "floor", "ratio"}``; notes (sizes, load average, CPU) go to
stderr. Run: ``.venv/bin/python bench/verify.py [--entries N] [--json]``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from ingest import edge_key, receipts_file, week_start_ms  # bench/ingest.py, beside this
from nacl.signing import VerifyKey
from report import Report  # bench/report.py, beside this script

from log_server.sequencer import LogIdentity, sequence
from log_server.storage import Storage
from tlog.bundle import parse_bundle
from tlog.entry import EdgeKey, Receipt, canonical_json, decode_entry, sign_edge_key
from tlog.hashing import leaf_hash
from tlog.note import SigningKey, format_skey, format_vkey
from verifier.offline import TrustPolicy, check_bundle

ORIGIN = "bench.example/verify"
LOG_KEY = SigningKey(ORIGIN, b"\x42" * 32)
OPERATOR_KEY = SigningKey(f"{ORIGIN}/operator", b"\x43" * 32)
EDGES = 4
_ANNOUNCED = re.compile(rb"serving the log \S+ at (http://127\.0\.0\.1:\d+)")


class BenchError(Exception):
    """The benchmark could not run as designed."""


def build(data_dir: Path, path: Path, entries: int, batch: int, out: Report) -> None:
    """A data dir holding a log of the edge keys' registrations and ``entries`` receipts."""
    data_dir.mkdir(parents=True)
    for name, key in (("log.key", LOG_KEY), ("operator.key", OPERATOR_KEY)):
        (data_dir / name).write_text(format_skey(key) + "\n")
        (data_dir / name).chmod(0o600)
    storage = Storage.open(f"sqlite:///{data_dir / 'log.db'}")
    log = LogIdentity(ORIGIN, LOG_KEY)
    now_ms = time.time_ns() // 1_000_000
    started = time.perf_counter()
    registrations = [
        sign_edge_key(
            EdgeKey("register", edge_key(e).name, format_vkey(edge_key(e).verifier()), 0),
            OPERATOR_KEY,
        )
        for e in range(EDGES)
    ]
    sequence(storage, log, registrations, now_ms)
    done = 0
    with path.open("rb") as lines:
        while done < entries:
            pending = []
            for line in lines:
                receipt = decode_entry(line.rstrip(b"\n"))
                assert isinstance(receipt, Receipt)
                pending.append(receipt)
                if len(pending) == min(batch, entries - done):
                    break
            sequence(storage, log, pending, now_ms)
            done += len(pending)
            if done % 100_000 < batch:
                out.note(f"  built {done:,} of {entries:,} ({time.perf_counter() - started:.0f} s)")
    storage.close()


def floor_items(path: Path, count: int) -> list[tuple[bytes, VerifyKey, bytes, bytes]]:
    """(entry bytes as logged-ish, key, signed message, signature) of ``count`` receipts."""
    keys = {edge_key(e).name: VerifyKey(edge_key(e).public_key) for e in range(EDGES)}
    items = []
    with path.open("rb") as lines:
        for line in lines:
            entry = line.rstrip(b"\n")
            receipt = decode_entry(entry)
            assert isinstance(receipt, Receipt)
            message = canonical_json(receipt.signed_fields())
            items.append((entry, keys[receipt.edge], message, receipt.signature))
            if len(items) == count:
                break
    return items


def time_floor(items: Sequence[tuple[bytes, VerifyKey, bytes, bytes]]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the bare loop."""
    start, cpu = time.perf_counter(), time.process_time()
    for entry, key, message, signature in items:
        leaf_hash(entry)
        key.verify(message, signature)
    return time.perf_counter() - start, time.process_time() - cpu


def measure_floor(
    items: Sequence[tuple[bytes, VerifyKey, bytes, bytes]], repeat: int, when: str, out: Report
) -> tuple[float, float]:
    """The fastest of ``repeat`` floor runs: (wall seconds, CPU seconds)."""
    wall, cpu = min(time_floor(items) for _ in range(repeat))
    out.note(
        f"floor {when}: {len(items):,} entries hashed and signatures verified in {wall:.2f} s "
        f"({cpu:.2f} s of CPU; fastest of {repeat}), {load()}"
    )
    return wall, cpu


def serve(
    data_dir: Path, log_path: Path, origin: str = ORIGIN, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """``meterlog serve`` on a free loopback port, sequencing nothing (the log is built):
    the process and its URL, once it has announced it."""
    meterlog = Path(sys.executable).with_name("meterlog")
    argv = [str(meterlog), "serve", "--data-dir", str(data_dir), "--origin", origin,
            "--port", "0", "--checkpoint-interval", "3600", *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLOG_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the server exited:\n{log_path.read_text()[-2000:]}")
        found = _ANNOUNCED.search(log_path.read_bytes())
        if found is not None:
            return process, found.group(1).decode()
        time.sleep(0.1)
    process.kill()
    raise BenchError("the server did not start in 60 s")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_monitor(url: str, state: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the monitor process, its stderr)."""
    meterlog = Path(sys.executable).with_name("meterlog")
    argv = [str(meterlog), "verify", "monitor", "--log", url, "--state", str(state), "--full",
            "--once", "--key", format_vkey(LOG_KEY.verifier())]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        raise BenchError(f"the monitor exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, cpu, done.stderr


def fetch_bundles(url: str, count: int) -> list[bytes]:
    bundles: list[bytes] = []
    after = None
    with httpx.Client(timeout=60) as client:
        while len(bundles) < count:
            params = {"consumer": "consumer-1", "limit": "1000"}
            if after is not None:
                params["after"] = str(after)
            page = client.get(f"{url}/v1/receipts", params=params).json()
            bundles += [r["bundle"].encode() for r in page["receipts"]]
            after = page["next_after"]
            if after is None:
                break
    return bundles[:count]


def time_bundles(bundles: Sequence[bytes]) -> float:
    policy = TrustPolicy((LOG_KEY.verifier(),))
    edge_keys = [edge_key(e).verifier() for e in range(EDGES)]
    start = time.perf_counter()
    for data in bundles:
        report = check_bundle(data, policy, edge_keys)
        if not report.ok or report.not_checked != 1:  # 1: no witness policy
            raise BenchError(f"a bundle did not verify: {report.to_json()}")
    return time.perf_counter() - start


def bundle_floor(bundles: Sequence[bytes]) -> float:
    """Two bare signature checks per bundle: the checkpoint's and the receipt's."""
    log_key = VerifyKey(LOG_KEY.public_key)
    keys = {edge_key(e).name: VerifyKey(edge_key(e).public_key) for e in range(EDGES)}
    items = []
    for data in bundles:
        bundle = parse_bundle(data)
        text, _, lines = bundle.checkpoint.partition(b"\n\n")
        first = lines.split(b"\n")[0]  # "— <name> <base64(key ID || signature)>"
        sig = base64.b64decode(first.rsplit(b" ", 1)[1])[4:]
        receipt = decode_entry(bundle.extra or b"")
        assert isinstance(receipt, Receipt)
        message = canonical_json(receipt.signed_fields())
        items.append((text + b"\n", sig, keys[receipt.edge], message, receipt.signature))
    start = time.perf_counter()
    for text, sig, key, message, signature in items:
        log_key.verify(text, sig)
        key.verify(message, signature)
    return time.perf_counter() - start


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="receipts in the log")
    parser.add_argument("--batch", type=int, default=10_000, help="entries per sequencing")
    parser.add_argument("--floor-entries", type=int, default=100_000)
    parser.add_argument("--bundles", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3, help="floor runs; the fastest is kept")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "meterlog-bench"
    )
    parser.add_argument("--keep", type=Path, help="build the log here and keep it (reused)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


def audit(
    data_dir: Path, workdir: Path, bundles: int, out: Report
) -> tuple[int, float, float, list[bytes]]:
    """Serve the log, run the monitor over it, fetch bundles: (tree size, wall seconds,
    CPU seconds of the monitor, bundles)."""
    process, url = serve(data_dir, workdir / "server.log")
    try:
        size: int = httpx.get(f"{url}/healthz", timeout=30).json()["tree_size"]
        out.note(f"server at {url}, tree size {size:,}; {load()}")
        server_cpu = cpu_s(process.pid)
        wall, cpu, stderr = run_monitor(url, workdir / "state")
        server_cpu = cpu_s(process.pid) - server_cpu
        cores = server_cpu / wall
        out.note(
            f"monitor: {size:,} entries in {wall:.1f} s ({cpu:.1f} s of CPU); server used "
            f"{cores:.2f} cores; {load()}"
        )
        for line in [line for line in stderr.splitlines() if "entries/s" in line][-3:]:
            out.note("  " + line.strip())
        fetched = fetch_bundles(url, bundles)
    finally:
        process.terminate()
        process.wait(timeout=60)
    state = json.loads((workdir / "state" / "state.json").read_text())
    if state["next_index"] != size or state["problems"]:
        raise BenchError(f"the monitor did not audit everything cleanly: {state['next_index']}")
    return size, wall, cpu, fetched


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Report(args.json)
    started = time.perf_counter()
    path = receipts_file(args.cache_dir, args.entries, EDGES, week_start_ms())
    seconds = time.perf_counter() - started
    out.note(f"receipts: {args.entries:,} signed, from {path} ({seconds:.0f} s)")
    items = floor_items(path, min(args.floor_entries, args.entries))
    floors = [measure_floor(items, args.repeat, "before the build", out)]
    workdir = Path(tempfile.mkdtemp(prefix="meterlog-verify-"))
    data_dir = (args.keep or workdir) / "data"
    try:
        if not (data_dir / "log.db").exists():
            started = time.perf_counter()
            build(data_dir, path, args.entries, args.batch, out)
            out.note(f"log built in {time.perf_counter() - started:.0f} s: {data_dir}")
        size, wall, cpu, bundles = audit(data_dir, workdir, args.bundles, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    floors.append(measure_floor(items, args.repeat, "after the monitor", out))
    # The faster of the two floors: the machine is shared, and the ratio must not flatter.
    floor_s, floor_cpu_s = min(floors)
    floor_rate, floor_cpu_rate = len(items) / floor_s, len(items) / floor_cpu_s
    rate = size / wall
    out.metric(
        "monitor_full_entries_per_s",
        round(rate),
        "entries/s",
        floor=round(floor_rate),
        ratio=round(floor_rate / rate, 2),
        line=f"monitor --full: {rate:,.0f} entries/s (floor {floor_rate:,.0f}/s; ratio "
        f"{floor_rate / rate:.2f}, our time / floor time; target <= 2)",
    )
    cpu_rate = size / cpu
    out.metric(
        "monitor_full_entries_per_cpu_s",
        round(cpu_rate),
        "entries/CPU-s",
        floor=round(floor_cpu_rate),
        ratio=round(floor_cpu_rate / cpu_rate, 2),
        line=f"monitor --full: {cpu_rate:,.0f} entries per CPU second, all threads (floor "
        f"{floor_cpu_rate:,.0f}; ratio {floor_cpu_rate / cpu_rate:.2f}: the work, whatever "
        "the load)",
    )
    bundle_s = min(time_bundles(bundles) for _ in range(args.repeat))
    bundle_floor_s = min(bundle_floor(bundles) for _ in range(args.repeat))
    brate, bfloor = len(bundles) / bundle_s, len(bundles) / bundle_floor_s
    out.metric(
        "offline_bundles_per_s",
        round(brate),
        "bundles/s",
        floor=round(bfloor),
        ratio=round(bfloor / brate, 2),
        line=f"offline bundles: {brate:,.0f} verified/s over {len(bundles):,} (floor "
        f"{bfloor:,.0f}/s: two bare signature checks each; ratio {bfloor / brate:.2f})",
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/verify.py: {exc}", file=sys.stderr)
        sys.exit(1)
