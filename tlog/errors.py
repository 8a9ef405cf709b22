"""The errors of the tlog core: malformed input, failed verification, unknown keys.

Owns the exception hierarchy every package raises for format and verification failures.
Imports nothing but the standard library.

Every ``verify_*`` and ``open_*`` function in tlog returns normally or raises a subclass of
:class:`VerificationError`; none of them returns False. Parsers raise :class:`MalformedError`
naming the field that was wrong, and build nothing on error.

Every error here survives pickling with its type, message and evidence, so a worker process
(``spawn``) can raise it in the process that started it.
"""

from __future__ import annotations


class TlogError(Exception):
    """Base class of every error raised by the tlog core."""

    def __reduce__(self) -> tuple[object, ...]:
        # Exception's own pickling calls ``type(self)(*self.args)``, which fails for the
        # subclasses whose constructors take other arguments than their message.
        return _restore, (type(self), self.args, self.__dict__)


def _restore(
    kind: type[TlogError], args: tuple[object, ...], state: dict[str, object]
) -> TlogError:
    """An unpickled error: built without calling its ``__init__``, as it was pickled."""
    error = kind.__new__(kind, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class MalformedError(TlogError, ValueError):
    """Input that does not parse: ``field`` names what was wrong, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class VerificationError(TlogError):
    """A proof, signature or policy check failed."""


class ProofError(VerificationError):
    """A Merkle proof did not recompute the expected root.

    ``expected`` is the root the caller trusted; ``calculated`` the root the proof led to
    (None when the proof was rejected before any hashing, e.g. for its length).
    """

    def __init__(
        self,
        reason: str,
        *,
        expected: bytes | None = None,
        calculated: bytes | None = None,
    ) -> None:
        detail = reason
        if expected is not None and calculated is not None:
            detail += f" (expected root {expected.hex()}, calculated {calculated.hex()})"
        super().__init__(detail)
        self.reason = reason
        self.expected = expected
        self.calculated = calculated


class InconsistentLogError(VerificationError):
    """Two checkpoints of one log with two roots for one tree size: evidence of a fork.

    Carries both signed checkpoints (note bytes), the consistency proof from the older's size
    to the newer tree, and ``prefix``, the root the newer tree has at the older's size (which
    is not the older's root), so the error can be written out as self-contained evidence
    (``tlog.evidence``).
    """

    def __init__(
        self,
        reason: str,
        *,
        old_checkpoint: bytes,
        new_checkpoint: bytes,
        proof: tuple[bytes, ...],
        prefix: bytes,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.old_checkpoint = old_checkpoint
        self.new_checkpoint = new_checkpoint
        self.proof = proof
        self.prefix = prefix


class InvalidSignatureError(VerificationError):
    """A signature by a known key (``key_name``, ``key_id``) did not verify."""

    def __init__(
        self, key_name: str, key_id: int, reason: str = "signature does not verify"
    ) -> None:
        super().__init__(f"{reason}: key {key_name}+{key_id:08x}")
        self.key_name = key_name
        self.key_id = key_id
        self.reason = reason


class UnknownKeyError(VerificationError):
    """Nothing was signed by any key the caller trusts (or the named key is not known)."""


class ValidityError(VerificationError):
    """A signed statement (e.g. an access token) used outside its validity window.

    ``now_ms`` is the time it was checked at, ``valid_from_ms`` and ``valid_until_ms`` the
    window it claims, with the caller's leeway already applied; the window is half-open.
    """

    def __init__(
        self, reason: str, *, now_ms: int, valid_from_ms: int, valid_until_ms: int
    ) -> None:
        super().__init__(f"{reason} (now {now_ms} ms, valid [{valid_from_ms}, {valid_until_ms}))")
        self.reason = reason
        self.now_ms = now_ms
        self.valid_from_ms = valid_from_ms
        self.valid_until_ms = valid_until_ms
