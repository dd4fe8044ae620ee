"""``python -m benchmarks.run`` (``vigil bench``): load-test vigil's Instant API over a sweep of
concurrencies, next to the raw engine ceiling and the face_recognition peer; table, JSON, PNG.

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from benchmarks import report, soak
from benchmarks.loadgen import CHANNEL_OPTIONS, LoadResult, run_load
from benchmarks.servers import CONFIGS, ServerConfig, ServerProcess, wait_serving
from benchmarks.workloads import METHODS, ROOT, WORKLOADS, Images, default_data_dir, request_bytes
from vigil.inference import cpu_features
from vigil.v1 import instant_pb2, instant_pb2_grpc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vigil bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="measure this running server instead of starting configurations",
    )
    parser.add_argument(
        "--duration", type=float, default=8.0, help="measured seconds per point (default 8)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of load before each point's window (default 1)",
    )
    parser.add_argument(
        "--concurrency", default="1,4,16,32,64", help="comma-separated sweep (default 1,4,16,32,64)"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from {','.join(WORKLOADS)}",
    )
    parser.add_argument("--skip-peer", action="store_true", help="skip face_recognition")
    parser.add_argument("--skip-raw", action="store_true", help="skip the raw engine ceiling")
    parser.add_argument("--skip-overload", action="store_true", help="skip the overload point")
    parser.add_argument("--overload-concurrency", type=int, default=256)
    parser.add_argument(
        "--overload-queue",
        type=int,
        default=8,
        help="VIGIL_MAX_QUEUE_SIZE of the overload server (default 8)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="VIGIL_X=VALUE",
        help="extra setting for every server started (e.g. VIGIL_INTRA_OP_THREADS=1); repeatable",
    )
    parser.add_argument(
        "--server-root",
        type=Path,
        default=ROOT,
        help="checkout whose server is started (default: this one), e.g. a "
        "`git archive` export of another commit",
    )
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="stand in for a CPU without native bf16: servers get VIGIL_PRECISION=fp32 and the "
        "raw OpenVINO bf16 ceiling is left out",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per-call deadline, seconds")
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="gRPC metadata sent with every call (e.g. credentials); repeatable",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="the shared data folder (faces/, spoof/)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=ROOT / "var" / "models",
        help="where models are installed for the servers and the raw engine",
    )
    parser.add_argument("--mirror", help="model mirror (default: the catalog's default)")
    parser.add_argument("--out", type=Path, help="report folder (default benchmarks/reports/<ts>)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 s points, concurrency 1,4,32, short raw and peer runs",
    )
    soak.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 0.5)
        if args.concurrency == parser.get_default("concurrency"):
            args.concurrency = "1,4,32"
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    args.metadata = [tuple(m.split("=", 1)) for m in args.metadata]
    args.server_env = dict(e.split("=", 1) for e in args.server_env)
    if args.no_bf16:
        args.server_env.setdefault("VIGIL_PRECISION", "fp32")
    return args


class Progress:
    """Numbered progress lines with the elapsed time, flushed as they come."""

    def __init__(self, total_points: int) -> None:
        self.total = total_points
        self.done = 0
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.0f} s] {message}", flush=True)

    def point(self, label: str) -> None:
        self.done += 1
        self.say(f"({self.done}/{self.total}) {label} ...")


def metadata_for(args: argparse.Namespace, target: str) -> list[tuple[str, str]]:
    """--metadata when given, else the key of the server the harness started at ``target``."""
    by_target: dict[str, list[tuple[str, str]]] = getattr(args, "metadata_by_target", {})
    given: list[tuple[str, str]] = args.metadata
    return given or by_target.get(target, [])


async def sanity_check(
    target: str, images: Images, metadata: list[tuple[str, str]]
) -> dict[str, str]:
    """One call per workload, checked, so a broken server fails loudly before any sweep; returns
    the backend and precision the server says it runs (``GetServerInfo``)."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = instant_pb2_grpc.InstantStub(channel)
        md = metadata or None
        template = await stub.ExtractTemplate(
            instant_pb2.TemplateRequest.FromString(request_bytes("template", images)[0]),
            metadata=md,
            timeout=60,
        )
        assert len(template.template.values) == 128, "template is not 128-d"
        verify = await stub.Verify(
            instant_pb2.VerifyRequest.FromString(request_bytes("verify", images)[0]),
            metadata=md,
            timeout=60,
        )
        assert verify.match, f"obama vs obama2 did not match (distance {verify.distance:.3f})"
        live = await stub.CheckLiveness(
            instant_pb2.LivenessRequest.FromString(request_bytes("liveness", images)[-1]),
            metadata=md,
            timeout=60,
        )
        assert live.live, f"image_T1 judged a spoof (score {live.score:.2f})"
        info = await stub.GetServerInfo(instant_pb2.GetServerInfoRequest(), metadata=md, timeout=60)
        return {"backend": info.backend, "precision": info.precision}


