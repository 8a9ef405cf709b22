"""``ReceiptMiddleware``: a pure ASGI middleware that meters every delivery it lets through.

Owns what happens to one HTTP request for catalogued content at the edge: the access check
(tlog.token tokens, :mod:`edge_signer.tokens`), the request id, the provenance headers, and
the signed receipt, written to the spool before the response completes. It wraps any ASGI
app (an origin, an edge worker, a Starlette static-files app) and needs no web framework.
Imports tlog and edge_signer only; must not import verifier, log_server, anchor, billing,
cli, starlette or peewee.

For a request to a path in the catalog:

1. The token (``Authorization: Bearer``) must be valid and allow the content: else 401 or
   403, the app is not called and no receipt is made.
2. The request id: an upstream tier's id (the ``request_id_header`` from a client address
   in ``trusted_upstreams``) is kept, and then this tier makes no receipt, since the tier
   that delivers to the consumer makes it: a cache hierarchy logs each request once. Any
   other request gets a fresh id (a 96-bit random prefix per process, then a counter).
   The app sees the id in the same header (to pass it on upstream), and the response
   carries it.
3. A GET that the app answers 200 or 206 gets a receipt: content_id, creator and manifest
   from the catalog (or the content_id as the SHA-256 of the bytes served, when the catalog
   has none: the Range header is then dropped, so the whole representation is served and
   hashed), the cache status from the app's ``cache_header``, consumer, token, job and scope
   from the token, and the bytes actually sent: the body bytes handed to the server before
   the response ended or the client went away (for a 206, the bytes of the ranges sent).
4. The response gets ``X-Provenance``, ``Link: <license>; rel="license"``,
   ``X-Request-Id`` and ``X-Receipt`` (tlog.provenance).
5. The receipt is in the spool before the response completes. A response sent in one
   message is held until its receipt is spooled; a streamed one is held before its last
   message. For scopes in ``fail_closed_scopes`` (default: training) room in the spool is
   reserved before the app is called: no room, or a failing spool, is a 503 with
   ``Retry-After`` and nothing is served. If the spool still fails at the end, a one-message
   response becomes a 503, and a streamed one is aborted before its last message (the
   client sees a truncated response, never a complete unmetered one). Other scopes are
   served anyway, and the delivery is counted as unmetered and logged.

Bytes after a client disconnect are not counted once the middleware sees the disconnect
(the app's ``receive`` returns it, or ``send`` raises); a chunk the server accepted just
before it noticed may be counted. The ``http.response.pathsend`` and ``zerocopysend``
extensions are hidden from the app, so every byte passes through ``send``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from dataclasses import dataclass
from typing import Any

from edge_signer.catalog import Catalog, CatalogItem
from edge_signer.signer import Delivery, EdgeSigner
from edge_signer.spool import Reservation, SpoolError, SpoolWriter, now_ms
from edge_signer.tokens import AccessDenied, AccessGate
from tlog.errors import MalformedError
from tlog.provenance import Provenance, ReceiptRef, format_provenance, format_receipt_ref
from tlog.token import AccessToken

__all__ = ["ASGIApp", "MiddlewareStats", "ReceiptMiddleware", "RequestIds", "new_request_id"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("edge_signer")

_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_METERED_STATUSES = (200, 206)
_PROVENANCE_STATUSES = (200, 206, 304)
_HIDDEN_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopysend")
_DROPPED_FOR_IDENTIFY = (b"range", b"if-range")


class RequestIds:
    """Globally unique request ids: a 96-bit random prefix drawn once, then a counter
    (``<24 hex><16 hex>``). One ``os.urandom`` per process instead of one per request."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(12)
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


def new_request_id() -> str:
    """A fresh request id: 128 random bits, hex (for one-off use; the middleware uses
    :class:`RequestIds`)."""
    return secrets.token_hex(16)


@dataclass
class MiddlewareStats:
    """Counts since start: receipts spooled, refusals by status, and deliveries served
    without a receipt (a failing spool in a scope that is not fail-closed)."""

    receipts: int = 0
    duplicates: int = 0
    unauthorized: int = 0
    forbidden: int = 0
    unavailable: int = 0
    unmetered: int = 0
    aborted: int = 0


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


