"""Schemathesis against a running server's own OpenAPI document (test-only: needs
``schemathesis`` from the ``test`` extra).

:func:`fuzz` generates requests for every operation of the document, valid ones (positive) and
invalid ones (negative), a bounded number each, sends them over real (mutual) TLS and checks
each answer: never a 5xx, never a dropped connection, and the status code, content type and
body as the document declares them. Examples are derandomized, so a run is repeatable.

::

    report = fuzz(doc, "https://127.0.0.1:3025", cert=("tls.crt", "key.pem"), max_examples=8)
    assert report.ok, report.summary()

Generating the examples takes most of a run's CPU (schemathesis' strategies, not the requests):
:func:`fuzz_each` sends every generated request as each of several clients (identities), so the
examples are generated once for all of them.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Collection, Mapping
from typing import Any

import attrs
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schemathesis.serializer("application/x-asciicast", "application/octet-stream")
def _raw_bytes(ctx: Any, value: Any) -> bytes:
    """A recording upload's body: bytes as generated, anything else as its JSON text."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogatepass")
    return json.dumps(value).encode()


@attrs.define
class FuzzReport:
    """What a run did: operations covered, requests sent, 5xx answers, and every failure seen."""

    operations: int = 0
    requests: int = 0
    server_errors: int = 0
    statuses: dict[int, int] = attrs.field(factory=dict)
    #: what the run reached: (``METHOD path``, generation mode, status) triples
    outcomes: set[tuple[str, str, int]] = attrs.field(factory=set)
    failures: list[str] = attrs.field(factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.server_errors == 0 and not self.failures

    def summary(self) -> str:
        statuses = dict(sorted(self.statuses.items()))
        head = (f"{self.operations} operations, {self.requests} requests, {self.server_errors} 5xx, "
                f"{len(self.failures)} failures in {self.seconds:.0f} s; statuses {statuses}; "
                f"{len(self.outcomes)} distinct (operation, mode, status)")
        return "\n".join([head, *self.failures[:30]])


def _describe(case: Any) -> str:
    parts = [f"{case.method.upper()} {case.formatted_path}"]
    if case.query:
        parts.append(f"query={case.query}")
    body = getattr(case, "body", None)
    if body is not None and type(body).__name__ != "NotSet":
        with contextlib.suppress(TypeError, ValueError):
            body = json.dumps(body)[:300]
        parts.append(f"body={body}")
    return " ".join(parts)


def fuzz(doc: dict[str, Any], base_url: str, *, cert: tuple[str, str] | None = None, max_examples: int = 8,
         exclude: Collection[tuple[str, str]] = (), modes: Collection[GenerationMode] = tuple(GenerationMode),
         timeout: float = 30) -> FuzzReport:
    """Fuzz every operation of ``doc`` at ``base_url`` (``exclude``: ``(METHOD, path)`` pairs);
    ``cert`` is the client certificate and key files for mutual TLS. The server's certificate
    is not verified (the run is about what the server answers, not who it is)."""
    return fuzz_each(doc, base_url, {"": cert}, max_examples=max_examples, exclude={"": exclude}, modes=modes,
                     timeout=timeout)[""]


def fuzz_each(doc: dict[str, Any], base_url: str, certs: Mapping[str, tuple[str, str] | None], *,
              max_examples: int = 8, exclude: Mapping[str, Collection[tuple[str, str]]] | None = None,
              modes: Collection[GenerationMode] = tuple(GenerationMode), timeout: float = 30) -> dict[str, FuzzReport]:
    """:func:`fuzz` as each client of ``certs`` (a name: its certificate and key files, or None for
    none), one report each. Every generated request is sent as each client in turn (``exclude``:
    a client's operations left out), so every client gets the requests a run of its own would
    send (derandomized), while the examples are generated once."""
    schema = schemathesis.openapi.from_dict(doc)
    exclude = exclude or {}
    clients: dict[str, tuple[requests.Session, FuzzReport]] = {}
    for name, cert in certs.items():
        session = requests.Session()
        session.verify = False
        if cert is not None:
            session.cert = cert
        clients[name] = (session, FuzzReport())
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning, on every request
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]  # an unusable operation raises
            key = (operation.method.upper(), operation.path)
            taking = {name: client for name, client in clients.items() if key not in exclude.get(name, ())}
            if not taking:
                continue
            for _, report in taking.values():
                report.operations += 1
            for mode in modes:
                _run(operation, mode, base_url, list(taking.values()), max_examples, timeout)
    for _, report in clients.values():
        report.seconds = time.monotonic() - started
    return {name: report for name, (_, report) in clients.items()}


def _run(operation: Any, mode: GenerationMode, base_url: str, clients: list[tuple[requests.Session, FuzzReport]],
         max_examples: int, timeout: float) -> None:
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def send(case: Any) -> None:
        for session, report in clients:
            _send_one(case, mode, base_url, session, report, timeout)

    with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no parameters, no body)
        send()


def _send_one(case: Any, mode: GenerationMode, base_url: str, session: requests.Session, report: FuzzReport,
              timeout: float) -> None:
    report.requests += 1
    try:
        response = case.call(base_url=base_url, session=session, timeout=timeout, verify=False, cert=session.cert)
    except requests.RequestException as exc:
        report.failures.append(f"{_describe(case)}: no answer ({type(exc).__name__}: {str(exc)[:300]})")
        return
    report.statuses[response.status_code] = report.statuses.get(response.status_code, 0) + 1
    report.outcomes.add((f"{case.method.upper()} {case.path}", mode.value, response.status_code))
    if response.status_code >= 500:
        report.server_errors += 1
    try:
        case.validate_response(response, checks=CHECKS)
    except (Exception, BaseExceptionGroup) as exc:
        text = " ".join(str(exc).split())[:400]
        report.failures.append(f"{_describe(case)} ({mode.value}) -> {response.status_code}: {text}")
