// pbkv dashboard: polls /api/stats and renders it. The server computes every number (the
// same parsed stats that /metrics exports); this script only formats. Each displayed figure
// carries data-metric="<prometheus sample>" so a test can compare the page with /metrics.
"use strict";

const params = new URLSearchParams(location.search);
const REFRESH_MS = Math.max(200, Number(params.get("refresh_ms")) || 1000);
const TIERS = ["gpu", "cpu"];
const SVG_NS = "http://www.w3.org/2000/svg";
let updates = 0;

function fmt(value, format) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (format === "pct") return (value * 100).toFixed(1) + "%";
  if (format === "int") return Math.round(value).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  if (format === "dec") return value.toFixed(3);
  if (format === "ms") return value.toFixed(2) + " ms";
  return String(value);
}

function labelValue(v) {
  return String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function sample(name, labels) {
  const keys = Object.keys(labels || {});
  if (!keys.length) return name;
  return name + "{" + keys.map((k) => `${k}="${labelValue(labels[k])}"`).join(",") + "}";
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

// metric sample -> value, for the fixed figures of the page
function figures(view) {
  const out = {};
  out.pbkv_active_workflows = view.active_workflows;
  out.pbkv_cache_lookup_blocks_total = view.overall.lookup_blocks;
  for (const tier of TIERS) {
    const t = view.overall[tier];
    out[sample("pbkv_cache_hit_rate", {tier})] = t.hit_rate;
    out[sample("pbkv_cache_hit_blocks_total", {tier})] = t.hit_blocks;
    if (view.baseline_lru) {
      out[sample("pbkv_baseline_lru_cache_hit_rate", {tier})] =
        view.baseline_lru.overall[tier].hit_rate;
    }
  }
  out.pbkv_workflows_done = view.progress.workflows_done;
  out.pbkv_workflows_total = view.progress.workflows_total;
  if (view.baseline_lru) {
    out.pbkv_baseline_lru_workflows_done = view.baseline_lru.progress.workflows_done;
    out.pbkv_baseline_lru_reused_tokens_total = view.baseline_lru.tokens.reused;
    out.pbkv_baseline_lru_recomputed_tokens_total = view.baseline_lru.tokens.recomputed;
    out.pbkv_baseline_lru_reused_token_ratio = view.baseline_lru.tokens.reused_fraction;
  }
  out[sample("pbkv_cached_blocks", {tier: "gpu"})] = view.blocks.gpu_cached;
  out[sample("pbkv_cached_blocks", {tier: "cpu"})] = view.blocks.cpu_cached;
  out.pbkv_plans_built_total = view.blocks.plans_built;
  out.pbkv_prefetched_blocks_total = view.prefetch.prefetched_blocks;
  out.pbkv_prefetch_used_blocks_total = view.prefetch.used_blocks;
  out.pbkv_reused_tokens_total = view.tokens.reused;
  out.pbkv_reused_token_ratio = view.tokens.reused_fraction;
  out.pbkv_recomputed_tokens_total = view.tokens.recomputed;
  if (view.shadow) {
    for (const policy of ["lru", "pbkv"]) {
      out[sample("pbkv_shadow_hit_rate", {policy})] = view.shadow.hit_rate[policy];
    }
    for (const source of ["observed", "lru", "pbkv"]) {
      out[sample("pbkv_shadow_computed_blocks", {source})] = view.shadow.computed_blocks[source];
    }
    out.pbkv_shadow_saved_tokens = view.shadow.saved_tokens;
    out.pbkv_shadow_saved_prefill_seconds = view.shadow.saved_prefill_s;
    out.pbkv_shadow_calibration_error = view.shadow.calibration_error;
    out.pbkv_shadow_lost_batches = view.shadow.lost_batches;
  }
  out.pbkv_prefetch_precision = view.prefetch.precision;
  out.pbkv_prefetch_recall = view.prefetch.recall;
  out.pbkv_predictor_top1_accuracy = view.predictor.top1_accuracy;
  out.pbkv_predictor_scored_steps = view.predictor.scored_steps;
  out[sample("pbkv_predictor_calibration_error", {metric: view.predictor.calibration_metric})] =
    view.predictor.calibration;
  return out;
}

function renderFigures(view) {
  const calibration = document.getElementById("calibration");
  calibration.dataset.metric = sample("pbkv_predictor_calibration_error",
    {metric: view.predictor.calibration_metric});
  document.getElementById("calibration-metric").textContent = view.predictor.calibration_metric;
  const values = figures(view);
  for (const node of document.querySelectorAll("[data-metric]")) {
    if (node.closest("table[data-dynamic]")) continue;
    node.textContent = fmt(values[node.dataset.metric], node.dataset.format);
  }
  document.getElementById("policy").textContent = view.policy || "?";
  const mode = document.getElementById("mode");
  mode.textContent = view.fallback_lru ? "LRU fall-back (predictor accuracy low)"
    : "predictions in use";
  mode.className = "badge " + (view.fallback_lru ? "warn" : "ok");
  mode.dataset.metric = "pbkv_fallback_lru";
  mode.dataset.value = view.fallback_lru ? "1" : "0";
}

function diffPoints(a, b) {
  if (a === null || b === null) return "–";
  const pp = (a - b) * 100;
  return (pp >= 0 ? "+" : "−") + Math.abs(pp).toFixed(1) + " pp";
}

function setDelta(id, text) {
  const node = document.getElementById(id);
  node.textContent = text;
  node.className = "delta " + (text.startsWith("+") ? "up" : text.startsWith("−") ? "down" : "");
}

function renderLru(view) {
  const base = view.baseline_lru;
  document.getElementById("lru-missing").hidden = !!base;
  document.getElementById("lru-table").hidden = !base;
  for (const node of document.querySelectorAll(".vs-lru")) node.hidden = !base;
  // equal progress: the server put LRU's stats after as many finished workflows as pbkv's
  const mine = view.progress.workflows_done, theirs = base ? base.progress.workflows_done : null;
  const equal = !!base && mine !== null && theirs === mine;
  document.getElementById("lru-progress").hidden = !equal;
  document.getElementById("lru-unequal").hidden = !base || equal;
  if (!base) return;
  document.getElementById("lru-policy-name").textContent = view.policy || "pbkv";
  if (!equal) {
    document.getElementById("lru-unequal-what").textContent = theirs === null
      ? "a run given whole (no progress recorded)"
      : `shown after ${fmt(theirs, "int")} finished workflows, pbkv after ${fmt(mine, "int")}`;
  }
  setDelta("gpu-delta", diffPoints(view.overall.gpu.hit_rate, base.overall.gpu.hit_rate));
  setDelta("reused-delta", diffPoints(view.tokens.reused_fraction, base.tokens.reused_fraction));
  document.getElementById("lru-policy-head").textContent = view.policy || "pbkv";
  for (const tier of TIERS) {
    document.getElementById(`lru-${tier}-diff`).textContent =
      diffPoints(view.overall[tier].hit_rate, base.overall[tier].hit_rate);
  }
  document.getElementById("lru-reused-diff").textContent =
    diffPoints(view.tokens.reused_fraction, base.tokens.reused_fraction);
}

function fillTable(table, headers, rows) {
  table.replaceChildren();
  table.dataset.dynamic = "1";
  const head = el("tr");
  for (const h of headers) head.appendChild(el("th", h));
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  if (!rows.length) {
    body.appendChild(el("tr")).appendChild(el("td", "none yet", {colspan: headers.length}));
    return;
  }
  for (const cells of rows) {
    const tr = body.appendChild(el("tr"));
    for (const cell of cells) {
      const attrs = {};
      if (cell.metric) { attrs["data-metric"] = cell.metric; attrs["data-format"] = cell.format; }
      tr.appendChild(el("td", cell.metric ? fmt(cell.value, cell.format) : cell.text, attrs));
    }
  }
}

function renderScopes(view) {
  for (const [scope, key] of [["engine", "engines"], ["app", "apps"], ["agent", "agents"]]) {
    const rows = view[key].map((row) => {
      const cells = [{text: row.name}];
      for (const tier of TIERS) {
        cells.push({metric: sample(`pbkv_${scope}_hit_rate`, {[scope]: row.name, tier}),
          value: row[tier].hit_rate, format: "pct"});
      }
      cells.push({metric: sample(`pbkv_${scope}_lookup_blocks_total`, {[scope]: row.name}),
        value: row.lookup_blocks, format: "int"});
      return cells;
    });
    fillTable(document.getElementById(`${key}-table`),
      [scope, "GPU hit rate", "CPU hit rate", "lookups (blocks)"], rows);
  }
}

function renderKept(view) {
  const rows = view.top_kept.map((b) => [
    {text: b.block_hash.slice(0, 12)}, {text: b.score.toFixed(2)}, {text: b.p_reuse.toFixed(3)},
    {text: b.eta_steps === null ? "–" : b.eta_steps.toFixed(1)},
    {text: b.recompute_cost_ms.toFixed(2)}, {text: b.reload_cost_ms.toFixed(2)},
    {text: String(b.consumers)},
  ]);
  fillTable(document.getElementById("kept-table"), ["block", "score (ms)", "P(reuse)",
    "eta (steps)",
    "recompute (ms)", "reload (ms)", "consumers"], rows);
}

function renderRpc(view) {
  const row = (r, mean) => [{text: r.method},
    {metric: sample("pbkv_rpc_latency_seconds_count", {method: r.method}), value: r.requests,
      format: "int"},
    {text: fmt(r.errors, "int")}, {text: mean}];
  fillTable(document.getElementById("rpc-table"), ["method", "requests", "errors",
    "mean latency"], view.rpc.filter((r) => r.kind !== "stream")
    .map((r) => row(r, fmt(r.mean_latency_ms, "ms"))));
  fillTable(document.getElementById("stream-table"), ["method", "streams ended", "errors",
    "mean lifetime"], view.rpc.filter((r) => r.kind === "stream")
    .map((r) => row(r, r.mean_lifetime_s === null ? "–" : r.mean_lifetime_s.toFixed(1) + " s")));
}

function renderService(view) {
  const rows = view.service.map((r) => [{text: r.name},
    {text: r.value === null ? "–" : String(r.value)}]);
  fillTable(document.getElementById("service-table"), ["counter", "value"], rows);
}

function renderCluster(view) {
  const box = document.getElementById("cluster-box");
  box.hidden = !view.cluster;
  if (!view.cluster) return;
  const line = (name, r) => [{text: name}, {text: r.address || ""},
    {text: r.workflow_partitions === undefined ? "" : `${r.workflow_partitions} / ${r.engine_partitions}`},
    {text: fmt(r.gpu_lookups, "int")}, {text: fmt(r.hit_rate, "pct")},
    {text: r.outlook_propagation_p99_ms == null ? "" : fmt(r.outlook_propagation_p99_ms, "ms")}];
  const rows = view.cluster.replicas.map((r) => line(r.replica, r));
  rows.push(line("whole service", view.cluster.total));
  fillTable(document.getElementById("cluster-table"), ["replica", "address",
    "partitions (workflow / engine)", "block lookups", "hit rate", "outlook delay p99"], rows);
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

const LINES = {
  cumulative: [["gpu", "GPU (pbkv)", "line-gpu"], ["cpu", "CPU (pbkv)", "line-cpu"],
    ["baseline_lru_gpu", "GPU (LRU baseline)", "line-lru"]],
  // the baseline moves in steps (one per workflow pbkv finishes): no meaningful interval rate
  interval: [["gpu_interval", "GPU (pbkv)", "line-gpu"], ["cpu_interval", "CPU (pbkv)",
    "line-cpu"]],
};
let lastHistory = null;

function rateMode() {
  const checked = document.querySelector('input[name="rate"]:checked');
  return checked ? checked.value : "cumulative";
}

function renderChart(history) {
  lastHistory = history;
  const lines = LINES[rateMode()];
  const box = document.getElementById("chart");
  const W = 720, H = 220, L = 44, R = 12, T = 10, B = 28;
  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "hit rate over time"});
  const ts = history.t_s || [];
  const t0 = ts.length ? ts[0] : 0, span = Math.max(1e-9, (ts[ts.length - 1] || 0) - t0);
  const x = (t) => L + (W - L - R) * (ts.length > 1 ? (t - t0) / span : 0.5);
  const y = (v) => T + (H - T - B) * (1 - v);
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    root.appendChild(svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid"}));
    const label = root.appendChild(svg("text", {x: L - 6, y: y(v) + 4, class: "axis",
      "text-anchor": "end"}));
    label.textContent = (v * 100) + "%";
  }
  const tlabel = root.appendChild(svg("text", {x: W - R, y: H - 6, class: "axis",
    "text-anchor": "end"}));
  tlabel.textContent = ts.length > 1 ? `last ${span.toFixed(0)} s` : "waiting for samples";
  for (const [key, , cls] of lines) {
    const values = history[key];
    if (!values) continue;
    let points = [];
    const flush = () => {
      if (points.length === 1) {
        const [px, py] = points[0].split(",");
        root.appendChild(svg("circle", {cx: px, cy: py, r: 2.5, class: cls}));
      } else if (points.length > 1) {
        root.appendChild(svg("polyline", {points: points.join(" "), class: cls}));
      }
      points = [];
    };
    values.forEach((v, i) => {
      if (v === null) flush(); else points.push(`${x(ts[i]).toFixed(1)},${y(v).toFixed(1)}`);
    });
    flush();
  }
  const legend = el("div", null, {class: "legend"});
  for (const [key, name, cls] of lines) {
    if (!history[key]) continue;
    const item = legend.appendChild(el("span"));
    item.appendChild(el("i", null, {class: cls}));
    item.appendChild(document.createTextNode(name));
  }
  box.replaceChildren(root, legend);
}

function renderShadow(view) {
  document.getElementById("shadow-section").hidden = !view.shadow;
  if (view.shadow) document.getElementById("shadow-engine").textContent = view.shadow.engine_id;
}

function render(view) {
  renderFigures(view);
  renderShadow(view);
  renderLru(view);
  renderChart(view.history);
  renderScopes(view);
  renderKept(view);
  renderRpc(view);
  renderService(view);
  renderCluster(view);
  const err = document.getElementById("error");
  err.hidden = !view.error;
  err.textContent = view.error || "";
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  updates += 1;
  document.body.dataset.updates = String(updates);
}

async function poll() {
  try {
    const resp = await fetch("/api/stats", {cache: "no-store"});
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || resp.statusText);
    render(body);
  } catch (exc) {
    const err = document.getElementById("error");
    err.hidden = false;
    err.textContent = "cannot read /api/stats: " + exc.message;
  } finally {
    setTimeout(poll, REFRESH_MS);
  }
}

async function loadBench() {
  try {
    const resp = await fetch("/api/bench", {cache: "no-store"});
    const body = await resp.json();
    const list = document.getElementById("bench-list");
    list.replaceChildren();
    if (!body.files.length) list.appendChild(el("li", "none"));
    for (const f of body.files) {
      const li = list.appendChild(el("li"));
      li.appendChild(el("a", f.name, {href: "/bench/" + encodeURI(f.name)}));
      li.appendChild(document.createTextNode(" · "));
      li.appendChild(el("a", "json", {href: "/api/bench/" + encodeURI(f.name)}));
    }
  } catch (exc) {
    // the bench list is optional; the live figures matter more
  }
}

for (const input of document.querySelectorAll('input[name="rate"]')) {
  input.addEventListener("change", () => { if (lastHistory) renderChart(lastHistory); });
}
poll();
loadBench();
setInterval(loadBench, 15000);
