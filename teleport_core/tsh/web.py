"""Calls to the proxy's HTTPS API (synchronous httpx; tsh runs one request at a time).

The TLS and HTTP modules are imported by the functions that use them: ``tsh ssh`` with a stored
profile needs only :func:`current` (``teleport_core.api.client`` brings asyncio, about 30 ms)."""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from teleport_core.errors import TeleportError
from teleport_core.tsh.profile import Profile, home


def tls_context(insecure: bool, profile: Profile | None = None, host_cas: Sequence[bytes] = ()) -> ssl.SSLContext:
    """The system's trusted CAs (none checked with ``insecure``), presenting the profile's
    user certificate when given. A certificate from the cluster's host CA (the profile's, or
    ``host_cas``: PEM) is accepted only for system role ``Proxy`` (a node's certificate never
    passes as the proxy, even with ``insecure``); other certificates (self-signed, public) are
    judged as before."""
    from teleport_core.pki.serverrole import PROXY, require_server_role

    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if profile is not None:
        import tempfile
        from pathlib import Path

        from teleport_core.files import write_private

        with tempfile.TemporaryDirectory(prefix="tsh-") as tmp:
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            write_private(cert, profile.identity.tls_cert_pem)
            write_private(key, profile.identity.key_pem)
            context.load_cert_chain(cert, key)
    cas = (*host_cas, *(profile.identity.tls_ca_pems if profile is not None else ()))
    if cas:
        require_server_role(context, PROXY, only_from=cas)
    return context


def call(web_addr: str, method: str, path: str, *, insecure: bool, profile: Profile | None = None,
         body: Any = None, timeout: float = 30.0, host_cas: Sequence[bytes] = ()) -> Any:
    """One request to the proxy; the decoded JSON, or the typed error the proxy sent."""
    import httpx

    from teleport_core.api.client import ConnectionProblem, raise_for_status
    from teleport_core.pki.serverrole import find_role_error

    url = f"https://{web_addr}{path}"
    try:
        with httpx.Client(verify=tls_context(insecure, profile, host_cas), timeout=timeout) as client:
            response = client.request(method, url, json=body)
    except httpx.ConnectError as exc:
        wrong = find_role_error(exc)
        if wrong is not None:
            raise ConnectionProblem(f"{wrong.at(web_addr)}; nothing was sent") from None
        reason = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            raise ConnectionProblem(f"the proxy at {web_addr} presented a certificate this machine does not trust "
                                    f"({reason}); if it is self-signed, use --insecure") from None
        raise ConnectionProblem(f"cannot reach the proxy at {web_addr}: {reason}") from None
    except httpx.TransportError as exc:
        raise ConnectionProblem(f"proxy at {web_addr}: {exc}") from None
    raise_for_status(response)
    return response.json() if response.content else None


def current(args: argparse.Namespace) -> Profile:
    """The valid profile to act as: ``-i FILE --proxy`` or the stored profile."""
    if args.identity:
        if not args.proxy:
            raise TeleportError("-i requires --proxy=HOST[:PORT]")
        profile = Profile.from_identity_file(Path(args.identity), args.proxy).check_valid()
        ping = call(profile.web_addr, "GET", "/webapi/ping", insecure=args.insecure, profile=profile)  # Proxy check
        import attrs

        return attrs.evolve(profile, ssh_addr=ping["proxy"]["ssh"]["public_addr"],
                            tls_routing=bool(ping["proxy"].get("tls_routing_enabled", False)),
                            cluster=profile.cluster or ping["cluster_name"], insecure=args.insecure)
    return Profile.load(home()).check_valid()
