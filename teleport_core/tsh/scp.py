"""``tsh scp``: files and directories to or from one node over SFTP, with OpenSSH's rules.

``tsh scp [-r] [-p] SOURCE... DEST``: the last argument is the destination. A remote path is
``[login@]node:path`` (``node:`` alone is the login's home). Either every source is local and
the destination remote (upload), or every source is on the same node, as the same login, and
the destination local (download). A destination that is an existing directory receives each
source under its own name; with several sources it must be one. Directories need ``-r``;
``-p`` keeps modification times and modes. Everything is checked before the first byte is
copied: missing sources, a directory without ``-r``, a destination that is not a directory."""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from teleport_core.errors import TeleportError

if TYPE_CHECKING:
    from teleport_core.tsh.profile import Profile


@attrs.frozen
class Remote:
    login: str
    host: str
    path: str

    @property
    def node(self) -> str:
        return f"{self.login}@{self.host}" if self.login else self.host


def parse_remote(spec: str) -> Remote | None:
    """``[login@]host:path`` -> :class:`Remote`; None for a local path (as OpenSSH: no colon, or a
    slash before the first colon, e.g. ``./a:b`` or ``/tmp/x:y``)."""
    colon = spec.find(":")
    if colon <= 0 or "/" in spec[:colon]:
        return None
    user_host, path = spec[:colon], spec[colon + 1:]
    login, _, host = user_host.rpartition("@")
    if not host:
        raise TeleportError(f"{spec!r}: expected [login@]node:path")
    return Remote(login, host, path or ".")


@attrs.frozen
class Plan:
    """What one ``tsh scp`` does: ``upload`` local ``sources`` to ``remote``'s path, or download
    ``sources`` (paths on ``remote``'s node) into ``local``."""

    upload: bool
    remote: Remote
    sources: tuple[str, ...]
    local: str = ""


def plan(paths: Sequence[str]) -> Plan:
    """The copy ``paths`` (sources then destination) asks for, or a :class:`TeleportError` saying
    what is wrong with them."""
    if len(paths) < 2:
        raise TeleportError("give at least one source and a destination: tsh scp SOURCE... DEST "
                            "([login@]node:path on one side)")
    *sources, dest = paths
    remote_dest = parse_remote(dest)
    remotes = [parse_remote(s) for s in sources]
    if remote_dest is not None:
        if any(r is not None for r in remotes):
            raise TeleportError("copying from one node to another is not supported: copy to a local folder first")
        missing = [s for s in sources if not os.path.lexists(s)]
        if missing:
            raise TeleportError(f"{missing[0]}: no such file or directory")
        return Plan(True, remote_dest, tuple(sources))
    if all(r is None for r in remotes):
        raise TeleportError("no remote path: one side must be [login@]node:path")
    if any(r is None for r in remotes):
        local = next(s for s, r in zip(sources, remotes, strict=True) if r is None)
        raise TeleportError(f"sources must all be on one node, or all local: {local!r} is local and "
                            f"{sources[0] if remotes[0] is not None else dest!r} is remote")
    hosts = {r.host for r in remotes if r is not None}
    logins = {r.login for r in remotes if r is not None and r.login}
    if len(hosts) > 1 or len(logins) > 1:
        named = ", ".join(sorted({r.node for r in remotes if r is not None}))
        raise TeleportError(f"sources on several nodes or logins ({named}): copy from one at a time")
    if len(sources) > 1 and not os.path.isdir(dest):
        raise TeleportError(f"{dest}: not a directory (copying several sources needs a directory)")
    first = remotes[0]
    assert first is not None
    return Plan(False, Remote(next(iter(logins), ""), first.host, first.path),
                tuple(r.path for r in remotes if r is not None), dest)


def with_login(job: Plan, default_login: str) -> Plan:
    """``job`` with the remote login filled in (the certificate's first login when none was given)."""
    if job.remote.login:
        return job
    if not default_login:
        raise TeleportError(f"no login for {job.remote.host} (login@node:path) and the certificate allows none")
    return attrs.evolve(job, remote=attrs.evolve(job.remote, login=default_login))


def check_local_sources(sources: Sequence[str], recursive: bool) -> None:
    for source in sources:
        if os.path.isdir(source) and not recursive:
            raise TeleportError(f"{source} is a directory (use -r)")


