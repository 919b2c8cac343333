"""``teleport join openssh``: wrong flags are refused with one clear line, before anything is sent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def join(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.teleport", "join", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_bad_flags_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "sshd_config"
    config.write_text("Port 22\n")
    base = ["openssh", "--auth-server=127.0.0.1:1", "--token=t", "--address=127.0.0.1:22"]
    bad_labels = join(*base, "--labels=env", f"--openssh-config={config}")
    assert bad_labels.returncode == 1
    assert bad_labels.stderr == "ERROR: --labels: expected key=value[,key=value...], got 'env'\n"
    missing = join(*base, f"--openssh-config={tmp_path / 'nope'}")
    assert missing.returncode == 1 and "--openssh-config:" in missing.stderr and "is not a file" in missing.stderr
    unknown = join("windows", "--auth-server=x:1", "--token=t", "--address=h:22")
    assert unknown.returncode == 2 and "invalid choice: 'windows'" in unknown.stderr
    no_token = join("openssh", "--auth-server=x:1", "--address=h:22")
    assert no_token.returncode == 2 and "--token" in no_token.stderr
    unreachable = join(*base, f"--openssh-config={config}", f"--data-dir={tmp_path / 'data'}")
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("ERROR: cannot join: cannot reach")
    assert config.read_text() == "Port 22\n" and not (tmp_path / "data").exists()  # nothing written
