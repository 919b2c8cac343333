"""``tctl nodes`` (add, ls) and ``tctl tokens`` (ls, add, rm): join tokens and registered nodes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from teleport_auth.tctl import (
    FORMATS,
    UsageError,
    check_ttl,
    command_parser,
    human_time,
    labels_text,
    print_json,
    printable,
    run,
    short_duration,
    split_list,
    subcommands,
    table,
)
from teleport_core.api.client import AuthClient
from teleport_core.cli.common import CliContext


def _roles(text: str, flag: str) -> list[str]:
    """Join roles from ``--roles``/``--type``, lower case (the server checks they are valid)."""
    return [role.lower() for role in split_list(text, flag)]


def join_instructions(token: dict[str, Any], auth_server: str) -> str:
    """What ``tctl nodes add`` prints: the token, its lifetime and the ``teleport start`` command."""
    expires = dt.datetime.fromisoformat(token["expires"])
    minutes = max(0, round((expires - dt.datetime.now(dt.UTC)).total_seconds() / 60))
    value = token["token"]
    roles = ",".join(role.lower() for role in token["roles"])
    pins = token.get("ca_pins") or [token["ca_pin"]]
    pin_lines = "".join(f"   --ca-pin={pin} \\\n" for pin in pins)
    return (
        f"The invite token: {value}\n"
        f"This token will expire in {minutes} minutes\n"
        "\n"
        "Run this on the new node to join the cluster:\n"
        "\n"
        "> teleport start \\\n"
        f"   --roles={roles} \\\n"
        f"   --token={value} \\\n"
        f"{pin_lines}"
        f"   --auth-server={auth_server}\n"
        "\n"
        "Please note:\n"
        "\n"
        f"  - This invitation token will expire in {minutes} minutes\n"
        f"  - {auth_server} must be reachable from the new node"
    )


def parse_labels(text: str, flag: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> a mapping (a usage error naming ``flag`` otherwise)."""
    out: dict[str, str] = {}
    for part in split_list(text, flag) if text else []:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag}: expected key=value[,key=value...], got {printable(part)}")
        out[key.strip()] = value.strip()
    return out


async def _add_trusted_token(client: AuthClient, roles: list[str], labels: dict[str, str], ttl: str,
                             output: str) -> int:
    """What Teleport prints for ``tctl tokens add --type=trusted_cluster``."""
    token = await client.call("POST", "/v1/tokens", {"roles": roles, "ttl": ttl, "labels": labels})
    if output == "json":
        print_json(token)
        return 0
    expires = dt.datetime.fromisoformat(token["expires"])
    minutes = max(0, round((expires - dt.datetime.now(dt.UTC)).total_seconds() / 60))
    print(f"The cluster invite token: {token['token']}\nThis token will expire in {minutes} minutes\n\n"
          "Use this token when defining a trusted cluster resource on a remote cluster.")
    return 0


async def _add_token(client: AuthClient, roles: list[str], ttl: str, output: str) -> int:
    token = await client.create_token(roles, ttl)
    if output == "json":
        print_json({**token, "auth_server": client.addr})
    else:
        print(join_instructions(token, client.addr))
    return 0


def nodes(argv: list[str], cli: CliContext) -> int:
    """``tctl nodes add|ls``."""
    parser = command_parser(cli, "Add and list nodes.")
    add = subcommands(parser)
    p = add("add", "Create a join token and print how to start a node with it.")
    p.add_argument("--roles", default="node", help="comma-separated roles the token admits: node, proxy (default node)")
    p.add_argument("--ttl", help="how long the token stays valid (default and maximum 30m)")
    p.add_argument("--format", choices=FORMATS, default="text")
    p = add("ls", "List the registered nodes.")
    p.add_argument("--format", choices=FORMATS, default="text")
    args = parser.parse(argv)

    if args.subcommand == "add":
        roles = _roles(args.roles, "--roles")
        ttl = check_ttl(args.ttl)

        async def body(client: AuthClient) -> int:
            return await _add_token(client, roles, ttl, args.format)

    else:

        async def body(client: AuthClient) -> int:
            found = sorted(await client.get_nodes(), key=lambda n: (n["nodename"], n["uuid"]))
            if args.format == "json":
                print_json(found)
                return 0
            rows = [
                [printable(n["nodename"]), n["uuid"], "⟵ Tunnel" if n.get("tunnel") else printable(n["addr"]),
                 labels_text(n.get("labels") or {})]
                for n in found
            ]
            print(table(["Nodename", "UUID", "Address", "Labels"], rows))
            return 0

    return run(cli, args, body)


def _expiry(token: dict[str, Any], now: dt.datetime) -> str:
    if not token.get("expires"):
        return "never"
    expires = dt.datetime.fromisoformat(token["expires"])
    return f"{human_time(expires)} ({short_duration(expires - now)})"


def tokens(argv: list[str], cli: CliContext) -> int:
    """``tctl tokens ls|add|rm``."""
    parser = command_parser(cli, "List, add and remove join tokens.")
    add = subcommands(parser)
    p = add("ls", "List join tokens.")
    p.add_argument("--format", choices=FORMATS, default="text")
    p = add("add", "Create a join token.")
    p.add_argument("--type", required=True,
                   help="comma-separated roles the token admits: node, proxy; or trusted_cluster (a leaf joining)")
    p.add_argument("--labels", default="", help="trusted_cluster only: the leaf's remote_cluster labels, k=v,...")
    p.add_argument("--ttl", help="how long the token stays valid (default and maximum 30m)")
    p.add_argument("--format", choices=FORMATS, default="text")
    p = add("rm", "Delete a join token.")
    p.add_argument("token", metavar="TOKEN")
    args = parser.parse(argv)

    if args.subcommand == "ls":

        async def body(client: AuthClient) -> int:
            found = await client.get_tokens()
            if args.format == "json":
                print_json(found)
            elif not found:
                print("No active tokens found.")
            else:
                now = dt.datetime.now(dt.UTC)
                rows = [[t["token"], ",".join(t["roles"]), _expiry(t, now)] for t in found]
                print(table(["Token", "Type", "Expiry Time (UTC)"], rows))
            return 0

    elif args.subcommand == "add":
        roles = _roles(args.type, "--type")
        ttl = check_ttl(args.ttl)
        if "trusted_cluster" in roles:
            labels = parse_labels(args.labels, "--labels")

            async def body(client: AuthClient) -> int:
                return await _add_trusted_token(client, roles, labels, ttl, args.format)
        elif args.labels:
            raise UsageError("--labels: only a --type=trusted_cluster token takes labels")
        else:

            async def body(client: AuthClient) -> int:
                return await _add_token(client, roles, ttl, args.format)

    else:

        async def body(client: AuthClient) -> int:
            await client.delete_token(args.token)
            print(f"Token {printable(args.token)} has been deleted")
            return 0

    return run(cli, args, body)
