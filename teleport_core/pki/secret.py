"""A wrapper for secrets (passwords, tokens, OTP codes) that never prints its value."""

from __future__ import annotations

import hmac

import attrs


@attrs.frozen(repr=False, eq=False)
class Secret:
    """Holds a secret string. ``repr``/``str`` show ``Secret(***)``; compare with :meth:`matches`."""

    _value: str

    def reveal(self) -> str:
        """The secret itself: call only where it is used, never to log or print it."""
        return self._value

    def matches(self, other: str | Secret) -> bool:
        """Constant-time comparison with another secret or string."""
        theirs = other.reveal() if isinstance(other, Secret) else other
        return hmac.compare_digest(self._value.encode(), theirs.encode())

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__
