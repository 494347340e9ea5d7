/* The student's lab workspace (templates/student/lab.html): the guide beside a terminal tab for every machine.
 *
 * - Terminal tabs: a click or Alt+1..9 shows that machine's console and focuses it; Alt+G goes to the guide. The
 *   tab shown is kept for the page (sessionStorage), so a reload after a job comes back to it. The consoles
 *   themselves are console.js's (one ConsoleView each, in window.labkitConsole.views).
 * - The split between guide and terminals is a drag handle (or the arrow keys on it), kept in localStorage.
 * - The guide's steps are shown one at a time ("Step 2 of 4", Previous/Next); the address's #step-<id> picks one.
 * - Every code block of the guide gets a Copy button; one marked ```sh run=<machine> also gets "Run in <machine>",
 *   which types its lines into that machine's console.
 * - Forms with data-confirm ask first (restoring a checkpoint).
 * Without this file the page still works: every step shows, every console is stacked, every form posts.
 */
(function () {
  "use strict";

  function init() {
    var workspace = document.getElementById("workspace");
    if (!workspace) { return; }
    var encoder = new TextEncoder();
    var pageKey = "labkit-ws:" + window.location.pathname;
    var state = { copied: null };
    window.labkitWorkspace = state;

    // ---- terminal tabs --------------------------------------------------------------------------------------------
    var tabs = Array.prototype.slice.call(document.querySelectorAll(".ws-tab"));

    function consoleOf(machine) {
      var panel = document.querySelector('.ws-panel[data-machine="' + machine + '"]');
      var root = panel && panel.querySelector(".lk-console");
      var views = (window.labkitConsole && window.labkitConsole.views) || [];
      for (var i = 0; i < views.length; i++) {
        if (views[i].root === root) { return views[i]; }
      }
      return null;
    }

    function activate(machine, focus) {
      var found = false;
      tabs.forEach(function (tab) {
        var on = tab.dataset.machine === machine;
        found = found || on;
        tab.setAttribute("aria-selected", on ? "true" : "false");
        tab.tabIndex = on ? 0 : -1;
      });
      if (!found) { return; }
      document.querySelectorAll(".ws-panel").forEach(function (panel) {
        panel.dataset.active = panel.dataset.machine === machine ? "true" : "false";
      });
      workspace.dataset.machine = machine;
      try { window.sessionStorage.setItem(pageKey + ":tab", machine); } catch (err) { /* private mode */ }
      var view = consoleOf(machine);
      if (view) {
        view.refit();
        if (focus) { view.term.focus(); }
      }
    }

    tabs.forEach(function (tab) {
      tab.addEventListener("click", function () { activate(tab.dataset.machine, true); });
    });

    window.addEventListener("keydown", function (event) {
      if (!event.altKey || event.ctrlKey || event.metaKey) { return; }
      var digit = /^Digit([1-9])$/.exec(event.code || "");
      if (digit && tabs[Number(digit[1]) - 1]) {
        activate(tabs[Number(digit[1]) - 1].dataset.machine, true);
      } else if (event.code === "KeyG") {
        var current = document.querySelector('.ws-step[data-current="true"] h2') || document.getElementById("guide");
        current.tabIndex = -1;
        current.focus();
      } else {
        return;
      }
      event.preventDefault();
      event.stopPropagation(); // before xterm.js sees it (this listener runs in the capture phase)
    }, true);

    // ---- the split --------------------------------------------------------------------------------------------------
    var handle = workspace.querySelector(".ws-handle");

    function setSplit(percent) {
      var value = Math.max(20, Math.min(80, percent));
      workspace.style.setProperty("--ws-guide", value + "%");
      handle.setAttribute("aria-valuenow", String(Math.round(value)));
      try { window.localStorage.setItem("labkit-ws:split", String(value)); } catch (err) { /* private mode */ }
    }

    if (handle) {
      var saved = Number(window.localStorage && window.localStorage.getItem("labkit-ws:split"));
      if (saved) { setSplit(saved); }
      handle.addEventListener("pointerdown", function (event) {
        event.preventDefault();
        handle.setPointerCapture(event.pointerId);
        workspace.dataset.dragging = "true";
      });
      handle.addEventListener("pointermove", function (event) {
        if (workspace.dataset.dragging !== "true") { return; }
        var box = workspace.getBoundingClientRect();
        setSplit((event.clientX - box.left) / box.width * 100);
      });
      var stop = function () { delete workspace.dataset.dragging; };
      handle.addEventListener("pointerup", stop);
      handle.addEventListener("pointercancel", stop);
      handle.addEventListener("keydown", function (event) {
        var now = Number(handle.getAttribute("aria-valuenow")) || 50;
        if (event.key === "ArrowLeft") { setSplit(now - 5); event.preventDefault(); }
        if (event.key === "ArrowRight") { setSplit(now + 5); event.preventDefault(); }
      });
    }

    // ---- steps ------------------------------------------------------------------------------------------------------
    var steps = Array.prototype.slice.call(document.querySelectorAll(".ws-step"));
    var count = document.querySelector(".ws-step-count");
    var prev = document.querySelector(".ws-prev");
    var next = document.querySelector(".ws-next");

    function showStep(index, scroll) {
      if (!steps.length) { return; }
      index = Math.max(0, Math.min(steps.length - 1, index));
      steps.forEach(function (step, i) {
        step.hidden = i !== index;
        step.dataset.current = i === index ? "true" : "false";
      });
      if (count) { count.textContent = "Step " + (index + 1) + " of " + steps.length; }
      if (prev) { prev.disabled = index === 0; }
      if (next) { next.disabled = index === steps.length - 1; }
      var id = "#step-" + steps[index].dataset.step;
      if (window.location.hash !== id) { window.history.replaceState(null, "", id); }
      try { window.sessionStorage.setItem(pageKey + ":step", String(index)); } catch (err) { /* private mode */ }
      if (scroll) { steps[index].scrollIntoView({ block: "start" }); }
    }

    function stepFromHash() {
      var id = window.location.hash.replace(/^#step-/, "");
      for (var i = 0; i < steps.length; i++) {
        if (window.location.hash.indexOf("#step-") === 0 && steps[i].dataset.step === id) { return i; }
      }
      return -1;
    }

    if (steps.length) {
      var start = stepFromHash();
      var named = start >= 0; // the address names a step (a step's Check comes back to it): show it
      if (!named) { start = Number(window.sessionStorage.getItem(pageKey + ":step")) || 0; }
      showStep(start, named);
      if (prev) { prev.addEventListener("click", function () { showStep(Number(current()) - 1, true); }); }
      if (next) { next.addEventListener("click", function () { showStep(Number(current()) + 1, true); }); }
    }

    function current() {
      for (var i = 0; i < steps.length; i++) { if (steps[i].dataset.current === "true") { return i; } }
      return 0;
    }

    // ---- code blocks: copy, run in a terminal -------------------------------------------------------------------
    function copyText(text, button) {
      var done = function () {
        state.copied = text;
        button.textContent = "Copied";
        button.dataset.copied = "true";
        window.setTimeout(function () { button.textContent = "Copy"; delete button.dataset.copied; }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
      } else {
        fallbackCopy(text);
        done();
      }
    }

    function fallbackCopy(text) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); } catch (err) { /* the text is still selected for Ctrl+C */ }
      document.body.removeChild(area);
    }

    document.querySelectorAll(".ws-guide pre").forEach(function (pre) {
      var code = pre.querySelector("code") || pre;
      var bar = document.createElement("div");
      bar.className = "ws-code-actions";
      var copy = document.createElement("button");
      copy.type = "button";
      copy.dataset.action = "copy";
      copy.textContent = "Copy";
      copy.addEventListener("click", function () { copyText(code.textContent, copy); });
      bar.appendChild(copy);
      var machine = pre.dataset.run;
      if (machine && consoleOf(machine)) {
        var run = document.createElement("button");
        run.type = "button";
        run.dataset.action = "run";
        run.dataset.machine = machine;
        run.textContent = "Run in " + machine;
        run.title = "Types this into the terminal of " + machine;
        run.addEventListener("click", function () {
          activate(machine, true);
          var view = consoleOf(machine);
          if (view) { view.sendInput(encoder.encode(code.textContent.replace(/\n$/, "").replace(/\n/g, "\r") + "\r")); }
        });
        bar.appendChild(run);
      }
      pre.insertBefore(bar, pre.firstChild);
    });

    // ---- confirmations ------------------------------------------------------------------------------------------
    document.addEventListener("submit", function (event) {
      var form = event.target;
      if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
        event.preventDefault();
        event.stopImmediatePropagation(); // student.js must not mark it sent
      }
    }, true);

    // A lab start that ended: every console reconnects at once (console.js), before the page reloads.
    document.addEventListener("labkit:job-finished", function (event) {
      var job = event.detail || {};
      if (job.kind === "start-lab" && job.state === "done") {
        document.dispatchEvent(new CustomEvent("labkit:machine-started", { detail: {} }));
      }
    });

    var first = tabs.length ? tabs[0].dataset.machine : null;
    var kept = null;
    try { kept = window.sessionStorage.getItem(pageKey + ":tab"); } catch (err) { /* private mode */ }
    if (first) { activate(kept && document.getElementById("tab-" + kept) ? kept : first, false); }
  }

  // after console.js has mounted the consoles (it waits for DOMContentLoaded too, and its listener came first)
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
