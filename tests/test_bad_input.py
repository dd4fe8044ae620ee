"""Every bad input gets a precise status, a clear message and an ErrorInfo reason, through the real
server and the generated stub, and the server keeps serving afterwards."""

from __future__ import annotations

import functools
import random
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import cv2
import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.conftest import FACES, ServerThread, make_settings, read
from vigil.v1 import common_pb2, instant_pb2, instant_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
STRICT = common_pb2.SUBJECT_POLICY_REQUIRE_SINGLE
SMALL_LIMIT = 150_000  # bytes, for the second server

#: A unary RPC of a stub, called as ``rpc(request, timeout=...)``.
Rpc = Callable[..., object]


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


def photo(name: str) -> np.ndarray:
    image = cv2.imread(str(FACES / name))
    assert image is not None
    return image


def resized(image: np.ndarray, height: int) -> np.ndarray:
    return cv2.resize(image, (round(image.shape[1] * height / image.shape[0]), height))


GOOD = encode(resized(photo("obama.jpg"), 400), ".jpg")  # a small good image, under SMALL_LIMIT
GRADIENT = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))


def background() -> bytes:
    """Flag and curtain from the left of obama.jpg: a real photo without a face."""
    return encode(photo("obama.jpg")[:500, :300], ".jpg")


def two_faces() -> bytes:
    """obama.jpg and biden.jpg side by side at the same height; obama's face is the larger."""
    return encode(
        np.hstack([resized(photo("obama.jpg"), 600), resized(photo("biden.jpg"), 600)]), ".jpg"
    )


