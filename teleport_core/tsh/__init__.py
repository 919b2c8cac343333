"""tsh internals: the profile ``tsh login`` keeps, the proxy's web API, SSH through the proxy,
and ``ssh_config`` generation. ``teleport_core.cli.tsh`` imports these only when a command runs."""
