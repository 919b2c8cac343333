"""``teleport``: start the services a config enables, write a sample config, list plugins."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from teleport_core.cli.common import Builtin, CliContext, fail, run_tool
from teleport_core.cli.joinopenssh import cmd_join

DESCRIPTION = "teleport-py daemon: runs the auth, proxy and node services that teleport.yaml enables."


# Teleport's ``teleport start`` flags for services or modes teleport-py does not have: refused
# with the reason (docs/config.md) instead of argparse's "unrecognized arguments".
UNSUPPORTED_START_FLAGS = {
    "--fips": "FedRAMP/FIPS 140 mode needs a FIPS-validated crypto module; teleport-py has none",
    "--insecure-no-tls": "the proxy's web port always speaks TLS (it also carries SSH and the auth API)",
    "--skip-version-check": "teleport-py does not check versions between client and server, so there is "
                            "nothing to skip",
    "--permit-user-env": "the node does not read ~/.tsh/environment",
    "--bootstrap": "not supported: create roles, users and tokens with tctl create after the first start",
    "--apply-on-startup": "not supported: apply resources with tctl create -f",
}


def _start_parser(cli: CliContext) -> argparse.ArgumentParser:
    parser = cli.parser("Start the services enabled by the config (and --roles), in one process.")
    add = parser.add_argument
    add("-c", "--config", metavar="FILE", help="config file (default /etc/teleport.yaml)")
    add("--config-string", metavar="BASE64", default=os.environ.get("TELEPORT_CONFIG"),
        help="the whole teleport.yaml, base64-encoded, instead of a file (env TELEPORT_CONFIG)")
    add("-r", "--roles", help="comma-separated services to run: auth, proxy, node")
    add("--token", help="join token, or the path of a file holding it (keeps it out of ps)")
    add("--ca-pin", action="append", default=[], metavar="PIN", help="sha256:<hex> CA pin (repeatable)")
    add("--auth-server", action="append", default=[], metavar="HOST:PORT",
        help="auth server, or a proxy's web address (repeatable)")
    add("--proxy", metavar="HOST:PORT", help="join and serve through this proxy (teleport.proxy_server): "
        "the node opens no port and is reached through a reverse tunnel")
    add("--nodename", help="name of this node (default: hostname)")
    add("--labels", help="node labels: key=value[,key=value]")
    add("-l", "--listen-ip", metavar="IP", help="IP address every service binds, keeping each port [0.0.0.0]")
    add("--advertise-ip", metavar="HOST[:PORT]", help="address other servers reach this one at (behind NAT)")
    add("--data-dir", metavar="DIR", help="data directory (teleport.data_dir), e.g. for a second process "
        "on this host")
    add("--diag-addr", metavar="HOST:PORT", help="serve /healthz, /readyz, /metrics here")
    add("--insecure", action="store_true", help="skip TLS verification of the proxy (testing)")
    add("--pid-file", metavar="FILE", help="write the process ID to this file")
    for flag in UNSUPPORTED_START_FLAGS:
        add(flag, nargs="?", const=True, default=None, help=argparse.SUPPRESS)
    return parser


def cmd_start(argv: list[str], cli: CliContext) -> int:
    args = _start_parser(cli).parse_args(argv)
    for flag, reason in UNSUPPORTED_START_FLAGS.items():
        if getattr(args, flag.lstrip("-").replace("-", "_")) is not None:
            return fail(f"{flag}: {reason}")

    from teleport_core.config.load import Flags, load_config

    explicit = any(a == "--config-string" or a.startswith("--config-string=") for a in argv)
    flags = Flags(
        roles=args.roles,
        token=args.token,
        ca_pins=tuple(args.ca_pin),
        auth_servers=tuple(args.auth_server),
        nodename=args.nodename,
        labels=args.labels,
        diag_addr=args.diag_addr,
        insecure=args.insecure,
        debug=args.debug,
        proxy_server=args.proxy,
        listen_ip=args.listen_ip,
        advertise_ip=args.advertise_ip,
        data_dir=args.data_dir,
        config_string=args.config_string,
        config_string_origin="--config-string" if explicit else "TELEPORT_CONFIG",
    )
    plugins = cli.plugins
    plugins.raise_if_broken()
    config = load_config(Path(args.config) if args.config else None, plugins, flags)

    from teleport_core.logs import configure_logging
    from teleport_core.process import run_process

    configure_logging(config.log)
    # the pid file names the serving process: written at start (by the new process of a reload:
    # once ready), removed on exit while it still names this one (teleport_core.process)
    return run_process(config, plugins, pid_file=Path(args.pid_file).absolute() if args.pid_file else None)


def cmd_configure(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("Print a commented sample teleport.yaml for the installed plugins.")
    parser.add_argument("--cluster-name", default="", help="cluster name (default: nodename)")
    parser.add_argument("--data-dir", default="/var/lib/teleport", help="data directory")
    parser.add_argument("--nodename", default="", help="node name (default: hostname)")
    parser.add_argument("--roles", default="", help="only enable these services: auth, proxy, node")
    parser.add_argument("--public-addr", default="", metavar="HOST[:PORT]",
                        help="the proxy's public address (invite links, tsh login --proxy); port 3080 by default")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE (mode 0600) instead of stdout")
    parser.add_argument("--test", metavar="FILE", help="validate FILE and exit")
    args = parser.parse_args(argv)

    from teleport_core.config.load import load_config

    if args.test:
        config = load_config(Path(args.test), cli.plugins)
        if any(s.name == "auth_service" for s in config.enabled_services()):
            from teleport_core.resources import check_storage_uris

            check_storage_uris(cli.plugins, config.storage)  # only auth opens the audit log and recordings
        print(f"{args.test}: OK")
        return 0
    from teleport_core.config.sample import SampleOptions, render_sample
    from teleport_core.config.values import parse_addr

    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    try:
        public_addr = str(parse_addr(args.public_addr, default_port=3080)) if args.public_addr else ""
    except ValueError as exc:
        return fail(f"--public-addr: {exc}")
    options = SampleOptions(args.cluster_name, Path(args.data_dir).absolute(), args.nodename, roles, public_addr)
    text = render_sample(cli.plugins, options)
    if args.output:
        out = Path(args.output)
        if out.exists():
            return fail(f"{out} exists; remove it or choose another --output")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"Wrote config to {out}. Start with: teleport start --config {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_install(argv: list[str], cli: CliContext) -> int:
    from teleport_core.cli import systemd

    parser = cli.parser("Install helpers: `teleport install systemd` prints a systemd unit for teleport start.")
    parser.add_argument("what", choices=("systemd",), help="what to install")
    parser.add_argument("--teleport-path", default=systemd.DEFAULT_TELEPORT_PATH, metavar="PATH",
                        help=f"full path of the teleport program [{systemd.DEFAULT_TELEPORT_PATH}]")
    parser.add_argument("-c", "--config", default=systemd.DEFAULT_CONFIG, metavar="FILE",
                        help=f"the config file teleport start reads [{systemd.DEFAULT_CONFIG}]")
    parser.add_argument("--pid-file", default=systemd.DEFAULT_PID_FILE, metavar="FILE",
                        help=f"full path of the PID file [{systemd.DEFAULT_PID_FILE}]")
    parser.add_argument("--env-file", default=systemd.DEFAULT_ENV_FILE, metavar="FILE",
                        help=f"full path of the environment file [{systemd.DEFAULT_ENV_FILE}]")
    parser.add_argument("--fd-limit", type=int, default=systemd.DEFAULT_FD_LIMIT, metavar="N",
                        help=f"maximum number of open file descriptors [{systemd.DEFAULT_FD_LIMIT}]")
    parser.add_argument("-o", "--output", default="stdout", metavar="DEST",
                        help="stdout (default), file:///path or a path (not overwritten)")
    parser.add_argument("--fips", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fips:
        return fail(f"--fips: {UNSUPPORTED_START_FLAGS['--fips']}")
    options = systemd.UnitOptions(args.teleport_path, args.config, args.pid_file, args.env_file, args.fd_limit)
    text = systemd.render_unit(options)
    out = systemd.output_path(args.output)
    if not Path(args.teleport_path).exists() and Path(systemd.running_teleport()).exists():
        print(f"note: {args.teleport_path} does not exist; this teleport is {systemd.running_teleport()} "
              "(pass --teleport-path)", file=sys.stderr)
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return fail(f"{out} exists; remove it or choose another --output")
    except OSError as exc:
        return fail(f"cannot write {out}: {exc.strerror or exc}")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"Wrote the systemd unit to {out}. Then: systemctl daemon-reload && systemctl enable --now teleport",
          file=sys.stderr)
    return 0


def cmd_plugins(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("List installed plugins: distribution, version, hooks, what each provides.")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    described = cli.plugins.describe()
    broken = 1 if cli.plugins.broken else 0  # a script can tell a healthy install from a broken one
    if args.format == "json":
        print(json.dumps(described, indent=2))
        return broken
    for entry in described:
        provides = []
        for key in ("services", "backends", "session_storages", "audit_sinks", "commands"):
            if entry[key]:
                provides.append(f"{key.replace('_', ' ')}: {', '.join(entry[key])}")
        status = "" if entry["status"] == "loaded" else f" [{entry['status'].upper()}]"
        print(f"{entry['name']}{status}  {entry['distribution']} {entry['version']}")
        if entry.get("error"):
            print(f"    error: {entry['error']}")
            if entry.get("fix"):
                print(f"    to go on without it: {entry['fix']}")
        print(f"    hooks: {', '.join(entry['hooks']) or '-'}")
        for line in provides:
            print(f"    {line}")
    return broken


def cmd_version(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("Print the version.")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    from teleport_core import __version__

    python = ".".join(map(str, sys.version_info[:3]))
    if args.format == "json":
        print(json.dumps({"version": __version__, "python": python}))
    else:
        print(f"Teleport (teleport-py) v{__version__} python{python}")
    return 0


BUILTINS = {
    "start": Builtin("start the services enabled by teleport.yaml", cmd_start),
    "configure": Builtin("print a sample teleport.yaml (or --test one)", cmd_configure),
    "install": Builtin("install helpers: `teleport install systemd` prints a systemd unit", cmd_install),
    "plugins": Builtin("list installed plugins and what they provide", cmd_plugins),
    "version": Builtin("print the version", cmd_version),
    "join": Builtin("`teleport join openssh`: register this host's sshd as an agentless node", cmd_join),
}


def main(argv: list[str] | None = None) -> int:
    return run_tool("teleport", DESCRIPTION, BUILTINS, argv)


if __name__ == "__main__":
    sys.exit(main())
