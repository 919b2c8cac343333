"""What ``tsh status`` (and ``tsh login``, ``tsh request``) print about a profile: Teleport's
lines, or its ``--format=json|yaml`` record."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teleport_core.tsh.profile import Profile


def remaining(profile: Profile) -> str:
    left = profile.valid_before - dt.datetime.now(dt.UTC)
    if left.total_seconds() <= 0:
        return "EXPIRED"
    minutes = int(left.total_seconds()) // 60
    return f"valid for {minutes // 60}h{minutes % 60}m0s"


def status_record(profile: Profile) -> dict[str, Any]:
    """A profile as Teleport's ``tsh status --format=json`` shows it."""
    return {"profile_url": f"https://{profile.web_addr}", "username": profile.user, "cluster": profile.cluster,
            "roles": list(profile.roles), "logins": list(profile.logins),
            "valid_until": profile.valid_before.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "expired": profile.expired, "ssh_proxy": profile.ssh_addr, "insecure": profile.insecure,
            "active_requests": list(profile.active_requests)}


def print_status(profile: Profile, current: bool = True) -> None:
    print(f"{'>' if current else ' '} Profile URL:        https://{profile.web_addr}")
    print(f"  Logged in as:       {profile.user}")
    if profile.active_requests:
        print(f"  Active requests:    {', '.join(profile.active_requests)}")
    print(f"  Cluster:            {profile.cluster}")
    print(f"  Roles:              {', '.join(profile.roles)}")
    print(f"  Logins:             {', '.join(profile.logins)}")
    until = profile.valid_before.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
    print(f"  Valid until:        {until} [{remaining(profile)}]")
