/* kaudit dashboard: a single-page app in plain JS (no build step).
 * Every view lives in the URL hash (#/view?params), so any view can be shared; every view shows the
 * query-language text that produced it (click it to open it in the query box).
 * Data: /api/dashboard/* and /api/rbac (pipeline/web/routes.py), /api/query (the query API). */
"use strict";

const GLOBAL_KEYS = ["since", "from", "to", "cluster", "refresh"];
const FILTER_KEYS = ["verb", "responsestatus_code", "username", "impersonated_username", "objectref_resource",
  "objectref_subresource", "objectref_namespace", "objectref_name", "objectref_apigroup", "sourceip", "useragent",
  "auditid", "stage", "decision", "effective_user", "alert"];
const VERB_COLORS = {
  create: "#2e7d32", update: "#1565c0", patch: "#7b1fa2", delete: "#c62828", deletecollection: "#8e0000",
};
const QUIET = ["#b0bec5", "#90a4ae", "#cfd8dc", "#a1b5c8", "#bcc7d1", "#8da2b5", "#d5dde4", "#7f95a8", "#c3ccd5", "#9fb0bf"];
const charts = {};
let refreshTimer = null;
let clusterList = [];
let token = sessionStorage.getItem("kaudit-token") || "";

/* ---------- small helpers ---------- */
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "style") e.style.cssText = v; // CSSOM: the CSP (style-src 'self') refuses style attributes
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}
const fmtInt = (n) => Number(n).toLocaleString("en-US");
function fmtTime(us) {
  if (!us) return "";
  return new Date(Number(us) / 1000).toISOString().replace("T", " ").replace(/\.(\d{3})Z$/, ".$1");
}
function fmtBucket(ms, stepS) {
  const iso = new Date(ms).toISOString();
  if (stepS >= 86400) return iso.slice(0, 10);
  if (stepS >= 3600) return iso.slice(5, 13).replace("T", " ") + "h";
  return iso.slice(5, 16).replace("T", " ");
}
function codeClass(code) {
  code = Number(code);
  return code >= 500 ? "code-5xx" : code >= 400 ? "code-4xx" : "";
}
function setStatus(text, isError) {
  const s = document.getElementById("status");
  s.textContent = text || "";
  s.className = isError ? "error" : "";
}

/* ---------- routing: #/view?params ---------- */
function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const [view, qs] = h.split("?");
  return { view: view || "dashboard", params: new URLSearchParams(qs || "") };
}
function globals(params) {
  const g = new URLSearchParams();
  for (const k of GLOBAL_KEYS) if (params.get(k)) g.set(k, params.get(k));
  if (!g.get("since") && !g.get("from")) g.set("since", "24h");
  return g;
}
function go(view, params) {
  const p = new URLSearchParams(params);
  for (const [k, v] of [...p.entries()]) if (v === "" || v === null || v === undefined) p.delete(k);
  location.hash = "#/" + view + (p.toString() ? "?" + p.toString() : "");
}
function withGlobals(extra) {
  const p = globals(route().params);
  for (const [k, v] of Object.entries(extra || {})) if (v !== undefined && v !== null && v !== "") p.set(k, v); else p.delete(k);
  return p;
}
function drill(filters, range) {
  const p = withGlobals(filters);
  if (range) { p.delete("since"); p.set("from", range.from); p.set("to", range.to); }
  go("events", p);
}
function openQuery(q) { go("query", withGlobals({ q })); }
function openEvent(auditid, cluster) { go("event", withGlobals({ auditid, cluster })); }
function openRbac(user, cluster) { go("rbac", withGlobals({ user, cluster })); }

/* ---------- API ---------- */
async function api(path, params) {
  const url = path + (params && params.toString() ? "?" + params.toString() : "");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(url, { headers, credentials: "same-origin" });
  const text = await r.text();
  let body;
  try { body = JSON.parse(text); } catch (e) { body = { error: text.slice(0, 300) || r.statusText }; }
  if (!r.ok) {
    const err = new Error(body.error || r.status + " " + r.statusText);
    err.body = body; err.status = r.status;
    throw err;
  }
  return body;
}
function apiParams(params, keys) {
  const p = new URLSearchParams();
  for (const k of keys) if (params.get(k)) p.set(k, params.get(k));
  return p;
}

