"""``tctl users``: add, ls, rm, update and reset local users, with Teleport's messages."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from typing import Any

from teleport_auth.tctl import (
    FORMATS,
    UsageError,
    check_ttl,
    command_parser,
    print_json,
    printable,
    run,
    short_duration,
    split_list,
    subcommands,
    table,
)
from teleport_auth.tokens import MAX_USER_TOKEN_TTL
from teleport_core.api.client import AuthClient
from teleport_core.cli.common import CliContext
from teleport_core.config.values import parse_duration
from teleport_core.errors import AlreadyExists

INVITE_MESSAGE = (
    'User "{user}" has been created but requires a password. Share this URL with the user to complete user setup, '
    "link is valid for {ttl}:"
)
RESET_MESSAGE = (
    'User "{user}" has been reset. Share this URL with the user to complete password reset, link is valid for {ttl}:'
)


def _user_token_ttl(text: str | None) -> str:
    """``--ttl`` of an invite or reset link: positive, at most 48h (checked before anything is written)."""
    ttl = check_ttl(text)
    if ttl and parse_duration(ttl) > MAX_USER_TOKEN_TTL:
        raise UsageError(f"--ttl: {ttl} exceeds the maximum of {short_duration(MAX_USER_TOKEN_TTL)} for user links")
    return ttl


def print_link(message: str, user: str, link: dict[str, Any]) -> None:
    """Teleport's invite/reset text: the message, the URL, and a note naming the proxy."""
    ttl = link.get("ttl")
    if isinstance(ttl, str):
        valid_for = short_duration(parse_duration(ttl))
    else:
        expires = dt.datetime.fromisoformat(link["expires"])
        valid_for = short_duration(expires - dt.datetime.now(dt.UTC))
    url = link["url"]
    print(message.format(user=user, ttl=valid_for))
    print(url)
    print()
    print(f"NOTE: Make sure {urllib.parse.urlsplit(url).netloc} points at a Teleport proxy which users can access.")


def users(argv: list[str], cli: CliContext) -> int:
    """``tctl users add|ls|rm|update|reset``."""
    parser = command_parser(cli, "Manage local users.")
    add = subcommands(parser)

    p = add("add", "Create a user and print the link to complete its signup.")
    p.add_argument("name", metavar="NAME", help="Teleport user name")
    p.add_argument("--roles", required=True, help="comma-separated roles of the new user (e.g. access,editor)")
    p.add_argument("--logins", help="comma-separated OS logins allowed (the user's logins trait)")
    p.add_argument("--ttl", help="how long the signup link stays valid (default 1h, at most 48h)")
    p.add_argument("--format", choices=FORMATS, default="text")

    p = add("ls", "List users.")
    p.add_argument("--format", choices=FORMATS, default="text")

    p = add("rm", "Delete users.")
    p.add_argument("names", metavar="NAMES", help="comma-separated user names")

    p = add("update", "Change a user's roles or logins.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--set-roles", help="comma-separated roles, replacing the current ones")
    p.add_argument("--set-logins", help="comma-separated OS logins, replacing the current ones")

    p = add("reset", "Print a link for the user to set a new password (and second factor).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--ttl", help="how long the reset link stays valid (default 1h, at most 48h)")
    p.add_argument("--format", choices=FORMATS, default="text")

    args = parser.parse(argv)
    command = args.subcommand
    if command == "add":
        roles = split_list(args.roles, "--roles")
        logins = split_list(args.logins, "--logins") if args.logins is not None else []
        ttl = _user_token_ttl(args.ttl)

        async def body(client: AuthClient) -> int:
            traits = {"logins": logins} if logins else {}
            try:
                answer = await client.create_user(args.name, roles, traits, ttl)
            except AlreadyExists as exc:
                raise AlreadyExists(
                    f"{exc}; to change its roles: tctl users update {args.name} --set-roles {','.join(roles)}"
                ) from None
            if args.format == "json":
                print_json(answer)
            else:
                print_link(INVITE_MESSAGE, args.name, answer["invite"])
            return 0

    elif command == "ls":

        async def body(client: AuthClient) -> int:
            found = sorted(await client.get_users(), key=lambda u: u["metadata"]["name"])
            if args.format == "json":
                print_json(found)
            elif not found:
                print("No users found")
            else:
                rows = [[printable(u["metadata"]["name"]), printable(",".join(u["spec"]["roles"]))] for u in found]
                print(table(["User", "Roles"], rows))
            return 0

    elif command == "rm":
        names = split_list(args.names, "NAMES")

        async def body(client: AuthClient) -> int:
            for name in names:
                await client.delete_user(name)
                print(f"User {json.dumps(name)} has been deleted")
            return 0

    elif command == "update":
        new_roles = split_list(args.set_roles, "--set-roles") if args.set_roles is not None else None
        new_logins = split_list(args.set_logins, "--set-logins", required=False) if args.set_logins is not None \
            else None
        if new_roles is None and new_logins is None:
            raise UsageError("tctl users update: nothing to update; pass --set-roles and/or --set-logins")

        async def body(client: AuthClient) -> int:
            traits = None
            if new_logins is not None:
                current = await client.get_user(args.name)
                traits = {**current["spec"].get("traits", {}), "logins": new_logins}
            await client.update_user(args.name, roles=new_roles, traits=traits)
            print(f"User {args.name} has been updated:")
            if new_roles is not None:
                print(f"\tNew roles: {','.join(new_roles)}")
            if new_logins is not None:
                print(f"\tNew logins: {','.join(new_logins)}")
            return 0

    else:  # reset
        ttl = _user_token_ttl(args.ttl)

        async def body(client: AuthClient) -> int:
            answer = await client.reset_user(args.name, ttl)
            if args.format == "json":
                print_json({"user": args.name, **answer})
            else:
                print_link(RESET_MESSAGE, args.name, answer)
            return 0

    return run(cli, args, body)

