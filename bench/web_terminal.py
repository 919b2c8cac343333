"""Keystroke-to-echo latency of the web terminal (headless Chromium, xterm.js, the proxy's
WebSocket, the proxy's SSH session to the node) beside ``tsh ssh`` to the same node, in one run.

    python bench/web_terminal.py [--keys 500] [--format text|json]

One teleport process runs auth, the proxy (with teleport-web) and our node on 127.0.0.1 (the
web tests' cluster: plugins/web/tests/web_helpers.py). On both sides the remote command is
``cat > /dev/null`` on a PTY, so each key comes back as the PTY's echo of one character:

* **web**: alice logs in in the browser and opens the console page; a loop in the page types
  each key through xterm.js's input path (``term.input(key, true)``: what a key press ends in,
  then ``onData``, the WebSocket, the proxy, SSH, the node's PTY and back) and times it until
  xterm.js has parsed the echo (``onWriteParsed``; the paint, about one frame, is not counted);
* **web_devtools**: the same with real key presses sent by DevTools (``Input.dispatchKeyEvent``),
  timed in the page from the ``keydown`` event: headless Chromium handles DevTools input in step
  with its frames, so this one carries up to a frame (16 ms) of the driver's own making;
* **websocket**: the same WebSocket from a Python client (wsproto), without a browser: the
  share of the proxy (hypercorn, the session's threads, paramiko) in the web figure;
* **tsh**: ``tsh ssh -t`` on a pseudo-terminal (raw mode, as a user's terminal); the time runs
  from writing one byte to the PTY to reading its echo back.

Prints p50, p99 and max in milliseconds for each and the ratio web/tsh (goal: web p99 < 50 ms
on loopback and within 1.5x of tsh's).
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "web" / "tests"))

from terminal_helpers import (
    NODENAME,
    WSClient,
    node_uuid,
    open_console,
    session_cookie,
    tsh,
    tsh_login,
    type_line,
)
from web_helpers import LOGIN, running_cluster

from teleport_core.testing.browser import Chromium

#: installed in the console page: window.bench.samples (ms), window.bench.wait(n) resolves at n samples
PROBE = """(() => {
  const term = window.teleportTerminal;
  const bench = window.bench = {samples: [], t0: 0, waiters: []};
  document.addEventListener("keydown", () => { bench.t0 = performance.now(); }, true);
  term.onWriteParsed(() => {
    if (!bench.t0) return;
    bench.samples.push(performance.now() - bench.t0);
    bench.t0 = 0;
    bench.waiters = bench.waiters.filter(([n, done]) => bench.samples.length >= n ? (done(), false) : true);
  });
  bench.wait = (n) => new Promise((done) => bench.samples.length >= n ? done() : bench.waiters.push([n, done]));
  return true;
})()"""


#: N keys typed by xterm.js's own input path (term.input(key, wasUserInput), what a key press
#: ends in); each waits for its echo to be parsed; the samples in ms
LOOP = """(async (n) => {
  const term = window.teleportTerminal; const out = [];
  for (let i = 0; i < n; i++) {
    const key = "abcdefghijklmnopqrstuvwxyz"[i % 26];
    const t0 = performance.now();
    await new Promise((done) => {
      const sub = term.onWriteParsed(() => { sub.dispose(); done(); });
      term.input(key, true);
    });
    out.push(performance.now() - t0);
  }
  return out;
})"""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2)}


def web_latency(cluster: Any, folder: Path, keys: int) -> tuple[list[float], list[float]]:
    """(keys typed in the page, keys pressed through DevTools) latencies in ms."""
    node = node_uuid(cluster)
    with Chromium(folder) as browser:
        page = open_console(browser, cluster, "alice", node)
        type_line(page, "cat > /dev/null")
        time.sleep(1.0)  # the shell runs cat; its output is over
        typed = [float(x) for x in page.evaluate(f"{LOOP}({keys})")]
        page.evaluate(PROBE)
        for i in range(keys):
            page.press("abcdefghijklmnopqrstuvwxyz"[i % 26])
            page.evaluate(f"window.bench.wait({i + 1})")
        samples = [float(x) for x in page.evaluate("window.bench.samples")]
        page.screenshot(folder / "bench-terminal.png")
    return typed, samples


def socket_latency(cluster: Any, keys: int) -> list[float]:
    """The same through the proxy's WebSocket from a Python client (no browser): the proxy's share."""
    with cluster.logged_in("alice") as web:
        cookie = session_cookie(web)
    client = WSClient(cluster, cookie, {"node": NODENAME, "login": LOGIN})
    samples = []
    try:
        client.next()  # the session message
        client.send_bytes(b"cat > /dev/null\r")
        client.output_until(b"cat > /dev/null\r\n")
        time.sleep(0.5)
        for i in range(keys):
            key = b"abcdefghijklmnopqrstuvwxyz"[i % 26:i % 26 + 1]
            start = time.perf_counter()
            client.send_bytes(key)
            client.output_until(key)
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        client.close()
    return samples


def tsh_latency(cluster: Any, home: Path, keys: int) -> list[float]:
    master, slave = pty.openpty()
    env = {**os.environ, "TELEPORT_HOME": str(home)}
    env.pop("SSH_AUTH_SOCK", None)
    proc = subprocess.Popen([sys.executable, "-m", "teleport_core.cli.tsh", "ssh", "-t", f"{LOGIN}@{NODENAME}",
                             "cat > /dev/null"], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                            start_new_session=True)
    os.close(slave)
    samples: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while termios.tcgetattr(master)[3] & termios.ECHO:  # until tsh put its terminal in raw mode
            if time.monotonic() > deadline:
                raise TimeoutError("tsh ssh did not start")
            time.sleep(0.05)
        seen = b""
        while b"x" not in seen:  # the session is up once a key comes back (the node's echo now)
            if time.monotonic() > deadline:
                raise TimeoutError(f"tsh ssh did not echo: {seen[-200:]!r}")
            os.write(master, b"x")
            if select.select([master], [], [], 1.0)[0]:
                seen += os.read(master, 4096)
        time.sleep(0.5)
        while select.select([master], [], [], 0.2)[0]:
            os.read(master, 4096)
        for i in range(keys):
            key = b"abcdefghijklmnopqrstuvwxyz"[i % 26:i % 26 + 1]
            start = time.perf_counter()
            os.write(master, key)
            got = b""
            while key not in got:
                select.select([master], [], [], 10)
                got += os.read(master, 4096)
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        proc.kill()
        proc.wait(10)
        os.close(master)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=500, help="keystrokes measured on each side")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    if args.keys < 1:
        parser.error("--keys must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-web-terminal-") as tmp:
        root = Path(tmp)
        (root / "cluster").mkdir()
        progress("starting auth, proxy (teleport-web) and node ...")
        with running_cluster(root / "cluster", node=True) as cluster:
            cluster.signup("alice", ["access"])
            home = root / "tsh"
            tsh_login(cluster, home, "alice")
            assert tsh(home, "ls").returncode == 0
            progress(f"web terminal: {args.keys} keystrokes ...")
            (root / "browser").mkdir()
            web, pressed = web_latency(cluster, root / "browser", args.keys)
            progress(f"WebSocket without a browser: {args.keys} keystrokes ...")
            bare = socket_latency(cluster, args.keys)
            progress(f"tsh ssh: {args.keys} keystrokes ...")
            cli = tsh_latency(cluster, home, args.keys)
    result = {"keys": args.keys, "web": percentiles(web), "web_devtools": percentiles(pressed),
              "websocket": percentiles(bare),
              "tsh": percentiles(cli)}
    result["p99_ratio_web_over_tsh"] = round(result["web"]["p99_ms"] / result["tsh"]["p99_ms"], 2)
    result["p50_ratio_web_over_tsh"] = round(result["web"]["p50_ms"] / result["tsh"]["p50_ms"], 2)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(f"keystroke-to-echo latency over {args.keys} keys (ms)")
        for name in ("web", "web_devtools", "websocket", "tsh"):
            r = result[name]
            print(f"  {name:12} p50 {r['p50_ms']:7.2f}  p99 {r['p99_ms']:7.2f}  max {r['max_ms']:7.2f}")
        print(f"  web/tsh: p50 {result['p50_ratio_web_over_tsh']}x, p99 {result['p99_ratio_web_over_tsh']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
