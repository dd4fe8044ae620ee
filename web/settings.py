"""The Web Adapter's settings (``VIGIL_WEB_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split(value: object) -> object:
    """A comma-separated environment value as a list."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


#: A list given as "a, b, c".
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split)]


class WebSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_WEB_", extra="forbid")

    host: str = "127.0.0.1"
    """Address the adapter listens on."""
    port: int = 8080
    """HTTP port of the adapter."""
    server: str = "localhost:50051"
    """The vigil gRPC service (host:port)."""
    api_key: str | None = None
    """The service credential (a SERVICE key); held by the adapter, never sent to a browser."""
    api_key_file: Path | None = None
    """A file holding the service credential (instead of ``api_key``)."""
    tls_ca: Path | None = None
    """PEM CA of the service's certificate: TLS to the service."""
    allowed_origins: CommaList = Field(default_factory=list)
    """Origins (scheme://host:port) whose pages may use the adapter, comma-separated; a request
    from any other origin is refused with 403. Empty: only the adapter's own origin."""
    result_mode: Literal["SAFE", "FULL"] = "SAFE"
    """What the browser receives: SAFE (the resolution alone) or FULL (scores and signals too;
    development only)."""
    active: bool = False
    """Active liveness: each session gets a challenge (gestures) from the service."""
    gestures: CommaList = Field(default_factory=list)
    """Gestures the service may choose from for a challenge (empty: the service's own list)."""
    gesture_count: int = Field(default=2, ge=0, le=3)
    """Gestures per challenge (0: the service chooses 2 or 3)."""
    session_ttl_s: float = Field(default=300.0, gt=0)
    """A capture session must upload within this many seconds of its creation."""
    max_video_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """Largest capture upload accepted (413 beyond)."""
    max_meta_keys: int = Field(default=16, gt=0)
    """Most metadata keys a page may set on its session's folder."""
    sessions_per_minute: int = Field(default=30, ge=0)
    """Capture sessions one client address may open per minute (429 beyond; 0: no limit)."""
    max_open_sessions: int = Field(default=10_000, gt=0)
    """Sessions remembered at once (the oldest are forgotten first)."""
    trusted_camera_labels: CommaList = Field(default_factory=list)
    """Camera labels that are not reported to the service's virtual-camera check (tests: the
    label of Chromium's fake camera). Never set in production."""
    demo: bool = False
    """Serve the demo page and its backend (/demo), which shows FULL results to the browser."""
    call_timeout_s: float = Field(default=120.0, gt=0)
    """Deadline of each call to the service."""
    analysis_wait_s: float = Field(default=120.0, gt=0)
    """How long a capture waits for its LIVENESS analysis to be final before answering 504 (the
    analysis goes on; the backend reads its result from the folder)."""

    def credential(self) -> str:
        if self.api_key:
            return self.api_key
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip()
        raise ValueError("set VIGIL_WEB_API_KEY or VIGIL_WEB_API_KEY_FILE (a SERVICE key)")
