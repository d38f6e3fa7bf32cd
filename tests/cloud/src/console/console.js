// The dev cloud's web console: the devices of the token's user, their resources with values
// pushed by the event subscription (plgd's SubscribeToEvents over /api/v1/ws/events), and the
// request log. It uses only the public API, with a bearer token like any other client.
"use strict";

const CHART_WINDOW_MS = 5 * 60 * 1000; // the temperature chart shows the last five minutes
const EVENTS = ["REGISTERED", "UNREGISTERED", "DEVICE_METADATA_UPDATED",
  "RESOURCE_PUBLISHED", "RESOURCE_UNPUBLISHED", "RESOURCE_CHANGED"];
// Hrefs the cloud needs but a person does not: left out of the resource list.
const HIDDEN = new Set(["/oic/res", "/oic/d", "/oic/p", "/oic/mnt", "/oc/con", "/oic/con",
  "/CoapCloudConfResURI", "/oc/wk/introspection"]);

const state = {
  token: null,
  devices: new Map(),   // di -> {device, links: [ResourceLink]}
  values: new Map(),    // "di href" -> representation
  history: new Map(),   // "di href" -> [[t ms, number]]
  socket: null,
};

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};

function showError(text) {
  const p = $("#error");
  p.textContent = text || "";
  p.hidden = !text;
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + state.token } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  if (r.status === 401) {
    sessionStorage.removeItem("ocf-token");
    showLogin("the token was refused (expired?)");
    throw new Error("unauthenticated");
  }
  if (!r.ok) {
    let msg = text;
    try { msg = JSON.parse(text).message || text; } catch (_) { /* not JSON */ }
    throw new Error(`${method} ${path}: HTTP ${r.status} ${msg}`);
  }
  return text;
}

// GET /api/v1/devices is a stream: one {"result": Device} per line.
function streamResults(text) {
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l).result).filter(Boolean);
}

function showLogin(why) {
  $("#main").hidden = true;
  $("#login").hidden = false;
  const base = location.origin;
  $("#token-help").textContent = $("#token-help").textContent.replace("URL", base);
  if (why) showError(why);
}

async function loadDevices() {
  const list = streamResults(await api("GET", "/api/v1/devices"));
  const seen = new Set();
  for (const d of list) {
    seen.add(d.id);
    const links = JSON.parse(await api("GET", `/api/v1/devices/${d.id}/resource-links`)).resources || [];
    state.devices.set(d.id, { device: d, links });
  }
  for (const di of [...state.devices.keys()]) if (!seen.has(di)) state.devices.delete(di);
  render();
}

let reloadTimer = null;
function reloadSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => loadDevices().catch((e) => showError(e.message)), 200);
}

function isOnline(d) {
  const m = d.metadata || {};
  return ((m.status && m.status.value) || (m.connection && m.connection.status)) === "ONLINE";
}

function render() {
  const root = $("#devices");
  root.textContent = "";
  $("#no-devices").hidden = state.devices.size > 0;
  for (const [di, { device, links }] of state.devices) {
    const online = isOnline(device);
    const card = el("div", { class: "device", "data-di": di, "data-online": String(online) });
    card.append(el("h3", {}, device.name || "(unnamed)",
      el("span", { class: "badge " + (online ? "on" : "off"), "data-status": "" }, online ? "online" : "offline")));
    card.append(el("div", { class: "di" }, di));
    for (const link of links.filter((l) => !HIDDEN.has(l.href)).sort((a, b) => a.href.localeCompare(b.href))) {
      card.append(resourceRow(di, link));
    }
    const hasMnt = links.some((l) => l.href === "/oic/mnt");
    if (hasMnt) {
      const reboot = el("button", { "data-action": "reboot" }, "Reboot");
      reboot.onclick = () => maintenance(di, device.name, "rb", "reboot");
      const reset = el("button", { class: "danger", "data-action": "factory-reset" }, "Factory reset");
      reset.onclick = () => maintenance(di, device.name, "fr", "factory-reset");
      card.append(el("div", { class: "actions" }, reboot, reset));
    }
    root.append(card);
  }
  for (const key of state.values.keys()) paintValue(key);
}

