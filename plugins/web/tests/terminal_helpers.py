"""What the web terminal's tests and bench/web_terminal.py share: a real cluster with our node, a
browser login, reading and typing in the xterm.js terminal, a raw WebSocket client (wsproto over
TLS) for the handshake refusals, and ``tsh`` as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import wsproto
import wsproto.events as wse
from web_helpers import CLUSTER, LOGIN, PASSWORD, WebCluster

from teleport_core.testing.browser import Chromium, Page
from teleport_core.testing.waiting import wait_for
from teleport_core.webui import SESSION_COOKIE

WS_PATH = f"/v1/webapi/sites/{CLUSTER}/connect/ws"
NODENAME = "web-auth"  # the in-process node (the process's nodename)

#: the terminal's whole buffer as text, one line per row
BUFFER = """(() => { const b = window.teleportTerminal.buffer.active; const out = [];
  for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
  return out.join("\\n"); })()"""


def node_uuid(cluster: WebCluster) -> str:
    return str(wait_for(lambda: next((n["uuid"] for n in cluster.call("get_nodes") if n["nodename"] == NODENAME),
                                     None), what="the node's heartbeat"))


def console_url(cluster: WebCluster, node: str, login: str = LOGIN) -> str:
    return f"{cluster.url}/web/cluster/{CLUSTER}/console/node/{node}/{login}"


def browser_login(page: Page, user: str, password: str = PASSWORD) -> None:
    page.wait_for_selector("#user")
    page.type("#user", user)
    page.type("#password", password)
    page.submit("#login")


def open_console(browser: Chromium, cluster: WebCluster, user: str, node: str) -> Page:
    """Log ``user`` in in ``browser`` and open the terminal to ``node``; the page once connected."""
    page = browser.open(f"{cluster.url}/web/login")
    browser_login(page, user)
    page.wait_for_selector("table.resources")
    page.goto(console_url(cluster, node))
    page.wait_for("document.getElementById('console').dataset.connected === '1'")
    return page


def screen(page: Page) -> str:
    return str(page.evaluate(BUFFER))


def type_line(page: Page, text: str) -> None:
    """Type ``text`` into the terminal as keyboard input, then Enter."""
    page.type(".xterm-helper-textarea", text)
    page.press("Enter")


def wait_screen(page: Page, needle: str, timeout: float = 30) -> str:
    """The terminal's text once one of its lines is ``needle`` (output, not the typed command)."""
    page.wait_for(f"({BUFFER}).split('\\n').some(l => l.trim() === {json.dumps(needle)})", timeout)
    return screen(page)


def ws_handshake(cluster: WebCluster, *, cookie: str = "", origin: str | None = None,
                 query: dict[str, str] | None = None, read: bool = True) -> tuple[int, list[Any]]:
    """Open the terminal's WebSocket by hand: (HTTP status of the upgrade, the JSON messages and
    bytes received until the proxy closed it)."""
    host, port = cluster.web.split(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((host, int(port)), timeout=30)
    tls = context.wrap_socket(raw, server_hostname=host)
    conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    headers = [(b"origin", (origin if origin is not None else cluster.url).encode())] if origin != "" else []
    if cookie:
        headers.append((b"cookie", f"{SESSION_COOKIE}={cookie}".encode()))
    target = WS_PATH + ("?" + urllib.parse.urlencode(query) if query else "")
    tls.sendall(conn.send(wse.Request(host=cluster.web, target=target, extra_headers=headers)))
    status = 0
    out: list[Any] = []
    try:
        while True:
            data = tls.recv(65536)
            conn.receive_data(data or None)
            for event in conn.events():
                if isinstance(event, wse.AcceptConnection):
                    status = 101
                    if not read:
                        return status, out
                elif isinstance(event, wse.RejectConnection):
                    return event.status_code, out
                elif isinstance(event, wse.TextMessage):
                    out.append(json.loads(event.data))
                elif isinstance(event, wse.BytesMessage):
                    out.append(bytes(event.data))
                elif isinstance(event, wse.CloseConnection):
                    out.append(("close", event.code, event.reason))
                    return status, out
            if not data:
                return status, out
    finally:
        tls.close()


def session_cookie(web: Any) -> str:
    return str(web.cookies[SESSION_COOKIE])


def tsh(home: Path, *args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TELEPORT_HOME": str(home)}
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def tsh_login(cluster: WebCluster, home: Path, user: str, password: str = PASSWORD) -> None:
    result = tsh(home, "login", f"--proxy={cluster.web}", f"--user={user}", "--insecure", stdin=f"{password}\n")
    assert result.returncode == 0, result.stderr


def recordings(home: Path) -> list[dict[str, Any]]:
    result = tsh(home, "recordings", "ls", "--format=json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


class WSClient:
    """A terminal's WebSocket held open by hand (wsproto over TLS): send bytes and JSON, read
    messages (bytes, dicts, and ``("close", code, reason)`` at the end)."""

    def __init__(self, cluster: WebCluster, cookie: str, query: dict[str, str], path: str = WS_PATH) -> None:
        host, port = cluster.web.split(":")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.tls = context.wrap_socket(socket.create_connection((host, int(port)), timeout=30), server_hostname=host)
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        headers = [(b"origin", cluster.url.encode()), (b"cookie", f"{SESSION_COOKIE}={cookie}".encode())]
        self.tls.sendall(self.conn.send(wse.Request(host=cluster.web, target=path + "?" + urllib.parse.urlencode(
            query), extra_headers=headers)))
        self.pending: list[Any] = []
        self.accepted = False
        while not self.accepted:
            self._pump()

    def _pump(self) -> None:
        data = self.tls.recv(65536)
        self.conn.receive_data(data or None)
        for event in self.conn.events():
            if isinstance(event, wse.AcceptConnection):
                self.accepted = True
            elif isinstance(event, wse.RejectConnection):
                raise AssertionError(f"the upgrade was refused: {event.status_code}")
            elif isinstance(event, wse.TextMessage):
                self.pending.append(json.loads(event.data))
            elif isinstance(event, wse.BytesMessage):
                self.pending.append(bytes(event.data))
            elif isinstance(event, wse.CloseConnection):
                self.pending.append(("close", event.code, event.reason))
            elif isinstance(event, wse.Ping):
                self.tls.sendall(self.conn.send(event.response()))
        if not data:
            self.pending.append(("close", 1006, "lost"))

    def next(self) -> Any:
        while not self.pending:
            self._pump()
        return self.pending.pop(0)

    def send_bytes(self, data: bytes) -> None:
        self.tls.sendall(self.conn.send(wse.BytesMessage(data=data)))

    def send_json(self, message: dict[str, Any]) -> None:
        self.tls.sendall(self.conn.send(wse.TextMessage(data=json.dumps(message))))

    def output_until(self, needle: bytes, *, pong: bool = True) -> bytes:
        """The terminal's bytes until ``needle`` came (answering pings on the way)."""
        seen = b""
        while needle not in seen:
            message = self.next()
            if isinstance(message, bytes):
                seen += message
            elif isinstance(message, dict) and message.get("type") == "ping" and pong:
                self.send_json({"type": "pong"})
            elif isinstance(message, tuple):
                raise AssertionError(f"closed before {needle!r}: {message} after {seen!r}")
        return seen

    def close(self) -> None:
        self.tls.close()
