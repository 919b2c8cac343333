"""How ``tctl`` commands reach the auth API, as in Teleport, in this order:

- anywhere: ``tctl --auth-server HOST:3025 -i IDENTITY_FILE`` (from ``tctl auth sign``);
- on the auth server: ``tctl [-c /etc/teleport.yaml]`` (or ``$TELEPORT_CONFIG_FILE``) uses the
  auth server's own identity in its ``data_dir`` and its ``auth_service.listen_addr``;
- otherwise the current ``tsh login`` profile: the user's own certificate, through the proxy's
  web port (TLS routing passes the auth API through untouched: SNI ``teleport.cluster.local``),
  or ``--auth-server``; the user's roles decide what tctl may do.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from teleport_core.api.client import AuthClient, load_identity_dir, load_identity_file
from teleport_core.errors import TeleportError
from teleport_core.plugins import Plugins

DEFAULT_AUTH_PORT = 3025
#: Teleport's variable naming tctl's config file (instead of /etc/teleport.yaml)
CONFIG_ENV = "TELEPORT_CONFIG_FILE"
PROFILE_SOURCE = "tsh profile"  # how load_profile's credentials name themselves
NO_CREDENTIALS = ("tctl needs credentials: log in with tsh login --proxy=HOST, run it on the auth server "
                  "(tctl -c /etc/teleport.yaml), or pass --auth-server HOST:3025 -i IDENTITY_FILE")


def auth_client(args: argparse.Namespace, plugins: Plugins) -> AuthClient:
    """An :class:`AuthClient` from tctl's global options (``-c``, ``--auth-server``, ``-i``)."""
    from teleport_core.config.values import parse_addr

    servers = list(getattr(args, "auth_server", None) or [])
    for index, server in enumerate(servers):
        try:
            servers[index] = str(parse_addr(server, DEFAULT_AUTH_PORT))
        except ValueError as exc:
            raise TeleportError(f'--auth-server: expected host:port, got "{server}" ({exc})') from None
    if getattr(args, "identity", None):
        if not servers:
            raise TeleportError("--auth-server is required with -i/--identity")
        return AuthClient(servers, [load_identity_file(args.identity)])
    from teleport_core.config.load import DEFAULT_CONFIG, load_config

    given = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or None
    path = Path(given) if given else None
    if path is None and not DEFAULT_CONFIG.is_file():
        return profile_client(servers)
    config = load_config(path, plugins)
    folder = config.data_dir / "keys" / "auth"
    if not (folder / "key").exists():
        raise TeleportError(f"no auth server identity in {folder}: is this the auth server, and has it started once?")
    if not servers:
        settings = config.settings("auth_service")
        listen = getattr(settings, "listen_addr", None)
        if listen is None:
            raise TeleportError(f"{config.source or 'the config'} has no auth_service.listen_addr; pass --auth-server")
        servers = [f"{listen.connect_host}:{listen.port}"]
    return AuthClient(servers, [load_identity_dir(folder)])


def profile_client(servers: list[str]) -> AuthClient:
    """An :class:`AuthClient` with the current ``tsh`` profile's certificate, to the profile's proxy
    (its web port routes the auth API) unless ``--auth-server`` names another address."""
    from teleport_core.api.client import load_profile
    from teleport_core.tsh.profile import NotLoggedIn, Profile

    try:
        profile = Profile.load().check_valid()
    except NotLoggedIn as exc:
        message = str(exc)
        raise TeleportError(NO_CREDENTIALS if message.startswith("not logged in") else f"tctl: {message}") from None
    return AuthClient(servers or [profile.web_addr], [load_profile()])


def from_profile(client: AuthClient) -> bool:
    """Whether ``client`` uses the ``tsh`` profile's credentials."""
    return client.credentials.source.startswith(PROFILE_SOURCE)
