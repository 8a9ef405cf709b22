"""Two ``meterlog serve`` processes on one PostgreSQL database make one log.

Both servers share the log key (the second data dir holds copies of the first's log key,
operator key and operator token) and sequence into the same fresh database, re-signing
checkpoints every 0.2 s. Four threads, two per server (one in order, one in reverse), submit
the *same* shared batches of receipts, so one (edge, request_id) races through both
sequencers and within one; interleaved with them, each server's two threads also submit
batches only that server gets, so both sequencers write all along. Afterwards, from outside:
each request_id was logged by exactly one answer, every answer for it names the same index,
and only the servers it was sent to answered; the entries are 0..N-1 without gaps, hash to
the final checkpoint's root and are the same through either server; no request_id is logged
twice; every checkpoint either server served (GET /checkpoint, bundles, and the whole GET
/v1/checkpoints history of both) is consistent with the final one; and no tree size has two
root hashes.

PostgreSQL is required: unreachable, the test is skipped, and under CI=true it fails.
"""

from __future__ import annotations

import shutil
import threading
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from tests.log_server.conftest import EDGE_KEY, fresh_database, require_postgres
from tests.log_server.server_process import (
    Acknowledged,
    Load,
    audit_log,
    bundle_checkpoints,
    check_consistent,
    checkpoint_history,
    receipt,
    register_edge,
    running_server,
)
from tlog.bundle import parse_bundle
from tlog.entry import Receipt

SHARED_BATCHES = 30
OWN_BATCHES = 6
BATCH_SIZE = 20
CHECKPOINT_INTERVAL_S = 0.2
SHARED_FILES = ("log.key", "operator.key", "operator.token")


def _batches(prefix: str, count: int) -> list[list[Receipt]]:
    return [
        [receipt(f"{prefix}-{b}-{i}", EDGE_KEY) for i in range(BATCH_SIZE)] for b in range(count)
    ]


def _interleave(shared: list[list[Receipt]], own: list[list[Receipt]]) -> list[list[Receipt]]:
    """``shared`` with one batch of ``own`` after every few, so both run the whole time."""
    step = len(shared) // len(own)
    mixed: list[list[Receipt]] = []
    for at, batch in enumerate(own):
        mixed += [*shared[at * step : (at + 1) * step], batch]
    return mixed + shared[len(own) * step :]


@pytest.mark.slow
def test_two_servers_on_one_postgres_database_make_one_log(tmp_path: Path) -> None:
    require_postgres()
    shared = _batches("shared", SHARED_BATCHES)
    own = {"a": _batches("only-a", OWN_BATCHES), "b": _batches("only-b", OWN_BATCHES)}
    with (
        fresh_database("postgresql", tmp_path) as db,
        running_server(tmp_path / "a", db=db, checkpoint_interval_s=CHECKPOINT_INTERVAL_S) as a,
    ):
        (tmp_path / "b").mkdir()
        for file_name in SHARED_FILES:
            shutil.copy2(tmp_path / "a" / file_name, tmp_path / "b" / file_name)
        with running_server(
            tmp_path / "b", db=db, checkpoint_interval_s=CHECKPOINT_INTERVAL_S
        ) as b:
            key = a.log_key
            assert b.log_key == key
            registration = register_edge(b, EDGE_KEY)
            servers = {"a": a, "b": b}
            work = {
                (server, direction): (
                    servers[server].url,
                    _interleave(shared, own[server])
                    if direction == "up"
                    else _interleave(shared[::-1], own[server][::-1]),
                )
                for server in servers
                for direction in ("up", "down")
            }
            loads = {name: Load(EDGE_KEY, prefix="unused") for name in work}
            threads = [
                threading.Thread(target=loads[name].replay, args=work[name], daemon=True)
                for name in work
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120.0)
            assert not any(thread.is_alive() for thread in threads), "a load thread hung"
            for name, load in loads.items():
                assert not load.problems, (name, load.problems)
                assert load.batches == SHARED_BATCHES + OWN_BATCHES, name

            answered = [ack for load in loads.values() for ack in load.acknowledged]
            audited = audit_log(a.url, key, answered)
            from_b = audit_log(b.url, key, [])  # the bundles were checked once, above
            assert from_b.checkpoint.checkpoint.tree_size == audited.checkpoint.checkpoint.tree_size
            assert from_b.entries == audited.entries

            served = [
                parse_bundle(str(registration["bundle"]).encode()).checkpoint,
                *bundle_checkpoints(answered),
            ]
            with httpx.Client(timeout=30.0) as client:
                for load in loads.values():
                    served.extend(load.checkpoints)
                history = [*checkpoint_history(client, a.url), *checkpoint_history(client, b.url)]
                check_consistent(client, a.url, [*served, *history], audited.checkpoint, key)

    # Who must have answered for each request_id: all four threads for a shared receipt,
    # its own server's two threads for an exclusive one.
    expected = {r.request_id: {a.url, b.url} for batch in shared for r in batch}
    for server, batches in own.items():
        expected.update({r.request_id: {servers[server].url} for bt in batches for r in bt})
    assert len(audited.entries) == 1 + len(expected)  # the registration, then each receipt once
    assert {rid for (_, rid) in audited.receipts} == set(expected)
    answers: defaultdict[str, list[Acknowledged]] = defaultdict(list)
    for ack in answered:
        answers[ack.request_id].append(ack)
    assert set(answers) == set(expected)
    for request_id, said in answers.items():
        assert len(said) == 2 * len(expected[request_id]), request_id  # every thread answered
        assert {ack.url for ack in said} == expected[request_id]
        logged = [ack for ack in said if ack.status == "logged"]
        assert len(logged) == 1, (request_id, said)  # logged once, a duplicate for the rest
        assert {ack.index for ack in said} == {audited.receipts[(EDGE_KEY.name, request_id)]}
