"""Tests of tlog.note: C2SP signed-note keys, signing and opening, and Ed25519 cosignature/v1.

Published vectors come from ``signed_note`` (Go sumdb/note, the C2SP example, the real
sum.golang.org checkpoint, formats and witness-network keys) and ``cosignature_v1``; the
``self_generated`` cosignature is this project's own vector (see tests/vectors/README.md).
"""

from __future__ import annotations

import base64
import struct
from hashlib import sha256
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlog.errors import InvalidSignatureError, MalformedError, UnknownKeyError
from tlog.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    NoteSignature,
    Signer,
    SigningKey,
    Verifier,
    cosignature_message,
    format_skey,
    format_vkey,
    key_id,
    open_note,
    parse_skey,
    parse_vkey,
    sign_note,
    verify_messages,
)

# The decoder open_note applies to a cosignature's time; no public route reaches it without a
# verifying key, and the published timestamp vectors come without their keys.
from tlog.note import _cosignature_timestamp as cosignature_timestamp

REJECTED = (InvalidSignatureError, MalformedError, UnknownKeyError)


def id_of(vkey: str) -> int:
    """The key ID a vkey string states."""
    return int(vkey.split("+")[1], 16)


def signature_line(msg: bytes, name: str) -> str:
    """The (single) signature line of ``name`` in a signed note, without its newline."""
    lines = [x for x in msg.decode().split("\n") if x.startswith(f"\u2014 {name} ")]
    assert len(lines) == 1
    return lines[0]


@pytest.fixture
def peter(vectors: dict[str, Any]) -> SigningKey:
    return parse_skey(vectors["signed_note"]["PeterNeumann"]["skey"])


@pytest.fixture
def enoch(vectors: dict[str, Any]) -> SigningKey:
    return SigningKey(
        "EnochRoot", bytes.fromhex(vectors["signed_note"]["EnochRoot"]["ed25519_seed_hex"])
    )


@pytest.fixture
def text(vectors: dict[str, Any]) -> str:
    value: str = vectors["signed_note"]["PeterNeumann"]["text"]
    return value


# ---------------------------------------------------------------------------------------------
# Published keys and signatures.


def test_peter_neumann_keys(vectors: dict[str, Any], peter: SigningKey) -> None:
    v = vectors["signed_note"]["PeterNeumann"]
    assert peter.name == "PeterNeumann"
    assert peter.seed.hex() == v["ed25519_seed_hex"]
    assert peter.public_key.hex() == v["ed25519_public_key_hex"]
    assert format_skey(peter) == v["skey"]
    assert format_vkey(peter.verifier()) == v["vkey"]
    verifier = parse_vkey(v["vkey"])
    assert verifier == peter.verifier()
    assert verifier.alg == ALG_ED25519
    assert verifier.key_id == id_of(v["vkey"])
    # key ID = SHA-256(name || 0x0A || type || public key)[:4] (C2SP signed-note).
    digest = sha256(b"PeterNeumann\n\x01" + bytes.fromhex(v["ed25519_public_key_hex"])).digest()
    assert key_id("PeterNeumann", ALG_ED25519, verifier.public_key) == int.from_bytes(
        digest[:4], "big"
    )


def test_peter_neumann_signature_is_reproduced(vectors: dict[str, Any], peter: SigningKey) -> None:
    v = vectors["signed_note"]["PeterNeumann"]
    msg = sign_note(v["text"], [peter.signer()])
    assert msg == v["signed_note"].encode()
    assert signature_line(msg, "PeterNeumann") == (
        f"\u2014 PeterNeumann {v['signature_b64_(keyid||sig)']}"
    )
    note = open_note(msg, [parse_vkey(v["vkey"])])
    assert note.text == v["text"]
    assert note.signatures == (NoteSignature("PeterNeumann", id_of(v["vkey"]), ALG_ED25519, None),)
    assert note.unverified == ()


def test_enoch_root_keys(vectors: dict[str, Any], enoch: SigningKey) -> None:
    v = vectors["signed_note"]["EnochRoot"]
    assert format_vkey(enoch.verifier()) == v["vkey"]
    skey = v["skey_(derived,_not_printed_in_source)"]
    assert format_skey(enoch) == skey
    assert parse_skey(skey) == enoch
    assert parse_vkey(v["vkey"]) == enoch.verifier()


