// tailsampler console: reads the admin API (/api/v1/...) and draws three pages. No libraries, no
// build step; charts are inline SVG. When the API answers 401 the page asks for a bearer token
// once and keeps it for this tab (sessionStorage), sending it as "Authorization: Bearer".
"use strict";

const TOKEN_KEY = "tailsampler.token";
const REFRESH_MS = 5000;
const COLOURS = ["#2f6fdd", "#2e9d62", "#d08a14", "#8a4fd3", "#d23f3f", "#1c9aa8", "#7a8699", "#c2527a"];
let refreshTimer = null;
let waitingForToken = null;

// --- the API ---------------------------------------------------------------------------------

class ApiError extends Error {}

function askForToken(message) {
  if (!waitingForToken) {
    waitingForToken = new Promise((resolve) => {
      const dialog = document.getElementById("login");
      const error = document.getElementById("login-error");
      error.hidden = !message;
      error.textContent = message || "";
      document.getElementById("token").value = "";
      document.getElementById("login-form").onsubmit = () => {
        sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
        waitingForToken = null;
        resolve();
      };
      dialog.showModal();
    });
  }
  return waitingForToken;
}

async function api(path, options = {}) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      await askForToken(token ? "That token was refused." : "");
      continue;
    }
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
    if (!response.ok) {
      const error = new ApiError((body && body.error) || `${path} answered ${response.status}`);
      error.status = response.status;
      error.body = body;
      throw error;
    }
    return body;
  }
}

// --- small helpers ---------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  for (const child of children.flat()) if (child) node.append(child instanceof Node ? child : document.createTextNode(child));
  return node;
}

const fmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });
function num(value) { return value === null || value === undefined ? "–" : fmt.format(value); }
function pct(value) { return value === null || value === undefined ? "–" : `${fmt.format(value)}%`; }
function bytes(value) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(value) >= 1024 && i < units.length - 1) { value /= 1024; i++; }
  return `${i ? value.toFixed(1) : Math.round(value)} ${units[i]}`;
}
function duration(ns) {
  if (ns < 1e6) return `${fmt.format(ns / 1e3)} µs`;
  if (ns < 1e9) return `${fmt.format(ns / 1e6)} ms`;
  return `${fmt.format(ns / 1e9)} s`;
}
function uptime(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600), m = Math.floor(seconds % 3600 / 60);
  return `${d ? d + "d " : ""}${d || h ? h + "h " : ""}${m}m ${Math.floor(seconds % 60)}s`;
}
function when(unixNano) { return new Date(Number(BigInt(unixNano) / 1000000n)).toISOString().replace("T", " ").slice(0, 23); }
function pill(text, kind) { return el("span", { class: `pill ${kind || text}` }, text); }
function table(node, head, rows) {
  node.replaceChildren(
    el("thead", {}, el("tr", {}, head.map(([label, cls]) => el("th", { class: cls }, label)))),
    el("tbody", {}, rows),
  );
}
function status(text, isError) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.className = isError ? "error" : "muted";
}
function mount(templateId) {
  const page = document.getElementById("page");
  page.replaceChildren(document.getElementById(templateId).content.cloneNode(true));
  return page;
}
function $(root, testid) { return root.querySelector(`[data-testid="${testid}"]`); }

// --- charts ----------------------------------------------------------------------------------

function regroup(starts, values, step, every) {
  // intervals of `step` seconds added up into intervals of `every` seconds, aligned on the clock
  const out = new Map();
  starts.forEach((start, i) => {
    const key = Math.floor(start / every) * every;
    out.set(key, (out.get(key) || 0) + values[i]);
  });
  return out;
}

