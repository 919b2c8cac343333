"""Command-line entry points (``teleport``, ``tctl``, ``tsh``); each imports lazily."""
