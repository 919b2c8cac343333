"""Exceptions shared by the kernel and every plugin.

Each error's ``str()`` is the one-line message a user sees; the CLI prints it without a
traceback (``-d`` shows the traceback).
"""

from __future__ import annotations


class TeleportError(Exception):
    """Base of every error the kernel and plugins raise on purpose."""


class ConfigError(TeleportError):
    """A config value is wrong. ``str()`` is ``"<key path>: <what was expected>"``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class PluginError(TeleportError):
    """A plugin failed to load or misbehaved; the message names its distribution and version."""


class UnknownNameError(TeleportError):
    """Config names a backend, sink, scheme or service that no installed plugin provides."""


class NotFound(TeleportError):
    """The requested item does not exist."""


class AlreadyExists(TeleportError):
    """The item to create exists already."""


class CompareFailed(TeleportError):
    """A compare-and-swap or conditional write found a different value or revision."""


class AccessDenied(TeleportError):
    """An authorization decision refused the request; ``str()`` is the reason."""


class AuthenticationFailed(TeleportError):
    """Credentials were wrong; the message never contains the credentials."""


class CertificateVetoed(TeleportError):
    """A plugin vetoed a certificate issuance; the message is its reason. ``identity`` is the
    :class:`~teleport_core.policy.access.Identity` the certificate was for (the auth API audits the
    refusal under that name and answers 403)."""

    def __init__(self, message: str, identity: object = None) -> None:
        super().__init__(message)
        self.identity = identity


class WatcherClosed(TeleportError):
    """A watcher was closed: by its owner, by the backend closing, or for falling too far behind."""


class DataDirLocked(TeleportError):
    """Another teleport process holds the data directory."""


class AuditUnavailable(TeleportError):
    """The audit log cannot record events, so the action was refused (HTTP 503): no action goes
    unaudited. ``str()`` starts with ``"audit log unavailable: "`` and names the cause."""

    PREFIX = "audit log unavailable: "

    def __init__(self, cause: str) -> None:
        cause = cause.removeprefix(self.PREFIX)  # the client rebuilds it from the server's message
        super().__init__(self.PREFIX + cause)
        self.cause = cause
