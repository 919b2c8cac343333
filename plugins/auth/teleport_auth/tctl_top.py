"""``tctl top [DIAG_ADDR] [REFRESH]``: a live view of a process's diagnostics, as Teleport's.

It reads the process's ``/metrics`` (Prometheus text, parsed with ``prometheus_client``) and
``/readyz`` from its diagnostics address (``teleport.diag_addr`` or ``--diag-addr``; default
``127.0.0.1:3000``) every REFRESH (default 5s) and shows the figures operators watch: version,
uptime, ready services, logins, certificates, heartbeats, sessions, connections, bytes, backend
and audit latency, audit backlog. A metric the process does not export shows as ``-``. With
``--once``, or when stdout is not a terminal, it prints one snapshot and exits. It needs no
credentials: the diagnostics endpoint is the process's own, reachable where it listens.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import attrs

from teleport_auth.tctl import UsageError, command_parser
from teleport_core.cli.common import CliContext
from teleport_core.config.values import parse_duration
from teleport_core.errors import TeleportError

DEFAULT_DIAG_ADDR = "127.0.0.1:3000"
DEFAULT_REFRESH = "5s"
FETCH_TIMEOUT = 10.0
MISSING = "-"


class DiagUnreachable(TeleportError):
    """The diagnostics endpoint did not answer with metrics."""


@attrs.frozen
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@attrs.frozen
class Snapshot:
    """One scrape: every sample by name, the ``/readyz`` answer, when it was taken."""

    samples: dict[str, list[Sample]]
    ready: dict[str, Any] | None
    taken: float

    def values(self, name: str, **labels: str) -> list[float]:
        return [s.value for s in self.samples.get(name, ()) if all(s.labels.get(k) == v for k, v in labels.items())]

    def total(self, name: str, **labels: str) -> float | None:
        """The sum of ``name``'s samples matching ``labels``; None when the process exports none."""
        found = self.values(name, **labels)
        return sum(found) if found else None

    def own(self, name: str) -> float | None:
        """A per-process value of the process scraped: with auth worker processes every process
        has its own (``worker="0"`` is the leader's, the one scraped)."""
        found = self.values(name, worker="0") or self.values(name)
        return sum(found) if found else None

    def quantile(self, histogram: str, q: float) -> float | None:
        """The ``q`` quantile of a histogram (every label set merged), interpolated in its buckets."""
        buckets: dict[float, float] = {}
        for sample in self.samples.get(histogram + "_bucket", ()):
            bound = float(sample.labels.get("le", "+Inf"))
            buckets[bound] = buckets.get(bound, 0.0) + sample.value
        if not buckets:
            return None
        bounds = sorted(buckets)
        count = buckets[bounds[-1]]
        if count <= 0:
            return None
        rank, lower, below = q * count, 0.0, 0.0
        for bound in bounds:
            cumulative = buckets[bound]
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower
                share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
                return lower + (bound - lower) * share
            lower, below = bound, cumulative
        return lower


def parse_metrics(text: str) -> dict[str, list[Sample]]:
    """Prometheus text exposition -> samples by name (``prometheus_client``'s parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[Sample]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append(Sample(s.name, dict(s.labels), float(s.value)))
    except ValueError as exc:
        raise DiagUnreachable(f"the answer is not Prometheus metrics: {exc}") from None
    return out


def base_url(addr: str) -> str:
    """``127.0.0.1:3000``, ``http://127.0.0.1:3000`` or ``https://...`` -> the URL to scrape."""
    from teleport_core.config.values import parse_addr

    scheme, sep, rest = addr.strip().partition("://")
    if not sep:
        scheme, rest = "http", addr.strip()
    problem = "" if scheme in ("http", "https") else f"unknown scheme {scheme}"
    if not problem:
        try:
            return f"{scheme}://{parse_addr(rest.rstrip('/'), 3000)}"
        except ValueError as exc:
            problem = str(exc)
    raise UsageError(f'DIAG_ADDR: expected host:port or http://host:port, got "{addr}" ({problem})')


