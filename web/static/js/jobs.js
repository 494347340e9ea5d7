/* labkit job progress: polls GET /jobs/<id> (web/jobs_view.py) and updates the job's markup in place.
 *
 * Markup contract (any page may use it; templates/student/_macros.html `job_line` renders it):
 *
 *   <div class="lk-job" data-job-id="42" data-job-url="/jobs/42" data-state="queued" data-reload="true">
 *     <span class="lk-job-state state state-queued">queued</span>        optional: text and state-* class follow
 *     <progress class="lk-job-bar" max="100"></progress>                optional: value = percent (none: indeterminate)
 *     <span class="lk-job-message"></span>                              optional: the job's latest progress message
 *     <span class="lk-job-error" hidden></span>                         optional: the error sentence, shown on failure
 *   </div>
 *
 * - Only elements whose data-state is "queued" or "running" are polled (every second, slower after a minute);
 *   a job that had already ended when the page was made is left alone.
 * - On every answer the element's data-state is updated, so CSS and tests can follow it.
 * - When the job ends, the element dispatches a bubbling `labkit:job-finished` event with the job's JSON as
 *   `detail` (id, kind, target, state, done, total, percent, message, result, error).
 * - data-reload="true": the page reloads after the job ended well (state "done"), to show what changed; a failed
 *   job stays on the page with its error. Other pages (the instructor's) can leave data-reload out and listen for
 *   the event instead.
 * - New .lk-job elements added later are picked up by calling `window.labkitJobs.watch(element)`.
 * No dependencies; the Content-Security-Policy allows only scripts from /static, so this file is loaded with
 * <script src=...>.
 */
(function () {
  "use strict";

  if (window.labkitJobs) {
    return;
  }

  var ACTIVE = { queued: true, running: true };
  var FAST_MS = 1000;
  var SLOW_MS = 3000;
  var SLOW_AFTER_MS = 60000;
  var RELOAD_DELAY_MS = 400;

  function show(root, job) {
    root.dataset.state = job.state;
    var state = root.querySelector(".lk-job-state");
    if (state) {
      state.textContent = job.state;
      state.className = "lk-job-state state state-" + job.state;
    }
    var bar = root.querySelector(".lk-job-bar");
    if (bar) {
      if (job.percent === null || job.percent === undefined) {
        bar.removeAttribute("value");
      } else {
        bar.value = job.percent;
      }
    }
    var message = root.querySelector(".lk-job-message");
    if (message) {
      message.textContent = job.message || "";
    }
    var error = root.querySelector(".lk-job-error");
    if (error) {
      error.textContent = job.error || "";
      error.hidden = !job.error;
    }
  }

  function watch(root) {
    if (root.dataset.watched === "true" || !ACTIVE[root.dataset.state]) {
      return;
    }
    root.dataset.watched = "true";
    var url = root.dataset.jobUrl || "/jobs/" + root.dataset.jobId;
    var began = Date.now();

    function again() {
      window.setTimeout(poll, Date.now() - began > SLOW_AFTER_MS ? SLOW_MS : FAST_MS);
    }

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
        .then(function (response) {
          if (response.status === 404) {
            throw new Error("gone");
          }
          if (!response.ok) {
            return null; // a passing server error: try again
          }
          return response.json();
        })
        .then(function (job) {
          if (job === null) {
            again();
            return;
          }
          show(root, job);
          if (ACTIVE[job.state]) {
            again();
            return;
          }
          root.dispatchEvent(new CustomEvent("labkit:job-finished", { bubbles: true, detail: job }));
          if (job.state === "done" && root.dataset.reload === "true") {
            window.setTimeout(function () { window.location.reload(); }, RELOAD_DELAY_MS);
          }
        })
        .catch(function (err) {
          if (err && err.message === "gone") {
            root.dataset.state = "unknown"; // logged out, or not ours: stop asking
            return;
          }
          again(); // a network blip
        });
    }

    poll();
  }

  function watchAll() {
    document.querySelectorAll(".lk-job").forEach(watch);
  }

  window.labkitJobs = { watch: watch, watchAll: watchAll };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", watchAll);
  } else {
    watchAll();
  }
})();
