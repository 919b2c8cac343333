"""Sync (streaming) recording against async recording and none, beside OpenSSH ``sshd``, in one run.

    python bench/sync_recording.py [--size 256M] [--repeat 3] [--login USER] [--format text|json]

For each ``session_recording`` mode (``off``, ``node``: spooled on the node and uploaded at the
end, ``node-sync``: streamed to auth in chunks while the session runs) starts an auth server (in
this process, file session storage on the same disk) and a node (``teleport start``), plus
``sshd`` trusting the same user CA (bench/node_ssh.py's helpers). With the real OpenSSH client,
``ssh host cat FILE > /dev/null`` of a ``--size`` text file (so every byte is recorded) measures
the session's throughput (MiB/s, best of ``--repeat``, taken in turn on the node and on sshd:
noise only slows a transfer down). For the recorded modes it also measures how long after the
session's end its recording is complete at auth (``uploaded`` in the session record: for
``node`` the finalize and the upload, for ``node-sync`` the last chunks and the assembly).

Ratios: node/sshd (the cost of the node with that mode) and mode/off (the cost of recording).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_ssh import STEP_TIMEOUT, admin_call, cluster, parse_size, progress, ssh_cmd, sshd

MODES = ("off", "node", "node-sync")


def text_file(path: Path, size: int) -> None:
    """``size`` bytes of printable lines (what a terminal shows), not compressible to nothing."""
    import base64

    block = b"\n".join(base64.b64encode(os.urandom(57)) for _ in range(16384)) + b"\n"
    with open(path, "wb") as out:
        written = 0
        while written < size:
            data = block[: size - written]
            out.write(data)
            written += len(data)


def cat(target: dict[str, Any], key: Path, login: str, path: Path, size: int) -> tuple[float, float]:
    """(MiB/s of the session, the time it ended: time.time())."""
    argv = ssh_cmd(target, key, login, "", "cat", str(path))
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        result = subprocess.run(argv, stdout=sink, stderr=subprocess.PIPE, timeout=STEP_TIMEOUT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"cat failed: {result.stderr.decode()[-500:]}")
    return size / elapsed / (1 << 20), time.time()


def completed_after(auth_dir: Path, addr: str, ended: float, known: set[str], timeout: float = 600) -> float:
    """Seconds from ``ended`` until the newest session not in ``known`` is listed as uploaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = admin_call(auth_dir, addr, lambda a: a.list_recordings(limit=100))
        fresh = [s for s in sessions if s["sid"] not in known]
        if fresh and fresh[0]["recording"] == "uploaded":
            known.add(fresh[0]["sid"])
            return time.time() - ended
        time.sleep(0.05)
    raise TimeoutError("the recording never completed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256M", help="bytes the session prints (default 256M)")
    parser.add_argument("--repeat", type=int, default=3, help="sessions per figure (the best counts)")
    parser.add_argument("--login", default=os.environ.get("USER") or "root", help="OS login on both servers")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    size = parse_size(args.size)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-recording-") as tmp:
        work = Path(tmp)
        source = work / "output.txt"
        text_file(source, size)
        os.chmod(work, 0o755)
        os.chmod(source, 0o644)
        for mode in MODES:
            with cluster(work, mode, args.login) as node:
                addr, auth_dir = node["addr"], node["auth_dir"]
                known: set[str] = set()
                with sshd(work, node["user_ca"]) as openssh:
                    row: dict[str, Any] = {"recording": mode, "node_mibs": 0.0, "sshd_mibs": 0.0,
                                           "complete_after_s": []}
                    for turn in range(max(1, args.repeat)):
                        progress(f"{mode}: session {turn + 1}/{args.repeat} on the node")
                        mibs, ended = cat(node, node["key"], args.login, source, size)
                        row["node_mibs"] = max(row["node_mibs"], mibs)
                        if mode != "off":
                            row["complete_after_s"].append(round(completed_after(auth_dir, addr, ended, known), 2))
                        progress(f"{mode}: session {turn + 1}/{args.repeat} on sshd")
                        row["sshd_mibs"] = max(row["sshd_mibs"], cat(openssh, node["key"], args.login, source,
                                                                     size)[0])
                    row["node_sshd_ratio"] = row["node_mibs"] / row["sshd_mibs"]
                    rows.append(row)
    off = next(r for r in rows if r["recording"] == "off")
    for row in rows:
        row["vs_off"] = row["node_mibs"] / off["node_mibs"]
    if args.format == "json":
        print(json.dumps({"size": size, "repeat": args.repeat, "login": args.login, "results": rows}, indent=2))
        return 0
    print(f"cat of {args.size} in a session (best of {args.repeat}), login {args.login}")
    print(f"{'recording':<10} {'node MiB/s':>11} {'sshd MiB/s':>11} {'node/sshd':>10} {'vs off':>7}  "
          "recording complete after the session (s)")
    for row in rows:
        after = ", ".join(f"{s:.2f}" for s in row["complete_after_s"]) or "-"
        print(f"{row['recording']:<10} {row['node_mibs']:>11.1f} {row['sshd_mibs']:>11.1f} "
              f"{row['node_sshd_ratio']:>10.2f} {row['vs_off']:>7.2f}  {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
