"""portal/static/js/tlog.js, run in Chromium, against the vectors the Python core is tested on.

The browser's verification is only worth something if it is the same verification as
``tlog``'s. So each test feeds the published vectors of tests/vectors/vectors.json (and
bundles and receipts made by the Python code) to the JavaScript module in a real Chromium,
and compares its verdict, and where tlog gives one its error message, with the Python
core's on the same input: a JS bug that accepts a bad proof or rejects a good one fails here.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.portal.conftest import LiveLog
from tests.tlog.test_proofs import run_consistency_probe, run_inclusion_probe
from tlog.bundle import ProofBundle, format_bundle
from tlog.checkpoint import Checkpoint, sign_checkpoint
from tlog.entry import Receipt, encode_entry, sign_receipt, signed_message
from tlog.hashing import leaf_hash
from tlog.merkle import MemoryHashStore, root_hash
from tlog.note import SigningKey, format_vkey
from tlog.proofs import inclusion_proof

pytestmark = pytest.mark.browser

JS = Callable[[str, object], Any]


@pytest.fixture
def js(page: Page, live_log: LiveLog) -> JS:
    """Run an async function body in the page with ``t`` (tlog.js) and ``arg`` in scope."""
    page.goto(live_log.portal("index.html"))

    def run(body: str, arg: object = None) -> Any:
        return page.evaluate(
            "async (arg) => { const t = await import('./js/tlog.js');\n" + body + "\n}", arg
        )

    return run


ERROR = """
const verdict = async (f) => {
  try { await f(); return null; }
  catch (e) {
    if (!["ProofError", "MalformedError", "SignatureError"].includes(e.name)) throw e;
    return e.message;
  }
};
"""


def _hexes(b64s: list[str] | None) -> list[str]:
    return [base64.b64decode(h).hex() for h in b64s or []]


# -- hashing ------------------------------------------------------------------------------------


def test_rfc6962_hashes(js: JS, vectors: dict[str, Any]) -> None:
    want = vectors["rfc6962_hasher"]["vectors"]
    got = js(
        """
        const u = t.utf8;
        return {
          empty: t.hex(t.EMPTY_ROOT),
          leafEmpty: t.hex(await t.leafHash(new Uint8Array())),
          leaf: t.hex(await t.leafHash(u("L123456"))),
          node: t.hex(await t.nodeHash(u("N123"), u("N456"))),
        };
        """
    )
    assert got == {
        "empty": want["empty_tree_root"],
        "leafEmpty": want["leaf_hash_of_empty_input"],
        "leaf": want["leaf_hash_of_ascii_L123456"],
        "node": want["node_hash_of_ascii_N123_N456"],
    }


# -- proofs -------------------------------------------------------------------------------------

RUN_INCLUSION = (
    ERROR
    + """
return Promise.all(arg.map((p) => verdict(() => t.verifyInclusion(
  t.fromHex(p.leaf), BigInt(p.index), BigInt(p.size), p.proof.map(t.fromHex), t.fromHex(p.root)))));
"""
)
RUN_CONSISTENCY = (
    ERROR
    + """
return Promise.all(arg.map((p) => verdict(() => t.verifyConsistency(
  BigInt(p.old), BigInt(p.new), p.proof.map(t.fromHex),
  t.fromHex(p.oldRoot), t.fromHex(p.newRoot)))));
