"""The shipped alert rules and dashboard: rules valid and unit-tested with promtool (Debian's
``prometheus`` package; .ci/run installs it), including an overload made of admission rejections
only; every per-model and per-method counter the alerts sum exists at 0 before its first use."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from prometheus_client import REGISTRY, generate_latest

from tests.conftest import ROOT
from vigil.inference import catalog
from vigil.inference import metrics as inference_metrics
from vigil.server import metrics
from vigil.server.app import method_paths

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "vigil-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; CI installs it)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False, cwd=PROMETHEUS
    )


@needs_promtool
def test_rules_are_valid() -> None:
    done = promtool("check", "rules", "alerts.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_rules_fire_as_the_unit_tests_say() -> None:
    """alerts_test.yaml: admission-only and model-only overloads fire VigilOverloaded, a slow
    stream does not fire VigilSlow but a slow unary call does, batch failures page."""
    done = promtool("test", "rules", "alerts_test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_alerting_counters_exist_at_zero_before_any_call() -> None:
    metrics.preinitialise(method_paths())
    inference_metrics.preinitialise(spec.name for spec in catalog.DEFAULT_MODELS)
    scrape = generate_latest(REGISTRY).decode().splitlines()
    for spec in catalog.DEFAULT_MODELS:
        for family in ("vigil_model_rejected_total", "vigil_model_expired_total"):
            assert any(line.startswith(f'{family}{{model="{spec.name}"}} ') for line in scrape), (
                f"{family} has no series for {spec.name}"
            )
    liveness = 'vigil_rpc_total{code="INTERNAL",method="/vigil.v1.Instant/CheckLiveness"}'
    assert any(line.startswith(liveness + " ") for line in scrape)
    assert any(line.startswith("vigil_analyses_total{") for line in scrape)
    assert "/vigil.v1.Challenges/StreamAnswer" in method_paths()


def test_dashboard_uses_rate_interval_and_filters() -> None:
    """No fixed ``[1m]`` windows (empty at a 1 m scrape interval); every query filtered by the
    dashboard's job and instance variables; streams out of the latency panels."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"job", "instance"} <= variables
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert "[1m]" not in expr, f"{panel['title']}: {expr}"
            if "[" in expr:
                assert "$__rate_interval" in expr, f"{panel['title']}: {expr}"
            assert 'job=~"$job"' in expr and 'instance=~"$instance"' in expr, (
                f"{panel['title']}: {expr}"
            )
            if "latency" in expr:
                assert "Stream" in expr, f"{panel['title']} counts streams as latency: {expr}"
