"""The alert rules and the Grafana dashboard shipped in config/: every metric they
use is one dropline exports, every expression is PromQL that Prometheus's own
promtool reads, and the alerts fire (and stay quiet) as their unit tests say."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dropline.config import MetricsConfig
from dropline.metrics import make_metrics

from .harness import REPO

ALERTS = REPO / "config" / "prometheus" / "dropline-alerts.yml"
DASHBOARD = REPO / "config" / "grafana" / "dropline-dashboard.json"
ALERT_TESTS = REPO / "tests" / "promtool" / "dropline-alerts.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt install prometheus)"
)
_METRIC = re.compile(r"\bdropline_[a-z_]+")


def _exported(tmp_path: Path) -> set[str]:
    """The sample names dropline writes (its textfile: every dropline_* family)."""
    textfile = tmp_path / "dropline.prom"
    metrics = make_metrics(MetricsConfig(textfile=textfile))
    assert metrics is not None
    metrics.start()
    metrics.file_finished("p", "archived", 0.01)
    metrics.stage_ended("p", "s", "succeeded", 0.01)
    metrics.retry_scheduled("p", "s")
    metrics.pipeline_held("p", True)
    metrics.close()
    names = set()
    for line in textfile.read_text().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel["targets"]]


def test_every_metric_they_use_is_exported(tmp_path: Path) -> None:
    exported = _exported(tmp_path)
    assert "dropline_files_total" in exported  # the reading works
    used = {
        name: where
        for where, exprs in (
            ("alerts", [r["expr"] for r in _rules()]),
            ("dashboard", _dashboard_exprs()),
        )
        for expr in exprs
        for name in _METRIC.findall(expr)
    }
    missing = {name: where for name, where in used.items() if name not in exported}
    assert not missing, f"not exported by dropline: {missing}"
    # And what matters most is watched: failures, a stall, the backlog.
    alerts = {r["alert"] for r in _rules()}
    assert {"DroplineDown", "DroplineStalled", "DroplineFilesFailing"} <= alerts


def test_the_dashboard_is_one_grafana_dashboard() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "dropline" and doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for expr in _dashboard_exprs():
        assert 'instance=~"$instance"' in expr, expr  # every panel follows the host chosen


@needs_promtool
def test_promtool_reads_the_rules_and_their_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", ALERT_TESTS.name],
        cwd=ALERT_TESTS.parent,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_promtool
def test_promtool_reads_every_expression_of_the_dashboard(tmp_path: Path) -> None:
    """Grafana's variables given values, each expression as a recording rule: promtool
    parses it as Prometheus would."""
    assert PROMTOOL is not None
    rules = [
        {
            "record": f"dashboard:expr{n}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for n, expr in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
