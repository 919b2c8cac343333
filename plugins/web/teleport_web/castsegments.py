"""A long asciicast v2 recording as asciinema-player's *segmented* recording, so a 100 MB session
opens in the browser without loading it whole (Teleport issue 50459).

asciinema-player (3.18) plays ``{url: <index>, format: "segmented"}``: an index
``{"version": 1, "duration": s, "term": {"cols", "rows"}, "segments": [{"start": s, "url"}]}``
and, fetched when playback or a seek reaches it, each segment
``{"snapshot": {"cols", "rows", "init"}, "events": [[s, code, data], ...]}``. Playing on from one
segment to the next keeps the terminal as it is; a seek into a segment starts from its
``snapshot.init``. We cut the file at line boundaries every :data:`SEGMENT_BYTES` and rebuild a
segment's screen from the last :data:`SNAPSHOT_BYTES` of output before it (exact for line-mode
output; a full-screen program's screen is approximate until its next redraw).

The player checks the index strictly (starts strictly increasing, the first at 0, every event of a
segment in ``[start, next start)``, the last at ``duration``): :func:`build_index` cuts only
between two events of different times, and :func:`segment` keeps every time in its range.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs

from teleport_core.errors import TeleportError

#: bytes of the recording file per segment (one fetch, parsed at once by the browser)
SEGMENT_BYTES = 2 << 20
#: bytes of output before a segment replayed to rebuild its screen on a seek
SNAPSHOT_BYTES = 64 << 10


class NotPlayable(TeleportError):
    """The file is not an asciicast v2 recording with at least one event."""


@attrs.frozen
class Segment:
    start: float  # the time of its first event (0.0 for the first segment)
    offset: int  # where its first event line starts in the file
    end: int  # where the line after its last event starts (the file's size for the last)


@attrs.frozen
class CastIndex:
    cols: int
    rows: int
    duration: float  # the time of the last event
    size: int
    segments: tuple[Segment, ...]

    def document(self, segment_url: str) -> dict[str, Any]:
        """The player's index; ``segment_url`` has ``{n}`` for the segment's number."""
        return {"version": 1, "duration": self.duration, "term": {"cols": self.cols, "rows": self.rows},
                "segments": [{"start": s.start, "url": segment_url.format(n=n)} for n, s in enumerate(self.segments)]}


def _event(line: bytes) -> list[Any] | None:
    """A line's event ``[time, code, data]``; None for a line that is not one."""
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if (not isinstance(event, list) or len(event) != 3 or not isinstance(event[0], (int, float))
            or isinstance(event[0], bool) or not isinstance(event[1], str) or not isinstance(event[2], str)
            or event[0] < 0 or event[0] != event[0] or event[0] == float("inf")):
        return None
    event[0] = float(event[0])
    return event


def _last_time(file: Any, first: int, size: int) -> float | None:
    """The time of the last event line (read backwards in growing windows)."""
    window = 1 << 16
    while True:
        begin = max(first, size - window)
        file.seek(begin)
        lines = file.read(size - begin).split(b"\n")
        if begin > first:
            lines = lines[1:]  # the first may be a line's tail
        for line in reversed(lines):
            event = _event(line) if line.strip() else None
            if event is not None:
                return float(event[0])
        if begin == first:
            return None
        window *= 4


def build_index(path: Path, segment_bytes: int = SEGMENT_BYTES) -> CastIndex:
    """Cut the recording at ``path`` into segments of about ``segment_bytes`` (reads the header,
    the last event and a few lines at each cut, not the whole file)."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        try:
            header = json.loads(file.readline(1 << 20))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise NotPlayable("the recording is not an asciicast v2 file (its header is not JSON)") from None
        if not isinstance(header, dict) or header.get("version") != 2:
            raise NotPlayable("the recording is not an asciicast v2 file")
        cols, rows = header.get("width"), header.get("height")
        cols = cols if isinstance(cols, int) and 0 < cols <= 10_000 else 80
        rows = rows if isinstance(rows, int) and 0 < rows <= 10_000 else 24
        first = file.tell()
        duration = _last_time(file, first, size)
        if duration is None:
            raise NotPlayable("the recording has no output")
        cuts: list[tuple[float, int]] = [(0.0, first)]
        target = first + segment_bytes
        while target < size:
            file.seek(target - 1)
            file.readline()  # to the start of the next line
            seen: float | None = None
            event: list[Any] | None = None
            while True:
                offset = file.tell()
                line = file.readline()
                if not line:
                    break
                event = _event(line)
                if event is None:
                    continue
                if seen is None:
                    seen = event[0]  # the line before the cut may share this time: cut after it
                elif event[0] > seen:
                    break
            if not line or event is None or event[0] >= duration or event[0] <= cuts[-1][0]:
                break
            cuts.append((event[0], offset))
            target = max(offset + segment_bytes, target + segment_bytes)
    ends = [offset for _, offset in cuts[1:]] + [size]
    segments = tuple(Segment(start, offset, end) for (start, offset), end in zip(cuts, ends, strict=True))
    return CastIndex(cols, rows, duration, size, segments)


def _events(data: bytes) -> list[list[Any]]:
    return [e for e in (_event(line) for line in data.split(b"\n") if line.strip()) if e is not None]


def segment(path: Path, index: CastIndex, number: int) -> bytes:
    """Segment ``number`` of the recording as the player's JSON (``NotPlayable`` if no such segment)."""
    if not 0 <= number < len(index.segments):
        raise NotPlayable(f"segment {number}: the recording has {len(index.segments)}")
    part = index.segments[number]
    last = number == len(index.segments) - 1
    upper = index.duration if last else index.segments[number + 1].start
    with open(path, "rb") as file:
        init = ""
        if number > 0:
            begin = max(index.segments[0].offset, part.offset - SNAPSHOT_BYTES)
            file.seek(begin)
            before = file.read(part.offset - begin)
            if begin > index.segments[0].offset:
                before = before.split(b"\n", 1)[1] if b"\n" in before else b""
            init = "".join(e[2] for e in _events(before) if e[1] == "o")
        file.seek(part.offset)
        events = _events(file.read(part.end - part.offset))
    # keep the player's rules: times in [start, next start) (the last segment: up to duration), in order
    low = part.start
    for event in events:
        event[0] = min(max(event[0], low), upper)
        if not last and event[0] >= upper:
            event[0] = low
        low = event[0]
    if not events:
        events = [[part.start, "o", ""]]
    if number > 0:
        events[0][0] = part.start
    if last:
        events[-1][0] = index.duration
    snapshot = {"cols": index.cols, "rows": index.rows, "init": init}
    return json.dumps({"snapshot": snapshot, "events": events}, separators=(",", ":")).encode()
