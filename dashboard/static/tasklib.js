// TaskLib dashboard behaviour. Loaded as a file so the Content-Security-Policy can forbid inline scripts.
(function () {
  "use strict";

  // Polled regions carry data-poll. Skip their requests while the tab is hidden…
  document.addEventListener("htmx:beforeRequest", function (event) {
    if (document.hidden && event.detail.elt.hasAttribute("data-poll")) {
      event.preventDefault();
    }
  });
  // …and catch up at once when it is shown again.
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && window.htmx) {
      document.querySelectorAll("[data-poll]").forEach(function (el) { htmx.trigger(el, "tl:refresh"); });
    }
  });

  // State-changing htmx requests carry the CSRF token Litestar expects.
  document.addEventListener("htmx:configRequest", function (event) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) { event.detail.headers["x-csrftoken"] = meta.content; }
  });

  // The header dot turns grey while the server cannot be reached.
  function setLive(ok) {
    var el = document.getElementById("live-indicator");
    if (!el) { return; }
    el.classList.toggle("offline", !ok);
    el.textContent = ok ? "● live" : "● offline";
  }
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.elt.hasAttribute("data-poll")) { setLive(event.detail.successful || event.detail.xhr.status === 204); }
  });
  document.addEventListener("htmx:sendError", function () { setLive(false); });

  // A task's full id, one click to copy (delegated: the button is inside polled regions).
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-copy]") : null;
    if (!button) { return; }
    var text = button.getAttribute("data-copy");
    var done = function () {
      button.textContent = "copied";
      setTimeout(function () { button.textContent = "copy"; }, 1500);
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () { button.textContent = "press Ctrl+C"; });
    }
  });
})();
