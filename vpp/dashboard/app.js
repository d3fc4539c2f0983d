// The park energy manager's dashboard: reads the engine's API and draws it. The token comes
// from the page address (#token=...) or the login form and stays in this tab's session storage.
"use strict";

const API = "/api/v1";
const FAST_MS = 5000;
const SLOW_MS = 60000;
const COLORS = {
  measured: "#1d2733",
  target: "#c0392b",
  schedule: "#1f6fb2",
  envelope: "#1f6fb2",
  expected: "#7f8c8d",
  price: "#d68910",
  bid: "#1f6fb2",
  award: "#2e8b57",
  intensity: "#8e44ad",
  threshold: "#c0392b",
  clean: "#2e8b57",
};
const state = { park: null, timeZone: "UTC", data: {} };

function token() {
  const match = /[#&]token=([^&]+)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem("vpp-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname);
  }
  return sessionStorage.getItem("vpp-token");
}

class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function getJson(path) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const response = await fetch(API + path, { headers, cache: "no-store" });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Refused(response.status, body.error || response.statusText);
  return body;
}

function ms(iso) {
  return new Date(iso).getTime();
}

function kw(value) {
  if (value === null || value === undefined) return "–";
  return Math.abs(value) >= 1000 ? `${(value / 1000).toFixed(2)} MW` : `${value.toFixed(0)} kW`;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fillTable(id, rows, build) {
  const body = document.querySelector(`#${id} tbody`);
  body.textContent = "";
  for (const item of rows) {
    const tr = document.createElement("tr");
    build(tr, item);
    body.appendChild(tr);
  }
}

function showError(message) {
  const bar = document.getElementById("error-bar");
  bar.hidden = !message;
  bar.textContent = message || "";
}

function askForToken(message) {
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("login-message").textContent = message;
}

// --- renderers -----------------------------------------------------------------------------

function renderPark(park) {
  state.park = park;
  state.timeZone = park.timezone;
  document.title = `VPP — ${park.name}`;
  document.getElementById("park-name").textContent = park.name;
  const asOf = new Date(park.as_of).toLocaleString("en-GB", { timeZone: park.timezone });
  document.getElementById("park-sub").textContent =
    `${park.id} · ${park.enterprises.length} enterprises · ${park.market_rule_set} · ${asOf} (${park.timezone})`;
  document.getElementById("kpi-power").textContent = kw(park.power_kw);
  document.getElementById("kpi-target").textContent = kw(park.target_kw);
  document.getElementById("kpi-assets").textContent = `${park.counts.available}/${park.assets}`;
}

function renderFleet(enterprises) {
  const peak = Math.max(1, ...enterprises.map((e) => Math.abs(e.power_kw)));
  fillTable("fleet-table", enterprises, (tr, e) => {
    tr.dataset.enterprise = e.id;
    cell(tr, e.name);
    cell(tr, String(e.assets), "num");
    cell(tr, String(e.counts.available), "num");
    cell(tr, String(e.counts.stale), e.counts.stale ? "num status-warn" : "num");
    cell(tr, String(e.counts.offline), e.counts.offline ? "num status-bad" : "num");
    cell(tr, (Math.round(e.power_kw) || 0).toFixed(0), "num");
    const bar = document.createElement("span");
    bar.className = e.power_kw < 0 ? "bar neg" : "bar";
    bar.style.width = `${(60 * Math.abs(e.power_kw)) / peak}px`;
    cell(tr, "").appendChild(bar);
  });
}

function seriesOf(startIso, intervalMin, values) {
  const start = ms(startIso);
  return values.map((v, k) => [start + k * intervalMin * 60000, v]);
}

function dayDomain() {
  const d = state.data;
  const plan = d.schedule || d.envelope;
  if (plan) {
    const start = ms(plan.start);
    const count = (plan.park_kw || plan.expected_kw || []).length;
    return [start, start + count * plan.interval_min * 60000];
  }
  const now = state.park ? ms(state.park.as_of) : Date.now();
  return [now - 3600000, now + 600000];
}

function renderPower() {
  const d = state.data;
  const series = [];
  if (d.envelope) {
    const e = d.envelope;
    const start = ms(e.start);
    series.push({
      name: "envelope", label: "flexibility envelope", kind: "band", color: COLORS.envelope,
      points: e.min_kw.map((lo, k) => [start + k * e.interval_min * 60000, lo, e.max_kw[k]]),
    });
    series.push({ name: "expected", label: "expected", kind: "step", color: COLORS.expected, dash: "4 3",
      stepMs: e.interval_min * 60000, points: seriesOf(e.start, e.interval_min, e.expected_kw) });
  }
  if (d.schedule && d.schedule.park_kw) {
    const s = d.schedule;
    series.push({ name: "schedule", label: "schedule", kind: "step", color: COLORS.schedule,
      stepMs: s.interval_min * 60000, points: seriesOf(s.start, s.interval_min, s.park_kw) });
  }
  if (d.awards && d.awards.length) {
    series.push({ name: "target", label: "target (awarded)", kind: "step", color: COLORS.target,
      stepMs: d.awards[0].interval_min * 60000,
      points: d.awards.map((a) => [ms(a.interval_start), a.power_kw]) });
  }
  if (d.control && d.control.history.length) {
    series.push({ name: "measured", label: "measured", kind: "line", color: COLORS.measured, width: 2.4,
      points: d.control.history.map((p) => [ms(p.at), p.measured_kw]) });
  }
  const now = state.park ? ms(state.park.as_of) : null;
  VppCharts.timeChart(document.getElementById("chart-power"), {
    title: "park power", xDomain: dayDomain(), timeZone: state.timeZone, yLabel: "kW", series,
    zeroBased: false, markers: now ? [{ at: now, name: "now", color: "#555" }] : [],
  });
}

function renderBids() {
  const d = state.data;
  const bids = d.bids;
  const series = [];
  let domain = dayDomain();
  if (bids && bids.prices) {
    const p = bids.prices;
    const start = ms(p.start);
    domain = [start, start + p.price_per_mwh.length * p.interval_min * 60000];
    const priceAt = new Map(p.price_per_mwh.map((v, k) => [start + k * p.interval_min * 60000, v]));
    series.push({ name: "price", label: `${p.kind} price (${p.currency}/MWh)`, kind: "step", axis: 2,
      color: COLORS.price, stepMs: p.interval_min * 60000, points: seriesOf(p.start, p.interval_min, p.price_per_mwh) });
    const quantities = bids.curves
      .filter((c) => priceAt.has(ms(c.interval_start)))
      .map((c) => {
        const price = priceAt.get(ms(c.interval_start));
        const step = c.steps.find((s) => price <= s.price_up_to_per_mwh) || c.steps[c.steps.length - 1];
        return [ms(c.interval_start), step.power_kw];
      });
    series.push({ name: "bid", label: "bid quantity at price (kW)", kind: "step", color: COLORS.bid,
      stepMs: p.interval_min * 60000, points: quantities });
  }
  if (d.awards && d.awards.length) {
    series.push({ name: "award", label: "awarded (kW)", kind: "dots", color: COLORS.award,
      points: d.awards.map((a) => [ms(a.interval_start) + a.interval_min * 30000, a.power_kw]) });
  }
  VppCharts.timeChart(document.getElementById("chart-bids"), {
    title: "bids vs prices", xDomain: domain, timeZone: state.timeZone, yLabel: "kW",
    y2Label: "price", series, zeroBased: false, emptyText: "no bids submitted yet",
  });
}

function renderCarbon(carbon) {
  const kpi = document.getElementById("kpi-carbon");
  if (!carbon) {
    kpi.textContent = "–";
    document.getElementById("carbon-band").textContent = "no carbon accounting yet";
    return;
  }
  const ind = carbon.indicators;
  kpi.textContent = ind.met ? "met" : "not met";
  kpi.className = "value " + (ind.met ? "status-ok" : "status-bad");
  const from = new Date(carbon.period_start).toLocaleDateString("en-GB", { timeZone: state.timeZone });
  const to = new Date(ms(carbon.period_end) - 1).toLocaleDateString("en-GB", { timeZone: state.timeZone });
  document.getElementById("carbon-band").textContent =
    `${from} – ${to} · park size ${Math.round(ind.annual_energy_tce).toLocaleString("en-GB")} tce/yr (${ind.size_basis}) · band: ${ind.band}`;
  VppCharts.thresholdBar(document.getElementById("gauge-intensity"), {
    title: "Carbon per unit energy", value: ind.carbon_intensity_t_per_tce,
    threshold: ind.carbon_intensity_max_t_per_tce, max: ind.carbon_intensity_max_t_per_tce * 2,
    unit: "tCO₂/tce", good: "below",
  });
  VppCharts.thresholdBar(document.getElementById("gauge-clean"), {
    title: "Clean-energy share", value: ind.clean_share === null ? null : ind.clean_share * 100,
    threshold: ind.clean_share_min * 100, max: 100, unit: "%", good: "above",
    format: (v) => v.toFixed(1),
  });
  const day = 86400000;
  const points = carbon.trend.map((p) => [ms(p.day + "T00:00:00Z"), p.carbon_intensity_t_per_tce]);
  const domain = points.length
    ? [points[0][0] - day / 2, points[points.length - 1][0] + day / 2]
    : [Date.now() - day, Date.now()];
  VppCharts.timeChart(document.getElementById("chart-trend"), {
    title: "indicator trend", xDomain: domain, timeZone: "UTC", yLabel: "tCO₂/tce", dateTicks: true,
    series: [
      { name: "intensity", label: "tCO₂/tce per day", kind: points.length > 1 ? "line" : "dots", color: COLORS.intensity, points },
      { name: "threshold", label: "threshold", kind: "line", color: COLORS.threshold, dash: "5 4",
        points: [[domain[0], ind.carbon_intensity_max_t_per_tce], [domain[1], ind.carbon_intensity_max_t_per_tce]] },
    ],
  });
  const names = new Map((state.data.enterprises || []).map((e) => [e.id, e.name]));
  const rows = Object.entries(carbon.enterprises);
  if (carbon.park) rows.push(["park", carbon.park]);
  fillTable("carbon-table", rows, (tr, [id, t]) => {
    tr.dataset.enterprise = id;
    if (id === "park") tr.style.fontWeight = "600";
    cell(tr, id === "park" ? "Park (netted)" : names.get(id) || id);
    cell(tr, t.emission_t.toFixed(2), "num");
    cell(tr, t.energy_tce.toFixed(2), "num");
    cell(tr, t.carbon_intensity_t_per_tce === null ? "–" : t.carbon_intensity_t_per_tce.toFixed(3), "num");
    cell(tr, t.clean_share === null ? "–" : (t.clean_share * 100).toFixed(1), "num");
  });
}

function renderDr(events, settlements) {
  const fmt = (iso) => new Date(iso).toLocaleString("en-GB", { timeZone: state.timeZone, month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit" });
  fillTable("dr-table", events, (tr, e) => {
    tr.dataset.event = e.event_id;
    cell(tr, e.event_id);
    cell(tr, `${fmt(e.start)} – ${fmt(e.end).slice(-5)}`);
    cell(tr, e.reduction_kw.toFixed(0), "num");
    cell(tr, e.price_per_mwh.toFixed(0), "num");
    cell(tr, e.status.replace("_", " "), e.status === "opted_out" ? "status-bad" : e.status === "acknowledged" ? "status-ok" : "");
  });
  const names = new Map((state.data.enterprises || []).map((e) => [e.id, e.name]));
  const currency = settlements.lines.length ? settlements.lines[0].currency : "";
  fillTable("settlement-table", Object.entries(settlements.by_enterprise), (tr, [id, t]) => {
    tr.dataset.enterprise = id;
    cell(tr, names.get(id) || id);
    cell(tr, t.delivered_kwh.toFixed(0), "num");
    cell(tr, `${t.revenue.toFixed(0)} ${currency}`, "num");
    cell(tr, t.penalty.toFixed(0), t.penalty > 0 ? "num status-bad" : "num");
  });
}

// --- refresh loops -------------------------------------------------------------------------

async function load(paths) {
  const results = await Promise.allSettled(paths.map(([, path]) => getJson(path)));
  let unauthorized = null;
  results.forEach((result, i) => {
    const key = paths[i][0];
    if (result.status === "fulfilled") {
      state.data[key] = result.value;
    } else if (result.reason instanceof Refused && result.reason.status === 401) {
      unauthorized = result.reason.message;
    } else if (result.reason instanceof Refused && result.reason.status === 403) {
      state.data[key] = null; // this token may not read it: leave the panel empty
    } else {
      throw result.reason;
    }
  });
  if (unauthorized) {
    askForToken(unauthorized);
    throw new Refused(401, unauthorized);
  }
}

function unwrap() {
  const d = state.data;
  d.park = d.parkRaw;
  d.enterprises = d.enterprisesRaw ? d.enterprisesRaw.enterprises : [];
  d.schedule = d.scheduleRaw ? d.scheduleRaw.schedule : null;
  d.envelope = d.envelopeRaw ? d.envelopeRaw.envelope : null;
  d.awards = d.awardsRaw ? d.awardsRaw.awards : [];
  d.bids = d.bidsRaw || null;
  d.control = d.controlRaw || null;
}

async function refreshFast() {
  await load([["parkRaw", "/park"], ["enterprisesRaw", "/enterprises"], ["controlRaw", "/control?limit=2000"]]);
  unwrap();
  renderPark(state.data.park);
  renderFleet(state.data.enterprises);
  renderPower();
}

async function refreshSlow() {
  await load([
    ["scheduleRaw", "/schedule"], ["envelopeRaw", "/flexibility"], ["bidsRaw", "/bids"],
    ["awardsRaw", "/awards"], ["drRaw", "/dr-events"], ["settlementsRaw", "/settlements"],
    ["carbonRaw", "/carbon"],
  ]);
  unwrap();
  renderPower();
  renderBids();
  const d = state.data;
  renderDr(d.drRaw ? d.drRaw.events : [], d.settlementsRaw || { lines: [], by_enterprise: {} });
  renderCarbon(d.carbonRaw ? d.carbonRaw.carbon : null);
}

function loop(task, period) {
  const run = async () => {
    try {
      await task();
      showError("");
      document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
      document.body.dataset.loaded = "true";
    } catch (err) {
      if (!(err instanceof Refused && err.status === 401)) showError(`could not refresh: ${err.message}`);
    }
    setTimeout(run, period);
  };
  return run();
}

async function start() {
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("vpp-token", document.getElementById("token-input").value.trim());
    document.getElementById("login").hidden = true;
    refreshFast().then(refreshSlow).catch((err) => showError(err.message));
  });
  // The fast loop fills park and fleet first: the slow panels label enterprises by name.
  await loop(refreshFast, FAST_MS);
  await loop(refreshSlow, SLOW_MS);
}

window.addEventListener("resize", () => {
  if (state.park) { renderPower(); renderBids(); renderCarbon(state.data.carbonRaw ? state.data.carbonRaw.carbon : null); }
});
document.addEventListener("DOMContentLoaded", start);