/* ---------- pieces ---------- */
function qlLink(text, title) {
  if (!text) return null;
  const link = el("a", { class: "ql", title: title || "query language: click to open in the query box", text,
    dataset: { ql: text }, onclick: (ev) => { ev.preventDefault(); openQuery(text); } });
  const save = el("a", { class: "ql-save", title: "save as a saved search (kaudit search list)", text: "save",
    onclick: (ev) => { ev.preventDefault(); saveSearch(text); } });
  return el("span", { class: "ql-wrap" }, link, " ", save);
}
/* POST /api/searches (pipeline/searches/api.py): the query text, named by the user, with the current range */
async function saveSearch(text) {
  const suggested = text.replace(/[^A-Za-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60).toLowerCase() || "search";
  const name = window.prompt("Save this query as (letters, digits, . _ -):", suggested);
  if (!name) return;
  const g = globals(route().params);
  const body = { name, query: text, since: g.get("since") || "24h",
    clusters: (g.get("cluster") || "").split(",").filter(Boolean) };
  const headers = { "Content-Type": "application/json", ...(token ? { Authorization: "Bearer " + token } : {}) };
  try {
    const r = await fetch("/api/searches", { method: "POST", headers, credentials: "same-origin", body: JSON.stringify(body) });
    const out = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(out.error || r.statusText);
    setStatus(`saved search "${out.name}" (kaudit search run ${out.name})`);
  } catch (e) { setStatus("save failed: " + e.message, true); }
}
function card(title, sub, ql, body, opts) {
  return el("section", { class: "card" + (opts && opts.wide ? " wide" : ""), dataset: { widget: opts && opts.id } },
    el("h2", { text: title }), sub ? el("div", { class: "sub", text: sub }) : null,
    ql ? el("div", { class: "sub" }, qlLink(ql)) : null, body);
}
function errBox(e) { return el("div", { class: "err", text: "error: " + (e.error || e.message || e) }); }

function topTable(items, label, onPick, opts) {
  if (!items || !items.length) return el("div", { class: "empty", text: "no data in this range" });
  const max = Math.max(...items.map((i) => i.count));
  return el("table", { dataset: { table: opts.id } },
    el("thead", {}, el("tr", {}, el("th", { text: label }), el("th", { class: "num", text: "events" }))),
    el("tbody", {}, items.map((i) => el("tr", { class: "click", dataset: { key: i.key, count: i.count },
      title: "show these events", onclick: () => onPick(i.key) },
    el("td", { class: "trunc" }, i.key === "" ? el("span", { class: "muted", text: "(empty)" }) : String(i.key),
      el("div", { class: "bar", style: `width:${(100 * i.count / max).toFixed(1)}%` })),
    el("td", { class: "num", text: fmtInt(i.count) })))));
}

function seriesChart(id, data, stepS, colorOf, onPick) {
  if (charts[id]) { charts[id].destroy(); delete charts[id]; }
  const canvas = el("canvas", { id: "chart-" + id, "aria-label": id + " chart" });
  const box = el("div", { class: "chart-box" }, canvas);
  const keys = Object.keys(data.series || {});
  if (!keys.length) return el("div", { class: "empty", text: "no events in this range" });
  const datasets = keys.map((k, i) => ({ label: k, data: data.series[k], backgroundColor: colorOf(k, i), borderWidth: 0, stack: "s" }));
  requestAnimationFrame(() => {
    charts[id] = new Chart(canvas, {
      type: "bar",
      data: { labels: data.times.map((t) => fmtBucket(t, stepS)), datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        interaction: { mode: "nearest", intersect: true },
        scales: { x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true } }, y: { stacked: true, beginAtZero: true } },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 10 } } },
        onClick: (ev, els) => {
          if (!els.length) return;
          const { datasetIndex, index } = els[0];
          const t = data.times[index];
          onPick(datasets[datasetIndex].label, { from: new Date(t).toISOString(), to: new Date(t + stepS * 1000).toISOString() });
        },
      },
    });
  });
  return box;
}

function totalsTable(id, totals, label, colorOf, decorate, onPick) {
  const keys = Object.keys(totals || {});
  const sum = keys.reduce((a, k) => a + totals[k], 0);
  return el("table", { dataset: { table: id } },
    el("thead", {}, el("tr", {}, el("th", { text: label }), el("th", { class: "num", text: "events" }))),
    el("tbody", {}, keys.map((k, i) => el("tr", { class: "click", dataset: { key: k, count: totals[k] }, title: "show these events", onclick: () => onPick(k) },
      el("td", {}, el("span", { class: "swatch", style: "background:" + colorOf(k, i) }), el("span", { class: decorate(k), text: k })),
      el("td", { class: "num", text: fmtInt(totals[k]) })))),
    el("tfoot", {}, el("tr", {}, el("th", { text: "total" }), el("th", { class: "num", dataset: { total: sum }, text: fmtInt(sum) }))));
}

