"""The cluster of the access request page tests: alice and carol (role ``requester``: nodes
``env=dev``, may request ``dba`` and ``ops`` with a reason for 2 hours at most, ``bob`` suggested), bob (``approver``: reviews
requests for ``dba``), erin (``brief``: may request ``dba`` for 15 seconds), and nodes ``req-dev-1`` (``env=dev``) and ``req-prod-1`` (``env=prod``,
which only ``dba`` reaches)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
from web_helpers import CLUSTER, WebCluster, running_cluster

REQUESTS = f"/web/cluster/{CLUSTER}/requests"
RESOURCES = f"/web/cluster/{CLUSTER}/resources"
PROMPT = "Name the ticket"

ROLES = [
    {"kind": "role", "version": "v5", "metadata": {"name": "requester"},
     "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"env": ["dev"]},
                        "request": {"roles": ["dba", "ops"], "suggested_reviewers": ["bob"],
                                    "max_duration": "2h"}},
              "options": {"request_access": "reason", "request_prompt": PROMPT}}},
    {"kind": "role", "version": "v5", "metadata": {"name": "brief"},
     "spec": {"allow": {"logins": ["{{internal.logins}}"], "request": {"roles": ["dba"], "max_duration": "15s"}}}},
    {"kind": "role", "version": "v5", "metadata": {"name": "dba"},
     "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"env": ["prod"]}}}},
    {"kind": "role", "version": "v5", "metadata": {"name": "ops"},
     "spec": {"allow": {"logins": ["{{internal.logins}}"]}}},
    {"kind": "role", "version": "v5", "metadata": {"name": "approver"},
     "spec": {"allow": {"logins": ["{{internal.logins}}"], "review_requests": {"roles": ["dba"]}}}},
]


def requests_cluster(root: Path) -> Iterator[WebCluster]:
    with running_cluster(root, second_factor="off") as c:
        for role in ROLES:
            c.call("upsert_role", role)
        c.signup("alice", ["requester"])
        c.signup("carol", ["requester"])
        c.signup("bob", ["approver"])
        c.signup("erin", ["brief"])
        c.add_node("req-dev-1", {"env": "dev"})
        c.add_node("req-prod-1", {"env": "prod"})
        yield c


def token(text: str) -> str:
    """The CSRF token a page carries."""
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', text)
    assert found, text
    return found.group(1)


def create(web: httpx.Client, roles: list[str], reason: str = "ticket OPS-1", reviewers: str = "") -> httpx.Response:
    """Post the new request form (with the session's CSRF token)."""
    form = {"csrf_token": token(web.get(f"{REQUESTS}/new").text), "reason": reason, "reviewers": reviewers,
            **{f"role:{r}": "on" for r in roles}}
    return web.post(f"{REQUESTS}/new", data=form)


def created_id(answer: httpx.Response) -> str:
    """The request ID a successful create redirected to."""
    assert answer.status_code == 303, answer.text
    found = re.fullmatch(rf"{REQUESTS}/([0-9a-f-]{{36}})", answer.headers["location"])
    assert found, answer.headers["location"]
    return found.group(1)


def post(web: httpx.Client, path: str, **form: str) -> httpx.Response:
    """A form POST carrying the session's CSRF token (read from the request list)."""
    return web.post(path, data={"csrf_token": token(web.get(REQUESTS).text), **form})
