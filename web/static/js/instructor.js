// labkit instructor dashboard: job progress bars, the live class grid (server-sent events), confirmations, the links CSV.
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
    if (document.getElementById("grid")) return;  // the grid's event stream shows what the job changed
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
  // The server pushes the grid's changes as server-sent events (grid/events): "grid" (everything), "changes" (the
  // cells and student rows that changed), "shape" (students or machines came or went: load the page again) and
  // "jobs". EventSource reconnects by itself, sending the last version seen (Last-Event-ID).
  const grid = document.getElementById("grid");
  const search = document.getElementById("grid-search");
  const stateFilter = document.getElementById("grid-state");
  let clockBase = performance.now();  // when the time cells' seconds were true

  function clockText(seconds) {  // as web/instructor/grid.py's clock_text
    if (seconds === null || seconds === undefined || seconds === "") return "\u2014";
    const s = Math.max(Math.floor(Number(seconds)), 0);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const two = function (n) { return String(n).padStart(2, "0"); };
    return h ? h + ":" + two(m) + ":" + two(sec) : m + ":" + two(sec);
  }

  function showClocks() {
    const elapsed = (performance.now() - clockBase) / 1000;
    grid.querySelectorAll("td.time").forEach(function (td) {
      const runs = td.dataset.running === "true";
      if (td.dataset.used !== "") td.querySelector(".used").textContent = clockText(Number(td.dataset.used) + (runs ? elapsed : 0));
      if (td.dataset.remaining !== "" && runs) {
        const left = Number(td.dataset.remaining) - elapsed;
        td.querySelector(".left").textContent = left > 0 ? clockText(left) + " left" : "time is up";
        td.classList.toggle("over", left <= 0);
      }
    });
  }

  function setCell(name, state) {
    const td = grid.querySelector('td[data-machine="' + CSS.escape(name) + '"]');
    if (!td) return;
    td.dataset.state = state;
    setState(td.querySelector(".state"), state);
  }

  function setStudent(student, elapsed) {
    const tr = grid.querySelector('tr[data-student="' + CSS.escape(student.id) + '"]');
    if (!tr) return;
    tr.querySelectorAll("td.checks").forEach(function (td) {
      const k = student.checks[td.dataset.lab];
      td.textContent = !k ? "\u2014" : k.unchecked === k.total ? "not checked" : k.passed + "/" + k.total;
      td.title = !k ? "not checked yet" : "latest " + k.kind + (k.unchecked ? ": " + k.unchecked + " not checked" : "");
    });
    tr.querySelectorAll("td.time").forEach(function (td) {
      const t = student.time[td.dataset.lab];
      if (!t) return;
      // the cell's seconds are kept as of clockBase, as the others
      td.dataset.used = t.used === null ? "" : String(t.closed ? t.used : t.used - elapsed);
      td.dataset.remaining = t.remaining === null ? "" : String(t.remaining + elapsed);
      td.dataset.running = t.closed ? "false" : "true";
      td.querySelector(".used").textContent = clockText(t.used);
      td.querySelector(".left").textContent = t.closed ? "ended (" + t.closed + ")"
        : t.remaining === null ? "" : clockText(t.remaining) + " left";
      td.querySelector(".extra").textContent = t.extra_minutes ? "+" + t.extra_minutes + " min" : "";
    });
  }

  function applyGrid(data) {
    if (data.shape && data.shape !== grid.dataset.shape) { window.location.reload(); return; }  // rows came or went
    const elapsed = (performance.now() - clockBase) / 1000;
    if (Array.isArray(data.cells)) data.cells.forEach(function (c) { setCell(c.name, c.state); });
    else Object.keys(data.cells || {}).forEach(function (name) { setCell(name, data.cells[name]); });
    (data.students || []).forEach(function (s) { setStudent(s, elapsed); });
    grid.dataset.version = data.version;
    const running = document.getElementById("grid-running");
    if (running) running.textContent = data.running;
    live("live", "live \u00b7 updated " + new Date().toLocaleTimeString());
    filterGrid();
  }

  function live(state, text) {
    const el = document.getElementById("grid-live");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }

  function listen() {
    const url = grid.dataset.eventsUrl + "?since=" + encodeURIComponent(grid.dataset.version);
    const source = new EventSource(url);
    source.addEventListener("open", function () { live("live", "live"); });
    source.addEventListener("grid", function (e) { applyGrid(JSON.parse(e.data)); });
    source.addEventListener("changes", function (e) { applyGrid(JSON.parse(e.data)); });
    source.addEventListener("jobs", function (e) { JSON.parse(e.data).forEach(addJob); });
    source.addEventListener("shape", function () { source.close(); window.location.reload(); });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) live("closed", "not live: reload the page");
      else live("reconnecting", "reconnecting\u2026");
    });
  }

  function filterGrid() {
    if (!grid) return;
    const words = (search ? search.value : "").trim().toLowerCase();
    const state = stateFilter ? stateFilter.value : "";
    let shown = 0;
    grid.querySelectorAll("tbody tr").forEach(function (tr) {
      const text = (tr.dataset.student + " " + (tr.dataset.name || "")).toLowerCase();
      const match = (!words || text.includes(words)) &&
        (!state || tr.querySelector('td[data-state="' + state + '"]') !== null);
      tr.hidden = !match;
      if (match) shown += 1;
    });
    const count = document.getElementById("grid-shown");
    if (count) count.textContent = shown;
  }

  function offerExtension(button) {
    const form = document.getElementById("extend-form");
    if (!form) return;
    form.elements.student.value = button.dataset.student;
    form.elements.lab.value = button.dataset.lab;
    form.scrollIntoView({ block: "nearest" });
    form.elements.minutes.focus();
    form.elements.minutes.select();
  }

  if (grid) {
    if (search) search.addEventListener("input", filterGrid);
    if (stateFilter) stateFilter.addEventListener("change", filterGrid);
    grid.addEventListener("click", function (event) {
      const button = event.target.closest("button.extend-button");
      if (button) offerExtension(button);
    });
    setInterval(showClocks, 1000);
    listen();
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
})();
