/* The registration counter: a new owner + bike + chip in one form, checked field by field as the clerk
 * types (format here, "already taken" by asking the server); and bike services (find, history, transfer,
 * chip replacement, plate change, deregistration). */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var t = BG.t, esc = BG.esc;
  var owner = { mode: "unknown", id: null, atLimit: false };
  var state = {};           // field id -> "ok" | "bad" | "partial" | "empty" | "checking"

  /* ---- tabs ---- */
  document.querySelectorAll(".bg-tab").forEach(function (tab) {
    tab.addEventListener("click", function () {
      document.querySelectorAll(".bg-tab").forEach(function (x) { x.classList.toggle("current", x === tab); });
      document.querySelectorAll(".bg-tab-panel").forEach(function (p) { p.hidden = p.id !== "tab-" + tab.dataset.tab; });
    });
  });

  /* The server's refusal in the page's language: worded here by its code (backend.registry.ERROR_CODES) with its
     params, else the server's own (English) text. `refusal` is an error body or an availability entry. */
  function said(refusal, fallback) {
    var d = refusal || {};
    if (d.code) {
      var words = t("err_" + d.code, d.params || {});
      if (words !== "err_" + d.code) { return words; }
    }
    return fallback || d.detail || "";
  }
  function failed(r) { return said(r.data, r.message); }

  function set(id, s, msg) { state[id] = s; BG.mark(id, s === "partial" || s === "empty" || s === "checking" ? "info" : s, msg); }

  /* ---- owner ---- */
  var lookupSeq = 0;
  function showOwner(o) {
    var held = (o.plates || []).length;
    owner = { mode: "found", id: o.owner_id, atLimit: held >= o.max_bikes };
    var box = $("owner-found");
    box.innerHTML = "<b>" + esc(t("owner_found")) + " #" + esc(o.owner_id) + "</b>" +
      "<div class='bg-owner-name'>" + esc(o.name) + "</div>" +
      "<div class='bg-muted'>" + esc(o.id_number_masked) + " · " + esc(o.mobile || "") + "</div>" +
      "<div class='bg-muted'>" + esc(o.address || "") + "</div>" +
      "<div class='" + (owner.atLimit ? "bg-msg bad" : "bg-msg") + "'>" +
      esc(t("bikes_held", { n: held, max: o.max_bikes })) + (held ? " (" + esc(o.plates.join(", ")) + ")" : "") +
      (owner.atLimit ? " — " + esc(t("at_limit")) : "") + "</div>";
    box.hidden = false;
    $("owner-new").hidden = true;
    set("id_number", owner.atLimit ? "bad" : "ok", owner.atLimit ? t("at_limit") : t("id_ok"));
  }
  function onIdNumber() {
    var c = BG.idCheck($("id_number").value);
    owner = { mode: "unknown", id: null, atLimit: false };
    $("owner-found").hidden = true;
    $("owner-new").hidden = true;
    set("id_number", c.state, c.msg);
    if (c.state !== "ok") { return; }
    var seq = ++lookupSeq;
    set("id_number", "checking", t("checking"));
    BG.api("POST", "/api/owners/lookup", { id_number: c.value }).then(function (r) {
      if (seq !== lookupSeq) { return; }
      if (!r.ok) { set("id_number", "bad", failed(r)); return; }
      if (r.data.owner) { showOwner(r.data.owner); return; }
      owner = { mode: "new", id: null, atLimit: false };
      $("owner-new").hidden = false;
      set("id_number", "ok", t("id_ok"));
    });
  }
  $("id_number").addEventListener("input", onIdNumber);

  function required(id) {
    var v = $(id).value.trim();
    set(id, v ? "ok" : "bad", v ? "" : t("required"));
  }
  ["name", "address"].forEach(function (id) { $(id).addEventListener("input", function () { required(id); }); });
  $("mobile").addEventListener("input", function () {
    var c = BG.mobileCheck($("mobile").value);
    set("mobile", c.state === "empty" ? "bad" : c.state, c.state === "empty" ? t("required") : c.msg);
  });
  $("login").addEventListener("input", function () {
    var v = $("login").value.trim();
    set("login", !v || /^[A-Za-z0-9._@-]{3,64}$/.test(v) ? "ok" : "bad", !v ? t("login_hint") : "");
  });

  /* ---- bike and chip: format first, then "is it free?" from the server ---- */
  var checks = { plate: BG.plateCheck, frame_number: BG.serialCheck, motor_number: BG.serialCheck, tag_id: BG.chipCheck };
  var seqs = {};
  function askServer(id, value) {
    var seq = seqs[id];
    BG.api("GET", "/api/bikes/availability?" + encodeURIComponent(id) + "=" + encodeURIComponent(value)).then(function (r) {
      if (seq !== seqs[id]) { return; }   // the clerk typed on meanwhile
      if (!r.ok) { set(id, "bad", failed(r)); return; }
      set(id, r.data[id] ? "bad" : "ok", r.data[id] ? said(r.data[id]) : t("available"));
    });
  }
  Object.keys(checks).forEach(function (id) {
    var ask = BG.debounce(askServer, 250);   // one timer per field
    $(id).addEventListener("input", function () {
      var c = checks[id]($(id).value);
      seqs[id] = (seqs[id] || 0) + 1;
      if (c.state !== "ok") { set(id, c.state, c.msg); return; }
      set(id, "checking", t("checking"));
      ask(id, c.value);
    });
  });

  /* ---- submit ---- */
  function validateAll() {
    var ids = ["id_number", "plate", "frame_number", "motor_number", "tag_id"];
    if (owner.mode === "new") { ids = ids.concat(["name", "mobile", "address"]); }
    var checkers = { id_number: BG.idCheck, mobile: BG.mobileCheck };
    Object.keys(checks).forEach(function (k) { checkers[k] = checks[k]; });
    ids.forEach(function (id) {
      if (state[id] === undefined || state[id] === "empty" || state[id] === "partial") {
        if (id === "name" || id === "address") { required(id); return; }
        var c = checkers[id]($(id).value);
        set(id, "bad", c.state === "empty" ? t("required") : c.msg);
      }
    });
    var loginVal = $("login").value.trim();
    if (owner.mode === "new" && loginVal && state.login === "bad") { return false; }
    return owner.mode !== "unknown" && !owner.atLimit && ids.every(function (id) { return state[id] === "ok"; });
  }
  function fieldOf(r) {
    if (r.data && r.data.field) { return r.data.field; }
    if (r.data && Array.isArray(r.data.detail) && r.data.detail.length) {
      var loc = r.data.detail[0].loc || [];
      return loc[loc.length - 1];
    }
    return null;
  }
  /* A v2 chip is keyed on the programming cable as the bike is registered: the clerk lays it there first. */
  function chipKind() {
    var picked = document.querySelector("input[name=chip_kind]:checked");
    return picked ? picked.value : "v1";
  }
  document.querySelectorAll("input[name=chip_kind]").forEach(function (r) {
    r.addEventListener("change", function () { $("v2-cable-hint").hidden = chipKind() !== "v2"; });
  });
  function body() {
    var b = {
      plate: BG.plateCheck($("plate").value).value, frame_number: $("frame_number").value.trim(),
      motor_number: $("motor_number").value.trim(), tag_id: BG.chipCheck($("tag_id").value).value,
      chip_kind: chipKind(),
      brand: $("brand").value.trim() || null, model: $("model").value.trim() || null, colour: $("colour").value.trim() || null
    };
    if (owner.mode === "found") { b.owner_id = owner.id; }
    else {
      b.owner = {
        id_number: BG.idCheck($("id_number").value).value, name: $("name").value.trim(),
        mobile: BG.mobileCheck($("mobile").value).value, address: $("address").value.trim(),
        create_account: $("create_account").checked, login: $("login").value.trim() || null
      };
    }
    return b;
  }
  $("register-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var error = $("register-error");
    error.hidden = true;
    if (!validateAll()) { error.textContent = t("fix_fields"); error.hidden = false; return; }
    var submit = $("register-submit");
    submit.disabled = true;
    submit.textContent = chipKind() === "v2" ? t("v2_writing") : t("registering");
    BG.api("POST", "/api/bikes", body()).then(function (r) {
      if (!r.ok) {
        submit.disabled = false;
        submit.textContent = t("register");
        var field = fieldOf(r);
        /* The cable failed, not the number typed: said beside the chip, which the clerk may try again as it is. */
        var cable = r.data && /^v2_/.test(r.data.code || "") && r.data.code !== "v2_chip_other";
        if (cable) { BG.mark("tag_id", "info", failed(r)); }
        else if (field && $(field)) { set(field, "bad", failed(r)); $(field).focus(); }
        error.textContent = failed(r);
        error.hidden = false;
        return null;
      }
      var photo = $("photo").files[0];
      if (!photo) { return r.data; }
      var form = new FormData();
      form.append("photo", photo);
      return BG.api("POST", "/api/bikes/" + r.data.bike.bike_id + "/photos", form).then(function (p) {
        return p.ok ? r.data : Object.assign({ photoRefused: failed(p) }, r.data);
      });
    }).then(function (done) {
      if (done) { showDone(done); }
    });
  });
  function showDone(d) {
    $("register-form").hidden = true;
    $("register-done").hidden = false;
    $("done-plate").textContent = d.bike.plate;
    $("done-certificate").textContent = t("done_certificate", { n: d.certificate.certificate_id }) +
      (d.bike.chip_kind === "v2" ? " " + t("v2_done", { chip: d.bike.tag_id }) : "");
    $("done-print").href = "/bikes/" + d.bike.bike_id + "/certificate";
    $("done-pdf").href = "/bikes/" + d.bike.bike_id + "/certificate.pdf";
    $("done-photo-error").hidden = !d.photoRefused;
    $("done-photo-error").textContent = d.photoRefused ? t("photo_refused", { why: d.photoRefused }) : "";
    showSlip(d.owner_login);
  }
  /* Where owners sign in, as printed on slips: the registry's public address (public_base_url), not this counter's. */
  var loginUrl = BG.config.login_url || window.location.origin + "/login";
  function showSlip(slip) {
    $("slip").hidden = !slip;
    if (slip) {
      $("slip-user").textContent = slip.username;
      $("slip-password").textContent = slip.initial_password;
      $("slip-note").textContent = t("slip_note", { url: loginUrl });
    }
  }
  /* A login slip on a bike card (after a transfer or a new password), printed alone. */
  function slipBox(login, heading) {
    var box = document.createElement("div");
    box.className = "bg-slip";
    box.innerHTML = "<h3>" + esc(heading) + "</h3><dl><dt>" + esc(t("slip_user")) + "</dt><dd class='bg-mono bg-slip-user'>" +
      esc(login.username) + "</dd><dt>" + esc(t("slip_password")) + "</dt><dd class='bg-mono bg-slip-password'>" +
      esc(login.initial_password) + "</dd></dl><p class='bg-muted bg-slip-note'>" + esc(t("slip_note", { url: loginUrl })) +
      "</p><button type='button' class='bg-button bg-no-print bg-slip-print'>" + esc(t("print_slip")) + "</button>";
    box.querySelector(".bg-slip-print").addEventListener("click", function () { printOnly(box); });
    return box;
  }
  /* Print one element of the page (the stylesheet hides the rest while body has bg-print-one), until the
     print dialog closes (afterprint; window.print() does not wait for it everywhere). */
  function unmarkPrint() {
    document.body.classList.remove("bg-print-one");
    document.querySelectorAll(".bg-print-this").forEach(function (x) { x.classList.remove("bg-print-this"); });
  }
  window.addEventListener("afterprint", unmarkPrint);
  function printOnly(el) {
    unmarkPrint();
    document.body.classList.add("bg-print-one");
    el.classList.add("bg-print-this");
    window.print();
  }
  $("next-registration").addEventListener("click", function () {
    $("register-form").reset();
    state = {};
    owner = { mode: "unknown", id: null, atLimit: false };
    document.querySelectorAll("#register-form input").forEach(function (i) { i.classList.remove("ok", "bad"); });
    document.querySelectorAll("#register-form .bg-msg").forEach(function (m) { m.textContent = ""; m.className = "bg-msg"; });
    $("owner-found").hidden = true;
    $("owner-new").hidden = true;
    $("register-submit").disabled = false;
    $("register-submit").textContent = t("register");
    $("register-done").hidden = true;
    $("register-form").hidden = false;
    $("id_number").focus();
  });

  /* ---- bike services ---- */
  function query(text) {
    var v = text.trim();
    if (/^[0-9A-Fa-f]{8}$/.test(v)) { return "tag_id=" + v.toUpperCase(); }
    if (BG.plateCheck(v).state === "ok") { return "plate=" + encodeURIComponent(BG.plateCheck(v).value); }
    return "frame_number=" + encodeURIComponent(v.toUpperCase());
  }
  $("find-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    $("find-error").hidden = true;
    BG.api("GET", "/api/bikes?" + query($("find").value)).then(function (r) {
      if (!r.ok) { $("find-error").textContent = failed(r); $("find-error").hidden = false; return; }
      $("found").innerHTML = r.data.length ? "" : "<p class='bg-muted'>" + esc(t("no_match")) + "</p>";
      r.data.forEach(function (bike) { $("found").appendChild(bikeCard(bike)); });
    });
  });
  function row(label, value) { return "<dt>" + esc(label) + "</dt><dd>" + esc(value || "—") + "</dd>"; }
  function input(name, label, attrs) {
    return "<label class='bg-field'><span>" + esc(label) + "</span><input name='" + name + "' " + (attrs || "") +
      "><small class='bg-msg'></small></label>";
  }
  /* A deregistered bike keeps only its history: it says so (when, why) where the plate was, and offers no service. */
  function cardHead(bike) {
    if (bike.status === "active") {
      return "<header><span class='bg-plate'>" + esc(bike.plate) + "</span>" +
        (bike.stolen ? "<span class='bg-badge bad'>" + esc(t("stolen")) + "</span>" : "") +
        "<a class='bg-button' href='/bikes/" + bike.bike_id + "/certificate' target='_blank' rel='noopener'>" +
        esc(t("certificate")) + "</a></header>";
    }
    return "<header><span class='bg-badge gone'>" + esc(t("deregistered_badge")) + "</span>" +
      (bike.former_plate ? "<span class='bg-plate released'>" + esc(bike.former_plate) + "</span>" : "") + "</header>" +
      "<p class='bg-banner gone'>" + esc(t("deregistered_on", {
        status: bike.status === "exported" ? t("exported") : t("scrapped"), t: BG.time(bike.deregistered_at),
        plate: bike.former_plate || "—" })) + "</p>";
  }
  function services() {
    return "<details><summary>" + esc(t("transfer")) + "</summary><form data-op='transfer' class='bg-op'>" +
      input("consent_code", t("consent_code"), "spellcheck='false' class='bg-mono'") +
      input("old_owner_id_number", t("old_owner_id"), "maxlength='20'") +
      input("new_owner_id_number", t("new_owner_id"), "maxlength='20'") +
      "<div class='bg-new-owner' hidden>" + input("name", t("name")) + input("mobile", t("mobile")) + input("address", t("address")) + "</div>" +
      "<button class='bg-primary'>" + esc(t("do_transfer")) + "</button></form></details>" +
      "<details><summary>" + esc(t("replace_chip")) + "</summary><form data-op='chip' class='bg-op'>" +
      input("tag_id", t("new_chip"), "maxlength='8' class='bg-mono'") +
      "<label class='bg-field'><span>" + esc(t("v2_kind")) + "</span><select name='chip_kind'><option value='v1'>" +
      esc(t("v2_kind_v1")) + "</option><option value='v2'>" + esc(t("v2_kind_v2")) + "</option></select>" +
      "<small class='bg-msg'>" + esc(t("v2_cable_hint")) + "</small></label>" + input("reason", t("reason")) +
      "<button class='bg-primary'>" + esc(t("do_replace")) + "</button></form></details>" +
      "<details><summary>" + esc(t("change_plate")) + "</summary><form data-op='plate' class='bg-op'>" +
      input("plate", t("new_plate")) + input("reason", t("reason")) +
      "<button class='bg-primary'>" + esc(t("do_change")) + "</button></form></details>" +
      "<details><summary>" + esc(t("reissue_password")) + "</summary><div class='bg-op'><p class='bg-muted'>" +
      esc(t("reissue_hint")) + "</p><button type='button' class='bg-primary' data-act='reissue'>" +
      esc(t("do_reissue")) + "</button></div></details>" +
      "<details><summary>" + esc(t("deregister")) + "</summary><form data-op='deregister' class='bg-op'>" +
      "<label class='bg-field'><span>" + esc(t("reason")) + "</span><select name='status'><option value='scrapped'>" +
      esc(t("scrapped")) + "</option><option value='exported'>" + esc(t("exported")) + "</option></select></label>" +
      input("note", t("note")) + "<button class='bg-danger'>" + esc(t("do_deregister")) + "</button></form></details>";
  }
  function bikeCard(bike) {
    var card = document.createElement("article");
    var active = bike.status === "active";
    card.className = "bg-card bg-bike" + (bike.stolen ? " stolen" : "") + (active ? "" : " gone");
    var o = bike.owner || {};
    var photoId = (bike.photo_ids || []).slice(-1)[0];
    card.innerHTML = cardHead(bike) +
      "<p class='bg-done-note' role='status' hidden></p>" +
      (photoId ? "<img class='bg-bike-photo' src='/api/bikes/" + bike.bike_id + "/photos/" + photoId + "' alt='" +
        esc(t("photo")) + "'>" : "") +
      "<dl class='bg-facts'>" +
      row(t("brand") + " / " + t("model") + " / " + t("colour"), [bike.brand, bike.model, bike.colour].filter(Boolean).join(" · ")) +
      row(t("frame"), bike.frame_number) + row(t("motor"), bike.motor_number) +
      row(t("chip"), active ? bike.tag_id + " · " + (bike.chip_kind === "v2" ? t("v2_short_v2") : t("v2_short_v1"))
        : t("chip_retired")) +
      row(active ? t("owner") : t("last_owner"), (o.name_masked || "") + " · " + (o.id_number_masked || "") + " · " + (o.mobile_masked || "")) +
      row(t("registered"), BG.time(bike.registered_at)) + "</dl>" +
      "<details class='bg-history'><summary>" + esc(t("history")) +
      "</summary><div class='bg-history-table'></div></details>" + (active ? services() : "") +
      "<p class='bg-error' role='alert' hidden></p><div class='bg-slip-box'></div>";
    var history = card.querySelector(".bg-history");
    history.addEventListener("toggle", function () {
      if (history.open) { loadHistory(bike.bike_id, card.querySelector(".bg-history-table")); }
    });
    if (!active) { history.open = true; return card; }  // its history is what the clerk came for (toggle loads it)
    card.querySelectorAll("form.bg-op").forEach(function (form) {
      form.addEventListener("submit", function (ev) { ev.preventDefault(); operate(bike, form, card); });
    });
    card.querySelector("[data-act=reissue]").addEventListener("click", function () { reissue(bike, card); });
    var newId = card.querySelector("[name=new_owner_id_number]");
    newId.addEventListener("input", function () {
      var c = BG.idCheck(newId.value);
      var note = newId.parentNode.querySelector(".bg-msg");
      note.textContent = c.msg;
      note.className = "bg-msg" + (c.state === "bad" ? " bad" : c.state === "ok" ? " ok" : "");
      card.querySelector(".bg-new-owner").hidden = true;
      delete newId.dataset.ownerId;
      if (c.state !== "ok") { return; }
      BG.api("POST", "/api/owners/lookup", { id_number: c.value }).then(function (r) {
        if (!r.ok) { note.textContent = failed(r); return; }
        if (r.data.owner) { newId.dataset.ownerId = r.data.owner.owner_id; note.textContent = t("owner_found") + ": " + r.data.owner.name; }
        else { card.querySelector(".bg-new-owner").hidden = false; note.textContent = t("owner_new"); }
      });
    });
    return card;
  }
  function loadHistory(bikeId, box) {
    BG.api("GET", "/api/bikes/" + bikeId + "/history").then(function (r) {
      if (!r.ok) { box.textContent = failed(r); return; }
      box.innerHTML = "<table><thead><tr><th></th><th></th><th>" + esc(t("h_from")) + "</th><th>" + esc(t("h_to")) +
        "</th><th>" + esc(t("h_by")) + "</th><th>" + esc(t("h_reason")) + "</th></tr></thead><tbody>" +
        r.data.map(function (h) {
          return "<tr><td>" + esc(t("h_" + h.kind)) + "</td><td class='bg-mono'>" + esc(h.value) + "</td><td>" +
            esc(BG.time(h.valid_from)) + "</td><td>" + (h.valid_to ? esc(BG.time(h.valid_to)) : "<i>" + esc(t("h_current")) + "</i>") +
            "</td><td>" + esc(h.bound_by) + (h.unbound_by ? " → " + esc(h.unbound_by) : "") + "</td><td>" +
            esc(h.reason || "") + (h.end_reason ? " → " + esc(h.end_reason) : "") + "</td></tr>";
        }).join("") + "</tbody></table>";
    });
  }
  function val(form, name) { var el = form.querySelector("[name=" + name + "]"); return el ? el.value.trim() : ""; }
  function operate(bike, form, card) {
    var op = form.dataset.op, url = "/api/bikes/" + bike.bike_id + "/", b;
    if (op === "transfer") {
      var newId = form.querySelector("[name=new_owner_id_number]");
      b = { consent_code: val(form, "consent_code") || null,
            old_owner_id_number: val(form, "old_owner_id_number") ? BG.idCheck(val(form, "old_owner_id_number")).value : null };
      if (newId.dataset.ownerId) { b.new_owner_id = +newId.dataset.ownerId; }
      else {
        b.new_owner = { id_number: BG.idCheck(newId.value).value, name: val(form, "name"),
                        mobile: BG.mobileCheck(val(form, "mobile")).value, address: val(form, "address") };
      }
      url += "transfer";
    } else if (op === "chip") {
      b = { tag_id: BG.chipCheck(val(form, "tag_id")).value, reason: val(form, "reason") || null,
            chip_kind: val(form, "chip_kind") || "v1" };
      url += "chip";
    }
    else if (op === "plate") { b = { plate: BG.plateCheck(val(form, "plate")).value, reason: val(form, "reason") || null }; url += "plate"; }
    else {
      if (!window.confirm(t("confirm_deregister"))) { return; }
      b = { status: val(form, "status"), note: val(form, "note") || null };
      url += "deregister";
    }
    var error = card.querySelector(".bg-error");
    error.hidden = true;
    BG.api("POST", url, b).then(function (r) {
      if (!r.ok) { error.textContent = failed(r); error.hidden = false; return; }
      var bikeNow = r.data.bike || r.data;
      var fresh = bikeCard(bikeNow);
      card.replaceWith(fresh);
      confirmDone(fresh, done(op, bike, bikeNow, r.data));
      if (r.data.owner_login) {
        fresh.querySelector(".bg-slip-box").appendChild(slipBox(r.data.owner_login, t("slip_title")));
      }
    });
  }
  /* What was done, to which bike, when: the confirmation the clerk reads back to the owner. */
  function done(op, before, after, answer) {
    var now = BG.time(new Date().toISOString());
    if (op === "transfer") {
      var o = after.owner || {};
      return t("done_transfer", { plate: after.plate, owner: "#" + o.owner_id + " " + (o.name_masked || ""),
                                  n: answer.certificate.certificate_id, t: BG.time(answer.certificate.issued_at) });
    }
    if (op === "chip") { return t("done_chip", { plate: after.plate, old: before.tag_id || "—", chip: after.tag_id, t: now }); }
    if (op === "plate") { return t("done_plate", { old: before.plate, plate: after.plate, t: now }); }
    return t("done_deregister", { plate: before.plate, frame: after.frame_number,
                                  status: after.status === "exported" ? t("exported") : t("scrapped"),
                                  t: BG.time(after.deregistered_at) });
  }
  function confirmDone(card, text) {
    var note = card.querySelector(".bg-done-note");
    note.textContent = "✓ " + text;
    note.hidden = false;
  }
  /* A forgotten password: a new one-time password for the bike's owner, on a slip to print. */
  function reissue(bike, card) {
    var o = bike.owner || {};
    if (!window.confirm(t("confirm_reissue", { owner: "#" + o.owner_id + " " + (o.name_masked || "") }))) { return; }
    var error = card.querySelector(".bg-error");
    error.hidden = true;
    BG.api("POST", "/api/owners/" + o.owner_id + "/login").then(function (r) {
      if (!r.ok) { error.textContent = failed(r); error.hidden = false; return; }
      confirmDone(card, t("done_reissue", { owner: "#" + o.owner_id + " " + (o.name_masked || ""), plate: bike.plate,
                                            t: BG.time(new Date().toISOString()) }));
      var box = card.querySelector(".bg-slip-box");
      box.innerHTML = "";
      box.appendChild(slipBox(r.data, t("slip_title_reissued")));
      box.scrollIntoView({ block: "nearest" });
    });
  }
})();
