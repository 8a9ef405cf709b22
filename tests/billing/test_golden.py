"""Golden statements, one per pricing model: per billable event by scope, per GiB, a share of
cache savings, revenue share over declared revenue, and an upfront licence with residuals.

Each builds a small log in memory, runs the real engine, and checks the statement twice: its
amounts against figures worked out by hand here (the rounding, the fee and reserve splits),
and its bytes against the committed file in tests/billing/golden/ — so any change to the
format or the arithmetic shows up as a diff to review. ``METERLOG_UPDATE_GOLDEN=1`` rewrites
the files (then review the diff and commit it).
"""

from __future__ import annotations

import os
from pathlib import Path

from billing.engine import Run
from tests.billing.logs import ALICE, BOB, HOUR_MS, PARENT, T0, Ledger, policy, statements
from tlog.statement import StatementDocument, parse_statement

GOLDEN = Path(__file__).parent / "golden"
CLOSE_MS = T0 + 24 * HOUR_MS


def _golden(name: str, data: bytes) -> StatementDocument:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("METERLOG_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"{path} is missing: run with METERLOG_UPDATE_GOLDEN=1 and review it"
    assert data == path.read_bytes(), f"the statement differs from {path}"
    return parse_statement(data)


def _amounts(document: StatementDocument) -> list[tuple[str, str | None, int, int, int, int]]:
    return [
        (line.type, line.scope, line.amount_minor, line.fee_minor, line.reserve_minor,
         line.creator_minor)
        for line in document.lines
    ]  # fmt: skip


def _totals(document: StatementDocument) -> tuple[int, int, int, int]:
    t = document.totals
    return t.gross_minor, t.fee_minor, t.reserve_minor, t.paid_minor


def test_per_event_by_scope(ledger: Ledger) -> None:
    ledger.setup()
    ledger.publish("photo-1", {"training": "0.05", "inference": "0.002", "preview": "0.01"})
    ledger.receipt("t1", T0 + HOUR_MS, job_id="job-1")
    ledger.receipt("t2", T0 + 2 * HOUR_MS, job_id="job-1")  # the same job, window: no event
    ledger.receipt("t3", T0 + 3 * HOUR_MS, job_id="job-2")
    for i in (1, 2, 3):
        ledger.receipt(f"i{i}", T0 + i * HOUR_MS, scope="inference", job_id=None)
    ledger.receipt("i1", T0 + HOUR_MS + 20, scope="inference", job_id=None, edge=PARENT)
    ledger.receipt("p1", T0 + HOUR_MS, scope="preview", job_id=None)  # rule: none
    run = ledger.bill(policy(), CLOSE_MS)
    (statement,) = run.statements
    document = _golden("per_event", _statement_bytes(ledger, run))
    # inference: 3 requests (the parent tier's receipt is the same request) x 0.002 = 0.006
    # -> 1 cent; training: 2 jobs x 0.05 = 10 cents. gross 11: fee 2.2 -> 2, reserve 0.9 -> 1,
    # split by largest remainder (training's remainders are larger both times).
    assert _amounts(document) == [
        ("event", "inference", 1, 0, 0, 1),
        ("event", "training", 10, 2, 1, 7),
    ]
    assert _totals(document) == (11, 2, 1, 8)
    assert document.lines[1].leaf_indices == (4, 6)
    reasons = {e.reason: e.receipts for e in document.excluded}
    assert reasons == {"not_billable": 1, "duplicate_request": 1, "duplicate_event": 1}
    assert statement.document.totals == document.totals


def test_per_gib_with_sampling(ledger: Ledger) -> None:
    ledger.setup()
    ledger.publish("dataset", {"per_gib": "0.50"})
    ledger.receipt("a", T0 + HOUR_MS, name="dataset", bytes_sent=1 << 30, job_id="j1")
    ledger.receipt("b", T0 + HOUR_MS, name="dataset", bytes_sent=2 << 30, job_id="j2")
    ledger.receipt("c", T0 + HOUR_MS, name="dataset", bytes_sent=1 << 29, job_id="j3")
    # Sampled at 1 in 4: it stands for four deliveries of 1 GiB.
    ledger.receipt("d", T0 + HOUR_MS, name="dataset", bytes_sent=1 << 30, job_id="j4",
                   sample_rate=(1, 4))  # fmt: skip
    run = ledger.bill(policy(), CLOSE_MS)
    document = _golden("per_gib", _statement_bytes(ledger, run))
    # 1 + 2 + 0.5 + 4 x 1 = 7.5 GiB x 0.50 = 3.75: one rounding, exact here.
    assert _amounts(document) == [("gib", "training", 375, 75, 30, 270)]
    assert document.lines[0].quantity == str(15 << 29)
    assert document.lines[0].sample_rates == ("1/1", "1/4")
    assert _totals(document) == (375, 75, 30, 270)


def test_cache_savings_share(ledger: Ledger) -> None:
    ledger.setup()
    ledger.publish("video", {"savings_share": "0.15"})
    ledger.receipt("h1", T0 + HOUR_MS, name="video", bytes_sent=50 * 10**9, cache="hit")
    ledger.receipt("h2", T0 + HOUR_MS, name="video", bytes_sent=50 * 10**9, cache="hit",
                   job_id="job-2")  # fmt: skip
    ledger.receipt("m1", T0 + HOUR_MS, name="video", bytes_sent=30 * 10**9, cache="miss",
                   job_id="job-3")  # fmt: skip
    run = ledger.bill(policy(), CLOSE_MS)
    document = _golden("cache_savings", _statement_bytes(ledger, run))
    # 100 GB served from the edge saved (0.08 - 0.02) per GB = 6.00; 15% of it = 0.90. The miss
    # saved nothing. fee 18, reserve 7.2 -> 7.
    assert _amounts(document) == [("savings", "training", 90, 18, 7, 65)]
    assert document.lines[0].quantity == str(100 * 10**9)
    assert _totals(document) == (90, 18, 7, 65)


def test_revenue_share(ledger: Ledger) -> None:
    ledger.setup(creators=(ALICE, BOB))
    ledger.publish("photo-a", {"revenue_share": "0.30"})
    ledger.publish("photo-b", {"revenue_share": "0.50"}, creator=BOB)
    ledger.publish("photo-c", {"training": "0.01"})
    for i, name in enumerate(("photo-a", "photo-a", "photo-b", "photo-c")):
        creator = BOB.name if name == "photo-b" else ALICE.name
        ledger.receipt(f"r{i}", T0 + HOUR_MS, name=name, job_id=f"job-{i}", creator_id=creator)
    ledger.revenue("acme-ai", 100_001, "acme-2026-11", T0 + 2 * HOUR_MS)
    run = ledger.bill(policy(), CLOSE_MS)
    alice = _golden("revenue_share_alice", _statement_bytes(ledger, run, ALICE.name))
    bob = _golden("revenue_share_bob", _statement_bytes(ledger, run, BOB.name))
    # 1,000.01 over the buyer's 4 events: photo-a 2, photo-b 1, photo-c 1 -> 500.005 -> the
    # cents 50,000.5 / 25,000.25 / 25,000.25 -> 50,000 / 25,000 / 25,000 and the one cent
    # left to the largest remainder (photo-a). Alice's 30% of 50,001 = 15,000.3 -> 15,000;
    # Bob's 50% of 25,000 = 12,500; photo-c has no revenue terms, only its event (1 cent).
    assert _amounts(alice) == [("event", "training", 1, 0, 0, 1), ("revenue", None, 15000,
                                3000, 1200, 10800)]  # fmt: skip
    revenue_line = alice.lines[1]
    assert (revenue_line.quantity, revenue_line.weight, revenue_line.weight_total) == (
        "50001", "2", "4",
    )  # fmt: skip
    assert revenue_line.leaf_indices == (ledger.size - 1,)
    assert revenue_line.consumer_id == "acme-ai" and revenue_line.revenue_minor == 100_001
    assert _amounts(bob) == [("revenue", None, 12500, 2500, 1000, 9000)]
    assert _totals(alice) == (15001, 3000, 1200, 10801)


def test_upfront_licence_and_residuals(ledger: Ledger) -> None:
    ledger.setup()
    manifest = ledger.publish("corpus", {"upfront": "250", "training": "0.01"})
    for i in range(3):
        ledger.receipt(f"r{i}", T0 + HOUR_MS, name="corpus", job_id=f"job-{i}")
    run = ledger.bill(policy(), CLOSE_MS)
    document = _golden("upfront", _statement_bytes(ledger, run))
    # The licence, once (the manifest's publication is in the range): 250.00; residuals:
    # 3 events x 0.01. gross 25,003: fee 5,000.6 -> 5,001; reserve 2,000.2 -> 2,000; the fee
    # split 25,000 : 3 gives the event line 0.6 -> its remainder loses to the licence's.
    assert _amounts(document) == [
        ("upfront", None, 25000, 5000, 2000, 18000),
        ("event", "training", 3, 1, 0, 2),
    ]
    assert document.lines[0].leaf_indices == (3,)
    assert document.lines[0].manifest == manifest
    assert _totals(document) == (25003, 5001, 2000, 18002)
    # A second run does not pay the licence again, only new residuals.
    ledger.log_run(run, CLOSE_MS + 1000)
    ledger.receipt("r9", CLOSE_MS + HOUR_MS, name="corpus", job_id="job-9")
    (second,) = ledger.bill(policy(), CLOSE_MS + 2 * HOUR_MS).statements
    assert [line.type for line in second.document.lines] == ["event"]


def _statement_bytes(ledger: Ledger, run: Run, creator_id: str = ALICE.name) -> bytes:
    found = statements(run)
    assert creator_id in found, f"no statement for {creator_id}: {sorted(found)}"
    return found[creator_id][1]
