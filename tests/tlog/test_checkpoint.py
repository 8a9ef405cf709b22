"""Tests of tlog.checkpoint: the C2SP checkpoint body, parsed strictly, and open_checkpoint's
policy (a log key must sign; a quorum of distinct trusted witnesses must cosign).

Published vectors: ``checkpoint_format`` (transparency-dev/formats, C2SP), the real
sum.golang.org checkpoint in ``signed_note`` and the self-generated ``cosignature_v1`` one.
"""

from __future__ import annotations

import base64
from hashlib import sha256
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlog.checkpoint import (
    Checkpoint,
    format_checkpoint,
    open_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
)
from tlog.errors import (
    InvalidSignatureError,
    MalformedError,
    UnknownKeyError,
    VerificationError,
)
from tlog.hashing import EMPTY_ROOT
from tlog.note import ALG_COSIGNATURE_V1, SigningKey, open_note, parse_vkey, sign_note
from tlog.parsing import MAX_INT63

ROOT = next(
    root
    for i in range(1000)
    if {"+", "/"} <= set(base64.b64encode(root := sha256(b"root %d" % i).digest()).decode())
)
"""A root whose base64 has both '+' and '/', so the URL-safe alphabet differs from it."""
ROOT_B64 = base64.b64encode(ROOT).decode()
ORIGIN = "example.com/usage-log"

LOG = SigningKey(ORIGIN, bytes(range(32, 64)))
WITNESSES = [SigningKey(f"witness.example.com/w{i}", bytes([i]) * 32) for i in range(1, 5)]
NOW_S = 1_700_000_000


def cosigners(*keys: SigningKey) -> list[Any]:
    return [k.cosigner(NOW_S) for k in keys]


def witness_keys(*keys: SigningKey) -> list[Any]:
    return [k.verifier(ALG_COSIGNATURE_V1) for k in keys]


# ---------------------------------------------------------------------------------------------
# Format and parse.

origins = st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=60)
extension_lines = st.lists(origins, max_size=3).map(tuple)
sized_roots = st.one_of(
    st.just((0, EMPTY_ROOT)),
    st.tuples(st.integers(min_value=1, max_value=MAX_INT63), st.binary(min_size=32, max_size=32)),
)


@settings(max_examples=200)
@given(origins, sized_roots, extension_lines)
def test_format_parse_round_trip(
    origin: str, sized_root: tuple[int, bytes], extensions: tuple[str, ...]
) -> None:
    size, root = sized_root
    checkpoint = Checkpoint(origin, size, root, extensions)
    text = format_checkpoint(checkpoint)
    lines = [origin, str(size), base64.b64encode(root).decode(), *extensions]
    assert text == "".join(f"{line}\n" for line in lines)
    assert parse_checkpoint(text) == checkpoint
    assert format_checkpoint(parse_checkpoint(text)) == text


@settings(max_examples=40)
@given(origins, sized_roots, extension_lines)
def test_sign_open_round_trip(
    origin: str, sized_root: tuple[int, bytes], extensions: tuple[str, ...]
) -> None:
    size, root = sized_root
    checkpoint = Checkpoint(origin, size, root, extensions)
    signed = sign_checkpoint(checkpoint, [LOG.signer(), *cosigners(WITNESSES[0])])
    opened = open_checkpoint(
        signed, [LOG.verifier()], witnesses=witness_keys(WITNESSES[0]), quorum=1, origin=origin
    )
    assert opened.checkpoint == checkpoint
    assert opened.signed_note == signed
    assert opened.witnesses == tuple(witness_keys(WITNESSES[0]))


def test_marshal_shape(vectors: dict[str, Any]) -> None:
    # The formats vectors use non-32-byte "hashes": their layout is what is checked, with a
    # real root in place of the short one ...
    cases = vectors["checkpoint_format"]["marshal"]
    assert len(cases) == 2
    for case in cases:
        short_b64 = base64.b64encode(case["hash_bytes_ascii"].encode()).decode()
        assert case["text"] == f"{case['origin']}\n{case['size']}\n{short_b64}\n"
        checkpoint = Checkpoint(case["origin"], case["size"], ROOT)
        assert format_checkpoint(checkpoint) == case["text"].replace(short_b64, ROOT_B64)
        # ... and a strict parser refuses the short hashes themselves.
        with pytest.raises(MalformedError) as exc:
            parse_checkpoint(case["text"])
        assert exc.value.field == "checkpoint.root_hash"


def test_c2sp_example(vectors: dict[str, Any]) -> None:
    text = vectors["checkpoint_format"]["c2sp_example"]
    checkpoint = parse_checkpoint(text)
    origin, size, root = text.split("\n")[:3]
    assert checkpoint == Checkpoint(origin, int(size), base64.b64decode(root))
    assert checkpoint.extensions == ()
    assert format_checkpoint(checkpoint) == text


