# syntax=docker/dockerfile:1
# vigil on CPU (ONNX Runtime). Build:  docker build -t vigil .
#   With the models at hand for the build's smoke test (it then serves real calls over TLS):
#     docker build --build-context models=/path/to/shared/models -t vigil .
#   Models baked into the image (no mirror needed at run time):
#     docker build --build-context models=/path/to/shared/models --build-arg BAKE_MODELS=1 -t vigil .
# Run (TLS is on by default; vigil refuses plaintext). For trying it out, a self-signed pair:
#     docker run --rm -v "$PWD/tls:/tls" --user "$(id -u)" vigil tls self-signed --out /tls
#     docker run -p 50051:50051 -p 9095:9095 -v "$PWD/tls:/etc/vigil/tls:ro" \
#         -v vigil-data:/var/lib/vigil -v /path/to/shared/models:/models-mirror:ro vigil
#   (clients trust tls/tls.crt). The certificate and key are read from /etc/vigil/tls/tls.crt and
#   tls.key (VIGIL_TLS_CERT_FILE, VIGIL_TLS_KEY_FILE): mount your own there in production.
#   The first administrator:  docker exec <container> vigil admin bootstrap --if-needed
# Models are installed from the mirror into the volume at the first start (see
# docker/entrypoint.sh), unless baked in; later starts need no mirror. VIGIL_MODEL_MIRROR may be a
# base URL instead. The HEALTHCHECK is `vigil health`: grpc.health.v1 over TLS.

ARG PYTHON_IMAGE=python:3.11-slim

# The model mirror for the smoke test and BAKE_MODELS: empty unless `--build-context models=DIR`.
FROM scratch AS models

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
    VIGIL_METRICS_HOST=0.0.0.0 \
    VIGIL_METRICS_PORT=9095 \
    VIGIL_TLS_CERT_FILE=/etc/vigil/tls/tls.crt \
    VIGIL_TLS_KEY_FILE=/etc/vigil/tls/tls.key \
    GRPC_VERBOSITY=ERROR

# libgomp1: OpenMP runtime some ONNX Runtime / OpenCV builds link against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /wheels /wheels
# Both wheels in one call: the server's exact pin on vigil-client is met by the local wheel.
RUN pip install /wheels/*.whl && rm -rf /wheels

COPY docker/entrypoint.sh /usr/local/bin/vigil-entrypoint
COPY docker/smoke_test.py /usr/local/lib/vigil/smoke_test.py
RUN chmod 0755 /usr/local/bin/vigil-entrypoint \
    && useradd --system --uid 10001 --home-dir /var/lib/vigil --shell /usr/sbin/nologin vigil \
    && mkdir -p /var/lib/vigil /models-mirror /etc/vigil/tls \
    && chown vigil:vigil /var/lib/vigil

# BAKE_MODELS=1: the models installed (and verified) into the image from the build's mirror.
ARG BAKE_MODELS=0
RUN --mount=type=bind,from=models,target=/build-models \
    if [ "$BAKE_MODELS" = 1 ]; then vigil models install --mirror /build-models --dir /opt/vigil-models; fi

USER vigil
# The installed wheel's smoke test: with models, TLS serving and the health check; without, the
# commands and the packaged migrations (docker/smoke_test.py).
RUN --mount=type=bind,from=models,target=/build-models \
    if [ -f /build-models/SHA256SUMS ]; then \
        python /usr/local/lib/vigil/smoke_test.py --models-dir /build-models; \
    else python /usr/local/lib/vigil/smoke_test.py; fi
WORKDIR /var/lib/vigil
VOLUME ["/var/lib/vigil"]
EXPOSE 50051 9095

# `vigil health`: grpc.health.v1 on the gRPC port, over TLS when VIGIL_TLS_CERT_FILE is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["vigil-entrypoint", "healthcheck"]

ENTRYPOINT ["vigil-entrypoint"]
CMD ["serve"]
