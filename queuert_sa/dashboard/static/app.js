// queuert_sa dashboard: small progressive enhancements; every page works without them.
(function () {
  "use strict";
  var root = document.documentElement;
  var saved = null;
  try { saved = localStorage.getItem("queuert-theme"); } catch (e) { /* private mode */ }
  if (saved === "dark" || saved === "light") root.setAttribute("data-theme", saved);

  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  ready(function () {
    var toggle = document.getElementById("theme-toggle");
    if (toggle) toggle.addEventListener("click", function () {
      var dark = root.getAttribute("data-theme") === "dark" ||
        (!root.getAttribute("data-theme") && window.matchMedia("(prefers-color-scheme: dark)").matches);
      var next = dark ? "light" : "dark";
      root.setAttribute("data-theme", next);
      try { localStorage.setItem("queuert-theme", next); } catch (e) { /* ignore */ }
    });

    // Buttons that ask first.
    document.addEventListener("click", function (event) {
      var button = event.target.closest("[data-confirm]");
      if (button && !window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
    });

    // "All shown" selects every row's checkbox.
    document.querySelectorAll(".select-all").forEach(function (all) {
      all.addEventListener("change", function () {
        document.querySelectorAll("input[name='ids']").forEach(function (box) { box.checked = all.checked; });
      });
    });

    // Dialogs: open, close, and the typed-id confirmation of a deletion.
    document.querySelectorAll("[data-dialog]").forEach(function (opener) {
      opener.addEventListener("click", function () {
        var dialog = document.getElementById(opener.getAttribute("data-dialog"));
        if (dialog) dialog.showModal();
      });
    });
    document.querySelectorAll("[data-close]").forEach(function (closer) {
      closer.addEventListener("click", function () {
        var dialog = document.getElementById(closer.getAttribute("data-close"));
        if (dialog) dialog.close();
      });
    });
    var confirmInput = document.getElementById("delete-confirm");
    var submit = document.getElementById("delete-submit");
    if (confirmInput && submit) {
      var check = function () { submit.disabled = confirmInput.value.trim() !== confirmInput.getAttribute("data-expect"); };
      confirmInput.addEventListener("input", check);
      check();
    }

    // "Load more" appends the next page's rows instead of leaving the page.
    document.addEventListener("click", function (event) {
      var link = event.target.closest("#load-more");
      if (!link) return;
      event.preventDefault();
      link.textContent = "Loading…";
      fetch(link.href, { credentials: "same-origin" })
        .then(function (response) { return response.text(); })
        .then(function (html) {
          var page = new DOMParser().parseFromString(html, "text/html");
          var rows = document.getElementById("rows");
          page.querySelectorAll("#rows > tr").forEach(function (row) { rows.appendChild(document.importNode(row, true)); });
          var next = page.getElementById("load-more");
          if (next) { link.href = next.href; link.textContent = "Load more"; } else { link.parentNode.remove(); }
        })
        .catch(function () { link.textContent = "Load more (failed; try again)"; });
    });
  });
})();
