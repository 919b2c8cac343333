"""``tsh recordings ls`` and ``tsh play``: session recordings through the proxy.

Both go to the proxy's web API with the profile's TLS certificate; the proxy asks auth on the
user's behalf, and auth authorizes the user (``list`` / ``read`` on ``session``, as the preset
``auditor`` role allows). tsh never touches the recordings storage itself.

Recordings are asciicast v2: a JSON header line, then one ``[seconds, "o", text]`` event per
line. ``tsh play`` replays the output with its timing on a terminal (``--speed`` scales it);
when stdout is not a terminal it writes the output at once, without the pauses, so
``tsh play SID > file`` or a pipe gets the text immediately.

``tsh recordings ls`` shows where each recording is (``uploaded``, ``pending``: not uploaded yet,
``missing``: recorded as uploaded but absent from the session storage, ``off``: not recorded);
``tsh play`` of a recording that is not there says which of these it is (auth's answer).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from teleport_core.errors import TeleportError

if TYPE_CHECKING:
    from teleport_core.cli.common import CliContext
    from teleport_core.tsh.profile import Profile

MIN_SPEED = 0.1
MAX_SPEED = 100.0
MAX_LIMIT = 1000
PLAY_FORMATS = ("text", "pty", "json", "cast")


class BadRecording(TeleportError):
    """A file that is not an asciicast v2 recording."""


# -- parsing flags ---------------------------------------------------------------------------------


def parse_speed(text: str) -> float:
    """``2``, ``2x``, ``0.5x`` -> the factor; a clear error otherwise."""
    raw = text.strip().lower().removesuffix("x")
    try:
        speed = float(raw)
    except ValueError:
        raise TeleportError(f"--speed: expected a number like 2 or 0.5x, got {text!r}") from None
    if not math.isfinite(speed) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise TeleportError(f"--speed: expected a factor from {MIN_SPEED:g} to {MAX_SPEED:g}, got {text!r}")
    return speed


def parse_utc(text: str, flag: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise TeleportError(f"{flag}: expected an RFC 3339 time like 2024-01-02T15:04:05Z, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def listing_window(from_utc: str, to_utc: str, last: str) -> tuple[dt.datetime, dt.datetime]:
    """The ``[from, to)`` window of ``tsh recordings ls`` (default: the last 24 hours)."""
    from teleport_core.config.values import parse_duration

    if last and from_utc:
        raise TeleportError("--last and --from-utc cannot be used together")
    until = parse_utc(to_utc, "--to-utc") if to_utc else dt.datetime.now(dt.UTC)
    if last:
        try:
            span = parse_duration(last)
        except ValueError:
            raise TeleportError(f"--last: expected a duration like 30m or 12h, got {last!r}") from None
        if span.total_seconds() <= 0:
            raise TeleportError(f"--last: expected a positive duration, got {last!r}")
        since = until - span
    else:
        since = parse_utc(from_utc, "--from-utc") if from_utc else until - dt.timedelta(days=1)
    if since >= until:
        raise TeleportError("--from-utc must be before --to-utc")
    return since, until


# -- talking to the proxy ----------------------------------------------------------------------------


def list_recordings(profile: Profile, since: dt.datetime, until: dt.datetime, limit: int,
                    search: str = "") -> list[dict[str, Any]]:
    from urllib.parse import urlencode

    from teleport_core.tsh.web import call

    params: dict[str, Any] = {"from": since.isoformat(), "to": until.isoformat(), "limit": limit}
    if search:
        params["search"] = search
    query = urlencode(params)
    found: list[dict[str, Any]] = call(profile.web_addr, "GET",
                                       f"/v1/webapi/sites/{profile.cluster}/events/search/sessions?{query}",
                                       insecure=profile.insecure, profile=profile)
    return found


def download(profile: Profile, sid: str, dest: Path, timeout: float = 300.0) -> None:
    """Stream the recording of ``sid`` from the proxy into ``dest``."""
    import httpx

    from teleport_core.api.client import ConnectionProblem, raise_for_status
    from teleport_core.state.sessions import check_session_id
    from teleport_core.tsh.web import tls_context

    check_session_id(sid)
    url = f"https://{profile.web_addr}/v1/webapi/sites/{profile.cluster}/sessions/{sid}/recording"
    try:
        with httpx.Client(verify=tls_context(profile.insecure, profile), timeout=timeout) as client, \
                client.stream("GET", url) as response:
            if response.status_code >= 400:
                response.read()
                raise_for_status(response)
            with open(dest, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
    except httpx.TransportError as exc:
        raise ConnectionProblem(f"proxy at {profile.web_addr}: {exc}") from None


#: seconds between reads of a followed session's recording
FOLLOW_POLL = 0.5
#: seconds a follower waits for a session auth does not know yet (its session.start on its way)
FOLLOW_UNKNOWN = 15.0
#: seconds a follower waits for more of a session that ended without its recording completing (a lost host)
FOLLOW_ENDED_GRACE = 10.0


def read_stream(profile: Profile, sid: str, offset: int, timeout: float = 60.0) -> tuple[bytes, dict[str, str]]:
    """The recording of ``sid`` from byte ``offset`` and auth's ``x-teleport-*`` headers, via the proxy."""
    import httpx

    from teleport_core.api.client import ConnectionProblem, raise_for_status
    from teleport_core.tsh.web import tls_context

    url = f"https://{profile.web_addr}/v1/webapi/sites/{profile.cluster}/sessions/{sid}/stream"
    try:
        with httpx.Client(verify=tls_context(profile.insecure, profile), timeout=timeout) as client:
            response = client.get(url, params={"offset": offset})
    except httpx.TransportError as exc:
        raise ConnectionProblem(f"proxy at {profile.web_addr}: {exc}") from None
    raise_for_status(response)
    return response.content, {k.lower(): v for k, v in response.headers.items()}


