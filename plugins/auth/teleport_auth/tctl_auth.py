"""``tctl auth``: ``export`` the public CAs, ``sign`` credentials for a user or an OpenSSH server,
``rotate`` the CAs.

``tctl auth export --type=user|host|tls-user|tls-host|tls`` prints what OpenSSH and TLS clients
need to trust the cluster (public keys and certificates only). ``tctl auth sign`` generates
the key pair here, sends only the public key to be signed, and writes the private key with
mode 0600: the private key never leaves this machine. ``--host=NAME[,NAME] --format=openssh``
signs a host certificate for a plain OpenSSH server (``HostKey``/``HostCertificate``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from teleport_auth import tctl_rotate
from teleport_auth.authority import (
    CAKeys,
    CAType,
    CertAuthority,
    export_authorized_keys,
    export_known_hosts,
    export_tls_pem,
)
from teleport_auth.tctl import (
    UsageError,
    check_ttl,
    command_parser,
    human_time,
    run,
    split_list,
    subcommands,
    warn,
)
from teleport_core.api.client import AuthClient
from teleport_core.cli.common import CliContext
from teleport_core.config.values import parse_duration
from teleport_core.errors import TeleportError
from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity

EXPORT_TYPES = ("user", "host", "tls-user", "tls-host", "tls")
#: Teleport's aliases of export types: ``--type=tls`` is the host CA's TLS certificate (``tls-host``)
EXPORT_ALIASES = {"tls": "tls-host"}
SIGN_FORMATS = ("file", "openssh", "tls")
DEFAULT_SIGN_TTL = "12h"
KEY_ALGORITHM = "ed25519"
# a certificate this much shorter than asked for was capped by the server (roles, limits)
TTL_SLACK = dt.timedelta(minutes=2)

# ``auth`` subcommands: name -> (help, add arguments, handler); ``rotate`` comes from tctl_rotate.
Subcommand = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, CliContext], int]]


def public_authority(answer: dict[str, Any]) -> CertAuthority:
    """A CA without secrets from the API's ``/v1/cas/<type>`` answer (active keys first)."""
    pairs = list(zip(answer["ssh_public_keys"], answer["tls_certs"], strict=True))
    if not pairs:
        raise TeleportError(f"the auth server returned no keys for the {answer.get('type')} CA")
    try:
        key_sets = [CAKeys.from_dict({"ssh_public_key": ssh, "tls_cert": tls}) for ssh, tls in pairs]
        return CertAuthority(CAType(answer["type"]), answer["cluster_name"], key_sets[0],
                             key_sets[1] if len(key_sets) > 1 else None)
    except ValueError as exc:
        raise TeleportError(f"the auth server returned an invalid {answer.get('type')} CA: {exc}") from None


def export_text(ca_type: str, ca: CertAuthority) -> str:
    """The text ``tctl auth export --type=<ca_type>`` prints for ``ca``."""
    if ca_type == "user":
        return export_authorized_keys(ca)
    if ca_type == "host":
        return export_known_hosts(ca)
    return export_tls_pem(ca).decode()


def _add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--type", choices=EXPORT_TYPES,
        help="user: cert-authority lines for authorized_keys (sshd trusting user certificates); "
             "host: @cert-authority lines for known_hosts; tls-user, tls-host: the TLS CA certificates (PEM); "
             "tls: the same as tls-host (Teleport's name). Default: host then user",
    )


def _export(args: argparse.Namespace, cli: CliContext) -> int:
    wanted = [EXPORT_ALIASES.get(args.type, args.type)] if args.type else ["host", "user"]

    async def body(client: AuthClient) -> int:
        for ca_type in wanted:
            kind = ca_type.removeprefix("tls-")
            sys.stdout.write(export_text(ca_type, public_authority(await client.get_cert_authority(kind))))
        return 0

    return run(cli, args, body)


