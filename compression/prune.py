"""Structured pruning of a causal LM with OSSCAR: width (MLP neurons, attention heads, KV groups)
and depth (whole layers). The math lives in ``compression/osscar.py``; this module holds the model
side: calibration hooks, the layer-by-layer schedule, model surgery and the config rewrite.

What is pruned, per decoder layer:
- **MLP neurons**: the input channels of ``down_proj`` (= rows of ``gate_proj``/``up_proj`` and
  their biases if ``mlp_bias``); ``down_proj``'s kept columns are refit.
- **Query heads**, ``heads_per_group`` of them kept in EVERY KV group (GQA needs
  ``num_attention_heads`` divisible by ``num_key_value_heads``): a group of ``head_dim`` input
  channels of ``o_proj`` per head, the heads of one KV group forming one partition (selection and
  swaps stay inside it). ``q_proj`` rows (and bias) are sliced, ``o_proj`` columns refit.
- **KV groups** (``kv_groups`` kept): a group is one kv head and its query heads; ``q_proj``,
  ``k_proj``, ``v_proj`` rows (and biases) are sliced. KV groups are chosen first, then query
  heads inside the kept groups. For a model without GQA (one query head per kv head) head
  pruning IS KV-group pruning.
- An output bias of ``o_proj``/``down_proj`` is refit too: the Gram matrix is augmented with a
  constant-1 channel that is never pruned and not ridge-penalised (``H = [[X^T X, X^T 1],
  [1^T X, n]]``, the bias being that channel's weight row).

Width pruning is **sequential** (like SparseGPT): the calibration prompts run once to the first
layer's input; then for each layer in turn, (1) the layer runs on its inputs with a hook
accumulating ``H`` of ``o_proj``'s input, the heads are selected and the attention shrunk;
(2) it runs again with a hook on ``down_proj``'s input (so the MLP sees the already-pruned
attention), the neurons are selected and the MLP shrunk; (3) it runs once more to produce the
next layer's inputs. Every layer therefore compensates the errors of the layers (and of the
attention) pruned before it. The target of each refit is the ORIGINAL weights applied to the
current inputs (``G = H W0``). Cost: about three forward passes of the model over the
calibration set, plus the selections. ``H`` is a float64 accumulator; each batch's ``X^T X`` is
computed in float32 (a float64 matmul would cost 10x more on CPU) before being added to it.

Depth pruning (``drop_layers``) runs first, on the dense model. A layer's importance is the
KL divergence between the model's answer distribution with and without that layer (the layer
replaced by the identity: its residual stream passes through), averaged over the calibration
prompts at their last position (where the ranking answer is read). When the label token ids are
known (``prune_checkpoint`` passes the task's yes/no ids) the distribution is the two-way
yes/no softmax, i.e. exactly the ranking score; otherwise the full next-token distribution.
Why this measure: it measures directly what the pruned model is used for, one layer at a time,
at the cost of one forward pass per layer; the cosine "block influence" only looks at the
hidden state's direction and ignores how the last layers map it to the answer. Layers are
dropped greedily one at a time, the importance re-measured after each drop (interactions
between neighbouring layers matter when several are dropped).

The pruned model has uniform widths, so the written config is a standard one: new
``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, ``num_hidden_layers``,
an explicit ``head_dim`` (``hidden_size / num_attention_heads`` no longer equals it), and
``layer_types`` (and Qwen2's ``max_window_layers``) sliced to the kept layers.

vLLM and ``head_dim`` (vLLM 0.32 model code): Llama (``llama.py``) and Qwen3 (``qwen3.py``) read
``config.head_dim``; Qwen2 (``qwen2.py``) computes ``hidden_size // num_attention_heads`` and
ignores it. Qwen2 checkpoints therefore accept MLP and depth pruning only; head / KV-group
pruning is refused by ``PruneConfig.validate`` (transformers alone would load such a model, vLLM
would build the wrong shapes).

Gradual schedules: the widths are absolute targets (or fractions of the CURRENT width), so the
prune stage (``compression/stages/prune.py``) calls ``prune_model`` repeatedly with decreasing
widths, distilling in between.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compression.osscar import METHODS, Selection, select_groups
from ranking.model_shape import head_dim
from ranking.scorer import head_label_logits, pad_right
from ranking.support import ENGINE_SUPPORT, FAMILY_SUPPORT, PRUNABLE_ARCHITECTURES

STATS_FILE = "prune_stats.json"


@dataclass
class PruneConfig:
    """What to prune. Widths are absolute targets; a float ``intermediate_size`` in (0, 1] is a
    fraction of the current width. ``None`` / 0 leaves that dimension alone."""

    intermediate_size: int | float | None = None  # MLP width kept (absolute or fraction)
    heads_per_group: int | None = None  # query heads kept per KV group
    kv_groups: int | None = None  # KV groups kept
    drop_layers: int = 0  # whole decoder layers removed (depth pruning)
    method: str = "osscar"  # osscar | magnitude
    ridge: float = 1e-2  # lambda = ridge * mean(diag H)
    local_search_iters: int = 50  # swaps at most, per selection
    calibration_samples: int = 128  # prompts used (a seeded sample if more are given)
    seed: int = 0
    remove_per_step: int | None = None  # groups removed per greedy update; None: ~64 updates
    swap_candidates: int = 16  # additions tried exactly per local-search iteration
    batch_size: int = 16  # calibration prompts per forward

    # ---- targets -------------------------------------------------------------------------
    def target_intermediate(self, config) -> int:
        cur = config.intermediate_size
        x = self.intermediate_size
        if x is None:
            return cur
        if isinstance(x, float):
            return max(1, int(round(x * cur)))
        return int(x)

    def target_heads(self, config) -> tuple[int, int]:
        """(kv groups kept, query heads kept per group)."""
        n_kv = config.num_key_value_heads
        n_rep = config.num_attention_heads // n_kv
        return (self.kv_groups or n_kv), (self.heads_per_group or n_rep)

    def validate(self, config) -> None:
        """Raises ``ValueError`` naming the problem."""
        arch = architecture(config)
        if arch not in PRUNABLE_ARCHITECTURES:
            raise ValueError(
                f"pruning supports {', '.join(sorted(PRUNABLE_ARCHITECTURES))}; "
                f"this checkpoint is {arch}"
            )
        if getattr(config, "quantization_config", None):
            raise ValueError("prune a bf16/fp32 checkpoint, not a quantized one")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")
        if self.calibration_samples < 1:
            raise ValueError("calibration_samples must be >= 1")
        x = self.intermediate_size
        if isinstance(x, bool):
            raise ValueError("intermediate_size must be an int or a float fraction")
        if isinstance(x, float) and not 0.0 < x <= 1.0:
            raise ValueError(f"intermediate_size as a fraction must be in (0, 1], got {x}")
        if isinstance(x, int) and not 1 <= x <= config.intermediate_size:
            raise ValueError(
                f"intermediate_size={x} must be in 1..{config.intermediate_size} (the model's)"
            )
        n_kv = config.num_key_value_heads
        n_heads = config.num_attention_heads
        if n_heads % n_kv:
            raise ValueError(f"num_attention_heads {n_heads} not divisible by kv heads {n_kv}")
        n_rep = n_heads // n_kv
        if self.heads_per_group is not None and not 1 <= self.heads_per_group <= n_rep:
            raise ValueError(
                f"heads_per_group={self.heads_per_group} must be in 1..{n_rep} "
                f"(the model has {n_heads} query heads in {n_kv} KV groups)"
            )
        if self.kv_groups is not None and not 1 <= self.kv_groups <= n_kv:
            raise ValueError(f"kv_groups={self.kv_groups} must be in 1..{n_kv} (the model's)")
        kv, hpg = self.target_heads(config)
        # vLLM's model code for these ignores config.head_dim (see the module docstring)
        if arch in ENGINE_SUPPORT["vllm"].derives_head_dim and (kv, hpg) != (n_kv, n_rep):
            raise ValueError(
                f"{arch}: head / KV-group pruning is not supported: vLLM's {arch} code computes "
                "head_dim = hidden_size // num_attention_heads and ignores config.head_dim, so a "
                "model with fewer heads would not load there. Prune the MLP and/or layers only."
            )
        if not 0 <= self.drop_layers < config.num_hidden_layers:
            raise ValueError(
                f"drop_layers={self.drop_layers} must be in 0..{config.num_hidden_layers - 1}"
            )


def architecture(config) -> str:
    """``config.architectures[0]``, or the causal-LM class of its ``model_type`` (a model built
    in memory from a config has no ``architectures`` until it is saved)."""
    archs = getattr(config, "architectures", None)
    if archs:
        return archs[0]
    model_type = getattr(config, "model_type", None)
    family = FAMILY_SUPPORT.get(model_type)
    return family.architecture if family else str(getattr(config, "model_type", "?"))


def pruned_shape(cfg: PruneConfig, config) -> dict[str, int]:
    """The config fields pruning with ``cfg`` rewrites, from the input's ``config`` alone (no
    weights): the prune stage predicts its output with it, ``prune_model`` writes it. An
    explicit ``head_dim``: ``hidden_size / num_attention_heads`` may no longer equal it. Which
    layers go (and so the per-layer fields ``drop_layers`` slices) is known only after
    calibration."""
    kv, per_group = cfg.target_heads(config)
    return {
        "num_hidden_layers": config.num_hidden_layers - cfg.drop_layers,
        "intermediate_size": cfg.target_intermediate(config),
        "num_attention_heads": kv * per_group,
        "num_key_value_heads": kv,
        "head_dim": head_dim(config),
    }


# ---- model access ---------------------------------------------------------------------------
def _layers(model) -> nn.ModuleList:
    return model.get_decoder().layers


def _batches(prompts, size):
    # sorted by length: less padding per batch
    order = sorted(prompts, key=len)
    return [order[i : i + size] for i in range(0, len(order), size)]


def _pad_id(model) -> int:
    pid = getattr(model.config, "pad_token_id", None)
    return 0 if pid is None else int(pid)


# ---- calibration ----------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a hook to end a forward early (the rest of the layer is not needed)."""


