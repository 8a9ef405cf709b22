"""Benchmark: receipt ingest through the log server's HTTP API, against a signature floor.

A script, not a test: it prints figures and asserts none. It starts ``meterlog serve`` as a
child process on loopback with SQLite in a fresh temporary data dir, registers ``--edges``
edge keys through ``POST /v1/admin/edge-keys``, and submits pre-signed receipts to
``POST /v1/receipts`` in batches of ``--batch`` (256) as JSON Lines, with an aiohttp client in
this process. Nothing in meterlog imports this file.

The server runs with its defaults (pool sealed every 0.5 s or at 4,096 entries, SQLite with
``synchronous=FULL``) unless ``--pool-interval`` is given; no ``METERLOG_*`` variable reaches
it. It is stopped with SIGTERM at the end, and its data dir deleted.

Receipts. Receipt ``i`` (request_id ``bench-<i>``) is signed by edge key ``i % edges``; the
keys are derived from fixed seeds and ``served_at_ms`` is the latest multiple of 7 days
since the Unix epoch, so the receipts stay the same for a week and within the log's 30-day
``max_age``. Signing 10**6 receipts takes about two minutes on 2 cores, so they are signed
in a process pool once and cached as JSON Lines in ``--cache-dir`` (default
``$TMPDIR/meterlog-bench``, about 560 MB for 10**6); a cached file of at least as many
receipts for the same week is reused, and files of other weeks are deleted. All request
bodies are built before any timing starts.

Phases, in this order (``small`` = 10**4, ``big`` = ``--big-tree``, ``W`` = ``--receipts``):

1. floor: a bare loop over ``--floor-receipts`` of the same receipts doing only
   ``nacl.signing.VerifyKey.verify(message, signature)`` (keys made and messages encoded
   before timing), the fastest of ``--repeat`` runs; before the server starts, so it takes
   no CPU from the floor. This is the one piece of work per receipt the log cannot skip.
2. run 1, closed loop (``--concurrency`` batches in flight, a new one sent as each answer
   arrives) from the empty tree up to ``small + W``, then ``2 x --concurrency`` batches
   more (the drain: a closed loop's last answers come as its batches in flight run out,
   at falling concurrency, and no window includes them); the rate "at 10**4" is measured
   while the tree grows from ``small`` to ``small + W``. The part below 10**4 is the warm-up.
3. latency: ``W`` receipts sent open loop, one batch every ``batch / rate`` seconds, with
   ``rate`` half the rate measured at 10**4 (or ``--latency-rate``), whatever the answers do.
   A batch's latency is from the moment it was due to be sent to the moment its answer (with
   a proof bundle for every receipt) has been read: submit-to-proof, as an edge sees it.
4. run 2, closed loop again, up to ``big + W`` and a drain: the rate "at big" is measured
   while the tree grows from ``big`` to ``big + W``, and the sustained rate over the whole of
   run 2 but its drain.

Rates count receipts answered ``logged``: every answer must be HTTP 200 with one ``logged``
result per receipt, else the benchmark stops with an error. Over an interval of tree sizes
the rate is (receipts answered between the first answer that brings the count to the lower
size and the first that brings it to the upper size) / (the time between those answers);
the seals answer many batches at once, so the bounds move to whole seals. The first bundle
of run 1 is verified in full (checkpoint signature and inclusion) against the log's key.
Notes (stderr with ``--json``) give each phase's CPU use of the server process and of this
one (from /proc and ``time.process_time``; the client needs about 0.01 core, so it is not
the bottleneck) and the 1-minute load average before and after, to judge a run by.

Figures, with ``--json`` one JSON object per line on stdout, each exactly
``{"metric", "value", "unit", "floor", "ratio"}`` (floor and ratio null where they do not
apply); notes then go to stderr. Without ``--json`` readable lines go to stdout.

- ``receipts_per_s_sustained``, ``receipts_per_s_at_<small>``, ``receipts_per_s_at_<big>``:
  ``value`` receipts/s, ``floor`` the floor's receipts/s, ``ratio`` our time / floor time
  (= floor / value; 1.0 would mean the log costs no more than checking the signatures).
- ``throughput_flatness``: rate at big / rate at small (1.0: no slow-down as the tree grows).
- ``cpu_flatness``: the server's CPU time per receipt at small / at big, over the same
  windows (its processes' user + system time from /proc, read at every answer). On a shared
  machine other work changes the rates far more than the CPU time the server spends per
  receipt, so this tells whether the tree's growth costs anything when the rates are noisy.
- ``latency_load_receipts_per_s``: the rate the open-loop phase achieved; ``ratio`` it / the
  rate at small (about 0.5).
- ``latency_p50_s``, ``latency_p99_s``: submit-to-proof latency of the open-loop batches.
- ``server_peak_rss_mib``: VmHWM of the server process at the end, from /proc/<pid>/status.

Run: ``.venv/bin/python bench/ingest.py [--quick] [--big-tree N] [--receipts W] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cache
from hashlib import sha256
from itertools import islice
from pathlib import Path

import aiohttp
from nacl.signing import VerifyKey
from report import Report  # bench/report.py, beside this script

from tlog.bundle import parse_bundle, verify_bundle
from tlog.entry import Receipt, canonical_json, decode_entry, encode_entry, sign_receipt
from tlog.note import SigningKey, format_vkey, parse_vkey

SMALL_TREE = 10_000
WEEK_MS = 7 * 86_400_000
CACHE_VERSION = "v1"
SIGN_CHUNK = 5_000
KEEPALIVE_S = 2.0
CHILDREN_RESCAN_S = 1.0
LOGGED = b'"status":"logged"'


class BenchError(Exception):
    """The benchmark could not run as designed (the server failed or refused receipts)."""


# -- receipts -----------------------------------------------------------------------------


@cache
def edge_key(e: int) -> SigningKey:
    """Edge key ``e``, the same in every run."""
    return SigningKey(f"bench-edge-{e}", sha256(b"meterlog bench edge %d" % e).digest())


def make_receipt(i: int, edges: int, served_at_ms: int) -> bytes:
    """The canonical, signed leaf bytes of receipt ``i``."""
    receipt = Receipt(
        request_id=f"bench-{i}",
        edge=f"bench-edge-{i % edges}",
        consumer_id=f"consumer-{i % 1000}",
        token_id=f"token-{i % 1000}",
        job_id=f"job-{i % 5000}" if i % 2 else None,
        scope=("training", "inference", "preview")[i % 3],
        content_id="sha256:" + sha256(b"content %d" % (i % 10_000)).hexdigest(),
        creator_id=f"creator-{i % 100}",
        manifest="sha256:" + sha256(b"manifest %d" % (i % 10_000)).hexdigest(),
        bytes_sent=1_000 + (i * 7_919) % 10_000_000,
        cache="hit" if i % 4 else "miss",
        served_at_ms=served_at_ms,
    )
    return encode_entry(sign_receipt(receipt, edge_key(i % edges)))


def _sign_range(lo: int, hi: int, edges: int, served_at_ms: int) -> bytes:
    return b"".join(make_receipt(i, edges, served_at_ms) + b"\n" for i in range(lo, hi))


def week_start_ms() -> int:
    return time.time_ns() // 1_000_000 // WEEK_MS * WEEK_MS


def receipts_file(cache_dir: Path, count: int, edges: int, served_at_ms: int) -> Path:
    """A JSON Lines file of at least ``count`` receipts: a cached one, or one signed now."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"receipts-{CACHE_VERSION}-e{edges}-t(\d+)-n(\d+)\.jsonl")
    usable: list[tuple[int, Path]] = []
    for path in cache_dir.glob("receipts-*.jsonl"):
        found = pattern.fullmatch(path.name)
        if found is None or int(found[1]) != served_at_ms:
            path.unlink(missing_ok=True)  # another week's (or format's) receipts: stale
        elif int(found[2]) >= count:
            usable.append((int(found[2]), path))
    if usable:
        return min(usable)[1]
    path = cache_dir / f"receipts-{CACHE_VERSION}-e{edges}-t{served_at_ms}-n{count}.jsonl"
    partial = path.with_suffix(".partial")
    workers = os.cpu_count() or 1
    starts = range(0, count, SIGN_CHUNK)
    with partial.open("wb") as out, ProcessPoolExecutor(workers) as pool:
        for chunk in pool.map(
            _sign_range,
            starts,
            [min(lo + SIGN_CHUNK, count) for lo in starts],
            [edges] * len(starts),
            [served_at_ms] * len(starts),
        ):
            out.write(chunk)
    partial.rename(path)
    return path