def png_declaring(width: int, height: int) -> bytes:
    """A complete, well-formed small PNG whose IHDR (with a correct CRC) declares width×height."""
    data = bytearray(encode(np.zeros((64, 64, 3), np.uint8), ".png"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A complete small baseline JPEG whose SOF0 frame header declares width×height."""
    data = bytearray(encode(np.zeros((64, 64, 3), np.uint8), ".jpg"))
    sof = data.index(b"\xff\xc0")
    assert struct.unpack(">HH", data[sof + 5 : sof + 9]) == (64, 64)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def heic() -> bytes:
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00mif1heic" + bytes(200)


def reason_of(error: grpc.RpcError) -> str | None:
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "vigil.v1"
            reason: str = info.reason
            return reason
    return None


def expect_error(
    stub: instant_pb2_grpc.InstantStub,
    call: Rpc,
    request: Message,
    code: grpc.StatusCode,
    *words: str,
    reason: str | None = None,
) -> grpc.RpcError:
    """``call(request)`` fails with ``code``, its message holds ``words``, and then a good call on
    the same server still succeeds."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    error = caught.value
    details = error.details() or ""
    assert error.code() == code, f"{error.code()}: {details}"
    for word in words:
        assert word in details, f"{word!r} not in {details!r}"
    if reason is not None:
        assert reason_of(error) == reason, details
    reply = stub.Detect(instant_pb2.DetectRequest(image=common_pb2.Media(data=GOOD)), timeout=30)
    assert len(reply.faces) == 1
    return error


class Fails(Protocol):
    """``expect_error`` bound to the session's stub."""

    def __call__(
        self,
        call: Rpc,
        request: Message,
        code: grpc.StatusCode,
        *words: str,
        reason: str | None = None,
    ) -> grpc.RpcError: ...


@pytest.fixture
def fails(stub: instant_pb2_grpc.InstantStub) -> Fails:
    return functools.partial(expect_error, stub)


def image_calls(
    stub: instant_pb2_grpc.InstantStub,
) -> dict[str, tuple[Rpc, Callable[[common_pb2.Media], Message]]]:
    """(rpc, request factory) for each single-image RPC."""
    return {
        "Detect": (stub.Detect, lambda m: instant_pb2.DetectRequest(image=m)),
        "CheckLiveness": (stub.CheckLiveness, lambda m: instant_pb2.LivenessRequest(image=m)),
        "ExtractTemplate": (stub.ExtractTemplate, lambda m: instant_pb2.TemplateRequest(image=m)),
    }


MEDIA, UNSUPPORTED = "INVALID_MEDIA", "UNSUPPORTED_MEDIA_TYPE"
# name: (bytes, words the message must hold, ErrorInfo reason)
BAD_MEDIA: dict[str, tuple[Callable[[], bytes], tuple[str, ...], str]] = {
    "empty": (lambda: b"", ("image.data is required", "empty"), "INVALID_ARGUMENT"),
    "random": (lambda: random.Random(7).randbytes(4096), ("no known image format",), MEDIA),
    "text": (lambda: b"I am not a picture\n" * 10, ("no known image format",), MEDIA),
    "truncated-jpeg": (lambda: read(FACES / "obama.jpg")[:139_961], ("truncated JPEG",), MEDIA),
    "gif": (lambda: encode(GRADIENT, ".gif"), ("GIF is not supported", "JPEG"), UNSUPPORTED),
    "tiff": (lambda: encode(GRADIENT, ".tiff"), ("TIFF is not supported",), UNSUPPORTED),
    "heic": (heic, ("HEIC", "not supported"), UNSUPPORTED),
    "1x1": (lambda: encode(np.zeros((1, 1, 3), np.uint8), ".png"), ("1×1 pixels",), MEDIA),
}


@pytest.mark.parametrize("rpc", ["Detect", "CheckLiveness", "ExtractTemplate"])
@pytest.mark.parametrize("case", list(BAD_MEDIA))
def test_bad_media_is_invalid_argument(
    stub: instant_pb2_grpc.InstantStub, fails: Fails, case: str, rpc: str
) -> None:
    make, words, reason = BAD_MEDIA[case]
    call, request = image_calls(stub)[rpc]
    fails(call, request(common_pb2.Media(data=make())), INVALID, *words, reason=reason)


@pytest.mark.parametrize("make", [png_declaring, jpeg_declaring], ids=["png", "jpeg"])
def test_decompression_bomb_is_refused_from_its_header(
    stub: instant_pb2_grpc.InstantStub, fails: Fails, make: Callable[[int, int], bytes]
) -> None:
    data = make(30_000, 30_000)
    assert len(data) < 5_000
    started = time.perf_counter()
    request = instant_pb2.LivenessRequest(image=common_pb2.Media(data=data))
    fails(stub.CheckLiveness, request, INVALID, "30000×30000", reason="MEDIA_TOO_LARGE")
    assert time.perf_counter() - started < 3.0  # 900 Mpx never decoded


def test_missing_image_field(stub: instant_pb2_grpc.InstantStub, fails: Fails) -> None:
    fails(stub.CheckLiveness, instant_pb2.LivenessRequest(), INVALID, "image.data is required")
    fails(stub.Detect, instant_pb2.DetectRequest(), INVALID, "image.data is required")


def test_unknown_subject_policy(stub: instant_pb2_grpc.InstantStub, fails: Fails) -> None:
    unknown = common_pb2.SubjectPolicy.ValueType(7)
    request = instant_pb2.LivenessRequest(image=common_pb2.Media(data=GOOD), subject_policy=unknown)
    fails(stub.CheckLiveness, request, INVALID, "subject_policy 7", "SUBJECT_POLICY_REQUIRE_SINGLE")


@pytest.mark.parametrize(
    "make", [lambda: encode(GRADIENT, ".png"), background], ids=["gradient", "background"]
)
def test_image_without_face(
    stub: instant_pb2_grpc.InstantStub, fails: Fails, make: Callable[[], bytes]
) -> None:
    media = common_pb2.Media(data=make())
    assert len(stub.Detect(instant_pb2.DetectRequest(image=media)).faces) == 0  # not an error
    for call, request in list(image_calls(stub).values())[1:]:
        fails(call, request(media), PRECONDITION, "no face found", reason="NO_FACE")


def test_two_faces(stub: instant_pb2_grpc.InstantStub, fails: Fails) -> None:
    media = common_pb2.Media(data=two_faces())
    detected = stub.Detect(instant_pb2.DetectRequest(image=media)).faces
    assert len(detected) == 2
    strict = STRICT
    cases: list[tuple[Rpc, Message]] = [
        (stub.CheckLiveness, instant_pb2.LivenessRequest(image=media, subject_policy=strict)),
        (stub.ExtractTemplate, instant_pb2.TemplateRequest(image=media, subject_policy=strict)),
    ]
    for call, request in cases:
        fails(call, request, PRECONDITION, "2 faces", "exactly one", reason="MULTIPLE_FACES")
    reply = stub.CheckLiveness(instant_pb2.LivenessRequest(image=media))
    assert reply.face_count == 2
    assert reply.face.box == detected[0].box  # the largest
    assert (
        detected[0].box.width * detected[0].box.height
        > detected[1].box.width * detected[1].box.height
    )
    assert detected[0].box.x < 480  # obama, on the left


def side(data: bytes) -> instant_pb2.FaceInput:
    return instant_pb2.FaceInput(image=common_pb2.Media(data=data))


def template_side(
    values: list[float], model: str = "dlib-resnet", version: str = "v1"
) -> instant_pb2.FaceInput:
    return instant_pb2.FaceInput(
        template=common_pb2.Template(values=values, model=model, model_version=version)
    )


def test_verify_says_which_side_failed(stub: instant_pb2_grpc.InstantStub, fails: Fails) -> None:
    faceless = encode(GRADIENT, ".png")
    for a, b, prefix in [(GOOD, faceless, "b.image:"), (faceless, GOOD, "a.image:")]:
        request = instant_pb2.VerifyRequest(a=side(a), b=side(b))
        error = fails(stub.Verify, request, PRECONDITION, "no face found", reason="NO_FACE")
        assert (error.details() or "").startswith(prefix)
    truncated = read(FACES / "obama.jpg")[:100_000]
    request = instant_pb2.VerifyRequest(a=side(truncated), b=side(GOOD))
    error = fails(
        stub.Verify, request, INVALID, "a.image:", "truncated JPEG", reason="INVALID_MEDIA"
    )
    request = instant_pb2.VerifyRequest(a=side(GOOD), b=side(b""))
    fails(stub.Verify, request, INVALID, "b.image.data is required")
    strict = instant_pb2.VerifyRequest(a=side(GOOD), b=side(two_faces()), subject_policy=STRICT)
    error = fails(stub.Verify, strict, PRECONDITION, "2 faces", reason="MULTIPLE_FACES")
    assert (error.details() or "").startswith("b.image:")


def test_verify_without_a_side(stub: instant_pb2_grpc.InstantStub, fails: Fails) -> None:
    fails(
        stub.Verify,
        instant_pb2.VerifyRequest(b=side(GOOD)),
        INVALID,
        "a is required",
        "a.template",
    )
    fails(stub.Verify, instant_pb2.VerifyRequest(a=side(GOOD)), INVALID, "b is required")


@pytest.fixture(scope="module")
def good_template(stub: instant_pb2_grpc.InstantStub) -> list[float]:
    reply = stub.ExtractTemplate(instant_pb2.TemplateRequest(image=common_pb2.Media(data=GOOD)))
    return list(reply.template.values)


def test_bad_templates(
    stub: instant_pb2_grpc.InstantStub, fails: Fails, good_template: list[float]
) -> None:
    assert len(good_template) == 128
    cases = [
        (template_side(good_template[:127]), ["127 values", "128"]),
        (template_side([*good_template, 0.0]), ["129 values"]),
        (template_side([]), ["0 values"]),
        (template_side(good_template, "arcface", "r100"), ["arcface:r100", "dlib-resnet:v1"]),
        (template_side(good_template, "dlib-resnet", "v2"), ["dlib-resnet:v2"]),
        (template_side([float("nan"), *good_template[1:]]), ["NaN"]),
        (template_side([float("inf"), *good_template[1:]]), ["infinite"]),
    ]
    for bad, words in cases:
        request = instant_pb2.VerifyRequest(a=bad, b=side(GOOD))
        fails(stub.Verify, request, INVALID, *words, reason="INVALID_TEMPLATE")
    reply = stub.Verify(instant_pb2.VerifyRequest(a=template_side(good_template), b=side(GOOD)))
    assert reply.match and reply.distance < 1e-4


@pytest.fixture(scope="module")
def small_server(models_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(make_settings(models_dir, max_image_bytes=SMALL_LIMIT)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def small_stub(small_server: ServerThread) -> Iterator[instant_pb2_grpc.InstantStub]:
    with small_server.channel() as channel:
        yield instant_pb2_grpc.InstantStub(channel)


def test_image_over_the_byte_limit(small_stub: instant_pb2_grpc.InstantStub) -> None:
    info = small_stub.GetServerInfo(instant_pb2.GetServerInfoRequest())
    assert info.max_image_bytes == SMALL_LIMIT
    big = read(FACES / "obama.jpg")
    assert len(GOOD) < SMALL_LIMIT < len(big)
    request: Message = instant_pb2.LivenessRequest(image=common_pb2.Media(data=big))
    expect_error(
        small_stub, small_stub.CheckLiveness, request, INVALID,
        f"{len(big)} bytes", f"limit is {SMALL_LIMIT} bytes", reason="MEDIA_TOO_LARGE",
    )  # fmt: skip
    request = instant_pb2.VerifyRequest(a=side(GOOD), b=side(big))
    expect_error(
        small_stub, small_stub.Verify, request, INVALID, "b.image:", reason="MEDIA_TOO_LARGE"
    )


def test_message_over_the_grpc_limit(small_stub: instant_pb2_grpc.InstantStub) -> None:
    huge = b"\xff\xd8\xff" + bytes(2 * SMALL_LIMIT + (2 << 20))  # past 2 × limit + 1 MiB
    request = instant_pb2.LivenessRequest(image=common_pb2.Media(data=huge))
    expect_error(
        small_stub,
        small_stub.CheckLiveness,
        request,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    )
