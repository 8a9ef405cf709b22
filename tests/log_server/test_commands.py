"""The log's commands: ``serve`` settings, ``edge``, ``receipt make`` and ``receipt submit``.

The settings tests resolve flags, environment and TOML without starting anything. The rest
runs the real ``meterlog serve`` console script as a subprocess on 127.0.0.1 (waiting for
/healthz with bounded polling, terminated at the end whatever happens) and drives it with the
client commands in process (``cli.main.main``), plus httpx directly, as curl would.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import httpx
import pytest

import cli.receipt
import verifier.cli
from anchor.secret import AnchorKey
from cli.main import main
from cli.receipt import proof_file_name
from log_server import cli as serve_cli
from log_server.cli import OPTIONS, ConfigError, resolve_settings
from log_server.config import Config
from tlog.bundle import parse_bundle, verify_bundle
from tlog.entry import Receipt, decode_entry, verify_receipt
from tlog.note import SigningKey, format_vkey, parse_vkey

METERLOG = Path(sys.executable).with_name("meterlog")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``meterlog ARGV`` in process: exit code, stdout, stderr."""
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- settings: flags > environment > TOML > defaults ---------------------------------------


def test_exit_codes_agree_with_the_verifiers() -> None:
    # log_server may not import verifier, so it keeps its own copy of the numbers.
    assert serve_cli.EXIT_OK == verifier.cli.EXIT_OK
    assert serve_cli.EXIT_USAGE == verifier.cli.EXIT_USAGE
    assert serve_cli.EXIT_UNAVAILABLE == verifier.cli.EXIT_UNAVAILABLE


def no_flags(**given: str) -> dict[str, str | None]:
    flags: dict[str, str | None] = {option.name: None for option in OPTIONS}
    flags.update(given)
    return flags


@pytest.fixture
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory, where relative paths in settings point."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults() -> None:
    settings = resolve_settings(no_flags(), {})
    assert settings.config == Config(data_dir=Path("meterlog-data"))
    assert settings.config.origin == "localhost/meterlog"
    assert (settings.config.host, settings.config.port) == ("127.0.0.1", 8080)
    assert settings.config.db is None
    assert settings.operator_token_file == Path("meterlog-data/operator.token")


