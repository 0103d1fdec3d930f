// Task: detail, live stdout/stderr while it runs, kill/pause/resume where allowed.
import { html, useEffect, useRef, useState } from "./vendor/htm-preact-standalone.module.js";
import { api } from "./api.js";
import { ErrorLine, FINAL, StateBadge, bytes, useLive, when } from "./util.js";

const KEEP = 256 * 1024;  // characters of each log kept on the page

function LogView({ id, stream, running, attempt }) {
  const [text, setText] = useState("");
  const [error, setError] = useState(null);
  const state = useRef({ offset: 0, decoder: new TextDecoder(), text: "", done: false });
  const pre = useRef(null);
  useEffect(() => {
    let alive = true;
    let timer = null;
    const s = state.current;
    const poll = async () => {
      try {
        for (;;) {
          const which = attempt ? `&attempt=${attempt}` : "";
          const resp = await api("GET", `/tasks/${id}/logs?stream=${stream}&offset=${s.offset}${which}`, { raw: true });
          const chunk = new Uint8Array(await resp.arrayBuffer());
          s.offset = Number(resp.headers.get("X-HakuRiver-Next-Offset") || s.offset);
          if (chunk.length) s.text = (s.text + s.decoder.decode(chunk, { stream: true })).slice(-KEEP);
          if (chunk.length < 1024 * 1024) break;  // a full chunk: more is waiting
        }
        if (alive) { setText(s.text); setError(null); }
      } catch (e) {
        if (alive) setError(e);
        if (e.status === 403 || e.status === 404) s.done = true;
      }
      if (alive && running && !s.done) timer = setTimeout(poll, 1000);
    };
    poll();
    return () => { alive = false; clearTimeout(timer); };
  }, [id, stream, running, attempt]);
  useEffect(() => { if (pre.current) pre.current.scrollTop = pre.current.scrollHeight; }, [text]);
  return html`<section class="log">
    <h2>${stream} ${running && html`<span class="badge live">live</span>`}</h2>
    <${ErrorLine} error=${error} />
    <pre id=${"log-" + stream} ref=${pre}>${text}</pre>
  </section>`;
}

function Field({ name, children }) {
  return html`<tr><th>${name}</th><td>${children}</td></tr>`;
}

export function TaskPage({ id, session }) {
  const [task, setTask] = useState(null);
  const [error, setError] = useState(null);
  const [message, setMessage] = useState(null);
  const [busy, setBusy] = useState(false);
  const [shown, setShown] = useState(null);  // an earlier attempt whose output is shown; null: the current one's
  useLive(["tasks"], async () => {
    try { setTask(await api("GET", `/tasks/${encodeURIComponent(id)}`)); setError(null); } catch (e) { setError(e); }
  }, [id]);
  if (!task) return html`<${ErrorLine} error=${error} />${!error && html`<p class="loading">Loading task ${id}…</p>`}`;
  const mine = session.role === "admin" || task.owner === session.user;
  const act = async (verb) => {
    setBusy(true);
    setMessage(null);
    try {
      setTask(await api("POST", `/tasks/${task.task_id}/${verb}`, { body: {} }));
      setMessage({ ok: true, text: `${verb}: done` });
    } catch (e) {
      setMessage({ ok: false, text: `${verb} refused: ${e.message}` });
    } finally { setBusy(false); }
  };
  const final = FINAL.has(task.state);
  const showing = shown ?? task.attempt;  // a new attempt gets fresh views: each has its own log
  const running = !final && task.state !== "pending";
  return html`<h1>Task ${task.task_id} <${StateBadge} state=${task.state} /></h1>
    <${ErrorLine} error=${error} />
    <div class="actions">
      ${mine && !final && html`<button id="kill" class="danger" disabled=${busy} onClick=${() => act("kill")}>Kill</button>`}
      ${mine && task.state === "running" && html`<button id="pause" disabled=${busy} onClick=${() => act("pause")}>Pause</button>`}
      ${mine && task.state === "paused" && html`<button id="resume" disabled=${busy} onClick=${() => act("resume")}>Resume</button>`}
      ${!mine && html`<span class="muted" id="not-yours">${task.owner}'s task: only its owner or an admin may control it or read its output.</span>`}
    </div>
    ${message && html`<p id="task-message" class=${message.ok ? "notice" : "error"} role="status">${message.text}</p>`}
    <table class="detail"><tbody>
      <${Field} name="Command"><code>${task.command.join(" ")}</code><//>
      <${Field} name="Owner">${task.owner}<//>
      <${Field} name="Batch">${task.batch_id}${task.array_index !== null ? ` [${task.array_index}]` : ""}<//>
      <${Field} name="Node">${task.node ? html`<a href="#/cluster">${task.node}</a>` : ""} ${task.numa !== null ? `(NUMA ${task.numa})` : ""}<//>
      <${Field} name="Resources">${task.cores} core(s), ${task.memory ? bytes(task.memory) : "no memory limit"}, ${task.gpus.length ? "GPUs " + task.gpus.join(",") : task.gpu_count ? task.gpu_count + " GPU(s)" : "no GPU"}<//>
      <${Field} name="Environment">${task.container || ""}<//>
      ${task.state === "pending" && html`<${Field} name="Why it waits">${task.position ? "#" + task.position + " in the queue; " : ""}${task.pending_reason || ""}${task.waiting_for.length ? " (after " + task.waiting_for.join(", ") + ")" : ""}<//>`}
      <${Field} name="Submitted">${when(task.submitted_at)}<//>
      <${Field} name="Started">${when(task.started_at)}<//>
      <${Field} name="Finished">${when(task.finished_at)}<//>
      <${Field} name="Exit code">${task.exit_code ?? ""}<//>
      ${task.error && html`<${Field} name="Error">${task.error}<//>`}
      ${task.output_error && html`<${Field} name="Output">${task.output_error}<//>`}
    </tbody></table>
    ${mine && task.attempts.length > 0 && html`<div class="actions" id="attempts">
      Output of
      ${task.attempts.map((a) => html`<button id=${"attempt-" + a.attempt} disabled=${shown === a.attempt}
        onClick=${() => setShown(a.attempt)}>attempt ${a.attempt} (${a.state})</button>`)}
      <button id="attempt-current" disabled=${shown === null} onClick=${() => setShown(null)}>attempt ${task.attempt} (${task.state})</button>
    </div>`}
    ${mine && (task.state !== "pending" || shown !== null) && html`<div class="logs">
      <${LogView} key=${"stdout-" + showing} id=${task.task_id} stream="stdout" attempt=${showing} running=${running && shown === null} />
      <${LogView} key=${"stderr-" + showing} id=${task.task_id} stream="stderr" attempt=${showing} running=${running && shown === null} />
    </div>`}`;
}
