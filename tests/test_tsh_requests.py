"""``tsh request`` and ``tsh login --request-*`` without a cluster: every bad flag refused before
anything is sent (one ``ERROR:`` line, or argparse's usage for an unknown choice), and what the
text output of a request looks like. The same against a real cluster:
plugins/proxy/tests/test_access_requests_e2e.py."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from teleport_core.errors import TeleportError
from teleport_core.policy.requests import Review, new_request, request_to_dict
from teleport_core.tsh import requests as access

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
GOOD_ID = "bc8ca931-fec9-4b15-9a6f-20c13c5641a9"


def tsh(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TELEPORT_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


BAD = [
    (("request", "create"), "ERROR: --roles: give one or more roles to request, comma-separated (--roles=dba)"),
    (("request", "create", "--roles="), "ERROR: --roles: give one or more roles to request"),
    (("request", "create", "--roles=dba,,ops"), 'ERROR: --roles: expected a comma-separated list like "a,b", '
                                                'got "dba,,ops"'),
    (("request", "create", "--roles=dba", "--reviewers=bob,"), "ERROR: --reviewers: expected a comma-separated"),
    (("request", "create", "--roles=d\x1bba"), 'ERROR: --roles: "d\\u001bba" has control characters'),
    (("request", "create", "--roles=dba", "--reason=" + "r" * 4097), "ERROR: --reason: at most 4096 characters"),
    (("request", "review", "--approve", "--deny", GOOD_ID), "ERROR: must supply exactly one of '--approve' or "
                                                            "'--deny'"),
    (("request", "review", GOOD_ID), "ERROR: must supply exactly one of '--approve' or '--deny'"),
    (("request", "review", "--approve", "not-an-id"), 'ERROR: request ID: "not-an-id" is not a request ID'),
    (("request", "review", "--approve", GOOD_ID.upper()), f'ERROR: request ID: "{GOOD_ID.upper()}" is not'),
    (("request", "show", "../../etc/passwd"), 'ERROR: request ID: "../../etc/passwd" is not a request ID'),
    (("request", "drop", "x"), 'ERROR: request ID: "x" is not a request ID'),
    (("login", "--request-roles=dba", f"--request-id={GOOD_ID}"),
     "ERROR: --request-roles and --request-id: give one or the other"),
    (("login", "--request-reason=because"), "ERROR: --request-reason needs --request-roles"),
    (("login", "--request-reviewers=bob"), "ERROR: --request-reviewers needs --request-roles"),
    (("login", "--request-nowait"), "ERROR: --request-nowait needs --request-roles"),
    (("login", "--request-id=42"), 'ERROR: --request-id: "42" is not a request ID'),
    (("login", "--request-roles=a,,b"), "ERROR: --request-roles: expected a comma-separated list"),
    (("login", "--request-roles=dba", "--out=/tmp/x"), "ERROR: --out writes the base roles' certificates"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_request_flags_are_refused_before_anything_is_sent(tmp_path, args, message) -> None:
    result = tsh(tmp_path / "home", *args)  # no profile, no proxy: a flag error comes first
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("args", [("request",), ("request", "ls", "--format=xml"), ("request", "show"),
                                  ("request", "frob"), ("request", "create", "--bogus")])
def test_missing_or_unknown_subcommands_and_choices_get_argparse_usage(tmp_path, args) -> None:
    result = tsh(tmp_path / "home", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert "usage: tsh request" in result.stderr and "error:" in result.stderr


def test_request_commands_need_a_profile(tmp_path) -> None:
    for args in (("request", "ls"), ("request", "show", GOOD_ID), ("request", "create", "--roles=dba"),
                 ("request", "drop")):
        result = tsh(tmp_path / "home", *args)
        assert (result.returncode, result.stderr) == (1, "ERROR: not logged in (run tsh login --proxy=HOST)\n")


def test_help_lists_request_and_its_subcommands(tmp_path) -> None:
    top = tsh(tmp_path, "--help")
    assert top.returncode == 0 and "request" in top.stdout
    sub = tsh(tmp_path, "request", "--help")
    assert sub.returncode == 0
    for name in ("create", "ls", "show", "review", "drop"):
        assert name in sub.stdout
    create = tsh(tmp_path, "request", "create", "--help").stdout
    for flag in ("--roles", "--reason", "--reviewers", "--nowait"):
        assert flag in create
    login = tsh(tmp_path, "login", "--help").stdout
    for flag in ("--request-roles", "--request-reason", "--request-reviewers", "--request-nowait", "--request-id"):
        assert flag in login


def test_split_names_and_ids() -> None:
    assert access.split_names(" dba, ops ,dba", "--roles") == ["dba", "ops"]
    assert access.check_request_id(f" {GOOD_ID} ") == GOOD_ID
    for bad in ("", "x", GOOD_ID + "0", GOOD_ID.replace("-", "")):
        with pytest.raises(TeleportError, match="is not a request ID"):
            access.check_request_id(bad)


def _request(state: str = "PENDING", *, hours: float = 4, reviews: tuple[Review, ...] = (), reason: str = "db fix",
             resolve: str = ""):
    req = new_request("alice", ["dba"], reason=reason, suggested_reviewers=["bob"],
                      access_expires=NOW + dt.timedelta(hours=hours), now=NOW)
    return attrs.evolve(req, state=state, reviews=reviews, resolve_reason=resolve)


def test_ls_rows_newest_first_and_expired_access_left_out() -> None:
    older = attrs.evolve(_request(), created=NOW - dt.timedelta(minutes=5))
    newer = _request("APPROVED")
    gone = _request("APPROVED", hours=-1)
    rows = access.table_rows([older, gone, newer], NOW)
    assert [r[0] for r in rows] == [newer.id, older.id]
    assert rows[0][1:4] == ["alice", "dba", NOW.strftime("%d %b %y %H:%M UTC")]
    assert rows[0][4:] == ["", "4h0m0s", "APPROVED"]  # an approved request has no request TTL left to show
    assert rows[1][4:] == ["1h0m0s", "4h0m0s", "PENDING"]  # pending: the request TTL (default 1 h)


def test_show_text_has_the_reviews_and_escapes_control_characters() -> None:
    reviews = (Review("bob", "APPROVED", "ok \x1b[31mred", created=NOW), Review("carol", "DENIED", created=NOW))
    lines = access.details(_request("APPROVED", reviews=reviews, reason="fix\nit", resolve="ok"))
    text = "\n".join(lines)
    assert "\x1b" not in text and "fix\\nit" in text
    assert lines[1:3] == ["Username:       alice", "Roles:          dba"]
    assert "Reviewers:      bob (suggested)" in lines and "Status:         APPROVED" in lines
    assert lines[lines.index("Approvals:") + 2] == "  Reviewer: bob"
    assert lines[lines.index("Denials:") + 3] == "  Reason:   [none]"
    assert lines[-1] == f"hint: {access.LOGIN_HINT}"


def test_a_denied_or_deleted_request_ends_the_wait_with_an_error(capsys) -> None:
    from teleport_core.errors import NotFound

    pending = _request()
    answers = iter([pending, attrs.evolve(pending, state="DENIED", resolve_reason="not today")])
    with pytest.raises(access.RequestDenied, match=f'request {pending.id} has been set to DENIED, '
                                                   'reason="not today"'):
        access.wait_for_decision(None, pending, fetch=lambda _p, _i: next(answers), sleep=lambda _s: None)  # type: ignore[arg-type]

    def deleted(_p: object, _i: str) -> object:
        raise NotFound("not found")

    with pytest.raises(access.RequestDenied, match="was deleted while pending"):
        access.wait_for_decision(None, pending, fetch=deleted, sleep=lambda _s: None)  # type: ignore[arg-type]
    lapsed = _request(hours=-0.01)
    with pytest.raises(access.RequestDenied, match="expired while pending"):
        access.wait_for_decision(None, lapsed, sleep=lambda _s: None)  # type: ignore[arg-type]
    assert "Waiting for request approval..." in capsys.readouterr().err


def test_the_proxy_sending_a_malformed_request_is_a_clear_error() -> None:
    doc = request_to_dict(_request())
    doc["spec"]["state"] = "MAYBE"
    with pytest.raises(TeleportError, match="spec.state: expected one of PENDING, APPROVED, DENIED"):
        access.parse(doc)
