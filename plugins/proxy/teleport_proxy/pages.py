"""The proxy's only HTML: the invite page (``GET /web/invite/{token}``) and its script
(``GET /web/invite.js``), a separate file because the Content-Security-Policy forbids inline
script. The page hands the token to the script in a ``data-token`` attribute (HTML-escaped)."""

from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

INVITE_JS = """\
"use strict";
// Completes an invite: PUT /v1/webapi/users/password/token with the password (and OTP code).
document.getElementById("f").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target;
  const otp = document.getElementById("otp");
  const out = document.getElementById("out");
  try {
    const r = await fetch("/v1/webapi/users/password/token", {method: "PUT",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token: form.dataset.token, password: document.getElementById("pw").value,
                            second_factor_token: otp ? otp.value : ""})});
    const j = await r.json();
    out.textContent = r.ok ? "Done: log in with tsh login --user=" + j.user : j.error;
  } catch (err) {
    out.textContent = "The request failed: " + err;
  }
});
"""
NO_STORE = {"Cache-Control": "no-store"}


def invite_page(user: str, token: str, otp_uri: str) -> HTMLResponse:
    """The form that sets ``user``'s password (and enrolls the OTP app when ``otp_uri`` is set)."""
    otp_part = (f'<p>Add this to your authenticator app: <code>{html.escape(otp_uri)}</code></p>'
                '<label>Authenticator code <input id="otp" autocomplete="one-time-code"></label>') if otp_uri else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Set up {html.escape(user)}</title>
<script src="/web/invite.js" defer></script></head>
<body><h1>Welcome, {html.escape(user)}</h1>
<form id="f" data-token="{html.escape(token)}">
<input type="text" autocomplete="username" value="{html.escape(user)}" hidden readonly><label>Password
<input id="pw" type="password" autocomplete="new-password" minlength="12" maxlength="128"></label>
{otp_part}<button>Set password</button></form><p id="out"></p>
</body></html>"""
    return HTMLResponse(page, headers=NO_STORE)


def error_page(message: str, status: int) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>Invite</title><p>{html.escape(message)}</p>", status_code=status,
                        headers=NO_STORE)


async def invite_js(request: Request) -> Response:
    return Response(INVITE_JS, media_type="text/javascript", headers={"Cache-Control": "no-cache"})


async def favicon(request: Request) -> Response:
    """No icon (browsers ask for one; a 404 would be logged in their console)."""
    return Response(status_code=204)
