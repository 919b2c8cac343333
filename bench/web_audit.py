"""The audit log page (docs/web.md, "Audit log") on a bulk of events: the first page, paging
through every event with the cursor, and both exports.

    python bench/web_audit.py [--events 10050] [--format text|json]

One teleport process runs auth and the proxy (with teleport-web) on 127.0.0.1 (the web tests'
cluster: plugins/web/tests/web_helpers.py). ``--events`` exec events, one a second, ten days
back, are written straight into auth's audit log (as the tests do); a user with the ``auditor``
role logs in through ``/web/login`` and then, over HTTPS with its session cookie:

* **first_page_ms** / **first_page_kb**: the first page of the range (50 events, each with its
  JSON) and its size; **first_page_500_ms**: the same with ``limit=500``;
* **all_pages_500_s**: every event by following *Next* at 500 a page (the cursor);
* **export_csv_s** / **export_jsonl_s** (and their MB): the whole filter downloaded;
* **api_pages_500_s**: every event through auth's ``GET /v1/events`` alone (the admin identity,
  500 a page, the cursor), what the web page calls, without the page around it.

Each of the last three also as the process's CPU seconds (``*_cpu_s``: auth, the proxy and the
bench's client share this one process), the figure that holds on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "web" / "tests"))

from test_audit_page import AUDIT, EXPORT, every_page, write_events
from web_helpers import CLUSTER, WebCluster, running_cluster

from teleport_core.state.audit import format_time, new_event


def run(count: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder, running_cluster(Path(folder)) as cluster:
        cluster.signup("auditor-bench", ["auditor"])
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=10)).replace(minute=0, second=0, microsecond=0)
        events = [new_event("exec", when=since + dt.timedelta(seconds=i), user="bulk", login="root",
                            server_hostname=f"node-{i % 4}", command=f"echo {i}", cluster_name=CLUSTER)
                  for i in range(count)]
        started = time.perf_counter()
        write_events(cluster, events)
        out["write_s"] = time.perf_counter() - started
        window = {"range": "custom", "from": format_time(since),
                  "to": format_time(since + dt.timedelta(seconds=count))}
        with cluster.logged_in("auditor-bench") as web:
            web.get(AUDIT)  # warm: templates, the sink's day index
            for limit, key in (("50", "first_page"), ("500", "first_page_500")):
                started = time.perf_counter()
                answer = web.get(AUDIT, params={**window, "limit": limit})
                out[f"{key}_ms"] = (time.perf_counter() - started) * 1000
                out[f"{key}_kb"] = len(answer.content) / 1024
            started, cpu = time.perf_counter(), time.process_time()
            seen, pages = every_page(web, AUDIT + "?" + urllib.parse.urlencode({**window, "limit": "500"}))
            out["all_pages_500_s"] = time.perf_counter() - started
            out["all_pages_500_cpu_s"] = time.process_time() - cpu
            out["pages"] = pages
            assert len(seen) == count, (len(seen), count)
            for kind in ("csv", "jsonl"):
                started, cpu = time.perf_counter(), time.process_time()
                answer = web.get(EXPORT, params={**window, "format": kind})
                out[f"export_{kind}_s"] = time.perf_counter() - started
                out[f"export_{kind}_cpu_s"] = time.process_time() - cpu
                out[f"export_{kind}_mb"] = len(answer.content) / 1e6
                lines = len(answer.text.splitlines())
                assert lines == count + (kind == "csv"), (kind, lines)
        started, cpu = time.perf_counter(), time.process_time()
        assert asyncio.run(api_pages(cluster, window["from"], window["to"])) == count
        out["api_pages_500_s"] = time.perf_counter() - started
        out["api_pages_500_cpu_s"] = time.process_time() - cpu
    return out


async def api_pages(cluster: WebCluster, since: str, until: str) -> int:
    """Events paged through ``GET /v1/events``, 500 a page."""
    count, cursor = 0, ""
    async with cluster.admin() as admin:
        while True:
            page = await admin.search_events(since=since, until=until, limit=500, cursor=cursor)
            count, cursor = count + len(page["events"]), page["next_cursor"]
            if not cursor:
                return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_050, help="events in the bulk (default 10050)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events: expected a positive number")
    figures = run(args.events)
    if args.format == "json":
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
        return
    print(f"{args.events} events written in {figures['write_s']:.2f} s")
    print(f"first page (50):  {figures['first_page_ms']:.0f} ms, {figures['first_page_kb']:.0f} kB")
    print(f"first page (500): {figures['first_page_500_ms']:.0f} ms, {figures['first_page_500_kb']:.0f} kB")
    print(f"every event, {figures['pages']:.0f} pages of 500: {figures['all_pages_500_s']:.2f} s "
          f"(CPU {figures['all_pages_500_cpu_s']:.2f} s)")
    print(f"export CSV:        {figures['export_csv_s']:.2f} s (CPU {figures['export_csv_cpu_s']:.2f} s), "
          f"{figures['export_csv_mb']:.1f} MB")
    print(f"export JSON lines: {figures['export_jsonl_s']:.2f} s (CPU {figures['export_jsonl_cpu_s']:.2f} s), "
          f"{figures['export_jsonl_mb']:.1f} MB")
    print(f"GET /v1/events, every event 500 a page: {figures['api_pages_500_s']:.2f} s "
          f"(CPU {figures['api_pages_500_cpu_s']:.2f} s)")


if __name__ == "__main__":
    main()
