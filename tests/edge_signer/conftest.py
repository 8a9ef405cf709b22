"""Fixtures for the edge signer's tests: fixed keys, tokens, a content directory with its
catalog, and an edge (the middleware over Starlette's static files, with a real spool) driven
in process through httpx's ASGI transport.

The module-level helpers are plain functions so every test module here can import them.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from edge_signer.catalog import Catalog, build_catalog
from edge_signer.middleware import ASGIApp, ReceiptMiddleware
from edge_signer.signer import EdgeSigner
from edge_signer.spool import Spool, SpoolWriter
from edge_signer.tokens import AccessGate
from tlog.entry import Receipt, decode_entry
from tlog.note import SigningKey
from tlog.token import AccessToken, format_token, sign_token

NOW_MS = 1_800_000_000_000
EDGE_KEY = SigningKey("edge-test", bytes([7]) * 32)
MARKET_KEY = SigningKey("market.test", bytes([9]) * 32)
CREATOR = "acct:alice@example.com"
LICENSE = "https://market.test/licenses/train-1"
CLIENT = ("203.0.113.7", 50000)
UPSTREAM = ("10.0.0.2", 41000)
SHARD_SIZE = 300_000
PAGE_SIZE = 10_240


def issue(
    scope: str = "training",
    *,
    consumer: str = "acme-ai",
    job: str | None = "job-42",
    content: tuple[str, ...] | None = None,
    issued_at_ms: int = NOW_MS - 60_000,
    expires_at_ms: int = NOW_MS + 3_600_000,
    key: SigningKey = MARKET_KEY,
    token_id: str = "tok-1",  # noqa: S107 -- an identifier, not a secret
) -> str:
    """A token string signed by ``key`` (the trusted marketplace key by default)."""
    token = AccessToken(
        issuer=key.name,
        token_id=token_id,
        consumer_id=consumer,
        scope=scope,
        issued_at_ms=issued_at_ms,
        expires_at_ms=expires_at_ms,
        job_id=job,
        content=content,
    )
    return format_token(sign_token(token, key))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_content(root: Path) -> Path:
    """A dataset shard (training only) and a page (any scope), with fixed bytes."""
    rng = random.Random(4)  # noqa: S311 -- fixed test bytes
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / "shard-0.bin").write_bytes(rng.randbytes(SHARD_SIZE))
    (root / "page.txt").write_bytes(rng.randbytes(PAGE_SIZE))
    return root


def content_catalog(root: Path) -> Catalog:
    dataset = build_catalog(
        root / "dataset",
        creator_id=CREATOR,
        license=LICENSE,
        scopes=("training",),
        prefix="/dataset/",
    )
    everything = build_catalog(
        root,
        creator_id="acct:bob",
        license="https://market.test/licenses/any",
        scopes=("training", "inference", "preview"),
    )
    items = dict(everything.items)
    items.update(dataset.items)
    return Catalog(items)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def content_dir(tmp_path: Path) -> Path:
    return write_content(tmp_path / "content")


@dataclass
class Edge:
    """An edge in process: ``client`` talks to ``app`` (the middleware) over ASGI."""

    app: ReceiptMiddleware
    writer: SpoolWriter
    spool_dir: Path
    client: httpx.AsyncClient
    inner_calls: list[str] = field(default_factory=list)

    def receipts(self) -> list[Receipt]:
        """Every receipt in the spool, in spool order, decoded."""
        with Spool(self.spool_dir) as spool:
            rows = spool.receipts()
        receipts = []
        for row in rows:
            entry = decode_entry(row.entry)
            assert isinstance(entry, Receipt)
            receipts.append(entry)
        return receipts

    async def get(self, path: str, token: str | None = None, **headers: str) -> httpx.Response:
        all_headers = {**(bearer(token) if token else {}), **headers}
        return await self.client.get(path, headers=all_headers)


def static_app(directory: Path) -> Starlette:
    return Starlette(routes=[Mount("/", StaticFiles(directory=directory))])


def recording(app: ASGIApp, calls: list[str]) -> ASGIApp:
    """``app``, noting the path of every HTTP request it is called for."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            calls.append(scope["path"])
        await app(scope, receive, send)

    return wrapped


@asynccontextmanager
async def make_edge(
    tmp_path: Path,
    app: ASGIApp,
    catalog: Catalog,
    *,
    client: tuple[str, int] = CLIENT,
    capacity: int = 1000,
    writer_factory: Callable[..., SpoolWriter] = SpoolWriter,
    **options: Any,
) -> AsyncIterator[Edge]:
    spool_dir = tmp_path / "spool"
    writer = writer_factory(spool_dir, capacity=capacity, clock_ms=lambda: NOW_MS)
    writer.start()
    calls: list[str] = []
    middleware = ReceiptMiddleware(
        recording(app, calls),
        signer=EdgeSigner(EDGE_KEY),
        catalog=catalog,
        gate=AccessGate([MARKET_KEY.verifier()]),
        spool=writer,
        clock_ms=lambda: NOW_MS,
        **options,
    )
    transport = httpx.ASGITransport(app=middleware, client=client)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as http:
            yield Edge(middleware, writer, spool_dir, http, calls)
    finally:
        writer.close()


@pytest.fixture
async def edge(tmp_path: Path, content_dir: Path) -> AsyncIterator[Edge]:
    async with make_edge(tmp_path, static_app(content_dir), content_catalog(content_dir)) as made:
        yield made
