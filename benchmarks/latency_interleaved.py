"""Single-request latency, vigil against the raw engine, interleaved so both see the same machine.

The harness (``benchmarks.run``) measures vigil at concurrency 1 and the raw engine's single
request minutes apart; on a shared machine whose speed drifts by 10–40 % over minutes, their ratio
drifts with it. Here one started ``vigil serve`` and the raw pipeline (``benchmarks.raw_engine``,
in this process) take turns of a couple of seconds, one request at a time, and the medians are
taken over all turns. The raw side is the fastest of the harness's single-request variants (one or
two intra-op threads; for verify also the two sides on two threads at once), picked by a short
probe of each. ``benchmarks.run`` runs this for its c=1 target.

    python -m benchmarks.latency_interleaved [--workloads template,verify] [--blocks 6]

Prints a line per turn and the ratios; writes ``benchmarks/reports/latency_interleaved.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc

from benchmarks.raw_engine import Models, single_request_variants
from benchmarks.servers import CONFIGS, ServerProcess
from benchmarks.workloads import METHODS, ROOT, WORKLOADS, Images, default_data_dir, request_bytes
from vigil.inference import catalog

REPORT = ROOT / "benchmarks" / "reports" / "latency_interleaved.json"
OPTIONS = [("grpc.max_send_message_length", 64 << 20)]
T = TypeVar("T")


def _passes(fn: Callable[[T], object], items: Sequence[T], seconds: float) -> list[float]:
    """Whole passes over ``items``, one call at a time, until ``seconds`` have passed; ms each."""
    samples: list[float] = []
    until = time.perf_counter() + seconds
    while not samples or time.perf_counter() < until:
        for item in items:
            started = time.perf_counter()
            fn(item)
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def measure(
    target: str,
    metadata: list[tuple[str, str]],
    models: dict[int, Models],
    workload: str,
    images: Images,
    blocks: int,
    block_s: float,
    say: Callable[[str], None] = print,
    timeout_s: float = 30.0,
) -> dict[str, object]:
    """``blocks`` turns of about ``block_s`` seconds each: vigil, then the raw engine's fastest
    single-request variant (chosen by a short pass over every variant first)."""
    requests = request_bytes(workload, images)
    items = images.items(workload)
    with grpc.insecure_channel(target, options=OPTIONS) as channel, ThreadPoolExecutor(2) as pool:
        call = channel.unary_unary(
            METHODS[workload],
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )

        call_metadata = tuple(metadata)

        def served_call(request: bytes) -> bytes:
            return call(request, metadata=call_metadata, timeout=timeout_s)

        variants = single_request_variants(models, workload, pool)
        _passes(served_call, requests, 0.0)  # warm-up
        choice = {
            name: statistics.median(_passes(fn, items, 0.0) + _passes(fn, items, 0.0))
            for name, fn in variants.items()
        }
        best = min(choice, key=lambda k: choice[k])
        served: list[float] = []
        raw: list[float] = []
        for block in range(blocks):
            served_block = _passes(served_call, requests, block_s)
            raw_block = _passes(variants[best], items, block_s)
            served += served_block
            raw += raw_block
            say(
                f"{workload:8} turn {block + 1}/{blocks}: vigil p50 "
                f"{statistics.median(served_block):.1f} ms, raw p50 "
                f"{statistics.median(raw_block):.1f} ms ({best})"
            )
    vigil_p50, raw_p50 = statistics.median(served), statistics.median(raw)
    return {
        "vigil_p50_ms": vigil_p50,
        "raw_p50_ms": raw_p50,
        "raw_variant": best,
        "raw_variant_probe_ms": choice,
        "ratio": vigil_p50 / raw_p50,
        "calls_each": min(len(served), len(raw)),
        "vigil_calls": len(served),
        "raw_calls": len(raw),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="template,verify,liveness")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--block-s", type=float, default=2.0, help="seconds per side per turn")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-call deadline, seconds")
    parser.add_argument("--mirror", help="model mirror (default: the catalog's default)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
    images = Images.load(args.data_dir)
    catalog.install(args.models_dir, args.mirror)
    models = {threads: Models(args.models_dir, threads) for threads in (1, 2)}
    logs = ROOT / "benchmarks" / "reports"
    logs.mkdir(parents=True, exist_ok=True)
    # The harness's batching-on server (the defaults, admission control off).
    server = ServerProcess(CONFIGS[0], args.models_dir, logs / "latency_interleaved_server.log")
    results = {}
    try:
        asyncio.run(server.ready())
        for workload in workloads:
            results[workload] = measure(
                server.target,
                server.metadata,
                models,
                workload,
                images,
                args.blocks,
                args.block_s,
                timeout_s=args.timeout,
            )
    finally:
        server.stop()
    REPORT.write_text(json.dumps({"cores": os.cpu_count(), "results": results}, indent=2))
    for workload, r in results.items():
        print(
            f"{workload:8} c=1: vigil p50 {r['vigil_p50_ms']:.1f} ms vs raw "
            f"{r['raw_p50_ms']:.1f} ms ({r['raw_variant']}) = x{r['ratio']:.2f} "
            f"over {r['calls_each']} calls each"
        )
    print(f"report: {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
