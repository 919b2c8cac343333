"""The audit log page (docs/web.md, "Audit log"): time ranges, filters, cursor paging past
10,000 events, each event's JSON, CSV and JSON-lines exports of the filter, the user's rights
(``list``/``read`` on ``event``, ``where:`` rules) and clear 400s for bad queries.

Events are written straight into auth's audit log (the cluster's own sink), so the page reads
them through the real search API: recent ones for a few users and nodes, and a bulk of
:data:`BULK` events in a window of their own, days back, so no other test sees them."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import html
import io
import json
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from teleport_web.pages.audit import CSV_COLUMNS, csv_line
from web_helpers import CLUSTER, WebCluster

from teleport_core.errors import TeleportError
from teleport_core.state.audit import AuditEvent, format_time, new_event
from teleport_core.testing.waiting import wait_for

AUDIT = f"/web/cluster/{CLUSTER}/audit"
EXPORT = f"/web/cluster/{CLUSTER}/audit/export"
BULK = 10_050
NODES = ("audit-node-1", "audit-node-2")


class AuditData:
    """What the module's fixture wrote: the recent events, and the bulk window."""

    def __init__(self, recent: list[AuditEvent], bulk_since: dt.datetime, bulk_until: dt.datetime,
                 bulk_uids: list[str]) -> None:
        self.recent = recent
        self.bulk_since, self.bulk_until, self.bulk_uids = bulk_since, bulk_until, bulk_uids

    @property
    def bulk_range(self) -> dict[str, str]:
        return {"range": "custom", "from": format_time(self.bulk_since), "to": format_time(self.bulk_until)}


def write_events(cluster: WebCluster, events: list[AuditEvent]) -> None:
    """Store ``events`` in auth's audit log (its sinks group concurrent writes into one fsync)."""
    audit = cluster.handle.process.services["auth_service"].audit

    async def write() -> None:
        for start in range(0, len(events), 2000):
            await asyncio.gather(*(audit.emit(e) for e in events[start:start + 2000]))

    cluster.handle.call(write, timeout=300)


def session_start(user: str, node: str, when: dt.datetime, sid: str = "") -> AuditEvent:
    return new_event("session.start", when=when, user=user, login="root", sid=sid or str(uuid.uuid4()),
                     server_hostname=node, server_id=f"uuid-{node}", cluster_name=CLUSTER,
                     **{"addr.remote": "127.0.0.1:5555"})


_WRITTEN: dict[int, AuditData] = {}


@pytest.fixture(scope="module")
def data(cluster: WebCluster) -> AuditData:
    """The users and events of these tests, written once a cluster (the browser tests share them)."""
    if id(cluster) not in _WRITTEN:
        _WRITTEN[id(cluster)] = write_data(cluster)
    return _WRITTEN[id(cluster)]


def write_data(cluster: WebCluster) -> AuditData:
    cluster.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "own-events"},
                                 "spec": {"allow": {"rules": [{"resources": ["event"], "verbs": ["list", "read"],
                                                               "where": "equals(event.user, user.metadata.name)"}]}}})
    cluster.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "list-events"},
                                 "spec": {"allow": {"rules": [{"resources": ["event"], "verbs": ["list"]}]}}})
    cluster.signup("ada", ["auditor"])
    cluster.signup("wendy", ["own-events"])
    cluster.signup("lister", ["list-events"])
    now = dt.datetime.now(dt.UTC)
    recent = [session_start("ada", NODES[0], now - dt.timedelta(minutes=30)),
              session_start("wendy", NODES[1], now - dt.timedelta(minutes=29)),
              session_start("ada", NODES[1], now - dt.timedelta(minutes=28)),
              new_event("exec", when=now - dt.timedelta(minutes=27), user="wendy", login="=HYPERLINK(\"x\")",
                        server_hostname=NODES[0], server_id=f"uuid-{NODES[0]}", command="ls, -la \"x\"\nwho",
                        cluster_name=CLUSTER)]
    # the bulk: one event a second, hours long, ten days back (whole seconds: the window is exact)
    since = (now - dt.timedelta(days=10)).replace(minute=0, second=0, microsecond=0)
    bulk = [new_event("exec", when=since + dt.timedelta(seconds=i), user="bulk", login="root",
                      server_hostname=NODES[i % 2], server_id=f"uuid-{NODES[i % 2]}", command=f"echo {i}",
                      cluster_name=CLUSTER) for i in range(BULK)]
    write_events(cluster, recent + bulk)
    return AuditData(recent, since, since + dt.timedelta(seconds=BULK), [e.uid for e in bulk])


