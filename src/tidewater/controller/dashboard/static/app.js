// Tidewater dashboard: plain JavaScript, no build step, no network beyond this origin.
// Data comes from /api/* (JSON, the session cookie); task counts and site health are
// pushed over the /api/live websocket when they change. Text from the server is always
// set with textContent, never parsed as HTML.
"use strict";

let STATES = [];  // every task state, in the state machine's order (from /api/me)
const COLORS = ["#1a5fb4", "#c64600", "#26a269", "#813d9c", "#a51d2d", "#986a44"];
const $ = (id) => document.getElementById(id);

let socket = null, reconnectDelay = 500, loggedIn = false;
let page = { after: 0, history: [] };
let lastOverview = 0, lastCharts = 0, overviewTimer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}
function fill(tbody, rows) { tbody.replaceChildren(...rows); }
function fmtTime(t) { return t ? new Date(t * 1000).toLocaleTimeString() : ""; }
function ago(t) {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : fmtTime(t);
}
function tagsText(tags) { return Object.entries(tags || {}).map(([k, v]) => `${k}=${v}`).join(" "); }

async function api(path, opts) {
  const r = await fetch(path, { credentials: "same-origin", ...(opts || {}) });
  let body = null;
  try { body = await r.json(); } catch (e) { body = { error: `HTTP ${r.status}` }; }
  if (r.status === 401 && !path.startsWith("/login")) { showLogin(body.error); throw new Error(body.error); }
  if (!r.ok) { const err = new Error(body.error || `HTTP ${r.status}`); err.status = r.status; throw err; }
  return body;
}

// ---------------------------------------------------------------- views

function show(view) {
  for (const v of ["login-view", "main-view", "task-view"]) $(v).hidden = v !== view;
}
function showLogin(message) {
  loggedIn = false;
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  setLive(false);
  $("who").textContent = ""; $("logout").hidden = true;
  $("login-error").textContent = message && message !== "not logged in" ? message : "";
  show("login-view");
}
async function route() {
  if (!loggedIn) return;
  const m = location.hash.match(/^#\/task\/(\d+)$/);
  if (m) { show("task-view"); await loadTask(m[1]); return; }
  show("main-view");
  await Promise.all([loadOverview(), loadTasks(), loadCharts()]);
}
async function start(me) {
  loggedIn = true;
  STATES = me.states;
  $("f-state").replaceChildren(el("option", { value: "" }, "any"), ...STATES.map((s) => el("option", { value: s }, s)));
  $("who").textContent = me.user; $("logout").hidden = false;
  connectLive();
  await route();
}

// ---------------------------------------------------------------- login

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    await api("/login", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("token").value }) });
    $("token").value = "";
    await start(await api("/api/me"));
  } catch (e) { $("login-error").textContent = `Login refused: ${e.message}`; }
}
async function logout() {
  await fetch("/logout", { method: "POST", credentials: "same-origin" });
  showLogin("");
}

// ---------------------------------------------------------------- live counts

function setLive(on) {
  $("live").className = `live ${on ? "on" : "off"}`;
  $("live").textContent = on ? "live" : "offline";
}
function connectLive() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${proto}//${location.host}/api/live`);
  socket.onopen = () => { reconnectDelay = 500; };
  socket.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "counts") { setLive(true); renderCounts(msg); renderHealth(msg.health); refreshSoon(); }
  };
  socket.onclose = (ev) => {
    setLive(false); socket = null;
    if (!loggedIn) return;
    if (ev.code === 4003) { showLogin(ev.reason || "session ended"); return; }
    scheduleReconnect();
  };
}
// Reconnect with backoff; a session that did not survive (a restarted controller) means
// logging in again, which /api/me's 401 shows.
function scheduleReconnect() {
  setTimeout(async () => {
    if (!loggedIn || socket) return;
    try { await api("/api/me"); connectLive(); }
    catch (e) { if (loggedIn) scheduleReconnect(); }
  }, reconnectDelay);
  reconnectDelay = Math.min(reconnectDelay * 2, 10000);
}
function renderCounts(msg) {
  $("total").textContent = `(${msg.total} in all)`;
  const cells = STATES.map((s) => {
    const n = msg.by_state[s] || 0;
    const cell = el("div", { class: `count${n ? "" : " zero"}`, dataset: { state: s }, title: `list ${s} tasks` },
      el("span", { class: "n" }, String(n)), el("span", { class: "label" }, s));
    cell.onclick = () => { $("f-state").value = s; page = { after: 0, history: [] }; loadTasks(); };
    return cell;
  });
  $("counts").replaceChildren(...cells);
}
function renderHealth(health) {
  for (const row of $("sites").tBodies[0].rows) {
    const h = health[row.dataset.site];
    if (!h) continue;
    const cell = row.querySelector(".health");
    cell.textContent = h.health; cell.className = `health ${h.health}`;
    row.querySelector(".why").textContent = h.reason;
  }
}
// A push says something changed: refresh the tables and charts, at most every 2 s / 10 s.
function refreshSoon() {
  if (overviewTimer || $("main-view").hidden) return;
  const wait = Math.max(0, 2000 - (Date.now() - lastOverview));
  overviewTimer = setTimeout(() => {
    overviewTimer = null; loadOverview();
    if (Date.now() - lastCharts > 10000) loadCharts();
  }, wait);
}

