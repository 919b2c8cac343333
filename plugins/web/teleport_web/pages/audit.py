"""``/web/cluster/{cluster}/audit``: the audit log, searched at auth as the user (``list`` on
``event``, each event checked against ``where:`` rules there; ``read`` on ``event`` checked
here), paged with the search's cursor, each event expandable to its JSON; and
``/web/cluster/{cluster}/audit/export``: the same filter as CSV or JSON lines, every page, streamed.

Query (page and export): ``range`` (``1h``, ``24h`` (default), ``7d``, ``30d`` or ``custom``),
``at`` (the end of a preset range, pinned by the paging links; default now), ``from``/``to``
(``custom``: RFC 3339 or ``YYYY-MM-DDTHH:MM[:SS]``, UTC), ``type`` (event types, comma or space
separated; repeatable), ``user``, ``node`` (hostname or UUID), ``sid`` (session ID). Page only:
``cursor`` (the search's ``next_cursor``), ``limit`` (events a page, default 50, at most 500),
``page`` (the page's number, shown). Export only: ``format`` (``csv`` or ``jsonl``).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import attrs
from starlette.datastructures import QueryParams
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute

from teleport_core.errors import TeleportError
from teleport_core.logs import get_logger
from teleport_core.state.audit import CODES, format_time, parse_time
from teleport_web.framework import Page, Web, query_int

log = get_logger("web")

PRESETS: Mapping[str, tuple[str, dt.timedelta]] = {
    "1h": ("Last hour", dt.timedelta(hours=1)),
    "24h": ("Last 24 hours", dt.timedelta(days=1)),
    "7d": ("Last 7 days", dt.timedelta(days=7)),
    "30d": ("Last 30 days", dt.timedelta(days=30)),
}
DEFAULT_RANGE = "24h"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: auth calls to fill one page (a ``where:`` rule or the node filter can leave a search page short)
MAX_CALLS = 20
#: events an export asks auth for at a time
EXPORT_BATCH = 1000
MAX_TYPES = 64
MAX_FIELD = 253  # a user, node or session ID: auth's name limit
MAX_CURSOR = 4096
EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: the CSV's columns; ``json`` holds the whole event
CSV_COLUMNS = ("time", "event", "code", "user", "login", "server_hostname", "sid", "addr.remote", "uid", "json")
#: a cell a spreadsheet would run as a formula starts with one of these: such a cell gets a leading '
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
FORMATS = {"csv": ("text/csv; charset=utf-8", "csv"), "jsonl": ("application/x-ndjson; charset=utf-8", "jsonl")}
LOCAL_TIME = "%Y-%m-%dT%H:%M:%S"  # what <input type="datetime-local" step="1"> shows


@attrs.frozen
class Filter:
    """What to show: a time range ``[since, until)`` and the filters, as parsed from a query."""

    range: str  # a PRESETS key or "custom"
    since: dt.datetime
    until: dt.datetime
    types: tuple[str, ...] = ()
    user: str = ""
    node: str = ""
    sid: str = ""
    pinned: bool = False  # a preset's end came from ``at`` (a paging link), not from now

    def search(self) -> dict[str, Any]:
        """The auth search's parameters (without ``limit``/``cursor``)."""
        return {"since": format_time(self.since), "until": format_time(self.until), "type": list(self.types),
                "user": self.user, "node": self.node, "sid": self.sid}

    def params(self, **changes: str) -> dict[str, str]:
        """This filter as a query (a preset keeps its name, its end pinned with ``at``)."""
        query = {"range": self.range, "type": ",".join(self.types), "user": self.user, "node": self.node,
                 "sid": self.sid}
        if self.range == "custom":
            query.update({"from": format_time(self.since), "to": format_time(self.until)})
        else:
            query["at"] = format_time(self.until)
        query.update(changes)
        return {k: v for k, v in query.items() if v}

    @property
    def filtered(self) -> bool:
        return bool(self.types or self.user or self.node or self.sid)


def _time(text: str, name: str) -> dt.datetime:
    try:
        return parse_time(text.strip())
    except ValueError:
        raise TeleportError(f"{name}: expected a time like 2026-01-31T13:45 or 2026-01-31T13:45:00Z (UTC), "
                            f"got {text[:40]!r}") from None


