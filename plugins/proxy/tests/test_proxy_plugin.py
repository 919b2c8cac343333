"""teleport-proxy registers with the kernel under its distribution name."""

from teleport_core.plugins import make_plugins


def test_plugin_is_discovered_and_loads():
    plugins = make_plugins()
    info = {i.name: i for i in plugins.infos}["proxy"]
    assert info.distribution == "teleport-proxy"
    assert info.status == "loaded", info.error


def test_tunnel_listen_addr_defaults_to_3024_and_is_validated():
    import pytest

    from teleport_core.config.load import parse_config
    from teleport_core.config.values import NetAddr
    from teleport_core.errors import ConfigError

    plugins = make_plugins()
    settings = parse_config({}, plugins).settings("proxy_service")
    assert settings.tunnel_listen_addr == NetAddr("0.0.0.0", 3024)
    assert settings.tunnel_public_addrs == ()
    data = {"proxy_service": {"tunnel_listen_addr": "127.0.0.1", "tunnel_public_addr": "proxy.example.com"}}
    settings = parse_config(data, plugins).settings("proxy_service")
    assert settings.tunnel_listen_addr == NetAddr("127.0.0.1", 3024)
    assert settings.tunnel_public_addrs == (NetAddr("proxy.example.com", 3024),)
    with pytest.raises(ConfigError) as err:
        parse_config({"proxy_service": {"tunnel_listen_addr": "127.0.0.1:notaport"}}, plugins)
    assert str(err.value).startswith("proxy_service.tunnel_listen_addr: expected host:port")
    with pytest.raises(ConfigError) as err:
        parse_config({"proxy_service": {"tunnel_public_addr": ["ok.example.com", "bad:port:x"]}}, plugins)
    assert str(err.value).startswith("proxy_service.tunnel_public_addr[1]: expected host:port")
