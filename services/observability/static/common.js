/* Helpers shared by the aggregator's dashboard and a worker's page. Plain ES2017, no build step. */
"use strict";

const fedad = window.fedad = window.fedad || { charts: {}, updates: 0, lastUpdate: null };

fedad.palette = ["#2f6fde", "#e4572e", "#17a398", "#9b5de5", "#f2a541", "#4c956c", "#c44536", "#3d5a80"];

fedad.colour = function (i) { return fedad.palette[i % fedad.palette.length]; };

fedad.el = function (id) { return document.getElementById(id); };

fedad.text = function (id, value) { const e = fedad.el(id); if (e) e.textContent = value; };

fedad.num = function (v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (digits === undefined) return Number(v).toLocaleString("en-US");
  return Number(v).toFixed(digits);
};

/* Losses and scores span decades: 3 significant digits, exponent when tiny. */
fedad.sig = function (v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return Number(v.toPrecision(3)).toString();
};

/* Axis tick labels: uPlot passes null for ticks it leaves unlabelled. */
fedad.ticks = function (u, vals) { return vals.map(function (v) { return v === null ? "" : fedad.sig(v); }); };

fedad.pct = function (v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return (100 * v).toFixed(v < 0.001 && v > 0 ? 3 : 1) + " %";
};

fedad.ago = function (t, now) {
  if (!t) return "never";
  const s = Math.max(0, now - t);
  if (s < 2) return "just now";
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
};

fedad.escape = function (s) {
  return String(s).replace(/[&<>"']/g, function (c) {
    return { "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;" }[c];
  });
};

/* A uPlot chart in element `id`, rebuilt when its series change, otherwise fed with setData. */
fedad.chart = function (id, key, makeOpts, data) {
  const host = fedad.el(id);
  const width = Math.max(300, host.clientWidth);
  const existing = fedad.charts[id];
  if (existing && existing.key === key) {
    existing.plot.setData(data);
    if (Math.abs(existing.plot.width - width) > 4) existing.plot.setSize({ width: width, height: existing.plot.height });
    return existing.plot;
  }
  if (existing) existing.plot.destroy();
  host.textContent = "";
  const opts = makeOpts(width);
  const plot = new uPlot(opts, data, host);
  fedad.charts[id] = { key: key, plot: plot };
  return plot;
};

/* Time-axis ticks as wall-clock time of day (uPlot's default adds a second row of dates that overlap). */
fedad.clock = function (t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
};

/* Points actually drawn: a test (and a person) can tell an empty chart from one with data. */
fedad.pointsWithData = function (id) {
  const c = fedad.charts[id];
  if (!c) return 0;
  let n = 0;
  for (let s = 1; s < c.plot.data.length; s++) {
    for (const v of c.plot.data[s]) if (v !== null && v !== undefined && !Number.isNaN(v)) n++;
  }
  return n;
};

fedad.poll = function (url, render, everyMs) {
  const dot = fedad.el("live-dot"), label = fedad.el("live-label"), error = fedad.el("error");
  async function tick() {
    try {
      const r = await fetch(url, { cache: "no-store" });
      if (!r.ok) throw new Error(url + " answered " + r.status);
      const data = await r.json();
      render(data);
      fedad.updates += 1;
      fedad.lastUpdate = Date.now();
      if (dot) dot.classList.remove("stale");
      if (label) label.textContent = "live · updated " + new Date().toLocaleTimeString();
      if (error) error.style.display = "none";
    } catch (e) {
      if (dot) dot.classList.add("stale");
      if (label) label.textContent = "not answering";
      if (error) { error.textContent = "Cannot refresh: " + e.message; error.style.display = "block"; }
    }
    setTimeout(tick, everyMs);
  }
  tick();
};
