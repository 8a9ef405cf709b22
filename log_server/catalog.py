"""The log's rules for the catalog and billing entries, and their requests and answers.

Owns what the sequencer checks, inside its lock, before it logs a ``creator``, ``manifest``,
``statement``, ``dispute`` or ``revenue`` entry (:func:`catalog_problem`), how each logged one
updates the registries (:func:`apply_catalog`), the admin request bodies that become
operator-signed entries, and the JSON the read routes answer with. Imports tlog and
log_server.storage; the handlers that call it are in log_server.app.

Who may append what, and how the log checks it:

====================  ======================================  ===================================
kind                  signed by (submitted through)           checked in the sequencer's lock
====================  ======================================  ===================================
``creator``           the operator key (admin route: the      it follows the registration in
                      server signs it)                        force (``follows``); a registration
                                                              that changes nothing is refused
``manifest``          the creator's key (public route, no     the creator is registered and its
                      token)                                  key *as registered now* signed it;
                                                              a content_id belongs to the first
                                                              creator that published it; versions
                                                              only grow; a digest is published
                                                              once; a withdrawal names a live
                                                              version of the signer's
``statement``         a billing key the log is configured     the signature by the key the entry
                      with (public route, no token)           names; the key is in the log's list
                                                              (checked by the route); runs chain
                                                              per currency: the first starts at 0,
                                                              each next one where the last ended,
                                                              a run's statements share its range,
                                                              one per creator; the range is
                                                              committed; each creator's
                                                              ``previous`` is its latest statement;
                                                              ``released`` names unreleased
                                                              reserves of the same creator
``dispute`` (open)    the creator's key (public route)        a statement of that creator, a line
                                                              it has, no open dispute on the line;
                                                              ``follows`` is the line's latest
                                                              close (absent the first time)
``dispute`` (close)   the creator (withdrawn, public route)   an open dispute on the line;
                      or the operator (resolved, admin        ``follows`` is that open's index
                      route: the server signs it)
``revenue``           the operator key (admin route)          one declaration per (consumer,
                                                              reference)
====================  ======================================  ===================================

No entry can change a state twice. Each kind binds what it changes: it names something that
is logged once (a manifest or statement digest, a (consumer, reference)), or changes a state
one way only (a withdrawal), or names the entry it follows (``follows``: a creator's
registration in force; a dispute line's latest entry), which must be the latest as the
registries stand. And an exact re-post of any logged entry, an old one included, is answered
``duplicate`` with its original index and appends nothing, whatever the registries say now
(the sequencer finds it by its signed message, before these rules are asked).
docs/design/billing.md has the survey of every signed kind and route.

How fast one signer may grow the log through the routes without a token is
log_server.budgets'; :func:`verified_signer` says whose budget an entry spends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from log_server.storage import (
    CreatorRecord,
    DisputeRecord,
    ManifestRecord,
    RevenueRecord,
    StatementRecord,
    Storage,
)
from tlog.entry import (
    Creator,
    Dispute,
    Entry,
    Manifest,
    Revenue,
    Statement,
    verify_dispute,
    verify_manifest,
    verify_statement,
)
from tlog.errors import MalformedError, VerificationError
from tlog.note import parse_vkey

__all__ = [
    "CATALOG_KINDS",
    "Refusal",
    "admin_fields",
    "apply_catalog",
    "catalog_problem",
    "creator_json",
    "dispute_json",
    "manifest_json",
    "query_text",
    "revenue_json",
    "statement_json",
    "verified_signer",
]

CatalogEntry = Creator | Manifest | Statement | Dispute | Revenue
CATALOG_KINDS = (Creator, Manifest, Statement, Dispute, Revenue)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the entry cannot be logged as the registries stand (``field``: what is wrong)."""

    field: str
    reason: str


def _signature(check: Callable[[], None], field: str) -> Refusal | None:
    """Run a ``verify_*`` call (given as a thunk); its failure as a refusal of ``field``."""
    try:
        check()
    except (VerificationError, MalformedError) as exc:
        return Refusal(field, str(exc))
    return None


