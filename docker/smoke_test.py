"""Smoke test of an installed vigil server: the last step of both image builds, and run by
tests/test_containers.py against the development install (no Docker daemon needed).

With models (``--models-dir``): a self-signed certificate (``vigil tls self-signed``),
``vigil serve`` with TLS on an empty data directory (so the packaged migrations run),
``vigil health`` reports SERVING over TLS; the same check against a plaintext-only server fails,
naming the address; a plaintext check against the TLS port fails too; the metrics scrape shows the
alerting counters at 0; SIGTERM stops it with status 0. Without models (an image built with no
mirror): the commands exist and the migrations run (``vigil admin bootstrap`` on an empty
database).

    python docker/smoke_test.py [--vigil PATH] [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent import futures
from pathlib import Path

#: Series a fresh server must show at 0 (the alert rules sum or divide them).
ZERO_AT_START = (
    'vigil_model_rejected_total{model="yunet"} 0.0',
    'vigil_model_rejected_total{model="dlib-resnet"} 0.0',
    'vigil_model_batch_failures_total{model="minifasnet-v2"} 0.0',
    "vigil_admission_rejected_total 0.0",
    'vigil_rpc_total{code="INTERNAL",method="/vigil.v1.Instant/CheckLiveness"} 0.0',
)
START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(vigil: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [vigil, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def fail(message: str) -> None:
    print(f"smoke test FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def plaintext_health_server() -> tuple[object, str]:
    """A plaintext-only grpc.health.v1 server reporting SERVING (what a TLS check must refuse)."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def without_models(vigil: str, work: Path, env: dict[str, str]) -> None:
    for command in (["--help"], ["health", "--help"], ["tls", "self-signed", "--out", "tls"]):
        done = run(vigil, *command, env=env)
        if done.returncode != 0:
            fail(f"vigil {' '.join(command)}: {done.stderr}")
    done = run(vigil, "admin", "bootstrap", "--key-file", str(work / "admin.key"), env=env)
    if done.returncode != 0 or not (work / "data" / "vigil.db").is_file():
        fail(f"migrations on an empty database: {done.stderr}")
    print("smoke test passed (no models: commands and migrations only)")


def with_models(vigil: str, work: Path, env: dict[str, str]) -> None:
    made = run(vigil, "tls", "self-signed", "--out", str(work / "tls"), env=env)
    if made.returncode != 0:
        fail(f"vigil tls self-signed: {made.stderr}")
    grpc_port, metrics_port = free_port(), free_port()
    env = {
        **env,
        "VIGIL_TLS_CERT_FILE": str(work / "tls" / "tls.crt"),
        "VIGIL_TLS_KEY_FILE": str(work / "tls" / "tls.key"),
        "VIGIL_HOST": "127.0.0.1",
        "VIGIL_PORT": str(grpc_port),
        "VIGIL_METRICS_HOST": "127.0.0.1",
        "VIGIL_METRICS_PORT": str(metrics_port),
    }
    log = work / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [vigil, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=work
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                fail(f"vigil serve exited with {server.returncode}:\n{log.read_text()}")
            health = run(vigil, "health", "--timeout", "2", env=env)
            if health.returncode == 0:
                break
            if time.monotonic() > deadline:
                fail(f"never SERVING over TLS: {health.stderr}\n{log.read_text()}")
            time.sleep(0.5)
        if health.stdout.strip() != "SERVING":
            fail(f"vigil health printed {health.stdout!r}")
        print(f"TLS health check: {health.stdout.strip()}")

        plain = run(vigil, "health", "--plaintext", "--timeout", "2", env=env)
        if plain.returncode == 0:
            fail("a plaintext check of the TLS port passed")
        plaintext_server, address = plaintext_health_server()
        try:
            tls_on_plain = run(vigil, "health", "--address", address, "--timeout", "2", env=env)
        finally:
            plaintext_server.stop(0)  # type: ignore[attr-defined]
        if (
            tls_on_plain.returncode == 0
            or address not in tls_on_plain.stderr
            or len(tls_on_plain.stderr.strip().splitlines()) != 1
        ):
            fail(f"the TLS check of a plaintext-only server: {tls_on_plain.stderr!r}")
        print(f"TLS check of a plaintext-only server fails: {tls_on_plain.stderr.strip()}")

        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            scrape = reply.read().decode()
        missing = [series for series in ZERO_AT_START if series not in scrape.splitlines()]
        if missing:
            fail(f"a fresh scrape lacks {missing}")
        print(f"fresh scrape: {len(ZERO_AT_START)} alerting series at 0")

        server.send_signal(signal.SIGTERM)
        if server.wait(timeout=60) != 0:
            fail(f"vigil serve exited with {server.returncode} on SIGTERM:\n{log.read_text()}")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    print("smoke test passed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vigil", default="vigil", help="the vigil command (default: on PATH)")
    parser.add_argument("--models-dir", help="installed models; without it, no server is started")
    args = parser.parse_args()
    vigil = shutil.which(args.vigil)
    if vigil is None:
        fail(f"no {args.vigil} command")
    assert vigil is not None
    vigil = str(Path(vigil).resolve())
    with tempfile.TemporaryDirectory(prefix="vigil-smoke-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "VIGIL_DATA_DIR": str(work / "data"),
            "VIGIL_INTRA_OP_THREADS": "1",
            "GRPC_VERBOSITY": "ERROR",  # as the images set it: C-core's own lines off
        }
        env.pop("VIGIL_ALLOW_PLAINTEXT", None)
        os.chdir(work)
        if args.models_dir:
            env["VIGIL_MODELS_DIR"] = str(Path(args.models_dir).resolve())
            with_models(vigil, work, env)
        else:
            without_models(vigil, work, env)


if __name__ == "__main__":
    main()
