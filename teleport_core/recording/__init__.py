"""Session recordings as the hosts that run sessions write them (nodes, and proxies recording for
agentless nodes): :mod:`.spool` keeps a live session's output on local disk and converts it to
asciicast v2 when the session ends; :mod:`.text` reads what a recording shows as plain text (for
the recordings text index auth keeps)."""
