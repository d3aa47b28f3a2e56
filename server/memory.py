"""Will the models file fit? An estimate per version before any weight loads.

A version holds its weights in the compute dtype (the torch engine computes dequantized or
integer layers, so the float size is the bound), plus the KV cache for vLLM. The budget is
``--max-memory-gb`` or, by default, what the machine can give: the cgroup's limit (a pod's
memory limit) less what is used, else the kernel's MemAvailable. A file whose estimate is over
the budget is refused at start with the figures, instead of being killed half-way through.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from ranking.checkpoint import count_parameters
from ranking.precision import compute_dtype
from server.engines import ModelSpec

GB = 2**30
OVERHEAD_BYTES = 256 * 2**20  # per version: tokenizer, scheduler, activations of a batch


def estimate_bytes(spec: ModelSpec) -> int:
    """Resident bytes ``spec`` is expected to take once loaded (an upper estimate)."""
    per = {"fp32": 4, "bf16": 2}.get(spec.dtype, compute_dtype().itemsize)
    total = count_parameters(spec.path) * per + OVERHEAD_BYTES
    if spec.engine == "vllm":
        total += int(spec.vllm.kv_cache_gb * GB)
    return total


def _cgroup_free() -> int | None:
    limit = Path("/sys/fs/cgroup/memory.max")
    used = Path("/sys/fs/cgroup/memory.current")
    try:
        raw = limit.read_text().strip()
        if raw == "max":
            return None
        return int(raw) - int(used.read_text().strip())
    except (OSError, ValueError):
        return None


def available_bytes() -> int:
    free = psutil.virtual_memory().available
    cgroup = _cgroup_free()
    return min(free, cgroup) if cgroup is not None else free


def check_fits(specs: list[tuple[str, ModelSpec]], budget_gb: float | None) -> list[str]:
    """One line per version (its estimate); raises ``MemoryError`` naming every version's
    estimate when their sum is over the budget."""
    budget = int(budget_gb * GB) if budget_gb else available_bytes()
    sized = [(key, estimate_bytes(spec)) for key, spec in specs]
    lines = [f"{key}: ~{b / GB:.2f} GB" for key, b in sized]
    need = sum(b for _, b in sized)
    if need > budget:
        source = "--max-memory-gb" if budget_gb else "available memory"
        raise MemoryError(
            f"the models need ~{need / GB:.2f} GB, more than the {budget / GB:.2f} GB of "
            f"{source} ({'; '.join(lines)}): remove versions from the models file or give the "
            "server more memory"
        )
    return lines