/* ---------- views ---------- */
async function viewDashboard(params, main) {
  const g = globals(params);
  const data = await api("/api/dashboard/widgets", apiParams(g, ["since", "from", "to", "cluster"]));
  const w = data.widgets;
  const stepS = data.range.step_s;
  const grid = el("div", { class: "grid" });
  main.replaceChildren(grid);
  if (data.elsewhere) {  // the range is empty but events are stored: say where, offer that range
    const e = data.elsewhere;
    main.prepend(el("div", { class: "notice", dataset: { notice: "elsewhere" } },
      el("span", { text: `No events in this range. ${fmtInt(e.events)} stored events lie between ${e.from} and ${e.to}. ` }),
      el("button", { text: "show that range", onclick: () => setGlobal({ since: "", from: e.from, to: e.to }) })));
  }

  // Actions: events per verb over time; mutating verbs highlighted
  const verbColor = (k, i) => VERB_COLORS[k] || QUIET[i % QUIET.length];
  const pickVerb = (verb, range) => drill({ verb }, range);
  grid.append(card("Actions", `events per verb, per ${fmtStep(stepS)}; create/update/patch/delete highlighted — click a bar or a verb for its events`,
    w.actions.query, w.actions.error ? errBox(w.actions) : el("div", { class: "chart-row" },
      seriesChart("actions", w.actions, stepS, verbColor, pickVerb),
      totalsTable("actions", w.actions.totals, "verb", verbColor, (k) => (VERB_COLORS[k] ? "hl" : ""), (k) => pickVerb(k))),
    { wide: true, id: "actions" }));

  // Status codes over time + totals; >= 400 in red
  const codeColors = {};
  const codeColor = (k, i) => codeColors[k] || (codeColors[k] = Number(k) >= 500 ? "#6a1b9a" : Number(k) >= 400
    ? ["#c62828", "#e53935", "#ef6c00", "#f9a825", "#d84315"][Object.keys(codeColors).length % 5]
    : ["#43a047", "#66bb6a", "#26a69a", "#90a4ae", "#80cbc4"][i % 5]);
  const pickCode = (code, range) => drill({ responsestatus_code: code }, range);
  grid.append(card("Status Code Stats", `responses per status code, per ${fmtStep(stepS)} — click a code (e.g. 403) for its events`,
    w.status.query, w.status.error ? errBox(w.status) : el("div", { class: "chart-row" },
      seriesChart("status", w.status, stepS, codeColor, pickCode),
      totalsTable("status", w.status.totals, "code", codeColor, codeClass, (k) => pickCode(k))),
    { wide: true, id: "status" }));

  const top = (id, title, key, label, filter) => card(title, null, w[key].query,
    w[key].error ? errBox(w[key]) : topTable(w[key].items, label, (v) => drill({ [filter]: v }), { id }), { id });
  grid.append(top("users", "Top users", "users", "user", "username"));
  grid.append(top("resources", "Top resources", "resources", "resource", "objectref_resource"));
  grid.append(top("sourceips", "Top source IPs", "sourceips", "source IP", "sourceip"));
  grid.append(top("useragents", "Top user agents", "useragents", "user agent", "useragent"));

  // 401 / 403 by user, with the RBAC explanation one click away
  const d = w.denied;
  grid.append(card("Forbidden (403) and unauthenticated (401) by user", "click a row for its events; “why?” explains a 403 and suggests RBAC",
    d.query, d.error ? errBox(d) : !d.rows.length ? el("div", { class: "empty", text: "no 401 or 403 in this range" })
      : el("table", { dataset: { table: "denied" } },
        el("thead", {}, el("tr", {}, el("th", { text: "code" }), el("th", { text: "user" }), el("th", { class: "num", text: "events" }), el("th", { text: "" }))),
        el("tbody", {}, d.rows.map((r) => {
          const eff = r.impersonated_username || r.username;
          return el("tr", { class: "click", title: "last seen " + fmtTime(r.last_us).slice(0, 19) + " UTC", dataset: { code: r.code, user: r.username, as: r.impersonated_username, count: r.n },
            onclick: () => drill({ responsestatus_code: r.code, username: r.username, impersonated_username: r.impersonated_username }) },
          el("td", { class: codeClass(r.code), text: r.code }),
          el("td", { class: "trunc", title: eff }, r.username || el("span", { class: "muted", text: "(anonymous)" }),
            r.impersonated_username ? el("span", { class: "muted", text: " as " }) : null, r.impersonated_username || null),
          el("td", { class: "num", text: fmtInt(r.n) }),
          el("td", {}, Number(r.code) === 403 && eff ? el("a", { class: "link", text: "why?", dataset: { rbac: eff },
            onclick: (ev) => { ev.stopPropagation(); openRbac(eff, params.get("cluster")); } }) : null));
        }))), { id: "denied" }));

  // Alerts
  grid.append(card("Alerts by rule and severity", "recent alerts below: click one for its events", null, alertsBody(w.alerts_by_rule, w.recent_alerts), { id: "alerts" }));

  const ms = Object.values(w).reduce((m, x) => Math.max(m, x.elapsed_ms || 0), 0);
  setStatus(`${data.range.label} (${fmtTime(data.range.from_us).slice(0, 16)} .. ${fmtTime(data.range.to_us).slice(0, 16)} UTC) · slowest widget ${ms} ms · updated ${new Date().toISOString().slice(11, 19)} UTC`);
}
function alertsBody(a, ra) {
  if (a.error) return errBox(a);
  if (!a.rows.length) return el("div", { class: "empty", text: "no alerts in this range" });
  const byRule = el("table", { dataset: { table: "alerts_by_rule" } },
    el("thead", {}, el("tr", {}, el("th", { text: "severity" }), el("th", { text: "rule" }), el("th", { class: "num", text: "alerts" }), el("th", { text: "last" }))),
    el("tbody", {}, a.rows.map((r) => el("tr", { dataset: { key: r.rule_id, severity: r.severity, count: r.n } },
      el("td", {}, el("span", { class: "sev-" + r.severity, text: r.severity })),
      el("td", { title: r.title }, r.rule_id, el("div", { class: "muted", text: r.title })),
      el("td", { class: "num", text: fmtInt(r.n) }),
      el("td", { class: "muted mono", style: "white-space:nowrap", text: fmtTime(r.last_us).slice(0, 10) })))));
  const recent = ra.error ? errBox(ra) : el("table", { dataset: { table: "recent_alerts" } },
    el("tbody", {}, ra.rows.map((r) => el("tr", { class: "click", dataset: { alert: r.alert_id }, onclick: () => drill({ alert: r.alert_id }) },
      el("td", {}, el("span", { class: "sev-" + r.severity, text: r.severity })),
      el("td", { class: "trunc", title: r.title }, r.rule_id,
        el("div", { class: "muted trunc", text: [r.username, r.verb, r.objectref_resource, r.objectref_namespace].filter(Boolean).join(" · ") }),
        el("div", { class: "muted mono", text: fmtTime(r.ts_us).slice(0, 19) + " UTC" }))))));
  return el("div", {}, byRule, el("h2", { text: "Recent alerts", style: "margin-top:10px;font-size:14px" }), recent);
}
function fmtStep(s) { return s % 86400 === 0 ? s / 86400 + " d" : s % 3600 === 0 ? s / 3600 + " h" : s / 60 + " min"; }

