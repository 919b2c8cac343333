"""teleport-web: the web UI the proxy serves on its HTTPS port (docs/web.md)."""
