// The Creator page: a creator's statements (each document checked against the digest its
// logged entry names), the lines with their totals, the receipts behind a line (paged, each
// bundle verified here), the usage logged since the last run (provisional), a CSV of a
// statement computed here from the verified document (billing's format, byte for byte), and a
// dispute of a line signed in this browser with WebCrypto Ed25519 (the key is never sent).

import { APIError, apiURL, getBytes, getJSON, postJSON } from "./api.js";
import {
  checkBundle,
  edgeRegistry,
  latestCheckpoint,
  resolveLogKey,
} from "./bundle.js";
import { pinnedKey } from "./trust.js";
import {
  MalformedError,
  canonicalJSON,
  concat,
  decodeB64,
  encodeB64,
  fromHex,
  hex,
  keyIdHex,
  leafHash,
  makeVerifier,
  sha256,
  signedMessage,
  utf8,
  verifyInclusion,
} from "./tlog.js";
import { download, el, formatCount, formatTime, setStatus, show, stepList, verdict } from "./ui.js";

const PAGE_PARAM = Number(new URLSearchParams(location.search).get("limit"));
const PAGE = Number.isSafeInteger(PAGE_PARAM) && PAGE_PARAM >= 1 && PAGE_PARAM <= 1000 ? PAGE_PARAM : 20;
const $ = (id) => document.getElementById(id);

const state = {
  creator: null,
  fileName: "", // the name billing gives this creator's statement files, without extension
  logKey: null,
  checkpoint: null, // {note, opened} when verified
  edges: null,
  statement: null, // {record, document, bytes}
  line: null,
  lineAfter: null,
  provisionalAfter: null,
};

// -- money and CSV (billing/run.py's CSV_COLUMNS and _csv_chunks, for the same bytes) --------

/** An amount in minor units as a decimal in major units: 12345, 2 -> "123.45". */
export function formatMinor(minor, exponent) {
  const n = BigInt(minor);
  const sign = n < 0n ? "-" : "";
  const digits = (n < 0n ? -n : n).toString().padStart(exponent + 1, "0");
  return exponent ? `${sign}${digits.slice(0, -exponent)}.${digits.slice(-exponent)}` : `${sign}${digits}`;
}

export const CSV_COLUMNS = [
  "line", "type", "period", "for_period_end_ms", "content_id", "manifest", "version", "scope",
  "consumer_id", "quantity", "unit", "rate", "sample_rates", "amount_minor", "fee_minor",
  "reserve_minor", "creator_minor", "leaf_count", "leaf_indices",
];

