"""The kernel's SSH algorithm lists (teleport_core/net/sshalgos.py) on plain paramiko transports,
and the real OpenSSH client negotiating with a paramiko server they configure. The cluster tests
(our proxy and node against OpenSSH with defaults and hardening-guide lists, per algorithm family)
are plugins/proxy/tests/test_hardened_openssh.py."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import paramiko
import pytest

from teleport_core.net import sshalgos
from teleport_core.testing.sockets import tcp_server


def test_configure_offers_the_standard_names_and_nothing_weak() -> None:
    a, b = socket.socketpair()
    transport = paramiko.Transport(a)
    try:
        sshalgos.configure(transport)
        options = transport.get_security_options()
        assert "curve25519-sha256" in options.kex and "curve25519-sha256@libssh.org" in options.kex
        assert options.kex.index("curve25519-sha256") < options.kex.index("curve25519-sha256@libssh.org")
        assert not any("sha1" in k or "group-exchange" in k for k in options.kex)
        assert not any("cbc" in c for c in options.ciphers) and options.ciphers[0] == "aes128-gcm@openssh.com"
        assert not any("sha1" in m or "md5" in m for m in options.digests)
        assert options.digests[0] == "hmac-sha2-256-etm@openssh.com"
        # the alias is this transport's own: paramiko's class table is untouched
        assert "curve25519-sha256" not in paramiko.Transport._kex_info
        server_only = paramiko.Transport(b)
        sshalgos.configure(server_only, ciphers=sshalgos.AEAD_CIPHERS, key_types=["ssh-ed25519"])
        assert server_only.get_security_options().ciphers == sshalgos.AEAD_CIPHERS
        assert server_only.get_security_options().key_types == ("ssh-ed25519",)
        server_only.close()
    finally:
        transport.close()
        a.close()
        b.close()


class _NoAuth(paramiko.ServerInterface):  # type: ignore[misc]
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"


@pytest.fixture
def paramiko_server() -> Iterator[tuple[int, list[paramiko.Transport]]]:
    """A paramiko SSH server configured by sshalgos (no login succeeds): (port, its transports)."""
    key = paramiko.ECDSAKey.generate()
    transports: list[paramiko.Transport] = []

    def serve(conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        sshalgos.configure(transport, key_types=[key.get_name()])
        transport.add_server_key(key)
        transports.append(transport)
        try:
            transport.start_server(event=threading.Event(), server=_NoAuth())
        except (paramiko.SSHException, EOFError):
            transport.close()

    with tcp_server(serve) as port:
        yield port, transports
    for transport in transports:
        transport.close()


def test_a_paramiko_client_may_ask_for_the_rfc_name_only(paramiko_server: tuple[int, list[paramiko.Transport]]) -> None:
    port, _transports = paramiko_server
    client = paramiko.Transport(socket.create_connection(("127.0.0.1", port)))
    try:
        sshalgos.register_aliases(client)
        client.get_security_options().kex = ["curve25519-sha256"]
        client.start_client(timeout=30)  # raises when no key exchange is common
        assert client.is_active() and client.get_remote_server_key().get_name() == "ecdsa-sha2-nistp256"
        assert client.get_security_options().kex == ("curve25519-sha256",)  # the only one it offered
    finally:
        client.close()


@pytest.mark.parametrize(("kex", "cipher", "mac"), [
    ("curve25519-sha256", "aes256-gcm@openssh.com", "<implicit>"),
    ("curve25519-sha256@libssh.org", "aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("diffie-hellman-group16-sha512", "aes256-ctr", "hmac-sha2-512"),
])
def test_openssh_negotiates_each_with_a_configured_server(paramiko_server: tuple[int, list[paramiko.Transport]],
                                                          kex: str, cipher: str, mac: str) -> None:
    if not shutil.which("ssh"):
        pytest.skip("OpenSSH ssh is not installed")
    port, _transports = paramiko_server
    result = subprocess.run(
        ["ssh", "-vv", "-F", "/dev/null", "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", f"KexAlgorithms={kex}", "-o", f"Ciphers={cipher}",
         "-o", f"MACs={'hmac-sha2-256-etm@openssh.com' if mac == '<implicit>' else mac}", "-o", "IdentityAgent=none", "-o", "IdentityFile=/dev/null", "nobody@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60, check=False)
    assert re.search(rf"kex: algorithm: {re.escape(kex)}\n", result.stderr), result.stderr[-2000:]
    assert f"server->client cipher: {cipher} MAC: {mac} " in result.stderr
    assert "Permission denied" in result.stderr  # key exchange done; the (absent) login refused
