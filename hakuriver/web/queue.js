// Queue: pending (with why each waits), running, recent; filtered by user,
// state and node; every table paged by the API (before/limit), never whole.
import { html, useState } from "./vendor/htm-preact-standalone.module.js";
import { api } from "./api.js";
import { ErrorLine, StateBadge, ago, useLive } from "./util.js";

const PAGE = 25;
const SECTIONS = [
  { key: "pending", title: "Pending", states: "pending" },
  { key: "running", title: "Running", states: "assigning,running,paused" },
  { key: "recent", title: "Recent", states: "completed,failed,killed,killed_oom,lost,timeout,cancelled" },
];
const STATES = ["pending", "assigning", "running", "paused", "completed", "failed", "killed", "killed_oom", "lost", "timeout", "cancelled"];

function command(t) {
  const text = t.command.join(" ");
  return text.length > 60 ? text.slice(0, 57) + "…" : text;
}

function TaskTable({ section, user, node }) {
  const [pages, setPages] = useState([null]);
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const before = pages[pages.length - 1];
  const query = new URLSearchParams({ state: section.states, limit: String(PAGE) });
  if (user) query.set("user", user);
  if (node) query.set("node", node);
  if (before) query.set("before", before);
  const qs = query.toString();
  useLive(["tasks"], async () => {
    try { setData(await api("GET", "/tasks?" + qs)); setError(null); } catch (e) { setError(e); }
  }, [qs]);
  const rows = data ? data.tasks : [];
  const pending = section.key === "pending";
  return html`<section class="queue-section" data-testid=${"queue-" + section.key}>
    <h2>${section.title} ${data && html`<span class="muted">(${rows.length}${data.next_before ? "+" : ""} on this page)</span>`}</h2>
    <${ErrorLine} error=${error} />
    <table class="tasks">
      <thead><tr><th>Task</th><th>Owner</th><th>State</th><th>Command</th><th>Node</th><th>Cores</th><th>GPUs</th>
        <th>Submitted</th><th>${pending ? "Why it waits" : "Exit / error"}</th></tr></thead>
      <tbody>${rows.map((t) => html`<tr data-task=${t.task_id}>
        <td><a href=${"#/task/" + t.task_id}>${t.task_id}</a></td>
        <td>${t.owner}</td><td><${StateBadge} state=${t.state} /></td>
        <td><code>${command(t)}</code></td><td>${t.node || ""}</td><td>${t.cores}</td>
        <td>${t.gpus.length ? t.gpus.join(",") : t.gpu_count || ""}</td><td>${ago(t.submitted_at)}</td>
        <td>${pending ? html`${t.position ? "#" + t.position + " " : ""}${t.pending_reason || ""}`
                      : html`${t.exit_code ?? ""} ${t.error || ""}`}</td>
      </tr>`)}</tbody>
    </table>
    ${data && rows.length === 0 && html`<p class="muted">None.</p>`}
    <div class="pager">
      <button disabled=${pages.length <= 1} onClick=${() => setPages(pages.slice(0, -1))}>← Newer</button>
      <button disabled=${pages.length <= 1} onClick=${() => setPages([null])}>Newest</button>
      <button disabled=${!(data && data.next_before)} onClick=${() => setPages([...pages, data.next_before])}>Older →</button>
    </div>
  </section>`;
}

export function QueuePage({ session }) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const [filters, setFilters] = useState({ user: params.get("user") || "", node: params.get("node") || "", state: params.get("state") || "" });
  const set = (k) => (e) => setFilters({ ...filters, [k]: e.target.value.trim() });
  const sections = filters.state
    ? [{ key: filters.state, title: filters.state, states: filters.state }]
    : SECTIONS;
  return html`<h1>Queue</h1>
    <form class="filters" onSubmit=${(e) => e.preventDefault()}>
      <label>User <input id="filter-user" value=${filters.user} onChange=${set("user")} placeholder="anyone" /></label>
      <button type="button" onClick=${() => setFilters({ ...filters, user: session.user })}>Mine</button>
      <label>Node <input id="filter-node" value=${filters.node} onChange=${set("node")} placeholder="any" /></label>
      <label>State <select id="filter-state" value=${filters.state} onChange=${set("state")}>
        <option value="">pending, running, recent</option>
        ${STATES.map((s) => html`<option value=${s}>${s}</option>`)}
      </select></label>
    </form>
    ${sections.map((s) => html`<${TaskTable} key=${s.key + filters.user + "/" + filters.node} section=${s} user=${filters.user} node=${filters.node} />`)}`;
}