/** A CSV field as Python's csv.writer writes it (QUOTE_MINIMAL). */
function csvField(value) {
  const text = value === undefined || value === null ? "" : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/** The statement's lines as billing's CSV export (statement-<creator>.csv), from its document. */
export function statementCSV(doc) {
  const rows = [CSV_COLUMNS.join(",")];
  for (const line of doc.lines) {
    rows.push(
      [
        line.line, line.type, line.period, line.for_period_end_ms ?? "", line.content_id,
        line.manifest, line.version, line.scope ?? "", line.consumer_id ?? "", line.quantity,
        line.unit, line.rate, line.sample_rates.join(" "), line.amount_minor, line.fee_minor,
        line.reserve_minor, line.creator_minor, line.leaf_indices.length,
      ].map(csvField).join(",") + "," + line.leaf_indices.join(" "),
    );
  }
  return rows.join("\r\n") + "\r\n";
}

// -- the dispute: the bytes tlog.entry.sign_dispute signs, signed here --------------------------

const PKCS8_ED25519 = fromHex("302e020100300506032b657004220420");
const REASON = /^[\x20-\x7e]{1,1000}$/;

function fieldError(field, reason) {
  return new MalformedError(field, reason);
}

/**
 * A creator signing key `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>` (tlog.note's
 * format_skey) as a WebCrypto key and its verifier; the key ID must be the derived key's.
 */
export async function importSigningKey(text) {
  // At most five parts, as parse_skey's split("+", 4): base64 may hold "+" itself.
  const all = text.trim().split("+");
  const parts = all.length > 5 ? [...all.slice(0, 4), all.slice(4).join("+")] : all;
  if (parts.length !== 5 || parts[0] !== "PRIVATE" || parts[1] !== "KEY") {
    throw fieldError("key", "not PRIVATE+KEY+<name>+<hex id>+<base64 key>");
  }
  const [, , name, hexId, b64] = parts;
  const raw = decodeB64(b64, "key");
  if (raw.length !== 33 || raw[0] !== 0x01) throw fieldError("key", "not an Ed25519 (type 0x01) key");
  const key = await crypto.subtle.importKey("pkcs8", concat(PKCS8_ED25519, raw.slice(1)), { name: "Ed25519" }, true, ["sign"]);
  const jwk = await crypto.subtle.exportKey("jwk", key);
  const publicKey = decodeB64(jwk.x.replaceAll("-", "+").replaceAll("_", "/") + "=", "key");
  const verifier = await makeVerifier(name, 0x01, publicKey);
  if (keyIdHex(verifier.keyId) !== hexId) throw fieldError("key", `key ID ${hexId} does not match the key`);
  return { name, key, verifier };
}

/**
 * The signed dispute entry (a JSON object, as decode_entry reads it) opening a line. `follows`
 * is the index of the line's latest close (null the first time the line is disputed): the
 * log refuses an open that does not follow it, so an old one cannot be replayed.
 */
export async function signDispute({ creatorId, statement, line, reason, follows = null }, signing) {
  if (!Number.isSafeInteger(line) || line < 1) throw fieldError("dispute.line", "must be a whole number from 1");
  if (!REASON.test(reason)) throw fieldError("dispute.reason", "printable ASCII, 1 to 1,000 characters");
  if (follows !== null && (!Number.isSafeInteger(follows) || follows < 0)) {
    throw fieldError("dispute.follows", "must be an entry index");
  }
  if (signing.name !== creatorId) {
    throw fieldError("key", `the key is ${signing.name}'s, the statement ${creatorId}'s`);
  }
  const entry = {
    kind: "dispute", action: "open", by: "creator", creator_id: creatorId, statement, line,
    reason, key_id: keyIdHex(signing.verifier.keyId),
  };
  if (follows !== null) entry.follows = follows;
  const signature = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, signing.key, signedMessage(entry)));
  return { ...entry, signature: encodeB64(signature) };
}

function shellQuote(text) {
  return /^[A-Za-z0-9_./:@=+-]+$/.test(text) ? text : `'${text.replaceAll("'", `'"'"'`)}'`;
}

/**
 * The file name a billing run gives a creator's statement (billing.run.statement_name): the
 * id made safe, and the first 8 hex digits of its SHA-256, so two ids with the same safe form
 * still get two files.
 */
export async function statementName(creatorId) {
  const tag = hex(await sha256(utf8(creatorId))).slice(0, 8);
  return `statement-${creatorId.replace(/[^A-Za-z0-9._@-]/g, "_").slice(0, 80)}-${tag}`;
}

function disputeCommand(file, line, reason) {
  const log = apiURL("/").href.replace(/\/$/, "");
  return `meterlog billing dispute ${shellQuote(file)} --line ${line} --reason ${shellQuote(reason || "…")} ` +
    `--key-file creator.key --log ${log}`;
}

// -- loading -------------------------------------------------------------------------------------

async function loadCreators(selected) {
  const { creators } = await getJSON("/v1/creators");
  show($("creator"), creators.map((c) => el("option", { value: c.creator_id, selected: c.creator_id === selected }, c.creator_id)));
  if (!creators.length) setStatus("The log registers no creators yet.");
}

async function verifyCheckpoint() {
  const result = await latestCheckpoint(state.logKey);
  state.checkpoint = result.state === "ok" ? result : null;
  const steps = [{ state: result.state, title: "checkpoint signature", detail: result.detail }];
  show($("checkpoint-steps"), stepList(steps, "Checkpoint checks"));
  $("checkpoint").hidden = false;
}

