"""Session recordings: the list, the player, the download (docs/web.md, "Recordings").

- ``/web/cluster/{cluster}/recordings``: the sessions that ended in a time range (default the
  last 24 hours), newest first, filtered by ``user``, ``node`` and ``search`` (the text the
  recording shows; each row then shows where, the match marked) at auth, 50 a page (``limit`` up
  to 200), *Older* pages through a cursor (``until`` + ``after``: the last row's end and ID).
  Auth lists with the user's roles: the preset ``access`` role's ``where:`` shows a user only the
  sessions they took part in, ``auditor`` every one.
- ``/web/cluster/{cluster}/session/{sid}``: the player (Teleport's URL), also the share link: it
  carries no secret, the viewer's own roles decide (a refusal is a 403 page, audited at auth). Each
  view reads the recording at auth once (``read`` on ``session``; ``session.recording.access``,
  T2012I, as ``tsh play``), keeps it on the proxy for this web session and serves it to
  asciinema-player as a segmented recording (:mod:`teleport_web.castsegments`):
  ``.../session/{sid}/index.json`` and ``.../session/{sid}/segment/{n}.json``.
- ``/web/cluster/{cluster}/session/{sid}/download``: the ``.cast`` file as an attachment (another
  read at auth, audited; the bytes ``tsh play --format=cast`` writes).
- ``/web/cluster/{cluster}/session/{sid}/live``: follow a running session (``session_recording:
  node-sync``): a read-only terminal (xterm.js, ``static/live.js``) writes the output as auth
  receives it, polling ``.../session/{sid}/stream?offset=N`` (auth's recording from a byte
  offset, ``read`` on ``session`` as for the player; the first read audited), until the recording
  is complete; then it links the player. The player of a session still streaming sends its viewer
  here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import shutil
import tempfile
import time
import urllib.parse
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute

from teleport_core.errors import NotFound, TeleportError
from teleport_core.state.audit import format_time, parse_time
from teleport_core.state.sessions import check_session_id
from teleport_core.webui import STYLE_NONCE_HEADER, WASM_HEADER
from teleport_web import castsegments
from teleport_web.framework import NO_STORE, Page, Web, query_int

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
DEFAULT_RANGE = dt.timedelta(days=1)
#: a recording kept on the proxy for a web session's player: dropped after this long unused
KEEP_IDLE = 600.0
#: every recording kept for players together at most (the least recently used go first)
KEEP_BYTES = 2 << 30
SPEEDS = ("0.5", "1", "2", "4", "8", "16")
STATES = {"uploaded": "uploaded", "pending": "pending upload", "missing": "missing", "off": "not recorded"}


@attrs.define
class Kept:
    path: Path
    index: castsegments.CastIndex
    used: float


class Recordings:
    """The recordings players read, on the proxy's disk, per (web session, session ID): the
    player's index and segments come from the copy its page view read at auth."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="teleport-web-recordings-"))
        weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.kept: dict[tuple[str, str], Kept] = {}
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}

    def _drop(self, key: tuple[str, str], *, forget: bool = False) -> None:
        kept = self.kept.pop(key, None)
        if kept is not None:
            kept.path.unlink(missing_ok=True)
        lock = self.locks.get(key)
        if forget and lock is not None and not lock.locked():
            del self.locks[key]

    def _trim(self, now: float, keep: tuple[str, str]) -> None:
        for key, kept in list(self.kept.items()):
            if now - kept.used > KEEP_IDLE and key != keep:
                self._drop(key, forget=True)
        total = sum(k.index.size for k in self.kept.values())
        for key, kept in sorted(self.kept.items(), key=lambda item: item[1].used):
            if total <= KEEP_BYTES:
                break
            if key != keep:
                total -= kept.index.size
                self._drop(key, forget=True)

    async def read(self, page: Page, sid: str, *, fresh: bool) -> Kept:
        """The recording of ``sid`` for this web session: read at auth as the user (``fresh``, or
        when not kept), else the kept copy."""
        assert page.session is not None
        key = (page.session.id, sid)
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            kept = self.kept.get(key)
            if kept is None or fresh:
                path = self.folder / f"{len(self.kept)}-{time.time_ns()}.cast"
                try:
                    await page.auth.download_recording(sid, path)
                    index = await asyncio.to_thread(castsegments.build_index, path)
                except BaseException:
                    path.unlink(missing_ok=True)
                    raise
                self._drop(key)
                kept = self.kept[key] = Kept(path, index, now)
            kept.used = now
            self._trim(now, key)
            return kept


def _sid(page: Page) -> str:
    return check_session_id(page.request.path_params["sid"])


def _when(text: str, what: str) -> dt.datetime | None:
    """A time from the form (``2026-12-03T21:05`` as ``<input type=datetime-local>`` sends it, UTC)."""
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise TeleportError(f"{what}: expected a time like 2026-12-03T21:05 (UTC), got {text[:40]!r}") from None


