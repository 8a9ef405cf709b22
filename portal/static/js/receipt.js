// The Receipts page: find receipts by request id, content id, consumer or job, then verify
// one in the browser, step by step, as `meterlog verify bundle` does offline: the bundle's
// checkpoint signature, the leaf hash of the receipt's exact bytes, the inclusion path hash by
// hash, consistency with the log's latest checkpoint, the edge key as the log itself
// registered it, and the edge's signature. Each step shows ✓ or ✗ and why; nothing the
// server says is taken for a result the page can compute.

import { getJSON, getText } from "./api.js";
import {
  decodeB64,
  keyIdHex,
  leafHash,
  openCheckpoint,
  parseBundle,
  parseEntry,
  parseVkey,
  utf8,
  verifyConsistency,
  verifyInclusion,
  verifyReceipt,
} from "./tlog.js";
import { showTrust } from "./trust.js";
import { download, el, failure, formatCount, formatTime, show, shortHex, stepList, verdict } from "./ui.js";

const PAGE_SIZE = 20;
const FINDERS = { request: "request id", content: "content id", consumer: "consumer", job: "job" };

let trust = null;

/** Single-quote a word for a POSIX shell (only when it needs it). */
export function shellQuote(word) {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(word) ? word : `'${word.replaceAll("'", `'"'"'`)}'`;
}

/** The file name a bundle is saved under: the request id, made safe for file systems. */
function bundleName(entry, index) {
  const base = entry && typeof entry.request_id === "string" ? entry.request_id : `entry-${index}`;
  return `${base.replace(/[^A-Za-z0-9._-]/g, "_")}.tlog-proof`;
}

/** A quick, unverified look at a bundle's entry, for the results table. */
function peek(bundleText) {
  try {
    const bundle = parseBundle(utf8(bundleText));
    return bundle.extra ? JSON.parse(new TextDecoder().decode(bundle.extra)) : null;
  } catch {
    return null;
  }
}

// -- the steps ----------------------------------------------------------------------------------

/** A promise started now and awaited later: its rejection is handled where it is awaited,
 * not reported as unhandled in the meantime. */
function early(promise) {
  promise.catch(() => {});
  return promise;
}

/** Verify one bundle in full; returns the steps (each {state, title, detail}) and what the
 * download and the command need. Never throws: a failure is a ✗ step, and the steps that
 * depend on it are marked not checked. */
