"""Multi-item scoring in one pass: every item of a request attends to its query's keys and
values in place, never to a per-item copy of them.

The batch is packed into one token sequence, request after request (its query, then its
items), so every linear layer (projections, MLP) is one matrix product over all tokens without
padding. Attention is the only part that sees the structure:

- query tokens: ordinary causal attention within their query;
- item tokens: attention over [their query's keys] + [their own item's keys, causal], computed
  as two blocks. The query block is one call per request: its query's rows and all its
  items' rows against the query's keys, causal from the top left (so the query's rows are
  causal and the item rows, after them, see every query key; the query's K/V are read once,
  in place, not copied per item). The own block takes each item's rows against its own keys,
  batched over items. The two partial softmaxes are merged with their log-sum-exp, so no
  (item, query) block is ever concatenated with anything. On CPU the query block runs in
  torch's fused flash-attention kernel (which returns the log-sum-exp); elsewhere, and for
  short items' own block, explicit matrix products.

The rest of a layer (norm, projections and rotary; the own block and the merge; output
projection, residuals and MLP) is three functions of tensors, ``LayerSteps``, which
``ranking.compiled`` compiles (the torch engine's default on CPU).

Item positions restart after the query (``len(query) + t``), exactly as if each item were
appended to its query alone, so the scores equal the naive full forward of each prompt.

In the last layer only each item's answer position is read: queries, the attention output,
``o_proj`` and the MLP are computed for those rows only (keys and values still for all
tokens, since the answer rows attend to them).

The layer math calls the Hugging Face layer's own submodules (norms, projections, Qwen3's
``q_norm``/``k_norm``, MLP, rotary embedding), so Llama, Qwen2, Qwen3 and Mistral checkpoints
run unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ranking.support import MULTI_ITEM_MODEL_TYPES

# Items at least this long (padded) run their own-key block through the fused kernel; shorter
# ones through explicit products (measured on CPU: 3 ms either way at 30 tokens, fused 1.5x
# faster at 100, explicit faster for many short items).
FUSED_MIN_ITEM_TOKENS = 64


class RequestIds(Protocol):
    """A tokenized request: the query prefix once and each item's suffix
    (``ranking.request.EncodedRequest`` is one)."""

    @property
    def query_ids(self) -> Sequence[int]: ...

    @property
    def item_ids(self) -> Sequence[Sequence[int]]: ...


def check_multi_item_supported(model) -> None:
    """Raises ``ValueError`` naming the model type if this path cannot run it (the families
    of ``ranking.support.FAMILY_SUPPORT`` marked ``multi_item``)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MULTI_ITEM_MODEL_TYPES:
        raise ValueError(
            f"multi-item scoring supports {sorted(MULTI_ITEM_MODEL_TYPES)}, not {model_type!r}"
        )


def _sliding_window(config) -> int | None:
    """The attention window that applies to some layer, or None when every layer is full."""
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    if config.model_type in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", True):
        return None
    return window


@dataclass
class _Layout:
    """Where every token of a batch sits in the packed sequence: request after request, each
    its query then its items (item order). Requests without items are left out."""

    ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    request_spans: list[tuple[int, int, int]]  # per request: [start, stop) and its query length
    answer_spans: list[tuple[int, int]]  # per request: its items, [start, stop) in item order
    pad_index: torch.Tensor  # (N, Li) packed index of item token t (clamped on padding)
    pad_valid: torch.Tensor  # (N, Li) bool
    answer_index: torch.Tensor  # (N,) packed index of each item's last token
    item_rows: torch.Tensor  # packed index of every item token, (N, Li) order without padding
    item_slots: torch.Tensor  # where each of them sits in the flattened (N, Li)


def _layout(requests: Sequence[RequestIds], device) -> _Layout:
    requests = [r for r in requests if len(r.item_ids)]
    if any(len(r.query_ids) == 0 for r in requests):
        raise ValueError("multi-item scoring needs a non-empty query for every request")
    if any(len(it) == 0 for r in requests for it in r.item_ids):
        raise ValueError("multi-item scoring needs non-empty items")
    ids: list[int] = []
    positions: list[int] = []
    starts: list[int] = []
    lengths: list[int] = []
    request_spans, answer_spans = [], []
    for r in requests:
        first_token, first_item, lq = len(ids), len(starts), len(r.query_ids)
        ids.extend(r.query_ids)
        positions.extend(range(lq))
        for item in r.item_ids:
            starts.append(len(ids))
            lengths.append(len(item))
            ids.extend(item)
            positions.extend(range(lq, lq + len(item)))
        request_spans.append((first_token, len(ids), lq))
        answer_spans.append((first_item, len(starts)))
    start_t = torch.as_tensor(starts, dtype=torch.long, device=device)
    len_t = torch.as_tensor(lengths, dtype=torch.long, device=device)
    t = torch.arange(int(len_t.max()), device=device)
    pad_index = start_t[:, None] + torch.minimum(t[None, :], len_t[:, None] - 1)
    pad_valid = t[None, :] < len_t[:, None]
    return _Layout(
        ids=torch.as_tensor(ids, dtype=torch.long, device=device),
        positions=torch.as_tensor(positions, dtype=torch.long, device=device),
        request_spans=request_spans,
        answer_spans=answer_spans,
        pad_index=pad_index,
        pad_valid=pad_valid,
        answer_index=start_t + len_t - 1,
        item_rows=pad_index[pad_valid],
        item_slots=pad_valid.flatten().nonzero()[:, 0],
    )


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (rotate-half convention of Llama/Qwen/Mistral) on (T, heads, d)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def _cpu_flash_attention():
    """The CPU flash-attention kernel behind ``scaled_dot_product_attention``, which also
    returns the log-sum-exp that merging two key blocks needs (None if this torch lacks it)."""
    try:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    except (AttributeError, RuntimeError):
        return None


