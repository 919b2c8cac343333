"""Headless Debian ``chromium`` driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: NUL-terminated JSON on fds 3 and 4, no websocket library): the
one browser driver of every web UI test (docs/web.md).

::

    with Chromium(tmp_path) as browser:
        page = browser.open("https://127.0.0.1:3080/web/login")
        page.type("#user", "alice")
        page.type("#password", "secret")
        page.click("#submit", navigates=True)
        page.wait_for_selector("table.resources")
        page.text("h1")                   # "Resources"
        page.cookies()                    # [{"name": "__Host-session", "httpOnly": True, ...}]
        page.back(); page.forward()
        page.screenshot(tmp_path / "resources.png")
        page.console  # every console entry, exception and CSP report seen so far

``CHROMIUM`` is "" when no browser is installed: skip the test then.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or ""


def _above_4(fd: int) -> int:
    """``fd`` moved to a descriptor number above 4 (the old one closed)."""
    if fd > 4:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return moved


class Chromium:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._next = 0
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Chromium:
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        # the child's ends must not be fds 3 or 4 themselves, or the redirections below close them
        to_child, from_child = (_above_4(fd) for fd in (to_child, from_child))
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--ignore-certificate-errors", "--remote-debugging-pipe", f"--user-data-dir={self.folder / 'profile'}",
                "--window-size=900,700", "about:blank"]
        # the child gets the pipe ends as fds 3 (it reads) and 4 (it writes)
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-', "bash", *args],
            pass_fds=(to_child, from_child), stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "chromium.log", "wb"))
        os.close(to_child)
        os.close(from_child)
        threading.Thread(target=self._reader, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):  # closing anyway
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._write)

    def _reader(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._read, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                os.close(self._read)
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        waiting = self._replies.get(message["id"])
                    if waiting is not None:
                        waiting.put(message)
                else:
                    self.events.append(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        with self._lock:
            self._next += 1
            ident = self._next
            self._replies[ident] = queue.Queue()
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        try:
            reply = self._replies[ident].get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"chromium did not answer {method} within {timeout} s") from None
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    def open(self, url: str) -> Page:
        # the first call waits for Chromium to start: slow on a loaded machine
        target = self.call("Target.createTarget", {"url": "about:blank"}, timeout=90)["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(f"{domain}.enable")
        page.navigate(url)
        return page


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        return self.browser.call(method, params, self.session, timeout)

    def navigate(self, url: str, timeout: float = 30) -> None:
        seen = len(self.browser.events)
        self.call("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == self.session
                   for e in self.browser.events[seen:]):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{url} did not load within {timeout} s")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expression} stayed false for {timeout} s")

    def goto(self, url: str, timeout: float = 30) -> None:
        """Load ``url`` (waits for its load event)."""
        self.navigate(url, timeout)

    def _load_mark(self) -> int:
        return len(self.browser.events)

    def _wait_load(self, mark: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == self.session
                   for e in self.browser.events[mark:]):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{what}: no page loaded within {timeout} s")

    @property
    def url(self) -> str:
        return str(self.evaluate("location.href"))

    def _element(self, selector: str) -> str:
        return f"document.querySelector({json.dumps(selector)})"

    def wait_for_selector(self, selector: str, timeout: float = 30) -> None:
        """Wait until an element matches ``selector``."""
        self.wait_for(f"!!{self._element(selector)}", timeout)

    def text(self, selector: str) -> str:
        """The text of the first element matching ``selector`` (RuntimeError when there is none)."""
        value = self.evaluate(f"(e => e ? e.textContent : null)({self._element(selector)})")
        if value is None:
            raise RuntimeError(f"no element matches {selector!r}")
        return str(value).strip()

    def exists(self, selector: str) -> bool:
        return bool(self.evaluate(f"!!{self._element(selector)}"))

    def type(self, selector: str, text: str) -> None:
        """Focus the element and type ``text`` into it as keyboard input (what is there is replaced)."""
        if not self.evaluate(f"(e => {{ if (!e) return false; e.focus(); if ('select' in e) e.select(); "
                             f"return true; }})({self._element(selector)})"):
            raise RuntimeError(f"no element matches {selector!r}")
        self.call("Input.insertText", {"text": text})

    def press(self, key: str) -> None:
        """Press and release a key (``Enter``, ``Tab``, ``Escape``, a character) in the focused element."""
        codes = {"Enter": 13, "Tab": 9, "Escape": 27, "Backspace": 8}
        params: dict[str, Any] = {"key": key, "windowsVirtualKeyCode": codes.get(key, 0)}
        if key == "Enter":
            params["text"] = "\r"
        elif len(key) == 1:
            params["text"] = key
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", **params})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key})

    def click(self, selector: str, *, navigates: bool = False, timeout: float = 30) -> None:
        """Click the element (a real mouse click at its centre); with ``navigates``, wait for the
        page it loads."""
        box = self.evaluate(f"(e => {{ if (!e) return null; e.scrollIntoView({{block: 'center'}}); "
                            f"const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})"
                            f"({self._element(selector)})")
        if box is None:
            raise RuntimeError(f"no element matches {selector!r}")
        mark = self._load_mark()
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})
        if navigates:
            self._wait_load(mark, timeout, f"click on {selector}")

    def submit(self, selector: str, timeout: float = 30) -> None:
        """Submit the form ``selector`` (as its submit button would) and wait for the next page."""
        mark = self._load_mark()
        self.evaluate(f"{self._element(selector)}.requestSubmit()")
        self._wait_load(mark, timeout, f"submit {selector}")

    def back(self, timeout: float = 30) -> None:
        """The browser's back button; waits for the page it shows to load."""
        self._history(-1, timeout)

    def forward(self, timeout: float = 30) -> None:
        self._history(1, timeout)

    def _history(self, step: int, timeout: float) -> None:
        history = self.call("Page.getNavigationHistory")
        index = history["currentIndex"] + step
        entries = history["entries"]
        if not 0 <= index < len(entries):
            raise RuntimeError("no page to go to in the history")
        mark = self._load_mark()
        self.call("Page.navigateToHistoryEntry", {"entryId": entries[index]["id"]})
        self._wait_load(mark, timeout, "history navigation")

    def cookies(self) -> list[dict[str, Any]]:
        """The cookies the browser holds for this page's URL (name, value, secure, httpOnly, sameSite ...)."""
        return list(self.call("Network.getCookies", {"urls": [self.url]})["cookies"])

    def set_viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        """Emulate a screen (a phone: 390x844, mobile) for the following screenshots."""
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                          "deviceScaleFactor": 1, "mobile": mobile})

    def color_scheme(self, scheme: str) -> None:
        """Emulate ``prefers-color-scheme`` (``light`` or ``dark``)."""
        self.call("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"]))
        return path

    @property
    def console(self) -> list[str]:
        """Console messages, uncaught exceptions and CSP violations of this page, as text."""
        out = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            params = event.get("params", {})
            if event["method"] == "Log.entryAdded":
                entry = params["entry"]
                out.append(f"{entry.get('level')} {entry.get('source')}: {entry.get('text')}")
            elif event["method"] == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails'].get('text')} "
                           f"{params['exceptionDetails'].get('exception', {}).get('description', '')}")
            elif event["method"] == "Runtime.consoleAPICalled":
                out.append(f"console.{params.get('type')}: {[a.get('value') for a in params.get('args', [])]}")
        return out


Browser = Chromium  # the name docs/web.md uses