def read_bodies(path: Path, batches: int, batch: int) -> list[bytes]:
    """The first ``batches * batch`` receipts of ``path`` as request bodies of ``batch``."""
    bodies = []
    with path.open("rb") as lines:
        for _ in range(batches):
            chunk = list(islice(lines, batch))
            if len(chunk) != batch:
                raise BenchError(f"{path} holds fewer receipts than it is named for")
            bodies.append(b"".join(chunk))
    return bodies


# -- the floor ------------------------------------------------------------------------------


def floor_inputs(
    bodies: Sequence[bytes], count: int, edges: int
) -> list[tuple[VerifyKey, bytes, bytes]]:
    """(key, signed message, signature) of the first ``count`` receipts, made untimed."""
    keys = {edge_key(e).name: VerifyKey(edge_key(e).public_key) for e in range(edges)}
    items = []
    for line in (line for body in bodies for line in body.splitlines()):
        receipt = decode_entry(line)
        assert isinstance(receipt, Receipt)
        message = canonical_json(receipt.signed_fields())
        items.append((keys[receipt.edge], message, receipt.signature))
        if len(items) == count:
            break
    return items


def time_floor(items: Sequence[tuple[VerifyKey, bytes, bytes]]) -> float:
    """Seconds to verify every signature in a bare loop."""
    start = time.perf_counter()
    for key, message, signature in items:
        key.verify(message, signature)
    return time.perf_counter() - start


