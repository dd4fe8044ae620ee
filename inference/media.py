"""Image decoding with limits: sniff the real type, read the size from the header, then decode.

Limits are checked on the header before any pixel is decoded, so a "decompression bomb" (a tiny
file that declares 30000×30000 pixels) costs nothing. EXIF orientation is honoured: OpenCV's
``imdecode`` applies it, so boxes and landmarks refer to the upright image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from vigil.inference.errors import InvalidMedia, MediaTooLarge, UnsupportedMedia

#: Types vigil decodes, by sniffed MIME type.
SUPPORTED_IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/x-portable-anymap",
)

#: Types recognised only to refuse them with a precise message.
_KNOWN_UNSUPPORTED = {
    "image/gif": "GIF",
    "image/tiff": "TIFF",
    "image/heic": "HEIC/HEIF",
    "image/avif": "AVIF",
    "video/mp4": "MP4 video",
    "application/pdf": "PDF",
}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_side: int = 16_384
    min_side: int = 32


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, upright BGR image (uint8, H×W×3) and what was learnt on the way.

    A JPEG may be decoded at a reduced scale (``reduction`` 2, 4 or 8: libjpeg's DCT scaling,
    which costs a fraction of a full decode); ``width`` and ``height`` are always the full
    upright image's, and ``reduction`` maps ``bgr``'s pixels to it (full = reduced × reduction).
    """

    bgr: np.ndarray
    content_type: str
    #: The full upright image's (width, height) when ``bgr`` is not the full image.
    full_size: tuple[int, int] | None = None
    reduction: int = 1

    @property
    def width(self) -> int:
        return self.full_size[0] if self.full_size else int(self.bgr.shape[1])

    @property
    def height(self) -> int:
        return self.full_size[1] if self.full_size else int(self.bgr.shape[0])

    def without_pixels(self) -> DecodedImage:
        """The same image's description without its pixels (so they can be freed), for callers
        that only report its type and size."""
        return DecodedImage(
            np.empty((0, 0, 3), np.uint8), self.content_type, (self.width, self.height)
        )


#: BITMAPCOREHEADER, BITMAPINFOHEADER and its successors: what follows "BM" in a real BMP.
_BMP_DIB_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)


