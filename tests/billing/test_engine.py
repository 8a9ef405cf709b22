"""The billing engine's rules, on logs built in memory: property tests (money conservation,
the same amounts whatever order the receipts were logged in, dedup windows, 1/p scaling,
carry-over below the minimum, late receipts as adjustments) and one test per rule
(withdrawal, attribution, edge keys, lateness, counted-before, reserves and disputes,
currencies, a statement index that lies)."""

from __future__ import annotations

import dataclasses
import random
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.engine import Run
from tests.billing.logs import (
    ALICE,
    BOB,
    DAY_MS,
    EDGE,
    HOUR_MS,
    OPERATOR,
    PARENT,
    T0,
    Ledger,
    digest_of,
    policy,
    statements,
)
from tlog.entry import Creator, Dispute, EdgeKey, sign_creator, sign_dispute, sign_edge_key
from tlog.errors import VerificationError
from tlog.note import format_vkey
from tlog.statement import StatementDocument, parse_statement, statement_digest

ALL_TERMS = {
    "training": "0.05",
    "inference": "0.003",
    "preview": "0.001",
    "per_gib": "0.37",
    "savings_share": "0.15",
    "revenue_share": "0.25",
}
_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def documents(run: Run) -> dict[str, StatementDocument]:
    """Each creator's statement, parsed from its bytes (so every format check runs)."""
    return {c: parse_statement(data) for c, (_, data) in statements(run).items()}


def fresh() -> Ledger:
    ledger = Ledger()
    ledger.setup(creators=(ALICE, BOB))
    ledger.publish("photo-1", ALL_TERMS)
    ledger.publish("photo-2", ALL_TERMS, creator=BOB)
    return ledger


# A receipt as the strategies draw it: (request, name, scope, job, offset_ms, bytes, cache,
# sample rate, parent tier?)
_receipt = st.tuples(
    st.integers(0, 30),
    st.sampled_from(["photo-1", "photo-2"]),
    st.sampled_from(["training", "inference", "preview"]),
    st.sampled_from(["job-1", "job-2", "job-3"]),
    st.integers(0, 3 * DAY_MS),
    st.integers(0, 5 << 30),
    st.sampled_from(["hit", "miss"]),
    st.sampled_from([(1, 1), (1, 2), (1, 10), (2, 3)]),
    st.booleans(),
)


def _log(ledger: Ledger, drawn: list[Any], logged_at_ms: int | None = None) -> None:
    seen = set()
    for request, name, scope, job, offset, size, cache, sample, parent in drawn:
        edge = PARENT if parent else EDGE
        if (request, edge.name) in seen:
            continue  # the log keeps one receipt per (edge, request_id)
        seen.add((request, edge.name))
        creator = BOB.name if name == "photo-2" else ALICE.name
        ledger.receipt(
            f"req-{request}", T0 + offset, name=name, scope=scope, job_id=job, bytes_sent=size,
            cache=cache, sample_rate=sample, edge=edge, creator_id=creator,
            logged_at_ms=logged_at_ms,
        )  # fmt: skip


@_SETTINGS
@given(st.lists(_receipt, max_size=60), st.integers(0, 10**7))
def test_money_is_conserved(drawn: list[Any], revenue_minor: int) -> None:
    ledger = fresh()
    try:
        _log(ledger, drawn)
        ledger.revenue("acme-ai", revenue_minor, "r-1", T0 + 3 * DAY_MS)
        run = ledger.bill(policy(minimum_minor="1000"), T0 + 4 * DAY_MS)
        gross = fee = reserve = creator = 0
        for document in documents(run).values():  # parse_statement checks each statement
            t = document.totals
            assert t.creator_minor + t.fee_minor + t.reserve_minor == t.gross_minor
            assert all(line.creator_minor >= 0 for line in document.lines)
            gross, fee = gross + t.gross_minor, fee + t.fee_minor
            reserve, creator = reserve + t.reserve_minor, creator + t.creator_minor
        assert creator + fee + reserve == gross
        revenue = sum(
            line.amount_minor
            for document in documents(run).values()
            for line in document.lines
            if line.type == "revenue"
        )
        assert revenue <= revenue_minor  # shares of a split that adds up to the declaration
    finally:
        ledger.close()


