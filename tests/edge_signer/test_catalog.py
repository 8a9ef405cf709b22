"""The catalog file (built, formatted and parsed against each other; strict parsing), the
access gate's decisions and its cache, and loading the edge's key file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edge_signer.catalog import (
    Catalog,
    CatalogItem,
    build_catalog,
    format_catalog,
    load_catalog,
    manifest_digest,
    parse_catalog,
)
from edge_signer.signer import EdgeKeyError, load_edge_key
from edge_signer.tokens import AccessDenied, AccessGate
from tests.edge_signer.conftest import MARKET_KEY, NOW_MS, issue
from tlog.errors import MalformedError
from tlog.note import SigningKey, format_skey

DIGEST = "sha256:" + "ab" * 32


def test_build_format_parse_round_trip(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"x" * 3_000_000)
    (tmp_path / "b.txt").write_bytes(b"hello\n")
    (tmp_path / ".hidden").write_bytes(b"secret")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_bytes(b"")
    catalog = build_catalog(
        tmp_path, creator_id="acct:alice", license="https://l.test/1", scopes=("training",),
        prefix="/data/",
    )  # fmt: skip
    assert sorted(catalog.items) == ["/data/a/x.bin", "/data/b.txt"]
    item = catalog.lookup("/data/b.txt")
    assert item is not None
    assert item.content_id == "sha256:" + hashlib.sha256(b"hello\n").hexdigest()
    assert item.manifest == manifest_digest(item.content_id, "acct:alice", "https://l.test/1",
                                            ("training",))  # fmt: skip
    data = format_catalog(catalog)
    assert parse_catalog(data) == catalog
    (tmp_path / "catalog.json").write_bytes(data)
    assert load_catalog(tmp_path / "catalog.json") == catalog
    assert json.loads(data)["format"] == "meterlog-catalog-v1"


def test_items_without_a_content_id_round_trip() -> None:
    item = CatalogItem("/x", "acct:a", DIGEST, "https://l.test/1", ("preview",))
    catalog = Catalog({"/x": item})
    assert parse_catalog(format_catalog(catalog)) == catalog
    assert "content_id" not in json.loads(format_catalog(catalog))["items"]["/x"]


def good_item() -> dict[str, object]:
    return {
        "creator_id": "acct:a",
        "manifest": DIGEST,
        "license": "https://l.test/1",
        "scopes": ["training"],
    }


def doc(items: object, fmt: str = "meterlog-catalog-v1") -> bytes:
    return json.dumps({"format": fmt, "items": items}).encode()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"not json", "catalog"),
        (b"[]", "catalog"),
        (doc({}, "other"), "catalog.format"),
        (b'{"format": "meterlog-catalog-v1", "items": {}, "extra": 1}', "catalog"),
        (b'{"format": "meterlog-catalog-v1", "items": {"/a": {}, "/a": {}}}', "catalog: '/a'"),
        (doc([]), "catalog.items"),
        (doc({"/a": []}), "catalog.items['/a']"),
        (doc({"/a": {**good_item(), "price": 1}}), "catalog.items['/a'].price"),
        (doc({"/a": {k: v for k, v in good_item().items() if k != "license"}}),
         "catalog.items['/a'].license"),
        (doc({"/a": {**good_item(), "scopes": []}}), "catalog.items['/a'].scopes"),
        (doc({"/a": {**good_item(), "scopes": "training"}}), "catalog.items['/a'].scopes"),
        (doc({"/a": {**good_item(), "scopes": ["training", "training"]}}),
         "catalog.items['/a'].scopes"),
        (doc({"/a": {**good_item(), "scopes": ["admin"]}}), "catalog.items['/a'].scopes"),
        (doc({"/a": {**good_item(), "manifest": "md5:x"}}), "catalog.items['/a'].manifest"),
        (doc({"/a": {**good_item(), "content_id": "sha256:AB"}}), "catalog.items['/a'].content_id"),
        (doc({"/a": {**good_item(), "license": "not a uri"}}), "catalog.items['/a'].license"),
        (doc({"/a": {**good_item(), "license": 'https://x/"><script>'}}),
         "catalog.items['/a'].license"),
        (doc({"/a": {**good_item(), "creator_id": "a b"}}), "catalog.items['/a'].creator_id"),
        (doc({"a": good_item()}), "catalog.items"),
    ],
)  # fmt: skip
def test_bad_catalogs_name_the_field(data: bytes, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        parse_catalog(data)
    assert exc.value.field == field


def test_build_refuses_a_bad_prefix(tmp_path: Path) -> None:
    with pytest.raises(MalformedError):
        build_catalog(tmp_path, creator_id="a", license="https://l/1", scopes=("training",),
                      prefix="data")  # fmt: skip


# -- the access gate -------------------------------------------------------------------------


def test_the_gate_verifies_each_token_once_and_checks_time_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = AccessGate([MARKET_KEY.verifier()], leeway_ms=0)
    calls: list[str] = []
    real = AccessGate._verify

    def counting(self: AccessGate, text: str, now_ms: int) -> object:
        calls.append(text)
        return real(self, text, now_ms)

    monkeypatch.setattr(AccessGate, "_verify", counting)
    text = issue(expires_at_ms=NOW_MS + 1000)
    for _ in range(3):
        assert gate.token(f"Bearer {text}", NOW_MS).consumer_id == "acme-ai"
    assert len(calls) == 1
    with pytest.raises(AccessDenied, match="expired") as exc:
        gate.token(f"bearer {text}", NOW_MS + 1000)
    assert exc.value.status == 401
    assert text not in gate._verified


def test_the_gate_cache_is_bounded() -> None:
    gate = AccessGate([MARKET_KEY.verifier()], cache_size=2)
    for i in range(5):
        gate.token(f"Bearer {issue(token_id=f'tok-{i}')}", NOW_MS)
    assert len(gate._verified) == 2


def test_the_gate_needs_a_key() -> None:
    with pytest.raises(ValueError, match="marketplace key"):
        AccessGate([])


def test_challenge_text_is_safe_to_quote() -> None:
    denied = AccessDenied(401, "invalid_token", 'bad "token" \\ \n here')
    challenge = denied.www_authenticate()
    assert challenge == (
        'Bearer realm="meterlog", error="invalid_token", error_description="bad ?token? ? ? here"'
    )


# -- the edge's key file ---------------------------------------------------------------------


def test_load_edge_key(tmp_path: Path) -> None:
    key = SigningKey("edge-x", bytes(32))
    path = tmp_path / "edge.key"
    path.write_text(format_skey(key) + "\n")
    assert load_edge_key(path) == key
    assert load_edge_key(path, "edge-x") == key
    with pytest.raises(EdgeKeyError, match="not the edge"):
        load_edge_key(path, "edge-y")
    with pytest.raises(EdgeKeyError, match="not a signer key"):
        load_edge_key(_write(tmp_path / "bad", "junk"))
    with pytest.raises(EdgeKeyError):
        load_edge_key(tmp_path / "missing.key")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