def strict_reject_text(example: str) -> tuple[str, str]:
    """A vector's description made concrete: the text, and the reason in parentheses."""
    text, _, reason = example.partition(" (")
    text = text.replace("\\n", "\n")
    text = text.replace("<32-byte b64>", ROOT_B64).replace("...", ROOT_B64 + "\n")
    return text, reason.removesuffix(")")


REJECT_FIELDS = {
    "leading zero in size": "checkpoint.tree_size",
    "root not 32 bytes": "checkpoint.root_hash",
    "negative": "checkpoint.tree_size",
    "no final newline": "checkpoint",
    "empty origin": "checkpoint.origin",
}


def test_strict_reject_examples(vectors: dict[str, Any]) -> None:
    examples = vectors["checkpoint_format"]["strict_reject_examples"]
    assert len(examples) == len(REJECT_FIELDS)
    for example in examples:
        text, reason = strict_reject_text(example)
        with pytest.raises(MalformedError) as exc:
            parse_checkpoint(text)
        assert exc.value.field == REJECT_FIELDS[reason], example
    # The no-final-newline example also has a short hash; with a good one it still fails.
    with pytest.raises(MalformedError) as exc:
        parse_checkpoint(f"Log\n123\n{ROOT_B64}")
    assert exc.value.field == "checkpoint"


