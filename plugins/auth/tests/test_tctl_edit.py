"""``tctl edit`` against a real auth server, with ``$EDITOR`` set to small scripts (sed, sh): applied
with compare-and-swap on the revision fetched; a concurrent change between fetch and save is refused."""

from __future__ import annotations

import shlex
import stat
import sys
from pathlib import Path

import pytest
from tctl_helpers import tctl_cluster

pytestmark = pytest.mark.e2e  # real processes end to end

ROLE = {"kind": "role", "version": "v7", "metadata": {"name": "ed-role"},
        "spec": {"allow": {"logins": ["alpha"]}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with tctl_cluster(tmp_path_factory.mktemp("tctl-edit")) as c:
        c.call("upsert_role", ROLE)
        c.call("create_user", "eve", ["access"], {"logins": ["eve"]})
        c.call("create_user", "aud", ["auditor"])
        yield c


@pytest.fixture
def editor(monkeypatch, tmp_path):
    """Set ``$EDITOR`` (``$VISUAL`` unset, temp files under ``tmp_path``)."""
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))

    def set_editor(command: str) -> None:
        monkeypatch.setenv("EDITOR", command)

    return set_editor


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\nset -e\n" + body)
    path.chmod(0o755)
    return str(path)


def set_logins(value: str) -> str:
    """A shell line that sets the role's ``spec.allow.logins`` in the file ``$1`` to ``value`` (Python)."""
    code = (f"import sys, yaml; p = sys.argv[1]; d = yaml.safe_load(open(p)); d['spec']['allow']['logins'] = {value}; "
            "open(p, 'w').write(yaml.safe_dump(d))")
    return f'{shlex.quote(sys.executable)} -c {shlex.quote(code)} "$1"\n'


def leftovers(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("tctl-edit-*.yaml"))


def test_edit_role_applies_the_change_in_a_private_temp_file(cluster, editor, tmp_path):
    seen = tmp_path / "seen"
    editor(script(tmp_path / "ed.sh", f'stat -c %a "$1" > {seen}\nsed -i "s/- alpha/- beta/" "$1"\n'))
    assert cluster.ok("edit", "role/ed-role") == 'role "ed-role" has been updated\n'
    assert seen.read_text().strip() == "600"
    assert cluster.call("get_role", "ed-role")["spec"]["allow"]["logins"] == ["beta"]
    assert leftovers(tmp_path) == []  # applied: the temp file is gone


def test_no_change_says_so_and_writes_nothing(cluster, editor, tmp_path):
    before = cluster.call("get_role", "ed-role")
    editor("true")
    assert cluster.ok("edit", "role/ed-role") == 'role "ed-role": no changes\n'
    assert cluster.call("get_role", "ed-role") == before


def test_concurrent_change_between_fetch_and_save_is_refused_and_edits_kept(cluster, editor, tmp_path):
    theirs = tmp_path / "theirs.yaml"
    theirs.write_text("kind: role\nversion: v7\nmetadata: {name: ed-role}\nspec: {allow: {logins: [theirs]}}\n")
    tctl = f"{shlex.quote(sys.executable)} -m teleport_core.cli.tctl -c {cluster.config_file}"
    # the "editor": someone else replaces the role while the file is open, then our edit is saved
    editor(script(tmp_path / "race.sh", f"{tctl} create -f {theirs} >/dev/null\n" + set_logins("['mine']")))
    message = cluster.error("edit", "role/ed-role")
    [kept] = leftovers(tmp_path)
    assert message == (f"ERROR: role ed-role was changed by someone else since you opened it; run tctl edit again "
                       f"(your edits are in {kept})")
    assert "- mine" in kept.read_text() and stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert cluster.call("get_role", "ed-role")["spec"]["allow"]["logins"] == ["theirs"]  # theirs stands


def test_edit_user_roles_and_traits(cluster, editor, tmp_path):
    editor(script(tmp_path / "ed.sh", 'sed -i -e "s/- access/- auditor/" -e "s/- eve$/- eve2/" "$1"\n'))
    assert cluster.ok("edit", "user/eve") == 'user "eve" has been updated\n'
    spec = cluster.call("get_user", "eve")["spec"]
    assert spec["roles"] == ["auditor"] and spec["traits"]["logins"] == ["eve2"]


def test_edit_user_fields_the_server_owns_is_refused(cluster, editor, tmp_path):
    editor(script(tmp_path / "ed.sh", 'sed -i "s/is_locked: false/is_locked: true/" "$1"\n'))
    message = cluster.error("edit", "user/eve")
    [kept] = leftovers(tmp_path)
    assert message == ("ERROR: spec.status: cannot be changed by tctl edit (it changes roles and traits) "
                       f"(your edits are in {kept})")


