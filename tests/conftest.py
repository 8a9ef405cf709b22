"""Shared fixtures: the published test vectors (copied into tests/vectors with their sources),
and the chains of the anchoring tests (tests/anchor/node.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.anchor.node import DeployedChain, deployed_chain

VECTORS_PATH = Path(__file__).parent / "vectors" / "vectors.json"


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return data


@pytest.fixture(params=["anvil", "eth-tester"])
def anchor_chain(request: pytest.FixtureRequest) -> Iterator[DeployedChain]:
    """A chain with the anchor contract deployed: a real anvil node, then eth-tester."""
    with deployed_chain(request.param) as chain:
        yield chain
