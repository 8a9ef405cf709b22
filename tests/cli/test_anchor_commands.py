"""The anchoring settings of ``meterlog serve`` and the ``anchor``/``verify anchor`` commands'
edges: what must be given together, where the key may come from, usage errors (exit 2), an
unreachable log or node (exit 3), a contract that is not the anchor contract (exit 1), and
``anchor deploy`` on a real anvil node. No message ever holds the anchoring key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli.main import main
from log_server.cli import OPTIONS, ConfigError, check_anchoring, resolve_settings
from tests.anchor.node import ANVIL_CHAIN_ID, ANVIL_KEY, deployed_chain, running_anvil

SECRET = ANVIL_KEY.secret.hex()


def flags(**given: str) -> dict[str, str | None]:
    values: dict[str, str | None] = {option.name: None for option in OPTIONS}
    values.update(given)
    return values


def key_file(tmp_path: Path, text: str = "0x" + SECRET, mode: int = 0o600) -> Path:
    path = tmp_path / "anchor.key"
    path.write_text(text + "\n", encoding="ascii")
    os.chmod(path, mode)
    return path


def test_anchoring_settings_resolve(tmp_path: Path) -> None:
    settings = resolve_settings(
        flags(
            anchor_rpc="http://127.0.0.1:8545",
            anchor_chain_id="31337",
            anchor_contract="0x" + "AB" * 20,
            anchor_key_file=str(key_file(tmp_path)),
            anchor_interval="2.5",
        ),
        {},
    )
    config = settings.config
    assert config.anchor_contract == "0x" + "ab" * 20
    assert (config.anchor_chain_id, config.anchor_interval_s) == (31337, 2.5)
    assert config.anchor_key == ANVIL_KEY
    assert config.anchor_confirmations == 12 and config.anchor_poll_interval_s == 15.0
    assert SECRET not in repr(config)
    from_env = resolve_settings(
        flags(anchor_rpc="eth-tester"), {"METERLOG_ANCHOR_KEY": SECRET}
    ).config
    assert from_env.anchor_key == ANVIL_KEY
    assert resolve_settings(flags(), {}).config.anchor_rpc is None


@pytest.mark.parametrize(
    ("given", "environ", "message"),
    [
        (
            {"anchor_rpc": "http://h:1", "anchor_contract": "0x" + "ab" * 20},
            {},
            "--anchor-chain-id",
        ),
        ({"anchor_rpc": "http://h:1/v3/APIKEY", "anchor_chain_id": "1"}, {}, "--anchor-contract"),
        ({"anchor_chain_id": "1"}, {}, "--anchor-rpc is not"),
        ({}, {"METERLOG_ANCHOR_KEY": SECRET}, "--anchor-rpc is not"),
        ({"anchor_rpc": "ftp://h"}, {}, "http(s)"),
        ({"anchor_rpc": "eth-tester", "anchor_contract": "0x" + "ab" * 20}, {}, "deploys its own"),
        ({"anchor_chain_id": "0x1"}, {}, "chain ID"),
        ({"anchor_contract": "0xabc"}, {}, "Ethereum address"),
        ({"anchor_confirmations": "0"}, {}, "1..1000"),
        ({"anchor_max_fee_gwei": "-1"}, {}, "gwei"),
        ({"anchor_interval": "0"}, {}, "positive"),
        ({"anchor_rpc": "eth-tester"}, {"METERLOG_ANCHOR_KEY": SECRET[:-1] + "x"}, "METERLOG"),
    ],
)
def test_bad_anchoring_settings_name_the_setting(
    given: dict[str, str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        check_anchoring(resolve_settings(flags(**given), environ).config)
    assert SECRET[:-1] not in str(e.value) and "APIKEY" not in str(e.value)


def test_the_key_is_given_once_from_a_private_file(tmp_path: Path) -> None:
    path = key_file(tmp_path)
    with pytest.raises(ConfigError, match="given twice"):
        resolve_settings(
            flags(anchor_rpc="eth-tester", anchor_key_file=str(path)),
            {"METERLOG_ANCHOR_KEY": SECRET},
        )
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        resolve_settings(flags(anchor_rpc="eth-tester", anchor_key_file=str(path)), {})
    assert SECRET not in str(caught.value)
    bad = key_file(tmp_path, "0x" + SECRET[:-2])
    with pytest.raises(ConfigError, match="not a private key") as caught:
        resolve_settings(flags(anchor_rpc="eth-tester", anchor_key_file=str(bad)), {})
    assert SECRET[:-2] not in str(caught.value)


# -- the commands -------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_verify_anchor_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["verify", "anchor", "--log", "http://127.0.0.1:9", "--rpc", "http://127.0.0.1:9"]
    vkey = "log.example+d85f6874+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
    for extra, message in (
        (["--contract", "0x12", "--key", vkey], "--contract"),
        (["--contract", "0x" + "ab" * 20, "--key", vkey, "--from", "nope"], "--from"),
        (["--contract", "0x" + "ab" * 20, "--key", str(tmp_path / "missing")], "--key"),
    ):
        status, _, err = run(capsys, *base, *extra)
        assert status == 2 and message in err


def test_verify_anchor_with_nothing_to_reach_is_unavailable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    vkey = "log.example+d85f6874+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
    with running_anvil() as anvil:
        status, _, err = run(
            capsys,
            "verify", "anchor", "--log", "http://127.0.0.1:9", "--rpc", anvil.url,
            "--contract", "0x" + "ab" * 20, "--key", vkey,
        )  # fmt: skip
        assert status == 3 and "unavailable" in err
    status, _, err = run(
        capsys,
        "verify", "anchor", "--log", "http://127.0.0.1:9", "--rpc", "http://127.0.0.1:9",
        "--contract", "0x" + "ab" * 20, "--key", vkey,
    )  # fmt: skip
    assert status == 3 and "unreachable" in err


def test_anchor_deploy_on_anvil(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = key_file(tmp_path)
    with deployed_chain("anvil") as chain:
        status, out, err = run(
            capsys, "anchor", "deploy", "--rpc", chain.endpoint, "--key-file", str(path),
            "--chain-id", str(ANVIL_CHAIN_ID), "--json",
        )  # fmt: skip
        assert status == 0, err
        deployed = json.loads(out)
        chain.chain.check_contract(deployed["contract"])  # the committed code is there
        assert deployed["chain_id"] == ANVIL_CHAIN_ID and "deployed" in err
        status, _, err = run(
            capsys, "anchor", "deploy", "--rpc", chain.endpoint, "--key-file", str(path),
            "--chain-id", "1",
        )  # fmt: skip
        assert status == 1 and "not the configured chain 1" in err
        assert SECRET not in err
        status, _, err = run(capsys, "anchor", "deploy", "--rpc", chain.endpoint)
        assert status == 2 and "METERLOG_ANCHOR_KEY" in err