export async function verifyReceiptBundle(bundleText, trustState) {
  const steps = [];
  const ok = (title, detail) => steps.push({ state: "ok", title, detail });
  const failed = (title, error) => steps.push({ state: "failed", title, detail: error instanceof Error ? error.message : String(error) });
  const skipped = (title, detail) => steps.push({ state: "skipped", title, detail });
  const result = { steps, entry: null, edgeKey: null, witnesses: [] };
  // Fetched now, awaited where used: the steps below would otherwise wait for each in turn.
  const latestNote = early(getText("/checkpoint"));
  const registry = early(getJSON("/v1/edge-keys"));

  let bundle;
  try {
    bundle = parseBundle(utf8(bundleText));
    ok("Bundle format", `c2sp.org/tlog-proof@v1: leaf ${formatCount(bundle.index)}, ${bundle.proof.length} proof hash(es)`);
  } catch (error) {
    failed("Bundle format", error);
    return result;
  }

  let opened = null;
  try {
    opened = await openCheckpoint(bundle.checkpoint, [trustState.logKey], { witnesses: trustState.witnesses });
    const cp = opened.checkpoint;
    ok(
      "Checkpoint signature",
      `${cp.origin}, tree size ${formatCount(cp.treeSize)}, root ${shortHex(cp.rootHash)}: signed by ${trustState.logKey.name}+${keyIdHex(trustState.logKey.keyId)}`,
    );
    result.witnesses = opened.witnesses;
    if (trustState.witnesses.length) {
      (opened.witnesses.length ? ok : skipped)(
        "Witness cosignatures",
        `${opened.witnesses.length} of the ${trustState.witnesses.length} witnesses the log lists cosigned this checkpoint`,
      );
    } else {
      skipped("Witness cosignatures", "the log lists no witnesses");
    }
  } catch (error) {
    failed("Checkpoint signature", error);
  }

  let leaf = null;
  if (bundle.extra === null) {
    failed("Leaf hash", "the bundle carries no entry (no extra line)");
  } else {
    leaf = await leafHash(bundle.extra);
    ok("Leaf hash", `SHA-256(0x00 || the receipt's ${bundle.extra.length} bytes) = ${shortHex(leaf)}`);
  }

  if (!opened || !leaf) {
    skipped("Inclusion proof", "needs a verified checkpoint and the entry");
  } else {
    const path = [];
    try {
      await verifyInclusion(leaf, bundle.index, opened.checkpoint.treeSize, bundle.proof, opened.checkpoint.rootHash, (s) =>
        path.push(`level ${s.level}: sibling ${shortHex(s.sibling)} on the ${s.side} → ${shortHex(s.hash)}`),
      );
      ok(
        "Inclusion proof",
        `leaf ${formatCount(bundle.index)} of the tree of size ${formatCount(opened.checkpoint.treeSize)}: ${path.length} hash(es) recomputed up to the signed root. ${path.join("; ")}`,
      );
    } catch (error) {
      failed("Inclusion proof", error);
    }
  }

  if (!opened) {
    skipped("Consistency with the latest checkpoint", "needs a verified checkpoint");
  } else {
    try {
      // The served checkpoint can be older than the bundle's (with a witness quorum the log
      // serves the latest cosigned one): then the bundle's tree must extend it instead.
      const latest = await openCheckpoint(utf8(await latestNote), [trustState.logKey]);
      const [older, newer] =
        opened.checkpoint.treeSize <= latest.checkpoint.treeSize
          ? [opened.checkpoint, latest.checkpoint]
          : [latest.checkpoint, opened.checkpoint];
      const { proof } = await getJSON("/v1/proofs/consistency", {
        old_size: String(older.treeSize),
        new_size: String(newer.treeSize),
      });
      await verifyConsistency(
        older.treeSize,
        newer.treeSize,
        proof.map((h, i) => decodeB64(h, `proof[${i}]`)),
        older.rootHash,
        newer.rootHash,
      );
      ok(
        "Consistency with the latest checkpoint",
        older.treeSize === newer.treeSize
          ? "the bundle's checkpoint is the latest tree"
          : `the tree of size ${formatCount(older.treeSize)} is a prefix of the tree of size ${formatCount(newer.treeSize)} (the ${older === opened.checkpoint ? "bundle's" : "latest served"} is the older)`,
      );
    } catch (error) {
      failed("Consistency with the latest checkpoint", error);
    }
  }

  let entry = null;
  if (bundle.extra !== null) {
    try {
      entry = parseEntry(bundle.extra);
      if (entry.kind !== "receipt") throw new Error(`a ${entry.kind} entry, not a receipt`);
      ok("Entry format", `a canonical receipt entry from edge ${entry.edge}, key ${entry.key_id}`);
      result.entry = entry;
    } catch (error) {
      failed("Entry format", error);
      entry = null;
    }
  } else {
    skipped("Entry format", "no entry");
  }

  let edgeKey = null;
  if (!entry || !opened) {
    skipped("Edge key in the log", "needs a receipt and a verified checkpoint");
  } else {
    try {
      edgeKey = await registeredEdgeKey(entry, opened.checkpoint, await registry);
      result.edgeKey = edgeKey.verifier;
      ok(
        "Edge key in the log",
        `${edgeKey.verifier.vkey}: registered by entry ${formatCount(edgeKey.record.entry_index)} (its inclusion verified here), valid ${formatTime(edgeKey.record.valid_from_ms)} to ${edgeKey.record.valid_until_ms === null ? "open" : formatTime(edgeKey.record.valid_until_ms)}; served ${formatTime(entry.served_at_ms)}`,
      );
    } catch (error) {
      failed("Edge key in the log", error);
    }
  }

  if (!entry) {
    skipped("Receipt signature", "needs a receipt");
  } else if (!edgeKey) {
    skipped("Receipt signature", "needs the edge's key from the log");
  } else {
    try {
      await verifyReceipt(entry, edgeKey.verifier);
      ok("Receipt signature", `Ed25519 by ${edgeKey.verifier.name}+${keyIdHex(edgeKey.verifier.keyId)} over the receipt's signed fields`);
    } catch (error) {
      failed("Receipt signature", error);
    }
  }
  return result;
}