def catalog_problem(storage: Storage, entry: CatalogEntry, tree_size: int) -> Refusal | None:
    """Why ``entry`` cannot be logged now; None if it can. (An exact re-post of a logged
    entry never gets here: the sequencer answers it ``duplicate`` first.)

    ``tree_size`` is the size of the tree the last checkpoint committed to: statements may
    only bill entries below it.
    """
    if isinstance(entry, Creator):
        return _creator_problem(storage, entry)
    if isinstance(entry, Manifest):
        return _manifest_problem(storage, entry)
    if isinstance(entry, Statement):
        return _statement_problem(storage, entry, tree_size)
    if isinstance(entry, Dispute):
        return _dispute_problem(storage, entry)
    return _revenue_problem(storage, entry)


def _follows_problem(kind: str, follows: int | None, latest: int | None, what: str) -> Refusal:
    """The refusal of an entry whose ``follows`` is not ``latest``, the index of ``what``."""
    if latest is None:
        return Refusal(f"{kind}.follows", f"{follows}: there is no {what}; leave follows out")
    return Refusal(f"{kind}.follows", f"{follows}: the {what} is at index {latest}")


def _creator_problem(storage: Storage, entry: Creator) -> Refusal | None:
    current = storage.billing.creator(entry.creator_id)
    latest = None if current is None else current.entry_index
    if entry.follows != latest:
        return _follows_problem("creator", entry.follows, latest, "creator's registration")
    if current is not None and (current.vkey, current.currency) == (entry.key, entry.currency):
        return Refusal("creator.key", "the creator is registered with this key and currency")
    return None


def _registered_key(storage: Storage, kind: str, creator_id: str) -> CreatorRecord | Refusal:
    creator = storage.billing.creator(creator_id)
    if creator is None:
        return Refusal(f"{kind}.creator_id", f"{creator_id} is not a registered creator")
    return creator


def _manifest_problem(storage: Storage, entry: Manifest) -> Refusal | None:
    creator = _registered_key(storage, "manifest", entry.creator_id)
    if isinstance(creator, Refusal):
        return creator
    key = parse_vkey(creator.vkey)
    refused = _signature(lambda: verify_manifest(entry, key), "manifest.signature")
    if refused is not None:
        return refused
    billing = storage.billing
    known = billing.manifest(entry.manifest)
    if entry.action == "withdraw":
        if known is None or (known.creator_id, known.content_id, known.version) != (
            entry.creator_id, entry.content_id, entry.version,
        ):  # fmt: skip
            return Refusal("manifest.manifest", "names no version this creator published")
        if known.withdrawn_index is not None:
            return Refusal("manifest.manifest", f"was withdrawn at index {known.withdrawn_index}")
        return None
    if known is not None:
        return Refusal("manifest.manifest", f"is published already, at index {known.entry_index}")
    latest = billing.latest_version(entry.content_id)
    if latest is not None:
        if latest.creator_id != entry.creator_id:
            return Refusal("manifest.content_id", f"is published by {latest.creator_id}")
        if entry.version <= latest.version:
            return Refusal(
                "manifest.version", f"{entry.version} is not after version {latest.version}"
            )
    return None


