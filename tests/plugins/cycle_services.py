"""Three services whose ``after`` lists form a cycle: cycle_a -> cycle_c -> cycle_b -> cycle_a."""

from __future__ import annotations

from typing import Any

from teleport_core import hookimpl
from teleport_core.config.reader import SectionReader
from teleport_core.specs import ServiceSpec

AFTER = {"cycle_a": "cycle_c", "cycle_b": "cycle_a", "cycle_c": "cycle_b"}


def factory(ctx: Any) -> Any:
    raise AssertionError("a service in a dependency cycle must never be created")


@hookimpl
def teleport_services() -> list[ServiceSpec]:
    return [
        ServiceSpec(section=name, role=name, factory="tests.plugins.cycle_services:factory", after=(after,))
        for name, after in AFTER.items()
    ]


@hookimpl
def teleport_config_section(section: str, reader: SectionReader) -> dict[str, Any] | None:
    return {} if section in AFTER else None
