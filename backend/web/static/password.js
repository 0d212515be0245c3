/* Change password: checked as typed (length, repeat), then saved; on to where the user was going. */
(function () {
  "use strict";
  var min = BG.config.min_length || 10;
  var form = document.getElementById("password-form");
  var error = document.getElementById("password-error");
  function check() {
    var a = document.getElementById("new").value, b = document.getElementById("repeat").value;
    var okA = a.length >= min, okB = b === a && b.length > 0;
    BG.mark("new", a ? (okA ? "ok" : "bad") : "info", a && !okA ? BG.t("pw_too_short", { n: min }) : "");
    BG.mark("repeat", b ? (okB ? "ok" : "bad") : "info", b && !okB ? BG.t("pw_mismatch") : "");
    return okA && okB;
  }
  document.getElementById("new").addEventListener("input", check);
  document.getElementById("repeat").addEventListener("input", check);
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    error.hidden = true;
    if (!check()) { return; }
    BG.api("POST", "/api/auth/password", {
      current_password: document.getElementById("current").value,
      new_password: document.getElementById("new").value
    }).then(function (r) {
      if (!r.ok) { error.textContent = r.message; error.hidden = false; return; }
      window.location.href = BG.samePath(BG.config.next);
    });
  });
})();
