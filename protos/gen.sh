#!/usr/bin/env bash
# Regenerates the Python stubs from protos/meshserve/v1/*.proto into the same folder.
# The stubs import each other as `protos.meshserve.v1.X_pb2` so that `protos` stays the
# one top-level package.
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-.}"
python -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  meshserve/v1/common.proto meshserve/v1/encoder.proto meshserve/v1/lm.proto meshserve/v1/gateway.proto
for f in "$out"/meshserve/v1/*_pb2*.py "$out"/meshserve/v1/*_pb2.pyi; do
  sed -i -E 's/^from meshserve\.v1 import/from protos.meshserve.v1 import/' "$f"
done
