"""Assembles the gRPC server: engine, servicers, health, reflection, interceptors, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vigil.inference import metrics as inference_metrics
from vigil.inference.backends import GPU_BACKENDS, BackendOptions
from vigil.inference.batcher import BatcherConfig
from vigil.inference.catalog import DEFAULT_MODELS, YUNET
from vigil.inference.decisions import Thresholds
from vigil.inference.engine import Engine, EngineConfig
from vigil.inference.media import ImageLimits
from vigil.server import metrics
from vigil.server.api.accounts import (
    AdminServicer,
    AuthServicer,
    OperatorsServicer,
    VerdictsServicer,
)
from vigil.server.api.challenges import ChallengesServicer
from vigil.server.api.collections import CollectionsServicer, index_config
from vigil.server.api.folders import FoldersServicer
from vigil.server.api.instant import InstantServicer
from vigil.server.api.interceptor import ErrorMappingInterceptor
from vigil.server.api.statistics import StatisticsServicer
from vigil.server.api.validation import RequestLimits
from vigil.server.api.webhooks import WebhooksServicer
from vigil.server.context import AUTH_DB_THREADS, AppContext
from vigil.server.health_watch import HealthWatch
from vigil.server.jobs.webhooks import WebhookDispatcher
from vigil.server.jobs.worker import AnalysisWorkers
from vigil.server.security.auth import AuthInterceptor
from vigil.server.security.state import Security, build_security
from vigil.server.security.tls import server_credentials
from vigil.server.settings import Settings
from vigil.server.shared_state import SharedState, SharedStateWatch
from vigil.storage.blobs import LocalBlobStore
from vigil.storage.common import set_page_token_key
from vigil.storage.db import Database, migrate
from vigil.storage.face_index import FaceIndex
from vigil.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    challenges_pb2,
    challenges_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    folders_pb2,
    folders_pb2_grpc,
    instant_pb2,
    instant_pb2_grpc,
    statistics_pb2,
    statistics_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    *(
        auth_pb2.DESCRIPTOR.services_by_name[name].full_name
        for name in ("Auth", "Admin", "Operators", "Verdicts")
    ),
    instant_pb2.DESCRIPTOR.services_by_name["Instant"].full_name,
    folders_pb2.DESCRIPTOR.services_by_name["Folders"].full_name,
    collections_pb2.DESCRIPTOR.services_by_name["Collections"].full_name,
    challenges_pb2.DESCRIPTOR.services_by_name["Challenges"].full_name,
    webhooks_pb2.DESCRIPTOR.services_by_name["Webhooks"].full_name,
    statistics_pb2.DESCRIPTOR.services_by_name["Statistics"].full_name,
)


def method_paths() -> list[str]:
    """Every RPC's path (``/vigil.v1.Instant/Liveness``), as the metrics label them."""
    files = (
        auth_pb2,
        instant_pb2,
        folders_pb2,
        collections_pb2,
        challenges_pb2,
        webhooks_pb2,
        statistics_pb2,
    )
    return [
        f"/{service.full_name}/{method.name}"
        for module in files
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def thresholds(settings: Settings) -> Thresholds:
    """Every decision threshold, from the settings: the one source (``engine.config``)."""
    return Thresholds(
        liveness=settings.liveness_threshold,
        match_distance=settings.match_distance_threshold,
        search_distance=settings.search_threshold,
        biometry_grey_zone=settings.biometry_grey_zone,
    )


def batches_in_flight(settings: Settings) -> int:
    """``model_instances``, or its default: 2 on a GPU backend, 1 on a CPU one."""
    if settings.model_instances > 0:
        return settings.model_instances
    return 2 if settings.backend in GPU_BACKENDS else 1


def engine_config(settings: Settings) -> EngineConfig:
    in_flight = batches_in_flight(settings)
    batching = {
        spec.name: BatcherConfig(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
            max_queue_size=settings.max_queue_size,
            instances=in_flight,
            max_fill_wait_s=settings.batch_fill_wait_ms / 1000.0,
        )
        for spec in DEFAULT_MODELS
        if not spec.fixed_batch
    }
    # YuNet's ONNX has a fixed batch of 1: parallel instances instead of batches.
    batching[YUNET.name] = BatcherConfig(
        max_batch_size=1,
        max_queue_delay_s=0.0,
        max_queue_size=settings.max_queue_size,
        instances=settings.detector_instances,
    )
    return EngineConfig(
        models_dir=settings.resolved_models_dir,
        backend=settings.backend,
        backend_options=BackendOptions(
            intra_op_threads=settings.intra_op_threads,
            cache_dir=settings.resolved_engine_cache_dir,
            precision=settings.precision,
            # One GPU context and stream per batch in flight: no idle ones.
            streams=in_flight,
            # Detector jobs beyond 4 wait for a free context; each costs a copy of the engine.
            detector_streams=min(settings.detector_instances, 4),
            # Compiled engines are built for what the batchers and the detector send.
            max_batch_size=settings.max_batch_size,
            detect_max_side=settings.detect_max_side,
        ),
        image_limits=ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
        ),
        worker_threads=settings.worker_threads or settings.detector_instances + 4,
        detect_max_side=settings.detect_max_side,
        detect_min_side=settings.detect_min_side,
        min_face_px=settings.min_face_px,
        thresholds=thresholds(settings),
        batching=batching,
        detector_instances=settings.detector_instances,
        max_inflight_images=settings.max_inflight_images,
        worker_nice=settings.worker_nice,
        decode_pixel_budget=settings.resolved_decode_pixel_budget,
        detect_max_tiles=settings.detect_max_tiles,
    )


