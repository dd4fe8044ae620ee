"""``vigil web``: the Web Adapter (uvicorn), and with ``--with-service`` the one-command demo that
also starts ``vigil serve`` on loopback and makes the adapter's service key."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc

from vigil.client.connection import Connection, authenticated_channel
from vigil.v1 import auth_pb2, auth_pb2_grpc, instant_pb2, instant_pb2_grpc


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], admin: object) -> None:
    """Registers ``vigil web`` (the ``vigil.commands`` entry point)."""
    web = sub.add_parser("web", help="run the Web Adapter (browser plugin + demo page)")
    web.add_argument("--host", help="bind address (default 127.0.0.1, VIGIL_WEB_HOST)")
    web.add_argument("--port", type=int, help="HTTP port (default 8080, VIGIL_WEB_PORT)")
    web.add_argument("--demo", action="store_true", help="serve the demo page at /demo")
    web.add_argument(
        "--with-service",
        action="store_true",
        help="also start `vigil serve` on 127.0.0.1 (plaintext) and give the adapter a new "
        "SERVICE key made with the ADMIN key in --admin-key-file (the one-command demo)",
    )
    web.add_argument("--admin-key-file", default="var/admin.key", help="for --with-service")
    web.set_defaults(handler=_web)


def _service_key(target: str, admin_key: str, key_file: Path) -> str:
    """The adapter's SERVICE key (FULL, so the demo's backend can read the whole result), made
    once with the ADMIN key and kept in ``key_file`` (mode 0600)."""
    if key_file.exists():
        return key_file.read_text().strip()
    with authenticated_channel(Connection(target, api_key=admin_key)) as channel:
        key = (
            auth_pb2_grpc.AdminStub(channel)
            .CreateApiKey(
                auth_pb2.CreateApiKeyRequest(
                    name="vigil web demo",
                    role=auth_pb2.ROLE_SERVICE,
                    result_mode=auth_pb2.RESULT_MODE_FULL,
                ),
                timeout=30,
            )
            .key
        )
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    return key


def _wait_for(target: str, key: str, service: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    with authenticated_channel(Connection(target, api_key=key)) as channel:
        stub = instant_pb2_grpc.InstantStub(channel)
        while True:
            if service.poll() is not None:
                raise SystemExit(f"vigil serve exited with {service.returncode}")
            try:
                stub.GetServerInfo(instant_pb2.GetServerInfoRequest(), timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise SystemExit("vigil serve did not answer within 120 s") from None
                time.sleep(0.5)


def _web(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from vigil.web.app import create_app
        from vigil.web.settings import WebSettings
    except ImportError as error:
        print(f"vigil web needs the web extra (pip install 'vigil[web]'): {error}", file=sys.stderr)
        return 1
    overrides: dict[str, object] = {"demo": True} if args.demo else {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    service: subprocess.Popen[bytes] | None = None
    if args.with_service:
        admin_key = Path(args.admin_key_file).read_text().strip()
        target = os.environ.get("VIGIL_WEB_SERVER", "127.0.0.1:50051")
        env = {**os.environ, "VIGIL_ALLOW_PLAINTEXT": "true"}
        service = subprocess.Popen(
            [sys.executable, "-m", "vigil.server", "serve", "--host", "127.0.0.1"], env=env
        )
        _wait_for(target, admin_key, service, 120)
        key_file = Path(args.admin_key_file).with_name("web-service.key")
        overrides |= {"server": target, "api_key": _service_key(target, admin_key, key_file)}
    try:
        try:
            settings = WebSettings(**overrides)  # type: ignore[arg-type]
            app = create_app(settings)
        except (ValueError, OSError) as error:  # pydantic's ValidationError is a ValueError
            print(f"vigil web: cannot start: {error}", file=sys.stderr)
            return 2
        if settings.demo:
            print(f"vigil web: the demo is at http://{settings.host}:{settings.port}/demo")
        uvicorn.run(app, host=settings.host, port=settings.port)
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)
    return 0
