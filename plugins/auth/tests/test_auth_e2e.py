"""End to end against a real auth server: joining with tokens and pins, signup with a real TOTP
code, login certificates that OpenSSH and openssl accept, lockout, and RBAC over the mTLS API.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import pytest

from teleport_core import hookimpl
from teleport_core.api.client import AuthClient, Joined, load_identity_dir, load_tls, register
from teleport_core.errors import AccessDenied, AlreadyExists, AuthenticationFailed, TeleportError
from teleport_core.pki import keys
from teleport_core.pki.certs import CertAdditions, CertFormat
from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import make_plugins
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.testing.cluster import start_cluster

pytestmark = pytest.mark.e2e  # real processes end to end

API_ROLE = {  # the seeds' api-role.yaml: read roles, no node access
    "kind": "role",
    "version": "v5",
    "metadata": {"name": "api-role"},
    "spec": {"allow": {"rules": [{"resources": ["role"], "verbs": ["read"]}]}, "deny": {"node_labels": {"*": "*"}}},
}


class Cluster:
    def __init__(self, handle, data_dir: Path) -> None:
        self.handle = handle
        self.data_dir = data_dir
        self.service = handle.process.services["auth_service"]
        self.addr = self.service.address
        self.config_file = data_dir.parent / "teleport.yaml"

    def run(self, coro_fn):
        return asyncio.run(coro_fn())

    def admin(self) -> AuthClient:
        return AuthClient(self.addr, [load_identity_dir(self.data_dir / "keys" / "auth")])

    async def apin(self) -> str:
        async with self.admin() as client:
            return str((await client.status())["ca_pin"])

    def pin(self) -> str:
        return self.run(self.apin)

    def join(self, token: str, role: str = "Node", nodename: str = "node-1", pins=None) -> tuple[Joined, LocalIdentity]:
        return asyncio.run(self.ajoin(token, role, nodename, pins))

    async def ajoin(self, token: str, role: str = "Node", nodename: str = "node-1",
                    pins=None) -> tuple[Joined, LocalIdentity]:
        key = keys.generate_private_key("ed25519")
        body = {"token": token, "role": role, "nodename": nodename, "public_key": keys.public_key_openssh(key)}
        joined = await register(self.addr, body, [await self.apin()] if pins is None else pins)
        identity = LocalIdentity(keys.private_key_pem(key), joined.answer["tls_cert"].encode(),
                                 tuple(p.encode() for p in joined.answer["host_ca_pems"]), joined.answer["ssh_cert"],
                                 tuple(joined.answer["known_hosts"]), joined.answer["host_uuid"])
        return joined, identity


class VetoErin:
    """Plugins installed in the running auth service: a certificate veto (erin), an extension on
    robot certificates, and an authenticator for robots that live in another directory."""

    @hookimpl
    def teleport_certificate_veto(self, request):
        return "erin is on leave" if request.identity.name == "erin" else None

    @hookimpl
    def teleport_certificate_extensions(self, request):
        if request.identity.name.startswith("robot-") and request.cert_format is CertFormat.SSH:
            return CertAdditions(extensions={"robot@example.com": "fleet-7"})
        return None

    @hookimpl
    def teleport_authenticate(self, request):
        if not request.username.startswith("robot-"):
            return None  # not ours: the local users are checked
        if not hmac.compare_digest(request.password.reveal(), "robot-directory-secret"):
            raise AuthenticationFailed("invalid username, password or second factor")
        return Identity(request.username, IdentityKind.USER, roles=("access",), traits={"logins": ["robot"]})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    data_dir = root / "data"
    config = {
        "version": "v3",
        "teleport": {"data_dir": str(data_dir), "nodename": "auth-1"},
        "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0",
                         "tokens": ["proxy:static-proxy-token-0123456789"]},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, make_plugins(objects=[("veto_erin", VetoErin())]), timeout=60) as handle:
        c = Cluster(handle, data_dir)
        listen = c.addr
        (root / "teleport.yaml").write_text(json.dumps({**config, "auth_service": {**config["auth_service"],
                                                                                    "listen_addr": listen}}))
        yield c


def tctl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "-c", str(cluster.config_file), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_first_start_created_cas_and_status_prints_pin(cluster):
    result = tctl(cluster, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Cluster  example.com"
    assert lines[2] == "User CA  never updated" and lines[3] == "Host CA  never updated"
    assert lines[4].startswith("CA pin   sha256:") and len(lines[4].split()[-1]) == len("sha256:") + 64
    assert lines[4].split()[-1] == cluster.pin()
    for kind in ("user", "host"):
        assert (cluster.data_dir / "backend").exists()
        async def body(kind=kind):
            async with cluster.admin() as client:
                return await client.get_cert_authority(kind)
        ca = cluster.run(body)
        assert ca["ssh_public_keys"][0].startswith("ssh-ed25519 ")
    assert oct((cluster.data_dir / "keys" / "auth" / "key").stat().st_mode & 0o777) == "0o600"


def test_node_joins_with_dynamic_token_once_and_pins_are_checked(cluster):
    async def make_token():
        async with cluster.admin() as client:
            return (await client.create_token(["node"], "10m"))["token"]

    token = cluster.run(make_token)
    with pytest.raises(AccessDenied, match="^cluster pin does not match"):
        cluster.join(token, pins=["sha256:" + "0" * 64])
    joined, identity = cluster.join(token, nodename="web-1")  # the wrong pin did not burn the token
    assert joined.pinned
    assert identity.ssh_cert.startswith("ssh-ed25519-cert-v01@openssh.com ")
    with pytest.raises(AccessDenied, match='^"web-2" can not join the cluster with role Node, the token is not valid$'):
        cluster.join(token, nodename="web-2")
    # no pin: joins (the caller warns) but is marked unpinned
    joined2, _ = cluster.join("static-proxy-token-0123456789", role="Proxy", nodename="proxy-1", pins=[])
    assert not joined2.pinned
    # the node's certificate carries its system role and is accepted by the API for what a node may do
    async def as_node():
        async with AuthClient(cluster.addr, [load_tls(identity.client_context())]) as client:
            await client.upsert_node({"uuid": identity.host_uuid, "nodename": "web-1", "addr": "127.0.0.1:3022",
                                      "labels": {"env": "test"}})
            nodes = await client.get_nodes()
            with pytest.raises(AccessDenied, match="Node may update only its own node"):
                await client.upsert_node({"uuid": "someone-else", "nodename": "x", "addr": "127.0.0.1:1"})
            with pytest.raises(AccessDenied):
                await client.create_user("mallory", ["editor"])  # a node cannot add users
            return nodes

    nodes = cluster.run(as_node)
    assert {n["nodename"]: n["labels"] for n in nodes}["web-1"] == {"env": "test"}

PROXIES_JOINED: list[str] = []


async def proxy_client(cluster: Cluster) -> AuthClient:
    """A client with a proxy's identity (joined with the static proxy token), as the web proxy calls auth.
    Each call joins a new proxy host, under its own nodename (a nodename belongs to one host)."""
    PROXIES_JOINED.append(f"proxy-{len(PROXIES_JOINED) + 2}")
    _, identity = await cluster.ajoin("static-proxy-token-0123456789", role="Proxy", nodename=PROXIES_JOINED[-1])
    return AuthClient(cluster.addr, [load_tls(identity.client_context())])


def signup(cluster: Cluster, name: str, password: str, roles=("access",), logins=("root",)) -> pyotp.TOTP:
    """Create ``name`` as an admin, then complete the invite as the web proxy does, with a real TOTP code."""
    async def body():
        async with cluster.admin() as admin:
            created = await admin.create_user(name, list(roles), {"logins": list(logins)})
        invite = created["invite"]
        assert invite["url"].startswith("https://") and "/web/invite/" in invite["url"]
        assert len(invite["token"]) == 32 and invite["ttl"] == "1h0m0s"
        async with await proxy_client(cluster) as proxy:
            info = await proxy.get_user_token(invite["token"])
            assert info["user"] == name and info["otp_uri"].startswith("otpauth://totp/")
            totp = pyotp.parse_uri(info["otp_uri"])
            with pytest.raises(Exception, match="second_factor_token: required"):
                await proxy.complete_user_token(invite["token"], password)
            await proxy.complete_user_token(invite["token"], password, totp.now())
            with pytest.raises(AccessDenied, match="not valid or has expired"):
                await proxy.complete_user_token(invite["token"], password, totp.now())  # a used invite is refused
        return totp

    return cluster.run(body)


def test_signup_login_and_certificates_read_by_openssh_and_openssl(cluster, tmp_path):
    totp = signup(cluster, "alice", "correct horse battery staple", logins=("root", "alice"))
    key = keys.generate_private_key("ed25519")

    async def login():
        async with await proxy_client(cluster) as proxy:
            # the signup code was this step's and a code is accepted once: use the next step's (within the skew)
            return await proxy.login("alice", "correct horse battery staple", totp.at(time.time() + 30),
                                     keys.public_key_openssh(key), ttl="2h", client_ip="127.0.0.1")

    certs = cluster.run(login)
    assert certs["username"] == "alice" and sorted(certs["logins"]) == ["alice", "root"]
    cert_file = tmp_path / "alice-cert.pub"
    cert_file.write_text(certs["ssh_cert"] + "\n")
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(cert_file)], capture_output=True, text=True,
                           check=True).stdout
    assert "Type: ssh-ed25519-cert-v01@openssh.com user certificate" in shown
    assert 'Key ID: "alice"' in shown
    assert "permit-pty" in shown and "teleport-roles" in shown
    principals = shown.split("Principals:")[1].split("Critical Options:")[0].split()
    assert sorted(principals) == ["alice", "root"]
    tls, cas = tmp_path / "alice.crt", tmp_path / "cas.pem"
    tls.write_text(certs["tls_cert"])
    async def user_ca():
        async with cluster.admin() as client:
            return await client.get_cert_authority("user")
    cas.write_text("".join(cluster.run(user_ca)["tls_certs"]))
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(cas), str(tls)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", str(tls)],
                             capture_output=True, text=True, check=True).stdout
    assert "CN=alice" in subject and "O=access" in subject
    valid_before = dt.datetime.fromisoformat(certs["valid_before"])
    assert dt.timedelta(hours=1, minutes=55) < valid_before - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)


@pytest.mark.hook_call_site("teleport_audit_sinks")
def test_five_bad_passwords_lock_the_user_and_logins_are_audited(cluster):
    totp = signup(cluster, "bob", "bobs-password-123456")
    public = keys.public_key_openssh(keys.generate_private_key("ed25519"))

    async def body():
        async with await proxy_client(cluster) as proxy:
            for _ in range(4):
                with pytest.raises(AuthenticationFailed, match="^invalid username, password or second factor$"):
                    await proxy.login("bob", "wrong-password-x", totp.now(), public)
            locked = r"^bob exceeds 5 failed login attempts, locked until \w{3} \w{3} [ \d]\d \d\d:\d\d UTC$"
            with pytest.raises(AuthenticationFailed, match=locked):  # the fifth failure locks, as in Teleport
                await proxy.login("bob", "wrong-password-x", totp.now(), public)
            with pytest.raises(AuthenticationFailed, match=locked):  # the right password does not help now
                await proxy.login("bob", "bobs-password-123456", totp.at(time.time() + 30), public)
        async with cluster.admin() as admin:
            now = dt.datetime.now(dt.UTC)
            return await admin.search_events(type="user.login", user="bob",
                                             since=(now - dt.timedelta(minutes=5)).isoformat(), until=now.isoformat())

    page = cluster.run(body)
    codes = [e["code"] for e in page["events"]]
    assert codes.count("T1000W") == 6
    assert all("wrong-password" not in json.dumps(e) for e in page["events"])  # never the password


@pytest.mark.hook_call_site("teleport_authenticate", "teleport_certificate_extensions")
def test_a_plugin_authenticates_a_login_and_extends_its_certificate(cluster, tmp_path):
    """teleport_authenticate and teleport_certificate_extensions at their real call sites: a
    robot no local user store knows logs in through the API with the plugin's password, gets
    the plugin's roles and logins, and its SSH certificate carries the plugin's extension (read
    by ssh-keygen); a wrong password is refused and audited like any failed login."""
    public = keys.public_key_openssh(keys.generate_private_key("ed25519"))

    async def body():
        async with await proxy_client(cluster) as proxy:
            with pytest.raises(AuthenticationFailed, match="^invalid username, password or second factor$"):
                await proxy.login("robot-1", "wrong-robot-password", "", public)
            return await proxy.login("robot-1", "robot-directory-secret", "", public)

    certs = cluster.run(body)
    assert certs["username"] == "robot-1" and certs["roles"] == ["access"] and certs["logins"] == ["robot"]
    cert_file = tmp_path / "robot-cert.pub"
    cert_file.write_text(certs["ssh_cert"] + "\n")
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(cert_file)], capture_output=True, text=True,
                           check=True).stdout
    extension = next(line for line in shown.splitlines() if "robot@example.com" in line)
    assert b"fleet-7".hex() in extension  # ssh-keygen prints an extension it does not know as hex

    async def failures():
        async with cluster.admin() as admin:
            now = dt.datetime.now(dt.UTC)
            return await admin.search_events(type="user.login", user="robot-1",
                                             since=(now - dt.timedelta(minutes=5)).isoformat(), until=now.isoformat())

    codes = sorted(e["code"] for e in cluster.run(failures)["events"])
    assert codes == ["T1000I", "T1000W"]


@pytest.mark.hook_call_site("teleport_certificate_veto")
def test_a_vetoed_certificate_refuses_the_login_and_is_audited(cluster):
    """teleport_certificate_veto at its real call site: a plugin in the running auth service
    refuses erin's login certificates; the login answers 403 with the plugin's reason, and the
    refusal is in the audit log (T3007W) under erin's name."""
    totp = signup(cluster, "erin", "erins-password-123456")
    public = keys.public_key_openssh(keys.generate_private_key("ed25519"))

    async def body():
        async with await proxy_client(cluster) as proxy:
            with pytest.raises(AccessDenied, match="^certificate issuance refused: erin is on leave$"):
                await proxy.login("erin", "erins-password-123456", totp.at(time.time() + 30), public)
        async with cluster.admin() as admin:
            now = dt.datetime.now(dt.UTC)
            return await admin.search_events(type="auth", user="erin",
                                             since=(now - dt.timedelta(minutes=5)).isoformat(), until=now.isoformat())

    page = cluster.run(body)
    refusals = [e for e in page["events"] if "erin is on leave" in e.get("error", "")]
    assert len(refusals) == 1 and refusals[0]["code"] == "T3007W" and refusals[0]["success"] is False