def test_doubly_signed_note(
    vectors: dict[str, Any], peter: SigningKey, enoch: SigningKey, text: str
) -> None:
    v = vectors["signed_note"]["EnochRoot"]
    msg = sign_note(text, [peter.signer(), enoch.signer()])
    assert msg == v["doubly_signed_note"].encode()
    peter_line = signature_line(msg, "PeterNeumann")
    enoch_line = signature_line(msg, "EnochRoot")
    assert enoch_line == f"\u2014 EnochRoot {v['signature_b64_(keyid||sig)']}"

    both = open_note(msg, [peter.verifier(), enoch.verifier()])
    assert [s.name for s in both.signatures] == ["PeterNeumann", "EnochRoot"]
    assert both.unverified == ()
    # Any order of the known keys gives the note's order.
    assert open_note(msg, [enoch.verifier(), peter.verifier()]) == both

    only_peter = open_note(msg, [peter.verifier()])
    assert [s.name for s in only_peter.signatures] == ["PeterNeumann"]
    assert only_peter.unverified == (enoch_line,)
    assert only_peter.signed_by(peter.verifier()) is not None
    assert only_peter.signed_by(enoch.verifier()) is None

    only_enoch = open_note(msg, [enoch.verifier()])
    assert [s.name for s in only_enoch.signatures] == ["EnochRoot"]
    assert only_enoch.unverified == (peter_line,)
    assert only_enoch.text == text


def test_more_ed25519_keypairs(vectors: dict[str, Any]) -> None:
    pairs = vectors["signed_note"]["more_ed25519_keypairs"]
    assert len(pairs) == 6
    for pair in pairs:
        key = parse_skey(pair["skey"])
        assert format_skey(key) == pair["skey"]
        assert format_vkey(key.verifier()) == pair["vkey"]
        verifier = parse_vkey(pair["vkey"])
        assert verifier == key.verifier()
        assert format_vkey(verifier) == pair["vkey"]
        msg = sign_note("hello\n", [key.signer()])
        assert open_note(msg, [verifier]).signatures[0].key_id == id_of(pair["vkey"])


def test_c2sp_example_verifies(vectors: dict[str, Any]) -> None:
    v = vectors["signed_note"]["c2sp_example"]
    verifier = parse_vkey(v["vkey"])
    assert format_vkey(verifier) == v["vkey"]
    note = open_note(v["signed_note"].encode(), [verifier])
    assert note.text == "This is an example message.\n"
    assert note.signatures == (
        NoteSignature("example.com/foo", id_of(v["vkey"]), ALG_ED25519, None),
    )


def test_sum_golang_org_checkpoint_verifies(vectors: dict[str, Any]) -> None:
    v = vectors["signed_note"]["sum_golang_org_real_checkpoint"]
    verifier = parse_vkey(v["vkey"])
    assert format_vkey(verifier) == v["vkey"]
    note = open_note(v["signed_note"].encode(), [verifier])
    assert note.text.split("\n")[:2] == ["go.sum database tree", "65664258"]
    assert note.signatures[0].key_id == id_of(v["vkey"])


def test_sum_golang_org_checkpoint_rejects_every_single_byte_change(
    vectors: dict[str, Any],
) -> None:
    v = vectors["signed_note"]["sum_golang_org_real_checkpoint"]
    verifier = parse_vkey(v["vkey"])
    msg = v["signed_note"].encode()
    for at in range(len(msg)):
        for bit in range(8):
            changed = bytearray(msg)
            changed[at] ^= 1 << bit
            with pytest.raises(REJECTED):
                open_note(bytes(changed), [verifier])
        for replacement in (b"\n", b" ", b"A", b"\x00"):
            if msg[at : at + 1] != replacement:
                with pytest.raises(REJECTED):
                    open_note(msg[:at] + replacement + msg[at + 1 :], [verifier])
        with pytest.raises(REJECTED):  # a byte dropped
            open_note(msg[:at] + msg[at + 1 :], [verifier])
        with pytest.raises(REJECTED):  # truncated
            open_note(msg[:at], [verifier])
    for extra in (b"\n", b"x", b"\xe2\x80\x94 sum.golang.org AAAA\n"):
        with pytest.raises(REJECTED):
            open_note(msg + extra, [verifier])


