"""The ``tsh`` commands: ``login``, ``status``, ``logout``, ``ls``, ``ssh``, ``config``, ``proxy ssh``,
``recordings ls`` and ``play`` (in :mod:`teleport_core.tsh.recordings`), ``request`` (in
:mod:`teleport_core.tsh.requests`, which ``login --request-roles|--request-id`` uses too)."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teleport_core.errors import TeleportError
from teleport_core.tsh.clusters import add_cluster_flag, select
from teleport_core.tsh.profile import Profile, agent_add, home, normalize_addr, remove
from teleport_core.tsh.profile import proxy_known_hosts as _known_hosts  # the name tests/test_tsh.py imports
from teleport_core.tsh.status import print_status, status_record

if TYPE_CHECKING:
    import argparse

    from teleport_core.cli.common import CliContext


HOST_KEY_ALGORITHMS = ",".join(("ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
                                "rsa-sha2-512-cert-v01@openssh.com"))


def _prompt(text: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(text)
    sys.stderr.write(text)
    sys.stderr.flush()
    line = sys.stdin.readline()
    sys.stderr.write("\n")
    return line.rstrip("\r\n")


def login(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("log in to a cluster through its proxy and store the certificates")
    parser.add_argument("--ttl", default="", help="certificate lifetime (e.g. 12h, 30m; minutes when a number)")
    parser.add_argument("-o", "--out", metavar="FILE", help="write an identity file instead of the profile")
    parser.add_argument("--format", choices=("file", "openssh"), default="file", help="format of --out")
    from teleport_core.tsh import requests as access

    access.add_login_flags(parser)
    args = parser.parse_args(argv)
    wanted = access.login_request(args)  # bad request flags fail before a password is asked
    if wanted.wanted and args.out:
        raise TeleportError("--out writes the base roles' certificates: it cannot be combined with "
                            "--request-roles or --request-id")
    if wanted.wanted:
        valid = _valid_profile(args)
        if valid is not None:  # logged in already: no password, the certificates are reissued
            print_status(access.login_with_request(valid, access.login_policy(valid, wanted)))
            return 0
    web, user, insecure = _login_target(args)
    from teleport_core.pki import keys
    from teleport_core.pki.identity import LocalIdentity
    from teleport_core.tsh.web import call

    args.insecure = insecure
    known_cas = _known_host_cas(web)  # a node of the cluster never passes as its proxy, even with --insecure
    ping = call(web, "GET", "/webapi/ping", insecure=args.insecure, host_cas=known_cas)
    ttl = args.ttl + "m" if args.ttl.isdigit() else args.ttl
    password = _prompt(f"Enter password for Teleport user {user}:")
    otp = ""
    if ping.get("auth", {}).get("second_factor", "off") == "otp":
        otp = _prompt("Enter your OTP token:")
    key = keys.generate_private_key("ed25519")  # generated here; only the public key is sent
    answer = call(web, "POST", "/v1/webapi/ssh/certs", insecure=args.insecure, host_cas=known_cas,
                  body={"user": user, "password": password, "otp_token": otp, "pub_key": keys.public_key_openssh(key),
                        "ttl": ttl})
    proxy_host = web.rpartition(":")[0].strip("[]")
    identity = LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                             tuple(p.encode() for p in answer["host_ca_pems"]), answer["cert"],
                             _known_hosts(answer["host_signers"], proxy_host)
                             + tuple(answer.get("trusted_host_signers") or ()))  # trusted leaves' host CAs
    if args.out:
        return _write_out(identity, Path(args.out), args.format, key)
    ssh_addr = ping["proxy"]["ssh"]["public_addr"]
    profile = Profile(proxy_host, web, ssh_addr, answer["username"], answer["cluster_name"], tuple(answer["roles"]),
                      tuple(answer["logins"]), dt.datetime.fromisoformat(answer["valid_before"]), args.insecure,
                      identity, tls_routing=bool(ping["proxy"].get("tls_routing_enabled", False)))
    folder = profile.save(home())
    agent_add(folder, profile)
    saved = Profile.load(home())
    wanted = access.login_policy(saved, wanted)  # request_access: always/reason request roles at login
    print_status(access.login_with_request(saved, wanted) if wanted.wanted else saved)
    return 0


def _valid_profile(args: argparse.Namespace) -> Profile | None:
    """The current profile when it is valid and is the one ``--proxy``/``--user`` name (if given)."""
    from teleport_core.tsh.profile import current_name

    profile = _stored(current_name(home()))
    if profile is None or profile.expired:
        return None
    if args.proxy and normalize_addr(args.proxy, 3080) != profile.web_addr:
        return None
    if args.user and args.user != profile.user:
        return None
    return profile


def _stored(name: str) -> Profile | None:
    """The stored profile ``name`` (even expired); None when there is none or it is unreadable."""
    from teleport_core.pki.identity import IdentityError

    if not name:
        return None
    try:
        return Profile.load(home(), name)
    except (TeleportError, IdentityError, OSError, KeyError, ValueError):
        return None


def _login_target(args: argparse.Namespace) -> tuple[str, str, bool]:
    """(proxy web address, user, insecure) of ``tsh login``: ``--proxy`` if given, else the current
    profile's proxy (as Teleport remembers it), with that profile's user and ``--insecure``
    unless given again; a clear error when there is neither."""
    from teleport_core.tsh.profile import current_name

    if args.proxy:
        web = normalize_addr(args.proxy, 3080)
        earlier = _stored(web.rpartition(":")[0].strip("[]"))
        if earlier is not None and earlier.web_addr != web:
            earlier = None
    else:
        earlier = _stored(current_name(home()))
        if earlier is None:
            raise TeleportError("--proxy=HOST[:PORT] is required: there is no earlier profile to log in to again "
                                "(tsh login --proxy=proxy.example.com)")
        web = earlier.web_addr
    user = args.user or (earlier.user if earlier is not None else "") or getpass.getuser()
    insecure = bool(args.insecure or (earlier is not None and not args.proxy and earlier.insecure))
    return web, user, insecure


def _known_host_cas(web: str) -> tuple[bytes, ...]:
    """The host CA certificates of an earlier profile of the proxy at ``web`` (even expired)."""
    from teleport_core.pki.identity import IdentityError

    try:
        earlier = Profile.load(home(), web.rpartition(":")[0].strip("[]"))
    except (TeleportError, IdentityError, OSError, KeyError, ValueError):
        return ()
    return earlier.identity.tls_ca_pems if earlier.web_addr == web else ()


def _write_out(identity: Any, path: Path, fmt: str, key: Any) -> int:
    from teleport_core.files import write_private
    from teleport_core.pki import keys

    if fmt == "file":
        identity.write_identity_file(path)
        print(f"The certificate has been written to {path}")
    else:
        write_private(path, keys.private_key_openssh(key))
        write_private(Path(f"{path}-cert.pub"), identity.ssh_cert + "\n")
        print(f"The key and certificate have been written to {path}, {path}-cert.pub")
    return 0


def status(argv: list[str], cli: CliContext) -> int:
    from teleport_core.tsh import output
    from teleport_core.tsh.profile import NotLoggedIn, current_name, profile_names

    parser = cli.parser("show the current profile and the other profiles stored (one per proxy)")
    output.add_format(parser)
    args = parser.parse_args(argv)
    name = current_name(home())
    active = _stored(name)
    others = [p for p in (_stored(n) for n in profile_names(home()) if n != name) if p is not None]
    if args.format != "text":
        output.emit({"active": status_record(active) if active is not None else None,
                     "profiles": [status_record(p) for p in others]}, args.format)
        return 0
    if active is None and not others:
        raise NotLoggedIn("not logged in (run tsh login --proxy=HOST)")
    if active is not None:
        print_status(active)
    for other in others:
        print()
        print_status(other, current=False)
    return 0


def logout(argv: list[str], cli: CliContext) -> int:
    cli.parser("delete the current profile's key and certificates").parse_args(argv)
    root = home()
    try:
        profile: Profile | None = Profile.load(root)
    except TeleportError:
        profile = None
    if profile is not None and profile.folder is not None and os.environ.get("SSH_AUTH_SOCK"):
        subprocess.run(["ssh-add", "-q", "-d", str(profile.folder / "id")], check=False, capture_output=True,
                       timeout=10)
    name = remove(root)
    print(f"Logged out {profile.user} from {name}." if profile and name else "You are not logged in.")
    return 0


def list_nodes(profile: Profile) -> list[dict[str, Any]]:
    from teleport_core.tsh.web import call

    nodes: list[dict[str, Any]] = call(profile.web_addr, "GET", f"/v1/webapi/sites/{profile.cluster}/nodes",
                                       insecure=profile.insecure, profile=profile)
    return nodes


def node_record(node: dict[str, Any]) -> dict[str, Any]:
    """A node of ``tsh ls --format=json|yaml``: Teleport's node resource (``kind``, ``version``,
    ``metadata.name`` = host UUID, ``metadata.labels``, ``spec.hostname``, ``spec.addr``,
    ``spec.use_tunnel``), then the proxy's flat fields (``uuid``, ``nodename``, ``addr``, ``labels``,
    ``tunnel``, ``logins``: the logins your roles allow there) kept for earlier scripts."""
    labels = dict(node.get("labels") or {})
    record: dict[str, Any] = {
        "kind": "node", "sub_kind": node.get("sub_kind") or "teleport", "version": "v2",
        "metadata": {"name": node["uuid"], "labels": labels},
        "spec": {"hostname": node["nodename"], "addr": node.get("addr") or "",
                 "use_tunnel": bool(node.get("tunnel"))},
    }
    record.update(node)
    return record


def ls(argv: list[str], cli: CliContext) -> int:
    from teleport_core.tsh import output

    parser = cli.parser("list the nodes you may reach")
    parser.add_argument("labels", nargs="*", help="label=value filters")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show each node's ID (host UUID), and its labels in full")
    output.add_format(parser)
    add_cluster_flag(parser)
    args = parser.parse_args(argv)
    selector = {}
    for item in args.labels:
        for part in item.split(","):
            key, eq, value = part.partition("=")
            if not eq:
                raise TeleportError(f"expected label=value, got {part!r}")
            selector[key] = value
    listed = list_nodes(select(_current(args), args.cluster))
    nodes = [n for n in listed if all(n["labels"].get(k) == v for k, v in selector.items())]
    if args.format != "text":
        output.emit([node_record(n) for n in nodes], args.format)
        return 0
    rows: list[list[str]] = [[str(n["nodename"]), *([str(n["uuid"])] if args.verbose else []),
                              str(n["addr"] or "⟵ Tunnel"),
                              ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items()))] for n in nodes]
    head = ("Node Name", "Node ID", "Address", "Labels") if args.verbose else ("Node Name", "Address", "Labels")
    print("\n".join(output.table(head, rows, truncate=None if args.verbose else 2)))
    return 0


def ssh(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("run a command or a shell on a node through the proxy")
    parser.add_argument("-p", "--port", type=int, default=0, help="node SSH port (the registered one by default)")
    parser.add_argument("-l", "--login", help="remote login")
    parser.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    parser.add_argument("-T", dest="no_tty", action="store_true", help="no terminal")
    parser.add_argument("-L", dest="forwards", action="append", default=[], metavar="[BIND:]PORT:HOST:HOSTPORT",
                        help="forward a local port to HOST:HOSTPORT as seen from the node (repeatable)")
    parser.add_argument("-R", dest="remote_forwards", action="append", default=[], metavar="[BIND:]PORT:HOST:HOSTPORT",
                        help="forward a port on the node's loopback to HOST:HOSTPORT as seen from here (repeatable)")
    parser.add_argument("-D", dest="dynamic_forwards", action="append", default=[], metavar="[BIND:]PORT",
                        help="a local SOCKS5/SOCKS4 proxy whose connections leave from the node (repeatable)")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION=VALUE",
                        help="an OpenSSH option (ForwardAgent, RequestTTY, ServerAliveInterval, LocalForward, "
                             "RemoteForward, DynamicForward, User, Port, ConnectTimeout ...; repeatable)")
    parser.add_argument("-A", dest="agent", action="store_true", help="forward the local ssh-agent to the node")
    parser.add_argument("-N", dest="no_command", action="store_true",
                        help="run no command: only forward ports (-L, -R, -D) until interrupted")
    add_cluster_flag(parser)
    parser.add_argument("target", help="[login@]nodename, host UUID, address or label=value")
    parser.add_argument("command", nargs="*")
    args = parser.parse_args(argv)
    from teleport_core.tsh import forward, sshopts

    options = sshopts.parse_options(args.options)  # bad options and specs fail before anything else
    local_specs, remote_specs = [*args.forwards, *options.local], [*args.remote_forwards, *options.remote]
    dynamic_specs = [*args.dynamic_forwards, *options.dynamic]
    specs: list[Any] = [forward.parse_local_forward(spec) for spec in local_specs]
    specs += [forward.parse_remote_forward(spec) for spec in remote_specs]
    specs += [forward.parse_dynamic_forward(spec) for spec in dynamic_specs]
    if args.no_command and (args.command or not specs):
        raise TeleportError("-N runs no command: give -L, -R or -D forwards and no command")
    for warning in options.warnings:
        sys.stderr.write(f"tsh: warning: {warning}\n")
    profile = select(_current(args), args.cluster)
    login_name, at, host = args.target.rpartition("@")
    login_name = (args.login or options.user or (login_name if at else "")
                  or (profile.logins[0] if profile.logins else ""))
    if not login_name:
        raise TeleportError("no login given (login@host or -l) and the certificate allows none")
    command = " ".join(args.command)
    wants = {"yes": True, "force": True, "no": False}.get(options.request_tty or "auto")
    tty = args.tty or (not args.no_tty and (wants if wants is not None else not command and sys.stdin.isatty()))
    agent = args.agent or bool(options.forward_agent)
    from teleport_core.state.nodes import is_label_selector
    from teleport_core.tsh import sshclient

    if options.connect_timeout:
        sshclient.TIMEOUT = float(options.connect_timeout)  # this process runs one command
    if is_label_selector(host):
        if specs or agent:
            raise TeleportError("-L, -R, -D and -A need a single node, not a label selector")
        return _run_on_matches(profile, login_name, host, args.port or options.port or 0, command)
    host, port = split_host_port(host, args.port or options.port or 0)
    keepalive = (forward.Keepalive(options.server_alive_interval, options.server_alive_count_max)
                 if options.server_alive_interval else None)
    forwarding = forward.setup(profile, local_specs, agent, remote=remote_specs, dynamic=dynamic_specs,
                               keepalive=keepalive, host=host)
    if forwarding is None:
        return sshclient.run(profile, login_name, host, port, command, tty)
    try:
        if args.no_command:
            return forward.hold(profile, login_name, host, port, forwarding)
        return sshclient.run(profile, login_name, host, port, command, tty, prepare=forwarding.prepare)
    finally:
        forwarding.close()


def split_host_port(target: str, default: int = 0) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` -> (host, port); a bare host keeps ``default``.

    A port that is not a number from 0 to 65535 is a :class:`TeleportError`."""

    def number(port: str) -> int:
        if not (port.isascii() and port.isdigit()) or int(port) > 65535:
            raise TeleportError(f"invalid port {port!r} in {target!r}: expected a number from 0 to 65535")
        return int(port)

    if target.startswith("[") and "]:" in target:
        host, _, port = target[1:].partition("]:")
        return host, number(port)
    if target.count(":") == 1:
        host, _, port = target.partition(":")
        if port.isdigit():
            return host, number(port)
    return target.strip("[]"), default


