"""``tctl users`` and ``tctl status`` against a real auth server, run as subprocesses."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from tctl_helpers import TctlCluster, tctl_cluster

from teleport_core.errors import NotFound

pytestmark = pytest.mark.e2e  # real processes end to end

INVITE = re.compile(
    r'User "(?P<user>[^"]+)" has been created but requires a password\. Share this URL with the user to complete '
    r"user setup, link is valid for (?P<ttl>\S+):\n"
    r"https://example\.com:3080/web/invite/(?P<token>[0-9a-f]{32})\n"
    r"\n"
    r"NOTE: Make sure example\.com:3080 points at a Teleport proxy which users can access\.\n"
)
RESET = re.compile(
    r'User "(?P<user>[^"]+)" has been reset\. Share this URL with the user to complete password reset, '
    r"link is valid for (?P<ttl>\S+):\n"
    r"https://example\.com:3080/web/reset/(?P<token>[0-9a-f]{32})\n"
    r"\n"
    r"NOTE: Make sure example\.com:3080 points at a Teleport proxy which users can access\.\n"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with tctl_cluster(tmp_path_factory.mktemp("tctl-users")) as c:
        yield c


def user_json(cluster: TctlCluster, name: str) -> dict:
    docs = json.loads(cluster.ok("get", f"user/{name}", "--format=json"))
    assert len(docs) == 1
    return docs[0]


def test_status_prints_cluster_and_pin(cluster):
    lines = cluster.ok("status").splitlines()
    assert lines[0] == "Cluster  example.com"
    assert lines[2:4] == ["User CA  never updated", "Host CA  never updated"]
    assert re.fullmatch(r"CA pin   sha256:[0-9a-f]{64}", lines[4])
    info = json.loads(cluster.ok("status", "--format=json"))
    assert lines[4].split()[-1] == info["ca_pin"] == cluster.call("status")["ca_pin"]


def test_users_add_prints_the_invite_like_teleport(cluster):
    out = cluster.ok("users", "add", "joe", "--roles=access", "--logins=root,ubuntu")
    match = INVITE.fullmatch(out)
    assert match, out
    assert match["user"] == "joe" and match["ttl"] == "1h"
    # the link is a live invite for joe, and the logins went into the trait
    assert cluster.call("get_user_token", match["token"])["user"] == "joe"
    joe = user_json(cluster, "joe")
    assert joe["spec"]["roles"] == ["access"]
    assert joe["spec"]["traits"] == {"logins": ["root", "ubuntu"]}


@pytest.mark.parametrize(("ttl", "shown"), [("2h", "2h"), ("90m", "1h30m"), ("45m", "45m"), ("48h", "48h")])
def test_users_add_ttl_is_shown_as_teleport_formats_it(cluster, ttl, shown):
    name = f"ttl-{ttl}"
    match = INVITE.fullmatch(cluster.ok("users", "add", name, "--roles=access", f"--ttl={ttl}"))
    assert match and match["ttl"] == shown


def test_users_add_json_and_global_options_after_the_subcommand(cluster):
    result = cluster.tctl("users", "add", "jason", "--roles", "access,editor", "--format=json")
    # -c came before "users"; the same works after the subcommand too
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["user"]["spec"]["roles"] == ["access", "editor"]
    assert re.fullmatch(r"https://example\.com:3080/web/invite/[0-9a-f]{32}", answer["invite"]["url"])
    late = subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "users", "ls", "-c",
                           str(cluster.config_file)], capture_output=True, text=True, timeout=60, check=False)
    assert late.returncode == 0 and "jason" in late.stdout, late.stderr


def test_users_ls_table_and_json(cluster):
    cluster.ok("users", "add", "lsuser", "--roles=auditor,access")
    lines = cluster.ok("users", "ls").splitlines()
    assert lines[0].split() == ["User", "Roles"]
    assert set(lines[1]) == {"-", " "}
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert rows["lsuser"] == "auditor,access"
    # columns line up under the header
    assert lines[0].index("Roles") == lines[2].index(lines[2].split()[1])
    listed = json.loads(cluster.ok("users", "ls", "--format=json"))
    assert {u["metadata"]["name"]: u["spec"]["roles"] for u in listed}["lsuser"] == ["auditor", "access"]


def test_users_update_sets_roles_and_logins(cluster):
    cluster.ok("users", "add", "upd", "--roles=access", "--logins=a")
    out = cluster.ok("users", "update", "upd", "--set-roles=access,editor", "--set-logins=root,admin")
    assert out == "User upd has been updated:\n\tNew roles: access,editor\n\tNew logins: root,admin\n"
    spec = user_json(cluster, "upd")["spec"]
    assert spec["roles"] == ["access", "editor"] and spec["traits"]["logins"] == ["root", "admin"]
    assert cluster.ok("users", "update", "upd", "--set-roles=auditor") == "User upd has been updated:\n" \
        "\tNew roles: auditor\n"
    spec = user_json(cluster, "upd")["spec"]
    assert spec["roles"] == ["auditor"] and spec["traits"]["logins"] == ["root", "admin"]  # logins kept


def test_users_reset_prints_the_reset_link(cluster):
    cluster.ok("users", "add", "rst", "--roles=access")
    match = RESET.fullmatch(cluster.ok("users", "reset", "rst", "--ttl=3h"))
    assert match and match["user"] == "rst" and match["ttl"] == "3h"
    token = cluster.call("get_user_token", match["token"])
    assert token["user"] == "rst" and token["kind"] == "reset"
    assert cluster.error("users", "reset", "nobody") == 'ERROR: user "nobody" not found'


def test_users_rm_deletes_each_user(cluster):
    cluster.ok("users", "add", "gone1", "--roles=access")
    cluster.ok("users", "add", "gone2", "--roles=access")
    assert cluster.ok("users", "rm", "gone1,gone2") == 'User "gone1" has been deleted\nUser "gone2" has been deleted\n'
    with pytest.raises(NotFound):
        cluster.call("get_user", "gone1")
    assert cluster.error("users", "rm", "gone1") == 'ERROR: user "gone1" not found'


BAD_USERS = [
    (("users", "add", "x"), 'ERROR: tctl users add: the following arguments are required: --roles '
                            '(see "tctl users add --help")'),
    (("users", "add", "--roles=access"), "ERROR: tctl users add: the following arguments are required: NAME "
                                         '(see "tctl users add --help")'),
    (("users", "add", "x", "--roles="), 'ERROR: --roles: expected a comma-separated list like "a,b", got ""'),
    (("users", "add", "x", "--roles=access,,editor"),
     'ERROR: --roles: expected a comma-separated list like "a,b", got "access,,editor"'),
    (("users", "add", "x", "--roles=nosuch"), 'ERROR: roles: no such role "nosuch"'),
    (("users", "add", "x", "--roles=access", "--ttl=72h"), "ERROR: --ttl: 72h exceeds the maximum of 48h for user links"),
    (("users", "add", "x", "--roles=access", "--ttl=soon"),
     'ERROR: --ttl: expected a duration like "30m" or "1h", got "soon"'),
    (("users", "add", "x", "--roles=access", "--ttl=-1h"), 'ERROR: --ttl: must be positive, got "-1h"'),
    (("users", "add", "bad/name", "--roles=access"),
     'ERROR: invalid user name "bad/name": use at most 255 characters, without spaces, commas, slashes or control '
     "characters"),
    (("users", "update", "x"), "ERROR: tctl users update: nothing to update; pass --set-roles and/or --set-logins"),
    (("users", "update", "nobody", "--set-roles=access"), 'ERROR: user "nobody" not found'),
    (("users", "frob"), "ERROR: tctl users: argument COMMAND: invalid choice: 'frob' (choose from 'add', 'ls', 'rm', "
                        "'update', 'reset') (see \"tctl users --help\")"),
    (("users",), 'ERROR: tctl users: the following arguments are required: COMMAND (see "tctl users --help")'),
    (("users", "ls", "--format=xml"), "ERROR: tctl users ls: argument --format: invalid choice: 'xml' (choose from "
                                      "'text', 'json') (see \"tctl users ls --help\")"),
]


@pytest.mark.parametrize(("args", "message"), BAD_USERS)
def test_bad_users_input_is_one_clear_line_and_changes_nothing(cluster, args, message):
    before = cluster.call("get_users")
    assert cluster.error(*args) == message
    assert cluster.call("get_users") == before


def test_users_add_existing_user_says_how_to_update(cluster):
    cluster.ok("users", "add", "dup", "--roles=access")
    assert cluster.error("users", "add", "dup", "--roles=editor") == (
        'ERROR: user "dup" already exists; to change its roles: tctl users update dup --set-roles editor')


def test_unreachable_auth_server_is_one_line(cluster):
    result = cluster.tctl("users", "ls", "--auth-server", "127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.startswith("ERROR: cannot reach auth server at 127.0.0.1:1") and \
        len(result.stderr.splitlines()) == 1