class _Gram:
    """``H = X^T X``, ``s = X^T 1`` and ``n`` of a module's input, real tokens only."""

    def __init__(self):
        self.H = None
        self.s = None
        self.n = 0
        self.mask: torch.Tensor | None = None  # (B, T) bool, set per batch

    def hook(self, stop: bool):
        def fn(module, args):
            x = args[0]
            x = x[self.mask] if self.mask is not None else x.reshape(-1, x.shape[-1])
            x = x.float()
            xtx = (x.T @ x).double().cpu()
            if self.H is None:
                self.H = torch.zeros_like(xtx)
                self.s = torch.zeros(x.shape[-1], dtype=torch.float64)
            self.H += xtx
            self.s += x.double().sum(0).cpu()
            self.n += x.shape[0]
            if stop:
                raise _Stop

        return fn

    def augmented(self, with_bias: bool) -> torch.Tensor:
        if not with_bias:
            return self.H
        p = self.H.shape[0]
        Ha = torch.zeros(p + 1, p + 1, dtype=torch.float64)
        Ha[:p, :p], Ha[:p, p], Ha[p, :p], Ha[p, p] = self.H, self.s, self.s, float(self.n)
        return Ha


@dataclass
class _Batch:
    hidden: torch.Tensor  # (B, T, D) input of the current layer
    mask: torch.Tensor  # (B, T) bool real tokens
    kwargs: list[dict]  # per layer: the decoder layer's keyword arguments


