"""Benchmark: the edge signer's cost on a static-file origin, and the spool's durable appends.

A script, not a test: it prints figures and asserts none. Nothing in meterlog imports it.

1. HTTP, over real sockets: two uvicorn servers (one process each, this script started with
   ``--serve``) on loopback serve the same ``--files`` files of 10,240 bytes with Starlette's
   StaticFiles, one bare (the floor) and one wrapped in ReceiptMiddleware (a training token
   checked per request, a receipt signed and committed to a durable spool before each
   response completes; no submitter running, so the spool only grows). An aiohttp client in
   this process keeps ``--concurrency`` requests in flight over keep-alive connections and
   checks every answer (200, 10,240 bytes, and a receipt header from the metered server).
   Each of ``--repeat`` rounds sends ``--warmup`` requests, then times ``--requests`` to
   each server in turn (alternating which goes first); the best round of each is kept.
   ``ratio`` is the metered server's time per request over the bare one's; the middleware's
   cost is 1 - (metered rate / bare rate). CPU seconds of both servers and of this client
   during the timed windows are printed, to show which side was the limit.
2. In process: the same two ASGI apps called directly by a minimal driver (no sockets, no
   HTTP parsing), ``--inprocess`` requests with ``--concurrency`` in flight: the
   middleware's cost relative to the static-file app alone, an upper bound on what it can
   cost behind a server.
3. Spool appends with durable writes (WAL, synchronous=FULL) in a fresh spool next to the
   script's temporary files, against a floor measured in the same run: a 600-byte
   ``pwrite`` into a preallocated file followed by ``os.fsync``, ``--appends`` times (the
   least one durable commit costs on this disk). Floor and spool alternate ``--repeat``
   times and the best of each is kept. ``spool_appends_per_s_single`` commits each append
   alone (one fsync each); ``spool_appends_per_s_grouped`` sends ``--appends`` x 10
   appends through SpoolWriter from ``--concurrency`` concurrent tasks, which commits
   whatever is waiting as one transaction.

Figures, with ``--json`` one JSON object per line on stdout, each exactly
``{"metric", "value", "unit", "floor", "ratio"}``; notes (load average, CPU) go to stderr.

Run: ``.venv/bin/python bench/edge.py [--requests N] [--concurrency C] [--repeat R] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from report import Report  # bench/report.py, beside this script

from edge_signer.catalog import build_catalog
from edge_signer.middleware import ReceiptMiddleware
from edge_signer.signer import Delivery, EdgeSigner
from edge_signer.spool import Spool, SpoolWriter
from edge_signer.tokens import AccessGate
from log_server.sockets import listen
from tlog.note import SigningKey
from tlog.token import AccessToken, format_token, sign_token

FILE_SIZE = 10_240
EDGE = SigningKey("bench-edge", hashlib.sha256(b"meterlog bench edge").digest())
MARKET = SigningKey("bench.market", hashlib.sha256(b"meterlog bench market").digest())


class BenchError(Exception):
    """The benchmark could not run as designed."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def training_token() -> str:
    t = now_ms()
    token = AccessToken(MARKET.name, "bench-token", "bench-consumer", "training", t,
                        t + 6 * 3_600_000, job_id="bench-job")  # fmt: skip
    return format_token(sign_token(token, MARKET))


def make_files(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"f{i}.bin").write_bytes(hashlib.sha256(b"%d" % i).digest() * 320)


def build_app(mode: str, files: Path, spool: Path) -> tuple[Any, SpoolWriter | None]:
    """The bare static-file app, or the same wrapped in the middleware (with its writer)."""
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.routing import Mount  # noqa: PLC0415
    from starlette.staticfiles import StaticFiles  # noqa: PLC0415

    static = Starlette(routes=[Mount("/", StaticFiles(directory=files))])
    if mode == "bare":
        return static, None
    writer = SpoolWriter(spool, capacity=100_000_000)
    catalog = build_catalog(files, creator_id="acct:bench", license="https://bench.test/l/1",
                            scopes=("training",))  # fmt: skip
    app = ReceiptMiddleware(
        static,
        signer=EdgeSigner(EDGE),
        catalog=catalog,
        gate=AccessGate([MARKET.verifier()]),
        spool=writer,
    )
    return app, writer


# -- the server (this script, run with --serve) ------------------------------------------------


def serve(mode: str, files: Path, spool: Path) -> None:
    import uvicorn  # noqa: PLC0415

    app, writer = build_app(mode, files, spool)
    if writer is not None:
        writer.start()
    sock = listen("127.0.0.1", 0)  # as `meterlog edge serve-demo` listens: Nagle off
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if writer is not None:
            writer.close()


@dataclass
class ServerProcess:
    mode: str
    process: subprocess.Popen[str]
    url: str

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(mode: str, files: Path, spool: Path) -> ServerProcess:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, str(files), str(spool)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("port "):
        process.kill()
        raise BenchError(f"the {mode} server did not start: {line!r}")
    return ServerProcess(mode, process, f"http://127.0.0.1:{int(line.split()[1])}")


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Window:
    rate: float
    server_cpu_s: float
    client_cpu_s: float
    seconds: float


