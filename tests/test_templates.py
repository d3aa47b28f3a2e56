"""Prompt templates: presets render the published layouts, the shared-prefix contract is
checked, and a plain task keeps the layout and json of slimrank's own checkpoints."""

import json

import pytest

from ranking.task import PRESETS, TASK_FILE, RankingTask, TaskConfigError, preset
from tests.chat_tokenizer import chat_tokenizer

QWEN3_PUBLISHED = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


def test_qwen3_reranker_preset_renders_the_published_prompt(tok):
    task = preset("qwen3-reranker")
    expected = QWEN3_PUBLISHED.format(instruction=task.instruction, query="Q?", doc="D.")
    assert task.render(tok, "Q?", "D.") == expected
    custom = task.render(tok, "Q?", "D.", instruction="Find recipes")
    assert custom == QWEN3_PUBLISHED.format(instruction="Find recipes", query="Q?", doc="D.")
    assert preset("qwen3-reranker", instruction="X").instruction == "X"


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_keep_the_shared_prefix(tok, name):
    task = PRESETS[name]
    task.check_prompts(tok)
    yes, no = task.label_token_ids(tok)
    q = task.encode_query(tok, "What is the capital of France?")
    items = task.encode_items(tok, ["Paris.", "Berlin is in Germany."])
    for item, ids in zip(["Paris.", "Berlin is in Germany."], items, strict=True):
        whole = ([tok.bos_token_id] if task.add_bos else []) + tok.encode(
            task.render(tok, "What is the capital of France?", item), add_special_tokens=False
        )
        assert q + ids == whole
    assert tok.decode([yes]).strip() == "yes" and tok.decode([no]).strip() == "no"


def test_a_template_that_breaks_the_prefix_is_refused_naming_the_boundary(tok):
    bad = RankingTask(preset="custom", prompt="{query}ian {item}")
    with pytest.raises(TaskConfigError, match="merges the last query token.*'ian '"):
        bad.check_prompts(tok)


def test_loading_checks_the_template(tmp_path, tok):
    from ranking.checkpoint import load_tokenizer_and_task

    tok.save_pretrained(tmp_path)
    RankingTask(preset="custom", prompt="{query}ian {item}").save(tmp_path)
    with pytest.raises(TaskConfigError, match="item separator"):
        load_tokenizer_and_task(tmp_path)
    preset("chatml").save(tmp_path)
    _, task = load_tokenizer_and_task(tmp_path)
    assert task == preset("chatml")


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"prompt": "{item} {query}"}, "before {query}"),
        ({"prompt": "{query}\n{instruction} {item}"}, "after {query}"),
        ({"prompt": "{query}"}, r"\{item\} exactly once"),
        ({"system": "s"}, "need a prompt template"),
    ],
)
def test_malformed_templates(tmp_path, fields, match):
    (tmp_path / TASK_FILE).write_text(json.dumps(fields))
    with pytest.raises(TaskConfigError, match=match):
        RankingTask.load(tmp_path)


def test_instruction_only_where_the_template_has_one(tok):
    with pytest.raises(TaskConfigError, match="instruction"):
        RankingTask().encode_query(tok, "q", instruction="x")
    with pytest.raises(TaskConfigError, match="no {instruction}"):
        preset("plain", instruction="x")
    with pytest.raises(TaskConfigError, match="unknown preset"):
        preset("nope")


def test_plain_task_keeps_its_layout_and_json(tmp_path, tok):
    """A checkpoint's old ranking_task.json loads to the same prompts, and a plain task writes
    only the keys it always had."""
    old = {"question": "Engage?", "separator": "\n", "yes": " yes", "no": " no",
           "add_bos": True, "extra": {}}  # fmt: skip
    (tmp_path / TASK_FILE).write_text(json.dumps(old))
    task = RankingTask.load(tmp_path)
    assert task == RankingTask()
    assert task.encode_query(tok, "q x") == [tok.bos_token_id] + tok.encode("q x")
    assert task.encode_item(tok, "it") == tok.encode("\nit\nEngage?")
    task.save(tmp_path)
    assert json.loads((tmp_path / TASK_FILE).read_text()) == old