function lineChart(node, starts, values, perSecondOf) {
  const width = 800, height = 180, pad = 28;
  const points = values.map((v, i) => [starts[i], v / perSecondOf]);
  const max = Math.max(1, ...points.map((p) => p[1]));
  const t0 = starts.length ? starts[0] : 0, t1 = starts.length ? starts[starts.length - 1] : 1;
  const x = (t) => pad + (width - pad - 4) * (t1 === t0 ? 1 : (t - t0) / (t1 - t0));
  const y = (v) => height - 18 - (height - 30) * (v / max);
  const path = points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
  const area = points.length ? `${path}L${x(t1)},${y(0)}L${x(t0)},${y(0)}Z` : "";
  node.replaceChildren(svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" },
    svg("line", { x1: pad, x2: width, y1: y(0), y2: y(0), stroke: "#dfe3ea" }),
    svg("text", { x: 2, y: 12, "font-size": 10, fill: "#677285" }, num(max)),
    svg("text", { x: 2, y: y(0), "font-size": 10, fill: "#677285" }, "0"),
    svg("path", { d: area, fill: "#2f6fdd22" }),
    svg("path", { d: path, fill: "none", stroke: "#2f6fdd", "stroke-width": 1.5 }),
    svg("title", {}, `peak ${num(max)} per second`),
  ));
}

function barChart(node, series, colours) {
  // series: {name: Map(start -> count)}, stacked
  const width = 800, height = 180, pad = 28;
  const names = Object.keys(series);
  const starts = [...new Set(names.flatMap((n) => [...series[n].keys()]))].sort((a, b) => a - b);
  const totals = starts.map((s) => names.reduce((sum, n) => sum + (series[n].get(s) || 0), 0));
  const max = Math.max(1, ...totals);
  const slot = (width - pad) / Math.max(1, starts.length);
  const bars = [];
  starts.forEach((start, i) => {
    let top = height - 18;
    names.forEach((name, j) => {
      const value = series[name].get(start) || 0;
      if (!value) return;
      const h = (height - 30) * value / max;
      top -= h;
      bars.push(svg("rect", { x: (pad + i * slot + 1).toFixed(1), y: top.toFixed(1), width: Math.max(1, slot - 2).toFixed(1), height: h.toFixed(1), fill: colours[name] },
        svg("title", {}, `${name}: ${value} at ${new Date(start * 1000).toLocaleTimeString()}`)));
    });
  });
  node.replaceChildren(
    svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" },
      svg("line", { x1: pad, x2: width, y1: height - 18, y2: height - 18, stroke: "#dfe3ea" }),
      svg("text", { x: 2, y: 12, "font-size": 10, fill: "#677285" }, num(max)),
      ...bars),
    el("div", { class: "legend" }, names.map((n) => el("span", {}, el("i", { style: `background:${colours[n]}` }), n))),
  );
}

function policyColours(names) {
  const out = {};
  [...names].sort().forEach((name, i) => { out[name] = COLOURS[i % COLOURS.length]; });
  return out;
}

// --- overview --------------------------------------------------------------------------------

const WINDOW_KEY = "tailsampler.overview.window";
const WINDOW_SECONDS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400 };

function perBar(seconds) { return seconds % 60 ? `per ${seconds} s` : seconds === 60 ? "per minute" : `per ${seconds / 60} minutes`; }

