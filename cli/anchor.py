"""``meterlog verify anchor`` and ``meterlog anchor deploy``: on-chain anchors, checked and set up.

Owns the auditor's check of a log's anchors, :func:`verify_anchors`: fetch the log's
checkpoint and verify it with the log's key; list every ``Anchored`` event for the log's
origin in the anchor contract (whose code must be the committed contract's, or its events
prove nothing); keep those sent by the log's anchoring address; and check each anchored
(tree size, root hash) against the verified checkpoint — equal roots at equal sizes, else a
consistency proof fetched from the log and verified here with tlog against the checkpoint's
root. The proof and the log's own root at the anchored size are computed here from tiles
authenticated against the checkpoint (``verifier.client.VerifiedTree``), never taken from the
log's JSON. An anchored root that is not the log's root at that size is a fork: the evidence
(``tlog.evidence``: the anchor, the signed checkpoint, the log's root at the anchored size and
the proof) goes to a file that ``meterlog verify evidence`` accepts, and the exit code is 10.
An anchored size larger than the checkpoint's (the log went back, or serves an old
checkpoint) fails (exit 1) but proves no fork. The log's own list of final anchors
(``/v1/anchors``) is checked against the chain too.

It also adds ``--rpc``/``--from``/``--chain-id`` to ``verify evidence``
(:func:`add_verify_evidence_chain_flags`): with them, each anchor in an evidence file is
looked up on chain (the transaction's receipt, its block, the event at its log index, the
contract's code) instead of being taken as the file states it.

The verifier package may not import anchor (web3 stays out of the verifier's install), so
this command is assembled here, beside the ``verify`` commands of verifier.cli, with their
conventions: human lines on stderr, ``--json`` on stdout, verifier.cli's exit codes.
Imports anchor, tlog, verifier and httpx; anchor.chain (and so web3, the ``[anchor]`` extra)
only when one of these commands runs, so the other commands work without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from anchor.record import AnchoredEvent, AnchorRecord, origin_hash, parse_address
from anchor.secret import AnchorKey, AnchorKeyError
from cli.client import LogUnavailableError, answer_json, get, log_url
from tlog.checkpoint import open_checkpoint
from tlog.errors import MalformedError, VerificationError
from tlog.evidence import Anchor, Fork, ForkEvidence, format_fork_evidence, verify_fork_evidence
from tlog.note import Verifier
from tlog.parsing import decode_b64, encode_b64
from verifier.cli import (
    EXIT_FAILED,
    EXIT_FORK,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    UsageError,
    load_vkey,
)
from verifier.client import LogClient, VerifiedTree
from verifier.client import LogUnavailableError as TilesUnavailableError
from verifier.offline import Report

if TYPE_CHECKING:
    from anchor.chain import Chain

__all__ = [
    "AnchorVerdict",
    "add_anchor_commands",
    "add_verify_anchor_command",
    "add_verify_evidence_chain_flags",
    "verify_anchors",
]

ANCHOR_KEY_ENV = "METERLOG_ANCHOR_KEY"
_PAGE = 1000


@dataclass
class AnchorVerdict:
    """What :func:`verify_anchors` found: the report, the forks, and the exit code."""

    report: Report
    forks: list[ForkEvidence] = field(default_factory=list)
    """The evidence of each anchor the log's tree contradicts, in chain order."""

    @property
    def exit_code(self) -> int:
        if self.forks:
            return EXIT_FORK
        return EXIT_OK if self.report.ok else EXIT_FAILED


# -- talking to the log ---------------------------------------------------------------------


def _log_anchors(http: httpx.Client, base: str) -> tuple[dict[str, Any] | None, list[Any]]:
    """The log's ``/v1/anchors``: where it says it anchors, and every anchor it lists."""
    after = 0
    anchors: list[Any] = []
    while True:
        response = get(f"{base}/v1/anchors?after={after}&limit={_PAGE}", http)
        if response.status_code == 404:
            return None, []  # a log without anchoring routes
        body = answer_json(response)
        describe = body.get("anchoring")
        page = body.get("anchors")
        if not isinstance(page, list):
            raise LogUnavailableError(f"{base}/v1/anchors: no anchors list")
        anchors.extend(page)
        next_after = body.get("next_after")
        if not isinstance(next_after, int) or not page:
            return (describe if isinstance(describe, dict) else None), anchors
        after = next_after