def good(size: str = "123", root: str = ROOT_B64, origin: str = "Log") -> str:
    return f"{origin}\n{size}\n{root}\n"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (good("0123"), "checkpoint.tree_size"),
        (good("00"), "checkpoint.tree_size"),
        (good("+1"), "checkpoint.tree_size"),
        (good("-0"), "checkpoint.tree_size"),
        (good("-34"), "checkpoint.tree_size"),
        (good(" 1"), "checkpoint.tree_size"),
        (good("1 "), "checkpoint.tree_size"),
        (good("1e3"), "checkpoint.tree_size"),
        (good("0x10"), "checkpoint.tree_size"),
        (good(""), "checkpoint.tree_size"),
        (good("\u0661\u0662"), "checkpoint.tree_size"),
        (good(str(1 << 63)), "checkpoint.tree_size"),
        (good(str(1 << 64)), "checkpoint.tree_size"),
        (good("9" * 5000), "checkpoint.tree_size"),
        (good(root="not base64!"), "checkpoint.root_hash"),
        (good(root=ROOT_B64.rstrip("=")), "checkpoint.root_hash"),
        (good(root=ROOT_B64 + "="), "checkpoint.root_hash"),
        (good(root=" " + ROOT_B64), "checkpoint.root_hash"),
        (good(root=ROOT_B64.replace("+", "-").replace("/", "_")), "checkpoint.root_hash"),
        (good(root=base64.b64encode(ROOT[:31]).decode()), "checkpoint.root_hash"),
        (good(root=base64.b64encode(ROOT + b"\x00").decode()), "checkpoint.root_hash"),
        (good(root=""), "checkpoint.root_hash"),
        (good("0", ROOT_B64), "checkpoint.root_hash"),  # size 0 needs SHA-256("")
        (good(origin=""), "checkpoint.origin"),
        (good()[:-1], "checkpoint"),
        ("Log\n123\n", "checkpoint"),
        ("Log\n", "checkpoint"),
        ("", "checkpoint"),
        (good() + "\n", "checkpoint.extensions"),
        (good() + "ext\n\n", "checkpoint.extensions"),
        (good() + "\next\n", "checkpoint.extensions"),
        (good() + "ext", "checkpoint"),
        ("Lo\rg" + good()[3:], "checkpoint.origin"),
        ("Log\t" + good()[3:], "checkpoint.origin"),
        (good() + "e\x00xt\n", "checkpoint.extensions"),
    ],
)
def test_parse_checkpoint_rejects(text: str, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        parse_checkpoint(text)
    assert exc.value.field == field


def test_non_canonical_base64_roots_are_rejected() -> None:
    # 32 bytes take 43 symbols and one '='; the last symbol's two low bits are unused.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(ROOT_B64[-2])
    for bit in (1, 2):
        mangled = ROOT_B64[:-2] + alphabet[last ^ bit] + "="
        assert base64.b64decode(mangled) == ROOT
        with pytest.raises(MalformedError) as exc:
            parse_checkpoint(good(root=mangled))
        assert exc.value.field == "checkpoint.root_hash"


def test_parse_checkpoint_accepts_the_edges() -> None:
    empty_b64 = base64.b64encode(EMPTY_ROOT).decode()
    assert empty_b64 == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # C2SP tlog-checkpoint
    assert parse_checkpoint(good("0", empty_b64)).tree_size == 0
    assert parse_checkpoint(good(str(MAX_INT63))).tree_size == MAX_INT63
    with_ext = parse_checkpoint(good() + "ext one\n— not a signature\n")
    assert with_ext.extensions == ("ext one", "— not a signature")


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("", 1, ROOT, ()),
        ("a\nb", 1, ROOT, ()),
        ("o", -1, ROOT, ()),
        ("o", MAX_INT63 + 1, ROOT, ()),
        ("o", True, ROOT, ()),
        ("o", 1.0, ROOT, ()),
        ("o", "1", ROOT, ()),
        ("o", 1, ROOT[:31], ()),
        ("o", 1, ROOT + b"\x00", ()),
        ("o", 0, ROOT, ()),
        ("o", 1, ROOT, ("",)),
        ("o", 1, ROOT, ("a\nb",)),
    ],
)
def test_checkpoint_rejects_bad_fields(
    origin: str, size: Any, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(MalformedError):
        Checkpoint(origin, size, root, extensions)


# ---------------------------------------------------------------------------------------------
# open_checkpoint.

CHECKPOINT = Checkpoint(ORIGIN, 8, ROOT)


def test_signed_by_the_log_key() -> None:
    signed = sign_checkpoint(CHECKPOINT, [LOG.signer()])
    opened = open_checkpoint(signed, [LOG.verifier()], origin=ORIGIN)
    assert opened.checkpoint == CHECKPOINT
    assert opened.witnesses == ()
    assert opened.note.text == format_checkpoint(CHECKPOINT)


def test_any_of_several_log_keys() -> None:
    old_key = SigningKey(ORIGIN, bytes(32))
    signed = sign_checkpoint(CHECKPOINT, [LOG.signer()])
    assert open_checkpoint(signed, [old_key.verifier(), LOG.verifier()]).checkpoint == CHECKPOINT


def test_not_signed_by_the_log() -> None:
    only_witness = sign_checkpoint(CHECKPOINT, cosigners(WITNESSES[0]))
    with pytest.raises(UnknownKeyError):
        open_checkpoint(
            only_witness, [LOG.verifier()], witnesses=witness_keys(WITNESSES[0]), quorum=1
        )
    with pytest.raises(UnknownKeyError):
        open_checkpoint(only_witness, [LOG.verifier()])
    other_log = SigningKey(ORIGIN, bytes([9]) * 32)
    with pytest.raises(UnknownKeyError):
        open_checkpoint(sign_checkpoint(CHECKPOINT, [other_log.signer()]), [LOG.verifier()])
    with pytest.raises(MalformedError):
        open_checkpoint(sign_checkpoint(CHECKPOINT, [LOG.signer()]), [])


def test_a_bad_log_signature_is_invalid() -> None:
    signed = sign_checkpoint(CHECKPOINT, [LOG.signer()])
    other = sign_checkpoint(Checkpoint(ORIGIN, 9, ROOT), [LOG.signer()])
    moved = signed.split(b"\n\n")[0] + b"\n\n" + other.split(b"\n\n")[1]
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(moved, [LOG.verifier()])


def test_wrong_origin_is_rejected() -> None:
    signed = sign_checkpoint(CHECKPOINT, [LOG.signer()])
    with pytest.raises(VerificationError):
        open_checkpoint(signed, [LOG.verifier()], origin="example.com/other-log")
    with pytest.raises(VerificationError):
        open_checkpoint(signed, [LOG.verifier()], origin=ORIGIN + "/")


def test_a_signed_but_malformed_body_is_rejected() -> None:
    body = f"{ORIGIN}\n08\n{ROOT_B64}\n"
    with pytest.raises(MalformedError):
        open_checkpoint(sign_note(body, [LOG.signer()]), [LOG.verifier()])


def test_witness_quorum() -> None:
    w1, w2, w3, w4 = WITNESSES
    signed = sign_checkpoint(CHECKPOINT, [LOG.signer(), *cosigners(w1, w2, w4)])
    trusted = witness_keys(w1, w2, w3)  # w4 is not trusted: its cosignature does not count
    for quorum in (0, 1, 2):
        opened = open_checkpoint(signed, [LOG.verifier()], witnesses=trusted, quorum=quorum)
        assert opened.witnesses == tuple(witness_keys(w1, w2))
        assert len(opened.note.unverified) == 1
    with pytest.raises(VerificationError) as exc:
        open_checkpoint(signed, [LOG.verifier()], witnesses=trusted, quorum=3)
    assert not isinstance(exc.value, MalformedError)
    # With w4 trusted too, three of four cosigned.
    everyone = witness_keys(w1, w2, w3, w4)
    assert len(open_checkpoint(signed, [LOG.verifier()], witnesses=everyone, quorum=3).witnesses)
    with pytest.raises(VerificationError):
        open_checkpoint(signed, [LOG.verifier()], witnesses=everyone, quorum=4)


def test_a_witness_given_twice_counts_once() -> None:
    w1, w2, *_ = WITNESSES
    signed = sign_checkpoint(CHECKPOINT, [LOG.signer(), *cosigners(w1)])
    twice = [*witness_keys(w1), *witness_keys(w1)]
    opened = open_checkpoint(signed, [LOG.verifier()], witnesses=twice, quorum=1)
    assert opened.witnesses == tuple(witness_keys(w1))
    with pytest.raises(VerificationError):
        open_checkpoint(signed, [LOG.verifier()], witnesses=[*twice, *witness_keys(w2)], quorum=2)
    with pytest.raises(MalformedError):  # two entries, one witness: a quorum of 2 is impossible
        open_checkpoint(signed, [LOG.verifier()], witnesses=twice, quorum=2)
    # A cosignature line repeated in the note counts once too.
    doubled = sign_checkpoint(CHECKPOINT, [LOG.signer(), *cosigners(w1, w1)])
    with pytest.raises(VerificationError):
        open_checkpoint(doubled, [LOG.verifier()], witnesses=witness_keys(w1, w2), quorum=2)


@pytest.mark.parametrize("quorum", [-1, 3, 10])
def test_impossible_quorum_is_malformed(quorum: int) -> None:
    signed = sign_checkpoint(CHECKPOINT, [LOG.signer(), *cosigners(*WITNESSES[:2])])
    with pytest.raises(MalformedError):
        open_checkpoint(
            signed, [LOG.verifier()], witnesses=witness_keys(*WITNESSES[:2]), quorum=quorum
        )


def test_witness_keys_must_be_cosigner_keys() -> None:
    signed = sign_checkpoint(CHECKPOINT, [LOG.signer(), WITNESSES[0].signer()])
    with pytest.raises(MalformedError):
        open_checkpoint(signed, [LOG.verifier()], witnesses=[WITNESSES[0].verifier()], quorum=1)


def test_a_bad_cosignature_by_a_trusted_witness_is_invalid() -> None:
    w1 = WITNESSES[0]
    signed = sign_checkpoint(CHECKPOINT, [LOG.signer()])
    elsewhere = sign_checkpoint(Checkpoint(ORIGIN, 9, ROOT), cosigners(w1))
    forged = signed + elsewhere.split(b"\n\n")[1]
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(forged, [LOG.verifier()], witnesses=witness_keys(w1), quorum=0)
    # Untrusted, the same line is ignored.
    assert open_checkpoint(forged, [LOG.verifier()]).witnesses == ()


def test_cosignatures_cover_extension_lines() -> None:
    w1 = WITNESSES[0]
    checkpoint = Checkpoint(ORIGIN, 8, ROOT, ("ext",))
    cosigned = sign_checkpoint(checkpoint, cosigners(w1))
    signature = cosigned.split(b"\n\n")[1]
    other_ext = Checkpoint(ORIGIN, 8, ROOT, ("ext2",))
    forged = sign_checkpoint(other_ext, [LOG.signer()]) + signature
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(forged, [LOG.verifier()], witnesses=witness_keys(w1), quorum=1)


def test_self_generated_cosigned_checkpoint(vectors: dict[str, Any]) -> None:
    v = vectors["cosignature_v1"]["self_generated"]
    log_key = parse_vkey(v["log"]["vkey"])
    witness = parse_vkey(v["witness"]["vkey_type_0x04"])
    signed = v["signed_checkpoint"].encode()
    opened = open_checkpoint(
        signed, [log_key], origin=v["log"]["name"], witnesses=[witness], quorum=1
    )
    assert opened.witnesses == (witness,)
    assert format_checkpoint(opened.checkpoint) == v["checkpoint_body"]
    assert opened.note.signed_by(witness) is not None
    assert opened.note.signatures[1].timestamp_s == v["timestamp"]
    for at in range(len(signed)):
        changed = bytearray(signed)
        changed[at] ^= 0x01
        with pytest.raises((MalformedError, VerificationError)):
            open_checkpoint(
                bytes(changed), [log_key], origin=v["log"]["name"], witnesses=[witness], quorum=1
            )


def test_real_sum_golang_org_checkpoint(vectors: dict[str, Any]) -> None:
    v = vectors["signed_note"]["sum_golang_org_real_checkpoint"]
    signed = v["signed_note"].encode()
    opened = open_checkpoint(signed, [parse_vkey(v["vkey"])], origin="go.sum database tree")
    text = open_note(signed, [parse_vkey(v["vkey"])]).text
    origin, size, root = text.split("\n")[:3]
    assert opened.checkpoint == Checkpoint(origin, int(size), base64.b64decode(root))
    assert format_checkpoint(opened.checkpoint) == text
