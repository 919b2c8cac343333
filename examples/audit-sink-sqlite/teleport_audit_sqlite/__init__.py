"""teleport-audit-sqlite: a teleport-py audit sink that stores events in SQLite."""
