"""``/web/invite/{token}`` and ``/web/reset/{token}``: a new user (``tctl users add``, or the
admin page's *Create invite*) or a reset one (``tctl users reset``) sets a password and, when
the cluster's ``second_factor`` is ``otp``, enrolls an authenticator app from a QR code (an SVG
drawn on the server by segno) or the secret typed in.

These pages come before any login: the form carries a double-submit CSRF token (a random value
in the ``__Host-invite_csrf`` cookie, Path=/, and in the form) that is only good for the token
page it was issued on (the cookie holds ``<token hash>.<random>``). Auth checks the password
policy and the code, spends the token once and audits a refusal (``user.password_change``
T1005W); the page checks first that the two passwords match (in the browser too) and audits that
refusal itself (``auth`` failure T3007W: a proxy may not write ``user.password_change``).
"""

from __future__ import annotations

import hashlib
import secrets
import urllib.parse

from starlette.responses import Response
from starlette.routing import BaseRoute

from teleport_core.errors import AccessDenied, AuthenticationFailed, TeleportError
from teleport_web.framework import Page, Web, cookie_header, same_token
from teleport_web.pages.admin import when

INVITE_CSRF_COOKIE = "__Host-invite_csrf"
#: the password policy auth enforces (teleport_auth.users.check_password_policy; Teleport's)
MIN_PASSWORD = 12
MAX_PASSWORD = 128
POLICY = f"{MIN_PASSWORD} to {MAX_PASSWORD} characters; a long passphrase is best."
TITLES = {"invite": "Welcome, {user}", "reset": "Reset the password of {user}"}


def _binding(token: str) -> str:
    """The part of the CSRF cookie that ties it to one token page (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def otp_secret(uri: str) -> str:
    """The base32 secret of an ``otpauth://`` URI, in groups of four for typing."""
    secret = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).get("secret", [""])[0]
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


def qr_svg(uri: str) -> str:
    """The QR code of ``uri`` as inline SVG markup (no script, no style attribute)."""
    import segno

    return str(segno.make(uri, error="m").svg_inline(scale=5, border=2, dark="#000", light="#fff",
                                                     title="QR code of the authenticator app enrollment"))


async def _form(page: Page, token: str, info: dict[str, object], *, message: str = "",
                status: int = 200) -> Response:
    csrf = secrets.token_urlsafe(32)
    uri = str(info.get("otp_uri") or "")
    kind = "reset" if info.get("kind") == "reset" else "invite"
    user = str(info.get("user", ""))
    response = page.render(
        "invite.html", status=status, kind=kind, title=TITLES[kind].format(user=user), account=user,
        token=token, form_csrf=csrf, message=message, policy=POLICY, min_password=MIN_PASSWORD,
        max_password=MAX_PASSWORD, otp_uri=uri, secret=otp_secret(uri) if uri else "",
        qr=qr_svg(uri) if uri else "", expires=str(info.get("expires", "")), expires_text=when(info.get("expires")))
    response.headers.append("set-cookie", cookie_header(INVITE_CSRF_COOKIE, f"{_binding(token)}.{csrf}",
                                                        max_age=3600))
    return response


async def show(page: Page) -> Response:
    """The form: who, the QR code and secret, the policy."""
    token = page.request.path_params["token"]
    info = await page.proxy.user_token(token)  # unknown, spent, expired: AccessDenied -> a 403 page
    return await _form(page, token, info)


async def _refuse(page: Page, token: str, info: dict[str, object], reason: str, status: int) -> Response:
    """A refusal decided here (before auth sees the password): audited as the proxy's refusals
    are (``auth`` failure, T3007W; a proxy may not emit ``user.password_change``)."""
    await page.proxy.audit_denial(str(info.get("user", "")), reason, page.remote, path=page.request.url.path,
                                  client="web", token_kind=str(info.get("kind", "")))
    return await _form(page, token, info, message=reason, status=status)


async def complete(page: Page) -> Response:
    """Check the form (CSRF pair, passwords equal, length), then let auth set the password."""
    token = page.request.path_params["token"]
    form = page.form
    info = await page.proxy.user_token(token)
    cookie = page.request.cookies.get(INVITE_CSRF_COOKIE, "")
    binding, _, expected = cookie.partition(".")
    if binding != _binding(token) or not same_token(form.get("form_csrf", ""), expected):
        reason = "the form has expired or was not sent by this site: reload the page and try again"
        await page.proxy.audit_denial(str(info.get("user", "")), reason, page.remote, path=page.request.url.path,
                                      client="web")
        return await _form(page, token, info, message=reason, status=403)
    password, again = form.get("password", ""), form.get("password_confirm", "")
    if password != again:
        return await _refuse(page, token, info, "the two passwords do not match", 400)
    try:
        user = await page.proxy.complete_user_token(token, password, form.get("otp", "").strip())
    except (AuthenticationFailed, AccessDenied) as exc:  # a wrong code, a token spent meanwhile: audited at auth
        return await _form(page, token, info, message=str(exc), status=401 if isinstance(exc, AuthenticationFailed)
                           else 403)
    except TeleportError as exc:  # the policy, a missing code: audited at auth
        return await _form(page, token, info, message=str(exc), status=400)
    response = page.render("invite_done.html", account=user, kind=info.get("kind", "invite"))
    response.headers.append("set-cookie", cookie_header(INVITE_CSRF_COOKIE, "", max_age=0))
    return response


def routes(web: Web) -> list[BaseRoute]:
    return [
        web.page("/web/invite/{token}", show, public=True),
        web.page("/web/invite/{token}", complete, methods=("POST",), public=True),
        web.page("/web/reset/{token}", show, public=True),
        web.page("/web/reset/{token}", complete, methods=("POST",), public=True),
    ]
