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


def test_configure_public_addr_sets_the_proxy_address(tmp_path):
    """``teleport configure --public-addr`` becomes the proxy's ``public_addr``: what invite links and
    ``tsh login`` name (the quick start passes 127.0.0.1:3080, not the machine's hostname)."""
    from teleport_core.cli.teleport import main
    from teleport_core.config.load import load_config

    path = tmp_path / "teleport.yaml"
    assert main(["configure", "--data-dir", str(tmp_path / "data"), "--public-addr", "127.0.0.1",
                 "-o", str(path)]) == 0
    config = load_config(path, make_plugins())
    assert [str(a) for a in config.settings("proxy_service").public_addrs] == ["127.0.0.1:3080"]
    other = tmp_path / "other.yaml"
    assert main(["configure", "--data-dir", str(tmp_path / "data"), "-o", str(other)]) == 0
    assert "\n  # public_addr: proxy.example.com:3080\n" in other.read_text()
    assert load_config(other, make_plugins()).settings("proxy_service").public_addrs == ()


def test_configure_bad_public_addr_is_named(capsys):
    from teleport_core.cli.teleport import main

    assert main(["configure", "--public-addr", "[::1"]) == 1
    assert capsys.readouterr().err.strip() == "ERROR: --public-addr: unclosed '['"
