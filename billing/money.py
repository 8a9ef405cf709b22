"""Exact money: rates as Decimals in a declared context, one rounding per line, exact splits.

Owns the arithmetic every amount on a statement goes through. Imports the standard library.

* Amounts are integers in minor units (cents for USD: ``minor_exponent`` 2).
* Rates, shares and costs are :class:`~decimal.Decimal` values parsed in :data:`RATE_CONTEXT`,
  whose traps make any inexact or rounded operation raise: a rate is exactly what the policy
  or the manifest says, and products of rates (a cost difference times a share) are exact.
* Quantities are exact :class:`~fractions.Fraction` values: a receipt sampled at p = a/b
  stands for b/a deliveries, which need not be a terminating decimal.
* A line's amount is the exact product (quantity x rate x 10**minor_exponent) rounded
  **once**, half to even, to an integer (:func:`to_minor`).
* A total that must be shared out (a buyer's revenue over the content it used; a statement's
  fee and reserve over its lines) is split by largest remainder (:func:`split`): the parts
  add up to the total exactly, and ties go to the earlier key, so the split is deterministic.

>>> to_minor(Fraction(5, 2) * exact(rate("0.01")), 2)  # 0.025 -> 2 cents (half to even)
2
>>> split(10, [1, 1, 1])
[4, 3, 3]
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

from tlog.errors import MalformedError

__all__ = ["RATE_CONTEXT", "exact", "format_quantity", "rate", "split", "to_minor"]

RATE_CONTEXT = decimal.Context(
    prec=34,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[
        decimal.InvalidOperation,
        decimal.DivisionByZero,
        decimal.Overflow,
        decimal.Inexact,
        decimal.Rounded,
    ],
)
"""Where rates live: 34 significant digits (IEEE decimal128), and any rounding raises."""


def rate(text: str, field: str = "rate") -> Decimal:
    """A non-negative decimal string parsed exactly in :data:`RATE_CONTEXT`."""
    if not isinstance(text, str) or not text or text.strip() != text:
        raise MalformedError(field, f"{text!r} is not a decimal string")
    try:
        value = RATE_CONTEXT.create_decimal(text)
    except (decimal.InvalidOperation, decimal.Inexact, decimal.Rounded) as exc:
        raise MalformedError(field, f"{text!r} is not an exact decimal") from exc
    if not value.is_finite() or value < 0:
        raise MalformedError(field, f"{text} is not a finite, non-negative decimal")
    return value


def exact(value: Decimal) -> Fraction:
    """A Decimal as the exact fraction it is."""
    return Fraction(value)


def to_minor(amount_major: Fraction, minor_exponent: int) -> int:
    """An exact amount in major units, rounded once, half to even, to minor units."""
    minor: int = round(amount_major * 10**minor_exponent)
    return minor


def split(total: int, weights: Sequence[int | Fraction]) -> list[int]:
    """``total`` (an integer >= 0) in parts proportional to ``weights``, by largest remainder.

    Each part is its exact share rounded down; the units left over go one each to the parts
    with the largest remainders, the earlier part first on a tie. The parts add up to
    ``total``. A zero weight gets nothing; all-zero weights give all zeros (and ``total``
    must then be 0: nothing can carry it).
    """
    if total < 0:
        raise ValueError("a split total is never negative")
    weight_sum = sum(weights, Fraction(0))
    if weight_sum == 0:
        if total:
            raise ValueError(f"{total} cannot be split over zero weights")
        return [0] * len(weights)
    shares = [Fraction(total) * w / weight_sum for w in weights]
    parts = [int(share) for share in shares]  # floor: every share is >= 0
    left = total - sum(parts)
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - parts[i]), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


def format_quantity(quantity: Fraction) -> str:
    """An exact quantity as statements write it: ``"12"``, or ``"10/3"`` when not whole."""
    if quantity.denominator == 1:
        return str(quantity.numerator)
    return f"{quantity.numerator}/{quantity.denominator}"
