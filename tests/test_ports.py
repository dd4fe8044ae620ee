"""Ports and paths: a busy gRPC or metrics port stops the start with a message naming it (no
SO_REUSEPORT sharing); plaintext is refused before the database is touched; the data directory
is absolute; thread defaults follow a container's CPU quota."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerThread, make_settings
from vigil.server import settings as settings_module
from vigil.server.settings import Settings

VIGIL = Path(sys.executable).with_name("vigil")


def vigil_serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    return subprocess.run(
        [str(VIGIL), "serve", "--host", "127.0.0.1", *args],
        env={**clean, "VIGIL_DATA_DIR": str(tmp_path / "data"), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_second_server_on_a_busy_port_refuses_naming_it(
    server: ServerThread, models_dir: Path
) -> None:
    from vigil.server.app import start_server

    busy = server.vigil.port
    settings = make_settings(models_dir, port=busy)
    with pytest.raises(OSError, match=f"cannot bind the gRPC port 127.0.0.1:{busy}"):
        asyncio.run(start_server(settings))


def test_a_busy_metrics_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = vigil_serve(
            tmp_path,
            "--metrics-port",
            str(port),
            VIGIL_METRICS_HOST="127.0.0.1",
            VIGIL_ALLOW_PLAINTEXT="true",
        )
    assert done.returncode == 1
    assert f"cannot bind the metrics port 127.0.0.1:{port} (VIGIL_METRICS_PORT)" in done.stderr


def test_plaintext_is_refused_before_the_database_exists(tmp_path: Path) -> None:
    done = vigil_serve(tmp_path, "--metrics-port", "0")
    assert done.returncode == 1
    assert "refusing to serve credentials over plaintext" in done.stderr
    assert not (tmp_path / "data" / "vigil.db").exists()
    assert "alembic" not in done.stderr.lower()


def test_the_data_directory_is_resolved_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=Path("var"))
    monkeypatch.chdir("/")
    assert settings.data_dir == tmp_path.resolve() / "var"
    assert settings.resolved_blob_dir == tmp_path.resolve() / "var" / "blobs"
    assert settings.resolved_database_url.endswith(f"{tmp_path.resolve()}/var/vigil.db")


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("150000 100000\n", 2), ("100000 100000\n", 1), ("max 100000\n", None), ("", None)],
)
def test_thread_defaults_follow_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str, expected: int | None
) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max)
    monkeypatch.setattr(settings_module, "CGROUP_CPU_MAX", quota)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    threads = Settings().intra_op_threads
    assert threads == (expected if expected is not None else 8)
    assert Settings().detector_instances == threads + 1
