"""A tiny byte-level BPE tokenizer with ChatML special tokens and a chat template, trained
locally (no hub), as the tokenizer of an instruction-tuned model would be."""

from __future__ import annotations

from ranking.task import CHATML_TEMPLATE
from ranking.tokenizer import train_tokenizer

CHAT_SPECIAL = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]

CORPUS = ["yes\nno\n"] * 50 + [
    "What is the capital of France? Paris is the capital of France. Berlin is in Germany. "
    "member profile: nurse, expert level. interests: music, travel, cooking. jazz guitar "
    "item: a video about music. Query Document Instruct Given a web search query, retrieve "
    "relevant passages that answer the query. musician musician musician. Judge whether the Document meets the "
    "requirements. Answer only yes or no. Does the item fit the query?"
] * 50


def chat_tokenizer(vocab_size: int = 600):
    return train_tokenizer(
        CORPUS,
        vocab_size=vocab_size,
        must_have=["yes", "no", " yes", " no"],
        extra_special=CHAT_SPECIAL,
        chat_template=CHATML_TEMPLATE,
    )
