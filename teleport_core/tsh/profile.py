"""The profile ``tsh login`` writes and every other command reads.

Layout under ``$TELEPORT_HOME`` (default ``~/.tsh``), directories 0700, files 0600::

    current-profile               the name of the active profile (the proxy host)
    profiles/<name>/identity      key, SSH and TLS certificates, CAs (LocalIdentity; what
                                  teleport_core.api.client.load_profile reads), plus key, tls.crt,
                                  ca.pem, ssh-cert.pub, known_hosts
    profiles/<name>/id            the private key in OpenSSH format, id-cert.pub its
                                  certificate (for ssh -i / IdentityFile, ssh-add)
    profiles/<name>/profile.json  proxy addresses, user, cluster, roles, logins, expiry, the
                                  access requests the certificates carry (active_requests)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import attrs

from teleport_core.errors import TeleportError
from teleport_core.files import write_private
from teleport_core.pki.identity import LocalIdentity

EXPIRED = "your session has expired, run tsh login"


class NotLoggedIn(TeleportError):
    """No profile (or it has expired)."""


def home(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get("TELEPORT_HOME") or Path.home() / ".tsh")


@attrs.frozen
class Profile:
    name: str
    web_addr: str  # host:port of the proxy's HTTPS
    ssh_addr: str  # host:port of the proxy's SSH
    user: str
    cluster: str
    roles: tuple[str, ...]
    logins: tuple[str, ...]
    valid_before: dt.datetime
    insecure: bool
    identity: LocalIdentity
    folder: Path | None = None
    tls_routing: bool = False  # the proxy's web port carries SSH too (its ping said tls_routing_enabled)
    #: the approved access requests whose roles the certificates carry (tsh login --request-id)
    active_requests: tuple[str, ...] = ()
    #: the profile's own (root) cluster when ``cluster`` names a leaf (``--cluster``; never saved)
    root_cluster: str = ""

    @property
    def proxy_cluster(self) -> str:
        """The cluster of the proxy the profile talks to: the root's even when ``cluster`` is a leaf."""
        return self.root_cluster or self.cluster

    @property
    def expired(self) -> bool:
        return dt.datetime.now(dt.UTC) >= self.valid_before

    def check_valid(self) -> Profile:
        """Self, or :class:`NotLoggedIn` with the friendly message when the certificates expired."""
        if self.expired:
            raise NotLoggedIn(EXPIRED)
        return self

    @property
    def proxy_host(self) -> str:
        return self.web_addr.rpartition(":")[0].strip("[]")

    def meta(self) -> dict[str, Any]:
        return {"web_addr": self.web_addr, "ssh_addr": self.ssh_addr, "user": self.user, "cluster": self.cluster,
                "roles": list(self.roles), "logins": list(self.logins),
                "valid_before": self.valid_before.isoformat(), "insecure": self.insecure,
                "tls_routing": self.tls_routing, "active_requests": list(self.active_requests)}

    def save(self, root: Path) -> Path:
        """Write this profile and make it current; returns its folder."""
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        folder = root / "profiles" / self.name
        self.identity.save(folder)
        from teleport_core.pki import keys

        write_private(folder / "id", keys.private_key_openssh(keys.load_private_key(self.identity.key_pem)))
        write_private(folder / "id-cert.pub", self.identity.ssh_cert + "\n")
        write_private(folder / "profile.json", json.dumps(self.meta(), indent=2) + "\n")
        write_private(root / "current-profile", self.name + "\n")
        return folder

    @classmethod
    def load(cls, root: Path | None = None, name: str = "") -> Profile:
        """The current (or named) profile; :class:`NotLoggedIn` when there is none."""
        root = root or home()
        if not name:
            current = root / "current-profile"
            if not current.exists():
                raise NotLoggedIn("not logged in (run tsh login --proxy=HOST)")
            name = current.read_text().strip()
        folder = root / "profiles" / name
        try:
            meta = json.loads((folder / "profile.json").read_text())
        except (OSError, ValueError):
            raise NotLoggedIn("not logged in (run tsh login --proxy=HOST)") from None
        return cls(name, meta["web_addr"], meta["ssh_addr"], meta["user"], meta["cluster"], tuple(meta["roles"]),
                   tuple(meta["logins"]), dt.datetime.fromisoformat(meta["valid_before"]), bool(meta["insecure"]),
                   LocalIdentity.load(folder), folder, bool(meta.get("tls_routing", False)),
                   tuple(str(r) for r in meta.get("active_requests") or ()))

    @classmethod
    def from_identity_file(cls, path: Path, proxy: str) -> Profile:
        """A profile for ``tsh -i FILE --proxy=HOST``: what the identity file's certificates say."""
        from cryptography.hazmat.primitives.serialization import ssh

        identity = LocalIdentity.read_identity_file(path)
        if not identity.ssh_cert:
            raise TeleportError(f"identity file {path} has no SSH certificate")
        cert = ssh.load_ssh_public_identity(identity.ssh_cert.encode())
        assert isinstance(cert, ssh.SSHCertificate)
        ext = {k.decode(): v for k, v in cert.extensions.items()}
        roles = tuple(json.loads(ext.get("teleport-roles", b'{"roles":[]}'))["roles"])
        cluster = ext.get("teleport-route-to-cluster", b"").decode()
        from teleport_core.policy.requests import EXT_ACTIVE_REQUESTS, parse_active_requests

        try:
            active = parse_active_requests(ext.get(EXT_ACTIVE_REQUESTS))
        except ValueError as exc:
            raise TeleportError(f"identity file {path}: {exc}") from None
        web = normalize_addr(proxy, 3080)
        return cls(web.rpartition(":")[0], web, "", cert.key_id.decode(), cluster, roles,
                   tuple(p.decode() for p in cert.valid_principals),
                   dt.datetime.fromtimestamp(cert.valid_before, dt.UTC), False, identity, None,
                   active_requests=active)


