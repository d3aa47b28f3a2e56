"""Compression recipes: a YAML file naming the teacher, the data and an ordered list of stages.

Parsed and checked completely before any work starts, so a typo fails in a second, not after
ten minutes of distillation. Each stage is one of the modifiers below; its keys are exactly the
fields of that modifier's config dataclass (anything else is an error naming the stage and key).

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

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compression.distill import DistillConfig, student_config
from compression.generative import GenerativeDistillConfig
from compression.prune import PruneConfig, head_dim
from compression.quantize import QuantizeConfig


class RecipeError(ValueError):
    """The recipe is malformed; the message names the stage and key at fault."""


@dataclass
class GradualPruneConfig(PruneConfig):
    """Prune in ``gradual_steps`` equal steps of width, distilling ``distill_steps`` between
    them (the last step is left to the following re-distill stage)."""

    gradual_steps: int = 1
    distill_steps: int = 0
    distill_lr: float = 5e-4


def pruned_config(cfg: PruneConfig, config):
    """The config a prune stage will write, computed without touching weights (so later
    stages can be checked before anything runs)."""
    new = copy.deepcopy(config)
    kv, per_group = cfg.target_heads(config)
    new.head_dim = head_dim(config)
    new.intermediate_size = cfg.target_intermediate(config)
    new.num_key_value_heads = kv
    new.num_attention_heads = kv * per_group
    new.num_hidden_layers = config.num_hidden_layers - cfg.drop_layers
    return new


def check_group_size(config, group_size: int) -> None:
    """INT4 weight groups run along each linear layer's input: every input width must be a
    multiple of the group size (compressed-tensors and vLLM require it)."""
    widths = {
        "hidden_size (q/k/v/gate/up inputs)": config.hidden_size,
        "intermediate_size (down_proj input)": config.intermediate_size,
        "heads x head_dim (o_proj input)": config.num_attention_heads * head_dim(config),
    }
    bad = [f"{k} = {v}" for k, v in widths.items() if v % group_size]
    if bad:
        raise ValueError(
            f"group_size {group_size} does not divide {'; '.join(bad)}: choose a group size "
            "that divides every input width"
        )


STAGE_TYPES: dict[str, type] = {
    "distill": DistillConfig,
    "distill-generative": GenerativeDistillConfig,
    "prune": GradualPruneConfig,
    "quantize": QuantizeConfig,
}
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

    def fingerprint(self, name: str) -> str:
        """Hash of a stage's settings and of everything upstream: a finished stage is reused
        only while its fingerprint is unchanged."""
        s = self.stage(name)
        upstream = "teacher:" + str(self.teacher.resolve())
        if s.source != "teacher":
            upstream = self.fingerprint(s.source)
        blob = json.dumps({"type": s.type, "spec": s.spec, "up": upstream}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_stage_config(cls: type, spec: dict, where: str):
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise RecipeError(
            f"{where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}"
        )
    try:
        cfg = cls(**spec)
        if cls is GradualPruneConfig:  # the rest is checked against the input's config
            if cfg.gradual_steps < 1 or cfg.distill_steps < 0:
                raise ValueError("gradual_steps must be >= 1 and distill_steps >= 0")
        elif hasattr(cfg, "validate"):
            cfg.validate()
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: {exc}") from exc
    return cfg


def _parse_stages(items: Any, key: str, known: list[str], ablation: bool) -> list[Stage]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise RecipeError(f"'{key}' must be a list of stages")
    stages = []
    for i, item in enumerate(items):
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
        if kind not in STAGE_TYPES:
            raise RecipeError(
                f"{where}: unknown stage type {kind!r}; choose one of {', '.join(STAGE_TYPES)}"
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
        cfg = parse_stage_config(STAGE_TYPES[kind], item, where)
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
    stages += _parse_stages(raw.get("ablations"), "ablations", known, ablation=True)
    recipe = Recipe(
        p, Path(raw["teacher"]), Path(raw["data"]), Path(raw["output"]), stages, evaluation
    )
    if check_paths:
        check_recipe_paths(recipe)
    return recipe


def check_recipe_paths(recipe: Recipe) -> None:
    """Inputs exist, and every prune stage's input is an architecture the pruner supports
    with widths it can reach (computed from configs alone: nothing is trained yet)."""
    from transformers import AutoConfig

    from ranking.checkpoint import CheckpointError, inspect_checkpoint

    try:
        inspect_checkpoint(recipe.teacher)
    except CheckpointError as exc:
        raise RecipeError(f"teacher: {exc}") from exc
    for split in ("train", "validation", recipe.evaluation.get("split", "test")):
        if not (recipe.data / f"{split}.jsonl").is_file():
            raise RecipeError(f"data: {recipe.data}/{split}.jsonl does not exist")
    configs = {"teacher": AutoConfig.from_pretrained(recipe.teacher)}
    for s in recipe.stages:
        config = configs[s.source]
        where = f"stage {s.name}"
        try:
            if s.type in ("distill", "distill-generative"):
                student = s.config.student
                if isinstance(student, dict):
                    config = student_config(config, student)
                elif isinstance(student, str):
                    config = AutoConfig.from_pretrained(student)
            elif s.type == "prune":
                s.config.validate(config)
                config = pruned_config(s.config, config)
            elif s.type == "quantize" and s.config.scheme.startswith("int4"):
                check_group_size(config, s.config.group_size)
        except (ValueError, OSError) as exc:
            raise RecipeError(f"{where}: {exc}") from exc
        configs[s.name] = config
