"""Request building shared by the sync and asyncio clients (one place, no duplication)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from vigil.client.results import Template
from vigil.v1 import auth_pb2, common_pb2, instant_pb2, video_pb2

#: An image as a path or raw bytes, or (for verification) a template.
ImageLike = str | Path | bytes
FaceLike = ImageLike | Template


def media(image: ImageLike, content_type: str = "") -> common_pb2.Media:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return common_pb2.Media(data=data, content_type=content_type)


def subject_policy(require_single_face: bool) -> common_pb2.SubjectPolicy.ValueType:
    return (
        common_pb2.SUBJECT_POLICY_REQUIRE_SINGLE
        if require_single_face
        else common_pb2.SUBJECT_POLICY_LARGEST
    )


def detect(image: ImageLike) -> instant_pb2.DetectRequest:
    return instant_pb2.DetectRequest(image=media(image))


def liveness(image: ImageLike, require_single_face: bool) -> instant_pb2.LivenessRequest:
    return instant_pb2.LivenessRequest(
        image=media(image), subject_policy=subject_policy(require_single_face)
    )


def template(image: ImageLike, require_single_face: bool) -> instant_pb2.TemplateRequest:
    return instant_pb2.TemplateRequest(
        image=media(image), subject_policy=subject_policy(require_single_face)
    )


def face_input(face: FaceLike) -> instant_pb2.FaceInput:
    if isinstance(face, Template):
        return instant_pb2.FaceInput(template=face.to_proto())
    return instant_pb2.FaceInput(image=media(face))


def verify(a: FaceLike, b: FaceLike, require_single_face: bool) -> instant_pb2.VerifyRequest:
    return instant_pb2.VerifyRequest(
        a=face_input(a), b=face_input(b), subject_policy=subject_policy(require_single_face)
    )


def stream_requests(
    frames: Iterable[tuple[bytes, float]],
    camera_label: str = "",
    device: str = "",
    require_single_face: bool = False,
) -> Iterator[video_pb2.StreamLivenessRequest]:
    """The live stream's messages: a start, then each (encoded frame, capture time in ms)."""
    capture = video_pb2.CaptureInfo(camera_label=camera_label, device=device)
    start = video_pb2.StreamStart(
        capture=capture, subject_policy=subject_policy(require_single_face)
    )
    yield video_pb2.StreamLivenessRequest(start=start)
    for data, capture_ms in frames:
        frame = video_pb2.StreamFrame(encoded=data, capture_time_ms=capture_ms)
        yield video_pb2.StreamLivenessRequest(frame=frame)


def get_verdict(folder_id: str, analysis_id: str = "") -> auth_pb2.GetVerdictRequest:
    return auth_pb2.GetVerdictRequest(folder_id=folder_id, analysis_id=analysis_id)


def public_keys() -> auth_pb2.GetPublicKeysRequest:
    return auth_pb2.GetPublicKeysRequest()


#: Client-side limit on messages; the server enforces its own.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Calls that change nothing (or give the same answer when repeated): retried on UNAVAILABLE
#: only (the server was not reached, restarting, or refused the connection), never on other
#: codes, and never for calls that create or delete.
IDEMPOTENT_METHODS = {
    "vigil.v1.Instant": (
        "Detect",
        "CheckLiveness",
        "ExtractTemplate",
        "Verify",
        "GetServerInfo",
    ),
    "vigil.v1.Folders": ("GetFolder", "ListFolders", "GetMedia", "GetAnalysis", "ListAnalyses"),
    "vigil.v1.Collections": ("ListCollections", "ListFaces", "Search"),
    "vigil.v1.Webhooks": ("ListWebhooks", "ListDeliveries"),
    "vigil.v1.Verdicts": ("GetVerdict", "GetPublicKeys"),
    "vigil.v1.Challenges": ("GetChallenge",),
    "vigil.v1.Auth": ("WhoAmI",),
    "vigil.v1.Admin": ("ListCompanies", "ListUsers", "ListApiKeys", "ListAuditEvents"),
}
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.2s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
#: gRPC's service config (applied by the channel itself: no retry loop in the SDK).
SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [
                {"service": service, "method": method}
                for service, methods in IDEMPOTENT_METHODS.items()
                for method in methods
            ],
            "retryPolicy": RETRY_POLICY,
        }
    ]
}
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
]
