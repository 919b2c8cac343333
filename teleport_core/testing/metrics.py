"""Reading metrics in tests: a scrape of ``/metrics`` as numbers, the metric names
docs/metrics.md lists, and the metric names a Grafana dashboard's queries use.

::

    before = scrape(cluster.diag_url)
    ...  # log in, run a session
    after = scrape(cluster.diag_url)
    assert total(after, "user_login_total") == total(before, "user_login_total") + 1
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

#: a scrape: (sample name, sorted label pairs) -> value
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                 "offset", "inf", "nan"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def parse(text: str) -> Scrape:
    """The samples of a Prometheus text exposition."""
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def scrape(diag_url: str, timeout: float = 10.0) -> Scrape:
    """The samples ``diag_url + "/metrics"`` serves now."""
    response = httpx.get(f"{diag_url}/metrics", timeout=timeout)
    response.raise_for_status()
    return parse(response.text)


def total(samples: Scrape, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(value for (sample, pairs), value in samples.items() if sample == name and wanted <= set(pairs))


def sample_names(samples: Scrape) -> set[str]:
    return {name for name, _ in samples}


def documented(page: Path) -> set[str]:
    """The metric names in the first column of the tables of docs/metrics.md (a cell may list
    several, separated by commas)."""
    names: set[str] = set()
    for line in page.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        names.update(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cell))
    return names


def expression_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, ``by (...)`` lists, ranges,
    strings, numbers and function names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function or a keyword
        if re.fullmatch(r"\d.*", word):
            continue
        names.add(word)
    return names


def _targets(panels: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    for panel in panels:
        yield from panel.get("targets", ())
        yield from _targets(panel.get("panels", ()))


def dashboard_expressions(path: Path) -> list[str]:
    """Every query expression of a Grafana dashboard (rows' panels included)."""
    dashboard = json.loads(path.read_text())
    return [str(target["expr"]) for target in _targets(dashboard["panels"])]


def base_name(sample: str, histograms: set[str]) -> str:
    """A histogram's family name for its ``_bucket``/``_count``/``_sum`` series; else ``sample``."""
    for suffix in _HISTOGRAM_SUFFIXES:
        if sample.endswith(suffix) and sample.removesuffix(suffix) in histograms:
            return sample.removesuffix(suffix)
    return sample
