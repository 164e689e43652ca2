// freshrec serve dashboard: polls /v1/dashboard every 2 s; no build step, no network beyond this process.
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (v, d = 0) => (v === null || v === undefined) ? "n/a" : Number(v).toLocaleString("en-US", {maximumFractionDigits: d});
let chart = null;

function drawChart(series) {
  const data = [series.map((p) => p.t), series.map((p) => p.freshness_p50_ms), series.map((p) => p.freshness_p99_ms),
                series.map((p) => p.lists_per_s)];
  if (chart) { chart.setData(data); return; }
  chart = new uPlot({
    width: 620, height: 240,
    series: [{}, {label: "freshness p50 ms", stroke: "#2f6fdf", scale: "ms"},
             {label: "freshness p99 ms", stroke: "#b42318", scale: "ms"},
             {label: "lists/s", stroke: "#1a7f37", scale: "rate"}],
    axes: [{}, {scale: "ms", label: "ms"}, {scale: "rate", side: 1, label: "lists/s", grid: {show: false}}],
  }, data, $("chart"));
}

function render(s) {
  $("topic").textContent = s.topics.recommendations;
  $("partitions").textContent = s.topics.partitions;
  $("ready").textContent = s.ready ? "ready" : "catching up";
  $("ready").className = s.ready ? "ok" : "bad";
  $("updated").textContent = new Date(s.now * 1000).toLocaleTimeString();
  $("lists").textContent = fmt(s.lists);
  $("lists_received").textContent = fmt(s.lists_received);
  $("lists_per_s").textContent = fmt(s.lists_per_s, 1);
  const last = s.series.length ? s.series[s.series.length - 1] : {};
  $("fresh").textContent = fmt(last.freshness_p50_ms) + " / " + fmt(last.freshness_p99_ms);
  $("lag").textContent = s.lag === null ? "n/a" : fmt(s.lag);
  $("dlq").textContent = fmt(s.dlq_messages);
  $("erased").textContent = fmt(s.erased_users);
  $("unavailable").textContent = fmt(s.unavailable_items);
  const rows = s.models.map((m) => {
    const q = s.live_quality[m.model_version];
    const hr = q && q.hit_rate !== null ? (100 * q.hit_rate).toFixed(1) + "% of " + fmt(q.points) : "n/a";
    return `<tr><td>${m.model_version}</td><td>${fmt(m.lists)}</td><td>${(100 * m.share).toFixed(1)}%</td>` +
           `<td class="${hr === "n/a" ? "na" : ""}">${hr}</td></tr>`;
  });
  $("models").innerHTML = rows.join("") || '<tr><td colspan="4" class="na">no lists yet</td></tr>';
  $("workers").textContent = s.workers.configured
    ? `worker metrics: ${s.workers.up} of ${s.workers.configured} answering; workers' DLQ total ${fmt(s.dlq_workers)}`
    : "live quality: n/a (start serve with --worker-metrics URL)";
  drawChart(s.series);
  document.body.dataset.loaded = "1";
}

async function refresh() {
  try {
    const r = await fetch("/v1/dashboard");
    if (r.ok) render(await r.json());
  } catch (e) { $("updated").textContent = "error: " + e; }
}

async function lookup(user) {
  const enc = encodeURIComponent(user);
  const r = await fetch(`/v1/users/${enc}/recommendations?available_only=false`);
  const body = await r.json();
  $("u_title").textContent = r.ok ? `${user}: ${body.items.length} items` : `${user}: ${body.error}`;
  $("u_items").innerHTML = r.ok ? body.items.map((it, n) =>
    `<tr><td>${n + 1}</td><td>${it.item_id}</td><td>${it.score.toFixed(3)}</td><td>${(it.sources || []).join(", ")}</td></tr>`).join("") : "";
  $("u_meta").textContent = r.ok ? `model ${body.model_version}, index ${body.index_version}, ${body.events_applied} events, ` +
    `last event ${body.last_event_id || "?"}, published ${body.age_s.toFixed(1)} s ago, freshness ${fmt(body.freshness_ms, 1)} ms` : "";
  const ev = await (await fetch(`/v1/users/${enc}/events?limit=20`)).json();
  $("u_events").textContent = !ev.reads_events ? "serve does not read the events topic (--recent-events 0)"
    : ev.events.length ? ev.events.map((e) => JSON.stringify(e.event)).join("\n")
    : `none among the last ${ev.kept} events on the topic`;
}

$("lookup").addEventListener("submit", (e) => { e.preventDefault(); if ($("user").value) lookup($("user").value); });
const wanted = new URLSearchParams(location.search).get("user");
if (wanted) { $("user").value = wanted; lookup(wanted); }
refresh();
setInterval(refresh, 2000);
