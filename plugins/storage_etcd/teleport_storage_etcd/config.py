"""The etcd keys of ``teleport.storage`` (Teleport's names).

::

    teleport:
      storage:
        type: etcd
        peers: ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
        prefix: /teleport
        tls_cert_file: /var/lib/teleport/etcd-cert.pem
        tls_key_file: /var/lib/teleport/etcd-key.pem
        tls_ca_file: /var/lib/teleport/etcd-ca.pem
        insecure: false            # skip verifying the server certificate
        username: teleport         # etcd user authentication (with password_file)
        password_file: /var/lib/teleport/etcd-pass
        dial_timeout: 5s
        etcd_max_client_msg_size_bytes: 15728640   # refuse larger writes before sending them
"""

from __future__ import annotations

import datetime as dt
import pathlib
import urllib.parse

import attrs

from teleport_core.config.reader import SectionReader, show

DEFAULT_PREFIX = "/teleport"
DEFAULT_DIAL_TIMEOUT = dt.timedelta(seconds=5)


@attrs.frozen
class EtcdOptions:
    """Parsed etcd settings. ``peers`` are base URLs (``http(s)://host:port``); a bare
    ``host:port`` in the config means ``https://`` when TLS files are set, else ``http://``."""

    peers: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    tls_cert_file: pathlib.Path | None = None
    tls_key_file: pathlib.Path | None = None
    tls_ca_file: pathlib.Path | None = None
    insecure: bool = False
    username: str | None = None
    password_file: pathlib.Path | None = None
    dial_timeout: dt.timedelta = DEFAULT_DIAL_TIMEOUT
    max_client_msg_size_bytes: int | None = None


def _peer_url(reader: SectionReader, key: str, value: str, tls: bool) -> str:
    if "://" not in value:  # a bare host:port, as etcd's own clients accept it
        value = f"{'https' if tls else 'http'}://{value}"
    try:
        parsed = urllib.parse.urlsplit(value)
    except ValueError as exc:
        raise reader.error(key, f'expected a URL like "https://host:2379", got {show(value)} ({exc})') from None
    problem = ""
    if parsed.scheme not in ("http", "https"):
        problem = "the scheme must be http or https"
    elif not parsed.hostname:
        problem = "it has no host"
    else:
        try:
            port = parsed.port
        except ValueError:
            problem = "its port is not a number from 0 to 65535"
        else:
            if port is None:
                problem = "it has no port"
            elif parsed.path not in ("", "/") or parsed.query or parsed.fragment:
                problem = "it must be just scheme://host:port"
    if problem:
        raise reader.error(key, f'expected a URL like "https://host:2379", got {show(value)} ({problem})')
    return f"{parsed.scheme}://{parsed.netloc}"


def parse_options(reader: SectionReader) -> EtcdOptions:
    """Read and check the etcd keys of ``teleport.storage``."""
    peers_raw = reader.strings("peers")
    if not peers_raw:
        raise reader.error("peers", 'required: expected a list of etcd URLs like ["https://host:2379"]')
    cert = reader.path_value("tls_cert_file", None)
    key = reader.path_value("tls_key_file", None)
    ca = reader.path_value("tls_ca_file", None)
    tls = cert is not None or ca is not None
    peers = tuple(_peer_url(reader, f"peers[{i}]", peer, tls) for i, peer in enumerate(peers_raw))
    if (cert is None) != (key is None):
        missing = "tls_key_file" if key is None else "tls_cert_file"
        raise reader.error(missing, "required when the other of tls_cert_file/tls_key_file is set")
    prefix = reader.string("prefix", DEFAULT_PREFIX)
    insecure = reader.boolean("insecure", False)
    username = reader.string("username", None)
    password_file = reader.path_value("password_file", None)
    if (username is None) != (password_file is None):
        missing = "password_file" if password_file is None else "username"
        raise reader.error(missing, "required when the other of username/password_file is set")
    dial_timeout = reader.duration("dial_timeout", DEFAULT_DIAL_TIMEOUT)
    if dial_timeout <= dt.timedelta(0):
        raise reader.error("dial_timeout", "must be positive")
    max_size = reader.integer("etcd_max_client_msg_size_bytes", None, minimum=1)
    return EtcdOptions(
        peers=peers,
        prefix=prefix,
        tls_cert_file=cert,
        tls_key_file=key,
        tls_ca_file=ca,
        insecure=insecure,
        username=username,
        password_file=password_file,
        dial_timeout=dial_timeout,
        max_client_msg_size_bytes=max_size,
    )