// ---------------------------------------------------------------- overview

async function loadOverview() {
  lastOverview = Date.now();
  const o = await api("/api/overview");
  fill($("sites").tBodies[0], o.sites.map((s) => el("tr", { dataset: { site: s.name } },
    el("td", {}, s.name), el("td", { class: `health ${s.health}` }, s.health),
    el("td", { class: "why" }, s.health_reason), el("td", { title: fmtTime(s.last_heard) }, ago(s.last_heard)),
    el("td", {}, s.agent ? "connected" : "—"), el("td", { class: "num" }, String(s.pilots.filter((p) => p.connected).length)),
    el("td", { class: "num busy" }, String(s.busy)), el("td", { class: "num free" }, String(s.free)),
    el("td", { class: "num" }, String(s.batch_jobs)))));
  const pilots = o.sites.flatMap((s) => s.pilots.map((p) => ({ site: s.name, ...p })));
  fill($("pilots").tBodies[0], pilots.map((p) => el("tr", { dataset: { pilot: p.id } },
    el("td", {}, p.site), el("td", {}, p.id), el("td", {}, p.host), el("td", { class: "num" }, String(p.cores)),
    el("td", { class: "num busy" }, String(p.busy)), el("td", { class: "num free" }, String(p.free)),
    el("td", {}, p.connected ? (p.draining ? "draining" : "yes") : "no"), el("td", {}, ago(p.last_seen)),
    el("td", {}, p.batch_job ? String(p.batch_job) : "—"))));
  fill($("jobs").tBodies[0], o.jobs.map((j) => el("tr", {},
    el("td", {}, String(j.id)), el("td", {}, j.site), el("td", {}, j.state), el("td", { class: "num" }, String(j.nodes)),
    el("td", {}, `${j.wall_time_min} min`), el("td", {}, j.queue), el("td", {}, j.scheduler_id),
    el("td", { class: "num" }, String(j.pilots)), el("td", {}, fmtTime(j.submitted_at)),
    el("td", {}, j.error || j.reason))));
}

// ---------------------------------------------------------------- task list

function filterParams() {
  const p = new URLSearchParams();
  for (const [k, id] of [["state", "f-state"], ["tag", "f-tag"], ["app", "f-app"], ["site", "f-site"], ["limit", "f-limit"]]) {
    const v = $(id).value.trim();
    if (v) p.set(k, v);
  }
  if (page.after) p.set("after", String(page.after));
  return p;
}
async function loadTasks() {
  $("tasks-error").textContent = "";
  let r;
  try { r = await api(`/api/tasks?${filterParams()}`); }
  catch (e) { $("tasks-error").textContent = e.message; fill($("tasks").tBodies[0], []); return; }
  fill($("tasks").tBodies[0], r.tasks.map((t) => {
    const tr = el("tr", { class: "link", dataset: { task: String(t.id) } },
      el("td", {}, el("a", { href: `#/task/${t.id}` }, String(t.id))),
      el("td", {}, el("span", { class: `state ${t.state}` }, t.state)), el("td", {}, t.app), el("td", {}, t.site),
      el("td", {}, tagsText(t.tags)), el("td", { class: "num" }, String(t.attempt)),
      el("td", {}, fmtTime(t.created_at)), el("td", {}, fmtTime(t.finished_at)), el("td", {}, t.error));
    tr.onclick = (ev) => { if (ev.target.tagName !== "A") location.hash = `#/task/${t.id}`; };
    return tr;
  }));
  $("next-page").disabled = !r.more;
  $("next-page").dataset.after = r.next_after ?? "";
  $("first-page").disabled = !page.after;
  $("page-info").textContent = `page ${page.history.length + 1}, ${r.tasks.length} tasks`;
}

// ---------------------------------------------------------------- task page