def _check_anchor(
    tree: VerifiedTree, log_keys: Sequence[Verifier], record: AnchorRecord
) -> ForkEvidence | None:
    """None if ``record`` anchored the root the verified tree has at its size; else the fork
    evidence. Raises VerificationError when the anchor cannot be checked as a prefix (it
    is larger than the tree) or the log's tiles do not match its checkpoint, and
    LogUnavailableError when the log does not serve them."""
    signed = tree.signed
    size = signed.checkpoint.tree_size
    if record.tree_size > size:
        raise VerificationError(
            f"anchored tree size {record.tree_size} is larger than the log's checkpoint "
            f"({size}): the log went back on what it anchored, or serves an old checkpoint "
            "(no fork is proven until it grows another history)"
        )
    proof, prefix = tree.prefix_proof(record.tree_size)
    if prefix == record.root_hash:
        return None
    evidence = ForkEvidence(record.as_evidence(), signed.signed_note, tuple(proof), prefix)
    verify_fork_evidence(evidence, log_keys)  # what anyone will check: it must hold here
    return evidence


def _where(record: AnchorRecord) -> str:
    return f"block {record.block_number} tx 0x{record.tx_hash.hex()[:16]}…"


def _cross_check(
    report: Report, listed: list[Any], on_chain: list[AnchorRecord], chain: Chain, contract: str
) -> None:
    """Every anchor the log lists as final on this chain and contract is on the chain."""
    found = {(r.tx_hash, r.tree_size, r.root_hash) for r in on_chain}
    claimed = 0
    missing: list[str] = []
    for item in listed:
        if not isinstance(item, dict) or item.get("status") != "final":
            continue
        if item.get("chain_id") != chain.chain_id or item.get("contract") != contract:
            continue
        claimed += 1
        try:
            key = (
                bytes.fromhex(str(item["tx_hash"]).removeprefix("0x")),
                int(item["tree_size"]),
                decode_b64(str(item["root_hash"]), "root_hash"),
            )
        except (KeyError, ValueError) as exc:
            missing.append(f"a malformed entry ({exc})")
            continue
        if key not in found:
            missing.append(f"tree size {key[1]} in tx 0x{key[0].hex()}")
    if missing:
        report.failed(
            "the log's final anchors",
            VerificationError(
                f"{len(missing)} of the {claimed} final anchors the log lists are not on the "
                f"chain: {'; '.join(missing[:3])}"
            ),
        )
    else:
        report.passed(
            "the log's final anchors", f"all {claimed} final anchors it lists are on the chain"
        )


def _anchoring_address(
    report: Report, base: str, describe: dict[str, Any] | None, sender: str | None
) -> str:
    """Whose anchors count: --from, else the address the log names (a mismatch fails)."""
    announced = None if describe is None else describe.get("address")
    if sender is None:
        if not isinstance(announced, str):
            raise UsageError(f"{base} names no anchoring address: give it with --from")
        sender = parse_address(announced, "the log's anchoring address")
        report.passed("anchoring address", f"{sender}, as the log names it (pin it with --from)")
    elif isinstance(announced, str) and announced.lower() != sender:
        report.failed(
            "anchoring address",
            VerificationError(f"the log says it anchors from {announced}, not --from {sender}"),
        )
    else:
        report.passed("anchoring address", f"{sender} (--from)")
    report.facts["sender"] = sender
    return sender