class Background(Protocol):
    """Work that runs beside the RPCs (analysis workers, webhook deliveries)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class VigilServer:
    """A started server; ``port`` is the bound port (useful when asked for port 0)."""

    server: grpc.aio.Server
    app: AppContext
    health: health.aio.HealthServicer
    port: int
    grace_s: float
    background: list[Background] = field(default_factory=list)
    security: Security | None = None

    @property
    def engine(self) -> Engine:
        return self.app.engine

    async def stop(self) -> None:
        """Health goes NOT_SERVING, in-flight calls get ``grace_s`` to finish, then all stops."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_s)
        for task in self.background:
            await task.stop()
        if self.app.background_writes:  # audit events still being written
            await asyncio.gather(*self.app.background_writes, return_exceptions=True)
        await self.app.engine.stop()
        self.app.close()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def _running(engine: Engine) -> tuple[str, str]:
    """(backend, precision) the engine's models run, ``auto`` resolved."""
    running = engine.running
    if running is None:
        return engine.config.backend, engine.config.backend_options.precision
    return running.backend, running.precision


async def open_app(settings: Settings, engine: Engine | None = None) -> AppContext:
    """Start the engine (every model verified and loaded) and open the migrated database."""
    engine = engine or Engine(engine_config(settings))
    await engine.start()
    if engine.running is not None:
        metrics.report_backend(engine.running.backend, engine.running.precision)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # A connection for each database thread: the calls' and workers', and the credential
        # lookups' own (so authentication never waits for a connection behind a tenant's work).
        database = Database(
            settings.resolved_database_url, pool_size=settings.db_threads + AUTH_DB_THREADS
        )
        await asyncio.to_thread(migrate, database.engine)
        blobs = LocalBlobStore(settings.resolved_blob_dir)
    except BaseException:
        await engine.stop()
        raise
    app = AppContext(
        settings=settings,
        engine=engine,
        database=database,
        blobs=blobs,
        face_index=FaceIndex(index_config(settings)),
    )
    app.change_follower = app.face_index.follow(database, settings.index_poll_s)
    return app


