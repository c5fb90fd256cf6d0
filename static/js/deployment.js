// The deployment page: the live log over a WebSocket, and the summary kept up to date.
//
// Log lines carry a per-deployment sequence number (seq). The page keeps the highest seq it
// has drawn ("last") and draws lines strictly in order: a line it already has is dropped, a
// line that arrives early waits until the ones before it are here. After a dropped connection
// it reconnects and asks for everything after "last"; when a gap shows up it asks the server
// again for the lines after "last". So the page ends with exactly the stored log: no gap and
// no line twice.
//
// Log text is terminal output written by builds and servers, so it is never treated as HTML:
// every piece becomes a text node (textContent) inside a <span> whose classes give the ANSI
// colours.
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("log-config").textContent);
  var box = document.getElementById("log");
  var stateLabel = document.getElementById("log-state");
  var countLabel = document.getElementById("log-count");
  var followBox = document.getElementById("log-follow");
  var wrapBox = document.getElementById("log-wrap");
  var ACTIVE = ["queued", "running"];

  var last = 0;                 // the highest seq drawn; every seq up to it is drawn
  var early = new Map();        // seq -> line, arrived before the lines in front of it
  var socket = null;
  var attempts = 0;
  var refused = "";            // why the server closed the socket for good, if it said
  var gapTimer = null;
  var finalCatchUp = false;
  var active = config.active;
  var lastSummary = "";
  var summaryBusy = false;
  var summaryAgain = false;
  var summarySoon = null;

  // ------------------------------------------------------------------ ANSI colours

  var PALETTE_STEPS = [0, 95, 135, 175, 215, 255];

  function rgbOf256(index) {
    if (index >= 232) {
      var grey = 8 + (index - 232) * 10;
      return [grey, grey, grey];
    }
    index -= 16;
    return [PALETTE_STEPS[Math.floor(index / 36)], PALETTE_STEPS[Math.floor(index / 6) % 6], PALETTE_STEPS[index % 6]];
  }

  function freshStyle() {
    return { fg: null, bg: null, fgRgb: null, bgRgb: null, b: false, d: false, i: false, u: false, inverse: false };
  }

  // Apply one SGR sequence ("1;31", "38;5;208", "" = reset) to the current style.
  function applySgr(style, parameters) {
    var codes = parameters === "" ? [0] : parameters.split(";").map(function (p) { return p === "" ? 0 : parseInt(p, 10); });
    for (var k = 0; k < codes.length; k++) {
      var code = codes[k];
      if (code === 0) { Object.assign(style, freshStyle()); }
      else if (code === 1) { style.b = true; }
      else if (code === 2) { style.d = true; }
      else if (code === 3) { style.i = true; }
      else if (code === 4) { style.u = true; }
      else if (code === 7) { style.inverse = true; }
      else if (code === 22) { style.b = false; style.d = false; }
      else if (code === 23) { style.i = false; }
      else if (code === 24) { style.u = false; }
      else if (code === 27) { style.inverse = false; }
      else if (code >= 30 && code <= 37) { style.fg = code - 30; style.fgRgb = null; }
      else if (code >= 90 && code <= 97) { style.fg = code - 90 + 8; style.fgRgb = null; }
      else if (code === 39) { style.fg = null; style.fgRgb = null; }
      else if (code >= 40 && code <= 47) { style.bg = code - 40; style.bgRgb = null; }
      else if (code >= 100 && code <= 107) { style.bg = code - 100 + 8; style.bgRgb = null; }
      else if (code === 49) { style.bg = null; style.bgRgb = null; }
      else if (code === 38 || code === 48) {
        var colour = null;
        if (codes[k + 1] === 5 && k + 2 < codes.length) {
          var index = Math.max(0, Math.min(255, codes[k + 2] || 0));
          colour = index < 16 ? index : rgbOf256(index);
          k += 2;
        } else if (codes[k + 1] === 2 && k + 4 < codes.length) {
          colour = [codes[k + 2], codes[k + 3], codes[k + 4]].map(function (c) { return Math.max(0, Math.min(255, c || 0)); });
          k += 4;
        }
        if (colour !== null) {
          var isIndex = typeof colour === "number";
          if (code === 38) { style.fg = isIndex ? colour : null; style.fgRgb = isIndex ? null : colour; }
          else { style.bg = isIndex ? colour : null; style.bgRgb = isIndex ? null : colour; }
        }
      }
    }
  }

  function styledSpan(text, style) {
    var span = document.createElement("span");
    span.textContent = text;
    var fg = style.fg, bg = style.bg, fgRgb = style.fgRgb, bgRgb = style.bgRgb;
    if (style.inverse) {
      fg = style.bg === null && !style.bgRgb ? 0 : style.bg; bg = style.fg === null && !style.fgRgb ? 7 : style.fg;
      fgRgb = style.bgRgb; bgRgb = style.fgRgb;
    }
    var classes = [];
    if (fg !== null && fg !== undefined) classes.push("fg-" + fg);
    if (bg !== null && bg !== undefined) classes.push("bg-" + bg);
    ["b", "d", "i", "u"].forEach(function (flag) { if (style[flag]) classes.push(flag); });
    if (classes.length) span.className = classes.join(" ");
    if (fgRgb) span.style.color = "rgb(" + fgRgb.join(",") + ")";
    if (bgRgb) span.style.backgroundColor = "rgb(" + bgRgb.join(",") + ")";
    return span;
  }

  // CSI sequences (colours are "…m"; cursor moves and clears are dropped), OSC sequences
  // (window titles, links) and lone two-character escapes.
  var ESCAPES = /\x1b\[([0-?]*)[ -\/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;
  var CONTROLS = /[\x00-\x08\x0b-\x1f\x7f]/g;

  // One line of terminal output as text-only spans. Colours do not carry over to the next
  // line, so one missing reset cannot paint the rest of the log.
  function renderText(text, into) {
    text = text.replace(/\r+$/, "");
    var carriage = text.lastIndexOf("\r");
    if (carriage >= 0) text = text.slice(carriage + 1);   // a progress bar redrawn in place
    var style = freshStyle();
    var position = 0;
    var match;
    ESCAPES.lastIndex = 0;
    while ((match = ESCAPES.exec(text)) !== null) {
      if (match.index > position) {
        into.appendChild(styledSpan(text.slice(position, match.index).replace(CONTROLS, ""), style));
      }
      if (match[2] === "m") applySgr(style, match[1]);
      position = ESCAPES.lastIndex;
      if (match[0] === "") ESCAPES.lastIndex++;
    }
    if (position < text.length) {
      into.appendChild(styledSpan(text.slice(position).replace(CONTROLS, ""), style));
    }
  }

  function lineElement(line) {
    var row = document.createElement("div");
    row.className = "line stream-" + String(line.stream).replace(/[^a-z]/g, "");
    row.setAttribute("data-seq", String(line.seq));
    var number = document.createElement("span");
    number.className = "ln";
    number.textContent = String(line.seq);
    row.appendChild(number);
    if (line.server !== null && line.server !== undefined) {
      var server = document.createElement("span");
      server.className = "srv";
      server.textContent = config.servers[String(line.server)] || ("server " + line.server);
      row.appendChild(server);
    }
    var text = document.createElement("span");
    text.className = "txt";
    renderText(String(line.text), text);
    row.appendChild(text);
    return row;
  }

  // ------------------------------------------------------------------ lines, in order

  function atBottom() {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 24;
  }

  function addLines(lines) {
    for (var k = 0; k < lines.length; k++) {
      var line = lines[k];
      if (typeof line.seq !== "number" || line.seq <= last || early.has(line.seq)) continue;
      early.set(line.seq, line);
    }
    var batch = document.createDocumentFragment();
    while (early.has(last + 1)) {
      batch.appendChild(lineElement(early.get(last + 1)));
      early.delete(last + 1);
      last += 1;
    }
    if (batch.childNodes.length) {
      var placeholder = box.querySelector(".placeholder");
      if (placeholder) placeholder.remove();
      box.appendChild(batch);
      countLabel.textContent = last + (last === 1 ? " line" : " lines");
      if (followBox.checked) box.scrollTop = box.scrollHeight;
      if (active) refreshSummarySoon();
    }
    if (early.size) askForGap(); else clearGap();
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  // A line arrived before the ones in front of it. Usually they are a moment behind (a
  // replay still running); if they stay missing, the channel dropped them: ask again.
  function askForGap() {
    if (gapTimer) return;
    gapTimer = setTimeout(function () {
      gapTimer = null;
      if (early.size) { send({ after: last }); askForGap(); }
    }, 1000);
  }

  function clearGap() {
    if (gapTimer) { clearTimeout(gapTimer); gapTimer = null; }
  }

  // The end of a replay (the server's answer to {"after": n}) carries "complete". Every
  // stored line after n came before it, so a gap still open now is a hole in the stored log
  // itself (it never happens unless a write was lost): step over it rather than wait forever.
  function afterReplay() {
    if (!early.size) return;
    var next = Math.min.apply(null, Array.from(early.keys()));
    if (next > last + 1) {
      last = next - 1;
      addLines([]);
    }
  }

  // ------------------------------------------------------------------ status

  function formatBytes(bytes) {
    if (bytes < 1024) return bytes + " bytes";
    var units = ["KB", "MB", "GB", "TB"];
    var value = bytes / 1024, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return value.toFixed(1) + " " + units[unit];
  }

  function showProgress(targets) {
    targets.forEach(function (target) {
      var element = document.querySelector('[data-progress="' + Number(target.server) + '"]');
      if (!element || !target.files_total) return;
      element.hidden = false;
      var percent = Math.max(0, Math.min(100, Math.floor(100 * target.files_done / target.files_total)));
      element.querySelector("progress.bar").value = percent;
      element.querySelector(".progress-text").textContent =
        target.files_done + " / " + target.files_total + " files · " +
        formatBytes(target.bytes_done) + " / " + formatBytes(target.bytes_total);
    });
  }

  // Redraw everything but the log (steps, results, buttons) when something changed besides
  // the transfer counters; one request at a time.
  function refreshSummary() {
    if (summaryBusy) { summaryAgain = true; return; }
    if (!window.htmx) return;
    summaryBusy = true;
    window.htmx.ajax("GET", config.summary, { target: "#summary", swap: "outerHTML" }).finally(function () {
      summaryBusy = false;
      if (summaryAgain) { summaryAgain = false; refreshSummary(); }
    });
  }

  // New steps start without a status message; new lines are the sign that the page's steps
  // may be behind, so redraw them every few seconds while lines keep coming.
  function refreshSummarySoon() {
    if (summarySoon) return;
    summarySoon = setTimeout(function () {
      summarySoon = null;
      refreshSummary();
    }, 2500);
  }

  function onStatus(status) {
    active = ACTIVE.indexOf(status.status) >= 0;
    var targets = Array.isArray(status.targets) ? status.targets : [];
    showProgress(targets);
    var signature = JSON.stringify([status.status, status.stage, status.error, targets.map(function (t) {
      return [t.server, t.status, t.release, t.reason];
    })]);
    if (signature !== lastSummary) {
      var first = lastSummary === "";
      lastSummary = signature;
      var shown = document.getElementById("summary");
      if (!first || (shown && shown.getAttribute("data-status") !== status.status) || active) refreshSummary();
    }
    if ("complete" in status) afterReplay();
    if (!active) {
      setState("done", status.status === "succeeded" ? "Finished" : "Ended: " + status.status);
      // Lines written just before the end may still be on their way: ask once more.
      if (!finalCatchUp) {
        finalCatchUp = true;
        setTimeout(function () { send({ after: last }); }, 1500);
      }
    } else {
      setState("live", "Live");
    }
  }

  // ------------------------------------------------------------------ the socket

  function setState(kind, text) {
    stateLabel.className = "log-state " + kind;
    stateLabel.textContent = text;
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    setState("", attempts ? "Reconnecting…" : "Connecting…");
    try {
      socket = new WebSocket(scheme + window.location.host + config.socket);
    } catch (error) {
      retry();
      return;
    }
    socket.onopen = function () {
      attempts = 0;
      setState(active ? "live" : "done", active ? "Live" : "Loading…");
      send({ after: last });
    };
    socket.onmessage = function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (error) { return; }
      if (message.type === "lines" && Array.isArray(message.lines)) addLines(message.lines);
      else if (message.type === "status") onStatus(message);
      else if (message.type === "access_revoked") refused = String(message.message || "");
    };
    socket.onclose = function (event) {
      socket = null;
      // 4403: not (or no longer) allowed to see this deployment; retrying would not help.
      if (event.code === 4403) {
        setState("retry", refused || "You may not see this deployment's log.");
        return;
      }
      retry();
    };
  }

  function retry() {
    attempts += 1;
    var delay = Math.min(10000, 400 * Math.pow(2, Math.min(attempts, 5)));
    setState("retry", "Connection lost, reconnecting…");
    setTimeout(connect, delay);
  }

  // ------------------------------------------------------------------ the page

  followBox.addEventListener("change", function () {
    if (followBox.checked) box.scrollTop = box.scrollHeight;
  });
  wrapBox.addEventListener("change", function () {
    box.classList.toggle("wrap", wrapBox.checked);
  });
  // Scrolling up to read pauses following; scrolling back to the end resumes it.
  box.addEventListener("scroll", function () {
    followBox.checked = atBottom();
  }, { passive: true });

  function tick() {
    if (!active) return;
    document.querySelectorAll("[data-duration][data-started]:not([data-finished])").forEach(function (element) {
      var seconds = Math.max(0, (Date.now() - Date.parse(element.getAttribute("data-started"))) / 1000);
      var whole = Math.round(seconds);
      element.textContent = seconds < 10 ? seconds.toFixed(1) + " s"
        : whole < 60 ? whole + " s"
        : Math.floor(whole / 60) + " min " + String(whole % 60).padStart(2, "0") + " s";
    });
  }
  setInterval(tick, 1000);

  var placeholder = document.createElement("div");
  placeholder.className = "placeholder";
  placeholder.textContent = active ? "Waiting for the first line…" : "Loading the log…";
  box.appendChild(placeholder);
  connect();
})();
