"""The log server as a real process, driven from outside: start, load, kill, audit.

Owns what the process-level tests (test_crash, test_multiprocess, test_schemathesis) do to a
``meterlog serve`` subprocess: :func:`running_server` starts one on a free loopback port (port
0; the announced URL is read from its stderr log) and waits for ``/healthz`` with bounded
polling, and always stops it (SIGTERM, then SIGKILL); :class:`Load` submits batches of
receipts from threads and records every acknowledged answer and every checkpoint served;
:func:`audit_log` reads the whole log back over HTTP and checks it the way an auditor would.

Talks to the server over HTTP only; imports tlog and the conftest helpers, never log_server.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.log_server.conftest import make_receipt
from tlog.bundle import parse_bundle, verify_bundle
from tlog.checkpoint import SignedCheckpoint, open_checkpoint
from tlog.entry import Receipt, decode_entry, encode_entry
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import SigningKey, Verifier, format_vkey, parse_vkey
from tlog.parsing import decode_b64
from tlog.proofs import verify_consistency

METERLOG = Path(sys.executable).with_name("meterlog")
ORIGIN = "test.example/meterlog-process"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PAGE = 1000
_ANNOUNCED = re.compile(rb"serving the log \S+ at (http://127\.0\.0\.1:\d+)")


# -- the process ----------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A running ``meterlog serve``; ``log_path`` holds its stderr."""

    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path

    @property
    def log_key(self) -> Verifier:
        return parse_vkey((self.data_dir / "log.vkey").read_text(encoding="utf-8").strip())

    @property
    def token(self) -> str:
        return (self.data_dir / "operator.token").read_text(encoding="utf-8").strip()

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final seal: a crash."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM (graceful: the pool is sealed first), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)


def _environment() -> dict[str, str]:
    """This environment without METERLOG_* settings, so only the flags configure the server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("METERLOG_")}


def start_server(
    data_dir: Path,
    *,
    db: str | None = None,
    origin: str = ORIGIN,
    pool_interval_s: float = 0.05,
    checkpoint_interval_s: float = 3600.0,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """Start ``meterlog serve`` on a free loopback port and return once /healthz says ok.

    Raises AssertionError (with the server's output) if it exits or is not healthy within
    :data:`START_TIMEOUT_S`; the process is killed in that case.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    runs = itertools.count()
    log_path = data_dir.parent / f"{data_dir.name}.serve-{next(runs)}.log"
    while log_path.exists():
        log_path = data_dir.parent / f"{data_dir.name}.serve-{next(runs)}.log"
    argv = [
        str(METERLOG),
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--origin",
        origin,
        "--pool-interval",
        str(pool_interval_s),
        "--checkpoint-interval",
        str(checkpoint_interval_s),
    ]
    if db is not None:
        argv += ["--db", db]
    argv += extra_args
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**_environment(), **(extra_env or {})},
        )
    server = ServerProcess(process, "", data_dir, log_path)
    try:
        _wait_until_healthy(server)
    except BaseException:
        server.kill()
        raise
    return server


def _wait_until_healthy(server: ServerProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"meterlog serve exited with {server.process.returncode}:\n{server.output()}"
            )
        if not server.url:
            found = _ANNOUNCED.search(server.log_path.read_bytes())
            if found is not None:
                server.url = found.group(1).decode()
        if server.url:
            with suppress(httpx.TransportError):
                health = httpx.get(f"{server.url}/healthz", timeout=2.0)
                if health.status_code == 200 and health.json()["ok"]:
                    return
        time.sleep(0.05)
    raise AssertionError(
        f"meterlog serve was not healthy in {START_TIMEOUT_S} s:\n{server.output()}"
    )