def test_invalid_edit_is_refused_locally_and_kept(cluster, editor, tmp_path):
    editor(script(tmp_path / "ed.sh", set_logins("7")))
    message = cluster.error("edit", "role/ed-role")
    [kept] = leftovers(tmp_path)
    assert message.startswith(f"ERROR: {kept}: ") and "logins" in message


def test_renaming_is_refused(cluster, editor, tmp_path):
    editor(script(tmp_path / "ed.sh", 'sed -i "s/name: ed-role/name: other-role/" "$1"\n'))
    assert cluster.error("edit", "role/ed-role").startswith('ERROR: metadata.name: must stay "ed-role" (tctl edit does not rename)')


def test_failing_or_missing_editor(cluster, editor, tmp_path):
    editor("false")
    message = cluster.error("edit", "role/ed-role")
    [kept] = leftovers(tmp_path)
    assert message == f"ERROR: the editor exited with status 1; nothing was changed (your edits are in {kept})"
    editor(str(tmp_path / "no-such-editor"))
    assert cluster.error("edit", "role/ed-role").startswith(
        f'ERROR: cannot run the editor "{tmp_path / "no-such-editor"}": No such file or directory (set $VISUAL or '
        "$EDITOR;")


def test_edit_needs_read_and_update_rights(cluster, editor, tmp_path):
    identity = tmp_path / "aud.pem"
    cluster.ok("auth", "sign", "--user=aud", f"--out={identity}")
    editor("true")
    assert cluster.error("edit", "role/ed-role", identity=identity) == (
        'ERROR: access denied to user "aud": no role allows read on role (auditor)')


BAD = [
    (("edit", "node/x"), "ERROR: tctl edit does not support node resources (it edits role, user)"),
    (("edit", "role"), 'ERROR: expected KIND/NAME like role/NAME, got "role"'),
    (("edit", "all"), "ERROR: tctl edit does not support all resources (it edits role, user)"),
    (("edit", "role/nosuch"), 'ERROR: role "nosuch" not found'),
    (("edit", "user/nosuch"), 'ERROR: user "nosuch" not found'),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_edit_arguments_are_one_clear_line(cluster, editor, args, message):
    editor("true")
    assert cluster.error(*args) == message


BAD_BODIES = [
    ("/v1/edit/roles/ed-role", {"resource": {**ROLE, "kind": "user"}, "revision": "1"},
     'kind: expected role, got "user"'),
    ("/v1/edit/roles/ed-role", {"resource": {**ROLE, "metadata": {"name": "x"}}, "revision": "1"},
     'metadata.name: must stay "ed-role" (tctl edit does not rename)'),
    ("/v1/edit/roles/ed-role", {"resource": ROLE}, "revision: required"),
    ("/v1/edit/roles/ed-role", {"resource": ROLE, "revision": ""}, "revision: must not be empty"),
    ("/v1/edit/users/eve", {"resource": {"kind": "user", "metadata": {"name": "eve"}, "spec": []}, "revision": "1"},
     "spec: expected a mapping with roles and traits"),
]


@pytest.mark.parametrize(("path", "payload", "message"), BAD_BODIES)
def test_bad_edit_bodies_are_400_naming_the_field(cluster, path, payload, message):
    from teleport_core.errors import TeleportError

    with pytest.raises(TeleportError) as caught:
        cluster.call("call", "PUT", path, payload)
    assert message in str(caught.value)


def test_a_stale_revision_is_412_and_writes_nothing(cluster):
    from teleport_core.errors import CompareFailed

    current = cluster.call("call", "GET", "/v1/edit/roles/ed-role")
    changed = {**current["resource"], "spec": {"allow": {"logins": ["stale"]}}}
    with pytest.raises(CompareFailed, match='role "ed-role" was changed by someone else since it was read'):
        cluster.call("call", "PUT", "/v1/edit/roles/ed-role", {"resource": changed, "revision": "not-the-revision"})
    assert cluster.call("get_role", "ed-role")["spec"]["allow"]["logins"] != ["stale"]
    done = cluster.call("call", "PUT", "/v1/edit/roles/ed-role", {"resource": changed,
                                                                  "revision": current["revision"]})
    assert done["resource"]["spec"]["allow"]["logins"] == ["stale"] and done["revision"] != current["revision"]
