"""Runs a recipe stage by stage, resumably, then writes the report.

Each stage writes into a hidden temporary folder; its summary (``stage.json``, holding the
stage's fingerprint) is written last and the folder is then renamed into place. So a folder
``<output>/<stage>/`` with a ``stage.json`` is always a finished checkpoint, an interrupted run
leaves only a temporary folder (removed on the next run), and re-running the recipe skips every
finished stage whose settings (and upstream) are unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from compression.recipe import Recipe, Stage

STAGE_FILE = "stage.json"


def stage_dir(recipe: Recipe, name: str) -> Path:
    return recipe.teacher if name == "teacher" else recipe.output / name


def finished(recipe: Recipe, stage: Stage) -> dict | None:
    """The stage's summary if it finished with the current fingerprint, else None."""
    path = stage_dir(recipe, stage.name) / STAGE_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return info if info.get("fingerprint") == recipe.fingerprint(stage.name) else None


def run_recipe(recipe: Recipe, ablations: bool = False, report: bool = True) -> dict:
    """Runs the main stages (and the ablations if asked), reusing finished ones."""
    t0 = time.time()
    recipe.output.mkdir(parents=True, exist_ok=True)
    todo = [s for s in recipe.stages if ablations or not s.ablation]
    timings = {}
    for i, stage in enumerate(todo, 1):
        if finished(recipe, stage):
            print(f"[compress] {i}/{len(todo)} {stage.name}: finished earlier, reused")
            continue
        print(f"[compress] {i}/{len(todo)} {stage.name} ({stage.type} from {stage.source})")
        ts = time.time()
        run_stage(recipe, stage)
        timings[stage.name] = round(time.time() - ts, 1)
        print(f"[compress] {stage.name} done in {timings[stage.name]:.0f}s")
    result = {"stage_seconds": timings}
    if report:
        from compression.report import write_report

        result["report"] = write_report(recipe, [s.name for s in todo])
    result["seconds"] = round(time.time() - t0, 1)
    print(f"[compress] recipe finished in {result['seconds']:.0f}s -> {recipe.output}")
    return result


