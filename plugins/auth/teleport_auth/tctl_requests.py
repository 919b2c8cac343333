"""``tctl requests ls|get|approve|deny|rm``: access requests for the admin, as Teleport's
(``tctl request ...`` is the same command, Teleport's alias).

``approve`` and ``deny`` resolve a pending request at once (auth's ``PUT
/v1/access_requests/{id}/state``, rule ``access_request`` ``update``); ``approve --roles``
grants a subset of the requested roles. Reviews by users (thresholds) are ``tsh request review``.
``tctl rm access_request/ID`` is ``tctl requests rm ID`` (``tctl_resources``).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from teleport_auth.tctl import UsageError, command_parser, print_json, printable, run, split_list, subcommands, table
from teleport_core.api.client import AuthClient
from teleport_core.cli.common import CliContext
from teleport_core.policy.requests import (
    AccessRequest,
    InvalidAccessRequest,
    State,
    check_id,
    parse_access_request,
)

FORMATS = ("text", "json", "yaml")
#: Teleport's cut of a reason in the overview table
REASON_CELL = 75


def request_ids(text: str) -> list[str]:
    """``ID[,ID...]``: each a request ID (a UUID), or a :class:`UsageError` naming the bad one."""
    ids = split_list(text, "request ID")
    for value in ids:
        try:
            check_id(value)
        except InvalidAccessRequest:
            raise UsageError(f"{json.dumps(value)} is not a request ID (a UUID like "
                             "bc8ca931-fec9-4b15-9a6f-20c13c5641a9, as tctl requests ls prints them)") from None
    return ids


def parse(doc: Any) -> AccessRequest:
    try:
        return parse_access_request(doc)
    except InvalidAccessRequest as exc:
        raise UsageError(f"auth sent an access request tctl cannot read: {exc}") from None


# -- auth API calls ------------------------------------------------------------------------------------------


async def list_requests(client: AuthClient) -> list[dict[str, Any]]:
    found = await client.call("GET", "/v1/access_requests")
    return [doc for doc in (found or {}).get("items") or () if isinstance(doc, dict)]


async def get_request(client: AuthClient, request_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = await client.call("GET", f"/v1/access_requests/{request_id}")
    return doc


async def set_state(client: AuthClient, request_id: str, state: str, reason: str,
                    roles: Sequence[str] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {"state": state, "reason": reason}
    if roles:
        body["roles"] = list(roles)
    doc: dict[str, Any] = await client.call("PUT", f"/v1/access_requests/{request_id}/state", body)
    return doc


async def delete_request(client: AuthClient, request_id: str) -> None:
    await client.call("DELETE", f"/v1/access_requests/{request_id}")


# -- output ----------------------------------------------------------------------------------------------------


def _rfc822(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%d %b %y %H:%M UTC")


def _until(when: dt.datetime, now: dt.datetime) -> str:
    """Time left, rounded to the minute, as Go prints it (``59m0s``, ``1h0m0s``)."""
    minutes = max(0, round((when - now).total_seconds() / 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m0s" if hours else f"{minutes}m0s"


def _quoted(text: str, default: str = "") -> str:
    return printable(json.dumps(text, ensure_ascii=False)) if text else default


def _cut(text: str) -> str:
    return text if len(text) <= REASON_CELL else text[: REASON_CELL - 3] + "... [*]"


def overview(requests: Sequence[AccessRequest], now: dt.datetime) -> str:
    """``tctl requests ls``'s table: requests whose access has not expired, newest first."""
    live = sorted((r for r in requests if r.expires > now), key=lambda r: r.created, reverse=True)
    rows = [[r.id, printable(r.user), printable(f"roles={','.join(r.roles)}"), _rfc822(r.created),
             _until(r.request_expires, now) if r.state == State.PENDING else "", _until(r.expires, now), r.state,
             _cut(_quoted(r.request_reason)), _cut(_quoted(r.resolve_reason))] for r in live]
    text = table(["Token", "Requestor", "Metadata", "Created At (UTC)", "Request TTL", "Session TTL", "Status",
                  "Request Reason", "Resolve Reason"], rows)
    if any("[*]" in cell for row in rows for cell in row[-2:]):
        text += ("\n\n[*] Full reason was truncated, use the `tctl requests get` subcommand to view the full "
                 "reason.")
    return text