@torch.no_grad()
def _capture(model, prompts, batch_size) -> list[_Batch]:
    """Runs the model once; keeps the first layer's input and every layer's kwargs per batch."""
    layers = _layers(model)
    out = []
    for chunk in _batches(prompts, batch_size):
        ids, mask = pad_right(chunk, _pad_id(model), model.device)
        seen: dict[int, dict] = {}
        first: list[torch.Tensor] = []

        def make(i, seen=seen, first=first):
            def pre(module, args, kwargs):
                if i == 0:
                    first.append(args[0] if args else kwargs["hidden_states"])
                seen[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                if i == len(layers) - 1:
                    raise _Stop

            return pre

        handles = [
            layer.register_forward_pre_hook(make(i), with_kwargs=True)
            for i, layer in enumerate(layers)
        ]
        try:
            model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        out.append(_Batch(first[0], mask.bool(), [seen[i] for i in range(len(layers))]))
    return out


@torch.no_grad()
def _run_layer(layer, i, batches, gram: _Gram | None = None, module=None, update=False):
    """Runs decoder layer ``i`` on every batch; with ``gram``, accumulates ``module``'s input
    (and stops each forward there); with ``update``, replaces the batches' hidden states."""
    handle = module.register_forward_pre_hook(gram.hook(stop=True)) if gram else None
    try:
        for b in batches:
            if gram:
                gram.mask = b.mask
            try:
                out = layer(b.hidden, **b.kwargs[i])
            except _Stop:
                continue
            if update:
                b.hidden = out[0] if isinstance(out, tuple) else out
    finally:
        if handle:
            handle.remove()


# ---- surgery --------------------------------------------------------------------------------
def _new_linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin = lin.to(device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin.weight.requires_grad_(like.weight.requires_grad)
    return lin


def _rows(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    idx = idx.to(lin.weight.device)
    b = lin.bias.index_select(0, idx) if lin.bias is not None else None
    return _new_linear(lin.weight.index_select(0, idx), b, lin)


def _refit_columns(lin: nn.Linear, sel: Selection, n_in: int) -> nn.Linear:
    """New input-side linear from a selection: rows of ``sel.weights`` are the kept channels in
    order, the bias channel (index ``n_in``, if any) last."""
    W = sel.weights
    has_bias = lin.bias is not None
    weight = W[: W.shape[0] - int(has_bias)].T
    bias = W[-1] if has_bias else None
    assert (sel.channels[: weight.shape[1]] < n_in).all()
    return _new_linear(weight.to(lin.weight.dtype), bias, lin)


def _weights_in(lin: nn.Linear) -> torch.Tensor:
    """``W0`` of the math, ``(p [+1], m)``: the transposed weight, the bias as a last row."""
    W0 = lin.weight.detach().double().cpu().T
    if lin.bias is not None:
        W0 = torch.cat([W0, lin.bias.detach().double().cpu()[None]])
    return W0


def _select(gram: _Gram, lin: nn.Linear, groups, n_keep, cfg: PruneConfig, partitions=None):
    has_bias = lin.bias is not None
    p = lin.in_features
    return select_groups(
        gram.augmented(has_bias),
        _weights_in(lin),
        groups,
        n_keep,
        fixed=[p] if has_bias else [],
        partitions=partitions,
        method=cfg.method,
        ridge=cfg.ridge,
        local_search_iters=cfg.local_search_iters,
        remove_per_step=cfg.remove_per_step,
        swap_candidates=cfg.swap_candidates,
    )


def _prune_mlp(mlp, gram: _Gram, n_keep: int, cfg: PruneConfig) -> dict:
    p = mlp.down_proj.in_features
    sel = _select(gram, mlp.down_proj, np.arange(p)[:, None], n_keep, cfg)
    keep = torch.as_tensor(sel.kept_groups, dtype=torch.long)
    mlp.gate_proj = _rows(mlp.gate_proj, keep)
    mlp.up_proj = _rows(mlp.up_proj, keep)
    mlp.down_proj = _refit_columns(mlp.down_proj, sel, p)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = n_keep
    return {
        "rel_error": sel.rel_error,
        "swaps": sel.swaps,
        "kept": sel.kept_groups.tolist(),
        "objective_greedy": sel.history.get("objective_greedy"),
        "objective_final": sel.history.get("objective_final", sel.objective),
    }


def _prune_attention(attn, gram: _Gram, config, kv_keep: int, hpg: int, cfg: PruneConfig):
    hd = head_dim(config)
    n_kv = config.num_key_value_heads
    n_rep = config.num_attention_heads // n_kv
    p = attn.o_proj.in_features
    heads = np.arange(config.num_attention_heads)
    head_ch = heads[:, None] * hd + np.arange(hd)[None]  # (H, hd)
    kv_of = heads // n_rep
    kept_kv = np.arange(n_kv)
    sel = None
    if kv_keep < n_kv:
        groups = head_ch.reshape(n_kv, n_rep * hd)
        sel = _select(gram, attn.o_proj, groups, kv_keep, cfg)
        kept_kv = sel.kept_groups
    if hpg < n_rep or sel is None:
        cand = np.flatnonzero(np.isin(kv_of, kept_kv))
        sel = _select(gram, attn.o_proj, head_ch[cand], len(kept_kv) * hpg, cfg, kv_of[cand])
        kept_heads = cand[sel.kept_groups]
    else:
        kept_heads = np.flatnonzero(np.isin(kv_of, kept_kv))
    kept_heads = np.sort(kept_heads)
    q_rows = torch.as_tensor(head_ch[kept_heads].reshape(-1))
    kv_rows = torch.as_tensor((kept_kv[:, None] * hd + np.arange(hd)[None]).reshape(-1))
    attn.q_proj = _rows(attn.q_proj, q_rows)
    attn.k_proj = _rows(attn.k_proj, kv_rows)
    attn.v_proj = _rows(attn.v_proj, kv_rows)
    attn.o_proj = _refit_columns(attn.o_proj, sel, p)
    attn.num_key_value_groups = hpg
    for name, val in (("num_heads", len(kept_heads)), ("num_key_value_heads", len(kept_kv))):
        if hasattr(attn, name):
            setattr(attn, name, val)
    return {
        "rel_error": sel.rel_error,
        "swaps": sel.swaps,
        "kept_heads": kept_heads.tolist(),
        "kept_kv_heads": kept_kv.tolist(),
    }


# ---- depth ----------------------------------------------------------------------------------
@torch.no_grad()
def _answer_logprobs(model, prompts, batch_size, label_ids=None, skip: set[int] = frozenset()):
    """Log-probabilities at each prompt's last position (answer position), with the layers in
    ``skip`` replaced by the identity."""
    layers = _layers(model)
    handles = [
        layers[i].register_forward_hook(
            lambda m, args, kwargs, out: args[0] if args else kwargs["hidden_states"],
            with_kwargs=True,
        )
        for i in skip
    ]
    head = model.get_output_embeddings()
    rows = []
    try:
        for chunk in _batches(prompts, batch_size):
            ids, mask = pad_right(chunk, _pad_id(model), model.device)
            h = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
            last = h.last_hidden_state[torch.arange(len(chunk)), mask.sum(1) - 1]
            logits = head(last) if label_ids is None else head_label_logits(model, last, label_ids)
            rows.append(torch.log_softmax(logits.double(), -1))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(rows)


def layer_importance(model, prompts, label_ids=None, skip=frozenset(), batch_size=16):
    """Per layer: mean KL(model || model without that layer) at the answer position, the
    layers in ``skip`` already removed from both (``nan`` for those)."""
    ref = _answer_logprobs(model, prompts, batch_size, label_ids, set(skip))
    out = []
    for i in range(len(_layers(model))):
        if i in skip:
            out.append(float("nan"))
            continue
        lp = _answer_logprobs(model, prompts, batch_size, label_ids, set(skip) | {i})
        out.append(float((ref.exp() * (ref - lp)).sum(-1).mean()))
    return out


def drop_layers(model, drop: list[int]) -> None:
    """Removes decoder layers in place and fixes layer indices and per-layer config fields."""
    config = model.config
    layers = _layers(model)
    keep = [i for i in range(len(layers)) if i not in set(drop)]
    model.get_decoder().layers = nn.ModuleList([layers[i] for i in keep])
    for new_i, layer in enumerate(model.get_decoder().layers):
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_i
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    mwl = getattr(config, "max_window_layers", None)
    if isinstance(mwl, int):
        config.max_window_layers = sum(1 for i in keep if i < mwl)
    config.num_hidden_layers = len(keep)


# ---- entry points ---------------------------------------------------------------------------
def _sample(prompts: list[list[int]], n: int, seed: int) -> list[list[int]]:
    prompts = [list(p) for p in prompts if len(p)]
    if not prompts:
        raise ValueError("no calibration prompts")
    if len(prompts) <= n:
        return prompts
    return random.Random(seed).sample(prompts, n)


def prune_model(
    model,
    prompts: list[list[int]],
    cfg: PruneConfig,
    progress: bool = True,
    label_ids: tuple[int, int] | None = None,
) -> dict:
    """Prunes ``model`` in place (depth first, then widths layer by layer) and rewrites its
    config; returns stats: per-layer relative reconstruction errors, kept indices, seconds."""
    from tqdm.auto import tqdm

    config = model.config
    cfg.validate(config)
    shape = pruned_shape(cfg, config)
    t0 = time.time()
    prompts = _sample(prompts, cfg.calibration_samples, cfg.seed)
    was_training = model.training
    model.eval()
    params_before = sum(p.numel() for p in model.parameters())
    stats: dict = {"config": asdict(cfg), "calibration_prompts": len(prompts)}

    # ---- depth --------------------------------------------------------------------------
    dropped: list[int] = []
    importance_rounds = []
    for _ in range(cfg.drop_layers):
        imp = layer_importance(model, prompts, label_ids, set(dropped), cfg.batch_size)
        dropped.append(int(np.nanargmin(imp)))
        importance_rounds.append([None if math.isnan(x) else x for x in imp])  # valid JSON
    if dropped:
        drop_layers(model, dropped)
    stats["dropped_layers"] = sorted(dropped)
    stats["layer_importance"] = importance_rounds
    stats["depth_seconds"] = round(time.time() - t0, 2)

    # ---- widths -------------------------------------------------------------------------
    n_mlp = cfg.target_intermediate(config)
    kv_keep, hpg = cfg.target_heads(config)
    n_kv, n_rep = (
        config.num_key_value_heads,
        config.num_attention_heads // config.num_key_value_heads,
    )
    do_mlp = n_mlp < config.intermediate_size
    do_attn = (kv_keep, hpg) != (n_kv, n_rep)
    per_layer = []
    t1 = time.time()
    if do_mlp or do_attn:
        batches = _capture(model, prompts, cfg.batch_size)
        layers = _layers(model)
        bar = tqdm(range(len(layers)), desc=f"prune ({cfg.method})", disable=not progress)
        for i in bar:
            layer, row = layers[i], {"layer": i}
            if do_attn:
                g = _Gram()
                _run_layer(layer, i, batches, g, layer.self_attn.o_proj)
                row["attention"] = _prune_attention(layer.self_attn, g, config, kv_keep, hpg, cfg)
            if do_mlp:
                g = _Gram()
                _run_layer(layer, i, batches, g, layer.mlp.down_proj)
                row["mlp"] = _prune_mlp(layer.mlp, g, n_mlp, cfg)
            if i + 1 < len(layers):
                _run_layer(layer, i, batches, update=True)
            per_layer.append(row)
            bar.set_postfix(
                {k: f"{row[k]['rel_error']:.3f}" for k in ("attention", "mlp") if k in row}
            )
        del batches
    for key, value in shape.items():
        setattr(config, key, value)
    if was_training:
        model.train()
    stats.update(
        layers=per_layer,
        width_seconds=round(time.time() - t1, 2),
        seconds=round(time.time() - t0, 2),
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
        shape=shape,
    )
    for key in ("attention", "mlp"):
        errs = [r[key]["rel_error"] for r in per_layer if key in r]
        if errs:
            stats[f"mean_rel_error_{key}"] = float(np.mean(errs))
    return stats


def prune_checkpoint(
    src: str | Path,
    dst: str | Path,
    cfg: PruneConfig,
    prompts: list[list[int]] | list[dict],
    progress: bool = True,
) -> dict:
    """Loads ``src`` in fp32, prunes it, writes ``dst`` (bf16, atomic) with ``prune_stats.json``.

    ``prompts``: calibration prompts as token-id lists, or benchmark rows (dicts with ``query``
    and ``item``), turned into full ranking prompts with the checkpoint's tokenizer and task.
    """
    from compression.calibration import task_prompts
    from ranking.checkpoint import load_checkpoint, save_checkpoint

    t0 = time.time()
    model, tokenizer, task, info = load_checkpoint(src, dtype=torch.float32)
    cfg.validate(model.config)  # before any work
    if prompts and isinstance(prompts[0], dict):
        prompts = task_prompts(prompts, tokenizer, task, cfg.calibration_samples, cfg.seed)
    stats = prune_model(model, prompts, cfg, progress, label_ids=task.label_token_ids(tokenizer))
    stats.update(source=str(info.path))
    save_checkpoint(
        model, tokenizer, task, dst, extra_files={STATS_FILE: json.dumps(stats, indent=1) + "\n"}
    )
    stats["total_seconds"] = round(time.time() - t0, 2)
    return stats