@pytest.fixture(scope="module")
def ada(cluster: WebCluster, data: AuditData) -> Iterator[httpx.Client]:
    with cluster.logged_in("ada") as web:
        yield web


def uids(html: str) -> list[str]:
    return re.findall(r'data-uid="([^"]+)"', html)


def types_of(html: str) -> list[str]:
    return re.findall(r'<tr class="event" data-event="([^"]+)"', html)


def next_link(html: str) -> str:
    found = re.search(r'<a href="([^"]+)" rel="next" id="next">', html)
    return found.group(1).replace("&amp;", "&") if found else ""


def every_page(web: httpx.Client, url: str) -> tuple[list[str], int]:
    """Follow the Next links from ``url``: every uid, and how many pages."""
    seen: list[str] = []
    pages = 0
    while url:
        answer = web.get(url)
        assert answer.status_code == 200, answer.text
        pages += 1
        seen += uids(answer.text)
        url = next_link(answer.text)
        if not url:
            assert 'id="end"' in answer.text
    return seen, pages


def search_all(cluster: WebCluster, **query: Any) -> list[dict[str, Any]]:
    """Every event of a search as the cluster admin (auth's identity), page by page."""
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        reply = cluster.call("search_events", limit=5000, cursor=cursor, **query)
        found += reply["events"]
        cursor = reply["next_cursor"]
        if not cursor:
            return found


def test_default_range_shows_recent_events_with_their_json(ada: httpx.Client, data: AuditData) -> None:
    answer = ada.get(AUDIT)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    shown = uids(answer.text)
    assert {e.uid for e in data.recent} <= set(shown)
    assert not set(data.bulk_uids) & set(shown)  # ten days back: outside the last 24 h
    assert "user.login" in types_of(answer.text)  # ada's own login, by the web
    # each event's JSON, escaped, in a <details>
    event = data.recent[3]
    row = answer.text.split(f'data-uid="{event.uid}"', 1)[1].split('<tr class="event"', 1)[0]
    pre = re.search(r"<pre>(.*?)</pre>", row, re.S)
    assert pre and "<details" in row
    assert json.loads(html.unescape(pre.group(1))) == event.to_dict()
    assert "&#34;x&#34;" in row or "&quot;x&quot;" in row  # the quotes were escaped, not markup


def test_filters_narrow(ada: httpx.Client, data: AuditData) -> None:
    def shown(**query: str) -> set[str]:
        answer = ada.get(AUDIT, params=query)
        assert answer.status_code == 200, answer.text
        return set(uids(answer.text))

    recent = {e.uid: e for e in data.recent}
    starts = ada.get(AUDIT, params={"type": "session.start"}).text
    assert set(types_of(starts)) == {"session.start"}
    assert {u for u, e in recent.items() if e.event == "session.start"} <= set(uids(starts))
    assert shown(type="session.start, exec") >= set(recent)
    assert shown(user="wendy", type="session.start,exec") == {u for u, e in recent.items() if e.user == "wendy"}
    assert shown(node=NODES[1]) == {u for u, e in recent.items() if e.fields["server_hostname"] == NODES[1]}
    assert shown(node=f"uuid-{NODES[0]}") == {u for u, e in recent.items()
                                             if e.fields["server_hostname"] == NODES[0]}
    one = data.recent[0]
    assert shown(sid=one.sid) == {one.uid}
    assert shown(user="ada", node=NODES[1], type="session.start") == {data.recent[2].uid}
    assert shown(user="nobody-at-all") == set()
    # a custom range: only the bulk's first minute
    first_minute = {"range": "custom", "from": format_time(data.bulk_since),
                    "to": format_time(data.bulk_since + dt.timedelta(minutes=1)), "limit": "100"}
    assert shown(**first_minute) == set(data.bulk_uids[:60])
    # datetime-local's format (no zone: UTC), as the form sends it
    local = data.bulk_since.strftime("%Y-%m-%dT%H:%M:%S")
    assert shown(**{**first_minute, "from": local}) == set(data.bulk_uids[:60])
    assert shown(range="1h") >= set(recent) and shown(range="7d") >= set(recent)
    assert not shown(range="30d", type="exec", user="bulk") ^ set(data.bulk_uids[:50])  # oldest first, 50 a page