def detailed(req: AccessRequest) -> str:
    """``tctl requests get``'s text for one request."""
    rows = [("Token:", req.id), ("Requestor:", printable(req.user)),
            ("Metadata:", printable(f"roles={','.join(req.roles)}")), ("Created At (UTC):", _rfc822(req.created)),
            ("Access Expires (UTC):", _rfc822(req.expires)), ("Status:", req.state),
            ("Request Reason:", _quoted(req.request_reason, "[none]")),
            ("Resolve Reason:", _quoted(req.resolve_reason, "[none]"))]
    rows.extend((f"Review {i}:", f"{printable(r.author)} {r.proposed_state} {_quoted(r.reason, '[no reason]')}")
                for i, r in enumerate(req.reviews, start=1))
    width = max(len(k) for k, _ in rows) + 1
    return "\n".join(f"{k:<{width}}{v}" for k, v in rows)


def emit(docs: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        print_json(docs)
    else:
        sys.stdout.write(yaml.safe_dump(docs, sort_keys=False, default_flow_style=False, allow_unicode=True))


# -- the command -------------------------------------------------------------------------------------------------


def requests(argv: list[str], cli: CliContext) -> int:
    """``tctl requests ls|get|approve|deny|rm``."""
    parser = command_parser(cli, "Manage access requests: list, show, approve, deny, delete.")
    add = subcommands(parser)
    ls = add("ls", "Show active access requests (those whose access has not expired).")
    ls.add_argument("--format", choices=FORMATS, default="text")
    get = add("get", "Show access requests by ID.")
    get.add_argument("ids", metavar="REQUEST_ID[,REQUEST_ID]")
    get.add_argument("--format", choices=FORMATS, default="text")
    approve = add("approve", "Approve pending access requests.")
    approve.add_argument("ids", metavar="REQUEST_ID[,REQUEST_ID]")
    approve.add_argument("--reason", default="", help="why (shown to the requester and in the audit log)")
    approve.add_argument("--roles", help="grant only these of the requested roles <role>[,...]")
    deny = add("deny", "Deny pending access requests.")
    deny.add_argument("ids", metavar="REQUEST_ID[,REQUEST_ID]")
    deny.add_argument("--reason", default="", help="why (shown to the requester and in the audit log)")
    rm = add("rm", "Delete access requests (an approved one stops granting at once).")
    rm.add_argument("ids", metavar="REQUEST_ID[,REQUEST_ID]")
    args = parser.parse(argv)
    ids = request_ids(args.ids) if hasattr(args, "ids") else []
    reason = getattr(args, "reason", "")
    if len(reason) > 4096:
        raise UsageError("--reason: at most 4096 characters")
    roles = split_list(args.roles, "--roles") if getattr(args, "roles", None) is not None else []

    async def body(client: AuthClient) -> int:
        if args.subcommand == "ls":
            docs = await list_requests(client)
            if args.format == "text":
                print(overview([parse(d) for d in docs], dt.datetime.now(dt.UTC)))
            else:
                emit(docs, args.format)
        elif args.subcommand == "get":
            docs = [await get_request(client, rid) for rid in ids]
            if args.format == "text":
                print("\n\n".join(detailed(parse(d)) for d in docs))
            else:
                emit(docs, args.format)
        elif args.subcommand in ("approve", "deny"):
            state = State.APPROVED if args.subcommand == "approve" else State.DENIED
            for rid in ids:
                await set_state(client, rid, state, reason, roles)
        else:
            for rid in ids:
                await delete_request(client, rid)
            print("Access request deleted successfully." if len(ids) == 1 else
                  f"{len(ids)} access requests deleted successfully.")
        return 0

    return run(cli, args, body)