def sniff(data: bytes) -> str | None:
    """The MIME type the bytes really are, from their magic numbers; ``None`` when unknown."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"BM") and len(data) >= 26 and head[14] in _BMP_DIB_HEADER_SIZES:
        return "image/bmp"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "image/x-portable-anymap"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "image/heic"
        if brand in (b"avif", b"avis"):
            return "image/avif"
        return "video/mp4"
    if head.startswith(b"%PDF"):
        return "application/pdf"
    return None


VIDEO_TYPES = ("video/mp4", "video/quicktime", "video/webm")


def unsupported_name(data: bytes) -> str | None:
    """A readable name for media vigil recognises but does not read (GIF, TIFF, HEIC…)."""
    kind = sniff(data)
    return _KNOWN_UNSUPPORTED.get(kind) if kind else None


def sniff_kind(data: bytes) -> tuple[str, str] | None:
    """("IMAGE" | "VIDEO", MIME type) for media vigil can store, or None."""
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "VIDEO", "video/webm"
    if data[4:8] == b"ftyp" and data[8:12] == b"qt  ":
        return "VIDEO", "video/quicktime"
    kind = sniff(data)
    if kind in SUPPORTED_IMAGE_TYPES:
        return "IMAGE", kind
    if kind == "video/mp4":
        return "VIDEO", kind
    return None


def _jpeg_scan(data: bytes) -> tuple[tuple[int, int], int]:
    """((width, height) from the first SOF segment, offset of the first scan's data).

    Segments are walked one by one, so an EXIF thumbnail (a whole JPEG inside APP1) is skipped.
    """
    pos = 2
    size: tuple[int, int] | None = None
    length = len(data)
    while pos + 4 <= length:
        if data[pos] != 0xFF:
            raise InvalidMedia("corrupt JPEG: bad segment marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (seg_len,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if seg_len < 2:
            raise InvalidMedia("corrupt JPEG: bad segment length")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if pos + 9 > length:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows until EOI
            if size is None:
                raise InvalidMedia("corrupt JPEG: scan before frame header")
            return size, pos + 2 + seg_len
        pos += 2 + seg_len
    raise InvalidMedia("truncated JPEG: no image data")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InvalidMedia("corrupt PNG: no IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _png_complete(data: bytes) -> None:
    if data.rfind(b"IEND", 33) < 0:
        raise InvalidMedia("truncated PNG: the file ends before its IEND chunk")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    return _jpeg_scan(data)[0]


def _jpeg_complete(data: bytes) -> None:
    """A JPEG is whole when an end marker follows its first scan."""
    if data.find(b"\xff\xd9", _jpeg_scan(data)[1]) < 0:
        raise InvalidMedia("truncated JPEG: the image data ends before its end marker")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise InvalidMedia("corrupt WebP: unknown or short header")


def _bmp_size(data: bytes) -> tuple[int, int]:
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def _pnm_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PBM/PGM/PPM header (comments allowed)."""
    tokens: list[bytes] = []
    for line in data[2:512].splitlines():
        line = line.split(b"#", 1)[0]
        tokens.extend(line.split())
        if len(tokens) >= 2:
            break
    try:
        return int(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        raise InvalidMedia("corrupt PNM: no size in header") from None


_HEADER_READERS = {
    "image/jpeg": _jpeg_size,
    "image/png": _png_size,
    "image/webp": _webp_size,
    "image/bmp": _bmp_size,
    "image/x-portable-anymap": _pnm_size,
}


#: Cheap checks that the file was not cut short, run after the size limits passed.
_COMPLETENESS_CHECKS = {"image/jpeg": _jpeg_complete, "image/png": _png_complete}


def probe(data: bytes, limits: ImageLimits) -> tuple[str, int, int]:
    """Sniff and read the declared size; raise before decoding if anything is off."""
    if not data:
        raise InvalidMedia("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise MediaTooLarge(
            f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes "
            "(VIGIL_MAX_IMAGE_BYTES)"
        )
    kind = sniff(data)
    if kind is None:
        raise InvalidMedia("not an image vigil can read: the bytes match no known image format")
    if kind not in _HEADER_READERS:
        raise UnsupportedMedia(
            f"{_KNOWN_UNSUPPORTED.get(kind, kind)} is not supported; "
            "send JPEG, PNG, WebP, BMP or PNM"
        )
    try:
        width, height = _HEADER_READERS[kind](data)
    except struct.error:
        raise InvalidMedia(f"corrupt {kind}: header is cut short") from None
    if width <= 0 or height <= 0:
        raise InvalidMedia(f"corrupt {kind}: declares {width}×{height} pixels")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise MediaTooLarge(
            f"image declares {width}×{height} pixels; the limits are {limits.max_side} px a side "
            f"and {limits.max_pixels} pixels (VIGIL_MAX_IMAGE_SIDE, VIGIL_MAX_IMAGE_PIXELS)"
        )
    completeness_check = _COMPLETENESS_CHECKS.get(kind)
    if completeness_check is not None:
        completeness_check(data)
    if width < limits.min_side or height < limits.min_side:
        raise InvalidMedia(
            f"image is {width}×{height} pixels; at least {limits.min_side}×{limits.min_side} "
            "is needed to find a face"
        )
    return kind, width, height


#: OpenCV's flags for a JPEG decoded at 1/n scale (DCT scaling; EXIF orientation still applied).
_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def reduced_side(side: int, reduction: int) -> int:
    """A side's length in a JPEG decoded at 1/``reduction`` (libjpeg rounds up)."""
    return -(-side // reduction)


def jpeg_reduction(kind: str, longer_side: int, needed_side: int) -> int:
    """The largest DCT reduction (1, 2, 4 or 8) that still leaves ``needed_side`` pixels on the
    longer side; 1 for anything but JPEG (other formats decode in full whatever the flag)."""
    if kind != "image/jpeg":
        return 1
    for reduction in (8, 4, 2):
        if reduced_side(longer_side, reduction) >= needed_side:
            return reduction
    return 1


def decode_image(data: bytes, limits: ImageLimits, reduction: int = 1) -> DecodedImage:
    """Decode ``data`` into an upright BGR image, or raise a precise :class:`InvalidMedia`.

    ``reduction`` (2, 4 or 8) decodes a JPEG at that fraction of its size; ignored otherwise.
    """
    kind, width, height = probe(data, limits)
    return decode_probed(data, kind, width, height, reduction)


def decode_probed(
    data: bytes, kind: str, width: int, height: int, reduction: int = 1
) -> DecodedImage:
    """:func:`decode_image` of bytes :func:`probe` read as ``kind``, ``width``×``height``."""
    reduction = reduction if kind == "image/jpeg" else 1
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, _REDUCED_FLAGS[reduction])
    if image is None:
        raise InvalidMedia(f"corrupt {kind}: the decoder could not read the image data")
    # EXIF orientation may swap the sides; anything else means the header lied.
    expected = (reduced_side(width, reduction), reduced_side(height, reduction))
    if sorted(image.shape[:2]) != sorted(expected):
        raise InvalidMedia(
            f"corrupt {kind}: header says {width}×{height}, data decodes to "
            f"{image.shape[1]}×{image.shape[0]}"
            + (f" at 1/{reduction} scale" if reduction > 1 else "")
        )
    if reduction == 1:
        return DecodedImage(bgr=image, content_type=kind)
    upright = (width, height) if image.shape[1] == expected[0] else (height, width)
    return DecodedImage(bgr=image, content_type=kind, full_size=upright, reduction=reduction)
