"""Server settings, read from ``VIGIL_*`` environment variables (and an optional ``.env``).

Built once in ``main()`` and passed down; nothing reads the environment elsewhere.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: cgroup v2's CPU quota of this container ("max 100000" when unlimited).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(cpu_max: Path | None = None) -> float | None:
    """CPUs the container's quota allows (``quota / period``), or None without a quota."""
    try:
        quota, period = (cpu_max or CGROUP_CPU_MAX).read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max" or int(period) <= 0:
        return None
    return int(quota) / int(period)


def _default_threads() -> int:
    """Cores this process may use: the affinity mask, capped by a cgroup CPU quota (a container's
    CPU limit), rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores or 1, math.ceil(limit))
    return max(1, cores or 1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_file=".env", extra="ignore", use_attribute_docstrings=True
    )

    host: str = "[::]"
    """Address the gRPC server binds to."""
    port: int = 50051
    """gRPC port."""
    metrics_port: int = 9095
    """Port of the Prometheus ``/metrics`` endpoint; 0 turns it off."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics endpoint binds to (all IPv4 addresses, as the gRPC default binds all;
    127.0.0.1 keeps it local)."""
    data_dir: Path = Path("var")
    """Where vigil keeps its state (models, database, blobs) unless told otherwise; a relative path
    is resolved once, against the directory vigil starts in."""
    models_dir: Path | None = None
    """Installed model files; default ``<data_dir>/models``."""
    model_mirror: str | None = None
    """Mirror to install models from: a directory or a base URL. Default ``../shared/models``."""
    backend: str = "auto"
    """Inference backend: auto, openvino, onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt or
    tensorrt. auto runs the fastest CPU backend that passes the accuracy gate on this CPU: OpenVINO
    in bf16 where the CPU has native bf16 (AVX-512 BF16 or AMX), else ONNX Runtime fp32 (and ONNX
    Runtime if OpenVINO fails to load, with a warning). GetServerInfo, the start-up log and the
    vigil_backend_info metric say which one runs."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Numeric precision. auto: bf16 for OpenVINO on a CPU with native bf16, fp32 otherwise (and
    for TensorRT). fp32 forces full precision (with backend auto: ONNX Runtime fp32, what CPUs
    without bf16 run); bf16 (OpenVINO) and fp16 (OpenVINO on CPUs with native fp16, TensorRT) are
    refused where the hardware lacks them."""
    engine_cache_dir: Path | None = None
    """Where compiled models are cached (TensorRT engines; OpenVINO in its ``openvino``
    sub-directory); default ``<data_dir>/engines``."""
    intra_op_threads: int = Field(default_factory=_default_threads)
    """Threads a CPU backend call may use when it runs alone in the server (lowest latency);
    calls beside others use one thread each (ONNX Runtime; OpenVINO: one stream each). Default:
    the number of cores (a container's CPU limit counts: the cgroup quota, rounded up)."""
    worker_threads: int = 0
    """Threads for decoding, detection, alignment and backend calls; 0: detector instances + 4."""
    detector_instances: int = Field(
        default_factory=lambda: _default_threads() + 1,
        json_schema_extra={"default_doc": "number of cores + 1"},
    )
    """Images decoded and detected at once, one thread each (YuNet's ONNX has a fixed batch of
    1). Default: the number of cores + 1."""
    model_instances: int = 0
    """Batches of each per-face model that may run at once; 0: 2 on a GPU backend (one batch
    computes while the next one's copies run; each is a TensorRT execution context and CUDA
    stream), 1 on a CPU one (a batch uses the cores it is given)."""
    max_batch_size: int = 32
    """Largest batch for the per-face models (embedding, liveness); 1 turns batching off."""
    max_queue_delay_ms: float = 0.0
    """How long a batch always waits to fill; 0 takes what is queued now (no added latency)."""
    batch_fill_wait_ms: float = 20.0
    """How long a batch of a per-face model may wait for faces still being detected; a request
    alone in the server never waits (0: never wait)."""
    max_inflight_images: int = 128
    """Images the API's calls (Instant, Collections) may hold in the engine at once; beyond, calls
    get RESOURCE_EXHAUSTED at once, before any decoding (0: no limit). Background analyses are
    bounded by the analysis workers instead."""
    worker_nice: int = 5
    """Nice value of the engine's threads, so the event loop that receives, refuses and answers
    calls keeps the CPU it needs under overload (0: same priority)."""
    max_queue_size: int = 256
    """Requests that may wait per model before new ones get RESOURCE_EXHAUSTED."""
    max_image_bytes: int = 20 * 1024 * 1024
    """Largest image accepted, in bytes."""
    max_image_pixels: int = 50_000_000
    """Largest image accepted, in pixels (checked on the header, before decoding)."""
    max_image_side: int = 16_384
    """Largest image side accepted, in pixels."""
    max_message_bytes: int | None = None
    """Largest gRPC message; default twice ``max_image_bytes`` plus 1 MiB (a two-image Verify)."""
    detect_max_side: int = Field(default=640, ge=32)
    """Images are scaled down to this longer side for detection (boxes are in full pixels)."""
    detect_min_side: int = Field(default=320, ge=1)
    """Images whose longer side is smaller are scaled up to it for detection (tiny photos)."""
    min_face_px: float = 20.0
    """Faces smaller than this (shorter box side, in pixels) are ignored."""
    detect_max_tiles: int = Field(default=20, ge=0)
    """When detection finds no face, or only small ones, in a large photo, it looks again at up to
    4× the scale (at most full resolution) in tiles of ``detect_max_side`` pixels; at most this
    many tiles (the scale is lowered to fit), 0 turns the closer look off. At 20, faces of
    50 px are found in 50 MP photos (benchmarks/decode_accuracy.py)."""
    decode_pixel_budget: int | None = Field(default=None, ge=0)
    """Decoded pixels all images in the engine may hold at once (0: no limit); an image waits
    (first come, first served) for its share, and one still waiting at its deadline gets
    RESOURCE_EXHAUSTED. At least ``max_image_pixels`` plus ``detect_max_tiles`` tiles of
    ``detect_max_side``²; unset: twice ``max_image_pixels`` (100 MP), or that minimum if more."""
    liveness_threshold: float = 0.5
    """A face is live when its real probability is at least this."""
    match_distance_threshold: float = 0.6
    """Two faces match when their embedding distance is below this (dlib's own threshold)."""
    max_video_bytes: int = 32 * 1024 * 1024
    """Largest video analysed, in bytes (keep it under the gRPC message limit for Instant)."""
    max_video_duration_s: float = 30.0
    """Longest video accepted, in seconds (checked on the header, then while decoding)."""
    max_video_side: int = 4096
    """Largest video side accepted, in pixels (checked on the header: 8K is refused)."""
    max_video_frames: int = 1800
    """Most frames a video may hold (checked on the header, then while decoding)."""
    video_sample_frames: int = 12
    """Frames of a video that go to the models, evenly spread: the cost bound per video."""
    video_sample_fps: float = 0.0
    """If > 0: sample this many frames per second of video, at most video_sample_frames."""
    video_min_face_frames: int = 3
    """Sampled frames (or stream frames) with a face needed for a video verdict."""
    stream_min_frames: int = 8
    """Live stream: frames with a face before a verdict may be given."""
    stream_max_frames: int = 40
    """Live stream: processed frames after which the verdict is given whatever the certainty."""
    stream_max_seconds: float = 15.0
    """Live stream: wall-clock seconds after which the stream ends with a verdict."""
    stream_no_face_frames: int = 15
    """Live stream: processed frames without any face after which it ends as NO_FACE."""
    decline_on_replay: bool = True
    """Decline a video whose bytes or frames this replica has seen before (replay)."""
    decline_on_virtual_camera: bool = True
    """Decline when the capture metadata names a known virtual camera or an emulator."""
    decline_on_timing: bool = False
    """Decline on implausible capture timing (too regular/irregular, duplicated frames)."""
    decline_on_subject_change: bool = True
    """Decline a video or stream in which the face becomes another person's."""
    db_statement_timeout_s: float = 30.0
    """PostgreSQL: longest any statement may run; a call's statements are also cancelled when its
    gRPC deadline passes (0: no cap besides the deadline)."""
    company_max_concurrent_queries: int = 4
    """Database transactions the calls of one company may run at once on this replica; more wait
    for a turn until their deadline, then get RESOURCE_EXHAUSTED (0: no limit)."""
    db_threads: int = 8
    """Threads that run database work for calls and workers (each holds one pooled connection)."""
    credential_cache_size: int = 10_000
    """Credentials (API keys, access tokens) remembered for a moment after a lookup; beyond, the
    least recently used are forgotten."""
    rate_limit_max_keys: int = 100_000
    """Credentials and client addresses whose rate limit or failed logins are remembered; beyond,
    the least recently seen are forgotten."""
    replay_max_media: int = 10_000
    """Replay memory: media hashes remembered (least recently seen forgotten first)."""
    replay_max_frames: int = 50_000
    """Replay memory: perceptual hashes of sampled frames remembered (a ring; 32 bytes each)."""
    replay_ttl_s: float = 86_400.0
    """Replay memory in Redis (VIGIL_REDIS_URL): how long a media hash or frame fingerprint is
    remembered after it was last seen."""
    redis_url: str | None = None
    """Redis shared by the replicas (redis://host:6379/0): rate limits, address lockouts, replay
    memory and credential revocations then hold across replicas. Unset: each replica keeps them
    in its own memory."""
    redis_prefix: str = "vigil:"
    """Prefix of every Redis key and channel vigil uses (several deployments on one Redis)."""
    database_url: str | None = None
    """SQLAlchemy URL of the database; default SQLite at <data_dir>/vigil.db. PostgreSQL:
    postgresql+psycopg://user:password@host:5432/dbname."""
    blob_dir: Path | None = None
    """Where media bytes are kept (content-addressed); default <data_dir>/blobs."""
    max_media_bytes: int = 100 * 1024 * 1024
    """Largest media upload (checked while it streams)."""
    upload_chunk_bytes: int = 256 * 1024
    """Size of the chunks DownloadMedia sends."""
    analysis_workers: int = 2
    """Analysis workers inside `vigil serve` (0: none; run `vigil worker` instead)."""
    analysis_lease_s: float = 15.0
    """How long a worker holds an analysis before another may take it; renewed every third of it
    while the job runs, so a worker that dies loses its jobs within this (a stopped one hands them
    back at once)."""
    analysis_max_attempts: int = 3
    """Tries before an analysis whose worker keeps dying is marked FAILED."""
    queue_poll_s: float = 0.5
    """How often idle workers poll for queued analyses (ones queued here wake them at once)."""
    biometry_grey_zone: float = 0.05
    """BIOMETRY: distances within this above the match threshold give OPERATOR_REQUIRED."""
    search_threshold: float = 0.6
    """Collections: a search hit is a match below this distance (BLACKLIST uses it too)."""
    ann_min_faces: int = Field(default=50_000, ge=1)
    """Collections of at least this many faces are searched through an HNSW graph (usearch, f16)
    whose candidates are re-scored exactly; smaller ones are searched exactly."""
    ann_candidates: int = Field(default=128, ge=1, le=10_000)
    """Candidates the HNSW graph proposes per search (at least top_k), re-scored exactly against
    the stored float32 templates. More: higher recall, slower search."""
    ann_dtype: Literal["f16", "i8"] = "f16"
    """Scalar type of the graph's copy of the templates (f16: 256 B per 128-d face, i8: 128 B)."""
    index_snapshot_dir: Path | None = None
    """Where each replica saves large collections' search indexes (templates and graph) and loads
    them at start, replaying the change log from there (default: VIGIL_DATA_DIR/index)."""
    index_poll_s: float = Field(default=0.5, gt=0, le=60)
    """How often a replica polls the collections' change log (SQLite; on PostgreSQL a NOTIFY
    wakes it at once and this is the fallback)."""
    webhook_allow_private: bool = False
    """Allow webhooks to private, loopback and link-local addresses (tests, closed networks)."""
    webhook_max_attempts: int = 6
    """Deliveries of one webhook event before it is marked FAILED (backoff doubles from 1 s)."""
    webhook_timeout_s: float = 10.0
    """HTTP timeout of one webhook delivery."""
    tls_cert_file: Path | None = None
    """PEM certificate chain of the server; with VIGIL_TLS_KEY_FILE turns TLS on."""
    tls_key_file: Path | None = None
    """PEM private key of the server certificate."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."""
    allow_plaintext: bool = False
    """Serve without TLS although credentials travel in the calls (local use only)."""
    signing_key_file: Path | None = None
    """Ed25519 private key (PEM) that signs access tokens and verdicts; default
    <data_dir>/signing_key.pem, created on first start. Replicas must share it."""
    access_token_ttl_s: float = 900.0
    """Lifetime of a person's access token."""
    refresh_token_ttl_s: float = 30 * 24 * 3600.0
    """Lifetime of a refresh token (each is single use)."""
    verdict_ttl_s: float = 3600.0
    """Lifetime of a signed verdict."""
    challenge_gestures: str = "smile,turn_left,turn_right,tilt_up,tilt_down,move_closer"
    """Active liveness: the gestures a challenge may ask for (comma-separated, from blink, smile,
    turn_left, turn_right, tilt_up, tilt_down, move_closer; a CreateChallenge call may narrow them
    further). ``blink`` is off by default: on the photos with the eyelids painted closed,
    FaceMesh's eye aspect ratio fell by only 7–37 %, and no recorded blink was at hand to confirm
    that real blinks reach the 40 % dip (VIGIL_GESTURE_BLINK_RATIO); enable it once checked on
    real captures."""
    challenge_ttl_s: float = 120.0
    """Active liveness: how long a challenge may be answered after it was issued."""
    challenge_gesture_window_s: float = 5.0
    """Active liveness: each gesture must follow the previous one (the first: the answer's first
    frame) within this."""
    challenge_sample_fps: float = 15.0
    """Active liveness: frames per second of an answer that FaceMesh reads (a blink lasts
    100–400 ms: 15 fps sees it in 2–6 frames)."""
    challenge_max_frame_gap_ms: float = 250.0
    """Active liveness: a larger gap between two analysed frames makes the timing implausible
    (dropped or spliced frames)."""
    gesture_blink_ratio: float = 0.6
    """Blink: the eye aspect ratio must fall below this fraction of the person's open-eye
    baseline (the median of the answer). Open eyes read 0.17–0.30 on the photos in
    ../shared/data/faces; on a still video of them a frame strays up to 7–20 % from the median,
    so a 40 % dip held for 100 ms is well outside that spread."""
    gesture_blink_min_ms: float = 100.0
    """Blink: shortest eye closure counted (closed frames to the first reopened one)."""
    gesture_blink_max_ms: float = 400.0
    """Blink: longest eye closure counted; longer is not a blink."""
    gesture_smile_growth: float = 0.12
    """Smile: mouth width / inter-ocular distance must grow by this fraction of its baseline. On
    still videos of the four photos it strays ≤ 3 %; the synthetic smiles (mouth corners pulled
    out by 22 % of the mouth's width) read +19 to +33 %."""
    gesture_turn_degrees: float = 12.0
    """Turn left/right: yaw (solvePnP on six landmarks) must change by this many degrees from the
    first 0.5 s. Still videos stray ≤ 3.6°; the synthetic turns (the central face shifted by a
    quarter of its width) read 13.6–48° (10.7° once, obama turning further to the side he
    already faces)."""
    gesture_tilt_degrees: float = 8.0
    """Tilt up/down: pitch must change by this many degrees from the first 0.5 s. Still videos
    stray ≤ 1.7°; the synthetic tilts read 10–13° on obama.jpg, 2–10° on the photos whose head
    is already turned."""
    gesture_closer_growth: float = 0.25
    """Move closer: the inter-ocular distance must grow by this fraction of its baseline. Still
    videos stray ≤ 3 %; the synthetic approach (a 1.6× zoom) reads +55 to +65 %."""
    meta_max_keys: int = 64
    """Metadata keys a folder or a media may hold (and keys one UpdateFolderMeta may remove)."""
    meta_max_key_chars: int = 64
    """Longest metadata key, in characters."""
    meta_max_value_chars: int = 1024
    """Longest metadata value, in characters."""
    list_max_filters: int = 32
    """Metadata filters one ListFolders query may carry."""
    max_analyses_per_call: int = 16
    """Analyses one CreateAnalyses (or one Submit) may ask for."""
    max_media_per_folder: int = 64
    """Media one folder may hold (0: no limit)."""
    folders_per_company_per_hour: int = 10_000
    """Folders one company may create per rolling hour; beyond, RESOURCE_EXHAUSTED (0: no
    limit)."""
    max_string_chars: int = 4096
    """Longest string accepted in any request field without a tighter bound of its own (ids 128,
    emails 320, passwords 1024, names 256, content types 255, page tokens 1024)."""
    rate_limit_per_s: float = 100.0
    """Calls per second each credential may make (bursts up to VIGIL_RATE_LIMIT_BURST); 0 = off."""
    rate_limit_burst: float = 200.0
    """Burst size of the per-credential rate limit."""
    auth_max_failures: int = 10
    """Failed authentications from one address before it is locked out."""
    auth_lockout_s: float = 300.0
    """How long a lockout lasts (and the window failures are counted in)."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long in-flight calls may take to finish before they are cancelled."""
    log_level: str = "INFO"
    """Python logging level."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text, or as one JSON object per line (time, level, logger, message, and the
    access line's method, status, duration_ms, company and incident fields)."""

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        """Resolved once: every path derived from it stays put if the process changes directory."""
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _budget_holds_the_largest_image(self) -> Settings:
        """An image at the pixel limit, with its closer look's tiles, must fit the budget alone."""
        needed = self._one_image_pixels
        if self.decode_pixel_budget and self.decode_pixel_budget < needed:
            raise ValueError(
                f"VIGIL_DECODE_PIXEL_BUDGET ({self.decode_pixel_budget}) must be 0 or at least "
                f"{needed}: VIGIL_MAX_IMAGE_PIXELS plus VIGIL_DETECT_MAX_TILES tiles of "
                "VIGIL_DETECT_MAX_SIDE² (one image at the limit must fit alone)"
            )
        return self

    @property
    def _one_image_pixels(self) -> int:
        """The most pixels one image may hold: the limit, and its closer look's scaled copy."""
        return self.max_image_pixels + self.detect_max_tiles * self.detect_max_side**2

    @property
    def resolved_decode_pixel_budget(self) -> int:
        if self.decode_pixel_budget is not None:
            return self.decode_pixel_budget
        return max(2 * self.max_image_pixels, self._one_image_pixels)

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'vigil.db').resolve()}"

    @property
    def resolved_index_snapshot_dir(self) -> Path:
        return self.index_snapshot_dir or self.data_dir / "index"

    @property
    def resolved_blob_dir(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    @property
    def resolved_signing_key_file(self) -> Path:
        return self.signing_key_file or self.data_dir / "signing_key.pem"

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def resolved_engine_cache_dir(self) -> Path:
        return self.engine_cache_dir or self.data_dir / "engines"

    @property
    def resolved_max_message_bytes(self) -> int:
        return self.max_message_bytes or 2 * self.max_image_bytes + (1 << 20)
