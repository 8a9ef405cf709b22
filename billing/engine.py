"""The billing engine: one pass over the log's entries, in index order, to the statements.

Owns the rules that turn committed entries into money: the catalog and registries replayed
from the log, which receipts count (attribution, licence, withdrawal, edge-key validity,
lateness), billable events (deduplication of requests and of events within windows), the
lines and their amounts, and each creator's statement. Pure: entries in, statements out (a
:class:`Run`); reading the log is billing.reader's, writing files billing.run's. Imports
tlog, verifier.monitor (the edge-key registry replay) and billing.

A run bills the range ``[start, end)``; it reads ``[0, end)``, because everything before
``start`` builds the state a run depends on: the creators and manifests, the edge-key
registry, the statements of earlier runs (carry-over, reserves held, periods), open
disputes, and which deliveries and events earlier runs already counted.

Receipts, in index order (a receipt before ``start`` only updates the dedup state):

1. **Late** (``too_late``): logged more than ``late_limit`` after it was served; or served
   before the *horizon* (the latest ``logged_at_ms`` seen, less ``late_limit``), which only a
   log clock that went backwards can cause. Everything a run remembers for deduplication is
   younger than the horizon, so memory is bounded by the keys in that window.
2. **Edge key** (``edge_key_invalid``): signed by a key the registry, replayed to this
   index, does not hold valid at ``served_at_ms``.
3. **Attribution**: the manifest version the receipt names must be published before it
   (``unknown_manifest``), for this content and by this creator (``manifest_mismatch``),
   not withdrawn before it was served (``withdrawn``: a withdrawal stops new use and never
   rewrites the past), and licensed for the receipt's scope (``scope_not_licensed``). A
   scope whose policy rule is ``none`` is ``not_billable``. Receipts of creators paid in
   another currency belong to another policy's runs and are skipped.
4. **Deliveries**: receipts with one ``request_id`` (a retry, or several cache tiers
   logging one request) are one delivery when served within ``request_window`` of the first
   (groups are cut greedily from the earliest). The delivery is the earliest receipt by
   (``served_at_ms``, ``edge``); the others are ``duplicate_request``. A group with a member
   before ``start`` was counted by an earlier run (``counted_before``).
5. **Events**: per the policy rule of the delivery's scope: every delivery, or once per
   (content_id, consumer_id, job_id) — or (content_id, consumer_id) — per window, a window
   being a fixed slice ``[k W, (k+1) W)`` of served time. The event is the window's earliest
   delivery by (``served_at_ms``, ``edge``, ``request_id``), whatever order the log holds
   them in; the others are ``duplicate_event``; a window an earlier run counted in is
   ``counted_before``.

A delivery pays ``per_gib`` on its bytes and ``savings_share`` on the bytes a cache hit
saved (at the policy's origin-minus-edge cost per GB); an event pays the manifest's rate for
its scope and weighs in the split of its consumer's declared revenue (``revenue_share``); a
manifest published in the range pays its ``upfront`` licence once. A receipt sampled at
p = a/b counts b/a. Receipts served before the period's start (the last run's close) go on
``adjustment`` lines for the earlier period they were served in.
"""

from __future__ import annotations

import gc
import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction

from billing.indexes import LeafIndexLists
from billing.money import RATE_CONTEXT, exact, format_quantity, split, to_minor
from billing.policy import BillingPolicy
from tlog.entry import (
    Creator,
    Dispute,
    EdgeKey,
    Manifest,
    Receipt,
    Revenue,
    Statement,
    decode_entry,
    verify_creator,
    verify_manifest,
    verify_revenue,
    verify_statement,
)
from tlog.errors import MalformedError, VerificationError
from tlog.note import Verifier, parse_vkey
from tlog.statement import (
    EXCLUSION_REASONS,
    LISTED_REASONS,
    Exclusion,
    StatementDocument,
    StatementLine,
    Totals,
)
from verifier.monitor import Registry

__all__ = ["CreatorStatement", "Engine", "Run", "RunPlan", "bill", "collector_paused"]

