"""A short way in for the auth API's hottest routes (the hosts' keepalives: 50,000 nodes send
1,700 a second on a 30 s period).

:class:`HotRoutesApp` is the API's Starlette app; a request for one of its hot routes (exact
method, the route's path pattern) goes straight to that route's handler, the same
:func:`~teleport_auth.api.core.endpoint`-wrapped method Starlette would call, with the same path
parameters: authentication, the audit check, the lock check, path validation, authorization and
the refusals' audit all happen in that wrapper, so nothing is skipped. What is skipped is
Starlette's middleware stack (the wrapper answers every error itself) and the linear match
against every route before it. Any other request, a hot path with another method (405)
included, goes through Starlette as before.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Handler = Callable[[Request], Awaitable[Response]]
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def path_pattern(path: str) -> re.Pattern[str]:
    """The regular expression Starlette matches ``path`` with (each ``{name}``: one segment)."""
    parts = _PARAM.split(path)
    regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts))
    return re.compile(f"^{regex}$")


class HotRoutesApp(Starlette):
    """Starlette, with ``hot`` routes (method, path, handler) dispatched before its middleware."""

    def __init__(self, *, hot: Sequence[tuple[str, str, Handler]] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot: dict[str, list[tuple[re.Pattern[str], Handler]]] = {}
        for method, path, handler in hot:
            self.hot.setdefault(method, []).append((path_pattern(path), handler))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            for pattern, handler in self.hot.get(scope["method"], ()):
                match = pattern.match(scope["path"])
                if match is not None:
                    scope["app"] = self
                    scope["path_params"] = match.groupdict()
                    response = await handler(Request(scope, receive, send))
                    await response(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)