def test_negative_vkeys_from_go(vectors: dict[str, Any]) -> None:
    group = vectors["signed_note"]["negative_vkeys_from_TestNewVerifier"]
    vkeys = [k for k in group if "+" in k]
    assert len(vkeys) == 2
    for vkey in vkeys:
        # Each states the right key ID for its bytes: the rejection is for the key itself.
        name, hex_id, key_b64 = vkey.split("+", 2)
        raw = base64.b64decode(key_b64)
        digest = sha256(name.encode() + b"\n" + raw).digest()
        assert digest[:4].hex() == hex_id
        with pytest.raises(MalformedError):
            parse_vkey(vkey)


def test_every_change_of_a_good_vkey_is_rejected(vectors: dict[str, Any]) -> None:
    good = vectors["signed_note"]["PeterNeumann"]["vkey"]
    parse_vkey(good)
    changed: set[str] = set()
    for at in range(len(good)):
        for c in "Aa0zZ9+/= \n-\u00e9\u2014":
            changed.add(good[:at] + c + good[at + 1 :])
        changed.add(good[:at] + good[at + 1 :])
        changed.add(good[:at] + good[at] + good[at:])
    for lo in range(len(good) + 1):
        for hi in range(lo, len(good) + 1):
            changed.add(good[lo:hi])
    changed.discard(good)
    for vkey in changed:
        with pytest.raises(MalformedError):
            parse_vkey(vkey)


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "+",
        "++",
        "PeterNeumann",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+0c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW=",
        "PeterNeumann+c74f20a3+",
    ],
)
def test_malformed_vkeys_are_rejected(vkey: str) -> None:
    with pytest.raises(MalformedError):
        parse_vkey(vkey)


def test_real_world_log_vkeys_parse(vectors: dict[str, Any]) -> None:
    vkeys = vectors["signed_note"]["real_world_log_vkeys"]["vkeys"]
    assert len(vkeys) == 11
    for vkey in vkeys:
        verifier = parse_vkey(vkey)
        assert verifier.alg == ALG_ED25519
        assert verifier.key_id == id_of(vkey)
        assert verifier.name == vkey.split("+")[0]
        assert format_vkey(verifier) == vkey


@pytest.mark.parametrize(
    "skey",
    [
        "",
        "PRIVATE+KEY+PeterNeumann+c74f20a3",
        "private+key+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+C74F20A3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumanm+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDF",
        "PRIVATE+KEY+PeterNeumann+c74f20a3+BIEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKD=",
        "PRIVATE+KEY++c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
    ],
)
def test_malformed_skeys_are_rejected(skey: str) -> None:
    with pytest.raises(MalformedError):
        parse_skey(skey)


def test_signing_key_repr_hides_the_seed(peter: SigningKey) -> None:
    assert peter.seed.hex() not in repr(peter)
    assert base64.b64encode(peter.seed).decode() not in repr(peter)


@pytest.mark.parametrize(
    "name",
    ["", "a+b", "a b", "a\tb", "a\nb", "a\u00a0b", "a\u2028b", "a\u3000b", "a\x00b", "x" * 256],
)
def test_bad_key_names_are_rejected(name: str) -> None:
    with pytest.raises(MalformedError):
        SigningKey(name, bytes(32))
    with pytest.raises(MalformedError):
        Verifier(name, ALG_ED25519, bytes(32))


def test_longest_key_name_is_accepted() -> None:
    key = SigningKey("x" * 255, bytes(32))
    assert parse_vkey(format_vkey(key.verifier())) == key.verifier()
    with pytest.raises(MalformedError):
        SigningKey("\u00e9" * 128, bytes(32))  # 256 bytes of UTF-8


@pytest.mark.parametrize(("alg", "size"), [(0x02, 32), (0x06, 32), (0x01, 31), (0x04, 33)])
def test_verifier_rejects_unknown_types_and_key_sizes(alg: int, size: int) -> None:
    with pytest.raises(MalformedError):
        Verifier("k", alg, bytes(size))


# ---------------------------------------------------------------------------------------------
# cosignature/v1.