def test_paging_forward_reaches_the_end_of_more_than_10000_events(ada: httpx.Client, data: AuditData) -> None:
    start = AUDIT + "?" + urllib.parse.urlencode({**data.bulk_range, "limit": "500"})
    seen, pages = every_page(ada, start)
    assert seen == data.bulk_uids  # every one, once, oldest first: nothing cut at 10,000
    assert pages == -(-BULK // 500)
    # with a filter, 50 a page (the default): the node's half, in order
    seen, pages = every_page(ada, AUDIT + "?" + urllib.parse.urlencode({**data.bulk_range, "node": NODES[1],
                                                                         "limit": "500"}))
    assert seen == data.bulk_uids[1::2]
    first = ada.get(AUDIT, params=data.bulk_range).text
    assert len(uids(first)) == 50 and "page 2" in ada.get(next_link(first)).text


def test_a_preset_range_pins_its_end_while_paging(ada: httpx.Client, data: AuditData) -> None:
    answer = ada.get(AUDIT, params={"range": "30d", "user": "bulk"})
    follow = next_link(answer.text)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(follow).query)
    assert query["range"] == ["30d"] and query["at"] and query["cursor"] and query["page"] == ["2"]
    second = ada.get(follow)
    assert uids(second.text) == data.bulk_uids[50:100]
    assert '<option value="30d" selected>' in second.text


