"""Checking the edges' signatures on submitted receipts, in worker processes.

Owns :class:`SignatureChecker`. An Ed25519 check is the one piece of work per receipt that
no log can skip, and about half of the server's CPU per receipt. In the server's own process
it competes for the GIL with everything else (each check releases the GIL and must win it
back), so by default the checks of each batch run in a worker process: one
:func:`tlog.note.verify_messages` call per batch, arguments and answers plain bytes and
strings. Imports tlog only.

What is checked here is the signature alone. The caller has already matched the receipt to
its registered edge key (by edge and key ID, from the registry whose keys were checked when
they were logged) and computed the signed bytes with :func:`tlog.entry.signed_message`:
together that is :func:`tlog.entry.verify_receipt`, split so that only bytes cross the
process boundary.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from tlog.note import verify_messages

__all__ = ["SignatureChecker", "SignedItem"]

SignedItem = tuple[str, bytes, bytes]
"""(the signer's verifier key string, the signed bytes, the signature)."""


class SignatureChecker:
    """Checks batches of signatures in ``processes`` worker processes, or with 0 on
    ``thread`` (the server's work thread). Workers start on first use, with the ``spawn``
    method: the server has threads and open database connections, which a forked child
    must not inherit.

    A worker that dies (killed, out of memory) breaks a ``ProcessPoolExecutor`` for good;
    the checker then starts a new pool and checks the batch again, once.
    """

    def __init__(self, processes: int, thread: Executor) -> None:
        if processes < 0:
            raise ValueError("processes must be 0 or more")
        self.processes = processes
        self._thread = thread
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> Executor:
        if self.processes == 0:
            return self._thread
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def check(self, items: Sequence[SignedItem]) -> list[str | None]:
        """One answer per item, in order: None, or why its signature does not verify."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        batch = list(items)
        try:
            return await loop.run_in_executor(self._executor(), verify_messages, batch)
        except BrokenProcessPool:
            self.close()
            return await loop.run_in_executor(self._executor(), verify_messages, batch)

    def close(self) -> None:
        """Stop the worker processes, if any (the work thread is the caller's to stop)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _exit_with_parent(parent: int) -> None:
    """In a worker: exit as soon as the server that started it is gone.

    A worker blocks reading its pool's queue, whose other end its sibling workers hold too,
    so a server killed with SIGKILL (or by the OOM killer) would leave them, and their
    resource tracker, running for good. (The verifier's workers run
    ``verifier.workers.exit_with_parent``, the same; log_server may not import verifier.)
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