def follow(profile: Profile, sid: str, out: BinaryIO, *, raw: bool = False, poll: float = FOLLOW_POLL,
           sleep: Any = time.sleep, clock: Any = time.monotonic) -> int:
    """``tsh play --follow``: print a session's output as auth receives it (``raw``: the asciicast
    bytes), until its recording is complete (or it ended and nothing more came for
    :data:`FOLLOW_ENDED_GRACE` seconds: a host lost mid-session). Returns the bytes written."""
    from teleport_core.errors import NotFound
    from teleport_core.state.sessions import check_session_id

    check_session_id(sid)
    offset, written, pending = 0, 0, b""
    header_seen = raw
    started = last_new = clock()
    while True:
        try:
            data, headers = read_stream(profile, sid, offset)
        except NotFound:
            if offset or clock() - started > FOLLOW_UNKNOWN:
                raise
            sleep(poll)
            continue
        offset += len(data)
        if data:
            last_new = clock()
            if raw:
                out.write(data)
                written += len(data)
            else:
                pending += data
                lines = pending.split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not header_seen:
                        header_seen = True
                        continue
                    text = _event_text(line)
                    if text:
                        chunk = text.encode()
                        out.write(chunk)
                        written += len(chunk)
            out.flush()
        complete = headers.get("x-teleport-recording") == "complete"
        ended = headers.get("x-teleport-session") == "ended"
        if not data and (complete or (ended and clock() - last_new > FOLLOW_ENDED_GRACE)):
            return written
        if not data:
            sleep(poll)


def _event_text(line: bytes) -> str:
    """The output of one asciicast event line ("" for other events and blank lines)."""
    if not line.strip():
        return ""
    try:
        _stamp, kind, data = json.loads(line)
    except (ValueError, TypeError):
        raise BadRecording("the followed recording holds a line that is not an asciicast event") from None
    return str(data) if kind == "o" else ""


# -- asciicast ---------------------------------------------------------------------------------------------


def read_cast(source: BinaryIO) -> tuple[dict[str, Any], Iterator[tuple[float, str, str]]]:
    """The header and the events (time, type, data) of an asciicast v2 stream."""
    first = source.readline()
    try:
        header = json.loads(first)
    except ValueError:
        raise BadRecording("not an asciicast v2 recording (its first line is not JSON)") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise BadRecording("not an asciicast v2 recording (the header lacks \"version\": 2)")

    def events() -> Iterator[tuple[float, str, str]]:
        for number, line in enumerate(source, start=2):
            if not line.strip():
                continue
            try:
                stamp, kind, data = json.loads(line)
                yield float(stamp), str(kind), str(data)
            except (ValueError, TypeError):
                raise BadRecording(f"line {number} of the recording is not an asciicast event") from None

    return header, events()


def replay(source: BinaryIO, out: BinaryIO, *, speed: float = 1.0, timed: bool = True,
           sleep: Any = time.sleep, clock: Any = time.monotonic) -> int:
    """Write the output events of an asciicast to ``out``, pausing between them (scaled by
    ``speed``) when ``timed``; returns the bytes written."""
    _header, events = read_cast(source)
    started = clock()
    written = 0
    for stamp, kind, data in events:
        if kind != "o":
            continue
        if timed:
            delay = stamp / speed - (clock() - started)
            if delay > 0:
                sleep(delay)
        chunk = data.encode()
        out.write(chunk)
        out.flush()
        written += len(chunk)
    return written


def write_json(source: BinaryIO, out: Any) -> None:
    """``--format=json``: the recording's header and events as one JSON document."""
    header, events = read_cast(source)
    out.write("{\"header\": " + json.dumps(header) + ",\n \"events\": [")
    for index, (stamp, kind, data) in enumerate(events):
        out.write(("\n  " if index == 0 else ",\n  ") + json.dumps([stamp, kind, data]))
    out.write("\n]}\n")


# -- the commands ----------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def _when(text: str) -> str:
    from teleport_core.state.audit import parse_time

    return parse_time(text).strftime("%b %d %H:%M:%S UTC")


def _recording(session: dict[str, Any]) -> str:
    """The recording status of a listing entry (``recorded`` alone from an older auth server);
    "(partial)": a streamed recording completed as far as auth received it (its host was lost)."""
    status = str(session.get("recording", "")) or ("uploaded" if session.get("recorded") else "pending")
    return f"{status} (partial)" if session.get("recording_partial") else status


