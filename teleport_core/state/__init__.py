"""State: the cluster-state backend interface and the embedded backends, audit events and sinks,
the audit spool, session storage, the node inventory and its lookup."""
