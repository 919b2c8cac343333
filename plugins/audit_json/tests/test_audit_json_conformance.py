"""The kernel's audit-sink conformance suite against the file:// sink."""

from pathlib import Path

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
