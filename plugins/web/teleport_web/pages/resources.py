"""``/web/cluster/{cluster}/resources``: the nodes the user's roles let them see, with their
allowed logins; searched, filtered and paged on the server (RFD 55: never the whole inventory).

Query: ``search`` (words; all must match: ``key=value`` a label, anything else a case-blind
substring of the hostname, address, UUID or a label), ``label`` (``key=value``, exact), ``start``
(offset) and ``limit`` (page size, default 50, at most 200).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any

import attrs
from starlette.responses import Response
from starlette.routing import BaseRoute

from teleport_core.errors import TeleportError
from teleport_core.state.nodes import NodeInfo
from teleport_web.framework import Page, Web, query_int

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_SEARCH = 256


def _pair(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise TeleportError(f"{what}: expected key=value, got {text[:40]!r}")
    return key.strip(), value.strip()


def matches(node: NodeInfo, words: Sequence[str], label: tuple[str, str] | None) -> bool:
    """Whether ``node`` has ``label`` and every word of a search."""
    labels = node.labels
    if label is not None and labels.get(label[0]) != label[1]:
        return False
    for word in words:
        if "=" in word:
            key, _, value = word.partition("=")
            if labels.get(key) != value:
                return False
            continue
        low = word.lower()
        if not (low in node.nodename.lower() or low in node.addr.lower() or low in node.uuid.lower()
                or any(low in k.lower() or low in v.lower() for k, v in labels.items())):
            return False
    return True


@attrs.frozen
class Row:
    node: NodeInfo
    labels: list[tuple[str, str]]
    label_links: list[str]
    logins: list[tuple[str, str]]  # (login, console URL)


async def resources(page: Page) -> Response:
    assert page.session is not None
    params = page.request.query_params
    search = params.get("search", "")[:MAX_SEARCH]
    label_text = params.get("label", "")[:MAX_SEARCH]
    try:
        start = query_int(params, "start", 0, 0, 10**9)
        limit = query_int(params, "limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        label = _pair(label_text, "label") if label_text else None
    except TeleportError as exc:
        return page.error(400, str(exc))
    words = search.split()
    nodes = await page.proxy.nodes(page.session)
    found = [n for n in nodes if matches(n, words, label)] if words or label else nodes
    found = sorted(found, key=lambda n: (n.nodename, n.uuid))
    shown = found[start:start + limit]
    base = page.url("resources")

    def link(**changes: Any) -> str:
        query = {"search": search, "label": label_text, "start": str(start), "limit": str(limit)}
        query.update({k: str(v) for k, v in changes.items()})
        kept = {k: v for k, v in query.items() if v and not (k == "start" and v == "0")
                and not (k == "limit" and v == str(PAGE_SIZE))}
        return base + ("?" + urllib.parse.urlencode(kept) if kept else "")

    rows = []
    for node in shown:
        pairs = sorted(node.labels.items())
        console = [(login, page.url(f"console/node/{urllib.parse.quote(node.uuid, safe='')}/"
                                    f"{urllib.parse.quote(login, safe='')}"))
                   for login in page.proxy.logins_for(page.session, node)]
        rows.append(Row(node, pairs, [link(label=f"{k}={v}", start=0) for k, v in pairs], console))
    return page.render(
        "resources.html", nav="resources", rows=rows, total=len(found), first=start + 1 if shown else 0,
        last=start + len(shown), search=search, label=label_text,
        prev_url=link(start=max(0, start - limit)) if start > 0 else "",
        next_url=link(start=start + limit) if start + limit < len(found) else "")


def routes(web: Web) -> list[BaseRoute]:
    return [web.page("/web/cluster/{cluster}/resources", resources)]
