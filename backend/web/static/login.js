/* The sign-in form: a session cookie, then on to the page for the account's role. */
(function () {
  "use strict";
  var form = document.getElementById("login-form");
  var error = document.getElementById("login-error");
  var submit = document.getElementById("login-submit");
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    submit.textContent = BG.t("signing_in");
    BG.api("POST", "/api/auth/login", {
      username: document.getElementById("username").value.trim(),
      password: document.getElementById("password").value
    }, { noRedirect: true }).then(function (r) {
      submit.disabled = false;
      submit.textContent = BG.t("sign_in");
      if (!r.ok) {
        error.textContent = r.status === 429 ? BG.t("login_throttled") + " (" + r.message + ")" : BG.t("login_failed");
        error.hidden = false;
        return;
      }
      var next = BG.samePath(BG.config.next);
      window.location.href = r.data.account.must_change_password ? "/password?next=" + encodeURIComponent(next) : next;
    });
  });
})();
