"""ReceiptMiddleware in process, over Starlette's static files and hand-written ASGI apps, with
a real spool: what each response carries, the receipt it leaves (bytes actually sent, for
whole, streamed, range and interrupted responses), token refusals that leave none, failing
closed when the spool cannot take a receipt, and request ids across a cache hierarchy.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse, StreamingResponse

from edge_signer.catalog import Catalog, CatalogItem
from edge_signer.middleware import ReceiptMiddleware
from edge_signer.spool import SpoolError, SpoolWriter
from tests.edge_signer.conftest import (
    CLIENT,
    CREATOR,
    EDGE_KEY,
    LICENSE,
    MARKET_KEY,
    NOW_MS,
    PAGE_SIZE,
    SHARD_SIZE,
    UPSTREAM,
    Edge,
    content_catalog,
    issue,
    make_edge,
    static_app,
)
from tlog.entry import Receipt, verify_receipt
from tlog.note import SigningKey
from tlog.provenance import parse_provenance, parse_receipt_ref

pytestmark = pytest.mark.anyio

SHARD = "/dataset/shard-0.bin"
PAGE = "/page.txt"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def only_receipt(edge: Edge) -> Receipt:
    receipts = edge.receipts()
    assert len(receipts) == 1, receipts
    verify_receipt(receipts[0], EDGE_KEY.verifier())
    return receipts[0]


# -- what a metered delivery carries -----------------------------------------------------------


async def test_a_training_download_gets_headers_and_one_signed_receipt(
    edge: Edge, content_dir: Path
) -> None:
    response = await edge.get(SHARD, issue("training", job="job-42"))
    assert response.status_code == 200
    data = (content_dir / "dataset" / "shard-0.bin").read_bytes()
    assert response.content == data
    provenance = parse_provenance(response.headers["x-provenance"])
    assert provenance.content_id == digest(data)
    assert provenance.creator_id == CREATOR
    assert response.headers["link"] == f'<{LICENSE}>; rel="license"'
    ref = parse_receipt_ref(response.headers["x-receipt"])
    assert ref.edge == EDGE_KEY.name
    assert ref.request_id == response.headers["x-request-id"]
    assert len(ref.request_id) == 40

    receipt = only_receipt(edge)
    assert receipt.request_id == ref.request_id
    assert receipt.bytes_sent == SHARD_SIZE
    assert (receipt.content_id, receipt.creator_id) == (provenance.content_id, CREATOR)
    assert receipt.manifest == provenance.manifest
    assert (receipt.consumer_id, receipt.token_id, receipt.job_id) == ("acme-ai", "tok-1", "job-42")
    assert (receipt.scope, receipt.cache, receipt.served_at_ms) == ("training", "miss", NOW_MS)
    assert edge.app.stats.receipts == 1


async def test_each_request_gets_its_own_request_id(edge: Edge) -> None:
    token = issue("inference")
    ids = {(await edge.get(PAGE, token)).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert {r.request_id for r in edge.receipts()} == ids
    assert all(r.bytes_sent == PAGE_SIZE and r.scope == "inference" for r in edge.receipts())


@pytest.mark.parametrize(
    ("range_header", "expected"),
    [
        ("bytes=1000-70999", 70_000),  # spans two 64 KiB chunks: streamed
        ("bytes=0-0", 1),
        ("bytes=-500", 500),
        (f"bytes={SHARD_SIZE - 10}-", 10),
    ],
)
async def test_range_responses_count_the_bytes_of_the_range(
    edge: Edge, content_dir: Path, range_header: str, expected: int
) -> None:
    response = await edge.get(SHARD, issue(), Range=range_header)
    assert response.status_code == 206
    assert len(response.content) == expected
    data = (content_dir / "dataset" / "shard-0.bin").read_bytes()
    receipt = only_receipt(edge)
    assert receipt.bytes_sent == expected
    assert receipt.content_id == digest(data)  # the content, not the range
    assert parse_receipt_ref(response.headers["x-receipt"]).request_id == receipt.request_id


async def test_a_multi_range_response_counts_every_byte_sent(edge: Edge) -> None:
    response = await edge.get(SHARD, issue(), Range="bytes=0-9,100000-199999")
    assert response.status_code == 206
    assert response.headers["content-type"].startswith("multipart/byteranges")
    assert only_receipt(edge).bytes_sent == len(response.content) > 100_010


async def test_head_and_not_modified_deliver_nothing_and_leave_no_receipt(edge: Edge) -> None:
    token = issue()
    head = await edge.client.head(SHARD, headers={"Authorization": f"Bearer {token}"})
    assert head.status_code == 200
    assert "x-provenance" in head.headers and "x-receipt" not in head.headers
    etag = head.headers["etag"]
    cached = await edge.get(SHARD, token, **{"If-None-Match": etag})
    assert cached.status_code == 304
    assert "x-receipt" not in cached.headers
    assert edge.receipts() == []


async def test_unlisted_paths_are_refused_unless_passed(tmp_path: Path, content_dir: Path) -> None:
    catalog = content_catalog(content_dir)
    (content_dir / "extra.txt").write_text("not published")
    async with make_edge(tmp_path, static_app(content_dir), catalog) as edge:
        response = await edge.get("/extra.txt", issue())
        assert response.status_code == 404
        assert response.json()["error"]["field"] == "path"
        assert edge.inner_calls == []
    async with make_edge(
        tmp_path / "b", static_app(content_dir), catalog, pass_unlisted=True
    ) as edge:
        response = await edge.get("/extra.txt")
        assert (response.status_code, response.text) == (200, "not published")
        assert "x-provenance" not in response.headers
        assert edge.receipts() == []


async def test_an_error_from_the_app_leaves_no_receipt(edge: Edge, content_dir: Path) -> None:
    (content_dir / "page.txt").unlink()
    response = await edge.get(PAGE, issue())
    assert response.status_code == 404
    assert "x-receipt" not in response.headers
    assert edge.receipts() == []


# -- streaming, interrupted, identified by hashing ---------------------------------------------

CHUNK = b"x" * 4096


def streaming_app(chunks: int, headers: dict[str, str] | None = None) -> Any:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield CHUNK
            await asyncio.sleep(0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        response = StreamingResponse(body(), media_type="application/octet-stream",
                                     headers=headers)  # fmt: skip
        await response(scope, receive, send)

    return app


def catalog_of(
    path: str, *, content_id: str | None, scopes: tuple[str, ...] = ("training",)
) -> Catalog:
    item = CatalogItem(
        path=path,
        creator_id=CREATOR,
        manifest="sha256:" + "ee" * 32,
        license=LICENSE,
        scopes=scopes,
        content_id=content_id,
    )
    return Catalog({path: item})


async def test_a_streamed_body_is_counted_chunk_by_chunk(tmp_path: Path) -> None:
    catalog = catalog_of("/stream", content_id="sha256:" + "ab" * 32)
    async with make_edge(tmp_path, streaming_app(25), catalog) as edge:
        response = await edge.get("/stream", issue())
        assert len(response.content) == 25 * len(CHUNK)
        assert only_receipt(edge).bytes_sent == 25 * len(CHUNK)


async def test_content_without_a_catalog_id_is_identified_by_its_bytes(
    tmp_path: Path, content_dir: Path
) -> None:
    data = (content_dir / "dataset" / "shard-0.bin").read_bytes()
    catalog = catalog_of(SHARD, content_id=None)
    async with make_edge(tmp_path, static_app(content_dir), catalog) as edge:
        # A range cannot identify the content: the middleware drops it and serves the whole.
        response = await edge.get(SHARD, issue(), Range="bytes=0-99")
        assert response.status_code == 200
        assert response.content == data
        assert parse_provenance(response.headers["x-provenance"]).content_id == digest(data)
        receipt = only_receipt(edge)
        assert (receipt.content_id, receipt.bytes_sent) == (digest(data), SHARD_SIZE)


async def test_streamed_content_too_large_to_identify_is_not_served(tmp_path: Path) -> None:
    catalog = catalog_of("/stream", content_id=None)
    async with make_edge(tmp_path, streaming_app(10), catalog, max_identify_bytes=20_000) as edge:
        response = await edge.get("/stream", issue())
        assert response.status_code == 502
        assert response.json()["error"]["field"] == "content_id"
        assert edge.receipts() == []


async def drive(
    app: ReceiptMiddleware, path: str, token: str, *, disconnect_after: int, **scope_extra: Any
) -> tuple[list[dict[str, Any]], int]:
    """Call the middleware as a server would, for a client that goes away after receiving
    ``disconnect_after`` body chunks. The messages sent, and the body bytes delivered."""
    gone = asyncio.Event()
    messages: list[dict[str, Any]] = []
    delivered = 0
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal delivered
        messages.append(message)
        if message["type"] == "http.response.body" and not gone.is_set():
            delivered += len(message.get("body", b""))
            if sum(1 for m in messages if m["type"] == "http.response.body") >= disconnect_after:
                gone.set()

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "client": CLIENT,
        "server": ("edge.test", 80),
        "scheme": "http",
        **scope_extra,
    }
    await app(scope, receive, send)
    return messages, delivered


async def test_a_client_that_goes_away_is_billed_for_what_it_received(tmp_path: Path) -> None:
    catalog = catalog_of("/stream", content_id="sha256:" + "ab" * 32)
    async with make_edge(tmp_path, streaming_app(50), catalog) as edge:
        messages, delivered = await drive(edge.app, "/stream", issue(), disconnect_after=7)
        assert delivered == 7 * len(CHUNK)
        assert len([m for m in messages if m["type"] == "http.response.body"]) < 50
        assert only_receipt(edge).bytes_sent == delivered


async def test_pathsend_is_hidden_so_every_byte_is_counted(edge: Edge) -> None:
    messages, delivered = await drive(
        edge.app,
        SHARD,
        issue(),
        disconnect_after=10_000,
        asgi={"version": "3.0", "spec_version": "2.4"},
        extensions={"http.response.pathsend": {}},
    )
    assert all(m["type"] != "http.response.pathsend" for m in messages)
    assert delivered == SHARD_SIZE
    assert only_receipt(edge).bytes_sent == SHARD_SIZE


@pytest.mark.parametrize(
    ("x_cache", "cache"),
    [("HIT", "hit"), ("TCP_HIT", "hit"), ("MISS, HIT", "hit"), ("HIT, MISS", "miss"), ("", "miss")],
)
async def test_cache_status_comes_from_the_nearest_tier(
    tmp_path: Path, x_cache: str, cache: str
) -> None:
    catalog = catalog_of("/stream", content_id="sha256:" + "ab" * 32)
    app = streaming_app(2, headers={"X-Cache": x_cache} if x_cache else None)
    async with make_edge(tmp_path, app, catalog) as edge:
        await edge.get("/stream", issue())
        assert only_receipt(edge).cache == cache


# -- token failures: 401/403, the app never runs, no receipt -----------------------------------

STRANGER = SigningKey(MARKET_KEY.name, bytes([10]) * 32)


def tampered(token: str) -> str:
    prefix, payload, signature = token.split(".")
    flipped = "A" if signature[5] != "A" else "B"
    return ".".join([prefix, payload, signature[:5] + flipped + signature[6:]])


TOKEN_FAILURES = [
    ("missing", None, SHARD, 401, ""),
    ("not bearer", "Basic YWxhZGRpbjpvcGVu", SHARD, 401, "invalid_request"),
    ("malformed", "Bearer meterlog-token-v1.abc", SHARD, 401, "invalid_token"),
    ("bad signature", "Bearer " + tampered(issue()), SHARD, 401, "invalid_token"),
    ("unknown key", "Bearer " + issue(key=STRANGER), SHARD, 401, "invalid_token"),
    ("expired", "Bearer " + issue(expires_at_ms=NOW_MS - 31_000), SHARD, 401, "invalid_token"),
    ("not yet valid", "Bearer " + issue(issued_at_ms=NOW_MS + 31_000), SHARD, 401, "invalid_token"),
    ("inference on a dataset", "Bearer " + issue("inference"), SHARD, 403, "insufficient_scope"),
    ("preview on a dataset", "Bearer " + issue("preview"), SHARD, 403, "insufficient_scope"),
    (
        "content not allowed",
        "Bearer " + issue(content=("sha256:" + "00" * 32,)),
        SHARD,
        403,
        "insufficient_scope",
    ),
]


@pytest.mark.parametrize(
    ("authorization", "path", "status", "error"),
    [case[1:] for case in TOKEN_FAILURES],
    ids=[case[0] for case in TOKEN_FAILURES],
)
async def test_token_failures_are_refused_with_no_receipt(
    edge: Edge, authorization: str | None, path: str, status: int, error: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await edge.client.get(path, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["field"] == "authorization"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="meterlog"')
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    assert "x-provenance" not in response.headers and "x-receipt" not in response.headers
    assert edge.inner_calls == []
    assert edge.receipts() == []
    assert edge.app.stats.unauthorized + edge.app.stats.forbidden == 1


async def test_a_token_within_the_leeway_is_accepted(edge: Edge) -> None:
    response = await edge.get(SHARD, issue(expires_at_ms=NOW_MS - 29_000))
    assert response.status_code == 200


async def test_an_allow_list_naming_the_content_is_accepted(edge: Edge, content_dir: Path) -> None:
    content_id = digest((content_dir / "dataset" / "shard-0.bin").read_bytes())
    response = await edge.get(SHARD, issue(content=(content_id,)))
    assert response.status_code == 200
    assert only_receipt(edge).content_id == content_id


async def test_an_allow_list_is_checked_against_hashed_content_too(
    tmp_path: Path, content_dir: Path
) -> None:
    async with make_edge(
        tmp_path, static_app(content_dir), catalog_of(SHARD, content_id=None)
    ) as edge:
        response = await edge.get(SHARD, issue(content=("sha256:" + "00" * 32,)))
        assert response.status_code == 403
        assert response.json()["error"]["reason"].startswith("the token does not allow content")
        assert edge.receipts() == []


# -- failing closed ------------------------------------------------------------------------------


async def test_a_full_spool_refuses_training_and_serves_other_scopes_unmetered(
    tmp_path: Path, content_dir: Path
) -> None:
    app, catalog = static_app(content_dir), content_catalog(content_dir)
    async with make_edge(tmp_path, app, catalog, capacity=1) as edge:
        assert (await edge.get(SHARD, issue())).status_code == 200
        refused = await edge.get(SHARD, issue())
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["field"] == "spool"
        assert len(refused.content) < 1000
        assert edge.inner_calls == [SHARD]  # the app never ran for the refused request
        served = await edge.get(PAGE, issue("preview"))
        assert served.status_code == 200 and len(served.content) == PAGE_SIZE
        assert edge.app.stats.unmetered == 1
        assert len(edge.receipts()) == 1


class FailingWriter(SpoolWriter):
    """A real writer whose appends fail while ``failing`` is set (fault injection)."""

    failing = False

    async def append(self, signed: Any, reservation: Any = None) -> bool:
        if self.failing:
            if reservation is not None:
                reservation.release()
            raise SpoolError("injected: the disk is full")
        return await super().append(signed, reservation)


async def test_a_spool_failing_at_the_end_refuses_or_aborts_training(
    tmp_path: Path, content_dir: Path
) -> None:
    app, catalog = static_app(content_dir), content_catalog(content_dir)
    async with make_edge(tmp_path, app, catalog, writer_factory=FailingWriter) as edge:
        assert isinstance(edge.writer, FailingWriter)
        edge.writer.failing = True
        # One message (10 KiB): held until the receipt is spooled, so it becomes a 503.
        refused = await edge.get(PAGE, issue("training"))
        assert refused.status_code == 503
        assert refused.json()["error"]["field"] == "spool"
        # Streamed (300 KB): cut short before its last message; never complete.
        with pytest.raises(Exception, match="could not be spooled"):
            await edge.get(SHARD, issue("training"))
        assert edge.app.stats.aborted == 1
        # Other scopes are served, counted as unmetered.
        served = await edge.get(PAGE, issue("inference"))
        assert served.status_code == 200 and len(served.content) == PAGE_SIZE
        assert edge.app.stats.unmetered == 1
        assert edge.receipts() == []
        edge.writer.failing = False
        assert (await edge.get(PAGE, issue("training"))).status_code == 200
        assert len(edge.receipts()) == 1


async def test_an_aborted_stream_never_delivers_its_last_message(
    tmp_path: Path, content_dir: Path
) -> None:
    app, catalog = static_app(content_dir), content_catalog(content_dir)
    async with make_edge(tmp_path, app, catalog, writer_factory=FailingWriter) as edge:
        assert isinstance(edge.writer, FailingWriter)
        edge.writer.failing = True
        with pytest.raises(Exception, match="could not be spooled"):
            await drive(edge.app, SHARD, issue(), disconnect_after=10_000)
        messages: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        with pytest.raises(Exception, match="could not be spooled"):
            await edge.app(
                {"type": "http", "method": "GET", "path": SHARD, "headers":
                 [(b"authorization", f"Bearer {issue()}".encode())], "client": CLIENT},
                receiver(),
                send,
            )  # fmt: skip
        bodies = [m for m in messages if m["type"] == "http.response.body"]
        assert bodies and all(m.get("more_body") for m in bodies)
        assert sum(len(m["body"]) for m in bodies) < SHARD_SIZE


def receiver() -> Any:
    """An ASGI receive: the (empty) request, then nothing until cancelled."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


