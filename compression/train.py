"""The training loop shared by the demo teacher and every distillation stage.

``train`` owns the optimiser, the learning-rate schedule, progress and periodic evaluation; an
*objective* owns the forward pass and the loss. The ranking objective runs one step as a few
queries with ALL their items through the same shared-prefix forward the server uses
(``ranking.scorer.answer_hidden``): the query is computed once and each item adds only its own
tokens, so a step carries many labels for little compute, and the model is trained exactly the
way it is served.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from compression import distributed
from compression.losses import (
    answer_kd_loss,
    label_loss,
    lm_loss,
    tap_logits,
    tap_segments,
    token_kd_loss,
    topk_kd_loss,
)
from compression.optim import build_optimizer, check_optimizer
from ranking.atomic import atomic_file
from ranking.evaluation import evaluate
from ranking.precision import bf16_is_native, describe
from ranking.request import EncodedRequest
from ranking.scorer import TorchScorer, answer_hidden, head_label_logits


class NonFiniteLoss(FloatingPointError):
    """A NaN or inf loss: training stops before the update would poison the weights."""


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_queries: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    bf16_autocast: bool = True
    lm_weight: float = 0.0  # auxiliary next-token loss on every prompt token (see lm_loss)
    eval_every: int = 250
    seed: int = 0
    # "adamw", or "muon": Muon for the blocks' weight matrices (compression.optim), its
    # learning rate lr * muon_lr_ratio
    optimizer: str = "adamw"
    muon_lr_ratio: float = 1.0
    muon_ns_steps: int = 5  # Newton-Schulz iterations per Muon update

    def __post_init__(self) -> None:
        check_optimizer(self.optimizer)
        if self.muon_lr_ratio <= 0:
            raise ValueError(f"muon_lr_ratio must be > 0, got {self.muon_lr_ratio}")
        if not 1 <= self.muon_ns_steps < 100:
            raise ValueError(f"muon_ns_steps must be in [1, 100), got {self.muon_ns_steps}")


def train_config_from(stage_config) -> TrainConfig:
    """The ``TrainConfig`` of a stage whose config names some of its fields (distill,
    finetune): the shared names are copied, the rest keep their defaults."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    return TrainConfig(**{n: getattr(stage_config, n) for n in names if hasattr(stage_config, n)})


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# An objective maps (model, a minibatch of examples) to a scalar loss; it runs the forward.
Objective = Callable[[torch.nn.Module, list], torch.Tensor]


