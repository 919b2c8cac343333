"""A cluster with ``second_factor: off``: the invite has no OTP enrollment and tsh asks for the
password only (one line on stdin)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_helpers import LOGIN, Env, running_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def plain_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory, second_factor="off") as e:
        yield e


def test_login_without_otp_then_ssh(plain_env: Env, tmp_path: Path) -> None:
    with plain_env.web_client() as web:
        assert web.get("/webapi/ping").json()["auth"]["second_factor"] == "off"
    plain_env.signup("carol", ["dev"], [LOGIN], "carols-password-0123456789")
    assert "carol" not in plain_env.totps  # no OTP enrollment was offered
    result = plain_env.login(tmp_path, "carol")
    assert result.returncode == 0, result.stderr
    assert "Enter your OTP token" not in result.stderr and "Logged in as:       carol" in result.stdout
    ran = plain_env.tsh(tmp_path, "ssh", "-t", f"{LOGIN}@sshd-node", "tty")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("/dev/pts/")  # -t allocated a terminal
