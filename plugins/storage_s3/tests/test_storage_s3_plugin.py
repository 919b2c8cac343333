"""teleport-storage-s3 registers with the kernel under its distribution name."""

from teleport_core.plugins import make_plugins


def test_plugin_is_discovered_and_loads() -> None:
    plugins = make_plugins()
    info = {i.name: i for i in plugins.infos}["storage_s3"]
    assert info.distribution == "teleport-storage-s3"
    assert info.status == "loaded", info.error
