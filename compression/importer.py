"""Import a Hugging Face causal LM as a slimrank checkpoint: the model folder plus a
``ranking_task.json`` made from a prompt preset.

A team's ranker (a fine-tuned Llama / Qwen / Mistral, or Qwen3-Reranker) becomes servable and
compressible without retraining: its weights are linked (or copied) as they are, the preset says
how its prompts look, and everything that can be checked before the first request is checked
here: the label words are single tokens, the template keeps the shared query prefix, and the
architecture is looked up in what each engine and each stage supports, so a team learns what
will not work before it runs a recipe.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ranking.atomic import atomic_dir
from ranking.checkpoint import WEIGHT_FILES, quant_format
from ranking.support import ENGINE_SUPPORT, PRUNABLE_ARCHITECTURES, Machine, unsupported_reason
from ranking.task import TASK_FILE, RankingTask, TaskConfigError, preset

# files of a model folder that are not part of a checkpoint
SKIP = {TASK_FILE, ".gitattributes", "README.md"}


class ModelImportError(ValueError):
    """The folder cannot become a slimrank checkpoint; the message says why."""


@dataclass
class ImportReport:
    out: Path
    architecture: str
    format: str
    preset: str
    label_ids: tuple[int, int]
    chat_template: str  # "tokenizer" | "ChatML (the tokenizer has none)" | "none"
    support: dict[str, str | None] = field(default_factory=dict)  # engine/stage -> None or why not

    def lines(self) -> list[str]:
        out = [
            f"[import] {self.out}: {self.architecture} ({self.format}), preset {self.preset}",
            f"[import]   label tokens    {self.label_ids} (yes, no)",
            f"[import]   chat template   {self.chat_template}",
        ]
        for name, why in self.support.items():
            out.append(f"[import]   {name:<15} {'ok' if why is None else 'NO: ' + why}")
        return out


def architecture_support(architecture: str, fmt: str) -> dict[str, str | None]:
    """Per serving engine and compression stage: None if it runs this architecture, else why
    not (on this machine's kind: CPU-only rules apply where no GPU is present)."""
    machine = Machine.here()
    out: dict[str, str | None] = {}
    for engine, spec in ENGINE_SUPPORT.items():
        out[f"serve:{engine}"] = unsupported_reason(engine, fmt, architecture, machine)
        if engine == "vllm" and out[f"serve:{engine}"] is None:
            out[f"serve:{engine}"] = _vllm_reason(architecture)
        if engine == "vllm" and architecture in spec.derives_head_dim:
            out["prune heads"] = (
                f"vLLM derives head_dim for {architecture}: prune MLP width only "
                "(the pruner refuses heads for it)"
            )
    out["prune"] = (
        None
        if architecture in PRUNABLE_ARCHITECTURES
        else f"OSSCAR pruning supports {', '.join(sorted(PRUNABLE_ARCHITECTURES))}; "
        f"this model is {architecture}"
    )
    out["quantize"] = (
        None
        if fmt in ("bf16", "fp16", "fp32")
        else f"quantize a bf16/fp32 checkpoint; this one is already {fmt}"
    )
    out["distill"] = None  # any causal LM transformers loads
    return out


def _vllm_reason(architecture: str) -> str | None:
    """vLLM's own model registry: None if it has model code for this architecture."""
    try:
        from vllm.model_executor.models import ModelRegistry
    except Exception as exc:  # noqa: BLE001 - vLLM absent or broken here: say so
        return f"vLLM is not importable here ({type(exc).__name__})"
    if architecture in ModelRegistry.get_supported_archs():
        return None
    return f"vLLM has no model code for {architecture}"


def import_model(
    model: str | Path,
    preset_name: str,
    out: str | Path,
    instruction: str | None = None,
    copy: bool = False,
    task: RankingTask | None = None,
) -> ImportReport:
    """``model`` (a local HF causal-LM folder) -> ``out`` (a slimrank checkpoint). Weights are
    symlinked unless ``copy``; ``task`` overrides the preset (a custom template)."""
    from transformers import AutoConfig, AutoTokenizer

    src, dst = Path(model).resolve(), Path(out)
    if not (src / "config.json").is_file():
        raise ModelImportError(f"{src} has no config.json: not a Hugging Face model folder")
    if not any((src / f).is_file() for f in WEIGHT_FILES):
        raise ModelImportError(f"{src} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if dst.resolve() == src:
        raise ModelImportError("--out must differ from --model")
    config = json.loads((src / "config.json").read_text())
    architecture = (config.get("architectures") or ["?"])[0]
    if not architecture.endswith("ForCausalLM"):
        raise ModelImportError(
            f"{src} is a {architecture}; slimrank scores with a causal LM's next-token "
            "probabilities (an ...ForCausalLM model)"
        )
    try:
        AutoConfig.from_pretrained(src)
        tokenizer = AutoTokenizer.from_pretrained(src)
    except Exception as exc:  # noqa: BLE001 - transformers' messages name the problem
        raise ModelImportError(f"transformers cannot load {src}: {exc}") from exc
    try:
        task = task or preset(preset_name, instruction)
        task.validate()
        label_ids = task.label_token_ids(tokenizer)
        task.check_prompts(tokenizer)
    except TaskConfigError as exc:
        raise ModelImportError(f"preset {preset_name!r} does not fit {src}: {exc}") from exc
    if not task.chat:
        chat = "none"
    elif getattr(tokenizer, "chat_template", None):
        chat = "tokenizer"
    else:
        chat = "ChatML (the tokenizer has none)"
    fmt = quant_format(config)

    with atomic_dir(dst) as tmp:
        for f in sorted(src.iterdir()):
            if f.name in SKIP or f.name.startswith("."):
                continue
            if copy:
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
            else:
                (tmp / f.name).symlink_to(f)
        task.save(tmp)
    return ImportReport(
        dst,
        architecture,
        fmt,
        task.preset,
        label_ids,
        chat,
        architecture_support(architecture, fmt),
    )
