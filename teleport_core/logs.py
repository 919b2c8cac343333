"""Structured logging for ``teleport start`` and the tools (structlog over stdlib ``logging``).

:func:`configure_logging` applies ``teleport.log``: where lines go (``stderr``, ``stdout``,
``syslog`` or a file path), the lowest severity, and the line format::

    text: 2026-11-21T14:00:00.123Z INFO [auth] service started listen_addr=127.0.0.1:3025
    json: {"timestamp": "2026-11-21T14:00:00.123Z", "level": "info", "component": "auth",
           "message": "service started", "listen_addr": "127.0.0.1:3025"}

Every line names its component: the one bound by :func:`get_logger`, or for records of
other libraries the first part of their logger name (``hypercorn``, ``asyncio``). Values
of keys that look secret (``password``, ``token``, ``secret``, ``private_key`` ...) are
replaced by ``***`` and :class:`~teleport_core.pki.secret.Secret` values print as
``Secret(***)``. Text lines escape control characters, so a logged value cannot forge a line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, TextIO, cast

import structlog

from teleport_core.config.model import LOG_FIELDS, LogConfig
from teleport_core.errors import ConfigError

LEVELS: dict[str, int] = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}
EXTRA_FIELDS = LOG_FIELDS
DEFAULT_FIELDS = ("timestamp", "level", "component")
REDACTED = "***"
SENSITIVE_KEY = re.compile(
    r"password|passwd|passphrase|secret|token|private_?key|api_?key|credential|authorization|cookie|(^|_)otp(_|$)",
    re.IGNORECASE,
)
_LEVEL_NAMES = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARN",
    "warn": "WARN",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "ERROR",
    "fatal": "ERROR",
    "notset": "DEBUG",
}
_FIXED_KEYS = ("timestamp", "level", "component", "event", "caller", "exception", "stack")
_BARE_VALUE = re.compile(r"^[\w.:/@\[\]+,*%~-]+$")
_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {10: "\\n", 13: "\\r", 9: "\\t", 127: "\\x7f"}
_SKIP_PACKAGES = ("structlog", "logging")


class _Settings:
    """Options read by the processors on every call, so re-configuring affects every logger."""

    caller = False


_settings = _Settings()
_lock = threading.Lock()
_structlog_ready = False
_handler: logging.Handler | None = None


# -- processors -----------------------------------------------------------------------------------


def component_of(logger_name: str) -> str:
    """``teleport.auth`` -> ``auth``; ``hypercorn.error`` -> ``hypercorn``; root -> ``teleport``."""
    if logger_name.startswith("teleport."):
        logger_name = logger_name[len("teleport.") :]
    first = logger_name.split(".", 1)[0]
    return first if first and first != "root" else "teleport"


def _add_component(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not event_dict.get("component"):
        record = event_dict.get("_record")
        name = record.name if record is not None else getattr(logger, "name", "")
        event_dict["component"] = component_of(name or "")
    return event_dict


def _add_level(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    name = record.levelname.lower() if record is not None else method
    event_dict["level"] = _LEVEL_NAMES.get(name, name.upper())
    return event_dict


def _add_timestamp(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    when = dt.datetime.fromtimestamp(record.created, dt.UTC) if record is not None else dt.datetime.now(dt.UTC)
    event_dict["timestamp"] = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return event_dict


def _add_caller(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _settings.caller:
        return event_dict
    record = event_dict.get("_record")
    if record is not None:
        event_dict["caller"] = f"{record.filename}:{record.lineno}"
        return event_dict
    frame = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module != __name__ and module.split(".", 1)[0] not in _SKIP_PACKAGES:
            event_dict["caller"] = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
            break
        frame = frame.f_back  # type: ignore[assignment]
    return event_dict


def _redact_value(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_sensitive(k, v) else _redact_value(v, depth + 1)) for k, v in value.items()}
    if type(value) in (list, tuple):  # not subclasses: a namedtuple cannot be rebuilt from an iterable
        return type(value)(_redact_value(v, depth + 1) for v in value)
    return value


def _is_sensitive(key: Any, value: Any) -> bool:
    return isinstance(key, str) and value is not None and bool(SENSITIVE_KEY.search(key))


def redact_secrets(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the values of secret-looking keys (also inside nested mappings) with ``***``."""
    for key, value in list(event_dict.items()):
        if key in _FIXED_KEYS or key.startswith("_"):
            continue
        event_dict[key] = REDACTED if _is_sensitive(key, value) else _redact_value(value)
    return event_dict


_SHARED: list[Any] = [_add_component, _add_level, _add_timestamp, _add_caller, redact_secrets]


# -- renderers ------------------------------------------------------------------------------------


def _json_default(value: Any) -> str:
    return str(value)


def _escape(text: str) -> str:
    return text.translate(_CONTROL)


def _text_value(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))
    text = value if isinstance(value, str) else str(value)
    return text if _BARE_VALUE.match(text) else json.dumps(text, ensure_ascii=False)


