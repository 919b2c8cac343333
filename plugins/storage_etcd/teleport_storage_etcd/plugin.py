"""Registers the etcd cluster-state backend (``teleport.storage.type: etcd``)."""

from __future__ import annotations

from teleport_core import hookimpl
from teleport_core.specs import BackendSpec


@hookimpl
def teleport_storage_backends() -> list[BackendSpec]:
    """The ``etcd`` backend: shared cluster state for several auth servers."""
    return [
        BackendSpec(
            name="etcd",
            factory="teleport_storage_etcd.backend:open_backend",
            parse_options="teleport_storage_etcd.config:parse_options",
            description="etcd v3 cluster (peers, prefix, TLS); several auth servers share it",
        )
    ]
