"""The torch scorer: P(yes)/(P(yes)+P(no)) for (query, items), computing each query ONCE.

Why it is fast:
- shared prefix: the query runs once into a KV cache; every item of that query attends to it
  (items run batched, positions continuing after the query), so a request costs
  ``len(query) + sum(len(item))`` tokens instead of ``n_items * len(query) + ...``;
- label rows only: the final hidden state of each item is multiplied by the two label rows of
  the LM head, never by the whole vocabulary.

The same code path is differentiable and is what training uses (``answer_hidden`` and
``head_label_logits``), so the model is trained exactly the way it is served. ``naive_label_logits`` is the textbook full
forward, kept as the oracle for parity tests and as the benchmark baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from ranking.multi_item import multi_item_answer_hidden, prefer_multi_item
from ranking.request import EncodedRequest
from ranking.task import RankingTask


@dataclass(frozen=True)
class _Flat:
    """Several requests flattened for one forward: ``owner[i]`` is the query of item i."""

    queries: list[list[int]]
    items: list[list[int]]
    owner: list[int]


def _flatten(requests: Sequence[EncodedRequest]) -> _Flat:
    queries, items, owner = [], [], []
    for q, r in enumerate(requests):
        queries.append(list(r.query_ids))
        items.extend(list(x) for x in r.item_ids)
        owner.extend([q] * r.n_items)
    return _Flat(queries, items, owner)


def pad_right(
    seqs: Sequence[Sequence[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention mask) for token-id sequences of different lengths."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def head_label_logits(model, hidden: torch.Tensor, label_ids: tuple[int, int]) -> torch.Tensor:
    """(n, 2) logits of (yes, no) from (n, hidden) answer-position hidden states: only the two
    label rows of the LM head (and their bias), never the whole vocabulary."""
    head = model.get_output_embeddings()
    idx = torch.as_tensor(label_ids, device=head.weight.device)
    weight = head.weight.index_select(0, idx)
    logits = hidden.to(weight.dtype) @ weight.T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias.index_select(0, idx)
    return logits


def _item_chunks(batch: _Flat, max_tokens: int) -> list[list[int]]:
    """Split item indices so each chunk's padded item tensor stays under ``max_tokens``.

    Items are sorted by length first so padding inside a chunk is small.
    """
    order = sorted(range(len(batch.items)), key=lambda i: len(batch.items[i]))
    chunks, cur, cur_w = [], [], 0
    for i in order:
        w = max(cur_w, len(batch.items[i]))
        if cur and w * (len(cur) + 1) > max_tokens:
            chunks.append(cur)
            cur, w = [], len(batch.items[i])
        cur.append(i)
        cur_w = w
    if cur:
        chunks.append(cur)
    return chunks


def answer_hidden(
    model,
    requests: Sequence[EncodedRequest],
    pad_id: int = 0,
    max_chunk_tokens: int = 16384,
    taps: list | None = None,
) -> torch.Tensor:
    """(n_items, hidden) final hidden state at the answer position of each item, query prefix
    shared: each query runs once into a KV cache that its items attend to.

    Differentiable (training uses it). ``max_chunk_tokens`` bounds the padded item tensor of one
    forward, which bounds activation memory for very large requests. If ``taps`` is a list, the
    (ids, mask, hidden, items) of every forward (queries, then item chunks) are appended to it,
    for losses on all tokens; ``items`` is None for the queries' forward and the flat indices
    (requests in order, their items in order) of a chunk's items.
    """
    batch = _flatten(requests)
    device = model.device
    base = model.get_decoder()
    q_ids, q_mask = pad_right(batch.queries, pad_id, device)
    q_out = base(input_ids=q_ids, attention_mask=q_mask, use_cache=True)
    q_cache = q_out.past_key_values
    if taps is not None:
        taps.append((q_ids, q_mask, q_out.last_hidden_state, None))
    layers = [(layer.keys, layer.values) for layer in q_cache.layers]
    q_len = q_mask.sum(dim=1)

    chunks, parts = _item_chunks(batch, max_chunk_tokens), []
    for chunk in chunks:
        own = torch.as_tensor([batch.owner[i] for i in chunk], device=device)
        cache = DynamicCache(config=model.config)
        for layer_idx, (k, v) in enumerate(layers):
            cache.update(k.index_select(0, own), v.index_select(0, own), layer_idx)
        i_ids, i_mask = pad_right([batch.items[i] for i in chunk], pad_id, device)
        mask = torch.cat([q_mask.index_select(0, own), i_mask], dim=1)
        pos = q_len.index_select(0, own)[:, None] + torch.arange(i_ids.shape[1], device=device)
        hidden = base(
            input_ids=i_ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        if taps is not None:
            taps.append((i_ids, i_mask, hidden, chunk))
        parts.append(hidden[torch.arange(len(chunk), device=device), i_mask.sum(dim=1) - 1])
    stacked = torch.cat(parts, dim=0)
    order = torch.as_tensor([i for chunk in chunks for i in chunk], device=device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=device)
    return stacked.index_select(0, inverse)  # back to request order, still differentiable


def label_logits(
    model,
    requests: Sequence[EncodedRequest],
    label_ids: tuple[int, int],
    pad_id: int = 0,
    max_chunk_tokens: int = 16384,
) -> torch.Tensor:
    """(n_items, 2) logits of (yes, no) of every item of ``requests``, in order.

    Serving picks the one-pass multi-item forward (``ranking.multi_item``) where it supports
    the model and device (faster at every measured shape on CPU); training keeps the
    differentiable KV-copy path of ``answer_hidden``."""
    if not any(r.item_ids for r in requests):
        return torch.empty((0, 2))
    if not torch.is_grad_enabled() and prefer_multi_item(model, requests):
        hidden = multi_item_answer_hidden(model, requests)
    else:
        hidden = answer_hidden(model, requests, pad_id, max_chunk_tokens)
    return head_label_logits(model, hidden, label_ids)


def naive_label_logits(
    model,
    requests: Sequence[EncodedRequest],
    label_ids: tuple[int, int],
    pad_id: int = 0,
    batch_size: int = 25,
) -> torch.Tensor:
    """Oracle/baseline: each full prompt (query + item) run separately through the whole model,
    padded batches, full-vocabulary logits, then the two label columns picked out."""
    prompts = [list(r.query_ids) + list(it) for r in requests for it in r.item_ids]
    rows = []
    for s in range(0, len(prompts), batch_size):
        ids, mask = pad_right(prompts[s : s + batch_size], pad_id, model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = mask.sum(dim=1) - 1
        full = logits[torch.arange(len(ids), device=model.device), last]
        rows.append(full[:, list(label_ids)])
    return torch.cat(rows, dim=0)


def yes_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(yes) / (P(yes) + P(no)) from (n, 2) label logits: a softmax over the two labels."""
    return torch.softmax(logits.float(), dim=-1)[:, 0]


