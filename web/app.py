"""The Web Adapter: the ASGI app between the browser plugin and vigil's gRPC service.

The browser never decides and never sees the credential. A page opens a capture session with its
metadata (the adapter creates the folder, and a challenge when active liveness is on), uploads one
video with its capture metadata, and gets the resolution alone (SAFE, the default). The page's
backend reads the result from the service itself, by ``transaction_id`` and time.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vigil.client.connection import Connection
from vigil.client.errors import VigilRpcError
from vigil.v1 import folders_pb2
from vigil.web.console.app import console_routes
from vigil.web.console.client import ConsoleClient
from vigil.web.service import (
    GESTURE_NAMES,
    PASSIVE_TAG,
    AnalysisTimeout,
    Capture,
    VigilService,
    as_dict,
)
from vigil.web.sessions import AddressLimit, Session, Sessions
from vigil.web.settings import WebSettings

#: The demo page's policy; every response carries it (a page of the adapter runs no inline code,
#: loads nothing from elsewhere and cannot be framed).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
STATIC = {
    "/plugin/vigil-web.js": ("vigil-web.js", "text/javascript; charset=utf-8"),
    "/plugin/vigil-web.css": ("vigil-web.css", "text/css; charset=utf-8"),
    "/demo": ("demo.html", "text/html; charset=utf-8"),
    "/demo/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
}
MAX_META_CHARS = 1024
MAX_CAPTURE_JSON = 256 * 1024
VIDEO_TYPES = ("video/webm", "video/mp4", "video/quicktime")


def problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _static(name: str) -> bytes:
    return resources.files("vigil.web").joinpath("static", name).read_bytes()


class Headers(BaseHTTPMiddleware):
    """CSP and the other hardening headers on every response; CORS for allowed origins only."""

    def __init__(self, app: Any, settings: WebSettings) -> None:
        super().__init__(app)
        self.settings = settings

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        origin = request.headers.get("origin")
        allowed = origin is not None and origin in self.settings.allowed_origins
        if request.method == "OPTIONS":
            response: Response = Response(status_code=204 if allowed else 403)
        else:
            response = await call_next(request)
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)  # the console sets its own
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers.setdefault("Cache-Control", "no-store")
        if allowed and origin is not None:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
            headers["Access-Control-Allow-Methods"] = "GET, POST"
            headers["Access-Control-Allow-Headers"] = "Content-Type, X-Vigil-Session"
        return response


class Adapter:
    def __init__(self, settings: WebSettings, service: VigilService) -> None:
        self.settings = settings
        self.service = service
        self.sessions = Sessions(settings.session_ttl_s, settings.max_open_sessions)
        self.address_limit = AddressLimit(settings.sessions_per_minute)

    def origin_of(self, request: Request) -> str | None:
        """The page's origin if the adapter serves it: one of the allowed origins, or the
        adapter's own (the demo). None for any other (or a request without an Origin)."""
        origin = request.headers.get("origin")
        if origin is None:
            return None
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin == own or origin in self.settings.allowed_origins:
            return origin
        return None

    async def open_session(self, request: Request) -> Response:
        origin = self.origin_of(request)
        if origin is None:
            return problem(403, "this origin may not open capture sessions")
        address = request.client.host if request.client else "unknown"
        if not self.address_limit.allow(address):
            return problem(429, "too many capture sessions from this address; wait a minute")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return problem(400, "the body must be JSON")
        meta = body.get("meta", {}) if isinstance(body, dict) else None
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            return problem(400, "meta must be an object of strings")
        if len(meta) > self.settings.max_meta_keys:
            return problem(400, f"meta has {len(meta)} keys; at most {self.settings.max_meta_keys}")
        if any(len(k) > 64 or len(v) > MAX_META_CHARS for k, v in meta.items()):
            return problem(400, "meta keys are at most 64 characters, values at most 1024")
        if any(k.startswith("web_") for k in meta):
            return problem(400, "meta keys starting with web_ are the adapter's")
        folder_id = await self.service.create_folder({**meta, "web_origin": origin})
        session = self.sessions.new(folder_id, origin)
        # a page may ask for gestures; it may not turn them off where the adapter requires them
        if self.settings.active or body.get("gestures") is True:
            challenge = await self.service.create_challenge(
                self.settings.gestures, self.settings.gesture_count
            )
            session.challenge_id = challenge.id
            session.gestures = [GESTURE_NAMES[g] for g in challenge.gestures]
            session.gesture_window_ms = challenge.gesture_window_ms
            await self.service.set_meta(folder_id, {"web_challenge_id": challenge.id})
        return JSONResponse(
            {
                "session_id": session.id,
                "expires_in_s": self.settings.session_ttl_s,
                "gestures": session.gestures,
                "gesture_window_ms": session.gesture_window_ms,
                "max_video_bytes": self.settings.max_video_bytes,
            },
            status_code=201,
        )

    def _session_for(self, request: Request) -> Session | Response:
        session = self.sessions.get(request.path_params["session_id"])
        if session is None or request.headers.get("x-vigil-session") != session.id:
            return problem(404, "no such capture session")
        if request.headers.get("origin") != session.origin:
            return problem(403, "the capture must come from the page that opened the session")
        if time.monotonic() > session.expires:
            return problem(410, "the capture session has expired; open a new one")
        if session.used:
            return problem(409, "this session has already received its capture")
        return session

    async def capture(self, request: Request) -> Response:
        found = self._session_for(request)
        if isinstance(found, Response):
            return found
        session = found
        declared = int(request.headers.get("content-length") or 0)
        if declared > self.settings.max_video_bytes + MAX_CAPTURE_JSON:
            return problem(413, f"the capture is over {self.settings.max_video_bytes} bytes")
        session.used = True  # before any await: a concurrent second upload is a replay too
        async with request.form(max_files=1, max_fields=2, max_part_size=MAX_CAPTURE_JSON) as form:
            video_part = form.get("video")
            if not isinstance(video_part, UploadFile):
                return problem(400, "the form must carry the video as a file named video")
            video = await video_part.read(self.settings.max_video_bytes + 1)
            content_type = (video_part.content_type or "").split(";")[0]
            raw_capture = form.get("capture")
        if len(video) > self.settings.max_video_bytes:
            return problem(413, f"the capture is over {self.settings.max_video_bytes} bytes")
        if content_type not in VIDEO_TYPES:
            return problem(415, f"the video must be one of {', '.join(VIDEO_TYPES)}")
        try:
            info = json.loads(raw_capture) if isinstance(raw_capture, str) else {}
            capture, described = self._capture_of(info)
        except (ValueError, TypeError):
            return problem(400, "capture must be a JSON object as the plugin sends it")
        if session.challenge_id:
            resolution, full = await self._answer(session, video, content_type, capture, described)
        else:
            resolution, full = await self._analyse(session, video, content_type, capture, described)
        answer: dict[str, object] = {"status": resolution}
        if self.settings.result_mode == "FULL":
            answer["result"] = full
        return JSONResponse(answer)

    def _capture_of(self, info: object) -> tuple[Capture, dict[str, str]]:
        """The service's CaptureInfo and the media metadata kept with the video."""
        if not isinstance(info, dict):
            raise TypeError("capture is not an object")
        label = str(info.get("camera_label", ""))[:256]
        devices = [str(d)[:256] for d in info.get("devices", [])][:32]
        agent = str(info.get("user_agent", ""))[:512]
        platform = str(info.get("platform", ""))[:128]
        stamps = [float(t) for t in info.get("frame_timestamps_ms", [])][:10_000]
        trusted_labels = set(self.settings.trusted_camera_labels)
        trusted = label in trusted_labels
        listed = [d for d in devices if d not in trusted_labels]
        device = " / ".join([platform, *listed]).strip(" /")[:256]
        capture = Capture("" if trusted else label, device, stamps)
        described = {
            "capture_camera_label": label[:MAX_META_CHARS],
            "capture_devices": json.dumps(devices)[:MAX_META_CHARS],
            "capture_user_agent": agent,
            "capture_started_ms": str(info.get("started_ms", ""))[:32],
            "capture_stopped_ms": str(info.get("stopped_ms", ""))[:32],
            "capture_label_trusted": "true" if trusted else "false",
        }
        return capture, described

    async def _analyse(
        self,
        session: Session,
        video: bytes,
        content_type: str,
        capture: Capture,
        described: dict[str, str],
    ) -> tuple[str, dict[str, object]]:
        """Passive: the video into the folder with its capture metadata, then one LIVENESS
        analysis run by the service (its liveness, replay, virtual-camera and timing signals);
        the backend reads the same analysis from the folder."""
        await self.service.upload(
            session.folder_id, video, [PASSIVE_TAG], described, content_type, capture
        )
        analysis = await self.service.liveness(session.folder_id, self.settings.analysis_wait_s)
        resolution = folders_pb2.Resolution.Name(analysis.resolution).removeprefix("RESOLUTION_")
        if resolution != "SUCCESS":
            resolution = "DECLINED"  # FAILED (an unreadable video…) is a decline to the page
        full = as_dict(analysis)
        for result in full.get("results", []):  # type: ignore[attr-defined]
            result.pop("frames", None)
        return resolution, full

    async def _answer(
        self,
        session: Session,
        video: bytes,
        content_type: str,
        capture: Capture,
        described: dict[str, str],
    ) -> tuple[str, dict[str, object]]:
        """Active: the challenge's verdict (its gestures, liveness, replay and the capture's
        virtual-camera and timing checks); the video is kept in the folder (no analysis: it was
        judged once), and the backend reads the verdict with GetChallenge(web_challenge_id)."""
        verdict = await self.service.answer_challenge(session.challenge_id, video, capture)
        await self.service.upload(
            session.folder_id, video, [PASSIVE_TAG], described, content_type, capture
        )
        full = as_dict(verdict)
        full.pop("verdict_token", None)
        return verdict.resolution, full

    async def demo_result(self, request: Request) -> Response:
        """The demo's "backend": the folder by ``transaction_id`` created within the last hour,
        with its LIVENESS analysis (passive) or its challenge's resolution (active), read from
        the service with the adapter's credential, FULL (a real backend keeps this on its
        side)."""
        transaction_id = request.query_params.get("transaction_id", "")
        if not transaction_id:
            return problem(400, "transaction_id is required")
        folder = await self.service.find_folder(transaction_id)
        if folder is None:
            return problem(404, "no folder with this transaction_id in the last hour")
        found = as_dict(folder)
        challenge_id = folder.meta.get("web_challenge_id")
        if challenge_id:  # an active session: the challenge's verdict is its result
            found["challenge"] = as_dict(await self.service.get_challenge(challenge_id))
        return JSONResponse(found)

    async def static(self, request: Request) -> Response:
        name, media_type = STATIC[request.url.path]
        return Response(_static(name), media_type=media_type)


