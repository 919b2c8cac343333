// The web terminal (templates/console.html): xterm.js + its fit addon over the proxy's WebSocket.
// Binary frames carry the terminal's bytes both ways; JSON text frames carry control messages
// (resize, ping/pong, session, end): see pages/console.py and docs/web.md.
(() => {
  "use strict";
  const box = document.getElementById("console");
  const status = document.getElementById("status");
  const term = new Terminal({cursorBlink: true, fontSize: 14, scrollback: 5000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace'});
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.loadAddon(new WebLinksAddon.WebLinksAddon());  // URLs in the output open in a new tab
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.teleportTerminal = term;  // for tests and the bench

  // a live session to join (console/session/<sid>), or a new shell on a node as a login
  const query = new URLSearchParams(box.dataset.session
    ? {session: box.dataset.session, mode: box.dataset.mode, cols: String(term.cols), rows: String(term.rows)}
    : {node: box.dataset.node, login: box.dataset.login, cols: String(term.cols), rows: String(term.rows)});
  const ws = new WebSocket(`wss://${location.host}${box.dataset.ws}?${query}`);
  ws.binaryType = "arraybuffer";
  window.teleportSocket = ws;  // for tests and the bench
  const encoder = new TextEncoder();
  let ended = false;

  function say(text, kind) {
    status.textContent = text;
    status.className = "console-status " + (kind || "muted");
  }
  function end(reason) {
    if (ended) return;
    ended = true;
    term.options.disableStdin = true;
    term.options.cursorBlink = false;
    term.write(`\r\n\x1b[1;33m${reason}\x1b[0m\r\n`);
    say(reason, reason.startsWith("session ended") ? "notice" : "error");
    box.dataset.ended = reason;
  }
  function send(data) {
    if (ws.readyState !== WebSocket.OPEN) return;
    for (let i = 0; i < data.length; i += 32768) ws.send(data.subarray(i, i + 32768));
  }

  ws.onmessage = (event) => {
    if (typeof event.data !== "string") {
      term.write(new Uint8Array(event.data));
      return;
    }
    const message = JSON.parse(event.data);
    if (message.type === "ping") {
      ws.send(JSON.stringify({type: "pong"}));
    } else if (message.type === "session") {
      say(`connected to ${message.hostname} as ${message.login}`, "notice");
      box.dataset.connected = "1";
      term.focus();
    } else if (message.type === "end") {
      end(message.reason);
    }
  };
  ws.onclose = (event) => end(event.reason || "the connection to the proxy was lost");
  term.onData((text) => send(encoder.encode(text)));
  term.onBinary((text) => send(Uint8Array.from(text, (c) => c.charCodeAt(0) & 255)));
  term.onResize(({cols, rows}) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({type: "resize", cols, rows}));
  });
  let pending = 0;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(() => fit.fit(), 50);
  });
})();
