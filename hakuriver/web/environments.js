// Environments: every tarball environment and its versions, and the environment containers.
import { html, useEffect, useState } from "./vendor/htm-preact-standalone.module.js";
import { api } from "./api.js";
import { ErrorLine, bytes, when } from "./util.js";

export function EnvironmentsPage() {
  const [tarballs, setTarballs] = useState(null);
  const [containers, setContainers] = useState(null);
  const [errors, setErrors] = useState({});
  useEffect(() => {
    api("GET", "/environments/tarballs").then((d) => setTarballs(d.tarballs)).catch((e) => setErrors((x) => ({ ...x, tarballs: e })));
    api("GET", "/environments/containers").then((d) => setContainers(d.containers)).catch((e) => setErrors((x) => ({ ...x, containers: e })));
  }, []);
  const byName = new Map();
  for (const t of tarballs || []) {
    if (!byName.has(t.name)) byName.set(t.name, []);
    byName.get(t.name).push(t);
  }
  return html`<h1>Environments</h1>
    <section><h2>Tarballs</h2>
      <${ErrorLine} error=${errors.tarballs} />
      <table class="envs" id="env-tarballs"><thead><tr><th>Environment</th><th>Versions (newest first)</th></tr></thead>
      <tbody>${[...byName.entries()].map(([name, versions]) => html`<tr data-env=${name}>
        <td>${name}</td>
        <td>${versions.sort((a, b) => b.version - a.version).map((v, i) => html`<div class="version">
          <code>${v.version}</code> ${when(v.version)} · ${bytes(v.size)}${i === 0 ? html` <span class="badge ok">newest</span>` : ""}</div>`)}</td>
      </tr>`)}</tbody></table>
      ${tarballs && tarballs.length === 0 && html`<p class="muted">No environment tarball yet.</p>`}
    </section>
    <section><h2>Containers (being prepared)</h2>
      <${ErrorLine} error=${errors.containers} />
      ${containers && (containers.length === 0 ? html`<p class="muted">None.</p>` : html`<table class="envs"><thead><tr><th>Environment</th><th>Status</th><th>Image</th></tr></thead>
        <tbody>${containers.map((c) => html`<tr><td>${c.name}</td><td>${c.status}</td><td><code>${c.image}</code></td></tr>`)}</tbody></table>`)}
    </section>`;
}
