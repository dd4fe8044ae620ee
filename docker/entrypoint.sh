#!/bin/sh
# vigil container entrypoint.
#
#   (no arguments) | serve [ARGS] | --flag ...   install/verify the models, then `vigil serve`
#   healthcheck                                   `vigil health`: grpc.health.v1 on VIGIL_PORT, over
#                                                 TLS when VIGIL_TLS_CERT_FILE is set (exit 0 = ok)
#   anything else                                 run `vigil ARGS` (e.g. `models list`, `verify`)
#
# Unless baked into the image at build time (/opt/vigil-models, BAKE_MODELS=1), models are
# installed at start from the mirror (a directory mounted at /models-mirror, or
# VIGIL_MODEL_MIRROR: a directory or base URL) into the data volume,
# every file verified against the catalog's sha256. Files already installed and valid are kept, so
# later starts need no mirror. With VIGIL_BACKEND=tensorrt the engines are built on the first start
# into VIGIL_ENGINE_CACHE_DIR (a volume) and read from there afterwards.
set -eu

: "${VIGIL_DATA_DIR:=/var/lib/vigil}"
export VIGIL_DATA_DIR
mirror="${VIGIL_MODEL_MIRROR:-/models-mirror}"
# Models baked into the image at build time (BAKE_MODELS=1) are used unless told otherwise.
if [ -z "${VIGIL_MODELS_DIR:-}" ] && [ -d /opt/vigil-models ]; then
    VIGIL_MODELS_DIR=/opt/vigil-models
    export VIGIL_MODELS_DIR
fi

if [ "$#" -eq 0 ]; then
    set -- serve
fi
case "$1" in
    healthcheck)
        shift
        exec vigil health "$@"
        ;;
    serve) shift ;;
    -*) ;;
    *) exec vigil "$@" ;;
esac

mkdir -p "$VIGIL_DATA_DIR"
if [ "${VIGIL_SKIP_MODEL_INSTALL:-0}" != "1" ] && [ "${VIGIL_MODELS_DIR:-}" != /opt/vigil-models ]; then
    vigil models install --mirror "$mirror"
fi
exec vigil serve "$@"
