"""Recordings searchable by their text: extraction speed, indexing and search latency.

    python bench/recording_search.py [--recordings 2000] [--text-kib 20] [--big-mib 256]

* Extraction (:func:`teleport_core.recording.text.cast_text`): a generated recording of coloured
  ``ls -l`` output (escape sequences, CRLF) read with the cap off (MB/s of asciicast read), and a
  ``--big-mib`` ``cat``-like recording read with the default cap (1 MiB of text: reading stops
  there), which is what auth spends on a huge recording.
* Index (the SQLite backend's FTS5 trigram index, through ``Backend.recording_index()``):
  ``--recordings`` recordings of ``--text-kib`` KiB of text each are put one by one (recordings
  per second), then searches time (p50, p99 of 50 each): a phrase in one recording, a phrase in
  every recording (limit 10,000), and the snippets of 50. The index file's size is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from teleport_core.recording.text import cast_text
from teleport_core.state.backends.sqlite import SqliteBackend
from teleport_core.state.backends.sqlite_index import INDEX_NAME

LINE = "\x1b[0m-rw-r--r-- 1 root root {n:>7} Jan  1 00:00 \x1b[01;34mfile{n}.conf\x1b[0m\r\n"


def write_cast(path: Path, mib: int, chunk: int = 64) -> int:
    """A recording of about ``mib`` MiB: events of ``chunk`` lines of coloured listing."""
    size = 0
    with open(path, "w") as out:
        out.write(json.dumps({"version": 2, "width": 120, "height": 30}) + "\n")
        n = 0
        t = 0.0
        while size < mib << 20:
            data = "".join(LINE.format(n=n + i) for i in range(chunk))
            n += chunk
            t += 0.01
            line = json.dumps([round(t, 6), "o", data]) + "\n"
            out.write(line)
            size += len(line)
    return size


def extraction(folder: Path, big_mib: int) -> None:
    path = folder / "listing.cast"
    size = write_cast(path, 32)
    start = time.perf_counter()
    text, truncated = cast_text(path, max_text=1 << 40)
    took = time.perf_counter() - start
    print(f"extraction, cap off: {size / 1e6:.1f} MB of asciicast -> {len(text) / 1e6:.1f} M characters in "
          f"{took:.2f} s ({size / 1e6 / took:.1f} MB/s)")
    big = folder / "big.cast"
    size = write_cast(big, big_mib, chunk=512)
    start = time.perf_counter()
    text, truncated = cast_text(big)
    took = time.perf_counter() - start
    print(f"extraction, default cap: {size / 1e6:.0f} MB recording -> {len(text) / 1e6:.2f} M characters "
          f"(truncated={truncated}) in {took:.2f} s")


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {statistics.median(values) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


async def index(folder: Path, recordings: int, text_kib: int) -> None:
    backend = await asyncio.to_thread(SqliteBackend.open_sync, folder / "backend")
    try:
        idx = backend.recording_index()
        words = [f"word{i}" for i in range(5000)]
        rng = random.Random(1)
        start = time.perf_counter()
        for n in range(recordings):
            body = []
            size = 0
            while size < text_kib << 10:
                line = f"user@host:~$ {' '.join(rng.choices(words, k=8))} common-phrase"
                body.append(line)
                size += len(line) + 1
            body.append(f"unique-{n}-marker")
            await idx.put(f"sid-{n}", "\n".join(body))
        took = time.perf_counter() - start
        print(f"index: {recordings} recordings of {text_kib} KiB text put in {took:.1f} s "
              f"({recordings / took:.0f}/s); file {(folder / 'backend' / INDEX_NAME).stat().st_size / 1e6:.0f} MB")
        for label, phrase, limit in (("one match", f"unique-{recordings // 2}-marker", 10_000),
                                     ("every recording matches", "common-phrase", 10_000)):
            times = []
            for _ in range(50):
                start = time.perf_counter()
                found = await idx.search(phrase, limit)
                times.append(time.perf_counter() - start)
            print(f"search, {label} ({len(found)} found): {percentiles(times)}")
        sids = [f"sid-{n}" for n in range(50)]
        times = []
        for _ in range(50):
            start = time.perf_counter()
            await idx.snippets("common-phrase", sids)
            times.append(time.perf_counter() - start)
        print(f"snippets of 50 recordings: {percentiles(times)}")
    finally:
        await backend.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=2000)
    parser.add_argument("--text-kib", type=int, default=20)
    parser.add_argument("--big-mib", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-recording-search-") as tmp:
        folder = Path(tmp)
        extraction(folder, args.big_mib)
        asyncio.run(index(folder, args.recordings, args.text_kib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
