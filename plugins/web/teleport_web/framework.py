"""What every page is built on (docs/web.md is the guide): :class:`Web` (route registration,
templates, static files) and :class:`Page` (one request: the web session, the user's auth client,
CSRF, rendering, audit).

A page module in :mod:`teleport_web.pages` defines ``routes(web) -> list[BaseRoute]`` and
registers its handlers with :meth:`Web.page` (HTTP) or :meth:`Web.websocket`; a handler takes a
:class:`Page` and returns a Starlette ``Response``. :meth:`Web.page` does, before the handler:

- the session: the ``__Host-session`` cookie names a live web session of its user (auth checks
  expiry, ``web_idle_timeout``, locks, deletion), else a GET is redirected to ``/web/login``
  (with the reason shown there) and anything else answers 401;
- ``{cluster}`` in the path must be this cluster (404 otherwise);
- CSRF: every method but GET/HEAD must carry the session's token, in the form field
  ``csrf_token`` or the ``X-CSRF-Token`` header (403, audited, otherwise);
- ``Cache-Control: no-store`` on every answer of a page that needs a session.
"""

from __future__ import annotations

import functools
import hmac
import importlib
import json
import pkgutil
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import attrs
import jinja2
import markupsafe
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from teleport_core import __version__
from teleport_core.api.client import AuthClient, ConnectionProblem
from teleport_core.errors import AccessDenied, AuthenticationFailed, NotFound, TeleportError
from teleport_core.state.audit import new_event
from teleport_core.webui import SESSION_COOKIE, WebProxy, WebSession

#: one-time message for the login page (why the session ended), same cookie rules as the session's
FLASH_COOKIE = "__Host-flash"
#: the login form's double-submit CSRF cookie (there is no session yet to bind a token to)
LOGIN_CSRF_COOKIE = "__Host-login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
NO_STORE = {"Cache-Control": "no-store"}
SAFE_METHODS = frozenset({"GET", "HEAD"})
STATUS: list[tuple[type[BaseException], int]] = [
    (AuthenticationFailed, 401), (AccessDenied, 403), (NotFound, 404), (ConnectionProblem, 502),
    (TeleportError, 400),
]

Handler = Callable[["Page"], Awaitable[Response]]
SocketHandler = Callable[[WebSocket, "Page"], Awaitable[None]]


def cookie_header(name: str, value: str, *, max_age: int | None = None) -> str:
    """A ``Set-Cookie`` value under the proxy's rule: ``__Host-``, Secure, HttpOnly, SameSite=Strict, Path=/."""
    age = f"; Max-Age={max_age}" if max_age is not None else ""
    return f"{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}"


def session_cookie_value(session: WebSession) -> str:
    """The cookie names the user and the session (as Teleport's: hex of JSON), so a session ID
    only works together with its own user's name."""
    return json.dumps({"user": session.user, "sid": session.id}, separators=(",", ":")).encode().hex()


