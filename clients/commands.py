"""The Instant commands of the ``vigil`` CLI: detect, liveness, template, verify (over gRPC).

With ``--json`` each prints one JSON object on stdout. A failed call exits with status 1 and
prints ``STATUS_NAME: message`` on stderr; a file that cannot be read exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vigil.client.connection import Connection
from vigil.client.errors import VigilRpcError
from vigil.client.results import as_json
from vigil.client.sync import VigilClient
from vigil.client.video_results import video_declined, video_summary

DEFAULT_SERVER = os.environ.get("VIGIL_SERVER", "localhost:50051")


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(_fail(2, f"error: cannot read {path}: {exc.strerror or exc}")) from None


def _fail(code: int, message: str) -> int:
    print(message, file=sys.stderr)
    return code


def _box(face: dict[str, Any]) -> str:
    x, y, w, h = face["box"]
    return f"box=({x:.0f},{y:.0f},{w:.0f}x{h:.0f}) score={face['detection_score']:.3f}"


def _detect(client: VigilClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    result = as_json(client.detect(_read(args.file)))
    lines = [
        f"{len(result['faces'])} face(s) in {result['width']}x{result['height']} "
        f"{result['content_type']}"
    ]
    lines += [f"  {i}: {_box(face)}" for i, face in enumerate(result["faces"])]
    return result, "\n".join(lines)


def _liveness(client: VigilClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    result = as_json(client.liveness(_read(args.file), args.single))  # an image or a video
    verdict = "LIVE" if result["live"] else "SPOOF"
    if result["video"] and video_declined(result["video"]):
        verdict = "DECLINED"
    return (
        result,
        f"{verdict} score={result['score']:.4f} threshold={result['threshold']:.2f} "
        f"{_box(result['face'])}{video_summary(result)}",
    )


def _template(client: VigilClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    result = as_json(client.template(_read(args.file), args.single))
    template = result["template"]
    head = ", ".join(f"{v:.4f}" for v in template["values"][:4])
    return result, (
        f"{template['model']}:{template['model_version']} {len(template['values'])} values "
        f"[{head}, ...] {_box(result['face'])}"
    )


def _verify(client: VigilClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    result = as_json(client.verify(_read(args.file_a), _read(args.file_b), args.single))
    verdict = "MATCH" if result["match"] else "NO MATCH"
    return result, (
        f"{verdict} similarity={result['similarity']:.4f} distance={result['distance']:.4f} "
        f"(threshold {result['distance_threshold']:.2f}, {result['metric']})"
    )


COMMANDS: dict[
    str, tuple[str, Callable[[VigilClient, argparse.Namespace], tuple[dict[str, Any], str]]]
] = {
    "detect": ("find the faces in an image", _detect),
    "liveness": ("is the image's subject a live person?", _liveness),
    "template": ("the face template (embedding) of the image's subject", _template),
    "verify": ("are two images the same person?", _verify),
}


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Credential and TLS options (each defaults to its VIGIL_* environment variable)."""
    parser.add_argument("--api-key", help="API key (default $VIGIL_API_KEY)")
    parser.add_argument(
        "--tls-ca", type=Path, help="CA of the server's certificate ($VIGIL_TLS_CA)"
    )
    parser.add_argument("--tls-cert", type=Path, help="client certificate, mTLS ($VIGIL_TLS_CERT)")
    parser.add_argument("--tls-key", type=Path, help="client key, mTLS ($VIGIL_TLS_KEY)")


def connection_of(args: argparse.Namespace) -> Connection:
    return Connection.from_env(
        args.server,
        api_key=args.api_key,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def add_client_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, (help_text, handler) in COMMANDS.items():
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == "verify":
            parser.add_argument("file_a", metavar="FILE_A")
            parser.add_argument("file_b", metavar="FILE_B")
        else:
            parser.add_argument("file", metavar="FILE")
        parser.add_argument(
            "--server", default=DEFAULT_SERVER, help="HOST:PORT (default %(default)s)"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
        add_connection_arguments(parser)
        if name != "detect":
            parser.add_argument(
                "--single", action="store_true", help="fail when the image holds several faces"
            )
        parser.set_defaults(handler=lambda args, h=handler: run_client_command(h, args))


def run_client_command(
    handler: Callable[[VigilClient, argparse.Namespace], tuple[dict[str, Any], str]],
    args: argparse.Namespace,
) -> int:
    try:
        with VigilClient(timeout=args.timeout, connection=connection_of(args)) as client:
            result, text = handler(client, args)
    except VigilRpcError as error:
        return _fail(1, f"{error.code}: {error.message}")
    print(json.dumps(result) if args.json else text)
    return 0
