"""``tctl create``, ``tctl get`` and ``tctl rm`` against a real auth server, run as subprocesses."""

from __future__ import annotations

import json

import pytest
import yaml
from tctl_helpers import tctl_cluster

from teleport_core.errors import NotFound

pytestmark = pytest.mark.e2e  # real processes end to end

API_ROLE = """\
kind: role
version: v5
metadata:
  name: api-role
spec:
  allow:
    rules:
    - resources: ['role']
      verbs: ['read']
  deny:
    node_labels:
      '*': '*'
"""
DEV_ROLE = """\
kind: role
version: v5
metadata: {name: dev, description: developers}
spec:
  allow:
    logins: [dev, '{{internal.logins}}']
    node_labels: {env: [dev, staging], team: web}
  options: {max_session_ttl: 8h}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with tctl_cluster(tmp_path_factory.mktemp("tctl-resources")) as c:
        yield c


def role_names(cluster) -> set[str]:
    return {r["metadata"]["name"] for r in cluster.call("get_roles")}


def test_create_several_documents_then_get_each_format(cluster, tmp_path):
    path = tmp_path / "roles.yaml"
    path.write_text(API_ROLE + "---\n" + DEV_ROLE)
    assert cluster.ok("create", str(path)) == 'role "api-role" has been created\nrole "dev" has been created\n'
    dev = yaml.safe_load(cluster.ok("get", "role/dev"))
    assert dev["metadata"] == {"name": "dev", "description": "developers"}
    assert dev["spec"]["allow"]["logins"] == ["dev", "{{internal.logins}}"]
    assert dev["spec"]["allow"]["node_labels"] == {"env": ["dev", "staging"], "team": "web"}
    assert dev["spec"]["options"]["max_session_ttl"] == "8h0m0s"
    assert json.loads(cluster.ok("get", "role/dev", "--format=json")) == [dev]
    text = cluster.ok("get", "role/dev", "--format=text").splitlines()
    assert text[:2] == ["Role Allowed to login as     Node Labels                Access to resources",
                        "---- ----------------------- -------------------------- -------------------"]
    assert text[2].split() == ["dev", "dev,{{internal.logins}}", "env=[dev", "staging],team=web"]
    api = cluster.ok("get", "role/api-role", "--format=text").splitlines()[2]
    assert api.split() == ["api-role", "role:read"]
    # the API sees exactly what tctl printed
    assert cluster.call("get_role", "dev") == dev


def test_get_roles_round_trips_through_create_f(cluster, tmp_path):
    cluster.ok("create", "-f", "-", input=API_ROLE)
    listed = cluster.ok("get", "roles")
    docs = list(yaml.safe_load_all(listed))
    assert [d["metadata"]["name"] for d in docs] == sorted(role_names(cluster))
    assert listed.count("\n---\n") == len(docs) - 1  # multi-document YAML
    dump = tmp_path / "all.yaml"
    dump.write_text(listed)
    first = docs[0]["metadata"]["name"]
    # without -f an existing role is an error that says what to do
    assert cluster.error("create", str(dump)) == f'ERROR: role "{first}" already exists; use -f to overwrite it'
    out = cluster.ok("create", "-f", str(dump))
    assert out.splitlines() == [f'role "{d["metadata"]["name"]}" has been updated' for d in docs]
    assert cluster.ok("get", "roles") == listed  # nothing changed in the round trip


def test_create_reads_stdin(cluster):
    doc = "kind: role\nversion: v5\nmetadata: {name: from-stdin}\nspec: {allow: {logins: [x]}}\n"
    assert cluster.ok("create", input=doc) == 'role "from-stdin" has been created\n'
    assert cluster.ok("create", "-f", "-", input=doc) == 'role "from-stdin" has been updated\n'
    assert cluster.call("get_role", "from-stdin")["spec"]["allow"]["logins"] == ["x"]


def test_one_invalid_document_writes_nothing_and_names_document_and_key(cluster, tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text(
        "kind: role\nversion: v5\nmetadata: {name: would-be-new}\nspec: {allow: {logins: [a]}}\n"
        "---\n"
        "kind: role\nversion: v5\nmetadata: {name: broken}\nspec:\n  allow:\n    loginz: [root]\n"
    )
    assert cluster.error("create", str(path)) == (
        f'ERROR: {path} (document 2): role "broken": spec.allow.loginz: unknown key (did you mean "logins"?)')
    assert "would-be-new" not in role_names(cluster) and "broken" not in role_names(cluster)


def test_existing_role_in_a_batch_without_f_writes_nothing(cluster, tmp_path):
    """The server applies a batch all or nothing: the new role is not created either."""
    cluster.ok("create", "-f", "-", input=API_ROLE)
    path = tmp_path / "batch.yaml"
    path.write_text("kind: role\nversion: v5\nmetadata: {name: batch-new}\nspec: {}\n---\n" + API_ROLE)
    assert cluster.error("create", str(path)) == 'ERROR: role "api-role" already exists; use -f to overwrite it'
    assert "batch-new" not in role_names(cluster)
    assert cluster.ok("create", "-f", str(path)) == (
        'role "batch-new" has been created\nrole "api-role" has been updated\n')


def test_get_users_is_multi_document_yaml(cluster):
    cluster.call("create_user", "alice", ["access"], {"logins": ["alice"]})
    cluster.call("create_user", "bob", ["auditor"])
    docs = list(yaml.safe_load_all(cluster.ok("get", "users")))
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert by_name["alice"]["kind"] == "user" and by_name["alice"]["spec"]["roles"] == ["access"]
    assert by_name["alice"]["spec"]["traits"] == {"logins": ["alice"]}
    assert yaml.safe_load(cluster.ok("get", "user/bob"))["spec"]["roles"] == ["auditor"]
    assert [d["metadata"]["name"] for d in json.loads(cluster.ok("get", "users", "--format=json"))] == sorted(by_name)
    lines = cluster.ok("get", "users", "--format=text").splitlines()
    assert lines[0].split() == ["User", "Roles"] and ["bob", "auditor"] in [line.split() for line in lines[2:]]
    both = json.loads(cluster.ok("get", "role/dev,user/bob", "--format=json"))
    assert [(d["kind"], d["metadata"]["name"]) for d in both] == [("role", "dev"), ("user", "bob")]


def test_rm_role_and_user(cluster):
    cluster.ok("create", input="kind: role\nversion: v5\nmetadata: {name: doomed}\nspec: {}\n")
    assert cluster.ok("rm", "role/doomed") == 'role "doomed" has been deleted\n'
    with pytest.raises(NotFound):
        cluster.call("get_role", "doomed")
    assert cluster.error("rm", "role/doomed") == 'ERROR: role "doomed" not found'
    cluster.call("create_user", "carol", ["access"])
    assert cluster.ok("rm", "user/carol") == 'user "carol" has been deleted\n'
    with pytest.raises(NotFound):
        cluster.call("get_user", "carol")


def test_rm_role_still_assigned_is_refused(cluster):
    cluster.ok("create", input="kind: role\nversion: v5\nmetadata: {name: held}\nspec: {}\n")
    cluster.call("create_user", "holder", ["held"])
    assert cluster.error("rm", "role/held") == (
        'ERROR: role "held" is assigned to users holder; remove it from them first')
    assert "held" in role_names(cluster)


BAD_FILES = [
    ("kind: role\n  bad: [\n", "{path}: invalid YAML: line 2, column 6: mapping values are not allowed here"),
    ("", "{path}: no resources found"),
    ("---\n---\n", "{path}: no resources found"),
    ("- a\n- b\n", "{path}: expected a resource (a mapping with kind, version, metadata, spec), got list"),
    ("version: v5\nmetadata: {name: x}\n", "{path}: kind: required (supported: role, node, trusted_cluster)"),
    ("kind: rolez\n", '{path}: kind: tctl create does not support "rolez" (supported: role, node, trusted_cluster)'),
    ("kind: user\nversion: v2\nmetadata: {name: u}\nspec: {roles: [access]}\n",
     '{path}: kind: tctl create does not support "user" (supported: role, node, trusted_cluster) '
     '(change users with "tctl users add" and "tctl users update")'),
    ("kind: role\nversion: v3\nmetadata: {name: old}\n",
     '{path}: role "old": version: unsupported version "v3": expected one of "v4", "v5", "v6", "v7" '
     "(v3 roles allowed every node when node_labels was empty; write v5)"),
    ("kind: role\nversion: v5\nmetadata: {name: a}\n---\nkind: role\nversion: v5\nmetadata: {name: a}\n",
     '{path} (document 2): metadata.name: role "a" appears twice in the file'),
    ("kind: role\nversion: v5\nmetadata: {name: lbl}\nspec: {allow: {node_labels: {env: [prod, {x: 1}]}}}\n",
     '{path}: role "lbl": spec.allow.node_labels.env[1]: expected a string, got a dict'),
    # agentless OpenSSH nodes (docs/sessions.md): only sub_kind openssh, with the sshd's host:port
    ("kind: node\nsub_kind: teleport\nversion: v2\nmetadata: {name: n1}\nspec: {addr: 'h:22', hostname: h}\n",
     '{path}: sub_kind: tctl create makes only agentless nodes (sub_kind: openssh); got "teleport" '
     "(a Teleport node registers itself when it joins)"),
    ("kind: node\nsub_kind: openssh\nversion: v2\nmetadata: {name: n1}\nspec: {addr: 'h', hostname: h}\n",
     '{path}: spec.addr: expected host:port of the sshd, got "h"'),
    ("kind: node\nsub_kind: openssh\nversion: v2\nmetadata: {name: n1}\nspec: {addr: 'h:22'}\n",
     "{path}: spec.hostname: required (a string)"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_bad_files_are_one_clear_line_and_write_nothing(cluster, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    before = cluster.call("get_roles")
    assert cluster.error("create", "-f", str(path)) == "ERROR: " + message.format(path=path)
    assert cluster.call("get_roles") == before


BAD_ARGS = [
    (("get", "widgets"), 'ERROR: unknown resource kind "widgets"; supported: role, user, lock, node, token, cert_authority, access_request, trusted_cluster, remote_cluster, all (e.g. role/NAME, users)'),
    (("get", "rolez/x"),
     'ERROR: unknown resource kind "rolez" (did you mean "role"?); supported: role, user, lock, node, token, cert_authority, access_request, trusted_cluster, remote_cluster, all (e.g. role/NAME, users)'),
    (("get", "role/nosuch"), 'ERROR: role "nosuch" not found'),
    (("get", "user/nosuch"), 'ERROR: user "nosuch" not found'),
    (("get", "roles,"), 'ERROR: expected a resource like "roles" or "role/NAME", got "roles,"'),
    (("get", "roles", "--format=toml"), "ERROR: tctl get: argument --format: invalid choice: 'toml' (choose from "
                                        "'yaml', 'json', 'text') (see \"tctl get --help\")"),
    (("get",), 'ERROR: tctl get: the following arguments are required: RESOURCE (see "tctl get --help")'),
    (("rm", "role"), 'ERROR: expected KIND/NAME like role/NAME, got "role"'),
    (("rm", "widget/x"), 'ERROR: unknown resource kind "widget"; supported: role, user, lock, node, token, cert_authority, access_request, trusted_cluster, remote_cluster, all (e.g. role/NAME, users)'),
    (("rm", "node/x"), 'ERROR: node "x" not found'),  # tctl rm node/<uuid> removes a node and its host record
    (("get", "node/nosuch"), 'ERROR: node "nosuch" not found (give its UUID or hostname, as tctl nodes ls prints '
                             'them)'),
    (("get", "all/x"), 'ERROR: invalid resource reference "all/x": all takes no name'),
    (("get", "cert_authority/db"),
     'ERROR: cert_authority "db" not found: expected host, user or the cluster\'s name'),
    (("get", "token/not-a-token"), "ERROR: token not found (give its value, as tctl tokens ls prints it)"),
    (("rm", "cert_authority/host"),
     "ERROR: tctl rm does not delete cert_authority resources (it deletes role, user, lock, node, token, access_request, trusted_cluster, remote_cluster)"),
    (("rm", "all"), "ERROR: tctl rm does not delete all resources (it deletes role, user, lock, node, token, access_request, trusted_cluster, remote_cluster)"),
    (("rm", "role/a/b"), 'ERROR: invalid resource reference "role/a/b": expected KIND/NAME'),
    (("create", "/nonexistent/roles.yaml"), "ERROR: cannot read /nonexistent/roles.yaml: No such file or directory"),
    (("create", "--force=yes", "x.yaml"), "ERROR: tctl create: argument -f/--force: ignored explicit argument 'yes' "
                                          '(see "tctl create --help")'),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGS)
def test_bad_arguments_are_one_clear_line(cluster, args, message):
    assert cluster.error(*args) == message


def test_a_rule_with_where_round_trips_and_shows_in_text(cluster):
    access = yaml.safe_load(cluster.ok("get", "role/access"))
    assert {"resources": ["session"], "verbs": ["list", "read"],
            "where": "contains(session.participants, user.metadata.name)"} in access["spec"]["allow"]["rules"]
    text = cluster.ok("get", "role/access", "--format=text")
    assert "session:list,read where contains(session.participants, user.metadata.name)" in text
    bad = "kind: role\nversion: v5\nmetadata: {name: bad-where}\nspec: {allow: {rules: [{resources: [session], " \
          "verbs: [read], where: 'contains(session.participants, user.name)'}]}}\n"
    assert cluster.error("create", input=bad) == (
        'ERROR: stdin: role "bad-where": spec.allow.rules[0].where: invalid predicate '
        '"contains(session.participants, user.name)": unknown field "user.name" (did you mean "user.metadata.name"?) '
        "at character 32")
