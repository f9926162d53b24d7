// Vigil dashboard: polls the control plane's JSON API every 2 s and draws the views.
// No framework, no build step: each view is a function from API data to HTML/SVG.
"use strict";

const POLL_MS = 2000;
const view = document.getElementById("view");
const statusEl = document.getElementById("status");
let timer = null;
let tapSource = null;
let lastOk = 0;

// ---------- helpers ----------

function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function short(id) {
  if (!id) return "unauthenticated";
  const m = /\/sa\/([^/]+)$/.exec(id);
  return m ? m[1] : id.replace(/^ext:/, "");
}
function num(v, digits) {
  if (v == null || !isFinite(v)) return "–";
  return Number(v).toFixed(digits == null ? 1 : digits);
}
function pct(v) {
  if (v == null) return "–";
  const p = v * 100;
  return (p >= 99.95 ? "100" : p.toFixed(1)) + "%";
}
function ms(v) {
  if (v == null) return "–";
  return v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms";
}
function ago(unixSecs) {
  const d = Math.round(Date.now() / 1000 - unixSecs);
  return duration(Math.abs(d)) + (d >= 0 ? " ago" : " from now");
}
function duration(s) {
  s = Math.round(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}
function clock(unixSecs) {
  return new Date(unixSecs * 1000).toLocaleTimeString([], { hour12: false });
}
function successClass(v) {
  if (v == null) return "";
  return v >= 0.99 ? "ok" : v >= 0.95 ? "warn" : "bad";
}
class ApiError extends Error {}
async function api(path) {
  let r;
  try { r = await fetch(path, { cache: "no-store" }); } catch (e) { throw new ApiError(e.message); }
  if (!r.ok) throw new ApiError(path + " answered " + r.status);
  return r.json();
}
function setStatus(ok, text) {
  statusEl.className = "status" + (ok ? "" : " down");
  statusEl.innerHTML = '<span class="dot"></span>' + esc(text);
}
function lockIcon(x, y, ok) {
  // A small padlock: closed and green for mTLS, open and red where it is not.
  const shackle = ok
    ? `M${x - 3.5} ${y - 1}v-3a3.5 3.5 0 0 1 7 0v3`
    : `M${x - 3.5} ${y - 1}v-3a3.5 3.5 0 0 1 7 0v-1`;
  return `<g class="lock ${ok ? "lock-ok" : "lock-bad"}"><path d="${shackle}" fill="none" stroke="${ok ? "#1f9d55" : "#dc2626"}" stroke-width="1.6"/>` +
    `<rect x="${x - 5}" y="${y - 1}" width="10" height="8" rx="1.5"/></g>`;
}

// ---------- router ----------

function route() {
  const hash = location.hash.replace(/^#/, "") || "graph";
  const [tab, arg] = hash.split("/");
  document.querySelectorAll("#tabs a").forEach((a) =>
    a.classList.toggle("active", a.dataset.tab === (tab === "workload" ? "workloads" : tab)));
  if (timer) clearTimeout(timer);
  if (tapSource && tab !== "tap") { tapSource.close(); tapSource = null; }
  const views = { graph: graphView, workloads: workloadsView, workload: workloadView, policy: policyView, identity: identityView };
  if (tab === "tap") { tapView(); return; }
  const fn = views[tab] || graphView;
  const tick = async () => {
    try {
      await fn(arg ? decodeURIComponent(arg) : undefined);
      lastOk = Date.now();
      setStatus(true, "live · updated " + new Date().toLocaleTimeString([], { hour12: false }));
    } catch (e) {
      setStatus(false, e instanceof ApiError
        ? "cannot reach the control plane (" + e.message + "); retrying"
        : "dashboard error: " + e.message + " (please report it)");
    }
    timer = setTimeout(tick, POLL_MS);
  };
  tick();
}
window.addEventListener("hashchange", route);

// ---------- service graph ----------

function layout(nodes, edges) {
  const ids = nodes.map((n) => n.id);
  const incoming = {};
  ids.forEach((id) => (incoming[id] = []));
  edges.forEach((e) => { if (incoming[e.target] && e.source !== e.target) incoming[e.target].push(e.source); });
  const depth = {};
  ids.forEach((id) => (depth[id] = 0));
  for (let round = 0; round < ids.length; round++) {
    let changed = false;
    edges.forEach((e) => {
      if (e.source === e.target || depth[e.source] == null || depth[e.target] == null) return;
      const d = depth[e.source] + 1;
      if (d > depth[e.target] && d < ids.length) { depth[e.target] = d; changed = true; }
    });
    if (!changed) break;
  }
  const columns = [];
  ids.forEach((id) => { (columns[depth[id]] = columns[depth[id]] || []).push(id); });
  // Order each column by where its callers sit, so edges cross less.
  const row = {};
  columns.forEach((col, c) => {
    if (!col) return;
    col.sort((a, b) => {
      const ka = incoming[a].length ? incoming[a].reduce((s, x) => s + (row[x] || 0), 0) / incoming[a].length : 0;
      const kb = incoming[b].length ? incoming[b].reduce((s, x) => s + (row[x] || 0), 0) / incoming[b].length : 0;
      return ka - kb || incoming[b].length - incoming[a].length || a.localeCompare(b);
    });
    col.forEach((id, i) => (row[id] = i));
  });
  return { columns: columns.filter(Boolean), depth };
}

function drawGraph(g, width) {
  const nodes = g.nodes, edges = g.edges;
  if (!nodes.length) return '<p class="empty">No workloads in the mesh yet.</p>';
  const { columns } = layout(nodes, edges);
  const nodeW = 150, nodeH = 54, rowH = 124, top = 74, pad = 20;
  const maxRows = Math.max(...columns.map((c) => c.length));
  const height = top + maxRows * rowH;
  const colW = columns.length > 1 ? (width - 2 * pad - nodeW) / (columns.length - 1) : 0;
  const pos = {};
  columns.forEach((col, c) => {
    const offset = ((maxRows - col.length) * rowH) / 2;
    col.forEach((id, i) => {
      pos[id] = { x: pad + c * colW, y: top + offset + i * rowH + (rowH - nodeH) / 2, col: c };
    });
  });
  const marker = (id, color) => `<marker id="${id}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="${color}"/></marker>`;
  let out = `<svg id="graph-svg" viewBox="0 0 ${width} ${height}" height="${height}" xmlns="http://www.w3.org/2000/svg">`;
  out += `<defs>${marker("arrow-ok", "#8a94a8")}${marker("arrow-warn", "#d97706")}${marker("arrow-bad", "#dc2626")}${marker("arrow-idle", "#cfd5e2")}</defs>`;
  const labels = [];
  edges.forEach((e) => {
    const a = pos[e.source], b = pos[e.target];
    if (!a || !b) return;
    const x1 = a.x + nodeW, y1 = a.y + nodeH / 2, x2 = b.x, y2 = b.y + nodeH / 2;
    let d, lx, ly;
    if (b.col === a.col + 1) {
      const cx = (x1 + x2) / 2;
      d = `M${x1} ${y1} C${cx} ${y1} ${cx} ${y2} ${x2 - 1} ${y2}`;
      lx = cx; ly = (y1 + y2) / 2;
    } else {
      // Long or backward edges arch over the nodes in between.
      const apex = Math.min(a.y, b.y) - 58;
      const fwd = b.col > a.col;
      const sx = fwd ? x1 - 20 : a.x + nodeW / 2, sy = a.y;
      const ex = fwd ? x2 + 24 : b.x + nodeW / 2, ey = b.y;
      d = `M${sx} ${sy} C${sx + 40} ${apex} ${ex - 40} ${apex} ${ex} ${ey - 1}`;
      lx = (sx + ex) / 2; ly = 0.125 * sy + 0.75 * apex + 0.125 * ey;
    }
    const denied = e.denied_share != null && e.denied_share > 0.5;
    const idle = !(e.rps > 0);
    const cls = denied ? "denied" : idle ? "idle" : e.success_rate != null && e.success_rate < 0.95 ? "failing" : e.success_rate != null && e.success_rate < 0.99 ? "flaky" : "ok";
    const arrow = { denied: "bad", failing: "bad", flaky: "warn", idle: "idle", ok: "ok" }[cls];
    const w = idle ? 1.5 : Math.min(5, 1.5 + Math.log2(1 + e.rps));
    const deniedPart = e.denied_share > 0 ? ` · ${pct(e.denied_share)} denied` : "";
    const line1 = denied ? `${pct(e.denied_share)} denied · ${num(e.rps)} rps` : idle ? "idle" : `${num(e.rps)} rps · ${pct(e.success_rate)}${deniedPart}`;
    const parts2 = [];
    if (!idle && !denied) parts2.push("p99 " + ms(e.p99_ms));
    if (e.retries_rps > 0.05) parts2.push(num(e.retries_rps) + " retries/s" + (e.retry_amplification != null ? ` (×${e.retry_amplification.toFixed(2)} tries)` : ""));
    if (e.breaker_open) parts2.push("breaker open");
    if (!e.mtls && e.mtls_share != null) parts2.push("NO mTLS");
    const line2 = parts2.join(" · ");
    const tw = Math.max(line1.length, line2.length) * 6.4 + 34;
    const th = line2 ? 34 : 20;
    out += `<g class="edge ${cls}" data-source="${esc(e.source)}" data-target="${esc(e.target)}" data-service="${esc(e.service)}" data-rps="${num(e.rps, 2)}" data-success="${e.success_rate == null ? "" : e.success_rate.toFixed(4)}" data-denied="${e.denied_share == null ? "" : e.denied_share.toFixed(4)}" data-mtls="${e.mtls}">` +
      `<title>${esc(short(e.source))} → ${esc(short(e.target))} (${esc(e.service)})&#10;${esc(line1)} ${esc(line2)}&#10;mTLS: ${e.mtls_share == null ? "no answered requests" : pct(e.mtls_share) + " of answered requests"}&#10;${e.requests_total} requests in all</title>` +
      `<path class="line" d="${d}" stroke-width="${w.toFixed(1)}" marker-end="url(#arrow-${arrow})"/></g>`;
    labels.push(`<g class="edge ${cls}"><g class="label" transform="translate(${(lx - tw / 2).toFixed(1)},${(ly - th / 2).toFixed(1)})">` +
      `<rect class="bg" width="${tw.toFixed(0)}" height="${th}" rx="8"/>${lockIcon(14, th / 2 - 1, e.mtls || e.mtls_share == null)}` +
      `<text x="26" y="14">${esc(line1)}</text>${line2 ? `<text x="26" y="28" class="second">${esc(line2)}</text>` : ""}</g></g>`);
  });
  nodes.forEach((n) => {
    const p = pos[n.id];
    if (!p) return;
    const state = n.kind !== "workload" ? n.kind : n.ready ? "ready" : "down";
    const sub = n.kind === "workload"
      ? (n.reachable ? `${num(n.rps_in)} rps in · ${pct(n.success_in)}` : "proxy not answering")
      : n.kind === "external" ? "no workload identity" : "service";
    const name = n.kind === "workload" ? n.id : short(n.id.replace(/^(svc|ext):/, ""));
    out += `<g class="node ${state}" data-node="${esc(n.id)}" data-rps="${num(n.rps_in, 2)}" data-ready="${n.ready}" transform="translate(${p.x.toFixed(1)},${p.y.toFixed(1)})">` +
      `<title>${esc(n.spiffe_id || n.id)}</title><rect width="${nodeW}" height="${nodeH}" rx="10"/>` +
      `<circle cx="16" cy="20" r="5" fill="${n.kind !== "workload" ? "#b9c2d6" : n.ready ? "#1f9d55" : "#dc2626"}"/>` +
      `<text class="name" x="28" y="25">${esc(name)}</text>` +
      `<text class="sub" x="14" y="43">${esc(sub)}</text></g>`;
  });
  return out + labels.join("") + "</svg>";
}

async function graphView() {
  const [g, overview, policy, workloads] = await Promise.all([
    api("/api/graph"), api("/api/overview"), api("/api/policy"), api("/api/workloads"),
  ]);
  const meshRps = g.nodes.filter((n) => n.kind === "workload").reduce((s, n) => s + (n.rps_in || 0), 0);
  const mtlsEdges = g.edges.filter((e) => e.mtls_share != null);
  const mtlsOk = mtlsEdges.filter((e) => e.mtls).length;
  const width = Math.max(900, Math.min(1450, view.clientWidth - 34));
  const denials = policy.denials.slice(0, 8);
  view.innerHTML = `
    <div class="cards">
      ${card("Workloads ready", `${overview.ready} / ${overview.workloads}`, overview.ready === overview.workloads ? "ok" : "bad")}
      ${card("Requests / s (all hops)", num(meshRps))}
      ${card("Success rate (denials aside)", pct(g.totals.success_rate), successClass(g.totals.success_rate))}
      ${card("Denied by policy", pct(g.totals.denied_share), g.totals.denied_share ? "warn" : "")}
      ${card("Edges with mTLS", `${mtlsOk} / ${mtlsEdges.length}`, mtlsOk === mtlsEdges.length ? "ok" : "bad")}
      ${card("Recent denials", String(policy.denials.length), policy.denials.length ? "warn" : "")}
      ${card("Policy bundle", overview.policy_version ? overview.policy_version.replace("sha256:", "") : "none", "", "mono")}
    </div>
    <div class="card">
      <h2>Service graph <span class="muted" style="font-weight:400">· rates over the last 10 s, read from the ${esc(overview.metrics_source)}</span></h2>
      ${overview.metrics_error ? `<p class="error">Metrics: ${esc(overview.metrics_error)}</p>` : ""}
      <div id="graph">${drawGraph(g, width)}</div>
      <div class="legend">
        <span>${legendLock(true)} mutual TLS, verified peer identity</span>
        <span>${legendLock(false)} answered without mTLS</span>
        <span><i></i> healthy</span><span><i class="flaky"></i> below 99% success</span><span><i class="denied"></i> denied by policy</span>
        <span>click a workload for its details</span>
      </div>
    </div>
    <div class="grid2">
      <div class="card"><h2>Workloads</h2>${workloadTable(workloads.workloads)}</div>
      <div class="card"><h2>Recent denials <a href="#policy" style="font-weight:400;font-size:12px">all →</a></h2>${denialTable(denials, true)}</div>
    </div>`;
  view.querySelectorAll(".node").forEach((el) => el.addEventListener("click", () => {
    const id = el.dataset.node;
    if (!id.includes(":")) location.hash = "#workload/" + encodeURIComponent(id);
  }));
}
function card(label, value, cls, valueCls) {
  return `<div class="card stat"><div class="label">${esc(label)}</div><div class="value ${cls || ""} ${valueCls || ""}">${esc(value)}</div></div>`;
}
function legendLock(ok) {
  return `<svg width="14" height="14" viewBox="0 0 14 14">${lockIcon(7, 6, ok)}</svg>`;
}

// ---------- workloads ----------

function workloadTable(list) {
  if (!list.length) return '<p class="empty">No workloads.</p>';
  return `<table><tr><th>Workload</th><th>Proxy</th><th class="num">In rps</th><th class="num">Success</th><th class="num">p99</th><th>Cert expires</th><th>Policy</th></tr>` +
    list.map((w) => `<tr class="workload" data-workload="${esc(w.name)}">
      <td><a href="#workload/${encodeURIComponent(w.name)}">${esc(w.name)}</a><div class="muted mono">${esc(w.namespace || "")}</div></td>
      <td>${w.ready ? '<span class="badge ok">ready</span>' : w.reachable ? '<span class="badge warn">not ready</span>' : '<span class="badge bad">down</span>'}</td>
      <td class="num">${num(w.rps_in)}</td>
      <td class="num ${successClass(w.success_in)}">${pct(w.success_in)}</td>
      <td class="num">${ms(w.p99_in_ms)}</td>
      <td>${w.cert_expires_in_seconds == null ? "–" : "in " + duration(w.cert_expires_in_seconds)}</td>
      <td>${w.policy_version == null ? "–" : w.policy_current ? '<span class="badge ok">current</span>' : '<span class="badge bad">stale</span>'}</td></tr>`).join("") +
    "</table>";
}

async function workloadsView() {
  const w = await api("/api/workloads");
  view.innerHTML = `<div class="card"><h2>Workloads</h2>${workloadTable(w.workloads)}</div>`;
}

function chart(samples, series, opts) {
  const W = 420, H = 130, left = 46, right = 8, topPad = 8, bottom = 18;
  const values = [];
  samples.forEach((s) => series.forEach((x) => { const v = s[x.key]; if (v != null && isFinite(v)) values.push(x.scale ? v * x.scale : v); }));
  let max = opts.max != null ? opts.max : Math.max(1e-9, ...values);
  let min = opts.min != null ? opts.min : 0;
  if (opts.max == null) { const mag = Math.pow(10, Math.floor(Math.log10(max))); max = Math.ceil((max * 1.15) / mag) * mag; }
  if (!(max > min)) max = min + 1;
  const t0 = samples.length ? samples[0].t : 0, t1 = samples.length ? samples[samples.length - 1].t : 1;
  const x = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * (W - left - right);
  const y = (v) => topPad + (1 - (v - min) / (max - min)) * (H - topPad - bottom);
  let out = `<svg viewBox="0 0 ${W} ${H}" xmlns="http://www.w3.org/2000/svg">`;
  [min, (min + max) / 2, max].forEach((v) => {
    out += `<line class="axis" x1="${left}" x2="${W - right}" y1="${y(v)}" y2="${y(v)}"/><text x="${left - 4}" y="${y(v) + 3}" text-anchor="end">${opts.fmt(v)}</text>`;
  });
  out += `<text x="${left}" y="${H - 4}">${samples.length ? "-" + duration(t1 - t0) : ""}</text><text x="${W - right}" y="${H - 4}" text-anchor="end">now</text>`;
  series.forEach((s) => {
    let d = "", pen = false;
    samples.forEach((p) => {
      const v = p[s.key];
      if (v == null || !isFinite(v)) { pen = false; return; }
      d += (pen ? "L" : "M") + x(p.t).toFixed(1) + " " + y(s.scale ? v * s.scale : v).toFixed(1);
      pen = true;
    });
    if (d) out += `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.8" vector-effect="non-scaling-stroke"/>`;
  });
  return out + "</svg>";
}

function chartCard(title, samples, series, opts) {
  const last = samples[samples.length - 1] || {};
  const keys = series.map((s) => `<span class="keyline" style="background:${s.color}"></span>${esc(s.label)} ${last[s.key] == null ? "–" : opts.fmt(s.scale ? last[s.key] * s.scale : last[s.key])}`).join("");
  return `<div class="chart"><h3>${esc(title)}<span class="now">${keys}</span></h3>${chart(samples, series, opts)}</div>`;
}

function edgeTable(edges, side) {
  if (!edges.length) return '<p class="empty">None seen yet.</p>';
  return `<table><tr><th>${side === "in" ? "Caller" : "Callee"}</th><th>Service</th><th class="num">rps</th><th class="num">Success</th><th class="num">Denied</th><th class="num">Tries/req</th><th class="num">p99</th><th>mTLS</th></tr>` +
    edges.map((e) => {
      const peer = side === "in" ? e.source : e.target;
      return `<tr><td>${peer.includes(":") ? esc(short(peer.replace(/^(svc|ext):/, ""))) : `<a href="#workload/${encodeURIComponent(peer)}">${esc(peer)}</a>`}</td>
      <td class="mono">${esc(e.service)}</td><td class="num">${num(e.rps)}</td>
      <td class="num ${successClass(e.success_rate)}">${pct(e.success_rate)}</td>
      <td class="num">${e.denied_share ? pct(e.denied_share) : "–"}</td>
      <td class="num">${e.retry_amplification == null ? "–" : "×" + e.retry_amplification.toFixed(2)}</td><td class="num">${ms(e.p99_ms)}</td>
      <td>${e.mtls_share == null ? "–" : e.mtls ? '<span class="badge ok">mTLS</span>' : `<span class="badge bad">${pct(e.mtls_share)}</span>`}</td></tr>`;
    }).join("") + "</table>";
}

async function workloadView(name) {
  const w = await api("/api/workloads/" + encodeURIComponent(name));
  const s = w.samples || [];
  const c = w.cert;
  const rate = (v) => num(v, v < 10 ? 1 : 0);
  view.innerHTML = `
    <div class="head"><h1>${esc(w.name)}</h1><span class="mono muted">${esc(w.spiffe_id || "")}</span>
      ${w.ready ? '<span class="badge ok">ready</span>' : `<span class="badge bad">${esc(w.ready_detail || "not ready")}</span>`}
      ${w.watching_discovery ? '<span class="badge info">connected to discovery</span>' : '<span class="badge warn">not watching discovery</span>'}</div>
    <div class="cards">
      ${card("Certificate expires", c ? "in " + duration(c.not_after - Date.now() / 1000) : "–", c && c.not_after - Date.now() / 1000 < 0 ? "bad" : "")}
      ${card("Renews", c && c.renew_at ? (c.renew_at > Date.now() / 1000 ? "in " + duration(c.renew_at - Date.now() / 1000) : "now") : "–")}
      ${card("Renewals", c ? String(c.renewals) + (c.renewal_failures ? ` (${c.renewal_failures} failed)` : "") : "–", c && c.renewal_failures ? "warn" : "")}
      ${card("Policy bundle", w.policy_version ? w.policy_version.replace("sha256:", "") : "–", w.policy_current ? "ok" : "bad", "mono")}
      ${card("Admin · metrics", `${w.admin || "–"} · ${w.metrics || "–"}`, "", "mono")}
    </div>
    ${w.breakers_open && w.breakers_open.length ? `<p class="error">Circuit breaker open: ${w.breakers_open.map((b) => esc(b.service + " → " + b.endpoint)).join(", ")}</p>` : ""}
    <div class="grid4">
      ${chartCard("Requests / s", s, [{ key: "rps_in", label: "in", color: "#4f7cff" }, { key: "rps_out", label: "out", color: "#9b59b6" }], { fmt: rate })}
      ${chartCard("Success rate", s, [{ key: "success_in", label: "in", color: "#1f9d55", scale: 100 }, { key: "success_out", label: "out", color: "#0ea5a5", scale: 100 }], { fmt: (v) => v.toFixed(v >= 99.95 ? 0 : 1) + "%", max: 100, min: Math.min(80, ...s.map((p) => Math.min(p.success_in == null ? 100 : p.success_in * 100, p.success_out == null ? 100 : p.success_out * 100))) })}
      ${chartCard("Latency (inbound)", s, [{ key: "p50_in_ms", label: "p50", color: "#4f7cff" }, { key: "p99_in_ms", label: "p99", color: "#d97706" }], { fmt: (v) => (v < 10 ? v.toFixed(1) : Math.round(v)) + "ms" })}
      ${chartCard("Denials and retries / s", s, [{ key: "denied_rps", label: "denied", color: "#dc2626" }, { key: "retries_rps", label: "retries", color: "#d97706" }], { fmt: rate })}
    </div>
    <div class="grid2" style="grid-template-columns:1fr 1fr">
      <div class="card"><h2>Inbound: who calls ${esc(w.name)}</h2>${edgeTable(w.inbound || [], "in")}</div>
      <div class="card"><h2>Outbound: what ${esc(w.name)} calls</h2>${edgeTable(w.outbound || [], "out")}</div>
    </div>
    ${w.cert_error ? `<p class="error">Certificate: ${esc(w.cert_error)}</p>` : ""}`;
}

// ---------- policy ----------

function denialTable(list, compact) {
  if (!list.length) return '<p class="empty">No denials seen since the dashboard started.</p>';
  return `<table><tr><th>Time</th><th>Source → destination</th><th>Request</th>${compact ? "" : "<th>Status</th>"}<th>Rule</th></tr>` +
    list.map((d) => `<tr class="denial" data-source="${esc(short(d.source))}" data-destination="${esc(short(d.destination))}" data-path="${esc(d.path)}">
      <td class="mono">${clock(d.time)}</td>
      <td><b>${esc(short(d.source))}</b> → <b>${esc(short(d.destination))}</b></td>
      <td class="mono nowrap">${esc(d.method)} ${esc(d.path)}</td>${compact ? "" : `<td class="num">${d.status}</td>`}
      <td class="rule">${d.rule ? esc(d.rule) : '<span class="muted">(unknown: no decision log in the control plane\'s data directory)</span>'}</td></tr>`).join("") + "</table>";
}

function targetText(t) {
  const parts = [];
  parts.push(t.namespace ? `namespace ${t.namespace}` : "any namespace");
  if (t.workloads && t.workloads.length) parts.push(`workloads ${t.workloads.join(", ")}`);
  const labels = Object.entries(t.labels || {});
  if (labels.length) parts.push(`labels ${labels.map(([k, v]) => `${k}=${v}`).join(", ")}`);
  return parts.join(", ");
}

function candidateText(c) {
  if (!c) return '<span class="muted">–</span>';
  const changed = c.allow_to_deny + c.deny_to_allow + c.error_changes;
  const cls = changed ? "warn" : "ok";
  return `<span class="badge ${cls}">${changed} of ${c.compared}</span> <span class="muted">${c.allow_to_deny} allow→deny · ${c.deny_to_allow} deny→allow${c.error_changes ? ` · ${c.error_changes} error` : ""}</span>`;
}

async function policyView() {
  const p = await api("/api/policy");
  const b = p.bundle;
  const max = Math.max(1, ...p.by_rule.map((r) => r.count));
  const agree = p.proxies.filter((x) => x.current).length;
  view.innerHTML = `
    <div class="cards">
      ${card("Bundle in force", b ? b.version.replace("sha256:", "") : "none", "", "mono")}
      ${card("Decision rule", b ? b.rule : "–", "", "mono")}
      ${card("Mode", b ? (b.dry_run ? "dry run (logs, allows)" : "enforcing") : "–", b && b.dry_run ? "warn" : "ok")}
      ${card("Proxies on this bundle", `${agree} / ${p.proxies.length}`, agree === p.proxies.length ? "ok" : "bad")}
    </div>
    <div class="grid2">
      <div class="card"><h2>Recent denials <span class="muted" style="font-weight:400">(last ${p.denials_kept} kept)</span></h2>${denialTable(p.denials, false)}</div>
      <div>
        <div class="card"><h2>Denials by rule</h2>${p.by_rule.length ? `<table>${p.by_rule.map((r) => `<tr><td>${esc(r.rule)}</td><td class="num">${r.count}</td><td style="width:30%"><div class="bar" style="width:${(100 * r.count) / max}%"></div></td></tr>`).join("")}</table>` : '<p class="empty">None.</p>'}</div>
        <div class="card" style="margin-top:14px"><h2>Bundle files</h2>${b ? b.files.map((f) => `<details><summary class="mono">${esc(f.path)} <span class="muted">(${f.bytes} bytes)</span></summary><pre>${esc(f.contents)}</pre></details>`).join("") : '<p class="empty">No policy.</p>'}</div>
        <div class="card" style="margin-top:14px"><h2>Bundles and their targets</h2><table><tr><th>Policy</th><th>Version</th><th>Applies to</th><th>Candidate beside it</th></tr>${p.bundles.map((x) => `<tr class="bundle" data-policy="${esc(x.name)}"><td><b>${esc(x.name)}</b>${x.dry_run ? ' <span class="badge warn">dry run</span>' : ""}${x.records_input ? ' <span class="badge">records input</span>' : ""}</td><td class="mono">${esc(x.version.replace("sha256:", ""))}</td><td>${esc(typeof x.targets === "string" ? x.targets : x.targets.map(targetText).join("; "))}</td><td class="mono">${x.candidate ? esc(x.candidate.version.replace("sha256:", "")) : '<span class="muted">none</span>'}</td></tr>`).join("")}</table></div>
        <div class="card" style="margin-top:14px"><h2>Bundle per proxy</h2><table><tr><th>Workload</th><th>Policy</th><th>Version</th><th></th><th>Candidate disagreements</th></tr>${p.proxies.map((x) => `<tr class="proxy-policy" data-workload="${esc(x.workload)}"><td>${esc(x.workload)}</td><td>${esc(x.policy || "–")}</td><td class="mono">${esc(x.version || "–")}</td><td>${x.current ? '<span class="badge ok">current</span>' : '<span class="badge bad">differs</span>'}</td><td class="candidate">${candidateText(x.candidate)}</td></tr>`).join("")}</table></div>
      </div>
    </div>`;
}

// ---------- live tap ----------

async function tapView() {
  let workloads = [];
  try { workloads = (await api("/api/workloads")).workloads.map((w) => w.name); setStatus(true, "live tap"); }
  catch (e) { setStatus(false, "cannot reach the control plane (" + e.message + ")"); }
  const opt = (v, l) => `<option value="${esc(v)}">${esc(l || v || "any")}</option>`;
  view.innerHTML = `
    <div class="card">
      <h2>Live tap <span class="muted" style="font-weight:400">· request metadata as the proxies see it (no bodies)</span></h2>
      <form class="filters" id="tap-form">
        <label>Workload<select name="workload">${opt("", "all")}${workloads.map((w) => opt(w)).join("")}</select></label>
        <label>Direction<select name="direction">${opt("")}${opt("inbound")}${opt("outbound")}</select></label>
        <label>Policy<select name="policy">${opt("")}${opt("allow")}${opt("deny")}${opt("error")}</select></label>
        <label>Status<select name="status">${opt("")}${opt("2xx")}${opt("4xx")}${opt("5xx")}</select></label>
        <label>Service<input name="service" placeholder="orders" size="10"></label>
        <label>Path prefix<input name="path" placeholder="/checkout" size="12"></label>
        <button type="submit" id="tap-button">Start</button>
        <span class="muted" id="tap-count"></span>
      </form>
      <table id="tap-table"><thead><tr><th>Time</th><th>Proxy</th><th>Dir</th><th>Source → destination</th><th>Request</th><th class="num">Status</th><th class="num">Latency</th><th>Policy</th></tr></thead><tbody></tbody></table>
    </div>`;
  const form = document.getElementById("tap-form");
  const body = document.querySelector("#tap-table tbody");
  const button = document.getElementById("tap-button");
  const count = document.getElementById("tap-count");
  let seen = 0;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (tapSource) { tapSource.close(); tapSource = null; button.textContent = "Start"; button.className = ""; return; }
    const q = new URLSearchParams();
    new FormData(form).forEach((v, k) => { if (v) q.set(k, v); });
    tapSource = new EventSource("/api/tap?" + q.toString());
    button.textContent = "Stop"; button.className = "stop";
    body.innerHTML = ""; seen = 0;
    tapSource.addEventListener("ready", (e) => { count.textContent = "tapping " + JSON.parse(e.data).workloads.length + " proxies"; });
    tapSource.addEventListener("error", (e) => { if (e.data) count.textContent = "tap failed: " + JSON.parse(e.data).error; });
    tapSource.onmessage = (e) => {
      const r = JSON.parse(e.data);
      if (r.lagged) return;
      seen++;
      count.textContent = seen + " requests";
      const tr = document.createElement("tr");
      tr.innerHTML = `<td class="mono">${clock(r.time)}</td><td>${esc(r.workload)}</td><td>${esc(r.direction)}</td>
        <td>${esc(short(r.source))} → ${esc(short(r.destination))}</td><td class="mono">${esc(r.method)} ${esc(r.path)}</td>
        <td class="num ${r.status >= 500 ? "bad" : r.status >= 400 ? "warn" : ""}">${r.status}</td><td class="num">${ms(r.latency_ms)}</td>
        <td>${r.policy === "deny" ? '<span class="badge bad">deny</span>' : r.policy ? esc(r.policy) : ""}${r.error ? ` <span class="muted">${esc(r.error)}</span>` : ""}</td>`;
      body.insertBefore(tr, body.firstChild);
      while (body.children.length > 200) body.removeChild(body.lastChild);
    };
  });
}

