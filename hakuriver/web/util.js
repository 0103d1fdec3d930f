import { html, useEffect, useRef } from "./vendor/htm-preact-standalone.module.js";
import { latestRevisions, subscribe } from "./api.js";

export const FINAL = new Set(["completed", "failed", "killed", "killed_oom", "lost", "timeout", "cancelled"]);

// Call `load` now and whenever one of `topics` changes (at most once a second:
// the Host sends no more), never two at once.
export function useLive(topics, load, deps = []) {
  const ref = useRef({ busy: false, again: false });
  useEffect(() => {
    let alive = true;
    const state = ref.current;
    const run = async () => {
      if (state.busy) { state.again = true; return; }
      state.busy = true;
      try { await load(); } finally {
        state.busy = false;
        if (state.again && alive) { state.again = false; run(); }
      }
    };
    run();
    const key = (revs) => topics.map((t) => revs[t]).join(",");
    let seen = latestRevisions() ? key(latestRevisions()) : null;
    const off = subscribe((revs) => {
      const now = key(revs);
      if (seen !== null && now !== seen && alive) run();
      seen = now;
    });
    return () => { alive = false; off(); };
  }, deps);
}

export function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

export function ago(t) {
  if (!t) return "";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ");
}

export function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "";
}

export function Bar({ label, used, total, text, id }) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const level = pct >= 90 ? "high" : pct >= 60 ? "mid" : "low";
  return html`<div class="bar-row">
    <span class="bar-label">${label}</span>
    <div class="bar" role="meter" aria-label=${label} aria-valuemin="0" aria-valuemax=${total}
         aria-valuenow=${used} data-testid=${id}>
      <div class=${"fill " + level} style=${{ width: pct + "%" }}></div>
    </div>
    <span class="bar-text">${text}</span>
  </div>`;
}

export function StateBadge({ state }) {
  return html`<span class=${"badge state-" + state}>${state}</span>`;
}

export function ErrorLine({ error }) {
  return error ? html`<p class="error" role="alert">${error.message || String(error)}</p>` : null;
}