function resourceRow(di, link) {
  const rt = link.resourceTypes || [];
  const row = el("div", { class: "res", "data-href": link.href, "data-rt": rt.join(" ") });
  row.append(el("span", { class: "href" }, link.href));
  let control;
  if (rt.includes("oic.r.switch.binary")) {
    const input = el("input", { type: "checkbox", "data-control": "switch" });
    input.onchange = () => update(di, link.href, { value: input.checked }).catch((e) => {
      input.checked = !input.checked;
      showError(e.message);
    });
    control = el("label", { class: "switch" }, input, el("span"));
  } else if (rt.includes("oic.r.light.brightness")) {
    const input = el("input", { type: "range", min: "0", max: "100", "data-control": "brightness" });
    const out = el("span", { class: "value", "data-value": "" });
    input.oninput = () => { out.textContent = input.value; };
    input.onchange = () => update(di, link.href, { brightness: Number(input.value) }).catch((e) => showError(e.message));
    control = el("span", {}, input, " ", out);
  } else {
    control = el("span", { class: "value", "data-value": "" }, "…");
  }
  row.append(control);
  if (rt.includes("oic.r.temperature")) {
    row.append(chartSvg());
  }
  return row;
}

function chartSvg() {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 300 80");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("data-chart", "");
  svg.setAttribute("data-points", "0");
  return svg;
}

async function update(di, href, content) {
  await api("PUT", `/api/v1/devices/${di}/resources${href}`, content);
  showError("");
}

async function maintenance(di, name, key, what) {
  const text = what === "reboot"
    ? `Reboot ${name} (${di})? It signs out, restarts and signs in again.`
    : `Factory-reset ${name} (${di})? It leaves the cloud, forgets its owner and credentials, and must be onboarded again.`;
  if (!window.confirm(text)) return;
  try {
    await update(di, "/oic/mnt", { [key]: true });
  } catch (e) {
    showError(e.message);
  }
}

function describe(rep) {
  if (rep === null || typeof rep !== "object") return String(rep);
  if ("temperature" in rep) return `${Number(rep.temperature).toFixed(2)} °${rep.units || "C"}`;
  if ("humidity" in rep) return `${rep.humidity} %`;
  if ("atmosphericPressure" in rep) return `${rep.atmosphericPressure} hPa`;
  if ("illuminance" in rep) return `${rep.illuminance} lx`;
  if ("value" in rep) return rep.value ? "on / open" : "off / closed";
  if ("brightness" in rep) return String(rep.brightness);
  const shown = Object.entries(rep).filter(([k]) => !["rt", "if", "n", "id"].includes(k));
  return shown.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ");
}

function paintValue(key) {
  const [di, href] = key.split(" ");
  const row = document.querySelector(`.device[data-di="${di}"] .res[data-href="${CSS.escape(href)}"]`);
  if (!row) return;
  const rep = state.values.get(key);
  const sw = $("input[data-control=switch]", row);
  if (sw && rep && "value" in rep) sw.checked = !!rep.value;
  const br = $("input[data-control=brightness]", row);
  if (br && rep && "brightness" in rep && document.activeElement !== br) br.value = rep.brightness;
  const v = $("[data-value]", row);
  if (v) v.textContent = br ? String(rep.brightness) : describe(rep);
  const svg = $("svg[data-chart]", row);
  if (svg) drawChart(svg, state.history.get(key) || []);
}

function drawChart(svg, points) {
  svg.textContent = "";
  svg.setAttribute("data-points", String(points.length));
  if (points.length === 0) return;
  const now = Date.now();
  const vals = points.map((p) => p[1]);
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (hi - lo < 0.5) { const mid = (hi + lo) / 2; lo = mid - 0.25; hi = mid + 0.25; }
  // The time axis spans what has been seen (at least 30 s, at most the window).
  const span = Math.min(CHART_WINDOW_MS, Math.max(30000, now - points[0][0]));
  const x = (t) => 300 * (1 - (now - t) / span);
  const y = (v) => 72 - 64 * (v - lo) / (hi - lo);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "));
  svg.append(line);
  for (const [label, v] of [[hi.toFixed(2), hi], [lo.toFixed(2), lo]]) {
    const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    t.setAttribute("x", "2");
    t.setAttribute("y", String(y(v) + (v === hi ? 8 : -2)));
    t.textContent = label;
    svg.append(t);
  }
}