# -- request ids: upstream tiers, duplicates -----------------------------------------------------


def echo_request_id_app() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen = dict(scope["headers"]).get(b"x-request-id", b"").decode()
        await PlainTextResponse(seen)(scope, receive, send)

    return app


async def test_a_trusted_upstreams_request_id_is_kept_and_not_metered_twice(tmp_path: Path) -> None:
    catalog = catalog_of("/echo", content_id="sha256:" + "ab" * 32)
    app = echo_request_id_app()
    async with make_edge(
        tmp_path, app, catalog, client=UPSTREAM, trusted_upstreams=(UPSTREAM[0],)
    ) as edge:
        response = await edge.get("/echo", issue(), **{"X-Request-Id": "up-7f3a"})
        assert response.status_code == 200
        assert response.text == "up-7f3a"  # the app (and anything it calls) sees the same id
        assert response.headers["x-request-id"] == "up-7f3a"
        assert "x-receipt" not in response.headers
        assert "x-provenance" in response.headers
        assert edge.receipts() == []
        # Without the header, the upstream's request is this tier's own, and metered.
        response = await edge.get("/echo", issue())
        assert response.headers["x-request-id"] == response.text != "up-7f3a"
        assert len(edge.receipts()) == 1


async def test_a_clients_request_id_is_not_trusted(tmp_path: Path) -> None:
    catalog = catalog_of("/echo", content_id="sha256:" + "ab" * 32)
    async with make_edge(
        tmp_path, echo_request_id_app(), catalog, trusted_upstreams=(UPSTREAM[0],)
    ) as edge:
        for _ in range(2):  # a client cannot dodge metering by repeating an id
            response = await edge.get("/echo", issue(), **{"X-Request-Id": "mine"})
            assert response.text == response.headers["x-request-id"] != "mine"
        receipts = edge.receipts()
        assert len(receipts) == 2
        assert "mine" not in {r.request_id for r in receipts}


