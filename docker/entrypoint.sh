#!/bin/sh
# vigil container entrypoint.
#
#   (no arguments) | serve [ARGS] | --flag ...   install/verify the models, then `vigil serve`
#   healthcheck                                   grpc.health.v1 Check on VIGIL_PORT (exit 0 = ok)
#   anything else                                 run `vigil ARGS` (e.g. `models list`, `verify`)
#
# Models are never baked into the image: at start they are installed from the mirror (a directory
# mounted at /models-mirror, or VIGIL_MODEL_MIRROR: a directory or base URL) into the data volume,
# every file verified against the catalog's sha256. Files already installed and valid are kept, so
# later starts need no mirror. With VIGIL_BACKEND=tensorrt the engines are built on the first start
# into VIGIL_ENGINE_CACHE_DIR (a volume) and read from there afterwards.
set -eu

: "${VIGIL_DATA_DIR:=/var/lib/vigil}"
export VIGIL_DATA_DIR
mirror="${VIGIL_MODEL_MIRROR:-/models-mirror}"

if [ "$#" -eq 0 ]; then
    set -- serve
fi
case "$1" in
    healthcheck)
        exec python - <<'PY'
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

channel = grpc.insecure_channel("127.0.0.1:" + os.environ.get("VIGIL_PORT", "50051"))
try:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=4)
except grpc.RpcError as error:
    print(f"unhealthy: {error.code().name}", file=sys.stderr)
    sys.exit(1)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
PY
        ;;
    serve) shift ;;
    -*) ;;
    *) exec vigil "$@" ;;
esac

mkdir -p "$VIGIL_DATA_DIR"
if [ "${VIGIL_SKIP_MODEL_INSTALL:-0}" != "1" ]; then
    vigil models install --mirror "$mirror"
fi
exec vigil serve "$@"
