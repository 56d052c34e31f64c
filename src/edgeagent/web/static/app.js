"use strict";
// The technician's page. One model (the /api/status JSON), patched by server-sent
// events from the agent and re-rendered; text is set with textContent only, so
// nothing a device or a config says can inject markup. Silence from the agent for
// longer than STALE_MS (heartbeats come every 3 s) shows it as unreachable.

const STALE_MS = 7000;
const REFRESH_MS = 15000;
const BUSY = "working…";
let model = null;
let session = { user: "", role: "viewer", csrf: "" };
let lastHeard = 0;
let unreachableSince = null;
let source = null;
let chart = null;
let rendering = false;
let renderedKey = "";
const detail = {};          // device id -> last /api/devices/{id} answer
const notes = {};           // device id -> last action result shown inline
const rates = {};           // uplink -> [ts, readings_sent] for throughput

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}
const clock = (ts) => (ts ? new Date(ts * 1000).toLocaleTimeString() : "–");
function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function shown(p) {
  if (p.value === null || p.value === undefined) return p.quality === "missing" ? "no value" : "—";
  if (p.label) return p.label;
  if (p.unit === "flag") return p.value ? "yes" : "no";
  if (typeof p.value !== "number") return String(p.value);
  const text = p.precision !== null && p.precision !== undefined ? p.value.toFixed(p.precision)
    : (Number.isInteger(p.value) ? String(p.value) : p.value.toFixed(2));
  return p.unit_shown ? `${text} ${p.unit_shown}` : text;
}

const problem = (d) => d.state !== "online";
const rank = { offline: 0, degraded: 1, unknown: 2, online: 3 };

