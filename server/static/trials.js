// The trial page. The server holds all state: this script asks where the participant
// stands (GET /api/state), shows one panel at a time, and stores each answer
// (POST /api/responses) before moving on. An answer that cannot be sent is kept (also in
// localStorage, so a reload does not lose it) and retried with backoff until it is stored.
//
// While a panel is on screen (from image onset to the answer's submission) the page also
// records, and sends with the answer: how long the page was hidden (another tab or a
// minimised window: document.visibilitychange), how often the window lost the focus
// (window blur), whether text was pasted into the answer box, and whether yes / no was
// chosen with the keyboard (Y / N, or Enter / Space on a button) or by pointing (mouse,
// touch or pen). Nothing else: no key strokes, no pasted text, no mouse movements.
(function () {
  "use strict";
  var app = document.getElementById("app");
  var $ = function (id) { return document.getElementById(id); };
  var img = $("panel"), ask = $("ask"), textForm = $("text-form"), input = $("object-text");
  var network = $("network"), progress = $("progress"), loading = $("loading");
  var intermission = $("intermission");
  var PENDING = "study-pending-answer";

  var state = null;     // from the server
  var index = 0;        // the trial on screen
  var onset = null;     // performance.now() at image onset
  var shownAt = null;   // Date.now() at image onset
  var yesAt = null;     // performance.now() when "yes" was chosen
  var phase = "idle";   // idle | ask | text | sending | intermission
  var track = null;     // this trial's interaction record (startTracking)
  var pointer = "";     // the pointerType of the last pointerdown
  var preloaded = {};

  function show(el, on) { el.hidden = !on; }

  // --- what the page records while a panel is shown (docs/study-design.md) ----------------
  // The server's bounds (server/api.py): a legitimate answer never exceeds them.
  var MAX_HIDDEN_MS = 24 * 3600 * 1000, MAX_FOCUS_LOSSES = 100000;

  function tracking() { return track !== null && (phase === "ask" || phase === "text"); }

  function startTracking() {
    track = { hiddenMs: 0, hiddenSince: document.hidden ? performance.now() : null,
              focusLosses: 0, pasted: false, input: null };
  }

  function tracked() {
    var hidden = track.hiddenMs;
    if (track.hiddenSince !== null) hidden += performance.now() - track.hiddenSince;
    return { hidden_ms: Math.min(MAX_HIDDEN_MS, Math.round(hidden)),
             focus_losses: Math.min(MAX_FOCUS_LOSSES, track.focusLosses),
             pasted: track.pasted, answer_input: track.input };
  }

  document.addEventListener("visibilitychange", function () {
    if (!tracking()) return;
    if (document.hidden) {
      if (track.hiddenSince === null) track.hiddenSince = performance.now();
    } else if (track.hiddenSince !== null) {
      track.hiddenMs += performance.now() - track.hiddenSince;
      track.hiddenSince = null;
    }
  });
  window.addEventListener("blur", function (event) {
    // the window's own blur (another window or tab took the focus), not an element's
    if (event.target === window && tracking()) track.focusLosses += 1;
  });
  document.addEventListener("pointerdown", function (event) { pointer = event.pointerType || ""; },
                            true);

  // How a yes / no button was pressed: a click with no pointer behind it (detail 0: Enter or
  // Space on the focused button) is the keyboard; otherwise the pointer's type (the click's
  // own, else the last pointerdown's, for browsers whose click is a plain MouseEvent).
  function clickInput(event) {
    if (event.detail === 0) return "key";
    var type = event.pointerType || pointer;
    return type === "touch" || type === "pen" ? type : "mouse";
  }

  function preload(i) {
    if (!state || i >= state.n_trials || preloaded[i]) return;
    var im = new Image();
    im.src = state.trials[i].image;
    preloaded[i] = im;
  }

  function label(i) {
    var t = state.trials[i];
    if (t.practice) return "Practice panel " + (i + 1) + " of " + state.n_practice;
    return "Panel " + (i - state.n_practice + 1) + " of " + (state.n_trials - state.n_practice);
  }

  function present(i) {
    index = i;
    if (i >= state.n_trials) { window.location.assign(state.done_url); return; }
    if (i === state.n_practice && i > 0 && phase !== "intermission-done") {
      phase = "intermission";
      show(img, false); show(ask, false); show(textForm, false); show(loading, false);
      show(intermission, true);
      progress.textContent = "";
      $("begin").focus();
      return;
    }
    phase = "idle";
    show(intermission, false); show(ask, false); show(textForm, false); show(loading, true);
    progress.textContent = label(i);
    img.hidden = true;
    img.onload = function () {
      img.hidden = false;
      show(loading, false);
      onset = performance.now();
      shownAt = Date.now();
      yesAt = null;
      input.value = "";
      startTracking();
      show(ask, true);
      phase = "ask";
      $("yes").focus();
      preload(i + 1);
      preload(i + 2);
    };
    img.onerror = function () {
      network.textContent = "The image could not be loaded; retrying…";
      show(network, true);
      setTimeout(function () { img.src = state.trials[i].image + "?retry=" + Date.now(); }, 2000);
    };
    img.src = state.trials[i].image;
  }

  function answer(yes, how) {
    if (phase !== "ask") return;
    var rt = Math.round(performance.now() - onset);
    track.input = how;
    if (!yes) { submit({ answer_yes: false, object_text: null, rt_answer_ms: rt, rt_text_ms: null }); return; }
    yesAt = performance.now();
    ask.dataset.rt = rt;
    show(ask, false); show(textForm, true);
    phase = "text";
    input.focus();
  }

  function submitText(event) {
    event.preventDefault();
    if (phase !== "text") return;
    var text = input.value.replace(/\s+/g, " ").trim();
    if (!text) { show($("text-error"), true); input.focus(); return; }
    show($("text-error"), false);
    submit({ answer_yes: true, object_text: text.slice(0, Number(app.dataset.textMax)),
             rt_answer_ms: Number(ask.dataset.rt), rt_text_ms: Math.round(performance.now() - yesAt) });
  }

  function submit(fields) {
    phase = "sending";
    show(ask, false); show(textForm, false);
    var body = Object.assign({ trial_index: index, panel_id: state.trials[index].panel_id,
                               shown_at: shownAt, client_answered_at: Date.now() },
                             tracked(), fields);
    try { localStorage.setItem(PENDING, JSON.stringify(body)); } catch (e) { /* private mode */ }
    send(body, 0);
  }

  function send(body, attempt) {
    fetch(app.dataset.respond, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": app.dataset.csrf },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) { return [r, data]; });
    }).then(function (pair) {
      var r = pair[0], data = pair[1];
      if (r.ok) {
        try { localStorage.removeItem(PENDING); } catch (e) { /* ignore */ }
        show(network, false);
        if (data.done) { window.location.assign(data.next); return; }
        present(data.next_index);
        return;
      }
      if (r.status >= 500 || r.status === 429) throw new Error("server " + r.status);
      // 4xx: the answer cannot be taken as it is (session ended, out of order): start over
      // from the server's state, which says where this participant stands.
      try { localStorage.removeItem(PENDING); } catch (e) { /* ignore */ }
      network.textContent = (data.error || "The answer was refused.") + " Reloading…";
      show(network, true);
      setTimeout(function () { window.location.reload(); }, 1500);
    }).catch(function () {
      var wait = Math.min(30, Math.pow(2, attempt));
      network.textContent = "Connection problem: your answer is kept and will be sent again in " +
        wait + " s. Please keep this page open.";
      show(network, true);
      setTimeout(function () { send(body, attempt + 1); }, wait * 1000);
    });
  }

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    var key = event.key.toLowerCase();
    if (phase === "ask" && (key === "y" || key === "n")) {
      event.preventDefault();
      answer(key === "y", "key");
    } else if (phase === "intermission" && (key === "enter" || key === " ")) {
      event.preventDefault();
      begin();
    }
  });
  $("yes").addEventListener("click", function (event) { answer(true, clickInput(event)); });
  $("no").addEventListener("click", function (event) { answer(false, clickInput(event)); });
  input.addEventListener("paste", function () { if (tracking()) track.pasted = true; });
  textForm.addEventListener("submit", submitText);
  function begin() { show(intermission, false); phase = "intermission-done"; present(index); }
  $("begin").addEventListener("click", begin);

  function start() {
    fetch(app.dataset.state, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status >= 400 && r.status < 500) {
          // Not at the trials (session ended, expired, or another step first): the study
          // page knows where this participant belongs.
          window.location.assign(app.dataset.study);
          return new Promise(function () {});
        }
        if (!r.ok) throw new Error("state " + r.status);
        return r.json();
      })
      .then(function (data) {
        state = data;
        show(network, false);
        var pending = null;
        try { pending = JSON.parse(localStorage.getItem(PENDING) || "null"); } catch (e) { pending = null; }
        if (pending && pending.trial_index === state.next_index &&
            state.trials[pending.trial_index] &&
            state.trials[pending.trial_index].panel_id === pending.panel_id) {
          index = pending.trial_index;
          phase = "sending";
          show(loading, true);
          send(pending, 0);
          return;
        }
        try { localStorage.removeItem(PENDING); } catch (e) { /* ignore */ }
        if (state.next_index >= state.n_trials) { window.location.assign(state.done_url); return; }
        preload(state.next_index);
        if (state.next_index > state.n_practice) phase = "intermission-done";
        present(state.next_index);
      })
      .catch(function () {
        network.textContent = "Cannot reach the server; trying again…";
        show(network, true);
        setTimeout(start, 3000);
      });
  }
  start();
})();
