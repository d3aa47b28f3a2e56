import json

import pytest

from ranking.task import TASK_FILE, RankingTask, TaskConfigError


def test_roundtrip(tmp_path):
    task = RankingTask(question="Relevant?", yes=" yes", no=" no", extra={"k": 1})
    task.save(tmp_path)
    assert RankingTask.load(tmp_path) == task


def test_missing_and_bad_config(tmp_path):
    with pytest.raises(TaskConfigError, match="not a slimrank checkpoint"):
        RankingTask.load(tmp_path)
    (tmp_path / TASK_FILE).write_text("{not json")
    with pytest.raises(TaskConfigError, match="not valid JSON"):
        RankingTask.load(tmp_path)
    (tmp_path / TASK_FILE).write_text(json.dumps({"question": "q", "bogus": 1}))
    with pytest.raises(TaskConfigError, match="unknown keys"):
        RankingTask.load(tmp_path)


def test_label_tokens_must_be_single(tiny_teacher):
    _, tok, task, _ = tiny_teacher
    yes, no = task.label_token_ids(tok)
    assert yes != no
    with pytest.raises(TaskConfigError, match="must be one"):
        RankingTask(yes=" definitely yes").label_token_ids(tok)


def test_prompt_is_query_prefix_plus_item_suffix(tiny_teacher):
    """The piecewise encoding equals tokenizing the whole prompt: the shared prefix is exact."""
    _, tok, task, _ = tiny_teacher
    q = "member profile: nurse, expert level. interests: music, travel, cooking."
    item = "item: jazz guitar tips. good expert video about music."
    q_ids = task.encode_query(tok, q)
    i_ids = task.encode_item(tok, item)
    whole = [tok.bos_token_id] + tok.encode(
        q + task.separator + item + task.separator + task.question, add_special_tokens=False
    )
    assert q_ids + i_ids == whole
    assert q_ids[0] == tok.bos_token_id
    assert task.encode_items(tok, [item, item]) == [i_ids, i_ids]


@pytest.mark.parametrize("which", ["demo", "chat"])
def test_encode_batch_equals_the_tokenizer_call(tiny_teacher, which):
    """The Rust fast path gives the ids of ``tokenizer(texts)``, special tokens, odd spacing
    and unicode included. Truncation set on the backend would cut the fast path's ids; the
    Python call resets it to its own arguments (none), so such a tokenizer takes that call."""
    from ranking.task import encode_batch
    from tests.chat_tokenizer import chat_tokenizer

    tok = tiny_teacher[1] if which == "demo" else chat_tokenizer()
    texts = [
        "item: jazz guitar tips. good expert video about music.",
        "  two  spaces\tand a tab\n",
        "émoji 🙂 and <|im_start|> or <pad> inside",
        "",
        "musician " * 40,
    ]
    expected = tok(texts, add_special_tokens=False)["input_ids"]
    assert encode_batch(tok, texts) == expected
    tok.backend_tokenizer.enable_truncation(max_length=4)
    try:
        assert encode_batch(tok, texts) == expected
    finally:
        tok.backend_tokenizer.no_truncation()
