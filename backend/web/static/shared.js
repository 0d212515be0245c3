/* A shared bike's page: times in the reader's own clock and language. */
(function () {
  "use strict";
  document.querySelectorAll("time.bg-time").forEach(function (el) { el.textContent = BG.time(el.getAttribute("datetime")); });
})();