def fetch(url: str) -> Snapshot:
    """Scrape ``url``'s ``/metrics`` and ``/readyz``."""
    import httpx

    try:
        with httpx.Client(timeout=FETCH_TIMEOUT) as client:
            metrics = client.get(url + "/metrics")
            try:
                ready: dict[str, Any] | None = client.get(url + "/readyz").json()
            except ValueError:
                ready = None
    except httpx.HTTPError as exc:
        raise DiagUnreachable(f"cannot reach the diagnostics endpoint at {url}: {exc or type(exc).__name__} "
                              "(is teleport running with --diag-addr or teleport.diag_addr?)") from None
    if metrics.status_code != 200:
        raise DiagUnreachable(f"{url}/metrics answered HTTP {metrics.status_code}: is this a teleport diagnostics "
                              "address?")
    return Snapshot(parse_metrics(metrics.text), ready if isinstance(ready, dict) else None, time.time())


# -- what is shown -----------------------------------------------------------------------------------


def _count(value: float | None) -> str:
    return MISSING if value is None else f"{value:,.0f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _bytes(value: float | None) -> str:
    if value is None:
        return MISSING
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return MISSING  # pragma: no cover


def _uptime(snap: Snapshot) -> str:
    start = snap.own("process_start_time_seconds")
    if start is None:
        return MISSING
    return str(dt.timedelta(seconds=max(0, round(snap.taken - start))))


def _version(snap: Snapshot) -> str:
    for name in ("teleport_build_info", "teleport_build_info_info"):
        for sample in snap.samples.get(name, ()):
            if sample.labels.get("version"):
                return sample.labels["version"]
    return MISSING


def _ready(snap: Snapshot) -> str:
    """``/readyz``: ``all`` when the process is ready, else which services are not and why."""
    if snap.ready is None:
        return MISSING
    if snap.ready.get("status") == "ok":
        return "all"
    services = snap.ready.get("services") or {}
    waiting = [f"{name} ({state.get('reason') or 'starting'})" for name, state in sorted(services.items())
               if isinstance(state, dict) and not state.get("ready")]
    return f"not ready: {', '.join(waiting) or snap.ready.get('status', '?')}"


def _by_label(snap: Snapshot, name: str, label: str) -> str:
    groups: dict[str, float] = {}
    for sample in snap.samples.get(name, ()):
        key = sample.labels.get(label, "")
        groups[key] = groups.get(key, 0.0) + sample.value
    if not groups:
        return MISSING
    return ", ".join(f"{k or '-'} {v:,.0f}" for k, v in sorted(groups.items()))


Row = tuple[str, Callable[[Snapshot], str]]
#: the view: sections of (label, how to show it)
SECTIONS: list[tuple[str, list[Row]]] = [
    ("Process", [
        ("Version", _version),
        ("Uptime", _uptime),
        ("Ready services", _ready),
        ("Plugins loaded", lambda s: _count(s.own("teleport_plugins_loaded"))),
        ("Reload generation", lambda s: _count(s.own("teleport_reload_generation"))),
    ]),
    ("Auth", [
        ("Logins", lambda s: _count(s.total("user_login_total"))),
        ("Failed logins", lambda s: _count(s.total("failed_login_attempts_total"))),
        ("Certificates issued", lambda s: _count(s.total("teleport_certificates_issued_total"))),
        ("  by kind", lambda s: _by_label(s, "teleport_certificates_issued_total", "kind")),
        ("Heartbeats received", lambda s: _count(s.total("teleport_heartbeats_received_total"))),
        ("Connected resources", lambda s: _by_label(s, "teleport_connected_resources", "type")),
    ]),
    ("Sessions and connections", [
        ("Active sessions", lambda s: _count(s.total("teleport_sessions_active"))),
        ("Sessions started", lambda s: _count(s.total("teleport_sessions_total"))),
        ("Interactive sessions (node)", lambda s: _count(s.total("server_interactive_sessions_total"))),
        ("SSH connections (proxy)", lambda s: _count(s.total("proxy_ssh_sessions_total"))),
        ("Failed connects to nodes", lambda s: _count(s.total("failed_connect_to_node_attempts_total"))),
        ("Reverse tunnels", lambda s: _count(s.total("teleport_reverse_tunnels_connected"))),
        ("Bytes from clients (rx)", lambda s: _bytes(s.total("rx"))),
        ("Bytes to clients (tx)", lambda s: _bytes(s.total("tx"))),
        ("Heartbeats sent", lambda s: _count(s.total("teleport_heartbeats_sent_total"))),
        ("Heartbeats missed", lambda s: _count(s.total("heartbeats_missed_total"))),
    ]),
    ("Backend and audit", [
        ("Backend reads p50 / p95", lambda s: _pair(s, "backend_read_seconds")),
        ("Backend writes p50 / p95", lambda s: _pair(s, "backend_write_seconds")),
        ("Backend requests", lambda s: _count(s.total("backend_requests"))),
        ("Audit events emitted", lambda s: _count(s.total("teleport_audit_emit_events"))),
        ("Audit emit p50 / p95", lambda s: _pair(s, "teleport_audit_emit_seconds")),
        ("Audit backlog", lambda s: _count(s.total("teleport_audit_events_pending"))),
        ("Audit events failed", lambda s: _count(s.total("audit_failed_emit_events"))),
        ("Recordings pending upload", lambda s: _count(s.total("teleport_recordings_pending"))),
    ]),
]


