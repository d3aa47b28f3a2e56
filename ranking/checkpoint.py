"""Checkpoint I/O: a Hugging Face causal-LM folder + tokenizer + ``ranking_task.json``.

Loads bf16/fp32 checkpoints and compressed-tensors ones (FP8 / INT8 / INT4 written by
llmcompressor), the latter dequantized so that plain torch can run them anywhere. Writes are
atomic (``ranking.atomic``), so a crash never leaves a half-written checkpoint that looks
finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ranking.atomic import atomic_dir
from ranking.errors import CheckpointError
from ranking.manifest import write_manifest
from ranking.precision import compute_dtype
from ranking.task import TASK_FILE, RankingTask

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# dtype names of the command lines and the server settings; None: the checkpoint's own
DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
}


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    format: str  # bf16 | fp16 | fp32 | fp8 | int8 | int4 | quantized
    architecture: str
    params: int | None = None


def quant_format(config: dict) -> str:
    """bf16/fp32/... for plain checkpoints; fp8/int8/int4 for compressed-tensors ones."""
    qc = config.get("quantization_config") or config.get("compression_config")
    if not qc:
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
        return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)
    for group in (qc.get("config_groups") or {}).values():
        w = group.get("weights") or {}
        num_bits, kind = w.get("num_bits"), w.get("type")
        if kind == "float" and num_bits == 8:
            return "fp8"
        if kind == "int" and num_bits in (4, 8):
            return f"int{num_bits}"
    return "quantized"


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Validates the folder layout and reads its format, without loading weights."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint folder {p} does not exist")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{p} has no config.json: not a Hugging Face checkpoint")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is corrupt: {exc}") from exc
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise CheckpointError(f"{p} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not (p / TASK_FILE).is_file():
        raise CheckpointError(f"{p} has no {TASK_FILE}: it was not written by slimrank")
    arch = (config.get("architectures") or ["?"])[0]
    return CheckpointInfo(path=p, format=quant_format(config), architecture=arch)


def load_tokenizer_and_task(path: str | Path) -> tuple[PreTrainedTokenizerBase, RankingTask]:
    """The tokenizer and ranking task saved in a checkpoint folder, without its weights. The
    task's prompt template is checked against the tokenizer (``RankingTask.check_prompts``)."""
    tokenizer, task = AutoTokenizer.from_pretrained(path), RankingTask.load(path)
    task.check_prompts(tokenizer)
    return tokenizer, task


def load_checkpoint(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    emulate_activation_quant: bool = True,
    compute: bool = False,
) -> tuple[torch.nn.Module, object, RankingTask, CheckpointInfo]:
    """(model, tokenizer, task, info). Plain checkpoints load in ``dtype`` or their saved dtype;
    quantized ones are dequantized to ``dtype`` (default bf16). With ``compute`` (the model
    will score, not be written again) the default follows the device instead: bf16 where it is
    native, fp32 where it is not (``ranking.precision``: emulated bf16 is many times slower).

    FP8/INT8 (W8A8) checkpoints also quantize activations. By default their per-token
    quantize-dequantize is emulated, so scores match an engine with real kernels; with
    ``emulate_activation_quant=False`` it is skipped (about 2x faster on a CPU, scores off by
    the activation rounding only)."""
    info = inspect_checkpoint(path)
    kwargs: dict = {}
    if info.format in ("fp8", "int8", "int4", "quantized"):
        from transformers.utils.quantization_config import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
        kwargs["dtype"] = dtype or (compute_dtype(device) if compute else torch.bfloat16)
    else:
        kwargs["dtype"] = dtype or "auto"
    try:
        tokenizer, task = load_tokenizer_and_task(info.path)
        model = AutoModelForCausalLM.from_pretrained(info.path, **kwargs).to(device).eval()
    except Exception as exc:  # noqa: BLE001 - safetensors, json, config errors: all mean "corrupt"
        raise CheckpointError(f"cannot load checkpoint {info.path}: {exc}") from exc
    if dtype is None and compute and next(model.parameters()).dtype == torch.bfloat16:
        dtype = compute_dtype(device)
    if dtype is not None and next(model.parameters()).dtype != dtype:
        model = model.to(dtype)
    if "quantization_config" in kwargs:
        _unwrap_compressed_tensors(model)
    if not emulate_activation_quant and "quantization_config" in kwargs:
        from compressed_tensors.quantization.lifecycle.helpers import disable_quantization

        model.apply(disable_quantization)
    task.label_token_ids(tokenizer)  # fail now, not on the first request
    params = sum(p.numel() for p in model.parameters())
    return model, tokenizer, task, CheckpointInfo(info.path, info.format, info.architecture, params)


def _unwrap_compressed_tensors(model: torch.nn.Module) -> None:
    """Drops what compressed-tensors wraps around a decompressed model's modules that does
    nothing for a model resident on one device: its offload hooks (every module's call moves
    its tensors to where they already are) and, on weight-only layers, the forward that
    quantizes the weight again on every call (a no-op on weights dequantized at load: q x scale
    rounds back to q even in bf16, |q| <= 127 moving by under half a step). Each costs Python
    time per call
    and stops torch.compile at every layer (``ranking.compiled``). Layers that quantize
    activations keep their forward: it emulates what the checkpoint says."""
    from compressed_tensors.offload.dispatch import remove_dispatch

    remove_dispatch(model, onload_tensors=True)
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        own = module.__dict__.get("forward")
        if (
            scheme is not None
            and own is not None
            and hasattr(own, "__wrapped__")
            and scheme.input_activations is None
            and scheme.output_activations is None
        ):
            del module.forward


def save_checkpoint(
    model,
    tokenizer,
    task: RankingTask,
    path: str | Path,
    dtype: torch.dtype | None = torch.bfloat16,
    extra_files: dict[str, str] | None = None,
    **save_kwargs,
) -> Path:
    """Writes model (safetensors), tokenizer and task config atomically into ``path``, with a
    manifest (sha256 of every file) written last, so a loader can prove the folder complete."""

    final = Path(path)
    with atomic_dir(final) as tmp:
        to_save = model
        if dtype is not None and next(model.parameters()).dtype != dtype:
            import copy

            to_save = copy.deepcopy(model).to(dtype)
        to_save.save_pretrained(tmp, **save_kwargs)
        tokenizer.save_pretrained(tmp)
        task.save(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        write_manifest(tmp)
    return final


def count_parameters(path: str | Path) -> int:
    """Parameters of the (unquantized) architecture, from config.json alone (no weights loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def checkpoint_bytes(path: str | Path) -> int:
    """Bytes of the weight files (what a server downloads and holds)."""
    p = Path(path)
    return sum(f.stat().st_size for f in p.glob("*.safetensors")) + sum(
        f.stat().st_size for f in p.glob("*.bin")
    )
