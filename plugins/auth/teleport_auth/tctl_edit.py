"""``tctl edit KIND/NAME``: edit a role or a user in ``$VISUAL``/``$EDITOR``, as in Teleport.

The resource is fetched with the revision of its record and written to a temporary file (mode
0600); the editor runs; on save the edited resource is checked here, then applied with
compare-and-swap on that revision: if someone changed the resource meanwhile, nothing is written
and the message keeps the edited file's path so the edits are not lost. Unchanged: "no changes".
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from teleport_auth.tctl import UsageError, command_parser, run
from teleport_auth.tctl_resources import ResourceError, load_documents, parse_ref
from teleport_core.api.client import AuthClient
from teleport_core.cli.common import CliContext
from teleport_core.errors import CompareFailed, TeleportError

EDITABLE = ("role", "user")
DEFAULT_EDITOR = "vi"


class EditConflict(TeleportError):
    """The resource changed between fetch and save; the edits are kept in a file."""


def editor_command() -> list[str]:
    """``$VISUAL``, else ``$EDITOR``, else ``vi``, split like a shell would."""
    text = os.environ.get("VISUAL") or os.environ.get("EDITOR") or DEFAULT_EDITOR
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"cannot parse the editor command {json.dumps(text)}: {exc}") from None
    if not argv:
        raise UsageError("$VISUAL/$EDITOR is empty: set it to your editor (e.g. EDITOR=vi)")
    return argv


def _dump(resource: dict[str, Any]) -> str:
    return yaml.safe_dump(resource, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _parse_edited(kind: str, text: str, path: Path) -> dict[str, Any]:
    """The edited resource, checked here; errors keep ``path`` in the message."""
    if kind == "role":
        try:
            [doc] = load_documents(text, str(path))
        except ValueError:
            raise ResourceError(f"{path}: expected exactly one role") from None
        return doc
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ResourceError(f"{path}: invalid YAML: {exc}") from None
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise ResourceError(f"{path}: expected exactly one {kind}")
    return docs[0]


def edit(argv: list[str], cli: CliContext) -> int:
    """``tctl edit role/NAME`` or ``tctl edit user/NAME``."""
    parser = command_parser(cli, "Edit a resource in $VISUAL/$EDITOR; applied only if nobody changed it meanwhile.")
    parser.add_argument("resource", metavar="KIND/NAME", help=f"e.g. role/NAME (kinds: {', '.join(EDITABLE)})")
    args = parser.parse(argv)
    ref = parse_ref(args.resource, need_name=args.resource.strip().partition("/")[0].lower() != "all")
    if ref.kind not in EDITABLE:
        raise UsageError(f"tctl edit does not support {ref.kind} resources (it edits {', '.join(EDITABLE)})")
    command = editor_command()
    path_of = f"/v1/edit/{ref.kind}s/{ref.name}"
    fetched: dict[str, Any] = {}

    async def fetch(client: AuthClient) -> int:
        fetched.update(await client.call("GET", path_of))
        return 0

    run(cli, args, fetch)
    original = _dump(fetched["resource"])
    fd, name = tempfile.mkstemp(prefix=f"tctl-edit-{ref.kind}-", suffix=".yaml")  # mode 0600
    path = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(original)
    try:
        done = subprocess.run([*command, str(path)], check=False)
    except OSError as exc:
        raise TeleportError(f"cannot run the editor {json.dumps(command[0])}: {exc.strerror or exc} "
                            f"(set $VISUAL or $EDITOR; the resource is in {path})") from None
    if done.returncode != 0:
        raise TeleportError(f"the editor exited with status {done.returncode}; nothing was changed "
                            f"(your edits are in {path})")
    text = path.read_text(encoding="utf-8")
    edited = _parse_edited(ref.kind, text, path)
    if text == original or edited == fetched["resource"]:  # roles come back normalized, as the server stores them
        path.unlink()
        print(f"{ref.kind} {json.dumps(ref.name)}: no changes")
        return 0

    async def apply(client: AuthClient) -> int:
        try:
            await client.call("PUT", path_of, {"resource": edited, "revision": fetched["revision"]})
        except CompareFailed:
            raise EditConflict(f"{ref.kind} {ref.name} was changed by someone else since you opened it; run tctl "
                               f"edit again (your edits are in {path})") from None
        except TeleportError as exc:
            raise TeleportError(f"{exc} (your edits are in {path})") from None
        return 0

    run(cli, args, apply)
    path.unlink()
    print(f"{ref.kind} {json.dumps(ref.name)} has been updated")
    return 0

