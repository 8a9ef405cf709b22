"""The worker processes that check signatures (the log server's and the monitor's) exit when
the process that started them is killed with SIGKILL, which gives it no chance to stop them:
they must notice alone, or they and their resource tracker run forever."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

STAND_INS = {
    "log server": """
import asyncio
from concurrent.futures import ThreadPoolExecutor
from log_server.signatures import SignatureChecker
checker = SignatureChecker(1, ThreadPoolExecutor(1))
asyncio.run(checker.check([("not a key", b"", b"")]))
workers = checker._pool._processes
""",
    "monitor": """
from verifier.monitor import _pool
_pool().submit(abs, -1).result()
workers = _pool()._processes
""",
}


@pytest.mark.parametrize("owner", sorted(STAND_INS))
def test_workers_exit_when_their_owner_is_killed(owner: str) -> None:
    code = STAND_INS[owner] + "print(*workers, flush=True)\nimport time; time.sleep(60)\n"
    owner_process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the orphaned resource tracker's cleanup warnings
        text=True,
    )
    assert owner_process.stdout is not None
    with owner_process.stdout:
        try:
            workers = [int(pid) for pid in owner_process.stdout.readline().split()]
            assert workers and all(_alive(pid) for pid in workers)
        finally:
            owner_process.kill()
            owner_process.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers {workers} outlived their {owner}"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by init, does not)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"
