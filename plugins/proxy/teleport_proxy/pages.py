"""The proxy's own answers outside the JSON API: ``/favicon.ico``. (The HTML pages, the invite
and reset pages included, are the web UI plugin's: ``teleport-web``, docs/web.md.)"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response


async def favicon(request: Request) -> Response:
    """No icon (browsers ask for one; a 404 would be logged in their console)."""
    return Response(status_code=204)