function receiptRows(results, provisional) {
  const head = el("tr", {},
    ["index", "request", "consumer", "job", "bytes", "served at", "verified"].map((h) => el("th", { scope: "col" }, h)));
  const rows = results.map(({ index, check }) => {
    const e = check.entry || {};
    const failed = check.steps.find((s) => s.state === "failed");
    const skipped = check.steps.some((s) => s.state === "skipped");
    const cell = failed
      ? el("td", { class: "failed", "data-state": "failed" }, `✗ FAILED: ${failed.title}: ${failed.detail}`)
      : skipped
        ? el("td", { "data-state": "skipped" }, "– not checked (no log key)")
        : el("td", { class: "ok", "data-state": "ok" }, "✓ verified");
    return el("tr", { "data-index": index, class: provisional ? "provisional" : null },
      el("td", { class: "num" }, provisional ? `${index} (provisional)` : String(index)),
      el("td", { class: "mono" }, e.request_id ?? ""), el("td", {}, e.consumer_id ?? ""),
      el("td", {}, e.job_id ?? ""), el("td", { class: "num" }, e.bytes_sent ?? ""),
      el("td", {}, e.served_at_ms ? formatTime(e.served_at_ms) : ""), cell);
  });
  return el("table", {}, el("thead", {}, head), el("tbody", {}, rows));
}

async function checkAll(receipts) {
  state.edges ??= edgeRegistry(); // one fetch, however many sections ask at once
  const edges = await state.edges;
  return Promise.all(receipts.map(async (r) => ({
    index: r.index,
    check: await checkBundle(r.bundle, { logKey: state.logKey, edges, expect: { creator_id: state.creator } }),
  })));
}

async function loadProvisional() {
  const p = await getJSON(`/v1/creators/${encodeURIComponent(state.creator)}/provisional`);
  const since = p.after_statement ? `since the last ${p.currency} run ended at index ${p.from_index}` : "since the log began (no run yet)";
  show($("provisional-summary"),
    el("strong", { "data-receipts": p.receipts }, `${formatCount(p.receipts)} receipt(s)`),
    ` naming ${p.creator_id} logged ${since}, up to tree size ${formatCount(p.tree_size)}. `,
    "Provisional: counted from the log's index, not priced; the next billing run may still exclude some.");
  state.provisionalAfter = p.from_index > 0 ? p.from_index - 1 : null;
  await showProvisional();
  $("provisional").hidden = false;
}

/** A page of the provisional receipts, from state.provisionalAfter (null: from the start). */
async function showProvisional() {
  const params = { creator: state.creator, limit: PAGE };
  if (state.provisionalAfter !== null) params.after = state.provisionalAfter;
  const page = await getJSON("/v1/receipts", params);
  const checked = await checkAll(page.receipts);
  show($("provisional-receipts"), checked.length ? receiptRows(checked, true) : el("p", {}, "None."));
  state.provisionalAfter = page.next_after;
  $("provisional-more-row").hidden = page.next_after === null;
}

async function loadStatements() {
  const { statements } = await getJSON("/v1/statements", { creator: state.creator, latest: 1, limit: PAGE });
  if (!statements.length) {
    show($("statements-table"), el("p", {}, "No statement for this creator in the log yet."));
  } else {
    const head = el("tr", {}, ["entry", "range", "period end", "lines", "digest", ""].map((h) => el("th", { scope: "col" }, h)));
    const rows = statements.map((s) => el("tr", {},
      el("td", { class: "num" }, s.entry_index), el("td", {}, `[${s.range_start}, ${s.range_end})`),
      el("td", {}, formatTime(s.period_end_ms)), el("td", { class: "num" }, s.lines),
      el("td", { class: "mono break" }, s.digest),
      el("td", {}, el("button", { type: "button", class: "secondary open-statement", "data-digest": s.digest }, "Open"))));
    show($("statements-table"), el("table", {}, el("caption", {}, "Newest first"), el("thead", {}, head), el("tbody", {}, rows)));
    for (const button of document.querySelectorAll("button.open-statement")) {
      button.addEventListener("click", () => openStatement(statements.find((s) => s.digest === button.dataset.digest)));
    }
  }
  $("statements").hidden = false;
  if (statements.length) await openStatement(statements[0]);
}