"""
)


def test_transparency_dev_inclusion_probes_get_tlogs_verdicts(
    js: JS, vectors: dict[str, Any]
) -> None:
    probes = vectors["transparency_dev_inclusion_probes"]["probes"]
    cases = [
        {
            "leaf": base64.b64decode(p["leafHash"]).hex(),
            "index": str(p["leafIdx"]),
            "size": str(p["treeSize"]),
            "proof": _hexes(p["proof"]),
            "root": base64.b64decode(p["root"]).hex(),
        }
        for p in probes
    ]
    got = js(RUN_INCLUSION, cases)
    want = [None if (err := run_inclusion_probe(p)) is None else str(err) for p in probes]
    assert sum(w is None for w in want) > 0 and sum(w is not None for w in want) > 0
    assert [(p["_file"], g) for p, g in zip(probes, got, strict=True)] == [
        (p["_file"], w) for p, w in zip(probes, want, strict=True)
    ]


def test_transparency_dev_consistency_probes_get_tlogs_verdicts(
    js: JS, vectors: dict[str, Any]
) -> None:
    probes = vectors["transparency_dev_consistency_probes"]["probes"]
    cases = [
        {
            "old": str(p["size1"]),
            "new": str(p["size2"]),
            "proof": _hexes(p["proof"]),
            "oldRoot": base64.b64decode(p["root1"]).hex(),
            "newRoot": base64.b64decode(p["root2"]).hex(),
        }
        for p in probes
    ]
    got = js(RUN_CONSISTENCY, cases)
    want = [None if (err := run_consistency_probe(p)) is None else str(err) for p in probes]
    assert sum(w is None for w in want) > 0 and sum(w is not None for w in want) > 0
    assert [(p["_file"], g) for p, g in zip(probes, got, strict=True)] == [
        (p["_file"], w) for p, w in zip(probes, want, strict=True)
    ]


def _flip(hex_hash: str) -> str:
    return f"{int(hex_hash[:2], 16) ^ 1:02x}" + hex_hash[2:]


def test_every_ct8_proof_verifies_and_fails_with_one_bit_changed(
    js: JS, vectors: dict[str, Any]
) -> None:
    tree = vectors["ct_8_leaf_tree"]
    roots = tree["root_hash_by_tree_size_hex"]
    leaves = tree["leaf_hashes_hex"]
    inclusion = [
        {"leaf": leaves[int(i)], "index": i, "size": n, "proof": path, "root": roots[n]}
        for key, path in tree["inclusion_paths_hex"].items()
        if not key.startswith("_")
        for i, n in [key.split("/")]
    ]
    consistency = [
        {"old": m, "new": n, "proof": proof, "oldRoot": roots[m], "newRoot": roots[n]}
        for key, proof in tree["consistency_proofs_hex"].items()
        if not key.startswith("_")
        for m, n in [key.split("/")]
    ]
    assert len(inclusion) == 36 and len(consistency) >= 28
    assert js(RUN_INCLUSION, inclusion) == [None] * len(inclusion)
    assert js(RUN_CONSISTENCY, consistency) == [None] * len(consistency)

    bad_inclusion = [
        {**c, "proof": [_flip(c["proof"][0]), *c["proof"][1:]]} for c in inclusion if c["proof"]
    ]
    assert all(js(RUN_INCLUSION, bad_inclusion))
    bad_roots = [{**c, "newRoot": _flip(c["newRoot"])} for c in consistency]
    assert all(js(RUN_CONSISTENCY, bad_roots))


def test_go_tlog_proofs_in_a_tree_of_1000(js: JS, vectors: dict[str, Any]) -> None:
    storage = vectors["go_tlog_storage"]
    roots = storage["root_by_size_hex"]
    leaf_777 = leaf_hash(b"leaf 777").hex()
    inclusion = [
        {
            "leaf": leaf_777,
            "index": "777",
            "size": "1000",
            "proof": storage["inclusion_777_in_1000_hex"],
            "root": roots["1000"],
        }
    ]
    consistency = [
        {
            "old": old,
            "new": "1000",
            "proof": storage[f"consistency_{old}_to_1000_hex"],
            "oldRoot": roots[old],
            "newRoot": roots["1000"],
        }
        for old in ("513", "256")
    ]
    assert js(RUN_INCLUSION, inclusion) == [None]
    assert js(RUN_CONSISTENCY, consistency) == [None, None]
    wrong_leaf = [{**inclusion[0], "leaf": leaf_hash(b"leaf 778").hex()}]
    assert js(RUN_INCLUSION, wrong_leaf)[0].startswith("inclusion proof does not lead to the root")


# -- signed notes, keys, checkpoints --------------------------------------------------------------

OPEN_NOTE = (
    ERROR
    + """
