"""The server's commands of the ``vigil`` command line: serve, worker, models, admin bootstrap,
bench.

They reach the ``vigil`` script (owned by ``vigil-client``) through the ``vigil.commands`` entry
point; ``python -m vigil.server`` runs the same script.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

from vigil.client.cli import Subcommands
from vigil.client.cli import main as main
from vigil.client.progress import ProgressLine
from vigil.inference import catalog
from vigil.inference.errors import VigilError
from vigil.server import health_check, logs, self_signed
from vigil.server.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        key: value
        for key, value in (
            ("port", args.port),
            ("metrics_port", args.metrics_port),
            ("host", args.host),
        )
        if value is not None
    }
    settings = Settings(**overrides)
    logs.configure(settings.log_level, settings.log_format)
    from vigil.server.app import serve_forever
    from vigil.server.metrics import serve_metrics
    from vigil.server.security.tls import InsecureConfiguration  # lazy: keeps `vigil admin` quick

    if args.install_models:
        catalog.install(settings.resolved_models_dir, settings.model_mirror)
    try:
        serve_metrics(settings.metrics_host, settings.metrics_port)
        asyncio.run(serve_forever(settings))
    except VigilError as error:
        print(f"vigil: cannot start: {error.message}", file=sys.stderr)
        return 1
    except (OSError, InsecureConfiguration) as error:
        print(f"vigil: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


def _worker(args: argparse.Namespace) -> int:
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    from vigil.server.app import work_forever

    try:
        asyncio.run(work_forever(settings))
    except VigilError as error:
        print(f"vigil: cannot start: {error.message}", file=sys.stderr)
        return 1
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    """Create the first ADMIN API key directly in the database and print it (once)."""
    from vigil.storage import credentials
    from vigil.storage.db import Database, migrate

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url)
    try:
        migrate(database.engine)
        with database.session() as session:
            if credentials.count_admins(session=session):
                if args.if_needed:
                    return 0
                print(
                    "vigil: an administrator exists already; use it to create keys", file=sys.stderr
                )
                return 1
            _, key = credentials.bootstrap_admin(args.company, session=session)
            session.commit()
    finally:
        database.dispose()
    if args.key_file:
        path = Path(args.key_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(key + "\n")
        print(f"admin API key written to {path} (export VIGIL_API_KEY=$(cat {path}))")
    else:
        print(key)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Bring the database schema to head (the Kubernetes migration Job; servers also do it)."""
    from vigil.storage.db import Database, migrate

    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url)
    try:
        migrate(database.engine)
    finally:
        database.dispose()
    print("database schema at head")
    return 0


def _models_install(args: argparse.Namespace) -> int:
    settings = Settings()
    target = Path(args.dir) if args.dir else settings.resolved_models_dir
    try:
        paths = catalog.install(
            target, args.mirror or settings.model_mirror, progress=ProgressLine(sys.stderr)
        )
    except VigilError as error:
        print(f"vigil: {error.message}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"ok  {path}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    for spec in catalog.DEFAULT_MODELS:
        print(f"{spec.ref:32} {spec.file:46} {spec.sha256[:12]}  {spec.licence}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    """Run the benchmark harness in its own process (nothing in the product imports benchmarks)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        print("vigil: the benchmark harness is in the source tree only", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "benchmarks.run", *args.extra_arguments]
    return subprocess.call(command, cwd=root)


def add_commands(sub: Subcommands, admin: Subcommands) -> None:
    """Registers the server's commands (the ``vigil.commands`` entry point)."""
    serve = sub.add_parser("serve", help="start the gRPC server")
    serve.add_argument("--port", type=int, help="gRPC port (default 50051, VIGIL_PORT)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus port (default 9095; 0 = off)")
    serve.add_argument("--host", help="bind address (default [::])")
    serve.add_argument(
        "--install-models", action="store_true", help="install missing models from the mirror first"
    )
    serve.set_defaults(handler=_serve)

    bootstrap = admin.add_parser("bootstrap", help="create the first ADMIN key and print it once")
    bootstrap.add_argument("--company", default="operator", help="the operator's company name")
    bootstrap.add_argument("--key-file", help="write the key to this file (mode 0600) instead")
    bootstrap.add_argument(
        "--if-needed", action="store_true", help="do nothing (exit 0) if an administrator exists"
    )
    bootstrap.set_defaults(handler=_bootstrap)

    health_check.add_parser(sub)
    self_signed.add_parser(sub)

    sub.add_parser(
        "migrate", help="bring the database schema to head (servers also do it at start)"
    ).set_defaults(handler=_migrate)

    worker = sub.add_parser("worker", help="run analysis workers only (shares the database queue)")
    worker.set_defaults(handler=_worker)

    models = sub.add_parser("models", help="manage the model files").add_subparsers(
        dest="models_command", required=True
    )
    install = models.add_parser("install", help="install and verify models from a mirror")
    install.add_argument("--mirror", help="directory or base URL (default ../shared/models)")
    install.add_argument("--dir", help="target directory (default <VIGIL_DATA_DIR>/models)")
    install.set_defaults(handler=_models_install)
    models.add_parser("list", help="the model catalog").set_defaults(handler=_models_list)

    bench = sub.add_parser(
        "bench", help="run the benchmark harness (every argument is passed on to it)"
    )
    bench.set_defaults(handler=_bench, passes_extra_arguments=True)


if __name__ == "__main__":
    sys.exit(main())
