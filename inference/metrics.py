"""Prometheus metrics of the engine, labelled by model. Registered once, on import."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

QUEUE_DEPTH = Gauge(
    "vigil_model_queue_depth", "Requests waiting in a model's batcher queue", ["model"]
)
QUEUE_WAIT = Histogram(
    "vigil_model_queue_wait_seconds",
    "Time a request waited in a model's queue before its batch started",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "vigil_model_batch_size",
    "Requests per backend call",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
INFERENCE_TIME = Histogram(
    "vigil_model_inference_seconds",
    "Time of one backend call (one batch); for yunet, the whole per-image detector job "
    "(decode, resize, YuNet, post-processing, alignment)",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
REJECTED = Counter(
    "vigil_model_rejected_total", "Requests refused because a model's queue was full", ["model"]
)
EXPIRED = Counter(
    "vigil_model_expired_total",
    "Requests dropped because their deadline passed while they waited",
    ["model"],
)
BATCH_FAILURES = Counter("vigil_model_batch_failures_total", "Backend calls that raised", ["model"])

INFLIGHT = Gauge("vigil_inflight_images", "Images the Instant API holds in the engine right now")
ADMISSION_REJECTED = Counter(
    "vigil_admission_rejected_total", "Instant API requests refused because the engine was full"
)

DECODE_PIXELS_IN_FLIGHT = Gauge(
    "vigil_decode_pixels_in_flight",
    "Decoded pixels the engine holds now (VIGIL_DECODE_PIXEL_BUDGET bounds them)",
)
DECODE_BUDGET_REFUSED = Counter(
    "vigil_decode_budget_refused_total",
    "Images refused because the decoded-pixel budget stayed taken until their deadline",
)
SECOND_PASS = Counter(
    "vigil_detect_second_pass_total",
    "Images searched again in tiles at a higher resolution for small faces",
)


def preinitialise(models: Iterable[str]) -> None:
    """Give every per-model series its labels at 0, so a fresh scrape shows them (and alerts that
    sum them see the first rejection as an increase instead of a new series)."""
    for model in models:
        for family in (QUEUE_DEPTH, QUEUE_WAIT, BATCH_SIZE, INFERENCE_TIME, REJECTED, EXPIRED):
            family.labels(model)
        BATCH_FAILURES.labels(model)
