"""Starting and stopping ``vigil serve`` subprocesses, one per server configuration."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.workloads import ROOT


@dataclass(frozen=True)
class ServerConfig:
    """A named server configuration: the ``VIGIL_*`` variables that differ from the defaults."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""


#: The harness's sweep configurations (``benchmarks.run``); the first, batching-on, is also the
#: server of ``benchmarks.latency_interleaved``.
CONFIGS = (
    # The sweep measures queueing, so admission control is off there (the overload point has it).
    ServerConfig(
        "batching-on",
        {"VIGIL_MAX_INFLIGHT_IMAGES": "0"},
        "per-face models batched up to 32 (defaults)",
    ),
    ServerConfig(
        "batching-off",
        {"VIGIL_MAX_BATCH_SIZE": "1", "VIGIL_MAX_INFLIGHT_IMAGES": "0"},
        "VIGIL_MAX_BATCH_SIZE=1",
    ),
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_serving(
    target: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``grpc.health.v1`` until SERVING; fail early if the process dies."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"vigil serve exited with code {process.returncode}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} not SERVING after {timeout_s:.0f} s")
            await asyncio.sleep(0.3)


class ServerProcess:
    """``python -m server serve`` (the ``vigil serve`` entry point) on a free port, run from
    ``root`` (this checkout by default)."""

    def __init__(
        self,
        config: ServerConfig,
        models_dir: Path,
        log_path: Path,
        common_env: dict[str, str] | None = None,
        root: Path = ROOT,
    ) -> None:
        self.config = config
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"vigil-bench-{config.name}-"))
        env.update(
            VIGIL_MODELS_DIR=str(models_dir.resolve()),
            VIGIL_DATA_DIR=str(self.data_dir),
            VIGIL_LOG_LEVEL="WARNING",
            VIGIL_METRICS_PORT="0",
            # A loopback benchmark: plaintext allowed, no per-key rate limit, no workers.
            VIGIL_ALLOW_PLAINTEXT="true",
            VIGIL_RATE_LIMIT_PER_S="0",
            VIGIL_ANALYSIS_WORKERS="0",
        )
        if root != ROOT:  # another checkout: its packages first on the path
            env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "protos")])
        env.update(common_env or {})
        env.update(config.env)
        self.log_path = log_path
        self._log = log_path.open("wb")
        key_file = self.data_dir / "admin.key"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "vigil.server",
                "admin",
                "bootstrap",
                "--key-file",
                str(key_file),
            ],
            cwd=root,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        #: Call metadata carrying this server's ADMIN key.
        self.metadata = [("x-api-key", key_file.read_text().strip())]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vigil.server",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--metrics-port",
                "0",
            ],
            cwd=root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    async def ready(self, timeout_s: float = 120.0) -> None:
        try:
            await wait_serving(self.target, timeout_s, self.process)
        except Exception as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"server {self.config.name} did not start: {exc}\n{tail}") from exc

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)
