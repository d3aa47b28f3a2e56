"""The ``finetune`` stage: trains a base or imported model on the ranking data (answer loss on
the labels), so a team with a base model gets its teacher in the same recipe.

The loss is ``compression.train.RankingObjective`` without a teacher: hard-label cross-entropy
of the yes/no answer (plus an optional next-token loss on the prompts), through the same
shared-prefix forward the server scores with. With ``lora_rank > 0`` only LoRA adapters (peft)
are trained, which fits a large base model's optimiser state in memory; they are merged into
the weights at the end, so the output is a plain checkpoint every engine and stage reads. It
keeps the input's dtype: training runs in fp32, and rounding a barely trained fp32 model to bf16
reorders its near-tied scores.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compression.stages.base import StageContext, StageType
from compression.train import RankingObjective, TrainConfig, ranking_eval, train, train_config_from


@dataclass
class FinetuneConfig:
    steps: int = 300
    batch_queries: int = 8
    lr: float = 2e-4
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    lm_weight: float = 0.0
    lora_rank: int = 0  # 0: train every weight
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]  # fmt: skip
    )
    eval_every: int = 0
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.batch_queries < 1:
            raise ValueError("steps and batch_queries must be >= 1")
        if not isinstance(self.lr, int | float) or self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: full fine-tuning), got {self.lora_rank}")
        if self.lora_rank and not self.lora_targets:
            raise ValueError("lora_targets must name at least one module")

    def train_config(self) -> TrainConfig:
        return train_config_from(self)


def with_lora(model, cfg: FinetuneConfig):
    """``model`` wrapped with LoRA adapters on ``cfg.lora_targets`` (only they train)."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(cfg.lora_targets) - present)
    if missing:
        raise ValueError(f"lora_targets {missing} are not modules of this model")
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        bias="none",
    )
    return get_peft_model(model, lora)


def finetune(
    src: Path,
    data: Path,
    dst: Path,
    cfg: FinetuneConfig,
    desc: str = "finetune",
    resume: Path | None = None,
) -> dict:
    """Fine-tunes ``src`` on ``data`` into ``dst`` (rank 0 writes under ``torchrun``);
    ``resume``: see ``compression.train.train``."""
    import torch

    from compression import distributed
    from ranking.checkpoint import load_checkpoint, save_checkpoint
    from ranking.datafolder import read_split
    from ranking.dataset import encode_groups

    cfg.validate()
    t0 = time.time()
    model, tokenizer, task, info = load_checkpoint(src, dtype=torch.float32)
    if info.format not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"fine-tune a bf16/fp32 checkpoint; {src} is {info.format}")
    trained = with_lora(model, cfg) if cfg.lora_rank else model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    objective = RankingObjective(
        task.label_token_ids(tokenizer), tokenizer.pad_token_id or 0, lm_weight=cfg.lm_weight
    )
    train_groups = encode_groups(read_split(data, "train"), tokenizer, task)
    val_groups = encode_groups(read_split(data, "validation"), tokenizer, task)
    t_train = time.time()
    curve = train(
        trained,
        train_groups,
        cfg.train_config(),
        objective,
        ranking_eval(tokenizer, task, val_groups),
        desc=desc,
        resume=resume,
    )
    train_seconds = time.time() - t_train
    if cfg.lora_rank:
        model = trained.merge_and_unload()
    saved_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if distributed.is_main():
        save_checkpoint(model, tokenizer, task, dst, dtype=saved_dtype[info.format])
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": trainable,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - t0, 1),
        "val_auc": curve[-1]["val_auc"] if curve else None,
        "curve": curve,
        "config": asdict(cfg),
    }


class FinetuneStage(StageType):
    Config = FinetuneConfig
    data_parallel = True
    resumable = True

    def run(self, ctx: StageContext, src: Path, dst: Path) -> dict:
        return finetune(src, ctx.data, dst, ctx.config, desc=ctx.name, resume=ctx.work)