async def load(
    session: aiohttp.ClientSession, server: ServerProcess, token: str, *, files: int, n: int,
    c: int,
) -> Window:  # fmt: skip
    """``n`` GETs with ``c`` in flight; every answer checked."""
    headers = {"Authorization": f"Bearer {token}"}
    metered = server.mode == "metered"
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            async with session.get(f"{server.url}/f{i % files}.bin", headers=headers) as response:
                body = await response.read()
                if response.status != 200 or len(body) != FILE_SIZE:
                    raise BenchError(f"{server.mode}: HTTP {response.status} {body[:200]!r}")
                if metered and "x-receipt" not in response.headers:
                    raise BenchError("the metered server sent no X-Receipt")

    cpu0, client0, wall0 = server.cpu_s(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    seconds = time.perf_counter() - wall0
    return Window(n / seconds, server.cpu_s() - cpu0, time.process_time() - client0, seconds)


async def http_rounds(
    servers: dict[str, ServerProcess], args: argparse.Namespace, report: Report
) -> dict[str, Window]:
    token = training_token()
    best: dict[str, Window] = {}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for r in range(args.repeat):
            order = ["bare", "metered"] if r % 2 == 0 else ["metered", "bare"]
            for mode in order:
                server = servers[mode]
                await load(session, server, token, files=args.files, n=args.warmup,
                           c=args.concurrency)  # fmt: skip
                window = await load(session, server, token, files=args.files, n=args.requests,
                                    c=args.concurrency)  # fmt: skip
                report.note(
                    f"  round {r + 1} {mode:<7}: {window.rate:8.0f} req/s "
                    f"({window.seconds:.2f} s; server {window.server_cpu_s / window.seconds:.2f} "
                    f"cores, client {window.client_cpu_s / window.seconds:.2f})"
                )
                if mode not in best or window.rate > best[mode].rate:
                    best[mode] = window
    return best


# -- in process ----------------------------------------------------------------------------------


async def drive(app: Any, path: str, token: str) -> int:
    """One GET through ``app`` with a minimal ASGI driver; the body bytes received."""
    received = 0
    done = False

    async def receive() -> dict[str, Any]:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal received
        if message["type"] == "http.response.body":
            received += len(message.get("body", b""))

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80), "headers": [(b"authorization", f"Bearer {token}".encode())],
    }  # fmt: skip
    await app(scope, receive, send)
    return received


