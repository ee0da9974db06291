"""What the metrics tests share: DESIGN's series, `/metrics` text parsed with prometheus-client's own parser,
the monitoring files in docs/, and where Debian's Prometheus tools are (with the skips that say so)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.skips import explained_skip

SERIES = {
    "montra_webhooks_received": "counter",
    "montra_webhooks_ack_seconds": "histogram",
    "montra_group_commit_batch_size": "histogram",
    "montra_handler_tries": "counter",
    "montra_handler_seconds": "histogram",
    "montra_runs": "gauge",
    "montra_oldest_due_run_seconds": "gauge",
    "montra_stream_clients": "gauge",
    "montra_stream_lag_events": "gauge",
}
"""DESIGN's series (counters by the name the parser gives their family, without `_total`) and their types."""

DOCS = Path(__file__).resolve().parents[2] / "docs"
ALERTS = DOCS / "monitoring" / "alerts.yml"
DASHBOARD = DOCS / "monitoring" / "grafana-dashboard.json"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
_HOW = "Debian's prometheus package has prometheus and promtool: `sudo apt-get install prometheus` (.ci/run does)."
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason=explained_skip("no promtool", lambda: f"promtool is not on PATH. {_HOW}")
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason=explained_skip("no prometheus", lambda: f"prometheus is not on PATH. {_HOW}")
)


def parse(text: str) -> dict[str, Any]:
    """`/metrics` text as {sample name: {labels as a sorted tuple of (name, value): value}}, plus `types`:
    {family name: type}."""
    samples: dict[str, Any] = {"types": {}}
    for family in text_string_to_metric_families(text):
        samples["types"][family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by(samples: dict[str, Any], name: str, label: str) -> dict[str, float]:
    """One label's values of a series, e.g. by(m, "montra_runs", "status") == {"pending": 0.0, ...}."""
    return {dict(labels)[label]: value for labels, value in samples[name].items()}


def dashboard_exprs() -> list[str]:
    """Every PromQL `expr` of the Grafana dashboard, wherever it sits in the JSON."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return found
