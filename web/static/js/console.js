/* labkit browser console: xterm.js joined to /ws/console/<machine> (protocol: web/console_relay.py).
 *
 * Every element with class "lk-console" (rendered by templates/_console.html) becomes a terminal that
 * - fits its box and follows window and box resizes (the fit addon), telling the server the new size;
 * - reconnects with exponential backoff after a network blip, and notices a dead connection by pinging;
 * - says "machine stopped" when the server closes with code 4000, then retries slowly (or at once when the page
 *   dispatches `labkit:machine-started` on document, or the user presses Reconnect);
 * - in read-only mode (an instructor watching) shows a badge and never sends a keystroke.
 * Needs the globals Terminal (vendor/xterm.js) and FitAddon (vendor/addon-fit.js); no CDN.
 */
(function () {
  "use strict";

  if (window.labkitConsole) {
    return; // the partial was included twice on one page: the first copy mounts every console
  }

  var CLOSE_STOPPED = 4000;
  var PING_EVERY_MS = 20000;
  var PONG_WITHIN_MS = 10000;
  var BACKOFF_FIRST_MS = 500;
  var BACKOFF_MAX_MS = 30000;
  var STOPPED_RETRY_MS = 15000;
  var encoder = new TextEncoder();

  function socketUrl(rendered) {
    // url_for gives a WebSocket rule as an absolute ws:// URL; keep its path and use the page's own scheme and host
    // (wss behind a TLS proxy).
    var url = new URL(rendered, window.location.href);
    return (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host + url.pathname +
      url.search;
  }

  function ConsoleView(root) {
    this.root = root;
    this.machine = root.dataset.machine;
    this.readOnly = root.dataset.readOnly === "true";
    this.url = socketUrl(root.dataset.wsPath);
    this.statusEl = root.querySelector(".lk-console-status");
    this.reconnectButton = root.querySelector(".lk-console-reconnect");
    this.ws = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.stopped = false;

    this.term = new window.Terminal({
      cursorBlink: !this.readOnly,
      disableStdin: this.readOnly,
      scrollback: 5000,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace",
      fontSize: 14,
      // At a line height of 1 the cell ends at the font's descent, and the DOM renderer cuts off what hangs lower:
      // with DejaVu Sans Mono (Linux's usual monospace) every underscore vanished ("x86_64" read "x86 64").
      lineHeight: 1.2,
    });
    this.fit = new window.FitAddon.FitAddon();
    this.term.loadAddon(this.fit);
    this.term.open(root.querySelector(".lk-console-screen"));
    this.refit();

    var self = this;
    this.term.onData(function (data) { self.sendInput(encoder.encode(data)); });
    this.term.onBinary(function (data) {
      var bytes = new Uint8Array(data.length);
      for (var i = 0; i < data.length; i++) { bytes[i] = data.charCodeAt(i) & 0xff; }
      self.sendInput(bytes);
    });
    this.term.onResize(function (size) { self.sendControl({ type: "resize", cols: size.cols, rows: size.rows }); });

    var pending = null;
    var refitSoon = function () {
      if (pending) { window.cancelAnimationFrame(pending); }
      pending = window.requestAnimationFrame(function () { pending = null; self.refit(); });
    };
    window.addEventListener("resize", refitSoon);
    if (window.ResizeObserver) { new window.ResizeObserver(refitSoon).observe(root.querySelector(".lk-console-screen")); }
    window.addEventListener("online", function () { self.reconnectNow(); });
    document.addEventListener("labkit:machine-started", function (event) {
      if (!event.detail || !event.detail.machine || event.detail.machine === self.machine) { self.reconnectNow(); }
    });
    if (this.reconnectButton) {
      this.reconnectButton.addEventListener("click", function () { self.reconnectNow(); });
    }
    this.connect();
  }

  ConsoleView.prototype.refit = function () {
    try { this.fit.fit(); } catch (err) { /* the box is hidden (size 0): fit again when it shows */ }
  };

  ConsoleView.prototype.setStatus = function (state, text) {
    this.root.dataset.state = state;
    if (this.statusEl) {
      this.statusEl.dataset.state = state;
      this.statusEl.textContent = text;
    }
    if (this.reconnectButton) { this.reconnectButton.hidden = state === "connected" || state === "connecting"; }
  };

  ConsoleView.prototype.connect = function () {
    var self = this;
    window.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.setStatus("connecting", this.attempt ? "reconnecting…" : "connecting…");
    var ws = new window.WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = function () {
      self.attempt = 0;
      self.startPing();
    };
    ws.onmessage = function (event) {
      if (ws !== self.ws) { return; }
      if (typeof event.data === "string") {
        self.onControl(JSON.parse(event.data));
      } else {
        self.term.write(new Uint8Array(event.data));
      }
    };
    ws.onclose = function (event) {
      if (ws !== self.ws) { return; } // a connection given up on earlier (see startPing)
      self.lost(event.code === CLOSE_STOPPED || self.stopped);
    };
  };

  ConsoleView.prototype.onControl = function (message) {
    if (message.type === "hello") {
      // The server replays the console's recent output next: start from a clean screen so a reconnect does not
      // show it twice.
      this.stopped = false;
      this.term.reset();
      this.setStatus("connected", this.readOnly ? "connected (read-only)" : "connected");
      this.sendControl({ type: "resize", cols: this.term.cols, rows: this.term.rows });
    } else if (message.type === "stopped") {
      this.stopped = true;
      this.setStatus("stopped", message.message || "machine stopped");
    } else if (message.type === "pong") {
      window.clearTimeout(this.pongTimer);
      this.pongTimer = null;
    } else if (message.type === "error" && window.console) {
      window.console.warn("labkit console: " + message.message);
    }
  };

  ConsoleView.prototype.lost = function (stopped) {
    this.stopPing();
    this.ws = null;
    var delay;
    if (stopped) {
      this.stopped = true;
      delay = STOPPED_RETRY_MS;
      if (this.root.dataset.state !== "stopped") { this.setStatus("stopped", "machine stopped"); }
    } else {
      this.attempt += 1;
      delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, this.attempt - 1));
      delay = Math.round(delay * (0.75 + Math.random() * 0.5));
      this.setStatus("reconnecting", "connection lost; reconnecting in " + Math.ceil(delay / 1000) + " s");
    }
    var self = this;
    this.retryTimer = window.setTimeout(function () {
      if (self.stopped && document.hidden) { self.lost(true); return; } // no polling from a hidden tab
      self.connect();
    }, delay);
  };

  ConsoleView.prototype.reconnectNow = function () {
    if (this.ws && this.ws.readyState <= 1 && this.root.dataset.state === "connected") { return; }
    var old = this.ws;
    this.ws = null;
    if (old) { try { old.close(); } catch (err) { /* already closing */ } }
    this.stopPing();
    this.attempt = 0;
    this.connect();
  };

  ConsoleView.prototype.startPing = function () {
    var self = this;
    this.stopPing();
    this.pingTimer = window.setInterval(function () {
      if (self.pongTimer || !self.sendControl({ type: "ping" })) { return; }
      self.pongTimer = window.setTimeout(function () {
        // No answer: the connection is dead without having closed (a network blip). Give it up and start over.
        var dead = self.ws;
        self.ws = null;
        if (dead) { try { dead.close(); } catch (err) { /* ignore */ } }
        self.lost(false);
      }, PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  };

  ConsoleView.prototype.stopPing = function () {
    window.clearInterval(this.pingTimer);
    window.clearTimeout(this.pongTimer);
    this.pingTimer = null;
    this.pongTimer = null;
  };

  ConsoleView.prototype.sendControl = function (message) {
    if (!this.ws || this.ws.readyState !== window.WebSocket.OPEN) { return false; }
    this.ws.send(JSON.stringify(message));
    return true;
  };

  ConsoleView.prototype.sendInput = function (bytes) {
    if (this.readOnly || !this.ws || this.ws.readyState !== window.WebSocket.OPEN) { return; }
    this.ws.send(bytes);
  };

  function mountAll() {
    var roots = document.querySelectorAll(".lk-console:not([data-mounted])");
    for (var i = 0; i < roots.length; i++) {
      roots[i].dataset.mounted = "true";
      views.push(new ConsoleView(roots[i]));
    }
  }

  var views = [];
  window.labkitConsole = { views: views, mountAll: mountAll };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", mountAll);
  } else {
    mountAll();
  }
})();
