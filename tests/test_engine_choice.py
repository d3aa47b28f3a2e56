"""``--engine auto``: the measured table decides, per machine class and checkpoint format."""

from __future__ import annotations

import json

import pytest

from server.engines.choice import (
    DEFAULT,
    choose_engine,
    load_table,
    machine_class,
    rows_from_compare,
    update_table,
)
from server.settings import ServerSettings


def _row(fmt: str, model: str, rates: dict, cls: str | None = None) -> dict:
    return {"machine_class": cls or machine_class(), "format": fmt, "model": model,
            "cpu": "test CPU", "measured": "2026-01-01", "items_per_s": rates}  # fmt: skip


def test_the_faster_engine_on_this_machine_class_wins(tiny_demo, tmp_path):
    table = tmp_path / "table.json"
    update_table([_row("bf16", "a", {"torch": 100.0, "vllm": 300.0}),
                  _row("bf16", "b", {"torch": 100.0, "vllm": 200.0}),
                  _row("bf16", "a", {"torch": 900.0, "vllm": 1.0}, cls="elsewhere")], table)  # fmt: skip
    choice = choose_engine(tiny_demo / "teacher", table)
    assert choice.engine == "vllm"
    assert "a: torch 100, vllm 300" in choice.why and machine_class() in choice.why


def test_no_row_for_this_format_or_class_means_the_default_and_says_so(tiny_demo, tmp_path):
    table = tmp_path / "table.json"
    update_table([_row("int8", "a", {"torch": 1.0, "vllm": 2.0})], table)
    choice = choose_engine(tiny_demo / "teacher", table)
    assert choice.engine == DEFAULT and "no bf16 measurement" in choice.why
    assert choose_engine(tiny_demo / "teacher", tmp_path / "missing.json").engine == DEFAULT


@pytest.mark.slow
def test_an_engine_that_cannot_run_the_format_here_is_never_chosen(tiny_quantized, tmp_path):
    """FP8 on a CPU: vLLM refuses it (ranking.support), however fast a table says it is."""
    import torch

    if torch.cuda.is_available():
        return
    table = tmp_path / "table.json"
    update_table([_row("fp8", "a", {"torch": 1.0, "vllm": 1000.0})], table)
    assert choose_engine(tiny_quantized["fp8"], table).engine == "torch"


def test_rows_from_a_compare_run_replace_older_rows(tiny_demo, tmp_path):
    teacher = str(tiny_demo / "teacher")
    rep = {"machine_class": "cpu-x", "date": "2026-02-02", "machine": {"cpu": "C"},
           "results": [{"model": teacher, "engine": "server-torch", "items_per_s": 10.0},
                       {"model": teacher, "engine": "server-vllm", "items_per_s": 5.0},
                       {"model": teacher, "engine": "vllm-serve", "items_per_s": 50.0}]}  # fmt: skip
    rows = rows_from_compare(rep)
    assert rows == [_row("bf16", "teacher", {"torch": 10.0, "vllm": 5.0}, "cpu-x")
                    | {"cpu": "C", "measured": "2026-02-02"}]  # fmt: skip
    table = tmp_path / "t.json"
    update_table(rows, table)
    rows[0]["items_per_s"] = {"torch": 1.0, "vllm": 2.0}
    update_table(rows, table)
    assert [r["items_per_s"] for r in load_table(table)] == [{"torch": 1.0, "vllm": 2.0}]
    assert "rows" in json.loads(table.read_text())


def test_settings_resolve_auto_to_a_concrete_engine(tiny_demo):
    s = ServerSettings(model=str(tiny_demo / "teacher"))
    assert s.engine == "auto" and s.model_spec().engine in ("torch", "vllm")
    assert ServerSettings(model="x", engine="vllm").model_spec().engine == "vllm"


def test_failed_rows_are_left_out_of_the_table(tiny_demo):
    teacher = str(tiny_demo / "teacher")
    rep = {"machine_class": "cpu-x", "date": "2026-02-02", "machine": {"cpu": "C"},
           "results": [{"model": teacher, "engine": "server-torch", "items_per_s": 10.0},
                       {"model": teacher, "engine": "server-vllm", "items_per_s": None,
                        "error": "vLLM runs INT4 checkpoints only on ..."}]}  # fmt: skip
    assert rows_from_compare(rep)[0]["items_per_s"] == {"torch": 10.0}
