"""Failed invite and reset completions, played through the proxy's web API against a real
cluster: an unknown, expired or already used token, a password the policy refuses (Teleport's
12 to 128 characters), a missing or wrong OTP code. Each is refused, audited as
``user.password_change`` T1005W with the reason, and spends nothing: the invitee then
completes the same invite and logs in with tsh."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pyotp
from proxy_helpers import LOGIN, Env


def _failures(env: Env) -> list[dict[str, Any]]:
    async def search() -> dict[str, Any]:
        async with env.admin() as admin:
            return await admin.search_events(type="user.password_change", limit=5000)

    return [e for e in asyncio.run(search())["events"] if e["code"] == "T1005W"]


def _complete(env: Env, token: str, password: str, code: str = "") -> tuple[int, str]:
    with env.web_client() as web:
        answer = web.put("/v1/webapi/users/password/token",
                         json={"token": token, "password": password, "second_factor_token": code})
    return answer.status_code, answer.json().get("error", "")


def test_failed_completions_are_refused_audited_and_spend_nothing(env: Env, tmp_path: Path) -> None:
    user, good = "inez", "a long enough password 123"
    before = len(_failures(env))
    token = env.call("create_user", user, ["dev"], {"logins": [LOGIN]})["invite"]["token"]
    with env.web_client() as web:
        env.totps[user] = pyotp.parse_uri(web.get(f"/v1/webapi/users/password/token/{token}").json()["otp_uri"])
    wrong_code = f"{(int(env.totps[user].now()) + 1) % 1_000_000:06d}"
    attempts = [
        (("f" * 32, good, env.totps[user].now()), 403, "not valid or has expired"),  # unknown token
        ((token, "password", env.totps[user].now()), 400, "at least 12 characters"),  # Teleport's minimum
        ((token, good, ""), 400, "second_factor_token: required"),
        ((token, good, wrong_code), 401, "invalid OTP code"),
    ]
    for (tok, password, code), status, reason in attempts:
        got, error = _complete(env, tok, password, code)
        assert (got, reason in error) == (status, True), (tok[:4], got, error)
    audited = _failures(env)[before:]
    assert [a[2] in e["error"] for a, e in zip(attempts, audited, strict=True)] == [True] * len(attempts), audited
    assert [e["user"] for e in audited] == ["", user, user, user]  # the token's user, once it is known
    assert all(e["success"] is False and e["token_kind"] in ("", "invite") for e in audited)
    assert not any(good in str(e) or e.get("error") == "password" for e in audited)  # no secret in the log
    # a password over 128 characters is refused by the request schema itself, before any handler
    assert _complete(env, token, "x" * 129, env.totps[user].now())[0] == 400
    # the invite still works, once, and the password it set logs in
    env.passwords[user] = good
    assert _complete(env, token, good, env.fresh_code(user)) == (200, "")
    assert _complete(env, token, good, env.fresh_code(user))[0] == 403  # reused
    assert env.login(tmp_path / "home", user).returncode == 0
    assert "not valid or has expired" in _failures(env)[-1]["error"]


def test_expired_reset_is_refused_and_audited(env: Env) -> None:
    user = "ivo"
    env.call("create_user", user, ["dev"], {"logins": [LOGIN]})
    token = env.call("reset_user", user, "1s")["token"]
    time.sleep(1.5)  # the reset token expires after one second
    before = len(_failures(env))
    assert _complete(env, token, "a long enough password 123", "123456") == (403, "the user token is not valid or "
                                                                                  "has expired")
    audited = _failures(env)[before:]
    assert len(audited) == 1 and "not valid or has expired" in audited[0]["error"]
