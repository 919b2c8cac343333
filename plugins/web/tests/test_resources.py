"""The resources page over HTTP: only the nodes the user's roles allow, search (hostname, label
key=value, free text), label filter, paging, connect links with the allowed logins, bad queries."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from web_helpers import CLUSTER, LOGIN, WebCluster, running_cluster

from teleport_core.testing.waiting import wait_for

RESOURCES = f"/web/cluster/{CLUSTER}/resources"


def hostnames(html: str) -> list[str]:
    return re.findall(r'<td class="host">([^<]+)</td>', html)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebCluster]:
    """This module's own cluster (alice: dev, bob: no node access): the counts and exact lists
    below must not see the nodes other modules add to the shared one."""
    with running_cluster(tmp_path_factory.mktemp("web-resources"), second_factor="off") as c:
        c.signup("alice", ["dev"])
        c.signup("bob", ["nothing"])
        yield c


@pytest.fixture(scope="module")
def nodes(cluster: WebCluster) -> Iterator[dict[str, str]]:
    """60 test nodes (paging), 2 dev nodes, a prod node no user here may see, a tunnel node."""
    made = {}
    for i in range(60):
        made[f"res-{i:02d}"] = cluster.add_node(f"res-{i:02d}", {"env": "test", "rack": f"r{i % 3}"})
    made["dev-api"] = cluster.add_node("dev-api", {"env": "dev", "team": "payments"}, addr="10.1.2.3:3022")
    made["dev-db"] = cluster.add_node("dev-db", {"env": "dev", "team": "storage"})
    made["prod-db"] = cluster.add_node("prod-db", {"env": "prod"})
    made["tun-1"] = cluster.add_node("tun-1", {"env": "test", "rack": "tunnel"}, tunnel=True)
    with cluster.logged_in("alice") as web:  # the proxy may serve a list of a few seconds ago meanwhile
        wait_for(lambda: set(made) - {"prod-db"} <= set(hostnames(web.get(RESOURCES, params={"limit": "200"}).text)),
                 "the new nodes listed", interval=0.3)
    yield made


def test_first_page_and_paging(cluster: WebCluster, nodes: dict[str, str]) -> None:
    with cluster.logged_in("alice") as web:
        first = web.get(RESOURCES)
        assert first.status_code == 200
        names = hostnames(first.text)
        assert len(names) == 50 and names == sorted(names)
        assert "prod-db" not in first.text
        assert "63 servers, showing 1\u201350" in first.text
        more = re.search(r'<a href="([^"]+)" rel="next"', first.text)
        assert more and "start=50" in more.group(1)
        second = web.get(more.group(1).replace("&amp;", "&"))
        rest = hostnames(second.text)
        assert len(rest) == 13 and not set(rest) & set(names)
        assert set(names) | set(rest) == set(nodes) - {"prod-db"}
        assert 'rel="next"' not in second.text and 'rel="prev"' in second.text
        small = web.get(RESOURCES, params={"limit": "10", "start": "5"})
        assert hostnames(small.text) == sorted(set(nodes) - {"prod-db"})[5:15]


def test_row_shows_address_tunnel_labels_and_logins(cluster: WebCluster, nodes: dict[str, str]) -> None:
    with cluster.logged_in("alice") as web:
        page = web.get(RESOURCES, params={"search": "dev-api"}).text
        assert hostnames(page) == ["dev-api"]
        assert "<td>10.1.2.3:3022</td>" in page
        assert ">env=dev</a>" in page and ">team=payments</a>" in page
        link = f'/web/cluster/{CLUSTER}/console/node/{nodes["dev-api"]}/{LOGIN}'
        assert f'<a href="{link}">{LOGIN}</a>' in page
        tunnel = web.get(RESOURCES, params={"search": "tun-1"}).text
        assert "<td>tunnel</td>" in tunnel


def test_search_and_label_filter(cluster: WebCluster, nodes: dict[str, str]) -> None:
    with cluster.logged_in("alice") as web:
        def search(**params: str) -> list[str]:
            answer = web.get(RESOURCES, params=params)
            assert answer.status_code == 200, answer.text
            return hostnames(answer.text)

        assert search(search="env=dev") == ["dev-api", "dev-db"]
        assert search(search="PAYMENTS") == ["dev-api"]  # free text, any case, label values too
        assert search(search="env=dev storage") == ["dev-db"]  # every word must match
        assert search(search="10.1.2") == ["dev-api"]  # the address
        assert search(search=nodes["dev-db"][:13]) == ["dev-db"]  # the UUID
        assert search(search="prod") == []  # not visible to alice, whatever she searches
        assert len(search(label="rack=r1")) == 20
        assert search(label="rack=r1", search="res-0") == ["res-01", "res-04", "res-07"]
        empty = web.get(RESOURCES, params={"search": "nothing-like-this"})
        assert "No server matches." in empty.text
        # a label link filters on that label
        link = re.search(r'<a class="label" href="([^"]+)">rack=r2</a>', web.get(RESOURCES).text)
        assert link
        assert len(hostnames(web.get(link.group(1).replace("&amp;", "&")).text)) == 20


@pytest.mark.parametrize(("params", "message"), [
    ({"start": "-1"}, "start: expected 0 to"),
    ({"limit": "0"}, "limit: expected 1 to 200"),
    ({"limit": "lots"}, "limit: expected a number"),
    ({"label": "novalue"}, "label: expected key=value"),
])
def test_bad_query_is_a_clear_400(cluster: WebCluster, params: dict[str, str], message: str) -> None:
    with cluster.logged_in("alice") as web:
        answer = web.get(RESOURCES, params=params)
        assert answer.status_code == 400
        assert message in answer.text


def test_user_without_node_access_sees_none(cluster: WebCluster, nodes: dict[str, str]) -> None:
    with cluster.logged_in("bob") as web:
        page = web.get(RESOURCES)
        assert page.status_code == 200
        assert hostnames(page.text) == [] and "No servers you can access." in page.text
        assert "0 servers" in page.text


def test_other_cluster_is_a_404(cluster: WebCluster) -> None:
    with cluster.logged_in("alice") as web:
        answer = web.get("/web/cluster/other.example.com/resources")
        assert answer.status_code == 404 and "other.example.com" in answer.text
