"""docs/formats.md's token and header example is a test vector: every block marked
``token-example:`` is rebuilt here from the doc's own inputs block, byte for byte, and the
token verifies through the command a reader is told to run."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from cli.main import main
from tlog.entry import canonical_json
from tlog.note import SigningKey, format_vkey
from tlog.provenance import (
    Provenance,
    ReceiptRef,
    format_provenance,
    format_receipt_ref,
    parse_provenance,
    parse_receipt_ref,
)
from tlog.token import AccessToken, format_token, parse_token, sign_token

DOC = Path(__file__).parent.parent / "docs" / "formats.md"
_BLOCK = re.compile(r"<!-- token-example: (?P<name>[\w-]+) -->\n```[a-z]*\n(?P<body>.*?)```", re.S)


@pytest.fixture(scope="module")
def blocks() -> dict[str, str]:
    found = {m["name"]: m["body"] for m in _BLOCK.finditer(DOC.read_text(encoding="utf-8"))}
    assert set(found) == {"inputs", "vkey", "payload", "token", "headers"}
    return found


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def rebuilt(blocks: dict[str, str]) -> dict[str, str]:
    inputs = json.loads(blocks["inputs"])
    market = inputs["marketplace_key"]
    key = SigningKey(market["name"], bytes.fromhex(market["seed_hex"]))
    fields = dict(inputs["token"])
    content = tuple(sorted(digest(text) for text in fields.pop("content_of")))
    token = sign_token(AccessToken(issuer=key.name, content=content, **fields), key)
    delivery = inputs["delivery"]
    provenance = Provenance(
        digest(delivery["content_of"]), delivery["creator_id"], digest(delivery["manifest_of"])
    )
    ref = ReceiptRef(delivery["edge"], delivery["request_id"])
    return {
        "vkey": format_vkey(key.verifier()) + "\n",
        "payload": canonical_json(token.signed_fields()).decode() + "\n",
        "token": format_token(token) + "\n",
        "headers": f"X-Provenance: {format_provenance(provenance)}\n"
        f"X-Receipt: {format_receipt_ref(ref)}\n",
    }


@pytest.mark.parametrize("name", ["vkey", "payload", "token", "headers"])
def test_doc_block_is_what_tlog_produces(
    name: str, blocks: dict[str, str], rebuilt: dict[str, str]
) -> None:
    assert blocks[name] == rebuilt[name]


def test_doc_blocks_parse_back(blocks: dict[str, str]) -> None:
    text = blocks["token"].strip()
    assert format_token(parse_token(text)) == text
    provenance_line, receipt_line = blocks["headers"].splitlines()
    value = provenance_line.removeprefix("X-Provenance: ")
    assert format_provenance(parse_provenance(value)) == value
    value = receipt_line.removeprefix("X-Receipt: ")
    assert format_receipt_ref(parse_receipt_ref(value)) == value


def test_doc_token_verifies_with_the_documented_command(
    blocks: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["token", "verify", "--key", blocks["vkey"].strip(), "--now-ms", "1763900000000"]
    assert main([*argv, blocks["token"].strip()]) == 0
    assert main([*argv[:-1], "1763942400000", blocks["token"].strip()]) == 1  # expired
