"""The demo origin: a directory served through :class:`ReceiptMiddleware`, with a submitter.

Owns assembling a complete metering edge for ``meterlog edge serve-demo``: Starlette's
static files (which answer ``Range`` requests with 206), wrapped in the middleware, with the
spool's writer and a submitter thread started and stopped by the app's lifespan. Imports
starlette (the ``[edge]`` or ``[server]`` extra), tlog and edge_signer; must not import
verifier, log_server, anchor, billing or cli.

The submitter thread drains the spool into the log as :meth:`Submitter.run` does. If it
stops because the log misbehaved, the error is logged and the origin goes on serving and
spooling: receipts stay on disk, and a training request is refused (503) once the spool is
full, never served unmetered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from edge_signer.catalog import Catalog
from edge_signer.middleware import ReceiptMiddleware
from edge_signer.signer import EdgeSigner
from edge_signer.spool import DEFAULT_CAPACITY, Spool, SpoolWriter
from edge_signer.submitter import (
    LogMisbehaviourError,
    LogRefusedError,
    Submitter,
    submitter_lock,
)
from edge_signer.tokens import AccessGate
from tlog.note import Verifier

__all__ = ["DemoSettings", "SubmitterThread", "demo_app"]

log = logging.getLogger("edge_signer.demo")


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo origin needs (the command line fills it in)."""

    directory: Path
    signer: EdgeSigner
    catalog: Catalog
    marketplace_keys: tuple[Verifier, ...]
    spool_dir: Path
    log_url: str
    log_key: Verifier
    origin: str | None = None
    capacity: int = DEFAULT_CAPACITY
    trusted_upstreams: Collection[str] = ()
    batch_size: int = 256
    batch_wait_s: float = 0.5
    timeout_s: float = 10.0
    fail_closed_scopes: Collection[str] = field(default=("training",))


class SubmitterThread:
    """A :class:`Submitter` draining the spool in a thread of its own, until stopped."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="submitter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        self.stop_event.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        s = self.settings
        try:
            with submitter_lock(s.spool_dir), Spool(s.spool_dir, capacity=s.capacity) as spool:
                client = httpx.Client(timeout=httpx.Timeout(s.timeout_s, connect=5.0))
                with client:
                    submitter = Submitter(
                        spool,
                        s.log_url,
                        s.log_key,
                        origin=s.origin,
                        client=client,
                        batch_size=s.batch_size,
                        batch_wait_s=s.batch_wait_s,
                    )
                    submitter.run(self.stop_event)
        except (LogMisbehaviourError, LogRefusedError) as exc:
            self.error = exc  # logged by Submitter.run; the origin keeps spooling
        except Exception as exc:  # a thread must not die silently
            self.error = exc
            log.critical("the submitter stopped: %s: %s", type(exc).__name__, exc)
            raise


def demo_app(settings: DemoSettings) -> ReceiptMiddleware:
    """The demo origin's ASGI app: static files under the middleware, with a lifespan that
    starts the spool writer and the submitter, and stops them (the writer commits what is
    queued first)."""
    writer = SpoolWriter(settings.spool_dir, capacity=settings.capacity)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer.start()
        submitter = SubmitterThread(settings)
        submitter.start()
        app.state.submitter = submitter
        try:
            yield
        finally:
            submitter.stop()
            writer.close()

    files = Starlette(
        routes=[Mount("/", StaticFiles(directory=settings.directory))], lifespan=lifespan
    )
    return ReceiptMiddleware(
        files,
        signer=settings.signer,
        catalog=settings.catalog,
        gate=AccessGate(settings.marketplace_keys),
        spool=writer,
        trusted_upstreams=settings.trusted_upstreams,
        fail_closed_scopes=settings.fail_closed_scopes,
    )
