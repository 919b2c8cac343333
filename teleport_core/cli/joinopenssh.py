"""``teleport join openssh``: make a plain OpenSSH sshd host an agentless node of the cluster.

Run on the host, as root. With a ``node`` join token it registers the host with auth
(``/v1/agentless/join``: a node resource with ``sub_kind: openssh`` and a new UUID), gets a host
certificate for a fresh host key (the node's names, no ``x-teleport-role``) and the user CA,
writes them under ``<data-dir>/openssh/`` with an sshd config fragment (``HostKey``,
``HostCertificate``, ``TrustedUserCAKeys``), adds ``Include <fragment>`` at the top of
``sshd_config`` (once), checks the result with ``sshd -t`` and, with ``--restart-sshd``, restarts
sshd. The auth server's CA is checked against ``--ca-pin`` before the token is sent (without a
pin it is trusted on first use, with a warning), as for any join.
"""

from __future__ import annotations

import shlex
import socket
import sys
from pathlib import Path

from teleport_core.cli.common import CliContext, fail

KEY_NAME = "ssh_host_teleport_key"


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--labels: expected key=value[,key=value...], got {text!r}")
        labels[key.strip()] = value.strip()
    return labels


def cmd_join(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("Join the cluster. `teleport join openssh`: register this host's OpenSSH sshd as an "
                        "agentless node (run as root on the host).")
    parser.add_argument("kind", choices=("openssh",), help="what joins: openssh (a plain sshd)")
    parser.add_argument("--auth-server", required=True, help="the auth server, host:port (3025)")
    parser.add_argument("--token", required=True, help="a node join token (tctl tokens add --type=node)")
    parser.add_argument("--ca-pin", action="append", default=[], help="the cluster's CA pin (tctl status)")
    parser.add_argument("--address", required=True, help="host:port clients and the proxy reach this sshd at")
    parser.add_argument("--hostname", default=socket.gethostname(), help="the node's name (default: this host's)")
    parser.add_argument("--labels", default="", help="key=value[,key=value...]")
    parser.add_argument("--openssh-config", default="/etc/ssh/sshd_config", help="sshd's config to include ours in")
    parser.add_argument("--data-dir", default="/etc/teleport", help="where <data-dir>/openssh/ is written")
    parser.add_argument("--restart-sshd", action="store_true", help="restart sshd once the config checks")
    parser.add_argument("--sshd-check-command", default="sshd -t -f {config}",
                        help="how the new config is checked ({config}: --openssh-config; empty: not checked)")
    parser.add_argument("--sshd-restart-command", default="systemctl restart sshd", help="how sshd is restarted")
    args = parser.parse_args(argv)
    try:
        labels = _labels(args.labels)
    except ValueError as exc:
        return fail(str(exc))
    config = Path(args.openssh_config)
    if not config.is_file():
        return fail(f"--openssh-config: {config} is not a file (sshd's config, e.g. /etc/ssh/sshd_config)")
    import asyncio
    import shutil
    import subprocess

    from teleport_core.api.client import register
    from teleport_core.errors import TeleportError
    from teleport_core.files import write_private, write_public
    from teleport_core.pki import keys

    key = keys.generate_private_key("ed25519")
    body = {"token": args.token, "hostname": args.hostname, "address": args.address, "labels": labels,
            "public_key": keys.public_key_openssh(key)}
    try:
        joined = asyncio.run(register(args.auth_server, body, args.ca_pin, path="/v1/agentless/join"))
    except TeleportError as exc:
        return fail(f"cannot join: {exc}")
    if not joined.pinned:
        print("WARNING: no --ca-pin given: the auth server's CA was trusted on first use", file=sys.stderr)
    answer = joined.answer
    folder = Path(args.data_dir) / "openssh"
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    key_path = folder / KEY_NAME
    write_private(key_path, keys.private_key_openssh(key))
    write_public(Path(f"{key_path}-cert.pub"), str(answer["ssh_cert"]) + "\n")
    write_public(folder / "teleport_user_ca.pub", "".join(f"{line}\n" for line in answer["user_ca"]))
    write_public(folder / "host_uuid", str(answer["host_uuid"]) + "\n")
    fragment = folder / "teleport_sshd_config"
    write_public(fragment, "# written by teleport join openssh\n"
                           f"HostKey {key_path}\nHostCertificate {key_path}-cert.pub\n"
                           f"TrustedUserCAKeys {folder / 'teleport_user_ca.pub'}\n")
    include = f"Include {fragment}\n"
    text = config.read_text()
    if include not in text:  # at the top: sshd keeps the first value of most keywords, and Match ends the file
        config.write_text(include + text)
    if args.sshd_check_command:
        check = shlex.split(args.sshd_check_command.format(config=config))
        if shutil.which(check[0]) or Path(check[0]).exists():
            result = subprocess.run(check, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                return fail(f"sshd refuses the new config ({' '.join(check)}): {result.stderr.strip()}")
    if args.restart_sshd:
        restart = subprocess.run(shlex.split(args.sshd_restart_command), capture_output=True, text=True, check=False)
        if restart.returncode != 0:
            return fail(f"cannot restart sshd ({args.sshd_restart_command}): {restart.stderr.strip()}")
    print(f"Joined cluster {answer['cluster_name']} as agentless node {args.hostname} ({answer['host_uuid']}).")
    print(f"Host certificate for {', '.join(answer['principals'])}; files in {folder}; {config} includes {fragment}.")
    if not args.restart_sshd:
        print("Restart sshd to use them (or run again with --restart-sshd).")
    return 0
