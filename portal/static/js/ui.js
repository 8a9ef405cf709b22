// Small DOM helpers shared by the portal's pages: build elements without innerHTML (every
// value shown comes from the server and is untrusted text), list verification steps with a
// ✓ or ✗ and words (never colour alone), and format sizes, hashes and times.

/** An element with attributes and children (strings become text nodes, never HTML). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace a container's content. */
export function show(container, ...children) {
  container.replaceChildren(...children.flat().filter((c) => c !== undefined && c !== null));
}

/** An error, as a paragraph announced to screen readers. */
export function failure(error) {
  return el("p", { class: "error", role: "alert" }, error instanceof Error ? error.message : String(error));
}

/** The page's one-line status (#status): what it is loading, or what went wrong. */
export function setStatus(text, error = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = error ? "error" : "status";
}

export const MARKS = { ok: "✓", failed: "✗", skipped: "–" };
export const WORDS = { ok: "verified", failed: "FAILED", skipped: "not checked" };

/** One verification step as a list item: state is "ok", "failed" or "skipped". */
export function stepItem(state, title, detail = "") {
  return el(
    "li",
    { class: state, "data-step": title, "data-state": state },
    el("span", { class: "mark", "aria-hidden": "true" }, MARKS[state]),
    el("strong", {}, `${title}: `),
    el("span", { class: "state" }, WORDS[state]),
    detail ? el("span", { class: "detail" }, detail) : null,
  );
}

/** A list of steps [{state, title, detail}] as an ordered list. */
export function stepList(steps, label) {
  return el("ol", { class: "steps", "aria-label": label }, steps.map((s) => stepItem(s.state, s.title, s.detail)));
}

/** The page-level verdict over a list of steps. */
export function verdict(steps, okText, failedText) {
  const failed = steps.some((s) => s.state === "failed");
  return el(
    "p",
    { class: `verdict ${failed ? "failed" : "ok"}`, role: "status", "data-verdict": failed ? "failed" : "ok" },
    failed ? `✗ ${failedText}` : `✓ ${okText}`,
  );
}

/** "1,234,567" */
export function formatCount(n) {
  return BigInt(n).toLocaleString("en-US");
}

/** Hex of bytes. */
export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A hash shown short: the first and last 8 hex digits. */
export function shortHex(bytes) {
  const h = hex(bytes);
  return h.length <= 20 ? h : `${h.slice(0, 8)}…${h.slice(-8)}`;
}

/** An age in words: "4 s", "3 min", "2 h", "5 d". */
export function formatAge(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/** A time in ms since the epoch as ISO 8601 UTC, to the second. */
export function formatTime(ms) {
  return new Date(Number(ms)).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** Offer bytes or text as a file download. */
export function download(name, content, type = "text/plain") {
  const url = URL.createObjectURL(new Blob([content], { type }));
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