const EVENT_COLS = [
  ["when", (r) => el("span", { class: "mono", text: fmtTime(r.ts_us) })],
  ["cluster", (r) => r.cluster],
  ["who", (r) => [r.username, r.impersonated_username ? el("div", { class: "muted", text: "as " + r.impersonated_username }) : null]],
  ["what", (r) => [el("b", { text: r.verb }), " ", [r.objectref_apigroup, r.objectref_resource].filter(Boolean).join("/") + (r.objectref_subresource ? "/" + r.objectref_subresource : ""),
    r.objectref_name ? el("div", { class: "muted trunc", text: r.objectref_name }) : null]],
  ["namespace", (r) => r.objectref_namespace],
  ["outcome", (r) => [el("span", { class: codeClass(r.responsestatus_code), text: r.responsestatus_code || "—" }), r.responsestatus_reason ? el("div", { class: "muted", text: r.responsestatus_reason }) : null]],
  ["where", (r) => [(r.sourceips || []).join(", "), el("div", { class: "muted trunc", title: r.useragent, text: r.useragent })]],
  ["stage", (r) => el("span", { class: "muted", text: r.stage })],
];

async function viewEvents(params, main) {
  const p = apiParams(params, [...GLOBAL_KEYS, ...FILTER_KEYS, "limit", "offset"]);
  if (!p.get("since") && !p.get("from") && !p.get("alert")) p.set("since", "24h");
  const data = await api("/api/dashboard/events", p);
  const chips = Object.entries(data.filters).map(([k, v]) => el("span", { class: "chip", text: `${k} = ${v}` }));
  const offset = data.offset, limit = data.limit;
  const page = (o) => go("events", (() => { const q = new URLSearchParams(params); q.set("offset", o); return q; })());
  main.replaceChildren(el("section", { class: "card wide", dataset: { widget: "events" } },
    el("h2", { text: data.alert ? `Events of alert ${data.alert.rule_id}` : "Events" }),
    data.alert ? el("div", { class: "sub" }, el("span", { class: "sev-" + data.alert.severity, text: data.alert.severity }), " ", data.alert.title) : null,
    el("div", { class: "chips" }, chips, el("span", { class: "muted", text: data.range.label + (data.clusters.length ? " · " + data.clusters.join(", ") : "") })),
    el("div", { class: "sub" }, qlLink(data.query || "(all events)")),
    el("div", { class: "sub", id: "events-total", dataset: { total: data.total } },
      `${fmtInt(data.total)} events` + (data.total ? ` · showing ${offset + 1}–${offset + data.rows.length}, newest first · click one for its full record` : "")),
    data.filters.responsestatus_code === "403" ? el("div", { class: "sub" }, el("a", { class: "link", text: "Explain these 403s and suggest RBAC →",
      onclick: () => { const u = data.filters.impersonated_username || data.filters.username || (data.rows[0] && (data.rows[0].impersonated_username || data.rows[0].username)); if (u) openRbac(u, params.get("cluster")); } })) : null,
    !data.rows.length ? el("div", { class: "empty", text: "no matching events" }) : el("table", { dataset: { table: "events" } },
      el("thead", {}, el("tr", {}, EVENT_COLS.map(([h]) => el("th", { text: h })))),
      el("tbody", {}, data.rows.map((r) => el("tr", { class: "click", dataset: { auditid: r.auditid, code: r.responsestatus_code, verb: r.verb }, onclick: () => openEvent(r.auditid, r.cluster) },
        EVENT_COLS.map(([, f]) => el("td", {}, f(r))))))),
    el("div", { class: "pager" },
      el("button", { type: "button", disabled: offset <= 0, onclick: () => page(Math.max(0, offset - limit)), text: "← newer" }),
      el("button", { type: "button", disabled: offset + data.rows.length >= data.total, onclick: () => page(offset + limit), text: "older →" }))));
  setStatus(`${fmtInt(data.total)} events · ${data.range.label}`);
}

