"""Hook implementations, imported by every teleport command: keep imports light.

Installed where the auth service runs, with ``teleport.yaml``::

    plugins:
      access_request_webhook:
        url: https://hooks.example.com/teleport    # http:// or https://; absent: the plugin does nothing
        token: s3cret                              # optional: sent as "Authorization: Bearer s3cret"
        timeout: 5s                                # optional (default 5s)

each change to an access request (created, reviewed, approved, denied, expired, deleted) is
POSTed as ``{"change": ..., "request": <the access_request resource>}``. A failed POST raises:
auth logs it with this plugin's name and carries on (the request itself is never held up).
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from typing import TYPE_CHECKING, Any

from teleport_core import hookimpl

if TYPE_CHECKING:  # every teleport command imports this module (tsh per connection): no roles/yaml here
    from teleport_core.config.model import TeleportConfig
    from teleport_core.config.reader import SectionReader
    from teleport_core.policy.requests import AccessRequest

NAME = "access_request_webhook"  # the entry-point name: its entry under plugins:
DEFAULT_TIMEOUT = dt.timedelta(seconds=5)
SETTINGS: dict[str, Any] = {"url": "", "token": None, "timeout": DEFAULT_TIMEOUT}


@hookimpl
def teleport_config_section(section: str, reader: SectionReader) -> Any:
    if section != f"plugins.{NAME}":
        return None
    url = reader.string("url", "")
    if url and not url.startswith(("http://", "https://")):
        raise reader.error("url", f"expected an http:// or https:// URL, got {json.dumps(url)}")
    timeout = reader.duration("timeout", DEFAULT_TIMEOUT)
    if timeout <= dt.timedelta(0):
        raise reader.error("timeout", "must be positive")
    return {"url": url, "token": reader.secret("token"), "timeout": timeout}


@hookimpl
def teleport_config_loaded(config: TeleportConfig) -> None:
    SETTINGS.update(config.plugin(NAME) or {})


def payload(request: AccessRequest, change: str) -> bytes:
    """What is POSTed: the change and the request as its resource document."""
    from teleport_core.policy.requests import request_to_dict

    return json.dumps({"change": change, "request": request_to_dict(request)}).encode()


@hookimpl
def teleport_access_request_changed(request: AccessRequest, change: str) -> None:
    url = SETTINGS["url"]
    if not url:
        return
    headers = {"Content-Type": "application/json", "User-Agent": "teleport-access-request-webhook/0.1"}
    if SETTINGS["token"] is not None:
        headers["Authorization"] = f"Bearer {SETTINGS['token'].reveal()}"
    post = urllib.request.Request(url, data=payload(request, change), headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(post, timeout=SETTINGS["timeout"].total_seconds()) as answer:  # noqa: S310
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"webhook {url} answered {answer.status}")