def parse_session_cookie(value: str) -> tuple[str, str] | None:
    """(user, session ID) of a cookie value; None when it is not one of ours."""
    try:
        data = json.loads(bytes.fromhex(value).decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    user, sid = data.get("user"), data.get("sid")
    if not isinstance(user, str) or not isinstance(sid, str) or not user or not sid or len(sid) > 256:
        return None
    return user, sid


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of two CSRF tokens (an empty one never matches)."""
    return bool(given) and bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the last value of a repeated field)."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise TeleportError("the form is not UTF-8") from None
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=200))


def query_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """The whole number ``params[name]`` (``default`` when absent or empty), from ``low`` to ``high``;
    anything else is a :class:`TeleportError` naming the parameter."""
    text = params.get(name, "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise TeleportError(f"{name}: expected a number, got {text[:20]!r}") from None
    if not low <= value <= high:
        raise TeleportError(f"{name}: expected {low} to {high}")
    return value


@attrs.define
class NavItem:
    label: str
    href: str
    key: str  # the ``nav`` a page passes to :meth:`Page.render` to mark itself current


@attrs.define(eq=False)
class Page:
    """One request to a page: what the handler reads and the answers it builds."""

    web: Web
    request: Request
    session: WebSession | None  # None only on public pages (login)
    form: dict[str, str] = attrs.field(factory=dict)  # the urlencoded body of a POST/PUT/DELETE

    @property
    def proxy(self) -> WebProxy:
        return self.web.proxy

    @property
    def cluster(self) -> str:
        return self.web.proxy.cluster_name

    @property
    def user(self) -> str:
        return self.session.user if self.session else ""

    @property
    def auth(self) -> AuthClient:
        """The auth API acting for the session's user (their roles decide; denials audited at auth)."""
        assert self.session is not None, "a public page has no user"
        return self.web.proxy.user_auth(self.session)

    @property
    def csrf_token(self) -> str:
        """The token every state-changing request of this session must carry (forms: :func:`csrf_input`)."""
        return self.session.csrf_token if self.session else ""

    @property
    def client_ip(self) -> str:
        return self.request.client.host if self.request.client else ""

    @property
    def remote(self) -> str:
        client = self.request.client
        return f"{client.host}:{client.port}" if client else ""

    def url(self, path: str) -> str:
        """``/web/cluster/<this cluster>/<path>``."""
        return f"/web/cluster/{urllib.parse.quote(self.cluster, safe='')}/{path.lstrip('/')}"

    def render(self, template: str, *, status: int = 200, nav: str = "", headers: Mapping[str, str] | None = None,
               **context: Any) -> HTMLResponse:
        """``template`` (under ``teleport_web/templates``, usually extending ``base.html``) with
        ``context`` plus ``page``, ``session``, ``user``, ``cluster``, ``csrf_token``, ``nav_items``
        and ``nav`` (the current item's key); answered with ``Cache-Control: no-store``."""
        items = self.web.nav_items(self) if self.session else []
        html = self.web.templates.get_template(template).render(
            page=self, session=self.session, user=self.user, cluster=self.cluster, csrf_token=self.csrf_token,
            nav_items=items, nav=nav, **context)
        return HTMLResponse(html, status_code=status, headers={**NO_STORE, **(headers or {})})

    def error(self, status: int, message: str) -> HTMLResponse:
        """The error page (``error.html``) with ``message``."""
        return self.render("error.html", status=status, message=message)

    def redirect(self, url: str, *, status: int = 303) -> RedirectResponse:
        return RedirectResponse(url, status_code=status, headers=NO_STORE)

    async def deny(self, reason: str, **fields: Any) -> HTMLResponse:
        """Refuse at the proxy: audited (``auth`` failure, T3007W) and answered 403 with ``reason``.
        (A refusal that comes from auth, an ``AccessDenied`` from :attr:`auth`, was audited there:
        just let it propagate, or show it with :meth:`error`.)"""
        await self.proxy.audit_denial(self.user, reason, self.remote, path=self.request.url.path,
                                      method=self.request.method, client="web", **fields)
        return self.error(403, reason)

    async def emit(self, event: str, outcome: str = "ok", **fields: Any) -> None:
        """Record an audit event (``user`` and the cluster filled in), through the proxy's spool."""
        fields.setdefault("user", self.user)
        fields.setdefault("addr.remote", self.remote)
        await self.proxy.emit(new_event(event, outcome, cluster_name=self.cluster, **fields))


def csrf_input(page: Page) -> markupsafe.Markup:
    """The hidden form field carrying the session's CSRF token (markup; the token escaped)."""
    return markupsafe.Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, page.csrf_token)


