/* Bikeguard live map: alarms from the live feed (SSE), station activity polling, the alarm panel, bike search
 * and trajectory replay (with replay.js, which the page loads first).
 * Plain JavaScript on top of Leaflet only. Called once by the page that maps/live.py builds:
 *   bikeguardLiveMap(config, leafletMap, {station_id: [circleMarker, labelMarker]}, alarmLayer)
 */
function bikeguardLiveMap(cfg, map, stationRefs, alarmLayer) {
  "use strict";

  var TRAIL_LABELS = 10;          // time labels on the newest trail points only, so a long trail stays readable
  var RETRY_MAX_MS = 30000;

  var $ = function (id) { return document.getElementById(id); };
  var WORDS = cfg.words || {};
  var LOCALE = cfg.lang === "zh" ? "zh-CN" : [];   // dates in the page's language; [] is the browser's own
  function w(key, vars) {         // the page's words in its language (maps/words.py), with {name} filled in
    var text = Object.prototype.hasOwnProperty.call(WORDS, key) ? WORDS[key] : key;
    Object.keys(vars || {}).forEach(function (k) { text = text.split("{" + k + "}").join(String(vars[k])); });
    return text;
  }
  var header = $("bg-header");
  var list = $("bg-alarm-list");
  var alarms = {};                // id -> {data, marker, trail, dots, item}
  var stations = {};              // station_id -> {info, passages, circle, label}

  function esc(value) {
    return String(value === null || value === undefined ? "" : value)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }
  function parseTime(iso) { var t = Date.parse(iso); return isNaN(t) ? null : t; }
  function clock(iso) {
    var t = parseTime(iso);
    return t === null ? esc(iso) : new Date(t).toLocaleTimeString([], { hour12: false });
  }
  function ago(iso) {
    var t = parseTime(iso);
    if (t === null) { return ""; }
    var s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 120) { return w("s_ago", { n: s }); }
    if (s < 7200) { return w("min_ago", { n: Math.round(s / 60) }); }
    return w("h_ago", { n: Math.round(s / 3600) });
  }
  function kindLabel(kind) {
    var k = String(kind || "alarm").replace(/_/g, " ");
    return WORDS["kind_" + kind] || (k.charAt(0).toUpperCase() + k.slice(1));
  }
  function sevLabel(a) { return w("sev_" + severity(a)); }
  var SEVERITIES = ["critical", "warning", "info"];
  function severity(a) { return SEVERITIES.indexOf(a.severity) >= 0 ? a.severity : "critical"; }
  // Each bike followed on the map gets a trail colour of its own, shown on its card too, so that two stolen bikes'
  // trails can be told apart; a colour is free again when its alarm ends.
  var TRAIL_COLOURS = ["#dc2626", "#7c3aed", "#0369a1", "#c2410c", "#be185d", "#15803d", "#4338ca", "#a16207"];
  function trailColour(id) {
    var used = {};
    Object.keys(alarms).forEach(function (other) {
      if (other !== id && alarms[other].colour) { used[alarms[other].colour] = true; }
    });
    var free = TRAIL_COLOURS.filter(function (c) { return !used[c]; });
    return free.length ? free[0] : TRAIL_COLOURS[Number(id) % TRAIL_COLOURS.length];
  }

  /* ---- stations ---- */

  function stationRadius(passages) {  // same as maps.stations.station_radius
    return Math.round((6 + Math.min(12, 1.6 * Math.sqrt(Math.max(0, passages)))) * 10) / 10;
  }
  function stationTooltip(st) {
    var state = st.info.state || "unknown";
    // A mobile reader is drawn where it last was (same words as maps.stations.station_tooltip).
    var mobile = st.info.mobile ? "<br>" + esc(w("mobile_reader", {
      t: st.info.position_at ? clock(st.info.position_at) + " · " + ago(st.info.position_at) : w("mobile_no_fix") })) : "";
    return "<b>" + esc(st.info.name) + "</b><br>" + esc(st.info.station_id) + " · " +
      esc(WORDS["st_" + state] || state) + "<br>" +
      esc(st.passages === 1 ? w("one_passage_in_10min") : w("passages_in_10min", { n: st.passages })) + mobile;
  }
  function stationLabel(st) {
    var offline = st.info.state === "offline";
    var cls = "bg-station-label" + (offline ? " offline" : st.passages === 0 ? " idle" : "");
    return L.divIcon({
      className: "bg-station-icon", iconSize: [0, 0],
      html: '<div class="' + cls + '" style="--r: ' + stationRadius(st.passages) + 'px">' +
        (offline ? esc(w("st_offline")) : st.passages) + "</div>"
    });
  }
  function drawStation(st) {
    st.circle.setRadius(stationRadius(st.passages));
    st.circle.setStyle({ fillColor: cfg.stateColours[st.info.state] || cfg.stateColours.unknown });
    st.circle.setTooltipContent(stationTooltip(st));
    st.label.setIcon(stationLabel(st));
  }
  function updateStationStats() {
    var total = 0, online = 0, all = 0;
    Object.keys(stations).forEach(function (sid) {
      all += 1; total += stations[sid].passages;
      if (stations[sid].info.state === "online") { online += 1; }
    });
    $("bg-online-count").textContent = online + "/" + all;
    $("bg-passage-count").textContent = total;
  }
  function applyActivity(activity) {
    var counts = {}, states = {};
    (activity || []).forEach(function (a) {
      counts[a.station_id] = Number(a.passages) || 0;
      if (a.state) { states[a.station_id] = a.state; }
      // A mobile reader moves: its marker goes to its last known position.
      var st = stations[a.station_id];
      if (st && typeof a.lat === "number" && typeof a.lon === "number") {
        st.circle.setLatLng([a.lat, a.lon]);
        st.label.setLatLng([a.lat, a.lon]);
        st.info.lat = a.lat; st.info.lon = a.lon; st.info.position_at = a.position_at;
      }
    });
    Object.keys(stations).forEach(function (sid) {
      var st = stations[sid];
      st.passages = counts[sid] || 0;
      if (states[sid]) { st.info.state = states[sid]; }
      drawStation(st);
    });
    updateStationStats();
  }
  function pollActivity() {
    fetch(cfg.activityUrl, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (activity) {
        applyActivity(activity);
        $("bg-activity-status").textContent = w("activity_updated", {
          t: new Date().toLocaleTimeString([], { hour12: false }) });
      })
      .catch(function (err) {
        $("bg-activity-status").textContent = w("activity_failed", { error: err.message });
      });
  }

  /* ---- alarms ---- */

  function trailKey(p) { return p.station_id + "@" + p.seen_at; }
  // The server's trail, joined to what this page already drew. No trail from the server (a kind with none, or a
  // bike not reported stolen) means none is drawn: a low battery seen at one station and then another must not
  // become a line across town.
  function mergeTrail(old, a) {
    if (!(a.trail && a.trail.length)) { return []; }
    var seen = {}, out = [];
    (old || []).concat(a.trail || []).forEach(function (p) {
      if (p && typeof p.lat === "number" && typeof p.lon === "number" && !seen[trailKey(p)]) {
        seen[trailKey(p)] = true; out.push(p);
      }
    });
    out.sort(function (p, q) { return (parseTime(p.seen_at) || 0) - (parseTime(q.seen_at) || 0); });
    var last = out[out.length - 1];
    if (typeof a.lat === "number" && (!last || last.station_id !== a.station_id)) {
      out.push({ station_id: a.station_id, lat: a.lat, lon: a.lon, seen_at: a.last_seen_at });
    }
    return out;
  }
  // A station offline: no bike, no chip. (An alarm about a bike not reported stolen has its chip left out too.)
  function aboutStation(a) { return !a.tag_id && !a.details_hidden; }
  // An alarm about a bike not reported stolen comes as kind and station only: its plate, chip and trail need a
  // case number, given here and sent with GET /api/alarms/{id}?case_number=… (the server audits it).
  function openCaseHtml(a) {
    return '<form class="bg-open-case" data-open-alarm="' + esc(a.id) + '" autocomplete="off">' +
      '<input name="case_number" maxlength="40" required placeholder="' + esc(w("case_no")) + '" aria-label="' +
      esc(w("case_number")) + '" title="' + esc(w("open_details_title")) + '">' +
      '<button type="submit">' + esc(w("open_details")) + "</button></form>";
  }
  function popupHtml(a) {
    var plate = a.plate ? '<span class="plate">' + esc(a.plate) + "</span>" : "<i>" + esc(w("no_plate")) + "</i>";
    var row = function (key, html) { return "<tr><th>" + esc(w(key)) + "</th><td>" + html + "</td></tr>"; };
    var station = row("row_station", esc(a.station_name) + " (" + esc(a.station_id) + ")");
    var seen = row("row_last_seen", clock(a.last_seen_at) + " · " + ago(a.last_seen_at)) +
      row("row_first_seen", clock(a.first_seen_at));
    var rows = aboutStation(a)
      ? station + row("row_last_heard", clock(a.first_seen_at) + " · " + ago(a.first_seen_at))
      : a.details_hidden
      ? row("row_bike", "<i>" + esc(w("not_stolen_need_case")) + "</i>") + station + seen
      : row("row_plate", plate) + row("row_tag", esc(a.tag_id)) + station + seen + row("row_sightings", esc(a.sightings)) +
        (a.crossings || []).slice(-3).map(function (c) {
          return row("zones_row_crossed", esc(crossingText(c)) + '<br><small>' + esc(crossingBasis(c)) + "</small>");
        }).join("") +
        (a.evidence || []).slice(0, 3).map(function (e) {
          return row("row_clone_evidence", esc(evidenceText(e)));
        }).join("");
    return '<div class="bg-popup" style="--sev: ' + cfg.severityColours[severity(a)] + '">' +
      '<div class="head"><span>' + esc(sevLabel(a)) + "</span>" + esc(kindLabel(a.kind)) + "</div>" +
      "<table>" + rows +
      row("row_state", esc(w("state_" + a.state)) + " · " + esc(w("alarm_no", { id: a.id }))) +
      (a.assignee ? row("row_assigned", esc(a.assignee)) : "") +
      "</table>" + (a.details_hidden ? openCaseHtml(a) : "") + actionsHtml(a) + "</div>";
  }
  function actionsHtml(a) {       // what the signed-in officer can do with the alarm; answered by act()
    var b = function (action, label, enabled) {
      return '<button type="button" class="bg-act bg-act-' + action + '" data-act="' + action + '" data-alarm-id="' +
        esc(a.id) + '"' + (enabled ? "" : " disabled") + ">" + esc(label) + "</button>";
    };
    var replayable = a.kind === "stolen_chip_seen" && a.tag_id;
    return '<div class="bg-actions">' + b("acknowledge", w("acknowledge"), a.state === "active") +
      b("clear", w("clear"), true) +
      (cfg.me ? b("assign", w("assign_to_me"), a.assignee !== cfg.me) : "") +
      (replayable ? '<button type="button" class="bg-act bg-act-replay" data-replay-alarm="' + esc(a.id) +
        '" title="' + esc(w("replay_title")) + '">' + esc(w("replay")) + "</button>" : "") + "</div>";
  }
  function alarmIcon(a) {
    return L.divIcon({
      className: "bg-alarm-icon sev-" + severity(a) + (a.state === "acknowledged" ? " acknowledged" : ""),
      html: '<span class="ring"></span><span class="ring r2"></span><span class="core"></span>',
      iconSize: [40, 40], iconAnchor: [20, 20], popupAnchor: [0, -14]
    });
  }
  function itemHtml(a) {
    var top = '<div class="bg-alarm-top"><span class="bg-sev">' + esc(sevLabel(a)) + "</span>" +
      '<span class="bg-kind">' + esc(kindLabel(a.kind)) + "</span>" +
      (a.state === "acknowledged" ? '<span class="bg-ack">' + esc(w("ack")) + "</span>" : "") +
      '<span class="bg-ago" data-seen="' + esc(a.last_seen_at) + '">' + ago(a.last_seen_at) + "</span></div>";
    if (aboutStation(a)) {
      return top + '<div class="bg-plate bg-station-name">' + esc(a.station_name || a.station_id) + "</div>" +
        '<div class="bg-meta">' + esc(w("station_last_heard", { id: a.station_id, t: clock(a.first_seen_at) })) +
        "</div>" + assigneeHtml(a);
    }
    if (a.details_hidden) {
      return top + '<div class="bg-plate none">' + esc(w("bike_not_stolen")) + "</div>" + whereHtml(a) +
        '<div class="bg-meta">' + esc(w("details_with_case", { t: clock(a.first_seen_at) })) + "</div>" +
        assigneeHtml(a) + openCaseHtml(a);
    }
    var plate = a.plate ? '<div class="bg-plate">' + esc(a.plate) + "</div>"
      : '<div class="bg-plate none">' + esc(w("no_plate")) + "</div>";
    var tag = { tag: a.tag_id, n: a.sightings, t: clock(a.first_seen_at) };
    return top + plate + whereHtml(a) +
      '<div class="bg-meta">' + esc(w(a.sightings === 1 ? "tag_one_sighting" : "tag_sightings", tag)) + "</div>" +
      assigneeHtml(a);
  }
  function whereHtml(a) {
    return '<div class="bg-where">' + esc(w("at_station", { station: a.station_name })) +
      ' <span class="bg-meta">(' + esc(a.station_id) + ")</span></div>";
  }
  function assigneeHtml(a) {
    return a.assignee ? '<div class="bg-meta bg-assignee">' + esc(w("assigned_to", { name: a.assignee })) + "</div>" : "";
  }
  // A v2 chip's cloned-chip alarm keeps what proves it (backend/ingest/v2.py): the copy heard, and the chip's own
  // beacon it repeats or falls behind.
  function evidenceText(e) {
    var o = e.offending, p = e.previous;
    if (e.verdict === "bad_mac") {
      return w("evidence_bad_mac", { station: o.station_id, t: clock(o.heard_at) });
    }
    return w("evidence_replay", {
      station: o.station_id, t: clock(o.heard_at), n: o.counter,
      prev: p ? p.station_id : "?", pt: p ? clock(p.heard_at) : "?", pn: p ? p.counter : "?"
    });
  }
  // A stolen bike crossing a zone's border (backend/zones): "Left Xihu county northbound at 14:02", and how the time
  // was found (estimated along the line between two passages, or the passage after the crossing).
  function stationName(id) { return (stations[id] && stations[id].info.name) || id; }
  function crossingText(c) {
    return w("zones_" + c.direction, { zone: c.zone_name, heading: w("zones_heading_" + c.heading), t: clock(c.crossed_at) });
  }
  function crossingBasis(c) {
    return w("zones_time_" + c.time_basis, { from: stationName(c.from_station_id), to: stationName(c.to_station_id) });
  }
  function crossingHtml(a) {      // on the alarm's card: the latest crossing
    var c = (a.crossings || [])[a.crossings ? a.crossings.length - 1 : 0];
    if (!c) { return ""; }
    return '<div class="bg-crossing ' + esc(c.direction) + '"><b>' + esc(crossingText(c)) + "</b>" +
      ' <span class="bg-meta">(' + esc(crossingBasis(c)) + ")</span></div>";
  }
  function drawCrossings(entry) { // where the line between the two passages meets the border
    entry.crossings.clearLayers();
    (entry.data.crossings || []).forEach(function (c) {
      entry.crossings.addLayer(L.circleMarker([c.lat, c.lon], {
        radius: 7, color: "#7c3aed", weight: 3, fillColor: "#ffffff", fillOpacity: 1, className: "bg-crossing-point"
      }).bindTooltip(esc(crossingText(c)), { direction: "right", offset: [8, 0], className: "bg-crossing-label" }));
    });
  }
  function drawTrail(entry) {
    var pts = entry.trail;
    entry.line.setStyle({ color: entry.colour || TRAIL_COLOURS[0] });
    entry.line.setLatLngs(pts.map(function (p) { return [p.lat, p.lon]; }));
    entry.dots.clearLayers();
    pts.forEach(function (p, i) {
      var dot = L.circleMarker([p.lat, p.lon], {
        radius: 4.5, color: entry.colour || TRAIL_COLOURS[0], weight: 2, fillColor: "#ffffff", fillOpacity: 1, className: "bg-trail-dot"
      });
      if (i >= pts.length - TRAIL_LABELS && i < pts.length - 1) {
        dot.bindTooltip(clock(p.seen_at), {
          permanent: true, direction: "left", offset: [-6, 0], className: "bg-trail-time", interactive: false
        });
      }
      entry.dots.addLayer(dot);
    });
  }
  function drawNext(entry) {      // interception points: where the bike is likely to pass next, and when
    entry.next.clearLayers();
    var from = [entry.data.lat, entry.data.lon];
    (entry.data.next_stations || []).forEach(function (n) {
      var pct = Math.round(n.probability * 100);
      entry.next.addLayer(L.polyline([from, [n.lat, n.lon]], {
        color: "#d97706", weight: 2, opacity: 0.8, dashArray: "2 6", interactive: false, className: "bg-next-line"
      }));
      entry.next.addLayer(L.circleMarker([n.lat, n.lon], {
        radius: 10 + 14 * n.probability, color: "#d97706", weight: 3, dashArray: "4 4",
        fillColor: "#fbbf24", fillOpacity: 0.25, className: "bg-next"
      }).bindTooltip(pct + "% · ~" + clock(n.eta_at) + " · " + movesSeen(n), {
        permanent: true, direction: "right", offset: [12, 0], className: "bg-next-label", interactive: false
      }));
    });
  }
  // The estimate says how much history it rests on: "60 % · from 3 moves seen" is a guess, and reads like one.
  function movesSeen(n) {
    var seen = n.based_on_moves || 0;
    return (seen === 1 ? w("one_move_seen") : w("moves_seen", { n: seen })) + (seen < cfg.fewMoves ? " " + w("few") : "");
  }
  function nextHtml(a) {
    var n = (a.next_stations || [])[0];
    if (!n) { return ""; }
    return '<div class="bg-next-text">' +
      esc(w("next", { station: n.name || n.station_id, pct: Math.round(n.probability * 100), t: clock(n.eta_at) })) +
      ' <span class="bg-meta bg-based-on">' + esc(movesSeen(n)) + "</span></div>";
  }
  function acked(id) { return alarms[id].data.state === "acknowledged" ? 1 : 0; }
  function rank(id) { return SEVERITIES.indexOf(severity(alarms[id].data)); }
  function sortPanel() {           // active before acknowledged, then the most urgent, each newest sighting first
    var ids = Object.keys(alarms).sort(function (x, y) {
      return acked(x) - acked(y) || rank(x) - rank(y) ||
        (parseTime(alarms[y].data.last_seen_at) || 0) - (parseTime(alarms[x].data.last_seen_at) || 0);
    });
    ids.forEach(function (id) { list.appendChild(alarms[id].item); });
    var active = ids.filter(function (id) { return !acked(id); }).length;
    $("bg-panel-count").textContent = active;
    $("bg-panel-count").classList.toggle("hot", active > 0);
    $("bg-panel-acked").textContent = ids.length > active ? w("n_acknowledged", { n: ids.length - active }) : "";
    $("bg-alarm-count").textContent = active;
    $("bg-alarm-stat").classList.toggle("hot", active > 0);
    $("bg-no-alarms").style.display = ids.length ? "none" : "";
  }
  function flash(el, cls) {
    el.classList.remove(cls);
    void el.offsetWidth;          // restart the CSS animation
    el.classList.add(cls);
  }
  function removeAlarm(id) {
    var entry = alarms[id];
    if (!entry) { return; }
    entry.colour = null;
    alarmLayer.removeLayer(entry.marker);
    alarmLayer.removeLayer(entry.line);
    alarmLayer.removeLayer(entry.dots);
    alarmLayer.removeLayer(entry.next);
    alarmLayer.removeLayer(entry.crossings);
    entry.item.remove();
    delete alarms[id];
    sortPanel();
  }
  function upsertAlarm(a, quiet) {
    if (!a || a.id === undefined || a.id === null) { return; }
    var id = String(a.id);
    if (a.state === "cleared") { removeAlarm(id); return; }
    var entry = alarms[id];
    if (!entry) {
      entry = {
        data: a, trail: [],
        line: L.polyline([], {     // smoothFactor 0: keep every station, even on a straight street
          color: "#dc2626", weight: 4, opacity: 0.85, dashArray: "10 6", smoothFactor: 0, className: "bg-trail"
        }),
        dots: L.layerGroup(),
        next: L.layerGroup(),
        crossings: L.layerGroup(),
        marker: L.marker([a.lat, a.lon], { icon: alarmIcon(a), zIndexOffset: 1000, riseOnHover: true }),
        item: document.createElement("li")
      };
      entry.marker.bindPopup("", { maxWidth: 340 });
      entry.marker.on("popupopen", function () { entry.marker.setPopupContent(popupHtml(entry.data)); });
      entry.marker.bindTooltip("", { permanent: true, direction: "top", offset: [0, -18], className: "bg-alarm-label" });
      entry.label = entry.marker.getTooltip();
      entry.item.className = "bg-alarm";
      entry.item.dataset.alarmId = id;
      entry.item.addEventListener("click", function (ev) {
        if (ev.target.closest("button, input, form")) { return; }
        map.flyTo(entry.marker.getLatLng(), Math.max(map.getZoom(), 16), { duration: 0.8 });
        entry.marker.openPopup();
      });
      alarmLayer.addLayer(entry.line);
      alarmLayer.addLayer(entry.dots);
      alarmLayer.addLayer(entry.next);
      alarmLayer.addLayer(entry.crossings);
      alarmLayer.addLayer(entry.marker);
      alarms[id] = entry;
      if (!quiet) { flash(header, "flash"); flash(entry.item, "fresh"); }
    } else {
      if (!quiet) { flash(entry.item, "fresh"); }
      // Opened under a case number: a later update (kind and station only) keeps the bike's details shown.
      if (a.details_hidden && entry.opened) {
        a = Object.assign({}, a, { plate: entry.data.plate, tag_id: entry.data.tag_id, details_hidden: false });
      }
    }
    if (a.details_hidden === false && entry.data.details_hidden) { entry.opened = true; }
    entry.data = a;
    entry.trail = mergeTrail(entry.trail, a);
    if (entry.trail.length && !entry.colour) { entry.colour = trailColour(id); }
    if (!entry.trail.length) { entry.colour = null; }
    entry.marker.setLatLng([a.lat, a.lon]);
    entry.marker.setIcon(alarmIcon(a));
    entry.marker.setTooltipContent(esc(a.plate || a.tag_id || a.station_name || a.station_id));
    entry.label.options.className = "bg-alarm-label sev-" + severity(a);
    var labelEl = entry.label.getElement();
    if (labelEl) { labelEl.className = labelEl.className.replace(/\bsev-\w+/g, "") + " sev-" + severity(a); }
    entry.marker.setPopupContent(popupHtml(a));
    entry.item.className = "bg-alarm sev-" + severity(a) + (a.state === "acknowledged" ? " acknowledged" : "") +
      (entry.item.classList.contains("fresh") ? " fresh" : "");
    var typing = entry.item.querySelector("input[name=case_number]");   // an update must not wipe a case number
    var typed = typing ? typing.value : "";
    entry.item.innerHTML = itemHtml(a) + (a.details_hidden ? "" : crossingHtml(a)) + nextHtml(a) + actionsHtml(a);
    entry.item.classList.toggle("has-trail", !!entry.colour);
    entry.item.style.setProperty("--trail", entry.colour || "transparent");
    if (typed && entry.item.querySelector("input[name=case_number]")) {
      entry.item.querySelector("input[name=case_number]").value = typed;
    }
    drawTrail(entry);
    drawNext(entry);
    drawCrossings(entry);
    sortPanel();
  }

  /* ---- actions: the API with the page's session cookie ---- */

  function api(method, url, body) {
    var init = { method: method, credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } };
    if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    return fetch(url, init).then(function (r) {
      if (r.status === 401) { window.location.href = "/login?next=" + encodeURIComponent(window.location.pathname); }
      var json = (r.headers.get("Content-Type") || "").indexOf("json") >= 0 ? r.json() : Promise.resolve(null);
      return json.then(function (data) {
        if (!r.ok) {
          throw new Error(data && typeof data.detail === "string" ? data.detail : "HTTP " + r.status);
        }
        return data;
      });
    });
  }
  function say(el, text, bad) {
    el.textContent = text;
    el.classList.toggle("bad", !!bad);
  }
  function act(button) {
    var id = button.dataset.alarmId, action = button.dataset.act;
    var body = action === "assign" ? { assignee: cfg.me } : undefined;
    button.disabled = true;
    api("POST", cfg.alarmsUrl + "/" + encodeURIComponent(id) + "/" + action, body)
      .then(function (a) {
        say($("bg-action-status"), action === "assign" ? w("alarm_assigned", { id: id, name: a.assignee })
          : w("alarm_done", { id: id, what: w("state_" + a.state) }));
        upsertAlarm(a, true);
        if (a.state === "cleared") { map.closePopup(); }
      })
      .catch(function (err) {
        button.disabled = false;
        say($("bg-action-status"), w("alarm_failed", { id: id, action: w(action === "assign" ? "assign_to_me" : action),
          error: err.message }), true);
      });
  }
  function openAlarm(form) {
    var id = form.dataset.openAlarm, caseNo = form.case_number.value.trim();
    if (!caseNo) { return; }
    var button = form.querySelector("button");
    button.disabled = true;
    api("GET", cfg.alarmsUrl + "/" + encodeURIComponent(id) + "?case_number=" + encodeURIComponent(caseNo))
      .then(function (a) {
        say($("bg-action-status"), w("alarm_opened", { id: id, case: caseNo }));
        upsertAlarm(a, true);
      })
      .catch(function (err) {
        button.disabled = false;
        say($("bg-action-status"), w("alarm_not_opened", { id: id, error: err.message }), true);
      });
  }
  document.addEventListener("submit", function (ev) {
    var form = ev.target.closest && ev.target.closest("form[data-open-alarm]");
    if (form) { ev.preventDefault(); ev.stopPropagation(); openAlarm(form); }
  });
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest && ev.target.closest("button[data-act]");
    if (button) { ev.preventDefault(); ev.stopPropagation(); act(button); return; }
    var replayButton = ev.target.closest && ev.target.closest("button[data-replay-alarm], button[data-replay-result]");
    if (replayButton) {
      ev.preventDefault(); ev.stopPropagation();
      if (replayButton.dataset.replayAlarm) { replayAlarm(replayButton.dataset.replayAlarm); }
      else { replayFound(Number(replayButton.dataset.replayResult)); }
    }
  });

  /* ---- trajectory replay: the bike's stops and legs from the API, drawn and played by replay.js ---- */

  var replay = bikeguardReplay(map, { words: WORDS, lang: cfg.lang });
  var replaying = null;             // what the bar shows or is loading: {bikeId, label, caseNo, hours, stolen}
  var EXPORTS = [["gpx", "GPX"], ["geojson", "GeoJSON"], ["csv", "CSV"]];

  function windowLabel(h) { return h < 48 ? w("window_hours", { n: h }) : w("window_days", { n: Math.round(h / 24) }); }
  function trajectoryQuery(target, since, until) {
    return "since=" + encodeURIComponent(since) + "&until=" + encodeURIComponent(until) +
      (target.caseNo ? "&case_number=" + encodeURIComponent(target.caseNo) : "");
  }
  function startReplay(target) {
    replaying = target;
    var until = new Date(), since = new Date(until.getTime() - target.hours * 3600000);
    var base = cfg.bikesUrl + "/" + encodeURIComponent(target.bikeId) + "/trajectory";
    var o = {
      title: target.label,
      windows: cfg.replayWindowsH.map(function (h) {
        return { value: h, label: windowLabel(h), selected: h === target.hours };
      }),
      onWindow: function (h) { startReplay(Object.assign({}, target, { hours: Number(h) })); },
      empty: w(target.stolen && !target.caseNo ? "not_seen_window_since_theft" : "not_seen_window",
        { window: windowLabel(target.hours).toLowerCase() })
    };
    replay.notice(target.label, w("loading_trajectory"), false, o);
    api("GET", base + "/summary?" + trajectoryQuery(target, since.toISOString(), until.toISOString()))
      .then(function (summary) {
        if (replaying !== target) { return; }   // another replay was asked for meanwhile
        var q = trajectoryQuery(target, summary.since, summary.until);   // the window shown, so files match it
        o.exports = EXPORTS.map(function (x) {
          return { format: x[0], label: x[1], hint: w("export_" + x[0]), href: base + "." + x[0] + "?" + q };
        });
        replay.load(summary, o);
      })
      .catch(function (err) {
        if (replaying === target) { replay.notice(target.label, w("replay_failed", { error: err.message }), true, o); }
      });
  }
  function replayAlarm(id) {        // the alarm's bike: found by its chip, replayed since the theft
    var a = alarms[id] && alarms[id].data;
    if (!a) { return; }
    var target = { label: a.plate || a.tag_id, hours: cfg.replayWindowsH[1], stolen: true, caseNo: null };
    if (a.bike_id) { startReplay(Object.assign(target, { bikeId: a.bike_id })); return; }
    replaying = target;
    replay.notice(target.label, w("finding_bike"));
    api("GET", cfg.searchUrl + "?q=" + encodeURIComponent(a.tag_id))
      .then(function (results) {
        var hit = results.filter(function (r) { return r.bike.tag_id === a.tag_id; })[0];
        if (!hit) { throw new Error(w("no_bike_with_chip", { tag: a.tag_id })); }
        if (replaying === target) { startReplay(Object.assign(target, { bikeId: hit.bike.bike_id })); }
      })
      .catch(function (err) {
        if (replaying === target) { replay.notice(target.label, w("replay_failed", { error: err.message }), true); }
      });
  }

  var found = L.layerGroup().addTo(map);
  var foundBikes = [], foundCase = "", foundQuery = "";   // the last search's results, its case number and text
  function replayFound(i) {
    var b = foundBikes[i] && foundBikes[i].bike;
    if (!b) { return; }
    startReplay({ bikeId: b.bike_id, label: b.plate || b.tag_id || w("bike_n", { id: b.bike_id }), hours: cfg.replayWindowsH[1],
                  stolen: !!b.stolen, caseNo: foundCase || null });
  }
  function photoHtml(r) {         // to recognise the bike in the street; served under the photo route's access rules
    return r.photo_url ? '<img class="bg-photo" src="' + esc(r.photo_url) + '" alt="" loading="lazy">' : "";
  }
  function lastSeenHtml(where, stolen) {
    return where ? esc(w("last_seen_at", { station: where.station_name, t: clock(where.seen_at), ago: ago(where.seen_at) }))
      : "<i>" + esc(w(stolen ? "not_seen_since_theft" : "whereabouts_need_case")) + "</i>";
  }
  function searchResult(r, i) {
    var b = r.bike, where = r.last_seen;
    var owner = r.owner ? " · " + esc(w("owner_is", { name: r.owner.name })) +
      (r.owner.mobile ? " " + esc(r.owner.mobile) : "") : "";
    var allowed = b.stolen || foundCase;
    return '<li data-bike-id="' + esc(b.bike_id) + '">' + photoHtml(r) +
      '<span class="plate">' + esc(b.plate || w("no_plate")) + "</span> " +
      esc(b.brand || "") + " " + esc(b.colour || "") +
      (b.stolen ? ' <b class="stolen">' + esc(w("stolen_badge")) + "</b>" : "") + owner +
      '<button type="button" class="bg-act bg-act-replay" data-replay-result="' + i + '"' +
      (allowed ? ' title="' + esc(w("replay_title")) + '"' : ' disabled title="' + esc(w("replay_needs_case")) + '"') +
      ">" + esc(w("replay")) + "</button>" +
      (b.stolen ? recoverButton(b) : "") + "<br>" + lastSeenHtml(where, b.stolen) +
      (b.stolen ? "" : reportForm(b)) + "</li>";
  }
  /* ---- theft reports and recoveries from the page: the API's rules (a case number for a report, audited) ---- */

  function recoverButton(b) {
    return '<button type="button" class="bg-act bg-act-recovered" data-recover-bike="' + esc(b.bike_id) +
      '" data-plate="' + esc(b.plate || "") + '">' + esc(w("mark_recovered")) + "</button>";
  }
  function localNow() {
    var d = new Date();
    d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
    return d.toISOString().slice(0, 16);
  }
  function reportForm(b) {
    return '<details class="bg-report"><summary>' + esc(w("report_stolen")) + "</summary>" +
      '<form data-report-bike="' + esc(b.bike_id) + '" data-plate="' + esc(b.plate || "") + '" autocomplete="off">' +
      "<label>" + esc(w("stolen_at")) + ' <input type="datetime-local" name="stolen_at" value="' + localNow() + '"></label>' +
      "<label>" + esc(w("place")) + ' <input name="place" maxlength="200"></label>' +
      '<button type="submit">' + esc(w("file_report")) + "</button></form></details>";
  }
  // After a report or a recovery: the stolen list, and the search shown, as it was made (its own case number, so
  // a case typed since for the report reads no owner the officer did not ask for).
  function afterChange() { loadStolen(); if (foundQuery) { search(foundQuery, foundCase); } }
  function reportStolen(form) {
    var plate = form.dataset.plate, caseNo = $("bg-search-case").value.trim();
    if (!caseNo) { say($("bg-action-status"), w("report_needs_case"), true); $("bg-search-case").focus(); return; }
    var when = form.stolen_at.value ? new Date(form.stolen_at.value).toISOString() : null;
    form.querySelector("button").disabled = true;
    api("POST", cfg.bikesUrl + "/" + encodeURIComponent(form.dataset.reportBike) + "/theft?case_number=" +
        encodeURIComponent(caseNo), { stolen_at: when, place: form.place.value.trim() || null })
      .then(function () { say($("bg-action-status"), w("reported", { plate: plate, case: caseNo })); afterChange(); })
      .catch(function (err) {
        form.querySelector("button").disabled = false;
        say($("bg-action-status"), w("report_failed", { plate: plate, error: err.message }), true);
      });
  }
  function markRecovered(button) {
    var plate = button.dataset.plate, caseNo = $("bg-search-case").value.trim();
    if (!window.confirm(w("mark_recovered") + ": " + plate + "?")) { return; }
    button.disabled = true;
    api("POST", cfg.bikesUrl + "/" + encodeURIComponent(button.dataset.recoverBike) + "/recovered" +
        (caseNo ? "?case_number=" + encodeURIComponent(caseNo) : ""))
      .then(function () { say($("bg-action-status"), w("recovered", { plate: plate })); afterChange(); })
      .catch(function (err) {
        button.disabled = false;
        say($("bg-action-status"), w("recover_failed", { plate: plate, error: err.message }), true);
      });
  }
  document.addEventListener("submit", function (ev) {
    var form = ev.target.closest && ev.target.closest("form[data-report-bike]");
    if (form) { ev.preventDefault(); reportStolen(form); }
  });
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest && ev.target.closest("button[data-recover-bike]");
    if (button) { ev.preventDefault(); ev.stopPropagation(); markRecovered(button); return; }
    var show = ev.target.closest && ev.target.closest("button[data-show-stolen]");
    if (show) {
      var r = stolenBikes[Number(show.dataset.showStolen)];
      if (r && r.last_seen) { map.flyTo([r.last_seen.lat, r.last_seen.lon], Math.max(map.getZoom(), 16), { duration: 0.8 }); }
      return;
    }
    var replayStolen = ev.target.closest && ev.target.closest("button[data-replay-stolen]");
    if (replayStolen) {
      var b = (stolenBikes[Number(replayStolen.dataset.replayStolen)] || {}).bike;
      if (b) { startReplay({ bikeId: b.bike_id, label: b.plate, hours: cfg.replayWindowsH[1], stolen: true, caseNo: null }); }
    }
  });

  /* ---- the stolen bikes: every open theft report, heard by a station or not yet ---- */

  var stolenBikes = [];
  function stolenItem(r, i) {
    var b = r.bike, t = b.theft || {};
    return '<li class="bg-stolen-bike" data-bike-id="' + esc(b.bike_id) + '">' + photoHtml(r) +
      '<div class="bg-plate">' + esc(b.plate) +
      "</div><div>" + esc([b.brand, b.model, b.colour].filter(Boolean).join(" · ")) + "</div>" +
      '<div class="bg-meta">' + esc(w("stolen_since", { t: whenShort(t.stolen_at || b.stolen_at), r: whenShort(t.reported_at) })) +
      (t.police_report ? " · " + esc(w("stolen_case", { case: t.police_report })) : "") +
      (t.place ? " · " + esc(t.place) : "") + "</div>" +
      '<div class="bg-where">' + (r.last_seen ? lastSeenHtml(r.last_seen, true) : "<i>" + esc(w("not_heard_since")) + "</i>") +
      '</div><div class="bg-actions">' +
      (r.last_seen ? '<button type="button" class="bg-act" data-show-stolen="' + i + '">' + esc(w("show_on_map")) + "</button>" : "") +
      '<button type="button" class="bg-act bg-act-replay" data-replay-stolen="' + i + '">' + esc(w("replay")) + "</button>" +
      recoverButton(b) + "</div></li>";
  }
  function whenShort(iso) {
    var t = parseTime(iso);
    return t === null ? "" : new Date(t).toLocaleString(LOCALE, { month: "short", day: "numeric", hour: "2-digit",
      minute: "2-digit", hour12: false });
  }
  function loadStolen() {
    if (!cfg.stolenUrl) { return; }
    api("GET", cfg.stolenUrl)
      .then(function (rows) {
        stolenBikes = rows;
        $("bg-stolen-count").textContent = rows.length;
        $("bg-stolen-none").hidden = rows.length > 0;
        $("bg-stolen-list").innerHTML = rows.map(stolenItem).join("");
      })
      .catch(function (err) { say($("bg-stolen-none"), w("stolen_failed", { error: err.message }), true); });
  }
  document.querySelectorAll("#bg-panel-tabs button").forEach(function (tab) {
    tab.addEventListener("click", function () {
      document.querySelectorAll("#bg-panel-tabs button").forEach(function (t) {
        t.classList.toggle("current", t === tab);
        t.setAttribute("aria-selected", t === tab ? "true" : "false");
      });
      $("bg-alarms-section").hidden = tab.dataset.panel !== "alarms";
      $("bg-stolen-section").hidden = tab.dataset.panel !== "stolen";
      if (tab.dataset.panel === "stolen") { loadStolen(); }
    });
  });

  /* ---- sign out ---- */

  if ($("bg-sign-out")) {
    $("bg-sign-out").addEventListener("click", function () {
      fetch("/api/auth/logout", { method: "POST", credentials: "same-origin" })
        .then(function () { window.location.href = "/login"; });
    });
  }

  $("bg-search").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var q = $("bg-search-q").value.trim();
    if (q) { search(q, $("bg-search-case").value.trim()); }
  });
  function search(q, caseNo) {
    var out = $("bg-search-result");
    say(out, w("searching"));
    api("GET", cfg.searchUrl + "?q=" + encodeURIComponent(q) + (caseNo ? "&case_number=" + encodeURIComponent(caseNo) : ""))
      .then(function (results) {
        foundBikes = results;
        foundCase = caseNo;
        foundQuery = q;
        found.clearLayers();
        if (!results.length) { say(out, w("search_none", { q: q })); return; }
        out.classList.remove("bad");
        out.innerHTML = "<ol>" + results.map(searchResult).join("") + "</ol>";
        var where = results[0].last_seen;
        if (where) {
          L.circleMarker([where.lat, where.lon], {
            radius: 16, color: "#38bdf8", weight: 3, fillColor: "#38bdf8", fillOpacity: 0.25, className: "bg-found"
          }).bindTooltip(esc(results[0].bike.plate || q), { permanent: true, direction: "top", className: "bg-found-label" })
            .addTo(found);
          map.flyTo([where.lat, where.lon], Math.max(map.getZoom(), 16), { duration: 0.8 });
        }
      })
      .catch(function (err) { say(out, w("search_failed", { error: err.message }), true); });
  }

  /* ---- live feed ---- */

  var retryMs = 1000;
  function setLive(state, text) {
    var el = $("bg-live-status");
    el.className = state;
    el.querySelector("span").textContent = text;
  }
  function connect() {
    setLive("connecting", w("live_connecting"));
    var source = new EventSource(cfg.liveUrl);
    source.onopen = function () { retryMs = 1000; setLive("connected", w("live_connected")); };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {   // the browser gave up (e.g. HTTP error): retry ourselves
        source.close();
        setLive("reconnecting", w("live_reconnecting_in", { s: Math.round(retryMs / 1000) }));
        setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
      } else {
        setLive("reconnecting", w("live_reconnecting"));
      }
    };
    // The session ended (signed out elsewhere, expired, account disabled): no more events, ask to sign in.
    source.addEventListener("signed-out", function () {
      source.close();
      setLive("signed-out", w("live_signed_out"));
      var status = $("bg-live-status");
      var again = document.createElement("a");
      again.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      again.textContent = w("sign_in_again");
      status.appendChild(again);
    });
    source.addEventListener("alarm", function (ev) {
      var a;
      try { a = JSON.parse(ev.data); } catch (err) { console.warn("bikeguard: unreadable alarm event", ev.data); return; }
      upsertAlarm(a, false);
      if (a.kind === "stolen_chip_seen") { loadStolenSoon(); }
    });
  }

  function tick() {
    $("bg-clock").textContent = new Date().toLocaleTimeString([], { hour12: false });
    var items = list.querySelectorAll(".bg-ago");
    for (var i = 0; i < items.length; i++) {
      var seen = parseTime(items[i].dataset.seen);
      items[i].textContent = ago(items[i].dataset.seen);
      items[i].classList.toggle("recent", seen !== null && Date.now() - seen < 60000);
    }
  }

  var stolenTimer = null;
  function loadStolenSoon() {     // a burst of alarm updates reloads the stolen list once
    if (stolenTimer === null) { stolenTimer = setTimeout(function () { stolenTimer = null; loadStolen(); }, 2000); }
  }

  /* ---- start ---- */

  // The zones commanders drew (backend/zones), under everything else; the editor is linked from the header.
  (cfg.zones || []).forEach(function (z) {
    var ring = z.geometry.coordinates[0].map(function (p) { return [p[1], p[0]]; });
    L.polygon(ring, {
      color: "#7c3aed", weight: 2, dashArray: "8 5", fillColor: "#7c3aed", fillOpacity: 0.07, interactive: false,
      className: "bg-zone"
    }).bindTooltip(esc(z.name), { permanent: true, direction: "center", className: "bg-zone-label" }).addTo(map).bringToBack();
  });

  cfg.stations.forEach(function (info) {
    var refs = stationRefs[info.station_id];
    if (refs) { stations[info.station_id] = { info: info, passages: 0, circle: refs[0], label: refs[1] }; }
  });
  applyActivity(cfg.activity);
  cfg.alarms.forEach(function (a) { upsertAlarm(a, true); });
  sortPanel();
  tick();
  setInterval(tick, 1000);
  connect();
  pollActivity();
  loadStolen();
  // Each read of the list is an audit record: refresh it when a stolen chip is heard, when its tab is opened, after a
  // report or a recovery, and otherwise every few minutes (a report filed elsewhere), not every few seconds.
  setInterval(loadStolen, cfg.stolenRefreshMs);
  setInterval(pollActivity, cfg.activityIntervalMs);

  return { upsertAlarm: upsertAlarm, applyActivity: applyActivity, alarms: alarms, replay: replay };
}
