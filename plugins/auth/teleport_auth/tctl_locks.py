"""``tctl lock``: lock a user, role, login, node or access request, as Teleport's ``tctl lock`` does.

``tctl get locks`` and ``tctl rm lock/NAME`` live with the other resources (``tctl_resources``).
"""

from __future__ import annotations

import datetime as dt
import json

from teleport_auth.tctl import UsageError, check_ttl, command_parser, run
from teleport_core.api.client import AuthClient
from teleport_core.cli.common import CliContext
from teleport_core.config.values import parse_duration
from teleport_core.policy.locks import TARGET_KINDS, InvalidLock, LockTarget, lock_to_dict, new_lock, parse_time


def lock_target(values: dict[str, str | None]) -> LockTarget:
    """The target of ``--user``/``--role``/``--login``/``--node``/``--access-request``: exactly one, not empty."""
    given = {kind: (value or "").strip() for kind, value in values.items() if value is not None}
    empty = [kind for kind, value in given.items() if not value]
    if empty:
        raise UsageError(f"{_flag(empty[0])}: must not be empty")
    if not given:
        raise UsageError("specify what to lock: one of --user, --role, --login or --node (or --access-request)")
    if len(given) > 1:
        flags = " and ".join(_flag(kind) for kind in given)
        raise UsageError(f"{flags}: a lock targets one thing; create one lock for each")
    try:
        return LockTarget(user=given.get("user", ""), role=given.get("role", ""), login=given.get("login", ""),
                          node=given.get("node", ""), access_request=given.get("access_request", ""))
    except InvalidLock as exc:
        raise UsageError(str(exc)) from None


def _flag(kind: str) -> str:
    return "--" + kind.replace("_", "-")


def lock_expiry(ttl: str | None, expires: str | None, now: dt.datetime) -> dt.datetime | None:
    """When the lock ends (``--ttl`` from now, or ``--expires`` RFC 3339); None: never."""
    if ttl is not None and expires is not None:
        raise UsageError("--ttl and --expires: give one or the other")
    if ttl is not None:
        return now + parse_duration(check_ttl(ttl))
    if expires is not None:
        try:
            when = parse_time(expires, "--expires")
        except InvalidLock:
            raise UsageError(f"--expires: expected an RFC 3339 time like 2026-01-02T15:04:05Z, "
                             f"got {json.dumps(expires)}") from None
        if when <= now:
            raise UsageError(f"--expires: {json.dumps(expires)} is in the past")
        return when
    return None


def lock(argv: list[str], cli: CliContext) -> int:
    """``tctl lock --user=NAME|--role=NAME|--login=NAME|--node=UUID [--message=..] [--ttl=..|--expires=..]``."""
    parser = command_parser(cli, "Create a lock: refuse a user, role, login or node everywhere, and end their "
                                 "sessions, until the lock expires or is removed (tctl rm lock/NAME).")
    for kind in TARGET_KINDS:
        what = {"node": "the host UUID of a node",
                "access_request": "the ID of an access request (the certificates carrying it)"}.get(
                    kind, f"the name of a {kind}")
        parser.add_argument(_flag(kind), dest=kind, metavar="UUID" if kind == "node" else ("ID" if kind ==
                            "access_request" else "NAME"), help=f"lock {what}")
    parser.add_argument("--message", default="", help="shown to the locked user and in the audit log")
    parser.add_argument("--ttl", help="the lock lasts this long (e.g. 30m, 8h); default: until removed")
    parser.add_argument("--expires", metavar="RFC3339", help="the lock ends at this time (2026-01-02T15:04:05Z)")
    args = parser.parse(argv)
    target = lock_target({kind: getattr(args, kind) for kind in TARGET_KINDS})
    now = dt.datetime.now(dt.UTC)
    expires = lock_expiry(args.ttl, args.expires, now)
    created = new_lock(target, args.message, expires=expires, now=now)

    async def body(client: AuthClient) -> int:
        stored = await client.upsert_lock(lock_to_dict(created))
        print(f"Created a lock with name {json.dumps(stored['metadata']['name'])}.")
        return 0

    return run(cli, args, body)
