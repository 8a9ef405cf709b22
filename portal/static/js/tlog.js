// The verifying half of meterlog's tlog package, for the browser: RFC 6962 hashing, RFC 9162
// inclusion and consistency proof verification, C2SP signed notes (Ed25519 and
// cosignature/v1), checkpoints, verifier keys, tlog-proof bundles and the bytes an entry's
// signature covers. It mirrors tlog/hashing.py, tlog/proofs.py, tlog/note.py,
// tlog/checkpoint.py, tlog/bundle.py and tlog/entry.py's signed_message function by function,
// with the same checks and the same error messages, and is tested against the same vectors
// (tests/vectors/vectors.json) in Chromium by tests/portal/test_tlog_js.py.
//
// Hashes and signatures go through WebCrypto (crypto.subtle SHA-256 and Ed25519), never
// through code of ours. Sizes and indexes are BigInt: a tree may hold up to 2**64 leaves.
// Every verify* function throws (ProofError, SignatureError, MalformedError) and never
// returns false, as the Python core does.

/** A proof that does not verify. `expected` and `calculated` are hashes, when known. */
export class ProofError extends Error {
  constructor(message, expected = null, calculated = null) {
    super(expected && calculated ? `${message} (expected root ${hex(expected)}, calculated ${hex(calculated)})` : message);
    this.name = "ProofError";
    this.expected = expected;
    this.calculated = calculated;
  }
}

/** Input that is not in the format at all; `field` names what is wrong. */
export class MalformedError extends Error {
  constructor(field, reason) {
    super(`${field}: ${reason}`);
    this.name = "MalformedError";
    this.field = field;
    this.reason = reason;
  }
}

/** A signature that does not verify, or no signature by a key the caller trusts. */
export class SignatureError extends Error {
  constructor(message) {
    super(message);
    this.name = "SignatureError";
  }
}

// -- bytes -----------------------------------------------------------------------------------

const ENCODER = new TextEncoder();
const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true });