def _without_positions(document: StatementDocument) -> Any:
    """What must not depend on the order receipts were logged in: everything but the leaf
    indices and the tree itself."""
    return (
        [dataclasses.replace(line, leaf_indices=()) for line in document.lines],
        [(e.reason, e.receipts) for e in document.excluded],
        document.totals,
    )


@_SETTINGS
@given(st.lists(_receipt, min_size=1, max_size=50), st.randoms(use_true_random=False))
def test_the_same_receipts_in_any_order_give_the_same_amounts(
    drawn: list[Any], shuffle: random.Random
) -> None:
    first, second = fresh(), fresh()
    try:
        last = T0 + 3 * DAY_MS + 1000
        _log(first, drawn, logged_at_ms=last)
        reordered = list(drawn)
        shuffle.shuffle(reordered)
        # The log dedups (edge, request_id) keeping the first it saw: keep the same ones.
        kept = {(d[0], d[8]): d for d in reversed(drawn)}
        _log(second, [kept[(d[0], d[8])] for d in reordered], logged_at_ms=last)
        a = documents(first.bill(policy(), last + HOUR_MS))
        b = documents(second.bill(policy(), last + HOUR_MS))
        assert a.keys() == b.keys()
        for creator in a:
            assert _without_positions(a[creator]) == _without_positions(b[creator])
    finally:
        first.close()
        second.close()