async function viewEvent(params, main) {
  const data = await api("/api/dashboard/event", apiParams(params, ["auditid", "cluster"]));
  const last = data.records[data.records.length - 1];
  const eff = last.impersonated_username || last.username;
  const kv = (k, v) => [el("div", { text: k }), el("div", {}, v)];
  main.replaceChildren(el("section", { class: "card wide", dataset: { widget: "event" } },
    el("h2", { text: `${last.verb} ${last.objectref_resource || last.request_uri} — ${last.responsestatus_code || "no response"}` }),
    el("div", { class: "sub" }, qlLink(data.query)),
    el("div", { class: "kv" },
      kv("who", [last.username, last.impersonated_username ? " as " + last.impersonated_username : "", last.usergroups && last.usergroups.length ? el("span", { class: "muted", text: "  (" + last.usergroups.join(", ") + ")" }) : null]),
      kv("what", `${last.verb} ${[last.objectref_apigroup, last.objectref_resource, last.objectref_subresource].filter(Boolean).join("/")} ${last.objectref_namespace ? "in " + last.objectref_namespace : ""} ${last.objectref_name || ""}`),
      kv("request URI", el("span", { class: "mono", text: last.request_uri })),
      kv("when", fmtTime(last.request_received_us) + " UTC" + (last.latency_us ? ` · latency ${(last.latency_us / 1000).toFixed(1)} ms` : "")),
      kv("where", `${last.cluster} · from ${(last.sourceips || []).join(", ")} · ${last.useragent}`),
      kv("outcome", [el("span", { class: codeClass(last.responsestatus_code), text: String(last.responsestatus_code || "—") }), " ", last.responsestatus_reason || "", " ", el("span", { class: "muted", text: last.responsestatus_message || "" })]),
      kv("authorization", `${last.decision || "—"} ${last.decision_reason || ""}`),
      kv("stages", data.records.map((r) => r.stage).join(", ")),
    ),
    Number(last.responsestatus_code) === 403 && eff ? el("p", {}, el("a", { class: "link", id: "event-rbac", text: `Why was ${eff} denied? Explain and suggest RBAC →`, onclick: () => openRbac(eff, last.cluster) })) : null,
    data.records.map((r) => el("div", {}, el("h2", { text: "Full record — stage " + r.stage, style: "font-size:14px;margin-top:12px" }),
      el("pre", { class: "json", dataset: { stage: r.stage }, text: JSON.stringify(r, null, 2) })))));
  setStatus(`event ${last.auditid}`);
}

async function viewQuery(params, main) {
  const q = params.get("q") || "";
  document.getElementById("query-input").value = q;
  if (!q) { main.replaceChildren(el("div", { class: "card wide" }, el("h2", { text: "Query" }), el("p", { class: "muted", text: 'Type a query above, e.g. responsestatus_code=403 and verb="list" groupby username' }))); return; }
  const p = apiParams(params, ["q", "since", "from", "to"]);
  if (!p.get("since") && !p.get("from")) p.set("since", "24h");
  if (params.get("cluster")) p.set("cluster", params.get("cluster"));
  let data;
  try {
    data = await api("/api/query", p);
  } catch (e) {
    const col = e.body && e.body.column;
    main.replaceChildren(el("section", { class: "card wide", dataset: { widget: "query" } }, el("h2", { text: "Query" }),
      el("pre", { class: "yaml err", id: "query-error", text: q + (col ? "\n" + " ".repeat(Math.max(0, col - 1)) + "^" : "") + "\n" + (e.status === 404 ? "the query API (/api/query) is not served here" : e.message) })));
    setStatus("query failed", true);
    return;
  }
  const cols = data.columns || [];
  const idx = (n) => cols.indexOf(n);
  main.replaceChildren(el("section", { class: "card wide", dataset: { widget: "query" } },
    el("h2", { text: "Query result" }), el("div", { class: "sub" }, qlLink(q)),
    el("div", { class: "sub", id: "query-count", dataset: { rows: data.rows.length } }, `${fmtInt(data.rows.length)} rows · ${data.elapsed_ms ?? "?"} ms `,
      ["csv", "json"].map((f) => el("a", { class: "btn", id: "export-" + f, text: "export " + f.toUpperCase(), onclick: () => exportQuery(p, f) }))),
    el("details", {}, el("summary", { class: "muted", text: "SQL" }), el("pre", { class: "yaml", text: data.sql + "\n" + JSON.stringify(data.params || {}) })),
    el("table", { dataset: { table: "query" } },
      el("thead", {}, el("tr", {}, cols.map((c) => el("th", { text: c })))),
      el("tbody", {}, data.rows.map((r) => el("tr", idx("auditid") >= 0 ? { class: "click", onclick: () => openEvent(r[idx("auditid")], idx("cluster") >= 0 ? r[idx("cluster")] : "") } : {},
        r.map((v) => el("td", { class: typeof v === "number" ? "num" : "trunc", text: typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? "") }))))))));
  setStatus(`${data.rows.length} rows`);
}