def _remote_mode(sftp: Any, where: Remote, path: str) -> int:
    try:
        return int(sftp.stat(path).st_mode or 0)
    except OSError as exc:
        raise TeleportError(f"{where.host}:{path}: {exc.strerror or exc}") from None


def _remote_is_dir(sftp: Any, path: str) -> bool:
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode or 0)
    except OSError:
        return False


def copy(profile: Profile, job: Plan, port: int, *, recursive: bool, preserve: bool) -> None:
    """Connect to the node through the proxy (as ``job.remote.login``) and carry out ``job``."""
    import paramiko

    from teleport_core.tsh.sshclient import WINDOW, connect_node

    proxy, node = connect_node(profile, job.remote.login, job.remote.host, port)
    try:
        sftp = paramiko.SFTPClient.from_transport(node, window_size=WINDOW, max_packet_size=32768)
        if sftp is None:
            raise TeleportError(f"{job.remote.host} refused the sftp subsystem")
        try:
            run(sftp, job, recursive=recursive, preserve=preserve)
        finally:
            sftp.close()
    finally:
        node.close()
        proxy.close()


def run(sftp: Any, job: Plan, *, recursive: bool, preserve: bool) -> None:
    """Carry out ``job`` over an open SFTP client (after checking every source and the destination)."""
    if job.upload:
        check_local_sources(job.sources, recursive)
        into_dir = _remote_is_dir(sftp, job.remote.path)
        if len(job.sources) > 1 and not into_dir:
            raise TeleportError(f"{job.remote.host}:{job.remote.path}: not a directory "
                                "(copying several sources needs a directory)")
        for source in job.sources:
            local = os.path.abspath(source)
            target = (posixpath.join(job.remote.path, os.path.basename(local.rstrip("/"))) if into_dir
                      else job.remote.path)
            _upload(sftp, local, target, preserve)
        return
    modes = [_remote_mode(sftp, job.remote, path) for path in job.sources]
    for path, mode in zip(job.sources, modes, strict=True):
        if stat.S_ISDIR(mode) and not recursive:
            raise TeleportError(f"{job.remote.host}:{path} is a directory (use -r)")
    into_dir = os.path.isdir(job.local)
    for path, mode in zip(job.sources, modes, strict=True):
        target = os.path.join(job.local, posixpath.basename(path.rstrip("/")) or ".") if into_dir else job.local
        _download(sftp, path, target, mode, preserve)


def _failed(what: str, exc: OSError) -> TeleportError:
    return TeleportError(f"{what}: {exc.strerror or exc}")


def _upload(sftp: Any, local: str, target: str, preserve: bool) -> None:
    info = os.stat(local)
    if not stat.S_ISDIR(info.st_mode):
        try:
            sftp.put(local, target)
            sftp.chmod(target, info.st_mode & 0o7777)
            if preserve:
                sftp.utime(target, (info.st_atime, info.st_mtime))
        except OSError as exc:
            raise _failed(f"copying {local} to {target}", exc) from None
        return
    if not _remote_is_dir(sftp, target):
        try:
            sftp.mkdir(target)
        except OSError as exc:
            raise _failed(f"creating the directory {target}", exc) from None
    for name in sorted(os.listdir(local)):
        child = os.path.join(local, name)
        if os.path.islink(child) and os.path.isdir(child):
            continue  # a link to a directory inside a tree is not followed (no loops)
        _upload(sftp, child, posixpath.join(target, name), preserve)
    if preserve:
        sftp.chmod(target, info.st_mode & 0o7777)
        sftp.utime(target, (info.st_atime, info.st_mtime))


def _download(sftp: Any, path: str, target: str, mode: int, preserve: bool) -> None:
    if not stat.S_ISDIR(mode):
        try:
            sftp.get(path, target)
        except OSError as exc:
            raise _failed(f"copying {path} to {target}", exc) from None
    else:
        os.makedirs(target, exist_ok=True)
        for entry in sorted(sftp.listdir_attr(path), key=lambda e: e.filename):
            _download(sftp, posixpath.join(path, entry.filename), os.path.join(target, entry.filename),
                      int(entry.st_mode or 0), preserve)
    if preserve:
        attrs_ = sftp.stat(path)
        os.chmod(target, (attrs_.st_mode or 0) & 0o7777)
        os.utime(target, (attrs_.st_atime, attrs_.st_mtime))
