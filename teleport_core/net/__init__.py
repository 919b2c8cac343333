"""Networking: the TLS server, diagnostics (/healthz, /readyz, /metrics), connection and HTTP
limits, byte-moving helpers."""
