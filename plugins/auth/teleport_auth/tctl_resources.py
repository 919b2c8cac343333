"""``tctl create``, ``tctl get`` and ``tctl rm``: resources as YAML documents, like Teleport.

``tctl get`` prints YAML that ``tctl create -f`` reads back. ``tctl create`` validates every
document of the file locally (the error names the document and the key path) before sending
them all in one request, which the auth server applies all or nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import yaml

from teleport_auth.tctl import UsageError, command_parser, print_json, printable, run, table
from teleport_core.api.client import AuthClient
from teleport_core.cli.common import CliContext
from teleport_core.errors import NotFound, TeleportError
from teleport_core.policy.roles import InvalidRole, parse_role, role_to_dict
from teleport_core.suggest import did_you_mean

# resource kinds tctl get/rm know, with the names they may be given by
KINDS: dict[str, str] = {"role": "role", "roles": "role", "user": "user", "users": "user", "lock": "lock",
                         "locks": "lock", "node": "node", "nodes": "node"}
SUPPORTED = ("role", "user", "lock")
# kinds ``tctl create`` accepts (what the auth API's /v1/resources takes)
CREATABLE = ("role",)
YAML_FORMATS = ("yaml", "json", "text")


class ResourceError(TeleportError):
    """A resource file or reference is wrong; the message names the file, document and key."""


@attrs.frozen
class Ref:
    """``role/admin`` (one resource) or ``roles`` (all of a kind: ``name`` empty)."""

    kind: str
    name: str = ""


def parse_ref(text: str, *, need_name: bool = False) -> Ref:
    """Parse ``kind[/name]``; an unknown kind lists the supported ones."""
    kind_text, _, name = text.strip().partition("/")
    kind = KINDS.get(kind_text.lower())
    if kind is None:
        hint = did_you_mean(kind_text, list(KINDS)).split(";")[0]
        raise UsageError(
            f"unknown resource kind {json.dumps(kind_text)}{hint}; supported: {', '.join(SUPPORTED)} "
            "(e.g. role/NAME, users)"
        )
    if need_name and not name:
        raise UsageError(f"expected KIND/NAME like {kind}/NAME, got {json.dumps(text)}")
    if "/" in name:
        raise UsageError(f"invalid resource reference {json.dumps(text)}: expected KIND/NAME")
    return Ref(kind, name)


def parse_refs(text: str) -> list[Ref]:
    """``roles,user/joe`` -> one :class:`Ref` each."""
    parts = [part.strip() for part in text.split(",")]
    if any(not part for part in parts):
        raise UsageError(f'expected a resource like "roles" or "role/NAME", got {json.dumps(text)}')
    return [parse_ref(part) for part in parts]


# -- tctl get -------------------------------------------------------------------------------------------


async def fetch(client: AuthClient, ref: Ref) -> list[dict[str, Any]]:
    """The resources ``ref`` names, in their resource form (``kind``, ``version``, ``metadata``, ``spec``)."""
    if ref.kind == "role":
        if ref.name:
            return [await client.get_role(ref.name)]
        return sorted(await client.get_roles(), key=lambda r: r["metadata"]["name"])
    if ref.kind == "node":
        raise UsageError("tctl get does not print nodes: use tctl nodes ls")
    if ref.kind == "lock":
        locks = await client.get_locks()
        if ref.name:
            found = [lock for lock in locks if lock["metadata"]["name"] == ref.name]
            if not found:
                raise NotFound(f"lock {json.dumps(ref.name)} not found")
            return found
        return locks
    if ref.name:
        return [await client.get_user(ref.name)]
    return sorted(await client.get_users(), key=lambda u: u["metadata"]["name"])


def _node_labels_text(labels: dict[str, Any]) -> str:
    if "*" in labels:
        return "<all nodes>"
    return ",".join(
        f"{printable(k)}={printable(v if isinstance(v, str) else '[' + ' '.join(v) + ']')}"
        for k, v in sorted(labels.items())
    )


def _rules_text(rules: list[dict[str, Any]]) -> str:
    return ",".join(f"{','.join(r['resources'])}:{','.join(r['verbs'])}" for r in rules)


def resources_text(docs: list[dict[str, Any]]) -> str:
    """Tables like ``tctl get --format=text``: roles first, then users, then locks."""
    parts = []
    roles = [d for d in docs if d.get("kind") == "role"]
    if roles:
        rows = []
        for role in roles:
            allow = role["spec"].get("allow", {})
            rows.append([
                printable(role["metadata"]["name"]),
                printable(",".join(allow.get("logins", []))),
                _node_labels_text(allow.get("node_labels", {})),
                printable(_rules_text(allow.get("rules", []))),
            ])
        parts.append(table(["Role", "Allowed to login as", "Node Labels", "Access to resources"], rows))
    users = [d for d in docs if d.get("kind") == "user"]
    if users:
        rows = [[printable(u["metadata"]["name"]), printable(",".join(u["spec"].get("roles", [])))] for u in users]
        parts.append(table(["User", "Roles"], rows))
    locks = [d for d in docs if d.get("kind") == "lock"]
    if locks:
        rows = [[printable(lock["metadata"]["name"]),
                 printable(",".join(f"{k}={v}" for k, v in lock["spec"]["target"].items())),
                 printable(lock["spec"].get("message", "")), printable(lock["metadata"].get("expires", "never"))]
                for lock in locks]
        parts.append(table(["ID", "Target", "Message", "Expires"], rows))
    return "\n\n".join(parts)


def get(argv: list[str], cli: CliContext) -> int:
    """``tctl get roles|role/NAME|users|user/NAME|locks|lock/NAME [--format=yaml|json|text]``."""
    parser = command_parser(cli, "Print resources (YAML that tctl create -f reads back).")
    parser.add_argument("resource", metavar="RESOURCE",
                        help=f"KIND or KIND/NAME, comma-separated (kinds: {', '.join(SUPPORTED)})")
    parser.add_argument("--format", choices=YAML_FORMATS, default="yaml")
    args = parser.parse(argv)
    refs = parse_refs(args.resource)

    async def body(client: AuthClient) -> int:
        docs = [doc for ref in refs for doc in await fetch(client, ref)]
        if args.format == "json":
            print_json(docs)
        elif args.format == "text":
            text = resources_text(docs)
            if text:
                print(text)
        elif docs:
            sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, allow_unicode=True))
        return 0

    return run(cli, args, body)


# -- tctl create ----------------------------------------------------------------------------------------


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: ``line 3, column 5: mapping values are not allowed here``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def load_documents(text: str, source: str) -> list[dict[str, Any]]:
    """Validate every resource document of ``text`` locally; their normalized forms, in order.

    Errors name ``source``, the document (when there are several) and the key path.
    """
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise ResourceError(f"{source}: invalid YAML: {_yaml_problem(exc)}") from None
    if not documents:
        raise ResourceError(f"{source}: no resources found")
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for index, doc in enumerate(documents, start=1):
        label = f"{source} (document {index})" if len(documents) > 1 else source
        if not isinstance(doc, dict):
            raise ResourceError(f"{label}: expected a resource (a mapping with kind, version, metadata, spec), "
                                f"got {type(doc).__name__}")
        kind = doc.get("kind")
        if kind is None:
            raise ResourceError(f"{label}: kind: required (supported: {', '.join(CREATABLE)})")
        if kind not in CREATABLE:
            hint = ' (change users with "tctl users add" and "tctl users update")' if kind == "user" else ""
            raise ResourceError(f"{label}: kind: tctl create does not support {json.dumps(kind)} "
                                f"(supported: {', '.join(CREATABLE)}){hint}")
        try:
            resource = role_to_dict(parse_role(doc, label))
        except InvalidRole as exc:
            raise ResourceError(str(exc)) from None
        key = (kind, resource["metadata"]["name"])
        if key in seen:
            raise ResourceError(f'{label}: metadata.name: {kind} "{key[1]}" appears twice in the file')
        seen.add(key)
        out.append(resource)
    return out


def _read_source(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "stdin"
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except OSError as exc:
        raise ResourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ResourceError(f"{path}: not a UTF-8 text file") from None


def create(argv: list[str], cli: CliContext) -> int:
    """``tctl create [-f] FILE``: create (or with ``-f`` replace) every resource of a YAML file."""
    parser = command_parser(cli, "Create resources from a YAML file (several documents: all or nothing).")
    parser.add_argument("file", metavar="FILE", nargs="?", default="-", help="YAML file; - (default) reads stdin")
    parser.add_argument("-f", "--force", action="store_true", help="replace resources that exist")
    args = parser.parse(argv)
    text, source = _read_source(args.file)
    resources = load_documents(text, source)

    async def body(client: AuthClient) -> int:
        for result in await client.create_resources(resources, force=args.force):
            verb = "created" if result.get("created") else "updated"
            print(f"{result['kind']} {json.dumps(result['name'])} has been {verb}")
        return 0

    return run(cli, args, body)


# -- tctl rm --------------------------------------------------------------------------------------------


def rm(argv: list[str], cli: CliContext) -> int:
    """``tctl rm role/NAME`` / ``tctl rm user/NAME`` / ``tctl rm lock/NAME``."""
    parser = command_parser(cli, "Delete a resource.")
    parser.add_argument("resource", metavar="KIND/NAME", help=f"e.g. role/NAME (kinds: {', '.join(SUPPORTED)})")
    args = parser.parse(argv)
    ref = parse_ref(args.resource, need_name=True)
    deleters: dict[str, Callable[[AuthClient, str], Awaitable[None]]] = {
        "role": lambda client, name: client.delete_role(name),
        "user": lambda client, name: client.delete_user(name),
        "lock": lambda client, name: client.delete_lock(name),
        "node": lambda client, name: client.delete_node(name),  # and its host record: frees the nodename
    }

    async def body(client: AuthClient) -> int:
        await deleters[ref.kind](client, ref.name)
        print(f"{ref.kind} {json.dumps(ref.name)} has been deleted")
        return 0

    return run(cli, args, body)
