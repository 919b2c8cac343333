"""What a session recording shows, as plain text: what the recordings index searches.

:func:`cast_text` reads an asciicast v2 recording as a stream (one event line at a time) and feeds
its output events (``[t, "o", text]``; input, resize and marker events are skipped) to a
:class:`TextExtractor`, a small terminal model of one line:

* escape sequences are dropped: CSI (``ESC [`` ... final byte; colours, cursor keys), OSC
  (``ESC ]`` ... BEL or ``ESC \\``: window titles, hyperlinks), DCS/SOS/PM/APC strings, two- and
  three-character ``ESC`` sequences, and C1 controls (U+0080 to U+009F); a sequence split across
  events is carried over;
* ``\\r`` returns to the start of the line and what follows overwrites it (a progress bar keeps
  its last state), ``\\b`` steps back one character (a shell's line editing), ``\\t`` moves to the
  next multiple of 8, ``ESC [ K`` erases to the end of the line, ``ESC [ C`` / ``D`` / ``G`` move
  along the line;
* any vertical movement or screen erase (``ESC [ H``, ``A``, ``B``, ``J`` ...; full-screen
  programs such as ``vim`` or ``top``) ends the line, so words from different places of the
  screen are never glued together; what a full-screen program draws is indexed in the order it
  was drawn, not as a screen.

Memory is bounded whatever the recording: one event line at a time (lines longer than
:data:`MAX_EVENT_LINE` bytes are skipped), one line of text (:data:`MAX_LINE` characters, then
it is cut), and the text itself: at most :data:`MAX_TEXT` characters per recording (the first
ones; reading stops there and :attr:`TextExtractor.truncated` says so).

Why not a library: ``pyte`` (a VT100 emulator, last release 2023) reproduces screens exactly but
measured 0.7 MB/s here (a 256 MiB recording would take six minutes), keeps only the visible
screen (lines that scroll away are lost unless one overrides its internals), and a screen model
is not what a text search needs; ``strip-ansi`` / ``ansi2txt`` are regular expressions over a
whole string: no carriage returns or backspaces, no sequences split across events, no streaming.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: the most text indexed per recording (characters, the first ones)
MAX_TEXT = 1 << 20
#: a line of text is cut after this many characters (a long line of output becomes several)
MAX_LINE = 4096
#: an asciicast event line longer than this (bytes) is skipped
MAX_EVENT_LINE = 8 << 20
#: parameters of one CSI sequence kept at most (a longer one is dropped whole)
_MAX_PARAMS = 32

_GROUND, _ESC, _ESC_INTER, _CSI, _STRING, _STRING_ESC = range(6)
#: the next character that is not plain text
_SPECIAL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: where a string (OSC, DCS ...) may end
_STRING_END = re.compile(r"[\x07\x1b\x9c]")
#: a whole CSI sequence (the fast path; one split across events goes through the state machine)
_CSI_WHOLE = re.compile(r"\x1b\[([\x30-\x3f]{0,32})[\x20-\x2f]*([\x40-\x7e])")
_TAB = 8
#: CSI finals that move to another line or clear the screen: the line ends
_CSI_LINE_BREAKS = frozenset("ABEFHJdfST")
#: CSI finals that act along the line
_CSI_ALONG = frozenset("KCDG`XP")


class TextExtractor:
    """Terminal output in, plain text out (see the module docstring). Feed it with
    :meth:`feed`, then read :meth:`text`; :attr:`full` says the cap was reached."""

    def __init__(self, max_text: int = MAX_TEXT, max_line: int = MAX_LINE) -> None:
        self.max_text = max_text
        self.max_line = max_line
        self.truncated = False
        self._lines: list[str] = []
        self._size = 0
        self._line: list[str] = []  # the current line, one character per cell
        self._col = 0
        self._state = _GROUND
        self._params: list[str] = []

    @property
    def full(self) -> bool:
        """The cap is reached: what is fed from now on is ignored."""
        return self.truncated

    def feed(self, data: str) -> None:
        """Take the next piece of output (an escape sequence may continue in the next piece)."""
        pos, end = 0, len(data)
        while pos < end and not self.truncated:
            state = self._state
            if state == _GROUND:
                match = _SPECIAL.search(data, pos)
                stop = match.start() if match else end
                if stop > pos:
                    self._put(data[pos:stop])
                if match is None:
                    return
                whole = _CSI_WHOLE.match(data, stop) if data[stop] == "\x1b" else None
                if whole is not None:
                    self._csi(whole.group(2), whole.group(1))
                    pos = whole.end()
                    continue
                self._control(data[stop])
                pos = stop + 1
            elif state == _STRING:
                match = _STRING_END.search(data, pos)
                if match is None:
                    return
                char = match.group()
                self._state = _STRING_ESC if char == "\x1b" else _GROUND
                pos = match.end()
            else:
                self._escape(data[pos])
                pos += 1

    def _escape(self, char: str) -> None:
        """One character inside an escape sequence."""
        code = ord(char)
        state = self._state
        if state == _STRING_ESC:  # ESC \ ends the string; any other ESC x ends it too
            self._state = _GROUND if char == "\\" else _STRING
            return
        if code == 0x1B:  # ESC inside a sequence starts a new one
            self._state, self._params = _ESC, []
            return
        if code == 0x18 or code == 0x1A:  # CAN, SUB cancel
            self._state = _GROUND
            return
        if state == _ESC:
            if char == "[":
                self._state, self._params = _CSI, []
            elif char in "]PX^_":
                self._state = _STRING
            elif 0x20 <= code <= 0x2F:
                self._state = _ESC_INTER
            else:  # ESC 7, ESC M, ESC = ...: done
                self._state = _GROUND
                if char in "MDEc":  # reverse index, index, next line, reset: the line ends
                    self._newline()
        elif state == _ESC_INTER:
            if not 0x20 <= code <= 0x2F:
                self._state = _GROUND
        elif state == _CSI:
            if 0x40 <= code <= 0x7E:
                self._state = _GROUND
                self._csi(char, "".join(self._params))
            elif code < 0x20:  # a control inside CSI acts as itself
                self._control(char)
            elif len(self._params) < _MAX_PARAMS:
                self._params.append(char)

    def _control(self, char: str) -> None:
        """A C0 or C1 control character in ground state."""
        if char == "\n" or char == "\x0b" or char == "\x0c":
            self._newline()
        elif char == "\r":
            self._col = 0
        elif char == "\b":
            self._col = max(0, self._col - 1)
        elif char == "\t":
            self._move((self._col // _TAB + 1) * _TAB)
        elif char == "\x1b":
            self._state = _ESC
        elif char == "\x9b":
            self._state, self._params = _CSI, []
        elif char in "\x90\x98\x9d\x9e\x9f":
            self._state = _STRING
        # other controls (BEL, NUL, C1 ...) show nothing

    def _csi(self, final: str, params: str) -> None:
        if final in _CSI_LINE_BREAKS:  # another line or a cleared screen
            self._newline()
            return
        if final not in _CSI_ALONG:  # colours, modes, scrolling regions ...: nothing to show
            return
        head = params.split(";", 1)[0]
        first = int(head) if head.isdigit() else 0
        if final == "K":
            line = self._line
            if first == 0:
                del line[self._col:]
            elif first == 1:
                line[: self._col + 1] = [" "] * min(len(line), self._col + 1)
            else:
                line.clear()
        elif final == "C":
            self._move(self._col + max(1, first))
        elif final == "D":
            self._col = max(0, self._col - max(1, first))
        elif final == "G" or final == "`":
            self._move(max(1, first) - 1)
        elif final == "X":  # erase characters at the cursor
            count = max(1, first)
            line = self._line
            for index in range(self._col, min(len(line), self._col + count)):
                line[index] = " "
        elif final == "P":  # delete characters at the cursor
            del self._line[self._col:self._col + max(1, first)]

    def _move(self, col: int) -> None:
        self._col = min(col, self.max_line)

    def _put(self, text: str) -> None:
        """Plain text at the cursor (overwriting what is there)."""
        line, col = self._line, self._col
        while text:
            room = self.max_line - col
            if room <= 0:
                self._newline()
                line, col = self._line, 0
                continue
            piece, text = text[:room], text[room:]
            if col == len(line):
                line.extend(piece)
            else:
                if col > len(line):
                    line.extend(" " * (col - len(line)))
                line[col:col + len(piece)] = piece
            col += len(piece)
        self._col = col

    def _newline(self) -> None:
        """The current line is done: keep it (trailing blanks dropped), start an empty one."""
        text = "".join(self._line).rstrip()
        self._line.clear()
        self._col = 0
        if not text and (not self._lines or not self._lines[-1]):
            return  # runs of empty lines become one
        room = self.max_text - self._size
        if len(text) + 1 > room:
            if room > 1:
                self._lines.append(text[: room - 1])
                self._size = self.max_text
            self.truncated = True
            return
        self._lines.append(text)
        self._size += len(text) + 1

    def text(self) -> str:
        """What was shown so far (the line in progress included), lines joined by ``\\n``."""
        if self._line and not self.truncated:
            self._newline()
        return "\n".join(self._lines).strip("\n")


def output_events(source: BinaryIO, max_line: int = MAX_EVENT_LINE) -> Iterator[str]:
    """The output (``"o"``) data of an asciicast v2 stream, in order. A first line that is not an
    asciicast v2 header raises ``ValueError``; a malformed or oversized event line is skipped."""
    header = source.readline(max_line)
    try:
        parsed = json.loads(header)
    except ValueError:
        raise ValueError("not an asciicast v2 recording (its first line is not JSON)") from None
    if not isinstance(parsed, dict) or parsed.get("version") != 2:
        raise ValueError('not an asciicast v2 recording (the header lacks "version": 2)')
    while True:
        line = source.readline(max_line)
        if not line:
            return
        if not line.endswith(b"\n") and len(line) >= max_line:  # too long: skip to its end
            while line and not line.endswith(b"\n"):
                line = source.readline(max_line)
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, list) and len(event) == 3 and event[1] == "o" and isinstance(event[2], str):
            yield event[2]


def cast_text(path: Path, max_text: int = MAX_TEXT) -> tuple[str, bool]:
    """The text a recording shows (at most ``max_text`` characters) and whether it was cut there.
    Blocking: run it in a thread. ``ValueError`` when the file is not asciicast v2."""
    extractor = TextExtractor(max_text)
    with open(path, "rb") as source:
        for data in output_events(source):
            extractor.feed(data)
            if extractor.full:
                break
    return extractor.text(), extractor.truncated
