#!/usr/bin/env bash
# Check the TensorRT backend on a lent GPU, inside an NGC TensorRT container, in under 10 minutes:
# builds every model's engine in fp32 and fp16, compares each with ONNX Runtime CPU within a
# tolerance and prints items/s at batch 1, 32 and 128 (scripts/gpu_check.py does the work).
#
#   docker run --rm --gpus '"device=0"' -v "$PWD/..:/w" -w /w/main \
#       nvcr.io/nvidia/tensorrt:24.12-py3 scripts/gpu_check.sh [gpu_check.py options]
#
# The repository's parent must hold shared/models (and shared/data for real inputs). When vigil
# and its GPU dependencies are not importable yet, they are installed into a venv on top of the
# image's TensorRT (the image's TensorRT pinned, no CPU onnxruntime: docker/gpu_requirements.py);
# that needs PyPI. Engines are cached in /tmp/vigil-gpu-check-engines between runs.
set -euo pipefail

cd "$(dirname "$0")/.."
limit_s="${GPU_CHECK_TIMEOUT_S:-600}"
venv="${GPU_CHECK_VENV:-/tmp/vigil-gpu-check-venv}"

if ! python3 -c 'import tensorrt' 2>/dev/null; then
    echo "gpu_check: no TensorRT in this Python; run inside an NGC TensorRT container" >&2
    exit 2
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi

python=python3
if ! python3 -c 'import vigil.inference.backends.tensorrt, cuda.bindings.runtime, onnxruntime' \
    2>/dev/null; then
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv --system-site-packages "$venv"
        python3 docker/gpu_requirements.py constraints --python python3 >"$venv/image-tensorrt.txt"
        "$venv/bin/python" docker/gpu_requirements.py requirements --cuda auto \
            >"$venv/requirements.txt"
        "$venv/bin/pip" install -q -c "$venv/image-tensorrt.txt" -r "$venv/requirements.txt" \
            ./clients
        "$venv/bin/pip" install -q -c "$venv/image-tensorrt.txt" --no-deps .
        "$venv/bin/python" docker/gpu_requirements.py check \
            --constraints "$venv/image-tensorrt.txt"
    fi
    python="$venv/bin/python"
fi

exec timeout "$limit_s" "$python" scripts/gpu_check.py "$@"
