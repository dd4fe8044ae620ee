"""The shipped dashboard and alert rules only name metrics that vigil really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
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


# ---------------------------------------------------------------- Kubernetes
# The overlays are rendered here by a small renderer of the kustomize subset they use (resources,
# labels, images, strategic-merge patches whose lists merge by ``name``): kustomize is not on PyPI
# and kubectl is not installed. Any other kustomization key fails the test, so a manifest that
# grows past this subset is noticed instead of rendered wrongly.
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("cpu", "gpu")
KNOWN_KEYS = {"apiVersion", "kind", "resources", "labels", "images", "patches"}
#: Kubernetes version the manifests are validated against (kubernetes-validate's schemas).
K8S_VERSION = "1.30.0"

Doc = dict[str, Any]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as far as these manifests need: maps merge, lists of named maps merge by
    name, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        named = all(isinstance(item, dict) and "name" in item for item in [*base, *patch])
        if named:
            merged_list = list(base)
            for item in patch:
                at = next(
                    (i for i, old in enumerate(merged_list) if old["name"] == item["name"]), None
                )
                if at is None:
                    merged_list.append(item)
                else:
                    merged_list[at] = _merge(merged_list[at], item)
            return merged_list
    return patch


def _containers(doc: Doc) -> list[Doc]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def render(directory: Path) -> list[Doc]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_KEYS
    assert not unknown, f"{directory}: the test's renderer does not know {unknown}"
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch_ref in kustomization.get("patches", []):
        patch = yaml.safe_load((directory / patch_ref["path"]).read_text())
        targets = [
            i
            for i, doc in enumerate(docs)
            if (doc["kind"], doc["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
        ]
        assert len(targets) == 1, f"patch {patch_ref['path']} matches {len(targets)} objects"
        docs[targets[0]] = _merge(docs[targets[0]], patch)
    for entry in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return docs


def references(doc: Doc) -> set[tuple[str, str]]:
    """(kind, name) of every object a workload or autoscaler names."""
    found: set[tuple[str, str]] = set()
    if doc["kind"] == "HorizontalPodAutoscaler":
        target = doc["spec"]["scaleTargetRef"]
        found.add((target["kind"], target["name"]))
    pod = doc.get("spec", {}).get("template", {}).get("spec")
    if pod is None:
        return found
    if "serviceAccountName" in pod:
        found.add(("ServiceAccount", pod["serviceAccountName"]))
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            found.add(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            found.add(("ConfigMap", volume["configMap"]["name"]))
        if "persistentVolumeClaim" in volume:
            found.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
    for container in _containers(doc):
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                found.add(("Secret", source["secretRef"]["name"]))
            if "configMapRef" in source:
                found.add(("ConfigMap", source["configMapRef"]["name"]))
        for env in container.get("env", []):
            for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                ref = env.get("valueFrom", {}).get(key)
                if ref:
                    found.add((kind, ref["name"]))
    return found


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, render(KUSTOMIZE / "overlays" / request.param)


def test_every_referenced_object_is_defined(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    defined = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    wanted = set().union(*(references(doc) for doc in docs))
    assert ("Secret", "vigil-tls") in wanted and ("PersistentVolumeClaim", "vigil-blobs") in wanted
    missing = sorted(wanted - defined)
    assert not missing, f"overlay {name} references objects it never defines: {missing}"


def test_manifests_validate(overlay: tuple[str, list[Doc]]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (a dev dependency) is not installed"
    )
    name, docs = overlay
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(
                f"{name}: {doc['kind']}/{doc['metadata']['name']}: {error.message} at "
                f"{'.'.join(map(str, error.path))}"
            ) from None


def test_the_server_probes_speak_tls_and_the_gpu_overlay_waits_for_engines(
    overlay: tuple[str, list[Doc]],
) -> None:
    name, docs = overlay
    (deployment,) = (d for d in docs if d["kind"] == "Deployment")
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["exec"]["command"] == ["vigil", "health"], probe
    startup = server["startupProbe"]
    startup_s = startup["periodSeconds"] * startup["failureThreshold"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert config["VIGIL_TLS_CERT_FILE"].startswith("/etc/vigil/tls/")
    if name == "gpu":
        assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert startup_s >= 900, "a GPU replica builds its engines before it serves"
        assert server["image"] == "vigil-gpu:latest"
    else:
        assert "nvidia.com/gpu" not in server["resources"]["limits"]
        assert server["resources"]["limits"]["cpu"]  # the threads follow this quota
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
    migrate = jobs["vigil-migrate"]["spec"]["template"]["spec"]["containers"][0]
    bootstrap = jobs["vigil-bootstrap"]["spec"]["template"]["spec"]["containers"][0]
    assert migrate["args"] == ["migrate"]
    assert bootstrap["args"][:3] == ["admin", "bootstrap", "--if-needed"]
