"""Access control: access requests and decisions (and the one function that makes them), roles, locks."""
