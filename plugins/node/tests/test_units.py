"""Unit tests: settings errors, certificate checks, recordings cut by a crash, the scp parser."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh
from teleport_node.certs import CertRefused, check_user_cert, load_ca_keys

from teleport_core.config.load import parse_config
from teleport_core.errors import ConfigError
from teleport_core.plugins import make_plugins
from teleport_core.recording.commands import scp_action
from teleport_core.recording.spool import FRAME, Recorder, finalize, recover


def config(section: dict[str, object]) -> object:
    return parse_config({"teleport": {"data_dir": "/tmp/unused"}, "auth_service": {"enabled": False},
                         "proxy_service": {"enabled": False}, "ssh_service": section}, make_plugins())


def test_settings_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"ssh_service.commands\[0\].period"):
        config({"commands": [{"name": "a", "command": ["true"], "period": "soon"}]})
    with pytest.raises(ConfigError, match=r"ssh_service.commands\[0\].command"):
        config({"commands": [{"name": "a", "command": []}]})
    with pytest.raises(ConfigError, match="ssh_service.listen_adr"):
        config({"listen_adr": "0.0.0.0:3022"})


def _cert(ca: ed25519.Ed25519PrivateKey, *, after: int, before: int, principals: list[bytes],
          options: dict[bytes, bytes] | None = None) -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    builder = (ssh.SSHCertificateBuilder().public_key(key.public_key()).serial(1)
               .type(ssh.SSHCertificateType.USER).key_id(b"ann").valid_principals(principals)
               .valid_after(after).valid_before(before)
               .add_extension(b"teleport-roles", json.dumps({"roles": ["access"]}).encode())
               .add_extension(b"teleport-traits", json.dumps({"logins": ["root"]}).encode()))
    for name, value in (options or {}).items():
        builder = builder.add_critical_option(name, value)
    line = builder.sign(ca).public_bytes()
    kind, blob = line.split()[:2]
    return base64.b64decode(blob), kind.decode()


def _ca_keys(ca: ed25519.Ed25519PrivateKey) -> list[bytes]:
    return load_ca_keys([ca.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()])


def test_cert_checks_validity_with_skew_principal_and_source_address() -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    now = int(time.time())
    blob, kind = _cert(ca, after=now + 30, before=now + 3600, principals=[b"root"])
    accepted = check_user_cert(blob, kind, _ca_keys(ca), login="root", client_ip="127.0.0.1")
    assert accepted.user == "ann" and accepted.roles == ("access",) and accepted.traits == {"logins": ("root",)}
    blob, kind = _cert(ca, after=now + 300, before=now + 3600, principals=[b"root"])
    with pytest.raises(CertRefused, match="not yet valid"):
        check_user_cert(blob, kind, _ca_keys(ca), login="root", client_ip="127.0.0.1")
    blob, kind = _cert(ca, after=now - 300, before=now - 1, principals=[b"root"])
    with pytest.raises(CertRefused, match="expired") as refused:
        check_user_cert(blob, kind, _ca_keys(ca), login="root", client_ip="127.0.0.1")
    assert refused.value.user == "ann"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    blob, kind = _cert(ca, after=now - 60, before=now + 3600, principals=[b"root"])
    with pytest.raises(CertRefused, match="expired"):
        check_user_cert(blob, kind, _ca_keys(ca), login="root", client_ip="127.0.0.1", now=later)
    with pytest.raises(CertRefused, match="not a principal"):
        check_user_cert(blob, kind, _ca_keys(ca), login="admin", client_ip="127.0.0.1")
    blob, kind = _cert(ca, after=now - 60, before=now + 3600, principals=[b"root"],
                       options={b"source-address": b"10.0.0.0/8"})
    with pytest.raises(CertRefused, match="source-address"):
        check_user_cert(blob, kind, _ca_keys(ca), login="root", client_ip="127.0.0.1")
    assert check_user_cert(blob, kind, _ca_keys(ca), login="root", client_ip="10.1.2.3").user == "ann"
    blob, kind = _cert(ca, after=now - 60, before=now + 3600, principals=[b"root"],
                       options={b"force-command": b"/bin/true"})
    with pytest.raises(CertRefused, match="unsupported critical option"):
        check_user_cert(blob, kind, _ca_keys(ca), login="root", client_ip="127.0.0.1")
    other = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(CertRefused, match="unrecognized authority") as foreign:
        check_user_cert(blob, kind, _ca_keys(other), login="root", client_ip="127.0.0.1")
    assert foreign.value.user == ""


def test_recording_cut_by_a_crash_is_completed(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "sid-1", width=80, height=24, env={"TERM": "xterm"})
    recorder.write("héllo ".encode() + b"\xc3")  # a character split across writes
    recorder.write(b"\xa9 world\n")
    recorder.flush()
    part = tmp_path / "sid-1.raw.part"
    assert oct(part.stat().st_mode & 0o777) == "0o600"
    with open(part, "ab") as file:
        file.write(FRAME.pack(1.5, 100) + b"torn fra")  # what a crash mid-write leaves
    [final] = recover(tmp_path, live=set())
    lines = final.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] == 80
    events = [json.loads(line) for line in lines[1:]]
    assert "".join(e[2] for e in events) == "héllo é world\n"
    assert all(e[1] == "o" for e in events) and events[0][0] <= events[-1][0]
    assert not part.exists() and oct(final.stat().st_mode & 0o777) == "0o600"


def test_live_recordings_are_left_alone_until_finalized(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "live", width=80, height=24, env={})
    recorder.write(b"\x00" * 10)
    recorder.flush()
    assert recover(tmp_path, live={"live"}) == []
    final = finalize(recorder.close())
    assert final.name == "live.cast"
    assert json.loads(final.read_text().splitlines()[1])[2] == "\x00" * 10


@pytest.mark.parametrize(("command", "expected"), [
    ("scp -t /tmp/x", ("upload", "/tmp/x")),
    ("scp -r -f 'a b'", ("download", "a b")),
    ("/usr/bin/scp -pt dir", ("upload", "dir")),
    ("echo scp -t x", None),
    ("ls", None),
])
def test_scp_action(command: str, expected: tuple[str, str] | None) -> None:
    assert scp_action(command) == expected