async function exportQuery(p, fmt) {
  // the token travels in a header (not in a link), so the file is fetched here and handed over as a blob
  const q = new URLSearchParams(p); q.set("format", fmt);
  const r = await fetch("/api/export?" + q.toString(), { headers: token ? { Authorization: "Bearer " + token } : {}, credentials: "same-origin" });
  if (!r.ok) { setStatus("export failed: " + r.status, true); return; }
  const a = el("a", { href: URL.createObjectURL(await r.blob()), download: "kaudit-export." + fmt });
  document.body.append(a); a.click(); a.remove();
}

async function viewRbac(params, main) {
  const user = params.get("user") || "";
  const form = el("form", { class: "pager", onsubmit: (ev) => { ev.preventDefault(); openRbac(ev.target.user.value.trim(), params.get("cluster")); } },
    el("input", { name: "user", value: user, placeholder: "user or system:serviceaccount:NS:NAME", size: 48, class: "mono" }),
    el("button", { class: "btn", type: "submit", text: "Explain" }));
  if (!user) { main.replaceChildren(el("section", { class: "card wide" }, el("h2", { text: "RBAC: why was a request denied?" }), form)); return; }
  const data = await api("/api/rbac", apiParams(params, ["user", "since", "from", "to", "cluster"]));
  const blob = new Blob([data.yaml], { type: "application/yaml" });
  main.replaceChildren(el("section", { class: "card wide", dataset: { widget: "rbac" } },
    el("h2", { text: `RBAC: denied requests of ${user}` }), form,
    el("div", { class: "sub" }, qlLink(data.query), " ", el("a", { class: "link", text: "show the events →", onclick: () => drill({ responsestatus_code: 403, effective_user: user }) })),
    el("div", { class: "sub", id: "rbac-total", dataset: { requests: data.requests } }, `${fmtInt(data.requests)} denied request(s), ${data.groups.length} kind(s) · ${data.range.label}`),
    !data.groups.length ? el("div", { class: "empty", text: "no denied (403) requests for this user in this range" }) : el("table", { dataset: { table: "rbac" } },
      el("thead", {}, el("tr", {}, ["requests", "verb", "API group", "resource", "namespace", "names / paths", "first seen", "last seen", "authorizer reason"].map((h) => el("th", { text: h })))),
      el("tbody", {}, data.groups.map((g) => el("tr", {},
        el("td", { class: "num", text: fmtInt(g.requests) }), el("td", { text: g.verb }), el("td", { text: g.apigroup || "core" }),
        el("td", { text: g.resource ? g.resource + (g.subresource ? "/" + g.subresource : "") : "(non-resource)" }),
        el("td", { text: g.namespace || "(cluster)" }), el("td", { class: "trunc mono", text: [...g.names, ...g.paths].join(", ") }),
        el("td", { class: "mono", text: fmtTime(g.first_us).slice(0, 19) }), el("td", { class: "mono", text: fmtTime(g.last_us).slice(0, 19) }),
        el("td", { class: "muted", text: g.reason }))))),
    data.yaml ? el("div", {}, el("h2", { text: "Suggested RBAC (allows exactly these requests)", style: "font-size:14px;margin-top:12px" }),
      el("a", { class: "btn", download: "rbac-" + user.replace(/[^a-zA-Z0-9_.-]/g, "_") + ".yaml", href: URL.createObjectURL(blob), text: "download YAML" }),
      el("pre", { class: "yaml", id: "rbac-yaml", text: data.yaml })) : null));
  setStatus(`${data.requests} denied requests`);
}

