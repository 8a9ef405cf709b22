"""Fixtures of the portal's browser tests: a live log on loopback, Chromium, and a liar.

``live_log`` is a real ``meterlog serve`` process on a free loopback port (started once per
session by tests/log_server/server_process.py), with an edge key registered and a few
receipts logged over several checkpoints, so every page has real data to show. ``browser``
is Debian's Chromium (``/usr/bin/chromium``, which ``make test`` installs with apt) driven by
playwright's Python package, headless; playwright never downloads a browser of its own.
``witnessed_log`` is another, cosigned by a real ``meterlog witness serve``.
``page`` is a fresh browser context per test that fails the test on any uncaught JavaScript
error. ``lying_log`` is the one fake: a proxy in front of the live log that rewrites chosen
answers (a tampered proof, checkpoint or entry), for the tests that must see verification
fail. :func:`screenshot` keeps a picture of a page under ``test-output/portal/``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.log_server.conftest import make_receipt
from tests.log_server.server_process import (
    ServerProcess,
    now_ms,
    register_edge,
    start_server,
    submit,
)
from tests.verifier.logs import LOG_KEY, WITNESS_KEY, build_log, free_port, running_witness
from tlog.entry import Receipt
from tlog.note import ALG_COSIGNATURE_V1, SigningKey, format_vkey

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium: the only browser the tests use (``apt-get install chromium``)."""
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "portal"
"""Where the tests keep a screenshot of each page (docs/portal.md shows them)."""
TIMEOUT_S = 30.0
LIVE_ORIGIN = "test.example/portal"
expect.set_options(timeout=TIMEOUT_S * 1000)  # a shared 2-core machine can be slow: wait, bounded
EDGE = SigningKey("edge-portal", bytes(range(90, 122)))
"""The edge whose receipts the live log holds."""

BATCHES: tuple[tuple[str, str, int], ...] = (
    ("acme-ai", "job-1", 3),
    ("acme-ai", "job-2", 2),
    ("bolt-labs", "job-9", 4),
)
"""(consumer, job, receipts): logged one batch at a time, so each gets its own checkpoint."""


@dataclass
class LiveLog:
    """The session's log: its process, and the receipts it logged (with their indexes)."""

    server: ServerProcess
    receipts: list[Receipt] = field(default_factory=list)
    indexes: dict[str, int] = field(default_factory=dict)
    """Leaf index of each receipt, by request id."""

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def log_vkey(self) -> str:
        return (self.server.data_dir / "log.vkey").read_text(encoding="utf-8").strip()

    def portal(self, page: str = "") -> str:
        return f"{self.url}/portal/{page}"


@pytest.fixture(scope="session")
def live_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLog]:
    data_dir = tmp_path_factory.mktemp("portal-log") / "data"
    server = start_server(data_dir, origin=LIVE_ORIGIN, checkpoint_interval_s=3600)
    try:
        log = LiveLog(server)
        register_edge(server, EDGE)
        with httpx.Client(timeout=TIMEOUT_S) as client:
            for consumer, job, count in BATCHES:
                batch = [
                    make_receipt(
                        n,
                        served_at_ms=now_ms(),
                        edge_key=EDGE,
                        request_id=f"{job}-{n}",
                        consumer_id=consumer,
                        job_id=job,
                    )
                    for n in range(count)
                ]
                answer = submit(client, server.url, batch)
                assert answer.status_code == 200, answer.text
                for sent, result in zip(batch, answer.json()["results"], strict=True):
                    assert result["status"] == "logged", result
                    log.receipts.append(sent)
                    log.indexes[sent.request_id] = result["index"]
        yield log
    finally:
        server.stop()


@pytest.fixture(scope="session")
def witnessed_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live log with a real ``meterlog witness serve`` in its witness policy (quorum: that
    witness), three receipts (``req-0`` .. ``req-2``), and a cosigned checkpoint."""
    root = tmp_path_factory.mktemp("portal-witnessed")
    port = free_port()
    witness_vkey = format_vkey(WITNESS_KEY.verifier(ALG_COSIGNATURE_V1))
    policy = root / "witnesses.policy"
    policy.write_text(f"witness w1 {witness_vkey} http://127.0.0.1:{port}\nquorum w1\n")
    build_log(root / "log").close()  # LOG_KEY's log: the witness is told its key
    with running_witness(root / "witness", port):
        server = start_server(
            root / "log",
            origin=LOG_KEY.name,
            extra_args=["--witness-policy", str(policy), "--witness-interval", "0.2"],
        )
        try:
            register_edge(server, EDGE)
            with httpx.Client(timeout=TIMEOUT_S) as client:
                batch = [make_receipt(n, served_at_ms=now_ms(), edge_key=EDGE) for n in range(3)]
                assert submit(client, server.url, batch).status_code == 200
            deadline = time.monotonic() + 30
            while WITNESS_KEY.name not in httpx.get(f"{server.url}/checkpoint", timeout=5).text:
                assert time.monotonic() < deadline, "the witness did not cosign in 30 s"
                time.sleep(0.05)
            yield server.url
        finally:
            server.stop()


# -- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module. Not for the session: playwright's sync API runs an
    event loop in this thread while it is open, and the async tests that run after the
    portal's (anyio) need the thread's loop free."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium)",
            pytrace=False,
        )
    args = ["--disable-gpu", "--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=args
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (own context: no storage shared between tests); an uncaught JavaScript
    error anywhere in it fails the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(TIMEOUT_S * 1000)
    errors: list[str] = []
    tab = context.new_page()
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()
    if errors:
        pytest.fail(f"JavaScript errors in the page: {errors}", pytrace=False)


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as ``test-output/portal/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# -- the liar ----------------------------------------------------------------------------------

Rewrite = Callable[[str, bytes], bytes | None]
"""(path with query, upstream body) -> the body to serve instead, or None to pass it on."""


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a test thread, not the main one
        pass


@dataclass
class LyingLog:
    """A proxy to the live log that serves :attr:`rewrite`'s answer where it gives one."""

    url: str
    rewrite: Rewrite | None = None

    def portal(self, page: str = "") -> str:
        return f"{self.url}/portal/{page}"


def _proxy_app(upstream: str, liar: Callable[[], LyingLog]) -> Starlette:
    hop_by_hop = {"content-length", "content-encoding", "transfer-encoding", "connection"}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=upstream, timeout=TIMEOUT_S) as client:
            app.state.client = client
            yield

    async def forward(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        client: httpx.AsyncClient = request.app.state.client
        answer = await client.request(
            request.method,
            target,
            content=await request.body(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        body = answer.content
        rewrite = liar().rewrite
        if rewrite is not None and answer.status_code == 200:
            changed = rewrite(target, body)
            if changed is not None:
                body = changed
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in hop_by_hop}
        return Response(body, status_code=answer.status_code, headers=headers)

    methods = ["GET", "POST", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


@contextmanager
def lying(live: LiveLog, rewrite: Rewrite) -> Iterator[LyingLog]:
    """A :class:`LyingLog` in front of ``live`` on a free loopback port, for the block."""
    liar = LyingLog("", rewrite)
    server = _ThreadedServer(
        uvicorn.Config(
            _proxy_app(live.url, lambda: liar), host="127.0.0.1", port=0, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not server.started:
            assert thread.is_alive(), "the lying proxy did not start"
            assert time.monotonic() < deadline, "the lying proxy did not start in time"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        liar.url = f"http://127.0.0.1:{port}"
        yield liar
    finally:
        server.should_exit = True
        thread.join(timeout=TIMEOUT_S)