return Promise.all(arg.map(async ({note, vkeys}) => {
  let opened = null;
  const error = await verdict(async () => {
    const keys = await Promise.all(vkeys.map(t.parseVkey));
    opened = await t.openNote(t.utf8(note), keys);
  });
  return error ?? opened.signatures.map((s) => `${s.name}+${t.keyIdHex(s.keyId)}`);
}));
"""
)


def _changed(note: str) -> str:
    """The note with one character of its text changed."""
    return ("i" if note[0] != "i" else "I") + note[1:]


def test_signed_notes_verify_under_their_keys_and_fail_when_changed(
    js: JS, vectors: dict[str, Any]
) -> None:
    notes = vectors["signed_note"]
    peter, enoch = notes["PeterNeumann"], notes["EnochRoot"]
    cases = [
        (peter["signed_note"], [peter["vkey"]], ["PeterNeumann+c74f20a3"]),
        (enoch["doubly_signed_note"], [enoch["vkey"]], ["EnochRoot+af0cfe78"]),
        (
            enoch["doubly_signed_note"],
            [peter["vkey"], enoch["vkey"]],
            ["PeterNeumann+c74f20a3", "EnochRoot+af0cfe78"],
        ),
        (notes["c2sp_example"]["signed_note"], [notes["c2sp_example"]["vkey"]], None),
        (
            notes["sum_golang_org_real_checkpoint"]["signed_note"],
            [notes["sum_golang_org_real_checkpoint"]["vkey"]],
            None,
        ),
    ]
    got = js(OPEN_NOTE, [{"note": note, "vkeys": vkeys} for note, vkeys, _ in cases])
    for (_, vkeys, names), result in zip(cases, got, strict=True):
        assert isinstance(result, list), result
        assert result == (names or ["+".join(vkeys[0].split("+")[:2])])

    tampered = js(OPEN_NOTE, [{"note": _changed(note), "vkeys": vkeys} for note, vkeys, _ in cases])
    assert all(isinstance(r, str) and "does not verify" in r for r in tampered), tampered
    unknown = js(OPEN_NOTE, [{"note": peter["signed_note"], "vkeys": [enoch["vkey"]]}])
    assert unknown == ["the note carries no signature by a known key"]


def test_bad_verifier_keys_are_refused(js: JS, vectors: dict[str, Any]) -> None:
    notes = vectors["signed_note"]
    good = notes["PeterNeumann"]["vkey"]
    negative = [k for k in notes["negative_vkeys_from_TestNewVerifier"] if "+" in k]
    bad = [*negative, good.replace("c74f20a3", "c74f20a4"), good[:-2] + "XX", good + "+"]
    got = js(
        ERROR + "return Promise.all(arg.map((k) => verdict(() => t.parseVkey(k))));",
        [*bad, good, *notes["real_world_log_vkeys"]["vkeys"]],
    )
    assert all(got[: len(bad)]), got
    assert got[len(bad) :] == [None] * (1 + len(notes["real_world_log_vkeys"]["vkeys"]))


def test_a_witness_cosignature_counts_toward_the_quorum(js: JS, vectors: dict[str, Any]) -> None:
    generated = vectors["cosignature_v1"]["self_generated"]
    run = (
        ERROR
        + """
const log = await t.parseVkey(arg.log);
const witness = await t.parseVkey(arg.witness);
let opened = null;
const error = await verdict(async () => {
  opened = await t.openCheckpoint(t.utf8(arg.note), [log], {witnesses: [witness], quorum: 1});
});
return error ?? [opened.checkpoint.origin, String(opened.checkpoint.treeSize),
                 opened.witnesses.map((w) => w.name)];
"""
    )
    arg = {
        "log": generated["log"]["vkey"],
        "witness": generated["witness"]["vkey_type_0x04"],
        "note": generated["signed_checkpoint"],
    }
    assert js(run, arg) == ["example.com/usage-log", "8", ["witness.example.com/w1"]]
    # The witness line's timestamp is signed: change it and the cosignature fails.
    lines = arg["note"].split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("— witness.example.com/w1"))
    name, b64 = lines[at].rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[11] ^= 1  # the low byte of the 8-byte timestamp after the 4-byte key ID
    lines[at] = f"{name} {base64.b64encode(bytes(raw)).decode()}"
    assert "does not verify" in js(run, {**arg, "note": "\n".join(lines)})


def test_checkpoints_parse_strictly(js: JS, vectors: dict[str, Any]) -> None:
    example = vectors["checkpoint_format"]["c2sp_example"]
    root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    run = (
        ERROR
        + """
return Promise.all(arg.map(async (text) => {
  let cp = null;
  const error = await verdict(async () => { cp = t.parseCheckpoint(text); });
  return error ?? [cp.origin, String(cp.treeSize), t.encodeB64(cp.rootHash)];
}));
"""
    )
    rejects = [
        f"origin\n012\n{root}\n",
        "origin\n12\nAAAA\n",
        f"Log\n-34\n{root}\n",
        f"Log\n123\n{root}",
        f"\n9944\n{root}\n",
        f"Log\n{1 << 63}\n{root}\n",
        f"Log\n0\n{root}\n",
    ]
    got = js(run, [example, *rejects])
    assert got[0] == ["example.com/behind-the-sofa", "20852163", root]
    assert all(isinstance(r, str) for r in got[1:]), got


# -- bundles and receipts made by the Python code ---------------------------------------------

LOG_KEY = SigningKey("log.example/portal", bytes(range(1, 33)))
EDGE_KEY = SigningKey("edge-js", bytes(range(40, 72)))

VERIFY_BUNDLE = (
    ERROR
    + """
