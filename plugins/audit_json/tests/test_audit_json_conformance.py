"""The kernel's audit-sink conformance suite against the file:// sink."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from teleport_core.testing.audit_suite import AuditSinkConformance


class TestFileAuditLogConformance(AuditSinkConformance):
    @pytest.fixture
    def teleport_audit_uri(self, tmp_path: Path) -> str:
        return f"file://{tmp_path}/log?server_id=auth-1"


class TestFileAuditLogDefaultServerId(AuditSinkConformance):
    """The same with the server id taken from the host name."""

    @pytest.fixture
    def teleport_audit_uri(self, tmp_path: Path) -> str:
        return f"file://{tmp_path}/audit"


class TestStdoutAuditSinkConformance(AuditSinkConformance):
    """``stdout://`` is write-only (``searchable = False``): the suite reads what it wrote to
    standard output (captured by pytest)."""

    @pytest.fixture
    def teleport_audit_uri(self) -> str:
        return "stdout://"

    @pytest.fixture
    def teleport_audit_delivered(self, capsysbinary: pytest.CaptureFixture[bytes]) -> Callable[[], list[dict[str, Any]]]:
        lines: list[bytes] = []

        def delivered() -> list[dict[str, Any]]:
            lines.extend(capsysbinary.readouterr().out.splitlines())
            return [json.loads(line) for line in lines]

        return delivered
