"""What billing.run writes: each statement's canonical bytes (whose SHA-256 its signed entry
logs) and its CSV export, whose leaf-index column is streamed in batches."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from billing.run import write_run
from tests.billing.logs import ALICE, BILLING, HOUR_MS, T0, Ledger, policy, statements
from tlog.entry import verify_statement
from tlog.statement import parse_statement, statement_digest


def test_statement_and_csv_files(ledger: Ledger, tmp_path: Path) -> None:
    ledger.setup()
    ledger.publish("photo-1", {"per_gib": "1.00", "training": "0.05"})
    first = ledger.size
    for i in range(4097):  # one more than the CSV writer's batch
        ledger.receipt(f"r{i}", T0 + HOUR_MS, job_id=f"job-{i}")
    run = ledger.bill(policy(), T0 + 2 * HOUR_MS)
    (written,) = write_run(run, tmp_path, BILLING)
    data = written.json_path.read_bytes()
    assert data == statements(run)[ALICE.name][1]
    assert statement_digest(data) == written.digest == written.entry.digest
    verify_statement(written.entry, BILLING.verifier())
    assert written.entry.lines == len(parse_statement(data).lines) == 2
    rows = list(csv.reader(io.StringIO(written.csv_path.read_text(), newline="")))
    assert rows[0][-2:] == ["leaf_count", "leaf_indices"] and len(rows) == 3
    for row in rows[1:]:
        assert row[-2] == "4097"
        assert row[-1] == " ".join(str(first + i) for i in range(4097))
    assert not list(tmp_path.glob("*.partial"))
