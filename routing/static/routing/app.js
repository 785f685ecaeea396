// Live updates without a build step: any element with data-live="<url>" is refreshed from
// that URL (an HTML partial) every second until the partial says it is final.
(function () {
  "use strict";
  function refresh(el) {
    fetch(el.dataset.live, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        el.innerHTML = html;
        if (el.querySelector("[data-final]") && el.id === "live") { el.dataset.final = "1"; }
      })
      .catch(function () { /* keep the last view; try again next tick */ });
  }
  function tick() {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      if (!el.dataset.final) { refresh(el); }
    });
  }
  if (document.querySelector("[data-live]")) { setInterval(tick, 1000); }

  // Forms marked data-autosave post their radio choice as soon as it changes.
  document.querySelectorAll("form[data-autosave]").forEach(function (form) {
    var note = form.querySelector(".saved-note");
    form.addEventListener("change", function () {
      fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (res) { if (note) { note.textContent = res.ok ? "Saved." : res.body.error; } })
        .catch(function () { if (note) { note.textContent = "Not saved: the server did not answer."; } });
    });
  });
})();