def _statement_problem(storage: Storage, entry: Statement, tree_size: int) -> Refusal | None:
    refused = _signature(
        lambda: verify_statement(entry, parse_vkey(entry.billing_key)), "statement.signature"
    )
    if refused is not None:
        return refused
    billing = storage.billing
    known = billing.statement(entry.digest)
    if known is not None:
        return Refusal("statement.digest", f"is logged already, at index {known.entry_index}")
    if billing.creator(entry.creator_id) is None:
        return Refusal("statement.creator_id", f"{entry.creator_id} is not a registered creator")
    if entry.range_end > tree_size:
        return Refusal(
            "statement.range_end", f"{entry.range_end} is beyond the committed tree ({tree_size})"
        )
    latest = billing.statements(entry.currency, latest=True, limit=1)
    run = (entry.range_start, entry.range_end)
    if not latest:
        if entry.range_start != 0:
            return Refusal("statement.range_start", "the first run of a currency starts at 0")
    else:
        last = latest[0]
        if run == (last.range_start, last.range_end):
            if entry.period_end_ms != last.period_end_ms:
                return Refusal("statement.period_end_ms", "is not its run's period end")
        elif entry.range_start != last.range_end:
            return Refusal(
                "statement.range_start",
                f"{entry.range_start}: the last {entry.currency} run ended at {last.range_end}",
            )
        elif entry.period_end_ms < last.period_end_ms:
            return Refusal("statement.period_end_ms", "is before the last run's period end")
    mine = billing.statements(entry.currency, entry.creator_id, latest=True, limit=1)
    previous = mine[0] if mine else None
    if previous is not None and (previous.range_start, previous.range_end) == run:
        return Refusal("statement.creator_id", "has a statement for this range already")
    if entry.previous != (None if previous is None else previous.digest):
        expected = "none" if previous is None else previous.digest
        return Refusal("statement.previous", f"the creator's latest statement is {expected}")
    for digest in entry.released:
        held = billing.statement(digest)
        if held is None or held.creator_id != entry.creator_id:
            return Refusal("statement.released", f"{digest} is not a statement of the creator")
        if held.released_by is not None:
            return Refusal("statement.released", f"{digest} was released by {held.released_by}")
        if billing.disputes(statement=digest, open_only=True):
            return Refusal("statement.released", f"{digest} has an open dispute")
    return None


def _dispute_problem(storage: Storage, entry: Dispute) -> Refusal | None:
    billing = storage.billing
    statement = billing.statement(entry.statement)
    if statement is None or statement.creator_id != entry.creator_id:
        return Refusal("dispute.statement", "is no statement of this creator in the log")
    if entry.line > statement.lines:
        return Refusal("dispute.line", f"the statement has {statement.lines} line(s)")
    if entry.by == "creator":
        creator = _registered_key(storage, "dispute", entry.creator_id)
        if isinstance(creator, Refusal):
            return creator
        key = parse_vkey(creator.vkey)
        refused = _signature(lambda: verify_dispute(entry, key), "dispute.signature")
        if refused is not None:
            return refused
    line = billing.disputes(statement=entry.statement, line=entry.line)
    last = line[-1] if line else None
    if entry.action == "open":
        if last is not None and last.closed_index is None:
            return Refusal("dispute.line", f"is disputed already (index {last.opened_index})")
        latest = None if last is None else last.closed_index
        if entry.follows != latest:
            return _follows_problem("dispute", entry.follows, latest, "line's latest close")
        return None
    if last is None or last.closed_index is not None:
        return Refusal("dispute.line", "has no open dispute")
    if entry.follows != last.opened_index:
        return _follows_problem("dispute", entry.follows, last.opened_index, "open dispute")
    return None


def _revenue_problem(storage: Storage, entry: Revenue) -> Refusal | None:
    known = storage.billing.revenue(entry.consumer_id, entry.reference)
    if known:
        return Refusal("revenue.reference", f"is declared already, at index {known[0].entry_index}")
    return None


def verified_signer(storage: Storage, entry: Manifest | Dispute | Statement) -> str | None:
    """Who signed ``entry``, if the signature verifies now: the creator's id (a manifest, or
    a dispute ``by`` the creator) by the creator's key as registered now, or the billing key
    a statement names (its vkey). None when it does not verify; the sequencer then refuses
    the entry. A route charges an entry to its verified signer's budget only, so that no one
    spends another signer's (log_server.budgets)."""
    if isinstance(entry, Statement):
        try:
            verify_statement(entry, parse_vkey(entry.billing_key))
        except (VerificationError, MalformedError):
            return None
        return entry.billing_key
    creator = storage.billing.creator(entry.creator_id)
    if creator is None or (isinstance(entry, Dispute) and entry.by != "creator"):
        return None
    try:
        key = parse_vkey(creator.vkey)
        if isinstance(entry, Manifest):
            verify_manifest(entry, key)
        else:
            verify_dispute(entry, key)
    except (VerificationError, MalformedError):
        return None
    return entry.creator_id


