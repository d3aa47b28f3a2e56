"""Tiny causal LMs of the families slimrank imports (Llama, Qwen2, Qwen3, Mistral, Gemma),
built locally with a chat tokenizer and briefly trained so their scores spread: random weights
score about 0.5 for everything, which would make engine parity prove little."""

from __future__ import annotations

from pathlib import Path

import torch

from ranking.request import EncodedRequest
from ranking.scorer import label_logits
from ranking.task import PRESETS
from tests.chat_tokenizer import chat_tokenizer

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma")

QUERIES = [
    "What is the capital of France?",
    "member profile: nurse, expert level. interests: music, travel, cooking.",
    "jazz guitar",
]
ITEMS = [
    "Paris is the capital of France.",
    "Berlin is in Germany.",
    "item: a video about music.",
    "jazz guitar for an expert.",
    "cooking show",
    "travel",
]


def relevant(query: str, item: str) -> bool:
    """The toy relevance the tiny models learn: the item shares a word with the query."""
    words = lambda s: {w.strip(".,:?").lower() for w in s.split()} - {"is", "the", "a", "an"}  # noqa: E731
    return bool(words(query) & words(item))


def tiny_config(family: str, tokenizer):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,  # the smallest that vLLM's CPU attention supports
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def untrained_import(
    family: str, root: Path, preset: str = "qwen3-reranker", seed: int = 0
) -> Path:
    """A tiny untrained model of ``family`` (chat tokenizer) saved under ``root / "base"`` and
    imported with ``preset`` into ``root / "imported"``: a base model to fine-tune. Seeded: its
    random init does not depend on which tests ran before."""
    from transformers import AutoModelForCausalLM

    from compression.importer import import_model

    torch.manual_seed(seed)
    base = root / "base"
    tok = chat_tokenizer()
    AutoModelForCausalLM.from_config(tiny_config(family, tok)).save_pretrained(base)
    tok.save_pretrained(base)
    return import_model(base, preset, root / "imported").out


def build_tiny(
    family: str, out: Path, max_steps: int = 150, min_std: float = 0.15, seed: int = 0
) -> Path:
    """A Hugging Face model folder (bf16 weights, tokenizer with a chat template) whose scores
    under every preset follow ``relevant``: trained until every preset's scores spread
    (std > ``min_std``), checked every 10 steps, at most ``max_steps``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tok = chat_tokenizer()
    model = AutoModelForCausalLM.from_config(tiny_config(family, tok)).train()
    batches = []
    for task in PRESETS.values():
        label_ids = task.label_token_ids(tok)
        reqs = [
            EncodedRequest(task.encode_query(tok, q), task.encode_items(tok, ITEMS))
            for q in QUERIES
        ]
        target = torch.tensor([float(relevant(q, it)) for q in QUERIES for it in ITEMS])
        batches.append((reqs, label_ids, target))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(max_steps):
        if step % 10 == 0 and step and _spread(model, batches) > min_std:
            break
        opt.zero_grad()
        loss = 0.0
        for reqs, label_ids, target in batches:
            logits = label_logits(model, reqs, label_ids, tok.pad_token_id)
            margin = logits[:, 0] - logits[:, 1]
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(margin, target)
        loss.backward()
        opt.step()
    assert _spread(model, batches) > min_std, f"tiny {family} did not learn"
    out.mkdir(parents=True, exist_ok=True)
    model.eval().to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@torch.no_grad()
def _spread(model, batches) -> float:
    """The smallest std of the scores over the presets."""
    stds = []
    for reqs, label_ids, _ in batches:
        logits = label_logits(model, reqs, label_ids)
        stds.append(float(torch.softmax(logits.float(), dim=-1)[:, 0].std()))
    return min(stds)
