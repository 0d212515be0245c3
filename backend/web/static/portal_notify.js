/* The owner portal's notifications: which channels tell the owner (Web Push to this device, SMS, e-mail), in which
 * language, quiet hours; this device's push subscription (the portal installed as a web app, /portal/sw.js); and the
 * recent notifications with how far each got ("sent by SMS 12:03"). */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var t = BG.t, esc = BG.esc;
  var box = $("notify"), form = $("nt-form");
  if (!box || !form) { return; }
  var prefs = null;

  function say(el, text) { el.textContent = text || ""; el.hidden = !text; }
  function hhmm(iso) { var d = new Date(iso); return d.toTimeString().slice(0, 5); }
  function when(iso) {
    var d = new Date(iso), today = new Date();
    return d.toDateString() === today.toDateString() ? hhmm(iso) : BG.time(iso);
  }
  function pushSupported() {
    return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
  }

  function show(p) {
    prefs = p;
    box.hidden = false;
    var set = $("nt-channels");
    set.querySelectorAll(".bg-check").forEach(function (n) { n.remove(); });
    p.available.forEach(function (ch) {
      var label = document.createElement("label");
      label.className = "bg-check";
      label.innerHTML = "<input type='checkbox' name='channel' value='" + esc(ch) + "'" +
        (p.channels.indexOf(ch) >= 0 ? " checked" : "") + "> " + esc(t("nt_ch_" + ch));
      set.appendChild(label);
    });
    set.hidden = !p.available.length;
    $("nt-none").hidden = p.available.length > 0;
    $("nt-email-field").hidden = p.available.indexOf("email") < 0;
    $("nt-sms-field").hidden = p.available.indexOf("sms") < 0;
    form.email.value = p.email || "";
    form.sms_number.value = p.sms_number || "";
    $("nt-sms-default").textContent = p.registered_mobile_masked ? t("nt_sms_default", { m: p.registered_mobile_masked }) : "";
    form.language.value = p.language;
    form.quiet_start.value = p.quiet_start || "";
    form.quiet_end.value = p.quiet_end || "";
    $("nt-push").hidden = p.available.indexOf("webpush") < 0;
    $("nt-save").hidden = !p.available.length;
    if (p.push_devices) { say($("nt-status"), t("nt_push_on", { n: p.push_devices })); }
  }

  function load() {
    BG.api("GET", "/api/me/notifications/preferences").then(function (r) { if (r.ok) { show(r.data); } });
    recent();
  }

  function recent() {
    BG.api("GET", "/api/me/notifications?limit=20").then(function (r) {
      if (!r.ok) { return; }
      var list = $("nt-recent");
      list.innerHTML = "";
      $("nt-no-recent").hidden = r.data.length > 0;
      r.data.forEach(function (n) {
        var li = document.createElement("li");
        var ch = t("nt_by_" + n.channel);
        var state = n.state === "sent" ? t("nt_state_sent", { ch: ch, t: when(n.sent_at) })
          : n.state === "failed" ? t("nt_state_failed", { ch: ch, why: n.last_error || "" })
          : n.state === "sending" ? t("nt_state_sending", { ch: ch })
          : t("nt_state_pending", { ch: ch, t: when(n.due_at) });
        li.className = n.state;
        li.innerHTML = "<b>" + esc(t("nt_kind_" + n.kind)) + "</b>" +
          (n.plate ? " · <span class='bg-plate small'>" + esc(n.plate) + "</span>" : "") +
          "<br><span class='bg-muted'>" + esc(state) + "</span>";
        list.appendChild(li);
      });
    });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    say($("nt-error"), ""); say($("nt-status"), "");
    var v = function (n) { return form[n].value.trim() || null; };
    var body = {
      channels: Array.prototype.map.call(form.querySelectorAll("input[name=channel]:checked"), function (c) { return c.value; }),
      email: v("email"), sms_number: v("sms_number"), language: form.language.value,
      quiet_start: v("quiet_start"), quiet_end: v("quiet_end"),
      time_zone: (Intl.DateTimeFormat().resolvedOptions().timeZone) || "Asia/Shanghai"
    };
    BG.api("PUT", "/api/me/notifications/preferences", body).then(function (r) {
      if (!r.ok) { say($("nt-error"), r.message); return; }
      show(r.data);
      say($("nt-status"), t("nt_saved"));
    });
  });

  function b64ToBytes(s) {
    var raw = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { out[i] = raw.charCodeAt(i); }
    return out;
  }

  /* Register the service worker (scope /portal), subscribe with the server's VAPID key, hand the subscription over. */
  $("nt-push").addEventListener("click", function () {
    say($("nt-error"), "");
    if (!pushSupported()) { say($("nt-error"), t("nt_push_unsupported")); return; }
    Notification.requestPermission().then(function (permission) {
      if (permission !== "granted") { say($("nt-error"), t("nt_push_denied")); return null; }
      return Promise.all([
        navigator.serviceWorker.register("/portal/sw.js", { scope: "/portal" }),
        BG.api("GET", "/api/me/notifications/push-key")
      ]);
    }).then(function (got) {
      if (!got) { return null; }
      var key = got[1].ok && got[1].data.public_key;
      if (!key) { say($("nt-error"), t("nt_push_unsupported")); return null; }
      return navigator.serviceWorker.ready.then(function (reg) {
        return reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64ToBytes(key) });
      });
    }).then(function (sub) {
      if (!sub) { return; }
      BG.api("POST", "/api/me/notifications/push-subscriptions", sub.toJSON()).then(function (r) {
        if (!r.ok) { say($("nt-error"), r.message); return; }
        load();
      });
    }).catch(function (e) { say($("nt-error"), String(e && e.message || e)); });
  });

  load();
  setInterval(recent, 15000);
})();
