"""The web terminal: ``/web/cluster/{cluster}/console/node/{node}/{login}`` (xterm.js, full window)
and its WebSocket ``/v1/webapi/sites/{cluster}/connect/ws`` (Teleport's path).

The WebSocket is authenticated by the ``__Host-session`` cookie and must come from the proxy's
own origin (:meth:`Web.websocket`: refused before the upgrade, audited); the query names the
node, login and size (``?node=<uuid>&login=<login>&cols=<n>&rows=<n>``), never a token. The
proxy opens the SSH session as ``tsh ssh`` would (:meth:`WebProxy.open_ssh_session`).

Messages (docs/web.md, "The terminal's WebSocket"):

- binary frames, both ways: the terminal's bytes (input from the browser, output from the node);
- text frames, JSON objects with a ``type``: ``resize`` ``{cols, rows}`` and ``pong`` from the
  browser; ``session`` ``{node, hostname, login}`` once the shell runs, ``ping`` every
  :data:`PING_INTERVAL` seconds (answered by ``pong``; no answer for two intervals closes the
  socket), and ``end`` ``{reason}`` (the session ended or was refused) from the proxy, just
  before it closes the socket (1000 when the session ended, 1008 when it was refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import urllib.parse

from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from teleport_core.errors import TeleportError
from teleport_core.webui import STYLE_NONCE_HEADER, TerminalChannel
from teleport_web.framework import Page, Web

PING_INTERVAL = 30.0  # seconds between pings (load balancers cut idle connections after 60 s or more)
MAX_SIZE = 1000  # columns or rows
MAX_NAME = 256
MAX_INPUT = 64 * 1024  # bytes in one input frame (a paste is split by the browser's script)
TERM_COLS, TERM_ROWS = 80, 24


def _size(value: str, what: str, default: int) -> int:
    if not value:
        return default
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_SIZE:
        raise TeleportError(f"{what}: expected a number from 1 to {MAX_SIZE}, got {value[:20]!r}")
    return int(value)


def _name(value: str, what: str) -> str:
    if not value:
        raise TeleportError(f"{what} is missing")
    if len(value) > MAX_NAME or not value.isprintable():
        raise TeleportError(f"{what}: not a valid name")
    return value


async def console(page: Page) -> Response:
    """The terminal page; the script connects the WebSocket (its URL in ``data-*`` attributes)."""
    assert page.session is not None
    node, login = page.request.path_params["node"], page.request.path_params["login"]
    hostname = node
    with contextlib.suppress(TeleportError):  # the WebSocket refuses (and audits) a node the user may not reach
        for found in await page.proxy.nodes(page.session):
            if node in (found.uuid, found.nodename):
                hostname = found.nodename
                break
    nonce = secrets.token_urlsafe(16)
    ws = f"/v1/webapi/sites/{urllib.parse.quote(page.cluster, safe='')}/connect/ws"
    return page.render("console.html", nav="resources", node=node, login=login, hostname=hostname, ws_path=ws,
                       style_nonce=nonce, headers={STYLE_NONCE_HEADER: nonce})


async def join_console(page: Page) -> Response:
    """``/web/cluster/{cluster}/console/session/{sid}?mode=observer|peer|moderator``: join a live session."""
    assert page.session is not None
    sid = page.request.path_params["sid"]
    mode = page.request.query_params.get("mode") or "observer"  # tsh join's default
    nonce = secrets.token_urlsafe(16)
    ws = f"/v1/webapi/sites/{urllib.parse.quote(page.cluster, safe='')}/connect/ws"
    return page.render("console.html", nav="sessions", node="", login=mode, hostname=f"session {sid}", ws_path=ws,
                       session_id=sid, mode=mode, style_nonce=nonce, headers={STYLE_NONCE_HEADER: nonce})


async def _send_json(ws: WebSocket, message: dict[str, object]) -> None:
    await ws.send_text(json.dumps(message))


async def _refuse(ws: WebSocket, reason: str) -> None:
    with contextlib.suppress(Exception):  # the browser may be gone
        await _send_json(ws, {"type": "end", "reason": reason})
        await ws.close(code=1008, reason=reason[:120])


async def connect(ws: WebSocket, page: Page) -> None:
    """One terminal: check the query, open the SSH session, then copy both ways until either ends."""
    assert page.session is not None
    params = ws.query_params
    await ws.accept()
    if params.get("session"):
        await _join(ws, page)
        return
    try:
        node = _name(params.get("node", ""), "node")
        login = _name(params.get("login", ""), "login")
        cols = _size(params.get("cols", ""), "cols", TERM_COLS)
        rows = _size(params.get("rows", ""), "rows", TERM_ROWS)
    except TeleportError as exc:
        await _refuse(ws, str(exc))
        return
    try:
        terminal = await page.proxy.open_ssh_session(page.session, node, login, cols, rows, page.remote)
    except TeleportError as exc:
        await _refuse(ws, str(exc))
        return
    await _send_json(ws, {"type": "session", "node": terminal.node.uuid, "hostname": terminal.node.nodename,
                          "login": login})
    await _run(ws, terminal)


async def _join(ws: WebSocket, page: Page) -> None:
    """``?session=<sid>&mode=<mode>``: join a live session (the node decides, as for tsh join)."""
    assert page.session is not None
    params = ws.query_params
    try:
        sid = _name(params.get("session", ""), "session")
        mode = params.get("mode") or "observer"
        cols = _size(params.get("cols", ""), "cols", TERM_COLS)
        rows = _size(params.get("rows", ""), "rows", TERM_ROWS)
        terminal = await page.proxy.join_ssh_session(page.session, sid, mode, cols, rows, page.remote)
    except TeleportError as exc:
        await _refuse(ws, str(exc))
        return
    await _send_json(ws, {"type": "session", "node": terminal.node.uuid, "hostname": terminal.node.nodename,
                          "login": mode, "session": sid})
    await _run(ws, terminal)


async def _run(ws: WebSocket, terminal: TerminalChannel) -> None:
    answered = [time.monotonic()]  # when the browser last answered a ping (or sent anything)
    reason = ""

    async def output() -> None:
        while True:
            data = await terminal.recv()
            if not data:
                return
            await ws.send_bytes(data)

    async def browser() -> str:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return "the browser closed the terminal"
            answered[0] = time.monotonic()
            data = message.get("bytes")
            if data is not None:
                await terminal.send(data[:MAX_INPUT])
                continue
            try:
                control = json.loads(message.get("text") or "")
            except ValueError:
                continue
            if not isinstance(control, dict):
                continue
            if control.get("type") == "resize":
                try:
                    cols = _size(str(control.get("cols", "")), "cols", TERM_COLS)
                    rows = _size(str(control.get("rows", "")), "rows", TERM_ROWS)
                except TeleportError:
                    continue
                await terminal.resize(cols, rows)

    async def pings() -> str:
        while True:
            await asyncio.sleep(PING_INTERVAL)
            if time.monotonic() - answered[0] > 2 * PING_INTERVAL + 1:
                return "the browser stopped answering pings"
            await _send_json(ws, {"type": "ping"})

    tasks = [asyncio.create_task(output()), asyncio.create_task(browser()), asyncio.create_task(pings())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            with contextlib.suppress(Exception):
                reason = task.result() or ""
    except (WebSocketDisconnect, OSError):
        reason = "the browser closed the terminal"
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await terminal.close()
    ended = reason or terminal.end_reason() or "closed"  # ours (the browser's side) or the node's
    with contextlib.suppress(Exception):  # the browser may be gone
        await _send_json(ws, {"type": "end", "reason": f"session ended: {ended}"})
        await ws.close(code=1000)


def routes(web: Web) -> list[BaseRoute]:
    return [web.page("/web/cluster/{cluster}/console/node/{node}/{login}", console),
            web.page("/web/cluster/{cluster}/console/session/{sid}", join_console),
            web.websocket("/v1/webapi/sites/{cluster}/connect/ws", connect)]
