#!/usr/bin/env bash
# Creates/updates .venv with the whole stack in a fixed, reproducible order.
# Why a script and not one `pip install`: vLLM and llmcompressor pin different
# compressed-tensors versions (see requirements/compress.txt), so the resolve is
# done in two steps; and vLLM drags in torchvision/torchaudio/torchcodec builds that
# do not match the CPU torch (importing transformers' Llama then fails), so we
# remove them. Idempotent: the Makefile reruns it only when a requirement changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
start=$(date +%s)

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  stack=requirements/gpu.txt
else
  stack=requirements/cpu.txt
fi
# tcmalloc: the processes' memory allocator (ranking/allocator.py; glibc's malloc lets a training
# run's resident memory grow several-fold). A system library, so apt where we may use it.
has_tcmalloc() {  # found as ranking/allocator.py finds it
  "$PY" -c "import ctypes.util as u, sys; sys.exit(not (u.find_library('tcmalloc_minimal') or u.find_library('tcmalloc')))"
}
if ! has_tcmalloc; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[install] tcmalloc (libtcmalloc-minimal4, apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; } \
      || echo "[install] tcmalloc not installed (apt failed): slimrank runs on the system's malloc"
  else
    echo "[install] tcmalloc not found: slimrank runs on the system's malloc (as root: apt-get install libtcmalloc-minimal4)"
  fi
fi
echo "[install] step 1/4: serving stack ($stack)"
$PIP install -q -r "$stack" -r requirements/dev.txt -r requirements/data.txt
echo "[install] step 2/4: llmcompressor on top (compressed-tensors 0.19.0; pip warns about vLLM's pin, expected)"
$PIP install -q -r requirements/compress.txt 2>&1 | grep -v "dependency conflicts\|requires compressed-tensors\|resolver does not currently" || true
echo "[install] step 3/4: drop torchvision/torchaudio/torchcodec (mismatched builds; text models need none)"
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "[install] step 4/4: slimrank itself (editable) and its own loose requirements"
# Everything pinned is already in place, so this only adds what is missing (e.g. matplotlib).
$PIP install -q --no-build-isolation -e .
# MovieLens-100k ships inside the recbole wheel; only its data files are read, so no deps.
$PIP install -q --no-deps recbole==1.2.1
"$VENV/bin/python" -c "import torch, transformers, vllm, llmcompressor, compressed_tensors; print('[install] ok: torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__, '| llmcompressor', llmcompressor.__version__, '| compressed-tensors', compressed_tensors.__version__)"
echo "[install] done in $(( $(date +%s) - start ))s"
