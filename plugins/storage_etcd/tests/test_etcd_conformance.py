"""The kernel's backend conformance suite against a real etcd."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from etcd_server import EtcdMember, etcd_fixture

from teleport_core.testing.backend_suite import BackendConformance
from teleport_core.testing.recording_index_suite import NoRecordingIndexConformance


class TestEtcdConformance(BackendConformance):
    config_typo = ("peer", "peers")

    @pytest.fixture
    def teleport_backend_config(self, tmp_path: Path, etcd: EtcdMember) -> dict[str, Any]:
        return {"type": "etcd", "peers": [etcd.url], "prefix": f"/test-{uuid.uuid4().hex}"}


class TestEtcdNoRecordingIndex(NoRecordingIndexConformance):
    reason_contains = "etcd"

    @pytest.fixture
    def teleport_backend_config(self, etcd: EtcdMember) -> dict[str, Any]:
        return {"type": "etcd", "peers": [etcd.url], "prefix": f"/test-{uuid.uuid4().hex}"}


__all__ = ["etcd_fixture"]  # the session etcd fixture, imported for pytest
