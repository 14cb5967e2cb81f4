// foodpipe dashboard: renders the documents the server pushes over /events.
// Every value from the server is written with textContent, never as HTML: dead-letter
// reasons and order fields come from arbitrary Kafka input.
"use strict";

const HISTORY = 150; // points kept per chart: five minutes at the default 2 s interval
const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const ms = (n) => (n === null || n === undefined ? "–" : `${fmt(n)} ms`);
const money = (s) => (s === null || s === undefined ? "–" : Number(s).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }));

function setText(id, value) { const el = $(id); if (el) el.textContent = value; }

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fillTable(tbodyParent, rows, columns, emptyText) {
  const tbody = tbodyParent.querySelector("tbody");
  tbody.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(tr, emptyText);
    td.colSpan = columns.length;
    tbody.appendChild(tr);
    return;
  }
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const [key, cls] of columns) cell(tr, typeof key === "function" ? key(r) : r[key], cls);
    tbody.appendChild(tr);
  }
}

// ------------------------------------------------------------------ charts

const series = { t: [], produced: [], written: [], lag: [] };
const charts = {};

function makeChart(id, opts, data) {
  const el = $(id);
  if (typeof uPlot === "undefined" || !el) return null;
  return new uPlot({ width: Math.max(el.clientWidth, 300), height: 220, ...opts }, data, el);
}

function initCharts() {
  charts.rates = makeChart("chart-rates", {
    series: [{}, { label: "produced/s", stroke: "#1f5fa8", width: 2 }, { label: "written/s", stroke: "#c05a00", width: 2, dash: [6, 3] }],
    axes: [{}, { label: "orders/s" }],
  }, [[], [], []]);
  charts.lag = makeChart("chart-lag", {
    series: [{}, { label: "lag", stroke: "#8a1c7c", width: 2, fill: "rgba(138,28,124,.08)" }],
    axes: [{}, { label: "messages" }],
  }, [[], []]);
  charts.minutes = makeChart("chart-minutes", {
    series: [{}, { label: "orders/min", stroke: "#1f5fa8", width: 2, scale: "n" },
      { label: "revenue/min", stroke: "#176c2e", width: 2, scale: "$", dash: [6, 3] }],
    axes: [{}, { scale: "n", label: "orders" }, { scale: "$", side: 1, label: "revenue", grid: { show: false } }],
    // Always the whole window: with one minute of data, uPlot would otherwise stretch
    // the axis over years.
    scales: { x: { time: true, range: (u, min, max) => {
      const end = max === null || Number.isNaN(max) ? Date.now() / 1000 : max + 60;
      return [Math.min(min ?? end, end - 3660), end];
    } } },
  }, [[], [], []]);
  window.addEventListener("resize", () => {
    for (const [name, chart] of Object.entries(charts)) {
      if (!chart) continue;
      const el = $(`chart-${name}`);
      chart.setSize({ width: Math.max(el.clientWidth, 300), height: 220 });
    }
  });
}

function pushPoint(t, produced, written, lag) {
  series.t.push(t); series.produced.push(produced); series.written.push(written); series.lag.push(lag);
  if (series.t.length > HISTORY) for (const k of Object.keys(series)) series[k].shift();
  if (charts.rates) charts.rates.setData([series.t, series.produced, series.written]);
  if (charts.lag) charts.lag.setData([series.t, series.lag]);
}

// ------------------------------------------------------------------ stale marking

const problems = { kafka: null, postgres: null, business: null, dashboard: null, internal: null };

function showProblems() {
  const list = $("problems");
  list.replaceChildren();
  for (const text of Object.values(problems)) {
    if (!text) continue;
    const li = document.createElement("li");
    li.textContent = text;
    list.appendChild(li);
  }
  const down = (src) => Boolean(problems[src] || problems.dashboard || problems.internal);
  for (const el of document.querySelectorAll("[data-source]")) {
    el.classList.toggle("stale", down(el.dataset.source));
  }
}

// ------------------------------------------------------------------ pipeline