def test_read_only_identity_reads_a_role_and_cannot_create_one(cluster, tmp_path):
    async def setup():
        async with cluster.admin() as admin:
            await admin.create_role(API_ROLE)
            with pytest.raises(AlreadyExists):
                await admin.create_role(API_ROLE)
            await admin.create_user("api-user", ["api-role"])
            key = keys.generate_private_key("ed25519")
            certs = await admin.sign_user_cert("api-user", keys.public_key_openssh(key), ttl="1h")
        identity = LocalIdentity(keys.private_key_pem(key), certs["tls_cert"].encode(),
                                 tuple(p.encode() for p in certs["host_ca_pems"]), certs["ssh_cert"])
        async with AuthClient(cluster.addr, [load_tls(identity.client_context())]) as api:
            role = await api.get_role("access")
            with pytest.raises(AccessDenied, match="no role allows create on role"):
                await api.create_role({**API_ROLE, "metadata": {"name": "sneaky"}})
            with pytest.raises(AccessDenied):
                await api.get_users()
        async with cluster.admin() as admin:
            now = dt.datetime.now(dt.UTC)
            denials = await admin.search_events(type="auth", user="api-user",
                                                since=(now - dt.timedelta(minutes=5)).isoformat(),
                                                until=now.isoformat())
        return role, denials

    role, denials = cluster.run(setup)
    assert role["metadata"]["name"] == "access"
    assert [e["code"] for e in denials["events"]] == ["T3007W", "T3007W"]  # every denial is audited
    assert "no role allows create on role" in denials["events"][0]["error"]


