"""End to end: auth + proxy (real processes' services on 127.0.0.1), OpenSSH sshd as the node,
tsh as a subprocess with the password and OTP code on stdin, OpenSSH's ssh through the proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from proxy_helpers import CLUSTER, LOGIN, Env, profile_ssh_config

from teleport_core.errors import AccessDenied

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def alice(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env.signup("alice", ["dev"], [LOGIN], PASSWORD)
    home = tmp_path_factory.mktemp("alice-tsh")
    result = env.login(home, "alice")
    assert result.returncode == 0, result.stderr
    return home


def test_ping_tells_cluster_addresses_and_second_factor(env: Env) -> None:
    with env.web_client() as web:
        ping = web.get("/webapi/ping").json()
    assert ping["cluster_name"] == CLUSTER
    assert ping["auth"]["second_factor"] == "otp"
    assert ping["proxy"]["ssh"]["public_addr"].endswith(f":{env.ssh_port}")


def test_proxy_heartbeat_names_it_in_invite_urls(env: Env) -> None:
    proxies = env.call("get_proxies")
    assert [p["public_addr"] for p in proxies] == [f"127.0.0.1:{env.proxy.web_address.port}"]
    created = env.call("create_user", "invited", ["dev"], {"logins": [LOGIN]})
    token = created["invite"]["token"]
    assert created["invite"]["url"] == f"https://127.0.0.1:{env.proxy.web_address.port}/web/invite/{token}"
    with env.web_client() as web:
        info = web.get(f"/v1/webapi/users/password/token/{token}")  # (the page is teleport-web's: its tests)
        assert info.status_code == 200 and info.json()["user"] == "invited" and "otpauth://" in info.json()["otp_uri"]
        assert web.get("/v1/webapi/users/password/token/" + "0" * 32).status_code in (403, 404)


def test_login_writes_a_private_profile(env: Env, alice: Path) -> None:
    folder = alice / "profiles" / "127.0.0.1"
    assert (alice / "current-profile").read_text().strip() == "127.0.0.1"
    for name in ("key", "id", "id-cert.pub", "tls.crt", "known_hosts", "identity", "profile.json"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    assert (folder / "known_hosts").read_text().startswith(f"@cert-authority 127.0.0.1,[127.0.0.1]:*,{CLUSTER},*.{CLUSTER} ")
    status = env.tsh(alice, "status")
    assert status.returncode == 0, status.stderr
    assert "Logged in as:       alice" in status.stdout and f"Cluster:            {CLUSTER}" in status.stdout
    assert "Roles:              dev" in status.stdout and f"Logins:             {LOGIN}" in status.stdout


def test_wrong_password_is_refused(env: Env, tmp_path: Path) -> None:
    result = env.tsh(tmp_path, "login", f"--proxy={env.web}", "--user=alice", "--insecure",
                     stdin=f"not-the-password\n{env.fresh_code('alice')}\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR: ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "current-profile").exists()


def test_deeply_nested_login_body_is_a_400(env: Env) -> None:
    """Found by a review: 20,000 nested brackets were a 500 (RecursionError in the JSON parser)."""
    with env.web_client() as web:
        answer = web.post("/v1/webapi/ssh/certs", content=b"[" * 10_000,  # under the 16 KiB login limit
                          headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert "nested too deeply" in answer.json()["error"]
        assert web.get("/v1/webapi/ping").status_code == 200  # still serving


def test_self_signed_proxy_needs_insecure(env: Env, tmp_path: Path) -> None:
    result = env.tsh(tmp_path, "login", f"--proxy={env.web}", "--user=alice", stdin="x\nx\n")
    assert result.returncode == 1 and "--insecure" in result.stderr


def test_ls_shows_only_allowed_nodes(env: Env, alice: Path) -> None:
    env.join_node("prod-db", "127.0.0.1:1", {"env": "prod"})
    result = env.tsh(alice, "ls", "--format=json")
    assert result.returncode == 0, result.stderr
    nodes = [n for n in json.loads(result.stdout) if n["nodename"] != "twin"]
    assert [n["nodename"] for n in nodes] == ["sshd-node", "sshd-two"]
    assert nodes[0]["labels"] == {"env": "test", "group": "real"} and nodes[0]["logins"] == [LOGIN]
    text = env.tsh(alice, "ls")
    assert text.stdout.splitlines()[0].split() == ["Node", "Name", "Address", "Labels"]
    assert "sshd-node" in text.stdout and "env=test,group=real" in text.stdout and "prod-db" not in text.stdout
    assert env.tsh(alice, "ls", "env=nope", "--format=json").stdout.strip() == "[]"


def test_tsh_ssh_by_name_uuid_address_and_exit_codes(env: Env, alice: Path) -> None:
    sshd = env.sshd  # type: ignore[attr-defined]
    for target in ("sshd-node", env.sshd_uuid, f"127.0.0.1:{sshd.port}"):  # type: ignore[attr-defined]
        result = env.tsh(alice, "ssh", f"{LOGIN}@{target}", "echo", "hello")
        assert result.returncode == 0, (target, result.stderr)
        assert result.stdout == "hello\n"
    failed = env.tsh(alice, "ssh", f"{LOGIN}@sshd-node", "exit 7")
    assert failed.returncode == 7
    piped = env.tsh(alice, "ssh", f"{LOGIN}@sshd-node", "wc -c", stdin="x" * 100000)
    assert piped.stdout.strip() == "100000"


def test_label_selector_runs_on_every_match(env: Env, alice: Path) -> None:
    result = env.tsh(alice, "ssh", f"{LOGIN}@group=real", "echo", "hi")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["[sshd-node] hi", "[sshd-two] hi"]
    none = env.tsh(alice, "ssh", f"{LOGIN}@group=none", "true")
    assert none.stderr == "ERROR: target host group=none is offline or does not exist\n"


def test_identity_file_instead_of_profile(env: Env, alice: Path, tmp_path: Path) -> None:
    out = tmp_path / "alice.pem"
    made = env.login(tmp_path / "unused", "alice", f"--out={out}")
    assert made.returncode == 0, made.stderr
    assert out.stat().st_mode & 0o777 == 0o600 and not (tmp_path / "unused" / "current-profile").exists()
    result = env.tsh(tmp_path / "empty", "-i", str(out), f"--proxy={env.web}", "--insecure", "ssh",
                     f"{LOGIN}@sshd-node", "echo", "with-identity")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "with-identity\n"


def test_scp_both_ways(env: Env, alice: Path, tmp_path: Path) -> None:
    local = tmp_path / "up"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_bytes(b"alpha" * 1000)
    (local / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    remote = tmp_path / "remote"  # sshd runs on this machine: the node's file system is ours
    remote.mkdir()
    one = env.tsh(alice, "scp", str(local / "a.txt"), f"{LOGIN}@sshd-node:{remote}/a-copy.txt")
    assert one.returncode == 0, one.stderr
    assert (remote / "a-copy.txt").read_bytes() == b"alpha" * 1000
    tree = env.tsh(alice, "scp", "-r", str(local), f"{LOGIN}@sshd-node:{remote}")
    assert tree.returncode == 0, tree.stderr
    assert (remote / "up" / "sub" / "b.bin").read_bytes() == (local / "sub" / "b.bin").read_bytes()
    back = tmp_path / "back"
    down = env.tsh(alice, "scp", "-r", f"{LOGIN}@sshd-node:{remote / 'up'}", str(back))
    assert down.returncode == 0, down.stderr
    assert (back / "sub" / "b.bin").read_bytes() == (local / "sub" / "b.bin").read_bytes()
    dir_without_r = env.tsh(alice, "scp", f"{LOGIN}@sshd-node:{remote / 'up'}", str(tmp_path / "x"))
    assert dir_without_r.returncode == 1 and "is a directory (use -r)" in dir_without_r.stderr


def test_openssh_scp_and_sftp_through_the_proxy(env: Env, alice: Path, tmp_path: Path) -> None:
    """OpenSSH's own scp (SFTP protocol, and -O for the legacy one) and sftp jump through the
    proxy's SSH port with strict host checking on both hops, and through ``tsh config``'s
    ProxyCommand."""
    config = profile_ssh_config(alice, tmp_path / "ssh_config")
    jump = ["-F", str(config), "-J", f"alice@127.0.0.1:{env.ssh_port}"]
    no_agent = {**os.environ, "SSH_AUTH_SOCK": ""}
    payload = os.urandom(700_000)
    (tmp_path / "up.bin").write_bytes(payload)
    remote = tmp_path / "remote"  # sshd runs on this machine: the node's file system is ours
    remote.mkdir()
    node = f"{LOGIN}@sshd-node.{CLUSTER}"
    for mode in ("-s", "-O"):
        up = subprocess.run(["scp", mode, *jump, str(tmp_path / "up.bin"), f"{node}:{remote}/up{mode}.bin"],
                            capture_output=True, text=True, timeout=60, check=False, env=no_agent)
        assert up.returncode == 0, up.stderr
        assert (remote / f"up{mode}.bin").read_bytes() == payload
        down = subprocess.run(["scp", mode, *jump, f"{node}:{remote}/up{mode}.bin", str(tmp_path / f"down{mode}")],
                              capture_output=True, text=True, timeout=60, check=False, env=no_agent)
        assert down.returncode == 0, down.stderr
        assert (tmp_path / f"down{mode}").read_bytes() == payload
    batch = tmp_path / "batch"
    batch.write_text(f"put {tmp_path / 'up.bin'} {remote}/sftp.bin\nls -l {remote}/sftp.bin\n"
                     f"get {remote}/sftp.bin {tmp_path / 'sftp-back.bin'}\n")
    sftp = subprocess.run(["sftp", *jump, "-b", str(batch), node], capture_output=True, text=True, timeout=60,
                          check=False, env=no_agent)
    assert sftp.returncode == 0, sftp.stderr
    assert (remote / "sftp.bin").read_bytes() == payload
    assert (tmp_path / "sftp-back.bin").read_bytes() == payload
    tsh_config = env.tsh(alice, "config")
    assert tsh_config.returncode == 0, tsh_config.stderr
    proxied = tmp_path / "tsh_ssh_config"
    proxied.write_text(tsh_config.stdout + "\nHost *\n    StrictHostKeyChecking yes\n    BatchMode yes\n")
    via_config = subprocess.run(["sftp", "-F", str(proxied), "-b", str(batch), node], capture_output=True,
                                text=True, timeout=60, check=False, env=no_agent)
    assert via_config.returncode == 0, via_config.stderr
    assert (tmp_path / "sftp-back.bin").read_bytes() == payload


def test_lookup_errors_are_referenced_messages(env: Env, alice: Path) -> None:
    missing = env.tsh(alice, "ssh", f"{LOGIN}@nowhere", "true")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "ERROR: target host nowhere is offline or does not exist"
    hidden = env.tsh(alice, "ssh", f"{LOGIN}@prod-db", "true")  # exists, but not for alice's roles
    assert hidden.stderr.strip() == "ERROR: target host prod-db is offline or does not exist"
    env.join_node("twin", "127.0.0.1:2", {"env": "test"})
    with pytest.raises(AccessDenied, match='^nodename "twin" is already registered by host .*tctl rm node/'):
        env.join_node("twin", "127.0.0.1:3", {"env": "test"})  # a nodename belongs to one host
    twin = env.tsh(alice, "ssh", f"{LOGIN}@127.0.0.1", "true")  # the address of several nodes
    assert twin.stderr.strip() == "ERROR: ambiguous host could match multiple nodes"
    events = env.call("search_events")["events"]
    assert any(e["code"] == "T3007W" and e.get("user") == "alice" and "prod-db" in e.get("error", "")
               for e in events)


def test_openssh_jump_through_proxy_with_strict_host_checking(env: Env, alice: Path, tmp_path: Path) -> None:
    config = profile_ssh_config(alice, tmp_path / "ssh_config")
    result = subprocess.run(
        ["ssh", "-F", str(config), "-J", f"alice@127.0.0.1:{env.ssh_port}", f"{LOGIN}@sshd-node.{CLUSTER}",
         "echo", "via-jump"],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "SSH_AUTH_SOCK": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "via-jump\n"
    missing = subprocess.run(
        ["ssh", "-F", str(config), "-J", f"alice@127.0.0.1:{env.ssh_port}", f"{LOGIN}@nowhere.{CLUSTER}", "true"],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "SSH_AUTH_SOCK": ""})
    assert missing.returncode == 255 and "open failed" in missing.stderr


def test_large_streams_both_ways_through_the_proxy(env: Env, alice: Path, tmp_path: Path) -> None:
    """The proxy forwards the client's bytes on paramiko's transport thread and queues what the
    node's socket does not take at once (channelsplice.py). A node echoing a large input back
    must not deadlock, lose or reorder a byte. That holds on ``ssh -J`` (direct-tcpip) with a
    key exchange every MiB on both hops, and on tsh's ``proxy:`` subsystem on the SSH port."""
    import hashlib
    import shutil

    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(24 * 1024 * 1024))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    config = profile_ssh_config(alice, tmp_path / "ssh_config", "RekeyLimit 1M")
    with payload.open("rb") as stdin:
        echoed = subprocess.run(
            ["ssh", "-F", str(config), "-J", f"alice@127.0.0.1:{env.ssh_port}", f"{LOGIN}@sshd-node.{CLUSTER}", "cat"],
            stdin=stdin, capture_output=True, timeout=300, check=False, env={**os.environ, "SSH_AUTH_SOCK": ""})
    assert echoed.returncode == 0, echoed.stderr
    assert len(echoed.stdout) == payload.stat().st_size
    assert hashlib.sha256(echoed.stdout).hexdigest() == digest

    ssh_port = tmp_path / "tsh"  # the same profile without TLS routing: the proxy:host:port subsystem
    shutil.copytree(alice, ssh_port)
    meta_path = ssh_port / "profiles" / "127.0.0.1" / "profile.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "tls_routing": False}))
    with payload.open("rb") as stdin:
        through_tsh = subprocess.run(
            [sys.executable, "-m", "teleport_core.cli.tsh", "ssh", f"{LOGIN}@sshd-node", "cat"], stdin=stdin,
            capture_output=True, timeout=300, check=False, env={**os.environ, "TELEPORT_HOME": str(ssh_port)})
    assert through_tsh.returncode == 0, through_tsh.stderr
    assert hashlib.sha256(through_tsh.stdout).hexdigest() == digest


