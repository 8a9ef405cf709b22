"""Fixtures of the verifier's tests: one healthy log served by a real ``meterlog serve``.

``healthy_log`` is built once per session (see tests/verifier/logs.py): entry 0 registers
EDGE_KEY, entries 1..600 are receipts (consumers ``consumer-0..2``, job ``job-7`` on every
tenth), with checkpoints at sizes 1, 501 and 601 — two full entry bundles and a partial one.
Tests must not change it; those that grow a log build their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.log_server.server_process import ServerProcess
from tests.verifier.logs import LOG_KEY, build_log, log_entries, receipt, registration, serve_log
from tlog.entry import Receipt
from tlog.note import format_vkey

HEALTHY_SIZE = 601


@dataclass(frozen=True)
class ServedLog:
    server: ServerProcess
    data_dir: Path
    vkey_file: Path

    @property
    def url(self) -> str:
        return self.server.url


def healthy_receipts(start: int, end: int) -> list[Receipt]:
    return [receipt(i, job="job-7" if i % 10 == 0 else None) for i in range(start, end)]


@pytest.fixture(scope="session")
def healthy_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedLog]:
    root = tmp_path_factory.mktemp("healthy")
    storage = build_log(root / "data")
    log_entries(storage, [registration()])
    log_entries(storage, healthy_receipts(0, 500))
    log_entries(storage, healthy_receipts(500, 600))
    assert storage.tree_size() == HEALTHY_SIZE
    storage.close()
    vkey_file = root / "log.vkey"
    vkey_file.write_text(format_vkey(LOG_KEY.verifier()) + "\n", encoding="utf-8")
    with serve_log(root / "data") as server:
        yield ServedLog(server, root / "data", vkey_file)
