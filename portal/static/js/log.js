// The Log page: the latest checkpoint (verified here), the tree's growth, the anchors (each
// checked here to be a prefix of the latest tree) and the edge-key registry. Every request
// is one page of an indexed query, so the page costs the same on a log of 10**6 entries.

import { getJSON, getText } from "./api.js";
import {
  cosignerOf,
  decodeB64,
  keyIdHex,
  openCheckpoint,
  parseNote,
  utf8,
  verifyConsistency,
} from "./tlog.js";
import { pinKey, showTrust, unpinKey } from "./trust.js";
import { el, failure, formatAge, formatCount, formatTime, hex, show, shortHex, stepList } from "./ui.js";

const GROWTH_POINTS = 120;
const ANCHORS_SHOWN = 20;

// Transaction pages of public explorers, by chain id; other chains (a local anvil) have none.
const EXPLORERS = {
  1: "https://etherscan.io/tx/",
  10: "https://optimistic.etherscan.io/tx/",
  137: "https://polygonscan.com/tx/",
  8453: "https://basescan.org/tx/",
  17000: "https://holesky.etherscan.io/tx/",
  42161: "https://arbiscan.io/tx/",
  11155111: "https://sepolia.etherscan.io/tx/",
};

/** Who signed the checkpoint: every signature line, and what it was verified as. */
async function signers(note, trust, opened) {
  const stamp = await cosignerOf(trust.logKey);
  const verified = new Set(opened.note.signatures.map((s) => `${s.name}+${s.keyId}`));
  return parseNote(note).lines.map(({ name, keyId }) => {
    const id = `${name}+${keyId}`;
    let role;
    if (name === trust.logKey.name && keyId === trust.logKey.keyId) {
      role = "the log's signature (Ed25519)";
    } else if (name === stamp.name && keyId === stamp.keyId) {
      role = "the log's signed time (cosignature/v1)";
    } else {
      const witness = trust.witnesses.find((w) => w.name === name && w.keyId === keyId);
      role = witness ? "a witness the log lists (cosignature/v1)" : "a signer this page has no key for";
    }
    const state = verified.has(id) ? "verified" : "not verified (no key)";
    return el("tr", {}, el("td", {}, el("code", {}, `${name}+${keyIdHex(keyId)}`)), el("td", {}, role), el("td", {}, state));
  });
}

