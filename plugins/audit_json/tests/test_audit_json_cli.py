"""``tctl audit events`` in a subprocess, against a data dir holding events."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
from audit_json_helpers import emit_all, python
from teleport_audit_json.cli import CSV_COLUMNS

from teleport_core.state.audit import AuditEvent, format_time, new_event

NOW = dt.datetime.now(dt.UTC)
HOUR = dt.timedelta(hours=1)


def tctl(*args: str) -> Any:
    return python("-m", "teleport_core.cli.tctl", *args)


def write_config(tmp_path: Path, uris: list[str] | None = None) -> Path:
    data_dir = tmp_path / "data"
    storage = f"\n  storage:\n    audit_events_uri: {json.dumps(uris)}" if uris else ""
    config = tmp_path / "teleport.yaml"
    config.write_text(
        f"version: v3\nteleport:\n  data_dir: {data_dir}{storage}\n"
        "auth_service:\n  enabled: false\nproxy_service:\n  enabled: false\nssh_service:\n  enabled: false\n"
    )
    return config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> tuple[Path, list[AuditEvent]]:
    """A config whose default audit log (``<data_dir>/log``) holds events of the last 3 days."""
    tmp_path = tmp_path_factory.mktemp("cli")
    config = write_config(tmp_path)
    events = [
        new_event("user.login", when=NOW - 50 * HOUR, user="alice", login="root"),
        new_event("user.login", "failure", when=NOW - 20 * HOUR, user="mallory\x1b[2J", **{"addr.remote": "=1+1"}),
        new_event("session.start", when=NOW - 3 * HOUR, user="alice", sid="s-1", server_labels={"env": "prod"}),
        new_event("exec", when=NOW - 2 * HOUR, user="bob", sid="s-2", initial_command=["ls", "-l"]),
        new_event("session.end", when=NOW - HOUR, user="alice", sid="s-1", size=4096),
        new_event("user.create", when=NOW + HOUR, user="admin", name="carol"),  # a clock ahead
    ]
    emit_all(f"file://{tmp_path / 'data' / 'log'}", events)
    return config, events


def uids(events: list[AuditEvent]) -> list[str]:
    return [e.uid for e in events]


def ok(*args: str) -> str:
    result = tctl(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return str(result.stdout)


@pytest.mark.hook_call_site("teleport_cli_commands")
def test_text_defaults_to_the_last_24_hours(cluster):
    config, events = cluster
    out = ok("audit", "events", "-c", str(config))
    lines = out.splitlines()
    assert len(lines) == 5
    assert lines[0] == f'{format_time(events[1].time)} T1000W user.login user="mallory\\u001b[2J" sid=""'
    assert lines[1] == f"{format_time(events[2].time)} T2000I session.start user=alice sid=s-1"
    assert lines[4] == f"{format_time(events[5].time)} T1002I user.create user=admin sid=\"\""
    assert "\x1b" not in out


def test_global_option_before_the_command_and_json_array(cluster):
    config, events = cluster
    out = ok("-c", str(config), "audit", "events", "--since", "100h", "--format", "json")
    assert json.loads(out) == [e.to_dict() for e in events]
    assert out.startswith("[\n{") and out.endswith("}\n]\n")


def test_json_of_nothing_is_an_empty_array(cluster):
    config, _ = cluster
    assert json.loads(ok("audit", "events", "-c", str(config), "--user", "nobody", "--format", "json")) == []


def test_csv_has_common_fields_and_is_spreadsheet_safe(cluster):
    config, events = cluster
    out = ok("audit", "events", "-c", str(config), "--since", "72h", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [r["uid"] for r in rows] == uids(events)
    assert rows[0]["login"] == "root" and rows[0]["time"] == format_time(events[0].time)
    assert rows[1]["addr.remote"] == "'=1+1" and rows[1]["user"] == "mallory\\u001b[2J" and rows[1]["code"] == "T1000W"
    assert json.loads(rows[2]["server_labels"]) == {"env": "prod"}
    assert json.loads(rows[3]["initial_command"]) == ["ls", "-l"]
    assert rows[4]["size"] == "4096" and rows[4]["sid"] == "s-1"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--type", "session.start", "session.end"], [2, 4]),
        (["--type", "session.start", "--type", "exec"], [2, 3]),
        (["--user", "alice"], [2, 4]),
        (["--user", "alice", "--since", "72h"], [0, 2, 4]),
        (["--sid", "s-1", "--type", "session.end"], [4]),
        (["--since", "150m", "--until", "90m"], [3]),
        (["--since", "72h", "--limit", "2"], [0, 1]),
        (["--since", format_time(NOW - 3 * HOUR), "--until", format_time(NOW - HOUR)], [2, 3]),
        (["--since", (NOW - 3 * HOUR - dt.timedelta(seconds=1)).astimezone(dt.timezone(dt.timedelta(hours=5))).isoformat()], [2, 3, 4, 5]),
        (["--until", "0", "--since", "72h"], [0, 1, 2, 3, 4]),
    ],
)
def test_filters(cluster, args, expected):
    config, events = cluster
    found = json.loads(ok("audit", "events", "-c", str(config), "--format", "json", *args))
    assert [e["uid"] for e in found] == [events[i].uid for i in expected]


def test_output_is_complete_across_pages(tmp_path):
    config = write_config(tmp_path, [f"file://{tmp_path}/audit?server_id=auth", "stdout://"])
    events = [new_event("exec", when=NOW - HOUR + i * dt.timedelta(milliseconds=1), user=f"u{i % 3}") for i in range(2600)]
    emit_all(f"file://{tmp_path}/audit?server_id=auth", events)
    lines = ok("audit", "events", "-c", str(config)).splitlines()
    assert len(lines) == 2600
    assert [line.split()[0] for line in lines] == [format_time(e.time) for e in events]
    assert len(ok("audit", "events", "-c", str(config), "--limit", "2100").splitlines()) == 2100
    u1 = json.loads(ok("audit", "events", "-c", str(config), "--user", "u1", "--format", "json"))
    assert [e["uid"] for e in u1] == [e.uid for e in events if e.user == "u1"]


def test_stdout_first_searches_the_file_sink_and_stdout_alone_cannot_be_searched(tmp_path):
    """The log searches its first searchable sink, wherever stdout:// is listed."""
    config = write_config(tmp_path, ["stdout://", f"file://{tmp_path}/audit"])
    result = tctl("audit", "events", "-c", str(config))
    assert result.returncode == 0, result.stderr
    alone = write_config(tmp_path, ["stdout://"])
    result = tctl("audit", "events", "-c", str(alone))
    assert result.returncode == 1
    assert "ERROR: no sink of teleport.storage.audit_events_uri can be searched: add a file:// URI" in result.stderr


