"""teleport-audit-json: JSON-lines audit log on disk (file://, stdout://)."""

__version__ = "0.1.0"
