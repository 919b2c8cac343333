"""``/web/cluster/{cluster}/sessions``: the sessions running now (started, not ended: auth's
session records, ``GET /v1/sessions/active``) that the user may see: their own, and those their
roles' ``list`` rules on ``session`` allow. Refreshed every few seconds (no script). Joining a
running session is issue 16's (session trackers, moderated sessions): the page says so, and shows
no join button until it exists.
"""

from __future__ import annotations

import datetime as dt

from starlette.responses import Response
from starlette.routing import BaseRoute

from teleport_web.framework import Page, Web

REFRESH_SECONDS = 10


def _age(start: dt.datetime, now: dt.datetime) -> str:
    seconds = max(0, int((now - start).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


async def sessions(page: Page) -> Response:
    found = await page.auth.list_active_sessions()
    now = dt.datetime.now(dt.UTC)
    rows = []
    for s in found:
        start = dt.datetime.fromisoformat(str(s["start"]).replace("Z", "+00:00"))
        rows.append({"sid": s["sid"], "user": s["user"], "participants": s.get("participants", []),
                     "node": s.get("server_hostname") or s.get("server_id", ""), "login": s.get("login", ""),
                     "kind": "interactive" if s.get("interactive") else (s.get("command") or "command"),
                     "started": start.strftime("%Y-%m-%d %H:%M:%S UTC"), "started_iso": s["start"],
                     "age": _age(start, now)})
    return page.render("sessions.html", nav="sessions", rows=rows, refresh=REFRESH_SECONDS)


def routes(web: Web) -> list[BaseRoute]:
    return [web.page("/web/cluster/{cluster}/sessions", sessions)]