/** Check the logged statement entry: included under the verified checkpoint, names `digest`. */
async function checkStatementEntry(record) {
  const { entries } = await getJSON("/v1/entries", { start: record.entry_index, end: record.entry_index + 1 });
  const bytes = utf8(entries[0].entry);
  const entry = JSON.parse(entries[0].entry);
  if (entry.kind !== "statement" || entry.digest !== record.digest || entry.creator_id !== state.creator) {
    throw new Error(`the entry at ${record.entry_index} is not this creator's statement ${record.digest}`);
  }
  if (!state.checkpoint) return "skipped";
  const { checkpoint } = state.checkpoint.opened;
  const proof = await getJSON("/v1/proofs/inclusion", { index: record.entry_index, tree_size: checkpoint.treeSize });
  await verifyInclusion(await leafHash(bytes), BigInt(record.entry_index), checkpoint.treeSize,
    proof.proof.map((h) => decodeB64(h, "proof")), checkpoint.rootHash);
  return "ok";
}

async function openStatement(record) {
  const steps = [];
  let doc = null;
  let bytes = null;
  try {
    bytes = await getBytes(`/v1/statements/${record.digest}/document`);
    const digest = `sha256:${hex(await sha256(bytes))}`;
    if (digest !== record.digest) throw new Error(`its SHA-256 is ${digest}, not ${record.digest}`);
    doc = JSON.parse(new TextDecoder().decode(bytes));
    steps.push({ state: "ok", title: "document digest", detail: `SHA-256 of the ${formatCount(bytes.length)} bytes is the logged digest` });
  } catch (err) {
    steps.push({ state: "failed", title: "document digest", detail: err.message });
  }
  try {
    const result = await checkStatementEntry(record);
    steps.push(result === "ok"
      ? { state: "ok", title: "statement entry in the log", detail: `index ${record.entry_index}, included under the checkpoint` }
      : { state: "skipped", title: "statement entry in the log", detail: "no log key: inclusion not checked" });
  } catch (err) {
    steps.push({ state: "failed", title: "statement entry in the log", detail: err.message });
  }
  state.statement = { record, document: doc, bytes };
  show($("statement-steps"), stepList(steps, "Statement checks"),
    verdict(steps, "The doc is the one the log's statement entry names.", "This statement could not be verified."));
  $("statement").hidden = false;
  $("csv").disabled = !doc;
  if (!doc) {
    show($("statement-facts"));
    show($("lines"));
    return;
  }
  const exp = doc.currency.minor_exponent;
  const money = (m) => `${formatMinor(m, exp)} ${doc.currency.code}`;
  const t = doc.totals;
  show($("statement-facts"), el("dl", { class: "facts" },
    el("dt", {}, "Digest"), el("dd", { class: "mono break" }, record.digest),
    el("dt", {}, "Range"), el("dd", {}, `[${doc.range.start}, ${doc.range.end}) under tree size ${doc.log.tree_size}`),
    el("dt", {}, "Period"), el("dd", {}, `${formatTime(doc.period.start_ms)} to ${formatTime(doc.period.end_ms)}`),
    el("dt", {}, "Gross"), el("dd", { "data-total": "gross" }, money(t.gross_minor)),
    el("dt", {}, "Fee"), el("dd", {}, money(t.fee_minor)),
    el("dt", {}, "Reserve held"), el("dd", {}, money(t.reserve_minor)),
    el("dt", {}, "Yours"), el("dd", {}, money(t.creator_minor)),
    el("dt", {}, "Paid"), el("dd", { "data-total": "paid" }, money(t.paid_minor)),
    el("dt", {}, "Carried over"), el("dd", {}, money(t.carry_out_minor))));
  const disputes = (await getJSON("/v1/disputes", { creator: state.creator, statement: record.digest, open: 1 })).disputes;
  const disputed = new Set(disputes.map((d) => d.line));
  const head = el("tr", {}, ["line", "type", "content", "scope", "quantity", "rate", "amount", "fee", "reserve", "yours", "receipts", ""]
    .map((h) => el("th", { scope: "col" }, h)));
  const rows = doc.lines.map((l) => el("tr", { "data-line": l.line },
    el("td", { class: "num" }, l.line), el("td", {}, `${l.type}${l.period === "adjustment" ? " (adjustment)" : ""}`),
    el("td", { class: "mono break" }, l.content_id), el("td", {}, l.scope ?? ""),
    el("td", { class: "num" }, `${l.quantity} ${l.unit}`), el("td", { class: "num" }, l.rate),
    el("td", { class: "num" }, money(l.amount_minor)), el("td", { class: "num" }, money(l.fee_minor)),
    el("td", { class: "num" }, money(l.reserve_minor)), el("td", { class: "num" }, money(l.creator_minor)),
    el("td", { class: "num" }, formatCount(l.leaf_indices.length)),
    el("td", {},
      el("button", { type: "button", class: "secondary line-receipts", "data-line": l.line }, `Receipts of line ${l.line}`), " ",
      disputed.has(l.line)
        ? el("span", { class: "disputed" }, "disputed (open)")
        : el("button", { type: "button", class: "secondary line-dispute", "data-line": l.line }, `Dispute line ${l.line}`))));
  const foot = el("tr", {}, el("th", { scope: "row", colspan: 6 }, "Totals"),
    el("td", { class: "num" }, money(t.gross_minor)), el("td", { class: "num" }, money(t.fee_minor)),
    el("td", { class: "num" }, money(t.reserve_minor)), el("td", { class: "num" }, money(t.creator_minor)),
    el("td", {}), el("td", {}));
  show($("lines"), el("table", { id: "lines-table" }, el("caption", {}, `Lines (${doc.lines.length})`),
    el("thead", {}, head), el("tbody", {}, rows), el("tfoot", {}, foot)));
  for (const b of window.document.querySelectorAll("button.line-receipts")) {
    b.addEventListener("click", () => showLine(Number(b.dataset.line), true));
  }
  for (const b of window.document.querySelectorAll("button.line-dispute")) {
    b.addEventListener("click", () => openDispute(Number(b.dataset.line)));
  }
}