def verify_anchors(
    http: httpx.Client,
    log: str,
    chain: Chain,
    contract: str,
    log_keys: Sequence[Verifier],
    *,
    sender: str | None = None,
    origin: str | None = None,
    from_block: int = 0,
) -> AnchorVerdict:
    """Check every anchor of the log at ``log`` in ``contract`` on ``chain`` (see the module
    docstring). Raises LogUnavailableError when the log does not answer, ChainError when the
    node fails, and UsageError when no anchoring address is given and the log names none."""
    from anchor.chain import NotAnchorContractError, find_anchors  # noqa: PLC0415

    base = log_url(log)
    contract = parse_address(contract, "--contract")
    report = Report(f"anchors of {base} on chain {chain.chain_id}")
    verdict = AnchorVerdict(report)
    note = get(f"{base}/checkpoint", http)
    if note.status_code != 200:
        raise LogUnavailableError(f"{base}/checkpoint: HTTP {note.status_code}")
    try:
        signed = open_checkpoint(note.content, log_keys, origin=origin)
    except (VerificationError, MalformedError) as exc:
        report.failed("checkpoint signature", exc)
        return verdict
    checkpoint = signed.checkpoint
    report.passed(
        "checkpoint signature",
        f"{checkpoint.origin} at tree size {checkpoint.tree_size}, signed by the log key",
    )
    report.facts.update(
        origin=checkpoint.origin,
        origin_hash="0x" + origin_hash(checkpoint.origin).hex(),
        tree_size=checkpoint.tree_size,
        root_hash=encode_b64(checkpoint.root_hash),
        chain_id=chain.chain_id,
        contract=contract,
    )
    try:
        chain.check_contract(contract)
    except NotAnchorContractError as exc:
        report.failed("contract code", exc)
        return verdict
    report.passed("contract code", f"{contract} holds the committed meterlog anchor contract")

    describe, listed = _log_anchors(http, base)
    sender = _anchoring_address(report, base, describe, sender)
    records = find_anchors(chain, contract, checkpoint.origin, from_block=from_block)
    ours = [r for r in records if r.sender == sender]
    timeout = http.timeout.read
    with LogClient(base, timeout_s=30.0 if timeout is None else timeout) as tiles:
        tree = VerifiedTree(tiles, signed)
        try:
            listing = [_judge(verdict, tree, log_keys, record, sender) for record in records]
        except TilesUnavailableError as exc:
            raise LogUnavailableError(str(exc)) from exc
    if not ours:
        report.skipped("anchors", f"no anchor from {sender} for {checkpoint.origin} yet")
    report.facts["anchors"] = listing
    if describe is not None:
        _cross_check(report, listed, records, chain, contract)
    return verdict


def _judge(
    verdict: AnchorVerdict,
    tree: VerifiedTree,
    log_keys: Sequence[Verifier],
    record: AnchorRecord,
    sender: str,
) -> dict[str, Any]:
    """Check one anchor found on chain, into the report; its entry in the JSON listing."""
    report, size = verdict.report, tree.tree_size
    name = f"anchor of size {record.tree_size}"
    entry = {**record.to_json(), "verdict": "consistent"}
    if record.sender != sender:
        entry["verdict"] = "not the log's"
        report.skipped(
            name, f"{_where(record)} sent by {record.sender}, not the log's address: ignored"
        )
        return entry
    try:
        evidence = _check_anchor(tree, log_keys, record)
    except VerificationError as exc:
        entry["verdict"] = "failed"
        report.failed(name, exc)
        return entry
    if evidence is None:
        detail = (
            "the checkpoint's own root"
            if record.tree_size == size
            else f"consistent with the checkpoint of size {size}"
        )
        report.passed(name, f"{_where(record)}: {detail}")
        return entry
    entry["verdict"] = "fork"
    assert evidence.prefix is not None  # noqa: S101 -- written with it
    report.failed(
        name,
        VerificationError(
            f"FORK: {_where(record)}: two roots for tree size {record.tree_size}: "
            f"{encode_b64(record.root_hash)} anchored, {encode_b64(evidence.prefix)} in the "
            f"log's tree of size {size}"
        ),
    )
    verdict.forks.append(evidence)
    return entry


# -- the commands ---------------------------------------------------------------------------