// ---------- identity ----------

async function identityView() {
  const d = await api("/api/identity");
  const badge = { valid: "ok", expiring: "warn", expired: "bad", "not-yet-valid": "bad", unknown: "warn" };
  const ca = d.ca || { phase: "steady", roots: [], source: "" };
  const phaseText = {
    steady: "one root signs and is trusted",
    staged: "rotation: a new root is trusted beside the current one, which still signs",
    issuing: "rotation: the new root signs; the old one is trusted until every proxy has renewed",
  }[ca.phase] || ca.phase;
  const signerOf = (w) => w.signer || "–";
  const trusts = (w) => (w.trust_roots || []).join(", ") || "–";
  view.innerHTML = `
    <div class="card" id="ca" data-phase="${esc(ca.phase)}">
      <h2>Certificate authority <span class="muted" style="font-weight:400">· ${esc(ca.source)}</span></h2>
      <p><span class="badge ${ca.phase === "steady" ? "ok" : "warn"}">${esc(ca.phase)}</span> ${esc(phaseText)}</p>
      <p>Trusted roots (the signing one first): ${ca.roots.map((r) => `<span class="mono">${esc(r)}</span>`).join(", ") || "–"}</p>
      ${ca.phase !== "steady" ? `<p class="muted">Run <span class="mono">vigil ca rotate</span> to go on; it waits for every proxy at each step.</p>` : ""}
    </div>
    <div class="card">
      <h2>Workload certificates <span class="muted" style="font-weight:400">· trust domain ${esc(d.trust_domain)} · renewed at half-life</span></h2>
      <table><tr><th>Workload</th><th>SPIFFE ID</th><th>Serial</th><th>Issued</th><th>Expires</th><th>Renews</th><th class="num">Renewals</th><th>Signed by</th><th>Trusts</th><th>Status</th></tr>
      ${d.workloads.map((w) => {
        const c = w.cert;
        return `<tr class="cert" data-workload="${esc(w.workload)}"><td><a href="#workload/${encodeURIComponent(w.workload)}">${esc(w.workload)}</a></td>
          <td class="mono">${esc(c ? c.spiffe_id : w.expected_spiffe_id)}</td>
          <td class="mono">${c ? esc(c.serial.slice(0, 16)) : "–"}</td>
          <td>${c ? ago(c.not_before) : "–"}</td>
          <td>${c ? clock(c.not_after) + ` <span class="muted">(in ${duration(c.not_after - d.now)})</span>` : "–"}</td>
          <td>${c && c.renew_at ? (c.renew_at > d.now ? "in " + duration(c.renew_at - d.now) : "due") : "–"}</td>
          <td class="num">${c ? c.renewals : "–"}${c && c.renewal_failures ? ` <span class="bad">(${c.renewal_failures} failed)</span>` : ""}</td>
          <td class="mono signer">${esc(signerOf(w))}</td><td class="mono">${esc(trusts(w))}</td>
          <td><span class="badge ${badge[w.status] || "warn"}">${esc(w.status)}</span>${w.error ? `<div class="error">${esc(w.error)}</div>` : ""}${c && c.last_renewal_error ? `<div class="error">${esc(c.last_renewal_error)}</div>` : ""}</td></tr>`;
      }).join("")}</table>
    </div>`;
}

route();
