"""Compression recipes: a YAML file naming the teacher, the data and an ordered list of stages.

Parsed and checked completely before any work starts, so a typo fails in a second, not after
ten minutes of distillation. Each stage's ``type`` is a stage type of ``compression.stages``;
its keys are exactly the fields of that type's ``Config`` dataclass (anything else is an error
naming the stage and key), and each type checks its input's config and computes its output's.

    teacher: artifacts/demo/teacher     # a slimrank checkpoint
    data: artifacts/demo/data           # benchmark splits (train / validation / test)
    output: artifacts/demo/compressed   # one folder per stage, plus report.{json,md,png}
    evaluation: {split: test}
    stages:                             # the main path, in order
      - {name: distilled, type: distill, student: {hidden_size: 192}, steps: 800}
      - {name: pruned, type: prune, intermediate_size: 384}
      - {name: int8, type: quantize, scheme: int8}
    ablations:                          # optional side branches, run with --ablations
      - {name: int4-rtn, type: quantize, from: distilled, scheme: int4-rtn}

``from`` names the stage whose checkpoint is the input (default: the previous main stage;
``teacher`` for the teacher itself).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compression.stages import STAGES, StageContext
from ranking.datafolder import split_path
from ranking.fingerprint import content_hash


class RecipeError(ValueError):
    """The recipe is malformed; the message names the stage and key at fault."""


# Files written next to a checkpoint after it is made (the report's evaluation cache, plots):
# not part of what the checkpoint is, so they do not change its content hash.
NOT_CHECKPOINT = ("eval-*", "*.png", "score_reference.json")  # written by the report
TOP_KEYS = {"teacher", "data", "output", "evaluation", "stages", "ablations", "seed"}
EVAL_KEYS = {"split", "throughput", "throughput_requests"}


@dataclass
class Stage:
    name: str
    type: str
    source: str  # "teacher" or another stage's name
    config: Any
    ablation: bool = False
    spec: dict = field(default_factory=dict)  # the YAML mapping as written (for fingerprints)
    compare_to: str | None = None  # ablations: the stage this one is an alternative to


@dataclass
class Recipe:
    path: Path
    teacher: Path
    data: Path
    output: Path
    stages: list[Stage]
    evaluation: dict

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def context(self, stage: Stage) -> StageContext:
        """What ``stage`` needs from the recipe to run."""
        work = self.output / f".{stage.name}.resume"
        inputs = {n: self.output / n for n in STAGES[stage.type].reads(stage.config)}
        return StageContext(stage.name, stage.config, self.teacher, self.data, work, inputs)

    def fingerprint(self, name: str) -> str:
        """Hash of a stage's settings, of the content of the data splits it reads and of
        everything upstream, down to the teacher's content: a finished stage is reused only
        while its fingerprint is unchanged. Content, not paths: a teacher retrained at the same
        path, or a data folder rebuilt in place, reruns what depends on it (and nothing else:
        a stage reading only ``train`` ignores a new ``test`` split, which only the report's
        evaluation reads). File digests are cached per process, so a recipe hashes each file
        once."""
        s = self.stage(name)
        if s.source == "teacher":
            upstream = "teacher:" + content_hash(self.teacher, exclude=NOT_CHECKPOINT)
        else:
            upstream = self.fingerprint(s.source)
        data = {
            split: content_hash(split_path(self.data, split))
            for split in STAGES[s.type].data_splits
        }
        reads = {n: self.fingerprint(n) for n in STAGES[s.type].reads(s.config)}
        blob = json.dumps(
            {"type": s.type, "spec": s.spec, "data": data, "up": upstream}
            | ({"reads": reads} if reads else {}),
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_stage_config(kind: str, spec: dict, where: str) -> Any:
    """The settings of a stage of the registered type ``kind`` from its YAML mapping (without
    name, type, from, compare_to); ``RecipeError`` names the stage (``where``) and the problem."""
    try:
        return STAGES[kind].parse(spec)
    except ValueError as exc:
        raise RecipeError(f"{where}: {exc}") from exc


def _parse_stages(
    items: Any, key: str, known: list[str], ablation: bool, earlier: list[Stage] | None = None
) -> list[Stage]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise RecipeError(f"'{key}' must be a list of stages")
    stages: list[Stage] = []
    for i, item in enumerate(items):
        all_stages = [*(earlier or []), *stages]
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise RecipeError(f"{where} must be a mapping")
        item = dict(item)
        name, kind = item.pop("name", None), item.pop("type", None)
        if not name or not isinstance(name, str):
            raise RecipeError(f"{where} has no 'name'")
        where = f"{key}[{i}] ({name})"
        if name in known or name == "teacher" or "/" in name or name.startswith("."):
            raise RecipeError(f"{where}: duplicate or reserved stage name {name!r}")
        if kind not in STAGES:
            raise RecipeError(
                f"{where}: unknown stage type {kind!r}; choose one of {', '.join(STAGES)}"
            )
        default_src = known[-1] if known else "teacher"
        source = item.pop("from", default_src if not ablation else None)
        compare_to = item.pop("compare_to", None)
        if compare_to is not None and compare_to not in known and compare_to != "teacher":
            raise RecipeError(f"{where}: 'compare_to: {compare_to}' is not an earlier stage")
        if source is None:
            raise RecipeError(f"{where}: ablation stages must say 'from'")
        if source != "teacher" and source not in known:
            raise RecipeError(
                f"{where}: 'from: {source}' is not an earlier stage "
                f"(earlier: {', '.join(['teacher', *known])})"
            )
        spec = dict(item)
        cfg = parse_stage_config(kind, item, where)
        types = {s.name: s.type for s in all_stages}
        for dep, dep_type in STAGES[kind].reads(cfg).items():
            if types.get(dep) != dep_type:
                raise RecipeError(f"{where}: {dep!r} is not an earlier stage of type {dep_type}")
        stages.append(Stage(name, kind, source, cfg, ablation, spec, compare_to))
        known.append(name)
    return stages


def load_recipe(path: str | Path, check_paths: bool = True) -> Recipe:
    """Parses and validates a recipe; raises ``RecipeError`` naming the first problem."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{p} must be a YAML mapping")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise RecipeError(f"{p}: unknown top-level key(s) {unknown}; allowed: {sorted(TOP_KEYS)}")
    for key in ("teacher", "data", "output", "stages"):
        if key not in raw:
            raise RecipeError(f"{p}: missing '{key}'")
    evaluation = {"split": "test", "throughput": True, "throughput_requests": 6}
    extra = sorted(set(raw.get("evaluation") or {}) - EVAL_KEYS)
    if extra:
        raise RecipeError(f"{p}: unknown evaluation key(s) {extra}; allowed: {sorted(EVAL_KEYS)}")
    evaluation.update(raw.get("evaluation") or {})
    known: list[str] = []
    stages = _parse_stages(raw["stages"], "stages", known, ablation=False)
    if not stages:
        raise RecipeError(f"{p}: 'stages' is empty")
    stages += _parse_stages(raw.get("ablations"), "ablations", known, True, earlier=stages)
    recipe = Recipe(
        p, Path(raw["teacher"]), Path(raw["data"]), Path(raw["output"]), stages, evaluation
    )
    if check_paths:
        check_recipe_paths(recipe)
    return recipe


def check_recipe_paths(recipe: Recipe) -> None:
    """Inputs exist, and every stage can run on the checkpoint its input stage will write:
    each stage type computes its output config from its input's (nothing is trained yet)."""
    from transformers import AutoConfig

    from ranking.checkpoint import CheckpointError, inspect_checkpoint
    from ranking.datafolder import DataError

    try:
        inspect_checkpoint(recipe.teacher)
    except CheckpointError as exc:
        raise RecipeError(f"teacher: {exc}") from exc
    for split in ("train", "validation", recipe.evaluation.get("split", "test")):
        try:
            split_path(recipe.data, split)
        except DataError as exc:
            raise RecipeError(f"data: {exc}") from exc
    configs = {"teacher": AutoConfig.from_pretrained(recipe.teacher)}
    for s in recipe.stages:
        try:
            configs[s.name] = STAGES[s.type].check(s.config, configs[s.source])
        except (ValueError, OSError) as exc:
            raise RecipeError(f"stage {s.name}: {exc}") from exc