async def test_a_cache_hierarchy_logs_a_request_once(tmp_path: Path, content_dir: Path) -> None:
    """An edge whose cache misses fetches from a shield tier; both run the middleware. The
    shield trusts the edge's address: one receipt, the edge's, under one request id."""
    inner_key = SigningKey("shield-test", bytes([8]) * 32)
    shield_calls: list[str] = []
    async with make_edge(
        tmp_path / "shield",
        static_app(content_dir),
        content_catalog(content_dir),
        client=UPSTREAM,
        trusted_upstreams=(UPSTREAM[0],),
    ) as shield:
        shield.app.signer = type(shield.app.signer)(inner_key)

        async def edge_app(scope: Any, receive: Any, send: Any) -> None:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            shield_calls.append(headers["x-request-id"])
            fetched = await shield.client.get(
                scope["path"],
                headers={k: headers[k] for k in ("authorization", "x-request-id")},
            )
            response = PlainTextResponse(fetched.content, headers={"X-Cache": "MISS"})
            await response(scope, receive, send)

        async with make_edge(tmp_path / "edge", edge_app, content_catalog(content_dir)) as edge:
            response = await edge.get(PAGE, issue())
            assert response.status_code == 200 and len(response.content) == PAGE_SIZE
            request_id = response.headers["x-request-id"]
            assert shield_calls == [request_id]
            (receipt,) = edge.receipts()
            assert (receipt.edge, receipt.request_id, receipt.cache) == (
                EDGE_KEY.name,
                request_id,
                "miss",
            )
            assert shield.receipts() == []


