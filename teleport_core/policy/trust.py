"""Trusted clusters: the leaf's ``trusted_cluster`` resource and the root's ``remote_cluster``.

On the leaf (``tctl create -f tc.yaml``)::

    kind: trusted_cluster
    version: v2
    metadata: {name: root.example.com}        # the ROOT cluster's name
    spec:
      enabled: true
      token: <the root's trusted_cluster join token>
      web_proxy_addr: root.example.com:3080   # the root proxy's web port (the handshake)
      tunnel_addr: root.example.com:3024      # the root's reverse tunnel port
      role_map: [{remote: admin, local: [access]}]   # teleport_core.policy.rolemap
      ca_pin: sha256:...                      # optional: the root's host CA, checked on the handshake

On the root, auth records each leaf that joined as a ``remote_cluster`` (``tctl get rc``)::

    kind: remote_cluster
    version: v3
    metadata: {name: leaf.example.com, labels: {env: prod}}   # the join token's labels
    status: {connection: online, last_heartbeat: <RFC 3339>}
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from teleport_core.errors import ConfigError
from teleport_core.policy.rolemap import InvalidRoleMap, RoleMapping, parse_role_map, role_map_to_list

TRUSTED_KIND = "trusted_cluster"
TRUSTED_VERSION = "v2"
REMOTE_KIND = "remote_cluster"
REMOTE_VERSION = "v3"
ONLINE = "online"
OFFLINE = "offline"
#: a remote cluster is offline after this many missed heartbeats (Teleport: 3 keepalives)
MISSED_HEARTBEATS = 3
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_PIN = re.compile(r"sha256:[0-9a-f]{64}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9_./:*-]{1,63}")
MAX_TOKEN = 256
MAX_LABELS = 64


class InvalidTrust(ConfigError):
    """A trusted_cluster or remote_cluster document that is not valid; ``path`` names the field."""


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def check_cluster_name(name: Any, path: str = "metadata.name") -> str:
    """A cluster name (letters, digits, ``.``, ``_``, ``-``; as the CAs take it)."""
    if not isinstance(name, str) or not _CLUSTER_NAME.fullmatch(name):
        raise InvalidTrust(path, f"expected a cluster name (1-253 letters, digits, '.', '_' or '-'), got {_show(name)}")
    return name


def check_addr(value: Any, path: str) -> str:
    """``host:port`` (port 1-65535; an IPv6 host in brackets)."""
    if not isinstance(value, str) or not value:
        raise InvalidTrust(path, f"required: expected host:port, got {_show(value)}")
    host, sep, port = value.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidTrust(path, f"expected host:port, got {_show(value)}")
    return value


def check_labels(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidTrust(path, f"expected a mapping of label names to values, got {_show(value)}")
    if len(value) > MAX_LABELS:
        raise InvalidTrust(path, f"at most {MAX_LABELS} labels")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise InvalidTrust(path, f"invalid label name {_show(key)}")
        if not isinstance(item, str) or len(item) > 253 or any(ord(ch) < 32 for ch in item):
            raise InvalidTrust(f"{path}.{key}", f"expected a string label value, got {_show(item)}")
        out[key] = item
    return out


def _mapping(value: Any, path: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidTrust(path or "document", f"expected a mapping, got {_show(value)}")
    for key in value:
        if key not in keys:
            where = f"{path}.{key}" if path and isinstance(key, str) else (key if isinstance(key, str) else path)
            raise InvalidTrust(where, f"unknown key (expected one of {', '.join(keys)})")
    return value


@attrs.frozen(repr=False)
class TrustedCluster:
    """A leaf's trust in a root cluster (``name`` is the root's cluster name)."""

    name: str
    enabled: bool
    token: str
    web_proxy_addr: str
    tunnel_addr: str
    role_map: tuple[RoleMapping, ...] = ()
    ca_pin: str = ""

    def __repr__(self) -> str:  # the token is a secret
        return (f"TrustedCluster(name={self.name!r}, enabled={self.enabled!r}, token=***, "
                f"web_proxy_addr={self.web_proxy_addr!r}, tunnel_addr={self.tunnel_addr!r})")


def parse_trusted_cluster(data: Any, source: str = "") -> TrustedCluster:
    """A trusted_cluster from its resource form; :class:`InvalidTrust` naming the field otherwise."""
    try:
        doc = _mapping(data, "", ("kind", "version", "metadata", "spec"))
        if not doc:
            raise InvalidTrust("document", "expected a trusted_cluster resource")
        if doc.get("kind", TRUSTED_KIND) != TRUSTED_KIND:
            raise InvalidTrust("kind", f"expected {TRUSTED_KIND}, got {_show(doc.get('kind'))}")
        if doc.get("version", TRUSTED_VERSION) != TRUSTED_VERSION:
            raise InvalidTrust("version", f"expected {TRUSTED_VERSION}, got {_show(doc.get('version'))}")
        meta = _mapping(doc.get("metadata"), "metadata", ("name", "labels", "description", "namespace"))
        name = check_cluster_name(meta.get("name"))
        if "spec" not in doc:
            raise InvalidTrust("spec", "required: expected enabled, token, web_proxy_addr, tunnel_addr, role_map")
        spec = _mapping(doc.get("spec"), "spec", ("enabled", "token", "web_proxy_addr", "tunnel_addr", "role_map",
                                                  "ca_pin"))
        enabled = spec.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidTrust("spec.enabled", f"expected true or false, got {_show(enabled)}")
        token = spec.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN \
                or any(ord(ch) <= 32 or ord(ch) == 127 for ch in token):
            raise InvalidTrust("spec.token", "required: expected the root cluster's trusted_cluster join token")
        web = check_addr(spec.get("web_proxy_addr"), "spec.web_proxy_addr")
        tunnel_raw = spec.get("tunnel_addr")
        tunnel = check_addr(tunnel_raw, "spec.tunnel_addr") if tunnel_raw not in (None, "") else web
        pin = spec.get("ca_pin", "")
        if pin in (None, ""):
            pin = ""
        elif not isinstance(pin, str) or not _PIN.fullmatch(pin.lower()):
            raise InvalidTrust("spec.ca_pin", f"expected sha256:<64 hex digits>, got {_show(pin)}")
        try:
            role_map = parse_role_map(spec.get("role_map"), "spec.role_map")
        except InvalidRoleMap as exc:
            raise InvalidTrust(exc.path, exc.message) from None
        return TrustedCluster(name, enabled, token, web, tunnel, role_map, pin.lower())
    except InvalidTrust as exc:
        if source:
            exc.args = (f"{source}: {exc.args[0]}",)
        raise


def trusted_cluster_to_dict(tc: TrustedCluster, *, show_token: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"enabled": tc.enabled, "token": tc.token if show_token else "******",
                            "web_proxy_addr": tc.web_proxy_addr, "tunnel_addr": tc.tunnel_addr,
                            "role_map": role_map_to_list(tc.role_map)}
    if tc.ca_pin:
        spec["ca_pin"] = tc.ca_pin
    return {"kind": TRUSTED_KIND, "version": TRUSTED_VERSION, "metadata": {"name": tc.name}, "spec": spec}


def _time(value: Any, path: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidTrust(path, f"expected an RFC 3339 time, got {_show(value)}")
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidTrust(path, f"expected an RFC 3339 time, got {_show(value)}") from None
    if when.tzinfo is None:
        raise InvalidTrust(path, "expected a time with a timezone")
    return when.astimezone(dt.UTC)


def _frozen(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class RemoteCluster:
    """A leaf cluster that joined this (root) cluster: its labels (the join token's) and tunnel status."""

    name: str
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)
    last_heartbeat: dt.datetime | None = None
    created: dt.datetime | None = None

    def connection(self, now: dt.datetime, heartbeat_period: dt.timedelta) -> str:
        """online while a heartbeat came within :data:`MISSED_HEARTBEATS` periods, else offline."""
        if self.last_heartbeat is None:
            return OFFLINE
        return ONLINE if now - self.last_heartbeat <= heartbeat_period * MISSED_HEARTBEATS else OFFLINE


def remote_cluster_to_dict(rc: RemoteCluster, now: dt.datetime, heartbeat_period: dt.timedelta) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": rc.name}
    if rc.labels:
        meta["labels"] = dict(rc.labels)
    status: dict[str, Any] = {"connection": rc.connection(now, heartbeat_period)}
    if rc.last_heartbeat is not None:
        status["last_heartbeat"] = rc.last_heartbeat.isoformat()
    return {"kind": REMOTE_KIND, "version": REMOTE_VERSION, "metadata": meta, "status": status}


def remote_cluster_storage(rc: RemoteCluster) -> dict[str, Any]:
    return {"name": rc.name, "labels": dict(rc.labels),
            "last_heartbeat": rc.last_heartbeat.isoformat() if rc.last_heartbeat else "",
            "created": rc.created.isoformat() if rc.created else ""}


def parse_remote_cluster_storage(data: Any) -> RemoteCluster:
    doc = _mapping(data, "", ("name", "labels", "last_heartbeat", "created"))
    return RemoteCluster(check_cluster_name(doc.get("name"), "name"), check_labels(doc.get("labels"), "labels"),
                         _time(doc.get("last_heartbeat"), "last_heartbeat"), _time(doc.get("created"), "created"))
