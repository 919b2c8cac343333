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

from teleport_auth.tctl import UsageError, command_parser, labels_text, print_json, printable, run, table
from teleport_core.api.client import AuthClient
from teleport_core.cli.common import CliContext
from teleport_core.errors import NotFound, TeleportError
from teleport_core.policy.roles import InvalidRole, parse_role, role_to_dict
from teleport_core.suggest import did_you_mean

# resource kinds tctl get/rm know, with the names they may be given by (Teleport's, plural and short forms)
KINDS: dict[str, str] = {"role": "role", "roles": "role", "user": "user", "users": "user", "lock": "lock",
                         "locks": "lock", "node": "node", "nodes": "node", "token": "token", "tokens": "token",
                         "cert_authority": "cert_authority", "cert_authorities": "cert_authority",
                         "cert_authoritys": "cert_authority", "ca": "cert_authority", "cas": "cert_authority",
                         "access_request": "access_request", "access_requests": "access_request",
                         "trusted_cluster": "trusted_cluster", "trusted_clusters": "trusted_cluster",
                         "tc": "trusted_cluster", "remote_cluster": "remote_cluster",
                         "remote_clusters": "remote_cluster", "rc": "remote_cluster", "rcs": "remote_cluster",
                         "all": "all"}
SUPPORTED = ("role", "user", "lock", "node", "token", "cert_authority", "access_request", "trusted_cluster",
             "remote_cluster", "all")
#: what ``tctl get all`` prints, in this order (every kind the cluster has)
ALL_KINDS = ("cert_authority", "role", "user", "token", "node", "lock")
#: kinds ``tctl rm`` deletes
REMOVABLE = ("role", "user", "lock", "node", "token", "access_request", "trusted_cluster", "remote_cluster")
# kinds ``tctl create`` accepts (what the auth API's /v1/resources takes, and trusted_cluster)
CREATABLE = ("role", "node", "trusted_cluster")  # node: sub_kind openssh only (an agentless sshd: docs/sessions.md)
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
    if kind == "all" and name:
        raise UsageError(f"invalid resource reference {json.dumps(text)}: all takes no name")
    if "/" in name:
        raise UsageError(f"invalid resource reference {json.dumps(text)}: expected KIND/NAME")
    return Ref(kind, name)


def ref_kind_needs_name(text: str) -> bool:
    """``tctl rm all`` is refused as a kind rm does not delete, not as a missing name."""
    return KINDS.get(text.strip().partition("/")[0].lower()) != "all"


def parse_refs(text: str) -> list[Ref]:
    """``roles,user/joe`` -> one :class:`Ref` each."""
    parts = [part.strip() for part in text.split(",")]
    if any(not part for part in parts):
        raise UsageError(f'expected a resource like "roles" or "role/NAME", got {json.dumps(text)}')
    return [parse_ref(part) for part in parts]


# -- tctl get -------------------------------------------------------------------------------------------


async def fetch(client: AuthClient, ref: Ref, *, with_secrets: bool = False) -> list[dict[str, Any]]:
    """The resources ``ref`` names, in their resource form (``kind``, ``version``, ``metadata``, ``spec``).

    Every read is an auth API call, authorized there with the caller's roles. Join token values
    are masked unless ``with_secrets``; certificate authorities are public keys and certificates
    only (the API never returns a CA's private keys).
    """
    if ref.kind == "all":
        return [doc for kind in ALL_KINDS for doc in await fetch(client, Ref(kind), with_secrets=with_secrets)]
    if ref.kind == "role":
        if ref.name:
            return [await client.get_role(ref.name)]
        return sorted(await client.get_roles(), key=lambda r: r["metadata"]["name"])
    if ref.kind == "node":
        return _pick_node([node_resource(n) for n in await client.get_nodes()], ref.name)
    if ref.kind == "token":
        tokens = await client.get_tokens()
        if ref.name:
            tokens = [t for t in tokens if t["token"] == ref.name and not t.get("static")]
            if not tokens:
                raise NotFound("token not found (give its value, as tctl tokens ls prints it)")
        return [token_resource(t, with_secrets=with_secrets) for t in tokens]
    if ref.kind == "cert_authority":
        return await _fetch_cas(client, ref.name)
    if ref.kind == "access_request":
        from teleport_auth.tctl_requests import get_request, list_requests, request_ids

        return [await get_request(client, request_ids(ref.name)[0])] if ref.name else await list_requests(client)
    if ref.kind in ("trusted_cluster", "remote_cluster"):
        path = f"/v1/{ref.kind}s"
        return [await client.call("GET", f"{path}/{ref.name}")] if ref.name else list(await client.call("GET", path))
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