_CPU_FLASH = _cpu_flash_attention()


def attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    fused: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(q k^T scale + mask) v, its log-sum-exp per row).

    ``q`` (B, H, Lr, d); ``k``/``v`` (B, Hkv, Lk, d) with H a multiple of Hkv (grouped-query
    attention: query head ``h`` reads key head ``h // (H // Hkv)``); ``mask`` additive,
    broadcastable to (B, 1, Lr, Lk); ``causal`` aligns row 0 with key 0 (top left: rows past
    the last key see every key). With ``fused`` the CPU flash kernel runs (on CPU tensors);
    otherwise explicit matrix products, which are faster for many short items (the flash
    kernel's per-block overhead dominates there).
    """
    if fused and q.device.type == "cpu" and _CPU_FLASH is not None:
        return _CPU_FLASH(q, k, v, is_causal=causal, attn_mask=mask, scale=scale)
    b, h, lr, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = h // hkv
    scores = (q.reshape(b, hkv, g * lr, d) @ k.transpose(-1, -2)).float() * scale
    scores = scores.view(b, hkv, g, lr, lk)
    if causal:
        above = torch.ones(lr, lk, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(above, float("-inf"))
    if mask is not None:
        scores = scores + mask.float().view(mask.shape[0], 1, 1, *mask.shape[-2:])
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - lse[..., None]).to(q.dtype).view(b, hkv, g * lr, lk)
    return (p @ v).view(b, h, lr, d), lse.view(b, h, lr)


def _query_block(q, k, v, scale: float, spans: list[tuple[int, int, int, int]], causal: bool):
    """Every row against its request's query keys: (R, H, d) output and (R, H) log-sum-exp.

    ``spans``: per request, its rows ``[r0, r1)`` of ``q`` and its query's keys ``[k0, k1)``
    of ``k``/``v`` (T, Hkv, d), read in place. ``causal``: the rows are the request's tokens,
    causal from the top left (the query's own rows, first, see the keys up to their own, the
    item rows after them see all); otherwise every row sees every key.
    """
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:2], dtype=torch.float32)
    for r0, r1, k0, k1 in spans:
        o, s = attention_with_lse(
            q[r0:r1].transpose(0, 1)[None],
            k[k0:k1].transpose(0, 1)[None],
            v[k0:k1].transpose(0, 1)[None],
            scale,
            causal=causal,
        )
        out[r0:r1], lse[r0:r1] = o[0].transpose(0, 1), s[0].transpose(0, 1)
    return out, lse


def _qkv(layer, x: torch.Tensor, cos, sin, rows: torch.Tensor | None):
    """The layer's input norm, then keys and values (T, Hkv, d) of every token and queries
    (T or len(rows), H, d), projected, per-head normalised (Qwen3) and rotated."""
    attn = layer.self_attn
    h = layer.input_layernorm(x)

    def heads(h, proj, norm_name, cos, sin):
        y = proj(h).view(h.shape[0], -1, attn.head_dim)
        norm = getattr(attn, norm_name, None)
        return _rotate(y if norm is None else norm(y), cos, sin)

    k = heads(h, attn.k_proj, "k_norm", cos, sin)
    v = attn.v_proj(h).view(h.shape[0], -1, attn.head_dim)
    if rows is not None:
        h, cos, sin = h[rows], cos[rows], sin[rows]
    return heads(h, attn.q_proj, "q_norm", cos, sin), k, v


def _own_block(q, k, v, out, lse, q_index, rows, slots, pad_index, pad_valid, scale: float):
    """Merges each item row's attention over its own item's keys into ``out`` (its attention
    over the query's keys, log-sum-exp ``lse``), in place, through their log-sum-exps; returns
    ``out``.

    ``q_index`` (N, Lr): the rows of ``q`` of each item (its tokens, causal, when Lr is the
    item length; its answer row, over all its keys, when Lr is 1); ``rows`` / ``slots``: the
    real ones as rows of ``q``/``out`` and as positions in the flattened (N, Lr) (index
    tensors made outside, so the compiled graph has no data-dependent shape).
    ``pad_index`` / ``pad_valid`` (N, Li): each item's key positions in ``k``/``v`` and which
    are real.
    """
    n, lr = q_index.shape
    causal = lr > 1
    mask = None
    if not causal:
        mask = torch.zeros(pad_valid.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(~pad_valid, float("-inf"))[:, None, None, :]
    o_i, lse_i = attention_with_lse(
        q[q_index].transpose(1, 2),
        k[pad_index].transpose(1, 2),
        v[pad_index].transpose(1, 2),
        scale,
        causal=causal,
        mask=mask,
        fused=pad_valid.shape[1] >= FUSED_MIN_ITEM_TOKENS,
    )
    heads, d = q.shape[1], q.shape[2]
    o_i = o_i.transpose(1, 2).reshape(n * lr, heads, d)[slots]
    lse_i = lse_i.transpose(1, 2).reshape(n * lr, heads)[slots]
    lse_q = lse[rows]
    both = torch.logaddexp(lse_q, lse_i)
    w_q, w_i = torch.exp(lse_q - both)[..., None], torch.exp(lse_i - both)[..., None]
    out[rows] = (out[rows].float() * w_q + o_i.float() * w_i).to(out.dtype)
    return out


def _residual_mlp(layer, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The attention output projected and added, then the layer's MLP block."""
    x = x + layer.self_attn.o_proj(out.reshape(x.shape[0], -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


@dataclass(frozen=True)
class LayerSteps:
    """A layer's tensor work around the per-request attention loop, as functions of tensors
    and modules only: ``ranking.compiled`` compiles each once (one graph serves every layer and
    request size) and sets them on the model as ``scoring_steps``."""

    qkv: Callable = _qkv
    own_block: Callable = _own_block
    residual_mlp: Callable = _residual_mlp


EAGER_STEPS = LayerSteps()


def _layer(layer, x: torch.Tensor, cos, sin, lay: _Layout, last: bool, steps: LayerSteps):
    """One decoder layer on the packed tokens; in the last layer, on the answer rows only."""
    scale = layer.self_attn.scaling
    if last:
        rows = lay.answer_index
        q, k, v = steps.qkv(layer, x, cos, sin, rows)
        spans = [
            (n0, n1, a, a + lq)
            for (a, _, lq), (n0, n1) in zip(lay.request_spans, lay.answer_spans, strict=True)
        ]
        q_index = torch.arange(len(rows), device=x.device)[:, None]
        own_rows = own_slots = q_index[:, 0]
        x = x[rows]
    else:
        q, k, v = steps.qkv(layer, x, cos, sin, None)
        spans = [(a, b, a, a + lq) for a, b, lq in lay.request_spans]
        q_index, own_rows, own_slots = lay.pad_index, lay.item_rows, lay.item_slots
    out, lse = _query_block(q, k, v, scale, spans, causal=not last)
    out = steps.own_block(
        q, k, v, out, lse, q_index, own_rows, own_slots, lay.pad_index, lay.pad_valid, scale
    )
    return steps.residual_mlp(layer, x, out)


def multi_item_answer_hidden(model, requests: Sequence[RequestIds]) -> torch.Tensor:
    """(n_items, hidden) final-norm hidden state at each item's last token, every item of
    ``requests`` in order: what ``ranking.scorer.answer_hidden`` returns, in one pass."""
    check_multi_item_supported(model)
    base = model.get_decoder()
    if not any(len(r.item_ids) for r in requests):
        return torch.empty((0, model.config.hidden_size), dtype=model.dtype, device=model.device)
    lay = _layout(requests, model.device)
    window = _sliding_window(model.config)
    longest = max(len(r.query_ids) + len(it) for r in requests for it in r.item_ids)
    if window is not None and longest > window:
        raise ValueError(f"a prompt of {longest} tokens exceeds the sliding window ({window})")
    x = base.embed_tokens(lay.ids)
    cos, sin = base.rotary_emb(x[None], lay.positions[None])
    cos, sin = cos[0], sin[0]
    if cos.shape[-1] != base.layers[0].self_attn.head_dim:
        raise ValueError("multi-item scoring needs the rotary embedding over the whole head")
    steps = getattr(model, "scoring_steps", EAGER_STEPS)
    n_layers = model.config.num_hidden_layers
    for i, layer in enumerate(base.layers[:n_layers]):
        x = _layer(layer, x, cos, sin, lay, i == n_layers - 1, steps)
    return base.norm(x)


def prefer_multi_item(model, requests: Sequence[RequestIds]) -> bool:
    """Whether to score ``requests`` with this one-pass path rather than the KV-copy path.

    Measured on CPU (``benchmarks/multi_item.py --sweep``, bf16 and fp32, the demo teacher's
    shape): one pass was faster at every request shape tried, from 1.03x (20 items of 200
    tokens after a 16-token query) to 2.9x (100 items of 10 tokens after 250), 1.2-1.5x at the
    standard 50 x 30 after 250 and for a single item. So the choice depends on the model and
    the device, not the shape: a supported architecture, on CPU (not yet measured elsewhere),
    and prompts inside the sliding window if the model has one.
    """
    if model.device.type != "cpu" or model.config.model_type not in MULTI_ITEM_MODEL_TYPES:
        return False
    window = _sliding_window(model.config)
    return all(
        len(r.query_ids) > 0
        and all(len(it) > 0 for it in r.item_ids)
        and (window is None or all(len(r.query_ids) + len(it) <= window for it in r.item_ids))
        for r in requests
    )