def _emit(verdict: AnchorVerdict, as_json: bool) -> None:
    report = verdict.report
    if as_json:
        print(json.dumps(report.to_json(), sort_keys=True))
    headline = "FORK" if verdict.forks else "OK" if report.ok else "FAILED"
    print(f"{headline}  {report.subject}", file=sys.stderr)
    for check in report.checks:
        print(f"  {check.status:<12} {check.name}: {check.detail}", file=sys.stderr)


def _write_evidence(path: Path, evidence: ForkEvidence) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(format_fork_evidence(evidence))
    partial.replace(path)


def _run_verify(args: argparse.Namespace) -> int:
    # web3 loads only for the anchor commands: the other verifier commands run without it.
    from anchor.chain import Chain, ChainError, ChainUnavailableError, WrongChainError  # noqa: PLC0415

    log_keys = [load_vkey(k) for k in args.key]
    contract = _address(args.contract, "--contract")
    sender = None if args.sender is None else _address(args.sender, "--from")
    if args.from_block < 0:
        raise UsageError(f"--from-block {args.from_block}: must be 0 or more")
    try:
        chain = Chain.connect(args.rpc, expected_chain_id=args.chain_id)
        with httpx.Client(timeout=args.timeout, headers={"User-Agent": "meterlog-cli"}) as http:
            verdict = verify_anchors(
                http,
                args.log,
                chain,
                contract,
                log_keys,
                sender=sender,
                origin=args.origin,
                from_block=args.from_block,
            )
    except MalformedError as exc:
        raise UsageError(f"--rpc {args.rpc}: {exc.reason}") from None
    except WrongChainError as exc:
        print(f"FAILED  {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (LogUnavailableError, ChainUnavailableError) as exc:
        print(f"meterlog verify anchor: unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ChainError as exc:
        print(f"meterlog verify anchor: the node failed: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if verdict.forks:
        path = Path(args.evidence)
        try:
            _write_evidence(path, verdict.forks[0])
        except OSError as exc:
            raise UsageError(f"--evidence {path}: {exc.strerror or exc}") from exc
        verdict.report.facts["evidence"] = str(path)
    _emit(verdict, args.json)
    if verdict.forks:
        print(
            f"{len(verdict.forks)} anchor(s) contradict the log's tree: the evidence of the "
            f"first is in {args.evidence}; anyone can check it with meterlog verify evidence "
            f"{args.evidence} --key KEY --rpc URL --from ADDR",
            file=sys.stderr,
        )
    return verdict.exit_code


def _address(value: str, flag: str) -> str:
    try:
        return parse_address(value, flag)
    except MalformedError as exc:
        raise UsageError(f"{flag}: {exc.reason}") from None


_EXIT_HELP = (
    "\n\nexit codes: 0 verified, 1 verification failed, 2 usage error, "
    "3 log or node unavailable, 10 an anchor contradicts the log's tree (a fork; the "
    "evidence file is written)"
)


def _verify_parser(verify: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    """The ``verify`` command's sub-command table (made by verifier.cli)."""
    for action in verify._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("meterlog verify has no sub-commands to join")


def add_verify_anchor_command(verify: argparse.ArgumentParser) -> None:
    """Register ``verify anchor`` beside verifier.cli's ``verify`` commands."""
    parser = _verify_parser(verify).add_parser(
        "anchor",
        help="check a log's on-chain anchors against its current checkpoint",
        description="List every anchor of the log's origin in the anchor contract, keep those "
        "sent by the log's anchoring address, and check each anchored (tree size, root hash) "
        "against the log's current checkpoint (verified with --key) with a consistency proof "
        "verified here. The contract's code must be the committed meterlog anchor contract. "
        "The log's own list of final anchors (/v1/anchors) is checked against the chain too."
        + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log", required=True, metavar="URL", help="the log's base URL")
    parser.add_argument(
        "--rpc", required=True, metavar="URL", help="a JSON-RPC URL of the chain's node"
    )
    parser.add_argument(
        "--contract", required=True, metavar="ADDR", help="the anchor contract's address"
    )
    parser.add_argument(
        "--from",
        dest="sender",
        metavar="ADDR",
        help="the log's anchoring address (default: the one the log names at /v1/anchors)",
    )
    parser.add_argument(
        "--key",
        action="append",
        required=True,
        metavar="VKEY",
        help="the log's verifier key, or a file holding it (repeatable: any one may sign)",
    )
    parser.add_argument("--origin", help="require this checkpoint origin")
    parser.add_argument(
        "--chain-id", type=int, metavar="ID", help="require the node to serve this chain"
    )
    parser.add_argument(
        "--from-block",
        type=int,
        default=0,
        metavar="N",
        help="look for anchors from this block on (e.g. the contract's; default 0)",
    )
    parser.add_argument(
        "--evidence",
        default="anchor-fork.evidence",
        metavar="FILE",
        help="where to write the evidence of the first fork found, for meterlog verify "
        "evidence (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="HTTP timeout to the log"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    parser.set_defaults(func=_run_verify)


def add_verify_evidence_chain_flags(verify: argparse.ArgumentParser) -> None:
    """Give verifier.cli's ``verify evidence`` the flags that check its anchors on chain."""
    parser = _verify_parser(verify).choices["evidence"]
    chain = parser.add_argument_group("anchors (checked on chain only with --rpc)")
    chain.add_argument(
        "--rpc", metavar="URL",
        help="a JSON-RPC URL of the anchor's chain: look each anchor up there (its "
        "transaction's receipt, block, event and the contract's code) instead of taking it "
        "as the file states it",
    )  # fmt: skip
    chain.add_argument(
        "--from", dest="sender", metavar="ADDR",
        help="the log's anchoring address: each anchor must have been sent by it",
    )  # fmt: skip
    parser.set_defaults(confirm_anchors=_confirm_anchors)


def _confirm_anchors(args: argparse.Namespace, report: Report, fork: Fork) -> int | None:
    """Check each anchor of ``fork`` on the chain at ``--rpc``, into the report; an exit code
    if the node could not be asked."""
    from anchor.chain import Chain, ChainError, ChainUnavailableError  # noqa: PLC0415

    sender = None if args.sender is None else _address(args.sender, "--from")
    try:
        chain = Chain.connect(args.rpc)
        for anchor in fork.anchors:
            _confirm_anchor(report, chain, anchor, fork.origin, sender)
    except MalformedError as exc:
        raise UsageError(f"--rpc {args.rpc}: {exc.reason}") from None
    except ChainUnavailableError as exc:
        print(f"meterlog verify evidence: unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ChainError as exc:
        print(f"meterlog verify evidence: the node failed: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return None


def _confirm_anchor(
    report: Report, chain: Chain, anchor: Anchor, origin: str, sender: str | None
) -> None:
    """Is ``anchor`` the ``Anchored`` event the file says, where it says, and whose?"""
    from anchor.chain import NotAnchorContractError  # noqa: PLC0415

    tx = f"tx 0x{anchor.tx_hash.hex()}"
    name = f"anchor of size {anchor.tree_size} on chain"
    try:
        if chain.chain_id != anchor.chain_id:
            raise VerificationError(
                f"{chain.name} serves chain {chain.chain_id}, the anchor is on {anchor.chain_id}"
            )
        try:
            chain.check_contract(anchor.contract)
        except NotAnchorContractError as exc:
            raise VerificationError(str(exc)) from None
        mined = chain.receipt(anchor.tx_hash, anchor.contract)
        if mined is None:
            raise VerificationError(f"{tx} is in no block of chain {chain.chain_id}")
        if (mined.block_number, mined.block_hash) != (anchor.block_number, anchor.block_hash):
            raise VerificationError(
                f"{tx} is in block {mined.block_number} (0x{mined.block_hash.hex()}), not in "
                f"block {anchor.block_number} (0x{anchor.block_hash.hex()}) as the file says"
            )
        want = AnchoredEvent(origin_hash(origin), anchor.sender, anchor.tree_size, anchor.root_hash)
        if not any(r.log_index == anchor.log_index and r.event == want for r in mined.records):
            raise VerificationError(
                f"{tx} holds no Anchored event of {anchor.contract} at log index "
                f"{anchor.log_index} with this anchor of {origin}"
            )
    except VerificationError as exc:
        report.failed(name, exc)
        return
    report.passed(
        name,
        f"{tx}, block {anchor.block_number} (0x{anchor.block_hash.hex()}) of chain "
        f"{anchor.chain_id}: the Anchored event of the anchor contract {anchor.contract} at "
        f"log index {anchor.log_index}, as the file states it",
    )
    if sender is None:
        report.skipped(
            "anchoring address",
            f"that {anchor.sender} is the log's anchoring address: not checked (give --from)",
        )
    elif sender != anchor.sender:
        report.failed(
            "anchoring address",
            VerificationError(f"the anchor was sent by {anchor.sender}, not --from {sender}"),
        )
    else:
        report.passed("anchoring address", f"{sender} (--from) sent it")


def _read_key(args: argparse.Namespace) -> AnchorKey:
    env_value = os.environ.get(ANCHOR_KEY_ENV)
    try:
        if args.key_file is not None:
            if env_value:
                raise UsageError(f"give --key-file or {ANCHOR_KEY_ENV}, not both")
            return AnchorKey.from_file(Path(args.key_file))
        if env_value:
            return AnchorKey.from_env(ANCHOR_KEY_ENV, env_value)
    except AnchorKeyError as exc:
        raise UsageError(str(exc)) from None
    raise UsageError(f"the deploying account's key is needed: --key-file or {ANCHOR_KEY_ENV}")


def _run_deploy(args: argparse.Namespace) -> int:
    from anchor.chain import Chain, ChainError, ChainUnavailableError, address_of  # noqa: PLC0415

    key = _read_key(args)
    try:
        chain = Chain.connect(args.rpc, expected_chain_id=args.chain_id)
        address = chain.deploy(key)
    except MalformedError as exc:
        raise UsageError(f"--rpc {args.rpc}: {exc.reason}") from None
    except ChainUnavailableError as exc:
        print(f"meterlog anchor deploy: unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ChainError as exc:
        print(f"meterlog anchor deploy: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(
            json.dumps(
                {"contract": address, "chain_id": chain.chain_id, "deployer": address_of(key)},
                sort_keys=True,
            )
        )
    else:
        print(address)
    print(
        f"deployed the meterlog anchor contract at {address} on chain {chain.chain_id} "
        f"from {address_of(key)}",
        file=sys.stderr,
    )
    return EXIT_OK


def add_anchor_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``meterlog anchor deploy``."""
    anchor = subparsers.add_parser(
        "anchor",
        help="set up on-chain anchoring (deploy the anchor contract)",
        description="Set up the anchoring of checkpoints on an Ethereum chain. The log server "
        "anchors by itself once configured (meterlog serve --anchor-rpc ...); "
        "`meterlog verify anchor` checks its anchors.",
    )
    verbs = anchor.add_subparsers(dest="verb", required=True, metavar="VERB")
    deploy = verbs.add_parser(
        "deploy",
        help="deploy the committed anchor contract; prints its address",
        description="Deploy the committed meterlog anchor contract "
        "(anchor/solidity/MeterlogAnchor.bin) from the account of the key in --key-file or "
        f"{ANCHOR_KEY_ENV}, and print its address on stdout. exit codes: 0 deployed, "
        "1 the chain refused (e.g. no funds) or is not --chain-id, 2 usage error, "
        "3 node unavailable",
    )
    deploy.add_argument("--rpc", required=True, metavar="URL", help="a JSON-RPC URL")
    deploy.add_argument(
        "--chain-id", type=int, metavar="ID", help="refuse to deploy on any other chain"
    )
    deploy.add_argument(
        "--key-file",
        metavar="FILE",
        help=f"a file (mode 0600) holding the deploying account's private key (or set "
        f"{ANCHOR_KEY_ENV})",
    )
    deploy.add_argument("--json", action="store_true", help="print a JSON object on stdout")
    deploy.set_defaults(func=_run_deploy)