class Web:
    """The web UI of one proxy: its templates, static files and pages."""

    #: the navigation bar: (label, path under /web/cluster/<cluster>/, key, (verb, kind) the link needs or None)
    NAV: tuple[tuple[str, str, str, tuple[str, str] | None], ...] = (
        ("Resources", "resources", "resources", None),
        ("Active sessions", "sessions", "sessions", None),
        ("Access requests", "requests", "requests", None),
        ("Recordings", "recordings", "recordings", ("list", "session")),
        ("Audit log", "audit", "audit", ("list", "event")),
        ("Users", "users", "users", ("list", "user")),
        ("Roles", "roles", "roles", ("list", "role")),
        ("Join tokens", "tokens", "tokens", ("list", "token")),
        ("Nodes", "nodes", "nodes", ("list", "node")),
    )

    def __init__(self, proxy: WebProxy) -> None:
        self.proxy = proxy
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("teleport_web", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.templates.globals.update(static=self.static_url, csrf_input=csrf_input, version=__version__)

    @staticmethod
    def static_url(path: str) -> str:
        """The URL of a file under ``teleport_web/static`` (``static('style.css')``)."""
        return f"/web/static/{path}?v={__version__}"

    def nav_items(self, page: Page) -> list[NavItem]:
        assert page.session is not None
        return [NavItem(label, page.url(path), key) for label, path, key, needs in self.NAV
                if needs is None or self.proxy.may(page.session, *needs)]

    def routes(self) -> list[BaseRoute]:
        """Every page module's routes, then the static files."""
        import teleport_web.pages

        found: list[BaseRoute] = []
        for info in sorted(pkgutil.iter_modules(teleport_web.pages.__path__), key=lambda m: m.name):
            module = importlib.import_module(f"teleport_web.pages.{info.name}")
            make = getattr(module, "routes", None)
            if make is not None:
                found.extend(make(self))
        static = resources.files("teleport_web") / "static"
        found.append(Mount("/web/static", app=StaticFiles(directory=str(static)), name="static"))
        return found

    # -- sessions -----------------------------------------------------------------------------------

    async def session_of(self, request: Request | WebSocket) -> WebSession:
        """The live web session the request's cookie names; ``AuthenticationFailed`` (or
        ``AccessDenied`` for a locked user) with the reason otherwise."""
        value = request.cookies.get(SESSION_COOKIE, "")
        if not value:
            raise AuthenticationFailed("log in to continue")
        parsed = parse_session_cookie(value)
        if parsed is None:
            client = request.client
            await self.proxy.audit_denial("", "web session cookie is malformed", f"{client.host}:{client.port}"
                                          if client else "", path=request.url.path, client="web")
            raise AuthenticationFailed("your session has ended: log in again")
        user, sid = parsed
        return await self.proxy.web_session(sid, user)

    def to_login(self, request: Request, reason: str) -> Response:
        """Back to the login page (GET: with ``next``; a form's POST from a browser: without; the
        reason shown once there); other requests (``fetch``): 401 JSON."""
        clear = cookie_header(SESSION_COOKIE, "", max_age=0)
        if request.method not in SAFE_METHODS and "text/html" in request.headers.get("accept", ""):
            response: Response = RedirectResponse("/web/login", status_code=303, headers=NO_STORE)
        elif request.method not in SAFE_METHODS:
            response = JSONResponse({"error": reason}, status_code=401, headers=NO_STORE)
        else:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            response = RedirectResponse("/web/login?" + urllib.parse.urlencode({"next": target}), status_code=303,
                                        headers=NO_STORE)
        response.headers.append("set-cookie", clear)
        response.headers.append("set-cookie", cookie_header(FLASH_COOKIE, urllib.parse.quote(reason[:300]),
                                                            max_age=60))
        return response

    # -- registration -------------------------------------------------------------------------------

    def page(self, path: str, handler: Handler, *, methods: tuple[str, ...] = ("GET",), public: bool = False,
             name: str | None = None) -> Route:
        """A route serving ``handler`` at ``path`` (Starlette syntax, ``{cluster}`` checked): with a
        session and CSRF check unless ``public`` (a public page gets ``page.session`` = None)."""

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            cluster = request.path_params.get("cluster")
            session: WebSession | None = None
            if not public:
                try:
                    session = await self.session_of(request)
                except (AuthenticationFailed, AccessDenied, NotFound) as exc:
                    return self.to_login(request, str(exc))
                except TeleportError as exc:
                    return self._error(request, None, exc)
            page = Page(self, request, session)
            if cluster is not None and cluster != self.proxy.cluster_name:
                return page.error(404, f"cluster {cluster!r} is not found (this proxy serves "
                                       f"{self.proxy.cluster_name})")
            if request.method not in SAFE_METHODS:
                try:
                    if "application/x-www-form-urlencoded" in request.headers.get("content-type", ""):
                        page.form = parse_form(await request.body())
                except TeleportError as exc:
                    return page.error(400, str(exc))
                if not public:
                    given = request.headers.get(CSRF_HEADER, "") or page.form.get(CSRF_FIELD, "")
                    if not same_token(given, page.csrf_token):
                        reason = "the request carries no valid CSRF token: reload the page and try again"
                        return await page.deny(reason)
            try:
                response = await handler(page)
            except TeleportError as exc:
                return self._error(request, page, exc)
            if not public:
                response.headers["Cache-Control"] = "no-store"
            return response

        return Route(path, endpoint, methods=list(methods), name=name)

    def _error(self, request: Request, page: Page | None, exc: TeleportError) -> Response:
        if isinstance(exc, AuthenticationFailed):
            return self.to_login(request, str(exc))
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        page = page or Page(self, request, None)
        return page.error(status, str(exc))

    def websocket(self, path: str, handler: SocketHandler, *, name: str | None = None) -> WebSocketRoute:
        """A WebSocket at ``path``: its ``Origin`` must be this proxy's (the ``Host`` it was sent
        to) and its cookie a live session, else it is closed (code 1008, audited) before
        ``handler(websocket, page)`` runs; ``{cluster}`` in the path must be this cluster."""

        async def endpoint(ws: WebSocket) -> None:
            client = ws.client
            remote = f"{client.host}:{client.port}" if client else ""
            origin = ws.headers.get("origin", "")
            host = ws.headers.get("host", "")
            if not origin or not host or origin != f"https://{host}":
                await self.proxy.audit_denial("", f"WebSocket from a foreign origin {origin!r}", remote,
                                              path=ws.url.path, client="web")
                await ws.close(code=1008, reason="foreign origin")
                return
            try:
                session = await self.session_of(ws)
            except TeleportError as exc:
                await ws.close(code=1008, reason=str(exc)[:120])
                return
            cluster = ws.path_params.get("cluster")
            if cluster is not None and cluster != self.proxy.cluster_name:
                await ws.close(code=1008, reason="unknown cluster")
                return
            page = Page(self, ws, session)  # type: ignore[arg-type]  # a WebSocket has what Page reads
            await handler(ws, page)

        return WebSocketRoute(path, endpoint, name=name)


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)
