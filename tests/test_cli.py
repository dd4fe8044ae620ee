"""The real ``vigil`` command line, run as a subprocess: client commands against the session server,
model installation from a mirror, and ``vigil serve`` with its health, metrics and SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FACES, SHARED, SPOOF, ServerThread
from vigil.client import VigilClient
from vigil.client.connection import Connection, authenticated_channel
from vigil.inference import catalog
from vigil.v1 import common_pb2, instant_pb2, instant_pb2_grpc

MIRROR = Path(os.environ.get("VIGIL_MODEL_MIRROR") or SHARED / "models")


@pytest.fixture
def env(models_dir: Path, tmp_path: Path, server: ServerThread) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    values.update(
        VIGIL_MODELS_DIR=str(models_dir),
        VIGIL_DATA_DIR=str(tmp_path / "var"),
        VIGIL_INTRA_OP_THREADS="1",
        VIGIL_ALLOW_PLAINTEXT="true",
        VIGIL_API_KEY=server.admin_key,  # the session server; `vigil serve` tests make their own
    )
    return values


def vigil(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil.server.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def vigil_json(*args: str, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    done = vigil(*args, "--json", env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    "path,live", [(SPOOF / "image_F1.jpg", False), (FACES / "obama.jpg", True)], ids=["F1", "obama"]
)
def test_liveness(
    server: ServerThread, env: dict[str, str], tmp_path: Path, path: Path, live: bool
) -> None:
    result = vigil_json("liveness", str(path), "--server", server.address, env=env, cwd=tmp_path)
    assert result["live"] is live
    assert 0.0 <= result["score"] <= 1.0
    assert (result["score"] >= 0.5) is live
    assert result["face_count"] == 1


def test_verify(server: ServerThread, env: dict[str, str], tmp_path: Path) -> None:
    a, b, other = (str(FACES / n) for n in ("obama.jpg", "obama2.jpg", "biden.jpg"))
    same = vigil_json("verify", a, b, "--server", server.address, env=env, cwd=tmp_path)
    assert same["match"] is True
    assert same["similarity"] > 0.5 and same["distance"] < 0.6
    assert same["metric"] == "euclidean"
    different = vigil_json("verify", a, other, "--server", server.address, env=env, cwd=tmp_path)
    assert different["match"] is False
    assert different["similarity"] < 0.5 < 0.6 < different["distance"]


def test_detect_and_template(server: ServerThread, env: dict[str, str], tmp_path: Path) -> None:
    image = str(FACES / "obama.jpg")
    found = vigil_json("detect", image, "--server", server.address, env=env, cwd=tmp_path)
    image_info = found["image"]
    assert (image_info["width"], image_info["height"]) == (910, 1137)
    assert image_info["content_type"] == "image/jpeg"
    assert len(found["faces"]) == 1 and len(found["faces"][0]["landmarks"]) == 5
    # the contract's JSON mapping: a box is an object, as in the .proto
    box = found["faces"][0]["box"]
    assert set(box) == {"x", "y", "width", "height"} and box["width"] > 100
    made = vigil_json("template", image, "--server", server.address, env=env, cwd=tmp_path)
    assert len(made["template"]["values"]) == 128
    assert (made["template"]["model"], made["template"]["model_version"]) == ("dlib-resnet", "v1")


def test_human_output(server: ServerThread, env: dict[str, str], tmp_path: Path) -> None:
    done = vigil("liveness", str(SPOOF / "image_F1.jpg"), "--server", server.address, env=env,
                 cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SPOOF score=")
    assert done.stdout.count("score=") == 1 and " detection=" in done.stdout


def test_version(env: dict[str, str], tmp_path: Path) -> None:
    done = vigil("--version", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"vigil-client {version('vigil-client')}, vigil server {version('vigil')}"
    )


def test_fail_on_decline_exit_codes(
    server: ServerThread, env: dict[str, str], tmp_path: Path
) -> None:
    """0 for LIVE and MATCH; 3 for SPOOF and NO MATCH with --fail-on-decline (0 without)."""
    at = ("--server", server.address, "--fail-on-decline")
    spoof, live = str(SPOOF / "image_F1.jpg"), str(FACES / "obama.jpg")
    other, same = str(FACES / "biden.jpg"), str(FACES / "obama2.jpg")
    assert vigil("liveness", spoof, *at, env=env, cwd=tmp_path).returncode == 3
    assert vigil("liveness", live, *at, env=env, cwd=tmp_path).returncode == 0
    assert vigil("verify", live, other, *at, env=env, cwd=tmp_path).returncode == 3
    assert vigil("verify", live, same, *at, env=env, cwd=tmp_path).returncode == 0
    # without the flag SPOOF exits 0: test_human_output


def test_verify_takes_a_saved_template(
    server: ServerThread, env: dict[str, str], tmp_path: Path
) -> None:
    """`vigil template --json > t.json`, then `vigil verify t.json PHOTO`: the answer of the
    two photos."""
    at = ("--server", server.address)
    saved = vigil("template", str(FACES / "obama.jpg"), *at, "--json", env=env, cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    (tmp_path / "obama.json").write_text(saved.stdout)
    with VigilClient(server.address, api_key=server.admin_key) as client:
        for photo, match in (("obama2.jpg", True), ("biden.jpg", False)):
            by_template = vigil_json("verify", "obama.json", str(FACES / photo), *at, env=env,
                                     cwd=tmp_path)  # fmt: skip
            by_image = client.verify(FACES / "obama.jpg", FACES / photo)
            assert by_template["match"] is by_image.match is match
            assert abs(by_template["distance"] - by_image.distance) < 1e-3
            assert by_template["distance_threshold"] == pytest.approx(by_image.distance_threshold)
    (tmp_path / "broken.json").write_text('{"template": {"values": "no"}}')
    done = vigil("verify", "broken.json", str(FACES / "obama.jpg"), *at, env=env, cwd=tmp_path)
    assert done.returncode == 2 and "broken.json is not a template" in done.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(env: dict[str, str], tmp_path: Path, shell: str) -> None:
    done = vigil("completion", shell, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for word in ("liveness", "verify", "--fail-on-decline", "company-create", "serve"):
        assert word in done.stdout
    if shell == "bash" and shutil.which("bash"):  # the script loads in a real bash
        script = tmp_path / "vigil.bash"
        script.write_text(done.stdout)
        loaded = subprocess.run(["bash", "-c", f"source {script} && complete -p vigil"],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert loaded.returncode == 0 and "vigil" in loaded.stdout, loaded.stderr


def test_failed_call_exits_1_with_status_on_stderr(
    server: ServerThread, env: dict[str, str], tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a photo\n")
    done = vigil("liveness", str(text), "--server", server.address, "--json", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("INVALID_ARGUMENT: ")
    assert "no known image format" in done.stderr


def test_unreadable_path_exits_2(server: ServerThread, env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    done = vigil(
        "detect", str(missing), "--server", server.address, "--json", env=env, cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert f"cannot read {missing}" in done.stderr


def test_models_install(env: dict[str, str], tmp_path: Path) -> None:
    """From the mirror as a URL (file://, read like http): installed, verified, with progress
    on stderr (not a terminal: a line at each quarter of each file, the last at 100%)."""
    target = tmp_path / "installed"
    done = vigil("models", "install", "--mirror", MIRROR.resolve().as_uri(), "--dir", str(target),
                 env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for spec in catalog.DEFAULT_MODELS:
        assert f"ok  {target / spec.file}" in done.stdout
        assert catalog.sha256_of(target / spec.file) == spec.sha256
        progress = [line for line in done.stderr.splitlines() if line.startswith(spec.file)]
        assert 1 <= len(progress) <= 5 and progress[-1].endswith(" 100%"), done.stderr
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temp files left


def test_models_install_refuses_a_corrupt_mirror(env: dict[str, str], tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for source in MIRROR.iterdir():
        shutil.copyfile(source, mirror / source.name)
    corrupt = catalog.MINIFASNET_V2.file
    data = bytearray((mirror / corrupt).read_bytes())
    data[len(data) // 2] ^= 0x01
    (mirror / corrupt).write_bytes(bytes(data))
    target = tmp_path / "installed"
    done = vigil("models", "install", "--mirror", str(mirror), "--dir", str(target), env=env,
                 cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0
    assert corrupt in done.stderr and "sha256" in done.stderr
    assert catalog.MINIFASNET_V2.sha256 in done.stderr  # what it should have been
    assert not (target / corrupt).exists()
    assert not [p for p in target.iterdir() if corrupt in p.name]  # no partial copy either


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_serving(address: str, proc: subprocess.Popen[bytes], deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert proc.poll() is None, "vigil serve exited early"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError("vigil serve never became SERVING")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_serve_health_metrics_and_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil.server.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--metrics-port", str(metrics_port)],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_serving(address, proc)
        key_file = tmp_path / "admin.key"
        done = vigil("admin", "bootstrap", "--key-file", str(key_file), env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        connection = Connection(address, api_key=key_file.read_text().strip())
        with authenticated_channel(connection) as channel:
            stub = instant_pb2_grpc.InstantStub(channel)
            image = common_pb2.Media(data=(FACES / "obama.jpg").read_bytes())
            assert stub.CheckLiveness(instant_pb2.LivenessRequest(image=image), timeout=30).live
            with pytest.raises(grpc.RpcError):
                stub.Detect(instant_pb2.DetectRequest(), timeout=30)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            scraped = samples(response.read().decode())
        method = "/vigil.v1.Instant/CheckLiveness"
        ok = (("code", "OK"), ("method", method))
        assert scraped["vigil_rpc_total", ok] == 1.0
        assert scraped["vigil_rpc_latency_seconds_count", ok] == 1.0
        assert scraped["vigil_rpc_latency_seconds_bucket", (*ok[:1], ("le", "+Inf"), *ok[1:])] == 1
        bad = (("code", "INVALID_ARGUMENT"), ("method", "/vigil.v1.Instant/Detect"))
        assert scraped["vigil_rpc_total", bad] == 1.0
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.seek(0)
        output = log.read()
        log.close()
    assert "shutting down" in output and "stopped" in output, output
