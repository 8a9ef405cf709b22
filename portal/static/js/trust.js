// Which log key the pages verify against, and how they say so.
//
// A page that takes the log's key from the server it checks proves only that the server is
// consistent with itself. So the key can be pinned: pasted once (from the operator's
// log.vkey) and kept in this browser's localStorage; every verifying page names the key it
// used and whether it was pinned. Witness keys come from the log's own /v1/log: a witness
// cosignature checked against them shows the witness signed, not that the witness is one you
// trust (the page says so).

import { getJSON } from "./api.js";
import { parseVkey } from "./tlog.js";
import { el, failure, show } from "./ui.js";

const PIN = "meterlog.portal.logKey";

/** The key pinned in this browser, or null. */
export function pinnedKey() {
  try {
    return localStorage.getItem(PIN);
  } catch {
    return null; // storage disabled: nothing is pinned
  }
}

/** Pin a log key (checked to parse first); throws MalformedError on a bad key. */
export async function pinKey(vkey) {
  const verifier = await parseVkey(vkey.trim());
  localStorage.setItem(PIN, verifier.vkey);
  return verifier;
}

export function unpinKey() {
  localStorage.removeItem(PIN);
}

/**
 * What the pages trust: {about (the /v1/log answer), logKey (a verifier), pinned (bool),
 * serverKeyDiffers (bool), witnesses ([verifier])}.
 */
export async function loadTrust() {
  const about = await getJSON("/v1/log");
  const pinned = pinnedKey();
  const logKey = await parseVkey(pinned || about.log_key);
  const witnesses = await Promise.all(about.witnesses.map((w) => parseVkey(w.key)));
  return {
    about,
    logKey,
    pinned: Boolean(pinned),
    serverKeyDiffers: Boolean(pinned) && pinned !== about.log_key,
    witnesses,
  };
}

/**
 * loadTrust(), shown in the page: `container` is replaced by the trust note; if the trust
 * cannot be loaded, it shows the error instead and the answer is null.
 */
export async function showTrust(container) {
  try {
    const trust = await loadTrust();
    container.replaceWith(trustNote(trust));
    return trust;
  } catch (error) {
    show(container, failure(error));
    return null;
  }
}

/** One paragraph naming the key the page verifies with, and where it came from. */
export function trustNote(trust) {
  const source = trust.pinned
    ? "pinned by you in this browser"
    : "as the log states it at /v1/log — not pinned, so this checks the log's consistency with itself, not who it is";
  return el(
    "p",
    { class: "trust", id: "trust-note", "data-pinned": trust.pinned ? "yes" : "no" },
    el("strong", {}, "Log key: "),
    el("code", { class: "break" }, trust.logKey.vkey),
    ` (${source}). `,
    trust.serverKeyDiffers ? el("strong", { class: "error" }, "The log now states a different key! ") : null,
    trust.pinned ? null : el("a", { href: "index.html#pin" }, "Pin the key"),
  );
}
