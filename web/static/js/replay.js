// The instructor's replay of one console recording: asciinema-player (web/static/vendor, from npm) on the element
// #player, whose data attributes give the cast's URL, its terminal size and the markers ([seconds, label], ...).
(function () {
  "use strict";
  var element = document.getElementById("player");
  if (!element || !window.AsciinemaPlayer) { return; }
  var markers = [];
  try { markers = JSON.parse(element.getAttribute("data-markers") || "[]"); } catch (err) { markers = []; }
  window.labkitReplay = window.AsciinemaPlayer.create(element.getAttribute("data-src"), element, {
    cols: Number(element.getAttribute("data-cols")) || 80,
    rows: Number(element.getAttribute("data-rows")) || 24,
    markers: markers,
    idleTimeLimit: 2,   // long pauses of the student play as two seconds
    preload: true,
    fit: "width"
  });
  // a click on a listed marker seeks there
  document.querySelectorAll("#markers li[data-at]").forEach(function (item) {
    item.addEventListener("click", function () { window.labkitReplay.seek(Number(item.getAttribute("data-at"))); });
  });
}());
