"""teleport-proxy: proxy service: web API, SSH proxy, reverse tunnels."""

__version__ = "0.1.0"
