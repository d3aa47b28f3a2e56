"""The ``prune`` stage: OSSCAR structured pruning (``compression.prune``), one-shot or gradual.

Gradual (``gradual_steps`` > 1): the widths go from the input's to the target in equal steps,
with ``distill_steps`` of distillation from the teacher between steps. The last prune step is
not followed by distillation: that is left to the recipe's next (re-distill) stage, so one-shot
and gradual compare at equal distillation steps.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from compression.optim import check_optimizer
from compression.prune import PruneConfig, prune_checkpoint, prune_model, pruned_shape
from compression.stages.base import StageContext, StageType
from ranking.precision import compute_dtype


@dataclass
class PruneStageConfig(PruneConfig):
    """``PruneConfig`` plus the gradual schedule and the distillation between its steps."""

    gradual_steps: int = 1  # prune steps; 1: one shot
    distill_steps: int = 0  # distillation steps after each prune step but the last
    distill_lr: float = 5e-4
    distill_optimizer: str = "adamw"  # or "muon" (compression.optim)
    distill_muon_lr_ratio: float = 1.0
    distill_batch_queries: int = 12
    distill_warmup_steps: int = 10

    def validate(self, config: Any = None) -> None:
        """The schedule's settings; with the input's HF ``config``, the widths too."""
        if self.gradual_steps < 1 or self.distill_steps < 0:
            raise ValueError("gradual_steps must be >= 1 and distill_steps >= 0")
        if self.distill_batch_queries < 1 or self.distill_warmup_steps < 0:
            raise ValueError("distill_batch_queries must be >= 1 and distill_warmup_steps >= 0")
        check_optimizer(self.distill_optimizer, "distill_optimizer")
        if config is not None:
            super().validate(config)

    def pruning(self) -> PruneConfig:
        """The settings of one prune step (without the schedule)."""
        return PruneConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(PruneConfig)}
        )


def pruned_config(cfg: PruneConfig, config: Any) -> Any:
    """The config a prune stage will write, computed without touching weights."""
    new = copy.deepcopy(config)
    for key, value in pruned_shape(cfg, config).items():
        setattr(new, key, value)
    return new


def gradual_steps(start: dict, target: dict, steps: int) -> list[dict]:
    """Widths after each of ``steps`` equal steps from ``start`` to ``target`` (ints, the last
    one exactly the target); layers to drop are spread over the steps."""
    plan = []
    for k in range(1, steps + 1):
        step = {}
        for key, end in target.items():
            if key == "drop_layers":
                step[key] = round(end * k / steps) - round(end * (k - 1) / steps)
            elif end is not None:
                step[key] = round(start[key] - (start[key] - end) * k / steps)
        plan.append(step)
    return plan


def gradual_prune(
    teacher_dir: Path, data_dir: Path, src: Path, dst: Path, c: PruneStageConfig
) -> dict:
    """Prune a step -> distill -> repeat, then write ``dst``."""
    import torch

    from compression.calibration import task_prompts
    from compression.train import RankingObjective, TrainConfig, train
    from ranking.checkpoint import load_checkpoint, save_checkpoint
    from ranking.datafolder import read_split
    from ranking.dataset import encode_groups

    t0 = time.time()
    base = c.pruning()
    model, tok, task, _ = load_checkpoint(src, dtype=torch.float32)
    teacher = load_checkpoint(teacher_dir, dtype=compute_dtype())[0].requires_grad_(False)
    rows = read_split(data_dir, "train")
    prompts = task_prompts(rows, tok, task, c.calibration_samples, c.seed)
    groups = encode_groups(rows, tok, task)
    cfg = model.config
    start = {
        "intermediate_size": cfg.intermediate_size,
        "heads_per_group": cfg.num_attention_heads // cfg.num_key_value_heads,
        "kv_groups": cfg.num_key_value_heads,
    }
    target = {
        "intermediate_size": (
            base.target_intermediate(cfg) if base.intermediate_size is not None else None
        ),
        "heads_per_group": base.heads_per_group,
        "kv_groups": base.kv_groups,
        "drop_layers": base.drop_layers,
    }
    label_ids = task.label_token_ids(tok)
    objective = RankingObjective(label_ids, tok.pad_token_id or 0, teacher=teacher, alpha=1.0)
    steps = []
    for k, widths in enumerate(gradual_steps(start, target, c.gradual_steps)):
        stats = prune_model(model, prompts, replace(base, **widths), label_ids=label_ids)
        steps.append({"widths": widths, "prune": _brief(stats)})
        if k < c.gradual_steps - 1 and c.distill_steps > 0:
            tc = TrainConfig(
                steps=c.distill_steps,
                batch_queries=c.distill_batch_queries,
                lr=c.distill_lr,
                warmup_steps=c.distill_warmup_steps,
                eval_every=0,
                seed=c.seed + k,
                optimizer=c.distill_optimizer,
                muon_lr_ratio=c.distill_muon_lr_ratio,
            )
            train(model, groups, tc, objective, desc=f"gradual {k + 1}/{c.gradual_steps}")
    save_checkpoint(model, tok, task, dst)
    return {"gradual": steps, "seconds": round(time.time() - t0, 1), "config": asdict(c)}


def _brief(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if not isinstance(v, list | dict)}


class PruneStage(StageType):
    Config = PruneStageConfig
    data_splits = ("train",)  # calibration prompts (and, gradual, the distillation between steps)

    def check(self, cfg: PruneStageConfig, config: Any) -> Any:
        cfg.validate(config)
        return pruned_config(cfg, config)

    def run(self, ctx: StageContext, src: Path, dst: Path) -> dict:
        from ranking.datafolder import sample_rows

        c: PruneStageConfig = ctx.config
        if c.gradual_steps > 1:
            return gradual_prune(ctx.teacher, ctx.data, src, dst, c)
        # train rows, sampled in one streaming pass: turned into calibration prompts with the
        # input's tokenizer and task
        rows = sample_rows(ctx.data, "train", c.calibration_samples, c.seed)
        return prune_checkpoint(src, dst, c.pruning(), rows)
