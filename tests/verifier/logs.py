"""Logs for the verifier's tests: real ``meterlog serve`` processes on databases built here,
and a tampering proxy in front of them.

Owns three things the verifier, monitor and witness tests share:

* :func:`build_log` writes a log's data dir (keys from fixed seeds) and appends entries with
  ``log_server.storage`` directly, at a fixed clock. The normal path is the real sequencer
  (:func:`log_entries`); :func:`append_unchecked` appends entries the sequencer would refuse
  (a receipt by an unknown or revoked key): a misbehaving log, for the monitor to catch. Two
  logs built from the same entries are byte-identical, so a split view is two builds that
  share a prefix.
* :func:`serve_log` serves such a data dir with a real ``meterlog serve`` on loopback.
* :class:`TamperProxy`, a small HTTP server on loopback that forwards GETs to a real log and
  lets a test rewrite any answer (fault injection) or switch the log behind it (split view).

And :func:`running_witness`, a real ``meterlog witness serve`` on a given loopback port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from log_server.sequencer import LogIdentity, sequence
from log_server.storage import EntryRecord, Storage, StoredCheckpoint
from tests.log_server.conftest import make_edge_key
from tests.log_server.server_process import METERLOG, ServerProcess, running_server
from tlog.checkpoint import Checkpoint, sign_checkpoint
from tlog.entry import EdgeKey, Entry, Receipt, encode_entry, sign_receipt
from tlog.hashing import leaf_hash
from tlog.merkle import append_hashes, root_hash, stored_hash_count
from tlog.note import SigningKey, format_skey, format_vkey

ORIGIN = "test.example/verifier"
LOG_KEY = SigningKey(ORIGIN, bytes(range(1, 33)))
OTHER_LOG_KEY = SigningKey(ORIGIN, bytes(range(2, 34)))
"""Same name, another key: a checkpoint "signed by another key"."""
OPERATOR_KEY = SigningKey(f"{ORIGIN}/operator", bytes(range(3, 35)))
EDGE_KEY = SigningKey("edge-1", bytes(range(4, 36)))
EDGE_KEY_2 = SigningKey("edge-1", bytes(range(5, 37)))
ROGUE_KEY = SigningKey("edge-1", bytes(range(6, 38)))
"""An edge key the operator never registered."""
WITNESS_KEY = SigningKey("witness.test.example", bytes(range(7, 39)))
WITNESS_KEY_2 = SigningKey("witness2.test.example", bytes(range(8, 40)))
NOW_MS = 1_790_000_000_000
LOG = LogIdentity(ORIGIN, LOG_KEY)
TOKEN = "test-operator-token-0123456789"


def _secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text + "\n")


def build_log(data_dir: Path) -> Storage:
    """A data dir ``meterlog serve --origin ORIGIN`` will use, with its empty database open."""
    data_dir.mkdir(parents=True, exist_ok=True)
    _secret(data_dir / "log.key", format_skey(LOG_KEY))
    _secret(data_dir / "operator.key", format_skey(OPERATOR_KEY))
    _secret(data_dir / "operator.token", TOKEN)
    return Storage.open(f"sqlite:///{data_dir / 'log.db'}")


def registration(
    key: SigningKey = EDGE_KEY,
    action: str = "register",
    *,
    valid_from_ms: int = 0,
    valid_until_ms: int | None = None,
    replaces: SigningKey | None = None,
) -> EdgeKey:
    """An edge_key statement about ``key``, signed by this log's operator."""
    return make_edge_key(
        key, action=action, valid_from_ms=valid_from_ms, valid_until_ms=valid_until_ms,
        replaces=replaces, operator=OPERATOR_KEY,
    )  # fmt: skip


def receipt(
    i: int,
    key: SigningKey = EDGE_KEY,
    *,
    served_at_ms: int = NOW_MS - 1000,
    consumer: str | None = None,
    job: str | None = None,
    prefix: str = "req",
) -> Receipt:
    return sign_receipt(
        Receipt(
            request_id=f"{prefix}-{i}",
            edge=key.name,
            consumer_id=consumer or f"consumer-{i % 3}",
            token_id="tok",
            job_id=job,
            scope="training",
            content_id="sha256:" + f"{i % 7:02x}" * 32,
            creator_id=f"creator-{i % 4}",
            manifest="sha256:" + "ab" * 32,
            bytes_sent=1000 + i,
            cache="hit",
            served_at_ms=served_at_ms,
        ),
        key,
    )


