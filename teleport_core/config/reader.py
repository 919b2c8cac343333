"""A typed, path-aware reader over one mapping of ``teleport.yaml``.

Every getter names the full key path in its error (``proxy_service.web_listen_addr:
expected host:port, got "abc"``) and records the key as read; :meth:`SectionReader.finish`
rejects the keys nobody read, suggesting the closest valid one. Plugins use it to parse
their own sections in ``teleport_config_section``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from teleport_core.config.values import NetAddr, parse_addr, parse_duration
from teleport_core.errors import ConfigError
from teleport_core.pki.secret import Secret
from teleport_core.suggest import did_you_mean

T = TypeVar("T")
_MISSING: Any = object()


def show(value: Any) -> str:
    """A value as an error message quotes it: JSON for scalars, the type name otherwise."""
    if value is None or isinstance(value, str | int | float | bool):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dt.date):
        return json.dumps(value.isoformat())
    return f"a {type(value).__name__}"


class SectionReader:
    """Reads one mapping. ``origins`` maps key paths to the CLI flag that set them, so an
    error in an overridden value names the flag (``--diag-addr``) instead of the key."""

    def __init__(
        self, data: Any, path: str, *, origins: Mapping[str, str] | None = None, known: tuple[str, ...] = ()
    ) -> None:
        self.path = path
        self.origins = dict(origins or {})
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(self._where(""), f"expected a mapping of keys, got {show(data)}")
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(self._where(""), f"keys must be strings, got {show(key)}")
        self.data: Mapping[str, Any] = data
        self.read: set[str] = set(known)

    # -- plumbing -----------------------------------------------------------------------------

    def _where(self, key: str) -> str:
        full = f"{self.path}.{key}" if self.path and key else (self.path or key)
        base = full.split("[", 1)[0]  # an item of a list a flag set names the flag too
        return self.origins.get(full, self.origins.get(base, full))

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError for ``key`` of this section (for plugins' own cross-key checks)."""
        return ConfigError(self._where(key), message)

    def has(self, key: str) -> bool:
        self.read.add(key)
        return key in self.data and self.data[key] is not None

    def raw(self, key: str, default: Any = None) -> Any:
        """The value as YAML gave it (marks the key read)."""
        self.read.add(key)
        value = self.data.get(key)
        return default if value is None else value

    def _get(self, key: str, default: Any, convert: Callable[[Any], T], expected: str) -> T:
        self.read.add(key)
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(key, f"required: expected {expected}")
            return default  # type: ignore[no-any-return]
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            detail = f" ({exc})" if str(exc) and not str(exc).startswith("__") else ""
            raise self.error(key, f"expected {expected}, got {show(value)}{detail}") from None

    # -- scalars --------------------------------------------------------------------------------

    def string(self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] = ()) -> Any:
        def convert(value: Any) -> str:
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise TypeError("__")
            text = str(value)
            if choices and text not in choices:
                raise ValueError("__")
            return text

        expected = " or ".join(f'"{c}"' for c in choices) if choices else "a string"
        return self._get(key, default, convert, expected)

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        def convert(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("yes", "true", "on", "no", "false", "off"):
                return value.lower() in ("yes", "true", "on")
            raise TypeError("__")

        return self._get(key, default, convert, "yes or no")

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> Any:
        def convert(value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError("__")
            if minimum is not None and value < minimum:
                raise ValueError(f"must be at least {minimum}")
            return value

        return self._get(key, default, convert, "an integer")

    def duration(self, key: str, default: Any = _MISSING) -> Any:
        def convert(value: Any) -> dt.timedelta:
            if isinstance(value, int) and not isinstance(value, bool) and value == 0:
                return dt.timedelta(0)
            if not isinstance(value, str):
                raise TypeError("__")
            try:
                return parse_duration(value)
            except ValueError:
                raise ValueError("__") from None

        if isinstance(default, str):
            default = parse_duration(default)
        return self._get(key, default, convert, 'a duration like "30m" or "1h0m0s"')

    def addr(self, key: str, default: Any = _MISSING, *, default_port: int | None = None) -> Any:
        """A ``host:port`` (a bare host too when ``default_port`` is given)."""

        def convert(value: Any) -> NetAddr:
            if not isinstance(value, str):
                raise TypeError("__")
            return parse_addr(value, default_port)

        if isinstance(default, str):
            default = parse_addr(default, default_port)
        return self._get(key, default, convert, "host:port")

    def secret(self, key: str) -> Secret | None:
        """A secret string; the value itself never appears in an error."""
        self.read.add(key)
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(key, "expected a non-empty string")
        return Secret(value)

    def path_value(self, key: str, default: Any = _MISSING) -> Any:
        def convert(value: Any) -> Path:
            if not isinstance(value, str) or not value:
                raise TypeError("__")
            if "\x00" in value:
                raise ValueError("a file path cannot hold a NUL character")
            try:
                return Path(value).expanduser()
            except RuntimeError:  # "~someone" names no user here
                raise ValueError(f"cannot expand {value.split('/', 1)[0]}: no such user") from None

        if isinstance(default, str):
            default = Path(default)
        return self._get(key, default, convert, "a file path")

    # -- collections ----------------------------------------------------------------------------

    def strings(self, key: str, default: tuple[str, ...] = (), *, single_ok: bool = True) -> tuple[str, ...]:
        """A list of strings; a single string is accepted as a one-item list when ``single_ok``."""
        self.read.add(key)
        value = self.data.get(key)
        if value is None:
            return default
        if single_ok and isinstance(value, str):
            return (value,)
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of strings, got {show(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or isinstance(item, bool):
                raise self.error(f"{key}[{index}]", f"expected a string, got {show(item)}")
        return tuple(value)

    def addrs(self, key: str, *, default_port: int | None = None) -> tuple[NetAddr, ...]:
        out = []
        for index, item in enumerate(self.strings(key)):
            try:
                out.append(parse_addr(item, default_port))
            except ValueError as exc:
                raise self.error(f"{key}[{index}]", f"expected host:port, got {show(item)} ({exc})") from None
        return tuple(out)

    def labels(self, key: str) -> dict[str, str]:
        """A mapping of string keys to string values (numbers are taken as strings)."""
        self.read.add(key)
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected a mapping of strings, got {show(value)}")
        out: dict[str, str] = {}
        for name, item in value.items():
            if not isinstance(name, str | int) or isinstance(name, bool):
                raise self.error(key, f"expected string keys, got {show(name)}")
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                raise self.error(f"{key}.{name}", f"expected a string, got {show(item)}")
            out[str(name)] = str(item)
        return out

    def section(self, key: str) -> SectionReader:
        """A reader for the nested mapping at ``key`` (empty when absent)."""
        self.read.add(key)
        full = f"{self.path}.{key}" if self.path else key
        return SectionReader(self.data.get(key), full, origins=self.origins)

    def sections(self, key: str) -> list[SectionReader]:
        """Readers for a list of mappings at ``key`` (``key[0]``, ``key[1]`` ...)."""
        self.read.add(key)
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {show(value)}")
        full = f"{self.path}.{key}" if self.path else key
        return [SectionReader(item, f"{full}[{i}]", origins=self.origins) for i, item in enumerate(value)]

    def finish(self) -> None:
        """Raise for the first key nobody read, with a did-you-mean suggestion."""
        for key in self.data:
            if key not in self.read:
                choices = sorted(self.read)
                raise self.error(key, "unknown key" + did_you_mean(key, choices))
