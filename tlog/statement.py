"""Billing statements: the document a creator is paid by, its canonical bytes and its digest.

Owns the statement format (``meterlog-statement/v1``): one canonical JSON object (RFC 8785,
as entries are: :func:`tlog.entry.canonical_json`) per creator and billing run, whose SHA-256
is the ``digest`` a ``statement`` entry logs and a billing key signs. It names the log
(origin, the signed checkpoint note, tree size, root hash), the committed range
``[start, end)`` and the period (closed at the checkpoint's signed time), the creator's
previous statement, the policy (its digest and full text), the billing key, every line with
the leaf indices it counts, the receipts left out and why, the creator's open disputes,
reserves held and released, and the totals. Imports tlog.entry, tlog.errors, tlog.parsing.

:func:`statement_chunks` writes the canonical bytes piece by piece, asking for each line's
leaf indices only when it reaches them, so a statement of millions of indices is never held
in memory; :func:`format_statement` is the same for a :class:`StatementDocument` in memory,
and :func:`parse_statement` its strict inverse (canonical form, every field typed and
checked, lines numbered 1..n with strictly increasing indices inside the range, and the
money adding up: each line's amount is its creator, fee and reserve parts, the totals are
the lines' sums, the payout follows from them).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from tlog.entry import canonical_json, parse_canonical_json
from tlog.errors import MalformedError

__all__ = [
    "ENGINE",
    "EXCLUSION_REASONS",
    "FORMAT",
    "LINE_TYPES",
    "Exclusion",
    "StatementDocument",
    "StatementLine",
    "Totals",
    "format_statement",
    "parse_statement",
    "statement_chunks",
    "statement_digest",
]

FORMAT = "meterlog-statement/v1"
ENGINE = "meterlog-billing/1"
"""The billing engine's version: the same log, policy and engine give the same bytes."""

LINE_TYPES = ("upfront", "event", "gib", "savings", "revenue")
UNITS = {"upfront": "licence", "event": "event", "gib": "byte", "savings": "byte",
         "revenue": "minor"}  # fmt: skip
PERIODS = ("current", "adjustment")
EXCLUSION_REASONS = (
    "unknown_manifest",
    "withdrawn",
    "manifest_mismatch",
    "scope_not_licensed",
    "edge_key_invalid",
    "too_late",
    "not_billable",
    "duplicate_request",
    "duplicate_event",
    "counted_before",
)
"""Why a receipt of the range that names the creator is not counted. The first six are
problems, listed with their leaf indices; the last four are the event rules at work
(counted only)."""
LISTED_REASONS = EXCLUSION_REASONS[:6]

_MAX_STATEMENT_BYTES = 1 << 31
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_QUANTITY = re.compile(r"(0|[1-9][0-9]*)(/[1-9][0-9]*)?")
_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,17})(\.[0-9]{1,34})?")
_SAMPLE = re.compile(r"[1-9][0-9]*/[1-9][0-9]*")
_PLACEHOLDER = re.compile(rb'"\\u0000(\d+)\\u0000"')


