"""Per-RPC Prometheus metrics and the ``/metrics`` endpoint on its own port."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

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


def serve_metrics(host: str, port: int) -> None:
    """Start the Prometheus endpoint in a daemon thread (``port`` 0 leaves it off)."""
    if port:
        start_http_server(port, addr=host)
