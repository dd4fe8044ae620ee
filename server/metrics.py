"""Per-RPC Prometheus metrics and the ``/metrics`` endpoint on its own port."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_TOTAL = Counter(
    "vigil_rpc_total", "RPCs handled, by method and final gRPC status", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "vigil_rpc_latency_seconds",
    "RPC handling time, by method and final gRPC status",
    ["method", "code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

ANALYSES_FINISHED = Counter(
    "vigil_analyses_total", "Analyses written, by type and resolution", ["type", "resolution"]
)

DB_CALLS_WAITING = Gauge(
    "vigil_db_calls_waiting",
    "Calls waiting for one of their company's database turns "
    "(VIGIL_COMPANY_MAX_CONCURRENT_QUERIES)",
)
COMPANY_QUERIES_REFUSED = Counter(
    "vigil_company_queries_refused_total",
    "Calls refused because their company's database turns stayed busy until their deadline",
)
#: Entries in each bounded in-memory cache (labels: a fixed set of cache names, never an id).
CACHE_ENTRIES = Gauge("vigil_cache_entries", "Entries held by a bounded in-memory cache", ["cache"])
CACHE_EVICTIONS = Counter(
    "vigil_cache_evictions_total",
    "Entries a bounded cache dropped to stay within its size",
    ["cache"],
)

REDIS_UP = Gauge(
    "vigil_redis_up",
    "1 while the shared Redis (VIGIL_REDIS_URL) answered the last call, 0 when it did not "
    "(rate limits, lockouts and replay memory then fall back to this replica)",
)

BACKEND_INFO = Gauge(
    "vigil_backend_info",
    "1 for the inference backend and precision the models run (VIGIL_BACKEND auto resolved)",
    ["backend", "precision"],
)


def report_backend(backend: str, precision: str) -> None:
    """Label :data:`BACKEND_INFO` with what runs now (only that: a restarted engine replaces it)."""
    BACKEND_INFO.clear()
    BACKEND_INFO.labels(backend, precision).set(1)


#: Final statuses given a series from the start (alerts divide or sum them; a series that appears
#: only at its first increment makes ``rate()`` miss that increment). Other codes appear when used.
ALERTING_CODES = (
    "OK",
    "INTERNAL",
    "UNKNOWN",
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
)
#: The bounded LRU caches that evict (server/security: BoundedLRU's names).
EVICTING_CACHES = ("rate_limit", "failed_logins", "credentials")


def preinitialise(methods: Iterable[str]) -> None:
    """Give every labelled series its known labels at 0, so a fresh scrape shows them."""
    from vigil.storage.results import AnalysisType, Resolution  # lazy: no storage at import

    for method in methods:
        for code in ALERTING_CODES:
            RPC_TOTAL.labels(method, code)
        RPC_LATENCY.labels(method, "OK")
    for kind in AnalysisType:
        for resolution in Resolution:
            if resolution is not Resolution.PROCESSING:  # never an analysis's own resolution
                ANALYSES_FINISHED.labels(kind.value, resolution.value)
    for cache in EVICTING_CACHES:
        CACHE_EVICTIONS.labels(cache)


class MetricsPortBusy(OSError):
    """The metrics endpoint could not bind its address."""


def serve_metrics(host: str, port: int) -> None:
    """Start the Prometheus endpoint in a daemon thread (``port`` 0 leaves it off)."""
    if not port:
        return
    try:
        start_http_server(port, addr=host.strip("[]"))
    except OSError as error:
        raise MetricsPortBusy(
            f"cannot bind the metrics port {host}:{port} (VIGIL_METRICS_PORT): {error.strerror}"
        ) from error
