"""teleport-node registers with the kernel under its distribution name."""

from teleport_core.plugins import make_plugins


def test_plugin_is_discovered_and_loads():
    plugins = make_plugins()
    info = {i.name: i for i in plugins.infos}["node"]
    assert info.distribution == "teleport-node"
    assert info.status == "loaded", info.error