@contextmanager
def running_server(
    data_dir: Path,
    *,
    db: str | None = None,
    checkpoint_interval_s: float = 3600.0,
    origin: str = ORIGIN,
    extra_args: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """:func:`start_server` for the ``with`` block; stopped afterwards, whatever happens."""
    server = start_server(
        data_dir,
        db=db,
        checkpoint_interval_s=checkpoint_interval_s,
        origin=origin,
        extra_args=extra_args,
    )
    try:
        yield server
    finally:
        server.stop()


def register_edge(server: ServerProcess, key: SigningKey) -> dict[str, object]:
    """Register ``key`` for its edge (valid from 0) through the admin API; the answer."""
    body = {
        "action": "register",
        "edge": key.name,
        "key": format_vkey(key.verifier()),
        "valid_from_ms": 0,
    }
    response = httpx.post(
        f"{server.url}/v1/admin/edge-keys",
        json=body,
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=10.0,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    assert answer["status"] == "logged", answer
    return answer


# -- load -----------------------------------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def receipt(request_id: str, edge_key: SigningKey) -> Receipt:
    """A fresh receipt (served now) with this request id, signed by ``edge_key``."""
    return make_receipt(0, served_at_ms=now_ms(), edge_key=edge_key, request_id=request_id)


def submit(client: httpx.Client, url: str, receipts: Sequence[Receipt]) -> httpx.Response:
    body = "\n".join(encode_entry(r).decode() for r in receipts)
    return client.post(
        f"{url}/v1/receipts", content=body, headers={"Content-Type": "application/jsonl"}
    )


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """A receipt the log answered for: where it is, and the bundle that says so."""

    request_id: str
    status: str
    index: int
    bundle: str = field(repr=False)
    url: str = ""


@dataclass
class Load:
    """Submits batches of fresh receipts from threads until stopped, and records everything.

    ``acknowledged`` gets every "logged"/"duplicate" answer; ``unacknowledged`` every receipt
    whose request failed in transport (it may or may not be logged); ``checkpoints`` every note
    served by GET /checkpoint; ``problems`` anything else (another status, a 5xx, a result
    that does not match its receipt) -- a healthy log has none.
    """

    edge_key: SigningKey
    prefix: str
    batch_size: int = 20
    acknowledged: list[Acknowledged] = field(default_factory=list, repr=False)
    unacknowledged: list[Receipt] = field(default_factory=list, repr=False)
    checkpoints: list[bytes] = field(default_factory=list, repr=False)
    problems: list[str] = field(default_factory=list)
    batches: int = 0
    """Requests that got an HTTP answer."""
    died_in_flight: int = 0
    """Requests that connected but got no answer (the server died meanwhile)."""
    in_flight: int = 0
    """Submissions sent and not yet answered, right now."""
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def next_batch(self) -> list[Receipt]:
        with self._lock:
            numbers = [next(self._counter) for _ in range(self.batch_size)]
        return [receipt(f"{self.prefix}-{n}", self.edge_key) for n in numbers]

    def send(self, client: httpx.Client, url: str, receipts: Sequence[Receipt]) -> bool:
        """Submit one batch and record the outcome; False if the transport failed."""
        with self._lock:
            self.in_flight += 1
        try:
            response = submit(client, url, receipts)
        except httpx.TransportError as exc:
            with self._lock:
                self.in_flight -= 1
                self.unacknowledged.extend(receipts)
                if not isinstance(exc, httpx.ConnectError):
                    self.died_in_flight += 1
            return False
        with self._lock:
            self.in_flight -= 1
            self.batches += 1
            if response.status_code != 200:
                self.problems.append(f"{url}: {response.status_code} {response.text[:500]}")
                return True
            results = response.json()["results"]
            if len(results) != len(receipts):
                self.problems.append(f"{url}: {len(results)} results for {len(receipts)}")
                return True
            for sent, result in zip(receipts, results, strict=True):
                if result["status"] not in ("logged", "duplicate"):
                    self.problems.append(f"{url}: {sent.request_id}: {result}")
                    continue
                self.acknowledged.append(
                    Acknowledged(
                        sent.request_id, result["status"], result["index"], result["bundle"], url
                    )
                )
        return True

    def read_checkpoint(self, client: httpx.Client, url: str) -> None:
        with suppress(httpx.TransportError):
            response = client.get(f"{url}/checkpoint")
            with self._lock:
                if response.status_code == 200:
                    self.checkpoints.append(response.content)
                else:
                    self.problems.append(f"{url}/checkpoint: {response.status_code}")

    def run(self, url: str, stop: threading.Event) -> None:
        """Submit new batches (reading /checkpoint after each) until ``stop`` is set."""
        with httpx.Client(timeout=httpx.Timeout(10.0, connect=2.0)) as client:
            while not stop.is_set():
                self.send(client, url, self.next_batch())
                self.read_checkpoint(client, url)

    def replay(self, url: str, batches: Sequence[Sequence[Receipt]]) -> None:
        """Submit these batches in order (reading /checkpoint after each), once."""
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=2.0)) as client:
            for batch in batches:
                if not self.send(client, url, batch):
                    self.problems.append(f"{url}: the request failed in transport")
                self.read_checkpoint(client, url)


# -- auditing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditedLog:
    """The whole log as read back and checked by :func:`audit_log`."""

    checkpoint: SignedCheckpoint
    entries: list[bytes]
    receipts: dict[tuple[str, str], int]
    """(edge, request_id) -> index, for every receipt in the log."""


def fetch_json(client: httpx.Client, url: str) -> dict[str, object]:
    response = client.get(url)
    assert response.status_code == 200, f"{url}: {response.status_code} {response.text}"
    value: dict[str, object] = response.json()
    return value


