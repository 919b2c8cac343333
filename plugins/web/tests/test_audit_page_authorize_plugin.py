"""An auditor's audit page with a ``teleport_authorize`` plugin loaded in auth: auth decides once what
a listing's items cannot change (the auditor's roles have no ``where`` rule on events), yet each
event still goes to the plugin, which can hide it (its deny wins over the roles' allow) or crash
(an error denies that event)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_audit_page import AUDIT, session_start, uids, write_events
from web_helpers import WebCluster, running_cluster

from teleport_core import hookimpl
from teleport_core.policy.access import AccessRequest, Decision
from teleport_core.state.audit import format_time

pytestmark = pytest.mark.e2e


class HidesMallory:
    """Denies listing the events of user ``mallory``; crashes on those of ``crash``."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    @hookimpl
    def teleport_authorize(self, request: AccessRequest) -> Decision | None:
        if request.kind != "event" or request.verb != "list" or not request.name:
            return None
        self.asked.append(request.name)
        who = request.attributes["event"]["user"]
        if who == "crash":
            raise RuntimeError("directory unreachable")
        return Decision.deny("mallory's events are sealed") if who == "mallory" else None


@pytest.fixture(scope="module")
def plugged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebCluster, HidesMallory]]:
    plugin = HidesMallory()
    with running_cluster(Path(tmp_path_factory.mktemp("audit-plugin")), plugin_objects=[("hides", plugin)]) as c:
        c.signup("ada", ["auditor"])
        yield c, plugin


def test_each_event_still_goes_to_the_authorize_plugin(plugged: tuple[WebCluster, HidesMallory]) -> None:
    cluster, plugin = plugged
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)).replace(microsecond=0)
    events = [session_start(who, "node-1", start + dt.timedelta(seconds=i))
              for i, who in enumerate(["ada", "mallory", "bob", "crash", "mallory", "carol"])]
    write_events(cluster, events)
    window: dict[str, Any] = {"range": "custom", "from": format_time(start),
                              "to": format_time(start + dt.timedelta(minutes=1))}
    with cluster.logged_in("ada") as web:
        page = web.get(AUDIT, params=window)
    assert page.status_code == 200, page.text
    shown = set(uids(page.text))
    assert shown == {e.uid for e in events if e.user in ("ada", "bob", "carol")}
    assert {e.uid for e in events} <= set(plugin.asked)  # every event was put to the plugin