const logKey = await t.parseVkey(arg.log);
const edgeKey = await t.parseVkey(arg.edge);
return Promise.all(arg.bundles.map((text) => verdict(async () => {
  const bundle = t.parseBundle(t.utf8(text));
  const opened = await t.openCheckpoint(bundle.checkpoint, [logKey]);
  await t.verifyInclusion(await t.leafHash(bundle.extra), bundle.index,
                          opened.checkpoint.treeSize, bundle.proof, opened.checkpoint.rootHash);
  await t.verifyReceipt(t.parseEntry(bundle.extra), edgeKey);
})));
"""
)


def _receipt(i: int, **fields: object) -> Receipt:
    values: dict[str, object] = {
        "request_id": f"js-{i}",
        "edge": EDGE_KEY.name,
        "consumer_id": "acme-ai",
        "token_id": "tok-1",
        "scope": "training",
        "content_id": "sha256:" + f"{i:02x}" * 32,
        "creator_id": "acct:alice@example.com",
        "manifest": "sha256:" + "cd" * 32,
        "bytes_sent": 1000 + i,
        "cache": "miss",
        "served_at_ms": 1_700_000_000_000 + i,
        "logged_at_ms": 1_700_000_000_500 + i,
        **fields,
    }
    return sign_receipt(Receipt(**values), EDGE_KEY)  # type: ignore[arg-type]


def _bundles(receipts: list[Receipt]) -> list[str]:
    entries = [encode_entry(r) for r in receipts]
    store = MemoryHashStore()
    for entry in entries:
        store.append([leaf_hash(entry)])
    size = len(entries)
    note = sign_checkpoint(
        Checkpoint("log.example/portal", size, root_hash(size, store)), [LOG_KEY.signer()]
    )
    return [
        format_bundle(ProofBundle(i, tuple(inclusion_proof(i, size, store)), note, e)).decode()
        for i, e in enumerate(entries)
    ]


def test_bundles_from_tlog_verify_in_the_browser_and_tampering_fails(js: JS) -> None:
    receipts = [
        _receipt(0),
        _receipt(1, job_id="job-7"),
        _receipt(2, sample_rate=(1, 10)),
        _receipt(3, cache="hit", job_id='q"\\x'),  # JSON escapes in the signed bytes
        _receipt(4),
    ]
    bundles = _bundles(receipts)
    arg = {
        "log": format_vkey(LOG_KEY.verifier()),
        "edge": format_vkey(EDGE_KEY.verifier()),
        "bundles": bundles,
    }
    assert js(VERIFY_BUNDLE, arg) == [None] * len(bundles)

    first = bundles[1].split("\n")
    # index line changed: the path now leads elsewhere
    moved = "\n".join(line if not line.startswith("index ") else "index 0" for line in first)
    # a proof hash changed
    hashed = "\n".join([*first[:3], base64.b64encode(bytes(32)).decode(), *first[4:]])
    # the checkpoint's root changed (its signature no longer verifies)
    root_line = first.index("") + 3  # after the blank line: origin, size, root
    rooted = "\n".join([*first[:root_line], "A" * 43 + "=", *first[root_line + 1 :]])
    # the entry changed and re-encoded: bytes_sent 1001 -> 9001 (the leaf no longer matches)
    extra = base64.b64decode(first[1].removeprefix("extra "))
    forged = extra.replace(b'"bytes_sent":1001', b'"bytes_sent":9001')
    assert forged != extra
    swapped = "\n".join([first[0], "extra " + base64.b64encode(forged).decode(), *first[2:]])
    got = js(VERIFY_BUNDLE, {**arg, "bundles": [moved, hashed, rooted, swapped]})
    assert got[0].startswith("inclusion proof does not lead to the root"), got
    assert got[1].startswith("inclusion proof does not lead to the root"), got
    assert "does not verify" in got[2], got
    assert got[3].startswith("inclusion proof does not lead to the root"), got


def test_the_receipt_signature_covers_exactly_what_tlog_signs(js: JS) -> None:
    receipts = [
        _receipt(0),
        _receipt(1, job_id="job-7"),
        _receipt(2, sample_rate=(3, 7)),
        _receipt(3, job_id='q"\\x'),
    ]
    run = """
return arg.map((e) => t.hex(t.signedMessage(t.parseEntry(t.utf8(e)))));
"""
    got = js(run, [encode_entry(r).decode() for r in receipts])
    assert got == [signed_message(r).hex() for r in receipts]

    # A field the edge signed, changed after signing, fails the signature check alone.
    entry = encode_entry(receipts[1]).replace(b'"job_id":"job-7"', b'"job_id":"job-8"')
    check = (
        ERROR
        + """
const key = await t.parseVkey(arg.edge);
return verdict(() => t.verifyReceipt(t.parseEntry(t.utf8(arg.entry)), key));
"""
    )
    edge = format_vkey(EDGE_KEY.verifier())
    assert js(check, {"edge": edge, "entry": encode_entry(receipts[1]).decode()}) is None
    assert "does not verify" in js(check, {"edge": edge, "entry": entry.decode()})
    other = format_vkey(SigningKey(EDGE_KEY.name, bytes(32)).verifier())
    assert "not by the key given" in js(
        check, {"edge": other, "entry": encode_entry(receipts[1]).decode()}
    )
