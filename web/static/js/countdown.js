// The lab's countdown (templates/student/_countdown.html). The server says how many seconds are left; the page
// counts down from that with its own clock (no trust in the two clocks agreeing), asks again every 30 s, and every
// 3 s once the time is up, until the server has closed the attempt (machines stopped, or frozen and submitted).
(function () {
  "use strict";
  const box = document.getElementById("lk-countdown");
  if (!box) { return; }
  const left = box.querySelector(".lk-countdown-left");
  const note = box.querySelector(".lk-countdown-note");
  const label = box.querySelector(".lk-countdown-label");
  const WARN = 5 * 60;
  let endsAt = null;       // Date.now() at which the time runs out, from the server's seconds left
  let info = null;         // the last answer
  let timer = null;

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function clock(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const two = (n) => String(n).padStart(2, "0");
    return (h ? h + ":" + two(m) : String(m)) + ":" + two(r);
  }

  function local(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  function show(state, big, text) {
    box.dataset.state = state;
    left.textContent = big;
    note.textContent = text;
    box.hidden = false;
  }

  const EXAM = "Exam: no self-check; your results are shown once your instructor releases them.";
  const ENDED = {
    submitted: "You submitted: your machines were frozen and stopped.",
    deadline: "Your time is up: your machines were stopped.",
    window: "The lab has closed: your machines were stopped.",
  };

  function render() {
    if (!info) { return; }
    const exam = info.exam ? " " + EXAM : "";
    switch (info.state) {
      case "unlimited":
        if (info.exam) { label.textContent = "Exam"; show("unlimited", "", EXAM); } else { box.hidden = true; }
        return;
      case "not-open":
        label.textContent = "Opens";
        show("not-open", local(info.opens_at), "Your machines can be started from then." + exam);
        return;
      case "waiting":
        label.textContent = "Time";
        show("waiting", "not started", "Your time starts when you start one of this lab's machines." + exam);
        return;
      case "closed": {
        label.textContent = "Time left";
        const result = info.result ? " Your result: " + info.result.points + " of " + info.result.max_points +
          " points." : "";
        show("closed", "0:00", (info.exam && info.closed_reason !== "submitted"
          ? "Your time is up: your machines were frozen and submitted."
          : ENDED[info.closed_reason] || "Your time has ended.") + (info.exam && !info.results_released ? " " + EXAM : "")
          + result);
        return;
      }
      default: {
        label.textContent = "Time left";
        const seconds = endsAt === null ? 0 : (endsAt - Date.now()) / 1000;
        if (seconds <= 0) {
          show("over", "0:00", info.exam ? "Time is up: your machines are being frozen and submitted."
            : "Time is up: your machines are being stopped.");
        } else if (seconds <= WARN || info.state === "warning") {
          show("warning", clock(seconds), "Your time is almost up (ends " + local(info.deadline) + "): " +
            (info.exam ? "your machines will be frozen and submitted then." : "your machines will be stopped then.")
            + exam);
        } else {
          show("running", clock(seconds), "Ends " + local(info.deadline) + "." + exam);
        }
      }
    }
  }

  function schedule() {
    clearTimeout(timer);
    const over = info && (info.state === "over" || (endsAt !== null && endsAt <= Date.now()));
    if (info && (info.state === "closed" || info.state === "unlimited")) { return; }
    timer = setTimeout(refresh, over ? 3000 : 30000);
  }

  function refresh() {
    fetch(box.dataset.timeUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(String(r.status)))))
      .then((data) => {
        const was = info && info.state;
        info = data;
        endsAt = data.remaining_seconds === null ? null : Date.now() + data.remaining_seconds * 1000;
        render();
        if (was && was !== "closed" && data.state === "closed") {
          // the server froze or stopped the machines: the page's states are old now
          // (a page may handle the event itself and call preventDefault(); otherwise it reloads)
          const ended = new CustomEvent("labkit:time-ended", { detail: data, cancelable: true });
          if (document.dispatchEvent(ended)) { setTimeout(() => window.location.reload(), 1000); }
        }
      })
      .catch(() => { /* offline for a moment: the local countdown goes on, the next refresh tries again */ })
      .finally(schedule);
  }

  setInterval(() => {
    render();
    if (info && endsAt !== null && endsAt <= Date.now() && info.state !== "over" && info.state !== "closed") {
      info.state = "over";
      schedule();
    }
  }, 1000);

  // the student is back: machines paused for being idle go on (then the time is read)
  fetch(box.dataset.hereUrl, { method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf() } })
    .catch(() => {})
    .finally(refresh);
}());
