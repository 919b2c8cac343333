"""teleport-node: SSH node service and session recording."""

__version__ = "0.1.0"
