"""Run the kernel's audit-sink conformance suite against the SQLite sink, plus its own checks."""

import asyncio
import stat

import pytest

from teleport_core.errors import ConfigError
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_audit_sink
from teleport_core.testing.audit_suite import AuditSinkConformance


class TestSqliteAuditSink(AuditSinkConformance):
    @pytest.fixture
    def teleport_audit_uri(self, tmp_path):
        return f"sqlite://{tmp_path}/audit.db"


@pytest.mark.parametrize("uri", ["sqlite://relative/audit.db", "sqlite:audit.db", "sqlite:///tmp/a.db?mode=ro"])
def test_bad_uri_is_a_config_error(tmp_path, uri):
    with pytest.raises(ConfigError, match="expected sqlite:///absolute/path/"):
        asyncio.run(open_audit_sink(make_plugins(), uri, tmp_path))


def test_database_is_private(tmp_path):
    sink = asyncio.run(open_audit_sink(make_plugins(), f"sqlite://{tmp_path}/audit.db", tmp_path))
    asyncio.run(sink.close())
    assert stat.S_IMODE((tmp_path / "audit.db").stat().st_mode) == 0o600
