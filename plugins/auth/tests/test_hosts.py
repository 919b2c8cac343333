"""The host registry against the real SQLite backend: name rules, the atomic nodename index
(two auth servers sharing a backend), roles of one host, removal freeing the name."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from teleport_auth.hosts import (
    HostConflict,
    HostNames,
    HostRegistry,
    InvalidHostName,
    UnknownHost,
    check_request,
    nodename_key,
)

from teleport_core.errors import AccessDenied, NotFound
from teleport_core.state.backend import Backend, utcnow

CLUSTER = "example.com"
UUID = "0f6f4c1e-3f9a-4a64-9d0c-6d2f0b9d5b71"
YEAR = dt.timedelta(days=365)


@pytest.mark.parametrize(("nodename", "principals", "dns", "ips", "message"), [
    ("", [], [], [], "nodename: a name must be a non-empty string"),
    ("web 1", [], [], [], 'nodename "web 1": wildcards (* ?), spaces, commas and control characters'),
    ("web\x07", [], [], [], "control characters"),
    ("web", ["*"], [], [], 'principal "*": wildcards'),
    ("web", ["db?"], [], [], 'principal "db?": wildcards'),
    ("web", ["a,b"], [], [], 'principal "a,b"'),
    ("web", [], ["*.example.com"], [], 'DNS name "*.example.com": wildcards'),
    ("web", [], ["teleport.cluster.local"], [], "teleport.cluster.local names the auth servers only"),
    ("web", [], ["Auth.Teleport.Cluster.Local."], [], "names the auth servers only"),
    ("teleport.cluster.local", [], [], [], "names the auth servers only"),
    ("web", [UUID], [], [], f'principal "{UUID}": looks like a host UUID'),
    ("web", [f"{UUID}.{CLUSTER}"], [], [], "looks like a host UUID"),
    (UUID, [], [], [], "looks like a host UUID"),
    ("web", [], [], ["not-an-ip"], 'ip_addresses: "not-an-ip" is not an IP address'),
    ("x" * 254, [], [], [], "longer than 253 characters"),
])
def test_names_a_host_may_not_ask_for(nodename, principals, dns, ips, message) -> None:
    with pytest.raises(InvalidHostName) as info:
        check_request(nodename, principals, dns, ips, CLUSTER)
    assert message in str(info.value)


def test_names_a_host_may_ask_for() -> None:
    names = check_request("web-1", ["web-1.corp.example.org", "203.0.113.5", "web-1.corp.example.org"],
                          ["web-1.corp.example.org", "localhost"], ["[::1]", "203.0.113.5"], CLUSTER)
    assert names == HostNames(("web-1.corp.example.org", "203.0.113.5"), ("web-1.corp.example.org", "localhost"),
                              ("::1", "203.0.113.5"))


def test_one_nodename_one_host_even_across_auth_servers(with_backend) -> None:
    async def body(backend: Backend) -> None:
        one, two = HostRegistry(backend, CLUSTER), HostRegistry(backend, CLUSTER)  # two auth servers
        expires = utcnow() + YEAR
        results = await asyncio.gather(
            *(registry.create("web-1", "Node", HostNames(), ("Node",), expires) for registry in (one, two) * 5),
            return_exceptions=True)
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1
        for refused in (r for r in results if isinstance(r, BaseException)):
            assert isinstance(refused, HostConflict)
            assert str(refused) == (f'nodename "web-1" is already registered by host {winners[0].uuid}; to free it, '
                                    f"remove that host with: tctl rm node/{winners[0].uuid}")
        assert [r.uuid for r in await one.list()] == [winners[0].uuid]
        # another host's names: its nodename (any case, with the cluster suffix) or recorded names
        await one.create("db-1", "Node", HostNames(("db.corp.example.org",)), ("Node",), expires)
        for nodename, names in (("WEB-1", HostNames()), ("x", HostNames(("web-1",))),
                                ("x", HostNames(dns_names=(f"web-1.{CLUSTER}",))),
                                ("db.corp.example.org", HostNames()), ("y", HostNames(("DB.corp.example.org",)))):
            with pytest.raises(HostConflict):
                await two.create(nodename, "Node", names, ("Node",), expires)
        # loopback names are everyone's
        await two.create("z", "Node", HostNames(("localhost", "127.0.0.1")), ("Node",), expires)
        # proxies share their public names (HA behind one load balancer name), not with nodes
        lb = HostNames(("proxy.example.org",), ("proxy.example.org",))
        await one.create("proxy-a", "Proxy", lb, ("Proxy",), expires)
        await two.create("proxy-b", "Proxy", lb, ("Proxy",), expires)
        with pytest.raises(HostConflict, match='the name "proxy.example.org" belongs to host'):
            await two.create("node-c", "Node", HostNames(("proxy.example.org",)), ("Node",), expires)
        with pytest.raises(HostConflict, match='the name "proxy-a" belongs to host'):
            await two.create("proxy-d", "Proxy", HostNames(dns_names=("proxy-a",)), ("Proxy",), expires)

    with_backend(body)


def test_roles_renewal_and_removal(with_backend) -> None:
    async def body(backend: Backend) -> None:
        hosts = HostRegistry(backend, CLUSTER)
        expires = utcnow() + YEAR
        node = await hosts.create("both-1", "Node", HostNames(("both.example.org",)), ("Node", "Proxy"), expires)
        with pytest.raises(InvalidHostName, match='every role of a host has its nodename'):
            await hosts.add_role(node.uuid, "Proxy", "other", HostNames(), expires)
        both = await hosts.add_role(node.uuid, "Proxy", "both-1", HostNames(dns_names=("both.example.org",)), expires)
        assert set(both.roles) == {"Node", "Proxy"}
        single = await hosts.create("single-1", "Node", HostNames(), ("Node",), expires)
        with pytest.raises(AccessDenied, match="joined with a token for Node, not Proxy"):
            await hosts.add_role(single.uuid, "Proxy", "single-1", HostNames(), expires)
        later = expires + dt.timedelta(days=1)
        renewed = await hosts.renewed(node.uuid, "Proxy", later)
        assert renewed.expires == later and renewed.roles["Proxy"].dns_names == ("both.example.org",)
        assert (await backend.get(nodename_key("both-1"))).expires == later
        with pytest.raises(UnknownHost, match="not registered with role Auth"):
            await hosts.renewed(node.uuid, "Auth", later)
        removed = await hosts.remove(node.uuid)
        assert removed is not None and removed.nodename == "both-1"
        with pytest.raises(NotFound):
            await backend.get(nodename_key("both-1"))
        with pytest.raises(UnknownHost, match="must join the cluster again with a token"):
            await hosts.renewed(node.uuid, "Node", later)
        assert await hosts.remove(node.uuid) is None
        again = await hosts.create("both-1", "Node", HostNames(), ("Node",), expires)
        assert again.uuid != node.uuid

    with_backend(body)


def test_an_auth_server_records_itself_and_keeps_its_roles(with_backend) -> None:
    async def body(backend: Backend) -> None:
        hosts = HostRegistry(backend, CLUSTER)
        expires = utcnow() + YEAR
        auth_names = HostNames(("teleport.cluster.local",), ("teleport.cluster.local",), ("127.0.0.1",))
        record = await hosts.record_self(UUID, "solo", "Auth", auth_names, expires)
        assert record.owns_nodename and record.roles == {"Auth": auth_names}
        await hosts.add_role(UUID, "Node", "solo", HostNames(), expires, need_token_role=False)
        again = await hosts.record_self(UUID, "solo", "Auth", auth_names, expires)  # a restart
        assert set(again.roles) == {"Auth", "Node"}
        with pytest.raises(HostConflict, match="already registered by host"):
            await hosts.create("solo", "Node", HostNames(), ("Node",), expires)
        # tctl rm node/<auth's uuid> drops the node role only: an auth server is not removed that way
        await hosts.remove(UUID)
        assert set((await hosts.get(UUID)).roles) == {"Auth"}
        # a second auth server with a taken nodename records itself without the name
        other = await hosts.record_self("1b3d6a8e-0c1f-4b9e-8f57-2e8f5a6c9d10", "solo", "Auth", auth_names, expires)
        assert not other.owns_nodename

    with_backend(body)