def _pair(snap: Snapshot, histogram: str) -> str:
    p50, p95 = snap.quantile(histogram, 0.5), snap.quantile(histogram, 0.95)
    if p50 is None and p95 is None:
        return MISSING
    return f"{_seconds(p50)} / {_seconds(p95)}"


def rows(snap: Snapshot) -> list[tuple[str, list[tuple[str, str]]]]:
    """The view's text: each section's (label, value) rows."""
    return [(title, [(label, show(snap)) for label, show in section]) for title, section in SECTIONS]


def render(snap: Snapshot | None, url: str, error: str = "") -> Any:
    """The view as a ``rich`` renderable: a header and one table per section."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    when = dt.datetime.fromtimestamp(snap.taken if snap else time.time(), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts: list[Any] = [Text(f"teleport diagnostics at {url} ({when})", style="bold")]
    if error:
        parts.append(Text(f"ERROR: {error}", style="bold red"))
    if snap is not None:
        for title, section in rows(snap):
            table = Table(title=title, title_justify="left", show_header=False, expand=False, min_width=60)
            table.add_column("metric", style="cyan", no_wrap=True)
            table.add_column("value", justify="right")
            for label, value in section:
                table.add_row(label, value)
            parts.append(table)
    return Group(*parts)


def _json(snap: Snapshot) -> dict[str, dict[str, str]]:
    return {title: dict(section) for title, section in rows(snap)}


def top(argv: list[str], cli: CliContext) -> int:
    """``tctl top [DIAG_ADDR] [REFRESH] [--once] [--format=text|json]``."""
    parser = command_parser(cli, "A live view of a teleport process's diagnostics (/metrics, /readyz).")
    parser.add_argument("diag_addr", metavar="DIAG_ADDR", nargs="?", default=DEFAULT_DIAG_ADDR,
                        help=f"the process's diagnostics address (default {DEFAULT_DIAG_ADDR})")
    parser.add_argument("refresh", metavar="REFRESH", nargs="?", default=DEFAULT_REFRESH,
                        help=f"how often to refresh (default {DEFAULT_REFRESH})")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit (also when not a terminal)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="json: one snapshot as JSON")
    args = parser.parse(argv)
    url = base_url(args.diag_addr)
    try:
        refresh = parse_duration(args.refresh).total_seconds()
    except ValueError:
        raise UsageError(f'REFRESH: expected a duration like "5s" or "1m", got {json.dumps(args.refresh)}') from None
    if refresh <= 0:
        raise UsageError(f"REFRESH: must be positive, got {json.dumps(args.refresh)}")
    if args.format == "json":
        print(json.dumps(_json(fetch(url)), indent=2))
        return 0
    from rich.console import Console

    console = Console()
    if args.once or not sys.stdout.isatty():
        console.print(render(fetch(url), url))
        return 0
    return _live(console, url, refresh)


def _live(console: Any, url: str, refresh: float) -> int:
    """Redraw every ``refresh`` seconds until Ctrl-C; a failed scrape shows its error and keeps trying."""
    from rich.live import Live

    snap: Snapshot | None = fetch(url)  # a bad address fails at once, before the screen is taken
    with Live(render(snap, url), console=console, screen=True, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(refresh)
                try:
                    snap = fetch(url)
                    live.update(render(snap, url), refresh=True)
                except DiagUnreachable as exc:
                    live.update(render(snap, url, str(exc)), refresh=True)
        except KeyboardInterrupt:
            return 0

