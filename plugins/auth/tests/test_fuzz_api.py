"""Schemathesis against a running auth server's own ``/v1/openapi.json``: with the admin
identity (the auth server's own, role Admin) and with a read-only user (list/read rules only).
Any 5xx, dropped connection, or answer that breaks the declared status codes or schemas fails.

The run is bounded (a few derandomized examples per operation and generation mode, valid and
invalid); its figures are printed (``-s``) and recorded in docs/testing.md. One run sends each
generated request as both identities (``fuzz_each``: generating the examples is most of the CPU,
so they are generated once); each test checks its identity's report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.files import write_private
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.fuzzing import FuzzReport, fuzz_each

pytestmark = pytest.mark.slow  # minutes on a loaded machine: scheduled among the first files
CLUSTER = "example.com"
READER_ROLE = {"kind": "role", "version": "v7", "metadata": {"name": "fuzz-reader"},
               "spec": {"allow": {"rules": [{"resources": ["*"], "verbs": ["list", "read"]}]}}}
# a rotation started by the fuzzer would replace the CAs under the run: it is fuzzed read-only
ADMIN_EXCLUDE = {("POST", "/v1/cas/{ca_type}/rotate")}
MAX_EXAMPLES = 12


class Auth:
    def __init__(self, root: Path, handle: Any) -> None:
        self.root = root
        self.addr = handle.process.services["auth_service"].address
        self.url = f"https://{self.addr}"

    def run(self, body: Any) -> Any:
        async def main() -> Any:
            async with AuthClient(self.addr, [load_identity_dir(self.root / "keys" / "auth")]) as admin:
                return await body(admin)

        return asyncio.run(main())


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Auth]:
    root = tmp_path_factory.mktemp("fuzz-auth")
    config = {"teleport": {"data_dir": str(root), "nodename": "auth-1"},
              "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0",
                               "authentication": {"second_factor": "off"}},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        yield Auth(root, handle)


def _pair(folder: Path, cert_pem: bytes, key_pem: bytes) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    write_private(folder / "tls.crt", cert_pem)
    write_private(folder / "key.pem", key_pem)
    return str(folder / "tls.crt"), str(folder / "key.pem")


def _report(title: str, report: FuzzReport) -> None:
    print(f"\nschemathesis, auth API, {title}: {report.summary()}")


@attrs.frozen
class Run:
    doc: dict[str, Any]
    admin: FuzzReport
    reader: FuzzReport


# about 85 operations x 2 modes x 12 examples x 2 identities: minutes on a loaded 2-core machine
@pytest.fixture(scope="module")
def run(auth: Auth, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The fuzz run, as the admin identity (the auth server's own) and as the read-only user."""
    folder = tmp_path_factory.mktemp("fuzz-certs")
    doc = auth.run(lambda admin: admin.call("GET", "/v1/openapi.json"))
    identity = LocalIdentity.load(auth.root / "keys" / "auth")
    admin_cert = _pair(folder / "admin", identity.tls_cert_pem, identity.key_pem)
    key = keys.generate_private_key("ed25519")

    async def reader(admin: AuthClient) -> dict[str, Any]:
        await admin.upsert_role(READER_ROLE)
        await admin.create_user("fuzz-reader", ["fuzz-reader"])
        return await admin.sign_user_cert("fuzz-reader", keys.public_key_openssh(key))

    signed = auth.run(reader)
    reader_cert = _pair(folder / "reader", signed["tls_cert"].encode(), keys.private_key_pem(key))
    reports = fuzz_each(doc, auth.url, {"admin": admin_cert, "reader": reader_cert}, max_examples=MAX_EXAMPLES,
                        exclude={"admin": ADMIN_EXCLUDE})
    _report("admin identity", reports["admin"])
    _report("read-only user", reports["reader"])
    return Run(doc, reports["admin"], reports["reader"])


@pytest.mark.timeout(1800)
def test_fuzz_auth_api_as_admin(auth: Auth, run: Run) -> None:
    report = run.admin
    assert report.operations >= len(run.doc["paths"]) and report.requests > 0
    assert report.ok, report.summary()
    assert auth.run(lambda admin: admin.ping())["cluster_name"] == CLUSTER  # still serving


@pytest.mark.timeout(1800)
def test_fuzz_auth_api_as_read_only_user(auth: Auth, run: Run) -> None:
    report = run.reader
    assert report.ok, report.summary()
    assert 403 in report.statuses  # the writes were refused
    roles = auth.run(lambda admin: admin.get_roles())
    assert "fuzz-reader" in {r["metadata"]["name"] for r in roles}  # and changed nothing they could not