def statement_digest(data: bytes) -> str:
    """``sha256:<hex>`` of a statement's bytes: what its ``statement`` entry logs."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One line: what was counted, at which rate, the amount and its parts, and the leaf
    indices it counts. ``number`` counts from 1 (disputes name it)."""

    number: int
    type: str
    period: str
    content_id: str
    manifest: str
    version: int
    quantity: str
    rate: str
    amount_minor: int
    fee_minor: int
    reserve_minor: int
    creator_minor: int
    leaf_indices: tuple[int, ...] = ()
    for_period_end_ms: int | None = None
    """An adjustment's period: the end of the earlier period its receipts were served in."""
    scope: str | None = None
    consumer_id: str | None = None
    """A revenue line's buyer."""
    sample_rates: tuple[str, ...] = ()
    """The distinct sample rates (``a/b``) of the counted receipts: each counts b/a."""
    weight: str | None = None
    """A revenue line: the consumer's billable events on this content, of ``weight_total``."""
    weight_total: str | None = None
    revenue_minor: int | None = None
    """A revenue line: the consumer's declared revenue that was split."""

    @property
    def unit(self) -> str:
        return UNITS[self.type]

    def head(self) -> dict[str, object]:
        """The line's JSON object without ``leaf_indices``."""
        obj: dict[str, object] = {
            "line": self.number,
            "type": self.type,
            "period": self.period,
            "content_id": self.content_id,
            "manifest": self.manifest,
            "version": self.version,
            "quantity": self.quantity,
            "unit": self.unit,
            "rate": self.rate,
            "sample_rates": list(self.sample_rates),
            "amount_minor": self.amount_minor,
            "fee_minor": self.fee_minor,
            "reserve_minor": self.reserve_minor,
            "creator_minor": self.creator_minor,
        }
        optional = {
            "for_period_end_ms": self.for_period_end_ms,
            "scope": self.scope,
            "consumer_id": self.consumer_id,
            "weight": self.weight,
            "weight_total": self.weight_total,
            "revenue_minor": self.revenue_minor,
        }
        obj.update({k: v for k, v in optional.items() if v is not None})
        return obj


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Receipts of the range naming the creator that were not counted, and why."""

    reason: str
    receipts: int
    leaf_indices: tuple[int, ...] = ()

    def head(self) -> dict[str, object]:
        return {"reason": self.reason, "receipts": self.receipts}


@dataclass(frozen=True, slots=True)
class Totals:
    """The statement's money, in minor units.

    ``gross`` is the lines' amounts; ``fee`` and ``reserve`` come off it (``creator`` is the
    rest: ``creator + fee + reserve == gross``, always). ``payable`` is ``creator`` plus the
    balance carried in and the reserves released; it is ``paid`` if it reaches the policy's
    minimum payout, else carried out whole."""

    gross_minor: int
    fee_minor: int
    reserve_minor: int
    creator_minor: int
    carry_in_minor: int
    released_minor: int
    payable_minor: int
    paid_minor: int
    carry_out_minor: int

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in Totals.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class StatementDocument:
    """A statement as parsed (or to be formatted)."""

    origin: str
    checkpoint: str
    tree_size: int
    root_hash: str
    range_start: int
    range_end: int
    period_start_ms: int
    period_end_ms: int
    policy_digest: str
    policy: str
    currency: str
    minor_exponent: int
    billing_key: str
    creator_id: str
    creator_key: str
    creator_index: int
    totals: Totals
    reserve_release_ms: int
    lines: tuple[StatementLine, ...] = ()
    excluded: tuple[Exclusion, ...] = ()
    disputes: tuple[Mapping[str, object], ...] = ()
    released: tuple[tuple[str, int], ...] = ()
    """(statement digest, amount_minor) of each earlier reserve released here."""
    previous: str | None = None
    previous_index: int | None = None
    engine: str = ENGINE

    def head(self) -> dict[str, object]:
        """The document without the lines' and exclusions' leaf indices."""
        obj: dict[str, object] = {
            "format": FORMAT,
            "engine": self.engine,
            "log": {
                "origin": self.origin,
                "checkpoint": self.checkpoint,
                "tree_size": self.tree_size,
                "root_hash": self.root_hash,
            },
            "range": {"start": self.range_start, "end": self.range_end},
            "period": {"start_ms": self.period_start_ms, "end_ms": self.period_end_ms},
            "policy": {"digest": self.policy_digest, "text": self.policy},
            "currency": {"code": self.currency, "minor_exponent": self.minor_exponent},
            "billing_key": self.billing_key,
            "creator": {
                "creator_id": self.creator_id,
                "key": self.creator_key,
                "entry_index": self.creator_index,
            },
            "lines": [line.head() for line in self.lines],
            "excluded": [e.head() for e in self.excluded],
            "disputes": [dict(d) for d in self.disputes],
            "reserve": {
                "held_minor": self.totals.reserve_minor,
                "release_ms": self.reserve_release_ms,
                "released": [{"statement": s, "amount_minor": a} for s, a in self.released],
            },
            "totals": self.totals.to_json(),
        }
        if self.previous is not None:
            obj["previous"] = {"digest": self.previous, "index": self.previous_index}
        return obj


IndexSource = Callable[[str, int], Iterable[int]]
"""Gives the leaf indices of line ``n`` (``("line", n)``, n from 1) or of exclusion ``n``
(``("excluded", n)``, n from 1), in increasing order."""


def _placeholder(number: int) -> str:
    # A NUL can appear nowhere else in a statement: parse_statement refuses one anywhere.
    return f"\x00{number}\x00"


def statement_chunks(head: Mapping[str, object], indices: IndexSource) -> Iterator[bytes]:
    """The canonical bytes of the statement whose JSON, without leaf indices, is ``head``
    (``StatementDocument.head()``), in pieces; each line's and each listed exclusion's
    ``leaf_indices`` come from ``indices`` when the writer reaches them."""
    slots: list[tuple[str, int]] = []
    obj = dict(head)
    lines = []
    for i, line in enumerate(_objects(obj, "lines"), 1):
        lines.append({**line, "leaf_indices": _placeholder(len(slots))})
        slots.append(("line", i))
    excluded = []
    for i, exclusion in enumerate(_objects(obj, "excluded"), 1):
        if exclusion.get("reason") in LISTED_REASONS:
            excluded.append({**exclusion, "leaf_indices": _placeholder(len(slots))})
            slots.append(("excluded", i))
        else:
            excluded.append(dict(exclusion))
    obj["lines"], obj["excluded"] = lines, excluded
    data = canonical_json(obj)
    at = 0
    for found in _PLACEHOLDER.finditer(data):
        yield data[at : found.start()]
        yield from _index_list(indices(*slots[int(found[1])]))
        at = found.end()
    yield data[at:]


def _objects(obj: Mapping[str, object], name: str) -> list[Mapping[str, object]]:
    value = obj.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MalformedError(f"statement.{name}", "not a list of objects")
    return value


def _index_list(indices: Iterable[int], chunk: int = 4096) -> Iterator[bytes]:
    """``[i,j,...]`` in pieces of ``chunk`` indices."""
    yield b"["
    batch: list[str] = []
    first = True
    for index in indices:
        batch.append(str(index))
        if len(batch) == chunk:
            yield (b"" if first else b",") + ",".join(batch).encode()
            batch, first = [], False
    if batch:
        yield (b"" if first else b",") + ",".join(batch).encode()
    yield b"]"


def format_statement(document: StatementDocument) -> bytes:
    """The statement's canonical bytes."""
    lines = document.lines
    excluded = document.excluded

    def indices(kind: str, number: int) -> Iterable[int]:
        return (lines if kind == "line" else excluded)[number - 1].leaf_indices

    return b"".join(statement_chunks(document.head(), indices))


