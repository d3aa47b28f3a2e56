"""The training loop shared by the demo teacher and (later) distillation stages.

One step = a few queries with ALL their items, run through the same shared-prefix forward the
server uses (``ranking.scorer.answer_hidden``): the query is computed once and each item adds only
its own tokens, so a step carries many labels for little compute. The loss is read at the
answer position only: cross-entropy over the full vocabulary towards the " yes"/" no" token
(so the label tokens also dominate the model's next-token distribution, which engines that read
top-k log-probabilities rely on).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ranking.dataset import QueryGroup, to_batch
from ranking.evaluation import evaluate
from ranking.scorer import TorchScorer, answer_hidden


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


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def hard_label_loss(
    model, hidden: torch.Tensor, labels: torch.Tensor, label_ids: tuple[int, int]
) -> torch.Tensor:
    """Cross-entropy of the full next-token distribution against the " yes"/" no" token."""
    logits = model.get_output_embeddings()(hidden).float()
    target = torch.where(labels > 0.5, label_ids[0], label_ids[1])
    return F.cross_entropy(logits, target)


def lm_loss(model, taps: list) -> torch.Tensor:
    """Next-token cross-entropy over all prompt tokens (queries and items).

    Why: the answer position gives one noisy bit per item; predicting the prompt's own tokens
    gives dense gradient and builds the circuits the ranking needs (e.g. a member's history is
    drawn from their interests, so predicting it teaches attention from items to interests).
    """
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    for ids, mask, hidden in taps:
        valid = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
        logits = head(hidden[:, :-1][valid]).float()
        total = total + F.cross_entropy(logits, ids[:, 1:][valid], reduction="sum")
        count += int(valid.sum())
    return total / max(count, 1)


LossFn = Callable[[object, torch.Tensor, list[QueryGroup]], torch.Tensor]


def train(
    model,
    tokenizer,
    task,
    train_groups: list[QueryGroup],
    cfg: TrainConfig,
    val_groups: list[QueryGroup] | None = None,
    loss_fn: LossFn | None = None,
    desc: str = "train",
) -> list[dict]:
    """Trains ``model`` in place; returns the learning curve (train loss, validation metrics)."""
    label_ids = task.label_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id or 0
    if loss_fn is None:

        def loss_fn(m, hidden, groups):
            labels = torch.as_tensor(np.concatenate([g.labels for g in groups]))
            return hard_label_loss(m, hidden, labels, label_ids)

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    curve: list[dict] = []
    order = rng.permutation(len(train_groups))
    cursor, t0, running = 0, time.time(), None
    bar = tqdm(range(cfg.steps), desc=desc, unit="step")
    for step in bar:
        if cursor + cfg.batch_queries > len(order):
            order, cursor = rng.permutation(len(train_groups)), 0
        groups = [train_groups[i] for i in order[cursor : cursor + cfg.batch_queries]]
        cursor += cfg.batch_queries
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16_autocast):
            taps = [] if cfg.lm_weight > 0 else None
            hidden = answer_hidden(model, to_batch(groups), pad_id, taps=taps)
            loss = loss_fn(model, hidden, groups)
            if taps:
                loss = loss + cfg.lm_weight * lm_loss(model, taps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr_at(step, cfg):.2e}")
        last = step == cfg.steps - 1
        if val_groups and (last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0)):
            model.eval()
            m = evaluate(TorchScorer(model, tokenizer, task), val_groups)
            point = {"step": step + 1, "seconds": round(time.time() - t0, 1), "train_loss": running}
            point.update({f"val_{k}": v for k, v in m.items()})
            curve.append(point)
            bar.write(
                f"[{desc}] step {step + 1}: loss {running:.4f} val auc {m['auc']:.4f} "
                f"(bayes {m.get('bayes_auc', float('nan')):.4f}) logloss {m['logloss']:.4f}"
            )
    model.eval()
    return curve