def run_stage(recipe: Recipe, stage: Stage) -> dict:
    """Runs one stage into a temporary folder and moves it into place only when complete."""
    final = stage_dir(recipe, stage.name)
    tmp = recipe.output / f".{stage.name}.tmp"
    for leftover in (tmp, tmp.with_name(tmp.name + ".partial")):
        if leftover.exists():
            shutil.rmtree(leftover)
    src = stage_dir(recipe, stage.source)
    summary = STAGE_RUNNERS[stage.type](recipe, stage, src, tmp)
    info = {
        "name": stage.name,
        "type": stage.type,
        "from": stage.source,
        "ablation": stage.ablation,
        "compare_to": stage.compare_to,
        "fingerprint": recipe.fingerprint(stage.name),
        "spec": stage.spec,
        "summary": summary,
    }
    (tmp / STAGE_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    if final.exists():  # a stale result (settings changed): move aside, then delete
        stale = final.with_name(f".{final.name}.stale")
        if stale.exists():
            shutil.rmtree(stale)
        os.replace(final, stale)
        shutil.rmtree(stale)
    os.replace(tmp, final)
    return info


def _run_distill(recipe: Recipe, stage: Stage, src: Path, dst: Path) -> dict:
    from compression.distill import distill

    return distill(recipe.teacher, src, recipe.data, dst, stage.config, desc=stage.name)


def _run_generative(recipe: Recipe, stage: Stage, src: Path, dst: Path) -> dict:
    from compression.generative import distill_generative

    return distill_generative(recipe.teacher, src, recipe.data, dst, stage.config, stage.name)


def _run_quantize(recipe: Recipe, stage: Stage, src: Path, dst: Path) -> dict:
    from compression.quantize import quantize_checkpoint
    from ranking.dataset import read_split

    c = stage.config
    rows = read_split(recipe.data, "train")
    return quantize_checkpoint(
        src, dst, c.scheme, rows, c.num_samples, c.group_size, c.smoothing_strength
    )


def _run_prune(recipe: Recipe, stage: Stage, src: Path, dst: Path) -> dict:
    from compression.prune import PruneConfig, prune_checkpoint

    c = stage.config
    prompts = calibration_prompts(recipe, src, c.calibration_samples, c.seed)
    base = PruneConfig(**{f.name: getattr(c, f.name) for f in fields(PruneConfig)})
    if c.gradual_steps <= 1:
        return prune_checkpoint(src, dst, base, prompts)
    return gradual_prune(recipe, src, dst, c, base, prompts)


def calibration_prompts(recipe: Recipe, model_dir: Path, n: int, seed: int) -> list[list[int]]:
    from compression.quantize import task_prompts
    from ranking.checkpoint import load_tokenizer_and_task
    from ranking.dataset import read_split

    tok, task = load_tokenizer_and_task(model_dir)
    return task_prompts(read_split(recipe.data, "train"), tok, task, n, seed)


def gradual_steps(start: dict, target: dict, steps: int) -> list[dict]:
    """Widths after each of ``steps`` equal steps from ``start`` to ``target`` (ints, the last
    one exactly the target); layers to drop are spread over the steps."""
    plan = []
    for k in range(1, steps + 1):
        step = {}
        for key, end in target.items():
            if key == "drop_layers":
                step[key] = round(end * k / steps) - round(end * (k - 1) / steps)
            elif end is not None:
                step[key] = round(start[key] - (start[key] - end) * k / steps)
        plan.append(step)
    return plan


def gradual_prune(recipe: Recipe, src: Path, dst: Path, c, base, prompts) -> dict:
    """Prune a step -> distill -> repeat; the last prune step is left for the next stage's
    re-distillation (so one-shot and gradual can be compared at equal distillation steps)."""
    import torch

    from compression.prune import prune_model
    from compression.train import RankingObjective, TrainConfig, train
    from ranking.checkpoint import load_checkpoint, save_checkpoint
    from ranking.dataset import encode_groups, read_split

    t0 = time.time()
    model, tok, task, _ = load_checkpoint(src, dtype=torch.float32)
    teacher = load_checkpoint(recipe.teacher, dtype=torch.bfloat16)[0].requires_grad_(False)
    groups = encode_groups(read_split(recipe.data, "train"), tok, task)
    cfg = model.config
    start = {
        "intermediate_size": cfg.intermediate_size,
        "heads_per_group": cfg.num_attention_heads // cfg.num_key_value_heads,
        "kv_groups": cfg.num_key_value_heads,
    }
    target = {
        "intermediate_size": (
            base.target_intermediate(cfg) if base.intermediate_size is not None else None
        ),
        "heads_per_group": base.heads_per_group,
        "kv_groups": base.kv_groups,
        "drop_layers": base.drop_layers,
    }
    label_ids = task.label_token_ids(tok)
    objective = RankingObjective(label_ids, tok.pad_token_id or 0, teacher=teacher, alpha=1.0)
    steps = []
    for k, widths in enumerate(gradual_steps(start, target, c.gradual_steps)):
        stats = prune_model(model, prompts, replace(base, **widths), label_ids=label_ids)
        steps.append({"widths": widths, "prune": _brief(stats)})
        if k < c.gradual_steps - 1 and c.distill_steps > 0:
            tc = TrainConfig(
                steps=c.distill_steps,
                batch_queries=12,
                lr=c.distill_lr,
                warmup_steps=10,
                eval_every=0,
                seed=c.seed + k,
            )
            train(model, groups, tc, objective, desc=f"gradual {k + 1}/{c.gradual_steps}")
    save_checkpoint(model, tok, task, dst)
    return {"gradual": steps, "seconds": round(time.time() - t0, 1), "config": asdict(c)}


def _brief(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if not isinstance(v, list | dict)}


STAGE_RUNNERS = {
    "distill": _run_distill,
    "distill-generative": _run_generative,
    "prune": _run_prune,
    "quantize": _run_quantize,
}
