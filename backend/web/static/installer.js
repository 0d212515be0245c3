/* The installer page: tabs (a map is drawn only when its tab is first shown: Leaflet cannot size a hidden one),
   and the self-test view: a station's latest runs, new steps appearing as the gateway reports them
   (server-sent events). */
(function () {
  "use strict";
  var BG = window.BG, t = BG.t, esc = BG.esc;

  var select = document.getElementById("selftest-station");
  var view = null;

  function showTab(name) {
    document.querySelectorAll(".bg-tab").forEach(function (x) { x.classList.toggle("current", x.dataset.tab === name); });
    document.querySelectorAll(".bg-tab-panel").forEach(function (p) { p.hidden = p.id !== "tab-" + name; });
    var frame = document.querySelector("#tab-" + name + " iframe[data-src]");
    if (frame && !frame.getAttribute("src")) { frame.setAttribute("src", frame.dataset.src); }
    // The self-test view listens only while it is shown (each listener holds a database connection).
    if (select && name === "selftest" && !view) { follow(select.value); }
    if (select && name !== "selftest" && view) { view.source.close(); view = null; }
  }
  document.querySelectorAll(".bg-tab").forEach(function (tab) {
    tab.addEventListener("click", function () { showTab(tab.dataset.tab); });
  });
  var wanted = BG.config.selftest_station;
  if (!select || !(wanted || window.location.hash === "#selftest")) { showTab("stations"); }

  // The gateway's steps in order: those not reported yet show as waiting while a run goes on.
  var STEP_NAMES = ["serial", "module", "noise", "test_tag", "clock", "broker", "heartbeat", "backend"];
  var MARKS = { pass: "✓", warn: "!", fail: "✗", skip: "–", wait: "" };
  // A run without a summary whose last step came longer ago than this did not finish (the gateway was stopped).
  var QUIET_MS = 120000;
  if (!select) { return; }

  function stationUrl(id) { return "/api/stations/" + encodeURIComponent(id); }

  function follow(id) {
    if (view && view.source) { view.source.close(); }
    view = { station: id, runs: [], lifecycle: null, from: null, commissionedBy: null, fresh: {} };
    select.value = id;
    document.getElementById("selftest-command").textContent = "bikeguard gateway selftest --station-id " + id + " …";
    var option = select.options[select.selectedIndex];
    view.lifecycle = option ? option.dataset.lifecycle : null;
    render();
    var mine = view;
    var source = new EventSource(stationUrl(id) + "/selftests/live");
    mine.source = source;
    // "ready" comes once the server listens: loading now misses nothing (and after a reconnect, catches up).
    source.addEventListener("ready", function () { live(true); load(mine); });
    source.addEventListener("step", function (ev) {
      var step = JSON.parse(ev.data);
      mine.fresh[step.run_id + "/" + step.seq] = true;
      merge(mine, { run_id: step.run_id, station_id: step.station_id, received_at: step.received_at, steps: [step] });
      if (mine === view) { render(); }
    });
    // A step has begun (the gateway announces each): show which one the station is doing now, e.g. waiting for the
    // test tag, before its result comes.
    source.addEventListener("started", function (ev) {
      var step = JSON.parse(ev.data);
      merge(mine, { run_id: step.run_id, station_id: step.station_id, received_at: step.at, steps: [] });
      var run = mine.runs.filter(function (r) { return r.run_id === step.run_id; })[0];
      run.current = { seq: step.seq, name: step.name, wait_s: step.wait_s, seen: Date.now() };
      if (mine === view) { render(); }
    });
    source.addEventListener("run", function (ev) { merge(mine, JSON.parse(ev.data)); if (mine === view) { render(); } });
    source.addEventListener("station", function (ev) {
      lifecycleFrom(mine, JSON.parse(ev.data));
      if (mine === view) { render(); }
    });
    source.addEventListener("signed-out", function () {
      source.close();
      var badge = document.getElementById("selftest-live");
      badge.classList.remove("on");
      badge.innerHTML = '<a href="/login?next=' + encodeURIComponent("/installer#selftest") + '">' +
        esc(t("st_signed_out")) + "</a>";
    });
    source.onerror = function () { if (mine === view) { live(false); } };
  }

  function load(mine) {
    Promise.all([
      BG.api("GET", stationUrl(mine.station) + "/selftests?limit=5"),
      BG.api("GET", stationUrl(mine.station))
    ]).then(function (replies) {
      if (replies[0].ok) { replies[0].data.forEach(function (run) { merge(mine, run); }); }
      if (replies[1].ok) { lifecycleFrom(mine, replies[1].data); }
      if (mine === view) { render(); }
    });
  }

  function live(on) {
    var badge = document.getElementById("selftest-live");
    badge.classList.toggle("on", on);
    badge.textContent = on ? t("st_live") : t("st_reconnecting");
  }

  /* Fold a run (or part of one) into the view: runs by run_id, steps by seq, newest run first. */
  function merge(v, run) {
    var known = v.runs.filter(function (r) { return r.run_id === run.run_id; })[0];
    if (!known) {
      known = { run_id: run.run_id, station_id: run.station_id, received_at: run.received_at, steps: [] };
      v.runs.push(known);
    }
    ["started_at", "result", "finished_at", "steps_total", "counts"].forEach(function (k) {
      if (run[k] !== undefined && run[k] !== null) { known[k] = run[k]; }
    });
    if (run.received_at && (!known.received_at || ms(run.received_at) < ms(known.received_at))) {
      known.received_at = run.received_at;
    }
    (run.steps || []).forEach(function (step) {
      known.steps = known.steps.filter(function (s) { return s.seq !== step.seq; }).concat([step]);
    });
    known.steps.sort(function (a, b) { return a.seq - b.seq; });
    v.runs.sort(function (a, b) { return ms(b.received_at) - ms(a.received_at); });
  }

  function ms(iso) { return new Date(iso).getTime(); }

  /* The station's life cycle, and which run commissioned it (its history says "self-test <run_id>"). */
  function lifecycleFrom(v, station) {
    v.lifecycle = station.lifecycle;
    (station.history || []).forEach(function (h) {
      if (h.to_state === "commissioned" && /^self-test /.test(h.changed_by || "")) {
        v.commissionedBy = h.changed_by.slice("self-test ".length);
        v.from = h.from_state;
      }
    });
    var option = select.querySelector('option[value="' + v.station + '"]');
    if (option) { option.dataset.lifecycle = station.lifecycle; }
    var cell = document.querySelector('#station-table tr[data-station="' + v.station + '"] .bg-lifecycle');
    if (cell) { cell.textContent = t("lc_" + station.lifecycle); }
  }

  function stepTitle(step) {
    var key = "st_step_" + step.name;
    return t(key) !== key ? t(key) : (step.title || step.name);
  }

  function counts(run) {
    return ["pass", "warn", "fail", "skip"].filter(function (k) { return run.counts && run.counts[k]; })
      .map(function (k) { return t("st_n_" + k, { n: run.counts[k] }); }).join(" · ");
  }

  function stepRow(step, fresh) {
    var chips = "";
    if (step.rssi_dbm !== null && step.rssi_dbm !== undefined) {
      chips += '<span class="bg-chip">' + esc(t("st_rssi", { v: step.rssi_dbm })) + "</span>";
    }
    if (step.noise_floor_dbm !== null && step.noise_floor_dbm !== undefined) {
      chips += '<span class="bg-chip">' + esc(t("st_noise", { v: step.noise_floor_dbm })) + "</span>";
    }
    var advice = step.advice && step.status !== "pass"
      ? '<div class="bg-step-advice"><b>' + esc(t("st_advice")) + "</b> " + esc(step.advice) + "</div>" : "";
    return '<li class="bg-step bg-step-' + step.status + (fresh ? " bg-step-new" : "") + '" data-seq="' + step.seq +
      '" data-status="' + step.status + '">' +
      '<span class="bg-step-mark" aria-hidden="true">' + MARKS[step.status] + "</span>" +
      '<div class="bg-step-body"><div class="bg-step-line"><b>' + step.seq + ". " + esc(stepTitle(step)) + "</b>" +
      '<span class="bg-step-status">' + esc(t("st_status_" + step.status)) + "</span>" + chips +
      (step.elapsed_s >= 0.1 ? '<span class="bg-step-time">' + step.elapsed_s.toFixed(1) + " s</span>" : "") +
      "</div>" + '<div class="bg-step-msg">' + esc(step.message) + "</div>" + advice + "</div></li>";
  }

  /* What the step now running is doing: the test tag step waits for the installer to hold the tag up. */
  function runningText(name, current) {
    if (name !== "test_tag") { return t("st_running"); }
    var s = current && current.name === name ? current.wait_s : null;
    return s ? t("st_waiting_tag_s", { s: Math.round(s) }) : t("st_waiting_tag");
  }

  function waitingRow(seq, name, next, current) {
    return '<li class="bg-step bg-step-wait' + (next ? " bg-step-next" : "") + '" data-step="' + name + '">' +
      '<span class="bg-step-mark" aria-hidden="true"></span><div class="bg-step-body"><div class="bg-step-line"><b>' +
      seq + ". " + esc(t("st_step_" + name)) + '</b><span class="bg-step-status">' +
      esc(next ? runningText(name, current) : t("st_waiting")) + "</span></div></div></li>";
  }

  function runState(run, latest) {
    if (run.result) { return run.result; }
    var last = run.steps.length ? ms(run.steps[run.steps.length - 1].received_at) : ms(run.received_at);
    if (run.current) { last = Math.max(last, run.current.seen); }  // a step begun is news too
    return latest && Date.now() - last < QUIET_MS ? "running" : "unfinished";
  }

  function outcome(v, run, state) {
    if (v.commissionedBy === run.run_id) {
      return '<p class="bg-banner bg-run-commissioned">✓ ' + esc(t("st_commissioned", {
        from: t("lc_" + (v.from || "installed")), to: t("lc_commissioned") })) + "</p>";
    }
    if (state === "failed" && v.lifecycle === "installed") {
      return '<p class="bg-banner bad">' + esc(t("st_not_commissioned", { lc: t("lc_installed") })) + "</p>";
    }
    if (state === "passed" && v.lifecycle && v.lifecycle !== "installed") {
      return '<p class="bg-banner">' + esc(t("st_not_installed", { lc: t("lc_" + v.lifecycle) })) + "</p>";
    }
    return "";
  }

  function runCard(v, run, latest) {
    var state = runState(run, latest);
    var total = run.steps_total || Math.max(STEP_NAMES.length, run.steps.length);
    var rows = run.steps.map(function (s) { return stepRow(s, v.fresh[run.run_id + "/" + s.seq]); });
    if (state === "running") {
      var seen = run.steps.map(function (s) { return s.name; });
      var current = run.current && seen.indexOf(run.current.name) < 0 ? run.current : null;
      STEP_NAMES.filter(function (n) { return seen.indexOf(n) < 0; }).forEach(function (name, i) {
        // The step the gateway says it began is the one running; without word from it, the next in order.
        var next = current ? name === current.name : i === 0;
        rows.push(waitingRow(run.steps.length + i + 1, name, next, current));
      });
    }
    var started = run.started_at || (run.steps[0] && run.steps[0].at);
    var done = Math.min(run.steps.length, total);
    return '<article class="bg-card bg-run bg-run-' + state + '" data-run="' + esc(run.run_id) + '">' +
      '<header class="bg-run-head"><h2>' + esc(t("st_run")) + ' <span class="bg-mono bg-muted">' +
      esc(run.run_id.slice(0, 8)) + "</span></h2>" +
      '<span class="bg-run-badge">' + esc(t("st_" + state)) + "</span>" +
      '<span class="bg-muted">' + esc(started ? t("st_started", { t: BG.time(started) }) : "") + "</span>" +
      '<span class="bg-run-counts">' + esc(run.result ? counts(run) : t("st_steps_done", { n: done, total: total })) +
      "</span></header>" +
      '<div class="bg-progress"><span style="width:' + Math.round(100 * done / total) + '%"></span></div>' +
      outcome(v, run, state) + '<ol class="bg-steps">' + rows.join("") + "</ol></article>";
  }

  function earlierRun(v, run) {
    var state = runState(run, false);
    return '<details class="bg-run-earlier bg-run-' + state + '" data-run="' + esc(run.run_id) + '"><summary><span class="bg-run-badge">' +
      esc(t("st_" + state)) + "</span> " + esc(BG.time(run.started_at || run.received_at)) +
      ' <span class="bg-mono bg-muted">' + esc(run.run_id.slice(0, 8)) + '</span> <span class="bg-muted">' +
      esc(counts(run)) + "</span></summary>" + outcome(v, run, state) + '<ol class="bg-steps">' +
      run.steps.map(function (s) { return stepRow(s, false); }).join("") + "</ol></details>";
  }

  function render() {
    var v = view;
    var badge = document.getElementById("selftest-lifecycle");
    badge.textContent = v.lifecycle ? t("lc_" + v.lifecycle) : "";
    badge.className = "bg-lc bg-lc-" + (v.lifecycle || "unknown");
    var open = {};
    document.querySelectorAll("#selftest-runs details[open]").forEach(function (d) { open[d.dataset.run] = true; });
    var html = v.runs.length ? runCard(v, v.runs[0], true) : "";
    if (v.runs.length > 1) {
      html += '<section class="bg-card bg-runs-earlier"><h3>' + esc(t("st_earlier")) + "</h3>" +
        v.runs.slice(1).map(function (r) { return earlierRun(v, r); }).join("") + "</section>";
    }
    var box = document.getElementById("selftest-runs");
    box.innerHTML = html;
    box.querySelectorAll("details.bg-run-earlier").forEach(function (d) { d.open = !!open[d.dataset.run]; });
    document.getElementById("selftest-empty").hidden = v.runs.length > 0;
    v.fresh = {};
  }

  select.addEventListener("change", function () { follow(select.value); });
  document.querySelectorAll(".bg-selftest-link").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      ev.preventDefault();
      select.value = a.dataset.station;
      if (view) { follow(a.dataset.station); } else { showTab("selftest"); }
      history.replaceState(null, "", "?station=" + encodeURIComponent(a.dataset.station) + "#selftest");
    });
  });
  // A running self-test turns "did not finish" after a quiet while: look again now and then.
  setInterval(function () { if (view && view.runs.length && !view.runs[0].result) { render(); } }, 15000);

  var options = Array.prototype.slice.call(select.options);
  var first = options.filter(function (o) { return o.value === wanted; })[0] ||
    options.filter(function (o) { return o.dataset.lifecycle === "installed"; })[0] || options[0];
  select.value = first.value;
  if (wanted || window.location.hash === "#selftest") { showTab("selftest"); }
})();