def test_calls_without_certificate_or_with_bad_body_are_refused(cluster):
    import httpx

    async def body():
        async with httpx.AsyncClient(verify=False) as anonymous:
            response = await anonymous.get(f"https://{cluster.addr}/v1/roles")
            assert response.status_code == 401
            assert response.json() == {"error": "this call needs a client certificate from the cluster"}
            ping = await anonymous.get(f"https://{cluster.addr}/v1/ping")
            assert ping.json()["cluster_name"] == "example.com"
            openapi = await anonymous.get(f"https://{cluster.addr}/v1/openapi.json")  # documentation: public
            assert openapi.status_code == 200 and "/v1/login" in openapi.json()["paths"]
        async with cluster.admin() as admin:
            for path, payload, message in [
                ("/v1/users", {"name": "x"}, "roles: required"),
                ("/v1/users", {"name": "x", "roles": "access"}, "roles: expected a list"),
                ("/v1/users", {"name": "x", "roles": ["nope"]}, 'roles: no such role "nope"'),
                ("/v1/tokens", {"roles": ["node"], "ttl": "forever"}, 'ttl: expected a duration like "30m"'),
                ("/v1/tokens", {"roles": ["node"], "ttl": "2h"}, "exceeds"),
                ("/v1/resources", {"resources": [{"kind": "user"}]}, 'resources[0]: unsupported kind "user"'),
            ]:
                with pytest.raises(Exception) as err:
                    await admin.call("POST", path, payload)
                assert message in str(err.value), (path, str(err.value))
            doc = await admin.call("GET", "/v1/openapi.json")
            assert doc["openapi"].startswith("3.") and set(doc["paths"]) >= {"/v1/register", "/v1/login", "/v1/roles"}

    cluster.run(body)


