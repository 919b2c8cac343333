"""One-time codes for tests that log in through auth's second factor (TOTP, RFC 6238)."""

from __future__ import annotations

import time
from typing import Protocol


class TOTP(Protocol):
    """What a test needs of a TOTP generator (``pyotp.TOTP``: the auth plugin's dependency)."""

    def now(self) -> str: ...

    def at(self, for_time: float) -> str: ...


def fresh_code(totp: TOTP, used: set[str]) -> str:
    """A code not in ``used`` (auth accepts each code once), added to it: this step's, else the next
    step's (auth accepts one step of skew), else wait for the next step."""
    while True:
        for code in (totp.now(), totp.at(time.time() + 30)):
            if code not in used:
                used.add(code)
                return code
        time.sleep(1)
