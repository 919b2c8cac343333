"""CA rotation end to end: a real auth server in-process, its API over mutual TLS, and ``tctl auth rotate``."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from teleport_auth.authority import CAKeys
from teleport_auth.issuer import CertType, InvalidCertificate, identity_from_tls_cert, verify_ssh_cert
from teleport_auth.rotation import RotateRequest, Rotator, signed_by

from teleport_core.api.client import AuthClient, ConnectionProblem, Credentials, load_identity_dir
from teleport_core.errors import AccessDenied, AuthenticationFailed, TeleportError
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.state.audit import AuditEvent
from teleport_core.testing.cluster import ClusterHandle, start_cluster
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

CLUSTER = "example.com"
PHASES = ["init", "update_clients", "update_servers", "standby"]
T = TypeVar("T")


class Auth:
    """The in-process auth server of one test and ways to talk to it."""

    def __init__(self, cluster: ClusterHandle, data_dir: Path) -> None:
        self.cluster = cluster
        self.data_dir = data_dir
        self.service: Any = cluster.process.services["auth_service"]
        self.address: str = self.service.address

    def admin(self) -> AuthClient:
        """A client with the auth server's own identity, read afresh (rotations re-issue it)."""
        return AuthClient(self.address, [load_identity_dir(self.data_dir / "keys" / "auth")])

    def call(self, fn: Callable[[AuthClient], Awaitable[T]]) -> T:
        async def main() -> T:
            async with self.admin() as client:
                return await fn(client)

        return asyncio.run(main())

    def rotate(self, ca_type: str, phase: str = "", mode: str = "manual", grace_period: str = "") -> dict[str, Any]:
        return self.call(lambda c: c.rotate_cert_authority(ca_type, phase=phase, mode=mode, grace_period=grace_period))

    def status(self) -> dict[str, Any]:
        return self.call(lambda c: c.status())

    def ca(self, ca_type: str) -> dict[str, Any]:
        return self.call(lambda c: c.get_cert_authority(ca_type))

    def rotation_events(self) -> list[dict[str, Any]]:
        answer = self.call(lambda c: c.search_events(type="cert_authority.rotate"))
        return sorted(answer["events"], key=lambda e: e["time"])

    def user(self, name: str, roles: tuple[str, ...] = ("access", "editor")) -> LocalIdentity:
        """Certificates for ``name`` (created on first use) from the user CA's current signing keys."""

        async def sign(client: AuthClient) -> LocalIdentity:
            if name not in {u["metadata"]["name"] for u in await client.get_users()}:
                await client.create_user(name, list(roles), {"logins": ["root"]})
            key = keys.generate_private_key("ed25519")
            answer = await client.sign_user_cert(name, keys.public_key_openssh(key))
            return LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                                 tuple(p.encode() for p in answer["host_ca_pems"]), answer["ssh_cert"])

        return self.call(sign)

    def connects(self, identity: LocalIdentity, trusting: list[str] | None = None) -> bool:
        """Whether ``identity`` gets an answer from the API over mutual TLS, trusting the host CA
        certificates ``trusting`` (default: every one the cluster trusts now, as a client that
        keeps its trust up to date)."""
        pems = trusting if trusting is not None else self.ca("host")["tls_certs"]
        identity = LocalIdentity(identity.key_pem, identity.tls_cert_pem, tuple(p.encode() for p in pems),
                                 identity.ssh_cert)

        async def main() -> bool:
            creds = Credentials(identity.client_context(), identity, "test")
            async with AuthClient(self.address, credentials=creds, timeout=5) as client:
                try:
                    await client.status()
                except ConnectionProblem:
                    return False
            return True

        return asyncio.run(main())


def ssh_accepted(identity: LocalIdentity, user_ca: dict[str, Any]) -> bool:
    """Whether a node trusting the exported user CA keys accepts the SSH certificate."""
    try:
        verify_ssh_cert(identity.ssh_cert, user_ca["ssh_public_keys"], cert_type=CertType.USER, principal="root")
    except InvalidCertificate:
        return False
    return True


