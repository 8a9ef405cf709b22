"""billing.money: exact rates, one half-even rounding, largest-remainder splits; and the
policy file's strict parser (billing.policy) and the on-disk index lists (billing.indexes)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.indexes import LeafIndexLists
from billing.money import RATE_CONTEXT, exact, format_quantity, rate, split, to_minor
from billing.policy import EXAMPLE, parse_policy
from tlog.errors import MalformedError


def test_rates_are_exact_decimals() -> None:
    assert rate("0.05") == Decimal("0.05")
    assert exact(rate("0.1")) == Fraction(1, 10)
    for bad in ("", " 1", "-1", "NaN", "Infinity", "1" * 40 + ".5", "abc"):
        with pytest.raises(MalformedError):
            rate(bad)
    with pytest.raises(MalformedError):
        rate(0.05)  # type: ignore[arg-type] # a float is never money


def test_the_rate_context_traps_any_rounding() -> None:
    with pytest.raises(ArithmeticError):
        RATE_CONTEXT.divide(Decimal(1), Decimal(3))
    assert RATE_CONTEXT.multiply(Decimal("0.06"), Decimal("0.15")) == Decimal("0.0090")


@pytest.mark.parametrize(
    ("major", "exponent", "minor"),
    [
        (Fraction(25, 1000), 2, 2),  # 2.5 cents -> 2 (half to even)
        (Fraction(35, 1000), 2, 4),  # 3.5 -> 4
        (Fraction(1, 3), 2, 33),
        (Fraction(2, 3), 2, 67),
        (Fraction(5, 10), 0, 0),  # 0.5 yen -> 0
        (Fraction(15, 10), 0, 2),
    ],
)
def test_one_rounding_half_to_even(major: Fraction, exponent: int, minor: int) -> None:
    assert to_minor(major, exponent) == minor


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 10**12),
    st.lists(st.fractions(min_value=0, max_value=10**6), min_size=1, max_size=30),
)
def test_largest_remainder_splits_add_up_and_stay_within_one(
    total: int, weights: list[Fraction]
) -> None:
    if sum(weights) == 0:
        assert split(0, weights) == [0] * len(weights)
        with pytest.raises(ValueError, match="zero weights"):
            split(total + 1, weights)
        return
    parts = split(total, weights)
    assert sum(parts) == total
    weight_sum = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        share = Fraction(total) * weight / weight_sum
        assert share - 1 < part < share + 1
        if weight == 0:
            assert part == 0


def test_ties_go_to_the_earlier_part() -> None:
    assert split(2, [1, 1, 1]) == [1, 1, 0]
    assert split(1, [1, 1]) == [1, 0]
    assert split(5, [Fraction(1, 3)] * 3) == [2, 2, 1]


def test_quantities_are_exact_text() -> None:
    assert format_quantity(Fraction(12)) == "12"
    assert format_quantity(Fraction(10, 3)) == "10/3"


# -- the policy ----------------------------------------------------------------------------


def test_the_example_policy_parses() -> None:
    policy = parse_policy(EXAMPLE.encode())
    assert policy.currency == "USD" and policy.minor_exponent == 2
    assert policy.savings_per_gb == Decimal("0.06")
    assert policy.window_ms == 86_400_000 and policy.request_window_ms == 600_000
    assert policy.rules == {"training": "once_per_job", "inference": "every_request",
                            "preview": "none"}  # fmt: skip
    assert policy.digest.startswith("sha256:") and policy.text == EXAMPLE


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (('currency = "USD"', 'currency = "usd"'), "currency"),
        (('platform_fee = "0.20"', "platform_fee = 0.20"), "platform_fee"),
        (('platform_fee = "0.20"', 'platform_fee = "1.5"'), "platform_fee"),
        (('share = "0.10"', 'share = "-0.1"'), "reserve.share"),
        (("minimum_minor = 1000", 'minimum_minor = "10"'), "payout.minimum_minor"),
        (("minimum_minor = 1000", "minimum_minor = -1"), "payout.minimum_minor"),
        (('training = "once_per_job"', 'training = "always"'), "events.training"),
        (("window_s = 86400", "window_s = 0"), "events.window_s"),
        (("window_s = 86400", "window = 1"), "events.window"),
        (
            ('edge_cost_per_gb = "0.02"', 'edge_cost_per_gb = "0.09"'),
            "cache_savings.edge_cost_per_gb",
        ),
        (("minor_exponent = 2", "minor_exponent = 9"), "minor_exponent"),
        (("[payout]", "[payouts]"), "payouts"),
    ],
)
def test_bad_policies_name_the_key(change: tuple[str, str], field: str) -> None:
    old, new = change
    assert old in EXAMPLE
    with pytest.raises(MalformedError) as exc:
        parse_policy(EXAMPLE.replace(old, new).encode())
    assert exc.value.field == field


def test_a_policy_must_be_toml() -> None:
    with pytest.raises(MalformedError) as exc:
        parse_policy(b"currency = ")
    assert exc.value.field == "policy"
    with pytest.raises(MalformedError):
        parse_policy(b"\xff")


# -- leaf-index lists on disk ----------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10**9)), max_size=400),
    st.sampled_from([0, 20, 1 << 16]),
)
def test_index_lists_give_back_each_list_sorted(adds: list[tuple[int, int]], whole: int) -> None:
    # whole: every list merged from its segments, the short ones read at once, or all read
    unique = list({index: key for key, index in adds}.items())  # an index is in one list
    with LeafIndexLists(budget=7, segment=3, whole=whole) as lists:
        for index, key in unique:
            lists.add(key, index)
        for key in range(6):
            expected = sorted(index for index, k in unique if k == key)
            assert list(lists.read(key)) == expected
            assert lists.count(key) == len(expected)


def test_index_lists_leave_no_file_behind(tmp_path: Path) -> None:
    with LeafIndexLists(tmp_path, budget=2, segment=2) as lists:
        for i in range(10):
            lists.add(0, 10 - i)
        assert list(lists.read(0)) == list(range(1, 11))
        assert list(tmp_path.iterdir()) == []  # unlinked at once; freed at close