def test_refused_invite_ttl_leaves_no_user_and_token_answer_lists_pins(cluster):
    async def body():
        async with cluster.admin() as admin:
            with pytest.raises(Exception, match=r"ttl: an invite lasts more than 0s and at most 48h0m0s"):
                await admin.create_user("carol", ["access"], ttl="49h")
            assert "carol" not in [u["metadata"]["name"] for u in await admin.get_users()]
            token = await admin.create_token(["node"], "5m")
            return token, (await admin.status())["ca_pin"]

    token, pin = cluster.run(body)
    assert token["ca_pin"] == pin and token["ca_pins"] == [pin]


def test_changes_long_poll_wakes_on_role_change(cluster):
    async def body():
        async with cluster.admin() as admin, cluster.admin() as watcher:
            version = await watcher.wait_for_change("role", timeout=0)
            assert await watcher.wait_for_change("role", version, timeout=0.2) == version  # nothing changed
            waiting = asyncio.create_task(watcher.wait_for_change("role", version, timeout=20))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            await admin.upsert_role({**API_ROLE, "metadata": {"name": "poll-role"}})
            changed = await asyncio.wait_for(waiting, 10)  # woken by the change, long before its 20 s timeout
            assert changed != version
            with pytest.raises(Exception, match="kind: expected one of cert_authority, lock, role"):
                await watcher.wait_for_change("user")

    cluster.run(body)