def test_openssh_with_tsh_config(env: Env, alice: Path, tmp_path: Path) -> None:
    config = env.tsh(alice, "config")
    assert config.returncode == 0, config.stderr
    assert "ProxyCommand" in config.stdout and "proxy ssh %r@%h:%p" in config.stdout
    file = tmp_path / "ssh_config"
    file.write_text(config.stdout + "\nHost *\n    StrictHostKeyChecking yes\n    BatchMode yes\n")
    result = subprocess.run(["ssh", "-F", str(file), f"{LOGIN}@sshd-node.{CLUSTER}", "echo", "via-config"],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "SSH_AUTH_SOCK": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "via-config\n"


def test_expired_certificate_gives_friendly_message(env: Env, alice: Path, tmp_path: Path) -> None:
    import shutil

    home = tmp_path / "tsh"
    shutil.copytree(alice, home)
    meta = home / "profiles" / "127.0.0.1" / "profile.json"
    data = json.loads(meta.read_text())
    data["valid_before"] = "2020-01-01T00:00:00+00:00"
    meta.write_text(json.dumps(data))
    for args in (("ls",), ("ssh", f"{LOGIN}@sshd-node", "true")):
        result = env.tsh(home, *args)
        assert result.returncode == 1
        assert result.stderr == "ERROR: your session has expired, run tsh login\n"


def test_logout_removes_the_profile(env: Env, alice: Path, tmp_path: Path) -> None:
    import shutil

    home = tmp_path / "tsh"
    shutil.copytree(alice, home)
    result = env.tsh(home, "logout")
    assert result.returncode == 0 and "Logged out alice" in result.stdout
    assert not (home / "current-profile").exists() and not (home / "profiles" / "127.0.0.1").exists()
    assert env.tsh(home, "ls").stderr.startswith("ERROR: not logged in")