async function api(path, body) {
  const opts = body === undefined ? { cache: "no-store" } : {
    method: "POST", cache: "no-store",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, opts);
  if (response.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
  return response.json();
}

// -- views ------------------------------------------------------------------------

function pointLine(p) {
  return el("div", { class: `point${p.fault_set ? " fault" : ""}`, "data-point": p.name },
    el("span", { class: "pname" }, p.title),
    el("span", { class: "pvalue" }, p.fault_set ? `FAULT · ${shown(p)}` : shown(p)),
    p.quality !== "good" ? el("span", { class: "quality" }, p.quality) : null);
}

function deviceCard(d) {
  return el("a", { class: `card ${d.state}`, href: `#/device/${encodeURIComponent(d.id)}`, "data-device": d.id },
    el("h3", {}, el("span", {}, d.id), el("span", { class: "state" }, d.state)),
    d.reason ? el("div", { class: "reason" }, d.reason) : null,
    el("div", { class: "muted" }, `since ${clock(d.state_since)} · last seen ${ago(d.last_ok_ts)}`),
    d.points.filter((p) => p.fault_set).map(pointLine),
    el("div", { class: "muted" }, [d.asset.location, d.asset.category].filter(Boolean).join(" · ")));
}

function deviceRow(d) {
  const first = d.points.find((p) => typeof p.value === "number" && p.unit !== "flag" && p.unit !== "code") || d.points[0];
  return el("a", { class: "row online", href: `#/device/${encodeURIComponent(d.id)}`, "data-device": d.id },
    el("span", { class: "rname" }, d.id),
    el("span", { class: "rvalue" }, first ? `${first.title} ${shown(first)}` : "–"),
    el("span", { class: "muted" }, ago(d.last_ok_ts)));
}

function alarmItem(a) {
  const ack = a.acked_by ? el("span", { class: "muted" }, `acknowledged by ${a.acked_by} ${ago(a.acked_ts)}`)
    : (session.role === "technician" ? el("button", { type: "button", class: "ack", onclick: () => acknowledge(a) }, "Acknowledge") : null);
  return el("li", { class: `alarm ${a.active ? "active" : "cleared"}`, "data-alarm": `${a.source}/${a.kind}` },
    el("div", {}, el("strong", {}, `${a.source} · ${a.kind}`), " ",
      el("span", { class: "state" }, `${a.active ? "active" : "cleared"}${a.severity ? ` · ${a.severity}` : ""}`)),
    el("div", {}, a.message),
    el("div", { class: "muted" }, `raised ${ago(a.ts)}${a.times > 1 ? ` · ${a.times} times` : ""}`), ack);
}

function overview() {
  const devices = [...model.devices].sort((a, b) => rank[a.state] - rank[b.state] || a.id.localeCompare(b.id));
  const bad = devices.filter(problem);
  const good = devices.filter((d) => !problem(d));
  const active = model.alarms.filter((a) => a.active);
  return [
    active.length ? el("section", { id: "active-alarms" }, el("h2", {}, `Active alarms (${active.length})`),
      el("ul", { class: "alarms" }, active.map(alarmItem))) : null,
    bad.length ? el("section", { id: "problems" }, el("h2", {}, `Needs attention (${bad.length})`),
      el("div", { class: "cards" }, bad.map(deviceCard))) : null,
    el("section", { id: "fine" }, el("h2", {}, `Working (${good.length})`), el("div", { class: "rows" }, good.map(deviceRow))),
  ];
}

function drawChart(host, d, name) {
  if (chart) { chart.destroy(); chart = null; }
  const h = (detail[d.id] && detail[d.id].history[name]) || { ts: [], values: [] };
  if (!window.uPlot || !h.ts.length) { host.replaceChildren(el("p", { class: "muted" }, "no history yet")); return; }
  const p = d.points.find((q) => q.name === name) || {};
  host.replaceChildren();
  const width = Math.max(280, host.clientWidth || 320);
  const hour = () => { const now = Date.now() / 1000; return [now - 3600, now]; };
  chart = new uPlot({ width, height: 200, series: [{}, { label: `${p.title || name} ${p.unit_shown || ""}`, stroke: "#0041a8", width: 2, points: { size: 5 } }],
    scales: { x: { time: true, range: hour } }, axes: [{}, { size: 60, label: p.unit_shown || "" }], legend: { show: false } }, [h.ts, h.values], host);
}

function updateChart(id) {
  const pick = document.getElementById("chart-point");
  const h = pick && detail[id] && detail[id].history[pick.value];
  if (chart && h) chart.setData([h.ts, h.values]);
  else if (!chart && h && h.ts.length) drawChart(document.getElementById("chart"), model.devices.find((x) => x.id === id), pick.value);
}

function devicePage(id, partial) {
  const d = model.devices.find((x) => x.id === id);
  if (!d) return [el("p", {}, `No device ${id}.`)];
  const info = detail[id] || {};
  const numeric = d.points.filter((p) => typeof p.value === "number" && p.unit !== "flag");
  const chartHost = el("div", { id: "chart", class: "chart" });
  const pick = el("select", { id: "chart-point", onchange: () => drawChart(chartHost, d, pick.value) },
    numeric.map((p) => el("option", { value: p.name }, p.title)));
  if (!partial) setTimeout(() => numeric.length && drawChart(chartHost, d, pick.value || numeric[0].name), 0);
  const writable = d.points.filter((p) => p.writable);
  const note = notes[id];
  return [
    el("section", { id: "dev-head", class: `device ${d.state}` },
      el("h2", {}, d.id, " ", el("span", { class: "state" }, d.state)),
      d.reason ? el("p", { class: "reason" }, d.reason) : null,
      info.reason_explained ? el("p", { class: "explain" }, info.reason_explained) : null,
      el("p", { class: "muted" }, `${d.asset.model || d.profile} · ${d.address || "–"} on ${d.bus} · since ${clock(d.state_since)} · last seen ${ago(d.last_ok_ts)}`),
      el("p", { class: "muted" }, [d.asset.location, d.asset.owner].filter(Boolean).join(" · ")),
      el("div", { class: "actions" },
        info.repoll !== false ? el("button", { type: "button", id: "repoll", onclick: () => repoll(d.id) }, "Re-poll now") : null,
        note ? el("span", { id: "action-result", class: note === BUSY ? "busy" : note.startsWith("ok") ? "ok" : "bad" }, note) : null)),
    el("section", { id: "dev-values" }, el("h3", {}, "Values"), el("div", { class: "points" }, d.points.map(pointLine))),
    numeric.length ? el("section", { id: "dev-chart" }, el("h3", {}, "Last hour ", pick), chartHost) : null,
    writable.length && session.role === "technician" ? writeForm(d, writable) : null,
    el("section", { id: "dev-errors" }, el("h3", {}, "Recent errors"),
      (info.errors || []).length ? el("ul", { class: "errors" }, [...info.errors].reverse().map((e) =>
        el("li", {}, el("div", {}, `${clock(e.ts)} ${e.reason}`), el("div", { class: "explain" }, e.explained))))
        : el("p", { class: "muted" }, "none")),
    el("section", { id: "dev-frames" }, el("h3", {}, "Last raw frames"),
      (info.frames || []).length ? el("pre", { id: "frames", class: "frames" }, info.frames.map((f) =>
        `${clock(f.ts)} ${f.dir === "tx" ? "→" : "←"} ${f.hex}\n`).join(""))
        : el("p", { class: "muted" }, "none captured for this kind of device")),
  ];
}

function writeForm(d, writable) {
  const point = el("select", { name: "point" }, writable.map((p) => el("option", { value: p.name }, p.title)));
  const value = el("input", { name: "value", inputmode: "decimal", required: true, autocomplete: "off" });
  const confirmBox = el("div", { class: "confirm", hidden: true });
  const form = el("form", { id: "write-form", onsubmit: (ev) => {
    ev.preventDefault();
    const p = writable.find((q) => q.name === point.value);
    confirmBox.replaceChildren(el("p", {}, `Write ${value.value} ${p.unit_shown || ""} to ${d.id} · ${p.title}?`),
      el("button", { type: "button", id: "write-confirm", class: "danger", onclick: () => { confirmBox.hidden = true; writePoint(d.id, point.value, value.value); } }, "Yes, write it"),
      el("button", { type: "button", onclick: () => { confirmBox.hidden = true; } }, "Cancel"));
    confirmBox.hidden = false;
  } }, el("label", {}, "Point ", point), el("label", {}, "Value ", value), el("button", { type: "submit" }, "Test write…"));
  return el("section", { id: "dev-write" }, el("h3", {}, "Test write"), form, confirmBox);
}

function alarmsPage() {
  return [el("h2", {}, "Alarms"), model.alarms.length ? el("ul", { class: "alarms" }, [...model.alarms].reverse().map(alarmItem)) : el("p", { class: "muted" }, "No alarms.")];
}

function syncPage() {
  const now = Date.now() / 1000;
  return [el("h2", {}, "Sync"), el("div", { class: "cards" }, model.uplinks.map((u) => {
    const prev = rates[u.name];
    const rate = prev && now > prev[0] ? ((u.readings_sent - prev[1]) / (now - prev[0])) * 60 : null;
    const ok = u.last_result.startsWith("ok") || u.last_result === "not tried yet";
    return el("article", { class: `card ${ok ? "online" : "offline"}`, "data-uplink": u.name },
      el("h3", {}, el("span", {}, u.name), el("span", { class: "state" }, u.kind)),
      el("div", { class: "muted" }, u.target),
      el("dl", { class: "facts" }, el("dt", {}, "backlog"), el("dd", {}, `${u.unsent} readings`),
        el("dt", {}, "oldest unsent"), el("dd", {}, u.oldest_unsent_age_s === null ? "none" : duration(u.oldest_unsent_age_s)),
        el("dt", {}, "throughput"), el("dd", {}, rate === null ? "measuring…" : `${rate.toFixed(0)} readings/min`),
        el("dt", {}, "last success"), el("dd", {}, ago(u.last_success_age_s === null ? null : now - u.last_success_age_s)),
        el("dt", {}, ok ? "last result" : "last error"), el("dd", { class: ok ? "" : "reason" }, u.last_result)),
      session.role === "technician" ? el("button", { type: "button", class: "sync", onclick: () => syncNow(u.name) }, "Sync now") : null,
      notes[`uplink:${u.name}`] ? el("div", { class: "muted" }, notes[`uplink:${u.name}`]) : null);
  }))];
}

function busesPage() {
  return [el("h2", {}, "Field buses"), el("div", { class: "cards" }, model.buses.map((b) =>
    el("article", { class: `card ${b.state === "ok" ? "online" : b.state === "starting" ? "" : "offline"}` },
      el("h3", {}, el("span", {}, b.name), el("span", { class: "state" }, b.state)),
      el("div", { class: "muted" }, `${b.kind} · ${b.target}`), b.detail ? el("div", { class: "reason" }, b.detail) : null,
      el("div", { class: "muted" }, `${b.transactions} transactions · ${b.restarts} restarts · since ${clock(b.state_since)}`))))];
}

function logsPage() {
  const level = el("select", { id: "log-level" }, ["DEBUG", "INFO", "WARNING", "ERROR"].map((l) => el("option", { value: l, selected: l === "INFO" }, l)));
  const device = el("select", { id: "log-device" }, el("option", { value: "" }, "all devices"), model.devices.map((d) => el("option", { value: d.id }, d.id)));
  const list = el("ol", { id: "log-lines", class: "log" });
  const load = async () => {
    const data = await api(`/api/logs?level=${level.value}&device=${encodeURIComponent(device.value)}`);
    list.replaceChildren(...data.lines.map((l) => el("li", { class: `lvl-${l.level.toLowerCase()}` }, `${clock(l.ts)} ${l.level} ${l.message}`)));
  };
  level.addEventListener("change", load);
  device.addEventListener("change", load);
  setTimeout(load, 0);
  return [el("h2", {}, "Log"), el("div", { class: "filters" }, level, device), list];
}

// -- actions ------------------------------------------------------------------------

async function act(key, path, body) {
  notes[key] = BUSY;
  render();
  try { notes[key] = (await api(path, body)).result; } catch (err) { notes[key] = `failed: ${err.message}`; }
  render();
}
async function repoll(id) { await act(id, `/api/devices/${encodeURIComponent(id)}/repoll`, {}); loadDetail(id); }
async function writePoint(id, point, value) {
  const number = Number(value);
  await act(id, `/api/devices/${encodeURIComponent(id)}/write`, { point, value: value.trim() !== "" && !Number.isNaN(number) ? number : value });
  loadDetail(id);
}
async function acknowledge(a) { await act("alarms", "/api/alarms/ack", { source: a.source, kind: a.kind }); await refresh(); }
async function syncNow(name) { await act(`uplink:${name}`, `/api/uplinks/${encodeURIComponent(name)}/sync`, {}); }
async function loadDetail(id) {
  try { detail[id] = await api(`/api/devices/${encodeURIComponent(id)}`); } catch (err) { return; }
  if (route()[0] === "device" && route()[1] === id) render();
}

// -- rendering, liveness --------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  return parts[0] ? parts : ["overview"];
}

