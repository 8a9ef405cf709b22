"""Spool crash safety: SIGKILL a real edge process while it is serving (spooling receipts)
and submitting them, restart it, repeat; then drain the spool. Every receipt the edge
spooled, and every delivery a client saw complete, must be in the log exactly once, as the
very bytes the edge signed.

The edge is ``meterlog edge serve-demo`` (the middleware, the spool writer and the
submitter thread in one process) in front of a real ``meterlog serve`` on loopback, loaded
by client threads downloading with a training token. Each kill lands while a batch is on
the wire: rows sent to the log but not yet answered, seen by reading the spool file.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from edge_signer.spool import DB_NAME, Spool
from tests.edge_signer.edge_process import METERLOG, EdgeProcess, start_demo, write_key
from tests.log_server.server_process import fetch_entries, register_edge, running_server
from tlog.checkpoint import open_checkpoint
from tlog.entry import Receipt, decode_entry, encode_entry
from tlog.note import SigningKey
from tlog.token import AccessToken, format_token, sign_token

EDGE = SigningKey("edge-crash", bytes([31]) * 32)
MARKET = SigningKey("market.crash", bytes([32]) * 32)
CYCLES = 3
FILES = 20
WAIT_S = 30.0


@dataclass
class Downloads:
    """Client threads downloading catalogued files until stopped; ``completed`` holds the
    X-Request-Id of every 200 response read in full."""

    url: str
    token: str
    completed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, offset: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(timeout=httpx.Timeout(10.0, connect=2.0)) as client:
            n = offset
            while not self.stop.is_set():
                n += 1
                try:
                    response = client.get(f"{self.url}/f{n % FILES}.bin", headers=headers)
                except httpx.TransportError:
                    continue  # the edge was killed under this request
                with self._lock:
                    if response.status_code == 200 and len(response.content) == 10_240:
                        self.completed.append(response.headers["x-request-id"])
                    else:
                        self.problems.append(f"{response.status_code}: {response.text[:200]}")


def spool_counts(spool: Path) -> tuple[int, int]:
    """(verified, in flight: sent but unanswered), read from the spool file by another
    process, as an operator's ``meterlog edge status`` would."""
    conn = sqlite3.connect(f"file:{spool / DB_NAME}?mode=ro", uri=True, timeout=5)
    try:
        verified = conn.execute("SELECT count(*) FROM receipts WHERE state = 'verified'").fetchone()
        flying = conn.execute(
            "SELECT count(*) FROM receipts WHERE state = 'pending' AND attempts > 0"
        ).fetchone()
    finally:
        conn.close()
    return int(verified[0]), int(flying[0])


def kill_while_submitting(edge: EdgeProcess, at_least_verified: int) -> int:
    """Wait (bounded) until the spool has ``at_least_verified`` verified receipts and a
    batch is on the wire, then SIGKILL the edge. How many batches were seen in flight."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with suppress(sqlite3.OperationalError):  # the file may be busy for a moment
            verified, flying = spool_counts(edge.spool)
            if verified >= at_least_verified and flying:
                edge.kill()
                return 1
        time.sleep(0.002)
    edge.kill()
    return 0


@pytest.mark.slow
def test_sigkill_while_spooling_and_submitting_loses_and_doubles_nothing(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    for i in range(FILES):
        (content / f"f{i}.bin").write_bytes(bytes([i]) * 10_240)
    edge_key_file, _ = write_key(EDGE, tmp_path)
    _, market_vkey = write_key(MARKET, tmp_path)
    spool = tmp_path / "spool"
    now_ms = time.time_ns() // 1_000_000
    token = format_token(
        sign_token(
            AccessToken(MARKET.name, "tok-crash", "acme-ai", "training", now_ms, now_ms + 3_600_000,
                        job_id="job-crash"),
            MARKET,
        )
    )  # fmt: skip
    completed: list[str] = []
    in_flight_kills = 0
    with running_server(tmp_path / "log") as log:
        register_edge(log, EDGE)
        log_vkey = log.data_dir / "log.vkey"
        for cycle in range(CYCLES):
            edge = start_demo(
                content,
                edge_key_file=edge_key_file,
                marketplace_vkey=market_vkey,
                log_url=log.url,
                log_vkey=log_vkey,
                spool=spool,
                extra=["--batch-size", "8", "--batch-wait", "0.02", "--timeout", "5"],
            )
            load = Downloads(edge.url, token)
            threads = [threading.Thread(target=load.run, args=(k * 7,)) for k in range(3)]
            for thread in threads:
                thread.start()
            try:
                in_flight_kills += kill_while_submitting(edge, at_least_verified=40 * (cycle + 1))
            finally:
                load.stop.set()
                for thread in threads:
                    thread.join(30)
                edge.kill()
            assert load.problems == [], load.problems[:5]
            assert load.completed, f"cycle {cycle}: nothing was served\n{edge.output()}"
            completed.extend(load.completed)
        assert in_flight_kills >= 1, "no kill landed while a batch was on the wire"

        # Restart the edge's submitter alone and let it drain what the kills left.
        with Spool(spool) as reopened:
            left = reopened.status()
        assert left.pending > 0, "the kills left nothing to resubmit: the test proved little"
        drain = subprocess.run(
            [str(METERLOG), "edge", "run", "--spool", str(spool), "--log", log.url,
             "--log-key", str(log_vkey), "--exit-when-drained"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert drain.returncode == 0, drain.stderr

        with Spool(spool) as final:
            rows = final.receipts(limit=1_000_000)
            status = final.status()
        assert status.pending == status.rejected == status.conflict == 0
        assert status.verified == status.spooled == len(rows)

        with httpx.Client(timeout=30.0) as client:
            checkpoint = open_checkpoint(client.get(f"{log.url}/checkpoint").content, [log.log_key])
            entries = fetch_entries(client, log.url, checkpoint.checkpoint.tree_size)
    logged: dict[str, bytes] = {}
    for data in entries:
        entry = decode_entry(data)
        if isinstance(entry, Receipt) and entry.edge == EDGE.name:
            assert entry.request_id not in logged, f"{entry.request_id} is logged twice"
            assert entry.logged_at_ms is not None
            logged[entry.request_id] = encode_entry(dataclasses.replace(entry, logged_at_ms=None))
    spooled = {row.request_id: row.entry for row in rows}
    assert logged == spooled  # every spooled receipt, as signed, exactly once; nothing else
    missing = set(completed) - set(spooled)
    assert not missing, f"{len(missing)} completed deliveries have no receipt"
    assert len(set(completed)) == len(completed)
