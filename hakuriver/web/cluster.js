// Cluster: every node, its load as bars, its GPUs, and their history on demand.
import { html, useState } from "./vendor/htm-preact-standalone.module.js";
import { api } from "./api.js";
import { NodeHistory } from "./charts.js";
import { Bar, ErrorLine, ago, bytes, useLive } from "./util.js";

function capabilities(caps) {
  if (!caps) return html`<span class="muted">runs: unknown</span>`;
  return Object.entries(caps).map(([kind, c]) =>
    html`<span class=${"cap " + (c.available ? "yes" : "no")} title=${c.reason || ""}>${kind}${c.available ? "" : " ✗"}</span> `);
}

function GpuTable({ node }) {
  const stats = new Map(((node.stats && node.stats.gpus) || []).map((g) => [g.index, g]));
  const used = new Set(node.allocated.gpus);
  return html`<table class="gpus" data-testid=${"gpus-" + node.hostname}>
    <thead><tr><th>GPU</th><th>Model</th><th>In use</th><th>Util</th><th>Memory</th><th>Temp</th><th>Power</th></tr></thead>
    <tbody>${node.gpus.map((g) => {
      const s = stats.get(g.index) || {};
      return html`<tr>
        <td>${g.index}</td><td>${g.name}</td>
        <td>${used.has(g.index) ? html`<span class="badge busy">in use</span>` : html`<span class="muted">free</span>`}</td>
        <td>${s.utilization ?? "?"}%</td>
        <td>${bytes(s.memory_used)} / ${bytes(s.memory_total ?? g.memory_total)}</td>
        <td>${s.temperature ?? "?"}°C</td>
        <td>${s.power_watts ?? "?"} W</td>
      </tr>`;
    })}</tbody></table>`;
}

// Admins only (the API refuses anyone else): drain with a reason, or resume.
function DrainControl({ node }) {
  const [asking, setAsking] = useState(false);
  const [reason, setReason] = useState("");
  const [error, setError] = useState(null);
  const path = `/nodes/${encodeURIComponent(node.hostname)}`;
  const send = async (verb, body) => {
    setError(null);
    try { await api("POST", `${path}/${verb}`, { body }); setAsking(false); setReason(""); }
    catch (e) { setError(e); }
  };
  if (node.drained) {
    return html`<span class="node-admin"><button id=${"resume-" + node.hostname} onClick=${() => send("resume", {})}>Resume</button><${ErrorLine} error=${error} /></span>`;
  }
  if (!asking) return html`<span class="node-admin"><button id=${"drain-" + node.hostname} onClick=${() => setAsking(true)}>Drain…</button></span>`;
  return html`<form class="node-admin" onSubmit=${(e) => { e.preventDefault(); send("drain", { reason }); }}>
    <input id=${"drain-reason-" + node.hostname} value=${reason} onInput=${(e) => setReason(e.target.value)} placeholder="why (shown to users)" maxlength="500" />
    <button type="submit" id=${"drain-confirm-" + node.hostname}>Drain</button>
    <button type="button" onClick=${() => setAsking(false)}>Cancel</button>
    <${ErrorLine} error=${error} />
  </form>`;
}

function NodeCard({ node, admin }) {
  const [open, setOpen] = useState(false);
  const a = node.allocated;
  return html`<section class=${"node " + (node.online ? "online" : "offline")} data-testid=${"node-" + node.hostname}>
    <h2>${node.hostname}
      <span class=${"badge " + (node.online ? "ok" : "down")}>${node.online ? "online" : "offline"}</span>
      ${node.drained && html`<span class="badge drained" title=${node.drained.reason || ""}>drained${node.drained.reason ? ": " + node.drained.reason : ""}</span>`}
    </h2>
    ${admin && html`<${DrainControl} node=${node} />`}
    <p class="muted">heartbeat ${ago(node.last_heartbeat)} · ${capabilities(node.capabilities)} · ${node.active_tasks.length} task(s)</p>
    <${Bar} id=${"cores-" + node.hostname} label="Cores" used=${a.cores} total=${node.cores} text=${`${a.cores} / ${node.cores} cores`} />
    <${Bar} id=${"memory-" + node.hostname} label="Memory" used=${a.memory} total=${node.memory} text=${`${bytes(a.memory)} / ${bytes(node.memory)}`} />
    ${node.gpus.length > 0 && html`
      <${Bar} id=${"gpus-bar-" + node.hostname} label="GPUs" used=${a.gpus.length} total=${node.gpus.length} text=${`${a.gpus.length} / ${node.gpus.length} GPUs`} />
      <${GpuTable} node=${node} />
      <button class="link" id=${"history-toggle-" + node.hostname} onClick=${() => setOpen(!open)}>${open ? "Hide" : "Show"} GPU history</button>
      ${open && html`<${NodeHistory} hostname=${node.hostname} />`}`}
  </section>`;
}

export function ClusterPage({ session }) {
  const [nodes, setNodes] = useState(null);
  const [error, setError] = useState(null);
  useLive(["nodes", "tasks"], async () => {
    try { setNodes((await api("GET", "/nodes")).nodes); setError(null); } catch (e) { setError(e); }
  });
  if (!nodes) return html`<${ErrorLine} error=${error} />${!error && html`<p class="loading">Loading nodes…</p>`}`;
  const online = nodes.filter((n) => n.online);
  const sum = (f) => online.reduce((s, n) => s + f(n), 0);
  return html`<h1>Cluster</h1>
    <${ErrorLine} error=${error} />
    <p class="summary" id="cluster-summary">${online.length} of ${nodes.length} node(s) online ·
      ${sum((n) => n.allocated.cores)} / ${sum((n) => n.cores)} cores in use ·
      ${sum((n) => n.allocated.gpus.length)} / ${sum((n) => n.gpus.length)} GPUs in use</p>
    ${nodes.length === 0 && html`<p class="muted">No node has registered yet.</p>`}
    <div class="nodes">${nodes.map((n) => html`<${NodeCard} key=${n.hostname} node=${n} admin=${session.role === "admin"} />`)}</div>`;
}
