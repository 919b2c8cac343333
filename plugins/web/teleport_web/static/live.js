// Following a running session (templates/live.html): polls the proxy's
// /web/cluster/<c>/session/<sid>/stream?offset=N (auth's recording so far, asciicast v2) and
// writes each output event to a read-only xterm.js terminal, until the recording is complete.
(() => {
  "use strict";
  const box = document.getElementById("live");
  const status = document.getElementById("live-status");
  const term = new Terminal({disableStdin: true, fontSize: 14, scrollback: 5000, convertEol: false,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace'});
  term.open(document.getElementById("terminal"));
  window.teleportLive = term;  // for tests
  const decoder = new TextDecoder();
  let offset = 0, pending = "", header = null;

  function say(text) { status.textContent = text; }
  function line(text) {
    if (!text.trim()) return;
    if (header === null) {
      header = JSON.parse(text);
      if (header.width && header.height) term.resize(header.width, header.height);
      return;
    }
    const event = JSON.parse(text);
    if (event[1] === "o") term.write(event[2]);
  }
  async function poll() {
    let answer;
    try {
      answer = await fetch(`${box.dataset.stream}?offset=${offset}`, {credentials: "same-origin"});
    } catch (err) {
      say("cannot reach the proxy, retrying…");
      setTimeout(poll, 2000);
      return;
    }
    if (!answer.ok) {
      say(`refused: ${answer.status} ${(await answer.text()).slice(0, 200)}`);
      box.dataset.state = "error";
      return;
    }
    const bytes = new Uint8Array(await answer.arrayBuffer());
    offset += bytes.length;
    pending += decoder.decode(bytes, {stream: true});
    const lines = pending.split("\n");
    pending = lines.pop();
    lines.forEach(line);
    if (answer.headers.get("X-Teleport-Recording") === "complete" && bytes.length === 0) {
      box.dataset.state = "ended";
      status.replaceChildren("the session ended: ");
      const link = document.createElement("a");
      link.href = box.dataset.player;
      link.textContent = "play the recording";
      status.append(link);
      return;
    }
    box.dataset.state = "following";
    say(answer.headers.get("X-Teleport-Session") === "ended" ? "the session ended, completing…" : "following");
    setTimeout(poll, bytes.length ? 50 : 500);
  }
  poll();
})();