async def inprocess(app: Any, n: int, files: int, token: str, concurrency: int) -> float:
    """Requests/s of ``n`` GETs through ``app``, ``concurrency`` at a time."""

    async def worker(numbers: Any) -> None:
        for i in numbers:
            if await drive(app, f"/f{i % files}.bin", token) != FILE_SIZE:
                raise BenchError("the in-process driver did not get the whole file")

    warmup = iter(range(500))
    await asyncio.gather(*(worker(warmup) for _ in range(concurrency)))
    numbers = iter(range(n))
    start = time.perf_counter()
    await asyncio.gather(*(worker(numbers) for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


# -- the spool -----------------------------------------------------------------------------------


def fsync_floor(directory: Path, n: int) -> float:
    """Durable 600-byte writes/s: each a ``pwrite`` into a preallocated file, then ``fsync``
    (as a WAL is reused, no file growth to journal): the least a durable append can cost."""
    path = directory / "fsync-floor"
    size = 4 << 20
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, bytes(size))
        os.fsync(fd)
        start = time.perf_counter()
        for i in range(n):
            os.pwrite(fd, b"x" * 600, i * 600 % (size - 600))
            os.fsync(fd)
        return n / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def receipts(n: int, prefix: str) -> list[Any]:
    signer = EdgeSigner(EDGE)
    t = now_ms()
    return [
        signer.sign(
            Delivery(f"{prefix}-{i}", "bench-consumer", "bench-token", "training",
                     f"sha256:{i:064x}", "acct:bench", "sha256:" + "ab" * 32, FILE_SIZE, "miss",
                     job_id="bench-job"),
            served_at_ms=t,
        )
        for i in range(n)
    ]  # fmt: skip


def spool_single(directory: Path, n: int) -> float:
    items = receipts(n, "single")
    with Spool(directory) as spool:
        start = time.perf_counter()
        for item in items:
            spool.append([item], now_ms())
        return n / (time.perf_counter() - start)


async def spool_grouped(directory: Path, n: int, concurrency: int) -> tuple[float, int]:
    items = receipts(n, "grouped")
    writer = SpoolWriter(directory, capacity=100_000_000)
    writer.start()
    try:
        queue = iter(items)

        async def appender() -> None:
            for item in queue:
                await writer.append(item)

        start = time.perf_counter()
        await asyncio.gather(*(appender() for _ in range(concurrency)))
        rate = n / (time.perf_counter() - start)
        return rate, writer.groups
    finally:
        writer.close()


# -- main ----------------------------------------------------------------------------------------


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="per timed window (20000)")
    parser.add_argument("--warmup", type=int, default=2_000, help="before each window (2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is kept (3)")
    parser.add_argument("--files", type=int, default=100, help="10 KB files served (100)")
    parser.add_argument("--inprocess", type=int, default=20_000, help="in-process requests")
    parser.add_argument("--appends", type=int, default=2_000, help="single durable appends")
    parser.add_argument("--json", action="store_true", help="one JSON object per metric")
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "FILES", "SPOOL"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.serve:
        mode, files, spool = args.serve
        serve(mode, Path(files), Path(spool))
        return 0

    report = Report(args.json)
    report.note(f"load average before: {load_average()} ({os.cpu_count()} cores)")
    workdir = Path(tempfile.mkdtemp(prefix="meterlog-bench-edge-"))
    try:
        files = workdir / "files"
        make_files(files, args.files)
        http_phase(args, files, workdir, report)
        inprocess_phase(args, files, workdir, report)
        spool_phase(args, workdir, report)
        report.note(f"load average after: {load_average()}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def http_phase(args: argparse.Namespace, files: Path, workdir: Path, report: Report) -> None:
    servers = {mode: start(mode, files, workdir / f"spool-{mode}") for mode in ("bare", "metered")}
    try:
        best = asyncio.run(http_rounds(servers, args, report))
    finally:
        for server in servers.values():
            server.stop()
    bare, metered = best["bare"], best["metered"]
    report.metric("static_requests_per_s_bare", round(bare.rate, 1), "req/s",
                  line=f"bare static files:        {bare.rate:8.0f} req/s")  # fmt: skip
    report.metric(
        "static_requests_per_s_metered", round(metered.rate, 1), "req/s",
        floor=round(bare.rate, 1), ratio=round(bare.rate / metered.rate, 3),
        line=f"with ReceiptMiddleware:   {metered.rate:8.0f} req/s "
        f"(time per request x{bare.rate / metered.rate:.2f} the bare server's)",
    )  # fmt: skip
    cost = 1 - metered.rate / bare.rate
    report.metric("middleware_cost", round(cost, 3), "fraction",
                  line=f"middleware cost:          {cost:8.1%} of the bare rate "
                  "(target < 30%)")  # fmt: skip


def inprocess_phase(args: argparse.Namespace, files: Path, workdir: Path, report: Report) -> None:
    token = training_token()

    async def both() -> tuple[float, float]:
        bare_app, _ = build_app("bare", files, workdir / "unused")
        metered_app, writer = build_app("metered", files, workdir / "spool-inprocess")
        assert writer is not None
        writer.start()
        try:
            n, c = args.inprocess, args.concurrency
            return (
                await inprocess(bare_app, n, args.files, token, c),
                await inprocess(metered_app, n, args.files, token, c),
            )
        finally:
            writer.close()

    bare, metered = asyncio.run(both())
    report.metric("inprocess_requests_per_s_bare", round(bare, 1), "req/s",
                  line=f"in process, bare:         {bare:8.0f} req/s")  # fmt: skip
    report.metric(
        "inprocess_requests_per_s_metered", round(metered, 1), "req/s",
        floor=round(bare, 1), ratio=round(bare / metered, 3),
        line=f"in process, metered:      {metered:8.0f} req/s "
        f"(x{bare / metered:.2f} the time per request)",
    )  # fmt: skip


def spool_phase(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    """Floor and spool alternate, ``--repeat`` times, so a busy moment on the shared disk
    does not favour either; the best of each is kept."""
    floor = single = grouped = 0.0
    groups = 1
    for r in range(args.repeat):
        floor = max(floor, fsync_floor(workdir, args.appends))
        single = max(single, spool_single(workdir / f"spool-single-{r}", args.appends))
        rate, made = asyncio.run(
            spool_grouped(workdir / f"spool-grouped-{r}", args.appends * 10, args.concurrency)
        )
        if rate > grouped:
            grouped, groups = rate, made
        report.note(
            f"  round {r + 1}: fsync floor {floor:.0f}/s, single {single:.0f}/s, "
            f"grouped {grouped:.0f}/s (best so far)"
        )
    report.metric("fsyncs_per_s", round(floor, 1), "1/s",
                  line=f"fsync floor:              {floor:8.0f} fsyncs/s")  # fmt: skip
    report.metric(
        "spool_appends_per_s_single", round(single, 1), "appends/s",
        floor=round(floor, 1), ratio=round(floor / single, 3),
        line=f"spool, one per commit:    {single:8.0f} appends/s "
        f"(x{floor / single:.2f} the time of a bare fsync)",
    )  # fmt: skip
    report.metric(
        "spool_appends_per_s_grouped", round(grouped, 1), "appends/s",
        floor=round(floor, 1), ratio=round(floor / grouped, 3),
        line=f"spool, group commit:      {grouped:8.0f} appends/s "
        f"({args.appends * 10 / groups:.0f} appends per commit, {args.concurrency} "
        "appending at once)",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
