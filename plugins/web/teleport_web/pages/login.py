"""``/web/login`` (password + OTP as the cluster's ``second_factor`` says), ``/web/logout``, and
``/`` and ``/web`` (to the resources page, or the login page without a session)."""

from __future__ import annotations

import urllib.parse

from starlette.responses import Response
from starlette.routing import BaseRoute

from teleport_core.errors import AccessDenied, AuthenticationFailed, TeleportError
from teleport_core.webui import SESSION_COOKIE, TooManyAttempts
from teleport_web.framework import (
    FLASH_COOKIE,
    LOGIN_CSRF_COOKIE,
    Page,
    Web,
    cookie_header,
    new_login_csrf,
    same_token,
    session_cookie_value,
)

LOGGED_OUT = "you have logged out"
NOTICES = (LOGGED_OUT, "log in to continue")  # shown as notices, not errors


def safe_next(target: str, default: str) -> str:
    """Where to go after the login: a path of this UI only (never another site: ``//host``, ``\\``)."""
    if target.startswith("/web/") and not target.startswith("//") and "\\" not in target and "\n" not in target:
        return target
    return default


async def login_form(page: Page, *, message: str = "", failed: bool = False, status: int = 200,
                     username: str = "", next_url: str = "") -> Response:
    token = new_login_csrf()
    response = page.render("login.html", status=status, message=message, failed=failed, username=username,
                           login_csrf=token, next=next_url, second_factor=page.proxy.second_factor)
    response.headers.append("set-cookie", cookie_header(LOGIN_CSRF_COOKIE, token, max_age=3600))
    return response


async def show_login(page: Page) -> Response:
    """The form; with a live session, straight on. A reason the last session ended is shown once."""
    request = page.request
    next_url = safe_next(request.query_params.get("next", ""), page.url("resources"))
    if request.cookies.get(SESSION_COOKIE):
        try:
            await page.web.session_of(request)
            return page.redirect(next_url)
        except TeleportError:
            pass
    flash = urllib.parse.unquote(request.cookies.get(FLASH_COOKIE, ""))[:300]
    response = await login_form(page, message=flash, failed=bool(flash) and flash not in NOTICES,
                                next_url=next_url)
    if flash:
        response.headers.append("set-cookie", cookie_header(FLASH_COOKIE, "", max_age=0))
    return response


async def do_login(page: Page) -> Response:
    """Check the login form's CSRF pair, then log in through the proxy (auth checks and audits)."""
    form = page.form
    user = form.get("user", "").strip()
    next_url = safe_next(form.get("next", ""), page.url("resources"))
    if not same_token(form.get("login_csrf", ""), page.request.cookies.get(LOGIN_CSRF_COOKIE, "")):
        reason = "the login form has expired or was not sent by this site: reload the page and try again"
        await page.proxy.audit_denial(user, reason, page.remote, path="/web/login", client="web")
        return await login_form(page, message=reason, failed=True, status=403, username=user, next_url=next_url)
    if not user or not form.get("password"):
        return await login_form(page, message="enter your username and password", failed=True, status=400,
                                username=user, next_url=next_url)
    try:
        session = await page.proxy.login(user, form.get("password", ""), form.get("otp", "").strip(), page.client_ip)
    except TooManyAttempts as exc:
        response = await login_form(page, message=str(exc), failed=True, status=429, username=user,
                                    next_url=next_url)
        response.headers["Retry-After"] = exc.retry_after
        return response
    except (AuthenticationFailed, AccessDenied) as exc:
        status = 401 if isinstance(exc, AuthenticationFailed) else 403
        return await login_form(page, message=str(exc), failed=True, status=status, username=user,
                                next_url=next_url)
    response = page.redirect(next_url)
    response.headers.append("set-cookie", cookie_header(SESSION_COOKIE, session_cookie_value(session)))
    response.headers.append("set-cookie", cookie_header(LOGIN_CSRF_COOKIE, "", max_age=0))
    return response


async def logout(page: Page) -> Response:
    """End the session at auth (every proxy stops serving it), clear the cookie, back to the login page."""
    assert page.session is not None
    await page.proxy.logout(page.session)
    response = page.redirect("/web/login")
    response.headers.append("set-cookie", cookie_header(SESSION_COOKIE, "", max_age=0))
    response.headers.append("set-cookie", cookie_header(FLASH_COOKIE, urllib.parse.quote(LOGGED_OUT),
                                                        max_age=60))
    return response


async def start(page: Page) -> Response:
    """``/`` and ``/web``: the resources page (which sends a browser without a session to log in)."""
    return page.redirect(page.url("resources"))


def routes(web: Web) -> list[BaseRoute]:
    return [
        web.page("/", start, public=True),
        web.page("/web", start, public=True),
        web.page("/web/", start, public=True),
        web.page("/web/login", show_login, public=True),
        web.page("/web/login", do_login, methods=("POST",), public=True),
        web.page("/web/logout", logout, methods=("POST",)),
    ]