async def test_a_request_id_spooled_before_is_not_metered_twice(
    tmp_path: Path, content_dir: Path
) -> None:
    app, catalog = static_app(content_dir), content_catalog(content_dir)
    async with make_edge(tmp_path, app, catalog, request_ids=lambda: "same-id") as edge:
        for _ in range(2):
            assert (await edge.get(PAGE, issue())).status_code == 200
        assert len(edge.receipts()) == 1
        assert (edge.app.stats.receipts, edge.app.stats.duplicates) == (1, 1)


async def test_non_http_scopes_pass_through(tmp_path: Path, content_dir: Path) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async with make_edge(tmp_path, app, content_catalog(content_dir)) as edge:
        await edge.app({"type": "lifespan"}, receiver(), _ignore)
        assert seen == ["lifespan"]


async def _ignore(message: Any) -> None:
    return None


async def test_many_concurrent_requests_share_spool_transactions(edge: Edge) -> None:
    token = issue()
    responses = await asyncio.gather(*(edge.get(PAGE, token) for _ in range(40)))
    assert all(r.status_code == 200 for r in responses)
    assert len(edge.receipts()) == 40
    assert edge.writer.groups < 40


def test_httpx_is_the_client_here() -> None:
    # The in-process transport hands the middleware a real client address to judge.
    assert httpx.ASGITransport(app=echo_request_id_app(), client=CLIENT).client == CLIENT


async def test_the_same_bytes_under_two_creators_keep_their_own_provenance(
    tmp_path: Path,
) -> None:
    content_id = "sha256:" + "ab" * 32
    items = {
        path: CatalogItem(path, creator, "sha256:" + digit * 64, LICENSE, ("training",), content_id)
        for path, creator, digit in (("/a", "acct:alice", "1"), ("/b", "acct:bob", "2"))
    }
    async with make_edge(tmp_path, streaming_app(1), Catalog(items)) as edge:
        for path, creator in (("/a", "acct:alice"), ("/b", "acct:bob"), ("/a", "acct:alice")):
            response = await edge.get(path, issue())
            assert parse_provenance(response.headers["x-provenance"]).creator_id == creator
        assert [r.creator_id for r in edge.receipts()] == ["acct:alice", "acct:bob", "acct:alice"]
