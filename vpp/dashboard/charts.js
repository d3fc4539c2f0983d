// Small SVG charts for the dashboard: time series (lines, steps, bands, dots) on one or two
// y axes, and threshold bars. No dependencies; every drawn series carries data-series and
// data-count attributes so a test (or a curious user) can see what was plotted.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  if (parent) parent.appendChild(el);
  return el;
}

function niceTicks(lo, hi, count) {
  if (!isFinite(lo) || !isFinite(hi)) return [];
  if (hi - lo < 1e-9) { hi = lo + 1; }
  const raw = (hi - lo) / Math.max(count, 1);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-6; v += step) ticks.push(+v.toFixed(10));
  return ticks;
}

function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v === null || v === undefined || !isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

function formatNumber(v) {
  const a = Math.abs(v);
  if (a >= 10000) return (v / 1000).toFixed(0) + "k";
  if (a >= 1000) return (v / 1000).toFixed(1) + "k";
  if (a >= 10 || a === 0) return v.toFixed(0);
  return v.toFixed(2);
}

function formatTime(ms, timeZone) {
  return new Date(ms).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", timeZone, hour12: false });
}

/**
 * Draw a time chart into `container`.
 * options: { xDomain: [msStart, msEnd], timeZone, yLabel, y2Label, series: [
 *   { name, label, kind: "line" | "step" | "band" | "dots", axis: 1 | 2, color, dash,
 *     points: [[ms, y]] (band: [[ms, low, high]]), stepMs (for steps: the interval length) } ] }
 */
function timeChart(container, options) {
  container.textContent = "";
  const width = container.clientWidth || 600;
  const height = container.clientHeight || 260;
  const margin = { top: 22, right: options.y2Label ? 56 : 16, bottom: 26, left: 56 };
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": options.title || "chart" }, container);
  const inner = { w: width - margin.left - margin.right, h: height - margin.top - margin.bottom };
  const series = options.series.filter((s) => s.points && s.points.length);
  if (!series.length) {
    svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, svg).textContent =
      options.emptyText || "no data yet";
    container.dataset.plotted = "0";
    return;
  }
  const [x0, x1] = options.xDomain;
  const yValues = (axis) => series.filter((s) => (s.axis || 1) === axis)
    .flatMap((s) => s.points.flatMap((p) => p.slice(1)));
  const scaleFor = (axis) => {
    let [lo, hi] = extent(yValues(axis));
    if (!isFinite(lo)) return null;
    if (options.zeroBased !== false) { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
    const pad = (hi - lo) * 0.06 || 1;
    lo -= pad; hi += pad;
    const ticks = niceTicks(lo, hi, 5);
    return { lo, hi, ticks, y: (v) => margin.top + inner.h * (1 - (v - lo) / (hi - lo)) };
  };
  const y1 = scaleFor(1);
  const y2 = options.y2Label ? scaleFor(2) : null;
  const x = (ms) => margin.left + inner.w * (ms - x0) / (x1 - x0);

  const grid = svgEl("g", { class: "grid" }, svg);
  const axis = svgEl("g", { class: "axis" }, svg);
  if (y1) {
    for (const t of y1.ticks) {
      svgEl("line", { x1: margin.left, x2: margin.left + inner.w, y1: y1.y(t), y2: y1.y(t) }, grid);
      svgEl("text", { x: margin.left - 6, y: y1.y(t) + 4, "text-anchor": "end" }, axis).textContent = formatNumber(t);
    }
    svgEl("text", { x: 4, y: 12 }, axis).textContent = options.yLabel || "";
  }
  if (y2) {
    for (const t of y2.ticks) {
      svgEl("text", { x: margin.left + inner.w + 6, y: y2.y(t) + 4 }, axis).textContent = formatNumber(t);
    }
    svgEl("text", { x: width - 4, y: 12, "text-anchor": "end" }, axis).textContent = options.y2Label;
  }
  const hourMs = 3600 * 1000;
  const span = x1 - x0;
  const stepHours = options.dateTicks || span > 36 * hourMs ? 24 : span > 12 * hourMs ? 3 : span > 3 * hourMs ? 1 : 0.25;
  for (let t = Math.ceil(x0 / (stepHours * hourMs)) * stepHours * hourMs; t <= x1; t += stepHours * hourMs) {
    svgEl("line", { x1: x(t), x2: x(t), y1: margin.top, y2: margin.top + inner.h }, grid);
    const label = options.dateTicks ? new Date(t).toLocaleDateString("en-GB", { day: "2-digit", month: "short", timeZone: options.timeZone }) : formatTime(t, options.timeZone);
    svgEl("text", { x: x(t), y: height - 8, "text-anchor": "middle" }, axis).textContent = label;
  }
  svgEl("line", { x1: margin.left, x2: margin.left + inner.w, y1: margin.top + inner.h, y2: margin.top + inner.h }, axis);

  const plot = svgEl("g", { class: "series" }, svg);
  let plotted = 0;
  for (const s of series) {
    const scale = (s.axis || 1) === 2 ? y2 : y1;
    if (!scale) continue;
    const attrs = { "data-series": s.name, "data-count": s.points.length, fill: "none", stroke: s.color, "stroke-width": s.width || 1.8 };
    if (s.dash) attrs["stroke-dasharray"] = s.dash;
    if (s.kind === "band") {
      const top = s.points.map((p) => `${x(p[0])},${scale.y(p[2])}`);
      const bottom = s.points.slice().reverse().map((p) => `${x(p[0])},${scale.y(p[1])}`);
      Object.assign(attrs, { fill: s.color, "fill-opacity": 0.18, stroke: "none" });
      attrs.points = top.concat(bottom).join(" ");
      svgEl("polygon", attrs, plot);
    } else if (s.kind === "dots") {
      const g = svgEl("g", { "data-series": s.name, "data-count": s.points.length, fill: s.color }, plot);
      for (const p of s.points) svgEl("circle", { cx: x(p[0]), cy: scale.y(p[1]), r: 2.2 }, g);
    } else {
      let d = "";
      s.points.forEach((p, i) => {
        if (p[1] === null || !isFinite(p[1])) return;
        const px = x(p[0]);
        const py = scale.y(p[1]);
        if (s.kind === "step") {
          const end = x(p[0] + (s.stepMs || 0));
          d += `${d ? "L" : "M"}${px},${py}L${end},${py}`;
        } else {
          d += `${d && i ? "L" : "M"}${px},${py}`;
        }
      });
      attrs.d = d;
      svgEl("path", attrs, plot);
    }
    plotted += s.points.length;
  }
  for (const mark of options.markers || []) {
    if (mark.at < x0 || mark.at > x1) continue;
    svgEl("line", { x1: x(mark.at), x2: x(mark.at), y1: margin.top, y2: margin.top + inner.h, stroke: mark.color || "#888", "stroke-dasharray": "3 3", "data-marker": mark.name || "" }, plot);
  }
  const legend = svgEl("g", { class: "legend" }, svg);
  let lx = margin.left;
  for (const s of series) {
    svgEl("rect", { x: lx, y: 4, width: 10, height: 10, fill: s.color, "fill-opacity": s.kind === "band" ? 0.3 : 1 }, legend);
    const text = svgEl("text", { x: lx + 14, y: 13 }, legend);
    text.textContent = s.label || s.name;
    lx += 24 + (s.label || s.name).length * 6.2;
  }
  container.dataset.plotted = String(plotted);
}

