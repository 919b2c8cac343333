"""``teleport``: start the services a config enables, write a sample config, list plugins."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from teleport_core.cli.common import Builtin, CliContext, fail, run_tool

DESCRIPTION = "teleport-py daemon: runs the auth, proxy and node services that teleport.yaml enables."


def cmd_start(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("Start the services enabled by the config (and --roles), in one process.")
    parser.add_argument("-c", "--config", metavar="FILE", help="config file (default /etc/teleport.yaml)")
    parser.add_argument("--roles", help="comma-separated services to run: auth, proxy, node")
    parser.add_argument("--token", help="join token, or the path of a file holding it (keeps it out of ps)")
    parser.add_argument("--ca-pin", action="append", default=[], metavar="PIN", help="sha256:<hex> CA pin")
    parser.add_argument("--auth-server", action="append", default=[], metavar="HOST:PORT", help="auth server")
    parser.add_argument("--nodename", help="name of this node (default: hostname)")
    parser.add_argument("--labels", help="node labels: key=value[,key=value]")
    parser.add_argument("--diag-addr", metavar="HOST:PORT", help="serve /healthz, /readyz, /metrics here")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification of the proxy (testing)")
    parser.add_argument("--pid-file", metavar="FILE", help="write the process ID to this file")
    args = parser.parse_args(argv)

    from teleport_core.config.load import Flags, load_config

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
    )
    plugins = cli.plugins
    plugins.raise_if_broken()
    config = load_config(Path(args.config) if args.config else None, plugins, flags)

    from teleport_core.logs import configure_logging
    from teleport_core.process import run_process

    configure_logging(config.log)
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n", encoding="utf-8")
    try:
        return run_process(config, plugins)
    finally:
        if args.pid_file:
            Path(args.pid_file).unlink(missing_ok=True)


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
    "plugins": Builtin("list installed plugins and what they provide", cmd_plugins),
    "version": Builtin("print the version", cmd_version),
}


def main(argv: list[str] | None = None) -> int:
    return run_tool("teleport", DESCRIPTION, BUILTINS, argv)


if __name__ == "__main__":
    sys.exit(main())
