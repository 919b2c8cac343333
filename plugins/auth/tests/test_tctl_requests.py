"""``tctl requests`` (and Teleport's alias ``tctl request``), ``tctl rm access_request/ID``: bad
input refused with one ``ERROR:`` line before anything is sent, and the text output of a
request. Against a real cluster: plugins/proxy/tests/test_access_requests_e2e.py."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import attrs
import pytest
from teleport_auth.tctl_requests import detailed, overview

from teleport_core.policy.requests import Review, new_request

GOOD_ID = "bc8ca931-fec9-4b15-9a6f-20c13c5641a9"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)

BAD = [
    (("requests",), "ERROR: tctl requests: the following arguments are required: COMMAND"),
    (("requests", "frob"), "ERROR: tctl requests: argument COMMAND: invalid choice: 'frob'"),
    (("requests", "ls", "--format=xml"), "ERROR: tctl requests ls: argument --format: invalid choice: 'xml'"),
    (("requests", "ls", "--bogus"), "ERROR: tctl requests ls: unrecognized arguments: --bogus"),
    (("requests", "get"), "ERROR: tctl requests get: the following arguments are required: REQUEST_ID"),
    (("requests", "get", "nope"), 'ERROR: "nope" is not a request ID'),
    (("requests", "approve", f"{GOOD_ID},x"), 'ERROR: "x" is not a request ID'),
    (("requests", "approve", f"{GOOD_ID},,{GOOD_ID}"), "ERROR: request ID: expected a comma-separated list"),
    (("request", "approve", "nope"), 'ERROR: "nope" is not a request ID'),
    (("request", "deny", GOOD_ID.upper()), f'ERROR: "{GOOD_ID.upper()}" is not a request ID'),
    (("requests", "approve", GOOD_ID, "--roles=dba,,ops"), 'ERROR: --roles: expected a comma-separated list'),
    (("requests", "approve", GOOD_ID, "--roles="), 'ERROR: --roles: expected a comma-separated list'),
    (("requests", "deny", GOOD_ID, "--roles=dba"), "ERROR: tctl requests deny: unrecognized arguments: --roles=dba"),
    (("requests", "deny", GOOD_ID, "--reason=" + "r" * 4097), "ERROR: --reason: at most 4096 characters"),
    (("requests", "rm", "../x"), 'ERROR: "../x" is not a request ID'),
    (("rm", "access_request/nope"), 'ERROR: "nope" is not a request ID'),
    (("rm", "access_request"), "ERROR: expected KIND/NAME like access_request/NAME"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_input_is_one_error_line_before_anything_is_sent(tmp_path, args, message) -> None:
    # no auth server, no config: a usage error must come first
    result = subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", *args], capture_output=True, text=True,
                            timeout=60, check=False, cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message), result.stderr


def _request(state: str = "PENDING", *, hours: float = 4, reason: str = "", resolve: str = ""):
    req = new_request("alice", ["dba", "ops"], reason=reason, access_expires=NOW + dt.timedelta(hours=hours),
                      now=NOW)
    return attrs.evolve(req, state=state, resolve_reason=resolve)


def test_ls_table_has_teleports_columns_and_cuts_long_reasons() -> None:
    live = _request(reason="r" * 100)
    gone = _request("APPROVED", hours=-1)
    lines = overview([gone, live], NOW).splitlines()
    assert lines[0].split() == ["Token", "Requestor", "Metadata", "Created", "At", "(UTC)",
                                               "Request", "TTL", "Session", "TTL", "Status", "Request", "Reason",
                                               "Resolve", "Reason"]
    assert len(lines) == 5 and gone.id not in "\n".join(lines)  # expired access: left out, as Teleport
    cells = lines[2].split()
    assert cells[:3] == [live.id, "alice", "roles=dba,ops"]
    assert "1h0m0s" in cells and "4h0m0s" in cells and "PENDING" in cells
    assert lines[2].rstrip().endswith("... [*]") and "r" * 80 not in lines[2]
    assert lines[4].startswith("[*] Full reason was truncated")


def test_get_text_shows_reasons_and_reviews_escaped() -> None:
    req = attrs.evolve(_request("DENIED", reason="", resolve="no\x1b[2J"),
                       reviews=(Review("bob", "DENIED", "no\x1b[2J", created=NOW),))
    text = detailed(req)
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == f"Token:                {req.id}"
    assert "Request Reason:       [none]" in lines and "Status:               DENIED" in lines
    assert lines[-1] == 'Review 1:             bob DENIED "no\\u001b[2J"'
