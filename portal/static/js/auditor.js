// The Auditor page: pick two of the log's checkpoints and verify, in the browser, that the
// older tree is a prefix of the newer (both signatures, then the consistency proof hash by
// hash); look for forks among the checkpoints loaded; and compare a checkpoint obtained
// elsewhere with what this log serves now. A browser sees only this server: the page says
// what catches a split view that it cannot.

import { getJSON, getText } from "./api.js";
import { decodeB64, keyIdHex, openCheckpoint, utf8, verifyConsistency } from "./tlog.js";
import { showTrust } from "./trust.js";
import { el, failure, formatCount, formatTime, show, shortHex, stepList, verdict } from "./ui.js";

const PAGE_SIZE = 100;

let trust = null;
/** Every checkpoint loaded so far, newest first, by id: {id, tree_size, root_hash, signed_at_ms, checkpoint}. */
const loaded = new Map();
let oldestId = null;

function label(c) {
  return `size ${formatCount(c.tree_size)} — ${formatTime(c.signed_at_ms)} (#${c.id})`;
}

/** Distinct trees among the loaded checkpoints (one option per size and root), newest first. */
function distinctTrees() {
  const seen = new Set();
  const trees = [];
  for (const c of [...loaded.values()].sort((a, b) => b.id - a.id)) {
    const key = `${c.tree_size}/${c.root_hash}`;
    if (seen.has(key)) continue;
    seen.add(key);
    trees.push(c);
  }
  return trees;
}

function fillSelects() {
  const trees = distinctTrees();
  for (const id of ["old", "new"]) {
    const select = document.getElementById(id);
    const previous = select.value;
    select.replaceChildren(...trees.map((c) => el("option", { value: c.id }, label(c))));
    if (previous && loaded.has(Number(previous))) select.value = previous;
  }
  const newSelect = document.getElementById("new");
  const oldSelect = document.getElementById("old");
  if (!newSelect.dataset.touched && trees.length) newSelect.value = String(trees[0].id);
  if (!oldSelect.dataset.touched && trees.length) oldSelect.value = String(trees[Math.min(trees.length - 1, Math.max(1, Math.floor(trees.length / 2)))].id);
}

/** The note's own size and root if the log key signed it, else null: the listing's
 * tree_size and root_hash fields are the server's word, the note is the log's signature. */
async function signedTree(c) {
  try {
    const o = await openCheckpoint(utf8(c.checkpoint), [trust.logKey]);
    return { size: String(o.checkpoint.treeSize), root: o.checkpoint.rootHash.join(",") };
  } catch {
    return null;
  }
}

function fetchPage() {
  return getJSON("/v1/checkpoints", { order: "desc", limit: PAGE_SIZE, before: oldestId });
}

async function loadPage(pending = null) {
  const { checkpoints } = await (pending ?? fetchPage());
  const trees = await Promise.all(checkpoints.map(signedTree));
  checkpoints.forEach((c, i) => {
    c.signed = trees[i];
    loaded.set(c.id, c);
  });
  if (checkpoints.length) oldestId = checkpoints.at(-1).id;
  document.getElementById("older").disabled = checkpoints.length < PAGE_SIZE;
  fillSelects();
  showForks();
}

// -- consistency between two checkpoints -------------------------------------------------------------

