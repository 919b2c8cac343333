"""Local users: records, bcrypt passwords, TOTP, lockout (with an injected clock, never sleeping)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import bcrypt
import pyotp
import pytest
from teleport_auth import users as users_module
from teleport_auth.users import (
    BAD_CREDENTIALS,
    BAD_CREDENTIALS_2FA,
    InvalidUser,
    PasswordPolicyError,
    UserStore,
    human_time,
    lockout_message,
    new_totp_secret,
    otp_uri,
)

from teleport_core.errors import AlreadyExists, AuthenticationFailed, NotFound
from teleport_core.pki.secret import Secret
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.state.backend import range_end

PASSWORD = Secret("correct horse battery")
WRONG = Secret("wrong horse battery")
FAST = 4  # bcrypt cost for tests that hash a lot; test_bcrypt_cost_12 checks the default


def code_at(secret: Secret, when: dt.datetime) -> Secret:
    return Secret(pyotp.TOTP(secret.reveal()).at(when))


async def failing(store: UserStore, name: str = "joe", password: Secret = WRONG, **kw: Any) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await store.authenticate(name, password, **kw)
    return str(info.value)


async def joe(store: UserStore, *, otp: bool = False) -> Secret | None:
    await store.create("joe", ["access"], {"logins": ["root", "ubuntu"]}, created_by="admin")
    await store.set_password("joe", PASSWORD)
    if otp:
        secret = new_totp_secret()
        await store.set_totp("joe", secret)
        return secret
    return None


# -- records ---------------------------------------------------------------------------------------


def test_user_crud(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        user = await store.create("joe", ["access", "access", "auditor"], {"logins": ["root"]}, created_by="admin")
        assert user.roles == ("access", "auditor") and dict(user.traits) == {"logins": ("root",)}
        assert user.created == clock.now and not user.has_password and not user.totp_enrolled
        with pytest.raises(AlreadyExists, match='^user "joe" already exists$'):
            await store.create("joe")
        await store.create("amy")
        assert [u.name for u in await store.list()] == ["amy", "joe"]
        got = await store.get("joe")
        assert got == user
        updated = await store.update("joe", roles=["editor"])
        assert updated.roles == ("editor",) and dict(updated.traits) == {"logins": ("root",)}
        updated = await store.update("joe", traits={"logins": ["ubuntu"], "team": ["blue"]})
        assert updated.roles == ("editor",) and dict(updated.traits) == {"logins": ("ubuntu",), "team": ("blue",)}
        assert await store.get("joe") == updated
        data = updated.to_dict()
        assert data["kind"] == "user" and data["metadata"] == {"name": "joe"}
        assert data["spec"]["roles"] == ["editor"] and data["spec"]["created_by"]["user"] == {"name": "admin"}
        assert data["spec"]["status"]["is_locked"] is False
        await store.set_password("joe", PASSWORD)
        await store.delete("joe")
        assert await backend.get_range(b"/users/joe/", range_end(b"/users/joe/")) == []
        with pytest.raises(NotFound, match='^user "joe" not found$'):
            await store.get("joe")
        with pytest.raises(NotFound, match='^user "joe" not found$'):
            await store.delete("joe")
        with pytest.raises(NotFound, match='^user "joe" not found$'):
            await store.update("joe", roles=[])
        with pytest.raises(NotFound):
            await store.set_password("joe", PASSWORD)

    with_backend(body)


@pytest.mark.parametrize(
    ("name", "roles", "traits", "message"),
    [
        ("a b", [], None, "invalid user name"),
        ("a/b", [], None, "invalid user name"),
        ("", [], None, "user name must not be empty"),
        ("joe", "access", None, "roles must be a list of role names"),
        ("joe", ["bad role"], None, "invalid role name"),
        ("joe", [], {"logins": "root"}, 'trait "logins" must be a list of strings'),
        ("joe", [], {"logins": [1]}, 'trait "logins" must be a list of strings'),
        ("joe", [], {"": ["x"]}, "trait names must be non-empty strings"),
    ],
)
def test_invalid_users_are_refused(with_backend: Any, name: str, roles: Any, traits: Any, message: str) -> None:
    async def body(backend: Any) -> None:
        with pytest.raises(InvalidUser, match=message):
            await UserStore(backend, bcrypt_cost=FAST).create(name, roles, traits)

    with_backend(body)


# -- passwords -------------------------------------------------------------------------------------


def test_bcrypt_cost_12_verify_and_wrong_password(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend)  # the default cost
        await joe(store)
        stored = json.loads((await backend.get(b"/users/joe/pwd")).value)["hash"]
        assert stored.startswith("$2b$12$") and "correct" not in stored
        assert bcrypt.checkpw(PASSWORD.reveal().encode(), stored.encode())
        identity = await store.authenticate("joe", PASSWORD, second_factor="off")
        assert identity == Identity("joe", IdentityKind.USER, roles=("access",), traits={"logins": ["root", "ubuntu"]})
        assert await failing(store, second_factor="off") == BAD_CREDENTIALS == "invalid username or password"
        assert await failing(store, "nobody", PASSWORD, second_factor="off") == BAD_CREDENTIALS
        assert (await store.get("joe")).has_password

    with_backend(body)


def test_unknown_users_cost_a_bcrypt_check_too(with_backend: Any, monkeypatch: Any) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(users_module.bcrypt, "checkpw", counting)

    async def body(backend: Any) -> None:
        store = UserStore(backend, bcrypt_cost=FAST)
        await joe(store)
        await store.create("nopass")
        for name in ("nobody", "joe", "nopass", "bad name/x"):
            calls.clear()
            assert await failing(store, name, second_factor="off") == BAD_CREDENTIALS
            assert len(calls) == 1, name
            assert calls[0].startswith(b"$2b$04$")
        calls.clear()
        assert await failing(store, "joe", Secret("x" * 100), second_factor="off") == BAD_CREDENTIALS
        assert len(calls) == 1

    with_backend(body)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("12345", "password is too short: use at least 12 characters"),
        ("password", "password is too short: use at least 12 characters"),
        ("x" * 11, "password is too short: use at least 12 characters"),
        ("x" * 129, "password is too long: use at most 128 characters"),
        ("é" * 129, "password is too long: use at most 128 characters"),
        ("abcdefghijkl\x00", "password must not contain NUL characters"),
        ("abcdefghijkl\udcff", "password must be valid Unicode text"),
    ],
)
def test_password_policy(with_backend: Any, password: str, message: str) -> None:
    """Teleport's policy: 12 to 128 characters (every one counts, past bcrypt's 72 bytes too)."""
    async def body(backend: Any) -> None:
        store = UserStore(backend, bcrypt_cost=FAST)
        await store.create("joe")
        with pytest.raises(PasswordPolicyError) as info:
            await store.set_password("joe", Secret(password))
        assert str(info.value) == message
        for ok in ("123456789012", "x" * 72, "x" * 128, "é" * 36, "é" * 128, "🔑" * 40):
            await store.set_password("joe", Secret(ok))
            await store.authenticate("joe", Secret(ok), second_factor="off")
            if len(ok.encode()) > 72:  # a change past byte 72 is a wrong password, not the same one
                with pytest.raises(AuthenticationFailed):
                    await store.authenticate("joe", Secret(ok[:-1] + "y"), second_factor="off")
                with pytest.raises(AuthenticationFailed):
                    await store.authenticate("joe", Secret(ok[:36]), second_factor="off")
        record = json.loads((await backend.get(b"/users/joe/pwd")).value)
        assert record["prehash"] == "sha256" and record["hash"].startswith("$2b$04$")

    with_backend(body)


# -- TOTP ------------------------------------------------------------------------------------------


def test_otp_uri() -> None:
    secret = Secret("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
    uri = otp_uri("example.com", "joe", secret)
    assert uri == "otpauth://totp/example.com:joe?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=example.com"
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP) and parsed.issuer == "example.com" and parsed.name == "joe"
    assert otp_uri("my cluster", "a@b", secret) == (
        "otpauth://totp/my%20cluster:a@b?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=my%20cluster"
    )
    assert len(new_totp_secret().reveal()) == 32 and repr(new_totp_secret()) == "Secret(***)"


def test_otp_login_with_a_real_totp_and_reuse_refused(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        secret = await joe(store, otp=True)
        assert secret is not None and (await store.get("joe")).totp_enrolled
        code = code_at(secret, clock.now)
        identity = await store.authenticate("joe", PASSWORD, code)
        assert identity.name == "joe"
        # the same code a second time, even a few seconds later, is refused
        clock.advance(seconds=5)
        assert await failing(store, password=PASSWORD, otp=code) == BAD_CREDENTIALS_2FA
        clock.advance(seconds=30)
        await store.authenticate("joe", PASSWORD, code_at(secret, clock.now))
        # missing or wrong factor, either way the same message
        assert await failing(store, password=PASSWORD) == BAD_CREDENTIALS_2FA
        assert await failing(store, password=PASSWORD, otp=Secret("000000x")) == BAD_CREDENTIALS_2FA
        # a wrong password does not use up the code
        clock.advance(seconds=30)
        fresh = code_at(secret, clock.now)
        assert await failing(store, otp=fresh) == BAD_CREDENTIALS_2FA
        await store.authenticate("joe", PASSWORD, fresh)
        # second factor off: the password alone
        await store.authenticate("joe", PASSWORD, second_factor="off")
        with pytest.raises(ValueError, match="second_factor must be one of off, otp"):
            await store.authenticate("joe", PASSWORD, second_factor="webauthn")

    with_backend(body)


def test_otp_window_is_one_step_either_side(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        secret = await joe(store, otp=True)
        assert secret is not None
        now = clock.now
        two = dt.timedelta(seconds=60)
        one = dt.timedelta(seconds=30)
        assert await failing(store, password=PASSWORD, otp=code_at(secret, now - two)) == BAD_CREDENTIALS_2FA
        assert await failing(store, password=PASSWORD, otp=code_at(secret, now + two)) == BAD_CREDENTIALS_2FA
        await store.authenticate("joe", PASSWORD, code_at(secret, now - one))
        await store.authenticate("joe", PASSWORD, code_at(secret, now + one))
        # once a later step was used, the current step's code (an older step) is refused
        assert await failing(store, password=PASSWORD, otp=code_at(secret, now)) == BAD_CREDENTIALS_2FA

    with_backend(body)


def test_concurrent_logins_with_one_code_only_one_wins(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        secret = await joe(store, otp=True)
        assert secret is not None
        code = code_at(secret, clock.now)
        results = await asyncio.gather(
            *(store.authenticate("joe", PASSWORD, code) for _ in range(4)), return_exceptions=True
        )
        assert sum(isinstance(r, Identity) for r in results) == 1
        assert all(isinstance(r, AuthenticationFailed) for r in results if not isinstance(r, Identity))

    with_backend(body)


def test_totp_enrollment(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        await joe(store)
        secret = new_totp_secret()
        with pytest.raises(AuthenticationFailed, match="invalid OTP code"):
            await store.set_totp("joe", secret, code_at(secret, clock.now + dt.timedelta(minutes=5)))
        assert not (await store.get("joe")).totp_enrolled
        with pytest.raises(ValueError, match="TOTP secret must be base32"):
            await store.set_totp("joe", Secret("not base32!"))
        enrolled_with = code_at(secret, clock.now)
        await store.set_totp("joe", secret, enrolled_with)
        # the enrollment code counts as used
        assert await failing(store, password=PASSWORD, otp=enrolled_with) == BAD_CREDENTIALS_2FA
        clock.advance(seconds=30)
        await store.authenticate("joe", PASSWORD, code_at(secret, clock.now))
        await store.delete_totp("joe")
        assert await failing(store, password=PASSWORD, otp=code_at(secret, clock.now)) == BAD_CREDENTIALS_2FA
        with pytest.raises(NotFound, match='^user "joe" has no OTP device$'):
            await store.delete_totp("joe")

    with_backend(body)


# -- lockout ---------------------------------------------------------------------------------------


def test_human_time_like_teleport() -> None:
    assert human_time(dt.datetime(2024, 1, 2, 15, 4, 59, tzinfo=dt.UTC)) == "Tue Jan  2 15:04 UTC"
    assert human_time(dt.datetime(2024, 11, 12, 3, 0, tzinfo=dt.UTC)) == "Tue Nov 12 03:00 UTC"
    cet = dt.timezone(dt.timedelta(hours=1))
    assert human_time(dt.datetime(2024, 11, 12, 4, 0, tzinfo=cet)) == "Tue Nov 12 03:00 UTC"


def test_five_failures_within_30_minutes_lock_for_30_minutes(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        await joe(store)
        for _ in range(4):
            assert await failing(store, second_factor="off") == BAD_CREDENTIALS
            clock.advance(minutes=5)
        until = clock.now + dt.timedelta(minutes=30)
        message = await failing(store, second_factor="off")
        assert message == f"joe exceeds 5 failed login attempts, locked until {human_time(until)}"
        assert message == lockout_message("joe", until)
        user = await store.get("joe")
        assert user.locked(clock.now) and user.status.locked_until == until
        assert user.to_dict()["spec"]["status"]["is_locked"] is True
        # while locked even the right password is refused, with the same message
        assert await failing(store, password=PASSWORD, second_factor="off") == message
        clock.advance(minutes=29, seconds=59)
        assert await failing(store, password=PASSWORD, second_factor="off") == message
        clock.advance(seconds=1)
        assert not (await store.get("joe")).locked(clock.now)
        await store.authenticate("joe", PASSWORD, second_factor="off")
        # after the lock, it takes five new failures to lock again
        for _ in range(4):
            assert await failing(store, second_factor="off") == BAD_CREDENTIALS
        assert "exceeds 5 failed login attempts" in await failing(store, second_factor="off")

    with_backend(body)


def test_failures_older_than_30_minutes_do_not_count(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        await joe(store)
        for _ in range(4):
            assert await failing(store, second_factor="off") == BAD_CREDENTIALS
        clock.advance(minutes=30)
        for _ in range(4):
            assert await failing(store, second_factor="off") == BAD_CREDENTIALS
        assert not (await store.get("joe")).locked(clock.now)
        assert "locked until" in await failing(store, second_factor="off")

    with_backend(body)


def test_success_resets_the_count(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        await joe(store)
        for _ in range(4):
            await failing(store, second_factor="off")
        await store.authenticate("joe", PASSWORD, second_factor="off")
        for _ in range(4):
            assert await failing(store, second_factor="off") == BAD_CREDENTIALS
        assert "locked until" in await failing(store, second_factor="off")

    with_backend(body)


def test_otp_failures_count_and_unknown_users_are_never_locked(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        await joe(store, otp=True)
        for _ in range(4):
            assert await failing(store, password=PASSWORD, otp=Secret("123456x")) == BAD_CREDENTIALS_2FA
        assert "locked until" in await failing(store, password=PASSWORD, otp=Secret("123456x"))
        for _ in range(7):
            assert await failing(store, "nobody", PASSWORD) == BAD_CREDENTIALS_2FA
        assert await backend.get_range(b"/users/nobody/", range_end(b"/users/nobody/")) == []

    with_backend(body)


def test_admin_unlock(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        await joe(store)
        for _ in range(5):
            await failing(store, second_factor="off")
        assert (await store.get("joe")).locked(clock.now)
        await store.unlock("joe")
        assert not (await store.get("joe")).locked(clock.now)
        await store.authenticate("joe", PASSWORD, second_factor="off")

    with_backend(body)


def test_no_secrets_in_reprs_or_errors(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock, bcrypt_cost=FAST)
        secret = await joe(store, otp=True)
        assert secret is not None
        user = await store.get("joe")
        text = repr(user) + json.dumps(user.to_dict())
        assert "$2b$" not in text and secret.reveal() not in text and "horse" not in text
        for message in (await failing(store), await failing(store, password=Secret("my-secret-guess"))):
            assert "horse" not in message and "my-secret-guess" not in message

    with_backend(body)