async function overview() {
  const page = mount("overview");
  const chosen = page.querySelector("#overview-window");
  chosen.value = sessionStorage.getItem(WINDOW_KEY) || "1h";
  const draw = async () => {
    const windowName = chosen.value;
    const [hour, recent] = await Promise.all([
      api(`/api/v1/stats?window=${windowName}&by=service,policy&series=true`),
      api("/api/v1/stats?window=5m"),
    ]);
    if (!page.isConnected) return;
    const view = hour.fleet || hour, now = (recent.fleet || recent).window, w = view.window;
    const buffer = view.buffer;
    const card = (label, value, sub, testid) =>
      el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value", "data-testid": testid }, value), sub ? el("div", { class: "sub" }, sub) : null);
    $(page, "cards").replaceChildren(
      card("Spans in, per second", num(now.rates.spans_received), "last 5 minutes", "rate-in"),
      card("Traces kept, per second", num(now.rates.traces_kept), `${pct(now.keep_percent)} of traces decided`, "rate-kept"),
      card("Storage reduction", pct(w.storage_reduction_percent), "of the spans decided, not kept", "reduction"),
      card("Bytes kept", bytes(w.bytes.kept), `of ${bytes(w.bytes.received)} received`, "bytes"),
      card("Buffer", `${num(buffer.traces)} traces`, `${pct(buffer.max_traces ? 100 * buffer.traces / buffer.max_traces : null)} of ${num(buffer.max_traces)}; ${bytes(buffer.bytes)} (${pct(buffer.max_bytes ? 100 * buffer.bytes / buffer.max_bytes : null)})`, "buffer"),
      card("Decision lag", now.decision_lag_seconds.mean === null ? "–" : `${num(now.decision_lag_seconds.mean * 1000)} ms`, now.decision_lag_seconds.p99 === null ? "mean" : `mean; 99% ≤ ${num(now.decision_lag_seconds.p99 * 1000)} ms`, "lag"),
      card(hour.fleet ? "Agents" : "Up", hour.fleet ? num(hour.fleet.agents) : uptime(hour.agent.uptime_seconds), hour.fleet ? "sharing one buffer" : hour.agent.name, "agents-count"),
    );
    const series = w.series;
    lineChart($(page, "chart-spans"), series.starts, series.spans_received, series.step_seconds);
    const colours = policyColours(Object.keys(series.kept_by_policy));
    // about 60 bars whatever the window, each a whole number of intervals
    const every = Math.max(series.step_seconds, Math.ceil(WINDOW_SECONDS[windowName] / 60 / series.step_seconds) * series.step_seconds);
    const grouped = (columns) => Object.fromEntries(Object.entries(columns)
      .filter(([, values]) => values.some((v) => v))
      .map(([name, values]) => [name, regroup(series.starts, values, series.step_seconds, every)]));
    page.querySelectorAll(".per").forEach((node) => { node.textContent = perBar(every); });
    barChart($(page, "chart-kept"), grouped(series.kept_by_policy), colours);
    barChart($(page, "chart-dropped"), grouped(series.dropped_by_policy), colours);
    const figures = [
      ["spans received", w.spans.received, "spans-received"], ["spans kept", w.spans.kept, "spans-kept"],
      ["traces kept", w.traces.kept, "traces-kept"], ["traces dropped", w.traces.dropped, "traces-dropped"],
      ["keep percent", pct(w.keep_percent), "keep-percent"],
      ["late spans (kept / dropped)", `${num(w.spans.late.kept || 0)} / ${num(w.spans.late.dropped || 0)}`, "late"],
      ["early decisions", Object.entries(w.traces.early).map(([r, n]) => `${r} ${n}`).join(", ") || "0", "early"],
      ["refused spans", Object.entries(w.spans.refused).map(([r, n]) => `${r} ${n}`).join(", ") || "0", "refused"],
    ];
    $(page, "hour").replaceChildren(...figures.map(([label, value, testid]) =>
      el("tr", {}, el("td", {}, label), el("td", { class: "num", "data-testid": testid }, typeof value === "number" ? num(value) : value))));
    const services = Object.entries(w.by_service || {}).sort((a, b) => b[1].traces - a[1].traces);
    table($(page, "services"), [["service"], ["traces", "num"], ["kept", "num"], ["keep rate"]],
      services.map(([name, s]) => el("tr", { "data-service": name }, el("td", {}, name), el("td", { class: "num" }, num(s.traces)),
        el("td", { class: "num" }, num(s.kept)),
        el("td", {}, el("span", { class: "bar", style: `width:${Math.max(1, s.keep_percent || 0)}px` }), " ", pct(s.keep_percent)))));
    const members = hour.fleet ? hour.fleet.members : [{ ...hour.agent, window: { rates: w.rates, keep_percent: w.keep_percent } }];
    $(page, "agents-title").textContent = hour.fleet ? `Agents of the fleet (${members.length})` : "Exporters";
    const rows = [];
    for (const member of [...members].sort((a, b) => a.admin.localeCompare(b.admin))) {
      const exporters = Object.entries(member.exporters || {});
      exporters.forEach(([name, state], i) => rows.push(el("tr", { "data-agent": member.admin },
        el("td", {}, i ? "" : member.name), el("td", {}, i ? "" : member.admin), el("td", {}, i ? "" : uptime(member.uptime_seconds)),
        el("td", { class: "num" }, i || !member.window ? "" : num(member.window.rates.spans_received)),
        el("td", { class: "num" }, i || !member.window ? "" : pct(member.window.keep_percent)),
        el("td", {}, name), el("td", {}, pill(state.circuit)), el("td", { class: "num" }, `${state.queue} / ${state.queue_size}`),
        el("td", { class: "muted" }, state.last_error || ""))));
    }
    table($(page, "agents"), [["agent"], ["admin"], ["up"], ["spans/s", "num"], ["keep %", "num"], ["exporter"], ["circuit"], ["queue", "num"], ["last error"]], rows);
    const overload = hour.overload || (hour.fleet && hour.fleet.overload);
    $(page, "overload-panel").hidden = !overload;
    if (overload) {
      $(page, "overload").replaceChildren(...Object.entries(overload).map(([k, v]) =>
        el("tr", {}, el("td", {}, k), el("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v)))));
    }
    status(`updated ${new Date().toLocaleTimeString()}`);
  };
  chosen.onchange = () => { sessionStorage.setItem(WINDOW_KEY, chosen.value); draw().catch(showError); };
  await draw();
  refreshTimer = setInterval(() => draw().catch(showError), REFRESH_MS);
}

// --- kept traces -----------------------------------------------------------------------------

function localToUnix(value) { return value ? String(new Date(value).getTime() / 1000) : ""; }

async function traces(params) {
  const page = mount("traces");
  const form = page.querySelector("#search");
  const [policies, stats] = await Promise.all([api("/api/v1/policies"), api("/api/v1/stats?window=24h&by=service")]);
  const select = form.elements.policy;
  for (const policy of policies.policies) select.append(el("option", { value: policy.name }, policy.name));
  const services = Object.keys(((stats.fleet || stats).window.by_service) || {});
  page.querySelector("#services-list").replaceChildren(...services.map((s) => el("option", { value: s })));
  for (const [key, value] of params) {
    const field = form.elements[key];
    if (!field) continue;
    if (field.type === "checkbox") field.checked = value === "true";
    else if (field.type === "datetime-local") field.value = new Date(Number(value) * 1000 - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 19);
    else field.value = value;
  }
  form.onsubmit = (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const field of form.elements) {
      if (!field.name) continue;
      const value = field.type === "checkbox" ? (field.checked ? "true" : "") : field.type === "datetime-local" ? localToUnix(field.value) : field.value.trim();
      if (value) query.set(field.name, value);
    }
    location.hash = `#/traces?${query}`;
  };
  if (!policies.trace_store) {
    $(page, "result-count").textContent = "No sqlite exporter is configured: kept traces are not stored here.";
    return;
  }
  const query = new URLSearchParams(params);
  if (!query.has("limit")) query.set("limit", "50");
  const found = (await api(`/api/v1/traces?${query}`)).traces;
  $(page, "result-count").textContent = `${found.length} kept trace(s), newest first`;
  table($(page, "results"), [["trace"], ["start (UTC)"], ["duration", "num"], ["spans", "num"], [""], ["kept by"], ["root"]],
    found.map((t) => el("tr", { "data-trace": t.trace_id },
      el("td", {}, el("a", { href: `#/trace/${t.trace_id}`, class: "mono" }, t.trace_id)),
      el("td", {}, when(t.start_unix_nano)), el("td", { class: "num" }, duration(t.duration_ns)),
      el("td", { class: "num" }, t.span_count), el("td", {}, t.error ? pill("ERROR", "error") : ""),
      el("td", {}, t.policy || "–"),
      el("td", {}, t.root_name === null ? el("span", { class: "muted" }, "(root not received)") : `${t.root_service || "?"}: ${t.root_name}`))));
  status(`updated ${new Date().toLocaleTimeString()}`);
}

// --- one trace -------------------------------------------------------------------------------

function anyValue(value) {
  if (!value) return null;
  if ("stringValue" in value) return value.stringValue;
  if ("intValue" in value) return value.intValue;
  if ("doubleValue" in value) return value.doubleValue;
  if ("boolValue" in value) return value.boolValue;
  if ("bytesValue" in value) return value.bytesValue;
  if ("arrayValue" in value) return (value.arrayValue.values || []).map(anyValue);
  if ("kvlistValue" in value) return Object.fromEntries((value.kvlistValue.values || []).map((kv) => [kv.key, anyValue(kv.value)]));
  return null;
}

function attributes(list) { return (list || []).map((kv) => [kv.key, anyValue(kv.value)]); }

function flatten(otlp) {
  const spans = [];
  for (const rs of otlp.resourceSpans || []) {
    const resource = attributes(rs.resource && rs.resource.attributes);
    const service = (resource.find(([k]) => k === "service.name") || [null, "?"])[1];
    for (const ss of rs.scopeSpans || []) {
      for (const span of ss.spans || []) {
        spans.push({ span, service, resource, scope: ss.scope || {}, start: BigInt(span.startTimeUnixNano || 0), end: BigInt(span.endTimeUnixNano || 0) });
      }
    }
  }
  return spans;
}

function ordered(spans) {
  // depth-first, children under their parent in start order; spans whose parent never arrived at the top
  const ids = new Set(spans.map((s) => s.span.spanId));
  const children = new Map();
  const tops = [];
  for (const s of spans) {
    const parent = s.span.parentSpanId;
    if (parent && ids.has(parent)) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(s);
    } else tops.push(s);
  }
  const byStart = (a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0);
  const out = [], seen = new Set();
  const visit = (s, depth) => {
    if (seen.has(s)) return;
    seen.add(s);
    out.push({ ...s, depth, orphan: depth === 0 && !!s.span.parentSpanId });
    for (const child of (children.get(s.span.spanId) || []).sort(byStart)) visit(child, depth + 1);
  };
  tops.sort(byStart).forEach((s) => visit(s, 0));
  spans.filter((s) => !seen.has(s)).forEach((s) => out.push({ ...s, depth: 0, orphan: true }));  // a parent cycle
  return out;
}

const KINDS = ["unspecified", "internal", "server", "client", "producer", "consumer"];

function showSpan(page, row, item) {
  page.querySelectorAll(".span-row.selected").forEach((r) => r.classList.remove("selected"));
  row.classList.add("selected");
  const s = item.span;
  const detail = $(page, "span-detail");
  detail.hidden = false;
  $(page, "span-title").textContent = `${item.service}: ${s.name}`;
  const rows = [
    ["span ID", s.spanId], ["parent span ID", s.parentSpanId || "(root)"], ["kind", KINDS[s.kind || 0]],
    ["duration", duration(Number(item.end - item.start))],
    ["status", `${["UNSET", "OK", "ERROR"][(s.status && s.status.code) || 0]}${s.status && s.status.message ? `: ${s.status.message}` : ""}`],
    ...attributes(s.attributes).map(([k, v]) => [k, v]),
    ...(s.events || []).map((e) => [`event ${e.name}`, JSON.stringify(Object.fromEntries(attributes(e.attributes)))]),
    ...item.resource.map(([k, v]) => [`resource ${k}`, v]),
    ["scope", `${item.scope.name || ""} ${item.scope.version || ""}`.trim()],
  ];
  $(page, "attributes").replaceChildren(...rows.map(([k, v]) =>
    el("tr", {}, el("td", { class: "mono" }, k), el("td", { class: "mono" }, typeof v === "object" ? JSON.stringify(v) : String(v)))));
}

function tookAt(left, width) {
  // a bar's duration after it, else before it, else inside it
  if (left + width <= 85) return `left:calc(${(left + width).toFixed(3)}% + 4px)`;
  if (left >= 15) return `right:calc(${(100 - left).toFixed(3)}% + 4px)`;
  return `left:calc(${left.toFixed(3)}% + 4px);color:#fff`;
}

async function trace(traceId) {
  const page = mount("trace");
  const answer = await api(`/api/v1/traces/${encodeURIComponent(traceId)}`);
  const t = answer.trace;
  $(page, "trace-title").replaceChildren("Trace ", el("span", { class: "mono" }, t.trace_id), " ", t.error ? pill("ERROR", "error") : "");
  $(page, "trace-facts").textContent = `${when(t.start_unix_nano)} UTC · ${duration(t.duration_ns)} · ${t.span_count} spans · root ${t.root_name === null ? "not received" : `${t.root_service}: ${t.root_name}`}`;
  const votes = Object.entries(t.votes || {});
  table($(page, "votes"), [["policy"], ["vote"], [""]],
    votes.length ? votes.map(([name, vote]) => el("tr", { "data-policy": name }, el("td", {}, name), el("td", {}, pill(vote)),
      el("td", {}, name === t.policy ? el("strong", { "data-testid": "kept-by" }, "kept it") : "")))
      : [el("tr", {}, el("td", { colspan: 3 }, `kept by ${t.policy || "–"} (votes were not stored for this trace)`))]);
  const spans = ordered(flatten(answer.otlp));
  const t0 = spans.reduce((m, s) => (s.start < m ? s.start : m), spans.length ? spans[0].start : 0n);
  const t1 = spans.reduce((m, s) => (s.end > m ? s.end : m), t0);
  const total = Number(t1 - t0) || 1;
  const wf = $(page, "waterfall");
  wf.replaceChildren(el("div", { class: "axis" }, ...[0, 0.25, 0.5, 0.75, 1].map((f) => el("span", {}, duration(total * f)))));
  for (const item of spans) {
    const s = item.span;
    const error = s.status && s.status.code === 2;
    const left = 100 * Number(item.start - t0) / total, width = 100 * Number(item.end - item.start) / total;
    const row = el("div", { class: `span-row${error ? " error" : ""}`, "data-span": s.spanId, title: s.name },
      el("div", { class: "name", style: `padding-left:${item.depth * 14}px` },
        el("span", { class: "service" }, `${item.service}: `), s.name, item.orphan ? el("span", { class: "orphan" }, " (parent not received)") : null),
      el("div", { class: "track" },
        el("div", { class: "bar", style: `left:${left.toFixed(3)}%;width:${width.toFixed(3)}%` }),
        el("span", { class: "took", style: tookAt(left, width) }, duration(Number(item.end - item.start)))));
    row.addEventListener("click", () => showSpan(page, row, item));
    wf.append(row);
  }
  status(`${spans.length} spans`);
}

// --- policies --------------------------------------------------------------------------------

function asYaml(config) {
  // JSON objects are YAML flow mappings: one policy per line, as a config would list them
  const lines = [`sample_on_first_match: ${config.sample_on_first_match}`, "policies:"];
  for (const policy of config.policies) lines.push(`  - ${JSON.stringify(policy)}`);
  return lines.join("\n") + "\n";
}

async function policiesPage() {
  const page = mount("policies");
  const config = await api("/api/v1/policies");
  $(page, "policy-mode").textContent = config.sample_on_first_match
    ? "sample_on_first_match: evaluation stops at the first policy that samples."
    : "Dropping policies are asked first; any drop vote drops a trace, otherwise any sampled vote keeps it.";
  $(page, "policy-list").replaceChildren(...config.policies.map((p) => {
    const { name, type, ...settings } = p;
    return el("li", { "data-policy": name }, el("strong", {}, name), " ", el("span", { class: "pill" }, type),
      el("code", {}, JSON.stringify(settings[type] !== undefined ? settings[type] : settings)));
  }));
  const votesWindow = page.querySelector("#votes-window");
  const drawVotes = async () => {
    const stats = await api(`/api/v1/stats?window=${votesWindow.value}&by=policy`);
    const byPolicy = (stats.fleet || stats).window.by_policy || {};
    table($(page, "policy-votes"), [["policy"], ["kept", "num"], ["dropped", "num"], ["sampled", "num"], ["not sampled", "num"], ["dropped votes", "num"], ["errors", "num"]],
      config.policies.map((p) => {
        const c = byPolicy[p.name] || { kept: 0, dropped: 0, votes: {} };
        return el("tr", { "data-policy": p.name }, el("td", {}, p.name), el("td", { class: "num" }, num(c.kept)), el("td", { class: "num" }, num(c.dropped)),
          el("td", { class: "num" }, num(c.votes.sampled || 0)), el("td", { class: "num" }, num(c.votes.not_sampled || 0)),
          el("td", { class: "num" }, num(c.votes.dropped || 0)), el("td", { class: "num" }, num(c.votes.error || 0)));
      }));
  };
  votesWindow.onchange = () => drawVotes().catch(showError);
  await drawVotes();
  const form = page.querySelector("#what-if");
  form.elements.policies.value = asYaml(config);
  form.onsubmit = async (event) => {
    event.preventDefault();
    const problems = $(page, "what-if-problems"), result = $(page, "what-if-result");
    problems.hidden = true;
    result.replaceChildren(el("p", { class: "muted" }, "running…"));
    try {
      const answer = await api("/api/v1/policies/what-if", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ policies: form.elements.policies.value, traces: Number(form.elements.traces.value) }),
      });
      const rows = Object.entries(answer.by_policy).map(([name, c]) =>
        el("tr", {}, el("td", {}, name), el("td", { class: "num" }, num(c.kept)), el("td", { class: "num" }, num(c.dropped))));
      const lost = answer.results.filter((r) => r.decision === "drop");
      const summary = el("table", { "data-testid": "what-if-summary" });
      table(summary, [["policy"], ["would keep", "num"], ["would drop", "num"]], rows);
      const changes = el("table", { "data-testid": "what-if-changes" });
      table(changes, [["trace"], ["kept by"], ["now"], ["votes"]], answer.results.map((r) =>
        el("tr", { "data-trace": r.trace_id }, el("td", {}, el("a", { href: `#/trace/${r.trace_id}`, class: "mono" }, r.trace_id.slice(0, 16) + "…")),
          el("td", {}, r.kept_by || "–"), el("td", {}, pill(r.decision), " ", r.policy || ""),
          el("td", { class: "muted" }, Object.entries(r.votes).map(([n, v]) => `${n}=${v}`).join(" ")))));
      result.replaceChildren(
        el("p", { "data-testid": "what-if-headline" }, `Of the last ${answer.traces} kept traces, the edited list keeps ${answer.kept} and drops ${answer.dropped}.`),
        summary, lost.length ? el("h3", {}, "Every trace, newest first") : null, changes);
    } catch (error) {
      if (!(error instanceof ApiError) || !error.body) throw error;
      result.replaceChildren();
      problems.hidden = false;
      const list = error.body.problems || [{ path: "", message: error.message }];
      problems.replaceChildren(...list.map((p) => el("li", {}, p.path ? el("code", {}, p.path) : null, p.path ? ": " : "", p.message)));
    }
  };
}

// --- routing ---------------------------------------------------------------------------------

function showError(error) {
  console.error(error);
  status(error.message || String(error), true);
}

async function route() {
  clearInterval(refreshTimer);
  status("");
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  const page = parts[0] || "overview";
  document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (page === "trace" ? "traces" : page)));
  try {
    if (page === "traces") await traces(new URLSearchParams(query));
    else if (page === "trace") await trace(parts[1] || "");
    else if (page === "policies") await policiesPage();
    else await overview();
  } catch (error) {
    showError(error);
  }
}

window.addEventListener("hashchange", route);
route();
