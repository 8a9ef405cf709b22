"""The committed anchor contract: its ABI and bytecode, as ``anchor/solidity/build.cjs`` built
them from ``MeterlogAnchor.sol`` (``make contract-check`` rebuilds and compares them).

Owns reading those files. Pure: standard library only; no web3, no compiler (Python never
runs node: the chain runs the committed bytecode).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

__all__ = ["SOLIDITY_DIR", "contract_abi", "creation_code", "runtime_code"]

SOLIDITY_DIR = Path(__file__).parent / "solidity"
_NAME = "MeterlogAnchor"


def _hex_file(suffix: str) -> bytes:
    text = (SOLIDITY_DIR / f"{_NAME}.{suffix}").read_text(encoding="ascii").strip()
    return bytes.fromhex(text)


@functools.cache
def contract_abi() -> list[dict[str, Any]]:
    """The contract's ABI (``MeterlogAnchor.abi.json``)."""
    abi: list[dict[str, Any]] = json.loads(
        (SOLIDITY_DIR / f"{_NAME}.abi.json").read_text(encoding="utf-8")
    )
    return abi


@functools.cache
def creation_code() -> bytes:
    """The bytecode a deployment transaction carries (``MeterlogAnchor.bin``)."""
    return _hex_file("bin")


@functools.cache
def runtime_code() -> bytes:
    """The code a deployed contract holds (``MeterlogAnchor.bin-runtime``): what a verifier
    compares with ``eth_getCode`` before it trusts the contract's events."""
    return _hex_file("bin-runtime")
