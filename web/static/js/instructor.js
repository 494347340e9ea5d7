// labkit instructor dashboard: job progress bars, the live class grid, confirmations, the links CSV.
// No inline scripts (the Content-Security-Policy forbids them): pages load this file and it finds its elements.
// Job progress comes from /teach/courses/<course>/jobs/<id> (JSON {state, done, total, percent, message, error}).
"use strict";

(function () {
  const JOB_POLL_MS = 1000;
  const ACTIVE = new Set(["queued", "running"]);

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  function setState(el, state) {
    el.className = el.className.replace(/\bstate-[\w-]+/g, "").trim() + " state-" + state;
    el.textContent = state;
  }

  // ---- jobs -------------------------------------------------------------------------------------------------------
  const watched = new Set();

  function showJob(li, job) {
    li.dataset.jobState = job.state;
    setState(li.querySelector(".job-state"), job.state);
    const bar = li.querySelector(".job-progress");
    if (job.percent === null || job.percent === undefined) bar.removeAttribute("value");
    else bar.value = job.percent;
    li.querySelector(".job-count").textContent = job.total ? job.done + "/" + job.total : "";
    li.querySelector(".job-message").textContent = job.message || "";
    li.querySelector(".job-error").textContent = job.error || "";
  }

  function watchJob(li) {
    const url = li.dataset.jobUrl;
    if (!url || watched.has(url) || !ACTIVE.has(li.dataset.jobState)) return;
    watched.add(url);
    const tick = function () {
      getJSON(url).then(function (job) {
        showJob(li, job);
        if (ACTIVE.has(job.state)) {
          setTimeout(tick, JOB_POLL_MS);
        } else {
          watched.delete(url);
          jobEnded(job);
        }
      }).catch(function () { setTimeout(tick, JOB_POLL_MS * 3); });
    };
    setTimeout(tick, JOB_POLL_MS / 2);
  }

  function jobEnded(job) {
    if (document.getElementById("grid")) { refreshGrid(); return; }
    // the course and grades pages show what a job changed (report, gradebook): load them again, keeping the job
    if (job.state === "done" && !document.querySelector("form:focus-within")) {
      setTimeout(function () { window.location.reload(); }, 800);
    }
  }

  function addJob(job) {
    const list = document.querySelector("#jobs .job-list");
    if (!list || list.querySelector('[data-job-id="' + job.id + '"]')) return;
    const li = document.createElement("li");
    li.className = "job";
    li.dataset.jobId = job.id;
    li.dataset.jobUrl = job.url;
    li.dataset.jobState = job.state;
    for (const [cls, tag] of [["job-title", "span"], ["state job-state", "span"], ["job-progress", "progress"],
                              ["job-count", "span"], ["job-message hint", "span"], ["job-error error-message", "span"]]) {
      const el = document.createElement(tag);
      el.className = cls;
      if (tag === "progress") el.max = 100;
      li.appendChild(el);
    }
    li.querySelector(".job-title").textContent = job.title;
    list.prepend(li);
    document.getElementById("jobs").hidden = false;
    showJob(li, job);
    watchJob(li);
  }

  // ---- the class grid ---------------------------------------------------------------------------------------------
  const grid = document.getElementById("grid");
  let gridTimer = null;

  function refreshGrid() {
    if (!grid) return;
    clearTimeout(gridTimer);
    getJSON(grid.dataset.gridUrl).then(function (data) {
      if (String(data.cells.length) !== grid.dataset.cells) { window.location.reload(); return; }
      for (const cell of data.cells) {
        const td = grid.querySelector('td[data-machine="' + CSS.escape(cell.name) + '"]');
        if (!td) continue;
        setState(td.querySelector(".state"), cell.state);
        td.dataset.state = cell.state;
        td.querySelector(".grade").textContent = cell.grade;
      }
      const running = document.getElementById("grid-running");
      if (running) running.textContent = data.running;
      const updated = document.getElementById("grid-updated");
      if (updated) updated.textContent = new Date().toLocaleTimeString();
      (data.jobs || []).forEach(addJob);
    }).catch(function () { /* a blip: the next poll tries again */ }).finally(function () {
      gridTimer = setTimeout(refreshGrid, Number(grid.dataset.pollMs) || 3000);
    });
  }

  // ---- forms: confirmations and no double submits ----------------------------------------------------------------
  document.querySelectorAll("form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
        event.preventDefault();
        return;
      }
      // disable after the browser has read the pressed button's value; a download leaves the page, so re-enable
      const buttons = form.querySelectorAll("button[type=submit]");
      setTimeout(function () { buttons.forEach(function (b) { b.disabled = true; }); }, 0);
      setTimeout(function () { buttons.forEach(function (b) { b.disabled = false; }); }, 4000);
    });
  });

  // ---- the links page: the shown links as a CSV file, built here (they are never stored) ------------------------
  function csvCell(text) {
    let value = String(text);
    if (/^[=+\-@\t\r]/.test(value)) value = "'" + value;  // never a spreadsheet formula
    return /[",\r\n]/.test(value) ? '"' + value.replace(/"/g, '""') + '"' : value;
  }

  document.querySelectorAll("a[data-csv-from]").forEach(function (link) {
    const table = document.querySelector(link.dataset.csvFrom);
    if (!table) return;
    const lines = [["id", "name", "email", "url", "expires"].join(",")];
    table.querySelectorAll("tbody tr").forEach(function (tr) {
      lines.push(Array.from(tr.cells).map(function (td) { return csvCell(td.textContent.trim()); }).join(","));
    });
    link.href = URL.createObjectURL(new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" }));
  });

  document.querySelectorAll("#jobs li[data-job-url]").forEach(watchJob);
  if (grid) gridTimer = setTimeout(refreshGrid, Number(grid.dataset.pollMs) || 3000);
})();
