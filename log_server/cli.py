"""``meterlog serve``: run the log over HTTP with uvicorn.

Owns the server's command-line surface: mapping flags, ``METERLOG_*`` environment variables
and an optional TOML file onto :class:`~log_server.config.Config` (flags > environment > TOML
> defaults), binding the listening socket, and announcing the log once it is serving.

Imports log_server.config and tlog at import time; Starlette, uvicorn and peewee only when the
server starts, so ``meterlog verify`` still runs on the verifier's install (pynacl, httpx).
It must not import verifier or cli (import-linter), so it raises its own :class:`ConfigError`
and keeps its own copy of the exit codes it uses; they are verifier.cli's numbers, and
tests/log_server/test_commands.py checks that they agree.

Exit codes of ``meterlog serve``:

====  =====================================================================
0     stopped cleanly (Ctrl-C)
2     usage or configuration error (unknown or invalid value, a data dir whose
      keys belong to another origin, an unreadable token file)
3     the log could not start: the address cannot be bound, or the app failed
      to start (e.g. the database is unreachable; uvicorn logs why)
====  =====================================================================

SIGTERM also stops the server gracefully (the pool is sealed first); uvicorn then lets the
signal end the process, as the default action would.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import socket
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anchor.record import parse_address
from anchor.secret import AnchorKey, AnchorKeyError
from log_server.config import Config, DataDir, read_billing_keys
from log_server.sockets import listen
from tlog.errors import MalformedError
from tlog.note import ALG_ED25519, Verifier
from tlog.policy import parse_policy

__all__ = [
    "ENV_PREFIX",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "OPTIONS",
    "ConfigError",
    "Option",
    "Settings",
    "add_serve_command",
    "check_anchoring",
    "resolve_settings",
    "serve",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

ENV_PREFIX = "METERLOG_"
ANCHOR_KEY_ENV = ENV_PREFIX + "ANCHOR_KEY"
"""The anchoring key itself (hex), as an alternative to --anchor-key-file; no flag sets it."""
DEFAULT_DATA_DIR = "./meterlog-data"
MIN_TOKEN_LENGTH = 16


class ConfigError(ValueError):
    """A setting that is unknown or invalid; the message names where it came from."""


# -- the options ----------------------------------------------------------------------------


def _text(value: str) -> str:
    if not value or value != value.strip():
        raise ValueError("empty, or has leading or trailing whitespace")
    return value


def _path(value: str) -> Path:
    return Path(_text(value))


def _port(value: str) -> int:
    if not value.isdigit() or str(int(value)) != value:
        raise ValueError("not a decimal port number")
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError("not in 0..65535 (0 picks a free port)")
    return port


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a positive number of seconds")
    return seconds


def _origin(value: str) -> str:
    # The origin names the log key and, with "/operator", the operator key: both must be
    # valid note key names (no '+', no whitespace, at most 255 bytes).
    for name in (value, f"{value}/operator"):
        try:
            Verifier(name, ALG_ED25519, bytes(32))
        except MalformedError as exc:
            raise ValueError(f"not usable as a key name: {exc.reason}") from exc
    return value


def _count(value: str) -> int:
    if not value.isdigit() or str(int(value)) != value:
        raise ValueError("not a whole number (0 or more)")
    if int(value) > 64:
        raise ValueError("more than 64")
    return int(value)


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise ValueError("not a number per second") from None
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError("must be a positive number per second")
    return rate


def _burst(value: str) -> int:
    if not value.isdigit() or str(int(value)) != value or int(value) == 0:
        raise ValueError("not a whole number from 1")
    return int(value)


def _rpc(value: str) -> str:
    if value == "eth-tester":
        return value
    if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
        raise ValueError("neither an http(s):// JSON-RPC URL nor eth-tester")
    return value


def _chain_id(value: str) -> int:
    if not value.isdigit() or str(int(value)) != value or int(value) == 0:
        raise ValueError("not a positive decimal chain ID")
    return int(value)


def _address(value: str) -> str:
    try:
        return parse_address(value)
    except MalformedError:
        raise ValueError("not an Ethereum address (0x and 40 hex digits)") from None


def _confirmations(value: str) -> int:
    if not value.isdigit() or str(int(value)) != value or not 1 <= int(value) <= 1000:
        raise ValueError("not a whole number in 1..1000")
    return int(value)


def _gwei(value: str) -> int:
    if not value.isdigit() or str(int(value)) != value or not 1 <= int(value) <= 10**6:
        raise ValueError("not a whole number of gwei in 1..1000000")
    return int(value)


def _db(value: str) -> str:
    if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ValueError("neither sqlite:///PATH nor postgresql://...")
    return value


def _witness_policy(value: str) -> Path:
    path = _path(value)
    try:
        policy = parse_policy(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read it: {exc}") from exc
    except MalformedError as exc:
        raise ValueError(f"not a policy file: {exc}") from exc
    if any(w.url is None for w in policy.witnesses):
        raise ValueError("every witness line needs the witness's URL")
    return path


def _billing_keys(value: str) -> Path:
    path = _path(value)
    try:
        read_billing_keys(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read it: {exc}") from exc
    except MalformedError as exc:
        raise ValueError(f"not a file of Ed25519 verifier keys: {exc}") from exc
    return path


def _directory(value: str) -> Path:
    path = _path(value)
    if not path.is_dir():
        raise ValueError("not a directory")
    return path


@dataclass(frozen=True, slots=True)
class Option:
    """One ``serve`` setting: flag ``--<name with dashes>``, variable ``METERLOG_<NAME>``,
    TOML key ``<name>``. ``parse`` turns the text of a flag or variable (or the TOML value,
    written as text) into the value, raising ValueError; ``toml_types`` are the TOML types
    it accepts (none: not settable from the file)."""

    name: str
    metavar: str
    help: str
    parse: Callable[[str], object]
    toml_types: tuple[type, ...]
    default: str | None = None
    """The default's text, parsed like a flag's; None: not set."""
    field: str | None = None
    """The :class:`Config` field it sets, if it sets one directly."""
    default_help: str | None = None
    """What the help says the default is, when that is not ``default``."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("config", "FILE.toml", "a TOML file of these settings (keys as below, with _)",
           _path, ()),
    Option("data_dir", "DIR", "where the log keeps its keys, token and SQLite database",
           _path, (str,), DEFAULT_DATA_DIR, "data_dir"),
    Option("host", "HOST", "the address to listen on",
           _text, (str,), "127.0.0.1", "host"),
    Option("port", "PORT", "the TCP port to listen on (0: any free port)",
           _port, (int,), "8080", "port"),
    Option("origin", "ORIGIN", "the log's name: its checkpoints' first line and its key name",
           _origin, (str,), "localhost/meterlog", "origin"),
    Option("db", "URL", "the database: sqlite:///PATH or postgresql://...",
           _db, (str,), None, "db", "SQLite in DIR/log.db"),
    Option("pool_interval", "S", "seconds between seals of the pending pool",
           _seconds, (int, float), "0.5", "pool_interval_s"),
    Option("checkpoint_interval", "S", "seconds between re-signed checkpoints when idle",
           _seconds, (int, float), "10", "checkpoint_interval_s"),
    Option("verify_processes", "N", "worker processes that check receipt signatures "
           "(0: in the server's own process)", _count, (int,), "1", "verify_processes"),
    Option("operator_token_file", "FILE", "a file holding the operator's bearer token for "
           "/v1/admin", _path, (str,), None, None, "DIR/operator.token, made on first start"),
    Option("witness_policy", "FILE", "witnesses to submit each checkpoint to, and the quorum "
           "GET /checkpoint waits for (C2SP tlog-policy style: witness NAME VKEY URL, quorum)",
           _witness_policy, (str,), None, "witness_policy", "none"),
    Option("billing_keys", "FILE", "the billing keys whose statements the log accepts: "
           "a file of verifier keys, one per line", _billing_keys, (str,), None,
           "billing_keys", "none: no statements"),
    Option("statements", "DIR", "billing runs' output directory (or a parent of several): "
           "the log serves the statement documents in it whose digest it has logged",
           _directory, (str,), None, "statements_dir", "none: no documents"),
    Option("receipt_rate", "N", "receipts per second one edge may have logged (POST "
           "/v1/receipts; over it: 429)", _rate, (int, float), "50000", "receipt_rate"),
    Option("receipt_burst", "N", "receipts one edge may have logged at once",
           _burst, (int,), "100000", "receipt_burst"),
    Option("creator_rate", "N", "manifests and disputes per second one creator may have "
           "logged (POST /v1/manifests, /v1/disputes; over it: 429)", _rate, (int, float),
           "10", "creator_rate"),
    Option("creator_burst", "N", "manifests and disputes one creator may have logged at once",
           _burst, (int,), "100", "creator_burst"),
    Option("statement_rate", "N", "statements per second one billing key may have logged "
           "(POST /v1/statements; over it: 429)", _rate, (int, float), "100",
           "statement_rate"),
    Option("statement_burst", "N", "statements one billing key may have logged at once (a "
           "run logs one per creator)", _burst, (int,), "100000", "statement_burst"),
    Option("witness_interval", "S", "seconds between rounds of witness submissions",
           _seconds, (int, float), "1", "witness_interval_s"),
    Option("anchor_rpc", "URL", "anchor checkpoints on this chain: an http(s) JSON-RPC URL, "
           "or eth-tester (an in-process demo chain)", _rpc, (str,), None, "anchor_rpc",
           "no anchoring"),
    Option("anchor_chain_id", "ID", "the chain ID the anchoring node must report (required "
           "with a URL; the log refuses to start on another chain)", _chain_id, (int,), None,
           "anchor_chain_id"),
    Option("anchor_contract", "ADDR", "the anchor contract's address (meterlog anchor "
           "deploy); required with a URL", _address, (str,), None, "anchor_contract",
           "deployed at start on eth-tester"),
    Option("anchor_key_file", "FILE", "a file (mode 0600) holding the private key that signs "
           f"anchors; or put the key in {ANCHOR_KEY_ENV}", _path, (str,), None),
    Option("anchor_interval", "S", "seconds between anchors (one is sent only if the tree "
           "grew)", _seconds, (int, float), "3600", "anchor_interval_s"),
    Option("anchor_confirmations", "N", "blocks that must hold an anchor before it is final",
           _confirmations, (int,), "12", "anchor_confirmations"),
    Option("anchor_poll_interval", "S", "seconds between checks of the anchor in flight",
           _seconds, (int, float), "15", "anchor_poll_interval_s"),
    Option("anchor_replace_after", "S", "seconds an anchor may wait unmined before it is "
           "re-sent with higher fees", _seconds, (int, float), "180", "anchor_replace_after_s"),
    Option("anchor_max_fee_gwei", "GWEI", "the most an anchor may pay per unit of gas",
           _gwei, (int,), "500", "anchor_max_fee_gwei"),
)  # fmt: skip
_BY_NAME = {option.name: option for option in OPTIONS}


