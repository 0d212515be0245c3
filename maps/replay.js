/* Bikeguard trajectory replay: a bike's stops and legs drawn as a route and played back in time.
 * Plain JavaScript on top of Leaflet only, shared by the police live map (maps/live.js) and the standalone
 * trajectory map (maps/trajectory.py):
 *   var replay = bikeguardReplay(leafletMap, { onClose: function () {}, words: {rp_play: "Play", …} });
 *   replay.load(summary, { title: "HZ-12345", exports: [{ label: "GPX", href: "…" }] });
 * `summary` is what GET /api/bikes/{bike_id}/trajectory/summary answers: stops (station, position, arrived_at,
 * left_at, dwell_s) in time order and the legs between them (distance_m, duration_s, speed_kmh, heading).
 */
function bikeguardReplay(map, options) {
  "use strict";

  var opts = options || {};
  var WORDS = opts.words || {};   // maps/words.py, in the page's language
  function w(key, vars) {
    var text = Object.prototype.hasOwnProperty.call(WORDS, key) ? WORDS[key] : key;
    Object.keys(vars || {}).forEach(function (k) { text = text.split("{" + k + "}").join(String(vars[k])); });
    return text;
  }
  var SPEEDS = [1, 10, 60, 600];
  var TICK_LABEL_GAP = 0.035;     // share of the time line between two numbered ticks, so numbers never overlap

  var layer = L.layerGroup();
  var route = L.polyline([], { color: "#2563eb", weight: 5, opacity: 0.6, dashArray: "1 10", lineCap: "round",
                                smoothFactor: 0, interactive: false, className: "bg-replay-route" });
  var played = L.polyline([], { color: "#1d4ed8", weight: 6, opacity: 0.95, smoothFactor: 0, interactive: false,
                                 className: "bg-replay-played" });
  var marks = L.layerGroup();
  var marker = L.marker([0, 0], {
    icon: L.divIcon({ className: "bg-replay-icon", html: '<span class="halo"></span><span class="dot"></span>',
                      iconSize: [0, 0] }),
    zIndexOffset: 2000, interactive: false, keyboard: false
  });
  marker.bindTooltip("", { permanent: true, direction: "top", offset: [0, -16], className: "bg-replay-clock" });
  layer.addLayer(route).addLayer(played).addLayer(marks).addLayer(marker);

  var stops = [], legs = [], t0 = 0, span = 1, offset = 0, speed = 60, playing = false, lastFrame = null;
  var bar = build();
  var $ = function (cls) { return bar.querySelector("." + cls); };

  /* ---- formatting ---- */

  function esc(value) {
    return String(value === null || value === undefined ? "" : value)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }
  var LOCALE = opts.lang === "zh" ? "zh-CN" : [];   // [] is the browser's own
  function time(ms) { return new Date(ms).toLocaleTimeString(LOCALE, { hour12: false }); }
  function day(ms) { return new Date(ms).toLocaleDateString(LOCALE, { day: "numeric", month: "short" }); }
  function duration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min" + (s % 60 ? " " + (s % 60) + " s" : ""); }
    var m = Math.round(s / 60);
    return Math.floor(m / 60) + " h" + (m % 60 ? " " + (m % 60) + " min" : "");
  }
  function metres(m) { return m < 1000 ? Math.round(m) + " m" : (m / 1000).toFixed(1) + " km"; }
  function name(stop) { return esc(stop.station_name || stop.station_id); }

  /* ---- the bar under the map ---- */

  function build() {
    var el = document.createElement("div");
    el.className = "bg-replay";
    el.setAttribute("role", "region");
    el.setAttribute("aria-label", w("rp_region"));
    el.hidden = true;
    el.innerHTML =
      '<div class="bg-replay-head"><span class="bg-replay-badge">' + esc(w("rp_badge")) + "</span>" +
      '<b class="bg-replay-title"></b><span class="bg-replay-meta"></span>' +
      '<select class="bg-replay-window" aria-label="' + esc(w("rp_window")) + '" hidden></select>' +
      '<div class="bg-replay-speeds" role="group" aria-label="' + esc(w("rp_speed")) + '">' + SPEEDS.map(function (x) {
        return '<button type="button" data-speed="' + x + '">' + x + "×</button>";
      }).join("") + "</div>" +
      '<details class="bg-replay-export"><summary>' + esc(w("rp_export")) + '</summary><div class="bg-replay-menu"></div></details>' +
      '<button type="button" class="bg-replay-close" aria-label="' + esc(w("rp_close")) + '" title="' +
      esc(w("rp_close_short")) + '">&times;</button></div>' +
      '<div class="bg-replay-body"><button type="button" class="bg-replay-play" aria-label="' + esc(w("rp_play")) + '"></button>' +
      '<div class="bg-replay-track"><input type="range" class="bg-replay-slider" min="0" max="1" step="1" value="0"' +
      ' aria-label="' + esc(w("rp_time")) + '"><div class="bg-replay-ticks"></div></div>' +
      '<div class="bg-replay-time"><b></b><small></small></div></div>' +
      '<div class="bg-replay-status" role="status"></div>';
    map.getContainer().appendChild(el);
    L.DomEvent.disableClickPropagation(el);
    L.DomEvent.disableScrollPropagation(el);
    el.querySelector(".bg-replay-play").addEventListener("click", function () { if (playing) { pause(); } else { play(); } });
    el.querySelector(".bg-replay-close").addEventListener("click", close);
    el.querySelector(".bg-replay-slider").addEventListener("input", function (ev) {
      seek(Number(ev.target.value) * 1000);
    });
    el.querySelector(".bg-replay-speeds").addEventListener("click", function (ev) {
      var b = ev.target.closest("button[data-speed]");
      if (b) { setSpeed(Number(b.dataset.speed)); }
    });
    return el;
  }
  function show(title, meta) {
    bar.hidden = false;
    $("bg-replay-title").textContent = title || "";
    $("bg-replay-meta").textContent = meta || "";
    map.getContainer().classList.add("bg-replaying");
  }
  function configure(o) {          // the head's export menu and time window choice
    var menu = $("bg-replay-menu"), exports = o.exports || [];
    menu.innerHTML = exports.map(function (x) {
      return '<a href="' + esc(x.href) + '" download data-format="' + esc(x.format || x.label) + '">' + esc(x.label) +
        (x.hint ? "<small>" + esc(x.hint) + "</small>" : "") + "</a>";
    }).join("");
    $("bg-replay-export").hidden = !exports.length;
    $("bg-replay-export").open = false;
    var select = $("bg-replay-window");
    select.hidden = !(o.windows && o.windows.length);
    select.innerHTML = (o.windows || []).map(function (w) {
      return '<option value="' + esc(w.value) + '"' + (w.selected ? " selected" : "") + ">" + esc(w.label) + "</option>";
    }).join("");
    select.onchange = o.onWindow ? function () { o.onWindow(select.value); } : null;
  }
  function notice(title, text, bad, o) {  // the bar with a message only: loading, refused, nothing to replay
    pause();
    layer.remove();
    configure(o || {});
    show(title, "");
    bar.classList.add("bg-replay-notice");
    bar.classList.toggle("bad", !!bad);
    $("bg-replay-status").textContent = text;
  }

  /* ---- the route on the map ---- */

  function drawRoute() {
    var pts = stops.map(function (s) { return [s.lat, s.lon]; });
    route.setLatLngs(pts);
    marks.clearLayers();
    legs.forEach(function (leg, i) {   // an arrow half-way along each leg, pointing the way the bike went
      var a = stops[i], b = stops[i + 1];
      var p = map.project([a.lat, a.lon], 0), q = map.project([b.lat, b.lon], 0);
      if (p.distanceTo(q) < 1e-9) { return; }
      var deg = Math.atan2(q.y - p.y, q.x - p.x) * 180 / Math.PI;
      marks.addLayer(L.marker([(a.lat + b.lat) / 2, (a.lon + b.lon) / 2], {
        interactive: false, keyboard: false,
        icon: L.divIcon({ className: "bg-replay-arrow-icon", iconSize: [0, 0],
                          html: '<span class="bg-replay-arrow" style="transform: rotate(' + deg.toFixed(1) + 'deg)"></span>' })
      }));
    });
    var at = {};                     // one numbered marker per station, with every visit's number
    stops.forEach(function (s, i) {
      var key = s.station_id + "@" + s.lat + "," + s.lon;
      (at[key] = at[key] || { stop: s, numbers: [] }).numbers.push(i);
    });
    Object.keys(at).forEach(function (key) {
      var entry = at[key], n = entry.numbers, s = entry.stop;
      var colour = n.indexOf(stops.length - 1) >= 0 ? "last" : n.indexOf(0) >= 0 ? "first" : "";
      var tip = n.map(function (i) {
        return "<b>" + (i + 1) + ".</b> " + time(stops[i].arrived) + " · " + duration(stops[i].dwell_s);
      }).join("<br>");
      marks.addLayer(L.marker([s.lat, s.lon], {
        keyboard: false, zIndexOffset: 1500,   // above the live map's alarm markers, below the replayed bike
        icon: L.divIcon({ className: "bg-step-icon", iconSize: [0, 0],
                          html: '<div class="bg-step ' + colour + '">' + n.map(function (i) { return i + 1; }).join(",") + "</div>" })
      }).bindTooltip("<b>" + name(s) + "</b> (" + esc(s.station_id) + ")<br>" + tip, { direction: "top", offset: [0, -12] }));
    });
  }
  function drawTicks() {
    var html = "", lastLabel = -1;
    stops.forEach(function (s, i) {
      var left = (s.arrived - t0) / span, width = Math.max(0, (s.left - s.arrived) / span);
      html += '<span class="bg-replay-dwell" style="left:' + (left * 100).toFixed(2) + "%;width:" +
        (width * 100).toFixed(2) + '%"></span>';
      if (lastLabel < 0 || left - lastLabel >= TICK_LABEL_GAP) {
        html += '<span class="bg-replay-tick" style="left:' + (left * 100).toFixed(2) + '%">' + (i + 1) + "</span>";
        lastLabel = left;
      }
    });
    $("bg-replay-ticks").innerHTML = html;
  }
  function fit() {
    var pts = stops.map(function (s) { return [s.lat, s.lon]; });
    var below = bar.offsetHeight + 40;
    if (pts.length === 1) { map.setView(pts[0], Math.max(map.getZoom(), 16)); return; }
    map.fitBounds(L.latLngBounds(pts), { paddingTopLeft: [60, 60], paddingBottomRight: [60, below], maxZoom: 17 });
  }

  /* ---- time ---- */

  function where(t) {               // position at t: at a stop (dwell) or a share of the way along a leg
    var i = 0;
    while (i + 1 < stops.length && stops[i + 1].arrived <= t) { i += 1; }
    var s = stops[i], next = stops[i + 1];
    if (!next || t <= s.left) { return { stop: i, lat: s.lat, lon: s.lon }; }
    var f = Math.min(1, Math.max(0, (t - s.left) / Math.max(1, next.arrived - s.left)));
    return { leg: i, f: f, lat: s.lat + (next.lat - s.lat) * f, lon: s.lon + (next.lon - s.lon) * f };
  }
  function status(pos) {
    if (pos.stop !== undefined) {
      var s = stops[pos.stop];
      return '<span class="bg-replay-state at">' + esc(w("rp_at")) + "</span><b>" + name(s) + '</b> <span class="dim">(' +
        esc(s.station_id) + ")</span> · " +
        esc(w("rp_stop_of", { i: pos.stop + 1, n: stops.length, t: time(s.arrived), d: duration(s.dwell_s) }));
    }
    var leg = legs[pos.leg] || {}, a = stops[pos.leg], b = stops[pos.leg + 1];
    var kmh = typeof leg.speed_kmh === "number" ? Math.round(leg.speed_kmh) + " km/h" : w("rp_speed_unknown");
    return '<span class="bg-replay-state moving">' + esc(w("rp_moving")) + "</span><b>" + name(a) + "</b> → <b>" +
      name(b) + "</b> · " + esc(w("rp_leg_of", { i: pos.leg + 1, n: legs.length, dist: metres(leg.distance_m || 0),
        d: duration(leg.duration_s || 0), speed: kmh, heading: leg.heading || "–" }));
  }
  function render() {
    var t = t0 + offset, pos = where(t);
    marker.setLatLng([pos.lat, pos.lon]);
    marker.setTooltipContent(time(t));
    var path = stops.slice(0, (pos.stop !== undefined ? pos.stop : pos.leg) + 1).map(function (s) { return [s.lat, s.lon]; });
    path.push([pos.lat, pos.lon]);
    played.setLatLngs(path);
    var slider = $("bg-replay-slider");
    slider.value = String(Math.round(offset / 1000));
    slider.style.setProperty("--p", (offset / span * 100).toFixed(2) + "%");
    $("bg-replay-time").querySelector("b").textContent = time(t);
    $("bg-replay-time").querySelector("small").textContent = day(t);
    $("bg-replay-status").innerHTML = status(pos);
    bar.classList.toggle("moving", pos.leg !== undefined);
  }
  function frame(now) {
    if (!playing) { return; }
    if (lastFrame !== null) { offset = Math.min(span, offset + (now - lastFrame) * speed); }
    lastFrame = now;
    render();
    if (offset >= span) { pause(); return; }
    window.requestAnimationFrame(frame);
  }
  function play() {
    if (!stops.length || playing) { return; }
    if (offset >= span) { offset = 0; }
    playing = true;
    lastFrame = null;
    bar.classList.add("playing");
    $("bg-replay-play").setAttribute("aria-label", w("rp_pause"));
    window.requestAnimationFrame(frame);
  }
  function pause() {
    playing = false;
    bar.classList.remove("playing");
    $("bg-replay-play").setAttribute("aria-label", w("rp_play"));
  }
  function seek(ms) {
    offset = Math.min(span, Math.max(0, ms));
    if (stops.length) { render(); }
  }
  function setSpeed(x) {
    speed = x;
    bar.querySelectorAll("button[data-speed]").forEach(function (b) {
      b.classList.toggle("on", Number(b.dataset.speed) === x);
      b.setAttribute("aria-pressed", Number(b.dataset.speed) === x ? "true" : "false");
    });
  }

  /* ---- loading and closing ---- */

  function load(summary, o) {
    o = o || {};
    pause();
    stops = (summary.stops || []).map(function (s) {
      return Object.assign({}, s, { arrived: Date.parse(s.arrived_at), left: Date.parse(s.left_at) });
    });
    legs = summary.legs || [];
    if (!stops.length) { notice(o.title, o.empty || w("rp_empty"), false, o); return; }
    configure(o);
    t0 = stops[0].arrived;
    span = Math.max(1000, Math.max.apply(null, stops.map(function (s) { return s.left; })) - t0);
    var km = legs.reduce(function (sum, leg) { return sum + (leg.distance_m || 0); }, 0);
    var sameDay = day(t0) === day(t0 + span);
    show(o.title, (sameDay ? time(t0) + "–" + time(t0 + span) : day(t0) + " " + time(t0) + " – " + day(t0 + span) +
      " " + time(t0 + span)) + " · " + (stops.length === 1 ? w("rp_one_stop") : w("rp_stops", { n: stops.length })) +
      " · " + metres(km));
    bar.classList.remove("bg-replay-notice", "bad");
    $("bg-replay-slider").max = String(Math.ceil(span / 1000));
    drawTicks();
    layer.addTo(map);
    drawRoute();
    setSpeed(speed);
    offset = 0;
    render();
    fit();
    if (o.autoplay) { play(); }
  }
  function close() {
    pause();
    layer.remove();
    bar.hidden = true;
    map.getContainer().classList.remove("bg-replaying");
    if (opts.onClose) { opts.onClose(); }
  }
  function state() {
    var pos = stops.length ? where(t0 + offset) : {};
    return { playing: playing, speed: speed, offset_s: offset / 1000, span_s: span / 1000, stop: pos.stop,
             leg: pos.leg, lat: pos.lat, lon: pos.lon };
  }

  setSpeed(speed);
  return { load: load, notice: notice, play: play, pause: pause, seek: seek, setSpeed: setSpeed, close: close,
           state: state, element: bar };
}
