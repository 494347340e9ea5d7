// The instructor's replay of one console recording: asciinema-player (web/static/vendor, from npm) on the element
// #player, whose data attributes give the cast's URL and its terminal size. The markers (self-checks, submissions)
// come inside the cast as "m" events: the player's idle-time limit moves them with the rest (its `markers` option
// would keep their recorded times on the shortened timeline).
(function () {
  "use strict";
  var element = document.getElementById("player");
  if (!element || !window.AsciinemaPlayer) { return; }
  window.labkitReplay = window.AsciinemaPlayer.create(element.getAttribute("data-src"), element, {
    cols: Number(element.getAttribute("data-cols")) || 80,
    rows: Number(element.getAttribute("data-rows")) || 24,
    idleTimeLimit: 2,   // long pauses of the student play as two seconds
    preload: true,
    fit: "width"
  });
}());
