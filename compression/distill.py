"""The distill stage: white-box knowledge distillation of the ranking task, teacher -> student.

The student is either a smaller architecture initialised at random (``student`` given as config
overrides of the teacher's config: the first, "distill into a small model" stage of the
recipe), a given checkpoint folder, or the stage's input checkpoint itself (``student: null``:
re-distillation of a pruned model). The loss is ``RankingObjective``: forward KL on the
teacher's yes/no answer distribution at a temperature, mixed with the hard-label loss by
``alpha``, plus an optional token-level forward KL on every prompt token (dense white-box
signal). The generative variant of the task lives in ``compression.generative``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from compression import distributed
from compression.train import RankingObjective, TrainConfig, ranking_eval, train, train_config_from
from ranking.checkpoint import load_checkpoint, save_checkpoint
from ranking.datafolder import read_split
from ranking.dataset import encode_groups
from ranking.precision import compute_dtype


@dataclass
class DistillConfig:
    student: dict | str | None = None
    steps: int = 600
    batch_queries: int = 12
    lr: float = 1e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    alpha: float = 1.0  # weight of answer KD; 1 - alpha goes to the hard labels
    temperature: float = 1.0
    token_kd_weight: float = 0.0
    lm_weight: float = 0.0
    eval_every: int = 0  # validation AUC every N steps (0: only at the end)
    seed: int = 0
    optimizer: str = "adamw"  # or "muon" (compression.optim), at lr * muon_lr_ratio
    muon_lr_ratio: float = 1.0
    muon_ns_steps: int = 5
    # a teacher-outputs stage of the recipe: KD from its stored outputs, no teacher loaded
    teacher_outputs: str | None = None

    def train_config(self) -> TrainConfig:
        return train_config_from(self)

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        self.train_config()  # names a bad optimizer or muon_lr_ratio
        if self.steps < 1 or self.batch_queries < 1:
            raise ValueError("steps and batch_queries must be >= 1")
        if isinstance(self.student, str) and not Path(self.student).is_dir():
            raise ValueError(f"student checkpoint {self.student} does not exist")
        if self.teacher_outputs is not None and not isinstance(self.teacher_outputs, str):
            raise ValueError("teacher_outputs names a teacher-outputs stage of the recipe")


def student_config(teacher_config, overrides: dict):
    """The teacher's config with some fields replaced (e.g. hidden_size, num_hidden_layers);
    unknown fields are an error. Tokenizer and vocabulary stay the teacher's."""
    known = set(teacher_config.to_dict()) | set(type(teacher_config)().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"student overrides {unknown} are not {teacher_config.model_type} config fields"
        )
    config = AutoConfig.for_model(**{**teacher_config.to_dict(), **overrides})
    if "head_dim" not in overrides and "hidden_size" in overrides:
        config.head_dim = config.hidden_size // config.num_attention_heads
    return config


def make_student(teacher_config, overrides: dict, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised student of the teacher's family (see ``student_config``)."""
    config = student_config(teacher_config, overrides)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def load_student(
    spec: dict | str | None, teacher_config, input_dir: str | Path | None, seed: int
) -> torch.nn.Module:
    """The student, fp32 for training: config overrides of the teacher's config (random init),
    a checkpoint folder, or (``spec`` None) the stage's input checkpoint."""
    if isinstance(spec, dict):
        return make_student(teacher_config, spec, seed)
    src = spec if isinstance(spec, str) else input_dir
    if src is None:
        raise ValueError("distill needs a student: config overrides, a folder, or an input")
    return load_checkpoint(src, dtype=torch.float32)[0]


def distill(
    teacher_dir: str | Path,
    student_src: str | Path | None,
    data_dir: str | Path,
    dst: str | Path,
    cfg: DistillConfig,
    desc: str = "distill",
    resume: Path | None = None,
    stored_dir: Path | None = None,
) -> dict:
    """Distils ``teacher_dir`` into the student described by ``cfg.student`` (or the checkpoint
    ``student_src`` when ``cfg.student`` is None) and writes the student checkpoint ``dst``
    (rank 0 under ``torchrun``); ``resume``: see ``compression.train.train``. With
    ``stored_dir`` (a teacher-outputs stage's folder) the teacher's weights are never loaded:
    KD reads its stored outputs, and training draws from the queries they cover."""
    from compression.teacher_outputs import StoredOutputs
    from ranking.checkpoint import load_tokenizer_and_task

    cfg.validate()
    t0 = time.time()
    wants_teacher = cfg.alpha > 0 or cfg.token_kd_weight > 0
    stored = StoredOutputs(stored_dir) if stored_dir is not None and wants_teacher else None
    if stored is None:
        teacher, tokenizer, task, _ = load_checkpoint(teacher_dir, dtype=compute_dtype())
        teacher.requires_grad_(False)
        teacher_config = teacher.config
    else:
        teacher = None
        tokenizer, task = load_tokenizer_and_task(teacher_dir)
        teacher_config = AutoConfig.from_pretrained(teacher_dir)
    student = load_student(cfg.student, teacher_config, student_src, cfg.seed)
    label_ids = task.label_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id or 0
    train_groups = encode_groups(read_split(data_dir, "train"), tokenizer, task)
    if stored is not None:
        if list(stored.meta["label_ids"]) != list(label_ids):
            raise ValueError(f"{stored_dir} was computed for other label tokens")
        train_groups = [g for g in train_groups if stored.covers(g)]
        if not train_groups:
            raise ValueError(f"{stored_dir} covers none of the training queries of {data_dir}")
    val_groups = encode_groups(read_split(data_dir, "validation"), tokenizer, task)
    objective = RankingObjective(
        label_ids,
        pad_id,
        lm_weight=cfg.lm_weight,
        teacher=teacher if wants_teacher else None,
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        token_kd_weight=cfg.token_kd_weight,
        stored=stored,
    )
    t_train = time.time()
    curve = train(
        student,
        train_groups,
        cfg.train_config(),
        objective,
        ranking_eval(tokenizer, task, val_groups),
        desc=desc,
        resume=resume,
    )
    train_seconds = time.time() - t_train
    if distributed.is_main():
        save_checkpoint(student, tokenizer, task, dst)
    return {
        "params": sum(p.numel() for p in student.parameters()),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - t0, 1),
        "val_auc": curve[-1]["val_auc"] if curve else None,
        "kd_source": "stored" if stored is not None else ("live" if wants_teacher else None),
        "train_queries": len(train_groups),
        "curve": curve,
        "config": asdict(cfg),
    }
