"""The chains the anchoring tests run against: a real anvil node and the in-process eth-tester.

Owns starting anvil (the binary that ``make test`` installs from the npm registry into
``node_modules/``) on a free loopback port, waiting for it with bounded polling and always
stopping it; the well-known development keys of both chains; and :class:`FlakyProxy`, a TCP
proxy on loopback that the tests switch off and on to make the node unreachable (fault
injection: the node itself keeps running, so its state survives the outage).

When anvil is not installed, the tests that need it are skipped, except under CI
(``CI=true``), where they fail: CI must test against a real node.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from anchor.chain import IN_PROCESS, Chain, ChainError
from anchor.secret import AnchorKey

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
ANVIL_CHAIN_ID = 31337
ANVIL_KEY = AnchorKey.parse(
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80", "anvil account 0"
)
"""anvil's first development account (from its published test mnemonic): funded on start."""
ANVIL_OTHER_KEY = AnchorKey.parse(
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d", "anvil account 1"
)
ETH_TESTER_KEY = AnchorKey(bytes(31) + b"\x01", "eth-tester account 0")
ETH_TESTER_OTHER_KEY = AnchorKey(bytes(31) + b"\x02", "eth-tester account 1")
_LISTENING = re.compile(rb"Listening on (\d+\.\d+\.\d+\.\d+:\d+)")


def anvil_binary() -> Path | None:
    """anvil as installed by ``npm ci``: the native binary of the platform package (run
    directly, so stopping it stops the node, not just node's wrapper around it)."""
    found = sorted((ROOT / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil"))
    return found[0] if found else None


def require_anvil() -> Path:
    binary = anvil_binary()
    if binary is not None:
        return binary
    problem = "anvil is not installed in node_modules/ (make test runs npm ci)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}; CI must test against a real node", pytrace=False)
    pytest.skip(problem)


@dataclass
class Anvil:
    process: subprocess.Popen[bytes]
    url: str


@contextmanager
def running_anvil(*extra: str) -> Iterator[Anvil]:
    """anvil on 127.0.0.1, a free port (it picks one: port 0), until the block ends."""
    binary = require_anvil()
    process = subprocess.Popen(
        [str(binary), "--host", "127.0.0.1", "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = _await_listening(process)
        yield Anvil(process, url)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _await_listening(process: subprocess.Popen[bytes]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        match = _LISTENING.search(line)
        if match:
            url = "http://" + match.group(1).decode()
            threading.Thread(target=_drain, args=(process,), daemon=True).start()
            _await_rpc(url, deadline)
            return url
    raise AssertionError(f"anvil did not start: {seen.decode(errors='replace')[-2000:]}")


def _drain(process: subprocess.Popen[bytes]) -> None:
    """Read anvil's output to the end, so a full pipe never stalls it."""
    assert process.stdout is not None
    with suppress(ValueError, OSError):
        for _ in process.stdout:
            pass


def _await_rpc(url: str, deadline: float) -> None:
    while True:
        try:
            Chain.connect(url, timeout_s=2.0)
            return
        except ChainError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class DeployedChain:
    """A chain with the anchor contract deployed, and two funded accounts."""

    chain: Chain
    endpoint: str
    contract: str
    key: AnchorKey
    other_key: AnchorKey
    chain_id: int


@contextmanager
def deployed_chain(kind: str, *anvil_args: str) -> Iterator[DeployedChain]:
    """``anvil`` (a real node, started with ``anvil_args``) or ``eth-tester`` (in process),
    with the contract deployed."""
    if kind == "eth-tester":
        chain = Chain.connect(IN_PROCESS)
        contract = chain.deploy(ETH_TESTER_KEY)
        yield DeployedChain(
            chain, IN_PROCESS, contract, ETH_TESTER_KEY, ETH_TESTER_OTHER_KEY, chain.chain_id
        )
        return
    with running_anvil(*anvil_args) as anvil:
        chain = Chain.connect(anvil.url, expected_chain_id=ANVIL_CHAIN_ID)
        contract = chain.deploy(ANVIL_KEY)
        yield DeployedChain(chain, anvil.url, contract, ANVIL_KEY, ANVIL_OTHER_KEY, ANVIL_CHAIN_ID)


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 to ``target`` (host, port). While ``up`` is False it accepts
    connections and closes them at once, and cuts the open ones, so clients see the node as
    unreachable."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        """Unreachable from now on; open connections are cut before this returns."""
        self.up = False
        for thread in self._threads:
            thread.join(timeout=5)

    def close(self) -> None:
        self._closed = True
        self.up = False
        self._server.close()
        self._accepting.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            thread = threading.Thread(target=self._relay, args=(client, upstream), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        with client, upstream, suppress(OSError):
            peer = {client: upstream, upstream: client}
            while self.up:
                readable, _, _ = select.select(list(peer), [], [], 0.1)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    peer[source].sendall(data)


@contextmanager
def flaky_proxy(url: str) -> Iterator[FlakyProxy]:
    host, port = url.removeprefix("http://").split(":")
    proxy = FlakyProxy((host, int(port)))
    try:
        yield proxy
    finally:
        proxy.close()


def poll(predicate: object, timeout_s: float = 30.0, what: str = "the condition") -> None:
    """Wait (bounded) until ``predicate()`` is true; a failed assertion says what."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