async function verifyPair() {
  const container = document.getElementById("consistency");
  let older = loaded.get(Number(document.getElementById("old").value));
  let newer = loaded.get(Number(document.getElementById("new").value));
  if (!older || !newer) {
    show(container, failure("Pick two checkpoints."));
    return;
  }
  if (older.tree_size > newer.tree_size) [older, newer] = [newer, older];
  const steps = [];
  const opened = [];
  for (const [which, c] of [
    ["Older checkpoint signature", older],
    ["Newer checkpoint signature", newer],
  ]) {
    try {
      const o = await openCheckpoint(utf8(c.checkpoint), [trust.logKey]);
      if (String(o.checkpoint.treeSize) !== String(c.tree_size)) throw new Error(`the note says size ${o.checkpoint.treeSize}, the listing ${c.tree_size}`);
      opened.push(o);
      steps.push({
        state: "ok",
        title: which,
        detail: `size ${formatCount(o.checkpoint.treeSize)}, root ${shortHex(o.checkpoint.rootHash)}: signed by ${trust.logKey.name}+${keyIdHex(trust.logKey.keyId)}`,
      });
    } catch (error) {
      opened.push(null);
      steps.push({ state: "failed", title: which, detail: error.message });
    }
  }
  if (opened.includes(null)) {
    steps.push({ state: "skipped", title: "Consistency proof", detail: "needs both checkpoints verified" });
  } else {
    const [a, b] = opened.map((o) => o.checkpoint);
    try {
      const answer = await getJSON("/v1/proofs/consistency", { old_size: String(a.treeSize), new_size: String(b.treeSize) });
      const proof = answer.proof.map((h, i) => decodeB64(h, `proof[${i}]`));
      await verifyConsistency(a.treeSize, b.treeSize, proof, a.rootHash, b.rootHash);
      steps.push({
        state: "ok",
        title: "Consistency proof",
        detail:
          a.treeSize === b.treeSize
            ? "the same tree: equal sizes and roots"
            : `${proof.length} hash(es) lead from the old root ${shortHex(a.rootHash)} to the new root ${shortHex(b.rootHash)}: the first ${formatCount(a.treeSize)} entries are unchanged in the tree of ${formatCount(b.treeSize)}`,
      });
    } catch (error) {
      steps.push({ state: "failed", title: "Consistency proof", detail: error.message });
    }
  }
  show(
    container,
    verdict(
      steps,
      `The tree of size ${formatCount(older.tree_size)} is a prefix of the tree of size ${formatCount(newer.tree_size)}: verified in your browser.`,
      "The two checkpoints are NOT shown consistent: see the step marked ✗.",
    ),
    stepList(steps, "Consistency verification"),
  );
}

// -- forks ----------------------------------------------------------------------------------------------

function showForks() {
  const container = document.getElementById("forks");
  const bySize = new Map();
  const unsigned = [...loaded.values()].filter((c) => !c.signed);
  for (const c of loaded.values()) {
    if (!c.signed) continue;
    if (!bySize.has(c.signed.size)) bySize.set(c.signed.size, new Set());
    bySize.get(c.signed.size).add(c.signed.root);
  }
  const forks = [...bySize.entries()].filter(([, roots]) => roots.size > 1);
  const sizes = [...bySize.keys()].map(Number);
  show(
    container,
    unsigned.length
      ? el(
          "p",
          { class: "error", id: "unsigned-checkpoints" },
          `✗ ${unsigned.length} listed checkpoint(s) are not signed by the log key (ids ${unsigned.map((c) => c.id).join(", ")}): left out.`,
        )
      : null,
    forks.length
      ? el(
          "p",
          { class: "verdict failed", id: "fork-verdict", "data-verdict": "failed" },
          `✗ FORK: the log key signed two roots for tree size(s) ${forks.map(([size]) => formatCount(size)).join(", ")}: keep these checkpoints, they are the evidence.`,
        )
      : el(
          "p",
          { class: "verdict ok", id: "fork-verdict", "data-verdict": "ok" },
          `✓ No two roots for one size among the ${loaded.size - unsigned.length} signed checkpoints loaded (sizes ${formatCount(Math.min(...sizes))} to ${formatCount(Math.max(...sizes))}).`,
        ),
    witnessView(),
    el(
      "p",
      {},
      "What this page cannot see: a log can show another history to someone else. The monitor (",
      el("code", {}, "meterlog verify monitor"),
      ") keeps the last checkpoint it verified and writes fork evidence if the log ever contradicts it; ",
      el("code", {}, "meterlog verify anchor"),
      " checks the anchors on the chain. Below, compare a checkpoint from anyone with this log.",
    ),
  );
}

/** What the log says its witnesses have done: the size each cosigned up to, and whether any
 * refused a checkpoint (the server's word: its cosignatures are verified on the Log page). */
function witnessView() {
  const { witnesses, quorum, witness_refusals: refusals } = trust.about;
  if (!witnesses.length) {
    return el("p", { id: "witness-view" }, "The log lists no witnesses: nothing outside this server has cosigned its checkpoints.");
  }
  return el(
    "div",
    { id: "witness-view" },
    el(
      "p",
      {},
      `The log submits its checkpoints to ${witnesses.length} witness(es) (quorum: ${quorum}). A witness cosigns only a checkpoint consistent with everything it cosigned before, so their cosignatures stand against a split view. As the log reports it:`,
    ),
    el(
      "ul",
      {},
      witnesses.map((w) =>
        el("li", {}, el("code", {}, w.key), w.cosigned_size === null ? ": has cosigned nothing yet" : `: has cosigned up to size ${formatCount(w.cosigned_size)}`),
      ),
    ),
    refusals
      ? el("p", { class: "verdict failed", "data-verdict": "failed" }, `✗ A witness refused this log's checkpoint ${refusals} time(s) since the server started: a fork, or a log that lost data.`)
      : el("p", {}, "No witness has refused a checkpoint since the server started."),
  );
}

