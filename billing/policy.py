"""The billing policy: one TOML file that fixes everything a run decides beyond the log.

Owns the policy file's format, its strict parser and its digest (SHA-256 of the file's
exact bytes, recorded in every statement, with the file's text, so a statement carries the
rules it was computed under). Imports tlog.errors and billing.money.

A policy is for one currency (a creator whose payout currency differs is billed by another
policy's runs) and holds: the minor-unit exponent, the platform fee, the dispute reserve
(holdback share, released after N days of signed log time), the minimum payout (below it
the balance carries over), the billable-event rules per scope with their windows, and the
platform's origin and edge costs per GB for the cache-savings model. The rates themselves
are the creator's, in each manifest's terms. Money is never a TOML float: decimals are
strings, minor amounts integers.

>>> policy = parse_policy(EXAMPLE.encode())
>>> policy.currency, policy.minor_exponent, str(policy.platform_fee), policy.rules["preview"]
('USD', 2, '0.20', 'none')
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from billing.money import RATE_CONTEXT, rate
from tlog.entry import SCOPES
from tlog.errors import MalformedError

__all__ = [
    "EVENT_RULES",
    "EXAMPLE",
    "BillingPolicy",
    "parse_policy",
]

EVENT_RULES = ("once_per_job", "once_per_consumer", "every_request", "none")
"""How deliveries of a scope become billable events:

* ``once_per_job`` — once per (content_id, consumer_id, job_id) per window;
* ``once_per_consumer`` — once per (content_id, consumer_id) per window;
* ``every_request`` — every delivery (each request_id once);
* ``none`` — never billable (no event, no bytes, no savings)."""

MAX_POLICY_BYTES = 64 << 10
_DAY_MS = 86_400_000

EXAMPLE = """\
# A meterlog billing policy. Decimals are strings; amounts in minor units are integers.
currency = "USD"
minor_exponent = 2
platform_fee = "0.20"

[reserve]
share = "0.10"
release_after_days = 30

[payout]
minimum_minor = 1000

[events]
training = "once_per_job"
inference = "every_request"
preview = "none"
window_s = 86400
request_window_s = 600
late_limit_days = 30

[cache_savings]
origin_cost_per_gb = "0.08"
edge_cost_per_gb = "0.02"
"""


@dataclass(frozen=True, slots=True)
class BillingPolicy:
    """A parsed policy; ``text`` and ``digest`` are the file's, exactly."""

    text: str
    digest: str
    currency: str
    minor_exponent: int
    platform_fee: Decimal
    reserve_share: Decimal
    reserve_release_ms: int
    minimum_payout_minor: int
    rules: Mapping[str, str]
    window_ms: int
    request_window_ms: int
    late_limit_ms: int
    origin_cost_per_gb: Decimal
    edge_cost_per_gb: Decimal

    @property
    def savings_per_gb(self) -> Decimal:
        """What a byte served from the edge instead of the origin saves, per GB (10**9)."""
        return RATE_CONTEXT.subtract(self.origin_cost_per_gb, self.edge_cost_per_gb)


class _Table:
    """One TOML table read strictly: every key known, every value of its type."""

    def __init__(self, table: Mapping[str, Any], where: str, known: tuple[str, ...]) -> None:
        self._table = table
        self._where = where
        for key in table:
            if key not in known:
                raise MalformedError(self._field(key), f"unknown key (known: {', '.join(known)})")

    def _field(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def _get(self, key: str, default: object) -> object:
        if key in self._table:
            return self._table[key]
        if default is None:
            raise MalformedError(self._field(key), "missing")
        return default

    def text(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise MalformedError(self._field(key), f"{value!r} is not a string")
        return value

    def decimal(self, key: str, default: str | None = None, *, share: bool = False) -> Decimal:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise MalformedError(
                self._field(key), f"{value!r} is not a decimal string (write it in quotes)"
            )
        parsed = rate(value, self._field(key))
        if share and parsed > 1:
            raise MalformedError(self._field(key), f"{value} is not a share in [0, 1]")
        return parsed

    def integer(self, key: str, default: int | None = None, *, minimum: int = 0) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise MalformedError(self._field(key), f"{value!r} is not an integer")
        if not minimum <= value <= 2**53 - 1:
            raise MalformedError(self._field(key), f"{value} is outside {minimum}..2**53-1")
        return value

    def table(self, key: str, known: tuple[str, ...]) -> _Table:
        value = self._table.get(key, {})
        if not isinstance(value, dict):
            raise MalformedError(self._field(key), "not a table")
        return _Table(value, self._field(key), known)


def parse_policy(data: bytes) -> BillingPolicy:
    """Parse a policy file strictly; MalformedError names the key that is wrong."""
    if len(data) > MAX_POLICY_BYTES:
        raise MalformedError("policy", f"larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        raw = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise MalformedError("policy", "not UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise MalformedError("policy", f"not TOML: {exc}") from exc
    top = _Table(
        raw, "", ("currency", "minor_exponent", "platform_fee", "reserve", "payout", "events",
                  "cache_savings"),
    )  # fmt: skip
    currency = top.text("currency")
    if not (len(currency) == 3 and currency.isascii() and currency.isupper()):
        raise MalformedError("currency", f"{currency!r} is not an ISO 4217 code")
    exponent = top.integer("minor_exponent")
    if exponent > 8:
        raise MalformedError("minor_exponent", f"{exponent} is more than 8")
    fee = top.decimal("platform_fee", "0", share=True)
    reserve = top.table("reserve", ("share", "release_after_days"))
    payout = top.table("payout", ("minimum_minor",))
    events = top.table("events", (*SCOPES, "window_s", "request_window_s", "late_limit_days"))
    savings = top.table("cache_savings", ("origin_cost_per_gb", "edge_cost_per_gb"))
    defaults = {"training": "once_per_job", "inference": "every_request", "preview": "none"}
    rules = {}
    for scope in SCOPES:
        rule = events.text(scope, defaults[scope])
        if rule not in EVENT_RULES:
            raise MalformedError(f"events.{scope}", f"{rule!r} is not one of {EVENT_RULES}")
        rules[scope] = rule
    origin = savings.decimal("origin_cost_per_gb", "0")
    edge = savings.decimal("edge_cost_per_gb", "0")
    if edge > origin:
        raise MalformedError("cache_savings.edge_cost_per_gb", "is more than the origin's cost")
    return BillingPolicy(
        text=text,
        digest="sha256:" + hashlib.sha256(data).hexdigest(),
        currency=currency,
        minor_exponent=exponent,
        platform_fee=fee,
        reserve_share=reserve.decimal("share", "0", share=True),
        reserve_release_ms=reserve.integer("release_after_days", 30) * _DAY_MS,
        minimum_payout_minor=payout.integer("minimum_minor", 0),
        rules=rules,
        window_ms=events.integer("window_s", 86_400, minimum=1) * 1000,
        request_window_ms=events.integer("request_window_s", 600, minimum=1) * 1000,
        late_limit_ms=events.integer("late_limit_days", 30, minimum=1) * _DAY_MS,
        origin_cost_per_gb=origin,
        edge_cost_per_gb=edge,
    )