def refused_login(profile: Profile, login: str, role: str | None = None) -> str:
    """What to say when a server refuses the certificate for ``login``: on a node hop (``role``
    None) with a login the certificate does not carry, which logins the user's roles allow."""
    allowed = [p for p in profile.logins if not p.startswith("-teleport")]  # internal principals
    if role is None and login not in profile.logins:
        return (f"login {login} is not allowed: your roles allow {', '.join(allowed)}" if allowed
                else f"login {login} is not allowed: your roles allow no logins")
    return f"access denied to {login}: the server refused the certificate"


def profile_names(root: Path | None = None) -> list[str]:
    """The names of the profiles stored under ``root`` (one per proxy logged in to), sorted."""
    folder = (root or home()) / "profiles"
    try:
        return sorted(p.name for p in folder.iterdir() if (p / "profile.json").is_file())
    except OSError:
        return []


def current_name(root: Path | None = None) -> str:
    """The current profile's name ('' when there is none)."""
    try:
        return ((root or home()) / "current-profile").read_text().strip()
    except OSError:
        return ""


def normalize_addr(addr: str, default_port: int) -> str:
    """``host`` -> ``host:port``; ``host:port`` and ``[v6]:port`` unchanged."""
    addr = addr.strip()
    if addr.startswith("https://"):
        addr = addr[len("https://"):].rstrip("/")
    if addr.startswith("["):
        return addr if "]:" in addr else f"{addr}:{default_port}"
    if addr.count(":") == 1:
        return addr
    if ":" in addr:
        return f"[{addr}]:{default_port}"
    return f"{addr}:{default_port}"


def remove(root: Path | None = None) -> str | None:
    """Delete the current profile; returns its name (None when there was none)."""
    root = root or home()
    current = root / "current-profile"
    if not current.exists():
        return None
    name = current.read_text().strip()
    shutil.rmtree(root / "profiles" / name, ignore_errors=True)
    current.unlink()
    return name


def proxy_known_hosts(lines: list[str], proxy_host: str) -> tuple[str, ...]:
    """The host CA lines with the proxy's host (any port) added to their host patterns."""
    out = []
    for line in lines:
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] == "@cert-authority":
            hosts = list(dict.fromkeys([proxy_host, f"[{proxy_host}]:*", *parts[1].split(",")]))
            out.append(f"@cert-authority {','.join(hosts)} {parts[2]}")
    return tuple(out)


def agent_add(folder: Path, profile: Profile) -> None:
    """Load the key and certificate into a running ssh-agent (best effort, as Teleport does)."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        return
    seconds = max(1, int((profile.valid_before - dt.datetime.now(dt.UTC)).total_seconds()))
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["ssh-add", "-q", "-t", str(seconds), str(folder / "id")], check=False, timeout=10,
                       capture_output=True)
