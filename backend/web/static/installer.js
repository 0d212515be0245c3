/* The installer page: tabs; the coverage map is computed only when its tab is first opened. */
(function () {
  "use strict";
  document.querySelectorAll(".bg-tab").forEach(function (tab) {
    tab.addEventListener("click", function () {
      document.querySelectorAll(".bg-tab").forEach(function (x) { x.classList.toggle("current", x === tab); });
      document.querySelectorAll(".bg-tab-panel").forEach(function (p) { p.hidden = p.id !== "tab-" + tab.dataset.tab; });
      var frame = document.querySelector("#tab-" + tab.dataset.tab + " iframe[data-src]");
      if (frame && !frame.getAttribute("src")) { frame.setAttribute("src", frame.dataset.src); }
    });
  });
})();