def _name(params: QueryParams, name: str) -> str:
    value = params.get(name, "").strip()
    if len(value) > MAX_FIELD or CONTROL.search(value):
        raise TeleportError(f"{name}: expected at most {MAX_FIELD} characters without control characters")
    return value


def parse_filter(params: QueryParams, now: dt.datetime) -> Filter:
    """The filter a query asks for; ``TeleportError`` (a 400 page) naming the wrong parameter."""
    chosen = params.get("range", "")
    if not chosen:
        chosen = "custom" if params.get("from") or params.get("to") else DEFAULT_RANGE
    pinned = False
    if chosen in PRESETS:
        until = now
        if params.get("at"):
            until, pinned = _time(params["at"], "at"), True
        since = until - PRESETS[chosen][1]
    elif chosen == "custom":
        until = _time(params["to"], "to") if params.get("to") else now
        since = _time(params["from"], "from") if params.get("from") else until - PRESETS[DEFAULT_RANGE][1]
    else:
        raise TeleportError(f"range: expected one of {', '.join(PRESETS)} or custom, got {chosen[:20]!r}")
    if since >= until:
        raise TeleportError("from: the range's start must be before its end")
    types: list[str] = []
    for value in params.getlist("type"):
        for word in re.split(r"[\s,]+", value.strip()):
            if not word:
                continue
            if not EVENT_TYPE.match(word):
                raise TeleportError(f"type: {word[:40]!r} is not an event type (like user.login or session.start)")
            if word not in types:
                types.append(word)
    if len(types) > MAX_TYPES:
        raise TeleportError(f"type: at most {MAX_TYPES} event types")
    return Filter(chosen, since, until, tuple(types), _name(params, "user"), _name(params, "node"),
                  _name(params, "sid"), pinned)


def summary(event: Mapping[str, Any]) -> str:
    """A few words on what happened, beside the type (the JSON has everything)."""
    parts = []
    for key, label in (("login", "login"), ("addr.remote", "from"), ("name", "name"), ("command", "command"),
                       ("error", "error")):
        value = event.get(key)
        if isinstance(value, str) and value:
            parts.append(f"{label} {value[:120]}")
    return ", ".join(parts)


@attrs.frozen
class Row:
    event: Mapping[str, Any]
    time: str
    summary: str
    json: str
    user_url: str
    node_url: str
    sid_url: str


def _link(base: str, query: Mapping[str, str]) -> str:
    return base + ("?" + urllib.parse.urlencode(query) if query else "")


async def _allowed(page: Page) -> Response | None:
    """A 403 page (audited) when the user's roles do not allow ``read`` on ``event``; None otherwise.
    (``list`` and each event's ``where:`` are decided at auth, which audits its own refusals.)"""
    assert page.session is not None
    if page.proxy.may(page.session, "read", "event"):
        return None
    return await page.deny(f"access denied to {page.user}: your roles do not allow reading audit events "
                           "(read on event)")


