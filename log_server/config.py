"""The log server's configuration: one frozen dataclass, and the files it keeps in its data dir.

Owns defaults, limits, and first-start set-up of the data directory (log key, operator key,
operator token, all mode 0600). Flags, environment variables and the TOML file are mapped
onto :class:`Config` by ``log_server.cli``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from anchor.secret import AnchorKey
from tlog.errors import MalformedError
from tlog.note import ALG_ED25519, SigningKey, format_skey, format_vkey, parse_skey, parse_vkey

__all__ = ["Config", "DataDir", "read_billing_keys"]


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``create_app`` needs. Times are in seconds or milliseconds, as named."""

    data_dir: Path
    origin: str = "localhost/meterlog"
    db: str | None = None
    """``sqlite:///PATH`` or ``postgresql://...``; default: SQLite in the data dir."""
    host: str = "127.0.0.1"
    port: int = 8080
    operator_token: str | None = None
    pool_interval_s: float = 0.5
    pool_max_entries: int = 4096
    max_pending: int = 65536
    checkpoint_interval_s: float = 10.0
    max_batch_receipts: int = 1024
    max_body_bytes: int = 8 << 20
    max_future_skew_ms: int = 5 * 60_000
    max_age_ms: int = 30 * 24 * 3_600_000
    page_limit: int = 1000
    receipt_rate: float = 50_000.0
    """Receipts per second one edge may have logged (log_server.budgets), and ..."""
    receipt_burst: int = 100_000
    """... how many it may have logged at once."""
    creator_rate: float = 10.0
    """Manifests and disputes per second one creator may have logged, and ..."""
    creator_burst: int = 100
    """... how many at once."""
    statement_rate: float = 100.0
    """Statements per second one billing key may have logged, and ..."""
    statement_burst: int = 100_000
    """... how many at once (a run logs one statement per creator)."""
    verify_processes: int = 1
    """Worker processes that check receipt signatures; 0: the server's own work thread."""
    witness_policy: Path | None = None
    """A C2SP tlog-policy style file of the witnesses to submit checkpoints to (``witness``
    lines with URLs) and the ``quorum`` a checkpoint needs before GET /checkpoint serves it."""
    billing_keys: Path | None = None
    """A file of verifier keys, one per line: the billing keys whose ``statement`` entries
    the log accepts; None: it accepts none."""
    statements_dir: Path | None = None
    """Where billing runs write their statement documents (``statement-*.json``, searched
    recursively): the log serves those whose digest it has logged; None: it serves none."""
    witness_interval_s: float = 1.0
    witness_timeout_s: float = 10.0
    anchor_rpc: str | None = None
    """The chain to anchor checkpoints on: an http(s) JSON-RPC URL, or ``eth-tester`` (an
    in-process chain, for demos); None: no anchoring."""
    anchor_chain_id: int | None = None
    """The chain ID the node must report; required with a URL, refused at start if wrong."""
    anchor_contract: str | None = None
    """The anchor contract's address (lowercase 0x); deployed at start on eth-tester."""
    anchor_key: AnchorKey | None = None
    """The private key that signs anchors (from a file or METERLOG_ANCHOR_KEY)."""
    anchor_interval_s: float = 3600.0
    anchor_confirmations: int = 12
    anchor_poll_interval_s: float = 15.0
    anchor_replace_after_s: float = 180.0
    anchor_max_fee_gwei: int = 500

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.data_dir / 'log.db'}"


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text + "\n")
        out.flush()
        os.fsync(out.fileno())


@dataclass(frozen=True, slots=True)
class DataDir:
    """The data directory's keys and token, created on first start and reused after."""

    log_key: SigningKey
    operator_key: SigningKey
    operator_token: str

    @classmethod
    def prepare(cls, config: Config) -> DataDir:
        root = config.data_dir
        root.mkdir(parents=True, exist_ok=True)
        log_key = _key(root / "log.key", config.origin)
        operator_key = _key(root / "operator.key", f"{config.origin}/operator")
        (root / "log.vkey").write_text(format_vkey(log_key.verifier()) + "\n", encoding="utf-8")
        (root / "operator.vkey").write_text(
            format_vkey(operator_key.verifier()) + "\n", encoding="utf-8"
        )
        token = config.operator_token
        token_path = root / "operator.token"
        if token is None:
            if not token_path.exists():
                _write_secret(token_path, secrets.token_urlsafe(32))
            token = token_path.read_text(encoding="utf-8").strip()
        return cls(log_key, operator_key, token)


def _key(path: Path, name: str) -> SigningKey:
    if not path.exists():
        _write_secret(path, format_skey(SigningKey(name, os.urandom(32))))
    key = parse_skey(path.read_text(encoding="utf-8").strip())
    if key.name != name:
        raise ValueError(f"{path} holds a key named {key.name!r}, but the origin wants {name!r}")
    return key


def read_billing_keys(path: Path) -> frozenset[str]:
    """The billing keys in ``path``: one Ed25519 verifier key per line (blank lines and
    ``#`` comments aside), as canonical key strings. Raises OSError or MalformedError."""
    keys: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        verifier = parse_vkey(text)
        if verifier.alg != ALG_ED25519:
            raise MalformedError(f"line {number}", "not an Ed25519 (type 0x01) key")
        keys.add(format_vkey(verifier))
    if not keys:
        raise MalformedError(str(path), "holds no key")
    return frozenset(keys)
