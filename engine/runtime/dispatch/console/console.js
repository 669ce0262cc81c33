// Vigil duty room: reads and acts through the gateway's REST API; reloads on each
// "change" of the server-sent event stream, and its stations on each "readings". No
// framework, no network beyond the gateway.
"use strict";
const LEVELS = ["red", "orange", "yellow", "blue"];
let T = {}, dict = {}, stations = [], byId = {}, alerts = [];
const $ = (s) => document.querySelector(s);
function lang() {
  const chosen = localStorage.getItem("vigil-lang");
  if (chosen) return chosen;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

function t(key) { return T[key] || key; }

async function api(path, init = {}) {
  const headers = Object.assign({"Content-Type": "application/json"}, init.headers || {});
  const token = sessionStorage.getItem("vigil-token");
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, Object.assign({}, init, {headers}));
  if (r.status === 401 || r.status === 403) {
    const given = prompt(t("token"));
    if (given) { sessionStorage.setItem("vigil-token", given); return api(path, init); }
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// Times in the station's zone when the registry gives one, else the browser's; with the zone.
// A formatter per language and zone: making one costs far more than using it, and a
// thousand-station table formats a thousand times per redraw.
const formats = new Map();
function when(ms, station) {
  if (!ms) return "";
  const tz = (byId[station] || {}).tz || undefined, key = lang() + " " + (tz || "");
  let f = formats.get(key);
  if (!f) {
    f = new Intl.DateTimeFormat(lang() === "zh" ? "zh-CN" : "en-GB", {
      timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
      minute: "2-digit", timeZoneName: "short"});
    formats.set(key, f);
  }
  return f.format(new Date(ms));
}

function cell(row, content, cls) {
  const td = row.insertCell();
  if (content instanceof Node) td.append(content); else td.textContent = content ?? "";
  if (cls) td.className = cls;
  return td;
}
function badge(level) {
  const s = document.createElement("span");
  s.className = "lvl lvl-" + level;
  s.textContent = t(level === "none" ? "none_level" : level);
  return s;
}
function button(label, onclick, name) {
  const b = document.createElement("button");
  b.textContent = t(label); b.onclick = onclick; b.name = name || label;
  return b;
}
function where(station) {
  const s = byId[station] || {};
  return [s.basin, s.district, s.name || station].filter(Boolean).join(" / ") + ` (${station})`;
}

async function refresh() {
  const [a, st, si, hi] = await Promise.all([
    api("/api/alerts"), api("/api/stations"), api("/api/silences"), api("/api/history")]);
  stations = st.stations; byId = Object.fromEntries(stations.map((s) => [s.id, s]));
  alerts = a.alerts;
  drawAlerts(alerts); drawStations(); drawSilences(si.silences); drawHistory(alerts, hi.alerts);
}
// New readings: last values and sparklines move, the alerts do not (a "change" says so).
async function refreshStations() {
  const st = await api("/api/stations");
  stations = st.stations; byId = Object.fromEntries(stations.map((s) => [s.id, s]));
  drawAlerts(alerts); drawStations();
}

// One refresh at a time; changes that arrive meanwhile make one more, not one each
// ("all" when any of them asked for it, else the stations only).
let refreshing = null, wanted = null;
function requestRefresh(what = "all") {
  wanted = wanted === "all" || what === "all" ? "all" : "stations";
  if (refreshing) return refreshing;
  refreshing = (async () => {
    while (wanted) {
      const w = wanted; wanted = null;
      await (w === "all" ? refresh() : refreshStations()).catch(console.error);
    }
    refreshing = null;
  })();
  return refreshing;
}

// Active alerts (firing or acknowledged; a latched red stays until somebody takes it),
// worst first; those a silence or a higher alert hides go to their own table, marked why.
function drawAlerts(alerts) {
  const open = alerts.filter((x) => x.status === "firing" || x.status === "acknowledged");
  open.sort((x, y) => LEVELS.indexOf(x.level) - LEVELS.indexOf(y.level) || y.at - x.at);
  const shown = open.filter((x) => !x.hidden), hidden = open.filter((x) => x.hidden);
  alertRows($("#alerts tbody"), shown);
  alertRows($("#silenced-alerts tbody"), hidden);
  $("#no-alerts").hidden = shown.length > 0;
}
function alertRows(body, list) {
  body.replaceChildren();
  for (const x of list) {
    const row = body.insertRow();
    row.dataset.fingerprint = x.fingerprint; row.dataset.station = x.station;
    if (x.hidden) row.className = "silenced";
    cell(row, badge(x.level));
    cell(row, where(x.station));
    cell(row, x.summary || `${x.rule_id} ${x.metric}`);
    const unit = ((byId[x.station] || {}).units || {})[x.metric] || "";
    cell(row, `${x.value ?? ""} ${unit}`.trim());
    cell(row, spark(((byId[x.station] || {}).spark || {})[x.metric], x.threshold), "spark");
    cell(row, when(x.started_at, x.station));
    cell(row, x.hidden ? x.hidden : x.acknowledged ? `${x.acknowledged.by} ${when(x.acknowledged.at, x.station)}` +
      (x.acknowledged.note ? ` — ${x.acknowledged.note}` : "") : "", "taken");
    const acts = cell(row, "");
    if (x.status === "firing") acts.append(button("ack", () => ackAlert(x)));
  }
}

// The value over the last hours as a plain inline SVG line; the threshold dashed.
const SPARK_MS = 6 * 3600 * 1000, SVG = "http://www.w3.org/2000/svg";
function spark(points, threshold) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", "120"); svg.setAttribute("height", "28"); svg.setAttribute("class", "sparkline");
  const pts = (points || []).filter((p) => p[1] !== null);
  if (!pts.length) return svg;
  const end = pts[pts.length - 1][0], shown = pts.filter((p) => p[0] >= end - SPARK_MS);
  const vs = shown.map((p) => p[1]).concat(Number.isFinite(threshold) ? [threshold] : []);
  const lo = Math.min(...vs), hi = Math.max(...vs), span = hi - lo || 1;
  const t0 = shown[0][0], width = end - t0 || 1;  // what there is of the last hours, full width
  const x = (t) => (2 + 116 * (t - t0) / width).toFixed(1);
  const y = (v) => (26 - 24 * (v - lo) / span).toFixed(1);
  const add = (name, attrs) => {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    svg.append(el);
  };
  if (Number.isFinite(threshold)) add("line", {x1: 2, x2: 118, y1: y(threshold), y2: y(threshold), class: "threshold"});
  add("polyline", {points: shown.map((p) => `${x(p[0])},${y(p[1])}`).join(" ")});
  svg.dataset.points = String(shown.length);
  return svg;
}

function filterOptions(id, key) {
  const sel = $(id), keep = sel.value;
  const values = [...new Set(stations.map((s) => s[key]).filter(Boolean))].sort();
  sel.replaceChildren(new Option(`${t(key)}: ${t("all")}`, ""), ...values.map((v) => new Option(v, v)));
  sel.value = values.includes(keep) ? keep : "";
  sel.onchange = drawStations;
}
function drawStations() {
  filterOptions("#f-kind", "kind"); filterOptions("#f-basin", "basin"); filterOptions("#f-district", "district");
  const f = {kind: $("#f-kind").value, basin: $("#f-basin").value, district: $("#f-district").value};
  const body = $("#stations tbody"); body.replaceChildren();
  for (const s of stations) {
    if (Object.entries(f).some(([k, v]) => v && s[k] !== v)) continue;
    const row = body.insertRow(); row.dataset.station = s.id;
    if (s.silenced) row.className = "silenced";
    cell(row, s.name ? `${s.name} (${s.id})` : s.id); cell(row, s.kind); cell(row, s.basin);
    cell(row, s.district); cell(row, badge(s.level));
    const readings = Object.entries(s.readings || {});
    cell(row, readings.map(([m, r]) => `${m} ${r.value ?? "—"} ${(s.units || {})[m] || ""}`.trim()).join(", "), "last-value");
    const seen = cell(row, when(Math.max(0, ...readings.map(([, r]) => r.ts)), s.id), "last-seen");
    // Its worker does not answer: the last readings known, maybe not the last any more.
    if (s.stale) { row.classList.add("stale"); seen.title = t("stale"); }
    cell(row, t("qc_" + s.qc), "qc qc-" + s.qc);
    cell(row, s.silenced || "", "silenced-by");
    cell(row, button("silence", () => silenceStation(s.id), "silence-station"));
  }
}

function drawSilences(list) {
  const body = $("#silences tbody"); body.replaceChildren();
  for (const s of list.filter((x) => x.state !== "expired")) {
    const row = body.insertRow(); row.dataset.id = s.id;
    cell(row, s.matchers.join(", ")); cell(row, when(s.ends_at)); cell(row, s.author); cell(row, s.comment);
    cell(row, button("expire", async () => { await api(`/api/silences/${s.id}`, {method: "DELETE"}); }));
  }
}

function drawHistory(alerts, forgotten) {
  const body = $("#history tbody"); body.replaceChildren();
  const done = alerts.filter((x) => x.status === "resolved" || x.status === "closed")
    .concat(forgotten || []);
  done.sort((x, y) => (y.at || 0) - (x.at || 0));
  for (const x of done.slice(0, 50)) {
    const row = body.insertRow();
    cell(row, badge(x.level || "none")); cell(row, where(x.station)); cell(row, x.summary || x.rule_id);
    const steps = [`${t("started")} ${when(x.started_at, x.station)}`];
    if (x.acknowledged) steps.push(`${t("acked")} ${t("by")} ${x.acknowledged.by} ${when(x.acknowledged.at, x.station)}`);
    if (x.status === "resolved") steps.push(`${t("cleared")} ${when(x.at, x.station)}`);
    if (x.closed) steps.push(`${t("closed")} ${t("by")} ${x.closed.by}: ${x.closed.feedback}`);
    cell(row, steps.join(" → "));
    const acts = cell(row, "");
    if (x.status === "resolved" && x.fingerprint) acts.append(button("close", () => closeAlert(x)));
  }
}

// Dead letters of the last hour by reason class, from the gateway's status (counted
// as they happen, nothing read back), on a slow timer; the newest on demand.
const STATUS_EVERY_MS = 10000;
async function drawDead() {
  const status = await api("/vigil/status");
  const counts = Object.entries(status.dead_letters_last_hour || {}).sort((a, b) => b[1] - a[1]);
  const body = $("#dead tbody"); body.replaceChildren();
  for (const [cls, n] of counts) {
    const row = body.insertRow(); row.dataset.reason = cls;
    cell(row, cls); cell(row, n);
    cell(row, button("newest", () => drawNewestDead(cls), "newest-dead"));
  }
  $("#no-dead").hidden = counts.length > 0;
}
const NEWEST = 20;
async function drawNewestDead(cls) {
  // The topic's end first (a start past it reads nothing), then the page before it.
  const {end} = await api("/vigil/dead-letters?limit=1&start=9007199254740991");
  const q = new URLSearchParams({start: Math.max(0, end - (cls ? 10 * NEWEST : NEWEST)), limit: 1000});
  if (cls) q.set("reason", cls);
  const page = await api("/vigil/dead-letters?" + q);
  const body = $("#dead-newest tbody"); body.replaceChildren();
  for (const r of page.records.slice(-NEWEST).reverse()) {
    const row = body.insertRow();
    cell(row, when(r.received_at)); cell(row, r.reason); cell(row, r.source);
    const bytes = Uint8Array.from(atob(r.payload_b64), (c) => c.charCodeAt(0));
    cell(row, new TextDecoder().decode(bytes).slice(0, 120), "payload");
  }
  $("#dead-newest").hidden = false;
}

// The action dialog: acknowledge with a note, close with feedback, silence for a time.
function ask(title, what, label, withDuration, submit) {
  const who = $("#who").value.trim();
  if (!who) { alert(t("needname")); $("#who").focus(); return; }
  $("#act-title").textContent = title; $("#act-what").textContent = what;
  $("#act-label").textContent = label; $("#act-text").value = ""; $("#act-error").textContent = "";
  $("#act-dur-row").hidden = !withDuration;
  const dialog = $("#act");
  $("#act-ok").onclick = async (ev) => {
    ev.preventDefault();
    try { await submit(who, $("#act-text").value.trim(), $("#act-dur").value.trim()); dialog.close(); }
    catch (e) { $("#act-error").textContent = e.message; }
  };
  dialog.showModal();
}
function post(path, data) { return api(path, {method: "POST", body: JSON.stringify(data)}); }
function ackAlert(x) {
  ask(t("ack"), `${where(x.station)}: ${x.summary}`, t("note"), false,
    (by, note) => post(`/api/alerts/${x.fingerprint}/ack`, {by, note}));
}
function closeAlert(x) {
  ask(t("close"), `${where(x.station)}: ${x.summary}`, t("feedback"), false,
    (by, feedback) => post(`/api/alerts/${x.fingerprint}/close`, {by, feedback}));
}
function silenceStation(station) {
  ask(t("silence"), where(station), t("comment"), true,
    (author, comment, duration) => post("/api/silences", {matchers: [`station=${station}`], author, comment, duration}));
}

// The live stream, read with fetch so that it can carry the token; reconnects after a second.
async function live() {
  for (;;) {
    try {
      const headers = {};
      const token = sessionStorage.getItem("vigil-token");
      if (token) headers.Authorization = "Bearer " + token;
      const r = await fetch("/api/stream", {headers});
      if (!r.ok) throw new Error(r.statusText);
      $("#live").className = "live on"; $("#live").textContent = t("live");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += value;
        let i, changed = false, readings = false;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const msg = buf.slice(0, i); buf = buf.slice(i + 2);
          if (msg.includes("event: change")) changed = true;
          if (msg.includes("event: readings")) readings = true;
        }
        if (changed) requestRefresh("all"); else if (readings) requestRefresh("stations");
      }
    } catch (e) { console.error(e); }
    $("#live").className = "live off"; $("#live").textContent = t("offline");
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

function translate() {
  T = dict[lang()] || dict.en;
  document.documentElement.lang = lang();
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  $("#live").textContent = t($("#live").classList.contains("on") ? "live" : "offline");
  document.title = t("title");
}

async function main() {
  dict = await (await fetch("/console/i18n.json")).json();
  $("#lang").value = lang();
  $("#lang").onchange = () => {
    localStorage.setItem("vigil-lang", $("#lang").value); translate(); requestRefresh(); drawDead().catch(console.error);
  };
  $("#who").value = localStorage.getItem("vigil-who") || "";
  $("#who").onchange = () => localStorage.setItem("vigil-who", $("#who").value.trim());
  translate();
  live();
  // The dead letters are counted, not streamed: slowly; with them everything again
  // (what time alone changes, a silence running out).
  drawDead().catch(console.error);
  setInterval(() => { requestRefresh(); drawDead().catch(console.error); }, STATUS_EVERY_MS);
}
main();
