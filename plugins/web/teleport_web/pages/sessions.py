"""``/web/cluster/{cluster}/sessions``: the sessions running now (their ``session_tracker`` records at
auth, ``GET /v1/session_trackers``) that the user may see: their own, those their roles'
``join_sessions`` let them join, and every one a ``list`` rule on ``session_tracker`` allows (the
preset ``auditor`` role). Refreshed every few seconds (no script).
"""

from __future__ import annotations

import datetime as dt
import urllib.parse

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
    found = await page.auth.list_session_trackers()
    now = dt.datetime.now(dt.UTC)
    rows = []
    for tracker in found:
        s = tracker["spec"]
        start = dt.datetime.fromisoformat(str(s["created"]).replace("Z", "+00:00"))
        users = list(dict.fromkeys(str(p["user"]) for p in s.get("participants") or []))
        owner = str(s.get("host_user", ""))
        rows.append({"sid": s["session_id"], "user": owner, "participants": [owner, *(u for u in users if u != owner)],
                     "node": s.get("hostname") or s.get("server_id", ""), "login": s.get("login", ""),
                     "kind": "interactive" if s.get("interactive") else (s.get("command") or "command"),
                     "state": s.get("state", ""), "web": s.get("client") == "web",
                     "started": start.strftime("%Y-%m-%d %H:%M:%S UTC"), "started_iso": s["created"],
                     "age": _age(start, now),
                     # joining (console/session/<sid>, pages/console.py): interactive sessions only
                     "join": (f"/web/cluster/{urllib.parse.quote(page.cluster, safe='')}/console/session/"
                              f"{urllib.parse.quote(str(s['session_id']), safe='')}")
                     if s.get("interactive") else ""})
    return page.render("sessions.html", nav="sessions", rows=rows, refresh=REFRESH_SECONDS)


def routes(web: Web) -> list[BaseRoute]:
    return [web.page("/web/cluster/{cluster}/sessions", sessions)]
