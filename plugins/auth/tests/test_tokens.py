"""Join tokens and user (invite) tokens against the real SQLite backend, with an injected clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import pytest
from teleport_auth.tokens import (
    InvalidToken,
    TokenError,
    TokenExpired,
    TokenInfo,
    TokenStore,
    UserTokenStore,
    parse_static_tokens,
    system_roles,
)

from teleport_core.errors import AccessDenied, ConfigError, NotFound
from teleport_core.pki.secret import Secret
from teleport_core.state.backend import range_end

HEX32 = re.compile(r"^[0-9a-f]{32}$")
NOT_VALID = '"node01" can not join the cluster with role Node, the token is not valid'


def test_static_tokens_from_config() -> None:
    tokens = parse_static_tokens(["node:abc123", "proxy,node:xyz789"])
    assert [t.roles for t in tokens] == [("Node",), ("Proxy", "Node")]
    assert tokens[1].token.reveal() == "xyz789" and tokens[1].static and tokens[1].expires is None
    assert "xyz789" not in repr(tokens[1]) and repr(tokens[1]).startswith("TokenInfo(token=***")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc123", 'auth_service.tokens[0]: expected "<roles>:<token>" like "node:abc123" or "proxy,node:abc123"'),
        (
            "node:abc:123",
            'auth_service.tokens[0]: expected "<roles>:<token>" like "node:abc123" or "proxy,node:abc123"',
        ),
        ("node:", "auth_service.tokens[0]: the token after the colon is empty"),
        ("admin:s3cret", 'auth_service.tokens[0]: unknown role "admin": expected one of node, proxy, auth'),
        (":s3cret", 'auth_service.tokens[0]: unknown role "": expected one of node, proxy, auth'),
        ("node,Auth:s3cret", "auth_service.tokens[0]: a join token cannot admit role auth: auth servers of a "
                             "cluster share its backend and never join with a token"),
    ],
)
def test_bad_static_tokens_name_the_entry_not_the_secret(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_static_tokens([value])
    assert str(info.value) == message
    assert "s3cret" not in str(info.value)


def test_system_roles() -> None:
    assert system_roles("node,proxy,node") == ("Node", "Proxy")
    assert system_roles(["AUTH"]) == ("Auth",)
    with pytest.raises(ValueError, match="at least one role"):
        system_roles([])


def test_dynamic_token_format_and_ttl(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = TokenStore(backend, now=clock)
        info = await store.create(["node"])
        assert HEX32.match(info.token.reveal()) and info.roles == ("Node",) and not info.static
        assert info.expires == clock.now + dt.timedelta(minutes=30)
        short = await store.create("node,proxy", ttl=dt.timedelta(minutes=5))
        assert short.expires == clock.now + dt.timedelta(minutes=5) and short.roles == ("Node", "Proxy")
        with pytest.raises(TokenError) as info_error:
            await store.create(["node"], ttl=dt.timedelta(hours=1))
        assert str(info_error.value) == (
            "token TTL 1h0m0s exceeds the maximum of 30m0s: it can be reduced, not increased"
        )
        with pytest.raises(TokenError, match="^token TTL must be positive$"):
            await store.create(["node"], ttl=dt.timedelta(0))
        with pytest.raises(TokenError, match='^unknown role "db"'):
            await store.create(["db"])
        # keys hold a digest, never the token
        keys = [item.key for item in await backend.get_range(b"/tokens/", range_end(b"/tokens/"))]
        assert len(keys) == 2 and all(info.token.reveal().encode() not in key for key in keys)
        assert all(re.fullmatch(rb"/tokens/[0-9a-f]{64}", key) for key in keys)
        assert info.token.reveal() not in repr(info)

    with_backend(body)


def test_node_tokens_are_single_use(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = TokenStore(backend, now=clock)
        info = await store.create(["node"])
        used = await store.consume(Secret(info.token.reveal()), "node", "node01")
        assert used.roles == ("Node",) and used.expires == info.expires
        with pytest.raises(InvalidToken) as again:
            await store.consume(info.token, "node", "node01")
        assert str(again.value) == NOT_VALID
        assert isinstance(again.value, AccessDenied)
        assert info.token.reveal() not in str(again.value)

    with_backend(body)


def test_proxy_tokens_are_single_use_too(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = TokenStore(backend, now=clock)
        info = await store.create(["proxy"])
        await store.consume(info.token, "Proxy", "proxy01")
        with pytest.raises(InvalidToken):
            await store.consume(info.token, "Proxy", "proxy02")

    with_backend(body)


def test_concurrent_consumes_exactly_one_succeeds(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = TokenStore(backend, now=clock)
        info = await store.create(["node"])
        results = await asyncio.gather(
            *(store.consume(info.token, "node", f"node{i}") for i in range(20)), return_exceptions=True
        )
        assert sum(isinstance(r, TokenInfo) for r in results) == 1
        assert all(isinstance(r, InvalidToken) for r in results if not isinstance(r, TokenInfo))

    with_backend(body)


def test_two_auth_servers_sharing_the_backend_cannot_both_accept(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        first, second = TokenStore(backend, now=clock), TokenStore(backend, now=clock)
        for _ in range(5):
            info = await first.create(["node"])
            results = await asyncio.gather(
                *(s.consume(info.token, "node", "n") for s in (first, second) * 5), return_exceptions=True
            )
            assert sum(isinstance(r, TokenInfo) for r in results) == 1

    with_backend(body)


def test_expired_and_invalid_tokens(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = TokenStore(backend, now=clock)
        info = await store.create(["node"], ttl=dt.timedelta(minutes=10))
        clock.advance(minutes=10)
        with pytest.raises(TokenExpired) as expired:
            await store.consume(info.token, "node", "node01")
        assert str(expired.value) == "token expired"
        # it was deleted: now it is simply not valid
        with pytest.raises(InvalidToken) as gone:
            await store.consume(info.token, "node", "node01")
        assert str(gone.value) == NOT_VALID and not isinstance(gone.value, TokenExpired)
        assert await store.list() == []
        with pytest.raises(InvalidToken) as bad:
            await store.consume(Secret("f" * 32), "node", "node01")
        assert str(bad.value) == NOT_VALID
        with pytest.raises(InvalidToken) as bad_role:
            await store.consume(Secret("f" * 32), "proxy", "proxy01")
        assert str(bad_role.value) == '"proxy01" can not join the cluster with role Proxy, the token is not valid'

    with_backend(body)


def test_a_token_only_joins_its_roles_and_is_kept_on_refusal(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = TokenStore(backend, now=clock)
        info = await store.create(["node"])
        with pytest.raises(InvalidToken) as refused:
            await store.consume(info.token, "proxy", "p1")
        assert str(refused.value) == '"p1" can not join the cluster with role Proxy, the token is not valid'
        with pytest.raises(InvalidToken):
            await store.consume(info.token, "db", "p1")
        await store.consume(info.token, "node", "n1")

    with_backend(body)


def test_static_tokens_never_expire_and_cannot_be_removed(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        static = parse_static_tokens(["proxy,node:static-secret-1"])
        store = TokenStore(backend, static, now=clock)
        for _ in range(3):
            assert (await store.consume(Secret("static-secret-1"), "node", "n")).static
        clock.advance(days=400)
        assert (await store.consume(Secret("static-secret-1"), "proxy", "p")).static
        with pytest.raises(InvalidToken):
            await store.consume(Secret("static-secret-1"), "auth", "a")
        with pytest.raises(TokenError) as refused:
            await store.remove(Secret("static-secret-1"))
        assert str(refused.value) == ("the token is statically configured in auth_service.tokens and cannot be removed")
        assert (await store.consume(Secret("static-secret-1"), "node", "n")).static

    with_backend(body)


def test_list_and_remove(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        static = parse_static_tokens(["node:static-1"])
        store = TokenStore(backend, static, now=clock)
        late = await store.create(["node"], ttl=dt.timedelta(minutes=20))
        soon = await store.create(["proxy"], ttl=dt.timedelta(minutes=5))
        listed = await store.list()
        assert [t.token.reveal() for t in listed] == ["static-1", soon.token.reveal(), late.token.reveal()]
        assert [t.static for t in listed] == [True, False, False]
        clock.advance(minutes=6)
        assert [t.token.reveal() for t in await store.list()] == ["static-1", late.token.reveal()]
        await store.remove(late.token)
        with pytest.raises(NotFound, match="^token not found$"):
            await store.remove(late.token)
        with pytest.raises(InvalidToken):
            await store.consume(late.token, "node", "n")

    with_backend(body)


# -- user tokens -----------------------------------------------------------------------------------


def test_invite_tokens(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserTokenStore(backend, now=clock)
        invite = await store.create("joe")
        assert HEX32.match(invite.token.reveal()) and invite.kind == "invite" and invite.user == "joe"
        assert invite.expires == clock.now + dt.timedelta(hours=1)
        assert invite.token.reveal() not in repr(invite)
        assert (await store.get(invite.token)).user == "joe"
        longest = await store.create("amy", ttl=dt.timedelta(hours=48))
        assert longest.expires == clock.now + dt.timedelta(hours=48)
        with pytest.raises(TokenError) as too_long:
            await store.create("joe", ttl=dt.timedelta(hours=48, seconds=1))
        assert str(too_long.value) == "user token TTL 48h0m1s exceeds the maximum of 48h0m0s"
        with pytest.raises(TokenError, match="^user token TTL must be positive$"):
            await store.create("joe", ttl=dt.timedelta(seconds=-1))
        with pytest.raises(TokenError, match='^unknown user token kind "x"'):
            await store.create("joe", kind="x")
        with pytest.raises(TokenError, match="invalid user name"):
            await store.create("a b")
        assert [t.user for t in await store.list()] == ["joe", "amy"]
        assert [t.user for t in await store.list("amy")] == ["amy"]
        used = await store.consume(invite.token)
        assert used.user == "joe"
        with pytest.raises(InvalidToken, match="^the user token is not valid or has expired$"):
            await store.consume(invite.token)
        assert await store.delete_for_user("amy") == 1
        assert await store.list() == []

    with_backend(body)


def test_invite_tokens_expire_and_are_used_once_concurrently(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserTokenStore(backend, now=clock)
        invite = await store.create("joe", ttl=dt.timedelta(minutes=10))
        results = await asyncio.gather(*(store.consume(invite.token) for _ in range(10)), return_exceptions=True)
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        reset = await store.create("joe", kind="reset")
        clock.advance(hours=1)
        with pytest.raises(InvalidToken, match="^the user token is not valid or has expired$"):
            await store.get(reset.token)
        with pytest.raises(InvalidToken):
            await store.consume(reset.token)
        assert await store.list() == []

    with_backend(body)
