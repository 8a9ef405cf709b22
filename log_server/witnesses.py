"""The log's witness client: every new checkpoint goes to the configured witnesses.

Owns submitting checkpoints to C2SP tlog-witness endpoints and keeping what they return: a
scheduled job (every ``witness_interval_s``) sends the latest checkpoint, with the
consistency proof from the size each witness last cosigned, to every witness of the
``witness_policy`` file; a 409 (``text/x.tlog.size``) means the witness has another size:
the job retries at once from the size it names; each returned cosignature is checked against
the witness's key and stored (``Storage.put_cosignature``). :meth:`Witnessing.served` is what
GET /checkpoint serves: the latest checkpoint with its cosignatures merged in, or, when the
policy has a ``quorum``, the latest checkpoint whose cosignatures meet it (none yet: None,
and the route answers 503). Formats are tlog's (tlog.witness, tlog.policy); this module
must not import verifier. Imports tlog, httpx and log_server.storage.

A 409 without a size, a 422, or a witness claiming a size larger than the log's tree means
the witness has seen a checkpoint of this log that is not consistent with the one sent: a
fork, or a log that lost data. It is logged at ERROR and counted, never retried blindly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from log_server.storage import CosignatureRecord, Storage, StoredCheckpoint
from tlog.errors import MalformedError, VerificationError
from tlog.note import open_note
from tlog.policy import Policy, PolicyWitness
from tlog.proofs import consistency_proof
from tlog.witness import (
    CONTENT_TYPE_SIZE,
    AddCheckpoint,
    format_add_checkpoint,
    merge_signatures,
    parse_signature_lines,
    parse_size_body,
    signature_key,
)

__all__ = ["Witnessing"]

log = logging.getLogger("meterlog.witnesses")
MAX_RETRIES = 3
"""409 answers followed in one round before giving up until the next."""
_RECENT = 1000


def witness_id(witness: PolicyWitness) -> str:
    return f"{witness.key.name}+{witness.key.key_id:08x}"


@dataclass
class Witnessing:
    """The witnesses of one log, and what each is known to have cosigned."""

    storage: Storage
    policy: Policy
    clock_s: Callable[[], int]
    timeout_s: float = 10.0
    transport: httpx.AsyncBaseTransport | None = None
    """For tests: where requests go instead of the network."""
    known: dict[str, int] = field(default_factory=dict)
    """Per witness: the size it last cosigned, as far as this process knows."""
    submitted: dict[str, bytes] = field(default_factory=dict)
    """Per witness: the last checkpoint note it cosigned (not sent again)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """Counts by outcome (``cosigned``, ``stale``, ``refused``, ``unavailable``...)."""

    def __post_init__(self) -> None:
        self._http = httpx.AsyncClient(
            timeout=self.timeout_s, headers={"User-Agent": "meterlog-log"}, transport=self.transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def submit_latest(self) -> None:
        """One round: the latest checkpoint to every witness that has not cosigned it."""
        latest = await asyncio.to_thread(self.storage.latest_checkpoint)
        if latest is None:
            return
        await asyncio.gather(*(self._submit(w, latest) for w in self.policy.witnesses))

    async def _submit(self, witness: PolicyWitness, checkpoint: StoredCheckpoint) -> None:
        wid = witness_id(witness)
        if self.submitted.get(wid) == checkpoint.note or witness.url is None:
            return
        if wid not in self.known:
            cosigned = await asyncio.to_thread(self.storage.cosigned_size, wid)
            self.known[wid] = cosigned or 0
        old = self.known[wid]
        for _ in range(MAX_RETRIES):
            size = checkpoint.tree_size
            if old > size:
                self._alarm(wid, f"says it cosigned size {old}, larger than the tree ({size})")
                return
            proof = []
            if 0 < old < size:
                proof = await asyncio.to_thread(consistency_proof, old, size, self.storage)
            body = format_add_checkpoint(AddCheckpoint(old, tuple(proof), checkpoint.note))
            try:
                response = await self._http.post(
                    witness.url.rstrip("/") + "/add-checkpoint", content=body
                )
            except httpx.TransportError as exc:
                self._count("unavailable")
                log.warning("witness %s is unavailable: %s", wid, exc)
                return
            content_type = response.headers.get("content-type", "").split(";")[0].strip()
            if response.status_code == 409 and content_type == CONTENT_TYPE_SIZE:
                try:
                    old = parse_size_body(response.content)
                except MalformedError:
                    self._alarm(wid, "answered 409 with a malformed size")
                    return
                self.known[wid] = old
                self._count("stale")
                continue
            if response.status_code == 200:
                await self._keep(witness, checkpoint, response.content)
                return
            if response.status_code in (409, 422):
                self._alarm(wid, f"refused size {size}: {response.text[:200]}")
                return
            self._count(f"http_{response.status_code}")
            log.warning("witness %s answered %s: %s", wid, response.status_code, response.text)
            return
        log.warning("witness %s: still stale after %d retries", wid, MAX_RETRIES)

    def _alarm(self, wid: str, what: str) -> None:
        self._count("refused")
        log.error("witness %s %s: a fork, or a log that lost data", wid, what)

    async def _keep(
        self, witness: PolicyWitness, checkpoint: StoredCheckpoint, body: bytes
    ) -> None:
        wid = witness_id(witness)
        wanted = (witness.key.name, witness.key.key_id)
        try:
            lines = [line for line in parse_signature_lines(body) if signature_key(line) == wanted]
            if not lines:
                raise VerificationError("no cosignature by the configured key")
            note = open_note(merge_signatures(checkpoint.note, lines), [witness.key])
        except (MalformedError, VerificationError) as exc:
            self._count("bad_cosignature")
            log.error("witness %s answered with a bad cosignature: %s", wid, exc)
            return
        signature = note.signed_by(witness.key)
        assert signature is not None  # noqa: S101 -- open_note verified a signature by it
        record = CosignatureRecord(
            checkpoint.tree_size, wid, checkpoint.root_hash, lines[0], signature.timestamp_s or 0
        )
        await asyncio.to_thread(self.storage.put_cosignature, record)
        self.known[wid] = checkpoint.tree_size
        self.submitted[wid] = checkpoint.note
        self._count("cosigned")

    def served(self) -> bytes | None:
        """The checkpoint GET /checkpoint serves (see the module docstring)."""
        latest = self.storage.latest_checkpoint()
        if latest is None:
            return None
        by_key = {witness_id(w): w.name for w in self.policy.witnesses}
        if self.policy.quorum is None:
            return self._merged(latest)
        trees: dict[tuple[int, bytes], set[str]] = {}
        for record in self.storage.recent_cosignatures(_RECENT):
            if record.witness in by_key:
                tree = (record.tree_size, record.root_hash)
                trees.setdefault(tree, set()).add(by_key[record.witness])
        for (size, root), names in sorted(trees.items(), reverse=True):
            if self.policy.quorum_met(names):
                at = latest if latest.tree_size == size else self.storage.checkpoint_at(size)
                if at is not None and at.root_hash == root:
                    return self._merged(at)
        return None

    def _merged(self, checkpoint: StoredCheckpoint) -> bytes:
        names = {witness_id(w) for w in self.policy.witnesses}
        lines = [
            r.line
            for r in self.storage.cosignatures(checkpoint.tree_size)
            if r.witness in names and r.root_hash == checkpoint.root_hash
        ]
        return merge_signatures(checkpoint.note, lines) if lines else checkpoint.note