def test_cosigner_key_ids(vectors: dict[str, Any]) -> None:
    pub = vectors["cosignature_v1"]["published"]
    cosigner = parse_vkey(pub["cosigner_vkey_type_0x04"])
    assert cosigner.alg == ALG_COSIGNATURE_V1
    assert cosigner.key_id == id_of(pub["cosigner_vkey_type_0x04"])
    assert format_vkey(cosigner) == pub["cosigner_vkey_type_0x04"]

    ed = parse_vkey(pub["ed25519_vkey_type_0x01"])
    co = parse_vkey(pub["same_public_key_as_0x04_cosigner_vkey_(computed)"])
    assert ed.alg == ALG_ED25519
    assert co.alg == ALG_COSIGNATURE_V1
    assert ed.public_key == co.public_key
    assert ed.key_id != co.key_id
    assert (
        format_vkey(Verifier(ed.name, ALG_COSIGNATURE_V1, ed.public_key))
        == (pub["same_public_key_as_0x04_cosigner_vkey_(computed)"])
    )


def test_cosignature_timestamp_vectors(vectors: dict[str, Any]) -> None:
    pub = vectors["cosignature_v1"]["published"]
    vec = pub["cosig_timestamp_vector"]
    raw = base64.b64decode(vec["base64"])
    assert len(raw) == 4 + 8 + 64
    assert cosignature_timestamp(raw[4:]) == vec["timestamp"]

    example = pub["c2sp_example_line"]
    name, sig_b64 = example["line"].removeprefix("\u2014 ").split(" ")
    assert name == "witness.example.com/w1"
    raw = base64.b64decode(sig_b64)
    assert raw[:4].hex() == example["key_id_hex"]
    assert cosignature_timestamp(raw[4:]) == example["timestamp"]
    # Lengths other than 8 + 64, and times past 2**63 - 1, are not cosignatures.
    assert cosignature_timestamp(raw[4:-1]) is None
    assert cosignature_timestamp(raw[4:] + b"\x00") is None
    assert cosignature_timestamp(struct.pack(">Q", 1 << 63) + raw[12:]) is None


def test_cosignature_message_is_the_c2sp_example(vectors: dict[str, Any]) -> None:
    pub = vectors["cosignature_v1"]["published"]
    body = vectors["checkpoint_format"]["c2sp_example"]
    timestamp = pub["c2sp_example_line"]["timestamp"]
    assert cosignature_message(body, timestamp) == pub["c2sp_example_signed_message"].encode()


def test_self_generated_cosignature(vectors: dict[str, Any]) -> None:
    v = vectors["cosignature_v1"]["self_generated"]
    log = SigningKey(v["log"]["name"], bytes.fromhex(v["log"]["ed25519_seed_hex"]))
    witness = SigningKey(v["witness"]["name"], bytes.fromhex(v["witness"]["ed25519_seed_hex"]))
    assert format_vkey(log.verifier()) == v["log"]["vkey"]
    assert format_vkey(witness.verifier(ALG_COSIGNATURE_V1)) == v["witness"]["vkey_type_0x04"]

    body = v["checkpoint_body"]
    timestamp = v["timestamp"]
    assert cosignature_message(body, timestamp) == v["cosigned_message"].encode()
    cosigner = witness.cosigner(timestamp)
    assert cosigner.key_id == id_of(v["witness"]["vkey_type_0x04"])
    assert cosigner.sign(body).hex() == v["cosignature_bytes_hex_(timestamp||sig)"]

    msg = sign_note(body, [log.signer(), cosigner])
    assert msg == v["signed_checkpoint"].encode()

    witness_key = parse_vkey(v["witness"]["vkey_type_0x04"])
    note = open_note(msg, [parse_vkey(v["log"]["vkey"]), witness_key])
    assert note.signatures == (
        NoteSignature(log.name, id_of(v["log"]["vkey"]), ALG_ED25519, None),
        NoteSignature(witness.name, witness_key.key_id, ALG_COSIGNATURE_V1, timestamp),
    )
    # The witness's Ed25519 (type 0x01) key has another ID: the cosignature is not its.
    with pytest.raises(UnknownKeyError):
        open_note(msg, [witness.verifier()])


