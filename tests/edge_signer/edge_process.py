"""``meterlog edge serve-demo`` as a real process, for the crash and end-to-end tests.

Owns starting the demo origin on a free loopback port (port 0; the announced URL is read
from its stderr) with bounded polling until it answers, and stopping or killing it; and
writing the files it needs (edge key, marketplace key, content). Talks to it over HTTP only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tlog.note import SigningKey, format_skey, format_vkey

METERLOG = Path(sys.executable).with_name("meterlog")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
_ANNOUNCED = re.compile(rb"serving \S+ at (http://127\.0\.0\.1:\d+)")


@dataclass
class EdgeProcess:
    """A running demo origin; ``log_path`` holds its stderr."""

    process: subprocess.Popen[bytes]
    url: str
    spool: Path
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed: a crash."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)


def write_key(key: SigningKey, directory: Path) -> tuple[Path, Path]:
    """The key's signer file (as meterlog keygen writes it) and verifier key file."""
    skey = directory / f"{key.name}.key"
    vkey = directory / f"{key.name}.vkey"
    skey.write_text(format_skey(key) + "\n", encoding="utf-8")
    skey.chmod(0o600)
    vkey.write_text(format_vkey(key.verifier()) + "\n", encoding="utf-8")
    return skey, vkey


def start_demo(
    directory: Path,
    *,
    edge_key_file: Path,
    marketplace_vkey: Path,
    log_url: str,
    log_vkey: Path,
    spool: Path,
    extra: list[str] | None = None,
) -> EdgeProcess:
    """Start ``meterlog edge serve-demo`` and return once it answers HTTP."""
    runs = 0
    log_path = spool.parent / f"{spool.name}.demo-{runs}.log"
    while log_path.exists():
        runs += 1
        log_path = spool.parent / f"{spool.name}.demo-{runs}.log"
    argv = [
        str(METERLOG), "edge", "serve-demo", str(directory),
        "--key-file", str(edge_key_file),
        "--marketplace-key", str(marketplace_vkey),
        "--log", log_url, "--log-key", str(log_vkey),
        "--spool", str(spool),
        "--creator", "acct:alice@example.com",
        "--license", "https://market.example/licenses/train-1",
        "--host", "127.0.0.1", "--port", "0",
        *(extra or []),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLOG_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    edge = EdgeProcess(process, "", spool, log_path)
    try:
        _wait_until_serving(edge)
    except BaseException:
        edge.kill()
        raise
    return edge


def _wait_until_serving(edge: EdgeProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if edge.process.poll() is not None:
            raise AssertionError(
                f"serve-demo exited with {edge.process.returncode}:\n{edge.output()}"
            )
        if not edge.url:
            found = _ANNOUNCED.search(edge.log_path.read_bytes())
            if found is not None:
                edge.url = found.group(1).decode()
        if edge.url:
            try:
                probe = httpx.get(f"{edge.url}/not-catalogued", timeout=2.0)
            except httpx.TransportError:
                pass
            else:
                if probe.status_code == 404:
                    return
        time.sleep(0.05)
    raise AssertionError(f"serve-demo did not answer in {START_TIMEOUT_S} s:\n{edge.output()}")
