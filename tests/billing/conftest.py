"""Fixtures of the billing tests: an in-memory ledger whose runs' lists are closed after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.billing.logs import Ledger


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    built = Ledger()
    try:
        yield built
    finally:
        built.close()