async function loadTask(id) {
  $("t-id").textContent = id; $("t-state").textContent = ""; $("task-error").textContent = "";
  let t;
  try { t = await api(`/api/tasks/${id}`); }
  catch (e) { $("task-error").textContent = e.message; $("task-body").hidden = true; return; }
  $("task-body").hidden = false;
  $("t-state").textContent = t.state; $("t-state").className = `state ${t.state}`;
  const summary = [["app", t.app], ["site", t.site], ["tags", tagsText(t.tags)], ["attempt", `${t.attempt} (retries ${t.retries} of ${t.max_retries})`],
    ["exit code", t.exit_code ?? ""], ["pilot", t.pilot], ["work directory", t.workdir],
    ["created", fmtTime(t.created_at)], ["started", fmtTime(t.started_at)], ["finished", fmtTime(t.finished_at)],
    ["total seconds", t.phases.total == null ? "" : t.phases.total.toFixed(3)]];
  fill($("t-summary").tBodies[0], summary.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, String(v)))));
  $("t-error").textContent = t.error;
  $("t-params").textContent = JSON.stringify(t.params, null, 2);
  fill($("t-events").tBodies[0], t.events.map((e) => el("tr", {},
    el("td", {}, fmtTime(e.time)), el("td", {}, e.from), el("td", {}, el("span", { class: `state ${e.to}` }, e.to)))));
  fill($("t-attempts").tBodies[0], t.attempts.map((a) => el("tr", {},
    el("td", {}, String(a.n)), el("td", {}, fmtTime(a.start)), el("td", {}, a.end ? fmtTime(a.end) : "running"),
    el("td", { class: "num" }, a.seconds == null ? "" : a.seconds.toFixed(3)))));
  $("t-stdout").textContent = t.stdout_tail; $("t-stderr").textContent = t.stderr_tail;
  fill($("t-transfers").tBodies[0], t.transfers.map((f) => el("tr", {},
    el("td", {}, f.direction), el("td", {}, f.path), el("td", {}, f.url || (f.task ? `task ${f.task}: ${f.output}` : "inline")),
    el("td", {}, f.state), el("td", { class: "num" }, f.size == null ? "" : String(f.size)), el("td", {}, f.error || ""))));
  $("t-routes").replaceChildren(...(t.routes.length ? t.routes.map((r) => el("div", { class: "route" },
    el("p", {}, `${fmtTime(r.time)}: policy ${r.policy} chose ${r.chosen}${r.reason ? ` (${r.reason})` : ""}`),
    el("ul", {}, ...r.candidates.map((c) => el("li", {},
      `${c.site} [${c.health}] est. start ${c.start == null ? "?" : c.start.toFixed(2) + " s"}, finish ${c.finish == null ? "?" : c.finish.toFixed(2) + " s"}, backlog ${c.backlog}${c.note ? ` — ${c.note}` : ""}`)))))
    : [el("p", { class: "muted" }, "sent to the site named at submit (not routed)")]));
}

// ---------------------------------------------------------------- charts (SVG)

function drawChart(svg, data, kind) {
  const W = 600, H = 200, L = 40, B = 20, T = 10, R = 10;
  const sites = Object.keys(data.series);
  const ns = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs, text) => { const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text != null) e.textContent = text; return e; };
  const kids = [];
  const t0 = data.start, t1 = data.now;
  let ymax = 1;
  for (const s of sites) for (const [, v] of data.series[s]) ymax = Math.max(ymax, v);
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (v) => H - B - (v / ymax) * (H - B - T);
  kids.push(mk("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" }));
  kids.push(mk("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" }));
  kids.push(mk("text", { x: 2, y: T + 8 }, ymax.toFixed(ymax < 10 ? 1 : 0)));
  kids.push(mk("text", { x: 2, y: H - B }, "0"));
  kids.push(mk("text", { x: L, y: H - 4 }, fmtTime(t0)));
  kids.push(mk("text", { x: W - R - 50, y: H - 4 }, fmtTime(t1)));
  sites.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = data.series[s];
    if (kind === "bars") {
      const w = Math.max(1, ((data.bin / Math.max(1, t1 - t0)) * (W - L - R)) / sites.length - 1);
      for (const [t, v] of pts) if (v > 0)
        kids.push(mk("rect", { x: x(t - data.bin) + i * w, y: y(v), width: w, height: H - B - y(v), fill: color },));
    } else {
      kids.push(mk("polyline", { fill: "none", stroke: color, "stroke-width": 2,
        points: pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ") }));
    }
    kids.push(mk("text", { x: L + 8 + i * 110, y: T + 10, fill: color, class: "legend" }, s));
  });
  if (!sites.length) kids.push(mk("text", { x: W / 2 - 60, y: H / 2 }, "no tasks in this window"));
  svg.replaceChildren(...kids);
  svg.dataset.sites = sites.join(",");
}
async function loadCharts() {
  lastCharts = Date.now();
  const [tp, ut] = await Promise.all([api("/api/throughput?window=3600"), api("/api/utilization?window=3600")]);
  drawChart($("throughput"), tp, "bars");
  drawChart($("utilization"), ut, "lines");
}

// ---------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); page = { after: 0, history: [] }; loadTasks(); });
  $("next-page").addEventListener("click", () => {
    page.history.push(page.after); page.after = Number($("next-page").dataset.after); loadTasks();
  });
  $("first-page").addEventListener("click", () => { page = { after: 0, history: [] }; loadTasks(); });
  window.addEventListener("hashchange", route);
  try { await start(await api("/api/me")); }
  catch (e) { if (!loggedIn) showLogin(""); }
});
