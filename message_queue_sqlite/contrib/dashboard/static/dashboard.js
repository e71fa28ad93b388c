// Live refresh: every few seconds the page is fetched again and its <main> swapped in place,
// unless the reader is busy with it (a box ticked, a field focused) or has switched it off.
// No framework, nothing inline (the Content-Security-Policy allows only this file).
(function () {
  "use strict";
  var toggle = document.getElementById("live-toggle");
  var stored = window.localStorage && localStorage.getItem("mqs-live");
  if (toggle && stored === "off") { toggle.checked = false; }
  if (toggle) {
    toggle.addEventListener("change", function () {
      if (window.localStorage) { localStorage.setItem("mqs-live", toggle.checked ? "on" : "off"); }
    });
  }

  function busy(main) {
    var active = document.activeElement;
    if (active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) { return true; }
    return main.querySelector("input[type=checkbox]:checked") !== null;
  }

  function refresh() {
    var main = document.getElementById("live");
    var seconds = main ? parseFloat(main.getAttribute("data-refresh")) : 0;
    if (!main || !(seconds > 0)) { return; }
    window.setTimeout(function () {
      if (document.hidden || (toggle && !toggle.checked) || busy(main)) { refresh(); return; }
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok || response.redirected) { throw new Error("status " + response.status); }
          return response.text();
        })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
          var now = document.getElementById("live");
          if (fresh && now && !busy(now)) {
            var notice = now.querySelector(".notice");
            now.innerHTML = fresh.innerHTML;
            if (notice && !now.querySelector(".notice")) { now.insertBefore(notice, now.firstChild); }
            document.body.setAttribute("data-refreshed", String(Date.now()));
          }
        })
        .catch(function () { /* keep the page as it is; try again next time */ })
        .then(refresh);
    }, seconds * 1000);
  }
  refresh();
})();