def test_rsa2048_cas_for_old_clients(tmp_path):
    config = {"teleport": {"data_dir": str(tmp_path / "data"), "nodename": "rsa-1"},
              "auth_service": {"cluster_name": "rsa.example", "listen_addr": "127.0.0.1:0",
                               "ca_key_algorithm": "rsa2048"},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        c = Cluster(handle, tmp_path / "data")

        async def body():
            async with c.admin() as admin:
                await admin.create_user("olduser", ["access"], {"logins": ["root"]})
                key = keys.generate_private_key("rsa2048")
                certs = await admin.sign_user_cert("olduser", keys.public_key_openssh(key))
                return (await admin.get_cert_authority("user"))["ssh_public_keys"], certs

        ca_keys, certs = c.run(body)
    assert ca_keys[0].startswith("ssh-rsa ")
    cert_file = tmp_path / "id-cert.pub"
    cert_file.write_text(certs["ssh_cert"] + "\n")
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(cert_file)], capture_output=True, text=True,
                           check=True).stdout
    assert "Type: ssh-rsa-cert-v01@openssh.com user certificate" in shown
    assert "Signing CA: RSA" in shown


def test_ca_key_algorithm_is_validated():
    from teleport_core.config.load import parse_config
    from teleport_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r'^auth_service.ca_key_algorithm: expected "ed25519" or "ecdsa" or '
                                          r'"rsa2048", got "dsa"$'):
        parse_config({"auth_service": {"ca_key_algorithm": "dsa"}, "proxy_service": {"enabled": False},
                      "ssh_service": {"enabled": False}}, make_plugins())


