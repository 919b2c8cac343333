"""Identity and PKI: keys, certificates, identities on disk, CA pins, secrets, the server-role check."""