def _split(flat, requests: Sequence[EncodedRequest]) -> list:
    """A flat per-item sequence cut into one piece per request."""
    out, start = [], 0
    for r in requests:
        out.append(flat[start : start + r.n_items])
        start += r.n_items
    return out


class TorchScorer:
    """Scores (query, items) with a loaded model; the reference engine of the server."""

    def __init__(self, model, tokenizer, task: RankingTask, max_chunk_tokens: int = 16384):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = task
        self.label_ids = task.label_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_chunk_tokens = max_chunk_tokens

    def encode(self, query: str, items: Sequence[str]) -> EncodedRequest:
        return EncodedRequest(
            self.task.encode_query(self.tokenizer, query),
            self.task.encode_items(self.tokenizer, list(items)),
        )

    @torch.inference_mode()
    def score_batch(self, requests: Sequence[EncodedRequest]) -> np.ndarray:
        """Scores of every item of ``requests`` in one flat array, in order."""
        logits = label_logits(
            self.model, requests, self.label_ids, self.pad_id, self.max_chunk_tokens
        )
        return yes_probability(logits).cpu().numpy()

    @torch.inference_mode()
    def score_ids(self, requests: Sequence[EncodedRequest]) -> list[np.ndarray]:
        """Scores of several tokenized requests, one array per request, in one batch. A request
        with its own ``label_ids`` gets those rows of the LM head (and the full-vocabulary
        normaliser only if it asks for ``full_vocab``); see ``Engine.score``."""
        if all(r.label_ids is None for r in requests):
            flat = self.score_batch(requests)
            return _split(flat, requests)
        hidden = answer_hidden(self.model, requests, self.pad_id, self.max_chunk_tokens)
        out = []
        for r, h in zip(requests, _split(hidden, requests), strict=True):
            if r.label_ids is None:
                out.append(yes_probability(head_label_logits(self.model, h, self.label_ids)))
                continue
            if r.full_vocab:  # the whole LM head, only for requests that ask
                head = self.model.get_output_embeddings()
                full = head(h.to(head.weight.dtype)).float()
                out.append(torch.softmax(full, dim=-1)[:, list(r.label_ids)])
            else:
                logits = head_label_logits(self.model, h, r.label_ids).float()
                out.append(torch.softmax(logits, dim=-1))
        return [o.cpu().numpy() for o in out]

    def score(self, query: str, items: Sequence[str]) -> np.ndarray:
        return self.score_ids([self.encode(query, items)])[0]