/* saved searches (GET /api/searches): click one to run it in the query box over its own range */
async function viewSearches(params, main) {
  const data = await api("/api/searches");
  const run = (s) => go("query", withGlobals({ q: s.query, since: s.since || "24h", cluster: (s.clusters || []).join(",") }));
  main.replaceChildren(el("section", { class: "card wide", dataset: { widget: "searches" } }, el("h2", { text: "Saved searches" }),
    !data.searches.length ? el("div", { class: "empty", text: "no saved searches yet: \"save\" next to any query text" }) : el("table", { dataset: { table: "searches" } },
      el("thead", {}, el("tr", {}, ["name", "query", "owner", "clusters", "range", "alert"].map((h) => el("th", { text: h })))),
      el("tbody", {}, data.searches.map((s) => el("tr", { dataset: { key: s.name } },
        el("td", {}, el("a", { class: "link", text: s.name, title: "run it", onclick: (ev) => { ev.preventDefault(); run(s); } })),
        el("td", { class: "trunc mono", text: s.query }), el("td", { text: s.owner }), el("td", { text: (s.clusters || []).join(", ") }),
        el("td", { text: s.since }),
        el("td", { class: "muted", text: s.alert_every ? `every ${s.alert_every}s over ${s.alert_window}s when ${s.alert_when}` : "" })))))));
  setStatus(`${data.searches.length} saved search(es)`);
}

const VIEWS = { dashboard: viewDashboard, events: viewEvents, event: viewEvent, query: viewQuery, rbac: viewRbac, searches: viewSearches };

/* ---------- controls ---------- */
function syncControls(params) {
  const g = globals(params);
  const range = document.getElementById("range");
  const abs = document.getElementById("abs-range");
  if (g.get("from")) {
    range.value = "abs"; abs.hidden = false;
    document.getElementById("abs-from").value = g.get("from").replace(/Z$/, "").slice(0, 16);
    document.getElementById("abs-to").value = (g.get("to") || "").replace(/Z$/, "").slice(0, 16);
  } else {
    range.value = [...range.options].some((o) => o.value === g.get("since")) ? g.get("since") : "24h";
    abs.hidden = true;
  }
  document.getElementById("refresh").value = g.get("refresh") || "0";
  const sel = (g.get("cluster") || "").split(",").filter(Boolean);
  document.getElementById("cluster-button").textContent = !sel.length ? "All clusters"
    : sel.length <= 3 ? sel.join(", ") : `${sel.slice(0, 2).join(", ")} +${sel.length - 2}`;
  document.getElementById("cluster-button").title = sel.join(", ");
  renderClusterItems();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === route().view);
}
function setGlobal(changes) {
  const { view, params } = route();
  for (const [k, v] of Object.entries(changes)) if (v) params.set(k, v); else params.delete(k);
  params.delete("offset");
  go(view, params);
}
/* ---------- the cluster picker: searched, not scrolled (1,000 clusters) ----------
 * GET /api/dashboard/clusters (names with events) and /api/clusters (groups, labels) with ?q=&limit=: the first
 * PICK_LIMIT names are listed; typing filters what is loaded at once, and asks the server when the list was cut. */
