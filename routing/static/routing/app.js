// A few lines of plain JavaScript, no build step. Every page works without it; with it:
// - live partials: an element with data-live="<url>" is refreshed from that URL (an HTML
//   partial) every second until the partial's root says data-final;
// - forms with data-autosave post their choice as soon as it changes;
// - forms with data-autosubmit submit when a select changes (filters);
// - forms with data-submit-once cannot be sent twice by a double click;
// - a fieldset with data-estimates="<api url>" shows, next to each "where to run" choice,
//   where the job would go, what it would cost and how long it would take;
// - fields marked video-only are hidden while "Image" is chosen.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  // ---- live partials ------------------------------------------------------------------
  var lastHtml = new WeakMap();  // element → the partial it shows, to skip identical updates

  function liveNote(el, text) {
    var note = el.nextElementSibling;
    if (!note || !note.hasAttribute("data-live-note")) {
      if (!text) { return; }
      note = document.createElement("p");
      note.className = "live-note";
      note.setAttribute("data-live-note", "");
      note.setAttribute("role", "status");
      el.parentNode.insertBefore(note, el.nextSibling);
    }
    note.textContent = text;
    note.hidden = !text;
  }

  function refresh(el) {
    if (el.dataset.busy) { return; }
    el.dataset.busy = "1";
    fetch(el.dataset.live, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.redirected) {  // signed out: the partial's URL now leads to the sign-in page
          el.dataset.final = "1";
          liveNote(el, "You were signed out. Reload the page and sign in again to keep following it.");
          return null;
        }
        return r.ok ? r.text() : Promise.reject(r.status);
      })
      .then(function (html) {
        if (html === null) { return; }
        liveNote(el, "");
        if (html !== lastHtml.get(el)) {  // unchanged: leave the DOM (and any focus) alone
          lastHtml.set(el, html);
          el.innerHTML = html;
        }
        var root = el.querySelector(":scope > [data-status]");
        if (root && root.dataset.status !== "queued") {
          // "Your job is queued…" is out of date once the job has moved on in front of the user.
          document.querySelectorAll(".flash.success").forEach(function (flash) { flash.remove(); });
        }
        if (el.querySelector(":scope > [data-final]")) {
          el.dataset.final = "1";
        }
      })
      .catch(function () { liveNote(el, "Cannot reach the server; still trying…"); })
      .then(function () { delete el.dataset.busy; });
  }

  function tick() {
    if (document.hidden) { return; }  // no polling from background tabs
    document.querySelectorAll("[data-live]").forEach(function (el) {
      if (!el.dataset.final) { refresh(el); }
    });
  }
  if (document.querySelector("[data-live]")) { setInterval(tick, 1000); }

  // ---- forms --------------------------------------------------------------------------
  document.querySelectorAll("form[data-autosave]").forEach(function (form) {
    var note = form.querySelector(".saved-note");
    function say(text, ok) {
      if (!note) { return; }
      note.textContent = text;
      note.classList.toggle("ok", ok === true);
      note.classList.toggle("bad", ok === false);
    }
    form.addEventListener("change", function () {
      say("Saving…");
      fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin",
                           headers: { "X-Requested-With": "fetch" } })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (res) { say(res.ok ? "Saved." : res.body.error, res.ok); })
        .catch(function () { say("Not saved: the server did not answer. Try again, or reload the page.", false); });
    });
  });

  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    form.addEventListener("change", function (event) {
      if (event.target.tagName === "SELECT") { form.submit(); }
    });
  });

  document.querySelectorAll("form[data-submit-once]").forEach(function (form) {
    form.addEventListener("submit", function () {
      var button = form.querySelector("button[type=submit]");
      if (button) {
        // Disabled a moment later, so the browser still sends the form normally.
        setTimeout(function () { button.disabled = true; button.textContent = "Submitting…"; }, 0);
      }
    });
  });

  // ---- image | video --------------------------------------------------------------------
  function chosenKind() {
    var radio = document.querySelector("input[name=kind]:checked");
    var select = document.querySelector("select[name=kind]");
    return radio ? radio.value : (select ? select.value : "image");
  }

  function showVideoFields() {
    var video = chosenKind() === "video";
    document.querySelectorAll(".video-only").forEach(function (el) { el.hidden = !video; });
  }
  if (document.querySelector("input[name=kind]")) {
    showVideoFields();
    document.querySelectorAll("input[name=kind]").forEach(function (radio) {
      radio.addEventListener("change", showVideoFields);
    });
  }

  // ---- where would it run? --------------------------------------------------------------
  // A rough client-side copy of routing/policy.py, for hints only: the router decides.
  var USABLE = { available: true, checking: true, busy: true };
  var NAMES = { local: "your GPU", cloud: "cloud GPUs", gemini: "Gemini" };

  function price(value) {
    var n = parseFloat(value);
    if (!n) { return "free"; }
    return "$" + (n >= 1 ? n.toFixed(2) : n.toFixed(4));
  }

  function duration(seconds) {
    var s = Math.round(seconds);
    return s >= 120 ? "~" + Math.round(s / 60) + " min" : "~" + s + " s";
  }

  function canRun(b, job) {
    return USABLE[b.status] && !(job.custom && !b.supports_workflows) && !(job.kind === "video" && !b.supports_video);
  }

  function choose(backends, preference, job) {
    var usable = backends.filter(function (b) {
      return canRun(b, job) && (preference === "auto" || b.category === preference);
    });
    var local = usable.filter(function (b) { return b.category === "local"; });
    var free = local.filter(function (b) { return b.status !== "busy"; });
    if (free.length) { return { backend: free[0] }; }
    var paid = usable.filter(function (b) { return b.category !== "local"; }).sort(function (a, b) {
      return (parseFloat(a.expected_cost) - parseFloat(b.expected_cost)) || (a.expected_seconds - b.expected_seconds);
    });
    if (paid.length) { return { backend: paid[0] }; }
    if (local.length) { return { backend: local[0], waits: true }; }
    return { why: whyNot(backends, preference, job) };
  }

  function whyNot(backends, preference, job) {
    var mine = backends.filter(function (b) { return preference === "auto" || b.category === preference; });
    if (!mine.length) { return "no backend set up"; }
    if (preference === "auto") { return "nothing can run it right now"; }
    if (job.custom && preference === "gemini") { return "cannot run custom workflows"; }
    if (job.kind === "video" && !mine.some(function (b) { return b.supports_video; })) { return "does not make videos"; }
    var statuses = mine.map(function (b) { return b.status === "down" ? "offline" : b.status; });
    return statuses.filter(function (s, i) { return statuses.indexOf(s) === i; }).join(", ");
  }

  function describe(choice, preference) {
    var b = choice.backend;
    if (!b) { return { text: choice.why, ok: false }; }
    var parts = [price(b.expected_cost), choice.waits ? "waits for a free slot" : duration(b.expected_seconds)];
    if (preference === "auto" || preference === "cloud") { parts.unshift(b.name); }
    if (b.status === "checking") { parts.push("status not confirmed yet"); }
    return { text: (preference === "auto" ? "→ " : "") + parts.join(" · "), ok: true };
  }

  function summary(choice, preference, label) {
    var b = choice.backend;
    if (!b) {
      return "Nothing can run this job with “" + label + "” right now (" + choice.why + "). " +
             "Pick another option, or check Backends for what to fix.";
    }
    var where = b.category === "local" ? b.name + " (" + NAMES.local + ")" : b.name;
    if (choice.waits) { return "It will wait for a free slot on " + where + ": its queue is full."; }
    var cost = price(b.expected_cost);
    return "Expected: " + where + ", " + (cost === "free" ? "free" : "about " + cost) + ", " +
           duration(b.expected_seconds).replace("~", "about ") + ".";
  }

  function setupEstimates(fieldset) {
    var backends = null, lastKind = null;
    var estimate = fieldset.querySelector("[data-estimate]");
    var form = fieldset.closest("form");
    var workflow = form ? form.querySelector("[name=workflow]") : null;
    var upload = form ? form.querySelector("[name=workflow_file]") : null;

    function job() {
      var custom = !!((workflow && workflow.value.trim()) || (upload && upload.files && upload.files.length));
      return { kind: chosenKind(), custom: custom };
    }

    function render() {
      if (!backends) { return; }
      var facts = job();
      fieldset.querySelectorAll("[data-hint-for]").forEach(function (hint) {
        var preference = hint.dataset.hintFor;
        var described = describe(choose(backends, preference, facts), preference);
        hint.textContent = described.text;
        hint.classList.toggle("unavailable", !described.ok);
      });
      var checked = fieldset.querySelector("input[type=radio]:checked");
      if (estimate && checked) {
        var choice = choose(backends, checked.value, facts);
        var title = checked.closest("label").querySelector(".option-title");
        estimate.textContent = summary(choice, checked.value, title ? title.textContent : checked.value);
        estimate.classList.toggle("unavailable", !choice.backend);
      }
    }

    function load() {
      var kind = chosenKind();
      if (kind === lastKind) { render(); return; }
      lastKind = kind;
      fetch(fieldset.dataset.estimates + "?kind=" + encodeURIComponent(kind),
            { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (list) { backends = list; render(); })
        .catch(function () { if (estimate) { estimate.textContent = ""; } });
    }

    document.addEventListener("change", function (event) {
      if (event.target.name === "kind") { load(); } else { render(); }
    });
    if (workflow) { workflow.addEventListener("input", render); }
    load();
    setInterval(function () { if (!document.hidden) { lastKind = null; load(); } }, 15000);
  }
  document.querySelectorAll("[data-estimates]").forEach(setupEstimates);
})();
