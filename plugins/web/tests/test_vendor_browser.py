"""The vendored xterm.js (+ fit addon) and asciinema-player work offline in headless Chromium.

A page served from a local http.server on 127.0.0.1, under a CSP as strict as these libraries allow
(see static/vendor/README.md): ``script-src 'self' 'wasm-unsafe-eval'`` for the player's WebAssembly
and a per-response style nonce that a small script stamps on the ``<style>`` elements xterm.js
creates. The terminal shows text in colour, sized by the fit addon; the player plays a 3-line
asciicast v2 to its end; every request stays on the local origin; the console stays clean.
"""

from __future__ import annotations

import functools
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from teleport_core.testing.browser import CHROMIUM, Chromium
from teleport_core.testing.prerequisites import missing

VENDOR = Path(__file__).resolve().parents[1] / "teleport_web" / "static" / "vendor"
CAST = [{"version": 2, "width": 60, "height": 5, "timestamp": 1700000000},
        [0.1, "o", "$ echo cast-$((6*7))\r\n"], [0.3, "o", "cast-42\r\n"], [0.5, "o", "$ exit\r\n"]]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>vendored libraries</title>
<link rel="stylesheet" href="vendor/xterm/xterm.css">
<link rel="stylesheet" href="vendor/asciinema-player/asciinema-player.css">
<link rel="stylesheet" href="check.css"></head>
<body><div id="terminal"></div><div id="player"></div>
<script src="style-nonce.js" nonce="NONCE"></script>
<script src="vendor/xterm/xterm.js"></script>
<script src="vendor/xterm-addon-fit/addon-fit.js"></script>
<script src="vendor/asciinema-player/asciinema-player.min.js"></script>
<script src="check.js"></script></body></html>
"""

CHECK = """window.checks = {};
const term = new Terminal({fontSize: 14});
const fit = new FitAddon.FitAddon();
term.loadAddon(fit);
term.open(document.getElementById("terminal"));
fit.fit();
window.checks.size = [term.cols, term.rows];
term.write("vendored \\x1b[1;32mxterm.js\\x1b[0m: web-" + (6 * 7) + "\\r\\n$ ", () => { window.checks.written = true; });
const player = AsciinemaPlayer.create("demo.cast", document.getElementById("player"), {autoPlay: true});
player.addEventListener("ended", () => { window.checks.ended = true; });
"""


def csp(nonce: str) -> str:
    return (f"default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'nonce-{nonce}'; "
            "object-src 'none'; frame-ancestors 'none'; base-uri 'none'")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A local server for the check page and the vendored files: (its URL, the page's nonce)."""
    root = tmp_path / "site"
    root.mkdir()
    nonce = secrets.token_urlsafe(16)
    (root / "index.html").write_text(PAGE.replace("NONCE", nonce))
    (root / "style-nonce.js").write_text((VENDOR.parent / "style-nonce.js").read_text())  # the file pages load
    (root / "check.js").write_text(CHECK)
    (root / "check.css").write_text("#terminal { width: 600px; height: 160px } #player { width: 600px; margin-top: 10px }")
    (root / "demo.cast").write_text("".join(json.dumps(line) + "\n" for line in CAST))
    (root / "favicon.ico").write_bytes(b"")
    (root / "vendor").symlink_to(VENDOR)

    class Handler(SimpleHTTPRequestHandler):
        def end_headers(self) -> None:
            self.send_header("Content-Security-Policy", csp(nonce))
            self.send_header("X-Content-Type-Options", "nosniff")
            super().end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", nonce
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_terminal_and_player_work_offline(tmp_path: Path, site: tuple[str, str]) -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    origin, _ = site
    with Chromium(tmp_path) as browser:
        page = browser.open(f"{origin}/index.html")
        page.wait_for("window.checks && window.checks.written && window.checks.ended")
        checks = page.evaluate("window.checks")
        terminal = page.evaluate("document.querySelector('#terminal .xterm-rows').innerText")
        player = page.evaluate("document.getElementById('player').innerText")
        colours = page.evaluate("""(() => {
            const green = [...document.querySelectorAll('#terminal .xterm-rows span')]
                .find(span => span.textContent === 'xterm.js');
            return [getComputedStyle(green).color,
                    getComputedStyle(document.querySelector('#terminal .xterm-rows')).color,
                    getComputedStyle(document.querySelector('#terminal .xterm-viewport')).backgroundColor];
        })()""")
        styles = page.evaluate("[...document.querySelectorAll('style')].map(s => s.sheet !== null)")
        requests = page.evaluate("performance.getEntriesByType('resource').map(entry => entry.name)")
        page.screenshot(tmp_path / "vendored-libraries.png")
        console = page.console
    assert "vendored xterm.js: web-42" in terminal
    assert checks["size"] != [80, 24] and checks["size"][0] > 20  # the fit addon sized it to the 600x160 box
    green, text, background = colours
    assert len({green, text, background}) == 3, colours  # coloured text, readable on its background
    assert styles and all(styles)  # xterm.js's <style> elements were applied under the CSP
    assert "$ echo cast-$((6*7))" in player and "cast-42" in player and "$ exit" in player
    assert len(requests) >= 6 and all(url.startswith(origin + "/") for url in requests), requests
    assert console == [], console