const PICK_LIMIT = 200;
let clusterInfo = {}, clusterGroups = [], clusterTotal = 0, clusterTruncated = false, pickSeq = 0, pickTimer = null, pickQ = "";
function selectedClusters() { return (globals(route().params).get("cluster") || "").split(",").filter(Boolean); }
async function fetchClusters(q) {
  const p = new URLSearchParams({ limit: String(PICK_LIMIT) });
  if (q) p.set("q", q);
  const my = ++pickSeq;
  const [names, files] = await Promise.all([api("/api/dashboard/clusters", p).catch(() => null), api("/api/clusters", p).catch(() => null)]);
  if (my !== pickSeq) return;  // a later keystroke's answer wins
  pickQ = (q || "").toLowerCase();
  clusterList = names ? names.clusters : [];
  clusterTotal = names ? (names.total ?? clusterList.length) : 0;
  clusterTruncated = !!(names && names.truncated);
  clusterInfo = {};
  if (files) { for (const c of files.clusters) clusterInfo[c.name] = c; if (!q) clusterGroups = files.groups || []; }
  renderClusterItems();
}
async function selectGroup(g) {
  const cl = await api("/api/clusters", new URLSearchParams({ group: g }));  // all of it, confined like the rest
  setGlobal({ cluster: cl.clusters.filter((c) => c.seen).map((c) => c.name).join(",") });
}
function renderClusterItems() {
  const box = document.getElementById("cluster-items"), search = document.getElementById("cluster-search");
  if (!box) return;
  const q = (search ? search.value : "").trim().toLowerCase();
  const sel = selectedClusters();
  const describe = (c) => clusterInfo[c] && clusterInfo[c].group ? ` · ${clusterInfo[c].group}` : "";
  const labels = (c) => clusterInfo[c] ? Object.entries(clusterInfo[c].labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") : "";
  const toggle = (c, on) => {
    const now = selectedClusters().filter((x) => x !== c);
    if (on) now.push(c);
    setGlobal({ cluster: now.join(",") });
  };
  const item = (c) => el("label", { title: labels(c) }, el("input", { type: "checkbox", value: c, checked: sel.includes(c) || undefined,
    onchange: (ev) => toggle(c, ev.target.checked) }), " " + c + describe(c));
  const shown = clusterList.filter((c) => !q || c.toLowerCase().includes(q));
  const rest = shown.filter((c) => !sel.includes(c));
  const kids = [...sel.map(item), ...rest.map(item)];  // the selected ones stay on top, whatever the search
  if (!kids.length) kids.push(el("div", { class: "muted", text: clusterTotal || q ? "no cluster matches" : "no clusters yet" }));
  if (clusterTruncated) kids.push(el("div", { class: "muted", id: "cluster-more", text: `${fmtInt(shown.length)} of ${fmtInt(clusterTotal)} shown: type to narrow` }));
  box.replaceChildren(...kids);
}
async function loadClusters() {
  const menu = document.getElementById("cluster-menu");
  const search = el("input", { type: "search", id: "cluster-search", placeholder: "search clusters…", autocomplete: "off",
    oninput: () => {
      renderClusterItems();  // at once, over what is loaded
      if (pickTimer) clearTimeout(pickTimer);
      const q = search.value.trim();
      // the loaded list holds every match when it was not cut and this search only narrows the one it answered
      if (clusterTruncated || !q.toLowerCase().includes(pickQ)) pickTimer = setTimeout(() => fetchClusters(q), 150);
    } });
  const groupsLine = el("div", { class: "muted", id: "cluster-groups" });
  menu.replaceChildren(groupsLine, search, el("div", { class: "cluster-items", id: "cluster-items" }));
  await fetchClusters("");
  groupsLine.replaceChildren(...(clusterGroups.length ? ["groups: ", ...clusterGroups.flatMap((g) => [el("a", { class: "link", dataset: { group: g }, text: g,
    title: "select this group's clusters", onclick: (ev) => { ev.preventDefault(); selectGroup(g).catch((e) => setStatus(e.message, true)); } }), " "])] : []));
  groupsLine.hidden = !clusterGroups.length;
  syncControls(route().params);
}

let rendering = 0;
async function render() {
  const { view, params } = route();
  syncControls(params);
  const main = document.getElementById("view");
  const fn = VIEWS[view] || viewDashboard;
  const my = ++rendering;
  if (!main.firstChild) main.append(el("div", { class: "empty", text: "loading…" }));
  try {
    setStatus("loading…");
    await fn(params, main);
  } catch (e) {
    if (my !== rendering) return;
    main.replaceChildren(el("div", { class: "card wide" }, errBox(e)));
    setStatus(e.message, true);
  }
  scheduleRefresh(globals(params).get("refresh"));
}
function scheduleRefresh(seconds) {
  if (refreshTimer) clearTimeout(refreshTimer);
  refreshTimer = null;
  const s = Number(seconds || 0);
  if (s > 0 && route().view !== "event") refreshTimer = setTimeout(render, s * 1000);
}

function init() {
  // a token can be handed over once as ?token=...; it is kept for this tab only and removed from the URL
  const sp = new URLSearchParams(location.search);
  if (sp.get("token")) {
    token = sp.get("token");
    sessionStorage.setItem("kaudit-token", token);
    history.replaceState(null, "", location.pathname + location.hash);
  }
  document.getElementById("range").addEventListener("change", (ev) => {
    if (ev.target.value === "abs") { document.getElementById("abs-range").hidden = false; return; }
    setGlobal({ since: ev.target.value, from: "", to: "" });
  });
  document.getElementById("abs-apply").addEventListener("click", () => {
    const f = document.getElementById("abs-from").value, t = document.getElementById("abs-to").value;
    if (f) setGlobal({ since: "", from: f + (f.length === 16 ? ":00Z" : "Z"), to: t ? t + (t.length === 16 ? ":00Z" : "Z") : "" });
  });
  document.getElementById("refresh").addEventListener("change", (ev) => setGlobal({ refresh: ev.target.value === "0" ? "" : ev.target.value }));
  document.getElementById("reload").addEventListener("click", () => { loadClusters(); render(); });
  document.getElementById("cluster-button").addEventListener("click", () => {
    const m = document.getElementById("cluster-menu"); m.hidden = !m.hidden;
  });
  document.addEventListener("click", (ev) => {
    if (!ev.target.closest("#cluster-picker")) document.getElementById("cluster-menu").hidden = true;
  });
  document.getElementById("query-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    openQuery(document.getElementById("query-input").value.trim());
  });
  window.addEventListener("hashchange", render);
  loadClusters();
  render();
}
document.addEventListener("DOMContentLoaded", init);