# -- the server -----------------------------------------------------------------------------


def meterlog_command() -> list[str]:
    beside = Path(sys.executable).with_name("meterlog")
    found = str(beside) if beside.exists() else shutil.which("meterlog")
    if found is None:
        raise BenchError("no `meterlog` command: install meterlog (make test, or pip install -e .)")
    return [found]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path
    _pids: list[int] = field(default_factory=list)
    _scanned: float = 0.0

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def status(self, field_name: str) -> int:
        """A ``VmXXX:`` field of /proc/<pid>/status, in KiB."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(rf"^{field_name}:\s+(\d+) kB$", text, re.MULTILINE)
        if found is None:
            raise BenchError(f"no {field_name} in /proc/{self.process.pid}/status")
        return int(found[1])

    def cpu_s(self) -> float:
        """User + system CPU seconds the server has used so far: all threads of its process
        and of its child processes (the signature checkers, which start on first use), looked
        for again every CHILDREN_RESCAN_S."""
        now = time.monotonic()
        if not self._pids or now - self._scanned > CHILDREN_RESCAN_S:
            self._pids, self._scanned = [self.process.pid, *self._children()], now
        ticks = 0
        for pid in self._pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:  # a child that ended: look for its successor next time
                self._pids = []
                continue
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def _children(self) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = stat.read_text().rpartition(")")[2].split()[1]
            except OSError:
                continue
            if parent == str(self.process.pid):
                found.append(int(stat.parent.name))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graceful: seal what is left, then exit
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(workdir: Path, pool_interval: float | None) -> Server:
    data_dir = workdir / "data"
    log_path = workdir / "server.log"
    port = free_port()
    command = [*meterlog_command(), "serve", "--data-dir", str(data_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    if pool_interval is not None:
        command += ["--pool-interval", str(pool_interval)]
    # Only the flags above configure the server: no METERLOG_* settings from outside.
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLOG_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return Server(process, f"http://127.0.0.1:{port}", data_dir, log_path)


async def wait_ready(session: aiohttp.ClientSession, server: Server) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(
                f"the server exited ({server.process.returncode}):\n{server.log_tail()}"
            )
        try:
            async with session.get(server.url + "/healthz") as response:
                if response.status == 200 and (await response.json())["ok"]:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise BenchError(f"the server did not become ready in 60 s:\n{server.log_tail()}")


async def tree_size(session: aiohttp.ClientSession, server: Server) -> int:
    async with session.get(server.url + "/healthz") as response:
        size: int = (await response.json())["tree_size"]
        return size


async def register_edges(session: aiohttp.ClientSession, server: Server, edges: int) -> None:
    token = (server.data_dir / "operator.token").read_text().strip()
    for e in range(edges):
        body = {
            "action": "register",
            "edge": edge_key(e).name,
            "key": format_vkey(edge_key(e).verifier()),
            "valid_from_ms": 0,
        }
        async with session.post(
            server.url + "/v1/admin/edge-keys",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            answer = await response.read()
            if response.status != 200 or json.loads(answer).get("status") != "logged":
                raise BenchError(f"registering edge {e}: HTTP {response.status} {answer[:300]!r}")


# -- load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The answers between two answered counts: receipts/s and server CPU per receipt."""

    rate: float
    receipts: int
    seconds: float
    cpu_us: float


