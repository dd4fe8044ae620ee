"""The shipped dashboard and alert rules only name metrics that vigil really exports."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY

import vigil.inference.metrics
import vigil.server.jobs.worker
import vigil.server.metrics  # noqa: F401  (registers the RPC metrics)
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> set[str]:
    """Every series name the registry can expose (labelled metrics have no sample until used)."""
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\bvigil_[a-z_]+", text))


def test_dashboard_and_alerts_name_real_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "vigil-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    alerts = (DEPLOY / "prometheus" / "alerts.yaml").read_text()
    names = referenced(exprs) | referenced(alerts)
    assert names, "no metric found in the deploy files"
    unknown = sorted(names - exported())
    assert not unknown, f"deploy/ names metrics vigil does not export: {unknown}"
