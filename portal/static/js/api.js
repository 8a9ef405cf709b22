// Fetch helpers for the log's read API. Same origin: the portal is served by the log itself
// under /portal/, so every path here is absolute from the site root. Nothing fetched here is
// trusted: the pages verify what they show with tlog.js, or say that they did not.

/** An HTTP answer that was not 2xx: the log's error JSON names the field and the reason. */
export class APIError extends Error {
  constructor(path, status, field, reason) {
    super(field ? `${path}: ${status}: ${field}: ${reason}` : `${path}: ${status}: ${reason}`);
    this.name = "APIError";
    this.path = path;
    this.status = status;
    this.field = field;
    this.reason = reason;
  }
}

/** The site root of the log (the portal lives at <root>/portal/). */
export const LOG_ROOT = new URL("../", document.baseURI.replace(/\/portal\/.*$/, "/portal/"));

/** The absolute URL of an API path such as "/v1/checkpoints", with query parameters. */
export function apiURL(path, params = {}) {
  const url = new URL(path.replace(/^\//, ""), LOG_ROOT);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  return url;
}

async function checked(path, response) {
  if (response.ok) return response;
  let field = "";
  let reason = response.statusText;
  try {
    const body = await response.json();
    if (body && body.error) {
      field = body.error.field || "";
      reason = body.error.reason || reason;
    } else if (body && body.detail) {
      reason = body.detail;
    }
  } catch {
    // not JSON: keep the status text
  }
  throw new APIError(path, response.status, field, reason);
}

/** GET a JSON document. */
export async function getJSON(path, params = {}) {
  const response = await fetch(apiURL(path, params), { headers: { Accept: "application/json" } });
  return (await checked(path, response)).json();
}

/** GET a text document (a checkpoint note). */
export async function getText(path, params = {}) {
  const response = await fetch(apiURL(path, params));
  return (await checked(path, response)).text();
}

/** GET raw bytes (a tile). */
export async function getBytes(path, params = {}) {
  const response = await fetch(apiURL(path, params));
  return new Uint8Array(await (await checked(path, response)).arrayBuffer());
}

/** POST a JSON body and return the JSON answer (the portal writes only disputes). */
export async function postJSON(path, body) {
  const response = await fetch(apiURL(path), {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  return (await checked(path, response)).json();
}
