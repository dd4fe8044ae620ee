"""The images' smoke test (docker/smoke_test.py), run here outside Docker: there is no Docker
daemon on this machine or in CI, so the step both Dockerfiles end with is proved against the built
wheels installed into a fresh virtual environment (as the images install them), with the real
models: ``vigil serve`` with TLS from a self-signed certificate, ``vigil health`` (the HEALTHCHECK
and the Kubernetes probes) reports SERVING over TLS, the same check against a plaintext-only server
fails naming its address, and a fresh scrape shows the alerting counters at 0. The
image-without-models branch (commands and migrations) runs too."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_packaging import Install, Wheels, wheels

__all__ = ["wheels"]  # the wheels fixture, built once for this module

SMOKE = ROOT / "docker" / "smoke_test.py"


@pytest.fixture(scope="module")
def installed(wheels: Wheels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding the two wheels, as the images install them."""
    base = tmp_path_factory.mktemp("container-venv")
    install = Install.start(base / "venv", [wheels.client.path, wheels.server.path], base)
    try:
        yield install.ready()
    finally:
        install.stop()


def smoke(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    bin_dir = venv / "bin"
    return subprocess.run(
        [str(bin_dir / "python"), str(SMOKE), "--vigil", str(bin_dir / "vigil"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )


@pytest.mark.slow  # a server start in a fresh venv: 25-80 s on 2 busy cores (CI runs it)
@pytest.mark.timeout(600)
def test_smoke_test_serves_tls_and_health_says_serving(installed: Path, models_dir: Path) -> None:
    done = smoke(installed, "--models-dir", str(models_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TLS health check: SERVING" in done.stdout
    assert "TLS check of a plaintext-only server fails" in done.stdout
    assert "TLS handshake failed: is the server plaintext" in done.stdout
    assert "alerting series at 0" in done.stdout


def test_smoke_test_without_models_runs_the_migrations(installed: Path) -> None:
    done = smoke(installed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no models: commands and migrations only" in done.stdout


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_images_end_with_the_smoke_test_and_check_health_over_tls(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    runs = text.find("python /usr/local/lib/vigil/smoke_test.py")
    assert 0 < runs < text.find("HEALTHCHECK --"), "the build runs the smoke test"
    assert 'CMD ["vigil-entrypoint", "healthcheck"]' in text
    assert "VIGIL_TLS_CERT_FILE=/etc/vigil/tls/tls.crt" in text
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert 'exec vigil health "$@"' in entrypoint
    assert "insecure_channel" not in entrypoint