function render() {
  if (!model || rendering) return;
  rendering = true;
  requestAnimationFrame(() => {
    rendering = false;
    const [view, arg] = route();
    document.getElementById("gateway").textContent = model.gateway.id;
    const bad = model.devices.filter(problem);
    const active = model.alarms.filter((a) => a.active);
    document.getElementById("summary").textContent = bad.length || active.length
      ? `${active.length ? `${active.length} alarm${active.length > 1 ? "s" : ""} · ` : ""}${bad.length ? `dark or degraded: ${bad.map((d) => d.id).join(", ")}` : "all devices online"}`
      : `All ${model.devices.length} devices online · backlog ${model.store.backlog}`;
    document.getElementById("summary").className = `summary ${bad.length || active.length ? "bad" : "good"}`;
    const count = document.getElementById("alarm-count");
    count.hidden = !active.length;
    count.textContent = active.length;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("here", a.dataset.view === (view === "device" ? "overview" : view));
    const views = { overview, alarms: alarmsPage, sync: syncPage, buses: busesPage, logs: logsPage };
    const key = `${view}/${arg || ""}`;
    const keepLogs = view === "logs" && document.getElementById("log-lines");
    if (view === "device" && key === renderedKey) {
      // The same device: refresh what changed, never the write form (a value may be half typed).
      for (const node of devicePage(arg, true).filter(Boolean)) {
        const old = node.id && node.id !== "dev-write" && node.id !== "dev-chart" && document.getElementById(node.id);
        if (old) old.replaceWith(node);
      }
      updateChart(arg);
    } else if (!keepLogs) {
      renderedKey = key;
      if (chart && view !== "device") { chart.destroy(); chart = null; }
      document.getElementById("view").replaceChildren(...[view === "device" ? devicePage(arg) : (views[view] || overview)()].flat().filter(Boolean));
    }
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  });
}

