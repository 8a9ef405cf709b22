"""End to end over real processes on loopback, as the README walks it: a real uvicorn log
(``meterlog serve``), the demo origin (``meterlog edge serve-demo``: the middleware, the
spool and the submitter), keys, registration, the catalog and a token made with the
``meterlog`` commands, and a client fetching files as curl would. The receipt of each
delivery must turn up in the log with a proof that verifies offline, carrying exactly the
bytes the client received; refused requests must leave nothing.
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

from cli.main import main
from tests.edge_signer.edge_process import EdgeProcess, start_demo
from tests.log_server.server_process import ServerProcess, running_server
from tlog.bundle import parse_bundle, verify_bundle
from tlog.entry import Receipt, decode_entry, verify_receipt
from tlog.note import parse_vkey
from tlog.provenance import parse_provenance, parse_receipt_ref

POLL_S = 20.0


@dataclass
class World:
    log: ServerProcess
    edge: EdgeProcess
    files: Path
    keys: Path
    training: str
    inference: str


def meterlog(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``meterlog ARGV`` in process; it must succeed. Its stdout."""
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


@pytest.fixture
def world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[World]:
    files = tmp_path / "files"
    (files / "cats").mkdir(parents=True)
    (files / "cats" / "0001.jpg").write_bytes(bytes(range(256)) * 400)  # 102,400 bytes
    (files / "readme.txt").write_bytes(b"a dataset of cats\n")
    keys = tmp_path / "keys"
    keys.mkdir()
    with running_server(tmp_path / "log") as log:
        meterlog(capsys, "keygen", "--name", "edge-fra1", "--out", str(keys / "edge.key"),
                 "--vkey-out", str(keys / "edge.vkey"))  # fmt: skip
        meterlog(capsys, "keygen", "--name", "market.example", "--out", str(keys / "market.key"),
                 "--vkey-out", str(keys / "market.vkey"))  # fmt: skip
        meterlog(capsys, "edge", "register", "--log", log.url, "--token-file",
                 str(log.data_dir / "operator.token"), "--edge", "edge-fra1",
                 "--key-file", str(keys / "edge.key"))  # fmt: skip
        training = meterlog(
            capsys,
            "token",
            "issue",
            "--key-file",
            str(keys / "market.key"),
            "--consumer",
            "acme-ai",
            "--scope",
            "training",
            "--job-id",
            "job-42",
        )
        inference = meterlog(capsys, "token", "issue", "--key-file", str(keys / "market.key"),
                             "--consumer", "acme-ai", "--scope", "inference")  # fmt: skip
        edge = start_demo(
            files,
            edge_key_file=keys / "edge.key",
            marketplace_vkey=keys / "market.vkey",
            log_url=log.url,
            log_vkey=log.data_dir / "log.vkey",
            spool=tmp_path / "spool",
            extra=["--scope", "training", "--batch-wait", "0.1"],
        )
        try:
            yield World(log, edge, files, keys, training.strip(), inference.strip())
        finally:
            edge.stop()


def wait_for_receipt(world: World, request_id: str) -> dict[str, object]:
    """The log's answer for the edge's receipt, polled for (bounded) until it is logged."""
    url = f"{world.log.url}/v1/receipts/edge-fra1/{request_id}"
    deadline = time.monotonic() + POLL_S
    while time.monotonic() < deadline:
        response = httpx.get(url, timeout=5.0)
        if response.status_code == 200:
            answer: dict[str, object] = response.json()
            return answer
        assert response.status_code == 404, response.text
        time.sleep(0.05)
    raise AssertionError(f"{request_id} was not logged within {POLL_S} s:\n{world.edge.output()}")


def test_a_download_is_metered_into_the_log_with_a_verifiable_proof(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (world.files / "cats" / "0001.jpg").read_bytes()
    response = httpx.get(
        f"{world.edge.url}/cats/0001.jpg",
        headers={"Authorization": f"Bearer {world.training}"},
        timeout=10.0,
    )
    assert response.status_code == 200
    assert response.content == data
    provenance = parse_provenance(response.headers["x-provenance"])
    assert provenance.content_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert response.headers["link"] == '<https://market.example/licenses/train-1>; rel="license"'
    ref = parse_receipt_ref(response.headers["x-receipt"])
    assert ref.edge == "edge-fra1"

    answer = wait_for_receipt(world, ref.request_id)
    bundle_file = tmp_path / "receipt.tlog-proof"
    bundle_file.write_text(str(answer["bundle"]))
    edge_vkey = (world.keys / "edge.vkey").read_text().strip()
    log_vkey = world.log.data_dir / "log.vkey"
    meterlog(capsys, "verify", "bundle", "--key", str(log_vkey), "--edge-key", edge_vkey,
             str(bundle_file))  # fmt: skip

    verified = verify_bundle(parse_bundle(bundle_file.read_bytes()), [world.log.log_key])
    receipt = decode_entry(verified.entry)
    assert isinstance(receipt, Receipt)
    verify_receipt(receipt, parse_vkey(edge_vkey))
    assert receipt.bytes_sent == len(data)
    assert (receipt.content_id, receipt.manifest) == (provenance.content_id, provenance.manifest)
    assert (receipt.consumer_id, receipt.job_id, receipt.scope) == ("acme-ai", "job-42", "training")

    # The edge's own spool holds the same proof, verified before it was kept.
    wait_until = time.monotonic() + POLL_S
    status: dict[str, int] = {}
    while time.monotonic() < wait_until:
        status = json.loads(meterlog(capsys, "edge", "status", "--spool", str(world.edge.spool),
                                     "--json"))  # fmt: skip
        if status["verified"] == 1:
            break
        time.sleep(0.05)
    assert status["verified"] == 1 and status["pending"] == 0, status


def test_a_range_through_a_real_server_is_billed_for_the_range(world: World) -> None:
    response = httpx.get(
        f"{world.edge.url}/cats/0001.jpg",
        headers={"Authorization": f"Bearer {world.training}", "Range": "bytes=100-70099"},
        timeout=10.0,
    )
    assert response.status_code == 206 and len(response.content) == 70_000
    answer = wait_for_receipt(world, response.headers["x-request-id"])
    logged = decode_entry(parse_bundle(str(answer["bundle"]).encode()).extra or b"")
    assert isinstance(logged, Receipt)
    assert logged.bytes_sent == 70_000


def test_refused_requests_are_not_served_and_not_logged(world: World) -> None:
    url = f"{world.edge.url}/cats/0001.jpg"
    missing = httpx.get(url, timeout=10.0)
    assert missing.status_code == 401
    wrong_scope = httpx.get(
        url, headers={"Authorization": f"Bearer {world.inference}"}, timeout=10.0
    )
    assert wrong_scope.status_code == 403
    assert "x-receipt" not in wrong_scope.headers
    # A metered request after them is the only receipt of this edge in the log.
    ok = httpx.get(url, headers={"Authorization": f"Bearer {world.training}"}, timeout=10.0)
    wait_for_receipt(world, ok.headers["x-request-id"])
    found = httpx.get(f"{world.log.url}/v1/receipts?consumer=acme-ai", timeout=10.0).json()
    assert len(found["receipts"]) == 1