class _Renderer:
    """Turns an event dict into one line (``text`` or ``json``) with the chosen fields."""

    def __init__(self, fmt: str, fields: tuple[str, ...]) -> None:
        self.fmt = fmt
        self.fields = fields

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        timestamp = event_dict.pop("timestamp", "")
        level = str(event_dict.pop("level", "INFO"))
        component = str(event_dict.pop("component", "teleport"))
        message = event_dict.pop("event", "")
        caller = event_dict.pop("caller", None)
        trailers = [(key, event_dict.pop(key)) for key in ("stack", "exception") if event_dict.get(key)]
        if self.fmt == "json":
            out: dict[str, Any] = {}
            if "timestamp" in self.fields:
                out["timestamp"] = timestamp
            if "level" in self.fields:
                out["level"] = level.lower()
            out["component"] = component
            out["message"] = message if isinstance(message, str) else str(message)
            if caller and "caller" in self.fields:
                out["caller"] = caller
            for key, value in event_dict.items():
                out.setdefault(key, value)
            for key, value in trailers:
                out[key] = value
            return json.dumps(out, default=_json_default, ensure_ascii=False)
        parts = []
        if "timestamp" in self.fields:
            parts.append(timestamp)
        if "level" in self.fields:
            parts.append(level)
        parts.append(f"[{_escape(component)}]")
        parts.append(_escape(str(message)))
        parts.extend(f"{_escape(str(key))}={_text_value(value)}" for key, value in event_dict.items())
        if caller and "caller" in self.fields:
            parts.append(f"caller={_text_value(caller)}")
        line = " ".join(parts)
        for _, value in trailers:
            line += "\n" + str(value).rstrip("\n")
        return line


# -- handlers -------------------------------------------------------------------------------------


class _StdStream(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr``/``sys.stdout`` is at the time of each line."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    @property
    def stream(self) -> TextIO:
        return cast(TextIO, getattr(sys, self._name))

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _open_handler(output: str) -> logging.Handler:
    if output in ("stderr", "stdout"):
        return _StdStream(output)
    if output == "syslog":
        address = "/dev/log"
        if not os.path.exists(address):
            raise ConfigError("teleport.log.output", f"syslog is not available ({address} does not exist)")
        return logging.handlers.SysLogHandler(address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    path = Path(output).expanduser()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        return logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError("teleport.log.output", f"cannot open log file {path}: {exc.strerror or exc}") from None


# -- public API -----------------------------------------------------------------------------------


def _ensure_structlog() -> None:
    global _structlog_ready
    with _lock:
        if _structlog_ready:
            return
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.PositionalArgumentsFormatter(),
                *_SHARED,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=False,
        )
        _structlog_ready = True


def level_of(severity: str) -> int:
    """A ``teleport.log.severity`` as a stdlib level (``TRACE`` is ``DEBUG``)."""
    try:
        return LEVELS[severity.upper()]
    except KeyError:
        raise ConfigError(
            "teleport.log.severity", f"expected one of {', '.join(LEVELS)}, got {json.dumps(severity)}"
        ) from None


PER_REQUEST_LOGGERS = ("httpx", "httpcore")
"""Libraries that log every HTTP request they make at INFO (node and proxy poll auth): shown at
DEBUG only, so that INFO stays readable."""


def configure_logging(log: LogConfig) -> None:
    """Send every log line (ours and other libraries') to ``log.output`` in ``log.format``.

    Replaces the handler a previous call installed, so it may be called more than once.
    Raises :class:`ConfigError` for a bad severity, format, field or unwritable file.
    """
    global _handler
    level = level_of(log.severity)
    if log.format not in ("text", "json"):
        raise ConfigError("teleport.log.format.output", f'expected "text" or "json", got {json.dumps(log.format)}')
    for name in log.extra_fields:
        if name not in EXTRA_FIELDS:
            raise ConfigError(
                "teleport.log.format.extra_fields",
                f"unknown field {json.dumps(name)}; valid fields: {', '.join(EXTRA_FIELDS)}",
            )
    fields = tuple(log.extra_fields) or DEFAULT_FIELDS
    _ensure_structlog()
    handler = _open_handler(log.output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _Renderer(log.format, fields),
            ],
            foreign_pre_chain=_SHARED,
        )
    )
    handler.setLevel(level)
    root = logging.getLogger()
    with _lock:
        old, _handler = _handler, handler
        _settings.caller = "caller" in fields
        if old is not None:
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(level)
        for name in PER_REQUEST_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else logging.WARNING)
    if old is not None:
        old.close()


def reset_logging() -> None:
    """Remove the handler :func:`configure_logging` installed (for tests)."""
    global _handler
    with _lock:
        old, _handler = _handler, None
        if old is not None:
            logging.getLogger().removeHandler(old)
    if old is not None:
        old.close()


def get_logger(component: str, **bound: Any) -> structlog.stdlib.BoundLogger:
    """A logger whose every line carries ``component`` (``auth``, ``proxy``, ``process`` ...)."""
    _ensure_structlog()
    logger = structlog.get_logger(f"teleport.{component}")
    return cast(structlog.stdlib.BoundLogger, logger.bind(component=component, **bound))


def debug_enabled() -> bool:
    """Whether DEBUG lines are written (used to decide whether to log tracebacks)."""
    return logging.getLogger("teleport").isEnabledFor(logging.DEBUG)
