#!/usr/bin/env bash
# `make gpu-check`: on one CUDA GPU (sized for an H100/H200, < 8 minutes), install the CUDA
# extras, run every CUDA-only test, and print bench/throughput.py and bench/mesh.py ratios
# on the real Qwen2-0.5B shape (24 layers, bf16). Nothing here guesses a number: each line
# comes from a run on the device.
#
#   VENV=.venv-gpu      where the CUDA build of torch goes (the CPU .venv stays as it is)
#   TORCH_SPEC=torch    what pip installs for CUDA (PyPI's default wheel is a CUDA build)
#   FLASH_ATTN_SECONDS  how long flash-attn may take to install (default 240); a source build
#                       takes longer, then its tests skip and the report says so
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-gpu}"
TORCH_SPEC="${TORCH_SPEC:-torch}"
FLASH_ATTN_SECONDS="${FLASH_ATTN_SECONDS:-240}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
started=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - started ))s)"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

step "install: $TORCH_SPEC, meshserve[test] into $VENV"
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "$TORCH_SPEC"
"$PY" -m pip install -q -e ".[test]"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step "install: flash-attn (at most ${FLASH_ATTN_SECONDS}s)"
if timeout "$FLASH_ATTN_SECONDS" "$PY" -m pip install -q --no-build-isolation "flash-attn>=2.6"; then
  "$PY" -c "import flash_attn; print('flash-attn', flash_attn.__version__)"
else
  echo "flash-attn did not install in ${FLASH_ATTN_SECONDS}s: the flash-attn paged tests skip"
fi

step "CUDA-only tests (pytest -m cuda)"
"$PY" -m pytest -q -m cuda -p no:cacheprovider tests/

step "bench/throughput.py: Qwen2-0.5B shape, 24 layers, bf16, vs HF static batching"
"$PY" -m bench.throughput --layers 24 --dtype bfloat16 --device cuda

step "bench/mesh.py: the same model in process vs through meshserve up"
"$PY" -m bench.mesh --layers 24 --dtype bfloat16 --device cuda --max-tokens 128

step "done"