def _add_sign_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", help="Teleport user to issue the credentials for")
    parser.add_argument("--host", metavar="NAME[,NAME]",
                        help="a host certificate for a plain OpenSSH server, valid for these names (--format=openssh)")
    parser.add_argument("-o", "--out", metavar="FILE",
                        help="where to write (see --format); with --host, default: the first name")
    parser.add_argument("--ttl", help="how long the certificates stay valid (default 12h; host certificates: 8760h)")
    parser.add_argument(
        "--format", choices=SIGN_FORMATS, default="file",
        help="file: one identity file (tctl -i, tsh -i); openssh: FILE (private key) and FILE-cert.pub; "
             "tls: FILE.key, FILE.crt, FILE.cas",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace files that exist")


def sign_outputs(out: Path, output: str) -> list[Path]:
    """The files ``--format=<output>`` writes for ``--out=<out>``."""
    if output == "file":
        return [out]
    if output == "openssh":
        return [out, out.with_name(out.name + "-cert.pub")]
    return [out.with_name(out.name + suffix) for suffix in (".key", ".crt", ".cas")]


def write_credentials(out: Path, output: str, key: keys.PrivateKey, answer: dict[str, Any]) -> list[Path]:
    """Write the signed credentials, every file 0600 and atomically; the paths written."""
    paths = sign_outputs(out, output)
    host_cas = [pem.encode() for pem in answer["host_ca_pems"]]
    if output == "file":
        identity = LocalIdentity(
            key_pem=keys.private_key_pem(key),
            tls_cert_pem=answer["tls_cert"].encode(),
            tls_ca_pems=tuple(host_cas),
            ssh_cert=answer["ssh_cert"],
            known_hosts=tuple(answer.get("known_hosts") or ()),
        )
        identity.write_identity_file(paths[0])
    elif output == "openssh":
        write_private(paths[0], keys.private_key_openssh(key))
        write_private(paths[1], answer["ssh_cert"].strip() + "\n")
    else:
        write_private(paths[0], keys.private_key_pem(key))
        write_private(paths[1], answer["tls_cert"].encode())
        write_private(paths[2], b"".join(host_cas))
    return paths


def _sign(args: argparse.Namespace, cli: CliContext) -> int:
    if bool(args.user) == bool(args.host):
        raise UsageError("--user or --host must be specified (one of them)")
    if args.host:
        return _sign_host(args, cli)
    if not args.out:
        raise UsageError('tctl auth sign: the following arguments are required: -o/--out (see "tctl auth sign --help")')
    ttl = check_ttl(args.ttl or DEFAULT_SIGN_TTL)
    out = Path(args.out)
    if not out.name or args.out.endswith("/"):
        raise UsageError(f"--out: expected a file name, got {json.dumps(args.out)}")
    paths = sign_outputs(out, args.format)
    _check_outputs(paths, args.overwrite)

    async def body(client: AuthClient) -> int:
        key = keys.generate_private_key(KEY_ALGORITHM)
        asked = dt.datetime.now(dt.UTC) + parse_duration(ttl)
        answer = await client.sign_user_cert(args.user, keys.public_key_openssh(key), ttl)
        written = write_credentials(out, args.format, key, answer)
        print(f"The credentials have been written to {', '.join(str(p) for p in written)}")
        valid_before = dt.datetime.fromisoformat(answer["valid_before"])
        if valid_before < asked - TTL_SLACK:
            warn(f"the certificates expire {human_time(valid_before)}, before the requested --ttl={ttl} "
                 "(capped by the user's roles max_session_ttl or the cluster's maximum)")
        return 0

    return run(cli, args, body)


def _check_outputs(paths: list[Path], overwrite: bool) -> None:
    if not overwrite:
        existing = [str(p) for p in paths if p.exists()]
        if existing:
            raise UsageError(f"{', '.join(existing)} already exists; pass --overwrite to replace it")
    for path in paths:
        if path.is_dir():
            raise UsageError(f"--out: {path} is a directory")


def host_outputs(out: Path) -> list[Path]:
    """What ``--host --format=openssh -o FILE`` writes: FILE (private key), FILE.pub, FILE-cert.pub."""
    return [out, out.with_name(out.name + ".pub"), out.with_name(out.name + "-cert.pub")]


def _sign_host(args: argparse.Namespace, cli: CliContext) -> int:
    """``tctl auth sign --host=NAME[,NAME] --format=openssh [-o FILE]``: an OpenSSH server's host key and
    certificate; the private key is made here and never leaves this machine."""
    if args.format != "openssh":
        raise UsageError(f'invalid --format flag "{args.format}", only "openssh" is supported with --host')
    principals = split_list(args.host, "--host")
    ttl = check_ttl(args.ttl) if args.ttl else ""
    out = Path(args.out or principals[0])
    if not out.name or (args.out or "").endswith("/"):
        raise UsageError(f"--out: expected a file name, got {json.dumps(args.out)}")
    paths = host_outputs(out)
    _check_outputs(paths, args.overwrite)

    async def body(client: AuthClient) -> int:
        key = keys.generate_private_key(KEY_ALGORITHM)
        public = keys.public_key_openssh(key)
        answer = await client.call("POST", "/v1/certs/openssh-host",
                                   {"public_key": public, "principals": principals, "ttl": ttl})
        write_private(paths[0], keys.private_key_openssh(key))
        write_public(paths[1], public.strip() + "\n")
        write_public(paths[2], answer["ssh_cert"].strip() + "\n")
        print(f"The credentials have been written to {', '.join(str(p) for p in paths)}")
        until = human_time(dt.datetime.fromisoformat(answer["valid_before"]))
        print(f"The host certificate is valid for {', '.join(answer['principals'])} until {until}")
        return 0

    return run(cli, args, body)


SUBCOMMANDS: dict[str, Subcommand] = {
    "export": ("Print the cluster's public CA keys or certificates.", _add_export_args, _export),
    "sign": ("Create credentials for a user (identity file, OpenSSH or TLS files) or an OpenSSH server (--host).",
             _add_sign_args, _sign),
    "rotate": tctl_rotate.SUBCOMMAND,
}


def auth(argv: list[str], cli: CliContext) -> int:
    """``tctl auth export|sign`` (and any subcommand registered in :data:`SUBCOMMANDS`)."""
    parser = command_parser(cli, "Certificate authority operations.")
    add = subcommands(parser)
    for name, (help_text, add_args, _handler) in SUBCOMMANDS.items():
        add_args(add(name, help_text))
    args = parser.parse(argv)
    return SUBCOMMANDS[args.subcommand][2](args, cli)
