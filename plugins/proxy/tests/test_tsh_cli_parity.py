"""End to end: tsh's CLI parity against a real cluster (one teleport process: auth, proxy and
our node; tsh as a subprocess): ``ls -v`` and ``--format=json|yaml``, ``status`` of several
profiles, ``login`` remembering the proxy, ``scp`` with several sources and trees (sha256
round trips), a refused login that names the allowed logins. The rotated host CA:
test_tsh_ca_rotation.py."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from proxy_helpers import CLUSTER, LOGIN, Env, one_process_config

from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password 456"
NODENAME = "parity-node"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("tsh-parity")
    with start_cluster(one_process_config(root, NODENAME), make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        e.signup("alice", ["access"], [LOGIN], PASSWORD)
        e.signup("dana", ["access"], ["ubuntu", "deploy"], PASSWORD)
        deadline = time.monotonic() + 60
        while not e.call("get_nodes") and time.monotonic() < deadline:
            time.sleep(0.2)
        yield e


@pytest.fixture(scope="module")
def alice(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return env.logged_in(tmp_path_factory, "alice")


def test_ls_verbose_and_every_format(env: Env, alice: Path) -> None:
    [node] = env.call("get_nodes")
    plain = env.tsh(alice, "ls").stdout.splitlines()
    assert plain[0].split() == ["Node", "Name", "Address", "Labels"] and node["uuid"] not in "\n".join(plain)
    verbose = env.tsh(alice, "ls", "-v")
    assert verbose.returncode == 0, verbose.stderr
    head, _rule, row = verbose.stdout.splitlines()
    assert head.split() == ["Node", "Name", "Node", "ID", "Address", "Labels"]
    assert row.split() == [NODENAME, node["uuid"], node["addr"], "env=test"]
    as_json = json.loads(env.tsh(alice, "ls", "--format=json").stdout)
    as_yaml = yaml.safe_load(env.tsh(alice, "ls", "-v", "--format=yaml").stdout)
    assert as_json == as_yaml
    [record] = as_json
    assert record["kind"] == "node" and record["metadata"] == {"name": node["uuid"], "labels": {"env": "test"}}
    assert record["spec"]["hostname"] == NODENAME and record["spec"]["addr"] == node["addr"]
    assert record["logins"] == [LOGIN]
    assert yaml.safe_load(env.tsh(alice, "ls", "env=nope", "--format=yaml").stdout) == []


def test_status_and_recordings_in_yaml(env: Env, alice: Path) -> None:
    status = yaml.safe_load(env.tsh(alice, "status", "--format=yaml").stdout)
    assert status["active"]["profile_url"] == f"https://{env.web}" and status["active"]["cluster"] == CLUSTER
    assert status["active"]["username"] == "alice" and status["active"]["roles"] == ["access"]
    listing = env.tsh(alice, "recordings", "ls", "--format=yaml")
    assert listing.returncode == 0, listing.stderr
    assert isinstance(yaml.safe_load(listing.stdout), list)


def test_login_remembers_the_proxy_and_switches_with_proxy(env: Env, tmp_path: Path) -> None:
    home = tmp_path / "tsh"
    port = env.web.rpartition(":")[2]
    first = env.login(home, "alice")
    assert first.returncode == 0, first.stderr
    # no --proxy, no --user, no --insecure: the current profile's
    again = env.tsh(home, "login", stdin=f"{PASSWORD}\n")
    assert again.returncode == 0, again.stderr
    assert f"> Profile URL:        https://{env.web}" in again.stdout and "Logged in as:       alice" in again.stdout
    # --proxy switches the current profile; the other one stays
    other = env.tsh(home, "login", f"--proxy=localhost:{port}", "--user=dana", "--insecure", stdin=f"{PASSWORD}\n")
    assert other.returncode == 0, other.stderr
    status = json.loads(env.tsh(home, "status", "--format=json").stdout)
    assert status["active"]["profile_url"] == f"https://localhost:{port}" and status["active"]["username"] == "dana"
    assert [(p["profile_url"], p["username"]) for p in status["profiles"]] == [(f"https://{env.web}", "alice")]
    text = env.tsh(home, "status").stdout
    assert text.startswith(f"> Profile URL:        https://localhost:{port}\n")
    assert f"\n  Profile URL:        https://{env.web}\n" in text
    # and tsh login alone now logs in to that one again, as dana
    third = env.tsh(home, "login", stdin=f"{PASSWORD}\n")
    assert third.returncode == 0, third.stderr
    assert third.stdout.startswith(f"> Profile URL:        https://localhost:{port}\n")
    assert "Logged in as:       dana" in third.stdout


def sha256s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_scp_several_sources_and_trees_round_trip(env: Env, alice: Path, tmp_path: Path) -> None:
    local = tmp_path / "local"
    (local / "tree" / "sub" / "deeper").mkdir(parents=True)
    (local / "a.txt").write_bytes(b"alpha\n" * 1000)
    (local / "b.bin").write_bytes(os.urandom(700_000))
    (local / "tree" / "c.bin").write_bytes(os.urandom(50_000))
    (local / "tree" / "sub" / "deeper" / "d.txt").write_text("deep\n")
    (local / "tree" / "sub" / "empty.txt").write_bytes(b"")
    os.utime(local / "a.txt", (1_600_000_000, 1_600_000_000))
    remote = tmp_path / "remote"  # the node runs on this machine: its file system is ours
    remote.mkdir()
    node = f"{LOGIN}@{NODENAME}"
    up = env.tsh(alice, "scp", "-r", "-p", str(local / "a.txt"), str(local / "b.bin"), str(local / "tree"),
                 f"{node}:{remote}/")
    assert up.returncode == 0, up.stderr
    assert sha256s(remote) == sha256s(local)
    assert (remote / "a.txt").stat().st_mtime == 1_600_000_000  # -p
    back = tmp_path / "back"
    back.mkdir()
    down = env.tsh(alice, "scp", "-r", "-p", f"{node}:{remote}/a.txt", f"{node}:{remote}/b.bin",
                   f"{NODENAME}:{remote}/tree", str(back))
    assert down.returncode == 0, down.stderr
    assert sha256s(back) == sha256s(local)
    assert (back / "a.txt").stat().st_mtime == 1_600_000_000
    # one file to a new name, without -r
    single = env.tsh(alice, "scp", f"{node}:{remote}/b.bin", str(tmp_path / "renamed.bin"))
    assert single.returncode == 0, single.stderr
    assert (tmp_path / "renamed.bin").read_bytes() == (local / "b.bin").read_bytes()


def test_scp_errors_from_the_node(env: Env, alice: Path, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    (tmp_path / "dir").mkdir()
    node = f"{LOGIN}@{NODENAME}"
    not_dir = env.tsh(alice, "scp", str(tmp_path / "a"), str(tmp_path / "b"), f"{node}:{tmp_path / 'a'}")
    assert not_dir.returncode == 1
    assert not_dir.stderr == (f"ERROR: {NODENAME}:{tmp_path / 'a'}: not a directory (copying several sources "
                              "needs a directory)\n")
    missing = env.tsh(alice, "scp", f"{node}:{tmp_path / 'a'}", f"{node}:{tmp_path / 'nope'}", str(tmp_path / "dir"))
    assert missing.returncode == 1 and missing.stderr.startswith(f"ERROR: {NODENAME}:{tmp_path / 'nope'}: ")
    assert not (tmp_path / "dir" / "a").exists()  # nothing was copied: every source is checked first
    no_r = env.tsh(alice, "scp", f"{node}:{tmp_path / 'dir'}", str(tmp_path / "x"))
    assert no_r.returncode == 1 and no_r.stderr == f"ERROR: {NODENAME}:{tmp_path / 'dir'} is a directory (use -r)\n"
    mixed = env.tsh(alice, "scp", f"{node}:{tmp_path / 'a'}", f"other:{tmp_path / 'b'}", str(tmp_path / "dir"))
    assert mixed.returncode == 1 and "sources on several nodes or logins" in mixed.stderr


def test_a_refused_login_names_the_logins_the_roles_allow(env: Env, tmp_path: Path) -> None:
    home = tmp_path / "dana"
    assert env.login(home, "dana").returncode == 0
    refused = env.tsh(home, "ssh", f"root@{NODENAME}", "true")
    assert refused.returncode == 1
    assert refused.stderr == "ERROR: login root is not allowed: your roles allow ubuntu, deploy\n"
    with_l = env.tsh(home, "ssh", "-l", "root", NODENAME, "true")
    assert with_l.stderr == refused.stderr
