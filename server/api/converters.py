"""Conversions shared by every servicer: faces, timings, images, times; request validation."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from vigil.inference.catalog import ModelSpec
from vigil.inference.errors import InvalidArgument
from vigil.inference.media import DecodedImage
from vigil.inference.types import Face, Subject, Timings
from vigil.server.rpc import Context
from vigil.storage.results import FaceRecord
from vigil.v1 import common_pb2, instant_pb2

#: A distance threshold a caller chooses (BIOMETRY, BLACKLIST, Search) lies in (0, 2]: the
#: embeddings are unit-scale, so no two faces are further apart than that.
MAX_DISTANCE_THRESHOLD = 2.0


def chosen_threshold(value: float, liveness: bool, field: str) -> float:
    """A caller's threshold once it is checked to be finite and in its range: a probability in
    (0, 1] for LIVENESS, a distance in (0, MAX_DISTANCE_THRESHOLD] otherwise."""
    top = 1.0 if liveness else MAX_DISTANCE_THRESHOLD
    if not math.isfinite(value) or not 0 < value <= top:
        what = "a real probability" if liveness else "a distance"
        raise InvalidArgument(f"{field} is {value:g}; it must be {what} in (0, {top:g}]")
    return float(value)


def require_media(media: common_pb2.Media, field: str) -> bytes:
    """The bytes of a required media field, or INVALID_ARGUMENT naming the field."""
    if not media.data:
        raise InvalidArgument(f"{field}.data is required and must not be empty")
    return bytes(media.data)


def require_single(policy: int) -> bool:
    """Validate a SubjectPolicy (unknown numbers are refused); True when it is strict."""
    if policy not in common_pb2.SubjectPolicy.values():
        raise InvalidArgument(
            f"subject_policy {policy} is not a known SubjectPolicy; use one of "
            + ", ".join(common_pb2.SubjectPolicy.keys())
        )
    return policy == common_pb2.SUBJECT_POLICY_REQUIRE_SINGLE


def deadline_of(context: Context) -> float | None:
    """The call's deadline on ``time.monotonic``'s clock, or None when the caller set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def template_values(template: common_pb2.Template) -> np.ndarray:
    return np.asarray(template.values, dtype=np.float32)


def model_ref(spec: ModelSpec) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=spec.name, version=spec.version, sha256=spec.sha256)


def face_message(face: FaceRecord | Face) -> common_pb2.Face:
    """The one face converter: a stored face record, or the engine's face as one."""
    record = face if isinstance(face, FaceRecord) else FaceRecord.of(face)
    x, y, w, h = record.box
    return common_pb2.Face(
        box=common_pb2.BoundingBox(x=x, y=y, width=w, height=h),
        landmarks=[common_pb2.Point(x=px, y=py) for px, py in record.landmarks],
        detection_score=record.score,
    )


def stamp(moment: datetime) -> Timestamp:
    """A stored time (aware or naive UTC) as a protobuf Timestamp."""
    value = Timestamp()
    value.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return value


def timestamp(moment: datetime | None) -> Timestamp | None:
    return None if moment is None else stamp(moment)


def moment(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def timings_message(timings: Timings) -> common_pb2.Timings:
    return common_pb2.Timings(**vars(timings))


def image_info(content_type: str, width: int, height: int) -> common_pb2.ImageInfo:
    return common_pb2.ImageInfo(content_type=content_type, width=width, height=height)


def image_info_of(image: DecodedImage) -> common_pb2.ImageInfo:
    return image_info(image.content_type, image.width, image.height)


def subject_info(subject: Subject) -> common_pb2.ImageInfo:
    return image_info(subject.content_type, subject.width, subject.height)


def verify_side(subject: Subject | None) -> instant_pb2.VerifySide:
    if subject is None:
        return instant_pb2.VerifySide(from_template=True)
    return instant_pb2.VerifySide(
        face=face_message(subject.face), face_count=subject.face_count, image=subject_info(subject)
    )
