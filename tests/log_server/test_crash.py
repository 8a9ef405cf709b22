"""Crash safety of the real server: SIGKILL ``meterlog serve`` under load, restart, audit.

Several rounds, on SQLite and on PostgreSQL: start the server, submit batches of receipts
from two threads, kill it with SIGKILL after a random (seeded) delay while requests are in
flight, and start it again on the same database. Then, from outside: every receipt the log
acknowledged is at the index it was given and its bundle still verifies; every checkpoint
ever served (by /checkpoint or inside a bundle) or stored (GET /v1/checkpoints) is
consistent with the final one; the entries are 0..N-1, hash to the final root, and hold no
duplicate (edge, request_id); and every receipt whose request failed, in any round, can be
resubmitted and is then logged or found already logged (``duplicate``: committed before the
kill, never answered) -- nothing acknowledged was lost, nothing unacknowledged was
half-written, and the log holds exactly the receipts submitted.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.log_server.conftest import DATABASE_KINDS, EDGE_KEY, fresh_database
from tests.log_server.server_process import (
    Acknowledged,
    Load,
    audit_log,
    bundle_checkpoints,
    check_consistent,
    checkpoint_history,
    register_edge,
    running_server,
    start_server,
)
from tlog.bundle import parse_bundle, verify_bundle

SEED = 20240611
ROUNDS = 4
KILL_AFTER_S = (0.3, 1.5)
THREADS = 2
FIRST_ACK_TIMEOUT_S = 20.0
RESUBMIT_BATCH = 100


@pytest.fixture(params=DATABASE_KINDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _wait_for_acks(load: Load, more_than: int, server_url: str) -> None:
    """Bounded polling: until this round has an acknowledged answer (the server is working)."""
    deadline = time.monotonic() + FIRST_ACK_TIMEOUT_S
    while len(load.acknowledged) <= more_than:
        assert not load.problems, load.problems
        assert time.monotonic() < deadline, f"no receipt acknowledged by {server_url}"
        time.sleep(0.02)


def _crash_round(load: Load, data_dir: Path, db_url: str, rng: random.Random) -> None:
    """Start the server, load it, SIGKILL it mid-load; the load threads are always stopped."""
    server = start_server(data_dir, db=db_url)
    stop = threading.Event()
    threads = [
        threading.Thread(target=load.run, args=(server.url, stop), daemon=True)
        for _ in range(THREADS)
    ]
    try:
        before = len(load.acknowledged)
        for thread in threads:
            thread.start()
        _wait_for_acks(load, before, server.url)
        time.sleep(rng.uniform(*KILL_AFTER_S))  # the crash point, not a wait for work
        # ...moved to the next moment a submission is on the wire (bounded), so the kill
        # always lands on work in flight.
        deadline = time.monotonic() + 10.0
        while load.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        server.kill()
        assert server.process.returncode == -9, server.output()
    finally:
        server.kill()  # kill first, then stop: requests in flight must die with the server
        stop.set()
        for thread in threads:
            thread.join(timeout=30.0)
    assert not any(thread.is_alive() for thread in threads), "a load thread hung"


def _resubmit(url: str, load: Load) -> list[Acknowledged]:
    """Submit every receipt whose request failed, again; every answer must be logged or dup."""
    retry = Load(load.edge_key, prefix="unused")
    with httpx.Client(timeout=30.0) as client:
        for at in range(0, len(load.unacknowledged), RESUBMIT_BATCH):
            batch = load.unacknowledged[at : at + RESUBMIT_BATCH]
            assert retry.send(client, url, batch), "the restarted server did not answer"
    assert not retry.problems, retry.problems
    assert len(retry.acknowledged) == len(load.unacknowledged)
    return retry.acknowledged


@pytest.mark.slow
def test_acknowledged_receipts_survive_sigkill(db_url: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)  # noqa: S311 -- a reproducible crash schedule, not a secret
    data_dir = tmp_path / "data"
    load = Load(EDGE_KEY, prefix="crash")
    with running_server(data_dir, db=db_url) as first:
        registration = register_edge(first, EDGE_KEY)

    for _ in range(ROUNDS):
        _crash_round(load, data_dir, db_url, rng)
    assert not load.problems, load.problems
    assert {ack.status for ack in load.acknowledged} == {"logged"}  # every request_id is new
    assert load.died_in_flight > 0, "no request died with the server: the kills missed the load"

    with running_server(data_dir, db=db_url) as server:
        key = server.log_key
        retried = _resubmit(server.url, load)
        answered = [*load.acknowledged, *retried]
        audited = audit_log(server.url, key, answered)
        registration_bundle = parse_bundle(str(registration["bundle"]).encode())
        verify_bundle(registration_bundle, [key])
        served = [
            registration_bundle.checkpoint,
            *load.checkpoints,
            *bundle_checkpoints(answered),
        ]
        with httpx.Client(timeout=30.0) as client:
            served.extend(checkpoint_history(client, server.url))
            sizes = check_consistent(client, server.url, served, audited.checkpoint, key)

    submitted = {r.request_id for r in load.unacknowledged} | {a.request_id for a in answered}
    logged = {request_id for (edge, request_id) in audited.receipts if edge == EDGE_KEY.name}
    assert logged == submitted, "the log holds receipts nobody submitted, or lost some"
    assert len(audited.entries) == 1 + len(submitted)  # the registration, then the receipts
    assert sizes >= ROUNDS  # each round served at least one new tree size