# -- resolving them -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``serve`` runs with: the app's config, and where the operator token lives."""

    config: Config
    operator_token_file: Path


def _parse(option: Option, text: str, where: str) -> object:
    """``where`` names the source for the message: ``--port 80``, ``METERLOG_PORT=80``..."""
    try:
        return option.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _load_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{source}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    known = [o.name for o in OPTIONS if o.toml_types]
    for key in table:
        if key not in known:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(known)})")
    return table


def _from_toml(option: Option, value: object, path: Path) -> object:
    where = f"{path}: {option.name} = {value!r}"
    if isinstance(value, bool) or not isinstance(value, option.toml_types):
        kinds = " or ".join("string" if t is str else t.__name__ for t in option.toml_types)
        raise ConfigError(f"{where}: not a TOML {kinds}")
    return _parse(option, str(value), where)


def resolve_settings(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> Settings:
    """The settings from ``flags`` (option name -> the flag's text, or None when not given),
    then ``environ`` (``METERLOG_<NAME>``; an empty variable counts as unset), then the TOML
    file named by ``config``, then the defaults. Reads the TOML and token files; raises
    ConfigError naming the flag, variable or file that is wrong."""
    unknown = sorted(set(flags) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")

    def given(option: Option) -> tuple[str, str] | None:
        text = flags.get(option.name)
        if text is not None:
            return text, f"{option.flag} {text}"
        text = environ.get(option.env)
        if text:
            return text, f"{option.env}={text}"
        return None

    table: dict[str, Any] = {}
    toml_path: Path | None = None
    config_given = given(_BY_NAME["config"])
    if config_given is not None:
        text, where = config_given
        _parse(_BY_NAME["config"], text, where)
        toml_path = Path(text)
        table = _load_toml(toml_path, where)

    values: dict[str, object] = {}
    for option in OPTIONS[1:]:
        found = given(option)
        if found is not None:
            values[option.name] = _parse(option, *found)
        elif toml_path is not None and option.name in table:
            values[option.name] = _from_toml(option, table[option.name], toml_path)
        elif option.default is not None:
            values[option.name] = option.parse(option.default)
        else:
            values[option.name] = None

    token_file = values["operator_token_file"]
    token = _read_token(token_file) if isinstance(token_file, Path) else None
    anchor_key = _anchor_key(values["anchor_key_file"], environ.get(ANCHOR_KEY_ENV))
    fields = {o.field: values[o.name] for o in OPTIONS if o.field is not None}
    config = Config(operator_token=token, anchor_key=anchor_key, **fields)  # type: ignore[arg-type]
    if not isinstance(token_file, Path):
        token_file = config.data_dir / "operator.token"
    return Settings(config, token_file)


def _anchor_key(path: object, env_value: str | None) -> AnchorKey | None:
    """The anchoring key, from --anchor-key-file or the environment; never both. Errors
    name the file or the variable, never the key."""
    if isinstance(path, Path) and env_value:
        raise ConfigError(
            f"the anchoring key is given twice: --anchor-key-file and {ANCHOR_KEY_ENV}"
        )
    try:
        if isinstance(path, Path):
            return AnchorKey.from_file(path)
        if env_value:
            return AnchorKey.from_env(ANCHOR_KEY_ENV, env_value)
    except AnchorKeyError as exc:
        raise ConfigError(str(exc)) from None
    return None


def check_anchoring(config: Config) -> None:
    """The anchoring settings that only make sense together (``serve`` checks them before it
    starts; :func:`resolve_settings` checks each setting alone). Raises ConfigError."""
    rpc = config.anchor_rpc
    if rpc is None:
        given = [
            name
            for name, value in (
                ("--anchor-chain-id", config.anchor_chain_id),
                ("--anchor-contract", config.anchor_contract),
                ("the anchoring key", config.anchor_key),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(f"{given[0]} is set, but --anchor-rpc is not")
        return
    if rpc == "eth-tester":
        if config.anchor_contract is not None:
            raise ConfigError("--anchor-contract: the eth-tester chain deploys its own contract")
        return
    for name, value in (
        ("--anchor-chain-id", config.anchor_chain_id),
        ("--anchor-contract", config.anchor_contract),
        (f"--anchor-key-file (or {ANCHOR_KEY_ENV})", config.anchor_key),
    ):
        if value is None:
            raise ConfigError(f"{name} is required with --anchor-rpc {_display_rpc(rpc)}")


def _display_rpc(rpc: str) -> str:
    """An RPC URL as messages show it: without its path, which often holds an API key."""
    if rpc == "eth-tester":
        return "the in-process eth-tester chain"
    scheme, _, rest = rpc.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].rpartition('@')[2]}"


def _read_token(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(f"operator token file {path}: {reason or exc}") from exc
    token = lines[0].strip() if len(lines) == 1 else ""
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(
            f"operator token file {path}: must hold one line, a token of at least "
            f"{MIN_TOKEN_LENGTH} characters without spaces"
        )
    return token


# -- serving --------------------------------------------------------------------------------


class _StartError(Exception):
    """The log could not start (exit 3)."""


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket (:func:`log_server.sockets.listen`), or why the log cannot start."""
    try:
        return listen(host, port)
    except OSError as exc:
        raise _StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _announce(settings: Settings, port: int) -> None:
    config = settings.config
    vkey_path = config.data_dir / "log.vkey"
    vkey = vkey_path.read_text(encoding="utf-8").strip()
    lines = [
        f"meterlog: serving the log {config.origin} at {_url(config.host, port)}",
        f"  log key:        {vkey}",
        f"                  (in {vkey_path}; verifiers need it)",
        f"  operator token: {settings.operator_token_file}",
        f"  data dir:       {config.data_dir}",
        f"  portal:         {_url(config.host, port)}/portal/ (in a browser)",
    ]
    if config.billing_keys is not None:
        count = len(read_billing_keys(config.billing_keys))
        lines.append(
            f"  billing keys:   {count} in {config.billing_keys} (statements they sign are "
            "accepted)"
        )
    if config.statements_dir is not None:
        lines.append(f"  statements:     documents served from {config.statements_dir}")
    if config.anchor_rpc is not None:
        lines.append(
            f"  anchoring:      on {_display_rpc(config.anchor_rpc)} every "
            f"{config.anchor_interval_s:g} s, final after {config.anchor_confirmations} "
            "block(s); see /v1/anchors"
        )
    lines.append("  stop with Ctrl-C")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _check_chain(config: Config) -> None:
    """Refuse to start on another chain than --anchor-chain-id, or without the contract;
    an unreachable node only warns (the anchoring job keeps trying)."""
    from log_server.anchoring import AnchoringRefusedError, preflight  # noqa: PLC0415

    try:
        warning = preflight(config)
    except AnchoringRefusedError as exc:
        raise ConfigError(f"anchoring: {exc}") from None
    if warning is not None:
        print(f"meterlog serve: {warning}", file=sys.stderr, flush=True)


def serve(settings: Settings) -> int:
    """Prepare the data dir, bind, run uvicorn until stopped; the exit code."""
    config = settings.config
    try:
        DataDir.prepare(config)
    except (OSError, ValueError) as exc:  # MalformedError is a ValueError
        raise ConfigError(f"data dir {config.data_dir}: {exc}") from exc
    if config.anchor_rpc is not None:
        _check_chain(config)
    sock = _listen(config.host, config.port)
    port: int = sock.getsockname()[1]
    # A seal that outlasts pool_interval_s makes APScheduler skip the next one, by design
    # (the pool seals everything waiting anyway); without this it warns about every skip.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)

    import uvicorn  # noqa: PLC0415 -- the server's dependencies load only to serve

    from log_server.app import create_app  # noqa: PLC0415

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                _announce(settings, port)

    server = Server(
        uvicorn.Config(
            app=create_app(config), host=config.host, port=port, lifespan="on",
            log_level="warning",
        )
    )  # fmt: skip
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except SystemExit as exc:  # uvicorn exits 3 when the app's lifespan fails to start
        raise _StartError("the log failed to start (uvicorn said why, above)") from exc
    except KeyboardInterrupt:
        pass  # uvicorn shut down gracefully, then re-raised the Ctrl-C it had caught
    finally:
        sock.close()
    print("meterlog: the log has stopped", file=sys.stderr)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    flags = {option.name: getattr(args, option.name) for option in OPTIONS}
    try:
        settings = resolve_settings(flags, os.environ)
        check_anchoring(settings.config)
        return serve(settings)
    except ConfigError as exc:
        print(f"meterlog serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _StartError as exc:
        print(f"meterlog serve: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def add_serve_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``meterlog serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the log server (HTTP API, sequencer, checkpoints)",
        description="Run the log: accept signed receipts, sequence them every --pool-interval, "
        "sign checkpoints, serve proofs and tiles. On first start it creates the log key, the "
        "operator key and the operator token in --data-dir (mode 0600). Every option may "
        f"also come from an environment variable ({ENV_PREFIX}<NAME>) or from the --config "
        "TOML file (key <name> with underscores); flags win over the environment, which wins "
        "over the file, which wins over the defaults. Relative paths are relative to the "
        "current directory.",
        epilog="exit codes: 0 stopped cleanly, 2 usage or configuration error, "
        "3 the log could not start (address in use, database unreachable)",
    )
    for option in OPTIONS:
        default = option.default_help or option.default
        default = "" if default is None else f"; default: {default}"
        parser.add_argument(
            option.flag,
            dest=option.name,
            metavar=option.metavar,
            help=f"{option.help} (env {option.env}{default})",
        )
    parser.set_defaults(func=_run)
