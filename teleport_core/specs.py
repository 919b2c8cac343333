"""What plugins announce through the registration hooks: services, backends, sinks, commands.

Factories and handlers are :mod:`lazy references <teleport_core.refs>` so that announcing
them costs no imports.
"""

from __future__ import annotations

import attrs

from teleport_core.refs import Ref


@attrs.frozen
class ServiceSpec:
    """A service a plugin provides, enabled by the config section ``section``.

    ``factory(ctx: ServiceContext) -> Service``. ``role`` is the ``--roles`` name that turns
    it on (``auth``, ``proxy``, ``node``). ``after`` lists sections that must be started
    (and ready) first when enabled in the same process. ``sample`` is a commented YAML block
    for ``teleport configure``; ``$data_dir``, ``$cluster_name``, ``$nodename`` and
    ``$public_addr_setting`` (``public_addr: HOST:PORT`` from ``teleport configure
    --public-addr``, else a commented example) are substituted.
    ``listeners(config, settings) -> Mapping[str, NetAddr]`` names the addresses the service
    will listen on, keyed by config key (``ssh_service.listen_addr``); ``teleport start``
    checks each can be bound before any service starts. None: every ``NetAddr`` attribute of
    the settings whose name ends in ``listen_addr``.
    """

    section: str
    role: str
    factory: Ref
    after: tuple[str, ...] = ()
    description: str = ""
    sample: str = ""
    listeners: Ref | None = None


@attrs.frozen
class BackendSpec:
    """A cluster-state backend selected by ``teleport.storage.type: <name>``.

    ``factory(options, data_dir: pathlib.Path) -> Backend`` (may be a coroutine function).
    ``parse_options(reader: SectionReader) -> options`` reads the backend's keys of
    ``teleport.storage`` at config load; the kernel rejects any key it did not read.
    """

    name: str
    factory: Ref
    parse_options: Ref | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""


@attrs.frozen
class SessionStorageSpec:
    """Session-recording storage selected by the scheme of ``teleport.storage.audit_sessions_uri``.

    ``factory(uri: str, data_dir: pathlib.Path) -> SessionStorage`` (may be a coroutine
    function); it raises ``ConfigError`` for a URI it cannot use. ``check_uri(uri: str) -> Any``
    validates a URI without opening anything (``teleport configure --test``): it raises
    ``ConfigError`` for a URI the factory would refuse.
    """

    scheme: str
    factory: Ref
    description: str = ""
    check_uri: Ref | None = None


@attrs.frozen
class AuditSinkSpec:
    """An audit sink selected by the scheme of an entry of ``teleport.storage.audit_events_uri``.

    ``factory(uri: str, data_dir: pathlib.Path) -> AuditSink`` (may be a coroutine function).
    ``check_uri(uri: str) -> Any`` validates a URI without opening anything (``teleport
    configure --test``): it raises ``ConfigError`` for a URI the factory would refuse.
    """

    scheme: str
    factory: Ref
    description: str = ""
    check_uri: Ref | None = None


@attrs.frozen
class CliCommand:
    """A ``tctl``/``tsh``/``teleport`` subcommand: ``handler(argv, cli) -> int`` (the exit code).

    ``argv`` holds every argument but the command name; ``cli`` is a
    :class:`~teleport_core.cli.common.CliContext` whose ``cli.parser()`` already accepts the
    tool's global options (``tctl -c FILE``, ``tsh --proxy``). The handler is imported only
    when its command runs.
    """

    name: str
    help: str
    handler: Ref
