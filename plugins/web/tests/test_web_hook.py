"""The ``teleport_web_routes`` hook: teleport-web's implementation, and the proxy calling it when
it builds its HTTPS app (a page of a plugin is served; without teleport-web, no ``/web`` pages)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from web_helpers import CLUSTER, running_cluster

from teleport_core import hookimpl
from teleport_core.plugins import make_plugins
from teleport_core.webui import WebProxy


class _Proxy:
    """Just what building the routes reads (no request is served)."""

    cluster_name = CLUSTER
    second_factor = "otp"


def test_hook_teleport_web_routes() -> None:
    """teleport-web (from its entry point) returns its pages and static files."""
    plugins = make_plugins()
    found = [route for routes in plugins.hook.teleport_web_routes(proxy=_Proxy()) for route in routes]
    paths = {getattr(route, "path", "") for route in found}
    assert {"/web/login", "/web/logout", "/web/cluster/{cluster}/resources", "/web/static"} <= paths


class HelloPlugin:
    @hookimpl
    def teleport_web_routes(self, proxy: WebProxy) -> list[Route]:
        async def hello(request: object) -> PlainTextResponse:
            return PlainTextResponse(f"hello from {proxy.cluster_name} at {proxy.public_web_addr()}")

        return [Route("/web/hello", hello)]


@pytest.mark.hook_call_site("teleport_web_routes")
def test_proxy_serves_the_pages_plugins_return(tmp_path: Path) -> None:
    """The proxy calls the hook with itself as a WebProxy and serves what each plugin returned,
    beside teleport-web's pages and its own JSON API."""
    with running_cluster(tmp_path, plugin_objects=[("hello", HelloPlugin())]) as cluster, cluster.client() as web:
        answer = web.get("/web/hello")
        assert answer.status_code == 200
        assert answer.text == f"hello from {CLUSTER} at {cluster.web}"
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")  # the proxy's headers
        assert web.get("/web/login").status_code == 200
        assert web.get("/v1/webapi/ping").json()["cluster_name"] == CLUSTER


def test_proxy_without_teleport_web_serves_no_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A headless proxy: /web and /web/login are 404, the JSON API answers as before."""
    monkeypatch.setenv("TELEPORT_DISABLE_PLUGINS", "web")
    with running_cluster(tmp_path) as cluster, cluster.client() as web:
        for path in ("/", "/web", "/web/login", f"/web/cluster/{CLUSTER}/resources", "/web/static/style.css"):
            assert web.get(path).status_code == 404, path
        assert web.get("/v1/webapi/ping").json()["cluster_name"] == CLUSTER