/** The edge key the log registered for this receipt: the registry row (server's word), then
 * its registering entry's bytes, included in the same checkpoint (verified here), naming
 * this very key, and a validity window that holds the receipt's time. */
async function registeredEdgeKey(entry, checkpoint, { edge_keys: keys }) {
  const record = keys.find((k) => k.edge === entry.edge && k.key_id === entry.key_id);
  if (!record) throw new Error(`the log's registry has no key ${entry.edge}+${entry.key_id}`);
  const verifier = await parseVkey(record.key);
  if (verifier.name !== entry.edge || keyIdHex(verifier.keyId) !== entry.key_id) {
    throw new Error(`the registry's key ${record.key} is not ${entry.edge}+${entry.key_id}`);
  }
  const index = BigInt(record.entry_index);
  if (index >= checkpoint.treeSize) throw new Error(`its registration (entry ${index}) is not in the bundle's tree`);
  const [{ entries }, { proof }] = await Promise.all([
    getJSON("/v1/entries", { start: String(index), end: String(index + 1n) }),
    getJSON("/v1/proofs/inclusion", { index: String(index), tree_size: String(checkpoint.treeSize) }),
  ]);
  if (entries.length !== 1) throw new Error(`entry ${index} is missing`);
  const bytes = utf8(entries[0].entry);
  const registration = parseEntry(bytes);
  if (registration.kind !== "edge_key" || registration.edge !== entry.edge || registration.key !== record.key) {
    throw new Error(`entry ${index} does not register ${record.key}`);
  }
  await verifyInclusion(
    await leafHash(bytes),
    index,
    checkpoint.treeSize,
    proof.map((h, i) => decodeB64(h, `proof[${i}]`)),
    checkpoint.rootHash,
  );
  // The window the registry reports; the entry itself holds the start (and an end, if any).
  const from = registration.valid_from_ms;
  const until = record.valid_until_ms;
  if (entry.served_at_ms < from || (until !== null && entry.served_at_ms >= until)) {
    throw new Error(`served at ${formatTime(entry.served_at_ms)}, outside the key's validity window`);
  }
  return { verifier, record };
}

// -- the page ----------------------------------------------------------------------------------

function command(name, trustState, result) {
  const words = ["meterlog", "verify", "bundle", "--key", trustState.logKey.vkey];
  for (const w of result.witnesses) words.push("--witness", w.vkey);
  if (result.edgeKey) words.push("--edge-key", result.edgeKey.vkey);
  words.push(name);
  return words.map(shellQuote).join(" ");
}

async function verifyAndShow(bundleText, index) {
  const container = document.getElementById("verification");
  show(container, el("p", { class: "status" }, `Verifying the receipt at index ${formatCount(index)}…`));
  const result = await verifyReceiptBundle(bundleText, trust);
  const name = bundleName(result.entry, index);
  const save = el("button", { type: "button", id: "download" }, `Download ${name}`);
  save.addEventListener("click", () => download(name, bundleText, "text/plain"));
  const entryView = result.entry
    ? el("details", {}, el("summary", {}, "The receipt as logged"), el("pre", { id: "entry" }, JSON.stringify(result.entry, null, 2)))
    : null;
  show(
    container,
    verdict(result.steps, "This receipt verified in your browser.", "This receipt did NOT verify: see the step marked ✗."),
    stepList(result.steps, "Verification steps"),
    entryView,
    el("h3", {}, "Check it yourself, offline"),
    el("p", {}, "Save the bundle, then run (the keys are the ones this page used):"),
    el("div", { class: "row" }, save),
    el("pre", { id: "command" }, command(name, trust, result)),
  );
}

/** A bundle from the user's disk, verified like a looked-up one (it never leaves the page). */
async function verifyFile(file) {
  const text = await file.text();
  let index = 0n;
  try {
    index = parseBundle(utf8(text)).index;
  } catch {
    // the Bundle format step says what is wrong with it
  }
  await verifyAndShow(text, index);
}