async def audit(page: Page) -> Response:
    refused = await _allowed(page)
    if refused is not None:
        return refused
    params = page.request.query_params
    try:
        wanted = parse_filter(params, dt.datetime.now(dt.UTC))
        limit = query_int(params, "limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        number = query_int(params, "page", 1, 1, 10**9)
        cursor = params.get("cursor", "")
        if len(cursor) > MAX_CURSOR or CONTROL.search(cursor):
            raise TeleportError("cursor: not a cursor of this audit log: start from the first page")
    except TeleportError as exc:
        return page.error(400, str(exc))
    events: list[dict[str, Any]] = []
    for _ in range(MAX_CALLS):  # a page of the search may hold fewer events than asked (where:, node)
        reply = await page.auth.search_events(**wanted.search(), limit=limit, cursor=cursor)
        events.extend(reply.get("events", []))
        cursor = str(reply.get("next_cursor", ""))
        if not cursor or len(events) >= limit:
            break
    base = page.url("audit")
    kept_limit = {"limit": str(limit)} if limit != PAGE_SIZE else {}
    first = wanted.params(**kept_limit)

    @functools.cache  # a page's events share few users, nodes and sessions: each link is built once
    def narrowing(name: str, value: str) -> str:
        return _link(base, wanted.params(**{name: value}, **kept_limit))

    def narrowed(name: str, value: Any) -> str:
        return narrowing(name, str(value)) if value else ""  # a foreign event's value may be any JSON

    rows = []
    for event in events:
        rows.append(Row(
            event, str(event.get("time", "")).replace("T", " ").replace("Z", ""), summary(event),
            json.dumps(event, indent=2, ensure_ascii=False),
            narrowed("user", event.get("user", "")), narrowed("node", event.get("server_hostname", "")),
            narrowed("sid", event.get("sid", ""))))
    exports = {name: _link(page.url("audit/export"), wanted.params(format=name)) for name in FORMATS}
    return page.render(
        "audit.html", nav="audit", rows=rows, filter=wanted, presets=PRESETS, limit=limit, number=number,
        from_value=wanted.since.strftime(LOCAL_TIME), to_value=wanted.until.strftime(LOCAL_TIME),
        known_types=sorted({event for event, _ in CODES}), exports=exports,
        first_url=_link(base, first) if number > 1 else "",
        next_url=_link(base, {**first, "cursor": cursor, "page": str(number + 1)}) if cursor else "")


def csv_cells(event: Mapping[str, Any]) -> list[str]:
    """The CSV cells of ``event`` (:data:`CSV_COLUMNS`); a cell that would start a spreadsheet
    formula gets a leading ``'`` (OWASP's advice), the ``json`` cell is the event as it is."""
    cells = []
    for column in CSV_COLUMNS:
        if column == "json":
            cell = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        else:
            value = event.get(column, "")
            cell = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            if cell.startswith(FORMULA_START):
                cell = "'" + cell
        cells.append(cell)
    return cells


def csv_text(rows: Iterable[Sequence[str]]) -> str:
    """CSV lines (RFC 4180: CRLF, quoted where needed) of ``rows``."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


def csv_line(event: Mapping[str, Any]) -> str:
    """One CSV line of ``event``."""
    return csv_text([csv_cells(event)])


def csv_events(events: Iterable[Mapping[str, Any]]) -> str:
    return csv_text(csv_cells(e) for e in events)


def jsonl_text(events: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in events)


async def export(page: Page) -> Response:
    """Every event of the filter (all pages, oldest first), streamed as CSV or JSON lines. The
    first page is fetched before answering, so a refusal or a bad filter is an error page; a
    failure later ends the download unfinished (the browser marks it failed)."""
    refused = await _allowed(page)
    if refused is not None:
        return refused
    params = page.request.query_params
    try:
        wanted = parse_filter(params, dt.datetime.now(dt.UTC))
        kind = params.get("format", "")
        if kind not in FORMATS:
            raise TeleportError(f"format: expected csv or jsonl, got {kind[:20]!r}")
    except TeleportError as exc:
        return page.error(400, str(exc))
    auth = page.auth
    first = await auth.search_events(**wanted.search(), limit=EXPORT_BATCH)
    text = csv_events if kind == "csv" else jsonl_text

    async def lines() -> AsyncIterator[bytes]:
        reply, count = first, 0
        if kind == "csv":
            yield csv_text([CSV_COLUMNS]).encode()
        while True:
            chunk = text(reply.get("events", []))
            count += len(reply.get("events", []))
            if chunk:
                yield chunk.encode()
            cursor = str(reply.get("next_cursor", ""))
            if not cursor:
                break
            try:
                reply = await auth.search_events(**wanted.search(), limit=EXPORT_BATCH, cursor=cursor)
            except TeleportError as exc:
                log.warning("audit export ended early", user=page.user, events=count, error=str(exc))
                raise
        log.info("audit exported", user=page.user, events=count, format=kind)

    stamp = "%Y%m%dT%H%M%SZ"
    cluster = re.sub(r"[^A-Za-z0-9._-]", "_", page.cluster)
    name = f"audit-{cluster}-{wanted.since.strftime(stamp)}-{wanted.until.strftime(stamp)}.{FORMATS[kind][1]}"
    return StreamingResponse(lines(), media_type=FORMATS[kind][0], headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff"})


def routes(web: Web) -> list[BaseRoute]:
    return [web.page("/web/cluster/{cluster}/audit", audit),
            web.page("/web/cluster/{cluster}/audit/export", export)]
