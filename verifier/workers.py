"""The verifier's worker processes: how each one ends with the process that started them.

Owns :func:`exit_with_parent`, which every worker the verifier starts runs first: the
monitor's signature checkers (``verifier.monitor``) and the tile client's entry reader
(``verifier.client``). Imports the standard library only.

``log_server.signatures`` has its own copy for the server's signature checkers: the import
contracts let neither package import the other, and tlog, which both import, does no IO and
starts no threads.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["exit_with_parent"]


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """In a worker: exit as soon as the process ``parent`` that started it is gone.

    A worker blocked on its queue, its pipe or a slow server would otherwise outlive a parent
    killed with SIGKILL (or by the OOM killer), which gives the parent no chance to stop it.
    A daemon thread polls the worker's parent pid every ``poll_s`` seconds and ends the
    process (``os._exit``) once it has changed.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