async function showCheckpoint(trust, pendingNote) {
  const container = document.getElementById("checkpoint");
  const note = await pendingNote;
  const steps = [];
  let opened = null;
  try {
    opened = await openCheckpoint(utf8(note), [trust.logKey], { witnesses: trust.witnesses });
    steps.push({
      state: "ok",
      title: "Checkpoint signature",
      detail: `signed by ${trust.logKey.name}+${keyIdHex(trust.logKey.keyId)}`,
    });
    steps.push(
      trust.witnesses.length
        ? {
            state: opened.witnesses.length ? "ok" : "skipped",
            title: "Witness cosignatures",
            detail: `${opened.witnesses.length} of the ${trust.witnesses.length} witnesses the log lists cosigned${trust.about.quorum ? `; its quorum: ${trust.about.quorum}` : ""}`,
          }
        : { state: "skipped", title: "Witness cosignatures", detail: "the log lists no witnesses" },
    );
  } catch (error) {
    steps.push({ state: "failed", title: "Checkpoint signature", detail: error.message });
    show(container, stepList(steps, "Checkpoint verification"), el("pre", {}, note));
    return null;
  }
  const cp = opened.checkpoint;
  const signedMs = opened.signedTimeS === null ? null : Number(opened.signedTimeS) * 1000;
  show(
    container,
    stepList(steps, "Checkpoint verification"),
    el(
      "dl",
      { class: "facts", id: "checkpoint-facts" },
      el("dt", {}, "Origin"),
      el("dd", {}, el("code", {}, cp.origin)),
      el("dt", {}, "Size"),
      el("dd", { id: "tree-size", "data-size": String(cp.treeSize) }, `${formatCount(cp.treeSize)} entries`),
      el("dt", {}, "Root hash"),
      el("dd", {}, el("code", { class: "break", title: hex(cp.rootHash) }, note.split("\n")[2])),
      el("dt", {}, "Signed"),
      el(
        "dd",
        {},
        signedMs === null
          ? "no signed time (the log's cosignature/v1 line is missing)"
          : `${formatTime(signedMs)} (${formatAge(Date.now() - signedMs)} ago, by the log's signed clock)`,
      ),
    ),
    el(
      "table",
      { id: "signers" },
      el("caption", {}, "Signatures on this checkpoint"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Key"), el("th", { scope: "col" }, "Role"), el("th", { scope: "col" }, "Checked"))),
      el("tbody", {}, await signers(note, trust, opened)),
    ),
    el("details", {}, el("summary", {}, "The signed checkpoint note"), el("pre", {}, note)),
  );
  return cp;
}

/** The growth chart: an inline SVG line of tree size over time, with a table for screen readers. */
async function showGrowth() {
  const container = document.getElementById("growth");
  const { points } = await getJSON("/v1/growth", { points: GROWTH_POINTS });
  if (points.length < 2) {
    show(container, el("p", {}, "Only one checkpoint so far: nothing to chart yet."));
    return;
  }
  const width = 720;
  const height = 240;
  const pad = { left: 70, right: 16, top: 12, bottom: 36 };
  const t0 = points[0].signed_at_ms;
  const t1 = Math.max(points.at(-1).signed_at_ms, t0 + 1);
  const maxSize = Math.max(1, ...points.map((p) => p.tree_size));
  const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * (width - pad.left - pad.right);
  const y = (n) => height - pad.bottom - (n / maxSize) * (height - pad.top - pad.bottom);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-labelledby", "growth-caption");
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("line", { x1: pad.left, y1: height - pad.bottom, x2: width - pad.right, y2: height - pad.bottom, stroke: "#4a4a4a" });
  add("line", { x1: pad.left, y1: pad.top, x2: pad.left, y2: height - pad.bottom, stroke: "#4a4a4a" });
  add("text", { x: pad.left - 6, y: pad.top + 10, "text-anchor": "end", "font-size": 12, fill: "#1a1a1a" }, formatCount(maxSize));
  add("text", { x: pad.left - 6, y: height - pad.bottom, "text-anchor": "end", "font-size": 12, fill: "#1a1a1a" }, "0");
  add("text", { x: pad.left, y: height - 12, "font-size": 12, fill: "#1a1a1a" }, formatTime(t0));
  add("text", { x: width - pad.right, y: height - 12, "text-anchor": "end", "font-size": 12, fill: "#1a1a1a" }, formatTime(t1));
  const path = points.map((p) => `${x(p.signed_at_ms).toFixed(1)},${y(p.tree_size).toFixed(1)}`).join(" ");
  add("polyline", { points: path, fill: "none", stroke: "#0b4fa8", "stroke-width": 2.5 });
  const last = points.at(-1);
  show(
    container,
    el(
      "figure",
      { class: "chart" },
      svg,
      el(
        "figcaption",
        { id: "growth-caption" },
        `Tree size over time: ${points.length} checkpoints sampled evenly from the log's history, from ${formatCount(points[0].tree_size)} entries at ${formatTime(t0)} to ${formatCount(last.tree_size)} at ${formatTime(last.signed_at_ms)}.`,
      ),
    ),
    el(
      "details",
      {},
      el("summary", {}, "The same data as a table"),
      el(
        "table",
        {},
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Signed (UTC)"), el("th", { scope: "col", class: "num" }, "Tree size"))),
        el(
          "tbody",
          {},
          points.map((p) => el("tr", {}, el("td", {}, formatTime(p.signed_at_ms)), el("td", { class: "num" }, formatCount(p.tree_size)))),
        ),
      ),
    ),
  );
}

/** Is the anchored (size, root) a prefix of the latest checkpoint? Verified here. */
async function anchorConsistency(anchor, latest) {
  const size = BigInt(anchor.tree_size);
  if (size > latest.treeSize) return { state: "failed", text: "larger than the latest checkpoint" };
  try {
    const { proof } = await getJSON("/v1/proofs/consistency", { old_size: anchor.tree_size, new_size: String(latest.treeSize) });
    await verifyConsistency(
      size,
      latest.treeSize,
      proof.map((h, i) => decodeB64(h, `proof[${i}]`)),
      decodeB64(anchor.root_hash, "root_hash"),
      latest.rootHash,
    );
    return { state: "ok", text: `✓ a prefix of the tree of size ${formatCount(latest.treeSize)}` };
  } catch (error) {
    return { state: "failed", text: `✗ ${error.message}` };
  }
}

async function showAnchors(latest) {
  const container = document.getElementById("anchors");
  const { anchoring, anchors } = await getJSON("/v1/anchors", { order: "desc", limit: ANCHORS_SHOWN, status: "final" });
  if (!anchoring) {
    show(container, el("p", { id: "no-anchoring" }, "This log does not anchor its checkpoints on a chain (it runs without --anchor-rpc)."));
    return;
  }
  const explorer = EXPLORERS[anchoring.chain_id];
  const rows = await Promise.all(
    anchors.map(async (a) => {
      const check = latest ? await anchorConsistency(a, latest) : { state: "skipped", text: "no verified checkpoint" };
      const tx = explorer ? el("a", { href: explorer + a.tx_hash, rel: "noopener" }, shortHex(bytesOfHex(a.tx_hash))) : el("code", { title: a.tx_hash }, a.tx_hash);
      return el(
        "tr",
        { "data-state": check.state },
        el("td", { class: "num" }, formatCount(a.tree_size)),
        el("td", {}, tx),
        el("td", { class: "num" }, a.block_number ?? "–"),
        el("td", {}, a.status),
        el("td", {}, a.final_at_ms ? formatTime(a.final_at_ms) : "–"),
        el("td", {}, check.text),
      );
    }),
  );
  show(
    container,
    el(
      "p",
      {},
      `Chain ${anchoring.chain_id}, contract `,
      el("code", {}, anchoring.contract),
      `, from `,
      el("code", {}, anchoring.address),
      `, final after ${anchoring.confirmations} confirmation(s). `,
      explorer ? "" : "No public explorer is known for this chain: transaction hashes are shown in full.",
    ),
    anchors.length
      ? el(
          "table",
          { id: "anchor-table" },
          el("caption", {}, `The latest ${anchors.length} final anchors, newest first`),
          el(
            "thead",
            {},
            el(
              "tr",
              {},
              ["Tree size", "Transaction", "Block", "Status", "Final (UTC)", "Consistent with the latest checkpoint"].map((h) =>
                el("th", { scope: "col" }, h),
              ),
            ),
          ),
          el("tbody", {}, rows),
        )
      : el("p", {}, "No final anchor yet."),
  );
}

function bytesOfHex(text) {
  const clean = text.replace(/^0x/, "");
  return Uint8Array.from(clean.match(/../g) || [], (h) => parseInt(h, 16));
}

async function showEdgeKeys() {
  const container = document.getElementById("edge-keys");
  const { edge_keys: keys } = await getJSON("/v1/edge-keys");
  if (!keys.length) {
    show(container, el("p", {}, "No edge key is registered yet."));
    return;
  }
  show(
    container,
    el(
      "table",
      { id: "edge-key-table" },
      el("caption", {}, `${keys.length} edge key(s), each registered by an edge_key entry in the log`),
      el(
        "thead",
        {},
        el("tr", {}, ["Edge", "Key ID", "Valid from (UTC)", "Valid until (UTC)", "Entry"].map((h) => el("th", { scope: "col" }, h))),
      ),
      el(
        "tbody",
        {},
        keys.map((k) =>
          el(
            "tr",
            {},
            el("td", {}, k.edge),
            el("td", {}, el("code", { title: k.key }, k.key_id)),
            el("td", {}, formatTime(k.valid_from_ms)),
            el("td", {}, k.valid_until_ms === null ? "open" : formatTime(k.valid_until_ms)),
            el("td", { class: "num" }, formatCount(k.entry_index)),
          ),
        ),
      ),
    ),
  );
}

function setUpPinning() {
  const form = document.getElementById("pin-form");
  const status = document.getElementById("pin-status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const key = await pinKey(document.getElementById("pin-key").value);
      status.textContent = `Pinned ${key.vkey}. Reloading…`;
      location.reload();
    } catch (error) {
      status.textContent = `Not pinned: ${error.message}`;
    }
  });
  document.getElementById("unpin").addEventListener("click", () => {
    unpinKey();
    status.textContent = "Forgot the pinned key. Reloading…";
    location.reload();
  });
}

async function main() {
  setUpPinning();
  // The growth chart, the registry and the latest checkpoint's note load while the key does.
  const untrusted = [
    showGrowth().catch((e) => show(document.getElementById("growth"), failure(e))),
    showEdgeKeys().catch((e) => show(document.getElementById("edge-keys"), failure(e))),
  ];
  const latestNote = getText("/checkpoint"); // verified once the key is loaded
  latestNote.catch(() => {});
  const trust = await showTrust(document.getElementById("trust"));
  if (trust === null) {
    await Promise.all(untrusted);
    document.body.dataset.ready = "error";
    return;
  }
  const checked = showCheckpoint(trust, latestNote).then((cp) =>
    showAnchors(cp).catch((e) => show(document.getElementById("anchors"), failure(e))),
  );
  await Promise.all([checked, ...untrusted]);
  document.body.dataset.ready = "yes";
}

main().catch((error) => {
  document.body.dataset.ready = "error";
  document.getElementById("main").prepend(failure(error));
});