def test_tampered_cosignature_time_is_rejected(vectors: dict[str, Any]) -> None:
    v = vectors["cosignature_v1"]["self_generated"]
    witness = SigningKey(v["witness"]["name"], bytes.fromhex(v["witness"]["ed25519_seed_hex"]))
    verifier = witness.verifier(ALG_COSIGNATURE_V1)
    signature = witness.cosigner(v["timestamp"]).sign(v["checkpoint_body"])
    verifier.verify(v["checkpoint_body"], signature)
    for at in range(8):  # every byte of the timestamp
        changed = bytearray(signature)
        changed[at] ^= 1
        with pytest.raises(InvalidSignatureError):
            verifier.verify(v["checkpoint_body"], bytes(changed))
    with pytest.raises(InvalidSignatureError):  # no timestamp at all
        verifier.verify(v["checkpoint_body"], signature[8:])
    with pytest.raises(InvalidSignatureError):  # a time past 2**63 - 1
        verifier.verify(v["checkpoint_body"], b"\x80" + signature[1:])
    with pytest.raises(InvalidSignatureError):  # another checkpoint body
        verifier.verify(v["checkpoint_body"].replace("\n8\n", "\n9\n"), signature)


@pytest.mark.parametrize("timestamp", [-1, 1 << 63])
def test_cosigner_time_must_be_int63(timestamp: int) -> None:
    with pytest.raises(MalformedError):
        SigningKey("w", bytes(32)).cosigner(timestamp)


def test_signer_type_rules() -> None:
    key = SigningKey("w", bytes(32))
    with pytest.raises(MalformedError):
        Signer(key, ALG_ED25519, 5)
    with pytest.raises(MalformedError):
        Signer(key, ALG_COSIGNATURE_V1, None)
    with pytest.raises(MalformedError):
        Signer(key, 0x02)


# ---------------------------------------------------------------------------------------------
# open_note rules.


def other_key(name: str, byte: int = 7) -> SigningKey:
    return SigningKey(name, bytes([byte]) * 32)


def test_unknown_signatures_are_kept_but_not_trusted(peter: SigningKey, text: str) -> None:
    stranger = other_key("stranger")
    msg = sign_note(text, [stranger.signer(), peter.signer(), stranger.signer()])
    note = open_note(msg, [peter.verifier()])
    assert [s.name for s in note.signatures] == ["PeterNeumann"]
    # The repeated identical line of the unknown key is reported once.
    assert note.unverified == (signature_line(sign_note(text, [stranger.signer()]), "stranger"),)


def test_a_known_key_with_a_bad_signature_fails_the_note(
    peter: SigningKey, enoch: SigningKey, text: str
) -> None:
    good = sign_note(text, [peter.signer()])
    forged = sign_note("something else\n", [enoch.signer()])
    # Enoch's signature over another text, attached to this one.
    msg = good + signature_line(forged, "EnochRoot").encode() + b"\n"
    assert open_note(msg, [peter.verifier()]).unverified  # unknown Enoch: ignored
    with pytest.raises(InvalidSignatureError) as exc:
        open_note(msg, [peter.verifier(), enoch.verifier()])
    assert exc.value.key_name == "EnochRoot"
    assert exc.value.key_id == enoch.verifier().key_id


def test_a_signature_of_the_wrong_length_fails(peter: SigningKey, text: str) -> None:
    key_id_bytes = struct.pack(">I", peter.verifier().key_id)
    for size in (1, 63, 65, 72):
        sig = base64.b64encode(key_id_bytes + bytes(size)).decode()
        msg = f"{text}\n\u2014 PeterNeumann {sig}\n".encode()
        with pytest.raises(InvalidSignatureError):
            open_note(msg, [peter.verifier()])


def test_a_note_without_a_known_signature_is_unknown(
    peter: SigningKey, enoch: SigningKey, text: str
) -> None:
    msg = sign_note(text, [peter.signer()])
    with pytest.raises(UnknownKeyError):
        open_note(msg, [])
    with pytest.raises(UnknownKeyError):
        open_note(msg, [enoch.verifier()])
    # Same name, another key (so another ID): not Peter's key, ignored.
    impostor = other_key("PeterNeumann")
    with pytest.raises(UnknownKeyError):
        open_note(msg, [impostor.verifier()])
    # The right public key as a cosigner (type 0x04) has another ID: ignored.
    with pytest.raises(UnknownKeyError):
        open_note(msg, [peter.verifier(ALG_COSIGNATURE_V1)])
    # Peter's signature and key ID under another name: the (name, ID) pair is unknown.
    renamed = msg.replace("\u2014 PeterNeumann ".encode(), "\u2014 PaulNeumann ".encode())
    with pytest.raises(UnknownKeyError):
        open_note(renamed, [peter.verifier(), Verifier("PaulNeumann", 1, peter.public_key)])


