"""The audit and reconciliation portal: static pages that verify the log in the browser.

Owns the browser UI only: plain HTML, CSS and JavaScript modules under ``static/``, committed
as they are served (no build step, no external font or CDN), and :func:`portal_mount`, the
Starlette mount the log server puts at ``/portal/``. The pages read the log's public API and
check every proof themselves (``static/js/tlog.js`` mirrors the verifying half of ``tlog``),
so the server is never trusted for a result the page can compute. Imports starlette only.
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

__all__ = ["STATIC_DIR", "portal_mount"]

STATIC_DIR = Path(__file__).parent / "static"
"""The pages, the stylesheet and the JavaScript modules, exactly as served."""

CACHE_CONTROL = b"no-cache"
"""Browsers keep the files but revalidate them (ETag, Last-Modified) on every load: a page
that verifies proofs must never run yesterday's verification code after an upgrade, and a
304 costs one round trip on loopback."""


class _PortalFiles(StaticFiles):
    """StaticFiles (``html=True``: ``/portal/`` serves ``index.html``) with the portal's
    cache policy and a ``nosniff`` header, so a module is only ever run as JavaScript."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"cache-control", b"x-content-type-options")
                ]
                headers.append((b"cache-control", CACHE_CONTROL))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def portal_mount(path: str = "/portal") -> Mount:
    """The portal's static files mounted at ``path`` (the log server uses ``/portal``)."""
    return Mount(path, app=_PortalFiles(directory=STATIC_DIR, html=True), name="portal")