GIB = 1 << 30
GB = 10**9
_SWEEP_EVERY = 4096
_LINE_ORDER = {"upfront": 0, "event": 1, "gib": 2, "savings": 3, "revenue": 4}


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What a run bills and under which checkpoint: the range ``[start, end)`` (``end`` is
    the checkpoint's tree size) and the period ``[period_start_ms, period_end_ms)`` (its end
    is the checkpoint's signed time). ``start`` and ``period_start_ms`` are where the last
    run of the currency ended and closed (0 and 0 for the first): the pass checks that the
    log's statements say exactly that."""

    policy: BillingPolicy
    origin: str
    checkpoint: str
    root_hash: str
    start: int
    end: int
    period_start_ms: int
    period_end_ms: int
    billing_key: str


@dataclass(slots=True)
class _Manifest:
    creator_id: str
    content_id: str
    version: int
    scopes: frozenset[str]
    terms: dict[str, Decimal]
    index: int
    withdrawn_at_ms: int | None = None


@dataclass(slots=True)
class _Series:
    """A creator's money as the log's statements of this currency leave it."""

    last: str | None = None
    last_index: int | None = None
    carry_minor: int = 0
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Reserves held: statement digest -> (amount_minor, release_ms)."""


@dataclass(frozen=True, slots=True)
class CreatorStatement:
    """One creator's statement of a run: the document without leaf indices, and where the
    indices of each line and each listed exclusion are (keys into the run's lists)."""

    document: StatementDocument
    line_keys: tuple[int, ...]
    exclusion_keys: tuple[int | None, ...]


@dataclass
class Run:
    """A run's statements (by creator), what it could attribute to no one, and its lists."""

    plan: RunPlan
    statements: list[CreatorStatement]
    lists: LeafIndexLists
    receipts: int = 0
    """Receipts in the range."""
    unattributed: dict[str, int] = field(default_factory=dict)
    """Receipts of the range that no registered creator of this currency can be paid for."""
    unallocated_revenue: list[tuple[int, str, int]] = field(default_factory=list)
    """(entry index, consumer, amount_minor) of revenue no billable use could carry."""
    problems: list[tuple[int, str]] = field(default_factory=list)
    """Catalog and statement entries the pass could not accept (index, why)."""

    def indices(self, statement: CreatorStatement) -> Callable[[str, int], Iterable[int]]:
        """The leaf-index source ``tlog.statement.statement_chunks`` asks."""

        def source(kind: str, number: int) -> Iterable[int]:
            keys = statement.line_keys if kind == "line" else statement.exclusion_keys
            key = keys[number - 1]
            return () if key is None else self.lists.read(key)

        return source


# A delivery or event as the pipeline carries it (tuples: millions go through):
# (served_at_ms, edge, request_id, index, manifest, scope, consumer_id, job_id, bytes_sent,
#  cache, sample (numerator, denominator), creator_id, content_id, earlier)
_Item = tuple[int, str, str, int, str, str, str, str, int, str, tuple[int, int], str, str, bool]


class Engine:
    """Folds entries ``[0, end)`` in index order into a :class:`Run`.

    ``feed`` every entry (index, leaf bytes) in order, then ``finish``. ``watch``: indices
    whose receipt and edge key (as the registry held it there) are kept in ``watched``, for
    a verifier to check signatures. ``operator_keys``: if given, creator and revenue entries
    must be signed by one of them (else they are problems, and ignored).
    """

    def __init__(
        self,
        plan: RunPlan,
        lists: LeafIndexLists,
        *,
        watch: frozenset[int] = frozenset(),
        operator_keys: Sequence[Verifier] = (),
    ) -> None:
        self.plan = plan
        self.policy = plan.policy
        self.lists = lists
        self.watch = watch
        self.watched: dict[int, tuple[Receipt, Verifier]] = {}
        self._operators = {f"{k.key_id:08x}": k for k in operator_keys}
        self._next = 0
        self._registry = Registry()
        self._creators: dict[str, tuple[str, str, int]] = {}
        self._manifests: dict[str, _Manifest] = {}
        self._series: dict[str, _Series] = defaultdict(_Series)
        self._last_run: tuple[int, int, int] | None = None
        self._periods: list[int] = []
        self._open: dict[tuple[str, int], tuple[str, str, int]] = {}
        self._dispute_latest: dict[tuple[str, int], int] = {}
        """The index of each disputed line's latest dispute entry: the one a next follows."""
        self._revenue: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._upfront: list[tuple[int, str]] = []
        self._horizon = -(1 << 62)
        self._requests: dict[str, list[_Item]] = {}
        self._request_windows: dict[int, list[tuple[int, str]]] = {}
        """Request groups to settle, by the request window their first receipt falls in:
        (first served_at_ms, request_id). A group filed twice is settled once."""
        self._request_heap: list[int] = []
        self._slots: dict[tuple[object, ...], list[object]] = {}
        """Event slots, (window, content, consumer, job): [counted before, the event]."""
        self._event_windows: dict[int, list[tuple[object, ...]]] = {}
        self._event_heap: list[int] = []
        self._lines: dict[tuple[object, ...], tuple[dict[tuple[int, int], int], int]] = {}
        self._line_keys = 0
        self._weights: dict[tuple[str, str, tuple[int, int]], int] = {}
        """Events by (consumer, manifest, sample rate): how revenue is split."""
        self._excluded: dict[tuple[str, str], list[int]] = {}
        self.run = Run(plan, [], lists)

    # -- the pass -------------------------------------------------------------------------

    def feed(self, index: int, data: bytes) -> None:
        if index != self._next:
            raise MalformedError("index", f"entries must come in order: {index}, not {self._next}")
        self._next += 1
        entry = decode_entry(data)
        if isinstance(entry, Receipt):
            self._receipt(index, entry)
        elif isinstance(entry, EdgeKey):
            self._registry.apply(entry, index)
        elif isinstance(entry, Creator):
            self._creator(index, entry)
        elif isinstance(entry, Manifest):
            self._manifest(index, entry)
        elif isinstance(entry, Statement):
            self._statement(index, entry)
        elif isinstance(entry, Dispute):
            self._dispute(index, entry)
        elif isinstance(entry, Revenue):
            self._declared(index, entry)
        if index & (_SWEEP_EVERY - 1) == _SWEEP_EVERY - 1:
            self._sweep()

    def _problem(self, index: int, why: str) -> None:
        self.run.problems.append((index, why))

    def _operator_signed(self, index: int, entry: Creator | Revenue) -> bool:
        if not self._operators:
            return True
        key = self._operators.get(entry.operator_key_id)
        try:
            if key is None:
                raise VerificationError(f"operator key {entry.operator_key_id} is not given")
            if isinstance(entry, Creator):
                verify_creator(entry, key)
            else:
                verify_revenue(entry, key)
        except (VerificationError, MalformedError) as exc:
            self._problem(index, f"{entry.kind} not signed by the operator: {exc}")
            return False
        return True

    def _creator(self, index: int, entry: Creator) -> None:
        current = self._creators.get(entry.creator_id)
        latest = None if current is None else current[2]
        if entry.follows != latest:
            self._problem(index, f"creator entry follows {entry.follows}, not {latest}")
        elif self._operator_signed(index, entry):
            self._creators[entry.creator_id] = (entry.key, entry.currency, index)

    def _manifest(self, index: int, entry: Manifest) -> None:
        creator = self._creators.get(entry.creator_id)
        try:
            if creator is None:
                raise VerificationError(f"{entry.creator_id} is not a registered creator")
            verify_manifest(entry, parse_vkey(creator[0]))
        except (VerificationError, MalformedError) as exc:
            self._problem(index, f"manifest not accepted: {exc}")
            return
        known = self._manifests.get(entry.manifest)
        if entry.action == "withdraw":
            mine = known is not None and known.creator_id == entry.creator_id
            if mine and known is not None and known.withdrawn_at_ms is None:
                known.withdrawn_at_ms = entry.logged_at_ms
            return
        if known is not None:
            self._problem(index, f"manifest {entry.manifest} is published twice")
            return
        terms = {name: RATE_CONTEXT.create_decimal(value) for name, value in entry.terms}
        self._manifests[entry.manifest] = _Manifest(
            entry.creator_id, entry.content_id, entry.version, frozenset(entry.scopes), terms,
            index,
        )  # fmt: skip
        if self.plan.start <= index and "upfront" in terms:
            self._upfront.append((index, entry.manifest))

    def _statement(self, index: int, entry: Statement) -> None:
        try:
            verify_statement(entry, parse_vkey(entry.billing_key))
        except (VerificationError, MalformedError) as exc:
            self._problem(index, f"statement not accepted: {exc}")
            return
        if entry.currency != self.policy.currency:
            return
        run = (entry.range_start, entry.range_end, entry.period_end_ms)
        if self._last_run != run:
            self._last_run = run
            self._periods.append(entry.period_end_ms)
        series = self._series[entry.creator_id]
        series.last, series.last_index = entry.digest, index
        series.carry_minor = entry.carry_minor
        for digest in entry.released:
            series.holds.pop(digest, None)
        if entry.reserve_minor:
            series.holds[entry.digest] = (entry.reserve_minor, entry.reserve_release_ms)

    def _dispute(self, index: int, entry: Dispute) -> None:
        """Open or close a line's dispute, by the log's rule: an entry that does not follow
        the line's latest one (an open while open, a close while closed, an old entry
        re-posted) changes nothing, and is a problem."""
        key = (entry.statement, entry.line)
        latest = self._dispute_latest.get(key)
        if (entry.action == "open") == (key in self._open) or entry.follows != latest:
            self._problem(index, f"dispute {entry.action} follows {entry.follows}, not {latest}")
            return
        self._dispute_latest[key] = index
        if entry.action == "open":
            self._open[key] = (entry.creator_id, entry.reason, index)
        else:
            del self._open[key]

    def _declared(self, index: int, entry: Revenue) -> None:
        if not self._operator_signed(index, entry):
            return
        if self.plan.start <= index and entry.currency == self.policy.currency:
            self._revenue[entry.consumer_id].append((index, entry.amount_minor))

    # -- receipts -------------------------------------------------------------------------

    def _exclude(self, creator_id: str, reason: str, index: int) -> None:
        creator = self._creators.get(creator_id)
        if creator is None or creator[1] != self.policy.currency:
            self.run.unattributed[reason] = self.run.unattributed.get(reason, 0) + 1
            return
        slot = self._excluded.get((creator_id, reason))
        if slot is None:
            slot = self._excluded[(creator_id, reason)] = [0, -1]
            if reason in LISTED_REASONS:
                slot[1] = self._new_list()
        slot[0] += 1
        if slot[1] >= 0:
            self.lists.add(slot[1], index)

    def _new_list(self) -> int:
        self._line_keys += 1
        return self._line_keys - 1

    def _receipt(self, index: int, r: Receipt) -> None:
        earlier = index < self.plan.start
        if not earlier:
            self.run.receipts += 1
        assert r.logged_at_ms is not None  # noqa: S101 -- every logged entry has it
        horizon = r.logged_at_ms - self.policy.late_limit_ms
        if horizon > self._horizon:  # noqa: PLR1730 -- not max(): a call per receipt
            self._horizon = horizon
        if index in self.watch:
            found = self._registry.key_for(r)
            if not isinstance(found, tuple):
                self.watched[index] = (r, found)
        served = r.served_at_ms
        if served < self._horizon:
            if not earlier:
                self._exclude(r.creator_id, "too_late", index)
            return
        if isinstance(self._registry.key_for(r), tuple):
            if not earlier:
                self._exclude(r.creator_id, "edge_key_invalid", index)
            return
        manifest = self._manifests.get(r.manifest)
        scope = r.scope
        reason = None
        if manifest is None:
            reason = "unknown_manifest"
        elif manifest.creator_id != r.creator_id or manifest.content_id != r.content_id:
            reason = "manifest_mismatch"
        elif manifest.withdrawn_at_ms is not None and served >= manifest.withdrawn_at_ms:
            reason = "withdrawn"
        elif scope not in manifest.scopes:
            reason = "scope_not_licensed"
        elif self.policy.rules[scope] == "none":
            reason = "not_billable"
        if reason is not None:
            if not earlier:
                self._exclude(manifest.creator_id if manifest else r.creator_id, reason, index)
            return
        assert manifest is not None  # noqa: S101 -- no reason, so it was found
        creator = self._creators.get(manifest.creator_id)
        if creator is None or creator[1] != self.policy.currency:
            return  # another currency's runs pay this creator
        request_id = r.request_id
        item: _Item = (
            served, r.edge, request_id, index, r.manifest, scope, r.consumer_id, r.job_id or "",
            r.bytes_sent, r.cache, r.sample_rate, manifest.creator_id, r.content_id, earlier,
        )  # fmt: skip
        members = self._requests.get(request_id)
        if members is None:
            self._requests[request_id] = [item]
            self._file(served, request_id)
        else:
            if served < min(m[0] for m in members):
                self._file(served, request_id)
            members.append(item)

    def _file(self, first: int, request_id: str) -> None:
        window = first // self.policy.request_window_ms
        filed = self._request_windows.get(window)
        if filed is None:
            filed = self._request_windows[window] = []
            heapq.heappush(self._request_heap, window)
        filed.append((first, request_id))

    # -- deliveries and events --------------------------------------------------------------

    def _sweep(self, final: bool = False) -> None:
        """Settle every request group and event window that no receipt still to come can
        join (or all, at the end). A group can be settled once its first receipt is a
        request window before the horizon; they are settled a whole request window at a
        time, so up to one window later: then every group first served before ``settled``
        is done, and so is every event window ending by then."""
        window = self.policy.request_window_ms
        settled = (self._horizon - window + 1) // window
        heap, requests, pop = self._request_heap, self._requests, heapq.heappop
        while heap and (final or heap[0] < settled):
            for first, request_id in self._request_windows.pop(pop(heap)):
                members = requests.get(request_id)
                if members is None:
                    continue
                if len(members) == 1:  # nearly every request: one receipt, one delivery
                    if members[0][0] == first:
                        del requests[request_id]
                        self._delivery(members)
                    continue
                if min(m[0] for m in members) != first:
                    continue  # filed before an earlier receipt of the group came
                members.sort()
                cut = first + window
                group = [m for m in members if m[0] < cut]
                rest = [m for m in members if m[0] >= cut]
                self._delivery(group)
                if rest:
                    requests[request_id] = rest
                    self._file(rest[0][0], request_id)  # a later window than this one
                else:
                    del requests[request_id]
        heap, width, settled_ms = self._event_heap, self.policy.window_ms, settled * window
        while heap and (final or (heap[0] + 1) * width <= settled_ms):
            for key in self._event_windows.pop(pop(heap)):
                earlier, best = self._slots.pop(key)
                if best is None:
                    continue
                if earlier:
                    self._exclude(best[11], "counted_before", best[3])  # type: ignore[index]
                else:
                    self._event(best)  # type: ignore[arg-type]

    def _delivery(self, group: list[_Item]) -> None:
        """One request group (sorted): its earliest receipt is the delivery. A group with a
        receipt before the range was counted by an earlier run."""
        best = group[0]
        if len(group) == 1:
            earlier = best[13]
        else:
            earlier = any(m[13] for m in group)
            for other in group if earlier else group[1:]:
                if not other[13]:
                    reason = "counted_before" if earlier else "duplicate_request"
                    self._exclude(other[11], reason, other[3])
        if not earlier:
            self._per_delivery(best)
        rule = self.policy.rules[best[5]]
        if rule == "every_request":
            if not earlier:
                self._event(best)
            return
        window = best[0] // self.policy.window_ms
        slot_key = (window, best[12], best[6], best[7] if rule == "once_per_job" else "")
        slot = self._slots.get(slot_key)
        if slot is None:
            slot = self._slots[slot_key] = [False, None]
            keys = self._event_windows.get(window)
            if keys is None:
                keys = self._event_windows[window] = []
                heapq.heappush(self._event_heap, window)
            keys.append(slot_key)
        if earlier:
            slot[0] = True
            return
        current = slot[1]
        if current is None:
            slot[1] = best
            return
        assert isinstance(current, tuple)  # noqa: S101
        if (best[0], best[1], best[2]) < (current[0], current[1], current[2]):
            slot[1] = best
            best = current
        self._exclude(best[11], "duplicate_event", best[3])

    def _period(self, served_at_ms: int) -> int | None:
        """None for the current period; else the end of the earlier period it was served in."""
        if served_at_ms >= self.plan.period_start_ms:
            return None
        for end in self._periods:
            if served_at_ms < end:
                return end
        return self.plan.period_start_ms  # pragma: no cover - the last period ends there

    def _add(self, kind: str, item: _Item, amount: int) -> None:
        """Count ``amount`` (events, or bytes) of ``item`` on its line. Sums are kept per
        sample rate, as integers: the exact quantity (each rate's sum times b/a) is made
        once, when the line is priced."""
        served = item[0]
        period = None if served >= self.plan.period_start_ms else self._period(served)
        key = (item[11], kind, period, item[4], item[5])
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = ({}, self._new_list())
        sums = line[0]
        sample = item[10]
        sums[sample] = sums.get(sample, 0) + amount
        self.lists.add(line[1], item[3])

    def _per_delivery(self, item: _Item) -> None:
        terms = self._manifests[item[4]].terms
        if "per_gib" in terms:
            self._add("gib", item, item[8])
        if "savings_share" in terms and item[9] == "hit":
            self._add("savings", item, item[8])

    def _event(self, item: _Item) -> None:
        if item[5] in self._manifests[item[4]].terms:
            self._add("event", item, 1)
        key = (item[6], item[4], item[10])
        self._weights[key] = self._weights.get(key, 0) + 1

    # -- the statements -----------------------------------------------------------------------

    def finish(self) -> Run:
        if self._next != self.plan.end:
            raise MalformedError("range", f"{self._next} entries fed, not {self.plan.end}")
        last = (0, 0) if self._last_run is None else self._last_run[1:]
        if last != (self.plan.start, self.plan.period_start_ms):
            raise VerificationError(
                f"the log's {self.policy.currency} statements end with a run up to {last[0]} "
                f"closed at {last[1]}; this run was to start at {self.plan.start} (closed at "
                f"{self.plan.period_start_ms}): the statement index hid or invented a run"
            )
        self._sweep(final=True)
        lines: dict[str, list[tuple[tuple[object, ...], StatementLine, int]]] = defaultdict(list)
        for key, (sums, list_key) in self._lines.items():
            line = self._priced(key, _quantity(sums), set(sums))
            lines[str(key[0])].append((_order(line), line, list_key))
        for creator_id, line, list_key in self._upfront_lines() + self._revenue_lines():
            lines[creator_id].append((_order(line), line, list_key))
        creators = set(lines) | {c for c, _ in self._excluded}
        creators |= {c for c, s in self._series.items() if self._due(s)}
        for creator_id in sorted(creators):
            self.run.statements.append(self._statement_of(creator_id, lines.get(creator_id, [])))
        gross = sum(s.document.totals.gross_minor for s in self.run.statements)
        parts = sum(
            s.document.totals.creator_minor + s.document.totals.fee_minor
            + s.document.totals.reserve_minor
            for s in self.run.statements
        )  # fmt: skip
        if parts != gross:  # pragma: no cover - each statement is checked already
            raise AssertionError(f"creator lines + fee + reserve = {parts}, gross = {gross}")
        return self.run

    def _priced(
        self, key: tuple[object, ...], quantity: Fraction, samples: set[tuple[int, int]]
    ) -> StatementLine:
        """A delivery or event line, its amount rounded once."""
        _, kind, for_end, digest, scope = key
        assert isinstance(digest, str) and isinstance(scope, str)  # noqa: S101
        assert for_end is None or isinstance(for_end, int)  # noqa: S101
        manifest = self._manifests[digest]
        policy = self.policy
        exponent = policy.minor_exponent
        if kind == "event":
            rate = manifest.terms[scope]
            amount = to_minor(quantity * exact(rate), exponent)
        elif kind == "gib":
            rate = manifest.terms["per_gib"]
            amount = to_minor(quantity / GIB * exact(rate), exponent)
        else:
            rate = manifest.terms["savings_share"]
            saved = exact(RATE_CONTEXT.multiply(policy.savings_per_gb, rate))
            amount = to_minor(quantity / GB * saved, exponent)
        return StatementLine(
            number=0, type=str(kind), period="current" if for_end is None else "adjustment",
            content_id=manifest.content_id, manifest=digest, version=manifest.version,
            quantity=format_quantity(quantity), rate=str(rate), amount_minor=amount,
            fee_minor=0, reserve_minor=0, creator_minor=amount, for_period_end_ms=for_end,
            scope=scope, sample_rates=tuple(f"{a}/{b}" for a, b in sorted(samples)),
        )  # fmt: skip

    def _upfront_lines(self) -> list[tuple[str, StatementLine, int]]:
        found = []
        for index, digest in self._upfront:
            manifest = self._manifests[digest]
            creator = self._creators.get(manifest.creator_id)
            if creator is None or creator[1] != self.policy.currency:
                continue
            rate = manifest.terms["upfront"]
            list_key = self._new_list()
            self.lists.add(list_key, index)
            line = StatementLine(
                number=0, type="upfront", period="current", content_id=manifest.content_id,
                manifest=digest, version=manifest.version, quantity="1", rate=str(rate),
                amount_minor=to_minor(exact(rate), self.policy.minor_exponent), fee_minor=0,
                reserve_minor=0, creator_minor=0,
            )  # fmt: skip
            found.append((manifest.creator_id, _with_creator_share(line), list_key))
        return found

    def _revenue_lines(self) -> list[tuple[str, StatementLine, int]]:
        """Each consumer's declared revenue, split over its billable events by content
        (largest remainder, by manifest digest on ties); a revenue_share manifest's part
        times its share is its line."""
        found = []
        for consumer in sorted(self._revenue):
            declared = self._revenue[consumer]
            total = sum(amount for _, amount in declared)
            weights: dict[str, Fraction] = defaultdict(Fraction)
            for (who, digest, (a, b)), count in self._weights.items():
                if who == consumer:
                    weights[digest] += Fraction(count * b, a)
            digests = sorted(d for d, w in weights.items() if w)
            if not digests:
                self.run.unallocated_revenue.extend((i, consumer, a) for i, a in declared)
                continue
            parts = split(total, [weights[d] for d in digests])
            weight_total = sum((weights[d] for d in digests), Fraction(0))
            for digest, part in zip(digests, parts, strict=True):
                manifest = self._manifests[digest]
                share = manifest.terms.get("revenue_share")
                if share is None:
                    continue
                list_key = self._new_list()
                for index, _ in declared:
                    self.lists.add(list_key, index)
                amount = round(part * exact(share))
                line = StatementLine(
                    number=0, type="revenue", period="current",
                    content_id=manifest.content_id, manifest=digest, version=manifest.version,
                    quantity=str(part), rate=str(share), amount_minor=amount, fee_minor=0,
                    reserve_minor=0, creator_minor=0, consumer_id=consumer,
                    weight=format_quantity(weights[digest]),
                    weight_total=format_quantity(weight_total), revenue_minor=total,
                )  # fmt: skip
                found.append((manifest.creator_id, _with_creator_share(line), list_key))
        return found

    def _due(self, series: _Series) -> bool:
        return any(self._releasable(d, until) for d, (_, until) in series.holds.items())

    def _releasable(self, digest: str, release_ms: int) -> bool:
        disputed = any(statement == digest for statement, _ in self._open)
        return release_ms <= self.plan.period_end_ms and not disputed

    def _statement_of(
        self, creator_id: str, found: list[tuple[tuple[object, ...], StatementLine, int]]
    ) -> CreatorStatement:
        policy = self.policy
        found.sort(key=lambda item: item[0])
        amounts = [line.amount_minor for _, line, _ in found]
        gross = sum(amounts)
        fee = round(gross * exact(policy.platform_fee))
        reserve = round((gross - fee) * exact(policy.reserve_share))
        fees = split(fee, amounts)
        reserves = split(reserve, [a - f for a, f in zip(amounts, fees, strict=True)])
        lines = []
        for number, ((_, line, _), line_fee, line_reserve) in enumerate(
            zip(found, fees, reserves, strict=True), 1
        ):
            lines.append(_replace_line(line, number, line_fee, line_reserve))
        series = self._series.get(creator_id, _Series())
        released = sorted(
            (digest, amount)
            for digest, (amount, until) in series.holds.items()
            if self._releasable(digest, until)
        )
        released_minor = sum(amount for _, amount in released)
        creator_minor = gross - fee - reserve
        payable = creator_minor + series.carry_minor + released_minor
        paid = payable if payable >= policy.minimum_payout_minor else 0
        totals = Totals(
            gross_minor=gross, fee_minor=fee, reserve_minor=reserve,
            creator_minor=creator_minor, carry_in_minor=series.carry_minor,
            released_minor=released_minor, payable_minor=payable, paid_minor=paid,
            carry_out_minor=payable - paid,
        )  # fmt: skip
        if sum(line.creator_minor for line in lines) + fee + reserve != gross:
            raise AssertionError(f"{creator_id}: creator lines + fee + reserve != gross")
        exclusions, exclusion_keys = [], []
        for (who, reason), (count, list_key) in sorted(self._excluded.items(), key=_reason_order):
            if who == creator_id:
                listed = reason in LISTED_REASONS
                exclusions.append(Exclusion(reason, count))
                exclusion_keys.append(list_key if listed else None)
        key, _, creator_index = self._creators[creator_id]
        plan = self.plan
        disputes = [
            {"statement": s, "line": n, "reason": why, "opened_index": i}
            for (s, n), (who, why, i) in sorted(self._open.items(), key=lambda d: d[1][2])
            if who == creator_id
        ]
        document = StatementDocument(
            origin=plan.origin, checkpoint=plan.checkpoint, tree_size=plan.end,
            root_hash=plan.root_hash, range_start=plan.start, range_end=plan.end,
            period_start_ms=plan.period_start_ms, period_end_ms=plan.period_end_ms,
            policy_digest=policy.digest, policy=policy.text, currency=policy.currency,
            minor_exponent=policy.minor_exponent, billing_key=plan.billing_key,
            creator_id=creator_id, creator_key=key, creator_index=creator_index,
            totals=totals, reserve_release_ms=plan.period_end_ms + policy.reserve_release_ms,
            lines=tuple(lines), excluded=tuple(exclusions), disputes=tuple(disputes),
            released=tuple(released), previous=series.last, previous_index=series.last_index,
        )  # fmt: skip
        return CreatorStatement(
            document, tuple(list_key for _, _, list_key in found), tuple(exclusion_keys)
        )


def _quantity(sums: dict[tuple[int, int], int]) -> Fraction:
    """The exact quantity of per-sample-rate sums: a receipt sampled at a/b counts b/a."""
    return sum((Fraction(total * b, a) for (a, b), total in sums.items()), Fraction(0))


def _order(line: StatementLine) -> tuple[object, ...]:
    """Lines of a statement: current period first, then each earlier period's adjustments;
    within one, by type, content, version, scope and consumer."""
    return (
        line.for_period_end_ms is not None,
        line.for_period_end_ms or 0,
        _LINE_ORDER[line.type],
        line.content_id,
        line.version,
        line.manifest,
        line.scope or "",
        line.consumer_id or "",
    )


def _reason_order(item: tuple[tuple[str, str], object]) -> tuple[str, int]:
    (creator_id, reason), _ = item
    return creator_id, EXCLUSION_REASONS.index(reason)


def _with_creator_share(line: StatementLine) -> StatementLine:
    return _replace_line(line, 0, 0, 0)


def _replace_line(line: StatementLine, number: int, fee: int, reserve: int) -> StatementLine:
    return replace(
        line,
        number=number,
        fee_minor=fee,
        reserve_minor=reserve,
        creator_minor=line.amount_minor - fee - reserve,
    )


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for a pass over the log.

    A pass makes and drops millions of small objects (entries, the tuples that carry them)
    with no reference cycles among them, which reference counting frees; the collector,
    woken every few hundred allocations, walks the pass's live state again and again to find
    nothing, a sixth of a run's CPU. It is resumed after the pass (if it was running).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def bill(
    plan: RunPlan,
    entries: Iterable[tuple[int, bytes]],
    lists: LeafIndexLists,
    **options: object,
) -> Run:
    """Feed ``entries`` (every index in ``[0, plan.end)``, in order) and finish the run."""
    engine = Engine(plan, lists, **options)  # type: ignore[arg-type]
    with collector_paused():
        for index, data in entries:
            engine.feed(index, data)
    return engine.finish()
