#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): a Qwen3-0.6B-shaped model built locally, items/s at
# p99 <= 500 ms for 10- and 50-item requests, bf16 and FP8, in-process and through the server
# (and vLLM's rows where vLLM is installed). Nothing is downloaded.
#   bash benchmarks/gpu.sh            # on a machine with an NVIDIA GPU
#   bash benchmarks/gpu.sh --dry-run  # anywhere: a tiny model, checks the script end to end
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
missing=$("$PY" - <<'PY'
import importlib.util
need = ["torch", "transformers", "tokenizers", "safetensors", "fastapi", "uvicorn", "pydantic",
        "pydantic_settings", "httpx", "numpy", "tqdm", "prometheus_client"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "error: missing Python packages: $missing (pip install them, or pip install -e .)" >&2
  exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda:', torch.cuda.is_available())"
exec "$PY" benchmarks/gpu_check.py "$@"
