"""Reading a stored line: ``decode`` (orjson where it reads a line as the json module does)
gives exactly what ``json.loads`` + ``AuditEvent.from_dict`` give, for lines the sink wrote and
for lines anyone else did; a search returns such lines' values unchanged."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
from typing import Any

import pytest
from audit_json_helpers import BASE, EVERYTHING, emit_all, event, stored
from teleport_audit_json.lines import decode

from teleport_core.state.audit import AuditEvent, event_line


def _by_json(line: bytes) -> AuditEvent:
    """The reference: the json module alone, as the sink read lines before orjson."""
    data = json.loads(line.decode())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return AuditEvent.from_dict(data)


def _outcome(read: Any, line: bytes) -> tuple[str, str]:
    """What reading ``line`` gives, with every value's type (``repr``: 1 and 1.0 differ, NaN equals NaN);
    a refusal is any ``ValueError`` (the json module's own too deep nesting: ``RecursionError``)."""
    try:
        e = read(line)
    except (ValueError, RecursionError):
        return "refused", ""
    return "event", repr((e.event, e.code, e.uid, e.time, list(e.fields.items())))


HEAD = '{"event":"exec","code":"T3002I","uid":"u-1","time":"2024-05-01T12:00:00.000Z"'
UNUSUAL = [
    # integers past 64 bits, which orjson would make floats of
    HEAD + ',"n":18446744073709551616}',
    HEAD + ',"n":-9223372036854775809}',
    HEAD + ',"n":123456789012345678901234567890,"m":[1,{"k":99999999999999999999}]}',
    HEAD + ',"n":9223372036854775807,"m":-9223372036854775808,"u":18446744073709551615}',
    HEAD + ',"text":"a 19-digit run in a string: 1234567890123456789"}',
    # what json reads and orjson refuses
    HEAD + ',"x":NaN,"y":Infinity,"z":-Infinity}',
    HEAD + ',"x":1e400,"y":-1e400}',
    HEAD + ',"s":"\\ud800 lone","t":"\\udc00"}',
    HEAD + ',"deep":' + "[" * 1100 + "]" * 1100 + "}",
    # floats both read, correctly rounded
    HEAD + ',"f":0.1,"g":1.0000000000000000000000001,"h":5e-324,"i":-0.0,"j":1.5e-400,"k":1E5,"l":-0}',
    # strings, keys, whitespace
    HEAD + ',"s":"\\u0000\\u2028\\"\\\\/\\n","\\u00e9":"\u00e9 raw","a":1,"a":2}',
    " " + HEAD + ' ,"user" : "bob" } ',
    # not events, or not JSON
    '[1,2]', '"a string"', "null", HEAD, HEAD + ",}", '{"event":5,"code":"c","uid":"u","time":"2024-05-01T00:00:00Z"}',
    '{"event":"e","code":"c","uid":"u","time":"yesterday"}', '{"event":"e","code":"c","uid":"u"}',
    HEAD + ',"x":01}', HEAD + ',"x":"\t"}', "\ufeff" + HEAD + "}",
]


@pytest.mark.parametrize("text", UNUSUAL)
def test_decode_reads_unusual_lines_as_the_json_module_does(text: str) -> None:
    line = text.encode("utf-8", "surrogatepass")
    assert _outcome(decode, line) == _outcome(_by_json, line)


@pytest.mark.parametrize("line", [b"\xff\xfe", HEAD.encode() + b',"s":"\xc3"}', HEAD.encode() + b',"s":"\xed\xa0\x80"}'])
def test_decode_refuses_what_is_not_utf8_as_the_json_module_does(line: bytes) -> None:
    assert _outcome(decode, line) == _outcome(_by_json, line) == ("refused", "")
    with pytest.raises(ValueError, match="not JSON"):
        decode(line)


def _value(rnd: random.Random, depth: int = 0) -> Any:
    kind = rnd.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rnd.choice([0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**30,
                           rnd.randrange(-(10**25), 10**25)])
    if kind == 1:
        return rnd.choice([0.1, -0.0, 1e308, 5e-324, rnd.uniform(-1e20, 1e20), rnd.random(), float(2**70)])
    if kind == 2:
        return "".join(chr(rnd.choice([rnd.randrange(32, 127), rnd.randrange(0, 0x11000)])) for _ in range(rnd.randrange(12)))
    if kind == 3:
        return rnd.choice([True, False, None])
    if kind in (4, 5):
        return "".join(rnd.choice("0123456789") for _ in range(rnd.randrange(25)))  # digit runs in strings
    if kind in (6, 7):
        return [_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return {f"k{i}": _value(rnd, depth + 1) for i in range(rnd.randrange(4))}


def test_decode_matches_the_json_module_on_random_events() -> None:
    """Random events as the sink writes them (``event_line``), and as other writers might
    (non-ASCII kept, NaN allowed, spaces): the same event, value types included, either way."""
    rnd = random.Random(2026)
    for i in range(4000):
        fields = {f"f{j}": _value(rnd) for j in range(rnd.randrange(6))}
        e = AuditEvent("exec", "T3002I", f"uid-{i}", BASE + dt.timedelta(microseconds=rnd.randrange(10**9)), fields)
        lines = [event_line(e)[:-1]]
        if not any(isinstance(v, str) and any(0xD800 <= ord(c) < 0xE000 for c in v) for v in _strings(fields)):
            lines.append(json.dumps(e.to_dict(), ensure_ascii=False, separators=(", ", ": ")).encode())
        lines.append(json.dumps({**e.to_dict(), "nan": float("nan") if i % 2 else float("inf")}).encode())
        for line in lines:
            assert _outcome(decode, line) == _outcome(_by_json, line), line


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_a_search_returns_big_integers_and_foreign_values_unchanged(tmp_path, caplog) -> None:
    """An integer past 64 bits stays that integer (not orjson's float), NaN stays NaN, and a line
    nested deeper than json can read is skipped with a warning instead of failing the search."""
    directory = tmp_path / "log"
    uri = f"file://{directory}?server_id=auth-1"
    emit_all(uri, [event(when=BASE, user="alice", big=2**64, small=-(2**63) - 1, nested={"n": 10**30})])
    path = directory / "auth-1" / "2024-05-01.00:00:00.log"
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "exec", "code": "T3002I", "uid": "foreign", "time": "2024-05-01T12:00:01.000Z",
                            "user": "alice", "x": float("nan"), "n": 12345678901234567890123}) + "\n")
        f.write('{"event":"exec","code":"T3002I","uid":"deep","time":"2024-05-01T12:00:02.000Z","d":'
                + "[" * 100_000 + "]" * 100_000 + "}\n")
    caplog.set_level(logging.WARNING, logger="teleport.audit")
    found = stored(uri, EVERYTHING)
    assert [e["uid"] for e in found][1:] == ["foreign"]
    first, foreign = found
    assert (type(first["big"]), first["big"], first["small"], first["nested"]) == (int, 2**64, -(2**63) - 1, {"n": 10**30})
    assert foreign["n"] == 12345678901234567890123 and type(foreign["n"]) is int
    assert foreign["x"] != foreign["x"]  # NaN
    assert f"{path} line 3 is not a valid event" in caplog.text


