"""Distillation on a generative variant of the task, single- or two-stage.

The generative task: given a member's context (the ranking query), write an item they engaged
with (the positive items of the benchmark are the targets). Every target token is a training
position, so the KD signal is the token-level forward KL over the whole vocabulary.

Two modes, compared on validation loss in the report's ablation table:
- ``single``: off-policy only, the student learns the teacher's distributions on data targets;
- ``two-stage``: off-policy first, then on-policy for ``onpolicy_fraction`` of the steps: the
  student samples its own continuations (temperature ~0.85) and the teacher scores every
  sampled position, so the student is corrected where it actually goes (GKD / MiniLLM style),
  not only on the data distribution (exposure bias).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from compression.distill import load_student
from compression.losses import token_kd_loss
from compression.train import TrainConfig, train
from ranking.checkpoint import load_checkpoint, save_checkpoint
from ranking.datafolder import read_split
from ranking.precision import bf16_is_native, compute_dtype

MODES = ("single", "two-stage")


@dataclass
class GenerativeDistillConfig:
    student: dict | str | None = None  # as in DistillConfig
    mode: str = "two-stage"
    steps: int = 200  # total, both phases
    onpolicy_fraction: float = 0.5
    batch_queries: int = 16  # sequences per step
    lr: float = 1e-3
    warmup_steps: int = 20
    temperature: float = 1.0  # KD temperature
    sample_temperature: float = 0.85  # on-policy sampling temperature
    max_new_tokens: int = 24
    eval_examples: int = 256
    seed: int = 0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not 0.0 < self.onpolicy_fraction < 1.0:
            raise ValueError("onpolicy_fraction must be in (0, 1)")
        if self.steps < 2 or self.sample_temperature <= 0 or self.temperature <= 0:
            raise ValueError("steps must be >= 2 and temperatures > 0")


@dataclass
class Sequence_:
    prompt: list[int]
    target: list[int]


def separator_ids(tokenizer, task) -> list[int]:
    return tokenizer.encode(task.separator, add_special_tokens=False)


def generative_examples(rows: list[dict], tokenizer, task, limit: int | None = None) -> list:
    """(prompt, target) pairs: prompt = the query prefix + the separator, target = a positive
    item's text up to and including the next separator (where the question would follow).

    The separator belongs to the prompt: ranking training runs the query and its items in
    separate forwards, so no model has learnt to predict the first item token from the query.
    """
    sep = separator_ids(tokenizer, task)
    out = []
    for r in rows:
        if r["label"] < 0.5:
            continue
        prompt = task.encode_query(tokenizer, r["query"])
        target = tokenizer.encode(
            task.separator + r["item"] + task.separator, add_special_tokens=False
        )
        if target[: len(sep)] == sep:
            prompt, target = prompt + sep, target[len(sep) :]
        out.append(Sequence_(prompt, target))
        if limit and len(out) >= limit:
            break
    return out


def _pack(seqs: list[list[int]], starts: list[int], pad_id: int):
    """Right-padded ids, attention mask, and a mask of the positions whose NEXT token is a
    target (position t predicts token t+1)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    predicts = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
        predicts[i, start - 1 : len(s) - 1] = True
    return ids, mask, predicts


def sequence_kl(
    student, teacher, seqs: list[list[int]], starts: list[int], pad_id: int, temperature: float
) -> torch.Tensor:
    """Forward KL(teacher || student) over the vocabulary at every target position."""
    ids, mask, predicts = _pack(seqs, starts, pad_id)
    s_logits = student(input_ids=ids, attention_mask=mask).logits[predicts]
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits[predicts]
    return token_kd_loss(s_logits, t_logits, temperature)