def test_hostile_bodies_and_times_get_a_4xx_not_a_500(cluster):
    """Found by a review: a naive time in an events search and a deeply nested JSON body were 500s."""

    async def body():
        async with cluster.admin() as admin:
            naive = await admin.search_events(since="2026-01-01T00:00:00", until="2099-01-01T00:00:00")
            assert isinstance(naive["events"], list)  # a time without a zone is UTC
            nested = await admin._request("POST", "/v1/roles", content=b"[" * 100_000,
                                          headers={"Content-Type": "application/json"})
            assert nested.status_code == 400, nested.text
            assert nested.json() == {"error": "request body is nested too deeply"}
            with pytest.raises(TeleportError, match="bad query"):
                await admin.search_events(since="yesterday")
            return await admin.get_roles()

    assert cluster.run(body)  # the server is still serving


def test_events_answer_stored_lines_that_cannot_break_the_json(cluster):
    """``GET /v1/events`` answers with the sink's stored lines, as they are. A line another writer put
    in the log is returned with its ``time`` written as ours are; a line that is not one JSON object
    (one crafted to close the answer's array, or two objects on a line) is skipped, so the answer stays
    one valid JSON document holding only real events."""
    foreign = cluster.data_dir / "log" / "foreign-writer"
    foreign.mkdir(mode=0o700)
    head = '{"event":"exec","code":"T3002I","uid":"%s","time":"%s","user":"mallory","server_id":"n-9"'
    ours = head % ("ours", "2024-05-01T12:00:00.000Z") + ',"text":"]},{\\"event\\":\\"x\\"} naïve ✓"}'
    spaced = json.dumps({"event": "exec", "code": "T3002I", "uid": "spaced", "time": "2024-05-01T12:00:01+00:00",
                         "user": "mallory", "server_id": "n-9", "big": 2**70})
    lines = [
        ours,
        spaced,
        head % ("breakout", "2024-05-01T12:00:02.000Z") + '}],"next_cursor":"evil","events":[{"a":1}',
        head % ("two", "2024-05-01T12:00:03.000Z") + '} ' + head % ("three", "2024-05-01T12:00:03.000Z") + "}",
        head % ("last", "2024-05-01T12:00:04.000Z") + ',"server_id":"n-8"}',
    ]
    (foreign / "2024-05-01.00:00:00.log").write_text("\n".join(lines) + "\n")

    def strict(text: str) -> dict:
        def refuse(name: str) -> None:
            raise AssertionError(f"not strict JSON: {name}")

        return json.loads(text, parse_constant=refuse)

    async def body():
        async with cluster.admin() as admin:
            window = {"since": "2024-05-01T00:00:00Z", "until": "2024-05-02T00:00:00Z"}
            everything = await admin._request("GET", "/v1/events", params={**window, "user": "mallory"})
            assert everything.status_code == 200 and everything.headers["content-type"] == "application/json"
            by_node = await admin._request("GET", "/v1/events", params={**window, "node": "n-9", "limit": "1"})
            return strict(everything.text), strict(by_node.text)

    found, first = cluster.run(body)
    assert [e["uid"] for e in found["events"]] == ["ours", "spaced", "last"]
    assert found["next_cursor"] == ""
    assert found["events"][0] == json.loads(ours)
    assert found["events"][1] == {**json.loads(spaced), "time": "2024-05-01T12:00:01.000Z"}
    assert type(found["events"][1]["big"]) is int and found["events"][1]["big"] == 2**70
    assert found["events"][2]["server_id"] == "n-8"  # a later duplicate name reads as the last
    assert [e["uid"] for e in first["events"]] == ["ours"] and first["next_cursor"]