async def _respond(
    send: Send,
    status: int,
    field: str,
    reason: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error answer of the middleware's own, in the log's error shape."""
    body = json.dumps({"error": {"field": field, "reason": reason}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Aborted(Exception):  # noqa: N818 -- control flow: the response is cut short on purpose
    """A streamed response stopped before its last message: its receipt could not be
    spooled, and its scope is fail-closed."""


class ReceiptMiddleware:
    """Meters the deliveries of ``app`` (see the module docs for what it does per request).

    ``spool`` must be started before requests arrive (the demo origin starts it in its
    lifespan). ``clock_ms`` and ``request_ids`` are parameters so tests can fix them.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        signer: EdgeSigner,
        catalog: Catalog,
        gate: AccessGate,
        spool: SpoolWriter,
        cache_header: str = "x-cache",
        request_id_header: str = "x-request-id",
        trusted_upstreams: Collection[str] = (),
        fail_closed_scopes: Collection[str] = ("training",),
        pass_unlisted: bool = False,
        max_identify_bytes: int = 64 << 20,
        clock_ms: Callable[[], int] = now_ms,
        request_ids: Callable[[], str] | None = None,
    ) -> None:
        self.app = app
        self.signer = signer
        self.catalog = catalog
        self.gate = gate
        self.spool = spool
        self.cache_header = cache_header.lower().encode("latin-1")
        self.request_id_header = request_id_header.lower().encode("latin-1")
        self.trusted_upstreams = frozenset(trusted_upstreams)
        self.fail_closed_scopes = frozenset(fail_closed_scopes)
        self.pass_unlisted = pass_unlisted
        self.max_identify_bytes = max_identify_bytes
        self.clock_ms = clock_ms
        self.request_ids = request_ids or RequestIds()
        self.stats = MiddlewareStats()
        self._provenance: dict[tuple[str, str, str], bytes] = {}
        self._links: dict[str, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        item = self.catalog.lookup(scope["path"])
        if item is None:
            if self.pass_unlisted:
                await self.app(scope, receive, send)
            else:
                await _respond(send, 404, "path", "not in this edge's catalog")
            return
        served_at_ms = self.clock_ms()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        try:
            authorization = _header(headers, b"authorization")
            token = self.gate.token(
                None if authorization is None else authorization.decode("latin-1"), served_at_ms
            )
            self.gate.check_scope(token, item.scopes)
            if item.content_id is not None:
                self.gate.check_content(token, item.content_id)
        except AccessDenied as denied:
            await self._deny(send, denied)
            return
        request_id, from_upstream = self._request_id(scope, headers)
        metered = scope["method"] == "GET" and not from_upstream
        reservation = None
        if metered and token.scope in self.fail_closed_scopes:
            try:
                reservation = self.spool.reserve()
            except SpoolError as exc:
                self.stats.unavailable += 1
                log.warning("refused %s %s (503): %s", token.scope, scope["path"], exc)
                await _respond(
                    send,
                    503,
                    "spool",
                    f"receipts cannot be spooled now, so {token.scope} content is not served: "
                    f"{exc}",
                    [(b"retry-after", b"1"), (self.request_id_header, request_id.encode())],
                )
                return
        exchange = _Exchange(
            self,
            send,
            item=item,
            token=token,
            request_id=request_id,
            served_at_ms=served_at_ms,
            metered=metered,
            reservation=reservation,
        )
        try:
            await exchange.run(scope, receive)
        finally:
            if reservation is not None:
                reservation.release()

    def _request_id(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> tuple[str, bool]:
        """The request's id, and whether a trusted upstream tier set it."""
        client = scope.get("client")
        if client and client[0] in self.trusted_upstreams:
            value = _header(headers, self.request_id_header)
            if value is not None and _REQUEST_ID.fullmatch(value):
                return value.decode("ascii"), True
        return self.request_ids(), False

    async def _deny(self, send: Send, denied: AccessDenied) -> None:
        if denied.status == 401:
            self.stats.unauthorized += 1
        else:
            self.stats.forbidden += 1
        challenge = (b"www-authenticate", denied.www_authenticate().encode("latin-1"))
        await _respond(send, denied.status, "authorization", denied.reason, [challenge])

    def license_link(self, license_uri: str) -> bytes:
        """The ``Link`` value naming a license (cached per license)."""
        value = self._links.get(license_uri)
        if value is None:
            value = self._links[license_uri] = f'<{license_uri}>; rel="license"'.encode("ascii")
        return value

    def provenance(self, item: CatalogItem, content_id: str) -> bytes:
        """The ``X-Provenance`` value for this content and its terms (cached)."""
        key = (content_id, item.creator_id, item.manifest)
        value = self._provenance.get(key)
        if value is None:
            text = format_provenance(Provenance(content_id, item.creator_id, item.manifest))
            value = self._provenance[key] = text.encode("ascii")
            if len(self._provenance) > 100_000:
                self._provenance.clear()
        return value


class _Exchange:
    """One metered request and its response, as the middleware relays it."""

    def __init__(
        self,
        middleware: ReceiptMiddleware,
        downstream: Send,
        *,
        item: CatalogItem,
        token: AccessToken,
        request_id: str,
        served_at_ms: int,
        metered: bool,
        reservation: Reservation | None,
    ) -> None:
        self.m = middleware
        self.item = item
        self.token = token
        self.request_id = request_id
        self.served_at_ms = served_at_ms
        self.metered = metered
        self.reservation = reservation
        self.identify = item.content_id is None
        self.content_id = item.content_id
        self.downstream = downstream
        self.start: Message = {}  # the app's start message, held while receipted
        self.receipted = False  # this response gets a receipt (a metered GET, 200/206)
        self.started = False  # the start message went downstream
        self.replaced = False  # the middleware answered in the app's place; drop its sends
        self.spooled = False
        self.disconnected = False
        self.bytes_sent = 0
        self.buffer: list[bytes] = []
        self.buffered = 0

    # -- relaying -----------------------------------------------------------------------------

    async def run(self, scope: Scope, receive: Receive) -> None:
        inner = dict(scope)
        headers = [
            (k, v)
            for k, v in scope["headers"]
            if k != self.m.request_id_header and not (self.identify and k in _DROPPED_FOR_IDENTIFY)
        ]
        headers.append((self.m.request_id_header, self.request_id.encode("ascii")))
        inner["headers"] = headers
        extensions = scope.get("extensions")
        if extensions:
            inner["extensions"] = {
                k: v for k, v in extensions.items() if k not in _HIDDEN_EXTENSIONS
            }

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
            return message

        try:
            await self.m.app(inner, receive_wrapper, self.send)
        except _Aborted:
            if not self.replaced:
                raise  # a streamed response cut short: the server drops the connection
        finally:
            # The app returned or raised: if part of a metered body reached the client,
            # those bytes were delivered, and they get their receipt.
            if self.receipted and not self.spooled and self.started:
                await self._spool(final=False)

    async def send(self, message: Message) -> None:
        if self.replaced:
            return
        kind = message["type"]
        if kind == "http.response.start":
            await self._on_start(message)
        elif kind == "http.response.body":
            await self._on_body(message)
        else:
            await self._forward(message)

    async def _forward(self, message: Message, counted: int = 0) -> None:
        try:
            await self.downstream(message)
        except OSError:
            self.disconnected = True
            raise
        if not self.disconnected:
            self.bytes_sent += counted

    def _response_headers(self, start: Message, receipt: bool) -> Message:
        """The start message with the edge's headers set (theirs replace the app's)."""
        own = {b"x-provenance", b"x-receipt", self.m.request_id_header}
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in own]
        if self.content_id is not None:
            headers.append((b"x-provenance", self.m.provenance(self.item, self.content_id)))
        headers.append((b"link", self.m.license_link(self.item.license)))
        headers.append((self.m.request_id_header, self.request_id.encode("ascii")))
        if receipt:
            ref = format_receipt_ref(ReceiptRef(self.m.signer.edge, self.request_id))
            headers.append((b"x-receipt", ref.encode("ascii")))
        return {**start, "headers": headers}

    async def _on_start(self, message: Message) -> None:
        status = message["status"]
        self.receipted = self.metered and status in _METERED_STATUSES
        if status in _PROVENANCE_STATUSES and not (self.identify and self.receipted):
            message = self._response_headers(message, receipt=self.receipted)
        if self.receipted:
            self.start = message  # held until the body says how it is sent
            return
        self.started = True
        await self._forward(message)

    async def _on_body(self, message: Message) -> None:
        if not self.receipted:
            await self._forward(message)
            return
        body: bytes = message.get("body", b"")
        last = not message.get("more_body", False)
        if self.identify:
            await self._identify(body, last)
            return
        if not self.started and last:
            # The whole response in one message: spool first, then answer or refuse.
            self.bytes_sent = 0 if self.disconnected else len(body)
            if not await self._spool(final=True):
                return
            await self._send_start()
            await self._forward(message)
            return
        if not self.started:
            await self._send_start()
        if last:
            if not self.disconnected:
                self.bytes_sent += len(body)
            await self._spool(final=True, streamed=True)
            await self._forward(message)
            return
        await self._forward(message, counted=len(body))

    async def _send_start(self) -> None:
        self.started = True
        await self._forward(self.start)

    async def _identify(self, body: bytes, last: bool) -> None:
        """Buffer the body, hash it into the content_id, then spool and send it whole."""
        self.buffer.append(body)
        self.buffered += len(body)
        if self.buffered > self.m.max_identify_bytes:
            self.receipted = False
            self.replaced = True
            self.buffer.clear()
            await _respond(
                self.downstream,
                502,
                "content_id",
                f"the content is over {self.m.max_identify_bytes} bytes and the catalog has "
                "no content_id for it, so it cannot be identified",
            )
            raise _Aborted(f"{self.item.path}: too large to identify")
        if not last:
            return
        data = b"".join(self.buffer)
        self.buffer.clear()
        self.content_id = "sha256:" + hashlib.sha256(data).hexdigest()
        try:
            self.m.gate.check_content(self.token, self.content_id)
        except AccessDenied as denied:
            self.receipted = False
            self.replaced = True
            await self.m._deny(self.downstream, denied)
            return
        if self.start["status"] in _PROVENANCE_STATUSES:
            self.start = self._response_headers(self.start, receipt=True)
        self.bytes_sent = 0 if self.disconnected else len(data)
        if not await self._spool(final=True):
            return
        await self._send_start()
        await self._forward({"type": "http.response.body", "body": data, "more_body": False})

    # -- the receipt --------------------------------------------------------------------------

    async def _spool(self, *, final: bool, streamed: bool = False) -> bool:
        """Sign and spool this delivery's receipt; whether the response may go on.

        On failure, a fail-closed scope refuses (503, or :class:`_Aborted` when the
        response is already streaming); other scopes go on unmetered."""
        self.spooled = True
        cache_value = _header(self.start.get("headers", []), self.m.cache_header) or b""
        tiers = cache_value.split(b",")
        cache = "hit" if b"hit" in tiers[-1].strip().lower() else "miss"
        if self.content_id is None:  # pragma: no cover - identify mode sets it before spooling
            raise MalformedError("receipt.content_id", "the content was not identified")
        delivery = Delivery(
            request_id=self.request_id,
            consumer_id=self.token.consumer_id,
            token_id=self.token.token_id,
            job_id=self.token.job_id,
            scope=self.token.scope,
            content_id=self.content_id,
            creator_id=self.item.creator_id,
            manifest=self.item.manifest,
            bytes_sent=self.bytes_sent,
            cache=cache,
        )
        sign = functools.partial(self.m.signer.sign, delivery, served_at_ms=self.served_at_ms)
        try:
            stored = await self.m.spool.append(sign, self.reservation)  # signed off the loop
        except (SpoolError, MalformedError) as exc:
            return await self._spool_failed(exc, final=final, streamed=streamed)
        if stored:
            self.m.stats.receipts += 1
        else:
            self.m.stats.duplicates += 1
            log.info("request %s was spooled before; not metered twice", self.request_id)
        return True

    async def _spool_failed(self, exc: Exception, *, final: bool, streamed: bool) -> bool:
        path, scope = self.item.path, self.token.scope
        if scope not in self.m.fail_closed_scopes:
            self.m.stats.unmetered += 1
            log.error("UNMETERED %s delivery of %s (%s): %s", scope, path, self.request_id, exc)
            return True
        if final and not streamed and not self.started:
            self.m.stats.unavailable += 1
            self.replaced = True
            log.warning(
                "refused %s %s (503): the receipt could not be spooled: %s", scope, path, exc
            )
            await _respond(
                self.downstream,
                503,
                "spool",
                f"the receipt could not be spooled, so {scope} content is not served: {exc}",
                [(b"retry-after", b"1"), (self.m.request_id_header, self.request_id.encode())],
            )
            return False
        self.m.stats.aborted += 1
        log.error("aborted %s %s (%s): the receipt could not be spooled: %s", scope, path,
                  self.request_id, exc)  # fmt: skip
        if final:
            raise _Aborted(f"{path}: the receipt could not be spooled: {exc}") from exc
        return False
