"""Storage.entry_data, which the tile route serves entry bundles from: exactly the bytes of
``Storage.entries`` for any range, on SQLite and PostgreSQL."""

from __future__ import annotations

from log_server.sequencer import sequence
from log_server.storage import Storage
from tests.log_server.conftest import LOG, NOW_MS, make_edge_key, make_receipt


def test_entry_data_is_the_entries_bytes(storage: Storage) -> None:
    sequence(storage, LOG, [make_edge_key()], NOW_MS)
    sequence(storage, LOG, [make_receipt(i) for i in range(40)], NOW_MS)
    for start, end in [(0, 41), (0, 1), (5, 17), (40, 41), (41, 41), (30, 99), (7, 3)]:
        expected = [r.data for r in storage.entries(start, end)]
        assert storage.entry_data(start, end) == expected
    assert len(storage.entry_data(0, 41)) == 41
