"""edge_signer.catalog.catalog_from_log: the edge's catalog from the log's creator and manifest
entries: each file under the newest version of its content that is not withdrawn, with that
version's license and scopes; files without one left out; a manifest its creator's registered
key did not sign refused."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from edge_signer.catalog import catalog_from_log
from tlog.entry import Creator, Manifest, sign_creator, sign_manifest
from tlog.errors import VerificationError
from tlog.note import SigningKey, format_vkey

OPERATOR = SigningKey("operator.test", bytes([1]) * 32)
ALICE = SigningKey("acct:alice", bytes([2]) * 32)
ALICE_NEW = SigningKey("acct:alice", bytes([3]) * 32)


def creator(key: SigningKey) -> Creator:
    return sign_creator(Creator(key.name, format_vkey(key.verifier()), "USD"), OPERATOR)


def manifest(content: bytes, version: int, key: SigningKey = ALICE, **changes: object) -> Manifest:
    fields: dict[str, object] = {
        "action": "publish", "creator_id": key.name,
        "content_id": "sha256:" + hashlib.sha256(content).hexdigest(), "version": version,
        "manifest": "sha256:" + hashlib.sha256(b"%s v%d" % (content, version)).hexdigest(),
        "scopes": ("training",), "terms": (("training", "0.05"),),
        "license": f"https://market.test/l/{version}",
    }  # fmt: skip
    fields.update(changes)
    return sign_manifest(Manifest(**fields), key)  # type: ignore[arg-type]


def test_newest_live_version_per_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"b")
    (tmp_path / "c.txt").write_bytes(b"c")
    a1, a2 = manifest(b"a", 1), manifest(b"a", 2, scopes=("inference", "training"))
    b1, b2 = manifest(b"b", 1), manifest(b"b", 2)
    withdraw_b2 = dataclasses.replace(b2, action="withdraw", scopes=(), terms=(), license=None)
    entries = [creator(ALICE), a1, a2, b1, b2, sign_manifest(withdraw_b2, ALICE)]
    catalog, uncovered = catalog_from_log(tmp_path, entries, prefix="/files/")
    assert sorted(catalog.items) == ["/files/a.txt", "/files/sub/b.txt"]
    a = catalog.lookup("/files/a.txt")
    assert a is not None and (a.manifest, a.scopes, a.license) == (
        a2.manifest, ("inference", "training"), "https://market.test/l/2",
    )  # fmt: skip
    b = catalog.lookup("/files/sub/b.txt")
    assert b is not None and b.manifest == b1.manifest  # v2 withdrawn: v1 again
    assert uncovered == ["/files/c.txt"]


def test_manifests_must_be_signed_by_the_key_registered_before_them(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    with pytest.raises(VerificationError):
        catalog_from_log(tmp_path, [manifest(b"a", 1)])  # no creator entry before it
    with pytest.raises(VerificationError):
        catalog_from_log(tmp_path, [creator(ALICE_NEW), manifest(b"a", 1)])  # the old key
    rotated = [creator(ALICE), manifest(b"a", 1), creator(ALICE_NEW), manifest(b"a", 2, ALICE_NEW)]
    catalog, _ = catalog_from_log(tmp_path, rotated)
    assert catalog.lookup("/a.txt") is not None
