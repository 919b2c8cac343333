"""Parsing of config value types shared by every section: durations and network addresses."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

import attrs

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> dt.timedelta:
    """Parse a Go duration (``30m``, ``1h0m0s``, ``1.5h``, ``300ms``, ``0``) like Teleport.

    ``ValueError`` for anything else, including bare numbers other than ``0``.
    """
    value = text.strip()
    sign = 1.0
    if value[:1] in "+-" and value:
        sign = -1.0 if value[0] == "-" else 1.0
        value = value[1:]
    if value == "0":
        return dt.timedelta(0)
    if not value:
        raise ValueError("empty duration")
    total = 0.0
    pos = 0
    while pos < len(value):
        match = _PART.match(value, pos)
        if not match:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    try:
        return dt.timedelta(seconds=sign * total)
    except OverflowError:  # more than a timedelta holds (999999999 days), or not finite
        raise ValueError(f"duration {text!r} is too long") from None


def format_duration(value: dt.timedelta) -> str:
    """Format like Go's ``Duration.String`` for whole seconds: ``1h0m0s``, ``30m0s``, ``45s``."""
    seconds = value.total_seconds()
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds == 0:
        return "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.9f}".rstrip("0").rstrip(".")
    if hours:
        return f"{sign}{int(hours)}h{int(minutes)}m{secs_text}s"
    if minutes:
        return f"{sign}{int(minutes)}m{secs_text}s"
    return f"{sign}{secs_text}s"


_HOST = re.compile(r"^[A-Za-z0-9_.*-]+$")


@attrs.frozen
class NetAddr:
    """A ``host:port`` address. IPv6 hosts are held without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def connect_host(self) -> str:
        """Where to connect for a wildcard listen address (``0.0.0.0`` -> ``127.0.0.1``)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)  # noqa: S104


def parse_addr(text: str, default_port: int | None = None) -> NetAddr:
    """Parse ``host:port``, ``[v6]:port`` or ``tcp://host:port``; with ``default_port``
    a bare host is accepted too. ``ValueError`` otherwise."""
    value = text.strip()
    if value.startswith("tcp://"):
        value = value[len("tcp://") :]
    host: str
    port_text: str
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError("unclosed '['")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after ']'")
        port_text = rest[1:]
        if ":" not in host:
            raise ValueError("brackets are for IPv6 addresses")
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif value.count(":") > 1:
        raise ValueError("IPv6 addresses need brackets: [::1]:3025")
    else:
        host, port_text = value, ""
    if not port_text:
        if default_port is None:
            raise ValueError("missing port")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"bad port {port_text!r}")
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"port {port} out of range")
    if ":" not in host and not _HOST.match(host):
        raise ValueError(f"bad host {host!r}")
    return NetAddr(host, port)


def certificate_names(addrs: Iterable[NetAddr], dns: Iterable[str] = (), ips: Iterable[str] = ()) -> tuple[
        list[str], list[str]]:
    """The DNS names and IP addresses a server's certificate should carry for ``addrs`` (plus
    the given ones); wildcard listen addresses (``0.0.0.0``, ``::``) name nothing."""
    import ipaddress

    names, addresses = set(dns), set(ips)
    for addr in addrs:
        try:
            ip = ipaddress.ip_address(addr.host)
        except ValueError:
            names.add(addr.host)
            continue
        if not ip.is_unspecified:
            addresses.add(str(ip))
    return sorted(names), sorted(addresses)