async function showLine(line, fresh) {
  const { record } = state.statement;
  if (fresh) {
    state.line = line;
    state.lineAfter = null;
  }
  const params = { limit: PAGE };
  if (state.lineAfter !== null) params.after = state.lineAfter;
  const page = await getJSON(`/v1/statements/${record.digest}/lines/${line}/receipts`, params);
  const checked = await checkAll(page.receipts);
  const failed = checked.filter((c) => c.check.steps.some((s) => s.state === "failed")).length;
  show($("line-receipts-summary"),
    `Line ${line} counts ${formatCount(page.leaf_count)} receipt(s). This page shows ${checked.length}` +
      (failed ? `; ${failed} FAILED verification.` : "; each checked below."));
  show($("line-receipts-table"), receiptRows(checked, false));
  state.lineAfter = page.next_after;
  $("line-more-row").hidden = page.next_after === null;
  $("line-receipts").hidden = false;
  $("line-receipts-h").textContent = `Receipts behind line ${line}`;
  if (fresh) $("line-receipts-h").focus();
}

function openDispute(line) {
  const { record } = state.statement;
  $("dispute-statement").value = record.digest;
  $("dispute-line").value = String(line);
  $("dispute-line").max = String(record.lines);
  $("dispute-result").textContent = "";
  updateCommand();
  $("dispute").hidden = false;
  $("dispute-h").focus();
}

function updateCommand() {
  $("dispute-cli").textContent = disputeCommand(`${state.fileName}.json`, $("dispute-line").value || "N", $("dispute-reason").value);
}