def _point_dict(config: str, workload: str, result: LoadResult) -> dict[str, Any]:
    return {"config": config, "workload": workload, **dataclasses.asdict(result)}


def _summary(r: LoadResult) -> str:
    p = [f"{v:.0f}" if v is not None else "-" for v in (r.p50_ms, r.p95_ms, r.p99_ms)]
    text = f"{r.throughput:6.1f} req/s  p50/p95/p99 {p[0]}/{p[1]}/{p[2]} ms"
    return text + (f"  errors {r.errors}" if r.errors else "")


async def sweep(
    args: argparse.Namespace,
    servers: Mapping[str, tuple[str, int | None]],
    requests: dict[str, list[bytes]],
    progress: Progress,
    after_workload: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (workload, concurrency) point on every server, the servers taking turns point by
    point, so a slow moment of the shared machine hits all configurations alike.
    ``after_workload`` runs after each workload (the raw ceiling is measured again there)."""
    points = []
    for workload in args.workloads:
        await warm_up(args, servers, workload, requests[workload], progress)
        for concurrency in args.concurrency:
            for config, (target, pid) in servers.items():
                progress.point(f"{config:12} {workload:8} c={concurrency:<3}")
                result = await run_load(
                    target,
                    METHODS[workload],
                    requests[workload],
                    concurrency,
                    args.duration,
                    args.warmup,
                    args.timeout,
                    metadata_for(args, target),
                    pid,
                )
                progress.say(f"    {_summary(result)}")
                points.append(_point_dict(config, workload, result))
        if after_workload is not None:
            after_workload(workload)
    return points


async def warm_up(
    args: argparse.Namespace,
    servers: Mapping[str, tuple[str, int | None]],
    workload: str,
    requests: list[bytes],
    progress: Progress,
) -> None:
    """A few seconds of ``workload`` on every server, alone and with company, before its first
    point. Without it the first point measured (batching-on, c=1) came out 1–3 ms slower than the
    same point on the batching-off server right after it, run after run; with it they agree."""
    progress.say(f"warming up the servers on {workload} ...")
    for target, _ in servers.values():
        for concurrency in (1, 4):
            await run_load(
                target,
                METHODS[workload],
                requests,
                concurrency,
                0.5 if args.quick else 2.0,
                0.0,
                args.timeout,
                metadata_for(args, target),
            )


async def overload_point(
    args: argparse.Namespace, target: str, pid: int, requests: list[bytes], progress: Progress
) -> dict[str, Any]:
    """Template requests far above capacity on the small-queue server; a long window, as
    admitted requests may take seconds."""
    progress.point(f"overload     template c={args.overload_concurrency}")
    result = await run_load(
        target,
        METHODS["template"],
        requests,
        args.overload_concurrency,
        2 * args.duration,
        max(args.warmup, args.duration),  # let the queues fill before measuring
        args.timeout,
        metadata_for(args, target),
        pid,
    )
    progress.say(f"    {_summary(result)}  rejected {result.rejected_share:.0%}")
    return {**_point_dict("overload", "template", result), "max_queue_size": args.overload_queue}


async def run_servers(
    args: argparse.Namespace,
    images: Images,
    out: Path,
    progress: Progress,
    run: dict[str, Any],
    after_workload: Callable[[str], None] | None = None,
) -> None:
    requests = {w: request_bytes(w, images) for w in args.workloads}
    if args.server:
        await wait_serving(args.server, 30)
        running = await sanity_check(args.server, images, args.metadata)
        run["meta"]["vigil_running"] = {"target": running}
        run["configs"] = ["target"]
        run["points"] += await sweep(
            args, {"target": (args.server, None)}, requests, progress, after_workload
        )
        return
    run["configs"] = [c.name for c in CONFIGS]
    configs = list(CONFIGS)
    if not args.skip_overload:
        configs.append(
            ServerConfig(
                "overload",
                {
                    "VIGIL_MAX_QUEUE_SIZE": str(args.overload_queue),
                    "VIGIL_MAX_INFLIGHT_IMAGES": str(args.overload_queue),
                },
                f"VIGIL_MAX_QUEUE_SIZE=VIGIL_MAX_INFLIGHT_IMAGES={args.overload_queue}",
            )
        )
    # All servers start up front and wait idle while another one is measured.
    servers = {}
    try:
        for config in configs:
            server = ServerProcess(
                config,
                args.models_dir,
                out / f"server-{config.name}.log",
                args.server_env,
                args.server_root,
            )
            servers[config.name] = server
            progress.say(
                f"starting vigil serve ({config.name}: {config.description}) on {server.target}"
            )
        for server in servers.values():
            await server.ready()
        if not args.metadata:  # each started server has an ADMIN key of its own
            args.metadata_by_target = {s.target: s.metadata for s in servers.values()}
        for name, server in servers.items():
            running = await sanity_check(server.target, images, metadata_for(args, server.target))
            run["meta"].setdefault("vigil_running", {})[name] = running
            progress.say(f"{name} runs {running['backend']} {running['precision']}")
        sweeping = {c.name: (servers[c.name].target, servers[c.name].pid) for c in CONFIGS}
        run["points"] += await sweep(args, sweeping, requests, progress, after_workload)
        if not args.skip_raw:
            try:
                run["interleaved"] = await asyncio.to_thread(
                    interleaved_latency, args, images, servers[CONFIGS[0].name], progress
                )
            except grpc.RpcError as exc:  # keep the sweep's results; report what went wrong
                progress.say(f"concurrency 1 taking turns failed: {exc}")
                run["interleaved"] = {"error": str(exc)}
        if "overload" in servers:
            server = servers["overload"]
            run["overload"] = await overload_point(
                args,
                server.target,
                server.pid,
                requests.get("template") or request_bytes("template", images),
                progress,
            )
    finally:
        for server in servers.values():
            server.stop()


def interleaved_latency(
    args: argparse.Namespace, images: Images, server: ServerProcess, progress: Progress
) -> dict[str, Any]:
    """Concurrency 1 on the batching-on server and the raw engine's single request, taking turns
    block by block (``benchmarks.latency_interleaved``): the c=1 target's measurement. The sweep's
    c=1 point and the raw ceiling's single request are minutes apart, and this machine's speed
    drifts more than the target's margin in minutes."""
    from benchmarks import latency_interleaved, raw_engine

    progress.say("concurrency 1, vigil and the raw engine taking turns ...")
    models = {threads: raw_engine.Models(args.models_dir, threads) for threads in (1, 2)}
    blocks, block_s = (2, 0.5) if args.quick else (6, 2.0)
    return {
        workload: latency_interleaved.measure(
            server.target,
            metadata_for(args, server.target),
            models,
            workload,
            images,
            blocks,
            block_s,
            progress.say,
            args.timeout,
        )
        for workload in args.workloads
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.soak is not None:  # the soak runs alone (benchmarks/soak.py)
        return soak.soak_from_args(args)
    images = Images.load(args.data_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "reports" / stamp
    out.mkdir(parents=True, exist_ok=True)
    n_points = len(args.workloads) * len(args.concurrency) * (1 if args.server else len(CONFIGS))
    n_points += 0 if args.server or args.skip_overload else 1
    progress = Progress(n_points)
    run: dict[str, Any] = {
        "meta": {
            "started": stamp,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "argv": sys.argv[1:],
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "images": list(images.files),
            "server_root": str(args.server_root),
            "commit": _commit(args.server_root),
            "server_env": args.server_env,
            "cpu": cpu_features.detect().summary(),
            "no_bf16": args.no_bf16,
        },
        "points": [],
        #: The reference raw ceiling (ONNX Runtime fp32), which the targets compare with.
        "raw": None,
        #: Every raw ceiling of the run by runtime ("onnxruntime fp32", "openvino bf16", ...).
        "raw_runtimes": {},
        "peer": None,
        "overload": None,
        "interleaved": None,
    }
    if not args.server or not args.skip_raw:
        from vigil.inference import catalog

        catalog.install(args.models_dir, args.mirror)
    items = {w: images.items(w) for w in args.workloads}
    quick_s = 1.0 if args.quick else max(2.0, args.duration / 2)
    if not args.skip_raw:
        from benchmarks import raw_engine

        runtimes = raw_engine.runtimes_here(without_bf16=args.no_bf16)
        progress.say(
            "raw engine ceilings (in-process, no gRPC): " + ", ".join(map(str, runtimes)) + " ..."
        )
        by_runtime: dict[str, dict[str, raw_engine.RawResult]] = {}
        run["raw_batch_tables"] = {}
        for runtime in runtimes:
            raw, tables = raw_engine.measure(
                args.models_dir,
                items,
                quick_s,
                rounds=1 if args.quick else 3,
                progress=progress.say,
                runtime=runtime,
            )
            by_runtime[str(runtime)] = {r.workload: r for r in raw}
            run["raw_batch_tables"][str(runtime)] = tables

        def record_raw() -> None:
            run["raw_runtimes"] = {
                name: [dataclasses.asdict(r) for r in results.values()]
                for name, results in by_runtime.items()
            }
            run["raw"] = run["raw_runtimes"][str(raw_engine.RUNTIMES[0])]

        record_raw()

        def recheck_raw(workload: str) -> None:
            """The raw ceilings again, next in time to this workload's server points (servers
            idle); the higher of the two runs is kept."""
            progress.say(f"raw engine again for {workload} (the higher of the two runs is kept)")
            for results in by_runtime.values():
                (results[workload],) = raw_engine.recheck(
                    args.models_dir,
                    items,
                    [results[workload]],
                    quick_s,
                    rounds=1 if args.quick else 3,
                    progress=progress.say,
                )
            record_raw()

    asyncio.run(
        run_servers(args, images, out, progress, run, None if args.skip_raw else recheck_raw)
    )
    run["peer"] = run_peer(args, items, quick_s, progress)
    run["targets"] = report.targets(run)
    print("\n" + report.format_table(run["points"]))
    print("\n" + report.format_reference(run))
    print("\n" + report.format_targets(run["targets"]))
    report.write_json(out / "results.json", run)
    print(f"\nJSON: {out / 'results.json'}")
    if report.plot(out / "results.png", run):
        print(f"plot: {out / 'results.png'}")
    else:
        print("plot: matplotlib is not installed (pip install matplotlib); JSON only")
    return 0


def _commit(root: Path) -> str | None:
    """The checkout's commit (with ``+dirty`` when it has local changes), if it is a git tree."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def run_peer(
    args: argparse.Namespace,
    items: dict[str, list[tuple[bytes, ...]]],
    seconds: float,
    progress: Progress,
) -> list[dict[str, Any]] | dict[str, str]:
    if args.skip_peer:
        return {"skipped": "--skip-peer"}
    from benchmarks import peer_face_recognition as peer

    try:
        peer.load_library()
    except ImportError as exc:
        progress.say(f"face_recognition peer skipped: {exc}")
        return {"skipped": str(exc)}
    wanted = {w: v for w, v in items.items() if w in ("template", "verify")}
    progress.say("face_recognition peer (dlib HOG + ResNet, 2 processes) ...")
    results = peer.measure(
        wanted,
        seconds if args.quick else args.duration,
        rounds=1 if args.quick else 2,
        progress=progress.say,
    )
    return [dataclasses.asdict(r) for r in results]


if __name__ == "__main__":
    sys.exit(main())
