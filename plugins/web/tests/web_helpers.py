"""A real cluster for the web UI tests: one in-process teleport with auth and the proxy (which
loads teleport-web through the ``teleport_web_routes`` hook), users signed up through the proxy's
invite API, nodes registered at auth, and HTTP logins through ``/web/login`` (docs/web.md)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pyotp

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.plugins import make_plugins
from teleport_core.testing import otp
from teleport_core.testing.cluster import start_cluster
from teleport_core.webui import SESSION_COOKIE

CLUSTER = "web.example.com"
LOGIN = getpass.getuser()
PASSWORD = "correct-horse-battery"


class WebCluster:
    """The running cluster and what the tests share."""

    def __init__(self, root: Path, handle: Any) -> None:
        self.root = root
        self.handle = handle
        self.auth_addr = handle.process.services["auth_service"].address
        self.proxy = handle.process.services["proxy_service"]
        self.web = f"127.0.0.1:{self.proxy.web_address.port}"
        self.url = f"https://{self.web}"
        self.totps: dict[str, pyotp.TOTP] = {}
        self.used_codes: dict[str, set[str]] = {}

    def admin(self) -> AuthClient:
        return AuthClient(self.auth_addr, [load_identity_dir(self.root / "keys" / "auth")])

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def body() -> Any:
            async with self.admin() as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(body())

    def client(self) -> httpx.Client:
        """An HTTP client of the web port (keeps cookies; follows no redirect)."""
        return httpx.Client(base_url=self.url, verify=False, timeout=30)

    def fresh_code(self, user: str) -> str:
        """A TOTP code not used before (auth accepts each once): this step's or the next one's."""
        return otp.fresh_code(self.totps[user], self.used_codes.setdefault(user, set()))

    def signup(self, user: str, roles: Sequence[str], logins: Sequence[str] = (LOGIN,),
               password: str = PASSWORD) -> None:
        """Create ``user`` and complete the invite through the proxy (OTP enrolled when asked)."""
        created = self.call("create_user", user, list(roles), {"logins": list(logins)})
        token = created["invite"]["token"]
        with self.client() as web:
            info = web.get(f"/v1/webapi/users/password/token/{token}").json()
            code = ""
            if "otp_uri" in info:
                parsed = pyotp.parse_uri(info["otp_uri"])
                assert isinstance(parsed, pyotp.TOTP), info["otp_uri"]
                self.totps[user] = parsed
                code = self.fresh_code(user)
            done = web.put("/v1/webapi/users/password/token",
                           json={"token": token, "password": password, "second_factor_token": code})
            assert done.status_code == 200, done.text

    def add_node(self, nodename: str, labels: dict[str, str], *, uuid: str = "", addr: str = "127.0.0.1:1",
                 tunnel: bool = False) -> str:
        """Register a node at auth (a heartbeat with auth's identity, as bench/heartbeats.py sends)."""
        import uuid as uuids

        uuid = uuid or str(uuids.uuid4())
        self.call("upsert_node", {"uuid": uuid, "nodename": nodename, "addr": "" if tunnel else addr,
                                  "labels": labels, "tunnel": tunnel})
        return uuid

    def login_form(self, web: httpx.Client, path: str = "/web/login") -> str:
        """GET the login page; the form's double-submit CSRF token."""
        page = web.get(path)
        assert page.status_code == 200, page.text
        found = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
        assert found, page.text
        return found.group(1)

    def login(self, web: httpx.Client, user: str, password: str = PASSWORD, otp: str | None = None,
              next_url: str = "") -> httpx.Response:
        """Log in through the form (a fresh OTP code when the user has one); the answer (303 when it worked)."""
        token = self.login_form(web)
        if otp is None:
            otp = self.fresh_code(user) if user in self.totps else ""
        return web.post("/web/login", data={"login_csrf": token, "user": user, "password": password, "otp": otp,
                                            "next": next_url})

    @contextlib.contextmanager
    def logged_in(self, user: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
        """A client holding ``user``'s session cookie."""
        with self.client() as web:
            answer = self.login(web, user, password)
            assert answer.status_code == 303, answer.text
            assert web.cookies.get(SESSION_COOKIE)
            yield web

    def csrf(self, web: httpx.Client) -> str:
        """The session's CSRF token, as the pages carry it."""
        page = web.get(f"/web/cluster/{CLUSTER}/resources")
        found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
        assert found, page.text
        return found.group(1)

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """Audit events of type ``event`` whose fields include ``match``."""
        found = self.call("search_events", type=[event], limit=1000)
        return [e for e in found.get("events", []) if all(e.get(k) == v for k, v in match.items())]


@contextlib.contextmanager
def running_cluster(root: Path, *, second_factor: str = "off", idle_timeout: str = "10m",
                    plugin_objects: Sequence[tuple[str, object]] = (), node: bool = False,
                    proxy: dict[str, Any] | None = None, recording: str = "node") -> Iterator[WebCluster]:
    """Auth and the proxy in one process (teleport-web loaded from its entry point); with ``node``,
    our SSH service too (nodename ``web-auth``, label ``env=test``, recording sessions); ``proxy``:
    more ``proxy_service`` settings; ``recording``: ``auth_service.session_recording``."""
    config = {
        "teleport": {"data_dir": str(root), "nodename": "web-auth"},
        "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0", "web_idle_timeout": idle_timeout,
                         "authentication": {"second_factor": second_factor}, "session_recording": recording},
        "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                          "tunnel_listen_addr": "127.0.0.1:0", **(proxy or {})},
        "ssh_service": ({"enabled": True, "listen_addr": "127.0.0.1:0", "labels": {"env": "test"}} if node
                        else {"enabled": False}),
    }
    with start_cluster(config, make_plugins(objects=plugin_objects), timeout=60) as handle:
        cluster = WebCluster(root, handle)
        cluster.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "dev"},
                                     "spec": {"allow": {"logins": ["{{internal.logins}}"],
                                                        "node_labels": {"env": ["test", "dev"]}}}})
        cluster.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "nothing"},
                                     "spec": {"allow": {"logins": ["{{internal.logins}}"]}}})
        yield cluster
