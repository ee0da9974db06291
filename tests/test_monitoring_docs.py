"""docs/monitoring/: the alert rules pass `promtool check rules` and fire on the series as `serve --metrics`
exports them (`promtool test rules`); the Grafana dashboard uses exactly DESIGN's series."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from support.metrics import ALERTS, DASHBOARD, PROMTOOL, SERIES, dashboard_exprs, needs_promtool

DEAD_DESCRIPTION = (
    "A handler failed on every try (or raised NoRetry). See which with `montra-hooks events list --status dead`; "
    "fix the handler, then `montra-hooks retry --status dead`."
)
LATE_DESCRIPTION = (
    "Handler runs are due but not running: the dispatcher is saturated or stopped, or the runs belong to a handler "
    "that is no longer registered (the receiver lists those when it starts)."
)
SPIKE_DESCRIPTION = (
    "See why by outcome on the dashboard, or in the store's `rejections` table (invalid_signature: check the "
    "secrets; timestamp_out_of_tolerance: check the clock)."
)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 3 rules found" in done.stdout


def alert(name: str, at: str, labels: dict[str, str] | None = None, **annotations: str) -> dict[str, Any]:
    expected = [{"exp_labels": labels, "exp_annotations": annotations}] if labels is not None else []
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


@needs_promtool
def test_the_alerts_fire_when_they_should_and_not_before(tmp_path: Path) -> None:
    """Two workers of one job report the same backlog: one alert per job, not one per worker."""
    job = 'job="montra"'
    series = [
        # Two dead runs from minute 2 on, seen by both workers.
        *({"series": f'montra_runs{{{job},instance="w{n}",status="dead"}}', "values": "0 0 2x30"} for n in (1, 2)),
        # A due run that waits on: 60 s older each minute, past 10 minutes from minute 11.
        {"series": f'montra_oldest_due_run_seconds{{{job},instance="w1"}}', "values": "0+60x30"},
        # One webhook stored a second throughout; from minute 10, half as many refused on top.
        {"series": f'montra_webhooks_received_total{{{job},instance="w1",outcome="stored"}}', "values": "0+60x40"},
        {
            "series": f'montra_webhooks_received_total{{{job},instance="w1",outcome="invalid_signature"}}',
            "values": "0x10 30+30x30",
        },
    ]
    dead = {"job": "montra", "status": "dead", "severity": "page"}
    tests = [
        alert("MontraHandlerRunsDead", "2m"),  # dead for less than its `for: 1m`
        alert(
            "MontraHandlerRunsDead",
            "4m",
            dead,
            summary="2 handler run(s) gave up and are dead",
            description=DEAD_DESCRIPTION,
        ),
        alert("MontraOldestDueRunLate", "12m"),
        alert(
            "MontraOldestDueRunLate",
            "14m",
            {"job": "montra", "severity": "page"},
            summary="A due handler run has waited 14m 0s",
            description=LATE_DESCRIPTION,
        ),
        alert("MontraWebhookRejectionSpike", "9m"),
        alert("MontraWebhookRejectionSpike", "18m"),  # refused for less than its `for: 10m`
        alert(
            "MontraWebhookRejectionSpike",
            "30m",
            {"job": "montra", "severity": "warn"},
            summary="0.50 webhook requests a second refused",
            description=SPIKE_DESCRIPTION,
        ),
    ]
    spec = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": tests}],
    }
    spec_file = tmp_path / "alerts_test.yml"
    spec_file.write_text(json.dumps(spec))  # JSON is YAML
    done = subprocess.run([PROMTOOL, "test", "rules", str(spec_file)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_uses_exactly_the_public_series() -> None:
    used: set[str] = set()
    for expr in dashboard_exprs():
        for name in re.findall(r"\bmontra_[a-z_]+", expr):
            family = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert family in SERIES, f"{name} in {expr!r} is not a public series"
            suffix = name[len(family) :]
            allowed = {"counter": {"_total"}, "histogram": {"_bucket", "_sum", "_count"}, "gauge": {""}}
            assert suffix in allowed[SERIES[family]], f"{name} is not how a {SERIES[family]} is exported"
            used.add(family)
    assert used == set(SERIES)


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "montra-webhooks"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["targets"] and p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "job"]
