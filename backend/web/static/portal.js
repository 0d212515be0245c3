/* The owner portal: my bikes (where each was last seen, its trail and trips of a chosen day on the map, arm/disarm,
 * report stolen, recovered, certificate, history, consent to a transfer) and the alerts about them, refreshed every
 * few seconds. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var t = BG.t, esc = BG.esc;
  var open = {};            // bike id -> which <details> are open, kept across refreshes
  var byPlate = {};         // plate -> bike id, for an alert's action on its bike

  function localNow() {
    var d = new Date();
    d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
    return d.toISOString().slice(0, 16);
  }
  function fact(label, value) { return "<dt>" + esc(label) + "</dt><dd>" + esc(value || "—") + "</dd>"; }

  function card(bike) {
    var el = document.createElement("article");
    el.className = "bg-card bg-bike" + (bike.stolen ? " stolen" : bike.armed ? " armed" : "");
    el.dataset.bikeId = bike.bike_id;
    var status = bike.stolen
      ? "<p class='bg-banner bad'>" + esc(t("stolen_since", { t: BG.time(bike.stolen_at) })) + "</p>"
      : "<p class='bg-banner " + (bike.armed ? "armed" : "") + "'><b>" + esc(bike.armed ? t("armed") : t("disarmed")) +
        "</b> · " + esc(t("arm_hint")) + "</p>";
    el.innerHTML =
      "<header><span class='bg-plate'>" + esc(bike.plate) + "</span>" +
      (bike.stolen ? "<span class='bg-badge bad'>" + esc(t("stolen")) + "</span>" : "") + "</header>" + status +
      "<dl class='bg-facts'>" +
      fact(t("brand") + " / " + t("model") + " / " + t("colour"), [bike.brand, bike.model, bike.colour].filter(Boolean).join(" · ")) +
      fact(t("frame"), bike.frame_number) + fact(t("chip"), bike.tag_id) + fact(t("registered"), BG.time(bike.registered_at)) +
      "</dl>" +
      "<p class='bg-where'>" + esc(bike.last_seen
        ? t("last_seen", { station: bike.last_seen.station_name, t: BG.time(bike.last_seen.seen_at) })
        : t("not_seen")) + "</p>" +
      "<div class='bg-actions'>" +
      (bike.stolen
        ? "<button class='bg-primary' data-act='recovered'>" + esc(t("mark_recovered")) + "</button>"
        : "<button class='" + (bike.armed ? "bg-button" : "bg-primary") + "' data-act='arm'>" +
          esc(bike.armed ? t("disarm") : t("arm")) + "</button>") +
      "<a class='bg-button' href='/bikes/" + bike.bike_id + "/certificate' target='_blank' rel='noopener'>" + esc(t("certificate")) + "</a>" +
      "<button class='bg-button' data-act='consent'>" + esc(t("consent")) + "</button></div>" +
      "<p class='bg-notice' data-role='consent' hidden></p>" +
      (bike.stolen ? "" :
        "<details data-key='theft'><summary class='bg-danger-text'>" + esc(t("report_stolen")) + "</summary>" +
        "<form class='bg-op' data-act='theft' novalidate>" +
        "<label class='bg-field'><span>" + esc(t("stolen_at")) + "</span><input type='datetime-local' name='stolen_at' value='" + localNow() + "'></label>" +
        "<label class='bg-field'><span>" + esc(t("place")) + "</span><input name='place' maxlength='200'></label>" +
        "<label class='bg-field'><span>" + esc(t("circumstances")) + "</span><textarea name='circumstances' maxlength='2000' rows='3'></textarea></label>" +
        "<label class='bg-field'><span>" + esc(t("police_report")) + "</span><input name='police_report' maxlength='50'></label>" +
        "<button class='bg-danger'>" + esc(t("send_report")) + "</button></form></details>") +
      "<details data-key='where'><summary>" + esc(t("where_is_it")) + "</summary>" +
      "<label class='bg-field bg-day'><span>" + esc(t("day")) + "</span><input type='date' name='day' value='" + localNow().slice(0, 10) + "'></label>" +
      "<p class='bg-trip' data-role='trip'></p>" +
      "<iframe class='bg-map-frame bg-trail' title='" + esc(t("trail_map")) + "'></iframe></details>" +
      "<details data-key='share'><summary>" + esc(t("share")) + "</summary>" +
      "<p class='bg-muted'>" + esc(t("share_hint")) + "</p>" +
      "<form class='bg-op bg-share-form' data-act='share' novalidate>" +
      "<label class='bg-field'><span>" + esc(t("share_for")) + "</span><input name='label' maxlength='100'></label>" +
      "<label class='bg-field'><span>" + esc(t("share_days")) + "</span><select name='days'>" +
      [1, 7, 30].map(function (n) { return "<option value='" + n + "'" + (n === 7 ? " selected" : "") + ">" + esc(t("share_days_n", { n: n })) + "</option>"; }).join("") +
      "</select></label><button class='bg-primary'>" + esc(t("share_make")) + "</button></form>" +
      "<p class='bg-notice' data-role='share-link' hidden></p><ul class='bg-shares'></ul></details>" +
      "<details data-key='history'><summary>" + esc(t("history")) + "</summary><div class='bg-history-table'></div></details>" +
      "<p class='bg-error' role='alert' hidden></p>";
    var error = el.querySelector(".bg-error");
    function done(r) {
      if (!r.ok) { error.textContent = r.message; error.hidden = false; return; }
      refresh();
    }
    el.querySelectorAll("button[data-act]").forEach(function (b) {
      b.addEventListener("click", function () {
        error.hidden = true;
        var act = b.dataset.act, url = "/api/bikes/" + bike.bike_id;
        if (act === "arm") { BG.api("POST", url + "/arm", { armed: !bike.armed }).then(done); }
        else if (act === "recovered") { BG.api("POST", url + "/recovered").then(done); }
        else if (act === "consent") {
          BG.api("POST", url + "/transfer-consent").then(function (r) {
            if (!r.ok) { done(r); return; }
            var p = el.querySelector("[data-role=consent]");
            p.innerHTML = esc(t("consent_code_is", { code: "\u0000", t: BG.time(r.data.expires_at) }))
              .replace("\u0000", "<b class='bg-mono bg-code'>" + esc(r.data.code) + "</b>");
            p.hidden = false;
          });
        }
      });
    });
    var form = el.querySelector("form[data-act=theft]");
    if (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var when = form.stolen_at.value ? new Date(form.stolen_at.value).toISOString() : null;
        var v = function (n) { return form[n].value.trim() || null; };
        BG.api("POST", "/api/bikes/" + bike.bike_id + "/theft",
          { stolen_at: when, place: v("place"), circumstances: v("circumstances"), police_report: v("police_report") })
          .then(done);
      });
    }
    el.querySelectorAll("details").forEach(function (d) {
      var key = bike.bike_id + ":" + d.dataset.key;
      d.open = !!open[key];
      d.addEventListener("toggle", function () {
        open[key] = d.open;
        if (d.open && d.dataset.key === "history") { history(bike.bike_id, d.querySelector(".bg-history-table")); }
        if (d.open && d.dataset.key === "where") { trail(bike.bike_id, d); }
      });
      if (d.open && d.dataset.key === "history") { history(bike.bike_id, d.querySelector(".bg-history-table")); }
      if (d.open && d.dataset.key === "where") { trail(bike.bike_id, d); }
      if (d.open && d.dataset.key === "share") { sharesOf(bike.bike_id, d); }
      if (d.dataset.key === "share") {
        d.addEventListener("toggle", function () { if (d.open) { sharesOf(bike.bike_id, d); } });
        d.querySelector("form").addEventListener("submit", function (ev) {
          ev.preventDefault();
          var f = ev.target;
          BG.api("POST", "/api/bikes/" + bike.bike_id + "/shares", { days: Number(f.days.value), label: f.label.value.trim() || null })
            .then(function (r) {
              if (!r.ok) { error.textContent = r.message; error.hidden = false; return; }
              var p = d.querySelector("[data-role=share-link]");
              p.innerHTML = esc(t("share_link_is")) + " <input class='bg-mono bg-share-url' readonly value='" + esc(r.data.url) + "'>" +
                " <button type='button' class='bg-button'>" + esc(t("share_copy")) + "</button>";
              p.querySelector("button").addEventListener("click", function (e) {
                p.querySelector("input").select();
                navigator.clipboard.writeText(r.data.url).then(function () { e.target.textContent = t("share_copied"); });
              });
              p.hidden = false;
              f.reset();
              sharesOf(bike.bike_id, d);
            });
        });
      }
      if (d.dataset.key === "where") { d.querySelector("input[name=day]").addEventListener("change", function () { trail(bike.bike_id, d); }); }
    });
    return el;
  }
  function duration(s) {
    var m = Math.round(s / 60);
    return m < 60 ? t("minutes", { n: m }) : t("hours_minutes", { h: Math.floor(m / 60), m: m % 60 });
  }
  /* The chosen day (the browser's own midnight to midnight) on the map, and its trip summary. */
  function trail(bikeId, box) {
    var day = box.querySelector("input[name=day]").value || localNow().slice(0, 10);
    var since = new Date(day + "T00:00"), until = new Date(since.getTime());
    until.setDate(until.getDate() + 1);
    var q = "since=" + encodeURIComponent(since.toISOString()) + "&until=" + encodeURIComponent(until.toISOString());
    box.querySelector("iframe").src = "/portal/bikes/" + bikeId + "/map?" + q + "&lang=" + document.documentElement.lang.slice(0, 2);
    var trip = box.querySelector("[data-role=trip]");
    BG.api("GET", "/api/bikes/" + bikeId + "/trajectory/summary?" + q).then(function (r) {
      if (!r.ok) { trip.textContent = r.message; return; }
      var s = r.data.totals;
      trip.textContent = s.stops ? t("trip_totals", {
        km: (s.distance_m / 1000).toFixed(1), moving: duration(s.moving_s), parked: duration(s.parked_s), stops: s.stops
      }) : t("no_trips");
    });
  }
  /* The bike's links: who each is for, until when, and a button to withdraw one still open. */
  function sharesOf(bikeId, box) {
    BG.api("GET", "/api/bikes/" + bikeId + "/shares").then(function (r) {
      var list = box.querySelector(".bg-shares");
      if (!r.ok) { list.textContent = r.message; return; }
      var now = Date.now();
      list.innerHTML = r.data.length ? "" : "<li class='bg-muted'>" + esc(t("shares_none")) + "</li>";
      r.data.forEach(function (sh) {
        var open = !sh.revoked_at && Date.parse(sh.expires_at) > now;
        var state = sh.revoked_at ? t("share_revoked", { t: BG.time(sh.revoked_at) })
          : open ? t("share_until", { t: BG.time(sh.expires_at) }) : t("share_expired", { t: BG.time(sh.expires_at) });
        var li = document.createElement("li");
        li.className = open ? "" : "bg-muted";
        li.innerHTML = "<b>" + esc(sh.label || "—") + "</b> · " + esc(state) +
          (open ? " <button type='button' class='bg-button'>" + esc(t("share_revoke")) + "</button>" : "");
        var b = li.querySelector("button");
        if (b) {
          b.addEventListener("click", function () {
            BG.api("DELETE", "/api/bikes/" + bikeId + "/shares/" + sh.share_id).then(function () { sharesOf(bikeId, box); });
          });
        }
        list.appendChild(li);
      });
    });
  }
  function history(bikeId, box) {
    BG.api("GET", "/api/bikes/" + bikeId + "/history").then(function (r) {
      if (!r.ok) { box.textContent = r.message; return; }
      box.innerHTML = "<table><tbody>" + r.data.map(function (h) {
        return "<tr><td>" + esc(t("h_" + h.kind)) + "</td><td class='bg-mono'>" + esc(h.value) + "</td><td>" +
          esc(BG.time(h.valid_from)) + " – " + (h.valid_to ? esc(BG.time(h.valid_to)) : "<i>" + esc(t("h_current")) + "</i>") +
          "</td></tr>";
      }).join("") + "</tbody></table>";
    });
  }

  /* A stolen bike back at its usual stations for a while (backend.recovery_followup): is it back? */
  function followUp(li, a) {
    li.className += " bg-followup";
    li.innerHTML = "<b>" + esc(t("followup_title")) + "</b> · <span class='bg-plate small'>" + esc(a.plate) + "</span><br>" +
      esc(t("followup_prompt", { plate: a.plate, station: a.station_name || a.station_id, t: BG.time(a.first_seen_at) })) +
      (byPlate[a.plate] ? " <button class='bg-primary' data-act='followup-recovered'>" + esc(t("followup_mark")) + "</button>" : "");
    var b = li.querySelector("button");
    if (b) {
      b.addEventListener("click", function () {
        BG.api("POST", "/api/bikes/" + byPlate[a.plate] + "/recovered").then(refresh);
      });
    }
    return li;
  }

  function alarms() {
    BG.api("GET", "/api/alarms").then(function (r) {
      if (!r.ok) { return; }
      var list = $("alarms");
      list.innerHTML = "";
      $("no-alarms").hidden = r.data.length > 0;
      r.data.forEach(function (a) {
        var li = document.createElement("li");
        li.className = "bg-alert sev-" + esc(a.severity);
        if (a.kind === "possibly_recovered") { list.appendChild(followUp(li, a)); return; }
        li.innerHTML = "<b>" + esc(t("alarm_" + a.kind)) + "</b> · <span class='bg-plate small'>" + esc(a.plate) + "</span><br>" +
          esc(t("seen_at", { station: a.station_name || a.station_id, t: BG.time(a.last_seen_at) })) +
          (a.kind === "armed_bike_moving" ? " <button class='bg-button'>" + esc(t("it_was_me")) + "</button>" : "");
        var b = li.querySelector("button");
        if (b) { b.addEventListener("click", function () { BG.api("POST", "/api/alarms/" + a.id + "/clear").then(alarms); }); }
        list.appendChild(li);
      });
    });
  }

  function refresh() {
    BG.api("GET", "/api/bikes").then(function (r) {
      if (!r.ok) { return; }
      var box = $("bikes");
      box.innerHTML = r.data.length ? "" : "<p class='bg-card bg-muted'>" + esc(t("no_bikes")) + "</p>";
      r.data.forEach(function (bike) { byPlate[bike.plate] = bike.bike_id; box.appendChild(card(bike)); });
      alarms();  // after the bikes: an alert's action needs its bike's id
    });
  }
  refresh();
  setInterval(alarms, 10000);
})();
