"""Security headers on every response of the proxy's web port (an ASGI middleware).

- ``Strict-Transport-Security``: browsers keep to HTTPS for a year (the port serves only HTTPS);
- ``Content-Security-Policy``: scripts, styles, images and requests from this origin only, no
  inline script, no plugins, no framing, no ``<base>`` (a page may add a ``style-src`` nonce
  for the ``<style>`` elements a library creates: :data:`teleport_core.webui.STYLE_NONCE_HEADER`;
  and ``'wasm-unsafe-eval'`` to ``script-src`` for WebAssembly: :data:`teleport_core.webui.WASM_HEADER`);
- ``X-Frame-Options: DENY`` (older browsers), ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer`` (an invite token in the URL never leaves in a Referer).

The web API sets no cookie. Should one ever appear, :func:`cookie_allowed` holds it to the
rule (``__Host-`` name, ``Secure``, ``HttpOnly``, ``SameSite=Strict``, ``Path=/``, no
``Domain``): a ``Set-Cookie`` that breaks it is dropped and logged, never sent.
"""

from __future__ import annotations

import re
from typing import Any

from teleport_core.logs import get_logger
from teleport_core.webui import STYLE_NONCE_HEADER, WASM_HEADER

CSP = "default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
_OURS = {name for name, _ in HEADERS}
log = get_logger("proxy")
_STYLE_NONCE = STYLE_NONCE_HEADER.lower().encode()
_WASM = WASM_HEADER.lower().encode()
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def with_style_nonce(nonce: str) -> tuple[tuple[bytes, bytes], ...]:
    """:data:`HEADERS` with ``style-src 'self' 'nonce-<nonce>'`` added to the CSP (a page asked
    with :data:`~teleport_core.webui.STYLE_NONCE_HEADER`); unchanged when ``nonce`` is malformed."""
    if not _NONCE.fullmatch(nonce):
        log.error("ignored a malformed style nonce")
        return HEADERS
    csp = f"{CSP}; style-src 'self' 'nonce-{nonce}'".encode()
    return tuple((name, csp if name == b"content-security-policy" else value) for name, value in HEADERS)


def with_wasm(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """``headers`` with ``'wasm-unsafe-eval'`` added to the CSP's ``script-src`` (a page asked with
    :data:`~teleport_core.webui.WASM_HEADER`): WebAssembly may compile, JavaScript ``eval`` may not."""
    return tuple((name, value.replace(b"script-src 'self'", b"script-src 'self' 'wasm-unsafe-eval'", 1)
                  if name == b"content-security-policy" else value) for name, value in headers)


def cookie_allowed(value: str) -> bool:
    """Whether a ``Set-Cookie`` value is a ``__Host-`` cookie that is Secure, HttpOnly,
    SameSite=Strict, for ``Path=/`` and without ``Domain``."""
    name, _, rest = value.partition("=")
    attributes = {part.strip().split("=", 1)[0].lower(): part.strip() for part in rest.split(";")[1:]}
    return (name.strip().startswith("__Host-") and "secure" in attributes and "httponly" in attributes
            and attributes.get("samesite", "").lower() == "samesite=strict"
            and attributes.get("path", "") in ("Path=/", "path=/") and "domain" not in attributes)


class SecurityHeaders:
    """ASGI middleware: adds :data:`HEADERS` to each HTTP response (replacing any the app set)
    and drops a ``Set-Cookie`` that :func:`cookie_allowed` refuses."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                kept = []
                headers = HEADERS
                wasm = False
                for name, value in message.get("headers", []):
                    lowered = bytes(name).lower()
                    if lowered == _STYLE_NONCE:  # a page's nonce for <style> elements (xterm.js)
                        headers = with_style_nonce(bytes(value).decode("latin-1"))
                        continue
                    if lowered == _WASM:  # a page running WebAssembly (the recording player)
                        wasm = True
                        continue
                    if lowered in _OURS:
                        continue
                    if lowered == b"set-cookie" and not cookie_allowed(bytes(value).decode("latin-1")):
                        log.error("dropped a cookie that is not __Host-, Secure, HttpOnly, SameSite=Strict",
                                  path=scope.get("path", ""), cookie=bytes(value).decode("latin-1").split("=")[0])
                        continue
                    kept.append((name, value))
                if wasm:
                    headers = with_wasm(headers)
                message = {**message, "headers": [*kept, *headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
