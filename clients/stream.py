"""``vigil stream FILE``: play a video file into the live stream at its native frame rate and
print the updates; and ``play_video``, the frame source it uses (also for tests and benchmarks).

Decoding the file needs PyAV and OpenCV, the ``stream`` extra of vigil-client (``pip install
'vigil-client[stream]'``); the frames go out as JPEG, upright (the file's rotation applied), each
stamped with the moment it was sent, like a camera would.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vigil.client.commands import DEFAULT_SERVER, add_connection_arguments, connection_of
from vigil.client.errors import VigilRpcError
from vigil.client.results import as_json
from vigil.client.sync import VigilClient

_ROTATE = {90: 0, 180: 1, 270: 2}  # clockwise degrees → cv2.ROTATE_* codes
INSTALL_HINT = (
    "vigil stream needs PyAV and OpenCV to read video files; install the stream extra: "
    "pip install 'vigil-client[stream]'"
)


def play_video(
    source: str | Path | bytes, realtime: bool = True, quality: int = 90
) -> Iterator[tuple[bytes, float]]:
    """(JPEG, capture time in ms) for each frame of the video, paced at its native rate.

    Raises ImportError (naming the extra to install) without PyAV or OpenCV, when called rather
    than at the first frame; the file is opened at the first frame.
    """
    try:  # the optional `stream` extra, not dependencies of vigil-client
        import av
        import cv2
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc

    def frames() -> Iterator[tuple[bytes, float]]:
        opened = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        with av.open(opened, "r") as container:
            stream = container.streams.video[0]
            started = time.monotonic()
            first: float | None = None
            for frame in container.decode(stream):
                t = float(frame.time or 0.0)
                first = t if first is None else first
                if realtime:
                    wait = started + (t - first) - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                bgr = frame.to_ndarray(format="bgr24")
                clockwise = round(-float(frame.rotation or 0.0) / 90.0) % 4 * 90
                upright = cv2.rotate(bgr, _ROTATE[clockwise]) if clockwise else bgr
                ok, jpeg = cv2.imencode(".jpg", upright, [cv2.IMWRITE_JPEG_QUALITY, quality])
                if ok:
                    yield jpeg.tobytes(), time.monotonic() * 1000.0

    return frames()


def _line(update: dict[str, Any]) -> str:
    counts = (
        f"received={update['frames_received']} processed={update['frames_processed']} "
        f"skipped={update['frames_skipped']} with_face={update['frames_with_face']}"
    )
    if not update["final"]:
        frame = update["frame"] or {}
        return f"... score={update['score']:.3f} frame={frame.get('index', -1)} {counts}"
    signals = [s["name"] for s in update["signals"] if s["triggered"]]
    return (
        f"{update['outcome']} score={update['score']:.4f} threshold={update['threshold']:.2f} "
        f"{counts} ({update['reason']})" + (f" signals={','.join(signals)}" if signals else "")
    )


def run_stream(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        frames = play_video(path)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"error: cannot read {path}", file=sys.stderr)
        return 2
    try:
        with VigilClient(timeout=args.timeout, connection=connection_of(args)) as client:
            for update in client.stream_liveness(frames, args.camera, args.device):
                result = as_json(update)
                if args.json:
                    print(json.dumps(result), flush=True)
                else:
                    print(_line(result), flush=True)
    except VigilRpcError as error:
        print(f"{error.code}: {error.message}", file=sys.stderr)
        return 1
    return 0


def add_stream_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_text = "play a video file into the live stream and print the updates"
    parser = subparsers.add_parser("stream", help=help_text, description=help_text)
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON object per update")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--camera", default="", help="camera label to report")
    parser.add_argument("--device", default="", help="device to report")
    add_connection_arguments(parser)
    parser.set_defaults(handler=run_stream)