@dataclass
class Run:
    """Answers of one phase, in arrival order: (monotonic time read, receipts logged, the
    server's CPU seconds so far)."""

    answers: list[tuple[float, int, float]] = field(default_factory=list)
    first_answer: bytes = b""
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    wall_s: float = 0.0

    def rate(self, lo: int, hi: int) -> Window:
        """The window while the answered count goes from ``lo`` to ``hi`` (see the module
        docstring)."""
        count = 0
        start: tuple[float, int, float] | None = None
        for t, n, cpu in self.answers:
            count += n
            if start is None and count >= lo:
                start = (t, count, cpu)
            if count >= hi:
                if start is None or t <= start[0]:
                    break
                receipts, seconds = count - start[1], t - start[0]
                return Window(
                    receipts / seconds, receipts, seconds, (cpu - start[2]) / receipts * 1e6
                )
        raise BenchError(f"too few answers to measure between {lo} and {hi} receipts")


async def post_batch(session: aiohttp.ClientSession, url: str, body: bytes, n: int) -> bytes:
    async with session.post(
        url, data=body, headers={"Content-Type": "application/jsonl"}
    ) as response:
        answer = await response.read()
        if response.status != 200 or answer.count(LOGGED) != n:
            raise BenchError(f"a batch was not logged: HTTP {response.status} {answer[:300]!r}")
        return answer


def new_session() -> aiohttp.ClientSession:
    """A client with its own connections. Idle ones are dropped after KEEPALIVE_S, before
    the server (uvicorn: 5 s) closes them, so no request races a server-side close."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300))


async def closed_loop(
    server: Server,
    bodies: Sequence[bytes],
    batch: int,
    concurrency: int,
) -> Run:
    run = Run()
    url = server.url + "/v1/receipts"
    queue: Iterator[bytes] = iter(bodies)

    async def worker() -> None:
        for body in queue:  # one event loop: each body is taken by exactly one worker
            answer = await post_batch(session, url, body, batch)
            run.answers.append((time.perf_counter(), batch, server.cpu_s()))
            if not run.first_answer:
                run.first_answer = answer

    cpu0, client0, wall0 = server.cpu_s(), time.process_time(), time.perf_counter()
    async with new_session() as session:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.server_cpu_s = server.cpu_s() - cpu0
    run.client_cpu_s = time.process_time() - client0
    run.wall_s = time.perf_counter() - wall0
    return run


async def open_loop(
    server: Server,
    bodies: Sequence[bytes],
    batch: int,
    rate: float,
) -> tuple[list[float], float, Run]:
    """Latencies (s) of batches sent every ``batch / rate`` s, and the rate achieved."""
    run = Run()
    url = server.url + "/v1/receipts"
    interval = batch / rate

    async def send(session: aiohttp.ClientSession, body: bytes, due: float) -> float:
        await post_batch(session, url, body, batch)
        done = time.perf_counter()
        run.answers.append((done, batch, server.cpu_s()))
        return done - due

    cpu0, client0 = server.cpu_s(), time.process_time()
    start = time.perf_counter() + 0.05
    tasks = []
    async with new_session() as session:
        for k, body in enumerate(bodies):
            due = start + k * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(send(session, body, due)))
        latencies = await asyncio.gather(*tasks)
    run.server_cpu_s = server.cpu_s() - cpu0
    run.client_cpu_s = time.process_time() - client0
    run.wall_s = time.perf_counter() - start
    achieved = len(bodies) * batch / run.wall_s
    return list(latencies), achieved, run


def check_first_bundle(run: Run, server: Server, bodies: Sequence[bytes]) -> int:
    """Verify the first answer's first bundle in full; the index it proves."""
    log_key = parse_vkey((server.data_dir / "log.vkey").read_text().strip())
    result = json.loads(run.first_answer)["results"][0]
    verified = verify_bundle(parse_bundle(result["bundle"].encode()), [log_key])
    # The log adds logged_at_ms; without it the entry must be one of the bytes submitted.
    unlogged = encode_entry(replace(decode_entry(verified.entry), logged_at_ms=None))
    if not any(unlogged in body.splitlines() for body in bodies):
        raise BenchError("the verified bundle proves an entry that was not submitted")
    return verified.index


