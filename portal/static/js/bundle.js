// Checking a .tlog-proof bundle in the browser, step by step, as verifier.offline.check_bundle
// does in Python: the checkpoint is signed by the log key the user gave, the entry in the
// bundle is included at its index under that checkpoint's root, and (for a receipt) the edge's
// signature verifies under the key the log's edge_key registry names. Every step is reported
// with what was checked, so a page can say exactly what it verified. The primitives are
// tlog.js's; nothing here re-implements hashing, proofs or notes.

import {
  keyIdHex,
  leafHash,
  openCheckpoint,
  parseBundle,
  parseEntry,
  parseVkey,
  verifyInclusion,
  verifyReceipt,
} from "./tlog.js";
import { getJSON, getText } from "./api.js";
import { loadTrust, trustNote } from "./trust.js";
import { el } from "./ui.js";

/**
 * The log key to verify with: the one typed on the page if any, else trust.js's (pinned in
 * this browser, or as the log states it, which the note says is unpinned). Returns
 * {logKey, note}; throws MalformedError for a typed key that does not parse.
 */
export async function resolveLogKey(typed) {
  const vkey = (typed || "").trim();
  if (vkey) {
    const logKey = await parseVkey(vkey);
    const note = el("p", { class: "trust", id: "trust-note", "data-pinned": "given" },
      el("strong", {}, "Log key: "), el("code", { class: "break" }, logKey.vkey), " (given on this page).");
    return { logKey, note };
  }
  const trust = await loadTrust();
  return { logKey: trust.logKey, note: trustNote(trust) };
}

/**
 * The edge keys the log's registry lists, as a Map "edge+keyid" -> {verifier, from, until}.
 * These come from the log's index (GET /v1/edge-keys), not from entries this page checked.
 */
export async function edgeRegistry() {
  const registry = new Map();
  for (const k of (await getJSON("/v1/edge-keys")).edge_keys) {
    registry.set(`${k.edge}+${k.key_id}`, {
      verifier: await parseVkey(k.key),
      from: k.valid_from_ms,
      until: k.valid_until_ms,
    });
  }
  return registry;
}

/**
 * The latest checkpoint, verified against `logKey`: {state, detail, checkpoint}. With no key
 * the checkpoint is parsed, not verified, and the state says so.
 */
export async function latestCheckpoint(logKey) {
  const note = await getText("/checkpoint");
  if (!logKey) return { state: "skipped", detail: "no log key given: its signature was not checked", note };
  try {
    const opened = await openCheckpoint(note, [logKey]);
    const size = opened.checkpoint.treeSize;
    return { state: "ok", detail: `signed by ${logKey.name}; tree size ${size}`, note, opened };
  } catch (err) {
    return { state: "failed", detail: err.message, note };
  }
}

const opened = new Map();

async function openOnce(checkpoint, logKey) {
  const text = new TextDecoder().decode(checkpoint);
  const key = `${logKey.vkey}\n${text}`;
  if (!opened.has(key)) opened.set(key, openCheckpoint(text, [logKey]));
  return opened.get(key);
}

/**
 * Check one bundle (text). Returns {ok, steps: [{state, title, detail}], entry, index}.
 * `expect` names fields the entry must have (e.g. {job_id: "job-1"}): the log must not answer
 * with someone else's receipt. Never throws for a bad bundle: the failed step says why.
 */
export async function checkBundle(text, { logKey, edges = null, expect = {} }) {
  const steps = [];
  const fail = (title, err) => {
    steps.push({ state: "failed", title, detail: err.message || String(err) });
    return { ok: false, steps, entry: null, index: null };
  };
  let bundle;
  let entry;
  try {
    bundle = parseBundle(text);
    if (!bundle.extra) throw new Error("the bundle carries no entry");
    entry = parseEntry(bundle.extra);
  } catch (err) {
    return fail("bundle parses", err);
  }
  let root;
  let treeSize;
  if (!logKey) {
    steps.push({ state: "skipped", title: "checkpoint signature", detail: "no log key given" });
  } else {
    try {
      const { checkpoint } = await openOnce(bundle.checkpoint, logKey);
      root = checkpoint.rootHash;
      treeSize = checkpoint.treeSize;
      steps.push({ state: "ok", title: "checkpoint signature", detail: `by ${logKey.name}, size ${treeSize}` });
    } catch (err) {
      return fail("checkpoint signature", err);
    }
    try {
      await verifyInclusion(await leafHash(bundle.extra), bundle.index, treeSize, bundle.proof, root);
      steps.push({ state: "ok", title: "inclusion", detail: `index ${bundle.index} of ${treeSize}` });
    } catch (err) {
      return fail("inclusion", err);
    }
  }
  for (const [name, value] of Object.entries(expect)) {
    if (entry[name] !== value) {
      return fail("entry is the one asked for", new Error(`${name} is ${JSON.stringify(entry[name])}, not ${JSON.stringify(value)}`));
    }
  }
  if (entry.kind === "receipt" && edges) {
    const known = edges.get(`${entry.edge}+${entry.key_id}`);
    try {
      if (!known) throw new Error(`edge key ${entry.edge}+${entry.key_id} is not in the log's registry`);
      await verifyReceipt(entry, known.verifier);
      if (entry.served_at_ms < known.from || (known.until !== null && entry.served_at_ms >= known.until)) {
        throw new Error("the edge key was not valid when the receipt was served");
      }
      steps.push({ state: "ok", title: "edge signature", detail: `by ${entry.edge}+${keyIdHex(known.verifier.keyId)}` });
    } catch (err) {
      return fail("edge signature", err);
    }
  }
  const ok = !steps.some((s) => s.state !== "ok");
  return { ok, steps, entry, index: bundle.index };
}
