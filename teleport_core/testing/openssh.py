"""A real OpenSSH ``sshd`` for tests that check our certificates with it: host key and certificate
from the cluster, the cluster's user CA trusted (``TrustedUserCAKeys``), no passwords, no PAM."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from teleport_core.testing.processes import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def start_sshd(folder: Path, *, host_key: Path, host_cert: Path, user_ca: Path, port: int | None = None,
               extra: Sequence[str] = (), timeout: float = 10) -> tuple[subprocess.Popen[bytes], int]:
    """Write ``folder``/sshd_config and start ``sshd -D -e`` on 127.0.0.1 (``port``, else a free one);
    (the process, its port) once it accepts connections. ``extra`` lines end the config. Its log is
    ``folder``/sshd.log; a :class:`RuntimeError` quotes it when sshd does not come up in ``timeout``."""
    port = free_port() if port is None else port
    config = folder / "sshd_config"
    lines = [f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"HostCertificate {host_cert}",
             f"TrustedUserCAKeys {user_ca}", "AuthorizedKeysFile none", "PasswordAuthentication no",
             "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
             f"PidFile {folder / 'sshd.pid'}", *extra]
    config.write_text("".join(line + "\n" for line in lines))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    with open(folder / "sshd.log", "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(10)
                raise RuntimeError("sshd did not start: " + (folder / "sshd.log").read_text()) from None
            time.sleep(0.05)