function renderPipeline(doc) {
  if (doc.internal) { problems.internal = doc.error; showProblems(); return; }
  problems.internal = null;
  const status = doc.status;
  problems.kafka = doc.kafka.ok ? null : `Kafka: ${doc.kafka.error.replace(/^Kafka(: )?/, "")}`;
  problems.postgres = doc.postgres.ok ? null : doc.postgres.error;
  const taken = new Date(status.taken_at);
  setText("connection", `live · last reading ${taken.toLocaleTimeString()}`);
  $("connection").className = "live";

  if (status.topic) {
    const topic = status.topic;
    setText("topic-name", topic.name);
    setText("group-name", status.group.id);
    setText("lag-total", fmt(status.lag));
    setText("lag-total-foot", fmt(status.lag));
    setText("log-end-total", fmt(topic.log_end));
    setText("committed-total", fmt(topic.partitions.reduce((s, p) => s + (p.committed || 0), 0)));
    if (status.rates) setText("produced-rate", fmt(status.rates.produced_per_s));
    const tbody = $("partitions").querySelector("tbody");
    tbody.replaceChildren();
    const owners = new Set();
    for (const p of topic.partitions) {
      const tr = document.createElement("tr");
      tr.dataset.partition = p.partition;
      cell(tr, p.partition, "num");
      cell(tr, fmt(p.log_end), "num");
      cell(tr, p.committed === null ? "none yet" : fmt(p.committed), "num");
      cell(tr, fmt(p.lag), `num ${p.lag === 0 ? "lag-0" : "lag-up"}`);
      const owner = doc.owners[String(p.partition)];
      cell(tr, owner || "unassigned", owner ? "" : "empty");
      if (owner) owners.add(owner);
      tbody.appendChild(tr);
    }
    setText("owners-count", owners.size);
    setText("group-state", status.group.state);
    setText("members-count", status.group.members.length);
    const members = $("members");
    members.replaceChildren();
    for (const m of doc.members) {
      const li = document.createElement("li");
      li.textContent = `${m.name}: partitions ${m.partitions.join(", ") || "none"}`;
      members.appendChild(li);
    }
  }
  if (status.dlq.messages !== null) setText("dlq-size", fmt(status.dlq.messages));
  setText("dlq-name", status.dlq.topic);
  setText("rebalances-seen", doc.rebalances.seen);
  const rebalances = $("rebalances");
  if (doc.rebalances.latest.length) {
    rebalances.replaceChildren();
    for (const r of doc.rebalances.latest) {
      const li = document.createElement("li");
      const owners = Object.entries(r.owners).map(([p, o]) => `${p}→${o}`).join(", ");
      li.textContent = `${new Date(r.at).toLocaleTimeString()}: ${r.members.length} members; ${owners || "no owners"}`;
      rebalances.appendChild(li);
    }
  }
  if (doc.dead_letters.latest.length || !doc.dead_letters.error) {
    fillTable($("dead-letters"), doc.dead_letters.latest, [
      [(r) => (r.failed_at || "").slice(0, 19).replace("T", " ")], ["origin"], ["error_class"], ["reason"],
    ], "none");
  }

  if (doc.postgres.ok) {
    setText("rows-total", fmt(status.database.rows));
    if (doc.written_per_s !== null) setText("written-rate", fmt(doc.written_per_s));
  }
  const lat = doc.latency;
  if (!lat.error) {
    setText("latency-p50", ms(lat.p50_ms));
    setText("latency-p95", ms(lat.p95_ms));
    setText("latency-p99", ms(lat.p99_ms));
    setText("latency-window", lat.window_s);
    setText("latency-samples", fmt(lat.samples));
  }
  showProblems();
  pushPoint(
    taken.getTime() / 1000,
    doc.kafka.ok && status.rates ? status.rates.produced_per_s : null,
    doc.postgres.ok ? doc.written_per_s : null,
    doc.kafka.ok ? status.lag : null,
  );
}

// ------------------------------------------------------------------ business

function renderBusiness(doc) {
  problems.business = doc.error ? `business view: ${doc.error}` : null;
  showProblems();
  if (doc.error) return;
  setText("business-minutes", doc.minutes);
  setText("business-orders", fmt(doc.orders));
  setText("business-revenue", money(doc.revenue));
  setText("business-aov", money(doc.average_order_value));
  if (charts.minutes) {
    charts.minutes.setData([
      doc.per_minute.map((m) => new Date(m.minute).getTime() / 1000),
      doc.per_minute.map((m) => m.orders),
      doc.per_minute.map((m) => Number(m.revenue)),
    ]);
  }
  fillTable($("top-dishes"), doc.top_dishes, [["dish"], [(r) => fmt(r.quantity), "num"], [(r) => money(r.revenue), "num"]], "no orders in the window");
  fillTable($("top-customers"), doc.top_customers, [["customer_id"], [(r) => fmt(r.orders), "num"], [(r) => money(r.spent), "num"]], "no orders in the window");
}

// ------------------------------------------------------------------ audit

function renderAudit(doc) {
  const button = $("audit-run");
  button.disabled = Boolean(doc.running);
  button.textContent = doc.running ? "Audit running…" : "Run the audit";
  if (doc.running) return;
  const verdict = $("audit-verdict");
  verdict.textContent = doc.verdict || (doc.error ? "could not run" : "not run yet");
  verdict.className = doc.verdict === "CONSISTENT" ? "verdict-ok" : "verdict-bad";
  if (doc.started_at) setText("audit-when", `(started ${new Date(doc.started_at).toLocaleTimeString()}, took ${doc.seconds} s)`);
  const error = $("audit-error");
  error.hidden = !doc.error;
  error.textContent = doc.error || "";
  const table = $("audit-checks");
  table.hidden = !(doc.checks && doc.checks.length);
  fillTable(table, doc.checks || [], [["name"], ["result"], ["kafka"], ["database"], ["detail"]], "");
}

async function runAudit() {
  const button = $("audit-run");
  button.disabled = true;
  try {
    const response = await fetch("/api/audit", { method: "POST", headers: { "X-Foodpipe": "audit" } });
    if (!response.ok && response.status !== 409) throw new Error(`HTTP ${response.status}`);
  } catch (err) {
    button.disabled = false;
    setText("audit-error", "the dashboard did not start the audit; try again");
    $("audit-error").hidden = false;
  }
}

// ------------------------------------------------------------------ the stream

function connect() {
  const source = new EventSource("/events");
  const handle = (render) => (event) => {
    problems.dashboard = null;
    render(JSON.parse(event.data));
  };
  source.addEventListener("pipeline", handle(renderPipeline));
  source.addEventListener("business", handle(renderBusiness));
  source.addEventListener("audit", handle(renderAudit));
  source.addEventListener("open", () => { problems.dashboard = null; showProblems(); });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself (the server asks for 2 s); say so meanwhile.
    problems.dashboard = "the dashboard server does not answer; reconnecting…";
    $("connection").className = "down";
    setText("connection", "disconnected");
    showProblems();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  initCharts();
  $("audit-run").addEventListener("click", runAudit);
  connect();
});
