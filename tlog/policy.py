"""Trust policies in the C2SP tlog-policy style: which logs, which witnesses, what quorum.

Owns the policy file (the Sigsum/C2SP tlog-policy line format, with C2SP verifier keys) and
:func:`open_checkpoint_with_policy`, which accepts a signed checkpoint only when one of the
policy's log keys signed it and its witness cosignatures satisfy the quorum. Imports
tlog.checkpoint, tlog.note and tlog.errors.

A policy file is UTF-8 lines; blank lines and ``#`` comments are ignored::

    log <vkey> [<url>]                        a log key (type 0x01); any one may sign
    witness <name> <vkey> [<url>]             a witness's cosignature/v1 key (type 0x04)
    group <name> <k|all|any> <member>...      met when k of its members are
    quorum <name|none>                        the witness or group that must be met

Names are unique among witnesses and groups; a group's members are witnesses or groups
defined above it (so there are no cycles). Without a ``quorum`` line no witness is needed.

>>> text = '''log example.com/log+1dde4531+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop
... witness w1 w1.example+89d3dde6+BIqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c
... quorum w1
... '''
>>> policy = parse_policy(text)
>>> policy.quorum, [w.name for w in policy.witnesses]
('w1', ['w1'])
>>> policy.quorum_met({"w1"}), policy.quorum_met(set())
(True, False)
>>> parse_policy(format_policy(policy)) == policy
True
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from tlog.checkpoint import SignedCheckpoint, open_checkpoint
from tlog.errors import MalformedError, VerificationError
from tlog.note import ALG_COSIGNATURE_V1, ALG_ED25519, Verifier, format_vkey, parse_vkey
from tlog.parsing import parse_decimal

__all__ = [
    "Policy",
    "PolicyGroup",
    "PolicyLog",
    "PolicyWitness",
    "format_policy",
    "open_checkpoint_with_policy",
    "parse_policy",
    "policy_of",
]

MAX_POLICY_SIZE = 1 << 20
_NONE = "none"


def _check_label(name: str, field: str) -> None:
    if not name or any(c.isspace() for c in name) or name == _NONE or name.startswith("#"):
        raise MalformedError(field, f"{name!r} is not a usable name")


def _check_url(url: str | None, field: str) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise MalformedError(field, f"{url!r} is not an http:// or https:// URL")


@dataclass(frozen=True, slots=True)
class PolicyLog:
    """A log key the policy trusts (Ed25519, type 0x01), and where the log is, if known."""

    key: Verifier
    url: str | None = None

    def __post_init__(self) -> None:
        if self.key.alg != ALG_ED25519:
            raise MalformedError("log", f"{self.key.name} is not an Ed25519 (type 0x01) key")
        _check_url(self.url, "log.url")


@dataclass(frozen=True, slots=True)
class PolicyWitness:
    """A witness: its local ``name``, its cosignature/v1 key, and its URL, if known."""

    name: str
    key: Verifier
    url: str | None = None

    def __post_init__(self) -> None:
        _check_label(self.name, "witness.name")
        if self.key.alg != ALG_COSIGNATURE_V1:
            raise MalformedError("witness", f"{self.name}: not a cosignature/v1 (type 0x04) key")
        _check_url(self.url, "witness.url")


@dataclass(frozen=True, slots=True)
class PolicyGroup:
    """A group met when at least ``threshold`` of its ``members`` are met."""

    name: str
    threshold: int
    members: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_label(self.name, "group.name")
        if not self.members:
            raise MalformedError("group", f"{self.name}: no members")
        if len(set(self.members)) != len(self.members):
            raise MalformedError("group", f"{self.name}: a member is listed twice")
        if not 1 <= self.threshold <= len(self.members):
            raise MalformedError(
                "group", f"{self.name}: threshold {self.threshold} is not in 1..{len(self.members)}"
            )


@dataclass(frozen=True, slots=True)
class Policy:
    """Whom a verifier trusts. ``quorum`` names the witness or group that must be met (None:
    no witness needed). Names are checked to be defined, unique and acyclic. A policy without
    ``log`` lines verifies no checkpoint; a log server uses one to list its witnesses."""

    logs: tuple[PolicyLog, ...]
    witnesses: tuple[PolicyWitness, ...] = ()
    groups: tuple[PolicyGroup, ...] = ()
    quorum: str | None = None

    def __post_init__(self) -> None:
        defined: set[str] = set()
        for witness in self.witnesses:
            if witness.name in defined:
                raise MalformedError("witness", f"{witness.name} is defined twice")
            defined.add(witness.name)
        for group in self.groups:
            if group.name in defined:
                raise MalformedError("group", f"{group.name} is defined twice")
            for member in group.members:
                if member not in defined:
                    raise MalformedError("group", f"{group.name}: {member} is not defined above")
            defined.add(group.name)
        if self.quorum is not None and self.quorum not in defined:
            raise MalformedError("quorum", f"{self.quorum} is not a witness or group")

    @property
    def log_keys(self) -> tuple[Verifier, ...]:
        return tuple(log.key for log in self.logs)

    @property
    def witness_keys(self) -> tuple[Verifier, ...]:
        return tuple(w.key for w in self.witnesses)

    def quorum_met(self, cosigned: Collection[str]) -> bool:
        """Whether the witnesses named in ``cosigned`` meet the quorum."""
        if self.quorum is None:
            return True
        met = set(cosigned) & {w.name for w in self.witnesses}
        for group in self.groups:  # members are defined above their group: one pass
            if sum(member in met for member in group.members) >= group.threshold:
                met.add(group.name)
        return self.quorum in met

    def describe_quorum(self) -> str:
        if self.quorum is None:
            return "no witness quorum"
        for group in self.groups:
            if group.name == self.quorum:
                return f"{group.threshold} of {', '.join(group.members)}"
        return f"witness {self.quorum}"


def policy_of(
    log_keys: Sequence[Verifier], witnesses: Sequence[Verifier] = (), quorum: int = 0
) -> Policy:
    """The policy of plain lists: any of ``log_keys``, and ``quorum`` of ``witnesses`` (each
    named by its key name)."""
    entries = tuple(PolicyWitness(w.name, w) for w in witnesses)
    if quorum == 0:
        return Policy(tuple(PolicyLog(k) for k in log_keys), entries)
    group = PolicyGroup("quorum", quorum, tuple(w.name for w in entries))
    return Policy(tuple(PolicyLog(k) for k in log_keys), entries, (group,), "quorum")


def _threshold(text: str, members: int, field: str) -> int:
    if text == "all":
        return members
    if text == "any":
        return 1
    return parse_decimal(text, field)


def parse_policy(text: str) -> Policy:
    """Parse a policy file strictly; MalformedError names the line that is wrong."""
    if len(text.encode()) > MAX_POLICY_SIZE:
        raise MalformedError("policy", f"larger than {MAX_POLICY_SIZE} bytes")
    logs: list[PolicyLog] = []
    witnesses: list[PolicyWitness] = []
    groups: list[PolicyGroup] = []
    quorum: str | None = None
    quorum_seen = False
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        keyword, *args = line.split()
        try:
            if keyword == "log" and len(args) in (1, 2):
                logs.append(PolicyLog(parse_vkey(args[0]), args[1] if len(args) == 2 else None))
            elif keyword == "witness" and len(args) in (2, 3):
                url = args[2] if len(args) == 3 else None
                witnesses.append(PolicyWitness(args[0], parse_vkey(args[1]), url))
            elif keyword == "group" and len(args) >= 3:
                members = tuple(args[2:])
                threshold = _threshold(args[1], len(members), f"{where}: threshold")
                groups.append(PolicyGroup(args[0], threshold, members))
            elif keyword == "quorum" and len(args) == 1:
                if quorum_seen:
                    raise MalformedError("quorum", "given twice")
                quorum_seen = True
                quorum = None if args[0] == _NONE else args[0]
            else:
                raise MalformedError(keyword, "unknown keyword or wrong number of arguments")
        except MalformedError as exc:
            raise MalformedError(f"{where}: {exc.field}", exc.reason) from exc
    return Policy(tuple(logs), tuple(witnesses), tuple(groups), quorum)


def format_policy(policy: Policy) -> str:
    lines = [" ".join(["log", format_vkey(k.key), *filter(None, [k.url])]) for k in policy.logs]
    for w in policy.witnesses:
        lines.append(" ".join(["witness", w.name, format_vkey(w.key), *filter(None, [w.url])]))
    for g in policy.groups:
        lines.append(" ".join(["group", g.name, str(g.threshold), *g.members]))
    lines.append(f"quorum {policy.quorum or _NONE}")
    return "".join(line + "\n" for line in lines)


def open_checkpoint_with_policy(
    signed_note: bytes, policy: Policy, *, origin: str | None = None
) -> SignedCheckpoint:
    """Verify a signed checkpoint under a policy: a log key signed it, every signature by a
    known witness key verifies, and the witnesses that cosigned meet the quorum. Raises
    VerificationError (UnknownKeyError when no log key signed) or MalformedError."""
    if not policy.logs:
        raise MalformedError("policy", "has no log line: no log key to trust")
    signed = open_checkpoint(
        signed_note, policy.log_keys, origin=origin, witnesses=policy.witness_keys
    )
    names = {w.name for w in policy.witnesses if w.key in signed.witnesses}
    if not policy.quorum_met(names):
        raise VerificationError(
            f"witness quorum not met: {len(names)} of {len(policy.witnesses)} witnesses "
            f"cosigned ({', '.join(sorted(names)) or 'none'}); the policy needs "
            f"{policy.describe_quorum()}"
        )
    return signed
