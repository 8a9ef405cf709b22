"""How fast one signer may grow the log through the routes that need no token.

Owns :class:`TokenBucket` and :class:`Budgets` (one bucket per signer), pure: the clock is a
parameter (``now_s``, any monotonic seconds), so tests drive them without sleeping. Imports
nothing from meterlog. The log server keeps three (log_server.app): receipts per edge
(``POST /v1/receipts``), manifests and disputes per creator (``POST /v1/manifests``,
``POST /v1/disputes``), statements per billing key (``POST /v1/statements``).

The rule. A request is admitted when the bucket of each signer it names (after the
signature verified) holds ``min(n, burst)`` tokens for its ``n`` entries of that signer;
else it is refused whole (429, Retry-After) and nothing is pooled. After the seal, each
signer is charged for the entries the log *appended*: duplicates (an exact re-post, by
anyone) and refusals cost nothing, so nobody can spend another signer's budget. A charge may
leave a bucket below zero (requests in flight when it ran low, a request larger than the
burst); the next request then waits longer. Over any ``t`` seconds one signer appends at
most ``burst + rate * t`` entries, plus what it had in flight when its bucket ran low (the
pool holds at most ``max_pending`` entries in all). Budgets are per server process: each of
several frontends sharing one database has its own.

A token bucket is a few lines of arithmetic; the libraries that offer one (pyrate-limiter,
limits) keep a timestamp per request in a window, or read the clock themselves, and the log
charges receipts at ~10,000 a second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Budgets", "OverBudget", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    """At most ``burst`` tokens, refilled at ``rate_per_s``; full at ``updated_s``."""

    rate_per_s: float
    burst: int
    updated_s: float = 0.0
    tokens: float = field(init=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(f"rate {self.rate_per_s}: not a positive number per second")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst {self.burst}: not a whole number from 1")
        self.tokens = float(self.burst)

    def _refill(self, now_s: float) -> None:
        if now_s > self.updated_s:
            self.tokens = min(self.burst, self.tokens + (now_s - self.updated_s) * self.rate_per_s)
            self.updated_s = now_s

    def wait_s(self, n: int, now_s: float) -> float:
        """Seconds until a request of ``n`` entries is admitted (0.0: now): until the bucket
        holds ``min(n, burst)`` tokens."""
        self._refill(now_s)
        short = min(n, self.burst) - self.tokens
        return 0.0 if short <= 0 else short / self.rate_per_s

    def charge(self, n: int, now_s: float) -> None:
        """Take ``n`` tokens for ``n`` entries appended, below zero if need be."""
        self._refill(now_s)
        self.tokens -= n

    def full(self, now_s: float) -> bool:
        self._refill(now_s)
        return self.tokens >= self.burst


@dataclass(frozen=True, slots=True)
class OverBudget:
    """``signer`` is over its budget; the request may be admitted in ``retry_after_s``
    (whole seconds, at least 1)."""

    signer: str
    retry_after_s: int


@dataclass(slots=True)
class Budgets:
    """A token bucket per signer, each of ``rate_per_s`` and ``burst``.

    A signer's bucket is made on its first request. Full buckets (what a new one would be)
    are dropped whenever the number of buckets reaches twice what was left at the last drop
    (``max_signers`` at first), so memory follows the signers active in the last
    ``burst / rate_per_s`` seconds. Signers are verified keys (registered edges and
    creators, configured billing keys), never whatever a request claims.
    """

    rate_per_s: float
    burst: int
    max_signers: int = 4096
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _drop_at: int = 0

    def __post_init__(self) -> None:
        TokenBucket(self.rate_per_s, self.burst)  # its checks of the two, once
        self._drop_at = self.max_signers

    def __len__(self) -> int:
        """How many signers have a bucket now."""
        return len(self._buckets)

    def _bucket(self, signer: str, now_s: float) -> TokenBucket:
        bucket = self._buckets.get(signer)
        if bucket is None:
            if len(self._buckets) >= self._drop_at:
                self._buckets = {s: b for s, b in self._buckets.items() if not b.full(now_s)}
                self._drop_at = max(self.max_signers, 2 * len(self._buckets))
            bucket = self._buckets[signer] = TokenBucket(self.rate_per_s, self.burst, now_s)
        return bucket

    def admit(self, counts: Mapping[str, int], now_s: float) -> OverBudget | None:
        """None when a request of ``counts[signer]`` entries per signer is admitted now;
        else the first signer (in ``counts``' order) over its budget, and how long until
        every one of them would admit it. Takes nothing: :meth:`charge` does, for what the
        log then appends."""
        waits = {s: self._bucket(s, now_s).wait_s(n, now_s) for s, n in counts.items() if n}
        over = [s for s, wait in waits.items() if wait > 0]
        if not over:
            return None
        return OverBudget(over[0], max(1, math.ceil(max(waits.values()))))

    def charge(self, counts: Mapping[str, int], now_s: float) -> None:
        """Take ``counts[signer]`` tokens from each signer's bucket: the entries appended."""
        for signer, n in counts.items():
            if n:
                self._bucket(signer, now_s).charge(n, now_s)
