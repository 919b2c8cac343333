"""``auth_service.session_recording``: Teleport's values are accepted (``proxy``, ``proxy-sync`` among them),
anything else is refused with one clear line naming the key and the choices."""

from __future__ import annotations

import pytest
import yaml

from teleport_core.config.load import Flags, parse_config
from teleport_core.errors import ConfigError
from teleport_core.plugins import make_plugins


def parse(recording: str) -> object:
    text = f"auth_service:\n  cluster_name: example.com\n  session_recording: {recording}\n"
    return parse_config(yaml.safe_load(text), make_plugins(), Flags())


@pytest.mark.parametrize("mode", ["proxy", "proxy-sync"])
def test_proxy_is_a_recording_mode(mode: str) -> None:
    config = parse(mode)
    assert config.settings("auth_service").session_recording == mode  # type: ignore[attr-defined]


def test_an_unknown_mode_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        parse("proxy-everything")
    message = str(err.value)
    assert "session_recording" in message and "proxy-everything" in message and "proxy" in message
