"""Every hook a teleport-py plugin can implement, grouped by when it is called.

Implement a hook with the same name and (a subset of) the same argument names::

    from teleport_core import hookimpl

    @hookimpl
    def teleport_audit_sinks():
        return [AuditSinkSpec(scheme="syslog", factory="my_sink.sink:SyslogSink")]

Unless a spec says "first result wins", every plugin's implementation is called and all
non-None results are collected. Register a plugin with an entry point in the ``teleport``
group; ``docs/hooks.md`` describes each hook with an example, and ``docs/writing-plugins.md``
walks through a whole plugin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import teleport_core.policy.requests as access_requests
    from teleport_core.config.model import TeleportConfig
    from teleport_core.config.reader import SectionReader
    from teleport_core.pki.certs import CertAdditions, CertRequest
    from teleport_core.policy.access import AccessRequest, Decision, Identity, LoginRequest
    from teleport_core.specs import AuditSinkSpec, BackendSpec, CliCommand, ServiceSpec, SessionStorageSpec
    from teleport_core.state.nodes import NodeInfo, NodeMatch
    from teleport_core.webui import WebProxy

hookspec = pluggy.HookspecMarker("teleport")


# --------------------------------------------------------------------------------------------
# 1. Registration: what a plugin provides. Called when the plugin manager is built and
#    whenever the kernel needs the list; implementations must be cheap and import nothing heavy.
# --------------------------------------------------------------------------------------------


@hookspec
def teleport_services() -> Sequence[ServiceSpec] | None:
    """Announce the services this plugin provides, one per config section.

    Called once per process. Returns a list of :class:`~teleport_core.specs.ServiceSpec`
    (``section`` such as ``auth_service``, ``proxy_service``, ``ssh_service``). Two plugins
    providing the same section is an error. All results are collected.
    """


@hookspec
def teleport_storage_backends() -> Sequence[BackendSpec] | None:
    """Announce cluster-state backends, selected by ``teleport.storage.type``.

    Returns a list of :class:`~teleport_core.specs.BackendSpec`; names and aliases must be
    unique across plugins. All results are collected.
    """


@hookspec
def teleport_session_storages() -> Sequence[SessionStorageSpec] | None:
    """Announce session-recording storages, selected by the scheme of
    ``teleport.storage.audit_sessions_uri`` (``file``, ``s3`` ...).

    Returns a list of :class:`~teleport_core.specs.SessionStorageSpec`. All results are collected.
    """


@hookspec
def teleport_audit_sinks() -> Sequence[AuditSinkSpec] | None:
    """Announce audit sinks, selected by the scheme of each entry of
    ``teleport.storage.audit_events_uri`` (``file``, ``stdout`` ...).

    Returns a list of :class:`~teleport_core.specs.AuditSinkSpec`. All results are collected.
    """


@hookspec
def teleport_cli_commands(tool: str) -> Sequence[CliCommand] | None:
    """Add subcommands to a command-line tool.

    ``tool`` is ``"tctl"``, ``"tsh"`` or ``"teleport"``. Returns a list of
    :class:`~teleport_core.specs.CliCommand` for that tool (or None). A name the kernel or
    another plugin already uses is an error. All results are collected.
    """


# --------------------------------------------------------------------------------------------
# 2. Configuration: called while ``teleport.yaml`` and the command-line flags are loaded.
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def teleport_config_section(section: str, reader: SectionReader) -> Any:
    """Parse and validate the plugin's own config section.

    Called for every service section the plugin announced (enabled or not, so typos are
    caught either way), after the kernel has read ``enabled``; and, on this plugin alone, with
    ``section="plugins.<name>"`` for its entry under the top-level ``plugins:`` mapping
    (``<name>`` is the plugin's entry-point name; an empty mapping when absent, so defaults
    apply). Read keys with ``reader``'s typed getters (``reader.addr("listen_addr",
    "0.0.0.0:3022")``), which raise ``ConfigError`` naming the key path; the kernel rejects keys
    left unread. Return the parsed settings (an attrs instance): a service's are handed to it as
    ``ctx.settings``, a plugin's own are ``config.plugin("<name>")`` (read them in
    ``teleport_config_loaded``). Return None for a section that is not yours; a ``plugins:``
    entry whose plugin returns None is refused. First result wins. Called by
    ``teleport_core.config.load.parse_config`` in every process that loads a config.
    """


@hookspec
def teleport_config_loaded(config: TeleportConfig) -> None:
    """Check the whole parsed config for rules that span sections.

    Called once after every section was parsed. Raise
    :class:`~teleport_core.errors.ConfigError` to refuse the config. Return values are ignored.
    """


# --------------------------------------------------------------------------------------------
# 3. Identity: authentication, authorization and certificate issuance. Called by the auth
#    service for every login, API call and certificate it signs.
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def teleport_authenticate(request: LoginRequest) -> Identity | None:
    """Check a login's credentials.

    Return the authenticated :class:`~teleport_core.policy.access.Identity` (user, roles,
    traits) when the user is yours and the credentials are right; raise
    :class:`~teleport_core.errors.AuthenticationFailed` when the user is yours and they are
    wrong; return None when the user is not yours, so the next plugin is asked. Local users
    are checked last (the auth plugin's implementation is ``trylast``). First result wins.
    """


@hookspec
def teleport_authorize(request: AccessRequest) -> Decision | None:
    """Decide whether ``request.identity`` may perform ``request.verb`` on a resource.

    Return :meth:`Decision.allow() <teleport_core.policy.access.Decision.allow>`,
    :meth:`Decision.deny(reason) <teleport_core.policy.access.Decision.deny>` or None (no
    opinion). All results are collected and combined, with the caller's own decisions (roles,
    locks), by :func:`teleport_core.policy.access.check_access`: any deny wins, then any allow; with no
    allow the request is denied. An exception also denies. Called at every decision point, in
    the process that decides: the auth API (resource verbs), the node (``ssh`` logins,
    ``port_forward``, ``forward_agent``) and the proxy (``ssh`` routing); see docs/hooks.md.
    """


@hookspec
def teleport_certificate_extensions(request: CertRequest) -> CertAdditions | None:
    """Add extensions or critical options to a user or host certificate about to be signed.

    ``request`` describes the certificate (type, format, identity, principals, validity and
    the issuer's own extensions). Return :class:`~teleport_core.pki.certs.CertAdditions` or
    None. All results are merged; changing a value already set is an error.
    """


@hookspec(firstresult=True)
def teleport_certificate_veto(request: CertRequest) -> str | None:
    """Refuse a certificate issuance.

    Return a reason (a non-empty string) to refuse; the issuance fails with
    :class:`~teleport_core.errors.CertificateVetoed` and is audited. Return None to let it
    through. First result wins.
    """


# --------------------------------------------------------------------------------------------
# 4. Node lookup: called by the proxy (and tsh) to turn a target into registered nodes.
# --------------------------------------------------------------------------------------------


@hookspec
def teleport_node_candidates(target: str, nodes: Sequence[NodeInfo]) -> Sequence[NodeMatch] | None:
    """Propose nodes that ``target`` (the host part of ``login@target``) may mean.

    ``nodes`` is the inventory the caller may see. Return
    :class:`~teleport_core.state.nodes.NodeMatch` objects with a strength (``UUID``, ``STRONG``,
    ``WEAK``, ``LABEL``) or None. All results are collected and resolved by
    :func:`teleport_core.state.nodes.resolve_nodes` (strongest wins; ties are ambiguous except for
    label selectors). May block (DNS): callers run it off the event loop.
    """


# --------------------------------------------------------------------------------------------
# 5. Web UI: called by the proxy while it builds its HTTPS app.
# --------------------------------------------------------------------------------------------


@hookspec
def teleport_web_routes(proxy: WebProxy) -> Sequence[Any] | None:
    """Add pages to the proxy's web port (the web UI, ``teleport-web``).

    ``proxy`` is the proxy service as a :class:`~teleport_core.webui.WebProxy` (cluster name,
    logins and web sessions, an auth client acting for a session's user, the nodes a user may
    see, audit). Return a list of Starlette routes (``Route``, ``WebSocketRoute``, ``Mount``)
    or None. All results are collected; they are matched before the proxy's own JSON API
    routes, in plugin order. Called once by the proxy service
    (``teleport_proxy.web.build_app``) in the process running ``proxy_service``, when it
    starts serving HTTPS; a proxy without such a plugin serves no ``/web`` pages (404).
    """


# --------------------------------------------------------------------------------------------
# 6. Process: called by ``teleport start`` around the services' lifetime.
# --------------------------------------------------------------------------------------------


@hookspec
def teleport_process_started(config: TeleportConfig, services: Mapping[str, Any]) -> None:
    """Called once every enabled service has started and reported ready.

    ``services`` maps section names to the running service objects. Return values are ignored;
    an exception is logged and does not stop the process.
    """


@hookspec
def teleport_process_stopping(config: TeleportConfig) -> None:
    """Called once when shutdown begins (SIGTERM, SIGINT, or a failed start), before services
    stop. Return values are ignored; an exception is logged and does not stop the shutdown.
    """


# --------------------------------------------------------------------------------------------
# 7. Access requests: called by the auth service after each change to an access request.
# --------------------------------------------------------------------------------------------


@hookspec
def teleport_access_request_changed(request: access_requests.AccessRequest, change: str) -> None:
    """Announce a change to an access request, for notification plugins (Slack, PagerDuty, email).

    ``request`` is the request as stored after the change
    (:class:`teleport_core.policy.requests.AccessRequest`); ``change`` is one of ``created``,
    ``reviewed`` (a review that left it pending), ``approved``, ``denied``, ``expired`` (it
    lapsed and was removed) and ``deleted``. Called by the auth service after the change is
    stored, in order, on a worker thread: it may block (an HTTP call), but holds up only later
    announcements. Return values are ignored; an exception is logged and changes nothing.
    """
