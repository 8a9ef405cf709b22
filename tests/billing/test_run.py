"""Billing runs against a real ``meterlog serve`` on loopback: the run reads the log through the
tile client and appends its statement entries; replay gives the same bytes; ``verify
statement`` checks everything; a run refuses an uncommitted range and a checkpoint whose
signature does not verify; runs chain; disputes reach the next run. Both through billing's
functions and through the ``meterlog`` command (exit codes, ``--json``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from billing.policy import parse_policy
from billing.replay import replay_statement, verify_statement_file
from billing.run import run_billing
from cli.main import main
from tests.billing.logs import POLICY
from tests.log_server.server_process import ServerProcess
from tests.verifier.logs import (
    EDGE_KEY,
    LOG_KEY,
    NOW_MS,
    OPERATOR_KEY,
    TamperProxy,
    build_log,
    log_entries,
    registration,
    serve_log,
)
from tlog.bundle import parse_bundle
from tlog.entry import (
    Creator,
    Dispute,
    Manifest,
    Receipt,
    decode_entry,
    encode_entry,
    sign_creator,
    sign_manifest,
    sign_receipt,
)
from tlog.errors import VerificationError
from tlog.note import SigningKey, format_skey, format_vkey
from tlog.statement import parse_statement, statement_digest
from verifier.client import LogClient
from verifier.offline import TrustPolicy

ALICE = SigningKey("acct:alice", bytes(range(90, 122)))
BILLING = SigningKey("billing.test", bytes(range(91, 123)))
CONTENT = "sha256:" + "c7" * 32
MANIFEST = "sha256:" + "d7" * 32


@dataclass
class Served:
    server: ServerProcess
    root: Path

    @property
    def url(self) -> str:
        return self.server.url

    def path(self, name: str) -> str:
        return str(self.root / name)


def _receipt(i: int, **changes: object) -> Receipt:
    fields: dict[str, object] = {
        "request_id": f"run-{i}", "edge": EDGE_KEY.name, "consumer_id": "acme-ai",
        "token_id": "tok", "job_id": f"job-{i % 4}", "scope": "training", "content_id": CONTENT,
        "creator_id": ALICE.name, "manifest": MANIFEST, "bytes_sent": 1 << 28, "cache": "hit",
        "served_at_ms": NOW_MS - 60_000 + i,
    }  # fmt: skip
    fields.update(changes)
    return sign_receipt(Receipt(**fields), EDGE_KEY)  # type: ignore[arg-type]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    storage = build_log(tmp_path / "data")
    creator = sign_creator(Creator(ALICE.name, format_vkey(ALICE.verifier()), "USD"), OPERATOR_KEY)
    manifest = sign_manifest(
        Manifest(
            action="publish", creator_id=ALICE.name, content_id=CONTENT, version=1,
            manifest=MANIFEST, scopes=("training",),
            terms=(("per_gib", "1.00"), ("training", "0.25")), license="https://m.test/l",
        ),
        ALICE,
    )  # fmt: skip
    log_entries(storage, [registration(), creator, manifest])
    log_entries(storage, [_receipt(i) for i in range(12)])
    storage.close()
    (tmp_path / "billing.vkeys").write_text(format_vkey(BILLING.verifier()) + "\n")
    (tmp_path / "billing.key").write_text(format_skey(BILLING) + "\n")
    (tmp_path / "alice.key").write_text(format_skey(ALICE) + "\n")
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "log.vkey").write_text(format_vkey(LOG_KEY.verifier()) + "\n")
    args = ["--billing-keys", str(tmp_path / "billing.vkeys")]
    with serve_log(tmp_path / "data", extra_args=args) as server:
        yield Served(server, tmp_path)


def _trust() -> TrustPolicy:
    return TrustPolicy((LOG_KEY.verifier(),))


def _run(served: Served, out: str, *extra: str) -> int:
    argv = ["billing", "run", "--log", served.url, "--key", served.path("log.vkey"),
            "--policy", served.path("policy.toml"), "--billing-key-file",
            served.path("billing.key"), "--out", served.path(out),
            "--cache", served.path("tiles"), *extra]  # fmt: skip
    return main(argv)


def test_a_run_logs_statements_that_replay_and_verify(served: Served) -> None:
    policy = parse_policy(POLICY.encode())
    with LogClient(served.url) as client:
        report = run_billing(client, _trust(), policy, BILLING, served.root / "out")
        (written,) = report.statements
        assert written.index == 15  # after the 15 entries of the range
        data = written.json_path.read_bytes()
        assert statement_digest(data) == written.digest == written.entry.digest
        document = parse_statement(data)
        # 4 jobs x 0.25 = 1.00; 12 x 2**28 bytes = 3 GiB x 1.00 = 3.00
        assert [(line.type, line.amount_minor) for line in document.lines] == [
            ("event", 100), ("gib", 300),
        ]  # fmt: skip
        assert (document.range_start, document.range_end) == (0, 15)
        assert document.period_end_ms == NOW_MS // 1000 * 1000  # the checkpoint's signed time
        replayed = replay_statement(client, _trust(), data)
        assert replayed.same, replayed.first_difference()
        report_ = verify_statement_file(client, _trust(), data, billing_keys=[BILLING.verifier()])
        assert report_.ok, report_.to_json()
        assert [c.name for c in report_.checks if c.status == "ok"][-3:] == [
            "checkpoint", "receipts", "recomputed",
        ]  # fmt: skip
        csv = written.csv_path.read_text().splitlines()
        assert csv[0].startswith("line,type,period") and len(csv) == 3
        assert csv[2].endswith(",12," + " ".join(str(i) for i in range(3, 15)))
        # Since then the log holds only the statement itself, signed by the server's clock,
        # more than 30 days after the test log's checkpoint: the next run pays no line but
        # releases the first statement's reserve.
        again = run_billing(client, _trust(), policy, BILLING, served.root / "again")
        (released,) = again.statements
        assert (again.plan.start, again.plan.end) == (15, 16)
        assert released.document.lines == ()
        assert released.document.released == ((written.digest, document.totals.reserve_minor),)
        # A run through a size below the last run's statements would bill a range twice.
        with pytest.raises(VerificationError, match="range again"):
            run_billing(client, _trust(), policy, BILLING, served.root / "again", through=15)

    run = json.loads((served.root / "out" / "run.json").read_text())
    assert run["statements"][0]["entry_index"] == 15 and run["appended"] is True


def test_the_command_runs_replays_verifies_and_disputes(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(served, "out", "--json") == 0
    run = json.loads(capsys.readouterr().out)
    statement = str(served.root / "out" / run["statements"][0]["file"])
    common = ["--log", served.url, "--key", served.path("log.vkey")]
    assert main(["billing", "replay", statement, *common]) == 0
    assert main(["verify", "statement", statement, *common, "--billing-key",
                 format_vkey(BILLING.verifier()), "--json"]) == 0  # fmt: skip
    verified = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert verified["ok"] and verified["entry_index"] == 15
    # A changed byte: the statement no longer parses, or is no longer the one in the log.
    tampered = served.root / "tampered.json"
    tampered.write_bytes(
        Path(statement).read_bytes().replace(b'"amount_minor":100', b'"amount_minor":101')
    )
    assert main(["verify", "statement", str(tampered), *common]) == 1
    assert main(["billing", "replay", str(tampered), *common]) == 1
    # The creator disputes line 1; the next run lists the dispute.
    assert main(["billing", "dispute", statement, "--line", "1", "--reason", "one job was a retry",
                 "--key-file", served.path("alice.key"), "--log", served.url]) == 0  # fmt: skip
    assert main(["billing", "dispute", statement, "--line", "9", "--reason", "x",
                 "--key-file", served.path("alice.key"), "--log", served.url]) == 2  # fmt: skip
    with httpx.Client() as http:
        assert http.get(f"{served.url}/v1/disputes").json()["disputes"][0]["line"] == 1
        now = time.time_ns() // 1_000_000
        fresh = [_receipt(100 + i, served_at_ms=now, job_id="job-new") for i in range(2)]
        answer = http.post(
            f"{served.url}/v1/receipts", content=b"\n".join(encode_entry(r) for r in fresh),
            headers={"Content-Type": "application/jsonl"},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
    capsys.readouterr()
    assert _run(served, "out2", "--json") == 0
    second = json.loads(capsys.readouterr().out)
    document = parse_statement(
        (served.root / "out2" / second["statements"][0]["file"]).read_bytes()
    )
    assert [d["line"] for d in document.disputes] == [1]
    assert document.previous == statement_digest(Path(statement).read_bytes())
    assert document.range_start == 15


def test_a_run_refuses_an_uncommitted_range(served: Served) -> None:
    policy = parse_policy(POLICY.encode())
    with LogClient(served.url) as client, pytest.raises(VerificationError, match="not committed"):
        run_billing(client, _trust(), policy, BILLING, served.root / "out", through=99)
    assert _run(served, "out", "--through", "99") == 1
    assert not (served.root / "out" / "run.json").exists()
    with httpx.Client() as http:
        assert http.get(f"{served.url}/v1/statements").json()["statements"] == []


def test_a_run_refuses_a_checkpoint_with_a_bad_signature(served: Served) -> None:
    def corrupt(path: str, status: int, body: bytes) -> tuple[int, bytes]:
        if path.startswith("/checkpoint"):
            text, _, signatures = body.partition(b"\n\n")
            name, _, signature = signatures.partition(b" ")
            flipped = signature[:10] + (b"A" if signature[10:11] != b"A" else b"B") + signature[11:]
            return status, text + b"\n\n" + name + b" " + flipped
        return status, body

    with TamperProxy(served.url, corrupt) as proxy:
        argv = ["billing", "run", "--log", proxy.url, "--key", served.path("log.vkey"),
                "--policy", served.path("policy.toml"), "--billing-key-file",
                served.path("billing.key"), "--out", served.path("out"), "--no-cache"]  # fmt: skip
        assert main(argv) == 1
    other = SigningKey(LOG_KEY.name, b"\x01" * 32)
    (served.root / "other.vkey").write_text(format_vkey(other.verifier()))
    argv = ["billing", "run", "--log", served.url, "--key", served.path("other.vkey"),
            "--policy", served.path("policy.toml"), "--billing-key-file",
            served.path("billing.key"), "--out", served.path("out"), "--no-cache"]  # fmt: skip
    assert main(argv) == 1
    assert not (served.root / "out").exists()


def test_a_run_through_an_earlier_size_bills_that_range(served: Served) -> None:
    # The log signed checkpoints at sizes 3 (the catalog) and 15: up to 3 there is nothing
    # to pay yet, and no statement is logged.
    assert _run(served, "early", "--through", "3") == 0
    run = json.loads((served.root / "early" / "run.json").read_text())
    assert (run["range"], run["statements"]) == ({"start": 0, "end": 3}, [])
    # There is no checkpoint of size 9 in the log's history: refused, not guessed.
    assert _run(served, "nine", "--through", "9") == 1


def test_usage_errors_exit_2(served: Served) -> None:
    assert (
        main(
            [
                "billing",
                "run",
                "--log",
                served.url,
                "--policy",
                served.path("policy.toml"),
                "--billing-key-file",
                served.path("billing.key"),
                "--out",
                served.path("o"),
            ]
        )
        == 2
    )  # fmt: skip no --key
    bad = served.root / "bad.toml"
    bad.write_text('currency = "USD"\nplatform_fee = 0.2\n')
    assert _run(served, "o", "--policy", str(bad)) == 2
    assert main(["billing", "replay", served.path("missing.json"), "--log", served.url,
                 "--key", served.path("log.vkey")]) == 2  # fmt: skip


def test_a_dispute_copied_from_the_log_cannot_hold_a_resolved_reserve(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """The replay attack against a real log: the creator disputes a line, the operator
    resolves it, and anyone posts the creator's open again, copied from /v1/entries. The log
    answers duplicate and appends nothing, the dispute stays closed, and the next run
    releases the reserve. The creator can still dispute the line again (the command signs
    what the new open follows), and withdraw that."""
    assert _run(served, "out", "--json") == 0
    run = json.loads(capsys.readouterr().out)
    statement = str(served.root / "out" / run["statements"][0]["file"])
    digest = statement_digest(Path(statement).read_bytes())
    dispute = ["billing", "dispute", statement, "--line", "1", "--key-file",
               served.path("alice.key"), "--log", served.url, "--json"]  # fmt: skip
    assert main([*dispute, "--reason", "one job was a retry"]) == 0
    opened = json.loads(capsys.readouterr().out)["index"]
    token = (served.root / "data" / "operator.token").read_text().strip()
    with httpx.Client(base_url=served.url, timeout=30) as http:
        resolve = {"creator_id": ALICE.name, "statement": digest, "line": 1, "reason": "no"}
        closed = http.post(
            "/v1/admin/disputes", json=resolve, headers={"Authorization": f"Bearer {token}"}
        )
        assert closed.status_code == 200, closed.text
        size = http.get("/healthz").json()["tree_size"]
        copied = json.loads(
            http.get("/v1/entries", params={"start": opened, "end": opened + 1}).json()["entries"][
                0
            ]["entry"]
        )
        del copied["logged_at_ms"]
        for _ in range(3):
            answer = http.post("/v1/disputes", json=copied)
            assert answer.status_code == 200, answer.text
            assert (answer.json()["status"], answer.json()["index"]) == ("duplicate", opened)
        assert http.get("/healthz").json()["tree_size"] == size
        (line,) = http.get("/v1/disputes", params={"statement": digest}).json()["disputes"]
        assert (line["opened_index"], line["closed_index"]) == (opened, closed.json()["index"])

    # The next run (its checkpoint signed by the server's clock, more than 30 days after the
    # test log's) releases the first statement's reserve: no dispute holds it.
    policy = parse_policy(POLICY.encode())
    with LogClient(served.url) as client:
        again = run_billing(client, _trust(), policy, BILLING, served.root / "again")
    (released,) = again.statements
    first = parse_statement(Path(statement).read_bytes())
    assert released.document.released == ((digest, first.totals.reserve_minor),)
    assert released.document.disputes == ()

    # Disputed again: the command reads the line's latest close and signs that it follows it.
    assert main([*dispute, "--reason", "still a retry"]) == 0
    reopened = json.loads(capsys.readouterr().out)
    assert reopened["status"] == "logged"
    entry = decode_entry(parse_bundle(reopened["bundle"].encode()).extra or b"")
    assert isinstance(entry, Dispute) and entry.follows == closed.json()["index"]
    assert main([*dispute, "--reason", "settled", "--withdraw"]) == 0
    withdrawn = json.loads(capsys.readouterr().out)
    entry = decode_entry(parse_bundle(withdrawn["bundle"].encode()).extra or b"")
    assert isinstance(entry, Dispute) and entry.follows == reopened["index"]
    assert main([*dispute, "--reason", "settled", "--withdraw"]) == 1  # nothing open now
