# syntax=docker/dockerfile:1
# vigil on CPU (ONNX Runtime). Build:  docker build -t vigil .
# Run:  docker run -p 50051:50051 -p 9095:9095 \
#         -v vigil-data:/var/lib/vigil -v /path/to/shared/models:/models-mirror:ro vigil
# Models are installed from the mirror into the volume at the first start (see
# docker/entrypoint.sh); later starts need no mirror. VIGIL_MODEL_MIRROR may be a base URL instead.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build the wheels (vigil-client, vigil)
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the package needs (no .venv, tests or benchmarks in the build context's copy).
COPY pyproject.toml README.md LICENSE ./
COPY protos/ protos/
COPY server/ server/
COPY inference/ inference/
COPY storage/ storage/
COPY clients/ clients/
# clients/ builds vigil-client and takes the contract from ../protos.
RUN pip wheel --no-deps --wheel-dir /wheels ./clients .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIGIL_DATA_DIR=/var/lib/vigil \
    VIGIL_BACKEND=onnxruntime \
    VIGIL_HOST=[::] \
    VIGIL_PORT=50051 \
    VIGIL_METRICS_PORT=9095

# libgomp1: OpenMP runtime some ONNX Runtime / OpenCV builds link against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /wheels /wheels
# Both wheels in one call: the server's exact pin on vigil-client is met by the local wheel.
RUN pip install /wheels/*.whl && rm -rf /wheels

COPY docker/entrypoint.sh /usr/local/bin/vigil-entrypoint
RUN chmod 0755 /usr/local/bin/vigil-entrypoint \
    && useradd --system --uid 10001 --home-dir /var/lib/vigil --shell /usr/sbin/nologin vigil \
    && mkdir -p /var/lib/vigil /models-mirror \
    && chown vigil:vigil /var/lib/vigil

USER vigil
WORKDIR /var/lib/vigil
VOLUME ["/var/lib/vigil"]
EXPOSE 50051 9095

# grpc.health.v1 on the gRPC port (the standard health service; needs no credential).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["vigil-entrypoint", "healthcheck"]

ENTRYPOINT ["vigil-entrypoint"]
CMD ["serve"]