def auth_config(data_dir: Path) -> dict[str, Any]:
    return {
        "teleport": {"data_dir": str(data_dir), "nodename": "authhost"},
        "auth_service": {"enabled": True, "cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0"},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }


@pytest.fixture
def auth(tmp_path: Path) -> Iterator[Auth]:
    data_dir = tmp_path / "data"
    with start_cluster(auth_config(data_dir)) as cluster:
        yield Auth(cluster, data_dir)




def own_cert_signed_by(auth: Auth, pem: str) -> bool:
    """Whether the certificate the auth server serves (its identity) was signed by the CA ``pem``."""
    ca = CAKeys.from_dict({"ssh_public_key": auth.ca("host")["ssh_public_keys"][0], "tls_cert": pem})
    return signed_by(auth.service.identity.tls_cert_pem, ca)


# -- manual rotation --------------------------------------------------------------------------------


def test_manual_rotation_of_both_cas_through_every_phase(auth: Auth) -> None:
    before = auth.status()
    assert {t: s["phase"] for t, s in before["cas"].items()} == {"user": "standby", "host": "standby"}
    assert before["cas"]["user"]["last_rotated"] is None and before["ca_pins"] == [before["ca_pin"]]
    old_user = auth.user("alice")
    assert ssh_accepted(old_user, auth.ca("user")) and auth.connects(old_user)

    new_user = None
    previous = "standby"
    for phase in PHASES:
        answer = auth.rotate("all", phase)
        assert [(r["type"], r["previous_phase"], r["phase"]) for r in answer["rotated"]] == [
            ("user", previous, phase), ("host", previous, phase)]
        status = auth.status()
        assert {t: (s["phase"], s["mode"], s["state"]) for t, s in status["cas"].items()} == {
            t: (phase, "manual", "standby" if phase == "standby" else "in_progress") for t in ("user", "host")}
        user_ca = auth.ca("user")
        if phase == "standby":
            break
        assert len(user_ca["ssh_public_keys"]) == 2 and len(status["ca_pins"]) == 2
        # the old CA's certificates are accepted through the grace period, by nodes and by the API
        assert ssh_accepted(old_user, user_ca) and auth.connects(old_user)
        if phase == "update_clients":
            new_user = auth.user("alice")  # clients now get certificates from the new keys
            assert ssh_accepted(new_user, {"ssh_public_keys": user_ca["ssh_public_keys"][:1]})
            assert not ssh_accepted(new_user, before_user_ca := {"ssh_public_keys": user_ca["ssh_public_keys"][1:]})
            assert ssh_accepted(old_user, before_user_ca)
        previous = phase

    assert new_user is not None
    after = auth.status()
    user_ca = auth.ca("user")
    assert len(user_ca["ssh_public_keys"]) == 1
    assert not ssh_accepted(old_user, user_ca)  # the old user CA is no longer trusted by nodes
    assert not auth.connects(old_user)  # nor by the auth API's mutual TLS
    assert ssh_accepted(new_user, user_ca) and auth.connects(new_user)
    for kind in ("user", "host"):
        rotated = dt.datetime.fromisoformat(after["cas"][kind]["last_rotated"])
        assert abs(rotated - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
        assert after["cas"][kind]["started"] is None
    # the CA pin printed by tctl status is the new host CA's
    assert after["ca_pin"] != before["ca_pin"] and after["ca_pins"] == [after["ca_pin"]]

    events = auth.rotation_events()
    assert [(e["ca_type"], e["previous_phase"], e["phase"]) for e in events] == [
        (kind, prev, phase) for prev, phase in zip(["standby", *PHASES[:-1]], PHASES, strict=True)
        for kind in ("user", "host")]
    assert {(e["code"], e["cluster_name"], e["mode"], e["grace_period"]) for e in events} == {
        ("TCA01I", CLUSTER, "manual", "30h0m0s")}
    assert {e["user"] for e in events} == {f"{auth.service.host_uuid}.{CLUSTER}"}


def test_an_old_ca_certificate_is_refused_after_standby_even_on_a_connection_opened_before(auth: Auth) -> None:
    old_user = auth.user("ivan")
    host_pems = tuple(p.encode() for p in auth.ca("host")["tls_certs"])
    old_user = LocalIdentity(old_user.key_pem, old_user.tls_cert_pem, host_pems, old_user.ssh_cert)

    async def main() -> None:
        creds = Credentials(old_user.client_context(), old_user, "test")
        async with AuthClient(auth.address, credentials=creds) as old, auth.admin() as admin:
            await old.status()  # the keep-alive connection now open stays in the pool
            for phase in PHASES[:-1]:
                await admin.rotate_cert_authority("user", mode="manual", phase=phase)
                assert (await old.status())["cas"]["user"]["phase"] == phase
            await admin.rotate_cert_authority("user", mode="manual", phase="standby")
            with pytest.raises(AuthenticationFailed, match="not signed by a trusted cluster CA"):
                await old.status()

    asyncio.run(main())


def assert_certificate_answers_follow_the_host_ca(auth: Auth) -> None:
    """A certificate answer's host CA PEMs and ``known_hosts`` lines (kept by auth per host CA object)
    are the host CA's trusted keys of this phase."""
    key = keys.public_key_openssh(keys.generate_private_key("ed25519"))
    answer = auth.call(lambda c: c.sign_user_cert("bob", key))
    host = auth.ca("host")
    assert answer["host_ca_pems"] == host["tls_certs"]
    assert [line.split()[2:4] for line in answer["known_hosts"]] == [
        line.split()[:2] for line in host["ssh_public_keys"]]


def test_the_auth_server_serves_a_certificate_from_the_new_host_ca_from_update_servers(auth: Auth) -> None:
    user = auth.user("bob")  # the user CA is not rotated here: only trust in the server changes
    old_pem = auth.ca("host")["tls_certs"][0]
    auth.rotate("host", "init")
    old_again, new_pem = auth.ca("host")["tls_certs"]
    assert old_again == old_pem
    identity_dir = auth.data_dir / "keys" / "auth"
    assert set(LocalIdentity.load(identity_dir).tls_ca_pems) == {old_pem.encode(), new_pem.encode()}

    for phase, new_signs in [("init", False), ("update_clients", False), ("update_servers", True)]:
        if phase != "init":
            auth.rotate("host", phase)
        assert auth.connects(user, trusting=[new_pem]) is new_signs, phase
        assert auth.connects(user, trusting=[old_pem]) is not new_signs, phase
        assert auth.connects(user)  # a client that learnt the new CA at init connects throughout
        assert own_cert_signed_by(auth, new_pem) is new_signs
        assert_certificate_answers_follow_the_host_ca(auth)

    auth.rotate("host", "standby")
    assert_certificate_answers_follow_the_host_ca(auth)
    assert auth.connects(user, trusting=[new_pem])
    # the identity tctl uses on this host trusts only the new host CA and is signed by it
    saved = LocalIdentity.load(identity_dir)
    assert saved.tls_ca_pems == (new_pem.encode(),)
    ca = CAKeys.from_dict({"ssh_public_key": auth.ca("host")["ssh_public_keys"][0], "tls_cert": new_pem})
    assert signed_by(saved.tls_cert_pem, ca)
    assert auth.call(lambda c: c.ping())["host_ca_pems"] == [new_pem]


def test_rollback_restores_the_old_cas(auth: Auth) -> None:
    before = auth.status()
    old_user_keys = auth.ca("user")["ssh_public_keys"]
    old_host_pem = auth.ca("host")["tls_certs"][0]
    old_user = auth.user("carol")
    for phase in ("init", "update_clients"):
        auth.rotate("all", phase)
    new_user = auth.user("carol")
    assert not ssh_accepted(new_user, {"ssh_public_keys": old_user_keys})
    auth.rotate("all", "update_servers")
    new_host_pem = auth.ca("host")["tls_certs"][0]
    assert auth.connects(old_user, trusting=[new_host_pem])

    answer = auth.rotate("all", "rollback")
    assert {(r["type"], r["previous_phase"], r["phase"], r["mode"]) for r in answer["rotated"]} == {
        ("user", "update_servers", "rollback", "manual"), ("host", "update_servers", "rollback", "manual")}
    # the old keys sign again: new user certificates and the server's own certificate
    assert auth.ca("user")["ssh_public_keys"][0] == old_user_keys[0]
    assert ssh_accepted(auth.user("carol"), {"ssh_public_keys": old_user_keys})
    assert auth.connects(old_user, trusting=[old_host_pem])
    assert ssh_accepted(new_user, auth.ca("user"))  # still trusted until standby

    auth.rotate("all", "standby")
    after = auth.status()
    assert {t: s["phase"] for t, s in after["cas"].items()} == {"user": "standby", "host": "standby"}
    assert after["cas"]["user"]["last_rotated"] is None  # a rollback is not a rotation
    assert auth.ca("user")["ssh_public_keys"] == old_user_keys
    assert auth.ca("host")["tls_certs"] == [old_host_pem]
    assert after["ca_pin"] == before["ca_pin"] and after["ca_pins"] == [before["ca_pin"]]
    assert ssh_accepted(old_user, auth.ca("user")) and auth.connects(old_user)
    assert not ssh_accepted(new_user, auth.ca("user")) and not auth.connects(new_user)
    assert [e["phase"] for e in auth.rotation_events() if e["ca_type"] == "user"] == [
        "init", "update_clients", "update_servers", "rollback", "standby"]


# -- auto rotation ------------------------------------------------------------------------------------


def test_auto_rotation_advances_through_every_phase_by_itself(auth: Auth) -> None:
    before = auth.status()
    old_user = auth.user("dave")
    answer = auth.rotate("all", mode="auto", grace_period="3s")
    started = dt.datetime.fromisoformat(answer["rotated"][0]["started"])
    assert answer["rotated"][0]["schedule"] == {
        "update_clients": (started + dt.timedelta(seconds=1)).isoformat(),
        "update_servers": (started + dt.timedelta(seconds=2)).isoformat(),
        "standby": (started + dt.timedelta(seconds=3)).isoformat(),
    }
    assert auth.connects(old_user)

    def done() -> bool:
        return all(s["phase"] == "standby" for s in auth.status()["cas"].values())

    wait_for(done, "the auto rotation to complete", timeout=15)
    events = auth.rotation_events()
    for kind in ("user", "host"):
        mine = [e for e in events if e["ca_type"] == kind]
        assert [e["phase"] for e in mine] == PHASES
        assert {(e["mode"], e["grace_period"]) for e in mine} == {("auto", "3s")}
        moved = [dt.datetime.fromisoformat(e["time"].replace("Z", "+00:00")) for e in mine[1:]]
        for when, thirds in zip(moved, (1, 2, 3), strict=True):  # not before its time
            assert when >= started + dt.timedelta(seconds=thirds) - dt.timedelta(milliseconds=5)
    after = auth.status()
    assert after["ca_pin"] != before["ca_pin"] and after["cas"]["host"]["last_rotated"]
    assert not ssh_accepted(old_user, auth.ca("user")) and not auth.connects(old_user)
    assert auth.connects(auth.user("dave"))


def test_auto_rotation_follows_the_auth_services_clock(auth: Auth) -> None:
    auth.rotate("user", mode="auto")  # the default grace period: 30h
    assert auth.status()["cas"]["user"]["phase"] == "init"
    real_now = auth.service.now

    async def jump(hours: float) -> None:
        auth.service.now = lambda: real_now() + dt.timedelta(hours=hours)
        auth.service.rotation.wake()

    try:
        auth.cluster.call(lambda: jump(10.01))
        wait_for(lambda: auth.status()["cas"]["user"]["phase"] == "update_clients", "a third of 30h")
        auth.cluster.call(lambda: jump(30.01))
        wait_for(lambda: auth.status()["cas"]["user"]["phase"] == "standby", "the end of 30h")
    finally:
        auth.service.now = real_now
    assert [e["phase"] for e in auth.rotation_events()] == PHASES


def test_a_restarted_auth_server_resumes_the_rotation_with_the_right_certificate(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with start_cluster(auth_config(data_dir)) as cluster:
        auth = Auth(cluster, data_dir)
        user = auth.user("heidi")
        for phase in ("init", "update_clients", "update_servers"):
            auth.rotate("host", phase)
        new_pem = auth.ca("host")["tls_certs"][0]
        issued = (data_dir / "keys" / "auth" / "tls.crt").read_bytes()
    with start_cluster(auth_config(data_dir)) as cluster:
        auth = Auth(cluster, data_dir)
        assert auth.status()["cas"]["host"]["phase"] == "update_servers"
        assert (data_dir / "keys" / "auth" / "tls.crt").read_bytes() == issued  # still right: reused
        assert auth.connects(user, trusting=[new_pem])
        auth.rotate("host", "standby")
        assert auth.connects(user, trusting=[new_pem]) and auth.ca("host")["tls_certs"] == [new_pem]


# -- refusals ----------------------------------------------------------------------------------------------


def test_invalid_transitions_and_requests_are_refused_with_clear_messages(auth: Auth) -> None:
    cases = [
        (("user", "update_servers"), "cannot move the user CA from standby to update_servers: next phase is init"),
        (("all", "rollback"),
         "cannot move the user CA from standby to rollback: next phase is init (no rotation is in progress)"),
        (("db", "init"), 'unknown certificate authority type "db": expected user, host, all'),
        (("user", "later"),
         'unknown rotation phase "later": expected standby, init, update_clients, update_servers, rollback'),
    ]
    for (ca_type, phase), message in cases:
        with pytest.raises(TeleportError) as caught:
            auth.rotate(ca_type, phase)
        assert str(caught.value) == message
    with pytest.raises(TeleportError, match='invalid grace period "2 days"'):
        auth.rotate("user", mode="auto", grace_period="2 days")

    auth.rotate("host", "init")
    with pytest.raises(TeleportError) as caught:
        auth.rotate("all", "init")  # the user CA could start, the host CA cannot: neither changes
    assert str(caught.value) == "cannot move the host CA from init to init: next phase is update_clients or rollback"
    assert {t: s["phase"] for t, s in auth.status()["cas"].items()} == {"user": "standby", "host": "init"}
    assert len(auth.rotation_events()) == 1

    # only those allowed to update cert_authority may rotate
    viewer = auth.user("erin", roles=("access",))

    async def rotate_as_viewer() -> None:
        creds = Credentials(viewer.client_context(), viewer, "test")
        async with AuthClient(auth.address, credentials=creds) as client:
            await client.rotate_cert_authority("host", mode="manual", phase="update_clients")

    with pytest.raises(AccessDenied, match="erin"):
        asyncio.run(rotate_as_viewer())
    assert auth.status()["cas"]["host"]["phase"] == "init"


# -- several auth servers, and hosts renewing their certificates ---------------------------------------


def test_a_change_written_by_another_auth_server_reaches_this_one_through_the_watcher(auth: Auth) -> None:
    user = auth.user("frank")
    other_events: list[AuditEvent] = []

    async def emit(event: AuditEvent) -> None:
        other_events.append(event)

    async def nothing() -> None:
        return None

    async def rotate_elsewhere(phase: str) -> None:
        other = Rotator(auth.service.backend, CLUSTER, emit=emit, on_change=nothing)  # another server's rotator
        await other.rotate(RotateRequest.parse("host", phase=phase, mode="manual"), actor="other-auth")

    for phase in ("init", "update_clients", "update_servers"):
        auth.cluster.call(lambda phase=phase: rotate_elsewhere(phase))
    new_pem = auth.ca("host")["tls_certs"][0]
    wait_for(lambda: auth.connects(user, trusting=[new_pem]), "this auth server to serve a new host certificate")
    assert [e.fields["phase"] for e in other_events] == ["init", "update_clients", "update_servers"]
    assert auth.rotation_events() == []  # the writer audits; this server only applied the changes


def test_hosts_renew_their_certificates_from_the_keys_of_the_current_phase(auth: Auth) -> None:
    public_key = keys.public_key_openssh(keys.generate_private_key("ed25519"))

    def renew() -> dict[str, Any]:
        return auth.call(lambda c: c.renew_host_certs(public_key, "authhost"))

    old_pem = auth.ca("host")["tls_certs"][0]
    auth.rotate("host", "init")
    new_pem = auth.ca("host")["tls_certs"][1]
    for phase, signer in [("init", old_pem), ("update_clients", old_pem), ("update_servers", new_pem)]:
        if phase != "init":
            auth.rotate("host", phase)
        answer = renew()
        assert answer["host_uuid"] == auth.service.host_uuid
        assert answer["rotation"]["host"]["phase"] == phase and len(answer["host_ca_pems"]) == 2
        ca = CAKeys.from_dict({"ssh_public_key": auth.ca("host")["ssh_public_keys"][0], "tls_cert": signer})
        assert signed_by(answer["tls_cert"], ca), phase
        host = identity_from_tls_cert(answer["tls_cert"], [auth.service.host_ca])
        assert (host.name, host.roles) == (f"{auth.service.host_uuid}.{CLUSTER}", ("Auth",))

    user = auth.user("grace")

    async def renew_as_user() -> None:
        creds = Credentials(user.client_context(), user, "test")
        async with AuthClient(auth.address, credentials=creds) as client:
            await client.renew_host_certs(public_key, "authhost")

    with pytest.raises(AccessDenied, match='access denied to user "grace": only a host renews its own host'):
        asyncio.run(renew_as_user())


# -- tctl ----------------------------------------------------------------------------------------------------


def tctl_argv() -> list[str]:
    """``tctl`` (through ``tctl auth``); registers ``rotate`` with ``tctl auth`` first if it is not yet."""
    code = (
        "import sys\n"
        "from teleport_auth import tctl_auth, tctl_rotate\n"
        "tctl_auth.SUBCOMMANDS.setdefault('rotate', tctl_rotate.SUBCOMMAND)\n"
        "from teleport_core.cli.tctl import main\n"
        "sys.exit(main())\n"
    )
    return [sys.executable, "-c", code]


def test_tctl_auth_rotate(auth: Auth, tmp_path: Path) -> None:
    config = tmp_path / "teleport.yaml"
    config.write_text(yaml.safe_dump(auth_config(auth.data_dir)))
    env = {**os.environ, "NO_COLOR": "1"}

    def tctl(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [*tctl_argv(), *args, "-c", str(config), "--auth-server", auth.address]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)

    def ca_pin_line() -> str:
        status = tctl("status")
        assert status.returncode == 0, status.stderr
        return next(line for line in status.stdout.splitlines() if line.startswith("CA pin"))

    pin_before = ca_pin_line()
    done = tctl("auth", "rotate", "--type=user", "--manual", "--phase=init")
    assert (done.returncode, done.stdout) == (0, "Updated rotation phase to \"init\". To check status use 'tctl status'\n")
    status = tctl("status")
    user_line = next(line for line in status.stdout.splitlines() if line.startswith("User CA"))
    assert "init" in user_line and "manual" in user_line, status.stdout

    refused = tctl("auth", "rotate", "--type=user", "--manual", "--phase=update_servers")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "ERROR: cannot move the user CA from init to update_servers: next phase is update_clients or rollback")
    bad = tctl("auth", "rotate", "--grace-period=soon")
    assert bad.returncode == 1 and "--grace-period" in bad.stderr

    started = tctl("auth", "rotate", "--type=host", "--grace-period=0")
    assert (started.returncode, started.stdout) == (
        0, "Initiated certificate authority rotation. To check status use 'tctl status'\n")

    def host_rotated() -> bool:
        try:
            return auth.status()["cas"]["host"]["phase"] == "standby"
        except AuthenticationFailed:  # read the auth identity just before a zero grace period replaced its CA
            return False

    wait_for(host_rotated, "the zero grace period rotation")
    assert ca_pin_line() != pin_before
    assert auth.status()["cas"]["user"]["phase"] == "init"
    assert [(e["ca_type"], e["phase"]) for e in auth.rotation_events()] == [
        ("user", "init"), ("host", "init"), ("host", "update_clients"), ("host", "update_servers"),
        ("host", "standby")]
