// The dashboard's one door to the Host: the JSON API, with the session cookie.
// Every call carries the session's CSRF token too: the cookie alone is refused
// (browsers send it to every port of this host name; the token stays in this
// origin's storage).

const API = "../api";
const STORED = "hakuriver-csrf";
let csrf = stored();

function stored() {
  try { return window.localStorage.getItem(STORED); } catch (e) { return null; }
}
let onEnded = null;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function setCsrf(token) {
  csrf = token;
  try {
    if (token) window.localStorage.setItem(STORED, token);
    else window.localStorage.removeItem(STORED);
  } catch (e) { /* storage off: this page keeps it in memory */ }
}
export function onSessionEnded(fn) { onEnded = fn; }

async function failure(resp) {
  let code = "http_error", message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    code = body.error.code;
    message = body.error.message;
  } catch (e) { /* not our JSON error */ }
  return new ApiError(resp.status, code, message);
}

// `api("GET", "/tasks")`; with `token`, a bearer token instead of the session (login only).
export async function api(method, path, { body, token, raw } = {}) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  else if (csrf) headers["X-HakuRiver-CSRF"] = csrf;
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(API + path, init);
  if (!resp.ok) {
    const err = await failure(resp);
    // Only while logged in (a CSRF token is held): the first GET /session of a visit, or a
    // call still in flight when the user logged out, ends nothing.
    if (resp.status === 401 && !token && csrf !== null && onEnded) onEnded(err);
    throw err;
  }
  return raw ? resp : resp.json();
}

// One EventSource per page load; listeners get {tasks, nodes} revisions.
const listeners = new Set();
let source = null;
let latest = null;

export function latestRevisions() { return latest; }

export function subscribe(fn) {
  listeners.add(fn);
  if (source === null) {
    // An EventSource sends no custom header: the token goes in the query.
    source = new EventSource(API + "/events?csrf=" + encodeURIComponent(csrf || ""));
    source.addEventListener("changed", (ev) => {
      let revs;
      try { revs = JSON.parse(ev.data); } catch (e) { return; }
      latest = revs;
      for (const l of listeners) l(revs);
    });
  }
  return () => {
    listeners.delete(fn);
    if (listeners.size === 0 && source !== null) { source.close(); source = null; latest = null; }
  };
}

export function closeEvents() {
  listeners.clear();
  if (source !== null) { source.close(); source = null; latest = null; }
}
