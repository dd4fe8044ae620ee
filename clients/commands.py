"""The Instant commands of the ``vigil`` CLI: detect, liveness, template, verify (over gRPC).

With ``--json`` each prints the reply as one JSON object in the contract's JSON mapping
(protobuf's ``MessageToDict``, field names as in the .proto files: ``box`` is an object with
``x``, ``y``, ``width``, ``height``; verify's reply carries ``distance_threshold``).

Exit status: 0 done; 1 the call failed (``STATUS_NAME: message`` on stderr); 2 a file cannot be
read, or a usage error; 3 with ``--fail-on-decline``, a negative answer (SPOOF, DECLINED,
NO MATCH) so scripts can branch on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from google.protobuf.message import Message

from vigil.client import _requests as build
from vigil.client.connection import Connection, authenticated_channel
from vigil.client.errors import VigilRpcError
from vigil.client.results import LivenessResult, as_json
from vigil.client.video_results import video_declined, video_summary
from vigil.v1 import common_pb2, instant_pb2, instant_pb2_grpc

DEFAULT_SERVER = os.environ.get("VIGIL_SERVER", "localhost:50051")
#: ``--fail-on-decline``: the answer was negative (SPOOF, DECLINED, NO MATCH).
EXIT_DECLINED = 3


class Answer(NamedTuple):
    reply: Message
    text: str
    #: A negative answer (exit 3 with --fail-on-decline).
    declined: bool = False


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(_fail(2, f"error: cannot read {path}: {exc.strerror or exc}")) from None


def _fail(code: int, message: str) -> int:
    print(message, file=sys.stderr)
    return code


def contract_json(reply: Message) -> dict[str, Any]:
    """A reply in the contract's JSON mapping, with the .proto field names."""
    return MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _box(face: common_pb2.Face) -> str:
    box = face.box
    return (
        f"box=({box.x:.0f},{box.y:.0f},{box.width:.0f}x{box.height:.0f}) "
        f"detection={face.detection_score:.3f}"
    )


def _face_input(path: str) -> instant_pb2.FaceInput:
    """An image, or a template saved by ``vigil template --json`` (or a bare Template message
    in JSON): a file whose content is a JSON object is read as a template."""
    data = _read(path)
    if not data.lstrip().startswith(b"{"):
        return instant_pb2.FaceInput(image=common_pb2.Media(data=data))
    try:
        saved = json.loads(data)
        template = saved.get("template", saved) if isinstance(saved, dict) else saved
        message = ParseDict(template, common_pb2.Template(), ignore_unknown_fields=True)
    except (ValueError, ParseError, AttributeError) as exc:
        raise SystemExit(_fail(2, f"error: {path} is not a template in JSON: {exc}")) from None
    if not message.values:
        raise SystemExit(_fail(2, f"error: {path} holds no template values"))
    return instant_pb2.FaceInput(template=message)


def _detect(stub: instant_pb2_grpc.InstantStub, args: argparse.Namespace) -> Answer:
    reply = stub.Detect(build.detect(_read(args.file)), **args.call)
    image = reply.image
    lines = [f"{len(reply.faces)} face(s) in {image.width}x{image.height} {image.content_type}"]
    lines += [f"  {i}: {_box(face)}" for i, face in enumerate(reply.faces)]
    return Answer(reply, "\n".join(lines))


def _liveness(stub: instant_pb2_grpc.InstantStub, args: argparse.Namespace) -> Answer:
    request = build.liveness(_read(args.file), args.single)  # an image or a video
    reply = stub.CheckLiveness(request, **args.call)
    result = as_json(LivenessResult.from_proto(reply))
    verdict = "LIVE" if reply.live else "SPOOF"
    if result["video"] and video_declined(result["video"]):
        verdict = "DECLINED"
    text = (
        f"{verdict} score={reply.score:.4f} threshold={reply.threshold:.2f} "
        f"{_box(reply.face)}{video_summary(result)}"
    )
    return Answer(reply, text, declined=verdict != "LIVE")


def _template(stub: instant_pb2_grpc.InstantStub, args: argparse.Namespace) -> Answer:
    reply = stub.ExtractTemplate(build.template(_read(args.file), args.single), **args.call)
    template = reply.template
    head = ", ".join(f"{v:.4f}" for v in template.values[:4])
    return Answer(
        reply,
        f"{template.model}:{template.model_version} {len(template.values)} values "
        f"[{head}, ...] {_box(reply.face)}",
    )


def _verify(stub: instant_pb2_grpc.InstantStub, args: argparse.Namespace) -> Answer:
    request = instant_pb2.VerifyRequest(
        a=_face_input(args.file_a),
        b=_face_input(args.file_b),
        subject_policy=build.subject_policy(args.single),
    )
    reply = stub.Verify(request, **args.call)
    verdict = "MATCH" if reply.match else "NO MATCH"
    text = (
        f"{verdict} similarity={reply.similarity:.4f} distance={reply.distance:.4f} "
        f"(threshold {reply.distance_threshold:.2f}, {reply.metric})"
    )
    return Answer(reply, text, declined=not reply.match)


Handler = Callable[[instant_pb2_grpc.InstantStub, argparse.Namespace], Answer]
COMMANDS: dict[str, tuple[str, Handler]] = {
    "detect": ("find the faces in an image", _detect),
    "liveness": ("is the image's (or video's) subject a live person?", _liveness),
    "template": ("the face template (embedding) of the image's subject", _template),
    "verify": ("are two images (or saved templates) the same person?", _verify),
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
            parser.add_argument("file_a", metavar="FILE_A", help="an image or a saved template")
            parser.add_argument("file_b", metavar="FILE_B", help="an image or a saved template")
        else:
            parser.add_argument("file", metavar="FILE")
        parser.add_argument(
            "--server", default=DEFAULT_SERVER, help="HOST:PORT (default %(default)s)"
        )
        parser.add_argument("--json", action="store_true", help="print the reply as JSON")
        parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
        add_connection_arguments(parser)
        if name != "detect":
            parser.add_argument(
                "--single", action="store_true", help="fail when the image holds several faces"
            )
        if name in ("liveness", "verify"):
            parser.add_argument(
                "--fail-on-decline",
                action="store_true",
                help=f"exit {EXIT_DECLINED} on SPOOF, DECLINED or NO MATCH",
            )
        parser.set_defaults(handler=lambda args, h=handler: run_client_command(h, args))


def run_client_command(handler: Handler, args: argparse.Namespace) -> int:
    connection = connection_of(args)
    args.call = {"timeout": args.timeout}
    try:
        with authenticated_channel(connection) as channel:
            answer = handler(instant_pb2_grpc.InstantStub(channel), args)
    except grpc.RpcError as error:
        failure = VigilRpcError.from_grpc(error)
        return _fail(1, f"{failure.code}: {failure.message}")
    print(json.dumps(contract_json(answer.reply)) if args.json else answer.text)
    if answer.declined and getattr(args, "fail_on_decline", False):
        return EXIT_DECLINED
    return 0