// Open station alarms: acknowledge or clear, then show the page again.
(function () {
  document.querySelectorAll("[data-alarm-act]").forEach(function (button) {
    button.addEventListener("click", function () {
      var item = button.closest("[data-alarm-id]");
      button.disabled = true;
      BG.api("POST", "/api/alarms/" + item.dataset.alarmId + "/" + button.dataset.alarmAct).then(function (r) {
        if (r.ok) { window.location.reload(); return; }
        button.disabled = false;
        document.getElementById("station-alarms-note").textContent = r.message;
      });
    });
  });
})();

// Moments the server wrote in UTC, shown in the reader's own time zone (BG.time), as on the other pages.
(function () {
  document.querySelectorAll("time.bg-when").forEach(function (el) {
    el.textContent = BG.time(el.getAttribute("datetime")) || el.textContent;
  });
})();

/* Registering a station (placed by a click on the station map), marking a planned one installed, issuing its MQTT
   password: shown once, in a dialog, with copy buttons. */
(function () {
  "use strict";
  var BG = window.BG, t = BG.t;
  var form = document.getElementById("register-form");
  if (!form) { return; }
  var details = document.getElementById("register-details");
  var ID_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;  // protocol.ids.STATION_ID_PATTERN
  var pin = null;  // the new station's marker on the station map

  function val(id) { return document.getElementById(id).value.trim(); }
  function number(id) { var v = val(id).replace(",", "."); return v === "" ? NaN : Number(v); }

  function check() {
    var ok = true, id = val("reg-id"), lat = number("reg-lat"), lon = number("reg-lon");
    if (!ID_RE.test(id)) { BG.mark("reg-id", id ? "bad" : "info", id ? t("reg_id_bad") : t("reg_id_hint")); ok = false; }
    else if (document.querySelector('#station-table tr[data-station="' + id + '"]')) {
      BG.mark("reg-id", "bad", t("reg_exists", { id: id })); ok = false;  // the server would refuse it too (409)
    } else { BG.mark("reg-id", "ok", ""); }
    if (!val("reg-name")) { BG.mark("reg-name", "bad", t("reg_name_missing")); ok = false; } else { BG.mark("reg-name", "ok", ""); }
    if (!(lat >= -90 && lat <= 90)) { BG.mark("reg-lat", "bad", t("reg_lat_bad")); ok = false; } else { BG.mark("reg-lat", "ok", ""); }
    if (!(lon >= -180 && lon <= 180)) { BG.mark("reg-lon", "bad", t("reg_lon_bad")); ok = false; } else { BG.mark("reg-lon", "ok", ""); }
    return ok;
  }

  /* The Leaflet map inside the station map's frame (same origin): folium names it map_<hash>. */
  function stationMap() {
    var frame = document.getElementById("station-map");
    var win = frame && frame.contentWindow;
    if (!win || !win.L) { return null; }
    var name = Object.keys(win).filter(function (k) { return /^map_/.test(k) && win[k] instanceof win.L.Map; })[0];
    return name ? { win: win, map: win[name] } : null;
  }

  function placePin(lat, lon) {
    var found = stationMap();
    if (!found || !(lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180)) { return; }
    if (!pin) {
      pin = found.win.L.circleMarker([lat, lon], {
        radius: 10, color: "#1d4ed8", weight: 3, dashArray: "4 3", fillColor: "#dbeafe", fillOpacity: 0.9
      }).addTo(found.map);
      pin.bindTooltip(t("reg_here"), { permanent: true, direction: "top", offset: [0, -10], className: "bg-new-station" });
    } else { pin.setLatLng([lat, lon]); }
  }

  function listenToMap() {
    var found = stationMap();
    if (!found) { return; }
    found.map.on("click", function (ev) {
      if (!details.open) { return; }
      document.getElementById("reg-lat").value = ev.latlng.lat.toFixed(6);
      document.getElementById("reg-lon").value = ev.latlng.lng.toFixed(6);
      placePin(ev.latlng.lat, ev.latlng.lng);
      BG.mark("reg-lat", "ok", ""); BG.mark("reg-lon", "ok", "");
    });
    details.addEventListener("toggle", function () {
      found.map.getContainer().style.cursor = details.open ? "crosshair" : "";
    });
  }
  var frame = document.getElementById("station-map");
  frame.addEventListener("load", listenToMap);
  if (frame.contentDocument && frame.contentDocument.readyState === "complete") { listenToMap(); }

  ["reg-lat", "reg-lon"].forEach(function (id) {
    document.getElementById(id).addEventListener("change", function () { placePin(number("reg-lat"), number("reg-lon")); });
  });

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var error = document.getElementById("register-error");
    error.hidden = true;
    if (!check()) { return; }
    var body = { station_id: val("reg-id"), name: val("reg-name"), lat: number("reg-lat"), lon: number("reg-lon") };
    if (val("reg-address")) { body.address = val("reg-address"); }
    var button = document.getElementById("register-submit");
    button.disabled = true;
    BG.api("POST", "/api/stations", body).then(function (r) {
      button.disabled = false;
      if (r.ok) {
        // Shown again with the new station in its table and on its map; the banner says what comes next.
        var u = new URL(window.location.href);
        u.searchParams.set("registered", body.station_id);
        u.hash = "";
        window.location.href = u.toString();
        return;
      }
      error.textContent = r.status === 409 ? t("reg_exists", { id: body.station_id }) : t("reg_failed", { msg: r.message });
      error.hidden = false;
    });
  });

  var registered = new URL(window.location.href).searchParams.get("registered");
  var row = registered && document.querySelector('#station-table tr[data-station="' + registered + '"]');
  if (row) {
    var done = document.getElementById("register-done");
    done.textContent = "✓ " + t("reg_done", { id: registered });
    done.hidden = false;
    row.classList.add("bg-inst-new");
  }

  // A planned station on its pole: mark it installed (its self-test then commissions it).
  document.querySelectorAll('[data-inst-act="install"]').forEach(function (button) {
    button.addEventListener("click", function () {
      var tr = button.closest("tr[data-station]"), id = tr.dataset.station;
      var note = tr.querySelector(".bg-inst-note");
      button.disabled = true;
      BG.api("POST", "/api/stations/" + encodeURIComponent(id) + "/lifecycle", { state: "installed" }).then(function (r) {
        if (!r.ok) {
          button.disabled = false;
          var now = r.status === 409 && /is (\w+):/.exec(r.message);
          note.textContent = now ? t("inst_refused", { lc: t("lc_" + now[1]) }) : t("inst_failed", { msg: r.message });
          note.className = "bg-inst-note bad";
          return;
        }
        button.remove();
        tr.querySelector(".bg-lifecycle").textContent = t("lc_" + r.data.lifecycle);
        var option = document.querySelector('#selftest-station option[value="' + id + '"]');
        if (option) { option.dataset.lifecycle = r.data.lifecycle; }
        note.textContent = "✓ " + t("inst_installed_done");
        note.className = "bg-inst-note ok";
      });
    });
  });

  // The MQTT password: asked for, issued, shown once.
  var dialog = document.getElementById("credentials-dialog");
  var station = null;
  function el(id) { return document.getElementById(id); }
  document.querySelectorAll('[data-inst-act="credentials"]').forEach(function (button) {
    button.addEventListener("click", function () {
      var tr = button.closest("tr[data-station]");
      station = tr.dataset.station;
      el("cred-title").textContent = t("cred_title", { id: station });
      // A vendor station's password goes to the bridge (its devices file), not to a gateway of ours.
      el("cred-confirm").textContent = t(tr.dataset.vendorDevice ? "cred_confirm_vendor" : "cred_confirm", { id: station });
      el("cred-once").textContent = t(tr.dataset.vendorDevice ? "cred_once_vendor" : "cred_once");
      el("cred-ask").hidden = false; el("cred-shown").hidden = true; el("cred-error").hidden = true;
      el("cred-issue").disabled = false;
      dialog.showModal();
    });
  });
  el("cred-cancel").addEventListener("click", function () { dialog.close(); });
  el("cred-issue").addEventListener("click", function () {
    el("cred-issue").disabled = true;
    BG.api("POST", "/api/stations/" + encodeURIComponent(station) + "/credentials").then(function (r) {
      if (!r.ok) {
        el("cred-issue").disabled = false;
        el("cred-error").textContent = t("cred_failed", { msg: r.message });
        el("cred-error").hidden = false;
        return;
      }
      el("cred-username").textContent = r.data.username;
      el("cred-password").textContent = r.data.password;
      el("cred-key").textContent = r.data.hotlist_public_key;
      el("cred-device").textContent = r.data.bridge_device_entry || "";
      el("cred-bridge").hidden = !r.data.bridge_device_entry;
      el("cred-issued").textContent = t("cred_issued", { t: BG.time(r.data.issued_at) });
      el("cred-ask").hidden = true; el("cred-shown").hidden = false;
    });
  });
  // Closing forgets the password: it is in no page, cache or storage afterwards. At once on Close (the dialog's
  // own close event comes a task later), and on any other way out (Esc).
  function forget() {
    ["cred-username", "cred-password", "cred-key", "cred-device"].forEach(function (id) { el(id).textContent = ""; });
  }
  dialog.addEventListener("close", forget);
  el("cred-close").addEventListener("click", function () { forget(); dialog.close(); });

  function copied(button) {
    var was = button.textContent;
    button.textContent = "✓ " + t("cred_copied");
    setTimeout(function () { button.textContent = was; }, 2000);
  }
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = el(button.dataset.copy), text = source.textContent;
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { copied(button); });
        return;
      }
      // Plain http on the station network: no clipboard API; select the text and copy the old way.
      var range = document.createRange();
      range.selectNodeContents(source);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      if (document.execCommand("copy")) { copied(button); }
    });
  });
})();

