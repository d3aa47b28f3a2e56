"""The ranking task config: how a (query, item) pair becomes a prompt, and which tokens answer.

It is saved beside every checkpoint (``ranking_task.json``) so that training, evaluation and
serving build byte-identical prompts and read the same label tokens.

A prompt is rendered as one string ``head + query + mid + item + tail`` and tokenized in two
pieces, so that every item of a request shares the query's tokens exactly:

    query_ids = [bos] + encode(head + query)        # once per request
    item_ids  = encode(mid + item + tail)           # once per item

``head``, ``mid`` and ``tail`` come from the template: the ``plain`` layout (the default, and
what every ``ranking_task.json`` without a ``prompt`` means) is ``query \\n item \\n question``;
a ``prompt`` with ``{query}``, ``{item}`` and optionally ``{instruction}`` placeholders can
add a system line and, with ``chat``, is rendered through the tokenizer's chat template
(ChatML where it has none). The split is exact only if the tokenizer does not merge tokens
across the query's end; ``check_prompts`` proves it on sample prompts, and the checkpoint
loader refuses a task that breaks it, naming the boundary.

The score of an item is P(yes) / (P(yes) + P(no)) at the position after the last prompt token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

TASK_FILE = "ranking_task.json"

# stand-ins for the placeholders while the chat template renders: no whitespace, so templates
# that strip message content keep them intact
_SENTINEL = {name: f"\u27e6{name.upper()}\u27e7" for name in ("instruction", "query", "item")}

# ChatML, for chat prompts whose tokenizer has no chat template of its own
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# sample prompts every task is checked on at load (the warm-up request among them): endings
# of several character classes, where tokenizers tend to merge across a boundary
WARMUP_QUERY, WARMUP_ITEM = "member profile: warm-up.", "item: warm-up."
SAMPLE_PROMPTS: tuple[tuple[str, str], ...] = (
    (WARMUP_QUERY, WARMUP_ITEM),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("jazz guitar", "item 7: a video about music, 42"),
    ("member profile: nurse, expert level. interests: music", "item: cooking show"),
)


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]``, through the Rust backend's
    ``encode_batch_fast`` where the tokenizer has one and no truncation or padding is set on it:
    the same ids without the character offsets the Python call asks for, about 1.5x faster on
    a request's 50 items (serving tokenizes every new request on the event loop)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is None or backend.truncation is not None or backend.padding is not None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [e.ids for e in fast(texts, add_special_tokens=False)]


class TaskConfigError(ValueError):
    """The task config is missing, malformed, or does not fit the tokenizer."""


@dataclass(frozen=True)
class PromptLayout:
    """The rendered template around the query and the item (instruction still a placeholder)."""

    head: str  # before the query; may hold the instruction sentinel
    mid: str  # between the query and the item
    tail: str  # after the item, up to the answer position

    def head_for(self, instruction: str | None) -> str:
        return self.head.replace(_SENTINEL["instruction"], instruction or "")


@dataclass(frozen=True)
class RankingTask:
    question: str = "Engage?"
    separator: str = "\n"
    yes: str = " yes"
    no: str = " no"
    add_bos: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    # ---- template (absent in a plain task's json: defaults give the plain layout) ----------
    preset: str = "plain"  # informational: the preset this task was made from
    prompt: str | None = None  # user text with {query}, {item}[, {instruction}]; None: plain
    system: str | None = None  # a system line before the prompt
    chat: bool = False  # render system + prompt as chat turns (tokenizer's chat template)
    assistant_prefix: str = ""  # text after the generation prompt (e.g. an empty think block)
    instruction: str | None = None  # default for {instruction}; requests may override it

    # ---- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The json form; a plain task writes only the fields a plain task has always had."""
        raw = asdict(self)
        if self.prompt is None and self.preset == "plain":
            for name in ("preset", "prompt", "system", "chat", "assistant_prefix", "instruction"):
                raw.pop(name)
        return raw

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TASK_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RankingTask:
        path = Path(directory) / TASK_FILE
        if not path.is_file():
            raise TaskConfigError(f"no {TASK_FILE} in {directory}: not a slimrank checkpoint")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TaskConfigError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise TaskConfigError(f"{path} must hold a JSON object")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise TaskConfigError(f"{path}: unknown keys {sorted(unknown)}")
        task = cls(**raw)
        task.validate()
        return task

    def validate(self) -> None:
        """The template's placeholders: {query} before {item}, {instruction} (if any) before
        the query, each once, and an instruction default where the prompt asks for one."""
        if self.prompt is None:
            if self.system or self.chat or self.assistant_prefix or self.instruction:
                raise TaskConfigError(
                    "system, chat, assistant_prefix and instruction need a prompt template "
                    "(with {query} and {item})"
                )
            return
        pos = {}
        for name in ("instruction", "query", "item"):
            n = self.prompt.count("{" + name + "}")
            if n > 1 or (n == 0 and name != "instruction"):
                raise TaskConfigError(f"prompt must hold {{{name}}} exactly once: {self.prompt!r}")
            pos[name] = self.prompt.find("{" + name + "}")
        if pos["item"] < pos["query"]:
            raise TaskConfigError(
                "prompt: {item} comes before {query}; the query is the shared prefix"
            )
        if self.has_instruction:
            if pos["instruction"] > pos["query"]:
                raise TaskConfigError(
                    "prompt: {instruction} comes after {query}; it must be part of the shared prefix"
                )

    @property
    def has_instruction(self) -> bool:
        return self.prompt is not None and "{instruction}" in self.prompt

    # ---- the rendered layout ---------------------------------------------------------------
    def layout(self, tokenizer) -> PromptLayout:
        """head/mid/tail for this tokenizer (chat templates differ per tokenizer); cached."""
        cache = self.__dict__.setdefault("_layouts", {})
        hit = cache.get(id(tokenizer))
        if hit is None or hit[0] is not tokenizer:
            hit = cache[id(tokenizer)] = (tokenizer, self._render_layout(tokenizer))
        return hit[1]

    def _render_layout(self, tokenizer) -> PromptLayout:
        if self.prompt is None:
            return PromptLayout("", self.separator, f"{self.separator}{self.question}")
        user = self.prompt
        for name, sentinel in _SENTINEL.items():
            user = user.replace("{" + name + "}", sentinel)
        if self.chat:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
                {"role": "user", "content": user}
            ]
            template = getattr(tokenizer, "chat_template", None) or CHATML_TEMPLATE
            text = tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        else:
            text = (self.system or "") + user
        text += self.assistant_prefix
        head, rest = _split_once(text, _SENTINEL["query"], "query")
        mid, tail = _split_once(rest, _SENTINEL["item"], "item")
        if _SENTINEL["instruction"] in mid + tail:
            raise TaskConfigError("the rendered prompt puts the instruction after the query")
        return PromptLayout(head, mid, tail)

    def render(self, tokenizer, query: str, item: str, instruction: str | None = None) -> str:
        """The whole prompt as one string (what a reference implementation tokenizes)."""
        lay = self.layout(tokenizer)
        return (
            lay.head_for(self.resolve_instruction(instruction)) + query + lay.mid + item + lay.tail
        )

    def resolve_instruction(self, instruction: str | None) -> str | None:
        """The request's instruction, or the task's default; an error if the template has none."""
        if instruction is not None and not self.has_instruction:
            raise TaskConfigError(
                "instruction: this model's prompt template has no {instruction} placeholder"
            )
        return instruction if instruction is not None else self.instruction

    # ---- tokens --------------------------------------------------------------------------
    def label_token_ids(self, tokenizer) -> tuple[int, int]:
        """(yes_id, no_id); each label must be exactly one token of this tokenizer."""
        ids = []
        for word in (self.yes, self.no):
            toks = tokenizer.encode(word, add_special_tokens=False)
            if len(toks) != 1:
                raise TaskConfigError(
                    f"label {word!r} is {len(toks)} tokens for this tokenizer; it must be one"
                )
            ids.append(toks[0])
        if ids[0] == ids[1]:
            raise TaskConfigError("yes and no labels map to the same token")
        return ids[0], ids[1]

    def _bos(self, tokenizer) -> list[int]:
        return (
            [tokenizer.bos_token_id] if self.add_bos and tokenizer.bos_token_id is not None else []
        )

    def encode_query(self, tokenizer, query: str, instruction: str | None = None) -> list[int]:
        """Shared prefix: [bos] + head + query tokens. Computed once per request."""
        head = self.layout(tokenizer).head_for(self.resolve_instruction(instruction))
        return self._bos(tokenizer) + encode_batch(tokenizer, [head + query])[0]

    def encode_item(self, tokenizer, item: str) -> list[int]:
        """Per-item suffix: mid + item + tail (plain: separator + item + separator + question)."""
        lay = self.layout(tokenizer)
        return encode_batch(tokenizer, [f"{lay.mid}{item}{lay.tail}"])[0]

    def encode_items(self, tokenizer, items: list[str]) -> list[list[int]]:
        if not items:
            return []
        lay = self.layout(tokenizer)
        return encode_batch(tokenizer, [f"{lay.mid}{it}{lay.tail}" for it in items])

    def check_prompts(self, tokenizer, samples: Iterable[tuple[str, str]] = SAMPLE_PROMPTS) -> None:
        """The shared-prefix contract on sample prompts: the piecewise ids equal the tokenizer
        applied to the whole rendered prompt. ``TaskConfigError`` names the boundary that
        breaks it."""
        lay = self.layout(tokenizer)
        for query, item in samples:
            instruction = self.resolve_instruction(None)
            q_ids = self.encode_query(tokenizer, query, instruction)
            i_ids = self.encode_item(tokenizer, item)
            whole = self._bos(tokenizer) + tokenizer.encode(
                self.render(tokenizer, query, item, instruction), add_special_tokens=False
            )
            if whole == q_ids + i_ids:
                continue
            k = next(
                (i for i, (a, b) in enumerate(zip(whole, q_ids + i_ids, strict=False)) if a != b),
                min(len(whole), len(q_ids) + len(i_ids)),
            )
            where = (
                "the tokenizer merges the last query token with the text after the query "
                f"({lay.mid[:20]!r}, the item separator)"
            )
            raise TaskConfigError(
                f"prompt template breaks the shared query prefix: {where}; query {query!r}, "
                f"item {item!r}: whole prompt tokens differ from the pieces at position {k}. "
                "End the query part of the template with a boundary the tokenizer keeps "
                "(e.g. a newline or a special token)"
            )


