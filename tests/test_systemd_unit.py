"""``examples/systemd/teleport.service`` and ``teleport install systemd``: one text, valid for systemd."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "systemd" / "teleport.service"


def teleport(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.teleport", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=cwd or REPO)


def test_example_is_the_output_of_install_systemd():
    result = teleport("install", "systemd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == EXAMPLE.read_text(encoding="utf-8")


def test_unit_has_teleports_shape():
    lines = set(EXAMPLE.read_text(encoding="utf-8").splitlines())
    for line in ("ExecStart=/usr/local/bin/teleport start --config /etc/teleport.yaml --pid-file=/run/teleport.pid",
                 "ExecReload=/bin/kill -HUP $MAINPID", "PIDFile=/run/teleport.pid", "LimitNOFILE=524288",
                 "Restart=on-failure", "EnvironmentFile=-/etc/default/teleport", "WantedBy=multi-user.target"):
        assert line in lines


def test_flags_change_the_unit(tmp_path):
    result = teleport("install", "systemd", "--teleport-path=/opt/tp/bin/teleport", "--pid-file=/run/tp.pid",
                      "--fd-limit=65536", "--env-file=/etc/tp.env", "-c", "/etc/tp.yaml")
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.splitlines())
    assert "ExecStart=/opt/tp/bin/teleport start --config /etc/tp.yaml --pid-file=/run/tp.pid" in lines
    assert {"PIDFile=/run/tp.pid", "LimitNOFILE=65536", "EnvironmentFile=-/etc/tp.env"} <= lines


def test_output_to_a_file_and_never_over_one(tmp_path):
    out = tmp_path / "teleport.service"
    result = teleport("install", "systemd", f"--output=file://{out}")
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8") == EXAMPLE.read_text(encoding="utf-8")
    again = teleport("install", "systemd", "-o", str(out))
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == f"ERROR: {out} exists; remove it or choose another --output"


@pytest.mark.parametrize(("args", "message"), [
    (("--fd-limit=0",), "ERROR: --fd-limit: expected a positive number, got 0"),
    (("--pid-file=run/teleport.pid",),
     "ERROR: --pid-file: expected an absolute path without spaces, $ or %, got 'run/teleport.pid'"),
    (("--teleport-path=/opt/my teleport",),
     "ERROR: --teleport-path: expected an absolute path without spaces, $ or %, got '/opt/my teleport'"),
    (("--fips",), "ERROR: --fips: FedRAMP/FIPS 140 mode needs a FIPS-validated crypto module; teleport-py has none"),
])
def test_bad_flags_are_one_clear_line(args, message):
    result = teleport("install", "systemd", *args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.stderr


def test_unknown_install_target_is_refused():
    result = teleport("install", "launchd")
    assert result.returncode == 2
    assert "invalid choice: 'launchd' (choose from 'systemd')" in result.stderr
    assert "Traceback" not in result.stderr


def test_systemd_analyze_verify(tmp_path):
    """systemd's own check of the unit, with ExecStart naming the teleport installed here."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (CI installs the systemd package)")
    installed = Path(sys.executable).with_name("teleport")
    assert installed.exists(), installed
    unit = tmp_path / "teleport.service"
    result = teleport("install", "systemd", f"--teleport-path={installed}", f"--output={unit}")
    assert result.returncode == 0, result.stderr
    # the example with only the program's path changed: what is verified is the example
    assert unit.read_text(encoding="utf-8") == EXAMPLE.read_text(encoding="utf-8").replace(
        "/usr/local/bin/teleport", str(installed))
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120,
                            check=False, cwd=tmp_path)
    ours = [line for line in (verify.stdout + verify.stderr).splitlines() if "teleport.service" in line]
    assert verify.returncode == 0 and not ours, verify.stdout + verify.stderr
    # the check can fail: a unit whose program does not exist is refused
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text(encoding="utf-8").replace(str(installed), str(tmp_path / "missing")))
    refused = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=120,
                             check=False, cwd=tmp_path)
    assert refused.returncode != 0 and "is not executable" in refused.stdout + refused.stderr
