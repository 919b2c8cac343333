"""The admin views: ``users`` (and *Create invite*), ``roles`` (YAML), ``tokens`` (join tokens,
masked) and ``nodes`` under ``/web/cluster/{cluster}/``.

Every view calls the auth API as the logged-in user (``page.auth``): auth decides with the user's
roles (``list`` on ``user``, ``role``, ``token``, ``node``; ``create`` on ``user`` for an invite)
and audits a refusal, which the page shows as a 403 with auth's reason. The navigation shows these
links only to users whose roles allow ``list`` (``Web.NAV``); the check that counts is auth's.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import yaml
from starlette.responses import Response
from starlette.routing import BaseRoute

from teleport_core.errors import AccessDenied, AuthenticationFailed, TeleportError
from teleport_web.framework import Page, Web

#: a join token shows this many of its last characters; the rest is masked
TOKEN_SHOWN = 4
NAME = re.compile(r"^[A-Za-z0-9@._+-]{1,255}$")


def when(value: Any) -> str:
    """An ISO time as people read it (UTC, to the minute); "" when there is none."""
    if not value:
        return ""
    try:
        return dt.datetime.fromisoformat(str(value)).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return str(value)


def mask(token: str) -> str:
    """A join token as the page shows it: never its value (auth masks static ones already)."""
    if not token or set(token) == {"*"} or len(token) <= TOKEN_SHOWN * 2:
        return "••••••"
    return "••••••" + token[-TOKEN_SHOWN:]


def _names(text: str, what: str) -> list[str]:
    names = [n.strip() for n in re.split(r"[,\s]+", text) if n.strip()]
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        raise TeleportError(f"{what}: {bad[0][:40]!r} is not a valid name")
    return names


async def users(page: Page, *, created: dict[str, Any] | None = None, message: str = "",
                form: dict[str, str] | None = None, status: int = 200) -> Response:
    assert page.session is not None
    found = await page.auth.get_users()
    rows = [{"name": u["metadata"]["name"], "roles": u["spec"].get("roles", []),
             "logins": u["spec"].get("traits", {}).get("logins", []),
             "created": when(u["spec"].get("created_by", {}).get("time")),
             "created_by": u["spec"].get("created_by", {}).get("user", {}).get("name", ""),
             "locked": u["spec"].get("status", {}).get("is_locked", False)}
            for u in sorted(found, key=lambda u: u["metadata"]["name"])]
    return page.render("admin_users.html", status=status, nav="users", rows=rows, created=created,
                       message=message, form=form or {},
                       may_create=page.proxy.may(page.session, "create", "user"))


async def show_users(page: Page) -> Response:
    return await users(page)


async def create_invite(page: Page) -> Response:
    """*Create invite*: a new user (``create`` on ``user`` at auth) and its invite link."""
    form = page.form
    name = form.get("name", "").strip()
    try:
        if not name or not NAME.match(name):
            raise TeleportError("name: a user name is 1 to 255 letters, digits and @ . _ + -")
        roles = _names(form.get("roles", ""), "roles")
        if not roles:
            raise TeleportError("roles: give at least one role")
        logins = _names(form.get("logins", ""), "logins")
        answer = await page.auth.create_user(name, roles, {"logins": logins} if logins else {})
    except (AccessDenied, AuthenticationFailed):
        raise  # auth refused and audited it: the 403 page (or the login page)
    except TeleportError as exc:
        return await users(page, message=str(exc), form=dict(form), status=400)
    invite = answer["invite"]
    return await users(page, created={"user": name, "url": invite["url"], "expires": when(invite["expires"]),
                                      "ttl": invite.get("ttl", "")})


async def roles(page: Page) -> Response:
    found = await page.auth.get_roles()
    shown = [{"name": r["metadata"]["name"], "description": r["metadata"].get("description", ""),
              "yaml": yaml.safe_dump(r, sort_keys=False, default_flow_style=False)}
             for r in sorted(found, key=lambda r: r["metadata"]["name"])]
    return page.render("admin_roles.html", nav="roles", roles=shown)


async def tokens(page: Page) -> Response:
    found = await page.auth.get_tokens()
    rows = [{"token": mask(str(t.get("token", ""))), "roles": t.get("roles", []),
             "expires": when(t.get("expires")) or "never", "static": t.get("static", False)} for t in found]
    return page.render("admin_tokens.html", nav="tokens", rows=rows)


async def nodes(page: Page) -> Response:
    found = await page.auth.get_nodes()
    rows = [{"nodename": n.get("nodename", ""), "uuid": n.get("uuid", ""),
             "addr": "tunnel" if n.get("tunnel") else n.get("addr", ""),
             "labels": sorted(n.get("labels", {}).items())}
            for n in sorted(found, key=lambda n: (n.get("nodename", ""), n.get("uuid", "")))]
    return page.render("admin_nodes.html", nav="nodes", rows=rows)


def routes(web: Web) -> list[BaseRoute]:
    return [
        web.page("/web/cluster/{cluster}/users", show_users),
        web.page("/web/cluster/{cluster}/users/new", create_invite, methods=("POST",)),
        web.page("/web/cluster/{cluster}/roles", roles),
        web.page("/web/cluster/{cluster}/tokens", tokens),
        web.page("/web/cluster/{cluster}/nodes", nodes),
    ]
