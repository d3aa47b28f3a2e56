"""The demo pipeline and the evaluation CLI, with the test-sized config of the same code."""

import json
import subprocess
import sys

from tests.serving import REPO


def run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "compression", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_tiny_teacher_learns_something(tiny_demo):
    summary = json.loads((tiny_demo / "teacher" / "training_summary.json").read_text())
    assert summary["params"] > 0 and summary["format"] == "bf16"
    test = summary["test"]
    # 60 steps of a 2-layer model: better than chance, below the ceiling on the same labels
    assert 0.55 < test["auc"] < test["bayes_auc_sampled"]
    assert summary["auc_gap"] == test["bayes_auc_sampled"] - test["auc"] > 0
    assert summary["auc_gap_expected"] == test["bayes_auc"] - test["expected_auc"] > 0
    effects = summary["effects"]
    assert list(effects) == ["main", "interest", "format", "level", "latent"]
    assert all(e["worth"] > 0 for e in effects.values())
    assert effects["main"]["weight"] > 0.2  # the item main effects are learned first
    for f in ("config.json", "model.safetensors", "tokenizer.json", "ranking_task.json"):
        assert (tiny_demo / "teacher" / f).is_file(), f


def test_evaluate_cli_json(tiny_demo):
    p = run(
        "evaluate",
        "--model",
        str(tiny_demo / "teacher"),
        "--data",
        str(tiny_demo / "data"),
        "--split",
        "test",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert {"auc", "logloss", "bayes_auc", "n"} <= set(out)
    assert out["n"] == 600 and 0.5 < out["bayes_auc"] < 1 and out["auc"] < out["bayes_auc"]
    summary = json.loads((tiny_demo / "teacher" / "training_summary.json").read_text())
    assert abs(out["auc"] - summary["test"]["auc"]) < 1e-6  # same scorer, same split


def test_evaluate_cli_errors(tiny_demo, tmp_path, capsys):
    """Exit code 2 and a message naming the problem (the CLI's ``main``, in this process)."""
    from compression.__main__ import main

    data, teacher = str(tiny_demo / "data"), str(tiny_demo / "teacher")
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--data", data, "--json"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--model", teacher, "--data", str(tmp_path), "--json"]) == 2
    assert "no test split" in capsys.readouterr().err


def test_demo_cli_reuses_existing_build(tiny_demo, capsys):
    from compression.__main__ import main

    assert main(["demo", "--tiny", "--out", str(tiny_demo)]) == 0
    out = capsys.readouterr().out
    assert "reused" in out and "Bayes-optimal" in out and "learned terms" in out
