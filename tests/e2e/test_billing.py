"""End to end over real processes on loopback: a creator's content from publication to a
verified statement.

A real uvicorn log (``meterlog serve --billing-keys``); the operator registers an edge key
and the creator (``meterlog edge register``, ``meterlog creator add``); the creator publishes
a manifest version of each file (``meterlog manifest publish``); the demo origin (``meterlog
edge serve-demo --from-log``) builds its catalog from those entries; a buyer downloads with
marketplace training tokens for two jobs; the receipts reach the log through the edge's
spool and submitter; ``meterlog billing run`` bills the range and logs the statement; the
creator checks it with ``meterlog verify statement`` and ``meterlog billing replay``, and
disputes a line. Then a withdrawal takes a version out of the edge's catalog.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from billing.policy import EXAMPLE
from cli.main import main
from tests.e2e.test_edge import meterlog
from tests.edge_signer.edge_process import EdgeProcess, start_demo
from tests.log_server.server_process import ServerProcess, running_server
from tlog.provenance import parse_receipt_ref
from tlog.statement import parse_statement

POLL_S = 20.0
CREATOR = "acct:alice@example.com"
LICENSE = "https://market.example/licenses/train-1"


@dataclass
class World:
    log: ServerProcess
    edge: EdgeProcess
    root: Path

    def path(self, name: str) -> str:
        return str(self.root / name)


@pytest.fixture
def world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[World]:
    files = tmp_path / "files"
    (files / "cats").mkdir(parents=True)
    (files / "cats" / "0001.jpg").write_bytes(bytes(range(256)) * 400)  # 102,400 bytes
    (files / "readme.txt").write_bytes(b"a dataset of cats\n")
    (tmp_path / "policy.toml").write_text(
        EXAMPLE.replace("minimum_minor = 1000", "minimum_minor = 1")
    )

    def run(*argv: str) -> str:
        return meterlog(capsys, *argv)

    for name, file in (("edge-fra1", "edge"), ("market.example", "market"), (CREATOR, "alice"),
                       ("billing.example", "billing")):  # fmt: skip
        run("keygen", "--name", name, "--out", str(tmp_path / f"{file}.key"),
            "--vkey-out", str(tmp_path / f"{file}.vkey"))  # fmt: skip
    (tmp_path / "billing.keys").write_text((tmp_path / "billing.vkey").read_text())
    extra = ["--billing-keys", str(tmp_path / "billing.keys")]
    with running_server(tmp_path / "log", extra_args=extra) as log:
        token = str(log.data_dir / "operator.token")
        run("edge", "register", "--log", log.url, "--token-file", token, "--edge", "edge-fra1",
            "--key-file", str(tmp_path / "edge.key"))  # fmt: skip
        run("creator", "add", "--log", log.url, "--token-file", token,
            "--key", str(tmp_path / "alice.vkey"), "--currency", "USD")  # fmt: skip
        for file in (files / "cats" / "0001.jpg", files / "readme.txt"):
            manifest = tmp_path / f"{file.name}.manifest.json"
            manifest.write_text(json.dumps({"title": file.name, "creator": CREATOR}))
            run("manifest", "publish", "--log", log.url, "--key-file", str(tmp_path / "alice.key"),
                "--content-file", str(file), "--version", "1", "--manifest-file", str(manifest),
                "--scopes", "training", "--terms", "training=0.05,per_gib=1.00",
                "--license", LICENSE)  # fmt: skip
        edge = start_demo(
            files,
            edge_key_file=tmp_path / "edge.key",
            marketplace_vkey=tmp_path / "market.vkey",
            log_url=log.url,
            log_vkey=log.data_dir / "log.vkey",
            spool=tmp_path / "spool",
            extra=["--from-log", "--batch-wait", "0.1"],
        )
        try:
            yield World(log, edge, tmp_path)
        finally:
            edge.stop()


def _download(world: World, path: str, token: str) -> str:
    """GET through the edge; the request id of its receipt."""
    response = httpx.get(
        f"{world.edge.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10.0
    )
    assert response.status_code == 200, response.text
    assert response.headers["link"] == f'<{LICENSE}>; rel="license"'
    return parse_receipt_ref(response.headers["x-receipt"]).request_id


def _wait_logged(world: World, request_id: str) -> int:
    url = f"{world.log.url}/v1/receipts/edge-fra1/{request_id}"
    deadline = time.monotonic() + POLL_S
    while time.monotonic() < deadline:
        response = httpx.get(url, timeout=5.0)
        if response.status_code == 200:
            index: int = response.json()["index"]
            return index
        time.sleep(0.05)
    raise AssertionError(f"{request_id} was not logged within {POLL_S} s:\n{world.edge.output()}")


def test_downloads_become_a_statement_the_creator_verifies(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*argv: str) -> str:
        return meterlog(capsys, *argv)

    market = world.path("market.key")
    job42 = run("token", "issue", "--key-file", market, "--consumer", "acme-ai", "--scope",
                "training", "--job-id", "job-42").strip()  # fmt: skip
    job43 = run("token", "issue", "--key-file", market, "--consumer", "acme-ai", "--scope",
                "training", "--job-id", "job-43").strip()  # fmt: skip
    requests = [
        _download(world, "/cats/0001.jpg", job42),
        _download(world, "/cats/0001.jpg", job42),  # the same job again: one billable event
        _download(world, "/readme.txt", job42),
        _download(world, "/cats/0001.jpg", job43),
    ]
    indexes = sorted(_wait_logged(world, r) for r in requests)

    log = world.log
    common = ["--log", log.url, "--key", str(log.data_dir / "log.vkey")]
    out = run("billing", "run", *common, "--policy", world.path("policy.toml"),
              "--billing-key-file", world.path("billing.key"), "--out", world.path("run"),
              "--json")  # fmt: skip
    (summary,) = json.loads(out)["statements"]
    statement = world.path(f"run/{summary['file']}")
    document = parse_statement(Path(statement).read_bytes())
    assert document.creator_id == CREATOR
    cats = "sha256:" + hashlib.sha256((world.root / "files/cats/0001.jpg").read_bytes()).hexdigest()
    events = {(line.content_id, line.type): line for line in document.lines}
    # cats: two jobs, once each; readme: one. Bytes: every delivery.
    assert events[(cats, "event")].quantity == "2"
    assert events[(cats, "gib")].quantity == str(3 * 102_400)
    counted = sorted(i for line in document.lines if line.type == "gib" for i in line.leaf_indices)
    assert counted == indexes
    assert {e.reason: e.receipts for e in document.excluded} == {"duplicate_event": 1}

    # The creator checks the statement, from outside: in the log, every receipt, recomputed.
    verify = ["verify", "statement", statement, *common, "--billing-key",
              world.path("billing.vkey"), "--json"]  # fmt: skip
    report = json.loads(run(*verify))
    assert report["ok"] and report["entry_index"] == summary["entry_index"]
    assert {c["name"] for c in report["checks"] if c["status"] == "ok"} >= {
        "statement in the log", "receipts", "recomputed", "billing key",
    }  # fmt: skip
    run("billing", "replay", statement, *common)
    run("billing", "dispute", statement, "--line", "1", "--reason", "job-43 was a retry",
        "--key-file", world.path("alice.key"), "--log", log.url)  # fmt: skip
    disputes = httpx.get(f"{log.url}/v1/disputes", params={"open": "1"}, timeout=5.0).json()
    assert [(d["line"], d["creator_id"]) for d in disputes["disputes"]] == [(1, CREATOR)]


def test_a_withdrawn_version_leaves_the_edges_catalog(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = world.root / "files" / "readme.txt"
    manifest = (
        "sha256:"
        + hashlib.sha256((world.root / "readme.txt.manifest.json").read_bytes()).hexdigest()
    )
    meterlog(capsys, "manifest", "withdraw", "--log", world.log.url, "--key-file",
             world.path("alice.key"), "--content-file", str(readme), "--version", "1",
             "--manifest", manifest)  # fmt: skip
    capsys.readouterr()
    assert main(["edge", "catalog", world.path("files"), "--from-log", "--log", world.log.url,
                 "--log-key", str(world.log.data_dir / "log.vkey")]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    items = json.loads(out)["items"]
    assert sorted(items) == ["/cats/0001.jpg"]
    assert items["/cats/0001.jpg"]["license"] == LICENSE
    assert "/readme.txt: no live manifest version in the log" in err