# -- reporting --------------------------------------------------------------------------------


def cpu_note(out: Report, name: str, server: Server, run: Run) -> None:
    """CPU use of the phase; the server's CPU time per receipt is the figure that other work
    on the machine disturbs least (it slows the server, but adds little to its CPU time)."""
    receipts = sum(n for _, n, _ in run.answers)
    out.note(
        f"{name}: server {run.server_cpu_s / run.wall_s:.2f} cores "
        f"({run.server_cpu_s / receipts * 1e6:.0f} us of CPU per receipt), client (this "
        f"process) {run.client_cpu_s / run.wall_s:.2f} cores, over {run.wall_s:.1f} s; "
        f"server peak RSS so far {server.status('VmHWM') / 1024:.1f} MiB"
    )


def report_rate(out: Report, name: str, what: str, rate: float, floor_rate: float) -> None:
    ratio = floor_rate / rate
    out.metric(
        name,
        round(rate),
        "receipts/s",
        floor=round(floor_rate),
        ratio=round(ratio, 2),
        line=f"{what}: {rate:,.0f} receipts/s (floor {floor_rate:,.0f}/s; ratio {ratio:.2f}, "
        "our time / floor time)",
    )


# -- main -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    big: int
    window: int
    batch: int
    concurrency: int
    edges: int
    floor_receipts: int
    repeat: int
    latency_rate: float | None
    pool_interval: float | None
    cache_dir: Path

    def batches(self, receipts: int) -> int:
        return max(0, math.ceil(receipts / self.batch))

    @property
    def drain(self) -> int:
        """Batches sent after a closed loop's measured windows: its last answers come as the
        batches in flight run out, at falling concurrency, and no window may include them."""
        return 2 * self.concurrency