/** A horizontal bar of `value` on [0, max] with a threshold tick; `good` says which side passes. */
function thresholdBar(container, { title, value, threshold, max, unit, good, format }) {
  container.textContent = "";
  const fmt = format || ((v) => v.toFixed(3));
  const ok = value !== null && value !== undefined && (good === "below" ? value <= threshold : value >= threshold);
  const titleEl = document.createElement("div");
  titleEl.className = "title";
  titleEl.textContent = title;
  const figure = document.createElement("div");
  figure.className = "figure " + (value === null ? "" : ok ? "status-ok" : "status-bad");
  figure.textContent = value === null || value === undefined ? "–" : `${fmt(value)} ${unit}`;
  const limit = document.createElement("div");
  limit.className = "sub";
  limit.textContent = `threshold ${good === "below" ? "≤" : "≥"} ${fmt(threshold)} ${unit}`;
  container.append(titleEl, figure);
  const svg = svgEl("svg", { viewBox: "0 0 300 26", preserveAspectRatio: "none", "data-value": value ?? "", "data-threshold": threshold }, container);
  const scaleMax = Math.max(max, (value || 0) * 1.1, threshold * 1.2);
  svgEl("rect", { x: 0, y: 6, width: 300, height: 14, fill: "#eef1f4" }, svg);
  if (value !== null && value !== undefined) {
    svgEl("rect", { x: 0, y: 6, width: Math.min(300, 300 * value / scaleMax), height: 14, fill: ok ? "#2e8b57" : "#c0392b", "data-series": "value", "data-count": 1 }, svg);
  }
  svgEl("line", { x1: 300 * threshold / scaleMax, x2: 300 * threshold / scaleMax, y1: 0, y2: 26, stroke: "#1d2733", "stroke-width": 2, "data-marker": "threshold" }, svg);
  container.append(limit);
}

window.VppCharts = { timeChart, thresholdBar, formatNumber };