# -- parsing ----------------------------------------------------------------------------------


class _Object:
    """Typed fields out of one JSON object; anything left over is an unknown field."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise MalformedError(where, "not an object")
        self._obj = dict(value)
        self.where = where

    def _take(self, name: str, kind: type, optional: bool = False) -> object:
        if name not in self._obj:
            if optional:
                return None
            raise MalformedError(f"{self.where}.{name}", "missing")
        value = self._obj.pop(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise MalformedError(f"{self.where}.{name}", f"{value!r} is not {kind.__name__}")
        return value

    def text(self, name: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self._take(name, str)
        assert isinstance(value, str)  # noqa: S101 -- _take checked it
        if pattern is not None and not pattern.fullmatch(value):
            raise MalformedError(f"{self.where}.{name}", f"{value!r} is malformed")
        return value

    def optional_text(self, name: str, pattern: re.Pattern[str] | None = None) -> str | None:
        return self.text(name, pattern) if name in self._obj else None

    def integer(self, name: str) -> int:
        value = self._take(name, int)
        assert isinstance(value, int)  # noqa: S101
        if value < 0:
            raise MalformedError(f"{self.where}.{name}", f"{value} is negative")
        return value

    def optional_integer(self, name: str) -> int | None:
        return self.integer(name) if name in self._obj else None

    def object(self, name: str) -> _Object:
        return _Object(self._take(name, dict), f"{self.where}.{name}")

    def objects(self, name: str) -> list[_Object]:
        value = self._take(name, list)
        assert isinstance(value, list)  # noqa: S101
        return [_Object(v, f"{self.where}.{name}[{i}]") for i, v in enumerate(value)]

    def texts(self, name: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
        value = self._take(name, list)
        assert isinstance(value, list)  # noqa: S101
        for i, item in enumerate(value):
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise MalformedError(f"{self.where}.{name}[{i}]", f"{item!r} is malformed")
        return tuple(value)

    def indices(self, name: str, start: int, end: int) -> tuple[int, ...]:
        value = self._take(name, list)
        assert isinstance(value, list)  # noqa: S101
        previous = start - 1
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                raise MalformedError(f"{self.where}.{name}", f"{item!r} is not an index")
            if not previous < item < end:
                raise MalformedError(
                    f"{self.where}.{name}",
                    f"{item}: indices must increase and lie before the range end {end}",
                )
            previous = item
        return tuple(value)

    def finish(self) -> None:
        if self._obj:
            raise MalformedError(f"{self.where}.{sorted(self._obj)[0]}", "unknown field")


def _choice(value: str, where: str, choices: Iterable[str]) -> str:
    if value not in tuple(choices):
        raise MalformedError(where, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _parse_line(o: _Object, number: int, start: int, end: int) -> StatementLine:
    if o.integer("line") != number:
        raise MalformedError(f"{o.where}.line", f"lines are numbered 1..n; this is {number}")
    kind = _choice(o.text("type"), f"{o.where}.type", LINE_TYPES)
    period = _choice(o.text("period"), f"{o.where}.period", PERIODS)
    unit = o.text("unit")
    if unit != UNITS[kind]:
        raise MalformedError(f"{o.where}.unit", f"a {kind} line counts in {UNITS[kind]}")
    line = StatementLine(
        number=number,
        type=kind,
        period=period,
        content_id=o.text("content_id", _DIGEST),
        manifest=o.text("manifest", _DIGEST),
        version=o.integer("version"),
        quantity=o.text("quantity", _QUANTITY),
        rate=o.text("rate", _DECIMAL),
        sample_rates=o.texts("sample_rates", _SAMPLE),
        amount_minor=o.integer("amount_minor"),
        fee_minor=o.integer("fee_minor"),
        reserve_minor=o.integer("reserve_minor"),
        creator_minor=o.integer("creator_minor"),
        leaf_indices=o.indices("leaf_indices", start, end),
        for_period_end_ms=o.optional_integer("for_period_end_ms"),
        scope=o.optional_text("scope"),
        consumer_id=o.optional_text("consumer_id"),
        weight=o.optional_text("weight", _QUANTITY),
        weight_total=o.optional_text("weight_total", _QUANTITY),
        revenue_minor=o.optional_integer("revenue_minor"),
    )
    o.finish()
    if (period == "adjustment") != (line.for_period_end_ms is not None):
        raise MalformedError(f"{o.where}.for_period_end_ms", "set on adjustments, and only there")
    if line.fee_minor + line.reserve_minor + line.creator_minor != line.amount_minor:
        raise MalformedError(f"{o.where}.amount_minor", "is not creator + fee + reserve")
    return line


def parse_statement(data: bytes) -> StatementDocument:
    """Parse a statement strictly (see the module docstring); MalformedError names the field."""
    if len(data) > _MAX_STATEMENT_BYTES:
        raise MalformedError("statement", "too large")
    if b"\\u0000" in data:
        raise MalformedError("statement", "holds a NUL character")
    root = _Object(parse_canonical_json(data, "statement"), "statement")
    if root.text("format") != FORMAT:
        raise MalformedError("statement.format", f"not {FORMAT}")
    engine = root.text("engine")
    log = root.object("log")
    span = root.object("range")
    start, end = span.integer("start"), span.integer("end")
    span.finish()
    if not start < end:
        raise MalformedError("statement.range", "start must be below end")
    period = root.object("period")
    policy = root.object("policy")
    currency = root.object("currency")
    creator = root.object("creator")
    reserve = root.object("reserve")
    totals_obj = root.object("totals")
    totals = Totals(**{name: totals_obj.integer(name) for name in Totals.__dataclass_fields__})
    totals_obj.finish()
    lines = tuple(_parse_line(o, n, start, end) for n, o in enumerate(root.objects("lines"), 1))
    excluded = []
    for o in root.objects("excluded"):
        reason = _choice(o.text("reason"), f"{o.where}.reason", EXCLUSION_REASONS)
        listed = o.indices("leaf_indices", start, end) if reason in LISTED_REASONS else ()
        excluded.append(Exclusion(reason, o.integer("receipts"), listed))
        o.finish()
    disputes = []
    for o in root.objects("disputes"):
        disputes.append(
            {
                "statement": o.text("statement", _DIGEST),
                "line": o.integer("line"),
                "reason": o.text("reason"),
                "opened_index": o.integer("opened_index"),
            }
        )
        o.finish()
    released = []
    for o in reserve.objects("released"):
        released.append((o.text("statement", _DIGEST), o.integer("amount_minor")))
        o.finish()
    previous = root.object("previous") if "previous" in root._obj else None
    document = StatementDocument(
        origin=log.text("origin"),
        checkpoint=log.text("checkpoint"),
        tree_size=log.integer("tree_size"),
        root_hash=log.text("root_hash"),
        range_start=start,
        range_end=end,
        period_start_ms=period.integer("start_ms"),
        period_end_ms=period.integer("end_ms"),
        policy_digest=policy.text("digest", _DIGEST),
        policy=policy.text("text"),
        currency=currency.text("code"),
        minor_exponent=currency.integer("minor_exponent"),
        billing_key=root.text("billing_key"),
        creator_id=creator.text("creator_id"),
        creator_key=creator.text("key"),
        creator_index=creator.integer("entry_index"),
        totals=totals,
        reserve_release_ms=reserve.integer("release_ms"),
        lines=lines,
        excluded=tuple(excluded),
        disputes=tuple(disputes),
        released=tuple(released),
        previous=None if previous is None else previous.text("digest", _DIGEST),
        previous_index=None if previous is None else previous.integer("index"),
        engine=engine,
    )
    if reserve.integer("held_minor") != totals.reserve_minor:
        raise MalformedError("statement.reserve.held_minor", "is not the totals' reserve")
    for o in (log, period, policy, currency, creator, reserve, root):
        o.finish()
    if previous is not None:
        previous.finish()
    if document.tree_size != end:
        raise MalformedError("statement.log.tree_size", "a run ends at its checkpoint's size")
    _check_money(document)
    if format_statement(document) != data:
        raise MalformedError("statement", "does not re-encode to the same bytes")
    return document


def _check_money(document: StatementDocument) -> None:
    """The totals are the lines' sums, and the payout follows from them."""
    t = document.totals
    lines = document.lines
    sums = {
        "gross_minor": sum(line.amount_minor for line in lines),
        "fee_minor": sum(line.fee_minor for line in lines),
        "reserve_minor": sum(line.reserve_minor for line in lines),
        "creator_minor": sum(line.creator_minor for line in lines),
        "released_minor": sum(amount for _, amount in document.released),
    }
    for name, value in sums.items():
        if getattr(t, name) != value:
            raise MalformedError(f"statement.totals.{name}", f"is not the sum, {value}")
    if t.creator_minor + t.fee_minor + t.reserve_minor != t.gross_minor:
        raise MalformedError("statement.totals", "creator + fee + reserve is not gross")
    if t.payable_minor != t.creator_minor + t.carry_in_minor + t.released_minor:
        raise MalformedError("statement.totals.payable_minor", "is not creator + carry + released")
    if t.paid_minor + t.carry_out_minor != t.payable_minor or min(t.paid_minor, t.carry_out_minor):
        raise MalformedError("statement.totals", "the payable is either paid or carried, whole")