def log_entries(storage: Storage, entries: Sequence[Entry], now_ms: int = NOW_MS) -> None:
    """Sequence ``entries`` through the real sequencer, in batches of 500."""
    for at in range(0, len(entries), 500):
        outcomes, _ = sequence(storage, LOG, list(entries[at : at + 500]), now_ms)
        refused = [o for o in outcomes if not hasattr(o, "data")]
        assert not refused, refused


def append_unchecked(
    storage: Storage, entries: Sequence[Entry], now_ms: int = NOW_MS
) -> StoredCheckpoint:
    """Append entries the sequencer would refuse, and sign a checkpoint over them."""
    with storage.sequencing():
        size = storage.tree_size()
        data = [encode_entry(replace(e, logged_at_ms=now_ms)) for e in entries]
        records = [
            EntryRecord(size + i, d, leaf_hash(d), e.kind, now_ms)
            for i, (d, e) in enumerate(zip(data, entries, strict=True))
        ]
        hashes = append_hashes(size, [r.leaf_hash for r in records], storage)
        storage.append_hashes(stored_hash_count(size), hashes)
        storage.append_entries(records)
        new_size = size + len(records)
        root = root_hash(new_size, storage)
        note = sign_checkpoint(Checkpoint(ORIGIN, new_size, root), [LOG_KEY.signer()])
        checkpoint = StoredCheckpoint(new_size, root, note, now_ms)
        storage.append_checkpoint(checkpoint)
    return checkpoint


@contextmanager
def serve_log(data_dir: Path, extra_args: Sequence[str] = ()) -> Iterator[ServerProcess]:
    with running_server(data_dir, origin=ORIGIN, extra_args=extra_args) as server:
        yield server


Mutate = Callable[[str, int, bytes], tuple[int, bytes]]


class TamperProxy:
    """An HTTP server on 127.0.0.1 forwarding GETs to ``upstream``; ``mutate(path, status,
    body)`` may rewrite each answer. ``fetched`` lists every path asked for."""

    def __init__(self, upstream: str, mutate: Mutate | None = None) -> None:
        self.upstream = upstream
        self.mutate = mutate
        self.fetched: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.fetched.append(self.path)
                answer = httpx.get(proxy.upstream + self.path, timeout=30.0)
                status, body = answer.status_code, answer.content
                if proxy.mutate is not None:
                    status, body = proxy.mutate(self.path, status, body)
                self.send_response(status)
                self.send_header("Content-Type", answer.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TamperProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# -- a witness process ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class WitnessProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_witness(
    directory: Path, port: int, key: SigningKey = WITNESS_KEY, logs: Sequence[str] = ()
) -> WitnessProcess:
    """``meterlog witness serve`` on 127.0.0.1:``port`` with its state in ``directory``;
    returns once it answers (bounded polling)."""
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "witness.key"
    if not key_file.exists():
        _secret(key_file, format_skey(key))
    argv = [str(METERLOG), "witness", "serve", "--key-file", str(key_file), "--port", str(port),
            "--db", str(directory / "witness.db")]  # fmt: skip
    for vkey in logs or [format_vkey(LOG_KEY.verifier())]:
        argv += ["--log", vkey]
    log_path = directory / f"witness-{time.monotonic_ns()}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    witness = WitnessProcess(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the witness exited:\n{log_path.read_text()}")
        with suppress(httpx.TransportError):
            if httpx.get(f"{witness.url}/{'0' * 64}/checkpoint", timeout=2).status_code == 404:
                return witness
        time.sleep(0.05)
    witness.stop()
    raise AssertionError(f"the witness did not answer in 30 s:\n{log_path.read_text()}")


@contextmanager
def running_witness(directory: Path, port: int, **kwargs: object) -> Iterator[WitnessProcess]:
    witness = start_witness(directory, port, **kwargs)  # type: ignore[arg-type]
    try:
        yield witness
    finally:
        witness.stop()