@dataclass
class RankingObjective:
    """Loss on the ranking task for a minibatch of labelled ``EncodedRequest``s.

    loss = (1 - alpha) * hard-label CE + alpha * answer KD (teacher's yes/no distribution at
    ``temperature``) + lm_weight * next-token CE on prompt tokens + token_kd_weight * forward KL
    to the teacher's next-token distribution on prompt tokens. The teacher is either a live
    model (``teacher``) or its outputs stored once (``stored``, a
    ``compression.teacher_outputs.StoredOutputs``: the answer log-probs, and top-k next-token
    log-probs trained with ``topk_kd_loss``). Without either, alpha and token_kd_weight must
    be 0 (the teacher's own recipe).
    """

    label_ids: tuple[int, int]
    pad_id: int = 0
    lm_weight: float = 0.0
    teacher: torch.nn.Module | None = None
    alpha: float = 0.0
    temperature: float = 1.0
    token_kd_weight: float = 0.0
    stored: Any = None

    def __post_init__(self) -> None:
        if (
            self.teacher is None
            and self.stored is None
            and (self.alpha > 0 or self.token_kd_weight > 0)
        ):
            raise ValueError("alpha / token_kd_weight > 0 need a teacher or its stored outputs")
        if self.stored is not None and self.token_kd_weight > 0 and not self.stored.top_k:
            raise ValueError(
                "token_kd_weight > 0 needs stored top-k token outputs: set top_k > 0 in the "
                "teacher-outputs stage"
            )

    def __call__(self, model: torch.nn.Module, groups: list[EncodedRequest]) -> torch.Tensor:
        want_taps = self.lm_weight > 0 or self.token_kd_weight > 0
        taps: list | None = [] if want_taps else None
        hidden = answer_hidden(model, groups, self.pad_id, taps=taps)
        loss = torch.zeros((), device=hidden.device)
        if self.alpha < 1:
            labels = torch.as_tensor(np.concatenate([g.labels for g in groups]))
            loss = loss + (1 - self.alpha) * label_loss(model, hidden, labels, self.label_ids)
        if self.lm_weight > 0:
            loss = loss + self.lm_weight * lm_loss(model, taps)
        if self.stored is not None:
            if self.alpha > 0:
                s_logits = head_label_logits(model, hidden, self.label_ids)
                t_logits = self.stored.answers(groups).to(s_logits.device)
                loss = loss + self.alpha * answer_kd_loss(s_logits, t_logits, self.temperature)
            if self.token_kd_weight > 0:
                segments = tap_segments(taps, [g.n_items for g in groups])
                ids, vals = self.stored.topk_rows(groups, segments)
                s_tok = torch.cat(tap_logits(model, taps))
                loss = loss + self.token_kd_weight * topk_kd_loss(s_tok, ids, vals)
        elif self.teacher is not None and (self.alpha > 0 or self.token_kd_weight > 0):
            t_taps: list | None = [] if self.token_kd_weight > 0 else None
            with torch.no_grad():
                t_hidden = answer_hidden(self.teacher, groups, self.pad_id, taps=t_taps)
                t_logits = head_label_logits(self.teacher, t_hidden, self.label_ids)
            if self.alpha > 0:
                s_logits = head_label_logits(model, hidden, self.label_ids)
                loss = loss + self.alpha * answer_kd_loss(s_logits, t_logits, self.temperature)
            if self.token_kd_weight > 0:
                s_tok = torch.cat(tap_logits(model, taps))
                with torch.no_grad():
                    t_tok = torch.cat(tap_logits(self.teacher, t_taps))
                loss = loss + self.token_kd_weight * token_kd_loss(s_tok, t_tok)
        return loss


def ranking_eval(
    tokenizer, task, groups: list[EncodedRequest]
) -> Callable[[torch.nn.Module], dict]:
    """Validation callback for ``train``: ranking metrics of the model on ``groups``."""
    return lambda model: evaluate(TorchScorer(model, tokenizer, task), groups)


class _ObjectiveStep(torch.nn.Module):
    """The objective as a module: DDP synchronises gradients of what runs in its ``forward``,
    and the objectives call the model's parts (shared-prefix forward, head) directly."""

    def __init__(self, model: torch.nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: list) -> torch.Tensor:
        return self.objective(self.model, batch)


@contextlib.contextmanager
def cpu_training_attention(model: torch.nn.Module):
    """Eager attention while training on CPU, then the model's own again: torch's fused CPU
    attention kernel is slow backwards on ranking prompts' short sequences (on the demo teacher,
    about 0.1 s of a 1 s step); the math is the same (hidden states within 1e-6 in fp32)."""
    switch = getattr(model, "set_attn_implementation", None)
    before = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if switch is None or before in (None, "eager") or next(model.parameters()).device.type != "cpu":
        yield
        return
    switch("eager")
    try:
        yield
    finally:
        switch(before)


RESUME_FILE = "train_state.pt"


