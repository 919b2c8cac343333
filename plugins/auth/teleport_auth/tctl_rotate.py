"""``tctl auth rotate``: rotate the cluster's certificate authorities (see :mod:`teleport_auth.rotation`).

::

    tctl auth rotate                                   # both CAs, auto mode, 30h grace period
    tctl auth rotate --type=host --grace-period=8h
    tctl auth rotate --type=user --manual --phase=init # then update_clients, update_servers, standby
    tctl auth rotate --type=user --manual --phase=rollback

``tctl auth`` runs it through :data:`SUBCOMMAND` (arguments parsed by its parser);
:func:`main` takes the arguments after ``auth rotate`` on its own.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from teleport_auth.authority import RotationPhase
from teleport_auth.tctl import CommandParser, UsageError, run
from teleport_core.api.client import AuthClient
from teleport_core.cli.common import CliContext, add_global_options
from teleport_core.config.values import parse_duration

HELP = "Rotate certificate authorities in the cluster."
CA_TYPES = ("user", "host", "all")
PHASES = tuple(phase.value for phase in RotationPhase)
DEFAULT_GRACE_PERIOD = "30h"


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``tctl auth rotate`` (Teleport's)."""
    parser.add_argument("--type", choices=CA_TYPES, default="all",
                        help="the CA to rotate: user, host, or all (default: both)")
    parser.add_argument("--grace-period", default=DEFAULT_GRACE_PERIOD, metavar="DURATION",
                        help="how long certificates of the old CA stay valid (default 30h; 0 rotates at once: "
                             "users log in again, nodes re-join)")
    parser.add_argument("--manual", action="store_true",
                        help="move through the phases by hand with --phase (default: automatically, "
                             "at 1/3 and 2/3 of the grace period and at its end)")
    parser.add_argument("--phase", choices=PHASES, default="",
                        help="the phase to move to (manual rotation): init, update_clients, update_servers, "
                             "standby, or rollback")


def check_grace_period(text: str) -> str:
    """Validate ``--grace-period`` locally: a duration, zero or more, in whole seconds."""
    try:
        value = parse_duration(text)
    except ValueError:
        raise UsageError(f'--grace-period: expected a duration like "30h" or "90m", got {json.dumps(text)}') from None
    if value.total_seconds() < 0:
        raise UsageError(f"--grace-period: must not be negative, got {json.dumps(text)}")
    if value.total_seconds() != int(value.total_seconds()):
        raise UsageError(f"--grace-period: must be whole seconds, got {json.dumps(text)}")
    return text


def rotate(args: argparse.Namespace, cli: CliContext) -> int:
    """Ask the auth server for the rotation; print what happened as Teleport does."""
    grace = check_grace_period(args.grace_period)
    mode = "manual" if args.manual else "auto"

    async def body(client: AuthClient) -> int:
        await client.rotate_cert_authority(args.type, grace_period=grace, mode=mode, phase=args.phase)
        if args.phase:
            print(f"Updated rotation phase to {json.dumps(args.phase)}. To check status use 'tctl status'")
        else:
            print("Initiated certificate authority rotation. To check status use 'tctl status'")
        return 0

    return run(cli, args, body)


SUBCOMMAND: tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, CliContext], int]] = (
    HELP, add_args, rotate)
"""``tctl auth`` subcommand entry: (help, add arguments, handler)."""


def main(argv: list[str], cli: CliContext) -> int:
    """``tctl auth rotate`` with ``argv`` = the arguments after ``auth rotate``."""
    parser = CommandParser(prog=f"{cli.tool} auth rotate", description=HELP)
    add_global_options(parser, cli.tool)
    add_args(parser)
    return rotate(parser.parse_args(argv), cli)
