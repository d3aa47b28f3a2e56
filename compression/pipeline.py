"""Runs a recipe stage by stage, resumably, then writes the report.

Each stage writes into a hidden temporary folder; its summary (``stage.json``, holding the
stage's fingerprint) is written last and the folder is then renamed into place. So a folder
``<output>/<stage>/`` with a ``stage.json`` is always a finished checkpoint, an interrupted run
leaves only a temporary folder (removed on the next run), and re-running the recipe skips every
finished stage whose settings (and upstream) are unchanged. A training stage killed midway
keeps its training state in ``<output>/.<stage>.resume/`` and continues from it when rerun with
the same fingerprint.

Under ``torchrun`` every process runs the recipe: the data-parallel stages (``distill``,
``finetune``) on all ranks, the others on rank 0 while the rest wait; rank 0 alone writes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace

from compression import distributed
from compression.layout import STAGE_FILE, stage_dir
from compression.recipe import Recipe, Stage
from compression.report import write_report
from compression.stages import STAGES
from compression.train import NonFiniteLoss
from ranking.atomic import discard, replace_dir
from ranking.manifest import write_manifest


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
    distributed.init()
    say = print if distributed.is_main() else (lambda *a, **k: None)
    distributed.on_main(lambda: recipe.output.mkdir(parents=True, exist_ok=True))
    todo = [s for s in recipe.stages if ablations or not s.ablation]
    timings = {}
    for i, stage in enumerate(todo, 1):
        if distributed.on_main(lambda stage=stage: finished(recipe, stage) is not None):
            say(f"[compress] {i}/{len(todo)} {stage.name}: finished earlier, reused")
            continue
        say(f"[compress] {i}/{len(todo)} {stage.name} ({stage.type} from {stage.source})")
        ts = time.time()
        if STAGES[stage.type].data_parallel:
            run_stage(recipe, stage)
        else:
            distributed.on_main(lambda stage=stage: run_stage(recipe, stage))
        timings[stage.name] = round(time.time() - ts, 1)
        say(f"[compress] {stage.name} done in {timings[stage.name]:.0f}s")
    result = {"stage_seconds": timings}
    if report:
        result["report"] = distributed.on_main(lambda: write_report(recipe, [s.name for s in todo]))
    result["seconds"] = round(time.time() - t0, 1)
    say(f"[compress] recipe finished in {result['seconds']:.0f}s -> {recipe.output}")
    distributed.finish()
    return result


def _resume_folder(recipe: Recipe, stage: Stage):
    """The stage's context, its resume folder emptied unless a run with this fingerprint left
    it; no resume folder for a stage type that keeps no training state."""
    ctx = recipe.context(stage)
    stamp = ctx.work / "fingerprint"
    fingerprint = recipe.fingerprint(stage.name)
    if ctx.work.exists() and not (stamp.is_file() and stamp.read_text() == fingerprint):
        shutil.rmtree(ctx.work)
    if not STAGES[stage.type].resumable:
        return replace(ctx, work=None)
    ctx.work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    return ctx


def run_stage(recipe: Recipe, stage: Stage) -> dict | None:
    """Runs one stage into a temporary folder and moves it into place only when complete.
    Under ``torchrun`` (a data-parallel stage, on every rank) rank 0 handles the folders and
    returns the summary; the other ranks train and return None."""
    final = stage_dir(recipe, stage.name)
    tmp = recipe.output / f".{stage.name}.tmp"
    main = distributed.is_main()

    def prepare():
        discard(tmp)  # an interrupted run's, and the partial folder of a write into it
        return _resume_folder(recipe, stage)

    ctx = distributed.on_main(prepare)
    src = stage_dir(recipe, stage.source)
    try:
        summary = STAGES[stage.type].run(ctx, src, tmp)
    except BaseException as exc:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed stage leaves nothing; earlier stay
            if isinstance(exc, NonFiniteLoss) and ctx.work is not None:
                shutil.rmtree(ctx.work, ignore_errors=True)  # resuming would diverge again
        raise
    return distributed.on_main(lambda: _finish(recipe, stage, summary, tmp, final))


def _finish(recipe: Recipe, stage: Stage, summary: dict, tmp, final) -> dict:
    """Writes the stage's summary and manifest into ``tmp`` and renames it into place."""
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
    write_manifest(tmp)  # last: covers the checkpoint and stage.json
    replace_dir(tmp, final)  # a stale result (settings changed) is replaced
    shutil.rmtree(recipe.context(stage).work, ignore_errors=True)
    return info
