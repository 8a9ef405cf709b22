"""Receipts built and signed at the edge, with the edge's Ed25519 key.

Owns turning one delivery into a signed ``receipt`` entry (tlog's format: this module only
fills it in; time is a parameter) and loading the edge's key file, as ``meterlog keygen``
writes it. Imports tlog only; must not import verifier, log_server, anchor, billing or cli.

>>> signer = EdgeSigner(SigningKey("edge-fra1", bytes(32)))
>>> signed = signer.sign(Delivery(
...     request_id="r-1", consumer_id="acme-ai", token_id="tok-1", job_id="job-42",
...     scope="training", content_id="sha256:" + "ab" * 32, creator_id="acct:alice",
...     manifest="sha256:" + "cd" * 32, bytes_sent=10240, cache="miss"), served_at_ms=1000)
>>> signed.receipt.edge, signed.receipt.key_id, len(signed.receipt.signature)
('edge-fra1', '9fb73b49', 64)
>>> signed.entry.startswith(b'{"bytes_sent":10240,"cache":"miss",')
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlog.entry import Receipt, encode_entry, sign_receipt
from tlog.errors import MalformedError
from tlog.note import SigningKey, parse_skey

__all__ = ["Delivery", "EdgeKeyError", "EdgeSigner", "SignedReceipt", "load_edge_key"]


class EdgeKeyError(Exception):
    """The edge's key file cannot be used (unreadable, not a signer key, wrong name)."""


def load_edge_key(path: Path, edge: str | None = None) -> SigningKey:
    """The signing key in ``path`` (``meterlog keygen --out``); its name is the edge id, and
    must be ``edge`` when that is given."""
    try:
        key = parse_skey(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise EdgeKeyError(f"{path}: {exc.strerror or exc}") from exc
    except (MalformedError, UnicodeDecodeError) as exc:
        raise EdgeKeyError(f"{path}: not a signer key: {exc}") from exc
    if edge is not None and key.name != edge:
        raise EdgeKeyError(f"{path}: the key is named {key.name!r}, not the edge {edge!r}")
    return key


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery, as the edge saw it: everything in a receipt but the edge, its key and
    the time. Values are checked when the receipt is built (tlog.entry.Receipt)."""

    request_id: str
    consumer_id: str
    token_id: str
    scope: str
    content_id: str
    creator_id: str
    manifest: str
    bytes_sent: int
    cache: str
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    """A signed receipt and its entry bytes: exactly what is spooled and submitted."""

    receipt: Receipt
    entry: bytes

    @property
    def edge(self) -> str:
        return self.receipt.edge

    @property
    def request_id(self) -> str:
        return self.receipt.request_id


class EdgeSigner:
    """Signs receipts as one edge: the key's name is the edge id."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    @property
    def edge(self) -> str:
        return self.key.name

    def sign(self, delivery: Delivery, *, served_at_ms: int) -> SignedReceipt:
        """The delivery's receipt, signed; MalformedError (naming the field) if a value is
        not valid in a receipt."""
        receipt = Receipt(
            request_id=delivery.request_id,
            edge=self.edge,
            consumer_id=delivery.consumer_id,
            token_id=delivery.token_id,
            job_id=delivery.job_id,
            scope=delivery.scope,
            content_id=delivery.content_id,
            creator_id=delivery.creator_id,
            manifest=delivery.manifest,
            bytes_sent=delivery.bytes_sent,
            cache=delivery.cache,
            served_at_ms=served_at_ms,
        )
        signed = sign_receipt(receipt, self.key)
        return SignedReceipt(signed, encode_entry(signed))