def test_export_csv_has_the_rows_of_the_filter(ada: httpx.Client, cluster: WebCluster, data: AuditData) -> None:
    query = {**data.bulk_range, "node": NODES[0], "type": "exec"}
    answer = ada.get(EXPORT, params={**query, "format": "csv"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["transfer-encoding"] == "chunked"  # streamed
    disposition = answer.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="audit-web.example.com-') and disposition.endswith('.csv"')
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    expected = search_all(cluster, since=query["from"], until=query["to"], type=["exec"], node=NODES[0])
    assert len(rows) == len(expected) == BULK // 2
    assert [r["uid"] for r in rows] == [e["uid"] for e in expected] == data.bulk_uids[0::2]
    assert [json.loads(r["json"]) for r in rows] == expected
    assert list(rows[0]) == list(CSV_COLUMNS) and rows[0]["server_hostname"] == NODES[0]


def test_export_json_lines_parse(ada: httpx.Client, data: AuditData) -> None:
    answer = ada.get(EXPORT, params={**data.bulk_range, "format": "jsonl"})
    assert answer.status_code == 200
    assert answer.headers["content-disposition"].endswith('.jsonl"')
    lines = answer.text.splitlines()
    assert [json.loads(line)["uid"] for line in lines] == data.bulk_uids
    # the recent events: a quoted, multi-line command survives
    recent = ada.get(EXPORT, params={"format": "jsonl", "user": "wendy", "type": "exec"}).text.splitlines()
    assert [json.loads(line) for line in recent] == [data.recent[3].to_dict()]


def test_csv_cells_that_look_like_formulas_are_quoted(ada: httpx.Client, data: AuditData) -> None:
    event = data.recent[3].to_dict()
    [row] = list(csv.DictReader(io.StringIO(ada.get(EXPORT, params={"format": "csv", "user": "wendy",
                                                                       "type": "exec"}).text)))
    assert row["login"] == "'=HYPERLINK(\"x\")"  # a spreadsheet shows it, never runs it
    assert json.loads(row["json"]) == event  # the JSON column keeps the value as it is
    assert csv_line({"user": "-1+2", "event": "x"}).split(",")[3] == "'-1+2"


def test_where_rule_shows_only_the_events_it_allows(cluster: WebCluster, data: AuditData) -> None:
    with cluster.logged_in("wendy") as web:
        answer = web.get(AUDIT)
        assert answer.status_code == 200, answer.text
        shown = set(uids(answer.text))
        assert {e.uid for e in data.recent if e.user == "wendy"} <= shown
        assert not {e.uid for e in data.recent if e.user != "wendy"} & shown
        lines = web.get(EXPORT, params={"format": "jsonl", **data.bulk_range}).text
        assert lines == ""  # the bulk is user "bulk": none of it is hers
        # a page the where: rule empties still offers the next page (the search's cursor)
        page = web.get(AUDIT, params={**data.bulk_range, "limit": "500"})
        assert uids(page.text) == [] and next_link(page.text)


@pytest.mark.parametrize("user", ["bob", "lister"])
def test_a_user_without_read_on_event_is_refused_and_audited(cluster: WebCluster, data: AuditData,
                                                               user: str) -> None:
    with cluster.logged_in(user) as web:
        for path in (AUDIT, EXPORT + "?format=csv"):
            answer = web.get(path)
            assert answer.status_code == 403
            assert "your roles do not allow reading audit events (read on event)" in answer.text
        nav = web.get(f"/web/cluster/{CLUSTER}/resources").text
        assert ("Audit log" in nav) is (user == "lister")  # the link needs list on event

    def refusals() -> list[dict[str, Any]]:
        return [e for e in cluster.events("auth", user=user) if e.get("path") in (AUDIT, EXPORT)]

    wait_for(lambda: {e["path"] for e in refusals()} == {AUDIT, EXPORT}, "the refusals audited", timeout=60)
    assert all(e["code"] == "T3007W" and e["client"] == "web" for e in refusals())


@pytest.mark.parametrize(("query", "message"), [
    ({"range": "2w"}, "range: expected one of 1h, 24h, 7d, 30d or custom, got &#39;2w&#39;"),
    ({"range": "custom", "from": "yesterday"}, "from: expected a time like"),
    ({"range": "custom", "to": "2026-13-45T00:00"}, "to: expected a time like"),
    ({"range": "24h", "at": "soon"}, "at: expected a time like"),
    ({"range": "custom", "from": "2026-02-01T00:00", "to": "2026-01-01T00:00"}, "start must be before its end"),
    ({"type": "session.start,<b>"}, "is not an event type"),
    ({"user": "a\x01b"}, "user: expected at most 253 characters without control characters"),
    ({"node": "n" * 300}, "node: expected at most 253 characters"),
    ({"limit": "0"}, "limit: expected 1 to 500"),
    ({"limit": "many"}, "limit: expected a number"),
    ({"page": "-1"}, "page: expected 1 to"),
    ({"cursor": "not-a-cursor!"}, "invalid audit search cursor"),
    ({"cursor": "x" * 5000}, "cursor: not a cursor of this audit log: start from the first page"),
    ({"type": ",".join(f"t{i}" for i in range(65))}, "type: at most 64 event types"),
])
def test_bad_queries_get_a_clear_400(ada: httpx.Client, query: dict[str, str], message: str) -> None:
    answer = ada.get(AUDIT, params=query)
    assert answer.status_code == 400, answer.text
    assert message in answer.text, answer.text


@pytest.mark.parametrize(("query", "message"), [
    ({}, "format: expected csv or jsonl, got &#39;&#39;"),
    ({"format": "xml"}, "format: expected csv or jsonl, got &#39;xml&#39;"),
    ({"format": "csv", "range": "forever"}, "range: expected one of"),
])
def test_bad_exports_get_a_clear_400(ada: httpx.Client, query: dict[str, str], message: str) -> None:
    answer = ada.get(EXPORT, params=query)
    assert answer.status_code == 400 and message in answer.text, answer.text


def test_the_auth_api_node_filter(cluster: WebCluster, data: AuditData) -> None:
    found = search_all(cluster, since=format_time(data.bulk_since), until=format_time(data.bulk_until),
                       node=f"uuid-{NODES[1]}")
    assert [e["uid"] for e in found] == data.bulk_uids[1::2]
    with pytest.raises(TeleportError, match="node"):
        cluster.call("search_events", node="a\x01b")
    with pytest.raises(TeleportError, match="node"):
        cluster.call("search_events", node="n" * 300)