def _add_services(server: grpc.aio.Server, app: AppContext, security: Security) -> None:
    auth_pb2_grpc.add_AuthServicer_to_server(AuthServicer(security), server)
    auth_pb2_grpc.add_AdminServicer_to_server(AdminServicer(security), server)
    auth_pb2_grpc.add_OperatorsServicer_to_server(OperatorsServicer(security), server)
    auth_pb2_grpc.add_VerdictsServicer_to_server(VerdictsServicer(security), server)
    instant = InstantServicer(app.engine, app.settings)
    instant_pb2_grpc.add_InstantServicer_to_server(instant, server)
    folders_pb2_grpc.add_FoldersServicer_to_server(FoldersServicer(app), server)
    collections_pb2_grpc.add_CollectionsServicer_to_server(CollectionsServicer(app), server)
    webhooks_pb2_grpc.add_WebhooksServicer_to_server(WebhooksServicer(app), server)
    statistics_pb2_grpc.add_StatisticsServicer_to_server(StatisticsServicer(app), server)
    challenges_pb2_grpc.add_ChallengesServicer_to_server(ChallengesServicer(security), server)


async def start_server(settings: Settings, engine: Engine | None = None) -> VigilServer:
    """Open the app, then serve on ``settings.port`` with workers running beside."""
    credentials = server_credentials(settings)  # refuses plaintext unless allowed, before loading
    metrics.preinitialise(method_paths())
    inference_metrics.preinitialise(spec.name for spec in DEFAULT_MODELS)
    app = await open_app(settings, engine)
    if settings.redis_url:
        app.shared = SharedState(settings.redis_url, settings.redis_prefix)
        await app.shared.ping()
    security = build_security(app)
    set_page_token_key(security.signer.derived_key(b"vigil page tokens"))
    max_message = settings.resolved_max_message_bytes
    server = grpc.aio.server(
        interceptors=[
            ErrorMappingInterceptor(RequestLimits.of(settings)),
            AuthInterceptor(app, security.authenticator),
        ],
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            # A second server on a busy port must fail, not share it and split the calls.
            ("grpc.so_reuseport", 0),
        ],
    )
    _add_services(server, app, security)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{settings.host}:{settings.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if port == 0:
        await app.engine.stop()
        app.close()
        raise OSError(
            f"cannot bind the gRPC port {address} (VIGIL_HOST, VIGIL_PORT): "
            "in use by another process, or not an address of this machine"
        )
    await server.start()
    background: list[Background] = [
        AnalysisWorkers(app, settings.analysis_workers),
        WebhookDispatcher(app),
    ]
    for task in background:
        task.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    for name in SERVICE_NAMES:
        await health_servicer.set(name, serving)
    if app.shared is not None:
        shared_watch = SharedStateWatch(app.shared, health_servicer)
        shared_watch.start()
        background.append(shared_watch)
    # After SERVING is set: NOT_SERVING for good once a model fails beyond repair (GPU).
    watch = HealthWatch(app.engine, health_servicer, SERVICE_NAMES)
    watch.start()
    background.append(watch)
    log.info(
        "vigil serving on %s:%d (%s, backend %s, precision %s)",
        settings.host,
        port,
        "TLS" if credentials is not None else "plaintext",
        *_running(app.engine),
    )
    return VigilServer(
        server, app, health_servicer, port, settings.shutdown_grace_s, background, security
    )


async def work_forever(settings: Settings) -> None:
    """`vigil worker`: run analyses and webhook deliveries from the shared queue, no gRPC."""
    app = await open_app(settings)
    background: list[Background] = [
        AnalysisWorkers(app, max(1, settings.analysis_workers)),
        WebhookDispatcher(app),
    ]
    for task in background:
        task.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "vigil worker running (%d analysis workers, backend %s, precision %s)",
        max(1, settings.analysis_workers),
        *_running(app.engine),
    )
    await stop.wait()
    for task in background:
        await task.stop()
    await app.engine.stop()
    app.close()
    log.info("worker stopped")


async def serve_forever(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "shutting down: health NOT_SERVING, %.0f s grace for in-flight calls",
        settings.shutdown_grace_s,
    )
    await running.stop()
    log.info("stopped")
