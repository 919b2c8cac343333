"""teleport-auth: auth service: certificate authorities, users, roles, tokens, auth API."""

__version__ = "0.1.0"
