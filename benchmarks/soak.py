"""Soak: a mixed load at concurrency 4 on one `vigil serve` (SQLite) for N minutes, the server's
RSS sampled all along; reports the average RSS of each bucket (five minutes by default) and the
growth after the first bucket. ``vigil bench --soak MINUTES`` (or ``python -m benchmarks.soak``).

The mix, each worker in turn: CheckLiveness, ExtractTemplate, Verify (real images), a folder
with an uploaded selfie and a LIVENESS analysis run by the server's worker, GetFolder,
ListFolders with metadata filters, GetServerInfo. Every call is real work on the real models;
nothing is skipped to keep memory flat.

``--tracemalloc`` runs the same load against a server in this process instead and prints the
allocation sites that grew most between the end of the first bucket and the end (what grows,
not only that RSS grows).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from benchmarks.servers import ServerConfig, ServerProcess
from benchmarks.workloads import ROOT, Images, default_data_dir
from vigil.v1 import (
    common_pb2,
    folders_pb2,
    folders_pb2_grpc,
    instant_pb2,
    instant_pb2_grpc,
)

SOAK_CONFIG = ServerConfig(
    "soak",
    # The persistent path too: one analysis worker runs the queued LIVENESS analyses. The
    # folder quota is raised: at concurrency 4 the soak creates ~20,000 folders an hour, and a
    # run at the default (10,000) spent its last 15 minutes refused (a different load).
    {"VIGIL_ANALYSIS_WORKERS": "1", "VIGIL_FOLDERS_PER_COMPANY_PER_HOUR": "1000000"},
    "defaults on SQLite, one analysis worker",
)


@dataclass
class SoakResult:
    minutes: float
    bucket_minutes: float
    concurrency: int
    #: (seconds since the load started, RSS in MB)
    samples: list[tuple[float, float]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)

    def buckets(self) -> list[float]:
        """Average RSS (MB) of each bucket."""
        width = self.bucket_minutes * 60
        grouped: dict[int, list[float]] = {}
        for at, rss in self.samples:
            grouped.setdefault(int(at // width), []).append(rss)
        return [round(statistics.fmean(v), 1) for _, v in sorted(grouped.items())]

    def growth_pct(self) -> float | None:
        """RSS growth from the first bucket's average to the last one's, in percent."""
        buckets = self.buckets()
        if len(buckets) < 2:
            return None
        return round((buckets[-1] - buckets[0]) / buckets[0] * 100, 2)

    def as_dict(self) -> dict[str, Any]:
        return {
            "minutes": self.minutes,
            "bucket_minutes": self.bucket_minutes,
            "concurrency": self.concurrency,
            "rss_mb_per_bucket": self.buckets(),
            "growth_after_first_bucket_pct": self.growth_pct(),
            "calls": dict(self.calls),
            "samples": self.samples,
        }


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class MixedLoad:
    """One worker's cycle of calls; counts each call's outcome by method and status."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        images: Images,
        calls: Counter[str],
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        #: Every call carries the key, and a deadline.
        self.options: dict[str, Any] = {"metadata": metadata, "timeout": 60.0}
        self.instant = instant_pb2_grpc.InstantStub(channel)
        self.folders = folders_pb2_grpc.FoldersStub(channel)
        self.singles = images.singles
        self.pairs = images.pairs
        self.selfie = images.files["obama2.jpg"]
        self.calls = calls
        self.folder_ids: list[str] = []

    async def _count(self, name: str, call: Awaitable[Any]) -> Any:
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            self.calls[f"{name} {error.code().name}"] += 1
            return None
        self.calls[f"{name} OK"] += 1
        return reply

    async def cycle(self, turn: int) -> None:
        image = self.singles[turn % len(self.singles)]
        first, second = self.pairs[turn % len(self.pairs)]
        media = common_pb2.Media
        await self._count(
            "CheckLiveness",
            self.instant.CheckLiveness(
                instant_pb2.LivenessRequest(image=media(data=image)), **self.options
            ),
        )
        await self._count(
            "ExtractTemplate",
            self.instant.ExtractTemplate(
                instant_pb2.TemplateRequest(image=media(data=image)), **self.options
            ),
        )
        await self._count(
            "Verify",
            self.instant.Verify(
                instant_pb2.VerifyRequest(
                    a=instant_pb2.FaceInput(image=media(data=first)),
                    b=instant_pb2.FaceInput(image=media(data=second)),
                ),
                **self.options,
            ),
        )
        await self._folder(turn)
        await self._count(
            "ListFolders",
            self.folders.ListFolders(
                folders_pb2.ListFoldersRequest(
                    meta=[
                        folders_pb2.MetaFilter(
                            key="soak", op=folders_pb2.MetaFilter.OP_EQ, value=str(turn % 10)
                        )
                    ],
                    page_size=20,
                ),
                **self.options,
            ),
        )
        await self._count(
            "GetServerInfo",
            self.instant.GetServerInfo(instant_pb2.GetServerInfoRequest(), **self.options),
        )

    async def _folder(self, turn: int) -> None:
        """A folder with a selfie and a LIVENESS analysis (run by the server's worker); the
        previous cycle's folder is read back."""
        folder = await self._count(
            "CreateFolder",
            self.folders.CreateFolder(
                folders_pb2.CreateFolderRequest(
                    meta={"soak": str(turn % 10), "run": uuid.uuid4().hex}
                ),
                **self.options,
            ),
        )
        if folder is None:
            return

        async def parts() -> AsyncIterator[folders_pb2.UploadMediaRequest]:
            header = folders_pb2.UploadMediaHeader(folder_id=folder.id, tags=["photo_selfie"])
            yield folders_pb2.UploadMediaRequest(header=header)
            yield folders_pb2.UploadMediaRequest(chunk=self.selfie)

        await self._count("UploadMedia", self.folders.UploadMedia(parts(), **self.options))
        liveness = folders_pb2.AnalysisRequest(type=folders_pb2.ANALYSIS_TYPE_LIVENESS)
        await self._count(
            "CreateAnalyses",
            self.folders.CreateAnalyses(
                folders_pb2.CreateAnalysesRequest(folder_id=folder.id, analyses=[liveness]),
                **self.options,
            ),
        )
        if self.folder_ids:
            previous = self.folder_ids.pop()
            await self._count(
                "GetFolder",
                self.folders.GetFolder(
                    folders_pb2.GetFolderRequest(folder_id=previous), **self.options
                ),
            )
        self.folder_ids.append(folder.id)