def parse_args(argv: Sequence[str] | None) -> tuple[Plan, bool]:
    parser = argparse.ArgumentParser(
        description="Time receipt ingest through the log's HTTP API against a signature floor."
    )
    parser.add_argument("--quick", action="store_true", help="--big-tree 100000 --receipts 25600")
    parser.add_argument("--big-tree", type=int, help="the large tree size (default 1,000,000)")
    parser.add_argument(
        "--receipts",
        type=int,
        help="receipts per measurement: each throughput window and the latency phase "
        "(default 51,200; rounded up to whole batches)",
    )
    parser.add_argument("--batch", type=int, default=256, help="receipts per request")
    parser.add_argument("--concurrency", type=int, default=32, help="batches in flight")
    parser.add_argument("--edges", type=int, default=4, help="edge keys registered")
    parser.add_argument(
        "--floor-receipts", type=int, default=50_000, help="receipts verified by the floor"
    )
    parser.add_argument("--repeat", type=int, default=3, help="floor runs; the fastest is kept")
    parser.add_argument(
        "--latency-rate", type=float, help="receipts/s of the latency phase (default: half max)"
    )
    parser.add_argument(
        "--pool-interval", type=float, help="passed to meterlog serve (default: its own, 0.5 s)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "meterlog-bench",
        help="where signed receipts are cached",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per metric")
    args = parser.parse_args(argv)
    big = args.big_tree or (100_000 if args.quick else 1_000_000)
    receipts = args.receipts or (25_600 if args.quick else 51_200)
    window = math.ceil(receipts / args.batch) * args.batch
    if args.batch < 1 or args.concurrency < 1 or args.edges < 1 or args.repeat < 1:
        parser.error("--batch, --concurrency, --edges and --repeat must be positive")
    if big < SMALL_TREE + 3 * window:
        parser.error(f"--big-tree must be at least {SMALL_TREE:,} + 3 x --receipts")
    plan = Plan(
        big,
        window,
        args.batch,
        args.concurrency,
        args.edges,
        max(1, args.floor_receipts),
        args.repeat,
        args.latency_rate,
        args.pool_interval,
        args.cache_dir,
    )
    return plan, args.json


async def load(plan: Plan, out: Report, server: Server, bodies: list[bytes]) -> dict[str, float]:
    figures: dict[str, float] = {}
    b = plan.batch
    async with new_session() as session:
        await wait_ready(session, server)
        await register_edges(session, server, plan.edges)
        base = await tree_size(session, server)
    out.note(
        f"server up at {server.url} (pid {server.process.pid}); {plan.edges} edge keys "
        f"registered, tree size {base}"
    )

    n1 = plan.batches(SMALL_TREE + plan.window - base) + plan.drain
    nl = plan.batches(plan.window)
    run1 = await closed_loop(server, bodies[:n1], b, plan.concurrency)
    small = run1.rate(SMALL_TREE - base, SMALL_TREE + plan.window - base)
    figures["small"], figures["small_cpu_us"] = small.rate, small.cpu_us
    index = check_first_bundle(run1, server, bodies)
    out.note(
        f"run 1: {n1 * b:,} receipts closed loop; at tree size {SMALL_TREE:,}: "
        f"{small.receipts:,} receipts in {small.seconds:.2f} s, {small.cpu_us:.0f} us of server "
        f"CPU per receipt (first bundle verified in full, index {index})"
    )
    cpu_note(out, "run 1", server, run1)

    target = plan.latency_rate or small.rate / 2
    latencies, achieved, lrun = await open_loop(server, bodies[n1 : n1 + nl], b, target)
    figures["latency_rate"] = achieved
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    figures["p50"], figures["p99"] = statistics.median(latencies), cuts[98]
    out.note(
        f"latency: {nl * b:,} receipts open loop, {nl} batches due every "
        f"{b / target * 1e3:.1f} ms (target {target:,.0f}/s), max {max(latencies):.3f} s"
    )
    cpu_note(out, "latency", server, lrun)

    size = base + (n1 + nl) * b
    n2 = plan.batches(plan.big + plan.window - size) + plan.drain
    run2 = await closed_loop(server, bodies[n1 + nl : n1 + nl + n2], b, plan.concurrency)
    first = run2.answers[0][1]
    saturated = (n2 - plan.drain) * b  # receipts answered before the drain
    sustained = run2.rate(first, saturated)
    figures["sustained"] = sustained.rate
    big = run2.rate(plan.big - size, plan.big + plan.window - size)
    figures["big"], figures["big_cpu_us"] = big.rate, big.cpu_us
    out.note(
        f"run 2: {n2 * b:,} receipts closed loop from tree size {size:,}; sustained: "
        f"{sustained.receipts:,} receipts in {sustained.seconds:.1f} s; at tree size "
        f"{plan.big:,}: {big.receipts:,} receipts in {big.seconds:.2f} s, {big.cpu_us:.0f} us "
        "of server CPU per receipt"
    )
    cpu_note(out, "run 2", server, run2)
    tenths = []
    for k in range(10):
        lo, hi = max(first, k * saturated // 10), (k + 1) * saturated // 10
        tenth = run2.rate(lo, hi)
        tenths.append(f"{size + lo:,}..{size + hi:,}: {tenth.rate:,.0f}/s ({tenth.cpu_us:.0f} us)")
    out.note(
        "run 2 by tenths (tree sizes: receipts/s (server CPU per receipt)): " + "; ".join(tenths)
    )
    async with new_session() as session:
        out.note(f"final tree size {await tree_size(session, server):,}")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    plan, as_json = parse_args(argv)
    out = Report(as_json)
    b = plan.batch
    total_batches = plan.batches(plan.big + plan.window - plan.edges) + 1 + 2 * plan.drain
    served_at_ms = week_start_ms()
    started = time.perf_counter()
    path = receipts_file(plan.cache_dir, total_batches * b, plan.edges, served_at_ms)
    bodies = read_bodies(path, total_batches, b)
    out.note(
        f"receipts: {total_batches * b:,} pre-signed ({plan.edges} edges) from {path}, ready in "
        f"{time.perf_counter() - started:.1f} s; batches of {b}, {plan.concurrency} in flight"
    )

    items = floor_inputs(bodies, plan.floor_receipts, plan.edges)
    floor_s = min(time_floor(items) for _ in range(plan.repeat))
    floor_rate = len(items) / floor_s
    out.note(
        f"floor: {len(items):,} signatures verified in a bare loop in {floor_s:.3f} s "
        f"(fastest of {plan.repeat}), server not yet started"
    )

    out.note(f"load average before the server starts: {os.getloadavg()[0]:.2f} (1 min)")
    with tempfile.TemporaryDirectory(prefix="meterlog-ingest-") as workdir:
        server = start_server(Path(workdir), plan.pool_interval)
        try:
            figures = asyncio.run(load(plan, out, server, bodies))
            hwm_kib = server.status("VmHWM")
            out.note(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min)")
        except BaseException:
            out.note(f"server log (tail):\n{server.log_tail()}")
            raise
        finally:
            server.stop()

    report_rate(out, "receipts_per_s_sustained", "sustained  ", figures["sustained"], floor_rate)
    report_rate(
        out, f"receipts_per_s_at_{SMALL_TREE}", f"at {SMALL_TREE:>9,}", figures["small"], floor_rate
    )
    report_rate(
        out, f"receipts_per_s_at_{plan.big}", f"at {plan.big:>9,}", figures["big"], floor_rate
    )
    flat = figures["big"] / figures["small"]
    out.metric(
        "throughput_flatness",
        round(flat, 3),
        "big/small",
        line=f"flatness:    {flat:.3f} (receipts/s at {plan.big:,} / at {SMALL_TREE:,})",
    )
    cpu_flat = figures["small_cpu_us"] / figures["big_cpu_us"]
    out.metric(
        "cpu_flatness",
        round(cpu_flat, 3),
        "small/big",
        line=f"CPU flatness: {cpu_flat:.3f} (server CPU per receipt at {SMALL_TREE:,}: "
        f"{figures['small_cpu_us']:.0f} us / at {plan.big:,}: {figures['big_cpu_us']:.0f} us)",
    )
    out.metric(
        "latency_load_receipts_per_s",
        round(figures["latency_rate"]),
        "receipts/s",
        ratio=round(figures["latency_rate"] / figures["small"], 2),
        line=f"latency load: {figures['latency_rate']:,.0f} receipts/s achieved open loop "
        f"({figures['latency_rate'] / figures['small']:.2f} x the rate at {SMALL_TREE:,})",
    )
    for name in ("p50", "p99"):
        out.metric(
            f"latency_{name}_s",
            round(figures[name], 4),
            "s",
            line=f"latency {name}: {figures[name]:.3f} s submit-to-proof",
        )
    out.metric(
        "server_peak_rss_mib",
        round(hwm_kib / 1024, 1),
        "MiB",
        line=f"server RSS:  {hwm_kib / 1024:,.1f} MiB peak (VmHWM)",
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/ingest.py: {exc}", file=sys.stderr)
        sys.exit(1)
