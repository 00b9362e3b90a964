/* A worker's page: polls /v1/dashboard; recent scores against the threshold in service when each was scored. */
"use strict";

(function () {
  const f = window.fedad;

  function renderCards(d) {
    document.title = "fedad · " + d.worker_id;
    f.text("worker-id", d.worker_id);
    const phase = f.el("phase");
    phase.textContent = d.phase;
    phase.className = "pill " + (d.phase === "done" ? "done" : d.phase === "failed" ? "failed" : "training");
    f.text("model-kind", d.model ? (d.shape ? d.shape + " as " : "") + d.model : "no");
    f.text("precision", d.model || "–");
    f.text("precision-why", (d.precision && d.precision.reason) || "");
    f.text("model-round", d.model_round === null ? "–" : d.model_round);
    f.text("rounds-total", d.rounds_total);
    f.el("round-bar").style.width = (100 * (d.model_round || 0) / Math.max(1, d.rounds_total)) + "%";
    const p = d.progress || {};
    f.text("progress", d.phase === "training" && p.epoch
      ? "training round " + p.round + ": epoch " + p.epoch + "/" + p.epochs : (d.last_error ? d.last_error : ""));
    f.text("threshold", f.sig(d.threshold));
    f.text("rows-scored", f.num(d.detect.rows_scored));
    f.text("requests", f.num(d.detect.requests));
    f.text("anomalies", f.num(d.detect.anomalies_flagged));
    f.text("anomaly-rate", d.detect.rows_scored ? f.pct(d.detect.anomalies_flagged / d.detect.rows_scored) + " of rows" : "");
    const e = d.evaluation || {};
    f.text("f1", e.f1 === undefined ? "–" : f.num(e.f1, 3));
    f.text("far-mar", e.far === undefined ? "" : "false alarms " + f.num(e.far, 1) + " %, missed " + f.num(e.mar, 1) + " %");
  }

  function renderHistory(d) {
    const body = f.el("history").querySelector("tbody");
    const rows = (d.history || []).slice().reverse();
    if (!rows.length) {
      body.innerHTML = "<tr><td colspan=\"6\" class=\"left muted\">no model installed yet</td></tr>";
      return;
    }
    body.innerHTML = rows.map(function (h) {
      return "<tr><td>" + h.round + "</td><td>" + f.sig(h.local_loss) + "</td><td>" + f.sig(h.threshold) + "</td>" +
        "<td>" + f.num(h.f1, 3) + "</td><td>" + f.num(h.far, 1) + " %</td><td>" + f.num(h.mar, 1) + " %</td></tr>";
    }).join("");
  }

  function renderVersions(d) {
    const m = d.models || { versions: [] };
    f.text("versions-summary", m.served === null || m.served === undefined ? "nothing served yet"
      : "serving " + m.served + (m.pinned ? ", pinned by an admin" : "") + "; the last " + m.keep + " are kept");
    const body = f.el("versions").querySelector("tbody");
    const rows = m.versions.slice().reverse();
    if (!rows.length) {
      body.innerHTML = "<tr><td colspan=\"8\" class=\"left muted\">no model installed yet</td></tr>";
      return;
    }
    const pill = { served: "done", kept: "waiting", refused: "failed" };
    body.innerHTML = rows.map(function (v) {
      const x = v.figures || {};
      return "<tr data-version=\"" + f.escape(v.version) + "\"><td class=\"left\">" + f.escape(v.version) +
        "</td><td class=\"left\"><span class=\"pill " + (pill[v.status] || "never") + "\">" + f.escape(v.status) +
        "</span>" + (v.pinned ? " <span class=\"pill training\">pinned</span>" : "") + "</td><td>" +
        f.sig(v.threshold) + "</td><td>" + (x.f1 === undefined || x.f1 === null ? "–" : f.num(x.f1, 3)) +
        "</td><td>" + (x.normal_alarm_rate === null || x.normal_alarm_rate === undefined ? "–"
          : f.num(x.normal_alarm_rate, 1) + " %") + "</td><td>" + f.sig(x.normal_mean_score) +
        "</td><td class=\"left\">" + (v.installed_at ? f.clock(v.installed_at) : "–") + "</td><td class=\"left reason\">" +
        f.escape(v.reason) + "</td></tr>";
    }).join("");
  }

  function renderAlarms(d) {
    const body = f.el("alarms").querySelector("tbody");
    const a = d.alarms;
    if (!a) {
      body.innerHTML = "<tr><td colspan=\"7\" class=\"left muted\">alarms are off on this worker</td></tr>";
      return;
    }
    f.text("open-after", a.open_after);
    f.text("clear-after", a.clear_after);
    const rows = a.open.map(function (x) { return [x, true]; }).concat(a.recent.map(function (x) { return [x, false]; }));
    if (!rows.length) {
      body.innerHTML = "<tr><td colspan=\"7\" class=\"left muted\">no alarm yet: a stream's anomalous rows open one " +
        "(POST /detect with \"stream\", or device data)</td></tr>";
      return;
    }
    body.innerHTML = rows.map(function (r) {
      const x = r[0], open = r[1];
      const end = open ? d.now : x.end_time;
      const top = (x.top_sensors || []).map(function (t) {
        return f.escape(t.sensor) + " " + Math.round(100 * t.share) + "%";
      }).join(", ");
      return "<tr data-alarm=\"" + f.escape(x.alarm_id) + "\"><td class=\"left\">" + f.escape(x.stream) + "</td>" +
        "<td class=\"left\"><span class=\"pill " + (open ? "failed" : "done") + "\">" + (open ? "open" : "cleared") +
        "</span></td><td class=\"left\">" + f.clock(x.start_time) + "</td>" +
        "<td>" + f.num(Math.max(0, end - x.start_time), 0) + " s</td><td>" + f.num(x.anomalous_rows) + "</td>" +
        "<td>" + f.sig(x.peak_score) + "</td><td class=\"left\">" + (top || "–") + "</td></tr>";
    }).join("");
  }

  function renderLiveData(d) {
    const b = d.buffer, dr = d.drift;
    f.text("buffer-summary", (b ? "buffer: " + f.num(b.rows) + " of " + f.num(b.max_rows) + " rows in " +
      b.segments.length + (b.segments.length === 20 ? "+" : "") + " segment(s), " + f.num(b.added) + " kept in all, " +
      f.num(b.held_back) + " held back (" + b.margin_rows + " rows either side of an alarm are never kept)"
      : "buffer off") + " · " + (dr ? "drift (" + dr.method + ", action " + dr.action + "): " + f.num(dr.events) +
      " event(s), " + dr.streams_watched + " stream(s) watched" + (dr.pending_retrain ? ", a round asked for" : "")
      : "drift off"));
    const body = f.el("drift-events").querySelector("tbody");
    const rows = dr ? dr.recent : [];
    if (!rows.length) {
      body.innerHTML = "<tr><td colspan=\"6\" class=\"left muted\">no drift " + (dr ? "yet" : "watch") + "</td></tr>";
      return;
    }
    body.innerHTML = rows.map(function (x) {
      return "<tr><td class=\"left\">" + f.escape(x.stream) + "</td><td class=\"left\">" + f.clock(x.time) +
        "</td><td>" + x.model_round + "</td><td>" + f.num(x.mean_before, 3) + "</td><td>" + f.num(x.score_ratio, 3) +
        "</td><td class=\"left\">" + f.escape(x.action) + "</td></tr>";
    }).join("");
  }

  function scoreChart(d) {
    const r = d.recent;
    f.text("keep", r.row.length);
    if (!r.row.length) return;
    const normal = [], anomalous = [];
    for (let i = 0; i < r.score.length; i++) {
      const s = Math.max(r.score[i], 1e-9);  // log scale: a perfect reconstruction still shows
      const above = r.score[i] > r.threshold[i];
      normal.push(above ? null : s);
      anomalous.push(above ? s : null);
    }
    const data = [r.row, normal, anomalous, r.threshold];
    f.chart("score-chart", "scores", function (width) {
      const dots = function () { return null; };
      return {
        width: width, height: 300,
        series: [
          { label: "row" },
          { label: "score", stroke: "#2f6fde", paths: dots, points: { show: true, size: 4, fill: "#2f6fde" },
            value: function (u, v) { return f.sig(v); } },
          { label: "anomaly", stroke: "#d6453d", paths: dots, points: { show: true, size: 5, fill: "#d6453d" },
            value: function (u, v) { return f.sig(v); } },
          { label: "threshold", stroke: "#17202e", width: 2, dash: [6, 4], paths: uPlot.paths.stepped({ align: 1 }),
            points: { show: false }, value: function (u, v) { return f.sig(v); } },
        ],
        scales: { x: { time: false }, y: { distr: 3 } },
        legend: { live: false },
        axes: [{ label: "row scored (#)" }, { label: "score (reconstruction error)", size: 70,
          values: f.ticks }],
      };
    }, data);
  }

  function render(d) {
    renderCards(d);
    renderAlarms(d);
    renderLiveData(d);
    renderVersions(d);
    renderHistory(d);
    scoreChart(d);
    f.data = d;
  }

  f.poll("/v1/dashboard", render, 2000);
})();
