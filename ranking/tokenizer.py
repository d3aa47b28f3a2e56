"""Train a byte-level BPE tokenizer on the benchmark corpus and save it as a HF tokenizer.

No hub is reachable, so the demo model brings its own tokenizer; it loads with
``AutoTokenizer.from_pretrained`` like any other.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    must_have: Iterable[str] = (),
    extra_special: Iterable[str] = (),
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """BPE over bytes. ``must_have`` strings (e.g. the label words) are added to the training
    text often enough to become single tokens. ``extra_special`` tokens (e.g. ChatML's
    ``<|im_start|>``) are never split; ``chat_template`` makes it a chat tokenizer, as the
    tokenizers of instruction-tuned models are."""
    extra_special = list(extra_special)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()) + extra_special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    extra = [" ".join(must_have)] * 1000 if must_have else []
    tok.train_from_iterator(list(texts) + extra, trainer=trainer)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **SPECIAL,
        **({"additional_special_tokens": extra_special} if extra_special else {}),
    )
    if chat_template is not None:
        out.chat_template = chat_template
    return out