/** A checkpoint from elsewhere: signed by the log key? consistent with the latest, either way? */
async function compareForeign(text) {
  const container = document.getElementById("foreign-result");
  const steps = [];
  let theirs = null;
  try {
    theirs = await openCheckpoint(utf8(text.endsWith("\n") ? text : `${text}\n`), [trust.logKey]);
    steps.push({
      state: "ok",
      title: "Their checkpoint's signature",
      detail: `size ${formatCount(theirs.checkpoint.treeSize)}, root ${shortHex(theirs.checkpoint.rootHash)}: signed by ${trust.logKey.name}+${keyIdHex(trust.logKey.keyId)}`,
    });
  } catch (error) {
    steps.push({ state: "failed", title: "Their checkpoint's signature", detail: error.message });
    steps.push({ state: "skipped", title: "Consistency with this log", detail: "needs their checkpoint verified" });
    show(container, verdict(steps, "", "Not a checkpoint signed by this log's key."), stepList(steps, "Comparison"));
    return;
  }
  let ours = null;
  try {
    ours = await openCheckpoint(utf8(await getText("/checkpoint")), [trust.logKey]);
    steps.push({ state: "ok", title: "This log's latest checkpoint", detail: `size ${formatCount(ours.checkpoint.treeSize)}, root ${shortHex(ours.checkpoint.rootHash)}` });
  } catch (error) {
    steps.push({ state: "failed", title: "This log's latest checkpoint", detail: error.message });
  }
  if (ours) {
    const [a, b] = theirs.checkpoint.treeSize <= ours.checkpoint.treeSize ? [theirs.checkpoint, ours.checkpoint] : [ours.checkpoint, theirs.checkpoint];
    try {
      if (b === theirs.checkpoint && a.treeSize !== b.treeSize) {
        throw new Error(`their tree (${b.treeSize}) is larger than the log's latest (${a.treeSize}): the log serves you an older tree than it signed for them`);
      }
      const { proof } = await getJSON("/v1/proofs/consistency", { old_size: String(a.treeSize), new_size: String(b.treeSize) });
      await verifyConsistency(
        a.treeSize,
        b.treeSize,
        proof.map((h, i) => decodeB64(h, `proof[${i}]`)),
        a.rootHash,
        b.rootHash,
      );
      steps.push({ state: "ok", title: "Consistency with this log", detail: `the tree of size ${formatCount(a.treeSize)} is a prefix of the tree of size ${formatCount(b.treeSize)}` });
    } catch (error) {
      steps.push({ state: "failed", title: "Consistency with this log", detail: `FORK or rollback: ${error.message}` });
    }
  }
  show(
    container,
    verdict(steps, "Their checkpoint and this log's are one history.", "Their checkpoint and this log's are NOT shown to be one history: keep both as evidence."),
    stepList(steps, "Comparison"),
  );
}

async function main() {
  const first = fetchPage(); // the latest checkpoints load while the key does
  first.catch(() => {});
  trust = await showTrust(document.getElementById("trust"));
  if (trust === null) {
    document.body.dataset.ready = "error";
    return;
  }
  for (const id of ["old", "new"]) {
    document.getElementById(id).addEventListener("change", (event) => {
      event.target.dataset.touched = "yes";
    });
  }
  document.getElementById("pick").addEventListener("submit", (event) => {
    event.preventDefault();
    document.body.dataset.ready = "busy";
    verifyPair()
      .catch((e) => show(document.getElementById("consistency"), failure(e)))
      .finally(() => {
        document.body.dataset.ready = "yes";
      });
  });
  document.getElementById("older").addEventListener("click", () => loadPage(null).catch((e) => show(document.getElementById("consistency"), failure(e))));
  document.getElementById("foreign").addEventListener("submit", (event) => {
    event.preventDefault();
    document.body.dataset.ready = "busy";
    compareForeign(document.getElementById("foreign-note").value)
      .catch((e) => show(document.getElementById("foreign-result"), failure(e)))
      .finally(() => {
        document.body.dataset.ready = "yes";
      });
  });
  await loadPage(first);
  document.body.dataset.ready = "yes";
}

main().catch((error) => {
  document.body.dataset.ready = "error";
  document.getElementById("main").prepend(failure(error));
});