@torch.no_grad()
def sample_targets(
    student,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    pad_id: int,
    stop_id: int | None = None,
) -> list[list[int]]:
    """The student's own continuations of each prompt (left-padded batch generation), each cut
    after ``stop_id`` (the separator that ends an item) when it appears."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(p)
        mask[i, width - len(p) :] = 1
    was_training = student.training
    student.eval()
    out = student.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=stop_id,
    )
    student.train(was_training)
    samples = []
    for row in out[:, width:].tolist():
        if stop_id is not None and stop_id in row:
            row = row[: row.index(stop_id) + 1]
        samples.append(row)
    return samples


@dataclass
class OffPolicyObjective:
    teacher: torch.nn.Module
    pad_id: int
    temperature: float = 1.0

    def __call__(self, model, batch: list[Sequence_]) -> torch.Tensor:
        seqs = [b.prompt + b.target for b in batch]
        starts = [len(b.prompt) for b in batch]
        return sequence_kl(model, self.teacher, seqs, starts, self.pad_id, self.temperature)


@dataclass
class OnPolicyObjective(OffPolicyObjective):
    sample_temperature: float = 0.85
    max_new_tokens: int = 24
    stop_id: int | None = None

    def __call__(self, model, batch: list[Sequence_]) -> torch.Tensor:
        prompts = [b.prompt for b in batch]
        sampled = sample_targets(
            model, prompts, self.max_new_tokens, self.sample_temperature, self.pad_id, self.stop_id
        )
        seqs = [p + s for p, s in zip(prompts, sampled, strict=True)]
        starts = [len(p) for p in prompts]
        return sequence_kl(model, self.teacher, seqs, starts, self.pad_id, self.temperature)


def validation_losses(
    student, teacher, examples: list[Sequence_], pad_id: int, batch: int = 32
) -> dict:
    """Held-out off-policy losses per target token: KL to the teacher and CE on the data."""
    kl_sum = ce_sum = 0.0
    count = 0
    for s in range(0, len(examples), batch):
        chunk = examples[s : s + batch]
        seqs = [b.prompt + b.target for b in chunk]
        ids, mask, predicts = _pack(seqs, [len(b.prompt) for b in chunk], pad_id)
        s_logits = student(input_ids=ids, attention_mask=mask).logits[predicts].float()
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits[predicts].float()
        targets = ids[:, 1:][predicts[:, :-1]]
        n = int(predicts.sum())
        kl_sum += float(token_kd_loss(s_logits, t_logits)) * n
        ce_sum += float(torch.nn.functional.cross_entropy(s_logits, targets, reduction="sum"))
        count += n
    return {"kl": kl_sum / max(count, 1), "ce": ce_sum / max(count, 1), "tokens": count}


@torch.no_grad()
def onpolicy_validation_kl(
    student, teacher, examples: list[Sequence_], pad_id: int, cfg, stop_id, batch: int = 32
) -> float:
    """KL(teacher || student) per token on the student's OWN samples for held-out prompts:
    what the student meets when it generates (exposure bias shows here, not on data)."""
    torch.manual_seed(cfg.seed)
    obj = OnPolicyObjective(
        teacher, pad_id, 1.0, cfg.sample_temperature, cfg.max_new_tokens, stop_id
    )
    losses = [float(obj(student, examples[s : s + batch])) for s in range(0, len(examples), batch)]
    return sum(losses) / max(len(losses), 1)


def distill_generative(
    teacher_dir: str | Path,
    student_src: str | Path | None,
    data_dir: str | Path,
    dst: str | Path,
    cfg: GenerativeDistillConfig,
    desc: str = "distill-generative",
) -> dict:
    """Runs single- or two-stage generative KD and writes the student checkpoint ``dst``."""
    cfg.validate()
    t0 = time.time()
    teacher, tokenizer, task, _ = load_checkpoint(teacher_dir, dtype=compute_dtype())
    teacher.requires_grad_(False)
    student = load_student(cfg.student, teacher.config, student_src, cfg.seed)
    pad_id = tokenizer.pad_token_id or 0
    train_ex = generative_examples(read_split(data_dir, "train"), tokenizer, task)
    val_ex = generative_examples(
        read_split(data_dir, "validation"), tokenizer, task, cfg.eval_examples
    )

    def evaluate_val(model) -> dict:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_is_native()):
            return validation_losses(model, teacher, val_ex, pad_id)

    sep = separator_ids(tokenizer, task)
    offpolicy = OffPolicyObjective(teacher, pad_id, cfg.temperature)
    phases = [(cfg.steps, offpolicy, "off-policy")]
    if cfg.mode == "two-stage":
        on_steps = max(1, round(cfg.steps * cfg.onpolicy_fraction))
        onpolicy = OnPolicyObjective(
            teacher,
            pad_id,
            cfg.temperature,
            cfg.sample_temperature,
            cfg.max_new_tokens,
            stop_id=sep[-1] if len(sep) == 1 else None,
        )
        phases = [
            (cfg.steps - on_steps, offpolicy, "off-policy"),
            (on_steps, onpolicy, "on-policy"),
        ]
    curve, before = [], evaluate_val(student.eval())
    for i, (steps, objective, phase) in enumerate(phases):
        tc = TrainConfig(
            steps=steps,
            batch_queries=cfg.batch_queries,
            lr=cfg.lr,
            warmup_steps=min(cfg.warmup_steps, steps // 4),
            eval_every=0,
            seed=cfg.seed + i,
        )
        points = train(student, train_ex, tc, objective, evaluate_val, desc=f"{desc} {phase}")
        curve += [{**p, "phase": phase} for p in points]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_is_native()):
        onpolicy_kl = onpolicy_validation_kl(
            student.eval(), teacher, val_ex, pad_id, cfg, sep[-1] if len(sep) == 1 else None
        )
    save_checkpoint(student, tokenizer, task, dst)
    return {
        "mode": cfg.mode,
        "val_kl_onpolicy": onpolicy_kl,
        "val_kl_before": before["kl"],
        "val_kl": curve[-1]["val_kl"],
        "val_ce": curve[-1]["val_ce"],
        "seconds": round(time.time() - t0, 1),
        "curve": curve,
        "config": asdict(cfg),
    }