function heard() {
  lastHeard = Date.now();
  if (unreachableSince !== null) {
    unreachableSince = null;
    document.body.classList.remove("stale");
    document.getElementById("banner").hidden = true;
    refresh();
  }
  document.getElementById("link").textContent = "live";
}

let ticks = 0;
function watch() {
  if (++ticks % 5 === 0) render();  // ages ("last seen 40 s ago") go on growing, above all when nothing comes
  const silent = Date.now() - lastHeard > STALE_MS;
  const closed = source && source.readyState === EventSource.CLOSED;
  if ((silent || closed) && unreachableSince === null && lastHeard) {
    unreachableSince = lastHeard;
    document.body.classList.add("stale");
    const banner = document.getElementById("banner");
    banner.textContent = `Agent unreachable since ${new Date(unreachableSince).toLocaleTimeString()}: values below are the last known.`;
    banner.hidden = false;
    document.getElementById("link").textContent = "unreachable";
    render();
  }
  if (closed) connect();
}

function connect() {
  if (source) source.close();
  source = new EventSource("/api/events");
  source.addEventListener("hello", heard);
  source.addEventListener("heartbeat", heard);
  source.addEventListener("device", (ev) => {
    heard();
    const d = JSON.parse(ev.data);
    const i = model.devices.findIndex((x) => x.id === d.id);
    if (i >= 0) model.devices[i] = d; else model.devices.push(d);
    render();
  });
  source.addEventListener("bus", (ev) => { heard(); const b = JSON.parse(ev.data); Object.assign(model.buses.find((x) => x.name === b.name) || {}, b); render(); });
  source.addEventListener("uplink", (ev) => { heard(); const u = JSON.parse(ev.data); Object.assign(model.uplinks.find((x) => x.name === u.name) || {}, u); render(); });
  source.addEventListener("alarms", (ev) => { heard(); model.alarms = JSON.parse(ev.data).alarms; render(); });
}

async function refresh() {
  try {
    model = await api("/api/status");
    const now = Date.now() / 1000;
    for (const u of model.uplinks) if (!rates[u.name]) rates[u.name] = [now, u.readings_sent];
    render();
    const [view, arg] = route();
    if (view === "device") loadDetail(arg);
  } catch (err) { /* the watchdog shows it */ }
}

async function start() {
  try { session = await api("/api/session"); } catch (err) { return; }
  document.getElementById("who").textContent = `${session.user} (${session.role})`;
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("/logout", {}); } finally { location.href = "/login"; }
  });
  window.addEventListener("hashchange", () => { render(); const [v, a] = route(); if (v === "device") loadDetail(a); });
  await refresh();
  lastHeard = Date.now();
  connect();
  setInterval(watch, 1000);
  setInterval(refresh, REFRESH_MS);
}

start();