function onEvent(ev) {
  if (ev.resourceChanged) {
    const rc = ev.resourceChanged;
    const key = `${rc.resourceId.deviceId} ${rc.resourceId.href}`;
    state.values.set(key, rc.content);
    if (rc.content && typeof rc.content.temperature === "number") {
      const h = state.history.get(key) || [];
      h.push([Number(BigInt(rc.eventMetadata.timestamp) / 1000000n) || Date.now(), rc.content.temperature]);
      const cutoff = Date.now() - CHART_WINDOW_MS;
      while (h.length && h[0][0] < cutoff) h.shift();
      state.history.set(key, h);
    }
    paintValue(key);
  } else if (ev.deviceMetadataUpdated) {
    const m = ev.deviceMetadataUpdated;
    const entry = state.devices.get(m.deviceId);
    if (entry) {
      entry.device.metadata = { ...(entry.device.metadata || {}), status: m.status, connection: m.connection };
      render();
    } else {
      reloadSoon();
    }
  } else if (ev.deviceRegistered || ev.deviceUnregistered || ev.resourcePublished || ev.resourceUnpublished) {
    reloadSoon();
  } else if (ev.operationProcessed && ev.operationProcessed.errorStatus.code !== "OK") {
    showError("subscription: " + ev.operationProcessed.errorStatus.message);
  }
}

function subscribe() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/api/v1/ws/events";
  // Browsers cannot set Authorization on a WebSocket: the token travels as a subprotocol.
  const ws = new WebSocket(url, ["Bearer", state.token]);
  state.socket = ws;
  const live = $("#live");
  ws.onopen = () => {
    live.textContent = "events: live";
    live.className = "badge on";
    ws.send(JSON.stringify({ createSubscription: { eventFilter: EVENTS }, correlationId: "console" }));
  };
  ws.onmessage = (m) => {
    try { onEvent(JSON.parse(m.data).result || {}); } catch (e) { showError("event: " + e.message); }
  };
  ws.onclose = () => {
    live.textContent = "events: reconnecting";
    live.className = "badge off";
    setTimeout(subscribe, 2000);
  };
}

async function pollLog() {
  try {
    const entries = JSON.parse(await api("GET", "/dev-cloud/api/v1/log"));
    const body = $("#log tbody");
    body.textContent = "";
    for (const e of entries.slice(-60).reverse()) {
      const t = new Date(e.t).toLocaleTimeString();
      body.append(el("tr", {}, el("td", {}, t), el("td", {}, (e.di || "-").slice(0, 8)),
        el("td", {}, e.from), el("td", {}, `${e.method} ${e.path}`), el("td", {}, e.code)));
    }
  } catch (e) {
    if (e.message !== "unauthenticated") showError(e.message);
  }
}

async function start() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("ocf-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
  }
  state.token = sessionStorage.getItem("ocf-token");
  if (!state.token) return showLogin();
  $("#login").hidden = true;
  $("#main").hidden = false;
  try {
    const hub = JSON.parse(await (await fetch("/.well-known/hub-configuration")).text());
    $("#hub").textContent = `hub ${hub.id} · devices connect to ${hub.coapGateway}`;
    await loadDevices();
  } catch (e) {
    if (e.message !== "unauthenticated") showError(e.message);
    if (!state.token) return;
  }
  subscribe();
  pollLog();
  setInterval(pollLog, 2000);
}

$("#token-form").onsubmit = (e) => {
  e.preventDefault();
  const t = $("#token-input").value.trim();
  if (t) {
    sessionStorage.setItem("ocf-token", t);
    showError("");
    start();
  }
};

start();
