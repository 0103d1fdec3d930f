// The HakuRiver dashboard: login, then Cluster, Queue, Task and Environments
// pages (hash routes), each fed by the JSON API and woken by /api/events.
import { html, render, useEffect, useState } from "./vendor/htm-preact-standalone.module.js";
import { api, closeEvents, onSessionEnded, setCsrf } from "./api.js";
import { ClusterPage } from "./cluster.js";
import { QueuePage } from "./queue.js";
import { TaskPage } from "./task.js";
import { EnvironmentsPage } from "./environments.js";
import { ErrorLine } from "./util.js";

function useRoute() {
  const read = () => (location.hash.replace(/^#\/?/, "") || "cluster").split("/");
  const [route, setRoute] = useState(read());
  useEffect(() => {
    const on = () => setRoute(read());
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return route;
}

function Login({ onLogin, notice }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (ev) => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      onLogin(await api("POST", "/session", { token: token.trim(), body: {} }));
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="login">
    <h1>HakuRiver</h1>
    ${notice && html`<p class="notice">${notice}</p>`}
    <form onSubmit=${submit} id="login-form">
      <label for="token">Your API token</label>
      <input id="token" type="password" autocomplete="off" value=${token}
             onInput=${(e) => setToken(e.target.value)} placeholder="hkr_..." required />
      <button id="login" type="submit" disabled=${busy}>Log in</button>
    </form>
    <${ErrorLine} error=${error} />
    <p class="hint">The token <code>hakuriver.admin user add</code> printed (or <code>~/.hakuriver/config.toml</code>'s <code>auth.token</code>).</p>
  </main>`;
}

function Nav({ session, route, onLogout }) {
  const link = (name, label) =>
    html`<a href=${"#/" + name} class=${route[0] === name ? "active" : ""} id=${"nav-" + name}>${label}</a>`;
  return html`<header class="nav">
    <span class="brand">HakuRiver</span>
    ${link("cluster", "Cluster")} ${link("queue", "Queue")} ${link("environments", "Environments")}
    <span class="spacer"></span>
    <span id="whoami">${session.user} (${session.role})</span>
    <button id="logout" onClick=${onLogout}>Log out</button>
  </header>`;
}

function App() {
  const [session, setSession] = useState(undefined);
  const [notice, setNotice] = useState(null);
  const route = useRoute();
  // A 401 on any call: back to the login form; say why only when a session ended.
  const ended = (err) => {
    closeEvents();
    setCsrf(null);
    setNotice(err.code === "session_ended" ? err.message : null);
    setSession(null);
  };
  useEffect(() => {
    onSessionEnded(ended);
    api("GET", "/session")
      .then((s) => { setCsrf(s.csrf_token); setSession(s); })
      .catch(() => setSession(null));
  }, []);
  if (session === undefined) return html`<p class="loading">Loading…</p>`;
  if (session === null) {
    return html`<${Login} notice=${notice} onLogin=${(s) => { setCsrf(s.csrf_token); setNotice(null); setSession(s); }} />`;
  }
  const logout = async () => {
    try { await api("DELETE", "/session"); } catch (e) { /* ended anyway */ }
    ended({ code: "session_ended", message: "You are logged out." });
  };
  let page;
  switch (route[0]) {
    case "queue": page = html`<${QueuePage} session=${session} />`; break;
    case "task": page = html`<${TaskPage} key=${route[1]} id=${route[1]} session=${session} />`; break;
    case "environments": page = html`<${EnvironmentsPage} />`; break;
    default: page = html`<${ClusterPage} session=${session} />`;
  }
  return html`<${Nav} session=${session} route=${route} onLogout=${logout} /><main class="page">${page}</main>`;
}

render(html`<${App} />`, document.getElementById("app"));