def _pick_node(nodes: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Every node, or the one whose UUID is ``name`` (or, when unique, whose hostname is)."""
    nodes = sorted(nodes, key=lambda n: (n["spec"]["hostname"], n["metadata"]["name"]))
    if not name:
        return nodes
    found = [n for n in nodes if n["metadata"]["name"] == name] or [n for n in nodes if n["spec"]["hostname"] == name]
    if not found:
        raise NotFound(f"node {json.dumps(name)} not found (give its UUID or hostname, as tctl nodes ls prints them)")
    if len(found) > 1:
        uuids = ", ".join(n["metadata"]["name"] for n in found)
        raise UsageError(f"{len(found)} nodes are named {json.dumps(name)}; give one's UUID: {uuids}")
    return found


def node_resource(node: dict[str, Any]) -> dict[str, Any]:
    """A node of ``/v1/nodes`` in Teleport's resource form (``metadata.name`` is the host UUID)."""
    return {"kind": "node", "sub_kind": node.get("sub_kind") or "teleport", "version": "v2",
            "metadata": {"name": node["uuid"], "labels": dict(node.get("labels") or {})},
            "spec": {"addr": node.get("addr", ""), "hostname": node["nodename"],
                     "use_tunnel": bool(node.get("tunnel", False))}}


def token_resource(token: dict[str, Any], *, with_secrets: bool) -> dict[str, Any]:
    """A join token in Teleport's resource form; its value (``metadata.name``) masked unless ``with_secrets``."""
    from teleport_auth.tokens import MASKED

    metadata: dict[str, Any] = {"name": token["token"] if with_secrets else MASKED}
    if token.get("expires"):
        metadata["expires"] = token["expires"]
    if token.get("static"):
        metadata["labels"] = {"teleport.dev/origin": "config-file"}
    return {"kind": "token", "version": "v2", "metadata": metadata,
            "spec": {"roles": list(token["roles"]), "join_method": "token"}}


def ca_resource(answer: dict[str, Any]) -> dict[str, Any]:
    """A CA of ``/v1/cas/<type>`` in Teleport's resource form: public keys and certificates only."""
    pairs = [{"ssh": [{"public_key": ssh}], "tls": [{"cert": tls}]}
             for ssh, tls in zip(answer["ssh_public_keys"], answer["tls_certs"], strict=True)]
    spec: dict[str, Any] = {"type": answer["type"], "cluster_name": answer["cluster_name"],
                            "active_keys": pairs[0] if pairs else {"ssh": [], "tls": []}}
    if len(pairs) > 1:
        spec["additional_trusted_keys"] = {"ssh": [k for p in pairs[1:] for k in p["ssh"]],
                                           "tls": [k for p in pairs[1:] for k in p["tls"]]}
    spec["rotation"] = answer.get("rotation", {})
    return {"kind": "cert_authority", "sub_kind": answer["type"], "version": "v2",
            "metadata": {"name": answer["cluster_name"]}, "spec": spec}


CA_TYPES = ("host", "user")


async def _fetch_cas(client: AuthClient, name: str) -> list[dict[str, Any]]:
    """``cert_authority`` (both), ``cert_authority/host``, ``/user`` or ``/<cluster name>`` (both)."""
    types = [name] if name in CA_TYPES else list(CA_TYPES)
    docs = [ca_resource(await client.get_cert_authority(t)) for t in types]
    if name and name not in CA_TYPES and not any(d["metadata"]["name"] == name for d in docs):
        raise NotFound(f"cert_authority {json.dumps(name)} not found: expected host, user or the cluster's name")
    return docs


def _node_labels_text(labels: dict[str, Any]) -> str:
    if "*" in labels:
        return "<all nodes>"
    return ",".join(
        f"{printable(k)}={printable(v if isinstance(v, str) else '[' + ' '.join(v) + ']')}"
        for k, v in sorted(labels.items())
    )


def _rule_text(rule: dict[str, Any]) -> str:
    text = f"{','.join(rule['resources'])}:{','.join(rule['verbs'])}"
    return f"{text} where {rule['where']}" if rule.get("where") else text


def _rules_text(rules: list[dict[str, Any]]) -> str:
    return ",".join(_rule_text(r) for r in rules)


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
    parts.extend(_more_tables(docs))
    return "\n\n".join(parts)


def _ca_fingerprint(public_key: str) -> str:
    from teleport_core.pki import keys

    try:
        return keys.ssh_fingerprint(keys.load_public_key(public_key))
    except ValueError:
        return "-"


def _more_tables(docs: list[dict[str, Any]]) -> list[str]:
    """The text tables of nodes, join tokens and certificate authorities."""
    parts = []
    nodes = [d for d in docs if d.get("kind") == "node"]
    if nodes:
        rows = [[printable(n["spec"]["hostname"]), printable(n["metadata"]["name"]),
                 "⟵ Tunnel" if n["spec"].get("use_tunnel") else printable(n["spec"].get("addr", "")),
                 labels_text(n["metadata"].get("labels", {}))] for n in nodes]
        parts.append(table(["Host", "UUID", "Public Address", "Labels"], rows))
    tokens = [d for d in docs if d.get("kind") == "token"]
    if tokens:
        rows = [[printable(t["metadata"]["name"]), ",".join(t["spec"]["roles"]),
                 labels_text(t["metadata"].get("labels", {})), printable(t["metadata"].get("expires") or "never")]
                for t in tokens]
        parts.append(table(["Token", "Type", "Labels", "Expiry Time (UTC)"], rows))
    cas = [d for d in docs if d.get("kind") == "cert_authority"]
    if cas:
        rows = [[printable(ca["metadata"]["name"]), ca["spec"]["type"],
                 ",".join(_ca_fingerprint(k["public_key"]) for k in ca["spec"]["active_keys"].get("ssh", []))]
                for ca in cas]
        parts.append(table(["Cluster Name", "CA Type", "Fingerprint"], rows))
    return parts


def get(argv: list[str], cli: CliContext) -> int:
    """``tctl get KIND[/NAME][,...] [--format=yaml|json|text] [--with-secrets]``: roles, users, locks,
    nodes, tokens, cert authorities, or ``all`` of them."""
    parser = command_parser(cli, "Print resources (YAML that tctl create -f reads back).")
    parser.add_argument("resource", metavar="RESOURCE",
                        help=f"KIND or KIND/NAME, comma-separated (kinds: {', '.join(SUPPORTED)})")
    parser.add_argument("--format", choices=YAML_FORMATS, default="yaml")
    parser.add_argument("--with-secrets", action="store_true",
                        help="show join token values (CA private keys never leave the auth server)")
    args = parser.parse(argv)
    refs = parse_refs(args.resource)

    async def body(client: AuthClient) -> int:
        docs = [doc for ref in refs for doc in await fetch(client, ref, with_secrets=args.with_secrets)]
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
            if kind == "trusted_cluster":
                resource = _trusted_cluster(doc, label)
            else:
                resource = _openssh_node(doc, label) if kind == "node" else role_to_dict(parse_role(doc, label))
        except InvalidRole as exc:
            raise ResourceError(str(exc)) from None
        key = (kind, resource["metadata"]["name"])
        if key in seen:
            raise ResourceError(f'{label}: metadata.name: {kind} "{key[1]}" appears twice in the file')
        seen.add(key)
        out.append(resource)
    return out


def _openssh_node(doc: dict[str, Any], label: str) -> dict[str, Any]:
    """A ``kind: node`` document checked here (``sub_kind: openssh``), in its resource form."""
    from teleport_auth.presence import InvalidNode, parse_node_resource

    try:
        beat = parse_node_resource(doc, label)
    except InvalidNode as exc:
        raise ResourceError(str(exc)) from None
    return node_resource(beat.to_dict())


def _trusted_cluster(doc: dict[str, Any], label: str) -> dict[str, Any]:
    """A ``kind: trusted_cluster`` document checked here, in its resource form (with its token)."""
    from teleport_core.policy.trust import InvalidTrust, parse_trusted_cluster, trusted_cluster_to_dict

    try:
        return trusted_cluster_to_dict(parse_trusted_cluster(doc, label))
    except InvalidTrust as exc:
        raise ResourceError(str(exc)) from None


async def _create_trusted_clusters(client: AuthClient, docs: list[dict[str, Any]], force: bool) -> None:
    """Each trusted_cluster through ``PUT /v1/trusted_clusters/NAME`` (the leaf's auth does the handshake)."""
    from teleport_core.errors import AlreadyExists

    for doc in docs:
        name = doc["metadata"]["name"]
        exists = True
        try:
            await client.call("GET", f"/v1/trusted_clusters/{name}")
        except NotFound:
            exists = False
        if exists and not force:
            raise AlreadyExists(f"trusted_cluster {json.dumps(name)} already exists (use -f to update it)")
        await client.call("PUT", f"/v1/trusted_clusters/{name}", doc, timeout=60.0)
        verb = "updated" if exists else "created"
        print(f"trusted_cluster {json.dumps(name)} has been {verb}")


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

    trusted = [doc for doc in resources if doc["kind"] == "trusted_cluster"]
    others = [doc for doc in resources if doc["kind"] != "trusted_cluster"]

    async def body(client: AuthClient) -> int:
        if others:
            for result in await client.create_resources(others, force=args.force):
                verb = "created" if result.get("created") else "updated"
                print(f"{result['kind']} {json.dumps(result['name'])} has been {verb}")
        await _create_trusted_clusters(client, trusted, args.force)
        return 0

    return run(cli, args, body)


# -- tctl rm --------------------------------------------------------------------------------------------


def rm(argv: list[str], cli: CliContext) -> int:
    """``tctl rm role/NAME`` / ``user/NAME`` / ``lock/NAME`` / ``node/UUID`` / ``token/VALUE`` /
    ``access_request/ID``."""
    parser = command_parser(cli, "Delete a resource.")
    parser.add_argument("resource", metavar="KIND/NAME", help=f"e.g. role/NAME (kinds: {', '.join(REMOVABLE)})")
    args = parser.parse(argv)
    ref = parse_ref(args.resource, need_name=ref_kind_needs_name(args.resource))
    if ref.kind not in REMOVABLE:
        raise UsageError(f"tctl rm does not delete {ref.kind} resources (it deletes {', '.join(REMOVABLE)})")
    deleters: dict[str, Callable[[AuthClient, str], Awaitable[None]]] = {
        "role": lambda client, name: client.delete_role(name),
        "user": lambda client, name: client.delete_user(name),
        "lock": lambda client, name: client.delete_lock(name),
        "node": lambda client, name: client.delete_node(name),  # and its host record: frees the nodename
        "token": lambda client, name: client.delete_token(name),
        "access_request": _delete_access_request,
        "trusted_cluster": lambda client, name: client.call("DELETE", f"/v1/trusted_clusters/{name}"),
        "remote_cluster": lambda client, name: client.call("DELETE", f"/v1/remote_clusters/{name}"),
    }
    if ref.kind == "access_request":
        from teleport_auth.tctl_requests import request_ids

        request_ids(ref.name)  # a bad ID is refused here, naming what an ID looks like

    async def body(client: AuthClient) -> int:
        await deleters[ref.kind](client, ref.name)
        shown = "" if ref.kind == "token" else f" {json.dumps(ref.name)}"  # a token's value stays off the screen
        print(f"{ref.kind}{shown} has been deleted")
        return 0

    return run(cli, args, body)


async def _delete_access_request(client: AuthClient, name: str) -> None:
    from teleport_auth.tctl_requests import delete_request

    await delete_request(client, name)
