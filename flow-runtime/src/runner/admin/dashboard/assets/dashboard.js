// The dashboard's only script. It never builds HTML from data: each element
// with a `data-live` URL is refetched every two seconds and replaced by the
// fragment the node rendered (and escaped). Forms with `data-confirm` ask
// first. Everything works without it, minus the live refresh.
"use strict";
(function () {
  var PERIOD_MS = 2000;

  function refresh(el) {
    if (el.dataset.busy === "1") {
      return;
    }
    el.dataset.busy = "1";
    fetch(el.dataset.live, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) {
          window.location.assign("/ui/login");
          return null;
        }
        if (r.status === 404) {
          return r.text().then(function () {
            el.classList.add("gone");
            return null;
          });
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          el.innerHTML = html;
          el.classList.remove("stale");
          el.dataset.refreshed = String((Number(el.dataset.refreshed) || 0) + 1);
        }
      })
      .catch(function () {
        el.classList.add("stale");
      })
      .finally(function () {
        el.dataset.busy = "0";
      });
  }

  document.addEventListener("submit", function (e) {
    var message = e.target.dataset ? e.target.dataset.confirm : undefined;
    if (message && !window.confirm(message)) {
      e.preventDefault();
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelectorAll("[data-live]");
    window.setInterval(function () {
      live.forEach(refresh);
    }, PERIOD_MS);
    document.body.dataset.script = "ready";
  });
})();