function resultsTable(receipts) {
  return el(
    "table",
    { id: "results-table" },
    el("caption", {}, `${receipts.length} receipt(s), oldest first`),
    el(
      "thead",
      {},
      el("tr", {}, ["Index", "Request id", "Edge", "Consumer", "Job", "Bytes", "Served (UTC)", ""].map((h) => el("th", { scope: "col" }, h))),
    ),
    el(
      "tbody",
      {},
      receipts.map((r) => {
        const e = peek(r.bundle) || {};
        const button = el("button", { type: "button", class: "secondary", "data-index": r.index }, "Verify");
        button.addEventListener("click", () => verifyAndShow(r.bundle, r.index));
        return el(
          "tr",
          {},
          el("td", { class: "num" }, formatCount(r.index)),
          el("td", {}, el("code", {}, e.request_id ?? "?")),
          el("td", {}, e.edge ?? "?"),
          el("td", {}, e.consumer_id ?? "?"),
          el("td", {}, e.job_id ?? "–"),
          el("td", { class: "num" }, e.bytes_sent === undefined ? "?" : formatCount(e.bytes_sent)),
          el("td", {}, e.served_at_ms === undefined ? "?" : formatTime(e.served_at_ms)),
          el("td", {}, button),
        );
      }),
    ),
  );
}

function query(by, value, after = null) {
  return getJSON("/v1/receipts", { [by]: value, limit: PAGE_SIZE, after });
}

async function lookUp(by, value, after = null, pending = null) {
  const container = document.getElementById("results");
  show(container, el("p", { class: "status" }, `Looking up ${FINDERS[by]} ${value}…`));
  const answer = await (pending ?? query(by, value, after));
  const parts = [];
  if (!answer.receipts.length) {
    parts.push(el("p", { id: "no-results" }, `No logged receipt has ${FINDERS[by]} ${value}${after === null ? "" : " after this point"}.`));
  } else {
    parts.push(resultsTable(answer.receipts));
  }
  if (answer.next_after !== null) {
    const more = el("button", { type: "button", id: "more", class: "secondary" }, "Next page");
    more.addEventListener("click", () => lookUp(by, value, answer.next_after).catch((e) => show(container, failure(e))));
    parts.push(more);
  }
  show(container, parts);
  if (answer.receipts.length === 1 && after === null) await verifyAndShow(answer.receipts[0].bundle, answer.receipts[0].index);
}

async function main() {
  const params = new URLSearchParams(location.search);
  const by = params.get("by") in FINDERS ? params.get("by") : "request";
  // A lookup in the address starts with the log's key, not after it.
  const pending = params.get("q") ? early(query(by, params.get("q"))) : null;
  trust = await showTrust(document.getElementById("trust"));
  if (trust === null) {
    document.body.dataset.ready = "error";
    return;
  }
  const form = document.getElementById("lookup");
  document.getElementById("by").value = by;
  if (params.get("q")) document.getElementById("q").value = params.get("q");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = document.getElementById("by").value;
    const value = document.getElementById("q").value.trim();
    if (!value) return;
    history.replaceState(null, "", `?by=${encodeURIComponent(chosen)}&q=${encodeURIComponent(value)}`);
    document.body.dataset.ready = "busy";
    lookUp(chosen, value)
      .catch((e) => show(document.getElementById("results"), failure(e)))
      .finally(() => {
        document.body.dataset.ready = "yes";
      });
  });
  document.getElementById("upload").addEventListener("submit", (event) => {
    event.preventDefault();
    const [file] = document.getElementById("bundle-file").files;
    if (!file) return;
    document.body.dataset.ready = "busy";
    verifyFile(file)
      .catch((e) => show(document.getElementById("verification"), failure(e)))
      .finally(() => {
        document.body.dataset.ready = "yes";
      });
  });
  if (pending) {
    await lookUp(by, params.get("q"), null, pending).catch((e) => show(document.getElementById("results"), failure(e)));
  }
  document.body.dataset.ready = "yes";
}

main().catch((error) => {
  document.body.dataset.ready = "error";
  document.getElementById("main").prepend(failure(error));
});
