"""How ``tctl`` commands reach the auth API, as in Teleport:

- on the auth server: ``tctl [-c /etc/teleport.yaml]`` uses the auth server's own identity in
  its ``data_dir`` and its ``auth_service.listen_addr``;
- anywhere: ``tctl --auth-server HOST:3025 -i IDENTITY_FILE`` (from ``tctl auth sign``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from teleport_core.api.client import AuthClient, load_identity_dir, load_identity_file
from teleport_core.errors import TeleportError
from teleport_core.plugins import Plugins

DEFAULT_AUTH_PORT = 3025


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

    path = Path(args.config) if getattr(args, "config", None) else None
    if path is None and not DEFAULT_CONFIG.is_file():
        raise TeleportError(
            "tctl needs credentials: run it on the auth server (tctl -c /etc/teleport.yaml) "
            "or pass --auth-server HOST:3025 -i IDENTITY_FILE"
        )
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