async def drive(
    target: str,
    metadata: list[tuple[str, str]],
    images: Images,
    result: SoakResult,
    sample: Callable[[], float],
    sample_every_s: float,
    on_bucket: Callable[[int], None] | None = None,
) -> None:
    """The mixed load at ``result.concurrency`` for ``result.minutes``, sampling ``sample()``."""

    channel = grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    started = time.monotonic()
    ends = started + result.minutes * 60
    bucket_s = result.bucket_minutes * 60

    async def worker(index: int) -> None:
        load = MixedLoad(channel, images, result.calls, tuple(metadata))
        for turn in itertools.count(index):
            if time.monotonic() >= ends:
                return
            await load.cycle(turn)

    async def sampler() -> None:
        bucket = 0
        while time.monotonic() < ends:
            at = time.monotonic() - started
            result.samples.append((round(at, 1), round(sample(), 1)))
            if on_bucket is not None and int(at // bucket_s) > bucket:
                bucket = int(at // bucket_s)
                on_bucket(bucket)
            await asyncio.sleep(sample_every_s)

    try:
        await asyncio.gather(sampler(), *(worker(i) for i in range(result.concurrency)))
    finally:
        await channel.close()


def write_report(result: SoakResult, out: Path, extra: dict[str, Any] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = result.as_dict() | (extra or {})
    (out / "soak.json").write_text(json.dumps(data, indent=2))
    lines = [
        f"# Soak: {result.minutes:g} min, concurrency {result.concurrency}, SQLite",
        "",
        f"| bucket ({result.bucket_minutes:g} min) | average RSS (MB) |",
        "| --- | --- |",
        *(f"| {i + 1} | {rss} |" for i, rss in enumerate(result.buckets())),
        "",
        f"Growth after the first bucket: {result.growth_pct()} %",
        "",
        "Calls: " + ", ".join(f"{k} {v}" for k, v in sorted(result.calls.items())),
    ]
    report = out / "soak.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def run_soak(
    minutes: float,
    bucket_minutes: float,
    models_dir: Path,
    out: Path,
    data_dir: Path,
    concurrency: int = 4,
    server_env: dict[str, str] | None = None,
) -> SoakResult:
    """Start a server, soak it, stop it; write soak.json and soak.md under ``out``."""
    images = Images.load(data_dir)
    result = SoakResult(minutes, bucket_minutes, concurrency)
    out.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(SOAK_CONFIG, models_dir, out / "server.log", server_env)
    try:

        async def go() -> None:
            await server.ready()

            def bucket_done(bucket: int) -> None:
                print(f"[soak] bucket {bucket}: RSS {result.buckets()[bucket - 1]} MB", flush=True)

            await drive(
                server.target,
                list(server.metadata),
                images,
                result,
                lambda: rss_mb(server.pid),
                sample_every_s=min(10.0, bucket_minutes * 6),
                on_bucket=bucket_done,
            )

        asyncio.run(go())
    finally:
        server.stop()
    report = write_report(result, out)
    print(report.read_text(), flush=True)
    return result


def run_tracemalloc(
    minutes: float, bucket_minutes: float, models_dir: Path, data_dir: Path
) -> None:
    """The same load on a server in this process; prints the allocation sites that grew."""
    import tempfile
    import tracemalloc

    from vigil.server.app import start_server
    from vigil.server.settings import Settings
    from vigil.storage import credentials, folders

    tracemalloc.start(10)
    images = Images.load(data_dir)
    result = SoakResult(minutes, bucket_minutes, concurrency=4)
    snapshots: list[tracemalloc.Snapshot] = []

    async def go() -> None:
        settings = Settings(
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            models_dir=models_dir,
            data_dir=Path(tempfile.mkdtemp(prefix="vigil-soak-")),
            allow_plaintext=True,
            rate_limit_per_s=0.0,
            analysis_workers=1,
            log_level="WARNING",
        )
        server = await start_server(settings)
        try:

            def admin_key(session: Any) -> str:
                company = folders.ensure_company("soak", session=session).id
                return credentials.create_api_key(
                    "soak",
                    "ADMIN",
                    "FULL",
                    company_id=company,
                    created_by="soak",
                    expires_at=None,
                    session=session,
                )[1]

            key = await server.app.db(admin_key)

            def bucket_done(bucket: int) -> None:
                snapshots.append(tracemalloc.take_snapshot())
                traced_mb = tracemalloc.get_traced_memory()[0] / 1e6
                print(f"[tracemalloc] bucket {bucket}: traced {traced_mb:.1f} MB", flush=True)

            await drive(
                f"127.0.0.1:{server.port}",
                [("x-api-key", key)],
                images,
                result,
                lambda: tracemalloc.get_traced_memory()[0] / 1e6,
                sample_every_s=5.0,
                on_bucket=bucket_done,
            )
            snapshots.append(tracemalloc.take_snapshot())
        finally:
            await server.stop()

    asyncio.run(go())
    print("traced Python memory (MB) per bucket:", result.buckets())
    if len(snapshots) >= 2:
        print("allocation sites that grew most from the end of the first bucket to the end:")
        for stat in snapshots[-1].compare_to(snapshots[0], "traceback")[:15]:
            frame = stat.traceback[-1] if stat.traceback else None
            print(f"  {stat.size_diff / 1e3:+9.1f} kB {stat.count_diff:+7d} blocks  {frame}")
            for line in stat.traceback.format()[-6:]:
                print("       ", line)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="run only the soak: a mixed load at concurrency 4 on SQLite for MINUTES "
        "(30 for the issue's target), RSS per bucket and growth after the first",
    )
    parser.add_argument(
        "--soak-bucket-minutes",
        type=float,
        default=5.0,
        help="the soak's RSS buckets, minutes (default 5)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="with --soak: run the server in this process and print what grew (tracemalloc)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    return soak_from_args(args)


def soak_from_args(args: argparse.Namespace) -> int:
    """``--soak`` of the harness (or of this module) with its options."""
    from vigil.inference import catalog

    minutes = args.soak if args.soak else 30.0
    catalog.install(args.models_dir, getattr(args, "mirror", None))
    if args.tracemalloc:
        run_tracemalloc(minutes, args.soak_bucket_minutes, args.models_dir, args.data_dir)
        return 0
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "benchmarks" / "reports" / f"soak-{stamp}"
    run_soak(
        minutes,
        args.soak_bucket_minutes,
        args.models_dir,
        out,
        args.data_dir,
        server_env=getattr(args, "server_env", None),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
