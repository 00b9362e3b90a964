/* The aggregator's dashboard: polls /v1/dashboard, renders cards, the workers table and two uPlot charts. */
"use strict";

(function () {
  const f = window.fedad;

  function workerState(w, now, interval) {
    if (!w.last_seen) return "never";
    const fresh = Math.max(15, 3 * (interval || 5));
    return now - w.last_seen <= fresh ? "online" : "silent";
  }

  function renderCards(d) {
    const s = d.status;
    const phase = f.el("phase");
    phase.textContent = s.phase;
    phase.className = "pill " + s.phase;
    phase.title = s.phase === "idle" ? "the first rounds are done; a new round opens on a trigger (below)" : "";
    f.text("run-id", s.run_id);
    f.text("strategy", s.strategy);
    f.text("round", s.phase === "waiting" ? "–" : s.round);
    const continual = s.continual && s.continual.enabled;
    f.text("rounds-total", s.rounds_total + (continual ? " + continual" : ""));
    f.text("rounds-done", s.rounds_done);
    f.el("round-bar").style.width = Math.min(100, 100 * s.rounds_done / Math.max(1, s.rounds_total)) + "%";
    const fleet = s.fleet || {};
    const pending = s.updates_in_open_round_count;
    f.text("updates", s.phase === "training" ? pending : "–");
    f.text("min-workers", s.mode === "async" ? fleet.buffer_size : (fleet.sampled_in_open_round || s.min_workers));
    f.text("updates-from", s.phase === "training" && pending
      ? "from " + s.updates_in_open_round.join(", ") + (pending > s.updates_in_open_round.length ? ", …" : "")
      : (s.phase === "done" ? "all rounds done" : (s.phase === "idle" ? "idle: waiting for a trigger" : "")));
    f.text("fleet-trainers", fleet.trainers === undefined ? "–" : f.num(fleet.trainers));
    const facts = [s.role === "site" ? "site aggregator" : null, s.mode === "async" ? "async, a model every "
      + fleet.buffer_size + " updates" : null, fleet.clients_per_round ? "sampled " + (fleet.sampled_in_open_round
      === null ? fleet.clients_per_round : fleet.sampled_in_open_round) + " per round" : null];
    const directive = fleet.directive;
    if (directive) {
      facts.push("fleet " + directive.action + " " + (directive.version || "") + ": " + directive.applied
        + " applied, " + directive.refused + " refused");
    }
    f.text("fleet-sub", facts.filter(Boolean).join(" · ") || "every node trains every round");
    f.text("deadline", s.deadline_in_s === null ? "–" : Math.max(0, Math.round(s.deadline_in_s)) + " s");
    f.text("quorum", s.quorum);
    const online = d.workers.filter(function (w) { return workerState(w, d.now, d.telemetry_interval_s) === "online"; });
    f.text("online", online.length);
    f.text("configured", d.workers.length);
    f.text("interval", d.telemetry_interval_s || "–");
    let rows = 0, anomalies = 0;
    for (const w of d.workers) { rows += w.rows_scored || 0; anomalies += w.anomalies_flagged || 0; }
    f.text("rows-scored", f.num(rows));
    f.text("anomalies", f.num(anomalies));
    f.text("anomaly-rate", rows ? f.pct(anomalies / rows) + " of rows" : "");
  }

  function renderContinual(d) {
    const s = d.status, c = s.continual;
    if (!c) return;
    f.text("campaign-rounds", s.rounds_total === 1 ? "round" : s.rounds_total + " rounds");
    f.text("continual-rule", c.rule);
    f.text("open-trigger", s.phase === "training" ? c.open_round_trigger.replace("_", " ") : "–");
    f.text("next-scheduled", c.next_scheduled_in_s === null ? (c.every_s ? "– (a round is open)" : "no schedule")
      : Math.round(c.next_scheduled_in_s) + " s");
    f.text("skipped-count", c.skipped.length);
    const last = c.skipped[c.skipped.length - 1];
    f.text("skipped-last", last ? "(last: round " + last.round + ", " + f.ago(last.at, d.now) + ": " + last.reason + ")" : "");
  }

  function served(w) {
    const m = w.model;
    if (!m) return "<td class=\"left served muted\">" + (w.model_round === null || w.model_round === undefined
      ? "–" : "round " + w.model_round) + "</td>";
    let html = m.served_round === null ? "none yet" : "round " + m.served_round;
    if (w.precision) html += " · " + f.escape(w.precision);
    if (m.pinned !== null) html += "<span class=\"pin\">pinned</span>";
    if (m.last_refused) {
      const why = m.last_refused.reason.replace(/^refused:\s*/i, "");
      html += "<span class=\"why\">refused round " + m.last_refused.round + ": " + f.escape(why) + "</span>";
    }
    if (w.precision_reason) html += "<span class=\"precision\">" + f.escape(w.precision_reason) + "</span>";
    return "<td class=\"left served\">" + html + "</td>";
  }

  function renderWorkers(d) {
    const body = f.el("workers").querySelector("tbody");
    body.innerHTML = d.workers.map(function (w, i) {
      const state = workerState(w, d.now, d.telemetry_interval_s);
      return "<tr data-worker=\"" + f.escape(w.id) + "\">" +
        "<td><span class=\"swatch\" style=\"background:" + f.colour(i) + "\"></span>" + f.escape(w.id) + "</td>" +
        "<td class=\"left\"><span class=\"pill " + state + "\">" + state + "</span></td>" +
        "<td>" + f.ago(w.last_seen, d.now) + "</td>" +
        "<td>" + f.num(w.sample_count) + "</td>" +
        "<td>" + f.sig(w.last_loss) + "</td>" +
        served(w) +
        "<td>" + f.num(w.new_rows) + "</td>" +
        "<td>" + f.num(w.drift_events) + "</td>" +
        "<td>" + f.num(w.rows_scored) + "</td>" +
        "<td>" + f.num(w.anomalies_flagged) + "</td>" +
        "<td>" + f.pct(w.anomaly_rate) + "</td>" +
        "<td class=\"alarms" + (w.open_alarms ? " firing" : "") + "\">" + f.num(w.open_alarms) + "</td>" +
        "<td class=\"left muted\">" + f.escape(w.phase || "–") + "</td></tr>";
    }).join("");
  }

  function renderRounds(d) {
    const body = f.el("rounds").querySelector("tbody");
    const history = d.status.history.slice().reverse();
    if (!history.length) {
      body.innerHTML = "<tr><td colspan=\"7\" class=\"left muted\">no round closed yet</td></tr>";
      return;
    }
    body.innerHTML = history.map(function (h) {
      return "<tr data-round=\"" + h.round + "\"><td>" + h.round + "</td>" +
        "<td class=\"left\">" + f.escape((h.trigger || "campaign").replace("_", " ")) + "</td>" +
        "<td class=\"left\">" + f.escape(h.closed_by) + "</td>" +
        "<td>" + f.num(h.duration_s, 1) + " s</td>" +
        "<td>" + (h.contributors === undefined ? Object.keys(h.workers).length : h.contributors) + "</td>" +
        "<td>" + f.sig(h.mean_loss) + "</td>" +
        "<td class=\"left muted\">" + new Date(h.closed_at * 1000).toLocaleTimeString() + "</td></tr>";
    }).join("");
  }

  function lossChart(d) {
    const ids = d.workers.map(function (w) { return w.id; });
    const L = d.losses;
    if (!L.round.length) return;
    const data = [L.round].concat(ids.map(function (id) { return L.workers[id]; }), [L.mean]);
    const values = [].concat.apply([], data.slice(1)).filter(function (v) { return v !== null; });
    const lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    const positive = lo > 0 && hi / lo > 10;  // log scale once losses span a decade, else linear
    f.chart("loss-chart", ids.join(",") + (positive ? ":log" : ":lin"), function (width) {
      const series = [{ label: "round" }].concat(ids.map(function (id, i) {
        return { label: id, stroke: f.colour(i), width: 1.6, points: { show: true, size: 6 }, value: function (u, v) { return f.sig(v); } };
      }), [{ label: "mean", stroke: "#17202e", width: 2.6, dash: [6, 4], points: { show: true, size: 7 },
        value: function (u, v) { return f.sig(v); } }]);
      return {
        width: width, height: 260, series: series,
        scales: { x: { time: false, range: function (u, min, max) { return [min - 0.25, max + 0.25]; } },
          y: { distr: positive ? 3 : 1, range: function (u, min, max) {
            return positive ? [min / 1.15, max * 1.15] : [min - 0.1 * Math.abs(min), max + 0.1 * Math.abs(max)];
          } } },
        axes: [
          { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100], values: function (u, vals) { return vals.map(function (v) { return Number.isInteger(v) ? v : ""; }); } },
          { label: "loss", size: 60, values: f.ticks },
        ],
        legend: { live: false },
      };
    }, data);
  }

  function anomalyChart(d) {
    const A = d.anomalies;
    f.text("bucket", A.bucket_s);
    if (!A.time.length) return;
    const ids = d.workers.map(function (w) { return w.id; });
    const data = [A.time].concat(ids.map(function (id) { return A.anomalies[id]; }));
    f.chart("anomaly-chart", ids.join(","), function (width) {
      return {
        width: width, height: 260, padding: [12, 30, 0, 0],  // right: room for the last time label
        series: [{ label: "time" }].concat(ids.map(function (id, i) {
          return { label: id, stroke: f.colour(i), fill: f.colour(i) + "14", width: 1.8,
            paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } };
        })),
        scales: {
          // at least a minute (or 12 buckets) wide: a few seconds of data would get millisecond ticks
          x: { time: true, range: function (u, min, max) { return [Math.min(min, max - Math.max(60, 12 * A.bucket_s)), max + A.bucket_s]; } },
          y: { range: function (u, min, max) { return [0, Math.max(4, max * 1.15)]; } },
        },
        axes: [{ space: 70, values: function (u, vals) { return vals.map(f.clock); } }, { label: "anomalies", size: 55 }],
        legend: { live: false },
      };
    }, data);
  }

  function render(d) {
    renderCards(d);
    renderContinual(d);
    renderWorkers(d);
    renderRounds(d);
    lossChart(d);
    anomalyChart(d);
    f.data = d;
  }

  f.poll("/v1/dashboard", render, 2000);
})();