def _save_state(folder: Path, state: dict) -> None:
    """Writes the resumable training state atomically (rank 0 only)."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / RESUME_FILE) as tmp:
        torch.save(state, tmp)


def train(
    model: torch.nn.Module,
    examples: Sequence,
    cfg: TrainConfig,
    objective: Objective,
    eval_fn: Callable[[torch.nn.Module], dict] | None = None,
    desc: str = "train",
    resume: Path | None = None,
    checkpoint_every: int | None = None,
) -> list[dict]:
    """Trains ``model`` in place on minibatches of ``cfg.batch_queries`` examples; returns the
    learning curve (train loss EMA and the ``eval_fn`` metrics every ``cfg.eval_every`` steps).

    Under ``torchrun`` with N processes, each takes every N-th example of the same global
    minibatch and DDP averages the gradients, so the run follows the one-process run at the
    same ``batch_queries`` (exactly when every query has the same number of items: each rank's
    loss is a mean over its own items). Evaluation and progress are rank 0's. With ``resume``
    (a folder that survives a killed run), the state is written there every
    ``checkpoint_every`` steps (default: ``SLIMRANK_CHECKPOINT_EVERY``, else 50) and a rerun
    continues from the last one: same batches, same learning rate, same optimiser moments."""
    if checkpoint_every is None:
        checkpoint_every = int(os.environ.get("SLIMRANK_CHECKPOINT_EVERY", "50"))
    distributed.init()
    world = distributed.world_size()
    if world > cfg.batch_queries:
        raise ValueError(f"batch_queries {cfg.batch_queries} < {world} processes: raise it")
    main = distributed.is_main()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.muon_lr_ratio,
                          cfg.muon_ns_steps)  # fmt: skip
    step_fn: torch.nn.Module = _ObjectiveStep(model, objective)
    # bf16 autocast only where bf16 is native: elsewhere it is many times slower than fp32
    autocast = cfg.bf16_autocast and bf16_is_native()
    if cfg.bf16_autocast and not autocast and main:
        print(f"[{desc}] {describe()}: training without bf16 autocast")
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_fn = DistributedDataParallel(step_fn, find_unused_parameters=True)
    curve: list[dict] = []
    order = rng.permutation(len(examples))
    cursor, t0, running, start = 0, time.time(), None, 0
    state_path = resume / RESUME_FILE if resume is not None else None
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        order, cursor, running = state["order"], state["cursor"], state["running"]
        curve, start = state["curve"], state["step"]
        if main:
            print(f"[{desc}] resumed at step {start} from {state_path}")
    bar = tqdm(range(start, cfg.steps), desc=desc, unit="step", initial=start,
               total=cfg.steps, disable=not main)  # fmt: skip
    with cpu_training_attention(model):
        for step in bar:
            if cursor + cfg.batch_queries > len(order):
                order, cursor = rng.permutation(len(examples)), 0
            batch = [examples[i] for i in order[cursor : cursor + cfg.batch_queries]]
            cursor += cfg.batch_queries
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg) * g.get("lr_scale", 1.0)
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = step_fn(distributed.shard(batch))
            value = distributed.mean(loss.item())  # every rank stops together on a bad loss
            if not math.isfinite(value):
                raise NonFiniteLoss(
                    f"[{desc}] non-finite loss ({value}) at step {step + 1} "
                    f"(lr {lr_at(step, cfg):.2e}): lower the stage's lr or check its data; "
                    "nothing of this stage is kept"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            running = value if running is None else 0.98 * running + 0.02 * value
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr_at(step, cfg):.2e}")
            last = step == cfg.steps - 1
            if eval_fn and main and (last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0)):
                model.eval()
                with torch.inference_mode():
                    m = eval_fn(model)
                point = {
                    "step": step + 1,
                    "seconds": round(time.time() - t0, 1),
                    "train_loss": running,
                }
                point.update({f"val_{k}": v for k, v in m.items()})
                curve.append(point)
                shown = " ".join(
                    f"{k} {v:.4f}" for k, v in m.items() if k in ("auc", "logloss", "loss", "kl")
                )
                bar.write(f"[{desc}] step {step + 1}: train loss {running:.4f} val {shown}")
            if state_path is not None and main and not last and (step + 1) % checkpoint_every == 0:
                _save_state(resume, {
                    "step": step + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "order": order, "cursor": cursor, "running": running, "curve": curve,
                })  # fmt: skip
    distributed.barrier()
    model.eval()
    return curve