def _split_once(text: str, sentinel: str, name: str) -> tuple[str, str]:
    parts = text.split(sentinel)
    if len(parts) != 2:
        raise TaskConfigError(f"the rendered prompt holds {{{name}}} {len(parts) - 1} times")
    return parts[0], parts[1]


QWEN3_RERANKER_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)

PRESETS: dict[str, RankingTask] = {
    # the layout slimrank's own models are trained with
    "plain": RankingTask(),
    # Qwen3-Reranker's published layout (model card): system line, Instruct/Query/Document,
    # assistant turn with an empty think block, answer "yes" / "no"
    "qwen3-reranker": RankingTask(
        yes="yes",
        no="no",
        add_bos=False,
        preset="qwen3-reranker",
        prompt="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {item}",
        system=QWEN3_RERANKER_SYSTEM,
        chat=True,
        assistant_prefix="<think>\n\n</think>\n\n",
        instruction="Given a web search query, retrieve relevant passages that answer the query",
    ),
    # a generic chat ranker: instruction and query in the user turn, answer "yes" / "no"
    "chatml": RankingTask(
        yes="yes",
        no="no",
        add_bos=False,
        preset="chatml",
        prompt="{instruction}\nQuery: {query}\nItem: {item}\nAnswer yes or no.",
        system='You judge whether an item fits a query. Answer only "yes" or "no".',
        chat=True,
        instruction="Does the item fit the query?",
    ),
}


def preset(name: str, instruction: str | None = None) -> RankingTask:
    """A preset task, with its default instruction replaced if one is given."""
    if name not in PRESETS:
        raise TaskConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    task = PRESETS[name]
    if instruction is not None:
        if not task.has_instruction:
            raise TaskConfigError(f"preset {name!r} has no {{instruction}} placeholder")
        task = replace(task, instruction=instruction)
    return task
