"""Logging: one access line per call (method, status, duration, company, incident id; nothing
from the request), JSON lines on request, Alembic and gRPC C-core quiet at INFO."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import FACES, ServerThread, read
from vigil.server import logs
from vigil.v1 import common_pb2, instant_pb2, instant_pb2_grpc

VIGIL = Path(sys.executable).with_name("vigil")
METHOD = "/vigil.v1.Instant/CheckLiveness"


def access_records(caplog: pytest.LogCaptureFixture, method: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "vigil.access" and method in r.getMessage()]


def test_every_call_writes_one_access_line(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    key = server.new_key("CLIENT", company="access-log-co")
    photo = read(FACES / "obama.jpg")
    with caplog.at_level(logging.INFO, logger="vigil.access"), server.channel(key) as channel:
        stub = instant_pb2_grpc.InstantStub(channel)
        stub.CheckLiveness(
            instant_pb2.LivenessRequest(image=common_pb2.Media(data=photo)), timeout=60
        )
        with pytest.raises(grpc.RpcError):
            stub.CheckLiveness(
                instant_pb2.LivenessRequest(image=common_pb2.Media(data=b"not an image")),
                timeout=60,
            )
        # The server writes the line as the call ends, on its own thread: wait for it.
        deadline = time.monotonic() + 10
        while len(access_records(caplog, METHOD)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    ok, bad = access_records(caplog, METHOD)[-2:]
    for record, status in ((ok, "OK"), (bad, "INVALID_ARGUMENT")):
        fields = vars(record)
        assert fields["method"] == METHOD
        assert fields["status"] == status
        assert fields["company"] == "access-log-co"
        assert fields["duration_ms"] > 0
        assert fields["incident"] is None
        assert key not in record.getMessage() and "not an image" not in record.getMessage()


def test_json_lines_carry_the_access_fields() -> None:
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("vigil.access", logging.INFO, __file__, 1, "m %s", ("x",), None)
    record.__dict__.update(method="/vigil.v1.Folders/GetFolder", status="INTERNAL", incident="ab12")
    line = json.loads(formatter.format(record))
    assert line["message"] == "m x" and line["level"] == "INFO" and line["logger"] == "vigil.access"
    assert line["method"] == "/vigil.v1.Folders/GetFolder" and line["incident"] == "ab12"
    assert line["time"].endswith("+00:00")


def test_migrations_are_quiet_and_json_is_json(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env = {**clean, "VIGIL_DATA_DIR": str(tmp_path / "data"), "VIGIL_LOG_FORMAT": "json"}
    done = subprocess.run(
        [str(VIGIL), "migrate"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Running upgrade" not in done.stderr and "alembic" not in done.stderr.lower()
    for line in done.stderr.splitlines():
        json.loads(line)  # anything logged is one JSON object a line