def apply_catalog(storage: Storage, entry: Entry, index: int, logged_at_ms: int) -> None:
    """Update the registries for ``entry``, just logged at ``index`` (inside the lock)."""
    billing = storage.billing
    if isinstance(entry, Creator):
        billing.put_creator(CreatorRecord(entry.creator_id, entry.key, entry.currency, index))
    elif isinstance(entry, Manifest):
        if entry.action == "publish":
            billing.add_manifest(
                ManifestRecord(
                    entry.manifest, entry.creator_id, entry.content_id, entry.version, index
                )
            )
        else:
            billing.withdraw_manifest(entry.manifest, index, logged_at_ms)
    elif isinstance(entry, Statement):
        billing.add_statement(
            StatementRecord(
                entry.digest, index, entry.creator_id, entry.currency, entry.range_start,
                entry.range_end, entry.period_end_ms, entry.lines,
            )
        )  # fmt: skip
        billing.release(entry.released, entry.digest)
    elif isinstance(entry, Dispute):
        if entry.action == "open":
            billing.open_dispute(
                DisputeRecord(entry.statement, entry.line, entry.creator_id, entry.reason, index)
            )
        else:
            billing.close_dispute(entry.statement, entry.line, index)
    elif isinstance(entry, Revenue):
        billing.add_revenue(
            RevenueRecord(
                entry.consumer_id, entry.reference, entry.currency, entry.amount_minor, index
            )
        )


# -- requests ---------------------------------------------------------------------------------

_QUERY_TEXT = re.compile(r"[\x21-\x7e]{1,255}")


def query_text(value: str | None, name: str) -> str | None:
    """An id or digest from a query or path: printable ASCII without spaces, 1..255
    characters (what every id and digest in an entry is), or MalformedError naming it."""
    if value is not None and not _QUERY_TEXT.fullmatch(value):
        raise MalformedError(name, "not an id or digest (printable ASCII, 1..255)")
    return value


def admin_fields(
    obj: object, kind: str, types: Mapping[str, type], required: tuple[str, ...]
) -> dict[str, object]:
    """An admin request's JSON object, checked: known fields of the right JSON types, the
    required ones present. MalformedError names ``<kind>.<field>``."""
    if not isinstance(obj, dict):
        raise MalformedError("body", "not a JSON object")
    for name, value in obj.items():
        expected = types.get(name)
        if expected is None:
            raise MalformedError(f"{kind}.{name}", "unknown field")
        if isinstance(value, bool) or not isinstance(value, expected):
            raise MalformedError(f"{kind}.{name}", f"{value!r} is not {expected.__name__}")
    for name in required:
        if name not in obj:
            raise MalformedError(f"{kind}.{name}", "missing")
    return dict(obj)


# -- what the read routes answer -------------------------------------------------------------


def creator_json(record: CreatorRecord) -> dict[str, object]:
    return {
        "creator_id": record.creator_id,
        "key": record.vkey,
        "currency": record.currency,
        "entry_index": record.entry_index,
    }


def manifest_json(record: ManifestRecord) -> dict[str, object]:
    return {
        "manifest": record.digest,
        "creator_id": record.creator_id,
        "content_id": record.content_id,
        "version": record.version,
        "entry_index": record.entry_index,
        "withdrawn_index": record.withdrawn_index,
        "withdrawn_at_ms": record.withdrawn_at_ms,
    }


def statement_json(record: StatementRecord) -> dict[str, object]:
    return {
        "digest": record.digest,
        "entry_index": record.entry_index,
        "creator_id": record.creator_id,
        "currency": record.currency,
        "range_start": record.range_start,
        "range_end": record.range_end,
        "period_end_ms": record.period_end_ms,
        "lines": record.lines,
        "released_by": record.released_by,
    }


def dispute_json(record: DisputeRecord) -> dict[str, object]:
    return {
        "statement": record.statement,
        "line": record.line,
        "creator_id": record.creator_id,
        "reason": record.reason,
        "opened_index": record.opened_index,
        "closed_index": record.closed_index,
    }


def revenue_json(record: RevenueRecord) -> dict[str, object]:
    return {
        "consumer_id": record.consumer_id,
        "reference": record.reference,
        "currency": record.currency,
        "amount_minor": record.amount_minor,
        "entry_index": record.entry_index,
    }
