"""The torch scorer: P(yes)/(P(yes)+P(no)) for (query, items), computing each query ONCE.

Why it is fast:
- shared prefix: the query runs once into a KV cache; every item of that query attends to it
  (items run batched, positions continuing after the query), so a request costs
  ``len(query) + sum(len(item))`` tokens instead of ``n_items * len(query) + ...``;
- label rows only: the final hidden state of each item is multiplied by the two label rows of
  the LM head, never by the whole vocabulary.

The same code path is differentiable and is what training uses (``label_logits``), so the
model is trained exactly the way it is served. ``naive_label_logits`` is the textbook full
forward, kept as the oracle for parity tests and as the benchmark baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from ranking.task import RankingTask


@dataclass(frozen=True)
class ScoreBatch:
    """Token ids of several requests: queries and their items (``owner[i]`` = query of item i)."""

    queries: list[list[int]]
    items: list[list[int]]
    owner: list[int]

    @classmethod
    def from_requests(cls, requests: Sequence[tuple[list[int], list[list[int]]]]) -> ScoreBatch:
        queries, items, owner = [], [], []
        for q, (query_ids, item_ids) in enumerate(requests):
            queries.append(list(query_ids))
            items.extend(list(x) for x in item_ids)
            owner.extend([q] * len(item_ids))
        return cls(queries, items, owner)

    @property
    def prompt_tokens(self) -> int:
        """Tokens in the prompts as a naive scorer would see them (query repeated per item)."""
        return sum(
            len(self.queries[o]) + len(it) for o, it in zip(self.owner, self.items, strict=True)
        )

    @property
    def computed_tokens(self) -> int:
        """Tokens actually run through the model with the shared prefix."""
        return sum(len(q) for q in self.queries) + sum(len(it) for it in self.items)


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


def label_rows(model, label_ids: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (2, hidden) slice of the LM head for (yes, no), and its bias if the head has one."""
    head = model.get_output_embeddings()
    idx = torch.as_tensor(label_ids, device=head.weight.device)
    weight = head.weight.index_select(0, idx)
    bias = head.bias.index_select(0, idx) if getattr(head, "bias", None) is not None else None
    return weight, bias


def _item_chunks(batch: ScoreBatch, max_tokens: int) -> list[list[int]]:
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
    batch: ScoreBatch,
    pad_id: int = 0,
    max_item_tokens: int = 16384,
    taps: list | None = None,
) -> torch.Tensor:
    """(n_items, hidden) final hidden state at the answer position of each item, query prefix
    shared: each query runs once into a KV cache that its items attend to.

    Differentiable (training uses it). ``max_item_tokens`` bounds the padded item tensor of one
    forward, which bounds activation memory for very large requests. If ``taps`` is a list, the
    (ids, mask, hidden) of every forward (queries, then item chunks) are appended to it, for
    losses on all tokens.
    """
    device = model.device
    base = model.get_decoder()
    q_ids, q_mask = pad_right(batch.queries, pad_id, device)
    q_out = base(input_ids=q_ids, attention_mask=q_mask, use_cache=True)
    q_cache = q_out.past_key_values
    if taps is not None:
        taps.append((q_ids, q_mask, q_out.last_hidden_state))
    layers = [(layer.keys, layer.values) for layer in q_cache.layers]
    q_len = q_mask.sum(dim=1)

    chunks, parts = _item_chunks(batch, max_item_tokens), []
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
            taps.append((i_ids, i_mask, hidden))
        parts.append(hidden[torch.arange(len(chunk), device=device), i_mask.sum(dim=1) - 1])
    stacked = torch.cat(parts, dim=0)
    order = torch.as_tensor([i for chunk in chunks for i in chunk], device=device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=device)
    return stacked.index_select(0, inverse)  # back to request order, still differentiable


def label_logits(
    model,
    batch: ScoreBatch,
    label_ids: tuple[int, int],
    pad_id: int = 0,
    max_item_tokens: int = 16384,
) -> torch.Tensor:
    """(n_items, 2) logits of (yes, no): the answer hidden state times the two label rows."""
    if not batch.items:
        return torch.empty((0, 2))
    weight, bias = label_rows(model, label_ids)
    h = answer_hidden(model, batch, pad_id, max_item_tokens)
    logits = h.to(weight.dtype) @ weight.T
    return logits + bias if bias is not None else logits


def naive_label_logits(
    model,
    batch: ScoreBatch,
    label_ids: tuple[int, int],
    pad_id: int = 0,
    batch_size: int = 25,
) -> torch.Tensor:
    """Oracle/baseline: each full prompt (query + item) run separately through the whole model,
    padded batches, full-vocabulary logits, then the two label columns picked out."""
    prompts = [batch.queries[o] + it for o, it in zip(batch.owner, batch.items, strict=True)]
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


class TorchScorer:
    """Scores (query, items) with a loaded model; the reference engine of the server."""

    def __init__(self, model, tokenizer, task: RankingTask, max_item_tokens: int = 16384):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = task
        self.label_ids = task.label_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_item_tokens = max_item_tokens

    def encode(self, query: str, items: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        return self.task.encode_query(self.tokenizer, query), self.task.encode_items(
            self.tokenizer, list(items)
        )

    @torch.inference_mode()
    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        logits = label_logits(self.model, batch, self.label_ids, self.pad_id, self.max_item_tokens)
        return yes_probability(logits).cpu().numpy()

    def score_ids(self, requests: Sequence[tuple[list[int], list[list[int]]]]) -> list[np.ndarray]:
        """Scores several already-tokenized requests in one batch (used by the server)."""
        batch = ScoreBatch.from_requests(requests)
        flat = self.score_batch(batch)
        out, start = [], 0
        for _, items in requests:
            out.append(flat[start : start + len(items)])
            start += len(items)
        return out

    def score(self, query: str, items: Sequence[str]) -> np.ndarray:
        return self.score_ids([self.encode(query, items)])[0]