def test_config_errors_are_one_line(tmp_path):
    result = tctl("audit", "events", "-c", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"ERROR: {tmp_path / 'missing.yaml'}: cannot read config file: No such file or directory"
    config = write_config(tmp_path, ["file://relative/dir"])
    result = tctl("audit", "events", "-c", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith("ERROR: teleport.storage.audit_events_uri: expected file:///absolute/directory")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["list"], "invalid choice: 'list'"),
        (["events", "--since", "yesterday"], "argument --since: expected an RFC 3339 time like 2024-05-01T12:00:00Z or a duration like 1h"),
        (["events", "--until", "2024-13-01T00:00:00Z"], "argument --until: expected an RFC 3339 time"),
        (["events", "--since", "2024-05-01T12:00:00"], "has no time zone: add Z for UTC"),
        (["events", "--since=-1h"], "cannot be negative"),
        (["events", "--since", "5"], "argument --since: expected an RFC 3339 time"),
        (["events", "--since", "1h", "--until", "2h"], "must be before --until"),
        (["events", "--limit", "0"], "argument --limit: expected a positive whole number, got '0'"),
        (["events", "--limit", "ten"], "argument --limit: expected a positive whole number, got 'ten'"),
        (["events", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["events", "--type"], "argument --type: expected at least one argument"),
        (["events", "--type", ""], "argument --type: expected an event type such as user.login, got an empty string"),
        (["events", "--user", " "], "argument --user: expected a user name, got an empty string"),
        (["events", "--sid", ""], "argument --sid: expected a session id, got an empty string"),
        (["events", "--verbose"], "unrecognized arguments: --verbose"),
        (["events", "extra"], "unrecognized arguments: extra"),
        (["events", "--auth-server", "auth:3025"], "--auth-server and --identity are not supported yet"),
        (["events", "-i", "identity.pem"], "--auth-server and --identity are not supported yet"),
    ],
)
def test_bad_flags(cluster, args, message):
    config, _ = cluster
    result = tctl("audit", *args, "-c", str(config))
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "usage: tctl audit" in result.stderr
    assert result.stdout == ""


def test_help_lists_the_command():
    result = tctl("--help")
    assert "audit" in result.stdout and "[teleport-audit-json]" in result.stdout
    out = ok("audit", "events", "--help")
    assert "--since TIME" in out and "{text,json,csv}" in out
