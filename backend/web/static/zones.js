/* The zone editor: click the map to set a zone's corners, name it and save it; rename or delete zones in the list.
   Plain Leaflet, served by the backend (no CDN, no drawing plug-in). */
(function () {
  "use strict";
  var BG = window.BG, t = BG.t, esc = BG.esc, cfg = BG.config;
  var ZONE_STYLE = { color: "#7c3aed", weight: 2.5, fillColor: "#7c3aed", fillOpacity: 0.14, className: "bg-zone-shape" };
  var CURRENT_STYLE = { color: "#1d4ed8", weight: 3.5, fillColor: "#1d4ed8", fillOpacity: 0.2 };
  var DRAFT_STYLE = { color: "#dc2626", weight: 2.5, dashArray: "6 5", fillColor: "#dc2626", fillOpacity: 0.1 };

  var map = L.map("zone-map", { zoomSnap: 0.25, doubleClickZoom: false });
  function latLngsOf(zone) {
    return zone.geometry.coordinates[0].slice(0, -1).map(function (p) { return [p[1], p[0]]; });
  }
  // The view first (the stations and the zones), so that every layer is drawn on a map that has one.
  var extent = (cfg.stations || []).map(function (s) { return [s.lat, s.lon]; });
  (cfg.zones || []).forEach(function (z) { extent = extent.concat(latLngsOf(z)); });
  if (extent.length) { map.fitBounds(L.latLngBounds(extent), { padding: [40, 40], maxZoom: 16, animate: false }); }
  else { map.setView([30.27, 120.15], 13); }
  if (cfg.tile_url) { L.tileLayer(cfg.tile_url, { attribution: cfg.tile_attribution, maxZoom: 20 }).addTo(map); }
  L.control.scale().addTo(map);

  // What the commander orients by without a base map: the roads and the stations.
  if (cfg.roads && cfg.roads.features && cfg.roads.features.length) {
    L.geoJSON(cfg.roads, { style: { color: "#94a3b8", weight: 3, opacity: 0.9 }, interactive: false }).addTo(map);
  }
  (cfg.stations || []).forEach(function (s) {
    L.circleMarker([s.lat, s.lon], { radius: 5, color: "#0f172a", weight: 1.5, fillColor: "#ffffff", fillOpacity: 1, interactive: false })
      .bindTooltip(esc(s.name), { direction: "top", offset: [0, -6], className: "bg-zone-station" }).addTo(map);
  });

  var zones = {};          // zone_id -> {data, layer}
  var zoneLayer = L.featureGroup().addTo(map);
  var draft = [];          // [lat, lng] corners of the zone being drawn
  var draftLine = L.polygon([], DRAFT_STYLE);   // on the map only while it has corners (Leaflet cannot draw none)
  var draftDots = L.layerGroup().addTo(map);
  var current = null;

  var $ = function (id) { return document.getElementById(id); };
  var nameInput = $("zone-name"), errorBox = $("zone-error"), doneBox = $("zone-done");

  function refusal(r) {
    var d = r.data || {};
    if (d.code && t(d.code) !== d.code) { return t(d.code, d.params || {}); }
    return r.message || t("zones_err_unknown");
  }
  function showError(text) {
    errorBox.textContent = text || "";
    errorBox.hidden = !text;
    if (text) { doneBox.hidden = true; }
  }
  function showDone(text) {
    doneBox.textContent = text;
    doneBox.hidden = false;
    errorBox.hidden = true;
  }

  function redrawDraft() {
    draftLine.setLatLngs(draft);
    if (draft.length && !map.hasLayer(draftLine)) { draftLine.addTo(map); }
    if (!draft.length && map.hasLayer(draftLine)) { map.removeLayer(draftLine); }
    draftDots.clearLayers();
    draft.forEach(function (p, i) {
      L.circleMarker(p, { radius: i === 0 ? 6 : 4.5, color: "#dc2626", weight: 2, fillColor: "#fff", fillOpacity: 1, interactive: false })
        .addTo(draftDots);
    });
    var n = draft.length;
    $("zone-count").textContent = n === 0 ? t("zones_click_to_start")
      : n < cfg.min_vertices ? t("zones_corners_more", { n: n, more: cfg.min_vertices - n })
      : t("zones_corners", { n: n });
    $("zone-undo").disabled = n === 0;
    $("zone-clear").disabled = n === 0;
    $("zone-save").disabled = n < cfg.min_vertices;
  }

  map.on("click", function (ev) {
    if (draft.length >= cfg.max_vertices) { showError(t("zones_err_vertices", { n: draft.length + 1 })); return; }
    draft.push([ev.latlng.lat, ev.latlng.lng]);
    doneBox.hidden = true;
    redrawDraft();
  });
  $("zone-undo").addEventListener("click", function () { draft.pop(); redrawDraft(); });
  $("zone-clear").addEventListener("click", function () { draft = []; showError(""); redrawDraft(); });

  $("zone-save").addEventListener("click", function () {
    var name = nameInput.value.trim();
    if (!name) { showError(t("zones_err_name_empty")); nameInput.focus(); return; }
    var ring = draft.map(function (p) { return [+p[1].toFixed(6), +p[0].toFixed(6)]; });
    ring.push(ring[0]);
    var button = $("zone-save");
    button.disabled = true;
    BG.api("POST", cfg.zones_url, { name: name, geometry: { type: "Polygon", coordinates: [ring] } }).then(function (r) {
      button.disabled = false;
      if (!r.ok) { showError(refusal(r)); return; }
      draft = [];
      nameInput.value = "";
      redrawDraft();
      put(r.data);
      select(r.data.zone_id);
      showDone(t("zones_saved", { name: r.data.name }));
    });
  });

  function put(zone) {
    var old = zones[zone.zone_id];
    if (old) { zoneLayer.removeLayer(old.layer); }
    var layer = L.polygon(latLngsOf(zone), ZONE_STYLE)
      .bindTooltip(esc(zone.name), { permanent: true, direction: "center", className: "bg-zone-label" });
    layer.on("click", function (ev) { L.DomEvent.stopPropagation(ev); select(zone.zone_id); });
    layer.addTo(zoneLayer);
    zones[zone.zone_id] = { data: zone, layer: layer };
    renderList();
  }

  function select(id) {
    current = id;
    Object.keys(zones).forEach(function (k) {
      zones[k].layer.setStyle(+k === id ? CURRENT_STYLE : ZONE_STYLE);
    });
    renderList();
  }

  function renderList() {
    var list = $("zone-list");
    var all = Object.keys(zones).map(function (k) { return zones[k].data; })
      .sort(function (a, b) { return a.name.localeCompare(b.name); });
    $("zone-total").textContent = all.length ? String(all.length) : "";
    $("zone-none").hidden = all.length > 0;
    list.innerHTML = all.map(function (z) {
      return '<li data-zone-id="' + z.zone_id + '"' + (z.zone_id === current ? ' class="current"' : "") + '>' +
        '<div class="bg-zone-row"><span class="bg-zone-swatch"></span>' +
        '<input type="text" maxlength="80" value="' + esc(z.name) + '" aria-label="' + esc(t("zones_name")) + '"></div>' +
        '<div class="bg-zone-row bg-zone-acts"><button type="button" data-act="rename">' + esc(t("zones_rename")) + '</button>' +
        '<button type="button" data-act="show">' + esc(t("zones_show")) + '</button>' +
        '<button type="button" data-act="delete" class="bg-danger-text">' + esc(t("zones_delete")) + '</button></div>' +
        '<div class="bg-zone-meta">' + esc(t("zones_meta", {
          n: z.geometry.coordinates[0].length - 1, who: z.updated_by, when: BG.time(z.updated_at)
        })) + '</div></li>';
    }).join("");
  }

  $("zone-list").addEventListener("click", function (ev) {
    var button = ev.target.closest("button[data-act]");
    if (!button) { return; }
    var li = button.closest("li"), id = +li.dataset.zoneId, zone = zones[id];
    var act = button.dataset.act;
    if (act === "show") {
      select(id);
      map.fitBounds(zone.layer.getBounds(), { padding: [40, 40] });
    } else if (act === "rename") {
      var name = li.querySelector("input").value.trim();
      BG.api("PUT", cfg.zones_url + "/" + id, { name: name }).then(function (r) {
        if (!r.ok) { showError(refusal(r)); return; }
        put(r.data);
        select(id);
        showDone(t("zones_renamed", { name: r.data.name }));
      });
    } else if (act === "delete") {
      // Two steps: the first click asks, the second deletes.
      if (button.dataset.armed !== "1") {
        button.dataset.armed = "1";
        button.textContent = t("zones_delete_confirm");
        button.classList.add("bg-danger");
        return;
      }
      BG.api("DELETE", cfg.zones_url + "/" + id).then(function (r) {
        if (!r.ok) { showError(refusal(r)); return; }
        zoneLayer.removeLayer(zone.layer);
        delete zones[id];
        if (current === id) { current = null; }
        renderList();
        showDone(t("zones_deleted", { name: zone.data.name }));
      });
    }
  });
  $("zone-list").addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && ev.target.tagName === "INPUT") {
      ev.target.closest("li").querySelector('button[data-act="rename"]').click();
    }
  });

  (cfg.zones || []).forEach(put);
  renderList();
  redrawDraft();
})();