def test_same_name_other_id_is_ignored_next_to_a_good_signature(
    peter: SigningKey, text: str
) -> None:
    impostor = other_key("PeterNeumann")
    msg = sign_note(text, [impostor.signer(), peter.signer()])
    note = open_note(msg, [peter.verifier()])
    assert [s.key_id for s in note.signatures] == [peter.verifier().key_id]
    assert len(note.unverified) == 1


def test_a_repeated_known_signature_counts_once(peter: SigningKey, text: str) -> None:
    msg = sign_note(text, [peter.signer(), peter.signer()])
    assert len(open_note(msg, [peter.verifier()]).signatures) == 1


def note_from(text: str, lines: list[str]) -> bytes:
    return (text + "\n" + "".join(f"{line}\n" for line in lines)).encode()


def test_note_layout_is_strict(peter: SigningKey, text: str) -> None:
    good = sign_note(text, [peter.signer()])
    line = signature_line(good, "PeterNeumann")
    sig = line.split(" ")[2]
    assert open_note(note_from(text, [line]), [peter.verifier()]).text == text
    bad = [
        good[:-1],  # no final newline
        good + b"\n",  # an empty signature line
        good.replace(b"\n\n", b"\n"),  # no blank line
        text.encode() + b"\n",  # no signature block
        good.replace("\u2014".encode(), b"-"),  # ASCII hyphen for the em dash
        good.replace("\u2014".encode(), "\u2013".encode()),  # en dash
        good.replace("\u2014 ".encode(), "\u2014".encode()),
        good.replace("\u2014 ".encode(), "\u2014  ".encode()),
        note_from(text, [f"\u2014 PeterNeumann  {sig}"]),
        note_from(text, [f"\u2014 PeterNeumann {sig} "]),
        note_from(text, [f"\u2014 PeterNeumann {sig[:-1]}"]),
        note_from(text, [f"\u2014 PeterNeumann {sig.rstrip('=')}"]),
        note_from(text, ["\u2014 PeterNeumann"]),
        note_from(text, ["\u2014 PeterNeumann "]),
        note_from(text, [f"\u2014 Peter+Neumann {sig}"]),
        note_from(text, [f"\u2014  {sig}"]),
        note_from(text, ["\u2014 PeterNeumann AAAA"]),  # shorter than a key ID + 1 byte
        note_from(text, [line, "not a signature"]),
        note_from(text, [line, ""]),
        good.replace(b"\n", b"\r\n"),
        good.replace(b"\n\n", b"\n\r\n"),
        good.replace(b"problem,", b"problem,\r"),
        good.replace(b"problem,", b"problem,\t"),
        good.replace(b"problem,", b"problem,\x00"),
        good.replace(b"problem,", b"problem,\x7f"),
        good[:-1] + b"\r\n",
        good[:-1] + b"\t\n",
        good + b"\xff",
        good.replace(b"problem,", b"problem,\xc0\x8a"),  # an overlong newline
        good.replace(b"problem,", b"problem,\xed\xa0\x80"),  # a UTF-8 surrogate
    ]
    for msg in bad:
        with pytest.raises(MalformedError):
            open_note(msg, [peter.verifier()])


def test_signature_count_limit(peter: SigningKey, text: str) -> None:
    strangers = [other_key(f"s{i}", i % 256) for i in range(MAX_SIGNATURES)]
    lines = [signature_line(sign_note(text, [k.signer()]), k.name) for k in strangers]
    mine = signature_line(sign_note(text, [peter.signer()]), "PeterNeumann")
    # C2SP: verifiers accept at least 16 signatures; this one accepts up to the cap.
    for count in (16, MAX_SIGNATURES):
        note = open_note(note_from(text, [*lines[: count - 1], mine]), [peter.verifier()])
        assert len(note.unverified) == count - 1
    with pytest.raises(MalformedError):
        open_note(note_from(text, [*lines, mine]), [peter.verifier()])