# For every option: its value in the TOML file, the environment and the flag, where it lands
# in the Settings, and what it must hold there with each of the three.
LAYERS: dict[str, tuple[str, str, str, str, tuple[object, object, object]]] = {
    "data_dir": ('"t-dir"', "e-dir", "f-dir", "config.data_dir",
                 (Path("t-dir"), Path("e-dir"), Path("f-dir"))),
    "host": ('"10.0.0.1"', "10.0.0.2", "10.0.0.3", "config.host",
             ("10.0.0.1", "10.0.0.2", "10.0.0.3")),
    "port": ("1001", "1002", "1003", "config.port", (1001, 1002, 1003)),
    "origin": ('"t.example/log"', "e.example/log", "f.example/log", "config.origin",
               ("t.example/log", "e.example/log", "f.example/log")),
    "db": ('"sqlite:///t.db"', "sqlite:///e.db", "postgresql://f/db", "config.db",
           ("sqlite:///t.db", "sqlite:///e.db", "postgresql://f/db")),
    "pool_interval": ("0.25", "1", "2.5", "config.pool_interval_s", (0.25, 1.0, 2.5)),
    "checkpoint_interval": ("2", "3.5", "4", "config.checkpoint_interval_s", (2.0, 3.5, 4.0)),
    "verify_processes": ("0", "2", "3", "config.verify_processes", (0, 2, 3)),
    "receipt_rate": ("1000", "2.5", "3", "config.receipt_rate", (1000.0, 2.5, 3.0)),
    "receipt_burst": ("1", "2", "3", "config.receipt_burst", (1, 2, 3)),
    "creator_rate": ("0.5", "2", "3", "config.creator_rate", (0.5, 2.0, 3.0)),
    "creator_burst": ("1", "2", "3", "config.creator_burst", (1, 2, 3)),
    "statement_rate": ("1", "2", "3.5", "config.statement_rate", (1.0, 2.0, 3.5)),
    "statement_burst": ("1", "2", "3", "config.statement_burst", (1, 2, 3)),
    "operator_token_file": ('"t.token"', "e.token", "f.token", "operator_token_file",
                            (Path("t.token"), Path("e.token"), Path("f.token"))),
    "witness_policy": ('"t.policy"', "e.policy", "f.policy", "config.witness_policy",
                       (Path("t.policy"), Path("e.policy"), Path("f.policy"))),
    "witness_interval": ("2", "3.5", "4", "config.witness_interval_s", (2.0, 3.5, 4.0)),
    "billing_keys": ('"t.keys"', "e.keys", "f.keys", "config.billing_keys",
                     (Path("t.keys"), Path("e.keys"), Path("f.keys"))),
    "statements": ('"t.runs"', "e.runs", "f.runs", "config.statements_dir",
                   (Path("t.runs"), Path("e.runs"), Path("f.runs"))),
    "anchor_rpc": ('"eth-tester"', "http://e:1", "https://f:2/k", "config.anchor_rpc",
                   ("eth-tester", "http://e:1", "https://f:2/k")),
    "anchor_chain_id": ("1", "2", "3", "config.anchor_chain_id", (1, 2, 3)),
    "anchor_contract": ('"0x' + "aa" * 20 + '"', "0x" + "BB" * 20, "0x" + "cc" * 20,
                        "config.anchor_contract",
                        ("0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20)),
    "anchor_key_file": ('"t.key"', "e.key", "f.key", "config.anchor_key",
                        tuple(AnchorKey(bytes([n]) * 32) for n in (1, 2, 3))),
    "anchor_interval": ("60", "2.5", "0.5", "config.anchor_interval_s", (60.0, 2.5, 0.5)),
    "anchor_confirmations": ("1", "2", "64", "config.anchor_confirmations", (1, 2, 64)),
    "anchor_poll_interval": ("1", "2", "3", "config.anchor_poll_interval_s", (1.0, 2.0, 3.0)),
    "anchor_replace_after": ("10", "20", "30", "config.anchor_replace_after_s",
                             (10.0, 20.0, 30.0)),
    "anchor_max_fee_gwei": ("1", "2", "3", "config.anchor_max_fee_gwei", (1, 2, 3)),
}  # fmt: skip


def test_every_option_is_layered() -> None:
    assert set(LAYERS) == {o.name for o in OPTIONS} - {"config"}


@pytest.mark.usefixtures("in_tmp_path")
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_flags_beat_environment_beat_toml_beat_defaults(name: str) -> None:
    for token_file in ("t.token", "e.token", "f.token"):
        Path(token_file).write_text(f"token-from-{token_file}-0123456789\n", encoding="utf-8")
    for policy_file in ("t.policy", "e.policy", "f.policy"):
        Path(policy_file).write_text("quorum none\n", encoding="utf-8")
    for n, keys_file in enumerate(("t.keys", "e.keys", "f.keys"), start=1):
        billing = SigningKey(f"billing-{n}.example", bytes([n]) * 32)
        Path(keys_file).write_text(format_vkey(billing.verifier()) + "\n", encoding="utf-8")
    for runs_dir in ("t.runs", "e.runs", "f.runs"):
        Path(runs_dir).mkdir()
    for n, key_file in enumerate(("t.key", "e.key", "f.key"), start=1):
        Path(key_file).write_text(f"{n:02x}" * 32 + "\n", encoding="ascii")
        Path(key_file).chmod(0o600)
    toml_value, env_value, flag_value, where, expected = LAYERS[name]
    env_name = next(o.env for o in OPTIONS if o.name == name)
    Path("serve.toml").write_text(f"{name} = {toml_value}\n", encoding="utf-8")
    shown = attrgetter(where)

    default = shown(resolve_settings(no_flags(), {}))
    from_toml = shown(resolve_settings(no_flags(config="serve.toml"), {}))
    environ = {env_name: env_value}
    from_env = shown(resolve_settings(no_flags(config="serve.toml"), environ))
    flags = no_flags(config="serve.toml", **{name: flag_value})
    from_flag = shown(resolve_settings(flags, environ))

    assert (from_toml, from_env, from_flag) == expected
    assert default not in expected


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text('origin = "from.file/log"\nport = 9\n', encoding="utf-8")
    config = resolve_settings(no_flags(), {"METERLOG_CONFIG": str(toml)}).config
    assert (config.origin, config.port) == ("from.file/log", 9)


def test_an_empty_variable_counts_as_unset() -> None:
    environ = {option.env: "" for option in OPTIONS}
    assert resolve_settings(no_flags(), environ) == resolve_settings(no_flags(), {})


def test_operator_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-0123456789\n", encoding="utf-8")
    settings = resolve_settings(no_flags(), {"METERLOG_OPERATOR_TOKEN_FILE": str(token_file)})
    assert settings.operator_token_file == token_file
    assert settings.config.operator_token == "s3cret-token-0123456789"


@pytest.mark.parametrize(
    ("flags", "environ", "toml", "message"),
    [
        ({"port": "http"}, {}, None, "--port http: not a decimal port number"),
        ({"port": "+80"}, {}, None, "--port +80"),
        ({}, {"METERLOG_PORT": "70000"}, None, "METERLOG_PORT=70000: not in 0..65535"),
        ({}, {}, 'port = "8080"', "port = '8080': not a TOML int"),
        ({}, {}, "port = true", "port = True: not a TOML int"),
        ({}, {}, "pool_interval = 0", "pool_interval = 0: must be a positive"),
        ({"checkpoint_interval": "nan"}, {}, None, "--checkpoint-interval nan"),
        ({"pool_interval": "-1"}, {}, None, "--pool-interval -1"),
        ({}, {}, 'colour = "blue"', "unknown key 'colour'"),
        ({}, {}, 'config = "other.toml"', "unknown key 'config'"),
        ({}, {}, "port = ", "not valid TOML"),
        ({"origin": "has space"}, {}, None, "--origin has space: not usable as a key name"),
        ({"origin": "a+b"}, {}, None, "contains '+'"),
        ({}, {"METERLOG_ORIGIN": "x" * 250}, None, "longer than 255 bytes"),
        ({"db": "mysql://db"}, {}, None, "--db mysql://db: neither sqlite:///PATH"),
        ({"host": " 127.0.0.1"}, {}, None, "--host  127.0.0.1: empty, or has"),
        ({"config": "missing.toml"}, {}, None, "--config missing.toml: No such file"),
        ({"operator_token_file": "missing"}, {}, None, "operator token file missing"),
        ({"verify_processes": "-1"}, {}, None, "--verify-processes -1: not a whole number"),
        ({}, {"METERLOG_VERIFY_PROCESSES": "65"}, None, "PROCESSES=65: more than 64"),
        ({"receipt_rate": "0"}, {}, None, "--receipt-rate 0: must be a positive number"),
        ({}, {"METERLOG_CREATOR_RATE": "inf"}, None, "CREATOR_RATE=inf: must be a positive"),
        ({"statement_rate": "fast"}, {}, None, "--statement-rate fast: not a number"),
        ({"creator_burst": "0"}, {}, None, "--creator-burst 0: not a whole number from 1"),
        ({}, {}, "receipt_burst = 1.5", "receipt_burst = 1.5: not a TOML int"),
        ({"billing_keys": "missing.keys"}, {}, None, "--billing-keys missing.keys: cannot read"),
        ({"billing_keys": "serve.toml"}, {}, "port = 1", "not a file of Ed25519 verifier keys"),
        ({"statements": "missing.runs"}, {}, None, "--statements missing.runs: not a directory"),
    ],
)
@pytest.mark.usefixtures("in_tmp_path")
def test_invalid_settings_name_their_source(
    flags: dict[str, str], environ: dict[str, str], toml: str | None, message: str
) -> None:
    if toml is not None:
        Path("serve.toml").write_text(toml + "\n", encoding="utf-8")
        flags = {"config": "serve.toml", **flags}
    with pytest.raises(ConfigError) as raised:
        resolve_settings(no_flags(**flags), environ)
    assert message in str(raised.value)


@pytest.mark.parametrize("token", ["short", "two words and more than 16", "a" * 20 + "\nb"])
def test_a_weak_or_malformed_token_file_is_refused(token: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token, encoding="utf-8")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        resolve_settings(no_flags(operator_token_file=str(token_file)), {})


def test_serve_help_documents_every_option_and_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in OPTIONS:
        assert option.flag in text
        assert option.env in text
    assert "flags win over the environment, which wins over the file" in text


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("METERLOG_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environment")
def test_serve_exits_2_on_an_invalid_value(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "serve", "--pool-interval", "soon")
    assert status == 2
    assert "meterlog serve: --pool-interval soon: not a number of seconds" in err


@pytest.mark.usefixtures("clean_environment")
def test_serve_exit_codes_for_a_busy_port_and_another_origin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The port stays busy throughout, so no run here can start serving (and never return).
    with socket.create_server(("127.0.0.1", 0)) as busy:
        serve = ["serve", "--data-dir", str(tmp_path), "--port", str(busy.getsockname()[1])]
        # The data dir is prepared before binding: the keys exist though the port is busy.
        status, _, err = run(capsys, *serve)
        assert status == 3
        assert f"cannot listen on 127.0.0.1:{busy.getsockname()[1]}" in err
        assert (tmp_path / "log.vkey").read_text().startswith("localhost/meterlog+")
        status, _, err = run(capsys, *serve, "--origin", "b.example/x")
        assert status == 2
        assert "holds a key named 'localhost/meterlog', but the origin wants 'b.example/x'" in err


# -- receipt make, without a log --------------------------------------------------------------


@pytest.fixture(scope="module")
def edge_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh edge key for ``edge-cli-1``, as keygen writes it: (signing key, verifier key)."""
    root = tmp_path_factory.mktemp("edge")
    key, vkey = root / "edge.key", root / "edge.vkey"
    assert main(["keygen", "--name", "edge-cli-1", "--out", str(key), "--vkey-out", str(vkey)]) == 0
    return key, vkey


def make_args(key: Path, *extra: str) -> list[str]:
    return [
        "receipt", "make", "--key-file", str(key), "--edge", "edge-cli-1",
        "--creator", "acct:alice", "--consumer", "acme-ai", *extra,
    ]  # fmt: skip


def test_receipt_make_prints_signed_canonical_receipts(
    edge_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, vkey = edge_files
    content = "sha256:" + "ab" * 32
    before_ms = time.time_ns() // 1_000_000
    status, out, err = run(
        capsys, *make_args(key, "--content-id", content, "--job-id", "job-7", "--bytes", "42")
    )
    assert status == 0
    assert "signed 1 receipt(s) as edge-cli-1" in err
    (line,) = out.splitlines()
    receipt = decode_entry(line.encode())  # strict: canonical, signed, every field known
    assert isinstance(receipt, Receipt)
    verify_receipt(receipt, parse_vkey(vkey.read_text().strip()))
    assert receipt.logged_at_ms is None
    assert (receipt.content_id, receipt.job_id, receipt.bytes_sent) == (content, "job-7", 42)
    assert receipt.manifest == "sha256:" + hashlib.sha256(content.encode()).hexdigest()
    assert (receipt.token_id, receipt.scope, receipt.cache) == ("cli", "inference", "miss")
    assert before_ms <= receipt.served_at_ms <= time.time_ns() // 1_000_000


def test_receipt_make_count_gives_fresh_ids(
    edge_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, *make_args(edge_files[0], "--count", "20"))
    assert status == 0
    receipts = [decode_entry(line.encode()) for line in out.splitlines()]
    assert len(receipts) == 20
    assert all(isinstance(r, Receipt) for r in receipts)
    assert len({r.request_id for r in receipts if isinstance(r, Receipt)}) == 20
    assert len({r.content_id for r in receipts if isinstance(r, Receipt)}) == 20


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--content-id", "md5:00"], "--content-id: 'md5:00' does not match"),
        (["--manifest", "sha256:XY"], "--manifest:"),
        (["--count", "2", "--request-id", "r1"], "--request-id names one receipt"),
        (["--count", "0"], "--count 0: must be at least 1"),
        (["--request-id", "has space"], "--request-id:"),
    ],
)
def test_receipt_make_usage_errors(
    extra: list[str],
    message: str,
    edge_files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(capsys, *make_args(edge_files[0], *extra))
    assert (status, out) == (2, "")
    assert message in err


@pytest.mark.parametrize(
    ("request_id", "name"),
    [
        ("req-1", "req-1.tlog-proof"),
        ("0b1a.x_y-z", "0b1a.x_y-z.tlog-proof"),
        ("../etc/passwd", "sha256-" + hashlib.sha256(b"edge-1\n../etc/passwd").hexdigest()),
        ("a/b", "sha256-" + hashlib.sha256(b"edge-1\na/b").hexdigest()),
        (".hidden", "sha256-" + hashlib.sha256(b"edge-1\n.hidden").hexdigest()),
        ("x" * 129, "sha256-" + hashlib.sha256(b"edge-1\n" + b"x" * 129).hexdigest()),
    ],
)
def test_proof_file_names_stay_inside_the_out_dir(request_id: str, name: str) -> None:
    assert proof_file_name("edge-1", request_id) == name.removesuffix(".tlog-proof") + ".tlog-proof"


def test_receipt_make_refuses_a_key_of_another_edge(
    edge_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = make_args(edge_files[0])
    args[args.index("edge-cli-1")] = "edge-other"
    status, _, err = run(capsys, *args)
    assert status == 2
    assert "--edge edge-other: the key in" in err


def test_submit_to_an_unreachable_log_exits_3(
    edge_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, *make_args(edge_files[0]))
    receipts = tmp_path / "r.jsonl"
    receipts.write_text(out)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    status, _, err = run(
        capsys, "receipt", "submit", "--log", f"http://127.0.0.1:{port}", str(receipts),
        "--out", str(tmp_path / "out"), "--key", str(edge_files[1]),
    )  # fmt: skip
    assert status == 3
    assert "the log is unavailable" in err
    assert "1 not answered" in err


# -- against the real server ----------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    url: str
    data_dir: Path
    log_path: Path

    @property
    def log_vkey(self) -> Path:
        return self.data_dir / "log.vkey"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "operator.token"


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"meterlog serve exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            health = httpx.get(f"{url}/healthz", timeout=1.0)
            if health.status_code == 200 and health.json()["ok"]:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"meterlog serve was not healthy in {START_TIMEOUT_S} s:\n{log_path.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    data_dir, log_path = root / "data", root / "serve.log"
    port = free_port()
    argv = [
        str(METERLOG), "serve", "--data-dir", str(data_dir), "--port", str(port),
        "--pool-interval", "0.05",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLOG_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, process, log_path)
        yield Server(url, data_dir, log_path)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def registered(server: Server, edge_files: tuple[Path, Path]) -> tuple[Path, Path]:
    """``edge-cli-1`` registered in the log with ``edge register``."""
    key, vkey = edge_files
    status = main(
        [
            "edge", "register", "--log", server.url, "--token-file", str(server.token_file),
            "--edge", "edge-cli-1", "--key-file", str(key),
        ]
    )  # fmt: skip
    assert status == 0
    return key, vkey


def submit_args(server: Server, receipts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "receipt", "submit", "--log", server.url, str(receipts), "--out", str(out),
        "--key", str(server.log_vkey), *extra,
    ]  # fmt: skip


def test_serve_announces_origin_key_token_and_url(server: Server) -> None:
    text = server.log_path.read_text()
    assert f"meterlog: serving the log localhost/meterlog at {server.url}" in text
    assert server.log_vkey.read_text().strip() in text
    assert str(server.token_file) in text
    assert f"portal:         {server.url}/portal/" in text
    assert httpx.get(f"{server.url}/portal/", timeout=10).status_code == 200


def test_register_make_submit_verify_and_resubmit(
    server: Server,
    registered: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, vkey = registered
    status, out, _ = run(capsys, *make_args(key, "--count", "5"))
    assert status == 0
    receipts = tmp_path / "receipts.jsonl"
    receipts.write_text(out)
    proofs = tmp_path / "proofs"

    status, out, err = run(capsys, *submit_args(server, receipts, proofs, "--json"))
    assert status == 0, err
    assert "5 receipt(s): 5 logged; 5 bundle(s) verified" in err
    first = json_lines(out)
    assert [r["status"] for r in first] == ["logged"] * 5
    files = sorted(proofs.glob("*.tlog-proof"))
    assert len(files) == 5

    verify = subprocess.run(
        [
            str(METERLOG), "verify", "bundle", "--key", str(server.log_vkey),
            "--edge-key", str(vkey), *map(str, files),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.count("receipt signature: signed by edge-cli-1") == 5

    status, out, err = run(capsys, *submit_args(server, receipts, proofs, "--json"))
    assert status == 0, err
    again = json_lines(out)
    assert [r["status"] for r in again] == ["duplicate"] * 5
    assert [(r["request_id"], r["index"]) for r in again] == [
        (r["request_id"], r["index"]) for r in first
    ]


def test_a_receipt_of_an_unregistered_key_is_rejected(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "stranger.key"
    assert run(capsys, "keygen", "--name", "edge-cli-1", "--out", str(key))[0] == 0
    _, out, _ = run(capsys, *make_args(key))
    receipts = tmp_path / "stranger.jsonl"
    receipts.write_text(out)
    status, _, err = run(capsys, *submit_args(server, receipts, tmp_path / "proofs"))
    assert status == 1
    assert "rejected" in err
    assert "receipt.key_id: no edge key edge-cli-1+" in err
    assert list((tmp_path / "proofs").iterdir()) == []


def test_posting_a_made_receipt_directly(
    server: Server, registered: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``curl --data-binary @receipt.jsonl -H 'Content-Type: application/jsonl'``."""
    _, line, _ = run(capsys, *make_args(registered[0]))
    response = httpx.post(
        f"{server.url}/v1/receipts",
        content=line.encode(),
        headers={"Content-Type": "application/jsonl"},
        timeout=10.0,
    )
    assert response.status_code == 200
    (result,) = response.json()["results"]
    assert result["status"] == "logged"
    assert isinstance(result["index"], int)
    log_key = parse_vkey(server.log_vkey.read_text().strip())
    verified = verify_bundle(parse_bundle(result["bundle"].encode()), [log_key])
    assert verified.index == result["index"]
    logged = decode_entry(verified.entry)
    submitted = decode_entry(line.strip().encode())
    assert isinstance(logged, Receipt)
    assert logged.logged_at_ms is not None
    assert logged.signed_fields() == submitted.signed_fields()


def test_submit_keeps_no_bundle_it_cannot_verify(
    server: Server,
    registered: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, *make_args(registered[0]))
    receipts = tmp_path / "r.jsonl"
    receipts.write_text(out)
    wrong_key = submit_args(server, receipts, tmp_path / "proofs")
    wrong_key[wrong_key.index("--key") + 1] = str(registered[1])  # the edge's, not the log's
    status, _, err = run(capsys, *wrong_key)
    assert status == 1
    assert "FAILED" in err
    assert "bundle does not verify" in err
    assert list((tmp_path / "proofs").iterdir()) == []


def test_submit_refuses_a_valid_bundle_for_another_receipt(
    server: Server,
    registered: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A log that answers with a genuine bundle, but of a different receipt, is caught."""
    _, out, _ = run(capsys, *make_args(registered[0], "--count", "2"))
    receipts = tmp_path / "r.jsonl"
    receipts.write_text(out)
    real_post = cli.receipt.post

    def swapping_post(url: str, content: bytes, content_type: str, **kw: object) -> httpx.Response:
        response = real_post(url, content, content_type, **kw)  # type: ignore[arg-type]
        body: Mapping[str, list[dict[str, object]]] = response.json()
        first, second = body["results"]
        # Receipt 2's genuine bundle and index, as the answer for receipt 1.
        swapped = {
            "results": [{**first, "bundle": second["bundle"], "index": second["index"]}, second]
        }
        return httpx.Response(200, json=swapped, request=response.request)

    monkeypatch.setattr(cli.receipt, "post", swapping_post)
    status, _, err = run(capsys, *submit_args(server, receipts, tmp_path / "proofs"))
    assert status == 1
    assert "line 1" in err
    assert "the bundle's entry is not the receipt that was submitted" in err
    assert len(list((tmp_path / "proofs").iterdir())) == 1


def test_edge_commands_need_the_operator_token(
    server: Server,
    edge_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = tmp_path / "token"
    token.write_text("not-the-operator-token\n")
    status, _, err = run(
        capsys, "edge", "register", "--log", server.url, "--token-file", str(token),
        "--edge", "edge-cli-1", "--key", str(edge_files[1]),
    )  # fmt: skip
    assert status == 1
    assert "HTTP 401" in err


def test_edge_revoke_ends_a_keys_window(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, vkey = tmp_path / "e.key", tmp_path / "e.vkey"
    keygen = ["keygen", "--name", "edge-cli-2", "--out", str(key), "--vkey-out", str(vkey)]
    assert run(capsys, *keygen)[0] == 0
    common = ["--log", server.url, "--token-file", str(server.token_file), "--edge", "edge-cli-2"]
    status, out, err = run(capsys, "edge", "register", *common, "--key-file", str(key), "--json")
    assert status == 0, err
    assert json.loads(out)["status"] == "logged"
    revoke_at = time.time_ns() // 1_000_000 + 1
    status, _, err = run(
        capsys, "edge", "revoke", *common, "--key", str(vkey), "--valid-until-ms", str(revoke_at)
    )
    assert status == 0, err
    assert f"until {revoke_at} ms" in err
    lines = []
    for served_at_ms in (revoke_at - 1, revoke_at):
        args = make_args(key, "--served-at-ms", str(served_at_ms))
        args[args.index("edge-cli-1")] = "edge-cli-2"
        lines.append(run(capsys, *args)[1])
    receipts = tmp_path / "r.jsonl"
    receipts.write_text("".join(lines))
    status, out, err = run(capsys, *submit_args(server, receipts, tmp_path / "p", "--json"))
    assert status == 1
    assert [r["status"] for r in json_lines(out)] == ["logged", "rejected"]
    assert "revoked or expired" in err
