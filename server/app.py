"""Assembles the gRPC server: engine, servicers, health, reflection, interceptors, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from vigil.v1 import instant_pb2, instant_pb2_grpc

from inference.backends import BackendOptions
from inference.batcher import BatcherConfig
from inference.catalog import DEFAULT_MODELS
from inference.engine import Engine, EngineConfig
from inference.media import ImageLimits
from server.instant import InstantServicer
from server.interceptors import ErrorMappingInterceptor
from server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAMES = (instant_pb2.DESCRIPTOR.services_by_name["Instant"].full_name,)


def engine_config(settings: Settings) -> EngineConfig:
    batching = {
        spec.name: BatcherConfig(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
            max_queue_size=settings.max_queue_size,
            instances=settings.model_instances,
        )
        for spec in DEFAULT_MODELS
        if not spec.fixed_batch
    }
    return EngineConfig(
        models_dir=settings.resolved_models_dir,
        backend=settings.backend,
        backend_options=BackendOptions(
            intra_op_threads=settings.intra_op_threads,
            cache_dir=settings.resolved_engine_cache_dir,
            precision=settings.precision,
            streams=max(settings.model_instances, settings.detector_instances),
        ),
        image_limits=ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
        ),
        worker_threads=settings.worker_threads,
        detect_max_side=settings.detect_max_side,
        detect_min_side=settings.detect_min_side,
        min_face_px=settings.min_face_px,
        liveness_threshold=settings.liveness_threshold,
        match_distance_threshold=settings.match_distance_threshold,
        batching=batching,
        detector_instances=settings.detector_instances,
    )


@dataclass
class VigilServer:
    """A started server; ``port`` is the bound port (useful when asked for port 0)."""

    server: grpc.aio.Server
    engine: Engine
    health: health.aio.HealthServicer
    port: int
    grace_s: float

    async def stop(self) -> None:
        """Health goes NOT_SERVING, in-flight calls get ``grace_s`` to finish, then all stops."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_s)
        await self.engine.stop()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def start_server(settings: Settings, engine: Engine | None = None) -> VigilServer:
    """Start the engine (all models verified and loaded first), then serve on ``settings.port``."""
    engine = engine or Engine(engine_config(settings))
    await engine.start()
    max_message = settings.resolved_max_message_bytes
    server = grpc.aio.server(
        interceptors=[ErrorMappingInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
        ],
    )
    instant_pb2_grpc.add_InstantServicer_to_server(InstantServicer(engine, settings), server)
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
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        await engine.stop()
        raise OSError(f"cannot bind {settings.host}:{settings.port}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    for name in SERVICE_NAMES:
        await health_servicer.set(name, serving)
    log.info("vigil serving on %s:%d (backend %s)", settings.host, port, settings.backend)
    return VigilServer(server, engine, health_servicer, port, settings.shutdown_grace_s)


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
