"""The optimisers ``compression.train`` can run: AdamW, or Muon for the transformer blocks.

Muon (``torch.optim.Muon``) replaces each 2-D weight matrix's update with its momentum
orthogonalised by a few Newton-Schulz iterations. On the demo benchmark it learns the member x
item interactions (interest match, the role x topic term) in far fewer steps than AdamW, which
is what the teacher's CPU budget is short of (docs/results.md). As Muon's authors prescribe, the
embeddings, the LM head and every vector (norms) stay on AdamW. With Moonshot's RMS matching
(``adjust_lr_fn="match_rms_adamw"``) a Muon step is sized like an AdamW step at the same
learning rate; ``muon_lr_ratio`` scales it from there.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ranking.precision import compute_dtype

OPTIMIZERS = ("adamw", "muon")
BETAS = (0.9, 0.98)


def newton_schulz(g: torch.Tensor, coefficients, steps: int, eps: float, dtype) -> torch.Tensor:
    """The orthogonalised ``g`` (Muon's quintic Newton-Schulz iteration), computed in ``dtype``."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class ComputeDtypeMuon(torch.optim.Muon):
    """``torch.optim.Muon`` with its Newton-Schulz iteration in the machine's compute dtype
    (``ranking.precision``). torch runs it in bf16, which on a CPU without native bf16 kernels
    is emulated: there it made a demo-teacher step 60x slower than the whole step in fp32.
    Where bf16 is native this is torch's own step, unchanged."""

    @torch.no_grad()
    def step(self, closure=None):
        dtype = compute_dtype()
        if dtype == torch.bfloat16:
            return super().step(closure)
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            bufs: list[torch.Tensor] = []
            self._init_group(group, params, grads, bufs)
            lr, momentum = group["lr"], group["momentum"]
            for p, grad, buf in zip(params, grads, bufs, strict=True):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype
                )
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * _lr_ratio(group["adjust_lr_fn"], p.shape))
        return None


def _lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Muon's per-matrix learning-rate factor, as ``torch.optim.Muon`` computes it."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class MuonWithAdamW:
    """Muon for ``matrices`` and AdamW for ``others``, stepped, zeroed and saved as one
    optimiser. Each param group carries ``lr_scale``: the training loop sets a group's
    learning rate to the schedule's value times it."""

    def __init__(
        self,
        matrices: list[torch.nn.Parameter],
        others: list[dict],
        lr: float,
        weight_decay: float,
        muon_lr_ratio: float,
        ns_steps: int = 5,
    ) -> None:
        self.muon = ComputeDtypeMuon(matrices, lr=lr, weight_decay=weight_decay,
                                     ns_steps=ns_steps, adjust_lr_fn="match_rms_adamw")  # fmt: skip
        self.adamw = torch.optim.AdamW(others, lr=lr, betas=BETAS)
        for g in self.muon.param_groups:
            g["lr_scale"] = muon_lr_ratio

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def check_optimizer(name: str, key: str = "optimizer") -> None:
    """Refuses an optimiser name this module cannot build, naming the setting and the choices."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown {key} {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def build_optimizer(
    model: torch.nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    muon_lr_ratio: float = 1.0,
    muon_ns_steps: int = 5,
) -> torch.optim.AdamW | MuonWithAdamW:
    """``name`` (one of ``OPTIMIZERS``) over ``model``'s parameters: weight decay on matrices
    and embeddings, none on vectors. ``muon_ns_steps``: Newton-Schulz iterations per Muon
    update (each costs three matrix products per weight matrix)."""
    check_optimizer(name)
    params = [p for p in model.parameters() if p.requires_grad]
    vectors = [p for p in params if p.ndim < 2]
    if name == "adamw":
        decay = [p for p in params if p.ndim >= 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": vectors, "weight_decay": 0.0}]  # fmt: skip
        return torch.optim.AdamW(groups, lr=lr, betas=BETAS)
    tables = {id(p) for p in _embedding_tables(model)}
    matrices = [p for p in params if p.ndim == 2 and id(p) not in tables]
    embeddings = [p for p in params if id(p) in tables or p.ndim > 2]
    others = [{"params": embeddings, "weight_decay": weight_decay},
              {"params": vectors, "weight_decay": 0.0}]  # fmt: skip
    return MuonWithAdamW(matrices, others, lr, weight_decay, muon_lr_ratio, muon_ns_steps)


def _embedding_tables(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The input embedding and output head weights (one tensor when tied): AdamW's in Muon
    runs. Any ``nn.Embedding`` counts, so a model without the Hugging Face accessors works."""
    tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is not None:
        tables.append(head.weight)
    return tables
