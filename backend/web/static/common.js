/* Shared by the Bikeguard pages: words, API calls, field checks that mirror the server's. */
(function () {
  "use strict";
  /* The page's words and settings: a JSON data block, not an inline script (the CSP allows none). */
  var DATA = JSON.parse((document.getElementById("bg-page-data") || {}).textContent || "{}");
  var T = DATA.t || {};
  var CFG = DATA.config || {};

  function t(key, vars) {
    var s = Object.prototype.hasOwnProperty.call(T, key) ? T[key] : key;
    Object.keys(vars || {}).forEach(function (k) { s = s.split("{" + k + "}").join(String(vars[k])); });
    return s;
  }
  function esc(value) {
    return String(value === null || value === undefined ? "" : value)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }
  function detail(data, status) {
    if (!data) { return "HTTP " + status; }
    if (typeof data.detail === "string") { return data.detail; }
    if (Array.isArray(data.detail)) {
      return data.detail.map(function (e) { return (e.loc || []).slice(-1)[0] + ": " + e.msg; }).join("; ");
    }
    return "HTTP " + status;
  }
  /* fetch JSON; resolves {ok, status, data, message}; a lost session goes back to the sign-in page. */
  function api(method, url, body, options) {
    var init = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body instanceof FormData) { init.body = body; }
    else if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    return fetch(url, init).then(function (r) {
      if (r.status === 401 && !(options && options.noRedirect)) {
        window.location.href = "/login?next=" + encodeURIComponent(window.location.pathname);
      }
      var type = r.headers.get("Content-Type") || "";
      var parse = type.indexOf("json") >= 0 ? r.json() : Promise.resolve(null);
      return parse.then(function (data) {
        return { ok: r.ok, status: r.status, data: data, message: r.ok ? "" : detail(data, r.status) };
      });
    });
  }

  /* GB 11643: weights 2^(17-i) mod 11, check characters by (sum mod 11). */
  var WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
  var CHECK = "10X98765432";
  function idCheck(raw) {
    var v = String(raw || "").replace(/\s+/g, "").toUpperCase();
    if (!v) { return { state: "empty", value: v, msg: t("id_hint") }; }
    if (/[^0-9X]/.test(v) || v.slice(0, -1).indexOf("X") >= 0) { return { state: "bad", value: v, msg: t("id_bad_chars") }; }
    if (v.length < 18) { return { state: "partial", value: v, msg: t("id_len", { n: v.length }) }; }
    if (v.length > 18) { return { state: "bad", value: v, msg: t("id_len", { n: v.length }) }; }
    var y = +v.slice(6, 10), m = +v.slice(10, 12), d = +v.slice(12, 14);
    var born = new Date(Date.UTC(y, m - 1, d));
    if (born.getUTCFullYear() !== y || born.getUTCMonth() !== m - 1 || born.getUTCDate() !== d ||
        y < 1900 || born.getTime() > Date.now()) {
      return { state: "bad", value: v, msg: t("id_bad_date") };
    }
    var sum = 0;
    for (var i = 0; i < 17; i++) { sum += (+v.charAt(i)) * WEIGHTS[i]; }
    if (CHECK.charAt(sum % 11) !== v.charAt(17)) { return { state: "bad", value: v, msg: t("id_bad_check") }; }
    return { state: "ok", value: v, msg: t("id_ok") };
  }
  function mobileCheck(raw) {
    var v = String(raw || "").replace(/[\s-]/g, "").replace(/^(\+86|0086)/, "");
    if (!v) { return { state: "empty", value: v, msg: "" }; }
    return /^1[3-9][0-9]{9}$/.test(v) ? { state: "ok", value: v, msg: "" } : { state: "bad", value: v, msg: t("mobile_bad") };
  }
  function serialCheck(raw) {
    var v = String(raw || "").replace(/\s+/g, "").toUpperCase();
    if (!v) { return { state: "empty", value: v, msg: "" }; }
    return /^[A-Z0-9][A-Z0-9-]{4,29}$/.test(v) ? { state: "ok", value: v, msg: "" } : { state: "bad", value: v, msg: t("serial_bad") };
  }
  function plateCheck(raw) {
    var v = String(raw || "").replace(/\s+/g, "").toUpperCase().replace(/[.•・･‧]/g, "·");
    if (!v) { return { state: "empty", value: v, msg: "" }; }
    var re = new RegExp(CFG.plate_pattern || ".+", "u");
    return re.test(v) ? { state: "ok", value: v, msg: "" }
      : { state: "bad", value: v, msg: t("plate_bad", { example: CFG.plate_example || "" }) };
  }
  function chipCheck(raw) {
    var v = String(raw || "").replace(/\s+/g, "").toUpperCase();
    if (!v) { return { state: "empty", value: v, msg: "" }; }
    return /^[0-9A-F]{8}$/.test(v) ? { state: "ok", value: v, msg: "" }
      : { state: v.length < 8 && /^[0-9A-F]*$/.test(v) ? "partial" : "bad", value: v, msg: t("chip_bad") };
  }
  /* Where to go after signing in: a path on this site, else /home. The server's same_site_path rule: browsers
     read "\\" as "/" and drop tabs and newlines, so only printable ASCII, no backslash, one leading slash. */
  function samePath(next) {
    var v = String(next || "");
    return /^\/(?![\/])[!-\[\]-~]*$/.test(v) ? v : "/home";
  }
  function time(iso) {
    var d = new Date(iso);
    return isNaN(d.getTime()) ? "" : d.toLocaleString(document.documentElement.lang, { hour12: false });
  }
  function debounce(fn, ms) {
    var timer = null;
    return function () {
      var args = arguments;
      clearTimeout(timer);
      timer = setTimeout(function () { fn.apply(null, args); }, ms);
    };
  }
  /* Show a field's message: state ok / bad / info (neutral). */
  function mark(id, state, msg) {
    var input = document.getElementById(id);
    var note = document.querySelector('.bg-msg[data-for="' + id + '"]');
    if (input) {
      input.classList.toggle("bad", state === "bad");
      input.classList.toggle("ok", state === "ok");
      input.setAttribute("aria-invalid", state === "bad" ? "true" : "false");
    }
    if (note) {
      note.textContent = msg || "";
      note.className = "bg-msg" + (state === "bad" ? " bad" : state === "ok" ? " ok" : "");
    }
  }

  /* Switching language keeps the rest of the address (e.g. the token on the verify page). */
  document.querySelectorAll(".bg-lang").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      ev.preventDefault();
      var u = new URL(window.location.href);
      u.searchParams.set("lang", a.dataset.lang);
      window.location.href = u.toString();
    });
  });

  document.querySelectorAll("[data-print]").forEach(function (b) {
    b.addEventListener("click", function () { window.print(); });
  });

  var out = document.getElementById("bg-sign-out");
  if (out) {
    out.addEventListener("click", function () {
      api("POST", "/api/auth/logout", undefined, { noRedirect: true }).then(function () {
        window.location.href = "/login";
      });
    });
  }

  window.BG = {
    t: t, esc: esc, api: api, idCheck: idCheck, mobileCheck: mobileCheck, serialCheck: serialCheck,
    plateCheck: plateCheck, chipCheck: chipCheck, samePath: samePath, time: time, debounce: debounce, mark: mark,
    config: CFG
  };
})();