export function utf8(text) {
  return ENCODER.encode(text);
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text) {
  if (text.length % 2 || /[^0-9a-f]/i.test(text)) throw new MalformedError("hex", "not hexadecimal");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Standard padded base64, strictly (as tlog.parsing.decode_b64: canonical, no whitespace). */
export function decodeB64(text, field) {
  if (typeof text !== "string" || !B64.test(text)) throw new MalformedError(field, "not canonical base64");
  const binary = atob(text);
  const out = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  if (encodeB64(out) !== text) throw new MalformedError(field, "not canonical base64");
  return out;
}

export function encodeB64(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

const MAX_INT63 = (1n << 63n) - 1n;

/** A canonical decimal (no sign, no leading zero) in 0..2**63-1, as tlog.parsing.parse_decimal. */
export function parseDecimal(text, field) {
  if (!/^(0|[1-9][0-9]{0,18})$/.test(text)) throw new MalformedError(field, `${JSON.stringify(text)} is not a canonical decimal`);
  const value = BigInt(text);
  if (value > MAX_INT63) throw new MalformedError(field, `${text} is larger than 2**63-1`);
  return value;
}

// -- RFC 6962 hashing (tlog/hashing.py) -------------------------------------------------------

export const HASH_SIZE = 32;

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

/** SHA-256(0x00 || entry): the leaf hash of one entry. */
export async function leafHash(entry) {
  return sha256(concat(Uint8Array.of(0), entry));
}

/** SHA-256(0x01 || left || right): the hash of an interior node. */
export async function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

/** MTH({}): the root hash of the empty tree, SHA-256(""). */
export const EMPTY_ROOT = fromHex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

// -- RFC 9162 proof verification (tlog/proofs.py) --------------------------------------------

export const MAX_PROOF_LENGTH = 64;
export const MAX_CONSISTENCY_PROOF_LENGTH = MAX_PROOF_LENGTH + 1;
const UINT64_LIMIT = 1n << 64n;

function checkUint64(value, field) {
  if (typeof value !== "bigint") throw new ProofError(`${field} is not an integer`);
  if (value < 0n || value >= UINT64_LIMIT) throw new ProofError(`${field} ${value} is outside uint64`);
}

function checkHash(value, field) {
  if (!(value instanceof Uint8Array) || value.length !== HASH_SIZE) {
    throw new ProofError(`${field} is not a ${HASH_SIZE}-byte hash`);
  }
}

function checkProof(proof, maxLength) {
  if (proof.length > maxLength) throw new ProofError(`proof has ${proof.length} hashes, more than ${maxLength}`);
  proof.forEach((h, i) => checkHash(h, `proof[${i}]`));
}

/**
 * Check that `leaf` (SHA-256(0x00 || entry)) is leaf `index` of the tree (`treeSize`,
 * `root`): RFC 9162 2.1.3.2, including the final sn == 0 check. Sizes are BigInt.
 * Calls `onStep({level, sibling, hash})` after each hash, for pages that show the path.
 */
export async function verifyInclusion(leaf, index, treeSize, proof, root, onStep = null) {
  checkUint64(index, "index");
  checkUint64(treeSize, "tree_size");
  checkHash(leaf, "leaf_hash");
  checkHash(root, "root_hash");
  checkProof(proof, MAX_PROOF_LENGTH);
  if (index >= treeSize) throw new ProofError(`index ${index} is not below tree_size ${treeSize}`);

  let fn = index;
  let sn = treeSize - 1n;
  let r = leaf;
  for (const [level, p] of proof.entries()) {
    if (sn === 0n) throw new ProofError("proof is longer than the path to the root");
    let side;
    if (fn & 1n || fn === sn) {
      r = await nodeHash(p, r);
      side = "left";
      if (!(fn & 1n)) {
        // fn is the last node of its level and has no right sibling: climb past every level
        // where that stays true.
        while (fn && !(fn & 1n)) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
      side = "right";
    }
    fn >>= 1n;
    sn >>= 1n;
    if (onStep) onStep({ level, side, sibling: p, hash: r });
  }
  if (sn !== 0n) throw new ProofError("proof is shorter than the path to the root");
  if (!equalBytes(r, root)) throw new ProofError("inclusion proof does not lead to the root", root, r);
}

/**
 * Check that the tree (oldSize, oldRoot) is a prefix of (newSize, newRoot): RFC 9162 2.1.4.2,
 * with tlog's policy outside 0 < oldSize < newSize (equal sizes: an empty proof and equal
 * roots; old size 0: an empty proof and the empty root).
 */
export async function verifyConsistency(oldSize, newSize, proof, oldRoot, newRoot) {
  checkUint64(oldSize, "old_size");
  checkUint64(newSize, "new_size");
  checkHash(oldRoot, "old_root");
  checkHash(newRoot, "new_root");
  checkProof(proof, MAX_CONSISTENCY_PROOF_LENGTH);
  if (oldSize > newSize) throw new ProofError(`old_size ${oldSize} is larger than new_size ${newSize}`);
  if (oldSize === newSize) {
    if (proof.length) throw new ProofError("a proof between equal sizes must be empty");
    if (!equalBytes(oldRoot, newRoot)) throw new ProofError("two roots for one tree size", oldRoot, newRoot);
    if (oldSize === 0n && !equalBytes(oldRoot, EMPTY_ROOT)) {
      throw new ProofError("the root of the empty tree must be SHA-256('')", EMPTY_ROOT, oldRoot);
    }
    return;
  }
  if (oldSize === 0n) {
    if (proof.length) throw new ProofError("a proof from the empty tree must be empty");
    if (!equalBytes(oldRoot, EMPTY_ROOT)) {
      throw new ProofError("the root of the empty tree must be SHA-256('')", EMPTY_ROOT, oldRoot);
    }
    return;
  }
  if (!proof.length) throw new ProofError("empty consistency proof between different sizes");

  const path = [...proof];
  // A power-of-two old tree is itself a complete subtree, left out of the proof.
  if ((oldSize & (oldSize - 1n)) === 0n) path.unshift(oldRoot);
  let fn = oldSize - 1n;
  let sn = newSize - 1n;
  while (fn & 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) throw new ProofError("proof is longer than needed");
    if (fn & 1n || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if (!(fn & 1n)) {
        while (fn && !(fn & 1n)) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new ProofError("proof is shorter than needed");
  if (!equalBytes(fr, oldRoot)) throw new ProofError("proof does not lead to the old root", oldRoot, fr);
  if (!equalBytes(sr, newRoot)) throw new ProofError("proof does not lead to the new root", newRoot, sr);
}

// -- C2SP signed notes and keys (tlog/note.py) -----------------------------------------------

export const ALG_ED25519 = 0x01;
export const ALG_COSIGNATURE_V1 = 0x04;
const MAX_NOTE_SIZE = 1 << 20;
const MAX_SIGNATURES = 100;
const EM_DASH = "\u2014 ";
const MAX_TIMESTAMP = (1n << 63n) - 1n;
// Control characters (Unicode category Cc) and space separators (Zs), as note.py refuses them.
const CONTROL = /\p{Cc}/u;
const CONTROL_OR_SPACE = /[\p{Cc}\p{Zs}\s]/u;

function checkName(name) {
  if (!name) throw new MalformedError("key.name", "empty");
  if (name.includes("+")) throw new MalformedError("key.name", `${JSON.stringify(name)} contains '+'`);
  if (CONTROL_OR_SPACE.test(name)) {
    throw new MalformedError("key.name", `${JSON.stringify(name)} contains whitespace or a control character`);
  }
  if (utf8(name).length > 255) throw new MalformedError("key.name", "longer than 255 bytes");
}

/** SHA-256(name || 0x0A || alg || public key)[:4], as a uint32 number. */
export async function keyId(name, alg, publicKey) {
  const digest = await sha256(concat(utf8(name), Uint8Array.of(0x0a, alg), publicKey));
  return new DataView(digest.buffer).getUint32(0);
}

function keyIdHex(id) {
  return id.toString(16).padStart(8, "0");
}

/** What a cosignature/v1 signs: a header with the time, then the whole checkpoint text. */
export function cosignatureMessage(text, timestampS) {
  return utf8(`cosignature/v1\ntime ${timestampS}\n${text}`);
}

/** A raw Ed25519 signature check through WebCrypto: true or false, never throws on a bad one. */
export async function ed25519Verify(publicKey, message, signature) {
  if (signature.length !== 64) return false;
  const key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
  return crypto.subtle.verify({ name: "Ed25519" }, key, signature, message);
}

/**
 * A public note key {name, alg, publicKey, keyId}, checked as tlog.note.Verifier: a valid
 * name, type 0x01 or 0x04, a 32-byte key. `vkey` is its string form.
 */
export async function makeVerifier(name, alg, publicKey) {
  checkName(name);
  if (alg !== ALG_ED25519 && alg !== ALG_COSIGNATURE_V1) {
    throw new MalformedError("key.alg", `unknown signature type 0x${alg.toString(16).padStart(2, "0")}`);
  }
  if (publicKey.length !== 32) throw new MalformedError("key.public_key", `${publicKey.length} bytes, not 32`);
  const id = await keyId(name, alg, publicKey);
  const vkey = `${name}+${keyIdHex(id)}+${encodeB64(concat(Uint8Array.of(alg), publicKey))}`;
  return { name, alg, publicKey, keyId: id, vkey };
}

/** Parse a verifier key string `<name>+<hex id>+<base64 key>`, recomputing its key ID. */
export async function parseVkey(vkey) {
  const plus1 = vkey.indexOf("+");
  const plus2 = plus1 < 0 ? -1 : vkey.indexOf("+", plus1 + 1);
  if (plus1 < 0 || plus2 < 0) throw new MalformedError("vkey", "not <name>+<hex id>+<base64 key>");
  const name = vkey.slice(0, plus1);
  const hexId = vkey.slice(plus1 + 1, plus2);
  const raw = decodeB64(vkey.slice(plus2 + 1), "vkey.key");
  if (!/^[0-9a-f]{8}$/.test(hexId)) throw new MalformedError("vkey.key_id", `${JSON.stringify(hexId)} is not 8 lowercase hex digits`);
  if (raw.length < 1) throw new MalformedError("vkey.key", "empty");
  const verifier = await makeVerifier(name, raw[0], raw.slice(1));
  if (verifier.keyId !== parseInt(hexId, 16)) {
    throw new MalformedError("vkey.key_id", `${hexId} does not match the key (${keyIdHex(verifier.keyId)})`);
  }
  return verifier;
}

/** The cosigner (type 0x04) twin of an Ed25519 key: the same name and public key. */
export async function cosignerOf(verifier) {
  return makeVerifier(verifier.name, ALG_COSIGNATURE_V1, verifier.publicKey);
}

function cosignatureTimestamp(signature) {
  if (signature.length !== 8 + 64) return null;
  const timestamp = new DataView(signature.buffer, signature.byteOffset).getBigUint64(0);
  return timestamp <= MAX_TIMESTAMP ? timestamp : null;
}

/**
 * Check one signature (without its key ID) by `verifier` over a note's text; throws
 * SignatureError. A cosignature/v1 signs its timestamp and the text.
 */
export async function verifySignature(verifier, text, signature) {
  let message = utf8(text);
  let raw = signature;
  if (verifier.alg === ALG_COSIGNATURE_V1) {
    const timestamp = cosignatureTimestamp(signature);
    if (timestamp === null) throw new SignatureError(`${verifier.name}+${keyIdHex(verifier.keyId)}: malformed cosignature`);
    message = cosignatureMessage(text, timestamp);
    raw = signature.slice(8);
  }
  if (!(await ed25519Verify(verifier.publicKey, message, raw))) {
    throw new SignatureError(`signature by ${verifier.name}+${keyIdHex(verifier.keyId)} does not verify`);
  }
}

function checkText(text, field) {
  if (!text.endsWith("\n")) throw new MalformedError(field, "does not end in a newline");
  for (const c of text) {
    if (c !== "\n" && CONTROL.test(c)) {
      throw new MalformedError(field, `contains control character U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}`);
    }
  }
}

/**
 * Split a signed note into its text and signature lines, without verifying anything:
 * {text, lines: [{line, name, keyId, signature}]}. Pages use it to show who signed.
 */
export function parseNote(msg) {
  const bytes = typeof msg === "string" ? utf8(msg) : msg;
  if (bytes.length > MAX_NOTE_SIZE) throw new MalformedError("note", `larger than ${MAX_NOTE_SIZE} bytes`);
  let decoded;
  try {
    decoded = STRICT_UTF8.decode(bytes);
  } catch {
    throw new MalformedError("note", "not valid UTF-8");
  }
  const split = decoded.lastIndexOf("\n\n");
  if (split < 0) throw new MalformedError("note", "no blank line before the signatures");
  const text = decoded.slice(0, split + 1);
  const block = decoded.slice(split + 2);
  checkText(text, "note.text");
  if (!block.endsWith("\n")) throw new MalformedError("note.signatures", "do not end in a newline");
  checkText(block, "note.signatures");
  const rawLines = block.slice(0, -1).split("\n");
  if (rawLines.length > MAX_SIGNATURES) throw new MalformedError("note.signatures", `more than ${MAX_SIGNATURES}`);
  const lines = rawLines.map((line) => {
    if (!line.startsWith(EM_DASH)) throw new MalformedError("note.signatures", `line ${JSON.stringify(line)} does not start with '— '`);
    const rest = line.slice(EM_DASH.length);
    const space = rest.indexOf(" ");
    if (space < 0) throw new MalformedError("note.signatures", `line ${JSON.stringify(line)} has no signature`);
    const name = rest.slice(0, space);
    checkName(name);
    const raw = decodeB64(rest.slice(space + 1), "note.signatures");
    if (raw.length < 5) throw new MalformedError("note.signatures", "signature shorter than a key ID");
    const id = new DataView(raw.buffer).getUint32(0);
    return { line, name, keyId: id, signature: raw.slice(4) };
  });
  return { text, lines };
}

/**
 * Parse a signed note and verify it against the known keys (tlog.note.open_note): a known
 * key's bad signature throws SignatureError, no verified signature at all throws
 * SignatureError, a malformed note throws MalformedError. Returns {text, signatures:
 * [{name, keyId, alg, timestamp}], unverified: [line]}.
 */
export async function openNote(msg, verifiers) {
  const { text, lines } = parseNote(msg);
  const known = new Map(verifiers.map((v) => [`${v.name}+${v.keyId}`, v]));
  const seen = new Set();
  const signatures = [];
  const unverified = [];
  for (const { line, name, keyId: id, signature } of lines) {
    const verifier = known.get(`${name}+${id}`);
    if (!verifier) {
      if (!unverified.includes(line)) unverified.push(line);
      continue;
    }
    if (seen.has(`${name}+${id}`)) continue;
    seen.add(`${name}+${id}`);
    await verifySignature(verifier, text, signature);
    const timestamp = verifier.alg === ALG_COSIGNATURE_V1 ? cosignatureTimestamp(signature) : null;
    signatures.push({ name, keyId: id, alg: verifier.alg, timestamp });
  }
  if (!signatures.length) throw new SignatureError("the note carries no signature by a known key");
  return { text, signatures, unverified };
}

// -- checkpoints (tlog/checkpoint.py) --------------------------------------------------------

/** Parse a checkpoint's note text strictly: {origin, treeSize (BigInt), rootHash, extensions}. */
export function parseCheckpoint(text) {
  if (!text.endsWith("\n")) throw new MalformedError("checkpoint", "does not end in a newline");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) throw new MalformedError("checkpoint", `has ${lines.length} lines, needs at least 3`);
  const [origin, sizeText, rootText, ...extensions] = lines;
  const treeSize = parseDecimal(sizeText, "checkpoint.tree_size");
  const rootHash = decodeB64(rootText, "checkpoint.root_hash");
  if (!origin || CONTROL.test(origin)) throw new MalformedError("checkpoint.origin", "empty, or holds a control character");
  if (rootHash.length !== HASH_SIZE) throw new MalformedError("checkpoint.root_hash", `not ${HASH_SIZE} bytes`);
  if (treeSize === 0n && !equalBytes(rootHash, EMPTY_ROOT)) {
    throw new MalformedError("checkpoint.root_hash", "a tree of size 0 has root SHA-256('')");
  }
  for (const line of extensions) {
    if (!line || CONTROL.test(line)) {
      throw new MalformedError("checkpoint.extensions", "an extension line is empty or holds a control character");
    }
  }
  return { origin, treeSize, rootHash, extensions };
}

/**
 * Verify a signed checkpoint (tlog.checkpoint.open_checkpoint): a log key signed it, and at
 * least `quorum` of the trusted `witnesses` (type 0x04 keys) cosigned it. Returns
 * {checkpoint, note, witnesses (the ones that cosigned), signedTimeS (the log's own
 * cosignature/v1 time, or null)}.
 */
export async function openCheckpoint(signedNote, logKeys, { origin = null, witnesses = [], quorum = 0 } = {}) {
  if (!logKeys.length) throw new MalformedError("log_keys", "at least one log key is needed");
  if (quorum < 0 || quorum > witnesses.length) throw new MalformedError("quorum", `${quorum} is outside 0..${witnesses.length} witnesses`);
  const stampers = await Promise.all(logKeys.filter((k) => k.alg === ALG_ED25519).map(cosignerOf));
  const note = await openNote(signedNote, [...logKeys, ...stampers, ...witnesses]);
  const signedBy = (key) => note.signatures.some((s) => s.name === key.name && s.keyId === key.keyId);
  if (!logKeys.some(signedBy)) throw new SignatureError("the checkpoint is not signed by any of the log's keys");
  const checkpoint = parseCheckpoint(note.text);
  if (origin !== null && checkpoint.origin !== origin) {
    throw new SignatureError(`checkpoint origin ${JSON.stringify(checkpoint.origin)} is not ${JSON.stringify(origin)}`);
  }
  const cosigned = witnesses.filter(signedBy);
  if (cosigned.length < quorum) {
    throw new SignatureError(`${cosigned.length} of the ${witnesses.length} trusted witnesses cosigned; the policy needs ${quorum}`);
  }
  const times = note.signatures.filter((s) => stampers.some((k) => k.name === s.name && k.keyId === s.keyId)).map((s) => s.timestamp);
  const signedTimeS = times.length ? times.reduce((a, b) => (a > b ? a : b)) : null;
  return { checkpoint, note, witnesses: cosigned, signedTimeS };
}

// -- tlog-proof bundles (tlog/bundle.py) ------------------------------------------------------

export const BUNDLE_HEADER = "c2sp.org/tlog-proof@v1";
const MAX_BUNDLE_SIZE = 2 << 20;

/** Parse a .tlog-proof strictly: {index (BigInt), proof: [hash], checkpoint: bytes, extra: bytes|null}. */
export function parseBundle(data) {
  const bytes = typeof data === "string" ? utf8(data) : data;
  if (bytes.length > MAX_BUNDLE_SIZE) throw new MalformedError("bundle", `larger than ${MAX_BUNDLE_SIZE} bytes`);
  let split = -1;
  for (let i = 0; i + 1 < bytes.length; i++) {
    if (bytes[i] === 0x0a && bytes[i + 1] === 0x0a) {
      split = i;
      break;
    }
  }
  if (split < 0) throw new MalformedError("bundle", "no blank line before the checkpoint");
  const head = bytes.slice(0, split);
  if (head.some((b) => b > 0x7f)) throw new MalformedError("bundle", "the proof part is not ASCII");
  const lines = new TextDecoder().decode(head).split("\n");
  if (lines[0] !== BUNDLE_HEADER) throw new MalformedError("bundle.header", `first line is not ${BUNDLE_HEADER}`);
  let at = 1;
  let extra = null;
  if (at < lines.length && lines[at].startsWith("extra ")) {
    extra = decodeB64(lines[at].slice("extra ".length), "bundle.extra");
    at += 1;
  }
  if (at >= lines.length || !lines[at].startsWith("index ")) throw new MalformedError("bundle.index", "missing 'index <n>' line");
  const index = parseDecimal(lines[at].slice("index ".length), "bundle.index");
  const proofLines = lines.slice(at + 1);
  if (proofLines.length > MAX_PROOF_LENGTH) throw new MalformedError("bundle.proof", `more than ${MAX_PROOF_LENGTH} hashes`);
  const proof = proofLines.map((line, i) => decodeB64(line, `bundle.proof[${i}]`));
  for (const h of proof) if (h.length !== HASH_SIZE) throw new MalformedError("bundle.proof", `a hash is not ${HASH_SIZE} bytes`);
  const checkpoint = bytes.slice(split + 2);
  if (!checkpoint.length) throw new MalformedError("bundle.checkpoint", "missing");
  return { index, proof, checkpoint, extra };
}

// -- entries (tlog/entry.py) ------------------------------------------------------------------

/**
 * RFC 8785 canonical JSON of the values entries hold (strings, safe integers, booleans,
 * lists, objects): keys sorted by UTF-16 code units, which is JavaScript's own string order,
 * and strings as JSON.stringify writes them, which is what RFC 8785 specifies.
 */
export function canonicalJSON(value) {
  if (typeof value === "string" || typeof value === "boolean") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new MalformedError("$", `${value} is not an integer within +-(2**53 - 1)`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJSON).join(",")}]`;
  if (value && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJSON(value[k])}`).join(",")}}`;
  }
  throw new MalformedError("$", `${value === null ? "null" : typeof value} is not allowed in an entry`);
}

/** The parsed JSON of an entry's bytes, which must already be canonical (as decode_entry). */
export function parseEntry(bytes) {
  let value;
  try {
    value = JSON.parse(STRICT_UTF8.decode(bytes));
  } catch {
    throw new MalformedError("entry", "not UTF-8 JSON");
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) throw new MalformedError("entry", "not a JSON object");
  if (typeof value.kind !== "string") throw new MalformedError("entry.kind", "missing");
  if (!equalBytes(utf8(canonicalJSON(value)), bytes)) throw new MalformedError("entry", "not canonical JSON");
  return value;
}

/** The bytes an entry's signature covers: the canonical JSON of every field but
 * `signature` and `logged_at_ms` (tlog.entry.signed_message). */
export function signedMessage(entry) {
  const fields = { ...entry };
  delete fields.signature;
  delete fields.logged_at_ms;
  return utf8(canonicalJSON(fields));
}

/**
 * Check the edge's signature on a receipt entry (tlog.entry.verify_receipt) under `edgeKey`
 * (a verifier): the key must be the edge's (same name, same key ID) and type 0x01.
 */
export async function verifyReceipt(entry, edgeKey) {
  if (entry.kind !== "receipt") throw new MalformedError("entry.kind", `${JSON.stringify(entry.kind)} is not a receipt`);
  if (edgeKey.alg !== ALG_ED25519) throw new MalformedError("key", "entries are signed with Ed25519 (type 0x01) keys");
  if (edgeKey.name !== entry.edge || keyIdHex(edgeKey.keyId) !== entry.key_id) {
    throw new SignatureError(
      `receipt is signed by ${entry.edge}+${entry.key_id || "?"}, not by the key given, ${edgeKey.name}+${keyIdHex(edgeKey.keyId)}`,
    );
  }
  if (typeof entry.signature !== "string" || !entry.signature) throw new MalformedError("receipt.signature", "missing");
  const signature = decodeB64(entry.signature, "receipt.signature");
  if (!(await ed25519Verify(edgeKey.publicKey, signedMessage(entry), signature))) {
    throw new SignatureError(`signature by ${edgeKey.name}+${keyIdHex(edgeKey.keyId)} does not verify`);
  }
}

export { keyIdHex };
