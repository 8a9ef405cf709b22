"""Tests of tlog.statement: the statement's canonical bytes (streamed or not), its strict
parser, and the money checks the parser makes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlog.entry import canonical_json
from tlog.errors import MalformedError
from tlog.statement import (
    ENGINE,
    FORMAT,
    Exclusion,
    StatementDocument,
    StatementLine,
    Totals,
    format_statement,
    parse_statement,
    statement_chunks,
    statement_digest,
)

CONTENT = "sha256:" + "11" * 32
MANIFEST = "sha256:" + "22" * 32
PREVIOUS = "sha256:" + "33" * 32


def line(number: int, amount: int, fee: int, reserve: int, **changes: Any) -> StatementLine:
    fields: dict[str, Any] = {
        "number": number,
        "type": "event",
        "period": "current",
        "content_id": CONTENT,
        "manifest": MANIFEST,
        "version": 1,
        "quantity": "10/3",
        "rate": "0.05",
        "amount_minor": amount,
        "fee_minor": fee,
        "reserve_minor": reserve,
        "creator_minor": amount - fee - reserve,
        "leaf_indices": (100 + number, 120 + number),
        "scope": "training",
        "sample_rates": ("3/10",),
    }
    fields.update(changes)
    return StatementLine(**fields)


def document(**changes: Any) -> StatementDocument:
    lines = (
        line(1, 1000, 200, 80, type="upfront", quantity="1", rate="10", scope=None,
             sample_rates=(), leaf_indices=(100,)),
        line(2, 17, 3, 1),
        line(3, 5, 1, 0, period="adjustment", for_period_end_ms=1_699_000_000_000),
    )  # fmt: skip
    fields: dict[str, Any] = {
        "origin": "log.example/test",
        "checkpoint": "log.example/test\n200\nAAAA\n\n\u2014 log.example/test abc=\n",
        "tree_size": 200,
        "root_hash": "q83vEjRWeJA=",
        "range_start": 100,
        "range_end": 200,
        "period_start_ms": 1_699_000_000_000,
        "period_end_ms": 1_700_000_000_000,
        "policy_digest": "sha256:" + "44" * 32,
        "policy": 'currency = "USD"\nminor_exponent = 2\n',
        "currency": "USD",
        "minor_exponent": 2,
        "billing_key": "billing+01020304+AQ==",
        "creator_id": "acct:alice",
        "creator_key": "acct:alice+01020304+AQ==",
        "creator_index": 3,
        "totals": Totals(
            gross_minor=1022,
            fee_minor=204,
            reserve_minor=81,
            creator_minor=737,
            carry_in_minor=40,
            released_minor=90,
            payable_minor=867,
            paid_minor=867,
            carry_out_minor=0,
        ),
        "reserve_release_ms": 1_702_592_000_000,
        "lines": lines,
        "excluded": (
            Exclusion("unknown_manifest", 2, (150, 151)),
            Exclusion("duplicate_request", 7),
        ),
        "disputes": ({"statement": PREVIOUS, "line": 4, "reason": "why", "opened_index": 99},),
        "released": ((PREVIOUS, 90),),
        "previous": PREVIOUS,
        "previous_index": 98,
    }
    fields.update(changes)
    return StatementDocument(**fields)


def test_format_and_parse_are_inverses() -> None:
    doc = document()
    data = format_statement(doc)
    assert parse_statement(data) == doc
    assert format_statement(parse_statement(data)) == data
    obj = json.loads(data)
    assert obj["format"] == FORMAT and obj["engine"] == ENGINE
    assert canonical_json(obj) == data
    assert obj["lines"][2]["leaf_indices"] == [103, 123]
    assert "leaf_indices" not in obj["excluded"][1]  # counted only
    assert statement_digest(data).startswith("sha256:") and len(statement_digest(data)) == 71


def test_streamed_bytes_are_the_canonical_json_of_the_whole() -> None:
    doc = document()
    asked: list[tuple[str, int]] = []

    def indices(kind: str, number: int) -> list[int]:
        asked.append((kind, number))
        found = (doc.lines if kind == "line" else doc.excluded)[number - 1]
        return list(found.leaf_indices)

    chunks = list(statement_chunks(doc.head(), indices))
    assert asked == [("excluded", 1), ("line", 1), ("line", 2), ("line", 3)]  # key order
    assert b"".join(chunks) == format_statement(doc)
    whole = json.loads(format_statement(doc))
    assert canonical_json(whole) == b"".join(chunks)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(100, 199), unique=True, max_size=20000))
def test_long_index_lists_stream_in_pieces(indices: list[int]) -> None:
    ordered = tuple(sorted(indices))
    doc = document(lines=(line(1, 0, 0, 0, leaf_indices=ordered),), excluded=())
    doc = dataclasses.replace(
        doc,
        totals=Totals(0, 0, 0, 0, 40, 90, 130, 130, 0),
    )
    data = format_statement(doc)
    assert json.loads(data)["lines"][0]["leaf_indices"] == list(ordered)
    assert parse_statement(data).lines[0].leaf_indices == ordered


def _mutated(change: Any) -> bytes:
    obj = json.loads(format_statement(document()))
    change(obj)
    return canonical_json(obj)


BAD = [
    (lambda o: o.update(format="other"), "statement.format"),
    (lambda o: o.update(extra=1), "statement.extra"),
    (lambda o: o["lines"][0].update(line=2), "statement.lines[0].line"),
    (lambda o: o["lines"][1].update(amount_minor=18), "statement.lines[1].amount_minor"),
    (lambda o: o["lines"][1].update(type="bonus"), "statement.lines[1].type"),
    (lambda o: o["lines"][1].update(unit="byte"), "statement.lines[1].unit"),
    (lambda o: o["lines"][1].update(leaf_indices=[130, 120]), "statement.lines[1].leaf_indices"),
    (lambda o: o["lines"][1].update(leaf_indices=[99]), "statement.lines[1].leaf_indices"),
    (lambda o: o["lines"][1].update(leaf_indices=[200]), "statement.lines[1].leaf_indices"),
    (lambda o: o["lines"][1].update(quantity="0.5"), "statement.lines[1].quantity"),
    (lambda o: o["lines"][1].update(rate="-1"), "statement.lines[1].rate"),
    (lambda o: o["lines"][1].update(fee_minor=-1), "statement.lines[1].fee_minor"),
    (lambda o: o["lines"][2].pop("for_period_end_ms"), "statement.lines[2].for_period_end_ms"),
    (lambda o: o["totals"].update(gross_minor=1023), "statement.totals.gross_minor"),
    (lambda o: o["totals"].update(paid_minor=0), "statement.totals"),
    (lambda o: o["totals"].update(payable_minor=868), "statement.totals.payable_minor"),
    (lambda o: o["reserve"].update(held_minor=1), "statement.reserve.held_minor"),
    (lambda o: o["excluded"][0].update(reason="cosmic_rays"), "statement.excluded[0].reason"),
    (lambda o: o["range"].update(start=200), "statement.range"),
    (lambda o: o["log"].update(tree_size=201), "statement.log.tree_size"),
    (lambda o: o["previous"].update(digest="sha256:x"), "statement.previous.digest"),
    (lambda o: o["creator"].update(entry_index="3"), "statement.creator.entry_index"),
]


@pytest.mark.parametrize(("change", "field"), BAD)
def test_bad_statements_name_the_field(change: Any, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        parse_statement(_mutated(change))
    assert exc.value.field == field


def test_only_canonical_bytes_parse() -> None:
    data = format_statement(document())
    with pytest.raises(MalformedError) as exc:
        parse_statement(data.replace(b'{"billing_key"', b'{ "billing_key"', 1))
    assert exc.value.field == "statement"
    with pytest.raises(MalformedError):
        parse_statement(data + b"\n")
    with pytest.raises(MalformedError) as exc:
        parse_statement(_mutated(lambda o: o.update(billing_key="a\u0000b")))
    assert "NUL" in exc.value.reason


def test_the_digest_covers_every_byte() -> None:
    data = format_statement(document())
    other = format_statement(document(creator_index=4))
    assert statement_digest(data) != statement_digest(other)
