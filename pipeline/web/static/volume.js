/* kaudit dashboard: the Volume page (#/volume). Where audit volume comes from (events, JSON bytes, ClickHouse
 * cost) by category and top contributors, events per hour, and the audit policy `kaudit policy suggest` would
 * write. Data: /api/volume and /api/volume/policy (pipeline/web/volume.py). Loaded after app.js, whose helpers
 * (el, api, go, withGlobals, drill, fmtInt) and view table (VIEWS) it uses. */
"use strict";

function fmtBytes(n) {
  n = Number(n);
  for (const u of ["B", "KiB", "MiB", "GiB", "TiB"]) {
    if (Math.abs(n) < 1024 || u === "TiB") return u === "B" ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${u}`;
    n /= 1024;
  }
  return "";
}
const pctOf = (x) => (x >= 0.1 || x === 0 ? (100 * x).toFixed(0) : (100 * x).toFixed(1)) + "%";
const VOLUME_DIMS = { user: "username", verb: "verb", resource: "objectref_resource", namespace: "objectref_namespace",
  useragent: "useragent", subresource: "objectref_subresource", apigroup: "objectref_apigroup", stage: "stage" };

function volumeBar(share) {
  return el("div", { class: "bar", style: `background:linear-gradient(90deg,#90a4ae ${(100 * share).toFixed(1)}%,transparent 0)` },
    pctOf(share));
}

async function viewVolume(params, main) {
  const by = params.get("by") || "user,verb,resource";
  const p = apiParams(params, ["since", "from", "to", "cluster"]);
  if (!p.get("since") && !p.get("from")) p.set("since", "7d");
  p.set("by", by);
  p.set("top", "20");
  const d = await api("/api/volume", p);
  const t = d.totals;
  const dims = by.split(",");
  const byPicker = el("select", { id: "volume-by", onchange: (ev) => go("volume", withGlobals({ by: ev.target.value })) },
    ...["user,verb,resource", "user", "useragent", "verb,resource", "resource", "namespace", "user,useragent", "stage"].map(
      (v) => el("option", { value: v, selected: v === by, text: v })));
  const policyBox = el("pre", { class: "yaml", id: "volume-policy", hidden: true });
  const suggest = el("button", { type: "button", id: "volume-suggest", text: "Suggest an audit policy (60%)", onclick: async () => {
    const q = apiParams(p, ["since", "from", "to", "cluster"]);
    q.set("target", "60");
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const r = await fetch("/api/volume/policy?" + q.toString(), { headers, credentials: "same-origin" });
    policyBox.textContent = await r.text();
    policyBox.hidden = false;
  } });
  const hours = d.series.map((s) => s.events);
  const max = Math.max(1, ...hours);
  main.replaceChildren(
    el("section", { class: "card wide", dataset: { widget: "volume" } },
      el("h2", { text: "Audit volume" }),
      el("div", { class: "sub", id: "volume-total", dataset: { events: t.events, bytes: t.bytes } },
        `${fmtInt(t.events)} events · ${fmtBytes(t.bytes)} as JSON · about ${fmtBytes(d.ch_bytes)} in ClickHouse (compressed) · hourly rollup`),
      el("p", { id: "volume-headline", class: "headline", text: d.headline }),
      el("table", { dataset: { table: "volume-categories" } },
        el("tr", {}, ...["where it comes from", "events", "% events", "bytes", "% bytes", "users"].map((h) => el("th", { text: h }))),
        ...d.categories.map((c) => el("tr", {}, el("td", { text: c.key.label }), el("td", { text: fmtInt(c.events) }),
          el("td", {}, volumeBar(c.share_events)), el("td", { text: fmtBytes(c.bytes) }), el("td", {}, volumeBar(c.share_bytes)),
          el("td", { text: fmtInt(c.users) })))),
      el("div", { class: "spark", title: "events per hour" }, ...hours.map((n) => el("span", { style: `height:${(40 * n / max).toFixed(0)}px`, title: fmtInt(n) })))),
    el("section", { class: "card wide", dataset: { widget: "volume-top" } },
      el("h2", {}, "Top contributors by ", byPicker),
      el("table", { dataset: { table: "volume-top" } },
        el("tr", {}, ...[...dims, "events", "% events", "bytes", "% bytes", "ClickHouse"].map((h) => el("th", { text: h }))),
        ...d.top.map((g) => el("tr", {},
          ...dims.map((k) => el("td", {}, el("a", { class: "link", text: String(g.key[k] === "" ? "-" : g.key[k]),
            onclick: () => VOLUME_DIMS[k] && drill({ [VOLUME_DIMS[k]]: g.key[k] }) }))),
          el("td", { text: fmtInt(g.events) }), el("td", {}, volumeBar(g.share_events)), el("td", { text: fmtBytes(g.bytes) }),
          el("td", {}, volumeBar(g.share_bytes)), el("td", { text: fmtBytes(g.ch_bytes) }))))),
    el("section", { class: "card wide", dataset: { widget: "volume-policy" } },
      el("h2", { text: "Cut it at the source" }),
      el("p", { class: "muted", text: "An audit.k8s.io/v1 Policy that lowers the noisiest traffic without removing what the alert rules need (kaudit policy suggest)." }),
      suggest, policyBox));
  setStatus(`${fmtInt(t.events)} events`);
}

VIEWS.volume = viewVolume;
document.addEventListener("DOMContentLoaded", () => {
  const nav = document.querySelector("nav");
  if (nav && !nav.querySelector('[data-nav="volume"]')) nav.append(el("a", { href: "#/volume", "data-nav": "volume", text: "Volume" }));
});
