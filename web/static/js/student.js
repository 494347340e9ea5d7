/* labkit student portal: small comforts on top of plain forms (everything works without this file).
 *
 * - A form's buttons are disabled once it is sent, so a double click sends one request (the server dedupes a second
 *   one anyway: the same job comes back).
 * - When a start job of the machine whose console is on the page ends, the console is told to reconnect at once
 *   (`labkit:machine-started`, see console.js), before the page reloads.
 */
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) {
      return;
    }
    if (form.dataset.sent === "true") {
      event.preventDefault();
      return;
    }
    form.dataset.sent = "true";
    window.setTimeout(function () {
      // after the browser took the form's values: a disabled button's name/value would not be sent
      form.querySelectorAll("button[type=submit]").forEach(function (button) { button.disabled = true; });
    }, 0);
  });

  document.addEventListener("labkit:job-finished", function (event) {
    var job = event.detail || {};
    if (job.kind === "start" && job.state === "done" && job.target) {
      document.dispatchEvent(new CustomEvent("labkit:machine-started", { detail: { machine: job.target } }));
    }
  });

  // Back from the browser's cache (the back button): forms can be sent again.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      document.querySelectorAll("form[data-sent]").forEach(function (form) {
        delete form.dataset.sent;
        form.querySelectorAll("button[type=submit]").forEach(function (button) { button.disabled = false; });
      });
    }
  });
})();