def _run_on_matches(profile: Profile, login_name: str, selector: str, port: int, command: str) -> int:
    """Run ``command`` on every node matching the label selector, output prefixed by node."""
    from teleport_core.state.nodes import parse_label_selector

    if not command:
        raise TeleportError("a label selector runs a command on every match: give a command")
    wanted = parse_label_selector(selector)
    nodes = [n for n in list_nodes(profile) if all(n["labels"].get(k) == v for k, v in wanted.items())]
    if not nodes:
        raise TeleportError(f"target host {selector} is offline or does not exist")
    worst = 0
    for node in nodes:
        argv = [*_tsh_command(), "ssh", f"--cluster={profile.cluster}", *(["-p", str(port)] if port else []),
                f"{login_name}@{node['uuid']}", command]
        proc = subprocess.run(argv, capture_output=True, check=False)
        for stream, data in ((sys.stdout, proc.stdout), (sys.stderr, proc.stderr)):
            for line in data.decode(errors="replace").splitlines():
                stream.write(f"[{node['nodename']}] {line}\n")
        worst = worst or proc.returncode
    return worst


def scp(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("copy files to or from a node through the proxy (SFTP), as OpenSSH's scp: "
                        "SOURCE... DEST, with [login@]node:path on one side")
    parser.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    parser.add_argument("-p", "--preserve", action="store_true", help="keep modification times and modes")
    parser.add_argument("-P", "--port", type=int, default=0, help="node SSH port (the registered one by default)")
    parser.add_argument("paths", nargs="*", metavar="SOURCE... DEST",
                        help="sources, then the destination (a directory when there are several sources)")
    add_cluster_flag(parser)
    args = parser.parse_args(argv)
    from teleport_core.tsh import scp as scp_files

    job = scp_files.plan(args.paths)  # a wrong path fails before anything else
    if job.upload:
        scp_files.check_local_sources(job.sources, args.recursive)
    profile = select(_current(args), args.cluster)
    job = scp_files.with_login(job, profile.logins[0] if profile.logins else "")
    scp_files.copy(profile, job, args.port, recursive=args.recursive, preserve=args.preserve)
    return 0


def _tsh_command() -> list[str]:
    return [sys.executable, "-m", "teleport_core.cli.tsh"]


def config(argv: list[str], cli: CliContext) -> int:
    cli.parser("print an ssh_config block to reach the cluster's nodes with plain ssh").parse_args(argv)
    profile = Profile.load(home())
    assert profile.folder is not None
    folder = profile.folder
    tsh = " ".join(shlex.quote(part) for part in _tsh_command())
    cluster, proxy = profile.cluster, profile.proxy_host
    home_env = f"TELEPORT_HOME={shlex.quote(str(home()))} "
    print(f"""# Begin generated Teleport configuration for {proxy} by tsh

# Common flags for all {cluster} hosts
Host *.{cluster} {proxy}
    UserKnownHostsFile "{folder / 'known_hosts'}"
    IdentityFile "{folder / 'id'}"
    CertificateFile "{folder / 'id-cert.pub'}"
    HostKeyAlgorithms {HOST_KEY_ALGORITHMS}

# Flags for all {cluster} hosts except the proxy
Host *.{cluster} !{proxy}
    ProxyCommand env {home_env}{tsh} proxy ssh %r@%h:%p
""")
    from teleport_core.tsh.clusters import config_leaves

    for leaf in config_leaves(profile):  # trusted leaves: their nodes through the root proxy
        print(f"""# Common flags for all {leaf} hosts
Host *.{leaf}
    UserKnownHostsFile "{folder / 'known_hosts'}"
    IdentityFile "{folder / 'id'}"
    CertificateFile "{folder / 'id-cert.pub'}"
    HostKeyAlgorithms {HOST_KEY_ALGORITHMS}

# Flags for all {leaf} hosts except the proxy
Host *.{leaf} !{proxy}
    ProxyCommand env {home_env}{tsh} proxy ssh --cluster={leaf} %r@%h:%p
""")
    print("# End generated Teleport configuration")
    return 0


def proxy(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("proxy ssh [user@]host[:port]: connect stdin/stdout to a node through the proxy")
    parser.add_argument("kind", choices=("ssh",))
    parser.add_argument("target")
    add_cluster_flag(parser)
    args = parser.parse_args(argv)
    profile = select(_current(args), args.cluster)
    _, _, hostport = args.target.rpartition("@")
    host, port = split_host_port(hostport)
    from teleport_core.tsh import sshclient

    return sshclient.bridge(profile, host, port)


def recordings(argv: list[str], cli: CliContext) -> int:
    from teleport_core.tsh import recordings as rec

    return rec.recordings(argv, cli)


def request(argv: list[str], cli: CliContext) -> int:
    """``tsh request create|ls|show|review|drop`` (teleport_core/tsh/requests.py)."""
    from teleport_core.tsh import requests as access

    return access.request(argv, cli)


def sessions(argv: list[str], cli: CliContext) -> int:
    """``tsh sessions ls [--kind=ssh] [--format=text|json|yaml]`` (teleport_core/tsh/sessions.py)."""
    from teleport_core.tsh import sessions as live

    return live.sessions(argv, cli)


def play(argv: list[str], cli: CliContext) -> int:
    from teleport_core.tsh import recordings as rec

    return rec.play(argv, cli)


def join(argv: list[str], cli: CliContext) -> int:
    """``tsh join [--mode=observer|peer|moderator] SESSION_ID`` (teleport_core/tsh/join.py)."""
    from teleport_core.tsh import join as joining

    parser = cli.parser("Join the active SSH session.")
    parser.add_argument("-m", "--mode", default=joining.DEFAULT_MODE, choices=joining.MODES,
                        help="mode of joining the session: observer (default), peer or moderator")
    parser.add_argument("-c", "--cluster", help="the cluster of the session (the profile's)")
    parser.add_argument("session_id", metavar="SESSION_ID", help="the session to join (tsh sessions ls)")
    args = parser.parse_args(argv)
    from teleport_core.state.sessions import check_session_id

    check_session_id(args.session_id)  # InvalidSessionID: says what a session ID looks like
    profile = _current(args)
    if args.cluster and args.cluster != profile.cluster:
        raise TeleportError(f"the profile is for cluster {profile.cluster}, not {args.cluster}: "
                            "joining sessions of leaf clusters is not supported")
    return joining.run(profile, args.session_id, args.mode)


def _current(args: argparse.Namespace) -> Profile:
    from teleport_core.tsh.web import current

    return current(args)
