// Per-GPU history charts (uPlot) from GET /api/nodes/{name}/history.
import { html, useEffect, useRef, useState } from "./vendor/htm-preact-standalone.module.js";
import uPlot from "./vendor/uPlot.esm.js";
import { api } from "./api.js";
import { ErrorLine, useLive } from "./util.js";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

function Chart({ title, unit, data, names, id }) {
  const el = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const width = Math.max(260, (el.current.clientWidth || 320) - 8);
    const opts = {
      title, width, height: 150,
      series: [{}, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false }))],
      axes: [{}, { size: 48, values: (u, ticks) => ticks.map((v) => v + unit) }],
      scales: { x: { time: true } },
      legend: { show: true },
    };
    plot.current = new uPlot(opts, data, el.current);
    return () => { plot.current.destroy(); plot.current = null; };
  }, [names.join(",")]);
  useEffect(() => { if (plot.current) plot.current.setData(data); }, [data]);
  return html`<div class="chart" ref=${el} data-testid=${id}></div>`;
}

// Align every GPU's samples on one time axis (they come from the same heartbeats).
function columns(gpus, field, scale) {
  const times = [...new Set(gpus.flatMap((g) => g.t))].sort((a, b) => a - b);
  const at = new Map(times.map((t, i) => [t, i]));
  const out = [times];
  for (const g of gpus) {
    const col = new Array(times.length).fill(null);
    g.t.forEach((t, i) => { col[at.get(t)] = scale(g, i, field); });
    out.push(col);
  }
  return out;
}

const plain = (g, i, f) => g[f][i];
const memPct = (g, i) => (g.memory_used[i] !== null && g.memory_total[i]) ? Math.round((1000 * g.memory_used[i]) / g.memory_total[i]) / 10 : null;

export function NodeHistory({ hostname }) {
  const [hist, setHist] = useState(null);
  const [error, setError] = useState(null);
  const last = useRef({ at: 0, interval: 0 });
  useLive(["nodes"], async () => {
    // Nodes change with every heartbeat; the history gains a sample only every `interval` s.
    if (Date.now() - last.current.at < last.current.interval * 1000) return;
    try {
      const h = await api("GET", `/nodes/${encodeURIComponent(hostname)}/history`);
      last.current = { at: Date.now(), interval: h.interval };
      setHist(h);
      setError(null);
    } catch (e) { setError(e); }
  }, [hostname]);
  if (error) return html`<${ErrorLine} error=${error} />`;
  if (!hist) return html`<p class="muted">Loading history…</p>`;
  if (!hist.gpus.length) return html`<p class="muted">No GPU samples in the last hour.</p>`;
  const names = hist.gpus.map((g) => "GPU " + g.index);
  return html`<div class="charts" data-testid=${"history-" + hostname}>
    <${Chart} id=${"chart-util-" + hostname} title="Utilisation (last hour)" unit="%" names=${names} data=${columns(hist.gpus, "utilization", plain)} />
    <${Chart} id=${"chart-mem-" + hostname} title="Memory used" unit="%" names=${names} data=${columns(hist.gpus, "memory", memPct)} />
    <${Chart} id=${"chart-temp-" + hostname} title="Temperature" unit="°C" names=${names} data=${columns(hist.gpus, "temperature", plain)} />
  </div>`;
}