def duration_text(seconds: float) -> str:
    """``1h 02m 03s``, ``4m 05s``, ``6s``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def time_text(text: str) -> str:
    try:
        return parse_time(text).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return text


def _local(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M")


def marked(snippet: str, highlights: list[list[int]]) -> list[tuple[str, bool]]:
    """A search snippet as parts (text, is a match) for the template to escape and mark."""
    parts: list[tuple[str, bool]] = []
    at = 0
    for start, end in sorted((int(a), int(b)) for a, b in highlights):
        if not at <= start < end <= len(snippet):
            continue
        if start > at:
            parts.append((snippet[at:start], False))
        parts.append((snippet[start:end], True))
        at = end
    if at < len(snippet):
        parts.append((snippet[at:], False))
    return parts


async def listing(page: Page) -> Response:
    params = page.request.query_params
    user = params.get("user", "").strip()[:256]
    node = params.get("node", "").strip()[:256]
    search = params.get("search", "")[:1024]  # auth checks it (3 to 256 characters) and says what is wrong
    after = params.get("after", "")[:256]
    now = dt.datetime.now(dt.UTC)
    try:
        limit = query_int(params, "limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        until = _when(params.get("to", ""), "to") or now
        since = _when(params.get("from", ""), "from") or until - DEFAULT_RANGE
        cursor = _when(params.get("until", ""), "until")
    except TeleportError as exc:
        return page.error(400, str(exc))
    if since >= until:
        return page.error(400, "from must be before to")
    upper = min(until, cursor) if cursor else until
    try:
        found = await page.auth.list_recordings(since=format_time(since), until=format_time(upper), user=user,
                                                node=node, search=search.strip(),
                                                limit=min(1000, limit + 1 + (20 if after else 0)))
    except TeleportError as exc:  # bad search text, or a backend that cannot search: said on the page
        if not search.strip() or type(exc) is not TeleportError:
            raise
        return page.render("recordings.html", status=400, nav="recordings", rows=[], user_filter=user,
                           node_filter=node, search=search, search_error=str(exc), since=_local(since),
                           until=_local(until), newest="", older="", presets=[])
    if after:  # the cursor's end is in milliseconds: skip what the previous page showed
        ids = [s["sid"] for s in found]
        if after in ids:
            found = found[ids.index(after) + 1:]
    shown = found[:limit]
    base = {"user": user, "node": node, "search": search.strip(), "from": params.get("from", ""),
            "to": params.get("to", ""),
            "limit": str(limit) if limit != PAGE_SIZE else ""}

    def link(**extra: str) -> str:
        query = {k: v for k, v in {**base, **extra}.items() if v}
        return page.url("recordings") + ("?" + urllib.parse.urlencode(query) if query else "")

    older = ""
    if len(found) > limit:
        last = shown[-1]
        # the next page ends at the last row's end (+1 ms: the API's times are milliseconds)
        end = parse_time(last["end"]) + dt.timedelta(milliseconds=1)
        older = link(until=format_time(end), after=last["sid"])
    rows = [{**s, "start_text": time_text(s["start"]), "duration_text": duration_text(s["duration_seconds"]),
             "state_text": STATES.get(s["recording"], s["recording"]),
             "play": page.url(f"session/{urllib.parse.quote(s['sid'], safe='')}"),
             "download": page.url(f"session/{urllib.parse.quote(s['sid'], safe='')}/download"),
             "match": marked(str(s.get("snippet", "")), s.get("highlights") or [])} for s in shown]
    return page.render(
        "recordings.html", nav="recordings", rows=rows, user_filter=user, node_filter=node, search=search.strip(),
        search_error="",
        # "now" as the form's To is the next minute: the form has minutes, and a session that ended
        # this minute must stay listed when the form is sent again (a text search, say)
        since=_local(since), until=_local(until if params.get("to") else until + dt.timedelta(minutes=1)),
        newest=link() if cursor else "", older=older,
        presets=[(label, link(**{"from": _local(until - span), "to": params.get("to", "")}))
                 for label, span in (("Last hour", dt.timedelta(hours=1)), ("Last 24 hours", dt.timedelta(days=1)),
                                     ("Last 7 days", dt.timedelta(days=7)), ("Last 30 days", dt.timedelta(days=30)))])


def _speed(text: str) -> str:
    return text if text in SPEEDS else "1"


async def player(page: Page, store: Recordings) -> Response:
    sid = _sid(page)
    try:
        kept = await store.read(page, sid, fresh=True)
    except castsegments.NotPlayable as exc:
        return page.error(422, f"session {sid} cannot be played: {exc}")
    except NotFound:
        if await _streaming(page, sid):  # a session still running (node-sync): follow it live
            return RedirectResponse(page.url(f"session/{urllib.parse.quote(sid, safe='')}/live"), status_code=303)
        raise
    base = page.url(f"session/{urllib.parse.quote(sid, safe='')}")
    params = page.request.query_params
    start = params.get("t", "")
    try:
        start_at = float(start) if start else 0.0
    except ValueError:
        return page.error(400, f"t: expected seconds, got {start[:20]!r}")
    if not 0 <= start_at <= kept.index.duration:
        start_at = 0.0
    share = f"https://{page.proxy.public_web_addr()}{base}"
    return page.render(
        "player.html", nav="recordings", sid=sid, share=share, index_url=f"{base}/index.json",
        download=f"{base}/download", duration=duration_text(kept.index.duration), size=kept.index.size,
        segments=len(kept.index.segments), speed=_speed(params.get("speed", "")), speeds=SPEEDS,
        start_at=f"{start_at:g}", headers={WASM_HEADER: "1"})


async def index(page: Page, store: Recordings) -> Response:
    sid = _sid(page)
    kept = await store.read(page, sid, fresh=False)
    base = page.url(f"session/{urllib.parse.quote(sid, safe='')}")
    return Response(content=_json(kept.index.document(base + "/segment/{n}.json")), media_type="application/json",
                    headers=NO_STORE)


def _json(doc: Any) -> bytes:
    import json

    return json.dumps(doc, separators=(",", ":")).encode()


async def segment(page: Page, store: Recordings) -> Response:
    sid = _sid(page)
    try:
        number = int(page.request.path_params["n"])
    except ValueError:
        raise NotFound("no such segment") from None
    kept = await store.read(page, sid, fresh=False)
    try:
        body = await asyncio.to_thread(castsegments.segment, kept.path, kept.index, number)
    except castsegments.NotPlayable as exc:
        raise NotFound(str(exc)) from None
    return Response(content=body, media_type="application/json", headers=NO_STORE)


#: an offset past any recording: asking auth there returns its headers and no bytes (and is not audited)
STREAM_PROBE = 1 << 50


async def _streaming(page: Page, sid: str) -> bool:
    """Whether auth streams the recording of ``sid`` (sync recording modes) and it is not complete."""
    try:
        _data, headers = await page.auth.read_recording_stream(sid, STREAM_PROBE)
    except TeleportError:
        return False
    return headers.get("x-teleport-recording") == "streaming"


async def live(page: Page) -> Response:
    """Follow a running session: the page (``static/live.js`` reads ``stream``)."""
    sid = _sid(page)
    base = page.url(f"session/{urllib.parse.quote(sid, safe='')}")
    nonce = secrets.token_urlsafe(16)  # xterm.js creates <style> elements
    return page.render("live.html", nav="recordings", sid=sid, stream_url=f"{base}/stream", player_url=base,
                       style_nonce=nonce, headers={STYLE_NONCE_HEADER: nonce})


async def stream(page: Page) -> Response:
    """The recording of a session from ``offset`` (bytes), as auth answers it, headers included."""
    sid = _sid(page)
    text = page.request.query_params.get("offset", "0")
    if not text.isdigit() or len(text) > 15:
        return page.error(400, f"offset: expected a byte offset (0 or more), got {text[:20]!r}")
    data, headers = await page.auth.read_recording_stream(sid, int(text))
    passed = {k: v for k, v in headers.items() if k.startswith("x-teleport-")}
    return Response(content=data, media_type="application/x-asciicast", headers={**NO_STORE, **passed})


async def download(page: Page) -> Response:
    sid = _sid(page)
    folder = tempfile.mkdtemp(prefix="teleport-web-download-")
    path = Path(folder) / f"{sid}.cast"
    try:
        await page.auth.download_recording(sid, path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(path, media_type="application/x-asciicast", filename=f"{sid}.cast",
                        content_disposition_type="attachment", headers=NO_STORE,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


def routes(web: Web) -> list[BaseRoute]:
    store = Recordings()

    def bound(handler: Callable[[Page, Recordings], Awaitable[Response]]) -> Callable[[Page], Awaitable[Response]]:
        async def run(page: Page) -> Response:
            return await handler(page, store)

        run.__name__ = handler.__name__
        return run

    return [web.page("/web/cluster/{cluster}/recordings", listing),
            web.page("/web/cluster/{cluster}/session/{sid}", bound(player)),
            web.page("/web/cluster/{cluster}/session/{sid}/index.json", bound(index)),
            web.page("/web/cluster/{cluster}/session/{sid}/segment/{n:int}.json", bound(segment)),
            web.page("/web/cluster/{cluster}/session/{sid}/download", download),
            web.page("/web/cluster/{cluster}/session/{sid}/live", live),
            web.page("/web/cluster/{cluster}/session/{sid}/stream", stream)]