def table(sessions: list[dict[str, Any]], search: bool = False) -> list[str]:
    """The text listing: one row per session, with its recording's status (``uploaded``,
    ``pending``, ``missing`` from the session storage, ``off``); with ``search``, the text around
    the match too."""
    head: tuple[str, ...] = ("ID", "Type", "Participants", "Login", "Hostname", "Started", "Duration", "Recording")
    rows: list[tuple[str, ...]] = [
        (s["sid"], s.get("proto", "ssh"), ", ".join(s.get("participants", [])), s.get("login", ""),
         s.get("server_hostname", ""), _when(s["start"]), _duration(float(s.get("duration_seconds", 0))),
         _recording(s))
        for s in sessions]
    if search:  # the text around the match, on one line
        head = (*head, "Match")
        rows = [(*row, " ⏎ ".join(str(s.get("snippet", "")).split("\n")))
                for row, s in zip(rows, sessions, strict=True)]
    widths = [max([len(head[i]), *(len(r[i]) for r in rows)]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    return lines


def recordings(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("list recorded sessions you may replay (list on session: yours with the access role, "
                        "every one with auditor)")
    parser.add_argument("action", choices=("ls",), help="ls: list recorded sessions")
    from teleport_core.tsh import output

    output.add_format(parser)
    parser.add_argument("--from-utc", default="", help="start of the window, RFC 3339 (default: 24h ago)")
    parser.add_argument("--to-utc", default="", help="end of the window, RFC 3339 (default: now)")
    parser.add_argument("--last", default="", help="the window is this long, up to --to-utc (e.g. 2h)")
    parser.add_argument("--limit", default="50", help=f"at most this many sessions (1 to {MAX_LIMIT})")
    parser.add_argument("--search", default="", metavar="TEXT",
                        help="only sessions whose recording shows this text (a phrase, case-insensitive, 3 to 256 "
                             "characters; needs read on session too)")
    args = parser.parse_args(argv)
    if not args.limit.isdigit() or not 1 <= int(args.limit) <= MAX_LIMIT:
        raise TeleportError(f"--limit: expected a number from 1 to {MAX_LIMIT}, got {args.limit!r}")
    since, until = listing_window(args.from_utc, args.to_utc, args.last)
    from teleport_core.state.recording_index import BadSearch, search_phrase
    from teleport_core.tsh.web import current

    try:
        search = search_phrase(args.search) if args.search else ""
    except BadSearch as exc:
        raise TeleportError(f"--{exc}") from None
    sessions = list_recordings(current(args), since, until, int(args.limit), search)
    if args.format != "text":
        output.emit(sessions, args.format)
    else:
        print("\n".join(table(sessions, bool(search))))
    return 0


def play(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("replay a recorded session (read on session: yours with the access role, every one "
                        "with auditor), or a local .cast file")
    parser.add_argument("session", help="session ID (from tsh recordings ls) or the path of a .cast file")
    parser.add_argument("--speed", default="1", help=f"playback speed factor, e.g. 2 or 0.5x ({MIN_SPEED:g} to "
                        f"{MAX_SPEED:g}); timing applies when stdout is a terminal")
    parser.add_argument("--format", choices=PLAY_FORMATS, default="text",
                        help="text (pty): the output as typed; json: header and events; cast: the asciicast file")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="follow a running session (session_recording: node-sync or proxy-sync): print its "
                        "output as it arrives, until the session ends (text or cast)")
    args = parser.parse_args(argv)
    speed = parse_speed(args.speed)
    local = Path(args.session)
    if args.follow and args.format == "json":
        raise TeleportError("--follow prints the output as it arrives: use --format=text or --format=cast")
    if args.session.endswith(".cast") and local.is_file():
        if args.follow:
            raise TeleportError("--follow follows a session by its ID, not a local .cast file")
        return _play_file(local, args.format, speed)
    from teleport_core.state.sessions import InvalidSessionID, check_session_id
    from teleport_core.tsh.web import current

    try:
        check_session_id(args.session)
    except InvalidSessionID:
        raise TeleportError(f"{args.session!r} is neither a session ID nor a .cast file") from None
    profile = current(args)
    if args.follow:
        with contextlib.suppress(BrokenPipeError):
            follow(profile, args.session, sys.stdout.buffer, raw=args.format == "cast")
        return 0
    with tempfile.TemporaryDirectory(prefix="tsh-play-") as tmp:
        path = Path(tmp) / "session.cast"
        download(profile, args.session, path)
        return _play_file(path, args.format, speed)


def _play_file(path: Path, fmt: str, speed: float) -> int:
    out = sys.stdout.buffer
    with open(path, "rb") as source:
        if fmt == "cast":
            while chunk := source.read(1 << 20):
                out.write(chunk)
            out.flush()
        elif fmt == "json":
            write_json(source, sys.stdout)
        else:
            timed = os.isatty(out.fileno())
            with contextlib.suppress(BrokenPipeError):
                replay(source, out, speed=speed, timed=timed)
    return 0