def test_search_lines_are_the_stored_lines(tmp_path) -> None:
    """``search_lines`` hands out each line as it is stored (the bytes the sink wrote, and another
    writer's line with its spacing, big integers and NaN as written), except a ``time`` not written
    as ours are, which is written again; every line reads as what ``search`` returns."""
    from audit_json_helpers import with_sink

    directory = tmp_path / "log"
    uri = f"file://{directory}?server_id=auth-1"
    ours = [event(when=BASE + dt.timedelta(milliseconds=i), user="alice", n=i, text="naïve ✓ \u2028") for i in range(3)]
    emit_all(uri, ours)
    path = directory / "auth-1" / "2024-05-01.00:00:00.log"
    written = path.read_bytes().splitlines()
    foreign = [
        b'{"event": "exec", "code": "T3002I", "uid": "spaced", "time": "2024-05-01T12:00:01.000Z", "x": NaN, '
        b'"n": 12345678901234567890123}',
        b'{"event":"exec","code":"T3002I","uid":"no-ms","time":"2024-05-01T12:00:02Z","user":"alice"}',
        b'{"event":"exec","code":"T3002I","uid":"offset","time":"2024-05-01T14:00:03.5+02:00"}',
        b'{"event":"exec","code":"T3002I","uid":"week","time":"2024-W18-3T12:00:04.000Z"}',
    ]
    with path.open("ab") as f:
        f.write(b"\n".join(foreign) + b"\n")

    async def body(sink: Any) -> tuple[Any, Any]:
        return await sink.search(EVERYTHING), await sink.search_lines(EVERYTHING)

    page, lines = with_sink(uri, body)
    assert [e.uid for e in page.events] == [e.uid for e in ours] + ["spaced", "no-ms", "offset", "week"]
    assert list(lines.lines[:4]) == [*written, foreign[0]]  # byte for byte
    for line, record, stored_event in zip(lines.lines, lines.records, page.events, strict=True):
        assert repr(json.loads(line)) == repr(record) == repr(stored_event.to_dict())  # NaN compares by repr
    assert [json.loads(line)["time"] for line in lines.lines[4:]] == [
        "2024-05-01T12:00:02.000Z", "2024-05-01T12:00:03.500Z", "2024-05-01T12:00:04.000Z"]