@_SETTINGS
@given(st.lists(st.integers(0, 5 * DAY_MS), min_size=1, max_size=40), st.sampled_from([1, 6, 24]))
@example([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1)  # ties in time: r10 sorts before r2
def test_training_counts_once_per_job_per_window(offsets: list[int], window_h: int) -> None:
    ledger = fresh()
    try:
        for i, offset in enumerate(offsets):
            ledger.receipt(f"r{i}", T0 + offset, job_id="job-1")
        rules = policy(window_s=str(window_h * 3600))
        (document,) = documents(ledger.bill(rules, T0 + 6 * DAY_MS)).values()
        (events,) = [line for line in document.lines if line.type == "event"]
        windows = {(T0 + o) // (window_h * HOUR_MS) for o in offsets}
        assert events.quantity == str(len(windows))
        # The earliest receipt of each window is the one counted: by served time, then (one
        # edge here) by request id, as text -- never by log position.
        earliest: dict[int, int] = {}
        for i, offset in enumerate(offsets):
            window = (T0 + offset) // (window_h * HOUR_MS)
            best = earliest.get(window)
            if best is None or (offset, f"r{i}") < (offsets[best], f"r{best}"):
                earliest[window] = i
        first_index = 6  # 2 edge keys, 2 creators, 2 manifests
        assert events.leaf_indices == tuple(sorted(first_index + i for i in earliest.values()))
    finally:
        ledger.close()


@_SETTINGS
@given(st.integers(1, 1000), st.integers(1, 1000), st.integers(1, 5))
def test_a_sampled_receipt_counts_one_over_p(numerator: int, denominator: int, count: int) -> None:
    a, b = sorted((numerator, denominator))
    a, b = a // (g := _gcd(a, b)), b // g
    ledger = fresh()
    try:
        for i in range(count):
            ledger.receipt(f"r{i}", T0 + HOUR_MS, job_id=f"job-{i}", sample_rate=(a, b),
                           bytes_sent=1 << 30)  # fmt: skip
        (document,) = documents(ledger.bill(policy(), T0 + DAY_MS)).values()
        event = next(line for line in document.lines if line.type == "event")
        gib = next(line for line in document.lines if line.type == "gib")
        weight = Fraction(b, a) * count
        assert Fraction(event.quantity) == weight
        assert event.amount_minor == round(weight * Fraction("0.05") * 100)
        assert Fraction(gib.quantity) == weight * (1 << 30)
        assert gib.amount_minor == round(weight * Fraction("0.37") * 100)
        assert event.sample_rates == (f"{a}/{b}",)
    finally:
        ledger.close()


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


@_SETTINGS
@given(st.lists(st.integers(0, 40), min_size=2, max_size=6), st.integers(1, 300))
def test_balances_below_the_minimum_carry_over(jobs_per_run: list[int], minimum: int) -> None:
    ledger = Ledger()
    ledger.setup()
    ledger.publish("photo-1", {"training": "0.05"})
    rules = policy(minimum_minor=str(minimum), share='"0"')
    try:
        earned = paid = 0
        carried = 0
        for run_number, jobs in enumerate(jobs_per_run):
            start = T0 + run_number * DAY_MS
            for job in range(jobs):
                ledger.receipt(
                    f"r{run_number}-{job}", start + HOUR_MS, job_id=f"j{run_number}-{job}"
                )
            run = ledger.bill(rules, start + 2 * HOUR_MS)
            found = documents(run)
            if jobs == 0:
                assert not found
                continue
            document = found[ALICE.name]
            t = document.totals
            assert t.carry_in_minor == carried
            assert t.payable_minor == t.creator_minor + carried
            if t.payable_minor >= minimum:
                assert (t.paid_minor, t.carry_out_minor) == (t.payable_minor, 0)
            else:
                assert (t.paid_minor, t.carry_out_minor) == (0, t.payable_minor)
            earned, paid, carried = earned + t.creator_minor, paid + t.paid_minor, t.carry_out_minor
            ledger.log_run(run, start + 3 * HOUR_MS)
        assert paid + carried == earned
    finally:
        ledger.close()


def test_late_receipts_become_adjustments_and_issued_statements_never_change(
    ledger: Ledger,
) -> None:
    ledger.setup()
    ledger.publish("photo-1", {"training": "0.05"})
    ledger.receipt("a", T0 + HOUR_MS, job_id="job-1")
    first_close = T0 + 2 * HOUR_MS
    run1 = ledger.bill(policy(), first_close)
    first_bytes = statements(run1)[ALICE.name][1]
    ledger.log_run(run1, first_close + 1000)
    end1 = run1.plan.end
    # Served in the first period, logged after it closed (the edge was offline); and one new.
    ledger.receipt("late", T0 + HOUR_MS + 10, job_id="job-2", logged_at_ms=first_close + HOUR_MS)
    ledger.receipt("new", first_close + HOUR_MS, job_id="job-3")
    second_close = first_close + 2 * HOUR_MS
    run2 = ledger.bill(policy(), second_close)
    document = documents(run2)[ALICE.name]
    late, current = (
        [line for line in document.lines if line.period == p] for p in ("adjustment", "current")
    )
    assert [(line.leaf_indices, line.for_period_end_ms) for line in late] == [
        ((end1 + 1,), first_close // 1000 * 1000)
    ]
    assert [line.leaf_indices for line in current] == [(end1 + 2,)]
    assert document.lines[0].period == "current"  # current lines first
    assert document.previous == statement_digest(first_bytes)
    # The first statement, replayed over the first range of the longer log, is unchanged.
    replayed = Ledger(ledger.data[:end1])
    try:
        assert statements(replayed.bill(policy(), first_close))[ALICE.name][1] == first_bytes
    finally:
        replayed.close()


def test_a_window_counted_in_an_earlier_run_is_not_counted_again(ledger: Ledger) -> None:
    ledger.setup()
    ledger.publish("photo-1", {"training": "0.05", "inference": "0.01"})
    ledger.receipt("a", T0 + HOUR_MS, job_id="job-1")
    ledger.receipt("i", T0 + HOUR_MS, scope="inference", job_id=None)
    run1 = ledger.bill(policy(), T0 + 2 * HOUR_MS)
    ledger.log_run(run1, T0 + 2 * HOUR_MS + 1000)
    ledger.receipt("b", T0 + 3 * HOUR_MS, job_id="job-1")  # same job, same day: same window
    ledger.receipt("i", T0 + HOUR_MS + 5, scope="inference", job_id=None, edge=PARENT)
    ledger.receipt("c", T0 + 3 * HOUR_MS, job_id="job-2")
    document = documents(ledger.bill(policy(), T0 + 4 * HOUR_MS))[ALICE.name]
    assert [(line.scope, line.quantity) for line in document.lines] == [("training", "1")]
    assert {e.reason: e.receipts for e in document.excluded} == {"counted_before": 2}


def test_withdrawal_stops_new_use_only(ledger: Ledger) -> None:
    ledger.setup()
    ledger.publish("photo-1", {"training": "0.05"})
    ledger.receipt("before", T0 + HOUR_MS, job_id="job-1")
    ledger.withdraw("photo-1", at_ms=T0 + 2 * HOUR_MS)
    # Served before the withdrawal, logged after it: still paid. Served after: not.
    ledger.receipt("late", T0 + HOUR_MS + 1, job_id="job-2", logged_at_ms=T0 + 3 * HOUR_MS)
    after = ledger.receipt("after", T0 + 3 * HOUR_MS, job_id="job-3")
    ledger.publish("photo-1", {"training": "0.07"}, version=2, at_ms=T0 + 3 * HOUR_MS)
    v2 = ledger.receipt("v2", T0 + 4 * HOUR_MS, job_id="job-4", version=2)
    document = documents(ledger.bill(policy(), T0 + 5 * HOUR_MS))[ALICE.name]
    assert [(line.version, line.rate, line.quantity) for line in document.lines] == [
        (1, "0.05", "2"),
        (2, "0.07", "1"),
    ]
    assert document.lines[1].leaf_indices == (v2,)
    withdrawn = [e for e in document.excluded if e.reason == "withdrawn"]
    assert [(e.receipts, e.leaf_indices) for e in withdrawn] == [(1, (after,))]


def test_receipts_that_cannot_be_attributed_are_listed(ledger: Ledger) -> None:
    ledger.setup(creators=(ALICE, BOB))
    ledger.publish("photo-1", {"training": "0.05"}, scopes=("training",))
    unknown = ledger.receipt("u", T0 + HOUR_MS, name="never-published")
    mismatch = ledger.receipt("m", T0 + HOUR_MS, creator_id=BOB.name)
    other_content = ledger.receipt("c", T0 + HOUR_MS, content_id=digest_of("another"))
    unlicensed = ledger.receipt("s", T0 + HOUR_MS, scope="inference", job_id=None)
    too_late = ledger.receipt("l", T0 + HOUR_MS, logged_at_ms=T0 + 31 * DAY_MS)
    found = documents(ledger.bill(policy(), T0 + 32 * DAY_MS))
    listed = {e.reason: e.leaf_indices for e in found[ALICE.name].excluded}
    assert listed == {
        "unknown_manifest": (unknown,),
        "manifest_mismatch": (mismatch, other_content),
        "scope_not_licensed": (unlicensed,),
        "too_late": (too_late,),
    }
    assert not found[ALICE.name].lines
    assert BOB.name not in found  # its name on a receipt of Alice's content earns it nothing


def test_receipts_by_keys_not_valid_when_served_are_not_paid(ledger: Ledger) -> None:
    ledger.setup()
    ledger.publish("photo-1", {"training": "0.05"})
    revoke = EdgeKey("revoke", EDGE.name, format_vkey(EDGE.verifier()), 0, T0 + 2 * HOUR_MS)
    ledger.append(sign_edge_key(revoke, OPERATOR), T0 + 2 * HOUR_MS)
    ok = ledger.receipt("ok", T0 + HOUR_MS, job_id="job-1", logged_at_ms=T0 + 3 * HOUR_MS)
    bad = ledger.receipt("bad", T0 + 2 * HOUR_MS, job_id="job-2")
    (document,) = documents(ledger.bill(policy(), T0 + 4 * HOUR_MS)).values()
    assert document.lines[0].leaf_indices == (ok,)
    assert [(e.reason, e.leaf_indices) for e in document.excluded] == [("edge_key_invalid", (bad,))]


def test_reserves_are_released_after_their_days_unless_disputed(ledger: Ledger) -> None:
    ledger.setup(creators=(ALICE, BOB))
    ledger.publish("photo-1", {"training": "1.00"})
    ledger.publish("photo-2", {"training": "1.00"}, creator=BOB)
    rules = policy(release_after_days="2")
    ledger.receipt("a", T0 + HOUR_MS, job_id="j1")
    ledger.receipt("b", T0 + HOUR_MS, name="photo-2", creator_id=BOB.name, job_id="j1")
    run1 = ledger.bill(rules, T0 + DAY_MS)
    held = {c: d.totals.reserve_minor for c, d in documents(run1).items()}
    assert held == {ALICE.name: 8, BOB.name: 8}  # 100 - 20 fee -> 10% of 80
    entries = {e.creator_id: e for e in ledger.log_run(run1, T0 + DAY_MS + 1000)}
    dispute = sign_dispute(Dispute("open", BOB.name, entries[BOB.name].digest, 1, "retry"), BOB)
    opened = ledger.append(dispute, T0 + DAY_MS + 2000)
    # One day on: nothing is due. Two and a half days on: Alice's first reserve is released
    # (its two days are up; the second run's are not); Bob's is held, it is disputed.
    ledger.receipt("c", T0 + DAY_MS + HOUR_MS, job_id="j2")
    run2 = ledger.bill(rules, T0 + 2 * DAY_MS)
    assert documents(run2)[ALICE.name].released == ()
    assert BOB.name not in documents(run2)
    ledger.log_run(run2, T0 + 2 * DAY_MS + 1000)
    run3 = ledger.bill(rules, T0 + 3 * DAY_MS + 12 * HOUR_MS)
    found = documents(run3)
    assert found[ALICE.name].released == ((entries[ALICE.name].digest, 8),)
    assert found[ALICE.name].totals.payable_minor == 8
    assert BOB.name not in found  # nothing new, and the only reserve is disputed
    close = Dispute(
        "close", BOB.name, entries[BOB.name].digest, 1, "resolved", by="operator", follows=opened
    )
    ledger.log_run(run3, T0 + 4 * DAY_MS + 1000)
    ledger.append(sign_dispute(close, OPERATOR), T0 + 4 * DAY_MS + 2000)
    # The open again, as a log that let it be replayed would hold it: it follows no close,
    # so billing counts it as nothing (a problem), and the reserve is released all the same.
    replayed = ledger.append(dispute, T0 + 4 * DAY_MS + 3000)
    run4 = ledger.bill(rules, T0 + 5 * DAY_MS)
    assert documents(run4)[BOB.name].released == ((entries[BOB.name].digest, 8),)
    assert [index for index, _ in run4.problems] == [replayed]


def test_open_disputes_are_listed_on_the_next_statement(ledger: Ledger) -> None:
    ledger.setup()
    ledger.publish("photo-1", {"training": "1.00"})
    ledger.receipt("a", T0 + HOUR_MS, job_id="j1")
    run1 = ledger.bill(policy(), T0 + DAY_MS)
    (entry,) = ledger.log_run(run1, T0 + DAY_MS + 1000)
    at = ledger.append(
        sign_dispute(Dispute("open", ALICE.name, entry.digest, 1, "too low"), ALICE),
        T0 + DAY_MS + 2000,
    )
    ledger.receipt("b", T0 + DAY_MS + HOUR_MS, job_id="j2")
    document = documents(ledger.bill(policy(), T0 + 2 * DAY_MS))[ALICE.name]
    assert document.disputes == (
        {"statement": entry.digest, "line": 1, "reason": "too low", "opened_index": at},
    )


def test_creators_paid_in_another_currency_are_left_to_their_runs(ledger: Ledger) -> None:
    ledger.setup()
    ledger.creator(BOB, currency="EUR")
    ledger.publish("photo-1", {"training": "1.00"})
    ledger.publish("photo-2", {"training": "1.00"}, creator=BOB)
    ledger.receipt("a", T0 + HOUR_MS, job_id="j1")
    ledger.receipt("b", T0 + HOUR_MS, name="photo-2", creator_id=BOB.name, job_id="j1")
    assert set(documents(ledger.bill(policy(), T0 + DAY_MS))) == {ALICE.name}
    (euro,) = documents(ledger.bill(policy(currency='"EUR"'), T0 + DAY_MS)).values()
    assert euro.creator_id == BOB.name and euro.currency == "EUR"


def test_a_registration_that_does_not_follow_the_one_in_force_changes_nothing(
    ledger: Ledger,
) -> None:
    """As the log refuses it: an EUR registration of Alice's that follows nothing (while
    she is registered) leaves her paid in USD, and is a problem of the run; one that
    follows her registration is none."""
    ledger.setup()
    ledger.publish("photo-1", {"training": "1.00"})
    ledger.receipt("a", T0 + HOUR_MS, job_id="j1")
    stray = Creator(ALICE.name, format_vkey(ALICE.verifier()), "EUR")
    at = ledger.append(sign_creator(stray, OPERATOR), T0 + 2 * HOUR_MS)
    run = ledger.bill(policy(), T0 + DAY_MS)
    assert set(documents(run)) == {ALICE.name}
    assert [index for index, _ in run.problems] == [at]
    ledger.creator(ALICE, currency="EUR")
    assert [index for index, _ in ledger.bill(policy(), T0 + DAY_MS).problems] == [at]


def test_a_run_refuses_a_statement_index_that_hid_a_run(ledger: Ledger) -> None:
    ledger.setup()
    ledger.publish("photo-1", {"training": "1.00"})
    ledger.receipt("a", T0 + HOUR_MS, job_id="j1")
    ledger.log_run(ledger.bill(policy(), T0 + DAY_MS), T0 + DAY_MS + 1000)
    ledger.receipt("b", T0 + DAY_MS + HOUR_MS, job_id="j2")
    hidden = ledger.logged.pop()  # as if the log's index did not show the first run
    with pytest.raises(VerificationError, match="hid or invented a run"):
        ledger.bill(policy(), T0 + 2 * DAY_MS)
    ledger.logged.append(hidden)
    assert ledger.bill(policy(), T0 + 2 * DAY_MS).statements


def test_memory_holds_only_the_window(ledger: Ledger) -> None:
    """Request groups and windows older than the horizon are settled and forgotten as the
    pass goes: what the engine holds after a long range is the last window's keys."""
    ledger.setup()
    ledger.publish("photo-1", {"training": "0.05", "inference": "0.001"})
    rules = policy(late_limit_days="1", window_s="3600")
    for day in range(10):
        for i in range(50):
            ledger.receipt(f"d{day}-{i}", T0 + day * DAY_MS + i * 60_000, job_id=f"j{i % 5}",
                           scope="inference" if i % 2 else "training")  # fmt: skip
    from billing.engine import Engine  # noqa: PLC0415
    from billing.indexes import LeafIndexLists  # noqa: PLC0415

    plan = ledger.plan(rules, T0 + 11 * DAY_MS)
    with LeafIndexLists() as lists:
        engine = Engine(plan, lists)
        held = []
        for index, data in enumerate(ledger.data):
            engine.feed(index, data)
            if index % 100 == 99:
                engine._sweep()
                held.append(len(engine._requests) + len(engine._slots))
        run = engine.finish()
        (statement,) = run.statements
        assert max(held) <= 200  # two days of 50 receipts at most, never the whole range
        assert sum(run.lists.count(k) for k in statement.line_keys) > 0


def test_a_pass_runs_with_the_cycle_collector_paused(ledger: Ledger) -> None:
    """bill() pauses Python's cyclic collector while it reads entries (it finds nothing in
    them and costs a sixth of a run), and resumes it after, also when the pass fails."""
    import gc  # noqa: PLC0415

    from billing.engine import bill  # noqa: PLC0415
    from billing.indexes import LeafIndexLists  # noqa: PLC0415

    ledger.setup()
    ledger.publish("photo-1", {"training": "0.05"})
    ledger.receipt("a", T0 + HOUR_MS, job_id="j1")
    plan = ledger.plan(policy(), T0 + DAY_MS)
    seen: list[bool] = []

    def entries(fail: bool) -> Any:
        for index, data in enumerate(ledger.data):
            seen.append(gc.isenabled())
            yield index, data
        if fail:
            raise VerificationError("the log went away")

    assert gc.isenabled()
    with LeafIndexLists() as lists:
        (statement,) = bill(plan, entries(fail=False), lists).statements
    assert statement.document.lines and seen and not any(seen)
    assert gc.isenabled()
    with LeafIndexLists() as lists, pytest.raises(VerificationError):
        bill(plan, entries(fail=True), lists)
    assert gc.isenabled()