/* A station's vendor device (MR7901, through the bridge): register, replace or remove its device id and the time zone
   of its clock; the page is shown again with the station's new kind. */
(function () {
  "use strict";
  var BG = window.BG, t = BG.t;
  var dialog = document.getElementById("vendor-dialog");
  if (!dialog) { return; }
  var DEVICE_RE = /^[!-~]{1,16}$/;  // protocol.ids.VENDOR_DEVICE_ID_PATTERN
  var station = null;
  function el(id) { return document.getElementById(id); }

  // The browser's own list of zones (the backend checks the name against zoneinfo).
  var zones = Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : [];
  el("vd-zones").innerHTML = zones.map(function (z) { return '<option value="' + BG.esc(z) + '">'; }).join("");

  function check() {
    var ok = true, id = el("vd-device-id").value.trim();
    if (!DEVICE_RE.test(id)) { BG.mark("vd-device-id", "bad", t("vd_device_id_bad")); ok = false; }
    else { BG.mark("vd-device-id", "ok", ""); }
    if (!el("vd-time-zone").value.trim()) { BG.mark("vd-time-zone", "bad", t("vd_time_zone_bad")); ok = false; }
    else { BG.mark("vd-time-zone", "ok", ""); }
    return ok;
  }

  function done(r, id) {
    if (r.ok) {
      var u = new URL(window.location.href);
      u.searchParams.set("vendor", id);
      u.hash = "";
      window.location.href = u.toString();
      return;
    }
    var error = el("vendor-error");
    var field = r.status === 422 && r.data && Array.isArray(r.data.detail) && r.data.detail[0] ?
      r.data.detail[0].loc[r.data.detail[0].loc.length - 1] : null;
    if (r.status === 409 && r.data && r.data.code === "vendor_device_taken") {
      BG.mark("vd-device-id", "bad", t("vd_taken", { device: r.data.params.device_id, station: r.data.params.station_id }));
    } else if (field === "time_zone") {
      BG.mark("vd-time-zone", "bad", t("vd_time_zone_bad"));
    } else if (field === "device_id") {
      BG.mark("vd-device-id", "bad", t("vd_device_id_bad"));
    } else {
      error.textContent = t("vd_failed", { msg: r.message });
      error.hidden = false;
    }
    el("vd-save").disabled = false; el("vd-remove").disabled = false;
  }

  document.querySelectorAll('[data-inst-act="vendor"]').forEach(function (button) {
    button.addEventListener("click", function () {
      var tr = button.closest("tr[data-station]");
      station = tr.dataset.station;
      el("vendor-title").textContent = t("vd_title", { id: station });
      el("vd-device-id").value = tr.dataset.vendorDevice || "";
      el("vd-time-zone").value = tr.dataset.timeZone || "Asia/Shanghai";
      BG.mark("vd-device-id", "info", t("vd_device_id_hint"));
      BG.mark("vd-time-zone", "info", t("vd_time_zone_hint"));
      el("vd-remove").hidden = !tr.dataset.vendorDevice;
      // A decommissioned station may only give its device id up.
      el("vd-save").hidden = tr.dataset.lifecycle === "decommissioned";
      el("vendor-error").hidden = true;
      el("vd-save").disabled = false; el("vd-remove").disabled = false;
      dialog.showModal();
    });
  });
  el("vd-cancel").addEventListener("click", function () { dialog.close(); });
  // A field changed since the server's refusal: its old verdict no longer holds.
  [["vd-device-id", "vd_device_id_hint"], ["vd-time-zone", "vd_time_zone_hint"]].forEach(function (f) {
    el(f[0]).addEventListener("input", function () { BG.mark(f[0], "info", t(f[1])); });
  });
  el("vendor-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    el("vendor-error").hidden = true;
    if (!check()) { return; }
    el("vd-save").disabled = true;
    var body = { protocol: el("vd-protocol").value, device_id: el("vd-device-id").value.trim(),
      time_zone: el("vd-time-zone").value.trim() };
    var id = station;
    BG.api("PUT", "/api/stations/" + encodeURIComponent(id) + "/vendor-device", body).then(function (r) { done(r, id); });
  });
  el("vd-remove").addEventListener("click", function () {
    el("vd-remove").disabled = true;
    var id = station;
    BG.api("DELETE", "/api/stations/" + encodeURIComponent(id) + "/vendor-device").then(function (r) { done(r, id); });
  });

  // Shown again after a change: say what the station is now, and what comes next.
  var changed = new URL(window.location.href).searchParams.get("vendor");
  var row = changed && document.querySelector('#station-table tr[data-station="' + changed + '"]');
  if (row) {
    var banner = el("vendor-done");
    banner.textContent = "✓ " + (row.dataset.vendorDevice ?
      t("vd_saved", { id: changed, device: row.dataset.vendorDevice }) : t("vd_removed", { id: changed }));
    banner.hidden = false;
    row.classList.add("bg-inst-new");
  }
})();
