"""Log formats, severity, outputs and secret redaction."""

from __future__ import annotations

import json
import logging
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from teleport_core.config.model import LogConfig
from teleport_core.errors import ConfigError
from teleport_core.logs import component_of, configure_logging, debug_enabled, get_logger, reset_logging
from teleport_core.pki.secret import Secret


class Point(NamedTuple):
    x: int
    y: int


TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARN|ERROR) \[[^\]]+\] .*$")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    reset_logging()


def err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig())
    get_logger("auth").info("service started", listen_addr="127.0.0.1:3025", note="two words")
    [line] = err_lines(capsys)
    assert TEXT_LINE.match(line)
    assert line.split(" ", 1)[1] == 'INFO [auth] service started listen_addr=127.0.0.1:3025 note="two words"'


def test_json_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(format="json"))
    get_logger("proxy").warning("slow client", addr="10.0.0.1:4000", attempts=3, labels={"env": "prod"})
    [line] = err_lines(capsys)
    record = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record.pop("timestamp"))
    assert record == {
        "level": "warn",
        "component": "proxy",
        "message": "slow client",
        "addr": "10.0.0.1:4000",
        "attempts": 3,
        "labels": {"env": "prod"},
    }


def test_severity_filter_and_trace(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(severity="WARN"))
    log = get_logger("node")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [line.split(" ", 1)[1] for line in err_lines(capsys)] == ["WARN [node] w", "ERROR [node] e"]
    assert not debug_enabled()

    configure_logging(LogConfig(severity="TRACE"))
    log.debug("now visible")
    assert [line.split(" ", 1)[1] for line in err_lines(capsys)] == ["DEBUG [node] now visible"]
    assert debug_enabled()


def test_configure_twice_replaces_the_handler(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = get_logger("auth")  # created before any configuration
    configure_logging(LogConfig())
    configure_logging(LogConfig(format="json"))
    log.info("once")
    lines = err_lines(capsys)
    assert len(lines) == 1 and json.loads(lines[0])["message"] == "once"
    path = tmp_path / "teleport.log"
    configure_logging(LogConfig(output=str(path)))
    log.info("to the file")
    assert err_lines(capsys) == []
    assert path.read_text().endswith("INFO [auth] to the file\n")


def test_other_libraries_records_carry_a_component(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(format="json"))
    logging.getLogger("hypercorn.error").warning("socket %s closed", "fd://3")
    logging.getLogger().error("from the root logger")
    first, second = (json.loads(line) for line in err_lines(capsys))
    assert (first["component"], first["message"], first["level"]) == ("hypercorn", "socket fd://3 closed", "warn")
    assert (second["component"], second["level"]) == ("teleport", "error")
    assert component_of("teleport.diag.http") == "diag"


def test_per_request_library_logs_only_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(format="json"))
    logging.getLogger("httpx").info("HTTP Request: GET https://auth/v1/roles")
    logging.getLogger("httpx").warning("a problem worth seeing")
    assert [json.loads(line)["message"] for line in err_lines(capsys)] == ["a problem worth seeing"]
    configure_logging(LogConfig(format="json", severity="DEBUG"))
    logging.getLogger("httpx").info("HTTP Request: GET https://auth/v1/roles")
    assert [json.loads(line)["message"] for line in err_lines(capsys)] == ["HTTP Request: GET https://auth/v1/roles"]


def test_secret_keys_and_values_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(format="json"))
    get_logger("auth").info(
        "login",
        user="alice",
        password="pw-1",
        auth_token="tok-2",
        private_key="-----BEGIN-3",
        client_secret="sec-4",
        otp="123456",
        nested={"inner": {"api_key": "key-5"}, "list": [{"passphrase": "pp-6"}], "ok": "visible"},
        wrapped=Secret("sec-7"),
        hotplug="not-a-secret",
        point=Point(1, 2),
        token=None,
    )
    [line] = err_lines(capsys)
    for value in ("pw-1", "tok-2", "BEGIN-3", "sec-4", "123456", "key-5", "pp-6", "sec-7"):
        assert value not in line
    record = json.loads(line)
    assert record["password"] == record["auth_token"] == record["private_key"] == record["client_secret"] == "***"
    assert record["otp"] == "***"
    assert record["nested"] == {"inner": {"api_key": "***"}, "list": [{"passphrase": "***"}], "ok": "visible"}
    assert record["wrapped"] == "Secret(***)"
    assert record["hotplug"] == "not-a-secret"
    assert record["point"] == [1, 2]
    assert record["user"] == "alice"
    assert record["token"] is None


def test_text_lines_cannot_be_forged(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig())
    forged = "x\n2026-01-01T00:00:00.000Z INFO [auth] user admin logged in"
    get_logger("auth").warning(f"bad login for {forged}", user=forged)
    lines = err_lines(capsys)
    assert len(lines) == 1
    assert "\\n2026-01-01" in lines[0]


def test_exceptions_render_after_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig())
    try:
        raise ValueError("broken thing")
    except ValueError:
        get_logger("process").error("failed", exc_info=True)
    lines = err_lines(capsys)
    assert lines[0].endswith("ERROR [process] failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: broken thing"


def test_file_output_is_private_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "teleport.log"
    configure_logging(LogConfig(output=str(path), format="json"))
    get_logger("auth").info("first")
    configure_logging(LogConfig(output=str(path), format="json"))
    get_logger("auth").info("second")
    assert [json.loads(line)["message"] for line in path.read_text().splitlines()] == ["first", "second"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_stdout_output(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(output="stdout"))
    get_logger("auth").info("on stdout")
    out, err = capsys.readouterr()
    assert out.endswith("INFO [auth] on stdout\n") and err == ""


def test_extra_fields_choose_what_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(extra_fields=("level", "caller")))
    get_logger("auth").info("hello")
    [line] = err_lines(capsys)
    assert re.fullmatch(r"INFO \[auth\] hello caller=test_logs\.py:\d+", line), line

    configure_logging(LogConfig(format="json", extra_fields=("component",)))
    get_logger("auth").info("bare")
    assert json.loads(err_lines(capsys)[0]) == {"component": "auth", "message": "bare"}


@pytest.mark.parametrize(
    ("log", "message"),
    [
        (LogConfig(severity="LOUD"), "teleport.log.severity: expected one of"),
        (LogConfig(format="xml"), 'teleport.log.format.output: expected "text" or "json"'),
        (LogConfig(extra_fields=("colour",)), 'teleport.log.format.extra_fields: unknown field "colour"'),
        (LogConfig(output="/nonexistent-dir/teleport.log"), "teleport.log.output: cannot open log file"),
    ],
)
def test_bad_settings_are_config_errors(log: LogConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        configure_logging(log)