def create_app(settings: WebSettings, service: VigilService | None = None) -> Starlette:
    """The adapter; ``service`` defaults to one connected with the settings' credential."""
    if service is None:
        connection = Connection(
            settings.server, api_key=settings.credential(), tls_ca=settings.tls_ca
        )
        service = VigilService(connection, settings.call_timeout_s)
    adapter = Adapter(settings, service)

    async def rpc_failed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, VigilRpcError)
        status = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 409, "NOT_FOUND": 404}
        code = status.get(exc.code, 502)
        # the service's message for a bad capture (undecodable, too long…); nothing else
        return problem(code, exc.message if code != 502 else "the liveness service failed")

    async def analysis_late(request: Request, exc: Exception) -> Response:
        return problem(
            504, "the analysis is not finished yet; the backend will find it in the folder"
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.close()
        await console.close()

    routes = [
        Route("/api/sessions", adapter.open_session, methods=["POST"]),
        Route("/api/sessions/{session_id}/capture", adapter.capture, methods=["POST"]),
        Route("/plugin/vigil-web.js", adapter.static),
        Route("/plugin/vigil-web.css", adapter.static),
        Route("/healthz", lambda r: JSONResponse({"ok": True})),
    ]
    # the operator console: people sign in; each call carries the person's own token
    console = ConsoleClient(
        Connection(settings.server, tls_ca=settings.tls_ca), settings.call_timeout_s
    )
    if settings.demo:
        routes += [
            Route("/demo", adapter.static),
            Route("/demo/demo.js", adapter.static),
            Route("/demo/result", adapter.demo_result),
        ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Headers, settings=settings)],
        exception_handlers={VigilRpcError: rpc_failed, AnalysisTimeout: analysis_late},
        lifespan=lifespan,
    )
    app.router.routes.extend(console_routes(console))
    app.state.adapter = adapter
    return app
