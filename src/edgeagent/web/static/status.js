"use strict";
// Renders /api/status every two seconds. Text is set with textContent only, so
// nothing from a device or a config can inject markup into the page.

const REFRESH_MS = 2000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h ago`;
  return `${(seconds / 86400).toFixed(1)} d ago`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function fmt(value) {
  if (value === null || value === undefined) return "—";
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

function pointValue(p) {
  if (p.label) return p.label;
  if (p.unit === "flag" && p.value !== null) return p.value ? "yes" : "no";
  return fmt(p.value);
}

function deviceCard(d) {
  const points = d.points.map((p) =>
    el("div", { class: "point" },
      el("span", { class: "value" }, pointValue(p)), " ", (p.label || p.unit === "flag") ? "" : p.unit, " ",
      el("span", { class: "muted" }, `${p.name} · ${age(p.age_s)}${p.quality !== "good" ? " · " + p.quality : ""}`)));
  const asset = [d.asset.location, d.asset.owner, d.asset.model].filter(Boolean).join(" · ");
  const counters = [
    d.framing_errors ? `${d.framing_errors} framing errors` : null,
    d.rejected ? `${d.rejected} packets rejected` : null,
    d.replayed ? `${d.replayed} replays refused` : null,
    d.rssi_dbm !== null && d.rssi_dbm !== undefined ? `${d.rssi_dbm} dBm` : null,
  ].filter(Boolean).join(" · ");
  return el("article", { class: `card ${d.state}`, "data-device": d.id },
    el("h3", {}, d.id, el("span", { class: "state" }, d.state)),
    ...points,
    d.reason ? el("div", { class: "reason" }, d.reason) : null,
    counters ? el("div", { class: "muted" }, counters) : null,
    el("div", { class: "muted" }, asset),
    el("div", { class: "muted" }, `${d.profile} · ${d.address || "–"} on ${d.bus}`));
}

function busCard(b) {
  const state = b.state === "ok" ? "online" : (b.state === "starting" ? "" : "offline");
  const activity = b.kind === "ble" ? `${b.restarts} watchdog restarts` : `${b.transactions} transactions`;
  return el("article", { class: `card ${state}`, "data-bus": b.name },
    el("h3", {}, b.name, el("span", { class: "state" }, b.state)),
    el("div", { class: "muted" }, `${b.kind} · ${b.target}`),
    b.detail ? el("div", { class: "reason" }, b.detail) : null,
    el("div", { class: "muted" }, activity));
}

function uplinkCard(u) {
  const ok = u.last_success_age_s !== null && (u.last_attempt_age_s === null || u.last_result.startsWith("ok"));
  return el("article", { class: `card ${ok ? "online" : (u.failures ? "offline" : "")}` },
    el("h3", {}, u.name, el("span", { class: "state" }, u.kind)),
    el("div", { class: "muted" }, u.target),
    el("div", {}, `last result: ${u.last_result}`),
    el("div", { class: "muted" }, `last success ${age(u.last_success_age_s)} · ${u.readings_sent} readings sent · ${u.unsent} waiting`));
}

function facts(pairs) {
  const out = [];
  for (const [k, v] of pairs) out.push(el("dt", {}, k), el("dd", {}, v));
  return out;
}

function render(s) {
  document.getElementById("gateway").textContent = s.gateway.id;
  const online = s.devices.filter((d) => d.state === "online").length;
  document.getElementById("summary").textContent =
    `${online}/${s.devices.length} devices online · backlog ${s.store.backlog} · up ${duration(s.gateway.uptime_s)} · v${s.gateway.version}`;
  document.getElementById("devices").replaceChildren(...s.devices.map(deviceCard));
  document.getElementById("buses").replaceChildren(...(s.buses || []).map(busCard));
  document.getElementById("uplinks").replaceChildren(...s.uplinks.map(uplinkCard));
  document.getElementById("store").replaceChildren(...facts([
    ["readings waiting", s.store.backlog],
    ["oldest unsent", s.store.oldest_unsent_age_s === null ? "none" : duration(s.store.oldest_unsent_age_s)],
    ["last sequence", s.store.last_seq],
    ["file size", bytes(s.store.file_bytes)],
    ["store error", s.store.last_error || "none"],
  ]));
  const alarms = document.getElementById("alarms");
  alarms.replaceChildren(...s.alarms.map((a) => el("li", {}, `${a.kind}: ${a.message}`)));
  document.getElementById("alarms-section").hidden = s.alarms.length === 0;
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}

async function refresh() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (err) {
    document.getElementById("summary").textContent = `cannot reach the agent: ${err.message}`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
