// The experimenter dashboard, drawn in the page. The server renders the tables; this script
// fetches /admin/dashboard.json (the URL in #live's data-src) every data-refresh-ms
// milliseconds (5000 unless the page says otherwise) and draws three SVG charts from it:
// completions and active participants over time, the yes-rate per layer with its Wilson
// 95% interval, and each list's fill against its target. It also updates the tables'
// figures (totals, lists, and the participant rows on this page: progress, status, catch
// trials passed, median answer time, exclusion status).
//
// The page's Content-Security-Policy allows no inline script or style: everything here
// is built with the DOM (document.createElementNS for SVG), geometry is set through
// attributes (x, y, width, height, d) and the look through classes (static/admin.css).
// After each refresh #live's data-updated counts up, data-generated-at holds the
// server's time of the figures. A hidden tab does not ask; a slow answer spaces the
// requests out; a session that has ended stops them (the page says so).
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var root = document.getElementById("live");
  if (!root || !window.fetch) return;
  var note = document.getElementById("live-note");
  var source = root.getAttribute("data-src");
  var every = parseInt(root.getAttribute("data-refresh-ms"), 10);
  if (!(every >= 100)) every = 5000;
  var shownTotal = parseInt(root.getAttribute("data-total"), 10);
  var updates = 0, failures = 0, timer = null;

  // Chart geometry, in the SVG's viewBox units (640 x 240).
  var W = 640, H = 240, M = { left: 44, right: 14, top: 14, bottom: 40 };
  var PW = W - M.left - M.right, PH = H - M.top - M.bottom;

  // --- small helpers ------------------------------------------------------------------------

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    for (var key in attrs) {
      if (Object.prototype.hasOwnProperty.call(attrs, key)) node.setAttribute(key, attrs[key]);
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function titled(node, text) {
    node.appendChild(el("title", {}, text));
    return node;
  }

  function clear(svg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
  }

  function num(x) { return (Math.round(x * 10) / 10).toString(); }

  function pct(x) { return x === null || x === undefined ? "–" : Math.round(100 * x) + "%"; }

  function ago(seconds) {   // as the page's ago() macro
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return (Math.round(seconds / 360) / 10) + " h";
  }

  function clock(t) {       // UTC, "11-26 01:02"
    return new Date(t * 1000).toISOString().slice(5, 16).replace("T", " ");
  }

  // A round step for about `count` ticks from 0 to `top`.
  function tickStep(top, count) {
    var raw = Math.max(top, 1) / count;
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * power >= raw) return Math.max(1, steps[i] * power);
    }
    return 10 * power;
  }

  function yAxis(svg, top, format) {
    var step = tickStep(top, 4);
    var max = Math.max(step, Math.ceil(top / step) * step);
    for (var v = 0; v <= max + 1e-9; v += step) {
      var y = M.top + PH - (v / max) * PH;
      svg.appendChild(el("line", { x1: M.left, x2: M.left + PW, y1: num(y), y2: num(y),
                                   "class": v === 0 ? "axis" : "grid" }));
      svg.appendChild(el("text", { x: M.left - 6, y: num(y + 4), "class": "tick end" },
                         format ? format(v) : v));
    }
    return max;
  }

  function empty(svg, message) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "class": "empty middle" }, message));
  }

  // --- the charts ---------------------------------------------------------------------------

  function drawTimeline(svg, timeline) {
    clear(svg);
    var points = timeline.points || [];
    if (!points.length) { empty(svg, "No participant has entered yet."); return; }
    var top = 1;
    points.forEach(function (p) { top = Math.max(top, p.completed, p.active); });
    var max = yAxis(svg, top);
    var t0 = timeline.start, span = Math.max(timeline.end - t0, 1e-9);
    var x = function (t) { return M.left + ((t - t0) / span) * PW; };
    var y = function (v) { return M.top + PH - (v / max) * PH; };
    ["completed", "active"].forEach(function (key) {
      var d = "M" + num(x(t0)) + " " + num(y(0));
      points.forEach(function (p) { d += " L" + num(x(p.t)) + " " + num(y(p[key])); });
      var last = points[points.length - 1][key];
      svg.appendChild(titled(el("path", { d: d, "class": "line " + key, "data-series": key }),
                             key + ": " + last + " now"));
    });
    svg.appendChild(el("text", { x: M.left, y: H - M.bottom + 16, "class": "tick" },
                       clock(t0) + " UTC"));
    svg.appendChild(el("text", { x: M.left + PW, y: H - M.bottom + 16, "class": "tick end" },
                       clock(timeline.end) + " UTC"));
    var last = points[points.length - 1];
    svg.appendChild(el("text", { x: M.left + 4, y: H - 6, "class": "legend completed" },
                       "completed (" + last.completed + ")"));
    svg.appendChild(el("text", { x: M.left + 170, y: H - 6, "class": "legend active" },
                       "active (" + last.active + ")"));
  }

  function drawLayers(svg, layers) {
    clear(svg);
    if (!layers.length) { empty(svg, "The study has no layers."); return; }
    yAxis(svg, 1, function (v) { return Math.round(v * 100) + "%"; });
    var slot = PW / layers.length, width = Math.min(60, slot * 0.6);
    var y = function (v) { return M.top + PH - v * PH; };
    layers.forEach(function (layer, i) {
      var cx = M.left + slot * (i + 0.5);
      var label = layer.layer + ": " + (layer.rate === null ? "no answers yet"
        : pct(layer.rate) + " yes of " + layer.n + " (95% " + pct(layer.low) + "–" +
          pct(layer.high) + ")");
      if (layer.rate !== null) {
        svg.appendChild(titled(el("rect", {
          x: num(cx - width / 2), y: num(y(layer.rate)), width: num(width),
          height: num(Math.max(0, PH - (y(layer.rate) - M.top))), "class": "bar",
          "data-layer": layer.layer, "data-rate": layer.rate, "data-n": layer.n }), label));
        var lo = y(layer.low), hi = y(layer.high), cap = width / 4;
        svg.appendChild(titled(el("path", {
          d: "M" + num(cx) + " " + num(lo) + " V" + num(hi) +
             " M" + num(cx - cap) + " " + num(lo) + " H" + num(cx + cap) +
             " M" + num(cx - cap) + " " + num(hi) + " H" + num(cx + cap),
          "class": "whisker", "data-layer": layer.layer }), label));
        svg.appendChild(el("text", { x: num(cx), y: num(hi - 5), "class": "value middle" },
                           pct(layer.rate)));
      } else {
        svg.appendChild(titled(el("rect", {
          x: num(cx - width / 2), y: M.top + PH, width: num(width), height: 0,
          "class": "bar none", "data-layer": layer.layer, "data-n": 0 }), label));
      }
      svg.appendChild(el("text", { x: num(cx), y: H - M.bottom + 16, "class": "tick middle" },
                         layer.layer));
      svg.appendChild(el("text", { x: num(cx), y: H - M.bottom + 30, "class": "tick middle" },
                         "n = " + layer.n));
    });
  }

  function drawLists(svg, lists) {
    clear(svg);
    if (!lists.length) { empty(svg, "The study has no lists."); return; }
    var top = 1;
    lists.forEach(function (l) { top = Math.max(top, l.target, l.completed + l.active); });
    var max = yAxis(svg, top);
    var slot = PW / lists.length, width = Math.max(1, Math.min(40, slot * 0.7));
    var h = function (v) { return (v / max) * PH; };
    var base = M.top + PH;
    var labelEvery = Math.ceil(lists.length / 30);
    lists.forEach(function (l, i) {
      var x0 = M.left + slot * (i + 0.5) - width / 2;
      var label = "list " + l.id + ": " + l.completed + " completed (" + l.excluded +
                  " excluded), " + l.active + " active, target " + l.target;
      var g = titled(el("g", { "class": "list", "data-list": l.id }), label);
      g.appendChild(el("rect", { x: num(x0), y: num(base - h(l.target)), width: num(width),
                                 height: num(h(l.target)), "class": "target" }));
      g.appendChild(el("rect", { x: num(x0), y: num(base - h(l.completed)), width: num(width),
                                 height: num(h(l.completed)), "class": "fill completed",
                                 "data-value": l.completed }));
      g.appendChild(el("rect", { x: num(x0), y: num(base - h(l.completed + l.active)),
                                 width: num(width), height: num(h(l.active)),
                                 "class": "fill active", "data-value": l.active }));
      g.appendChild(el("rect", { x: num(x0), y: num(base - h(l.excluded)), width: num(width),
                                 height: num(h(l.excluded)), "class": "fill excluded",
                                 "data-value": l.excluded }));
      svg.appendChild(g);
      if (i % labelEvery === 0) {
        svg.appendChild(el("text", { x: num(x0 + width / 2), y: H - M.bottom + 16,
                                     "class": "tick middle" }, l.id));
      }
    });
    svg.appendChild(el("text", { x: M.left + 4, y: H - 6, "class": "legend completed" },
                       "completed"));
    svg.appendChild(el("text", { x: M.left + 110, y: H - 6, "class": "legend active" },
                       "active"));
    svg.appendChild(el("text", { x: M.left + 190, y: H - 6, "class": "legend excluded" },
                       "excluded"));
    svg.appendChild(el("text", { x: M.left + 290, y: H - 6, "class": "legend target" },
                       "target"));
  }

  // --- the tables ---------------------------------------------------------------------------

  function setText(node, text) {
    if (node && node.textContent !== String(text)) node.textContent = String(text);
  }

  function updateTotals(totals) {
    var row = document.getElementById("totals");
    if (!row) return;
    var values = [totals.target, totals.completed, totals.active, totals.expired,
                  totals.ended, totals.declined, ago(totals.median_duration_s),
                  totals.excluded];
    for (var i = 0; i < values.length && i < row.cells.length; i++) {
      setText(row.cells[i], values[i]);
    }
  }

  function updateLists(lists) {
    lists.forEach(function (l) {
      var row = document.getElementById("l" + l.id);
      if (!row) return;
      setText(row.querySelector(".completed"), l.completed);
      setText(row.querySelector(".active"), l.active);
      setText(row.querySelector(".excluded"), l.excluded);
      row.classList.toggle("full", !l.open);
    });
  }

  function updateParticipants(people) {
    people.forEach(function (p) {
      var row = document.getElementById("p" + p.id);
      if (!row) return;
      row.classList.toggle("stale", !!p.stale);
      setText(row.querySelector(".progress"), p.n_answered + " / " + p.n_trials);
      setText(row.querySelector(".status"), p.status.replace("_", " "));
      setText(row.querySelector(".catch"), p.catch_total
        ? p.catch_passed + " / " + p.catch_total + " (" + pct(p.catch_rate) + ")" : "–");
      setText(row.querySelector(".rt"),
              p.median_rt_ms === null ? "–" : Math.round(p.median_rt_ms) + " ms");
      var cell = row.querySelector(".exclusion");
      if (cell) {
        setText(cell, p.exclusion + (p.reasons.length ? " (" + p.reasons.join(", ") + ")" : ""));
        ["excluded", "kept", "pending"].forEach(function (k) {
          cell.classList.toggle(k, p.exclusion === k);
        });
        cell.setAttribute("title", p.manual_reason || "");
      }
    });
  }

  // --- refreshing ---------------------------------------------------------------------------

  function say(text) { setText(note, text); }

  function draw(data) {
    drawTimeline(document.getElementById("chart-timeline"), data.timeline);
    drawLayers(document.getElementById("chart-layers"), data.layers);
    drawLists(document.getElementById("chart-lists"), data.lists);
    updateTotals(data.totals);
    updateLists(data.lists);
    updateParticipants(data.participants);
    say(data.total !== shownTotal
      ? data.total + " participants match this view now (" + shownTotal + " when the page " +
        "was loaded): reload it to list them."
      : "");
    updates += 1;
    root.setAttribute("data-generated-at", String(data.generated_at));
    root.setAttribute("data-updated", String(updates));
  }

  function schedule(ms) {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }

  function refresh() {
    timer = null;
    if (document.hidden) { schedule(every); return; }   // again when it is shown
    var started = Date.now();
    fetch(source, { credentials: "same-origin", cache: "no-store",
                    headers: { Accept: "application/json" } })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (response.redirected || type.indexOf("application/json") !== 0) {
          throw new Error("session");
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        failures = 0;
        draw(data);
        // A slow answer (a large study on a busy server): ask less often, so that one
        // open dashboard never keeps the server more than a fifth of the time busy.
        schedule(Math.max(every, 4 * (Date.now() - started)));
      })
      .catch(function (error) {
        if (error.message === "session") {
          say("Your session has ended: reload the page to log in again.");
          return;                                       // no point in asking again
        }
        failures += 1;
        say("The figures could not be refreshed (" + error.message + "); trying again.");
        schedule(Math.min(every * Math.pow(2, failures), 60000));
      });
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer !== null) schedule(0);
  });
  refresh();
})();
