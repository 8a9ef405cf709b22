"""tlog.policy: the policy file, quorum rules, and opening checkpoints under a policy."""

from __future__ import annotations

import pytest

from tlog.checkpoint import Checkpoint, sign_checkpoint
from tlog.errors import MalformedError, UnknownKeyError, VerificationError
from tlog.note import ALG_COSIGNATURE_V1, SigningKey, format_vkey
from tlog.policy import (
    Policy,
    PolicyLog,
    format_policy,
    open_checkpoint_with_policy,
    parse_policy,
    policy_of,
)

LOG = SigningKey("log.example/p", b"\x11" * 32)
W = [SigningKey(f"w{i}.example", bytes([0x20 + i]) * 32) for i in range(4)]
WV = [w.verifier(ALG_COSIGNATURE_V1) for w in W]
TEXT = f"""# two of three, and w3
log {format_vkey(LOG.verifier())} https://log.example/p
witness a {format_vkey(WV[0])} https://w0.example
witness b {format_vkey(WV[1])}
witness c {format_vkey(WV[2])}
witness d {format_vkey(WV[3])}

group abc 2 a b c
group all2 all abc d
quorum all2
"""
CHECKPOINT = Checkpoint("log.example/p", 3, b"\x05" * 32)


def _signed(*witnesses: int) -> bytes:
    return sign_checkpoint(CHECKPOINT, [LOG.signer(), *(W[i].cosigner(100 + i) for i in witnesses)])


def test_parse_and_format_round_trip() -> None:
    policy = parse_policy(TEXT)
    assert [w.name for w in policy.witnesses] == ["a", "b", "c", "d"]
    assert policy.logs[0].url == "https://log.example/p" and policy.witnesses[1].url is None
    assert policy.groups[0].threshold == 2 and policy.groups[1].threshold == 2
    assert parse_policy(format_policy(policy)) == policy


@pytest.mark.parametrize(
    ("cosigners", "met"),
    [({"a", "b", "d"}, True), ({"a", "c", "d"}, True), ({"a", "d"}, False),
     ({"a", "b", "c"}, False), (set(), False), ({"a", "b", "c", "d"}, True)],
)  # fmt: skip
def test_nested_groups(cosigners: set[str], met: bool) -> None:
    assert parse_policy(TEXT).quorum_met(cosigners) is met


def test_open_checkpoint_with_policy() -> None:
    policy = parse_policy(TEXT)
    assert open_checkpoint_with_policy(_signed(0, 1, 3), policy).checkpoint == CHECKPOINT
    with pytest.raises(VerificationError, match="quorum not met"):
        open_checkpoint_with_policy(_signed(0, 1), policy)
    with pytest.raises(UnknownKeyError):
        open_checkpoint_with_policy(sign_checkpoint(CHECKPOINT, [W[0].signer()]), policy)
    with pytest.raises(VerificationError):
        open_checkpoint_with_policy(_signed(0, 1, 3), policy, origin="another/log")
    no_logs = Policy(())
    with pytest.raises(MalformedError, match="no log line"):
        open_checkpoint_with_policy(_signed(), no_logs)


def test_policy_of_plain_lists() -> None:
    policy = policy_of([LOG.verifier()], WV[:3], 2)
    assert policy.quorum_met({"w0.example", "w2.example"})
    assert not policy.quorum_met({"w0.example"})
    assert policy_of([LOG.verifier()]).quorum is None
    assert open_checkpoint_with_policy(_signed(), policy_of([LOG.verifier()])) is not None


@pytest.mark.parametrize(
    "text",
    [
        "frobnicate 1\n",
        "log\n",
        f"log {format_vkey(WV[0])}\n",  # a cosigner key as a log key
        f"witness a {format_vkey(LOG.verifier())}\n",  # a log key as a witness key
        f"witness a {format_vkey(WV[0])}\nwitness a {format_vkey(WV[1])}\n",
        f"witness a {format_vkey(WV[0])}\ngroup g 2 a\n",
        f"witness a {format_vkey(WV[0])}\ngroup g 1 a a\n",
        "group g 1 nobody\n",
        f"witness a {format_vkey(WV[0])}\nquorum b\n",
        f"witness a {format_vkey(WV[0])}\nquorum a\nquorum a\n",
        f"witness a {format_vkey(WV[0])} ftp://x\n",
        f"witness none {format_vkey(WV[0])}\n",
        "log not+a+key\n",
        f"witness a {format_vkey(WV[0])}\ngroup g 01 a\n",
    ],
)
def test_bad_policies_name_the_line(text: str) -> None:
    with pytest.raises(MalformedError) as caught:
        parse_policy(text)
    assert caught.value.field.startswith("line ") or caught.value.field in (
        "witness", "group", "quorum",
    )  # fmt: skip


def test_a_policy_needs_unique_defined_names() -> None:
    log = PolicyLog(LOG.verifier())
    with pytest.raises(MalformedError):
        Policy((log,), quorum="nobody")
    assert Policy((log,)).quorum_met(set())
    assert parse_policy("quorum none\n").quorum is None
