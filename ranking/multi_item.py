"""Multi-item scoring in one pass: every item of a request attends to its query's keys and
values in place, never to a per-item copy of them.

The batch (queries and all their items) is packed into one token sequence, so every linear
layer (projections, MLP) is one matrix product over all tokens without padding. Attention is
the only part that sees the structure:

- query tokens: ordinary causal attention within their query;
- item tokens: attention over [their query's keys] + [their own item's keys, causal], computed
  as two blocks: all of a request's item rows against the query's keys in one call (the
  query's K/V are read once, shared by all items, not copied), and each item's rows against
  its own keys, batched over items. The two partial softmaxes are merged with their
  log-sum-exp, so no (item, query) block is ever concatenated with anything. On CPU the
  query block runs in torch's fused flash-attention kernel (which returns the log-sum-exp);
  elsewhere, and for short items' own block, explicit matrix products.

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

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
    """Where every token of a batch sits in the packed sequence: all queries (request order),
    then all items (request order, then item order). Requests without items are left out."""

    ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    query_spans: list[tuple[int, int]]  # per request: [start, stop) in packed tokens
    item_spans: list[tuple[int, int]]  # per request: its items' tokens, [start, stop)
    answer_spans: list[tuple[int, int]]  # per request: its items, [start, stop) in item order
    item_start: int  # first item token in packed tokens
    pad_index: torch.Tensor  # (N, Li) packed index of item token t (clamped on padding)
    pad_valid: torch.Tensor  # (N, Li) bool
    answer_index: torch.Tensor  # (N,) packed index of each item's last token


def _layout(requests: Sequence[RequestIds], device) -> _Layout:
    requests = [r for r in requests if len(r.item_ids)]
    if any(len(r.query_ids) == 0 for r in requests):
        raise ValueError("multi-item scoring needs a non-empty query for every request")
    if any(len(it) == 0 for r in requests for it in r.item_ids):
        raise ValueError("multi-item scoring needs non-empty items")
    ids: list[int] = []
    positions: list[int] = []
    query_spans = []
    for r in requests:
        query_spans.append((len(ids), len(ids) + len(r.query_ids)))
        ids.extend(r.query_ids)
        positions.extend(range(len(r.query_ids)))
    item_start = len(ids)
    starts: list[int] = []
    lengths: list[int] = []
    item_spans, answer_spans = [], []
    for r in requests:
        first_token, first_item, lq = len(ids), len(starts), len(r.query_ids)
        for item in r.item_ids:
            starts.append(len(ids))
            lengths.append(len(item))
            ids.extend(item)
            positions.extend(range(lq, lq + len(item)))
        item_spans.append((first_token, len(ids)))
        answer_spans.append((first_item, len(starts)))
    start_t = torch.as_tensor(starts, dtype=torch.long, device=device)
    len_t = torch.as_tensor(lengths, dtype=torch.long, device=device)
    t = torch.arange(int(len_t.max()), device=device)
    return _Layout(
        ids=torch.as_tensor(ids, dtype=torch.long, device=device),
        positions=torch.as_tensor(positions, dtype=torch.long, device=device),
        query_spans=query_spans,
        item_spans=item_spans,
        answer_spans=answer_spans,
        item_start=item_start,
        pad_index=start_t[:, None] + torch.minimum(t[None, :], len_t[:, None] - 1),
        pad_valid=t[None, :] < len_t[:, None],
        answer_index=start_t + len_t - 1,
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
    broadcastable to (B, 1, Lr, Lk); ``causal`` aligns row 0 with key 0. With ``fused`` the CPU
    flash kernel runs (on CPU tensors); otherwise explicit matrix products, which are faster
    for many short items (the flash kernel's per-block overhead dominates there).
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


def _merge(o1, lse1, o2, lse2) -> torch.Tensor:
    """Attention over the union of two key sets from each set's normalised output and
    log-sum-exp: o (R, H, d), lse (R, H)."""
    lse = torch.logaddexp(lse1, lse2)
    w1, w2 = torch.exp(lse1 - lse)[..., None], torch.exp(lse2 - lse)[..., None]
    return (o1.float() * w1 + o2.float() * w2).to(o1.dtype)


def _item_rows_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    lay: _Layout,
    row_spans: list[tuple[int, int]],
    row_pad: torch.Tensor,
    row_valid: torch.Tensor,
    causal: bool,
) -> torch.Tensor:
    """Attention output (R, H, d) for item rows ``q`` (R, H, d).

    Rows are grouped by request (``row_spans``: rows of request r are ``q[r0:r1]``);
    ``row_pad`` (N, Lr) places them in a per-item padded layout and ``row_valid`` (N, Lr) marks
    the slots that hold a row. ``causal``: the rows are all of each item's tokens (row t sees
    its item's keys 0..t); otherwise each item's single row sees all of its item's keys.
    ``k``/``v`` (T, Hkv, d) hold the keys/values of all packed tokens.
    """
    n_rows, heads, d = q.shape
    # Block 1: a request's rows against its query's keys: one product, K/V read in place.
    o_q = torch.empty_like(q)
    lse_q = q.new_empty((n_rows, heads), dtype=torch.float32)
    for (r0, r1), (s0, s1) in zip(row_spans, lay.query_spans, strict=True):
        if r1 > r0:
            out, lse = attention_with_lse(
                q[r0:r1].transpose(0, 1)[None],
                k[s0:s1].transpose(0, 1)[None],
                v[s0:s1].transpose(0, 1)[None],
                scale,
            )
            o_q[r0:r1] = out[0].transpose(0, 1)
            lse_q[r0:r1] = lse[0].transpose(0, 1)
    # Block 2: each item's rows against its own keys, batched over items.
    mask = None
    if not causal:
        mask = torch.zeros(lay.pad_valid.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(~lay.pad_valid, float("-inf"))[:, None, None, :]
    o_i, lse_i = attention_with_lse(
        q[row_pad].transpose(1, 2),
        k[lay.pad_index].transpose(1, 2),
        v[lay.pad_index].transpose(1, 2),
        scale,
        causal=causal,
        mask=mask,
        fused=lay.pad_valid.shape[1] >= FUSED_MIN_ITEM_TOKENS,
    )
    o_i, lse_i = o_i.transpose(1, 2)[row_valid], lse_i.transpose(1, 2)[row_valid]
    return _merge(o_q, lse_q, o_i, lse_i)


def _project_heads(attn, h: torch.Tensor, proj, norm_name: str, cos, sin) -> torch.Tensor:
    """(T, heads, d) projected, per-head normalised (Qwen3) and rotated."""
    x = proj(h).view(h.shape[0], -1, attn.head_dim)
    norm = getattr(attn, norm_name, None)
    if norm is not None:
        x = norm(x)
    return _rotate(x, cos, sin)


def _layer(layer, x: torch.Tensor, cos, sin, lay: _Layout, last: bool) -> torch.Tensor:
    """One decoder layer on the packed tokens; in the last layer, on the answer rows only."""
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    k = _project_heads(attn, h, attn.k_proj, "k_norm", cos, sin)
    v = attn.v_proj(h).view(h.shape[0], -1, attn.head_dim)
    if last:
        rows = lay.answer_index
        q = _project_heads(attn, h[rows], attn.q_proj, "q_norm", cos[rows], sin[rows])
        row_pad = torch.arange(len(rows), device=x.device)[:, None]
        row_valid = torch.ones_like(row_pad, dtype=torch.bool)
        out = _item_rows_attention(
            q, k, v, attn.scaling, lay, lay.answer_spans, row_pad, row_valid, causal=False
        )
        x = x[rows] + attn.o_proj(out.reshape(len(rows), -1))
    else:
        q = _project_heads(attn, h, attn.q_proj, "q_norm", cos, sin)
        out = torch.empty_like(q)
        for s0, s1 in lay.query_spans:  # query tokens: plain causal attention
            out[s0:s1] = F.scaled_dot_product_attention(
                q[s0:s1].transpose(0, 1)[None],
                k[s0:s1].transpose(0, 1)[None],
                v[s0:s1].transpose(0, 1)[None],
                is_causal=True,
                scale=attn.scaling,
                enable_gqa=True,
            )[0].transpose(0, 1)
        i0 = lay.item_start
        spans = [(a - i0, b - i0) for a, b in lay.item_spans]
        out[i0:] = _item_rows_attention(
            q[i0:], k, v, attn.scaling, lay, spans, lay.pad_index - i0, lay.pad_valid, causal=True
        )
        x = x + attn.o_proj(out.view(x.shape[0], -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


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
    n_layers = model.config.num_hidden_layers
    for i, layer in enumerate(base.layers[:n_layers]):
        x = _layer(layer, x, cos, sin, lay, last=i == n_layers - 1)
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
