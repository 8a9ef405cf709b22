// The Buyer page: a job's receipts, each proof bundle verified in this browser (checkpoint
// signature by the log key the user gave, inclusion, the job it names, the edge's signature),
// paged; and the server's one-file download of every bundle of the job, with the command that
// checks it offline.

import { apiURL, getJSON } from "./api.js";
import {
  checkBundle,
  edgeRegistry,
  latestCheckpoint,
  resolveLogKey,
} from "./bundle.js";
import { pinnedKey } from "./trust.js";
import { el, formatCount, formatTime, setStatus, show, stepList } from "./ui.js";

const PAGE = 20;
const $ = (id) => document.getElementById(id);
const state = { job: "", logKey: null, edges: null, after: null, shown: 0, failed: 0 };

function row(index, check) {
  const e = check.entry || {};
  const failed = check.steps.find((s) => s.state === "failed");
  const skipped = check.steps.some((s) => s.state === "skipped");
  const cell = failed
    ? el("td", { class: "failed", "data-state": "failed" }, `✗ FAILED: ${failed.title}: ${failed.detail}`)
    : skipped
      ? el("td", { "data-state": "skipped" }, "– not checked (no log key)")
      : el("td", { class: "ok", "data-state": "ok" }, "✓ verified: signature, inclusion, edge");
  return el("tr", { "data-index": index },
    el("td", { class: "num" }, index), el("td", { class: "mono" }, e.request_id ?? ""),
    el("td", {}, e.consumer_id ?? ""), el("td", { class: "mono break" }, e.content_id ?? ""),
    el("td", {}, e.creator_id ?? ""), el("td", {}, e.scope ?? ""),
    el("td", { class: "num" }, e.bytes_sent ?? ""),
    el("td", {}, e.served_at_ms ? formatTime(e.served_at_ms) : ""), cell);
}

async function loadPage(first) {
  const params = { job: state.job, limit: PAGE };
  if (state.after !== null) params.after = state.after;
  const page = await getJSON("/v1/receipts", params);
  const checked = await Promise.all(page.receipts.map(async (r) => ({
    index: r.index,
    check: await checkBundle(r.bundle, { logKey: state.logKey, edges: state.edges, expect: { job_id: state.job } }),
  })));
  state.shown += checked.length;
  state.failed += checked.filter((c) => c.check.steps.some((s) => s.state === "failed")).length;
  const rows = checked.map((c) => row(c.index, c.check));
  if (first) {
    const head = el("tr", {}, ["index", "request", "consumer", "content", "creator", "scope", "bytes", "served at", "verified"]
      .map((h) => el("th", { scope: "col" }, h)));
    show($("receipts"), el("table", { id: "receipts-table" }, el("caption", {}, `Receipts of job ${state.job}`),
      el("thead", {}, head), el("tbody", {}, rows)));
  } else {
    $("receipts-table").querySelector("tbody").append(...rows);
  }
  state.after = page.next_after;
  $("more-row").hidden = page.next_after === null;
  const verdict = state.failed
    ? el("p", { class: "verdict failed", "data-verdict": "failed" }, `✗ ${state.failed} of ${state.shown} receipt(s) FAILED verification.`)
    : state.logKey
      ? el("p", { class: "verdict ok", "data-verdict": "ok" }, `✓ All ${state.shown} receipt(s) shown verified.`)
      : el("p", { class: "verdict", "data-verdict": "skipped" }, `– ${state.shown} receipt(s) shown, none verified: no log key.`);
  show($("summary"), verdict);
  if (!state.shown) show($("summary"), el("p", {}, `The log has no receipt of job ${state.job}.`));
}

async function showJob(event) {
  if (event) event.preventDefault();
  state.job = $("job").value.trim();
  Object.assign(state, { after: null, shown: 0, failed: 0 });
  if (!/^[\x21-\x7e]{1,255}$/.test(state.job)) {
    setStatus("Job id: printable ASCII without spaces, 1 to 255 characters.", true);
    return;
  }
  try {
    const { logKey, note } = await resolveLogKey($("log-key").value);
    state.logKey = logKey;
    show($("trust"), note);
  } catch (err) {
    setStatus(`Log key: ${err.message}`, true);
    return;
  }
  const url = new URL(location.href);
  url.searchParams.set("job", state.job);
  history.replaceState(null, "", url);
  setStatus(`Loading job ${state.job}…`);
  try {
    const checkpoint = await latestCheckpoint(state.logKey);
    show($("checkpoint-steps"), stepList([{ state: checkpoint.state, title: "checkpoint signature", detail: checkpoint.detail }], "Checkpoint checks"));
    state.edges = await edgeRegistry();
    const zip = apiURL("/v1/receipts.zip", { job: state.job });
    $("download").href = zip.href;
    $("download").setAttribute("download", `receipts-job-${state.job.replace(/[^A-Za-z0-9._-]/g, "_")}.zip`);
    const key = state.logKey ? state.logKey.vkey : "<log vkey>";
    $("verify-cli").textContent = `curl -o job.zip '${zip.href}' && unzip job.zip -d job && meterlog verify bundle --key '${key}' job/receipt-*.tlog-proof`;
    await loadPage(true);
    $("job-result").hidden = false;
    setStatus(`Job ${state.job}: ${formatCount(state.shown)} receipt(s) shown.`);
    document.body.dataset.loaded = "buyer";
    document.body.dataset.ready = "yes";
  } catch (err) {
    setStatus(err.message, true);
  }
}

function main() {
  const params = new URLSearchParams(location.search);
  $("job").value = params.get("job") || "";
  $("log-key").value = params.get("key") || pinnedKey() || "";
  $("pick").addEventListener("submit", showJob);
  $("more").addEventListener("click", async () => {
    try {
      await loadPage(false);
      setStatus(`Job ${state.job}: ${formatCount(state.shown)} receipt(s) shown.`);
    } catch (err) {
      setStatus(err.message, true);
    }
  });
  if (params.get("job")) showJob();
}

main();
