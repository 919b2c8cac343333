"""Schemathesis against the proxy web API's own OpenAPI document (``/v1/webapi/openapi.json``),
on a cluster of its own (the fuzzer's failed logins must not rate-limit other tests): without
a client certificate, and with a user's certificate (the routes under ``/v1/webapi/sites``).
Any 5xx, dropped connection, or answer that breaks the declared status codes or schemas fails.
One run sends each generated request both ways (``fuzz_each``: generating the examples is most
of the CPU, so they are generated once); each test checks its own report."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
import pytest
from proxy_helpers import CLUSTER, LOGIN, Env, running_env

from teleport_core.files import write_private
from teleport_core.pki import keys
from teleport_core.testing.fuzzing import FuzzReport, fuzz_each

# minutes on a loaded machine: scheduled among the first files; the first test's setup runs both fuzzers
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
MAX_EXAMPLES = 25
DOC = "/v1/webapi/openapi.json"


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory) as e:
        yield e


def _document(env: Env) -> dict[str, Any]:
    with env.web_client() as web:
        answer = web.get(DOC)
    assert answer.status_code == 200, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


def _report(title: str, report: FuzzReport) -> None:
    print(f"\nschemathesis, proxy web API, {title}: {report.summary()}")


@attrs.frozen
class Run:
    doc: dict[str, Any]
    cert: tuple[str, str]
    anonymous: FuzzReport
    user: FuzzReport


@pytest.fixture(scope="module")
def run(fuzz_env: Env, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The fuzz run, without a client certificate and with a user's certificate."""
    doc = _document(fuzz_env)
    key = keys.generate_private_key("ed25519")

    async def sign() -> dict[str, Any]:
        async with fuzz_env.admin() as admin:
            await admin.create_user("fuzz-user", ["dev"], {"logins": [LOGIN]})
            return await admin.sign_user_cert("fuzz-user", keys.public_key_openssh(key))

    signed = asyncio.run(sign())
    folder = tmp_path_factory.mktemp("fuzz-user")
    write_private(folder / "tls.crt", signed["tls_cert"].encode())
    write_private(folder / "key.pem", keys.private_key_pem(key))
    cert = (str(folder / "tls.crt"), str(folder / "key.pem"))
    reports = fuzz_each(doc, f"https://{fuzz_env.web}", {"anonymous": None, "user": cert}, max_examples=MAX_EXAMPLES)
    _report("no client certificate", reports["anonymous"])
    _report("user certificate", reports["user"])
    return Run(doc, cert, reports["anonymous"], reports["user"])


def test_fuzz_web_api_anonymous(fuzz_env: Env, run: Run) -> None:
    report = run.anonymous
    assert report.operations >= len(run.doc["paths"]) and report.ok, report.summary()
    with fuzz_env.web_client() as web:
        assert web.get("/webapi/ping").json()["cluster_name"] == CLUSTER  # still serving


def test_fuzz_web_api_as_user(fuzz_env: Env, run: Run) -> None:
    report = run.user
    assert report.ok, report.summary()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the proxy's self-signed certificate
    context.load_cert_chain(*run.cert)
    with httpx.Client(base_url=f"https://{fuzz_env.web}", verify=context) as web:
        assert web.get(f"/v1/webapi/sites/{CLUSTER}/nodes").status_code == 200  # the user is still served