def fetch_entries(client: httpx.Client, url: str, tree_size: int) -> list[bytes]:
    """Entries 0..tree_size-1, page by page; asserts each page holds exactly its indexes."""
    entries: list[bytes] = []
    for start in range(0, tree_size, PAGE):
        end = min(start + PAGE, tree_size)
        page = fetch_json(client, f"{url}/v1/entries?start={start}&end={end}")["entries"]
        assert isinstance(page, list)
        assert [e["index"] for e in page] == list(range(start, end)), "a gap in the entries"
        entries.extend(e["entry"].encode() for e in page)
    return entries


def checkpoint_history(client: httpx.Client, url: str) -> list[bytes]:
    """Every checkpoint in GET /v1/checkpoints, paged by id; asserts the ids increase."""
    notes: list[bytes] = []
    after = 0
    while True:
        page = fetch_json(client, f"{url}/v1/checkpoints?after={after}&limit={PAGE}")
        rows = page["checkpoints"]
        assert isinstance(rows, list)
        if not rows:
            return notes
        ids = [row["id"] for row in rows]
        assert ids == sorted(ids) and ids[0] > after, f"{url}: checkpoint ids out of order"
        notes.extend(row["checkpoint"].encode() for row in rows)
        after = ids[-1]


def check_consistent(
    client: httpx.Client, url: str, notes: Sequence[bytes], final: SignedCheckpoint, key: Verifier
) -> int:
    """Every note opens with ``key``; no two carry different roots for one size; each is
    consistent with ``final`` by a proof the server gives. The number of distinct sizes."""
    roots: dict[int, bytes] = {}
    for note in set(notes):
        checkpoint = open_checkpoint(note, [key], origin=final.checkpoint.origin).checkpoint
        seen = roots.setdefault(checkpoint.tree_size, checkpoint.root_hash)
        assert seen == checkpoint.root_hash, f"two roots for tree size {checkpoint.tree_size}"
    new = final.checkpoint
    for old_size, old_root in sorted(roots.items()):
        assert old_size <= new.tree_size, f"a checkpoint of size {old_size} > the final one"
        answer = fetch_json(
            client, f"{url}/v1/proofs/consistency?old_size={old_size}&new_size={new.tree_size}"
        )
        proof = answer["proof"]
        assert isinstance(proof, list)
        hashes = [decode_b64(h, "proof") for h in proof]
        verify_consistency(old_size, new.tree_size, hashes, old_root, new.root_hash)
    return len(roots)


def audit_log(url: str, key: Verifier, acknowledged: Sequence[Acknowledged]) -> AuditedLog:
    """Read the log at ``url`` back and check it from outside.

    The latest checkpoint verifies with ``key``; the entries are exactly indexes
    0..tree_size-1 and hash to its root; no (edge, request_id) is logged twice; every
    acknowledged answer names the index where its receipt is, and its bundle still verifies
    and carries exactly the logged bytes.
    """
    with httpx.Client(timeout=30.0) as client:
        response = client.get(f"{url}/checkpoint")
        assert response.status_code == 200, response.text
        final = open_checkpoint(response.content, [key])
        size = final.checkpoint.tree_size
        entries = fetch_entries(client, url, size)
    store = MemoryHashStore()
    store.append([leaf_hash(data) for data in entries])
    assert root_hash(size, store) == final.checkpoint.root_hash, "entries do not hash to the root"
    receipts: dict[tuple[str, str], int] = {}
    for index, data in enumerate(entries):
        entry = decode_entry(data)
        if isinstance(entry, Receipt):
            id_key = (entry.edge, entry.request_id)
            assert id_key not in receipts, f"{id_key} at {receipts.get(id_key)} and {index}"
            receipts[id_key] = index
    for ack in acknowledged:
        assert 0 <= ack.index < size, f"{ack} is past the final tree size {size}"
        logged = decode_entry(entries[ack.index])
        assert isinstance(logged, Receipt), f"{ack}: entry {ack.index} is not a receipt"
        assert logged.request_id == ack.request_id, f"{ack}: entry is {logged.request_id}"
        verified = verify_bundle(parse_bundle(ack.bundle.encode()), [key])
        assert verified.index == ack.index
        assert verified.entry == entries[ack.index]
    return AuditedLog(final, entries, receipts)


def bundle_checkpoints(acknowledged: Sequence[Acknowledged]) -> list[bytes]:
    """The signed checkpoint notes inside the acknowledged answers' bundles."""
    return [parse_bundle(ack.bundle.encode()).checkpoint for ack in acknowledged]
