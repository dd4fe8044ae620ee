#!/usr/bin/env bash
# Generates the Python code for protos/vigil/v1/*.proto into protos/ (package `vigil.v1`), with
# mypy stubs. The output is committed; CI runs this script and fails on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f protos/vigil/v1/*_pb2*.py protos/vigil/v1/*_pb2*.pyi
python -m grpc_tools.protoc \
  -I protos \
  --python_out=protos \
  --mypy_out=protos \
  --grpc_python_out=protos \
  --mypy_grpc_out=protos \
  protos/vigil/v1/*.proto
touch protos/vigil/v1/__init__.py  # vigil itself is a namespace package (no __init__.py)