function disputeMessage(err) {
  if (err instanceof APIError) return `The log refused it (HTTP ${err.status}): ${err.field ? `${err.field}: ` : ""}${err.reason}`;
  if (err instanceof MalformedError) return `${err.field}: ${err.reason}`;
  return err.message || String(err);
}

/** The index of the line's latest close, which a new open follows (null: never disputed). */
async function latestClose(statement, line) {
  const listed = (await getJSON("/v1/disputes", { creator: state.creator, statement })).disputes;
  const mine = listed.filter((d) => d.line === line).sort((a, b) => a.opened_index - b.opened_index);
  return mine.length ? mine[mine.length - 1].closed_index : null;
}

async function sendDispute(event) {
  event.preventDefault();
  const result = $("dispute-result");
  result.className = "";
  result.textContent = "Signing…";
  const { record } = state.statement;
  try {
    const lineText = $("dispute-line").value.trim();
    if (!/^[1-9][0-9]*$/.test(lineText)) throw fieldError("dispute.line", "must be a whole number from 1");
    const line = Number(lineText);
    if (line > record.lines) throw fieldError("dispute.line", `the statement has ${record.lines} line(s)`);
    const keyText = $("dispute-key").value;
    if (!keyText.trim()) throw fieldError("key", "paste your creator signing key");
    const signing = await importSigningKey(keyText);
    const follows = await latestClose(record.digest, line);
    const entry = await signDispute({ creatorId: state.creator, statement: record.digest, line, reason: $("dispute-reason").value, follows }, signing);
    const answer = await postJSON("/v1/disputes", entry);
    let proof = "its inclusion was not checked (no log key)";
    if (state.logKey) {
      const check = await checkBundle(answer.bundle, { logKey: state.logKey, expect: { kind: "dispute", line, statement: record.digest } });
      proof = check.steps.every((s) => s.state === "ok") ? "its inclusion proof verified here" : "its proof did NOT verify";
    }
    result.className = "ok";
    result.dataset.index = answer.index;
    result.textContent = `✓ Dispute ${answer.status} at index ${answer.index}; ${proof}.`;
    $("dispute-key").value = "";
    await openStatement(record);
  } catch (err) {
    result.className = "error";
    result.textContent = `✗ Not sent: ${disputeMessage(err)}`;
  }
}

async function show_(event) {
  if (event) event.preventDefault();
  state.creator = $("creator").value;
  state.fileName = await statementName(state.creator);
  state.edges = null;
  try {
    const { logKey, note } = await resolveLogKey($("log-key").value);
    state.logKey = logKey;
    show($("trust"), note);
  } catch (err) {
    setStatus(`Log key: ${err.message}`, true);
    return;
  }
  const url = new URL(location.href);
  url.searchParams.set("creator", state.creator);
  history.replaceState(null, "", url);
  setStatus(`Loading ${state.creator}…`);
  try {
    await verifyCheckpoint();
    // The two sections read and verify apart: load them at once (a page load on a large log
    // is their round trips and checks, not the data).
    await Promise.all([loadProvisional(), loadStatements()]);
    setStatus(`Showing ${state.creator}.`);
    window.document.body.dataset.loaded = "creator";
    window.document.body.dataset.ready = "yes";
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function main() {
  const params = new URLSearchParams(location.search);
  $("log-key").value = params.get("key") || pinnedKey() || "";
  $("pick").addEventListener("submit", show_);
  $("line-more").addEventListener("click", () => showLine(state.line, false).catch((e) => setStatus(e.message, true)));
  $("provisional-more").addEventListener("click", () => showProvisional().catch((e) => setStatus(e.message, true)));
  $("dispute-form").addEventListener("submit", sendDispute);
  $("dispute-line").addEventListener("input", updateCommand);
  $("dispute-reason").addEventListener("input", updateCommand);
  $("csv").addEventListener("click", () => {
    const { document: doc } = state.statement;
    download(`${state.fileName}.csv`, statementCSV(doc), "text/csv");
  });
  try {
    await loadCreators(params.get("creator"));
  } catch (err) {
    setStatus(err.message, true);
    return;
  }
  if (params.get("creator") && $("creator").value) await show_();
}

main();