def test_note_size_limit(peter: SigningKey) -> None:
    overhead = len(sign_note("\n", [peter.signer()])) - 1
    text = "a" * (MAX_NOTE_SIZE - overhead - 1) + "\n"
    msg = sign_note(text, [peter.signer()])
    assert len(msg) == MAX_NOTE_SIZE
    assert open_note(msg, [peter.verifier()]).text == text
    bigger = sign_note("a" + text, [peter.signer()])
    assert len(bigger) == MAX_NOTE_SIZE + 1
    with pytest.raises(MalformedError):
        open_note(bigger, [peter.verifier()])


def test_note_text_may_hold_blank_lines(peter: SigningKey) -> None:
    for text in ("\n", "a\n\n", "a\n\nb\n", "\n\n\n", "a\n\n\u2014 x AAAAAAAA\n"):
        msg = sign_note(text, [peter.signer()])
        assert open_note(msg, [peter.verifier()]).text == text


@pytest.mark.parametrize("text", ["", "no newline", "a\n\nb", "a\r\n", "\ta\n", "a\x00\n"])
def test_sign_note_rejects_bad_text(peter: SigningKey, text: str) -> None:
    with pytest.raises(MalformedError):
        sign_note(text, [peter.signer()])


def test_sign_note_needs_a_signer(text: str) -> None:
    with pytest.raises(MalformedError):
        sign_note(text, [])


# ---------------------------------------------------------------------------------------------
# Round trips.

note_texts = st.text(
    alphabet=st.one_of(st.characters(exclude_categories=("Cc", "Cs")), st.just("\n")),
    max_size=200,
).map(lambda t: t + "\n")

key_names = st.text(
    alphabet=st.characters(
        exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters="+"
    ),
    min_size=1,
    max_size=40,
).filter(lambda n: not any(c.isspace() for c in n))


@settings(max_examples=60)
@given(note_texts, key_names, st.binary(min_size=32, max_size=32), key_names)
def test_sign_then_open(text: str, name: str, seed: bytes, other_name: str) -> None:
    key = SigningKey(name, seed)
    verifier = parse_vkey(format_vkey(key.verifier()))
    assert parse_skey(format_skey(key)) == key
    msg = sign_note(text, [key.signer()])
    note = open_note(msg, [verifier])
    assert note.text == text
    assert note.signatures == (NoteSignature(name, verifier.key_id, ALG_ED25519, None),)

    witness = SigningKey(other_name, seed[::-1])
    cosigned = sign_note(text, [key.signer(), witness.cosigner(1_700_000_000)])
    both = open_note(cosigned, [verifier, witness.verifier(ALG_COSIGNATURE_V1)])
    assert both.text == text
    assert [s.timestamp_s for s in both.signatures] == [None, 1_700_000_000]


@settings(max_examples=60)
@given(note_texts, st.binary(min_size=32, max_size=32), st.data())
def test_a_changed_text_is_rejected(text: str, seed: bytes, data: st.DataObject) -> None:
    key = SigningKey("log", seed)
    msg = sign_note(text, [key.signer()])
    encoded = text.encode()
    at = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    changed = bytearray(msg)
    changed[at] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    with pytest.raises(REJECTED):
        open_note(bytes(changed), [key.verifier()])


def test_verify_messages_answers_each_item_in_order() -> None:
    key = SigningKey("edge-1", bytes(range(32)))
    other = SigningKey("edge-1", bytes(range(1, 33)))
    vkey, other_vkey = format_vkey(key.verifier()), format_vkey(other.verifier())
    good = key.sign(b"m")
    answers = verify_messages(
        [
            (vkey, b"m", good),
            (vkey, b"n", good),  # another message
            (other_vkey, b"m", good),  # another key of the same name
            (vkey, b"m", good[:63]),  # a short signature
            ("not a key", b"m", good),  # a malformed key string
            (vkey, b"m", good),
        ]
    )
    assert answers[0] is None and answers[5] is None
    assert answers[1] == f"signature does not verify: key edge-1+{key.verifier().key_id:08x}"
    assert answers[2] == f"signature does not verify: key edge-1+{other.verifier().key_id:08x}"
    assert answers[3] is not None and "not 64 bytes" in answers[3]
    assert answers[4] is not None and answers[4].startswith("vkey")
    assert verify_messages([]) == []
