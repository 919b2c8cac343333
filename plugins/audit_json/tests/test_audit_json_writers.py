"""Several processes appending to one day file (one server id): ``flock`` keeps their lines
whole, and each skips the uids another already stored (dedup reads the other's lines first)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import attrs
from audit_json_helpers import EVERYTHING, ROOT, stored
from audit_json_writer_child import own_events, shared_events

COUNT = 1500


def test_processes_sharing_a_day_file_store_each_event_once_and_whole(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    uri = f"file://{directory}?server_id=auth-1"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    names = ("a", "b", "c")
    children = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("audit_json_writer_child.py")), uri, name, str(COUNT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
        for name in names
    ]
    for child in children:  # all start appending at once
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0 and out.strip() == "done", err

    [path] = (directory / "auth-1").glob("*.log")
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    uids = Counter(json.loads(line)["uid"] for line in lines[:-1])  # every line whole JSON
    expected = {e.uid for e in shared_events(COUNT)} | {e.uid for n in names for e in own_events(n, COUNT)}
    assert set(uids) == expected
    assert [uid for uid, n in uids.items() if n > 1] == []  # a uid another process stored is skipped

    # the index a fresh sink reads (each writer's sidecar rows, caught up with the others') agrees with the log
    everything = stored(uri)
    assert len(everything) == len(expected)
    by_user = stored(uri, attrs.evolve(EVERYTHING, user="u3"))
    assert [e["uid"] for e in by_user] == [e["uid"] for e in everything if e["user"] == "u3"]
    assert len(by_user) > COUNT // 7
