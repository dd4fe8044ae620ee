"""A closed-loop asyncio gRPC load generator (the ghz / perf_analyzer idea, in-process).

``concurrency`` workers share a few ``grpc.aio`` channels; each sends one request, waits for the
answer, records its latency and status code, and sends the next, until the measuring window ends.
Requests are serialized once up front and sent as raw bytes (no per-call protobuf work), and answers
are not parsed, so the generator stays light next to the server it shares the cores with.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class LoadResult:
    """One point of a sweep. Latencies in milliseconds; rates per second of the window."""

    method: str
    concurrency: int
    duration_s: float
    ok: int
    codes: dict[str, int]
    throughput: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    #: RESOURCE_EXHAUSTED answers: their share of all answers and how fast they came back.
    rejected: int = 0
    rejected_share: float = 0.0
    reject_p50_ms: float | None = None
    reject_p99_ms: float | None = None
    #: CPU used during the window, in % of one core (200 % = both cores of a 2-core machine).
    loadgen_cpu_pct: float | None = None
    server_cpu_pct: float | None = None
    #: Busy CPU of the whole machine not used by the server or the load generator (someone else's
    #: work, or the harness's other idle servers), and CPU stolen by the hypervisor: noise gauges.
    other_cpu_pct: float | None = None
    steal_pct: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "OK")


def _process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` (``None``: this process) from Linux ``/proc``.

    ``None`` when unreadable (not Linux, or the process is gone)."""
    path = f"/proc/{pid if pid is not None else 'self'}/stat"
    try:
        with open(path) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(
    target: str,
    method: str,
    requests: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
    metadata: Sequence[tuple[str, str]] = (),
    server_pid: int | None = None,
) -> LoadResult:
    """Drive ``method`` (e.g. ``/vigil.v1.Instant/Verify``) at ``concurrency`` for ``duration_s``.

    Load runs for ``warmup_s`` first; then every call that *finishes* within the ``duration_s``
    window is recorded (so the throughput is completions per second of the window, whatever the
    latency). At the window's end the calls still in flight are cancelled. Worker ``i`` starts at
    request ``i`` so all images are in flight at once.
    """
    n_channels = max(1, min(8, concurrency // 16))
    channels = [
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(n_channels)
    ]
    # No serializers: the requests are already serialized and the replies are left as bytes.
    calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
        ch.unary_unary(method) for ch in channels
    ]
    latencies: list[float] = []
    rejected: list[float] = []
    codes: Counter[str] = Counter()
    loop_start = time.perf_counter()
    window_start = loop_start + warmup_s
    window_end = window_start + duration_s
    cpu: dict[str, float | None] = {}
    machine0 = machine1 = None

    async def worker(index: int) -> None:
        call = calls[index % n_channels]
        position = index
        while True:
            started = time.perf_counter()
            payload = requests[position % len(requests)]
            position += 1
            try:
                await call(payload, timeout=timeout_s, metadata=metadata or None)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            finished = time.perf_counter()
            if not window_start <= finished <= window_end:
                continue
            codes[code.name] += 1
            elapsed_ms = (finished - started) * 1000
            if code is grpc.StatusCode.OK:
                latencies.append(elapsed_ms)
            elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                rejected.append(elapsed_ms)

    workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    try:
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        cpu["self0"], cpu["server0"] = _process_cpu_s(None), _server_cpu_s(server_pid)
        machine0 = _machine_cpu_s()
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        cpu["self1"], cpu["server1"] = _process_cpu_s(None), _server_cpu_s(server_pid)
        machine1 = _machine_cpu_s()
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for channel in channels:
            await channel.close()
    answered = sum(codes.values())
    loadgen_cpu = _cpu_pct(cpu.get("self0"), cpu.get("self1"), duration_s)
    server_cpu = _cpu_pct(cpu.get("server0"), cpu.get("server1"), duration_s)
    other_cpu = steal = None
    if machine0 and machine1:
        busy = _cpu_pct(machine0[0], machine1[0], duration_s) or 0.0
        steal = _cpu_pct(machine0[1], machine1[1], duration_s)
        other_cpu = max(0.0, busy - (loadgen_cpu or 0.0) - (server_cpu or 0.0))
    return LoadResult(
        method=method.rsplit("/", 1)[-1],
        concurrency=concurrency,
        duration_s=duration_s,
        ok=len(latencies),
        codes=dict(codes),
        throughput=len(latencies) / duration_s,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        mean_ms=sum(latencies) / len(latencies) if latencies else None,
        rejected=len(rejected),
        rejected_share=len(rejected) / answered if answered else 0.0,
        reject_p50_ms=percentile(rejected, 50),
        reject_p99_ms=percentile(rejected, 99),
        loadgen_cpu_pct=loadgen_cpu,
        server_cpu_pct=server_cpu,
        other_cpu_pct=other_cpu,
        steal_pct=steal,
    )


def _machine_cpu_s() -> tuple[float, float] | None:
    """(busy, stolen) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _server_cpu_s(pid: int | None) -> float | None:
    return _process_cpu_s(pid) if pid else None


def _cpu_pct(before: float | None, after: float | None, seconds: float) -> float | None:
    if before is None or after is None:
        return None
    return 100.0 * (after - before) / seconds
